//! Logs: with a subscriber installed, a turn, each member run (harness kind, pid and exit status,
//! how it ended and why), writer batches, subscription re-reads from the store, and open and
//! close are logged as structured events with their spans; no prompt or reply text is.
//!
//! The library logs from its own threads, so the capture is the process's global subscriber,
//! installed once for this test binary; the tests take turns (`serial`) and each reads only what
//! was logged while it ran.

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use coven_group::{
    Config, Coven, Error, EventKind, GroupChange, GroupListener, SUBSCRIPTION_QUEUE_LIMIT,
};
use crossbeam_channel::{Receiver, Sender};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

use common::*;

/// A program the `command` harness cannot find: its member fails at start.
const MISSING_PROGRAM: &str = "coven-no-such-program";
/// The user's message; its words reach every prompt and the scripted replies.
const MESSAGE: &str = "zephyr quokka marmalade";

// ---- the capture ----

/// Fields as text: strings and `%`-formatted values as they are, others as `Debug`.
#[derive(Clone, Debug, Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// One event as the capture saw it: its level, its fields, and the spans it was logged in.
#[derive(Clone, Debug)]
struct Captured {
    level: Level,
    fields: Fields,
    /// Innermost first: (span name, span fields).
    spans: Vec<(String, Fields)>,
}

impl Captured {
    fn message(&self) -> &str {
        self.fields.0.get("message").map_or("", String::as_str)
    }

    /// The event's own field.
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.0.get(name).map(String::as_str)
    }

    /// A field of the innermost enclosing span named `span`.
    fn span_field(&self, span: &str, name: &str) -> Option<&str> {
        self.spans
            .iter()
            .find(|(span_name, _)| span_name == span)
            .and_then(|(_, fields)| fields.0.get(name))
            .map(String::as_str)
    }

    /// Every piece of text the event carries, its spans' fields included.
    fn texts(&self) -> Vec<&str> {
        let own = self.fields.0.values();
        let spans = self.spans.iter().flat_map(|(_, fields)| fields.0.values());
        own.chain(spans).map(String::as_str).collect()
    }
}

#[derive(Default)]
struct Capture {
    events: Mutex<Vec<Captured>>,
    /// Notified on every captured event.
    captured: Condvar,
    /// What a `fmt` subscriber printed: the text a host sees in its log.
    printed: Arc<Mutex<Vec<u8>>>,
}

struct CaptureLayer(&'static Capture);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for CaptureLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let spans = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .map(|span| {
                        let fields = span.extensions().get::<Fields>().cloned();
                        (span.name().to_owned(), fields.unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        lock(&self.0.events).push(Captured {
            level: *event.metadata().level(),
            fields,
            spans,
        });
        self.0.captured.notify_all();
    }
}

struct Printed(Arc<Mutex<Vec<u8>>>);

impl Write for Printed {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capture as the global subscriber (once), takes this test's turn, and clears what
/// earlier tests captured.
fn capture() -> (&'static Capture, MutexGuard<'static, ()>) {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    static SERIAL: Mutex<()> = Mutex::new(());
    let capture = *CAPTURE.get_or_init(|| {
        let capture: &'static Capture = Box::leak(Box::default());
        let printed = capture.printed.clone();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("coven_group=trace"))
            .with(CaptureLayer(capture))
            .with(tracing_subscriber::fmt::layer().with_writer(move || Printed(printed.clone())));
        tracing::subscriber::set_global_default(subscriber).expect("install the capture");
        capture
    });
    let serial = lock(&SERIAL);
    lock(&capture.events).clear();
    lock(&capture.printed).clear();
    (capture, serial)
}

impl Capture {
    fn events(&self) -> Vec<Captured> {
        lock(&self.events).clone()
    }

    fn printed(&self) -> String {
        String::from_utf8_lossy(&lock(&self.printed)).into_owned()
    }

    /// The events with this message.
    fn named(&self, message: &str) -> Vec<Captured> {
        self.events()
            .into_iter()
            .filter(|event| event.message() == message)
            .collect()
    }

