//! The storage records: what the tables hold, apart from the exported types, so that a field
//! added to a public record never changes the disk format (the format is these types' serde
//! shape, behind the codec's version byte).
//!
//! Records hold ids as numbers where the store made them (groups, sessions, turns: `u128`) and
//! never repeat what their key already holds (an event's group and seq, a group's, session's or
//! familiar's own id). Text is stored once: a change record names the event it concerns and the
//! text it carried is read from that event or its chunks —
//! - `EventAppended` of a reply's first output records the length of that output: the change
//!   carried the first `len` bytes of the reply's text (a reply's text only grows, so the prefix
//!   is exact);
//! - `ReplyDelta` records the byte range of the reply's text it carried (while the reply streams,
//!   that text is its chunks joined; once it finishes, the event's text);
//! - `ReplyFinished` and every other `EventAppended` carried the event as it is stored.
//!
//! Converting a record back needs its key (and, for changes, the events and chunks tables), so
//! the read path builds the exported types here and nowhere else.

use std::collections::HashMap;
use std::time::SystemTime;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::codec;
use crate::error::{Error, Result};
use crate::ids;
use crate::model::{
    EventKind, Familiar, GroupConversation, GroupEvent, GroupUpdate, Member, PendingMessage,
    ReplyError, ReplyErrorKind, SendState, Session, SessionStatus, SystemNotice,
};

// ---- familiars ----

/// `familiars` value; the key is the familiar id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamiliarRecord {
    pub display_name: String,
    pub harness: String,
    pub model: Option<String>,
    pub preamble: Option<String>,
    pub argv: Vec<String>,
    pub cwd: Option<String>,
}

pub fn encode_familiar(familiar: &Familiar) -> Result<Vec<u8>> {
    codec::encode(&FamiliarRecord {
        display_name: familiar.display_name.clone(),
        harness: familiar.harness.clone(),
        model: familiar.model.clone(),
        preamble: familiar.preamble.clone(),
        argv: familiar.argv.clone(),
        cwd: familiar.cwd.clone(),
    })
}

pub fn decode_familiar(id: &str, bytes: &[u8]) -> Result<Familiar> {
    let record: FamiliarRecord = codec::decode(bytes)?;
    Ok(Familiar {
        id: id.to_owned(),
        display_name: record.display_name,
        harness: record.harness,
        model: record.model,
        preamble: record.preamble,
        argv: record.argv,
        cwd: record.cwd,
    })
}

// ---- groups ----

/// `groups` value (and the state a group change carried); the key is the group.
/// `updated_at` is not stored: it is the head's last activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub title: String,
    /// (familiar id, session) in roster order.
    pub members: Vec<(String, u128)>,
    pub project_root: Option<String>,
    pub created_at: SystemTime,
}

impl GroupRecord {
    pub fn of(group: &GroupConversation) -> Result<Self> {
        let members = group
            .members
            .iter()
            .map(|member| {
                let session = ids::parse_stored("member session id", &member.session_id)?;
                Ok((member.familiar_id.clone(), session))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            title: group.title.clone(),
            members,
            project_root: group.project_root.clone(),
            created_at: group.created_at,
        })
    }

    /// The exported group; `updated_at` is the caller's (the head's activity, or the time of
    /// the change that carried this state).
    pub fn into_group(self, id: u128, updated_at: SystemTime) -> GroupConversation {
        GroupConversation {
            id: ids::to_string(id),
            title: self.title,
            members: self
                .members
                .into_iter()
                .map(|(familiar_id, session)| Member {
                    familiar_id,
                    session_id: ids::to_string(session),
                })
                .collect(),
            project_root: self.project_root,
            created_at: self.created_at,
            updated_at,
        }
    }
}

pub fn encode_group(group: &GroupConversation) -> Result<Vec<u8>> {
    codec::encode(&GroupRecord::of(group)?)
}

