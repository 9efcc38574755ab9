//! The node's lifecycle: every task ends and the store closes at shutdown, so the home
//! opens again at once; an offline node refuses network work with a clear error; loaded
//! models stay within their memory budget.

#![allow(clippy::unwrap_used)]

use std::{io::Cursor, path::Path, time::Duration};

use sov_identity::Keypair;
use sov_models::sample::SamplingParams;
use sov_node::{
    AddOptions, Config, Error, Node,
    models::ImportOptions,
    serve::{Event, Generation, Prompt},
};

fn opts(name: &str) -> AddOptions {
    AddOptions {
        name: name.into(),
        media_type: "application/octet-stream".into(),
        created: 1_700_000_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_work_in_flight_reopens_its_home_at_once() {
    let home = tempfile::tempdir().unwrap();
    let key = Keypair::generate();
    let mut kept = Vec::new();
    for round in 0..3u8 {
        // No retry: a stopped node has closed its store.
        let node = Node::start(home.path(), key.clone(), Config::loopback())
            .await
            .unwrap_or_else(|e| panic!("round {round}: the home opens at once: {e}"));
        for id in &kept {
            assert!(
                node.contains(*id).await.unwrap(),
                "round {round}: kept {id}"
            );
        }
        let (added, _) = node
            .add(Cursor::new(vec![round; 1 << 20]), opts("kept"), Some(0))
            .await
            .unwrap();
        kept.push(added.id);
        // Adds still running when shutdown begins: shutdown waits for them (or they fail
        // with a clear error), and the store still closes.
        let mut busy = Vec::new();
        for i in 0..6u8 {
            let n = node.clone();
            busy.push(tokio::spawn(async move {
                n.add(Cursor::new(vec![i; 4 << 20]), opts("busy"), Some(0))
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        node.shutdown().await;
        for b in busy {
            match b.await.unwrap() {
                Ok(_) | Err(Error::Stopped) => {}
                Err(e) => panic!("an add cut off by shutdown fails as stopped, not {e}"),
            }
        }
        assert!(matches!(node.objects().await, Err(Error::Stopped)));
    }
    // The offline node opens the same home just as quickly.
    let offline = Node::offline(home.path(), key, Config::loopback())
        .await
        .unwrap();
    for id in &kept {
        assert!(offline.contains(*id).await.unwrap());
    }
    offline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_node_does_local_work_and_refuses_network_work() {
    let home = tempfile::tempdir().unwrap();
    let node = Node::offline(home.path(), Keypair::generate(), Config::loopback())
        .await
        .unwrap();
    assert!(!node.is_online());
    let (added, holders) = node
        .add(Cursor::new(b"local".to_vec()), opts("a"), Some(3))
        .await
        .unwrap();
    assert!(holders.is_empty());
    assert_eq!(node.read(added.id).await.unwrap(), b"local");
    // The pin is recorded for when the node runs.
    assert_eq!(
        node.pin(added.id).await.unwrap().map(|p| p.replicas),
        Some(3)
    );
    let other = Keypair::generate().did();
    node.grant(added.id, other).await.unwrap();
    assert!(matches!(node.peers().await, Err(Error::Offline)));
    assert!(matches!(
        node.pull_model(added.id).await,
        Err(Error::Offline)
    ));
    let e = node.peers().await.unwrap_err().to_string();
    assert!(e.contains("sov node run"), "{e}");
    node.shutdown().await;
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/fixtures")
        .join(name)
}

async fn ask(node: &Node, model: &str) -> String {
    let entry = node.model(model).await.unwrap();
    let mut events = node
        .generate(
            &entry,
            Generation {
                prompt: Prompt::Text("hello".into()),
                max_tokens: Some(3),
                sampling: SamplingParams::greedy(),
                stop: Vec::new(),
                logprobs: None,
                constraint: None,
                tools: None,
                cache_scope: String::new(),
            },
        )
        .await
        .unwrap();
    while let Some(e) = events.recv().await {
        if let Event::Done(r) = e {
            return r.unwrap().text;
        }
    }
    panic!("the generation ended without Done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_models_stay_within_the_budget_least_recently_used_first() {
    let home = tempfile::tempdir().unwrap();
    let llama = fixture("tiny-llama.gguf");
    let qwen = fixture("tiny-qwen2.gguf");
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let mut config = Config::loopback();
    // Room for either model, not both.
    config.max_loaded_bytes = size(&llama).max(size(&qwen)) + 1;
    let node = Node::offline(home.path(), Keypair::generate(), config)
        .await
        .unwrap();
    let import = |p: std::path::PathBuf, name: &str| {
        let node = node.clone();
        let o = ImportOptions {
            name: Some(name.into()),
            ..ImportOptions::default()
        };
        async move { node.import_model(&p, o).await.unwrap() }
    };
    let a = import(llama, "llama").await;
    let b = import(qwen, "qwen").await;
    assert!(
        node.loaded_models().await.is_empty(),
        "nothing loads before a request"
    );

    let first = ask(&node, "llama").await;
    assert_eq!(node.loaded_models().await, vec![a.id]);
    ask(&node, "qwen").await;
    assert_eq!(node.loaded_models().await, vec![b.id], "llama made room");
    assert_eq!(ask(&node, "llama").await, first, "reloaded, same answer");
    assert_eq!(node.loaded_models().await, vec![a.id]);

    node.remove_model("llama").await.unwrap();
    assert!(node.loaded_models().await.is_empty(), "removing unloads");
    node.shutdown().await;
}

/// The end of a generation asked with `prompt` and `max_tokens`.
async fn outcome(
    node: &Node,
    model: &str,
    prompt: Prompt,
    max_tokens: usize,
) -> Result<sov_models::generate::Output, sov_node::serve::Failure> {
    let entry = node.model(model).await.unwrap();
    let generation = Generation {
        prompt,
        max_tokens: Some(max_tokens),
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        logprobs: None,
        constraint: None,
        tools: None,
        cache_scope: String::new(),
    };
    let mut events = node.generate(&entry, generation).await?;
    let done = async {
        while let Some(e) = events.recv().await {
            if let Event::Done(r) = e {
                return r;
            }
        }
        panic!("the generation ended without Done");
    };
    tokio::time::timeout(Duration::from_secs(60), done)
        .await
        .expect("the generation did not end within 60 s")
}

/// Finding 3 of issue 14: the work a request may cause is bounded: its prompt by
/// `max_prompt_tokens`, its time by `request_timeout` (counted from the request, queueing
/// included). (The queue's bound by tokens of work is a unit test of `serve.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_are_bounded_in_prompt_time_and_queued_work() {
    use sov_node::serve::Failure;
    let mut config = Config::loopback();
    config.max_prompt_tokens = 8;
    config.request_timeout = Duration::ZERO;
    let (_home, node) = serving_tiny_llama(config).await;

    let long = Prompt::Tokens(vec![1; 9]);
    match outcome(&node, "llama", long, 2).await {
        Err(Failure::ContextLength(m)) => assert!(m.contains("max_prompt_tokens"), "{m}"),
        other => panic!("a 9-token prompt over a limit of 8: {other:?}"),
    }
    // A budget spent before the first prompt batch: the request ends without a token.
    match outcome(&node, "llama", Prompt::Tokens(vec![1; 4]), 2).await {
        Err(Failure::Timeout(m)) => assert!(m.contains("time budget"), "{m}"),
        other => panic!("a request past its time budget: {other:?}"),
    }
    node.shutdown().await;
}

/// Finding 8 of issue 14: an import reads a model's header first: a device is refused at
/// once, and a 2 GiB file that only starts like a GGUF is refused after its head, with
/// nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_read_the_header_first() {
    let home = tempfile::tempdir().unwrap();
    let node = Node::offline(home.path(), Keypair::generate(), Config::loopback())
        .await
        .unwrap();
    let e = node
        .import_model(Path::new("/dev/zero"), ImportOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let fake = home.path().join("fake.gguf");
    {
        let f = std::fs::File::create(&fake).unwrap();
        use std::io::Write as _;
        (&f).write_all(b"GGUF\x03\0\0\0").unwrap();
        (&f).write_all(&u64::MAX.to_le_bytes()).unwrap();
        f.set_len(2 << 30).unwrap(); // sparse: no disk used
    }
    let e = node
        .import_model(&fake, ImportOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("tensor count"), "{e}");
    assert!(node.objects().await.unwrap().is_empty());
    node.shutdown().await;
}

/// Issue 20, item 4: one model decodes concurrent requests together (continuous
/// batching), each getting exactly what it gets alone, and a request whose reader does not
/// read holds no one else up (not even its slot: two slots here, five other requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_decode_together_and_each_gets_what_it_gets_alone() {
    use sov_models::generate::{LanguageModel, Request};
    let path = fixture("tiny-llama.gguf");
    let alone_model = LanguageModel::from_bytes(&std::fs::read(&path).unwrap()).unwrap();
    let sampling = |i: u64| SamplingParams {
        seed: i,
        temperature: 1.5,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..SamplingParams::default()
    };
    // Request 0 is long and its reader reads nothing until the others are done: its
    // events (two a token, with log-probabilities) fill its channel and it waits.
    let prompts: Vec<Vec<u32>> = (0..6u32).map(|i| vec![1, 2 + i, 3, 4 + i]).collect();
    let max = |i: usize| if i == 0 { 240 } else { 40 + 7 * i };
    let run_alone = |i: usize, seed: u64| {
        let req = Request {
            prompt: prompts[i].clone(),
            max_tokens: max(i),
            sampling: sampling(seed),
            stop: Vec::new(),
            logprobs: Some(1),
            constraint: None,
            cache_scope: String::new(),
        };
        alone_model.generate(&req, &mut |_| true).unwrap()
    };
    // Request 0's seed: the first whose answer is long enough to fill its channel.
    let seed0 = (100..300)
        .find(|&seed| run_alone(0, seed).completion_tokens > 150)
        .expect("a seed for a long answer");
    let seed = |i: usize| if i == 0 { seed0 } else { i as u64 };
    let alone: Vec<_> = (0..prompts.len()).map(|i| run_alone(i, seed(i))).collect();

    let mut config = Config::loopback();
    config.parallel = 2;
    let (_home, node) = serving_tiny_llama(config).await;
    let entry = node.model("llama").await.unwrap();
    let mut receivers = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let g = Generation {
            prompt: Prompt::Tokens(p.clone()),
            max_tokens: Some(max(i)),
            sampling: sampling(seed(i)),
            stop: Vec::new(),
            logprobs: Some(1),
            constraint: None,
            tools: None,
            cache_scope: String::new(),
        };
        receivers.push(node.generate(&entry, g).await.unwrap());
    }
    let mut first = receivers.remove(0);
    let read = |mut rx: tokio::sync::mpsc::Receiver<Event>| async move {
        let mut text = String::new();
        while let Some(e) = rx.recv().await {
            match e {
                Event::Text(t) => text.push_str(&t),
                Event::Logprobs(_) => {}
                Event::Done(r) => return (text, r.unwrap()),
            }
        }
        panic!("the generation ended without Done");
    };
    let others = futures::future::join_all(receivers.into_iter().map(read));
    let others = tokio::time::timeout(Duration::from_secs(60), others)
        .await
        .expect("the other requests finished while request 0's reader read nothing");
    for (i, (text, out)) in others.iter().enumerate() {
        let want = &alone[i + 1];
        assert_eq!(out.tokens, want.tokens, "request {}", i + 1);
        assert_eq!(out.logprobs, want.logprobs, "request {}", i + 1);
        assert_eq!(text, &want.text, "request {}", i + 1);
    }
    // Request 0 is still there, waiting for its reader.
    assert!(matches!(first.try_recv(), Ok(Event::Logprobs(_))));
    let (text, out) = tokio::time::timeout(Duration::from_secs(60), read(first))
        .await
        .unwrap();
    assert_eq!(out.tokens, alone[0].tokens);
    assert_eq!(text, alone[0].text);
    // The steps: some decoded more than one request.
    let metrics = node.metrics_text().await;
    let value = |key: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {metrics}"))
    };
    let steps = value("sov_generation_decode_batch_count");
    let single = value("sov_generation_decode_batch_bucket{le=\"1.0\"}");
    assert!(
        steps > single,
        "{single} of {steps} steps decoded one request"
    );
    node.shutdown().await;
}

/// An offline node with `config` and the tiny Llama fixture imported as `llama`.
async fn serving_tiny_llama(config: Config) -> (tempfile::TempDir, Node) {
    let home = tempfile::tempdir().unwrap();
    let node = Node::offline(home.path(), Keypair::generate(), config)
        .await
        .unwrap();
    let o = ImportOptions {
        name: Some("llama".into()),
        ..ImportOptions::default()
    };
    node.import_model(&fixture("tiny-llama.gguf"), o)
        .await
        .unwrap();
    (home, node)
}
