//! Every route of the API through the router alone (`tower::ServiceExt::oneshot`, no
//! socket): the token is checked everywhere but `/health`, each route answers its success
//! status, bad input gets a 4xx with the error shape of its family (`/api`:
//! `{"error": {"message", "code"}}`; `/v1`: OpenAI's `{"error": {"message", "type",
//! "param", "code"}}`), and nothing is stored by a refused request. The node behind it is a
//! real one on loopback.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode},
};
use serde_json::{Value, json};
use sov_identity::Keypair;
use sov_node::{Config, Node};
use tower::ServiceExt as _;

const TOKEN: &str = "test-token";

struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

async fn call(app: &Router, method: Method, path: &str, token: Option<&str>, body: Body) -> Answer {
    call_at(app, None, method, path, token, body).await
}

/// [`call`], with a `Host` header when `host` is given.
async fn call_at(
    app: &Router,
    host: Option<&str>,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Body,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if path.starts_with("/v1")
        || path.contains("grants")
        || path.ends_with("/models")
        || path.contains("/models/")
        || path.contains("/gov/")
    {
        req = req.header("content-type", "application/json");
    }
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap()
        .to_vec();
    Answer { status, body }
}

async fn ok(app: &Router, method: Method, path: &str, body: Body) -> Answer {
    call(app, method, path, Some(TOKEN), body).await
}

fn json_body(v: Value) -> Body {
    Body::from(v.to_string())
}