    /// Waits (at most [`GUARD`]) until an event with this message that satisfies `matches` is
    /// captured, then returns the one such event. For what the library logs after answering
    /// its caller (the writer logs a batch once it has answered and published).
    fn wait_for_one(&self, message: &str, matches: impl Fn(&Captured) -> bool) -> Captured {
        let deadline = Instant::now() + GUARD;
        let mut events = lock(&self.events);
        while !events
            .iter()
            .any(|event| event.message() == message && matches(event))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {message:?} event within {GUARD:?}");
            events = self
                .captured
                .wait_timeout(events, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        drop(events);
        self.one(message, matches)
    }

    /// The one event with this message that satisfies `matches`.
    fn one(&self, message: &str, matches: impl Fn(&Captured) -> bool) -> Captured {
        let found: Vec<Captured> = self
            .named(message)
            .into_iter()
            .filter(|event| matches(event))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one {message:?} event that matches, found {found:#?}; everything \
             captured:\n{}",
            self.printed()
        );
        found.into_iter().next().unwrap()
    }

    /// Fails when any captured event, span field or printed line contains `text`.
    fn assert_absent(&self, text: &str) {
        for event in self.events() {
            assert!(
                !event.texts().iter().any(|logged| logged.contains(text)),
                "{text:?} was logged: {event:#?}"
            );
        }
        let printed = self.printed();
        assert!(!printed.contains(text), "{text:?} was printed:\n{printed}");
    }
}

/// The event was logged inside member `familiar`'s run of `turn_id`.
fn in_member(event: &Captured, turn_id: &str, familiar: &str) -> bool {
    event.span_field("turn", "turn_id") == Some(turn_id)
        && event.span_field("member", "familiar") == Some(familiar)
}

// ---- the tests ----

#[test]
fn a_turn_logs_each_member_run_with_its_harness_outcome_and_reason_but_no_text() {
    init_path();
    let (capture, _serial) = capture();
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        allowed_programs: vec![MISSING_PROGRAM.into(), paint()],
        scripted_delay_ms: 0,
        ..Config::default()
    };
    let coven = Coven::open(dir.path().join("coven.redb"), config).unwrap();
    coven
        .register_familiar(familiar("ada", "Ada", "scripted"))
        .unwrap();
    let mut missing = familiar("nope", "Nope", "command");
    missing.argv = vec![MISSING_PROGRAM.into()];
    coven.register_familiar(missing).unwrap();
    // Prints "partial" and exits with status 4.
    let mut painter = familiar("painter", "Painter", "command");
    painter.argv = vec![paint(), "fail".into()];
    coven.register_familiar(painter).unwrap();
    let project = dir.path().to_string_lossy().into_owned();
    let group = coven
        .create_group(None, ids(&["ada", "nope", "painter"]), Some(project))
        .unwrap();

    let turn = coven
        .send(&group.id, MESSAGE.into(), Some("Sam".into()))
        .unwrap();
    finish_turn(&coven, &turn.turn_id);
    let snapshot = coven.get_group(&group.id).unwrap();
    let turn_id = turn.turn_id.as_str();

    // The turn: started and ended at info, with its ids (span), member count and duration.
    let in_turn = |event: &Captured| {
        event.span_field("turn", "turn_id") == Some(turn_id)
            && event.span_field("turn", "group_id") == Some(group.id.as_str())
    };
    let started = capture.one("turn started", in_turn);
    assert_eq!(started.level, Level::INFO);
    assert_eq!(started.field("members"), Some("3"));
    let ended = capture.one("turn ended", in_turn);
    assert_eq!(ended.level, Level::INFO);
    assert_eq!(ended.field("members"), Some("3"));
    assert_eq!(ended.field("failed"), Some("2"), "nope and painter failed");
    assert!(ended.field("duration_ms").is_some(), "{ended:#?}");

    // The scripted member completed: debug, with its harness kind and the reply's size.
    let ada_reply = reply_of(&snapshot, turn_id, "ada");
    assert!(ada_reply.error.is_none(), "{ada_reply:#?}");
    let ada = capture.one("member run ended", |e| in_member(e, turn_id, "ada"));
    assert_eq!(ada.level, Level::DEBUG);
    assert_eq!(ada.span_field("member", "harness"), Some("scripted"));
    assert_eq!(ada.field("outcome"), Some("completed"));
    assert_eq!(
        ada.field("reply_bytes"),
        Some(ada_reply.text.len().to_string().as_str())
    );
    assert!(ada.field("duration_ms").is_some(), "{ada:#?}");

