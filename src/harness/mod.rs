//! Harnesses produce a member's reply. The contract is synchronous: a worker thread calls
//! [`Harness::run_turn`] with the request and a [`ReplySink`], the harness streams text into the
//! sink and returns when the reply is complete (`Ok`) or has failed (`Err`).
//!
//! Built in: `scripted` (in-process, deterministic), `command` (an allowlisted program in a PTY),
//! `claude` (Claude Code stream-json) and `codex` (`codex exec --json`). Hosts add their own by
//! name with [`crate::Coven::register_host_harness`].

pub(crate) mod claude;
pub(crate) mod codex;
pub(crate) mod jsonl;
pub(crate) mod process;
pub(crate) mod pty;
pub(crate) mod registry;
pub(crate) mod scripted;
pub(crate) mod terminal;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::host::HostRef;
use crate::model::{Familiar, GroupConversation};
use crate::store::writer::{ReplyKey, WriterHandle};

/// Longest reply a member may give, in bytes. Text beyond it is dropped: the reply keeps its
/// first `MAX_REPLY_BYTES` (cut at a character boundary), fails with a message saying so, and a
/// process harness's run is stopped, so a runaway program costs bounded memory and storage.
pub const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

/// Everything a harness needs to run one member's side of a turn.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TurnRequest {
    pub group_id: String,
    pub session_id: String,
    pub turn_id: String,
    pub familiar: Familiar,
    /// The prompt to send: the roster preamble followed by the user's message.
    pub prompt: String,
    /// The user's message alone.
    pub user_text: String,
    /// Checked working directory for process harnesses (inside the project root).
    pub cwd: Option<String>,
    /// The session's resume token from its previous turn, if any.
    pub resume_token: Option<String>,
}

/// Produces one member's reply. Implementations must be thread-safe: workers call them
/// concurrently for different members, each on a thread of its own.
#[uniffi::export(with_foreign)]
pub trait Harness: Send + Sync {
    /// Streams the reply into `sink` and returns `Ok(true)` when it is complete. An `Err`, a
    /// call to [`ReplySink::fail`], or `Ok(false)` marks this member's reply as failed (partial
    /// text kept); the other members go on. `Ok(false)` is also what reaches the library when a
    /// host runtime ends the call with an exception its binding cannot report (Python's
    /// `KeyboardInterrupt`, `SystemExit`, `asyncio.CancelledError`), so such a reply fails too.
    ///
    /// Long-running harnesses should stop early when [`ReplySink::is_cancelled`] turns true (a
    /// cancel, a silence timeout, a reply over [`MAX_REPLY_BYTES`], or the store closing): the
    /// library waits `Config::stop_grace_ms` for the call to return, then ends the reply without
    /// it, and drops whatever the harness streams after the stop.
    fn run_turn(&self, request: TurnRequest, sink: Arc<ReplySink>) -> Result<bool>;
}

/// What the sink learned from the harness besides its text.
#[derive(Default)]
struct SinkState {
    resume_token: Option<String>,
    failure: Option<String>,
    finished: bool,
    /// Reply bytes accepted so far.
    bytes: usize,
    /// The reply reached [`MAX_REPLY_BYTES`]; `failure` says so.
    overflowed: bool,
}

/// Where a harness sends its reply. Text goes to the writer as it arrives; the reply's seq is
/// claimed by its first text. Once the run is stopped (cancelled, timed out, over
/// [`MAX_REPLY_BYTES`]) or has ended, text is dropped: nothing is added to a reply after the stop
/// was requested.
#[derive(uniffi::Object)]
pub struct ReplySink {
    key: ReplyKey,
    writer: WriterHandle,
    cancel: Arc<Cancel>,
    /// Wakes the member's silence watchdog whenever the harness shows signs of life.
    activity: Sender<()>,
    state: Mutex<SinkState>,
}

#[uniffi::export]
impl ReplySink {
    /// Appends text to the reply. Ignored once the reply has finished or failed, or its run was
    /// stopped. Text past [`MAX_REPLY_BYTES`] is dropped, fails the reply and stops the run
    /// ([`ReplySink::is_cancelled`] turns true).
    pub fn delta(&self, mut text: String) {
        if text.is_empty() {
            return;
        }
        // Held until the text is queued for the writer: `close` takes this lock, so no text can
        // reach the writer after the reply's end, which is queued after `close`.
        let mut state = self.state.lock();
        if state.finished || state.failure.is_some() || self.cancel.is_cancelled() {
            return;
        }
        let room = MAX_REPLY_BYTES - state.bytes;
        if text.len() > room {
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            state.overflowed = true;
            state.failure = Some(format!(
                "the reply exceeded the limit of {MAX_REPLY_BYTES} bytes; it was cut there"
            ));
            // Every harness kind learns it must stop: process harnesses are killed, host
            // harnesses see `is_cancelled`, and the supervisor stops waiting for more.
            self.cancel.cancel();
        }
        state.bytes += text.len();
        if text.is_empty() {
            return;
        }
        let _ = self.activity.try_send(());
        // A closed writer means the store is closing: the reply is recovered as interrupted.
        self.writer.output(self.key.clone(), text);
        drop(state);
    }

