//! Running a harness process: argv only (never a shell), its own process group so cancel and
//! timeout kill everything it started, output read on a helper thread, and the child always
//! reaped. Shared by the PTY (`command`) and JSON-lines (`claude`, `codex`) harnesses.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use super::{harness_error, Cancel, ReplySink};
use crate::error::Result;

/// Longest single output line a JSON-lines harness may print.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;
/// How many read lines may wait for the parser (so at most this many times MAX_LINE_BYTES).
const LINES_QUEUED: usize = 4;
/// How much of a process's stderr is kept for its error message.
const STDERR_TAIL_BYTES: usize = 2048;

/// Finds a program the way `execvp` would: a path with a slash as given, otherwise on `PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// How a process ended.
pub struct ExitInfo {
    pub success: bool,
    pub description: String,
}

impl ExitInfo {
    pub fn from_std(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        let description = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => "ended abnormally".to_owned(),
        };
        Self {
            success: status.success(),
            description,
        }
    }
}

/// What ended a supervised run.
pub enum Ending {
    Exited(ExitInfo),
    Cancelled,
}

/// A started process: its group, its output, and a thread that reaps it.
pub struct Running {
    pgid: i32,
    output: Receiver<Vec<u8>>,
    exited: Receiver<ExitInfo>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    /// Keeps a PTY master open until the run ends (closing it hangs the child up).
    _keep_alive: Option<Box<dyn Send>>,
}

impl Running {
    pub fn new(
        pgid: i32,
        output: Receiver<Vec<u8>>,
        exited: Receiver<ExitInfo>,
        stderr_tail: Arc<Mutex<Vec<u8>>>,
        keep_alive: Option<Box<dyn Send>>,
    ) -> Self {
        Self {
            pgid,
            output,
            exited,
            stderr_tail,
            _keep_alive: keep_alive,
        }
    }

    /// Kills the whole process group.
    fn kill_group(&self) {
        // SAFETY: killpg takes plain integers and has no memory effects; a group that is already
        // gone yields ESRCH, which is fine.
        unsafe {
            libc::killpg(self.pgid, libc::SIGKILL);
        }
    }

    /// Kills the group and waits until the child is reaped.
    fn kill_and_reap(&self) {
        self.kill_group();
        let _ = self.exited.recv();
    }

    /// The last bytes the process wrote to stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock();
        String::from_utf8_lossy(&tail).trim().to_owned()
    }

    /// Hands each output chunk to `on_output` until the output ends and the child has exited.
    /// Cancel (or timeout) kills the group and reaps the child. An error from `on_output` (invalid
    /// output), or a reply that outgrew [`super::MAX_REPLY_BYTES`], does the same and is returned.
    pub fn drive(
        &self,
        cancel: &Cancel,
        sink: &ReplySink,
        mut on_output: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<Ending> {
        let mut exit: Option<ExitInfo> = None;
        let never = crossbeam_channel::never();
        loop {
            // Once the child is reaped its channel is done; wait on output and cancel only.
            let exited = if exit.is_some() { &never } else { &self.exited };
            crossbeam_channel::select! {
                recv(self.output) -> chunk => match chunk {
                    Ok(chunk) => {
                        sink.keep_alive();
                        if let Err(err) = on_output(&chunk) {
                            self.stop(exit.is_some());
                            return Err(err);
                        }
                        // A reply over its size limit is cut there; the run has nothing to add.
                        if let Some(reason) = sink.overflow() {
                            self.stop(exit.is_some());
                            return Err(harness_error(reason));
                        }
                    }
                    Err(_) => break,
                },
                recv(exited) -> status => {
                    // The child is gone; kill whatever it left in its group so the output closes.
                    exit = Some(status.unwrap_or_else(|_| ExitInfo {
                        success: false,
                        description: "was lost track of".to_owned(),
                    }));
                    self.kill_group();
                }
                recv(cancel.receiver()) -> _ => {
                    self.stop(exit.is_some());
                    return Ok(Ending::Cancelled);
                }
            }
        }
        let exit = match exit {
            Some(exit) => exit,
            None => crossbeam_channel::select! {
                recv(self.exited) -> status => status.map_err(|_| harness_error("lost track of the process"))?,
                recv(cancel.receiver()) -> _ => {
                    self.stop(false);
                    return Ok(Ending::Cancelled);
                }
            },
        };
        // Leftover processes of the group (daemonized helpers) do not outlive the run.
        self.kill_group();
        Ok(Ending::Exited(exit))
    }

    /// Kills the group and, unless the child was already reaped, waits until it is.
    fn stop(&self, reaped: bool) {
        if reaped {
            self.kill_group();
        } else {
            self.kill_and_reap();
        }
    }
}

