//! Sync inside the writer: the records of the sync tables, a home's bookkeeping of the
//! mutations its replicas sent (applied once each, answers kept until acknowledged), and a
//! replica's side: the outbox with its local echoes, and applying the home's changes and
//! snapshots in rev order, exactly once. See docs/design.md ("Sync").
//!
//! A replica group's seq is its home's (events are applied in seq order, so the replica claims
//! the same seqs); its revs are the replica's own: its log holds the home's changes as applied
//! here, in the home's order, plus local ones (echoes, resets), so a replica's subscriptions are
//! as lossless as a home's. The home rev applied is the replica's cursor (`ReplicaRecord`).

use std::collections::HashMap;
use std::time::SystemTime;

use redb::ReadableTable;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CodeRecord {
    NotFound,
    InvalidInput,
    Conflict,
    Harness,
    Storage,
    Closed,
    Unavailable,
}

impl CodeRecord {
    fn of(code: ErrorCode) -> Self {
        match code {
            ErrorCode::NotFound => CodeRecord::NotFound,
            ErrorCode::InvalidInput => CodeRecord::InvalidInput,
            ErrorCode::Conflict => CodeRecord::Conflict,
            ErrorCode::Harness => CodeRecord::Harness,
            ErrorCode::Storage => CodeRecord::Storage,
            ErrorCode::Closed => CodeRecord::Closed,
            ErrorCode::Unavailable => CodeRecord::Unavailable,
        }
    }

