//! The HTTP contract: every endpoint's success shape, and every refusal with its precise status
//! and code and the store unchanged.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{code, Options, TestServer, FAMILIARS};
use coven_group_server::client::{Client, Extra, Reply};
use coven_group_server::{route_list, Limits};
use serde_json::{json, Value};

const UNKNOWN_UUID: &str = "01a2358b-0000-7000-8000-000000000000";

fn call(client: &Client, method: &str, path: &str, body: Option<Value>) -> Reply {
    client
        .json(method, path, body.as_ref())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Asserts status and code and returns the body.
fn expect(reply: &Reply, status: u16, error_code: Option<&str>) -> Value {
    let body = if reply.body.is_empty() {
        Value::Null
    } else {
        reply.json().expect("JSON body")
    };
    assert_eq!(reply.status, status, "body: {body}");
    if let Some(error_code) = error_code {
        assert_eq!(code(&body), error_code, "body: {body}");
        assert!(body["error"]["message"].is_string(), "body: {body}");
        assert!(body["error"]["details"].is_object(), "body: {body}");
    }
    body
}

/// Runs `request` and checks it was refused with `status`/`error_code` and changed nothing.
fn refused(server: &TestServer, status: u16, error_code: &str, request: impl FnOnce() -> Reply) {
    let before = server.fingerprint();
    let reply = request();
    expect(&reply, status, Some(error_code));
    assert_eq!(
        before,
        server.fingerprint(),
        "a refused request changed the store"
    );
}

/// Reads a send stream to its end and returns its frames.
fn send_frames(client: &Client, group: &str, text: &str) -> Vec<Value> {
    let mut events = client
        .stream(
            "POST",
            &format!("/api/groups/{group}/send"),
            Some(&json!({ "text": text, "author": "Sam" })),
            &Extra::default(),
        )
        .expect("send")
        .unwrap_or_else(|reply| panic!("send refused: {}", String::from_utf8_lossy(&reply.body)));
    let mut frames = Vec::new();
    while let Some(frame) = events.next_frame().expect("frame") {
        frames.push(frame.data);
    }
    frames
}

#[test]
fn handshake_and_document_need_no_token() {
    let server = TestServer::start();
    let health = expect(
        &call(&server.anonymous(), "GET", "/api/v1/health", None),
        200,
        None,
    );
    assert_eq!(health["ok"], true);
    assert_eq!(health["apiVersion"], "coven.group.v1");
    assert_eq!(health["capabilities"]["changeCursor"], "rev");
    let doc = expect(
        &call(&server.anonymous(), "GET", "/api/openapi.json", None),
        200,
        None,
    );
    assert!(doc["paths"]["/api/groups/{id}/events"].is_object());
}

#[test]
fn every_protected_route_refuses_a_missing_or_wrong_token() {
    let server = TestServer::start();
    let group = server.group();
    for (method, path) in route_list() {
        if path == "/api/v1/health" || path == "/api/openapi.json" {
            continue;
        }
        let path = path.replace("{id}", &group);
        let body = (method.as_str() != "GET" && method.as_str() != "DELETE").then(|| json!({}));
        refused(&server, 401, "unauthorized", || {
            call(&server.anonymous(), method.as_str(), &path, body.clone())
        });
        refused(&server, 401, "unauthorized", || {
            call(
                &server.with_token("cgo_wrong"),
                method.as_str(),
                &path,
                body.clone(),
            )
        });
    }
}

#[test]
fn groups_create_list_get_patch_delete() {
    let server = TestServer::start();
    let owner = server.owner();
    let created = expect(
        &call(
            &owner,
            "POST",
            "/api/groups",
            Some(json!({ "title": "Plans", "memberFamiliarIds": ["ada", "bo"] })),
        ),
        201,
        None,
    );
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["memberFamiliarIds"], json!(["ada", "bo"]));
    assert_eq!(created["memberSessionIds"].as_array().unwrap().len(), 2);
    assert!(created["createdAt"].as_u64().unwrap() > 0);

    let list = expect(&call(&owner, "GET", "/api/groups", None), 200, None);
    assert_eq!(list[0]["id"], created["id"]);

    let renamed = expect(
        &call(
            &owner,
            "PATCH",
            &format!("/api/groups/{id}"),
            Some(json!({ "title": "Plans 2" })),
        ),
        200,
        None,
    );
    assert_eq!(renamed["title"], "Plans 2");
    let added = expect(
        &call(
            &owner,
            "PATCH",
            &format!("/api/groups/{id}"),
            Some(json!({ "addMember": "cy" })),
        ),
        200,
        None,
    );
    assert_eq!(added["memberFamiliarIds"], json!(["ada", "bo", "cy"]));
    let removed = expect(
        &call(
            &owner,
            "PATCH",
            &format!("/api/groups/{id}"),
            Some(json!({ "removeMember": "ada" })),
        ),
        200,
        None,
    );
    assert_eq!(removed["memberFamiliarIds"], json!(["bo", "cy"]));

    let timeline = expect(
        &call(&owner, "GET", &format!("/api/groups/{id}"), None),
        200,
        None,
    );
    let notices: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["notice"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(notices, ["renamed", "memberAdded", "memberRemoved"]);
    assert_eq!(timeline["events"][0]["role"], "system");
    assert_eq!(timeline["hasEarlier"], false);
    assert_eq!(
        timeline["rev"].as_u64(),
        Some(server.coven.get_group(&id).unwrap().rev)
    );

    let tail = expect(
        &call(&owner, "GET", &format!("/api/groups/{id}?tail=1"), None),
        200,
        None,
    );
    assert_eq!(tail["events"].as_array().unwrap().len(), 1);
    assert_eq!(tail["events"][0]["seq"], 3);
    assert_eq!(tail["hasEarlier"], true);

    expect(
        &call(&owner, "DELETE", &format!("/api/groups/{id}"), None),
        204,
        None,
    );
    expect(
        &call(&owner, "GET", &format!("/api/groups/{id}"), None),
        404,
        Some("not_found"),
    );
}

#[test]
fn bad_group_requests_are_refused_precisely() {
    let server = TestServer::start();
    let owner = server.owner();
    let group = server.group();
    let path = format!("/api/groups/{group}");
    let raw = |method: &str, path: &str, bytes: &[u8], kind: &'static str| {
        owner
            .call(
                method,
                path,
                None,
                &Extra {
                    headers: vec![],
                    raw_body: Some((bytes.to_vec(), kind)),
                },
            )
            .expect("request")
    };
    // Invalid JSON, on every endpoint that takes a body.
    for (method, target) in [
        ("POST", "/api/groups".to_owned()),
        ("POST", "/api/groups/adopt".to_owned()),
        ("PATCH", path.clone()),
        ("POST", format!("{path}/send")),
        ("POST", "/api/familiars".to_owned()),
        ("POST", "/api/shares".to_owned()),
        ("POST", "/api/sync/pull".to_owned()),
        ("POST", "/api/sync/push".to_owned()),
    ] {
        refused(&server, 400, "invalid_request", || {
            raw(method, &target, b"{\"title\": ", "application/json")
        });
        refused(&server, 400, "invalid_request", || {
            raw(
                method,
                &target,
                b"{\"unknownField\": 1}",
                "application/json",
            )
        });
        refused(&server, 415, "unsupported_media_type", || {
            raw(method, &target, b"{}", "text/plain")
        });
    }
    // Unknown and malformed ids.
    let unknown = format!("/api/groups/{UNKNOWN_UUID}");
    refused(&server, 404, "not_found", || {
        call(&owner, "GET", &unknown, None)
    });
    refused(&server, 404, "not_found", || {
        call(&owner, "DELETE", &unknown, None)
    });
    refused(&server, 404, "not_found", || {
        call(&owner, "PATCH", &unknown, Some(json!({ "title": "x" })))
    });
    refused(&server, 404, "not_found", || {
        call(
            &owner,
            "POST",
            &format!("{unknown}/send"),
            Some(json!({ "text": "hi" })),
        )
    });
    refused(&server, 404, "not_found", || {
        call(&owner, "GET", &format!("{unknown}/sessions"), None)
    });
    refused(&server, 400, "invalid_request", || {
        call(&owner, "GET", "/api/groups/not-a-uuid", None)
    });
    refused(&server, 404, "not_found", || {
        call(
            &owner,
            "GET",
            &format!("/api/sessions/{UNKNOWN_UUID}"),
            None,
        )
    });
    refused(&server, 404, "not_found", || {
        call(
            &owner,
            "POST",
            "/api/groups",
            Some(json!({ "memberFamiliarIds": ["nobody"] })),
        )
    });
    refused(&server, 404, "not_found", || {
        call(
            &owner,
            "PATCH",
            &path,
            Some(json!({ "addMember": "nobody" })),
        )
    });
    refused(&server, 404, "not_found", || {
        call(&owner, "DELETE", "/api/shares/0123456789abcdef", None)
    });
    refused(&server, 404, "not_found", || {
        call(&owner, "GET", "/api/no-such-endpoint", None)
    });
    refused(&server, 405, "method_not_allowed", || {
        call(&owner, "PUT", "/api/groups", None)
    });
    // Bad fields and parameters.
    refused(&server, 400, "invalid_request", || {
        call(
            &owner,
            "PATCH",
            &path,
            Some(json!({ "title": "a", "addMember": "cy" })),
        )
    });
    refused(&server, 400, "invalid_request", || {
        call(&owner, "PATCH", &path, Some(json!({})))
    });
    refused(&server, 400, "invalid_request", || {
        call(
            &owner,
            "POST",
            "/api/groups",
            Some(json!({ "memberFamiliarIds": ["ada", "ada"] })),
        )
    });
    refused(&server, 400, "invalid_request", || {
        call(
            &owner,
            "POST",
            &format!("{path}/send"),
            Some(json!({ "text": "" })),
        )
    });
    refused(&server, 400, "invalid_request", || {
        call(&owner, "GET", &format!("{path}?tail=0"), None)
    });
    refused(&server, 400, "invalid_request", || {
        call(&owner, "GET", &format!("{path}?tail=x"), None)
    });
    refused(&server, 400, "invalid_request", || {
        call(&owner, "GET", &format!("{path}/events?afterRev=999"), None)
    });
    refused(&server, 400, "invalid_request", || {
        owner
            .call(
                "GET",
                &format!("{path}/events"),
                None,
                &Extra {
                    headers: vec![("last-event-id", "abc".into())],
                    raw_body: None,
                },
            )
            .unwrap()
    });
    refused(&server, 400, "invalid_request", || {
        call(
            &owner,
            "POST",
            "/api/familiars",
            Some(json!({ "id": "zed", "displayName": "Zed", "harness": "no-such-harness" })),
        )
    });
    // The same familiar id with another harness.
    refused(&server, 409, "conflict", || {
        call(
            &owner,
            "POST",
            "/api/familiars",
            Some(json!({ "id": "ada", "displayName": "Ada", "harness": "claude" })),
        )
    });
    // Cancel with no turn running.
    refused(&server, 404, "not_found", || {
        call(&owner, "POST", &format!("{path}/cancel"), None)
    });
}

