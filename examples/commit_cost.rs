//! The workload `scripts/callgrind-commit.sh` measures under callgrind: durable user messages
//! appended to one group of a file store, either one caller after another (every commit holds
//! one event) or from many callers at once (the writer's group commit folds many events into one
//! commit). It uses only `Coven::open`, `register_familiar` (`Familiar::new`), `create_group`,
//! `append_user_message`, `close` and `Config`, so the same file builds against older revisions
//! of the library for comparison.
//!
//! ```sh
//! cargo run --release --example commit_cost -- <baseline|sequential|concurrent> <events> <dir>
//! ```
//!
//! `baseline` opens the store, creates the group and closes it without appending; the script
//! subtracts its cost from the other two.

use std::sync::Arc;

use coven_group::{Config, Coven, Familiar};

/// Callers appending at once in the `concurrent` workload.
const CALLERS: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: commit_cost <baseline|sequential|concurrent> <events> <dir>";
    let (Some(mode), Some(events), Some(dir)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let events: usize = events.parse().expect("events must be a number");
    let path = std::path::Path::new(dir).join(format!("commit_cost-{mode}.redb"));
    let _ = std::fs::remove_file(&path);
    let coven = Arc::new(Coven::open(&path, Config::default()).expect("open"));
    // A group needs a member; it never runs, only user messages are appended.
    coven
        .register_familiar(Familiar::new("ada", "Ada", "scripted"))
        .expect("register a familiar");
    let group = coven
        .create_group(Some("cost".into()), vec!["ada".into()], None)
        .expect("create group")
        .id;
    let text = "a message of some forty bytes of text..".to_string();
    match mode.as_str() {
        "baseline" => {}
        "sequential" => {
            for _ in 0..events {
                coven
                    .append_user_message(&group, text.clone(), None)
                    .expect("append");
            }
        }
        "concurrent" => {
            let callers: Vec<_> = (0..CALLERS)
                .map(|caller| {
                    let coven = coven.clone();
                    let group = group.clone();
                    let text = text.clone();
                    let share = events / CALLERS + usize::from(caller < events % CALLERS);
                    std::thread::spawn(move || {
                        for _ in 0..share {
                            coven
                                .append_user_message(&group, text.clone(), None)
                                .expect("append");
                        }
                    })
                })
                .collect();
            for caller in callers {
                caller.join().expect("caller");
            }
        }
        other => {
            eprintln!("unknown workload {other}; {usage}");
            std::process::exit(2);
        }
    }
    coven.close();
    let _ = std::fs::remove_file(&path);
}
