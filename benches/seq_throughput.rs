//! `cargo bench`: durable appends through the library against plain redb, SQLite and the fsync
//! limit, and paged resync. For every figure in one run with medians, use
//! `cargo run --release --example seq_report`.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use coven_group::Config;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use support::*;

/// Events in the store the resync benchmark pages through.
const RESYNC_EVENTS: u64 = 100_000;

fn baselines(c: &mut Criterion) {
    let mut group = c.benchmark_group("baseline_per_event");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.bench_function("fsync_200B", |b| {
        let dir = scratch("fsync");
        b.iter_custom(|iters| fsync_loop(dir.path(), Duration::ZERO, Limit::Events(iters)).elapsed)
    });
    group.bench_function("redb_durable", |b| {
        b.iter_custom(|iters| {
            let dir = scratch("redb");
            redb_per_event(dir.path(), Duration::ZERO, Limit::Events(iters)).elapsed
        })
    });
    for sync in ["FULL", "NORMAL"] {
        group.bench_function(format!("sqlite_wal_{sync}"), |b| {
            b.iter_custom(|iters| {
                let dir = scratch("sqlite");
                sqlite_per_event(dir.path(), sync, Duration::ZERO, Limit::Events(iters)).elapsed
            })
        });
    }
    group.finish();
}

fn library(c: &mut Criterion) {
    let mut group = c.benchmark_group("coven_durable_append");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    group.bench_function("1_producer", |b| {
        let dir = scratch("durable");
        let coven = open_store(&dir.path().join("coven.redb"), Config::default());
        let group = new_group(&coven);
        let text = message_text();
        b.iter(|| {
            coven
                .append_user_message(&group, text.clone(), None)
                .expect("append")
        });
        coven.close();
    });
    for producers in [16usize, 64] {
        group.bench_function(format!("{producers}_producers_one_group"), |b| {
            let dir = scratch("durable");
            let coven = open_store(&dir.path().join("coven.redb"), Config::default());
            let group = new_group(&coven);
            b.iter_custom(|iters| {
                // `iters` events split across the producers; time until the last is acked.
                let start = Instant::now();
                let threads: Vec<_> = (0..producers as u64)
                    .map(|p| {
                        let (coven, group) = (Arc::clone(&coven), group.clone());
                        let share =
                            iters / producers as u64 + u64::from(p < iters % producers as u64);
                        std::thread::spawn(move || {
                            let text = message_text();
                            for _ in 0..share {
                                coven
                                    .append_user_message(&group, text.clone(), None)
                                    .expect("append");
                            }
                        })
                    })
                    .collect();
                for thread in threads {
                    thread.join().expect("producer");
                }
                start.elapsed()
            });
            coven.close();
        });
    }
    group.finish();
}

fn resync(c: &mut Criterion) {
    let dir = scratch("resync");
    let path = dir.path().join("coven.redb");
    let (group_id, _) = bulk_load(&path, RESYNC_EVENTS, 4);
    let coven = coven_group::Coven::open(&path, Config::default()).expect("open");
    let mut group = c.benchmark_group("resync");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RESYNC_EVENTS));
    group.bench_function("events_since_pages_100k", |b| {
        b.iter(|| assert_eq!(read_all(&coven, &group_id), RESYNC_EVENTS))
    });
    group.finish();
    coven.close();
    let mut group = c.benchmark_group("open");
    group.sample_size(10);
    group.bench_function("open_100k_event_store", |b| {
        b.iter_batched(
            || (),
            |()| coven_group::Coven::open(&path, Config::default()).expect("open"),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, baselines, library, resync);
criterion_main!(benches);
