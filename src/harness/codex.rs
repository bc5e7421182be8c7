//! Codex: `codex exec --json --skip-git-repo-check --color never -` with the prompt on stdin, and
//! `codex exec … resume <thread_id> -` on later turns. The thread id from `thread.started` is the
//! resume token; the reply is the text of completed `agent_message` items (Codex does not stream
//! tokens); `turn.failed` and `error` are failures. Unknown line types are ignored.

use serde_json::Value;

use super::jsonl::{self, LineEvent, Protocol};
use super::TurnRequest;

#[derive(Default)]
pub struct CodexLines {
    messages: usize,
}

impl Protocol for CodexLines {
    const COMMAND: &'static str = "codex exec --json --skip-git-repo-check --color never";
    const INSTALL_HINT: &'static str =
        "Install Codex with `npm install -g @openai/codex` and sign in with `codex login`.";

    /// `resume <thread>` on later turns, then `-`: the prompt comes on stdin.
    fn session_args(request: &TurnRequest) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(thread) = &request.resume_token {
            args.extend(["resume".to_owned(), thread.clone()]);
        }
        args.push("-".to_owned());
        args
    }

    fn parse(&mut self, line: &[u8]) -> std::result::Result<Vec<LineEvent>, String> {
        let object = jsonl::object(line)?;
        let kind = object.get("type").and_then(Value::as_str).unwrap_or("");
        let message = |path: &str| {
            object
                .pointer(path)
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_owned()
        };
        let events = match kind {
            "thread.started" => object
                .get("thread_id")
                .and_then(Value::as_str)
                .map(|id| vec![LineEvent::ResumeToken(id.to_owned())])
                .unwrap_or_default(),
            "item.completed" => {
                let item = object.get("item");
                let is_message = item.and_then(|i| i.get("type")).and_then(Value::as_str)
                    == Some("agent_message");
                match item.and_then(|i| i.get("text")).and_then(Value::as_str) {
                    Some(text) if is_message && !text.is_empty() => {
                        let separated = if self.messages > 0 {
                            format!("\n\n{text}")
                        } else {
                            text.to_owned()
                        };
                        self.messages += 1;
                        vec![LineEvent::Text(separated)]
                    }
                    _ => Vec::new(),
                }
            }
            "turn.completed" => vec![LineEvent::Completed],
            "turn.failed" => vec![LineEvent::Failed(format!(
                "codex turn failed: {}",
                message("/error/message")
            ))],
            "error" => vec![LineEvent::Failed(format!(
                "codex error: {}",
                message("/message")
            ))],
            _ => Vec::new(),
        };
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_thread_messages_and_failures() {
        jsonl::assert_parses::<CodexLines>(
            &[
                r#"{"type":"thread.started","thread_id":"t-9"}"#,
                r#"{"type":"turn.started"}"#,
                r#"{"type":"item.started","item":{"id":"i0","type":"agent_message","text":""}}"#,
                r#"{"type":"item.completed","item":{"id":"i1","type":"reasoning","text":"thinking"}}"#,
                r#"{"type":"item.completed","item":{"id":"i2","type":"agent_message","text":"One"}}"#,
                r#"{"type":"item.completed","item":{"id":"i3","type":"agent_message","text":"Two"}}"#,
                r#"{"type":"turn.completed","usage":{"input_tokens":1}}"#,
            ],
            &[
                LineEvent::ResumeToken("t-9".into()),
                LineEvent::Text("One".into()),
                LineEvent::Text("\n\nTwo".into()),
                LineEvent::Completed,
            ],
        );
        jsonl::assert_parses::<CodexLines>(
            &[r#"{"type":"turn.failed","error":{"message":"quota"}}"#],
            &[LineEvent::Failed("codex turn failed: quota".into())],
        );
    }
}
