//! Each test corrupts a copy of one healthy store in exactly one way, through the raw redb
//! tables, and expects the check to name that corruption.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use redb::{Database, WriteTransaction};

use super::*;
use crate::harness::{Harness, ReplySink, TurnRequest};
use crate::model::{Config, Familiar};
use crate::Coven;

/// Streams its reply word by word and has each word committed before the next (a cursor call
/// commits what waits in the streaming window), so its deltas are changes of their own, which
/// collapse into one record when the reply finishes.
#[derive(Default)]
struct Stepper(OnceLock<Weak<Coven>>);

const STEPPED: [&str; 4] = ["one ", "two ", "three ", "four"];

impl Harness for Stepper {
    fn run_turn(&self, request: TurnRequest, sink: Arc<ReplySink>) -> Result<bool> {
        let coven = self
            .0
            .get()
            .and_then(Weak::upgrade)
            .ok_or(crate::Error::Closed)?;
        for word in STEPPED {
            sink.delta(word.to_owned());
            coven.set_cursor(&request.group_id, "stepper", 0)?;
        }
        Ok(true)
    }
}

/// A healthy store file with turns, membership changes, a rename, a cursor, an adopted group
/// and a deleted one, and the ids the tests corrupt.
struct Base {
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// A group with a finished turn (seq 1 user, 2 and 3 replies), then more events, and a
    /// second turn whose reply `stepped` streamed its deltas in commits of their own.
    group: u128,
    stepped: u64,
    deleted: u128,
    counter: std::sync::atomic::AtomicUsize,
}

impl Base {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.redb");
        let coven = Arc::new(Coven::open(&path, Config::default()).unwrap());
        let stepper = Arc::new(Stepper::default());
        stepper.0.set(Arc::downgrade(&coven)).unwrap();
        coven.register_host_harness("stepper", stepper).unwrap();
        for id in ["ada", "bo", "cy"] {
            let harness = if id == "cy" { "stepper" } else { "scripted" };
            let mut familiar = Familiar::new(id, id.to_uppercase(), harness);
            familiar.model = Some("words:5".into());
            coven.register_familiar(familiar).unwrap();
        }
        let group = coven
            .create_group(None, vec!["ada".into(), "bo".into()], None)
            .unwrap();
        let turn = coven.send(&group.id, "hello".into(), None).unwrap();
        assert!(coven
            .wait_turn(&turn.turn_id, Duration::from_secs(30))
            .unwrap());
        coven
            .append_user_message(&group.id, "more".into(), None)
            .unwrap();
        coven.rename_group(&group.id, "renamed".into()).unwrap();
        coven.add_member(&group.id, "cy").unwrap();
        coven.remove_member(&group.id, "bo").unwrap();
        let turn = coven.send(&group.id, "again".into(), None).unwrap();
        assert!(coven
            .wait_turn(&turn.turn_id, Duration::from_secs(30))
            .unwrap());
        let snapshot = coven.get_group(&group.id).unwrap();
        let stepped = snapshot
            .events
            .iter()
            .find(|event| event.familiar_id.as_deref() == Some("cy"))
            .unwrap();
        assert_eq!(stepped.text, STEPPED.concat());
        let stepped = stepped.seq;
        let rev = coven.get_group(&group.id).unwrap().rev;
        coven.set_cursor(&group.id, "phone", rev).unwrap();
        let deleted = coven.create_group(None, vec!["ada".into()], None).unwrap();
        coven
            .append_user_message(&deleted.id, "gone soon".into(), None)
            .unwrap();
        coven.delete_group(&deleted.id).unwrap();
        let report = coven.check().unwrap();
        assert!(report.is_clean_and_idle(), "{report:#?}");
        coven.close();
        Self {
            _dir: dir,
            path,
            group: ids::parse("id", &group.id).unwrap(),
            stepped,
            deleted: ids::parse("id", &deleted.id).unwrap(),
            counter: Default::default(),
        }
    }

    /// Checks a copy of the store after `corrupt` changed it.
    fn check_after(&self, corrupt: impl FnOnce(&WriteTransaction)) -> IntegrityReport {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let copy = self.path.with_file_name(format!("copy-{n}.redb"));
        std::fs::copy(&self.path, &copy).unwrap();
        let db = Database::create(&copy).unwrap();
        let txn = db.begin_write().unwrap();
        corrupt(&txn);
        txn.commit().unwrap();
        verify(&Reader::new(&db).unwrap()).unwrap()
    }
}

