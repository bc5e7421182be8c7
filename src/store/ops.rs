//! The mutations, as run by the writer inside one batch. Each checks everything against the
//! current state first and writes only once nothing can refuse, so a refused call leaves the
//! store as it was.

use std::time::SystemTime;

use redb::ReadableTable;

use super::batch::Batch;
use super::records;
use super::tables::*;
use crate::error::{Error, Result};
use crate::ids;
use crate::model::{
    EventKind, Familiar, GroupConversation, GroupEvent, GroupUpdate, Member, Session,
    SessionStatus, SystemNotice,
};
use crate::validate::{MAX_MEMBERS, MAX_TITLE_CHARS};

/// A new event before the store gives it its place: [`Batch::insert_event`] sets `event`'s group,
/// seq and rev, and its timestamp to `at`, or to the batch's time when `at` is `None` (`at` is
/// for an event that happened before it is stored: adopted history, a home's event replicated).
pub struct NewEvent {
    pub event: GroupEvent,
    pub at: Option<SystemTime>,
}

impl NewEvent {
    pub fn user(text: String, author: Option<String>, turn_id: Option<String>) -> Self {
        Self {
            event: GroupEvent {
                group_id: String::new(),
                seq: 0,
                rev: 0,
                kind: EventKind::User,
                familiar_id: None,
                author,
                turn_id,
                text,
                streaming: false,
                error: None,
                notice: None,
                timestamp: SystemTime::UNIX_EPOCH,
            },
            at: None,
        }
    }

    pub fn familiar(familiar_id: String, text: String) -> Self {
        let mut new = Self::user(text, None, None);
        new.event.kind = EventKind::Familiar;
        new.event.familiar_id = Some(familiar_id);
        new
    }

    fn system(notice: SystemNotice, text: String) -> Self {
        let mut new = Self::user(text, None, None);
        new.event.kind = EventKind::System;
        new.event.notice = Some(notice);
        new
    }

    /// A home's event, as a replica stores it: at its home's time.
    pub fn replicated(event: GroupEvent) -> Self {
        Self {
            at: Some(event.timestamp),
            event,
        }
    }
}

/// What a new group is made of; sessions are provisioned for each member.
pub struct NewGroup {
    pub id: u128,
    pub title: Option<String>,
    /// Familiar ids with the session id each one gets.
    pub members: Vec<(String, u128)>,
    pub project_root: Option<String>,
}

impl<'txn> Batch<'txn> {
    pub fn familiar(&self, id: &str) -> Result<Familiar> {
        match self.familiars.open()?.get(id)? {
            Some(value) => records::decode_familiar(id, value.value()),
            None => Err(Error::not_found("familiar", id)),
        }
    }

    pub fn group(&mut self, group: u128) -> Result<GroupConversation> {
        let head = self.head(group)?;
        let mut record = match self.groups.open()?.get(group)? {
            Some(value) => records::decode_group(group, value.value())?,
            None => return Err(Error::not_found("group", ids::to_string(group))),
        };
        record.updated_at = head.active_at;
        Ok(record)
    }

    pub fn session(&self, session: u128) -> Result<Session> {
        match self.sessions.open()?.get(session)? {
            Some(value) => records::decode_session(session, value.value()),
            None => Err(Error::not_found("session", ids::to_string(session))),
        }
    }

    pub fn store_session(&mut self, session: &Session) -> Result<()> {
        let key = ids::parse_stored("session id", &session.id)?;
        self.sessions
            .open_mut()?
            .insert(key, records::encode_session(session)?.as_slice())?;
        Ok(())
    }

    /// Stores the group and records a `GroupChanged` (or `GroupCreated`) change carrying it.
    fn store_group(
        &mut self,
        group: u128,
        mut record: GroupConversation,
        created: bool,
    ) -> Result<GroupConversation> {
        record.updated_at = self.now;
        self.groups
            .open_mut()?
            .insert(group, records::encode_group(&record)?.as_slice())?;
        let update = if created {
            GroupUpdate::GroupCreated {
                group: record.clone(),
            }
        } else {
            GroupUpdate::GroupChanged {
                group: record.clone(),
            }
        };
        self.record(group, update)?;
        Ok(record)
    }