#[test]
fn oversized_bodies_and_headers_are_refused() {
    let server = TestServer::start();
    let owner = server.owner();
    let group = server.group();
    let big = "x".repeat(70 * 1024);
    refused(&server, 413, "payload_too_large", || {
        call(
            &owner,
            "POST",
            &format!("/api/groups/{group}/send"),
            Some(json!({ "text": big })),
        )
    });
    refused(&server, 413, "payload_too_large", || {
        call(
            &owner,
            "POST",
            "/api/sync/push",
            Some(json!({ "version": 1, "mutations": [big] })),
        )
    });
    refused(&server, 413, "payload_too_large", || {
        call(
            &owner,
            "POST",
            "/api/groups",
            Some(json!({ "title": big, "memberFamiliarIds": [] })),
        )
    });
    let long_header = "y".repeat(20 * 1024);
    refused(&server, 431, "headers_too_large", || {
        owner
            .call(
                "GET",
                "/api/groups",
                None,
                &Extra {
                    headers: vec![("x-padding", long_header.clone())],
                    raw_body: None,
                },
            )
            .unwrap()
    });
}

#[test]
fn send_streams_the_turn_with_seq_rev_and_familiar() {
    let server = TestServer::with(Options {
        words: 40,
        config: coven_group::Config {
            scripted_delay_ms: 5,
            ..Default::default()
        },
        ..Options::default()
    });
    let owner = server.owner();
    let group = server.group();
    let frames = send_frames(&owner, &group, "Hello all");
    let kinds: Vec<&str> = frames.iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"user"));
    assert_eq!(kinds.last(), Some(&"done"));
    assert_eq!(kinds.iter().filter(|k| **k == "replyStart").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "replyFinished").count(), 3);
    for frame in &frames[..frames.len() - 1] {
        assert!(frame["rev"].is_u64() && frame["seq"].is_u64(), "{frame}");
        if frame["kind"] != "user" {
            assert!(
                FAMILIARS.contains(&frame["familiarId"].as_str().unwrap()),
                "{frame}"
            );
        }
    }
    // The reconstruction from the frames is the stored timeline's replies: the text each reply
    // streamed leads to its finished text (a stream that reads a finished reply's collapsed
    // deltas from the store gets the rest with the finish), which is the stored one.
    let timeline = server.coven.get_group(&group).unwrap();
    for event in timeline.events.iter().filter(|e| e.familiar_id.is_some()) {
        let streamed: String = frames
            .iter()
            .filter(|f| {
                f["seq"] == event.seq && (f["kind"] == "replyDelta" || f["kind"] == "replyStart")
            })
            .map(|f| {
                f["text"]
                    .as_str()
                    .or(f["event"]["text"].as_str())
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert!(
            event.text.starts_with(&streamed),
            "{streamed:?} does not lead to {:?}",
            event.text
        );
        let finished = frames
            .iter()
            .find(|f| f["seq"] == event.seq && f["kind"] == "replyFinished")
            .expect("the reply's finish");
        assert_eq!(finished["event"]["text"], event.text.as_str());
    }
}

/// A harness that says nothing until its run is stopped, so a turn stays running with the store
/// unchanged.
struct Silent;

impl coven_group::Harness for Silent {
    fn run_turn(
        &self,
        _request: coven_group::TurnRequest,
        sink: std::sync::Arc<coven_group::ReplySink>,
    ) -> coven_group::Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sink.is_cancelled() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(true)
    }
}

