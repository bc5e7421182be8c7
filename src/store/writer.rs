//! The one writer. It owns every write transaction: it takes whatever commands are queued, applies
//! them in one transaction, commits once (group commit), and only then answers each caller and
//! hands the committed changes to the hub. seq and rev are assigned inside that transaction, so a
//! crash before the commit leaves no trace and one after it leaves no hole.
//!
//! What harnesses stream (a reply's first output, its deltas, how it ended) waits up to the
//! streaming window (`Config::stream_commit_interval_ms`) so the output of every running member
//! shares one commit; any other operation is committed at once and takes that output with it.
//! Everything is applied in the order the writer received it, so a reply's seq is claimed in
//! the order first outputs arrived, whichever commit carries them.
//!
//! Callers reach the writer only through a [`WriterHandle`], which answers `Closed` once the
//! writer thread has exited, so no call can wait on a writer that is gone.
//!
//! Logs: `batch committed` (debug) per batch with its counts, durability and timings; a failed
//! batch or checkpoint is a warn. The counters are plain integers and the macros check the level
//! first, so a disabled log costs the batch no allocation and no formatting.

use std::convert::Infallible;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redb::{Database, Durability, WriteTransaction};
use tracing::{debug, warn};

use super::batch::{Batch, LiveReplies};
use super::contain_panic;
use crate::error::{Error, Result};
use crate::model::GroupChange;

/// Most commands folded into one transaction, so one batch cannot delay its callers without
/// bound; also the most streamed output held in the streaming window, which bounds its memory.
const MAX_BATCH: usize = 4096;
/// Commands that may wait for the writer before senders block (backpressure on fast producers).
/// It also bounds how long streamed output waits: a delta queues behind at most this many
/// commands, so a burst of harness output costs a millisecond or so, not several (8192 made
/// the fan-out bench's p99 emit-to-listener latency 6.4 ms; 1024 makes it about 4 ms or less).
const QUEUE_CAPACITY: usize = 1024;

/// Called once the batch holding an operation has committed (or failed).
pub type Completion = Box<dyn FnOnce(&Result<()>) + Send>;

/// A mutation queued for the writer.
pub trait WriteOp: Send {
    /// Applies the mutation inside the batch's transaction. It must check everything before it
    /// writes anything: an operation that refuses leaves the transaction as it found it.
    fn apply(self: Box<Self>, batch: &mut Batch<'_>) -> Completion;
    /// The operation never ran (the batch could not start).
    fn reject(self: Box<Self>, err: Error);
    /// Whether the operation is streamed output that may wait in the streaming window (how a
    /// reply ended); every other operation starts a commit as soon as the writer receives it.
    fn streamed(&self) -> bool {
        false
    }
}

/// Identifies one member's reply within one turn.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplyKey {
    pub group: u128,
    pub turn: u128,
    pub familiar: String,
}

/// Text a harness produced for a reply. Fire-and-forget: the first output of a reply claims its
/// seq; later outputs queued in the same batch are coalesced into one delta.
pub struct ReplyOutput {
    pub key: ReplyKey,
    pub text: String,
    /// When the harness handed it over: the streaming window it opens is counted from here, so
    /// output that queued behind a commit in flight does not wait a whole window more.
    pub queued_at: Instant,
}

/// What the writer thread receives.
pub enum Command {
    Write(Box<dyn WriteOp>),
    Output(ReplyOutput),
    /// Commit what is queued now, and from then on commit streamed output without waiting for
    /// the window: the store is closing, and its workers wait for how their replies ended.
    Flush,
    /// Finish what is queued before this, then stop.
    Shutdown,
}

enum Queued {
    Write(Box<dyn WriteOp>),
    Output(ReplyOutput),
}

/// A typed operation whose result goes back to a waiting caller.
struct Call<T, F> {
    op: F,
    reply: Sender<Result<T>>,
    /// May wait in the streaming window (see [`WriteOp::streamed`]).
    streamed: bool,
}

