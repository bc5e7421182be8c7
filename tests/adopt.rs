//! Adoption of a client-side group: the interleaving rule documented in `src/adopt.rs`, folding
//! of looped prompts, reuse of session ids, refusals, determinism, and no lost message.

mod common;

use common::*;
use coven_group::{
    AdoptedMember, Coven, EventKind, GroupEvent, GroupUpdate, SessionStatus, ADOPT_MERGE_WINDOW,
};

fn coven() -> Coven {
    let coven = memory_store();
    register(
        &coven,
        &[
            ("zed", "Zed"),
            ("amy", "Amy"),
            ("max", "Max"),
            ("ada", "Ada"),
        ],
    );
    coven
}

fn adopt(coven: &Coven, members: Vec<AdoptedMember>) -> Vec<GroupEvent> {
    let group = coven.adopt_group(None, members).expect("adopt_group");
    let events = coven.get_group(&group.id).unwrap().events;
    assert_seq_contiguous(&events);
    events
}

/// (kind, familiar id or author, text) of each event, in seq order.
fn lines(events: &[GroupEvent]) -> Vec<(EventKind, Option<String>, String)> {
    events
        .iter()
        .map(|e| {
            let who = match e.kind {
                EventKind::Familiar => e.familiar_id.clone(),
                _ => e.author.clone(),
            };
            (e.kind, who, e.text.clone())
        })
        .collect()
}

fn u(text: &str) -> (EventKind, Option<String>, String) {
    (EventKind::User, None, text.to_owned())
}

fn ua(text: &str, author: &str) -> (EventKind, Option<String>, String) {
    (EventKind::User, Some(author.to_owned()), text.to_owned())
}

fn f(familiar: &str, text: &str) -> (EventKind, Option<String>, String) {
    (
        EventKind::Familiar,
        Some(familiar.to_owned()),
        text.to_owned(),
    )
}

#[test]
fn interleaves_by_timestamp() {
    let coven = coven();
    let events = adopt(
        &coven,
        vec![
            adopted(
                "zed",
                &fresh_session_id(1),
                vec![
                    user("z-q1", at(0)),
                    reply("z-r1", at(3_000)),
                    user("z-q2", at(6_000)),
                ],
            ),
            adopted(
                "amy",
                &fresh_session_id(2),
                vec![
                    user("a-q1", at(1_000)),
                    reply("a-r1", at(2_000)),
                    reply("a-r2", at(7_000)),
                ],
            ),
        ],
    );
    assert_eq!(
        lines(&events),
        vec![
            u("z-q1"),
            u("a-q1"),
            f("amy", "a-r1"),
            f("zed", "z-r1"),
            u("z-q2"),
            f("amy", "a-r2"),
        ]
    );
    let stamps: Vec<_> = events.iter().map(|e| e.timestamp).collect();
    assert_eq!(
        stamps,
        vec![at(0), at(1_000), at(2_000), at(3_000), at(6_000), at(7_000)],
        "adopted events keep their original timestamps"
    );
}

#[test]
fn equal_timestamps_put_users_first_then_roster_order_then_history_position() {
    let coven = coven();
    let t = at(500);
    // Roster order (zed before amy) is deliberately not alphabetical, and the histories list
    // replies before user messages, so only the documented rule produces this order.
    let members = |first: (&str, u128), second: (&str, u128)| {
        vec![
            adopted(
                first.0,
                &fresh_session_id(first.1),
                vec![
                    reply(&format!("{}-r0", first.0), t),
                    user(&format!("{}-u1", first.0), t),
                    reply(&format!("{}-r2", first.0), t),
                    user(&format!("{}-u3", first.0), t),
                ],
            ),
            adopted(
                second.0,
                &fresh_session_id(second.1),
                vec![
                    user(&format!("{}-u0", second.0), t),
                    reply(&format!("{}-r1", second.0), t),
                ],
            ),
        ]
    };
    let events = adopt(&coven, members(("zed", 1), ("amy", 2)));
    assert_eq!(
        lines(&events),
        vec![
            u("zed-u1"),
            u("zed-u3"),
            u("amy-u0"),
            f("zed", "zed-r0"),
            f("zed", "zed-r2"),
            f("amy", "amy-r1"),
        ]
    );
    assert!(events.iter().all(|e| e.timestamp == t));

    // Swapping the roster swaps the tie order.
    let events = adopt(&coven, members(("amy", 3), ("zed", 4)));
    assert_eq!(
        lines(&events),
        vec![
            u("amy-u1"),
            u("amy-u3"),
            u("zed-u0"),
            f("amy", "amy-r0"),
            f("amy", "amy-r2"),
            f("zed", "zed-r1"),
        ]
    );
}