fn read(txn: &WriteTransaction, group: u128, seq: u64) -> GroupEvent {
    let events = txn.open_table(EVENTS).unwrap();
    let value = events.get((group, seq)).unwrap().unwrap();
    stored::decode_event(group, seq, value.value()).unwrap()
}

fn write_event(txn: &WriteTransaction, group: u128, event: &GroupEvent) {
    txn.open_table(EVENTS)
        .unwrap()
        .insert(
            (group, event.seq),
            stored::encode_event(event).unwrap().as_slice(),
        )
        .unwrap();
}

fn group_record(txn: &WriteTransaction, group: u128) -> GroupConversation {
    let table = txn.open_table(GROUPS).unwrap();
    let value = table.get(group).unwrap().unwrap();
    stored::decode_group(group, value.value()).unwrap()
}

fn head(txn: &WriteTransaction, group: u128) -> Head {
    let table = txn.open_table(HEADS).unwrap();
    let value = table.get(group).unwrap().unwrap();
    codec::decode(value.value()).unwrap()
}

fn member_session(txn: &WriteTransaction, group: u128, index: usize) -> (u128, Session) {
    let id = ids::parse("id", &group_record(txn, group).members[index].session_id).unwrap();
    let table = txn.open_table(SESSIONS).unwrap();
    let value = table.get(id).unwrap().unwrap();
    (id, stored::decode_session(id, value.value()).unwrap())
}

fn store_session(txn: &WriteTransaction, id: u128, session: &Session) {
    txn.open_table(SESSIONS)
        .unwrap()
        .insert(id, stored::encode_session(session).unwrap().as_slice())
        .unwrap();
}

#[track_caller]
fn expect(report: &IntegrityReport, kind: Kind, detail: &str) {
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == kind && p.detail.contains(detail)),
        "expected a {kind:?} problem mentioning {detail:?}; got {:#?}",
        report.problems
    );
}

#[track_caller]
fn only(report: &IntegrityReport, kinds: &[Kind]) {
    for problem in &report.problems {
        assert!(
            kinds.contains(&problem.kind),
            "unexpected problem {problem:#?}"
        );
    }
}

#[test]
fn a_healthy_store_is_clean_and_counted() {
    let base = Base::new();
    let report = base.check_after(|_| {});
    assert!(report.is_clean_and_idle(), "{report:#?}");
    assert_eq!(report.groups, 1);
    assert_eq!(report.familiars, 3);
    assert_eq!(report.sessions, 3, "ada, cy and the archived bo");
    assert_eq!(report.cursors, 2, "the phone's and the stepper's");
    assert!(report.events >= 7, "{report:?}");
    assert!(report.changes > report.events, "{report:?}");
}

#[test]
fn a_missing_event_is_a_seq_hole_and_a_dangling_change() {
    let base = Base::new();
    let group = base.group;
    let report = base.check_after(|txn| {
        txn.open_table(EVENTS).unwrap().remove((group, 2)).unwrap();
    });
    expect(&report, Kind::SeqNotContiguous, "seq 3 follows seq 1");
    expect(
        &report,
        Kind::RevIndex,
        "names event 2, which does not exist",
    );
    only(&report, &[Kind::SeqNotContiguous, Kind::RevIndex]);
    assert_eq!(report.problems[0].group_id, Some(ids::to_string(group)));
}

#[test]
fn a_head_ahead_of_the_events_is_a_seq_hole() {
    let base = Base::new();
    let group = base.group;
    let report = base.check_after(|txn| {
        let mut head = head(txn, group);
        head.next_seq += 1;
        txn.open_table(HEADS)
            .unwrap()
            .insert(group, codec::encode(&head).unwrap().as_slice())
            .unwrap();
    });
    expect(&report, Kind::SeqNotContiguous, "the head's latest seq is");
    only(&report, &[Kind::SeqNotContiguous]);
}

#[test]
fn a_missing_change_is_a_rev_hole() {
    let base = Base::new();
    let group = base.group;
    let report = base.check_after(|txn| {
        // Rev 3: the first member's session starting to run.
        txn.open_table(CHANGES).unwrap().remove((group, 3)).unwrap();
    });
    expect(&report, Kind::RevIndex, "jumps from rev 2 to rev 4");
    only(&report, &[Kind::RevIndex]);
}

