//! Entry points for the fuzz targets under `fuzz/` and the corpus replay in
//! `tests/fuzz_corpus.rs`: thin wrappers that reach the internal decoders and parsers without
//! making them part of the API. Not for applications; nothing here is stable.

use crate::error::Result;
use crate::harness::claude::ClaudeLines;
use crate::harness::codex::CodexLines;
use crate::harness::jsonl::Protocol;
use crate::harness::terminal::TerminalText;
use crate::store::tables::{Head, TurnRecord};
use crate::store::{codec, records};

pub use crate::harness::jsonl::LineEvent;

/// The value types the store decodes, one per table that holds codec values: the storage
/// records of format 2 (`store::records`).
pub const VALUE_KINDS: [&str; 7] = [
    "familiar", "group", "head", "event", "change", "session", "turn",
];

/// Decodes `bytes` as a stored value of `VALUE_KINDS[kind]` (taken modulo the number of kinds)
/// with the store's codec and, when that succeeds, hands back the value encoded again.
pub fn decode_value(kind: usize, bytes: &[u8]) -> Result<Vec<u8>> {
    fn again<T: serde::Serialize + serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Vec<u8>> {
        codec::encode(&codec::decode::<T>(bytes)?)
    }
    // The key parts a value does not hold; any will do.
    const GROUP: u128 = 1;
    match kind % VALUE_KINDS.len() {
        0 => records::encode_familiar(&records::decode_familiar("f", bytes)?),
        1 => again::<records::GroupRecord>(bytes),
        2 => again::<Head>(bytes),
        3 => records::encode_event(&records::decode_event(GROUP, 1, bytes)?),
        4 => again::<records::ChangeRecord>(bytes),
        5 => again::<records::SessionRecord>(bytes),
        _ => again::<TurnRecord>(bytes),
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
