//! The HTTP transport (cargo feature `http`): carries sync messages to a `coven-group serve`
//! home as JSON, `POST /api/sync/pull` and `POST /api/sync/push`, with the owner's bearer token.
//! A blocking client (ureq) without TLS: reach the home over a private network, a Unix-socket
//! proxy or a TLS terminator, or bring a transport of your own.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::protocol::{PullRequest, PullResponse, PushRequest, PushResponse};
use super::SyncTransport;
use crate::error::{Error, Result};

/// Largest answer read from a home (a snapshot of a long group is the largest).
const MAX_ANSWER_BYTES: u64 = 512 << 20;

/// A [`SyncTransport`] to a home served over HTTP.
pub struct HttpTransport {
    agent: ureq::Agent,
    /// `http://host:port`, without a trailing slash.
    base: String,
    token: Option<String>,
}

/// The server's error body: `{"error": {"code", "message", "details"}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
    #[serde(default)]
    details: serde_json::Value,
}

impl HttpTransport {
    /// A transport to the server at `base_url` (`http://host:port`). Every request gives up after
    /// `timeout` (connecting, sending and reading the answer together), so a sync never waits
    /// longer than that on one round trip.
    pub fn new(base_url: &str, token: Option<String>, timeout: Duration) -> Result<Self> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(Error::invalid(
                "base_url",
                format!("{base_url:?} is not an http:// address (this transport has no TLS)"),
            ));
        }
        if timeout.is_zero() {
            return Err(Error::invalid("timeout_ms", "must be at least 1"));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Ok(Self { agent, base, token })
    }

    fn post<Request: Serialize, Answer: DeserializeOwned>(
        &self,
        path: &str,
        request: &Request,
    ) -> Result<Answer> {
        let body = serde_json::to_vec(request)
            .map_err(|err| Error::invalid("request", err.to_string()))?;
        let mut call = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            call = call.header("authorization", format!("Bearer {token}"));
        }
        let mut response = call.send(&body[..]).map_err(unreachable_home)?;
        let status = response.status();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(unreachable_home)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|err| {
                Error::unavailable(format!("the home's answer is not a sync message: {err}"))
            });
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => home_error(status.as_u16(), body.error),
            Err(_) => Error::unavailable(format!("the home answered HTTP {status}")),
        })
    }
}

/// The library error a home's error answer stands for.
fn home_error(status: u16, error: ErrorDetail) -> Error {
    let detail = |key: &str| {
        error
            .details
            .get(key)
            .and_then(|value| value.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    match error.code.as_str() {
        "invalid_request" => Error::InvalidInput {
            field: detail("field"),
            reason: detail("reason"),
        },
        "not_found" => Error::NotFound {
            what: detail("what"),
            id: detail("id"),
        },
        "conflict" => Error::Conflict {
            reason: error.message,
        },
        // The token: missing, unknown, revoked, or a share's where the owner's is needed.
        "unauthorized" | "forbidden" => Error::InvalidInput {
            field: "token".to_owned(),
            reason: error.message,
        },
        _ => Error::unavailable(format!(
            "the home answered HTTP {status} {}: {}",
            error.code, error.message
        )),
    }
}

fn unreachable_home(err: ureq::Error) -> Error {
    Error::unavailable(format!("the home could not be reached: {err}"))
}

impl SyncTransport for HttpTransport {
    fn pull(&self, request: PullRequest) -> Result<PullResponse> {
        self.post("/api/sync/pull", &request)
    }

    fn push(&self, request: PushRequest) -> Result<PushResponse> {
        self.post("/api/sync/push", &request)
    }
}

/// The HTTP transport to a `coven-group serve` home at `base_url` (`http://host:port`), with the
/// owner's token when it listens on TCP; each round trip gives up after `timeout_ms`.
#[uniffi::export]
pub fn http_sync_transport(
    base_url: String,
    token: Option<String>,
    timeout_ms: u64,
) -> Result<Arc<dyn SyncTransport>> {
    Ok(Arc::new(HttpTransport::new(
        &base_url,
        token,
        Duration::from_millis(timeout_ms),
    )?))
}
