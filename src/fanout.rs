//! The fan-out: one committed user message becomes one job per member on a bounded pool of
//! worker threads. Each worker supervises its member's harness run (silence timeout, cancel,
//! panics), then commits how the reply ended. A member's failure ends only its own reply.
//!
//! Logs: a `turn` span (info) from dispatch to the last member's commit, with `turn started` and
//! `turn ended` events; inside it a `member` span (debug) per member run, entered on its worker and
//! on its harness thread, ending with one `member run ended` event (debug, or warn when the reply
//! failed or timed out, with the reason). Ids, kinds, counts and durations only: never prompt or
//! reply text.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::harness::registry::{Harnesses, Resolved};
use crate::harness::{roster_prompt, Cancel, RegisteredHarness, ReplySink, TurnRequest};
use crate::host::{self, Unreturned};
use crate::ids;
use crate::model::{Familiar, ReplyError, ReplyErrorKind};
use crate::store::turns::{ReplyEnd, TurnStart, NO_OUTPUT};
use crate::store::writer::{ReplyKey, WriterHandle};

/// How many finished turn ids `wait_turn` still recognizes.
const FINISHED_TURNS_KEPT: usize = 4096;

/// One running turn as seen by this process.
pub struct TurnControl {
    id: u128,
    group: u128,
    cancels: Vec<Arc<Cancel>>,
    /// Each member's job until a worker (or a cancel) takes it: a cancel finishes the jobs no
    /// worker has started, without starting their harnesses.
    jobs: Mutex<Vec<Arc<JobSlot>>>,
    remaining: AtomicUsize,
    /// Members whose reply failed or timed out (cancelled ones are not failures).
    failed: AtomicUsize,
    started: Instant,
    /// The `turn` span: parent of every member run's span.
    span: tracing::Span,
    /// Why a member's outcome could not be committed (the store refused the write, or was
    /// closed): the turn ends, but `wait` must not acknowledge it as saved.
    unsaved: Mutex<Option<Error>>,
    done: Mutex<bool>,
    finished: Condvar,
}

impl TurnControl {
    /// Stops every run of the turn. Members still queued end here, as cancelled, on the calling
    /// thread; running ones end on their workers.
    fn cancel(&self, shared: &Shared) {
        for cancel in &self.cancels {
            cancel.cancel();
        }
        let queued: Vec<Arc<JobSlot>> = self.jobs.lock().clone();
        for slot in queued {
            if let Some(job) = slot.take() {
                run_member(shared, job);
            }
        }
    }

    /// Waits until every member's reply has been committed; false at the timeout.
    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut done = self.done.lock();
        while !*done {
            if self.finished.wait_until(&mut done, deadline).timed_out() {
                return *done;
            }
        }
        true
    }
}

#[derive(Default)]
struct Registry {
    by_group: HashMap<u128, Arc<TurnControl>>,
    by_id: HashMap<u128, Arc<TurnControl>>,
    finished_order: VecDeque<u128>,
    finished: HashSet<u128>,
    /// The finished turns (a subset of `finished`) whose outcome was not entirely committed.
    unsaved: HashMap<u128, Error>,
    /// The store is closing: a turn registered from now on is cancelled at once.
    closing: bool,
}

struct Shared {
    writer: WriterHandle,
    registry: Mutex<Registry>,
    silence_timeout: Duration,
    stop_grace: Duration,
}

/// A member's job, taken exactly once: by the worker that runs it or by a cancel that ends it
/// before it started.
struct JobSlot(Mutex<Option<MemberJob>>);

impl JobSlot {
    fn take(&self) -> Option<MemberJob> {
        self.0.lock().take()
    }
}

struct MemberJob {
    key: ReplyKey,
    session: u128,
    /// The familiar's harness kind, for the logs.
    harness: String,
    /// The request, or why the member cannot run at all (reported on its event).
    run: std::result::Result<(TurnRequest, RegisteredHarness), String>,
    cancel: Arc<Cancel>,
    control: Arc<TurnControl>,
}

