//! Storage faults: the disk fills up, or fsync fails, while appends, a streaming turn, cursor
//! updates and membership changes are being written. Every failed call returns `Storage` (no
//! panic, no other kind), nothing acknowledged is lost, and once space returns the store reopens
//! cleanly: every acknowledged write is there, seq is contiguous, recovery finishes what was
//! running, the integrity check is clean, and new writes work.
//!
//! Two ways to fill the disk: a redb storage backend that refuses writes past a byte budget with
//! `ENOSPC` (always runs), and a real tmpfs mount of a few MiB filled by another file (runs when
//! the tests run as root and the sandbox allows mounts; otherwise it says why it skipped).

mod common;

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use coven_group::{Config, Coven, Error, Familiar, ReplyErrorKind};

/// Upper bound for anything a test waits on; reaching it is a failure.
const GUARD: Duration = Duration::from_secs(60);
const REPLY_WORDS: usize = 200;

// ---- a backend whose disk fills up ----

/// The fault switches shared by a test and its backend.
#[derive(Debug, Default)]
struct Disk {
    /// Bytes that may still be written before writes fail with `ENOSPC`; `u64::MAX` is unlimited.
    free: AtomicU64,
    /// When set, `sync_data` fails with `EIO`.
    fail_sync: AtomicBool,
    /// Faults actually injected.
    refused_writes: AtomicU64,
    refused_syncs: AtomicU64,
}

impl Disk {
    fn unlimited() -> Arc<Self> {
        let disk = Self::default();
        disk.free.store(u64::MAX, Ordering::SeqCst);
        Arc::new(disk)
    }

    fn full() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOSPC)
    }

    /// Takes `bytes` from the free space, or fails as a full disk does.
    fn take(&self, bytes: u64) -> io::Result<()> {
        let taken = self
            .free
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |free| {
                if free == u64::MAX {
                    Some(free)
                } else {
                    free.checked_sub(bytes)
                }
            });
        match taken {
            Ok(_) => Ok(()),
            Err(_) => {
                self.free.store(0, Ordering::SeqCst);
                self.refused_writes.fetch_add(1, Ordering::SeqCst);
                Err(Self::full())
            }
        }
    }
}

impl DiskFaults for Arc<Disk> {
    fn before_write(&self, bytes: u64) -> io::Result<()> {
        self.take(bytes)
    }

    /// Growing the file fails once the disk is full.
    fn before_grow(&self) -> io::Result<()> {
        if self.free.load(Ordering::SeqCst) == 0 {
            self.refused_writes.fetch_add(1, Ordering::SeqCst);
            return Err(Disk::full());
        }
        Ok(())
    }