/// `/api` errors: `{"error": {"message", "code"}}` with this code.
fn api_error(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{:?}", String::from_utf8_lossy(&a.body));
    let v = a.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

/// `/v1` errors: OpenAI's shape with this type.
fn oai_error(a: &Answer, status: StatusCode, kind: &str) {
    assert_eq!(a.status, status, "{:?}", String::from_utf8_lossy(&a.body));
    let v = a.json();
    let e = &v["error"];
    assert_eq!(e["type"], kind, "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

fn tiny_llama() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/fixtures/tiny-llama.gguf")
        .canonicalize()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_the_token_and_answers_with_its_status_and_error_shape() {
    let home = tempfile::tempdir().unwrap();
    let node = Node::start(home.path(), Keypair::generate(), Config::loopback())
        .await
        .unwrap();
    let app = sov_api::router(node.clone(), TOKEN);

    // The token: /health needs none; every other route refuses a missing or wrong one.
    assert_eq!(
        call(&app, Method::GET, "/health", None, Body::empty())
            .await
            .status,
        StatusCode::OK
    );
    let guarded = [
        (Method::GET, "/api/v1/identity"),
        (Method::GET, "/api/v1/peers"),
        (Method::GET, "/api/v1/objects"),
        (Method::POST, "/api/v1/objects"),
        (Method::GET, "/api/v1/objects/x"),
        (Method::GET, "/api/v1/objects/x/info"),
        (Method::DELETE, "/api/v1/objects/x"),
        (Method::POST, "/api/v1/objects/x/grants"),
        (Method::GET, "/api/v1/objects/x/car"),
        (Method::POST, "/api/v1/cars"),
        (Method::GET, "/api/v1/models"),
        (Method::POST, "/api/v1/models"),
        (Method::POST, "/api/v1/models/pull"),
        (Method::GET, "/api/v1/models/offered"),
        (Method::DELETE, "/api/v1/models/x"),
        (Method::POST, "/api/v1/models/x/share"),
        (Method::GET, "/api/v1/gov/groups"),
        (Method::POST, "/api/v1/gov/groups"),
        (Method::GET, "/api/v1/gov/groups/x"),
        (Method::GET, "/api/v1/gov/proposals"),
        (Method::POST, "/api/v1/gov/proposals"),
        (Method::GET, "/api/v1/gov/proposals/x"),
        (Method::POST, "/api/v1/gov/proposals/x/votes"),
        (Method::GET, "/api/v1/gov/proposals/x/certificate"),
    ];
    for (m, path) in &guarded {
        api_error(
            &call(&app, m.clone(), path, None, Body::empty()).await,
            StatusCode::UNAUTHORIZED,
            "missing_token",
        );
        api_error(
            &call(&app, m.clone(), path, Some("wrong"), Body::empty()).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        );
    }
    for (m, path) in [
        (Method::GET, "/v1/models"),
        (Method::GET, "/v1/models/x"),
        (Method::POST, "/v1/chat/completions"),
        (Method::POST, "/v1/completions"),
        (Method::POST, "/v1/embeddings"),
    ] {
        let a = call(&app, m.clone(), path, None, Body::empty()).await;
        oai_error(&a, StatusCode::UNAUTHORIZED, "invalid_request_error");
        assert_eq!(a.json()["error"]["code"], "missing_api_key");
        let a = call(&app, m, path, Some("wrong"), Body::empty()).await;
        assert_eq!(a.json()["error"]["code"], "invalid_api_key");
    }
    api_error(
        &ok(&app, Method::GET, "/nowhere", Body::empty()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Identity and peers.
    let me = ok(&app, Method::GET, "/api/v1/identity", Body::empty()).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["did"], node.did().to_string());
    let peers = ok(&app, Method::GET, "/api/v1/peers", Body::empty()).await;
    assert_eq!((peers.status, peers.json()), (StatusCode::OK, json!([])));

    // Objects: add, list, info, read, CAR out and in, grant, remove.
    let added = ok(
        &app,
        Method::POST,
        "/api/v1/objects?name=a.txt&replicas=0",
        Body::from("hello"),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED);
    let id = added.json()["id"].as_str().unwrap().to_string();
    let list = ok(&app, Method::GET, "/api/v1/objects", Body::empty()).await;
    assert_eq!(list.json()[0]["id"], id.as_str());
    let info = ok(
        &app,
        Method::GET,
        &format!("/api/v1/objects/{id}/info"),
        Body::empty(),
    )
    .await;
    assert_eq!(
        (info.status, info.json()["name"].clone()),
        (StatusCode::OK, json!("a.txt"))
    );
    let read = ok(
        &app,
        Method::GET,
        &format!("/api/v1/objects/{id}"),
        Body::empty(),
    )
    .await;
    assert_eq!(
        (read.status, read.body.as_slice()),
        (StatusCode::OK, b"hello".as_slice())
    );
    let car = ok(
        &app,
        Method::GET,
        &format!("/api/v1/objects/{id}/car"),
        Body::empty(),
    )
    .await;
    assert_eq!(car.status, StatusCode::OK);
    let imported = ok(
        &app,
        Method::POST,
        "/api/v1/cars",
        Body::from(car.body.clone()),
    )
    .await;
    assert_eq!(
        (imported.status, imported.json()["id"].clone()),
        (StatusCode::CREATED, json!(id))
    );
    let reader = Keypair::generate().did().to_string();
    let g = ok(
        &app,
        Method::POST,
        &format!("/api/v1/objects/{id}/grants"),
        json_body(json!({"did": reader})),
    )
    .await;
    assert_eq!(
        (g.status, g.json()["reader"].clone()),
        (StatusCode::OK, json!(reader))
    );
    api_error(
        &ok(
            &app,
            Method::POST,
            &format!("/api/v1/objects/{id}/grants"),
            json_body(json!({"did": "did:web:x"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    api_error(
        &ok(
            &app,
            Method::GET,
            "/api/v1/objects/not-a-cid",
            Body::empty(),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    api_error(
        &ok(&app, Method::POST, "/api/v1/cars", Body::from("not a CAR")).await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    let before = ok(&app, Method::GET, "/api/v1/objects", Body::empty())
        .await
        .json();
    assert_eq!(
        before.as_array().unwrap().len(),
        1,
        "refused requests stored nothing"
    );
    let del = ok(
        &app,
        Method::DELETE,
        &format!("/api/v1/objects/{id}"),
        Body::empty(),
    )
    .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    api_error(
        &ok(
            &app,
            Method::GET,
            &format!("/api/v1/objects/{id}/info"),
            Body::empty(),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Models: refusals first, then a real (tiny) model through every model route.
    api_error(
        &ok(
            &app,
            Method::POST,
            "/api/v1/models",
            json_body(json!({"path": "relative.gguf"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    api_error(
        &ok(&app, Method::DELETE, "/api/v1/models/nope", Body::empty()).await,
        StatusCode::NOT_FOUND,
        "model_not_found",
    );
    api_error(
        &ok(
            &app,
            Method::POST,
            "/api/v1/models/pull",
            json_body(json!({"id": "nope"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let path = tiny_llama().display().to_string();
    let m = ok(
        &app,
        Method::POST,
        "/api/v1/models",
        json_body(json!({"path": path, "name": "tiny"})),
    )
    .await;
    assert_eq!(
        (m.status, m.json()["kind"].clone()),
        (StatusCode::OK, json!("language"))
    );
    let ls = ok(&app, Method::GET, "/api/v1/models", Body::empty()).await;
    assert_eq!(ls.json()[0]["name"], "tiny");
    let offered = ok(&app, Method::GET, "/api/v1/models/offered", Body::empty()).await;
    assert_eq!(
        (offered.status, offered.json()),
        (StatusCode::OK, json!([]))
    );
    let shared = ok(
        &app,
        Method::POST,
        "/api/v1/models/tiny/share",
        json_body(json!({"did": reader})),
    )
    .await;
    assert_eq!(shared.status, StatusCode::OK);

    // The gateway.
    let models = ok(&app, Method::GET, "/v1/models", Body::empty()).await;
    assert_eq!(
        (models.status, models.json()["data"][0]["id"].clone()),
        (StatusCode::OK, json!("tiny"))
    );
    assert_eq!(
        ok(&app, Method::GET, "/v1/models/tiny", Body::empty())
            .await
            .status,
        StatusCode::OK
    );
    let missing = ok(&app, Method::GET, "/v1/models/nope", Body::empty()).await;
    oai_error(&missing, StatusCode::NOT_FOUND, "invalid_request_error");
    assert_eq!(missing.json()["error"]["code"], "model_not_found");
    oai_error(
        &ok(&app, Method::POST, "/v1/chat/completions", Body::from("{")).await,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );
    let chat = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0});
    let c = ok(&app, Method::POST, "/v1/chat/completions", json_body(chat)).await;
    assert_eq!(
        (c.status, c.json()["object"].clone()),
        (StatusCode::OK, json!("chat.completion"))
    );
    // Text parts of a message are read as their texts joined by line breaks (as llama.cpp
    // reads them), not glued together.
    let usage = |content: Value| {
        let chat = json!({"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 1, "temperature": 0});
        let app = app.clone();
        async move {
            let c = ok(&app, Method::POST, "/v1/chat/completions", json_body(chat)).await;
            assert_eq!(c.status, StatusCode::OK);
            c.json()["usage"]["prompt_tokens"].clone()
        }
    };
    let parts =
        json!([{"type": "text", "text": "What is"}, {"type": "text", "text": "the best book"}]);
    let joined = usage(parts).await;
    assert_eq!(joined, usage(json!("What is\nthe best book")).await);
    assert_ne!(joined, usage(json!("What isthe best book")).await);
    let cmpl = json!({"model": "tiny", "prompt": "a", "max_tokens": 2, "temperature": 0});
    let c = ok(&app, Method::POST, "/v1/completions", json_body(cmpl)).await;
    assert_eq!(
        (c.status, c.json()["object"].clone()),
        (StatusCode::OK, json!("text_completion"))
    );
    let bad = json!({"model": "tiny", "prompt": "a", "temperature": -1});
    oai_error(
        &ok(&app, Method::POST, "/v1/completions", json_body(bad)).await,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );
    // Finding 12 of issue 14: a prompt of token ids is a prompt (as OpenAI takes it); an id
    // outside the vocabulary is the caller's error.
    for prompt in [json!([1, 2, 3]), json!([[1, 2, 3]])] {
        let cmpl = json!({"model": "tiny", "prompt": prompt, "max_tokens": 2, "temperature": 0});
        let c = ok(&app, Method::POST, "/v1/completions", json_body(cmpl)).await;
        assert_eq!(
            c.status,
            StatusCode::OK,
            "{:?}",
            String::from_utf8_lossy(&c.body)
        );
        assert_eq!(c.json()["usage"]["prompt_tokens"], 3);
    }
    let cmpl = json!({"model": "tiny", "prompt": [4_000_000_000u32], "max_tokens": 2});
    let c = ok(&app, Method::POST, "/v1/completions", json_body(cmpl)).await;
    oai_error(&c, StatusCode::BAD_REQUEST, "invalid_request_error");
    assert!(
        c.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vocabulary")
    );
    let cmpl = json!({"model": "tiny", "prompt": {"not": "a prompt"}});
    let c = ok(&app, Method::POST, "/v1/completions", json_body(cmpl)).await;
    oai_error(&c, StatusCode::BAD_REQUEST, "invalid_request_error");
    let m = c.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(m.contains("token ids") && !m.contains("untagged"), "{m}");
    let emb = json!({"model": "tiny", "input": "a"});
    oai_error(
        &ok(&app, Method::POST, "/v1/embeddings", json_body(emb)).await,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );

    // A request naming no model (as llama.cpp's and LM Studio's clients send) is served by
    // the only model of its kind here; with none of that kind it is a 404, with two a 400
    // that names them.
    for model in [json!(null), json!("absent")] {
        let mut chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0});
        if model.is_null() {
            chat["model"] = model;
        }
        let c = ok(&app, Method::POST, "/v1/chat/completions", json_body(chat)).await;
        assert_eq!(
            (c.status, c.json()["model"].clone()),
            (StatusCode::OK, json!("tiny")),
            "{:?}",
            String::from_utf8_lossy(&c.body)
        );
    }
    let emb = ok(
        &app,
        Method::POST,
        "/v1/embeddings",
        json_body(json!({"input": "a"})),
    )
    .await;
    oai_error(&emb, StatusCode::NOT_FOUND, "invalid_request_error");
    assert_eq!(emb.json()["error"]["code"], "model_not_found");
    let m = ok(
        &app,
        Method::POST,
        "/api/v1/models",
        json_body(json!({"path": path, "name": "tiny-too"})),
    )
    .await;
    assert_eq!(m.status, StatusCode::OK);
    let cmpl = json!({"prompt": "a", "max_tokens": 2});
    let c = ok(&app, Method::POST, "/v1/completions", json_body(cmpl)).await;
    oai_error(&c, StatusCode::BAD_REQUEST, "invalid_request_error");
    let m = c.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        m.contains("tiny, tiny-too") || m.contains("tiny-too, tiny"),
        "{m}"
    );
    let rm = ok(
        &app,
        Method::DELETE,
        "/api/v1/models/tiny-too",
        Body::empty(),
    )
    .await;
    assert_eq!(rm.status, StatusCode::OK);

    // Removing the model answers with it, and the gateway no longer knows it.
    let rm = ok(&app, Method::DELETE, "/api/v1/models/tiny", Body::empty()).await;
    assert_eq!(
        (rm.status, rm.json()["name"].clone()),
        (StatusCode::OK, json!("tiny"))
    );
    assert!(node.loaded_models().await.is_empty());
    assert_eq!(
        ok(&app, Method::GET, "/v1/models/tiny", Body::empty())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Finding 12 of issue 14: removing a model that is not here is a 404, not a 400.
    api_error(
        &ok(&app, Method::DELETE, "/api/v1/models/tiny", Body::empty()).await,
        StatusCode::NOT_FOUND,
        "model_not_found",
    );
    node.shutdown().await;
}

/// Issue 18: the governance routes, on a group of one (this node), where every proposal
/// is decided by its own vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_routes_answer_with_their_status_and_error_shape() {
    let home = tempfile::tempdir().unwrap();
    let node = Node::start(home.path(), Keypair::generate(), Config::loopback())
        .await
        .unwrap();
    let app = sov_api::router(node.clone(), TOKEN);
    let me = node.did().to_string();
    let empty = ok(&app, Method::GET, "/api/v1/gov/groups", Body::empty()).await;
    assert_eq!((empty.status, empty.json()), (StatusCode::OK, json!([])));
    // Bad input: a DID that is not one, a rule naming no member's role, an unknown group.
    let bad = json!({"name": "g", "members": [{"did": "did:key:nope"}]});
    api_error(
        &ok(&app, Method::POST, "/api/v1/gov/groups", json_body(bad)).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let bad = json!({"name": "g", "members": [{"did": me}], "rule": "ops 2/3"});
    api_error(
        &ok(&app, Method::POST, "/api/v1/gov/groups", json_body(bad)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "refused",
    );
    assert!(node.gov_groups().await.unwrap().is_empty(), "nothing kept");
    api_error(
        &ok(&app, Method::GET, "/api/v1/gov/groups/x", Body::empty()).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let g = ok(
        &app,
        Method::POST,
        "/api/v1/gov/groups",
        json_body(
            json!({"name": "solo", "members": [{"did": me, "role": "ops"}], "rule": "ops 1/1"}),
        ),
    )
    .await;
    assert_eq!(
        g.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&g.body)
    );
    let gid = g.json()["id"].as_str().unwrap().to_owned();
    let shown = ok(
        &app,
        Method::GET,
        &format!("/api/v1/gov/groups/{gid}"),
        Body::empty(),
    )
    .await;
    assert_eq!(shown.json()["rule"], "ops unanimous");
    // A proposal of an unknown kind, or one missing its field, is refused.
    for action in [json!({"kind": "fly"}), json!({"kind": "promote"})] {
        let a = ok(
            &app,
            Method::POST,
            "/api/v1/gov/proposals",
            json_body(json!({"group": gid, "action": action})),
        )
        .await;
        api_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "refused");
    }
    let p = ok(
        &app,
        Method::POST,
        "/api/v1/gov/proposals",
        json_body(
            json!({"group": gid, "action": {"kind": "custom", "text": "hello"}, "voting_secs": 60}),
        ),
    )
    .await;
    assert_eq!(
        p.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&p.body)
    );
    let pid = p.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(p.json()["status"], "open");
    // Not decided yet: no certificate.
    api_error(
        &ok(
            &app,
            Method::GET,
            &format!("/api/v1/gov/proposals/{pid}/certificate"),
            Body::empty(),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "refused",
    );
    api_error(
        &ok(
            &app,
            Method::POST,
            &format!("/api/v1/gov/proposals/{pid}/votes"),
            json_body(json!({"choice": "maybe"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let v = ok(
        &app,
        Method::POST,
        &format!("/api/v1/gov/proposals/{pid}/votes"),
        json_body(json!({"choice": "yes"})),
    )
    .await;
    assert_eq!(
        (v.status, v.json()["status"].clone()),
        (StatusCode::OK, json!("passed"))
    );
    // A vote is final.
    api_error(
        &ok(
            &app,
            Method::POST,
            &format!("/api/v1/gov/proposals/{pid}/votes"),
            json_body(json!({"choice": "no"})),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "refused",
    );
    let list = ok(
        &app,
        Method::GET,
        &format!("/api/v1/gov/proposals?group={gid}"),
        Body::empty(),
    )
    .await;
    assert_eq!(list.json().as_array().unwrap().len(), 1);
    let cert = ok(
        &app,
        Method::GET,
        &format!("/api/v1/gov/proposals/{pid}/certificate"),
        Body::empty(),
    )
    .await;
    assert_eq!(cert.status, StatusCode::OK);
    let checked = sov_node::gov::verify_certificate(&cert.body).unwrap();
    assert_eq!(checked.proposal.to_string(), pid);
    api_error(
        &ok(
            &app,
            Method::GET,
            "/api/v1/gov/proposals/bafyr4iaamymk5r2mnbycoyktnlnzuo7xtrjfxbuhh5dch3oxyif6uflzyq",
            Body::empty(),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    node.shutdown().await;
}

/// Finding 4 of issue 14: small JSON routes take small bodies, every refusal has the JSON
/// shape of its family (`/v1` included: a 413 used to be `text/plain`), and no error echoes
/// its input back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_limited_per_route_and_errors_never_echo_input() {
    let home = tempfile::tempdir().unwrap();
    let node = Node::offline(home.path(), Keypair::generate(), Config::loopback())
        .await
        .unwrap();
    let app = sov_api::router(node.clone(), TOKEN);
    let marker = "Z".repeat(60 << 10);
    let big = format!(r#"{{"path": "/{marker}{marker}"}}"#);
    for path in [
        "/api/v1/models",
        "/api/v1/models/pull",
        "/api/v1/models/x/share",
    ] {
        let a = ok(&app, Method::POST, path, Body::from(big.clone())).await;
        api_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
        assert!(a.body.len() < 1024, "{path}: {} bytes back", a.body.len());
    }
    // Under the limit but wrong: the message quotes at most a few characters of the input.
    let cases = [
        ("/api/v1/models", json!({"path": marker})),
        ("/api/v1/models", json!({"path": 5, "name": marker})),
        ("/api/v1/models/pull", json!({"id": marker})),
        ("/api/v1/models/x/share", json!({"did": marker})),
        ("/api/v1/models", json!({marker.clone(): 1})),
    ];
    for (path, body) in cases {
        let a = ok(&app, Method::POST, path, json_body(body.clone())).await;
        assert!(a.status.is_client_error(), "{path}: {}", a.status);
        assert!(a.json()["error"]["code"].is_string());
        assert!(
            a.body.len() < 1024,
            "{path} {body:.40}: {} bytes back",
            a.body.len()
        );
    }
    let huge = Body::from(vec![b' '; sov_api::MAX_V1_BODY + 1]);
    let a = ok(&app, Method::POST, "/v1/completions", huge).await;
    oai_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error");
    let a = ok(
        &app,
        Method::POST,
        "/v1/chat/completions",
        json_body(json!({"model": marker, "messages": [{"role": marker, "content": "x"}]})),
    )
    .await;
    assert!(a.status.is_client_error());
    assert!(a.body.len() < 1024, "{} bytes back", a.body.len());
    // A wrong method is JSON too.
    let a = ok(&app, Method::PUT, "/v1/completions", Body::empty()).await;
    oai_error(&a, StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error");
    let a = ok(&app, Method::PUT, "/api/v1/models", Body::empty()).await;
    api_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    node.shutdown().await;
}

/// DNS rebinding: a page on another name, resolved to 127.0.0.1, reaches the API with its
/// own name in `Host`. Every route, `/health` included, refuses it; loopback names (any
/// port) and the names the node lists pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_name_is_refused_on_every_route() {
    let home = tempfile::tempdir().unwrap();
    let node = Node::start(home.path(), Keypair::generate(), Config::loopback())
        .await
        .unwrap();
    let with_host = |app: &Router, path: &str, host: &str| {
        let (app, path, host) = (app.clone(), path.to_owned(), host.to_owned());
        async move {
            call_at(
                &app,
                Some(&host),
                Method::GET,
                &path,
                Some(TOKEN),
                Body::empty(),
            )
            .await
        }
    };
    let app = sov_api::router(node.clone(), TOKEN);
    for path in ["/health", "/api/v1/identity", "/v1/models", "/nope"] {
        for host in [
            "evil.example",
            "evil.example:7878",
            "127.0.0.1.evil.example",
            "node.lan",
        ] {
            let a = with_host(&app, path, host).await;
            api_error(&a, StatusCode::FORBIDDEN, "host_not_allowed");
        }
        for host in [
            "localhost",
            "localhost:7878",
            "LOCALHOST.",
            "127.0.0.1:39999",
            "127.1.2.3",
            "[::1]:7878",
            "app.localhost",
        ] {
            let a = with_host(&app, path, host).await;
            assert_ne!(a.status, StatusCode::FORBIDDEN, "{path} with {host}");
        }
    }
    // A node that serves others lists its names.
    let app = sov_api::router_for_hosts(node.clone(), TOKEN, &["Node.LAN".into()]);
    assert_eq!(
        with_host(&app, "/health", "node.lan:7878").await.status,
        StatusCode::OK
    );
    api_error(
        &with_host(&app, "/health", "evil.example").await,
        StatusCode::FORBIDDEN,
        "host_not_allowed",
    );
    let any = sov_api::router_for_hosts(node.clone(), TOKEN, &["*".into()]);
    assert_eq!(
        with_host(&any, "/health", "evil.example").await.status,
        StatusCode::OK
    );
    node.shutdown().await;
}
