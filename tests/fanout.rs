//! The fan-out of one message to every member (invariants 1, 2, 5 and 10): seq claimed at first
//! output, attribution, streaming, isolation of failures, the turn lock, waiting, cancel, the
//! silence timeout, resume tokens and the roster prompt. Host harnesses driven step by step
//! decide which member speaks first, so every ordering here is forced, not hoped for.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use coven_group::{Config, Coven, Error, EventKind, GroupUpdate, ReplyErrorKind, SessionStatus};

fn memory(config: Config) -> Arc<Coven> {
    Arc::new(Coven::open_in_memory(config).expect("open an in-memory store"))
}

/// A store with a [`Puppet`] registered as host harness `puppet` and one familiar per id on it.
fn puppet_store(config: Config, familiars: &[(&str, &str)]) -> (Arc<Coven>, Arc<Puppet>) {
    let coven = memory(config);
    let puppet = Puppet::new();
    coven
        .register_host_harness("puppet", puppet.clone())
        .expect("register host harness");
    for (id, name) in familiars {
        coven
            .register_familiar(familiar(id, name, "puppet"))
            .expect("register familiar");
    }
    (coven, puppet)
}

#[test]
fn seq_follows_first_output_order_and_is_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coven.redb");
    let coven = Coven::open(&path, Config::default()).unwrap();
    let puppet = Puppet::new();
    coven
        .register_host_harness("puppet", puppet.clone())
        .unwrap();
    let roster = ["a", "b", "c", "d"];
    for id in roster {
        coven.register_familiar(familiar(id, id, "puppet")).unwrap();
    }
    let hands: Vec<Hand> = roster.iter().map(|id| puppet.hand(id)).collect();
    let group = coven.create_group(None, ids(&roster), None).unwrap();
    let turn = coven.send(&group.id, "hello".into(), None).unwrap();
    assert_eq!(turn.user_event.seq, 1);
    for hand in &hands {
        hand.request();
    }

    // First outputs in an order unlike the roster; each delta call has returned before the next
    // member speaks. Later text arrives in the reverse order and must not move anything.
    let first_order = [2usize, 0, 3, 1];
    for &member in &first_order {
        hands[member].say(&format!("first from {} ", roster[member]));
    }
    for &member in first_order.iter().rev() {
        hands[member].say("and more");
        hands[member].finish();
    }
    finish_turn(&coven, &turn.turn_id);

    let snapshot = coven.get_group(&group.id).unwrap();
    assert_seq_contiguous(&snapshot.events);
    let order: Vec<&str> = snapshot.events[1..]
        .iter()
        .map(|event| event.familiar_id.as_deref().unwrap())
        .collect();
    let expected: Vec<&str> = first_order.iter().map(|&m| roster[m]).collect();
    assert_eq!(order, expected, "replies are ordered by first output");
    for event in &snapshot.events[1..] {
        let who = event.familiar_id.as_deref().unwrap();
        assert_eq!(event.text, format!("first from {who} and more"));
        assert!(!event.streaming);
        assert_eq!(event.error, None);
    }
    // The change log appended them in the same order.
    let appended: Vec<(u64, String)> = all_changes(&coven, &group.id)
        .into_iter()
        .filter_map(|change| match change.update {
            GroupUpdate::EventAppended { event } if event.kind == EventKind::Familiar => {
                Some((event.seq, event.familiar_id.unwrap()))
            }
            _ => None,
        })
        .collect();
    let expected_appends: Vec<(u64, String)> = expected
        .iter()
        .enumerate()
        .map(|(i, id)| (i as u64 + 2, (*id).to_owned()))
        .collect();
    assert_eq!(appended, expected_appends);

    coven.close();
    drop(coven);
    let reopened = Coven::open(&path, Config::default()).unwrap();
    let again = reopened.get_group(&group.id).unwrap();
    assert_eq!(again.events, snapshot.events, "the order survives a reopen");
    assert_eq!(again.rev, snapshot.rev);
}

