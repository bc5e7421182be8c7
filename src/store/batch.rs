//! One batch of the writer: the tables of its write transaction, each opened the first time an
//! operation uses it (redb stages a root update and reaches the table tree for every table a
//! transaction opens, so a batch pays only for what it touches), the groups' heads it has touched
//! (seq and rev are claimed here, and each head is written once at the end), the changes it will
//! publish once it commits, and the replies still streaming, whose claims a batch that does not
//! commit takes back.

use std::cell::OnceCell;
use std::collections::hash_map::{Entry, HashMap};
use std::time::SystemTime;

use redb::{Key, Table, TableDefinition, Value, WriteTransaction};

use super::codec;
use super::records;
use super::tables::*;
use super::writer::ReplyKey;
use crate::error::{Error, Result};
use crate::ids;
use crate::model::{GroupChange, GroupUpdate};

struct HeadSlot {
    /// `None` once the group is deleted in this batch.
    head: Option<Head>,
    dirty: bool,
}

/// One table of a write transaction, opened the first time it is used.
pub struct LazyTable<'txn, K: Key + 'static, V: Value + 'static> {
    txn: &'txn WriteTransaction,
    definition: TableDefinition<'static, K, V>,
    table: OnceCell<Table<'txn, K, V>>,
}

impl<'txn, K: Key + 'static, V: Value + 'static> LazyTable<'txn, K, V> {
    fn new(txn: &'txn WriteTransaction, definition: TableDefinition<'static, K, V>) -> Self {
        Self {
            txn,
            definition,
            table: OnceCell::new(),
        }
    }

    /// The table to read, opened now if this batch has not used it yet.
    pub fn open(&self) -> Result<&Table<'txn, K, V>> {
        if let Some(table) = self.table.get() {
            return Ok(table);
        }
        let table = self.txn.open_table(self.definition)?;
        Ok(self.table.get_or_init(|| table))
    }

    /// The table to write, opened now if this batch has not used it yet.
    pub fn open_mut(&mut self) -> Result<&mut Table<'txn, K, V>> {
        self.open()?;
        self.table
            .get_mut()
            .ok_or_else(|| Error::storage("a table of the batch could not be opened"))
    }
}

/// The tables of one write transaction and what the batch has done so far.
pub struct Batch<'txn> {
    pub now: SystemTime,
    pub familiars: LazyTable<'txn, &'static str, &'static [u8]>,
    pub groups: LazyTable<'txn, u128, &'static [u8]>,
    pub events: LazyTable<'txn, (u128, u64), &'static [u8]>,
    pub reply_chunks: LazyTable<'txn, (u128, u64, u64), (u64, &'static str)>,
    pub sessions: LazyTable<'txn, u128, &'static [u8]>,
    pub group_sessions: LazyTable<'txn, (u128, u128), ()>,
    pub cursors: LazyTable<'txn, (u128, &'static str), u64>,
    pub turns: LazyTable<'txn, u128, &'static [u8]>,
    pub process_runs: LazyTable<'txn, u128, (i32, &'static str)>,
    pub sync_homes: LazyTable<'txn, u128, &'static [u8]>,
    pub sync_replicas: LazyTable<'txn, u128, &'static [u8]>,
    pub sync_tombstones: LazyTable<'txn, u128, u128>,
    pub outbox: LazyTable<'txn, (u128, u64), &'static [u8]>,
    pub sync_clients: LazyTable<'txn, u128, u64>,
    pub sync_results: LazyTable<'txn, (u128, u64), &'static [u8]>,
    heads_table: LazyTable<'txn, u128, &'static [u8]>,
    changes: LazyTable<'txn, (u128, u64), &'static [u8]>,
    heads: HashMap<u128, HeadSlot>,
    /// Replies that have claimed their seq and are still streaming, across batches.
    pub live: LiveReplies,
    /// Whether the store may hold replica groups, as the writer knows it across batches. While
    /// it holds none, a write to a group need not open the replicas table to learn the group is
    /// homed here (every table a batch opens costs its commit a root update).
    pub may_hold_replicas: bool,
    /// What this batch saw of the replicas table: empty or not, when it opened it.
    pub replicas_table_empty: Option<bool>,
    /// This batch stored a replica record.
    pub replica_added: bool,
    /// Text for live replies not yet stored, in arrival order; flushed before any other
    /// operation and at the end of the batch, one delta change per reply.
    pending: Vec<(ReplyKey, String)>,
    pub(super) published: Vec<GroupChange>,
    /// Operations applied without refusal.
    pub(super) applied: usize,
    /// The storage error that aborts the batch.
    pub(super) failure: Option<Error>,
}

