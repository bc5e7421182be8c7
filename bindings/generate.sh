#!/usr/bin/env bash
# Builds the library and generates its Swift, Kotlin and Python bindings.
#
#   bindings/generate.sh [--release] [OUT_DIR]      (OUT_DIR defaults to target/bindings)
#
# Writes OUT_DIR/swift (CovenGroup.swift, CovenGroupFFI.h, CovenGroupFFI.modulemap),
# OUT_DIR/kotlin (dev/coven/group/coven_group.kt) and OUT_DIR/python (coven_group.py with the
# shared library beside it, importable with PYTHONPATH=OUT_DIR/python). Everything written is a
# build output: regenerate it rather than committing it.
#
# COVEN_LIBRARY and UNIFFI_BINDGEN name an already built library and generator and skip the
# build (the test suite uses them). COVEN_FEATURES adds cargo features to the library's build
# (`COVEN_FEATURES=testing` for scripts that use the test hooks, such as the `words:N` model).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

profile=debug
cargo_profile=()
if [ "${1:-}" = "--release" ]; then
  profile=release
  cargo_profile=(--release)
  shift
fi
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="${1:-$target_dir/bindings}"

case "$(uname -s)" in
  Darwin) lib_name=libcoven_group.dylib ;;
  *) lib_name=libcoven_group.so ;;
esac

library="${COVEN_LIBRARY:-}"
if [ -z "$library" ]; then
  cargo build --lib "${cargo_profile[@]}" ${COVEN_FEATURES:+--features "$COVEN_FEATURES"}
  library="$target_dir/$profile/$lib_name"
fi
bindgen="${UNIFFI_BINDGEN:-}"
if [ -z "$bindgen" ]; then
  # The generator's own speed does not matter; a debug build of it is enough.
  cargo build --features bindgen --bin uniffi-bindgen
  bindgen="$target_dir/debug/uniffi-bindgen"
fi

rm -rf "$out/swift" "$out/kotlin" "$out/python"
for language in swift kotlin python; do
  # --no-format: swiftformat and ktlint are optional; the output is valid without them.
  "$bindgen" generate --library "$library" --language "$language" \
    --out-dir "$out/$language" --no-format
done
# ctypes loads the library from the module's own directory.
cp "$library" "$out/python/$lib_name"
echo "bindings written to $out"
