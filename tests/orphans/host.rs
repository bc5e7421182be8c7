//! A host that dies with live agents, shared by `tests/orphans.rs` and `tests/crash.rs`. The test
//! binary starts itself again as the host: it runs one turn to a `claude`, a `codex` and a
//! `command` member whose programs ignore SIGHUP and each keep a helper child in their process
//! group, reports once all three are running, and is SIGKILLed by the test.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use coven_group::{Config, Coven, Familiar};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::common::{self, reported_lines, GUARD};

/// Set (to the store path) only in the host process.
const STORE_ENV: &str = "COVEN_GROUP_ORPHAN_STORE";
/// The group's project root, where the `command` member writes its pid file.
const ROOT_ENV: &str = "COVEN_GROUP_ORPHAN_ROOT";
/// Prefix of the lines the host reports on; the test harness prints other lines too.
const REPORT: &str = "@@";
/// The members of the host's turn: a fake `claude`, a fake `codex` and `stubborn` in a PTY.
pub const MEMBERS: [&str; 3] = ["cl", "cx", "pt"];

/// The store's table of recorded runs, as the library lays it out: run marker → (process group,
/// boot id).
pub const PROCESS_RUNS: TableDefinition<u128, (i32, &str)> = TableDefinition::new("process_runs");

/// The PTY program of the `command` member.
pub fn stubborn() -> String {
    common::fake_bin()
        .join("stubborn")
        .to_string_lossy()
        .into_owned()
}

/// The host's body. A no-op unless the test started this process as the host.
pub fn host_main() {
    let Ok(path) = std::env::var(STORE_ENV) else {
        return;
    };
    let root = std::env::var(ROOT_ENV).expect("project root");
    let config = Config {
        allowed_programs: vec![stubborn()],
        ..Config::default()
    };
    let coven = Coven::open(&path, config).expect("the host opens the store");
    coven
        .register_familiar(Familiar::new("cl", "Claude", "claude"))
        .unwrap();
    coven
        .register_familiar(Familiar::new("cx", "Codex", "codex"))
        .unwrap();
    let mut pty = Familiar::new("pt", "Stubborn", "command");
    pty.argv = vec![
        stubborn(),
        Path::new(&root)
            .join("stubborn.pids")
            .to_string_lossy()
            .into_owned(),
    ];
    coven.register_familiar(pty).unwrap();
    let group = coven
        .create_group(None, common::ids(&MEMBERS), Some(root))
        .unwrap();
    coven
        .send(&group.id, "SCENARIO:orphan".into(), None)
        .unwrap();
    common::wait_until(&coven, &group.id, "every agent running", |snapshot| {
        MEMBERS.iter().all(|member| {
            snapshot.events.iter().any(|event| {
                event.familiar_id.as_deref() == Some(member) && event.text.contains("waiting")
            })
        })
    });
    println!("{REPORT}running");
    // The test kills this process now; the bound only ends a host whose test is gone.
    std::thread::sleep(Duration::from_secs(60));
    std::process::exit(1);
}

/// One process a run started (the agent) and the helper it started in its process group.
#[derive(Debug, Clone)]
pub struct Agent {
    pub familiar: &'static str,
    pub pid: i32,
    pub pgid: i32,
    pub helper: i32,
    /// The run marker (`COVEN_RUN`) the agent was started with.
    pub marker: String,
}

/// What a crashed host left: its store and its agents. Dropping it kills whatever of them a
/// failed test left running.
pub struct Crashed {
    pub store: PathBuf,
    pub agents: Vec<Agent>,
}

impl Crashed {
    pub fn markers(&self) -> Vec<String> {
        self.agents
            .iter()
            .map(|agent| agent.marker.clone())
            .collect()
    }

    pub fn helpers(&self) -> Vec<i32> {
        self.agents.iter().map(|agent| agent.helper).collect()
    }

    pub fn agent_pids(&self) -> Vec<i32> {
        self.agents.iter().map(|agent| agent.pid).collect()
    }
}

