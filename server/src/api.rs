//! The wire shapes: the spec's camelCase records, converted from the library's model. Times are
//! milliseconds since the Unix epoch (UTC). Every type here is in the OpenAPI document and in
//! `docs/API-CONTRACT.md`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coven_group as cg;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Milliseconds since the Unix epoch; times before it read as 0.
pub fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A named agent persona that can be a member of groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Familiar {
    /// 1–64 characters of `A-Z a-z 0-9 . _ -`.
    pub id: String,
    pub display_name: String,
    /// `scripted`, `command`, `claude`, `codex`, or a harness the embedding host registered.
    pub harness: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preamble: Option<String>,
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

impl From<cg::Familiar> for Familiar {
    fn from(f: cg::Familiar) -> Self {
        Self {
            id: f.id,
            display_name: f.display_name,
            harness: f.harness,
            model: f.model,
            preamble: f.preamble,
            argv: f.argv,
            cwd: f.cwd,
        }
    }
}

impl From<Familiar> for cg::Familiar {
    fn from(f: Familiar) -> Self {
        Self {
            id: f.id,
            display_name: f.display_name,
            harness: f.harness,
            model: f.model,
            preamble: f.preamble,
            argv: f.argv,
            cwd: f.cwd,
        }
    }
}

/// A group chat: one durable object with one canonical timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupConversation {
    pub id: String,
    pub title: String,
    /// Current members in roster order.
    pub member_familiar_ids: Vec<String>,
    /// Each current member's child session, in the same order.
    pub member_session_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_root: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    /// Time of the group's latest change, milliseconds since the Unix epoch.
    pub updated_at: u64,
}

impl From<cg::GroupConversation> for GroupConversation {
    fn from(g: cg::GroupConversation) -> Self {
        Self {
            member_familiar_ids: g.members.iter().map(|m| m.familiar_id.clone()).collect(),
            member_session_ids: g.members.iter().map(|m| m.session_id.clone()).collect(),
            id: g.id,
            title: g.title,
            project_root: g.project_root,
            created_at: millis(g.created_at),
            updated_at: millis(g.updated_at),
        }
    }
}

/// Who wrote an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    User,
    Familiar,
    System,
}

/// Why a reply did not finish normally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplyError {
    /// `failed`, `timedOut`, `cancelled` or `interrupted`.
    pub kind: String,
    pub message: String,
}

/// What a system event records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Notice {
    Renamed { from: String, to: String },
    MemberAdded { familiar_id: String },
    MemberRemoved { familiar_id: String },
}

/// One entry of a group's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupEvent {
    /// Canonical position: contiguous from 1 per group, never reused.
    pub seq: u64,
    /// Rev of the latest change to this event.
    pub rev: u64,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub familiar_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    pub text: String,
    /// True while a familiar's reply is still arriving.
    pub streaming: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReplyError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<Notice>,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
}

fn error_kind(kind: cg::ReplyErrorKind) -> &'static str {
    match kind {
        cg::ReplyErrorKind::Failed => "failed",
        cg::ReplyErrorKind::TimedOut => "timedOut",
        cg::ReplyErrorKind::Cancelled => "cancelled",
        cg::ReplyErrorKind::Interrupted => "interrupted",
    }
}

impl From<cg::GroupEvent> for GroupEvent {
    fn from(e: cg::GroupEvent) -> Self {
        Self {
            seq: e.seq,
            rev: e.rev,
            role: match e.kind {
                cg::EventKind::User => Role::User,
                cg::EventKind::Familiar => Role::Familiar,
                cg::EventKind::System => Role::System,
            },
            familiar_id: e.familiar_id,
            author: e.author,
            turn_id: e.turn_id,
            text: e.text,
            streaming: e.streaming,
            error: e.error.map(|error| ReplyError {
                kind: error_kind(error.kind).to_owned(),
                message: error.message,
            }),
            notice: e.notice.map(|notice| match notice {
                cg::SystemNotice::Renamed { from, to } => Notice::Renamed { from, to },
                cg::SystemNotice::MemberAdded { familiar_id } => {
                    Notice::MemberAdded { familiar_id }
                }
                cg::SystemNotice::MemberRemoved { familiar_id } => {
                    Notice::MemberRemoved { familiar_id }
                }
            }),
            ts: millis(e.timestamp),
        }
    }
}

