//! The store's lifecycle: calls racing `close()` are all answered and none blocks; `close()`
//! returns only once the file is free; a store opened with `durable: false` loses at most its
//! checkpoint interval to a SIGKILL; and an open store that met an I/O error says precisely that
//! it must be closed and reopened.

mod common;

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use coven_group::{Config, Coven, Error, Familiar};
use crossbeam_channel::RecvTimeoutError;

/// Upper bound for anything a test waits on; reaching it is a failure.
const GUARD: Duration = Duration::from_secs(30);

/// Runs `call` on its own thread and returns the receiver its result arrives on, so that a call
/// that never returns fails the test at [`GUARD`] instead of hanging it.
fn spawn_call<T: Send + 'static>(
    call: impl FnOnce() -> T + Send + 'static,
) -> crossbeam_channel::Receiver<T> {
    let (answer, outcome) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let _ = answer.send(call());
    });
    outcome
}

#[track_caller]
fn returned<T>(outcome: &crossbeam_channel::Receiver<T>, what: &str) -> T {
    match outcome.recv_timeout(GUARD) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("{what} did not return within {GUARD:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

// ---- 1. calls racing close ----

/// A large adoption keeps the writer busy while sends to several groups race `close`: a turn's
/// start may be answered in the writer's last batch, its members then finish inline, behind the
/// shutdown. Every call returns, with its result or `Closed`, and the store reopens clean.
#[test]
fn send_racing_close_of_a_busy_writer_always_returns() {
    const ROUNDS: u64 = 12;
    const SENDERS: usize = 8;
    const ADOPTED_MESSAGES: usize = 2_000;
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.redb");
        let coven = Arc::new(Coven::open(&path, Config::default()).unwrap());
        let mut familiar = Familiar::new("ada", "Ada", "scripted");
        familiar.model = Some("words:20".into());
        coven.register_familiar(familiar).unwrap();
        let groups: Vec<String> = (0..SENDERS)
            .map(|_| coven.create_group(None, ids(&["ada"]), None).unwrap().id)
            .collect();
        let adopt = |n: u64| {
            let coven = coven.clone();
            let session = fresh_session_id(u128::from(2 * round + n));
            let history: Vec<_> = (0..ADOPTED_MESSAGES)
                .map(|i| user(&format!("m{i}"), at(i as u64)))
                .collect();
            spawn_call(move || coven.adopt_group(None, vec![adopted("ada", &session, history)]))
        };
        // The first keeps the writer busy; the second, queued behind the send, makes the batch
        // that answers the turn's start publish many changes before the writer can stop.
        let adopting = adopt(0);
        let sending: Vec<_> = groups
            .iter()
            .map(|group| {
                let (coven, group) = (coven.clone(), group.clone());
                spawn_call(move || {
                    let turn = coven.send(&group, "hello".into(), None)?;
                    // Started: it ends by itself, or is cancelled by the close.
                    coven
                        .wait_turn(&turn.turn_id, GUARD)
                        .or_else(|err| match err {
                            Error::Closed => Ok(true),
                            other => Err(other),
                        })
                })
            })
            .collect();
        let adopting_after = adopt(1);
        let closing = {
            let coven = coven.clone();
            spawn_call(move || coven.close())
        };
        returned(&closing, "close()");
        for sending in &sending {
            match returned(sending, "send() racing close()") {
                Ok(_) => *outcomes.entry("turn started").or_default() += 1,
                Err(Error::Closed) => *outcomes.entry("send refused").or_default() += 1,
                Err(other) => panic!("round {round}: send racing close answered {other:?}"),
            }
        }
        for adopting in [adopting, adopting_after] {
            match returned(&adopting, "adopt_group() racing close()") {
                Ok(_) | Err(Error::Closed) => {}
                Err(other) => panic!("round {round}: adopt_group racing close answered {other:?}"),
            }
        }
        drop(coven);
        let reopened = Coven::open(&path, Config::default()).unwrap();
        assert_clean_and_idle(&reopened);
        reopened.close();
    }
    eprintln!("{ROUNDS} rounds: {outcomes:?}");
}

// ---- 3. close releases the file ----

/// Readers hammer the store while it closes: each read answers its result or `Closed` (never a
/// storage error about a closed database), and the file can be opened again the moment
/// `close()` returns.
#[test]
fn close_returns_only_once_the_file_is_free_and_racing_reads_answer_closed() {
    const ROUNDS: usize = 150;
    const READERS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("close.redb");
    let group = {
        let coven = Coven::open(&path, Config::default()).unwrap();
        register(&coven, &[("ada", "Ada")]);
        let group = coven.create_group(None, ids(&["ada"]), None).unwrap().id;
        for m in 0..200 {
            coven
                .append_user_message(&group, format!("message {m}"), None)
                .unwrap();
        }
        coven.close();
        group
    };
    let mut reads_before_close = 0;
    for round in 0..ROUNDS {
        let coven = Arc::new(Coven::open(&path, Config::default()).unwrap_or_else(|err| {
            panic!("round {round}: the file is not free after close() returned: {err:?}")
        }));
        let started = Arc::new(std::sync::Barrier::new(READERS + 1));
        let readers: Vec<_> = (0..READERS)
            .map(|r| {
                let (coven, group, started) = (coven.clone(), group.clone(), started.clone());
                spawn_call(move || {
                    let mut reads = 0u64;
                    let mut first = true;
                    loop {
                        // The integrity check is the longest read: a wide window for close.
                        let outcome = match (r + reads as usize) % 4 {
                            0 => coven.get_group(&group).map(drop),
                            1 => coven.events_since(&group, 0, 50).map(drop),
                            _ => coven.check().map(drop),
                        };
                        if first {
                            started.wait();
                            first = false;
                        }
                        match outcome {
                            Ok(()) => reads += 1,
                            Err(Error::Closed) => return Ok(reads),
                            Err(other) => return Err(other),
                        }
                    }
                })
            })
            .collect();
        // Every reader is inside its loop before the close starts.
        started.wait();
        coven.close();
        // At once: no wait for anything to let go of the file.
        let again = Coven::open(&path, Config::default()).unwrap_or_else(|err| {
            panic!("round {round}: reopening right after close() returned failed: {err:?}")
        });
        for reader in &readers {
            match returned(reader, "a read racing close()") {
                Ok(reads) => reads_before_close += reads,
                Err(err) => panic!("round {round}: a read racing close() answered {err:?}"),
            }
        }
        assert_eq!(again.get_group(&group).unwrap().events.len(), 200);
        again.close();
    }
    eprintln!("{ROUNDS} rounds, {reads_before_close} reads answered before the close");
}

// ---- 6. durable: false loses a bounded window ----

/// Set (to the store path) only in the child process.
const STORE_ENV: &str = "COVEN_GROUP_LIFECYCLE_STORE";
/// `quiet` (append, then stop writing) or `steady` (append until killed).
const MODE_ENV: &str = "COVEN_GROUP_LIFECYCLE_MODE";
const CHILD_TEST: &str = "non_durable_child_workload";
const ACK: &str = "@@ack ";
const WAITED: &str = "@@waited";
/// The child's checkpoint interval.
const INTERVAL: Duration = Duration::from_millis(200);
/// What a commit, scheduling on a busy machine and reading the child's pipe may add to the
/// interval: acknowledgements older than `INTERVAL + SLACK` at the kill must survive.
const SLACK: Duration = Duration::from_millis(1000);
const QUIET_APPENDS: usize = 300;

fn ack(line: &str) {
    report_line(ACK, line);
}

/// The child's workload. A no-op unless the parent started this process with `STORE_ENV`.
#[test]
fn non_durable_child_workload() {
    let Ok(path) = std::env::var(STORE_ENV) else {
        return;
    };
    let mode = std::env::var(MODE_ENV).expect("mode");
    let config = Config {
        durable: false,
        checkpoint_interval_ms: INTERVAL.as_millis() as u64,
        ..Config::default()
    };
    let coven = Coven::open(&path, config).expect("child opens the store");
    coven
        .register_familiar(Familiar::new("ada", "Ada", "scripted"))
        .expect("register");
    let group = coven
        .create_group(None, ids(&["ada"]), None)
        .expect("create_group")
        .id;
    ack(&format!("group {group}"));
    let deadline = Instant::now() + GUARD;
    let mut m = 0;
    while Instant::now() < deadline && (mode == "steady" || m < QUIET_APPENDS) {
        let text = format!("m{m}");
        let event = coven
            .append_user_message(&group, text.clone(), None)
            .expect("append");
        ack(&format!("append {} {text}", event.seq));
        m += 1;
    }
    // Quiet: the store is idle from here on. The guarantee is about time, so the child waits
    // past the interval (with the slack) before it tells the parent to kill it.
    thread::sleep(INTERVAL + SLACK);
    println!("{WAITED}");
    thread::sleep(GUARD);
}

/// Kills the child if the parent panics before it does.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the parent read from a child before killing it.
struct Acked {
    group: Option<String>,
    /// (seq, text, when the parent read it).
    appends: Vec<(u64, String, Instant)>,
    group_at: Option<Instant>,
    killed_at: Instant,
}

/// Runs the child in `mode` and SIGKILLs it once `kill_now` says so.
fn run_child(path: &Path, mode: &str, kill_now: impl Fn(&Acked, bool) -> bool) -> Acked {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(STORE_ENV, path)
        .env(MODE_ENV, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let mut child = Reaper(child);
    let mut reader = BufReader::new(child.0.stdout.take().expect("child stdout"));
    let mut acked = Acked {
        group: None,
        appends: Vec::new(),
        group_at: None,
        killed_at: Instant::now(),
    };
    let mut line = String::new();
    let mut killed = false;
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("read child stdout") == 0 {
            break;
        }
        let now = Instant::now();
        // Only complete lines count; libtest's own output may precede a marker on a line.
        let Some(complete) = line.strip_suffix('\n') else {
            continue;
        };
        let waited = complete.ends_with(WAITED);
        if let Some((_, ack)) = complete.split_once(ACK) {
            if let Some(group) = ack.strip_prefix("group ") {
                acked.group = Some(group.to_owned());
                acked.group_at = Some(now);
            } else if let Some(append) = ack.strip_prefix("append ") {
                let (seq, text) = append.split_once(' ').expect("append ack");
                acked
                    .appends
                    .push((seq.parse().unwrap(), text.to_owned(), now));
            }
        }
        if !killed && kill_now(&acked, waited) {
            // SIGKILL: no destructor, no close, no checkpoint at exit.
            child.0.kill().expect("kill the child");
            acked.killed_at = Instant::now();
            killed = true;
        }
    }
    let status = child.0.wait().expect("wait for the child");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the {mode} child was not killed by SIGKILL ({status}) after {} appends",
        acked.appends.len()
    );
    acked
}

