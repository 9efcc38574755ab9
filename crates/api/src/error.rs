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
            E::Full(_) => (StatusCode::INSUFFICIENT_STORAGE, "full"),
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
            E::Refused(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", e.to_string()),
            E::NoModel(_) => Self::new(StatusCode::NOT_FOUND, "model_not_found", e.to_string()),
            E::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            E::Fetch { .. } | E::Net(_) => {
                Self::new(StatusCode::BAD_GATEWAY, "network", e.to_string())
            }
            E::Offline => Self::new(StatusCode::SERVICE_UNAVAILABLE, "offline", e.to_string()),
            e => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "node", e.to_string()),
        }
    }
}

/// A JSON parse error for an answer: serde's message with every quoted piece of the input
/// cut to [`sov_core::MAX_QUOTED`] characters, and where it is.
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len().min(512));
    let mut rest = text.as_str();
    // serde quotes strings from the input in `"…"` or `` `…` ``.
    while let Some(start) = rest.find(['"', '`']) {
        let q = rest[start..].chars().next().unwrap_or('"');
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find(q) {
            Some(end) => {
                let inner = &after[..end];
                if inner.chars().count() > sov_core::MAX_QUOTED {
                    let head: String = inner.chars().take(sov_core::MAX_QUOTED).collect();
                    out.push_str(&format!("{q}{head}…{q}"));
                } else {
                    out.push(q);
                    out.push_str(inner);
                    out.push(q);
                }
                rest = &after[end + 1..];
            }
            None => {
                let head: String = after.chars().take(sov_core::MAX_QUOTED).collect();
                out.push(q);
                out.push_str(&head);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A JSON request body for the `/api/v1` routes: parsed with [`json_error`]'s messages (no
/// echo of the input), refused with `ApiError`'s shape.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                ApiError::new(e.status(), error_code(e.status()), body_refusal(e.status()))
            })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid: {}", json_error(&e)))
        })
    }
}

/// What to say about a body refused before it was parsed.
pub(crate) fn body_refusal(status: StatusCode) -> String {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            "the request body is larger than this route accepts".into()
        }
        s => format!("the request body could not be read ({s})"),
    }
}

/// Middleware for the `/api/v1` routes: an error answer axum made itself (a refused body, a
/// wrong method, a bad path) gets the API's JSON shape, without echoing the input.
pub(crate) async fn json_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let res = next.run(req).await;
    if !needs_reshaping(&res) {
        return res;
    }
    let status = res.status();
    ApiError::new(status, error_code(status), generic_message(status)).into_response()
}

/// Whether `res` is an error answer that is not JSON (so not one of ours).
pub(crate) fn needs_reshaping(res: &Response) -> bool {
    let json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"));
    (res.status().is_client_error() || res.status().is_server_error()) && !json
}

/// A short machine-readable code for an HTTP status.
pub(crate) fn error_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_server_error() => "server",
        _ => "bad_request",
    }
}

/// What to say for an HTTP status when the original message may hold the input.
pub(crate) fn generic_message(status: StatusCode) -> String {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => body_refusal(status),
        StatusCode::METHOD_NOT_ALLOWED => "this route does not take this method".into(),
        StatusCode::NOT_FOUND => "no such route or resource".into(),
        s => match s.canonical_reason() {
            Some(r) => format!("{r} ({})", s.as_u16()),
            None => format!("HTTP {}", s.as_u16()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_never_echo_more_than_a_few_characters() {
        let long = "x".repeat(10_000);
        let body = format!(r#"{{"id": 5, "{long}": "{long}"}}"#);
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct R {
            id: String,
        }
        let e = serde_json::from_str::<R>(&body).unwrap_err();
        let m = json_error(&e);
        assert!(m.len() < 200, "{m}");
        let e = serde_json::from_str::<R>(&format!(r#"{{"id": "{long}", "#)).unwrap_err();
        assert!(json_error(&e).len() < 200);
        let e = serde_json::from_str::<R>(r#"{"id": 5}"#).unwrap_err();
        assert!(
            json_error(&e).contains("expected a string"),
            "{}",
            json_error(&e)
        );
    }
}
