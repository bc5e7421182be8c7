//! Harness faults (invariants 5 and 8): a member whose process crashes mid-stream, hangs past
//! the silence timeout, cannot be started (missing program, broken interpreter, missing CLI,
//! process limit reached), prints 100 MiB, prints bytes that are not UTF-8, floods the terminal
//! with escape sequences or floods stderr gets an error marker on its own reply (or, for output
//! that is only noise, its right text), the other member of its group answers as usual, memory
//! stays bounded, and every process is reaped: no child of this process is left, zombie or not,
//! and nothing is left running in the member's process group.
//!
//! The tests of this file take one lock, so that the /proc scans and the peak-memory figures
//! they read are their own.

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use coven_group::{
    Config, Coven, GroupConversation, GroupEvent, GroupSnapshot, ReplyErrorKind, SessionStatus,
    MAX_REPLY_BYTES,
};
use serde_json::Value;
use tempfile::TempDir;

/// Memory a 100 MiB reply may add to this process's peak resident set: room for the reply cut
/// at [`MAX_REPLY_BYTES`] and stored (its chunks, its change log, its final text) and read back,
/// and far below the 200 MiB and more it takes to keep and store all of it.
const REPLY_BUDGET_KIB: u64 = 96 * 1024;
/// Memory 100 MiB of output that is no reply text (escapes, unknown lines, stderr) may add:
/// a few queued reads and lines, far below the 100 MiB it would take to keep it.
const NOISE_BUDGET_KIB: u64 = 32 * 1024;

fn faulty() -> String {
    fixtures().join("faulty").to_string_lossy().into_owned()
}

/// The steady member's reply: a scripted familiar with model `words:5`.
const STEADY_TEXT: &str = "w0 w1 w2 w3 w4";

/// A file-backed store with one group: the member under test, `faulty`, on `harness` (with
/// `argv` for the command harness), and a scripted member, `steady`, that must not notice.
struct Scene {
    coven: Arc<Coven>,
    group: GroupConversation,
    root: PathBuf,
    _dir: TempDir,
}

impl Scene {
    fn new(harness: &str, argv: &[&str], config: Config) -> Self {
        init_path();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let root = root.canonicalize().unwrap();
        let mut allowed_programs = vec![faulty(), paint()];
        allowed_programs.extend(config.allowed_programs.iter().cloned());
        let config = Config {
            durable: false,
            allowed_programs,
            ..config
        };
        let coven = Arc::new(Coven::open(dir.path().join("store.redb"), config).unwrap());
        let mut member = familiar("faulty", "Faulty", harness);
        member.argv = argv.iter().map(|arg| (*arg).to_owned()).collect();
        coven.register_familiar(member).unwrap();
        let mut steady = familiar("steady", "Steady", "scripted");
        steady.model = Some("words:5".into());
        coven.register_familiar(steady).unwrap();
        let group = coven
            .create_group(
                None,
                ids(&["faulty", "steady"]),
                Some(root.to_string_lossy().into_owned()),
            )
            .unwrap();
        Self {
            coven,
            group,
            root,
            _dir: dir,
        }
    }

    /// Sends a message selecting the fakes' `scenario`, waits for the turn, checks the steady
    /// member and every process, and returns the faulty member's reply.
    fn turn(&self, scenario: &str) -> GroupEvent {
        let text = format!("Please answer. SCENARIO:{scenario}");
        let turn = self.coven.send(&self.group.id, text, None).unwrap().turn_id;
        finish_turn(&self.coven, &turn);
        let snapshot = self.coven.get_group(&self.group.id).unwrap();
        assert_seq_contiguous(&snapshot.events);
        assert_steady(&snapshot, &turn);
        // The library reaps each child before the reply's end commits: no waiting here.
        assert_no_children();
        let event = reply_of(&snapshot, &turn, "faulty").clone();
        assert!(!event.streaming);
        event
    }

    fn status(&self) -> SessionStatus {
        let session = self.group.session_of("faulty").unwrap();
        self.coven.get_session(session).unwrap().status
    }

    /// (pid, process group, helper pid) of the fake CLI's last run, from its log.
    fn fake_pids(&self, program: &str) -> (i32, i32, i32) {
        let log = std::fs::read_to_string(self.root.join(format!("fake-{program}.jsonl")))
            .expect("the fake logged its run");
        let last: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        let field = |name: &str| last[name].as_i64().unwrap_or(0) as i32;
        (field("pid"), field("pgid"), field("helper_pid"))
    }
}

