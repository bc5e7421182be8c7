//! The redb store: schema, reads on the caller's thread, and (in [`writer`]) the one thread that
//! writes.

pub mod batch;
pub mod check;
pub mod codec;
mod contain;
mod create;
mod migrate;
pub mod ops;
pub mod records;
pub mod runs;
mod staged;
pub mod sync;
pub mod tables;
pub mod turns;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use redb::{
    backends::{FileBackend, InMemoryBackend},
    Database, ReadTransaction, ReadableDatabase, ReadableTable,
};

use crate::error::{Error, Result};
use crate::ids;
use crate::model::{
    Familiar, GroupChange, GroupConversation, GroupEvent, GroupSnapshot, GroupTail, GroupUpdate,
    Session,
};
pub use contain::contain_panic;
use create::{AtPath, Placement, Temporary};
use staged::StagedWrites;
use tables::*;

/// redb's page cache (reads and the write buffer) for a store opened without an explicit size.
/// redb's own default is 1 GiB, which an embedded library would grow into as the store grows; 64
/// MiB keeps a process's memory bounded while a hot group's pages stay cached.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// How many times an open looks at the path again after another process created or replaced the
/// file under it. Each retry means another process won a creation, so this is never reached
/// unless something keeps creating and removing the file.
const OPEN_ROUNDS: usize = 8;

/// A store just opened. Writes to an existing file are held in memory until
/// [`HeldWrites::confirm`] (see [`staged`]), so an open refused before that leaves the file
/// exactly as it was.
pub struct Opened {
    pub db: Database,
    pub held: HeldWrites,
}

impl Opened {
    fn ready(db: Database) -> Self {
        Self {
            db,
            held: HeldWrites(None),
        }
    }
}

/// What opening an existing file wrote, not yet on the file.
pub struct HeldWrites(Option<StagedWrites>);

impl HeldWrites {
    /// Puts what opening wrote on the file; from then on writes go straight to it. Call it once
    /// everything that belongs to opening (the recovery pass included) has succeeded.
    pub fn confirm(self) -> Result<()> {
        self.0.map_or(Ok(()), |staged| staged.persist())
    }
}

/// Opens (creating if needed) a store file and brings its schema up to date.
pub fn open_file(path: &Path) -> Result<Opened> {
    open_file_with_cache(path, None)
}

/// [`open_file`] with redb's page cache limited to `cache_bytes` ([`DEFAULT_CACHE_BYTES`] when
/// `None`).
///
/// A missing path (or a zero-length file, which only an interrupted first open of an earlier
/// release leaves) gets a new store created atomically, owner-only (see [`create`]). An existing
/// file is opened with its writes held until [`HeldWrites::confirm`]; a file redb cannot read, a
/// damaged one (even one that makes redb panic) or one of a newer schema is refused with
/// `Storage` and left byte-for-byte as it was.
pub fn open_file_with_cache(path: &Path, cache_bytes: Option<usize>) -> Result<Opened> {
    let cache_bytes = cache_bytes.unwrap_or(DEFAULT_CACHE_BYTES);
    let path = &create::follow_links(path)?;
    for _ in 0..OPEN_ROUNDS {
        let placement = match create::at_path(path)? {
            AtPath::Existing(file) => return open_existing(path, file, cache_bytes),
            AtPath::Missing => None,
            AtPath::Empty(empty) => {
                if !create::lock_empty(&empty, path)? {
                    return Err(Error::conflict(format!(
                        "another open is creating the store file {} over the empty file there",
                        path.display()
                    )));
                }
                Some(empty)
            }
        };
        let placement = match &placement {
            None => Placement::IfAbsent,
            Some(empty) => Placement::OverEmpty(empty),
        };
        if let Some(db) = create_new(path, placement, cache_bytes)? {
            return Ok(Opened::ready(db));
        }
        // Another process created the store first: open theirs.
    }
    Err(Error::conflict(format!(
        "the store file {} was created or replaced by another process {OPEN_ROUNDS} times while \
         this open looked at it",
        path.display()
    )))
}

