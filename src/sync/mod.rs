//! Sync: one group, continued from any device. The store that creates a group is its home and
//! alone assigns its seq and rev; other stores hold replicas, which apply the home's changes in
//! rev order, exactly once, and send their own changes home through a durable outbox. The
//! protocol is sans-IO: a replica builds a [`PullRequest`] or [`PushRequest`], the host carries it
//! to the home by any transport, the home answers with [`Coven::serve_pull`] or
//! [`Coven::serve_push`], and the replica applies the answer. [`Coven::sync`] runs that loop over
//! a [`SyncTransport`] the host implements. The rules are in docs/design.md ("Sync").
//!
//! ```
//! use std::sync::Arc;
//! use coven_group::*;
//!
//! /// Carries each message straight to the home (a host carries them over its network).
//! struct Direct(Arc<Coven>);
//! impl SyncTransport for Direct {
//!     fn pull(&self, request: PullRequest) -> Result<PullResponse> { self.0.serve_pull(request) }
//!     fn push(&self, request: PushRequest) -> Result<PushResponse> { self.0.serve_push(request) }
//! }
//!
//! let desk = Arc::new(Coven::open_in_memory(Config::default())?);
//! let phone = Coven::open_in_memory(Config::default())?;
//! desk.register_familiar(Familiar::new("ada", "Ada", "scripted"))?;
//! let group = desk.create_group(None, vec!["ada".into()], None)?;
//!
//! let transport = Arc::new(Direct(desk.clone()));
//! phone.sync(transport.clone(), None)?;
//! let mine = phone.enqueue(Mutation::Send {
//!     group_id: group.id.clone(),
//!     text: "From the train".into(),
//!     author: None,
//! })?;
//! assert_eq!(phone.get_group(&group.id)?.pending[0].txn_id, mine.txn_id);
//! phone.sync(transport.clone(), Some(desk.store_id()))?;
//! let user_event = &desk.get_group(&group.id)?.events[0];
//! desk.wait_turn(user_event.turn_id.as_deref().unwrap(), std::time::Duration::from_secs(30))?;
//! phone.sync(transport, Some(desk.store_id()))?;
//! let (mine, theirs) = (phone.get_group(&group.id)?, desk.get_group(&group.id)?);
//! assert!(mine.pending.is_empty());
//! assert_eq!(mine.events.len(), theirs.events.len());
//! for (a, b) in mine.events.iter().zip(&theirs.events) {
//!     assert_eq!((a.seq, &a.text, &a.familiar_id), (b.seq, &b.text, &b.familiar_id));
//! }
//! # Ok::<(), coven_group::Error>(())
//! ```

#[cfg(feature = "http")]
pub mod http;
pub mod protocol;

use std::sync::Arc;

use crate::coven::Coven;
use crate::error::{Error, Result};
use crate::ids;
use crate::store::batch::Batch;
use crate::store::ops::{NewEvent, NewGroup};
use crate::store::sync::{self as stored, MutationRecord, OutcomeRecord, ResultRecord};
use crate::store::turns::TurnStart;
use crate::validate;
pub use protocol::*;

/// Carries sync messages between a replica and a home: implemented by the host (URLSession,
/// CloudKit, an HTTP client), or the library's HTTP transport. Called on the thread that called
/// [`Coven::sync`]; an error (a host exception included) ends that sync with the error, and what
/// was applied before it stays applied.
#[uniffi::export(with_foreign)]
pub trait SyncTransport: Send + Sync {
    fn pull(&self, request: PullRequest) -> Result<PullResponse>;
    fn push(&self, request: PushRequest) -> Result<PushResponse>;
}

