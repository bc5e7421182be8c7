//! Subscriptions, long-poll and cursors: invariants 2 (save, then publish), 4 (lossless
//! subscriptions with a bounded queue) and 9 (listeners run on library threads, under no lock).
//!
//! Every test takes one file-wide lock first, so thread counts and process memory measured inside
//! a test are not disturbed by the other tests of this binary. Waits are on condvars, channels,
//! `wait_turn` and the long-poll; their timeouts are failure guards only.

mod common;

use std::collections::HashMap;
use std::panic;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use coven_group::{
    Config, Coven, Error, EventKind, GroupChange, GroupEvent, GroupListener, GroupUpdate,
    ReplyError, Result, Subscription, SystemNotice, MAX_PAGE, SUBSCRIPTION_QUEUE_LIMIT,
};

use common::*;

/// Bound on the laggards' catch-up from the store in the bounded-memory test.
const CATCH_UP_GUARD: Duration = Duration::from_secs(120);
/// A well-formed group id that no store holds.
const UNKNOWN_GROUP: &str = "01890000-0000-7000-8000-000000000000";

// ---- shared helpers ----

fn head(coven: &Coven, group_id: &str) -> u64 {
    coven.get_group(group_id).expect("get_group").rev
}

/// A listener that keeps every change it receives and lets tests wait for a rev.
struct Recorder {
    start: u64,
    changes: Mutex<Vec<GroupChange>>,
    batches: AtomicUsize,
    grew: Condvar,
}

impl Recorder {
    fn new(start: u64) -> Arc<Self> {
        Arc::new(Self {
            start,
            changes: Mutex::new(Vec::new()),
            batches: AtomicUsize::new(0),
            grew: Condvar::new(),
        })
    }

    /// Waits until a change at or beyond `rev` arrived (at once when the subscription started
    /// there), then returns everything received.
    fn wait_for_rev(&self, rev: u64) -> Vec<GroupChange> {
        self.wait_until(&format!("rev {rev}"), |changes| {
            changes.last().map_or(self.start, |c| c.rev) >= rev
        })
    }

    fn wait_until(&self, what: &str, done: impl Fn(&[GroupChange]) -> bool) -> Vec<GroupChange> {
        let deadline = Instant::now() + GUARD;
        let mut changes = lock(&self.changes);
        while !done(&changes) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "subscription from rev {} never delivered {what}; got revs {:?}",
                self.start,
                revs(&changes)
            );
            changes = self
                .grew
                .wait_timeout(changes, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        changes.clone()
    }

    fn received(&self) -> Vec<GroupChange> {
        lock(&self.changes).clone()
    }
}

impl GroupListener for Recorder {
    fn on_updates(&self, updates: Vec<GroupChange>) -> Result<()> {
        assert!(
            !updates.is_empty(),
            "a listener was called with an empty batch"
        );
        self.batches.fetch_add(1, Ordering::SeqCst);
        lock(&self.changes).extend(updates);
        self.grew.notify_all();
        Ok(())
    }
}

/// Fields of an event that the operations determine (ids, revs and timestamps aside).
type OutcomeView = (
    u64,
    EventKind,
    Option<String>,
    Option<String>,
    String,
    bool,
    Option<ReplyError>,
    Option<SystemNotice>,
);

fn outcome_view(events: &[GroupEvent]) -> Vec<OutcomeView> {
    events
        .iter()
        .map(|e| {
            (
                e.seq,
                e.kind,
                e.familiar_id.clone(),
                e.author.clone(),
                e.text.clone(),
                e.streaming,
                e.error.clone(),
                e.notice.clone(),
            )
        })
        .collect()
}

/// Library threads (named `coven-…`; the kernel keeps 15 bytes of a name) and all threads.
fn thread_counts() -> (usize, usize) {
    let mut library = 0;
    let mut all = 0;
    for entry in std::fs::read_dir("/proc/self/task").expect("read /proc/self/task") {
        let Ok(entry) = entry else { continue };
        // A thread that ends between the listing and this read is simply not counted.
        let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        all += 1;
        if name.starts_with("coven-") {
            library += 1;
        }
    }
    (library, all)
}

fn subscription_threads() -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir("/proc/self/task").expect("read /proc/self/task") {
        let Ok(entry) = entry else { continue };
        if std::fs::read_to_string(entry.path().join("comm"))
            .is_ok_and(|name| name.starts_with("coven-subscr"))
        {
            count += 1;
        }
    }
    count
}

/// Polls a condition the library offers no signal for (a thread ending, a thread sleeping),
/// failing after the guard.
fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