/// Builds a new store in a temporary file beside `path` and moves it into place; `None` when
/// another process's store took the path first (this one is then discarded).
fn create_new(
    path: &Path,
    placement: Placement<'_>,
    cache_bytes: usize,
) -> Result<Option<Database>> {
    let (mut temporary, file) = Temporary::create(path)?;
    // The schema's commit is durable: the file's content is synced before it takes the path.
    let db = contain_panic("creating the store", || {
        let backend = FileBackend::new(file)?;
        let db = database_builder(cache_bytes).create_with_backend(backend)?;
        init_schema(&db)?;
        Ok(db)
    })?;
    match temporary.place(path, placement)? {
        Ok(()) => Ok(Some(db)),
        Err(create::Lost) => {
            contain_panic("discarding a store created in vain", || {
                drop(db);
                Ok(())
            })?;
            Ok(None)
        }
    }
}

/// Opens an existing store file with its writes held (see [`staged`]).
fn open_existing(path: &Path, file: std::fs::File, cache_bytes: usize) -> Result<Opened> {
    let refused = |err: Error| match err {
        Error::Storage { reason } => Error::storage(format!(
            "cannot open store file {}: {reason} (the file is left as it was)",
            path.display()
        )),
        other => other,
    };
    let (backend, staged) = staged::staged(FileBackend::new(file).map_err(Error::from)?);
    // A refused open drops the database inside the guard: its shutdown writes are held too, and
    // go nowhere.
    let db = contain_panic("opening the store", || {
        let db = database_builder(cache_bytes).create_with_backend(backend)?;
        init_schema(&db)?;
        Ok(db)
    })
    .map_err(refused)?;
    Ok(Opened {
        db,
        held: HeldWrites(Some(staged)),
    })
}

fn database_builder(cache_bytes: usize) -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    builder
}

/// A store that lives in memory and vanishes with its handle.
pub fn open_memory() -> Result<Opened> {
    let db = Database::builder().create_with_backend(InMemoryBackend::new())?;
    init_schema(&db)?;
    Ok(Opened::ready(db))
}

/// A store on a caller-supplied redb backend (fault-injection tests wrap the file backend).
#[cfg(feature = "testing")]
pub fn open_backend(backend: impl redb::StorageBackend) -> Result<Opened> {
    contain_panic("opening the store", || {
        let db = Database::builder().create_with_backend(backend)?;
        init_schema(&db)?;
        Ok(Opened::ready(db))
    })
}

