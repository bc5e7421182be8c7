//! Sync inside the writer: the records of the sync tables, a home's bookkeeping of the
//! mutations its replicas sent (applied once each, answers kept until acknowledged), and a
//! replica's side: the outbox with its local echoes, and applying the home's changes and
//! snapshots in rev order, exactly once. See docs/design.md ("Sync").
//!
//! A replica group's seq is its home's (events are applied in seq order, so the replica claims
//! the same seqs); its revs are the replica's own: its log holds the home's changes as applied
//! here, in the home's order, plus local ones (echoes, resets), so a replica's subscriptions are
//! as lossless as a home's. The home rev applied is the replica's cursor (`ReplicaRecord`).
//!
//! Here: the records of the sync tables and what both sides use; `home` (answers to replicas'
//! mutations), `outbox` (a replica's queue and its echoes), `replica` (applying the home's
//! changes and snapshots), `reads`.

use std::collections::HashMap;
use std::time::SystemTime;

use redb::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::batch::Batch;
use super::codec;
use super::ops::NewEvent;
use super::records::{self, ChangeRecord};
use super::tables::*;
use crate::error::{Error, Result};
use crate::ids;
use crate::model::{
    Familiar, GroupChange, GroupConversation, GroupEvent, GroupUpdate, PendingMessage, SendState,
    Session,
};
use crate::sync::protocol::{
    ErrorCode, GroupPull, Mutation, MutationOutcome, MutationResult, OutboxEntry, OutboxState,
    PullApplied, SyncSnapshot,
};

// ---- records ----

/// `sync_homes` value: a home this store holds replicas of or sends mutations to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeRecord {
    /// The order the next outbox entry for this home gets.
    pub next_order: u64,
}

/// `sync_replicas` value: the home of a replica group and the home rev applied here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    pub home: u128,
    pub home_rev: u64,
}

/// A refusal's error code as stored: one byte, the code's index in [`STORED_CODES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeRecord(ErrorCode);

/// Every error code at the index that is its stored byte. The order is part of the stored
/// format and never changes: a new code goes at the end.
const STORED_CODES: [ErrorCode; 7] = [
    ErrorCode::NotFound,
    ErrorCode::InvalidInput,
    ErrorCode::Conflict,
    ErrorCode::Harness,
    ErrorCode::Storage,
    ErrorCode::Closed,
    ErrorCode::Unavailable,
];

impl CodeRecord {
    fn of(code: ErrorCode) -> Self {
        CodeRecord(code)
    }

    fn code(self) -> ErrorCode {
        self.0
    }
}

