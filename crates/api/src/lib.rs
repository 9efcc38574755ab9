//! `sov-api` is layer 4 of sov: the node's HTTP API on axum, the first part of the gateway
//! (DESIGN.md §9). It binds to loopback by default and every route but `/health` needs
//! `Authorization: Bearer <admin token>` (the token `sov init` wrote to
//! `$SOV_HOME/admin.token`).
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | `{"status":"ok"}`, no token needed |
//! | `GET /api/v1/identity` | DID, PeerId, listen addresses |
//! | `GET /api/v1/peers` | connected peers: `[{peer_id, did, addrs}]` |
//! | `GET /api/v1/objects` | stored objects |
//! | `POST /api/v1/objects?name=&media_type=&replicas=` | body: the bytes; adds an object |
//! | `GET /api/v1/objects/{id}` | the plaintext (fetched from peers if not stored here) |
//! | `GET /api/v1/objects/{id}/info` | what the node knows about an object |
//! | `DELETE /api/v1/objects/{id}` | remove it here |
//! | `POST /api/v1/objects/{id}/grants` | `{"did": …}`: let that DID read it |
//! | `GET /api/v1/objects/{id}/car` | the object as CAR v1 |
//! | `POST /api/v1/cars` | body: a CAR v1 file; imports the object |
//! | `GET /api/v1/models` | the model registry |
//! | `POST /api/v1/models` | `{"path", "name"?, "license"?}`: import a GGUF file or HF folder |
//! | `GET /api/v1/models/{name}` | one model, with `signature_valid` (its manifest checked again) |
//! | `DELETE /api/v1/models/{name}` | remove a model (and its objects no other model uses) |
//! | `POST /api/v1/models/{id}/predict` | `{"rows": [[features…]…]}` → class probabilities per row (classifiers) |
//! | `POST /api/v1/models/{id}/eval` | `{"data", "label_column"?, "standardize"?}` → rows, accuracy, loss (classifiers) |
//! | `POST /api/v1/models/pull` | `{"id"}`: fetch a model from peers, manifest verified |
//! | `GET /api/v1/models/offered` | models peers offered on gossip (signatures checked; not stored here) |
//! | `POST /api/v1/models/{name}/share` | `{"did"}`: let that DID pull the model |
//! | `GET /api/v1/federations` | the federations this node is in (their status) |
//! | `POST /api/v1/federations` | `{"name", "task", "policy", "member"}`: found one; `{"id"}` |
//! | `GET /api/v1/federations/{id}` | its status: round, accuracy, ε, aggregator, members, history |
//! | `POST /api/v1/federations/{id}/join` | `{"member": {"data", …}}`: join it with this data |
//! | `DELETE /api/v1/federations/{id}` | leave it (its records are forgotten here) |
//! | `/v1/…` | the OpenAI-compatible gateway ([`gateway`](crate::gateway) lists it) |
//!
//! Errors are JSON `{"error": {"message", "code"}}` with a fitting status (on `/v1`, OpenAI's
//! shape `{"error": {"message", "type", "param", "code"}}`).
//!
//! Every route, `/health` included, answers only requests whose `Host` is a loopback name
//! (`localhost`, `127.0.0.1`, `[::1]`, any port) or one the node's `[api] hosts` lists: a web
//! page that a browser reaches through DNS rebinding carries its own name and is refused
//! (403 `host_not_allowed`).

mod error;
mod federations;
pub mod gateway;
pub mod gov;
pub mod http;
pub mod limit;
mod models;
pub mod oauth;
mod objects;

use std::{future::Future, sync::Arc};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
pub use error::ApiError;
pub use federations::{CreateFederation, CreatedFederation, JoinFederation};
pub use models::{
    EvalRequest, ImportRequest, ModelDetail, ModelInfo, PredictRequest, Prediction, PullRequest,
    ShareRequest,
};
pub use objects::{AddedObject, Object};
use serde::Serialize;
use sov_node::Node;

/// Largest request body the API accepts (more than one manifest can describe, so the store's
/// own limit is the one a user meets).
pub const MAX_UPLOAD: usize = 64 << 30;

