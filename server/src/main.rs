//! `coven-group`: run the server, or talk to a running one.
//!
//! `coven-group serve` serves a store on a Unix socket (mode 0600) or, with `--listen`, on TCP
//! with tokens; `coven-group serve --demo` serves a temporary store with three scripted
//! familiars. Every other command is a client of a running server: over the Unix socket by
//! default, or `--url HOST:PORT --token TOKEN` over TCP. Output is for people; `--json` prints
//! the API's JSON instead (one frame per line for streams).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use coven_group::{Config, Coven, Familiar};
use coven_group_server::client::{Client, Endpoint, Events, Extra, Reply};
use coven_group_server::{Bound, Limits, Listen, Server};
use serde_json::{json, Value};
use tracing_subscriber::EnvFilter;

/// `println!` that ignores a closed stdout (`coven-group show … | head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stdout(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "coven-group",
    version,
    about = "A group chat with AI familiars: server and client"
)]
struct Cli {
    /// The server's Unix socket [env: COVEN_GROUP_SOCKET; default: <data dir>/coven-group.sock]
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Reach the server over TCP at HOST:PORT instead [env: COVEN_GROUP_URL]
    #[arg(long, global = true)]
    url: Option<String>,
    /// Bearer token for TCP [env: COVEN_GROUP_TOKEN]
    #[arg(long, global = true)]
    token: Option<String>,
    /// Print the API's JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (until SIGTERM or Ctrl-C)
    Serve {
        /// The store [default: <data dir>/coven.redb]
        #[arg(long)]
        store: Option<PathBuf>,
        /// Listen on TCP instead of the Unix socket: PORT or HOST:PORT (host 127.0.0.1 when
        /// only a port is given); requests need a token
        #[arg(long)]
        listen: Option<String>,
        /// A temporary store with three scripted familiars and a group, for trying things out
        #[arg(long)]
        demo: bool,
        /// Most SSE streams open at once
        #[arg(long, default_value_t = Limits::default().max_streams)]
        max_streams: usize,
        /// Largest request body in bytes
        #[arg(long, default_value_t = Limits::default().max_body_bytes)]
        max_body_bytes: usize,
    },
    /// List the familiars
    Familiars,
    /// List the groups
    Groups,
    /// Create a group with these familiars
    Create {
        #[arg(long)]
        title: Option<String>,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Show a group's timeline
    Show {
        group: String,
        /// Only the last N events
        #[arg(long)]
        tail: Option<u32>,
    },
    /// Send a message and stream the replies as they arrive
    Send {
        group: String,
        text: String,
        #[arg(long)]
        author: Option<String>,
    },
    /// Follow a group live (reconnects where it left off)
    Tail {
        group: String,
        /// Start after this rev instead of now
        #[arg(long)]
        after_rev: Option<u64>,
    },
    /// Rename a group
    Rename { group: String, title: String },
    /// Change a group's members
    Members {
        #[command(subcommand)]
        change: MemberChange,
    },
    /// Delete a group with its timeline and sessions
    Delete { group: String },
    /// Share tokens: access to chosen groups for other people or devices
    Share {
        #[command(subcommand)]
        action: ShareAction,
    },
}

#[derive(Subcommand)]
enum MemberChange {
    Add { group: String, familiar: String },
    Remove { group: String, familiar: String },
}

#[derive(Subcommand)]
enum ShareAction {
    /// Create a share token for these groups (read-only unless --write)
    Create {
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        #[arg(long)]
        write: bool,
        #[arg(long)]
        label: Option<String>,
    },
    List,
    Revoke {
        id: String,
    },
}

fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("coven-group");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/coven-group")
}

fn socket_path(cli: &Cli) -> PathBuf {
    cli.socket
        .clone()
        .or_else(|| std::env::var_os("COVEN_GROUP_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| data_dir().join("coven-group.sock"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Serve { .. } => serve(&cli),
        _ => client_command(&cli),
    };
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("coven-group: {message}");
            ExitCode::FAILURE
        }
    }
}

// ---- serve ----

fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .map_err(|_| format!("--listen wants PORT or HOST:PORT, not {text:?}"))
}

