//! The model registry across real nodes: import, signed manifests, sharing, pulling from a
//! peer with verification, and refusals that store nothing.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sov_core::Signed;
use sov_node::{
    Node,
    models::{self, ImportOptions, MANIFEST_MEDIA_TYPE, ModelEntry},
    serve::EmbedInput,
};
use sov_testkit::{Cluster, add_options, init_logging, models_dir, seed};

fn opts(name: &str) -> ImportOptions {
    ImportOptions {
        name: Some(name.into()),
        license: Some("Apache-2.0".into()),
        parent: None,
        created: 1_800_000_000,
        chat_template: None,
    }
}

async fn embed(node: &Node, entry: &ModelEntry, text: &str) -> Vec<f32> {
    let mut out = node
        .embed(entry, vec![EmbedInput::Text(text.into())])
        .await
        .unwrap();
    out.remove(0).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_imported_shared_and_pulled_verified() {
    init_logging();
    let dir = models_dir().join("all-MiniLM-L6-v2");
    let mut cluster = Cluster::start(2, seed(), Duration::from_secs(3600)).await;
    let (a, b) = (cluster.node(0).clone(), cluster.node(1).clone());

    let d = dir.clone();
    let entry = a.import_model(&d, opts("minilm")).await.unwrap();
    let m = &entry.manifest;
    assert_eq!(
        (m.kind.as_str(), m.architecture.as_str(), m.format.as_str()),
        ("embedding", "bert", "safetensors")
    );
    assert_eq!((m.dimensions, m.context_length), (384, 256));
    assert!(
        m.parameters > 22_000_000 && m.parameters < 23_000_000,
        "{}",
        m.parameters
    );
    assert_eq!(entry.signer, a.did());
    // Its name is taken now.
    let d = dir.clone();
    let again = a.import_model(&d, opts("minilm")).await.unwrap_err();
    assert!(again.to_string().contains("already here"), "{again}");

    // B cannot read it before A shares it; then it pulls manifest and objects.
    assert!(b.pull_model(entry.id).await.is_err());
    a.share_model("minilm", b.did()).await.unwrap();
    let pulled = b.pull_model(entry.id).await.unwrap();
    assert_eq!(pulled, entry);
    assert_eq!(b.models().await.unwrap(), vec![entry.clone()]);
    let text = "A man is eating food.";
    assert_eq!(embed(&b, &entry, text).await, embed(&a, &entry, text).await);
    assert_eq!(b.loaded_models().await, vec![entry.id]);

    // Removing it on B removes its objects there too; A keeps its own.
    b.remove_model("minilm").await.unwrap();
    assert!(b.models().await.unwrap().is_empty());
    assert!(
        b.loaded_models().await.is_empty(),
        "removing a model unloads it"
    );
    let mut still = Vec::new();
    for p in models::parts(&entry.manifest) {
        still.push(b.contains(p).await.unwrap());
    }
    assert_eq!(still, vec![false; 3]);
    assert_eq!(a.models().await.unwrap().len(), 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_models_and_forged_manifests_are_refused() {
    init_logging();
    let mut cluster = Cluster::start(2, seed(), Duration::from_secs(3600)).await;
    let (a, b) = (cluster.node(0).clone(), cluster.node(1).clone());
    let tmp = tempfile::tempdir().unwrap();

    // A file that is not a model: refused, nothing stored.
    let bad = tmp.path().join("notes.gguf");
    std::fs::write(&bad, b"GGUF but not really").unwrap();
    let before = a.objects().await.unwrap().len();
    let p = bad.clone();
    let e = a
        .import_model(&p, ImportOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("GGUF"), "{e}");
    assert_eq!(a.objects().await.unwrap().len(), before);
    // A folder without the files a model needs.
    let p = tmp.path().to_path_buf();
    let e = a.import_model(&p, opts("empty")).await.unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");

    // A pulled object that is not a manifest is not kept.
    let (plain, _) = a
        .add(
            std::io::Cursor::new(b"hello".to_vec()),
            add_options("x"),
            Some(0),
        )
        .await
        .unwrap();
    a.grant(plain.id, b.did()).await.unwrap();
    let e = b.pull_model(plain.id).await.unwrap_err();
    assert!(e.to_string().contains("not a model manifest"), "{e}");
    assert!(!b.contains(plain.id).await.unwrap());

    // A "manifest" whose signature does not verify is not listed, and not pulled.
    let d = models_dir().join("all-MiniLM-L6-v2");
    let good = a.import_model(&d, opts("minilm")).await.unwrap();
    let mut forged_body = good.manifest.clone();
    forged_body.name = "forged".into();
    // Take the envelope of the good manifest and swap in the changed body.
    let gid = good.id;
    let env = a.read(gid).await.unwrap();
    let good_body = sov_core::dagcbor::to_vec(&good.manifest).unwrap();
    let forged = sov_core::dagcbor::to_vec(&forged_body).unwrap();
    assert_eq!(
        Signed::<sov_models::manifest::ModelManifest>::decode(&env)
            .unwrap()
            .signer(),
        a.did()
    );
    let pos = env
        .windows(good_body.len())
        .position(|w| w == good_body.as_slice())
        .expect("the body sits in the envelope");
    let mut tampered = env[..pos].to_vec();
    tampered.extend(&forged);
    tampered.extend(&env[pos + good_body.len()..]);
    let mut o = add_options("forged");
    o.media_type = MANIFEST_MEDIA_TYPE.into();
    let (fake, _) = a
        .add(std::io::Cursor::new(tampered), o, Some(0))
        .await
        .unwrap();
    let names: Vec<String> = a
        .models()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.manifest.name)
        .collect();
    assert_eq!(names, ["minilm"], "the forged manifest is not listed");
    a.grant(fake.id, b.did()).await.unwrap();
    let e = b.pull_model(fake.id).await.unwrap_err();
    assert!(e.to_string().contains("signature"), "{e}");
    assert!(!b.contains(fake.id).await.unwrap());
    cluster.stop().await;
}
