//! What a chat costs the device it runs on, measured the way familiars really stream: host
//! harnesses registered through the Rust API hand 4-byte tokens to their `ReplySink` at 30
//! tokens per second, paced in real time, on a file store. Prints a table, then one JSON line.
//!
//! ```sh
//! cargo run --release --example cost_report
//! cargo run --release --example cost_report -- --only stream --only disk   # some parts only
//! COVEN_BENCH_DIR=/path/on/the/disk/to/test cargo run --release --example cost_report
//! ```
//!
//! The parts (`--only` names):
//! - `stream`: 1, 8 and 32 members each stream 300 tokens (10 s) in one turn on a store whose
//!   redb backend counts fsyncs and bytes written: fsyncs per second and bytes written per token
//!   over the turn, and each token's latency from `ReplySink::delta` to a subscribed listener.
//! - `disk`: ten such turns of 8 members; the file's length and redb's allocated pages, less
//!   what they were before the turns, per byte of text in the group (messages and replies). The
//!   file grows in large steps, so its length moves only once the turns outgrow the space the
//!   file already had.
//! - `render`: open plus the latest 100 events of a 10,000-event group over the same for a
//!   100-event group, with the file evicted from the OS cache (`posix_fadvise(DONTNEED)`) before
//!   each open; median of five.
//! - `rss`: resident memory of a fresh process that has opened a 100,000-event store, once idle.
//! - `instructions`: instructions per durable commit and per event from
//!   `scripts/callgrind-commit.sh`, when valgrind is installed.
//!
//! Stores go under `$COVEN_BENCH_DIR` (default `target/`) and are removed afterwards.

#[path = "../benches/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use coven_group::testing::CountingBackend;
use coven_group::{
    Config, Coven, EventKind, Familiar, GroupChange, GroupEvent, GroupListener, GroupUpdate,
    Harness, ReplySink, TurnRequest,
};
use redb::backends::FileBackend;
use serde_json::{json, Value};
use support::{base_dir, bulk_load, percentile, proc_kib, scratch};

/// Every streamed token: 4 bytes.
const TOKEN: &str = "tok ";
const TOKENS_PER_SECOND: u32 = 30;
/// 10 s of streaming at 30 tokens per second.
const TOKENS_PER_REPLY: usize = 300;
const MEMBER_COUNTS: [usize; 3] = [1, 8, 32];
const DISK_TURNS: usize = 10;
const DISK_MEMBERS: usize = 8;
const BIG_GROUP: u64 = 10_000;
const SMALL_GROUP: u64 = 100;
const TAIL: u32 = 100;
const RENDER_ROUNDS: usize = 5;
const IDLE_EVENTS: u64 = 100_000;
/// Upper bound for anything the report waits on.
const GUARD: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--idle-rss") {
        idle_rss_child(Path::new(&args[2]), &args[3]);
        return;
    }
    let only: Vec<&str> = args
        .windows(2)
        .filter(|pair| pair[0] == "--only")
        .map(|pair| pair[1].as_str())
        .collect();
    let wants = |part: &str| only.is_empty() || only.contains(&part);
    let config = Config::default();
    eprintln!(
        "cost_report: stores under {}, {config:?}",
        std::fs::canonicalize(base_dir())
            .unwrap_or(base_dir())
            .display()
    );
    let mut figures = serde_json::Map::new();
    let mut table: Vec<(String, String)> = Vec::new();
    let mut row = |name: String, value: String| {
        eprintln!("  {name:<52} {value}");
        table.push((name, value));
    };

    if wants("stream") {
        let mut latencies = Vec::new();
        for members in MEMBER_COUNTS {
            let run = stream_turn(members);
            row(
                format!("fsyncs per second, {members} streaming"),
                format!("{:.1}", run.fsyncs_per_second),
            );
            row(
                format!("bytes written per token, {members} streaming"),
                format!("{:.0}", run.bytes_per_token),
            );
            let mut own = run.latencies_us.clone();
            row(
                format!("delta latency p50 / p99, {members} streaming"),
                format!(
                    "{:.1} / {:.1} ms",
                    percentile(&mut own, 50.0) / 1000.0,
                    percentile(&mut own, 99.0) / 1000.0
                ),
            );
            figures.insert(
                format!("fsyncs_per_s_{members}"),
                round1(run.fsyncs_per_second),
            );
            figures.insert(
                format!("bytes_written_per_token_{members}"),
                json!(run.bytes_per_token.round()),
            );
            latencies.extend(run.latencies_us);
        }
        figures.insert(
            "delta_latency_p50_ms".into(),
            round1(percentile(&mut latencies, 50.0) / 1000.0),
        );
        figures.insert(
            "delta_latency_p99_ms".into(),
            round1(percentile(&mut latencies, 99.0) / 1000.0),
        );
    }
    if wants("disk") {
        let disk = disk_usage();
        row(
            format!("disk bytes per text byte, {DISK_TURNS} turns of {DISK_MEMBERS} (file)"),
            format!("{:.2} ({} bytes of text)", disk.file_ratio, disk.text_bytes),
        );
        row(
            format!("disk bytes per text byte, {DISK_TURNS} turns of {DISK_MEMBERS} (pages)"),
            format!("{:.2}", disk.pages_ratio),
        );
        figures.insert(
            "disk_bytes_per_text_byte_file".into(),
            round2(disk.file_ratio),
        );
        figures.insert(
            "disk_bytes_per_text_byte_pages".into(),
            round2(disk.pages_ratio),
        );
    }
    if wants("render") {
        let big = first_render(BIG_GROUP);
        let small = first_render(SMALL_GROUP);
        row(
            format!("first render, {BIG_GROUP} / {SMALL_GROUP} events (evicted)"),
            format!(
                "{:.1} ms / {:.1} ms = {:.2}",
                big.as_secs_f64() * 1e3,
                small.as_secs_f64() * 1e3,
                big.as_secs_f64() / small.as_secs_f64()
            ),
        );
        figures.insert(
            "first_render_ratio".into(),
            round2(big.as_secs_f64() / small.as_secs_f64()),
        );
    }
    if wants("rss") {
        let rss = idle_rss();
        row(
            format!("idle RSS after opening a {IDLE_EVENTS}-event store"),
            format!("{rss:.1} MiB"),
        );
        figures.insert("idle_rss_mb".into(), round1(rss));
    }
    if wants("instructions") {
        let (per_commit, per_event) = instructions().unwrap_or((Value::Null, Value::Null));
        row(
            "instructions per durable commit / per event".into(),
            format!("{per_commit} / {per_event}"),
        );
        figures.insert("instructions_per_commit".into(), per_commit);
        figures.insert("instructions_per_event".into(), per_event);
    }

    println!("| figure | value |");
    println!("|---|---|");
    for (name, value) in &table {
        println!("| {name} | {value} |");
    }
    println!("{}", Value::Object(figures));
}

