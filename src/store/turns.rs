//! Turn bookkeeping inside the writer: the turn lock, replies claiming their seq at first output,
//! streaming, finishing, and recovery of whatever a crash left running.

use std::collections::HashMap;

use redb::ReadableTable;
use tracing::debug;

use super::batch::Batch;
use super::codec;
use super::ops::NewEvent;
use super::records::{self, ChangeRecord};
use super::tables::*;
use super::writer::{ReplyKey, ReplyOutput};
use crate::error::{Error, Result};
use crate::ids;
use crate::model::{
    Familiar, GroupConversation, GroupEvent, GroupUpdate, Recovery, ReplyError, ReplyErrorKind,
    Session, SessionStatus,
};

/// The error message of a reply whose harness finished without producing any output.
pub const NO_OUTPUT: &str = "the harness finished without producing any output";

/// What `send` needs to dispatch a turn once it is committed.
pub struct TurnStart {
    pub user_event: GroupEvent,
    pub group: GroupConversation,
    /// Each member's familiar and (now running) session, in roster order.
    pub members: Vec<(Familiar, Session)>,
}

/// How one member's reply ended, as the worker saw it.
pub struct ReplyEnd {
    pub session: u128,
    pub error: Option<ReplyError>,
    pub resume_token: Option<String>,
}

impl<'txn> Batch<'txn> {
    fn turn_record(&self, group: u128) -> Result<Option<TurnRecord>> {
        load(self.turns.open()?, group)
    }

    fn store_turn(&mut self, group: u128, turn: &TurnRecord) -> Result<()> {
        self.turns
            .open_mut()?
            .insert(group, codec::encode(turn)?.as_slice())?;
        Ok(())
    }

    fn set_status(&mut self, session: &mut Session, status: SessionStatus) -> Result<()> {
        let group = ids::parse_stored("session group id", &session.group_id)?;
        session.status = status;
        session.updated_at = self.now;
        self.store_session(session)?;
        self.record(
            group,
            GroupUpdate::SessionChanged {
                session: session.clone(),
            },
        )?;
        Ok(())
    }

    /// Appends the user's message, takes the group's turn lock and marks every member running.
    pub fn start_turn(
        &mut self,
        group: u128,
        turn: u128,
        text: String,
        author: Option<String>,
    ) -> Result<TurnStart> {
        let record = self.group(group)?;
        if let Some(running) = self.turn_record(group)? {
            return Err(Error::conflict(format!(
                "turn {} is still running in this group; wait for it or cancel it",
                ids::to_string(running.turn_id)
            )));
        }
        let mut members = Vec::with_capacity(record.members.len());
        for member in &record.members {
            let familiar = self.familiar(&member.familiar_id)?;
            let session =
                self.session(ids::parse_stored("member session id", &member.session_id)?)?;
            members.push((familiar, session));
        }
        let user_event = self.append(
            group,
            NewEvent::user(text, author, Some(ids::to_string(turn))),
        )?;
        for (_, session) in &mut members {
            self.set_status(session, SessionStatus::Running)?;
        }
        let lock = TurnRecord {
            turn_id: turn,
            user_seq: user_event.seq,
            started_at: self.now,
            pending: record.member_ids(),
        };
        self.store_turn(group, &lock)?;
        Ok(TurnStart {
            user_event,
            group: record,
            members,
        })
    }

    /// A reply's output: the first claims the reply's seq (in arrival order), later ones queue
    /// as deltas. Output for a turn that is no longer running is dropped.
    pub fn reply_output(&mut self, output: ReplyOutput) -> Result<()> {
        if self.live.seq(&output.key).is_some() {
            self.queue_delta(output.key, output.text);
            return Ok(());
        }
        let key = output.key;
        let running = self
            .turn_record(key.group)?
            .is_some_and(|turn| turn.turn_id == key.turn && turn.pending.contains(&key.familiar));
        if !running {
            return Ok(());
        }
        let mut new = NewEvent::familiar(key.familiar.clone(), output.text);
        new.event.streaming = true;
        new.event.turn_id = Some(ids::to_string(key.turn));
        let event = self.append(key.group, new)?;
        self.live.claim(key, event.seq);
        Ok(())
    }