impl Serialize for CodeRecord {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match STORED_CODES.iter().position(|&code| code == self.0) {
            Some(byte) => serializer.serialize_u8(byte as u8),
            None => Err(serde::ser::Error::custom(format!(
                "error code {:?} has no stored byte",
                self.0
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for CodeRecord {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let byte = u8::deserialize(deserializer)?;
        match STORED_CODES.get(usize::from(byte)) {
            Some(&code) => Ok(CodeRecord(code)),
            None => Err(serde::de::Error::custom(format!(
                "unknown error code {byte}"
            ))),
        }
    }
}

/// A mutation without its group (the record beside it holds that).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MutationRecord {
    CreateGroup {
        title: Option<String>,
        members: Vec<String>,
    },
    Send {
        text: String,
        author: Option<String>,
    },
    Append {
        text: String,
        author: Option<String>,
    },
    Rename {
        title: String,
    },
    AddMember {
        familiar: String,
    },
    RemoveMember {
        familiar: String,
    },
    Delete,
    Cancel,
}

impl MutationRecord {
    pub fn of(mutation: &Mutation) -> Self {
        match mutation.clone() {
            Mutation::CreateGroup {
                title, member_ids, ..
            } => MutationRecord::CreateGroup {
                title,
                members: member_ids,
            },
            Mutation::Send { text, author, .. } => MutationRecord::Send { text, author },
            Mutation::AppendUserMessage { text, author, .. } => {
                MutationRecord::Append { text, author }
            }
            Mutation::RenameGroup { title, .. } => MutationRecord::Rename { title },
            Mutation::AddMember { familiar_id, .. } => MutationRecord::AddMember {
                familiar: familiar_id,
            },
            Mutation::RemoveMember { familiar_id, .. } => MutationRecord::RemoveMember {
                familiar: familiar_id,
            },
            Mutation::DeleteGroup { .. } => MutationRecord::Delete,
            Mutation::CancelTurn { .. } => MutationRecord::Cancel,
        }
    }

    pub fn into_mutation(self, group: u128) -> Mutation {
        let group_id = ids::to_string(group);
        match self {
            MutationRecord::CreateGroup { title, members } => Mutation::CreateGroup {
                group_id,
                title,
                member_ids: members,
            },
            MutationRecord::Send { text, author } => Mutation::Send {
                group_id,
                text,
                author,
            },
            MutationRecord::Append { text, author } => Mutation::AppendUserMessage {
                group_id,
                text,
                author,
            },
            MutationRecord::Rename { title } => Mutation::RenameGroup { group_id, title },
            MutationRecord::AddMember { familiar } => Mutation::AddMember {
                group_id,
                familiar_id: familiar,
            },
            MutationRecord::RemoveMember { familiar } => Mutation::RemoveMember {
                group_id,
                familiar_id: familiar,
            },
            MutationRecord::Delete => Mutation::DeleteGroup { group_id },
            MutationRecord::Cancel => Mutation::CancelTurn { group_id },
        }
    }

    /// The text, author and kind of a message (the mutations that echo in the timeline).
    fn message(&self) -> Option<(&str, Option<&String>, bool)> {
        match self {
            MutationRecord::Send { text, author } => Some((text, author.as_ref(), true)),
            MutationRecord::Append { text, author } => Some((text, author.as_ref(), false)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateRecord {
    Pending,
    Applied {
        rev: u64,
        seq: Option<u64>,
    },
    Failed {
        code: CodeRecord,
        reason: String,
        retryable: bool,
    },
}

/// `outbox` value; the key is (home, order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub txn: u128,
    pub group: u128,
    /// How many times the host retried it after a refusal: the home tells a retry from a stale
    /// copy of the refused send by it.
    pub attempt: u32,
    pub mutation: MutationRecord,
    pub state: StateRecord,
    pub created_at: SystemTime,
}

impl OutboxRecord {
    pub fn entry(&self, home: u128, order: u64) -> OutboxEntry {
        OutboxEntry {
            txn_id: ids::to_string(self.txn),
            home_store_id: ids::to_string(home),
            order,
            mutation: self.mutation.clone().into_mutation(self.group),
            state: match &self.state {
                StateRecord::Pending => OutboxState::Pending,
                StateRecord::Applied { rev, .. } => OutboxState::Applied { rev: *rev },
                StateRecord::Failed {
                    code,
                    reason,
                    retryable,
                } => OutboxState::Failed {
                    code: code.code(),
                    reason: reason.clone(),
                    retryable: *retryable,
                },
            },
            created_at: self.created_at,
        }
    }

    /// The local echo of a message entry.
    pub fn echo(&self) -> Option<PendingMessage> {
        let (text, author, starts_turn) = self.mutation.message()?;
        Some(PendingMessage {
            txn_id: ids::to_string(self.txn),
            group_id: ids::to_string(self.group),
            text: text.to_owned(),
            author: author.cloned(),
            starts_turn,
            state: match &self.state {
                StateRecord::Failed {
                    reason, retryable, ..
                } => SendState::Failed {
                    reason: reason.clone(),
                    retryable: *retryable,
                },
                _ => SendState::Pending,
            },
            created_at: self.created_at,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutcomeRecord {
    Applied {
        rev: u64,
        seq: Option<u64>,
        turn: Option<u128>,
    },
    Refused {
        code: CodeRecord,
        reason: String,
        retryable: bool,
    },
}

/// `sync_results` value: a home's answer to one mutation of a replica; the key is
/// (replica, order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRecord {
    pub txn: u128,
    pub attempt: u32,
    pub group: u128,
    pub outcome: OutcomeRecord,
}

impl ResultRecord {
    pub fn result(&self, order: u64) -> MutationResult {
        MutationResult {
            order,
            txn_id: ids::to_string(self.txn),
            attempt: self.attempt,
            group_id: ids::to_string(self.group),
            outcome: self.outcome.outcome(),
        }
    }
}

impl OutcomeRecord {
    /// The outcome as the protocol carries it.
    pub fn outcome(&self) -> MutationOutcome {
        match self {
            OutcomeRecord::Applied { rev, seq, turn } => MutationOutcome::Applied {
                rev: *rev,
                seq: *seq,
                turn_id: turn.map(ids::to_string),
            },
            OutcomeRecord::Refused {
                code,
                reason,
                retryable,
            } => MutationOutcome::Refused {
                code: code.code(),
                reason: reason.clone(),
                retryable: *retryable,
            },
        }
    }
}

/// The outcome record of a refusal.
pub fn refused(err: &Error) -> OutcomeRecord {
    let code = ErrorCode::of(err);
    OutcomeRecord::Refused {
        code: CodeRecord::of(code),
        reason: err.to_string(),
        retryable: code.retryable(),
    }
}

/// The refusal of a direct write to a replica group.
pub fn homed_elsewhere(group: u128, home: u128) -> Error {
    Error::conflict(format!(
        "group {} is a replica of store {}: it changes only at its home; queue the change \
         with enqueue (it is sent home by sync)",
        ids::to_string(group),
        ids::to_string(home)
    ))
}

// ---- both sides ----

impl<'txn> Batch<'txn> {
    pub fn replica(&mut self, group: u128) -> Result<Option<ReplicaRecord>> {
        if !self.may_hold_replicas && !self.replica_added {
            return Ok(None);
        }
        let table = self.sync_replicas.open()?;
        if self.replicas_table_empty.is_none() {
            self.replicas_table_empty = Some(table.is_empty()?);
        }
        load(table, group)
    }

    /// `Conflict` naming the home when the group is a replica here: a direct write is refused.
    pub fn ensure_homed_here(&mut self, group: u128) -> Result<()> {
        match self.replica(group)? {
            Some(replica) => Err(homed_elsewhere(group, replica.home)),
            None => Ok(()),
        }
    }

    /// Whether a group with this id exists here or was a replica its home deleted: a group
    /// created with a replica's chosen id must be new to both.
    pub fn group_id_taken(&self, group: u128) -> Result<bool> {
        Ok(self.groups.open()?.get(group)?.is_some()
            || self.sync_tombstones.open()?.get(group)?.is_some())
    }

    fn store_replica(&mut self, group: u128, record: &ReplicaRecord) -> Result<()> {
        self.replica_added = true;
        save(self.sync_replicas.open_mut()?, group, record)
    }
}

/// Encodes a record and stores it under `key`: what [`load`] reads back.
fn save<'k, K: redb::Key + 'static>(
    table: &mut redb::Table<'_, K, &'static [u8]>,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
    record: &impl Serialize,
) -> Result<()> {
    table.insert(key, codec::encode(record)?.as_slice())?;
    Ok(())
}

mod home;
mod outbox;
mod reads;
mod replica;

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal's stored bytes are the format byte, `Failed`'s index, the code's byte, the
    /// reason and `retryable`; the bytes of the codes are the format's and never change.
    #[test]
    fn refused_states_keep_their_stored_bytes() {
        let bytes_of_codes = [
            (ErrorCode::NotFound, 0),
            (ErrorCode::InvalidInput, 1),
            (ErrorCode::Conflict, 2),
            (ErrorCode::Harness, 3),
            (ErrorCode::Storage, 4),
            (ErrorCode::Closed, 5),
            (ErrorCode::Unavailable, 6),
        ];
        for (code, byte) in bytes_of_codes {
            let state = StateRecord::Failed {
                code: CodeRecord::of(code),
                reason: "r".to_owned(),
                retryable: true,
            };
            let stored = codec::encode(&state).unwrap();
            assert_eq!(stored, [codec::FORMAT_VERSION, 2, byte, 1, b'r', 1]);
            assert_eq!(codec::decode::<StateRecord>(&stored).unwrap(), state);
            assert_eq!(CodeRecord::of(code).code(), code);
        }
        let unknown = [codec::FORMAT_VERSION, 2, 7, 1, b'r', 1];
        assert!(codec::decode::<StateRecord>(&unknown).is_err());
    }
}