/// The worker pool and the registry of running turns.
pub struct Fanout {
    shared: Arc<Shared>,
    jobs: Mutex<Option<Sender<Arc<JobSlot>>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Fanout {
    pub fn start(
        writer: WriterHandle,
        workers: u32,
        silence_timeout: Duration,
        stop_grace: Duration,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            writer,
            registry: Mutex::new(Registry::default()),
            silence_timeout,
            stop_grace,
        });
        let (jobs, queue) = crossbeam_channel::unbounded::<Arc<JobSlot>>();
        let mut handles = Vec::with_capacity(workers as usize);
        for index in 0..workers {
            let shared = shared.clone();
            let queue = queue.clone();
            let handle = std::thread::Builder::new()
                .name(format!("coven-worker-{index}"))
                .spawn(move || work(&shared, &queue))
                .map_err(|err| Error::storage(format!("cannot start a worker thread: {err}")))?;
            handles.push(handle);
        }
        Ok(Self {
            shared,
            jobs: Mutex::new(Some(jobs)),
            workers: Mutex::new(handles),
        })
    }

    /// Queues one job per member of a committed turn.
    pub fn dispatch(&self, turn: u128, group: u128, start: TurnStart, harnesses: &Harnesses) {
        let TurnStart {
            user_event,
            group: record,
            members,
        } = start;
        let cancels: Vec<Arc<Cancel>> = members.iter().map(|_| Arc::new(Cancel::new())).collect();
        let span = tracing::info_span!(
            "turn",
            turn_id = %Uuid::from_u128(turn),
            group_id = %Uuid::from_u128(group),
        );
        span.in_scope(|| info!(members = members.len(), "turn started"));
        let control = Arc::new(TurnControl {
            id: turn,
            group,
            cancels: cancels.clone(),
            jobs: Mutex::new(Vec::with_capacity(members.len())),
            remaining: AtomicUsize::new(members.len()),
            failed: AtomicUsize::new(0),
            started: Instant::now(),
            span,
            unsaved: Mutex::new(None),
            done: Mutex::new(false),
            finished: Condvar::new(),
        });
        let familiars: Vec<Familiar> = members.iter().map(|(f, _)| f.clone()).collect();
        let mut slots = Vec::with_capacity(members.len());
        for ((familiar, session), cancel) in members.into_iter().zip(cancels) {
            let others: Vec<Familiar> = familiars
                .iter()
                .filter(|other| other.id != familiar.id)
                .cloned()
                .collect();
            let run = harnesses.resolve(&record, &familiar).map(|resolved| {
                let Resolved { harness, cwd } = resolved;
                let request = TurnRequest {
                    group_id: record.id.clone(),
                    session_id: session.id.clone(),
                    turn_id: ids::to_string(turn),
                    prompt: roster_prompt(
                        &record,
                        &familiar,
                        &others,
                        &user_event.text,
                        user_event.author.as_deref(),
                    ),
                    user_text: user_event.text.clone(),
                    cwd,
                    resume_token: session.resume_token.clone(),
                    familiar: familiar.clone(),
                };
                (request, harness)
            });
            slots.push(Arc::new(JobSlot(Mutex::new(Some(MemberJob {
                key: ReplyKey {
                    group,
                    turn,
                    familiar: familiar.id.clone(),
                },
                session: ids::parse("session_id", &session.id).unwrap_or_default(),
                harness: familiar.harness.clone(),
                run,
                cancel,
                control: control.clone(),
            })))));
        }
        *control.jobs.lock() = slots.clone();
        let closing = {
            let mut registry = self.shared.registry.lock();
            registry.by_group.insert(group, control.clone());
            registry.by_id.insert(turn, control.clone());
            registry.closing
        };
        // Closing: every member is finished as cancelled right here.
        if closing {
            control.cancel(&self.shared);
            return;
        }
        let jobs = self.jobs.lock().clone();
        for slot in slots {
            let unsent = match &jobs {
                Some(jobs) => jobs.send(slot).err().map(|unsent| unsent.0),
                None => Some(slot),
            };
            // The pool is gone (the store is closing): the member ends here, as cancelled.
            if let Some(job) = unsent.and_then(|slot| slot.take()) {
                job.cancel.cancel();
                run_member(&self.shared, job);
            }
        }
    }

    /// Cancels the group's running turn. Members whose runs have not started end as cancelled
    /// before this returns; running ones are stopped and end on their workers.
    pub fn cancel(&self, group: u128) -> Result<u128> {
        let control = self.shared.registry.lock().by_group.get(&group).cloned();
        match control {
            Some(control) => {
                control.cancel(&self.shared);
                Ok(control.id)
            }
            None => Err(Error::not_found(
                "running turn in group",
                ids::to_string(group),
            )),
        }
    }

    /// Waits for a turn to end; `Ok(false)` at the timeout.
    pub fn wait(&self, turn: u128, timeout: Duration) -> Result<bool> {
        let control = {
            let registry = self.shared.registry.lock();
            if registry.finished.contains(&turn) {
                return saved(turn, registry.unsaved.get(&turn));
            }
            registry.by_id.get(&turn).cloned()
        };
        match control {
            Some(control) if control.wait(timeout) => saved(turn, control.unsaved.lock().as_ref()),
            Some(_) => Ok(false),
            None => Err(Error::not_found("turn", ids::to_string(turn))),
        }
    }

    /// Cancels every turn, running, queued or registered while this runs, lets the workers
    /// commit how each reply ended, and joins them. Each worker waits at most the stop grace for
    /// its harness; a harness calling this from its own run is not waited for at all.
    pub fn shutdown(&self) {
        host::release_current_run();
        let running: Vec<Arc<TurnControl>> = {
            let mut registry = self.shared.registry.lock();
            registry.closing = true;
            registry.by_id.values().cloned().collect()
        };
        for control in running {
            control.cancel(&self.shared);
        }
        self.jobs.lock().take();
        for handle in self.workers.lock().drain(..) {
            let _ = handle.join();
        }
    }
}