/// What one [`Coven::sync`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncReport {
    /// The home synced with (learnt from its first answer on first contact).
    pub home_store_id: Option<String>,
    pub pulls: u64,
    pub pushes: u64,
    /// Mutations sent (a mutation sent twice counts twice).
    pub mutations_sent: u64,
    /// Home changes applied.
    pub changes: u64,
    pub snapshots: u64,
    pub deleted: u64,
    /// Outbox entries whose effect arrived.
    pub settled: u64,
    /// Pull answers refused because they did not follow what this store holds (a gap); each is
    /// followed by a new pull from where the store stands.
    pub gaps: u64,
}

/// Most pull and push round trips one [`Coven::sync`] makes before it returns: a home that keeps
/// changing cannot hold a caller forever.
const MAX_ROUNDS: u32 = 10_000;

/// Pull answers in a row refused as not following this store's state before [`Coven::sync`]
/// gives up with that refusal: one is a stale answer, several mean a disagreement no pull
/// repairs (a group this store holds from another home).
const MAX_GAPS_IN_A_ROW: u32 = 3;

/// `true` for errors that refuse one mutation (its answer), not the whole request.
fn is_refusal(err: &Error) -> bool {
    matches!(
        err,
        Error::NotFound { .. }
            | Error::InvalidInput { .. }
            | Error::Conflict { .. }
            | Error::Harness { .. }
    )
}

#[uniffi::export]
impl Coven {
    /// This store's id: made at its first open, never changed. A replica names its home by it.
    pub fn store_id(&self) -> String {
        ids::to_string(self.store_id)
    }

    /// The store id of a replica group's home; `None` for a group homed here.
    pub fn home_of(&self, group_id: &str) -> Result<Option<String>> {
        let group = ids::parse("group_id", group_id)?;
        self.read(|reader| {
            reader.head(group)?;
            Ok(reader.replica(group)?.map(|r| ids::to_string(r.home)))
        })
    }

    /// Queues a change to a replica group for its home, in order, durably; a message shows at
    /// once in the group's timeline as a pending echo (`MessagePending`). `CreateGroup` is
    /// queued with [`Coven::create_group_at`]. A group homed here is changed directly, and is
    /// refused here with `Conflict`.
    pub fn enqueue(&self, mutation: Mutation) -> Result<OutboxEntry> {
        if matches!(mutation, Mutation::CreateGroup { .. }) {
            return Err(Error::invalid(
                "mutation",
                "a group is created at a home with create_group_at",
            ));
        }
        let group = ids::parse("group_id", mutation.group_id())?;
        check_mutation(&mutation)?;
        let txn = ids::new_id();
        let record = MutationRecord::of(&mutation);
        self.write(move |batch| batch.enqueue(txn, group, None, record))
    }

    /// Queues the creation of a group whose home is another store (`home_store_id`). The group
    /// id is chosen here (in the entry's mutation); the group appears in this store, as a
    /// replica, once the home has created it and this store has pulled it.
    pub fn create_group_at(
        &self,
        home_store_id: &str,
        title: Option<String>,
        member_ids: Vec<String>,
    ) -> Result<OutboxEntry> {
        let home = ids::parse("home_store_id", home_store_id)?;
        if home == self.store_id {
            return Err(Error::invalid(
                "home_store_id",
                "is this store: create the group with create_group",
            ));
        }
        let group = ids::new_id();
        let mutation = Mutation::CreateGroup {
            group_id: ids::to_string(group),
            title,
            member_ids,
        };
        check_mutation(&mutation)?;
        let txn = ids::new_id();
        let record = MutationRecord::of(&mutation);
        self.write(move |batch| batch.enqueue(txn, group, Some(home), record))
    }