/// Brings a store to the current schema in one write transaction: creates missing tables,
/// migrates the values of an older schema (see [`migrate`]) and records the current version. A
/// newer schema is refused before anything is written.
fn init_schema(db: &Database) -> Result<()> {
    let read = db.begin_read()?;
    let found = match read.open_table(META) {
        Ok(meta) => meta.get(SCHEMA_KEY)?.map(|version| version.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(err) => return Err(err.into()),
    };
    drop(read);
    if let Some(version) = found {
        if version > SCHEMA_VERSION {
            return Err(Error::storage(format!(
                "store schema version {version} is newer than this release supports \
                 ({SCHEMA_VERSION}); upgrade coven-group to open it"
            )));
        }
        if version == 0 {
            return Err(Error::storage(
                "store schema version 0 is not a released format",
            ));
        }
    }

    let write = db.begin_write()?;
    if let Some(version) = found.filter(|version| *version < SCHEMA_VERSION) {
        migrate::to_current(&write, version)?;
    }
    {
        write.open_table(META)?.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
        write.open_table(FAMILIARS)?;
        write.open_table(GROUPS)?;
        write.open_table(HEADS)?;
        write.open_table(EVENTS)?;
        write.open_table(REPLY_CHUNKS)?;
        write.open_table(CHANGES)?;
        write.open_table(SESSIONS)?;
        write.open_table(GROUP_SESSIONS)?;
        write.open_table(CURSORS)?;
        write.open_table(TURNS)?;
        write.open_table(SYNC_HOMES)?;
        write.open_table(SYNC_REPLICAS)?;
        write.open_table(SYNC_TOMBSTONES)?;
        write.open_table(OUTBOX)?;
        write.open_table(SYNC_CLIENTS)?;
        write.open_table(SYNC_RESULTS)?;
        let mut identity = write.open_table(IDENTITY)?;
        if identity.get(STORE_ID_KEY)?.is_none() {
            identity.insert(STORE_ID_KEY, crate::ids::new_id())?;
        }
    }
    write.commit()?;
    Ok(())
}

/// How reads reach the database, and what lets closing release the file. A read holds a pass
/// for as long as its transaction lives; [`ReadGate::close`] refuses new reads with `Closed`,
/// waits for the passes out, and only then drops the database, so when it returns the file is
/// free and no read can meet a database closed under it. Reads are library code that never
/// waits on the host while it holds a transaction, so that wait lasts as long as the longest
/// read in flight.
pub struct ReadGate {
    state: Mutex<GateState>,
    reads_ended: Condvar,
}

struct GateState {
    /// `None` once closed.
    db: Option<Arc<Database>>,
    /// Read transactions alive.
    reads: usize,
}

impl ReadGate {
    pub fn new(db: Arc<Database>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(GateState {
                db: Some(db),
                reads: 0,
            }),
            reads_ended: Condvar::new(),
        })
    }

    /// Runs `body` on a consistent view as of the latest commit; `Closed` once the gate is
    /// closed. A panic of redb inside (a damaged file, see [`contain_panic`]) answers `Storage`.
    pub fn read<T>(self: &Arc<Self>, body: impl FnOnce(&Reader) -> Result<T>) -> Result<T> {
        contain_panic("reading the store", || body(&self.reader()?))
    }

    /// A consistent view as of the latest commit; `Closed` once the gate is closed.
    fn reader(self: &Arc<Self>) -> Result<Reader> {
        let mut state = self.state.lock();
        let db = state.db.as_ref().ok_or(Error::Closed)?;
        // Begun under the lock (it only registers the read with redb), so a read either starts
        // before `close` takes the database or is refused.
        let txn = db.begin_read()?;
        state.reads += 1;
        Ok(Reader {
            txn,
            _pass: Some(ReadPass(self.clone())),
        })
    }

    /// Refuses every later read, waits until the reads in flight have ended, then drops the
    /// gate's database. The file is released here when nothing else holds the database.
    /// Closing twice is harmless.
    pub fn close(&self) {
        let db = {
            let mut state = self.state.lock();
            let db = state.db.take();
            while state.reads > 0 {
                self.reads_ended.wait(&mut state);
            }
            db
        };
        drop(db);
    }
}

/// One read's claim on the gate; released when its [`Reader`] drops, after its transaction.
struct ReadPass(Arc<ReadGate>);

impl Drop for ReadPass {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.reads -= 1;
        if state.reads == 0 {
            self.0.reads_ended.notify_all();
        }
    }
}

/// A consistent view of the store as of one commit.
pub struct Reader {
    // Declared before the pass so that the transaction ends before the pass is released.
    txn: ReadTransaction,
    _pass: Option<ReadPass>,
}

impl Reader {
    /// A view of a database outside any gate (tests that own the database).
    #[cfg(test)]
    pub fn new(db: &Database) -> Result<Self> {
        Ok(Self {
            txn: db.begin_read()?,
            _pass: None,
        })
    }

    pub fn familiar(&self, id: &str) -> Result<Option<Familiar>> {
        match self.txn.open_table(FAMILIARS)?.get(id)? {
            Some(value) => Ok(Some(records::decode_familiar(id, value.value())?)),
            None => Ok(None),
        }
    }

    pub fn familiars(&self) -> Result<Vec<Familiar>> {
        let table = self.txn.open_table(FAMILIARS)?;
        table
            .iter()?
            .map(|entry| {
                let (key, value) = entry?;
                records::decode_familiar(key.value(), value.value())
            })
            .collect()
    }

    pub fn head(&self, group: u128) -> Result<Head> {
        load(&self.txn.open_table(HEADS)?, group)?
            .ok_or_else(|| Error::not_found("group", ids::to_string(group)))
    }

    /// The group with `updated_at` set to its latest activity (from its head).
    fn group(&self, group: u128, head: &Head) -> Result<GroupConversation> {
        let groups = self.txn.open_table(GROUPS)?;
        let value = groups
            .get(group)?
            .ok_or_else(|| Error::not_found("group", ids::to_string(group)))?;
        let mut record = records::decode_group(group, value.value())?;
        record.updated_at = head.active_at;
        Ok(record)
    }