fn work(shared: &Shared, queue: &Receiver<Arc<JobSlot>>) {
    for slot in queue.iter() {
        // Empty when a cancel already ended the member.
        if let Some(job) = slot.take() {
            run_member(shared, job);
        }
    }
}

/// Runs one member's reply to its end and commits the outcome.
fn run_member(shared: &Shared, job: MemberJob) {
    let MemberJob {
        key,
        session,
        harness: harness_kind,
        run,
        cancel,
        control,
    } = job;
    let span = tracing::debug_span!(
        parent: &control.span,
        "member",
        familiar = %key.familiar,
        harness = %harness_kind,
    );
    let in_member = span.enter();
    let started = Instant::now();
    let RunEnd {
        error,
        resume_token,
        reply_bytes,
    } = match run {
        Err(reason) => RunEnd::without_run(failed(reason)),
        Ok(_) if cancel.is_cancelled() => RunEnd::without_run(cancelled()),
        Ok((request, harness)) => supervise(shared, &key, request, harness, &cancel),
    };
    // The store fails a reply that ended without output; saying so here keeps the log and the
    // stored marker in agreement.
    let error = match error {
        None if reply_bytes == 0 => Some(failed(NO_OUTPUT.to_owned())),
        error => error,
    };
    log_member_end(error.as_ref(), reply_bytes, started.elapsed());
    if error
        .as_ref()
        .is_some_and(|error| error.kind != ReplyErrorKind::Cancelled)
    {
        control.failed.fetch_add(1, Ordering::Relaxed);
    }
    let end = ReplyEnd {
        session,
        error,
        resume_token,
    };
    // If the store is closing (`Closed`, also when the writer exits before this is applied), or
    // refuses the write (a full disk), the reply stays open in the file and is recovered as
    // interrupted at the next open; the turn must then not be acknowledged as saved.
    let committed = shared
        .writer
        .call_streamed(move |batch| batch.finish_reply(key, end))
        .map(|_| ());
    if let Err(err) = committed {
        control.unsaved.lock().get_or_insert(err);
    }
    drop(in_member);
    if control.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
        finish_turn(shared, &control);
    }
}

