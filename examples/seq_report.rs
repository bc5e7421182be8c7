//! What the store sustains, in one run on one filesystem: durable appends through the library
//! against plain redb, SQLite and the fsync limit, resync of a 1,000,000-event group, fan-out of
//! streamed deltas to a subscriber, and peak memory. Prints a table, then one JSON line.
//!
//! ```sh
//! cargo run --release --example seq_report                 # 3 rounds, medians reported
//! cargo run --release --example seq_report -- --rounds 5   # more rounds on a noisy machine
//! COVEN_BENCH_DIR=/path/on/the/disk/to/test cargo run --release --example seq_report
//! ```
//!
//! Stores go under `$COVEN_BENCH_DIR` (default `target/`) and are removed afterwards.

#[path = "../benches/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Events in the resync store (`$COVEN_RESYNC_EVENTS` overrides it for quick profiling runs).
const RESYNC_EVENTS: u64 = 1_000_000;
/// Members and deltas per member in the fan-out run.
const FANOUT_MEMBERS: usize = 8;
const FANOUT_DELTAS: usize = 2_000;

const WARMUP: Duration = Duration::from_millis(300);
const WINDOW: Duration = Duration::from_secs(2);

fn main() {
    let options = options_from_args();
    let rounds = options.rounds;
    let started = Instant::now();
    let base = base_dir();
    eprintln!(
        "seq_report: {rounds} round(s), stores under {}",
        std::fs::canonicalize(&base)
            .unwrap_or(base.clone())
            .display()
    );

    // Every throughput figure is measured once per round, rounds interleaved, and the median
    // reported, so a noisy moment weighs on one sample of every figure rather than on one figure.
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}");
        let mut record = |key: &'static str, value: f64| {
            eprintln!("  {key:<28} {value:>14.0}");
            samples.entry(key).or_default().push(value);
        };
        if options.wants("fsync_eps") {
            let dir = scratch("fsync");
            record("fsync_eps", fsync_loop(dir.path(), WARMUP, WINDOW).eps());
        }
        if options.wants("redb_per_event_eps") {
            let dir = scratch("redb");
            let run = redb_per_event(dir.path(), WARMUP, WINDOW);
            record("redb_per_event_eps", run.eps());
        }
        for (key, synchronous) in [
            ("sqlite_full_per_event_eps", "FULL"),
            ("sqlite_normal_per_event_eps", "NORMAL"),
        ] {
            if options.wants(key) {
                let dir = scratch("sqlite");
                let run = sqlite_per_event(dir.path(), synchronous, WARMUP, WINDOW);
                record(key, run.eps());
            }
        }
        for (key, producers, group_each) in [
            ("durable_1_producer_eps", 1, false),
            ("durable_16_producers_eps", 16, false),
            ("durable_64_producers_eps", 64, false),
            ("durable_64_groups_eps", 64, true),
        ] {
            if !options.wants(key) {
                continue;
            }
            let dir = scratch("durable");
            let mut run = library_producers(dir.path(), producers, group_each, WARMUP, WINDOW);
            record(key, run.eps());
            if key == "durable_64_producers_eps" {
                p50.push(run.percentile_us(50.0));
                p99.push(run.percentile_us(99.0));
            }
        }
        if options.wants("fanout_deltas_eps") || options.wants("fanout_p99_delta_us") {
            let dir = scratch("fanout");
            let mut run = fanout(dir.path(), FANOUT_MEMBERS, FANOUT_DELTAS);
            record("fanout_deltas_eps", run.eps());
            record(
                "fanout_p99_delta_us",
                percentile(&mut run.latencies_us, 99.0),
            );
        }
    }

    let mut open_ms = Vec::new();
    let mut resync_eps = Vec::new();
    if options.wants("resync_eps") || options.wants("open_ms") {
        let resync_events = std::env::var("COVEN_RESYNC_EVENTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(RESYNC_EVENTS);
        eprintln!("bulk-loading {resync_events} events (non-durable) for the resync figures");
        let dir = scratch("resync");
        let path = dir.path().join("coven.redb");
        let (group, load) = bulk_load(&path, resync_events, 8);
        let file_mb = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
        eprintln!(
            "  loaded in {:.1} s ({:.0} events/s), file {file_mb:.0} MB",
            load.as_secs_f64(),
            resync_events as f64 / load.as_secs_f64()
        );
        for _ in 0..rounds {
            let run = resync(&path, &group);
            assert_eq!(run.events, resync_events);
            eprintln!(
                "  open {:.2} ms, read {} events in {:.3} s ({:.3} s of CPU: {:.0} events per CPU-second)",
                run.open.as_secs_f64() * 1e3,
                run.events,
                run.read.as_secs_f64(),
                run.read_cpu.as_secs_f64(),
                run.events as f64 / run.read_cpu.as_secs_f64()
            );
            open_ms.push(run.open.as_secs_f64() * 1e3);
            resync_eps.push(run.eps());
        }
    }

    let mut figures: BTreeMap<&str, f64> = samples
        .iter_mut()
        .map(|(key, values)| (*key, median(values)))
        .collect();
    figures.insert("p50_ack_us", median(&mut p50));
    figures.insert("p99_ack_us", median(&mut p99));
    figures.insert("resync_eps", median(&mut resync_eps));
    figures.insert("open_ms", median(&mut open_ms));
    figures.insert("peak_rss_mb", peak_rss_mb());

    print_table(&figures, rounds, started.elapsed());
    let line: serde_json::Map<String, Value> = figures
        .iter()
        .map(|(key, value)| ((*key).to_owned(), json!(round_figure(*value))))
        .collect();
    println!("{}", Value::Object(line));
}

