//! Upgrades a store of an older schema to the current one inside the write transaction that
//! opening makes (see `init_schema`): every value is rewritten into its current record and the
//! schema version is recorded in the same commit, so a crash leaves either the old format
//! untouched or the new one complete. An open also holds its writes until it has succeeded
//! (`staged`), so an upgrade that fails changes no byte of the file.
//!
//! There is one path from each released format to the current one, not a chain.
//!
//! Format 1 (schema 1, value version byte 1) stored the exported types themselves. Their shapes
//! as that release wrote them are frozen in [`v1`], so the exported types can change without
//! breaking this migration.

use std::collections::{BTreeMap, HashMap};

use redb::{Key, ReadableTable, TableDefinition, WriteTransaction};

use super::codec;
use super::records::{self, ChangeRecord, StreamedDelta};
use super::tables::*;
use crate::error::{Error, Result};
use crate::ids;
use crate::model;

/// Migrates the values of a store of schema `from` to the current format. The caller records
/// the current schema version in the same transaction.
pub fn to_current(txn: &WriteTransaction, from: u64) -> Result<()> {
    match from {
        1 => from_format_1(txn)?,
        // Schema 3 added the sync tables and change-record variants: every schema-2 value
        // reads as it is, and `init_schema` creates the tables and the store id.
        2 | 3 => {}
        other => {
            return Err(Error::storage(format!(
                "store schema version {other} is not a released format this release can upgrade"
            )))
        }
    }
    // Schema 4 keeps one record for the deltas of a finished reply.
    collapse_finished_replies(txn)
}

/// Collapses the deltas of every finished reply into one record (`records::collapse_deltas`).
/// A replica's reset starts its log over, so only the deltas after a group's latest reset are
/// a reply's deltas in one run of its text.
fn collapse_finished_replies(txn: &WriteTransaction) -> Result<()> {
    let mut streamed: BTreeMap<(u128, u64), Vec<StreamedDelta>> = BTreeMap::new();
    {
        let changes = txn.open_table(CHANGES)?;
        for entry in changes.iter()? {
            let (key, value) = entry?;
            let (group, rev) = key.value();
            match codec::decode::<ChangeRecord>(value.value())? {
                ChangeRecord::ReplyDelta { seq, start, len } => {
                    streamed
                        .entry((group, seq))
                        .or_default()
                        .push(StreamedDelta { rev, start, len });
                }
                ChangeRecord::Reset { .. } => {
                    streamed.retain(|(of, _), _| *of != group);
                }
                _ => {}
            }
        }
    }
    let events = txn.open_table(EVENTS)?;
    let mut changes = txn.open_table(CHANGES)?;
    for ((group, seq), deltas) in streamed {
        let finished = match events.get((group, seq))? {
            Some(value) => !records::decode_event(group, seq, value.value())?.streaming,
            None => false,
        };
        if finished {
            records::collapse_deltas(&mut changes, group, seq, &deltas)?;
        }
    }
    Ok(())
}

/// (group, seq or rev).
type GroupKey = (u128, u64);

/// Every value of a table with its key, in key order, read before any is rewritten.
fn all_values<K: Key + 'static, Owned>(
    txn: &WriteTransaction,
    definition: TableDefinition<K, &'static [u8]>,
    owned_key: impl for<'a> Fn(K::SelfType<'a>) -> Owned,
) -> Result<Vec<(Owned, Vec<u8>)>> {
    let table = txn.open_table(definition)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        out.push((owned_key(key.value()), value.value().to_vec()));
    }
    Ok(out)
}

fn old<T: serde::de::DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T> {
    codec::decode_version(bytes, 1).map_err(|err| {
        Error::storage(format!(
            "cannot upgrade the store from format 1: {}: {err}",
            what()
        ))
    })
}

/// `reply_chunks` as format 1 typed it: the text alone.
const FORMAT_1_CHUNKS: redb::TableDefinition<(u128, u64, u64), &str> =
    redb::TableDefinition::new("reply_chunks");

