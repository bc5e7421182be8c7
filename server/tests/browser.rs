//! The web thread view in a real browser: a server on a temporary store with four familiars of
//! a paced host harness, driven by every `server/tests/browser/*.test.mjs` (headless Chromium
//! through playwright-core; `.ci/run` installs both). Also the page's own HTTP behaviour.
//!
//! The scripts steer the test over a line protocol: a line `@@coven-group-test <command>` on
//! the script's stdout is carried out, then answered with one line on its stdin (see
//! [`carry_out`]). `hold` makes the replies of turns started from then on stop halfway until
//! `release`, so a script can act mid-turn (reload, cancel) without guessing how long a turn
//! takes; `server stop` and `server start` take the server away and bring it back; `phone
//! <json>` drives a phone: a Python process with its own replica store that syncs with the
//! server over HTTP (the cross-device script).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
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
    dir: tempfile::TempDir,
    addr: SocketAddr,
    owner_token: String,
    hold: Arc<Hold>,
    running: Option<Running>,
}

/// The server while it serves: its stop signal and its thread.
struct Running {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl BrowserServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let hold = Arc::new(Hold::default());
        let (running, addr, owner_token) =
            Self::serve(dir.path(), SocketAddr::from(([127, 0, 0, 1], 0)), &hold);
        Self {
            dir,
            addr,
            owner_token,
            hold,
            running: Some(running),
        }
    }

    /// Opens the store in `dir` (registering the familiars) and serves it on `addr`.
    fn serve(dir: &Path, addr: SocketAddr, hold: &Arc<Hold>) -> (Running, SocketAddr, String) {
        let store = dir.join("coven.redb");
        let coven = Arc::new(Coven::open(&store, Config::default()).expect("open store"));
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
                let bound = Bound::bind(&Listen::Tcp(addr)).await?;
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
        (Running { stop, thread }, addr, owner_token)
    }

    /// Stops serving and closes the store, as a signal would; bounded.
    fn stop(&mut self) {
        let Some(Running { stop, thread }) = self.running.take() else {
            return;
        };
        let _ = stop.send(());
        // Bounded: the server ends its streams at once and the store's close is bounded.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }

    /// Serves the same store again, on the same address, with the same owner token.
    fn restart(&mut self) {
        self.stop();
        let (running, addr, owner_token) = Self::serve(self.dir.path(), self.addr, &self.hold);
        assert_eq!((addr, &owner_token), (self.addr, &self.owner_token));
        self.running = Some(running);
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
        self.stop();
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

/// Runs one script against `server`, carrying out its control lines (see the module doc and
/// [`carry_out`]); returns its output, or panics with it when the script fails or overruns
/// [`SCRIPT_LIMIT`].
fn run_script(server: &mut BrowserServer, script: &Path) -> String {
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
    let (commands, requested) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut output = String::new();
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            match line.strip_prefix(CONTROL_PREFIX) {
                Some(command) => {
                    if commands.send(command.to_owned()).is_err() {
                        break;
                    }
                }
                None => {
                    output.push_str(&line);
                    output.push('\n');
                }
            }
        }
        output
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let mut phone: Option<Phone> = None;
    let mut log = String::new();
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
        match requested.recv_timeout(Duration::from_millis(50)) {
            Ok(command) => {
                let answer = carry_out(server, &mut phone, &command);
                let shown: String = answer.chars().take(240).collect();
                log.push_str(&format!("control {command} -> {shown}\n"));
                // A script that ended meanwhile cannot take its answer; its status tells.
                let _ = answers
                    .write_all(format!("{answer}\n").as_bytes())
                    .and_then(|()| answers.flush());
            }
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
        }
    };
    let output = reader.join().unwrap_or_default();
    let errors = errors.join().unwrap_or_default();
    let phone_errors = phone.map(Phone::finish).unwrap_or_default();
    let report = format!(
        "{}\n{output}\ncontrol:\n{log}\nstderr:\n{errors}\nphone stderr:\n{phone_errors}",
        script.display()
    );
    match status {
        Some(status) if status.success() => report,
        Some(status) => panic!("the browser script failed ({status}):\n{report}"),
        None => panic!(
            "the browser script ran past {} s and was stopped:\n{report}",
            SCRIPT_LIMIT.as_secs()
        ),
    }
}

