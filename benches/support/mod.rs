//! Measurements shared by `benches/seq_throughput.rs` (criterion) and `examples/seq_report.rs`
//! (the one-run report). Every store lives in a directory under one base directory, so all
//! figures come from the same filesystem.

// The criterion bench and the report each use a different subset.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use coven_group::{
    Config, Coven, EventKind, Familiar, GroupChange, GroupListener, GroupUpdate, Harness,
    ReplySink, TurnRequest, MAX_PAGE,
};
use redb::{Database, Durability, TableDefinition};
use tempfile::TempDir;

/// Size of one record in the fsync, redb and SQLite baselines: about what the library stores for
/// one event of [`message_text`] (format byte, group id, seq, rev, kind, author, text, time).
pub const RECORD_BYTES: usize = 200;
/// Length of every benchmark message.
pub const MESSAGE_BYTES: usize = 128;

const REDB_EVENTS: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("events");

/// The text every producer appends.
pub fn message_text() -> String {
    let mut text = String::with_capacity(MESSAGE_BYTES);
    while text.len() < MESSAGE_BYTES {
        text.push_str("the quick familiar jumps over the lazy grimoire ");
    }
    text.truncate(MESSAGE_BYTES);
    text
}

/// Where the stores go: `$COVEN_BENCH_DIR`, else `target/` of the current directory (never a
/// tmpfs `/tmp`, where fsync would cost nothing).
pub fn base_dir() -> PathBuf {
    match std::env::var_os("COVEN_BENCH_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from("target"),
    }
}

/// A fresh directory under [`base_dir`], removed on drop.
pub fn scratch(name: &str) -> TempDir {
    let base = base_dir();
    std::fs::create_dir_all(&base).expect("create the benchmark base directory");
    tempfile::Builder::new()
        .prefix(&format!("coven-bench-{name}-"))
        .tempdir_in(&base)
        .expect("create a benchmark directory")
}

/// Events counted over a measured window, with each one's ack latency when recorded.
#[derive(Debug, Default, Clone)]
pub struct Throughput {
    pub events: u64,
    pub elapsed: Duration,
    /// Microseconds from call to acknowledgement, unsorted.
    pub latencies_us: Vec<u32>,
}

impl Throughput {
    pub fn eps(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    /// The p-th percentile (0–100) of the recorded latencies, in microseconds.
    pub fn percentile_us(&mut self, p: f64) -> f64 {
        percentile(&mut self.latencies_us, p)
    }
}

pub fn percentile(values: &mut [u32], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)] as f64
}

/// How long a plain loop runs once warmed up.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// As many events as fit in this window.
    Window(Duration),
    /// Exactly this many events.
    Events(u64),
}

impl From<Duration> for Limit {
    fn from(window: Duration) -> Self {
        Limit::Window(window)
    }
}

/// Runs `step` in a loop for `warmup`, then counts how many complete within `limit`.
fn timed_loop(warmup: Duration, limit: impl Into<Limit>, mut step: impl FnMut()) -> Throughput {
    let limit = limit.into();
    let warm_until = Instant::now() + warmup;
    while Instant::now() < warm_until {
        step();
    }
    let start = Instant::now();
    let mut events = 0u64;
    loop {
        if let Limit::Events(count) = limit {
            if events == count {
                return Throughput {
                    events,
                    elapsed: start.elapsed(),
                    latencies_us: Vec::new(),
                };
            }
        }
        step();
        events += 1;
        // Reading the clock every event costs nothing next to a durable commit.
        if let Limit::Window(window) = limit {
            let elapsed = start.elapsed();
            if elapsed >= window {
                return Throughput {
                    events,
                    elapsed,
                    latencies_us: Vec::new(),
                };
            }
        }
    }
}

