//! The `Coven` handle: every public operation. Calls check their arguments here, on the caller's
//! thread, then either read in a read transaction or queue one operation for the writer and wait
//! for its commit.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::adopt;
use crate::error::{Error, Result};
use crate::fanout::Fanout;
use crate::guard;
use crate::harness::registry::Harnesses;
use crate::harness::{self, Harness};
use crate::host::Origin;
use crate::hub::{GroupListener, Hub, Subscription};
use crate::ids;
use crate::model::{
    AdoptedMember, Config, Familiar, GroupChange, GroupConversation, GroupEvent, GroupSnapshot,
    GroupTail, Recovery, Session, TurnHandle,
};
use crate::store::batch::Batch;
use crate::store::ops::{NewEvent, NewGroup};
use crate::store::writer::{SyncPolicy, Writer, WriterHandle};
use crate::store::{self, ReadGate, Reader};
use crate::validate;

/// An open store. `Send + Sync`: share it behind an `Arc` and call it from any thread.
#[derive(uniffi::Object)]
pub struct Coven {
    /// Every read goes through it; closing it releases the file for another open.
    reads: Arc<ReadGate>,
    writer: WriterHandle,
    /// The writer thread, until closed.
    writer_thread: Mutex<Option<Writer>>,
    pub(crate) fanout: Fanout,
    /// Every harness by kind name: the built-ins, then whatever the host registers.
    pub(crate) harnesses: Harnesses,
    /// This store's id (see `Coven::store_id`).
    pub(crate) store_id: u128,
    hub: Arc<Hub>,
    config: Config,
    recovery: Recovery,
    closed: AtomicBool,
}

impl Coven {
    /// Opens the store at `path`, creating it (readable by its owner only) if it does not exist.
    /// A second open of the same file in one process is refused with `Conflict`.
    ///
    /// Creation is atomic: the store is built and synced in a temporary file beside `path`,
    /// then renamed into place with a rename that never replaces an existing file, so the path
    /// holds either nothing or a complete store whenever a crash or power loss hits. Of two
    /// processes creating one path at once, one store wins and the other open opens it (and
    /// gets `Conflict` while the winner holds it). A zero-length file at `path`, which earlier
    /// releases left when their first open was interrupted, holds no data and is replaced by a
    /// new store the same way. A temporary file a crash left behind blocks nothing; the next
    /// creation of the same path removes it.
    ///
    /// A file that is not a store, is damaged, or holds a newer schema is refused with `Storage`
    /// (never a panic, even where the storage engine panics on the damage) and left
    /// byte-for-byte as it was: what opening writes (redb's repair, the schema record, the
    /// recovery pass) is held in memory and reaches the file only once the whole open has
    /// succeeded.
    pub fn open(path: impl AsRef<Path>, config: Config) -> Result<Self> {
        // A refused configuration must not create (or write to) the file.
        check_config(&config)?;
        Self::start(store::open_file(path.as_ref())?, config)
    }

    /// [`Coven::open`] with redb's page cache limited to `cache_bytes` instead of the store's
    /// default of 64 MiB. For tests that measure the library's own memory (`testing` feature);
    /// not part of the bindings.
    #[cfg(feature = "testing")]
    pub fn open_with_cache(
        path: impl AsRef<Path>,
        cache_bytes: usize,
        config: Config,
    ) -> Result<Self> {
        check_config(&config)?;
        Self::start(
            store::open_file_with_cache(path.as_ref(), Some(cache_bytes))?,
            config,
        )
    }

    /// Opens a store on a caller-supplied redb storage backend. For tests that inject storage
    /// faults or count what reaches the disk (`testing` feature); not part of the bindings.
    #[cfg(feature = "testing")]
    pub fn open_with_backend(backend: impl redb::StorageBackend, config: Config) -> Result<Self> {
        Self::start(store::open_backend(backend)?, config)
    }

    /// Starts the library's threads on an opened store. The recovery pass runs first; only when
    /// it succeeds does anything opening wrote reach an existing file ([`store::HeldWrites`]),
    /// so a store refused here is left as it was.
    fn start(opened: store::Opened, config: Config) -> Result<Self> {
        check_config(&config)?;
        // A refused store is torn down (writer stopped, database dropped) inside the guard too:
        // redb can panic while it drops a damaged store.
        store::contain_panic("opening the store", move || {
            Self::start_threads(opened, config)
        })
    }

