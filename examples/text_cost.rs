//! Bytes on disk per byte of text for replies streamed in real time: a file store, scripted
//! familiars each streaming one word every 33 ms (about 30 tokens per second), ten turns. Prints
//! the file's growth over the turns divided by the text the turns stored (user messages and
//! replies), and the change-log entries the group holds.
//!
//! `cargo run --release --example text_cost [turns] [words per reply] [members]`

use std::error::Error;
use std::time::Duration;

use coven_group::{Config, Coven, Familiar};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let turns: usize = args.next().map_or(Ok(10), |a| a.parse())?;
    let words: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let members: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cost.redb");
    let config = Config {
        scripted_delay_ms: 33,
        ..Config::default()
    };
    let coven = Coven::open(&path, config)?;
    let ids: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
    for id in &ids {
        coven.register_familiar(Familiar {
            model: Some(format!("words:{words}")),
            ..Familiar::new(id.as_str(), id.as_str(), "scripted")
        })?;
    }
    let group = coven.create_group(None, ids, None)?;
    let before = std::fs::metadata(&path)?.len();
    for turn in 0..turns {
        let handle = coven.send(&group.id, format!("turn {turn}: tell me more"), None)?;
        if !coven.wait_turn(&handle.turn_id, Duration::from_secs(600))? {
            return Err("a turn did not finish".into());
        }
    }
    let text: usize = coven
        .get_group(&group.id)?
        .events
        .iter()
        .map(|event| event.text.len())
        .sum();
    let changes = coven.check()?.changes;
    coven.close();
    let after = std::fs::metadata(&path)?.len();
    println!(
        "turns {turns}, members {members}, words per reply {words}: text {text} B, file grew {} B, {:.2} B on disk \
         per B of text, {changes} change-log entries",
        after - before,
        (after - before) as f64 / text as f64
    );
    Ok(())
}