fn from_format_1(txn: &WriteTransaction) -> Result<()> {
    // Familiars are keyed by a string, read separately.
    let mut familiars = Vec::new();
    {
        let table = txn.open_table(FAMILIARS)?;
        for entry in table.iter()? {
            let (key, value) = entry?;
            familiars.push((key.value().to_owned(), value.value().to_vec()));
        }
    }
    {
        let mut table = txn.open_table(FAMILIARS)?;
        for (id, bytes) in familiars {
            let familiar: v1::Familiar = old(&bytes, || format!("familiar {id:?}"))?;
            let record = records::encode_familiar(&familiar.into())?;
            table.insert(id.as_str(), record.as_slice())?;
        }
    }

    let groups = all_values(txn, GROUPS, |id| id)?;
    {
        let mut table = txn.open_table(GROUPS)?;
        for (group, bytes) in groups {
            let record: v1::GroupConversation = old(&bytes, || "group".to_owned())?;
            table.insert(group, records::encode_group(&record.into())?.as_slice())?;
        }
    }

    // Head and the turn lock kept their shape; only the version byte changes.
    let heads = all_values(txn, HEADS, |id| id)?;
    {
        let mut table = txn.open_table(HEADS)?;
        for (group, bytes) in heads {
            let head: Head = old(&bytes, || "head".to_owned())?;
            table.insert(group, codec::encode(&head)?.as_slice())?;
        }
    }
    let turns = all_values(txn, TURNS, |id| id)?;
    {
        let mut table = txn.open_table(TURNS)?;
        for (group, bytes) in turns {
            let turn: TurnRecord = old(&bytes, || "turn lock".to_owned())?;
            table.insert(group, codec::encode(&turn)?.as_slice())?;
        }
    }

    let sessions = all_values(txn, SESSIONS, |id| id)?;
    {
        let mut table = txn.open_table(SESSIONS)?;
        for (session, bytes) in sessions {
            let record: v1::Session = old(&bytes, || "session".to_owned())?;
            table.insert(session, records::encode_session(&record.into())?.as_slice())?;
        }
    }

    // Chunks of replies left streaming gain their offset in the reply (format 1 stored the
    // text alone), so the table is rebuilt with its new value type.
    let mut chunks = Vec::new();
    {
        let table = txn.open_table(FORMAT_1_CHUNKS)?;
        for entry in table.iter()? {
            let (key, text) = entry?;
            chunks.push((key.value(), text.value().to_owned()));
        }
    }
    txn.delete_table(FORMAT_1_CHUNKS)?;
    {
        let mut table = txn.open_table(REPLY_CHUNKS)?;
        let mut offsets: HashMap<(u128, u64), u64> = HashMap::new();
        for ((group, seq, rev), text) in chunks {
            let start = offsets.entry((group, seq)).or_default();
            table.insert((group, seq, rev), (*start, text.as_str()))?;
            *start += text.len() as u64;
        }
    }

    let events = all_values(txn, EVENTS, |key: GroupKey| key)?;
    {
        let mut table = txn.open_table(EVENTS)?;
        for ((group, seq), bytes) in events {
            let event: v1::GroupEvent = old(&bytes, || format!("event {seq}"))?;
            let event: model::GroupEvent = event.into();
            table.insert((group, seq), records::encode_event(&event)?.as_slice())?;
        }
    }

    // In rev order per group, so each reply's deltas get their ranges of its text: the first
    // output's length, then each delta's bytes in turn.
    let changes = all_values(txn, CHANGES, |key: GroupKey| key)?;
    let mut streamed: HashMap<(u128, u64), u64> = HashMap::new();
    let mut table = txn.open_table(CHANGES)?;
    for ((group, rev), bytes) in changes {
        let update: v1::GroupUpdate = old(&bytes, || format!("change {rev}"))?;
        let record = match update {
            v1::GroupUpdate::ReplyDelta { seq, text, .. } => {
                let start = streamed.entry((group, seq)).or_default();
                let len = text.len() as u64;
                let record = ChangeRecord::ReplyDelta {
                    seq,
                    start: *start,
                    len,
                };
                *start += len;
                record
            }
            v1::GroupUpdate::GroupDeleted => {
                return Err(Error::storage(format!(
                    "cannot upgrade the store from format 1: change {rev} of group {} records \
                     its deletion",
                    ids::to_string(group)
                )))
            }
            other => {
                let (update, at) = other.into_current();
                if let model::GroupUpdate::EventAppended { event } = &update {
                    if event.streaming {
                        streamed.insert((group, event.seq), event.text.len() as u64);
                    }
                }
                ChangeRecord::of(&update, at.unwrap_or(std::time::UNIX_EPOCH))?
            }
        };
        table.insert((group, rev), codec::encode(&record)?.as_slice())?;
    }
    Ok(())
}

