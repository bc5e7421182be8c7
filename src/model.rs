//! The records every host sees: familiars, groups, events, sessions, changes.
//!
//! Ids cross every boundary as strings (UUIDs for groups, sessions and turns; host-chosen slugs
//! for familiars) and are parsed in Rust, so Swift, Kotlin, Python and Rust callers see one shape.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// A named agent persona that can be a member of groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct Familiar {
    /// Stable slug chosen by the host: 1–64 characters of `A-Z a-z 0-9 . _ -`.
    pub id: String,
    /// Name shown in the roster and on its replies.
    pub display_name: String,
    /// Harness kind that runs this familiar: `scripted`, `command`, `claude`, `codex`, or the
    /// name of a host harness registered with [`crate::Coven::register_host_harness`].
    pub harness: String,
    /// Model name passed to the harness, when it takes one.
    #[uniffi(default = None)]
    pub model: Option<String>,
    /// Persona text prepended to every prompt this familiar receives.
    #[uniffi(default = None)]
    pub preamble: Option<String>,
    /// Program and arguments for the `command` harness (the program must be allowlisted in
    /// [`Config::allowed_programs`]); empty for every other harness.
    #[uniffi(default = [])]
    pub argv: Vec<String>,
    /// Working directory for process harnesses; must resolve inside the group's project root.
    #[uniffi(default = None)]
    pub cwd: Option<String>,
}

impl Familiar {
    /// A familiar with the given id, display name and harness and nothing else set.
    pub fn new(
        id: impl Into<String>,
        display_name: impl Into<String>,
        harness: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            display_name: display_name.into(),
            harness: harness.into(),
            model: None,
            preamble: None,
            argv: Vec::new(),
            cwd: None,
        }
    }
}

/// One member of a group and the child session that carries its side of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct Member {
    pub familiar_id: String,
    pub session_id: String,
}

/// A group chat: one durable object with one canonical timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct GroupConversation {
    pub id: String,
    pub title: String,
    /// Current members in roster order, each with its child session.
    pub members: Vec<Member>,
    /// Canonical project root (an existing directory) that bounds every process harness's cwd.
    pub project_root: Option<String>,
    pub created_at: SystemTime,
    /// Time of the group's latest committed change (its last activity).
    pub updated_at: SystemTime,
}

impl GroupConversation {
    /// Familiar ids of the current members, in roster order.
    pub fn member_ids(&self) -> Vec<String> {
        self.members.iter().map(|m| m.familiar_id.clone()).collect()
    }

    /// The child session of a current member.
    pub fn session_of(&self, familiar_id: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.familiar_id == familiar_id)
            .map(|m| m.session_id.as_str())
    }
}

/// Who wrote an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, uniffi::Enum)]
pub enum EventKind {
    User,
    Familiar,
    System,
}

/// What a system event records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Enum)]
pub enum SystemNotice {
    Renamed { from: String, to: String },
    MemberAdded { familiar_id: String },
    MemberRemoved { familiar_id: String },
}

/// Why a familiar's reply did not finish normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, uniffi::Enum)]
pub enum ReplyErrorKind {
    /// The harness could not start, exited non-zero, crashed, or produced invalid output.
    Failed,
    /// The harness produced nothing for longer than the configured timeout.
    TimedOut,
    /// The turn was cancelled; the partial text is kept.
    Cancelled,
    /// The process hosting the turn stopped mid-reply; the partial text is kept.
    Interrupted,
}

/// The error marker on a reply that did not finish normally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct ReplyError {
    pub kind: ReplyErrorKind,
    pub message: String,
}

/// One entry of a group's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct GroupEvent {
    pub group_id: String,
    /// Canonical position: contiguous from 1 per group, never reused.
    pub seq: u64,
    /// Rev of the latest committed change to this event.
    pub rev: u64,
    pub kind: EventKind,
    /// The familiar that wrote a `Familiar` event.
    pub familiar_id: Option<String>,
    /// The author of a `User` event, when the host names one.
    pub author: Option<String>,
    /// The turn a user message started or a reply answers.
    pub turn_id: Option<String>,
    pub text: String,
    /// True while a familiar's reply is still arriving.
    pub streaming: bool,
    pub error: Option<ReplyError>,
    pub notice: Option<SystemNotice>,
    pub timestamp: SystemTime,
}

