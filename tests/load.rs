//! Load: 200 groups of 8 scripted members on one durable file store, 20 threads sending turns
//! at once for a bounded time, 50 subscriptions (half from the start, half joining mid-run from
//! rev 0, so their backlog is read under load). Afterwards nothing acknowledged is lost, every
//! turn has one whole reply per member, every subscriber of a group has seen exactly the group's
//! change log after its start (deltas aside: a subscriber that saw a reply's deltas live and one
//! that read them collapsed from the log both see text that its finished reply extends), the
//! integrity check is clean, and memory is
//! flat: past the warm-up, resident memory grows by less than a small allowance while the store
//! file keeps growing. redb's page cache is capped for this store (its default of 1 GiB would
//! make resident memory follow the file), so what is measured is the library's own memory.
//!
//! `cargo test --test load -- --nocapture` prints the figures (throughput, memory, file size).

mod common;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use coven_group::{
    Config, Coven, EventKind, Familiar, GroupChange, GroupListener, GroupUpdate, Result,
    Subscription, MAX_PAGE,
};

/// redb's page cache for this store, so resident memory measures the library, not the cache.
const CACHE_BYTES: usize = 4 << 20;
const GROUPS: usize = 200;
const MEMBERS: usize = 8;
const SENDERS: usize = 20;
const SUBSCRIBERS: usize = 50;
/// Groups that have subscribers (five each).
const WATCHED: usize = 10;
const WORDS: usize = 8;
/// How long the senders keep sending; every turn started by then is waited for.
const SENDING: Duration = Duration::from_secs(12);
/// Upper bound on any wait; reaching it is a failure.
const GUARD: Duration = Duration::from_secs(120);
/// Resident memory allowed to grow past the warm-up (the run writes some 15 MiB after it).
const MEMORY_ALLOWANCE_KIB: u64 = 8 * 1024;
/// Where the warm-up ends, as a fraction of the sending time (after the late subscribers).
const WARM_UP: f64 = 0.4;

fn reply_text() -> String {
    (0..WORDS)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a subscriber has seen, without keeping it: a fingerprint of every change but the deltas,
/// their count and the last rev, so the subscribers' own memory stays flat. Deltas are checked as
/// they come: the text a reply received must be what its finish carries (a subscriber that read
/// a finished reply's deltas collapsed from the log, or from inside them, gets the rest with the
/// finish); only replies still streaming keep their text.
#[derive(Debug, Default, Clone)]
struct Seen {
    count: u64,
    last_rev: u64,
    fingerprint: u64,
    /// Text received for replies still streaming, and whether their first output was received
    /// (a subscriber that started after it holds a piece from the middle).
    streaming: HashMap<u64, (bool, String)>,
}

impl Seen {
    /// Adds the next change; returns false when it does not follow what came before.
    fn push(&mut self, change: &GroupChange) -> bool {
        let mut follows = change.rev > self.last_rev;
        self.last_rev = change.rev;
        match &change.update {
            GroupUpdate::ReplyDelta { seq, text, .. } => {
                self.streaming
                    .entry(*seq)
                    .or_insert_with(|| (false, String::new()))
                    .1
                    .push_str(text);
                return follows;
            }
            GroupUpdate::EventAppended { event } if event.streaming => {
                self.streaming.insert(event.seq, (true, event.text.clone()));
            }
            GroupUpdate::ReplyFinished { event } => {
                if let Some((whole, received)) = self.streaming.remove(&event.seq) {
                    follows &= if whole {
                        event.text.starts_with(&received)
                    } else {
                        event.text.contains(&received)
                    };
                }
            }
            _ => {}
        }
        let mut hasher = DefaultHasher::new();
        self.fingerprint.hash(&mut hasher);
        change.rev.hash(&mut hasher);
        fingerprint_update(&change.update, &mut hasher);
        self.fingerprint = hasher.finish();
        self.count += 1;
        follows
    }

    /// What two readers of the same changes agree on: everything but the deltas.
    fn summary(&self) -> (u64, u64, u64) {
        (self.count, self.last_rev, self.fingerprint)
    }
}

fn fingerprint_update(update: &GroupUpdate, hasher: &mut DefaultHasher) {
    match update {
        GroupUpdate::GroupCreated { group } | GroupUpdate::GroupChanged { group } => {
            (0u8, &group.title, group.member_ids()).hash(hasher)
        }
        GroupUpdate::EventAppended { event } | GroupUpdate::ReplyFinished { event } => (
            1u8,
            event.seq,
            event.rev,
            &event.text,
            &event.familiar_id,
            event.streaming,
            event.error.as_ref().map(|e| &e.message),
        )
            .hash(hasher),
        GroupUpdate::ReplyDelta {
            seq,
            familiar_id,
            text,
        } => (2u8, seq, familiar_id, text).hash(hasher),
        GroupUpdate::SessionChanged { session } => {
            (3u8, &session.id, format!("{:?}", session.status)).hash(hasher)
        }
        GroupUpdate::SessionSacrificed { session_id } => (4u8, session_id).hash(hasher),
        GroupUpdate::GroupDeleted => 5u8.hash(hasher),
        // A replica's own changes; this test's stores are homes.
        GroupUpdate::GroupReset { .. }
        | GroupUpdate::MessagePending { .. }
        | GroupUpdate::MessageSent { .. }
        | GroupUpdate::MessageDiscarded { .. } => 6u8.hash(hasher),
    }
}

struct Watcher {
    seen: Mutex<Seen>,
    /// A change that did not follow what came before, if any arrived.
    broken: AtomicBool,
    grew: Condvar,
}

impl Watcher {
    fn new(start: u64) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Seen {
                last_rev: start,
                ..Seen::default()
            }),
            broken: AtomicBool::new(false),
            grew: Condvar::new(),
        })
    }

    /// Waits until the subscription has delivered `rev`.
    fn wait_for(&self, rev: u64) -> Seen {
        let deadline = Instant::now() + GUARD;
        let mut seen = self.seen.lock().unwrap();
        while seen.last_rev < rev {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "a subscriber stopped at rev {} of {rev}",
                seen.last_rev
            );
            seen = self.grew.wait_timeout(seen, left).unwrap().0;
        }
        seen.clone()
    }
}

