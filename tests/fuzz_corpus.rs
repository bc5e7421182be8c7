//! Replays the fuzz targets' committed seed corpus (`fuzz/corpus/<target>/`) and every kept
//! crash regression (`fuzz/regressions/<target>/`) through the same property checks the targets
//! assert, so a fixed crash stays fixed without a fuzzing toolchain.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut found = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            if path.is_file() {
                let bytes = std::fs::read(&path).expect("read a corpus file");
                found.push((path, bytes));
            }
        }
    }
    found.sort();
    found
}

fn replay(target: &str, check: fn(&[u8])) {
    let inputs = inputs(target);
    assert!(
        inputs.len() >= 4,
        "fuzz/corpus/{target} should hold a seed corpus"
    );
    for (path, bytes) in inputs {
        if let Err(panic) = std::panic::catch_unwind(|| check(&bytes)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("{target}: {} fails: {message}", path.display());
        }
    }
}

#[test]
fn codec_decode_corpus() {
    replay("codec_decode", checks::codec);
}

#[test]
fn claude_lines_corpus() {
    replay("claude_lines", checks::claude);
}

#[test]
fn codex_lines_corpus() {
    replay("codex_lines", checks::codex);
}

#[test]
fn terminal_strip_corpus() {
    replay("terminal_strip", checks::terminal);
}