/// Reopens the store and checks that every append acknowledged before `boundary` is there.
fn assert_survived(path: &Path, acked: &Acked, boundary: Instant, context: &str) -> usize {
    let coven = Coven::open(path, Config::default()).unwrap();
    assert_clean_and_idle(&coven);
    let group = acked
        .group
        .as_ref()
        .expect("the child acknowledged its group");
    let must_survive: Vec<_> = acked
        .appends
        .iter()
        .filter(|(_, _, at)| *at <= boundary)
        .collect();
    if acked.group_at.is_some_and(|at| at <= boundary) {
        let snapshot = coven.get_group(group).unwrap_or_else(|err| {
            panic!("{context}: the group acknowledged before the boundary is lost: {err:?}")
        });
        assert!(
            coven.get_familiar("ada").is_ok(),
            "{context}: familiar lost"
        );
        assert_seq_contiguous(&snapshot.events);
        for (seq, text, _) in &must_survive {
            let event = snapshot.events.get(*seq as usize - 1).unwrap_or_else(|| {
                panic!(
                    "{context}: seq {seq} acknowledged before the boundary is lost ({} of {} \
                     acknowledged appends survived)",
                    snapshot.events.len(),
                    acked.appends.len()
                )
            });
            assert_eq!(&event.text, text, "{context}: seq {seq} changed");
        }
    }
    coven.close();
    must_survive.len()
}