#[test]
fn every_reply_is_attributed_to_its_familiar() {
    let coven = memory(Config::default());
    let members = [
        ("ada", "Ada Lovelace"),
        ("bo", "Bo Diddley"),
        ("cy", "Cy Twombly"),
    ];
    for (id, name) in members {
        coven
            .register_familiar(familiar(id, name, "scripted"))
            .unwrap();
    }
    let member_ids: Vec<&str> = members.iter().map(|(id, _)| *id).collect();
    let group = coven.create_group(None, ids(&member_ids), None).unwrap();
    let turn = coven
        .send(&group.id, "what is a familiar".into(), Some("Sam".into()))
        .unwrap();
    finish_turn(&coven, &turn.turn_id);

    let snapshot = coven.get_group(&group.id).unwrap();
    assert_seq_contiguous(&snapshot.events);
    assert_eq!(snapshot.events.len(), 1 + members.len());
    let user = &snapshot.events[0];
    assert_eq!(user.kind, EventKind::User);
    assert_eq!(user.author.as_deref(), Some("Sam"));
    assert_eq!(user.turn_id.as_deref(), Some(turn.turn_id.as_str()));
    let changes = all_changes(&coven, &group.id);
    for (id, name) in members {
        let event = reply_of(&snapshot, &turn.turn_id, id);
        assert_eq!(event.author, None);
        assert_eq!(event.error, None);
        assert!(!event.streaming);
        // The scripted reply names the familiar that wrote it.
        assert!(
            event.text.ends_with(&format!("says {name}.")),
            "{id}'s reply {:?} is not its own",
            event.text
        );
        for other in members.iter().filter(|(other, _)| *other != id) {
            assert!(
                !event.text.contains(other.1),
                "{id}'s reply names {}",
                other.1
            );
        }
        // Every delta of this seq was attributed to the same familiar.
        for change in &changes {
            if let GroupUpdate::ReplyDelta {
                seq, familiar_id, ..
            } = &change.update
            {
                if *seq == event.seq {
                    assert_eq!(familiar_id, id);
                }
            }
        }
        assert_eq!(streamed_text(&changes, event.seq), event.text);
    }
}

#[test]
fn reply_text_is_the_concatenation_of_its_deltas() {
    let (coven, puppet) = puppet_store(Config::default(), &[("solo", "Solo")]);
    let hand = puppet.hand("solo");
    let group = coven.create_group(None, ids(&["solo"]), None).unwrap();
    let turn = coven.send(&group.id, "stream please".into(), None).unwrap();
    hand.request();

    let pieces: Vec<String> = (0..400)
        .map(|i| match i % 4 {
            0 => format!("w{i} "),
            1 => "é".to_owned(),
            2 => "🦀 ".to_owned(),
            _ => "\n".to_owned(),
        })
        .collect();
    hand.say(&pieces[0]);
    // Mid-stream the reply is visible, marked streaming, with what has arrived so far.
    let first = wait_until(&coven, &group.id, "the first delta", |snapshot| {
        snapshot.events.len() == 2
    });
    assert!(first.events[1].streaming);
    assert_eq!(first.events[1].text, pieces[0]);
    for piece in &pieces[1..] {
        hand.say(piece);
    }
    hand.finish();
    finish_turn(&coven, &turn.turn_id);

    let snapshot = coven.get_group(&group.id).unwrap();
    let event = reply_of(&snapshot, &turn.turn_id, "solo");
    let expected: String = pieces.concat();
    assert_eq!(event.text, expected);
    assert!(!event.streaming, "a finished reply is no longer streaming");
    assert_eq!(event.error, None);
    // Invariant 10: the change log carries each byte once (no rewriting of the text per delta)
    // and the finish record carries the final text once.
    let changes = all_changes(&coven, &group.id);
    assert_eq!(streamed_text(&changes, event.seq), expected);
    let finished: Vec<&String> = changes
        .iter()
        .filter_map(|change| match &change.update {
            GroupUpdate::ReplyFinished { event } => Some(&event.text),
            _ => None,
        })
        .collect();
    assert_eq!(finished, vec![&expected]);
}