#[test]
fn a_second_send_is_a_conflict_and_cancel_ends_the_turn() {
    let server = TestServer::start();
    server
        .coven
        .register_host_harness("silent", std::sync::Arc::new(Silent))
        .unwrap();
    server
        .coven
        .register_familiar(coven_group::Familiar::new("quiet", "Quiet", "silent"))
        .unwrap();
    let group = server
        .coven
        .create_group(None, vec!["quiet".into()], None)
        .unwrap()
        .id;
    let started = server.coven.send(&group, "long".into(), None).unwrap();
    refused(&server, 409, "conflict", || {
        call(
            &server.owner(),
            "POST",
            &format!("/api/groups/{group}/send"),
            Some(json!({ "text": "again" })),
        )
    });
    let cancelled = expect(
        &call(
            &server.owner(),
            "POST",
            &format!("/api/groups/{group}/cancel"),
            None,
        ),
        200,
        None,
    );
    assert_eq!(cancelled["turnId"].as_str(), Some(started.turn_id.as_str()));
    assert!(server
        .coven
        .wait_turn(&started.turn_id, Duration::from_secs(30))
        .unwrap());
    let timeline = server.coven.get_group(&group).unwrap();
    assert_eq!(
        timeline.events[1].error.as_ref().map(|e| e.kind),
        Some(coven_group::ReplyErrorKind::Cancelled)
    );
}