/// Lifecycle of a child session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, uniffi::Enum)]
pub enum SessionStatus {
    /// Ready for its next turn.
    Idle,
    /// A harness run is in progress.
    Running,
    /// The last turn ended in an error; the next turn may run again.
    Failed,
}

/// A member's child session: individually addressable, keeps the harness resume token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct Session {
    pub id: String,
    pub group_id: String,
    pub familiar_id: String,
    pub harness: String,
    pub status: SessionStatus,
    /// The harness's own conversation id (claude session id, codex thread id).
    pub resume_token: Option<String>,
    /// Hidden from the host's lists; reversible with `summon_session`.
    pub archived: bool,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// A group with its whole timeline, as of `rev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct GroupSnapshot {
    pub group: GroupConversation,
    pub events: Vec<GroupEvent>,
    /// The group's latest committed rev this snapshot reflects; follow with changes after it.
    pub rev: u64,
    /// Messages this store sent to the group's home that it has not applied yet (local echoes,
    /// in the order they were sent); empty for a group homed here. See [`PendingMessage`].
    #[uniffi(default = [])]
    pub pending: Vec<PendingMessage>,
}

/// A group with its latest events, as of `rev`: what a client needs to show a thread at once,
/// at a cost that depends on how many events it asks for, not on the length of the history.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct GroupTail {
    pub group: GroupConversation,
    /// The group's latest events (at most the limit asked for), in seq order; replies still
    /// streaming come with their partial text and `streaming = true`.
    pub events: Vec<GroupEvent>,
    /// The group's latest committed rev these events reflect; follow with changes after it.
    pub rev: u64,
    /// Whether events earlier than the first one returned exist; page back with
    /// `events_before(group, events[0].seq, limit)`.
    pub has_earlier: bool,
    /// Local echoes of messages waiting for the group's home, as in [`GroupSnapshot::pending`].
    #[uniffi(default = [])]
    pub pending: Vec<PendingMessage>,
}

/// Where a message sent from a replica stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Enum)]
pub enum SendState {
    /// Waiting in the outbox, or sent and not yet back from the home.
    Pending,
    /// The home refused it (`reason`), or it is stuck behind such a refusal. `retryable` tells
    /// whether sending it again can succeed (a `Conflict` such as a running turn) or not (the
    /// group or a member no longer exists, the input is invalid). The outbox stops here until
    /// the host retries or discards it.
    Failed { reason: String, retryable: bool },
}

/// A local echo: a message a replica sent to its group's home, shown in the replica's timeline
/// before the home has given it a seq. It leaves the timeline in the commit that brings in the
/// home's event for it (a `MessageSent` change naming the same `txn_id`) or when the host
/// discards it (`MessageDiscarded`): never shown twice, never missing in between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct PendingMessage {
    /// The mutation's client transaction id (a UUIDv7).
    pub txn_id: String,
    pub group_id: String,
    pub text: String,
    pub author: Option<String>,
    /// True for `send` (the home starts a turn), false for `append_user_message`.
    pub starts_turn: bool,
    pub state: SendState,
    pub created_at: SystemTime,
}

/// What one committed change did to a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Enum)]
pub enum GroupUpdate {
    /// The group was created (or adopted) with this state.
    GroupCreated { group: GroupConversation },
    /// Title or membership changed; carries the new state.
    GroupChanged { group: GroupConversation },
    /// An event joined the timeline (a user message, a system event, or a reply's first output).
    EventAppended { event: GroupEvent },
    /// More text streamed into a reply.
    ReplyDelta {
        seq: u64,
        familiar_id: String,
        text: String,
    },
    /// A reply finished (normally or with its error marker); carries the final event.
    ReplyFinished { event: GroupEvent },
    /// A child session changed (status, resume token, archived flag).
    SessionChanged { session: Session },
    /// A child session was permanently deleted.
    SessionSacrificed { session_id: String },
    /// The group was deleted; nothing follows.
    GroupDeleted,
    /// A replica's copy of the group was replaced by the home's state (a snapshot): this is the
    /// group, its whole timeline and its local echoes as of this change's rev. A reader drops
    /// what it holds of the group and continues with the changes after this rev. A replica's
    /// log starts with one; reading a replica's log from before its latest one yields the
    /// group's current state at the latest rev instead (never a gap, never a duplicate).
    GroupReset {
        group: GroupConversation,
        events: Vec<GroupEvent>,
        pending: Vec<PendingMessage>,
    },
    /// A local echo joined the replica's timeline, or its send state changed.
    MessagePending { message: PendingMessage },
    /// The home applied a local echo's message: this event (appended at its seq) replaces the
    /// echo `txn_id`, in one change.
    MessageSent { txn_id: String, event: GroupEvent },
    /// The host discarded a local echo's message from the outbox; it was never applied.
    MessageDiscarded { txn_id: String },
}