fn assert_steady(snapshot: &GroupSnapshot, turn: &str) {
    let steady = reply_of(snapshot, turn, "steady");
    assert_eq!(steady.error, None, "the steady member was affected");
    assert_eq!(steady.text, STEADY_TEXT);
}

#[track_caller]
fn assert_failed(event: &GroupEvent, kind: ReplyErrorKind, mentions: &str) -> String {
    let error = event
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("no error marker on {:?}", summary(event)));
    assert_eq!(error.kind, kind, "{error:?}");
    assert!(
        error.message.contains(mentions),
        "the error {:?} does not mention {mentions:?}",
        error.message
    );
    error.message.clone()
}

#[track_caller]
fn assert_ok(event: &GroupEvent, text: &str) {
    assert_eq!(event.error, None, "{:?}", summary(event));
    assert_eq!(event.text, text);
}

/// An event with its text shortened, for failure messages about 4 MiB replies.
fn summary(event: &GroupEvent) -> String {
    let text: String = event.text.chars().take(80).collect();
    format!(
        "{:?} ({} bytes of text: {text:?}...)",
        event.error,
        event.text.len()
    )
}

// ---- processes ----

/// `(pid, state)` of every process whose parent is this process.
fn children() -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    processes()
        .into_iter()
        .filter(|p| p.ppid == me)
        .map(|p| (p.pid, p.state))
        .collect()
}

/// No child of this process is left, running or zombie: every run was reaped.
#[track_caller]
fn assert_no_children() {
    let left = children();
    assert!(
        left.is_empty(),
        "children left behind (pid, state): {left:?}"
    );
}

// ---- memory ----

/// Runs `work` and returns by how much it raised this process's peak resident set (KiB).
fn peak_growth<T>(work: impl FnOnce() -> T) -> (T, u64) {
    reset_peak_rss();
    let before = status_kib("VmRSS:");
    let out = work();
    let peak = status_kib("VmHWM:");
    (out, peak.saturating_sub(before))
}

#[track_caller]
fn assert_bounded(what: &str, growth_kib: u64, budget_kib: u64) {
    eprintln!("{what}: peak resident set grew by {growth_kib} KiB");
    assert!(
        growth_kib < budget_kib,
        "{what}: peak memory grew by {} MiB (budget {} MiB)",
        growth_kib / 1024,
        budget_kib / 1024
    );
}

/// Runs `program` (claude or codex) in `scenario`, where the fake starts a helper child in its
/// process group; once the turn ended, both are gone. Returns the reply and the session status.
fn cli_with_helper(program: &str, scenario: &str, config: Config) -> (GroupEvent, SessionStatus) {
    let scene = Scene::new(program, &[], config);
    let event = scene.turn(scenario);
    let (pid, pgid, helper) = scene.fake_pids(program);
    assert_eq!(pid, pgid, "the CLI leads its own process group");
    assert_processes_gone(&[pid, helper], pgid);
    (event, scene.status())
}

/// Runs `program mode <pidfile>` as the command member; the program writes its pid, its
/// process group and the pid of a helper child there. Once the turn ended, both are gone.
fn command_with_helper(program: &str, mode: &str, config: Config) -> (GroupEvent, SessionStatus) {
    let pids = tempfile::NamedTempFile::new().unwrap();
    let pidfile = pids.path().to_str().unwrap().to_owned();
    let scene = Scene::new("command", &[program, mode, &pidfile], config);
    let event = scene.turn("none");
    let numbers: Vec<i32> = std::fs::read_to_string(pids.path())
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        numbers[0], numbers[1],
        "the program leads its own process group"
    );
    assert_processes_gone(&[numbers[0], numbers[2]], numbers[1]);
    (event, scene.status())
}

// ---- crash mid-stream ----

#[test]
fn a_crash_mid_stream_fails_only_that_member_and_kills_its_group() {
    let _serial = serial();
    for program in ["claude", "codex"] {
        let (event, status) = cli_with_helper(program, "crash-helper", Config::default());
        assert_failed(&event, ReplyErrorKind::Failed, "killed by signal 9");
        assert_eq!(event.text, "partial", "the partial text is kept");
        assert_eq!(status, SessionStatus::Failed);
    }
    let (event, status) = command_with_helper(&faulty(), "crash", Config::default());
    assert_failed(&event, ReplyErrorKind::Failed, "killed");
    assert_eq!(event.text, "partial\n");
    assert_eq!(status, SessionStatus::Failed);
}

