//! Invariants 1 and 6 across crashes. A child process runs a mixed workload on a file store —
//! appends from two threads, turns fanned out to streaming scripted members, membership changes
//! and renames, groups created, written and deleted, cursor updates — and reports every
//! acknowledged write on stdout. The parent SIGKILLs it at a random moment (after a random number
//! of acknowledgements, or a random few milliseconds after it started, which can fall inside the
//! open and its recovery), reopens the store and checks that every acknowledged write survived,
//! that seq has no hole or duplicate, that nothing is left streaming or running, and that the
//! integrity check is clean. The same store is reused, and grows, across iterations.
//!
//! The kill moments come from a seeded PRNG; the seed is printed and `COVEN_GROUP_CRASH_SEED`
//! replays it.
//!
//! A host killed while its agents run (`claude`, `codex` and a PTY program that ignore SIGHUP and
//! keep a helper in their process group) leaves none of them running once the store is open
//! again.

mod common;
#[path = "orphans/host.rs"]
mod orphan_host;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use coven_group::{
    Config, Coven, Error, EventKind, Familiar, GroupSnapshot, ReplyErrorKind, SystemNotice,
};

/// Set (to the store path) only in the child process.
const STORE_ENV: &str = "COVEN_GROUP_CRASH_STORE";
/// The fixed groups, comma-separated: appends, two turn groups, membership.
const GROUPS_ENV: &str = "COVEN_GROUP_CRASH_GROUPS";
const ITERATION_ENV: &str = "COVEN_GROUP_CRASH_ITERATION";
const SEED_ENV: &str = "COVEN_GROUP_CRASH_SEED";
const CHILD_TEST: &str = "crash_child_workload";
const ITERATIONS: u64 = 60;
/// A child the parent failed to kill (or whose parent died) stops by itself after this long.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);
const ACK: &str = "@@ack ";
const OPENED: &str = "@@opened";
/// Words of every scripted reply; streamed one per millisecond, so kills land mid-stream.
const REPLY_WORDS: usize = 40;
const MEMBERS: [&str; 3] = ["ada", "bo", "cy"];
/// Joins and leaves the membership group.
const GUEST: &str = "dee";
const CONSUMER: &str = "phone";

/// Indexes into the fixed groups.
const APPENDS: usize = 0;
const TURNS: [usize; 2] = [1, 2];
const MEMBERSHIP: usize = 3;

