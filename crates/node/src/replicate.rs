//! Replication and repair. An object added with `replicas = K` should be kept by K peers
//! besides its owner. The owner asks peers to pin it; every node that pins an object (owner
//! or replica) checks now and then which holders are still alive and, if fewer than K
//! replicas answer, asks more peers. Candidates are ranked by rendezvous hashing
//! (BLAKE3 of object id and PeerId), so holders that repair at the same time pick the same
//! peers instead of over-replicating.
//!
//! No slow peer holds repair up: a candidate must answer `has` within [`HAS_TIMEOUT`]
//! before it is asked to pin (so a paused node is skipped), a pin has a timeout scaled to
//! the object's size, and a pass works on [`REPAIR_AT_ONCE`] objects at a time. When more
//! replicas answer than the object asks for, its owner asks the surplus (the worst ranked)
//! to let go.
//!
//! A peer's word that it holds a replica is not taken: before it counts as a holder, at
//! every pass, it answers a storage challenge on a random piece of a random chunk of the
//! object ([`Request::Prove`]), which this node checks against its own copy. A holder that
//! fails is not counted (so the object is placed elsewhere), is not asked again this pass,
//! and, if this node is the owner, is told to let its copy go.

use std::{collections::HashSet, time::Duration};

use futures::{StreamExt as _, future::join_all};
use sov_core::ContentId;
use sov_net::PeerId;
use sov_store::Pin;
use tracing::{debug, info, warn};

use crate::{
    Error, Node, Result,
    protocol::{MAX_PROOF_LEN, PinMandate, Request, Response, proof_digest},
    quota::MAX_REPLICAS,
};

/// How long a holder may take to say it is alive.
const HAS_TIMEOUT: Duration = Duration::from_secs(5);
/// A pin's time: this, plus a second per [`PIN_BYTES_PER_SEC`] of the object.
const PIN_TIMEOUT: Duration = Duration::from_secs(15);
/// The slowest transfer a pin's timeout allows for.
const PIN_BYTES_PER_SEC: u64 = 1 << 20;
/// Objects a repair pass works on at once.
pub const REPAIR_AT_ONCE: usize = 4;
/// Providers looked up when counting holders.
const HOLDER_LOOKUP: usize = 64;

impl Node {
    /// Pin object `id` for `peer`: fetch it (from `peer` first) if it is not here, refresh its
    /// grants from `peer`, and keep it as a replica.
    pub(crate) async fn pin_for(
        &self,
        peer: PeerId,
        id: ContentId,
        replicas: u32,
        mandate: Vec<u8>,
    ) -> Result<()> {
        if !self.inner.config.accept_pins {
            return Err(Error::Refused("this node does not accept pins".into()));
        }
        if replicas > MAX_REPLICAS {
            return Err(Error::Refused(format!(
                "{replicas} replicas asked; at most {MAX_REPLICAS}"
            )));
        }
        if self.blocking(move |s| s.is_dropped(&id)).await? {
            return Err(Error::Refused(format!(
                "this node removed its replica of {id} and keeps it no more"
            )));
        }
        let owner = check_mandate(&mandate, id, replicas, crate::node::unix_now())?;
        let had = self.blocking(move |s| s.contains(&id)).await?;
        if had {
            let signer_owns = self.blocking(move |s| s.manifest_of(&id)).await?.owner == owner;
            if !signer_owns {
                return Err(Error::Refused(format!(
                    "the pin mandate for {id} is not signed by its owner"
                )));
            }
            let grants = self.grants_from(peer, id).await;
            let new = self.blocking(move |s| s.add_grants(&id, grants)).await?;
            if new > 0 {
                debug!(%id, new, "received new grants");
            }
        } else {
            // The fetch goes on even if the asker stops waiting; it is refused before any
            // chunk if the object does not fit the replica quota.
            let node = self.clone();
            self.run(async move { node.fetch_replica(id, peer, replicas, owner).await })
                .await??;
        }
        let mine = self.blocking(move |s| s.pin(&id)).await?;
        let pin = match mine {
            // The owner keeps its own record; a replica takes the latest count.
            Some(p) if !p.replica => p,
            _ => Pin {
                replicas,
                replica: true,
            },
        };
        self.blocking(move |s| {
            s.set_pin(&id, pin)?;
            if pin.replica {
                s.set_mandate(&id, &mandate)?;
            }
            Ok(())
        })
        .await?;
        if !had {
            info!(%id, %peer, "pinned a replica");
        }
        // The asker keeps a copy (owner or holder) under the owner's mandate: it may see the
        // metadata from here. Only now: a self-signed mandate for another's object is
        // refused above and must not open the metadata.
        self.inner.access.allow(id, peer);
        Ok(())
    }