#[test]
fn looped_copies_of_one_prompt_fold_into_one_user_event() {
    let coven = coven();
    let window = ADOPT_MERGE_WINDOW.as_millis() as u64;
    assert_eq!(window, 10_000);
    let events = adopt(
        &coven,
        vec![
            adopted(
                "zed",
                &fresh_session_id(1),
                vec![
                    user_by("hello all", "Sam", at(0)),
                    reply("zed hi", at(2_000)),
                ],
            ),
            adopted(
                "amy",
                &fresh_session_id(2),
                vec![
                    user_by("hello all", "Sam", at(400)),
                    reply("amy hi", at(1_000)),
                ],
            ),
            adopted(
                "max",
                &fresh_session_id(3),
                // Exactly at the edge of the window: still the same prompt.
                vec![
                    user_by("hello all", "Sam", at(window)),
                    reply("max hi", at(window + 1)),
                ],
            ),
        ],
    );
    assert_eq!(
        lines(&events),
        vec![
            ua("hello all", "Sam"),
            f("amy", "amy hi"),
            f("zed", "zed hi"),
            f("max", "max hi"),
        ]
    );
    assert_eq!(
        events[0].timestamp,
        at(0),
        "the earliest copy's timestamp stands"
    );
}

#[test]
fn copies_outside_the_window_or_from_another_author_are_not_folded() {
    let coven = coven();
    let window = ADOPT_MERGE_WINDOW.as_millis() as u64;
    let events = adopt(
        &coven,
        vec![
            adopted(
                "zed",
                &fresh_session_id(1),
                vec![user_by("hi", "Sam", at(0))],
            ),
            adopted(
                "amy",
                &fresh_session_id(2),
                vec![user_by("hi", "Sam", at(window + 1))],
            ),
            adopted(
                "max",
                &fresh_session_id(3),
                vec![user_by("hi", "Kim", at(1)), user("hi", at(2))],
            ),
        ],
    );
    assert_eq!(
        lines(&events),
        vec![ua("hi", "Sam"), ua("hi", "Kim"), u("hi"), ua("hi", "Sam")]
    );
    assert_eq!(events[3].timestamp, at(window + 1));
}

#[test]
fn two_messages_of_one_session_are_never_folded() {
    let coven = coven();
    // One session alone: the same words twice are two messages.
    let events = adopt(
        &coven,
        vec![adopted(
            "zed",
            &fresh_session_id(1),
            vec![user("again", at(0)), user("again", at(1_000))],
        )],
    );
    assert_eq!(lines(&events), vec![u("again"), u("again")]);

    // zed and max sent "x" twice, amy once: amy's copy folds into zed's first message, zed's
    // second is a new message, and each of max's copies folds into the earliest message max has
    // not matched yet (the first, then the second).
    let events = adopt(
        &coven,
        vec![
            adopted(
                "zed",
                &fresh_session_id(2),
                vec![user("x", at(0)), user("x", at(2_000))],
            ),
            adopted("amy", &fresh_session_id(3), vec![user("x", at(1_000))]),
            adopted(
                "max",
                &fresh_session_id(4),
                vec![user("x", at(3_000)), user("x", at(4_000))],
            ),
        ],
    );
    assert_eq!(lines(&events), vec![u("x"), u("x")]);
    assert_eq!(events[0].timestamp, at(0));
    assert_eq!(events[1].timestamp, at(2_000));

    // A third copy from zed has nothing left to fold into.
    let events = adopt(
        &coven,
        vec![
            adopted(
                "zed",
                &fresh_session_id(5),
                vec![user("y", at(0)), user("y", at(1_000)), user("y", at(2_000))],
            ),
            adopted("amy", &fresh_session_id(6), vec![user("y", at(500))]),
        ],
    );
    assert_eq!(lines(&events), vec![u("y"), u("y"), u("y")]);
}

