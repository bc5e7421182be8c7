//! Table layout (schema 4). Keys are native redb tuples so every range scan comes back in seq or
//! rev order without decoding; values are codec-encoded storage records (`records`), never the
//! exported types.
//!
//! | table          | key                      | value                                        |
//! |----------------|--------------------------|----------------------------------------------|
//! | meta           | name                     | u64 (schema version)                         |
//! | familiars      | familiar id              | `FamiliarRecord`                             |
//! | groups         | group                    | `GroupRecord` (`updated_at` from head)       |
//! | heads          | group                    | `Head`: next seq, next rev, last activity    |
//! | events         | (group, seq)             | `EventRecord` (a streaming reply has no text)|
//! | reply_chunks   | (group, seq, rev)        | (offset in the reply, text) streamed at rev  |
//! | changes        | (group, rev)             | `ChangeRecord` (refers to its event's text;  |
//! |                |                          | a finished reply's deltas are one record)    |
//! | sessions       | session                  | `SessionRecord`                              |
//! | group_sessions | (group, session)         | ()                                           |
//! | cursors        | (group, consumer)        | u64 rev                                      |
//! | turns          | group                    | `TurnRecord` (the group's turn lock)         |
//! | process_runs   | run marker               | (process group, boot id) of a live run       |
//! | identity       | "store_id"               | u128 store id                                |
//! | sync_homes     | home store               | `HomeRecord` (next outbox order)             |
//! | sync_replicas  | group                    | `ReplicaRecord` (home, home rev applied)     |
//! | sync_tombstones| group                    | u128 home (a replica group deleted at home)  |
//! | outbox         | (home, order)            | `OutboxRecord`                               |
//! | sync_clients   | replica store            | u64 last order applied (at a home)           |
//! | sync_results   | (replica, order)         | `ResultRecord` until acknowledged            |
//!
//! A streaming reply keeps its text as chunks keyed by the rev of the delta that wrote each, so
//! storing n bytes costs O(n), and finishing it writes the whole text once and collapses its
//! deltas' change records into one.

use std::time::SystemTime;

use redb::{ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::codec;
use crate::error::Result;

pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const FAMILIARS: TableDefinition<&str, &[u8]> = TableDefinition::new("familiars");
pub const GROUPS: TableDefinition<u128, &[u8]> = TableDefinition::new("groups");
pub const HEADS: TableDefinition<u128, &[u8]> = TableDefinition::new("heads");
pub const EVENTS: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("events");
/// Text streamed into a reply at a rev, with the byte offset in the reply's text where it starts.
pub const REPLY_CHUNKS: TableDefinition<(u128, u64, u64), (u64, &str)> =
    TableDefinition::new("reply_chunks");
pub const CHANGES: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("changes");
pub const SESSIONS: TableDefinition<u128, &[u8]> = TableDefinition::new("sessions");
pub const GROUP_SESSIONS: TableDefinition<(u128, u128), ()> =
    TableDefinition::new("group_sessions");
pub const CURSORS: TableDefinition<(u128, &str), u64> = TableDefinition::new("cursors");
pub const TURNS: TableDefinition<u128, &[u8]> = TableDefinition::new("turns");
/// Harness process runs in progress (see `runs`): plain redb values, nothing to decode.
pub const PROCESS_RUNS: TableDefinition<u128, (i32, &str)> = TableDefinition::new("process_runs");

/// This store's identity: key [`STORE_ID_KEY`], a UUIDv7 made at first open and never changed.
pub const IDENTITY: TableDefinition<&str, u128> = TableDefinition::new("identity");
/// Homes this store holds replicas of (`sync::HomeRecord`).
pub const SYNC_HOMES: TableDefinition<u128, &[u8]> = TableDefinition::new("sync_homes");
/// Groups held here as replicas: group → `sync::ReplicaRecord` (its home, the home rev applied).
pub const SYNC_REPLICAS: TableDefinition<u128, &[u8]> = TableDefinition::new("sync_replicas");
/// Replica groups their home deleted: group → home. A stale snapshot never brings one back.
pub const SYNC_TOMBSTONES: TableDefinition<u128, u128> = TableDefinition::new("sync_tombstones");
/// The outbox: (home, order) → `sync::OutboxRecord`.
pub const OUTBOX: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("outbox");
/// At a home, per replica: the order of the last mutation of it applied here.
pub const SYNC_CLIENTS: TableDefinition<u128, u64> = TableDefinition::new("sync_clients");
/// At a home: (replica, order) → `sync::ResultRecord`, kept until the replica acknowledges it.
pub const SYNC_RESULTS: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("sync_results");

/// Key in `IDENTITY` holding the store id.
pub const STORE_ID_KEY: &str = "store_id";

/// Key in `meta` holding the schema version.
pub const SCHEMA_KEY: &str = "schema_version";
/// Schema this release writes; a file with a larger one is refused, one with a smaller one is
/// migrated (see `migrate`).
pub const SCHEMA_VERSION: u64 = 4;

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