// ---- hand-off under load ----

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn subscriptions_joining_under_load_get_exactly_the_changes_after_their_start() {
    let _serial = serial();
    const SUBSCRIPTIONS: usize = 50;
    let coven = Arc::new(memory_store_with(Config {
        scripted_delay_ms: 1,
        max_concurrent_runs: 4,
        ..Config::default()
    }));
    let members = ["ada", "bo", "cy", "dee"];
    register_models(
        &coven,
        &[
            ("ada", "Ada", Some("words:300")),
            ("bo", "Bo", Some("words:300")),
            ("cy", "Cy", Some("words:300")),
            ("dee", "Dee", Some("words:300")),
        ],
    );
    let group = coven
        .create_group(Some("Load".into()), ids(&members), None)
        .expect("create group");
    let gid = group.id.clone();

    let stop = Arc::new(AtomicBool::new(false));
    // A failing assertion below stops the load too, so it cannot disturb later tests.
    let _stop_on_exit = StopOnDrop(stop.clone());
    let (turn_done, turns) = mpsc::channel::<usize>();
    let fan_out = {
        let (coven, gid, stop) = (coven.clone(), gid.clone(), stop.clone());
        thread::spawn(move || {
            let mut done = 0;
            while !stop.load(Ordering::SeqCst) {
                let turn = coven
                    .send(&gid, format!("question {done}"), Some("Sam".into()))
                    .expect("send");
                assert!(
                    coven.wait_turn(&turn.turn_id, GUARD).expect("wait_turn"),
                    "turn {done} did not finish"
                );
                done += 1;
                let _ = turn_done.send(done);
            }
            done
        })
    };
    let appender = {
        let (coven, gid, stop) = (coven.clone(), gid.clone(), stop.clone());
        thread::spawn(move || {
            let mut appended = 0u64;
            while !stop.load(Ordering::SeqCst) {
                coven
                    .append_user_message(&gid, format!("aside {appended}"), None)
                    .expect("append");
                appended += 1;
                // Pacing only (keeps the recorded volume small); nothing waits on it.
                thread::sleep(Duration::from_micros(500));
            }
            appended
        })
    };

    // Join only once replies are streaming, so hand-offs land among deltas.
    let mut seen = head(&coven, &gid);
    loop {
        let page = coven
            .wait_for_changes(&gid, seen, MAX_PAGE, GUARD)
            .expect("wait_for_changes");
        assert!(!page.is_empty(), "the load produced nothing");
        seen = page.last().expect("non-empty").rev;
        if page
            .iter()
            .any(|c| matches!(c.update, GroupUpdate::ReplyDelta { .. }))
        {
            break;
        }
    }

    let mut rng = Rng::from_seed(0x5EED_C0FE);
    let mut subscriptions = Vec::with_capacity(SUBSCRIPTIONS);
    // The group as it was at revs passed on the way, each with its timeline then: where a
    // subscriber starts, and what it has seen by its start (a reply's deltas collapse once it
    // finishes, so the log alone cannot say what a reader at an old rev had).
    let mut passed = vec![coven.get_group(&gid).expect("snapshot")];
    for index in 0..SUBSCRIPTIONS {
        // Let the head move on between joins.
        let target = seen + 20;
        while seen < target {
            let page = coven
                .wait_for_changes(&gid, seen, MAX_PAGE, GUARD)
                .expect("wait_for_changes");
            assert!(!page.is_empty(), "the load stalled");
            seen = page.last().expect("non-empty").rev;
        }
        passed.push(coven.get_group(&gid).expect("snapshot"));
        // Every fifth joins at the head itself: a pure live hand-off.
        let at = if index % 5 == 0 {
            passed.len() - 1
        } else {
            rng.between(0, passed.len() as u64 - 1) as usize
        };
        let start = passed[at].rev;
        let recorder = Recorder::new(start);
        let subscription = coven
            .subscribe(&gid, start, recorder.clone())
            .expect("subscribe");
        subscriptions.push((passed[at].events.clone(), recorder, subscription));
    }

    // Keep committing after the last join: two more whole turns.
    let mut finished = 0;
    while finished < 2 {
        turns.recv_timeout(GUARD).expect("a turn finished");
        finished += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let turns_run = fan_out.join().expect("fan-out thread");
    let appended = appender.join().expect("append thread");
    let final_rev = head(&coven, &gid);
    eprintln!(
        "hand-off: {turns_run} turns, {appended} asides, final rev {final_rev}, \
         {SUBSCRIPTIONS} subscriptions"
    );

    assert_log_replays_the_timeline(&coven, &gid);
    for (at_start, recorder, subscription) in &subscriptions {
        let received = recorder.wait_for_rev(final_rev);
        assert_delivered_from(
            &coven,
            &gid,
            recorder.start,
            at_start,
            &received,
            &format!("subscription from rev {}", recorder.start),
        );
        assert_eq!(subscription.group_id(), gid);
    }
    for (_, _, subscription) in &subscriptions {
        subscription.cancel();
    }
}

// ---- lag ----

/// A gate the slow listener waits at on every batch.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut open = lock(&self.open);
        while !*open {
            open = self
                .opened
                .wait(open)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn open(&self) {
        *lock(&self.open) = true;
        self.opened.notify_all();
    }
}

struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

#[derive(Default)]
struct LagTally {
    /// Rev of the last change received.
    last: u64,
    received: u64,
    batches: u64,
    largest_batch: usize,
    /// Next expected message index per writer thread (writers' own order must hold).
    per_writer: HashMap<usize, usize>,
    violation: Option<String>,
}

/// Blocks at the gate on every batch and keeps only counters, not the changes.
struct Laggard {
    gate: Arc<Gate>,
    tally: Mutex<LagTally>,
    progressed: Condvar,
}

impl GroupListener for Laggard {
    fn on_updates(&self, updates: Vec<GroupChange>) -> Result<()> {
        self.gate.pass();
        let mut tally = lock(&self.tally);
        tally.batches += 1;
        tally.largest_batch = tally.largest_batch.max(updates.len());
        for change in &updates {
            tally.received += 1;
            if tally.violation.is_none() && change.rev != tally.last + 1 {
                tally.violation = Some(format!(
                    "rev {} followed rev {} (batch {})",
                    change.rev, tally.last, tally.batches
                ));
            }
            tally.last = change.rev;
            if let GroupUpdate::EventAppended { event } = &change.update {
                let parsed = event.text.strip_prefix('w').and_then(|tag| {
                    let (writer, index) = tag.split_once('-')?;
                    Some((writer.parse::<usize>().ok()?, index.parse::<usize>().ok()?))
                });
                match parsed {
                    Some((writer, index)) => {
                        let due = tally.per_writer.get(&writer).copied().unwrap_or(0);
                        if due != index && tally.violation.is_none() {
                            tally.violation = Some(format!(
                                "writer {writer}: message {index} where {due} was due"
                            ));
                        }
                        tally.per_writer.insert(writer, index + 1);
                    }
                    None if tally.violation.is_none() => {
                        tally.violation = Some(format!("unexpected text {:?}", event.text));
                    }
                    None => {}
                }
            } else if tally.violation.is_none() {
                tally.violation = Some(format!("unexpected update {:?}", change.update));
            }
        }
        drop(tally);
        self.progressed.notify_all();
        Ok(())
    }
}

#[test]
fn lagging_listeners_get_every_change_once_in_order_in_bounded_memory() {
    let _serial = serial();
    // Many writers make big group commits, which keeps a debug build fast.
    const WRITERS: usize = 50;
    const TOTAL: usize = 100_000;
    // Several laggards on one group: each would hold its own copy of every change if the queue
    // were unbounded, far more than the bound below; capped queues cost a few MiB in all.
    const LAGGARDS: usize = 8;
    const BOUND_MIB: u64 = 200;

    let dir = tempfile::tempdir().expect("temporary directory");
    let coven = open_file(
        &dir.path().join("lag.redb"),
        Config {
            durable: false,
            ..Config::default()
        },
    );
    register(&coven, &[("ada", "Ada")]);
    let group = coven
        .create_group(None, ids(&["ada"]), None)
        .expect("create group");
    let start = head(&coven, &group.id);

    let gate = Arc::new(Gate::default());
    let laggards: Vec<Arc<Laggard>> = (0..LAGGARDS)
        .map(|_| {
            Arc::new(Laggard {
                gate: gate.clone(),
                tally: Mutex::new(LagTally {
                    last: start,
                    ..LagTally::default()
                }),
                progressed: Condvar::new(),
            })
        })
        .collect();
    let subscriptions: Vec<Arc<Subscription>> = laggards
        .iter()
        .map(|laggard| {
            coven
                .subscribe(&group.id, start, laggard.clone())
                .expect("subscribe")
        })
        .collect();
    // Declared after the subscriptions, so a failing assertion opens the gate before their
    // drop waits for their threads.
    let _open_on_exit = OpenOnDrop(gate.clone());

    reset_peak_rss();
    let (rss_before, hwm_before) = (status_kib("VmRSS:"), status_kib("VmHWM:"));
    let began = Instant::now();
    thread::scope(|scope| {
        for writer in 0..WRITERS {
            let (coven, gid) = (&coven, &group.id);
            scope.spawn(move || {
                for index in 0..TOTAL / WRITERS {
                    coven
                        .append_user_message(gid, format!("w{writer}-{index}"), None)
                        .expect("append");
                }
            });
        }
    });
    let wrote = began.elapsed();
    let final_rev = head(&coven, &group.id);
    assert_eq!(
        final_rev,
        start + TOTAL as u64,
        "every append is one change"
    );
    // The listeners sat at the gate through all of it: what they hold is what their queues kept.
    let (rss_blocked, hwm_blocked) = (status_kib("VmRSS:"), status_kib("VmHWM:"));
    for laggard in &laggards {
        assert_eq!(
            lock(&laggard.tally).received,
            0,
            "a listener passed the closed gate"
        );
    }

    gate.open();
    // Each laggard re-reads 100,000 changes from the store; since format 2 a change's text is
    // read from its event (stored once), a second scan per page, which in a debug build on a
    // loaded machine can take longer than `GUARD`.
    let deadline = Instant::now() + CATCH_UP_GUARD;
    let mut batches = Vec::new();
    for (index, laggard) in laggards.iter().enumerate() {
        let mut tally = lock(&laggard.tally);
        while tally.last < final_rev && tally.violation.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "laggard {index} stopped at rev {} of {final_rev}",
                tally.last
            );
            tally = laggard
                .progressed
                .wait_timeout(tally, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        assert_eq!(
            tally.violation, None,
            "laggard {index}: out of order or duplicated"
        );
        assert_eq!(tally.last, final_rev);
        assert_eq!(
            tally.received, TOTAL as u64,
            "laggard {index}: each change once"
        );
        assert_eq!(tally.per_writer.len(), WRITERS);
        assert!(
            tally
                .per_writer
                .values()
                .all(|next| *next == TOTAL / WRITERS),
            "laggard {index}: a writer's messages are missing: {:?}",
            tally.per_writer
        );
        // An unbounded queue would hand the whole pile over in one batch.
        assert!(
            tally.largest_batch <= SUBSCRIPTION_QUEUE_LIMIT,
            "laggard {index}: a batch of {} exceeds the queue limit {SUBSCRIPTION_QUEUE_LIMIT}",
            tally.largest_batch
        );
        batches.push((tally.batches, tally.largest_batch));
    }
    let delivered = began.elapsed();
    let (rss_after, hwm_after) = (status_kib("VmRSS:"), status_kib("VmHWM:"));
    let growth_mib = hwm_after.max(rss_after).saturating_sub(rss_before) / 1024;
    let unbounded_mib =
        (LAGGARDS * TOTAL * std::mem::size_of::<GroupChange>()) as u64 / (1024 * 1024);
    eprintln!(
        "lag: {TOTAL} changes from {WRITERS} threads written in {wrote:?}; {LAGGARDS} blocked \
         listeners caught up by {delivered:?} (batches, largest) {batches:?}; \
         VmRSS before {rss_before} KiB, blocked {rss_blocked} KiB, after {rss_after} KiB; \
         VmHWM before {hwm_before} KiB, blocked {hwm_blocked} KiB, after {hwm_after} KiB; \
         growth {growth_mib} MiB (unbounded queues: over {unbounded_mib} MiB)"
    );
    assert!(
        growth_mib < BOUND_MIB,
        "memory grew by {growth_mib} MiB (bound {BOUND_MIB} MiB; unbounded queues would hold \
         over {unbounded_mib} MiB)"
    );
    drop(subscriptions);
    coven.close();
}

fn open_file(path: &Path, config: Config) -> Coven {
    Coven::open(path, config).expect("open a store file")
}

// ---- many subscribers, two stores ----

/// The same operations for any store; returns the group id.
fn run_script(coven: &Coven, mut between: impl FnMut(&str, usize)) -> String {
    register_models(
        coven,
        &[
            ("ada", "Ada", None),
            ("bo", "Bo", None),
            ("cy", "Cy", Some("words:7")),
        ],
    );
    let group = coven
        .create_group(Some("Coven".into()), ids(&["ada", "bo"]), None)
        .expect("create group");
    let gid = group.id;
    let turn = |text: &str, author: Option<&str>| {
        let handle = coven
            .send(&gid, text.into(), author.map(str::to_owned))
            .expect("send");
        assert!(
            coven.wait_turn(&handle.turn_id, GUARD).expect("wait_turn"),
            "turn {text:?} did not finish"
        );
    };
    between(&gid, 0);
    coven
        .append_user_message(&gid, "Hello, both".into(), Some("Sam".into()))
        .expect("append");
    turn("What is a familiar?", Some("Sam"));
    between(&gid, 1);
    coven
        .rename_group(&gid, "Renamed coven".into())
        .expect("rename");
    coven.add_member(&gid, "cy").expect("add member");
    turn("And now, all three of you?", None);
    between(&gid, 2);
    coven.remove_member(&gid, "ada").expect("remove member");
    coven
        .append_user_message(&gid, "Ada left.".into(), Some("Kim".into()))
        .expect("append");
    turn("Last question", Some("Kim"));
    gid
}

#[test]
fn many_subscribers_see_one_sequence_and_equal_stores_build_equal_timelines() {
    let _serial = serial();
    let config = Config {
        scripted_delay_ms: 0,
        // One run at a time: which member claims which seq is then a function of the roster.
        max_concurrent_runs: 1,
        ..Config::default()
    };
    let first = memory_store_with(config.clone());
    let mut recorders: Vec<(Arc<Subscription>, Arc<Recorder>)> = Vec::new();
    let first_gid = run_script(&first, |gid, step| {
        // Three at the start, three mid-way from rev 0, three mid-way from the head.
        for _ in 0..3 {
            let start = if step == 2 { head(&first, gid) } else { 0 };
            let recorder = Recorder::new(start);
            let subscription = first
                .subscribe(gid, start, recorder.clone())
                .expect("subscribe");
            recorders.push((subscription, recorder));
        }
    });
    let final_rev = head(&first, &first_gid);
    let log = changes_after(&first, &first_gid, 0);
    assert_eq!(revs(&log), (1..=final_rev).collect::<Vec<_>>());
    let mut from_zero = 0;
    for (_, recorder) in &recorders {
        let received = recorder.wait_for_rev(final_rev);
        assert_same_changes(
            &received,
            &log[recorder.start as usize..],
            &format!("subscriber from rev {}", recorder.start),
        );
        if recorder.start == 0 {
            from_zero += 1;
        }
    }
    assert_eq!(from_zero, 6);
    for (subscription, _) in recorders.drain(..) {
        subscription.cancel();
    }

    let second = memory_store_with(config);
    let second_gid = run_script(&second, |_, _| {});
    let a = first.get_group(&first_gid).expect("get_group");
    let b = second.get_group(&second_gid).expect("get_group");
    assert_eq!(
        outcome_view(&a.events),
        outcome_view(&b.events),
        "the two timelines differ"
    );
    assert_eq!(a.group.title, b.group.title);
    assert_eq!(a.group.member_ids(), b.group.member_ids());
    assert!(a.events.iter().all(|e| !e.streaming && e.error.is_none()));
    let replies = a
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Familiar)
        .count();
    assert_eq!(replies, 2 + 3 + 2, "every member answered every turn");
    assert!(a
        .events
        .iter()
        .any(|e| e.familiar_id.as_deref() == Some("cy") && e.text == "w0 w1 w2 w3 w4 w5 w6"));
}