    /// Ends one member's reply: final text and error marker, session status and resume token,
    /// and the turn lock released when it was the last member. Returns whether the turn ended.
    pub fn finish_reply(&mut self, key: ReplyKey, end: ReplyEnd) -> Result<bool> {
        let turn = self
            .turn_record(key.group)?
            .filter(|turn| turn.turn_id == key.turn);
        let live = self.live.release(&key);
        // A reply that ends without any output is a failure of its harness.
        let error = match (live, end.error) {
            (None, None) => Some(ReplyError {
                kind: ReplyErrorKind::Failed,
                message: NO_OUTPUT.to_owned(),
            }),
            (_, error) => error,
        };
        let failed = error
            .as_ref()
            .is_some_and(|e| e.kind != ReplyErrorKind::Cancelled);
        match live {
            Some(seq) => {
                self.finalize_streaming(key.group, seq, error)?;
            }
            None => {
                let mut new = NewEvent::familiar(key.familiar.clone(), String::new());
                new.event.turn_id = Some(ids::to_string(key.turn));
                new.event.error = error;
                self.append(key.group, new)?;
            }
        }
        if let Ok(mut session) = self.session(end.session) {
            if let Some(token) = end.resume_token {
                session.resume_token = Some(token);
            }
            let status = if failed {
                SessionStatus::Failed
            } else {
                SessionStatus::Idle
            };
            self.set_status(&mut session, status)?;
        }
        let Some(mut turn) = turn else {
            return Ok(true);
        };
        turn.pending.retain(|familiar| *familiar != key.familiar);
        if turn.pending.is_empty() {
            self.turns.open_mut()?.remove(key.group)?;
            Ok(true)
        } else {
            self.store_turn(key.group, &turn)?;
            Ok(false)
        }
    }

    /// Stores text streamed into a live reply: one chunk, at the offset where the reply's text
    /// so far ends, and one `ReplyDelta` change whose record is that byte range of the reply's
    /// text (so the change log never copies the text, and never needs rewriting).
    pub fn store_delta(
        &mut self,
        group: u128,
        seq: u64,
        familiar_id: String,
        text: String,
    ) -> Result<()> {
        let start = match self
            .reply_chunks
            .open()?
            .range((group, seq, 0)..=(group, seq, u64::MAX))?
            .next_back()
        {
            Some(last) => {
                let last = last?;
                let (start, text) = last.1.value();
                start + text.len() as u64
            }
            None => 0,
        };
        let rev = self.peek_rev(group)?;
        self.reply_chunks
            .open_mut()?
            .insert((group, seq, rev), (start, text.as_str()))?;
        let record = ChangeRecord::ReplyDelta {
            seq,
            start,
            len: text.len() as u64,
        };
        let update = GroupUpdate::ReplyDelta {
            seq,
            familiar_id,
            text,
        };
        self.record_as(group, update, &record)?;
        Ok(())
    }

    /// Turns a streaming reply into its final event: the chunks are joined once and removed, and
    /// the deltas they were streamed by collapse into one change record (ranges of the reply's
    /// text hold for the final text as they did for the chunks).
    fn finalize_streaming(
        &mut self,
        group: u128,
        seq: u64,
        error: Option<ReplyError>,
    ) -> Result<GroupEvent> {
        let mut event = match self.events.open()?.get((group, seq))? {
            Some(value) => records::decode_event(group, seq, value.value())?,
            None => {
                return Err(Error::storage(format!(
                    "reply {seq} of group {} is missing",
                    ids::to_string(group)
                )))
            }
        };
        event.text = self.take_streamed_text(group, seq, event.rev)?;
        event.streaming = false;
        event.error = error;
        event.rev = self.peek_rev(group)?;
        self.events
            .open_mut()?
            .insert((group, seq), records::encode_event(&event)?.as_slice())?;
        self.record(
            group,
            GroupUpdate::ReplyFinished {
                event: event.clone(),
            },
        )?;
        Ok(event)
    }

