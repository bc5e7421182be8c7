//! Invariant 1 under concurrency: seq is contiguous from 1 with no hole and no duplicate, and so
//! is rev, while many threads append at once through one shared `Arc<Coven>` on a file store.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::thread;

use common::*;
use coven_group::{Coven, EventKind, GroupEvent, GroupUpdate};

const THREADS: usize = 16;
const PER_THREAD: usize = 40;

/// Runs `THREADS` threads that each append `PER_THREAD` messages to the group `target(thread)`
/// chooses, all starting together. Returns every acknowledged event, per thread, in call order.
fn hammer(
    coven: &Arc<Coven>,
    groups: &[String],
    target: fn(usize) -> usize,
) -> Vec<Vec<GroupEvent>> {
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|thread_index| {
            let coven = Arc::clone(coven);
            let barrier = Arc::clone(&barrier);
            let group = groups[target(thread_index)].clone();
            thread::spawn(move || {
                barrier.wait();
                (0..PER_THREAD)
                    .map(|i| {
                        coven
                            .append_user_message(
                                &group,
                                format!("t{thread_index}-m{i}"),
                                Some(format!("writer {thread_index}")),
                            )
                            .expect("append")
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("writer thread"))
        .collect()
}

/// Checks one group's timeline against what its writers were acknowledged: seq 1..=n with no
/// hole or duplicate, every acknowledged event stored exactly as returned, each writer's
/// messages in its call order, and revs 1..=head with every append's rev in the log.
fn check_group(coven: &Coven, group_id: &str, acknowledged: &[&GroupEvent]) {
    let snapshot = coven.get_group(group_id).unwrap();
    assert_seq_contiguous(&snapshot.events);
    assert_eq!(
        snapshot.events.len(),
        acknowledged.len(),
        "no lost or extra event"
    );

    let by_seq: BTreeMap<u64, &GroupEvent> = acknowledged.iter().map(|e| (e.seq, *e)).collect();
    assert_eq!(
        by_seq.len(),
        acknowledged.len(),
        "two calls were given the same seq"
    );
    for stored in &snapshot.events {
        let returned = by_seq[&stored.seq];
        assert_eq!(
            stored, returned,
            "stored event differs from the acknowledged one"
        );
        assert_eq!(stored.kind, EventKind::User);
        assert_eq!(stored.group_id, group_id);
    }
    let texts: Vec<&str> = snapshot.events.iter().map(|e| e.text.as_str()).collect();
    distinct(&texts);

    // Paging with a small page reads the same timeline.
    assert_eq!(all_events_paged(coven, group_id, 7), snapshot.events);

    let changes = assert_rev_contiguous(coven, group_id);
    assert_eq!(changes.len() as u64, snapshot.rev);
    assert!(matches!(
        changes[0].update,
        GroupUpdate::GroupCreated { .. }
    ));
    let appended: Vec<&GroupEvent> = changes[1..]
        .iter()
        .map(|c| match &c.update {
            GroupUpdate::EventAppended { event } => {
                assert_eq!(event.rev, c.rev, "an event's rev is its append's rev");
                event
            }
            other => panic!("unexpected change {other:?}"),
        })
        .collect();
    // Rev order and seq order agree for appends.
    assert_eq!(
        appended.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=acknowledged.len() as u64).collect::<Vec<_>>()
    );
}

fn check_call_order(per_thread: &[Vec<GroupEvent>]) {
    for events in per_thread {
        for pair in events.windows(2) {
            assert!(
                pair[0].seq < pair[1].seq,
                "a later call of one thread got an earlier seq"
            );
        }
    }
}

#[test]
fn sixteen_threads_append_to_one_group() {
    let mut store = FileStore::new();
    register(&store.coven, &[("ada", "Ada"), ("bo", "Bo")]);
    let group = store
        .coven
        .create_group(None, ids(&["ada", "bo"]), None)
        .unwrap();
    let coven = Arc::clone(&store.coven);

    let per_thread = hammer(&coven, std::slice::from_ref(&group.id), |_| 0);
    check_call_order(&per_thread);
    let all: Vec<&GroupEvent> = per_thread.iter().flatten().collect();
    assert_eq!(all.len(), THREADS * PER_THREAD);
    check_group(&coven, &group.id, &all);

    // The same holds after the file is closed and opened again.
    let before = coven.get_group(&group.id).unwrap();
    store.reopen();
    assert_eq!(store.coven.get_group(&group.id).unwrap(), before);
    check_group(&store.coven, &group.id, &all);
}

#[test]
fn sixteen_threads_append_to_sixteen_groups() {
    let mut store = FileStore::new();
    register(&store.coven, &[("ada", "Ada")]);
    let groups: Vec<String> = (0..THREADS)
        .map(|i| {
            store
                .coven
                .create_group(Some(format!("g{i}")), ids(&["ada"]), None)
                .unwrap()
                .id
        })
        .collect();
    let coven = Arc::clone(&store.coven);

    let per_thread = hammer(&coven, &groups, |thread_index| thread_index);
    check_call_order(&per_thread);
    for (index, group) in groups.iter().enumerate() {
        let acknowledged: Vec<&GroupEvent> = per_thread[index].iter().collect();
        assert!(acknowledged.iter().all(|e| &e.group_id == group));
        check_group(&coven, group, &acknowledged);
    }

    store.reopen();
    for (index, group) in groups.iter().enumerate() {
        let acknowledged: Vec<&GroupEvent> = per_thread[index].iter().collect();
        check_group(&store.coven, group, &acknowledged);
    }
}

#[test]
fn sixteen_threads_rotate_over_four_groups() {
    // Every batch the writer commits mixes groups and writers.
    let store = FileStore::new();
    register(&store.coven, &[("ada", "Ada")]);
    let groups: Vec<String> = (0..4)
        .map(|i| {
            store
                .coven
                .create_group(Some(format!("g{i}")), ids(&["ada"]), None)
                .unwrap()
                .id
        })
        .collect();
    let coven = Arc::clone(&store.coven);
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|thread_index| {
            let coven = Arc::clone(&coven);
            let barrier = Arc::clone(&barrier);
            let groups = groups.clone();
            thread::spawn(move || {
                barrier.wait();
                (0..PER_THREAD)
                    .map(|i| {
                        let group = &groups[(thread_index + i) % groups.len()];
                        coven
                            .append_user_message(group, format!("t{thread_index}-m{i}"), None)
                            .expect("append")
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let events: Vec<GroupEvent> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("writer thread"))
        .collect();
    for group in &groups {
        let acknowledged: Vec<&GroupEvent> =
            events.iter().filter(|e| &e.group_id == group).collect();
        assert_eq!(acknowledged.len(), THREADS * PER_THREAD / groups.len());
        check_group(&coven, group, &acknowledged);
    }
}