// ---- lifecycle ----

/// Sends `()` nowhere but disconnects its channel when the listener is dropped.
struct DropSignal(#[allow(dead_code)] mpsc::Sender<()>);

struct Watched {
    recorder: Arc<Recorder>,
    _dropped: DropSignal,
}

impl GroupListener for Watched {
    fn on_updates(&self, updates: Vec<GroupChange>) -> Result<()> {
        self.recorder.on_updates(updates)
    }
}

#[test]
fn a_thousand_subscribe_cancel_cycles_leave_no_thread_behind() {
    let _serial = serial();
    let coven = memory_store();
    register(&coven, &[("ada", "Ada")]);
    let group = coven
        .create_group(None, ids(&["ada"]), None)
        .expect("create group");
    for i in 0..3 {
        coven
            .append_user_message(&group.id, format!("m{i}"), None)
            .expect("append");
    }
    let rev = head(&coven, &group.id);
    let (library_before, all_before) = thread_counts();
    for cycle in 0..1_000u64 {
        let start = cycle % (rev + 1);
        let recorder = Recorder::new(start);
        let subscription = coven
            .subscribe(&group.id, start, recorder.clone())
            .expect("subscribe");
        if cycle % 10 == 0 {
            // Sometimes cancel only after the backlog arrived.
            recorder.wait_for_rev(rev);
        }
        if cycle % 2 == 0 {
            subscription.cancel();
            subscription.cancel();
            drop(subscription);
        } else {
            drop(subscription);
        }
        // Cancel and drop return once the delivery thread is gone, taking its listener along.
        assert_eq!(
            Arc::strong_count(&recorder),
            1,
            "cycle {cycle}: the delivery thread still holds the listener"
        );
        let received = recorder.received();
        assert!(
            received
                .iter()
                .map(|c| c.rev)
                .eq(start + 1..=start + received.len() as u64),
            "cycle {cycle}: partial delivery was not a contiguous prefix: {:?}",
            revs(&received)
        );
    }
    let (library_after, all_after) = thread_counts();
    eprintln!(
        "threads: library {library_before} -> {library_after}, all {all_before} -> {all_after}"
    );
    assert_eq!(
        library_after, library_before,
        "subscribe/cancel cycles left library threads running"
    );
    // Other tests of this binary wait on the file lock; the harness may still be retiring the
    // thread of the test that ran before this one, or starting the next.
    assert!(
        all_after <= all_before + 1,
        "subscribe/cancel cycles left threads running: {all_before} -> {all_after}"
    );
}

#[test]
fn deleting_the_group_ends_its_subscriptions_with_group_deleted() {
    let _serial = serial();
    let coven = memory_store();
    register(&coven, &[("ada", "Ada")]);
    let group = coven
        .create_group(None, ids(&["ada"]), None)
        .expect("create group");
    let other = coven
        .create_group(Some("Other".into()), ids(&["ada"]), None)
        .expect("create other group");
    coven
        .append_user_message(&group.id, "before".into(), None)
        .expect("append");
    let threads_before = subscription_threads();

    let mut watched = Vec::new();
    let mut drops = Vec::new();
    for start in [0, head(&coven, &group.id)] {
        let (signal, dropped) = mpsc::channel();
        let recorder = Recorder::new(start);
        let listener = Arc::new(Watched {
            recorder: recorder.clone(),
            _dropped: DropSignal(signal),
        });
        let subscription = coven
            .subscribe(&group.id, start, listener)
            .expect("subscribe");
        watched.push((subscription, recorder));
        drops.push(dropped);
    }
    let bystander = Recorder::new(head(&coven, &other.id));
    let bystander_sub = coven
        .subscribe(&other.id, bystander.start, bystander.clone())
        .expect("subscribe to the other group");
    // A new thread names itself once it runs.
    eventually("three delivery threads", || {
        subscription_threads() == threads_before + 3
    });

    coven
        .append_user_message(&group.id, "after".into(), None)
        .expect("append");
    let last = head(&coven, &group.id);
    coven.delete_group(&group.id).expect("delete group");

    for (_, recorder) in &watched {
        let received = recorder.wait_until("GroupDeleted", |changes| {
            changes
                .iter()
                .any(|c| c.update == GroupUpdate::GroupDeleted)
        });
        let (deleted, before) = received.split_last().expect("non-empty");
        assert_eq!(
            deleted.update,
            GroupUpdate::GroupDeleted,
            "deletion comes last"
        );
        assert_eq!(deleted.rev, last + 1, "the deletion takes the next rev");
        assert_eq!(deleted.group_id, group.id);
        assert_eq!(
            revs(before),
            (recorder.start + 1..=last).collect::<Vec<_>>(),
            "changes before the deletion"
        );
    }
    // The delivery threads end by themselves: each drops its listener, then exits.
    for dropped in &drops {
        assert_eq!(
            dropped.recv_timeout(GUARD),
            Err(mpsc::RecvTimeoutError::Disconnected),
            "the delivery thread kept its listener after GroupDeleted"
        );
    }
    eventually("the delivery threads to exit", || {
        subscription_threads() == threads_before + 1
    });
    // Nothing more arrives, and the handles are still safe to cancel and drop.
    for (subscription, recorder) in &watched {
        subscription.cancel();
        let received = recorder.received();
        assert_eq!(
            received
                .iter()
                .filter(|c| c.update == GroupUpdate::GroupDeleted)
                .count(),
            1
        );
        assert_eq!(
            received.last().map(|c| &c.update),
            Some(&GroupUpdate::GroupDeleted)
        );
    }
    drop(watched);

    // The other group's subscription is untouched.
    coven
        .append_user_message(&other.id, "still here".into(), None)
        .expect("append to the other group");
    let received = bystander.wait_for_rev(head(&coven, &other.id));
    assert_eq!(received.len(), 1);
    assert!(!received
        .iter()
        .any(|c| c.update == GroupUpdate::GroupDeleted));
    bystander_sub.cancel();

    // A deleted group cannot be subscribed to again.
    expect_not_found(
        coven.subscribe(&group.id, 0, Recorder::new(0)),
        "group",
        &group.id,
    );
    // A cancelled delivery thread has run its last code when `cancel` returns; the OS takes a
    // moment more to remove it from /proc.
    eventually("the delivery threads to exit", || {
        subscription_threads() == threads_before
    });
}

/// Waits at a gate before recording each batch.
struct Gated {
    gate: Arc<Gate>,
    recorder: Arc<Recorder>,
    _dropped: DropSignal,
}

impl GroupListener for Gated {
    fn on_updates(&self, updates: Vec<GroupChange>) -> Result<()> {
        self.gate.pass();
        self.recorder.on_updates(updates)
    }
}

#[test]
fn deleting_the_group_ends_a_lagging_subscription_too() {
    let _serial = serial();
    const WRITERS: usize = 20;
    // More than the queue holds, so the laggard has fallen back to reading the store, whose
    // log the deletion removes.
    let total = SUBSCRIPTION_QUEUE_LIMIT + 200;
    let coven = memory_store();
    register(&coven, &[("ada", "Ada")]);
    let group = coven
        .create_group(None, ids(&["ada"]), None)
        .expect("create group");
    let start = head(&coven, &group.id);
    let gate = Arc::new(Gate::default());
    let recorder = Recorder::new(start);
    let (signal, dropped) = mpsc::channel();
    let subscription = coven
        .subscribe(
            &group.id,
            start,
            Arc::new(Gated {
                gate: gate.clone(),
                recorder: recorder.clone(),
                _dropped: DropSignal(signal),
            }),
        )
        .expect("subscribe");
    let _open_on_exit = OpenOnDrop(gate.clone());
    thread::scope(|scope| {
        for writer in 0..WRITERS {
            let (coven, gid) = (&coven, &group.id);
            scope.spawn(move || {
                for index in (writer..total).step_by(WRITERS) {
                    coven
                        .append_user_message(gid, format!("m{index}"), None)
                        .expect("append");
                }
            });
        }
    });
    assert_eq!(head(&coven, &group.id), start + total as u64);
    coven.delete_group(&group.id).expect("delete group");
    gate.open();

    let received = recorder.wait_until("GroupDeleted", |changes| {
        changes
            .iter()
            .any(|c| c.update == GroupUpdate::GroupDeleted)
    });
    let (deleted, before) = received.split_last().expect("non-empty");
    assert_eq!(
        deleted.update,
        GroupUpdate::GroupDeleted,
        "deletion comes last"
    );
    assert_eq!(deleted.group_id, group.id);
    // What it got before the deletion is a gapless prefix of the (now deleted) log.
    assert!(
        revs(before)
            .into_iter()
            .eq(start + 1..=start + before.len() as u64),
        "changes before the deletion: {:?}",
        revs(before)
    );
    assert!(deleted.rev > before.last().map_or(start, |c| c.rev));
    assert_eq!(
        dropped.recv_timeout(GUARD),
        Err(mpsc::RecvTimeoutError::Disconnected),
        "the delivery thread kept its listener after GroupDeleted"
    );
    assert_eq!(
        recorder.received().len(),
        received.len(),
        "nothing after GroupDeleted"
    );
    subscription.cancel();
}

// ---- misbehaving listeners ----

struct Refusing {
    recorder: Arc<Recorder>,
    panics: bool,
    calls: AtomicUsize,
}

impl GroupListener for Refusing {
    fn on_updates(&self, updates: Vec<GroupChange>) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.recorder.on_updates(updates)?;
        if self.panics {
            panic!("listener panics on purpose (expected by the test)");
        }
        Err(Error::Harness {
            reason: "listener refuses on purpose".into(),
        })
    }
}

