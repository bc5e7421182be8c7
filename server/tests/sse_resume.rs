//! A client that drops the events stream at a random frame mid-turn and resumes with
//! `Last-Event-ID` sees every change exactly once (a reply's deltas that collapsed in the log
//! meanwhile come as its finish, which carries the whole text), and its reconstruction of the
//! group equals `GET /api/groups/{id}`. 200 repetitions, each on a new group with a new turn.

mod common;

use common::{Options, Reconstruction, TestServer};
use coven_group::Config;
use coven_group_server::client::{Client, Extra};
use serde_json::{json, Value};

const REPETITIONS: u64 = 200;

/// xorshift64*: a reproducible "random" frame per repetition (the seed is in every message).
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn open(client: &Client, group: &str, last: Option<u64>) -> coven_group_server::client::Events {
    let extra = Extra {
        headers: last
            .map(|rev| vec![("last-event-id", rev.to_string())])
            .unwrap_or_default(),
        raw_body: None,
    };
    client
        .stream(
            "GET",
            &format!("/api/groups/{group}/events?afterRev=0"),
            None,
            &extra,
        )
        .expect("connect")
        .unwrap_or_else(|reply| panic!("refused: {}", String::from_utf8_lossy(&reply.body)))
}

#[test]
fn dropped_streams_resume_with_last_event_id_and_reconstruct_the_group() {
    let server = TestServer::with(Options {
        words: 8,
        config: Config {
            durable: false,
            scripted_delay_ms: 1,
            ..Config::default()
        },
        ..Options::default()
    });
    let client = server.owner();
    let mut random = 0x9e37_79b9_7f4a_7c15u64;
    for repetition in 0..REPETITIONS {
        let seed = next(&mut random);
        let group = server.group();
        // The turn starts over HTTP; its own stream is dropped at once (the turn goes on).
        let send = client
            .stream(
                "POST",
                &format!("/api/groups/{group}/send"),
                Some(&json!({ "text": format!("round {repetition}") })),
                &Extra::default(),
            )
            .unwrap()
            .expect("send accepted");
        drop(send);
        // The group's changes are at least: created, the user event, 3 sessions running, and
        // per member a start, a finish and its session idle (deltas may share a change): drop
        // somewhere among the first 14 frames, mostly mid-turn (a word every millisecond).
        let drop_after = 1 + seed % 14;
        let mut rebuilt = Reconstruction::default();
        let mut stream = open(&client, &group, None);
        for _ in 0..drop_after {
            let frame = stream.next_frame().unwrap().expect("the stream goes on");
            rebuilt.apply(frame.id, &frame.data, &format!("seed {seed}"));
        }
        drop(stream);
        // Resume from the last id; read until the store's head once the turn is over.
        let mut stream = open(&client, &group, Some(rebuilt.last_rev));
        server.wait_idle(&group);
        let head = server.coven.get_group(&group).unwrap().rev;
        while rebuilt.last_rev < head {
            let frame = stream.next_frame().unwrap().expect("the stream goes on");
            rebuilt.apply(frame.id, &frame.data, &format!("seed {seed}"));
        }
        let reply = client
            .json("GET", &format!("/api/groups/{group}"), None)
            .unwrap();
        let timeline = reply.json().unwrap();
        let events: Vec<Value> = rebuilt.events.values().cloned().collect();
        assert_eq!(
            json!(events),
            timeline["events"],
            "seed {seed}: timelines differ"
        );
        let mut group_now = timeline["group"].clone();
        let mut group_rebuilt = rebuilt.group.clone();
        // updatedAt moves with every change; a group frame carries it as of that change.
        group_now["updatedAt"] = json!(0);
        group_rebuilt["updatedAt"] = json!(0);
        assert_eq!(group_rebuilt, group_now, "seed {seed}: groups differ");
        assert_eq!(timeline["rev"], head);
        assert_eq!(events.len(), 4, "seed {seed}");
    }
}
