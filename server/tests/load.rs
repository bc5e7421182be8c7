//! Load: 50 SSE clients (5 per group) and 10 senders (one per group) against one server for
//! 10 s. Every client of a group sees the store's whole change log, nothing lost, nothing twice:
//! every change but a delta is the one the log holds at its rev, and the deltas, applied with the
//! rest, rebuild the group the log rebuilds (a client that fell behind may read a finished
//! reply's deltas collapsed, or only its finish). The figures (delivery p99, memory per client, requests/s)
//! come from `cargo run --release -p coven-group-server --example server_report`, not from here.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Options, Reconstruction, TestServer};
use coven_group::Config;
use coven_group_server::api::change_frame;
use coven_group_server::client::Extra;
use serde_json::{json, Value};

const GROUPS: usize = 10;
const CLIENTS_PER_GROUP: usize = 5;
const RUN_FOR: Duration = Duration::from_secs(10);

#[test]
fn fifty_clients_and_ten_senders_see_identical_complete_sequences() {
    let server = Arc::new(TestServer::with(Options {
        words: 12,
        config: Config {
            durable: false,
            ..Config::default()
        },
        ..Options::default()
    }));
    let groups: Vec<String> = (0..GROUPS).map(|_| server.group()).collect();
    // Each client ends once it has seen its group's closing change, made after the senders stop.
    let closing: Arc<Vec<std::sync::OnceLock<u64>>> =
        Arc::new((0..GROUPS).map(|_| std::sync::OnceLock::new()).collect());

    let mut clients = Vec::new();
    for (index, group) in groups.iter().enumerate() {
        for _ in 0..CLIENTS_PER_GROUP {
            let mut events = server
                .owner()
                .stream(
                    "GET",
                    &format!("/api/groups/{group}/events?afterRev=0"),
                    None,
                    &Extra::default(),
                )
                .unwrap()
                .expect("stream opened");
            let closing = closing.clone();
            clients.push((
                index,
                std::thread::spawn(move || {
                    let mut seen: Vec<(u64, Value)> = Vec::new();
                    loop {
                        let frame = events
                            .next_frame()
                            .expect("the stream stays up")
                            .expect("the stream goes on until the closing change");
                        let id = frame.id.expect("every change has an id");
                        seen.push((id, frame.data));
                        if closing[index].get().is_some_and(|closing| id >= *closing) {
                            return seen;
                        }
                    }
                }),
            ));
        }
    }

    let started = Instant::now();
    let senders: Vec<_> = groups
        .iter()
        .map(|group| {
            let server = server.clone();
            let group = group.clone();
            std::thread::spawn(move || {
                let mut turns = 0u32;
                while started.elapsed() < RUN_FOR {
                    let mut stream = server
                        .owner()
                        .stream(
                            "POST",
                            &format!("/api/groups/{group}/send"),
                            Some(&json!({ "text": format!("turn {turns}") })),
                            &Extra::default(),
                        )
                        .unwrap()
                        .expect("send accepted");
                    let mut last = Value::Null;
                    while let Some(frame) = stream.next_frame().unwrap() {
                        last = frame.data;
                    }
                    assert_eq!(last["kind"], "done", "{last}");
                    turns += 1;
                }
                turns
            })
        })
        .collect();
    let turns: u32 = senders.into_iter().map(|s| s.join().unwrap()).sum();
    assert!(turns >= GROUPS as u32);

    for (index, group) in groups.iter().enumerate() {
        server.wait_idle(group);
        server.coven.rename_group(group, "closed".into()).unwrap();
        let head = server.coven.get_group(group).unwrap().rev;
        closing[index].set(head).unwrap();
        // A client that took the closing change before its rev was set wakes on this one.
        server
            .coven
            .rename_group(group, "closed again".into())
            .unwrap();
    }
    let mut sequences: Vec<Vec<Vec<(u64, Value)>>> = vec![Vec::new(); GROUPS];
    for (index, client) in clients {
        let mut seen = client.join().unwrap();
        let closing = *closing[index].get().unwrap();
        seen.retain(|(id, _)| *id <= closing);
        sequences[index].push(seen);
    }
    for (index, group) in groups.iter().enumerate() {
        let closing = *closing[index].get().unwrap();
        let mut expected = Vec::new();
        let mut after = 0;
        while after < closing {
            let page = server.coven.changes_since(group, after, 10_000).unwrap();
            after = page.last().expect("changes up to the closing one").rev;
            expected.extend(page.into_iter().filter(|change| change.rev <= closing).map(
                |change| {
                    (
                        change.rev,
                        serde_json::to_value(change_frame(change)).unwrap(),
                    )
                },
            ));
        }
        let not_deltas = |frames: &[(u64, Value)]| -> Vec<(u64, Value)> {
            frames
                .iter()
                .filter(|(_, frame)| frame["kind"] != "replyDelta")
                .cloned()
                .collect()
        };
        let rebuild = |frames: &[(u64, Value)], context: &str| {
            let mut rebuilt = Reconstruction::default();
            for (rev, frame) in frames {
                rebuilt.apply(Some(*rev), frame, context);
            }
            rebuilt
        };
        let logged = rebuild(&expected, &format!("group {index}: the log"));
        assert_eq!(
            logged.last_rev, closing,
            "the log reaches the closing change"
        );
        for seen in &sequences[index] {
            assert!(
                not_deltas(seen) == not_deltas(&expected),
                "group {index}: a client's changes other than deltas differ from the store's"
            );
            assert_eq!(
                rebuild(seen, &format!("group {index}: a client")),
                logged,
                "group {index}: a client rebuilt another group than the log does"
            );
        }
    }
}