    fn code(self) -> ErrorCode {
        match self {
            CodeRecord::NotFound => ErrorCode::NotFound,
            CodeRecord::InvalidInput => ErrorCode::InvalidInput,
            CodeRecord::Conflict => ErrorCode::Conflict,
            CodeRecord::Harness => ErrorCode::Harness,
            CodeRecord::Storage => ErrorCode::Storage,
            CodeRecord::Closed => ErrorCode::Closed,
            CodeRecord::Unavailable => ErrorCode::Unavailable,
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
            outcome: match &self.outcome {
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
    pub fn replica(&self, group: u128) -> Result<Option<ReplicaRecord>> {
        load(self.sync_replicas.open()?, group)
    }

    /// `Conflict` naming the home when the group is a replica here: a direct write is refused.
    pub fn ensure_homed_here(&self, group: u128) -> Result<()> {
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
        self.sync_replicas
            .open_mut()?
            .insert(group, codec::encode(record)?.as_slice())?;
        Ok(())
    }
}

// ---- the home's side ----

impl<'txn> Batch<'txn> {
    /// The answer already given to a replica's mutation, if this is a copy of one processed:
    /// an order applied before (its stored answer, or `AlreadyApplied` once acknowledged), or
    /// the same attempt of a refused one.
    pub fn remote_answer(
        &self,
        replica: u128,
        order: u64,
        txn: u128,
        attempt: u32,
    ) -> Result<Option<MutationResult>> {
        let last_applied = self
            .sync_clients
            .open()?
            .get(replica)?
            .map_or(0, |v| v.value());
        let stored: Option<ResultRecord> = load(self.sync_results.open()?, (replica, order))?;
        if order <= last_applied {
            return Ok(Some(match stored {
                Some(stored) => stored.result(order),
                None => MutationResult {
                    order,
                    txn_id: ids::to_string(txn),
                    attempt,
                    group_id: String::new(),
                    outcome: MutationOutcome::AlreadyApplied,
                },
            }));
        }
        Ok(stored
            .filter(|stored| stored.txn == txn && stored.attempt >= attempt)
            .map(|stored| stored.result(order)))
    }

    /// Records the answer to a replica's mutation in the transaction that applied it (or
    /// refused it): a copy of it is then answered from here, never applied again.
    pub fn record_remote(
        &mut self,
        replica: u128,
        order: u64,
        record: &ResultRecord,
    ) -> Result<()> {
        self.sync_results
            .open_mut()?
            .insert((replica, order), codec::encode(record)?.as_slice())?;
        if matches!(record.outcome, OutcomeRecord::Applied { .. }) {
            self.sync_clients.open_mut()?.insert(replica, order)?;
        }
        Ok(())
    }

    /// Forgets the answers a replica has stored. Every mutation of it up to `acked_through` is
    /// settled there (applied, or refused and discarded by its host), so none of them is
    /// applied from now on: a late copy of one is answered `AlreadyApplied`.
    pub fn forget_answers(&mut self, replica: u128, acked_through: u64) -> Result<()> {
        if acked_through == 0 {
            return Ok(());
        }
        self.sync_results
            .open_mut()?
            .retain_in((replica, 0)..=(replica, acked_through), |_, _| false)?;
        let last_applied = self
            .sync_clients
            .open()?
            .get(replica)?
            .map_or(0, |v| v.value());
        if acked_through > last_applied {
            self.sync_clients
                .open_mut()?
                .insert(replica, acked_through)?;
        }
        Ok(())
    }
}

// ---- the replica's side: the outbox ----

impl<'txn> Batch<'txn> {
    fn next_order(&mut self, home: u128) -> Result<u64> {
        let mut record = load::<u128, HomeRecord>(self.sync_homes.open()?, home)?
            .unwrap_or(HomeRecord { next_order: 1 });
        let order = record.next_order;
        record.next_order += 1;
        self.sync_homes
            .open_mut()?
            .insert(home, codec::encode(&record)?.as_slice())?;
        Ok(order)
    }

    /// Registers a home this store syncs with (its outbox order starts at 1).
    pub fn know_home(&mut self, home: u128) -> Result<()> {
        if load::<u128, HomeRecord>(self.sync_homes.open()?, home)?.is_none() {
            self.sync_homes.open_mut()?.insert(
                home,
                codec::encode(&HomeRecord { next_order: 1 })?.as_slice(),
            )?;
        }
        Ok(())
    }

    /// Queues a mutation for the home of its group (`home` for a group to create there). A
    /// message shows at once as a local echo (`MessagePending`).
    pub fn enqueue(
        &mut self,
        txn: u128,
        group: u128,
        home: Option<u128>,
        mutation: MutationRecord,
    ) -> Result<OutboxEntry> {
        let home = match (&mutation, home) {
            (MutationRecord::CreateGroup { .. }, Some(home)) => {
                if self.group_id_taken(group)? {
                    return Err(Error::conflict(format!(
                        "group {} already exists",
                        ids::to_string(group)
                    )));
                }
                for familiar in match &mutation {
                    MutationRecord::CreateGroup { members, .. } => members.as_slice(),
                    _ => &[],
                } {
                    self.familiar(familiar)?;
                }
                home
            }
            (_, _) => match self.replica(group)? {
                Some(replica) => replica.home,
                None => {
                    self.head(group)?;
                    return Err(Error::conflict(format!(
                        "group {} is homed in this store: change it directly, not through the \
                         outbox",
                        ids::to_string(group)
                    )));
                }
            },
        };
        let order = self.next_order(home)?;
        let record = OutboxRecord {
            txn,
            group,
            attempt: 0,
            mutation,
            state: StateRecord::Pending,
            created_at: self.now,
        };
        self.store_outbox(home, order, &record)?;
        if let Some(message) = record.echo() {
            self.record(group, GroupUpdate::MessagePending { message })?;
        }
        Ok(record.entry(home, order))
    }

    fn store_outbox(&mut self, home: u128, order: u64, record: &OutboxRecord) -> Result<()> {
        self.outbox
            .open_mut()?
            .insert((home, order), codec::encode(record)?.as_slice())?;
        Ok(())
    }

    /// The outbox entry with this transaction id.
    fn outbox_entry(&self, txn: u128) -> Result<(u128, u64, OutboxRecord)> {
        for entry in self.outbox.open()?.iter()? {
            let (key, value) = entry?;
            let record: OutboxRecord = codec::decode(value.value())?;
            if record.txn == txn {
                let (home, order) = key.value();
                return Ok((home, order, record));
            }
        }
        Err(Error::not_found("outbox entry", ids::to_string(txn)))
    }

    /// Sends a refused entry again (its next attempt); the outbox goes on behind it.
    pub fn retry_outbox(&mut self, txn: u128) -> Result<OutboxEntry> {
        let (home, order, mut record) = self.outbox_entry(txn)?;
        if !matches!(record.state, StateRecord::Failed { .. }) {
            return Err(Error::conflict(format!(
                "outbox entry {} has not failed; only a refused entry is retried",
                ids::to_string(txn)
            )));
        }
        record.state = StateRecord::Pending;
        record.attempt += 1;
        self.store_outbox(home, order, &record)?;
        if let Some(message) = record.echo() {
            self.record_if_present(record.group, GroupUpdate::MessagePending { message })?;
        }
        Ok(record.entry(home, order))
    }

    /// Drops a refused entry (and its echo); the outbox goes on behind it. An entry that may be
    /// on its way home (pending) cannot be discarded: it could still be applied.
    pub fn discard_outbox(&mut self, txn: u128) -> Result<()> {
        let (home, order, record) = self.outbox_entry(txn)?;
        if !matches!(record.state, StateRecord::Failed { .. }) {
            return Err(Error::conflict(format!(
                "outbox entry {} has not failed; a pending entry may still be applied at its \
                 home, so only a refused one is discarded",
                ids::to_string(txn)
            )));
        }
        self.outbox.open_mut()?.remove((home, order))?;
        if record.echo().is_some() {
            self.record_if_present(
                record.group,
                GroupUpdate::MessageDiscarded {
                    txn_id: ids::to_string(txn),
                },
            )?;
        }
        Ok(())
    }

    /// Records a change of a group that may be gone here (an echo of a deleted group).
    fn record_if_present(&mut self, group: u128, update: GroupUpdate) -> Result<()> {
        match self.head(group) {
            Ok(_) => self.record(group, update).map(drop),
            Err(Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// The entries of one home's outbox, in order.
    fn outbox_of(&self, home: u128) -> Result<Vec<(u64, OutboxRecord)>> {
        let mut out = Vec::new();
        for entry in self.outbox.open()?.range((home, 0)..=(home, u64::MAX))? {
            let (key, value) = entry?;
            out.push((key.value().1, codec::decode(value.value())?));
        }
        Ok(out)
    }

    /// Stores the home's answers to this store's mutations. An answer for an entry that is
    /// gone, or for another transaction or attempt, is a stale copy and changes nothing.
    /// Returns how many entries left the outbox.
    pub fn record_answers(&mut self, home: u128, results: &[MutationResult]) -> Result<u64> {
        let mut settled = 0;
        for result in results {
            let Some(mut record) =
                load::<(u128, u64), OutboxRecord>(self.outbox.open()?, (home, result.order))?
            else {
                continue;
            };
            // Only a pending entry takes an answer, and only one to its current attempt: a
            // late copy of the answer to an attempt the host has retried since is stale.
            if ids::to_string(record.txn) != result.txn_id
                || !matches!(record.state, StateRecord::Pending)
                || (result.attempt != record.attempt
                    && !matches!(result.outcome, MutationOutcome::Applied { .. }))
            {
                continue;
            }
            match &result.outcome {
                MutationOutcome::Applied { rev, seq, .. } => {
                    record.state = StateRecord::Applied {
                        rev: *rev,
                        seq: *seq,
                    };
                    self.store_outbox(home, result.order, &record)?;
                }
                MutationOutcome::Refused {
                    code,
                    reason,
                    retryable,
                } => {
                    record.state = StateRecord::Failed {
                        code: CodeRecord::of(*code),
                        reason: reason.clone(),
                        retryable: *retryable,
                    };
                    self.store_outbox(home, result.order, &record)?;
                    if let Some(message) = record.echo() {
                        self.record_if_present(
                            record.group,
                            GroupUpdate::MessagePending { message },
                        )?;
                    }
                }
                // Applied, and its answer forgotten: only a store that lost what it had
                // recorded (a non-durable store's crash) gets this. Its effect is already here
                // or on its way; the echo goes now.
                MutationOutcome::AlreadyApplied => {
                    record.state = StateRecord::Applied { rev: 0, seq: None };
                    self.store_outbox(home, result.order, &record)?;
                }
            }
        }
        // An answer can arrive after the changes it names (a push answered late).
        let groups: Vec<u128> = self
            .outbox_of(home)?
            .into_iter()
            .map(|(_, record)| record.group)
            .collect();
        for group in dedup(groups) {
            if let Some(replica) = self.replica(group)? {
                settled += self.settle(home, group, replica.home_rev, None)?;
            }
        }
        Ok(settled)
    }

    /// Removes the entries of `group` whose effect has arrived: applied at a home rev up to
    /// `home_rev`. A message leaves with a `MessageDiscarded` change unless `quiet` names the
    /// reset that already dropped its echo.
    fn settle(
        &mut self,
        home: u128,
        group: u128,
        home_rev: u64,
        reset_last_seq: Option<u64>,
    ) -> Result<u64> {
        let mut settled = 0;
        for (order, record) in self.outbox_of(home)? {
            if record.group != group {
                continue;
            }
            let StateRecord::Applied { rev, seq } = record.state else {
                continue;
            };
            let arrived = match (reset_last_seq, seq) {
                (Some(last), Some(seq)) => seq <= last || rev <= home_rev,
                _ => rev <= home_rev,
            };
            if !arrived {
                continue;
            }
            self.outbox.open_mut()?.remove((home, order))?;
            settled += 1;
            if record.echo().is_some() && reset_last_seq.is_none() {
                self.record_if_present(
                    group,
                    GroupUpdate::MessageDiscarded {
                        txn_id: ids::to_string(record.txn),
                    },
                )?;
            }
        }
        Ok(settled)
    }

    /// The echoes of one group waiting in the outbox, in order.
    fn echoes_of(&self, home: u128, group: u128) -> Result<Vec<PendingMessage>> {
        Ok(self
            .outbox_of(home)?
            .into_iter()
            .filter(|(_, record)| record.group == group)
            .filter_map(|(_, record)| record.echo())
            .collect())
    }
}

fn dedup(mut groups: Vec<u128>) -> Vec<u128> {
    groups.sort_unstable();
    groups.dedup();
    groups
}

// ---- the replica's side: applying what the home sent ----

impl<'txn> Batch<'txn> {
    /// Applies a home's pull answer (checked by the caller: version, ids, this store is not the
    /// home): familiars, answers to the outbox, then each group's changes, snapshot or deletion.
    /// Changes a replica already applied are skipped; changes that do not start right after
    /// them are refused (`Conflict` naming the rev needed) before anything is written.
    pub fn apply_pull(
        &mut self,
        home: u128,
        groups: Vec<GroupPull>,
        familiars: Vec<Familiar>,
        results: &[MutationResult],
        more: bool,
    ) -> Result<PullApplied> {
        // Everything that can refuse is checked before the first write.
        let mut plan = Vec::with_capacity(groups.len());
        for pull in groups {
            if let Some(step) = self.plan_group(home, pull)? {
                plan.push(step);
            }
        }
        // Past this point the answer was checked: a failure may follow a write, so it aborts
        // the batch (`Storage`) rather than refusing one operation of it.
        self.apply_plan(home, plan, &familiars, results, more)
            .map_err(|err| match err {
                Error::Storage { .. } | Error::Closed => err,
                other => Error::storage(format!("the home's answer could not be applied: {other}")),
            })
    }

    fn apply_plan(
        &mut self,
        home: u128,
        plan: Vec<Step>,
        familiars: &[Familiar],
        results: &[MutationResult],
        more: bool,
    ) -> Result<PullApplied> {
        self.know_home(home)?;
        for familiar in familiars {
            self.familiars.open_mut()?.insert(
                familiar.id.as_str(),
                records::encode_familiar(familiar)?.as_slice(),
            )?;
        }
        let mut applied = PullApplied {
            more,
            ..PullApplied::default()
        };
        applied.settled += self.record_answers(home, results)?;
        for step in plan {
            match step {
                Step::Changes {
                    group,
                    through_rev,
                    changes,
                } => {
                    applied.changes += changes.len() as u64;
                    applied.settled += self.apply_changes(home, group, through_rev, changes)?;
                }
                Step::Snapshot { group, snapshot } => {
                    applied.snapshots += 1;
                    applied.settled += self.apply_snapshot(home, group, snapshot)?;
                }
                Step::Deleted { group } => {
                    applied.deleted += 1;
                    applied.settled += self.drop_replica(home, group)?;
                }
            }
        }
        Ok(applied)
    }

    /// What one group's part of a pull answer will do here, or `None` when it is stale.
    fn plan_group(&mut self, home: u128, pull: GroupPull) -> Result<Option<Step>> {
        let group = ids::parse(
            "group_id",
            match &pull {
                GroupPull::Changes { group_id, .. } | GroupPull::Deleted { group_id } => group_id,
                GroupPull::Snapshot { snapshot } => &snapshot.group.id,
            },
        )?;
        if self.sync_tombstones.open()?.get(group)?.is_some() {
            return Ok(None);
        }
        let replica = self.replica(group)?;
        if let Some(replica) = replica {
            if replica.home != home {
                return Err(Error::conflict(format!(
                    "group {} is a replica of store {}, not of {}",
                    ids::to_string(group),
                    ids::to_string(replica.home),
                    ids::to_string(home)
                )));
            }
        } else if self.groups.open()?.get(group)?.is_some() {
            return Err(Error::conflict(format!(
                "group {} is homed in this store; store {} cannot send it",
                ids::to_string(group),
                ids::to_string(home)
            )));
        }
        Ok(match pull {
            GroupPull::Deleted { .. } => Some(Step::Deleted { group }),
            GroupPull::Snapshot { snapshot } => match replica {
                Some(replica) if replica.home_rev >= snapshot.rev => None,
                _ => Some(Step::Snapshot { group, snapshot }),
            },
            GroupPull::Changes {
                after_rev,
                through_rev,
                changes,
                ..
            } => {
                // Changes for a group not held here are for one this store dropped since.
                let Some(replica) = replica else {
                    return Ok(None);
                };
                if after_rev > replica.home_rev {
                    return Err(Error::conflict(format!(
                        "changes of group {} start after home rev {after_rev}: this store has \
                         applied up to rev {} and needs rev {} next; pull again from rev {}",
                        ids::to_string(group),
                        replica.home_rev,
                        replica.home_rev + 1,
                        replica.home_rev
                    )));
                }
                if through_rev <= replica.home_rev {
                    return Ok(None);
                }
                let fresh: Vec<GroupChange> = changes
                    .into_iter()
                    .filter(|change| change.rev > replica.home_rev)
                    .collect();
                Some(Step::Changes {
                    group,
                    through_rev,
                    changes: fresh,
                })
            }
        })
    }

    /// Applies a group's home changes in rev order, each as the same change here. Returns the
    /// outbox entries settled.
    fn apply_changes(
        &mut self,
        home: u128,
        group: u128,
        through_rev: u64,
        changes: Vec<GroupChange>,
    ) -> Result<u64> {
        // The messages whose events are on their way: seq → (order, txn).
        let mut sent: HashMap<u64, (u64, u128)> = HashMap::new();
        for (order, record) in self.outbox_of(home)? {
            if let (true, StateRecord::Applied { seq: Some(seq), .. }) =
                (record.group == group, &record.state)
            {
                if record.echo().is_some() {
                    sent.insert(*seq, (order, record.txn));
                }
            }
        }
        let mut settled = 0;
        for change in changes {
            if change.rev > through_rev {
                return Err(Error::storage(format!(
                    "the home sent rev {} of group {} in an answer through rev {through_rev}",
                    change.rev,
                    ids::to_string(group)
                )));
            }
            match change.update {
                GroupUpdate::GroupCreated { group: state }
                | GroupUpdate::GroupChanged { group: state } => {
                    self.replicate_group(group, state, false)?;
                }
                GroupUpdate::EventAppended { event } => {
                    let seq = event.seq;
                    match sent.remove(&seq) {
                        Some((order, txn)) => {
                            let event = self.insert_replicated_event(group, event)?;
                            self.record(
                                group,
                                GroupUpdate::MessageSent {
                                    txn_id: ids::to_string(txn),
                                    event,
                                },
                            )?;
                            self.outbox.open_mut()?.remove((home, order))?;
                            settled += 1;
                        }
                        None => {
                            let event = self.insert_replicated_event(group, event)?;
                            self.record(group, GroupUpdate::EventAppended { event })?;
                        }
                    }
                }
                GroupUpdate::ReplyDelta {
                    seq,
                    familiar_id,
                    text,
                } => {
                    self.streaming_event(group, seq)?;
                    self.store_delta(group, seq, familiar_id, text)?;
                }
                GroupUpdate::ReplyFinished { event } => {
                    self.finish_replicated_reply(group, event)?;
                }
                GroupUpdate::SessionChanged { session } => {
                    self.replicate_session(group, &session)?;
                    self.record(group, GroupUpdate::SessionChanged { session })?;
                }
                GroupUpdate::SessionSacrificed { session_id } => {
                    let session = ids::parse_stored("session id", &session_id)?;
                    self.sessions.open_mut()?.remove(session)?;
                    self.group_sessions.open_mut()?.remove((group, session))?;
                    self.record(group, GroupUpdate::SessionSacrificed { session_id })?;
                }
                GroupUpdate::GroupDeleted => {
                    return Ok(settled + self.drop_replica(home, group)?);
                }
                GroupUpdate::GroupReset { .. }
                | GroupUpdate::MessagePending { .. }
                | GroupUpdate::MessageSent { .. }
                | GroupUpdate::MessageDiscarded { .. } => {
                    return Err(Error::storage(format!(
                        "home rev {} of group {} is a replica's local change, which a home \
                         never sends",
                        change.rev,
                        ids::to_string(group)
                    )));
                }
            }
        }
        let home_rev = through_rev;
        self.store_replica(group, &ReplicaRecord { home, home_rev })?;
        Ok(settled + self.settle(home, group, home_rev, None)?)
    }

    /// Stores a group's state as its home sent it: sessions for members new here (as the home
    /// provisioned them: idle, made at the change), then the group and its change.
    fn replicate_group(
        &mut self,
        group: u128,
        state: GroupConversation,
        created: bool,
    ) -> Result<()> {
        for member in &state.members {
            let session = ids::parse_stored("member session id", &member.session_id)?;
            if self.sessions.open()?.get(session)?.is_none() {
                let familiar = self.familiar(&member.familiar_id)?;
                self.replicate_session(
                    group,
                    &Session {
                        id: member.session_id.clone(),
                        group_id: state.id.clone(),
                        familiar_id: familiar.id,
                        harness: familiar.harness,
                        status: crate::model::SessionStatus::Idle,
                        resume_token: None,
                        archived: false,
                        created_at: state.updated_at,
                        updated_at: state.updated_at,
                    },
                )?;
            }
        }
        self.groups
            .open_mut()?
            .insert(group, records::encode_group(&state)?.as_slice())?;
        let update = if created {
            GroupUpdate::GroupCreated { group: state }
        } else {
            GroupUpdate::GroupChanged { group: state }
        };
        self.record(group, update)?;
        Ok(())
    }

    fn replicate_session(&mut self, group: u128, session: &Session) -> Result<()> {
        self.store_session(session)?;
        let key = ids::parse_stored("session id", &session.id)?;
        self.group_sessions.open_mut()?.insert((group, key), ())?;
        Ok(())
    }

    /// Appends the home's event at the same seq; a seq that is not this group's next means the
    /// replica and its home disagree, which no retry repairs.
    fn insert_replicated_event(&mut self, group: u128, event: GroupEvent) -> Result<GroupEvent> {
        let next = self.head(group)?.next_seq;
        if event.seq != next {
            return Err(Error::storage(format!(
                "the home sent event {} of group {} where this replica's next seq is {next}",
                event.seq,
                ids::to_string(group)
            )));
        }
        self.insert_event(
            group,
            NewEvent {
                kind: event.kind,
                familiar_id: event.familiar_id,
                author: event.author,
                turn_id: event.turn_id,
                text: event.text,
                streaming: event.streaming,
                error: event.error,
                notice: event.notice,
                timestamp: Some(event.timestamp),
            },
        )
    }

    /// The stored event of a reply the home streams into; it must be streaming here too.
    fn streaming_event(&self, group: u128, seq: u64) -> Result<GroupEvent> {
        let event = match self.events.open()?.get((group, seq))? {
            Some(value) => records::decode_event(group, seq, value.value())?,
            None => {
                return Err(Error::storage(format!(
                    "the home streamed into event {seq} of group {}, which this replica lacks",
                    ids::to_string(group)
                )))
            }
        };
        if !event.streaming {
            return Err(Error::storage(format!(
                "the home streamed into event {seq} of group {}, which has finished here",
                ids::to_string(group)
            )));
        }
        Ok(event)
    }

    /// Finishes a streaming reply with the home's final event (its text is the home's).
    fn finish_replicated_reply(&mut self, group: u128, home_event: GroupEvent) -> Result<()> {
        let seq = home_event.seq;
        let mut event = self.streaming_event(group, seq)?;
        self.reply_chunks
            .open_mut()?
            .retain_in((group, seq, 0)..=(group, seq, u64::MAX), |_, _| false)?;
        event.text = home_event.text;
        event.streaming = false;
        event.error = home_event.error;
        event.rev = self.peek_rev(group)?;
        self.events
            .open_mut()?
            .insert((group, seq), records::encode_event(&event)?.as_slice())?;
        self.record(group, GroupUpdate::ReplyFinished { event })?;
        Ok(())
    }

    /// Replaces what this store holds of a group with the home's snapshot, atomically, and
    /// records one `GroupReset` carrying it. The replica's earlier log stays valid (events only
    /// grow), so a reader behind it reads on into the reset.
    fn apply_snapshot(&mut self, home: u128, group: u128, snapshot: SyncSnapshot) -> Result<u64> {
        let existed = self.replica(group)?.is_some();
        if existed {
            // Its log stays (events only grow, so it stays exact); its head keeps its rev.
            self.remove_timeline(group)?;
        } else {
            self.create_head(group);
        }
        for familiar_id in snapshot.group.members.iter().map(|m| &m.familiar_id) {
            self.familiar(familiar_id)?;
        }
        for session in &snapshot.sessions {
            self.replicate_session(group, session)?;
        }
        self.groups
            .open_mut()?
            .insert(group, records::encode_group(&snapshot.group)?.as_slice())?;
        let rev = self.peek_rev(group)?;
        let mut events = Vec::with_capacity(snapshot.events.len());
        let mut last_seq = 0;
        for (index, mut event) in snapshot.events.into_iter().enumerate() {
            if event.seq != index as u64 + 1 {
                return Err(Error::storage(format!(
                    "the home's snapshot of group {} holds event {} at position {}",
                    ids::to_string(group),
                    event.seq,
                    index + 1
                )));
            }
            event.rev = rev;
            self.store_event_as_is(group, &event)?;
            last_seq = event.seq;
            events.push(event);
        }
        self.set_next_seq(group, last_seq + 1)?;
        self.store_replica(
            group,
            &ReplicaRecord {
                home,
                home_rev: snapshot.rev,
            },
        )?;
        let settled = self.settle(home, group, snapshot.rev, Some(last_seq))?;
        let pending = self.echoes_of(home, group)?;
        let mut state = snapshot.group;
        state.updated_at = self.now;
        self.record_as(
            group,
            GroupUpdate::GroupReset {
                group: state,
                events,
                pending,
            },
            &ChangeRecord::Reset { last_seq },
        )?;
        Ok(settled)
    }

    /// Deletes a replica group its home deleted, and remembers it so a stale snapshot does not
    /// bring it back. Entries applied to it leave the outbox; others stay, to be refused by the
    /// home and discarded by the host.
    fn drop_replica(&mut self, home: u128, group: u128) -> Result<u64> {
        if self.replica(group)?.is_some() {
            self.delete_group(group)?;
            self.sync_replicas.open_mut()?.remove(group)?;
        }
        self.sync_tombstones.open_mut()?.insert(group, home)?;
        let mut settled = 0;
        for (order, record) in self.outbox_of(home)? {
            if record.group == group && matches!(record.state, StateRecord::Applied { .. }) {
                self.outbox.open_mut()?.remove((home, order))?;
                settled += 1;
            }
        }
        Ok(settled)
    }
}

/// One group's part of a pull answer, checked.
enum Step {
    Changes {
        group: u128,
        /// The home rev the replica holds once they are applied.
        through_rev: u64,
        changes: Vec<GroupChange>,
    },
    Snapshot {
        group: u128,
        snapshot: SyncSnapshot,
    },
    Deleted {
        group: u128,
    },
}

// ---- reads ----

impl super::Reader {
    /// This store's id, made at its first open.
    pub fn store_id(&self) -> Result<u128> {
        self.txn
            .open_table(IDENTITY)?
            .get(STORE_ID_KEY)?
            .map(|id| id.value())
            .ok_or_else(|| Error::storage("corrupt store: it has no store id"))
    }

    pub fn replica(&self, group: u128) -> Result<Option<ReplicaRecord>> {
        load(&self.txn.open_table(SYNC_REPLICAS)?, group)
    }

    /// Every replica group here with its record.
    pub fn replicas(&self) -> Result<Vec<(u128, ReplicaRecord)>> {
        let table = self.txn.open_table(SYNC_REPLICAS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push((key.value(), codec::decode(value.value())?));
        }
        Ok(out)
    }

    /// The outbox entries of one home (every home with `None`), in order.
    pub fn outbox(&self, home: Option<u128>) -> Result<Vec<(u128, u64, OutboxRecord)>> {
        let table = self.txn.open_table(OUTBOX)?;
        let range = match home {
            Some(home) => (home, 0)..=(home, u64::MAX),
            None => (0, 0)..=(u128::MAX, u64::MAX),
        };
        let mut out = Vec::new();
        for entry in table.range(range)? {
            let (key, value) = entry?;
            let (home, order) = key.value();
            out.push((home, order, codec::decode(value.value())?));
        }
        Ok(out)
    }

    /// The local echoes of a group (none for a group homed here).
    pub fn echoes(&self, group: u128) -> Result<Vec<PendingMessage>> {
        let Some(replica) = self.replica(group)? else {
            return Ok(Vec::new());
        };
        Ok(self
            .outbox(Some(replica.home))?
            .into_iter()
            .filter(|(_, _, record)| record.group == group)
            .filter_map(|(_, _, record)| record.echo())
            .collect())
    }

    /// The stored answers to a replica's mutations after `acked_through`.
    pub fn answers(&self, replica: u128, acked_through: u64) -> Result<Vec<MutationResult>> {
        let table = self.txn.open_table(SYNC_RESULTS)?;
        let mut out = Vec::new();
        for entry in
            table.range((replica, acked_through.saturating_add(1))..=(replica, u64::MAX))?
        {
            let (key, value) = entry?;
            let record: ResultRecord = codec::decode(value.value())?;
            out.push(record.result(key.value().1));
        }
        Ok(out)
    }

    /// A home group's whole state for a replica.
    pub fn sync_snapshot(&self, group: u128) -> Result<SyncSnapshot> {
        let snapshot = self.snapshot(group)?;
        Ok(SyncSnapshot {
            sessions: self.sessions_of(group)?,
            group: snapshot.group,
            events: snapshot.events,
            rev: snapshot.rev,
        })
    }

    /// Every group homed in this store (not replicas), by id.
    pub fn home_groups(&self) -> Result<Vec<u128>> {
        let groups = self.txn.open_table(GROUPS)?;
        let replicas = self.txn.open_table(SYNC_REPLICAS)?;
        let mut out = Vec::new();
        for entry in groups.iter()? {
            let group = entry?.0.value();
            if replicas.get(group)?.is_none() {
                out.push(group);
            }
        }
        Ok(out)
    }
}

impl super::Reader {
    /// The order the next outbox entry for `home` gets.
    pub fn next_order(&self, home: u128) -> Result<u64> {
        Ok(
            load::<u128, HomeRecord>(&self.txn.open_table(SYNC_HOMES)?, home)?
                .map_or(1, |record| record.next_order),
        )
    }
}
