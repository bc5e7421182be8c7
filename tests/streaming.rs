//! The streaming window (`Config::stream_commit_interval_ms`, invariants 2 and 10): what harnesses
//! stream shares one commit per window; an operation a caller waits on commits at once and takes
//! the waiting output with it; first outputs claim seq in the order they reached the store; and
//! `close()` commits what waits. Every test uses the longest window a store accepts (60 s), so
//! nothing it asserts depends on the window ending while it runs, and every wait is bounded by
//! `GUARD`, well inside the window: a wait that needed the window to end fails instead.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coven_group::testing::CountingBackend;
use coven_group::{
    Config, Coven, EventKind, Familiar, GroupChange, GroupEvent, GroupUpdate, Harness,
    ReplyErrorKind, ReplySink, TurnRequest,
};
use crossbeam_channel::{Receiver, Sender};
use redb::backends::InMemoryBackend;

/// Upper bound for anything a test waits on; half the window, so reaching it is a failure.
const GUARD: Duration = Duration::from_secs(30);
const WINDOW_MS: u64 = 60_000;

fn windowed() -> Config {
    Config {
        stream_commit_interval_ms: WINDOW_MS,
        ..Config::default()
    }
}

/// What the test tells a member's harness to do next.
enum Step {
    /// Hand this text to the sink, then acknowledge: the output is queued for the store.
    Delta(&'static str),
    /// Return from the run (the reply completes).
    Return,
}

/// The harness's end of one member's channels: the steps to take, and where to acknowledge them.
type Steps = (Receiver<Step>, Sender<()>);

/// A host harness driven step by step by the test, one channel pair per familiar.
#[derive(Default)]
struct Driven {
    members: Mutex<HashMap<String, Steps>>,
}

/// The test's end of one member's channels.
struct Driver {
    steps: Sender<Step>,
    acks: Receiver<()>,
}

impl Driver {
    /// Has the harness stream `text` and waits (bounded) until its `delta` call has returned.
    fn delta(&self, text: &'static str) {
        self.steps
            .send(Step::Delta(text))
            .expect("the harness runs");
        self.acks.recv_timeout(GUARD).expect("the harness streamed");
    }