#[test]
fn a_failing_member_fails_alone() {
    let (coven, puppet) = puppet_store(
        Config::default(),
        &[
            ("errs", "Errs"),
            ("panics", "Panics"),
            ("declines", "Declines"),
            ("mute", "Mute"),
        ],
    );
    coven
        .register_familiar(familiar("fine", "Fine", "scripted"))
        .unwrap();
    let errs = puppet.hand("errs");
    let panics = puppet.hand("panics");
    let declines = puppet.hand("declines");
    let mute = puppet.hand("mute");
    let roster = ["errs", "fine", "panics", "declines", "mute"];
    let group = coven.create_group(None, ids(&roster), None).unwrap();
    let turn = coven.send(&group.id, "go".into(), None).unwrap();
    errs.request();
    panics.request();
    declines.request();
    mute.request();

    errs.say("before the error");
    errs.step(Step::ReturnErr("host exception: boom".into()));
    panics.say("before the panic");
    panics.step(Step::Panic("puppet panics on purpose".into()));
    declines.say("half");
    declines.step(Step::Fail("declined by the host".into()));
    declines.say(" ignored after fail");
    declines.finish();
    mute.finish();
    finish_turn(&coven, &turn.turn_id);

    let snapshot = coven.get_group(&group.id).unwrap();
    assert_seq_contiguous(&snapshot.events);
    let failed = |id: &str, text: &str, message: &str| {
        let event = reply_of(&snapshot, &turn.turn_id, id);
        assert!(!event.streaming);
        assert_eq!(event.text, text, "{id} keeps its partial text");
        let error = event
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{id} has no error"));
        assert_eq!(error.kind, ReplyErrorKind::Failed, "{id}");
        assert!(
            error.message.contains(message),
            "{id}'s error {:?} does not mention {message:?}",
            error.message
        );
    };
    failed("errs", "before the error", "boom");
    failed("panics", "before the panic", "panicked");
    failed("declines", "half", "declined by the host");
    failed("mute", "", "without producing any output");
    let fine = reply_of(&snapshot, &turn.turn_id, "fine");
    assert_eq!(fine.error, None);
    assert!(fine.text.ends_with("says Fine."));

    // (The session of `mute` is checked by `a_member_without_output_fails_its_session`.)
    let sessions = coven.sessions_of(&group.id).unwrap();
    for session in sessions.iter().filter(|s| s.familiar_id != "mute") {
        let expected = if session.familiar_id == "fine" {
            SessionStatus::Idle
        } else {
            SessionStatus::Failed
        };
        assert_eq!(session.status, expected, "{}", session.familiar_id);
    }

    // Failed members run again on the next turn.
    let next = coven.send(&group.id, "again".into(), None).unwrap();
    for hand in [&errs, &panics, &declines, &mute] {
        hand.request();
        hand.say("ok");
        hand.finish();
    }
    finish_turn(&coven, &next.turn_id);
    let snapshot = coven.get_group(&group.id).unwrap();
    for id in roster {
        assert_eq!(reply_of(&snapshot, &next.turn_id, id).error, None, "{id}");
    }
    assert!(coven
        .sessions_of(&group.id)
        .unwrap()
        .iter()
        .all(|session| session.status == SessionStatus::Idle));
}

/// A run that returns `Ok` without any text gets a `Failed` marker on its event; its session
/// must say the same (`SessionStatus::Failed`: "the last turn ended in an error").
#[test]
fn a_member_without_output_fails_its_session() {
    let (coven, puppet) = puppet_store(Config::default(), &[("mute", "Mute")]);
    let mute = puppet.hand("mute");
    let group = coven.create_group(None, ids(&["mute"]), None).unwrap();
    let turn = coven.send(&group.id, "anyone?".into(), None).unwrap();
    mute.request();
    mute.finish();
    finish_turn(&coven, &turn.turn_id);
    let snapshot = coven.get_group(&group.id).unwrap();
    let event = reply_of(&snapshot, &turn.turn_id, "mute");
    assert_eq!(
        event.error.as_ref().map(|e| e.kind),
        Some(ReplyErrorKind::Failed)
    );
    let session = coven
        .get_session(group.session_of("mute").unwrap())
        .unwrap();
    assert_eq!(
        session.status,
        SessionStatus::Failed,
        "the reply failed but its session says otherwise"
    );
}

