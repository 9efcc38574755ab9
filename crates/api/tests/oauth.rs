//! Issue 19, first part: OAuth 2.0 access tokens for clients other than the owner, through
//! the router (`tower::ServiceExt::oneshot`) of a real node: a did:key client assertion
//! (RFC 7523) is exchanged at `/oauth/token` for an access token only once the owner allows
//! the DID; the token opens the routes of its scopes and no other; forged, replayed,
//! wrong-audience and tampered tokens are refused; a revoked token stops working.

#![allow(clippy::unwrap_used)]

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode},
};
use serde_json::Value;
use sov_identity::Keypair;
use sov_node::{Config, Node, auth::make_assertion};
use tower::ServiceExt as _;

const TOKEN: &str = "test-token";
const HOST: &str = "127.0.0.1:7878";
const ENDPOINT: &str = "http://127.0.0.1:7878/oauth/token";

async fn call(
    app: &Router,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    form: Option<String>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST);
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = match form {
        Some(f) => {
            req = req.header("content-type", "application/x-www-form-urlencoded");
            Body::from(f)
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn form(assertion: &str, scope: Option<&str>) -> String {
    let mut f = format!(
        "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}"
    );
    if let Some(s) = scope {
        f.push_str(&format!(
            "&scope={}",
            s.replace(' ', "+").replace(':', "%3A")
        ));
    }
    f
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_did_key_client_gets_a_token_for_its_scopes_only_once_allowed() {
    let home = tempfile::tempdir().unwrap();
    let node = Node::start(home.path(), Keypair::generate(), Config::loopback())
        .await
        .unwrap();
    let app = sov_api::router(node.clone(), TOKEN);
    let client = Keypair::from_seed(&[77; 32]);

    // Discovery: the token endpoint and the node's key.
    let (s, meta) = call(
        &app,
        Method::GET,
        "/.well-known/oauth-authorization-server",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(meta["token_endpoint"], ENDPOINT);
    assert_eq!(meta["jwks"]["keys"][0]["kid"], node.did().to_string());
    assert_eq!(meta["jwks"]["keys"][0]["crv"], "Ed25519");

    // Not allowed yet.
    let a = make_assertion(&client, ENDPOINT, now(), "j1");
    let (s, e) = call(
        &app,
        Method::POST,
        "/oauth/token",
        None,
        Some(form(&a, None)),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unauthorized_client"))
    );

    node.token_allow(
        sov_node::auth::Who::Did(client.did()),
        &["infer".into(), "predict".into()],
    )
    .await
    .unwrap();
    let a = make_assertion(&client, ENDPOINT, now(), "j2");
    let (s, g) = call(
        &app,
        Method::POST,
        "/oauth/token",
        None,
        Some(form(&a, Some("infer"))),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{g}");
    assert_eq!(
        (g["token_type"].as_str(), g["scope"].as_str()),
        (Some("Bearer"), Some("infer"))
    );
    let token = g["access_token"].as_str().unwrap().to_owned();

    // The same assertion again, another audience, a scope it may not get, garbage.
    let (s, e) = call(
        &app,
        Method::POST,
        "/oauth/token",
        None,
        Some(form(&a, None)),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let elsewhere = make_assertion(&client, "http://elsewhere.example/oauth/token", now(), "j3");
    let (s, e) = call(
        &app,
        Method::POST,
        "/oauth/token",
        None,
        Some(form(&elsewhere, None)),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let a = make_assertion(&client, ENDPOINT, now(), "j4");
    let (s, e) = call(
        &app,
        Method::POST,
        "/oauth/token",
        None,
        Some(form(&a, Some("admin"))),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    // Forged: the client's DID as iss and sub, signed by another key.
    let other = Keypair::from_seed(&[78; 32]);
    let forged = sov_identity::jwt::sign_compact(
        &other,
        &serde_json::json!({"alg": "EdDSA"}),
        &sov_identity::jwt::AssertionClaims {
            iss: client.did().to_string(),
            sub: client.did().to_string(),
            aud: sov_identity::jwt::Audience::One(ENDPOINT.into()),
            exp: now() + 60,
            iat: Some(now()),
            nbf: None,
            jti: "j5".into(),
        },
    );
    let (s, _) = call(
        &app,
        Method::POST,
        "/oauth/token",
        None,
        Some(form(&forged, None)),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, e) = call(
        &app,
        Method::POST,
        "/oauth/token",
        None,
        Some("grant_type=password".into()),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_grant_type"))
    );

    // The token opens its scope's routes, and no other.
    let (s, _) = call(&app, Method::GET, "/v1/models", Some(&token), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = call(&app, Method::GET, "/api/v1/objects", Some(&token), None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("insufficient_scope"))
    );
    let (s, e) = call(&app, Method::POST, "/v1/embeddings", Some(&token), None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("insufficient_scope"))
    );
    // Tampered: one character of the signature changed.
    let mut t = token.clone().into_bytes();
    let n = t.len() - 3;
    t[n] = if t[n] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(t).unwrap();
    let (s, _) = call(&app, Method::GET, "/v1/models", Some(&tampered), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, e) = call(&app, Method::GET, "/api/v1/peers", Some(&tampered), None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );

    // Revoked: refused from then on; the owner's token still opens everything.
    let jti = node.token_list().await.unwrap()[0].jti.clone();
    node.token_revoke(&jti).await.unwrap();
    let (s, _) = call(&app, Method::GET, "/v1/models", Some(&token), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(node.token_list().await.unwrap()[0].revoked);
    let (s, _) = call(&app, Method::GET, "/api/v1/objects", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    node.shutdown().await;
}

/// Every route, with the scope it needs.
fn routes() -> Vec<(Method, &'static str, &'static str)> {
    vec![
        (Method::GET, "/v1/models", "infer"),
        (Method::GET, "/v1/models/x", "infer"),
        (Method::POST, "/v1/chat/completions", "infer"),
        (Method::POST, "/v1/completions", "infer"),
        (Method::POST, "/v1/embeddings", "embed"),
        (Method::POST, "/api/v1/models/x/predict", "predict"),
        (Method::POST, "/api/v1/models/x/eval", "predict"),
        (Method::GET, "/api/v1/objects", "data:read"),
        (Method::GET, "/api/v1/objects/x", "data:read"),
        (Method::GET, "/api/v1/objects/x/info", "data:read"),
        (Method::GET, "/api/v1/objects/x/car", "data:read"),
        (Method::POST, "/api/v1/objects", "data:write"),
        (Method::DELETE, "/api/v1/objects/x", "data:write"),
        (Method::POST, "/api/v1/cars", "data:write"),
        (Method::POST, "/api/v1/objects/x/grants", "admin"),
        (Method::GET, "/api/v1/federations", "fl:join"),
        (Method::GET, "/api/v1/federations/x", "fl:join"),
        (Method::POST, "/api/v1/federations/x/join", "fl:join"),
        (Method::POST, "/api/v1/federations", "admin"),
        (Method::DELETE, "/api/v1/federations/x", "admin"),
        (Method::GET, "/api/v1/gov/groups", "gov:vote"),
        (Method::GET, "/api/v1/gov/proposals/x", "gov:vote"),
        (Method::POST, "/api/v1/gov/proposals/x/votes", "gov:vote"),
        (Method::POST, "/api/v1/gov/proposals", "admin"),
        (Method::POST, "/api/v1/gov/groups", "admin"),
        (Method::GET, "/api/v1/identity", "admin"),
        (Method::GET, "/api/v1/peers", "admin"),
        (Method::GET, "/api/v1/models", "admin"),
        (Method::POST, "/api/v1/models", "admin"),
        (Method::POST, "/api/v1/models/pull", "admin"),
        (Method::POST, "/api/v1/models/x/share", "admin"),
        (Method::DELETE, "/api/v1/models/x", "admin"),
        (Method::GET, "/api/v1/tokens", "admin"),
        (Method::GET, "/api/v1/gov/groups/x", "gov:vote"),
        (Method::GET, "/api/v1/gov/proposals", "gov:vote"),
        (
            Method::GET,
            "/api/v1/gov/proposals/x/certificate",
            "gov:vote",
        ),
        (Method::GET, "/api/v1/models/offered", "admin"),
        (Method::GET, "/api/v1/models/x", "admin"),
        (Method::POST, "/api/v1/tokens", "admin"),
        (Method::POST, "/api/v1/tokens/allow", "admin"),
        (Method::DELETE, "/api/v1/tokens/x", "admin"),
        (Method::GET, "/metrics", "admin"),
    ]
}

#[test]
fn every_route_needs_the_scope_the_table_gives() {
    use sov_api::oauth::required_scope;
    for (m, path, scope) in routes() {
        assert_eq!(required_scope(&m, path), scope, "{m} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_token_without_its_scope_and_lets_one_with_it_through() {
    let home = tempfile::tempdir().unwrap();
    let node = Node::start(home.path(), Keypair::generate(), Config::loopback())
        .await
        .unwrap();
    let app = sov_api::router(node.clone(), TOKEN);
    let client = Keypair::from_seed(&[79; 32]);
    let mut tokens = std::collections::BTreeMap::new();
    for (s, _) in sov_node::auth::SCOPES {
        let g = node
            .token_issue(client.did(), &[s.into()], 600)
            .await
            .unwrap();
        tokens.insert(s, g.access_token);
    }
    for (m, path, scope) in routes() {
        let other = if scope == "infer" { "embed" } else { "infer" };
        let (s, e) = call(&app, m.clone(), path, Some(&tokens[other]), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{m} {path} with {other}: {e}");
        let (s, e) = call(&app, m.clone(), path, Some(&tokens[scope]), None).await;
        assert!(
            s != StatusCode::FORBIDDEN && s != StatusCode::UNAUTHORIZED,
            "{m} {path} with {scope}: {s} {e}"
        );
        if scope != "admin" {
            // admin opens everything.
            let (s, _) = call(&app, m.clone(), path, Some(&tokens["admin"]), None).await;
            assert!(
                s != StatusCode::FORBIDDEN && s != StatusCode::UNAUTHORIZED,
                "{m} {path}"
            );
        }
    }
    node.shutdown().await;
}

/// A request from `addr` with `bearer`, as the HTTP server hands it to the router.
async fn from(
    app: &Router,
    addr: &str,
    path: &str,
    bearer: Option<&str>,
) -> axum::response::Response {
    let mut req = Request::builder().uri(path).header("host", HOST);
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut req = req.body(Body::empty()).unwrap();
    req.extensions_mut().insert(axum::extract::ConnectInfo(
        addr.parse::<std::net::SocketAddr>().unwrap(),
    ));
    app.clone().oneshot(req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after_per_token_and_per_address_but_not_the_owner() {
    let home = tempfile::tempdir().unwrap();
    let node = Node::start(home.path(), Keypair::generate(), Config::loopback())
        .await
        .unwrap();
    // 12 a minute: a burst of 5.
    let limits = sov_api::limit::RateLimits {
        per_token: 12,
        per_address: 12,
    };
    let app = sov_api::router_with(node.clone(), TOKEN, &[], limits);
    let client = Keypair::from_seed(&[78; 32]);
    let grant = node
        .token_issue(client.did(), &["infer".into()], 600)
        .await
        .unwrap();

    // A stranger without a token: five answers (401), then 429 with Retry-After.
    for _ in 0..5 {
        let r = from(&app, "192.0.2.1:5000", "/api/v1/identity", None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = from(&app, "192.0.2.1:5001", "/api/v1/identity", None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&wait), "{wait}");
    // Another address is not held back by it.
    let r = from(&app, "192.0.2.2:5000", "/api/v1/identity", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // An IPv6 client is one /64.
    for i in 0..5 {
        let r = from(&app, &format!("[2001:db8::{i}]:80"), "/health", None).await;
        assert_eq!(r.status(), StatusCode::OK, "/health is never limited");
        let r = from(&app, &format!("[2001:db8::{i}]:80"), "/v1/models", None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = from(&app, "[2001:db8::99]:80", "/v1/models", None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");

    // One token from many addresses: limited by the token.
    for i in 0..5 {
        let r = from(
            &app,
            &format!("198.51.100.{i}:1"),
            "/v1/models",
            Some(&grant.access_token),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = from(
        &app,
        "198.51.100.9:1",
        "/v1/models",
        Some(&grant.access_token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);

    // The owner is never limited.
    for _ in 0..50 {
        let r = from(&app, "192.0.2.1:5000", "/api/v1/identity", Some(TOKEN)).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Every refusal is counted.
    let text = node.metrics_text().await;
    assert!(
        text.contains("sov_http_rate_limited_total{by=\"address\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("sov_http_rate_limited_total{by=\"token\"} 1"),
        "{text}"
    );
    node.shutdown().await;
}

/// The prompt cache is each caller's own: a client sending the prompt another client sent
/// gets no cached tokens (and no faster prompt), so it cannot learn what others asked; the
/// same client sending it again does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_learn_another_clients_prompt_from_the_prompt_cache() {
    let home = tempfile::tempdir().unwrap();
    let node = Node::start(home.path(), Keypair::generate(), Config::loopback())
        .await
        .unwrap();
    let app = sov_api::router(node.clone(), TOKEN);
    let json = |path: &str, bearer: &str, body: Value| {
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", HOST)
            .header("authorization", format!("Bearer {bearer}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/fixtures/tiny-llama.gguf")
        .display()
        .to_string();
    let (s, e) = json(
        "/api/v1/models",
        TOKEN,
        serde_json::json!({"path": fixture, "name": "tiny"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    let mut tokens = Vec::new();
    for seed in [81u8, 82] {
        let client = Keypair::from_seed(&[seed; 32]);
        let g = node
            .token_issue(client.did(), &["infer".into()], 600)
            .await
            .unwrap();
        tokens.push(g.access_token);
    }
    let secret = serde_json::json!({
        "model": "tiny", "max_tokens": 2, "temperature": 0,
        "messages": [{"role": "user", "content": "my diagnosis is confidential: a b c d e f g"}],
    });
    let cached = |bearer: String| {
        let ask = json("/v1/chat/completions", &bearer, secret.clone());
        async move {
            let (s, r) = ask.await;
            assert_eq!(s, StatusCode::OK, "{r}");
            r["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap()
        }
    };
    assert_eq!(cached(tokens[0].clone()).await, 0, "client A, first time");
    assert_eq!(
        cached(tokens[1].clone()).await,
        0,
        "client B: A's prompt is not B's"
    );
    assert_eq!(cached(TOKEN.into()).await, 0, "the owner: nor the owner's");
    assert!(
        cached(tokens[0].clone()).await > 0,
        "client A again: its own"
    );
    node.shutdown().await;
}
