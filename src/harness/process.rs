//! Running a harness process: argv only (never a shell), its own process group so cancel and
//! timeout kill everything it started, output read on a helper thread, and the child always
//! reaped. Shared by the PTY (`command`) and JSON-lines (`claude`, `codex`) harnesses.
//!
//! No harness process outlives its host for long. On Linux each one is started with a death
//! signal ([`die_with_host`]), so it is killed when the host dies by any means. Its helpers do
//! not get that signal, so every run's process group is also recorded in the store while the run
//! lasts (with a marker in the environment of everything the run starts, [`RUN_MARKER_ENV`]),
//! and the next open stops what is left of a run its host did not see end
//! ([`stop_leftovers`]).
//!
//! Logs (debug, inside the member run's span): `process started` (program, pid), `process group
//! killed` when a run is stopped, and `process exited` (pid, status) once the child is reaped.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use tracing::debug;

use super::{harness_error, Cancel, ReplySink};
use crate::error::Result;
use crate::ids;

/// Environment variable every harness process starts with: the id of its run, as a UUID. The
/// processes it starts inherit it, which is how an open tells a process a previous host left
/// behind from an unrelated one that has since been given the same pid or process group.
pub const RUN_MARKER_ENV: &str = "COVEN_RUN";

pub use crate::store::runs::ProcessRun;

impl ProcessRun {
    /// A fresh run id, before its process is started.
    pub fn new_marker() -> u128 {
        ids::new_id()
    }

    /// The run of `marker` whose process, the leader of group `pgid`, has just started.
    pub fn started(marker: u128, pgid: i32) -> Self {
        Self {
            marker,
            pgid,
            boot_id: boot_id().to_owned(),
        }
    }
}

/// The value of [`RUN_MARKER_ENV`] for a run.
pub fn marker_value(marker: u128) -> String {
    ids::to_string(marker)
}

/// This boot's id (Linux: `/proc/sys/kernel/random/boot_id`), or "" where there is none.
pub fn boot_id() -> &'static str {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT_ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|id| id.trim().to_owned())
            .unwrap_or_default()
    })
}

/// Makes the started child die (SIGKILL) when its host dies, SIGKILL and crashes included. Linux
/// only (`PR_SET_PDEATHSIG`); elsewhere the recorded process group is all there is.
///
/// The death signal fires when the *thread* that forked the child exits, not only the process.
/// Every harness process is started by its run's own thread (`coven-run`, which calls
/// [`crate::harness::Harness::run_turn`]), and that thread returns only after
/// [`Running::drive`] has reaped the child, so the signal cannot fire while the run is still
/// supervised; it fires when the host dies. The spawning thread is also blocked in `spawn` until
/// the child has called `exec`, so it cannot exit between the fork and the `prctl`.
pub fn die_with_host(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let host = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls; the error it returns allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // The host may have died after the fork and before the prctl, when there was
                // no death signal to send yet: the child has been reparented, and must not run.
                if libc::getppid() != host {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

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
    run: ProcessRun,
    output: Receiver<Vec<u8>>,
    exited: Receiver<ExitInfo>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    /// Keeps a PTY master open until the run ends (closing it hangs the child up).
    _keep_alive: Option<Box<dyn Send>>,
}

impl Running {
    pub fn new(
        run: ProcessRun,
        output: Receiver<Vec<u8>>,
        exited: Receiver<ExitInfo>,
        stderr_tail: Arc<Mutex<Vec<u8>>>,
        keep_alive: Option<Box<dyn Send>>,
    ) -> Self {
        Self {
            run,
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
            libc::killpg(self.run.pgid, libc::SIGKILL);
        }
    }

    /// Kills the group and waits until the child is reaped.
    fn kill_and_reap(&self) {
        self.kill_group();
        if let Ok(exit) = self.exited.recv() {
            self.log_exit(&exit);
        }
    }

    fn log_exit(&self, exit: &ExitInfo) {
        debug!(
            pid = self.run.pgid,
            success = exit.success,
            status = %exit.description,
            "process exited"
        );
    }

    /// The last bytes the process wrote to stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock();
        String::from_utf8_lossy(&tail).trim().to_owned()
    }

    /// Hands each output chunk to `on_output` until the output ends and the child has exited.
    /// Cancel (or timeout) kills the group and reaps the child. An error from `on_output` (invalid
    /// output), or a reply that outgrew [`super::MAX_REPLY_BYTES`], does the same and is returned.
    ///
    /// The run's process group is recorded in the store (a durable write, waited for) before any
    /// output is read, and the record is dropped once the group is killed and the child reaped.
    /// A run that cannot be recorded is stopped at once and fails with the reason.
    pub fn drive(
        &self,
        cancel: &Cancel,
        sink: &ReplySink,
        on_output: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<Ending> {
        let recorded = match sink.record_process_group(&self.run) {
            Ok(recorded) => recorded,
            Err(err) => {
                self.stop(false);
                return Err(harness_error(format!(
                    "the run was stopped: its process group could not be recorded ({err})"
                )));
            }
        };
        let ending = self.supervise(cancel, sink, on_output);
        // Every way out of `supervise` has killed the group and reaped the child. (A panic in
        // `on_output` skips this: the record stays, and the next open stops what is left.)
        recorded.release();
        ending
    }

    fn supervise(
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
                    let status = status.unwrap_or_else(|_| ExitInfo {
                        success: false,
                        description: "was lost track of".to_owned(),
                    });
                    self.log_exit(&status);
                    exit = Some(status);
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
                recv(self.exited) -> status => status
                    .map_err(|_| {
                        self.kill_group();
                        harness_error("lost track of the process")
                    })
                    .inspect(|exit| self.log_exit(exit))?,
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
        debug!(pid = self.run.pgid, "process group killed");
        if reaped {
            self.kill_group();
        } else {
            self.kill_and_reap();
        }
    }
}

/// Spawns `argv` with piped stdio in its own process group; output arrives line by line. The
/// process carries its run's marker and dies with its host ([`die_with_host`]).
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
    let marker = ProcessRun::new_marker();
    command.env(RUN_MARKER_ENV, marker_value(marker));
    die_with_host(&mut command);
    let mut child = command
        .spawn()
        .map_err(|err| harness_error(format!("cannot start {}: {err}", program.display())))?;
    let pgid = child.id() as i32;
    log_started(program, pgid);

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
    Ok(Running::new(
        ProcessRun::started(marker, pgid),
        lines_rx,
        exited,
        stderr_tail,
        None,
    ))
}

