//! The web thread view in a real browser: a server on a temporary store with four familiars of
//! a paced host harness, driven by every `server/tests/browser/*.test.mjs` (headless Chromium
//! through playwright-core; `.ci/run` installs both). Also the page's own HTTP behaviour.
//!
//! The scripts steer the harness over a line protocol: a line `@@coven-group-test <command>`
//! on the script's stdout is carried out, then answered with `ok` on its stdin. `hold` makes
//! the replies of turns started from then on stop halfway until `release`, so a script can act
//! mid-turn (reload, cancel) without guessing how long a turn takes.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use coven_group::{Config, Coven, Familiar, Harness, ReplySink, TurnRequest};
use coven_group_server::client::{Client, Endpoint};
use coven_group_server::{Bound, Limits, Listen, Server};
use tokio::sync::oneshot;

/// The familiars every browser test server registers (id, display name); the first three form
/// the scripts' groups, the fourth is added and removed.
const FAMILIARS: [(&str, &str); 4] = [
    ("morgana", "Morgana"),
    ("merlin", "Merlin"),
    ("nimue", "Nimue"),
    ("vivian", "Vivian"),
];
/// Pause between the words of a reply.
const WORD_DELAY: Duration = Duration::from_millis(30);
/// Longest a held reply waits for `release` before it fails.
const HOLD_LIMIT: Duration = Duration::from_secs(120);
/// Longest one browser script may run.
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);
const CONTROL_PREFIX: &str = "@@coven-group-test ";

/// Whether replies stop halfway, and how many releases have happened.
#[derive(Default)]
struct HoldState {
    holding: bool,
    releases: u64,
}

#[derive(Default)]
struct Hold {
    state: Mutex<HoldState>,
    released: Condvar,
}

impl Hold {
    fn set_holding(&self) {
        self.state.lock().unwrap().holding = true;
    }

    fn release(&self) {
        let mut state = self.state.lock().unwrap();
        state.holding = false;
        state.releases += 1;
        self.released.notify_all();
    }

    /// The release a reply starting now waits for, if replies are held.
    fn ticket(&self) -> Option<u64> {
        let state = self.state.lock().unwrap();
        state.holding.then_some(state.releases)
    }

    /// Waits until a release after `ticket`; false when the run was stopped first or the wait
    /// reached [`HOLD_LIMIT`].
    fn wait(&self, ticket: u64, sink: &ReplySink) -> bool {
        let deadline = Instant::now() + HOLD_LIMIT;
        let mut state = self.state.lock().unwrap();
        while state.releases == ticket {
            if sink.is_cancelled() || Instant::now() >= deadline {
                return false;
            }
            // Short slices: a cancel is seen within one.
            state = self
                .released
                .wait_timeout(state, Duration::from_millis(20))
                .unwrap()
                .0;
        }
        true
    }
}

/// A reply that names its familiar and quotes the message, a word at a time. A message with
/// `(fail)` makes Nimue's reply fail after two words.
struct Paced {
    hold: Arc<Hold>,
}

const FAILURE: &str = "the scrying bowl clouded over";

impl Harness for Paced {
    fn run_turn(&self, request: TurnRequest, sink: Arc<ReplySink>) -> coven_group::Result<bool> {
        let ticket = self.hold.ticket();
        let reply = format!(
            "{} hears \u{201c}{}\u{201d} and answers: the circle holds while the candles burn.",
            request.familiar.display_name, request.user_text
        );
        let words: Vec<&str> = reply.split(' ').collect();
        let fails = request.user_text.contains("(fail)") && request.familiar.id == "nimue";
        let halfway = words.len() / 2;
        for (index, word) in words.iter().enumerate() {
            if sink.is_cancelled() {
                return Ok(true);
            }
            if fails && index == 2 {
                sink.fail(FAILURE.into());
                return Ok(false);
            }
            if index == halfway {
                if let Some(ticket) = ticket {
                    if !self.hold.wait(ticket, &sink) {
                        if sink.is_cancelled() {
                            return Ok(true);
                        }
                        sink.fail("the reply was held and never released".into());
                        return Ok(false);
                    }
                }
            }
            if index > 0 {
                std::thread::sleep(WORD_DELAY);
            }
            let text = if index + 1 < words.len() {
                format!("{word} ")
            } else {
                (*word).to_owned()
            };
            sink.delta(text);
        }
        Ok(true)
    }
}

