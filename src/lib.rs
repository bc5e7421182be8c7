//! coven-group: a group chat with AI familiars as one durable object with one canonical timeline.
//!
//! A [`Coven`] is an open store. Groups own their members' child sessions and one timeline whose
//! events carry a group-scoped `seq` (contiguous from 1, never reused) and whose every committed
//! change carries a group-scoped `rev`, so every device and view reconstructs the same transcript.
//! All writes go through one group-committing writer thread; reads run on the caller's thread.
//!
//! The design (vocabulary, invariants, threads, storage): `docs/design.md`.
//!
//! ```no_run
//! use coven_group::{Config, Coven, Familiar};
//!
//! let coven = Coven::open("chat.redb", Config::default())?;
//! coven.register_familiar(Familiar::new("ada", "Ada", "scripted"))?;
//! coven.register_familiar(Familiar::new("bo", "Bo", "scripted"))?;
//! let group = coven.create_group(None, vec!["ada".into(), "bo".into()], None)?;
//! let hello = coven.append_user_message(&group.id, "Hello, both".into(), Some("Sam".into()))?;
//! assert_eq!(hello.seq, 1);
//! let snapshot = coven.get_group(&group.id)?;
//! for event in &snapshot.events {
//!     println!("#{} {}", event.seq, event.text);
//! }
//! # Ok::<(), coven_group::Error>(())
//! ```

// The library never writes to the host's terminal: it reports through return values and logs.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod adopt;
mod check;
mod coven;
mod error;
mod fanout;
#[cfg(feature = "testing")]
pub mod fuzzing;
mod guard;
mod harness;
mod host;
mod hub;
mod ids;
mod model;
mod store;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
mod validate;

pub use adopt::MERGE_WINDOW as ADOPT_MERGE_WINDOW;
pub use coven::Coven;
pub use error::{Error, Result};
pub use harness::registry::BUILTIN_HARNESSES;
pub use harness::{Harness, ReplySink, TurnRequest, MAX_REPLY_BYTES};
pub use hub::{GroupListener, Subscription, SUBSCRIPTION_QUEUE_LIMIT};
pub use model::*;
#[cfg(feature = "http")]
pub use sync::http::{http_sync_transport, HttpTransport};
pub use sync::{
    sync_message_from_json, sync_message_to_json, ErrorCode, GroupPull, Mutation, MutationOutcome,
    MutationResult, OutboxEntry, OutboxState, PullApplied, PullRequest, PullResponse, PushRequest,
    PushResponse, PushedMutation, SyncCursor, SyncMessage, SyncReport, SyncSnapshot, SyncTransport,
    SYNC_PROTOCOL_VERSION,
};
pub use validate::{
    MAX_ADOPTED_MESSAGES, MAX_CONSUMER_LEN, MAX_FAMILIAR_ID_LEN, MAX_MEMBERS, MAX_NAME_CHARS,
    MAX_PAGE, MAX_PREAMBLE_BYTES, MAX_TEXT_BYTES, MAX_TITLE_CHARS,
};

uniffi::setup_scaffolding!();