/// write + fdatasync of one [`RECORD_BYTES`] record per event, appended to one file: the
/// physical limit of one durable commit per event on this filesystem.
pub fn fsync_loop(dir: &Path, warmup: Duration, limit: impl Into<Limit>) -> Throughput {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fsync.log"))
        .expect("open the fsync log");
    let record = [0x5au8; RECORD_BYTES];
    timed_loop(warmup, limit, || {
        file.write_all(&record).expect("write a record");
        file.sync_data().expect("fdatasync");
    })
}

/// Plain redb: one `Durability::Immediate` transaction per event, key `(group, seq)`, value a
/// [`RECORD_BYTES`] record.
pub fn redb_per_event(dir: &Path, warmup: Duration, limit: impl Into<Limit>) -> Throughput {
    let db = Database::create(dir.join("plain.redb")).expect("create a redb file");
    let group = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdefu128;
    let record = [0x5au8; RECORD_BYTES];
    let mut seq = 0u64;
    timed_loop(warmup, limit, || {
        seq += 1;
        let mut txn = db.begin_write().expect("begin");
        txn.set_durability(Durability::Immediate)
            .expect("durability");
        {
            let mut table = txn.open_table(REDB_EVENTS).expect("table");
            table
                .insert((group, seq), record.as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    })
}

/// SQLite in WAL mode with the given `synchronous` setting (`FULL` or `NORMAL`): one transaction
/// per event into a `(group, seq)` table.
pub fn sqlite_per_event(
    dir: &Path,
    synchronous: &str,
    warmup: Duration,
    limit: impl Into<Limit>,
) -> Throughput {
    let conn = rusqlite::Connection::open(dir.join(format!("events-{synchronous}.sqlite")))
        .expect("open SQLite");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .expect("WAL mode");
    assert_eq!(mode.to_ascii_lowercase(), "wal");
    conn.execute_batch(&format!(
        "PRAGMA synchronous={synchronous};
         CREATE TABLE events (grp BLOB NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL,
                              PRIMARY KEY (grp, seq)) WITHOUT ROWID;"
    ))
    .expect("create the table");
    let group = [0x42u8; 16];
    let record = [0x5au8; RECORD_BYTES];
    let mut insert = conn
        .prepare("INSERT INTO events (grp, seq, body) VALUES (?1, ?2, ?3)")
        .expect("prepare");
    let mut seq = 0i64;
    timed_loop(warmup, limit, || {
        seq += 1;
        // Autocommit: every INSERT is its own transaction.
        insert
            .execute(rusqlite::params![&group[..], seq, &record[..]])
            .expect("insert");
    })
}

/// A store with one `scripted` familiar registered.
pub fn open_store(path: &Path, config: Config) -> Arc<Coven> {
    let coven = Coven::open(path, config).expect("open the store");
    coven
        .register_familiar(Familiar::new("ada", "Ada", "scripted"))
        .expect("register a familiar");
    Arc::new(coven)
}

pub fn new_group(coven: &Coven) -> String {
    coven
        .create_group(None, vec!["ada".into()], None)
        .expect("create a group")
        .id
}

/// `producers` threads call `append_user_message` in a loop on a durable store, on one shared
/// group or on one group each; every call returns only after its batch's durable commit.
pub fn library_producers(
    dir: &Path,
    producers: usize,
    group_each: bool,
    warmup: Duration,
    window: Duration,
) -> Throughput {
    let coven = open_store(&dir.join("coven.redb"), Config::default());
    let shared = new_group(&coven);
    let groups: Vec<String> = (0..producers)
        .map(|_| {
            if group_each {
                new_group(&coven)
            } else {
                shared.clone()
            }
        })
        .collect();
    let acked = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(producers + 1));
    let threads: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let (coven, acked, measuring, stop, ready) = (
                coven.clone(),
                acked.clone(),
                measuring.clone(),
                stop.clone(),
                ready.clone(),
            );
            std::thread::spawn(move || {
                let text = message_text();
                let mut latencies = Vec::new();
                ready.wait();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    coven
                        .append_user_message(&group, text.clone(), Some("bench".into()))
                        .expect("append");
                    acked.fetch_add(1, Ordering::Relaxed);
                    if measuring.load(Ordering::Relaxed) {
                        latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                }
                latencies
            })
        })
        .collect();
    ready.wait();
    std::thread::sleep(warmup);
    measuring.store(true, Ordering::Relaxed);
    let (before, start) = (acked.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(window);
    let (after, elapsed) = (acked.load(Ordering::Relaxed), start.elapsed());
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    for thread in threads {
        latencies_us.extend(thread.join().expect("producer thread"));
    }
    coven.close();
    Throughput {
        events: after - before,
        elapsed,
        latencies_us,
    }
}

