//! Invariant 6 (and 1) after a crash mid-turn: a child process streams a turn into a file store
//! and is SIGKILLed while a reply is streaming and another member has not answered; opening the
//! store again finishes every open reply as interrupted (text kept), marks the member that never
//! answered, fails the running sessions, releases the turn lock, and keeps seq contiguous.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use coven_group::{Config, Coven, EventKind, Recovery, ReplyErrorKind, SessionStatus};

/// Set (to the store path) only in the child process.
const STORE_ENV: &str = "COVEN_GROUP_RECOVERY_STORE";
const CHILD_TEST: &str = "recovery_child_streams_until_killed";
/// Prefix of the lines the child reports on; the test harness prints other lines too.
const REPORT: &str = "@@";
/// Words of the reply that is still streaming when the child is killed (never reached).
const SLOW_WORDS: usize = 100_000;

/// Familiars of the crashed turn: one streams slowly, one answers quickly, one never answers.
fn register(coven: &Coven, puppet: Arc<Puppet>, slow_words: usize) {
    coven.register_host_harness("puppet", puppet).unwrap();
    let mut slow = familiar("slow", "Slow", "scripted");
    slow.model = Some(format!("words:{slow_words}"));
    coven.register_familiar(slow).unwrap();
    let mut quick = familiar("quick", "Quick", "scripted");
    quick.model = Some("words:3".into());
    coven.register_familiar(quick).unwrap();
    coven
        .register_familiar(familiar("mute", "Mute", "puppet"))
        .unwrap();
}