#[test]
fn leaving_a_send_stream_does_not_cancel_the_turn() {
    let server = TestServer::with(Options {
        words: 30,
        config: coven_group::Config {
            scripted_delay_ms: 10,
            ..Default::default()
        },
        ..Options::default()
    });
    let group = server.group();
    let mut events = server
        .owner()
        .stream(
            "POST",
            &format!("/api/groups/{group}/send"),
            Some(&json!({ "text": "go" })),
            &Extra::default(),
        )
        .unwrap()
        .unwrap();
    let first = events.next_frame().unwrap().unwrap();
    assert_eq!(first.data["kind"], "user");
    let turn = first.data["turnId"].as_str().unwrap().to_owned();
    drop(events);
    assert!(server
        .coven
        .wait_turn(&turn, Duration::from_secs(30))
        .unwrap());
    let timeline = server.coven.get_group(&group).unwrap();
    let replies: Vec<_> = timeline
        .events
        .iter()
        .filter(|e| e.familiar_id.is_some())
        .collect();
    assert_eq!(replies.len(), 3);
    for reply in replies {
        assert_eq!(reply.error, None, "a reply was cut: {reply:?}");
        assert_eq!(reply.text.split_whitespace().count(), 30);
    }
}

#[test]
fn events_stream_has_the_framing_and_heartbeats() {
    let server = TestServer::with(Options {
        limits: Limits {
            heartbeat: Duration::from_millis(100),
            ..Options::default().limits
        },
        ..Options::default()
    });
    let group = server.group();
    let mut events = server
        .owner()
        .stream(
            "GET",
            &format!("/api/groups/{group}/events?afterRev=0"),
            None,
            &Extra::default(),
        )
        .unwrap()
        .unwrap();
    let header = |name: &str| {
        events
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(
        header("cache-control").as_deref(),
        Some("no-cache, no-transform")
    );
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
    let created = events.next_frame().unwrap().unwrap();
    assert_eq!(created.id, Some(1));
    assert_eq!(created.data["kind"], "groupCreated");
    assert_eq!(created.data["group"]["id"], group.as_str());
    // Quiet: heartbeats arrive, then the next change.
    let mut heartbeats = 0;
    let rename = std::thread::spawn({
        let coven = server.coven.clone();
        let group = group.clone();
        move || {
            std::thread::sleep(Duration::from_millis(350));
            coven.rename_group(&group, "later".into()).unwrap();
        }
    });
    let mut next = events
        .next_frame_counting(&mut heartbeats)
        .unwrap()
        .unwrap();
    while next.data["kind"] != "groupChanged" {
        next = events
            .next_frame_counting(&mut heartbeats)
            .unwrap()
            .unwrap();
    }
    rename.join().unwrap();
    assert!(heartbeats >= 1, "no heartbeat in a quiet stream");
    assert_eq!(next.data["group"]["title"], "later");
}

#[test]
fn streams_beyond_the_bound_get_503() {
    let server = TestServer::with(Options {
        limits: Limits {
            max_streams: 2,
            ..Options::default().limits
        },
        ..Options::default()
    });
    let group = server.group();
    let path = format!("/api/groups/{group}/events");
    let open = || {
        server
            .owner()
            .stream("GET", &path, None, &Extra::default())
            .unwrap()
    };
    let first = open().expect("first stream");
    let second = open().expect("second stream");
    let third = open().err().expect("a third stream is refused");
    expect(&third, 503, Some("too_many_streams"));
    // A slot frees when a client leaves (the server notices on its next write or heartbeat).
    drop(first);
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        server.coven.rename_group(&group, "poke".into()).unwrap();
        if open().is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "slots were not released");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shares_scope_access_and_revocation() {
    let server = TestServer::start();
    let owner = server.owner();
    let shared = server.group();
    let other = server.group();
    let create = |access: &str| {
        expect(
            &call(
                &owner,
                "POST",
                "/api/shares",
                Some(json!({ "groupIds": [shared], "access": access, "label": "phone" })),
            ),
            201,
            None,
        )
    };
    let reader = create("read");
    let writer = create("readWrite");
    let read_token = reader["token"].as_str().unwrap().to_owned();
    let write_token = writer["token"].as_str().unwrap().to_owned();
    // Stored hashed, file mode 0600.
    let shares_file = coven_group_server::token_paths(&server.store).1;
    let stored = std::fs::read_to_string(&shares_file).unwrap();
    assert!(!stored.contains(&read_token) && !stored.contains(&write_token));
    assert_eq!(
        std::fs::metadata(&shares_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let token_file = coven_group_server::token_paths(&server.store).0;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let list = expect(&call(&owner, "GET", "/api/shares", None), 200, None);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(list[0].get("token").is_none());

    let read = server.with_token(&read_token);
    let write = server.with_token(&write_token);
    // The share sees only its group.
    let groups = expect(&call(&read, "GET", "/api/groups", None), 200, None);
    assert_eq!(groups.as_array().unwrap().len(), 1);
    assert_eq!(groups[0]["id"], shared.as_str());
    expect(
        &call(&read, "GET", &format!("/api/groups/{shared}"), None),
        200,
        None,
    );
    expect(
        &call(
            &read,
            "GET",
            &format!("/api/groups/{shared}/sessions"),
            None,
        ),
        200,
        None,
    );
    // Outside its groups: 404, nothing changes.
    for token in [&read, &write] {
        refused(&server, 404, "not_found", || {
            call(token, "GET", &format!("/api/groups/{other}"), None)
        });
        refused(&server, 404, "not_found", || {
            call(token, "GET", &format!("/api/groups/{other}/events"), None)
        });
        refused(&server, 404, "not_found", || {
            call(
                token,
                "POST",
                &format!("/api/groups/{other}/send"),
                Some(json!({ "text": "hi" })),
            )
        });
        refused(&server, 404, "not_found", || {
            call(token, "DELETE", &format!("/api/groups/{other}"), None)
        });
        let session = server.coven.sessions_of(&other).unwrap()[0].id.clone();
        refused(&server, 404, "not_found", || {
            call(token, "GET", &format!("/api/sessions/{session}"), None)
        });
        refused(&server, 404, "not_found", || {
            call(
                token,
                "POST",
                &format!("/api/sessions/{session}/archive"),
                None,
            )
        });
        // Only the owner creates groups, registers familiars and manages shares.
        refused(&server, 403, "forbidden", || {
            call(
                token,
                "POST",
                "/api/groups",
                Some(json!({ "memberFamiliarIds": ["ada"] })),
            )
        });
        refused(&server, 403, "forbidden", || {
            call(
                token,
                "POST",
                "/api/familiars",
                Some(json!({ "id": "x", "displayName": "X", "harness": "scripted" })),
            )
        });
        refused(&server, 403, "forbidden", || {
            call(token, "GET", "/api/shares", None)
        });
        refused(&server, 403, "forbidden", || {
            call(
                token,
                "POST",
                "/api/shares",
                Some(json!({ "groupIds": [other], "access": "readWrite" })),
            )
        });
    }
    // A read-only share cannot write.
    let session = server.coven.sessions_of(&shared).unwrap()[0].id.clone();
    refused(&server, 403, "forbidden", || {
        call(
            &read,
            "POST",
            &format!("/api/groups/{shared}/send"),
            Some(json!({ "text": "hi" })),
        )
    });
    refused(&server, 403, "forbidden", || {
        call(
            &read,
            "PATCH",
            &format!("/api/groups/{shared}"),
            Some(json!({ "title": "x" })),
        )
    });
    refused(&server, 403, "forbidden", || {
        call(&read, "DELETE", &format!("/api/groups/{shared}"), None)
    });
    refused(&server, 403, "forbidden", || {
        call(&read, "POST", &format!("/api/groups/{shared}/cancel"), None)
    });
    refused(&server, 403, "forbidden", || {
        call(
            &read,
            "POST",
            &format!("/api/sessions/{session}/archive"),
            None,
        )
    });
    // A read-write share can.
    let renamed = expect(
        &call(
            &write,
            "PATCH",
            &format!("/api/groups/{shared}"),
            Some(json!({ "title": "ours" })),
        ),
        200,
        None,
    );
    assert_eq!(renamed["title"], "ours");
    // Revoked: refused from the next request on.
    let id = reader["share"]["id"].as_str().unwrap();
    expect(
        &call(&owner, "DELETE", &format!("/api/shares/{id}"), None),
        204,
        None,
    );
    refused(&server, 401, "unauthorized", || {
        call(&read, "GET", &format!("/api/groups/{shared}"), None)
    });
    assert_eq!(
        expect(&call(&owner, "GET", "/api/shares", None), 200, None)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Bad share requests.
    refused(&server, 400, "invalid_request", || {
        call(
            &owner,
            "POST",
            "/api/shares",
            Some(json!({ "groupIds": [], "access": "read" })),
        )
    });
    refused(&server, 404, "not_found", || {
        call(
            &owner,
            "POST",
            "/api/shares",
            Some(json!({ "groupIds": [UNKNOWN_UUID], "access": "read" })),
        )
    });
    refused(&server, 400, "invalid_request", || {
        call(
            &owner,
            "POST",
            "/api/shares",
            Some(json!({ "groupIds": [shared], "access": "admin" })),
        )
    });
}

#[test]
fn shares_survive_a_restart_and_the_owner_token_is_kept() {
    let mut server = TestServer::start();
    let group = server.group();
    let created = expect(
        &call(
            &server.owner(),
            "POST",
            "/api/shares",
            Some(json!({ "groupIds": [group], "access": "read" })),
        ),
        201,
        None,
    );
    let token = created["token"].as_str().unwrap().to_owned();
    server.stop().unwrap();
    let (tokens, owner) = coven_group_server::Server::tokens_for(&server.store).unwrap();
    assert_eq!(owner, server.owner_token);
    assert!(tokens.authenticate(&token).is_some());
    assert!(tokens.authenticate(&owner).is_some());
    assert!(tokens.authenticate("cgs_unknown").is_none());
}

#[test]
fn familiars_sessions_and_rituals() {
    let server = TestServer::start();
    let owner = server.owner();
    let familiars = expect(&call(&owner, "GET", "/api/familiars", None), 200, None);
    assert_eq!(familiars.as_array().unwrap().len(), 3);
    assert_eq!(familiars[0]["displayName"], "ADA");
    let registered = expect(
        &call(
            &owner,
            "POST",
            "/api/familiars",
            Some(json!({ "id": "dee", "displayName": "Dee", "harness": "scripted" })),
        ),
        200,
        None,
    );
    assert_eq!(registered["id"], "dee");

    let group = server.group();
    let sessions = expect(
        &call(
            &owner,
            "GET",
            &format!("/api/groups/{group}/sessions"),
            None,
        ),
        200,
        None,
    );
    assert_eq!(sessions.as_array().unwrap().len(), 3);
    let session = sessions[0]["id"].as_str().unwrap().to_owned();
    let one = expect(
        &call(&owner, "GET", &format!("/api/sessions/{session}"), None),
        200,
        None,
    );
    assert_eq!(one["status"], "idle");
    let archived = expect(
        &call(
            &owner,
            "POST",
            &format!("/api/sessions/{session}/archive"),
            None,
        ),
        200,
        None,
    );
    assert_eq!(archived["archived"], true);
    let summoned = expect(
        &call(
            &owner,
            "POST",
            &format!("/api/sessions/{session}/summon"),
            None,
        ),
        200,
        None,
    );
    assert_eq!(summoned["archived"], false);
    // A current member's session cannot be sacrificed; a removed member's can.
    refused(&server, 409, "conflict", || {
        call(&owner, "DELETE", &format!("/api/sessions/{session}"), None)
    });
    let familiar = sessions[0]["familiarId"].as_str().unwrap();
    server.coven.remove_member(&group, familiar).unwrap();
    expect(
        &call(&owner, "DELETE", &format!("/api/sessions/{session}"), None),
        204,
        None,
    );
    expect(
        &call(&owner, "GET", &format!("/api/sessions/{session}"), None),
        404,
        Some("not_found"),
    );
}

#[test]
fn adopt_wraps_existing_sessions() {
    let server = TestServer::start();
    let owner = server.owner();
    let adopted = expect(
        &call(
            &owner,
            "POST",
            "/api/groups/adopt",
            Some(json!({
                "title": "Adopted",
                "members": [
                    { "familiarId": "ada", "sessionId": "01a2358b-0000-7000-8000-00000000000a",
                      "history": [ { "role": "user", "text": "hi", "ts": 1000, "author": "Sam" },
                                   { "role": "familiar", "text": "hello", "ts": 2000 } ] },
                    { "familiarId": "bo", "sessionId": "01a2358b-0000-7000-8000-00000000000b",
                      "history": [ { "role": "user", "text": "hi", "ts": 1001, "author": "Sam" } ] }
                ]
            })),
        ),
        201,
        None,
    );
    let id = adopted["id"].as_str().unwrap();
    assert_eq!(
        adopted["memberSessionIds"][0],
        "01a2358b-0000-7000-8000-00000000000a"
    );
    let timeline = expect(
        &call(&owner, "GET", &format!("/api/groups/{id}"), None),
        200,
        None,
    );
    let texts: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hi", "hello"]);
    assert_eq!(timeline["events"][0]["ts"], 1000);
    // Reusing a session id is refused and changes nothing.
    refused(&server, 409, "conflict", || {
        call(
            &owner,
            "POST",
            "/api/groups/adopt",
            Some(
                json!({ "members": [ { "familiarId": "cy", "sessionId": "01a2358b-0000-7000-8000-00000000000a" } ] }),
            ),
        )
    });
}

#[test]
fn the_unix_socket_is_private_and_needs_no_token() {
    let server = TestServer::with(Options {
        unix: true,
        ..Options::default()
    });
    let socket = server.socket.clone().unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let groups = expect(
        &call(&server.owner(), "GET", "/api/groups", None),
        200,
        None,
    );
    assert!(groups.as_array().unwrap().is_empty());
    // A second server on a live socket is refused.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let second = runtime.block_on(coven_group_server::Bound::bind(
        &coven_group_server::Listen::Unix(socket.clone()),
    ));
    assert!(second.is_err());
    // A path that is not a socket is never replaced.
    let file = server.dir.path().join("notes.txt");
    std::fs::write(&file, "keep").unwrap();
    let refused = runtime.block_on(coven_group_server::Bound::bind(
        &coven_group_server::Listen::Unix(file.clone()),
    ));
    assert!(refused.is_err());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
}

#[test]
fn shutdown_ends_streams_closes_the_store_and_removes_the_socket() {
    let mut server = TestServer::with(Options {
        unix: true,
        ..Options::default()
    });
    let group = server.group();
    let mut events = server
        .owner()
        .stream(
            "GET",
            &format!("/api/groups/{group}/events"),
            None,
            &Extra::default(),
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        events.next_frame().unwrap().unwrap().data["kind"],
        "groupCreated"
    );
    server.stop().unwrap();
    // The stream ended (not cut by the read timeout): the server finished it.
    assert!(events.next_frame().unwrap().is_none());
    assert_eq!(server.coven.list_groups(), Err(coven_group::Error::Closed));
    assert!(!server.socket.clone().unwrap().exists());
}