    /// fsync fails with `EIO` while `fail_sync` is set.
    fn before_sync(&self) -> io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            self.refused_syncs.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

// ---- the workload ----

fn config() -> Config {
    Config {
        scripted_delay_ms: 1,
        ..Config::default()
    }
}

/// Familiars and one group with a streaming member; returns the group id.
fn prepare(coven: &Coven) -> String {
    for id in ["ada", "bo"] {
        let mut familiar = Familiar::new(id, id.to_uppercase(), "scripted");
        familiar.model = Some(format!("words:{REPLY_WORDS}"));
        coven.register_familiar(familiar).unwrap();
    }
    coven
        .register_familiar(Familiar::new("cy", "Cy", "scripted"))
        .unwrap();
    coven
        .create_group(Some("faults".into()), ids(&["ada", "bo"]), None)
        .unwrap()
        .id
}

/// What the workload had acknowledged, and how each of its threads failed.
#[derive(Debug, Default)]
struct Outcome {
    /// Acknowledged appends: (seq, text).
    appended: Vec<(u64, String)>,
    /// Appends that returned an error: they may or may not have committed.
    refused: Vec<String>,
    cursor: Option<u64>,
    /// Every error any call returned.
    errors: Vec<Error>,
    /// The turn started before or during the fault, and whether it was acknowledged complete.
    turn: Option<(String, bool)>,
}

/// Writes from several threads until every thread has seen the store refuse, then a few calls
/// more, each of which must be refused as well. `fault` is armed once the writers are running.
fn fill(coven: &Arc<Coven>, group: &str, text_bytes: usize, fault: impl FnOnce()) -> Outcome {
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    // The turn streams while the disk fills.
    let turn = coven
        .send(group, "stream while it fills".into(), None)
        .unwrap();
    outcome.lock().unwrap().turn = Some((turn.turn_id.clone(), false));
    let mut threads = Vec::new();
    for t in 0..3 {
        let (coven, group, outcome) = (coven.clone(), group.to_owned(), outcome.clone());
        threads.push(thread::spawn(move || {
            let mut refusals = 0;
            let mut m = 0;
            while refusals < 3 {
                let text = format!("t{t}-m{m}-{}", "x".repeat(text_bytes));
                m += 1;
                match coven.append_user_message(&group, text.clone(), None) {
                    Ok(event) => {
                        assert_eq!(refusals, 0, "a write succeeded after the store refused");
                        outcome.lock().unwrap().appended.push((event.seq, text));
                    }
                    Err(err) => {
                        refusals += 1;
                        let mut outcome = outcome.lock().unwrap();
                        outcome.refused.push(text);
                        outcome.errors.push(err);
                    }
                }
            }
        }));
    }
    {
        let (coven, group, outcome) = (coven.clone(), group.to_owned(), outcome.clone());
        threads.push(thread::spawn(move || {
            let mut refusals = 0;
            while refusals < 3 {
                let result = coven
                    .get_group(&group)
                    .and_then(|snapshot| {
                        coven.set_cursor(&group, "phone", snapshot.rev)?;
                        Ok(snapshot.rev)
                    })
                    .and_then(|rev| {
                        // Membership changes write sessions, events and the group record.
                        match coven.add_member(&group, "cy") {
                            Ok(_) => coven.remove_member(&group, "cy").map(|_| rev),
                            Err(err) => Err(err),
                        }
                    });
                match result {
                    Ok(rev) => outcome.lock().unwrap().cursor = Some(rev),
                    Err(err) => {
                        refusals += 1;
                        outcome.lock().unwrap().errors.push(err);
                    }
                }
            }
        }));
    }
    fault();
    for thread in threads {
        thread.join().expect("a writer thread panicked");
    }
    // `wait_turn` acknowledges the turn only when every reply committed; when a reply's last
    // commit was refused it says so with a storage error instead.
    let mut outcome = Arc::try_unwrap(outcome).unwrap().into_inner().unwrap();
    let complete = match coven.wait_turn(&turn.turn_id, GUARD) {
        Ok(true) => true,
        Ok(false) => panic!("the turn did not end while the disk was full"),
        Err(err) => {
            outcome.errors.push(err);
            false
        }
    };
    outcome.turn = Some((turn.turn_id, complete));
    // Further calls are refused as storage errors too, and none panics.
    for result in [
        coven.append_user_message(group, "after".into(), None).err(),
        coven.rename_group(group, "after".into()).err(),
        coven.send(group, "after".into(), None).err(),
    ] {
        outcome.errors.extend(result);
    }
    for err in &outcome.errors {
        assert!(
            matches!(err, Error::Storage { .. }),
            "a storage fault surfaced as {err:?}"
        );
    }
    assert!(!outcome.errors.is_empty());
    outcome
}

/// Reopens the store once space has returned and checks it against what was acknowledged.
fn verify_after(path: &Path, group: &str, outcome: &Outcome, context: &str) -> Coven {
    let coven = Coven::open(path, Config::default())
        .unwrap_or_else(|err| panic!("{context}: reopen once space returned: {err}"));
    let report = assert_clean_and_idle(&coven);
    let snapshot = coven.get_group(group).unwrap();
    assert_seq_contiguous(&snapshot.events);
    for (seq, text) in &outcome.appended {
        let event = snapshot
            .events
            .get(*seq as usize - 1)
            .unwrap_or_else(|| panic!("{context}: acknowledged seq {seq} is lost"));
        assert_eq!(
            &event.text, text,
            "{context}: acknowledged seq {seq} changed"
        );
    }
    // A refused append is either absent or present whole, never torn or duplicated: a commit
    // whose final fsync fails has already written its header, so the call is in doubt (like a
    // crash between commit and reply) and its write may be found after the reopen.
    let mut in_doubt = 0;
    for text in &outcome.refused {
        let copies = snapshot.events.iter().filter(|e| &e.text == text).count();
        assert!(
            copies <= 1,
            "{context}: a refused append is stored {copies} times"
        );
        in_doubt += copies;
    }
    if let Some(rev) = outcome.cursor {
        let stored = coven.get_cursor(group, "phone").unwrap();
        assert!(stored >= Some(rev), "{context}: cursor {stored:?} < {rev}");
    }
    // The turn's replies are finished: whole when acknowledged, otherwise whole or interrupted.
    let (turn, complete) = outcome.turn.clone().unwrap();
    let replies: Vec<_> = snapshot
        .events
        .iter()
        .filter(|e| e.turn_id.as_deref() == Some(turn.as_str()) && e.seq > 1)
        .collect();
    assert_eq!(replies.len(), 2, "{context}: {replies:#?}");
    for reply in replies {
        assert!(!reply.streaming);
        match reply.error.as_ref().map(|e| e.kind) {
            None => assert_eq!(reply.text.split(' ').count(), REPLY_WORDS),
            Some(ReplyErrorKind::Interrupted | ReplyErrorKind::Failed) if !complete => {}
            other => panic!("{context}: reply {} ended {other:?}", reply.seq),
        }
    }
    eprintln!(
        "{context}: {} acknowledged, {} refused ({in_doubt} of them found after reopen), {} \
         storage errors, store after reopen: {} events, {} changes",
        outcome.appended.len(),
        outcome.refused.len(),
        outcome.errors.len(),
        report.events,
        report.changes
    );
    // The store works again: a new message and a whole turn.
    let event = coven
        .append_user_message(group, "space is back".into(), None)
        .unwrap();
    assert_eq!(event.seq, snapshot.events.len() as u64 + 1);
    let turn = coven.send(group, "and again".into(), None).unwrap();
    assert!(coven.wait_turn(&turn.turn_id, GUARD).unwrap());
    assert_clean_and_idle(&coven);
    coven
}

#[test]
fn a_full_disk_refuses_with_storage_errors_and_loses_nothing_acknowledged() {
    let mut rng = Rng::seeded("COVEN_GROUP_FAULTS_SEED");
    // From "full at once" to "full after a few dozen commits"; one random budget besides.
    let budgets = [0, 4 << 10, 40 << 10, 160 << 10, rng.between(1, 400 << 10)];
    for budget in budgets {
        let context = format!("disk full after {budget} bytes");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.redb");
        let disk = Disk::unlimited();
        let backend = FaultyFile::open(&path, disk.clone());
        let coven = Arc::new(Coven::open_with_backend(backend, config()).unwrap());
        let group = prepare(&coven);
        let outcome = fill(&coven, &group, 2000, || {
            disk.free.store(budget, Ordering::SeqCst);
        });
        assert!(disk.refused_writes.load(Ordering::SeqCst) > 0, "{context}");
        // Space returns only after the store is closed: redb refuses every later write of a
        // handle that saw an I/O error.
        coven.close();
        drop(coven);
        verify_after(&path, &group, &outcome, &context).close();
    }
}

#[test]
fn a_failing_fsync_refuses_with_storage_errors_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fsync.redb");
    let disk = Disk::unlimited();
    let backend = FaultyFile::open(&path, disk.clone());
    let coven = Arc::new(Coven::open_with_backend(backend, config()).unwrap());
    let group = prepare(&coven);
    let outcome = fill(&coven, &group, 100, || {
        disk.fail_sync.store(true, Ordering::SeqCst);
    });
    assert!(disk.refused_syncs.load(Ordering::SeqCst) > 0);
    coven.close();
    drop(coven);
    verify_after(&path, &group, &outcome, "fsync failing").close();
}

