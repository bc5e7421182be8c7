//! `Coven::check` on live stores: clean after every kind of operation, and clean at every commit
//! while turns stream (it reads one commit, so it never mistakes a reply in flight for a reply
//! left behind). The corruptions it detects are proven by the unit tests in `src/store/check.rs`.

mod common;

use std::sync::Arc;
use std::thread;

use common::*;
use coven_group::{Config, Coven, Familiar, HistoryMessage, HistoryRole, IntegrityReport};

fn words(id: &str, count: usize) -> Familiar {
    let mut familiar = Familiar::new(id, id.to_uppercase(), "scripted");
    familiar.model = Some(format!("words:{count}"));
    familiar
}

#[test]
fn every_operation_leaves_the_store_clean() {
    let coven = Coven::open_in_memory(Config::default()).unwrap();
    let mut reports: Vec<IntegrityReport> = vec![assert_clean_and_idle(&coven)];
    let mut step = |coven: &Coven| reports.push(assert_clean_and_idle(coven));
    for id in ["ada", "bo", "cy"] {
        coven.register_familiar(words(id, 5)).unwrap();
    }
    step(&coven);
    let group = coven
        .create_group(None, ids(&["ada", "bo"]), None)
        .unwrap()
        .id;
    step(&coven);
    let turn = coven.send(&group, "hello".into(), None).unwrap();
    finish_turn(&coven, &turn.turn_id);
    step(&coven);
    coven
        .append_user_message(&group, "more".into(), Some("Sam".into()))
        .unwrap();
    coven.rename_group(&group, "renamed".into()).unwrap();
    step(&coven);
    coven.add_member(&group, "cy").unwrap();
    coven.remove_member(&group, "bo").unwrap();
    step(&coven);
    let bo = coven
        .sessions_of(&group)
        .unwrap()
        .into_iter()
        .find(|s| s.familiar_id == "bo")
        .unwrap();
    coven.summon_session(&bo.id).unwrap();
    coven.archive_session(&bo.id).unwrap();
    coven.sacrifice_session(&bo.id).unwrap();
    step(&coven);
    // Back again, with a new session; a second turn.
    coven.add_member(&group, "bo").unwrap();
    let turn = coven.send(&group, "again".into(), None).unwrap();
    finish_turn(&coven, &turn.turn_id);
    let rev = coven.get_group(&group).unwrap().rev;
    coven.set_cursor(&group, "phone", rev).unwrap();
    step(&coven);
    let adopted = coven
        .adopt_group(
            None,
            vec![coven_group::AdoptedMember {
                familiar_id: "ada".into(),
                session_id: "018f0000-0000-7000-8000-00000000abcd".into(),
                history: vec![HistoryMessage {
                    role: HistoryRole::User,
                    text: "earlier".into(),
                    timestamp: std::time::SystemTime::now(),
                    author: None,
                }],
            }],
        )
        .unwrap()
        .id;
    step(&coven);
    coven.set_cursor(&adopted, "phone", 1).unwrap();
    coven.delete_group(&adopted).unwrap();
    step(&coven);

    let last = reports.last().unwrap();
    assert_eq!((last.groups, last.familiars, last.cursors), (1, 3, 1));
    assert_eq!(last.sessions, 3, "ada, cy, and bo's second session");
    // Two turns (a message and its replies: 3, then 4), a message, a rename, two joins and a
    // leave.
    assert_eq!(last.events, 12, "{last:?}");
    assert_eq!(reports.len(), 10);
}

#[test]
fn the_check_is_clean_at_every_commit_while_turns_stream() {
    let config = Config {
        scripted_delay_ms: 1,
        ..Config::default()
    };
    let coven = Arc::new(Coven::open_in_memory(config).unwrap());
    for (id, count) in [("long", 150), ("short", 3), ("mid", 40)] {
        coven.register_familiar(words(id, count)).unwrap();
    }
    let groups: Vec<String> = (0..3)
        .map(|_| {
            coven
                .create_group(None, ids(&["long", "short", "mid"]), None)
                .unwrap()
                .id
        })
        .collect();
    let senders: Vec<_> = groups
        .iter()
        .map(|group| {
            let (coven, group) = (coven.clone(), group.clone());
            thread::spawn(move || {
                for n in 0..3 {
                    let turn = coven.send(&group, format!("turn {n}"), None).unwrap();
                    assert!(coven.wait_turn(&turn.turn_id, GUARD).unwrap());
                }
            })
        })
        .collect();
    // Check continuously until every turn has ended.
    let mut checks = 0;
    let mut in_flight = IntegrityReport::default();
    while senders.iter().any(|sender| !sender.is_finished()) {
        let report = assert_clean(&coven);
        checks += 1;
        if report.streaming_replies > in_flight.streaming_replies {
            in_flight = report;
        }
    }
    for sender in senders {
        sender.join().unwrap();
    }
    let last = assert_clean_and_idle(&coven);
    assert_eq!(last.events, 3 * 3 * 4);
    // The long replies (150 words, a word a millisecond) outlast a streaming window, so their
    // deltas were several changes, collapsed when each finished: the checks read collapsed logs.
    for group in &groups {
        let head = coven.get_group(group).unwrap().rev;
        let logged = assert_log_replays_the_timeline(&coven, group).len() as u64;
        assert!(
            logged < head,
            "no reply's deltas collapsed: {logged} changes for rev {head}"
        );
    }
    // Some check saw replies streaming, their turns running and their sessions running.
    assert!(
        in_flight.streaming_replies > 0
            && in_flight.running_turns > 0
            && in_flight.running_sessions > 0,
        "no check of {checks} saw a turn in flight: {in_flight:?}"
    );
}