impl GroupListener for Watcher {
    fn on_updates(&self, updates: Vec<GroupChange>) -> Result<()> {
        let mut seen = self.seen.lock().unwrap();
        for change in &updates {
            if !seen.push(change) {
                self.broken.store(true, Ordering::SeqCst);
            }
        }
        self.grew.notify_all();
        Ok(())
    }
}

/// The store's own change log of a group after `after_rev`, fingerprinted as a subscriber does.
fn logged(coven: &Coven, group: &str, after_rev: u64) -> Seen {
    let mut seen = Seen {
        last_rev: after_rev,
        ..Seen::default()
    };
    loop {
        let page = coven.changes_since(group, seen.last_rev, MAX_PAGE).unwrap();
        if page.is_empty() {
            return seen;
        }
        for change in &page {
            assert!(
                seen.push(change),
                "the change log goes back, or a finished reply's text differs from its deltas, at {}",
                change.rev
            );
        }
    }
}

/// One acknowledged turn: its group, user seq, turn id, text.
type Sent = (usize, u64, String, String);

fn file_kib(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len() / 1024)
}

#[test]
fn two_hundred_groups_under_twenty_senders_and_fifty_subscribers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("load.redb");
    let coven = Arc::new(Coven::open_with_cache(&path, CACHE_BYTES, Config::default()).unwrap());
    let members: Vec<String> = (0..MEMBERS).map(|i| format!("f{i}")).collect();
    for id in &members {
        let mut familiar = Familiar::new(id.clone(), id.to_uppercase(), "scripted");
        familiar.model = Some(format!("words:{WORDS}"));
        coven.register_familiar(familiar).unwrap();
    }
    let groups: Vec<String> = (0..GROUPS)
        .map(|i| {
            let title = Some(format!("load {i}"));
            coven.create_group(title, members.clone(), None).unwrap().id
        })
        .collect();

    // Half the subscribers from the start (after creation), half from rev 0 mid-run.
    let mut watchers: Vec<(usize, u64, Arc<Watcher>, Arc<Subscription>)> = Vec::new();
    let mut subscribe = |coven: &Coven, index: usize, start: u64| {
        let watcher = Watcher::new(start);
        let subscription = coven
            .subscribe(&groups[index], start, watcher.clone())
            .unwrap();
        watchers.push((index, start, watcher, subscription));
    };
    for s in 0..SUBSCRIBERS / 2 {
        let index = s % WATCHED;
        let start = coven.get_group(&groups[index]).unwrap().rev;
        subscribe(&coven, index, start);
    }

    let rss_start = rss_kib();
    let started = Instant::now();
    let deadline = started + SENDING;
    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let coven = coven.clone();
            let groups = groups.clone();
            thread::spawn(move || {
                let owned: Vec<usize> = (t..GROUPS).step_by(SENDERS).collect();
                let mut running: BTreeMap<usize, String> = BTreeMap::new();
                let mut sent: Vec<Sent> = Vec::new();
                let mut n = 0;
                while Instant::now() < deadline {
                    for &g in &owned {
                        if let Some(turn) = running.remove(&g) {
                            assert!(
                                coven.wait_turn(&turn, GUARD).unwrap(),
                                "turn {turn} did not end"
                            );
                        }
                        let text = format!("t{t}-n{n}");
                        n += 1;
                        let handle = coven.send(&groups[g], text.clone(), None).unwrap();
                        sent.push((g, handle.user_event.seq, handle.turn_id.clone(), text));
                        running.insert(g, handle.turn_id);
                    }
                }
                for turn in running.values() {
                    assert!(coven.wait_turn(turn, GUARD).unwrap());
                }
                sent
            })
        })
        .collect();

    // Memory and file size every half second; the late subscribers join after a third.
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let mut late_joined = false;
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        let at = started.elapsed().as_secs_f64();
        samples.push((at, rss_kib(), file_kib(&path)));
        if !late_joined && at >= SENDING.as_secs_f64() / 3.0 {
            for s in SUBSCRIBERS / 2..SUBSCRIBERS {
                subscribe(&coven, s % WATCHED, 0);
            }
            late_joined = true;
        }
    }
    let sent: Vec<Sent> = senders
        .into_iter()
        .flat_map(|sender| sender.join().expect("a sender failed"))
        .collect();
    let elapsed = started.elapsed();
    let rss_end = rss_kib();
    let file_end = file_kib(&path);
    assert!(late_joined);
    assert_eq!(watchers.len(), SUBSCRIBERS);

    // Nothing lost: every acknowledged message at its seq, every turn answered whole by every
    // member, seq contiguous.
    let full = reply_text();
    let mut by_group: Vec<Vec<&Sent>> = vec![Vec::new(); GROUPS];
    for entry in &sent {
        by_group[entry.0].push(entry);
    }
    let mut events = 0;
    for (g, sent) in by_group.iter().enumerate() {
        let snapshot = coven.get_group(&groups[g]).unwrap();
        assert_seq_contiguous(&snapshot.events);
        events += snapshot.events.len();
        for (_, seq, turn, text) in sent {
            let event = &snapshot.events[*seq as usize - 1];
            assert_eq!(
                (event.kind, event.turn_id.as_ref(), &event.text),
                (EventKind::User, Some(turn), text),
                "group {g} seq {seq}"
            );
        }
        let turns = snapshot
            .events
            .iter()
            .filter(|e| e.kind == EventKind::User)
            .count();
        assert_eq!(turns, sent.len(), "group {g}: unacknowledged turns");
        let replies: Vec<_> = snapshot
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Familiar)
            .collect();
        assert_eq!(replies.len(), turns * MEMBERS, "group {g}");
        for reply in replies {
            assert_eq!(
                (reply.error.as_ref(), reply.streaming, &reply.text),
                (None, false, &full),
                "group {g} reply {}",
                reply.seq
            );
        }
    }
    let report = assert_clean_and_idle(&coven);

    // Every subscriber of a group saw exactly the group's change log after its start.
    for (index, start, watcher, subscription) in &watchers {
        let expected = logged(&coven, &groups[*index], *start);
        let seen = watcher.wait_for(expected.last_rev);
        assert!(
            !watcher.broken.load(Ordering::SeqCst),
            "a subscriber of group {index} received a change out of order, or text its reply's \
             finish does not extend"
        );
        assert_eq!(
            seen.summary(),
            expected.summary(),
            "subscriber of group {index} from rev {start}"
        );
        subscription.cancel();
    }

    // Memory: past the warm-up, resident memory grows by less than the allowance.
    let warm = samples
        .iter()
        .find(|(at, _, _)| *at >= SENDING.as_secs_f64() * WARM_UP)
        .copied()
        .expect("a sample past the warm-up");
    let rss_growth = rss_end.saturating_sub(warm.1);
    let file_growth = file_end.saturating_sub(warm.2);
    let turns = sent.len();
    eprintln!(
        "load: {GROUPS} groups x {MEMBERS} members, {SENDERS} senders, {SUBSCRIBERS} subscribers, \
         {:.1} s: {turns} turns ({:.0}/s), {events} events ({:.0}/s), {} changes ({:.0}/s); \
         store {file_end} KiB; RSS start {rss_start} KiB, after warm-up ({:.1} s) {} KiB, end \
         {rss_end} KiB (+{rss_growth} KiB while the file grew {file_growth} KiB); samples \
         (s, RSS KiB, file KiB): {samples:?}",
        elapsed.as_secs_f64(),
        turns as f64 / elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        report.changes,
        report.changes as f64 / elapsed.as_secs_f64(),
        warm.0,
        warm.1,
    );
    assert!(turns >= GROUPS, "fewer turns than groups: {turns}");
    assert!(
        rss_growth <= MEMORY_ALLOWANCE_KIB,
        "memory grew {rss_growth} KiB past the warm-up while the store grew {file_growth} KiB"
    );
    match Arc::try_unwrap(coven) {
        Ok(coven) => coven.close(),
        Err(_) => panic!("the store handle is still shared"),
    }
}