#[test]
fn a_listener_that_errs_or_panics_keeps_receiving() {
    let _serial = serial();
    let coven = memory_store();
    register(&coven, &[("ada", "Ada")]);
    let group = coven
        .create_group(None, ids(&["ada"]), None)
        .expect("create group");
    let start = head(&coven, &group.id);
    let listeners: Vec<Arc<Refusing>> = [false, true]
        .into_iter()
        .map(|panics| {
            Arc::new(Refusing {
                recorder: Recorder::new(start),
                panics,
                calls: AtomicUsize::new(0),
            })
        })
        .collect();
    let subscriptions: Vec<_> = listeners
        .iter()
        .map(|listener| {
            coven
                .subscribe(&group.id, start, listener.clone())
                .expect("subscribe")
        })
        .collect();

    // Silence the expected panics' messages while they happen.
    let quiet = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    for i in 0..5 {
        // One commit per batch: wait for both listeners before the next commit.
        let event = coven
            .append_user_message(&group.id, format!("m{i}"), None)
            .expect("append");
        for listener in &listeners {
            listener.recorder.wait_for_rev(event.rev);
        }
    }
    panic::set_hook(quiet);

    let final_rev = head(&coven, &group.id);
    let expected = changes_after(&coven, &group.id, start);
    assert_eq!(expected.len(), 5);
    for listener in &listeners {
        assert_eq!(listener.recorder.received(), expected);
        assert_eq!(
            listener.calls.load(Ordering::SeqCst),
            5,
            "one call per commit, each after a failed one"
        );
        assert_eq!(
            listener.recorder.received().last().map(|c| c.rev),
            Some(final_rev)
        );
    }
    drop(subscriptions);
}