/// The child: starts a turn, reports once `slow` is visibly streaming and `quick` has finished,
/// then waits to be killed. A no-op unless the parent started this process with `STORE_ENV`.
#[test]
fn recovery_child_streams_until_killed() {
    let Ok(path) = std::env::var(STORE_ENV) else {
        return;
    };
    let config = Config {
        scripted_delay_ms: 5,
        ..Config::default()
    };
    let coven = Coven::open(&path, config).expect("child opens the store");
    let puppet = Puppet::new();
    // Held, never used: `mute` waits for a step that does not come.
    let _mute = puppet.hand("mute");
    register(&coven, puppet, SLOW_WORDS);
    let group = coven
        .create_group(None, ids(&["slow", "quick", "mute"]), None)
        .unwrap();
    let turn = coven.send(&group.id, "hello".into(), None).unwrap();
    let snapshot = wait_until(&coven, &group.id, "slow streaming", |snapshot| {
        let streaming = snapshot.events.iter().any(|event| {
            event.familiar_id.as_deref() == Some("slow")
                && event.streaming
                && event.text.split_whitespace().count() >= 5
        });
        let quick_done = snapshot
            .events
            .iter()
            .any(|event| event.familiar_id.as_deref() == Some("quick") && !event.streaming);
        streaming && quick_done
    });
    let slow = snapshot
        .events
        .iter()
        .find(|event| event.familiar_id.as_deref() == Some("slow"))
        .unwrap();
    println!("{REPORT}group {}", group.id);
    println!("{REPORT}turn {}", turn.turn_id);
    println!("{REPORT}streaming {}", slow.text.len());
    // The parent kills this process now; the bound only ends a child whose parent is gone.
    std::thread::sleep(Duration::from_secs(60));
    std::process::exit(1);
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the child until it reports a streaming reply, then SIGKILLs it. Returns the group id,
/// the turn id and how many bytes of the slow reply the child saw committed.
fn crash_mid_turn(path: &Path) -> (String, String, usize) {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(STORE_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let lines = reported_lines(stdout, REPORT);
    let next = |key: &str| -> String {
        let line: String = lines
            .recv_timeout(GUARD)
            .unwrap_or_else(|_| panic!("the child did not report {key} within {GUARD:?}"));
        line.strip_prefix(&format!("{key} "))
            .unwrap_or_else(|| panic!("expected {key}, got {line:?}"))
            .to_owned()
    };
    let group = next("group");
    let turn = next("turn");
    let seen: usize = next("streaming").parse().unwrap();

    child.0.kill().expect("SIGKILL the child");
    let status = child.0.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    (group, turn, seen)
}

#[test]
fn a_turn_killed_mid_stream_is_recovered_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coven.redb");
    let (group, turn, seen) = crash_mid_turn(&path);

    let coven = Coven::open(&path, Config::default()).expect("reopen after the crash");
    let Recovery {
        interrupted_replies: interrupted,
        failed_sessions,
        released_turns: released,
        ..
    } = coven.recovery();
    assert_eq!(
        (interrupted, failed_sessions, released),
        (2, 2, 1),
        "interrupted replies, failed sessions, released turn locks"
    );

    let snapshot = coven.get_group(&group).unwrap();
    assert_seq_contiguous(&snapshot.events);
    assert_eq!(snapshot.events.len(), 4, "{:#?}", snapshot.events);
    assert!(snapshot.events.iter().all(|event| !event.streaming));
    let user = &snapshot.events[0];
    assert_eq!(user.kind, EventKind::User);
    assert_eq!(user.turn_id.as_deref(), Some(turn.as_str()));

    // The reply that finished before the crash is untouched.
    let quick = reply_of(&snapshot, &turn, "quick");
    assert_eq!(quick.text, "w0 w1 w2");
    assert_eq!(quick.error, None);

    // The streaming reply is finished as interrupted and keeps every word committed before the
    // crash: at least what the child saw, in order, with nothing invented.
    let slow = reply_of(&snapshot, &turn, "slow");
    assert_eq!(
        slow.error.as_ref().map(|e| e.kind),
        Some(ReplyErrorKind::Interrupted)
    );
    assert!(
        slow.text.len() >= seen,
        "the child saw {seen} bytes committed, the store kept {}",
        slow.text.len()
    );
    let words: Vec<&str> = slow.text.split_whitespace().collect();
    assert!(words.len() < SLOW_WORDS);
    for (i, word) in words.iter().enumerate() {
        assert_eq!(*word, format!("w{i}"), "word {i} of the interrupted reply");
    }

    // The member that never answered has an interrupted marker, after the others.
    let mute = reply_of(&snapshot, &turn, "mute");
    assert_eq!(mute.text, "");
    assert_eq!(
        mute.error.as_ref().map(|e| e.kind),
        Some(ReplyErrorKind::Interrupted)
    );
    assert_eq!(mute.seq, 4);

    // No session is left running.
    let sessions = coven.sessions_of(&group).unwrap();
    assert_eq!(sessions.len(), 3);
    for session in &sessions {
        let expected = if session.familiar_id == "quick" {
            SessionStatus::Idle
        } else {
            SessionStatus::Failed
        };
        assert_eq!(session.status, expected, "{}", session.familiar_id);
    }

    // Recovery is itself durable and done once: a second open finds nothing to repair.
    coven.close();
    drop(coven);
    let coven = Coven::open(&path, Config::default()).unwrap();
    assert_eq!(coven.recovery(), Recovery::default());
    assert_eq!(coven.get_group(&group).unwrap(), snapshot);

    // The turn lock is released: a new turn runs to the end, and seq stays contiguous.
    let puppet = Puppet::new();
    let mute_hand = puppet.hand("mute");
    register(&coven, puppet, 4);
    let next = coven.send(&group, "are you back?".into(), None).unwrap();
    assert_eq!(next.user_event.seq, 5);
    mute_hand.request();
    mute_hand.say("back");
    mute_hand.finish();
    finish_turn(&coven, &next.turn_id);
    let after = coven.get_group(&group).unwrap();
    assert_seq_contiguous(&after.events);
    assert_eq!(after.events.len(), 8);
    assert_eq!(reply_of(&after, &next.turn_id, "slow").text, "w0 w1 w2 w3");
    assert_eq!(reply_of(&after, &next.turn_id, "mute").text, "back");
    for id in ["slow", "quick", "mute"] {
        assert_eq!(reply_of(&after, &next.turn_id, id).error, None, "{id}");
    }
    assert!(coven
        .sessions_of(&group)
        .unwrap()
        .iter()
        .all(|session| session.status == SessionStatus::Idle));
}