struct BrowserServer {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    owner_token: String,
    hold: Arc<Hold>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl BrowserServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = dir.path().join("coven.redb");
        let coven = Arc::new(Coven::open(&store, Config::default()).expect("open store"));
        let hold = Arc::new(Hold::default());
        coven
            .register_host_harness("paced", Arc::new(Paced { hold: hold.clone() }))
            .expect("register the harness");
        for (id, name) in FAMILIARS {
            coven
                .register_familiar(Familiar::new(id, name, "paced"))
                .expect("register a familiar");
        }
        let (tokens, owner_token) = Server::tokens_for(&store).expect("tokens");
        let server = Server {
            coven,
            tokens,
            limits: Limits::default(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_sender, bound) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listen = Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
                let bound = Bound::bind(&listen).await?;
                let _ = bound_sender.send(bound.local_addr());
                server
                    .serve(bound, async move {
                        let _ = stopped.await;
                    })
                    .await
            })
        });
        let addr = bound
            .recv_timeout(Duration::from_secs(30))
            .expect("the server binds")
            .expect("a TCP address");
        Self {
            _dir: dir,
            addr,
            owner_token,
            hold,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn client(&self, token: Option<&str>) -> Client {
        Client::new(Endpoint::Tcp {
            addr: self.addr.to_string(),
            token: token.map(str::to_owned),
        })
    }
}

impl Drop for BrowserServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Bounded: the server ends its streams at once and the store's close is bounded.
        let deadline = Instant::now() + Duration::from_secs(30);
        if let Some(thread) = self.thread.take() {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("COVEN_GROUP_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Node, the npm packages and Chromium, or a panic that says how to install them.
fn check_prerequisites() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|out| out.status.success()),
        "the browser tests need Node.js (apt-get install nodejs npm; see .ci/run)"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "the browser tests need their npm packages: npm ci --prefix {} (see .ci/run)",
        browser_dir().display()
    );
    assert!(
        chromium().exists(),
        "the browser tests need Chromium at {} (apt-get install chromium, or set \
         COVEN_GROUP_CHROMIUM; see .ci/run)",
        chromium().display()
    );
}

/// Runs one script against `server`, answering its control lines; returns its output, or
/// panics with it when the script fails or overruns [`SCRIPT_LIMIT`].
fn run_script(server: &BrowserServer, script: &Path) -> String {
    let mut child = Command::new("node")
        .arg(script)
        .current_dir(browser_dir())
        .env("COVEN_GROUP_TEST_URL", format!("http://{}", server.addr))
        .env("COVEN_GROUP_TEST_TOKEN", &server.owner_token)
        .env("COVEN_GROUP_CHROMIUM", chromium())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let mut answers = child.stdin.take().expect("stdin");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut stderr = child.stderr.take().expect("stderr");
    let hold = server.hold.clone();
    let reader = std::thread::spawn(move || {
        let mut output = String::new();
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            match line.strip_prefix(CONTROL_PREFIX) {
                Some("hold") => hold.set_holding(),
                Some("release") => hold.release(),
                Some(other) => {
                    output.push_str(&format!("unknown control command {other:?}\n"));
                    continue;
                }
                None => {
                    output.push_str(&line);
                    output.push('\n');
                    continue;
                }
            }
            if answers
                .write_all(b"ok\n")
                .and_then(|()| answers.flush())
                .is_err()
            {
                break;
            }
        }
        output
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + SCRIPT_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = reader.join().unwrap_or_default();
    let errors = errors.join().unwrap_or_default();
    let report = format!("{}\n{output}\nstderr:\n{errors}", script.display());
    match status {
        Some(status) if status.success() => report,
        Some(status) => panic!("the browser script failed ({status}):\n{report}"),
        None => panic!(
            "the browser script ran past {} s and was stopped:\n{report}",
            SCRIPT_LIMIT.as_secs()
        ),
    }
}

#[test]
fn the_thread_view_in_a_browser() {
    check_prerequisites();
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(browser_dir())
        .expect("the browser tests' folder")
        .map(|entry| entry.expect("a folder entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    scripts.sort();
    assert!(!scripts.is_empty(), "no browser scripts found");
    for script in scripts {
        // A server per script: each starts from an empty store.
        let server = BrowserServer::start();
        let report = run_script(&server, &script);
        println!("{report}");
    }
}

#[test]
fn the_page_needs_no_token_and_the_api_still_does() {
    let server = BrowserServer::start();
    let anonymous = server.client(None);
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
    ] {
        let reply = anonymous.json("GET", path, None).expect("request");
        assert_eq!(reply.status, 200, "{path}");
        let header = |name: &str| {
            reply
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("content-type"), Some(content_type), "{path}");
        let policy = header("content-security-policy").unwrap_or_default();
        assert!(
            policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"),
            "{path}: {policy}"
        );
        assert_eq!(header("x-frame-options"), Some("DENY"), "{path}");
        assert!(!reply.body.is_empty(), "{path}");
    }
    let page = anonymous.json("GET", "/", None).expect("request");
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains(r#"<script type="module" src="/app.js">"#));

    let refused = anonymous.json("GET", "/api/groups", None).expect("request");
    assert_eq!(refused.status, 401);
    let allowed = server
        .client(Some(&server.owner_token))
        .json("GET", "/api/groups", None)
        .expect("request");
    assert_eq!(allowed.status, 200);
    // Unknown paths still answer the API's JSON 404, and need a token first.
    let unknown = server
        .client(Some(&server.owner_token))
        .json("GET", "/index.html", None)
        .expect("request");
    assert_eq!(unknown.status, 404);
}