fn expected_reply() -> String {
    (0..REPLY_WORDS)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One acknowledged write, as the child printed it.
fn ack(line: &str) {
    report_line(ACK, line);
}

/// The child's workload. A no-op unless the parent started this process with `STORE_ENV`.
#[test]
fn crash_child_workload() {
    let Ok(path) = std::env::var(STORE_ENV) else {
        return;
    };
    let groups: Vec<String> = std::env::var(GROUPS_ENV)
        .expect("groups")
        .split(',')
        .map(str::to_owned)
        .collect();
    let iteration: u64 = std::env::var(ITERATION_ENV)
        .expect("iteration")
        .parse()
        .unwrap();
    let config = Config {
        scripted_delay_ms: 1,
        ..Config::default()
    };
    let coven = Arc::new(Coven::open(&path, config).expect("child opens the store"));
    println!("{OPENED}");
    let deadline = Instant::now() + CHILD_DEADLINE;
    let mut threads = Vec::new();
    let mut spawn = |work: Box<dyn FnOnce(&Coven) + Send>| {
        let coven = Arc::clone(&coven);
        threads.push(thread::spawn(move || work(&coven)));
    };

    for t in 0..2 {
        let group = groups[APPENDS].clone();
        spawn(Box::new(move |coven| {
            let mut m = 0;
            while Instant::now() < deadline {
                let text = format!("i{iteration}-t{t}-m{m}");
                let event = coven
                    .append_user_message(&group, text.clone(), None)
                    .expect("append");
                ack(&format!("append {} {text}", event.seq));
                m += 1;
            }
        }));
    }
    for (t, index) in TURNS.into_iter().enumerate() {
        let group = groups[index].clone();
        spawn(Box::new(move |coven| {
            let mut n = 0;
            while Instant::now() < deadline {
                let text = format!("i{iteration}-q{n}");
                let turn = coven.send(&group, text.clone(), None).expect("send");
                ack(&format!(
                    "sent {t} {} {} {text}",
                    turn.user_event.seq, turn.turn_id
                ));
                assert!(coven
                    .wait_turn(&turn.turn_id, CHILD_DEADLINE)
                    .expect("wait_turn"));
                ack(&format!("done {t} {}", turn.turn_id));
                n += 1;
            }
        }));
    }
    let group = groups[MEMBERSHIP].clone();
    spawn(Box::new(move |coven| {
        let mut n = 0;
        while Instant::now() < deadline {
            let record = coven.get_group(&group).expect("get_group").group;
            if record.session_of(GUEST).is_some() {
                coven.remove_member(&group, GUEST).expect("remove_member");
                ack("member removed");
            } else {
                coven.add_member(&group, GUEST).expect("add_member");
                ack("member added");
            }
            let title = format!("m-i{iteration}-{n}");
            coven.rename_group(&group, title).expect("rename");
            ack(&format!("renamed {n}"));
            n += 1;
        }
    }));
    let group = groups[APPENDS].clone();
    spawn(Box::new(move |coven| {
        while Instant::now() < deadline {
            let rev = coven.get_group(&group).expect("get_group").rev;
            coven.set_cursor(&group, CONSUMER, rev).expect("set_cursor");
            ack(&format!("cursor {rev}"));
        }
    }));
    spawn(Box::new(move |coven| {
        while Instant::now() < deadline {
            let group = coven
                .create_group(None, ids(&["ada"]), None)
                .expect("create_group")
                .id;
            ack(&format!("created {group}"));
            for m in 0..2 {
                let text = format!("i{iteration}-d{m}");
                let event = coven
                    .append_user_message(&group, text.clone(), None)
                    .expect("append");
                ack(&format!("dappend {group} {} {text}", event.seq));
            }
            coven.delete_group(&group).expect("delete_group");
            ack(&format!("deleted {group}"));
        }
    }));
    for thread in threads {
        thread.join().expect("child thread");
    }
}

/// The host of `no_process_of_a_host_killed_mid_turn_survives_the_next_open`; a no-op in a
/// normal run.
#[test]
fn crash_child_with_live_agents() {
    orphan_host::host_main();
}

#[test]
fn no_process_of_a_host_killed_mid_turn_survives_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = orphan_host::crash_host("crash_child_with_live_agents", dir.path());
    let markers = crashed.markers();
    // Whatever is left when the store opens again: the helpers at least, which get no death
    // signal; the agents too unless theirs has already killed them.
    let left = orphan_host::marked_processes(&markers);
    let helpers_left = crashed
        .helpers()
        .iter()
        .filter(|pid| left.contains(pid))
        .count() as u64;

    let coven = Coven::open(&crashed.store, Config::default()).expect("reopen after SIGKILL");
    let recovery = coven.recovery();
    assert_eq!(recovery.interrupted_replies, 3, "{recovery:?}");
    assert!(
        recovery.stopped_processes >= helpers_left
            && recovery.stopped_processes <= left.len() as u64,
        "{} processes were left ({helpers_left} of them helpers): {recovery:?}",
        left.len()
    );
    let pids: Vec<i32> = crashed
        .agents
        .iter()
        .flat_map(|agent| [agent.pid, agent.helper])
        .collect();
    orphan_host::assert_all_gone(&pids, &markers);
    assert_clean_and_idle(&coven);
}

/// Kills the child if the parent panics before it does.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// When to kill a child.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// Right after reading this many acknowledgements.
    Acks(usize),
    /// This long after it was started, acknowledged or not (possibly inside the open).
    Elapsed(Duration),
}

/// What one child printed before it died.
#[derive(Default)]
struct Run {
    opened: bool,
    acks: Vec<String>,
}

