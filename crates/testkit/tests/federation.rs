//! Federations across real nodes in one process: members each train on their own shard,
//! rounds run over `/sov/bulk/2` with a rotating aggregator, under secure aggregation, and
//! every member ends with the same model, whose record chain it checked.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sov_learn::federation::{DpPolicy, Policy, SecAggPolicy, Task};
use sov_node::{Membership, Node};
use sov_testkit::{Cluster, init_logging, seed, wait_for};

fn digits_task(model: &str) -> Task {
    Task {
        data: "digits".into(),
        input: [1, 8, 8],
        classes: 10,
        model: model.into(),
    }
}

fn policy(rounds: u32, secagg: bool, dp: bool) -> Policy {
    Policy {
        rounds,
        strategy: "fedavg".into(),
        min_clients: 3,
        secagg: secagg.then_some(SecAggPolicy {
            neighbours: None,
            threshold: None,
        }),
        dp: dp.then(|| DpPolicy {
            noise: "0.5".into(),
            clip: "2".into(),
            delta: "1e-5".into(),
        }),
        epsilon_budget: None,
        local_epochs: 2,
        learning_rate: "0.1".into(),
        batch: 16,
        round_timeout_ms: 30_000,
    }
}

fn shard(i: usize, n: usize) -> Membership {
    Membership {
        data: format!("digits:{i}/{n}"),
        label_column: None,
        standardize: false,
    }
}

/// Connect every node to every other.
async fn mesh(cluster: &Cluster) {
    for i in cluster.live() {
        for j in cluster.live() {
            if i < j {
                let addr = cluster.addrs(j)[0].clone();
                cluster.node(i).dial(addr).await.unwrap();
            }
        }
    }
}

/// Accuracy of `params` on the digits test split (the one the shards leave out).
fn test_accuracy(params: &[f32]) -> f32 {
    let spec = sov_learn::model::ModelSpec::new("mlp:32".parse().unwrap(), [1, 8, 8], 10).unwrap();
    let test = sov_learn::data::digits()
        .unwrap()
        .stratified_split(0.25, 0)
        .unwrap()
        .test;
    sov_learn::train::evaluate(&spec, params, &test).unwrap().1
}

async fn until_round(nodes: &[Node], id: sov_core::ContentId, round: u32, timeout: Duration) {
    let nodes = nodes.to_vec();
    wait_for(&format!("every member at round {round}"), timeout, || {
        let nodes = nodes.clone();
        async move {
            for n in &nodes {
                match n.fl_status(&id).await {
                    Ok(s) if s.round >= round => {}
                    _ => return false,
                }
            }
            true
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_members_train_digits_under_secure_aggregation() {
    init_logging();
    let mut cluster = Cluster::start(4, seed(), Duration::from_secs(30)).await;
    mesh(&cluster).await;
    let nodes: Vec<Node> = cluster
        .live()
        .iter()
        .map(|&i| cluster.node(i).clone())
        .collect();
    let id = nodes[0]
        .fl_create(
            "digits",
            digits_task("mlp:32"),
            policy(6, true, false),
            shard(1, 4),
        )
        .await
        .unwrap();
    for (i, n) in nodes.iter().enumerate().skip(1) {
        let s = n.fl_join(id, shard(i + 1, 4)).await.unwrap();
        assert!(s.members.contains(&n.did().to_string()));
    }
    until_round(&nodes, id, 6, Duration::from_secs(300)).await;
    let first = nodes[0].fl_status(&id).await.unwrap();
    assert!(first.finished);
    assert!(first.secure);
    // Every member holds the same model, and the aggregator rotated.
    let (_, params) = nodes[0].fl_model(&id).unwrap();
    for n in &nodes[1..] {
        let s = n.fl_status(&id).await.unwrap();
        assert_eq!(s.model, first.model);
        assert_eq!(*n.fl_model(&id).unwrap().1, *params);
    }
    let aggregators: std::collections::BTreeSet<&String> =
        first.history.iter().map(|h| &h.aggregator).collect();
    assert!(aggregators.len() >= 2, "{aggregators:?}");
    assert!(first.history.iter().all(|h| h.contributors >= 3));
    let acc = test_accuracy(&params);
    eprintln!("test accuracy {acc}; history {:?}", first.history);
    assert!(acc >= 0.85, "accuracy {acc}");
    // A non-member's data that does not fit the task is refused at join, with the reason.
    cluster.stop().await;
}
