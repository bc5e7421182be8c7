//! Invariant 8 and the store's privacy: harness processes start by argv only (shell syntax in
//! argv or in a message is passed on literally, never interpreted); a new store file is readable
//! by its owner only, whatever the umask; a group's project root is fixed at creation, canonical,
//! and no later call (nor re-pointing a symlink it was given through) widens it; and no
//! credential or environment secret of the host process ends up in the store file.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    all_changes, assert_clean, assert_clean_and_idle, fake_bin, finish_turn, ids, init_path,
    reply_of, GUARD,
};
use coven_group::{Config, Coven, Familiar, GroupUpdate, ReplyErrorKind};

/// A directory tree for project-root tests: `base/project/sub`, `base/outside`,
/// `base/project/escape → base/outside`, and `base/link → base/project`.
struct Tree {
    _dir: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    outside: PathBuf,
    link: PathBuf,
}

impl Tree {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let root = base.join("project");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("escape")).unwrap();
        let link = base.join("link");
        symlink(&root, &link).unwrap();
        Self {
            _dir: dir,
            base,
            root,
            outside,
            link,
        }
    }
}

fn command_familiar(id: &str, argv: &[&str], cwd: Option<&str>) -> Familiar {
    let mut familiar = Familiar::new(id, id, "command");
    familiar.argv = argv.iter().map(|a| (*a).to_owned()).collect();
    familiar.cwd = cwd.map(str::to_owned);
    familiar
}

/// Names of files whose creation would prove a shell ran.
const PWNED: [&str; 5] = ["pwned-1", "pwned-2", "pwned-3", "pwned-4", "pwned-5"];

fn assert_nothing_pwned(dirs: &[&Path]) {
    for dir in dirs {
        for name in PWNED {
            assert!(
                !dir.join(name).exists(),
                "{} exists: a shell interpreted text that should have been passed literally",
                dir.join(name).display()
            );
        }
    }
}

#[test]
fn shell_syntax_in_argv_and_messages_reaches_processes_literally() {
    init_path();
    let tree = Tree::new();
    let config = Config {
        allowed_programs: vec!["echo".into()],
        ..Config::default()
    };
    let coven = Coven::open_in_memory(config).unwrap();
    let echo_argv = [
        "echo",
        "a;touch pwned-1",
        "$(touch pwned-2)",
        "`touch pwned-3`",
        "{prompt}",
    ];
    coven
        .register_familiar(command_familiar("echo", &echo_argv, None))
        .unwrap();
    coven
        .register_familiar(Familiar::new("claude", "Claude", "claude"))
        .unwrap();
    // A program that is not allowlisted is refused, a shell included.
    for argv in [
        &["sh", "-c", "touch pwned-5"][..],
        &["/bin/sh", "-c", "touch pwned-5"],
        &["echo hi; touch pwned-5"],
    ] {
        let refused = coven.register_familiar(command_familiar("shell", argv, None));
        assert!(
            matches!(&refused, Err(coven_group::Error::InvalidInput { field, .. }) if field == "familiar.argv"),
            "{argv:?}: {refused:?}"
        );
    }

    let group = coven
        .create_group(
            None,
            ids(&["echo", "claude"]),
            Some(tree.root.to_string_lossy().into_owned()),
        )
        .unwrap();
    let message =
        "SCENARIO:normal ; touch pwned-4 && echo $HOME | tee pwned-5 $(id) `id` 'q' \"dq\"";
    let turn = coven.send(&group.id, message.into(), None).unwrap();
    finish_turn(&coven, &turn.turn_id);
    let snapshot = coven.get_group(&group.id).unwrap();

    // echo printed its arguments exactly as given, the message included.
    let echoed = reply_of(&snapshot, &turn.turn_id, "echo");
    assert_eq!(echoed.error, None, "{echoed:#?}");
    assert!(
        echoed
            .text
            .starts_with("a;touch pwned-1 $(touch pwned-2) `touch pwned-3` "),
        "{:?}",
        echoed.text
    );
    assert!(echoed.text.contains(message), "{:?}", echoed.text);

    // The fake claude got its documented argv (no shell in front) and the message on stdin.
    let answered = reply_of(&snapshot, &turn.turn_id, "claude");
    assert_eq!(answered.error, None, "{answered:#?}");
    let log = std::fs::read_to_string(tree.root.join("fake-claude.jsonl")).unwrap();
    let record: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let argv: Vec<&str> = record["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        Path::new(argv[0]).canonicalize().unwrap(),
        fake_bin().join("claude").canonicalize().unwrap()
    );
    assert_eq!(
        &argv[1..6],
        [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--include-partial-messages"
        ]
    );
    assert!(!argv.iter().any(|a| *a == "-c" || a.ends_with("sh")));
    assert!(record["prompt"].as_str().unwrap().contains(message));

    assert_nothing_pwned(&[&tree.root, &tree.base, &std::env::current_dir().unwrap()]);
    assert_clean_and_idle(&coven);
}

