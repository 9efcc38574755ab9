//! [`Node`]: the handle, start-up, shutdown, and the answers to peers' requests.

use std::{
    collections::HashMap,
    io::Read,
    sync::{Arc, Mutex},
    time::Duration,
};

use sov_core::{ContentId, Did};
use sov_net::{Event, Multiaddr, PeerId, PeerInfo};
use sov_store::{AddOptions, Added, Pin, Store};
use tokio::{
    sync::{Semaphore, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use crate::{
    Config, Error, Result,
    protocol::{self, Request, Response},
};

/// Want-lists answered at once (each reads up to 16 MiB from the store).
const SERVE_SLOTS: usize = 8;

/// A running node. Cheap to clone; [`Node::shutdown`] stops it.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<Store>,
    pub(crate) net: sov_net::Client,
    pub(crate) config: Config,
    pub(crate) did: Did,
    /// One fetch per object at a time.
    pub(crate) fetching: Mutex<HashMap<ContentId, Arc<tokio::sync::Mutex<()>>>>,
    serving: Semaphore,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("did", &self.inner.did)
            .field("peer_id", &self.inner.net.peer_id())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Start a node on `store` (whose identity is the node's) with `config`: the network
    /// comes up, bootstrap peers are dialled, stored objects are announced in the DHT, and
    /// the repair task starts.
    pub async fn start(store: Store, config: Config) -> Result<Self> {
        let did = store.identity().did();
        let seed = *store.identity().seed();
        let mut net_config = sov_net::Config::new(seed);
        net_config.listen = config.listen.clone();
        net_config.bootstrap = config.bootstrap.clone();
        net_config.mdns = config.mdns;
        net_config.autonat = config.autonat;
        net_config.max_connections = config.max_connections;
        net_config.gossip_heartbeat = config.gossip_heartbeat;
        let known = store.known_peers().unwrap_or_else(|e| {
            warn!("could not read the peer book: {e}");
            Vec::new()
        });
        let (net, events) = sov_net::start(net_config).await?;
        let (stop, _) = watch::channel(false);
        let node = Self {
            inner: Arc::new(Inner {
                store: Arc::new(store),
                net,
                config,
                did,
                fetching: Mutex::new(HashMap::new()),
                serving: Semaphore::new(SERVE_SLOTS),
                stop,
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let handles = vec![
            tokio::spawn(node.clone().handle_events(events)),
            tokio::spawn(node.clone().repair_loop()),
            tokio::spawn(node.clone().announce_all()),
            tokio::spawn(node.clone().redial(known)),
        ];
        node.inner
            .tasks
            .lock()
            .expect("task list lock is never poisoned")
            .extend(handles);
        info!(did = %node.inner.did, peer_id = %node.peer_id(), "node started");
        Ok(node)
    }

    /// Stop the node: its tasks end, the network closes its connections, and the store is
    /// released once the last clone of this handle is dropped.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        self.inner.net.shutdown().await;
        let tasks: Vec<_> = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .expect("task list lock is never poisoned"),
        );
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }

    /// A receiver that turns true when the node stops.
    pub(crate) fn stopped(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    /// The node's did:key.
    pub fn did(&self) -> Did {
        self.inner.did
    }

    /// The node's PeerId (the same key as its DID).
    pub fn peer_id(&self) -> PeerId {
        self.inner.net.peer_id()
    }

    /// The settings the node runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The store (for reads that need no network; call from blocking threads).
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The network client.
    pub fn net(&self) -> &sov_net::Client {
        &self.inner.net
    }

    /// Run a store operation on the blocking pool.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> sov_store::Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| Error::Stopped)?
            .map_err(Error::from)
    }

    /// The addresses peers can dial, each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        Ok(self.inner.net.listen_addrs().await?)
    }

    /// The peers connected now.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>> {
        Ok(self.inner.net.peers().await?)
    }

    /// Connect to a peer.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId> {
        Ok(self.inner.net.dial(addr).await?)
    }

    /// Encrypt `input` into a new object, announce it, and have `replicas` peers pin it
    /// (`None`: the configured default). Returns once the object is stored and the pin
    /// requests are answered; repair keeps the count up afterwards.
    pub async fn add(
        &self,
        input: impl Read + Send + 'static,
        opts: AddOptions,
        replicas: Option<u32>,
    ) -> Result<(Added, Vec<PeerId>)> {
        let added = self
            .blocking(move |s| s.add(input, opts, &mut |_| {}))
            .await?;
        let replicas = replicas.unwrap_or(self.inner.config.replicas);
        let id = added.id;
        self.blocking(move |s| {
            s.set_pin(
                &id,
                Pin {
                    replicas,
                    replica: false,
                },
            )
        })
        .await?;
        self.announce(id).await;
        let holders = if replicas > 0 {
            self.replicate(id).await?
        } else {
            Vec::new()
        };
        Ok((added, holders))
    }

    /// Let `reader` read object `id`, and hand the new grant to the peers holding copies.
    pub async fn grant(&self, id: ContentId, reader: Did) -> Result<ContentId> {
        let gid = self.blocking(move |s| s.grant(&id, &reader)).await?;
        // Holders refresh their grants when asked to pin what they already hold.
        let replicas = self
            .blocking(move |s| s.pin(&id))
            .await?
            .map_or(0, |p| p.replicas);
        for peer in self.live_holders(id).await? {
            let msg = Request::new(protocol::PIN, id, replicas).encode();
            if let Err(e) = self.inner.net.request(peer, msg).await {
                debug!(%peer, "could not hand a new grant to a holder: {e}");
            }
        }
        Ok(gid)
    }

    /// Remove object `id` here and stop announcing it.
    pub async fn remove(&self, id: ContentId) -> Result<()> {
        self.blocking(move |s| s.remove(&id)).await?;
        let _ = self.inner.net.unprovide(id).await;
        Ok(())
    }

    /// Announce in the DHT that this node holds `id`.
    pub async fn announce(&self, id: ContentId) {
        if let Err(e) = self.inner.net.provide(id).await {
            warn!(%id, "could not announce object: {e}");
        }
    }

    /// Announce every stored object (at start, once the bootstrap peers had a moment).
    async fn announce_all(self) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match self.blocking(|s| s.list()).await {
            Ok(objects) => {
                for o in objects {
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
            tokio::spawn(async move {
                for addr in k.addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                    let connected = node.inner.net.peers().await;
                    if connected.is_ok_and(|c| c.iter().any(|p| p.peer_id == peer)) {
                        return;
                    }
                    let addr = with_peer(addr, peer);
                    match node.inner.net.dial(addr.clone()).await {
                        Ok(_) => return,
                        Err(e) => debug!(%peer, %addr, "known peer not reached: {e}"),
                    }
                }
            });
        }
    }

    /// Put `peer` in the peer book with the addresses it listens on.
    fn remember(&self, peer: PeerId, listen_addrs: Vec<Multiaddr>) {
        let node = self.clone();
        tokio::spawn(async move {
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

    async fn handle_events(self, mut events: tokio::sync::mpsc::Receiver<Event>) {
        let mut stopped = self.stopped();
        loop {
            let event = tokio::select! {
                e = events.recv() => match e { Some(e) => e, None => break },
                _ = stopped.changed() => break,
            };
            match event {
                Event::BlocksWanted { peer, cids, reply } => {
                    let node = self.clone();
                    tokio::spawn(async move {
                        let Ok(_slot) = node.inner.serving.acquire().await else {
                            return;
                        };
                        let limit = sov_net::wire::MAX_RESPONSE_DATA;
                        match node.blocking(move |s| s.blocks(&cids, limit)).await {
                            Ok(blocks) => reply.send(blocks).await,
                            Err(e) => warn!(%peer, "could not serve blocks: {e}"),
                        }
                    });
                }
                Event::Request { peer, data, reply } => {
                    let node = self.clone();
                    tokio::spawn(async move {
                        let response = match Request::decode(&data) {
                            Ok(req) => node.answer(peer, req).await,
                            Err(e) => {
                                node.inner
                                    .net
                                    .ban(peer, format!("malformed node message: {e}"))
                                    .await;
                                return;
                            }
                        };
                        reply.send(response.encode()).await;
                    });
                }
                Event::PeerBanned { peer, reason } => info!(%peer, %reason, "peer banned"),
                Event::PeerConnected { peer } => debug!(%peer, "peer connected"),
                Event::PeerIdentified { peer, listen_addrs } => self.remember(peer, listen_addrs),
                Event::PeerDisconnected { peer } => debug!(%peer, "peer disconnected"),
                _ => {}
            }
        }
    }

    /// Answer a peer's node message.
    async fn answer(&self, peer: PeerId, req: Request) -> Response {
        let id = req.object;
        match req.op.as_str() {
            protocol::HAS => {
                let found = self
                    .blocking(move |s| Ok((s.contains(&id)?, s.pin(&id)?)))
                    .await;
                match found {
                    Ok((has, pin)) => Response {
                        has,
                        replica: has && pin.is_some_and(|p| p.replica),
                        ..Response::ok()
                    },
                    Err(e) => Response::failed(e),
                }
            }
            protocol::GRANTS => match self.blocking(move |s| s.grant_blocks(&id)).await {
                Ok(grants) => Response {
                    grants: grants
                        .iter()
                        .take(protocol::MAX_GRANTS)
                        .map(|g| *g.cid())
                        .collect(),
                    ..Response::ok()
                },
                Err(e) => Response::failed(e),
            },
            protocol::PIN => match self.pin_for(peer, id, req.replicas).await {
                Ok(()) => Response::ok(),
                Err(e) => Response::failed(e),
            },
            other => Response::failed(format!("unknown operation {other:?}")),
        }
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

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
