//! The store's lifecycle: calls racing `close()` are all answered and none blocks.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use coven_group::{Config, Coven, Error, Familiar};
use crossbeam_channel::RecvTimeoutError;

/// Upper bound for anything a test waits on; reaching it is a failure.
const GUARD: Duration = Duration::from_secs(30);

/// Runs `call` on its own thread and returns the receiver its result arrives on, so that a call
/// that never returns fails the test at [`GUARD`] instead of hanging it.
fn spawn_call<T: Send + 'static>(
    call: impl FnOnce() -> T + Send + 'static,
) -> crossbeam_channel::Receiver<T> {
    let (answer, outcome) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let _ = answer.send(call());
    });
    outcome
}

#[track_caller]
fn returned<T>(outcome: &crossbeam_channel::Receiver<T>, what: &str) -> T {
    match outcome.recv_timeout(GUARD) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("{what} did not return within {GUARD:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

// ---- 1. calls racing close ----

/// A large adoption keeps the writer busy while sends to several groups race `close`: a turn's
/// start may be answered in the writer's last batch, its members then finish inline, behind the
/// shutdown. Every call returns, with its result or `Closed`, and the store reopens clean.
#[test]
fn send_racing_close_of_a_busy_writer_always_returns() {
    const ROUNDS: u64 = 12;
    const SENDERS: usize = 8;
    const ADOPTED_MESSAGES: usize = 2_000;
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.redb");
        let coven = Arc::new(Coven::open(&path, Config::default()).unwrap());
        let mut familiar = Familiar::new("ada", "Ada", "scripted");
        familiar.model = Some("words:20".into());
        coven.register_familiar(familiar).unwrap();
        let groups: Vec<String> = (0..SENDERS)
            .map(|_| coven.create_group(None, ids(&["ada"]), None).unwrap().id)
            .collect();
        let adopt = |n: u64| {
            let coven = coven.clone();
            let session = fresh_session_id(u128::from(2 * round + n));
            let history: Vec<_> = (0..ADOPTED_MESSAGES)
                .map(|i| user(&format!("m{i}"), at(i as u64)))
                .collect();
            spawn_call(move || coven.adopt_group(None, vec![adopted("ada", &session, history)]))
        };
        // The first keeps the writer busy; the second, queued behind the send, makes the batch
        // that answers the turn's start publish many changes before the writer can stop.
        let adopting = adopt(0);
        let sending: Vec<_> = groups
            .iter()
            .map(|group| {
                let (coven, group) = (coven.clone(), group.clone());
                spawn_call(move || {
                    let turn = coven.send(&group, "hello".into(), None)?;
                    // Started: it ends by itself, or is cancelled by the close.
                    coven
                        .wait_turn(&turn.turn_id, GUARD)
                        .or_else(|err| match err {
                            Error::Closed => Ok(true),
                            other => Err(other),
                        })
                })
            })
            .collect();
        let adopting_after = adopt(1);
        let closing = {
            let coven = coven.clone();
            spawn_call(move || coven.close())
        };
        returned(&closing, "close()");
        for sending in &sending {
            match returned(sending, "send() racing close()") {
                Ok(_) => *outcomes.entry("turn started").or_default() += 1,
                Err(Error::Closed) => *outcomes.entry("send refused").or_default() += 1,
                Err(other) => panic!("round {round}: send racing close answered {other:?}"),
            }
        }
        for adopting in [adopting, adopting_after] {
            match returned(&adopting, "adopt_group() racing close()") {
                Ok(_) | Err(Error::Closed) => {}
                Err(other) => panic!("round {round}: adopt_group racing close answered {other:?}"),
            }
        }
        drop(coven);
        let reopened = Coven::open(&path, Config::default()).unwrap();
        assert_clean_and_idle(&reopened);
        reopened.close();
    }
    eprintln!("{ROUNDS} rounds: {outcomes:?}");
}