    // The member whose program does not exist: warn, with the reason its event shows.
    let nope_reply = reply_of(&snapshot, turn_id, "nope");
    let nope_error = nope_reply.error.as_ref().expect("nope failed");
    assert!(
        nope_error.message.contains("was not found on PATH"),
        "{nope_error:#?}"
    );
    let nope = capture.one("member run ended", |e| in_member(e, turn_id, "nope"));
    assert_eq!(nope.level, Level::WARN);
    assert_eq!(nope.span_field("member", "harness"), Some("command"));
    assert_eq!(nope.field("outcome"), Some("failed"));
    assert_eq!(nope.field("reason"), Some(nope_error.message.as_str()));
    assert!(
        capture
            .named("process started")
            .iter()
            .all(|e| !in_member(e, turn_id, "nope")),
        "nope never started a process"
    );

    // The process that exits 4: its pid at start and its exit status, inside its member's span,
    // then a warn with the reason.
    let painter_reply = reply_of(&snapshot, turn_id, "painter");
    let painter_error = painter_reply.error.as_ref().expect("painter failed");
    assert!(
        painter_error.message.contains("exited with status 4"),
        "{painter_error:#?}"
    );
    let spawned = capture.one("process started", |e| in_member(e, turn_id, "painter"));
    assert_eq!(spawned.level, Level::DEBUG);
    assert_eq!(spawned.field("program"), Some(paint().as_str()));
    let pid = spawned.field("pid").expect("pid").to_owned();
    assert!(pid.parse::<i32>().is_ok_and(|pid| pid > 0), "pid {pid:?}");
    let exited = capture.one("process exited", |e| in_member(e, turn_id, "painter"));
    assert_eq!(exited.field("pid"), Some(pid.as_str()));
    assert_eq!(exited.field("success"), Some("false"));
    assert_eq!(exited.field("status"), Some("exited with status 4"));
    let painter = capture.one("member run ended", |e| in_member(e, turn_id, "painter"));
    assert_eq!(painter.level, Level::WARN);
    assert_eq!(painter.field("outcome"), Some("failed"));
    assert_eq!(
        painter.field("reason"),
        Some(painter_error.message.as_str())
    );

    // The turn's writes went through logged batches.
    let batches = capture.named("batch committed");
    assert!(!batches.is_empty(), "no batch was logged");
    for batch in &batches {
        assert_eq!(batch.level, Level::DEBUG);
        for field in ["commands", "outputs", "changes", "durable", "commit_us"] {
            assert!(batch.field(field).is_some(), "{field} missing: {batch:#?}");
        }
    }

    // Privacy: neither the prompt nor any reply text reached the log.
    let painter_text = painter_reply.text.trim();
    assert!(
        painter_text.contains("partial"),
        "painter's text: {painter_text:?}"
    );
    capture.assert_absent("quokka");
    capture.assert_absent(painter_text);
    for event in snapshot
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Familiar)
    {
        if !event.text.is_empty() {
            capture.assert_absent(&event.text);
        }
    }
    // The printed log is the same story: the turn id is there, with the member's fields.
    let printed = capture.printed();
    assert!(printed.contains(turn_id), "{printed}");
    assert!(printed.contains("familiar=nope"), "{printed}");
    coven.close();
}

#[test]
fn open_batches_and_close_are_logged_with_their_counts() {
    let (capture, _serial) = capture();
    let dir = tempfile::tempdir().unwrap();
    let coven = Coven::open(dir.path().join("coven.redb"), Config::default()).unwrap();
    let opened = capture.one("store opened", |_| true);
    assert_eq!(opened.level, Level::INFO);
    assert_eq!(opened.field("durable"), Some("true"));
    for count in [
        "interrupted_replies",
        "failed_sessions",
        "released_turns",
        "stopped_processes",
    ] {
        assert_eq!(opened.field(count), Some("0"), "{count}: {opened:#?}");
    }

    coven
        .register_familiar(familiar("ada", "Ada", "scripted"))
        .unwrap();
    let group = coven.create_group(None, ids(&["ada"]), None).unwrap();
    // The writer logs in order, after answering: once the group's batch (the first with changes)
    // is logged, everything before is, and what follows is this test's append.
    capture.wait_for_one("batch committed", |batch| {
        batch.field("changes") != Some("0")
    });
    lock(&capture.events).clear();
    coven
        .append_user_message(&group.id, "hello".into(), None)
        .unwrap();
    // One command, one change (the appended event), durable.
    let batch = capture.wait_for_one("batch committed", |_| true);
    assert_eq!(batch.level, Level::DEBUG);
    assert_eq!(batch.field("commands"), Some("1"));
    assert_eq!(batch.field("outputs"), Some("0"));
    assert_eq!(batch.field("changes"), Some("1"));
    assert_eq!(batch.field("durable"), Some("true"));
    assert!(batch.field("commit_us").is_some(), "{batch:#?}");

    // A batch whose only operation is refused writes nothing, and says so.
    let unknown = "01890000-0000-7000-8000-000000000000";
    assert!(matches!(
        coven.rename_group(unknown, "x".into()),
        Err(Error::NotFound { .. })
    ));
    let refused = capture.wait_for_one("batch wrote nothing", |_| true);
    assert_eq!(refused.field("commands"), Some("1"));

    coven.close();
    let closed = capture.one("store closed", |_| true);
    assert_eq!(closed.level, Level::INFO);
    assert!(closed.field("duration_ms").is_some(), "{closed:#?}");
    // Closing again (and the drop) closes nothing more.
    coven.close();
    drop(coven);
    assert_eq!(capture.named("store closed").len(), 1);
}