fn round1(value: f64) -> Value {
    json!((value * 10.0).round() / 10.0)
}

fn round2(value: f64) -> Value {
    json!((value * 100.0).round() / 100.0)
}

/// When each member handed each token to its sink, by familiar id.
type Emits = Mutex<HashMap<String, Vec<Instant>>>;

/// A host harness streaming [`TOKENS_PER_REPLY`] tokens at [`TOKENS_PER_SECOND`], each handed to
/// the sink at its moment on the schedule (not after the previous one, so the pace holds).
struct Paced {
    emits: Arc<Emits>,
}

impl Harness for Paced {
    fn run_turn(&self, request: TurnRequest, sink: Arc<ReplySink>) -> coven_group::Result<bool> {
        let familiar = request.familiar.id;
        let period = Duration::from_secs(1) / TOKENS_PER_SECOND;
        let start = Instant::now();
        for index in 0..TOKENS_PER_REPLY as u32 {
            let due = start + period * index;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if sink.is_cancelled() {
                break;
            }
            self.emits
                .lock()
                .expect("emits")
                .entry(familiar.clone())
                .or_default()
                .push(Instant::now());
            sink.delta(TOKEN.to_owned());
        }
        Ok(true)
    }
}

/// Records each token's latency from its emit to the listener, by the bytes each reply has
/// delivered so far (token i is bytes 4i..4i+4 of its reply).
struct Latencies {
    emits: Arc<Emits>,
    state: Mutex<LatencyState>,
    changed: Condvar,
}

#[derive(Default)]
struct LatencyState {
    delivered: HashMap<String, usize>,
    latencies_us: Vec<u32>,
    finished: usize,
}

