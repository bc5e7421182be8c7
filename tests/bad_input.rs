//! Invariant 7: every refused call returns its precise error and leaves the store exactly as it
//! was, both as the public API reads it and byte for byte in the store file.
//!
//! Each operation of the exported API has its refused calls in a function of its own
//! (`cases::send`, …) and a test of its own (`refused::send`, …) that runs them against a fresh
//! store; `refusals!` names both, so a misspelt operation does not compile, and
//! `every_exported_operation_has_refusals` keeps the list in step with the API.
//! Operations without arguments (`list_familiars`, `list_groups`, `recovery`, `check`, `close`)
//! have nothing to refuse; a closed store refuses everything, which has a test too.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use coven_group::{
    Config, Coven, Error, Familiar, GroupChange, GroupConversation, GroupListener, GroupPull,
    Harness, HistoryMessage, HistoryRole, Mutation, PullRequest, PullResponse, PushRequest,
    PushResponse, PushedMutation, ReplySink, SyncCursor, SyncTransport, TurnRequest,
    BUILTIN_HARNESSES, MAX_CONSUMER_LEN, MAX_FAMILIAR_ID_LEN, MAX_MEMBERS, MAX_NAME_CHARS,
    MAX_PAGE, MAX_PREAMBLE_BYTES, MAX_TEXT_BYTES, MAX_TITLE_CHARS, SYNC_PROTOCOL_VERSION,
};
use crossbeam_channel::Sender;

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

fn invalid_saying(field: &'static str, word: impl ToString) -> Expect {
    Expect::Invalid(field, vec![word.to_string()])
}

fn not_found(what: &'static str, id: &str) -> Expect {
    Expect::NotFound(what, id.to_owned())
}

type Call = Box<dyn Fn(&Coven, &Ctx) -> Result<(), Error> + Send + Sync>;

struct Case {
    name: &'static str,
    call: Call,
    expect: Expect,
}

fn case<T>(
    name: &'static str,
    expect: Expect,
    call: impl Fn(&Coven, &Ctx) -> Result<T, Error> + Send + Sync + 'static,
) -> Case {
    Case {
        name,
        call: Box::new(move |coven, ctx| call(coven, ctx).map(|_| ())),
        expect,
    }
}

/// A host harness whose runs wait, without output, until they are cancelled: it keeps the
/// `busy` group's turn running (and its store unchanged) while the cases run.
struct Waiting {
    started: Sender<()>,
}

impl Harness for Waiting {
    fn run_turn(&self, _request: TurnRequest, sink: Arc<ReplySink>) -> coven_group::Result<bool> {
        let _ = self.started.send(());
        while !sink.is_cancelled() {
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(true)
    }
}

/// A transport that a refused sync must never reach.
struct Unreachable;

impl SyncTransport for Unreachable {
    fn pull(&self, request: PullRequest) -> coven_group::Result<PullResponse> {
        panic!("a refused sync pulled {request:?}");
    }

    fn push(&self, request: PushRequest) -> coven_group::Result<PushResponse> {
        panic!("a refused sync pushed {request:?}");
    }
}

/// A listener that must never hear anything from a refused subscription.
struct Deaf;

impl GroupListener for Deaf {
    fn on_updates(&self, updates: Vec<GroupChange>) -> coven_group::Result<()> {
        panic!("a refused subscription delivered {updates:?}");
    }
}

/// The store every case runs against: two settled groups with timelines (one with a removed
/// member's archived session), a `busy` group whose turn is running, and familiars of three
/// harness kinds.
struct Fixture {
    store: FileStore,
    pair: GroupConversation,
    ctx: Ctx,
}

/// What the calls refer to.
struct Ctx {
    pair: String,
    solo: String,
    busy: String,
    ada_session: String,
    running_session: String,
    unknown_group: String,
    unknown_session: String,
    unknown_turn: String,
    missing_dir: String,
    not_a_dir: String,
    outside_link: String,
}

fn fixture() -> Fixture {
    let store = FileStore::new();
    let coven = &store.coven;
    let (started, runs) = crossbeam_channel::unbounded();
    coven
        .register_host_harness("waiting", Arc::new(Waiting { started }))
        .unwrap();
    register(coven, &[("ada", "Ada"), ("bo", "Bo"), ("cara", "Cara")]);
    coven
        .register_familiar(Familiar::new("cl", "Claude", "claude"))
        .unwrap();
    for id in ["wait1", "wait2"] {
        coven
            .register_familiar(Familiar::new(id, id, "waiting"))
            .unwrap();
    }
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
    let busy = coven
        .create_group(None, ids(&["wait1", "wait2"]), None)
        .unwrap();
    coven.send(&busy.id, "wait".into(), None).unwrap();
    // Both runs have started: nothing more is written until they are cancelled.
    for _ in 0..2 {
        runs.recv_timeout(Duration::from_secs(30))
            .expect("the waiting runs start");
    }
    let outside = store.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let outside_link = store.dir.path().join("link-to-nowhere");
    std::os::unix::fs::symlink(store.dir.path().join("gone"), &outside_link).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let ctx = Ctx {
        pair: pair.id.clone(),
        solo: solo.id.clone(),
        busy: busy.id.clone(),
        ada_session: pair.session_of("ada").unwrap().to_owned(),
        running_session: busy.session_of("wait1").unwrap().to_owned(),
        unknown_group: fresh_session_id(4242),
        unknown_session: fresh_session_id(4343),
        unknown_turn: fresh_session_id(4444),
        missing_dir: path(&store.dir.path().join("missing")),
        not_a_dir: path(&store.path),
        outside_link: path(&outside_link),
    };
    Fixture { store, pair, ctx }
}

/// The latest seq and rev of a group that takes no writes while the cases run.
fn head(coven: &Coven, group: &str) -> Result<(u64, u64), Error> {
    let snapshot = coven.get_group(group)?;
    Ok((snapshot.events.len() as u64, snapshot.rev))
}

fn long(n: usize) -> String {
    "x".repeat(n)
}

/// The refused calls of each operation, one function per operation of `Coven`: `refusals!`
/// names them, so an operation spelled wrong does not compile, and one left out is dead code.
mod cases {
    use super::*;

