//! The integrity check: every invariant that can be read back from the store, verified over one
//! read transaction (one commit), so a check running beside the writer sees a consistent state.
//!
//! What a healthy store satisfies, per group:
//! - events are exactly seq 1..=head, each stored under its own group and seq;
//! - the change log is exactly rev 1..=head; rev 1 is the group's creation; `EventAppended`
//!   changes name seq 1, 2, 3, … in rev order, once each; every change names an event that
//!   exists; each event's rev is the rev of the latest change to it, and its text is what its
//!   changes carried (the appended text plus every delta, or the finished text);
//! - every member has exactly one session of its own: it exists, belongs to this group and this
//!   familiar, is in the group's session index, and no other member shares it;
//! - a reply streams (or holds streamed chunks) only while the group's turn lock waits for its
//!   familiar; a session runs only while the turn lock waits for its member; the turn lock names
//!   the user event that started it and only current members that have not finished;
//! - cursors are within the group's head;
//!
//! and nothing (event, change, chunk, session, index entry, turn lock, cursor) belongs to a group
//! that does not exist. Read errors fail the check; values that cannot be decoded are problems.

use std::collections::{BTreeMap, HashMap, HashSet};

use redb::{ReadableTable, ReadableTableMetadata};
use serde::de::DeserializeOwned;

use super::codec;
use super::tables::*;
use super::Reader;
use crate::error::Result;
use crate::ids;
use crate::model::{
    EventKind, Familiar, GroupConversation, GroupEvent, GroupUpdate, IntegrityProblem,
    IntegrityProblemKind as Kind, IntegrityReport, Session, SessionStatus, MAX_INTEGRITY_PROBLEMS,
};

/// Checks the whole store as of the reader's commit.
pub fn verify(reader: &Reader) -> Result<IntegrityReport> {
    let mut check = Check::default();
    check.schema(reader)?;
    let familiars = check.familiars(reader)?;
    let heads = check.heads(reader)?;
    let groups = check.groups(reader, &heads)?;
    let turns = check.turns(reader, &groups)?;
    let sessions = check.sessions(reader, &groups, &turns)?;
    for (&group, record) in &groups {
        let head = heads[&group];
        check.members(reader, group, record, &sessions, &familiars)?;
        let events = check.timeline(reader, group, head, turns.get(&group))?;
        if let Some(turn) = turns.get(&group) {
            check.turn_lock(group, turn, record, &sessions, &events);
        }
    }
    check.cursors(reader, &heads)?;
    check.orphans(reader, &groups)?;
    Ok(check.report)
}

#[derive(Default)]
struct Check {
    report: IntegrityReport,
}

/// What the timeline check learns about one stored event.
struct Stored {
    kind: EventKind,
    familiar_id: Option<String>,
    turn_id: Option<String>,
    streaming: bool,
    /// The stored rev, raised to the latest chunk's for a streaming reply.
    rev: u64,
    /// Fingerprint of the stored event with its text left out.
    shape: u64,
    /// Fingerprint of the event's full text (chunks included for a streaming reply).
    text: Fnv,
}

/// What the change log says about one seq.
#[derive(Default)]
struct Logged {
    appended: u32,
    latest_rev: u64,
    /// Fingerprint (text left out) of the latest change that carried the whole event.
    shape: Option<u64>,
    /// The appended text plus every delta, in rev order.
    streamed: Fnv,
    /// The text a `ReplyFinished` carried.
    finished: Option<Fnv>,
}

impl Check {
    fn problem(&mut self, group: Option<u128>, kind: Kind, detail: impl Into<String>) {
        if self.report.problems.len() < MAX_INTEGRITY_PROBLEMS {
            self.report.problems.push(IntegrityProblem {
                group_id: group.map(ids::to_string),
                kind,
                detail: detail.into(),
            });
        } else {
            self.report.problems_omitted += 1;
        }
    }

    /// Decodes a value, recording a problem (and returning `None`) when it cannot be.
    fn decode<T: DeserializeOwned>(
        &mut self,
        group: Option<u128>,
        what: impl FnOnce() -> String,
        bytes: &[u8],
    ) -> Option<T> {
        match codec::decode(bytes) {
            Ok(value) => Some(value),
            Err(err) => {
                self.problem(group, Kind::CorruptRecord, format!("{}: {err}", what()));
                None
            }
        }
    }

    fn schema(&mut self, reader: &Reader) -> Result<()> {
        let meta = reader.txn.open_table(META)?;
        match meta.get(SCHEMA_KEY)?.map(|v| v.value()) {
            Some(version) if (1..=SCHEMA_VERSION).contains(&version) => {}
            Some(version) => self.problem(
                None,
                Kind::Schema,
                format!("schema version {version}; this release reads 1..={SCHEMA_VERSION}"),
            ),
            None => self.problem(None, Kind::Schema, "no schema version"),
        }
        Ok(())
    }