    /// Every outbox entry, by home and order.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        self.read(|reader| {
            Ok(reader
                .outbox(None)?
                .into_iter()
                .map(|(home, order, record)| record.entry(home, order))
                .collect())
        })
    }

    /// Sends a refused outbox entry again, keeping its place and transaction id; the entries
    /// behind it follow it. `Conflict` unless it failed.
    pub fn retry_outbox(&self, txn_id: &str) -> Result<OutboxEntry> {
        let txn = ids::parse("txn_id", txn_id)?;
        self.write(move |batch| batch.retry_outbox(txn))
    }

    /// Drops a refused outbox entry (its echo leaves the timeline with `MessageDiscarded`); the
    /// entries behind it are sent. `Conflict` unless it failed: a pending entry may already be
    /// on its way home.
    pub fn discard_outbox(&self, txn_id: &str) -> Result<()> {
        let txn = ids::parse("txn_id", txn_id)?;
        self.write(move |batch| batch.discard_outbox(txn))
    }

    // ---- the replica's side of the protocol ----

    /// What to ask a home for: every group of it held here with the home rev applied, and the
    /// answers this store has stored. `home_store_id` is `None` on first contact with a home.
    pub fn pull_request(&self, home_store_id: Option<String>) -> Result<PullRequest> {
        let home = home_store_id
            .as_deref()
            .map(|home| ids::parse("home_store_id", home))
            .transpose()?;
        self.ensure_open()?;
        let (cursors, acked_through) = self.read(|reader| {
            let Some(home) = home else {
                return Ok((Vec::new(), 0));
            };
            let mut cursors: Vec<SyncCursor> = reader
                .replicas()?
                .into_iter()
                .filter(|(_, replica)| replica.home == home)
                .map(|(group, replica)| SyncCursor {
                    group_id: ids::to_string(group),
                    rev: replica.home_rev,
                })
                .collect();
            // Groups this store created at the home and has not received yet: asked for at rev
            // 0, so the home sends them, or says they were deleted since.
            for (_, _, record) in reader.outbox(Some(home))? {
                if let (MutationRecord::CreateGroup { .. }, stored::StateRecord::Applied { .. }) =
                    (&record.mutation, &record.state)
                {
                    cursors.push(SyncCursor {
                        group_id: ids::to_string(record.group),
                        rev: 0,
                    });
                }
            }
            Ok((cursors, acked_through(reader, home)?))
        })?;
        Ok(PullRequest {
            version: SYNC_PROTOCOL_VERSION,
            replica_store_id: self.store_id(),
            home_store_id,
            cursors,
            acked_through,
        })
    }

    /// Applies a home's answer to a pull, atomically: changes a replica already has are
    /// skipped, changes that do not follow them are refused with `Conflict` naming the rev
    /// needed (nothing is applied; pull again), snapshots replace a group's state, deleted
    /// groups go. Echoes whose messages arrive leave the timeline in the same commit.
    pub fn apply_pull(&self, response: PullResponse) -> Result<PullApplied> {
        check_version(response.version)?;
        let home = self.other_store("home_store_id", &response.home_store_id)?;
        validate::pull_response(&response)?;
        let PullResponse {
            groups,
            familiars,
            results,
            more,
            ..
        } = response;
        self.write(move |batch| batch.apply_pull(home, groups, familiars, &results, more))
    }

    /// The next mutations to send to a home, in order: the pending entries up to the first
    /// refused one (the outbox waits there for the host). `None` when there is nothing to send.
    pub fn push_request(&self, home_store_id: &str) -> Result<Option<PushRequest>> {
        let home = ids::parse("home_store_id", home_store_id)?;
        self.ensure_open()?;
        let (mutations, acked_through) = self.read(|reader| {
            let mut mutations = Vec::new();
            for (_, order, record) in reader.outbox(Some(home))? {
                match record.state {
                    stored::StateRecord::Applied { .. } => continue,
                    stored::StateRecord::Failed { .. } => break,
                    stored::StateRecord::Pending => {}
                }
                mutations.push(PushedMutation {
                    order,
                    txn_id: ids::to_string(record.txn),
                    attempt: record.attempt,
                    mutation: record.mutation.into_mutation(record.group),
                });
                if mutations.len() >= MAX_PUSH_MUTATIONS as usize {
                    break;
                }
            }
            Ok((mutations, acked_through(reader, home)?))
        })?;
        if mutations.is_empty() {
            return Ok(None);
        }
        Ok(Some(PushRequest {
            version: SYNC_PROTOCOL_VERSION,
            replica_store_id: self.store_id(),
            home_store_id: home_store_id.to_owned(),
            mutations,
            acked_through,
        }))
    }

    /// Stores a home's answers to a push. Returns how many entries left the outbox (those whose
    /// effect this store already holds).
    pub fn apply_push(&self, response: PushResponse) -> Result<u64> {
        check_version(response.version)?;
        let home = self.other_store("home_store_id", &response.home_store_id)?;
        for result in &response.results {
            ids::parse("txn_id", &result.txn_id)?;
        }
        self.write(move |batch| batch.record_answers(home, &response.results))
    }

    // ---- the home's side ----

    /// Answers a replica's pull: for each group it holds, the changes after its cursor (a
    /// snapshot when it is more than `Config::sync_snapshot_after_changes` behind), `Deleted`
    /// for groups gone here, a snapshot of every group homed here it lacks; every familiar; the
    /// answers to its mutations it has not acknowledged. At most `MAX_PULL_CHANGES` changes
    /// (snapshots count their events); `more` asks it to pull again. One read, as of one commit.
    pub fn serve_pull(&self, request: PullRequest) -> Result<PullResponse> {
        check_version(request.version)?;
        let replica = self.other_store("replica_store_id", &request.replica_store_id)?;
        if let Some(home) = &request.home_store_id {
            self.this_store("home_store_id", home)?;
        }
        let mut cursors = Vec::with_capacity(request.cursors.len());
        for cursor in &request.cursors {
            cursors.push((ids::parse("group_id", &cursor.group_id)?, cursor.rev));
        }
        self.ensure_open()?;
        let snapshot_after = self.config().sync_snapshot_after_changes;
        let mut response = self.read(|reader| {
            serve::pull(
                reader,
                replica,
                &cursors,
                request.acked_through,
                snapshot_after,
            )
        })?;
        response.home_store_id = self.store_id();
        Ok(response)
    }

    /// Applies a replica's mutations in order, each once: the answer is recorded in the write
    /// transaction that applies it, so a copy of a mutation already processed gets that answer
    /// again and changes nothing. Stops at the first refusal, whose answer is the last one. A
    /// `Send` starts its turn here, as [`Coven::send`] does.
    pub fn serve_push(&self, request: PushRequest) -> Result<PushResponse> {
        check_version(request.version)?;
        let replica = self.other_store("replica_store_id", &request.replica_store_id)?;
        self.this_store("home_store_id", &request.home_store_id)?;
        let mut parsed = Vec::with_capacity(request.mutations.len());
        for pushed in &request.mutations {
            let txn = ids::parse("txn_id", &pushed.txn_id)?;
            if pushed.order == 0 {
                return Err(Error::invalid("order", "orders start at 1"));
            }
            parsed.push((pushed.order, txn, pushed.attempt, pushed.mutation.clone()));
        }
        self.ensure_open()?;
        if request.acked_through > 0 {
            let acked = request.acked_through;
            self.write(move |batch| batch.forget_answers(replica, acked))?;
        }
        let mut results = Vec::with_capacity(parsed.len());
        for (order, txn, attempt, mutation) in parsed {
            let delivery = Delivery {
                replica,
                order,
                txn,
                attempt,
            };
            let result = self.apply_pushed(delivery, mutation)?;
            let refused = matches!(result.outcome, MutationOutcome::Refused { .. });
            results.push(result);
            if refused {
                break;
            }
        }
        Ok(PushResponse {
            version: SYNC_PROTOCOL_VERSION,
            home_store_id: self.store_id(),
            results,
        })
    }

    // ---- the driver ----

    /// Syncs with one home over `transport` until caught up: sends the outbox in order (up to
    /// its first refused entry), then pulls until the home has nothing more, and again while
    /// mutations remain to send. `home_store_id` is `None` on first contact (the first pull
    /// learns it). A pull answer that does not follow what this store holds is refused and
    /// pulled again. Returns what it did; a transport error ends it with that error, keeping
    /// everything applied before.
    pub fn sync(
        &self,
        transport: Arc<dyn SyncTransport>,
        home_store_id: Option<String>,
    ) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let mut home = home_store_id;
        for _ in 0..MAX_ROUNDS {
            let mut progressed = false;
            if let Some(home) = &home {
                if let Some(request) = self.push_request(home)? {
                    report.pushes += 1;
                    report.mutations_sent += request.mutations.len() as u64;
                    let response = transport.push(request)?;
                    report.settled += self.apply_push(response)?;
                    progressed = true;
                }
            }
            let mut gaps_in_a_row = 0;
            loop {
                let request = self.pull_request(home.clone())?;
                report.pulls += 1;
                let response = transport.pull(request)?;
                home = Some(response.home_store_id.clone());
                match self.apply_pull(response) {
                    Ok(applied) => {
                        gaps_in_a_row = 0;
                        report.changes += applied.changes;
                        report.snapshots += applied.snapshots;
                        report.deleted += applied.deleted;
                        report.settled += applied.settled;
                        if !applied.more {
                            break;
                        }
                    }
                    // A gap: the next pull asks from where this store stands.
                    Err(Error::Conflict { .. }) if gaps_in_a_row < MAX_GAPS_IN_A_ROW => {
                        gaps_in_a_row += 1;
                        report.gaps += 1;
                    }
                    Err(err) => return Err(err),
                }
            }
            let more_to_send = match &home {
                Some(home) => self.push_request(home)?.is_some(),
                None => false,
            };
            if !(progressed && more_to_send) {
                break;
            }
        }
        report.home_store_id = home;
        Ok(report)
    }
}