/// The values of format 1, as that release wrote them: the exported types of that release,
/// field for field and variant for variant (bincode is not self-describing, so order matters).
pub mod v1 {
    use std::time::SystemTime;

    use serde::Deserialize;

    use crate::model;

    #[derive(Deserialize)]
    pub struct Familiar {
        id: String,
        display_name: String,
        harness: String,
        model: Option<String>,
        preamble: Option<String>,
        argv: Vec<String>,
        cwd: Option<String>,
    }

    impl From<Familiar> for model::Familiar {
        fn from(old: Familiar) -> Self {
            Self {
                id: old.id,
                display_name: old.display_name,
                harness: old.harness,
                model: old.model,
                preamble: old.preamble,
                argv: old.argv,
                cwd: old.cwd,
            }
        }
    }

    #[derive(Deserialize)]
    pub struct Member {
        familiar_id: String,
        session_id: String,
    }

    #[derive(Deserialize)]
    pub struct GroupConversation {
        id: String,
        title: String,
        members: Vec<Member>,
        project_root: Option<String>,
        created_at: SystemTime,
        updated_at: SystemTime,
    }

    impl From<GroupConversation> for model::GroupConversation {
        fn from(old: GroupConversation) -> Self {
            Self {
                id: old.id,
                title: old.title,
                members: old
                    .members
                    .into_iter()
                    .map(|member| model::Member {
                        familiar_id: member.familiar_id,
                        session_id: member.session_id,
                    })
                    .collect(),
                project_root: old.project_root,
                created_at: old.created_at,
                updated_at: old.updated_at,
            }
        }
    }

    #[derive(Deserialize)]
    pub enum EventKind {
        User,
        Familiar,
        System,
    }

    #[derive(Deserialize)]
    pub enum SystemNotice {
        Renamed { from: String, to: String },
        MemberAdded { familiar_id: String },
        MemberRemoved { familiar_id: String },
    }

    #[derive(Deserialize)]
    pub enum ReplyErrorKind {
        Failed,
        TimedOut,
        Cancelled,
        Interrupted,
    }

    #[derive(Deserialize)]
    pub struct ReplyError {
        kind: ReplyErrorKind,
        message: String,
    }

    #[derive(Deserialize)]
    pub struct GroupEvent {
        group_id: String,
        seq: u64,
        rev: u64,
        kind: EventKind,
        familiar_id: Option<String>,
        author: Option<String>,
        turn_id: Option<String>,
        text: String,
        streaming: bool,
        error: Option<ReplyError>,
        notice: Option<SystemNotice>,
        timestamp: SystemTime,
    }

