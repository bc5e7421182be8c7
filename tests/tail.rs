//! Opening a thread without reading its history: `get_group_tail` (the group, its latest events,
//! the rev they reflect, whether earlier ones exist) and `events_before` to page back. Together
//! they return exactly the timeline `get_group` returns, page by page.

mod common;

use std::time::Duration;

use common::*;
use coven_group::{Config, Coven, Familiar, GroupEvent, MAX_PAGE};

fn group_with_messages(coven: &Coven, count: usize) -> String {
    let group = coven.create_group(None, ids(&["ada"]), None).unwrap();
    for i in 0..count {
        coven
            .append_user_message(&group.id, format!("message {i}"), None)
            .unwrap();
    }
    group.id
}

fn seqs(events: &[GroupEvent]) -> Vec<u64> {
    events.iter().map(|event| event.seq).collect()
}

#[test]
fn the_tail_and_pages_before_it_are_the_whole_timeline() {
    let coven = memory_store();
    register(&coven, &[("ada", "Ada")]);
    let group = group_with_messages(&coven, 250);
    let snapshot = coven.get_group(&group).unwrap();

    let tail = coven.get_group_tail(&group, 100).unwrap();
    assert_eq!(tail.group, snapshot.group);
    assert_eq!(tail.rev, snapshot.rev);
    assert_eq!(seqs(&tail.events), (151..=250).collect::<Vec<_>>());
    assert!(tail.has_earlier);

    // Scrolling up from the first shown event until nothing is earlier.
    let mut pages = vec![tail.events.clone()];
    let mut before = tail.events[0].seq;
    loop {
        let page = coven.events_before(&group, before, 100).unwrap();
        if page.is_empty() {
            break;
        }
        before = page[0].seq;
        pages.push(page);
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [100, 100, 50]
    );
    let joined: Vec<GroupEvent> = pages.into_iter().rev().flatten().collect();
    assert_eq!(joined, snapshot.events);

    // From the group's next seq, events_before is the tail's events.
    assert_eq!(coven.events_before(&group, 251, 100).unwrap(), tail.events);
    assert_eq!(coven.events_before(&group, 0, 10).unwrap(), []);
    assert_eq!(coven.events_before(&group, 1, 10).unwrap(), []);
    assert_eq!(seqs(&coven.events_before(&group, 3, 10).unwrap()), [1, 2]);
}

#[test]
fn a_short_or_empty_group_has_nothing_earlier() {
    let coven = memory_store();
    register(&coven, &[("ada", "Ada")]);
    let empty = group_with_messages(&coven, 0);
    let tail = coven.get_group_tail(&empty, 10).unwrap();
    assert_eq!(
        (tail.events.len(), tail.has_earlier, tail.rev),
        (0, false, 1)
    );

    let short = group_with_messages(&coven, 3);
    let tail = coven.get_group_tail(&short, MAX_PAGE).unwrap();
    assert_eq!(seqs(&tail.events), [1, 2, 3]);
    assert!(!tail.has_earlier);
    let exact = coven.get_group_tail(&short, 3).unwrap();
    assert_eq!(
        (exact.events, exact.has_earlier),
        (tail.events.clone(), false)
    );
    let one = coven.get_group_tail(&short, 2).unwrap();
    assert_eq!((seqs(&one.events), one.has_earlier), (vec![2, 3], true));
}

#[test]
fn the_tail_shows_a_streaming_reply_with_its_text_so_far() {
    let config = Config {
        scripted_delay_ms: 20,
        ..Config::default()
    };
    let coven = Coven::open_in_memory(config).unwrap();
    coven
        .register_familiar(Familiar {
            model: Some("words:400".into()),
            ..Familiar::new("ada", "Ada", "scripted")
        })
        .unwrap();
    let group = group_with_messages(&coven, 5);
    let turn = coven.send(&group, "go on".into(), None).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let tail = loop {
        let tail = coven.get_group_tail(&group, 2).unwrap();
        if tail.events.len() == 2 && tail.events[1].text.split(' ').count() > 2 {
            break tail;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reply never streamed"
        );
        std::thread::yield_now();
    };
    assert_eq!(seqs(&tail.events), [6, 7]);
    assert!(tail.has_earlier);
    let reply = &tail.events[1];
    if reply.streaming {
        assert!(reply.text.starts_with("w0 w1 "), "{reply:?}");
        // What the tail showed is what the change log had delivered by its rev.
        let changes = coven.changes_since(&group, 0, MAX_PAGE).unwrap();
        let streamed: String = changes
            .iter()
            .take_while(|change| change.rev <= tail.rev)
            .filter_map(|change| match &change.update {
                coven_group::GroupUpdate::EventAppended { event } if event.seq == 7 => {
                    Some(event.text.clone())
                }
                coven_group::GroupUpdate::ReplyDelta { seq: 7, text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(streamed, reply.text);
    }
    coven.cancel_turn(&group).unwrap();
    assert!(coven
        .wait_turn(&turn.turn_id, Duration::from_secs(60))
        .unwrap());
}