impl<'txn> Batch<'txn> {
    /// A batch on `txn`; no table is opened until an operation uses it.
    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Self> {
        Ok(Self {
            now: SystemTime::now(),
            familiars: LazyTable::new(txn, FAMILIARS),
            groups: LazyTable::new(txn, GROUPS),
            events: LazyTable::new(txn, EVENTS),
            reply_chunks: LazyTable::new(txn, REPLY_CHUNKS),
            sessions: LazyTable::new(txn, SESSIONS),
            group_sessions: LazyTable::new(txn, GROUP_SESSIONS),
            cursors: LazyTable::new(txn, CURSORS),
            turns: LazyTable::new(txn, TURNS),
            process_runs: LazyTable::new(txn, PROCESS_RUNS),
            sync_homes: LazyTable::new(txn, SYNC_HOMES),
            sync_replicas: LazyTable::new(txn, SYNC_REPLICAS),
            sync_tombstones: LazyTable::new(txn, SYNC_TOMBSTONES),
            outbox: LazyTable::new(txn, OUTBOX),
            sync_clients: LazyTable::new(txn, SYNC_CLIENTS),
            sync_results: LazyTable::new(txn, SYNC_RESULTS),
            heads_table: LazyTable::new(txn, HEADS),
            changes: LazyTable::new(txn, CHANGES),
            heads: HashMap::new(),
            live: LiveReplies::default(),
            may_hold_replicas: true,
            replicas_table_empty: None,
            replica_added: false,
            pending: Vec::new(),
            published: Vec::new(),
            applied: 0,
            failure: None,
        })
    }

    pub(super) fn fail(&mut self, err: Error) {
        self.failure.get_or_insert(err);
    }

    fn slot(&mut self, group: u128) -> Result<&mut HeadSlot> {
        match self.heads.entry(group) {
            Entry::Occupied(slot) => Ok(slot.into_mut()),
            Entry::Vacant(vacant) => {
                let head = load::<u128, Head>(self.heads_table.open()?, group)?;
                Ok(vacant.insert(HeadSlot { head, dirty: false }))
            }
        }
    }

    /// The group's head, or `NotFound` when the group does not exist.
    pub fn head(&mut self, group: u128) -> Result<Head> {
        self.slot(group)?
            .head
            .ok_or_else(|| Error::not_found("group", ids::to_string(group)))
    }

    fn head_mut(&mut self, group: u128) -> Result<&mut Head> {
        let slot = self.slot(group)?;
        slot.dirty = true;
        slot.head
            .as_mut()
            .ok_or_else(|| Error::not_found("group", ids::to_string(group)))
    }

    /// Starts the sequences of a new group.
    pub fn create_head(&mut self, group: u128) {
        let head = Head::new(self.now);
        self.heads.insert(
            group,
            HeadSlot {
                head: Some(head),
                dirty: true,
            },
        );
    }

    /// Forgets a deleted group's sequences.
    pub fn delete_head(&mut self, group: u128) {
        self.heads.insert(
            group,
            HeadSlot {
                head: None,
                dirty: true,
            },
        );
    }

    /// Claims the group's next seq.
    pub fn next_seq(&mut self, group: u128) -> Result<u64> {
        let head = self.head_mut(group)?;
        let seq = head.next_seq;
        head.next_seq += 1;
        Ok(seq)
    }

    /// Sets the seq the group's next event gets (a replica taking its home's timeline).
    pub fn set_next_seq(&mut self, group: u128, next_seq: u64) -> Result<()> {
        self.head_mut(group)?.next_seq = next_seq;
        Ok(())
    }

    /// The rev the next change of this group will get.
    pub fn peek_rev(&mut self, group: u128) -> Result<u64> {
        Ok(self.head(group)?.next_rev)
    }