#[test]
fn a_new_store_file_is_readable_by_its_owner_only_whatever_the_umask() {
    init_path();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("private.redb");
    // SAFETY: umask only changes the mode of files created afterwards; it is restored at once.
    let previous = unsafe { libc::umask(0) };
    let opened = Coven::open(&path, Config::default());
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let coven = opened.unwrap();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600, "a new store under umask 0");

    // Written to, grown, closed and reopened: still the owner's only.
    coven
        .register_familiar(Familiar::new("ada", "Ada", "scripted"))
        .unwrap();
    let group = coven.create_group(None, ids(&["ada"]), None).unwrap().id;
    for i in 0..200 {
        coven
            .append_user_message(&group, format!("{i} {}", "x".repeat(4000)), None)
            .unwrap();
    }
    coven.close();
    let coven = Coven::open(&path, Config::default()).unwrap();
    assert_eq!(mode(&path), 0o600, "after writes and a reopen");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "the store keeps no other file beside it"
    );
    assert_clean(&coven);
}

/// Runs one turn and returns, per member, its reply text (trimmed) or its error kind.
fn run_turn(coven: &Coven, group: &str) -> Vec<(String, Result<String, ReplyErrorKind>)> {
    let turn = coven.send(group, "where are you?".into(), None).unwrap();
    assert!(coven.wait_turn(&turn.turn_id, GUARD).unwrap());
    let snapshot = coven.get_group(group).unwrap();
    snapshot
        .group
        .member_ids()
        .into_iter()
        .map(|id| {
            let event = reply_of(&snapshot, &turn.turn_id, &id);
            let outcome = match &event.error {
                None => Ok(event.text.trim().to_owned()),
                Some(error) => {
                    assert!(
                        error.message.contains("outside the project root"),
                        "{id}: {error:?}"
                    );
                    Err(error.kind)
                }
            };
            (id, outcome)
        })
        .collect()
}