/// The stored group with `updated_at` set to its creation time (callers set it from the head).
pub fn decode_group(id: u128, bytes: &[u8]) -> Result<GroupConversation> {
    let record: GroupRecord = codec::decode(bytes)?;
    let created_at = record.created_at;
    Ok(record.into_group(id, created_at))
}

// ---- sessions ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusRecord {
    Idle,
    Running,
    Failed,
}

/// `sessions` value (and the state a session change carried); the key is the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub group: u128,
    pub familiar_id: String,
    pub harness: String,
    pub status: StatusRecord,
    pub resume_token: Option<String>,
    pub archived: bool,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl SessionRecord {
    pub fn of(session: &Session) -> Result<Self> {
        Ok(Self {
            group: ids::parse_stored("session group id", &session.group_id)?,
            familiar_id: session.familiar_id.clone(),
            harness: session.harness.clone(),
            status: match session.status {
                SessionStatus::Idle => StatusRecord::Idle,
                SessionStatus::Running => StatusRecord::Running,
                SessionStatus::Failed => StatusRecord::Failed,
            },
            resume_token: session.resume_token.clone(),
            archived: session.archived,
            created_at: session.created_at,
            updated_at: session.updated_at,
        })
    }

    pub fn into_session(self, id: u128) -> Session {
        Session {
            id: ids::to_string(id),
            group_id: ids::to_string(self.group),
            familiar_id: self.familiar_id,
            harness: self.harness,
            status: match self.status {
                StatusRecord::Idle => SessionStatus::Idle,
                StatusRecord::Running => SessionStatus::Running,
                StatusRecord::Failed => SessionStatus::Failed,
            },
            resume_token: self.resume_token,
            archived: self.archived,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

pub fn encode_session(session: &Session) -> Result<Vec<u8>> {
    codec::encode(&SessionRecord::of(session)?)
}

pub fn decode_session(id: u128, bytes: &[u8]) -> Result<Session> {
    Ok(codec::decode::<SessionRecord>(bytes)?.into_session(id))
}

// ---- events ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum KindRecord {
    User,
    Familiar,
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum ErrorKindRecord {
    Failed,
    TimedOut,
    Cancelled,
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum NoticeRecord<'a> {
    Renamed { from: &'a str, to: &'a str },
    MemberAdded { familiar_id: &'a str },
    MemberRemoved { familiar_id: &'a str },
}

/// `events` value; the key is (group, seq). Strings are borrowed both ways: from the event when
/// encoding, from the value's bytes when decoding (each string is then copied once).
#[derive(Serialize, Deserialize)]
struct EventRecord<'a> {
    rev: u64,
    kind: KindRecord,
    #[serde(borrow)]
    familiar_id: Option<&'a str>,
    #[serde(borrow)]
    author: Option<&'a str>,
    turn: Option<u128>,
    text: &'a str,
    streaming: bool,
    #[serde(borrow)]
    error: Option<(ErrorKindRecord, &'a str)>,
    #[serde(borrow)]
    notice: Option<NoticeRecord<'a>>,
    timestamp: SystemTime,
}

pub fn encode_event(event: &GroupEvent) -> Result<Vec<u8>> {
    let turn = event
        .turn_id
        .as_deref()
        .map(|turn| ids::parse_stored("event turn id", turn))
        .transpose()?;
    codec::encode(&EventRecord {
        rev: event.rev,
        kind: match event.kind {
            EventKind::User => KindRecord::User,
            EventKind::Familiar => KindRecord::Familiar,
            EventKind::System => KindRecord::System,
        },
        familiar_id: event.familiar_id.as_deref(),
        author: event.author.as_deref(),
        turn,
        text: &event.text,
        streaming: event.streaming,
        error: event.error.as_ref().map(|error| {
            let kind = match error.kind {
                ReplyErrorKind::Failed => ErrorKindRecord::Failed,
                ReplyErrorKind::TimedOut => ErrorKindRecord::TimedOut,
                ReplyErrorKind::Cancelled => ErrorKindRecord::Cancelled,
                ReplyErrorKind::Interrupted => ErrorKindRecord::Interrupted,
            };
            (kind, error.message.as_str())
        }),
        notice: event.notice.as_ref().map(|notice| match notice {
            SystemNotice::Renamed { from, to } => NoticeRecord::Renamed { from, to },
            SystemNotice::MemberAdded { familiar_id } => NoticeRecord::MemberAdded { familiar_id },
            SystemNotice::MemberRemoved { familiar_id } => {
                NoticeRecord::MemberRemoved { familiar_id }
            }
        }),
        timestamp: event.timestamp,
    })
}

pub fn decode_event(group: u128, seq: u64, bytes: &[u8]) -> Result<GroupEvent> {
    decode_event_of(ids::to_string(group), seq, bytes)
}

/// [`decode_event`] with the group's id already formatted (readers of many events format it
/// once).
pub fn decode_event_of(group_id: String, seq: u64, bytes: &[u8]) -> Result<GroupEvent> {
    let record: EventRecord<'_> = codec::decode(bytes)?;
    Ok(GroupEvent {
        group_id,
        seq,
        rev: record.rev,
        kind: match record.kind {
            KindRecord::User => EventKind::User,
            KindRecord::Familiar => EventKind::Familiar,
            KindRecord::System => EventKind::System,
        },
        familiar_id: record.familiar_id.map(str::to_owned),
        author: record.author.map(str::to_owned),
        turn_id: record.turn.map(ids::to_string),
        text: record.text.to_owned(),
        streaming: record.streaming,
        error: record.error.map(|(kind, message)| ReplyError {
            kind: match kind {
                ErrorKindRecord::Failed => ReplyErrorKind::Failed,
                ErrorKindRecord::TimedOut => ReplyErrorKind::TimedOut,
                ErrorKindRecord::Cancelled => ReplyErrorKind::Cancelled,
                ErrorKindRecord::Interrupted => ReplyErrorKind::Interrupted,
            },
            message: message.to_owned(),
        }),
        notice: record.notice.map(|notice| match notice {
            NoticeRecord::Renamed { from, to } => SystemNotice::Renamed {
                from: from.to_owned(),
                to: to.to_owned(),
            },
            NoticeRecord::MemberAdded { familiar_id } => SystemNotice::MemberAdded {
                familiar_id: familiar_id.to_owned(),
            },
            NoticeRecord::MemberRemoved { familiar_id } => SystemNotice::MemberRemoved {
                familiar_id: familiar_id.to_owned(),
            },
        }),
        timestamp: record.timestamp,
    })
}

// ---- changes ----

/// `changes` value; the key is (group, rev). See the module doc for where each change's text is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeRecord {
    /// `GroupCreated` or `GroupChanged`: the group's state and the time of the change.
    Group {
        created: bool,
        group: GroupRecord,
        at: SystemTime,
    },
    /// `EventAppended`: for a reply's first output, `streamed` is that output's length in bytes.
    EventAppended {
        seq: u64,
        streamed: Option<u64>,
    },
    /// `ReplyDelta`: the text is `start..start + len` of the reply's text.
    ReplyDelta {
        seq: u64,
        start: u64,
        len: u64,
    },
    /// `ReplyFinished`: the event as stored.
    ReplyFinished {
        seq: u64,
    },
    SessionChanged {
        session: u128,
        record: SessionRecord,
    },
    SessionSacrificed {
        session: u128,
    },
    /// `GroupReset` of a replica group: the group's state when it was applied, which is not kept;
    /// reading the log from before it yields the group's current state (`Reader::changes`).
    /// `last_seq` is the last event it carried: events up to it were written by the reset.
    Reset {
        last_seq: u64,
    },
    /// `MessagePending`: the local echo as it was at this change (its text is small and its
    /// outbox entry may be gone by the time the change is read).
    MessagePending {
        message: PendingRecord,
    },
    /// `MessageSent`: the event as stored, replacing echo `txn`.
    MessageSent {
        seq: u64,
        txn: u128,
    },
    MessageDiscarded {
        txn: u128,
    },
    /// (Schema 4; variants are only ever added last, so earlier ones keep their encoding.) The
    /// `count` deltas a reply streamed, from this rev through `through_rev`, once it has
    /// finished: read as one `ReplyDelta` at this rev carrying `start..start + len` of its text.
    /// The other revs of those deltas hold no record (see [`collapse_deltas`]).
    DeltasCollapsed {
        seq: u64,
        start: u64,
        len: u64,
        through_rev: u64,
        count: u64,
    },
}

/// A local echo inside a `MessagePending` change record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    pub txn: u128,
    pub text: String,
    pub author: Option<String>,
    pub starts_turn: bool,
    /// The refusal (reason, retryable) of a failed send.
    pub failed: Option<(String, bool)>,
    pub created_at: SystemTime,
}

impl PendingRecord {
    pub fn of(message: &PendingMessage) -> Result<Self> {
        Ok(Self {
            txn: ids::parse_stored("transaction id", &message.txn_id)?,
            text: message.text.clone(),
            author: message.author.clone(),
            starts_turn: message.starts_turn,
            failed: match &message.state {
                SendState::Pending => None,
                SendState::Failed { reason, retryable } => Some((reason.clone(), *retryable)),
            },
            created_at: message.created_at,
        })
    }

    pub fn into_message(self, group_id: String) -> PendingMessage {
        PendingMessage {
            txn_id: ids::to_string(self.txn),
            group_id,
            text: self.text,
            author: self.author,
            starts_turn: self.starts_turn,
            state: match self.failed {
                None => SendState::Pending,
                Some((reason, retryable)) => SendState::Failed { reason, retryable },
            },
            created_at: self.created_at,
        }
    }
}

impl ChangeRecord {
    /// The event this change is about, if any.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ChangeRecord::EventAppended { seq, .. }
            | ChangeRecord::ReplyDelta { seq, .. }
            | ChangeRecord::DeltasCollapsed { seq, .. }
            | ChangeRecord::ReplyFinished { seq }
            | ChangeRecord::MessageSent { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// The record of a change about to be stored (its text stays with its event or chunk).
    pub fn of(update: &GroupUpdate, at: SystemTime) -> Result<Self> {
        Ok(match update {
            GroupUpdate::GroupCreated { group } | GroupUpdate::GroupChanged { group } => {
                ChangeRecord::Group {
                    created: matches!(update, GroupUpdate::GroupCreated { .. }),
                    group: GroupRecord::of(group)?,
                    at,
                }
            }
            GroupUpdate::EventAppended { event } => ChangeRecord::EventAppended {
                seq: event.seq,
                streamed: event.streaming.then_some(event.text.len() as u64),
            },
            // Its range is the writer's (`Batch::store_delta`), which records it directly.
            GroupUpdate::ReplyDelta { .. } => {
                return Err(Error::storage(
                    "internal error: a delta is recorded with its range of the reply's text",
                ))
            }
            GroupUpdate::ReplyFinished { event } => ChangeRecord::ReplyFinished { seq: event.seq },
            GroupUpdate::SessionChanged { session } => ChangeRecord::SessionChanged {
                session: ids::parse_stored("session id", &session.id)?,
                record: SessionRecord::of(session)?,
            },
            GroupUpdate::SessionSacrificed { session_id } => ChangeRecord::SessionSacrificed {
                session: ids::parse_stored("session id", session_id)?,
            },
            GroupUpdate::GroupDeleted => {
                return Err(Error::storage(
                    "internal error: a group's deletion is announced, never stored",
                ))
            }
            GroupUpdate::GroupReset { events, .. } => ChangeRecord::Reset {
                last_seq: events.last().map_or(0, |event| event.seq),
            },
            GroupUpdate::MessagePending { message } => ChangeRecord::MessagePending {
                message: PendingRecord::of(message)?,
            },
            GroupUpdate::MessageSent { txn_id, event } => ChangeRecord::MessageSent {
                seq: event.seq,
                txn: ids::parse_stored("transaction id", txn_id)?,
            },
            GroupUpdate::MessageDiscarded { txn_id } => ChangeRecord::MessageDiscarded {
                txn: ids::parse_stored("transaction id", txn_id)?,
            },
        })
    }
}

/// One delta a reply streamed: its rev and the byte range of the reply's text it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamedDelta {
    pub rev: u64,
    pub start: u64,
    pub len: u64,
}

/// Collapses the deltas of a finished reply (in rev order) into one `DeltasCollapsed` record at
/// the first one's rev and removes the others, so a finished reply costs the log O(1) entries
/// whatever its length. A reader from before the first rev reads all that text as one delta; a
/// reader from inside the range reads on to the reply's `ReplyFinished`, which carries the whole
/// event: no gap, no duplicate. Each removed record must be a delta of this reply (anything else
/// is corruption, and the batch aborts). Fewer than two deltas are left as they are.
pub fn collapse_deltas(
    changes: &mut redb::Table<'_, (u128, u64), &'static [u8]>,
    group: u128,
    seq: u64,
    deltas: &[StreamedDelta],
) -> Result<()> {
    let (Some(first), Some(last)) = (deltas.first(), deltas.last()) else {
        return Ok(());
    };
    if deltas.len() < 2 {
        return Ok(());
    }
    if let Some(pair) = deltas
        .windows(2)
        .find(|pair| pair[1].start != pair[0].start + pair[0].len)
    {
        return Err(Error::storage(format!(
            "corrupt store: the deltas of reply {seq} of group {} at revs {} and {} do not follow \
             each other in its text",
            ids::to_string(group),
            pair[0].rev,
            pair[1].rev
        )));
    }
    for delta in deltas {
        let removed = changes.remove((group, delta.rev))?;
        let record = match removed {
            Some(bytes) => codec::decode::<ChangeRecord>(bytes.value())?,
            None => {
                return Err(Error::storage(format!(
                    "corrupt store: reply {seq} of group {} streamed at rev {}, which the log \
                     does not hold",
                    ids::to_string(group),
                    delta.rev
                )))
            }
        };
        let expected = ChangeRecord::ReplyDelta {
            seq,
            start: delta.start,
            len: delta.len,
        };
        if record != expected {
            return Err(Error::storage(format!(
                "corrupt store: change {} of group {} is {record:?}, where reply {seq} streamed \
                 bytes {}..{}",
                delta.rev,
                ids::to_string(group),
                delta.start,
                delta.start + delta.len
            )));
        }
    }
    let collapsed = ChangeRecord::DeltasCollapsed {
        seq,
        start: first.start,
        len: (last.start + last.len).saturating_sub(first.start),
        through_rev: last.rev,
        count: deltas.len() as u64,
    };
    changes.insert((group, first.rev), codec::encode(&collapsed)?.as_slice())?;
    Ok(())
}

/// A forward range over a group's events.
type EventScan<'t> = redb::Range<'t, (u128, u64), &'static [u8]>;

/// Rebuilds the changes of one group from their records, reading the text they carried from the
/// events and chunks tables. Changes mostly name events in seq order (each event is appended
/// once, in seq order), so events are read by one forward scan rather than a lookup each; the
/// replies a page names are kept, so their deltas and finish decode them once.
pub struct ChangeReader<'t, E, C> {
    group: u128,
    group_id: String,
    events: &'t E,
    chunks: &'t C,
    /// The forward scan over the group's events and the seq it yields next.
    scan: Option<(u64, EventScan<'t>)>,
    /// Replies (and events a delta or range named) read so far, streaming ones completed.
    seen: HashMap<u64, GroupEvent>,
}

impl<'t, E, C> ChangeReader<'t, E, C>
where
    E: ReadableTable<(u128, u64), &'static [u8]>,
    C: ReadableTable<(u128, u64, u64), (u64, &'static str)>,
{
    pub fn new(group: u128, events: &'t E, chunks: &'t C) -> Self {
        Self {
            group,
            group_id: ids::to_string(group),
            events,
            chunks,
            scan: None,
            seen: HashMap::new(),
        }
    }

    /// Reads one event: ahead of the scan by scanning on (skipped events are not decoded),
    /// behind it by a lookup. `None` when it does not exist.
    fn fetch(&mut self, seq: u64) -> Result<Option<GroupEvent>> {
        let Self {
            group,
            group_id,
            events,
            chunks,
            scan,
            ..
        } = self;
        let group = *group;
        let decode = |bytes: &[u8]| -> Result<GroupEvent> {
            let mut event = decode_event_of(group_id.clone(), seq, bytes)?;
            complete_event(*chunks, group, &mut event)?;
            Ok(event)
        };
        let (next, range) = match scan {
            Some(scan) => scan,
            None => scan.insert((seq, events.range((group, seq)..=(group, u64::MAX))?)),
        };
        if seq >= *next {
            for entry in range.by_ref() {
                let (key, value) = entry?;
                let at = key.value().1;
                *next = at + 1;
                if at >= seq {
                    return if at == seq {
                        decode(value.value()).map(Some)
                    } else {
                        Ok(None)
                    };
                }
            }
            return Ok(None);
        }
        match events.get((group, seq))? {
            Some(value) => decode(value.value()).map(Some),
            None => Ok(None),
        }
    }

    fn missing(seq: u64, rev: u64) -> Error {
        Error::storage(format!(
            "corrupt store: change {rev} names event {seq}, which does not exist"
        ))
    }

    /// The event, kept for the changes after this one that name it.
    fn event(&mut self, seq: u64, rev: u64) -> Result<&GroupEvent> {
        if !self.seen.contains_key(&seq) {
            let event = self.fetch(seq)?.ok_or_else(|| Self::missing(seq, rev))?;
            self.seen.insert(seq, event);
        }
        self.seen.get(&seq).ok_or_else(|| Self::missing(seq, rev))
    }

    /// The event as a change carries it. A user or system event is only ever appended, so no
    /// later change names it and it is not kept; a reply is.
    fn carried(&mut self, seq: u64, rev: u64) -> Result<GroupEvent> {
        if let Some(event) = self.seen.get(&seq) {
            return Ok(event.clone());
        }
        let event = self.fetch(seq)?.ok_or_else(|| Self::missing(seq, rev))?;
        if event.kind == EventKind::Familiar {
            self.seen.insert(seq, event.clone());
        }
        Ok(event)
    }

    /// The change stored at `rev` as this record, as it was published. A `Reset` is not rebuilt
    /// here: it stands for a whole group state, which `Reader::changes` reads.
    pub fn rebuild(&mut self, rev: u64, record: ChangeRecord) -> Result<GroupUpdate> {
        let group = self.group;
        Ok(match record {
            ChangeRecord::Group {
                created,
                group: state,
                at,
            } => {
                let group = state.into_group(group, at);
                if created {
                    GroupUpdate::GroupCreated { group }
                } else {
                    GroupUpdate::GroupChanged { group }
                }
            }
            ChangeRecord::EventAppended { seq, streamed } => {
                let mut event = self.carried(seq, rev)?;
                if let Some(len) = streamed {
                    // The first output: the prefix of the reply's text it carried.
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    if !event.text.is_char_boundary(len) || len > event.text.len() {
                        return Err(Error::storage(format!(
                            "corrupt store: change {rev} carried {len} bytes of reply {seq}, \
                             which holds {}",
                            event.text.len()
                        )));
                    }
                    event.text.truncate(len);
                    event.streaming = true;
                    event.error = None;
                }
                event.rev = rev;
                GroupUpdate::EventAppended { event }
            }
            ChangeRecord::ReplyDelta { seq, start, len }
            | ChangeRecord::DeltasCollapsed {
                seq, start, len, ..
            } => {
                let event = self.event(seq, rev)?;
                let range = usize::try_from(start)
                    .ok()
                    .zip(usize::try_from(start.saturating_add(len)).ok())
                    .and_then(|(start, end)| event.text.get(start..end));
                let Some(text) = range.map(str::to_owned) else {
                    return Err(Error::storage(format!(
                        "corrupt store: change {rev} carried bytes {start}..{} of reply {seq}, \
                         which holds {}",
                        start.saturating_add(len),
                        event.text.len()
                    )));
                };
                GroupUpdate::ReplyDelta {
                    seq,
                    familiar_id: event.familiar_id.clone().unwrap_or_default(),
                    text,
                }
            }
            ChangeRecord::ReplyFinished { seq } => {
                let mut event = self.carried(seq, rev)?;
                event.rev = rev;
                GroupUpdate::ReplyFinished { event }
            }
            ChangeRecord::SessionChanged { session, record } => GroupUpdate::SessionChanged {
                session: record.into_session(session),
            },
            ChangeRecord::SessionSacrificed { session } => GroupUpdate::SessionSacrificed {
                session_id: ids::to_string(session),
            },
            ChangeRecord::Reset { .. } => {
                return Err(Error::storage(
                    "internal error: a reset is read as the group's state, not rebuilt",
                ))
            }
            ChangeRecord::MessagePending { message } => GroupUpdate::MessagePending {
                message: message.into_message(self.group_id.clone()),
            },
            ChangeRecord::MessageSent { seq, txn } => {
                let mut event = self.carried(seq, rev)?;
                event.rev = rev;
                GroupUpdate::MessageSent {
                    txn_id: ids::to_string(txn),
                    event,
                }
            }
            ChangeRecord::MessageDiscarded { txn } => GroupUpdate::MessageDiscarded {
                txn_id: ids::to_string(txn),
            },
        })
    }
}

/// Fills a streaming reply's text (and its latest rev) from its chunks; O(text length). Any
/// other event is left as it is.
pub fn complete_event(
    chunks: &impl ReadableTable<(u128, u64, u64), (u64, &'static str)>,
    group: u128,
    event: &mut GroupEvent,
) -> Result<()> {
    if event.streaming {
        let seq = event.seq;
        for entry in chunks.range((group, seq, 0)..=(group, seq, u64::MAX))? {
            let (key, chunk) = entry?;
            event.text.push_str(chunk.value().1);
            event.rev = event.rev.max(key.value().2);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn events_round_trip_without_their_key() {
        let plain = GroupEvent {
            group_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            seq: 7,
            rev: 300,
            kind: EventKind::User,
            familiar_id: None,
            author: None,
            turn_id: None,
            text: "héllo, wörld".into(),
            streaming: false,
            error: None,
            notice: None,
            timestamp: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        };
        let full = GroupEvent {
            kind: EventKind::Familiar,
            familiar_id: Some("ada".into()),
            author: Some("Sam".into()),
            turn_id: Some("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c".into()),
            text: String::new(),
            streaming: true,
            error: Some(ReplyError {
                kind: ReplyErrorKind::Interrupted,
                message: "stopped".into(),
            }),
            notice: Some(SystemNotice::Renamed {
                from: "a".into(),
                to: "b".into(),
            }),
            ..plain.clone()
        };
        let group = ids::parse("group", &plain.group_id).unwrap();
        for event in [plain, full] {
            let bytes = encode_event(&event).unwrap();
            assert!(
                !bytes
                    .windows(event.group_id.len())
                    .any(|w| w == event.group_id.as_bytes()),
                "the group id is the key's, not the value's"
            );
            assert_eq!(decode_event(group, 7, &bytes).unwrap(), event);
            let mut trailing = bytes.clone();
            trailing.push(0);
            assert!(decode_event(group, 7, &trailing).is_err());
            assert!(decode_event(group, 7, &bytes[..bytes.len() - 1]).is_err());
        }
    }
}
