//! Sync helpers: a transport that calls a home store directly, and the comparison of a replica's
//! copy of a group with its home's.

use std::sync::Arc;

use coven_group::{
    Coven, Error, GroupConversation, GroupEvent, GroupSnapshot, PullRequest, PullResponse,
    PushRequest, PushResponse, Session, SyncTransport,
};

/// Carries every message straight to the home's `serve_pull` / `serve_push`.
pub struct Direct(pub Arc<Coven>);

impl SyncTransport for Direct {
    fn pull(&self, request: PullRequest) -> Result<PullResponse, Error> {
        self.0.serve_pull(request)
    }

    fn push(&self, request: PushRequest) -> Result<PushResponse, Error> {
        self.0.serve_push(request)
    }
}

/// Syncs `replica` with `home` until caught up.
pub fn sync(replica: &Coven, home: &Arc<Coven>) {
    replica
        .sync(Arc::new(Direct(home.clone())), Some(home.store_id()))
        .expect("sync with the home");
}

/// A group's state without what is local to each store: revs (a replica's log is its own) and
/// the last-activity time.
#[derive(Debug, PartialEq, Eq)]
pub struct Comparable {
    pub group: GroupConversation,
    pub events: Vec<GroupEvent>,
    pub sessions: Vec<Session>,
}

pub fn comparable(coven: &Coven, group_id: &str) -> Comparable {
    let GroupSnapshot {
        mut group, events, ..
    } = coven.get_group(group_id).expect("get_group");
    group.updated_at = std::time::UNIX_EPOCH;
    Comparable {
        group,
        events: events
            .into_iter()
            .map(|event| GroupEvent { rev: 0, ..event })
            .collect(),
        sessions: coven.sessions_of(group_id).expect("sessions_of"),
    }
}

/// Asserts the replica holds exactly the home's state of the group.
pub fn assert_same_group(home: &Coven, replica: &Coven, group_id: &str) {
    let at_home = comparable(home, group_id);
    let here = comparable(replica, group_id);
    assert_eq!(
        here.group, at_home.group,
        "the replica's group differs from its home's"
    );
    assert_eq!(
        here.events.len(),
        at_home.events.len(),
        "the replica has {} events, its home {}",
        here.events.len(),
        at_home.events.len()
    );
    for (mine, theirs) in here.events.iter().zip(&at_home.events) {
        assert_eq!(mine, theirs, "event {} differs", theirs.seq);
    }
    assert_eq!(
        here.sessions, at_home.sessions,
        "the replica's sessions differ"
    );
}
