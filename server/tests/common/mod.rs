//! An in-process server on a temporary store, reached over TCP (with tokens) or its Unix
//! socket, and what the tests compare with.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coven_group::{Config, Coven, Familiar};
use coven_group_server::client::{Client, Endpoint};
use coven_group_server::{Bound, Limits, Listen, Server};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Familiars every test server registers: three scripted ones with short replies.
pub const FAMILIARS: [&str; 3] = ["ada", "bo", "cy"];

pub struct Options {
    pub unix: bool,
    pub limits: Limits,
    pub config: Config,
    /// Words per scripted reply.
    pub words: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            unix: false,
            limits: Limits {
                max_body_bytes: 64 * 1024,
                ..Limits::default()
            },
            config: Config::default(),
            words: 6,
        }
    }
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub coven: Arc<Coven>,
    pub owner_token: String,
    pub addr: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub fn start() -> Self {
        Self::with(Options::default())
    }

    pub fn with(options: Options) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = dir.path().join("coven.redb");
        let coven = Arc::new(Coven::open(&store, options.config.clone()).expect("open store"));
        for id in FAMILIARS {
            let mut familiar = Familiar::new(id, id.to_uppercase(), "scripted");
            familiar.model = Some(format!("words:{}", options.words));
            coven
                .register_familiar(familiar)
                .expect("register familiar");
        }
        let (tokens, owner_token) = Server::tokens_for(&store).expect("tokens");
        let listen = if options.unix {
            Listen::Unix(dir.path().join("server.sock"))
        } else {
            Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_sender, bound_receiver) = std::sync::mpsc::channel();
        let server = Server {
            coven: coven.clone(),
            tokens,
            limits: options.limits,
        };
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let bound = Bound::bind(&listen).await?;
                let _ = bound_sender.send(bound.local_addr());
                server
                    .serve(bound, async move {
                        let _ = stopped.await;
                    })
                    .await
            })
        });
        let addr = bound_receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("the server binds");
        Self {
            socket: options.unix.then(|| dir.path().join("server.sock")),
            dir,
            store,
            coven,
            owner_token,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn tcp(&self, token: Option<&str>) -> Client {
        let addr = self.addr.expect("a TCP server").to_string();
        let mut client = Client::new(Endpoint::Tcp {
            addr,
            token: token.map(str::to_owned),
        });
        client.read_timeout = Duration::from_secs(30);
        client
    }

    /// The owner: over the socket for a Unix server, with the owner token over TCP.
    pub fn owner(&self) -> Client {
        match &self.socket {
            Some(path) => {
                let mut client = Client::new(Endpoint::Unix(path.clone()));
                client.read_timeout = Duration::from_secs(30);
                client
            }
            None => self.tcp(Some(&self.owner_token)),
        }
    }

    pub fn with_token(&self, token: &str) -> Client {
        self.tcp(Some(token))
    }

    pub fn anonymous(&self) -> Client {
        self.tcp(None)
    }

    /// A group of the three familiars, created through the library.
    pub fn group(&self) -> String {
        self.coven
            .create_group(Some("g".into()), FAMILIARS.map(String::from).to_vec(), None)
            .expect("create group")
            .id
    }

    /// Stops the server as a signal would and waits for it to finish (at most 30 s).
    pub fn stop(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !thread.is_finished() {
                    assert!(Instant::now() < deadline, "the server did not stop in 30 s");
                    std::thread::sleep(Duration::from_millis(5));
                }
                thread.join().expect("server thread")
            }
            None => Ok(()),
        }
    }

    /// Everything a request could change, for "the store is unchanged" checks: familiars,
    /// groups with their timelines and revs, sessions, and shares.
    pub fn fingerprint(&self) -> String {
        let mut out = format!("{:?}\n", self.coven.list_familiars().expect("familiars"));
        for group in self.coven.list_groups().expect("groups") {
            let snapshot = self.coven.get_group(&group.id).expect("group");
            out.push_str(&format!("{snapshot:?}\n"));
            out.push_str(&format!(
                "{:?}\n",
                self.coven.sessions_of(&group.id).expect("sessions")
            ));
        }
        let shares =
            std::fs::read(coven_group_server::token_paths(&self.store).1).unwrap_or_default();
        out.push_str(&String::from_utf8_lossy(&shares));
        out
    }

    /// Waits until the group has no running turn (at most 30 s).
    pub fn wait_idle(&self, group: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let snapshot = self.coven.get_group(group).expect("group");
            let sessions = self.coven.sessions_of(group).expect("sessions");
            let idle = !snapshot.events.iter().any(|e| e.streaming)
                && sessions
                    .iter()
                    .all(|s| s.status != coven_group::SessionStatus::Running);
            if idle {
                return;
            }
            assert!(Instant::now() < deadline, "the group stayed busy for 30 s");
            let _ = self
                .coven
                .wait_for_changes(group, snapshot.rev, 1, Duration::from_millis(200));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The `error.code` of an error response.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

/// What a client rebuilds from change frames: the group and its events by seq. Revs must rise
/// (they may skip: a finished reply's deltas are one record in the log), a delta must extend a
/// reply still streaming, and a reply's finish must extend the text its deltas brought; so a lost,
/// repeated or reordered frame fails, while a reader that read collapsed deltas passes.
#[derive(Debug, Default, PartialEq)]
pub struct Reconstruction {
    pub group: Value,
    pub events: BTreeMap<u64, Value>,
    pub last_rev: u64,
}

impl Reconstruction {
    /// Applies one frame; `context` names the run in a failure.
    #[track_caller]
    pub fn apply(&mut self, id: Option<u64>, frame: &Value, context: &str) {
        let rev = id.expect("every change frame has an id");
        assert!(
            rev > self.last_rev,
            "{context}: rev {rev} after {}: a duplicate or a step back at {frame}",
            self.last_rev
        );
        assert_eq!(frame["rev"], rev, "{context}: id and rev differ");
        self.last_rev = rev;
        match frame["kind"].as_str().unwrap() {
            "groupCreated" | "groupChanged" => self.group = frame["group"].clone(),
            "eventAppended" => {
                let event = frame["event"].clone();
                self.events.insert(event["seq"].as_u64().unwrap(), event);
            }
            "replyFinished" => {
                let event = frame["event"].clone();
                let seq = event["seq"].as_u64().unwrap();
                if let Some(streamed) = self.events.get(&seq) {
                    let streamed = streamed["text"].as_str().unwrap();
                    assert!(
                        event["text"].as_str().unwrap().starts_with(streamed),
                        "{context}: reply {seq} finished with text its deltas do not lead to"
                    );
                }
                self.events.insert(seq, event);
            }
            "replyDelta" => {
                let event = self
                    .events
                    .get_mut(&frame["seq"].as_u64().unwrap())
                    .expect("a delta follows its reply's start");
                assert_eq!(
                    event["streaming"], true,
                    "{context}: a delta after its reply finished"
                );
                let text = format!(
                    "{}{}",
                    event["text"].as_str().unwrap(),
                    frame["text"].as_str().unwrap()
                );
                event["text"] = json!(text);
                event["rev"] = json!(rev);
            }
            "sessionChanged" | "sessionSacrificed" => {}
            other => panic!("{context}: unexpected frame kind {other}"),
        }
    }
}
