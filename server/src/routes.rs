//! The router: every endpoint, its access rule, and its entry in the OpenAPI document.
//!
//! Access: the owner reaches everything. A share reaches only its groups (and their sessions):
//! any other group or session is answered `404 not_found`, as if it did not exist; a write with
//! a read-only share, and anything only the owner may do (create or adopt groups, register
//! familiars, manage shares), is answered `403 forbidden`. Every check runs before the request
//! body is looked at, so a refused request changes nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Extension, Json, Router};
use coven_group::{self as cg, Coven};
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{self, RefOr};
use utoipa::{Modify, OpenApi};

use crate::api::*;
use crate::auth::{Principal, Tokens, MAX_LABEL_CHARS, MAX_SHARE_GROUPS};
use crate::error::ApiError;
use crate::stream::{self, StreamContext};

/// The handshake's API version.
pub const API_VERSION: &str = "coven.group.v1";
/// Longest tail window of `GET /api/groups/{id}?tail=N`: the library's page limit.
pub const MAX_TAIL: u32 = cg::MAX_PAGE;

/// Limits a server applies to requests and streams.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest total size of a request's header names and values, in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Most SSE streams open at once (503 beyond).
    pub max_streams: usize,
    /// A quiet SSE stream sends `: hb` this often.
    pub heartbeat: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_streams: 256,
            heartbeat: Duration::from_secs(15),
        }
    }
}

/// How a request reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The Unix socket: only its owning user can connect, so every request is the owner's.
    Unix,
    /// TCP: every request but the handshake and the document needs a bearer token.
    Tcp,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub coven: Arc<Coven>,
    pub tokens: Arc<Tokens>,
    pub limits: Limits,
    pub streams: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs a library call on the blocking pool (the library blocks on its writer and reads).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> cg::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the call did not complete",
            )
        })?
        .map_err(ApiError::from)
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(value)| value).map_err(ApiError::from)
}

/// The group, if the principal reaches it; otherwise as if it did not exist.
fn readable(principal: &Principal, group_id: &str) -> ApiResult<()> {
    if principal.reaches(group_id) {
        Ok(())
    } else {
        Err(ApiError::not_found("group", group_id))
    }
}

/// Like [`readable`], and the principal may change it.
fn writable(principal: &Principal, group_id: &str) -> ApiResult<()> {
    readable(principal, group_id)?;
    if principal.writes() {
        Ok(())
    } else {
        Err(ApiError::forbidden("this share token is read-only"))
    }
}

fn owner_only(principal: &Principal) -> ApiResult<()> {
    if principal.is_owner() {
        Ok(())
    } else {
        Err(ApiError::forbidden("only the owner may do this"))
    }
}

// ---- handshake and document ----

#[utoipa::path(get, path = "/api/v1/health", tag = "meta", security(()),
    responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        ok: true,
        api_version: API_VERSION.into(),
        server_version: env!("CARGO_PKG_VERSION").into(),
        capabilities: Capabilities {
            change_cursor: "rev".into(),
            streaming: "sse".into(),
            tail: true,
            shares: true,
            sync: true,
        },
    })
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response()
}

// ---- familiars ----

#[utoipa::path(get, path = "/api/familiars", tag = "familiars",
    responses((status = 200, body = [Familiar])))]
async fn list_familiars(State(state): State<AppState>) -> ApiResult<Json<Vec<Familiar>>> {
    let coven = state.coven.clone();
    let familiars = blocking(move || coven.list_familiars()).await?;
    Ok(Json(familiars.into_iter().map(Familiar::from).collect()))
}

#[utoipa::path(post, path = "/api/familiars", tag = "familiars", request_body = Familiar,
    responses((status = 200, description = "Registered (or updated)", body = Familiar)))]
async fn register_familiar(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    familiar: Result<Json<Familiar>, JsonRejection>,
) -> ApiResult<Json<Familiar>> {
    owner_only(&principal)?;
    let familiar = body(familiar)?;
    let coven = state.coven.clone();
    let registered = blocking(move || coven.register_familiar(familiar.into())).await?;
    Ok(Json(registered.into()))
}