/// A member's child session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub id: String,
    pub group_id: String,
    pub familiar_id: String,
    pub harness: String,
    /// `idle`, `running` or `failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
    pub archived: bool,
    pub created_at: u64,
    pub updated_at: u64,
}

impl From<cg::Session> for Session {
    fn from(s: cg::Session) -> Self {
        Self {
            id: s.id,
            group_id: s.group_id,
            familiar_id: s.familiar_id,
            harness: s.harness,
            status: match s.status {
                cg::SessionStatus::Idle => "idle",
                cg::SessionStatus::Running => "running",
                cg::SessionStatus::Failed => "failed",
            }
            .to_owned(),
            resume_token: s.resume_token,
            archived: s.archived,
            created_at: millis(s.created_at),
            updated_at: millis(s.updated_at),
        }
    }
}

/// A group with its timeline (all of it, or the last `tail` events) as of `rev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupTimeline {
    pub group: GroupConversation,
    /// In seq order.
    pub events: Vec<GroupEvent>,
    /// The group's latest rev this timeline reflects: follow with `/events?afterRev=<rev>`.
    pub rev: u64,
    /// True when a tail window left earlier events out.
    pub has_earlier: bool,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TimelineQuery {
    /// Only the last `tail` events (1–10000); the whole timeline when absent.
    #[param(minimum = 1, maximum = 10000)]
    pub tail: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Send the changes after this rev (0: from the start). `Last-Event-ID` overrides it.
    pub after_rev: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateGroup {
    #[serde(default)]
    pub title: Option<String>,
    pub member_familiar_ids: Vec<String>,
    /// An existing directory that bounds every process harness's working directory.
    #[serde(default)]
    pub project_root: Option<String>,
}

/// Exactly one of `title`, `addMember`, `removeMember`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchGroup {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub add_member: Option<String>,
    #[serde(default)]
    pub remove_member: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendMessage {
    pub text: String,
    #[serde(default)]
    pub author: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum HistoryRole {
    User,
    Familiar,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryMessage {
    pub role: HistoryRole,
    pub text: String,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    #[serde(default)]
    pub author: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdoptedMember {
    pub familiar_id: String,
    /// The existing session's id (a UUID); it is reused.
    pub session_id: String,
    #[serde(default)]
    pub history: Vec<HistoryMessage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdoptGroup {
    #[serde(default)]
    pub title: Option<String>,
    pub members: Vec<AdoptedMember>,
}

impl From<AdoptedMember> for cg::AdoptedMember {
    fn from(m: AdoptedMember) -> Self {
        Self {
            familiar_id: m.familiar_id,
            session_id: m.session_id,
            history: m
                .history
                .into_iter()
                .map(|h| cg::HistoryMessage {
                    role: match h.role {
                        HistoryRole::User => cg::HistoryRole::User,
                        HistoryRole::Familiar => cg::HistoryRole::Familiar,
                    },
                    text: h.text,
                    timestamp: from_millis(h.ts),
                    author: h.author,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cancelled {
    /// The turn that was cancelled.
    pub turn_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// `rev`: resume a stream with `afterRev` / `Last-Event-ID`.
    pub change_cursor: String,
    /// `sse`.
    pub streaming: String,
    /// True: `GET /api/groups/{id}?tail=N`.
    pub tail: bool,
    /// True when share tokens can be created (always, for the owner).
    pub shares: bool,
    /// False: the sync endpoints are not served yet.
    pub sync: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub ok: bool,
    /// `coven.group.v1`.
    pub api_version: String,
    pub server_version: String,
    pub capabilities: Capabilities,
}

/// What a share token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ShareAccess {
    /// Read the groups, their timelines, sessions and streams.
    Read,
    /// Also send, cancel, rename, change members, delete, and the session rituals.
    ReadWrite,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateShare {
    /// The groups the token reaches (1–256 ids of existing groups).
    pub group_ids: Vec<String>,
    pub access: ShareAccess,
    #[serde(default)]
    pub label: Option<String>,
}

/// A share token's record; the token itself is shown only once, when created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Share {
    pub id: String,
    pub group_ids: Vec<String>,
    pub access: ShareAccess,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedShare {
    pub share: Share,
    /// The bearer token; it is not stored (only its SHA-256 digest is) and cannot be shown again.
    pub token: String,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code: see the API contract's table.
    pub code: String,
    /// A sentence for a person.
    pub message: String,
    /// Code-specific fields (`field`, `what`, `id`, `limit`, ...); `{}` when there are none.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// One SSE frame's JSON (`data:`). `kind` names it; the other fields are present as the kind
/// needs them (see the API contract).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Frame {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub familiar_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    /// The text a `replyDelta` appends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<GroupEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupConversation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

impl PartialEq for ErrorDetail {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code && self.message == other.message && self.details == other.details
    }
}

impl Eq for ErrorDetail {}

/// The frame of one committed change on the `/events` stream.
pub fn change_frame(change: cg::GroupChange) -> Frame {
    let rev = Some(change.rev);
    match change.update {
        cg::GroupUpdate::GroupCreated { group } => Frame {
            kind: "groupCreated".into(),
            rev,
            group: Some(group.into()),
            ..Frame::default()
        },
        cg::GroupUpdate::GroupChanged { group } => Frame {
            kind: "groupChanged".into(),
            rev,
            group: Some(group.into()),
            ..Frame::default()
        },
        cg::GroupUpdate::EventAppended { event } => event_frame("eventAppended", rev, event),
        cg::GroupUpdate::ReplyDelta {
            seq,
            familiar_id,
            text,
        } => Frame {
            kind: "replyDelta".into(),
            rev,
            seq: Some(seq),
            familiar_id: Some(familiar_id),
            text: Some(text),
            ..Frame::default()
        },
        cg::GroupUpdate::ReplyFinished { event } => event_frame("replyFinished", rev, event),
        cg::GroupUpdate::SessionChanged { session } => Frame {
            kind: "sessionChanged".into(),
            rev,
            session: Some(session.into()),
            ..Frame::default()
        },
        cg::GroupUpdate::SessionSacrificed { session_id } => Frame {
            kind: "sessionSacrificed".into(),
            rev,
            session_id: Some(session_id),
            ..Frame::default()
        },
        cg::GroupUpdate::GroupDeleted => Frame {
            kind: "groupDeleted".into(),
            rev,
            ..Frame::default()
        },
        // The server's store is the home of its groups; these are a replica's own changes and
        // reach a client only from a replica store. A reset tells it to read the group again.
        cg::GroupUpdate::GroupReset { group, .. } => Frame {
            kind: "groupReset".into(),
            rev,
            group: Some(group.into()),
            ..Frame::default()
        },
        cg::GroupUpdate::MessageSent { event, .. } => event_frame("eventAppended", rev, event),
        cg::GroupUpdate::MessagePending { .. } | cg::GroupUpdate::MessageDiscarded { .. } => {
            Frame {
                kind: "localEcho".into(),
                rev,
                ..Frame::default()
            }
        }
    }
}

/// A frame carrying an event, with its seq, familiar and turn repeated at the top level.
pub fn event_frame(kind: &str, rev: Option<u64>, event: cg::GroupEvent) -> Frame {
    Frame {
        kind: kind.into(),
        rev,
        seq: Some(event.seq),
        familiar_id: event.familiar_id.clone(),
        turn_id: event.turn_id.clone(),
        event: Some(event.into()),
        ..Frame::default()
    }
}
