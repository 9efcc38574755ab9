//! The distributed gateway (issue 19) across real nodes in one process: a group adopts a
//! gateway policy by vote; a client the policy names gets a token from one member and it
//! opens, on every other member, what the policy gives and nothing more; a stranger gets
//! nothing; a token for the group signed by a node outside it is refused; a revocation made
//! on one member reaches the others by gossip, and a member that was away learns it by
//! catching up.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sov_gov::{Action, Choice, GatewayRule, Grantee};
use sov_identity::{
    Keypair,
    jwt::{AccessClaims, issue_access},
};
use sov_node::{
    Node,
    auth::{Grant, make_assertion},
    gov::member,
};
use sov_testkit::{Cluster, init_logging, seed, wait_each, wait_for};

const WAIT: Duration = Duration::from_secs(60);
const ENDPOINT: &str = "http://127.0.0.1:7878/oauth/token";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Ask `node`'s token endpoint for a token as `client`.
async fn ask(
    node: &Node,
    client: &Keypair,
    scope: Option<&str>,
) -> Result<Grant, sov_node::auth::OAuthError> {
    let jti = format!("{:x}", rand::random::<u64>());
    let a = make_assertion(client, ENDPOINT, now(), &jti);
    node.token_exchange(&a, &[ENDPOINT.into()], scope, None)
        .await
}

async fn wait_refused(node: &Node, token: &str, what: &str) {
    let n = node.clone();
    let t = token.to_owned();
    wait_for(what, WAIT, || {
        let n = n.clone();
        let t = t.clone();
        async move { n.token_check(&t).await.is_err() }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_one_member_opens_another_member_and_a_revocation_reaches_them_all() {
    init_logging();
    let mut cluster = Cluster::start(3, seed(), Duration::from_secs(3600)).await;
    cluster.mesh().await;
    let members = (0..3)
        .map(|i| member(cluster.node(i).did(), None, None))
        .collect();
    let g = cluster
        .node(0)
        .gov_create("market", members, "2/3", 3600)
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
    let consumer = Keypair::from_seed(&[41; 32]);
    let stranger = Keypair::from_seed(&[42; 32]);

    // No policy yet: the consumer gets nothing anywhere.
    let e = ask(cluster.node(0), &consumer, None).await.unwrap_err();
    assert_eq!(e.error, "unauthorized_client", "{e:?}");

    // A group never hands out admin on its members' nodes.
    let admin = cluster
        .node(0)
        .gov_propose(
            &group,
            Action::Gateway {
                rules: vec![GatewayRule {
                    who: Grantee::Did(consumer.did()),
                    scopes: vec!["admin".into()],
                }],
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(admin.to_string().contains("admin"), "{admin}");

    let p = cluster
        .node(0)
        .gov_propose(
            &group,
            Action::Gateway {
                rules: vec![
                    GatewayRule {
                        who: Grantee::Did(consumer.did()),
                        scopes: vec!["predict".into()],
                    },
                    GatewayRule {
                        who: Grantee::Members,
                        scopes: vec!["infer".into()],
                    },
                ],
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
    cluster.node(1).gov_vote(&p, Choice::Yes).await.unwrap();
    wait_each(
        &cluster.nodes(0..3),
        "sees the policy pass",
        WAIT,
        |n| async move { n.gov_show(&p).await.unwrap().status == "passed" },
    )
    .await;

    // The consumer asks node 0; the token is for the group, with the scope the policy gives.
    let grant = ask(cluster.node(0), &consumer, None).await.unwrap();
    assert_eq!(grant.scope, "predict");
    assert_eq!(grant.aud, format!("sov:group:{group}"));
    // More than the policy gives is refused.
    let e = ask(cluster.node(0), &consumer, Some("predict infer"))
        .await
        .unwrap_err();
    assert_eq!(e.error, "invalid_scope", "{e:?}");
    // It opens every member, with that scope only.
    for i in 0..3 {
        let c = cluster.node(i).token_check(&grant.access_token).await;
        let c = c.unwrap_or_else(|e| panic!("node {i} refused the group's token: {e}"));
        assert_eq!(
            (c.sub.as_str(), c.scope.as_str()),
            (&*consumer.did().to_string(), "predict")
        );
    }
    // A member client gets infer from another member, by the members rule.
    let member_key = Keypair::from_seed(&cluster_seed(&cluster, 1));
    let mg = ask(cluster.node(2), &member_key, None).await.unwrap();
    assert_eq!(mg.scope, "infer");
    cluster.node(0).token_check(&mg.access_token).await.unwrap();

    // A stranger gets nothing.
    let e = ask(cluster.node(1), &stranger, None).await.unwrap_err();
    assert_eq!(e.error, "unauthorized_client", "{e:?}");

    // A token for the group signed by a node outside it opens nothing.
    let forged = issue_access(
        &stranger,
        &AccessClaims {
            iss: stranger.did().to_string(),
            sub: consumer.did().to_string(),
            aud: format!("sov:group:{group}"),
            scope: "predict".into(),
            exp: now() + 600,
            iat: now(),
            jti: "0123456789abcdef".into(),
        },
    )
    .unwrap();
    let e = cluster.node(1).token_check(&forged).await.unwrap_err();
    assert!(e.contains("not a member"), "{e}");
    // Nor does a member's token with its claims changed (the signature no longer holds).
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    let mut parts: Vec<String> = grant.access_token.split('.').map(str::to_owned).collect();
    let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    assert!(claims.contains("\"predict\""));
    parts[1] = URL_SAFE_NO_PAD.encode(claims.replace("\"predict\"", "\"predict infer\""));
    let e = cluster
        .node(2)
        .token_check(&parts.join("."))
        .await
        .unwrap_err();
    assert!(e.contains("signature"), "{e}");

    // Revoked on node 0: refused on every member (gossip).
    cluster.node(0).token_revoke(&grant.jti).await.unwrap();
    for i in 0..3 {
        wait_refused(
            cluster.node(i),
            &grant.access_token,
            &format!("node {i} refuses the revoked token"),
        )
        .await;
    }

    // A member that was away when a token was revoked learns it by catching up.
    let second = ask(cluster.node(1), &consumer, None).await.unwrap();
    cluster
        .node(2)
        .token_check(&second.access_token)
        .await
        .unwrap();
    cluster.kill(2).await;
    cluster.node(1).token_revoke(&second.jti).await.unwrap();
    cluster.restart(2).await;
    cluster.mesh().await;
    wait_refused(
        cluster.node(2),
        &second.access_token,
        "node 2, back, refuses the token revoked while it was away",
    )
    .await;
    cluster.stop().await;
}

/// The key seed of node `i` (the cluster derives them from its seed, in order).
fn cluster_seed(cluster: &Cluster, i: usize) -> [u8; 32] {
    cluster.key_seed(i)
}
