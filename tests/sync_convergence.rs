//! Convergence under faults: one home and three replicas run random operations (sends to
//! scripted familiars, appends, renames, membership changes, group creation from replicas,
//! deletes) while a simulated network drops, duplicates, delays and reorders every sync message,
//! and any store may be closed and reopened at any point. At quiescence every replica's copy of
//! every group equals the home's, every mutation answered as applied was applied exactly once,
//! no echo and no outbox entry remains, and `check()` is clean everywhere.
//!
//! Seeded and reproducible: case `i` runs seed `COVEN_SYNC_SEED + i` (default base 0x5eed), so
//! a failure names the seed that replays it. `COVEN_SYNC_CASES` sets the number of cases
//! (default 500).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::sync::assert_same_group;
use common::*;
use coven_group::{
    Config, Coven, Error, EventKind, Familiar, Mutation, MutationOutcome, MutationResult,
    OutboxState, PullRequest, PullResponse, PushRequest, PushResponse, SyncTransport,
};

const REPLICAS: usize = 3;
const FAMILIARS: [&str; 4] = ["ada", "bo", "cy", "dee"];

fn config() -> Config {
    Config {
        // Commits made durable at close: reopening keeps everything, and the test stays fast.
        durable: false,
        stream_commit_interval_ms: 0,
        ..Config::default()
    }
}

/// A store file that can be closed and opened again.
struct Node {
    path: PathBuf,
    coven: Arc<Coven>,
}

impl Node {
    fn new(dir: &std::path::Path, name: &str) -> Self {
        let path = dir.join(format!("{name}.redb"));
        let coven = Arc::new(Coven::open(&path, config()).expect("open a store"));
        Self { path, coven }
    }

    fn reopen(&mut self) {
        self.coven.close();
        self.coven = Arc::new(Coven::open(&self.path, config()).expect("reopen a store"));
    }
}

/// A fault-free transport that notes the mutations answered as applied.
struct Noting {
    home: Arc<Coven>,
    applied: Mutex<BTreeSet<String>>,
}

impl Noting {
    fn note(&self, results: &[MutationResult]) {
        for result in results {
            if let MutationOutcome::Applied { .. } = result.outcome {
                lock(&self.applied).insert(result.txn_id.clone());
            }
        }
    }
}

impl SyncTransport for Noting {
    fn pull(&self, request: PullRequest) -> Result<PullResponse, Error> {
        let response = self.home.serve_pull(request)?;
        self.note(&response.results);
        Ok(response)
    }

    fn push(&self, request: PushRequest) -> Result<PushResponse, Error> {
        let response = self.home.serve_push(request)?;
        self.note(&response.results);
        Ok(response)
    }
}

/// A message in flight.
#[derive(Clone)]
enum Message {
    Pull(usize, PullRequest),
    Push(usize, PushRequest),
    Pulled(usize, PullResponse),
    Pushed(usize, PushResponse),
}

struct World {
    rng: Rng,
    home: Node,
    replicas: Vec<Node>,
    network: Vec<Message>,
    /// The group and text of each message, by the transaction that carries it.
    messages: HashMap<String, (String, String)>,
    /// Transactions answered as applied.
    applied: BTreeSet<String>,
    counter: u64,
    _dir: tempfile::TempDir,
}