/// Logs a harness process just started: its program and pid (also its process group).
pub fn log_started(program: &Path, pid: i32) {
    debug!(program = %program.display(), pid, "process started");
}

/// Waits for the child on a helper thread, so no zombie outlives the run.
pub fn reap(mut child: Child) -> std::io::Result<Receiver<ExitInfo>> {
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

/// Stops what is left of runs a previous host recorded and did not see end, and returns how many
/// processes it killed. A process is killed only when it is alive, was started in the same boot,
/// carries the run's marker in its environment and is still in the run's recorded process
/// group, so a pid or process group the system has since given to an unrelated process is never
/// signalled. Waits at most [`LEFTOVER_EXIT_WAIT`] for the killed processes to exit. Linux only
/// (it reads `/proc`); elsewhere nothing is killed and 0 is returned.
pub fn stop_leftovers(runs: &[ProcessRun]) -> u64 {
    #[cfg(target_os = "linux")]
    {
        leftovers::stop(runs)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = runs;
        0
    }
}

/// Longest [`stop_leftovers`] waits for the processes it killed to exit.
pub const LEFTOVER_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(target_os = "linux")]
mod leftovers {
    use std::collections::HashMap;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Instant;

    use super::{boot_id, ProcessRun, LEFTOVER_EXIT_WAIT, RUN_MARKER_ENV};
    use crate::ids;

    pub fn stop(runs: &[ProcessRun]) -> u64 {
        let boot = boot_id();
        // Processes of another boot are gone; a boot id the system did not give is no evidence.
        let wanted: HashMap<u128, i32> = runs
            .iter()
            .filter(|run| run.boot_id.is_empty() || boot.is_empty() || run.boot_id == boot)
            .map(|run| (run.marker, run.pgid))
            .collect();
        if wanted.is_empty() {
            return 0;
        }
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        let me = std::process::id() as i32;
        let mut killed: Vec<Option<OwnedFd>> = Vec::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Some(marker) = run_marker(pid) else {
                continue;
            };
            if let Some(&pgid) = wanted.get(&marker) {
                if let Some(pinned) = kill_if_ours(pid, marker, pgid) {
                    killed.push(pinned);
                }
            }
        }
        wait_for_exits(&killed);
        killed.len() as u64
    }

    /// Kills `pid` when it is still the process that carries `marker` in group `pgid`. Returns
    /// its pidfd (`None` on kernels without pidfds) when it was killed.
    fn kill_if_ours(pid: i32, marker: u128, pgid: i32) -> Option<Option<OwnedFd>> {
        // Pinned first, checked second: the checks then read the process the pidfd refers to,
        // or (if that one exited and its pid was reused in between) another one, in which case
        // the pidfd's process is dead and the signal goes nowhere.
        let pinned = match pidfd_open(pid) {
            Ok(fd) => Some(fd),
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return None,
            // No pidfds here (before Linux 5.3): checked and killed by pid, which leaves the
            // microseconds between the check and the kill for the pid to be reused.
            Err(_) => None,
        };
        if run_marker(pid) != Some(marker) || process_group(pid) != Some(pgid) {
            return None;
        }
        let sent = match &pinned {
            // SAFETY: a plain system call on integers; the pidfd stays open for its duration.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                ) == 0
            },
            // SAFETY: a plain system call on integers, with no memory effect.
            None => unsafe { libc::kill(pid, libc::SIGKILL) == 0 },
        };
        sent.then_some(pinned)
    }

    /// Waits (bounded) until every pinned process has exited: a pidfd turns readable then.
    fn wait_for_exits(killed: &[Option<OwnedFd>]) {
        let deadline = Instant::now() + LEFTOVER_EXIT_WAIT;
        for fd in killed.iter().flatten() {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut poll = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut poll, 1, left.as_millis() as libc::c_int) };
        }
    }

    fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
        // SAFETY: plain system call; a non-negative result is a new descriptor this owns.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// The run marker in the process's environment, if it has one (a zombie, a process of another
    /// user or one that vanished has none that can be read).
    fn run_marker(pid: i32) -> Option<u128> {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let prefix = format!("{RUN_MARKER_ENV}=");
        environ
            .split(|byte| *byte == 0)
            .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| ids::parse(RUN_MARKER_ENV, value).ok())
    }

    /// The process group of a live process (`None` for a zombie or a process that is gone).
    fn process_group(pid: i32) -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command (which may hold spaces and parentheses): state, ppid, pgrp.
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?;
        if matches!(state, "Z" | "X") {
            return None;
        }
        fields.next()?;
        fields.next()?.parse().ok()
    }
}
