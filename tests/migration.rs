//! Released formats open with the current code. `tests/fixtures/format1.redb` is a store made by
//! the release that writes format 1 (schema 1), with `examples/format1_fixture.rs` from that
//! release: opening it upgrades it in one write transaction, a SIGKILL during the upgrade leaves
//! the old format or the new one (never a mix), and a newer format is refused untouched.
//! `tests/fixtures/format2.redb` is the same content made by the release that writes format 2
//! (schema 2), with the same program from that release. Either upgrades to the current schema,
//! whose change log keeps one record for the deltas of each finished reply.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use coven_group::{Config, Coven, Error, EventKind, GroupEvent, ReplyErrorKind, SystemNotice};
use redb::{ReadableDatabase, TableDefinition};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Set (to the store path) only in the child that is killed while it upgrades.
const STORE_ENV: &str = "COVEN_GROUP_MIGRATION_STORE";
const CHILD_TEST: &str = "upgrade_child";
const OPENED: &str = "@@opened";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1.redb")
}

/// A copy of the fixture in a directory of its own.
fn copy_of_fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("format1.redb");
    std::fs::copy(fixture(), &path).unwrap();
    (dir, path)
}

/// The schema version of a store file, read from a copy (redb repairs what it opens).
fn schema_of(path: &Path) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.redb");
    std::fs::copy(path, &copy).unwrap();
    let db = redb::Database::open(&copy).unwrap();
    let read = db.begin_read().unwrap();
    let meta = read.open_table(META).unwrap();
    let version = meta.get("schema_version").unwrap().unwrap().value();
    version
}

fn texts(events: &[GroupEvent]) -> Vec<&str> {
    events.iter().map(|event| event.text.as_str()).collect()
}

/// What the fixture holds (see `examples/format1_fixture.rs`), as the current code shows it once
/// upgraded and recovered, and the change log replaying into the same timeline.
fn assert_fixture_content(coven: &Coven) {
    let groups = coven.list_groups().unwrap();
    let mut titles: Vec<&str> = groups.iter().map(|g| g.title.as_str()).collect();
    titles.sort();
    assert_eq!(titles, ["Adopted", "Interrupted", "Kitchen table"]);
    let familiars: Vec<String> = coven
        .list_familiars()
        .unwrap()
        .into_iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(familiars, ["ada", "bo", "cy"]);
    assert_eq!(
        coven.get_familiar("cy").unwrap().model.as_deref(),
        Some("words:40")
    );

    for group in &groups {
        let snapshot = coven.get_group(&group.id).unwrap();
        let events = &snapshot.events;
        let ids: Vec<&str> = group
            .members
            .iter()
            .map(|m| m.familiar_id.as_str())
            .collect();
        match group.title.as_str() {
            "Kitchen table" => {
                assert_eq!(ids, ["ada", "cy"]);
                assert_eq!(&texts(events)[..2], ["first note", "second note"]);
                assert_eq!(events[0].author.as_deref(), Some("Sam"));
                assert!(matches!(
                    events[2].notice,
                    Some(SystemNotice::Renamed { ref to, .. }) if to == "Kitchen table"
                ));
                assert!(matches!(
                    events[3].notice,
                    Some(SystemNotice::MemberAdded { .. })
                ));
                assert!(matches!(
                    events[4].notice,
                    Some(SystemNotice::MemberRemoved { .. })
                ));
                assert_eq!(events[5].text, "what do you think?");
                let replies = &events[6..];
                assert_eq!(replies.len(), 2);
                for reply in replies {
                    assert_eq!(reply.kind, EventKind::Familiar);
                    assert!(!reply.streaming && reply.error.is_none(), "{reply:?}");
                    assert_eq!(reply.turn_id, events[5].turn_id);
                }
                let cy = replies
                    .iter()
                    .find(|r| r.familiar_id.as_deref() == Some("cy"))
                    .unwrap();
                let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
                assert_eq!(cy.text, words.join(" "));

                let phone = coven.get_cursor(&group.id, "phone").unwrap().unwrap();
                let tablet = coven.get_cursor(&group.id, "tablet").unwrap().unwrap();
                assert!(0 < phone && phone < tablet && tablet <= snapshot.rev);
                let sessions = coven.sessions_of(&group.id).unwrap();
                assert_eq!(sessions.len(), 3);
                assert!(sessions.iter().any(|s| s.familiar_id == "bo" && s.archived));
            }
            "Adopted" => {
                assert_eq!(ids, ["ada", "bo"]);
                let mut adopted = texts(events);
                adopted.sort();
                assert_eq!(adopted, ["bo was here", "hello Sam", "hello ada"]);
            }
            "Interrupted" => {
                assert_eq!(ids, ["ada", "cy"]);
                let replies = &events[1..];
                assert_eq!(replies.len(), 2);
                for reply in replies {
                    assert!(!reply.streaming, "{reply:?}");
                    let error = reply.error.as_ref().expect("an interrupted marker");
                    assert_eq!(error.kind, ReplyErrorKind::Interrupted);
                    // Left streaming with at least two words committed.
                    assert!(reply.text.split_whitespace().count() >= 2, "{reply:?}");
                }
                let cy = replies
                    .iter()
                    .find(|r| r.familiar_id.as_deref() == Some("cy"))
                    .unwrap();
                assert!(cy.text.starts_with("w0 w1"), "{cy:?}");
            }
            other => panic!("unexpected group {other}"),
        }
        assert_log_replays_the_timeline(coven, &group.id);
    }
}

