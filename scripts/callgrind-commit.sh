#!/usr/bin/env bash
# Instructions per durable commit and per event, counted by callgrind on examples/commit_cost.rs.
#
#   scripts/callgrind-commit.sh [sequential events] [concurrent events]   (defaults 2000 20000)
#
# Three runs of the example under `valgrind --tool=callgrind`: `baseline` (open, create a group,
# close), `sequential` (each durable commit holds one user message) and `concurrent` (64 callers,
# so the writer's group commit folds many messages into each commit). The commits of each run are
# the calls to redb's `WriteTransaction::commit` that callgrind counted. With the baseline's
# instructions and commits subtracted, the two workloads give two equations
#     instructions = commits * per_commit + events * per_event
# which are solved for per_commit and per_event. `one_event_commit` is the sequential run's
# instructions per message: a durable commit of one event, everything the caller's call costs
# included. The example only uses API that older revisions also have, so copying it and this
# script into an older checkout measures that revision the same way.
#
# Stores are made under $COVEN_BENCH_DIR (default target/) on the disk to test; the callgrind
# outputs are kept in target/callgrind/ (under $CARGO_TARGET_DIR when set).
set -euo pipefail

sequential_events=${1:-2000}
concurrent_events=${2:-20000}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }

cargo build --release --example commit_cost -j2 >&2
target_dir=${CARGO_TARGET_DIR:-target}
binary=$target_dir/release/examples/commit_cost
out=$target_dir/callgrind
mkdir -p "$out"
store_dir=${COVEN_BENCH_DIR:-target}
mkdir -p "$store_dir"

# Prints "<instructions> <commits>" of one run.
measure() {
  local mode=$1 events=$2 file="$out/commit_cost.$1.out"
  if ! valgrind --tool=callgrind --callgrind-out-file="$file" --compress-strings=no \
    --compress-pos=no "$binary" "$mode" "$events" "$store_dir" 2>"$out/commit_cost.$1.log"; then
    echo "the $mode run failed; see $out/commit_cost.$1.log" >&2
    exit 1
  fi
  awk '
    /^summary:/ || /^totals:/ { total = $2 }
    /^cfn=/ { callee = substr($0, 5) }
    /^calls=/ {
      if (callee ~ /WriteTransaction::commit(::h[0-9a-f]+)?$/) { split($1, c, "="); commits += c[2] }
    }
    END { printf "%d %d\n", total, commits }
  ' "$file"
}

base=$(measure baseline 0)
sequential=$(measure sequential "$sequential_events")
concurrent=$(measure concurrent "$concurrent_events")
read -r base_ir base_commits <<<"$base"
read -r seq_ir seq_commits <<<"$sequential"
read -r con_ir con_commits <<<"$concurrent"

python3 - "$base_ir" "$base_commits" "$seq_ir" "$seq_commits" "$sequential_events" \
  "$con_ir" "$con_commits" "$concurrent_events" <<'PY'
import json, sys
b_ir, b_k, a_ir, a_k, a_n, c_ir, c_k, c_n = map(int, sys.argv[1:])
# Two workloads, two unknowns: instructions = commits * per_commit + events * per_event.
da, ka, db, kb = a_ir - b_ir, a_k - b_k, c_ir - b_ir, c_k - b_k
det = ka * c_n - kb * a_n
per_commit = (da * c_n - db * a_n) / det
per_event = (ka * db - kb * da) / det
print(f"sequential: {a_n} events in {ka} commits, {da} instructions")
print(f"concurrent: {c_n} events in {kb} commits, {db} instructions")
print(f"instructions per durable commit: {per_commit:,.0f}")
print(f"instructions per event:          {per_event:,.0f}")
print(f"instructions per one-event durable commit (all of it): {da / a_n:,.0f}")
print(json.dumps({
    "per_commit": round(per_commit), "per_event": round(per_event),
    "one_event_commit": round(da / a_n),
    "sequential_commits": ka, "concurrent_commits": kb, "concurrent_events": c_n,
}))
PY