#[test]
fn a_non_durable_store_loses_at_most_its_checkpoint_interval_to_sigkill() {
    // Quiet: appends, then the store idles past the interval; the kill loses nothing.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quiet.redb");
    let quiet = run_child(&path, "quiet", |_, waited| waited);
    assert_eq!(quiet.appends.len(), QUIET_APPENDS);
    let survived = assert_survived(&path, &quiet, quiet.killed_at, "idle past the interval");
    assert_eq!(survived, QUIET_APPENDS);

    // Steady: appends never stop; what was acknowledged more than the interval (and the slack)
    // before the kill survives, because a busy store makes a batch durable every interval.
    let path = dir.path().join("steady.redb");
    let steady = run_child(&path, "steady", |acked, _| {
        acked
            .group_at
            .is_some_and(|at| at.elapsed() >= 3 * (INTERVAL + SLACK))
    });
    let boundary = steady.killed_at - (INTERVAL + SLACK);
    let survived = assert_survived(&path, &steady, boundary, "killed mid-stream");
    assert!(survived > 0, "no append was old enough to check");
    eprintln!(
        "steady: {} appends acknowledged, the {survived} acknowledged before the boundary all \
         survived",
        steady.appends.len()
    );
}

#[test]
fn a_zero_checkpoint_interval_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refused.redb");
    let config = Config {
        durable: false,
        checkpoint_interval_ms: 0,
        ..Config::default()
    };
    expect_invalid(
        Coven::open(&path, config.clone()).map(drop),
        "config.checkpoint_interval_ms",
    );
    assert!(!path.exists(), "a refused open created the file");
    expect_invalid(
        Coven::open_in_memory(config).map(drop),
        "config.checkpoint_interval_ms",
    );
}

