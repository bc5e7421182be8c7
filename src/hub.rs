//! Where committed changes go after the writer's commit. Publishing happens strictly after the
//! commit that made the changes durable (invariant 2), in rev order per group.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::model::GroupChange;

/// Latest published rev per group, with a condition variable for long-polls.
#[derive(Default)]
pub struct Hub {
    latest: Mutex<HashMap<String, u64>>,
    published: Condvar,
}

impl Hub {
    /// Called by the writer after each commit with that commit's changes in rev order.
    pub fn publish(&self, changes: Vec<GroupChange>) {
        let mut latest = self.latest.lock();
        for change in &changes {
            latest.insert(change.group_id.clone(), change.rev);
        }
        drop(latest);
        self.published.notify_all();
    }

    /// Blocks until the group has a published rev beyond `after_rev`, or the deadline passes.
    /// Returns whether such a rev was published.
    pub fn wait_beyond(&self, group_id: &str, after_rev: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut latest = self.latest.lock();
        loop {
            if latest.get(group_id).is_some_and(|rev| *rev > after_rev) {
                return true;
            }
            if self.published.wait_until(&mut latest, deadline).timed_out() {
                return latest.get(group_id).is_some_and(|rev| *rev > after_rev);
            }
        }
    }
}