    fn finish(&self) {
        self.steps.send(Step::Return).expect("the harness runs");
        self.acks.recv_timeout(GUARD).expect("the harness returned");
    }
}

impl Driven {
    fn driver(&self, familiar: &str) -> Driver {
        let (steps, step_rx) = crossbeam_channel::unbounded();
        let (ack_tx, acks) = crossbeam_channel::unbounded();
        self.members
            .lock()
            .unwrap()
            .insert(familiar.to_owned(), (step_rx, ack_tx));
        Driver { steps, acks }
    }
}

impl Harness for Driven {
    fn run_turn(&self, request: TurnRequest, sink: Arc<ReplySink>) -> coven_group::Result<bool> {
        let (steps, acks) = self
            .members
            .lock()
            .unwrap()
            .get(&request.familiar.id)
            .cloned()
            .expect("a driver for every member");
        // Returns once told to, or once the run is stopped (a close cancels it).
        let deadline = Instant::now() + GUARD;
        while !sink.is_cancelled() && Instant::now() < deadline {
            match steps.recv_timeout(Duration::from_millis(5)) {
                Ok(Step::Delta(text)) => {
                    sink.delta(text.to_owned());
                    let _ = acks.send(());
                }
                Ok(Step::Return) => {
                    let _ = acks.send(());
                    return Ok(true);
                }
                Err(_) => {}
            }
        }
        Ok(true)
    }
}

/// A store with one driven familiar per id and a group of them; returns the group id.
fn driven_group(coven: &Coven, familiars: &[&str]) -> (Arc<Driven>, String) {
    let driven = Arc::new(Driven::default());
    coven
        .register_host_harness("driven", driven.clone())
        .expect("register the harness");
    for id in familiars {
        coven
            .register_familiar(Familiar::new(*id, *id, "driven"))
            .expect("register a familiar");
    }
    let ids = familiars.iter().map(|id| id.to_string()).collect();
    let group = coven.create_group(None, ids, None).expect("create a group");
    (driven, group.id)
}

/// Waits (bounded) until the turn has ended. How each reply ended waits in the window with the
/// streamed output; a call a caller waits on commits it, so one is made until the turn is over.
fn end_turn(coven: &Coven, group: &str, turn: &str) {
    let deadline = Instant::now() + GUARD;
    loop {
        coven.set_cursor(group, "settle", 0).expect("set a cursor");
        if coven
            .wait_turn(turn, Duration::from_millis(10))
            .expect("wait_turn")
        {
            return;
        }
        assert!(Instant::now() < deadline, "the turn never ended");
    }
}

fn changes_after(coven: &Coven, group: &str, rev: u64) -> Vec<GroupChange> {
    coven
        .changes_since(group, rev, coven_group::MAX_PAGE)
        .expect("changes")
}

fn replies(coven: &Coven, group: &str) -> Vec<GroupEvent> {
    coven
        .events_since(group, 0, coven_group::MAX_PAGE)
        .expect("events")
        .into_iter()
        .filter(|event| event.kind == EventKind::Familiar)
        .collect()
}

#[test]
fn deltas_streamed_within_one_window_share_one_commit() {
    let (backend, disk) = CountingBackend::new(InMemoryBackend::new());
    let coven = Coven::open_with_backend(backend, windowed()).expect("open");
    let (driven, group) = driven_group(&coven, &["ada"]);
    let ada = driven.driver("ada");
    let turn = coven.send(&group, "go".into(), None).expect("send");
    let start_rev = coven.get_group(&group).expect("snapshot").rev;
    let before = disk.syncs();
    const DELTAS: usize = 10;
    for streamed in 1..=DELTAS {
        ada.delta("tok ");
        // A store that commits each delta when its writer is idle shows it within moments; give
        // it that chance (bounded), so the count below tells the two behaviours apart. With the
        // window open for 60 s nothing is committed here whatever this wait's length.
        let deadline = Instant::now() + Duration::from_millis(200);
        let visible = || {
            replies(&coven, &group)
                .first()
                .map_or(0, |reply| reply.text.len())
        };
        while visible() < streamed * "tok ".len() && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }
    let streamed = disk.syncs() - before;
    assert_eq!(
        streamed, 0,
        "nothing streamed within the window is committed before it ends"
    );
    assert!(
        changes_after(&coven, &group, start_rev).is_empty(),
        "nothing reaches a reader before its commit"
    );
    // A call a caller waits on commits at once and takes the waiting output with it.
    coven.set_cursor(&group, "reader", 0).expect("set a cursor");
    let commits = disk.syncs() - before;
    assert_eq!(
        commits, 1,
        "{DELTAS} deltas and the cursor share one commit"
    );
    let logged = changes_after(&coven, &group, start_rev);
    let texts: Vec<&str> = logged
        .iter()
        .map(|change| match &change.update {
            GroupUpdate::EventAppended { event } => event.text.as_str(),
            GroupUpdate::ReplyDelta { text, .. } => text.as_str(),
            other => panic!("unexpected change {other:?}"),
        })
        .collect();
    assert_eq!(
        texts,
        vec!["tok ", &"tok ".repeat(DELTAS - 1)],
        "the first output claims the seq, the rest is one delta"
    );
    ada.finish();
    end_turn(&coven, &group, &turn.turn_id);
    assert_eq!(replies(&coven, &group)[0].text, "tok ".repeat(DELTAS));
    common::assert_clean_and_idle(&coven);
    coven.close();
}

#[test]
fn an_operation_a_caller_waits_on_is_not_held_by_the_window() {
    let coven = Arc::new(Coven::open_in_memory(windowed()).expect("open"));
    let (driven, group) = driven_group(&coven, &["ada"]);
    let ada = driven.driver("ada");
    coven.send(&group, "go".into(), None).expect("send");
    ada.delta("first ");
    ada.delta("second");
    // On another thread, so a call held by the window fails the bounded wait below instead of
    // hanging the test.
    let (answer_tx, answer) = crossbeam_channel::bounded(1);
    {
        let (coven, group) = (coven.clone(), group.clone());
        std::thread::spawn(move || {
            let _ = answer_tx.send(coven.append_user_message(&group, "meanwhile".into(), None));
        });
    }
    let message = answer
        .recv_timeout(GUARD)
        .expect("the call was answered without waiting for the 60 s window")
        .expect("append");
    // The output that reached the store before the call was committed with it, before it.
    let reply = &replies(&coven, &group)[0];
    assert!(reply.streaming, "the reply is still streaming");
    assert_eq!(reply.text, "first second");
    assert!(reply.seq < message.seq, "the reply claimed its seq first");
    assert!(reply.rev < message.rev, "and its text was logged first");
    ada.finish();
    coven.close();
}

#[test]
fn first_outputs_claim_seq_in_arrival_order_whichever_commit_carries_them() {
    let coven = Coven::open_in_memory(windowed()).expect("open");
    let members = ["ada", "bo", "cy"];
    let (driven, group) = driven_group(&coven, &members);
    let drivers: HashMap<&str, Driver> =
        members.iter().map(|id| (*id, driven.driver(id))).collect();
    let turn = coven.send(&group, "go".into(), None).expect("send");
    let user_seq = coven.get_group(&group).expect("snapshot").events[0].seq;
    // First outputs in the order cy, ada, bo, all within one window, deltas interleaved.
    drivers["cy"].delta("c1 ");
    drivers["ada"].delta("a1 ");
    drivers["cy"].delta("c2");
    drivers["bo"].delta("b1 ");
    drivers["ada"].delta("a2");
    drivers["bo"].delta("b2");
    for id in members {
        drivers[id].finish();
    }
    end_turn(&coven, &group, &turn.turn_id);
    let order: Vec<(String, u64, String)> = replies(&coven, &group)
        .into_iter()
        .map(|event| (event.familiar_id.unwrap(), event.seq, event.text))
        .collect();
    assert_eq!(
        order,
        vec![
            ("cy".to_owned(), user_seq + 1, "c1 c2".to_owned()),
            ("ada".to_owned(), user_seq + 2, "a1 a2".to_owned()),
            ("bo".to_owned(), user_seq + 3, "b1 b2".to_owned()),
        ]
    );
    common::assert_clean_and_idle(&coven);
    coven.close();
}

#[test]
fn close_commits_the_output_waiting_in_the_window() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("coven.redb");
    let coven = Arc::new(Coven::open(&path, windowed()).expect("open"));
    let (driven, group) = driven_group(&coven, &["ada", "bo"]);
    let (ada, bo) = (driven.driver("ada"), driven.driver("bo"));
    coven.send(&group, "go".into(), None).expect("send");
    ada.delta("all ");
    ada.delta("of it");
    // ada's reply ends (its end waits in the window with its text); bo is still streaming.
    ada.finish();
    bo.delta("part");
    let (closed_tx, closed) = crossbeam_channel::bounded(1);
    {
        let coven = coven.clone();
        std::thread::spawn(move || {
            coven.close();
            let _ = closed_tx.send(());
        });
    }
    closed
        .recv_timeout(GUARD)
        .expect("close returned without waiting for the 60 s window");
    drop(coven);
    let reopened = Coven::open(&path, Config::default()).expect("reopen");
    assert_eq!(
        reopened.recovery().interrupted_replies,
        0,
        "close saved how every reply ended"
    );
    let replies = replies(&reopened, &group);
    let ada_reply = replies
        .iter()
        .find(|event| event.familiar_id.as_deref() == Some("ada"))
        .expect("ada's reply");
    assert_eq!(ada_reply.text, "all of it");
    assert!(!ada_reply.streaming);
    // ada returned before the close; whether its worker saw that before the close's cancel
    // decides between a completed and a cancelled reply, never an interrupted one.
    assert!(ada_reply
        .error
        .as_ref()
        .is_none_or(|error| error.kind == ReplyErrorKind::Cancelled));
    let bo_reply = replies
        .iter()
        .find(|event| event.familiar_id.as_deref() == Some("bo"))
        .expect("bo's reply");
    assert_eq!(bo_reply.text, "part", "the streamed text was committed");
    assert!(!bo_reply.streaming);
    assert_eq!(
        bo_reply.error.as_ref().map(|error| error.kind),
        Some(ReplyErrorKind::Cancelled)
    );
    common::assert_clean_and_idle(&reopened);
    reopened.close();
}

