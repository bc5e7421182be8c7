//! Damaged files and atomic creation.
//!
//! A damaged store file is an error, never a panic: random bytes over the end of the file, a
//! region in its middle, scattered pages or its header make `Coven::open` return `Storage` and
//! leave the file byte-for-byte as it was, or open a store whose every read, `check()`, write and
//! `close()` answers with a result or an error. The damage is seeded (`COVEN_GROUP_DAMAGE_SEED`
//! replays a run; the default seeds always run).
//!
//! A store is created atomically: the path holds nothing or a complete store, whatever moment a
//! crash (SIGKILL) hits the first open; a zero-length file left by an earlier release is a new
//! store; a temporary file left by a crash blocks nothing and is swept; two creators of one path
//! never replace each other's store.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use coven_group::{Config, Coven, Error, GroupChange, GroupListener, MAX_PAGE};

// ---- damaged files ----

/// What a healthy store held before it was damaged: the ids its reads are asked about.
struct Pristine {
    bytes: Vec<u8>,
    familiars: Vec<String>,
    groups: Vec<String>,
    sessions: Vec<String>,
}

/// A closed store of a few hundred KiB (several groups, long timelines, sessions, cursors), so
/// that its tail, its middle and its header are different pages.
fn pristine() -> Pristine {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pristine.redb");
    let coven = Coven::open(&path, Config::default()).unwrap();
    register(&coven, &[("ada", "Ada"), ("bo", "Bo"), ("cara", "Cara")]);
    let mut groups = Vec::new();
    for (title, members) in [
        ("one", &["ada", "bo"][..]),
        ("two", &["bo", "cara"]),
        ("three", &["ada", "bo", "cara"]),
    ] {
        let group = coven
            .create_group(Some(title.into()), ids(members), None)
            .unwrap();
        for i in 0..180 {
            let text = format!("{title} {i} {}", "lorem ipsum ".repeat(1 + i % 40));
            coven
                .append_user_message(&group.id, text, Some("Sam".into()))
                .unwrap();
        }
        coven.set_cursor(&group.id, "phone", 17).unwrap();
        groups.push(group.id);
    }
    coven.rename_group(&groups[0], "renamed".into()).unwrap();
    coven.remove_member(&groups[2], "cara").unwrap();
    let sessions: Vec<String> = groups
        .iter()
        .flat_map(|group| coven.sessions_of(group).unwrap())
        .map(|session| session.id)
        .collect();
    coven.archive_session(&sessions[0]).unwrap();
    coven.close();
    let bytes = file_bytes(&path);
    assert!(bytes.len() >= 256 << 10, "store of {} bytes", bytes.len());
    Pristine {
        bytes,
        familiars: ids(&["ada", "bo", "cara"]),
        groups,
        sessions,
    }
}

/// splitmix64, seeded per damage case so every case is reproducible on its own.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        for byte in bytes {
            *byte = self.next() as u8;
        }
    }
}

const PAGE: usize = 4096;

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The last `n` bytes.
    Tail(usize),
    /// 16 KiB at a page-aligned offset in the middle half of the file.
    Middle,
    /// Eight whole pages anywhere after the first.
    ScatteredPages,
    /// Eight pages after the first with their first byte (a B-tree page's type) kept: a torn
    /// write inside a page, which opening does not look at and reads do.
    PageBodies,
    /// The first page: the magic number, the header and both commit slots.
    Header,
    /// The header after the magic number, which redb then has to parse.
    HeaderPastMagic,
}

impl Damage {
    fn apply(self, bytes: &mut [u8], noise: &mut Noise) {
        let len = bytes.len();
        match self {
            Damage::Tail(n) => noise.fill(&mut bytes[len - n..]),
            Damage::Middle => {
                let at = (len / 4 + noise.below(len / 2)) / PAGE * PAGE;
                noise.fill(&mut bytes[at..at + 4 * PAGE]);
            }
            Damage::ScatteredPages => {
                for _ in 0..8 {
                    let page = 1 + noise.below(len / PAGE - 1);
                    noise.fill(&mut bytes[page * PAGE..(page + 1) * PAGE]);
                }
            }
            Damage::PageBodies => {
                for _ in 0..8 {
                    let page = 1 + noise.below(len / PAGE - 1);
                    noise.fill(&mut bytes[page * PAGE + 1..(page + 1) * PAGE]);
                }
            }
            Damage::Header => noise.fill(&mut bytes[..PAGE]),
            Damage::HeaderPastMagic => noise.fill(&mut bytes[16..PAGE]),
        }
    }
}

