//! The built-in process harnesses against fake CLIs (tests/fixtures): `claude` stream-json,
//! `codex exec --json`, the `command` harness in a PTY, and the path guard (invariants 5 and 8).
//! The fakes pick their behaviour from `SCENARIO:<name>` in the prompt and log each run (argv,
//! pids, cwd, emitted id) to `fake-<program>.jsonl` in their working directory.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use coven_group::{
    Config, Coven, Error, GroupConversation, GroupEvent, ReplyErrorKind, Session, SessionStatus,
};
use serde_json::Value;
use tempfile::TempDir;

fn store(config: Config) -> Arc<Coven> {
    init_path();
    Arc::new(Coven::open_in_memory(config).expect("open an in-memory store"))
}

/// A temporary project root, canonicalized (the fakes report canonical cwds).
fn project() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    (dir, root)
}

/// The runs a fake logged in `dir`.
fn records(dir: &Path, program: &str) -> Vec<Value> {
    match std::fs::read_to_string(dir.join(format!("fake-{program}.jsonl"))) {
        Ok(text) => text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a fake's log line"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn argv(record: &Value) -> Vec<String> {
    record["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap().to_owned())
        .collect()
}

fn pid(record: &Value, field: &str) -> i32 {
    record[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} in {record}")) as i32
}

/// One group whose only member runs on `harness`, in its own project root.
struct Single {
    coven: Arc<Coven>,
    group: GroupConversation,
    _dir: TempDir,
    root: PathBuf,
}

impl Single {
    fn new(harness: &str, config: Config) -> Self {
        let coven = store(config);
        let (dir, root) = project();
        coven
            .register_familiar(familiar("agent", "Agent", harness))
            .unwrap();
        let group = coven
            .create_group(
                None,
                ids(&["agent"]),
                Some(root.to_string_lossy().into_owned()),
            )
            .unwrap();
        Self {
            coven,
            group,
            _dir: dir,
            root,
        }
    }

    fn send(&self, scenario: &str) -> String {
        let text = format!("Please answer. SCENARIO:{scenario}");
        self.coven.send(&self.group.id, text, None).unwrap().turn_id
    }

    /// Sends a message selecting `scenario` and returns the member's finished reply.
    fn turn(&self, scenario: &str) -> GroupEvent {
        let turn = self.send(scenario);
        finish_turn(&self.coven, &turn);
        let snapshot = self.coven.get_group(&self.group.id).unwrap();
        assert_seq_contiguous(&snapshot.events);
        let event = reply_of(&snapshot, &turn, "agent").clone();
        assert!(!event.streaming);
        event
    }

    fn session(&self) -> Session {
        self.coven
            .get_session(self.group.session_of("agent").unwrap())
            .unwrap()
    }
}

fn assert_ok(event: &GroupEvent, text: &str) {
    assert_eq!(event.error, None, "{event:#?}");
    assert_eq!(event.text, text);
}

fn assert_failed(event: &GroupEvent, kind: ReplyErrorKind, text: &str, message: &str) {
    let error = event
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("no error marker on {event:#?}"));
    assert_eq!(error.kind, kind, "{error:?}");
    assert!(
        error.message.contains(message),
        "the error {:?} does not mention {message:?}",
        error.message
    );
    assert_eq!(event.text, text, "the partial text is kept");
}

// ---- claude ----

#[test]
fn claude_streams_text_deltas_and_reports_its_session() {
    let run = Single::new("claude", Config::default());
    let event = run.turn("normal");
    assert_ok(&event, "Hello, world!");
    let session = run.session();
    assert_eq!(session.status, SessionStatus::Idle);
    let logged = records(&run.root, "claude");
    assert_eq!(logged.len(), 1);
    let record = &logged[0];
    // First turn: the member's session id is handed to claude, which reports it back.
    let args = argv(record);
    let at = args.iter().position(|a| a == "--session-id").unwrap();
    assert_eq!(args[at + 1], session.id);
    assert!(!args.contains(&"--resume".to_owned()));
    assert_eq!(session.resume_token.as_deref(), record["token"].as_str());
    // The prompt arrives on stdin with the roster preamble, and the run is in the project root.
    let prompt = record["prompt"].as_str().unwrap();
    assert!(prompt.starts_with("You are Agent"), "{prompt:?}");
    assert!(
        prompt.ends_with("Please answer. SCENARIO:normal"),
        "{prompt:?}"
    );
    assert_eq!(record["cwd"].as_str().unwrap(), run.root.to_str().unwrap());
}

#[test]
fn claude_joins_utf8_split_across_writes() {
    let run = Single::new("claude", Config::default());
    assert_ok(&run.turn("split-utf8"), "café ✓ 🦀");
}

#[test]
fn claude_ignores_unknown_line_types() {
    let run = Single::new("claude", Config::default());
    assert_ok(&run.turn("unknown"), "one two");
}

#[test]
fn claude_error_result_fails_with_its_message() {
    let run = Single::new("claude", Config::default());
    let event = run.turn("error");
    assert_failed(
        &event,
        ReplyErrorKind::Failed,
        "partial ",
        "claude reported an error: fake API overloaded",
    );
    assert_eq!(run.session().status, SessionStatus::Failed);
}

#[test]
fn claude_crash_mid_stream_fails_and_keeps_partial_text() {
    let run = Single::new("claude", Config::default());
    assert_failed(
        &run.turn("crash"),
        ReplyErrorKind::Failed,
        "partial",
        "killed by signal 9",
    );
}

#[test]
fn claude_without_output_fails() {
    let run = Single::new("claude", Config::default());
    assert_failed(
        &run.turn("silent"),
        ReplyErrorKind::Failed,
        "",
        "without reporting a result",
    );
}

#[test]
fn claude_invalid_output_fails() {
    let run = Single::new("claude", Config::default());
    assert_failed(
        &run.turn("invalid"),
        ReplyErrorKind::Failed,
        "ok ",
        "claude produced invalid output",
    );
}

#[test]
fn claude_hang_times_out_and_its_process_group_is_killed() {
    hang_times_out("claude");
}

#[test]
fn claude_cancel_kills_its_process_group() {
    hang_is_cancelled("claude");
}

#[test]
fn claude_second_turn_resumes_the_reported_session() {
    let run = Single::new("claude", Config::default());
    // `fork`: the fake reports a session id of its own, unlike the one it was given.
    assert_ok(&run.turn("fork"), "Hello, world!");
    let first = records(&run.root, "claude").remove(0);
    let token = first["token"].as_str().unwrap().to_owned();
    let session = run.session();
    assert_ne!(token, session.id);
    assert_eq!(session.resume_token.as_deref(), Some(token.as_str()));

    assert_ok(&run.turn("normal"), "Hello, world!");
    let second = records(&run.root, "claude").remove(1);
    let args = argv(&second);
    let at = args
        .iter()
        .position(|a| a == "--resume")
        .unwrap_or_else(|| panic!("no --resume in {args:?}"));
    assert_eq!(args[at + 1], token);
    assert!(!args.contains(&"--session-id".to_owned()), "{args:?}");
    assert_eq!(run.session().resume_token.as_deref(), Some(token.as_str()));
}

// ---- codex ----

#[test]
fn codex_replies_with_completed_agent_messages() {
    let run = Single::new("codex", Config::default());
    assert_ok(&run.turn("normal"), "Hello\n\nworld");
    let record = records(&run.root, "codex").remove(0);
    assert_eq!(
        argv(&record)[1..],
        ids(&[
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--color",
            "never",
            "-"
        ])
    );
    let session = run.session();
    assert_eq!(session.status, SessionStatus::Idle);
    assert_eq!(session.resume_token.as_deref(), record["token"].as_str());
    assert!(record["prompt"]
        .as_str()
        .unwrap()
        .ends_with("SCENARIO:normal"));
}

#[test]
fn codex_joins_utf8_split_across_writes() {
    let run = Single::new("codex", Config::default());
    assert_ok(&run.turn("split-utf8"), "café ✓ 🦀");
}

#[test]
fn codex_ignores_unknown_events_and_items() {
    let run = Single::new("codex", Config::default());
    assert_ok(&run.turn("unknown"), "only this");
}

#[test]
fn codex_failed_turn_and_error_event_fail_with_their_message() {
    let run = Single::new("codex", Config::default());
    assert_failed(
        &run.turn("error"),
        ReplyErrorKind::Failed,
        "partial",
        "codex turn failed: fake quota exceeded",
    );
    assert_failed(
        &run.turn("error-event"),
        ReplyErrorKind::Failed,
        "",
        "codex error: fake stream disconnected",
    );
    assert_eq!(run.session().status, SessionStatus::Failed);
}

#[test]
fn codex_crash_mid_stream_fails_and_keeps_partial_text() {
    let run = Single::new("codex", Config::default());
    assert_failed(
        &run.turn("crash"),
        ReplyErrorKind::Failed,
        "partial",
        "codex exited with status 3",
    );
}

#[test]
fn codex_without_output_fails() {
    let run = Single::new("codex", Config::default());
    assert_failed(
        &run.turn("silent"),
        ReplyErrorKind::Failed,
        "",
        "without reporting a result",
    );
}

#[test]
fn codex_invalid_output_fails() {
    let run = Single::new("codex", Config::default());
    assert_failed(
        &run.turn("invalid"),
        ReplyErrorKind::Failed,
        "ok",
        "codex produced invalid output",
    );
}

#[test]
fn codex_hang_times_out_and_its_process_group_is_killed() {
    hang_times_out("codex");
}

#[test]
fn codex_cancel_kills_its_process_group() {
    hang_is_cancelled("codex");
}

#[test]
fn codex_second_turn_resumes_the_thread() {
    let run = Single::new("codex", Config::default());
    assert_ok(&run.turn("normal"), "Hello\n\nworld");
    let thread = records(&run.root, "codex").remove(0)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(thread.starts_with("thread-"));
    assert_eq!(run.session().resume_token.as_deref(), Some(thread.as_str()));

    assert_ok(&run.turn("normal"), "Hello\n\nworld");
    let args = argv(&records(&run.root, "codex").remove(1));
    let at = args
        .iter()
        .position(|a| a == "resume")
        .unwrap_or_else(|| panic!("no resume in {args:?}"));
    assert_eq!(args[at + 1], thread);
    assert_eq!(args[1], "exec");
    assert_eq!(args.last().unwrap(), "-");
    assert_eq!(run.session().resume_token.as_deref(), Some(thread.as_str()));
}

// ---- hang: timeout and cancel ----

/// The pids of a `hang` run once its first text is visible: the fake, its helper, its group.
fn hanging(run: &Single, program: &str) -> (i32, i32, i32) {
    wait_until(&run.coven, &run.group.id, "the first text", |snapshot| {
        snapshot.events.len() == 2 && snapshot.events[1].text == "waiting"
    });
    // The fake logs itself before it prints anything.
    let record = records(&run.root, program).remove(0);
    let (fake, helper, pgid) = (
        pid(&record, "pid"),
        pid(&record, "helper_pid"),
        pid(&record, "pgid"),
    );
    assert_eq!(
        pgid, fake,
        "the harness runs the CLI in its own process group"
    );
    assert!(!process_gone(fake) && !process_gone(helper));
    (fake, helper, pgid)
}

fn hang_times_out(program: &str) {
    let config = Config {
        silence_timeout_ms: 1_500,
        ..Config::default()
    };
    let run = Single::new(program, config);
    let turn = run.send("hang");
    let (fake, helper, pgid) = hanging(&run, program);
    finish_turn(&run.coven, &turn);
    let snapshot = run.coven.get_group(&run.group.id).unwrap();
    assert_failed(
        reply_of(&snapshot, &turn, "agent"),
        ReplyErrorKind::TimedOut,
        "waiting",
        "no output for 1500 ms",
    );
    assert_processes_gone(&[fake, helper], pgid);
    assert_eq!(run.session().status, SessionStatus::Failed);
}

fn hang_is_cancelled(program: &str) {
    let run = Single::new(program, Config::default());
    let turn = run.send("hang");
    let (fake, helper, pgid) = hanging(&run, program);
    assert_eq!(run.coven.cancel_turn(&run.group.id).unwrap(), turn);
    finish_turn(&run.coven, &turn);
    let snapshot = run.coven.get_group(&run.group.id).unwrap();
    assert_failed(
        reply_of(&snapshot, &turn, "agent"),
        ReplyErrorKind::Cancelled,
        "waiting",
        "cancelled",
    );
    assert_processes_gone(&[fake, helper], pgid);
    assert_eq!(run.session().status, SessionStatus::Idle);
}

// ---- the command harness (PTY) ----

fn command_run(args: &[&str], extra_allowed: &[&str]) -> Single {
    let mut allowed = vec![paint()];
    allowed.extend(extra_allowed.iter().map(|p| (*p).to_owned()));
    let config = Config {
        allowed_programs: allowed,
        ..Config::default()
    };
    let coven = store(config);
    let (dir, root) = project();
    let mut member = familiar("agent", "Agent", "command");
    member.argv = args.iter().map(|a| (*a).to_owned()).collect();
    coven.register_familiar(member).unwrap();
    let group = coven
        .create_group(
            None,
            ids(&["agent"]),
            Some(root.to_string_lossy().into_owned()),
        )
        .unwrap();
    Single {
        coven,
        group,
        _dir: dir,
        root,
    }
}

#[test]
fn command_output_arrives_without_terminal_escapes() {
    let paint = paint();
    let run = command_run(&[&paint, "colors"], &[]);
    assert_ok(&run.turn("none"), "red plain\nnext\ndone\n");
    assert_eq!(run.session().status, SessionStatus::Idle);
}

#[test]
fn command_output_joins_utf8_split_across_reads() {
    let paint = paint();
    let run = command_run(&[&paint, "split"], &[]);
    assert_ok(&run.turn("none"), "café ✓ 🦀!\n");
}

#[test]
fn command_nonzero_exit_fails_and_keeps_its_output() {
    let paint = paint();
    let run = command_run(&[&paint, "fail"], &[]);
    assert_failed(
        &run.turn("none"),
        ReplyErrorKind::Failed,
        "partial\n",
        "exited with status 4",
    );
}

#[test]
fn command_cancel_kills_its_process_group() {
    let paint = paint();
    let pidfile = tempfile::tempdir().unwrap();
    let pids = pidfile.path().join("pids");
    let run = command_run(&[&paint, "hang", pids.to_str().unwrap()], &[]);
    let turn = run.send("none");
    wait_until(&run.coven, &run.group.id, "the first text", |snapshot| {
        snapshot.events.len() == 2 && snapshot.events[1].text == "waiting\n"
    });
    let numbers: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (program, pgid, helper) = (numbers[0], numbers[1], numbers[2]);
    assert_eq!(pgid, program, "the PTY child leads its own process group");
    run.coven.cancel_turn(&run.group.id).unwrap();
    finish_turn(&run.coven, &turn);
    let snapshot = run.coven.get_group(&run.group.id).unwrap();
    assert_failed(
        reply_of(&snapshot, &turn, "agent"),
        ReplyErrorKind::Cancelled,
        "waiting\n",
        "cancelled",
    );
    assert_processes_gone(&[program, helper], pgid);
}

#[test]
fn a_missing_program_fails_saying_it_was_not_found() {
    let missing = "coven-group-test-no-such-program";
    let run = command_run(&[missing, "--flag"], &[missing]);
    assert_failed(&run.turn("none"), ReplyErrorKind::Failed, "", "not found");
    let message = run.turn("none").error.unwrap().message;
    assert!(message.contains(missing), "{message:?}");
}

// ---- path guard ----

#[test]
fn a_missing_or_non_directory_project_root_is_refused() {
    let coven = store(Config::default());
    coven
        .register_familiar(familiar("agent", "Agent", "claude"))
        .unwrap();
    let (_dir, root) = project();
    let file = root.join("a-file");
    std::fs::write(&file, "x").unwrap();
    for bad in [root.join("does-not-exist"), file] {
        match coven.create_group(
            None,
            ids(&["agent"]),
            Some(bad.to_string_lossy().into_owned()),
        ) {
            Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "project_root"),
            other => panic!("{} was accepted as a root: {other:?}", bad.display()),
        }
    }
    assert!(coven.list_groups().unwrap().is_empty());
}

