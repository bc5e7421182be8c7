//! Group lifecycle: provisioning of child sessions, membership and title changes as timeline
//! events and changes, deletion, and the order of `list_groups`.

mod common;

use std::collections::BTreeSet;

use common::*;
use coven_group::{
    Coven, EventKind, GroupConversation, GroupUpdate, SessionStatus, SystemNotice, MAX_NAME_CHARS,
    MAX_TITLE_CHARS,
};

fn coven_with_familiars() -> Coven {
    let coven = memory_store();
    register(
        &coven,
        &[
            ("ada", "Ada"),
            ("bo", "Bo"),
            ("cara", "Cara"),
            ("dee", "Dee"),
        ],
    );
    coven
}

/// Asserts `get_session` and `sessions_of` agree with the group's current members: one child
/// session per member, of that member's familiar and harness, in this group.
fn assert_sessions_match_members(coven: &Coven, group: &GroupConversation) {
    let member_sessions = distinct(
        &group
            .members
            .iter()
            .map(|m| m.session_id.clone())
            .collect::<Vec<_>>(),
    );
    for member in &group.members {
        let session = coven
            .get_session(&member.session_id)
            .expect("member session");
        assert_eq!(session.id, member.session_id);
        assert_eq!(session.group_id, group.id);
        assert_eq!(session.familiar_id, member.familiar_id);
        let familiar = coven.get_familiar(&member.familiar_id).unwrap();
        assert_eq!(session.harness, familiar.harness);
        assert!(
            !session.archived,
            "a current member's session is not archived"
        );
    }
    let live: BTreeSet<String> = coven
        .sessions_of(&group.id)
        .unwrap()
        .into_iter()
        .filter(|s| !s.archived)
        .map(|s| s.id)
        .collect();
    assert_eq!(live, member_sessions);
}

#[test]
fn create_group_provisions_one_child_session_per_member() {
    let coven = coven_with_familiars();
    let group = coven
        .create_group(None, ids(&["cara", "ada", "bo"]), None)
        .unwrap();

    assert_eq!(
        group.member_ids(),
        ids(&["cara", "ada", "bo"]),
        "roster order kept"
    );
    assert_eq!(group.title, "Cara, Ada & Bo");
    assert_eq!(group.project_root, None);
    assert_sessions_match_members(&coven, &group);

    let sessions = coven.sessions_of(&group.id).unwrap();
    assert_eq!(sessions.len(), 3, "exactly one session per member");
    for session in &sessions {
        assert_eq!(session.status, SessionStatus::Idle);
        assert_eq!(session.resume_token, None);
        assert_eq!(
            group.session_of(&session.familiar_id),
            Some(session.id.as_str())
        );
    }

    let snapshot = coven.get_group(&group.id).unwrap();
    assert_eq!(snapshot.group, group);
    assert!(
        snapshot.events.is_empty(),
        "a new group has an empty timeline"
    );
    assert_eq!(snapshot.rev, 1);
    let changes = assert_rev_contiguous(&coven, &group.id);
    assert_eq!(changes.len(), 1);
    assert_eq!(
        changes[0].update,
        GroupUpdate::GroupCreated {
            group: group.clone()
        }
    );
}