    /// Appends an event: claims its seq and rev, stores it, records `EventAppended`.
    pub fn append(&mut self, group: u128, new: NewEvent) -> Result<GroupEvent> {
        let event = self.insert_event(group, new)?;
        self.record(
            group,
            GroupUpdate::EventAppended {
                event: event.clone(),
            },
        )?;
        Ok(event)
    }

    /// Claims the event's seq and the rev of the change the caller records for it, and stores
    /// it.
    pub fn insert_event(&mut self, group: u128, new: NewEvent) -> Result<GroupEvent> {
        let seq = self.next_seq(group)?;
        let rev = self.peek_rev(group)?;
        let event = GroupEvent {
            group_id: ids::to_string(group),
            seq,
            rev,
            timestamp: new.at.unwrap_or(self.now),
            ..new.event
        };
        self.store_event_as_is(group, &event)?;
        Ok(event)
    }

    /// Stores an event under its seq; a streaming reply's text goes into its first chunk, at
    /// the event's rev (O(n) storage: chunks are joined once, when it finishes).
    pub fn store_event_as_is(&mut self, group: u128, event: &GroupEvent) -> Result<()> {
        if event.streaming {
            if !event.text.is_empty() {
                self.reply_chunks
                    .open_mut()?
                    .insert((group, event.seq, event.rev), (0, event.text.as_str()))?;
            }
            let header = GroupEvent {
                text: String::new(),
                ..event.clone()
            };
            self.events.open_mut()?.insert(
                (group, event.seq),
                records::encode_event(&header)?.as_slice(),
            )?;
        } else {
            self.events
                .open_mut()?
                .insert((group, event.seq), records::encode_event(event)?.as_slice())?;
        }
        Ok(())
    }

    pub fn register_familiar(&mut self, familiar: Familiar) -> Result<Familiar> {
        let existing = match self.familiar(&familiar.id) {
            Ok(existing) => Some(existing),
            Err(Error::NotFound { .. }) => None,
            Err(err) => return Err(err),
        };
        if let Some(existing) = existing {
            if existing.harness != familiar.harness {
                return Err(Error::conflict(format!(
                    "familiar {:?} is already registered with harness {:?}, not {:?}",
                    familiar.id, existing.harness, familiar.harness
                )));
            }
        }
        self.familiars.open_mut()?.insert(
            familiar.id.as_str(),
            records::encode_familiar(&familiar)?.as_slice(),
        )?;
        Ok(familiar)
    }

    fn check_new_sessions(&self, members: &[(String, u128)]) -> Result<Vec<Familiar>> {
        let mut familiars = Vec::with_capacity(members.len());
        for (familiar_id, session) in members {
            familiars.push(self.familiar(familiar_id)?);
            if self.sessions.open()?.get(*session)?.is_some() {
                return Err(Error::conflict(format!(
                    "session {} already exists",
                    ids::to_string(*session)
                )));
            }
        }
        Ok(familiars)
    }

    fn provision_session(&mut self, group: u128, familiar: &Familiar, session: u128) -> Result<()> {
        let record = Session {
            id: ids::to_string(session),
            group_id: ids::to_string(group),
            familiar_id: familiar.id.clone(),
            harness: familiar.harness.clone(),
            status: SessionStatus::Idle,
            resume_token: None,
            archived: false,
            created_at: self.now,
            updated_at: self.now,
        };
        self.store_session(&record)?;
        self.group_sessions
            .open_mut()?
            .insert((group, session), ())?;
        Ok(())
    }