impl Drop for Crashed {
    fn drop(&mut self) {
        for pid in self
            .agents
            .iter()
            .flat_map(|agent| [agent.pid, agent.helper])
        {
            if !common::process_gone(pid) {
                // SAFETY: plain syscall on a pid this test's host started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Kills the host if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the host (the test named `host_test` of this binary, which calls [`host_main`]) on a
/// store in `dir` until its three agents run, SIGKILLs it, and returns what it left.
pub fn crash_host(host_test: &str, dir: &Path) -> Crashed {
    common::init_path();
    let store = dir.join("coven.redb");
    let root = dir.join("project");
    std::fs::create_dir_all(&root).unwrap();
    let log = dir.join("fake.jsonl");
    let host = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", host_test, "--nocapture", "--test-threads=1"])
        .env(STORE_ENV, &store)
        .env(ROOT_ENV, &root)
        .env("COVEN_FAKE_LOG", &log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the host");
    let mut host = KillOnDrop(host);
    let stdout = host.0.stdout.take().unwrap();
    let lines = reported_lines(stdout, REPORT);
    let report: String = lines
        .recv_timeout(GUARD)
        .unwrap_or_else(|_| panic!("the host did not report its agents running within {GUARD:?}"));
    assert_eq!(report, "running");
    // SIGKILL: no destructor runs, nothing is cancelled, the store is not closed.
    host.0.kill().expect("SIGKILL the host");
    let status = host.0.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");

    let mut agents = Vec::new();
    let log = std::fs::read_to_string(&log).expect("the fakes' log");
    for line in log.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        let number = |key: &str| entry[key].as_i64().unwrap() as i32;
        let familiar = if entry["argv"][0].as_str().unwrap().ends_with("claude") {
            "cl"
        } else {
            "cx"
        };
        agents.push(Agent {
            familiar,
            pid: number("pid"),
            pgid: number("pgid"),
            helper: number("helper_pid"),
            marker: entry["run_marker"].as_str().unwrap_or("-").to_owned(),
        });
    }
    let pids = std::fs::read_to_string(root.join("stubborn.pids")).expect("stubborn's pid file");
    let fields: Vec<&str> = pids.split_whitespace().collect();
    agents.push(Agent {
        familiar: "pt",
        pid: fields[0].parse().unwrap(),
        pgid: fields[1].parse().unwrap(),
        helper: fields[2].parse().unwrap(),
        marker: fields[3].to_owned(),
    });
    let mut familiars: Vec<&str> = agents.iter().map(|agent| agent.familiar).collect();
    familiars.sort_unstable();
    assert_eq!(familiars, MEMBERS, "one run per member: {agents:?}");
    Crashed { store, agents }
}

/// Live processes whose environment carries one of the markers (`COVEN_RUN=<marker>`).
pub fn marked_processes(markers: &[String]) -> Vec<i32> {
    let wanted: Vec<Vec<u8>> = markers
        .iter()
        .map(|marker| format!("COVEN_RUN={marker}").into_bytes())
        .collect();
    common::processes()
        .into_iter()
        .filter(|process| !matches!(process.state.as_str(), "Z" | "X"))
        .filter(|process| {
            std::fs::read(format!("/proc/{}/environ", process.pid)).is_ok_and(|environ| {
                environ
                    .split(|byte| *byte == 0)
                    .any(|entry| wanted.iter().any(|w| entry == w.as_slice()))
            })
        })
        .map(|process| process.pid)
        .collect()
}

/// The store's recorded runs (marker, process group, boot id), read from the closed file.
pub fn recorded_runs(store: &Path) -> Vec<(String, i32, String)> {
    let db = redb::Database::open(store).expect("open the store file");
    let read = db.begin_read().unwrap();
    let table = match read.open_table(PROCESS_RUNS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Vec::new(),
        Err(err) => panic!("process_runs: {err}"),
    };
    let mut runs = Vec::new();
    for entry in table.iter().unwrap() {
        let (marker, value) = entry.unwrap();
        let (pgid, boot) = value.value();
        runs.push((
            uuid::Uuid::from_u128(marker.value()).to_string(),
            pgid,
            boot.to_owned(),
        ));
    }
    runs.sort();
    runs
}

/// This boot's id, as the library records it.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

/// Waits (bounded) until none of the pids is alive and no process carries one of the markers.
pub fn assert_all_gone(pids: &[i32], markers: &[String]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|pid| !common::process_gone(*pid))
            .collect();
        let marked = marked_processes(markers);
        if alive.is_empty() && marked.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processes of the killed host survive: pids {alive:?}, carrying its markers {marked:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