impl Coven {
    /// The id of another store (a replica or a home), refusing this store's own.
    fn other_store(&self, field: &str, id: &str) -> Result<u128> {
        let store = ids::parse(field, id)?;
        if store == self.store_id {
            return Err(Error::invalid(field, format!("{id} is this store")));
        }
        Ok(store)
    }

    /// Refuses a message addressed to another store.
    fn this_store(&self, field: &str, id: &str) -> Result<()> {
        let store = ids::parse(field, id)?;
        if store != self.store_id {
            return Err(Error::invalid(
                field,
                format!("{id} is not this store ({})", self.store_id()),
            ));
        }
        Ok(())
    }

    /// Applies one mutation of a replica once (see [`Coven::serve_push`]).
    fn apply_pushed(&self, delivery: Delivery, mutation: Mutation) -> Result<MutationResult> {
        let group_id = mutation.group_id().to_owned();
        // Malformed input is refused the same way every time: nothing to record.
        let group = match ids::parse("group_id", &group_id).and_then(|group| {
            check_mutation(&mutation)?;
            Ok(group)
        }) {
            Ok(group) => group,
            Err(err) if is_refusal(&err) => return Ok(delivery.refusal(group_id, &err)),
            Err(err) => return Err(err),
        };
        // A cancel is the fan-out's, not a write of the store.
        let Some(op) = RemoteOp::of(group, mutation) else {
            return self.apply_pushed_cancel(delivery, group);
        };
        let (result, turn) = self.write(move |batch| {
            if let Some(answer) = delivery.answered(batch)? {
                return Ok((answer, None));
            }
            let (outcome, turn) = match op.apply(batch, group) {
                Ok(applied) => applied,
                Err(err) if is_refusal(&err) => (stored::refused(&err), None),
                Err(err) => return Err(err),
            };
            Ok((delivery.record(batch, group, outcome)?, turn))
        })?;
        if let Some((turn_id, start)) = turn {
            self.fanout.dispatch(turn_id, group, start, &self.harnesses);
        }
        Ok(result)
    }