/// Two members stream interleaved deltas, each delta its own commit (a cursor call commits what
/// waits in the window), so each reply's deltas hold revs apart from each other. Returns the
/// group, the turn and the drivers of ada and bo, whose replies are still streaming.
fn interleaved_replies(coven: &Coven, rounds: usize) -> Interleaved {
    let (driven, group) = driven_group(coven, &["ada", "bo"]);
    let (ada, bo) = (driven.driver("ada"), driven.driver("bo"));
    let turn = coven.send(&group, "go".into(), None).expect("send").turn_id;
    for round in 0..rounds {
        ada.delta(["a ", "b ", "c "][round % 3]);
        bo.delta(["x", "y", "z"][round % 3]);
        coven.set_cursor(&group, "commit", 0).expect("set a cursor");
    }
    Interleaved {
        _driven: driven,
        group,
        turn,
        ada,
        bo,
    }
}

struct Interleaved {
    _driven: Arc<Driven>,
    group: String,
    turn: String,
    ada: Driver,
    bo: Driver,
}

fn deltas_of(changes: &[GroupChange], seq: u64) -> Vec<u64> {
    changes
        .iter()
        .filter(
            |change| matches!(change.update, GroupUpdate::ReplyDelta { seq: of, .. } if of == seq),
        )
        .map(|change| change.rev)
        .collect()
}