/// Carries out one control command of a script and returns its one-line answer:
/// - `hold`, `release`: replies started from now on stop halfway until released;
/// - `server stop`, `server start`: the server stops (its store closed, as at SIGTERM), and
///   serves the same store again on the same address;
/// - `phone <json>`: a command for the phone (`phone.py`, started on first use), answered with
///   the phone's JSON.
fn carry_out(server: &mut BrowserServer, phone: &mut Option<Phone>, command: &str) -> String {
    match command.split_once(' ').unwrap_or((command, "")) {
        ("hold", "") => server.hold.set_holding(),
        ("release", "") => server.hold.release(),
        ("server", "stop") => server.stop(),
        ("server", "start") => server.restart(),
        ("phone", request) => {
            let phone = phone.get_or_insert_with(|| Phone::start(server));
            return phone.ask(request);
        }
        _ => return format!("unknown control command {command:?}"),
    }
    "ok".to_owned()
}

/// A phone: a Python process with the Python binding and a replica store of its own, syncing
/// with the server over the library's HTTP transport (`tests/browser/phone.py`). It answers
/// each JSON line on its stdin with one JSON line.
struct Phone {
    child: std::process::Child,
    requests: std::process::ChildStdin,
    answers: mpsc::Receiver<String>,
    errors: std::thread::JoinHandle<String>,
}

impl Phone {
    fn start(server: &BrowserServer) -> Self {
        let mut child = Command::new("python3")
            .arg(browser_dir().join("phone.py"))
            .env("PYTHONPATH", python_bindings())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("COVEN_PHONE_URL", format!("http://{}", server.addr))
            .env("COVEN_PHONE_TOKEN", &server.owner_token)
            .env("COVEN_PHONE_STORE", server.dir.path().join("phone.redb"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 is required for the cross-device test (.ci/run installs it)");
        let requests = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut stderr = child.stderr.take().expect("stderr");
        let (sender, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        Self {
            child,
            requests,
            answers,
            errors,
        }
    }

    /// Sends one request and waits (bounded) for its answer line.
    fn ask(&mut self, request: &str) -> String {
        if writeln!(self.requests, "{request}")
            .and_then(|()| self.requests.flush())
            .is_err()
        {
            return r#"{"error": "the phone has exited"}"#.to_owned();
        }
        self.answers
            .recv_timeout(PHONE_LIMIT)
            .unwrap_or_else(|_| r#"{"error": "the phone did not answer"}"#.to_owned())
    }

    /// Ends the phone (its stdin closed, then killed if it lingers) and returns its stderr.
    fn finish(mut self) -> String {
        drop(self.requests);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.errors.join().unwrap_or_default()
    }
}

/// Longest one phone command may take (its own waits are shorter).
const PHONE_LIMIT: Duration = Duration::from_secs(90);

/// The Python binding, generated once per test run from the library this test links (built with
/// the `http` feature, as a dependency of these tests).
fn python_bindings() -> &'static Path {
    static GENERATED: OnceLock<PathBuf> = OnceLock::new();
    GENERATED.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("phone-bindings");
        let library = std::env::current_exe()
            .expect("the test binary")
            .with_file_name("libcoven_group.so");
        assert!(library.exists(), "{} was not built", library.display());
        let _ = std::fs::remove_dir_all(&out);
        uniffi::generate(uniffi::GenerateOptions {
            languages: vec![uniffi::TargetLanguage::Python],
            source: camino::Utf8PathBuf::from_path_buf(library.clone()).expect("a UTF-8 path"),
            out_dir: camino::Utf8PathBuf::from_path_buf(out.clone()).expect("a UTF-8 path"),
            config_override: None,
            format: false,
            crate_filter: None,
            metadata_no_deps: false,
        })
        .expect("generate the Python binding");
        std::fs::copy(&library, out.join("libcoven_group.so")).expect("copy the library");
        out
    })
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
        let mut server = BrowserServer::start();
        let report = run_script(&mut server, &script);
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