    pub fn create_group(&mut self, new: NewGroup) -> Result<GroupConversation> {
        let familiars = self.check_new_sessions(&new.members)?;
        let title = new.title.unwrap_or_else(|| default_title(&familiars));
        for (familiar, (_, session)) in familiars.iter().zip(&new.members) {
            self.provision_session(new.id, familiar, *session)?;
        }
        let record = GroupConversation {
            id: ids::to_string(new.id),
            title,
            members: new
                .members
                .iter()
                .map(|(familiar_id, session)| Member {
                    familiar_id: familiar_id.clone(),
                    session_id: ids::to_string(*session),
                })
                .collect(),
            project_root: new.project_root,
            created_at: self.now,
            updated_at: self.now,
        };
        self.create_head(new.id);
        self.store_group(new.id, record, true)
    }

    pub fn rename_group(&mut self, group: u128, title: String) -> Result<GroupConversation> {
        let mut record = self.group(group)?;
        if record.title == title {
            return Ok(record);
        }
        let from = std::mem::replace(&mut record.title, title.clone());
        let text = format!("Group renamed from \u{201c}{from}\u{201d} to \u{201c}{title}\u{201d}");
        self.append(
            group,
            NewEvent::system(SystemNotice::Renamed { from, to: title }, text),
        )?;
        self.store_group(group, record, false)
    }

    pub fn add_member(&mut self, group: u128, familiar_id: String) -> Result<GroupConversation> {
        let mut record = self.group(group)?;
        let familiar = self.familiar(&familiar_id)?;
        if record.session_of(&familiar_id).is_some() {
            return Err(Error::conflict(format!(
                "familiar {familiar_id:?} is already a member of this group"
            )));
        }
        if record.members.len() >= MAX_MEMBERS {
            return Err(Error::conflict(format!(
                "the group already has the maximum of {MAX_MEMBERS} members"
            )));
        }
        let session = ids::new_id();
        self.provision_session(group, &familiar, session)?;
        record.members.push(Member {
            familiar_id: familiar_id.clone(),
            session_id: ids::to_string(session),
        });
        let text = format!("{} joined the group", familiar.display_name);
        self.append(
            group,
            NewEvent::system(SystemNotice::MemberAdded { familiar_id }, text),
        )?;
        self.store_group(group, record, false)
    }

    pub fn remove_member(&mut self, group: u128, familiar_id: String) -> Result<GroupConversation> {
        let mut record = self.group(group)?;
        let Some(position) = record
            .members
            .iter()
            .position(|m| m.familiar_id == familiar_id)
        else {
            return Err(Error::not_found("member", familiar_id));
        };
        if record.members.len() == 1 {
            return Err(Error::conflict(
                "a group keeps at least one member; delete the group instead",
            ));
        }
        if let Some(turn) = load::<u128, TurnRecord>(self.turns.open()?, group)? {
            if turn.pending.contains(&familiar_id) {
                return Err(Error::conflict(format!(
                    "{familiar_id:?} is still replying in turn {}; cancel or wait for it first",
                    ids::to_string(turn.turn_id)
                )));
            }
        }
        let member = record.members.remove(position);
        let mut session =
            self.session(ids::parse_stored("member session id", &member.session_id)?)?;
        let display_name = self
            .familiar(&familiar_id)
            .map(|f| f.display_name)
            .unwrap_or_else(|_| familiar_id.clone());
        session.archived = true;
        session.updated_at = self.now;
        self.store_session(&session)?;
        let text = format!("{display_name} left the group");
        self.append(
            group,
            NewEvent::system(SystemNotice::MemberRemoved { familiar_id }, text),
        )?;
        self.record(group, GroupUpdate::SessionChanged { session })?;
        self.store_group(group, record, false)
    }

    pub fn delete_group(&mut self, group: u128) -> Result<()> {
        let head = self.head(group)?;
        if let Some(turn) = load::<u128, TurnRecord>(self.turns.open()?, group)? {
            return Err(Error::conflict(format!(
                "turn {} is still running; cancel it before deleting the group",
                ids::to_string(turn.turn_id)
            )));
        }
        self.remove_timeline(group)?;
        self.cursors.open_mut()?.retain(|key, _| key.0 != group)?;
        self.groups.open_mut()?.remove(group)?;
        self.delete_changes(group)?;
        self.delete_head(group);
        self.announce(group, head.next_rev, GroupUpdate::GroupDeleted);
        Ok(())
    }

