//! Table layout. Keys are native redb tuples so every range scan comes back in seq or rev order
//! without decoding; values are codec-encoded records.
//!
//! | table          | key                      | value                                        |
//! |----------------|--------------------------|----------------------------------------------|
//! | meta           | name                     | u64 (schema version)                         |
//! | familiars      | familiar id              | `Familiar`                                   |
//! | groups         | group                    | `GroupConversation` (`updated_at` from head) |
//! | heads          | group                    | `Head`: next seq, next rev, last activity    |
//! | events         | (group, seq)             | `GroupEvent` (a streaming reply has no text) |
//! | reply_chunks   | (group, seq, rev)        | text streamed into a reply at that rev       |
//! | changes        | (group, rev)             | `GroupUpdate`                                |
//! | sessions       | session                  | `Session`                                    |
//! | group_sessions | (group, session)         | ()                                           |
//! | cursors        | (group, consumer)        | u64 rev                                      |
//! | turns          | group                    | `TurnRecord` (the group's turn lock)         |
//! | process_runs   | run marker               | (process group, boot id) of a live run       |
//!
//! A streaming reply keeps its text as chunks keyed by rev, so storing n bytes costs O(n) and
//! finishing it writes the whole text once.

use std::time::SystemTime;

use redb::{ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::codec;
use crate::error::Result;
use crate::model::{EventKind, GroupEvent, ReplyError, SystemNotice};

pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const FAMILIARS: TableDefinition<&str, &[u8]> = TableDefinition::new("familiars");
pub const GROUPS: TableDefinition<u128, &[u8]> = TableDefinition::new("groups");
pub const HEADS: TableDefinition<u128, &[u8]> = TableDefinition::new("heads");
pub const EVENTS: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("events");
pub const REPLY_CHUNKS: TableDefinition<(u128, u64, u64), &str> =
    TableDefinition::new("reply_chunks");
pub const CHANGES: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("changes");
pub const SESSIONS: TableDefinition<u128, &[u8]> = TableDefinition::new("sessions");
pub const GROUP_SESSIONS: TableDefinition<(u128, u128), ()> =
    TableDefinition::new("group_sessions");
pub const CURSORS: TableDefinition<(u128, &str), u64> = TableDefinition::new("cursors");
pub const TURNS: TableDefinition<u128, &[u8]> = TableDefinition::new("turns");
/// Harness process runs in progress (see `runs`): plain redb values, nothing to decode.
pub const PROCESS_RUNS: TableDefinition<u128, (i32, &str)> = TableDefinition::new("process_runs");

/// Key in `meta` holding the schema version.
pub const SCHEMA_KEY: &str = "schema_version";
/// Schema this release writes; a file with a larger one is refused.
pub const SCHEMA_VERSION: u64 = 1;

/// Where a group's sequences stand. Invariant: every seq in `1..next_seq` and every rev in
/// `1..next_rev` has been assigned exactly once, in one committed transaction each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub next_seq: u64,
    pub next_rev: u64,
    pub active_at: SystemTime,
}

impl Head {
    pub fn new(now: SystemTime) -> Self {
        Self {
            next_seq: 1,
            next_rev: 1,
            active_at: now,
        }
    }

    /// The latest assigned rev (0 before any change).
    pub fn rev(&self) -> u64 {
        self.next_rev - 1
    }

    /// The latest assigned seq (0 before any event).
    pub fn seq(&self) -> u64 {
        self.next_seq - 1
    }
}

/// The group's turn lock: which turn is running and which members it still waits on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnRecord {
    pub turn_id: u128,
    pub user_seq: u64,
    pub started_at: SystemTime,
    /// Familiar ids whose replies have not finished yet.
    pub pending: Vec<String>,
}

/// Reads and decodes one value.
pub fn load<'k, K, T>(
    table: &impl ReadableTable<K, &'static [u8]>,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
) -> Result<Option<T>>
where
    K: redb::Key + 'static,
    T: DeserializeOwned,
{
    match table.get(key)? {
        Some(guard) => Ok(Some(codec::decode(guard.value())?)),
        None => Ok(None),
    }
}

/// A stored `GroupEvent` as read from its page: the same fields in the same order, strings
/// borrowed from the value, so decoding an event copies each string once instead of going
/// through bincode's zero-filled buffers (most of the cost of reading a timeline back).
#[derive(Deserialize)]
struct StoredEvent<'a> {
    group_id: &'a str,
    seq: u64,
    rev: u64,
    kind: EventKind,
    #[serde(borrow)]
    familiar_id: Option<&'a str>,
    #[serde(borrow)]
    author: Option<&'a str>,
    #[serde(borrow)]
    turn_id: Option<&'a str>,
    text: &'a str,
    streaming: bool,
    error: Option<ReplyError>,
    notice: Option<SystemNotice>,
    timestamp: SystemTime,
}

/// Decodes an `events` value; the same result as `codec::decode::<GroupEvent>`, faster.
pub fn decode_event(bytes: &[u8]) -> Result<GroupEvent> {
    let stored: StoredEvent<'_> = codec::decode(bytes)?;
    Ok(GroupEvent {
        group_id: stored.group_id.to_owned(),
        seq: stored.seq,
        rev: stored.rev,
        kind: stored.kind,
        familiar_id: stored.familiar_id.map(str::to_owned),
        author: stored.author.map(str::to_owned),
        turn_id: stored.turn_id.map(str::to_owned),
        text: stored.text.to_owned(),
        streaming: stored.streaming,
        error: stored.error,
        notice: stored.notice,
        timestamp: stored.timestamp,
    })
}

/// Fills a streaming reply's text (and its latest rev) from its chunks; O(text length). Any
/// other event is left as it is.
pub fn complete_event(
    chunks: &impl ReadableTable<(u128, u64, u64), &'static str>,
    group: u128,
    event: &mut GroupEvent,
) -> Result<()> {
    if event.streaming {
        let seq = event.seq;
        for entry in chunks.range((group, seq, 0)..=(group, seq, u64::MAX))? {
            let (key, text) = entry?;
            event.text.push_str(text.value());
            event.rev = event.rev.max(key.value().2);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::ReplyErrorKind;

    #[test]
    fn decode_event_reads_what_codec_decode_reads() {
        let plain = GroupEvent {
            group_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            seq: 7,
            rev: 300,
            kind: EventKind::User,
            familiar_id: None,
            author: None,
            turn_id: None,
            text: "héllo, wörld".into(),
            streaming: false,
            error: None,
            notice: None,
            timestamp: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        };
        let full = GroupEvent {
            kind: EventKind::Familiar,
            familiar_id: Some("ada".into()),
            author: Some("Sam".into()),
            turn_id: Some("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c".into()),
            text: String::new(),
            streaming: true,
            error: Some(ReplyError {
                kind: ReplyErrorKind::Interrupted,
                message: "stopped".into(),
            }),
            notice: Some(SystemNotice::Renamed {
                from: "a".into(),
                to: "b".into(),
            }),
            ..plain.clone()
        };
        for event in [plain, full] {
            let bytes = codec::encode(&event).unwrap();
            assert_eq!(decode_event(&bytes).unwrap(), event);
            assert_eq!(codec::decode::<GroupEvent>(&bytes).unwrap(), event);
            let mut trailing = bytes.clone();
            trailing.push(0);
            assert!(decode_event(&trailing).is_err());
            assert!(decode_event(&bytes[..bytes.len() - 1]).is_err());
        }
    }
}