    fn familiars(&mut self, reader: &Reader) -> Result<HashSet<String>> {
        let table = reader.txn.open_table(FAMILIARS)?;
        let mut out = HashSet::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let key = key.value();
            let Some(familiar) =
                self.decode::<Familiar>(None, || format!("familiar {key:?}"), value.value())
            else {
                continue;
            };
            if familiar.id != key {
                self.problem(
                    None,
                    Kind::CorruptRecord,
                    format!("familiar stored under {key:?} has id {:?}", familiar.id),
                );
            }
            out.insert(key.to_owned());
        }
        self.report.familiars = out.len() as u64;
        Ok(out)
    }

    fn heads(&mut self, reader: &Reader) -> Result<BTreeMap<u128, Head>> {
        let table = reader.txn.open_table(HEADS)?;
        let mut out = BTreeMap::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let group = key.value();
            if let Some(head) = self.decode::<Head>(Some(group), || "head".into(), value.value()) {
                if head.next_seq == 0 || head.next_rev == 0 {
                    self.problem(
                        Some(group),
                        Kind::CorruptRecord,
                        format!("head counts from 0: {head:?}"),
                    );
                    continue;
                }
                out.insert(group, head);
            }
        }
        Ok(out)
    }

    /// The groups that have both a record and a head; either alone is dangling.
    fn groups(
        &mut self,
        reader: &Reader,
        heads: &BTreeMap<u128, Head>,
    ) -> Result<BTreeMap<u128, GroupConversation>> {
        let table = reader.txn.open_table(GROUPS)?;
        let mut out = BTreeMap::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let group = key.value();
            let Some(record) =
                self.decode::<GroupConversation>(Some(group), || "group".into(), value.value())
            else {
                continue;
            };
            if record.id != ids::to_string(group) {
                self.problem(
                    Some(group),
                    Kind::CorruptRecord,
                    format!("group record has id {}", record.id),
                );
            }
            if heads.contains_key(&group) {
                out.insert(group, record);
            } else {
                self.problem(Some(group), Kind::Dangling, "group has no head");
            }
        }
        for &group in heads.keys() {
            if !out.contains_key(&group) && table.get(group)?.is_none() {
                self.problem(
                    Some(group),
                    Kind::Dangling,
                    "head of a group with no record",
                );
            }
        }
        self.report.groups = out.len() as u64;
        Ok(out)
    }

    fn turns(
        &mut self,
        reader: &Reader,
        groups: &BTreeMap<u128, GroupConversation>,
    ) -> Result<HashMap<u128, TurnRecord>> {
        let table = reader.txn.open_table(TURNS)?;
        let mut out = HashMap::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let group = key.value();
            let Some(turn) =
                self.decode::<TurnRecord>(Some(group), || "turn lock".into(), value.value())
            else {
                continue;
            };
            if groups.contains_key(&group) {
                out.insert(group, turn);
            } else {
                self.problem(
                    Some(group),
                    Kind::Dangling,
                    format!(
                        "turn lock {} of a group that does not exist",
                        ids::to_string(turn.turn_id)
                    ),
                );
            }
        }
        self.report.running_turns = out.len() as u64;
        Ok(out)
    }

    fn sessions(
        &mut self,
        reader: &Reader,
        groups: &BTreeMap<u128, GroupConversation>,
        turns: &HashMap<u128, TurnRecord>,
    ) -> Result<HashMap<u128, Session>> {
        let table = reader.txn.open_table(SESSIONS)?;
        let index = reader.txn.open_table(GROUP_SESSIONS)?;
        let mut out = HashMap::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let id = key.value();
            let what = || format!("session {}", ids::to_string(id));
            let Some(session) = self.decode::<Session>(None, what, value.value()) else {
                continue;
            };
            if session.id != ids::to_string(id) {
                self.problem(
                    None,
                    Kind::CorruptRecord,
                    format!("session stored under {} has id {}", what(), session.id),
                );
            }
            let group = match ids::parse("group_id", &session.group_id) {
                Ok(group) if groups.contains_key(&group) => group,
                _ => {
                    self.problem(
                        None,
                        Kind::Dangling,
                        format!("{} belongs to missing group {}", what(), session.group_id),
                    );
                    continue;
                }
            };
            if index.get((group, id))?.is_none() {
                self.problem(
                    Some(group),
                    Kind::Dangling,
                    format!("{} is missing from the group's session index", what()),
                );
            }
            if session.status == SessionStatus::Running {
                self.report.running_sessions += 1;
                let awaited = turns.get(&group).is_some_and(|turn| {
                    turn.pending.contains(&session.familiar_id)
                        && groups[&group].session_of(&session.familiar_id)
                            == Some(session.id.as_str())
                });
                if !awaited {
                    self.problem(
                        Some(group),
                        Kind::RunningWithoutTurn,
                        format!(
                            "{} of {:?} is running but no running turn waits for it",
                            what(),
                            session.familiar_id
                        ),
                    );
                }
            }
            out.insert(id, session);
        }
        for entry in index.iter()? {
            let (key, _) = entry?;
            let (group, session) = key.value();
            let owner = out.get(&session).map(|s| s.group_id.clone());
            if owner != Some(ids::to_string(group)) {
                self.problem(
                    Some(group),
                    Kind::Dangling,
                    format!(
                        "session index names session {} which {}",
                        ids::to_string(session),
                        match owner {
                            Some(owner) => format!("belongs to group {owner}"),
                            None => "does not exist".to_owned(),
                        }
                    ),
                );
            }
        }
        self.report.sessions = out.len() as u64;
        Ok(out)
    }

    fn members(
        &mut self,
        reader: &Reader,
        group: u128,
        record: &GroupConversation,
        sessions: &HashMap<u128, Session>,
        familiars: &HashSet<String>,
    ) -> Result<()> {
        let index = reader.txn.open_table(GROUP_SESSIONS)?;
        let mut seen_familiars = HashSet::new();
        let mut seen_sessions = HashSet::new();
        for member in &record.members {
            let familiar = &member.familiar_id;
            if !seen_familiars.insert(familiar.as_str()) {
                self.problem(
                    Some(group),
                    Kind::MemberSession,
                    format!("{familiar:?} is a member twice"),
                );
            }
            if !familiars.contains(familiar) {
                self.problem(
                    Some(group),
                    Kind::Dangling,
                    format!("member {familiar:?} is not a registered familiar"),
                );
            }
            if !seen_sessions.insert(member.session_id.as_str()) {
                self.problem(
                    Some(group),
                    Kind::MemberSession,
                    format!(
                        "session {} is the session of two members",
                        member.session_id
                    ),
                );
            }
            let Ok(id) = ids::parse("session_id", &member.session_id) else {
                self.problem(
                    Some(group),
                    Kind::CorruptRecord,
                    format!("member {familiar:?} has session id {:?}", member.session_id),
                );
                continue;
            };
            let Some(session) = sessions.get(&id) else {
                self.problem(
                    Some(group),
                    Kind::MemberSession,
                    format!(
                        "member {familiar:?} has no session: {} does not exist",
                        member.session_id
                    ),
                );
                continue;
            };
            if session.group_id != record.id || &session.familiar_id != familiar {
                self.problem(
                    Some(group),
                    Kind::MemberSession,
                    format!(
                        "member {familiar:?} has session {} of familiar {:?} in group {}",
                        member.session_id, session.familiar_id, session.group_id
                    ),
                );
            }
            if index.get((group, id))?.is_none() {
                self.problem(
                    Some(group),
                    Kind::MemberSession,
                    format!(
                        "session {} of member {familiar:?} is missing from the group's index",
                        member.session_id
                    ),
                );
            }
        }
        Ok(())
    }

    /// Events, reply chunks and the change log of one group, checked against each other.
    fn timeline(
        &mut self,
        reader: &Reader,
        group: u128,
        head: Head,
        turn: Option<&TurnRecord>,
    ) -> Result<BTreeMap<u64, Stored>> {
        let group_id = ids::to_string(group);
        let mut stored = self.events(reader, group, &group_id, head)?;
        self.chunks(reader, group, head, turn, &mut stored)?;
        let logged = self.changes(reader, group, &group_id, head, &stored)?;

        for (&seq, event) in &stored {
            let Some(log) = logged.get(&seq) else {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!("event {seq} has no change in the log"),
                );
                continue;
            };
            if log.appended != 1 {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!("event {seq} was appended {} times in the log", log.appended),
                );
            }
            if event.rev != log.latest_rev {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!(
                        "event {seq} has rev {} but its latest change is rev {}",
                        event.rev, log.latest_rev
                    ),
                );
            }
            if log.shape.is_some_and(|shape| shape != event.shape) {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!("event {seq} differs from the event its latest change carried"),
                );
            }
            if let Some(finished) = log.finished {
                if finished != log.streamed {
                    self.problem(
                        Some(group),
                        Kind::RevIndex,
                        format!("reply {seq} finished with text other than what it streamed"),
                    );
                }
            }
            if event.text != log.finished.unwrap_or(log.streamed) {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!("event {seq} holds text other than what its changes carried"),
                );
            }
            if event.streaming {
                self.report.streaming_replies += 1;
                let awaited = turn.is_some_and(|turn| {
                    event.turn_id == Some(ids::to_string(turn.turn_id))
                        && event
                            .familiar_id
                            .as_ref()
                            .is_some_and(|f| turn.pending.contains(f))
                });
                if event.kind != EventKind::Familiar || !awaited {
                    self.problem(
                        Some(group),
                        Kind::StreamingWithoutTurn,
                        format!(
                            "event {seq} ({:?} of {:?}, turn {:?}) is streaming but no running \
                             turn waits for it",
                            event.kind, event.familiar_id, event.turn_id
                        ),
                    );
                }
            }
        }
        Ok(stored)
    }

    fn events(
        &mut self,
        reader: &Reader,
        group: u128,
        group_id: &str,
        head: Head,
    ) -> Result<BTreeMap<u64, Stored>> {
        let table = reader.txn.open_table(EVENTS)?;
        let mut stored = BTreeMap::new();
        let mut expected = 1;
        for entry in table.range((group, 0)..=(group, u64::MAX))? {
            let (key, value) = entry?;
            let seq = key.value().1;
            self.report.events += 1;
            if seq != expected {
                self.problem(
                    Some(group),
                    Kind::SeqNotContiguous,
                    format!("seq {seq} follows seq {}", expected - 1),
                );
            }
            expected = seq.saturating_add(1);
            let Some(mut event) =
                self.decode::<GroupEvent>(Some(group), || format!("event {seq}"), value.value())
            else {
                continue;
            };
            if event.seq != seq || event.group_id != group_id {
                self.problem(
                    Some(group),
                    Kind::CorruptRecord,
                    format!(
                        "event stored at seq {seq} says group {} seq {}",
                        event.group_id, event.seq
                    ),
                );
            }
            if event.rev == 0 || event.rev > head.rev() {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!(
                        "event {seq} has rev {} outside 1..={}",
                        event.rev,
                        head.rev()
                    ),
                );
            }
            if event.streaming && !event.text.is_empty() {
                self.problem(
                    Some(group),
                    Kind::CorruptRecord,
                    format!("streaming reply {seq} holds text outside its chunks"),
                );
            }
            let text = Fnv::of(event.text.as_bytes());
            event.text.clear();
            stored.insert(
                seq,
                Stored {
                    kind: event.kind,
                    familiar_id: event.familiar_id.clone(),
                    turn_id: event.turn_id.clone(),
                    streaming: event.streaming,
                    rev: event.rev,
                    shape: shape(&event)?,
                    text,
                },
            );
        }
        if expected - 1 != head.seq() {
            self.problem(
                Some(group),
                Kind::SeqNotContiguous,
                format!(
                    "the head's latest seq is {} but the events end at seq {}",
                    head.seq(),
                    expected - 1
                ),
            );
        }
        Ok(stored)
    }

    /// A streaming reply's chunks complete its text and raise its rev; any other chunk is
    /// streamed text without a streaming reply.
    fn chunks(
        &mut self,
        reader: &Reader,
        group: u128,
        head: Head,
        turn: Option<&TurnRecord>,
        stored: &mut BTreeMap<u64, Stored>,
    ) -> Result<()> {
        let table = reader.txn.open_table(REPLY_CHUNKS)?;
        for entry in table.range((group, 0, 0)..=(group, u64::MAX, u64::MAX))? {
            let (key, text) = entry?;
            let (_, seq, rev) = key.value();
            if rev > head.rev() {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!(
                        "chunk of reply {seq} has rev {rev} beyond the head {}",
                        head.rev()
                    ),
                );
            }
            match stored.get_mut(&seq) {
                Some(event) if event.streaming => {
                    event.text.write(text.value().as_bytes());
                    event.rev = event.rev.max(rev);
                }
                found => {
                    let what = if found.is_some() {
                        "a finished event"
                    } else {
                        "a missing event"
                    };
                    let running = turn.map(|t| ids::to_string(t.turn_id));
                    self.problem(
                        Some(group),
                        Kind::StreamingWithoutTurn,
                        format!(
                            "streamed text at rev {rev} belongs to {what} {seq} \
                             (running turn: {running:?})"
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    fn changes(
        &mut self,
        reader: &Reader,
        group: u128,
        group_id: &str,
        head: Head,
        stored: &BTreeMap<u64, Stored>,
    ) -> Result<HashMap<u64, Logged>> {
        let table = reader.txn.open_table(CHANGES)?;
        let mut logged: HashMap<u64, Logged> = HashMap::new();
        let mut expected = 1;
        let mut next_appended = 1;
        for entry in table.range((group, 0)..=(group, u64::MAX))? {
            let (key, value) = entry?;
            let rev = key.value().1;
            self.report.changes += 1;
            if rev != expected {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!(
                        "the change log jumps from rev {} to rev {rev}",
                        expected - 1
                    ),
                );
            }
            expected = rev.saturating_add(1);
            let Some(update) =
                self.decode::<GroupUpdate>(Some(group), || format!("change {rev}"), value.value())
            else {
                continue;
            };
            let created = matches!(update, GroupUpdate::GroupCreated { .. });
            if created != (rev == 1) {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!(
                        "rev {rev} is {}",
                        if created {
                            "a second creation"
                        } else {
                            "not the group's creation"
                        }
                    ),
                );
            }
            let (seq, event) = match &update {
                GroupUpdate::EventAppended { event } | GroupUpdate::ReplyFinished { event } => {
                    (event.seq, Some(event))
                }
                GroupUpdate::ReplyDelta { seq, .. } => (*seq, None),
                GroupUpdate::GroupDeleted => {
                    self.problem(
                        Some(group),
                        Kind::RevIndex,
                        format!("rev {rev} records the deletion of a group that exists"),
                    );
                    continue;
                }
                _ => continue,
            };
            if !stored.contains_key(&seq) {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!("change {rev} names event {seq}, which does not exist"),
                );
            }
            if let Some(event) = event {
                if event.rev != rev || event.group_id != group_id {
                    self.problem(
                        Some(group),
                        Kind::RevIndex,
                        format!(
                            "change {rev} carries event {seq} of group {} at rev {}",
                            event.group_id, event.rev
                        ),
                    );
                }
            }
            let log = logged.entry(seq).or_default();
            log.latest_rev = rev;
            match update {
                GroupUpdate::EventAppended { mut event } => {
                    if seq != next_appended {
                        self.problem(
                            Some(group),
                            Kind::RevIndex,
                            format!(
                                "change {rev} appends seq {seq} where seq {next_appended} was next"
                            ),
                        );
                    }
                    next_appended = seq.saturating_add(1);
                    let log = logged.entry(seq).or_default();
                    log.appended += 1;
                    log.streamed.write(event.text.as_bytes());
                    event.text.clear();
                    log.shape = Some(shape(&event)?);
                }
                GroupUpdate::ReplyDelta { text, .. } => {
                    if log.appended == 0 {
                        self.problem(
                            Some(group),
                            Kind::RevIndex,
                            format!("change {rev} streams into reply {seq} before it was appended"),
                        );
                    }
                    log.streamed.write(text.as_bytes());
                }
                GroupUpdate::ReplyFinished { mut event } => {
                    log.finished = Some(Fnv::of(event.text.as_bytes()));
                    event.text.clear();
                    log.shape = Some(shape(&event)?);
                }
                _ => {}
            }
        }
        if expected - 1 != head.rev() {
            self.problem(
                Some(group),
                Kind::RevIndex,
                format!(
                    "the head's latest rev is {} but the change log ends at rev {}",
                    head.rev(),
                    expected - 1
                ),
            );
        }
        Ok(logged)
    }

    fn turn_lock(
        &mut self,
        group: u128,
        turn: &TurnRecord,
        record: &GroupConversation,
        sessions: &HashMap<u128, Session>,
        events: &BTreeMap<u64, Stored>,
    ) {
        let turn_id = ids::to_string(turn.turn_id);
        match events.get(&turn.user_seq) {
            Some(event)
                if event.kind == EventKind::User
                    && event.turn_id.as_deref() == Some(turn_id.as_str()) => {}
            _ => self.problem(
                Some(group),
                Kind::TurnLock,
                format!(
                    "turn {turn_id} names seq {} as its user message, which is not",
                    turn.user_seq
                ),
            ),
        }
        let mut seen = HashSet::new();
        for familiar in &turn.pending {
            if !seen.insert(familiar) {
                self.problem(
                    Some(group),
                    Kind::TurnLock,
                    format!("turn {turn_id} waits for {familiar:?} twice"),
                );
            }
            let session = record
                .session_of(familiar)
                .and_then(|id| ids::parse("session_id", id).ok())
                .and_then(|id| sessions.get(&id));
            match session {
                None => self.problem(
                    Some(group),
                    Kind::TurnLock,
                    format!("turn {turn_id} waits for {familiar:?}, which is not a member"),
                ),
                Some(session) if session.status != SessionStatus::Running => self.problem(
                    Some(group),
                    Kind::TurnLock,
                    format!(
                        "turn {turn_id} waits for {familiar:?}, whose session is {:?}",
                        session.status
                    ),
                ),
                Some(_) => {}
            }
            let finished = events
                .range(turn.user_seq.saturating_add(1)..)
                .any(|(_, e)| {
                    !e.streaming
                        && e.familiar_id.as_ref() == Some(familiar)
                        && e.turn_id.as_deref() == Some(turn_id.as_str())
                });
            if finished {
                self.problem(
                    Some(group),
                    Kind::TurnLock,
                    format!("turn {turn_id} waits for {familiar:?}, whose reply has finished"),
                );
            }
        }
    }

    fn cursors(&mut self, reader: &Reader, heads: &BTreeMap<u128, Head>) -> Result<()> {
        let table = reader.txn.open_table(CURSORS)?;
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (group, consumer) = key.value();
            let rev = value.value();
            self.report.cursors += 1;
            match heads.get(&group) {
                None => self.problem(
                    Some(group),
                    Kind::Dangling,
                    format!("cursor {consumer:?} of a group that does not exist"),
                ),
                Some(head) if rev > head.rev() => self.problem(
                    Some(group),
                    Kind::CursorBeyondHead,
                    format!(
                        "cursor {consumer:?} is at rev {rev}, beyond the latest rev {}",
                        head.rev()
                    ),
                ),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Events, chunks and changes of groups that do not exist (one problem per group and table).
    fn orphans(
        &mut self,
        reader: &Reader,
        groups: &BTreeMap<u128, GroupConversation>,
    ) -> Result<()> {
        let mut found: BTreeMap<(u128, &str), u64> = BTreeMap::new();
        let events = reader.txn.open_table(EVENTS)?;
        let changes = reader.txn.open_table(CHANGES)?;
        let chunks = reader.txn.open_table(REPLY_CHUNKS)?;
        // Every key belongs to a known group in a healthy store, so only the counts are compared
        // first and the tables are walked only when they disagree.
        if events.len()? != self.report.events {
            for entry in events.iter()? {
                let group = entry?.0.value().0;
                if !groups.contains_key(&group) {
                    *found.entry((group, "events")).or_default() += 1;
                }
            }
        }
        if changes.len()? != self.report.changes {
            for entry in changes.iter()? {
                let group = entry?.0.value().0;
                if !groups.contains_key(&group) {
                    *found.entry((group, "changes")).or_default() += 1;
                }
            }
        }
        for entry in chunks.iter()? {
            let group = entry?.0.value().0;
            if !groups.contains_key(&group) {
                *found.entry((group, "reply chunks")).or_default() += 1;
            }
        }
        for ((group, table), count) in found {
            self.problem(
                Some(group),
                Kind::Dangling,
                format!("{count} {table} of a group that does not exist"),
            );
        }
        Ok(())
    }
}

/// A fingerprint of an event's encoding (its text cleared by the caller).
fn shape(event: &GroupEvent) -> Result<u64> {
    Ok(Fnv::of(&codec::encode(event)?).0)
}

/// FNV-1a over a byte stream, so text split across chunks and deltas compares with text stored
/// whole without keeping either in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fnv(u64, u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325, 0)
    }
}

impl Fnv {
    fn of(bytes: &[u8]) -> Self {
        let mut fnv = Self::default();
        fnv.write(bytes);
        fnv
    }

    /// Feeds more bytes; the second field counts them.
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.1 += bytes.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    //! Each test corrupts a copy of one healthy store in exactly one way, through the raw redb
    //! tables, and expects the check to name that corruption.

    use std::path::PathBuf;
    use std::time::Duration;

    use redb::{Database, WriteTransaction};

    use super::*;
    use crate::model::{Config, Familiar};
    use crate::Coven;

    /// A healthy store file with turns, membership changes, a rename, a cursor, an adopted group
    /// and a deleted one, and the ids the tests corrupt.
    struct Base {
        _dir: tempfile::TempDir,
        path: PathBuf,
        /// A group with a finished turn (seq 1 user, 2 and 3 replies), then more events.
        group: u128,
        deleted: u128,
        counter: std::sync::atomic::AtomicUsize,
    }

    impl Base {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("base.redb");
            let coven = Coven::open(&path, Config::default()).unwrap();
            for id in ["ada", "bo", "cy"] {
                let mut familiar = Familiar::new(id, id.to_uppercase(), "scripted");
                familiar.model = Some("words:5".into());
                coven.register_familiar(familiar).unwrap();
            }
            let group = coven
                .create_group(None, vec!["ada".into(), "bo".into()], None)
                .unwrap();
            let turn = coven.send(&group.id, "hello".into(), None).unwrap();
            assert!(coven
                .wait_turn(&turn.turn_id, Duration::from_secs(30))
                .unwrap());
            coven
                .append_user_message(&group.id, "more".into(), None)
                .unwrap();
            coven.rename_group(&group.id, "renamed".into()).unwrap();
            coven.add_member(&group.id, "cy").unwrap();
            coven.remove_member(&group.id, "bo").unwrap();
            let rev = coven.get_group(&group.id).unwrap().rev;
            coven.set_cursor(&group.id, "phone", rev).unwrap();
            let deleted = coven.create_group(None, vec!["ada".into()], None).unwrap();
            coven
                .append_user_message(&deleted.id, "gone soon".into(), None)
                .unwrap();
            coven.delete_group(&deleted.id).unwrap();
            let report = coven.check().unwrap();
            assert!(report.is_clean_and_idle(), "{report:#?}");
            coven.close();
            Self {
                _dir: dir,
                path,
                group: ids::parse("id", &group.id).unwrap(),
                deleted: ids::parse("id", &deleted.id).unwrap(),
                counter: Default::default(),
            }
        }

        /// Checks a copy of the store after `corrupt` changed it.
        fn check_after(&self, corrupt: impl FnOnce(&WriteTransaction)) -> IntegrityReport {
            let n = self
                .counter
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let copy = self.path.with_file_name(format!("copy-{n}.redb"));
            std::fs::copy(&self.path, &copy).unwrap();
            let db = Database::create(&copy).unwrap();
            let txn = db.begin_write().unwrap();
            corrupt(&txn);
            txn.commit().unwrap();
            verify(&Reader::new(&db).unwrap()).unwrap()
        }
    }

    fn read<T: DeserializeOwned>(txn: &WriteTransaction, group: u128, seq: u64) -> T {
        let events = txn.open_table(EVENTS).unwrap();
        let value = events.get((group, seq)).unwrap().unwrap();
        codec::decode(value.value()).unwrap()
    }

    fn write_event(txn: &WriteTransaction, group: u128, event: &GroupEvent) {
        txn.open_table(EVENTS)
            .unwrap()
            .insert((group, event.seq), codec::encode(event).unwrap().as_slice())
            .unwrap();
    }

    fn group_record(txn: &WriteTransaction, group: u128) -> GroupConversation {
        let table = txn.open_table(GROUPS).unwrap();
        let value = table.get(group).unwrap().unwrap();
        codec::decode(value.value()).unwrap()
    }

    fn head(txn: &WriteTransaction, group: u128) -> Head {
        let table = txn.open_table(HEADS).unwrap();
        let value = table.get(group).unwrap().unwrap();
        codec::decode(value.value()).unwrap()
    }

    fn member_session(txn: &WriteTransaction, group: u128, index: usize) -> (u128, Session) {
        let id = ids::parse("id", &group_record(txn, group).members[index].session_id).unwrap();
        let table = txn.open_table(SESSIONS).unwrap();
        let value = table.get(id).unwrap().unwrap();
        (id, codec::decode(value.value()).unwrap())
    }

    fn store_session(txn: &WriteTransaction, id: u128, session: &Session) {
        txn.open_table(SESSIONS)
            .unwrap()
            .insert(id, codec::encode(session).unwrap().as_slice())
            .unwrap();
    }

    #[track_caller]
    fn expect(report: &IntegrityReport, kind: Kind, detail: &str) {
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.kind == kind && p.detail.contains(detail)),
            "expected a {kind:?} problem mentioning {detail:?}; got {:#?}",
            report.problems
        );
    }

    #[track_caller]
    fn only(report: &IntegrityReport, kinds: &[Kind]) {
        for problem in &report.problems {
            assert!(
                kinds.contains(&problem.kind),
                "unexpected problem {problem:#?}"
            );
        }
    }

    #[test]
    fn a_healthy_store_is_clean_and_counted() {
        let base = Base::new();
        let report = base.check_after(|_| {});
        assert!(report.is_clean_and_idle(), "{report:#?}");
        assert_eq!(report.groups, 1);
        assert_eq!(report.familiars, 3);
        assert_eq!(report.sessions, 3, "ada, cy and the archived bo");
        assert_eq!(report.cursors, 1);
        assert!(report.events >= 7, "{report:?}");
        assert!(report.changes > report.events, "{report:?}");
    }

    #[test]
    fn a_missing_event_is_a_seq_hole_and_a_dangling_change() {
        let base = Base::new();
        let group = base.group;
        let report = base.check_after(|txn| {
            txn.open_table(EVENTS).unwrap().remove((group, 2)).unwrap();
        });
        expect(&report, Kind::SeqNotContiguous, "seq 3 follows seq 1");
        expect(
            &report,
            Kind::RevIndex,
            "names event 2, which does not exist",
        );
        only(&report, &[Kind::SeqNotContiguous, Kind::RevIndex]);
        assert_eq!(report.problems[0].group_id, Some(ids::to_string(group)));
    }

    #[test]
    fn a_head_ahead_of_the_events_is_a_seq_hole() {
        let base = Base::new();
        let group = base.group;
        let report = base.check_after(|txn| {
            let mut head = head(txn, group);
            head.next_seq += 1;
            txn.open_table(HEADS)
                .unwrap()
                .insert(group, codec::encode(&head).unwrap().as_slice())
                .unwrap();
        });
        expect(&report, Kind::SeqNotContiguous, "the head's latest seq is");
        only(&report, &[Kind::SeqNotContiguous]);
    }

    #[test]
    fn a_missing_change_is_a_rev_hole() {
        let base = Base::new();
        let group = base.group;
        let report = base.check_after(|txn| {
            // Rev 3: the first member's session starting to run.
            txn.open_table(CHANGES).unwrap().remove((group, 3)).unwrap();
        });
        expect(&report, Kind::RevIndex, "jumps from rev 2 to rev 4");
        only(&report, &[Kind::RevIndex]);
    }

    #[test]
    fn an_event_rewritten_behind_the_log_is_caught() {
        let base = Base::new();
        let group = base.group;
        let text = base.check_after(|txn| {
            let mut event: GroupEvent = read(txn, group, 1);
            event.text = "not what was said".into();
            write_event(txn, group, &event);
        });
        expect(&text, Kind::RevIndex, "event 1 holds text other than");
        only(&text, &[Kind::RevIndex]);

        let rev = base.check_after(|txn| {
            let mut event: GroupEvent = read(txn, group, 2);
            event.rev -= 1;
            write_event(txn, group, &event);
        });
        expect(&rev, Kind::RevIndex, "event 2 has rev");

        let author = base.check_after(|txn| {
            let mut event: GroupEvent = read(txn, group, 1);
            event.author = Some("someone else".into());
            write_event(txn, group, &event);
        });
        expect(
            &author,
            Kind::RevIndex,
            "differs from the event its latest change",
        );

        let moved = base.check_after(|txn| {
            let mut event: GroupEvent = read(txn, group, 1);
            event.seq = 9;
            write_event(txn, group, &GroupEvent { seq: 1, ..event });
            let mut event: GroupEvent = read(txn, group, 2);
            event.seq = 7;
            txn.open_table(EVENTS)
                .unwrap()
                .insert((group, 2), codec::encode(&event).unwrap().as_slice())
                .unwrap();
        });
        expect(&moved, Kind::CorruptRecord, "event stored at seq 2 says");
    }

    #[test]
    fn a_member_without_its_own_session_is_caught() {
        let base = Base::new();
        let group = base.group;
        let missing = base.check_after(|txn| {
            let (id, _) = member_session(txn, group, 0);
            txn.open_table(SESSIONS).unwrap().remove(id).unwrap();
        });
        expect(&missing, Kind::MemberSession, "\"ada\" has no session");
        expect(&missing, Kind::Dangling, "which does not exist");
        only(&missing, &[Kind::MemberSession, Kind::Dangling]);

        let shared = base.check_after(|txn| {
            let mut record = group_record(txn, group);
            record.members[1].session_id = record.members[0].session_id.clone();
            txn.open_table(GROUPS)
                .unwrap()
                .insert(group, codec::encode(&record).unwrap().as_slice())
                .unwrap();
        });
        expect(
            &shared,
            Kind::MemberSession,
            "is the session of two members",
        );
        expect(&shared, Kind::MemberSession, "of familiar \"ada\"");

        let unindexed = base.check_after(|txn| {
            let (id, _) = member_session(txn, group, 1);
            txn.open_table(GROUP_SESSIONS)
                .unwrap()
                .remove((group, id))
                .unwrap();
        });
        expect(
            &unindexed,
            Kind::MemberSession,
            "missing from the group's index",
        );
    }

    #[test]
    fn running_or_streaming_without_a_turn_is_caught() {
        let base = Base::new();
        let group = base.group;
        let running = base.check_after(|txn| {
            let (id, mut session) = member_session(txn, group, 0);
            session.status = SessionStatus::Running;
            store_session(txn, id, &session);
        });
        expect(&running, Kind::RunningWithoutTurn, "of \"ada\" is running");
        only(&running, &[Kind::RunningWithoutTurn]);
        assert_eq!(running.running_sessions, 1);

        // Reply 2 turned back into a streaming header whose text lives in a chunk.
        let streaming = base.check_after(|txn| {
            let mut event: GroupEvent = read(txn, group, 2);
            let text = std::mem::take(&mut event.text);
            event.streaming = true;
            write_event(txn, group, &event);
            txn.open_table(REPLY_CHUNKS)
                .unwrap()
                .insert((group, 2, event.rev), text.as_str())
                .unwrap();
        });
        expect(&streaming, Kind::StreamingWithoutTurn, "event 2");
        assert_eq!(streaming.streaming_replies, 1);

        let chunk = base.check_after(|txn| {
            txn.open_table(REPLY_CHUNKS)
                .unwrap()
                .insert((group, 3, 1), "late")
                .unwrap();
        });
        expect(
            &chunk,
            Kind::StreamingWithoutTurn,
            "belongs to a finished event 3",
        );
    }

    #[test]
    fn a_turn_lock_that_disagrees_with_the_timeline_is_caught() {
        let base = Base::new();
        let group = base.group;
        let report = base.check_after(|txn| {
            let user: GroupEvent = read(txn, group, 1);
            let lock = TurnRecord {
                turn_id: ids::parse("turn", user.turn_id.as_deref().unwrap()).unwrap(),
                // Seq 2 is a reply, not the user message.
                user_seq: 2,
                started_at: user.timestamp,
                // "bo" has left; "ada" answered already and her session is idle.
                pending: vec!["bo".into(), "ada".into()],
            };
            txn.open_table(TURNS)
                .unwrap()
                .insert(group, codec::encode(&lock).unwrap().as_slice())
                .unwrap();
        });
        expect(&report, Kind::TurnLock, "names seq 2 as its user message");
        expect(&report, Kind::TurnLock, "\"bo\", which is not a member");
        expect(&report, Kind::TurnLock, "\"ada\", whose session is Idle");
        only(&report, &[Kind::TurnLock]);
        assert_eq!(report.running_turns, 1);
    }

    #[test]
    fn a_cursor_beyond_the_head_is_caught() {
        let base = Base::new();
        let group = base.group;
        let report = base.check_after(|txn| {
            let latest = head(txn, group).rev();
            txn.open_table(CURSORS)
                .unwrap()
                .insert((group, "phone"), latest + 1)
                .unwrap();
        });
        expect(
            &report,
            Kind::CursorBeyondHead,
            "cursor \"phone\" is at rev",
        );
        only(&report, &[Kind::CursorBeyondHead]);
    }

    #[test]
    fn undecodable_values_and_a_missing_schema_are_caught() {
        let base = Base::new();
        let group = base.group;
        let report = base.check_after(|txn| {
            txn.open_table(EVENTS)
                .unwrap()
                .insert((group, 1), [1u8, 0xff, 0xff].as_slice())
                .unwrap();
            txn.open_table(CHANGES)
                .unwrap()
                .insert((group, 2), [9u8].as_slice())
                .unwrap();
            txn.open_table(META).unwrap().remove(SCHEMA_KEY).unwrap();
        });
        expect(&report, Kind::CorruptRecord, "event 1");
        expect(
            &report,
            Kind::CorruptRecord,
            "change 2: storage error: value format version 9",
        );
        expect(&report, Kind::Schema, "no schema version");
    }

    #[test]
    fn leftovers_of_a_deleted_group_are_caught() {
        let base = Base::new();
        let (group, deleted) = (base.group, base.deleted);
        let report = base.check_after(|txn| {
            let event: GroupEvent = read(txn, group, 1);
            write_event(txn, deleted, &event);
            txn.open_table(CURSORS)
                .unwrap()
                .insert((deleted, "phone"), 1)
                .unwrap();
            txn.open_table(CHANGES)
                .unwrap()
                .insert((deleted, 1), [1u8].as_slice())
                .unwrap();
        });
        expect(
            &report,
            Kind::Dangling,
            "1 events of a group that does not exist",
        );
        expect(
            &report,
            Kind::Dangling,
            "1 changes of a group that does not exist",
        );
        expect(&report, Kind::Dangling, "cursor \"phone\" of a group");
        only(&report, &[Kind::Dangling]);
        assert_eq!(report.problems[0].group_id, Some(ids::to_string(deleted)));
    }

    #[test]
    fn problems_beyond_the_limit_are_counted() {
        let base = Base::new();
        let group = base.group;
        let report = base.check_after(|txn| {
            let mut cursors = txn.open_table(CURSORS).unwrap();
            for i in 0..MAX_INTEGRITY_PROBLEMS + 5 {
                cursors
                    .insert((group, format!("c{i}").as_str()), u64::MAX)
                    .unwrap();
            }
        });
        assert_eq!(report.problems.len(), MAX_INTEGRITY_PROBLEMS);
        assert_eq!(report.problems_omitted, 5);
        assert!(!report.is_clean());
    }
}
