//! Stops reach every run and end in bounded time: a reply over the size limit stops its harness
//! at once, a cancel ends runs still queued behind a busy pool, a stop waits the configured grace
//! for a harness and drops what it writes afterwards, and `close()` cancels every turn, may be
//! called from a harness or a listener, and never waits without bound on host code.

mod common;

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use common::*;
use coven_group::{
    Config, Coven, Error, GroupChange, GroupListener, GroupUpdate, Harness, ReplyErrorKind,
    ReplySink, SessionStatus, TurnRequest, MAX_REPLY_BYTES,
};
use crossbeam_channel::{Receiver, Sender};

/// An operation that waits on nothing but the library's own work takes milliseconds; taking this
/// long means it waited on something it must not (a harness, a listener, itself).
const PROMPT: Duration = Duration::from_secs(5);
/// Long enough that no test here ends by it: a run that stops, stops for another reason.
const NEVER_MS: u64 = 3_600_000;

fn config(silence_timeout_ms: u64, stop_grace_ms: u64) -> Config {
    Config {
        silence_timeout_ms,
        stop_grace_ms,
        ..Config::default()
    }
}

/// A scripted member, for groups whose members never answer in the test.
fn quiet_group(coven: &Coven) -> String {
    coven
        .register_familiar(familiar("quiet", "Quiet", "scripted"))
        .unwrap();
    coven.create_group(None, ids(&["quiet"]), None).unwrap().id
}

fn store_with(config: Config, harness: Arc<dyn Harness>, members: &[&str]) -> (Coven, String) {
    let coven = Coven::open_in_memory(config).unwrap();
    coven.register_host_harness("host", harness).unwrap();
    for member in members {
        coven
            .register_familiar(familiar(member, member, "host"))
            .unwrap();
    }
    let group = coven.create_group(None, ids(members), None).unwrap();
    (coven, group.id)
}

/// Streams 64 KiB at a time until it is told to stop.
struct Flood;

impl Harness for Flood {
    fn run_turn(&self, _request: TurnRequest, sink: Arc<ReplySink>) -> coven_group::Result<bool> {
        let chunk = "x".repeat(64 * 1024);
        while !sink.is_cancelled() {
            sink.delta(chunk.clone());
        }
        Ok(true)
    }
}

#[test]
fn a_harness_streaming_past_the_reply_limit_is_stopped_at_once() {
    let (coven, group) = store_with(config(NEVER_MS, NEVER_MS), Arc::new(Flood), &["flood"]);
    let turn = coven.send(&group, "go".into(), None).unwrap().turn_id;
    // Neither the silence timeout nor the grace ends this turn: only the stop at the limit does.
    finish_turn(&coven, &turn);
    let snapshot = coven.get_group(&group).unwrap();
    let flood = reply_of(&snapshot, &turn, "flood");
    let error = flood.error.as_ref().expect("an error marker");
    assert_eq!(error.kind, ReplyErrorKind::Failed, "{error:?}");
    assert!(error.message.contains("exceeded the limit"), "{error:?}");
    assert_eq!(flood.text.len(), MAX_REPLY_BYTES);
    assert_eq!(
        coven.sessions_of(&group).unwrap()[0].status,
        SessionStatus::Failed
    );
    // The turn lock is free at once.
    coven
        .append_user_message(&group, "next".into(), None)
        .unwrap();
}

