//! Issue 19: a client with its own did:key, outside sov, gets an access token from a
//! `sov node run` process with PyJWT (an RFC 7523 assertion signed with EdDSA) only once the
//! owner allows it, and uses it with the official `openai` package; the token's scope is
//! enforced, a tampered token, a replayed assertion and a wrong audience are refused
//! (`scripts/openai-venv`, pinned).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{Home, script};
use serde_json::Value;

const CLIENT: &str = r#"
import json, os, sys, time, urllib.request, urllib.error, uuid
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

base = os.environ["SOV_BASE"]
did = os.environ["CLIENT_DID"]
key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(os.environ["CLIENT_SEED"]))
meta = json.load(urllib.request.urlopen(base + "/.well-known/oauth-authorization-server"))
endpoint = meta["token_endpoint"]

def assertion(aud=endpoint):
    now = int(time.time())
    claims = {"iss": did, "sub": did, "aud": aud, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": did})

def ask(a, scope=None):
    form = {"grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": a}
    if scope:
        form["scope"] = scope
    req = urllib.request.Request(endpoint, data=urllib.parse.urlencode(form).encode(), method="POST")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)

def get(path, token):
    return get_at(base, path, token)

def get_at(at, path, token):
    req = urllib.request.Request(at + path, headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code

out = {}
if sys.argv[1] == "before":
    out["before"] = ask(assertion())
elif sys.argv[1] == "group":
    # A token from this node's endpoint, used on another member's gateway.
    status, grant = ask(assertion(), "infer")
    out["grant"] = [status, grant.get("scope"), grant.get("aud")]
    token = grant["access_token"]
    other = os.environ["OTHER_BASE"]
    from openai import OpenAI
    out["models_on_other"] = [m.id for m in OpenAI(base_url=other + "/v1", api_key=token).models.list().data]
    out["objects_on_other"] = get_at(other, "/api/v1/objects", token)
    out["jti"] = jwt.decode(token, options={"verify_signature": False})["jti"]
    out["token"] = token
elif sys.argv[1] == "status":
    out["status"] = get_at(os.environ["OTHER_BASE"], "/v1/models", os.environ["TOKEN"])
elif sys.argv[1] == "metrics":
    # Prometheus' own parsers: the classic text format's and the OpenMetrics one.
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
    req = urllib.request.Request(base + "/metrics", headers={"Authorization": "Bearer " + os.environ["ADMIN_TOKEN"]})
    with urllib.request.urlopen(req) as r:
        out["content_type"] = r.headers["Content-Type"]
        text = r.read().decode()
    samples = []
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            samples.append([s.name, s.labels, s.value])
    out["samples"] = samples
    out["openmetrics_families"] = len(list(om(text)))
else:
    a = assertion()
    status, grant = ask(a, "infer")
    out["grant"] = [status, grant.get("scope")]
    token = grant["access_token"]
    from openai import OpenAI
    client = OpenAI(base_url=base + "/v1", api_key=token)
    out["models"] = [m.id for m in client.models.list().data]
    out["objects"] = get("/api/v1/objects", token)
    sig = token[-3]
    out["tampered"] = get("/v1/models", token[:-3] + ("A" if sig != "A" else "B") + token[-2:])
    out["replayed"] = ask(a)
    out["wrong_audience"] = ask(assertion("http://elsewhere.example/oauth/token"))
    out["claims"] = jwt.decode(token, options={"verify_signature": False})
print(json.dumps(out))
"#;

/// The sum of the samples named `name` whose labels include `labels`, in the client's
/// `metrics` answer.
fn metric(m: &Value, name: &str, labels: &Value) -> f64 {
    m["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s[0] == name
                && labels
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| s[1][k] == *v)
        })
        .map(|s| s[2].as_f64().unwrap())
        .sum()
}

