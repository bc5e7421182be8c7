//! Every refusal as `{"error":{"code","message","details"}}` with its HTTP status. Library errors
//! map one to one (see [`ApiError::from`]); the server adds its own codes for access, limits and
//! malformed requests.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use coven_group as cg;
use serde_json::{json, Value};

use crate::api::{ErrorBody, ErrorDetail};

/// An error response: status, code, message and details.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("invalid {field}: {reason}"),
        )
        .with_details(json!({ "field": field, "reason": reason }))
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found: {id}"),
        )
        .with_details(json!({ "what": what, "id": id }))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code.to_owned(),
            message: self.message.clone(),
            details: self.details.clone(),
        }
    }
}

impl From<cg::Error> for ApiError {
    fn from(err: cg::Error) -> Self {
        let message = err.to_string();
        match err {
            cg::Error::NotFound { what, id } => {
                Self::new(StatusCode::NOT_FOUND, "not_found", message)
                    .with_details(json!({ "what": what, "id": id }))
            }
            cg::Error::InvalidInput { field, reason } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
                    .with_details(json!({ "field": field, "reason": reason }))
            }
            cg::Error::Conflict { .. } => Self::new(StatusCode::CONFLICT, "conflict", message),
            // A harness refusal concerns the request (an unknown or unusable harness kind).
            cg::Error::Harness { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "harness_error", message)
            }
            cg::Error::Storage { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", message)
            }
            cg::Error::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is shutting down",
            ),
            // The server makes no sync calls of its own; a host transport's failure.
            cg::Error::Unavailable { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let text = rejection.body_text();
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(status, "payload_too_large", text),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(
                status,
                "unsupported_media_type",
                "the body must be JSON with `content-type: application/json`",
            ),
            _ => Self::new(StatusCode::BAD_REQUEST, "invalid_request", text)
                .with_details(json!({ "field": "body" })),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            rejection.body_text(),
        )
        .with_details(json!({ "field": "query" }))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            rejection.body_text(),
        )
        .with_details(json!({ "field": "path" }))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = (
            self.status,
            axum::Json(ErrorBody {
                error: self.detail(),
            }),
        )
            .into_response();
        if retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