    /// The live peers that keep `id` as a replica: they answer `has` with replica = true,
    /// and then a storage challenge, checked against this node's copy.
    pub async fn live_holders(&self, id: ContentId) -> Result<Vec<PeerId>> {
        Ok(self.checked_holders(id).await?.0)
    }

    /// The peers that claim to keep `id` as a replica, split into those that proved it and
    /// those that failed the storage challenge.
    async fn checked_holders(&self, id: ContentId) -> Result<(Vec<PeerId>, Vec<PeerId>)> {
        let me = self.peer_id();
        let net = self.net()?;
        let providers = net.providers(id, HOLDER_LOOKUP).await?;
        let asks = providers
            .peers
            .into_iter()
            .filter(|p| *p != me)
            .map(|p| async move {
                let msg = Request::Has { object: id }.encode();
                let answer = tokio::time::timeout(HAS_TIMEOUT, net.request(p, msg)).await;
                let claims = match answer {
                    Ok(Ok(bytes)) => matches!(
                        Response::decode(&bytes),
                        Ok(Response::Has {
                            has: true,
                            replica: true
                        })
                    ),
                    _ => false,
                };
                if !claims {
                    return None;
                }
                Some((p, self.challenge(p, id).await))
            });
        let (mut good, mut failed) = (Vec::new(), Vec::new());
        for (p, proved) in join_all(asks).await.into_iter().flatten() {
            match proved {
                Ok(()) => {
                    self.inner.access.allow(id, p);
                    good.push(p)
                }
                Err(e) => {
                    warn!(%id, peer = %p, "a holder failed its storage challenge: {e}");
                    failed.push(p);
                }
            }
        }
        Ok((good, failed))
    }