/// Largest body of the routes that take JSON settings (grants, model import, pull, share).
pub const MAX_JSON_BODY: usize = 64 << 10;

/// Largest `/v1` request body (a long chat or a batch of texts to embed).
pub const MAX_V1_BODY: usize = 16 << 20;

/// What every handler sees.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) node: Node,
    token: Arc<str>,
    /// Host names answered besides loopback ones (lowercase; `"*"`: any).
    hosts: Arc<[String]>,
    /// The rate limits' buckets.
    limiter: Arc<limit::Limiter>,
}

/// The API's router for `node`, guarded by `token`, answering loopback Host names only.
pub fn router(node: Node, token: &str) -> Router {
    router_for_hosts(node, token, &[])
}

/// The API's router for `node`, guarded by `token`, answering loopback Host names and
/// `hosts` (`"*"`: any), with the node's rate limits.
pub fn router_for_hosts(node: Node, token: &str, hosts: &[String]) -> Router {
    let limits = limit::RateLimits {
        per_token: node.config().api_rate_per_token,
        per_address: node.config().api_rate_per_address,
    };
    router_with(node, token, hosts, limits)
}

/// The API's router with every setting given.
pub fn router_with(node: Node, token: &str, hosts: &[String], limits: limit::RateLimits) -> Router {
    let state = AppState {
        node,
        token: token.into(),
        hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        limiter: Arc::new(limit::Limiter::new(limits)),
    };
    // Uploads stream into the store and may be large; every other route takes small JSON.
    let small = axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY);
    let api = Router::new()
        .route("/api/v1/identity", get(identity))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/objects", get(objects::list).post(objects::add))
        .route(
            "/api/v1/objects/{id}",
            get(objects::read).delete(objects::remove),
        )
        .route("/api/v1/objects/{id}/info", get(objects::info))
        .route(
            "/api/v1/objects/{id}/grants",
            post(objects::grant).layer(small),
        )
        .route("/api/v1/objects/{id}/car", get(objects::export))
        .route(
            "/api/v1/cars",
            post(objects::import).layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route(
            "/api/v1/models",
            get(models::list).post(models::import).layer(small),
        )
        .route("/api/v1/models/pull", post(models::pull).layer(small))
        .route("/api/v1/models/offered", get(models::offered))
        .route(
            "/api/v1/models/{name}",
            get(models::show).delete(models::remove),
        )
        .route(
            "/api/v1/models/{name}/predict",
            post(models::predict).layer(axum::extract::DefaultBodyLimit::max(MAX_V1_BODY)),
        )
        .route(
            "/api/v1/models/{name}/eval",
            post(models::eval).layer(small),
        )
        .route(
            "/api/v1/models/{name}/share",
            post(models::share).layer(small),
        )
        .route(
            "/api/v1/federations",
            get(federations::list)
                .post(federations::create)
                .layer(small),
        )
        .route(
            "/api/v1/federations/{id}",
            get(federations::status).delete(federations::leave),
        )
        .route(
            "/api/v1/federations/{id}/join",
            post(federations::join).layer(small),
        )
        .route(
            "/api/v1/gov/groups",
            get(gov::groups).post(gov::create).layer(small),
        )
        .route("/api/v1/gov/groups/{id}", get(gov::group))
        .route(
            "/api/v1/gov/proposals",
            get(gov::proposals).post(gov::propose).layer(small),
        )
        .route("/api/v1/gov/proposals/{id}", get(gov::show))
        .route(
            "/api/v1/gov/proposals/{id}/votes",
            post(gov::vote).layer(small),
        )
        .route(
            "/api/v1/gov/proposals/{id}/certificate",
            get(gov::certificate),
        )
        .route(
            "/api/v1/tokens",
            get(oauth::tokens).post(oauth::issue).layer(small),
        )
        .route("/api/v1/tokens/allow", post(oauth::allow).layer(small))
        .route("/api/v1/tokens/{jti}", axum::routing::delete(oauth::revoke))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn(error::json_errors));
    let v1 = Router::new()
        .route("/v1/models", get(gateway::list_models))
        .route("/v1/models/{id}", get(gateway::get_model))
        .route("/v1/chat/completions", post(gateway::chat_completions))
        .route("/v1/completions", post(gateway::completions))
        .route("/v1/embeddings", post(gateway::embeddings))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            gateway::require_token,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_V1_BODY))
        .layer(middleware::from_fn(gateway::oai_errors));
    Router::new()
        .route("/health", get(health))
        .route("/oauth/token", post(oauth::token).layer(small))
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::metadata),
        )
        .merge(api)
        .merge(v1)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), limit::limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .with_state(state)
}

