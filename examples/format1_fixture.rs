//! Builds the format-1 fixture store, `tests/fixtures/format1.redb`, with the code of the release
//! that writes format 1 (schema 1). The migration tests open that file with the current code.
//!
//! `cargo run --example format1_fixture -- tests/fixtures/format1.redb` (from a checkout of the
//! commit that added this program) writes a new fixture; ids and times differ at each run, the
//! content does not:
//!
//! - familiars `ada`, `bo`, `cy` (scripted; `cy` answers with `words:40`);
//! - group "Round table": created with ada and bo, two user messages, renamed to "Kitchen
//!   table", cy added, bo removed (its session archived), one finished turn (ada and cy replied),
//!   cursor `phone` at the rev after the rename and `tablet` at the head;
//! - group "Adopted": adopted from two existing sessions (ada, bo) with three history messages;
//! - group "Interrupted": ada and cy; a turn whose replies were streaming when the process
//!   hosting it was killed with SIGKILL (so the store holds replies still streaming, their
//!   chunks, running sessions and the turn lock, as a crash leaves them).
//!
//! The streaming part runs in a child process (this program again, with `FIXTURE_CHILD` set) that
//! kills itself with SIGKILL once the store shows both replies streaming with more than one
//! committed delta.

use std::error::Error;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use coven_group::{AdoptedMember, Config, Coven, Familiar, HistoryMessage, HistoryRole};

const CHILD_ENV: &str = "FIXTURE_CHILD_GROUP";

fn main() -> Result<(), Box<dyn Error>> {
    let path: PathBuf = std::env::args()
        .nth(1)
        .ok_or("usage: format1_fixture <store path>")?
        .into();
    if let Ok(group) = std::env::var(CHILD_ENV) {
        return stream_then_die(&path, &group);
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err.into()),
    }
    let interrupted = build(&path)?;
    let status = Command::new(std::env::current_exe()?)
        .arg(&path)
        .env(CHILD_ENV, &interrupted)
        .status()?;
    if status.signal() != Some(libc::SIGKILL) {
        return Err(format!("the streaming child ended with {status}, not SIGKILL").into());
    }
    let len = std::fs::metadata(&path)?.len();
    println!("wrote {} ({len} bytes)", path.display());
    Ok(())
}

/// Everything but the interrupted turn; returns the id of the group that turn runs in.
fn build(path: &Path) -> Result<String, Box<dyn Error>> {
    let coven = Coven::open(path, Config::default())?;
    coven.register_familiar(Familiar::new("ada", "Ada", "scripted"))?;
    coven.register_familiar(Familiar::new("bo", "Bo", "scripted"))?;
    coven.register_familiar(Familiar {
        model: Some("words:40".into()),
        ..Familiar::new("cy", "Cy", "scripted")
    })?;

    let table = coven.create_group(
        Some("Round table".into()),
        vec!["ada".into(), "bo".into()],
        None,
    )?;
    coven.append_user_message(&table.id, "first note".into(), Some("Sam".into()))?;
    coven.append_user_message(&table.id, "second note".into(), None)?;
    coven.rename_group(&table.id, "Kitchen table".into())?;
    let after_rename = coven.get_group(&table.id)?.rev;
    coven.set_cursor(&table.id, "phone", after_rename)?;
    coven.add_member(&table.id, "cy")?;
    coven.remove_member(&table.id, "bo")?;
    let turn = coven.send(&table.id, "what do you think?".into(), Some("Sam".into()))?;
    if !coven.wait_turn(&turn.turn_id, Duration::from_secs(30))? {
        return Err("the finished turn did not finish".into());
    }
    let head = coven.get_group(&table.id)?.rev;
    coven.set_cursor(&table.id, "tablet", head)?;

    let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs);
    coven.adopt_group(
        Some("Adopted".into()),
        vec![
            AdoptedMember {
                familiar_id: "ada".into(),
                session_id: uuid::Uuid::now_v7().to_string(),
                history: vec![
                    HistoryMessage {
                        role: HistoryRole::User,
                        text: "hello ada".into(),
                        timestamp: at(1),
                        author: Some("Sam".into()),
                    },
                    HistoryMessage {
                        role: HistoryRole::Familiar,
                        text: "hello Sam".into(),
                        timestamp: at(2),
                        author: None,
                    },
                ],
            },
            AdoptedMember {
                familiar_id: "bo".into(),
                session_id: uuid::Uuid::now_v7().to_string(),
                history: vec![HistoryMessage {
                    role: HistoryRole::Familiar,
                    text: "bo was here".into(),
                    timestamp: at(3),
                    author: None,
                }],
            },
        ],
    )?;

    let interrupted = coven.create_group(
        Some("Interrupted".into()),
        vec!["ada".into(), "cy".into()],
        None,
    )?;
    coven.close();
    Ok(interrupted.id)
}

/// Starts a slow turn and kills this process once both replies have streamed past their first
/// output.
fn stream_then_die(path: &Path, group: &str) -> Result<(), Box<dyn Error>> {
    let config = Config {
        scripted_delay_ms: 150,
        ..Config::default()
    };
    let coven = Coven::open(path, config)?;
    coven.send(group, "tell me a long story".into(), None)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let snapshot = coven.get_group(group)?;
        let streaming: Vec<_> = snapshot
            .events
            .iter()
            .filter(|event| event.streaming && event.text.split(' ').count() >= 3)
            .collect();
        if streaming.len() == 2 {
            // SAFETY: plain syscall on this process; nothing after it runs.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("the replies did not stream in time".into())
}