const DAMAGES: [Damage; 7] = [
    Damage::Tail(4 << 10),
    Damage::Tail(64 << 10),
    Damage::Middle,
    Damage::ScatteredPages,
    Damage::PageBodies,
    Damage::Header,
    Damage::HeaderPastMagic,
];

/// Seeds every damage runs with; `COVEN_GROUP_DAMAGE_SEED` adds one.
fn seeds() -> Vec<u64> {
    let mut seeds = vec![1, 2, 3, 4];
    if let Some(seed) = std::env::var("COVEN_GROUP_DAMAGE_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
    {
        seeds.push(seed);
    }
    seeds
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

struct Ignore;

impl GroupListener for Ignore {
    fn on_updates(&self, _updates: Vec<GroupChange>) -> Result<(), Error> {
        Ok(())
    }
}

/// Which public calls a test makes on a damaged store that opened.
#[derive(Clone, Copy, PartialEq)]
enum Calls {
    /// Every read, asked about ids the store held before the damage.
    Reads,
    /// `check()`, a write, `check()` again.
    CheckAndWrite,
}

/// Makes `calls` on `coven`, then closes it. Returns the calls that panicked.
fn exercise(coven: &Coven, pristine: &Pristine, calls: Calls) -> Vec<String> {
    type Op<'a> = (String, Box<dyn Fn() + 'a>);
    fn op<'a, T>(name: String, call: impl Fn() -> Result<T, Error> + 'a) -> Op<'a> {
        (
            name,
            Box::new(move || {
                let _ = call();
            }),
        )
    }
    let mut ops: Vec<Op> = Vec::new();
    if calls == Calls::Reads {
        ops.push(op("list_familiars".into(), || coven.list_familiars()));
        ops.push(op("list_groups".into(), || coven.list_groups()));
        for familiar in &pristine.familiars {
            ops.push(op(format!("get_familiar {familiar}"), move || {
                coven.get_familiar(familiar)
            }));
        }
        for group in &pristine.groups {
            ops.push(op(format!("get_group {group}"), move || {
                coven.get_group(group)
            }));
            ops.push(op(format!("events_since {group}"), move || {
                coven.events_since(group, 0, MAX_PAGE)
            }));
            ops.push(op(format!("changes_since {group}"), move || {
                coven.changes_since(group, 0, MAX_PAGE)
            }));
            ops.push(op(format!("wait_for_changes {group}"), move || {
                coven.wait_for_changes(group, 0, MAX_PAGE, Duration::ZERO)
            }));
            ops.push(op(format!("sessions_of {group}"), move || {
                coven.sessions_of(group)
            }));
            ops.push(op(format!("get_cursor {group}"), move || {
                coven.get_cursor(group, "phone")
            }));
            ops.push(op(format!("subscribe {group}"), move || {
                coven
                    .subscribe(group, 0, Arc::new(Ignore))
                    .map(|subscription| subscription.cancel())
            }));
        }
        for session in &pristine.sessions {
            ops.push(op(format!("get_session {session}"), move || {
                coven.get_session(session)
            }));
        }
    } else {
        ops.push(op("check".into(), || coven.check()));
        ops.push(op("append_user_message".into(), || {
            coven.append_user_message(&pristine.groups[0], "after the damage".into(), None)
        }));
        ops.push(op("check after a write".into(), || coven.check()));
    }
    ops.push(op("close".into(), || {
        coven.close();
        Ok(())
    }));
    ops.into_iter()
        .filter_map(|(name, call)| {
            catch_unwind(AssertUnwindSafe(call))
                .err()
                .map(|payload| format!("{name} panicked: {}", panic_text(payload.as_ref())))
        })
        .collect()
}

