//! The README demo: three familiars answer one prompt live, each line attributed and
//! seq-numbered as it streams, then the canonical timeline is printed.
//!
//! `cargo run --example group_chat` uses the in-process `scripted` harness (no CLI needed).
//! `cargo run --example group_chat -- --harness claude` (or `codex`) uses the real CLI.
//! `RUST_LOG=coven_group=debug cargo run --example group_chat` also prints the library's logs
//! (turns, member runs, writer batches) to stderr; without `RUST_LOG` nothing more is printed.

use std::collections::HashMap;
use std::error::Error;
use std::time::Duration;

use coven_group::{Config, Coven, EventKind, Familiar, GroupEvent, GroupUpdate};
use tracing_subscriber::EnvFilter;

const FAMILIARS: [(&str, &str); 3] = [
    ("morgana", "Morgana"),
    ("merlin", "Merlin"),
    ("nimue", "Nimue"),
];

fn main() -> Result<(), Box<dyn Error>> {
    // The library only emits; a host chooses where its logs go. Here: stderr, filtered by
    // RUST_LOG (unset, the filter lets only errors through, and the library logs none).
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let harness = harness_from_args()?;
    if harness != "scripted" && !on_path(&harness) {
        eprintln!("`{harness}` is not installed (not found on PATH).");
        match harness.as_str() {
            "claude" => eprintln!("Install Claude Code: npm install -g @anthropic-ai/claude-code, then run `claude` once to sign in."),
            _ => eprintln!("Install Codex: npm install -g @openai/codex, then run `codex login`."),
        }
        eprintln!("Without it, run the demo with the built-in scripted familiars: cargo run --example group_chat");
        std::process::exit(2);
    }

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("coven.redb");
    let config = Config {
        scripted_delay_ms: 30,
        silence_timeout_ms: 120_000,
        ..Config::default()
    };
    let coven = Coven::open(&path, config)?;
    for (id, name) in FAMILIARS {
        coven.register_familiar(Familiar::new(id, name, harness.as_str()))?;
    }
    let names: HashMap<String, String> = FAMILIARS
        .iter()
        .map(|(id, name)| (id.to_string(), name.to_string()))
        .collect();
    let project_root = std::env::current_dir()?.to_string_lossy().into_owned();
    let group = coven.create_group(
        Some("Round table".into()),
        FAMILIARS.iter().map(|(id, _)| id.to_string()).collect(),
        Some(project_root),
    )?;
    println!(
        "group \"{}\" ({}) with {harness} familiars, stored at {}\n",
        group.title,
        group.id,
        path.display()
    );

    let mut rev = coven.get_group(&group.id)?.rev;
    for prompt in ["Who keeps the grail tonight?", "And who guards the gate?"] {
        let turn = coven.send(&group.id, prompt.into(), Some("Arthur".into()))?;
        loop {
            let changes =
                coven.wait_for_changes(&group.id, rev, 1000, Duration::from_millis(200))?;
            for change in &changes {
                rev = change.rev;
                print_live(&change.update, &names);
            }
            if changes.is_empty() && coven.wait_turn(&turn.turn_id, Duration::ZERO)? {
                break;
            }
        }
        println!();
    }

    let snapshot = coven.get_group(&group.id)?;
    println!("canonical timeline (rev {}):", snapshot.rev);
    for event in &snapshot.events {
        println!("{}", render(event, &names));
    }
    coven.close();
    Ok(())
}

fn harness_from_args() -> Result<String, Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok("scripted".into()),
        [flag, kind]
            if flag == "--harness" && ["scripted", "claude", "codex"].contains(&kind.as_str()) =>
        {
            Ok(kind.clone())
        }
        _ => Err("usage: group_chat [--harness scripted|claude|codex]".into()),
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

fn name<'a>(names: &'a HashMap<String, String>, familiar: Option<&'a String>) -> &'a str {
    familiar
        .map(|id| names.get(id).map(String::as_str).unwrap_or(id))
        .unwrap_or("?")
}

fn print_live(update: &GroupUpdate, names: &HashMap<String, String>) {
    match update {
        GroupUpdate::EventAppended { event } if event.kind == EventKind::Familiar => {
            let who = name(names, event.familiar_id.as_ref());
            println!("#{:<3} {who:<8} ▸ {}", event.seq, event.text);
        }
        GroupUpdate::EventAppended { event } => println!("{}", render(event, names)),
        GroupUpdate::ReplyDelta {
            seq,
            familiar_id,
            text,
        } => {
            println!("#{seq:<3} {:<8} ▸ {text}", name(names, Some(familiar_id)));
        }
        GroupUpdate::ReplyFinished { event } => {
            let who = name(names, event.familiar_id.as_ref());
            match &event.error {
                Some(error) => println!(
                    "#{:<3} {who:<8} ✗ {:?}: {}",
                    event.seq, error.kind, error.message
                ),
                None => println!(
                    "#{:<3} {who:<8} ✓ done ({} chars)",
                    event.seq,
                    event.text.chars().count()
                ),
            }
        }
        _ => {}
    }
}

fn render(event: &GroupEvent, names: &HashMap<String, String>) -> String {
    let who = match event.kind {
        EventKind::User => event.author.clone().unwrap_or_else(|| "you".into()),
        EventKind::Familiar => name(names, event.familiar_id.as_ref()).to_owned(),
        EventKind::System => "·".into(),
    };
    let error = event
        .error
        .as_ref()
        .map(|e| format!("  [{:?}: {}]", e.kind, e.message))
        .unwrap_or_default();
    format!("#{:<3} {who:<8} {}{error}", event.seq, event.text)
}
