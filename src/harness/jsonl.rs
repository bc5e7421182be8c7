//! The shared driver of JSON-lines CLIs (`claude`, `codex`): spawn by argv with the prompt on
//! stdin, parse each stdout line with the CLI's protocol, and turn what it says into reply text,
//! a resume token, completion or failure.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use super::process::{self, Ending};
use super::{harness_error, Harness, ReplySink, TurnRequest};
use crate::error::Result;

/// What one output line means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    Text(String),
    ResumeToken(String),
    Completed,
    Failed(String),
}

/// A CLI's line format and invocation.
pub trait Protocol {
    /// The command every run starts with: the program's name on PATH, then its arguments,
    /// separated by spaces (none of them contains one).
    const COMMAND: &'static str;
    /// How to install the program, for the error shown when it is missing.
    const INSTALL_HINT: &'static str;
    /// The arguments after the command's and the familiar's `--model`: how the run starts or
    /// resumes its session.
    fn session_args(request: &TurnRequest) -> Vec<String>;
    /// Interprets one line; `Err` means the output is not this protocol (invalid output).
    fn parse(&mut self, line: &[u8]) -> std::result::Result<Vec<LineEvent>, String>;
}

/// The harness of a JSON-lines CLI: each run parses with a fresh `P`.
pub struct JsonLines<P>(PhantomData<fn() -> P>);

impl<P> Default for JsonLines<P> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<P: Protocol + Default> Harness for JsonLines<P> {
    fn run_turn(&self, request: TurnRequest, sink: Arc<ReplySink>) -> Result<bool> {
        run(P::default(), request, sink).map(|()| true)
    }
}

/// The program's name: the first word of the protocol's command.
fn program<P: Protocol>() -> &'static str {
    P::COMMAND.split(' ').next().unwrap_or_default()
}

/// The arguments after the program name.
fn args<P: Protocol>(request: &TurnRequest) -> Vec<String> {
    let mut args: Vec<String> = P::COMMAND.split(' ').skip(1).map(str::to_owned).collect();
    if let Some(model) = &request.familiar.model {
        args.extend(["--model".to_owned(), model.clone()]);
    }
    args.extend(P::session_args(request));
    args
}

/// Runs one turn of a JSON-lines CLI.
pub fn run<P: Protocol>(mut protocol: P, request: TurnRequest, sink: Arc<ReplySink>) -> Result<()> {
    let name = program::<P>();
    let program = process::find_program(name).ok_or_else(|| {
        harness_error(format!(
            "`{name}` was not found on PATH. {}",
            P::INSTALL_HINT
        ))
    })?;
    let cwd = request.cwd.as_deref().map(Path::new);
    let running = process::spawn_lines(&program, &args::<P>(&request), cwd, Some(request.prompt))?;

    let mut completed = false;
    let mut failure: Option<String> = None;
    let ending = running.drive(sink.cancel_signal(), &sink, |line| {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let events = protocol
            .parse(line)
            .map_err(|reason| harness_error(format!("{name} produced invalid output: {reason}")))?;
        for event in events {
            match event {
                LineEvent::Text(text) => sink.delta(text),
                LineEvent::ResumeToken(token) => sink.set_resume_token(token),
                LineEvent::Completed => completed = true,
                LineEvent::Failed(message) => {
                    failure.get_or_insert(message);
                }
            }
        }
        Ok(())
    })?;
    let exit = match ending {
        Ending::Cancelled => return Ok(()),
        Ending::Exited(exit) => exit,
    };
    if let Some(message) = failure {
        return Err(harness_error(message));
    }
    if !exit.success {
        let stderr = running.stderr_tail();
        let detail = if stderr.is_empty() {
            String::new()
        } else {
            format!(": {stderr}")
        };
        return Err(harness_error(format!(
            "{name} {}{detail}",
            exit.description
        )));
    }
    if !completed {
        return Err(harness_error(format!(
            "{name} exited without reporting a result"
        )));
    }
    Ok(())
}

/// Parses a line as a JSON object.
pub fn object(line: &[u8]) -> std::result::Result<serde_json::Value, String> {
    match serde_json::from_slice::<serde_json::Value>(line) {
        Ok(object @ serde_json::Value::Object(_)) => Ok(object),
        Ok(_) => Err("a line is JSON but not an object".to_owned()),
        Err(err) => {
            let shown = String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned();
            Err(format!("{err} in line {shown:?}"))
        }
    }
}

/// Asserts that a fresh parser of protocol `P` finds exactly `expected` in `lines`.
#[cfg(test)]
#[track_caller]
pub fn assert_parses<P: Protocol + Default>(lines: &[&str], expected: &[LineEvent]) {
    let mut parser = P::default();
    let events: Vec<LineEvent> = lines
        .iter()
        .flat_map(|line| parser.parse(line.as_bytes()).unwrap())
        .collect();
    assert_eq!(events, expected);
}
