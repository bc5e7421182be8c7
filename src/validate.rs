//! Input checks that need no store access. Every public call runs these before anything is queued,
//! so a refused call changes nothing. The limits are part of the documented API.

use crate::error::{Error, Result};
use crate::model::{AdoptedMember, Familiar, HistoryRole};

/// Longest message text, in bytes.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;
/// Longest group title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest display name or author name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest familiar id, in bytes (ids are ASCII).
pub const MAX_FAMILIAR_ID_LEN: usize = 64;
/// Longest familiar preamble, in bytes.
pub const MAX_PREAMBLE_BYTES: usize = 16 * 1024;
/// Most members a group may have.
pub const MAX_MEMBERS: usize = 32;
/// Most events one page may return.
pub const MAX_PAGE: u32 = 10_000;
/// Most messages one adoption may import.
pub const MAX_ADOPTED_MESSAGES: usize = 100_000;
/// Longest consumer (cursor) name, in bytes.
pub const MAX_CONSUMER_LEN: usize = 128;

fn no_nul(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

/// Message text: not blank, no NUL, at most [`MAX_TEXT_BYTES`].
pub fn text(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(
            field,
            "must not be empty or whitespace only",
        ));
    }
    if value.len() > MAX_TEXT_BYTES {
        return Err(Error::invalid(
            field,
            format!(
                "{} bytes exceeds the limit of {MAX_TEXT_BYTES}",
                value.len()
            ),
        ));
    }
    no_nul(field, value)
}

/// A short human-facing name: not blank, no NUL or control characters, at most `max` characters.
pub fn name(field: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(
            field,
            "must not be empty or whitespace only",
        ));
    }
    let chars = value.chars().count();
    if chars > max {
        return Err(Error::invalid(
            field,
            format!("{chars} characters exceeds the limit of {max}"),
        ));
    }
    no_nul(field, value)?;
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// A group title.
pub fn title(value: &str) -> Result<()> {
    name("title", value, MAX_TITLE_CHARS)
}

