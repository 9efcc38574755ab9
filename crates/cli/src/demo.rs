//! `sov demo`: a narrated walk-through of a small network of real nodes on loopback, each
//! with its own home (identity, redb store) and its own libp2p swarm, in this process.
//! Every step runs the real identity, store, network and replication code.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use sov_core::ContentId;
use sov_identity::{Keypair, keystore};
use sov_node::{AddOptions, Config, Node, PeerId};

use crate::output::{self, say};

const NAMES: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];
const REPLICAS: u32 = 2;

fn step(n: u32, text: &str) -> std::io::Result<()> {
    say!("\n[{n}] {text}")
}

/// Deterministic sample bytes (a BLAKE3 stream), so runs are comparable.
fn sample(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    blake3::Hasher::new_derive_key("sov demo sample data")
        .finalize_xof()
        .fill(&mut data);
    data
}

/// A demo node: a real home and, while it runs, a real node.
struct Member {
    name: &'static str,
    home: PathBuf,
    node: Option<Node>,
}

impl Member {
    fn node(&self) -> &Node {
        self.node
            .as_ref()
            .expect("the demo only uses running nodes")
    }
}

async fn start(home: &Path, bootstrap: Vec<sov_node::Multiaddr>) -> anyhow::Result<Node> {
    let key = keystore::load(home, None)?;
    let mut config = Config::loopback();
    config.bootstrap = bootstrap;
    config.repair_interval = Duration::from_secs(1);
    Ok(Node::start(home, key, config).await?)
}