#[test]
fn no_later_call_widens_a_groups_project_root() {
    init_path();
    let tree = Tree::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roots.redb");
    let config = Config {
        allowed_programs: vec!["pwd".into()],
        ..Config::default()
    };
    let coven = Coven::open(&path, config.clone()).unwrap();
    let outside = tree.outside.to_string_lossy().into_owned();
    for (id, cwd) in [
        ("here", None),
        ("sub", Some("sub")),
        ("up", Some("..")),
        ("escape", Some("escape")),
        ("absolute", Some(outside.as_str())),
        ("slash", Some("/")),
    ] {
        coven
            .register_familiar(command_familiar(id, &["pwd"], cwd))
            .unwrap();
    }
    coven
        .register_familiar(Familiar::new("extra", "Extra", "scripted"))
        .unwrap();
    // Given through a symlink and a detour, stored canonical.
    let given = format!("{}/sub/../.", tree.link.display());
    let group = coven
        .create_group(
            Some("rooted".into()),
            ids(&["here", "sub", "up", "escape", "absolute", "slash"]),
            Some(given),
        )
        .unwrap();
    let root = tree.root.to_string_lossy().into_owned();
    assert_eq!(group.project_root.as_deref(), Some(root.as_str()));
    let id = group.id.clone();

    let expected = |sub_dir: Result<String, ReplyErrorKind>| {
        vec![
            ("here".to_owned(), Ok(root.clone())),
            ("sub".to_owned(), sub_dir),
            ("up".to_owned(), Err(ReplyErrorKind::Failed)),
            ("escape".to_owned(), Err(ReplyErrorKind::Failed)),
            ("absolute".to_owned(), Err(ReplyErrorKind::Failed)),
            ("slash".to_owned(), Err(ReplyErrorKind::Failed)),
        ]
    };
    assert_eq!(run_turn(&coven, &id), expected(Ok(format!("{root}/sub"))));

    let assert_root = |coven: &Coven, after: &str| {
        let stored = coven.get_group(&id).unwrap().group.project_root;
        assert_eq!(stored.as_deref(), Some(root.as_str()), "after {after}");
        let listed = coven.list_groups().unwrap();
        let listed = listed.iter().find(|g| g.id == id).unwrap();
        assert_eq!(
            listed.project_root.as_deref(),
            Some(root.as_str()),
            "{after}"
        );
    };

    // The symlink the root was given through now points at the base: nothing follows it.
    std::fs::remove_file(&tree.link).unwrap();
    symlink(&tree.base, &tree.link).unwrap();
    assert_root(&coven, "re-pointing the symlink");

    // Every call that touches the group or its members, and a wider group beside it.
    coven.rename_group(&id, "renamed".into()).unwrap();
    assert_root(&coven, "rename_group");
    coven.add_member(&id, "extra").unwrap();
    assert_root(&coven, "add_member");
    coven.remove_member(&id, "extra").unwrap();
    assert_root(&coven, "remove_member");
    coven
        .append_user_message(&id, "hello".into(), None)
        .unwrap();
    let rev = coven.get_group(&id).unwrap().rev;
    coven.set_cursor(&id, "phone", rev).unwrap();
    let sessions = coven.sessions_of(&id).unwrap();
    let archived = sessions.iter().find(|s| s.archived).unwrap().id.clone();
    coven.summon_session(&archived).unwrap();
    coven.archive_session(&archived).unwrap();
    coven.sacrifice_session(&archived).unwrap();
    assert_root(&coven, "session calls");
    let wider = coven
        .create_group(
            None,
            ids(&["here"]),
            Some(tree.base.to_string_lossy().into_owned()),
        )
        .unwrap();
    assert_eq!(
        wider.project_root.as_deref(),
        Some(tree.base.to_str().unwrap())
    );
    assert_root(&coven, "creating a wider group");
    // Re-registering a member with a cwd that leaves the root is refused when it runs.
    coven
        .register_familiar(command_familiar("sub", &["pwd"], Some("../outside")))
        .unwrap();
    assert_root(&coven, "register_familiar");
    assert_eq!(run_turn(&coven, &id), expected(Err(ReplyErrorKind::Failed)));

    // Every recorded state of the group carries the same root.
    for change in all_changes(&coven, &id) {
        if let GroupUpdate::GroupCreated { group } | GroupUpdate::GroupChanged { group } =
            &change.update
        {
            assert_eq!(group.project_root.as_deref(), Some(root.as_str()));
        }
    }
    // And so does the store after a reopen.
    coven.close();
    let coven = Coven::open(&path, config).unwrap();
    assert_root(&coven, "a reopen");
    assert_eq!(run_turn(&coven, &id), expected(Err(ReplyErrorKind::Failed)));
    assert_clean_and_idle(&coven);
}

// ---- secrets ----

const SECRETS_STORE_ENV: &str = "COVEN_GROUP_SECRETS_STORE";
const SECRETS_ROOT_ENV: &str = "COVEN_GROUP_SECRETS_ROOT";
const SECRETS_CHILD: &str = "secrets_child_workload";
/// Credentials a host process typically has in its environment, with recognizable values.
const SECRETS: [(&str, &str); 5] = [
    (
        "ANTHROPIC_API_KEY",
        "sk-ant-api03-SECRETVALUE-anthropic-0001",
    ),
    ("OPENAI_API_KEY", "sk-proj-SECRETVALUE-openai-0002"),
    ("GITHUB_TOKEN", "ghp_SECRETVALUEgithub0003"),
    ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/SECRETVALUE/aws0004"),
    ("COVEN_HOST_PASSWORD", "hunter2-SECRETVALUE-0005"),
];
/// A PATH entry carrying a secret, so error messages about programs cannot quote PATH.
const SECRET_PATH_ENTRY: &str = "/nonexistent/SECRETVALUE-path-0006";
const MARKER: &str = "visible-marker-7f3a";

