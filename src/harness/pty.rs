//! The `command` harness: an allowlisted program run by argv in a pseudo-terminal. Its reply is
//! the terminal output with escape sequences removed. The prompt reaches the program as an
//! argument wherever argv contains `{prompt}`, and always as the `COVEN_PROMPT` environment
//! variable (with `COVEN_FAMILIAR`, `COVEN_GROUP` and `COVEN_SESSION`).
//!
//! The terminal is opened and the program started here rather than through portable-pty, whose
//! spawn takes no pre-exec step of ours: the program needs the same death signal and run marker
//! as the JSON-lines CLIs (see [`process`]), and its failed `exec` is then reported by the spawn.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use super::process::{self, Ending, ProcessRun, Running};
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

/// Starts `program` in a new session whose controlling terminal is a fresh pseudo-terminal, with
/// its run's marker, dying with its host ([`process::die_with_host`]). The session leader's pid
/// is the run's process group.
fn spawn_pty(
    program: &Path,
    args: &[String],
    cwd: Option<&Path>,
    request: &TurnRequest,
) -> Result<Running> {
    let (master, slave) =
        open_pty().map_err(|err| harness_error(format!("cannot open a pseudo-terminal: {err}")))?;
    let terminal_end = |fd: &OwnedFd| {
        fd.try_clone()
            .map(Stdio::from)
            .map_err(|err| harness_error(format!("cannot open a pseudo-terminal: {err}")))
    };
    let mut command = Command::new(program);
    for arg in args {
        if arg == PROMPT_PLACEHOLDER {
            command.arg(&request.prompt);
        } else {
            command.arg(arg);
        }
    }
    command
        .env("COVEN_PROMPT", &request.prompt)
        .env("COVEN_FAMILIAR", &request.familiar.id)
        .env("COVEN_GROUP", &request.group_id)
        .env("COVEN_SESSION", &request.session_id)
        .env("TERM", "dumb")
        .stdin(terminal_end(&slave)?)
        .stdout(terminal_end(&slave)?)
        .stderr(Stdio::from(slave));
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let marker = ProcessRun::new_marker();
    command.env(process::RUN_MARKER_ENV, process::marker_value(marker));
    become_terminal_session(&mut command);
    process::die_with_host(&mut command);
    let spawned = command.spawn();
    // The command holds this process's copies of the terminal's slave end: once they are closed
    // the child holds the only ones, so the master reads EOF (EIO) once the child's side is gone.
    drop(command);
    let child = spawned
        .map_err(|err| harness_error(format!("cannot start {}: {err}", program.display())))?;
    // The child called setsid, so its pid is its session and its process group.
    let pgid = child.id() as i32;
    process::log_started(program, pgid);
    let master = File::from(master);
    let mut reader = master.try_clone().map_err(|err| {
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
    let exited = process::or_abandon(pgid, program, process::reap(child))?;
    Ok(Running::new(
        ProcessRun::started(marker, pgid),
        chunks_rx,
        exited,
        Default::default(),
        // Closing the master hangs the terminal up, so it stays open until the run ends.
        Some(Box::new(master)),
    ))
}

/// A pseudo-terminal of 200 columns by 50 rows: (master, slave), both close-on-exec.
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let mut size = libc::winsize {
        ws_row: 50,
        ws_col: 200,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the out-pointers and the size outlive the call; a null name and termios are
    // allowed.
    let status = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &raw mut size,
        )
    };
    if status != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded, so both are open descriptors that nothing else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on a descriptor this function owns.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((master, slave))
}

/// Makes the child a session leader with the terminal (its stdin) as controlling terminal, with
/// the signal dispositions a terminal program expects, and keeps descriptors the host left
/// inheritable out of it.
fn become_terminal_session(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and makes only async-signal-safe
    // system calls.
    unsafe {
        command.pre_exec(|| {
            // Ignored signals stay ignored across exec; a terminal program starts with defaults.
            for signal in [
                libc::SIGCHLD,
                libc::SIGHUP,
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGTERM,
                libc::SIGALRM,
            ] {
                libc::signal(signal, libc::SIG_DFL);
            }
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            #[allow(clippy::useless_conversion)]
            if libc::ioctl(0, libc::TIOCSCTTY.into(), 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // Descriptors the host left inheritable are not the program's: 3 and up close at
            // exec (best effort, Linux 5.11 and later; marking them keeps the pipe through which
            // the spawn learns of a failed exec working).
            #[cfg(target_os = "linux")]
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
}