/// The one event of a member run: debug when the reply completed or was cancelled, warn with the
/// reason when it failed or timed out.
fn log_member_end(error: Option<&ReplyError>, reply_bytes: usize, elapsed: Duration) {
    let duration_ms = elapsed.as_millis() as u64;
    match error {
        None => debug!(
            outcome = "completed",
            reply_bytes, duration_ms, "member run ended"
        ),
        Some(error) if error.kind == ReplyErrorKind::Cancelled => {
            debug!(
                outcome = "cancelled",
                reply_bytes, duration_ms, "member run ended"
            )
        }
        Some(error) => warn!(
            outcome = outcome_name(error.kind),
            reason = %error.message,
            reply_bytes,
            duration_ms,
            "member run ended"
        ),
    }
}

fn outcome_name(kind: ReplyErrorKind) -> &'static str {
    match kind {
        ReplyErrorKind::Failed => "failed",
        ReplyErrorKind::TimedOut => "timed_out",
        ReplyErrorKind::Cancelled => "cancelled",
        ReplyErrorKind::Interrupted => "interrupted",
    }
}

fn finish_turn(shared: &Shared, control: &TurnControl) {
    {
        let mut registry = shared.registry.lock();
        registry.by_id.remove(&control.id);
        if registry
            .by_group
            .get(&control.group)
            .is_some_and(|running| running.id == control.id)
        {
            registry.by_group.remove(&control.group);
        }
        registry.finished.insert(control.id);
        if let Some(err) = control.unsaved.lock().clone() {
            registry.unsaved.insert(control.id, err);
        }
        registry.finished_order.push_back(control.id);
        if registry.finished_order.len() > FINISHED_TURNS_KEPT {
            if let Some(oldest) = registry.finished_order.pop_front() {
                registry.finished.remove(&oldest);
                registry.unsaved.remove(&oldest);
            }
        }
    }
    let _in_turn = control.span.enter();
    let members = control.cancels.len();
    let failed = control.failed.load(Ordering::Relaxed);
    let duration_ms = control.started.elapsed().as_millis() as u64;
    match control.unsaved.lock().as_ref() {
        None => info!(members, failed, duration_ms, "turn ended"),
        Some(err) => warn!(
            members,
            failed,
            duration_ms,
            error = %err,
            "turn ended, but how a reply ended could not be saved"
        ),
    }
    *control.done.lock() = true;
    control.finished.notify_all();
}

/// How a member's run ended, as its worker saw it.
struct RunEnd {
    error: Option<ReplyError>,
    resume_token: Option<String>,
    /// Reply bytes the sink accepted.
    reply_bytes: usize,
}

impl RunEnd {
    /// A member whose harness never started.
    fn without_run(error: ReplyError) -> Self {
        Self {
            error: Some(error),
            resume_token: None,
            reply_bytes: 0,
        }
    }
}

