//! The sync protocol's records: what a replica asks its home for (a pull) and sends it (a push),
//! and what the home answers. They are plain values, exported to every binding and serializable
//! to JSON (`to_json`/`from_json` below, and serde for Rust hosts), so a host can carry them over
//! any transport. The wire format is versioned by [`SYNC_PROTOCOL_VERSION`]; docs/design.md
//! ("Sync") documents every field.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Familiar, GroupChange, GroupConversation, GroupEvent, Session};

/// The version every sync message carries; a message of another version is refused with
/// `InvalidInput` before anything changes.
pub const SYNC_PROTOCOL_VERSION: u32 = 1;

/// Most changes a home puts into one pull answer (snapshots count their events); a replica
/// pulls again while the answer says `more`.
pub const MAX_PULL_CHANGES: u64 = 4096;

/// Most mutations a replica sends in one push.
pub const MAX_PUSH_MUTATIONS: u32 = 64;

/// A change a replica asks its group's home to make. On a replica group the library's direct
/// calls (`send`, `rename_group`, ...) are refused; these are queued in the durable outbox with
/// `Coven::enqueue` and sent home in order by the sync protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Enum)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mutation {
    /// Creates a group homed at the store the outbox entry names, with this id (a UUID the
    /// replica chose, so it can refer to the group before the home has it).
    CreateGroup {
        group_id: String,
        title: Option<String>,
        member_ids: Vec<String>,
    },
    /// `send`: appends the message and starts a turn at the home.
    Send {
        group_id: String,
        text: String,
        author: Option<String>,
    },
    /// `append_user_message`.
    AppendUserMessage {
        group_id: String,
        text: String,
        author: Option<String>,
    },
    RenameGroup {
        group_id: String,
        title: String,
    },
    AddMember {
        group_id: String,
        familiar_id: String,
    },
    RemoveMember {
        group_id: String,
        familiar_id: String,
    },
    DeleteGroup {
        group_id: String,
    },
    /// `cancel_turn` of the group's running turn at the home.
    CancelTurn {
        group_id: String,
    },
}

impl Mutation {
    /// The group the mutation is about.
    pub fn group_id(&self) -> &str {
        match self {
            Mutation::CreateGroup { group_id, .. }
            | Mutation::Send { group_id, .. }
            | Mutation::AppendUserMessage { group_id, .. }
            | Mutation::RenameGroup { group_id, .. }
            | Mutation::AddMember { group_id, .. }
            | Mutation::RemoveMember { group_id, .. }
            | Mutation::DeleteGroup { group_id }
            | Mutation::CancelTurn { group_id } => group_id,
        }
    }
}

/// Which kind of error a refused mutation met at the home (the variants of `CovenError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, uniffi::Enum)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    InvalidInput,
    Conflict,
    Harness,
    Storage,
    Closed,
    Unavailable,
}

impl ErrorCode {
    pub fn of(err: &Error) -> Self {
        match err {
            Error::NotFound { .. } => ErrorCode::NotFound,
            Error::InvalidInput { .. } => ErrorCode::InvalidInput,
            Error::Conflict { .. } => ErrorCode::Conflict,
            Error::Harness { .. } => ErrorCode::Harness,
            Error::Storage { .. } => ErrorCode::Storage,
            Error::Closed => ErrorCode::Closed,
            Error::Unavailable { .. } => ErrorCode::Unavailable,
        }
    }

    /// Whether sending the same mutation again can succeed: a conflict (a running turn) may
    /// clear, and so may a store that could not write; a missing group or invalid input never.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Conflict | ErrorCode::Storage | ErrorCode::Closed | ErrorCode::Unavailable
        )
    }
}

/// Where an outbox entry stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Enum)]
pub enum OutboxState {
    /// Waiting to be sent, or sent without an answer yet (it is sent again until answered; the
    /// home applies it once).
    Pending,
    /// The home applied it at `rev` of its group; the entry leaves the outbox in the commit that
    /// brings that rev into this store.
    Applied { rev: u64 },
    /// The home refused it. The outbox sends nothing behind it until the host retries it (a new
    /// transaction id) or discards it.
    Failed {
        code: ErrorCode,
        reason: String,
        retryable: bool,
    },
}

/// One mutation in a replica's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct OutboxEntry {
    /// The client transaction id (UUIDv7); a retry gives the entry a new one.
    pub txn_id: String,
    /// The store that is the home of the mutation's group.
    pub home_store_id: String,
    /// The entry's place in this replica's order for that home (increasing, never reused).
    pub order: u64,
    pub mutation: Mutation,
    pub state: OutboxState,
    pub created_at: SystemTime,
}

/// A group a replica holds, and the home rev it has applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct SyncCursor {
    pub group_id: String,
    pub rev: u64,
}