    impl From<GroupEvent> for model::GroupEvent {
        fn from(old: GroupEvent) -> Self {
            Self {
                group_id: old.group_id,
                seq: old.seq,
                rev: old.rev,
                kind: match old.kind {
                    EventKind::User => model::EventKind::User,
                    EventKind::Familiar => model::EventKind::Familiar,
                    EventKind::System => model::EventKind::System,
                },
                familiar_id: old.familiar_id,
                author: old.author,
                turn_id: old.turn_id,
                text: old.text,
                streaming: old.streaming,
                error: old.error.map(|error| model::ReplyError {
                    kind: match error.kind {
                        ReplyErrorKind::Failed => model::ReplyErrorKind::Failed,
                        ReplyErrorKind::TimedOut => model::ReplyErrorKind::TimedOut,
                        ReplyErrorKind::Cancelled => model::ReplyErrorKind::Cancelled,
                        ReplyErrorKind::Interrupted => model::ReplyErrorKind::Interrupted,
                    },
                    message: error.message,
                }),
                notice: old.notice.map(|notice| match notice {
                    SystemNotice::Renamed { from, to } => model::SystemNotice::Renamed { from, to },
                    SystemNotice::MemberAdded { familiar_id } => {
                        model::SystemNotice::MemberAdded { familiar_id }
                    }
                    SystemNotice::MemberRemoved { familiar_id } => {
                        model::SystemNotice::MemberRemoved { familiar_id }
                    }
                }),
                timestamp: old.timestamp,
            }
        }
    }

    #[derive(Deserialize)]
    pub enum SessionStatus {
        Idle,
        Running,
        Failed,
    }

    #[derive(Deserialize)]
    pub struct Session {
        id: String,
        group_id: String,
        familiar_id: String,
        harness: String,
        status: SessionStatus,
        resume_token: Option<String>,
        archived: bool,
        created_at: SystemTime,
        updated_at: SystemTime,
    }

    impl From<Session> for model::Session {
        fn from(old: Session) -> Self {
            Self {
                id: old.id,
                group_id: old.group_id,
                familiar_id: old.familiar_id,
                harness: old.harness,
                status: match old.status {
                    SessionStatus::Idle => model::SessionStatus::Idle,
                    SessionStatus::Running => model::SessionStatus::Running,
                    SessionStatus::Failed => model::SessionStatus::Failed,
                },
                resume_token: old.resume_token,
                archived: old.archived,
                created_at: old.created_at,
                updated_at: old.updated_at,
            }
        }
    }

    #[derive(Deserialize)]
    pub enum GroupUpdate {
        GroupCreated {
            group: GroupConversation,
        },
        GroupChanged {
            group: GroupConversation,
        },
        EventAppended {
            event: GroupEvent,
        },
        ReplyDelta {
            seq: u64,
            #[allow(dead_code)]
            familiar_id: String,
            text: String,
        },
        ReplyFinished {
            event: GroupEvent,
        },
        SessionChanged {
            session: Session,
        },
        SessionSacrificed {
            session_id: String,
        },
        GroupDeleted,
    }

    impl GroupUpdate {
        /// The change as the current types hold it, with the time a group change was made.
        /// `ReplyDelta` and `GroupDeleted` are the caller's.
        pub fn into_current(self) -> (model::GroupUpdate, Option<SystemTime>) {
            match self {
                GroupUpdate::GroupCreated { group } => {
                    let at = group.updated_at;
                    let group = group.into();
                    (model::GroupUpdate::GroupCreated { group }, Some(at))
                }
                GroupUpdate::GroupChanged { group } => {
                    let at = group.updated_at;
                    let group = group.into();
                    (model::GroupUpdate::GroupChanged { group }, Some(at))
                }
                GroupUpdate::EventAppended { event } => (
                    model::GroupUpdate::EventAppended {
                        event: event.into(),
                    },
                    None,
                ),
                GroupUpdate::ReplyDelta {
                    seq,
                    familiar_id,
                    text,
                } => (
                    model::GroupUpdate::ReplyDelta {
                        seq,
                        familiar_id,
                        text,
                    },
                    None,
                ),
                GroupUpdate::ReplyFinished { event } => (
                    model::GroupUpdate::ReplyFinished {
                        event: event.into(),
                    },
                    None,
                ),
                GroupUpdate::SessionChanged { session } => (
                    model::GroupUpdate::SessionChanged {
                        session: session.into(),
                    },
                    None,
                ),
                GroupUpdate::SessionSacrificed { session_id } => {
                    (model::GroupUpdate::SessionSacrificed { session_id }, None)
                }
                GroupUpdate::GroupDeleted => (model::GroupUpdate::GroupDeleted, None),
            }
        }
    }
}