fn serve(cli: &Cli) -> Result<ExitCode, String> {
    let Command::Serve {
        store,
        listen,
        demo,
        max_streams,
        max_body_bytes,
    } = &cli.command
    else {
        unreachable!("serve is only called for the serve command")
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .init();
    let temporary = if *demo {
        Some(tempfile::tempdir().map_err(|e| format!("cannot create a temporary store: {e}"))?)
    } else {
        None
    };
    let store = match (&temporary, store) {
        (Some(dir), _) => dir.path().join("coven.redb"),
        (None, Some(path)) => path.clone(),
        (None, None) => data_dir().join("coven.redb"),
    };
    if let Some(dir) = store.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let listen = match listen {
        Some(addr) => Listen::Tcp(listen_addr(addr)?),
        None => {
            let socket = socket_path(cli);
            if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir(dir)?;
            }
            Listen::Unix(socket)
        }
    };
    let config = if *demo {
        Config {
            scripted_delay_ms: 60,
            ..Config::default()
        }
    } else {
        Config::default()
    };
    let coven = Coven::open(&store, config)
        .map_err(|e| format!("cannot open the store {}: {e}", store.display()))?;
    let coven = Arc::new(coven);
    let (tokens, _owner) =
        Server::tokens_for(&store).map_err(|e| format!("cannot read or create the tokens: {e}"))?;
    let demo_group = if *demo {
        Some(demo_setup(&coven).map_err(|e| format!("cannot set up the demo: {e}"))?)
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let limits = Limits {
        max_streams: *max_streams,
        max_body_bytes: *max_body_bytes,
        ..Limits::default()
    };
    runtime.block_on(async {
        let bound = Bound::bind(&listen)
            .await
            .map_err(|e| format!("cannot listen: {e}"))?;
        match (&listen, bound.local_addr()) {
            (Listen::Unix(path), _) => {
                eprintln!("serving {} on {}", store.display(), path.display())
            }
            (_, Some(addr)) => eprintln!(
                "serving {} on http://{addr} (owner token in {})",
                store.display(),
                coven_group_server::token_paths(&store).0.display()
            ),
            _ => {}
        }
        if let Some(group) = &demo_group {
            eprintln!("demo group \"Round table\": {group}");
            eprintln!("try: coven-group send \"Round table\" \"Who keeps the grail tonight?\"");
        }
        Server {
            coven,
            tokens,
            limits,
        }
        .serve(bound, coven_group_server::termination())
        .await
        .map_err(|e| format!("the server failed: {e}"))
    })?;
    drop(temporary);
    Ok(ExitCode::SUCCESS)
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Three scripted familiars and a group of them; returns the group id.
fn demo_setup(coven: &Coven) -> coven_group::Result<String> {
    let familiars = [
        ("morgana", "Morgana"),
        ("merlin", "Merlin"),
        ("nimue", "Nimue"),
    ];
    for (id, name) in familiars {
        coven.register_familiar(Familiar::new(id, name, "scripted"))?;
    }
    let group = coven.create_group(
        Some("Round table".into()),
        familiars.iter().map(|(id, _)| id.to_string()).collect(),
        None,
    )?;
    Ok(group.id)
}

// ---- client commands ----

fn client(cli: &Cli) -> Client {
    let url = cli
        .url
        .clone()
        .or_else(|| std::env::var("COVEN_GROUP_URL").ok());
    let endpoint = match url {
        Some(url) => {
            let addr = url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned();
            let token = cli
                .token
                .clone()
                .or_else(|| std::env::var("COVEN_GROUP_TOKEN").ok());
            Endpoint::Tcp { addr, token }
        }
        None => Endpoint::Unix(socket_path(cli)),
    };
    Client::new(endpoint)
}

/// The response's JSON when it succeeded; the server's error message otherwise.
fn ok_json(reply: Reply) -> Result<Value, String> {
    if (200..300).contains(&reply.status) {
        if reply.body.is_empty() {
            return Ok(Value::Null);
        }
        return reply
            .json()
            .map_err(|e| format!("unreadable response: {e}"));
    }
    Err(error_message(&reply))
}

fn error_message(reply: &Reply) -> String {
    match reply.json() {
        Ok(body) => format!(
            "{} ({})",
            body["error"]["message"]
                .as_str()
                .unwrap_or("request refused"),
            body["error"]["code"].as_str().unwrap_or("error")
        ),
        Err(_) => format!("the server answered {}", reply.status),
    }
}

fn print_json(value: &Value) {
    say!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn client_command(cli: &Cli) -> Result<ExitCode, String> {
    let client = client(cli);
    let call = |method: &str, path: &str, body: Option<Value>| -> Result<Value, String> {
        let reply = client
            .json(method, path, body.as_ref())
            .map_err(|e| e.to_string())?;
        ok_json(reply)
    };
    match &cli.command {
        Command::Serve { .. } => unreachable!("handled by serve"),
        Command::Familiars => {
            let familiars = call("GET", "/api/familiars", None)?;
            if cli.json {
                print_json(&familiars);
            } else {
                for f in familiars.as_array().into_iter().flatten() {
                    say!(
                        "{:<20} {:<20} {}",
                        s(&f["id"]),
                        s(&f["displayName"]),
                        s(&f["harness"])
                    );
                }
            }
        }
        Command::Groups => {
            let groups = call("GET", "/api/groups", None)?;
            if cli.json {
                print_json(&groups);
            } else {
                for g in groups.as_array().into_iter().flatten() {
                    say!("{}  {:<30} {}", s(&g["id"]), s(&g["title"]), members(g));
                }
            }
        }
        Command::Create {
            title,
            members: ids,
        } => {
            let group = call(
                "POST",
                "/api/groups",
                Some(json!({ "title": title, "memberFamiliarIds": ids })),
            )?;
            if cli.json {
                print_json(&group);
            } else {
                say!(
                    "{}  {}  {}",
                    s(&group["id"]),
                    s(&group["title"]),
                    members(&group)
                );
            }
        }
        Command::Show { group, tail } => {
            let group = &resolve_group(&client, group)?;
            let path = match tail {
                Some(n) => format!("/api/groups/{group}?tail={n}"),
                None => format!("/api/groups/{group}"),
            };
            let timeline = call("GET", &path, None)?;
            if cli.json {
                print_json(&timeline);
            } else {
                say!(
                    "{} ({})  rev {}",
                    s(&timeline["group"]["title"]),
                    members(&timeline["group"]),
                    timeline["rev"]
                );
                if timeline["hasEarlier"].as_bool() == Some(true) {
                    say!("…");
                }
                for event in timeline["events"].as_array().into_iter().flatten() {
                    say!("{}", render_event(event));
                }
            }
        }
        Command::Send {
            group,
            text,
            author,
        } => {
            let group = &resolve_group(&client, group)?;
            let body = json!({ "text": text, "author": author });
            let events = match client
                .stream(
                    "POST",
                    &format!("/api/groups/{group}/send"),
                    Some(&body),
                    &Extra::default(),
                )
                .map_err(|e| e.to_string())?
            {
                Ok(events) => events,
                Err(reply) => return Err(error_message(&reply)),
            };
            return print_stream(events, cli.json, &mut None);
        }
        Command::Tail { group, after_rev } => {
            let group = resolve_group(&client, group)?;
            return tail(&client, &group, *after_rev, cli.json);
        }
        Command::Rename { group, title } => {
            let group = &resolve_group(&client, group)?;
            let g = call(
                "PATCH",
                &format!("/api/groups/{group}"),
                Some(json!({ "title": title })),
            )?;
            show_group(cli.json, &g);
        }
        Command::Members { change } => {
            let (group, body) = match change {
                MemberChange::Add { group, familiar } => (group, json!({ "addMember": familiar })),
                MemberChange::Remove { group, familiar } => {
                    (group, json!({ "removeMember": familiar }))
                }
            };
            let group = resolve_group(&client, group)?;
            let g = call("PATCH", &format!("/api/groups/{group}"), Some(body))?;
            show_group(cli.json, &g);
        }
        Command::Delete { group } => {
            let group = &resolve_group(&client, group)?;
            call("DELETE", &format!("/api/groups/{group}"), None)?;
            if cli.json {
                print_json(&json!({ "deleted": group }));
            } else {
                say!("deleted {group}");
            }
        }
        Command::Share { action } => match action {
            ShareAction::Create {
                groups,
                write,
                label,
            } => {
                let access = if *write { "readWrite" } else { "read" };
                let groups = groups
                    .iter()
                    .map(|group| resolve_group(&client, group))
                    .collect::<Result<Vec<String>, String>>()?;
                let created = call(
                    "POST",
                    "/api/shares",
                    Some(json!({ "groupIds": groups, "access": access, "label": label })),
                )?;
                if cli.json {
                    print_json(&created);
                } else {
                    say!("share {} ({access})", s(&created["share"]["id"]));
                    say!("token (shown once): {}", s(&created["token"]));
                }
            }
            ShareAction::List => {
                let shares = call("GET", "/api/shares", None)?;
                if cli.json {
                    print_json(&shares);
                } else {
                    for share in shares.as_array().into_iter().flatten() {
                        let groups: Vec<&str> = share["groupIds"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect();
                        say!(
                            "{}  {:<9} {:<20} {}",
                            s(&share["id"]),
                            s(&share["access"]),
                            share["label"].as_str().unwrap_or("-"),
                            groups.join(",")
                        );
                    }
                }
            }
            ShareAction::Revoke { id } => {
                call("DELETE", &format!("/api/shares/{id}"), None)?;
                if cli.json {
                    print_json(&json!({ "revoked": id }));
                } else {
                    say!("revoked {id}");
                }
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// A group named by its id, or by its title when exactly one group has it.
fn resolve_group(client: &Client, group: &str) -> Result<String, String> {
    let looks_like_id =
        group.len() == 36 && group.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if looks_like_id {
        return Ok(group.to_owned());
    }
    let reply = client
        .json("GET", "/api/groups", None)
        .map_err(|e| e.to_string())?;
    let groups = ok_json(reply)?;
    let matching: Vec<&str> = groups
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["title"] == group)
        .filter_map(|g| g["id"].as_str())
        .collect();
    match matching.as_slice() {
        [id] => Ok((*id).to_owned()),
        [] => Err(format!("no group has the id or title {group:?}")),
        _ => Err(format!(
            "{} groups are titled {group:?}; give the id",
            matching.len()
        )),
    }
}

fn s(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

fn members(group: &Value) -> String {
    group["memberFamiliarIds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn show_group(json: bool, group: &Value) {
    if json {
        print_json(group);
    } else {
        say!(
            "{}  {}  {}",
            s(&group["id"]),
            s(&group["title"]),
            members(group)
        );
    }
}

fn render_event(event: &Value) -> String {
    let seq = event["seq"].as_u64().unwrap_or(0);
    let who = match s(&event["role"]) {
        "user" => event["author"].as_str().unwrap_or("you").to_owned(),
        "familiar" => s(&event["familiarId"]).to_owned(),
        _ => "·".to_owned(),
    };
    let mut line = format!("#{seq:<4} {who:<10} {}", s(&event["text"]));
    if event["streaming"].as_bool() == Some(true) {
        line.push_str(" …");
    }
    if let Some(error) = event.get("error").filter(|e| !e.is_null()) {
        line.push_str(&format!(
            "  ✗ {}: {}",
            s(&error["kind"]),
            s(&error["message"])
        ));
    }
    line
}

/// Prints a stream's frames until it ends; records the last id seen.
fn print_stream(
    mut events: Events,
    json: bool,
    last_id: &mut Option<u64>,
) -> Result<ExitCode, String> {
    let mut out = io::stdout().lock();
    loop {
        let frame = match events.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(format!("the stream broke: {e}")),
        };
        if frame.id.is_some() {
            *last_id = frame.id;
        }
        let data = &frame.data;
        if json {
            let _ = writeln!(out, "{data}");
        } else {
            let seq = data["seq"].as_u64().unwrap_or(0);
            let who = data["familiarId"].as_str().unwrap_or("");
            let line = match s(&data["kind"]) {
                "user" | "eventAppended" | "replyStart" => render_event(&data["event"]),
                "replyDelta" => format!("#{seq:<4} {who:<10} ▸ {}", s(&data["text"])),
                "replyFinished" => match data["event"].get("error").filter(|e| !e.is_null()) {
                    Some(error) => format!(
                        "#{seq:<4} {who:<10} ✗ {}: {}",
                        s(&error["kind"]),
                        s(&error["message"])
                    ),
                    None => format!("#{seq:<4} {who:<10} ✓ {}", s(&data["event"]["text"])),
                },
                "done" => format!("done (rev {})", data["rev"]),
                "error" => {
                    return Err(format!(
                        "{} ({})",
                        s(&data["error"]["message"]),
                        s(&data["error"]["code"])
                    ))
                }
                "groupDeleted" => "the group was deleted".to_owned(),
                "groupChanged" | "groupCreated" => format!(
                    "· {} ({})",
                    s(&data["group"]["title"]),
                    members(&data["group"])
                ),
                _ => continue,
            };
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

/// Follows a group, reconnecting with `Last-Event-ID` when the connection drops.
fn tail(
    client: &Client,
    group: &str,
    after_rev: Option<u64>,
    json: bool,
) -> Result<ExitCode, String> {
    let mut last = match after_rev {
        Some(rev) => Some(rev),
        None => {
            let reply = client
                .json("GET", &format!("/api/groups/{group}?tail=20"), None)
                .map_err(|e| e.to_string())?;
            let timeline = ok_json(reply)?;
            if json {
                say!("{timeline}");
            } else {
                for event in timeline["events"].as_array().into_iter().flatten() {
                    say!("{}", render_event(event));
                }
            }
            timeline["rev"].as_u64()
        }
    };
    let mut failures = 0u32;
    loop {
        let extra = Extra {
            headers: vec![("last-event-id", last.unwrap_or(0).to_string())],
            raw_body: None,
        };
        match client.stream("GET", &format!("/api/groups/{group}/events"), None, &extra) {
            Ok(Ok(events)) => {
                failures = 0;
                match print_stream(events, json, &mut last) {
                    Ok(_) => return Ok(ExitCode::SUCCESS),
                    Err(message) => eprintln!("{message}; reconnecting"),
                }
            }
            Ok(Err(reply)) => return Err(error_message(&reply)),
            Err(e) => {
                failures += 1;
                if failures > 30 {
                    return Err(e.to_string());
                }
                eprintln!("{e}; retrying");
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