/// A replica asking its home for what changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct PullRequest {
    pub version: u32,
    pub replica_store_id: String,
    /// The home asked; `None` on first contact, when the replica does not know it yet.
    pub home_store_id: Option<String>,
    /// Every group of that home the replica holds. Groups of the home missing here are sent as
    /// snapshots; groups here the home no longer has are answered as deleted.
    pub cursors: Vec<SyncCursor>,
    /// Every mutation up to this order has its answer stored at the replica; the home may forget
    /// those answers.
    pub acked_through: u64,
}

/// One group's part of a pull answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Enum)]
pub enum GroupPull {
    /// Every change of the group in `after_rev + 1 ..= through_rev`, in rev order (possibly not
    /// all the group has: see `more`). A rev of the range may have no change (a home's log may
    /// drop entries whose effect a later change carries); the range, not the revs, tells the
    /// replica it missed nothing.
    Changes {
        group_id: String,
        after_rev: u64,
        through_rev: u64,
        changes: Vec<GroupChange>,
    },
    /// The group's whole state at `rev`, for a replica that is new to it or too far behind.
    Snapshot { snapshot: SyncSnapshot },
    /// The group no longer exists at the home.
    Deleted { group_id: String },
}

/// A group's whole state at the home as of one rev, applied by a replica atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct SyncSnapshot {
    pub group: GroupConversation,
    /// Every session of the group, archived ones included.
    pub sessions: Vec<Session>,
    /// The whole timeline; replies still streaming carry their text so far.
    pub events: Vec<GroupEvent>,
    pub rev: u64,
}

/// The home's answer to a pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct PullResponse {
    pub version: u32,
    pub home_store_id: String,
    pub groups: Vec<GroupPull>,
    /// The familiars the groups of this answer name (replicated with them).
    pub familiars: Vec<Familiar>,
    /// Answers to this replica's mutations that it has not acknowledged yet.
    pub results: Vec<MutationResult>,
    /// More changes are waiting: pull again.
    pub more: bool,
}

/// One outbox mutation as sent to its home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct PushedMutation {
    pub order: u64,
    pub txn_id: String,
    /// 0, then one more each time the host retries the entry after a refusal: the home tells a
    /// retry from a late copy of the refused send by it.
    pub attempt: u32,
    pub mutation: Mutation,
}

/// A replica sending its outbox to a home, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct PushRequest {
    pub version: u32,
    pub replica_store_id: String,
    pub home_store_id: String,
    pub mutations: Vec<PushedMutation>,
    /// As in [`PullRequest::acked_through`].
    pub acked_through: u64,
}

/// What became of one mutation at its home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Enum)]
pub enum MutationOutcome {
    /// Applied at `rev` of the group (the last change it made); `seq` is the event it appended
    /// (a message's), `turn_id` the turn a `Send` started.
    Applied {
        rev: u64,
        seq: Option<u64>,
        turn_id: Option<String>,
    },
    /// Refused; nothing changed at the home.
    Refused {
        code: ErrorCode,
        reason: String,
        retryable: bool,
    },
    /// Applied before; its answer was acknowledged and forgotten.
    AlreadyApplied,
}

/// The answer to one mutation, named by its order and transaction id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct MutationResult {
    pub order: u64,
    pub txn_id: String,
    /// The attempt answered (see [`PushedMutation::attempt`]).
    pub attempt: u32,
    pub group_id: String,
    pub outcome: MutationOutcome,
}

/// The home's answer to a push: one result per mutation it processed, in order. It stops at the
/// first refusal, so the mutations behind one are not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct PushResponse {
    pub version: u32,
    pub home_store_id: String,
    pub results: Vec<MutationResult>,
}

/// Any sync message, for the JSON form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Enum)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SyncMessage {
    PullRequest { request: PullRequest },
    PullResponse { response: PullResponse },
    PushRequest { request: PushRequest },
    PushResponse { response: PushResponse },
}

/// What a replica's store did with a pull answer.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct PullApplied {
    /// Home changes applied (duplicates skipped are not counted).
    pub changes: u64,
    /// Snapshots applied.
    pub snapshots: u64,
    /// Groups removed because the home deleted them.
    pub deleted: u64,
    /// Outbox entries whose effect arrived and that left the outbox.
    pub settled: u64,
    /// The answer said more changes are waiting.
    pub more: bool,
}

/// Refuses a message of another protocol version.
pub(crate) fn check_version(version: u32) -> Result<()> {
    if version != SYNC_PROTOCOL_VERSION {
        return Err(Error::invalid(
            "version",
            format!(
                "sync protocol version {version} is not supported; this store speaks \
                 {SYNC_PROTOCOL_VERSION}"
            ),
        ));
    }
    Ok(())
}

/// The JSON form of a sync message.
#[uniffi::export]
pub fn sync_message_to_json(message: SyncMessage) -> Result<String> {
    serde_json::to_string(&message).map_err(|err| Error::invalid("message", err.to_string()))
}

/// Reads a sync message from its JSON form; `InvalidInput` saying where it is malformed.
#[uniffi::export]
pub fn sync_message_from_json(json: String) -> Result<SyncMessage> {
    serde_json::from_str(&json).map_err(|err| Error::invalid("json", err.to_string()))
}
