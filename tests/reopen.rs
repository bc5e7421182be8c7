//! Durability of the file store across close and reopen, and the one-open-per-file rule.

mod common;

use common::*;
use coven_group::{Config, Coven, Error};

/// A store with a bit of everything: familiars, two groups, messages, system events, an archived
/// session and an adopted timeline.
fn populate(coven: &Coven) {
    register(coven, &[("ada", "Ada"), ("bo", "Bo"), ("cara", "Cara")]);
    let group = coven
        .create_group(None, ids(&["ada", "bo", "cara"]), None)
        .unwrap();
    coven
        .append_user_message(&group.id, "first".into(), Some("Sam".into()))
        .unwrap();
    coven.rename_group(&group.id, "Kept".into()).unwrap();
    coven.remove_member(&group.id, "cara").unwrap();
    coven.add_member(&group.id, "cara").unwrap();
    coven
        .append_user_message(&group.id, "héllo ✨ wörld".into(), None)
        .unwrap();
    let session = coven.sessions_of(&group.id).unwrap()[0].id.clone();
    coven.archive_session(&session).unwrap();
    coven.summon_session(&session).unwrap();
    coven
        .adopt_group(
            Some("Adopted".into()),
            vec![
                adopted(
                    "ada",
                    &fresh_session_id(7),
                    vec![user("q", at(0)), reply("a", at(5))],
                ),
                adopted(
                    "bo",
                    &fresh_session_id(8),
                    vec![user("q", at(3)), reply("b", at(9))],
                ),
            ],
        )
        .unwrap();
}

#[test]
fn reopen_returns_an_identical_store() {
    let mut store = FileStore::new();
    populate(&store.coven);
    let before = Dump::of(&store.coven);
    assert_eq!(before.groups.len(), 2);
    for snapshot in &before.snapshots {
        assert_seq_contiguous(&snapshot.events);
        assert!(!snapshot.events.is_empty());
    }

    store.reopen();
    let after = Dump::of(&store.coven);
    assert_eq!(
        after, before,
        "close + reopen changed what the store returns"
    );
    for group in &after.groups {
        assert_rev_contiguous(&store.coven, &group.id);
    }

    // Reopening twice more changes nothing either, and the store keeps counting from its head.
    store.reopen();
    store.reopen();
    assert_eq!(Dump::of(&store.coven), before);
    let group = &before.groups[1];
    let head = before.snapshots[1].events.len() as u64;
    let next = store
        .coven
        .append_user_message(&group.id, "after reopen".into(), None)
        .unwrap();
    assert_eq!(next.seq, head + 1);
    assert_eq!(next.rev, before.snapshots[1].rev + 1);
    assert_seq_contiguous(&store.coven.get_group(&group.id).unwrap().events);
}

#[test]
fn second_open_of_an_open_file_is_a_conflict() {
    let store = FileStore::new();
    register(&store.coven, &[("ada", "Ada")]);
    let group = store.coven.create_group(None, ids(&["ada"]), None).unwrap();
    let (before, bytes) = store.dump();

    match Coven::open(&store.path, Config::default()) {
        Err(Error::Conflict { reason }) => {
            assert!(reason.contains("already open"), "unclear reason: {reason}")
        }
        Err(other) => panic!("expected Conflict, got {other:?}"),
        Ok(_) => panic!("a second open of an open file succeeded"),
    }
    // The refused open touched nothing, and the first handle still works.
    assert_eq!(store.dump(), (before, bytes));
    let event = store
        .coven
        .append_user_message(&group.id, "still here".into(), None)
        .unwrap();
    assert_eq!(event.seq, 1);

    // Refused as many times as it is tried.
    for _ in 0..3 {
        assert!(matches!(
            Coven::open(&store.path, Config::default()),
            Err(Error::Conflict { .. })
        ));
    }
}

#[test]
fn open_after_close_works_and_closed_handle_answers_closed() {
    let store = FileStore::new();
    register(&store.coven, &[("ada", "Ada")]);
    let group = store.coven.create_group(None, ids(&["ada"]), None).unwrap();
    store
        .coven
        .append_user_message(&group.id, "before close".into(), None)
        .unwrap();
    let before = Dump::of(&store.coven);

    store.coven.close();
    store.coven.close(); // closing twice is harmless
    assert_eq!(store.coven.get_group(&group.id), Err(Error::Closed));
    assert_eq!(
        store
            .coven
            .append_user_message(&group.id, "after close".into(), None),
        Err(Error::Closed)
    );
    assert_eq!(store.coven.list_groups(), Err(Error::Closed));

    let reopened = Coven::open(&store.path, Config::default()).expect("open after close");
    assert_eq!(Dump::of(&reopened), before);
    assert_eq!(
        reopened
            .append_user_message(&group.id, "after reopen".into(), None)
            .unwrap()
            .seq,
        2
    );
    // Dropping a handle closes it too.
    drop(reopened);
    let third = Coven::open(&store.path, Config::default()).expect("open after drop");
    assert_eq!(third.get_group(&group.id).unwrap().events.len(), 2);
}

#[test]
fn a_new_store_file_is_private_and_a_bad_path_is_an_error() {
    use std::os::unix::fs::PermissionsExt;
    let store = FileStore::new();
    let mode = std::fs::metadata(&store.path).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the store file is readable by its owner only"
    );

    let missing = store.dir.path().join("no/such/dir/coven.redb");
    assert!(matches!(
        Coven::open(&missing, Config::default()),
        Err(Error::Storage { .. })
    ));
    assert!(!missing.exists());
}

#[test]
fn close_while_writers_run_answers_closed_and_keeps_every_acknowledged_write() {
    use std::sync::{mpsc, Arc};

    let mut store = FileStore::new();
    register(&store.coven, &[("ada", "Ada")]);
    let group = store.coven.create_group(None, ids(&["ada"]), None).unwrap();
    let (acks, acked) = mpsc::channel();
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let coven = Arc::clone(&store.coven);
            let group = group.id.clone();
            let acks = acks.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0.. {
                    match coven.append_user_message(&group, format!("t{t}-{i}"), None) {
                        Ok(event) => {
                            let _ = acks.send(());
                            mine.push(event);
                        }
                        Err(Error::Closed) => return mine,
                        Err(other) => panic!("a writer racing close got {other:?}"),
                    }
                }
                unreachable!()
            })
        })
        .collect();
    drop(acks);
    // Close once some writes are acknowledged, while the writers are still going.
    for _ in 0..50 {
        acked.recv().unwrap();
    }
    store.coven.close();
    let acknowledged: Vec<_> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("no panic crosses the API"))
        .collect();
    assert!(acknowledged.len() >= 50);

    store.reopen();
    let events = store.coven.get_group(&group.id).unwrap().events;
    assert_seq_contiguous(&events);
    // Every acknowledged write is there, and nothing that was answered `Closed`.
    assert_eq!(events.len(), acknowledged.len());
    for event in &acknowledged {
        assert_eq!(&events[event.seq as usize - 1], event);
    }
    assert_rev_contiguous(&store.coven, &group.id);
}