/// Opens every seeded damage of a pristine store: an open either fails with `Storage` and leaves
/// the file's bytes as they were, or succeeds and `calls` never panic. Panics listing every case
/// that broke either rule.
fn open_every_damage(calls: Calls) {
    let pristine = pristine();
    let dir = tempfile::tempdir().unwrap();
    let mut problems = Vec::new();
    let (mut refused, mut opened) = (0, 0);
    for seed in seeds() {
        for (index, damage) in DAMAGES.into_iter().enumerate() {
            let case = format!("{damage:?} seed {seed}");
            let mut noise = Noise(seed.wrapping_mul(31).wrapping_add(index as u64));
            let mut bytes = pristine.bytes.clone();
            damage.apply(&mut bytes, &mut noise);
            assert_ne!(bytes, pristine.bytes, "{case}: the damage changed nothing");
            let path = dir.path().join(format!("damaged-{seed}-{index}.redb"));
            std::fs::write(&path, &bytes).unwrap();

            match catch_unwind(|| Coven::open(&path, Config::default())) {
                Err(payload) => problems.push(format!(
                    "{case}: Coven::open panicked: {}",
                    panic_text(payload.as_ref())
                )),
                Ok(Err(err)) => {
                    refused += 1;
                    if !matches!(err, Error::Storage { .. }) {
                        problems.push(format!("{case}: refused with {err:?}, not Storage"));
                    }
                    if file_bytes(&path) != bytes {
                        problems.push(format!("{case}: the refused open ({err}) changed the file"));
                    }
                }
                Ok(Ok(coven)) => {
                    opened += 1;
                    for panicked in exercise(&coven, &pristine, calls) {
                        problems.push(format!("{case}: {panicked}"));
                    }
                }
            }
        }
    }
    eprintln!("{refused} damaged files refused, {opened} opened");
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(refused > 0, "no damage was detected at all");
    assert!(
        opened > 0,
        "no damaged store opened, so no call on one was tried"
    );
}

#[test]
fn a_damaged_file_is_an_error_never_a_panic_and_a_refused_open_changes_no_byte() {
    open_every_damage(Calls::CheckAndWrite);
}

#[test]
fn every_read_of_a_damaged_store_is_an_error_never_a_panic() {
    open_every_damage(Calls::Reads);
}

#[test]
fn a_store_refused_for_its_newer_schema_keeps_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.redb");
    Coven::open(&path, Config::default()).unwrap().close();
    claim_newer_schema(&path);
    let before = file_bytes(&path);
    for _ in 0..2 {
        let refused = Coven::open(&path, Config::default());
        assert!(
            file_bytes(&path) == before,
            "opening and refusing a newer store changed its file"
        );
        match refused {
            Err(Error::Storage { reason }) => {
                assert!(reason.contains("newer"), "{reason}");
                assert!(reason.contains("left as it was"), "{reason}");
            }
            other => panic!("a newer store was not refused: {:?}", other.map(|_| ())),
        }
    }
}

// ---- atomic creation ----

/// Names in `dir` other than the stores themselves: what a creation left behind.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".redb"))
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Set (to a directory) only in the child process of the creation crash test.
const CREATE_DIR_ENV: &str = "COVEN_GROUP_CREATE_DIR";
const CREATE_CHILD_TEST: &str = "creation_child";
const CREATING: &str = "@@creating ";
const CREATED: &str = "@@created ";
/// The child creates at most this many stores, so one the parent fails to kill stops by itself.
const CHILD_STORES: usize = 400;

fn child_store(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("store-{index}.redb"))
}

/// The creation crash test's child: creates (opens, then closes) stores 0, 1, 2, … in a loop,
/// saying when each starts and ends. A no-op unless the parent set `CREATE_DIR_ENV`.
#[test]
fn creation_child() {
    let Some(dir) = std::env::var_os(CREATE_DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    for index in 0..CHILD_STORES {
        println!("{CREATING}{index}");
        let coven = Coven::open(child_store(&dir, index), Config::default())
            .unwrap_or_else(|err| panic!("child: creating store {index}: {err}"));
        coven.close();
        println!("{CREATED}{index}");
    }
}

/// Kills the child if the parent panics before it does.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the child in `dir`, SIGKILLs it `fraction` of the way (by the child's own pace) into
/// creating store `target`, and returns the highest store index it started.
fn create_until_killed(dir: &Path, target: usize, fraction: f64) -> usize {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            CREATE_CHILD_TEST,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CREATE_DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = Reaper(child);
    let mut reader = BufReader::new(child.0.stdout.take().unwrap());
    let mut started = None;
    let mut began = Instant::now();
    let mut pace = Duration::ZERO;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let Some(complete) = line.strip_suffix('\n') else {
            continue;
        };
        if let Some((_, index)) = complete.split_once(CREATING) {
            let index: usize = index.parse().unwrap();
            started = Some(index);
            began = Instant::now();
            if index == target {
                // A random moment of this creation, judged by how long the earlier ones took.
                std::thread::sleep(pace.mul_f64(fraction));
                child.0.kill().unwrap();
            }
        } else if complete.contains(CREATED) {
            pace = pace.max(began.elapsed());
        }
    }
    let status = child.0.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the child was not killed ({status})"
    );
    started.expect("the child started no creation")
}