/// One committed change, in rev order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct GroupChange {
    pub group_id: String,
    pub rev: u64,
    pub update: GroupUpdate,
}

/// Who wrote a message in a session's pre-existing history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum HistoryRole {
    User,
    Familiar,
}

/// One message of a session's history, as the host kept it before adoption.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HistoryMessage {
    pub role: HistoryRole,
    pub text: String,
    pub timestamp: SystemTime,
    #[uniffi(default = None)]
    pub author: Option<String>,
}

/// One existing session to wrap into an adopted group.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AdoptedMember {
    pub familiar_id: String,
    /// The existing session's id (a UUID); it is reused, not copied.
    pub session_id: String,
    pub history: Vec<HistoryMessage>,
}

/// How a store behaves. `Config::default()` is durable with sensible limits.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Config {
    /// Acknowledge a write only after an fsync'd commit (the default). When false, a write is
    /// acknowledged once committed in memory and the store makes a durable commit at most
    /// [`Config::checkpoint_interval_ms`] after the first commit that is not yet durable, and
    /// when it closes: a process crash or power loss then loses at most the writes
    /// acknowledged in the last `checkpoint_interval_ms` (plus the time one commit takes),
    /// never the order or contiguity of what survives.
    #[uniffi(default = true)]
    pub durable: bool,
    /// With `durable: false`, the longest an acknowledged write stays in memory only before a
    /// durable commit covers it; ignored when `durable` is true. A store that stops writing
    /// makes one durable commit at the end of the interval and then sleeps. Default 1000 ms;
    /// must be at least 1.
    #[uniffi(default = 1000)]
    pub checkpoint_interval_ms: u64,
    /// The longest what harnesses stream (a reply's first output, its deltas, how it ended) waits
    /// for a commit: the output of every running member that reaches the writer within this
    /// window is committed together, in one commit (one fsync when durable) instead of one per
    /// token. An operation a caller waits on (a message, a membership change, a rename, a
    /// cursor, ...) is committed at once and takes the waiting output with it. Nothing reaches
    /// a listener before its commit, so streamed text reaches listeners up to this much later;
    /// a reply's seq is still claimed in the order its first output reached the store, and
    /// `close()` commits whatever is waiting. 0 commits output as soon as the writer is free
    /// (one commit per burst). Default 100 ms; at most 60,000.
    #[uniffi(default = 100)]
    pub stream_commit_interval_ms: u64,
    /// Largest number of member runs executing at once across the store.
    #[uniffi(default = 8)]
    pub max_concurrent_runs: u32,
    /// A member that produces no output for this long is stopped and marked timed out.
    #[uniffi(default = 300000)]
    pub silence_timeout_ms: u64,
    /// How long the library waits for host or harness code to return after asking it to stop:
    /// a harness after a cancel, a silence timeout or an oversized reply; a listener or a
    /// harness while [`crate::Coven::close`] or [`crate::Subscription::cancel`] runs. Past it the
    /// library goes on without that code (its reply ends with what it had streamed, and later
    /// output is dropped), so a turn's lock, a cancel and a close are held at most this long by
    /// code that ignores the stop. Process harnesses are killed at once and never wait for it.
    /// Default 5000 ms; 0 does not wait at all.
    #[uniffi(default = 5000)]
    pub stop_grace_ms: u64,
    /// Delay between the words a `scripted` familiar streams.
    #[uniffi(default = 0)]
    pub scripted_delay_ms: u64,
    /// Programs (bare names or absolute paths) the `command` harness may run.
    #[uniffi(default = [])]
    pub allowed_programs: Vec<String>,
    /// As a home: a replica further behind a group than this many changes is sent the group's
    /// snapshot instead of its changes (a replica new to a group always is). Default 20,000.
    #[uniffi(default = 20000)]
    pub sync_snapshot_after_changes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            durable: true,
            checkpoint_interval_ms: 1000,
            stream_commit_interval_ms: 100,
            max_concurrent_runs: 8,
            silence_timeout_ms: 300_000,
            stop_grace_ms: 5_000,
            scripted_delay_ms: 0,
            allowed_programs: Vec::new(),
            sync_snapshot_after_changes: 20_000,
        }
    }
}