    /// Challenge `peer` to prove it stores `id`: a random piece of a random chunk's block,
    /// keyed with a fresh nonce, checked against this node's copy.
    pub(crate) async fn challenge(&self, peer: PeerId, id: ContentId) -> Result<()> {
        use rand::RngExt as _;
        let manifest = self.blocking(move |s| s.manifest_of(&id)).await?;
        if manifest.chunks.is_empty() {
            return Ok(());
        }
        let (chunk, nonce) = {
            let mut rng = rand::rng();
            let mut nonce = [0u8; 32];
            rand::Rng::fill_bytes(&mut rng, &mut nonce);
            (rng.random_range(0..manifest.chunks.len()), nonce)
        };
        let cid = manifest.chunks[chunk].cid;
        let block = self
            .blocking(move |s| s.blocks(&[cid], usize::MAX))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Refused(format!("this node lacks a chunk of {id}")))?;
        let data = block.data();
        if data.is_empty() {
            return Ok(());
        }
        let (offset, len) = {
            let mut rng = rand::rng();
            let len = (data.len() as u32).min(MAX_PROOF_LEN);
            (rng.random_range(0..=data.len() as u32 - len), len)
        };
        let want = proof_digest(
            &nonce,
            &id,
            chunk as u32,
            offset,
            &data[offset as usize..(offset + len) as usize],
        );
        let msg = Request::Prove {
            object: id,
            chunk: chunk as u32,
            offset,
            len,
            nonce: serde_bytes::ByteBuf::from(nonce.to_vec()),
        }
        .encode();
        let net = self.net()?;
        let answer = tokio::time::timeout(HAS_TIMEOUT, net.request(peer, msg))
            .await
            .map_err(|_| Error::Refused("no answer to the storage challenge in time".into()))?
            .map_err(|e| Error::Refused(format!("storage challenge: {e}")))?;
        match Response::decode(&answer) {
            Ok(Response::Proof { digest }) if digest.as_slice() == want => Ok(()),
            Ok(Response::Proof { .. }) => Err(Error::Refused("a wrong storage proof".into())),
            Ok(Response::Refused { reason }) => Err(Error::Refused(format!(
                "refused the storage challenge: {reason}"
            ))),
            Ok(other) => Err(Error::Refused(format!(
                "answered the storage challenge with {other:?}"
            ))),
            Err(e) => Err(Error::Refused(format!("a malformed storage proof: {e}"))),
        }
    }

    /// Answer a storage challenge for `id` from this node's copy.
    pub(crate) async fn prove_for(
        &self,
        id: ContentId,
        chunk: u32,
        offset: u32,
        len: u32,
        nonce: Vec<u8>,
    ) -> Result<[u8; 32]> {
        let nonce: [u8; 32] = nonce
            .try_into()
            .map_err(|_| Error::Refused("a challenge nonce is 32 bytes".into()))?;
        if len == 0 || len > MAX_PROOF_LEN {
            return Err(Error::Refused(format!(
                "a challenged piece is 1 to {MAX_PROOF_LEN} bytes"
            )));
        }
        let block = self
            .blocking(move |s| {
                let manifest = s.manifest_of(&id)?;
                let Some(c) = manifest.chunks.get(chunk as usize) else {
                    return Ok(None);
                };
                Ok(s.blocks(&[c.cid], usize::MAX)?.into_iter().next())
            })
            .await?
            .ok_or_else(|| Error::Refused(format!("chunk {chunk} of {id} is not here")))?;
        let end = offset as usize + len as usize;
        let piece = block
            .data()
            .get(offset as usize..end)
            .ok_or_else(|| Error::Refused("the challenged piece is outside the block".into()))?;
        Ok(proof_digest(&nonce, &id, chunk, offset, piece))
    }

    /// Bring object `id` up to its pinned replica count now; returns the live replica
    /// holders afterwards (this node included if it is one).
    pub async fn replicate(&self, id: ContentId) -> Result<Vec<PeerId>> {
        let Some(pin) = self.blocking(move |s| s.pin(&id)).await? else {
            return Ok(Vec::new());
        };
        let me = self.peer_id();
        let (mut holders, failed) = self.checked_holders(id).await?;
        if !pin.replica && !failed.is_empty() {
            // The owner tells a holder whose copy is broken (or absent) to let it go.
            self.release(id, &failed).await;
        }
        if pin.replica {
            holders.push(me);
        }
        let want = pin.replicas as usize;
        if holders.len() > want && !pin.replica {
            return Ok(self.release_surplus(id, holders, want).await);
        }
        if holders.len() >= want {
            return Ok(holders);
        }
        let manifest = self.blocking(move |s| s.manifest_of(&id)).await?;
        let owner_peer = sov_net::peer_id_of(&manifest.owner);
        let size: u64 = manifest.chunks.iter().map(|c| c.size).sum();
        let pin_timeout = PIN_TIMEOUT + Duration::from_secs(size / PIN_BYTES_PER_SEC);
        let net = self.net()?;
        let banned: HashSet<PeerId> = net.banned().await?.into_iter().collect();
        let mut candidates: Vec<PeerId> = net.closest_peers(id).await.unwrap_or_default();
        candidates.extend(net.peers().await?.into_iter().map(|p| p.peer_id));
        let taken: HashSet<PeerId> = holders.iter().copied().collect();
        let mut seen = HashSet::new();
        let failed: HashSet<PeerId> = failed.into_iter().collect();
        candidates.retain(|p| {
            *p != me
                && *p != owner_peer
                && !taken.contains(p)
                && !failed.contains(p)
                && !banned.contains(p)
                && seen.insert(*p)
        });
        candidates.sort_by_key(|p| rank(&id, p));
        let mandate = match self.mandate_for(id, pin.replicas, manifest.owner).await {
            Ok(m) => m,
            Err(e) => {
                debug!(%id, "not placing copies: {e}");
                return Ok(holders);
            }
        };
        let mut missing = want - holders.len();
        // Ask as many candidates as replicas are missing, best ranked first; on refusals,
        // go on down the list.
        let mut next = 0;
        while missing > 0 && next < candidates.len() {
            let batch: Vec<PeerId> = candidates[next..].iter().take(missing).copied().collect();
            next += batch.len();
            // Those asked to pin fetch the manifest and grants from here.
            for p in &batch {
                self.inner.access.allow(id, *p);
            }
            let msg = Request::Pin {
                object: id,
                replicas: pin.replicas,
                mandate: serde_bytes::ByteBuf::from(mandate.clone()),
            }
            .encode();
            let answers = join_all(batch.iter().map(|p| {
                let msg = msg.clone();
                async move {
                    // Alive first: a paused or cut-off candidate is skipped in seconds.
                    let alive = Request::Has { object: id }.encode();
                    match tokio::time::timeout(HAS_TIMEOUT, net.request(*p, alive)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return (*p, Err(e.to_string())),
                        Err(_) => return (*p, Err("did not answer `has` in time".into())),
                    }
                    match tokio::time::timeout(pin_timeout, net.request(*p, msg)).await {
                        Ok(r) => (*p, r.map_err(|e| e.to_string())),
                        Err(_) => (*p, Err(format!("no answer in {pin_timeout:?}"))),
                    }
                }
            }))
            .await;
            for (p, answer) in answers {
                match answer.map(|b| Response::decode(&b)) {
                    // Pinned is a claim too: it counts once the copy is proved.
                    Ok(Ok(Response::Pinned)) => match self.challenge(p, id).await {
                        Ok(()) => {
                            holders.push(p);
                            missing -= 1;
                        }
                        Err(e) => warn!(%p, %id, "a new holder failed its storage challenge: {e}"),
                    },
                    Ok(Ok(Response::Refused { reason })) => {
                        debug!(%p, %id, "peer refused to pin: {reason}")
                    }
                    Ok(Ok(other)) => debug!(%p, %id, "pin request answered with {other:?}"),
                    Ok(Err(e)) => debug!(%p, %id, "malformed pin answer: {e}"),
                    Err(e) => debug!(%p, %id, "pin request failed: {e}"),
                }
            }
        }
        if missing > 0 {
            warn!(%id, have = holders.len(), want, "not enough peers to hold the wanted replicas");
        }
        Ok(holders)
    }

    /// The pin mandate to send with pins of `id` (owned by `owner`): a fresh one signed here
    /// if this node is the owner, else the owner's mandate kept with the replica, while it
    /// holds.
    pub(crate) async fn mandate_for(
        &self,
        id: ContentId,
        replicas: u32,
        owner: sov_core::Did,
    ) -> Result<Vec<u8>> {
        let now = crate::node::unix_now();
        let ttl = self.inner.config.pin_mandate_ttl.as_secs();
        self.blocking_node(move |s| {
            if s.identity().did() == owner {
                let m = PinMandate {
                    object: id,
                    replicas,
                    until: now.saturating_add(ttl),
                };
                return sov_core::Signed::sign(m, s.identity())
                    .and_then(|m| m.encode())
                    .map_err(|e| Error::Refused(format!("signing a pin mandate: {e}")));
            }
            let kept = s
                .mandate(&id)?
                .ok_or_else(|| Error::Refused(format!("no pin mandate from the owner of {id}")))?;
            match check_mandate(&kept, id, replicas, now) {
                Ok(_) => Ok(kept),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Ask `peers` to let go of `id` (best effort; only its owner may ask).
    async fn release(&self, id: ContentId, peers: &[PeerId]) {
        let Ok(net) = self.net() else {
            return;
        };
        let msg = Request::Unpin { object: id }.encode();
        join_all(peers.iter().map(|p| {
            let msg = msg.clone();
            async move {
                let _ = tokio::time::timeout(HAS_TIMEOUT, net.request(*p, msg)).await;
            }
        }))
        .await;
    }

    /// Ask the worst-ranked of `holders` (beyond the `want` best) to let go of `id`; returns
    /// those that keep it. Only an owner does this, so holders never race to drop copies.
    async fn release_surplus(
        &self,
        id: ContentId,
        mut holders: Vec<PeerId>,
        want: usize,
    ) -> Vec<PeerId> {
        let Ok(net) = self.net() else {
            return holders;
        };
        holders.sort_by_key(|p| rank(&id, p));
        let surplus = holders.split_off(want);
        let msg = Request::Unpin { object: id }.encode();
        let answers = join_all(surplus.iter().map(|p| {
            let msg = msg.clone();
            async move {
                let r = tokio::time::timeout(HAS_TIMEOUT, net.request(*p, msg)).await;
                (*p, matches!(r, Ok(Ok(ref b)) if matches!(Response::decode(b), Ok(Response::Unpinned))))
            }
        }))
        .await;
        for (p, released) in answers {
            if released {
                info!(%id, peer = %p, "released a surplus replica");
            } else {
                holders.push(p);
            }
        }
        holders
    }

    /// Drop this node's replica of `id` because its owner (`peer`) asked: it has copies
    /// enough. Not remembered as dropped: the owner may ask again later.
    pub(crate) async fn unpin_for(&self, peer: PeerId, id: ContentId) -> Result<()> {
        let pin = self.blocking(move |s| s.pin(&id)).await?;
        if !pin.is_some_and(|p| p.replica) {
            return Err(Error::Refused(format!(
                "this node keeps {id} as no one's replica"
            )));
        }
        let owner = self.blocking(move |s| s.manifest_of(&id)).await?.owner;
        if sov_net::peer_id_of(&owner) != peer {
            return Err(Error::Refused(format!(
                "only the owner of {id} may ask to release it"
            )));
        }
        self.blocking(move |s| s.remove(&id)).await?;
        self.inner.manifests.forget(&id);
        if let Ok(net) = self.net() {
            let _ = net.unprovide(id).await;
        }
        Ok(())
    }

    /// Every repair interval, bring each pinned object back to its replica count.
    pub(crate) async fn repair_loop(self) {
        let mut stopped = self.stopped();
        let mut tick = tokio::time::interval(self.inner.config.repair_interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => return,
            }
            let pins = match self.blocking(|s| s.pins()).await {
                Ok(p) => p,
                Err(e) => {
                    warn!("repair: cannot read pins: {e}");
                    continue;
                }
            };
            // Several objects at once, so one slow object does not hold up the rest.
            let node = &self;
            futures::stream::iter(pins.into_iter().filter(|(_, p)| p.replicas > 0))
                .for_each_concurrent(REPAIR_AT_ONCE, |(id, _)| async move {
                    if let Err(e) = node.replicate(id).await {
                        debug!(%id, "repair failed: {e}");
                    }
                })
                .await;
        }
    }
}

/// Longest a pin mandate may claim to hold (a longer one is refused).
const MAX_MANDATE: u64 = 30 * 24 * 3600;

/// Check an encoded pin mandate for pinning `id` in `replicas` copies at `now`: its
/// signature, object, count and time. Returns its signer (who must own the object).
pub(crate) fn check_mandate(
    bytes: &[u8],
    id: ContentId,
    replicas: u32,
    now: u64,
) -> Result<sov_core::Did> {
    let signed = sov_core::Signed::<PinMandate>::decode(bytes)
        .map_err(|e| Error::Refused(format!("the pin mandate is not valid: {e}")))?;
    let m = signed.body();
    if m.object != id || m.replicas != replicas {
        return Err(Error::Refused(format!(
            "the pin mandate is for {} in {} copies, not {id} in {replicas}",
            m.object, m.replicas
        )));
    }
    if m.until <= now {
        return Err(Error::Refused(format!(
            "the pin mandate for {id} expired (its owner has not renewed it)"
        )));
    }
    if m.until > now.saturating_add(MAX_MANDATE) {
        return Err(Error::Refused(
            "the pin mandate claims more than 30 days".into(),
        ));
    }
    Ok(signed.signer())
}

/// Rendezvous rank of `peer` for `id`: lower is preferred.
fn rank(id: &ContentId, peer: &PeerId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&id.to_bytes());
    h.update(&peer.to_bytes());
    *h.finalize().as_bytes()
}