#[test]
fn default_title_comes_from_display_names() {
    let coven = coven_with_familiars();
    let one = coven.create_group(None, ids(&["ada"]), None).unwrap();
    assert_eq!(one.title, "Ada");
    let two = coven.create_group(None, ids(&["bo", "ada"]), None).unwrap();
    assert_eq!(two.title, "Bo & Ada");
    let four = coven
        .create_group(None, ids(&["ada", "bo", "cara", "dee"]), None)
        .unwrap();
    assert_eq!(four.title, "Ada, Bo, Cara & Dee");
    let named = coven
        .create_group(Some("Night shift".into()), ids(&["ada", "bo"]), None)
        .unwrap();
    assert_eq!(named.title, "Night shift");
    for group in [&one, &two, &four, &named] {
        assert_sessions_match_members(&coven, group);
    }
    // A default title longer than a title may be is shortened to the limit, with an ellipsis.
    let long: Vec<String> = (0..3)
        .map(|i| format!("{i}").repeat(MAX_NAME_CHARS))
        .collect();
    for (i, name) in long.iter().enumerate() {
        register(&coven, &[(&format!("long{i}"), name.as_str())]);
    }
    let crowded = coven
        .create_group(None, ids(&["long0", "long1", "long2"]), None)
        .unwrap();
    assert_eq!(crowded.title.chars().count(), MAX_TITLE_CHARS);
    let expected: String = format!("{}, {}", long[0], long[1])
        .chars()
        .take(MAX_TITLE_CHARS - 1)
        .chain(['\u{2026}'])
        .collect();
    assert_eq!(crowded.title, expected);
    // ... and it can be renamed to itself (it is a valid title).
    coven
        .rename_group(&crowded.id, crowded.title.clone())
        .unwrap();

    // Sessions of different groups never mix.
    let all: Vec<String> = [&one, &two, &four, &named, &crowded]
        .iter()
        .flat_map(|g| coven.sessions_of(&g.id).unwrap())
        .map(|s| s.id)
        .collect();
    assert_eq!(distinct(&all).len(), 1 + 2 + 4 + 2 + 3);
}

#[test]
fn project_root_is_stored_canonical() {
    let coven = coven_with_familiars();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("repo")).unwrap();
    let messy = format!("{}/repo/../repo/.", dir.path().display());
    let group = coven
        .create_group(None, ids(&["ada"]), Some(messy))
        .unwrap();
    let canonical = std::fs::canonicalize(dir.path().join("repo")).unwrap();
    assert_eq!(
        group.project_root.as_deref(),
        Some(canonical.to_str().unwrap())
    );
}

/// The last event must be a system event carrying `notice`, recorded as an `EventAppended`
/// change, and the change log must end with a `GroupChanged` carrying the group as returned by
/// the call.
fn assert_system_change(
    coven: &Coven,
    group: &GroupConversation,
    notice: SystemNotice,
    expected_text: &str,
) {
    let snapshot = coven.get_group(&group.id).unwrap();
    assert_eq!(&snapshot.group, group, "the call returns the stored state");
    assert_seq_contiguous(&snapshot.events);
    let event = snapshot.events.last().expect("a system event");
    assert_eq!(event.kind, EventKind::System);
    assert_eq!(event.notice.as_ref(), Some(&notice));
    assert_eq!(event.text, expected_text);
    assert_eq!(event.familiar_id, None);
    assert_eq!(event.author, None);
    assert!(!event.streaming);

    let changes = assert_rev_contiguous(coven, &group.id);
    let appended = changes
        .iter()
        .position(|c| matches!(&c.update, GroupUpdate::EventAppended { event: e } if e == event))
        .expect("the system event is an EventAppended change");
    assert_eq!(changes[appended].rev, event.rev);
    let last = changes.last().unwrap();
    assert!(last.rev > changes[appended].rev);
    assert_eq!(
        last.update,
        GroupUpdate::GroupChanged {
            group: group.clone()
        },
        "the change ends with GroupChanged carrying the new state"
    );
    assert_eq!(last.rev, snapshot.rev);
}

#[test]
fn rename_is_a_system_event_and_a_group_change() {
    let coven = coven_with_familiars();
    let group = coven.create_group(None, ids(&["ada", "bo"]), None).unwrap();
    coven
        .append_user_message(&group.id, "hello".into(), Some("Sam".into()))
        .unwrap();
    let renamed = coven
        .rename_group(&group.id, "Coven of two".into())
        .unwrap();
    assert_eq!(renamed.title, "Coven of two");
    assert_eq!(renamed.members, group.members);
    assert_system_change(
        &coven,
        &renamed,
        SystemNotice::Renamed {
            from: "Ada & Bo".into(),
            to: "Coven of two".into(),
        },
        "Group renamed from \u{201c}Ada & Bo\u{201d} to \u{201c}Coven of two\u{201d}",
    );
    let snapshot = coven.get_group(&group.id).unwrap();
    assert_eq!(snapshot.events.len(), 2);
    assert_eq!(snapshot.events[1].seq, 2);

    // Renaming to the current title changes nothing.
    let rev = snapshot.rev;
    let same = coven
        .rename_group(&group.id, "Coven of two".into())
        .unwrap();
    assert_eq!(same.title, "Coven of two");
    assert_eq!(coven.get_group(&group.id).unwrap().rev, rev);
}