    fn start_threads(opened: store::Opened, config: Config) -> Result<Self> {
        let store::Opened { db, held } = opened;
        let db = Arc::new(db);
        let hub = Arc::new(Hub::new(config.stop_grace()));
        let policy = if config.durable {
            SyncPolicy::EveryCommit
        } else {
            SyncPolicy::Within(config.checkpoint_interval())
        };
        let writer_thread = Writer::start(
            db.clone(),
            policy,
            config.stream_commit_interval(),
            hub.clone(),
        )?;
        let writer = writer_thread.handle();
        // The writer holds the other reference, and is joined before the gate closes.
        let reads = ReadGate::new(db);
        // Repair whatever a previous process left running before anything else is served.
        // The writer can only be gone here if reading the store killed it (redb panicked outside
        // an operation), which a damaged file does.
        let recovery = writer
            .call(|batch| batch.recover(harness::process::stop_leftovers))
            .map_err(|err| match err {
                Error::Closed => Error::storage(
                    "the recovery pass stopped while reading the store: it is damaged",
                ),
                other => other,
            })?;
        held.confirm()?;
        let store_id = reads.read(|reader| reader.store_id())?;
        tracing::info!(
            durable = config.durable,
            interrupted_replies = recovery.interrupted_replies,
            failed_sessions = recovery.failed_sessions,
            released_turns = recovery.released_turns,
            stopped_processes = recovery.stopped_processes,
            "store opened"
        );
        let fanout = Fanout::start(
            writer.clone(),
            config.max_concurrent_runs,
            config.silence_timeout(),
            config.stop_grace(),
        )?;
        Ok(Self {
            reads,
            writer,
            writer_thread: Mutex::new(Some(writer_thread)),
            fanout,
            harnesses: Harnesses::new(&config),
            store_id,
            hub,
            config,
            recovery,
            closed: AtomicBool::new(false),
        })
    }

    /// The configuration this store was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs one read through the gate (`Closed` once [`Coven::close`] has reached it), with a
    /// panic of the storage engine on a damaged file answered as `Storage`.
    pub(crate) fn read<T>(&self, body: impl FnOnce(&Reader) -> Result<T>) -> Result<T> {
        self.reads.read(body)
    }

    /// A page of one group's records: the group id parsed and the page limit checked first.
    fn read_page<T>(
        &self,
        group_id: &str,
        limit: u32,
        page: impl FnOnce(&Reader, u128) -> Result<T>,
    ) -> Result<T> {
        let group = ids::parse("group_id", group_id)?;
        validate::limit(limit)?;
        self.read(|reader| page(reader, group))
    }

    /// Queues one operation for the writer and waits until its batch has committed.
    pub(crate) fn write<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T> + Send + 'static,
    {
        self.ensure_open()?;
        self.writer.call(op)
    }