/// Cancels its own subscription from inside the listener after the first batch.
struct SelfCancelling {
    subscription: Mutex<Option<Arc<Subscription>>>,
    recorder: Arc<Recorder>,
}

impl GroupListener for SelfCancelling {
    fn on_updates(&self, updates: Vec<GroupChange>) -> Result<()> {
        self.recorder.on_updates(updates)?;
        let subscription = lock(&self.subscription).take();
        if let Some(subscription) = subscription {
            subscription.cancel();
        }
        Ok(())
    }
}

#[test]
fn a_listener_may_cancel_its_own_subscription() {
    let _serial = serial();
    let coven = memory_store();
    register(&coven, &[("ada", "Ada")]);
    let group = coven
        .create_group(None, ids(&["ada"]), None)
        .expect("create group");
    let threads_before = subscription_threads();
    let start = head(&coven, &group.id);
    let listener = Arc::new(SelfCancelling {
        subscription: Mutex::new(None),
        recorder: Recorder::new(start),
    });
    // Hold the listener's lock so the first batch cannot run before the handle is in place.
    let mut slot = lock(&listener.subscription);
    let subscription = coven
        .subscribe(&group.id, start, listener.clone())
        .expect("subscribe");
    *slot = Some(subscription);
    drop(slot);
    let first = coven
        .append_user_message(&group.id, "one".into(), None)
        .expect("append");
    listener.recorder.wait_for_rev(first.rev);
    eventually("the self-cancelled delivery thread to exit", || {
        subscription_threads() == threads_before
    });
    coven
        .append_user_message(&group.id, "two".into(), None)
        .expect("append");
    assert_eq!(revs(&listener.recorder.received()), vec![first.rev]);
    assert_eq!(Arc::strong_count(&listener), 1);
}