#[test]
fn add_member_is_a_system_event_with_a_new_session() {
    let coven = coven_with_familiars();
    let group = coven.create_group(None, ids(&["ada", "bo"]), None).unwrap();
    let grown = coven.add_member(&group.id, "cara").unwrap();
    assert_eq!(grown.member_ids(), ids(&["ada", "bo", "cara"]));
    assert_eq!(grown.title, group.title, "adding a member keeps the title");
    assert_system_change(
        &coven,
        &grown,
        SystemNotice::MemberAdded {
            familiar_id: "cara".into(),
        },
        "Cara joined the group",
    );
    assert_sessions_match_members(&coven, &grown);
    assert_eq!(coven.sessions_of(&group.id).unwrap().len(), 3);

    let again = coven.add_member(&group.id, "cara");
    expect_conflict(again);
    expect_not_found(coven.add_member(&group.id, "ghost"), "familiar", "ghost");
    assert_eq!(coven.get_group(&group.id).unwrap().group, grown);
}

#[test]
fn remove_member_archives_its_session_and_keeps_its_events() {
    let coven = coven_with_familiars();
    let bo_session = fresh_session_id(1);
    let group = coven
        .adopt_group(
            None,
            vec![
                adopted(
                    "ada",
                    &fresh_session_id(2),
                    vec![user("ping", at(0)), reply("ada: pong", at(1_000))],
                ),
                adopted(
                    "bo",
                    &bo_session,
                    vec![user("ping", at(100)), reply("bo: pong", at(2_000))],
                ),
            ],
        )
        .unwrap();
    let before = coven.get_group(&group.id).unwrap();
    assert_eq!(before.events.len(), 3);

    let shrunk = coven.remove_member(&group.id, "bo").unwrap();
    assert_eq!(shrunk.member_ids(), ids(&["ada"]));
    assert_eq!(shrunk.session_of("bo"), None);
    assert_system_change(
        &coven,
        &shrunk,
        SystemNotice::MemberRemoved {
            familiar_id: "bo".into(),
        },
        "Bo left the group",
    );

    // Bo's session is archived, not gone; it is still one of the group's sessions.
    let session = coven.get_session(&bo_session).unwrap();
    assert!(session.archived);
    assert_eq!(session.familiar_id, "bo");
    let sessions = coven.sessions_of(&group.id).unwrap();
    assert_eq!(sessions.len(), 2);
    assert!(sessions.contains(&session));
    assert_sessions_match_members(&coven, &shrunk);
    let changes = all_changes(&coven, &group.id);
    assert!(
        changes.iter().any(|c| c.update
            == GroupUpdate::SessionChanged {
                session: session.clone()
            }),
        "archiving is a SessionChanged change"
    );

    // Bo's earlier events stay, unchanged, at their seqs.
    let after = coven.get_group(&group.id).unwrap();
    assert_eq!(after.events[..3], before.events[..]);
    assert!(after.events.iter().any(|e| e.kind == EventKind::Familiar
        && e.familiar_id.as_deref() == Some("bo")
        && e.text == "bo: pong"));

    expect_not_found(coven.remove_member(&group.id, "bo"), "member", "bo");
    // The last member cannot leave.
    expect_conflict(coven.remove_member(&group.id, "ada"));
    assert_eq!(coven.get_group(&group.id).unwrap(), after);

    // A removed member can come back with a new session; the old one stays archived.
    let back = coven.add_member(&group.id, "bo").unwrap();
    let new_session = back.session_of("bo").unwrap();
    assert_ne!(new_session, bo_session);
    assert!(coven.get_session(&bo_session).unwrap().archived);
    assert_eq!(coven.sessions_of(&group.id).unwrap().len(), 3);
    assert_sessions_match_members(&coven, &back);
}