/// A familiar id: 1–64 characters of `A-Z a-z 0-9 . _ -`.
pub fn familiar_id(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_FAMILIAR_ID_LEN {
        return Err(Error::invalid(
            field,
            format!("longer than {MAX_FAMILIAR_ID_LEN} characters"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid(
            field,
            format!("{value:?} contains {bad:?}; use A-Z, a-z, 0-9, '.', '_' or '-'"),
        ));
    }
    Ok(())
}

/// A familiar's own fields (its harness kind is checked against the registry by the caller).
pub fn familiar(familiar: &Familiar) -> Result<()> {
    familiar_id("familiar.id", &familiar.id)?;
    name(
        "familiar.display_name",
        &familiar.display_name,
        MAX_NAME_CHARS,
    )?;
    if let Some(model) = &familiar.model {
        name("familiar.model", model, MAX_NAME_CHARS)?;
    }
    if let Some(preamble) = &familiar.preamble {
        if preamble.len() > MAX_PREAMBLE_BYTES {
            return Err(Error::invalid(
                "familiar.preamble",
                format!("exceeds the limit of {MAX_PREAMBLE_BYTES} bytes"),
            ));
        }
        no_nul("familiar.preamble", preamble)?;
    }
    for arg in &familiar.argv {
        no_nul("familiar.argv", arg)?;
    }
    if let Some(cwd) = &familiar.cwd {
        if cwd.is_empty() {
            return Err(Error::invalid("familiar.cwd", "must not be empty"));
        }
        no_nul("familiar.cwd", cwd)?;
    }
    Ok(())
}

/// An optional author name.
pub fn author(author: Option<&str>) -> Result<()> {
    match author {
        Some(author) => name("author", author, MAX_NAME_CHARS),
        None => Ok(()),
    }
}

/// A member list: 1..=[`MAX_MEMBERS`] well-formed, distinct familiar ids.
pub fn members(field: &str, ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        return Err(Error::invalid(field, "a group needs at least one member"));
    }
    if ids.len() > MAX_MEMBERS {
        return Err(Error::invalid(
            field,
            format!("{} members exceeds the limit of {MAX_MEMBERS}", ids.len()),
        ));
    }
    for (index, id) in ids.iter().enumerate() {
        familiar_id(field, id)?;
        if ids[..index].contains(id) {
            return Err(Error::invalid(field, format!("{id:?} is listed twice")));
        }
    }
    Ok(())
}

/// A page size: 1..=[`MAX_PAGE`].
pub fn limit(limit: u32) -> Result<()> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(Error::invalid(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    Ok(())
}

/// A cursor consumer name: 1..=[`MAX_CONSUMER_LEN`] bytes, no NUL or control characters.
pub fn consumer(value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid("consumer", "must not be empty"));
    }
    if value.len() > MAX_CONSUMER_LEN {
        return Err(Error::invalid(
            "consumer",
            format!("longer than {MAX_CONSUMER_LEN} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(
            "consumer",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// The shape of an adoption request (ids are parsed, and existence checked, by the caller).
pub fn adoption(members: &[AdoptedMember]) -> Result<()> {
    let ids: Vec<String> = members.iter().map(|m| m.familiar_id.clone()).collect();
    self::members("members", &ids)?;
    let mut total = 0usize;
    for member in members {
        total += member.history.len();
        for message in &member.history {
            text("history.text", &message.text)?;
            if message.timestamp < std::time::UNIX_EPOCH {
                return Err(Error::invalid(
                    "history.timestamp",
                    "must not be before 1970-01-01T00:00:00Z",
                ));
            }
            match message.role {
                HistoryRole::User => author(message.author.as_deref())?,
                HistoryRole::Familiar if message.author.is_some() => {
                    return Err(Error::invalid(
                        "history.author",
                        "only user messages carry an author",
                    ))
                }
                HistoryRole::Familiar => {}
            }
        }
    }
    if total > MAX_ADOPTED_MESSAGES {
        return Err(Error::invalid(
            "history",
            format!("{total} messages exceeds the limit of {MAX_ADOPTED_MESSAGES}"),
        ));
    }
    Ok(())
}

/// The ids a home's pull answer carries, checked before a replica applies any of it: a
/// malformed answer is refused as `InvalidInput` naming the field, and changes nothing.
pub fn pull_response(response: &crate::sync::PullResponse) -> Result<()> {
    use crate::model::{GroupConversation, GroupEvent, GroupUpdate, Session};
    use crate::sync::GroupPull;
    fn group(group: &GroupConversation) -> Result<()> {
        crate::ids::parse("group.id", &group.id)?;
        for member in &group.members {
            familiar_id("group.members.familiar_id", &member.familiar_id)?;
            crate::ids::parse("group.members.session_id", &member.session_id)?;
        }
        Ok(())
    }
    fn session(session: &Session) -> Result<()> {
        crate::ids::parse("session.id", &session.id)?;
        crate::ids::parse("session.group_id", &session.group_id)?;
        familiar_id("session.familiar_id", &session.familiar_id)
    }
    fn event(event: &GroupEvent) -> Result<()> {
        if let Some(turn) = &event.turn_id {
            crate::ids::parse("event.turn_id", turn)?;
        }
        if event.seq == 0 {
            return Err(Error::invalid("event.seq", "seqs start at 1"));
        }
        Ok(())
    }
    for familiar_record in &response.familiars {
        familiar(familiar_record)?;
    }
    for result in &response.results {
        crate::ids::parse("results.txn_id", &result.txn_id)?;
    }
    for pull in &response.groups {
        match pull {
            GroupPull::Deleted { group_id } => {
                crate::ids::parse("group_id", group_id)?;
            }
            GroupPull::Snapshot { snapshot } => {
                group(&snapshot.group)?;
                snapshot.sessions.iter().try_for_each(session)?;
                snapshot.events.iter().try_for_each(event)?;
            }
            GroupPull::Changes {
                group_id,
                after_rev,
                through_rev,
                changes,
            } => {
                crate::ids::parse("group_id", group_id)?;
                if after_rev > through_rev {
                    return Err(Error::invalid(
                        "through_rev",
                        format!("{through_rev} is before after_rev {after_rev}"),
                    ));
                }
                let mut previous = *after_rev;
                for change in changes {
                    if change.rev <= previous || change.rev > *through_rev {
                        return Err(Error::invalid(
                            "changes.rev",
                            format!(
                                "rev {} is out of order or outside {after_rev}..={through_rev}",
                                change.rev
                            ),
                        ));
                    }
                    previous = change.rev;
                    if change.group_id != *group_id {
                        return Err(Error::invalid(
                            "changes.group_id",
                            format!("{} is not {group_id}", change.group_id),
                        ));
                    }
                    match &change.update {
                        GroupUpdate::GroupCreated { group: state }
                        | GroupUpdate::GroupChanged { group: state } => group(state)?,
                        GroupUpdate::EventAppended { event: e }
                        | GroupUpdate::ReplyFinished { event: e } => event(e)?,
                        GroupUpdate::SessionChanged { session: s } => session(s)?,
                        GroupUpdate::SessionSacrificed { session_id } => {
                            crate::ids::parse("session_id", session_id)?;
                        }
                        GroupUpdate::ReplyDelta { .. } | GroupUpdate::GroupDeleted => {}
                        GroupUpdate::GroupReset { .. }
                        | GroupUpdate::MessagePending { .. }
                        | GroupUpdate::MessageSent { .. }
                        | GroupUpdate::MessageDiscarded { .. } => {
                            return Err(Error::invalid(
                                "changes.update",
                                format!(
                                    "rev {} is a replica's local change, which a home never sends",
                                    change.rev
                                ),
                            ))
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