#[test]
fn a_second_send_while_a_turn_runs_is_a_conflict_naming_it() {
    let (coven, puppet) = puppet_store(Config::default(), &[("slow", "Slow")]);
    let hand = puppet.hand("slow");
    let group = coven.create_group(None, ids(&["slow"]), None).unwrap();
    let first = coven.send(&group.id, "first".into(), None).unwrap();
    hand.request();
    let before = coven.get_group(&group.id).unwrap();

    match coven.send(&group.id, "second".into(), None) {
        Err(Error::Conflict { reason }) => assert!(
            reason.contains(&first.turn_id),
            "the conflict {reason:?} does not name the running turn {}",
            first.turn_id
        ),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        coven.get_group(&group.id).unwrap(),
        before,
        "a refused send changes nothing"
    );

    hand.say("done");
    hand.finish();
    finish_turn(&coven, &first.turn_id);
    let second = coven.send(&group.id, "second".into(), None).unwrap();
    assert_eq!(second.user_event.seq, 3, "the refused send consumed no seq");
    hand.request();
    hand.finish();
    finish_turn(&coven, &second.turn_id);
}

#[test]
fn wait_turn_is_true_only_once_every_reply_is_committed() {
    let (coven, puppet) = puppet_store(Config::default(), &[("held", "Held")]);
    coven
        .register_familiar(familiar("quick", "Quick", "scripted"))
        .unwrap();
    let held = puppet.hand("held");
    let group = coven
        .create_group(None, ids(&["quick", "held"]), None)
        .unwrap();
    let turn = coven.send(&group.id, "hi".into(), None).unwrap();
    held.request();
    held.say("partial");

    assert!(
        !coven
            .wait_turn(&turn.turn_id, Duration::from_millis(50))
            .unwrap(),
        "a member is still running"
    );
    held.say(" and the rest");
    held.finish();
    assert!(coven.wait_turn(&turn.turn_id, GUARD).unwrap());
    // Already committed when wait_turn returns: nothing streams, nothing is missing.
    let snapshot = coven.get_group(&group.id).unwrap();
    assert_eq!(snapshot.events.len(), 3);
    for event in replies(&snapshot) {
        assert!(!event.streaming);
        assert_eq!(event.error, None);
    }
    assert_eq!(
        reply_of(&snapshot, &turn.turn_id, "held").text,
        "partial and the rest"
    );
    assert!(coven
        .sessions_of(&group.id)
        .unwrap()
        .iter()
        .all(|session| session.status == SessionStatus::Idle));
    // A finished turn keeps answering true; an unknown one is not found.
    assert!(coven.wait_turn(&turn.turn_id, Duration::ZERO).unwrap());
    assert!(matches!(
        coven.wait_turn(&group.id, Duration::ZERO),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn cancel_keeps_partial_text_and_marks_every_reply_cancelled() {
    let (coven, puppet) = puppet_store(
        Config::default(),
        &[("talker", "Talker"), ("thinker", "Thinker")],
    );
    let talker = puppet.hand("talker");
    let thinker = puppet.hand("thinker");
    let group = coven
        .create_group(None, ids(&["talker", "thinker"]), None)
        .unwrap();
    let turn = coven.send(&group.id, "long question".into(), None).unwrap();
    talker.request();
    thinker.request();
    talker.say("partial answer");
    wait_until(&coven, &group.id, "the partial answer", |snapshot| {
        snapshot.events.len() == 2
    });

    assert_eq!(coven.cancel_turn(&group.id).unwrap(), turn.turn_id);
    finish_turn(&coven, &turn.turn_id);

    let snapshot = coven.get_group(&group.id).unwrap();
    assert_seq_contiguous(&snapshot.events);
    let talked = reply_of(&snapshot, &turn.turn_id, "talker");
    assert_eq!(talked.text, "partial answer");
    assert!(!talked.streaming);
    assert_eq!(
        talked.error.as_ref().map(|e| e.kind),
        Some(ReplyErrorKind::Cancelled)
    );
    let thought = reply_of(&snapshot, &turn.turn_id, "thinker");
    assert_eq!(thought.text, "");
    assert_eq!(
        thought.error.as_ref().map(|e| e.kind),
        Some(ReplyErrorKind::Cancelled)
    );
    // Cancelled is not a failure of the session, and the turn lock is released.
    assert!(coven
        .sessions_of(&group.id)
        .unwrap()
        .iter()
        .all(|session| session.status == SessionStatus::Idle));
    assert!(matches!(
        coven.cancel_turn(&group.id),
        Err(Error::NotFound { .. })
    ));
    let next = coven.send(&group.id, "next".into(), None).unwrap();
    for hand in [&talker, &thinker] {
        hand.request();
        hand.finish();
    }
    finish_turn(&coven, &next.turn_id);
}

#[test]
fn a_silent_member_times_out_and_keeps_its_text() {
    let config = Config {
        silence_timeout_ms: 200,
        ..Config::default()
    };
    let (coven, puppet) = puppet_store(config, &[("stuck", "Stuck")]);
    coven
        .register_familiar(familiar("quick", "Quick", "scripted"))
        .unwrap();
    let stuck = puppet.hand("stuck");
    let group = coven
        .create_group(None, ids(&["stuck", "quick"]), None)
        .unwrap();
    let started = Instant::now();
    let turn = coven.send(&group.id, "hello?".into(), None).unwrap();
    stuck.request();
    stuck.say("thinking...");
    // The run now blocks; only the silence timeout can end it.
    finish_turn(&coven, &turn.turn_id);
    assert!(started.elapsed() >= Duration::from_millis(200));

    let snapshot = coven.get_group(&group.id).unwrap();
    let event = reply_of(&snapshot, &turn.turn_id, "stuck");
    assert_eq!(event.text, "thinking...");
    assert!(!event.streaming);
    let error = event.error.as_ref().expect("an error marker");
    assert_eq!(error.kind, ReplyErrorKind::TimedOut);
    assert!(error.message.contains("200 ms"), "{:?}", error.message);
    assert_eq!(reply_of(&snapshot, &turn.turn_id, "quick").error, None);
    let sessions = coven.sessions_of(&group.id).unwrap();
    let status = |id: &str| {
        sessions
            .iter()
            .find(|session| session.familiar_id == id)
            .unwrap()
            .status
    };
    assert_eq!(status("stuck"), SessionStatus::Failed);
    assert_eq!(status("quick"), SessionStatus::Idle);
}

#[test]
fn the_resume_token_is_kept_on_the_session_and_given_back() {
    let (coven, puppet) = puppet_store(Config::default(), &[("agent", "Agent")]);
    let hand = puppet.hand("agent");
    let group = coven.create_group(None, ids(&["agent"]), None).unwrap();
    let session_id = group.session_of("agent").unwrap().to_owned();

    let turn_with = |token: Option<&str>| {
        let turn = coven.send(&group.id, "next".into(), None).unwrap();
        let request = hand.request();
        if let Some(token) = token {
            hand.step(Step::Token(token.to_owned()));
        }
        hand.say("ok");
        hand.finish();
        finish_turn(&coven, &turn.turn_id);
        request
    };

    let first = turn_with(Some("tok-1"));
    assert_eq!(first.resume_token, None);
    assert_eq!(first.session_id, session_id);
    assert_eq!(
        coven
            .get_session(&session_id)
            .unwrap()
            .resume_token
            .as_deref(),
        Some("tok-1")
    );
    let second = turn_with(Some("tok-2"));
    assert_eq!(second.resume_token.as_deref(), Some("tok-1"));
    let third = turn_with(None);
    assert_eq!(third.resume_token.as_deref(), Some("tok-2"));
    // A turn that reports no token keeps the previous one.
    assert_eq!(
        coven
            .get_session(&session_id)
            .unwrap()
            .resume_token
            .as_deref(),
        Some("tok-2")
    );
}

#[test]
fn each_prompt_names_the_rest_of_the_roster() {
    let members = [
        ("ada", "Ada Lovelace"),
        ("bo", "Bo Diddley"),
        ("cy", "Cy Twombly"),
    ];
    let (coven, puppet) = puppet_store(Config::default(), &members);
    let mut cy = familiar("cy", "Cy Twombly", "puppet");
    cy.preamble = Some("You answer in one line.".into());
    coven.register_familiar(cy).unwrap();
    let hands: Vec<Hand> = members.iter().map(|(id, _)| puppet.hand(id)).collect();
    let member_ids: Vec<&str> = members.iter().map(|(id, _)| *id).collect();
    let group = coven
        .create_group(Some("Night shift".into()), ids(&member_ids), None)
        .unwrap();
    let turn = coven
        .send(&group.id, "who is here?".into(), Some("Sam".into()))
        .unwrap();
    for (hand, (id, name)) in hands.iter().zip(members) {
        let request = hand.request();
        hand.finish();
        assert_eq!(request.familiar.id, id);
        assert_eq!(request.user_text, "who is here?");
        assert_eq!(request.turn_id, turn.turn_id);
        assert_eq!(request.group_id, group.id);
        let prompt = &request.prompt;
        assert!(
            prompt.starts_with(&format!("You are {name} (id \"{id}\")")),
            "{prompt:?}"
        );
        assert!(prompt.contains("Night shift"), "{prompt:?}");
        let roster_line = prompt
            .lines()
            .find(|line| line.starts_with("The other members"))
            .unwrap_or_else(|| panic!("no roster line in {prompt:?}"));
        for (other_id, other_name) in members {
            let named = roster_line.contains(other_name)
                && roster_line.contains(&format!("\"{other_id}\""));
            assert_eq!(named, other_id != id, "{id}'s roster line {roster_line:?}");
        }
        assert_eq!(prompt.contains("You answer in one line."), id == "cy");
        assert!(prompt.ends_with("Sam: who is here?"), "{prompt:?}");
    }
    finish_turn(&coven, &turn.turn_id);

    // Alone in a group, a familiar is told so.
    let solo = coven.create_group(None, ids(&["ada"]), None).unwrap();
    let turn = coven.send(&solo.id, "hi".into(), None).unwrap();
    let request = hands[0].request();
    hands[0].finish();
    assert!(request
        .prompt
        .contains("You are the only familiar in this group."));
    assert!(!request.prompt.contains("Bo Diddley"));
    finish_turn(&coven, &turn.turn_id);
}

#[test]
fn eight_members_stream_two_thousand_words_each() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        durable: true,
        scripted_delay_ms: 0,
        ..Config::default()
    };
    let coven = Coven::open(dir.path().join("coven.redb"), config).unwrap();
    let ids: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
    for id in &ids {
        let mut member = familiar(id, &format!("Familiar {id}"), "scripted");
        member.model = Some("words:2000".into());
        coven.register_familiar(member).unwrap();
    }
    let group = coven.create_group(None, ids.clone(), None).unwrap();
    let expected: String = (0..2000)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");

    let started = Instant::now();
    let turn = coven.send(&group.id, "go".into(), None).unwrap();
    finish_turn(&coven, &turn.turn_id);
    let elapsed = started.elapsed();
    eprintln!("one send to 8 scripted members x 2000 words (durable file store): {elapsed:?}");

    let snapshot = coven.get_group(&group.id).unwrap();
    assert_seq_contiguous(&snapshot.events);
    assert_eq!(snapshot.events.len(), 9);
    for id in &ids {
        let event = reply_of(&snapshot, &turn.turn_id, id);
        assert_eq!(event.error, None, "{id}");
        assert!(!event.streaming);
        assert_eq!(event.text.split_whitespace().count(), 2000, "{id}");
        assert_eq!(event.text, expected, "{id}");
    }
}