    /// Removes a group's sessions, session index, events and reply chunks (not its record, log,
    /// head or cursors).
    pub fn remove_timeline(&mut self, group: u128) -> Result<()> {
        let mut sessions = Vec::new();
        for entry in self
            .group_sessions
            .open()?
            .range((group, 0)..=(group, u128::MAX))?
        {
            sessions.push(entry?.0.value().1);
        }
        for session in sessions {
            self.sessions.open_mut()?.remove(session)?;
        }
        self.group_sessions
            .open_mut()?
            .retain_in((group, 0)..=(group, u128::MAX), |_, _| false)?;
        self.events
            .open_mut()?
            .retain_in((group, 0)..=(group, u64::MAX), |_, _| false)?;
        self.reply_chunks
            .open_mut()?
            .retain_in((group, 0, 0)..=(group, u64::MAX, u64::MAX), |_, _| false)?;
        Ok(())
    }

    /// Creates a group around existing sessions and appends their interleaved histories.
    pub fn adopt_group(
        &mut self,
        new: NewGroup,
        timeline: Vec<NewEvent>,
    ) -> Result<GroupConversation> {
        let id = new.id;
        let group = self.create_group(new)?;
        for event in timeline {
            self.append(id, event)?;
        }
        Ok(group)
    }

    pub fn set_archived(&mut self, session: u128, archived: bool) -> Result<Session> {
        let mut record = self.session(session)?;
        if record.archived == archived {
            return Ok(record);
        }
        let group = ids::parse_stored("session group id", &record.group_id)?;
        self.ensure_homed_here(group)?;
        record.archived = archived;
        record.updated_at = self.now;
        self.store_session(&record)?;
        self.record(
            group,
            GroupUpdate::SessionChanged {
                session: record.clone(),
            },
        )?;
        Ok(record)
    }

    pub fn sacrifice_session(&mut self, session: u128) -> Result<()> {
        let record = self.session(session)?;
        let group = ids::parse_stored("session group id", &record.group_id)?;
        self.ensure_homed_here(group)?;
        if record.status == SessionStatus::Running {
            return Err(Error::conflict(format!(
                "session {} is running; cancel its turn before sacrificing it",
                record.id
            )));
        }
        let group_record = self.group(group)?;
        if group_record.session_of(&record.familiar_id) == Some(record.id.as_str()) {
            return Err(Error::conflict(format!(
                "session {} belongs to current member {:?}; remove the member first",
                record.id, record.familiar_id
            )));
        }
        self.sessions.open_mut()?.remove(session)?;
        self.group_sessions.open_mut()?.remove((group, session))?;
        self.record(
            group,
            GroupUpdate::SessionSacrificed {
                session_id: record.id,
            },
        )?;
        Ok(())
    }
}

impl<'txn> Batch<'txn> {
    pub fn set_cursor(&mut self, group: u128, consumer: String, rev: u64) -> Result<()> {
        let head = self.head(group)?;
        if rev > head.rev() {
            return Err(super::beyond_head("rev", rev, "rev", head.rev()));
        }
        self.cursors
            .open_mut()?
            .insert((group, consumer.as_str()), rev)?;
        Ok(())
    }
}

/// "Alice", "Alice & Bob", "Alice, Bob & Cara".
fn default_title(familiars: &[Familiar]) -> String {
    let names: Vec<&str> = familiars.iter().map(|f| f.display_name.as_str()).collect();
    let title = match names.as_slice() {
        [] => "Group".to_owned(),
        [only] => (*only).to_owned(),
        [rest @ .., last] => format!("{} & {last}", rest.join(", ")),
    };
    if title.chars().count() <= MAX_TITLE_CHARS {
        return title;
    }
    let mut short: String = title.chars().take(MAX_TITLE_CHARS - 1).collect();
    short.push('\u{2026}');
    short
}
