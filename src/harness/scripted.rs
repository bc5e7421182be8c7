//! The `scripted` harness: in-process and deterministic. Each familiar answers with a reply
//! derived from its name and the user's message, streamed word by word. With the `testing`
//! feature, a familiar whose model is `words:N` answers with exactly N words (for load tests and
//! benchmarks); without it, the model is ignored like any other.

use std::sync::Arc;
use std::time::Duration;

use super::{Harness, ReplySink, TurnRequest};
use crate::error::Result;

const OPENINGS: [&str; 4] = [
    "I hear you.",
    "Here is my take.",
    "Consider this.",
    "Let me answer plainly.",
];

pub struct Scripted {
    pub delay: Duration,
}

/// The words a scripted familiar replies with; a pure function of familiar and message.
pub fn reply_words(request: &TurnRequest) -> Vec<String> {
    let familiar = &request.familiar;
    #[cfg(feature = "testing")]
    if let Some(count) = familiar
        .model
        .as_deref()
        .and_then(|model| model.strip_prefix("words:"))
        .and_then(|count| count.parse::<usize>().ok())
    {
        return (0..count).map(|i| format!("w{i}")).collect();
    }
    let digest = request
        .user_text
        .bytes()
        .chain(familiar.id.bytes())
        .fold(0usize, |acc, b| {
            acc.wrapping_mul(31).wrapping_add(b as usize)
        });
    let topic: Vec<&str> = request.user_text.split_whitespace().take(6).collect();
    format!(
        "{} \u{201c}{}\u{201d} deserves a careful answer, says {}.",
        OPENINGS[digest % OPENINGS.len()],
        topic.join(" "),
        familiar.display_name,
    )
    .split(' ')
    .map(str::to_owned)
    .collect()
}

impl Harness for Scripted {
    fn run_turn(&self, request: TurnRequest, sink: Arc<ReplySink>) -> Result<bool> {
        let words = reply_words(&request);
        let last = words.len().saturating_sub(1);
        for (index, word) in words.into_iter().enumerate() {
            if sink.is_cancelled() {
                return Ok(true);
            }
            if index > 0 && !self.delay.is_zero() {
                // Wakes at once on cancel instead of sleeping through it.
                crossbeam_channel::select! {
                    recv(sink.cancel_signal().receiver()) -> _ => {}
                    default(self.delay) => {}
                }
            }
            let text = if index < last {
                format!("{word} ")
            } else {
                word
            };
            sink.delta(text);
        }
        Ok(true)
    }
}
