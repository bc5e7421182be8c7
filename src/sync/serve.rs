//! A home answering a replica's pull, from one read transaction.

use std::collections::BTreeSet;

use crate::error::Result;
use crate::ids;
use crate::store::Reader;

use super::protocol::{GroupPull, PullResponse, MAX_PULL_CHANGES, SYNC_PROTOCOL_VERSION};

/// The answer to a pull with these cursors (group, home rev applied); `home_store_id` is left
/// for the caller.
pub fn pull(
    reader: &Reader,
    replica: u128,
    cursors: &[(u128, u64)],
    acked_through: u64,
    snapshot_after_changes: u64,
) -> Result<PullResponse> {
    let homed_here: BTreeSet<u128> = reader.home_groups()?.into_iter().collect();
    let mut budget = MAX_PULL_CHANGES;
    let mut groups = Vec::new();
    let mut more = false;
    let held: BTreeSet<u128> = cursors.iter().map(|(group, _)| *group).collect();
    for &(group, rev) in cursors {
        if !homed_here.contains(&group) {
            groups.push(GroupPull::Deleted {
                group_id: ids::to_string(group),
            });
            continue;
        }
        if budget == 0 {
            more = true;
            continue;
        }
        let head = reader.head(group)?;
        if head.rev() == rev {
            continue;
        }
        // A replica new to the group (rev 0: it asked for a group it created here) gets a
        // snapshot; so does one claiming a rev this home never reached, which the replica then
        // drops as stale (see "Where it goes next" in docs/design.md: a home restored from an
        // older copy).
        if rev == 0 || rev > head.rev() || head.rev() - rev > snapshot_after_changes {
            let snapshot = reader.sync_snapshot(group)?;
            budget = budget.saturating_sub(snapshot.events.len() as u64 + 1);
            groups.push(GroupPull::Snapshot { snapshot });
            continue;
        }
        let wanted = head.rev() - rev;
        let limit = wanted.min(budget);
        let changes = reader.changes(group, rev, limit as u32)?;
        budget -= changes.len() as u64;
        // A full page may stop short of the head; otherwise it reaches it.
        let through_rev = match changes.last() {
            Some(last) if changes.len() as u64 == limit && last.rev < head.rev() => {
                more = true;
                last.rev
            }
            _ => head.rev(),
        };
        groups.push(GroupPull::Changes {
            group_id: ids::to_string(group),
            after_rev: rev,
            through_rev,
            changes,
        });
    }
    for &group in homed_here.difference(&held) {
        if budget == 0 {
            more = true;
            break;
        }
        let snapshot = reader.sync_snapshot(group)?;
        budget = budget.saturating_sub(snapshot.events.len() as u64 + 1);
        groups.push(GroupPull::Snapshot { snapshot });
    }
    Ok(PullResponse {
        version: SYNC_PROTOCOL_VERSION,
        home_store_id: String::new(),
        groups,
        // All of them, not only those the groups name: a replica creates groups at its home
        // from the home's familiars. A store registers a handful.
        familiars: reader.familiars()?,
        results: reader.answers(replica, acked_through)?,
        more,
    })
}