    /// Records one change: claims the next rev, stores the change, queues it for publishing.
    pub fn record(&mut self, group: u128, update: GroupUpdate) -> Result<u64> {
        let record = records::ChangeRecord::of(&update, self.now)?;
        self.record_as(group, update, &record)
    }

    /// [`Batch::record`] with the change's storage record given (a delta's range of its reply).
    pub(super) fn record_as(
        &mut self,
        group: u128,
        update: GroupUpdate,
        record: &records::ChangeRecord,
    ) -> Result<u64> {
        let now = self.now;
        let head = self.head_mut(group)?;
        let rev = head.next_rev;
        head.next_rev += 1;
        head.active_at = now;
        self.changes
            .open_mut()?
            .insert((group, rev), codec::encode(record)?.as_slice())?;
        self.published.push(GroupChange {
            group_id: ids::to_string(group),
            rev,
            update,
        });
        Ok(rev)
    }

    /// Publishes without storing: the final "deleted" notice of a group whose log is gone.
    pub fn announce(&mut self, group: u128, rev: u64, update: GroupUpdate) {
        self.published.push(GroupChange {
            group_id: ids::to_string(group),
            rev,
            update,
        });
    }

    /// Removes every stored change of a group.
    pub fn delete_changes(&mut self, group: u128) -> Result<()> {
        self.changes
            .open_mut()?
            .retain_in((group, 0)..=(group, u64::MAX), |_, _| false)?;
        Ok(())
    }

    /// Collapses the deltas of a reply that has just finished (see [`records::collapse_deltas`]).
    pub fn collapse_deltas(
        &mut self,
        group: u128,
        seq: u64,
        deltas: &[records::StreamedDelta],
    ) -> Result<()> {
        if deltas.len() < 2 {
            return Ok(());
        }
        records::collapse_deltas(self.changes.open_mut()?, group, seq, deltas)
    }

    /// Queues text for a live reply, merging it with text already waiting for that reply.
    pub fn queue_delta(&mut self, key: ReplyKey, text: String) {
        match self.pending.iter_mut().find(|(waiting, _)| *waiting == key) {
            Some((_, waiting)) => waiting.push_str(&text),
            None => self.pending.push((key, text)),
        }
    }

    /// Stores every queued delta: one chunk and one `ReplyDelta` change per reply.
    pub fn flush_pending(&mut self) -> Result<()> {
        for (key, text) in std::mem::take(&mut self.pending) {
            let Some(seq) = self.live.seq(&key) else {
                continue;
            };
            self.store_delta(key.group, seq, key.familiar, text)?;
        }
        Ok(())
    }

    pub(super) fn flush_heads(&mut self) -> Result<()> {
        for (group, slot) in &self.heads {
            if !slot.dirty {
                continue;
            }
            match &slot.head {
                Some(head) => {
                    self.heads_table
                        .open_mut()?
                        .insert(*group, codec::encode(head)?.as_slice())?;
                }
                None => {
                    self.heads_table.open_mut()?.remove(*group)?;
                }
            }
        }
        Ok(())
    }
}

/// The seq of every reply still streaming, kept by the writer across batches. Changes made by a
/// batch are logged so that a batch that does not commit can take them back.
#[derive(Default)]
pub struct LiveReplies {
    seqs: HashMap<ReplyKey, u64>,
    /// What each change replaced, newest last.
    undo: Vec<(ReplyKey, Option<u64>)>,
}

impl LiveReplies {
    pub fn seq(&self, key: &ReplyKey) -> Option<u64> {
        self.seqs.get(key).copied()
    }

    pub fn claim(&mut self, key: ReplyKey, seq: u64) {
        let before = self.seqs.insert(key.clone(), seq);
        self.undo.push((key, before));
    }

    pub fn release(&mut self, key: &ReplyKey) -> Option<u64> {
        let before = self.seqs.remove(key);
        if before.is_some() {
            self.undo.push((key.clone(), before));
        }
        before
    }

    /// The batch committed: its changes stand.
    pub(super) fn keep(&mut self) {
        self.undo.clear();
    }

    /// The batch did not commit: restore the state before it.
    pub(super) fn roll_back(&mut self) {
        while let Some((key, before)) = self.undo.pop() {
            match before {
                Some(seq) => self.seqs.insert(key, seq),
                None => self.seqs.remove(&key),
            };
        }
    }
}
