//! Issue 17: federations across `sov node run` processes on loopback, driven by the CLI.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Home, signal};

fn status(home: &Home, id: &str) -> serde_json::Value {
    serde_json::from_str(&home.ok(&["fl", "status", id, "--json"])).unwrap()
}

/// Poll `ok` every 200 ms for up to `secs` seconds; fail loudly with `what`.
fn wait_long(what: &str, secs: u64, ok: impl FnMut() -> bool) {
    wait_long_or(what, secs, ok, String::new);
}

/// [`wait_long`], and on a timeout `report` says what the nodes saw.
fn wait_long_or(what: &str, secs: u64, mut ok: impl FnMut() -> bool, report: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        if Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}\n{}", report());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn five_node_processes_train_digits_with_secagg_and_dp_through_an_aggregator_kill() {
    let mut homes: Vec<Home> = (0..5).map(|_| Home::new()).collect();
    let boot = homes[0].start(&[]);
    for h in &mut homes[1..] {
        h.start(&["--bootstrap", &boot]);
    }
    let created: serde_json::Value = serde_json::from_str(&homes[0].ok(&[
        "fl",
        "create",
        "--task",
        "digits",
        "--model",
        "logreg",
        "--rounds",
        "20",
        "--secagg",
        "--dp-noise",
        "0.5",
        "--dp-clip",
        "0.5",
        "--local-epochs",
        "3",
        "--lr",
        "0.2",
        "--min-clients",
        "3",
        "--round-timeout",
        "20",
        "--data",
        "digits:1/5",
        "--json",
    ]))
    .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    for (i, h) in homes.iter().enumerate().skip(1) {
        let shard = format!("digits:{}/5", i + 1);
        let s: serde_json::Value =
            serde_json::from_str(&h.ok(&["fl", "join", &id, "--data", &shard, "--json"])).unwrap();
        assert_eq!(s["id"], id.as_str());
    }
    // The aggregator of the round under way is frozen (SIGSTOP), then killed if no other
    // node took a record of that round from it: so the kill always falls mid-round. Rounds
    // take well under a second; one that closed before the freeze is let go and the next
    // is tried.
    let mut target = 4;
    let (closed, victim, v) = loop {
        wait_long(&format!("round {target}"), 300, || {
            status(&homes[0], &id)["round"].as_u64() >= Some(target)
        });
        let s = status(&homes[0], &id);
        let closed = s["round"].as_u64().unwrap();
        let victim = s["aggregator"].as_str().unwrap().to_owned();
        let v = homes.iter().position(|h| h.did() == victim).unwrap();
        signal(homes[v].pid(), "-STOP");
        std::thread::sleep(Duration::from_secs(2));
        let others_at = homes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != v)
            .map(|(_, h)| status(h, &id)["round"].as_u64().unwrap())
            .max()
            .unwrap();
        if others_at == closed {
            signal(homes[v].pid(), "-KILL");
            break (closed as usize, victim, v);
        }
        signal(homes[v].pid(), "-CONT");
        target = others_at + 1;
        assert!(target < 15, "no round could be caught under way");
    };
    let _ = homes[v].child.take().unwrap().wait();
    let alive: Vec<&Home> = homes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != v)
        .map(|(_, h)| h)
        .collect();
    // On a timeout, what each live node sees and the end of its log: enough to tell a
    // stuck round from a slow one.
    wait_long_or(
        "every live node to finish",
        600,
        || {
            alive.iter().all(|h| {
                let s = status(h, &id);
                s["finished"] == true && s["has_model"] == true
            })
        },
        || {
            let mut out = String::new();
            for h in &alive {
                let s = status(h, &id);
                let log = h.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                out += &format!(
                    "node {}: round {} aggregator {} live {} has_model {}\n{}\n",
                    h.did(),
                    s["round"],
                    s["aggregator"],
                    s["live"],
                    s["has_model"],
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            out
        },
    );
    let first = status(alive[0], &id);
    assert_eq!(first["round"], 20);
    for h in &alive[1..] {
        assert_eq!(status(h, &id)["model"], first["model"]);
    }
    let history = first["history"].as_array().unwrap();
    // The round the aggregator died in was closed by another.
    assert_ne!(history[closed]["aggregator"], victim.as_str());
    assert!(first["epsilon"].as_f64().unwrap() > 0.0);
    // Every live node holds the final model; its manifest verifies, names the round's
    // aggregator and records ε; it classifies the digits' test split.
    let model = first["model_id"].as_str().unwrap().to_owned();
    for h in &alive {
        wait_long("the final model on every live node", 60, || {
            h.run(&["model", "show", &model, "--json"]).status.success()
        });
        let m: serde_json::Value =
            serde_json::from_str(&h.ok(&["model", "show", &model, "--json"])).unwrap();
        assert_eq!(m["signature_valid"], true);
        assert_eq!(m["kind"], "classifier");
        assert_eq!(m["signer"], history[19]["aggregator"]);
        assert_eq!(m["training"]["round"], 20);
        let eps: f64 = m["training"]["privacy"]["epsilon"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((eps - first["epsilon"].as_f64().unwrap()).abs() < 1e-9);
    }
    let report: serde_json::Value = serde_json::from_str(&alive[3].ok(&[
        "model",
        "eval",
        &model,
        "--data",
        "digits:test",
        "--json",
    ]))
    .unwrap();
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.85, "accuracy {accuracy}");
    // One node answers a prediction over its API.
    let node: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(alive[1].node_json()).unwrap()).unwrap();
    let token = std::fs::read_to_string(alive[1].dir.path().join("admin.token")).unwrap();
    let row: Vec<f32> = (0..64).map(|i| ((i * 7) % 17) as f32).collect();
    let mut resp = ureq::post(format!(
        "{}/api/v1/models/{model}/predict",
        node["api"].as_str().unwrap()
    ))
    .header("Authorization", format!("Bearer {}", token.trim()))
    .send_json(serde_json::json!({ "rows": [row] }))
    .unwrap();
    let p: serde_json::Value = resp.body_mut().read_json().unwrap();
    let probs = p["probabilities"][0].as_array().unwrap();
    assert_eq!(probs.len(), 10);
    let sum: f64 = probs.iter().map(|x| x.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "{sum}");
    // The text status draws the curves.
    let text = alive[1].ok(&["fl", "status", &id]);
    assert!(text.contains("(finished)"), "{text}");
    assert!(text.contains('█') || text.contains('▇'), "{text}");
    let ls = alive[2].ok(&["fl", "ls"]);
    assert!(ls.contains(&id), "{ls}");
}