// ---- groups ----

#[utoipa::path(get, path = "/api/groups", tag = "groups",
    responses((status = 200, description = "Most recently active first", body = [GroupConversation])))]
async fn list_groups(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<Vec<GroupConversation>>> {
    let coven = state.coven.clone();
    let groups = blocking(move || coven.list_groups()).await?;
    Ok(Json(
        groups
            .into_iter()
            .filter(|group| principal.reaches(&group.id))
            .map(GroupConversation::from)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/groups", tag = "groups", request_body = CreateGroup,
    responses((status = 201, body = GroupConversation)))]
async fn create_group(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    request: Result<Json<CreateGroup>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<GroupConversation>)> {
    owner_only(&principal)?;
    let request = body(request)?;
    let coven = state.coven.clone();
    let group = blocking(move || {
        coven.create_group(
            request.title,
            request.member_familiar_ids,
            request.project_root,
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(group.into())))
}

#[utoipa::path(post, path = "/api/groups/adopt", tag = "groups", request_body = AdoptGroup,
    responses((status = 201, body = GroupConversation)))]
async fn adopt_group(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    request: Result<Json<AdoptGroup>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<GroupConversation>)> {
    owner_only(&principal)?;
    let request = body(request)?;
    let coven = state.coven.clone();
    let members = request.members.into_iter().map(Into::into).collect();
    let group = blocking(move || coven.adopt_group(request.title, members)).await?;
    Ok((StatusCode::CREATED, Json(group.into())))
}

/// The group's timeline, whole or only its last `tail` events. A tail window reads only those
/// events (the library's tail read), however long the group's history.
pub fn read_timeline(
    coven: &Coven,
    group_id: &str,
    tail: Option<u32>,
) -> cg::Result<GroupTimeline> {
    let (group, events, rev, has_earlier) = match tail {
        Some(limit) => {
            let tail = coven.get_group_tail(group_id, limit)?;
            (tail.group, tail.events, tail.rev, tail.has_earlier)
        }
        None => {
            let snapshot = coven.get_group(group_id)?;
            (snapshot.group, snapshot.events, snapshot.rev, false)
        }
    };
    Ok(GroupTimeline {
        group: group.into(),
        events: events.into_iter().map(GroupEvent::from).collect(),
        rev,
        has_earlier,
    })
}

#[utoipa::path(get, path = "/api/groups/{id}", tag = "groups",
    params(("id" = String, Path, description = "Group id"), TimelineQuery),
    responses((status = 200, body = GroupTimeline)))]
async fn get_group(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> ApiResult<Json<GroupTimeline>> {
    readable(&principal, &id)?;
    let Query(query) = query?;
    if let Some(tail) = query.tail {
        if tail == 0 || tail > MAX_TAIL {
            return Err(ApiError::invalid(
                "tail",
                format!("must be between 1 and {MAX_TAIL}"),
            ));
        }
    }
    let coven = state.coven.clone();
    let timeline = blocking(move || read_timeline(&coven, &id, query.tail)).await?;
    Ok(Json(timeline))
}

#[utoipa::path(patch, path = "/api/groups/{id}", tag = "groups",
    params(("id" = String, Path, description = "Group id")), request_body = PatchGroup,
    responses((status = 200, description = "The group after the change", body = GroupConversation)))]
async fn patch_group(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    request: Result<Json<PatchGroup>, JsonRejection>,
) -> ApiResult<Json<GroupConversation>> {
    writable(&principal, &id)?;
    let request = body(request)?;
    let coven = state.coven.clone();
    let group = match (request.title, request.add_member, request.remove_member) {
        (Some(title), None, None) => blocking(move || coven.rename_group(&id, title)).await?,
        (None, Some(familiar), None) => blocking(move || coven.add_member(&id, &familiar)).await?,
        (None, None, Some(familiar)) => {
            blocking(move || coven.remove_member(&id, &familiar)).await?
        }
        _ => {
            return Err(ApiError::invalid(
                "body",
                "give exactly one of title, addMember, removeMember",
            ))
        }
    };
    Ok(Json(group.into()))
}