/// The child: every harness kind, failures included, with secrets in its environment. A no-op
/// unless the parent started this process with `SECRETS_STORE_ENV`.
#[test]
fn secrets_child_workload() {
    init_path();
    let Ok(path) = std::env::var(SECRETS_STORE_ENV) else {
        return;
    };
    let root = std::env::var(SECRETS_ROOT_ENV).unwrap();
    let config = Config {
        allowed_programs: vec!["echo".into(), "no-such-program".into()],
        ..Config::default()
    };
    let coven = Coven::open(&path, config).unwrap();
    let mut echo = command_familiar("echo", &["echo", "{prompt}"], None);
    echo.preamble = Some("You are careful.".into());
    for familiar in [
        Familiar::new("scripted", "Scripted", "scripted"),
        Familiar::new("claude", "Claude", "claude"),
        Familiar::new("codex", "Codex", "codex"),
        echo,
        command_familiar("missing", &["no-such-program"], None),
    ] {
        coven.register_familiar(familiar).unwrap();
    }
    let group = coven
        .create_group(
            None,
            ids(&["scripted", "claude", "codex", "echo", "missing"]),
            Some(root),
        )
        .unwrap();
    for scenario in ["normal", "normal", "error", "crash"] {
        let text = format!("{MARKER} SCENARIO:{scenario}");
        let turn = coven.send(&group.id, text, Some("Sam".into())).unwrap();
        finish_turn(&coven, &turn.turn_id);
    }
    coven.remove_member(&group.id, "missing").unwrap();
    let rev = coven.get_group(&group.id).unwrap().rev;
    coven.set_cursor(&group.id, "phone", rev).unwrap();
    let report = assert_clean_and_idle(&coven);
    assert!(report.events >= 20, "{report:?}");
    coven.close();
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[test]
fn no_credential_or_environment_secret_is_persisted() {
    init_path();
    let tree = Tree::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.redb");
    let mut search_path = std::env::var_os("PATH").unwrap();
    search_path.push(format!(":{SECRET_PATH_ENTRY}"));
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", SECRETS_CHILD, "--nocapture", "--test-threads=1"])
        .env(SECRETS_STORE_ENV, &path)
        .env(SECRETS_ROOT_ENV, &tree.root)
        .envs(SECRETS)
        .env("PATH", search_path)
        .status()
        .unwrap();
    assert!(status.success(), "the child workload failed: {status}");

    let bytes = std::fs::read(&path).unwrap();
    // The scan can see what is stored: the message, and the fake claude's session id.
    assert!(contains(&bytes, MARKER), "the marker is not in the file");
    let coven = Coven::open(&path, Config::default()).unwrap();
    let group = coven.list_groups().unwrap().remove(0);
    let claude = coven
        .sessions_of(&group.id)
        .unwrap()
        .into_iter()
        .find(|s| s.familiar_id == "claude")
        .unwrap();
    let token = claude.resume_token.expect("claude reported its session");
    assert!(
        contains(&bytes, &token),
        "the resume token is not in the file"
    );
    for (name, value) in SECRETS {
        assert!(
            !contains(&bytes, value),
            "the value of {name} is in the store"
        );
        assert!(!contains(&bytes, name), "the name {name} is in the store");
    }
    assert!(!contains(&bytes, "SECRETVALUE"), "a secret is in the store");
    // The harnesses did see the environment they need (the fakes ran, so did the failures).
    let snapshot = coven.get_group(&group.id).unwrap();
    assert!(snapshot.events.iter().any(|e| e.error.is_some()));
    assert_clean_and_idle(&coven);
}
