//! Federations across real nodes in one process: members each train on their own shard,
//! rounds run over `/sov/bulk/3` with a rotating aggregator, under secure aggregation, and
//! every member ends with the same model, whose record chain it checked.

#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sov_core::{Signed, dagcbor};
use sov_learn::{
    federation::{DpPolicy, Policy, SecAggPolicy, Task},
    ledger::JoinRequest,
};
use sov_node::{
    Membership, Node,
    protocol::{FlRequest, FlResponse, Response, Validation},
};
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
        // What `sov fl simulate --clients 5 --partition iid --model logreg --local-epochs 3
        // --lr 0.2 --secagg --dp-noise 0.5 --dp-clip 0.5` takes to 90–93 % in 20 rounds (ε = 81:
        // five members are too few for DP noise on their mean to cost little accuracy).
        dp: dp.then(|| DpPolicy {
            noise: "0.5".into(),
            clip: "0.5".into(),
            delta: "1e-5".into(),
        }),
        epsilon_budget: None,
        local_epochs: if dp { 3 } else { 2 },
        learning_rate: if dp { "0.2".into() } else { "0.1".into() },
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

/// Accuracy of `params` of `model` on the digits test split (the one the shards leave out).
fn test_accuracy(model: &str, params: &[f32]) -> f32 {
    let spec = sov_learn::model::ModelSpec::new(model.parse().unwrap(), [1, 8, 8], 10).unwrap();
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
    cluster.mesh().await;
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
            None,
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
    assert!(first.history.iter().all(|h| h.contributors.len() >= 3));
    let acc = test_accuracy("mlp:32", &params);
    eprintln!("test accuracy {acc}; history {:?}", first.history);
    assert!(acc >= 0.85, "accuracy {acc}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_goes_on_when_the_aggregator_is_killed_mid_round() {
    init_logging();
    let mut cluster = Cluster::start(5, seed(), Duration::from_secs(30)).await;
    cluster.mesh().await;
    let nodes: Vec<Node> = cluster
        .live()
        .iter()
        .map(|&i| cluster.node(i).clone())
        .collect();
    let id = nodes[0]
        .fl_create(
            "digits dp",
            digits_task("logreg"),
            policy(20, true, true),
            shard(1, 5),
            None,
        )
        .await
        .unwrap();
    for (i, n) in nodes.iter().enumerate().skip(1) {
        n.fl_join(id, shard(i + 1, 5)).await.unwrap();
    }
    until_round(&nodes, id, 4, Duration::from_secs(300)).await;
    // The aggregator of round 5 (the first of the order among the live members) is at work
    // on it now: stop it.
    let status = nodes[0].fl_status(&id).await.unwrap();
    assert_eq!(status.round, 4, "round 5 already closed");
    let victim_did = status.aggregator.clone().unwrap();
    let victim = nodes
        .iter()
        .position(|n| n.did().to_string() == victim_did)
        .unwrap();
    cluster.kill(victim).await;
    let alive: Vec<Node> = cluster
        .live()
        .iter()
        .map(|&i| cluster.node(i).clone())
        .collect();
    until_round(&alive, id, 20, Duration::from_secs(600)).await;
    let first = alive[0].fl_status(&id).await.unwrap();
    assert!(first.finished);
    assert_ne!(
        first.history[4].aggregator, victim_did,
        "round 5 was closed by another"
    );
    assert!(
        first.history[5..]
            .iter()
            .all(|h| h.aggregator != victim_did)
    );
    // The privacy spent is recorded, round by round, and grows.
    let eps: Vec<f64> = first.history.iter().map(|h| h.epsilon.unwrap()).collect();
    assert!(eps.windows(2).all(|w| w[1] > w[0]), "{eps:?}");
    assert_eq!(first.epsilon, eps.last().copied());
    let (_, params) = alive[0].fl_model(&id).unwrap();
    for n in &alive[1..] {
        assert_eq!(n.fl_status(&id).await.unwrap().model, first.model);
    }
    let acc = test_accuracy("logreg", &params);
    eprintln!("test accuracy {acc}, ε {:?}", first.epsilon);
    assert!(acc >= 0.85, "accuracy {acc}");
    cluster.stop().await;
}

/// Mallory: a raw libp2p peer that speaks the federation protocol with sov-learn's own
/// state machines, honestly but for its masked input, which it cuts to half its length.
struct Mallory {
    key: sov_identity::Keypair,
    net: sov_net::Client,
    federation: sov_core::ContentId,
    delivers: Arc<AtomicUsize>,
}

impl Mallory {
    async fn ask(&self, peer: sov_net::PeerId, req: &FlRequest) -> FlResponse {
        let bytes = dagcbor::to_vec(req).unwrap();
        let answer = self
            .net
            .request_on(sov_net::Channel::Bulk, peer, bytes)
            .await
            .unwrap();
        FlResponse::decode(&answer).unwrap()
    }

    /// Answer the aggregators' requests until the task is aborted.
    async fn serve(self: Arc<Self>, mut events: tokio::sync::mpsc::Receiver<sov_net::Event>) {
        let mut client: Option<sov_learn::secagg::Client> = None;
        let mut words = 0;
        while let Some(e) = events.recv().await {
            let sov_net::Event::Request {
                peer,
                channel,
                data,
                reply,
            } = e
            else {
                continue;
            };
            // Nodes also ask her the node protocol's questions (`has`, when they look for a
            // round's model objects): she refuses all but the federation's.
            let request = match (channel, FlRequest::decode(&data)) {
                (sov_net::Channel::Bulk, Ok(r)) => r,
                (sov_net::Channel::Control, _) => {
                    let no = Response::Refused {
                        reason: "mallory keeps nothing".into(),
                    };
                    reply.send(dagcbor::to_vec(&no).unwrap()).await;
                    continue;
                }
                (_, Err(e)) => {
                    let no = FlResponse::Refused { reason: e };
                    reply.send(dagcbor::to_vec(&no).unwrap()).await;
                    continue;
                }
            };
            let answer = match request {
                FlRequest::Open {
                    secure: Some(open), ..
                } => {
                    // The members as the federation lists them, for the directory.
                    let FlResponse::Records {
                        genesis,
                        admissions,
                        ..
                    } = self
                        .ask(
                            peer,
                            &FlRequest::Records {
                                federation: self.federation,
                                after: u32::MAX,
                            },
                        )
                        .await
                    else {
                        panic!("no records")
                    };
                    let mut l = sov_learn::ledger::Ledger::new(&genesis).unwrap();
                    for a in &admissions {
                        l.admit(a).unwrap();
                    }
                    let dir = sov_learn::secagg::Directory::new(
                        l.members()
                            .iter()
                            .enumerate()
                            .map(|(i, d)| (i as u32, d.verifying_key()))
                            .collect(),
                    );
                    let me = l.index_of(&self.key.did()).unwrap();
                    words = open.params.dim as usize;
                    let (c, advert) = sov_learn::secagg::Client::new(
                        open.params,
                        me,
                        self.key.signing_key(),
                        Arc::new(dir),
                        &mut rand::rng(),
                    )
                    .unwrap();
                    client = Some(c);
                    FlResponse::Advert { advert }
                }
                FlRequest::KeyBook { book, .. } => FlResponse::Shares {
                    shares: client
                        .as_mut()
                        .unwrap()
                        .share_keys(&book, &mut rand::rng())
                        .unwrap(),
                },
                FlRequest::Deliver { delivery, .. } => {
                    self.delivers.fetch_add(1, Ordering::SeqCst);
                    let c = client.as_mut().unwrap();
                    let mut masked = c.mask_input(&delivery, &vec![0; words]).unwrap();
                    let half = masked.masked.len() / 2;
                    masked.masked.truncate(half - half % 4);
                    FlResponse::Masked {
                        masked,
                        validation: Validation {
                            rows: 1,
                            correct: 1,
                        },
                    }
                }
                FlRequest::Confirm { list, .. } => match client.as_mut().unwrap().confirm(&list) {
                    Ok(signature) => FlResponse::Signature { signature },
                    Err(e) => FlResponse::Refused {
                        reason: e.to_string(),
                    },
                },
                FlRequest::Closed { .. } => FlResponse::Taken,
                _ => FlResponse::Refused {
                    reason: "mallory does not do that".into(),
                },
            };
            reply.send(dagcbor::to_vec(&answer).unwrap()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_a_mis_sized_masked_input_is_left_out_and_strangers_inject_nothing() {
    init_logging();
    let mut cluster = Cluster::start(3, seed(), Duration::from_secs(30)).await;
    cluster.mesh().await;
    let nodes: Vec<Node> = cluster
        .live()
        .iter()
        .map(|&i| cluster.node(i).clone())
        .collect();
    let id = nodes[0]
        .fl_create(
            "digits",
            digits_task("logreg"),
            policy(4, true, false),
            shard(1, 3),
            None,
        )
        .await
        .unwrap();
    let seed = [0x66; 32];
    let key = sov_identity::Keypair::from_seed(&seed);
    let (net, events) = sov_net::start(sov_net::Config::loopback(seed))
        .await
        .unwrap();
    for i in cluster.live() {
        net.dial(cluster.addrs(i)[0].clone()).await.unwrap();
    }
    let mallory = Arc::new(Mallory {
        key: key.clone(),
        net,
        federation: id,
        delivers: Arc::new(AtomicUsize::new(0)),
    });
    let creator = nodes[0].peer_id();

    // A stranger's round record and round opening are refused.
    let forged = sov_learn::ledger::RoundRecord {
        federation: id,
        round: 1,
        live: vec![key.did()],
        parent: serde_bytes::ByteBuf::from(vec![0; 32]),
        model: serde_bytes::ByteBuf::from(vec![0; 32]),
        transcript: Vec::new(),
        examples: None,
        validation: None,
        secure: true,
        multiplier: None,
        epsilon: None,
        manifest: None,
        policy: vec![],
        changes: Default::default(),
    };
    let record = Signed::sign(forged, &key).unwrap().encode().unwrap();
    for req in [
        FlRequest::Closed {
            federation: id,
            record: serde_bytes::ByteBuf::from(record),
            params: serde_bytes::ByteBuf::from(vec![0; 8]),
        },
        FlRequest::Open {
            federation: id,
            round: 1,
            live: vec![key.did(), nodes[0].did()],
            params: serde_bytes::ByteBuf::new(),
            secure: None,
        },
        FlRequest::Model {
            federation: id,
            round: 0,
        },
    ] {
        let FlResponse::Refused { reason } = mallory.ask(creator, &req).await else {
            panic!("a stranger's {req:?} was taken");
        };
        assert!(reason.contains("not a member"), "{reason}");
    }
    assert_eq!(nodes[0].fl_status(&id).await.unwrap().round, 0);

    // Mallory joins, and so do two honest members.
    let join = Signed::sign(
        JoinRequest {
            federation: id,
            created: 1,
        },
        &key,
    )
    .unwrap()
    .encode()
    .unwrap();
    let answer = mallory
        .ask(
            creator,
            &FlRequest::Join {
                federation: id,
                request: serde_bytes::ByteBuf::from(join),
            },
        )
        .await;
    assert!(matches!(answer, FlResponse::Admitted { .. }), "{answer:?}");
    let serving = tokio::spawn(mallory.clone().serve(events));
    for (i, n) in nodes.iter().enumerate().skip(1) {
        n.fl_join(id, shard(i + 1, 3)).await.unwrap();
    }
    until_round(&nodes, id, 4, Duration::from_secs(300)).await;
    let status = nodes[0].fl_status(&id).await.unwrap();
    assert!(status.members.contains(&key.did().to_string()));
    assert!(
        mallory.delivers.load(Ordering::SeqCst) >= 1,
        "Mallory was never asked"
    );
    for h in &status.history {
        assert_eq!(
            h.contributors.len(),
            3,
            "round {}: {:?}",
            h.round,
            h.contributors
        );
        assert!(!h.contributors.contains(&key.did().to_string()));
    }
    let (_, params) = nodes[0].fl_model(&id).unwrap();
    let acc = test_accuracy("logreg", &params);
    assert!(acc >= 0.8, "accuracy {acc}");
    serving.abort();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_resumes_and_the_budget_stops_training() {
    init_logging();
    let mut cluster = Cluster::start(3, seed(), Duration::from_secs(30)).await;
    cluster.mesh().await;
    let nodes: Vec<Node> = cluster
        .live()
        .iter()
        .map(|&i| cluster.node(i).clone())
        .collect();
    // At z = 0.5, ε passes 30 after about 8 rounds: the budget ends training before its 40.
    // Three members needed: the two others wait for the restarted one, which must take
    // part again for training to go on.
    let mut p = policy(40, true, true);
    p.epsilon_budget = Some("30".into());
    let id = nodes[0]
        .fl_create("digits", digits_task("logreg"), p, shard(1, 3), None)
        .await
        .unwrap();
    for (i, n) in nodes.iter().enumerate().skip(1) {
        n.fl_join(id, shard(i + 1, 3)).await.unwrap();
    }
    until_round(&nodes, id, 2, Duration::from_secs(300)).await;
    cluster.restart(2).await;
    let restarted = cluster.node(2).clone();
    // It is still a member, with its data, and catches up with the others.
    let s = restarted.fl_status(&id).await.unwrap();
    assert_eq!(s.data, "digits:3/3");
    let nodes: Vec<Node> = cluster
        .live()
        .iter()
        .map(|&i| cluster.node(i).clone())
        .collect();
    let n2 = nodes.clone();
    wait_for("training to stop", Duration::from_secs(300), || {
        let nodes = n2.clone();
        async move {
            let mut models = std::collections::BTreeSet::new();
            for n in &nodes {
                match n.fl_status(&id).await {
                    Ok(s) if s.finished && s.has_model => models.insert(s.model),
                    _ => return false,
                };
            }
            models.len() == 1
        }
    })
    .await
    .unwrap();
    let s = restarted.fl_status(&id).await.unwrap();
    assert!(s.round < 40, "stopped at round {}", s.round);
    let eps = s.epsilon.unwrap();
    assert!(eps <= 30.0, "ε {eps}");
    // Spending another round at the policy's noise would pass the budget.
    assert!(s.history.iter().all(|h| h.epsilon.unwrap() <= 30.0));
    // The restarted member took part again after its restart.
    let me = restarted.did().to_string();
    assert!(s.history.last().unwrap().contributors.contains(&me));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_table_does_not_fit_the_task_is_refused_at_join() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let table = |name: &str, header: &str, rows: &[&str]| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{header}\n{}\n", rows.join("\n"))).unwrap();
        path.to_string_lossy().into_owned()
    };
    let rows3: Vec<String> = (0..60)
        .map(|i| format!("{},{},{},{}", i % 7, i % 5, i % 3, i % 3))
        .collect();
    let rows3: Vec<&str> = rows3.iter().map(String::as_str).collect();
    let good = table("good.csv", "a,b,c,label", &rows3);
    let wide = table(
        "wide.csv",
        "a,b,c,d,label",
        &["1,2,3,4,0", "1,2,3,4,1", "0,0,0,0,2"],
    );
    let labels = table(
        "labels.csv",
        "a,b,c,label",
        &["1,2,3,0", "1,2,3,7", "0,0,0,2"],
    );
    let mut cluster = Cluster::start(2, seed(), Duration::from_secs(30)).await;
    cluster.mesh().await;
    let (a, b) = (cluster.node(0).clone(), cluster.node(1).clone());
    let task = Task {
        data: "csv".into(),
        input: [1, 1, 3],
        classes: 3,
        model: "logreg".into(),
    };
    let member = |data: &str| Membership {
        data: data.into(),
        label_column: None,
        standardize: true,
    };
    // The creator's own table is checked too.
    let e = a
        .fl_create(
            "t",
            task.clone(),
            policy(3, false, false),
            member(&wide),
            None,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("feature columns"), "{e}");
    let id = a
        .fl_create("t", task, policy(3, false, false), member(&good), None)
        .await
        .unwrap();
    for (file, why) in [(&wide, "4 feature columns"), (&labels, "label 7")] {
        let e = b.fl_join(id, member(file)).await.unwrap_err();
        assert!(e.to_string().contains(why), "{why}: {e}");
        assert!(b.fl_status(&id).await.is_err());
        assert_eq!(a.fl_status(&id).await.unwrap().members.len(), 1);
    }
    let s = b.fl_join(id, member(&good)).await.unwrap();
    assert_eq!(s.members.len(), 2);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_round_model_is_signed_kept_by_every_member_and_predicts() {
    init_logging();
    let mut cluster = Cluster::start(3, seed(), Duration::from_secs(30)).await;
    cluster.mesh().await;
    let nodes: Vec<Node> = cluster
        .live()
        .iter()
        .map(|&i| cluster.node(i).clone())
        .collect();
    let id = nodes[0]
        .fl_create(
            "Digits, together!",
            digits_task("logreg"),
            policy(5, true, true),
            shard(1, 3),
            None,
        )
        .await
        .unwrap();
    for (i, n) in nodes.iter().enumerate().skip(1) {
        n.fl_join(id, shard(i + 1, 3)).await.unwrap();
    }
    until_round(&nodes, id, 5, Duration::from_secs(300)).await;
    let s = nodes[0].fl_status(&id).await.unwrap();
    let last = s.model_id.clone().unwrap();
    // Every member pulls the final model; its manifest is the aggregator's, names the
    // federation, round, parent, transcript and ε, and its weights are the round's.
    let n2 = nodes.clone();
    let l2 = last.clone();
    wait_for(
        "every member to hold the final model",
        Duration::from_secs(60),
        || {
            let (nodes, last) = (n2.clone(), l2.clone());
            async move {
                for n in &nodes {
                    if n.classifier(&last).await.is_err() {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await
    .unwrap();
    let (_, params) = nodes[1].fl_model(&id).unwrap();
    for n in &nodes {
        let c = n.classifier(&last).await.unwrap();
        assert_eq!(c.params, *params);
        assert_eq!(c.entry.signer.to_string(), s.history[4].aggregator);
        let m = &c.entry.manifest;
        assert!(
            m.name.starts_with("digits-together-") && m.name.ends_with("-r5"),
            "{}",
            m.name
        );
        let t = m.training.as_ref().unwrap();
        assert_eq!(t.federation, id.to_string());
        assert_eq!(t.round, Some(5));
        assert!(t.secure_aggregation);
        assert_eq!(
            t.privacy.as_ref().unwrap().epsilon.parse::<f64>().unwrap(),
            s.epsilon.unwrap()
        );
        assert_eq!(
            t.transcript
                .iter()
                .map(|c| c.member.clone())
                .collect::<Vec<_>>(),
            s.history[4].contributors
        );
        assert_eq!(m.parent.map(|p| p.to_string()), s.history[3].manifest);
        assert_eq!(m.evaluation[0].metric, "accuracy");
    }
    // The model predicts: a probability per class for each row, summing to one, whose
    // highest is the class the training code predicts; better than chance on the test rows
    // (all of them: five rounds under DP noise drawn fresh each run leave a weak model, and
    // 50 rows made the check flaky, 14 right where 15 were asked).
    let test = sov_learn::data::digits()
        .unwrap()
        .stratified_split(0.25, 0)
        .unwrap()
        .test;
    let rows: Vec<Vec<f32>> = (0..test.len()).map(|i| test.row(i).to_vec()).collect();
    let p = nodes[2].predict(&last, rows).await.unwrap();
    let spec = sov_learn::model::ModelSpec::new("logreg".parse().unwrap(), [1, 8, 8], 10).unwrap();
    let want = sov_learn::train::evaluate_predictions(&spec, &params, &test).unwrap();
    let mut right = 0;
    for (i, row) in p.iter().enumerate() {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        let best = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() as u32;
        assert_eq!(best, want[i]);
        right += usize::from(best == test.labels[i]);
    }
    eprintln!("{right} of {} right", test.len());
    assert!(
        right * 5 >= test.len(),
        "{right} of {} (chance: a tenth)",
        test.len()
    );
    let report = nodes[2]
        .evaluate_model(&last, "digits:test", None, false)
        .await
        .unwrap();
    assert_eq!(report.rows, test.len());
    assert!((report.accuracy - f64::from(test_accuracy("logreg", &params))).abs() < 1e-6);
    assert!(nodes[2].predict(&last, vec![vec![0.0; 3]]).await.is_err());
    cluster.stop().await;
}
