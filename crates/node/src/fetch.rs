//! Fetching an object from peers: providers from the DHT, the manifest and grants from the
//! first that has them, then the chunks from all providers at once, a few requests in flight
//! to each. Every block is checked against its CID by the network before it gets here; a
//! provider that lies is banned by the network and its share goes to the others.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt as _, stream::FuturesUnordered};
use sov_core::{Block, ContentId};
use sov_net::PeerId;
use sov_store::{Import, ImportReader, ObjectMeta, manifest::ChunkRef};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::{
    Error, Node, Result,
    protocol::{Request, Response},
};

/// Requests in flight to one provider.
const WINDOW: usize = 8;
/// Block bytes asked for in one request.
const BATCH_BYTES: u64 = 8 << 20;
/// Block bytes the writer stores in one transaction, at most (when they are waiting).
const WRITE_BATCH: usize = 32 << 20;
/// Failed requests (other than lies) after which a provider is given up.
const MAX_FAILURES: u32 = 3;
/// Providers to look for before starting.
const ENOUGH_PROVIDERS: usize = 8;

/// An object being fetched, readable while its chunks arrive: see [`Node::open_read`].
#[derive(Debug)]
pub(crate) struct Streaming {
    /// Name, media type, size and hash.
    pub(crate) meta: ObjectMeta,
    pub(crate) reader: ImportReader,
    pub(crate) grants: Vec<Block>,
}

/// What a fetch did.
#[derive(Debug, Clone, Default)]
pub struct FetchReport {
    /// Chunks received.
    pub blocks: usize,
    /// Bytes of chunks received.
    pub bytes: u64,
    /// The peers that supplied chunks, with how many each.
    pub providers: HashMap<PeerId, usize>,
    /// Providers dropped because they sent wrong or malformed data (now banned).
    pub liars: Vec<PeerId>,
    /// How long it took.
    pub elapsed: Duration,
    /// Of which: finding providers in the DHT.
    pub lookup: Duration,
    /// Of which: receiving and storing the chunks.
    pub transfer: Duration,
    /// Time the store's writer spent storing chunks (it runs while more arrive).
    pub store_writes: Duration,
}

/// What a fetch must establish from the manifest and grants before it fetches a chunk.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Gate {
    /// This node may read the object: a grant for it comes with the object.
    Readable,
    /// A replica for a peer: the object fits the replica quota (it is pinned as a replica
    /// with this count once stored, while its bytes are still reserved).
    Replica {
        replicas: u32,
        /// who signed the pin mandate: the manifest's owner must be the same
        owner: sov_core::Did,
    },
}

/// Replica quota held for a fetch in progress; given back when dropped.
struct Reserved<'a> {
    node: &'a Node,
    owner: sov_core::Did,
    bytes: u64,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.node.inner.quotas.release(&self.owner, self.bytes);
    }
}

impl Node {
    /// Make object `id` local: fetch it from the peers that provide it if it is not stored
    /// here. `hint` is a peer to try first. The object must be readable by this node: a
    /// grant for it must come with the manifest, else the fetch fails with
    /// [`sov_store::Error::NoGrant`] before a chunk is fetched.
    pub async fn fetch(&self, id: ContentId, hint: Option<PeerId>) -> Result<FetchReport> {
        self.fetch_with(id, hint, None, Gate::Readable).await
    }

    /// Fetch object `id` to keep as a replica for `peer` (tried first), within the replica
    /// quota (checked against the manifest before a chunk is fetched).
    pub(crate) async fn fetch_replica(
        &self,
        id: ContentId,
        peer: PeerId,
        replicas: u32,
        owner: sov_core::Did,
    ) -> Result<FetchReport> {
        self.fetch_with(id, Some(peer), None, Gate::Replica { replicas, owner })
            .await
    }