/// Members on the fake claude with the given cwds in one group rooted at `root`; returns the
/// turn's snapshot.
fn cwd_turn(
    coven: &Coven,
    root: Option<&Path>,
    members: &[(&str, Option<&str>)],
) -> (String, coven_group::GroupSnapshot) {
    for (id, cwd) in members {
        let mut member = familiar(id, id, "claude");
        member.cwd = cwd.map(str::to_owned);
        coven.register_familiar(member).unwrap();
    }
    let member_ids: Vec<&str> = members.iter().map(|(id, _)| *id).collect();
    let group = coven
        .create_group(
            None,
            ids(&member_ids),
            root.map(|r| r.to_string_lossy().into_owned()),
        )
        .unwrap();
    let turn = coven
        .send(&group.id, "SCENARIO:normal".into(), None)
        .unwrap()
        .turn_id;
    finish_turn(coven, &turn);
    (turn.clone(), coven.get_group(&group.id).unwrap())
}

#[test]
fn a_cwd_escaping_the_root_is_refused_for_that_member_only() {
    let coven = store(Config::default());
    let (_dir, base) = project();
    let root = base.join("root");
    let outside = base.join("outside");
    for dir in [root.join("sub"), outside.clone()] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink(root.join("sub"), root.join("inner")).unwrap();

    let (turn, snapshot) = cwd_turn(
        &coven,
        Some(&root),
        &[
            ("dotdot", Some("../..")),
            ("symlink-out", Some("escape")),
            ("absolute-out", Some(outside.to_str().unwrap())),
            ("inside", Some("sub")),
            ("symlink-in", Some("inner")),
        ],
    );
    for id in ["dotdot", "symlink-out", "absolute-out"] {
        assert_failed(
            reply_of(&snapshot, &turn, id),
            ReplyErrorKind::Failed,
            "",
            "outside the project root",
        );
    }
    for id in ["inside", "symlink-in"] {
        assert_ok(reply_of(&snapshot, &turn, id), "Hello, world!");
    }
    // Both allowed members ran in the canonical subdirectory; nothing ran outside the root.
    let ran = records(&root.join("sub"), "claude");
    assert_eq!(ran.len(), 2);
    for record in &ran {
        assert_eq!(
            record["cwd"].as_str().unwrap(),
            root.join("sub").to_str().unwrap()
        );
    }
    assert!(records(&outside, "claude").is_empty());
    assert!(records(&base, "claude").is_empty());
}