#[test]
fn cancel_ends_runs_still_queued_behind_a_busy_pool_without_starting_them() {
    let puppet = Puppet::new();
    let config = Config {
        max_concurrent_runs: 1,
        ..config(NEVER_MS, NEVER_MS)
    };
    let (coven, busy) = store_with(config, puppet.clone(), &["busy"]);
    for member in ["q1", "q2"] {
        coven
            .register_familiar(familiar(member, member, "host"))
            .unwrap();
    }
    let queued = coven
        .create_group(None, ids(&["q1", "q2"]), None)
        .unwrap()
        .id;
    let busy_hand = puppet.hand("busy");
    let q1 = puppet.hand("q1");
    let q2 = puppet.hand("q2");

    let busy_turn = coven.send(&busy, "hold the pool".into(), None).unwrap();
    busy_hand.request();
    let turn = coven.send(&queued, "wait".into(), None).unwrap().turn_id;
    assert_eq!(coven.cancel_turn(&queued).unwrap(), turn);
    // The only worker is still busy: the queued runs end by the cancel alone.
    assert!(
        coven.wait_turn(&turn, GUARD).unwrap(),
        "the cancelled turn did not end"
    );
    let snapshot = coven.get_group(&queued).unwrap();
    for member in ["q1", "q2"] {
        let ended = reply_of(&snapshot, &turn, member);
        assert_eq!(
            ended.error.as_ref().map(|e| e.kind),
            Some(ReplyErrorKind::Cancelled)
        );
    }
    // The group takes the next message at once, and its runs start once the pool frees up.
    let next = coven.send(&queued, "again".into(), None).unwrap().turn_id;
    busy_hand.finish();
    finish_turn(&coven, &busy_turn.turn_id);
    for hand in [&q1, &q2] {
        assert_eq!(hand.request().turn_id, next, "a cancelled run was started");
        hand.say("here");
        hand.finish();
    }
    finish_turn(&coven, &next);
    assert_clean_and_idle(&coven);
}

/// Says one thing, then waits to be released (ignoring stops) or, with `after_stop`, says more
/// as soon as it is stopped.
struct Stubborn {
    release: Receiver<()>,
    returned: Sender<()>,
    after_stop: bool,
}

impl Harness for Stubborn {
    fn run_turn(&self, _request: TurnRequest, sink: Arc<ReplySink>) -> coven_group::Result<bool> {
        sink.delta("before ".into());
        if self.after_stop {
            while !sink.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            sink.delta("after the stop".into());
        } else {
            let _ = self.release.recv();
            sink.delta("after the grace".into());
        }
        let _ = self.returned.send(());
        Ok(true)
    }
}

fn stubborn(after_stop: bool) -> (Arc<Stubborn>, Sender<()>, Receiver<()>) {
    let (release_tx, release) = crossbeam_channel::bounded(1);
    let (returned, returned_rx) = crossbeam_channel::bounded(1);
    let harness = Arc::new(Stubborn {
        release,
        returned,
        after_stop,
    });
    (harness, release_tx, returned_rx)
}

/// The reply ended with `kind`, keeping only what came before the stop, and no output of it
/// was recorded after its end.
fn assert_ended_with(coven: &Coven, group: &str, turn: &str, kind: ReplyErrorKind) {
    let snapshot = coven.get_group(group).unwrap();
    let ended = reply_of(&snapshot, turn, "mule");
    assert_eq!(
        ended.error.as_ref().map(|e| e.kind),
        Some(kind),
        "{ended:?}"
    );
    assert_eq!(ended.text, "before ");
    let changes = all_changes(coven, group);
    let finished = changes
        .iter()
        .position(
            |c| matches!(&c.update, GroupUpdate::ReplyFinished { event } if event.seq == ended.seq),
        )
        .expect("the reply's end is in the change log");
    for change in &changes[finished..] {
        assert!(
            !matches!(&change.update, GroupUpdate::ReplyDelta { seq, .. } if *seq == ended.seq),
            "output recorded after the reply ended: {change:?}"
        );
    }
}

#[test]
fn a_silence_timeout_waits_the_configured_grace_not_longer() {
    let (harness, release, returned) = stubborn(false);
    let (coven, group) = store_with(config(200, 100), harness, &["mule"]);
    let turn = coven.send(&group, "go".into(), None).unwrap().turn_id;
    // 200 ms of silence, then 100 ms of grace: the hard-coded 10 s grace would fail this.
    assert!(
        coven.wait_turn(&turn, PROMPT).unwrap(),
        "the timed-out turn did not end within the grace"
    );
    let rev = coven.get_group(&group).unwrap().rev;
    // What the harness writes once it finally returns is dropped.
    release.send(()).unwrap();
    returned.recv_timeout(GUARD).unwrap();
    assert_ended_with(&coven, &group, &turn, ReplyErrorKind::TimedOut);
    assert_eq!(coven.get_group(&group).unwrap().rev, rev);
    coven
        .append_user_message(&group, "next".into(), None)
        .unwrap();
}