#[test]
fn delete_group_removes_group_events_changes_and_sessions() {
    let coven = coven_with_familiars();
    let keep = coven.create_group(None, ids(&["ada", "bo"]), None).unwrap();
    coven
        .append_user_message(&keep.id, "stay".into(), None)
        .unwrap();
    let doomed = coven
        .create_group(None, ids(&["ada", "bo", "cara"]), None)
        .unwrap();
    coven
        .append_user_message(&doomed.id, "soon gone".into(), None)
        .unwrap();
    coven.rename_group(&doomed.id, "Doomed".into()).unwrap();
    coven.remove_member(&doomed.id, "cara").unwrap();
    let sessions = coven.sessions_of(&doomed.id).unwrap();
    assert_eq!(sessions.len(), 3);
    assert!(sessions.iter().any(|s| s.archived));
    let kept_before = Dump::of(&coven);

    coven.delete_group(&doomed.id).unwrap();

    expect_not_found(coven.get_group(&doomed.id), "group", &doomed.id);
    expect_not_found(coven.events_since(&doomed.id, 0, 10), "group", &doomed.id);
    expect_not_found(coven.changes_since(&doomed.id, 0, 10), "group", &doomed.id);
    expect_not_found(coven.sessions_of(&doomed.id), "group", &doomed.id);
    for session in &sessions {
        expect_not_found(coven.get_session(&session.id), "session", &session.id);
    }
    expect_not_found(
        coven.append_user_message(&doomed.id, "anyone?".into(), None),
        "group",
        &doomed.id,
    );
    expect_not_found(coven.delete_group(&doomed.id), "group", &doomed.id);

    // The other group and the familiars are untouched.
    let after = Dump::of(&coven);
    let position = kept_before
        .groups
        .iter()
        .position(|g| g.id == keep.id)
        .unwrap();
    assert_eq!(after.groups, vec![kept_before.groups[position].clone()]);
    assert_eq!(
        after.snapshots,
        vec![kept_before.snapshots[position].clone()]
    );
    assert_eq!(after.changes, vec![kept_before.changes[position].clone()]);
    assert_eq!(after.sessions, vec![kept_before.sessions[position].clone()]);
    assert_eq!(after.familiars, kept_before.familiars);
}

fn listed(coven: &Coven) -> Vec<String> {
    let groups = coven.list_groups().unwrap();
    for pair in groups.windows(2) {
        assert!(
            pair[0].updated_at >= pair[1].updated_at,
            "list_groups out of order"
        );
    }
    groups.into_iter().map(|g| g.title).collect()
}

#[test]
fn list_groups_is_most_recently_active_first() {
    let coven = coven_with_familiars();
    let a = coven
        .create_group(Some("A".into()), ids(&["ada"]), None)
        .unwrap();
    let b = coven
        .create_group(Some("B".into()), ids(&["bo"]), None)
        .unwrap();
    let c = coven
        .create_group(Some("C".into()), ids(&["cara"]), None)
        .unwrap();
    assert_eq!(listed(&coven), ["C", "B", "A"]);

    coven.append_user_message(&a.id, "a".into(), None).unwrap();
    assert_eq!(listed(&coven), ["A", "C", "B"]);

    let b = coven.rename_group(&b.id, "B2".into()).unwrap();
    assert_eq!(listed(&coven), ["B2", "A", "C"]);

    coven.add_member(&c.id, "dee").unwrap();
    assert_eq!(listed(&coven), ["C", "B2", "A"]);

    coven
        .append_user_message(&a.id, "again".into(), None)
        .unwrap();
    assert_eq!(listed(&coven), ["A", "C", "B2"]);

    coven.delete_group(&c.id).unwrap();
    assert_eq!(listed(&coven), ["A", "B2"]);

    // updated_at is the time of the latest change, and get_group agrees with list_groups.
    let listed_b = coven
        .list_groups()
        .unwrap()
        .into_iter()
        .find(|g| g.id == b.id)
        .unwrap();
    assert_eq!(listed_b, coven.get_group(&b.id).unwrap().group);
    assert!(listed_b.updated_at >= listed_b.created_at);
}