#[test]
fn a_finished_reply_costs_the_log_one_record_for_its_deltas() {
    const ROUNDS: usize = 12;
    let coven = Coven::open_in_memory(windowed()).expect("open");
    let run = interleaved_replies(&coven, ROUNDS);
    let (group, turn) = (&run.group, &run.turn);
    let [ada_seq, bo_seq] = [0, 1].map(|index| replies(&coven, group)[index].seq);
    let streaming = changes_after(&coven, group, 0);
    // Each reply's first output is its append; every later round is one delta per reply.
    assert_eq!(deltas_of(&streaming, ada_seq).len(), ROUNDS - 1);
    assert_eq!(deltas_of(&streaming, bo_seq).len(), ROUNDS - 1);

    run.ada.finish();
    coven.set_cursor(group, "commit", 0).expect("set a cursor");
    let log = changes_after(&coven, group, 0);
    let head = coven.get_group(group).expect("snapshot").rev;
    assert_eq!(
        deltas_of(&log, ada_seq),
        deltas_of(&streaming, ada_seq)[..1],
        "ada's deltas are one record at the first one's rev"
    );
    assert_eq!(
        deltas_of(&log, bo_seq),
        deltas_of(&streaming, bo_seq),
        "bo still streams"
    );
    assert_eq!(log.len() as u64, head - (ROUNDS as u64 - 2));
    let ada_reply = replies(&coven, group)[0].clone();
    assert_eq!(ada_reply.text, "a b c ".repeat(ROUNDS / 3));
    assert_eq!(
        common::streamed_text(&log, ada_seq),
        ada_reply.text,
        "read from the start, the collapsed deltas carry all of the text"
    );
    common::assert_clean(&coven);

    run.bo.finish();
    end_turn(&coven, group, turn);
    let log = common::assert_log_replays_the_timeline(&coven, group);
    let head = coven.get_group(group).expect("snapshot").rev;
    assert_eq!(
        log.len() as u64,
        head - 2 * (ROUNDS as u64 - 2),
        "each finished reply keeps one record of its {} deltas",
        ROUNDS - 1
    );
    common::assert_clean_and_idle(&coven);
    coven.close();
}

