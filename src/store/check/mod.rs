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

mod records;
#[cfg(test)]
mod tests;
mod timeline;

use std::collections::{BTreeMap, HashMap, HashSet};

use redb::{ReadableTable, ReadableTableMetadata};
use serde::de::DeserializeOwned;

use super::codec;
use super::records as stored;
use super::tables::*;
use super::Reader;
use crate::error::Result;
use crate::ids;
use crate::model::{
    EventKind, GroupConversation, GroupEvent, GroupUpdate, IntegrityProblem,
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
    let replicas = check.replicas(reader, &groups)?;
    let sessions = check.sessions(reader, &groups, &turns, &replicas)?;
    for (&group, record) in &groups {
        let head = heads[&group];
        check.members(reader, group, record, &sessions, &familiars)?;
        let replica = replicas.contains(&group);
        let events = check.timeline(reader, group, head, turns.get(&group), replica)?;
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

    /// The outcome of decoding a value, recording a problem (and giving `None`) when it failed.
    fn decoded<T>(
        &mut self,
        group: Option<u128>,
        what: impl FnOnce() -> String,
        outcome: Result<T>,
    ) -> Option<T> {
        match outcome {
            Ok(value) => Some(value),
            Err(err) => {
                self.problem(group, Kind::CorruptRecord, format!("{}: {err}", what()));
                None
            }
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
}