    /// A pushed cancel: the fan-out stops the group's turn, then the answer is recorded. Unlike
    /// the other mutations the two are not one transaction: a home that stops between them
    /// answers a copy of the cancel by cancelling again (the group's turn then, if any).
    fn apply_pushed_cancel(&self, delivery: Delivery, group: u128) -> Result<MutationResult> {
        if let Some(answer) = self.write(move |batch| delivery.answered(batch))? {
            return Ok(answer);
        }
        let cancelled = self
            .read(|reader| match reader.replica(group)? {
                Some(replica) => Err(stored::homed_elsewhere(group, replica.home)),
                None => Ok(()),
            })
            .and_then(|()| self.fanout.cancel(group));
        let (turn, refusal) = match cancelled {
            Ok(turn) => (Some(turn), None),
            Err(err) if is_refusal(&err) => (None, Some(stored::refused(&err))),
            Err(err) => return Err(err),
        };
        self.write(move |batch| {
            if let Some(answer) = delivery.answered(batch)? {
                return Ok(answer);
            }
            let outcome = match refusal {
                Some(refused) => refused,
                None => OutcomeRecord::Applied {
                    rev: batch.head(group).map(|head| head.rev()).unwrap_or(0),
                    seq: None,
                    turn,
                },
            };
            delivery.record(batch, group, outcome)
        })
    }
}