async fn wait_until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await? {
        if Instant::now() > deadline {
            bail!("the demo timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Read `id` on `node` (fetching it from peers as needed); returns the bytes.
async fn read(node: &Node, id: ContentId) -> anyhow::Result<(Vec<u8>, sov_node::FetchReport)> {
    let report = node.fetch(id, None).await?;
    let bytes = node.read(id).await?;
    Ok((bytes, report))
}

/// Which running members keep `id` as a replica (read from their stores).
async fn replica_holders(members: &[Member], id: ContentId) -> anyhow::Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for m in members.iter().filter(|m| m.node.is_some()) {
        if m.node().pin(id).await?.is_some_and(|p| p.replica) {
            out.push(m.name);
        }
    }
    Ok(out)
}

pub fn run(dir: Option<PathBuf>, size_mib: usize, models: Option<PathBuf>) -> anyhow::Result<()> {
    if size_mib == 0 || size_mib > 4096 {
        bail!("--size-mib must be between 1 and 4096");
    }
    let (root, guard) = match dir {
        Some(d) => {
            if d.exists() && d.read_dir()?.next().is_some() {
                bail!(
                    "{} is not empty; give a new or empty directory",
                    d.display()
                );
            }
            std::fs::create_dir_all(&d)?;
            (d, None)
        }
        None => {
            let t = tempfile::tempdir().context("creating a temporary directory")?;
            (t.path().to_owned(), Some(t))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let models = models
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sov/models")));
    runtime.block_on(walk(&root, size_mib, models.as_deref()))?;
    if guard.is_none() {
        say!("\ndone. The homes are kept; look around, or run one of them:")?;
        say!("    sov --home {} data ls", root.join("bob").display())?;
        say!("    sov --home {} node run", root.join("bob").display())?;
    } else {
        say!("\ndone. (The temporary homes are removed; pass --dir DIR to keep them.)")?;
    }
    Ok(())
}

async fn walk(root: &Path, size_mib: usize, models: Option<&Path>) -> anyhow::Result<()> {
    say!(
        "sov demo: {} nodes on this machine's loopback, each with its own identity, encrypted store and peer-to-peer stack.",
        NAMES.len()
    )?;
    say!("homes under {}", root.display())?;

    step(
        1,
        "Each node creates its identity: an Ed25519 key, named by a did:key; its libp2p PeerId is the same key.",
    )?;
    let mut members = Vec::new();
    for name in NAMES {
        let home = root.join(name);
        let key = Keypair::generate();
        keystore::save(&home, &key, None, false)?;
        sov_identity::token::ensure(&home)?;
        say!(
            "    {name:<6} {}  {}",
            key.did(),
            sov_node::peer_id_of(&key.did())
        )?;
        members.push(Member {
            name,
            home,
            node: None,
        });
    }

    step(
        2,
        "alice starts; bob, carol and dave join through her and find each other in the DHT (erin waits).",
    )?;
    members[0].node = Some(start(&members[0].home, Vec::new()).await?);
    let alice_addrs = members[0].node().listen_addrs().await?;
    say!("    alice listens on {}", alice_addrs[0])?;
    for m in &mut members[1..4] {
        m.node = Some(start(&m.home, alice_addrs.clone()).await?);
    }
    let names: HashMap<PeerId, &str> = members
        .iter()
        .map(|m| {
            let did = keystore::peek_did(&m.home).expect("saved above");
            (sov_node::peer_id_of(&did), m.name)
        })
        .collect();
    let running: Vec<&Member> = members[..4].iter().collect();
    wait_until("the four nodes to connect to each other", || async {
        for m in &running {
            if m.node().peers().await?.len() < 3 {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;
    for m in &running {
        let mut peers: Vec<&str> = m
            .node()
            .peers()
            .await?
            .iter()
            .filter_map(|p| names.get(&p.peer_id).copied())
            .collect();
        peers.sort();
        say!("    {:<6} is connected to {}", m.name, peers.join(", "))?;
    }

    let len = size_mib << 20;
    step(
        3,
        &format!(
            "alice adds a {size_mib} MiB file, encrypted, and asks for {REPLICAS} replicas: peers pin blocks they cannot read."
        ),
    )?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut data = sample(len);
    let started = Instant::now();
    let (added, holders) = members[0]
        .node()
        .add(
            std::io::Cursor::new(data.clone()),
            AddOptions {
                name: "dataset.bin".into(),
                media_type: "application/octet-stream".into(),
                created: now,
            },
            Some(REPLICAS),
        )
        .await?;
    let id = added.id;
    say!("    object id {id}")?;
    say!(
        "    {} chunks; stored and replicated in {:.2} s",
        added.chunks,
        started.elapsed().as_secs_f64()
    )?;
    let holder_names: Vec<&str> = holders
        .iter()
        .filter_map(|p| names.get(p).copied())
        .collect();
    say!("    pinned by {}", holder_names.join(" and "))?;
    let holder = members
        .iter()
        .find(|m| Some(&m.name) == holder_names.first())
        .context("a holder")?;
    let info = holder.node().object(id).await?.info;
    say!(
        "    {} holds {} of ciphertext; its name and contents: {}",
        holder.name,
        output::bytes(info.stored_bytes),
        if info.meta.is_none() {
            "unreadable (no grant)"
        } else {
            "readable?!"
        }
    )?;
    if info.meta.is_some() {
        bail!("a replica could read an object it was never granted: the demo found a bug");
    }

    // The reader is a node that holds no copy yet.
    let bob = members[1..4]
        .iter()
        .find(|m| !holder_names.contains(&m.name))
        .context("a node without a copy")?;
    step(
        4,
        &format!(
            "alice grants bob, carol, dave and erin read access; {} reads the object over the network.",
            bob.name
        ),
    )?;
    for reader in &NAMES[1..] {
        let did = keystore::peek_did(&root.join(reader))?;
        members[0].node().grant(id, did).await?;
    }
    let started = Instant::now();
    let (bytes, report) = read(bob.node(), id).await?;
    let secs = started.elapsed().as_secs_f64();
    if bytes != data {
        bail!("{} read different bytes: the demo found a bug", bob.name);
    }
    let from: Vec<String> = report
        .providers
        .iter()
        .map(|(p, n)| format!("{} ({n} blocks)", names.get(p).copied().unwrap_or("?")))
        .collect();
    say!(
        "    {} fetched {} blocks from {} in {:.2} s ({:.0} MB/s), each checked against its CID",
        bob.name,
        report.blocks,
        from.join(", "),
        secs,
        len as f64 / secs / 1e6
    )?;
    say!("    {} read {} identical bytes", bob.name, bytes.len())?;
    let named = |readers: Vec<sov_core::Did>| -> Vec<&str> {
        let mut v: Vec<&str> = readers
            .iter()
            .map(|d| names.get(&sov_node::peer_id_of(d)).copied().unwrap_or("?"))
            .collect();
        v.sort_unstable();
        v
    };
    let by_owner = named(members[0].node().readers(id).await?);
    let others: Vec<&str> = named(holder.node().readers(id).await?)
        .into_iter()
        .filter(|n| *n != holder.name)
        .collect();
    say!(
        "    grants hide their readers: alice names all {} ({}); {}, holding the grants, names no one but alice and itself",
        by_owner.len(),
        by_owner.join(", "),
        holder.name,
    )?;
    if others != ["alice"] || by_owner.len() != NAMES.len() {
        bail!(
            "readers named wrongly (owner: {by_owner:?}, holder: {others:?}): the demo found a bug"
        );
    }

    step(
        5,
        &format!(
            "alice edits one byte and shares version 2: {} fetches only the chunks it lacks.",
            bob.name
        ),
    )?;
    data[len / 2] ^= 0xff;
    let (v2, _) = members[0]
        .node()
        .add(
            std::io::Cursor::new(data.clone()),
            AddOptions {
                name: "dataset-v2.bin".into(),
                media_type: "application/octet-stream".into(),
                created: now,
            },
            Some(0),
        )
        .await?;
    members[0].node().grant(v2.id, bob.node().did()).await?;
    let (bytes, report) = read(bob.node(), v2.id).await?;
    if bytes != data {
        bail!("version 2 read back different bytes: the demo found a bug");
    }
    say!(
        "    version 2 has {} chunks; {} fetched {} of them ({}) and read identical bytes",
        v2.chunks,
        bob.name,
        report.blocks,
        output::bytes(report.bytes)
    )?;

    let (victim, reader) = (holder.name, bob.name);
    step(
        6,
        &format!(
            "alice and {victim} (a holder) go offline; the remaining holder repairs: a new peer pins the object."
        ),
    )?;
    let before = replica_holders(&members, id).await?;
    for name in ["alice", victim] {
        let m = members
            .iter_mut()
            .find(|m| m.name == name)
            .context("member")?;
        if let Some(n) = m.node.take() {
            n.shutdown().await;
        }
        say!("    {name} stopped")?;
    }
    let started = Instant::now();
    let members_ref = &members;
    wait_until("repair to bring the replicas back", || async move {
        Ok(replica_holders(members_ref, id).await?.len() >= REPLICAS as usize)
    })
    .await?;
    let after = replica_holders(&members, id).await?;
    say!(
        "    replicas before: {}; after repair ({:.1} s): {}",
        before.join(", "),
        started.elapsed().as_secs_f64(),
        after.join(", ")
    )?;
    // Holders are not taken at their word: each counts only after a storage challenge.
    if let Some(checker) = members
        .iter()
        .find(|m| m.node.is_some() && after.contains(&m.name))
    {
        let proved: Vec<&str> = checker
            .node()
            .live_holders(id)
            .await?
            .iter()
            .filter_map(|p| names.get(p).copied())
            .collect();
        say!(
            "    {} challenged the other holders on a random piece of a random chunk; copies proved by: {}",
            checker.name,
            if proved.is_empty() {
                "none".to_string()
            } else {
                proved.join(", ")
            }
        )?;
    }

    let entry = members[1..4]
        .iter()
        .find(|m| m.node.is_some() && m.name != reader)
        .or_else(|| members[1..4].iter().find(|m| m.node.is_some()))
        .context("a running node")?;
    step(
        7,
        &format!(
            "erin joins through {} alone, finds the object in the DHT and reads it.",
            entry.name
        ),
    )?;
    let entry_name = entry.name;
    let entry_addrs = entry.node().listen_addrs().await?;
    members[4].node = Some(start(&members[4].home, entry_addrs).await?);
    let (bytes, report) = read(members[4].node(), id).await?;
    if bytes != sample(len) {
        bail!("erin read different bytes: the demo found a bug");
    }
    let from: Vec<&str> = report
        .providers
        .keys()
        .filter_map(|p| names.get(p).copied())
        .collect();
    say!(
        "    erin fetched {} blocks from {} and read {} identical bytes",
        report.blocks,
        from.join(", "),
        bytes.len()
    )?;

    model_step(&members, entry_name, models).await?;
    let model = federation_step(&mut members).await?;
    governance_step(&mut members, &model, root).await?;
    tokio::task::block_in_place(learning_step)?;
    market_step(&members).await?;

    for m in &mut members {
        if let Some(n) = m.node.take() {
            n.shutdown().await;
        }
    }
    Ok(())
}

/// Wait until `check` holds on every node of `nodes`.
async fn wait_all<F, Fut>(what: &str, nodes: &[Node], check: F) -> anyhow::Result<()>
where
    F: Fn(Node) -> Fut + Clone,
    Fut: std::future::Future<Output = bool>,
{
    wait_until(what, || {
        let nodes = nodes.to_vec();
        let check = check.clone();
        async move {
            for n in nodes {
                if !check(n).await {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    })
    .await
}

/// One HTTP exchange of the demo's outside client: `(status, JSON body)`.
fn http(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    form: Option<Vec<(String, String)>>,
    json: Option<serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut resp = match (method, form, json) {
        ("POST", Some(f), _) => {
            let mut r = agent.post(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send_form(f.iter().map(|(k, v)| (k.as_str(), v.as_str())))?
        }
        ("POST", None, Some(j)) => {
            let mut r = agent.post(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send_json(j)?
        }
        _ => {
            let mut r = agent.get(url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()?
        }
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    Ok((status, serde_json::from_str(&text).unwrap_or_default()))
}

async fn http_async(
    method: &'static str,
    url: String,
    bearer: Option<String>,
    form: Option<Vec<(String, String)>>,
    json: Option<serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    tokio::task::spawn_blocking(move || http(method, &url, bearer.as_deref(), form, json)).await?
}

/// The form a client posts to `/oauth/token`: a JWT signed by its own key (RFC 7523).
fn token_form(client: &Keypair, endpoint: &str, scope: &str) -> Vec<(String, String)> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let jti = format!("{:032x}", rand::random::<u128>());
    vec![
        ("grant_type".into(), "client_credentials".into()),
        (
            "client_assertion_type".into(),
            sov_node::auth::ASSERTION_TYPE.into(),
        ),
        (
            "client_assertion".into(),
            sov_node::auth::make_assertion(client, endpoint, now, &jti),
        ),
        ("scope".into(), scope.into()),
    ]
}

/// Step 12: the seeds' data marketplace. The co-op sells predictions, never data: the group
/// votes a gateway policy that lets a consumer (its own did:key) get tokens with scope
/// `predict`; the consumer gets one from one member's gateway and is served by another's.
async fn market_step(members: &[Member]) -> anyhow::Result<()> {
    use sov_node::gov::{Action, Choice};
    step(
        12,
        "the data marketplace: the co-op sells predictions, never its data. A consumer with \
         its own did:key asks; the group decides by vote who may ask, for what; any member's \
         gateway serves the consumer.",
    )?;
    let running: Vec<&Member> = members.iter().filter(|m| m.node.is_some()).collect();
    let (seller, other) = (running[0], running[running.len() - 1]);
    // Two members open their gateways (`sov node run` does this for every node).
    let mut stops = Vec::new();
    let mut bases = Vec::new();
    for m in [seller, other] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        bases.push(format!("http://{}", listener.local_addr()?));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        let node = m.node().clone();
        tokio::spawn(async move {
            let admin = format!("{:064x}", rand::random::<u128>());
            let _ = sov_api::serve(listener, node, &admin, async {
                let _ = rx.await;
            })
            .await;
        });
    }
    let consumer = Keypair::generate();
    let stranger = Keypair::generate();
    say!(
        "    a consumer, {}, asks {}'s gateway for a token",
        short(&consumer.did().to_string()),
        seller.name
    )?;
    let endpoint = format!("{}/oauth/token", bases[0]);
    let (status, e) = http_async(
        "POST",
        endpoint.clone(),
        None,
        Some(token_form(&consumer, &endpoint, "predict")),
        None,
    )
    .await?;
    say!(
        "    refused ({status} {}): no rule lets it in yet",
        e["error"].as_str().unwrap_or("?")
    )?;

    // The group adopts a gateway policy by vote.
    let group = seller
        .node()
        .gov_groups()
        .await?
        .into_iter()
        .find(|g| g.name == "digits-coop")
        .context("the group of step 10")?;
    let gid: ContentId = group.id.parse()?;
    let rule = format!("{}=predict", consumer.did());
    let p = seller
        .node()
        .gov_propose(
            &gid,
            Action::Gateway {
                rules: vec![rule.parse()?],
            },
            None,
        )
        .await?;
    let pid: ContentId = p.id.parse()?;
    say!(
        "    {} proposes {} (`sov gov propose {} gateway --allow DID=predict`)",
        seller.name,
        p.action,
        short(&group.id)
    )?;
    let nodes: Vec<Node> = running.iter().map(|m| m.node().clone()).collect();
    wait_all(
        "every running member to hold the proposal",
        &nodes,
        |n| async move { n.gov_show(&pid).await.is_ok() },
    )
    .await?;
    for m in &running {
        if m.node().gov_show(&pid).await?.status == "passed" {
            break;
        }
        m.node().gov_vote(&pid, Choice::Yes).await?;
    }
    wait_all(
        "every running member to pass the policy",
        &nodes,
        |n| async move { n.gov_show(&pid).await.is_ok_and(|s| s.status == "passed") },
    )
    .await?;
    let s = seller.node().gov_show(&pid).await?;
    say!(
        "    {} of {} members vote yes: passed on every node",
        s.votes.len(),
        group.members.len()
    )?;

    // The consumer gets a token from the seller's gateway…
    let (status, grant) = http_async(
        "POST",
        endpoint.clone(),
        None,
        Some(token_form(&consumer, &endpoint, "predict")),
        None,
    )
    .await?;
    if status != 200 {
        bail!("the token endpoint refused the consumer: {grant}");
    }
    let token = grant["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    say!(
        "    asked again (a JWT signed by its own key, RFC 7523): a token for scope {}, valid {} s, for the whole group ({})",
        grant["scope"].as_str().unwrap_or("?"),
        grant["expires_in"],
        short(grant["aud"].as_str().unwrap_or("?"))
    )?;
    // … and uses it on another member's.
    let test = sov_learn::data::digits()?.stratified_split(0.25, 0)?.test;
    let rows: Vec<Vec<f32>> = (20..30).map(|i| test.row(i).to_vec()).collect();
    let (status, answer) = http_async(
        "POST",
        format!("{}/api/v1/models/digits-coop/predict", bases[1]),
        Some(token.clone()),
        None,
        Some(serde_json::json!({ "rows": rows })),
    )
    .await?;
    if status != 200 {
        bail!(
            "{}'s gateway refused the consumer's token: {answer}",
            other.name
        );
    }
    let predicted: Vec<usize> = answer["classes"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.as_u64())
                .map(|c| c as usize)
                .collect()
        })
        .unwrap_or_default();
    let truth: Vec<usize> = test.labels[20..30].iter().map(|&l| l as usize).collect();
    let right = predicted.iter().zip(&truth).filter(|(a, b)| a == b).count();
    say!(
        "    {}'s gateway honours it (signed by {}, a member): predictions {:?} for ten images (true {:?}), {right} right",
        other.name,
        seller.name,
        predicted,
        truth
    )?;
    let (status, _) = http_async(
        "GET",
        format!("{}/api/v1/objects", bases[1]),
        Some(token.clone()),
        None,
        None,
    )
    .await?;
    say!(
        "    the same token on the members' data (`GET /api/v1/objects`): {status}, it opens predictions only"
    )?;
    let (status, e) = http_async(
        "POST",
        endpoint.clone(),
        None,
        Some(token_form(&stranger, &endpoint, "predict")),
        None,
    )
    .await?;
    say!(
        "    a DID the policy does not name, {}: refused ({status} {})",
        short(&stranger.did().to_string()),
        e["error"].as_str().unwrap_or("?")
    )?;
    // The seller revokes the token; the revocation travels to every member.
    let jti = seller
        .node()
        .token_list()
        .await?
        .into_iter()
        .find(|t| t.sub == consumer.did().to_string())
        .context("the consumer's token")?
        .jti;
    seller.node().token_revoke(&jti).await?;
    let url = format!("{}/api/v1/models/digits-coop/predict", bases[1]);
    let row = rows[0].clone();
    wait_until("the revocation to reach the other member", || {
        let (url, token, row) = (url.clone(), token.clone(), row.clone());
        async move {
            let (status, _) = http_async(
                "POST",
                url,
                Some(token),
                None,
                Some(serde_json::json!({ "rows": [row] })),
            )
            .await?;
            Ok(status == 401)
        }
    })
    .await?;
    say!(
        "    {} revokes the token (`sov token revoke JTI`): signed and gossiped, {} refuses it too (401)",
        seller.name,
        other.name
    )?;
    for stop in stops {
        let _ = stop.send(());
    }
    Ok(())
}

/// A long id shortened for reading: its first 16 and last 6 characters.
fn short(s: &str) -> String {
    if s.len() <= 26 {
        return s.to_owned();
    }
    format!("{}…{}", &s[..16], &s[s.len() - 6..])
}

/// Step 11: federated learning against attackers on heterogeneous data, simulated in this
/// process through the same round code a federation runs.
fn learning_step() -> anyhow::Result<()> {
    use sov_learn::{
        attack::Attack,
        data,
        partition::Partition,
        sim::{SimConfig, Simulation},
        strategy::{self, Strategy},
        train::TrainConfig,
    };
    step(
        11,
        "20 clients learn digits together, each holding mostly one or two classes (Dirichlet \
         0.1); 4 of them send their updates flipped ×−10. (Simulated in this process, as \
         `sov fl simulate --robust` does; docs/ROBUSTNESS.md has every attack.)",
    )?;
    let d = data::digits()?.stratified_split(0.25, 0)?;
    let parts = Partition::Dirichlet(0.1).apply(&d.train, 20, 2)?;
    let run = |strategy: Strategy| -> anyhow::Result<(f32, Vec<u32>, Vec<u32>)> {
        let cfg = SimConfig {
            rounds: 30,
            strategy,
            malicious: 0.2,
            attack: Some(Attack::SignFlip),
            train: TrainConfig {
                epochs: 2,
                ..TrainConfig::default()
            },
            seed: 2,
            ..SimConfig::default()
        };
        let mut sim = Simulation::new(cfg, &d, &parts)?;
        let mut last = None;
        for _ in 0..30 {
            last = Some(sim.round()?);
        }
        let last = last.context("no round ran")?;
        let bad = (0..20u32)
            .filter(|&c| sim.malicious()[c as usize])
            .collect();
        Ok((last.accuracy, last.screened.unwrap_or_default(), bad))
    };
    let (fedavg, _, bad) = run(Strategy::FedAvg)?;
    say!(
        "    FedAvg: accuracy {:.1} % after 30 rounds",
        fedavg * 100.0
    )?;
    let rule = strategy::robust(20, 0.2)?;
    let (robust, out, _) = run(rule)?;
    let list = |ids: &[u32]| {
        ids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    say!(
        "    --robust ({rule}): accuracy {:.1} %; it screened out clients {} (the attackers: {})",
        robust * 100.0,
        list(&out),
        list(&bad)
    )?;
    Ok(())
}

/// Step 9: the running nodes train one model together, each on its own share of the digits,
/// under secure aggregation and differential privacy; the aggregator is stopped mid-training.
async fn federation_step(members: &mut [Member]) -> anyhow::Result<String> {
    use sov_learn::federation::{DpPolicy, Policy, SecAggPolicy, Task};
    // The nodes that went offline come back first.
    let back = members
        .iter()
        .find(|m| m.node.is_some())
        .context("a running node")?
        .node()
        .listen_addrs()
        .await?;
    for m in members.iter_mut().filter(|m| m.node.is_none()) {
        m.node = Some(start(&m.home, back.clone()).await?);
    }
    let running: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].node.is_some())
        .collect();
    let n = running.len();
    step(
        9,
        &format!(
            "{} train one digits classifier together: each holds its own share of the data, \
             which never leaves it; secure aggregation shows each round's aggregator only the \
             sum, and each member adds its share of differential-privacy noise.",
            running
                .iter()
                .map(|&i| members[i].name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )?;
    // Members stay connected to one another, as a federation's members do.
    for &i in &running {
        for &j in &running {
            if i < j {
                for a in members[j].node().listen_addrs().await? {
                    if members[i].node().dial(a).await.is_ok() {
                        break;
                    }
                }
            }
        }
    }
    let rounds = 12;
    let policy = Policy {
        rounds,
        strategy: "fedavg".into(),
        min_clients: 3,
        secagg: Some(SecAggPolicy {
            neighbours: None,
            threshold: None,
        }),
        dp: Some(DpPolicy {
            noise: "0.5".into(),
            clip: "0.5".into(),
            delta: "1e-5".into(),
        }),
        epsilon_budget: None,
        local_epochs: 3,
        learning_rate: "0.2".into(),
        batch: 16,
        round_timeout_ms: 20_000,
    };
    let task = Task {
        data: "digits".into(),
        input: [1, 8, 8],
        classes: 10,
        model: "logreg".into(),
    };
    let shard = |k: usize| sov_node::Membership {
        data: format!("digits:{k}/{n}"),
        label_column: None,
        standardize: false,
    };
    let creator = running[0];
    let id = members[creator]
        .node()
        .fl_create("digits together", task, policy, shard(1), None)
        .await?;
    say!(
        "    {} founds federation {id} (`sov fl create --task digits --secagg --dp-noise 0.5 …`)",
        members[creator].name
    )?;
    for (k, &i) in running.iter().enumerate().skip(1) {
        members[i].node().fl_join(id, shard(k + 1)).await?;
    }
    say!("    the others join with their own shards (`sov fl join {id} --data digits:K/{n}`)")?;
    let live_nodes = |members: &[Member]| -> Vec<Node> {
        members
            .iter()
            .filter(|m| m.node.is_some())
            .map(|m| m.node().clone())
            .collect()
    };
    let all_at = |nodes: Vec<Node>, round: u32| async move {
        for node in &nodes {
            if !node
                .fl_status(&id)
                .await
                .is_ok_and(|s| s.round >= round && s.has_model)
            {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let nodes = live_nodes(members);
    wait_until("round 4 of the federation", || all_at(nodes.clone(), 4)).await?;
    let status = nodes[0].fl_status(&id).await?;
    let victim = status
        .aggregator
        .clone()
        .context("no aggregator for round 5")?;
    if let Some(m) = members.iter_mut().find(|m| {
        m.node
            .as_ref()
            .is_some_and(|n| n.did().to_string() == victim)
    }) {
        say!(
            "    round {} closed; {} is aggregating round {} and stops now",
            status.round,
            m.name,
            status.round + 1
        )?;
        if let Some(node) = m.node.take() {
            node.shutdown().await;
        }
    }
    let nodes = live_nodes(members);
    wait_until("the federation to finish on every live node", || {
        all_at(nodes.clone(), rounds)
    })
    .await?;
    let live: Vec<&Member> = members.iter().filter(|m| m.node.is_some()).collect();
    let s = live[0].node().fl_status(&id).await?;
    for h in &s.history {
        let by = live
            .iter()
            .chain(
                members
                    .iter()
                    .filter(|m| m.node.is_none())
                    .collect::<Vec<_>>()
                    .iter(),
            )
            .find(|m| {
                keystore::load(&m.home, None).is_ok_and(|k| k.did().to_string() == h.aggregator)
            })
            .map_or("?", |m| m.name);
        say!(
            "    round {:>2}: aggregated by {:<5}  {} members summed  validation {:.1} %  ε {:.1}",
            h.round,
            by,
            h.contributors.len(),
            h.accuracy.unwrap_or(0.0) * 100.0,
            h.epsilon.unwrap_or(0.0)
        )?;
    }
    let model = s.model_id.clone().context("no model was published")?;
    wait_until("every live node to hold the final model", || {
        let nodes: Vec<Node> = live.iter().map(|m| m.node().clone()).collect();
        let model = model.clone();
        async move {
            for n in &nodes {
                if n.classifier(&model).await.is_err() {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    })
    .await?;
    let reader = live[live.len() - 1];
    let c = reader.node().classifier(&model).await?;
    let valid = reader.node().model_signature_valid(&model).await?;
    let report = reader
        .node()
        .evaluate_model(&model, "digits:test", None, false)
        .await?;
    say!(
        "    every live node holds the final model {} (manifest {}, signature {}, ε = {:.1}, δ = 1e-5)",
        c.entry.manifest.name,
        model,
        if valid { "valid" } else { "INVALID" },
        s.epsilon.unwrap_or(0.0)
    )?;
    say!(
        "    on the digits' test split, which no member trained on: {:.1} % accurate ({} rows)",
        report.accuracy * 100.0,
        report.rows
    )?;
    let test = sov_learn::data::digits()?.stratified_split(0.25, 0)?.test;
    let rows: Vec<Vec<f32>> = (0..10).map(|i| test.row(i).to_vec()).collect();
    let p = reader.node().predict(&model, rows).await?;
    let best: Vec<usize> = p
        .iter()
        .map(|row| {
            (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0)
        })
        .collect();
    let right = best
        .iter()
        .zip(&test.labels)
        .filter(|(b, l)| **b as u32 == **l)
        .count();
    say!(
        "    {} classifies ten test images: {} (true: {}), {right} right — \
         `POST /api/v1/models/{{id}}/predict` answers the same over the API",
        reader.name,
        best.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        test.labels[..10]
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    )?;
    say!(
        "    (five members make ε large: the noise each adds is tuned for accuracy here; more \
         members add less each for the same ε)"
    )?;
    Ok(model)
}

/// Step 10: the members vote to promote the model they trained; every node then serves it
/// under the group's name, and the member that was away catches up on the vote.
async fn governance_step(members: &mut [Member], model: &str, root: &Path) -> anyhow::Result<()> {
    use sov_node::gov::{Action, Choice, member};
    step(
        10,
        "the five decide together, by signed votes, to serve the model they trained: a group \
         with a 2/3 rule, a proposal to promote the model, and votes that travel by gossip. No \
         server counts them: every node tallies the same signed votes itself.",
    )?;
    let dids: Vec<sov_core::Did> = members
        .iter()
        .map(|m| keystore::load(&m.home, None).map(|k| k.did()))
        .collect::<Result<_, _>>()?;
    let running: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].node.is_some())
        .collect();
    let founder = running[0];
    let group = members[founder]
        .node()
        .gov_create(
            "digits-coop",
            dids.iter().map(|d| member(*d, None, None)).collect(),
            "2/3",
            3600,
        )
        .await?;
    let gid: ContentId = group.id.parse()?;
    say!(
        "    {} founds group digits-coop ({}) of all five, rule 2/3 (`sov gov create --members … --threshold 2/3`)",
        members[founder].name,
        group.id
    )?;
    let nodes: Vec<Node> = running.iter().map(|&i| members[i].node().clone()).collect();
    wait_all(
        "every running member to hold the group",
        &nodes,
        |n| async move { n.gov_status(&gid).await.is_ok() },
    )
    .await?;
    let model_id: ContentId = model.parse()?;
    let p = members[founder]
        .node()
        .gov_propose(&gid, Action::Promote { model: model_id }, None)
        .await?;
    let pid: ContentId = p.id.parse()?;
    say!(
        "    {} proposes: {} (`sov gov propose {} promote {model}`)",
        members[founder].name,
        p.action,
        group.id
    )?;
    wait_all(
        "every running member to hold the proposal",
        &nodes,
        |n| async move { n.gov_show(&pid).await.is_ok() },
    )
    .await?;
    // Four of five must say yes (2/3 of 5 is 3.33): after three the proposal is still open.
    for (k, &i) in running.iter().enumerate() {
        members[i].node().gov_vote(&pid, Choice::Yes).await?;
        wait_until("every running node to count the vote", || {
            let nodes = nodes.clone();
            async move {
                for n in &nodes {
                    if n.gov_show(&pid).await.map(|s| s.votes.len()).unwrap_or(0) <= k {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        })
        .await?;
        let s = nodes[nodes.len() - 1].gov_show(&pid).await?;
        let c = &s.clauses[0];
        say!(
            "    {:<5} votes yes; every node counts {} of {} (2/3 needs {}): {}",
            members[i].name,
            c.yes,
            c.eligible,
            (2 * c.eligible).div_ceil(3),
            s.status
        )?;
    }
    wait_all(
        "every running member to serve digits-coop",
        &nodes,
        |n| async move { n.model("digits-coop").await.is_ok_and(|e| e.id == model_id) },
    )
    .await?;
    say!(
        "    passed on every node; each now serves the model as \"digits-coop\" (and \"default\"): \
         `GET /v1/models/digits-coop`, `POST /api/v1/models/digits-coop/predict`"
    )?;
    // The member that stopped during training comes back and catches up on the vote.
    let back = members[founder].node().listen_addrs().await?;
    if let Some(m) = members.iter_mut().find(|m| m.node.is_none()) {
        m.node = Some(start(&m.home, back).await?);
        let node = m.node().clone();
        for n in &nodes {
            for a in n.listen_addrs().await? {
                if node.dial(a).await.is_ok() {
                    break;
                }
            }
        }
        wait_until(&format!("{} to catch up on the vote", m.name), || {
            let node = node.clone();
            async move {
                Ok(node
                    .gov_show(&pid)
                    .await
                    .is_ok_and(|s| s.status == "passed")
                    && node
                        .model("digits-coop")
                        .await
                        .is_ok_and(|e| e.id == model_id))
            }
        })
        .await?;
        let s = node.gov_show(&pid).await?;
        say!(
            "    {} was away during the vote; back, it learns the {} votes from a member, checks \
             each itself, finds the proposal {}, pulls the model and serves it too",
            m.name,
            s.votes.len(),
            s.status
        )?;
    }
    let cert = members[founder].node().gov_certificate(&pid).await?;
    let path = root.join("digits-coop.cert");
    std::fs::write(&path, &cert)?;
    let v = sov_node::gov::verify_certificate(&cert)?;
    say!(
        "    its certificate ({} bytes, {} signed votes) proves the outcome to anyone, offline: \
         `sov gov verify {}` says {}",
        cert.len(),
        v.tally.counted.len(),
        path.display(),
        v.status.as_str()
    )?;
    Ok(())
}

/// Step 8: a model travels as signed, encrypted objects and answers on the node that pulled it.
async fn model_step(members: &[Member], owner: &str, models: Option<&Path>) -> anyhow::Result<()> {
    const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let Some(path) = models.map(|d| d.join(FILE)).filter(|p| p.is_file()) else {
        step(
            8,
            "a model step is skipped: no SmolLM2 in the model cache (scripts/fetch-models puts it there; or --models DIR).",
        )?;
        return Ok(());
    };
    let owner = members
        .iter()
        .find(|m| m.name == owner)
        .context("the model's owner")?;
    let erin = &members[4];
    step(
        8,
        &format!(
            "{} imports SmolLM2-135M as a model with a signed manifest and shares it with erin; erin pulls it from the network, checks the signature, and asks it a question.",
            owner.name
        ),
    )?;
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let entry = owner
        .node()
        .import_model(
            &path,
            sov_node::models::ImportOptions {
                name: Some("smollm2".into()),
                license: Some("Apache-2.0".into()),
                parent: None,
                created,
                chat_template: None,
            },
        )
        .await?;
    say!(
        "    {} imported {} ({} parameters, {}); model id {}",
        owner.name,
        entry.manifest.name,
        entry.manifest.parameters,
        output::bytes(entry.manifest.weights_size),
        entry.id
    )?;
    // The owner offers it on gossip; erin checks the offer's signature and signer.
    let heard = Instant::now();
    let offer = loop {
        let found = erin
            .node()
            .announced_models()
            .into_iter()
            .find(|e| e.id == entry.id);
        if found.is_some() || heard.elapsed() > Duration::from_secs(20) {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    match offer {
        Some(o) => say!(
            "    erin hears the offer on gossip (sov/models/1) after {:.1} s: {}, signed by {}",
            heard.elapsed().as_secs_f64(),
            o.manifest.name,
            owner.name
        )?,
        None => say!("    (the gossip offer has not reached erin yet; she pulls by id)")?,
    }
    owner
        .node()
        .share_model("smollm2", erin.node().did())
        .await?;
    let started = Instant::now();
    let pulled = erin.node().pull_model(entry.id).await?;
    if pulled != entry {
        bail!("erin pulled a different manifest: the demo found a bug");
    }
    say!(
        "    erin pulled it in {:.1} s; manifest signed by {} ({}), weights verified block by block",
        started.elapsed().as_secs_f64(),
        owner.name,
        pulled.signer
    )?;
    let question = "What is the capital of France?";
    let answer = crate::model::generate(
        erin.node(),
        &pulled,
        sov_node::serve::Generation {
            prompt: sov_node::serve::Prompt::Chat(vec![
                sov_models::chat::Message::new("system", "You are a helpful assistant."),
                sov_models::chat::Message::new("user", question),
            ]),
            max_tokens: Some(32),
            sampling: sov_models::sample::SamplingParams::greedy(),
            stop: Vec::new(),
            logprobs: None,
            constraint: None,
            tools: None,
            cache_scope: String::new(),
        },
        &mut |_| Ok(()),
    )
    .await?;
    say!("    erin asks: {question}")?;
    say!(
        "    smollm2 on erin's node answers: {} ({} tokens at {:.0} tokens/s)",
        answer.text.trim(),
        answer.completion_tokens,
        answer.decode_tokens_per_s()
    )?;
    Ok(())
}
