//! Adoption of a client-side group: the host kept one session per familiar and looped every
//! prompt over them. Their histories are woven into one timeline by this documented rule:
//!
//! 1. Messages are ordered by timestamp.
//! 2. Equal timestamps: user messages before familiar replies, then roster order (the order of
//!    the adopted members), then each message's position in its own session's history.
//! 3. The client's loop sent each prompt to every session, so the same user message appears once
//!    per session. A user message with the same text and author as an earlier one from a
//!    *different* session, at most [`MERGE_WINDOW`] later and not yet matched by a message of
//!    this session, is that same message and is folded into it (the earliest timestamp stands).
//!    Two messages of one session are never folded, so nothing the user wrote is lost.
//!
//! The rule depends only on the input, so adopting the same input twice gives the same timeline.

use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::ids;
use crate::model::{AdoptedMember, HistoryRole};
use crate::store::ops::{NewEvent, NewGroup};

/// How far apart copies of one looped prompt may be and still be folded into one message.
pub const MERGE_WINDOW: Duration = Duration::from_secs(10);

struct Entry<'a> {
    timestamp: SystemTime,
    role: HistoryRole,
    member: usize,
    position: usize,
    text: &'a str,
    author: Option<&'a str>,
}

/// A user message placed in the timeline, open to folding copies from other sessions.
struct Placed<'a> {
    timestamp: SystemTime,
    text: &'a str,
    author: Option<&'a str>,
    members: Vec<usize>,
}

/// The group an adoption creates (each member keeps the session it was given) and its woven
/// timeline. Refuses a session id that does not parse or is given for two members.
pub fn plan(title: Option<String>, members: &[AdoptedMember]) -> Result<(NewGroup, Vec<NewEvent>)> {
    let mut sessions = Vec::with_capacity(members.len());
    for member in members {
        let session = ids::parse("session_id", &member.session_id)?;
        if sessions.iter().any(|(_, seen)| *seen == session) {
            return Err(Error::invalid(
                "session_id",
                format!("{} is given for two members", member.session_id),
            ));
        }
        sessions.push((member.familiar_id.clone(), session));
    }
    let group = NewGroup {
        id: ids::new_id(),
        title,
        members: sessions,
        project_root: None,
    };
    Ok((group, interleave(members)))
}

/// The adopted timeline, in seq order.
fn interleave(members: &[AdoptedMember]) -> Vec<NewEvent> {
    let mut entries: Vec<Entry<'_>> = members
        .iter()
        .enumerate()
        .flat_map(|(member, adopted)| {
            adopted
                .history
                .iter()
                .enumerate()
                .map(move |(position, message)| Entry {
                    timestamp: message.timestamp,
                    role: message.role,
                    member,
                    position,
                    text: &message.text,
                    author: message.author.as_deref(),
                })
        })
        .collect();
    entries.sort_by(|a, b| {
        a.timestamp
            .cmp(&b.timestamp)
            .then((a.role == HistoryRole::Familiar).cmp(&(b.role == HistoryRole::Familiar)))
            .then(a.member.cmp(&b.member))
            .then(a.position.cmp(&b.position))
    });

    let mut timeline = Vec::with_capacity(entries.len());
    let mut open: Vec<Placed<'_>> = Vec::new();
    for entry in entries {
        match entry.role {
            HistoryRole::Familiar => {
                let mut event = NewEvent::familiar(
                    members[entry.member].familiar_id.clone(),
                    entry.text.to_owned(),
                );
                event.at = Some(entry.timestamp);
                timeline.push(event);
            }
            HistoryRole::User => {
                open.retain(|placed| within_window(placed.timestamp, entry.timestamp));
                let copy_of = open.iter_mut().find(|placed| {
                    placed.text == entry.text
                        && placed.author == entry.author
                        && !placed.members.contains(&entry.member)
                });
                if let Some(placed) = copy_of {
                    placed.members.push(entry.member);
                    continue;
                }
                open.push(Placed {
                    timestamp: entry.timestamp,
                    text: entry.text,
                    author: entry.author,
                    members: vec![entry.member],
                });
                let mut event =
                    NewEvent::user(entry.text.to_owned(), entry.author.map(str::to_owned), None);
                event.at = Some(entry.timestamp);
                timeline.push(event);
            }
        }
    }
    timeline
}

fn within_window(first: SystemTime, later: SystemTime) -> bool {
    later
        .duration_since(first)
        .map(|gap| gap <= MERGE_WINDOW)
        .unwrap_or(true)
}