#[test]
fn reading_from_inside_collapsed_deltas_delivers_the_finished_reply() {
    const ROUNDS: usize = 9;
    let coven = Coven::open_in_memory(windowed()).expect("open");
    let run = interleaved_replies(&coven, ROUNDS);
    let (group, turn) = (&run.group, &run.turn);
    // Every change as it was published (the backlog, then live), collected from the start.
    let (live_tx, live) = crossbeam_channel::unbounded();
    let subscription = coven
        .subscribe(group, 0, Arc::new(Collect(live_tx)))
        .expect("subscribe");
    let mut published: Vec<GroupChange> = Vec::new();
    // The backlog is read before anything collapses, so it holds every delta.
    let streaming_head = coven.get_group(group).expect("snapshot").rev;
    while published
        .last()
        .is_none_or(|change| change.rev < streaming_head)
    {
        published.extend(live.recv_timeout(GUARD).expect("the subscription delivers"));
    }
    run.ada.finish();
    run.bo.delta("!");
    run.bo.finish();
    end_turn(&coven, group, turn);
    let snapshot = coven.get_group(group).expect("snapshot");
    while published
        .last()
        .is_none_or(|change| change.rev < snapshot.rev)
    {
        published.extend(live.recv_timeout(GUARD).expect("the subscription delivers"));
    }
    subscription.cancel();
    assert_eq!(
        common::revs(&published),
        (1..=snapshot.rev).collect::<Vec<_>>(),
        "live delivery is every rev, deltas included"
    );
    let stored = changes_after(&coven, group, 0);
    assert!(stored.len() < published.len(), "the stored log collapsed");

    // A reader that saw the published changes through rev r, from any r (inside a collapsed range
    // or not), reads the rest from the store and ends with the timeline: no gap, no duplicate.
    for seen_through in 0..=snapshot.rev {
        let mut timeline = Vec::new();
        let seen: Vec<GroupChange> = published
            .iter()
            .filter(|change| change.rev <= seen_through)
            .cloned()
            .collect();
        common::apply_changes(&mut timeline, &seen);
        let rest = changes_after(&coven, group, seen_through);
        assert!(rest.iter().all(|change| change.rev > seen_through));
        common::apply_changes(&mut timeline, &rest);
        assert_eq!(
            timeline, snapshot.events,
            "a reader that had seen through rev {seen_through}"
        );
        // A subscription from there delivers what the log holds after it.
        let (tx, rx) = crossbeam_channel::unbounded();
        let subscription = coven
            .subscribe(group, seen_through, Arc::new(Collect(tx)))
            .expect("subscribe");
        let mut delivered: Vec<GroupChange> = Vec::new();
        while delivered.len() < rest.len() {
            delivered.extend(rx.recv_timeout(GUARD).expect("the backlog is delivered"));
        }
        subscription.cancel();
        common::assert_same_changes(&delivered, &rest, "a subscription's backlog");
    }
    common::assert_clean_and_idle(&coven);
    coven.close();
}

/// A listener that forwards every batch.
struct Collect(Sender<Vec<GroupChange>>);

impl coven_group::GroupListener for Collect {
    fn on_updates(&self, changes: Vec<GroupChange>) -> coven_group::Result<()> {
        let _ = self.0.send(changes);
        Ok(())
    }
}