#[utoipa::path(delete, path = "/api/groups/{id}", tag = "groups",
    params(("id" = String, Path, description = "Group id")),
    responses((status = 204, description = "Deleted with its timeline and sessions")))]
async fn delete_group(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    writable(&principal, &id)?;
    let coven = state.coven.clone();
    blocking(move || coven.delete_group(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A slot among the bounded number of open streams, or 503.
fn stream_context(state: &AppState) -> ApiResult<StreamContext> {
    if *state.shutdown.borrow() {
        return Err(cg::Error::Closed.into());
    }
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!(
                "{} streams are open, the most this server serves; retry later",
                state.limits.max_streams
            ),
        )
        .with_details(json!({ "limit": state.limits.max_streams }))
    })?;
    Ok(StreamContext {
        heartbeat: state.limits.heartbeat,
        shutdown: state.shutdown.clone(),
        permit,
    })
}

#[utoipa::path(post, path = "/api/groups/{id}/send", tag = "turns",
    params(("id" = String, Path, description = "Group id")), request_body = SendMessage,
    responses((status = 200, description = "The turn as SSE frames (`user`, `replyStart`, `replyDelta`, `replyFinished`, then `done`; `error` on failure)",
        content_type = "text/event-stream", body = String)))]
async fn send(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    request: Result<Json<SendMessage>, JsonRejection>,
) -> ApiResult<Response> {
    writable(&principal, &id)?;
    let request = body(request)?;
    let context = stream_context(&state)?;
    let coven = state.coven.clone();
    let group = id.clone();
    let handle = blocking(move || coven.send(&group, request.text, request.author)).await?;
    stream::turn(state.coven.clone(), id, handle, context).await
}

#[utoipa::path(post, path = "/api/groups/{id}/cancel", tag = "turns",
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = Cancelled)))]
async fn cancel(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Cancelled>> {
    writable(&principal, &id)?;
    let coven = state.coven.clone();
    let turn_id = blocking(move || coven.cancel_turn(&id)).await?;
    Ok(Json(Cancelled { turn_id }))
}

/// Where an events stream starts: `Last-Event-ID` (a reconnecting `EventSource`) over
/// `afterRev`, over 0.
fn start_rev(headers: &HeaderMap, query: &EventsQuery) -> ApiResult<u64> {
    match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::invalid("Last-Event-ID", "must be a rev (an integer ≥ 0)")),
        None => Ok(query.after_rev.unwrap_or(0)),
    }
}

#[utoipa::path(get, path = "/api/groups/{id}/events", tag = "turns",
    params(("id" = String, Path, description = "Group id"), EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The last rev received; overrides afterRev")),
    responses((status = 200, description = "Every change after the start rev, backlog then live (frames with `id` = rev)",
        content_type = "text/event-stream", body = String)))]
async fn events(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    readable(&principal, &id)?;
    let Query(query) = query?;
    let after_rev = start_rev(&headers, &query)?;
    let context = stream_context(&state)?;
    stream::events(state.coven.clone(), id, after_rev, context).await
}

// ---- sessions ----

