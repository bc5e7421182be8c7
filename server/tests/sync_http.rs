//! The sync endpoints (`POST /api/sync/pull`, `POST /api/sync/push`) with the library's HTTP
//! transport: the server's store is the home of its groups, a replica store continues them.

mod common;

use std::sync::Arc;

use common::{code, TestServer};
use coven_group::{http_sync_transport, Config, Coven, Error, EventKind, Mutation, SyncTransport};
use serde_json::json;

const TIMEOUT_MS: u64 = 30_000;

fn transport(server: &TestServer, token: Option<&str>) -> Arc<dyn SyncTransport> {
    let addr = server.addr.expect("a TCP server");
    http_sync_transport(
        format!("http://{addr}"),
        token.map(str::to_owned),
        TIMEOUT_MS,
    )
    .expect("an HTTP transport")
}

/// What every store shows the same of a group: seq, kind, familiar, author and text.
fn timeline(coven: &Coven, group: &str) -> Vec<(u64, EventKind, Option<String>, String)> {
    coven
        .get_group(group)
        .expect("the group")
        .events
        .into_iter()
        .map(|e| (e.seq, e.kind, e.familiar_id, e.text))
        .collect()
}

#[test]
fn a_replica_continues_a_server_group_over_http() {
    let server = TestServer::start();
    let group = server.group();
    let phone = Coven::open_in_memory(Config::default()).unwrap();
    let http = transport(&server, Some(&server.owner_token));

    let report = phone.sync(http.clone(), None).unwrap();
    assert_eq!(report.snapshots, 1);
    assert_eq!(
        phone.home_of(&group).unwrap(),
        Some(server.coven.store_id())
    );
    assert_eq!(
        phone.list_familiars().unwrap().len(),
        3,
        "familiars come along"
    );

    phone
        .enqueue(Mutation::Send {
            group_id: group.clone(),
            text: "from the phone".into(),
            author: Some("Sam".into()),
        })
        .unwrap();
    phone
        .sync(http.clone(), Some(server.coven.store_id()))
        .unwrap();
    server.wait_idle(&group);
    phone
        .sync(http.clone(), Some(server.coven.store_id()))
        .unwrap();

    let home = timeline(&server.coven, &group);
    assert_eq!(home.len(), 4, "the message and three replies: {home:?}");
    assert_eq!(home[0].3, "from the phone");
    assert_eq!(timeline(&phone, &group), home);
    assert!(phone.outbox().unwrap().is_empty());
    assert!(phone.get_group(&group).unwrap().pending.is_empty());

    // A group created on the phone is created at the server, and comes back.
    let created = phone
        .create_group_at(
            &server.coven.store_id(),
            Some("From the phone".into()),
            vec!["ada".into()],
        )
        .unwrap();
    phone.sync(http, Some(server.coven.store_id())).unwrap();
    let new_group = created.mutation.group_id();
    assert_eq!(
        server.coven.get_group(new_group).unwrap().group.title,
        "From the phone"
    );
    assert_eq!(
        timeline(&phone, new_group),
        timeline(&server.coven, new_group)
    );
    assert!(phone.check().unwrap().is_clean());
}

#[test]
fn sync_needs_the_owner_token_and_refuses_bad_messages_changing_nothing() {
    let server = TestServer::start();
    let group = server.group();
    let before = server.fingerprint();
    let phone = Coven::open_in_memory(Config::default()).unwrap();

    // No token, a wrong one: refused, nothing applied on either side.
    for token in [None, Some("not-a-token")] {
        match phone.sync(transport(&server, token), None) {
            Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "token"),
            other => panic!("expected a refused token, got {other:?}"),
        }
    }
    assert!(phone.list_groups().unwrap().is_empty());
    assert_eq!(server.fingerprint(), before, "refused syncs change nothing");

    // A share token reaches only its groups; a replica needs them all.
    let owner = server.owner();
    let share = owner
        .json(
            "POST",
            "/api/shares",
            Some(&json!({ "label": "phone", "groupIds": [group], "access": "readWrite" })),
        )
        .unwrap();
    assert_eq!(share.status, 201, "{:?}", share.json());
    let share_token = share.json().unwrap()["token"].as_str().unwrap().to_owned();
    let reply = server
        .with_token(&share_token)
        .json("POST", "/api/sync/pull", Some(&json!({})))
        .unwrap();
    assert_eq!(reply.status, 403);
    assert_eq!(code(&reply.json().unwrap()), "forbidden");
    // Revoked, it is refused as unknown.
    let share_id = share.json().unwrap()["share"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = owner
        .json("DELETE", &format!("/api/shares/{share_id}"), None)
        .unwrap();
    assert_eq!(revoked.status, 204);
    let before_shares = server.fingerprint();
    let reply = server
        .with_token(&share_token)
        .json("POST", "/api/sync/push", Some(&json!({})))
        .unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(code(&reply.json().unwrap()), "unauthorized");

    // Malformed messages: 400, with the field named.
    for body in [
        json!({}),
        json!({ "version": 1, "replica_store_id": "x", "cursors": [], "acked_through": 0 }),
        json!({ "version": 7, "replica_store_id": phone.store_id(), "cursors": [], "acked_through": 0 }),
    ] {
        let reply = owner.json("POST", "/api/sync/pull", Some(&body)).unwrap();
        assert_eq!(reply.status, 400, "{body}");
        assert_eq!(code(&reply.json().unwrap()), "invalid_request");
    }
    let reply = owner
        .json(
            "POST",
            "/api/sync/push",
            Some(&json!({
                "version": 1,
                "replica_store_id": phone.store_id(),
                "home_store_id": phone.store_id(),
                "mutations": [],
                "acked_through": 0
            })),
        )
        .unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(server.fingerprint(), before_shares);
}

#[test]
fn an_unreachable_home_is_unavailable_and_the_outbox_keeps_its_entries() {
    let mut server = TestServer::start();
    let group = server.group();
    let phone = Coven::open_in_memory(Config::default()).unwrap();
    let http = transport(&server, Some(&server.owner_token));
    phone.sync(http.clone(), None).unwrap();
    let home = server.coven.store_id();
    phone
        .enqueue(Mutation::AppendUserMessage {
            group_id: group.clone(),
            text: "offline".into(),
            author: None,
        })
        .unwrap();
    server.stop().unwrap();
    match phone.sync(http, Some(home)) {
        Err(Error::Unavailable { reason }) => {
            assert!(reason.contains("could not be reached"), "{reason}")
        }
        other => panic!("expected the home to be unavailable, got {other:?}"),
    }
    assert_eq!(phone.outbox().unwrap().len(), 1, "the entry waits");
    assert_eq!(phone.get_group(&group).unwrap().pending.len(), 1);
    assert!(matches!(
        http_sync_transport("https://example.invalid".into(), None, 1000),
        Err(Error::InvalidInput { .. })
    ));
}
