//! The helpers of every test binary: stores, familiars, paging, and a store dump that is both
//! logical (everything the public API can read) and physical (the bytes of the store file);
//! turns and processes in [`runs`]; the exported surface in [`surface`].

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod runs;
pub mod surface;
pub mod sync;

#[allow(unused_imports)]
pub use runs::*;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coven_group::{
    AdoptedMember, Config, Coven, Error, EventKind, Familiar, GroupChange, GroupConversation,
    GroupEvent, GroupSnapshot, GroupUpdate, HistoryMessage, HistoryRole, IntegrityReport, Session,
    MAX_PAGE,
};
use tempfile::TempDir;

/// A file-backed store in its own temporary directory (kept alive by the returned `TempDir`).
pub struct FileStore {
    pub dir: TempDir,
    pub path: PathBuf,
    pub coven: Arc<Coven>,
}

impl FileStore {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("coven.redb");
        let coven = Arc::new(Coven::open(&path, Config::default()).expect("open a new store file"));
        Self { dir, path, coven }
    }

    /// Closes the store (every clone of the handle then answers `Closed`) and opens the same
    /// file again.
    pub fn reopen(&mut self) {
        self.coven.close();
        self.coven =
            Arc::new(Coven::open(&self.path, Config::default()).expect("reopen the store file"));
    }

    /// The store's logical content and the bytes of its file.
    pub fn dump(&self) -> (Dump, Vec<u8>) {
        (Dump::of(&self.coven), file_bytes(&self.path))
    }
}

pub fn memory_store() -> Coven {
    memory_store_with(Config::default())
}

pub fn memory_store_with(config: Config) -> Coven {
    Coven::open_in_memory(config).expect("open an in-memory store")
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Serializes the tests of one binary that read process-wide state (thread counts, the resident
/// set); a test that failed while holding it does not fail the others.
pub fn serial() -> MutexGuard<'static, ()> {
    lock(&SERIAL)
}

/// Locks a mutex whether or not a failed test poisoned it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read the store file")
}

/// Registers `scripted` familiars, given as `(id, display name)`.
pub fn register(coven: &Coven, familiars: &[(&str, &str)]) {
    let without_models: Vec<(&str, &str, Option<&str>)> = familiars
        .iter()
        .map(|&(id, name)| (id, name, None))
        .collect();
    register_models(coven, &without_models);
}

/// Registers `scripted` familiars, given as `(id, display name, model)`.
pub fn register_models(coven: &Coven, familiars: &[(&str, &str, Option<&str>)]) {
    for (id, name, model) in familiars {
        let mut familiar = Familiar::new(*id, *name, "scripted");
        familiar.model = model.map(str::to_owned);
        coven
            .register_familiar(familiar)
            .expect("register familiar");
    }
}

pub fn ids(familiar_ids: &[&str]) -> Vec<String> {
    familiar_ids.iter().map(|id| (*id).to_owned()).collect()
}

/// Every change of a group from rev 1, read page by page.
pub fn all_changes(coven: &Coven, group_id: &str) -> Vec<GroupChange> {
    changes_after(coven, group_id, 0)
}