    /// Records the harness's own conversation id so the next turn resumes it.
    pub fn set_resume_token(&self, token: String) {
        if !token.is_empty() {
            self.state.lock().resume_token = Some(token);
        }
    }

    /// Marks the reply complete; later text is ignored.
    pub fn finish(&self) {
        self.state.lock().finished = true;
    }

    /// Marks the reply failed with a message shown on the member's event.
    pub fn fail(&self, message: String) {
        let mut state = self.state.lock();
        if !state.finished {
            state.failure.get_or_insert(message);
        }
    }

    /// True once the run was stopped (the turn was cancelled, this member timed out, its reply
    /// outgrew [`MAX_REPLY_BYTES`], or the store is closing): stop and return.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Tells the silence watchdog the harness is still working without producing reply text.
    pub fn keep_alive(&self) {
        let _ = self.activity.try_send(());
    }
}

/// What the sink holds once the harness has returned.
pub(crate) struct SinkOutcome {
    pub resume_token: Option<String>,
    pub failure: Option<String>,
    /// The reply outgrew [`MAX_REPLY_BYTES`]; `failure` says so.
    pub overflowed: bool,
    /// Reply bytes accepted.
    pub bytes: usize,
}

/// A harness as the store knows it, with where it comes from, which decides how its thread may
/// end (see [`crate::host`]).
pub(crate) type RegisteredHarness = HostRef<dyn Harness>;

impl ReplySink {
    pub(crate) fn new(
        key: ReplyKey,
        writer: WriterHandle,
        cancel: Arc<Cancel>,
        activity: Sender<()>,
    ) -> Self {
        Self {
            key,
            writer,
            cancel,
            activity,
            state: Mutex::new(SinkState::default()),
        }
    }

    /// Why the reply was cut, once it outgrew [`MAX_REPLY_BYTES`].
    pub(crate) fn overflow(&self) -> Option<String> {
        let state = self.state.lock();
        state.overflowed.then(|| state.failure.clone()).flatten()
    }

    /// Closes the sink and hands back what the harness reported.
    pub(crate) fn close(&self) -> SinkOutcome {
        let mut state = self.state.lock();
        state.finished = true;
        SinkOutcome {
            resume_token: state.resume_token.take(),
            failure: state.failure.take(),
            overflowed: state.overflowed,
            bytes: state.bytes,
        }
    }

    pub(crate) fn cancel_signal(&self) -> &Cancel {
        &self.cancel
    }

    /// Records a started process run in the store and waits for the commit; see
    /// [`crate::store::runs`].
    pub(crate) fn record_process_group(
        &self,
        run: &process::ProcessRun,
    ) -> Result<crate::store::runs::RecordedRun> {
        crate::store::runs::record(&self.writer, run)
    }
}

/// A turn's cancellation: a flag for polling harnesses and a channel that wakes blocking ones.
pub(crate) struct Cancel {
    flag: AtomicBool,
    /// Dropped on cancel, which wakes every `select!` waiting on `receiver`.
    sender: Mutex<Option<Sender<()>>>,
    receiver: Receiver<()>,
}

impl Cancel {
    pub fn new() -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        Self {
            flag: AtomicBool::new(false),
            sender: Mutex::new(Some(sender)),
            receiver,
        }
    }

    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.sender.lock().take();
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Becomes ready (disconnected) when the turn is cancelled.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.receiver
    }
}

/// The prompt each member receives: who it is, who else is in the group, then the message.
pub(crate) fn roster_prompt(
    group: &GroupConversation,
    familiar: &Familiar,
    others: &[Familiar],
    user_text: &str,
    author: Option<&str>,
) -> String {
    let mut prompt = format!(
        "You are {} (id \"{}\"), a member of the group chat \"{}\".\n",
        familiar.display_name, familiar.id, group.title
    );
    if others.is_empty() {
        prompt.push_str("You are the only familiar in this group.\n");
    } else {
        let names: Vec<String> = others
            .iter()
            .map(|f| format!("{} (\"{}\")", f.display_name, f.id))
            .collect();
        prompt.push_str(&format!(
            "The other members, who answer the same message independently: {}.\n",
            names.join(", ")
        ));
    }
    if let Some(preamble) = &familiar.preamble {
        prompt.push_str(preamble.trim_end());
        prompt.push('\n');
    }
    prompt.push('\n');
    match author {
        Some(author) => prompt.push_str(&format!("{author}: {user_text}")),
        None => prompt.push_str(user_text),
    }
    prompt
}

/// Adapts a failure message into the error a harness returns.
pub(crate) fn harness_error(reason: impl Into<String>) -> Error {
    Error::Harness {
        reason: reason.into(),
    }
}

impl From<uniffi::UnexpectedUniFFICallbackError> for Error {
    fn from(err: uniffi::UnexpectedUniFFICallbackError) -> Self {
        harness_error(format!("the host callback raised: {}", err.reason))
    }
}