/// One mutation of a replica as its home knows it: who sent it, its place in their order, its
/// transaction and attempt.
#[derive(Clone, Copy)]
struct Delivery {
    replica: u128,
    order: u64,
    txn: u128,
    attempt: u32,
}

impl Delivery {
    /// The answer given to it before, if it is a copy of one processed.
    fn answered(self, batch: &Batch<'_>) -> Result<Option<MutationResult>> {
        batch.remote_answer(self.replica, self.order, self.txn, self.attempt)
    }

    /// Records its answer in the batch that applied (or refused) it.
    fn record(
        self,
        batch: &mut Batch<'_>,
        group: u128,
        outcome: OutcomeRecord,
    ) -> Result<MutationResult> {
        let record = ResultRecord {
            txn: self.txn,
            attempt: self.attempt,
            group,
            outcome,
        };
        batch.record_remote(self.replica, self.order, &record)?;
        Ok(record.result(self.order))
    }

    /// The answer to a mutation refused before it reached the store (malformed input).
    fn refusal(self, group_id: String, err: &Error) -> MutationResult {
        MutationResult {
            order: self.order,
            txn_id: ids::to_string(self.txn),
            attempt: self.attempt,
            group_id,
            outcome: stored::refused(err).outcome(),
        }
    }
}

/// A replica's mutation, ready to run in the writer.
enum RemoteOp {
    Create(NewGroup),
    Send {
        turn: u128,
        text: String,
        author: Option<String>,
    },
    Append {
        text: String,
        author: Option<String>,
    },
    Rename(String),
    AddMember(String),
    RemoveMember(String),
    Delete,
}

impl RemoteOp {
    /// The store operation of a mutation; `None` for a cancel, which the fan-out applies.
    fn of(group: u128, mutation: Mutation) -> Option<Self> {
        Some(match mutation {
            Mutation::CreateGroup {
                title, member_ids, ..
            } => RemoteOp::Create(NewGroup {
                id: group,
                title,
                members: member_ids
                    .into_iter()
                    .map(|id| (id, ids::new_id()))
                    .collect(),
                project_root: None,
            }),
            Mutation::Send { text, author, .. } => RemoteOp::Send {
                turn: ids::new_id(),
                text,
                author,
            },
            Mutation::AppendUserMessage { text, author, .. } => RemoteOp::Append { text, author },
            Mutation::RenameGroup { title, .. } => RemoteOp::Rename(title),
            Mutation::AddMember { familiar_id, .. } => RemoteOp::AddMember(familiar_id),
            Mutation::RemoveMember { familiar_id, .. } => RemoteOp::RemoveMember(familiar_id),
            Mutation::DeleteGroup { .. } => RemoteOp::Delete,
            Mutation::CancelTurn { .. } => return None,
        })
    }

