//! [`Node`]: the handle, start-up, the supervised task set, and shutdown.
//!
//! Every task a node runs (the event loop, repair, announcing, each answer to a peer, each
//! store operation on the blocking pool, each model worker) is spawned into one [`JoinSet`]
//! owned by the node. [`Node::shutdown`] stops them all, waits until every one has ended,
//! and closes the store: when it returns, the home can be opened again at once.

use std::{
    collections::HashMap,
    future::Future,
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use sov_core::{ContentId, Did};
use sov_identity::Keypair;
use sov_net::{Multiaddr, PeerId, PeerInfo};
use sov_store::Store;
use tokio::{
    sync::{Semaphore, oneshot, watch},
    task::JoinSet,
};
use tracing::{debug, info, warn};

use crate::{Config, Error, Result, models::ManifestCache, serve::Serve};

/// Want-lists answered at once (each reads up to 16 MiB from the store).
const SERVE_SLOTS: usize = 8;
/// How long tasks get to end by themselves at shutdown before they are aborted.
const GRACE: Duration = Duration::from_secs(3);
/// How long shutdown waits for the last user of the store to let go of it.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// A node: its store, its network (none when offline), and the tasks that serve both.
/// Cheap to clone; [`Node::shutdown`] stops it.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Taken out (and so closed) at shutdown.
    store: RwLock<Option<Arc<Store>>>,
    /// `None` for an offline node.
    net: Option<sov_net::Client>,
    pub(crate) config: Config,
    /// The node's home folder (`policy.toml` lives there).
    pub(crate) home: std::path::PathBuf,
    did: Did,
    peer_id: PeerId,
    /// One fetch per object at a time.
    pub(crate) fetching: Mutex<HashMap<ContentId, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) serving: Semaphore,
    stop: watch::Sender<bool>,
    /// Every task of the node; `None` once shutdown has begun (nothing new starts).
    tasks: Mutex<Option<JoinSet<()>>>,
    /// Verified model manifests by id.
    pub(crate) manifests: ManifestCache,
    /// Models peers offered on gossip.
    pub(crate) announced: crate::gossip::Announced,
    /// The loaded models (set once at start).
    pub(crate) serve: std::sync::OnceLock<Serve>,
    /// What peers may ask of this node.
    pub(crate) quotas: crate::quota::Quotas,
    /// Peers asked to pin an object, or that proved a copy: they may see its metadata.
    pub(crate) access: crate::access::Access,
    /// The federations this node is in.
    pub(crate) feds: crate::fl::state::Feds,
    /// The groups this node is in.
    pub(crate) govs: crate::gov::state::Govs,
    /// Client assertions spent at the token endpoint.
    pub(crate) assertions: crate::auth::Assertions,
    /// Held while `policy.toml` is rewritten.
    pub(crate) policy_writer: Mutex<()>,
    /// What the node counts.
    pub(crate) metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("did", &self.inner.did)
            .field("peer_id", &self.inner.peer_id)
            .field("online", &self.inner.net.is_some())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Start a node in `home` (its store is `home/store.redb`) with `keypair` as its
    /// identity and `config`: the network comes up, bootstrap peers are dialled, stored
    /// objects are announced in the DHT, and the repair task starts.
    pub async fn start(home: &Path, keypair: Keypair, config: Config) -> Result<Self> {
        let store = open_store(home, keypair.clone()).await?;
        let seed = *keypair.seed();
        let mut net_config = sov_net::Config::new(seed);
        net_config.listen = config.listen.clone();
        net_config.bootstrap = config.bootstrap.clone();
        net_config.mdns = config.mdns;
        net_config.autonat = config.autonat;
        net_config.max_connections = config.max_connections;
        net_config.gossip_heartbeat = config.gossip_heartbeat;
        net_config.max_bulk_message = config.max_bulk_message;
        net_config.max_connections_per_ip = config.max_connections_per_ip;
        net_config.limit_loopback = config.limit_loopback;
        let known = store.known_peers().unwrap_or_else(|e| {
            warn!("could not read the peer book: {e}");
            Vec::new()
        });
        let (net, events) = sov_net::start(net_config).await?;
        let free = sov_store::free_space(home);
        let node = Self::assemble(store, Some(net), config, home, free);
        node.resume_bans().await;
        node.join_topics().await;
        node.spawn(node.clone().handle_events(events));
        node.spawn(node.clone().announce_loop());
        node.spawn(node.clone().repair_loop());
        node.spawn(node.clone().announce_all());
        node.spawn(node.clone().redial(known));
        // Federations are taken up before the node is handed out, so it answers for them.
        node.fl_resume().await;
        node.spawn(node.clone().fl_loop());
        node.gov_resume().await;
        node.gov_apply_removals();
        node.spawn(node.clone().gov_loop());
        info!(did = %node.inner.did, peer_id = %node.peer_id(), "node started");
        Ok(node)
    }

    /// Open the node in `home` without a network: its data and models, for commands run
    /// while no node is running. Everything that needs peers fails with
    /// [`Error::Offline`]; adding and granting work, and the node shares the result when it
    /// next runs.
    pub async fn offline(home: &Path, keypair: Keypair, config: Config) -> Result<Self> {
        let store = open_store(home, keypair).await?;
        let free = sov_store::free_space(home);
        Ok(Self::assemble(store, None, config, home, free))
    }

    fn assemble(
        store: Store,
        net: Option<sov_net::Client>,
        config: Config,
        home: &Path,
        free: Option<u64>,
    ) -> Self {
        let did = store.identity().did();
        let quota = crate::quota::ReplicaQuota::resolve(
            config.max_replica_bytes,
            config.max_replica_bytes_per_owner,
            free,
        );
        let (stop, _) = watch::channel(false);
        let node = Self {
            inner: Arc::new(Inner {
                store: RwLock::new(Some(Arc::new(store))),
                net,
                config,
                home: home.to_path_buf(),
                did,
                peer_id: sov_net::peer_id_of(&did),
                fetching: Mutex::new(HashMap::new()),
                serving: Semaphore::new(SERVE_SLOTS),
                stop,
                tasks: Mutex::new(Some(JoinSet::new())),
                manifests: ManifestCache::default(),
                announced: Default::default(),
                serve: std::sync::OnceLock::new(),
                quotas: crate::quota::Quotas::new(quota),
                access: Default::default(),
                feds: Default::default(),
                govs: Default::default(),
                assertions: Default::default(),
                policy_writer: Mutex::new(()),
                metrics: Default::default(),
            }),
        };
        let serve = Serve::start(&node);
        let _ = node.inner.serve.set(serve);
        node
    }

    /// Stop the node: every task ends (given a moment, then aborted), the network closes
    /// its connections, loaded models are dropped, and the store is closed. When this
    /// returns, the home can be opened again.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        if let Some(net) = &self.inner.net {
            net.shutdown().await;
        }
        let set = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut set) = set
            && tokio::time::timeout(GRACE, drain(&mut set)).await.is_err()
        {
            debug!(left = set.len(), "aborting the tasks still running");
            set.abort_all();
            drain(&mut set).await;
        }
        let store = self
            .inner
            .store
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut store) = store {
            // Every user of the store ran as a task of the node, so this is the last
            // reference; wait a little in case a caller still holds a streaming read.
            let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
            loop {
                match Arc::try_unwrap(store) {
                    Ok(s) => {
                        drop(s);
                        break;
                    }
                    Err(again) if tokio::time::Instant::now() < deadline => {
                        store = again;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => {
                        warn!("the store is still in use; it closes when its last reader ends");
                        break;
                    }
                }
            }
        }
        info!(did = %self.inner.did, "node stopped");
    }

    /// Whether the node has a network.
    pub fn is_online(&self) -> bool {
        self.inner.net.is_some()
    }

    /// A receiver that turns true when the node stops.
    pub(crate) fn stopped(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_stopping(&self) -> bool {
        *self.inner.stop.borrow()
    }

    /// The network, or [`Error::Offline`].
    pub(crate) fn net(&self) -> Result<&sov_net::Client> {
        self.inner.net.as_ref().ok_or(Error::Offline)
    }

    /// Run `task` as one of the node's tasks; false (and `task` dropped) once the node is
    /// stopping.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        self.with_tasks(|set| {
            set.spawn(task);
        })
    }

    /// Run `work` on the blocking pool as one of the node's tasks.
    pub(crate) fn spawn_blocking(&self, work: impl FnOnce() + Send + 'static) -> bool {
        self.with_tasks(|set| {
            set.spawn_blocking(work);
        })
    }

    /// Add to the task set (reaping the tasks that ended); false once shutdown has begun.
    fn with_tasks(&self, add: impl FnOnce(&mut JoinSet<()>)) -> bool {
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let Some(set) = tasks.as_mut() else {
            return false;
        };
        while let Some(r) = set.try_join_next() {
            report(r);
        }
        add(set);
        true
    }

    /// Run `task` as one of the node's tasks and wait for its result (a task the caller
    /// stops waiting for still runs to its end).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        if !self.spawn(async move {
            let _ = tx.send(task.await);
        }) {
            return Err(Error::Stopped);
        }
        rx.await.map_err(|_| Error::Stopped)
    }

    /// The store, while the node runs.
    pub(crate) fn store(&self) -> Result<Arc<Store>> {
        self.inner
            .store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(Error::Stopped)
    }

    /// Run a store operation on the blocking pool, as one of the node's tasks.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> sov_store::Result<T> + Send + 'static,
    ) -> Result<T> {
        self.blocking_node(move |s| f(s).map_err(Error::from)).await
    }

    /// Like [`Node::blocking`] for work that fails with the node's own errors.
    pub(crate) async fn blocking_node<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store()?;
        let (tx, rx) = oneshot::channel();
        if !self.spawn_blocking(move || {
            let _ = tx.send(f(&store));
        }) {
            return Err(Error::Stopped);
        }
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// The node's did:key.
    pub fn did(&self) -> Did {
        self.inner.did
    }

    /// The node's PeerId (the same key as its DID).
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// The settings the node runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The addresses peers can dial, each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        Ok(self.net()?.listen_addrs().await?)
    }

    /// The peers connected now.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>> {
        Ok(self.net()?.peers().await?)
    }

    /// Connect to a peer.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId> {
        Ok(self.net()?.dial(addr).await?)
    }

    /// The peers banned for misbehaving.
    pub async fn banned(&self) -> Result<Vec<PeerId>> {
        Ok(self.net()?.banned().await?)
    }

    /// Measure throughput to `peer` with the standard `/perf/1.0.0` protocol.
    pub async fn perf(
        &self,
        peer: PeerId,
        upload: u64,
        download: u64,
    ) -> Result<sov_net::perf::PerfReport> {
        Ok(self.net()?.perf(peer, upload, download).await?)
    }

    /// Look up in the DHT which peers announced `id`, stopping at `enough`.
    pub async fn providers(&self, id: ContentId, enough: usize) -> Result<sov_net::Providers> {
        Ok(self.net()?.providers(id, enough).await?)
    }

    /// Announce in the DHT that this node holds `id`.
    pub async fn announce(&self, id: ContentId) {
        let Ok(net) = self.net() else { return };
        if let Err(e) = net.provide(id).await {
            warn!(%id, "could not announce object: {e}");
        }
    }

    /// Announce every stored object (at start, once the bootstrap peers had a moment).
    async fn announce_all(self) {
        let mut stopped = self.stopped();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopped.changed() => return,
        }
        match self.blocking(|s| s.list()).await {
            Ok(objects) => {
                for o in objects {
                    if self.is_stopping() {
                        return;
                    }
                    self.announce(o.id).await;
                }
            }
            Err(e) => warn!("could not list objects to announce: {e}"),
        }
    }

    /// Dial the peers of the peer book (each at the first of its addresses that answers), so
    /// a restarted node rejoins the peers it knew, wherever it now listens.
    async fn redial(self, known: Vec<sov_store::KnownPeer>) {
        let me = self.peer_id();
        for k in known {
            let Ok(peer) = k.peer.parse::<PeerId>() else {
                continue;
            };
            if peer == me {
                continue;
            }
            let node = self.clone();
            self.spawn(async move {
                let Ok(net) = node.net() else { return };
                for addr in k.addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                    let connected = net.peers().await;
                    if connected.is_ok_and(|c| c.iter().any(|p| p.peer_id == peer)) {
                        return;
                    }
                    let addr = with_peer(addr, peer);
                    match net.dial(addr.clone()).await {
                        Ok(_) => return,
                        Err(e) => debug!(%peer, %addr, "known peer not reached: {e}"),
                    }
                }
            });
        }
    }

    /// Put `peer` in the peer book with the addresses it listens on.
    pub(crate) fn remember(&self, peer: PeerId, listen_addrs: Vec<Multiaddr>) {
        let node = self.clone();
        self.spawn(async move {
            let addrs: Vec<String> = listen_addrs.iter().map(ToString::to_string).collect();
            let now = unix_now();
            let who = peer.to_string();
            if let Err(e) = node
                .blocking(move |s| s.remember_peer(&who, &addrs, now))
                .await
            {
                debug!(%peer, "could not update the peer book: {e}");
            }
        });
    }
}