// ---- hang past the silence timeout ----

#[test]
fn a_hang_past_the_silence_timeout_fails_only_that_member() {
    let _serial = serial();
    let config = || Config {
        silence_timeout_ms: 800,
        ..Config::default()
    };
    for program in ["claude", "codex"] {
        let (event, status) = cli_with_helper(program, "hang", config());
        assert_failed(&event, ReplyErrorKind::TimedOut, "no output for 800 ms");
        assert_eq!(event.text, "waiting");
        assert_eq!(status, SessionStatus::Failed);
    }
    let (event, status) = command_with_helper(&paint(), "hang", config());
    assert_failed(&event, ReplyErrorKind::TimedOut, "no output for 800 ms");
    assert_eq!(event.text, "waiting\n");
    assert_eq!(status, SessionStatus::Failed);
}

// ---- spawn failures ----

#[test]
fn a_program_that_cannot_start_fails_only_that_member() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // Executable, but its interpreter does not exist: exec itself fails.
    let broken = dir.path().join("broken-interpreter");
    std::fs::write(&broken, "#!/nonexistent/coven-interpreter\n").unwrap();
    let not_executable = dir.path().join("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // (program, what the error mentions, the reply's text when it is known to be empty)
    let cases = [
        (
            "coven-group-test-no-such-program".to_owned(),
            "not found",
            true,
        ),
        // The failed exec is reported by the spawn itself, before any output.
        (
            broken.to_string_lossy().into_owned(),
            "broken-interpreter: No such file or directory",
            true,
        ),
        (
            not_executable.to_string_lossy().into_owned(),
            "not found",
            true,
        ),
        (dir.path().to_string_lossy().into_owned(), "not found", true),
    ];
    for (program, mentions, empty) in cases {
        let config = Config {
            allowed_programs: vec![program.clone()],
            ..Config::default()
        };
        let scene = Scene::new("command", &[&program], config);
        let event = scene.turn("none");
        assert_failed(&event, ReplyErrorKind::Failed, mentions);
        if empty {
            assert_eq!(event.text, "");
        }
        assert_eq!(scene.status(), SessionStatus::Failed);
    }
}

#[test]
fn a_missing_cli_fails_only_that_member() {
    let _serial = serial();
    let empty = tempfile::tempdir().unwrap();
    // PATH is process-wide: the scenario runs in a copy of this binary whose PATH is empty.
    in_child("missing-clis", |command| {
        command.env("PATH", empty.path());
    });
}

fn missing_clis() {
    let coven = Coven::open_in_memory(Config::default()).unwrap();
    let root = tempfile::tempdir().unwrap();
    for (id, harness) in [("cl", "claude"), ("cx", "codex"), ("steady", "scripted")] {
        let mut member = familiar(id, id, harness);
        member.model = (harness == "scripted").then(|| "words:5".to_owned());
        coven.register_familiar(member).unwrap();
    }
    let group = coven
        .create_group(
            None,
            ids(&["cl", "cx", "steady"]),
            Some(root.path().to_string_lossy().into_owned()),
        )
        .unwrap();
    let turn = coven.send(&group.id, "hi".into(), None).unwrap().turn_id;
    finish_turn(&coven, &turn);
    let snapshot = coven.get_group(&group.id).unwrap();
    assert_steady(&snapshot, &turn);
    let message = assert_failed(
        reply_of(&snapshot, &turn, "cl"),
        ReplyErrorKind::Failed,
        "`claude` was not found on PATH",
    );
    assert!(message.contains("npm install"), "{message}");
    let message = assert_failed(
        reply_of(&snapshot, &turn, "cx"),
        ReplyErrorKind::Failed,
        "`codex` was not found on PATH",
    );
    assert!(message.contains("npm install"), "{message}");
    assert_no_children();
}

// ---- process limit reached ----

/// The uid the process-limit scenario runs as when the tests run as root (root ignores
/// RLIMIT_NPROC): one no other process uses, so the limit counts this scenario's tasks only.
const UNPRIVILEGED_UID: u32 = 54_321;