    /// A finishing reply's text, joined from its chunks, which are removed; the deltas that
    /// streamed them collapse into one change record. `appended_rev` is the stored reply's rev:
    /// its first chunk, if any, was written there with the event (its first output, or its text
    /// when a replica's reset wrote it), by no delta.
    pub(super) fn take_streamed_text(
        &mut self,
        group: u128,
        seq: u64,
        appended_rev: u64,
    ) -> Result<String> {
        let range = (group, seq, 0)..=(group, seq, u64::MAX);
        let mut text = String::new();
        let mut deltas = Vec::new();
        for entry in self.reply_chunks.open()?.range(range.clone())? {
            let (key, chunk) = entry?;
            let (start, chunk) = chunk.value();
            let rev = key.value().2;
            if rev != appended_rev {
                deltas.push(records::StreamedDelta {
                    rev,
                    start,
                    len: chunk.len() as u64,
                });
            }
            text.push_str(chunk);
        }
        self.reply_chunks
            .open_mut()?
            .retain_in(range, |_, _| false)?;
        self.collapse_deltas(group, seq, &deltas)?;
        Ok(text)
    }

    /// Repairs what a crash left running: processes of unfinished harness runs are stopped,
    /// replies still streaming become interrupted (text kept), members that never answered get
    /// an interrupted marker, running sessions become failed, and every turn lock is released.
    /// Logs each released turn (debug); the counts are logged by the open that ran this.
    pub fn recover(
        &mut self,
        stop_leftovers: impl FnOnce(&[super::runs::ProcessRun]) -> u64,
    ) -> Result<Recovery> {
        let mut report = Recovery {
            stopped_processes: self.stop_recorded_runs(stop_leftovers)?,
            ..Recovery::default()
        };
        if report.stopped_processes > 0 {
            debug!(
                stopped_processes = report.stopped_processes,
                "recovery stopped processes a previous host left running"
            );
        }
        let mut turns = Vec::new();
        for entry in self.turns.open()?.iter()? {
            let (group, value) = entry?;
            turns.push((group.value(), codec::decode::<TurnRecord>(value.value())?));
        }
        for (group, turn) in turns {
            let turn_id = ids::to_string(turn.turn_id);
            let mut streaming: HashMap<String, u64> = HashMap::new();
            for entry in self
                .events
                .open()?
                .range((group, turn.user_seq + 1)..=(group, u64::MAX))?
            {
                let (key, value) = entry?;
                let event = records::decode_event(group, key.value().1, value.value())?;
                if event.streaming && event.turn_id.as_deref() == Some(turn_id.as_str()) {
                    if let Some(familiar) = event.familiar_id {
                        streaming.insert(familiar, event.seq);
                    }
                }
            }
            for familiar in &turn.pending {
                let error = ReplyError {
                    kind: ReplyErrorKind::Interrupted,
                    message: "the process hosting this reply stopped before it finished".to_owned(),
                };
                match streaming.get(familiar) {
                    Some(&seq) => {
                        self.finalize_streaming(group, seq, Some(error))?;
                    }
                    None => {
                        let mut new = NewEvent::familiar(familiar.clone(), String::new());
                        new.event.turn_id = Some(turn_id.clone());
                        new.event.error = Some(error);
                        self.append(group, new)?;
                    }
                }
                report.interrupted_replies += 1;
            }
            self.turns.open_mut()?.remove(group)?;
            report.released_turns += 1;
            debug!(
                group_id = %uuid::Uuid::from_u128(group),
                turn_id = %turn_id,
                interrupted_replies = turn.pending.len(),
                "recovery released a turn left running"
            );
        }
        let mut running = Vec::new();
        for entry in self.sessions.open()?.iter()? {
            let (key, value) = entry?;
            let session = records::decode_session(key.value(), value.value())?;
            if session.status == SessionStatus::Running {
                running.push(session);
            }
        }
        // A replica group's sessions run at its home, which ends them; they change here only
        // as the home's changes arrive.
        let mut homed_here = Vec::with_capacity(running.len());
        for session in running {
            let group = ids::parse_stored("session group id", &session.group_id)?;
            if self.replica(group)?.is_none() {
                homed_here.push(session);
            }
        }
        let running = homed_here;
        for mut session in running {
            self.set_status(&mut session, SessionStatus::Failed)?;
            report.failed_sessions += 1;
        }
        Ok(report)
    }
}