/// The host name of a `Host` header value, without its port, lowercase.
fn host_name(value: &str) -> String {
    let value = value.trim();
    let name = if let Some(rest) = value.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match value.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => value,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `name` (from [`host_name`]) is loopback: `localhost`, a name under it, or a
/// loopback address.
fn is_loopback(name: &str) -> bool {
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuse requests whose `Host` names neither a loopback host nor one of the node's. A
/// request without `Host` (HTTP/1.0, or a test calling the router directly) did not come
/// from a browser and passes.
async fn check_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(value) = req.headers().get(header::HOST) else {
        return next.run(req).await;
    };
    let name = value.to_str().map(host_name).unwrap_or_default();
    let allowed = is_loopback(&name) || state.hosts.iter().any(|h| h == "*" || *h == name);
    if allowed {
        return next.run(req).await;
    }
    ApiError::new(
        StatusCode::FORBIDDEN,
        "host_not_allowed",
        format!(
            "this node answers loopback host names and those its [api] hosts lists, not {}",
            sov_core::quote(&String::from_utf8_lossy(value.as_bytes()))
        ),
    )
    .into_response()
}

/// Serve the API on `listener` until `shutdown` completes, under the default
/// [`http::Limits`] (header timeout, connection cap).
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    token: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let hosts = node.config().api_hosts.clone();
    http::serve_with(
        listener,
        router_for_hosts(node, token, &hosts),
        http::Limits::default(),
        shutdown,
    )
    .await
}

/// Compare in constant time (`subtle`), so the time taken says nothing about the token
/// (only whether the lengths differ, and every token is 64 hex digits).
fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.ct_eq(b).into()
}

/// What the request's `Authorization: Bearer` header says about the admin token.
pub(crate) enum Bearer {
    /// The admin token.
    Valid,
    /// Some other token.
    Wrong,
    /// No bearer token.
    Missing,
}

/// Who is asking, once the bearer token was checked.
pub(crate) enum Caller {
    /// The owner (the admin token): everything.
    Owner,
    /// A client with an access token this node issued, and its scopes.
    Client(sov_node::auth::AccessClaims),
}

/// Why a request was not let through.
pub(crate) enum Denied {
    /// No bearer token.
    Missing,
    /// A token that is neither the admin token nor a valid access token, and why.
    Invalid(String),
    /// A valid access token without the route's scope.
    Scope(&'static str),
}

/// What the authorisation check needs of a request, taken out of it (a request is not
/// `Sync`, so nothing of it is held across the check's await). [`Asked::check`] lets
/// through the admin token, or an access token this node issued that carries the route's
/// scope (or `admin`).
pub(crate) struct Asked {
    need: &'static str,
    verdict: Bearer,
    presented: Option<String>,
}

impl Asked {
    pub(crate) fn of(state: &AppState, req: &Request) -> Self {
        Self {
            need: oauth::required_scope(req.method(), req.uri().path()),
            verdict: bearer(state, req),
            presented: req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_owned()),
        }
    }