#[test]
fn the_process_limit_reached_fails_runs_cleanly_and_leaves_no_zombie() {
    let _serial = serial();
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let reachable = reachable_by_others();
    if let Err(why) = &reachable {
        // Without the uid switch the limit is not enforced on root, and only the checks that
        // hold either way (each run ends cleanly, nothing left behind) can fail.
        eprintln!("the process-limit scenario runs as this user: {why}");
    }
    in_child("process-limit", |command| {
        if root && reachable.is_ok() {
            command.uid(UNPRIVILEGED_UID).gid(UNPRIVILEGED_UID);
        }
    });
}

/// Whether another uid can run this test binary and the fixtures and write temporary files.
fn reachable_by_others() -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .map(|meta| meta.permissions().mode())
            .unwrap_or(0)
    };
    let exe = std::env::current_exe().unwrap();
    let fixtures = fixtures();
    let python = fake_bin().join("fakecli.py");
    for file in [exe.as_path(), python.as_path()] {
        if mode(file) & 0o004 == 0 {
            return Err(format!("{} is not readable by others", file.display()));
        }
        for dir in file.ancestors().skip(1) {
            if mode(dir) & 0o001 == 0 {
                return Err(format!("{} is not searchable by others", dir.display()));
            }
        }
    }
    if mode(&fixtures.join("paint")) & 0o005 != 0o005 {
        return Err("the fixtures are not executable by others".into());
    }
    if mode(&std::env::temp_dir()) & 0o003 != 0o003 {
        return Err("the temporary directory is not writable by others".into());
    }
    Ok(())
}

/// Tasks (processes and threads) whose real uid is ours, and whether all are this process's.
fn tasks_of_my_uid() -> (usize, bool) {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() }.to_string();
    let me = std::process::id();
    let (mut tasks, mut exclusive) = (0, true);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let real_uid = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next());
        if real_uid != Some(uid.as_str()) {
            continue;
        }
        let threads: usize = status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(1);
        tasks += threads;
        exclusive &= pid == me;
    }
    (tasks, exclusive)
}

fn set_nproc(soft: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls get a valid pointer to a live rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NPROC, &mut limit), 0);
        limit.rlim_cur = soft.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NPROC, &limit), 0);
    }
}