#[test]
fn output_after_a_cancel_is_dropped() {
    let (harness, _release, returned) = stubborn(true);
    let (coven, group) = store_with(config(NEVER_MS, NEVER_MS), harness, &["mule"]);
    let turn = coven.send(&group, "go".into(), None).unwrap().turn_id;
    wait_until(&coven, &group, "the first output", |snapshot| {
        snapshot.events.len() == 2
    });
    coven.cancel_turn(&group).unwrap();
    returned.recv_timeout(GUARD).unwrap();
    finish_turn(&coven, &turn);
    assert_ended_with(&coven, &group, &turn, ReplyErrorKind::Cancelled);
}

/// Calls `close()` on its store from inside its run, then reports.
#[derive(Default)]
struct Closer {
    coven: OnceLock<Weak<Coven>>,
    closed: OnceLock<Sender<()>>,
}

impl Harness for Closer {
    fn run_turn(&self, _request: TurnRequest, sink: Arc<ReplySink>) -> coven_group::Result<bool> {
        sink.delta("closing".into());
        if let Some(coven) = self.coven.get().and_then(Weak::upgrade) {
            coven.close();
        }
        let _ = self.closed.get().unwrap().send(());
        Ok(true)
    }
}

#[test]
fn close_from_inside_a_harness_does_not_wait_for_that_harness() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coven.redb");
    let closer = Arc::new(Closer::default());
    let coven = Arc::new(Coven::open(&path, config(NEVER_MS, NEVER_MS)).unwrap());
    coven.register_host_harness("host", closer.clone()).unwrap();
    coven
        .register_familiar(familiar("mule", "Mule", "host"))
        .unwrap();
    let group = coven.create_group(None, ids(&["mule"]), None).unwrap().id;
    let (closed, closed_rx) = crossbeam_channel::bounded(1);
    closer.coven.set(Arc::downgrade(&coven)).unwrap();
    closer.closed.set(closed).unwrap();

    let turn = coven
        .send(&group, "close the store".into(), None)
        .unwrap()
        .turn_id;
    closed_rx
        .recv_timeout(PROMPT)
        .expect("close() called by the harness waited for the harness");
    drop(coven);
    // Closed cleanly: the reply ended as cancelled, nothing needed recovery.
    let reopened = Coven::open(&path, Config::default()).unwrap();
    assert_eq!(reopened.recovery(), Default::default());
    let snapshot = reopened.get_group(&group).unwrap();
    let ended = reply_of(&snapshot, &turn, "mule");
    assert_eq!(ended.text, "closing");
    assert_eq!(
        ended.error.as_ref().map(|e| e.kind),
        Some(ReplyErrorKind::Cancelled)
    );
    assert_clean_and_idle(&reopened);
}

/// Blocks in its first batch until released, after telling the test it is there.
struct Blocking {
    entered: Sender<()>,
    release: Receiver<()>,
}

impl GroupListener for Blocking {
    fn on_updates(&self, _updates: Vec<GroupChange>) -> coven_group::Result<()> {
        let _ = self.entered.send(());
        let _ = self.release.recv();
        Ok(())
    }
}

fn blocked_listener(coven: &Coven, group: &str) -> (coven_group::Subscription, Sender<()>) {
    let (entered, entered_rx) = crossbeam_channel::unbounded();
    let (release, release_rx) = crossbeam_channel::unbounded();
    let listener = Arc::new(Blocking {
        entered,
        release: release_rx,
    });
    let subscription = coven.subscribe(group, 0, listener).unwrap();
    entered_rx
        .recv_timeout(GUARD)
        .expect("the listener was called");
    let subscription = Arc::try_unwrap(subscription).unwrap_or_else(|_| panic!("shared handle"));
    (subscription, release)
}

/// Runs `work` on a thread of its own and waits for it at most `bound`.
fn within(bound: Duration, what: &str, work: impl FnOnce() + Send + 'static) {
    let (done, done_rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        work();
        let _ = done.send(());
    });
    done_rx
        .recv_timeout(bound)
        .unwrap_or_else(|_| panic!("{what} did not return within {bound:?}"));
}