impl Config {
    pub(crate) fn silence_timeout(&self) -> Duration {
        Duration::from_millis(self.silence_timeout_ms)
    }

    pub(crate) fn stop_grace(&self) -> Duration {
        Duration::from_millis(self.stop_grace_ms)
    }

    pub(crate) fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoint_interval_ms)
    }

    pub(crate) fn stream_commit_interval(&self) -> Duration {
        Duration::from_millis(self.stream_commit_interval_ms)
    }
}

/// What opening a store repaired after a crash.
#[derive(Debug, Default, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Recovery {
    /// Replies left streaming (or never started) that were marked interrupted.
    pub interrupted_replies: u64,
    /// Sessions left running that were marked failed.
    pub failed_sessions: u64,
    /// Turn locks released.
    pub released_turns: u64,
    /// Processes of harness runs the previous host left running (it died before they ended)
    /// that were killed: those of the same boot that carry their run's marker and are still in
    /// its process group (Linux; 0 elsewhere).
    #[uniffi(default = 0)]
    pub stopped_processes: u64,
}

/// A started turn: its id and the user's persisted message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TurnHandle {
    pub turn_id: String,
    pub user_event: GroupEvent,
}

/// What kind of inconsistency [`crate::Coven::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, uniffi::Enum)]
pub enum IntegrityProblemKind {
    /// The schema version is missing or not one this release reads.
    Schema,
    /// A stored value cannot be decoded, or its key and its content disagree.
    CorruptRecord,
    /// A group's events are not exactly seq 1..=head.
    SeqNotContiguous,
    /// A group's change log is not exactly rev 1..=head, or a change disagrees with the events
    /// (a change naming a missing event, an event whose rev is not its latest change's, an
    /// event whose text is not what its changes streamed).
    RevIndex,
    /// A member does not have exactly one session of its own (missing, shared, of another group
    /// or another familiar, absent from the group's session index).
    MemberSession,
    /// A record refers to a group, session or event that does not exist.
    Dangling,
    /// A reply is streaming, or has streamed text, without a running turn waiting for it.
    StreamingWithoutTurn,
    /// A session is running without a running turn waiting for its member.
    RunningWithoutTurn,
    /// A turn lock disagrees with the timeline or the membership.
    TurnLock,
    /// A consumer cursor points beyond its group's latest rev.
    CursorBeyondHead,
}

/// One inconsistency found by [`crate::Coven::check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct IntegrityProblem {
    /// The group concerned, when there is one.
    pub group_id: Option<String>,
    pub kind: IntegrityProblemKind,
    /// What exactly is wrong, naming the seq, rev, session or key.
    pub detail: String,
}

/// What [`crate::Coven::check`] verified, and every inconsistency it found, as of one commit.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct IntegrityReport {
    /// Inconsistencies found; empty for a healthy store. At most
    /// [`crate::MAX_INTEGRITY_PROBLEMS`] are listed.
    pub problems: Vec<IntegrityProblem>,
    /// Problems found beyond the listed ones.
    pub problems_omitted: u64,
    pub familiars: u64,
    pub groups: u64,
    pub events: u64,
    pub changes: u64,
    pub sessions: u64,
    pub cursors: u64,
    /// Turn locks held (turns running) at the checked commit.
    pub running_turns: u64,
    /// Replies still streaming at the checked commit.
    pub streaming_replies: u64,
    /// Sessions running at the checked commit.
    pub running_sessions: u64,
}

impl IntegrityReport {
    /// True when no inconsistency was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.problems_omitted == 0
    }

    /// True when the store is consistent and nothing is running or streaming: the state a store
    /// is in after opening, or once every turn has ended.
    pub fn is_clean_and_idle(&self) -> bool {
        self.is_clean()
            && self.running_turns == 0
            && self.streaming_replies == 0
            && self.running_sessions == 0
    }

    /// The problems of one kind.
    pub fn of_kind(&self, kind: IntegrityProblemKind) -> Vec<&IntegrityProblem> {
        self.problems.iter().filter(|p| p.kind == kind).collect()
    }
}

/// Most problems an [`IntegrityReport`] lists; the rest are only counted.
pub const MAX_INTEGRITY_PROBLEMS: usize = 1000;