#[test]
fn an_event_rewritten_behind_the_log_is_caught() {
    let base = Base::new();
    let group = base.group;
    let rev = base.check_after(|txn| {
        let mut event = read(txn, group, 2);
        event.rev -= 1;
        write_event(txn, group, &event);
    });
    expect(&rev, Kind::RevIndex, "event 2 has rev");

    // Text is stored once: a reply's deltas are ranges of its text, and a range the text does
    // not hold is caught.
    let range = base.check_after(|txn| {
        let mut changes = txn.open_table(CHANGES).unwrap();
        let mut delta = None;
        for entry in changes.range((group, 0)..=(group, u64::MAX)).unwrap() {
            let (key, value) = entry.unwrap();
            if let Some(seq) = codec::decode(value.value())
                .ok()
                .and_then(|record| match record {
                    stored::ChangeRecord::ReplyDelta { seq, .. }
                    | stored::ChangeRecord::DeltasCollapsed { seq, .. } => Some(seq),
                    _ => None,
                })
            {
                delta = Some((key.value().1, seq));
                break;
            }
        }
        let (rev, seq) = delta.expect("a finished reply's delta");
        let record = stored::ChangeRecord::ReplyDelta {
            seq,
            start: 1 << 20,
            len: 1,
        };
        changes
            .insert((group, rev), codec::encode(&record).unwrap().as_slice())
            .unwrap();
    });
    expect(
        &range,
        Kind::CorruptRecord,
        "carried bytes 1048576..1048577",
    );
}

#[test]
fn a_member_without_its_own_session_is_caught() {
    let base = Base::new();
    let group = base.group;
    let missing = base.check_after(|txn| {
        let (id, _) = member_session(txn, group, 0);
        txn.open_table(SESSIONS).unwrap().remove(id).unwrap();
    });
    expect(&missing, Kind::MemberSession, "\"ada\" has no session");
    expect(&missing, Kind::Dangling, "which does not exist");
    only(&missing, &[Kind::MemberSession, Kind::Dangling]);

    let shared = base.check_after(|txn| {
        let mut record = group_record(txn, group);
        record.members[1].session_id = record.members[0].session_id.clone();
        txn.open_table(GROUPS)
            .unwrap()
            .insert(group, stored::encode_group(&record).unwrap().as_slice())
            .unwrap();
    });
    expect(
        &shared,
        Kind::MemberSession,
        "is the session of two members",
    );
    expect(&shared, Kind::MemberSession, "of familiar \"ada\"");

    let unindexed = base.check_after(|txn| {
        let (id, _) = member_session(txn, group, 1);
        txn.open_table(GROUP_SESSIONS)
            .unwrap()
            .remove((group, id))
            .unwrap();
    });
    expect(
        &unindexed,
        Kind::MemberSession,
        "missing from the group's index",
    );
}

#[test]
fn running_or_streaming_without_a_turn_is_caught() {
    let base = Base::new();
    let group = base.group;
    let running = base.check_after(|txn| {
        let (id, mut session) = member_session(txn, group, 0);
        session.status = SessionStatus::Running;
        store_session(txn, id, &session);
    });
    expect(&running, Kind::RunningWithoutTurn, "of \"ada\" is running");
    only(&running, &[Kind::RunningWithoutTurn]);
    assert_eq!(running.running_sessions, 1);

    // Reply 2 turned back into a streaming header whose text lives in a chunk.
    let streaming = base.check_after(|txn| {
        let mut event = read(txn, group, 2);
        let text = std::mem::take(&mut event.text);
        event.streaming = true;
        write_event(txn, group, &event);
        txn.open_table(REPLY_CHUNKS)
            .unwrap()
            .insert((group, 2, event.rev), (0, text.as_str()))
            .unwrap();
    });
    expect(&streaming, Kind::StreamingWithoutTurn, "event 2");
    assert_eq!(streaming.streaming_replies, 1);

    let chunk = base.check_after(|txn| {
        txn.open_table(REPLY_CHUNKS)
            .unwrap()
            .insert((group, 3, 1), (0, "late"))
            .unwrap();
    });
    expect(
        &chunk,
        Kind::StreamingWithoutTurn,
        "belongs to a finished event 3",
    );
}

#[test]
fn a_turn_lock_that_disagrees_with_the_timeline_is_caught() {
    let base = Base::new();
    let group = base.group;
    let report = base.check_after(|txn| {
        let user = read(txn, group, 1);
        let lock = TurnRecord {
            turn_id: ids::parse("turn", user.turn_id.as_deref().unwrap()).unwrap(),
            // Seq 2 is a reply, not the user message.
            user_seq: 2,
            started_at: user.timestamp,
            // "bo" has left; "ada" answered already and her session is idle.
            pending: vec!["bo".into(), "ada".into()],
        };
        txn.open_table(TURNS)
            .unwrap()
            .insert(group, codec::encode(&lock).unwrap().as_slice())
            .unwrap();
    });
    expect(&report, Kind::TurnLock, "names seq 2 as its user message");
    expect(&report, Kind::TurnLock, "\"bo\", which is not a member");
    expect(&report, Kind::TurnLock, "\"ada\", whose session is Idle");
    only(&report, &[Kind::TurnLock]);
    assert_eq!(report.running_turns, 1);
}