#[utoipa::path(get, path = "/api/groups/{id}/sessions", tag = "sessions",
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, description = "Every session of the group, archived ones included", body = [Session])))]
async fn group_sessions(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Session>>> {
    readable(&principal, &id)?;
    let coven = state.coven.clone();
    let sessions = blocking(move || {
        // An unknown group is `not_found`, not an empty list.
        coven.get_group(&id)?;
        coven.sessions_of(&id)
    })
    .await?;
    Ok(Json(sessions.into_iter().map(Session::from).collect()))
}

/// The session, if the principal reaches its group; otherwise as if it did not exist.
async fn reachable_session(
    state: &AppState,
    principal: &Principal,
    session_id: &str,
) -> ApiResult<cg::Session> {
    let coven = state.coven.clone();
    let id = session_id.to_owned();
    let session = blocking(move || coven.get_session(&id)).await?;
    if principal.reaches(&session.group_id) {
        Ok(session)
    } else {
        Err(ApiError::not_found("session", session_id))
    }
}

#[utoipa::path(get, path = "/api/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = Session)))]
async fn get_session(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Session>> {
    Ok(Json(
        reachable_session(&state, &principal, &id).await?.into(),
    ))
}

/// A session ritual: archive, summon or sacrifice.
#[derive(Clone, Copy)]
enum Ritual {
    Archive,
    Summon,
    Sacrifice,
}

async fn ritual(
    state: AppState,
    principal: Principal,
    id: String,
    ritual: Ritual,
) -> ApiResult<Option<cg::Session>> {
    let session = reachable_session(&state, &principal, &id).await?;
    writable(&principal, &session.group_id)?;
    let coven = state.coven.clone();
    blocking(move || match ritual {
        Ritual::Archive => coven.archive_session(&id).map(Some),
        Ritual::Summon => coven.summon_session(&id).map(Some),
        Ritual::Sacrifice => coven.sacrifice_session(&id).map(|()| None),
    })
    .await
}

#[utoipa::path(post, path = "/api/sessions/{id}/archive", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = Session)))]
async fn archive_session(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Session>> {
    let session = ritual(state, principal, id.clone(), Ritual::Archive).await?;
    session
        .map(|s| Json(s.into()))
        .ok_or_else(|| ApiError::not_found("session", &id))
}

#[utoipa::path(post, path = "/api/sessions/{id}/summon", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = Session)))]
async fn summon_session(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Session>> {
    let session = ritual(state, principal, id.clone(), Ritual::Summon).await?;
    session
        .map(|s| Json(s.into()))
        .ok_or_else(|| ApiError::not_found("session", &id))
}

#[utoipa::path(delete, path = "/api/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 204, description = "Sacrificed: permanently deleted (the timeline keeps its events)")))]
async fn sacrifice_session(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    ritual(state, principal, id, Ritual::Sacrifice).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- shares ----

#[utoipa::path(get, path = "/api/shares", tag = "shares",
    responses((status = 200, body = [Share])))]
async fn list_shares(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<Vec<Share>>> {
    owner_only(&principal)?;
    Ok(Json(state.tokens.list()))
}

fn storage(err: std::io::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "storage_error",
        format!("the shares could not be saved: {err}"),
    )
}

#[utoipa::path(post, path = "/api/shares", tag = "shares", request_body = CreateShare,
    responses((status = 201, body = CreatedShare)))]
async fn create_share(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    request: Result<Json<CreateShare>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreatedShare>)> {
    owner_only(&principal)?;
    let request = body(request)?;
    if request.group_ids.is_empty() || request.group_ids.len() > MAX_SHARE_GROUPS {
        return Err(ApiError::invalid(
            "groupIds",
            format!("must name 1 to {MAX_SHARE_GROUPS} groups"),
        ));
    }
    if let Some(label) = &request.label {
        if label.chars().count() > MAX_LABEL_CHARS {
            return Err(ApiError::invalid(
                "label",
                format!("must be at most {MAX_LABEL_CHARS} characters"),
            ));
        }
    }
    let coven = state.coven.clone();
    let existing: HashSet<String> = blocking(move || coven.list_groups())
        .await?
        .into_iter()
        .map(|group| group.id)
        .collect();
    let mut group_ids: Vec<String> = Vec::with_capacity(request.group_ids.len());
    for id in request.group_ids {
        if !existing.contains(&id) {
            return Err(ApiError::not_found("group", &id));
        }
        if !group_ids.contains(&id) {
            group_ids.push(id);
        }
    }
    let tokens = state.tokens.clone();
    let (share, token) = tokio::task::spawn_blocking(move || {
        tokens.create(group_ids, request.access, request.label)
    })
    .await
    .map_err(|_| storage(std::io::Error::other("interrupted")))?
    .map_err(storage)?;
    Ok((StatusCode::CREATED, Json(CreatedShare { share, token })))
}

#[utoipa::path(delete, path = "/api/shares/{id}", tag = "shares",
    params(("id" = String, Path, description = "Share id")),
    responses((status = 204, description = "Revoked: its token is refused from the next request on")))]
