//! Governance across real nodes in one process: a group's genesis reaches its members,
//! proposals and votes travel by gossip, a node that was away catches up and reaches the
//! same outcome, and a passed promotion is served by every member under the group's name.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sov_gov::{Action, Choice};
use sov_node::{Node, gov::member, models::ImportOptions};
use sov_testkit::{Cluster, init_logging, models_dir, seed, wait_each, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// Found a group of every node of `cluster` on node 0; wait until each member holds it.
async fn found(cluster: &Cluster, rule: &str) -> sov_core::ContentId {
    let members = cluster
        .live()
        .into_iter()
        .map(|i| member(cluster.node(i).did(), None, None))
        .collect();
    let g = cluster
        .node(0)
        .gov_create("co-op", members, rule, 3600)
        .await
        .unwrap();
    let id: sov_core::ContentId = g.id.parse().unwrap();
    for i in cluster.live() {
        let n = cluster.node(i).clone();
        wait_for(&format!("node {i} holds the group"), WAIT, || {
            let n = n.clone();
            async move { n.gov_status(&id).await.is_ok() }
        })
        .await
        .unwrap();
    }
    id
}

async fn status_on(node: &Node, p: &sov_core::ContentId) -> Option<String> {
    node.gov_show(p).await.ok().map(|s| s.status)
}

async fn wait_status(cluster: &Cluster, nodes: &[usize], p: sov_core::ContentId, want: &str) {
    for &i in nodes {
        let n = cluster.node(i).clone();
        wait_for(&format!("node {i} sees {want}"), WAIT, || {
            let n = n.clone();
            async move { status_on(&n, &p).await.as_deref() == Some(want) }
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_pass_two_thirds_on_the_second_yes_and_the_certificate_verifies() {
    init_logging();
    let mut cluster = Cluster::start(3, seed(), Duration::from_secs(3600)).await;
    cluster.mesh().await;
    let group = found(&cluster, "2/3").await;
    let p = cluster
        .node(1)
        .gov_propose(
            &group,
            Action::Custom {
                text: "adopt the charter".into(),
            },
            None,
        )
        .await
        .unwrap();
    let p: sov_core::ContentId = p.id.parse().unwrap();
    wait_each(
        &cluster.nodes(0..3),
        "holds the proposal",
        WAIT,
        |n| async move { n.gov_show(&p).await.is_ok() },
    )
    .await;
    cluster.node(0).gov_vote(&p, Choice::Yes).await.unwrap();
    // One yes of three: the proposal stays open on every node, whatever arrives.
    let n2 = cluster.node(2).clone();
    wait_for("node 2 counts the first vote", WAIT, || {
        let n2 = n2.clone();
        async move { n2.gov_show(&p).await.unwrap().votes.len() == 1 }
    })
    .await
    .unwrap();
    for i in 0..3 {
        assert_eq!(status_on(cluster.node(i), &p).await.unwrap(), "open");
    }
    // A vote is final.
    let again = cluster.node(0).gov_vote(&p, Choice::No).await.unwrap_err();
    assert!(again.to_string().contains("final"), "{again}");
    cluster.node(1).gov_vote(&p, Choice::Yes).await.unwrap();
    wait_status(&cluster, &[0, 1, 2], p, "passed").await;
    // A later no changes nothing.
    let after = cluster.node(2).gov_vote(&p, Choice::No).await.unwrap();
    assert_eq!(after.status, "passed");
    wait_for("node 0 counts the late no", WAIT, || {
        let n = cluster.node(0).clone();
        async move { n.gov_show(&p).await.unwrap().votes.len() == 3 }
    })
    .await
    .unwrap();
    assert_eq!(status_on(cluster.node(0), &p).await.unwrap(), "passed");
    // The certificate holds alone (no node needed), on every node.
    for i in 0..3 {
        let cert = cluster.node(i).gov_certificate(&p).await.unwrap();
        let v = sov_gov::verify(&cert).unwrap();
        assert_eq!((v.status, v.proposal), (sov_gov::Status::Passed, p));
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_were_offline_during_a_vote_reach_the_same_outcome() {
    init_logging();
    let mut cluster = Cluster::start(7, seed(), Duration::from_secs(3600)).await;
    cluster.mesh().await;
    let group = found(&cluster, "majority").await;
    cluster.kill(5).await;
    cluster.kill(6).await;
    let p = cluster
        .node(0)
        .gov_propose(
            &group,
            Action::Custom {
                text: "while two are away".into(),
            },
            None,
        )
        .await
        .unwrap();
    let p: sov_core::ContentId = p.id.parse().unwrap();
    wait_for("every live node holds the proposal", WAIT, || {
        let nodes: Vec<Node> = (0..5).map(|i| cluster.node(i).clone()).collect();
        async move {
            for n in nodes {
                if n.gov_show(&p).await.is_err() {
                    return false;
                }
            }
            true
        }
    })
    .await
    .unwrap();
    for i in 0..4 {
        cluster.node(i).gov_vote(&p, Choice::Yes).await.unwrap();
    }
    wait_status(&cluster, &[0, 1, 2, 3, 4], p, "passed").await;
    let counted = cluster.node(0).gov_show(&p).await.unwrap().votes.len();
    cluster.restart(5).await;
    cluster.restart(6).await;
    cluster.mesh().await;
    wait_status(&cluster, &[5, 6], p, "passed").await;
    for i in [5, 6] {
        let s = cluster.node(i).gov_show(&p).await.unwrap();
        assert_eq!(s.votes.len(), counted, "node {i} checked every vote itself");
        let cert = cluster.node(i).gov_certificate(&p).await.unwrap();
        assert!(sov_gov::verify(&cert).is_ok());
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_promotion_is_served_under_the_groups_name_by_every_member() {
    init_logging();
    let dir = models_dir().join("all-MiniLM-L6-v2");
    let mut cluster = Cluster::start(3, seed(), Duration::from_secs(3600)).await;
    cluster.mesh().await;
    let group = found(&cluster, "2/3").await;
    let entry = cluster
        .node(0)
        .import_model(
            &dir,
            ImportOptions {
                name: Some("minilm".into()),
                license: Some("Apache-2.0".into()),
                parent: None,
                created: 1_800_000_000,
                chat_template: None,
            },
        )
        .await
        .unwrap();
    let p = cluster
        .node(0)
        .gov_propose(&group, Action::Promote { model: entry.id }, None)
        .await
        .unwrap();
    let p: sov_core::ContentId = p.id.parse().unwrap();
    let n1 = cluster.node(1).clone();
    wait_for("node 1 holds the proposal", WAIT, || {
        let n1 = n1.clone();
        async move { n1.gov_show(&p).await.is_ok() }
    })
    .await
    .unwrap();
    // Not served before it passes.
    assert!(cluster.node(1).model("co-op").await.is_err());
    cluster.node(0).gov_vote(&p, Choice::Yes).await.unwrap();
    cluster.node(1).gov_vote(&p, Choice::Yes).await.unwrap();
    for i in 0..3 {
        let n = cluster.node(i).clone();
        wait_for(&format!("node {i} serves the promoted model"), WAIT, || {
            let n = n.clone();
            async move { n.model("co-op").await.is_ok_and(|e| e.id == entry.id) }
        })
        .await
        .unwrap();
        let n = cluster.node(i);
        assert_eq!(n.model("default").await.unwrap().id, entry.id);
        let served = n.model("co-op").await.unwrap();
        let out = n
            .embed(
                &served,
                vec![sov_node::serve::EmbedInput::Text("a vote".into())],
            )
            .await
            .unwrap();
        assert_eq!(out[0].0.len(), 384);
        let shown = n.gov_show(&p).await.unwrap();
        assert_eq!(shown.enacted.unwrap().state, "done");
    }
    cluster.stop().await;
}

fn digits_policy(rounds: u32) -> sov_learn::federation::Policy {
    sov_learn::federation::Policy {
        rounds,
        strategy: "fedavg".into(),
        min_clients: 2,
        secagg: None,
        dp: None,
        epsilon_budget: None,
        local_epochs: 1,
        learning_rate: "0.1".into(),
        batch: 16,
        round_timeout_ms: 5_000,
    }
}

fn shard(i: usize, n: usize) -> sov_node::Membership {
    sov_node::Membership {
        data: format!("digits:{i}/{n}"),
        label_column: None,
        standardize: false,
    }
}

async fn fl_round(n: &Node, id: &sov_core::ContentId) -> u32 {
    n.fl_status(id).await.unwrap().round
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_governed_federation_admits_the_groups_members_and_drops_the_removed_from_the_next_round()
{
    init_logging();
    let mut cluster = Cluster::start(4, seed(), Duration::from_secs(3600)).await;
    cluster.mesh().await;
    // The group is nodes 0, 1 and 2; node 3 is not in it.
    let members = (0..3)
        .map(|i| member(cluster.node(i).did(), None, None))
        .collect();
    let g = cluster
        .node(0)
        .gov_create("lab", members, "majority", 3600)
        .await
        .unwrap();
    let group: sov_core::ContentId = g.id.parse().unwrap();
    wait_each(
        &cluster.nodes(0..3),
        "holds the group",
        WAIT,
        |n| async move { n.gov_status(&group).await.is_ok() },
    )
    .await;
    let task = sov_learn::federation::Task {
        data: "digits".into(),
        input: [1, 8, 8],
        classes: 10,
        model: "logreg".into(),
    };
    // Every member takes part in every round (min_clients = the three), so no two
    // aggregators can close one round with different members.
    let mut all_three = digits_policy(200);
    all_three.min_clients = 3;
    let fed = cluster
        .node(0)
        .fl_create("governed", task, all_three, shard(1, 4), Some(group))
        .await
        .unwrap();
    for i in 1..3 {
        cluster.node(i).fl_join(fed, shard(i + 1, 4)).await.unwrap();
    }
    let refused = cluster.node(3).fl_join(fed, shard(4, 4)).await.unwrap_err();
    assert!(
        refused.to_string().contains("not a member of group"),
        "{refused}"
    );
    let n0 = cluster.node(0).clone();
    wait_for("round 2", WAIT, || {
        let n0 = n0.clone();
        async move { fl_round(&n0, &fed).await >= 2 }
    })
    .await
    .unwrap();
    let removed = cluster.node(2).did().to_string();
    let n0 = cluster.node(0).clone();
    let r2 = removed.clone();
    wait_for(
        "node 2 to train in a round before its removal",
        WAIT,
        || {
            let n0 = n0.clone();
            let r2 = r2.clone();
            async move {
                n0.fl_status(&fed)
                    .await
                    .unwrap()
                    .history
                    .iter()
                    .any(|h| h.contributors.contains(&r2))
            }
        },
    )
    .await
    .unwrap();
    // Nodes 0 and 1 remove node 2 (a majority of three).
    let p = cluster
        .node(0)
        .gov_propose(
            &group,
            Action::Remove {
                member: cluster.node(2).did(),
            },
            None,
        )
        .await
        .unwrap();
    let p: sov_core::ContentId = p.id.parse().unwrap();
    let n1 = cluster.node(1).clone();
    wait_for("node 1 holds the removal", WAIT, || {
        let n1 = n1.clone();
        async move { n1.gov_show(&p).await.is_ok() }
    })
    .await
    .unwrap();
    cluster.node(0).gov_vote(&p, Choice::Yes).await.unwrap();
    cluster.node(1).gov_vote(&p, Choice::Yes).await.unwrap();
    for i in 0..2 {
        let n = cluster.node(i).clone();
        let removed = removed.clone();
        wait_for(&format!("node {i} drops node 2"), WAIT, || {
            let n = n.clone();
            let removed = removed.clone();
            async move { n.fl_status(&fed).await.unwrap().removed.contains(&removed) }
        })
        .await
        .unwrap();
    }
    // From now on nodes 0 and 1 neither count node 2 live (so do not ask it) nor answer
    // it, and node 2 itself stops taking part: with three needed, training waits.
    for i in 0..2 {
        let s = cluster.node(i).fl_status(&fed).await.unwrap();
        assert!(
            !s.live.contains(&removed),
            "node {i} still counts node 2 live"
        );
    }
    let n2 = cluster.node(2).clone();
    let r2 = removed.clone();
    wait_for("node 2 to know it was removed", WAIT, || {
        let n2 = n2.clone();
        let r2 = r2.clone();
        async move { n2.fl_status(&fed).await.unwrap().removed.contains(&r2) }
    })
    .await
    .unwrap();
    let at = fl_round(cluster.node(0), &fed).await;
    let s = cluster.node(0).fl_status(&fed).await.unwrap();
    for h in s.history.iter().filter(|h| h.round > at) {
        assert!(!h.contributors.contains(&removed), "{h:?}");
    }
    // Admitted by vote, node 3 may join now.
    let p = cluster
        .node(1)
        .gov_propose(
            &group,
            Action::Admit {
                member: cluster.node(3).did(),
                role: "member".into(),
                weight: 1,
            },
            None,
        )
        .await
        .unwrap();
    let p: sov_core::ContentId = p.id.parse().unwrap();
    let n0 = cluster.node(0).clone();
    wait_for("node 0 holds the admission", WAIT, || {
        let n0 = n0.clone();
        async move { n0.gov_show(&p).await.is_ok() }
    })
    .await
    .unwrap();
    cluster.node(0).gov_vote(&p, Choice::Yes).await.unwrap();
    cluster.node(1).gov_vote(&p, Choice::Yes).await.unwrap();
    wait_status(&cluster, &[0, 1], p, "passed").await;
    let n3 = cluster.node(3).clone();
    wait_for("node 3 learns of the group", WAIT, || {
        let n3 = n3.clone();
        async move { n3.gov_status(&group).await.is_ok() }
    })
    .await
    .unwrap();
    let joined = cluster.node(3).fl_join(fed, shard(4, 4)).await.unwrap();
    assert!(joined.members.contains(&cluster.node(3).did().to_string()));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_release_is_fetched_and_checked_by_every_member() {
    init_logging();
    let mut cluster = Cluster::start(3, seed(), Duration::from_secs(3600)).await;
    cluster.mesh().await;
    let group = found(&cluster, "majority").await;
    let artifact: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let (added, _) = cluster
        .node(0)
        .add(
            std::io::Cursor::new(artifact.clone()),
            sov_testkit::add_options("sov-0.2.0.tar"),
            Some(0),
        )
        .await
        .unwrap();
    let p = cluster
        .node(0)
        .gov_propose(
            &group,
            Action::Release {
                name: "sov".into(),
                version: "0.2.0".into(),
                artifact: added.id,
            },
            None,
        )
        .await
        .unwrap();
    let p: sov_core::ContentId = p.id.parse().unwrap();
    let n1 = cluster.node(1).clone();
    wait_for("node 1 holds the release", WAIT, || {
        let n1 = n1.clone();
        async move { n1.gov_show(&p).await.is_ok() }
    })
    .await
    .unwrap();
    // Not passed yet: nobody fetched it.
    assert!(!cluster.node(2).contains(added.id).await.unwrap());
    cluster.node(0).gov_vote(&p, Choice::Yes).await.unwrap();
    cluster.node(1).gov_vote(&p, Choice::Yes).await.unwrap();
    for i in 0..3 {
        let n = cluster.node(i).clone();
        wait_for(&format!("node {i} enacts the release"), WAIT, || {
            let n = n.clone();
            async move {
                n.gov_show(&p)
                    .await
                    .is_ok_and(|s| s.enacted.is_some_and(|e| e.state == "done"))
            }
        })
        .await
        .unwrap();
        assert!(cluster.node(i).contains(added.id).await.unwrap());
        assert_eq!(sov_testkit::read(cluster.node(i), added.id).await, artifact);
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_policy_change_holds_from_the_next_round_on_every_member() {
    init_logging();
    let mut cluster = Cluster::start(3, seed(), Duration::from_secs(3600)).await;
    cluster.mesh().await;
    let group = found(&cluster, "majority").await;
    let task = sov_learn::federation::Task {
        data: "digits".into(),
        input: [1, 8, 8],
        classes: 10,
        model: "logreg".into(),
    };
    let fed = cluster
        .node(0)
        .fl_create(
            "governed",
            task,
            // All three in every round: no two aggregators can close one round.
            sov_learn::federation::Policy {
                min_clients: 3,
                ..digits_policy(500)
            },
            shard(1, 3),
            Some(group),
        )
        .await
        .unwrap();
    for i in 1..3 {
        cluster.node(i).fl_join(fed, shard(i + 1, 3)).await.unwrap();
    }
    let n0 = cluster.node(0).clone();
    wait_for("round 2", WAIT, || {
        let n0 = n0.clone();
        async move { fl_round(&n0, &fed).await >= 2 }
    })
    .await
    .unwrap();
    // What members did not join for cannot change.
    let strategy = cluster
        .node(0)
        .gov_propose(
            &group,
            Action::Policy {
                federation: fed,
                changes: [("strategy".to_string(), "median".to_string())].into(),
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(strategy.to_string().contains("cannot change"), "{strategy}");
    // Stop training early: the federation ends after the round the vote allows.
    let stop_at = fl_round(cluster.node(0), &fed).await + 6;
    let p = cluster
        .node(1)
        .gov_propose(
            &group,
            Action::Policy {
                federation: fed,
                changes: [("rounds".to_string(), stop_at.to_string())].into(),
            },
            None,
        )
        .await
        .unwrap();
    let p: sov_core::ContentId = p.id.parse().unwrap();
    let n0 = cluster.node(0).clone();
    wait_for("node 0 holds the policy proposal", WAIT, || {
        let n0 = n0.clone();
        async move { n0.gov_show(&p).await.is_ok() }
    })
    .await
    .unwrap();
    cluster.node(0).gov_vote(&p, Choice::Yes).await.unwrap();
    cluster.node(1).gov_vote(&p, Choice::Yes).await.unwrap();
    for i in 0..3 {
        let n = cluster.node(i).clone();
        wait_for(
            &format!("node {i} finishes at round {stop_at}"),
            WAIT,
            || {
                let n = n.clone();
                async move {
                    n.fl_status(&fed)
                        .await
                        .is_ok_and(|s| s.finished && s.round >= 3)
                }
            },
        )
        .await
        .unwrap();
        let s = cluster.node(i).fl_status(&fed).await.unwrap();
        assert!(s.round <= stop_at, "node {i} trained to round {}", s.round);
        assert_eq!(s.rounds, stop_at, "node {i} holds the new policy");
    }
    cluster.stop().await;
}