    /// Read object `id` from wherever it is. `Ok(None)`: it is stored here and readable (read
    /// it from the store). `Ok(Some(_))`: it is being fetched, and its plaintext can be read
    /// while the chunks arrive ([`Streaming::read`]); the fetch goes on in the background,
    /// and if it fails, that read fails.
    pub(crate) async fn read_streaming(&self, id: ContentId) -> Result<Option<Streaming>> {
        let (tx, rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let node = self.clone();
        let started = self.spawn(async move {
            let result = node.fetch_with(id, None, Some(tx), Gate::Readable).await;
            if let Err(e) = &result {
                warn!(%id, "fetch failed: {e}");
            }
            let _ = done_tx.send(result);
        });
        if !started {
            return Err(Error::Stopped);
        }
        match rx.await {
            Ok(streaming) => Ok(Some(streaming)),
            // Stored already, or no grant for this node came with it: the usual way.
            Err(_) => {
                done.await.map_err(|_| Error::Stopped)??;
                self.prepare_read(id).await?;
                Ok(None)
            }
        }
    }

    async fn fetch_with(
        &self,
        id: ContentId,
        hint: Option<PeerId>,
        stream: Option<oneshot::Sender<Streaming>>,
        gate: Gate,
    ) -> Result<FetchReport> {
        let lock = {
            let mut map = self
                .inner
                .fetching
                .lock()
                .expect("fetch lock is never poisoned");
            map.entry(id).or_default().clone()
        };
        let _guard = lock.lock().await;
        let result = if self.blocking(move |s| s.contains(&id)).await? {
            Ok(FetchReport::default())
        } else {
            self.fetch_new(id, hint, stream, gate).await
        };
        self.inner
            .fetching
            .lock()
            .expect("fetch lock is never poisoned")
            .remove(&id);
        result
    }

    /// The peers that provide `id` (from the DHT; `hint` first), this node left out.
    pub(crate) async fn find_providers(&self, id: ContentId, hint: Option<PeerId>) -> Vec<PeerId> {
        let me = self.peer_id();
        let mut out: Vec<PeerId> = hint.into_iter().collect();
        let Ok(net) = self.net() else {
            return out;
        };
        match net.providers(id, ENOUGH_PROVIDERS).await {
            Ok(found) => out.extend(found.peers.into_iter().filter(|p| Some(*p) != hint)),
            Err(e) => warn!(%id, "provider lookup failed: {e}"),
        }
        out.retain(|p| *p != me);
        if out.is_empty() {
            // The DHT may not have converged yet (a small or young network): ask the peers
            // we are connected to.
            out = self.connected_holders(id).await;
        }
        out
    }

    /// Connected peers (at most 32) that say they store `id`.
    async fn connected_holders(&self, id: ContentId) -> Vec<PeerId> {
        let Ok(net) = self.net() else {
            return Vec::new();
        };
        let Ok(peers) = net.peers().await else {
            return Vec::new();
        };
        let asks = peers.into_iter().take(32).map(|p| async move {
            let msg = Request::Has { object: id }.encode();
            let answer =
                tokio::time::timeout(Duration::from_secs(5), net.request(p.peer_id, msg)).await;
            match answer {
                Ok(Ok(bytes)) => matches!(
                    Response::decode(&bytes),
                    Ok(Response::Has { has: true, .. })
                )
                .then_some(p.peer_id),
                _ => None,
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn fetch_new(
        &self,
        id: ContentId,
        hint: Option<PeerId>,
        stream: Option<oneshot::Sender<Streaming>>,
        gate: Gate,
    ) -> Result<FetchReport> {
        let started = Instant::now();
        let net = self.net()?;
        let mut providers = self.find_providers(id, hint).await;
        let lookup = started.elapsed();
        if providers.is_empty() {
            return Err(Error::Unavailable {
                id,
                detail: String::new(),
            });
        }
        let mut report = FetchReport {
            lookup,
            ..FetchReport::default()
        };

        // The manifest, from the first provider that gives a valid one.
        let mut import = None;
        let mut tried = Vec::new();
        let mut manifest_from = None;
        for p in providers.clone() {
            let mut answer = net.want(p, vec![id]).await;
            // A holder shows a reader the manifest once it claimed its grant there.
            if matches!(&answer, Ok(b) if b.is_empty())
                && matches!(gate, Gate::Readable)
                && self.claim_at(p, id).await
            {
                answer = net.want(p, vec![id]).await;
            }
            match answer {
                Ok(mut blocks) if !blocks.is_empty() => {
                    let manifest = blocks.swap_remove(0);
                    match self.blocking(move |s| s.begin_import(manifest)).await {
                        Ok(i) => {
                            import = Some(i);
                            manifest_from = Some(p);
                            break;
                        }
                        Err(e) => {
                            // A block that matches the object id but is no valid manifest:
                            // the id itself is bad, not the peer.
                            return Err(Error::Fetch {
                                id,
                                reason: e.to_string(),
                            });
                        }
                    }
                }
                Ok(_) => tried.push(format!("{p}: does not have it")),
                Err(sov_net::Error::Misbehaved { peer, reason }) => {
                    report.liars.push(peer);
                    tried.push(format!("{peer}: {reason}"));
                }
                Err(e) => tried.push(format!("{p}: {e}")),
            }
        }
        let Some(import) = import else {
            return Err(Error::Unavailable {
                id,
                detail: format!(
                    " (asked {}); holders give an object's manifest only to its owner, its \
                     readers and its holders: without a grant for this node, ask the owner for one",
                    tried.join("; ")
                ),
            });
        };
        providers.retain(|p| !report.liars.contains(p));
        // Grants before chunks, so a reader can decrypt chunks as they arrive.
        let holders: Vec<PeerId> = manifest_from
            .into_iter()
            .chain(providers.iter().copied())
            .collect();
        let readable = matches!(gate, Gate::Readable);
        let grants = self.fetch_grants(id, &holders, &import, readable).await;
        let n_grants = grants.len();
        // Grants (or quota) before bytes: a fetch this node may not make costs the manifest
        // and nothing more.
        let mut _reserved = None;
        let refusal = match gate {
            Gate::Readable => {
                let (reader, offered) = (import.reader(), grants.clone());
                self.blocking(move |s| s.meta_importing(&reader, &offered))
                    .await
                    .err()
            }
            Gate::Replica { owner: signer, .. } if import.manifest().owner != signer => {
                Some(Error::Refused(format!(
                    "the pin mandate for {id} is not signed by its owner"
                )))
            }
            Gate::Replica { .. } => {
                let owner = import.manifest().owner;
                let bytes: u64 = import.missing().iter().map(|c| c.size).sum();
                match self.blocking(|s| s.replica_usage()).await {
                    Ok(usage) => match self.inner.quotas.reserve(&owner, bytes, &usage) {
                        Ok(()) => {
                            _reserved = Some(Reserved {
                                node: self,
                                owner,
                                bytes,
                            });
                            None
                        }
                        Err(m) => Some(Error::Refused(m)),
                    },
                    Err(e) => Some(e),
                }
            }
        };
        if let Some(e) = refusal {
            let _ = self.blocking(move |s| s.abort_import(import)).await;
            return Err(e);
        }
        if let Some(tx) = stream {
            let (reader, offered) = (import.reader(), grants.clone());
            if let Ok(meta) = self
                .blocking(move |s| s.meta_importing(&reader, &offered))
                .await
            {
                let _ = tx.send(Streaming {
                    meta,
                    reader: import.reader(),
                    grants: grants.clone(),
                });
            }
        }

        let transfer = Instant::now();
        let import = self.fetch_chunks(import, &providers, &mut report).await?;
        report.transfer = transfer.elapsed();
        self.blocking(move |s| {
            s.finish_import(import, grants)?;
            if let Gate::Replica { replicas, .. } = gate {
                s.set_pin(
                    &id,
                    sov_store::Pin {
                        replicas,
                        replica: true,
                    },
                )?;
            }
            Ok(())
        })
        .await?;
        // Announcing waits for the DHT's closest peers; the caller need not.
        let node = self.clone();
        self.spawn(async move { node.announce(id).await });
        report.elapsed = started.elapsed();
        info!(
            %id,
            blocks = report.blocks,
            bytes = report.bytes,
            providers = report.providers.len(),
            grants = n_grants,
            ms = report.elapsed.as_millis() as u64,
            lookup_ms = report.lookup.as_millis() as u64,
            transfer_ms = report.transfer.as_millis() as u64,
            "fetched object"
        );
        Ok(report)
    }

    /// Make object `id` readable here: fetch it if needed and, if no grant for this node is
    /// stored yet, ask the peers that hold it for grants made since.
    pub async fn prepare_read(&self, id: ContentId) -> Result<()> {
        self.fetch(id, None).await?;
        let readable = self
            .blocking(move |s| Ok(s.info(&id)?.meta.is_some()))
            .await?;
        if !readable {
            for peer in self.find_providers(id, None).await.into_iter().take(8) {
                let mut grants = self.grants_from(peer, id).await;
                if grants.is_empty() && self.claim_at(peer, id).await {
                    grants = self.grants_from(peer, id).await;
                }
                if self.blocking(move |s| s.add_grants(&id, grants)).await? > 0
                    && self
                        .blocking(move |s| Ok(s.info(&id)?.meta.is_some()))
                        .await?
                {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Claim this node's grant of object `id` at holder `peer`, so that it shows this node the
    /// object's metadata: find the grant among the keys it lists (trial key derivation, one
    /// X25519 per grant), and sign the claim with the grant's access key. Whether `peer`
    /// accepted one.
    pub async fn claim_at(&self, peer: PeerId, id: ContentId) -> bool {
        let Ok(net) = self.net() else {
            return false;
        };
        let (holder, me) = (peer.to_bytes(), self.peer_id().to_bytes());
        // Pages of keys, as many as the store keeps grants at most.
        let mut skip = 0u32;
        for _ in 0..8 {
            let msg = Request::GrantKeys { object: id, skip }.encode();
            let (keys, more) = match net.request(peer, msg).await.map(|b| Response::decode(&b)) {
                Ok(Ok(Response::GrantKeys { keys, more })) => (keys, more),
                Ok(Ok(other)) => {
                    debug!(%peer, "grant keys request answered with {other:?}");
                    return false;
                }
                Ok(Err(e)) => {
                    net.ban(peer, format!("malformed grant keys answer: {e}"))
                        .await;
                    return false;
                }
                Err(e) => {
                    debug!(%peer, "grant keys request failed: {e}");
                    return false;
                }
            };
            skip = skip.saturating_add(keys.len() as u32);
            let offered: Vec<([u8; 32], [u8; 32])> = keys
                .iter()
                .filter_map(|k| {
                    Some((k.get(..32)?.try_into().ok()?, k.get(32..)?.try_into().ok()?))
                })
                .collect();
            let (h, m) = (holder.clone(), me.clone());
            let found = self
                .blocking(move |s| Ok(s.claim(&id, &offered, &h, &m)))
                .await
                .ok()
                .flatten();
            if let Some((ephemeral, signature)) = found {
                let msg = Request::Claim {
                    object: id,
                    ephemeral: serde_bytes::ByteBuf::from(ephemeral.to_vec()),
                    signature: serde_bytes::ByteBuf::from(signature.to_bytes().to_vec()),
                }
                .encode();
                return match net.request(peer, msg).await.map(|b| Response::decode(&b)) {
                    Ok(Ok(Response::Claimed)) => true,
                    other => {
                        debug!(%peer, "grant claim answered with {other:?}");
                        false
                    }
                };
            }
            if !more || keys.is_empty() {
                return false;
            }
        }
        false
    }

    /// The object's grants, gathered from up to four holders (each checked). A `reader`
    /// claims its grant at a holder that shows it none.
    pub(crate) async fn fetch_grants(
        &self,
        id: ContentId,
        providers: &[PeerId],
        import: &Import,
        reader: bool,
    ) -> Vec<Block> {
        let mut found: HashMap<ContentId, Block> = HashMap::new();
        let mut seen = HashSet::new();
        for p in providers.iter().filter(|p| seen.insert(**p)).take(4) {
            let mut grants = self.grants_from(*p, id).await;
            if grants.is_empty() && reader && self.claim_at(*p, id).await {
                grants = self.grants_from(*p, id).await;
            }
            for g in grants {
                if import.accepts_grant(&g) {
                    found.insert(*g.cid(), g);
                }
            }
        }
        found.into_values().collect()
    }

    /// Ask `peer` for the blocks `cids` directly (each checked against its CID): what it
    /// gives this node, for diagnostics and tests.
    pub async fn want_blocks(&self, peer: PeerId, cids: Vec<ContentId>) -> Result<Vec<Block>> {
        Ok(self.net()?.want(peer, cids).await?)
    }

    /// Ask `peer` for the CIDs of object `id`'s grant blocks directly.
    pub async fn grant_list(&self, peer: PeerId, id: ContentId) -> Result<Vec<ContentId>> {
        let msg = Request::Grants { object: id }.encode();
        let bytes = self.net()?.request(peer, msg).await?;
        match Response::decode(&bytes) {
            Ok(Response::Grants { grants }) => Ok(grants),
            Ok(other) => Err(Error::Refused(format!("answered with {other:?}"))),
            Err(e) => Err(Error::Refused(format!("a malformed answer: {e}"))),
        }
    }

    /// The grant blocks `peer` has for object `id` (not yet checked against the manifest).
    pub(crate) async fn grants_from(&self, peer: PeerId, id: ContentId) -> Vec<Block> {
        let Ok(net) = self.net() else {
            return Vec::new();
        };
        let msg = Request::Grants { object: id }.encode();
        let ids = match net.request(peer, msg).await {
            Ok(bytes) => match Response::decode(&bytes) {
                Ok(Response::Grants { grants }) => grants,
                Ok(other) => {
                    debug!(%peer, "grants request answered with {other:?}");
                    return Vec::new();
                }
                Err(e) => {
                    net.ban(peer, format!("malformed grants answer: {e}")).await;
                    return Vec::new();
                }
            },
            Err(e) => {
                debug!(%peer, "grants request failed: {e}");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for batch in ids
            .into_iter()
            .filter(|g| g.codec() == sov_core::Codec::DagCbor)
            .collect::<Vec<_>>()
            .chunks(sov_net::wire::MAX_WANT)
        {
            match net.want(peer, batch.to_vec()).await {
                Ok(blocks) => out.extend(blocks),
                Err(e) => {
                    debug!(%peer, "grant blocks request failed: {e}");
                    break;
                }
            }
        }
        out
    }

    /// Receive every missing chunk of `import` from `providers`, storing them as they come.
    async fn fetch_chunks(
        &self,
        mut import: Import,
        providers: &[PeerId],
        report: &mut FetchReport,
    ) -> Result<Import> {
        let id = *import.root();
        let mut queue: VecDeque<Vec<ChunkRef>> = batches(import.missing());
        if queue.is_empty() {
            return Ok(import);
        }
        // A writer stores batches in order of arrival while more are on the way.
        let (tx, mut rx) = mpsc::channel::<Vec<Block>>(2 * WINDOW);
        let store = self.store()?;
        let (written_tx, written) = oneshot::channel();
        let spawned = self.spawn_blocking(move || {
            let write = move || -> sov_store::Result<(Import, Duration)> {
                let mut busy = Duration::ZERO;
                while let Some(mut blocks) = rx.blocking_recv() {
                    // Whatever else has arrived goes into the same transaction.
                    let mut bytes: usize = blocks.iter().map(|b| b.data().len()).sum();
                    while bytes < WRITE_BATCH {
                        match rx.try_recv() {
                            Ok(more) => {
                                bytes += more.iter().map(|b| b.data().len()).sum::<usize>();
                                blocks.extend(more);
                            }
                            Err(_) => break,
                        }
                    }
                    let t = Instant::now();
                    store.import_blocks(&mut import, blocks)?;
                    busy += t.elapsed();
                }
                Ok((import, busy))
            };
            let _ = written_tx.send(write());
        });
        if !spawned {
            return Err(Error::Stopped);
        }

        let mut active: HashMap<PeerId, (usize, u32)> =
            providers.iter().map(|p| (*p, (0, 0))).collect();
        let mut order: Vec<PeerId> = providers.to_vec();
        let mut inflight = FuturesUnordered::new();
        let net = Arc::new(self.net()?.clone());
        let mut failure = None;
        loop {
            // Fill every active provider's window, round-robin.
            let mut progressed = true;
            while progressed && !queue.is_empty() {
                progressed = false;
                for p in &order {
                    let Some((n, _)) = active.get_mut(p) else {
                        continue;
                    };
                    if *n >= WINDOW {
                        continue;
                    }
                    let Some(batch) = queue.pop_front() else {
                        break;
                    };
                    *n += 1;
                    progressed = true;
                    let (net, peer) = (net.clone(), *p);
                    inflight.push(async move {
                        let cids = batch.iter().map(|c| c.cid).collect();
                        (peer, batch, net.want(peer, cids).await)
                    });
                }
            }
            let Some((peer, batch, result)) = inflight.next().await else {
                // Nothing in flight and nothing could be sent: done, or out of providers.
                if let Some(b) = queue.front() {
                    failure = Some(format!(
                        "no provider could supply chunk {} ({} providers tried, {} banned)",
                        b[0].cid,
                        providers.len(),
                        report.liars.len()
                    ));
                }
                break;
            };
            if let Some((n, _)) = active.get_mut(&peer) {
                *n -= 1;
            }
            match result {
                Ok(blocks) => {
                    let got: HashSet<ContentId> = blocks.iter().map(|b| *b.cid()).collect();
                    let rest: Vec<ChunkRef> = batch
                        .into_iter()
                        .filter(|c| !got.contains(&c.cid))
                        .collect();
                    if blocks.is_empty() {
                        debug!(%peer, "provider lacks chunks; dropping it");
                        active.remove(&peer);
                    } else {
                        report.blocks += blocks.len();
                        report.bytes += blocks.iter().map(|b| b.data().len() as u64).sum::<u64>();
                        *report.providers.entry(peer).or_default() += blocks.len();
                        if tx.send(blocks).await.is_err() {
                            break; // the writer failed; its error is reported below
                        }
                    }
                    if !rest.is_empty() {
                        queue.push_front(rest);
                    }
                }
                Err(sov_net::Error::Misbehaved { peer, reason }) => {
                    warn!(%peer, %reason, "provider sent bad data; fetching its share elsewhere");
                    report.liars.push(peer);
                    active.remove(&peer);
                    queue.push_front(batch);
                }
                Err(e) => {
                    debug!(%peer, "chunk request failed: {e}");
                    if let Some((_, failures)) = active.get_mut(&peer) {
                        *failures += 1;
                        if *failures >= MAX_FAILURES {
                            active.remove(&peer);
                        }
                    }
                    queue.push_front(batch);
                }
            }
            order.retain(|p| active.contains_key(p));
        }
        drop(tx);
        let written = written.await.map_err(|_| Error::Stopped)?;
        let import = match (written, failure) {
            (Ok((import, busy)), None) => {
                report.store_writes = busy;
                import
            }
            (Ok((import, _)), Some(reason)) => {
                let _ = self.blocking(move |s| s.abort_import(import)).await;
                return Err(Error::Fetch { id, reason });
            }
            (Err(e), _) => return Err(e.into()),
        };
        Ok(import)
    }
}

/// Split chunks into requests of about [`BATCH_BYTES`].
fn batches(chunks: Vec<ChunkRef>) -> VecDeque<Vec<ChunkRef>> {
    let mut out = VecDeque::new();
    let mut cur: Vec<ChunkRef> = Vec::new();
    let mut bytes = 0;
    for c in chunks {
        if !cur.is_empty() && (bytes + c.size > BATCH_BYTES || cur.len() >= sov_net::wire::MAX_WANT)
        {
            out.push_back(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += c.size;
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push_back(cur);
    }
    out
}