impl World {
    fn new(seed: u64) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let home = Node::new(dir.path(), "home");
        for id in FAMILIARS {
            home.coven
                .register_familiar(Familiar::new(id, id.to_uppercase(), "scripted"))
                .unwrap();
        }
        let replicas = (0..REPLICAS)
            .map(|n| Node::new(dir.path(), &format!("replica{n}")))
            .collect();
        Self {
            rng: Rng::from_seed(seed),
            home,
            replicas,
            network: Vec::new(),
            messages: HashMap::new(),
            applied: BTreeSet::new(),
            counter: 0,
            _dir: dir,
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.rng.between(0, items.len() as u64 - 1) as usize])
        }
    }

    fn text(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("{what} #{}", self.counter)
    }

    fn members(&mut self) -> Vec<String> {
        let count = self.rng.between(1, 3) as usize;
        let start = self.rng.between(0, 3) as usize;
        (0..count)
            .map(|n| FAMILIARS[(start + n) % FAMILIARS.len()].to_owned())
            .collect()
    }

    fn step(&mut self) {
        match self.rng.between(0, 99) {
            0..=14 => self.home_operation(),
            15..=44 => self.replica_operation(),
            45..=54 => {
                let n = self.rng.between(0, REPLICAS as u64 - 1) as usize;
                let replica = &self.replicas[n].coven;
                let home = Some(self.home.coven.store_id());
                let request = replica.pull_request(home).expect("pull_request");
                self.network.push(Message::Pull(n, request));
            }
            55..=64 => {
                let n = self.rng.between(0, REPLICAS as u64 - 1) as usize;
                let replica = &self.replicas[n].coven;
                if let Some(request) = replica
                    .push_request(&self.home.coven.store_id())
                    .expect("push_request")
                {
                    self.network.push(Message::Push(n, request));
                }
            }
            65..=94 => self.deliver(),
            _ => {
                let n = self.rng.between(0, REPLICAS as u64) as usize;
                match self.replicas.get_mut(n) {
                    Some(replica) => replica.reopen(),
                    None => self.home.reopen(),
                }
            }
        }
    }

    /// A random group the store holds (if any) and a random familiar, to operate on.
    fn target(&mut self, coven: &Coven) -> (Option<String>, &'static str) {
        let groups: Vec<String> = coven
            .list_groups()
            .unwrap()
            .into_iter()
            .map(|g| g.id)
            .collect();
        let group = self.pick(&groups).cloned();
        (group, FAMILIARS[self.rng.between(0, 3) as usize])
    }

    fn home_operation(&mut self) {
        let home = self.home.coven.clone();
        let (group, familiar) = self.target(&home);
        let result = match (self.rng.between(0, 6), group) {
            (0, _) | (_, None) => {
                let members = self.members();
                home.create_group(None, members, None).map(drop)
            }
            (1, Some(group)) => {
                let text = self.text("home send");
                home.send(&group, text, None).map(|turn| {
                    assert!(home.wait_turn(&turn.turn_id, GUARD).unwrap());
                })
            }
            (2, Some(group)) => {
                let text = self.text("home note");
                home.append_user_message(&group, text, None).map(drop)
            }
            (3, Some(group)) => {
                let title = self.text("home title");
                home.rename_group(&group, title).map(drop)
            }
            (4, Some(group)) => home.add_member(&group, familiar).map(drop),
            (5, Some(group)) => home.remove_member(&group, familiar).map(drop),
            (_, Some(group)) => home.delete_group(&group),
        };
        match result {
            Ok(()) | Err(Error::NotFound { .. } | Error::Conflict { .. }) => {}
            Err(err) => panic!("home operation failed: {err}"),
        }
    }

    fn replica_operation(&mut self) {
        let n = self.rng.between(0, REPLICAS as u64 - 1) as usize;
        let replica = self.replicas[n].coven.clone();
        // The host retries or discards what its home refused.
        if self.rng.between(0, 3) == 0 {
            if let Some(failed) = replica
                .outbox()
                .unwrap()
                .into_iter()
                .find(|entry| matches!(entry.state, OutboxState::Failed { .. }))
            {
                if self.rng.between(0, 1) == 0 {
                    replica.retry_outbox(&failed.txn_id).unwrap();
                } else {
                    replica.discard_outbox(&failed.txn_id).unwrap();
                }
                return;
            }
        }
        let (group, familiar) = self.target(&replica);
        let familiar = familiar.to_owned();
        let (mutation, text): (Mutation, Option<String>) = match (self.rng.between(0, 8), group) {
            (0, _) | (_, None) => {
                let members = self.members();
                let entry = replica.create_group_at(&self.home.coven.store_id(), None, members);
                Self::expect_queued(entry.map(drop));
                return;
            }
            (1 | 2, Some(group_id)) => {
                let text = self.text("replica send");
                (
                    Mutation::Send {
                        group_id,
                        text: text.clone(),
                        author: None,
                    },
                    Some(text),
                )
            }
            (3, Some(group_id)) => {
                let text = self.text("replica note");
                (
                    Mutation::AppendUserMessage {
                        group_id,
                        text: text.clone(),
                        author: Some("phone".into()),
                    },
                    Some(text),
                )
            }
            (4, Some(group_id)) => {
                let title = self.text("replica title");
                (Mutation::RenameGroup { group_id, title }, None)
            }
            (5, Some(group_id)) => (
                Mutation::AddMember {
                    group_id,
                    familiar_id: familiar,
                },
                None,
            ),
            (6, Some(group_id)) => (
                Mutation::RemoveMember {
                    group_id,
                    familiar_id: familiar,
                },
                None,
            ),
            // The home's turns end before the next step, so a cancel finds none: refused.
            (7, Some(group_id)) => (Mutation::CancelTurn { group_id }, None),
            (_, Some(group_id)) => (Mutation::DeleteGroup { group_id }, None),
        };
        let group_id = mutation.group_id().to_owned();
        match replica.enqueue(mutation) {
            Ok(entry) => {
                if let Some(text) = text {
                    self.messages.insert(entry.txn_id, (group_id, text));
                }
            }
            result => Self::expect_queued(result.map(drop)),
        }
    }

    /// A replica's own refusal: only a group or familiar it no longer has.
    fn expect_queued(result: Result<(), Error>) {
        match result {
            Ok(()) | Err(Error::NotFound { .. }) => {}
            Err(err) => panic!("enqueue failed: {err}"),
        }
    }

    /// Delivers a random message in flight (any of them: the network reorders and delays),
    /// or drops it, or delivers it and keeps a copy (a duplicate).
    fn deliver(&mut self) {
        if self.network.is_empty() {
            return;
        }
        let index = self.rng.between(0, self.network.len() as u64 - 1) as usize;
        let fate = self.rng.between(0, 9);
        let message = if fate == 0 {
            self.network[index].clone()
        } else {
            self.network.swap_remove(index)
        };
        if fate == 1 {
            return;
        }
        let home = self.home.coven.clone();
        match message {
            Message::Pull(n, request) => {
                let response = home.serve_pull(request).expect("serve_pull");
                self.network.push(Message::Pulled(n, response));
            }
            Message::Push(n, request) => {
                let response = home.serve_push(request).expect("serve_push");
                self.note_results(&response.results);
                self.network.push(Message::Pushed(n, response));
            }
            Message::Pulled(n, response) => {
                self.note_results(&response.results);
                match self.replicas[n].coven.apply_pull(response) {
                    // A stale answer that no longer follows what the replica holds.
                    Ok(_) | Err(Error::Conflict { .. }) => {}
                    Err(err) => panic!("apply_pull failed: {err}"),
                }
            }
            Message::Pushed(n, response) => {
                self.replicas[n]
                    .coven
                    .apply_push(response)
                    .expect("apply_push");
            }
        }
    }

    /// Notes the mutations answered as applied, and lets the turns they started end (so the
    /// home's state follows from the seed alone).
    fn note_results(&mut self, results: &[MutationResult]) {
        for result in results {
            if let MutationOutcome::Applied { turn_id, .. } = &result.outcome {
                self.applied.insert(result.txn_id.clone());
                if let Some(turn) = turn_id {
                    wait_turn(&self.home.coven, turn);
                }
            }
        }
    }

    /// No more faults: the hosts retry or discard refused entries and sync until nothing moves.
    fn quiesce(&mut self) {
        self.network.clear();
        // Each round discards at most one refused entry per replica (a sync stops at the next).
        for _ in 0..500 {
            let mut moved = false;
            for replica in &self.replicas {
                let replica = &replica.coven;
                for entry in replica.outbox().unwrap() {
                    if let OutboxState::Failed { .. } = entry.state {
                        replica.discard_outbox(&entry.txn_id).unwrap();
                        moved = true;
                    }
                }
                let transport = Arc::new(Noting {
                    home: self.home.coven.clone(),
                    applied: Mutex::default(),
                });
                let report = replica
                    .sync(transport.clone(), Some(self.home.coven.store_id()))
                    .expect("sync at quiescence");
                self.applied
                    .extend(lock(&transport.applied).iter().cloned());
                moved |= report.mutations_sent > 0 || report.changes > 0 || report.snapshots > 0;
            }
            // Turns started by the last pushes.
            for group in self.home.coven.list_groups().unwrap() {
                for event in self.home.coven.get_group(&group.id).unwrap().events {
                    if let (EventKind::User, Some(turn)) = (event.kind, &event.turn_id) {
                        wait_turn(&self.home.coven, turn);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn assert_converged(&self, seed: u64) {
        let home = &self.home.coven;
        let groups: BTreeSet<String> = home
            .list_groups()
            .unwrap()
            .into_iter()
            .map(|g| g.id)
            .collect();
        // Every message text at home, with how often it appears.
        let mut texts: BTreeMap<String, usize> = BTreeMap::new();
        for group in &groups {
            for event in home.get_group(group).unwrap().events {
                if event.kind == EventKind::User {
                    *texts.entry(event.text).or_default() += 1;
                }
            }
        }
        for (text, count) in &texts {
            assert_eq!(*count, 1, "seed {seed}: {text:?} was applied {count} times");
        }
        // Every message answered as applied is in its group (unless the group was deleted
        // since); every message at home was answered as applied or sent from the home.
        for txn in &self.applied {
            if let Some((group, text)) = self.messages.get(txn) {
                if groups.contains(group) {
                    assert!(
                        texts.contains_key(text),
                        "seed {seed}: applied message {text:?} is missing"
                    );
                }
            }
        }
        let answered: BTreeSet<&String> = self
            .applied
            .iter()
            .filter_map(|txn| self.messages.get(txn).map(|(_, text)| text))
            .collect();
        for text in texts.keys() {
            assert!(
                text.starts_with("home ") || answered.contains(text),
                "seed {seed}: {text:?} is at home but was never answered as applied"
            );
        }
        assert_clean(home);
        for (n, replica) in self.replicas.iter().enumerate() {
            let replica = &replica.coven;
            let held: BTreeSet<String> = replica
                .list_groups()
                .unwrap()
                .into_iter()
                .map(|g| g.id)
                .collect();
            assert_eq!(held, groups, "seed {seed}: replica {n} holds other groups");
            for group in &groups {
                assert_same_group(home, replica, group);
                assert!(
                    replica.get_group(group).unwrap().pending.is_empty(),
                    "seed {seed}: replica {n} still shows an echo"
                );
            }
            let outbox = replica.outbox().unwrap();
            assert!(
                outbox.is_empty(),
                "seed {seed}: replica {n}'s outbox is not empty: {outbox:#?}"
            );
            assert_clean(replica);
        }
    }
}

/// Waits for a turn to end; a turn of an earlier open of the home ended when it closed.
fn wait_turn(home: &Coven, turn: &str) {
    match home.wait_turn(turn, GUARD) {
        Ok(true) | Err(Error::NotFound { .. }) => {}
        other => panic!("turn {turn} did not end: {other:?}"),
    }
}

#[test]
fn replicas_converge_with_their_home_under_network_faults_and_restarts() {
    let base: u64 = std::env::var("COVEN_SYNC_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5eed);
    let cases: u64 = std::env::var("COVEN_SYNC_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(500);
    let mut applied = 0;
    for case in 0..cases {
        let seed = base + case;
        let mut world = World::new(seed);
        let steps = world.rng.between(10, 60);
        for _ in 0..steps {
            world.step();
        }
        world.quiesce();
        world.assert_converged(seed);
        applied += world.applied.len();
    }
    eprintln!("{cases} cases from seed {base}: {applied} mutations applied");
}