#[test]
fn close_and_cancel_wait_a_bounded_time_for_a_listener_that_does_not_return() {
    let coven = Arc::new(Coven::open_in_memory(config(NEVER_MS, 100)).unwrap());
    let group = quiet_group(&coven);

    // The listener waits for this thread, which waits in cancel(): bounded by the grace.
    let (subscription, release_first) = blocked_listener(&coven, &group);
    within(GUARD, "Subscription::cancel", move || subscription.cancel());
    release_first.send(()).unwrap();

    let (subscription, release_second) = blocked_listener(&coven, &group);
    let closing = coven.clone();
    within(GUARD, "Coven::close", move || closing.close());
    assert!(matches!(coven.list_groups(), Err(Error::Closed)));
    release_second.send(()).unwrap();
    drop(subscription);
}

/// Calls `close()` on its store from its first batch.
#[derive(Default)]
struct ClosingListener {
    coven: OnceLock<Weak<Coven>>,
    closed: OnceLock<Sender<()>>,
}

impl GroupListener for ClosingListener {
    fn on_updates(&self, _updates: Vec<GroupChange>) -> coven_group::Result<()> {
        if let Some(coven) = self.coven.get().and_then(Weak::upgrade) {
            coven.close();
            let _ = self.closed.get().unwrap().send(());
        }
        Ok(())
    }
}

#[test]
fn close_from_inside_a_listener_returns() {
    let coven = Arc::new(Coven::open_in_memory(config(NEVER_MS, NEVER_MS)).unwrap());
    let group = quiet_group(&coven);
    let listener = Arc::new(ClosingListener::default());
    let (closed, closed_rx) = crossbeam_channel::bounded(1);
    listener.coven.set(Arc::downgrade(&coven)).unwrap();
    listener.closed.set(closed).unwrap();
    let _subscription = coven.subscribe(&group, 0, listener).unwrap();
    closed_rx
        .recv_timeout(PROMPT)
        .expect("close() called by the listener did not return");
    assert!(matches!(coven.list_groups(), Err(Error::Closed)));
}

/// Streams once, then waits until it is stopped.
struct UntilStopped;

impl Harness for UntilStopped {
    fn run_turn(&self, _request: TurnRequest, sink: Arc<ReplySink>) -> coven_group::Result<bool> {
        sink.delta("on it".into());
        while !sink.is_cancelled() {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(true)
    }
}

#[test]
fn close_cancels_turns_that_start_while_it_runs() {
    const GROUPS: usize = 24;
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coven.redb");
        let coven = Arc::new(Coven::open(&path, config(NEVER_MS, NEVER_MS)).unwrap());
        coven
            .register_host_harness("host", Arc::new(UntilStopped))
            .unwrap();
        coven
            .register_familiar(familiar("mule", "Mule", "host"))
            .unwrap();
        let groups: Vec<String> = (0..GROUPS)
            .map(|_| coven.create_group(None, ids(&["mule"]), None).unwrap().id)
            .collect();
        let (started, started_rx) = crossbeam_channel::unbounded();
        let senders: Vec<_> = groups
            .chunks(GROUPS / 4)
            .map(|chunk| {
                let coven = coven.clone();
                let chunk = chunk.to_vec();
                let started = started.clone();
                std::thread::spawn(move || {
                    for group in chunk {
                        match coven.send(&group, "go".into(), None) {
                            Ok(_) => {
                                let _ = started.send(());
                            }
                            Err(Error::Closed) => return,
                            Err(err) => panic!("send: {err}"),
                        }
                    }
                })
            })
            .collect();
        // Close in the middle of the sends: every turn it sees, or that starts meanwhile, must
        // be cancelled, or this close waits for a silence timeout of an hour.
        started_rx.recv_timeout(GUARD).unwrap();
        let closing = coven.clone();
        within(GUARD, &format!("close in round {round}"), move || {
            closing.close()
        });
        for sender in senders {
            sender.join().unwrap();
        }
        drop(coven);
        let reopened = Coven::open(&path, Config::default()).unwrap();
        assert_clean_and_idle(&reopened);
    }
}
