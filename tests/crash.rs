//! Invariant 1 across crashes: a child process appends to a file store from several threads and
//! reports every acknowledged seq; the parent kills it with SIGKILL at a varying moment, reopens
//! the store and checks that every acknowledged write survived and that seq (and rev) have no
//! hole or duplicate. The same store is reused, and grows, across iterations.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;

use common::*;
use coven_group::{Config, Coven, EventKind};

/// Set (to the store path) only in the child process.
const STORE_ENV: &str = "COVEN_GROUP_CRASH_STORE";
/// Comma-separated group ids the child appends to.
const GROUPS_ENV: &str = "COVEN_GROUP_CRASH_GROUPS";
const ITERATION_ENV: &str = "COVEN_GROUP_CRASH_ITERATION";
const CHILD_TEST: &str = "crash_child_workload";
const CHILD_THREADS: usize = 4;
/// Each child thread stops by itself after this many appends, so a child the parent failed to
/// kill still ends.
const CHILD_LIMIT: usize = 5_000;
const ITERATIONS: u64 = 24;
const ACK: &str = "@@ack ";

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
    let coven = Arc::new(Coven::open(&path, Config::default()).expect("child opens the store"));
    let threads: Vec<_> = (0..CHILD_THREADS)
        .map(|t| {
            let coven = Arc::clone(&coven);
            let group_index = t % groups.len();
            let group = groups[group_index].clone();
            thread::spawn(move || {
                for m in 0..CHILD_LIMIT {
                    let text = format!("i{iteration}-t{t}-m{m}");
                    let event = coven
                        .append_user_message(&group, text.clone(), None)
                        .expect("append");
                    assert_eq!(event.text, text);
                    // Acknowledged: the call returned after its commit. One write per line.
                    let line = format!("{ACK}{group_index} {} {text}\n", event.seq);
                    let mut out = std::io::stdout().lock();
                    out.write_all(line.as_bytes()).expect("stdout");
                    out.flush().expect("stdout");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("child writer");
    }
}

/// splitmix64: a tiny deterministic PRNG, so each iteration is killed at a different moment.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Kills the child if the parent panics before it does.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One acknowledged append: group index, seq, text.
type Ack = (usize, u64, String);

fn parse_ack(line: &str) -> Option<Ack> {
    // Only complete lines count; libtest's own output may precede the marker on a line.
    let line = line.strip_suffix('\n')?;
    let (_, ack) = line.split_once(ACK)?;
    let mut fields = ack.splitn(3, ' ');
    let group = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let text = fields.next()?.to_owned();
    Some((group, seq, text))
}

/// Runs one child, kills it after `kill_after` acknowledgements, and returns every
/// acknowledgement it printed (including those still in the pipe when it died).
fn run_child(path: &Path, groups: &[String], iteration: u64, kill_after: usize) -> Vec<Ack> {
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
    let mut reader = BufReader::new(child.0.stdout.take().expect("child stdout"));
    let mut acks = Vec::new();
    let mut line = String::new();
    let mut killed = false;
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("read child stdout") == 0 {
            break;
        }
        if let Some(ack) = parse_ack(&line) {
            acks.push(ack);
            if !killed && acks.len() == kill_after {
                // SIGKILL on unix: no destructor, no flush, no close of the store.
                child.0.kill().expect("kill the child");
                killed = true;
            }
        }
    }
    let status = child.0.wait().expect("wait for the child");
    assert!(
        killed,
        "iteration {iteration}: the child ended by itself ({status}) after {} acknowledgements",
        acks.len()
    );
    assert_eq!(
        status.signal(),
        Some(9),
        "iteration {iteration}: the child was not killed by SIGKILL: {status}"
    );
    acks
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let groups: Vec<String> = {
        let coven = Coven::open(&path, Config::default()).unwrap();
        register(&coven, &[("ada", "Ada"), ("bo", "Bo")]);
        let groups = (0..2)
            .map(|i| {
                coven
                    .create_group(Some(format!("crash {i}")), ids(&["ada", "bo"]), None)
                    .unwrap()
                    .id
            })
            .collect();
        coven.close();
        groups
    };

    // Every acknowledged text at its seq, per group, across all iterations.
    let mut acknowledged: Vec<BTreeMap<u64, String>> = vec![BTreeMap::new(); groups.len()];
    let mut rng = 0x00c0_7e11_u64;
    let mut total_acks = 0;
    for iteration in 0..ITERATIONS {
        let kill_after = 1 + (next_random(&mut rng) % 200) as usize;
        let acks = run_child(&path, &groups, iteration, kill_after);
        assert!(acks.len() >= kill_after);
        total_acks += acks.len();
        let mut printed: BTreeMap<String, usize> = BTreeMap::new();
        for (group, seq, text) in acks {
            let previous = acknowledged[group].insert(seq, text.clone());
            assert_eq!(
                previous, None,
                "seq {seq} of group {group} acknowledged twice"
            );
            let thread = text.rsplit_once("-m").unwrap().0.to_owned();
            *printed.entry(thread).or_default() += 1;
        }

        let coven = Coven::open(&path, Config::default())
            .unwrap_or_else(|err| panic!("iteration {iteration}: reopen after SIGKILL: {err}"));
        let mut present: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for (index, group) in groups.iter().enumerate() {
            let events = coven.get_group(group).unwrap().events;
            assert_seq_contiguous(&events);
            for (seq, text) in &acknowledged[index] {
                let event = events.get(*seq as usize - 1).unwrap_or_else(|| {
                    panic!("iteration {iteration}: acknowledged seq {seq} is lost")
                });
                assert_eq!(
                    &event.text, text,
                    "iteration {iteration}: seq {seq} changed"
                );
            }
            let texts: Vec<&str> = events.iter().map(|e| e.text.as_str()).collect();
            distinct(&texts);
            for event in &events {
                assert_eq!(event.kind, EventKind::User);
                let (thread, m) = event.text.rsplit_once("-m").unwrap();
                present
                    .entry(thread.to_owned())
                    .or_default()
                    .insert(m.parse().unwrap());
            }
            assert_rev_contiguous(&coven, group);
        }
        // Each child thread's surviving messages are 0..k with no gap, where k is what it
        // printed, or one more (committed, then killed before it could print).
        for (thread, messages) in &present {
            let count = messages.len();
            assert_eq!(
                messages.iter().copied().collect::<Vec<_>>(),
                (0..count).collect::<Vec<_>>(),
                "{thread}: a gap in one thread's messages"
            );
            if thread.starts_with(&format!("i{iteration}-")) {
                let printed = printed.get(thread).copied().unwrap_or(0);
                assert!(
                    count == printed || count == printed + 1,
                    "{thread}: {count} stored, {printed} acknowledged"
                );
            }
        }
        coven.close();
    }
    assert!(total_acks as u64 >= ITERATIONS);
}