/// Appends `events` user messages to one new group of a non-durable store (bulk load through the
/// library, `producers` threads), closes it and returns the group id and how long it took.
pub fn bulk_load(path: &Path, events: u64, producers: u64) -> (String, Duration) {
    let config = Config {
        durable: false,
        ..Config::default()
    };
    let coven = open_store(path, config);
    let group = new_group(&coven);
    let start = Instant::now();
    let threads: Vec<_> = (0..producers)
        .map(|index| {
            let (coven, group) = (coven.clone(), group.clone());
            let share = events / producers + u64::from(index < events % producers);
            std::thread::spawn(move || {
                let text = message_text();
                for _ in 0..share {
                    coven
                        .append_user_message(&group, text.clone(), Some("bench".into()))
                        .expect("append");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("loader thread");
    }
    coven.close();
    (group, start.elapsed())
}

/// What reading a whole group back costs.
#[derive(Debug, Clone, Copy)]
pub struct Resync {
    pub open: Duration,
    pub events: u64,
    pub read: Duration,
    /// CPU time the reading thread spent, which other load on the machine does not inflate.
    pub read_cpu: Duration,
}

impl Resync {
    pub fn eps(&self) -> f64 {
        self.events as f64 / self.read.as_secs_f64()
    }
}

/// Opens the store at `path` (timed), then reads `group` from seq 0 in pages of [`MAX_PAGE`]
/// with `events_since` (timed), checking that seq is contiguous.
pub fn resync(path: &Path, group: &str) -> Resync {
    let start = Instant::now();
    let coven = Coven::open(path, Config::default()).expect("reopen the store");
    let open = start.elapsed();
    let (start, cpu_start) = (Instant::now(), thread_cpu_time());
    let events = read_all(&coven, group);
    let (read, read_cpu) = (start.elapsed(), thread_cpu_time() - cpu_start);
    coven.close();
    Resync {
        open,
        events,
        read,
        read_cpu,
    }
}

/// CPU time consumed by the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if status != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Reads a whole group in pages; returns the number of events.
pub fn read_all(coven: &Coven, group: &str) -> u64 {
    let mut after = 0u64;
    loop {
        let page = coven
            .events_since(group, after, MAX_PAGE)
            .expect("events_since");
        let Some(last) = page.last() else {
            return after;
        };
        assert_eq!(last.seq, after + page.len() as u64, "seq is contiguous");
        after = last.seq;
    }
}

/// A host harness that streams `deltas` deltas as fast as it can; each carries the moment it
/// was handed to the sink (nanoseconds since `epoch`) as `<n>`.
struct Streamer {
    epoch: Instant,
    deltas: usize,
}

impl Harness for Streamer {
    fn run_turn(&self, _request: TurnRequest, sink: Arc<ReplySink>) -> coven_group::Result<bool> {
        for _ in 0..self.deltas {
            sink.delta(format!("<{}>", self.epoch.elapsed().as_nanos()));
        }
        Ok(true)
    }
}

/// Records when each streamed delta reached the listener.
struct Arrivals {
    epoch: Instant,
    expected: usize,
    state: Mutex<ArrivalState>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct ArrivalState {
    latencies_us: Vec<u32>,
    last_arrival: Duration,
}

impl GroupListener for Arrivals {
    fn on_updates(&self, updates: Vec<GroupChange>) -> coven_group::Result<()> {
        let arrival = self.epoch.elapsed();
        let arrival_ns = arrival.as_nanos();
        let mut state = self.state.lock().expect("arrivals");
        for change in updates {
            // A reply's first output arrives with the event that claims its seq; the rest as
            // deltas, several coalesced into one change when they share a batch.
            let text = match &change.update {
                GroupUpdate::EventAppended { event } if event.kind == EventKind::Familiar => {
                    &event.text
                }
                GroupUpdate::ReplyDelta { text, .. } => text,
                _ => continue,
            };
            for stamp in text.split('<').skip(1) {
                let emitted: u128 = stamp
                    .trim_end_matches('>')
                    .parse()
                    .expect("a delta's emit stamp");
                let micros = arrival_ns.saturating_sub(emitted) / 1_000;
                state.latencies_us.push(micros.min(u32::MAX as u128) as u32);
            }
            state.last_arrival = arrival;
        }
        if state.latencies_us.len() >= self.expected {
            self.done.notify_all();
        }
        Ok(())
    }
}

/// Fan-out figures: deltas delivered per second and per-delta latency from emit to listener.
#[derive(Debug, Clone)]
pub struct Fanout {
    pub deltas: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
}

impl Fanout {
    pub fn eps(&self) -> f64 {
        self.deltas as f64 / self.elapsed.as_secs_f64()
    }
}

/// One `send` to `members` host-harness members on a durable store, each streaming `deltas`
/// deltas with no delay; a subscriber receives every delta. The elapsed time runs from the
/// send to the last delta's arrival at the listener.
pub fn fanout(dir: &Path, members: usize, deltas: usize) -> Fanout {
    let epoch = Instant::now();
    let coven = Coven::open(dir.join("coven.redb"), Config::default()).expect("open the store");
    coven
        .register_host_harness("stream", Arc::new(Streamer { epoch, deltas }))
        .expect("register the harness");
    let ids: Vec<String> = (0..members).map(|m| format!("f{m}")).collect();
    for id in &ids {
        coven
            .register_familiar(Familiar::new(id.as_str(), id.as_str(), "stream"))
            .expect("register a familiar");
    }
    let group = coven.create_group(None, ids, None).expect("create a group");
    let expected = members * deltas;
    let arrivals = Arc::new(Arrivals {
        epoch,
        expected,
        state: Mutex::new(ArrivalState::default()),
        done: std::sync::Condvar::new(),
    });
    let rev = coven.get_group(&group.id).expect("snapshot").rev;
    let subscription = coven
        .subscribe(&group.id, rev, arrivals.clone())
        .expect("subscribe");
    let sent = epoch.elapsed();
    let turn = coven.send(&group.id, "stream".into(), None).expect("send");
    {
        let mut state = arrivals.state.lock().expect("arrivals");
        let deadline = Instant::now() + Duration::from_secs(120);
        while state.latencies_us.len() < expected && Instant::now() < deadline {
            state = arrivals
                .done
                .wait_timeout(state, Duration::from_millis(100))
                .expect("arrivals")
                .0;
        }
    }
    assert!(
        coven
            .wait_turn(&turn.turn_id, Duration::from_secs(60))
            .expect("wait_turn"),
        "the turn finished"
    );
    subscription.cancel();
    coven.close();
    let state = arrivals.state.lock().expect("arrivals");
    assert_eq!(state.latencies_us.len(), expected, "every delta delivered");
    Fanout {
        deltas: expected as u64,
        elapsed: state.last_arrival.saturating_sub(sent),
        latencies_us: state.latencies_us.clone(),
    }
}

/// A `Key:   123 kB` line of a /proc file (`status`, `meminfo`), in KiB.
pub fn proc_kib(file: &str, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(file).ok()?;
    let rest = text
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?;
    rest.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Peak resident set of this process so far (VmHWM), in MiB.
pub fn peak_rss_mb() -> f64 {
    proc_kib("/proc/self/status", "VmHWM").map_or(f64::NAN, |kib| kib / 1024.0)
}
