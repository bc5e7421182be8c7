//! The `coven-group` CLI against a running server on its Unix socket: every client command, in
//! human and `--json` output.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Options, TestServer};
use serde_json::Value;

fn cli(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_coven-group"))
        .arg("--socket")
        .arg(server.socket.as_ref().unwrap())
        .args(args)
        .output()
        .expect("run coven-group");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn ok(server: &TestServer, args: &[&str]) -> String {
    let (success, stdout, stderr) = cli(server, args);
    assert!(success, "coven-group {args:?} failed: {stderr}");
    stdout
}

#[test]
fn client_commands_against_a_running_server() {
    let server = TestServer::with(Options {
        unix: true,
        ..Options::default()
    });
    let familiars = ok(&server, &["familiars"]);
    assert!(
        familiars.contains("ada") && familiars.contains("scripted"),
        "{familiars}"
    );

    let created: Value = serde_json::from_str(&ok(
        &server,
        &["--json", "create", "--title", "Plans", "ada", "bo"],
    ))
    .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(ok(&server, &["groups"]).contains("Plans"));

    // Send by title: the replies stream attributed and seq-numbered, then `done`.
    let sent = ok(&server, &["send", "Plans", "Hello both", "--author", "Sam"]);
    assert!(
        sent.lines().next().unwrap().starts_with("#1    Sam"),
        "{sent}"
    );
    for familiar in ["ada", "bo"] {
        assert!(
            sent.lines()
                .any(|l| l.contains(familiar) && l.contains('✓')),
            "no finished reply from {familiar}: {sent}"
        );
    }
    assert!(sent.lines().last().unwrap().starts_with("done"), "{sent}");
    let frames: Vec<Value> = ok(&server, &["--json", "send", &id, "Again"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.first().unwrap()["kind"], "user");
    assert_eq!(frames.last().unwrap()["kind"], "done");

    let shown = ok(&server, &["show", &id]);
    assert!(
        shown.contains("#1") && shown.contains("Hello both"),
        "{shown}"
    );
    let tail: Value =
        serde_json::from_str(&ok(&server, &["--json", "show", &id, "--tail", "1"])).unwrap();
    assert_eq!(tail["events"].as_array().unwrap().len(), 1);

    assert!(ok(&server, &["rename", &id, "Plans 2"]).contains("Plans 2"));
    assert!(ok(&server, &["members", "add", &id, "cy"]).contains("cy"));
    assert!(!ok(&server, &["members", "remove", &id, "ada"]).contains("ada"));

    let share: Value = serde_json::from_str(&ok(
        &server,
        &[
            "--json", "share", "create", "--group", &id, "--label", "phone",
        ],
    ))
    .unwrap();
    assert!(share["token"].as_str().unwrap().starts_with("cgs_"));
    let share_id = share["share"]["id"].as_str().unwrap();
    assert!(ok(&server, &["share", "list"]).contains(share_id));
    ok(&server, &["share", "revoke", share_id]);
    assert!(!ok(&server, &["share", "list"]).contains(share_id));

    // Refusals reach the terminal with the server's message and a failing status.
    let (success, _, stderr) = cli(&server, &["show", "no such group"]);
    assert!(
        !success && stderr.contains("no group has the id or title"),
        "{stderr}"
    );
    let (success, _, stderr) = cli(&server, &["send", &id, ""]);
    assert!(!success && stderr.contains("invalid_request"), "{stderr}");

    ok(&server, &["delete", &id]);
    assert!(!ok(&server, &["groups"]).contains("Plans"));
}

#[test]
fn tail_follows_the_group_live() {
    let server = TestServer::with(Options {
        unix: true,
        ..Options::default()
    });
    let group = server.group();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coven-group"))
        .arg("--socket")
        .arg(server.socket.as_ref().unwrap())
        .args(["tail", &group, "--after-rev", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The watchdog ends the process after 30 s, which ends `lines` and fails the test.
    let (finished, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let _ = watch.recv_timeout(Duration::from_secs(30));
        let _ = child.kill();
        child.wait().unwrap()
    });
    server.coven.rename_group(&group, "Watched".into()).unwrap();
    let mut seen = Vec::new();
    // Each line arrives as it happens; the rename shows up while the process goes on.
    while !seen.iter().any(|l: &String| l.contains("Watched")) {
        match lines.next() {
            Some(line) => seen.push(line.unwrap()),
            None => panic!("tail ended or timed out without the rename: {seen:?}"),
        }
    }
    finished.send(()).unwrap();
    watchdog.join().unwrap();
}
