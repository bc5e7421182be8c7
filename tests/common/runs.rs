//! Helpers for the tests that run turns: the fake CLIs on PATH, a host harness the test drives
//! step by step, waiting on the timeline without sleeping, and process checks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use coven_group::{
    Coven, Error, EventKind, Familiar, GroupChange, GroupEvent, GroupSnapshot, GroupUpdate,
    Harness, ReplySink, TurnRequest,
};

/// Upper bound for anything a test waits on; reaching it is a failure, never the expected path.
pub const GUARD: Duration = Duration::from_secs(30);

/// `tests/fixtures` of this crate.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Directory holding the fake `claude` and `codex` (first on PATH once [`init_path`] ran).
pub fn fake_bin() -> PathBuf {
    fixtures().join("bin")
}

/// Absolute path of the PTY test program.
pub fn paint() -> String {
    fixtures().join("paint").to_string_lossy().into_owned()
}

static PATH_ONCE: Once = Once::new();

/// Puts the fake CLIs first on this process's PATH (children inherit it). Every test of a binary
/// that runs processes calls this before it opens a store, so PATH is set once, before any other
/// thread of the binary reads it.
pub fn init_path() {
    PATH_ONCE.call_once(|| {
        use std::os::unix::fs::PermissionsExt;
        // A checkout that lost the exec bits still runs the fixtures.
        for script in [
            fake_bin().join("claude"),
            fake_bin().join("codex"),
            fixtures().join("paint"),
        ] {
            let mut permissions = std::fs::metadata(&script)
                .unwrap_or_else(|err| panic!("fixture {}: {err}", script.display()))
                .permissions();
            if permissions.mode() & 0o111 != 0o111 {
                permissions.set_mode(0o755);
                std::fs::set_permissions(&script, permissions).expect("make a fixture executable");
            }
        }
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![fake_bin()];
        // The interpreter's own directory next, so `#!/usr/bin/env python3` skips version-manager
        // shims (faster start, fewer processes per run).
        if let Some(python_dir) = python_dir(&old) {
            dirs.push(python_dir);
        }
        dirs.extend(std::env::split_paths(&old));
        let path = std::env::join_paths(dirs).expect("PATH entries");
        std::env::set_var("PATH", path);
    });
}

fn python_dir(path: &std::ffi::OsStr) -> Option<PathBuf> {
    let output = std::process::Command::new("python3")
        .env("PATH", path)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    let exe = String::from_utf8(output.stdout).ok()?;
    Path::new(exe.trim()).parent().map(Path::to_path_buf)
}

/// A familiar with the given harness kind.
pub fn familiar(id: &str, name: &str, harness: &str) -> Familiar {
    Familiar::new(id, name, harness)
}

