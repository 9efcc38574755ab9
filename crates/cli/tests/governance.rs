//! Issue 18: governance across three `sov node run` processes through the CLI: a 2/3
//! proposal passes on every node on the second yes and stays passed, its certificate
//! verifies with no node running, and a promotion passed by vote is served under the
//! group's name on `/v1` by every member node (SmolLM2, `scripts/fetch-models`).

#![allow(clippy::unwrap_used)]

mod common;

use common::{Home, models_dir, wait};
use serde_json::Value;

fn json(home: &Home, args: &[&str]) -> Value {
    serde_json::from_str(&home.ok(args)).unwrap()
}

fn status(home: &Home, proposal: &str) -> String {
    json(home, &["gov", "show", proposal, "--json"])["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn api(home: &Home) -> (String, String) {
    let node: Value =
        serde_json::from_str(&std::fs::read_to_string(home.node_json()).unwrap()).unwrap();
    let token = std::fs::read_to_string(home.dir.path().join("admin.token")).unwrap();
    (
        node["api"].as_str().unwrap().to_owned(),
        format!("Bearer {}", token.trim()),
    )
}

#[test]
fn three_node_processes_decide_by_two_thirds_and_serve_the_promoted_model() {
    let gguf = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut homes: Vec<Home> = (0..3).map(|_| Home::new()).collect();
    let model = homes[0]
        .ok(&[
            "model",
            "import",
            gguf.to_str().unwrap(),
            "--name",
            "smollm2",
            "--license",
            "Apache-2.0",
        ])
        .trim()
        .to_owned();
    let boot = homes[0].start(&[]);
    for h in &mut homes[1..] {
        h.start(&["--bootstrap", &boot]);
    }
    let dids: Vec<String> = homes.iter().map(Home::did).collect();
    let group = json(
        &homes[0],
        &[
            "gov",
            "create",
            "--members",
            &dids.join(","),
            "--threshold",
            "2/3",
            "--name",
            "coop",
            "--json",
        ],
    );
    let gid = group["id"].as_str().unwrap().to_owned();
    assert_eq!(group["members"].as_array().unwrap().len(), 3);
    for (i, h) in homes.iter().enumerate() {
        wait(&format!("node {i} holds the group"), || {
            json(h, &["gov", "ls", "--json"])
                .as_array()
                .is_some_and(|a| a.iter().any(|g| g["id"] == gid.as_str()))
        });
    }

    // A text proposal: open after one yes of three, passed on the second, on every node.
    let p = homes[1]
        .ok(&[
            "gov",
            "propose",
            &gid,
            "custom",
            "--text",
            "adopt the charter",
        ])
        .trim()
        .to_owned();
    for (i, h) in homes.iter().enumerate() {
        wait(&format!("node {i} holds the proposal"), || {
            h.run(&["gov", "show", &p, "--json"]).status.success()
        });
    }
    homes[0].ok(&["gov", "vote", &p, "yes"]);
    wait("node 2 counts the first vote", || {
        json(&homes[2], &["gov", "show", &p, "--json"])["votes"]
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    for h in &homes {
        assert_eq!(status(h, &p), "open");
    }
    let again = homes[0].run(&["gov", "vote", &p, "no"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("final"));
    homes[1].ok(&["gov", "vote", &p, "yes"]);
    for (i, h) in homes.iter().enumerate() {
        wait(&format!("node {i} sees it passed"), || {
            status(h, &p) == "passed"
        });
    }
    // A later contrary vote does not undo it.
    let late = json(&homes[2], &["gov", "vote", &p, "no", "--json"]);
    assert_eq!(late["status"], "passed");
    wait("node 0 counts the late no", || {
        json(&homes[0], &["gov", "show", &p, "--json"])["votes"]
            .as_array()
            .unwrap()
            .len()
            == 3
    });
    assert_eq!(status(&homes[0], &p), "passed");
    let cert = homes[2].dir.path().join("charter.cert");
    homes[2].ok(&["gov", "show", &p, "--cert", cert.to_str().unwrap()]);
    let text = homes[0].ok(&["gov", "show", &p]);
    assert!(text.contains("2/3") && text.contains("holds"), "{text}");

    // A promotion: served under the group's name on /v1 by every member once passed.
    let promo = homes[0]
        .ok(&[
            "gov",
            "propose",
            &gid,
            "promote",
            &model,
            "--deadline",
            "10m",
        ])
        .trim()
        .to_owned();
    wait("node 1 holds the promotion", || {
        homes[1].run(&["gov", "show", &promo]).status.success()
    });
    homes[0].ok(&["gov", "vote", &promo, "yes"]);
    homes[1].ok(&["gov", "vote", &promo, "yes"]);
    for (i, h) in homes.iter().enumerate() {
        let (base, auth) = api(h);
        wait(
            &format!("node {i} serves the promoted model as coop"),
            || {
                ureq::get(format!("{base}/v1/models/coop"))
                    .header("Authorization", &auth)
                    .call()
                    .ok()
                    .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                    .is_some_and(|v| v["sov"]["manifest"] == model.as_str() && v["id"] == "coop")
            },
        );
        let listed: Value = ureq::get(format!("{base}/v1/models"))
            .header("Authorization", &auth)
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        let names: Vec<&str> = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["id"].as_str())
            .collect();
        assert!(
            names.contains(&"coop") && names.contains(&"default"),
            "{names:?}"
        );
    }
    let (base, auth) = api(&homes[2]);
    let answer: Value = ureq::post(format!("{base}/v1/chat/completions"))
        .header("Authorization", &auth)
        .send_json(serde_json::json!({
            "model": "coop",
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "temperature": 0
        }))
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert!(
        !answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{answer}"
    );
    let shown = json(&homes[2], &["gov", "show", &promo, "--json"]);
    assert_eq!(shown["enacted"]["state"], "done", "{shown}");

    // Every node stops; the certificate still holds, checked in a home that never ran.
    for h in &mut homes {
        let mut c = h.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("charter.cert");
    std::fs::copy(&cert, &copy).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sov"))
        .args(["gov", "verify", copy.to_str().unwrap()])
        .env("SOV_HOME", elsewhere.path().join("no-home"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("valid") && said.contains("passed"), "{said}");
    // One byte changed: refused.
    let mut bytes = std::fs::read(&copy).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    std::fs::write(&copy, &bytes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sov"))
        .args(["gov", "verify", copy.to_str().unwrap()])
        .env("SOV_HOME", elsewhere.path().join("no-home"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not hold"));
}