fn run_child(path: &Path, groups: &[String], iteration: u64, kill: KillAt) -> Run {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(STORE_ENV, path)
        .env(GROUPS_ENV, groups.join(","))
        .env(ITERATION_ENV, iteration.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let mut child = Reaper(child);
    let pid = child.0.id() as libc::pid_t;
    let timer = match kill {
        KillAt::Elapsed(after) => Some(thread::spawn(move || {
            thread::sleep(after);
            // SAFETY: plain syscall; the pid is not reaped before this thread is joined.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })),
        KillAt::Acks(_) => None,
    };
    let mut reader = BufReader::new(child.0.stdout.take().expect("child stdout"));
    let mut run = Run::default();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("read child stdout") == 0 {
            break;
        }
        // Only complete lines count; libtest's own output may precede a marker on a line.
        let Some(complete) = line.strip_suffix('\n') else {
            continue;
        };
        if complete.ends_with(OPENED) {
            run.opened = true;
        } else if let Some((_, ack)) = complete.split_once(ACK) {
            run.acks.push(ack.to_owned());
            if matches!(kill, KillAt::Acks(n) if n == run.acks.len()) {
                // SIGKILL: no destructor, no flush, no close of the store.
                child.0.kill().expect("kill the child");
            }
        }
    }
    if let Some(timer) = timer {
        timer.join().unwrap();
    }
    let status = child.0.wait().expect("wait for the child");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "iteration {iteration}: the child was not killed by SIGKILL ({status}) after {} \
         acknowledgements",
        run.acks.len()
    );
    run
}

/// A group created by the child's create-append-delete thread, as far as the parent knows.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    /// Its creation and these appends (seq, text) were acknowledged; its deletion was not.
    Present(BTreeMap<u64, String>),
    /// Present with these appends, or deleted by a commit the child did not live to report.
    PresentOrDeleted(BTreeMap<u64, String>),
    Deleted,
}

/// Everything the parent expects of the store, built from acknowledgements and, where a kill
/// left one write in doubt, from what the store showed at the previous reopen.
struct Expected {
    /// Acknowledged appends: seq → text.
    appends: BTreeMap<u64, String>,
    /// Per turn group: acknowledged user messages seq → (turn id, text).
    sent: [BTreeMap<u64, (String, String)>; 2],
    /// Turns whose every reply was acknowledged as committed.
    done: BTreeSet<String>,
    guest_added: usize,
    guest_removed: usize,
    title: String,
    cursor: u64,
    created: HashMap<String, Fate>,
}

impl Expected {
    fn new(title: String) -> Self {
        Self {
            appends: BTreeMap::new(),
            sent: Default::default(),
            done: BTreeSet::new(),
            guest_added: 0,
            guest_removed: 0,
            title,
            cursor: 0,
            created: HashMap::new(),
        }
    }
}

/// Totals over the whole run, for the summary line.
#[derive(Default, Debug)]
struct Totals {
    kills: u64,
    kills_before_open: u64,
    acks: usize,
    turns_done: usize,
    replies_interrupted: u64,
    groups_deleted: usize,
}

#[test]
fn acknowledged_writes_survive_sigkill_under_a_mixed_workload() {
    let started = Instant::now();
    let mut rng = Rng::seeded(SEED_ENV);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let groups: Vec<String> = {
        let coven = Coven::open(&path, Config::default()).unwrap();
        for id in MEMBERS.iter().chain([&GUEST]) {
            let mut familiar = Familiar::new(*id, id.to_uppercase(), "scripted");
            familiar.model = Some(format!("words:{REPLY_WORDS}"));
            coven.register_familiar(familiar).unwrap();
        }
        let mut groups = Vec::new();
        for title in ["appends", "turns 0", "turns 1", "membership"] {
            let members = if title == "membership" {
                ids(&["ada", "bo"])
            } else {
                ids(&MEMBERS)
            };
            let group = coven.create_group(Some(title.into()), members, None);
            groups.push(group.unwrap().id);
        }
        coven.close();
        groups
    };

    let mut expected = Expected::new("membership".into());
    let mut totals = Totals::default();
    for iteration in 0..ITERATIONS {
        // Mostly after a random number of acknowledgements; sometimes after a random few
        // milliseconds, which lands anywhere from the exec to the open's recovery to the work.
        let kill = if rng.between(0, 99) < 15 {
            KillAt::Elapsed(Duration::from_millis(rng.between(0, 60)))
        } else {
            KillAt::Acks(rng.between(1, 150) as usize)
        };
        let run = run_child(&path, &groups, iteration, kill);
        totals.kills += 1;
        totals.kills_before_open += u64::from(!run.opened);
        totals.acks += run.acks.len();
        let context = format!("iteration {iteration} (killed at {kill:?})");

        let coven = Coven::open(&path, Config::default())
            .unwrap_or_else(|err| panic!("{context}: reopen after SIGKILL: {err}"));
        totals.replies_interrupted += coven.recovery().interrupted_replies;
        let report = assert_clean_and_idle(&coven);
        assert!(report.groups >= 4, "{context}: {report:?}");
        verify(
            &coven,
            &groups,
            iteration,
            &run.acks,
            &mut expected,
            &context,
        );
        coven.close();
    }
    totals.turns_done = expected.done.len();
    totals.groups_deleted = expected
        .created
        .values()
        .filter(|fate| **fate == Fate::Deleted)
        .count();
    assert!(totals.kills >= 50);
    assert!(
        totals.acks as u64 >= ITERATIONS,
        "the children acknowledged too little to test anything: {totals:?}"
    );
    assert!(totals.turns_done > 0, "no turn ever finished: {totals:?}");
    eprintln!(
        "crash suite: {totals:?}, store {} KiB, {:.1} s",
        std::fs::metadata(&path).unwrap().len() / 1024,
        started.elapsed().as_secs_f64()
    );
}

/// Checks one reopened store against everything acknowledged so far, then folds what this
/// iteration's child left in doubt into `expected` as the store now shows it.
fn verify(
    coven: &Coven,
    groups: &[String],
    iteration: u64,
    acks: &[String],
    expected: &mut Expected,
    context: &str,
) {
    // This iteration's acknowledgements.
    let mut appended_by_thread: BTreeMap<String, usize> = BTreeMap::new();
    let mut guest_added = 0;
    let mut guest_removed = 0;
    let mut last_rename: Option<u64> = None;
    let mut in_doubt_group: Option<String> = None;
    for line in acks {
        let fields: Vec<&str> = line.splitn(5, ' ').collect();
        match fields.as_slice() {
            ["append", seq, text] => {
                let previous = expected
                    .appends
                    .insert(seq.parse().unwrap(), (*text).to_owned());
                assert_eq!(previous, None, "{context}: seq {seq} acknowledged twice");
                let thread = text.rsplit_once("-m").unwrap().0.to_owned();
                *appended_by_thread.entry(thread).or_default() += 1;
            }
            ["sent", t, seq, turn, text] => {
                let previous = expected.sent[t.parse::<usize>().unwrap()].insert(
                    seq.parse().unwrap(),
                    ((*turn).to_owned(), (*text).to_owned()),
                );
                assert_eq!(previous, None, "{context}: seq {seq} acknowledged twice");
            }
            ["done", _, turn] => {
                expected.done.insert((*turn).to_owned());
            }
            ["member", "added"] => guest_added += 1,
            ["member", "removed"] => guest_removed += 1,
            ["renamed", n] => last_rename = Some(n.parse().unwrap()),
            ["cursor", rev] => expected.cursor = expected.cursor.max(rev.parse().unwrap()),
            ["created", group] => {
                expected
                    .created
                    .insert((*group).to_owned(), Fate::PresentOrDeleted(BTreeMap::new()));
                in_doubt_group = Some((*group).to_owned());
            }
            ["dappend", group, seq, text] => match expected.created.get_mut(*group) {
                Some(Fate::PresentOrDeleted(appends)) => {
                    appends.insert(seq.parse().unwrap(), (*text).to_owned());
                }
                other => panic!("{context}: append to group {group} in state {other:?}"),
            },
            ["deleted", group] => {
                expected.created.insert((*group).to_owned(), Fate::Deleted);
                in_doubt_group = None;
            }
            _ => panic!("{context}: unreadable acknowledgement {line:?}"),
        }
    }
    // Created groups of this iteration whose deletion was not acknowledged are present, except
    // the last one, whose deletion may have committed just before the kill.
    for (group, fate) in expected.created.iter_mut() {
        if let Fate::PresentOrDeleted(appends) = fate {
            if Some(group) != in_doubt_group.as_ref() {
                *fate = Fate::Present(std::mem::take(appends));
            }
        }
    }

    // Appends: every acknowledged one at its seq; each writer thread's messages are 0..k with
    // no gap, where k is what it acknowledged or one more (committed, killed before printing).
    let snapshot = coven.get_group(&groups[APPENDS]).unwrap();
    assert_seq_contiguous(&snapshot.events);
    for (seq, text) in &expected.appends {
        let event = snapshot
            .events
            .get(*seq as usize - 1)
            .unwrap_or_else(|| panic!("{context}: acknowledged append at seq {seq} is lost"));
        assert_eq!(&event.text, text, "{context}: seq {seq} changed");
    }
    let mut present: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for event in &snapshot.events {
        assert_eq!(event.kind, EventKind::User);
        let (thread, m) = event.text.rsplit_once("-m").unwrap();
        let fresh = present
            .entry(thread.to_owned())
            .or_default()
            .insert(m.parse().unwrap());
        assert!(fresh, "{context}: {:?} stored twice", event.text);
    }
    for (thread, messages) in &present {
        let count = messages.len();
        assert_eq!(
            messages.iter().copied().collect::<Vec<_>>(),
            (0..count).collect::<Vec<_>>(),
            "{context}: a gap in {thread}'s messages"
        );
        if thread.starts_with(&format!("i{iteration}-")) {
            let acked = appended_by_thread.get(thread).copied().unwrap_or(0);
            assert!(
                count == acked || count == acked + 1,
                "{context}: {thread}: {count} stored, {acked} acknowledged"
            );
        }
    }

    // Cursor: at least the last acknowledged position, never beyond the head.
    let cursor = coven
        .get_cursor(&groups[APPENDS], CONSUMER)
        .unwrap()
        .unwrap_or(0);
    assert!(
        cursor >= expected.cursor && cursor <= snapshot.rev,
        "{context}: cursor {cursor}, acknowledged {}, head {}",
        expected.cursor,
        snapshot.rev
    );
    expected.cursor = cursor;

    for (t, index) in TURNS.into_iter().enumerate() {
        let snapshot = coven.get_group(&groups[index]).unwrap();
        verify_turns(&snapshot, &expected.sent[t], &expected.done, context);
    }

    verify_membership(
        &coven.get_group(&groups[MEMBERSHIP]).unwrap(),
        iteration,
        (guest_added, guest_removed),
        last_rename,
        expected,
        context,
    );

    // Groups created by the child: acknowledged deletions stay deleted, everything else stays
    // with its acknowledged appends.
    for (group, fate) in expected.created.iter_mut() {
        let found = match coven.get_group(group) {
            Ok(snapshot) => Some(snapshot),
            Err(Error::NotFound { .. }) => None,
            Err(err) => panic!("{context}: get_group({group}): {err}"),
        };
        let appends = match (&*fate, &found) {
            (Fate::Deleted, None) => continue,
            (Fate::Deleted, Some(_)) => panic!("{context}: deleted group {group} came back"),
            (Fate::Present(_), None) => panic!("{context}: group {group} is lost"),
            (Fate::PresentOrDeleted(_), None) => {
                *fate = Fate::Deleted;
                continue;
            }
            (Fate::Present(appends) | Fate::PresentOrDeleted(appends), Some(_)) => appends.clone(),
        };
        let snapshot = found.unwrap();
        assert_seq_contiguous(&snapshot.events);
        for (seq, text) in &appends {
            let event = snapshot.events.get(*seq as usize - 1);
            assert_eq!(
                event.map(|e| &e.text),
                Some(text),
                "{context}: group {group}: acknowledged seq {seq}"
            );
        }
        *fate = Fate::Present(appends);
    }
}

/// Every acknowledged user message is at its seq; every turn in the store has exactly one
/// finished reply per member, no longer streaming; an acknowledged turn's replies are whole and
/// without error; an interrupted reply keeps a prefix of what it was streaming.
fn verify_turns(
    snapshot: &GroupSnapshot,
    sent: &BTreeMap<u64, (String, String)>,
    done: &BTreeSet<String>,
    context: &str,
) {
    assert_seq_contiguous(&snapshot.events);
    for (seq, (turn, text)) in sent {
        let event = snapshot
            .events
            .get(*seq as usize - 1)
            .unwrap_or_else(|| panic!("{context}: acknowledged message at seq {seq} is lost"));
        assert_eq!(
            (event.kind, event.turn_id.as_deref(), event.text.as_str()),
            (EventKind::User, Some(turn.as_str()), text.as_str()),
            "{context}: seq {seq}"
        );
    }
    let full = expected_reply();
    let mut replies: HashMap<&str, Vec<&str>> = HashMap::new();
    for event in &snapshot.events {
        assert!(!event.streaming, "{context}: seq {} streaming", event.seq);
        let turn = event
            .turn_id
            .as_deref()
            .expect("every event here has a turn");
        match event.kind {
            EventKind::User => {
                replies.entry(turn).or_default();
            }
            EventKind::Familiar => {
                let familiar = event.familiar_id.as_deref().unwrap();
                replies
                    .get_mut(turn)
                    .expect("a reply after its turn")
                    .push(familiar);
                let error = event.error.as_ref().map(|e| e.kind);
                if done.contains(turn) {
                    assert_eq!(
                        (error, event.text.as_str()),
                        (None, full.as_str()),
                        "{context}: reply {} of acknowledged turn {turn}",
                        event.seq
                    );
                } else {
                    assert!(
                        error.is_none() || error == Some(ReplyErrorKind::Interrupted),
                        "{context}: reply {}: {:?}",
                        event.seq,
                        event.error
                    );
                    assert!(
                        full.starts_with(&event.text),
                        "{context}: reply {} is not a prefix of the reply: {:?}",
                        event.seq,
                        event.text
                    );
                }
            }
            EventKind::System => panic!("{context}: unexpected system event {}", event.seq),
        }
    }
    for (turn, mut members) in replies {
        members.sort_unstable();
        assert_eq!(members, MEMBERS, "{context}: replies to turn {turn}");
    }
}

fn verify_membership(
    snapshot: &GroupSnapshot,
    iteration: u64,
    (added, removed): (usize, usize),
    last_rename: Option<u64>,
    expected: &mut Expected,
    context: &str,
) {
    assert_seq_contiguous(&snapshot.events);
    let count = |wanted: fn(&SystemNotice) -> bool| {
        snapshot
            .events
            .iter()
            .filter(|e| e.notice.as_ref().is_some_and(wanted))
            .count()
    };
    let stored_added =
        count(|n| matches!(n, SystemNotice::MemberAdded { familiar_id } if familiar_id == GUEST));
    let stored_removed =
        count(|n| matches!(n, SystemNotice::MemberRemoved { familiar_id } if familiar_id == GUEST));
    // The thread alternates joins and leaves; at most one more than acknowledged committed.
    let lower = (
        expected.guest_added + added,
        expected.guest_removed + removed,
    );
    assert!(
        (stored_added, stored_removed) == lower
            || (stored_added, stored_removed) == (lower.0 + 1, lower.1)
            || (stored_added, stored_removed) == (lower.0, lower.1 + 1),
        "{context}: guest joined {stored_added} / left {stored_removed} times, acknowledged \
         {lower:?}"
    );
    let is_member = snapshot.group.session_of(GUEST).is_some();
    assert_eq!(
        is_member,
        stored_added == stored_removed + 1,
        "{context}: membership disagrees with the timeline"
    );
    expected.guest_added = stored_added;
    expected.guest_removed = stored_removed;

    let title = &snapshot.group.title;
    let allowed: Vec<String> = match last_rename {
        Some(n) => vec![
            format!("m-i{iteration}-{n}"),
            format!("m-i{iteration}-{}", n + 1),
        ],
        None => vec![expected.title.clone(), format!("m-i{iteration}-0")],
    };
    assert!(
        allowed.contains(title),
        "{context}: title {title:?}, expected one of {allowed:?}"
    );
    expected.title = title.clone();
}