    pub fn register_familiar(_ctx: &Ctx) -> Vec<Case> {
        vec![
            case(
                "registered again with another harness",
                Expect::Conflict,
                |c, _| c.register_familiar(Familiar::new("ada", "Ada", "claude")),
            ),
            case(
                "registered again with another harness (2)",
                Expect::Conflict,
                |c, _| c.register_familiar(Familiar::new("cl", "Claude", "scripted")),
            ),
            case(
                "unknown harness kind",
                Expect::Invalid(
                    "familiar.harness",
                    BUILTIN_HARNESSES
                        .iter()
                        .map(|k| (*k).to_owned())
                        .chain(["gpt".to_owned(), "waiting".to_owned()])
                        .collect(),
                ),
                |c, _| c.register_familiar(Familiar::new("zed", "Zed", "gpt")),
            ),
            case("malformed id", invalid("familiar.id"), |c, _| {
                c.register_familiar(Familiar::new("zed zed", "Zed", "scripted"))
            }),
            case("empty id", invalid("familiar.id"), |c, _| {
                c.register_familiar(Familiar::new("", "Zed", "scripted"))
            }),
            case("id over the limit", invalid("familiar.id"), |c, _| {
                c.register_familiar(Familiar::new(
                    long(MAX_FAMILIAR_ID_LEN + 1),
                    "Zed",
                    "scripted",
                ))
            }),
            case(
                "blank display name",
                invalid("familiar.display_name"),
                |c, _| c.register_familiar(Familiar::new("zed", " ", "scripted")),
            ),
            case(
                "NUL in display name",
                invalid_saying("familiar.display_name", "NUL"),
                |c, _| c.register_familiar(Familiar::new("zed", "Z\0d", "scripted")),
            ),
            case(
                "display name over the limit",
                invalid("familiar.display_name"),
                |c, _| {
                    c.register_familiar(Familiar::new("zed", long(MAX_NAME_CHARS + 1), "scripted"))
                },
            ),
            case(
                "preamble over the limit",
                invalid("familiar.preamble"),
                |c, _| {
                    let mut familiar = Familiar::new("zed", "Zed", "scripted");
                    familiar.preamble = Some(long(MAX_PREAMBLE_BYTES + 1));
                    c.register_familiar(familiar)
                },
            ),
            case("NUL in the model", invalid("familiar.model"), |c, _| {
                let mut familiar = Familiar::new("zed", "Zed", "scripted");
                familiar.model = Some("a\0b".into());
                c.register_familiar(familiar)
            }),
            case("empty cwd", invalid("familiar.cwd"), |c, _| {
                let mut familiar = Familiar::new("zed", "Zed", "claude");
                familiar.cwd = Some(String::new());
                c.register_familiar(familiar)
            }),
            case("NUL in cwd", invalid("familiar.cwd"), |c, _| {
                let mut familiar = Familiar::new("zed", "Zed", "claude");
                familiar.cwd = Some("sub\0dir".into());
                c.register_familiar(familiar)
            }),
            case(
                "command without a program",
                invalid("familiar.argv"),
                |c, _| c.register_familiar(Familiar::new("zed", "Zed", "command")),
            ),
            case(
                "program not allowlisted",
                invalid("familiar.argv"),
                |c, _| {
                    let mut familiar = Familiar::new("zed", "Zed", "command");
                    familiar.argv = vec!["sh".into(), "-c".into(), "true".into()];
                    c.register_familiar(familiar)
                },
            ),
            case("NUL in argv", invalid("familiar.argv"), |c, _| {
                let mut familiar = Familiar::new("zed", "Zed", "command");
                familiar.argv = vec!["echo".into(), "a\0b".into()];
                c.register_familiar(familiar)
            }),
            case(
                "argv for a non-command harness",
                invalid("familiar.argv"),
                |c, _| {
                    let mut familiar = Familiar::new("zed", "Zed", "scripted");
                    familiar.argv = vec!["echo".into()];
                    c.register_familiar(familiar)
                },
            ),
        ]
    }

    pub fn get_familiar(_ctx: &Ctx) -> Vec<Case> {
        vec![
            case("unknown", not_found("familiar", "ghost"), |c, _| {
                c.get_familiar("ghost")
            }),
            case("malformed id", invalid("familiar_id"), |c, _| {
                c.get_familiar("no/slashes")
            }),
            case("empty id", invalid("familiar_id"), |c, _| {
                c.get_familiar("")
            }),
        ]
    }

    pub fn create_group(_ctx: &Ctx) -> Vec<Case> {
        vec![
            case("no members", invalid("member_ids"), |c, _| {
                c.create_group(None, vec![], None)
            }),
            case(
                "unknown familiar",
                not_found("familiar", "ghost"),
                |c, _| c.create_group(None, ids(&["ada", "ghost"]), None),
            ),
            case(
                "duplicate member",
                invalid_saying("member_ids", "twice"),
                |c, _| c.create_group(None, ids(&["ada", "bo", "ada"]), None),
            ),
            case(
                "malformed familiar id in members",
                invalid("member_ids"),
                |c, _| c.create_group(None, ids(&["ada", "bo bo"]), None),
            ),
            case(
                "too many members",
                invalid_saying("member_ids", MAX_MEMBERS),
                move |c, _| c.create_group(None, too_many_members(), None),
            ),
            case("title over the limit", invalid("title"), |c, _| {
                c.create_group(Some("é".repeat(MAX_TITLE_CHARS + 1)), ids(&["ada"]), None)
            }),
            case("empty title", invalid("title"), |c, _| {
                c.create_group(Some(String::new()), ids(&["ada"]), None)
            }),
            case("whitespace title", invalid("title"), |c, _| {
                c.create_group(Some(" \t ".into()), ids(&["ada"]), None)
            }),
            case("NUL in title", invalid_saying("title", "NUL"), |c, _| {
                c.create_group(Some("a\0b".into()), ids(&["ada"]), None)
            }),
            case("control character in title", invalid("title"), |c, _| {
                c.create_group(Some("a\nb".into()), ids(&["ada"]), None)
            }),
            case("missing project root", invalid("project_root"), |c, x| {
                c.create_group(None, ids(&["ada"]), Some(x.missing_dir.clone()))
            }),
            case(
                "project root is a file",
                invalid_saying("project_root", "not a directory"),
                |c, x| c.create_group(None, ids(&["ada"]), Some(x.not_a_dir.clone())),
            ),
            case(
                "project root is a dangling symlink",
                invalid("project_root"),
                |c, x| c.create_group(None, ids(&["ada"]), Some(x.outside_link.clone())),
            ),
            case("empty project root", invalid("project_root"), |c, _| {
                c.create_group(None, ids(&["ada"]), Some(String::new()))
            }),
            case(
                "NUL in project root",
                invalid_saying("project_root", "NUL"),
                |c, _| c.create_group(None, ids(&["ada"]), Some("/tmp\0/x".into())),
            ),
        ]
    }