    /// [`Coven::write`] of an operation on a group homed here: on a replica group it is refused
    /// (`Conflict` naming the group's home) in the operation's batch.
    fn write_homed<T, F>(&self, group: u128, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T> + Send + 'static,
    {
        self.write(move |batch| {
            batch.ensure_homed_here(group)?;
            op(batch)
        })
    }

    /// `Closed` once [`Coven::close`] ran: the one check of it (the read gate and the writer
    /// also answer `Closed` to calls that race the close).
    pub(crate) fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

/// Callbacks implemented in Rust. The bindings' variants of these two (same names in Swift,
/// Kotlin and Python) take callbacks whose runtime may end the thread that calls them.
impl Coven {
    /// Registers a harness under a kind name familiars can use. A panic in it fails only its
    /// member's reply.
    pub fn register_host_harness(&self, name: &str, harness: Arc<dyn Harness>) -> Result<()> {
        self.register_harness(name, harness, Origin::Rust)
    }

    /// Delivers every change committed after `after_rev` to `listener`, exactly once and in rev
    /// order: first the backlog from the store, then live, with no gap or duplicate at the
    /// hand-off. Live, every delta arrives as it commits; what is read from the store follows
    /// [`Coven::changes_since`]'s rule for a finished reply's deltas (one change, or none from
    /// inside them, its finish carrying the whole reply). Delivery runs on the subscription's own
    /// thread; `cancel()` or dropping the
    /// returned handle stops it. Deleting the group ends it with a final `GroupDeleted`. A panic
    /// in the listener is caught and delivery goes on with the next batch.
    pub fn subscribe(
        &self,
        group_id: &str,
        after_rev: u64,
        listener: Arc<dyn GroupListener>,
    ) -> Result<Arc<Subscription>> {
        self.subscribe_listener(group_id, after_rev, listener, Origin::Rust)
    }

    fn register_harness(
        &self,
        name: &str,
        harness: Arc<dyn Harness>,
        origin: Origin,
    ) -> Result<()> {
        Harnesses::check_name(name)?;
        self.ensure_open()?;
        self.harnesses.insert(name, harness, origin);
        Ok(())
    }

    fn subscribe_listener(
        &self,
        group_id: &str,
        after_rev: u64,
        listener: Arc<dyn GroupListener>,
        origin: Origin,
    ) -> Result<Arc<Subscription>> {
        let group = ids::parse("group_id", group_id)?;
        self.ensure_open()?;
        self.read(|reader| reader.head_covering(group, after_rev))?;
        self.hub
            .subscribe(self.reads.clone(), group, after_rev, listener, origin)
    }
}

/// The exported surface: every operation below is also what Swift, Kotlin and Python call.
#[uniffi::export]
impl Coven {
    /// [`Coven::open`] with the path as a string; the `open` constructor of the bindings.
    #[uniffi::constructor(name = "open")]
    pub fn open_path(path: String, config: Config) -> Result<Self> {
        Self::open(path, config)
    }

    /// A store that lives in memory and disappears when closed.
    #[uniffi::constructor]
    pub fn open_in_memory(config: Config) -> Result<Self> {
        Self::start(store::open_memory()?, config)
    }

    /// What opening repaired: replies a crash left streaming, sessions left running, turn locks.
    pub fn recovery(&self) -> Recovery {
        self.recovery.clone()
    }

    /// Cancels every turn, finishes every queued write, stops the library's threads and releases
    /// the file: when it returns, the same file can be opened again at once. Reads in flight
    /// finish first (they run no host code, so that wait is bounded by the longest read); calls
    /// that race the close are answered `Closed` (or, if they were applied before it, with their
    /// result), and none waits forever. Later calls return `Closed`. Closing twice is harmless.
    /// A store opened with `durable: false` makes everything committed durable before it returns.
    ///
    /// It may be called from any thread, a listener or a harness included (it never waits for
    /// the thread that calls it). A harness or listener that does not return once asked to stop
    /// is waited for at most `Config::stop_grace_ms`, then left behind: its reply ends cancelled
    /// with the text it had streamed, and its later output is dropped.
    pub fn close(&self) {
        let closing_started = std::time::Instant::now();
        let already_closed = self.closed.swap(true, Ordering::SeqCst);
        // The workers wait for how their replies ended to commit: not for the streaming window.
        self.writer.flush_streams();
        // Running turns end as cancelled and their outcomes commit before the writer stops.
        self.fanout.shutdown();
        self.hub.close();
        if let Some(mut writer) = self.writer_thread.lock().take() {
            writer.shutdown();
        }
        self.reads.close();
        if !already_closed {
            let duration_ms = closing_started.elapsed().as_millis() as u64;
            tracing::info!(duration_ms, "store closed");
        }
    }

    // ---- familiars ----

    /// Registers a familiar, or updates one registered with the same harness.
    pub fn register_familiar(&self, familiar: Familiar) -> Result<Familiar> {
        validate::familiar(&familiar)?;
        self.harnesses.check_familiar(&familiar)?;
        self.write(move |batch| batch.register_familiar(familiar))
    }

    pub fn get_familiar(&self, familiar_id: &str) -> Result<Familiar> {
        validate::familiar_id("familiar_id", familiar_id)?;
        self.read(|reader| reader.familiar(familiar_id))?
            .ok_or_else(|| Error::not_found("familiar", familiar_id))
    }

    /// Every registered familiar, ordered by id.
    pub fn list_familiars(&self) -> Result<Vec<Familiar>> {
        self.read(|reader| reader.familiars())
    }

    // ---- groups ----

    /// Creates a group with one child session per member. `project_root`, when given, must be an
    /// existing directory; it is stored canonicalized and bounds every process harness's cwd.
    pub fn create_group(
        &self,
        title: Option<String>,
        member_ids: Vec<String>,
        project_root: Option<String>,
    ) -> Result<GroupConversation> {
        if let Some(title) = &title {
            validate::title(title)?;
        }
        validate::members("member_ids", &member_ids)?;
        let project_root = project_root
            .map(|root| guard::canonical_root(&root))
            .transpose()?;
        let new = NewGroup {
            id: ids::new_id(),
            title,
            members: member_ids
                .into_iter()
                .map(|id| (id, ids::new_id()))
                .collect(),
            project_root,
        };
        self.write(move |batch| batch.create_group(new))
    }

    /// Every group, most recently active first.
    pub fn list_groups(&self) -> Result<Vec<GroupConversation>> {
        self.read(|reader| reader.groups())
    }

    /// The group, its whole timeline in seq order, and the rev it reflects. Safe at any time:
    /// replies still streaming come with their partial text and `streaming = true`.
    pub fn get_group(&self, group_id: &str) -> Result<GroupSnapshot> {
        let group = ids::parse("group_id", group_id)?;
        self.read(|reader| reader.snapshot(group))
    }

    /// The group, its latest `limit` events in seq order, the rev they reflect and whether
    /// earlier events exist, from one consistent read: what a client shows when it opens a
    /// thread. Reads O(`limit`) events whatever the length of the history (unlike
    /// [`Coven::get_group`], which reads the whole timeline). Follow it with changes after `rev`
    /// and page back with [`Coven::events_before`]. `limit` is 1..=`MAX_PAGE`.
    pub fn get_group_tail(&self, group_id: &str, limit: u32) -> Result<GroupTail> {
        self.read_page(group_id, limit, |reader, group| reader.tail(group, limit))
    }

    /// Up to `limit` events with seq less than `before_seq`: the latest of them, in seq order
    /// (scrolling a thread back from its earliest shown event). Empty when `before_seq` is 0 or
    /// 1; `before_seq` may be at most the group's latest seq + 1 (which pages back from the end),
    /// and `limit` is 1..=`MAX_PAGE`.
    pub fn events_before(
        &self,
        group_id: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<Vec<GroupEvent>> {
        self.read_page(group_id, limit, |reader, group| {
            reader.events_before(group, before_seq, limit)
        })
    }

    /// Up to `limit` events with seq greater than `after_seq`.
    pub fn events_since(
        &self,
        group_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<GroupEvent>> {
        self.read_page(group_id, limit, |reader, group| {
            reader.events(group, after_seq, limit)
        })
    }

    /// Up to `limit` committed changes with rev greater than `after_rev`, in rev order. Revs rise
    /// but may skip: once a reply finishes, its deltas are one change at the first delta's rev,
    /// carrying all their text. Read from before that rev, it is one `ReplyDelta`; read from a
    /// rev inside them, the reply's `ReplyFinished` that follows carries the finished reply whole.
    /// Either way nothing is missing and nothing comes twice; resume from the last rev read.
    pub fn changes_since(
        &self,
        group_id: &str,
        after_rev: u64,
        limit: u32,
    ) -> Result<Vec<GroupChange>> {
        self.read_page(group_id, limit, |reader, group| {
            reader.changes(group, after_rev, limit)
        })
    }

    /// Renames the group; the rename is a system event in the timeline.
    pub fn rename_group(&self, group_id: &str, title: String) -> Result<GroupConversation> {
        let group = ids::parse("group_id", group_id)?;
        validate::title(&title)?;
        self.write_homed(group, move |batch| batch.rename_group(group, title))
    }

    /// Adds a member with a new child session; a system event records it.
    pub fn add_member(&self, group_id: &str, familiar_id: &str) -> Result<GroupConversation> {
        let group = ids::parse("group_id", group_id)?;
        validate::familiar_id("familiar_id", familiar_id)?;
        let familiar_id = familiar_id.to_owned();
        self.write_homed(group, move |batch| batch.add_member(group, familiar_id))
    }

    /// Removes a member and archives its session; its earlier events stay in the timeline.
    pub fn remove_member(&self, group_id: &str, familiar_id: &str) -> Result<GroupConversation> {
        let group = ids::parse("group_id", group_id)?;
        validate::familiar_id("familiar_id", familiar_id)?;
        let familiar_id = familiar_id.to_owned();
        self.write_homed(group, move |batch| batch.remove_member(group, familiar_id))
    }

    /// Deletes the group, its timeline, its change log, its cursors and its child sessions.
    pub fn delete_group(&self, group_id: &str) -> Result<()> {
        let group = ids::parse("group_id", group_id)?;
        self.write_homed(group, move |batch| batch.delete_group(group))
    }

    /// Appends a user message without starting a turn; returns the persisted event.
    pub fn append_user_message(
        &self,
        group_id: &str,
        text: String,
        author: Option<String>,
    ) -> Result<GroupEvent> {
        let group = ids::parse("group_id", group_id)?;
        validate::text("text", &text)?;
        validate::author(author.as_deref())?;
        self.write_homed(group, move |batch| {
            batch.append(group, NewEvent::user(text, author, None))
        })
    }

    /// Wraps existing sessions (their ids reused) in a new group whose timeline interleaves
    /// their histories by the rule documented in [`crate::adopt`].
    pub fn adopt_group(
        &self,
        title: Option<String>,
        members: Vec<AdoptedMember>,
    ) -> Result<GroupConversation> {
        if let Some(title) = &title {
            validate::title(title)?;
        }
        validate::adoption(&members)?;
        let (new, timeline) = adopt::plan(title, &members)?;
        self.write(move |batch| batch.adopt_group(new, timeline))
    }

    // ---- sessions ----

    pub fn get_session(&self, session_id: &str) -> Result<Session> {
        let session = ids::parse("session_id", session_id)?;
        self.read(|reader| reader.session(session))
    }

    /// Every session of a group, archived ones included.
    pub fn sessions_of(&self, group_id: &str) -> Result<Vec<Session>> {
        let group = ids::parse("group_id", group_id)?;
        self.read(|reader| reader.sessions_of(group))
    }

    /// Hides a session from the host's lists (reversible with [`Coven::summon_session`]).
    pub fn archive_session(&self, session_id: &str) -> Result<Session> {
        let session = ids::parse("session_id", session_id)?;
        self.write(move |batch| batch.set_archived(session, true))
    }

    /// Restores an archived session.
    pub fn summon_session(&self, session_id: &str) -> Result<Session> {
        let session = ids::parse("session_id", session_id)?;
        self.write(move |batch| batch.set_archived(session, false))
    }

    /// Permanently deletes a session that is neither running nor a current member's. The
    /// timeline keeps the member's events.
    pub fn sacrifice_session(&self, session_id: &str) -> Result<()> {
        let session = ids::parse("session_id", session_id)?;
        self.write(move |batch| batch.sacrifice_session(session))
    }

    // ---- turns ----

    /// Appends the user's message (it claims its seq), takes the group's turn lock and fans the
    /// message out to every member on the worker pool. Returns at once; replies stream into the
    /// timeline as they arrive. Refused with `Conflict` while the group's previous turn runs.
    pub fn send(&self, group_id: &str, text: String, author: Option<String>) -> Result<TurnHandle> {
        let group = ids::parse("group_id", group_id)?;
        validate::text("text", &text)?;
        validate::author(author.as_deref())?;
        let turn = ids::new_id();
        let start = self.write_homed(group, move |batch| {
            batch.start_turn(group, turn, text, author)
        })?;
        let handle = TurnHandle {
            turn_id: ids::to_string(turn),
            user_event: start.user_event.clone(),
        };
        self.fanout.dispatch(turn, group, start, &self.harnesses);
        Ok(handle)
    }

    /// Waits until every member's reply to the turn has been committed. `Ok(false)` when the
    /// timeout passes first; `Storage` (or `Closed`) when the turn ended but the store could not
    /// save how a reply ended. Turns started by this handle are known (the last 4096 finished).
    pub fn wait_turn(&self, turn_id: &str, timeout: Duration) -> Result<bool> {
        let turn = ids::parse("turn_id", turn_id)?;
        self.ensure_open()?;
        self.fanout.wait(turn, timeout)
    }

    /// Cancels the group's running turn: every run is stopped (process groups killed and
    /// reaped) and each reply keeps its partial text, marked cancelled. Returns the turn id.
    pub fn cancel_turn(&self, group_id: &str) -> Result<String> {
        let group = ids::parse("group_id", group_id)?;
        self.ensure_open()?;
        if let Some(replica) = self.read(|reader| reader.replica(group))? {
            return Err(store::sync::homed_elsewhere(group, replica.home));
        }
        self.fanout.cancel(group).map(ids::to_string)
    }

    /// Registers a harness implemented by the host under a kind name familiars can use. It
    /// runs on a thread of the library's that its runtime may end (Python does at interpreter
    /// exit); the member's reply then fails, and the store stays consistent.
    #[doc(hidden)]
    #[uniffi::method(name = "register_host_harness")]
    pub fn register_foreign_harness(&self, name: &str, harness: Arc<dyn Harness>) -> Result<()> {
        self.register_harness(name, harness, Origin::Foreign)
    }

    // ---- subscriptions and pull clients ----

    /// [`Coven::subscribe`] for the bindings, where releasing the returned handle stops delivery
    /// and the listener's runtime may end the delivery thread (Python does at interpreter exit),
    /// so a listener's panic is not caught on its way through.
    #[doc(hidden)]
    #[uniffi::method(name = "subscribe")]
    pub fn subscribe_foreign(
        &self,
        group_id: &str,
        after_rev: u64,
        listener: Arc<dyn GroupListener>,
    ) -> Result<Arc<Subscription>> {
        self.subscribe_listener(group_id, after_rev, listener, Origin::Foreign)
    }

    /// Long-poll: the changes after `after_rev` (up to `limit`) as soon as there are any, or an
    /// empty page once `timeout` passes. Woken by the writer's publish, never by polling.
    pub fn wait_for_changes(
        &self,
        group_id: &str,
        after_rev: u64,
        limit: u32,
        timeout: Duration,
    ) -> Result<Vec<GroupChange>> {
        let group = ids::parse("group_id", group_id)?;
        validate::limit(limit)?;
        self.hub
            .wait_for_changes(&self.reads, group, after_rev, limit, timeout)
    }

    /// Durably records the rev a named consumer (a device, a view) has processed.
    pub fn set_cursor(&self, group_id: &str, consumer: &str, rev: u64) -> Result<()> {
        let group = ids::parse("group_id", group_id)?;
        validate::consumer(consumer)?;
        let consumer = consumer.to_owned();
        self.write(move |batch| batch.set_cursor(group, consumer, rev))
    }

    /// The rev a named consumer last recorded, if any.
    pub fn get_cursor(&self, group_id: &str, consumer: &str) -> Result<Option<u64>> {
        let group = ids::parse("group_id", group_id)?;
        validate::consumer(consumer)?;
        self.read(|reader| reader.cursor(group, consumer))
    }
}

/// Refuses a configuration the store cannot run with, before anything is opened.
fn check_config(config: &Config) -> Result<()> {
    if config.max_concurrent_runs == 0 {
        return Err(Error::invalid(
            "config.max_concurrent_runs",
            "must be at least 1",
        ));
    }
    if config.silence_timeout_ms == 0 {
        return Err(Error::invalid(
            "config.silence_timeout_ms",
            "must be at least 1",
        ));
    }
    if config.checkpoint_interval_ms == 0 {
        return Err(Error::invalid(
            "config.checkpoint_interval_ms",
            "must be at least 1",
        ));
    }
    if config.stream_commit_interval_ms > MAX_STREAM_COMMIT_INTERVAL_MS {
        return Err(Error::invalid(
            "config.stream_commit_interval_ms",
            format!("must be at most {MAX_STREAM_COMMIT_INTERVAL_MS}"),
        ));
    }
    Ok(())
}

/// Longest streaming window a store accepts: a reply's end waits for it, so it bounds how long
/// a turn, a cancel and a close wait for the commit of what was streamed.
const MAX_STREAM_COMMIT_INTERVAL_MS: u64 = 60_000;

impl Drop for Coven {
    fn drop(&mut self) {
        self.close();
    }
}