#[test]
fn a_cursor_beyond_the_head_is_caught() {
    let base = Base::new();
    let group = base.group;
    let report = base.check_after(|txn| {
        let latest = head(txn, group).rev();
        txn.open_table(CURSORS)
            .unwrap()
            .insert((group, "phone"), latest + 1)
            .unwrap();
    });
    expect(
        &report,
        Kind::CursorBeyondHead,
        "cursor \"phone\" is at rev",
    );
    only(&report, &[Kind::CursorBeyondHead]);
}

#[test]
fn undecodable_values_and_a_missing_schema_are_caught() {
    let base = Base::new();
    let group = base.group;
    let report = base.check_after(|txn| {
        txn.open_table(EVENTS)
            .unwrap()
            .insert((group, 1), [1u8, 0xff, 0xff].as_slice())
            .unwrap();
        txn.open_table(CHANGES)
            .unwrap()
            .insert((group, 2), [9u8].as_slice())
            .unwrap();
        txn.open_table(META).unwrap().remove(SCHEMA_KEY).unwrap();
    });
    expect(&report, Kind::CorruptRecord, "event 1");
    expect(
        &report,
        Kind::CorruptRecord,
        "change 2: storage error: value format version 9",
    );
    expect(&report, Kind::Schema, "no schema version");
}

#[test]
fn leftovers_of_a_deleted_group_are_caught() {
    let base = Base::new();
    let (group, deleted) = (base.group, base.deleted);
    let report = base.check_after(|txn| {
        let event = read(txn, group, 1);
        write_event(txn, deleted, &event);
        txn.open_table(CURSORS)
            .unwrap()
            .insert((deleted, "phone"), 1)
            .unwrap();
        txn.open_table(CHANGES)
            .unwrap()
            .insert((deleted, 1), [1u8].as_slice())
            .unwrap();
    });
    expect(
        &report,
        Kind::Dangling,
        "1 events of a group that does not exist",
    );
    expect(
        &report,
        Kind::Dangling,
        "1 changes of a group that does not exist",
    );
    expect(&report, Kind::Dangling, "cursor \"phone\" of a group");
    only(&report, &[Kind::Dangling]);
    assert_eq!(report.problems[0].group_id, Some(ids::to_string(deleted)));
}

#[test]
fn problems_beyond_the_limit_are_counted() {
    let base = Base::new();
    let group = base.group;
    let report = base.check_after(|txn| {
        let mut cursors = txn.open_table(CURSORS).unwrap();
        for i in 0..MAX_INTEGRITY_PROBLEMS + 5 {
            cursors
                .insert((group, format!("c{i}").as_str()), u64::MAX)
                .unwrap();
        }
    });
    assert_eq!(report.problems.len(), MAX_INTEGRITY_PROBLEMS);
    assert_eq!(report.problems_omitted, 5);
    assert!(!report.is_clean());
}

/// The `DeltasCollapsed` record of a finished reply, and its rev.
fn collapsed(txn: &WriteTransaction, group: u128, reply: u64) -> (u64, stored::ChangeRecord) {
    let changes = txn.open_table(CHANGES).unwrap();
    for entry in changes.range((group, 0)..=(group, u64::MAX)).unwrap() {
        let (key, value) = entry.unwrap();
        let record: stored::ChangeRecord = codec::decode(value.value()).unwrap();
        if matches!(record, stored::ChangeRecord::DeltasCollapsed { seq, .. } if seq == reply) {
            return (key.value().1, record);
        }
    }
    panic!("reply {reply} has no collapsed deltas");
}

fn write_change(txn: &WriteTransaction, group: u128, rev: u64, record: &stored::ChangeRecord) {
    txn.open_table(CHANGES)
        .unwrap()
        .insert((group, rev), codec::encode(record).unwrap().as_slice())
        .unwrap();
}

