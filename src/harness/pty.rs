//! The `command` harness: an allowlisted program run by argv in a pseudo-terminal. Its reply is
//! the terminal output with escape sequences removed. The prompt reaches the program as an
//! argument wherever argv contains `{prompt}`, and always as the `COVEN_PROMPT` environment
//! variable (with `COVEN_FAMILIAR`, `COVEN_GROUP` and `COVEN_SESSION`).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use portable_pty::{native_pty_system, CommandBuilder, PtySize};

use super::process::{self, Ending, ExitInfo, Running};
use super::terminal::TerminalText;
use super::{harness_error, Harness, ReplySink, TurnRequest};
use crate::error::Result;

/// Placeholder in a familiar's argv replaced by the prompt.
pub const PROMPT_PLACEHOLDER: &str = "{prompt}";

pub struct Pty;

impl Harness for Pty {
    fn run_turn(&self, request: TurnRequest, sink: Arc<ReplySink>) -> Result<bool> {
        let argv = &request.familiar.argv;
        let Some(program) = argv.first() else {
            return Err(harness_error("the command harness needs a program to run"));
        };
        let path = process::find_program(program).ok_or_else(|| {
            harness_error(format!(
                "program {program:?} was not found on PATH; install it or give its absolute path"
            ))
        })?;
        let cwd = request.cwd.as_deref().map(Path::new);
        let running = spawn_pty(&path, &argv[1..], cwd, &request)?;
        let mut terminal = TerminalText::default();
        let ending = running.drive(sink.cancel_signal(), &sink, |chunk| {
            let text = terminal.feed(chunk);
            sink.delta(text);
            Ok(())
        })?;
        sink.delta(terminal.finish());
        match ending {
            Ending::Cancelled => Ok(true),
            Ending::Exited(exit) if exit.success => Ok(true),
            Ending::Exited(exit) => Err(harness_error(format!("{program} {}", exit.description))),
        }
    }
}

fn spawn_pty(
    program: &Path,
    args: &[String],
    cwd: Option<&Path>,
    request: &TurnRequest,
) -> Result<Running> {
    let pty = native_pty_system()
        .openpty(PtySize {
            rows: 50,
            cols: 200,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|err| harness_error(format!("cannot open a pseudo-terminal: {err}")))?;
    let mut command = CommandBuilder::new(program);
    for arg in args {
        if arg == PROMPT_PLACEHOLDER {
            command.arg(&request.prompt);
        } else {
            command.arg(arg);
        }
    }
    command.env("COVEN_PROMPT", &request.prompt);
    command.env("COVEN_FAMILIAR", &request.familiar.id);
    command.env("COVEN_GROUP", &request.group_id);
    command.env("COVEN_SESSION", &request.session_id);
    command.env("TERM", "dumb");
    if let Some(cwd) = cwd {
        command.cwd(cwd);
    }
    let mut child = pty
        .slave
        .spawn_command(command)
        .map_err(|err| harness_error(format!("cannot start {}: {err}", program.display())))?;
    // The child holds the only slave end now, so the master reads EOF (EIO) once it is gone.
    drop(pty.slave);
    let Some(pid) = child.process_id() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(harness_error("the started program has no process id"));
    };
    // portable-pty starts the child in a new session, so its pid is its process group.
    let pgid = pid as i32;
    let mut reader = pty.master.try_clone_reader().map_err(|err| {
        process::abandon(pgid);
        harness_error(format!("cannot read the pseudo-terminal: {err}"))
    })?;

    let (chunks_tx, chunks_rx) = crossbeam_channel::bounded(64);
    let read_thread = process::spawn_helper("coven-pty-read", move || {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if chunks_tx.send(buffer[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    process::or_abandon(pgid, program, read_thread)?;
    let (exit_tx, exit_rx) = crossbeam_channel::bounded(1);
    let reap_thread = process::spawn_helper("coven-pty-reap", move || {
        let info = match child.wait() {
            Ok(status) if status.success() => ExitInfo {
                success: true,
                description: "exited with status 0".to_owned(),
            },
            Ok(status) => ExitInfo {
                success: false,
                description: match status.signal() {
                    Some(signal) => format!("was killed by {signal}"),
                    None => format!("exited with status {}", status.exit_code()),
                },
            },
            Err(err) => ExitInfo {
                success: false,
                description: format!("could not be waited for: {err}"),
            },
        };
        let _ = exit_tx.send(info);
    });
    process::or_abandon(pgid, program, reap_thread)?;
    Ok(Running::new(
        pgid,
        chunks_rx,
        exit_rx,
        Default::default(),
        Some(Box::new(pty.master)),
    ))
}