/// Waits until this process is back to `threads` threads (the helpers of the last run have
/// exited), so the next limit counts from the same place. Bounded: a leak fails the test.
fn settle(threads: usize) {
    let deadline = Instant::now() + GUARD;
    while std::fs::read_dir("/proc/self/task").unwrap().count() > threads {
        assert!(Instant::now() < deadline, "helper threads did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn process_limit() {
    init_path();
    let root = tempfile::tempdir().unwrap();
    let config = Config {
        // Runs one at a time, in member order, so the limit meets them in a known order.
        max_concurrent_runs: 1,
        allowed_programs: vec![paint()],
        ..Config::default()
    };
    let coven = Coven::open_in_memory(config).unwrap();
    // The store's own threads; each run's helpers come and go around them.
    let threads = std::fs::read_dir("/proc/self/task").unwrap().count();
    let mut pty = familiar("pty", "Pty", "command");
    pty.argv = vec![paint(), "colors".into()];
    coven.register_familiar(pty).unwrap();
    coven
        .register_familiar(familiar("cl", "Claude", "claude"))
        .unwrap();
    coven
        .register_familiar(familiar("cx", "Codex", "codex"))
        .unwrap();
    let expected = [
        ("cl", "Hello, world!"),
        ("cx", "Hello\n\nworld"),
        ("pty", "red plain\nnext\ndone\n"),
    ];
    let groups: Vec<(&str, &str, GroupConversation)> = expected
        .iter()
        .map(|(id, text)| {
            let group = coven
                .create_group(
                    None,
                    ids(&[id]),
                    Some(root.path().to_string_lossy().into_owned()),
                )
                .unwrap();
            (*id, *text, group)
        })
        .collect();
    let turn = |group: &GroupConversation, id: &str| {
        let turn = coven
            .send(&group.id, "SCENARIO:normal".into(), None)
            .unwrap()
            .turn_id;
        finish_turn(&coven, &turn);
        let snapshot = coven.get_group(&group.id).unwrap();
        assert_seq_contiguous(&snapshot.events);
        reply_of(&snapshot, &turn, id).clone()
    };
    // Every member answers without a limit, as this uid too.
    for (id, text, group) in &groups {
        assert_ok(&turn(group, id), text);
    }
    let mut outcomes = Vec::new();
    for (id, text, group) in &groups {
        // `extra` more tasks allowed: 1 is the run's own thread, so the process cannot start;
        // 2 lets it start but not its first helper thread; later ones fail later or not at all.
        for extra in 1..=6 {
            settle(threads);
            let (tasks, exclusive) = tasks_of_my_uid();
            set_nproc((tasks + extra) as libc::rlim_t);
            let event = turn(group, id);
            set_nproc(libc::RLIM_INFINITY);
            // Whatever failed, nothing is left unreaped or running.
            assert_no_children();
            match &event.error {
                None => assert_eq!(event.text, *text),
                Some(error) => {
                    assert_eq!(error.kind, ReplyErrorKind::Failed, "{error:?}");
                    assert!(
                        error.message.contains("cannot start"),
                        "{id}: unexpected failure under the limit: {error:?}"
                    );
                }
            }
            if exclusive && extra <= 2 {
                let error = event.error.as_ref().unwrap_or_else(|| {
                    panic!("{id} started under a limit of {extra} more task(s)")
                });
                let expected = if extra == 1 {
                    "Resource temporarily unavailable"
                } else {
                    "cannot start a thread to watch"
                };
                // The PTY harness has no stdin helper: its first helper is its reader.
                assert!(
                    error.message.contains(expected) || (*id == "pty" && extra == 2),
                    "{id}, {extra} more task(s): {error:?}"
                );
            }
            outcomes.push(format!(
                "{id}+{extra}: {}",
                event.error.map_or("ok".to_owned(), |error| error.message)
            ));
        }
        // With the limit lifted, the member answers again.
        settle(threads);
        assert_ok(&turn(group, id), text);
    }
    assert_no_children();
    eprintln!("outcomes under RLIMIT_NPROC:\n{}", outcomes.join("\n"));
}

// ---- scenarios in a copy of this binary ----

const CHILD_ENV: &str = "COVEN_FAULT_SCENARIO";

/// Runs `scenario` in a fresh copy of this test binary (for what is process-wide: PATH, the
/// uid, the process limit), configured by `configure`, and fails if it fails.
fn in_child(scenario: &str, configure: impl FnOnce(&mut Command)) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "scenario_in_a_child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, scenario)
        .current_dir(std::env::temp_dir());
    configure(&mut command);
    let output = command.output().expect("run this test binary again");
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "scenario {scenario} failed in its child process:\n{}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the scenario did not run"
    );
}

/// Not a test of its own: the body of [`in_child`]'s scenarios, which passes at once when this
/// binary was not started for one.
#[test]
fn scenario_in_a_child_process() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("missing-clis") => missing_clis(),
        Ok("process-limit") => process_limit(),
        Ok(other) => panic!("unknown scenario {other:?}"),
        Err(_) => {}
    }
}

// ---- 100 MiB of output ----

#[test]
fn a_hundred_mib_reply_is_cut_at_the_limit_in_bounded_memory() {
    let _serial = serial();
    let faulty = faulty();
    let scene = Scene::new("command", &[&faulty, "flood", "100"], Config::default());
    let (event, growth) = peak_growth(|| scene.turn("none"));
    assert_failed(&event, ReplyErrorKind::Failed, "exceeded the limit");
    assert_eq!(event.text.len(), MAX_REPLY_BYTES);
    let line = format!("{}\n", "x".repeat(1023));
    assert!(line.repeat(MAX_REPLY_BYTES / 1024) == event.text);
    assert_bounded("command flood", growth, REPLY_BUDGET_KIB);

    // Text deltas of three-byte characters: the cut falls on a character boundary.
    let scene = Scene::new("claude", &[], Config::default());
    let (event, growth) = peak_growth(|| scene.turn("flood"));
    assert_failed(&event, ReplyErrorKind::Failed, "exceeded the limit");
    assert_eq!(event.text.len(), MAX_REPLY_BYTES / 3 * 3);
    assert!(event.text.chars().all(|c| c == '\u{2713}'));
    let (pid, pgid, _) = scene.fake_pids("claude");
    assert_processes_gone(&[pid], pgid);
    assert_bounded("claude flood", growth, REPLY_BUDGET_KIB);

    // One 100 MiB line: cut at the line limit, which is not JSON any more.
    let scene = Scene::new("codex", &[], Config::default());
    let (event, growth) = peak_growth(|| scene.turn("flood"));
    assert_failed(
        &event,
        ReplyErrorKind::Failed,
        "codex produced invalid output",
    );
    assert_eq!(event.text, "");
    assert_bounded("codex one-line flood", growth, REPLY_BUDGET_KIB);
}

