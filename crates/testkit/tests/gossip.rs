//! Gossip between real nodes: each node offers the models it signed on `sov/models/1`;
//! peers check every offer (signature, signer = publisher) and report the verdict to
//! gossipsub, so a peer that sends forged or garbage offers loses score.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sov_core::Signed;
use sov_identity::Keypair;
use sov_node::{
    models::ImportOptions,
    protocol::{MODELS_TOPIC, ModelAnnouncement},
};
use sov_testkit::{Cluster, init_logging, seed, wait_for};

fn tiny_llama() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/tiny-llama.gguf")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_offered_on_gossip_and_forged_offers_cost_their_sender() {
    init_logging();
    let mut cluster = Cluster::start(2, seed(), Duration::from_secs(1)).await;
    let (a, b) = (cluster.node(0).clone(), cluster.node(1).clone());
    let entry = a
        .import_model(
            &tiny_llama(),
            ImportOptions {
                name: Some("tiny".into()),
                ..ImportOptions::default()
            },
        )
        .await
        .unwrap();

    // B learns of A's model, signed by A, without fetching anything.
    let b2 = b.clone();
    wait_for("B hears A's offer", Duration::from_secs(30), || {
        let b = b2.clone();
        async move { !b.announced_models().is_empty() }
    })
    .await
    .unwrap();
    assert_eq!(b.announced_models(), vec![entry.clone()]);
    assert!(!b.contains(entry.id).await.unwrap());

    // A raw peer offers the same manifest re-signed by a key that is not its own, then
    // garbage: B rejects both, and the sender's score goes negative.
    let (raw, _events) = sov_net::start(sov_net::Config::loopback([9; 32]))
        .await
        .unwrap();
    raw.dial(cluster.addrs(1)[0].clone()).await.unwrap();
    raw.subscribe(MODELS_TOPIC).await.unwrap();
    let mut forged_body = entry.manifest.clone();
    forged_body.name = "forged".into();
    let other = Keypair::generate();
    let forged = ModelAnnouncement {
        model: entry.id,
        manifest: Signed::sign(forged_body, &other).unwrap().encode().unwrap(),
    };
    let forged = sov_core::dagcbor::to_vec(&forged).unwrap();
    let mut sent = false;
    for _ in 0..100 {
        if raw.publish(MODELS_TOPIC, forged.clone()).await.is_ok() {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sent, "the raw peer never saw B on the topic");
    raw.publish(MODELS_TOPIC, b"garbage".to_vec())
        .await
        .unwrap();
    let raw_id = raw.peer_id();
    let b2 = b.clone();
    wait_for(
        "B lowers the forger's score",
        Duration::from_secs(20),
        || {
            let b = b2.clone();
            async move {
                b.gossip_score(raw_id)
                    .await
                    .unwrap()
                    .is_some_and(|s| s < 0.0)
            }
        },
    )
    .await
    .unwrap();
    let names: Vec<String> = b
        .announced_models()
        .into_iter()
        .map(|e| e.manifest.name)
        .collect();
    assert_eq!(names, ["tiny"], "the forged offer is not listed");
    raw.shutdown().await;
    cluster.stop().await;
}