// ---- long-poll ----

/// The scheduler state of a thread of this process (`R`, `S`, `D`, …).
fn thread_state(tid: &str) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[test]
fn long_poll_wakes_on_a_commit_and_times_out_empty() {
    let _serial = serial();
    let coven = Arc::new(memory_store());
    register(&coven, &[("ada", "Ada")]);
    let group = coven
        .create_group(None, ids(&["ada"]), None)
        .expect("create group");
    let other = coven
        .create_group(None, ids(&["ada"]), None)
        .expect("create other group");
    let rev = head(&coven, &group.id);

    // Backlog: answers at once with what is already there.
    let page = coven
        .wait_for_changes(&group.id, 0, MAX_PAGE, GUARD)
        .expect("wait_for_changes");
    assert_eq!(page, changes_after(&coven, &group.id, 0));
    let page = coven
        .wait_for_changes(&group.id, 0, 1, GUARD)
        .expect("wait_for_changes");
    assert_eq!(revs(&page), vec![1], "the limit holds");

    // Nothing commits: an empty page at the timeout.
    let timeout = Duration::from_millis(100);
    let began = Instant::now();
    let page = coven
        .wait_for_changes(&group.id, rev, 10, timeout)
        .expect("wait_for_changes");
    assert!(page.is_empty(), "nothing was committed: {page:?}");
    assert!(began.elapsed() >= timeout, "returned before its timeout");

    // Commits to another group do not answer this one.
    let poller = {
        let (coven, gid) = (coven.clone(), group.id.clone());
        thread::spawn(move || coven.wait_for_changes(&gid, rev, 10, timeout))
    };
    coven
        .append_user_message(&other.id, "elsewhere".into(), None)
        .expect("append to the other group");
    let page = poller.join().expect("poller").expect("wait_for_changes");
    assert!(page.is_empty(), "woken by another group's commit: {page:?}");

    // A poller blocked in the wait is woken by another thread's commit.
    let (tid_tx, tid_rx) = mpsc::channel();
    let poller = {
        let (coven, gid) = (coven.clone(), group.id.clone());
        thread::spawn(move || {
            let me = std::fs::read_link("/proc/thread-self").expect("read /proc/thread-self");
            let tid = me
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a thread id")
                .to_owned();
            tid_tx.send(tid).expect("send tid");
            let page = coven.wait_for_changes(&gid, rev, 10, GUARD);
            (page, Instant::now())
        })
    };
    let tid = tid_rx.recv_timeout(GUARD).expect("poller started");
    eventually("the poller to block", || thread_state(&tid) == Some('S'));
    let committed = coven
        .append_user_message(&group.id, "wake up".into(), Some("Sam".into()))
        .expect("append");
    let committed_at = Instant::now();
    let (page, returned_at) = poller.join().expect("poller");
    let page = page.expect("wait_for_changes");
    assert_eq!(
        revs(&page),
        vec![committed.rev],
        "the poller got the new change"
    );
    match &page[0].update {
        GroupUpdate::EventAppended { event } => assert_eq!(event, &committed),
        other => panic!("expected the appended event, got {other:?}"),
    }
    eprintln!(
        "long-poll returned {:?} after the commit was acknowledged",
        returned_at.saturating_duration_since(committed_at)
    );
    assert!(
        returned_at.saturating_duration_since(committed_at) < GUARD,
        "the poller ran into its guard"
    );
}