// ---- 9. after an I/O error ----

/// A disk that can be made full: writes, and growing the file, then fail with `ENOSPC`.
#[derive(Debug)]
struct Fullable(Arc<AtomicBool>);

impl Fullable {
    fn refuse_if_full(&self) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

impl DiskFaults for Fullable {
    fn before_write(&self, _bytes: u64) -> io::Result<()> {
        self.refuse_if_full()
    }

    fn before_grow(&self) -> io::Result<()> {
        self.refuse_if_full()
    }
}

#[test]
fn after_a_full_disk_the_open_store_says_it_must_be_closed_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.redb");
    let full = Arc::new(AtomicBool::new(false));
    let backend = FaultyFile::open(&path, Fullable(full.clone()));
    let coven = Coven::open_with_backend(backend, Config::default()).unwrap();
    register(&coven, &[("ada", "Ada")]);
    let group = coven.create_group(None, ids(&["ada"]), None).unwrap().id;
    let kept = coven
        .append_user_message(&group, "kept".into(), None)
        .unwrap();

    full.store(true, Ordering::SeqCst);
    match coven.append_user_message(&group, "refused".into(), None) {
        Err(Error::Storage { reason }) => eprintln!("while full: {reason}"),
        other => panic!("an append on a full disk answered {other:?}"),
    }
    // Space returns; the open store still refuses, and says exactly what to do.
    full.store(false, Ordering::SeqCst);
    for attempt in [
        coven
            .append_user_message(&group, "after".into(), None)
            .map(drop),
        coven.rename_group(&group, "after".into()).map(drop),
    ] {
        match attempt {
            Err(Error::Storage { reason }) => {
                assert!(
                    reason.contains("an earlier I/O error")
                        && reason.contains("close the store (Coven::close) and open it again"),
                    "the refusal does not say the store must be reopened: {reason}"
                );
            }
            other => panic!("a write after the I/O error answered {other:?}"),
        }
    }

    // Closing and reopening is the remedy, and keeps what was acknowledged.
    coven.close();
    drop(coven);
    let coven = Coven::open(&path, Config::default()).unwrap();
    assert_clean_and_idle(&coven);
    let events = coven.get_group(&group).unwrap().events;
    assert_eq!(events.get(kept.seq as usize - 1), Some(&kept));
    coven
        .append_user_message(&group, "space is back".into(), None)
        .unwrap();
    coven.close();
}