/// Every change of a group after `after_rev`, read page by page.
pub fn changes_after(coven: &Coven, group_id: &str, after_rev: u64) -> Vec<GroupChange> {
    let mut out: Vec<GroupChange> = Vec::new();
    loop {
        let after = out.last().map_or(after_rev, |change| change.rev);
        let page = coven
            .changes_since(group_id, after, MAX_PAGE)
            .expect("changes_since");
        assert!(
            page.len() <= MAX_PAGE as usize,
            "page larger than its limit"
        );
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

pub fn revs(changes: &[GroupChange]) -> Vec<u64> {
    changes.iter().map(|change| change.rev).collect()
}

/// Equal change lists, or a failure that names the first difference instead of dumping both.
#[track_caller]
pub fn assert_same_changes(received: &[GroupChange], expected: &[GroupChange], what: &str) {
    if received == expected {
        return;
    }
    let at = received
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(received.len().min(expected.len()));
    let around = |changes: &[GroupChange]| {
        revs(&changes[at.saturating_sub(3).min(changes.len())..(at + 4).min(changes.len())])
    };
    panic!(
        "{what}: received {} changes, expected {}; first difference at index {at}: \
         received revs {:?} …, expected revs {:?} …; received {:?}, expected {:?}",
        received.len(),
        expected.len(),
        around(received),
        around(expected),
        received.get(at),
        expected.get(at),
    );
}

/// Every event of a group from seq 1, read page by page with a small page size.
pub fn all_events_paged(coven: &Coven, group_id: &str, page_size: u32) -> Vec<GroupEvent> {
    let mut out: Vec<GroupEvent> = Vec::new();
    loop {
        let after = out.last().map_or(0, |event| event.seq);
        let page = coven
            .events_since(group_id, after, page_size)
            .expect("events_since");
        assert!(
            page.len() <= page_size as usize,
            "page larger than its limit"
        );
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Asserts the timeline's seqs are exactly 1..=n, in order.
pub fn assert_seq_contiguous(events: &[GroupEvent]) {
    for (index, event) in events.iter().enumerate() {
        assert_eq!(
            event.seq,
            index as u64 + 1,
            "seq hole or duplicate at position {index}: {:?}",
            events.iter().map(|e| e.seq).collect::<Vec<_>>()
        );
    }
}

/// Asserts the group's change log holds exactly the revs 1..=head, where head is the snapshot's
/// rev, and returns the log.
pub fn assert_rev_contiguous(coven: &Coven, group_id: &str) -> Vec<GroupChange> {
    let head = coven.get_group(group_id).expect("get_group").rev;
    let changes = all_changes(coven, group_id);
    let revs: Vec<u64> = changes.iter().map(|c| c.rev).collect();
    let expected: Vec<u64> = (1..=head).collect();
    assert_eq!(revs, expected, "revs are not 1..=head");
    for change in &changes {
        assert_eq!(change.group_id, group_id);
    }
    changes
}

/// Applies changes in order to a timeline, as a client does: an appended event (or a sent
/// echo's event) takes the next seq, a delta extends its streaming reply, a finish replaces the
/// reply whole, a replica's reset replaces the timeline. Panics on a change that does not fit what was applied before it.
#[track_caller]
pub fn apply_changes(timeline: &mut Vec<GroupEvent>, changes: &[GroupChange]) {
    for change in changes {
        match &change.update {
            GroupUpdate::EventAppended { event } | GroupUpdate::MessageSent { event, .. } => {
                assert_eq!(
                    event.seq,
                    timeline.len() as u64 + 1,
                    "rev {} appends seq {} after {} events",
                    change.rev,
                    event.seq,
                    timeline.len()
                );
                timeline.push(event.clone());
            }
            GroupUpdate::ReplyDelta { seq, text, .. } => {
                let reply = timeline
                    .get_mut(*seq as usize - 1)
                    .unwrap_or_else(|| panic!("rev {} streams into missing {seq}", change.rev));
                assert!(
                    reply.streaming,
                    "rev {} streams into finished reply {seq}",
                    change.rev
                );
                reply.text.push_str(text);
                reply.rev = change.rev;
            }
            // A replica's reset: the group's whole state as it was applied.
            GroupUpdate::GroupReset { events, .. } => *timeline = events.clone(),
            GroupUpdate::ReplyFinished { event } => {
                let reply = timeline
                    .get_mut(event.seq as usize - 1)
                    .unwrap_or_else(|| panic!("rev {} finishes missing {}", change.rev, event.seq));
                assert!(
                    event.text.starts_with(&reply.text),
                    "rev {} finishes reply {} with text that does not extend what streamed",
                    change.rev,
                    event.seq
                );
                *reply = event.clone();
            }
            _ => {}
        }
    }
}

/// The group's change log read from rev 0: revs rise to the head's (a finished reply's deltas
/// are one record, so they may skip), replaying it builds exactly the stored timeline, and a
/// finished reply reads as at most one delta.
pub fn assert_log_replays_the_timeline(coven: &Coven, group_id: &str) -> Vec<GroupChange> {
    let snapshot = coven.get_group(group_id).expect("get_group");
    let changes = all_changes(coven, group_id);
    assert!(
        changes.windows(2).all(|pair| pair[0].rev < pair[1].rev),
        "revs rise: {:?}",
        revs(&changes)
    );
    assert_eq!(changes.last().map(|change| change.rev), Some(snapshot.rev));
    let mut timeline = Vec::new();
    apply_changes(&mut timeline, &changes);
    assert_eq!(
        timeline, snapshot.events,
        "the log replays into the timeline"
    );
    for reply in timeline.iter().filter(|event| !event.streaming) {
        let deltas = changes
            .iter()
            .filter(|change| {
                matches!(change.update, GroupUpdate::ReplyDelta { seq, .. } if seq == reply.seq)
            })
            .count();
        assert!(
            deltas <= 1,
            "finished reply {} reads as {deltas} deltas, not one",
            reply.seq
        );
    }
    changes
}

/// What a reader received from rev `start` on (a subscription, a long-poll, pages of
/// `changes_since`), checked against the documented delivery rule: revs rise past `start`; every
/// change but a delta is the one the log holds at its rev; and the deltas, applied to the timeline
/// as of `start` (`at_start`) with everything else, build exactly the group's timeline now. A
/// reader that saw a reply's deltas live and one that read them collapsed from the log both pass;
/// a lost, repeated or reordered change fails (a missing or repeated delta leaves text the
/// finished reply does not extend, see [`apply_changes`]).
#[track_caller]
pub fn assert_delivered_from(
    coven: &Coven,
    group_id: &str,
    start: u64,
    at_start: &[GroupEvent],
    received: &[GroupChange],
    what: &str,
) {
    assert!(
        received.first().is_none_or(|first| first.rev > start)
            && received.windows(2).all(|pair| pair[0].rev < pair[1].rev),
        "{what}: revs do not rise past {start}: {:?}",
        revs(received)
    );
    let not_deltas = |changes: &[GroupChange]| -> Vec<GroupChange> {
        changes
            .iter()
            .filter(|change| !matches!(change.update, GroupUpdate::ReplyDelta { .. }))
            .cloned()
            .collect()
    };
    let logged = changes_after(coven, group_id, start);
    assert_same_changes(&not_deltas(received), &not_deltas(&logged), what);
    let mut timeline = at_start.to_vec();
    apply_changes(&mut timeline, received);
    let now = coven.get_group(group_id).expect("get_group");
    assert_eq!(timeline, now.events, "{what}: the timeline it builds");
}

/// Everything the public API can read from a store.
#[derive(Debug, Clone, PartialEq)]
pub struct Dump {
    pub familiars: Vec<Familiar>,
    pub groups: Vec<GroupConversation>,
    pub snapshots: Vec<GroupSnapshot>,
    pub changes: Vec<Vec<GroupChange>>,
    pub sessions: Vec<Vec<Session>>,
}

impl Dump {
    pub fn of(coven: &Coven) -> Self {
        let familiars = coven.list_familiars().expect("list_familiars");
        for familiar in &familiars {
            assert_eq!(
                coven.get_familiar(&familiar.id).as_ref(),
                Ok(familiar),
                "get_familiar disagrees with list_familiars"
            );
        }
        let groups = coven.list_groups().expect("list_groups");
        let mut snapshots = Vec::new();
        let mut changes = Vec::new();
        let mut sessions = Vec::new();
        for group in &groups {
            let snapshot = coven.get_group(&group.id).expect("get_group");
            assert_eq!(
                &snapshot.group, group,
                "get_group disagrees with list_groups"
            );
            snapshots.push(snapshot);
            changes.push(all_changes(coven, &group.id));
            let of_group = coven.sessions_of(&group.id).expect("sessions_of");
            for session in &of_group {
                assert_eq!(
                    coven.get_session(&session.id).as_ref(),
                    Ok(session),
                    "get_session disagrees with sessions_of"
                );
            }
            sessions.push(of_group);
        }
        Self {
            familiars,
            groups,
            snapshots,
            changes,
            sessions,
        }
    }
}

/// The fields of an event that adoption determines (ids and revs aside).
pub type EventView = (
    u64,
    EventKind,
    Option<String>,
    Option<String>,
    String,
    SystemTime,
);

pub fn view(events: &[GroupEvent]) -> Vec<EventView> {
    events
        .iter()
        .map(|e| {
            (
                e.seq,
                e.kind,
                e.familiar_id.clone(),
                e.author.clone(),
                e.text.clone(),
                e.timestamp,
            )
        })
        .collect()
}

/// A fixed point in time, so adoption inputs are reproducible.
pub fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(millis)
}

pub fn user(text: &str, timestamp: SystemTime) -> HistoryMessage {
    HistoryMessage {
        role: HistoryRole::User,
        text: text.to_owned(),
        timestamp,
        author: None,
    }
}

pub fn user_by(text: &str, author: &str, timestamp: SystemTime) -> HistoryMessage {
    HistoryMessage {
        author: Some(author.to_owned()),
        ..user(text, timestamp)
    }
}

pub fn reply(text: &str, timestamp: SystemTime) -> HistoryMessage {
    HistoryMessage {
        role: HistoryRole::Familiar,
        text: text.to_owned(),
        timestamp,
        author: None,
    }
}

/// A fresh, well-formed session id for adoption (a UUID no store has seen).
pub fn fresh_session_id(n: u128) -> String {
    // Random-looking but deterministic: a v4-shaped UUID built from a counter and a constant.
    let value: u128 = 0x5eed_0000_0000_4000_8000_0000_0000_0000 | (n & 0xffff_ffff_ffff);
    let hex = format!("{value:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub fn adopted(familiar_id: &str, session_id: &str, history: Vec<HistoryMessage>) -> AdoptedMember {
    AdoptedMember {
        familiar_id: familiar_id.to_owned(),
        session_id: session_id.to_owned(),
        history,
    }
}

/// Asserts `result` is `InvalidInput` for `field`; returns the reason.
#[track_caller]
pub fn expect_invalid<T>(result: Result<T, Error>, field: &str) -> String {
    match result {
        Err(Error::InvalidInput { field: got, reason }) => {
            assert_eq!(got, field, "wrong field (reason: {reason})");
            reason
        }
        Err(other) => panic!("expected InvalidInput for {field:?}, got {other:?}"),
        Ok(_) => panic!("expected InvalidInput for {field:?}, got Ok"),
    }
}

#[track_caller]
pub fn expect_not_found<T>(result: Result<T, Error>, what: &str, id: &str) {
    match result {
        Err(Error::NotFound {
            what: got,
            id: got_id,
        }) => {
            assert_eq!((got.as_str(), got_id.as_str()), (what, id));
        }
        Err(other) => panic!("expected NotFound {what} {id}, got {other:?}"),
        Ok(_) => panic!("expected NotFound {what} {id}, got Ok"),
    }
}

#[track_caller]
pub fn expect_conflict<T>(result: Result<T, Error>) -> String {
    match result {
        Err(Error::Conflict { reason }) => reason,
        Err(other) => panic!("expected Conflict, got {other:?}"),
        Ok(_) => panic!("expected Conflict, got Ok"),
    }
}

/// The distinct values of a list, asserting there were no duplicates.
pub fn distinct<T: Ord + Clone + std::fmt::Debug>(values: &[T]) -> BTreeSet<T> {
    let set: BTreeSet<T> = values.iter().cloned().collect();
    assert_eq!(set.len(), values.len(), "duplicates in {values:?}");
    set
}

/// Runs the integrity check and fails, listing every problem, unless the store is consistent.
#[track_caller]
pub fn assert_clean(coven: &Coven) -> IntegrityReport {
    let report = coven.check().expect("check");
    assert!(
        report.is_clean(),
        "integrity check found {} problem(s) (+{} omitted): {:#?}",
        report.problems.len(),
        report.problems_omitted,
        report.problems
    );
    report
}

/// [`assert_clean`], and nothing running or streaming: the state after an open or once every
/// turn has ended.
#[track_caller]
pub fn assert_clean_and_idle(coven: &Coven) -> IntegrityReport {
    let report = assert_clean(coven);
    assert!(
        report.is_clean_and_idle(),
        "left running: {} turn lock(s), {} streaming reply(ies), {} running session(s)",
        report.running_turns,
        report.streaming_replies,
        report.running_sessions
    );
    report
}

/// A small seeded PRNG (splitmix64) for fault and load tests: seeded from `env_var` when set,
/// otherwise from the clock, and printed, so a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    /// A fixed seed, for tests whose schedule must be the same on every run.
    pub fn from_seed(seed: u64) -> Self {
        Self(seed)
    }

    pub fn seeded(env_var: &str) -> Self {
        let seed = std::env::var(env_var)
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0x00c0_7e11, |d| d.as_nanos() as u64)
            });
        eprintln!("seed {seed} (replay with {env_var}={seed})");
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// Resident set size of this process in KiB (`VmRSS`).
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// A `… kB` field of `/proc/self/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"))
}

/// Resets the peak resident set (`VmHWM`) to the current one (Linux 4.0 and later).
pub fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident set");
}

