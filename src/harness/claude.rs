//! Claude Code: `claude -p --output-format stream-json --verbose --include-partial-messages`,
//! prompt on stdin. Text comes from `stream_event` text deltas (or, when a version streams no
//! partial messages, from the `assistant` message), the session id from `system`/`init` is the
//! resume token, and `result` says success or error. Unknown line types are ignored.

use serde_json::Value;

use super::jsonl::{self, LineEvent, Protocol};
use super::TurnRequest;

/// Parser state: whether the current assistant message already streamed its text.
#[derive(Default)]
pub struct ClaudeLines {
    streamed_since_message: bool,
    any_text: bool,
}

impl Protocol for ClaudeLines {
    const COMMAND: &'static str =
        "claude -p --output-format stream-json --verbose --include-partial-messages";
    const INSTALL_HINT: &'static str =
        "Install Claude Code with `npm install -g @anthropic-ai/claude-code` and sign in with `claude`.";

    fn session_args(request: &TurnRequest) -> Vec<String> {
        match &request.resume_token {
            Some(token) => vec!["--resume".to_owned(), token.clone()],
            None => vec!["--session-id".to_owned(), request.session_id.clone()],
        }
    }

    fn parse(&mut self, line: &[u8]) -> std::result::Result<Vec<LineEvent>, String> {
        let object = jsonl::object(line)?;
        let kind = object.get("type").and_then(Value::as_str).unwrap_or("");
        let mut events = Vec::new();
        match kind {
            "system" if object.get("subtype").and_then(Value::as_str) == Some("init") => {
                if let Some(id) = object.get("session_id").and_then(Value::as_str) {
                    events.push(LineEvent::ResumeToken(id.to_owned()));
                }
            }
            "stream_event" => {
                let event = object.get("event");
                let is_text_delta = event.and_then(|e| e.get("type")).and_then(Value::as_str)
                    == Some("content_block_delta")
                    && event
                        .and_then(|e| e.pointer("/delta/type"))
                        .and_then(Value::as_str)
                        == Some("text_delta");
                if is_text_delta {
                    if let Some(text) = event
                        .and_then(|e| e.pointer("/delta/text"))
                        .and_then(Value::as_str)
                    {
                        self.streamed_since_message = true;
                        self.push_text(&mut events, text);
                    }
                }
            }
            "assistant" => {
                // With partial messages on, the text already streamed; otherwise take it here.
                if !self.streamed_since_message {
                    let blocks = object
                        .pointer("/message/content")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    for block in blocks {
                        if block.get("type").and_then(Value::as_str) == Some("text") {
                            if let Some(text) = block.get("text").and_then(Value::as_str) {
                                self.push_text(&mut events, text);
                            }
                        }
                    }
                }
                self.streamed_since_message = false;
            }
            "result" => {
                if let Some(id) = object.get("session_id").and_then(Value::as_str) {
                    events.push(LineEvent::ResumeToken(id.to_owned()));
                }
                let subtype = object.get("subtype").and_then(Value::as_str).unwrap_or("");
                let is_error = object
                    .get("is_error")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let result = object.get("result").and_then(Value::as_str);
                if subtype == "success" && !is_error {
                    if let (false, Some(result)) = (self.any_text, result) {
                        self.push_text(&mut events, result);
                    }
                    events.push(LineEvent::Completed);
                } else {
                    let detail = result.filter(|r| !r.is_empty()).unwrap_or(subtype);
                    events.push(LineEvent::Failed(format!(
                        "claude reported an error: {detail}"
                    )));
                }
            }
            _ => {}
        }
        Ok(events)
    }
}

impl ClaudeLines {
    fn push_text(&mut self, events: &mut Vec<LineEvent>, text: &str) {
        if !text.is_empty() {
            self.any_text = true;
            events.push(LineEvent::Text(text.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_text_deltas_and_takes_session_id() {
        jsonl::assert_parses::<ClaudeLines>(
            &[
                r#"{"type":"system","subtype":"init","session_id":"s-1"}"#,
                r#"{"type":"stream_event","event":{"type":"content_block_delta","delta":{"type":"text_delta","text":"Hel"}}}"#,
                r#"{"type":"stream_event","event":{"type":"content_block_delta","delta":{"type":"text_delta","text":"lo"}}}"#,
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Hello"}]}}"#,
                r#"{"type":"brand_new_type","x":1}"#,
                r#"{"type":"result","subtype":"success","is_error":false,"result":"Hello","session_id":"s-1"}"#,
            ],
            &[
                LineEvent::ResumeToken("s-1".into()),
                LineEvent::Text("Hel".into()),
                LineEvent::Text("lo".into()),
                LineEvent::ResumeToken("s-1".into()),
                LineEvent::Completed,
            ],
        );
    }

    #[test]
    fn assistant_text_without_partial_messages_and_error_results() {
        jsonl::assert_parses::<ClaudeLines>(
            &[
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Hi"}]}}"#,
                r#"{"type":"result","subtype":"error_max_turns","is_error":true}"#,
            ],
            &[
                LineEvent::Text("Hi".into()),
                LineEvent::Failed("claude reported an error: error_max_turns".into()),
            ],
        );
        assert!(ClaudeLines::default().parse(b"not json").is_err());
    }
}