async fn revoke_share(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    owner_only(&principal)?;
    let tokens = state.tokens.clone();
    let share = id.clone();
    let revoked = tokio::task::spawn_blocking(move || tokens.revoke(&share))
        .await
        .map_err(|_| storage(std::io::Error::other("interrupted")))?
        .map_err(storage)?;
    if revoked {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("share", &id))
    }
}

// ---- the document ----

#[derive(OpenApi)]
#[openapi(
    info(title = "coven-group", description = "One group chat with AI familiars: one canonical timeline over HTTP and SSE. See docs/API-CONTRACT.md."),
    paths(health, openapi_json, list_familiars, register_familiar, list_groups, create_group,
        adopt_group, get_group, patch_group, delete_group, send, cancel, events, group_sessions,
        get_session, archive_session, summon_session, sacrifice_session, list_shares,
        create_share, revoke_share, sync_pull, sync_push),
    components(schemas(ErrorBody, ErrorDetail, Frame, Notice, ReplyError, Role)),
    modifiers(&CommonResponses),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// The error responses every operation may give (the server's own limits and access rules,
/// and every library error), and the bearer scheme.
struct CommonResponses;

const COMMON_ERRORS: [(&str, &str); 11] = [
    (
        "400",
        "invalid_request: malformed JSON, a bad field, id or parameter",
    ),
    ("401", "unauthorized: TCP without a valid bearer token"),
    (
        "403",
        "forbidden: a read-only share writing, or a share doing what only the owner may",
    ),
    (
        "404",
        "not_found: an unknown (or out-of-scope) group, session, familiar or share",
    ),
    ("405", "method_not_allowed"),
    (
        "409",
        "conflict: a running turn, a duplicate, a member that cannot be removed",
    ),
    ("413", "payload_too_large"),
    (
        "415",
        "unsupported_media_type: a body that is not application/json",
    ),
    ("422", "harness_error: a harness kind that cannot run"),
    ("431", "headers_too_large"),
    ("503", "unavailable (shutting down) or too_many_streams"),
];

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        for item in doc.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for (status, description) in COMMON_ERRORS {
                    let response = openapi::ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            openapi::ContentBuilder::new()
                                .schema(Some(RefOr::Ref(openapi::Ref::from_schema_name(
                                    "ErrorBody",
                                ))))
                                .build(),
                        )
                        .build();
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert(RefOr::T(response));
                }
            }
        }
    }
}

/// The OpenAPI document as JSON.
pub fn document_json() -> String {
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|_| "{}".to_owned())
}

// ---- sync ----

#[utoipa::path(post, path = "/api/sync/pull", tag = "sync",
    request_body(content = Object, description = "A `PullRequest` of the sync protocol (docs/design.md, \"Sync\"): `version`, `replica_store_id`, `home_store_id`, `cursors`, `acked_through`"),
    responses((status = 200, description = "The `PullResponse`: this store's groups for the replica", body = Object)))]
async fn sync_pull(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    request: Result<Json<cg::PullRequest>, JsonRejection>,
) -> ApiResult<Json<cg::PullResponse>> {
    // A replica holds every group of its home: only the owner's token reaches them all.
    owner_only(&principal)?;
    let request = body(request)?;
    let coven = state.coven.clone();
    Ok(Json(blocking(move || coven.serve_pull(request)).await?))
}

#[utoipa::path(post, path = "/api/sync/push", tag = "sync",
    request_body(content = Object, description = "A `PushRequest` of the sync protocol: a replica's outbox mutations, in order"),
    responses((status = 200, description = "The `PushResponse`: one result per mutation processed", body = Object)))]
async fn sync_push(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    request: Result<Json<cg::PushRequest>, JsonRejection>,
) -> ApiResult<Json<cg::PushResponse>> {
    owner_only(&principal)?;
    let request = body(request)?;
    let coven = state.coven.clone();
    Ok(Json(blocking(move || coven.serve_push(request)).await?))
}

// ---- the router ----