// ---- cursors ----

#[test]
fn cursors_are_per_consumer_and_survive_reopen() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("cursors.redb");
    let coven = open_file(&path, Config::default());
    register(&coven, &[("ada", "Ada")]);
    let group = coven
        .create_group(None, ids(&["ada"]), None)
        .expect("create group");
    let other = coven
        .create_group(None, ids(&["ada"]), None)
        .expect("create other group");
    for i in 0..4 {
        coven
            .append_user_message(&group.id, format!("m{i}"), None)
            .expect("append");
    }
    let rev = head(&coven, &group.id);
    assert!(rev >= 4);

    assert_eq!(coven.get_cursor(&group.id, "phone"), Ok(None));
    coven.set_cursor(&group.id, "phone", 2).expect("set phone");
    coven
        .set_cursor(&group.id, "laptop", rev)
        .expect("set laptop");
    coven
        .set_cursor(&other.id, "phone", 1)
        .expect("set phone on other");
    assert_eq!(coven.get_cursor(&group.id, "phone"), Ok(Some(2)));
    assert_eq!(coven.get_cursor(&group.id, "laptop"), Ok(Some(rev)));
    assert_eq!(coven.get_cursor(&other.id, "phone"), Ok(Some(1)));
    assert_eq!(coven.get_cursor(&other.id, "laptop"), Ok(None));
    // Moving one consumer leaves the others; a cursor may move back and sit at 0.
    coven.set_cursor(&group.id, "phone", 3).expect("move phone");
    coven
        .set_cursor(&group.id, "laptop", 0)
        .expect("rewind laptop");
    assert_eq!(coven.get_cursor(&group.id, "phone"), Ok(Some(3)));
    assert_eq!(coven.get_cursor(&group.id, "laptop"), Ok(Some(0)));
    coven
        .set_cursor(&group.id, "laptop", rev)
        .expect("set laptop");
    // Setting a cursor is not a change of the group.
    assert_eq!(head(&coven, &group.id), rev);

    // Refusals change nothing.
    expect_invalid(coven.set_cursor(&group.id, "phone", rev + 1), "rev");
    expect_invalid(coven.set_cursor(&group.id, "", 1), "consumer");
    expect_invalid(coven.get_cursor(&group.id, ""), "consumer");
    expect_not_found(
        coven.set_cursor(UNKNOWN_GROUP, "phone", 0),
        "group",
        UNKNOWN_GROUP,
    );
    expect_not_found(
        coven.get_cursor(UNKNOWN_GROUP, "phone"),
        "group",
        UNKNOWN_GROUP,
    );
    expect_invalid(coven.set_cursor("not-a-uuid", "phone", 0), "group_id");
    expect_invalid(coven.get_cursor("not-a-uuid", "phone"), "group_id");
    assert_eq!(coven.get_cursor(&group.id, "phone"), Ok(Some(3)));

    coven.close();
    assert_eq!(coven.get_cursor(&group.id, "phone"), Err(Error::Closed));
    drop(coven);
    let coven = open_file(&path, Config::default());
    assert_eq!(coven.get_cursor(&group.id, "phone"), Ok(Some(3)));
    assert_eq!(coven.get_cursor(&group.id, "laptop"), Ok(Some(rev)));
    assert_eq!(coven.get_cursor(&other.id, "phone"), Ok(Some(1)));
    assert_eq!(coven.get_cursor(&other.id, "laptop"), Ok(None));
    // A reader resumes from its cursor.
    let resumed = changes_after(&coven, &group.id, 3);
    assert_eq!(revs(&resumed), (4..=rev).collect::<Vec<_>>());

    // Deleting a group takes its cursors with it.
    coven.delete_group(&other.id).expect("delete other group");
    expect_not_found(coven.get_cursor(&other.id, "phone"), "group", &other.id);
    assert_eq!(coven.get_cursor(&group.id, "phone"), Ok(Some(3)));
    coven.close();
}

