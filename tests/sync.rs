//! Sync between stores: a home and its replicas, the outbox with local echoes, the pull and push
//! protocol and the driver (see docs/design.md, "Sync").

mod common;

use std::sync::Arc;

use common::sync::{assert_same_group, sync};
use common::*;
use coven_group::{
    Config, Coven, Error, EventKind, GroupChange, GroupListener, GroupPull, GroupUpdate, Mutation,
    OutboxState, PullResponse, ReplyErrorKind, SendState, SyncMessage, SYNC_PROTOCOL_VERSION,
};

fn home_with_familiars(config: Config) -> Arc<Coven> {
    let home = Arc::new(memory_store_with(config));
    register(&home, &[("ada", "Ada"), ("bo", "Bo"), ("cy", "Cy")]);
    home
}

/// Waits for every turn of the group at the home to end.
fn wait_turns(home: &Coven, group_id: &str) {
    for event in home.get_group(group_id).unwrap().events {
        if let (EventKind::User, Some(turn)) = (event.kind, &event.turn_id) {
            assert!(
                home.wait_turn(turn, GUARD).unwrap(),
                "turn {turn} did not end"
            );
        }
    }
}

fn send(group_id: &str, text: &str) -> Mutation {
    Mutation::Send {
        group_id: group_id.to_owned(),
        text: text.to_owned(),
        author: Some("Sam".to_owned()),
    }
}

fn append(group_id: &str, text: &str) -> Mutation {
    Mutation::AppendUserMessage {
        group_id: group_id.to_owned(),
        text: text.to_owned(),
        author: None,
    }
}