/// Registers each route and records its method and path, so the route list the OpenAPI test
/// compares with is the router's own.
struct Routes {
    router: Router<AppState>,
    list: Vec<(Method, &'static str)>,
}

impl Routes {
    fn add(
        mut self,
        method: Method,
        path: &'static str,
        route: axum::routing::MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, route);
        self.list.push((method, path));
        self
    }
}

fn routes() -> Routes {
    Routes {
        router: Router::new(),
        list: Vec::new(),
    }
    .add(Method::GET, "/api/v1/health", get(health))
    .add(Method::GET, "/api/openapi.json", get(openapi_json))
    .add(Method::GET, "/api/familiars", get(list_familiars))
    .add(Method::POST, "/api/familiars", post(register_familiar))
    .add(Method::GET, "/api/groups", get(list_groups))
    .add(Method::POST, "/api/groups", post(create_group))
    .add(Method::POST, "/api/groups/adopt", post(adopt_group))
    .add(Method::GET, "/api/groups/{id}", get(get_group))
    .add(Method::PATCH, "/api/groups/{id}", patch(patch_group))
    .add(Method::DELETE, "/api/groups/{id}", delete(delete_group))
    .add(Method::POST, "/api/groups/{id}/send", post(send))
    .add(Method::POST, "/api/groups/{id}/cancel", post(cancel))
    .add(Method::GET, "/api/groups/{id}/events", get(events))
    .add(
        Method::GET,
        "/api/groups/{id}/sessions",
        get(group_sessions),
    )
    .add(Method::GET, "/api/sessions/{id}", get(get_session))
    .add(
        Method::DELETE,
        "/api/sessions/{id}",
        delete(sacrifice_session),
    )
    .add(
        Method::POST,
        "/api/sessions/{id}/archive",
        post(archive_session),
    )
    .add(
        Method::POST,
        "/api/sessions/{id}/summon",
        post(summon_session),
    )
    .add(Method::GET, "/api/shares", get(list_shares))
    .add(Method::POST, "/api/shares", post(create_share))
    .add(Method::DELETE, "/api/shares/{id}", delete(revoke_share))
    .add(Method::POST, "/api/sync/pull", post(sync_pull))
    .add(Method::POST, "/api/sync/push", post(sync_push))
}

/// Every route the router serves, as (method, path) with `{param}` segments.
pub fn route_list() -> Vec<(Method, &'static str)> {
    routes().list
}

/// Paths that need no token: the handshake and the document.
const OPEN_PATHS: [&str; 2] = ["/api/v1/health", "/api/openapi.json"];

/// Resolves the request's principal (see [`Transport`]) and enforces the header limit.
async fn authenticate(
    State(state): State<AppState>,
    Extension(transport): Extension<Transport>,
    mut request: Request,
    next: Next,
) -> Response {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > state.limits.max_header_bytes {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request's headers exceed {} bytes",
                state.limits.max_header_bytes
            ),
        )
        .with_details(json!({ "limit": state.limits.max_header_bytes }))
        .into_response();
    }
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let principal = match transport {
        Transport::Unix => Principal::Owner,
        Transport::Tcp => {
            let presented = request
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::trim);
            let Some(token) = presented else {
                return ApiError::unauthorized("a bearer token is required over TCP")
                    .into_response();
            };
            match state.tokens.authenticate(token) {
                Some(principal) => principal,
                None => {
                    return ApiError::unauthorized("the token is unknown or revoked")
                        .into_response()
                }
            }
        }
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// One debug event per request: method, path, status and duration (never bodies or tokens);
/// server errors are warnings.
async fn log_request(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let duration_ms = started.elapsed().as_millis() as u64;
    if response.status().is_server_error() {
        tracing::warn!(%method, %path, status, duration_ms, "request failed");
    } else {
        tracing::debug!(%method, %path, status, duration_ms, "request");
    }
    response
}

async fn no_route(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint at {}", request.uri().path()),
    )
    .with_details(json!({ "what": "endpoint", "id": request.uri().path() }))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not served at {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// The whole application for one transport.
pub fn router(state: AppState, transport: Transport) -> Router {
    let max_body = state.limits.max_body_bytes;
    routes()
        .router
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(Extension(transport))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
        .merge(crate::web::router())
}
