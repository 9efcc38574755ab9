//! OAuth 2.0 for the gateway: the token endpoint (`POST /oauth/token`, client credentials
//! with a did:key client assertion, RFC 6749 + RFC 7523), the discovery document
//! (`/.well-known/oauth-authorization-server`, RFC 8414, with the node's JWK set), and the
//! scope each route needs (one table, [`required_scope`]).

use axum::{
    Form, Json,
    extract::State,
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;
use sov_node::auth::ASSERTION_TYPE;

use crate::AppState;

/// The token request's form fields.
#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    /// `client_credentials`.
    #[serde(default)]
    pub grant_type: Option<String>,
    /// [`ASSERTION_TYPE`].
    #[serde(default)]
    pub client_assertion_type: Option<String>,
    /// The JWT signed by the client's did:key.
    #[serde(default)]
    pub client_assertion: Option<String>,
    /// Space-separated scopes (default: every scope the client may get).
    #[serde(default)]
    pub scope: Option<String>,
    /// Who is to honour the token (RFC 8707): this node's DID, or a group (its id or name)
    /// whose gateway policy gives the client scopes. Default: whichever gives the most.
    #[serde(default)]
    pub resource: Option<String>,
}

/// The scope a request needs: `/v1` chat and completions (and the model list) `infer`,
/// embeddings `embed`, classifier predictions `predict`, reading objects `data:read`,
/// changing them `data:write`, federations `fl:join`, governance `gov:vote`; everything else
/// (models, peers, identity, grants, tokens) `admin`.
pub fn required_scope(method: &Method, path: &str) -> &'static str {
    let read = *method == Method::GET || *method == Method::HEAD;
    if path == "/v1/embeddings" {
        "embed"
    } else if path.starts_with("/v1/") {
        "infer"
    } else if path.starts_with("/api/v1/models/")
        && (path.ends_with("/predict") || path.ends_with("/eval"))
    {
        "predict"
    } else if path.starts_with("/api/v1/objects") && path.ends_with("/grants") {
        "admin"
    } else if path.starts_with("/api/v1/objects") || path.starts_with("/api/v1/cars") {
        if read && !path.starts_with("/api/v1/cars") {
            "data:read"
        } else {
            "data:write"
        }
    } else if path.starts_with("/api/v1/federations") && (read || path.ends_with("/join")) {
        "fl:join"
    } else if path.starts_with("/api/v1/gov/") && (read || path.ends_with("/votes")) {
        "gov:vote"
    } else {
        "admin"
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut r = (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// The URLs a client may name as `aud`: this node's token endpoint and issuer as reached
/// (the `Host` the request came to, which the host check has vetted), and the node's DID.
fn audiences(state: &AppState, headers: &HeaderMap) -> Vec<String> {
    let mut out = vec![state.node.did().to_string()];
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        for scheme in ["http", "https"] {
            out.push(format!("{scheme}://{host}/oauth/token"));
            out.push(format!("{scheme}://{host}"));
        }
    }
    out
}

/// `POST /oauth/token`.
pub(crate) async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<TokenRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(req)) = form else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send application/x-www-form-urlencoded: grant_type, client_assertion_type, client_assertion, scope",
        );
    };
    if req.grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    if req.client_assertion_type.as_deref() != Some(ASSERTION_TYPE) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("client_assertion_type must be {ASSERTION_TYPE}"),
        );
    }
    let Some(assertion) = req.client_assertion.as_deref() else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_assertion is missing (a JWT signed by the client's did:key)",
        );
    };
    let auds = audiences(&state, &headers);
    match state
        .node
        .token_exchange(
            assertion,
            &auds,
            req.scope.as_deref(),
            req.resource.as_deref(),
        )
        .await
    {
        Ok(g) => {
            let mut r = Json(json!({
                "access_token": g.access_token,
                "token_type": g.token_type,
                "expires_in": g.expires_in,
                "scope": g.scope,
                "aud": g.aud,
            }))
            .into_response();
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            r
        }
        Err(e) => {
            let status = match e.error {
                "invalid_client" => StatusCode::UNAUTHORIZED,
                "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            oauth_error(status, e.error, &e.description)
        }
    }
}

/// `GET /.well-known/oauth-authorization-server`.
pub(crate) async fn metadata(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:7878");
    let issuer = format!("http://{host}");
    Json(json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth/token"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA", "Ed25519"],
        "scopes_supported": sov_node::auth::SCOPES.map(|(s, _)| s),
        "sov_node_did": state.node.did().to_string(),
        "jwks": state.node.jwks(),
    }))
    .into_response()
}

/// `POST /api/v1/tokens`: the owner issues a token.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct IssueToken {
    /// The client's did:key.
    pub to: String,
    /// Its scopes.
    pub scope: Vec<String>,
    /// How long it lives, in seconds (default 15 minutes, at most an hour).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// `POST /api/v1/tokens/allow`: let a DID, or the members of a group (with a role), get
/// tokens with these scopes (none: no more). Kept in `policy.toml`.
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize)]
pub struct AllowClient {
    /// The client's did:key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub did: Option<String>,
    /// Or a group this node is in (its name or id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// With `group`: only members with this role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The scopes it may get.
    pub scope: Vec<String>,
}

fn did(s: &str) -> Result<sov_core::Did, crate::ApiError> {
    s.parse()
        .map_err(|_| crate::ApiError::bad_request(format!("{}: not a did:key", sov_core::quote(s))))
}

pub(crate) async fn tokens(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, crate::ApiError> {
    Ok(Json(json!({
        "allowed": state.node.token_policy().await?,
        "issued": state.node.token_list().await?,
    })))
}

pub(crate) async fn issue(
    State(state): State<AppState>,
    crate::error::JsonBody(req): crate::error::JsonBody<IssueToken>,
) -> Result<Json<sov_node::auth::Grant>, crate::ApiError> {
    let to = did(&req.to)?;
    Ok(Json(
        state
            .node
            .token_issue(
                to,
                &req.scope,
                req.ttl_secs.unwrap_or(sov_node::auth::DEFAULT_TTL),
            )
            .await?,
    ))
}

pub(crate) async fn allow(
    State(state): State<AppState>,
    crate::error::JsonBody(req): crate::error::JsonBody<AllowClient>,
) -> Result<Json<serde_json::Value>, crate::ApiError> {
    use sov_node::auth::Who;
    let who = match (&req.did, req.group) {
        (Some(d), None) if req.role.is_none() => Who::Did(did(d)?),
        (None, Some(group)) => Who::Group {
            group,
            role: req.role,
        },
        _ => {
            return Err(crate::ApiError::bad_request(
                "name either a did, or a group (with an optional role)",
            ));
        }
    };
    let scopes = state.node.token_allow(who, &req.scope).await?;
    Ok(Json(json!({"scopes": scopes})))
}

pub(crate) async fn revoke(
    State(state): State<AppState>,
    axum::extract::Path(jti): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, crate::ApiError> {
    state.node.token_revoke(&jti).await?;
    Ok(Json(json!({"revoked": jti})))
}