// ---- validation ----

#[test]
fn subscribe_changes_since_and_wait_for_changes_validate_their_arguments() {
    let _serial = serial();
    let coven = memory_store();
    register(&coven, &[("ada", "Ada")]);
    let group = coven
        .create_group(None, ids(&["ada"]), None)
        .expect("create group");
    let gid = group.id.as_str();
    let rev = head(&coven, gid);
    let short = Duration::from_millis(100);
    let threads_before = subscription_threads();

    // Unknown group.
    expect_not_found(
        coven.subscribe(UNKNOWN_GROUP, 0, Recorder::new(0)),
        "group",
        UNKNOWN_GROUP,
    );
    expect_not_found(
        coven.changes_since(UNKNOWN_GROUP, 0, 10),
        "group",
        UNKNOWN_GROUP,
    );
    expect_not_found(
        coven.wait_for_changes(UNKNOWN_GROUP, 0, 10, short),
        "group",
        UNKNOWN_GROUP,
    );
    // Malformed id.
    for bad in ["not-a-uuid", "", "01890000-0000-7000-8000-00000000000"] {
        expect_invalid(coven.subscribe(bad, 0, Recorder::new(0)), "group_id");
        expect_invalid(coven.changes_since(bad, 0, 10), "group_id");
        expect_invalid(coven.wait_for_changes(bad, 0, 10, short), "group_id");
    }
    // Rev beyond the head.
    expect_invalid(coven.subscribe(gid, rev + 1, Recorder::new(0)), "after_rev");
    expect_invalid(coven.changes_since(gid, rev + 1, 10), "after_rev");
    expect_invalid(coven.wait_for_changes(gid, rev + 1, 10, short), "after_rev");
    expect_invalid(
        coven.subscribe(gid, u64::MAX, Recorder::new(0)),
        "after_rev",
    );
    // Page limits.
    for limit in [0, MAX_PAGE + 1] {
        expect_invalid(coven.changes_since(gid, 0, limit), "limit");
        expect_invalid(coven.wait_for_changes(gid, 0, limit, short), "limit");
    }
    // At the head itself everything is valid and empty.
    assert_eq!(coven.changes_since(gid, rev, 10), Ok(Vec::new()));
    let at_head = Recorder::new(rev);
    let subscription = coven
        .subscribe(gid, rev, at_head.clone())
        .expect("subscribe at the head");
    subscription.cancel();
    assert!(at_head.received().is_empty());
    // No refusal started a thread or changed the group (the cancelled one at the head leaves
    // /proc a moment after `cancel` returns).
    eventually("the delivery threads to exit", || {
        subscription_threads() == threads_before
    });
    assert_eq!(head(&coven, gid), rev);

    // A closed store refuses all three.
    coven.close();
    assert_eq!(
        coven.subscribe(gid, 0, Recorder::new(0)).err(),
        Some(Error::Closed)
    );
    assert_eq!(coven.changes_since(gid, 0, 10), Err(Error::Closed));
    assert_eq!(
        coven.wait_for_changes(gid, 0, 10, short),
        Err(Error::Closed)
    );
}

#[test]
fn closing_the_store_ends_a_long_poll_and_refuses_new_subscriptions() {
    let _serial = serial();
    let coven = Arc::new(memory_store());
    register(&coven, &[("ada", "Ada")]);
    let group = coven
        .create_group(None, ids(&["ada"]), None)
        .expect("create group");
    let rev = head(&coven, &group.id);

    let poller = {
        let coven = coven.clone();
        let group_id = group.id.clone();
        thread::spawn(move || coven.wait_for_changes(&group_id, rev, 10, GUARD))
    };
    // Whether the poller is already asleep or not yet waiting, closing must end it with
    // `Closed` instead of letting it sleep out its timeout and report "nothing new".
    coven.close();
    let result = poller.join().expect("poller thread");
    assert_eq!(result, Err(Error::Closed));
    assert!(matches!(
        coven.subscribe(&group.id, 0, Recorder::new(0)),
        Err(Error::Closed)
    ));
}