#[test]
fn a_did_key_client_gets_a_token_with_pyjwt_and_uses_it_with_the_openai_client() {
    let python = script("openai-venv", &[]).trim().to_string();
    let mut home = Home::new();
    home.start(&[]);
    let node: Value =
        serde_json::from_str(&std::fs::read_to_string(home.node_json()).unwrap()).unwrap();
    let base = node["api"].as_str().unwrap().to_owned();
    let seed = [42u8; 32];
    let client = sov_identity::Keypair::from_seed(&seed);
    let seed_hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let admin = std::fs::read_to_string(home.dir.path().join("admin.token")).unwrap();
    let run = |phase: &str| -> Value {
        let out = Command::new(&python)
            .args(["-c", CLIENT, phase])
            .env("ADMIN_TOKEN", admin.trim())
            .env("SOV_BASE", &base)
            .env("CLIENT_DID", client.did().to_string())
            .env("CLIENT_SEED", &seed_hex)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // Not allowed: refused.
    let before = run("before");
    assert_eq!(before["before"][0], 400, "{before}");
    assert_eq!(before["before"][1]["error"], "unauthorized_client");
    home.ok(&[
        "token",
        "allow",
        &client.did().to_string(),
        "--scope",
        "infer,predict",
    ]);
    let after = run("after");
    assert_eq!(after["grant"], serde_json::json!([200, "infer"]), "{after}");
    assert!(after["models"].is_array(), "{after}");
    assert_eq!(after["objects"], 403, "{after}");
    assert_eq!(after["tampered"], 401, "{after}");
    assert_eq!(after["replayed"][0], 401, "{after}");
    assert_eq!(after["replayed"][1]["error"], "invalid_client");
    assert_eq!(after["wrong_audience"][0], 401, "{after}");
    assert_eq!(after["claims"]["sub"], client.did().to_string());
    assert_eq!(after["claims"]["iss"], home.did());
    // The owner sees the token and revokes it.
    let ls: Value = serde_json::from_str(&home.ok(&["token", "ls", "--json"])).unwrap();
    let jti = ls["issued"][0]["jti"].as_str().unwrap().to_owned();
    assert_eq!(
        ls["allowed"][0]["scopes"],
        serde_json::json!(["infer", "predict"])
    );
    home.ok(&["token", "revoke", &jti]);
    let ls: Value = serde_json::from_str(&home.ok(&["token", "ls", "--json"])).unwrap();
    assert_eq!(ls["issued"][0]["revoked"], true);

    // /metrics parses with Prometheus' parsers and shows what happened above.
    let m = run("metrics");
    assert!(
        m["content_type"]
            .as_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{m}"
    );
    assert!(m["openmetrics_families"].as_u64().unwrap() >= 10, "{m}");
    let value = |name: &str, labels: Value| metric(&m, name, &labels);
    assert!(
        value(
            "sov_tokens_issued_total",
            serde_json::json!({"audience": "node"})
        ) >= 1.0,
        "{m}"
    );
    assert!(
        value(
            "sov_tokens_refused_total",
            serde_json::json!({"error": "unauthorized_client"})
        ) >= 1.0,
        "{m}"
    );
    assert!(
        value(
            "sov_tokens_refused_total",
            serde_json::json!({"error": "invalid_client"})
        ) >= 2.0,
        "{m}"
    );
    assert!(
        value("sov_tokens_rejected_total", serde_json::json!({})) >= 1.0,
        "{m}"
    );
    assert!(
        value(
            "sov_http_requests_total",
            serde_json::json!({"route": "/v1/models", "method": "GET", "status": "200"})
        ) >= 1.0,
        "{m}"
    );
    assert!(
        value(
            "sov_http_requests_total",
            serde_json::json!({"route": "/api/v1/objects", "status": "403"})
        ) >= 1.0,
        "{m}"
    );
    // Counters move: the scrape itself is counted by the next one.
    let before = value(
        "sov_http_requests_total",
        serde_json::json!({"route": "/metrics"}),
    );
    let again = run("metrics");
    let after = metric(
        &again,
        "sov_http_requests_total",
        &serde_json::json!({"route": "/metrics"}),
    );
    assert_eq!(after, before + 1.0, "{again}");
}

/// The distributed gateway across two `sov node run` processes: a group adopts a gateway
/// policy by vote through the CLI; a client with its own did:key (PyJWT) gets a token from
/// one member and uses it on the other with the `openai` client; the token opens only its
/// scope there; revoked on the first member, the second refuses it.
#[test]
fn a_token_from_one_member_process_works_on_another_until_revoked() {
    let python = script("openai-venv", &[]).trim().to_string();
    let mut a = Home::new();
    let mut b = Home::new();
    let boot = a.start(&[]);
    b.start(&["--bootstrap", &boot]);
    let base = |h: &Home| -> String {
        let node: Value =
            serde_json::from_str(&std::fs::read_to_string(h.node_json()).unwrap()).unwrap();
        node["api"].as_str().unwrap().to_owned()
    };
    let (base_a, base_b) = (base(&a), base(&b));
    let seed = [43u8; 32];
    let client = sov_identity::Keypair::from_seed(&seed);
    let seed_hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let run = |phase: &str, token: &str| -> Value {
        let out = Command::new(&python)
            .args(["-c", CLIENT, phase])
            .env("SOV_BASE", &base_a)
            .env("OTHER_BASE", &base_b)
            .env("TOKEN", token)
            .env("CLIENT_DID", client.did().to_string())
            .env("CLIENT_SEED", &seed_hex)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let json = |h: &Home, args: &[&str]| -> Value { serde_json::from_str(&h.ok(args)).unwrap() };
    let group = json(
        &a,
        &[
            "gov",
            "create",
            "--members",
            &format!("{},{}", a.did(), b.did()),
            "--threshold",
            "1/2",
            "--name",
            "market",
            "--json",
        ],
    );
    let gid = group["id"].as_str().unwrap().to_owned();
    common::wait("node b holds the group", || {
        json(&b, &["gov", "ls", "--json"])
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["id"] == gid.as_str()))
    });
    // Not allowed anywhere yet.
    assert_eq!(
        run("before", "")["before"][1]["error"],
        "unauthorized_client"
    );
    let allow = format!("{}=infer", client.did());
    let p = a
        .ok(&["gov", "propose", &gid, "gateway", "--allow", &allow])
        .trim()
        .to_owned();
    a.ok(&["gov", "vote", &p, "yes"]);
    for (name, h) in [("a", &a), ("b", &b)] {
        common::wait(&format!("node {name} passes the policy"), || {
            json(h, &["gov", "show", &p, "--json"])["status"] == "passed"
        });
    }
    let g = run("group", "");
    assert_eq!(g["grant"][0], 200, "{g}");
    assert_eq!(g["grant"][1], "infer", "{g}");
    assert_eq!(g["grant"][2], format!("sov:group:{gid}"), "{g}");
    assert!(g["models_on_other"].is_array(), "{g}");
    assert_eq!(g["objects_on_other"], 403, "{g}");
    let token = g["token"].as_str().unwrap().to_owned();
    a.ok(&["token", "revoke", g["jti"].as_str().unwrap()]);
    common::wait("node b refuses the revoked token", || {
        run("status", &token)["status"] == 401
    });
}