impl GroupListener for Latencies {
    fn on_updates(&self, updates: Vec<GroupChange>) -> coven_group::Result<()> {
        let arrival = Instant::now();
        let emits = self.emits.lock().expect("emits");
        let mut state = self.state.lock().expect("latencies");
        for change in updates {
            let (familiar, bytes) = match &change.update {
                GroupUpdate::EventAppended { event } if event.kind == EventKind::Familiar => (
                    event.familiar_id.clone().unwrap_or_default(),
                    event.text.len(),
                ),
                GroupUpdate::ReplyDelta {
                    familiar_id, text, ..
                } => (familiar_id.clone(), text.len()),
                GroupUpdate::ReplyFinished { .. } => {
                    state.finished += 1;
                    continue;
                }
                _ => continue,
            };
            let before = *state.delivered.get(&familiar).unwrap_or(&0);
            let after = before + bytes;
            state.delivered.insert(familiar.clone(), after);
            let stamps = emits.get(&familiar).map(Vec::as_slice).unwrap_or_default();
            for token in before / TOKEN.len()..after / TOKEN.len() {
                if let Some(emitted) = stamps.get(token) {
                    let micros = arrival.saturating_duration_since(*emitted).as_micros();
                    state.latencies_us.push(micros.min(u32::MAX as u128) as u32);
                }
            }
        }
        self.changed.notify_all();
        Ok(())
    }
}

/// Registers the paced harness and `members` familiars using it; returns a group of them.
fn paced_group(coven: &Coven, members: usize, emits: Arc<Emits>) -> String {
    coven
        .register_host_harness("paced", Arc::new(Paced { emits }))
        .expect("register the harness");
    let ids: Vec<String> = (0..members).map(|m| format!("f{m}")).collect();
    for id in &ids {
        coven
            .register_familiar(Familiar::new(id.as_str(), id.as_str(), "paced"))
            .expect("register a familiar");
    }
    coven
        .create_group(None, ids, None)
        .expect("create a group")
        .id
}

struct StreamRun {
    fsyncs_per_second: f64,
    bytes_per_token: f64,
    latencies_us: Vec<u32>,
}

/// One turn of `members` paced members on a counting file backend.
fn stream_turn(members: usize) -> StreamRun {
    let dir = scratch("cost-stream");
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.path().join("coven.redb"))
        .expect("create the store file");
    let (backend, disk) = CountingBackend::new(FileBackend::new(file).expect("file backend"));
    // Every member runs at once (the default runs at most 8).
    let config = Config {
        max_concurrent_runs: members as u32,
        ..Config::default()
    };
    let coven = Coven::open_with_backend(backend, config).expect("open the store");
    let emits = Arc::new(Emits::default());
    let group = paced_group(&coven, members, emits.clone());
    let listener = Arc::new(Latencies {
        emits,
        state: Mutex::new(LatencyState::default()),
        changed: Condvar::new(),
    });
    let rev = coven
        .changes_since(&group, 0, coven_group::MAX_PAGE)
        .expect("changes")
        .last()
        .map_or(0, |change| change.rev);
    let subscription = coven
        .subscribe(&group, rev, listener.clone())
        .expect("subscribe");
    let (syncs_before, written_before) = (disk.syncs(), disk.bytes_written());
    let started = Instant::now();
    let turn = coven.send(&group, "go".into(), None).expect("send");
    assert!(
        coven.wait_turn(&turn.turn_id, GUARD).expect("wait_turn"),
        "the turn ended"
    );
    let elapsed = started.elapsed();
    let syncs_during = disk.syncs() - syncs_before;
    let written_during = disk.bytes_written() - written_before;
    {
        let deadline = Instant::now() + GUARD;
        let mut state = listener.state.lock().expect("latencies");
        while state.finished < members && Instant::now() < deadline {
            state = listener
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .expect("latencies")
                .0;
        }
        assert_eq!(
            state.finished, members,
            "every reply finished at the listener"
        );
    }
    subscription.cancel();
    coven.close();
    let tokens = (members * TOKENS_PER_REPLY) as f64;
    let latencies_us = std::mem::take(&mut listener.state.lock().expect("latencies").latencies_us);
    assert_eq!(
        latencies_us.len(),
        members * TOKENS_PER_REPLY,
        "every token delivered"
    );
    StreamRun {
        fsyncs_per_second: syncs_during as f64 / elapsed.as_secs_f64(),
        bytes_per_token: written_during as f64 / tokens,
        latencies_us,
    }
}

/// File length and redb's allocated bytes of a closed store.
fn store_size(path: &Path) -> (u64, u64) {
    let length = std::fs::metadata(path).expect("store metadata").len();
    let db = redb::Database::open(path).expect("open with redb");
    let txn = db.begin_write().expect("write transaction");
    let stats = txn.stats().expect("stats");
    let pages = stats.allocated_pages() * stats.page_size() as u64;
    txn.abort().expect("abort");
    (length, pages)
}

struct DiskUsage {
    text_bytes: u64,
    file_ratio: f64,
    pages_ratio: f64,
}