// ---- a store file on a disk that can fail ----

/// What a test's disk does before the store file changes: an `Err` refuses the operation the way
/// a full or failing disk does.
pub trait DiskFaults: Send + Sync + std::fmt::Debug + 'static {
    /// Before `bytes` are written.
    fn before_write(&self, bytes: u64) -> std::io::Result<()>;
    /// Before the file grows.
    fn before_grow(&self) -> std::io::Result<()>;
    /// Before an fsync.
    fn before_sync(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// redb's file backend on a disk whose faults `D` decides.
#[derive(Debug)]
pub struct FaultyFile<D> {
    file: redb::backends::FileBackend,
    disk: D,
}

impl<D: DiskFaults> FaultyFile<D> {
    /// Opens (creating if needed) the store file at `path`.
    pub fn open(path: &Path, disk: D) -> Self {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .expect("open the store file");
        Self {
            file: redb::backends::FileBackend::new(file).expect("file backend"),
            disk,
        }
    }
}

impl<D: DiskFaults> redb::StorageBackend for FaultyFile<D> {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        if len > self.file.len()? {
            self.disk.before_grow()?;
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.disk.before_sync()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.disk.before_write(data.len() as u64)?;
        self.file.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }

    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.query_lock_range(start, end)
    }
}

// ---- child processes that report to the test ----

/// Prints one line a child process reports to its parent, after `prefix`, and flushes it at once
/// (the parent may kill the child right after reading it).
pub fn report_line(prefix: &str, line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{prefix}{line}\n").as_bytes())
        .expect("stdout");
    out.flush().expect("stdout");
}

/// The lines a child reported with `prefix` (without it), read from its stdout on a thread of
/// their own; libtest may print "test <name> ... " on the same line first.
pub fn reported_lines(
    stdout: std::process::ChildStdout,
    prefix: &'static str,
) -> crossbeam_channel::Receiver<String> {
    use std::io::BufRead;
    let (lines_tx, lines) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some((_, report)) = line.split_once(prefix) {
                if lines_tx.send(report.to_owned()).is_err() {
                    return;
                }
            }
        }
    });
    lines
}

/// Makes the closed store at `path` claim a schema newer than this release's.
pub fn claim_newer_schema(path: &Path) {
    let db = redb::Database::open(path).unwrap();
    let write = db.begin_write().unwrap();
    write
        .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
        .unwrap()
        .insert("schema_version", 1_000)
        .unwrap();
    write.commit().unwrap();
}