    pub fn get_group(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed group id", invalid("group_id"), |c, _| {
                c.get_group("not-a-uuid")
            }),
            case("empty group id", invalid("group_id"), |c, _| {
                c.get_group("")
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.get_group(&x.unknown_group),
            ),
        ]
    }

    pub fn events_since(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("limit 0", invalid("limit"), |c, x| {
                c.events_since(&x.pair, 0, 0)
            }),
            case(
                "limit over MAX_PAGE",
                invalid_saying("limit", MAX_PAGE),
                |c, x| c.events_since(&x.pair, 0, MAX_PAGE + 1),
            ),
            case("after_seq beyond head", invalid("after_seq"), |c, x| {
                c.events_since(&x.solo, head(c, &x.solo)?.0 + 1, 10)
            }),
            case("after_seq u64::MAX", invalid("after_seq"), |c, x| {
                c.events_since(&x.pair, u64::MAX, 10)
            }),
            case("malformed group id", invalid("group_id"), |c, _| {
                c.events_since("x", 0, 10)
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.events_since(&x.unknown_group, 0, 10),
            ),
        ]
    }

    pub fn get_group_tail(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("limit 0", invalid("limit"), |c, x| {
                c.get_group_tail(&x.pair, 0)
            }),
            case(
                "limit over MAX_PAGE",
                invalid_saying("limit", MAX_PAGE),
                |c, x| c.get_group_tail(&x.pair, MAX_PAGE + 1),
            ),
            case("malformed group id", invalid("group_id"), |c, _| {
                c.get_group_tail("x", 10)
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.get_group_tail(&x.unknown_group, 10),
            ),
        ]
    }

    pub fn events_before(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("limit 0", invalid("limit"), |c, x| {
                c.events_before(&x.pair, 1, 0)
            }),
            case(
                "limit over MAX_PAGE",
                invalid_saying("limit", MAX_PAGE),
                |c, x| c.events_before(&x.pair, 1, MAX_PAGE + 1),
            ),
            case(
                "before_seq beyond the next seq",
                invalid("before_seq"),
                |c, x| c.events_before(&x.solo, head(c, &x.solo)?.0 + 2, 10),
            ),
            case("before_seq u64::MAX", invalid("before_seq"), |c, x| {
                c.events_before(&x.pair, u64::MAX, 10)
            }),
            case("malformed group id", invalid("group_id"), |c, _| {
                c.events_before("", 1, 10)
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.events_before(&x.unknown_group, 1, 10),
            ),
        ]
    }

    pub fn changes_since(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("limit 0", invalid("limit"), |c, x| {
                c.changes_since(&x.pair, 0, 0)
            }),
            case("limit over MAX_PAGE", invalid("limit"), |c, x| {
                c.changes_since(&x.pair, 0, MAX_PAGE + 1)
            }),
            case("after_rev beyond head", invalid("after_rev"), |c, x| {
                c.changes_since(&x.solo, head(c, &x.solo)?.1 + 1, 10)
            }),
            case("after_rev u64::MAX", invalid("after_rev"), |c, x| {
                c.changes_since(&x.pair, u64::MAX, 10)
            }),
            case("malformed group id", invalid("group_id"), |c, _| {
                c.changes_since("x", 0, 10)
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.changes_since(&x.unknown_group, 0, 10),
            ),
        ]
    }

    pub fn rename_group(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("title over the limit", invalid("title"), |c, x| {
                c.rename_group(&x.pair, "é".repeat(MAX_TITLE_CHARS + 1))
            }),
            case("NUL in title", invalid_saying("title", "NUL"), |c, x| {
                c.rename_group(&x.pair, "new\0name".into())
            }),
            case("empty title", invalid("title"), |c, x| {
                c.rename_group(&x.pair, String::new())
            }),
            case("control character in title", invalid("title"), |c, x| {
                c.rename_group(&x.pair, "tab\there".into())
            }),
            case("malformed group id", invalid("group_id"), |c, _| {
                c.rename_group("1234", "x".into())
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.rename_group(&x.unknown_group, "x".into()),
            ),
        ]
    }

    pub fn add_member(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed group id", invalid("group_id"), |c, _| {
                c.add_member("zzzz", "ada")
            }),
            case("malformed familiar id", invalid("familiar_id"), |c, x| {
                c.add_member(&x.pair, "no/slashes")
            }),
            case(
                "unknown familiar",
                not_found("familiar", "ghost"),
                |c, x| c.add_member(&x.pair, "ghost"),
            ),
            case("already a member", Expect::Conflict, |c, x| {
                c.add_member(&x.pair, "bo")
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.add_member(&x.unknown_group, "ada"),
            ),
        ]
    }

    pub fn remove_member(ctx: &Ctx) -> Vec<Case> {
        let mut v = vec![
            case("not a member", not_found("member", "cara"), |c, x| {
                c.remove_member(&x.pair, "cara")
            }),
            case("last member", Expect::Conflict, |c, x| {
                c.remove_member(&x.solo, "ada")
            }),
            case("member still replying", Expect::Conflict, |c, x| {
                c.remove_member(&x.busy, "wait1")
            }),
            case("malformed group id", invalid("group_id"), |c, _| {
                c.remove_member("g", "ada")
            }),
            case("malformed familiar id", invalid("familiar_id"), |c, x| {
                c.remove_member(&x.pair, "")
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.remove_member(&x.unknown_group, "ada"),
            ),
        ];
        for (n, name) in ["ghost0", "ghost1", "ghost2"].into_iter().enumerate() {
            v.push(case(
                "repeated writer refusal",
                not_found("member", name),
                move |c, x| c.remove_member(&x.pair, &format!("ghost{n}")),
            ));
        }
        v
    }

    pub fn delete_group(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed group id", invalid("group_id"), |c, _| {
                c.delete_group("{}")
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.delete_group(&x.unknown_group),
            ),
        ]
    }

    pub fn append_user_message(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("empty text", invalid("text"), |c, x| {
                c.append_user_message(&x.pair, String::new(), None)
            }),
            case("whitespace-only text", invalid("text"), |c, x| {
                c.append_user_message(&x.pair, " \t\r\n ".into(), None)
            }),
            case(
                "text over MAX_TEXT_BYTES",
                invalid_saying("text", MAX_TEXT_BYTES),
                |c, x| c.append_user_message(&x.pair, long(MAX_TEXT_BYTES + 1), None),
            ),
            case("NUL in text", invalid_saying("text", "NUL"), |c, x| {
                c.append_user_message(&x.pair, "hi\0there".into(), None)
            }),
            case("author over the limit", invalid("author"), |c, x| {
                c.append_user_message(&x.pair, "hi".into(), Some(long(MAX_NAME_CHARS + 1)))
            }),
            case("blank author", invalid("author"), |c, x| {
                c.append_user_message(&x.pair, "hi".into(), Some("  ".into()))
            }),
            case("malformed group id", invalid("group_id"), |c, _| {
                c.append_user_message("not-a-uuid", "hi".into(), None)
            }),
            case("empty group id", invalid("group_id"), |c, _| {
                c.append_user_message("", "hi".into(), None)
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.append_user_message(&x.unknown_group, "hi".into(), None),
            ),
        ]
    }

    pub fn adopt_group(_ctx: &Ctx) -> Vec<Case> {
        vec![
            case("no members", invalid("members"), |c, _| {
                c.adopt_group(None, vec![])
            }),
            case("malformed session id", invalid("session_id"), |c, _| {
                c.adopt_group(None, vec![adopted("ada", "nope", vec![user("q", at(0))])])
            }),
            case("existing session id", Expect::Conflict, |c, x| {
                c.adopt_group(
                    None,
                    vec![
                        adopted("bo", &fresh_session_id(1), vec![user("q", at(0))]),
                        adopted("ada", &x.ada_session, vec![user("q", at(0))]),
                    ],
                )
            }),
            case(
                "one session for two members",
                invalid("session_id"),
                |c, _| {
                    let session = fresh_session_id(9);
                    c.adopt_group(
                        None,
                        vec![
                            adopted("ada", &session, vec![]),
                            adopted("bo", &session, vec![]),
                        ],
                    )
                },
            ),
            case(
                "unknown familiar",
                not_found("familiar", "ghost"),
                |c, _| c.adopt_group(None, vec![adopted("ghost", &fresh_session_id(2), vec![])]),
            ),
            case("duplicate familiar", invalid("members"), |c, _| {
                c.adopt_group(
                    None,
                    vec![
                        adopted("ada", &fresh_session_id(3), vec![]),
                        adopted("ada", &fresh_session_id(4), vec![]),
                    ],
                )
            }),
            case("empty history text", invalid("history.text"), |c, _| {
                c.adopt_group(
                    None,
                    vec![adopted("ada", &fresh_session_id(5), vec![user(" ", at(0))])],
                )
            }),
            case("NUL in history text", invalid("history.text"), |c, _| {
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
                "history text over MAX_TEXT_BYTES",
                invalid("history.text"),
                |c, _| {
                    let message = user(&long(MAX_TEXT_BYTES + 1), at(0));
                    c.adopt_group(
                        None,
                        vec![adopted("ada", &fresh_session_id(10), vec![message])],
                    )
                },
            ),
            case(
                "familiar message with an author",
                invalid("history.author"),
                |c, _| {
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
            case("title over the limit", invalid("title"), |c, _| {
                c.adopt_group(
                    Some("é".repeat(MAX_TITLE_CHARS + 1)),
                    vec![adopted("ada", &fresh_session_id(8), vec![])],
                )
            }),
        ]
    }

    pub fn get_session(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed session id", invalid("session_id"), |c, _| {
                c.get_session("not-a-session")
            }),
            case(
                "unknown session",
                not_found("session", &ctx.unknown_session),
                |c, x| c.get_session(&x.unknown_session),
            ),
        ]
    }

    pub fn sessions_of(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed group id", invalid("group_id"), |c, _| {
                c.sessions_of("nope")
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.sessions_of(&x.unknown_group),
            ),
        ]
    }

    pub fn archive_session(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed session id", invalid("session_id"), |c, _| {
                c.archive_session("")
            }),
            case(
                "unknown session",
                not_found("session", &ctx.unknown_session),
                |c, x| c.archive_session(&x.unknown_session),
            ),
        ]
    }

    pub fn summon_session(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed session id", invalid("session_id"), |c, _| {
                c.summon_session("0")
            }),
            case(
                "unknown session",
                not_found("session", &ctx.unknown_session),
                |c, x| c.summon_session(&x.unknown_session),
            ),
        ]
    }

    pub fn sacrifice_session(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed session id", invalid("session_id"), |c, _| {
                c.sacrifice_session("g-h-i")
            }),
            case(
                "unknown session",
                not_found("session", &ctx.unknown_session),
                |c, x| c.sacrifice_session(&x.unknown_session),
            ),
            case("current member's session", Expect::Conflict, |c, x| {
                c.sacrifice_session(&x.ada_session)
            }),
            case("running session", Expect::Conflict, |c, x| {
                c.sacrifice_session(&x.running_session)
            }),
        ]
    }

    pub fn send(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed group id", invalid("group_id"), |c, _| {
                c.send("not-a-uuid", "hi".into(), None)
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.send(&x.unknown_group, "hi".into(), None),
            ),
            case("empty text", invalid("text"), |c, x| {
                c.send(&x.pair, String::new(), None)
            }),
            case("text over MAX_TEXT_BYTES", invalid("text"), |c, x| {
                c.send(&x.pair, long(MAX_TEXT_BYTES + 1), None)
            }),
            case("NUL in text", invalid_saying("text", "NUL"), |c, x| {
                c.send(&x.pair, "a\0b".into(), None)
            }),
            case("control character in author", invalid("author"), |c, x| {
                c.send(&x.pair, "hi".into(), Some("Sam\u{7}".into()))
            }),
            case("a turn is running", Expect::Conflict, |c, x| {
                c.send(&x.busy, "again".into(), None)
            }),
        ]
    }

    pub fn wait_turn(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed turn id", invalid("turn_id"), |c, _| {
                c.wait_turn("turn-1", Duration::ZERO)
            }),
            case(
                "unknown turn",
                not_found("turn", &ctx.unknown_turn),
                |c, x| c.wait_turn(&x.unknown_turn, Duration::ZERO),
            ),
        ]
    }

    pub fn cancel_turn(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed group id", invalid("group_id"), |c, _| {
                c.cancel_turn("")
            }),
            case(
                "no running turn",
                not_found("running turn in group", &ctx.pair),
                |c, x| c.cancel_turn(&x.pair),
            ),
            case(
                "unknown group",
                not_found("running turn in group", &ctx.unknown_group),
                |c, x| c.cancel_turn(&x.unknown_group),
            ),
        ]
    }

    pub fn register_host_harness(_ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed name", invalid("name"), |c, _| {
                c.register_host_harness("my harness", Arc::new(Waiting { started: never() }))
            }),
            case("empty name", invalid("name"), |c, _| {
                c.register_host_harness("", Arc::new(Waiting { started: never() }))
            }),
            case("a built-in kind", Expect::Conflict, |c, _| {
                c.register_host_harness("claude", Arc::new(Waiting { started: never() }))
            }),
        ]
    }

    pub fn subscribe(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed group id", invalid("group_id"), |c, _| {
                c.subscribe("nope", 0, Arc::new(Deaf))
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.subscribe(&x.unknown_group, 0, Arc::new(Deaf)),
            ),
            case("after_rev beyond head", invalid("after_rev"), |c, x| {
                c.subscribe(&x.solo, head(c, &x.solo)?.1 + 1, Arc::new(Deaf))
            }),
        ]
    }

    pub fn wait_for_changes(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed group id", invalid("group_id"), |c, _| {
                c.wait_for_changes("nope", 0, 10, Duration::ZERO)
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.wait_for_changes(&x.unknown_group, 0, 10, Duration::ZERO),
            ),
            case("limit 0", invalid("limit"), |c, x| {
                c.wait_for_changes(&x.pair, 0, 0, Duration::ZERO)
            }),
            case("after_rev beyond head", invalid("after_rev"), |c, x| {
                c.wait_for_changes(&x.solo, head(c, &x.solo)?.1 + 1, 10, Duration::from_secs(5))
            }),
        ]
    }

    pub fn set_cursor(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed group id", invalid("group_id"), |c, _| {
                c.set_cursor("nope", "phone", 0)
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.set_cursor(&x.unknown_group, "phone", 0),
            ),
            case("empty consumer", invalid("consumer"), |c, x| {
                c.set_cursor(&x.pair, "", 0)
            }),
            case("consumer over the limit", invalid("consumer"), |c, x| {
                c.set_cursor(&x.pair, &long(MAX_CONSUMER_LEN + 1), 0)
            }),
            case(
                "control character in consumer",
                invalid("consumer"),
                |c, x| c.set_cursor(&x.pair, "pho\nne", 0),
            ),
            case(
                "rev beyond head",
                invalid_saying("rev", "beyond"),
                |c, x| c.set_cursor(&x.solo, "phone", head(c, &x.solo)?.1 + 1),
            ),
        ]
    }

    pub fn get_cursor(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed group id", invalid("group_id"), |c, _| {
                c.get_cursor("nope", "phone")
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.get_cursor(&x.unknown_group, "phone"),
            ),
            case("empty consumer", invalid("consumer"), |c, x| {
                c.get_cursor(&x.pair, "")
            }),
            case("NUL in consumer", invalid("consumer"), |c, x| {
                c.get_cursor(&x.pair, "a\0b")
            }),
        ]
    }

    /// More members than a group may have.
    fn too_many_members() -> Vec<String> {
        (0..=MAX_MEMBERS).map(|i| format!("f{i}")).collect()
    }

    pub fn home_of(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed group id", invalid("group_id"), |c, _| {
                c.home_of("g")
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| c.home_of(&x.unknown_group),
            ),
        ]
    }

    pub fn enqueue(ctx: &Ctx) -> Vec<Case> {
        vec![
            case(
                "a group creation (it names its home)",
                invalid("mutation"),
                |c, x| {
                    c.enqueue(Mutation::CreateGroup {
                        group_id: x.unknown_group.clone(),
                        title: None,
                        member_ids: ids(&["ada"]),
                    })
                },
            ),
            case("malformed group id", invalid("group_id"), |c, _| {
                c.enqueue(Mutation::DeleteGroup {
                    group_id: "nope".into(),
                })
            }),
            case("empty text", invalid("text"), |c, x| {
                c.enqueue(Mutation::Send {
                    group_id: x.pair.clone(),
                    text: String::new(),
                    author: None,
                })
            }),
            case("title over the limit", invalid("title"), |c, x| {
                c.enqueue(Mutation::RenameGroup {
                    group_id: x.pair.clone(),
                    title: long(MAX_TITLE_CHARS + 1),
                })
            }),
            case("a group homed in this store", Expect::Conflict, |c, x| {
                c.enqueue(Mutation::AppendUserMessage {
                    group_id: x.pair.clone(),
                    text: "hi".into(),
                    author: None,
                })
            }),
            case(
                "unknown group",
                not_found("group", &ctx.unknown_group),
                |c, x| {
                    c.enqueue(Mutation::CancelTurn {
                        group_id: x.unknown_group.clone(),
                    })
                },
            ),
        ]
    }

    pub fn create_group_at(_ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed home", invalid("home_store_id"), |c, _| {
                c.create_group_at("home", None, ids(&["ada"]))
            }),
            case(
                "this store as the home",
                invalid("home_store_id"),
                |c, _| c.create_group_at(&c.store_id(), None, ids(&["ada"])),
            ),
            case("no members", invalid("member_ids"), |c, x| {
                c.create_group_at(&x.unknown_group, None, vec![])
            }),
            case(
                "unknown familiar",
                not_found("familiar", "nobody"),
                |c, x| c.create_group_at(&x.unknown_group, None, ids(&["nobody"])),
            ),
            case("title over the limit", invalid("title"), |c, x| {
                c.create_group_at(
                    &x.unknown_group,
                    Some(long(MAX_TITLE_CHARS + 1)),
                    ids(&["ada"]),
                )
            }),
            case(
                "a familiar listed twice",
                invalid_saying("member_ids", "twice"),
                |c, x| c.create_group_at(&x.unknown_group, None, ids(&["ada", "ada"])),
            ),
        ]
    }

    pub fn retry_outbox(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed id", invalid("txn_id"), |c, _| {
                c.retry_outbox("t")
            }),
            case(
                "unknown entry",
                not_found("outbox entry", &ctx.unknown_turn),
                |c, x| c.retry_outbox(&x.unknown_turn),
            ),
        ]
    }

    pub fn discard_outbox(ctx: &Ctx) -> Vec<Case> {
        vec![
            case("malformed id", invalid("txn_id"), |c, _| {
                c.discard_outbox("")
            }),
            case(
                "unknown entry",
                not_found("outbox entry", &ctx.unknown_turn),
                |c, x| c.discard_outbox(&x.unknown_turn),
            ),
        ]
    }

    pub fn pull_request(_ctx: &Ctx) -> Vec<Case> {
        vec![case("malformed home", invalid("home_store_id"), |c, _| {
            c.pull_request(Some("home".into()))
        })]
    }

    pub fn push_request(_ctx: &Ctx) -> Vec<Case> {
        vec![case("malformed home", invalid("home_store_id"), |c, _| {
            c.push_request("home")
        })]
    }

    /// A pull answer from another store (`home`) with nothing in it.
    fn answer(home: &str) -> PullResponse {
        PullResponse {
            version: SYNC_PROTOCOL_VERSION,
            home_store_id: home.to_owned(),
            groups: vec![],
            familiars: vec![],
            results: vec![],
            more: false,
        }
    }

    pub fn apply_pull(ctx: &Ctx) -> Vec<Case> {
        let home = ctx.unknown_session.clone();
        vec![
            case("another protocol version", invalid("version"), {
                let home = home.clone();
                move |c, _| {
                    c.apply_pull(PullResponse {
                        version: 2,
                        ..answer(&home)
                    })
                }
            }),
            case("from this store", invalid("home_store_id"), |c, _| {
                c.apply_pull(answer(&c.store_id()))
            }),
            case("malformed group id", invalid("group_id"), {
                let home = home.clone();
                move |c, _| {
                    c.apply_pull(PullResponse {
                        groups: vec![GroupPull::Deleted {
                            group_id: "g".into(),
                        }],
                        ..answer(&home)
                    })
                }
            }),
            case("a malformed familiar", invalid("familiar.id"), {
                let home = home.clone();
                move |c, _| {
                    c.apply_pull(PullResponse {
                        familiars: vec![Familiar::new("a b", "A", "scripted")],
                        ..answer(&home)
                    })
                }
            }),
            case(
                "a group homed in this store",
                Expect::Conflict,
                move |c, x| {
                    c.apply_pull(PullResponse {
                        groups: vec![GroupPull::Deleted {
                            group_id: x.pair.clone(),
                        }],
                        ..answer(&home)
                    })
                },
            ),
        ]
    }

    pub fn apply_push(ctx: &Ctx) -> Vec<Case> {
        let home = ctx.unknown_session.clone();
        vec![
            case("another protocol version", invalid("version"), {
                let home = home.clone();
                move |c, _| {
                    c.apply_push(PushResponse {
                        version: 0,
                        home_store_id: home.clone(),
                        results: vec![],
                    })
                }
            }),
            case("from this store", invalid("home_store_id"), |c, _| {
                c.apply_push(PushResponse {
                    version: SYNC_PROTOCOL_VERSION,
                    home_store_id: c.store_id(),
                    results: vec![],
                })
            }),
        ]
    }

    fn pull_of(replica: &str, home: Option<String>) -> PullRequest {
        PullRequest {
            version: SYNC_PROTOCOL_VERSION,
            replica_store_id: replica.to_owned(),
            home_store_id: home,
            cursors: vec![],
            acked_through: 0,
        }
    }

    pub fn serve_pull(ctx: &Ctx) -> Vec<Case> {
        let replica = ctx.unknown_session.clone();
        vec![
            case("another protocol version", invalid("version"), {
                let replica = replica.clone();
                move |c, _| {
                    c.serve_pull(PullRequest {
                        version: 9,
                        ..pull_of(&replica, None)
                    })
                }
            }),
            case("from this store", invalid("replica_store_id"), |c, _| {
                c.serve_pull(pull_of(&c.store_id(), None))
            }),
            case("to another home", invalid("home_store_id"), {
                let replica = replica.clone();
                move |c, x| c.serve_pull(pull_of(&replica, Some(x.unknown_group.clone())))
            }),
            case("a malformed cursor", invalid("group_id"), move |c, _| {
                c.serve_pull(PullRequest {
                    cursors: vec![SyncCursor {
                        group_id: "g".into(),
                        rev: 1,
                    }],
                    ..pull_of(&replica, None)
                })
            }),
        ]
    }

    fn push_of(c: &Coven, replica: &str, mutations: Vec<PushedMutation>) -> PushRequest {
        PushRequest {
            version: SYNC_PROTOCOL_VERSION,
            replica_store_id: replica.to_owned(),
            home_store_id: c.store_id(),
            mutations,
            acked_through: 0,
        }
    }

    pub fn serve_push(ctx: &Ctx) -> Vec<Case> {
        let replica = ctx.unknown_session.clone();
        let delete = |txn: &str, order| PushedMutation {
            order,
            txn_id: txn.to_owned(),
            attempt: 0,
            mutation: Mutation::DeleteGroup {
                group_id: fresh_session_id(1),
            },
        };
        vec![
            case("another protocol version", invalid("version"), {
                let replica = replica.clone();
                move |c, _| {
                    c.serve_push(PushRequest {
                        version: 0,
                        ..push_of(c, &replica, vec![])
                    })
                }
            }),
            case("from this store", invalid("replica_store_id"), |c, _| {
                c.serve_push(push_of(c, &c.store_id(), vec![]))
            }),
            case("to another home", invalid("home_store_id"), {
                let replica = replica.clone();
                move |c, x| {
                    c.serve_push(PushRequest {
                        home_store_id: x.unknown_group.clone(),
                        ..push_of(c, &replica, vec![])
                    })
                }
            }),
            case("a malformed transaction id", invalid("txn_id"), {
                let replica = replica.clone();
                move |c, _| c.serve_push(push_of(c, &replica, vec![delete("t", 1)]))
            }),
            case("order 0", invalid("order"), move |c, x| {
                c.serve_push(push_of(c, &replica, vec![delete(&x.unknown_turn, 0)]))
            }),
        ]
    }

    pub fn sync(_ctx: &Ctx) -> Vec<Case> {
        vec![case("malformed home", invalid("home_store_id"), |c, _| {
            c.sync(Arc::new(Unreachable), Some("home".into()))
        })]
    }
}