/// Spawns `argv` with piped stdio in its own process group; output arrives line by line.
pub fn spawn_lines(
    program: &Path,
    args: &[String],
    cwd: Option<&Path>,
    stdin_text: Option<String>,
) -> Result<Running> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin_text.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child = command
        .spawn()
        .map_err(|err| harness_error(format!("cannot start {}: {err}", program.display())))?;
    let pgid = child.id() as i32;

    if let (Some(text), Some(mut stdin)) = (stdin_text, child.stdin.take()) {
        let writer = spawn_helper("coven-stdin", move || {
            // A child that exits without reading its stdin is not an error here.
            let _ = stdin.write_all(text.as_bytes());
        });
        or_abandon(pgid, program, writer)?;
    }
    let stderr_tail = Arc::new(Mutex::new(Vec::new()));
    if let Some(stderr) = child.stderr.take() {
        let tail = stderr_tail.clone();
        let reader = spawn_helper("coven-stderr", move || keep_tail(stderr, &tail));
        or_abandon(pgid, program, reader)?;
    }
    // Lines may be up to MAX_LINE_BYTES long: few are queued, so few can wait in memory.
    let (lines_tx, lines_rx) = crossbeam_channel::bounded(LINES_QUEUED);
    if let Some(stdout) = child.stdout.take() {
        let reader = spawn_helper("coven-stdout", move || read_lines(stdout, &lines_tx));
        or_abandon(pgid, program, reader)?;
    }
    let exited = or_abandon(pgid, program, reap(child))?;
    Ok(Running::new(pgid, lines_rx, exited, stderr_tail, None))
}

/// Waits for the child on a helper thread, so no zombie outlives the run.
fn reap(mut child: Child) -> std::io::Result<Receiver<ExitInfo>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    spawn_helper("coven-reap", move || {
        let info = match child.wait() {
            Ok(status) => ExitInfo::from_std(status),
            Err(err) => ExitInfo {
                success: false,
                description: format!("could not be waited for: {err}"),
            },
        };
        let _ = tx.send(info);
    })?;
    Ok(rx)
}

/// A helper thread of a just-started child that could not start (the process or thread limit
/// is reached) gives up the run: the child is killed and reaped here, never left a zombie.
pub fn or_abandon<T>(pgid: i32, program: &Path, started: std::io::Result<T>) -> Result<T> {
    started.map_err(|err| {
        abandon(pgid);
        harness_error(format!(
            "cannot start a thread to watch {}: {err}",
            program.display()
        ))
    })
}

/// Starts a named helper thread; it fails when the process or thread limit is reached.
pub fn spawn_helper(name: &str, work: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(work)
        .map(drop)
}

/// Kills a just-started child's process group and reaps the child in place, for a start that
/// cannot be completed. The child is the group's leader (`pgid` is its pid).
pub fn abandon(pgid: i32) {
    // SAFETY: plain syscalls on integers; `status` outlives the call. The child is killed
    // first, so waiting for it returns at once.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pgid, &mut status, 0);
    }
}

/// Sends each line (without its newline); a line over [`MAX_LINE_BYTES`] is sent truncated to
/// the limit and the rest of it skipped, which the parser then refuses as invalid.
fn read_lines(stdout: impl Read, lines: &Sender<Vec<u8>>) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    loop {
        let mut line = Vec::new();
        match (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > MAX_LINE_BYTES {
            line.truncate(MAX_LINE_BYTES);
            if skip_rest_of_line(&mut reader).is_err() {
                return;
            }
        }
        if lines.send(line).is_err() {
            return;
        }
    }
}

fn skip_rest_of_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(());
        }
        match buffer.iter().position(|b| *b == b'\n') {
            Some(end) => {
                reader.consume(end + 1);
                return Ok(());
            }
            None => {
                let len = buffer.len();
                reader.consume(len);
            }
        }
    }
}

fn keep_tail(mut stderr: impl Read, tail: &Mutex<Vec<u8>>) {
    let mut buffer = [0u8; 4096];
    loop {
        match stderr.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut tail = tail.lock();
                tail.extend_from_slice(&buffer[..n]);
                if tail.len() > STDERR_TAIL_BYTES {
                    let excess = tail.len() - STDERR_TAIL_BYTES;
                    tail.drain(..excess);
                }
            }
        }
    }
}