    /// Every group, most recently active first.
    pub fn groups(&self) -> Result<Vec<GroupConversation>> {
        let groups = self.txn.open_table(GROUPS)?;
        let heads = self.txn.open_table(HEADS)?;
        let mut out = Vec::new();
        for entry in groups.iter()? {
            let (key, value) = entry?;
            let mut record = records::decode_group(key.value(), value.value())?;
            if let Some(head) = load::<u128, Head>(&heads, key.value())? {
                record.updated_at = head.active_at;
            }
            out.push(record);
        }
        out.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(b.id.cmp(&a.id)));
        Ok(out)
    }

    /// Up to `limit` events with seq greater than `after_seq`, in seq order.
    pub fn events(&self, group: u128, after_seq: u64, limit: u32) -> Result<Vec<GroupEvent>> {
        let head = self.head(group)?;
        if after_seq > head.seq() {
            return Err(beyond_head("after_seq", after_seq, "seq", head.seq()));
        }
        // No more than the group's remaining events exist, which sizes the page exactly.
        let remaining = head.seq() - after_seq;
        self.events_after(group, after_seq, remaining.min(u64::from(limit)) as usize)
    }

    /// The events after `after_seq` (which the caller has checked), streaming ones completed;
    /// `limit` is also the capacity reserved, so callers pass at most what can exist.
    fn events_after(&self, group: u128, after_seq: u64, limit: usize) -> Result<Vec<GroupEvent>> {
        let events = self.txn.open_table(EVENTS)?;
        let chunks = self.txn.open_table(REPLY_CHUNKS)?;
        let mut out = Vec::with_capacity(limit);
        let first = after_seq.saturating_add(1);
        let group_id = ids::to_string(group);
        for entry in events
            .range((group, first)..=(group, u64::MAX))?
            .take(limit)
        {
            let (key, value) = entry?;
            // Decoded straight into the page: an event is a few hundred bytes to move.
            out.push(records::decode_event_of(
                group_id.clone(),
                key.value().1,
                value.value(),
            )?);
            if let Some(event) = out.last_mut() {
                records::complete_event(&chunks, group, event)?;
            }
        }
        Ok(out)
    }

    /// The group, its whole timeline and the rev they reflect, from one read transaction.
    pub fn snapshot(&self, group: u128) -> Result<GroupSnapshot> {
        let head = self.head(group)?;
        Ok(GroupSnapshot {
            group: self.group(group, &head)?,
            events: self.events_after(group, 0, head.seq() as usize)?,
            rev: head.rev(),
            pending: self.echoes(group)?,
        })
    }

    /// The group, its latest `limit` events and the rev they reflect, from one read transaction;
    /// O(`limit`) reads whatever the length of the history.
    pub fn tail(&self, group: u128, limit: u32) -> Result<GroupTail> {
        let head = self.head(group)?;
        let events = self.events_ending_before(group, head.next_seq, limit)?;
        Ok(GroupTail {
            group: self.group(group, &head)?,
            has_earlier: events.first().is_some_and(|event| event.seq > 1),
            events,
            rev: head.rev(),
            pending: self.echoes(group)?,
        })
    }

    /// Up to `limit` events with seq less than `before_seq` (the latest of them), in seq order.
    /// `before_seq` may be at most the group's next seq (latest + 1).
    pub fn events_before(
        &self,
        group: u128,
        before_seq: u64,
        limit: u32,
    ) -> Result<Vec<GroupEvent>> {
        let head = self.head(group)?;
        if before_seq > head.next_seq {
            return Err(Error::invalid(
                "before_seq",
                format!(
                    "{before_seq} is beyond the group's next seq {} (its latest is {})",
                    head.next_seq,
                    head.seq()
                ),
            ));
        }
        self.events_ending_before(group, before_seq, limit)
    }

    /// The last `limit` events before `before_seq` (which the caller has checked), in seq order,
    /// streaming ones completed.
    fn events_ending_before(
        &self,
        group: u128,
        before_seq: u64,
        limit: u32,
    ) -> Result<Vec<GroupEvent>> {
        if before_seq <= 1 {
            return Ok(Vec::new());
        }
        let events = self.txn.open_table(EVENTS)?;
        let chunks = self.txn.open_table(REPLY_CHUNKS)?;
        let count = (before_seq - 1).min(u64::from(limit)) as usize;
        let mut out = Vec::with_capacity(count);
        let group_id = ids::to_string(group);
        for entry in events
            .range((group, 1)..(group, before_seq))?
            .rev()
            .take(count)
        {
            let (key, value) = entry?;
            let mut event =
                records::decode_event_of(group_id.clone(), key.value().1, value.value())?;
            records::complete_event(&chunks, group, &mut event)?;
            out.push(event);
        }
        out.reverse();
        Ok(out)
    }

    /// The group's head, refusing a rev beyond it (a client cannot have seen the future).
    pub fn head_covering(&self, group: u128, after_rev: u64) -> Result<Head> {
        let head = self.head(group)?;
        if after_rev > head.rev() {
            return Err(beyond_head("after_rev", after_rev, "rev", head.rev()));
        }
        Ok(head)
    }

    /// Up to `limit` changes with rev greater than `after_rev`, in rev order. A replica's reset
    /// (`GroupReset`) stands for the group's whole state, which is not kept as it was: a page
    /// ends before one, and a page that starts at one is that group's current state as one
    /// `GroupReset` at the latest rev, so the reader goes on after it with no gap and no
    /// duplicate.
    pub fn changes(&self, group: u128, after_rev: u64, limit: u32) -> Result<Vec<GroupChange>> {
        let head = self.head_covering(group, after_rev)?;
        let changes = self.txn.open_table(CHANGES)?;
        let events = self.txn.open_table(EVENTS)?;
        let chunks = self.txn.open_table(REPLY_CHUNKS)?;
        let mut text = records::ChangeReader::new(group, &events, &chunks);
        let group_id = ids::to_string(group);
        let mut out = Vec::new();
        for entry in changes
            .range((group, after_rev.saturating_add(1))..=(group, u64::MAX))?
            .take(limit as usize)
        {
            let (key, value) = entry?;
            let rev = key.value().1;
            let record: records::ChangeRecord = codec::decode(value.value())?;
            if let records::ChangeRecord::Reset { .. } = record {
                if out.is_empty() {
                    out.push(self.reset(group, &head)?);
                }
                break;
            }
            let update = text.rebuild(rev, record)?;
            out.push(GroupChange {
                group_id: group_id.clone(),
                rev,
                update,
            });
        }
        Ok(out)
    }

    /// The group's current state as one `GroupReset` change at its latest rev.
    fn reset(&self, group: u128, head: &Head) -> Result<GroupChange> {
        let snapshot = self.snapshot(group)?;
        Ok(GroupChange {
            group_id: ids::to_string(group),
            rev: head.rev(),
            update: GroupUpdate::GroupReset {
                group: snapshot.group,
                events: snapshot.events,
                pending: snapshot.pending,
            },
        })
    }

    pub fn session(&self, session: u128) -> Result<Session> {
        match self.txn.open_table(SESSIONS)?.get(session)? {
            Some(value) => records::decode_session(session, value.value()),
            None => Err(Error::not_found("session", ids::to_string(session))),
        }
    }

    /// Every session of a group, archived ones included, ordered by session id.
    pub fn sessions_of(&self, group: u128) -> Result<Vec<Session>> {
        self.head(group)?;
        let index = self.txn.open_table(GROUP_SESSIONS)?;
        let sessions = self.txn.open_table(SESSIONS)?;
        let mut out = Vec::new();
        for entry in index.range((group, 0)..=(group, u128::MAX))? {
            let (key, _) = entry?;
            let session = key.value().1;
            if let Some(value) = sessions.get(session)? {
                out.push(records::decode_session(session, value.value())?);
            }
        }
        Ok(out)
    }

    pub fn cursor(&self, group: u128, consumer: &str) -> Result<Option<u64>> {
        self.head(group)?;
        let cursors = self.txn.open_table(CURSORS)?;
        let value = cursors.get((group, consumer))?.map(|guard| guard.value());
        Ok(value)
    }
}

/// `InvalidInput` for a position a client cannot have seen: beyond the group's latest seq or rev.
pub(crate) fn beyond_head(field: &'static str, asked: u64, what: &str, latest: u64) -> Error {
    Error::invalid(
        field,
        format!("{asked} is beyond the group's latest {what} {latest}"),
    )
}