/// A sender nobody listens to, for harnesses that are refused before they run.
fn never() -> Sender<()> {
    crossbeam_channel::unbounded().0
}

#[track_caller]
fn check(op: &str, name: &str, result: Result<(), Error>, expect: &Expect) {
    match (expect, result) {
        (Expect::Invalid(field, words), Err(Error::InvalidInput { field: got, reason })) => {
            assert_eq!(got, *field, "{op}: {name}: wrong field (reason: {reason})");
            for word in words {
                assert!(
                    reason.contains(word.as_str()),
                    "{op}: {name}: {reason:?} lacks {word:?}"
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
                "{op}: {name}"
            );
        }
        (Expect::Conflict, Err(Error::Conflict { .. })) => {}
        (_, other) => panic!("{op}: {name}: unexpected outcome {other:?}"),
    }
}

/// Runs the refused calls `cases_of` gives for `op` against a fresh store: each returns its
/// precise error and the store stays exactly as it was, as the API reads it and byte for byte in
/// the file.
fn refuses(op: &str, cases_of: fn(&Ctx) -> Vec<Case>) {
    let fx = fixture();
    let cases = cases_of(&fx.ctx);
    assert!(!cases.is_empty(), "no refused call of {op}");
    let (initial, bytes) = fx.store.dump();
    for case in &cases {
        check(
            op,
            case.name,
            (case.call)(&fx.store.coven, &fx.ctx),
            &case.expect,
        );
        let (after, after_bytes) = fx.store.dump();
        assert!(
            after == initial,
            "{op}: {}: the refused call changed what the store returns",
            case.name
        );
        assert!(
            after_bytes == bytes,
            "{op}: {}: the refused call changed the bytes of the store file",
            case.name
        );
    }
}

macro_rules! refusals {
    ($($op:ident),* $(,)?) => {
        /// One test per operation of `Coven` that takes arguments, named after it.
        mod refused {
            $(#[test]
            fn $op() {
                super::refuses(stringify!($op), super::cases::$op);
            })*
        }
        /// The operations `refused` tests.
        const TESTED: &[&str] = &[$(stringify!($op)),*];
        /// Every operation's refused calls, each with the name of its operation.
        fn all_cases(ctx: &Ctx) -> Vec<(&'static str, Case)> {
            let mut all = Vec::new();
            $(all.extend(cases::$op(ctx).into_iter().map(|case| (stringify!($op), case)));)*
            all
        }
    };
}

refusals!(
    register_familiar,
    get_familiar,
    create_group,
    get_group,
    events_since,
    get_group_tail,
    events_before,
    changes_since,
    rename_group,
    add_member,
    remove_member,
    delete_group,
    append_user_message,
    adopt_group,
    get_session,
    sessions_of,
    archive_session,
    summon_session,
    sacrifice_session,
    send,
    wait_turn,
    cancel_turn,
    register_host_harness,
    subscribe,
    wait_for_changes,
    set_cursor,
    get_cursor,
    home_of,
    enqueue,
    create_group_at,
    retry_outbox,
    discard_outbox,
    pull_request,
    push_request,
    apply_pull,
    apply_push,
    serve_pull,
    serve_push,
    sync,
);

/// Exported operations without arguments: nothing to refuse but a closed store.
const NO_ARGUMENTS: &[&str] = &[
    "recovery",
    "close",
    "list_familiars",
    "list_groups",
    "check",
    "outbox",
    "store_id",
];
/// The exported constructors, refused by `open_refusals_leave_no_file_behind_and_no_byte_changed`.
const CONSTRUCTORS: &[&str] = &["open", "open_in_memory"];

/// The names of `Coven`'s exported operations, as the bindings call them.
fn exported_operations() -> BTreeSet<String> {
    common::surface::coven_operations()
}

#[test]
fn every_exported_operation_has_refusals() {
    let exported = exported_operations();
    assert!(exported.contains("send") && exported.contains("open_in_memory"));
    let covered: BTreeSet<String> = TESTED
        .iter()
        .chain(NO_ARGUMENTS)
        .chain(CONSTRUCTORS)
        .map(|op| (*op).to_owned())
        .collect();
    let untested: Vec<&String> = exported.difference(&covered).collect();
    assert!(
        untested.is_empty(),
        "exported operations with no bad-input test: {untested:?}"
    );
    let gone: Vec<&String> = covered.difference(&exported).collect();
    assert!(
        gone.is_empty(),
        "tested operations no longer exported: {gone:?}"
    );
}

/// An open's outcome without the store (which has no `Debug`).
fn opened(result: Result<Coven, Error>) -> Result<(), Error> {
    result.map(|_| ())
}

#[test]
fn open_refusals_leave_no_file_behind_and_no_byte_changed() {
    let bad_configs = [
        (
            "config.max_concurrent_runs",
            Config {
                max_concurrent_runs: 0,
                ..Config::default()
            },
        ),
        (
            "config.silence_timeout_ms",
            Config {
                silence_timeout_ms: 0,
                ..Config::default()
            },
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("existing.redb");
    Coven::open(&existing, Config::default()).unwrap().close();
    let bytes = file_bytes(&existing);
    for (field, config) in &bad_configs {
        expect_invalid(opened(Coven::open_in_memory(config.clone())), field);
        let fresh = dir.path().join("fresh.redb");
        expect_invalid(opened(Coven::open(&fresh, config.clone())), field);
        expect_invalid(
            opened(Coven::open_path(
                fresh.to_str().unwrap().to_owned(),
                config.clone(),
            )),
            field,
        );
        assert!(
            !fresh.exists(),
            "a refused open created {}",
            fresh.display()
        );
        expect_invalid(opened(Coven::open(&existing, config.clone())), field);
        assert!(
            file_bytes(&existing) == bytes,
            "a refused open changed the store file"
        );
    }

    // A second open of a file this process has open.
    let open = Coven::open(&existing, Config::default()).unwrap();
    let bytes = file_bytes(&existing);
    expect_conflict(opened(Coven::open(&existing, Config::default())));
    assert!(file_bytes(&existing) == bytes);
    open.close();

    // Not a store: a file of other bytes, and a directory.
    let other = dir.path().join("notes.txt");
    std::fs::write(
        &other,
        "not a store, and it must stay this way\n".repeat(200),
    )
    .unwrap();
    let before = file_bytes(&other);
    assert!(matches!(
        Coven::open(&other, Config::default()),
        Err(Error::Storage { .. })
    ));
    assert!(
        file_bytes(&other) == before,
        "a refused open changed a file that is no store"
    );
    assert!(matches!(
        Coven::open(dir.path(), Config::default()),
        Err(Error::Storage { .. })
    ));

    // A store of a newer schema.
    let newer = dir.path().join("newer.redb");
    Coven::open(&newer, Config::default()).unwrap().close();
    claim_newer_schema(&newer);
    match Coven::open(&newer, Config::default()) {
        Err(Error::Storage { reason }) => assert!(reason.contains("newer"), "{reason}"),
        other => panic!("a newer store was not refused: {:?}", other.map(|_| ())),
    }
    // redb rewrites its own bookkeeping whenever it opens and closes a file, so the bytes of a
    // store that had to be opened to be refused are not comparable; what it holds is.
    let db = redb::Database::open(&newer).unwrap();
    let read = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = read
        .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
        .unwrap();
    assert_eq!(meta.get("schema_version").unwrap().unwrap().value(), 1_000);
    assert!(read.list_tables().unwrap().count() > 1);
}

#[test]
fn every_operation_on_a_closed_store_is_closed() {
    let fx = fixture();
    let coven = &fx.store.coven;
    let ctx = &fx.ctx;
    let session = ctx.ada_session.clone();
    coven.close();
    let bytes = file_bytes(&fx.store.path);
    type Op<'a> = (&'a str, Box<dyn Fn() -> Result<(), Error> + 'a>);
    fn op<'a, T>(name: &'a str, call: impl Fn() -> Result<T, Error> + 'a) -> Op<'a> {
        (name, Box::new(move || call().map(|_| ())))
    }
    let pair = &ctx.pair;
    let ops: Vec<Op> = vec![
        op("register_familiar", || {
            coven.register_familiar(Familiar::new("zed", "Zed", "scripted"))
        }),
        op("get_familiar", || coven.get_familiar("ada")),
        op("list_familiars", || coven.list_familiars()),
        op("create_group", || {
            coven.create_group(None, ids(&["ada"]), None)
        }),
        op("list_groups", || coven.list_groups()),
        op("get_group", || coven.get_group(pair)),
        op("events_since", || coven.events_since(pair, 0, 10)),
        op("get_group_tail", || coven.get_group_tail(pair, 10)),
        op("events_before", || coven.events_before(pair, 1, 10)),
        op("changes_since", || coven.changes_since(pair, 0, 10)),
        op("rename_group", || coven.rename_group(pair, "x".into())),
        op("add_member", || coven.add_member(pair, "cara")),
        op("remove_member", || coven.remove_member(pair, "bo")),
        op("delete_group", || coven.delete_group(pair)),
        op("append_user_message", || {
            coven.append_user_message(pair, "hi".into(), None)
        }),
        op("adopt_group", || {
            coven.adopt_group(None, vec![adopted("ada", &fresh_session_id(77), vec![])])
        }),
        op("get_session", || coven.get_session(&session)),
        op("sessions_of", || coven.sessions_of(pair)),
        op("archive_session", || coven.archive_session(&session)),
        op("summon_session", || coven.summon_session(&session)),
        op("sacrifice_session", || coven.sacrifice_session(&session)),
        op("send", || coven.send(pair, "hi".into(), None)),
        op("wait_turn", || {
            coven.wait_turn(&ctx.unknown_turn, Duration::ZERO)
        }),
        op("cancel_turn", || coven.cancel_turn(&ctx.busy)),
        op("register_host_harness", || {
            coven.register_host_harness("later", Arc::new(Waiting { started: never() }))
        }),
        op("subscribe", || coven.subscribe(pair, 0, Arc::new(Deaf))),
        op("wait_for_changes", || {
            coven.wait_for_changes(pair, 0, 10, Duration::ZERO)
        }),
        op("set_cursor", || coven.set_cursor(pair, "phone", 0)),
        op("get_cursor", || coven.get_cursor(pair, "phone")),
        op("check", || coven.check()),
        op("home_of", || coven.home_of(pair)),
        op("enqueue", || {
            coven.enqueue(Mutation::DeleteGroup {
                group_id: pair.clone(),
            })
        }),
        op("create_group_at", || {
            coven.create_group_at(&ctx.unknown_group, None, ids(&["ada"]))
        }),
        op("outbox", || coven.outbox()),
        op("retry_outbox", || coven.retry_outbox(&ctx.unknown_turn)),
        op("discard_outbox", || coven.discard_outbox(&ctx.unknown_turn)),
        op("pull_request", || coven.pull_request(None)),
        op("push_request", || coven.push_request(&ctx.unknown_group)),
        op("apply_pull", || {
            coven.apply_pull(PullResponse {
                version: SYNC_PROTOCOL_VERSION,
                home_store_id: ctx.unknown_group.clone(),
                groups: vec![],
                familiars: vec![],
                results: vec![],
                more: false,
            })
        }),
        op("apply_push", || {
            coven.apply_push(PushResponse {
                version: SYNC_PROTOCOL_VERSION,
                home_store_id: ctx.unknown_group.clone(),
                results: vec![],
            })
        }),
        op("serve_pull", || {
            coven.serve_pull(PullRequest {
                version: SYNC_PROTOCOL_VERSION,
                replica_store_id: ctx.unknown_group.clone(),
                home_store_id: None,
                cursors: vec![],
                acked_through: 0,
            })
        }),
        op("serve_push", || {
            coven.serve_push(PushRequest {
                version: SYNC_PROTOCOL_VERSION,
                replica_store_id: ctx.unknown_group.clone(),
                home_store_id: coven.store_id(),
                mutations: vec![],
                acked_through: 0,
            })
        }),
        op("sync", || coven.sync(Arc::new(Unreachable), None)),
    ];
    for (name, call) in &ops {
        assert_eq!(call(), Err(Error::Closed), "{name} on a closed store");
    }
    let named: BTreeSet<String> = ops.iter().map(|(name, _)| (*name).to_owned()).collect();
    let missing: Vec<String> = exported_operations()
        .into_iter()
        .filter(|name| !named.contains(name) && !CONSTRUCTORS.contains(&name.as_str()))
        .filter(|name| !["recovery", "close", "store_id"].contains(&name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "not tried on a closed store: {missing:?}"
    );
    assert!(file_bytes(&fx.store.path) == bytes);
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
    let cases = all_cases(&fx.ctx);
    let mut rounds = 0;
    while !writer.is_finished() || rounds < 2 {
        for (op, case) in &cases {
            check(op, case.name, (case.call)(&coven, &fx.ctx), &case.expect);
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
