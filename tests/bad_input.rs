//! Invariant 7: every refused call returns its precise error and leaves the store exactly as it
//! was, both as the public API reads it and byte for byte in the store file.

mod common;

use std::sync::Arc;

use common::*;
use coven_group::{
    Coven, Error, Familiar, GroupConversation, HistoryMessage, HistoryRole, BUILTIN_HARNESSES,
    MAX_MEMBERS, MAX_NAME_CHARS, MAX_PAGE, MAX_TEXT_BYTES, MAX_TITLE_CHARS,
};

/// What a refused call must return.
enum Expect {
    /// `InvalidInput` for this field, whose reason mentions each of these words.
    Invalid(&'static str, Vec<String>),
    NotFound(&'static str, String),
    Conflict,
}

fn invalid(field: &'static str) -> Expect {
    Expect::Invalid(field, Vec::new())
}

type Call = Box<dyn Fn(&Coven) -> Result<(), Error> + Send + Sync>;

struct Case {
    name: &'static str,
    call: Call,
    expect: Expect,
}

fn case<T>(
    name: &'static str,
    expect: Expect,
    call: impl Fn(&Coven) -> Result<T, Error> + Send + Sync + 'static,
) -> Case {
    Case {
        name,
        call: Box::new(move |coven| call(coven).map(|_| ())),
        expect,
    }
}

/// The store every case runs against: two groups with timelines, a removed member's archived
/// session, and familiars of two harness kinds.
struct Fixture {
    store: FileStore,
    pair: GroupConversation,
    solo: GroupConversation,
}

fn fixture() -> Fixture {
    let store = FileStore::new();
    let coven = &store.coven;
    register(coven, &[("ada", "Ada"), ("bo", "Bo"), ("cara", "Cara")]);
    coven
        .register_familiar(Familiar::new("cl", "Claude", "claude"))
        .unwrap();
    let pair = coven
        .create_group(None, ids(&["ada", "bo", "cara"]), None)
        .unwrap();
    coven
        .append_user_message(&pair.id, "hello".into(), Some("Sam".into()))
        .unwrap();
    coven.rename_group(&pair.id, "Pair".into()).unwrap();
    let pair = coven.remove_member(&pair.id, "cara").unwrap();
    let solo = coven.create_group(None, ids(&["ada"]), None).unwrap();
    coven
        .append_user_message(&solo.id, "solo".into(), None)
        .unwrap();
    Fixture { store, pair, solo }
}

fn cases(fx: &Fixture) -> Vec<Case> {
    let pair = fx.pair.id.clone();
    let solo = fx.solo.id.clone();
    let ada_session = fx.pair.session_of("ada").unwrap().to_owned();
    let unknown_group = fresh_session_id(4242);
    let unknown_session = fresh_session_id(4343);
    let not_a_dir = fx.store.path.to_str().unwrap().to_owned();
    let missing_dir = fx
        .store
        .dir
        .path()
        .join("missing")
        .to_str()
        .unwrap()
        .to_owned();
    let long_title = "é".repeat(MAX_TITLE_CHARS + 1);
    let long_text = "x".repeat(MAX_TEXT_BYTES + 1);
    let long_name = "n".repeat(MAX_NAME_CHARS + 1);
    let too_many: Vec<String> = (0..=MAX_MEMBERS).map(|i| format!("f{i}")).collect();

    let mut v = vec![
        // ---- create_group ----
        case("no members", invalid("member_ids"), |c| {
            c.create_group(None, vec![], None)
        }),
        case(
            "unknown familiar",
            Expect::NotFound("familiar", "ghost".into()),
            |c| c.create_group(None, ids(&["ada", "ghost"]), None),
        ),
        case("duplicate member", invalid("member_ids"), |c| {
            c.create_group(None, ids(&["ada", "bo", "ada"]), None)
        }),
        case(
            "malformed familiar id in members",
            invalid("member_ids"),
            |c| c.create_group(None, ids(&["ada", "bo bo"]), None),
        ),
        {
            let too_many = too_many.clone();
            case("too many members", invalid("member_ids"), move |c| {
                c.create_group(None, too_many.clone(), None)
            })
        },
        {
            let long_title = long_title.clone();
            case("create: title over the limit", invalid("title"), move |c| {
                c.create_group(Some(long_title.clone()), ids(&["ada"]), None)
            })
        },
        case("create: empty title", invalid("title"), |c| {
            c.create_group(Some(String::new()), ids(&["ada"]), None)
        }),
        case("create: whitespace title", invalid("title"), |c| {
            c.create_group(Some(" \t ".into()), ids(&["ada"]), None)
        }),
        case(
            "create: NUL in title",
            Expect::Invalid("title", vec!["NUL".into()]),
            |c| c.create_group(Some("a\0b".into()), ids(&["ada"]), None),
        ),
        case(
            "create: control character in title",
            invalid("title"),
            |c| c.create_group(Some("a\nb".into()), ids(&["ada"]), None),
        ),
        {
            let missing_dir = missing_dir.clone();
            case(
                "create: missing project root",
                invalid("project_root"),
                move |c| c.create_group(None, ids(&["ada"]), Some(missing_dir.clone())),
            )
        },
        {
            let not_a_dir = not_a_dir.clone();
            case(
                "create: project root is a file",
                invalid("project_root"),
                move |c| c.create_group(None, ids(&["ada"]), Some(not_a_dir.clone())),
            )
        },
        // ---- append_user_message ----
        {
            let pair = pair.clone();
            case("empty text", invalid("text"), move |c| {
                c.append_user_message(&pair, String::new(), None)
            })
        },
        {
            let pair = pair.clone();
            case("whitespace-only text", invalid("text"), move |c| {
                c.append_user_message(&pair, " \t\r\n ".into(), None)
            })
        },
        {
            let pair = pair.clone();
            case(
                "text over MAX_TEXT_BYTES",
                Expect::Invalid("text", vec![MAX_TEXT_BYTES.to_string()]),
                move |c| c.append_user_message(&pair, long_text.clone(), None),
            )
        },
        {
            let pair = pair.clone();
            case(
                "NUL in text",
                Expect::Invalid("text", vec!["NUL".into()]),
                move |c| c.append_user_message(&pair, "hi\0there".into(), None),
            )
        },
        {
            let pair = pair.clone();
            let long_name = long_name.clone();
            case("author over the limit", invalid("author"), move |c| {
                c.append_user_message(&pair, "hi".into(), Some(long_name.clone()))
            })
        },
        {
            let pair = pair.clone();
            case("blank author", invalid("author"), move |c| {
                c.append_user_message(&pair, "hi".into(), Some("  ".into()))
            })
        },
        case("append: malformed group id", invalid("group_id"), |c| {
            c.append_user_message("not-a-uuid", "hi".into(), None)
        }),
        case("append: empty group id", invalid("group_id"), |c| {
            c.append_user_message("", "hi".into(), None)
        }),
        {
            let unknown = unknown_group.clone();
            case(
                "append: unknown group",
                Expect::NotFound("group", unknown_group.clone()),
                move |c| c.append_user_message(&unknown, "hi".into(), None),
            )
        },
        // ---- rename / membership / delete ----
        {
            let pair = pair.clone();
            let long_title = long_title.clone();
            case("rename: title over the limit", invalid("title"), move |c| {
                c.rename_group(&pair, long_title.clone())
            })
        },
        {
            let pair = pair.clone();
            case("rename: NUL in title", invalid("title"), move |c| {
                c.rename_group(&pair, "new\0name".into())
            })
        },
        {
            let pair = pair.clone();
            case("rename: empty title", invalid("title"), move |c| {
                c.rename_group(&pair, String::new())
            })
        },
        case("rename: malformed group id", invalid("group_id"), |c| {
            c.rename_group("1234", "x".into())
        }),
        {
            let unknown = unknown_group.clone();
            case(
                "rename: unknown group",
                Expect::NotFound("group", unknown_group.clone()),
                move |c| c.rename_group(&unknown, "x".into()),
            )
        },
        case("add_member: malformed group id", invalid("group_id"), |c| {
            c.add_member("zzzz", "ada")
        }),
        {
            let pair = pair.clone();
            case(
                "add_member: malformed familiar id",
                invalid("familiar_id"),
                move |c| c.add_member(&pair, "no/slashes"),
            )
        },
        {
            let pair = pair.clone();
            case(
                "add_member: unknown familiar",
                Expect::NotFound("familiar", "ghost".into()),
                move |c| c.add_member(&pair, "ghost"),
            )
        },
        {
            let pair = pair.clone();
            case("add_member: already a member", Expect::Conflict, move |c| {
                c.add_member(&pair, "bo")
            })
        },
        {
            let unknown = unknown_group.clone();
            case(
                "add_member: unknown group",
                Expect::NotFound("group", unknown_group.clone()),
                move |c| c.add_member(&unknown, "ada"),
            )
        },
        {
            let pair = pair.clone();
            case(
                "remove_member: not a member",
                Expect::NotFound("member", "cara".into()),
                move |c| c.remove_member(&pair, "cara"),
            )
        },
        {
            let solo = solo.clone();
            case("remove_member: last member", Expect::Conflict, move |c| {
                c.remove_member(&solo, "ada")
            })
        },
        case(
            "remove_member: malformed group id",
            invalid("group_id"),
            |c| c.remove_member("g", "ada"),
        ),
        case("delete: malformed group id", invalid("group_id"), |c| {
            c.delete_group("{}")
        }),
        {
            let unknown = unknown_group.clone();
            case(
                "delete: unknown group",
                Expect::NotFound("group", unknown_group.clone()),
                move |c| c.delete_group(&unknown),
            )
        },
        // ---- reads ----
        case("get_group: malformed group id", invalid("group_id"), |c| {
            c.get_group("not-a-uuid")
        }),
        {
            let unknown = unknown_group.clone();
            case(
                "get_group: unknown group",
                Expect::NotFound("group", unknown_group.clone()),
                move |c| c.get_group(&unknown),
            )
        },
        case(
            "sessions_of: malformed group id",
            invalid("group_id"),
            |c| c.sessions_of("nope"),
        ),
        {
            let pair = pair.clone();
            case("events_since: limit 0", invalid("limit"), move |c| {
                c.events_since(&pair, 0, 0)
            })
        },
        {
            let pair = pair.clone();
            case(
                "events_since: limit over MAX_PAGE",
                invalid("limit"),
                move |c| c.events_since(&pair, 0, MAX_PAGE + 1),
            )
        },
        {
            let pair = pair.clone();
            case("changes_since: limit 0", invalid("limit"), move |c| {
                c.changes_since(&pair, 0, 0)
            })
        },
        // The solo group takes no writes while the cases run, so its head stays put.
        {
            let solo = solo.clone();
            case("after_seq beyond head", invalid("after_seq"), move |c| {
                let head = c.get_group(&solo)?.events.len() as u64;
                c.events_since(&solo, head + 1, 10)
            })
        },
        {
            let pair = pair.clone();
            case("after_seq u64::MAX", invalid("after_seq"), move |c| {
                c.events_since(&pair, u64::MAX, 10)
            })
        },
        {
            let solo = solo.clone();
            case("after_rev beyond head", invalid("after_rev"), move |c| {
                let head = c.get_group(&solo)?.rev;
                c.changes_since(&solo, head + 1, 10)
            })
        },
        {
            let pair = pair.clone();
            case("after_rev u64::MAX", invalid("after_rev"), move |c| {
                c.changes_since(&pair, u64::MAX, 10)
            })
        },
        case(
            "events_since: malformed group id",
            invalid("group_id"),
            |c| c.events_since("x", 0, 10),
        ),
        case(
            "changes_since: malformed group id",
            invalid("group_id"),
            |c| c.changes_since("x", 0, 10),
        ),
        case(
            "get_familiar: unknown",
            Expect::NotFound("familiar", "ghost".into()),
            |c| c.get_familiar("ghost"),
        ),
        // ---- sessions ----
        case(
            "get_session: malformed session id",
            invalid("session_id"),
            |c| c.get_session("not-a-session"),
        ),
        case(
            "archive: malformed session id",
            invalid("session_id"),
            |c| c.archive_session(""),
        ),
        case("summon: malformed session id", invalid("session_id"), |c| {
            c.summon_session("0")
        }),
        case(
            "sacrifice: malformed session id",
            invalid("session_id"),
            |c| c.sacrifice_session("g-h-i"),
        ),
        {
            let unknown = unknown_session.clone();
            case(
                "archive: unknown session",
                Expect::NotFound("session", unknown_session.clone()),
                move |c| c.archive_session(&unknown),
            )
        },
        {
            let ada_session = ada_session.clone();
            case(
                "sacrifice: current member's session",
                Expect::Conflict,
                move |c| c.sacrifice_session(&ada_session),
            )
        },
        // ---- familiars ----
        case(
            "familiar registered again with another harness",
            Expect::Conflict,
            |c| c.register_familiar(Familiar::new("ada", "Ada", "claude")),
        ),
        case(
            "familiar registered again with another harness (2)",
            Expect::Conflict,
            |c| c.register_familiar(Familiar::new("cl", "Claude", "scripted")),
        ),
        case(
            "unknown harness kind",
            Expect::Invalid(
                "familiar.harness",
                BUILTIN_HARNESSES
                    .iter()
                    .map(|k| (*k).to_owned())
                    .chain(["gpt".to_owned()])
                    .collect(),
            ),
            |c| c.register_familiar(Familiar::new("zed", "Zed", "gpt")),
        ),
        case("familiar: malformed id", invalid("familiar.id"), |c| {
            c.register_familiar(Familiar::new("zed zed", "Zed", "scripted"))
        }),
        case("familiar: empty id", invalid("familiar.id"), |c| {
            c.register_familiar(Familiar::new("", "Zed", "scripted"))
        }),
        case(
            "familiar: blank display name",
            invalid("familiar.display_name"),
            |c| c.register_familiar(Familiar::new("zed", " ", "scripted")),
        ),
        case(
            "familiar: NUL in display name",
            invalid("familiar.display_name"),
            |c| c.register_familiar(Familiar::new("zed", "Z\0d", "scripted")),
        ),
        case(
            "familiar: command without a program",
            invalid("familiar.argv"),
            |c| c.register_familiar(Familiar::new("zed", "Zed", "command")),
        ),
        case(
            "familiar: program not allowlisted",
            invalid("familiar.argv"),
            |c| {
                let mut familiar = Familiar::new("zed", "Zed", "command");
                familiar.argv = vec!["sh".into(), "-c".into(), "true".into()];
                c.register_familiar(familiar)
            },
        ),
        case(
            "familiar: argv for a non-command harness",
            invalid("familiar.argv"),
            |c| {
                let mut familiar = Familiar::new("zed", "Zed", "scripted");
                familiar.argv = vec!["echo".into()];
                c.register_familiar(familiar)
            },
        ),
        // ---- adopt_group ----
        case("adopt: no members", invalid("members"), |c| {
            c.adopt_group(None, vec![])
        }),
        case("adopt: malformed session id", invalid("session_id"), |c| {
            c.adopt_group(None, vec![adopted("ada", "nope", vec![user("q", at(0))])])
        }),
        {
            let ada_session = ada_session.clone();
            case("adopt: existing session id", Expect::Conflict, move |c| {
                c.adopt_group(
                    None,
                    vec![
                        adopted("bo", &fresh_session_id(1), vec![user("q", at(0))]),
                        adopted("ada", &ada_session, vec![user("q", at(0))]),
                    ],
                )
            })
        },
        case(
            "adopt: unknown familiar",
            Expect::NotFound("familiar", "ghost".into()),
            |c| c.adopt_group(None, vec![adopted("ghost", &fresh_session_id(2), vec![])]),
        ),
        case("adopt: duplicate familiar", invalid("members"), |c| {
            c.adopt_group(
                None,
                vec![
                    adopted("ada", &fresh_session_id(3), vec![]),
                    adopted("ada", &fresh_session_id(4), vec![]),
                ],
            )
        }),
        case("adopt: empty history text", invalid("history.text"), |c| {
            c.adopt_group(
                None,
                vec![adopted("ada", &fresh_session_id(5), vec![user(" ", at(0))])],
            )
        }),
        case("adopt: NUL in history text", invalid("history.text"), |c| {
            c.adopt_group(
                None,
                vec![adopted(
                    "ada",
                    &fresh_session_id(6),
                    vec![user("a\0", at(0))],
                )],
            )
        }),
        case(
            "adopt: familiar message with an author",
            invalid("history.author"),
            |c| {
                let message = HistoryMessage {
                    role: HistoryRole::Familiar,
                    text: "reply".into(),
                    timestamp: at(0),
                    author: Some("Sam".into()),
                };
                c.adopt_group(
                    None,
                    vec![adopted("ada", &fresh_session_id(7), vec![message])],
                )
            },
        ),
        {
            let long_title = long_title.clone();
            case("adopt: title over the limit", invalid("title"), move |c| {
                c.adopt_group(
                    Some(long_title.clone()),
                    vec![adopted("ada", &fresh_session_id(8), vec![])],
                )
            })
        },
    ];
    // Refusals from inside the writer, repeated back to back, abort every time.
    for n in 0..3 {
        let pair = pair.clone();
        v.push(case(
            "repeated writer refusal",
            Expect::NotFound("member", format!("ghost{n}")),
            move |c| c.remove_member(&pair, &format!("ghost{n}")),
        ));
    }
    v
}

#[track_caller]
fn check(name: &str, result: Result<(), Error>, expect: &Expect) {
    match (expect, result) {
        (Expect::Invalid(field, words), Err(Error::InvalidInput { field: got, reason })) => {
            assert_eq!(got, *field, "{name}: wrong field (reason: {reason})");
            for word in words {
                assert!(
                    reason.contains(word.as_str()),
                    "{name}: {reason:?} lacks {word:?}"
                );
            }
        }
        (
            Expect::NotFound(what, id),
            Err(Error::NotFound {
                what: got,
                id: got_id,
            }),
        ) => {
            assert_eq!(
                (got.as_str(), got_id.as_str()),
                (*what, id.as_str()),
                "{name}"
            );
        }
        (Expect::Conflict, Err(Error::Conflict { .. })) => {}
        (_, other) => panic!("{name}: unexpected outcome {other:?}"),
    }
}

#[test]
fn every_bad_input_is_refused_precisely_and_changes_nothing() {
    let fx = fixture();
    let cases = cases(&fx);
    assert!(cases.len() > 60);
    let initial = fx.store.dump();
    for case in &cases {
        let before = fx.store.dump();
        let result = (case.call)(&fx.store.coven);
        check(case.name, result, &case.expect);
        let after = fx.store.dump();
        assert!(
            after.0 == before.0,
            "{}: the refused call changed what the store returns",
            case.name
        );
        assert!(
            after.1 == before.1,
            "{}: the refused call changed the bytes of the store file",
            case.name
        );
    }
    assert!(fx.store.dump() == initial);
}

#[test]
fn refusals_batched_with_accepted_writes_leave_no_trace() {
    // One thread makes accepted appends while another replays every refused call, so the writer
    // commits batches that mix both: only the accepted writes may show.
    let fx = fixture();
    let coven = Arc::clone(&fx.store.coven);
    let initial = Dump::of(&coven);
    let start = coven.get_group(&fx.pair.id).unwrap();
    const APPENDS: usize = 300;

    let writer = {
        let coven = Arc::clone(&coven);
        let pair = fx.pair.id.clone();
        std::thread::spawn(move || {
            (0..APPENDS)
                .map(|i| {
                    coven
                        .append_user_message(&pair, format!("accepted {i}"), None)
                        .unwrap()
                })
                .collect::<Vec<_>>()
        })
    };
    let cases = cases(&fx);
    let mut rounds = 0;
    while !writer.is_finished() || rounds < 2 {
        for case in &cases {
            check(case.name, (case.call)(&coven), &case.expect);
        }
        rounds += 1;
    }
    let accepted = writer.join().unwrap();

    let after = Dump::of(&coven);
    assert_eq!(after.familiars, initial.familiars);
    assert_eq!(
        after.groups.len(),
        initial.groups.len(),
        "a refused call created or deleted a group"
    );
    for (index, group) in initial.groups.iter().enumerate() {
        let now = after.groups.iter().position(|g| g.id == group.id).unwrap();
        assert_eq!(
            after.sessions[now], initial.sessions[index],
            "sessions changed"
        );
        if group.id != fx.pair.id {
            assert_eq!(after.snapshots[now], initial.snapshots[index]);
            assert_eq!(after.changes[now], initial.changes[index]);
            continue;
        }
        let snapshot = &after.snapshots[now];
        assert_eq!(snapshot.group.title, group.title);
        assert_eq!(snapshot.group.members, group.members);
        assert_seq_contiguous(&snapshot.events);
        assert_eq!(snapshot.events[..start.events.len()], start.events[..]);
        assert_eq!(snapshot.events[start.events.len()..], accepted[..]);
        // The log after the fixture holds exactly the accepted appends.
        let changes = assert_rev_contiguous(&coven, &group.id);
        assert_eq!(changes[..start.rev as usize], initial.changes[index][..]);
        assert_eq!(changes.len(), start.rev as usize + APPENDS);
        for (change, event) in changes[start.rev as usize..].iter().zip(&accepted) {
            assert_eq!(
                change.update,
                coven_group::GroupUpdate::EventAppended {
                    event: event.clone()
                }
            );
        }
    }
}

#[test]
fn inputs_exactly_at_the_limits_are_accepted() {
    // The byte comparison above is meaningful: an accepted write does change the file.
    let fx = fixture();
    let coven = &fx.store.coven;
    let (_, bytes) = fx.store.dump();
    let text = "x".repeat(MAX_TEXT_BYTES);
    let event = coven
        .append_user_message(&fx.pair.id, text.clone(), None)
        .unwrap();
    assert_eq!(event.text, text);
    assert_ne!(
        fx.store.dump().1,
        bytes,
        "an accepted write left the file unchanged"
    );

    let title = "é".repeat(MAX_TITLE_CHARS);
    assert!(
        title.len() > MAX_TITLE_CHARS,
        "the title limit counts characters, not bytes"
    );
    assert_eq!(
        coven
            .rename_group(&fx.pair.id, title.clone())
            .unwrap()
            .title,
        title
    );
    let author = "a".repeat(MAX_NAME_CHARS);
    coven
        .append_user_message(&fx.pair.id, " padded ".into(), Some(author))
        .unwrap();
    let members: Vec<String> = (0..MAX_MEMBERS).map(|i| format!("m{i}")).collect();
    register(
        coven,
        &members
            .iter()
            .map(|id| (id.as_str(), "Member"))
            .collect::<Vec<_>>(),
    );
    let big = coven.create_group(None, members, None).unwrap();
    assert_eq!(big.members.len(), MAX_MEMBERS);
    assert_eq!(coven.sessions_of(&big.id).unwrap().len(), MAX_MEMBERS);
    assert_eq!(
        coven.events_since(&fx.pair.id, 0, MAX_PAGE).unwrap().len(),
        coven.get_group(&fx.pair.id).unwrap().events.len()
    );
    let head = coven.get_group(&fx.pair.id).unwrap();
    let last_seq = head.events.last().unwrap().seq;
    assert!(coven
        .events_since(&fx.pair.id, last_seq, 1)
        .unwrap()
        .is_empty());
    assert!(coven
        .changes_since(&fx.pair.id, head.rev, 1)
        .unwrap()
        .is_empty());
}

#[test]
fn adopted_timestamp_before_1970_is_invalid_input_and_fails_no_other_write() {
    // A host `Date` can lie before 1970; the store cannot encode such a time. That must be a
    // precise refusal of this call alone, not a storage error that aborts the whole batch and
    // with it other callers' valid writes.
    let fx = fixture();
    let coven = Arc::clone(&fx.store.coven);
    let before_epoch = std::time::UNIX_EPOCH - std::time::Duration::from_secs(1);
    let bad = |n: u128| {
        vec![adopted(
            "bo",
            &fresh_session_id(500 + n),
            vec![user("from long ago", before_epoch)],
        )]
    };

    let dump = fx.store.dump();
    let reason = match coven.adopt_group(None, bad(0)) {
        Err(Error::InvalidInput { field, reason }) => {
            assert!(field.starts_with("history"), "field {field:?}");
            reason
        }
        other => panic!("expected InvalidInput for the history timestamp, got {other:?}"),
    };
    assert!(!reason.is_empty());
    assert!(
        fx.store.dump() == dump,
        "the refused adoption changed the store"
    );

    // Concurrent valid appends never fail because of it.
    let writer = {
        let coven = Arc::clone(&coven);
        let pair = fx.pair.id.clone();
        std::thread::spawn(move || {
            (0..300)
                .map(|i| coven.append_user_message(&pair, format!("fine {i}"), None))
                .filter(Result::is_err)
                .collect::<Vec<_>>()
        })
    };
    let mut n = 1;
    while !writer.is_finished() {
        assert!(matches!(
            coven.adopt_group(None, bad(n)),
            Err(Error::InvalidInput { .. })
        ));
        n += 1;
    }
    let failed = writer.join().unwrap();
    assert!(
        failed.is_empty(),
        "valid appends failed: {:?}",
        &failed[..1]
    );
}