#[test]
fn a_crash_at_any_moment_of_a_first_open_never_leaves_an_unopenable_path() {
    let mut rng = Rng::seeded("COVEN_GROUP_CREATE_SEED");
    let mut outcomes = (0, 0);
    for round in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let target = rng.between(2, 3) as usize;
        // Half the stores start as the zero-length file an interrupted open of an earlier
        // release left, which must be treated as a new store just as atomically.
        let empty_first = rng.between(0, 1) == 1;
        if empty_first {
            for index in 0..=target {
                let path = child_store(dir.path(), index);
                std::fs::write(&path, b"").unwrap();
                // As the earlier release created it.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
        let fraction = rng.between(0, 1000) as f64 / 1000.0;
        let last = create_until_killed(dir.path(), target, fraction);
        let context = format!(
            "round {round} (killed {fraction:.3} of a creation's time after store {target} started, empty \
             files first: {empty_first})"
        );
        let killed_store = child_store(dir.path(), last);
        match std::fs::metadata(&killed_store).map(|m| m.len()) {
            Ok(len) if len > 0 => outcomes.1 += 1,
            _ => outcomes.0 += 1,
        }
        for index in 0..=last {
            let path = child_store(dir.path(), index);
            let coven = Coven::open(&path, Config::default()).unwrap_or_else(|err| {
                panic!("{context}: store {index} cannot be opened after the crash: {err}")
            });
            assert_clean_and_idle(&coven);
            assert!(coven.list_groups().unwrap().is_empty(), "{context}");
            coven.close();
            assert_eq!(mode(&path), 0o600, "{context}: store {index}");
        }
        assert_eq!(
            leftovers(dir.path()),
            Vec::<String>::new(),
            "{context}: a creation left files behind"
        );
    }
    eprintln!(
        "killed stores: {} not yet in place, {} in place",
        outcomes.0, outcomes.1
    );
}

#[test]
fn an_empty_file_is_a_new_store_and_a_crash_leftover_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coven.redb");
    // What an earlier release left when its first open was interrupted, and what a crash of
    // this one leaves while it builds a store.
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let leftover = dir.path().join(".coven.redb.creating-00001a2b00c0ffee0");
    std::fs::write(&leftover, vec![0x5a; 10_000]).unwrap();

    let coven = Coven::open(&path, Config::default()).unwrap();
    register(&coven, &[("ada", "Ada")]);
    let group = coven.create_group(None, ids(&["ada"]), None).unwrap();
    coven
        .append_user_message(&group.id, "kept".into(), None)
        .unwrap();
    assert_eq!(mode(&path), 0o600, "the new store is owner-only");
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    coven.close();

    let coven = Coven::open(&path, Config::default()).unwrap();
    assert_eq!(coven.get_group(&group.id).unwrap().events[0].text, "kept");
    assert_clean(&coven);
}

#[test]
fn two_creators_of_one_path_never_replace_each_others_store() {
    const CREATORS: usize = 4;
    for round in 0..12 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.redb");
        if round % 2 == 1 {
            std::fs::write(&path, b"").unwrap();
        }
        let start = Arc::new(Barrier::new(CREATORS));
        // Each creator that opens the store writes its name and keeps the store open until every
        // creator has tried, so a later creator could only win by replacing it.
        let tried = Arc::new(Barrier::new(CREATORS));
        let creators: Vec<_> = (0..CREATORS)
            .map(|creator| {
                let (path, start, tried) = (path.clone(), start.clone(), tried.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let opened = Coven::open(&path, Config::default());
                    let written = opened.as_ref().ok().map(|coven| {
                        register(coven, &[(&format!("creator{creator}"), "Creator")]);
                    });
                    tried.wait();
                    match opened {
                        Ok(coven) => {
                            coven.close();
                            written.map(|()| creator)
                        }
                        Err(Error::Conflict { .. }) => None,
                        Err(err) => panic!("round {round}: creator {creator}: {err}"),
                    }
                })
            })
            .collect();
        let winners: Vec<usize> = creators
            .into_iter()
            .filter_map(|creator| creator.join().unwrap())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let coven = Coven::open(&path, Config::default()).unwrap();
        let familiars: Vec<String> = coven
            .list_familiars()
            .unwrap()
            .into_iter()
            .map(|familiar| familiar.id)
            .collect();
        assert_eq!(
            familiars,
            vec![format!("creator{}", winners[0])],
            "round {round}"
        );
        assert_eq!(leftovers(dir.path()), Vec::<String>::new(), "round {round}");
    }
}