#[test]
fn a_store_opened_on_a_full_disk_is_refused_with_a_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.redb");
    let disk = Disk::unlimited();
    disk.free.store(0, Ordering::SeqCst);
    match Coven::open_with_backend(FaultyFile::open(&path, disk.clone()), config()) {
        Err(Error::Storage { .. }) => {}
        Err(other) => panic!("creating a store on a full disk failed with {other:?}"),
        Ok(_) => panic!("a store was created on a full disk"),
    }
    // Space returns: the same file becomes a working store.
    let coven = Coven::open(&path, Config::default()).unwrap();
    let group = prepare(&coven);
    coven
        .append_user_message(&group, "hello".into(), None)
        .unwrap();
    assert_clean_and_idle(&coven);
}

// ---- a real full filesystem ----

/// A tmpfs mounted on a temporary directory for the duration of a test.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes`, or says why it cannot.
    fn mount(bytes: u64) -> Result<Self, String> {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the tests do not run as root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let target = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        let options = CString::new(format!("size={bytes},mode=0700")).unwrap();
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let status = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if status != 0 {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; MNT_DETACH so a file still open cannot keep it mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Fills the filesystem with `path` until it refuses, then frees `keep` bytes of it.
fn fill_filesystem(path: &Path, keep: u64) -> u64 {
    let mut file = File::create(path).unwrap();
    let block = vec![0xa5u8; 64 << 10];
    let mut written = 0u64;
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(err) => panic!("filling the filesystem: {err}"),
        }
    }
    file.set_len(written.saturating_sub(keep)).unwrap();
    file.sync_all().unwrap();
    written
}

#[test]
fn a_real_full_filesystem_refuses_with_storage_errors_and_reopens_once_space_returns() {
    let tmpfs = match Tmpfs::mount(8 << 20) {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("skipped the tmpfs variant ({why}); the backend variant covers a full disk");
            return;
        }
    };
    let path = tmpfs.path().join("coven.redb");
    let filler = tmpfs.path().join("filler");
    let coven = Arc::new(Coven::open(&path, config()).unwrap());
    let group = prepare(&coven);
    let outcome = fill(&coven, &group, 4000, || {
        // Everything but 96 KiB goes to another file: the store runs out within a few commits.
        fill_filesystem(&filler, 96 << 10);
    });
    coven.close();
    drop(coven);
    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    verify_after(&path, &group, &outcome, "tmpfs full").close();
}