#[test]
fn adoption_reuses_session_ids_and_refuses_existing_ones() {
    let coven = coven();
    let zed_session = fresh_session_id(1);
    let amy_session = fresh_session_id(2);
    let members = vec![
        adopted(
            "zed",
            &zed_session,
            vec![user("q", at(0)), reply("zr", at(1))],
        ),
        adopted(
            "amy",
            &amy_session,
            vec![user("q", at(0)), reply("ar", at(2))],
        ),
    ];
    let group = coven
        .adopt_group(Some("Adopted".into()), members.clone())
        .unwrap();
    assert_eq!(group.title, "Adopted");
    assert_eq!(group.member_ids(), ids(&["zed", "amy"]));
    assert_eq!(group.session_of("zed"), Some(zed_session.as_str()));
    assert_eq!(group.session_of("amy"), Some(amy_session.as_str()));
    for (familiar, session_id) in [("zed", &zed_session), ("amy", &amy_session)] {
        let session = coven.get_session(session_id).unwrap();
        assert_eq!(session.group_id, group.id);
        assert_eq!(session.familiar_id, familiar);
        assert_eq!(session.status, SessionStatus::Idle);
        assert!(!session.archived);
    }
    assert_eq!(coven.sessions_of(&group.id).unwrap().len(), 2);

    // The change log: the group's creation, then one append per event, revs 1..=head.
    let changes = assert_rev_contiguous(&coven, &group.id);
    assert_eq!(
        changes[0].update,
        GroupUpdate::GroupCreated {
            group: group.clone()
        }
    );
    let events = coven.get_group(&group.id).unwrap().events;
    assert_eq!(events.len(), 3);
    for (change, event) in changes[1..].iter().zip(&events) {
        assert_eq!(
            change.update,
            GroupUpdate::EventAppended {
                event: event.clone()
            }
        );
    }

    // Adopting the same input again is refused: its sessions exist.
    let before = Dump::of(&coven);
    expect_conflict(coven.adopt_group(None, members.clone()));
    assert_eq!(Dump::of(&coven), before);

    // One existing session among fresh ones is enough to refuse.
    let created = coven.create_group(None, ids(&["max"]), None).unwrap();
    let before = Dump::of(&coven);
    let reason = expect_conflict(coven.adopt_group(
        None,
        vec![
            adopted("zed", &fresh_session_id(10), vec![user("q", at(0))]),
            adopted(
                "max",
                &created.members[0].session_id,
                vec![user("q", at(0))],
            ),
        ],
    ));
    assert!(reason.contains(&created.members[0].session_id), "{reason}");
    assert_eq!(Dump::of(&coven), before);
    expect_not_found(
        coven.get_session(&fresh_session_id(10)),
        "session",
        &fresh_session_id(10),
    );

    // The same session id for two members is refused before anything happens.
    expect_invalid(
        coven.adopt_group(
            None,
            vec![
                adopted("zed", &fresh_session_id(11), vec![]),
                adopted("amy", &fresh_session_id(11), vec![]),
            ],
        ),
        "session_id",
    );
    // An unregistered familiar.
    expect_not_found(
        coven.adopt_group(None, vec![adopted("ghost", &fresh_session_id(12), vec![])]),
        "familiar",
        "ghost",
    );
    assert_eq!(Dump::of(&coven), before);

    // Once the adopted group is deleted, its session ids are free again.
    coven.delete_group(&group.id).unwrap();
    let again = coven.adopt_group(Some("Adopted".into()), members).unwrap();
    assert_eq!(again.session_of("zed"), Some(zed_session.as_str()));
    assert_eq!(
        view(&coven.get_group(&again.id).unwrap().events),
        view(&events)
    );
}

/// A client-side group as the iOS app kept it: `prompts` prompts looped over every member with
/// a small per-member delay, each member replying, plus a few messages only one session saw.
fn looped_history(prompts: u64) -> (Vec<AdoptedMember>, usize, usize) {
    let roster = ["zed", "amy", "max", "ada"];
    let mut members: Vec<AdoptedMember> = roster
        .iter()
        .enumerate()
        .map(|(i, id)| adopted(id, &fresh_session_id(100 + i as u128), Vec::new()))
        .collect();
    let mut total = 0;
    let mut distinct_user = 0;
    for p in 0..prompts {
        let base = p * 60_000;
        distinct_user += 1;
        for (i, member) in members.iter_mut().enumerate() {
            let i = i as u64;
            // Some prompts repeat earlier words; they are still distinct prompts.
            let text = format!("prompt {}", p % 7);
            member
                .history
                .push(user_by(&text, "Sam", at(base + i * 137)));
            member.history.push(reply(
                &format!("{} answers {p}", member.familiar_id),
                at(base + 5_000 + i * 911),
            ));
            total += 2;
        }
        if p % 5 == 0 {
            let member = &mut members[(p as usize / 5) % roster.len()];
            member
                .history
                .push(user(&format!("aside {p}"), at(base + 20_000)));
            member
                .history
                .push(user(&format!("aside {p}"), at(base + 20_500)));
            total += 2;
            distinct_user += 2;
        }
    }
    (members, total, distinct_user)
}