#[test]
fn a_process_member_needs_a_root_or_an_absolute_cwd() {
    let coven = store(Config::default());
    coven
        .register_familiar(familiar("inproc", "In process", "scripted"))
        .unwrap();
    let (_dir, elsewhere) = project();
    let (turn, snapshot) = cwd_turn(
        &coven,
        None,
        &[
            ("homeless", None),
            ("relative", Some("sub")),
            ("absolute", Some(elsewhere.to_str().unwrap())),
        ],
    );
    assert_failed(
        reply_of(&snapshot, &turn, "homeless"),
        ReplyErrorKind::Failed,
        "",
        "no project root",
    );
    assert_failed(
        reply_of(&snapshot, &turn, "relative"),
        ReplyErrorKind::Failed,
        "",
        "relative",
    );
    assert_ok(reply_of(&snapshot, &turn, "absolute"), "Hello, world!");
    assert_eq!(
        records(&elsewhere, "claude")[0]["cwd"].as_str().unwrap(),
        elsewhere.to_str().unwrap()
    );

    // An in-process member needs neither.
    let group = coven
        .create_group(None, ids(&["inproc", "homeless"]), None)
        .unwrap();
    let turn = coven.send(&group.id, "hi".into(), None).unwrap().turn_id;
    finish_turn(&coven, &turn);
    let snapshot = coven.get_group(&group.id).unwrap();
    assert_eq!(reply_of(&snapshot, &turn, "inproc").error, None);
    assert!(reply_of(&snapshot, &turn, "homeless").error.is_some());
}
