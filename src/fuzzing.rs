//! Entry points for the fuzz targets under `fuzz/` and the corpus replay in
//! `tests/fuzz_corpus.rs`: thin wrappers that reach the internal decoders and parsers without
//! making them part of the API. Not for applications; nothing here is stable.

use crate::error::Result;
use crate::harness::claude::ClaudeLines;
use crate::harness::codex::CodexLines;
use crate::harness::jsonl::Protocol;
use crate::harness::terminal::TerminalText;
use crate::model::{Familiar, GroupConversation, GroupEvent, GroupUpdate, Session};
use crate::store::codec;
use crate::store::tables::{self, Head, TurnRecord};

pub use crate::harness::jsonl::LineEvent;

/// The value types the store decodes, one per table that holds codec values, and last the
/// events table's faster decoder (`tables::decode_event`), which must agree with `event`.
pub const VALUE_KINDS: [&str; 8] = [
    "familiar",
    "group",
    "head",
    "event",
    "change",
    "session",
    "turn",
    "event (read path)",
];

/// Decodes `bytes` as a stored value of `VALUE_KINDS[kind]` (taken modulo the number of kinds)
/// with the store's codec and, when that succeeds, hands back the value encoded again.
pub fn decode_value(kind: usize, bytes: &[u8]) -> Result<Vec<u8>> {
    fn again<T: serde::Serialize + serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Vec<u8>> {
        codec::encode(&codec::decode::<T>(bytes)?)
    }
    match kind % VALUE_KINDS.len() {
        0 => again::<Familiar>(bytes),
        1 => again::<GroupConversation>(bytes),
        2 => again::<Head>(bytes),
        3 => again::<GroupEvent>(bytes),
        4 => again::<GroupUpdate>(bytes),
        5 => again::<Session>(bytes),
        6 => again::<TurnRecord>(bytes),
        _ => codec::encode(&tables::decode_event(bytes)?),
    }
}

/// The `claude` stream-json line parser, one line (without its newline) at a time.
#[derive(Default)]
pub struct ClaudeParser(ClaudeLines);

impl ClaudeParser {
    pub fn parse(&mut self, line: &[u8]) -> std::result::Result<Vec<LineEvent>, String> {
        self.0.parse(line)
    }
}

/// The `codex exec --json` line parser, one line (without its newline) at a time.
#[derive(Default)]
pub struct CodexParser(CodexLines);

impl CodexParser {
    pub fn parse(&mut self, line: &[u8]) -> std::result::Result<Vec<LineEvent>, String> {
        self.0.parse(line)
    }
}

/// The `command` harness's terminal-escape stripper: feed reads in order, then finish.
#[derive(Default)]
pub struct Stripper(TerminalText);

impl Stripper {
    pub fn feed(&mut self, bytes: &[u8]) -> String {
        self.0.feed(bytes)
    }

    pub fn finish(&mut self) -> String {
        self.0.finish()
    }
}