/// Waits (on the store's long-poll, no sleeping) until the group's snapshot satisfies `done`.
pub fn wait_until(
    coven: &Coven,
    group_id: &str,
    what: &str,
    done: impl Fn(&GroupSnapshot) -> bool,
) -> GroupSnapshot {
    let deadline = Instant::now() + GUARD;
    loop {
        let snapshot = coven.get_group(group_id).expect("get_group");
        if done(&snapshot) {
            return snapshot;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {what}; last snapshot: {:#?}",
            snapshot.events
        );
        coven
            .wait_for_changes(group_id, snapshot.rev, 1, left)
            .expect("wait_for_changes");
    }
}

/// Waits for the turn to end, failing the test at the guard timeout.
pub fn finish_turn(coven: &Coven, turn_id: &str) {
    assert!(
        coven.wait_turn(turn_id, GUARD).expect("wait_turn"),
        "turn {turn_id} did not end within {GUARD:?}"
    );
}

/// The familiar events of a snapshot.
pub fn replies(snapshot: &GroupSnapshot) -> Vec<&GroupEvent> {
    snapshot
        .events
        .iter()
        .filter(|event| event.kind == EventKind::Familiar)
        .collect()
}

/// The one reply of `familiar` to `turn_id`.
pub fn reply_of<'a>(snapshot: &'a GroupSnapshot, turn_id: &str, familiar: &str) -> &'a GroupEvent {
    let found: Vec<&GroupEvent> = snapshot
        .events
        .iter()
        .filter(|event| {
            event.kind == EventKind::Familiar
                && event.familiar_id.as_deref() == Some(familiar)
                && event.turn_id.as_deref() == Some(turn_id)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one reply of {familiar} to turn {turn_id}: {:#?}",
        snapshot.events
    );
    found[0]
}

/// The text a reply received through the change log: its first output plus every delta.
pub fn streamed_text(changes: &[GroupChange], seq: u64) -> String {
    let mut text = String::new();
    for change in changes {
        match &change.update {
            GroupUpdate::EventAppended { event } if event.seq == seq => text.push_str(&event.text),
            GroupUpdate::ReplyDelta {
                seq: delta_seq,
                text: delta,
                ..
            } if *delta_seq == seq => text.push_str(delta),
            _ => {}
        }
    }
    text
}

// ---- a host harness the test drives ----

/// One instruction for a [`Puppet`] run.
pub enum Step {
    /// `sink.delta(text)`.
    Say(String),
    /// `sink.set_resume_token(token)`.
    Token(String),
    /// `sink.fail(message)`.
    Fail(String),
    /// Return `Ok(true)`: the reply is complete.
    Return,
    /// Return `Ok(false)`: the reply did not complete.
    ReturnIncomplete,
    /// Return `Err(Error::Harness { reason })`.
    ReturnErr(String),
    /// Panic with the message.
    Panic(String),
}

#[derive(Clone)]
struct Strings {
    steps: Receiver<Step>,
    acks: Sender<()>,
    requests: Sender<TurnRequest>,
}

/// A host harness whose runs do exactly what the test tells them, one step at a time. A run with
/// no step to do waits, and returns as soon as its member is cancelled or timed out.
#[derive(Default)]
pub struct Puppet {
    strings: Mutex<HashMap<String, Strings>>,
}

/// The test's end of one familiar's runs (all of its turns).
pub struct Hand {
    familiar: String,
    steps: Sender<Step>,
    acks: Receiver<()>,
    requests: Receiver<TurnRequest>,
}

impl Puppet {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Controls the runs of `familiar_id`.
    pub fn hand(&self, familiar_id: &str) -> Hand {
        let (steps_tx, steps) = crossbeam_channel::unbounded();
        let (acks, acks_rx) = crossbeam_channel::unbounded();
        let (requests, requests_rx) = crossbeam_channel::unbounded();
        self.strings.lock().unwrap().insert(
            familiar_id.to_owned(),
            Strings {
                steps,
                acks,
                requests,
            },
        );
        Hand {
            familiar: familiar_id.to_owned(),
            steps: steps_tx,
            acks: acks_rx,
            requests: requests_rx,
        }
    }
}

impl Harness for Puppet {
    fn run_turn(&self, request: TurnRequest, sink: Arc<ReplySink>) -> coven_group::Result<bool> {
        let strings = self
            .strings
            .lock()
            .unwrap()
            .get(&request.familiar.id)
            .cloned();
        let Some(strings) = strings else {
            return Err(Error::Harness {
                reason: format!("no hand for {}", request.familiar.id),
            });
        };
        let _ = strings.requests.send(request);
        loop {
            if sink.is_cancelled() {
                return Ok(true);
            }
            let step = match strings.steps.recv_timeout(Duration::from_millis(5)) {
                Ok(step) => step,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ok(true),
            };
            let outcome = match step {
                Step::Say(text) => {
                    sink.delta(text);
                    None
                }
                Step::Token(token) => {
                    sink.set_resume_token(token);
                    None
                }
                Step::Fail(message) => {
                    sink.fail(message);
                    None
                }
                Step::Return => Some(Ok(true)),
                Step::ReturnIncomplete => Some(Ok(false)),
                Step::ReturnErr(reason) => Some(Err(Error::Harness { reason })),
                Step::Panic(message) => {
                    let _ = strings.acks.send(());
                    panic!("{message}");
                }
            };
            let _ = strings.acks.send(());
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
    }
}

impl Hand {
    /// Sends a step and waits until the run has carried it out.
    pub fn step(&self, step: Step) {
        self.steps.send(step).expect("the puppet is gone");
        self.acks.recv_timeout(GUARD).unwrap_or_else(|_| {
            panic!(
                "{}'s run did not carry out a step within {GUARD:?}",
                self.familiar
            )
        });
    }

    pub fn say(&self, text: &str) {
        self.step(Step::Say(text.to_owned()));
    }

    /// Ends the run normally.
    pub fn finish(&self) {
        self.step(Step::Return);
    }

    /// The request of the next run of this familiar (waits for the run to start).
    pub fn request(&self) -> TurnRequest {
        self.requests
            .recv_timeout(GUARD)
            .unwrap_or_else(|_| panic!("{}'s run did not start within {GUARD:?}", self.familiar))
    }
}

// ---- processes ----

/// True once `pid` names no live process: it does not exist, or it is a zombie (dead, waiting
/// for a parent outside the library to reap it, e.g. an init that does not reap).
pub fn process_gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence and permission; no memory is involved.
    let status = unsafe { libc::kill(pid, 0) };
    if status != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X")
        })
        .unwrap_or(true)
}

/// One process as `/proc/<pid>/stat` describes it.
pub struct ProcStat {
    pub pid: i32,
    pub state: String,
    pub ppid: i32,
    pub pgrp: i32,
}

/// Every process `/proc` lists now (processes that vanish mid-scan are skipped).
pub fn processes() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command (which may hold spaces and parentheses): state, ppid, pgrp.
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            Some(ProcStat {
                pid,
                state: fields.next()?.to_owned(),
                ppid: fields.next()?.parse().ok()?,
                pgrp: fields.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// True once no live process is left in process group `pgid`.
pub fn group_gone(pgid: i32) -> bool {
    !processes()
        .iter()
        .any(|p| p.pgrp == pgid && !matches!(p.state.as_str(), "Z" | "X"))
}

/// Waits (bounded) until every given pid and the process group are gone. A killed process
/// disappears asynchronously, so this polls /proc; the bound only turns a leak into a failure.
pub fn assert_processes_gone(pids: &[i32], pgid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|pid| !process_gone(*pid))
            .collect();
        let group_alive = !group_gone(pgid);
        if alive.is_empty() && !group_alive {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still running after the run ended: pids {alive:?}, process group {pgid} alive: {group_alive}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