    /// Runs the mutation in the batch, refusing (with nothing written) as the direct call
    /// would. Returns its outcome and, for a send, the turn to dispatch once committed.
    fn apply(
        self,
        batch: &mut Batch<'_>,
        group: u128,
    ) -> Result<(OutcomeRecord, Option<(u128, TurnStart)>)> {
        batch.ensure_homed_here(group)?;
        match self {
            RemoteOp::Create(new) => {
                if batch.group_id_taken(group)? {
                    return Err(Error::conflict(format!(
                        "group {} already exists",
                        ids::to_string(group)
                    )));
                }
                batch.create_group(new)?;
                Ok((applied(batch, group, None)?, None))
            }
            RemoteOp::Send { turn, text, author } => {
                let start = batch.start_turn(group, turn, text, author)?;
                let seq = start.user_event.seq;
                let outcome = OutcomeRecord::Applied {
                    rev: batch.head(group)?.rev(),
                    seq: Some(seq),
                    turn: Some(turn),
                };
                Ok((outcome, Some((turn, start))))
            }
            RemoteOp::Append { text, author } => {
                let event = batch.append(group, NewEvent::user(text, author, None))?;
                Ok((applied(batch, group, Some(event.seq))?, None))
            }
            RemoteOp::Rename(title) => {
                batch.rename_group(group, title)?;
                Ok((applied(batch, group, None)?, None))
            }
            RemoteOp::AddMember(familiar) => {
                batch.add_member(group, familiar)?;
                Ok((applied(batch, group, None)?, None))
            }
            RemoteOp::RemoveMember(familiar) => {
                batch.remove_member(group, familiar)?;
                Ok((applied(batch, group, None)?, None))
            }
            RemoteOp::Delete => {
                // The deletion's rev: the one its `GroupDeleted` notice is published with.
                let rev = batch.head(group)?.next_rev;
                batch.delete_group(group)?;
                Ok((
                    OutcomeRecord::Applied {
                        rev,
                        seq: None,
                        turn: None,
                    },
                    None,
                ))
            }
        }
    }
}

/// The outcome of a mutation applied to `group`: the group's rev after it.
fn applied(batch: &mut Batch<'_>, group: u128, seq: Option<u64>) -> Result<OutcomeRecord> {
    Ok(OutcomeRecord::Applied {
        rev: batch.head(group)?.rev(),
        seq,
        turn: None,
    })
}

/// How far this store's outbox for `home` has its answers: every entry up to the returned order
/// is settled or answered as applied (a refused or pending entry holds it back).
fn acked_through(reader: &crate::store::Reader, home: u128) -> Result<u64> {
    let outbox = reader.outbox(Some(home))?;
    let unsettled = outbox
        .iter()
        .find(|(_, _, record)| !matches!(record.state, stored::StateRecord::Applied { .. }));
    Ok(match unsettled {
        Some((_, order, _)) => order - 1,
        None => reader.next_order(home)?.saturating_sub(1),
    })
}

/// Checks a mutation's arguments as the direct call would.
fn check_mutation(mutation: &Mutation) -> Result<()> {
    match mutation {
        Mutation::CreateGroup {
            title, member_ids, ..
        } => {
            if let Some(title) = title {
                validate::title(title)?;
            }
            validate::members("member_ids", member_ids)
        }
        Mutation::Send { text, author, .. } | Mutation::AppendUserMessage { text, author, .. } => {
            validate::text("text", text)?;
            validate::author(author.as_deref())
        }
        Mutation::RenameGroup { title, .. } => validate::title(title),
        Mutation::AddMember { familiar_id, .. } | Mutation::RemoveMember { familiar_id, .. } => {
            validate::familiar_id("familiar_id", familiar_id)
        }
        Mutation::DeleteGroup { .. } | Mutation::CancelTurn { .. } => Ok(()),
    }
}

mod serve;
