//! The properties each fuzz target asserts, shared with `tests/fuzz_corpus.rs`, which replays
//! the committed corpus through the same checks on every `cargo test`.

// Each fuzz target uses one of these.
#![allow(dead_code)]

use coven_group::fuzzing::{self, ClaudeParser, CodexParser, LineEvent, Stripper};

/// The store's value codec: any bytes decode to a value or to an error, never a panic; a value
/// that decodes encodes to bytes that decode to the same encoding again (a fixed point).
pub fn codec(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let kind = kind as usize;
    if let Ok(encoded) = fuzzing::decode_value(kind, bytes) {
        let kind_name = fuzzing::VALUE_KINDS[kind % fuzzing::VALUE_KINDS.len()];
        match fuzzing::decode_value(kind, &encoded) {
            Ok(again) => assert_eq!(again, encoded, "{kind_name}: re-encoding is not stable"),
            Err(err) => panic!("{kind_name}: a value this codec wrote does not decode: {err}"),
        }
    }
}

/// Splits input into output lines the way the process reader does (newline-terminated; the
/// driver skips blank lines before parsing).
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|byte| *byte == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
}

/// A JSON-lines parser accepts exactly the lines that are JSON objects (unknown types are
/// ignored, anything else is invalid output) and never yields empty text.
fn json_lines(line: &[u8], parsed: Result<Vec<LineEvent>, String>) {
    let is_object = matches!(
        serde_json::from_slice::<serde_json::Value>(line),
        Ok(serde_json::Value::Object(_))
    );
    match parsed {
        Ok(events) => {
            assert!(
                is_object,
                "accepted a line that is not a JSON object: {line:?}"
            );
            for event in events {
                if let LineEvent::Text(text) = event {
                    assert!(!text.is_empty(), "empty text from {line:?}");
                }
            }
        }
        Err(reason) => {
            assert!(!is_object, "refused a JSON object ({reason}): {line:?}");
            assert!(!reason.is_empty());
        }
    }
}

pub fn claude(data: &[u8]) {
    let mut parser = ClaudeParser::default();
    for line in lines(data) {
        json_lines(line, parser.parse(line));
    }
}

pub fn codex(data: &[u8]) {
    let mut parser = CodexParser::default();
    for line in lines(data) {
        json_lines(line, parser.parse(line));
    }
}

/// The terminal stripper: its text has no escape or other control character but newline and
/// tab, and does not depend on how the output was cut into reads.
pub fn terminal(data: &[u8]) {
    let Some((&seed, output)) = data.split_first() else {
        return;
    };
    let mut whole = Stripper::default();
    let mut text = whole.feed(output);
    text.push_str(&whole.finish());
    if let Some(bad) = text
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        panic!("control character {bad:?} in the stripped text {text:?}");
    }

    // The same output in reads of varied sizes, chosen by the first byte.
    let mut pieces = Stripper::default();
    let mut cut = String::new();
    let mut rest = output;
    let mut index = 1usize;
    while !rest.is_empty() {
        let size = (1 + (seed as usize * index * 31 + index) % 17).min(rest.len());
        let (read, after) = rest.split_at(size);
        cut.push_str(&pieces.feed(read));
        rest = after;
        index += 1;
    }
    cut.push_str(&pieces.finish());
    assert_eq!(
        cut, text,
        "the text depends on how the output was cut into reads"
    );
}
