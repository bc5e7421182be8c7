//! The server's figures, measured in one process against one in-process server on TCP:
//!
//! - `sse_p99_delivery_ms`: 50 SSE clients (5 per group) and 10 senders (one per group) for
//!   10 s; per change, a client's arrival time minus the arrival time at a listener subscribed
//!   to the library directly (the moment the change was published, give or take that
//!   listener's own wake-up).
//! - `memory_per_sse_client_kib`: the process's resident memory with 200 idle streams open
//!   minus before, over 200 (server and client side of each stream together).
//! - `get_group_http_rps` / `get_group_direct_rps`: sequential `GET /api/groups/{id}` of a
//!   1,000-event group against `Coven::get_group` on the same store, and their ratio.
//!
//! `cargo run --release -p coven-group-server --example server_report [-- --seconds N]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Options, TestServer};
use coven_group::{GroupChange, GroupListener};
use coven_group_server::client::Extra;
use serde_json::json;

const GROUPS: usize = 10;
const CLIENTS_PER_GROUP: usize = 5;
const IDLE_STREAMS: usize = 200;

/// When each (group, rev) reached a listener subscribed to the library.
struct Published {
    group: usize,
    at: Arc<Mutex<HashMap<(usize, u64), Instant>>>,
}

impl GroupListener for Published {
    fn on_updates(&self, updates: Vec<GroupChange>) -> coven_group::Result<()> {
        let now = Instant::now();
        let mut at = self.at.lock().unwrap();
        for change in updates {
            at.insert((self.group, change.rev), now);
        }
        Ok(())
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let server = Arc::new(TestServer::with(Options {
        words: 12,
        ..Options::default()
    }));

    // ---- delivery under load ----
    let groups: Vec<String> = (0..GROUPS).map(|_| server.group()).collect();
    let published = Arc::new(Mutex::new(HashMap::new()));
    let _references: Vec<_> = groups
        .iter()
        .enumerate()
        .map(|(group, id)| {
            server
                .coven
                .subscribe(
                    id,
                    0,
                    Arc::new(Published {
                        group,
                        at: published.clone(),
                    }),
                )
                .unwrap()
        })
        .collect();
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
                .unwrap();
            let closing = closing.clone();
            clients.push(std::thread::spawn(move || {
                let mut arrivals = Vec::new();
                loop {
                    let frame = events.next_frame().unwrap().unwrap();
                    let id = frame.id.unwrap();
                    arrivals.push(((index, id), Instant::now()));
                    if closing[index].get().is_some_and(|closing| id >= *closing) {
                        return arrivals;
                    }
                }
            }));
        }
    }
    let started = Instant::now();
    let run_for = Duration::from_secs(seconds);
    let senders: Vec<_> = groups
        .iter()
        .map(|group| {
            let server = server.clone();
            let group = group.clone();
            std::thread::spawn(move || {
                let mut turns = 0u64;
                while started.elapsed() < run_for {
                    let mut stream = server
                        .owner()
                        .stream(
                            "POST",
                            &format!("/api/groups/{group}/send"),
                            Some(&json!({ "text": "go" })),
                            &Extra::default(),
                        )
                        .unwrap()
                        .unwrap();
                    while stream.next_frame().unwrap().is_some() {}
                    turns += 1;
                }
                turns
            })
        })
        .collect();
    let turns: u64 = senders.into_iter().map(|s| s.join().unwrap()).sum();
    for (index, group) in groups.iter().enumerate() {
        server.wait_idle(group);
        server.coven.rename_group(group, "closed".into()).unwrap();
        closing[index]
            .set(server.coven.get_group(group).unwrap().rev)
            .unwrap();
        // A client that took the closing change before its rev was set wakes on this one.
        server
            .coven
            .rename_group(group, "closed again".into())
            .unwrap();
    }
    let mut latencies: Vec<Duration> = Vec::new();
    let mut frames = 0u64;
    let arrivals: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let published = published.lock().unwrap();
    for client in arrivals {
        for (key, at) in client {
            frames += 1;
            if let Some(reference) = published.get(&key) {
                latencies.push(at.saturating_duration_since(*reference));
            }
        }
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let p50 = p(0.50);
    let p99 = p(0.99);

    // ---- memory per idle stream ----
    let idle_group = server.group();
    let before = rss_kib();
    let mut idle = Vec::new();
    for _ in 0..IDLE_STREAMS {
        let mut events = server
            .owner()
            .stream(
                "GET",
                &format!("/api/groups/{idle_group}/events?afterRev=0"),
                None,
                &Extra::default(),
            )
            .unwrap()
            .unwrap();
        events.next_frame().unwrap().unwrap();
        idle.push(events);
    }
    let per_client_kib = rss_kib().saturating_sub(before) as f64 / IDLE_STREAMS as f64;
    drop(idle);

    // ---- GET /api/groups/{id} of a 1,000-event group against get_group ----
    let big = server.group();
    for i in 0..1000 {
        server
            .coven
            .append_user_message(
                &big,
                format!("message number {i} with some ordinary text in it"),
                Some("Sam".into()),
            )
            .unwrap();
    }
    let rounds = 300;
    let direct_started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(server.coven.get_group(&big).unwrap());
    }
    let direct_rps = rounds as f64 / direct_started.elapsed().as_secs_f64();
    let client = server.owner();
    let http_started = Instant::now();
    for _ in 0..rounds {
        let reply = client
            .json("GET", &format!("/api/groups/{big}"), None)
            .unwrap();
        assert_eq!(reply.status, 200);
        std::hint::black_box(reply.body.len());
    }
    let http_rps = rounds as f64 / http_started.elapsed().as_secs_f64();

    println!("| figure | value |");
    println!("|---|---:|");
    println!("| load | {GROUPS} groups × {CLIENTS_PER_GROUP} SSE clients, {GROUPS} senders, {seconds} s, {turns} turns, {frames} frames delivered |");
    println!("| sse_p50_delivery_ms | {:.2} |", p50.as_secs_f64() * 1e3);
    println!("| sse_p99_delivery_ms | {:.2} |", p99.as_secs_f64() * 1e3);
    println!("| memory_per_sse_client_kib | {per_client_kib:.0} |");
    println!("| get_group_direct_rps | {direct_rps:.0} |");
    println!("| get_group_http_rps | {http_rps:.0} |");
    println!("| http_over_direct | {:.2} |", http_rps / direct_rps);
    println!(
        "{}",
        json!({
            "turns": turns, "frames": frames,
            "sse_p50_delivery_ms": p50.as_secs_f64() * 1e3,
            "sse_p99_delivery_ms": p99.as_secs_f64() * 1e3,
            "memory_per_sse_client_kib": per_client_kib,
            "get_group_direct_rps": direct_rps,
            "get_group_http_rps": http_rps,
            "http_over_direct": http_rps / direct_rps,
        })
    );
}