struct Options {
    rounds: usize,
    /// Run only the figures whose key contains this (for profiling one measurement).
    only: Option<String>,
}

impl Options {
    fn wants(&self, key: &str) -> bool {
        self.only.as_deref().is_none_or(|only| key.contains(only))
    }
}

fn options_from_args() -> Options {
    let mut options = Options {
        rounds: 3,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--rounds", Some(n)) => match n.parse() {
                Ok(n) if n >= 1 => options.rounds = n,
                _ => usage(),
            },
            ("--only", Some(key)) => options.only = Some(key),
            _ => usage(),
        }
    }
    options
}

fn usage() -> ! {
    eprintln!("usage: seq_report [--rounds N] [--only FIGURE]   (N ≥ 1, default 3)");
    std::process::exit(2);
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn round_figure(value: f64) -> f64 {
    if value.abs() >= 100.0 {
        value.round()
    } else {
        (value * 100.0).round() / 100.0
    }
}

fn print_table(figures: &BTreeMap<&str, f64>, rounds: usize, took: Duration) {
    let get = |key: &str| figures.get(key).copied().unwrap_or(f64::NAN);
    println!("coven-group seq_report — {}", machine());
    println!(
        "median of {rounds} round(s); took {:.0} s\n",
        took.as_secs_f64()
    );
    let rows: &[(&str, &str, &str)] = &[
        (
            "fsync_eps",
            "events/s",
            "write+fdatasync of a 200 B record (durable limit, 1 commit/event)",
        ),
        (
            "redb_per_event_eps",
            "events/s",
            "plain redb, 1 durable commit per event",
        ),
        (
            "sqlite_full_per_event_eps",
            "events/s",
            "SQLite WAL synchronous=FULL, 1 txn per event (durable)",
        ),
        (
            "sqlite_normal_per_event_eps",
            "events/s",
            "SQLite WAL synchronous=NORMAL, 1 txn per event (NOT durable)",
        ),
        (
            "durable_1_producer_eps",
            "events/s",
            "library, 1 producer, durable ack",
        ),
        (
            "durable_16_producers_eps",
            "events/s",
            "library, 16 producers, 1 group, durable ack",
        ),
        (
            "durable_64_producers_eps",
            "events/s",
            "library, 64 producers, 1 group, durable ack",
        ),
        ("p50_ack_us", "µs", "  ack latency p50, 64 producers"),
        ("p99_ack_us", "µs", "  ack latency p99, 64 producers"),
        (
            "durable_64_groups_eps",
            "events/s",
            "library, 64 producers, 1 group each, durable ack",
        ),
        (
            "resync_eps",
            "events/s",
            "events_since pages over a 1,000,000-event group",
        ),
        ("open_ms", "ms", "Coven::open of that store"),
        (
            "fanout_deltas_eps",
            "deltas/s",
            "8 members x 2,000 deltas, durable, to a subscriber",
        ),
        (
            "fanout_p99_delta_us",
            "µs",
            "  p99 emit -> listener per delta",
        ),
        (
            "peak_rss_mb",
            "MiB",
            "peak resident memory of the whole run (VmHWM)",
        ),
    ];
    println!("| figure | value | unit | what |");
    println!("|---|---:|---|---|");
    for (key, unit, what) in rows {
        println!("| {key} | {} | {unit} | {what} |", pretty(get(key)));
    }
    let sqlite = get("sqlite_full_per_event_eps");
    let redb = get("redb_per_event_eps");
    println!("\n| target | measured | holds |");
    println!("|---|---:|---|");
    let target = |name: &str, measured: f64, bound: f64, at_least: bool| {
        let holds = if at_least {
            measured >= bound
        } else {
            measured < bound
        };
        let relation = if at_least { "≥" } else { "<" };
        println!(
            "| {name} {relation} {} | {} | {} |",
            pretty(bound),
            pretty(measured),
            if holds { "yes" } else { "NO" }
        );
    };
    target(
        "durable_64 / sqlite_full",
        get("durable_64_producers_eps") / sqlite,
        50.0,
        true,
    );
    target(
        "durable_64 / redb_per_event",
        get("durable_64_producers_eps") / redb,
        20.0,
        true,
    );
    target(
        "durable_1 / redb_per_event",
        get("durable_1_producer_eps") / redb,
        0.9,
        true,
    );
    target("resync_eps", get("resync_eps"), 2_000_000.0, true);
    target("open_ms", get("open_ms"), 50.0, false);
    target(
        "fanout_p99_delta_us",
        get("fanout_p99_delta_us"),
        5_000.0,
        false,
    );
    target("peak_rss_mb", get("peak_rss_mb"), 256.0, false);
    println!();
}

fn pretty(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".to_owned();
    }
    if value.abs() >= 100.0 {
        let digits = format!("{:.0}", value.abs());
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if value < 0.0 {
            out.insert(0, '-');
        }
        out
    } else {
        format!("{value:.2}")
    }
}

/// CPU model, cores, memory and the filesystem the stores lived on.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib =
        proc_kib("/proc/meminfo", "MemTotal").map_or(f64::NAN, |kib| kib / 1024.0 / 1024.0);
    format!(
        "{cpu}, {cores} cores, {mem_gib:.0} GiB RAM, {}, {}",
        filesystem(),
        std::env::consts::OS
    )
}

/// The mount (device and type) holding the benchmark directory, from /proc/mounts.
fn filesystem() -> String {
    let dir = std::fs::canonicalize(base_dir()).unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (device, point, kind) = (parts.next()?, parts.next()?, parts.next()?);
            dir.starts_with(point)
                .then(|| (point.len(), format!("{kind} on {device}")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
        .unwrap_or_else(|| "unknown filesystem".to_owned())
}
