//! No agent outlives its host. When the host process dies (SIGKILL here), every harness process
//! it started dies with it (Linux's parent-death signal), and the helpers those processes started
//! in their process groups are stopped by the next open, which finds each run's process group
//! recorded in the store. Only processes that prove to be the run's are killed: alive, started
//! in this boot, carrying the run's marker (`COVEN_RUN`) and in the recorded process group. A
//! record whose process group now belongs to another process never gets it killed.

mod common;
#[path = "orphans/host.rs"]
mod host;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{process_gone, GUARD};
use coven_group::{Config, Coven, EventKind, ReplyErrorKind};
use host::{
    assert_all_gone, boot_id, crash_host, marked_processes, recorded_runs, Crashed, MEMBERS,
    PROCESS_RUNS,
};

const HOST_TEST: &str = "orphan_host";

/// The host process of these tests; a no-op in a normal run.
#[test]
fn orphan_host() {
    host::host_main();
}

/// Waits (bounded) until every pid is gone; false at the bound.
fn wait_gone(pids: &[i32], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if pids.iter().all(|pid| process_gone(*pid)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn agents_die_with_their_host_and_the_next_open_stops_their_helpers() {
    let dir = tempfile::tempdir().unwrap();
    let crashed: Crashed = crash_host(HOST_TEST, dir.path());

    // The agents themselves die with the host, before anything opens the store again.
    assert!(
        wait_gone(&crashed.agent_pids(), GUARD),
        "agents still running after their host died: {:?}",
        crashed
            .agents
            .iter()
            .filter(|agent| !process_gone(agent.pid))
            .collect::<Vec<_>>()
    );
    // Their helpers are not the host's children and get no death signal: they are still there,
    // in their runs' process groups, carrying their runs' markers.
    let helpers = crashed.helpers();
    assert!(
        helpers.iter().all(|pid| !process_gone(*pid)),
        "a helper died with its host, so this test shows nothing about the next open: {:?}",
        crashed.agents
    );
    let mut alive = marked_processes(&crashed.markers());
    alive.sort_unstable();
    let mut expected = helpers.clone();
    expected.sort_unstable();
    assert_eq!(alive, expected, "the processes carrying the runs' markers");

    // Each run's process group was recorded durably while it ran.
    let mut recorded = recorded_runs(&crashed.store);
    let mut runs: Vec<(String, i32, String)> = crashed
        .agents
        .iter()
        .map(|agent| (agent.marker.clone(), agent.pgid, boot_id()))
        .collect();
    runs.sort();
    recorded.sort();
    assert_eq!(
        recorded, runs,
        "the recorded runs: (marker, process group, boot id)"
    );
    for agent in &crashed.agents {
        assert_eq!(
            agent.pid, agent.pgid,
            "{} leads its own process group",
            agent.familiar
        );
    }

    // The next open stops every helper before it returns, and says so.
    let coven = Coven::open(&crashed.store, Config::default()).expect("reopen after the crash");
    let recovery = coven.recovery();
    assert_eq!(
        recovery.stopped_processes,
        helpers.len() as u64,
        "{recovery:?}"
    );
    assert_eq!(
        recovery.interrupted_replies,
        MEMBERS.len() as u64,
        "{recovery:?}"
    );
    let survivors: Vec<i32> = helpers
        .iter()
        .copied()
        .filter(|pid| !process_gone(*pid))
        .collect();
    assert!(
        survivors.is_empty(),
        "helpers alive after the open: {survivors:?}"
    );
    assert_all_gone(&helpers, &crashed.markers());

    // The replies the crash cut off are interrupted, their text kept.
    let group = &coven.list_groups().unwrap()[0];
    let snapshot = coven.get_group(&group.id).unwrap();
    for member in MEMBERS {
        let reply = snapshot
            .events
            .iter()
            .find(|event| {
                event.kind == EventKind::Familiar && event.familiar_id.as_deref() == Some(member)
            })
            .unwrap_or_else(|| panic!("{member}'s reply: {:#?}", snapshot.events));
        assert_eq!(reply.text.trim(), "waiting", "{member}");
        assert_eq!(
            reply.error.as_ref().map(|error| error.kind),
            Some(ReplyErrorKind::Interrupted),
            "{member}"
        );
    }

    // The records are gone with what they described: the next open has nothing to stop.
    coven.close();
    drop(coven);
    assert_eq!(recorded_runs(&crashed.store), Vec::new());
    let coven = Coven::open(&crashed.store, Config::default()).unwrap();
    assert_eq!(coven.recovery().stopped_processes, 0);
}

/// `sleep 600` in a process group of its own, with `COVEN_RUN` set to `marker` (or unset).
fn start_stranger(marker: Option<&str>) -> KillOnDrop {
    let mut command = Command::new("sleep");
    command
        .arg("600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("COVEN_RUN");
    if let Some(marker) = marker {
        command.env("COVEN_RUN", marker);
    }
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    KillOnDrop(command.spawn().expect("start sleep"))
}

struct KillOnDrop(Child);

impl KillOnDrop {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// True once the process has exited (it is this test's child, so it is reaped here).
    fn exited(&mut self) -> bool {
        self.0.try_wait().unwrap().is_some()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes records straight into a closed store's `process_runs` table.
fn insert_records(store: &std::path::Path, records: &[(u128, i32, &str)]) {
    let db = redb::Database::open(store).unwrap();
    let write = db.begin_write().unwrap();
    {
        let mut table = write.open_table(PROCESS_RUNS).unwrap();
        for (marker, pgid, boot) in records {
            table.insert(*marker, (*pgid, *boot)).unwrap();
        }
    }
    write.commit().unwrap();
}

#[test]
fn a_recorded_process_group_is_killed_only_when_its_process_carries_the_run_marker() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("coven.redb");
    Coven::open(&store, Config::default()).unwrap().close();
    let boot = boot_id();
    let marker = |n: u128| uuid::Uuid::now_v7().as_u128() ^ n;
    let (unmarked_run, other_run, previous_boot_run, ours) =
        (marker(1), marker(2), marker(3), marker(4));
    let as_text = |id: u128| uuid::Uuid::from_u128(id).to_string();

    // The recorded process group now belongs to a process without any marker: a reused pid.
    let mut unmarked = start_stranger(None);
    // ... to a process of another run (its marker is not this record's).
    let mut other = start_stranger(Some(&as_text(marker(5))));
    // ... to a process carrying the run's marker, but the record is of another boot.
    let mut previous_boot = start_stranger(Some(&as_text(previous_boot_run)));
    // And one the record describes exactly, which must be stopped (so the three above are
    // spared by the checks, not by a record the library cannot read).
    let mut leftover = start_stranger(Some(&as_text(ours)));
    insert_records(
        &store,
        &[
            (unmarked_run, unmarked.pid(), &boot),
            (other_run, other.pid(), &boot),
            (
                previous_boot_run,
                previous_boot.pid(),
                "a-boot-that-is-over",
            ),
            (ours, leftover.pid(), &boot),
        ],
    );

    let coven = Coven::open(&store, Config::default()).unwrap();
    assert_eq!(
        coven.recovery().stopped_processes,
        1,
        "{:?}",
        coven.recovery()
    );
    coven.close();
    drop(coven);
    assert!(
        leftover.exited(),
        "the run's own leftover process was not stopped"
    );
    for (what, stranger) in [
        ("without a marker", &mut unmarked),
        ("of another run", &mut other),
        ("recorded in another boot", &mut previous_boot),
    ] {
        assert!(!stranger.exited(), "the process {what} was killed");
    }
    // Every record is forgotten, spared or not: the next open signals nothing.
    assert_eq!(recorded_runs(&store), Vec::new());
    let coven = Coven::open(&store, Config::default()).unwrap();
    assert_eq!(coven.recovery().stopped_processes, 0);
    for stranger in [&mut unmarked, &mut other, &mut previous_boot] {
        assert!(!stranger.exited());
    }
}

#[test]
fn a_run_that_ends_leaves_no_record() {
    common::init_path();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("coven.redb");
    let root = dir.path().join("project");
    std::fs::create_dir_all(&root).unwrap();
    let paint = common::paint();
    let config = Config {
        allowed_programs: vec![paint.clone()],
        ..Config::default()
    };
    let coven = Coven::open(&store, config).unwrap();
    coven
        .register_familiar(common::familiar("cl", "Claude", "claude"))
        .unwrap();
    coven
        .register_familiar(common::familiar("cx", "Codex", "codex"))
        .unwrap();
    let mut pty = common::familiar("pt", "Paint", "command");
    pty.argv = vec![paint, "colors".into()];
    coven.register_familiar(pty).unwrap();
    let group = coven
        .create_group(
            None,
            common::ids(&MEMBERS),
            Some(root.to_string_lossy().into_owned()),
        )
        .unwrap();
    let turn = coven.send(&group.id, "hello".into(), None).unwrap();
    common::finish_turn(&coven, &turn.turn_id);
    let snapshot = coven.get_group(&group.id).unwrap();
    for member in MEMBERS {
        let reply = common::reply_of(&snapshot, &turn.turn_id, member);
        assert_eq!(reply.error, None, "{member}: {reply:?}");
    }
    coven.close();
    drop(coven);
    assert_eq!(recorded_runs(&store), Vec::new());
}
