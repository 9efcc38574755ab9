//! [`ApiError`]: every failure as JSON with a fitting status.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// An error answer: `{"error": {"message", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with this status, machine-readable code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "message": self.message, "code": self.code }
        });
        (self.status, Json(body)).into_response()
    }
}

impl From<sov_node::StoreError> for ApiError {
    fn from(e: sov_node::StoreError) -> Self {
        use sov_node::StoreError as E;
        let (status, code) = match &e {
            E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::NoGrant { .. } => (StatusCode::FORBIDDEN, "no_grant"),
            E::NotOwner { .. } => (StatusCode::FORBIDDEN, "not_owner"),
            E::Invalid(_) | E::Car(_) => (StatusCode::BAD_REQUEST, "invalid"),
            E::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            E::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "store"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<sov_node::Error> for ApiError {
    fn from(e: sov_node::Error) -> Self {
        use sov_node::Error as E;
        match e {
            E::Store(s) => s.into(),
            E::Unavailable { .. } => Self::new(StatusCode::NOT_FOUND, "unavailable", e.to_string()),
            E::Model(_) => Self::new(StatusCode::BAD_REQUEST, "model", e.to_string()),
            E::Fetch { .. } | E::Net(_) => {
                Self::new(StatusCode::BAD_GATEWAY, "network", e.to_string())
            }
            E::Offline => Self::new(StatusCode::SERVICE_UNAVAILABLE, "offline", e.to_string()),
            e => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "node", e.to_string()),
        }
    }
}
