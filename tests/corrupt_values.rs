//! A corrupt stored value never commits half an operation: an id the store wrote that no longer
//! parses is a `Storage` error, which aborts the writer's whole batch, and the file stays
//! byte-for-byte as it was.

mod common;

use coven_group::{Config, Coven, Error};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use common::*;

const SESSIONS: TableDefinition<u128, &[u8]> = TableDefinition::new("sessions");

/// A named call whose value the test does not need.
type Call<'a> = (&'static str, Box<dyn Fn() -> Result<(), Error> + 'a>);

/// Overwrites, in the stored record of `session`, every occurrence of `text` with as many `z`s:
/// the value still decodes, but the id it held is no UUID any more.
fn corrupt_session(path: &std::path::Path, session: &str, text: &str) {
    let key = uuid::Uuid::parse_str(session).unwrap().as_u128();
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(SESSIONS).unwrap();
        let mut value = table
            .get(key)
            .unwrap()
            .expect("the session")
            .value()
            .to_vec();
        let needle = text.as_bytes();
        let mut replaced = 0;
        let mut at = 0;
        while let Some(found) = value[at..].windows(needle.len()).position(|w| w == needle) {
            let start = at + found;
            value[start..start + needle.len()].fill(b'z');
            at = start + needle.len();
            replaced += 1;
        }
        assert!(replaced > 0, "{text} is not in the session record");
        table.insert(key, value.as_slice()).unwrap();
    }
    txn.commit().unwrap();
    drop(db);
    // Reading the database back proves the value still decodes as bytes; the store will judge it.
    let db = redb::Database::open(path).unwrap();
    assert!(db
        .begin_read()
        .unwrap()
        .open_table(SESSIONS)
        .unwrap()
        .get(key)
        .unwrap()
        .is_some());
}

#[test]
fn an_operation_reading_a_corrupt_id_commits_nothing() {
    let mut store = FileStore::new();
    register(&store.coven, &[("ada", "Ada"), ("bo", "Bo")]);
    let group = store
        .coven
        .create_group(Some("Corrupt".into()), ids(&["ada", "bo"]), None)
        .unwrap();
    let bo = store
        .coven
        .sessions_of(&group.id)
        .unwrap()
        .into_iter()
        .find(|s| s.familiar_id == "bo")
        .unwrap();
    store.coven.close();
    corrupt_session(&store.path, &bo.id, &group.id);
    store.coven = std::sync::Arc::new(Coven::open(&store.path, Config::default()).unwrap());
    let before = file_bytes(&store.path);

    // `send` marks every member running: ada's session is written before bo's record, with its
    // corrupt group id, is met. Nothing of it may commit.
    let calls: Vec<Call> = vec![
        (
            "send",
            Box::new(|| store.coven.send(&group.id, "hi".into(), None).map(drop)),
        ),
        (
            "archive_session",
            Box::new(|| store.coven.archive_session(&bo.id).map(drop)),
        ),
        (
            "sacrifice_session",
            Box::new(|| store.coven.sacrifice_session(&bo.id)),
        ),
    ];
    for (name, call) in &calls {
        match call() {
            Err(Error::Storage { reason }) => {
                assert!(reason.contains("corrupt"), "{name}: {reason}")
            }
            other => panic!("{name} on a corrupt session answered {other:?}"),
        }
        assert!(file_bytes(&store.path) == before, "{name} changed the file");
    }
    // The rest of the group is as it was: no turn lock, ada not running.
    let ada = store
        .coven
        .sessions_of(&group.id)
        .unwrap()
        .into_iter()
        .find(|s| s.familiar_id == "ada")
        .unwrap();
    assert_eq!(ada.status, coven_group::SessionStatus::Idle);
    assert_eq!(store.coven.get_group(&group.id).unwrap().events.len(), 0);
}