/// Runs the harness on a host thread and watches it: activity resets the silence timer; a
/// cancel, an oversized reply or silence stops it. Returns the reply's error marker, the new
/// resume token and the reply's size.
fn supervise(
    shared: &Shared,
    key: &ReplyKey,
    request: TurnRequest,
    harness: RegisteredHarness,
    cancel: &Arc<Cancel>,
) -> RunEnd {
    let (activity_tx, activity_rx) = crossbeam_channel::bounded(1);
    let sink = Arc::new(ReplySink::new(
        key.clone(),
        shared.writer.clone(),
        cancel.clone(),
        activity_tx,
    ));
    // A disconnected channel: the harness's thread ended without returning (its host runtime
    // ended it).
    let (done_tx, done_rx) =
        crossbeam_channel::bounded::<std::result::Result<Result<bool>, Unreturned>>(1);
    // Fired when the harness itself is waiting for the store to close: waiting for it to
    // return would wait for the close, which waits for this run.
    let release = Arc::new(Cancel::new());
    let run_sink = sink.clone();
    let run_release = release.clone();
    // What the harness logs (a process's pid and exit status) belongs to this member's run.
    let member_span = tracing::Span::current();
    let started = host::spawn("coven-run", move || {
        let _in_member = member_span.enter();
        host::enter_run(run_release);
        let returned = host::call(harness.origin, || harness.run_turn(request, run_sink));
        let _ = done_tx.send(returned);
    });
    if let Err(err) = started {
        sink.close();
        return RunEnd::without_run(failed(format!(
            "cannot start a thread for the harness: {err}"
        )));
    }

    let mut timed_out = false;
    let after_stop = || {
        crossbeam_channel::select! {
            recv(done_rx) -> result => result.ok(),
            recv(release.receiver()) -> _ => None,
            default(shared.stop_grace) => None,
        }
    };
    let returned = loop {
        crossbeam_channel::select! {
            recv(done_rx) -> result => break result.ok(),
            recv(activity_rx) -> _ => {}
            recv(cancel.receiver()) -> _ => break after_stop(),
            default(shared.silence_timeout) => {
                timed_out = true;
                cancel.cancel();
                break after_stop();
            }
        }
    };
    let outcome = sink.close();
    let error = if outcome.overflowed {
        outcome.failure.map(failed)
    } else if timed_out {
        Some(ReplyError {
            kind: ReplyErrorKind::TimedOut,
            message: format!(
                "no output for {} ms; the run was stopped",
                shared.silence_timeout.as_millis()
            ),
        })
    } else if cancel.is_cancelled() {
        Some(cancelled())
    } else {
        match returned {
            None => Some(failed("the harness stopped without returning".to_owned())),
            Some(Err(Unreturned::Panicked)) => Some(failed("the harness panicked".to_owned())),
            Some(Err(Unreturned::HostExiting)) => Some(failed(
                "the harness was not started: its host is shutting down".to_owned(),
            )),
            Some(Ok(Err(Error::Harness { reason }))) => Some(failed(reason)),
            Some(Ok(Err(other))) => Some(failed(other.to_string())),
            Some(Ok(Ok(false))) => Some(failed(outcome.failure.unwrap_or_else(|| {
                "the harness did not complete its reply (it returned false, or its host runtime \
                 ended the call with an exception the binding cannot report, such as \
                 KeyboardInterrupt or SystemExit)"
                    .to_owned()
            }))),
            Some(Ok(Ok(true))) => outcome.failure.map(failed),
        }
    };
    RunEnd {
        error,
        resume_token: outcome.resume_token,
        reply_bytes: outcome.bytes,
    }
}

/// What `wait` answers for an ended turn: acknowledged only when every reply was committed.
/// Otherwise the unsaved reply stays open in the file and is marked interrupted at the next open.
fn saved(turn: u128, unsaved: Option<&Error>) -> Result<bool> {
    match unsaved {
        None => Ok(true),
        Some(Error::Closed) => Err(Error::Closed),
        Some(err) => Err(Error::storage(format!(
            "turn {} ended, but how one of its replies ended could not be saved ({err}); the \
             reply is marked interrupted when the store is next opened",
            ids::to_string(turn)
        ))),
    }
}

fn failed(message: String) -> ReplyError {
    ReplyError {
        kind: ReplyErrorKind::Failed,
        message,
    }
}

fn cancelled() -> ReplyError {
    ReplyError {
        kind: ReplyErrorKind::Cancelled,
        message: "the turn was cancelled".to_owned(),
    }
}