/// Four nodes, each holding one census region of a real survey (R Ecdat's HI, fetched by
/// `scripts/fetch-data`), standardising with their own statistics, train one logistic
/// regression under SecAgg; on the regions' pooled test rows it is within 3 points of the
/// same data pooled in one simulation run.
#[test]
fn four_regions_of_a_real_survey_train_as_well_as_the_pooled_data() {
    let data = common::real_data().join("health-insurance");
    let file = |name: &str| {
        data.join(format!("{name}.csv"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    const ROUNDS: &str = "10";
    let training = [
        "--model",
        "logreg",
        "--rounds",
        ROUNDS,
        "--local-epochs",
        "1",
        "--lr",
        "0.1",
        "--batch",
        "16",
    ];

    // The pooled run: all regions' training rows in one simulation, four IID clients.
    let sim = Home::new();
    let out = sim.ok(&[
        &[
            "fl",
            "simulate",
            "--data",
            &file("pooled"),
            "--test",
            &file("test"),
            "--standardize",
            "--clients",
            "4",
            "--partition",
            "iid",
            "--json",
        ][..],
        &training[..],
    ]
    .concat());
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["final"], true);
    let pooled = last["accuracy"].as_f64().unwrap();
    let other = sim.dir.path().join("other.csv");
    std::fs::write(&other, "a,b,label\n1,2,0\n").unwrap();
    let out = sim.run(&[
        "fl",
        "simulate",
        "--data",
        &file("pooled"),
        "--test",
        other.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("has the columns"),
        "{e}"
    );

    // The federation: one node per region.
    let regions = ["northcentral", "other", "south", "west"];
    let mut homes: Vec<Home> = regions.iter().map(|_| Home::new()).collect();
    let boot = homes[0].start(&[]);
    for h in &mut homes[1..] {
        h.start(&["--bootstrap", &boot]);
    }
    let created: serde_json::Value = serde_json::from_str(
        &homes[0].ok(&[
            &[
                "fl",
                "create",
                "--task",
                "csv:11:2",
                "--name",
                "health-insurance",
                "--secagg",
                "--min-clients",
                "4",
                "--round-timeout",
                "30",
                "--data",
                &file(regions[0]),
                "--standardize",
                "--json",
            ][..],
            &training[..],
        ]
        .concat()),
    )
    .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    for (h, region) in homes.iter().zip(regions).skip(1) {
        h.ok(&["fl", "join", &id, "--data", &file(region), "--standardize"]);
    }
    wait_long("every node to finish", 600, || {
        homes.iter().all(|h| {
            let s = status(h, &id);
            s["finished"] == true && s["has_model"] == true
        })
    });
    let s = status(&homes[0], &id);
    assert_eq!(s["round"].as_u64(), Some(ROUNDS.parse().unwrap()));
    for round in s["history"].as_array().unwrap() {
        assert_eq!(
            round["contributors"].as_array().unwrap().len(),
            4,
            "{round}"
        );
    }
    let model = s["model_id"].as_str().unwrap().to_owned();
    // Each member pulls the round's model object after taking the round: wait for it.
    wait_long("node 3 to hold the final model", 60, || {
        homes[3].run(&["model", "show", &model]).status.success()
    });
    let report: serde_json::Value = serde_json::from_str(&homes[3].ok(&[
        "model",
        "eval",
        &model,
        "--data",
        &file("test"),
        "--standardize",
        "--json",
    ]))
    .unwrap();
    let federated = report["accuracy"].as_f64().unwrap();
    eprintln!(
        "pooled simulation {:.2} %, four regions over the network {:.2} % ({} test rows)",
        100.0 * pooled,
        100.0 * federated,
        report["rows"]
    );
    assert!(pooled > 0.7, "the pooled run learnt nothing: {pooled}");
    assert!(
        (federated - pooled).abs() <= 0.03,
        "federated {federated} vs pooled {pooled}"
    );
}