/// Says when it is called, waits for a release in every call, then reports the batch's last rev.
struct Stalled {
    called: Sender<()>,
    release: Receiver<()>,
    delivered: Sender<u64>,
}

impl GroupListener for Stalled {
    fn on_updates(&self, updates: Vec<GroupChange>) -> coven_group::Result<()> {
        let _ = self.called.send(());
        let _ = self.release.recv_timeout(GUARD);
        if let Some(last) = updates.last() {
            let _ = self.delivered.send(last.rev);
        }
        Ok(())
    }
}

#[test]
fn a_lagging_subscription_logs_its_overflow_and_every_page_it_reads_from_the_store() {
    let (capture, _serial) = capture();
    let config = Config {
        durable: false,
        ..Config::default()
    };
    let coven = Coven::open_in_memory(config).unwrap();
    coven
        .register_familiar(familiar("ada", "Ada", "scripted"))
        .unwrap();
    let group = coven.create_group(None, ids(&["ada"]), None).unwrap();
    let head = coven.get_group(&group.id).unwrap().rev;
    let (called_tx, called) = crossbeam_channel::unbounded();
    let (release_tx, release) = crossbeam_channel::unbounded();
    let (delivered_tx, delivered) = crossbeam_channel::unbounded();
    let subscription = coven
        .subscribe(
            &group.id,
            0,
            Arc::new(Stalled {
                called: called_tx,
                release,
                delivered: delivered_tx,
            }),
        )
        .unwrap();
    // The backlog (the group's creation) reaches the listener, which stalls on it.
    called
        .recv_timeout(GUARD)
        .expect("the backlog was delivered");
    let backlog = capture.one("subscription backlog page read from the store", |_| true);
    assert_eq!(backlog.field("after_rev"), Some("0"));
    assert_eq!(
        backlog.span_field("subscription", "group_id"),
        Some(group.id.as_str())
    );
    // More changes than the queue holds arrive while it stalls (from several threads, which
    // makes big group commits and keeps a debug build fast).
    const WRITERS: u64 = 8;
    let appended = SUBSCRIPTION_QUEUE_LIMIT as u64 + 64;
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let (coven, group_id) = (&coven, &group.id);
            scope.spawn(move || {
                for index in 0..appended / WRITERS {
                    coven
                        .append_user_message(group_id, format!("w{writer}-{index}"), None)
                        .unwrap();
                }
            });
        }
    });
    let overflow = capture.wait_for_one(
        "subscription queue overflowed; it catches up from the store",
        |_| true,
    );
    assert_eq!(overflow.field("group_id"), Some(group.id.as_str()));
    assert_eq!(
        overflow.field("limit"),
        Some(SUBSCRIPTION_QUEUE_LIMIT.to_string().as_str())
    );

    let last = head + appended;
    for _ in 0..=appended {
        release_tx.send(()).unwrap();
    }
    loop {
        let rev = delivered
            .recv_timeout(GUARD)
            .expect("the subscription caught up");
        if rev == last {
            break;
        }
    }
    // Every change after the stalled batch came back through pages read from the store.
    let pages = capture.named("subscription backlog page read from the store");
    assert!(pages.len() > 1, "{pages:#?}");
    let reread: u64 = pages[1..]
        .iter()
        .map(|page| page.field("changes").unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(reread, appended, "{pages:#?}");
    assert_eq!(pages[1].field("after_rev"), Some(head.to_string().as_str()));
    subscription.cancel();
    let ended = capture.one("subscription ended", |_| true);
    assert_eq!(
        ended.field("delivered_rev"),
        Some(last.to_string().as_str())
    );
    coven.close();
}
