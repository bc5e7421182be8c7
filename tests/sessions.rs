//! Session rituals: archive and summon are reversible; sacrifice deletes a session that no
//! current member uses and refuses one that a member does.

mod common;

use common::*;
use coven_group::{Coven, GroupConversation, GroupUpdate, Session};

fn group_of_three(coven: &Coven) -> GroupConversation {
    register(coven, &[("ada", "Ada"), ("bo", "Bo"), ("cara", "Cara")]);
    coven
        .create_group(None, ids(&["ada", "bo", "cara"]), None)
        .unwrap()
}

/// The session as it is apart from `archived` and `updated_at`.
fn identity(session: &Session) -> Session {
    Session {
        archived: false,
        updated_at: session.created_at,
        ..session.clone()
    }
}

#[test]
fn archive_and_summon_toggle_archived_reversibly() {
    let coven = memory_store();
    let group = group_of_three(&coven);
    let id = group.session_of("bo").unwrap().to_owned();
    let original = coven.get_session(&id).unwrap();
    assert!(!original.archived);
    let rev = coven.get_group(&group.id).unwrap().rev;

    let archived = coven.archive_session(&id).unwrap();
    assert!(archived.archived);
    assert_eq!(
        coven.get_session(&id).unwrap(),
        archived,
        "archive returns the stored session"
    );
    assert_eq!(identity(&archived), identity(&original));
    assert!(archived.updated_at >= original.updated_at);
    assert!(coven.sessions_of(&group.id).unwrap().contains(&archived));
    let changes = coven.changes_since(&group.id, rev, 100).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        changes[0].update,
        GroupUpdate::SessionChanged {
            session: archived.clone()
        }
    );

    // Archiving an archived session changes nothing.
    assert_eq!(coven.archive_session(&id).unwrap(), archived);
    assert_eq!(coven.get_group(&group.id).unwrap().rev, rev + 1);

    let summoned = coven.summon_session(&id).unwrap();
    assert!(!summoned.archived);
    assert_eq!(coven.get_session(&id).unwrap(), summoned);
    assert_eq!(identity(&summoned), identity(&original));
    let changes = coven.changes_since(&group.id, rev + 1, 100).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        changes[0].update,
        GroupUpdate::SessionChanged {
            session: summoned.clone()
        }
    );
    assert_eq!(coven.summon_session(&id).unwrap(), summoned);
    assert_rev_contiguous(&coven, &group.id);

    // Archiving a session changes nothing about the membership or the timeline.
    let snapshot = coven.get_group(&group.id).unwrap();
    assert_eq!(snapshot.group.members, group.members);
    assert!(snapshot.events.is_empty());

    // Other sessions are untouched.
    for member in &group.members {
        if member.session_id != id {
            assert!(!coven.get_session(&member.session_id).unwrap().archived);
        }
    }
}

#[test]
fn sacrifice_deletes_a_removed_members_session() {
    let coven = memory_store();
    let group = group_of_three(&coven);
    coven
        .append_user_message(&group.id, "hello".into(), None)
        .unwrap();
    let bo_session = group.session_of("bo").unwrap().to_owned();
    coven.remove_member(&group.id, "bo").unwrap();
    assert!(coven.get_session(&bo_session).unwrap().archived);
    let before = coven.get_group(&group.id).unwrap();

    coven.sacrifice_session(&bo_session).unwrap();

    expect_not_found(coven.get_session(&bo_session), "session", &bo_session);
    let sessions = coven.sessions_of(&group.id).unwrap();
    assert_eq!(sessions.len(), 2);
    assert!(sessions.iter().all(|s| s.id != bo_session));
    let after = coven.get_group(&group.id).unwrap();
    assert_eq!(
        after.events, before.events,
        "the timeline keeps the member's events"
    );
    assert_eq!(after.group.members, before.group.members);
    let changes = coven.changes_since(&group.id, before.rev, 100).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        changes[0].update,
        GroupUpdate::SessionSacrificed {
            session_id: bo_session.clone()
        }
    );
    assert_rev_contiguous(&coven, &group.id);

    // Gone means gone.
    expect_not_found(coven.sacrifice_session(&bo_session), "session", &bo_session);
    expect_not_found(coven.archive_session(&bo_session), "session", &bo_session);
    expect_not_found(coven.summon_session(&bo_session), "session", &bo_session);
}

#[test]
fn sacrifice_of_a_current_members_session_is_a_conflict() {
    let store = FileStore::new();
    let coven = &store.coven;
    let group = group_of_three(coven);
    let ada_session = group.session_of("ada").unwrap().to_owned();

    let dump = store.dump();
    let reason = expect_conflict(coven.sacrifice_session(&ada_session));
    assert!(reason.contains(&ada_session), "{reason}");
    assert_eq!(store.dump(), dump, "a refused sacrifice changed the store");

    // Archived or not, a current member's session stays.
    coven.archive_session(&ada_session).unwrap();
    let dump = store.dump();
    expect_conflict(coven.sacrifice_session(&ada_session));
    assert_eq!(store.dump(), dump);
    assert!(coven.get_session(&ada_session).unwrap().archived);

    // A member that left and came back: its old session may go, its new one may not.
    let bo_old = group.session_of("bo").unwrap().to_owned();
    coven.remove_member(&group.id, "bo").unwrap();
    let back = coven.add_member(&group.id, "bo").unwrap();
    let bo_new = back.session_of("bo").unwrap().to_owned();
    expect_conflict(coven.sacrifice_session(&bo_new));
    coven.sacrifice_session(&bo_old).unwrap();
    expect_not_found(coven.get_session(&bo_old), "session", &bo_old);
    assert!(!coven.get_session(&bo_new).unwrap().archived);
    assert_eq!(coven.sessions_of(&group.id).unwrap().len(), 3);
}

#[test]
fn rituals_on_unknown_sessions_are_not_found() {
    let store = FileStore::new();
    let coven = &store.coven;
    group_of_three(coven);
    let unknown = fresh_session_id(99);
    let dump = store.dump();
    expect_not_found(coven.get_session(&unknown), "session", &unknown);
    expect_not_found(coven.archive_session(&unknown), "session", &unknown);
    expect_not_found(coven.summon_session(&unknown), "session", &unknown);
    expect_not_found(coven.sacrifice_session(&unknown), "session", &unknown);
    assert_eq!(store.dump(), dump);
}