/// Ten paced turns of [`DISK_MEMBERS`] members in one group: what they added to the file per
/// byte of text.
fn disk_usage() -> DiskUsage {
    let dir = scratch("cost-disk");
    let path = dir.path().join("coven.redb");
    let coven = Coven::open(&path, Config::default()).expect("open the store");
    let group = paced_group(&coven, DISK_MEMBERS, Arc::new(Emits::default()));
    coven.close();
    let (length_before, pages_before) = store_size(&path);
    let coven = Coven::open(&path, Config::default()).expect("reopen the store");
    coven
        .register_host_harness(
            "paced",
            Arc::new(Paced {
                emits: Arc::new(Emits::default()),
            }),
        )
        .expect("register the harness");
    for _ in 0..DISK_TURNS {
        let turn = coven.send(&group, "go on".into(), None).expect("send");
        assert!(
            coven.wait_turn(&turn.turn_id, GUARD).expect("wait_turn"),
            "the turn ended"
        );
    }
    let events = coven
        .events_since(&group, 0, coven_group::MAX_PAGE)
        .expect("events");
    let text_bytes: u64 = events.iter().map(|event| event.text.len() as u64).sum();
    coven.close();
    let (length_after, pages_after) = store_size(&path);
    DiskUsage {
        text_bytes,
        file_ratio: (length_after - length_before) as f64 / text_bytes as f64,
        pages_ratio: (pages_after as f64 - pages_before as f64) / text_bytes as f64,
    }
}

/// The latest `TAIL` events of a group, read the way a client opens a thread: the store's tail
/// read, with no head known beforehand.
fn tail(coven: &Coven, group: &str) -> Vec<GroupEvent> {
    coven.get_group_tail(group, TAIL).expect("tail").events
}

/// Drops the file's pages from the OS cache.
fn evict(path: &Path) {
    let file = File::open(path).expect("open the store file");
    file.sync_all().expect("sync the store file");
    // SAFETY: the descriptor is open for the duration of the call; the advice only drops cache.
    let status = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(status, 0, "posix_fadvise(DONTNEED)");
}

/// Median time to open a store holding one group of `events` events and read its tail, the
/// file evicted from the OS cache before each open.
fn first_render(events: u64) -> Duration {
    let dir = scratch("cost-render");
    let path = dir.path().join("coven.redb");
    let (group, _) = bulk_load(&path, events, 4);
    let mut times: Vec<Duration> = (0..RENDER_ROUNDS)
        .map(|_| {
            evict(&path);
            let started = Instant::now();
            let coven = Coven::open(&path, Config::default()).expect("open the store");
            let shown = tail(&coven, &group);
            let elapsed = started.elapsed();
            assert_eq!(shown.len() as u64, events.min(u64::from(TAIL)));
            assert_eq!(shown.last().map(|event| event.seq), Some(events));
            coven.close();
            elapsed
        })
        .collect();
    times.sort();
    times[RENDER_ROUNDS / 2]
}

/// Builds a 100,000-event store and measures a fresh process that opens it.
fn idle_rss() -> f64 {
    let dir = scratch("cost-rss");
    let path = dir.path().join("coven.redb");
    let (group, _) = bulk_load(&path, IDLE_EVENTS, 4);
    let output = Command::new(std::env::current_exe().expect("this program"))
        .arg("--idle-rss")
        .arg(&path)
        .arg(&group)
        .output()
        .expect("run the idle-RSS child");
    assert!(output.status.success(), "the idle-RSS child failed");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("the child's RSS")
}

/// The child of [`idle_rss`]: opens the store, shows the group's tail, waits idle, prints its
/// resident set in MiB.
fn idle_rss_child(path: &Path, group: &str) {
    let coven = Coven::open(path, Config::default()).expect("open the store");
    tail(&coven, group);
    std::thread::sleep(Duration::from_secs(1));
    let rss = proc_kib("/proc/self/status", "VmRSS").expect("VmRSS") / 1024.0;
    println!("{rss:.1}");
    coven.close();
}

/// Instructions per durable commit and per event from `scripts/callgrind-commit.sh`; `None`
/// when valgrind is not installed or the script fails.
fn instructions() -> Option<(Value, Value)> {
    let installed = Command::new("valgrind").arg("--version").output();
    if !installed.is_ok_and(|output| output.status.success()) {
        eprintln!("valgrind is not installed: no instruction counts");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/callgrind-commit.sh");
    let output = Command::new(script).output().ok()?;
    if !output.status.success() {
        eprintln!(
            "callgrind-commit.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last: Value = serde_json::from_str(stdout.lines().last()?).ok()?;
    Some((last["per_commit"].clone(), last["per_event"].clone()))
}