    pub(crate) async fn check(self, state: &AppState) -> Result<Caller, Denied> {
        let need = self.need;
        let caller = match self.verdict {
            Bearer::Valid => return Ok(Caller::Owner),
            Bearer::Missing => return Err(Denied::Missing),
            Bearer::Wrong => {
                let t = self.presented.unwrap_or_default();
                // An admin token is 64 hex digits; a JWT has dots.
                if !t.contains('.') {
                    return Err(Denied::Invalid("wrong token".into()));
                }
                Caller::Client(state.node.token_check(&t).await.map_err(Denied::Invalid)?)
            }
        };
        match &caller {
            Caller::Client(c) if !c.scopes().any(|s| s == need || s == "admin") => {
                Err(Denied::Scope(need))
            }
            _ => Ok(caller),
        }
    }
}

/// Check `req`'s bearer token against the admin token (compared without an early exit).
pub(crate) fn bearer(state: &AppState, req: &Request) -> Bearer {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if same(t.trim().as_bytes(), state.token.as_bytes()) => Bearer::Valid,
        Some(_) => Bearer::Wrong,
        None => Bearer::Missing,
    }
}

/// Whose prompt cache a request may use: "" for the owner, else the client's DID (so no
/// client learns another's prompts from how fast its own are read). `/v1`'s token check
/// puts it on the request.
#[derive(Debug, Clone)]
pub(crate) struct CacheScope(pub(crate) String);

impl Caller {
    /// Its prompt-cache scope.
    pub(crate) fn cache_scope(self) -> CacheScope {
        CacheScope(match self {
            Caller::Owner => String::new(),
            Caller::Client(c) => c.sub,
        })
    }
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let asked = Asked::of(&state, &req);
    match asked.check(&state).await {
        Ok(_) => next.run(req).await,
        Err(Denied::Invalid(why)) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", why).into_response()
        }
        Err(Denied::Scope(need)) => ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("this route needs scope {need}"),
        )
        .into_response(),
        Err(Denied::Missing) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "this route needs `Authorization: Bearer <token>` (the admin token in $SOV_HOME/admin.token, or an access token from /oauth/token)",
        )
        .into_response(),
    }
}

/// `GET /metrics`: Prometheus' text format (OpenMetrics 1.0).
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.node.metrics_text().await,
    )
        .into_response()
}

/// Every request gets an id (the client's `x-request-id` if it is short and plain, else a
/// new one), sent back in `x-request-id` and carried by the request's log span; its answer
/// is counted by route pattern, method and status.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]
        .into_iter()
        .find(|m| *m == req.method().as_str())
        .unwrap_or("other");
    let span = tracing::info_span!("request", id = %id, method, route = %route);
    let started = std::time::Instant::now();
    let mut r = next.run(req).instrument(span.clone()).await;
    let status = r.status().as_u16();
    span.in_scope(|| {
        tracing::debug!(
            status,
            ms = started.elapsed().as_millis() as u64,
            "answered"
        )
    });
    state
        .node
        .metrics()
        .http_requests
        .get_or_create(&vec![
            ("route", route),
            ("method", method.to_owned()),
            ("status", status.to_string()),
        ])
        .inc();
    if let Ok(v) = header::HeaderValue::from_str(&id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[derive(Serialize)]
struct Identity {
    did: String,
    peer_id: String,
    listen: Vec<String>,
}

async fn identity(State(state): State<AppState>) -> Result<Json<Identity>, ApiError> {
    let node = &state.node;
    Ok(Json(Identity {
        did: node.did().to_string(),
        peer_id: node.peer_id().to_string(),
        listen: node
            .listen_addrs()
            .await?
            .iter()
            .map(|a| a.to_string())
            .collect(),
    }))
}

/// One connected peer, as `GET /api/v1/peers` lists it.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Peer {
    /// Its PeerId.
    pub peer_id: String,
    /// Its did:key.
    pub did: Option<String>,
    /// Its addresses.
    pub addrs: Vec<String>,
}

async fn peers(State(state): State<AppState>) -> Result<Json<Vec<Peer>>, ApiError> {
    let mut peers: Vec<Peer> = state
        .node
        .peers()
        .await?
        .into_iter()
        .map(|p| Peer {
            peer_id: p.peer_id.to_string(),
            did: p.did.map(|d| d.to_string()),
            addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
        })
        .collect();
    peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
    Ok(Json(peers))
}