#[test]
fn a_send_from_a_replica_is_applied_once_at_home_and_both_timelines_agree() {
    let home = home_with_familiars(Config::default());
    let phone = memory_store();
    let group = home.create_group(None, ids(&["ada", "bo"]), None).unwrap();
    sync(&phone, &home);
    assert_eq!(phone.home_of(&group.id).unwrap(), Some(home.store_id()));
    assert_same_group(&home, &phone, &group.id);

    let entry = phone
        .enqueue(send(&group.id, "hello from the phone"))
        .unwrap();
    let echoed = phone.get_group(&group.id).unwrap();
    assert_eq!(echoed.pending.len(), 1, "the message echoes at once");
    assert_eq!(echoed.pending[0].txn_id, entry.txn_id);
    assert_eq!(echoed.pending[0].state, SendState::Pending);

    sync(&phone, &home);
    wait_turns(&home, &group.id);
    sync(&phone, &home);
    let at_home = home.get_group(&group.id).unwrap();
    let users: Vec<_> = at_home
        .events
        .iter()
        .filter(|e| e.text == "hello from the phone")
        .collect();
    assert_eq!(users.len(), 1, "applied exactly once");
    assert_same_group(&home, &phone, &group.id);
    let replica = phone.get_group(&group.id).unwrap();
    assert!(replica.pending.is_empty(), "no echo remains");
    assert!(phone.outbox().unwrap().is_empty(), "the outbox is empty");
    // The echo was replaced by the event in one change (after the reset that began the
    // replica's log).
    let changes = changes_after(&phone, &group.id, 1);
    let sent: Vec<_> = changes
        .iter()
        .filter_map(|c| match &c.update {
            GroupUpdate::MessageSent { txn_id, event } => Some((txn_id.clone(), event.seq)),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![(entry.txn_id.clone(), users[0].seq)]);
    assert_clean(&phone);
    assert_clean(&home);
}

/// Forwards every change a subscription delivers.
struct Forward(crossbeam_channel::Sender<GroupChange>);

impl GroupListener for Forward {
    fn on_updates(&self, updates: Vec<GroupChange>) -> Result<(), Error> {
        for update in updates {
            let _ = self.0.send(update);
        }
        Ok(())
    }
}

#[test]
fn a_replica_subscription_sees_the_reset_the_echo_and_the_event_that_replaces_it() {
    let home = home_with_familiars(Config::default());
    let group = home.create_group(None, ids(&["ada"]), None).unwrap();
    home.append_user_message(&group.id, "before the phone".into(), None)
        .unwrap();
    let phone = memory_store();
    sync(&phone, &home);
    let (sender, delivered) = crossbeam_channel::unbounded();
    let _subscription = phone
        .subscribe(&group.id, 0, Arc::new(Forward(sender)))
        .unwrap();
    let next = || delivered.recv_timeout(GUARD).expect("a delivered change");

    // From before the reset: the group's state, as one change at the latest rev.
    let reset = next();
    assert_eq!(reset.rev, phone.get_group(&group.id).unwrap().rev);
    match &reset.update {
        GroupUpdate::GroupReset {
            events, pending, ..
        } => {
            assert_eq!(events.len(), 1);
            assert!(pending.is_empty());
        }
        other => panic!("expected the reset, got {other:?}"),
    }
    assert_eq!(
        changes_after(&phone, &group.id, 0)[0],
        reset,
        "a read says the same"
    );

    let entry = phone.enqueue(append(&group.id, "from the phone")).unwrap();
    let echo = next();
    assert_eq!(echo.rev, reset.rev + 1);
    assert!(matches!(
        &echo.update,
        GroupUpdate::MessagePending { message } if message.txn_id == entry.txn_id
    ));

    sync(&phone, &home);
    let sent = next();
    assert_eq!(
        sent.rev,
        echo.rev + 1,
        "the echo is replaced by the next change"
    );
    match &sent.update {
        GroupUpdate::MessageSent { txn_id, event } => {
            assert_eq!(txn_id, &entry.txn_id);
            assert_eq!((event.seq, event.text.as_str()), (2, "from the phone"));
        }
        other => panic!("expected the message sent, got {other:?}"),
    }
    assert!(
        delivered.try_recv().is_err(),
        "nothing shows the message twice"
    );
}

#[test]
fn direct_writes_to_a_replica_group_are_refused_naming_its_home() {
    let home = home_with_familiars(Config::default());
    let phone = memory_store();
    let group = home.create_group(None, ids(&["ada"]), None).unwrap();
    sync(&phone, &home);
    let before = all_changes(&phone, &group.id);
    let refusals = [
        phone.send(&group.id, "hi".into(), None).map(drop),
        phone
            .append_user_message(&group.id, "hi".into(), None)
            .map(drop),
        phone.rename_group(&group.id, "New".into()).map(drop),
        phone.add_member(&group.id, "bo").map(drop),
        phone.remove_member(&group.id, "ada").map(drop),
        phone.delete_group(&group.id),
        phone.cancel_turn(&group.id).map(drop),
        phone
            .archive_session(&group.members[0].session_id)
            .map(drop),
    ];
    for refusal in refusals {
        let reason = expect_conflict(refusal);
        assert!(
            reason.contains(&home.store_id()) && reason.contains("enqueue"),
            "the refusal names the home and the way: {reason}"
        );
    }
    assert_eq!(all_changes(&phone, &group.id), before, "nothing changed");
    // The outbox refuses a group homed in this store.
    let own = phone.create_group(None, vec![], None);
    assert!(own.is_err());
    phone
        .register_familiar(familiar("zed", "Zed", "scripted"))
        .unwrap();
    let own = phone.create_group(None, ids(&["zed"]), None).unwrap();
    expect_conflict(phone.enqueue(append(&own.id, "x")));
}

#[test]
fn a_duplicate_answer_is_skipped_and_a_gap_is_refused_naming_the_rev_needed() {
    let home = home_with_familiars(Config::default());
    let phone = memory_store();
    let group = home.create_group(None, ids(&["ada"]), None).unwrap();
    sync(&phone, &home);
    let cursor = phone.pull_request(Some(home.store_id())).unwrap();
    for n in 0..5 {
        home.append_user_message(&group.id, format!("m{n}"), None)
            .unwrap();
    }
    let answer = home.serve_pull(cursor.clone()).unwrap();
    let applied = phone.apply_pull(answer.clone()).unwrap();
    assert_eq!(applied.changes, 5);
    // The same answer again: every change is a duplicate, skipped.
    let before = all_changes(&phone, &group.id);
    let again = phone.apply_pull(answer.clone()).unwrap();
    assert_eq!(again.changes, 0);
    assert_eq!(all_changes(&phone, &group.id), before);

    // Five more at home, and an answer meant for a replica three revs further along (as one
    // that lost what it had applied would get): it does not follow what this replica holds.
    for n in 5..10 {
        home.append_user_message(&group.id, format!("m{n}"), None)
            .unwrap();
    }
    let mut next = phone.pull_request(Some(home.store_id())).unwrap();
    let needed = next.cursors[0].rev + 1;
    next.cursors[0].rev += 3;
    let gapped: PullResponse = home.serve_pull(next).unwrap();
    assert!(matches!(
        &gapped.groups[0],
        GroupPull::Changes { after_rev, .. } if *after_rev == needed + 2
    ));
    let reason = expect_conflict(phone.apply_pull(gapped));
    assert!(
        reason.contains(&format!("needs rev {needed} next")),
        "the refusal names the rev needed: {reason}"
    );
    assert_eq!(all_changes(&phone, &group.id), before, "nothing applied");
    sync(&phone, &home);
    assert_same_group(&home, &phone, &group.id);
}

#[test]
fn a_new_replica_bootstraps_from_a_snapshot_while_a_turn_streams() {
    let home = home_with_familiars(Config {
        scripted_delay_ms: 20,
        ..Config::default()
    });
    let group = home
        .create_group(None, ids(&["ada", "bo", "cy"]), None)
        .unwrap();
    for n in 0..30 {
        home.append_user_message(&group.id, format!("history {n}"), None)
            .unwrap();
    }
    let turn = home.send(&group.id, "stream please".into(), None).unwrap();
    wait_until(&home, &group.id, "a reply streaming", |s| {
        s.events.iter().any(|e| e.streaming && !e.text.is_empty())
    });
    let phone = memory_store();
    let applied = phone
        .apply_pull(home.serve_pull(phone.pull_request(None).unwrap()).unwrap())
        .unwrap();
    assert_eq!(applied.snapshots, 1);
    let first = phone.get_group(&group.id).unwrap();
    assert!(
        first.events.iter().any(|e| e.streaming),
        "the snapshot carries a reply still streaming"
    );
    // The replica's log starts with the reset.
    let changes = all_changes(&phone, &group.id);
    assert!(matches!(changes[0].update, GroupUpdate::GroupReset { .. }));
    assert!(home.wait_turn(&turn.turn_id, GUARD).unwrap());
    sync(&phone, &home);
    assert_same_group(&home, &phone, &group.id);
    assert!(phone
        .get_group(&group.id)
        .unwrap()
        .events
        .iter()
        .all(|e| !e.streaming));
    assert_clean(&phone);
}

/// A home whose group's single member is a puppet: its turn runs until the test ends it.
fn home_with_a_puppet() -> (Arc<Coven>, String, Hand) {
    let home = home_with_familiars(Config::default());
    let puppet = Puppet::new();
    let hand = puppet.hand("pup");
    home.register_host_harness("puppet", puppet).unwrap();
    home.register_familiar(familiar("pup", "Pup", "puppet"))
        .unwrap();
    let group = home.create_group(None, ids(&["pup"]), None).unwrap();
    (home, group.id, hand)
}

/// A replica that applied the start of a reply's deltas pulls again after the reply finished at
/// home, where its deltas are now one change: from inside them the home's log goes on with the
/// finish, which carries the whole text, and the replica ends with the home's reply and a log of
/// its own that reads consistently.
#[test]
fn a_replica_inside_a_finished_replys_collapsed_deltas_takes_the_finish_whole() {
    let (home, group_id, hand) = home_with_a_puppet();
    let phone = memory_store();
    sync(&phone, &home);
    let turn = home.send(&group_id, "go".into(), None).unwrap();
    // Each word its own commit (a cursor call commits what waits in the streaming window).
    let say = |word: &str| {
        hand.say(word);
        home.set_cursor(&group_id, "commit", 0).unwrap();
    };
    for word in ["one ", "two ", "three "] {
        say(word);
    }
    sync(&phone, &home);
    let streaming = phone.get_group(&group_id).unwrap();
    let reply = streaming.events.last().unwrap();
    assert!(reply.streaming);
    assert_eq!(reply.text, "one two three ");
    let reply_seq = reply.seq;
    for word in ["four ", "five"] {
        say(word);
    }
    hand.finish();
    assert!(home.wait_turn(&turn.turn_id, GUARD).unwrap());
    let home_log = assert_log_replays_the_timeline(&home, &group_id);
    let home_deltas: Vec<u64> = home_log
        .iter()
        .filter(|c| matches!(c.update, GroupUpdate::ReplyDelta { seq, .. } if seq == reply_seq))
        .map(|c| c.rev)
        .collect();
    assert_eq!(
        home_deltas.len(),
        1,
        "the home collapsed the reply's deltas"
    );
    let request = phone.pull_request(Some(home.store_id())).unwrap();
    let phone_at = request.cursors[0].rev;
    assert!(
        home_deltas[0] <= phone_at,
        "the phone applied home revs through {phone_at}, inside the deltas from {}",
        home_deltas[0]
    );

    sync(&phone, &home);
    assert_same_group(&home, &phone, &group_id);
    let finished = phone.get_group(&group_id).unwrap();
    let reply = finished.events.last().unwrap();
    assert_eq!(
        (reply.streaming, reply.text.as_str()),
        (false, "one two three four five")
    );
    assert_clean(&phone);
    assert_log_replays_the_timeline(&phone, &group_id);
}

#[test]
fn a_conflict_comes_back_to_the_echo_and_the_outbox_waits_for_a_retry() {
    let (home, group_id, hand) = home_with_a_puppet();
    let phone = memory_store();
    sync(&phone, &home);
    // A turn runs at home, so the phone's send is refused with Conflict.
    let running = home.send(&group_id, "long one".into(), None).unwrap();
    let refused = phone.enqueue(send(&group_id, "mine")).unwrap();
    let behind = phone.enqueue(append(&group_id, "after mine")).unwrap();
    sync(&phone, &home);
    let echo = phone.get_group(&group_id).unwrap().pending;
    assert_eq!(echo.len(), 2);
    match &echo[0].state {
        SendState::Failed { reason, retryable } => {
            assert!(*retryable, "a conflict may clear");
            assert!(reason.contains("still running"), "{reason}");
        }
        other => panic!("expected a failed echo, got {other:?}"),
    }
    assert_eq!(echo[1].state, SendState::Pending, "the entry behind waits");
    assert!(
        phone.push_request(&home.store_id()).unwrap().is_none(),
        "nothing is sent past a refused entry"
    );
    assert!(matches!(
        phone.outbox().unwrap()[0].state,
        OutboxState::Failed { .. }
    ));
    // Only a refused entry can be retried or discarded.
    expect_conflict(phone.retry_outbox(&behind.txn_id));
    expect_conflict(phone.discard_outbox(&behind.txn_id));
    // Retrying while the turn still runs is refused again, and changes nothing at home.
    phone.retry_outbox(&refused.txn_id).unwrap();
    sync(&phone, &home);
    assert!(matches!(
        phone.outbox().unwrap()[0].state,
        OutboxState::Failed { .. }
    ));

    hand.say("done");
    hand.step(Step::Return);
    assert!(home.wait_turn(&running.turn_id, GUARD).unwrap());
    let retried = phone.retry_outbox(&refused.txn_id).unwrap();
    assert_eq!(retried.txn_id, refused.txn_id, "a retry keeps its id");
    assert_eq!(retried.order, refused.order, "and its place");
    sync(&phone, &home);
    // The phone's send started a turn of its own: the puppet answers it.
    hand.say("yours");
    hand.step(Step::Return);
    wait_turns(&home, &group_id);
    sync(&phone, &home);
    let texts: Vec<String> = home
        .get_group(&group_id)
        .unwrap()
        .events
        .into_iter()
        .filter(|e| e.kind == EventKind::User)
        .map(|e| e.text)
        .collect();
    assert_eq!(
        texts,
        vec!["long one", "mine", "after mine"],
        "in order, once"
    );
    assert_same_group(&home, &phone, &group_id);
    assert!(phone.outbox().unwrap().is_empty());
}

#[test]
fn a_cancel_from_a_replica_stops_the_turn_at_home() {
    let (home, group_id, hand) = home_with_a_puppet();
    let phone = memory_store();
    sync(&phone, &home);
    let running = home.send(&group_id, "go on and on".into(), None).unwrap();
    hand.say("partial ");
    phone
        .enqueue(Mutation::CancelTurn {
            group_id: group_id.clone(),
        })
        .unwrap();
    sync(&phone, &home);
    assert!(home.wait_turn(&running.turn_id, GUARD).unwrap());
    let reply = home.get_group(&group_id).unwrap().events.pop().unwrap();
    assert_eq!(reply.text, "partial ");
    assert_eq!(reply.error.map(|e| e.kind), Some(ReplyErrorKind::Cancelled));
    sync(&phone, &home);
    assert!(phone.outbox().unwrap().is_empty(), "the cancel settled");
    assert_same_group(&home, &phone, &group_id);
}

#[test]
fn a_discarded_entry_leaves_the_timeline_and_the_outbox_goes_on() {
    let home = home_with_familiars(Config::default());
    let group = home.create_group(None, ids(&["ada"]), None).unwrap();
    let phone = memory_store();
    sync(&phone, &home);
    let bad = phone
        .enqueue(Mutation::AddMember {
            group_id: group.id.clone(),
            familiar_id: "nobody".into(),
        })
        .unwrap();
    let message = phone.enqueue(append(&group.id, "still sent")).unwrap();
    sync(&phone, &home);
    let outbox = phone.outbox().unwrap();
    assert_eq!(outbox.len(), 2);
    assert_eq!(
        outbox[1].txn_id, message.txn_id,
        "the message waits behind the refusal"
    );
    assert_eq!(outbox[1].state, OutboxState::Pending);
    match &outbox[0].state {
        OutboxState::Failed { retryable, .. } => {
            assert!(!retryable, "a missing familiar stays missing")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    phone.discard_outbox(&bad.txn_id).unwrap();
    expect_not_found(
        phone.discard_outbox(&bad.txn_id),
        "outbox entry",
        &bad.txn_id,
    );
    sync(&phone, &home);
    assert!(phone.outbox().unwrap().is_empty());
    let sent = home
        .get_group(&group.id)
        .unwrap()
        .events
        .into_iter()
        .filter(|e| e.text == "still sent")
        .count();
    assert_eq!(sent, 1);
    assert_same_group(&home, &phone, &group.id);
}

#[test]
fn a_discarded_message_leaves_the_timeline_in_one_change() {
    let (home, group_id, hand) = home_with_a_puppet();
    let phone = memory_store();
    sync(&phone, &home);
    let running = home.send(&group_id, "busy".into(), None).unwrap();
    let doomed = phone.enqueue(send(&group_id, "refused")).unwrap();
    sync(&phone, &home);
    assert!(matches!(
        phone.outbox().unwrap()[0].state,
        OutboxState::Failed { .. }
    ));
    let before = phone.get_group(&group_id).unwrap().rev;
    phone.discard_outbox(&doomed.txn_id).unwrap();
    let after = changes_after(&phone, &group_id, before);
    assert_eq!(after.len(), 1);
    assert_eq!(
        after[0].update,
        GroupUpdate::MessageDiscarded {
            txn_id: doomed.txn_id.clone()
        }
    );
    assert!(phone.get_group(&group_id).unwrap().pending.is_empty());
    hand.step(Step::Return);
    assert!(home.wait_turn(&running.turn_id, GUARD).unwrap());
    sync(&phone, &home);
    assert!(home
        .get_group(&group_id)
        .unwrap()
        .events
        .iter()
        .all(|e| e.text != "refused"));
    assert_same_group(&home, &phone, &group_id);
}

#[test]
fn the_outbox_survives_a_restart_and_applies_in_order_afterwards() {
    let home = home_with_familiars(Config::default());
    let group = home.create_group(None, ids(&["ada"]), None).unwrap();
    let mut phone = FileStore::new();
    sync(&phone.coven, &home);
    for n in 0..5 {
        phone
            .coven
            .enqueue(append(&group.id, &format!("offline {n}")))
            .unwrap();
    }
    phone.reopen();
    assert_eq!(phone.coven.outbox().unwrap().len(), 5);
    assert_eq!(phone.coven.get_group(&group.id).unwrap().pending.len(), 5);
    sync(&phone.coven, &home);
    let texts: Vec<String> = home
        .get_group(&group.id)
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.text)
        .collect();
    assert_eq!(
        texts,
        (0..5).map(|n| format!("offline {n}")).collect::<Vec<_>>()
    );
    assert_same_group(&home, &phone.coven, &group.id);
    assert!(phone.coven.outbox().unwrap().is_empty());
    assert_clean(&phone.coven);
}

#[test]
fn a_group_deleted_at_home_disappears_from_its_replicas() {
    let home = home_with_familiars(Config::default());
    let keep = home.create_group(None, ids(&["ada"]), None).unwrap();
    let gone = home.create_group(None, ids(&["bo"]), None).unwrap();
    let phone = memory_store();
    sync(&phone, &home);
    assert_eq!(phone.list_groups().unwrap().len(), 2);
    // An answer made before the deletion, for this phone as if it held nothing: it carries a
    // snapshot of each group, and reaches the phone late.
    let stale = home.serve_pull(phone.pull_request(None).unwrap()).unwrap();
    assert_eq!(stale.groups.len(), 2);
    home.delete_group(&gone.id).unwrap();
    sync(&phone, &home);
    let left: Vec<String> = phone
        .list_groups()
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .collect();
    assert_eq!(left, vec![keep.id.clone()]);
    expect_not_found(phone.get_group(&gone.id), "group", &gone.id);
    // The stale answer's snapshot does not bring the deleted group back.
    let before = all_changes(&phone, &keep.id);
    let applied = phone.apply_pull(stale).unwrap();
    assert_eq!(
        applied.snapshots, 0,
        "both snapshots are stale here: {applied:?}"
    );
    expect_not_found(phone.get_group(&gone.id), "group", &gone.id);
    assert_eq!(all_changes(&phone, &keep.id), before);
    assert_clean(&phone);
}

#[test]
fn a_replica_deletes_renames_and_creates_through_its_home() {
    let home = home_with_familiars(Config::default());
    let group = home.create_group(None, ids(&["ada"]), None).unwrap();
    let phone = memory_store();
    sync(&phone, &home);
    phone
        .enqueue(Mutation::RenameGroup {
            group_id: group.id.clone(),
            title: "Renamed on the phone".into(),
        })
        .unwrap();
    phone
        .enqueue(Mutation::AddMember {
            group_id: group.id.clone(),
            familiar_id: "bo".into(),
        })
        .unwrap();
    let created = phone
        .create_group_at(
            &home.store_id(),
            Some("From the phone".into()),
            ids(&["cy"]),
        )
        .unwrap();
    let new_id = created.mutation.group_id().to_owned();
    sync(&phone, &home);
    assert_eq!(
        home.get_group(&group.id).unwrap().group.title,
        "Renamed on the phone"
    );
    assert_eq!(
        home.get_group(&new_id).unwrap().group.title,
        "From the phone"
    );
    assert_same_group(&home, &phone, &group.id);
    assert_same_group(&home, &phone, &new_id);
    assert_eq!(phone.home_of(&new_id).unwrap(), Some(home.store_id()));
    phone
        .enqueue(Mutation::DeleteGroup {
            group_id: new_id.clone(),
        })
        .unwrap();
    sync(&phone, &home);
    expect_not_found(home.get_group(&new_id), "group", &new_id);
    expect_not_found(phone.get_group(&new_id), "group", &new_id);
    assert!(phone.outbox().unwrap().is_empty());
    assert_clean(&phone);
}

#[test]
fn one_store_holds_replicas_of_two_homes_at_once() {
    let desk = home_with_familiars(Config::default());
    let laptop = home_with_familiars(Config::default());
    let a = desk
        .create_group(Some("desk".into()), ids(&["ada"]), None)
        .unwrap();
    let b = laptop
        .create_group(Some("laptop".into()), ids(&["bo"]), None)
        .unwrap();
    let phone = memory_store();
    sync(&phone, &desk);
    sync(&phone, &laptop);
    phone.enqueue(append(&a.id, "to the desk")).unwrap();
    phone.enqueue(append(&b.id, "to the laptop")).unwrap();
    sync(&phone, &desk);
    sync(&phone, &laptop);
    assert_eq!(phone.home_of(&a.id).unwrap(), Some(desk.store_id()));
    assert_eq!(phone.home_of(&b.id).unwrap(), Some(laptop.store_id()));
    assert_same_group(&desk, &phone, &a.id);
    assert_same_group(&laptop, &phone, &b.id);
    // Each home answers only for its own groups.
    let to_desk = phone.pull_request(Some(desk.store_id())).unwrap();
    assert_eq!(to_desk.cursors.len(), 1);
    assert_eq!(to_desk.cursors[0].group_id, a.id);
    assert!(phone.outbox().unwrap().is_empty());
    assert_clean(&phone);
}

#[test]
fn sync_messages_round_trip_through_versioned_json() {
    let home = home_with_familiars(Config::default());
    let group = home.create_group(None, ids(&["ada"]), None).unwrap();
    home.append_user_message(&group.id, "héllo \"json\"".into(), None)
        .unwrap();
    let phone = memory_store();
    let request = phone.pull_request(None).unwrap();
    let json = coven_group::sync_message_to_json(SyncMessage::PullRequest {
        request: request.clone(),
    })
    .unwrap();
    assert!(json.contains("\"version\":1"), "{json}");
    let back = coven_group::sync_message_from_json(json).unwrap();
    assert_eq!(
        back,
        SyncMessage::PullRequest {
            request: request.clone()
        }
    );
    let response = home.serve_pull(request).unwrap();
    let json = coven_group::sync_message_to_json(SyncMessage::PullResponse {
        response: response.clone(),
    })
    .unwrap();
    let SyncMessage::PullResponse { response: back } =
        coven_group::sync_message_from_json(json).unwrap()
    else {
        panic!("not a pull response");
    };
    assert_eq!(back, response);
    phone.apply_pull(back).unwrap();
    assert_same_group(&home, &phone, &group.id);
    // Another version is refused before anything changes.
    let mut newer = phone.pull_request(Some(home.store_id())).unwrap();
    newer.version = SYNC_PROTOCOL_VERSION + 1;
    expect_invalid(home.serve_pull(newer), "version");
    expect_invalid(
        coven_group::sync_message_from_json("{\"type\":\"pull_request\"".into()),
        "json",
    );
}

#[test]
fn a_store_cannot_sync_with_itself() {
    let home = home_with_familiars(Config::default());
    let request = home.pull_request(None).unwrap();
    expect_invalid(home.serve_pull(request), "replica_store_id");
    expect_invalid(
        home.create_group_at(&home.store_id(), None, ids(&["ada"])),
        "home_store_id",
    );
}
