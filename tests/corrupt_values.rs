//! A corrupt stored value never commits half an operation: a record the store wrote that no
//! longer decodes is a `Storage` error, which aborts the writer's whole batch, and the file stays
//! byte-for-byte as it was.

mod common;

use coven_group::{Config, Coven, Error};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use common::*;

const GROUPS: TableDefinition<u128, &[u8]> = TableDefinition::new("groups");

/// A named call whose value the test does not need.
type Call<'a> = (&'static str, Box<dyn Fn() -> Result<(), Error> + 'a>);

/// Cuts the last byte off the stored record of `group`: the value no longer decodes. (Ids in
/// records are numbers since format 2, so a record cannot hold an id that does not parse; a
/// record that does not decode is the corruption left to meet.)
fn corrupt_group(path: &std::path::Path, group: &str) {
    let key = uuid::Uuid::parse_str(group).unwrap().as_u128();
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(GROUPS).unwrap();
        let mut value = table.get(key).unwrap().expect("the group").value().to_vec();
        value.pop();
        table.insert(key, value.as_slice()).unwrap();
    }
    txn.commit().unwrap();
    drop(db);
    // Reading the database back proves the value is still there as bytes; the store will judge it.
    let db = redb::Database::open(path).unwrap();
    assert!(db
        .begin_read()
        .unwrap()
        .open_table(GROUPS)
        .unwrap()
        .get(key)
        .unwrap()
        .is_some());
}

#[test]
fn an_operation_reading_a_corrupt_record_commits_nothing() {
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
    corrupt_group(&store.path, &group.id);
    store.coven = std::sync::Arc::new(Coven::open(&store.path, Config::default()).unwrap());
    let before = file_bytes(&store.path);

    // Each of these reads the group's record, which does not decode. Nothing of them may commit.
    let calls: Vec<Call> = vec![
        (
            "send",
            Box::new(|| store.coven.send(&group.id, "hi".into(), None).map(drop)),
        ),
        (
            "rename_group",
            Box::new(|| store.coven.rename_group(&group.id, "x".into()).map(drop)),
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
            other => panic!("{name} on a corrupt group answered {other:?}"),
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
    assert_eq!(store.coven.events_since(&group.id, 0, 10).unwrap().len(), 0);
}