impl<T, F> WriteOp for Call<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut Batch<'_>) -> Result<T> + Send,
{
    fn apply(self: Box<Self>, batch: &mut Batch<'_>) -> Completion {
        let Call { op, reply, .. } = *self;
        let outcome = match catch_unwind(AssertUnwindSafe(|| op(batch))) {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::storage("internal error: a write operation panicked")),
        };
        match &outcome {
            Ok(_) => batch.applied += 1,
            // A storage error may have left the transaction half-written: abandon the batch.
            Err(err @ Error::Storage { .. }) => batch.fail(err.clone()),
            Err(_) => {}
        }
        Box::new(move |committed: &Result<()>| {
            let answer = match (outcome, committed) {
                (Err(refused), _) => Err(refused),
                (Ok(_), Err(err)) => Err(err.clone()),
                (Ok(value), Ok(())) => Ok(value),
            };
            // The caller may have stopped waiting; its answer is simply dropped.
            let _ = reply.send(answer);
        })
    }

    fn reject(self: Box<Self>, err: Error) {
        let _ = self.reply.send(Err(err));
    }

    fn streamed(&self) -> bool {
        self.streamed
    }
}

/// Wraps a closure as a queued operation and returns the receiver its result arrives on.
fn call<T, F>(op: F, streamed: bool) -> (Command, Receiver<Result<T>>)
where
    T: Send + 'static,
    F: FnOnce(&mut Batch<'_>) -> Result<T> + Send + 'static,
{
    let (reply, answer) = crossbeam_channel::bounded(1);
    let call = Call {
        op,
        reply,
        streamed,
    };
    (Command::Write(Box::new(call)), answer)
}

/// The only way to reach the writer; cheap to clone. Every call is answered: with its outcome,
/// or with `Closed` when the writer thread has exited (or exits while the call waits), whether
/// the call was queued before, during or after the writer's shutdown.
#[derive(Clone)]
pub struct WriterHandle {
    commands: Sender<Command>,
    /// Never carries a message: it disconnects when the writer thread ends, however it ends,
    /// which wakes every caller still waiting for an answer.
    exited: Receiver<Infallible>,
}

impl WriterHandle {
    /// Queues one operation and waits until its batch has committed (or failed). `Closed` when
    /// the writer has exited or exits before answering; the wait lasts at most as long as the
    /// batches queued ahead of the operation, since the writer runs no host code.
    pub fn call<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T> + Send + 'static,
    {
        self.wait_for(call(op, false))
    }

    /// [`WriterHandle::call`] for how a reply ended: the operation waits in the streaming window
    /// with the streamed output, so the wait also lasts up to the window (plus the batches ahead
    /// of it), unless another operation starts the commit sooner.
    pub fn call_streamed<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T> + Send + 'static,
    {
        self.wait_for(call(op, true))
    }

    fn wait_for<T>(&self, (command, answer): (Command, Receiver<Result<T>>)) -> Result<T> {
        // The writer drops its receiver when it exits, so a send never waits on a queue that
        // nobody drains.
        self.commands.send(command).map_err(|_| Error::Closed)?;
        crossbeam_channel::select! {
            recv(answer) -> outcome => outcome.unwrap_or(Err(Error::Closed)),
            // The writer answers before it exits, so an answer it gave is already there.
            recv(self.exited) -> _ => answer.try_recv().unwrap_or(Err(Error::Closed)),
        }
    }

    /// Queues text streamed into a live reply, without waiting for its commit. Dropped when the
    /// writer has exited: the reply is then recovered as interrupted at the next open.
    pub fn output(&self, key: ReplyKey, text: String) {
        let _ = self.commands.send(Command::Output(ReplyOutput {
            key,
            text,
            queued_at: Instant::now(),
        }));
    }

    /// Commits whatever waits in the streaming window now, and every later streamed output as
    /// soon as the writer is free: called when the store starts closing, so the workers that
    /// wait for how their replies ended are not held by the window. Does not wait.
    pub fn flush_streams(&self) {
        let _ = self.commands.send(Command::Flush);
    }

    /// Queues one operation without waiting for it; its outcome is dropped. Dropped as well
    /// when the writer has exited.
    pub fn submit<F>(&self, op: F)
    where
        F: FnOnce(&mut Batch<'_>) -> Result<()> + Send + 'static,
    {
        let (command, _answer) = call(op, false);
        let _ = self.commands.send(command);
    }
}

/// When the writer's commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every commit is durable before its callers are answered.
    EveryCommit,
    /// Callers are answered after a commit that is not yet durable. A durable commit follows
    /// at most this long after the first such commit (an empty one when no write comes), and
    /// one is made when the writer stops.
    Within(Duration),
}

/// Where the writer hands each commit's changes, in rev order, once the commit is made
/// (invariant 2, save then publish). The hub implements it; the store knows nothing above itself.
pub trait Publish: Send + Sync {
    fn publish(&self, changes: Vec<GroupChange>);
}

/// The writer thread.
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread. `stream_window` is how long streamed output may wait for the
    /// commit that carries it (zero: commit as soon as the writer is free).
    pub fn start(
        db: Arc<Database>,
        policy: SyncPolicy,
        stream_window: Duration,
        hub: Arc<dyn Publish>,
    ) -> Result<Self> {
        let (commands, receiver) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        let (alive, exited) = crossbeam_channel::bounded::<Infallible>(0);
        let thread = std::thread::Builder::new()
            .name("coven-writer".into())
            .spawn(move || {
                // Dropped when this thread ends, even by a panic: that is the exit signal.
                let _alive = alive;
                run(&db, policy, stream_window, hub.as_ref(), receiver);
            })
            .map_err(|err| Error::storage(format!("cannot start the writer thread: {err}")))?;
        Ok(Self {
            handle: WriterHandle { commands, exited },
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Lets the writer finish everything queued before this call, then joins it. Whatever is
    /// queued later is answered `Closed`.
    pub fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.commands.send(Command::Shutdown);
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(
    db: &Database,
    policy: SyncPolicy,
    stream_window: Duration,
    hub: &dyn Publish,
    receiver: Receiver<Command>,
) {
    serve(db, policy, stream_window, hub, &receiver);
    // Queued behind the shutdown: never applied. Their callers would be woken by the exit
    // anyway; answering them here also frees what they hold.
    for command in receiver.try_iter() {
        if let Command::Write(op) = command {
            op.reject(Error::Closed);
        }
    }
    // Dropping the receiver makes every later send fail at once.
}

/// Commits the writer made that are not durable yet (only under [`SyncPolicy::Within`]).
struct Unsynced {
    every: Option<Duration>,
    /// When the oldest of them was made.
    since: Option<Instant>,
}

impl Unsynced {
    fn new(policy: SyncPolicy) -> Self {
        let every = match policy {
            SyncPolicy::EveryCommit => None,
            SyncPolicy::Within(every) => Some(every),
        };
        Self { every, since: None }
    }

    /// When the next durable commit is due; `None` while everything committed is durable.
    fn deadline(&self) -> Option<Instant> {
        self.since?.checked_add(self.every?)
    }

    /// Whether the next batch must commit durably.
    fn due(&self, now: Instant) -> bool {
        match self.every {
            None => true,
            Some(_) => self.deadline().is_some_and(|deadline| now >= deadline),
        }
    }

    fn record(&mut self, commit: Commit, started: Instant) {
        match commit {
            Commit::Durable => self.since = None,
            Commit::NotDurable => {
                self.since.get_or_insert(started);
            }
            Commit::Nothing => {}
        }
    }

    /// Makes every earlier commit durable with an empty durable commit. A failure is not retried
    /// while the store is idle (an I/O error leaves redb refusing every write until reopened);
    /// the next write starts the clock again.
    fn checkpoint(&mut self, db: &Database) {
        if self.since.take().is_some() {
            if let Err(err) = begin(db, true).and_then(|txn| txn.commit().map_err(Error::from)) {
                warn!(error = %err, "durable checkpoint failed");
            }
        }
    }
}

/// What woke the writer.
enum Woken {
    Command(Command),
    /// The streaming window ended or a durable checkpoint is due.
    Deadline,
    /// Every handle is gone.
    Disconnected,
}

/// Receives, holds and commits. Streamed output opens a window of `stream_window` when none is
/// open and waits in `queued` until the window ends; any other operation commits at once, with
/// everything queued before it. A stop (Shutdown, or every handle gone) commits what is queued
/// first, so nothing that reached the writer is dropped by a close.
fn serve(
    db: &Database,
    policy: SyncPolicy,
    mut stream_window: Duration,
    hub: &dyn Publish,
    receiver: &Receiver<Command>,
) {
    let mut queued: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
    let mut live = LiveReplies::default();
    // Until a batch finds the replicas table empty, a write checks it (see `Batch`).
    let mut may_hold_replicas = true;
    let mut unsynced = Unsynced::new(policy);
    // When the open streaming window ends; `None` while nothing streamed is waiting.
    let mut window_end: Option<Instant> = None;
    loop {
        // Idle with nothing waiting to be committed or made durable: sleep until a command.
        let deadline = match (window_end, unsynced.deadline()) {
            (Some(window), Some(checkpoint)) => Some(window.min(checkpoint)),
            (window, checkpoint) => window.or(checkpoint),
        };
        let woken = match deadline {
            None => receiver.recv().map_or(Woken::Disconnected, Woken::Command),
            Some(deadline) => match receiver.recv_deadline(deadline) {
                Ok(command) => Woken::Command(command),
                Err(RecvTimeoutError::Timeout) => Woken::Deadline,
                Err(RecvTimeoutError::Disconnected) => Woken::Disconnected,
            },
        };
        let mut stop = matches!(woken, Woken::Disconnected);
        // An operation a caller waits on without being streamed output: commit now.
        let mut urgent = false;
        let mut next = match woken {
            Woken::Command(command) => Some(command),
            Woken::Deadline | Woken::Disconnected => None,
        };
        while let Some(command) = next.take() {
            let (item, streamed) = match command {
                Command::Write(op) => {
                    let streamed = op.streamed();
                    if streamed {
                        window_end.get_or_insert_with(|| Instant::now() + stream_window);
                    }
                    (Some(Queued::Write(op)), streamed)
                }
                Command::Output(output) => {
                    window_end.get_or_insert(output.queued_at + stream_window);
                    (Some(Queued::Output(output)), true)
                }
                Command::Flush => {
                    stream_window = Duration::ZERO;
                    (None, false)
                }
                Command::Shutdown => {
                    stop = true;
                    break;
                }
            };
            if !streamed {
                urgent = true;
            }
            queued.extend(item);
            if queued.len() < MAX_BATCH {
                next = receiver.try_recv().ok();
            }
        }
        let now = Instant::now();
        let window_over = window_end.is_some_and(|end| now >= end);
        let checkpoint_due = unsynced.deadline().is_some_and(|due| now >= due);
        if !queued.is_empty()
            && (urgent || stop || window_over || checkpoint_due || queued.len() >= MAX_BATCH)
        {
            let durable = unsynced.due(now);
            let commit = commit_batch(
                db,
                durable,
                hub,
                &mut queued,
                &mut live,
                &mut may_hold_replicas,
            );
            unsynced.record(commit, now);
            window_end = None;
        } else if checkpoint_due {
            unsynced.checkpoint(db);
        }
        if stop {
            break;
        }
    }
    unsynced.checkpoint(db);
}

/// What one batch left in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// Nothing: every operation was refused, or the batch failed.
    Nothing,
    Durable,
    /// Committed, but only in memory until a later durable commit.
    NotDurable,
}

fn reject_all(queued: &mut Vec<Queued>, err: &Error) {
    warn!(commands = queued.len(), error = %err, "batch refused: its transaction could not start");
    for item in queued.drain(..) {
        if let Queued::Write(op) = item {
            op.reject(err.clone());
        }
    }
}

fn commit_batch(
    db: &Database,
    durable: bool,
    hub: &dyn Publish,
    queued: &mut Vec<Queued>,
    live: &mut LiveReplies,
    may_hold_replicas: &mut bool,
) -> Commit {
    let started = Instant::now();
    let commands = queued.len();
    let mut outputs = 0usize;
    let txn = match begin(db, durable) {
        Ok(txn) => txn,
        Err(err) => {
            reject_all(queued, &err);
            return Commit::Nothing;
        }
    };
    let mut completions = Vec::with_capacity(queued.len());
    // redb panics on some damaged pages instead of answering an error: contained, the batch is
    // refused as `Storage` and the writer lives on.
    let (outcome, published) = match contain_panic("opening the tables", || Batch::open(&txn)) {
        Ok(mut batch) => {
            batch.live = std::mem::take(live);
            batch.may_hold_replicas = *may_hold_replicas;
            for item in queued.drain(..) {
                match item {
                    Queued::Write(op) => {
                        // Deltas that arrived before this operation are stored before it.
                        if let Err(err) = batch.flush_pending() {
                            batch.fail(err);
                        }
                        completions.push(op.apply(&mut batch));
                    }
                    Queued::Output(output) => {
                        outputs += 1;
                        if let Err(err) = batch.reply_output(output) {
                            batch.fail(err);
                        }
                    }
                }
            }
            if let Err(err) = batch.flush_pending().and_then(|()| batch.flush_heads()) {
                batch.fail(err);
            }
            let outcome = match batch.failure.take() {
                Some(err) => Err(err),
                None => Ok(batch.applied > 0 || !batch.published.is_empty()),
            };
            *live = std::mem::take(&mut batch.live);
            // Whether the batch committed or not: a replica it added may exist; a table it
            // found empty held none before it.
            if batch.replica_added {
                *may_hold_replicas = true;
            } else if batch.replicas_table_empty == Some(true) {
                *may_hold_replicas = false;
            }
            (outcome, std::mem::take(&mut batch.published))
        }
        Err(err) => {
            reject_all(queued, &err);
            return Commit::Nothing;
        }
    };
    let mut commit = Commit::Nothing;
    let mut commit_time = Duration::ZERO;
    let mut batch_time = Duration::ZERO;
    let committed = match outcome {
        // Only refusals: leave the file exactly as it was.
        Ok(false) => txn.abort().map_err(Error::from),
        Ok(true) => {
            let commit_started = Instant::now();
            let committed = contain_panic("committing", || txn.commit().map_err(Error::from));
            commit_time = commit_started.elapsed();
            batch_time = started.elapsed();
            committed.inspect(|()| {
                commit = if durable {
                    Commit::Durable
                } else {
                    Commit::NotDurable
                };
            })
        }
        Err(err) => {
            let _ = txn.abort();
            Err(err)
        }
    };
    match committed {
        Ok(()) => live.keep(),
        Err(_) => live.roll_back(),
    }
    for completion in completions {
        completion(&committed);
    }
    let changes = published.len();
    if committed.is_ok() && !published.is_empty() {
        hub.publish(published);
    }
    // Logged once the callers are answered and the changes published, so a host's subscriber
    // never delays them.
    match (&committed, commit) {
        (Err(err), _) => {
            warn!(commands, outputs, error = %err, "batch failed: nothing of it was written");
        }
        (Ok(()), Commit::Nothing) => debug!(commands, outputs, "batch wrote nothing"),
        (Ok(()), _) => debug!(
            commands,
            outputs,
            changes,
            durable = commit == Commit::Durable,
            commit_us = commit_time.as_micros() as u64,
            batch_us = batch_time.as_micros() as u64,
            "batch committed"
        ),
    }
    commit
}

fn begin(db: &Database, durable: bool) -> Result<WriteTransaction> {
    let mut txn = db.begin_write()?;
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability)
        .map_err(|err| Error::storage(format!("cannot set durability: {err}")))?;
    Ok(txn)
}

#[cfg(test)]
mod tests {
    use redb::backends::InMemoryBackend;

    use super::*;
    use crate::testing::{CountingBackend, DiskCounts};

    /// Upper bound for anything a test waits on; reaching it is a failure.
    const GUARD: Duration = Duration::from_secs(30);

    /// Publishes nowhere: these tests read the store.
    struct Discard;

    impl Publish for Discard {
        fn publish(&self, _changes: Vec<GroupChange>) {}
    }

    fn start(policy: SyncPolicy) -> (Writer, Arc<DiskCounts>) {
        let (backend, disk) = CountingBackend::new(InMemoryBackend::new());
        let db = Database::builder().create_with_backend(backend).unwrap();
        let writer =
            Writer::start(Arc::new(db), policy, Duration::ZERO, Arc::new(Discard)).unwrap();
        (writer, disk)
    }

    /// Waits (bounded) until `condition` holds.
    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + GUARD;
        while !condition() {
            assert!(Instant::now() < deadline, "gave up waiting until {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_call_queued_behind_shutdown_is_answered_closed_when_the_writer_exits() {
        let (mut writer, _) = start(SyncPolicy::EveryCommit);
        let handle = writer.handle();
        // An operation that holds the writer inside its batch until released.
        let (entered, entered_rx) = crossbeam_channel::bounded(1);
        let (release, release_rx) = crossbeam_channel::bounded::<()>(1);
        let blocker = {
            let handle = handle.clone();
            std::thread::spawn(move || {
                handle.call(move |_| {
                    entered.send(()).unwrap();
                    release_rx.recv_timeout(GUARD).unwrap();
                    Ok(1)
                })
            })
        };
        entered_rx.recv_timeout(GUARD).unwrap();
        // Shutdown is queued while the writer is busy; the next call lands behind it.
        handle.commands.send(Command::Shutdown).unwrap();
        let (answer, late) = crossbeam_channel::bounded(1);
        let victim = {
            let handle = handle.clone();
            std::thread::spawn(move || answer.send(handle.call(|_| Ok(2))).unwrap())
        };
        wait_until("the late call is queued", || handle.commands.len() == 2);
        release.send(()).unwrap();
        assert_eq!(blocker.join().unwrap(), Ok(1));
        let outcome = late
            .recv_timeout(GUARD)
            .expect("a call queued behind Shutdown was never answered");
        assert_eq!(outcome, Err(Error::Closed));
        victim.join().unwrap();
        // And once the writer has gone, a call is refused at once.
        writer.shutdown();
        assert_eq!(handle.call(|_| Ok(3)), Err(Error::Closed));
    }

    #[test]
    fn a_non_durable_commit_is_made_durable_by_a_checkpoint_when_no_write_follows() {
        let every = Duration::from_millis(20);
        let (mut writer, disk) = start(SyncPolicy::Within(every));
        let handle = writer.handle();
        let before = disk.syncs();
        handle.call(|_| Ok(())).unwrap();
        // The commit itself was not synced; the checkpoint that follows it is.
        wait_until("the checkpoint is synced", || disk.syncs() > before);
        writer.shutdown();
    }

    #[test]
    fn checkpoints_are_due_only_after_a_commit_that_is_not_durable() {
        let every = Duration::from_millis(1000);
        let mut unsynced = Unsynced::new(SyncPolicy::Within(every));
        let start = Instant::now();
        assert_eq!(unsynced.deadline(), None, "idle: no wake-up");
        assert!(!unsynced.due(start));
        unsynced.record(Commit::NotDurable, start);
        unsynced.record(Commit::NotDurable, start + every / 2);
        // The oldest commit not yet durable sets the deadline.
        assert_eq!(unsynced.deadline(), Some(start + every));
        assert!(!unsynced.due(start + every / 2));
        assert!(unsynced.due(start + every));
        unsynced.record(Commit::Durable, start + every);
        assert_eq!(unsynced.deadline(), None, "a durable batch covers them");
        unsynced.record(Commit::NotDurable, start + every);
        unsynced.record(Commit::Nothing, start + 2 * every);
        assert_eq!(unsynced.deadline(), Some(start + 2 * every));

        let durable = Unsynced::new(SyncPolicy::EveryCommit);
        assert!(durable.due(start), "every commit is durable");
        assert_eq!(durable.deadline(), None);
    }
}