/// Check the store in `home` (its index, and every block against its CID). The node must not
/// be running. A store whose index cannot be opened is an error naming `sov store repair`.
pub async fn check_store(home: &Path, keypair: Keypair) -> Result<sov_store::CheckReport> {
    let store = open_store(home, keypair).await?;
    tokio::task::spawn_blocking(move || store.check())
        .await
        .map_err(|_| Error::Stopped)?
        .map_err(Error::from)
}

/// Rebuild the index of the store in `home` from its pack files (see
/// [`sov_store::Store::repair`]). The node must not be running.
pub async fn repair_store(home: &Path, keypair: Keypair) -> Result<sov_store::RepairReport> {
    let path = home.join(sov_store::DB_FILE);
    tokio::task::spawn_blocking(move || Store::repair(&path, keypair).map(|(_, r)| r))
        .await
        .map_err(|_| Error::Stopped)?
        .map_err(Error::from)
}

/// Open the store in `home` on the blocking pool.
async fn open_store(home: &Path, keypair: Keypair) -> Result<Store> {
    let path = home.join(sov_store::DB_FILE);
    tokio::task::spawn_blocking(move || Store::open(&path, keypair))
        .await
        .map_err(|_| Error::Stopped)?
        .map_err(Error::from)
}

/// Wait for every task of `set` to end.
async fn drain(set: &mut JoinSet<()>) {
    while let Some(r) = set.join_next().await {
        report(r);
    }
}

/// Log a task that panicked (an aborted one is expected at shutdown).
fn report(r: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = r
        && e.is_panic()
    {
        warn!("a node task panicked: {e}");
    }
}

/// `addr` ending in `/p2p/<peer>` (added when missing).
fn with_peer(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    if matches!(addr.iter().last(), Some(sov_net::Protocol::P2p(_))) {
        addr
    } else {
        addr.with(sov_net::Protocol::P2p(peer))
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