#[test]
fn collapsed_deltas_must_account_for_exactly_the_revs_the_log_lacks() {
    let base = Base::new();
    let (group, reply) = (base.group, base.stepped);
    let healthy = base.check_after(|txn| {
        let (_, record) = collapsed(txn, group, reply);
        let stored::ChangeRecord::DeltasCollapsed { count, .. } = record else {
            unreachable!()
        };
        assert_eq!(
            count,
            STEPPED.len() as u64 - 1,
            "every delta after the first output"
        );
    });
    assert!(healthy.is_clean_and_idle(), "{healthy:#?}");

    let removed = base.check_after(|txn| {
        let (rev, _) = collapsed(txn, group, reply);
        txn.open_table(CHANGES)
            .unwrap()
            .remove((group, rev))
            .unwrap();
    });
    expect(&removed, Kind::RevIndex, "no collapsed deltas account for");

    let resized = |more_revs: u64, more_deltas: u64| {
        base.check_after(|txn| {
            let (rev, record) = collapsed(txn, group, reply);
            let stored::ChangeRecord::DeltasCollapsed {
                seq,
                start,
                len,
                through_rev,
                count,
            } = record
            else {
                unreachable!()
            };
            let record = stored::ChangeRecord::DeltasCollapsed {
                seq,
                start,
                len,
                through_rev: through_rev + more_revs,
                count: count + more_deltas,
            };
            write_change(txn, group, rev, &record);
        })
    };
    // One delta more than the log lacks, in a range that could hold it.
    expect(
        &resized(1, 1),
        Kind::RevIndex,
        "stand for 1 revs that the change log still holds",
    );
    // More deltas than revs in its range.
    expect(
        &resized(0, 1),
        Kind::RevIndex,
        "which that range cannot hold",
    );
}

#[test]
fn collapsed_deltas_of_a_reply_still_streaming_are_caught() {
    let base = Base::new();
    let (group, reply) = (base.group, base.stepped);
    let report = base.check_after(|txn| {
        let mut event = read(txn, group, reply);
        let text = std::mem::take(&mut event.text);
        event.streaming = true;
        write_event(txn, group, &event);
        txn.open_table(REPLY_CHUNKS)
            .unwrap()
            .insert((group, reply, event.rev), (0, text.as_str()))
            .unwrap();
    });
    expect(
        &report,
        Kind::RevIndex,
        &format!("deltas of reply {reply}, which is still streaming"),
    );
}

/// A store of schema 3 kept a finished reply's deltas as records of their own; opening it
/// collapses them (`migrate`), and the upgraded log reads and checks as the current code writes it.
#[test]
fn a_schema_3_log_of_separate_deltas_collapses_when_opened() {
    let base = Base::new();
    let (group, reply) = (base.group, base.stepped);
    let path = base.path.with_file_name("schema-3.redb");
    std::fs::copy(&base.path, &path).unwrap();
    let first_rev = {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let (rev, record) = collapsed(&txn, group, reply);
        let stored::ChangeRecord::DeltasCollapsed {
            start, through_rev, ..
        } = record
        else {
            unreachable!()
        };
        // The revs it stands for are the ones in its range the log lacks.
        let held: Vec<u64> = txn
            .open_table(CHANGES)
            .unwrap()
            .range((group, rev + 1)..=(group, through_rev))
            .unwrap()
            .map(|entry| entry.unwrap().0.value().1)
            .collect();
        let revs = (rev..=through_rev).filter(|rev| !held.contains(rev));
        let mut offset = start;
        for (rev, word) in revs.zip(&STEPPED[1..]) {
            let delta = stored::ChangeRecord::ReplyDelta {
                seq: reply,
                start: offset,
                len: word.len() as u64,
            };
            write_change(&txn, group, rev, &delta);
            offset += word.len() as u64;
        }
        txn.open_table(META).unwrap().insert(SCHEMA_KEY, 3).unwrap();
        txn.commit().unwrap();
        rev
    };

    let coven = Coven::open(&path, Config::default()).unwrap();
    let report = coven.check().unwrap();
    assert!(report.is_clean_and_idle(), "{report:#?}");
    let group_id = ids::to_string(group);
    let changes = coven.changes_since(&group_id, 0, 1_000).unwrap();
    let deltas: Vec<(u64, &str)> = changes
        .iter()
        .filter_map(|change| match &change.update {
            GroupUpdate::ReplyDelta { seq, text, .. } if *seq == reply => {
                Some((change.rev, text.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(deltas, [(first_rev, STEPPED[1..].concat().as_str())]);
    coven.close();
    let db = Database::create(&path).unwrap();
    let txn = db.begin_write().unwrap();
    assert_eq!(
        txn.open_table(META)
            .unwrap()
            .get(SCHEMA_KEY)
            .unwrap()
            .unwrap()
            .value(),
        SCHEMA_VERSION
    );
}