#[test]
fn a_format_1_store_upgrades_when_opened() {
    let (_dir, path) = copy_of_fixture();
    assert_eq!(schema_of(&path), 1);
    let coven = Coven::open(&path, Config::default()).unwrap();
    let recovery = coven.recovery();
    assert_eq!(
        (recovery.interrupted_replies, recovery.released_turns),
        (2, 1),
        "{recovery:?}"
    );
    assert_eq!(recovery.failed_sessions, 2, "{recovery:?}");
    assert_fixture_content(&coven);
    assert_clean_and_idle(&coven);
    coven.close();
    assert_eq!(schema_of(&path), 4, "the current schema");

    // Once upgraded, it opens as any current store: nothing to repair, the same content.
    let coven = Coven::open(&path, Config::default()).unwrap();
    assert_eq!(coven.recovery(), Default::default());
    assert_fixture_content(&coven);
    assert_clean_and_idle(&coven);
}

#[test]
fn a_format_2_store_upgrades_when_opened_and_gets_a_store_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("format2.redb");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format2.redb"),
        &path,
    )
    .unwrap();
    assert_eq!(schema_of(&path), 2);
    let coven = Coven::open(&path, Config::default()).unwrap();
    let recovery = coven.recovery();
    assert_eq!(
        (
            recovery.interrupted_replies,
            recovery.released_turns,
            recovery.failed_sessions
        ),
        (2, 1, 2),
        "{recovery:?}"
    );
    assert_fixture_content(&coven);
    assert_clean_and_idle(&coven);
    let store_id = coven.store_id();
    assert!(coven.outbox().unwrap().is_empty());
    coven.close();
    assert_eq!(schema_of(&path), 4, "the current schema");
    let coven = Coven::open(&path, Config::default()).unwrap();
    assert_eq!(coven.store_id(), store_id, "the store id is made once");
    assert_fixture_content(&coven);
}

#[test]
fn a_newer_format_is_refused_and_left_untouched() {
    let (_dir, path) = copy_of_fixture();
    claim_newer_schema(&path);
    let before = std::fs::read(&path).unwrap();
    match Coven::open(&path, Config::default()) {
        Err(Error::Storage { reason }) => assert!(
            reason.contains("schema version 1000 is newer than this release supports")
                && reason.contains("upgrade coven-group"),
            "{reason}"
        ),
        Err(other) => panic!("refused with {other:?}"),
        Ok(_) => panic!("a newer format was opened"),
    }
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the refused file changed"
    );
}

/// The child: opens (and so upgrades) the store, reports it, then waits to be killed.
#[test]
fn upgrade_child() {
    let Ok(path) = std::env::var(STORE_ENV) else {
        return;
    };
    let coven = Coven::open(&path, Config::default()).expect("the child opens the store");
    report_line(OPENED, "");
    std::thread::sleep(Duration::from_secs(60));
    drop(coven);
}

/// Starts the child on `path` and SIGKILLs it `after` its start (or once it has opened, if that
/// comes first and `after` is `None`). Returns whether it reported the open done.
fn kill_child(path: &Path, after: Option<Duration>) -> bool {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(STORE_ENV, path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = reported_lines(child.stdout.take().unwrap(), OPENED);
    let opened = match after {
        Some(after) => {
            let opened = lines.recv_timeout(after).is_ok();
            child.kill().unwrap();
            opened
        }
        None => {
            let opened = lines.recv_timeout(Duration::from_secs(60)).is_ok();
            child.kill().unwrap();
            opened
        }
    };
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    opened
}

#[test]
fn sigkill_during_the_upgrade_leaves_the_old_format_or_the_new() {
    // How long a child takes to open the fixture, upgrade included; kills are spread over it.
    let (_dir, timing) = copy_of_fixture();
    let started = Instant::now();
    assert!(
        kill_child(&timing, None),
        "the child never opened the store"
    );
    let open_time = started.elapsed();

    let mut rng = Rng::seeded("COVEN_GROUP_MIGRATION_SEED");
    let (mut untouched, mut identical, mut upgraded) = (0, 0, 0);
    let original = std::fs::read(fixture()).unwrap();
    for iteration in 0..16u64 {
        let (_dir, path) = copy_of_fixture();
        let after = Duration::from_micros(rng.between(0, open_time.as_micros() as u64 * 3 / 2));
        kill_child(&path, Some(after));
        let bytes = std::fs::read(&path).unwrap();
        match schema_of(&path) {
            // The old commit is still the file's (redb's commit protocol); the upgrade's writes
            // are held until the open succeeded, so mostly not one byte has changed.
            1 => {
                untouched += 1;
                identical += usize::from(bytes == original);
            }
            4 => upgraded += 1,
            other => panic!("iteration {iteration}: schema {other}"),
        }
        // Either way the store opens, upgraded, with all of its content.
        let coven = Coven::open(&path, Config::default())
            .unwrap_or_else(|err| panic!("iteration {iteration}: reopen: {err}"));
        assert_fixture_content(&coven);
        assert_clean_and_idle(&coven);
    }
    println!(
        "kills during the upgrade: {untouched} left format 1 ({identical} byte for byte), \
         {upgraded} left format 2"
    );
}
