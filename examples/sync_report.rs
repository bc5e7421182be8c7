//! What sync costs: a replica catching up with a 100,000-change backlog of one group, through the
//! changes (pages of at most 4,096) and, side by side, through a snapshot; every message carried
//! as the protocol's JSON, as a transport would.
//!
//! `cargo run --release --example sync_report [-- CHANGES]` (default 100,000). Both stores are
//! durable files in a temporary directory; the backlog is user messages of ~60 bytes and turns of
//! three scripted familiars (replies streamed as deltas), so it holds every kind of change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coven_group::{
    sync_message_from_json, sync_message_to_json, Config, Coven, Familiar, PullRequest,
    PullResponse, PushRequest, PushResponse, Result, SyncMessage, SyncTransport,
};

/// Carries every message to the home as JSON, counting the bytes and the changes of each answer.
struct Json {
    home: Arc<Coven>,
    answer_bytes: AtomicU64,
    changes: AtomicU64,
}

impl Json {
    fn carry(&self, message: SyncMessage) -> Result<SyncMessage> {
        let json = sync_message_to_json(message)?;
        if json.starts_with("{\"type\":\"pull_response\"") {
            self.answer_bytes
                .fetch_add(json.len() as u64, Ordering::Relaxed);
        }
        sync_message_from_json(json)
    }
}

impl SyncTransport for Json {
    fn pull(&self, request: PullRequest) -> Result<PullResponse> {
        let SyncMessage::PullRequest { request } =
            self.carry(SyncMessage::PullRequest { request })?
        else {
            unreachable!("a pull request comes back a pull request");
        };
        let response = self.home.serve_pull(request)?;
        for pull in &response.groups {
            if let coven_group::GroupPull::Changes { changes, .. } = pull {
                self.changes
                    .fetch_add(changes.len() as u64, Ordering::Relaxed);
            }
        }
        match self.carry(SyncMessage::PullResponse { response })? {
            SyncMessage::PullResponse { response } => Ok(response),
            _ => unreachable!("a pull response comes back a pull response"),
        }
    }

    fn push(&self, request: PushRequest) -> Result<PushResponse> {
        self.home.serve_push(request)
    }
}

fn main() -> Result<()> {
    let backlog: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let home = Arc::new(Coven::open(
        dir.path().join("home.redb"),
        Config {
            // Changes all the way: the snapshot path is measured on its own below.
            sync_snapshot_after_changes: u64::MAX,
            stream_commit_interval_ms: 0,
            ..Config::default()
        },
    )?);
    for id in ["ada", "bo", "cy"] {
        let mut familiar = Familiar::new(id, id.to_uppercase(), "scripted");
        familiar.model = Some("words:12".into());
        home.register_familiar(familiar)?;
    }
    let group = home.create_group(None, vec!["ada".into(), "bo".into(), "cy".into()], None)?;
    let replica = Coven::open(dir.path().join("replica.redb"), Config::default())?;
    let transport = Arc::new(Json {
        home: home.clone(),
        answer_bytes: AtomicU64::new(0),
        changes: AtomicU64::new(0),
    });
    replica.sync(transport.clone(), None)?;

    // The backlog: user messages, and every 50th a turn whose replies stream.
    let started = Instant::now();
    let mut n = 0;
    while home.get_group_tail(&group.id, 1)?.rev < backlog {
        n += 1;
        if n % 50 == 0 {
            let turn = home.send(&group.id, format!("turn {n}: what do you think?"), None)?;
            home.wait_turn(&turn.turn_id, Duration::from_secs(60))?;
        } else {
            home.append_user_message(
                &group.id,
                format!("message {n:>6}: the quick brown fox jumps over the dog"),
                Some("Sam".into()),
            )?;
        }
    }
    let head = home.get_group_tail(&group.id, 1)?.rev;
    println!(
        "backlog: {head} changes of one group ({} events), built in {:.1} s",
        home.get_group_tail(&group.id, 1)?.events[0].seq,
        started.elapsed().as_secs_f64()
    );

    transport.answer_bytes.store(0, Ordering::Relaxed);
    transport.changes.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let report = replica.sync(transport.clone(), Some(home.store_id()))?;
    let took = started.elapsed();
    let changes = transport.changes.load(Ordering::Relaxed);
    let bytes = transport.answer_bytes.load(Ordering::Relaxed);
    println!(
        "catch-up through changes: {} changes applied in {:.2} s = {:.0} changes/s; {} pull round \
         trips; {} bytes of JSON = {:.0} bytes per change",
        report.changes,
        took.as_secs_f64(),
        report.changes as f64 / took.as_secs_f64(),
        report.pulls,
        bytes,
        bytes as f64 / changes.max(1) as f64
    );

    // A replica new to the group gets it as one snapshot.
    let fresh = Coven::open(dir.path().join("fresh.redb"), Config::default())?;
    transport.answer_bytes.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let report = fresh.sync(transport.clone(), None)?;
    let took = started.elapsed();
    let events = fresh.get_group_tail(&group.id, 1)?.events[0].seq;
    println!(
        "bootstrap through a snapshot: {events} events in {:.2} s; {} pull round trip(s); {} \
         bytes of JSON = {:.0} bytes per event",
        took.as_secs_f64(),
        report.pulls,
        transport.answer_bytes.load(Ordering::Relaxed),
        transport.answer_bytes.load(Ordering::Relaxed) as f64 / events as f64
    );
    let same = fresh.get_group(&group.id)?.events.len() == home.get_group(&group.id)?.events.len()
        && replica.get_group(&group.id)?.events.len() == home.get_group(&group.id)?.events.len();
    println!("replicas equal the home: {same}");
    Ok(())
}