#[test]
fn adoption_loses_no_message_and_is_deterministic() {
    let (members, total, distinct_user) = looped_history(40);
    let replies = 40 * 4;
    let folded = total - replies - distinct_user;
    assert!(folded > 0);

    let first = coven();
    let group = first.adopt_group(None, members.clone()).unwrap();
    let events = first.get_group(&group.id).unwrap().events;
    assert_seq_contiguous(&events);
    assert_eq!(
        events.len(),
        replies + distinct_user,
        "a message was lost or duplicated"
    );

    // Every reply is present exactly once, and each member's replies keep their history order.
    for member in &members {
        let expected: Vec<&str> = member
            .history
            .iter()
            .filter(|m| m.role == coven_group::HistoryRole::Familiar)
            .map(|m| m.text.as_str())
            .collect();
        let got: Vec<&str> = events
            .iter()
            .filter(|e| e.familiar_id.as_deref() == Some(member.familiar_id.as_str()))
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(got, expected);
    }
    // The timeline is in timestamp order.
    for pair in events.windows(2) {
        assert!(pair[0].timestamp <= pair[1].timestamp);
    }
    // Before the first reply to prompt p come the folded prompts 0..=p and both copies of every
    // earlier aside (asides follow prompts 0, 5, 10, ...).
    for p in 0..40u64 {
        let first_reply = events
            .iter()
            .position(|e| e.text == format!("zed answers {p}"))
            .unwrap();
        let users = events[..first_reply]
            .iter()
            .filter(|e| e.kind == EventKind::User)
            .count() as u64;
        assert_eq!(
            users,
            p + 1 + 2 * p.div_ceil(5),
            "user events before prompt {p}'s replies"
        );
    }

    // Adopting the same input into another store gives the same timeline.
    let second = coven();
    let other = second.adopt_group(None, members.clone()).unwrap();
    let other_events = second.get_group(&other.id).unwrap().events;
    assert_eq!(view(&other_events), view(&events));

    // And so does adopting it again in the first store once the first adoption is gone.
    first.delete_group(&group.id).unwrap();
    let again = first.adopt_group(None, members).unwrap();
    assert_eq!(
        view(&first.get_group(&again.id).unwrap().events),
        view(&events)
    );
}

#[test]
fn session_ids_at_the_edges_of_the_id_space_and_in_other_spellings() {
    let coven = coven();
    let nil = "00000000-0000-0000-0000-000000000000";
    let max = "ffffffff-ffff-ffff-ffff-ffffffffffff";
    let group = coven
        .adopt_group(
            None,
            vec![
                adopted("zed", nil, vec![user("q", at(0))]),
                adopted("amy", max, vec![reply("a", at(1))]),
            ],
        )
        .unwrap();
    let sessions: Vec<String> = coven
        .sessions_of(&group.id)
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(distinct(&sessions).len(), 2);
    assert!(sessions.contains(&nil.to_owned()) && sessions.contains(&max.to_owned()));
    assert_eq!(coven.get_session(nil).unwrap().familiar_id, "zed");

    // The same id spelled differently is still the same session.
    let upper = fresh_session_id(11).to_uppercase();
    expect_invalid(
        coven.adopt_group(
            None,
            vec![
                adopted("zed", &fresh_session_id(11), vec![]),
                adopted("amy", &upper, vec![]),
            ],
        ),
        "session_id",
    );
    expect_conflict(coven.adopt_group(None, vec![adopted("max", &max.to_uppercase(), vec![])]));

    coven.delete_group(&group.id).unwrap();
    expect_not_found(coven.get_session(nil), "session", nil);
    expect_not_found(coven.get_session(max), "session", max);
}