#[test]
fn a_hundred_mib_of_noise_passes_through_in_bounded_memory() {
    let _serial = serial();
    // Escape sequences, then an OSC string left open for 100 MiB: the text is what is visible.
    let faulty = faulty();
    let scene = Scene::new("command", &[&faulty, "escapes", "100"], Config::default());
    let (event, growth) = peak_growth(|| scene.turn("none"));
    assert_ok(&event, "start\nmiddle\nend\n");
    assert_bounded("command escape flood", growth, NOISE_BUDGET_KIB);

    // 100 lines of 1 MiB of a type claude may add some day, then the reply.
    let scene = Scene::new("claude", &[], Config::default());
    let (event, growth) = peak_growth(|| scene.turn("unknown-flood"));
    assert_ok(&event, "Hello, world!");
    assert_bounded("claude unknown-line flood", growth, NOISE_BUDGET_KIB);
}

// ---- invalid UTF-8 ----

#[test]
fn invalid_utf8_is_replaced_in_a_terminal_and_refused_in_json() {
    let _serial = serial();
    let faulty = faulty();
    let scene = Scene::new("command", &[&faulty, "invalid-utf8"], Config::default());
    let expected = String::from_utf8_lossy(b"a\xffb\xc3(\xe2c\n").into_owned();
    assert_ok(&scene.turn("none"), &expected);

    for (program, partial) in [("claude", "ok "), ("codex", "ok")] {
        let scene = Scene::new(program, &[], Config::default());
        let event = scene.turn("invalid-utf8");
        let message = assert_failed(
            &event,
            ReplyErrorKind::Failed,
            &format!("{program} produced invalid output"),
        );
        assert!(
            message.contains("bad "),
            "the error shows the line: {message}"
        );
        assert_eq!(event.text, partial);
        let (pid, pgid, _) = scene.fake_pids(program);
        assert_processes_gone(&[pid], pgid);
    }
}

// ---- stderr noise ----

#[test]
fn stderr_noise_is_drained_and_only_its_tail_is_kept() {
    let _serial = serial();
    let scene = Scene::new("claude", &[], Config::default());
    let (event, growth) = peak_growth(|| scene.turn("noise"));
    assert_ok(&event, "Hello, world!");
    assert_bounded("claude stderr noise", growth, NOISE_BUDGET_KIB);

    let event = scene.turn("noise-fail");
    let message = assert_failed(
        &event,
        ReplyErrorKind::Failed,
        "claude exited with status 1",
    );
    assert!(message.ends_with("last words"), "{message:?}");
    assert!(
        message.len() < 2048 + 100,
        "the error carries {} bytes of stderr",
        message.len()
    );
    assert_eq!(event.text, "Hello, world!");
}

#[test]
fn a_host_harness_past_the_reply_limit_is_cut_and_fails() {
    let _serial = serial();
    let coven = Coven::open_in_memory(Config::default()).unwrap();
    let puppet = Puppet::new();
    coven.register_host_harness("host", puppet.clone()).unwrap();
    coven
        .register_familiar(familiar("faulty", "Faulty", "host"))
        .unwrap();
    let mut steady = familiar("steady", "Steady", "scripted");
    steady.model = Some("words:5".into());
    coven.register_familiar(steady).unwrap();
    let group = coven
        .create_group(None, ids(&["faulty", "steady"]), None)
        .unwrap();
    let hand = puppet.hand("faulty");
    let turn = coven.send(&group.id, "hi".into(), None).unwrap().turn_id;
    hand.request();
    // One byte short of the limit, then a two-byte character that does not fit: the run is
    // stopped there (the puppet returns once `is_cancelled` turns true), with no finish step.
    hand.say(&"h".repeat(MAX_REPLY_BYTES - 1));
    hand.say("é and more");
    finish_turn(&coven, &turn);
    let snapshot = coven.get_group(&group.id).unwrap();
    assert_steady(&snapshot, &turn);
    let event = reply_of(&snapshot, &turn, "faulty");
    assert_failed(event, ReplyErrorKind::Failed, "exceeded the limit");
    assert_eq!(event.text.len(), MAX_REPLY_BYTES - 1);
    assert!(event.text.bytes().all(|b| b == b'h'));
}
