//! Who may see an object's metadata. A manifest names its owner, creation time and chunk
//! sizes, and its grants how many readers it has: this node gives them (blocks on
//! `/sov/blocks/2`, grant lists on `/sov/node/5`) only to the object's owner, its readers,
//! and the peers it asked to pin the object or that proved a copy to it. A grant names its
//! reader only inside the encryption, so a reader proves itself with a claim signed by its
//! grant's access key (`Request::Claim`); claims, pins and proofs let a peer see the object
//! for an hour (remembered in memory). Any other peer gets what it would get if the object
//! were not here: nothing. Chunks are ciphertext and go to anyone who names them.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use sov_core::{Codec, ContentId};
use sov_net::PeerId;
use sov_store::Store;

/// How long a peer asked to pin, or proved a copy, may see the object's metadata.
const ACCESS_TTL: Duration = Duration::from_secs(3600);
/// Objects remembered (the least recently touched are forgotten first).
const ACCESS_OBJECTS: usize = 4096;
/// Peers remembered per object.
const ACCESS_PEERS: usize = 64;

/// Holders and invited peers, per object, bounded.
#[derive(Debug, Default)]
pub(crate) struct Access {
    map: Mutex<HashMap<ContentId, HashMap<PeerId, Instant>>>,
}

impl Access {
    /// Let `peer` see `id`'s metadata for a while.
    pub(crate) fn allow(&self, id: ContentId, peer: PeerId) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&id) && map.len() >= ACCESS_OBJECTS {
            let oldest = map
                .iter()
                .min_by_key(|(_, peers)| peers.values().max().copied())
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        let peers = map.entry(id).or_default();
        peers.retain(|_, t| now.duration_since(*t) < ACCESS_TTL);
        if !peers.contains_key(&peer) && peers.len() >= ACCESS_PEERS {
            let oldest = peers.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p);
            if let Some(p) = oldest {
                peers.remove(&p);
            }
        }
        peers.insert(peer, now);
    }

    /// The objects `peer` may see through this list (not counting the readers this node can
    /// name).
    pub(crate) fn objects_for(&self, peer: &PeerId) -> HashSet<ContentId> {
        let now = Instant::now();
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(_, peers)| {
                peers
                    .get(peer)
                    .is_some_and(|t| now.duration_since(*t) < ACCESS_TTL)
            })
            .map(|(id, _)| *id)
            .collect()
    }
}

/// The object whose metadata block `cid` is, if it is one stored here: a manifest (its own
/// id) or a grant (the object it names).
fn metadata_of(s: &Store, cid: &ContentId) -> sov_store::Result<Option<ContentId>> {
    if cid.codec() != Codec::DagCbor {
        return Ok(None);
    }
    if s.contains(cid)? {
        return Ok(Some(*cid));
    }
    let Some(block) = s.blocks(&[*cid], usize::MAX)?.into_iter().next() else {
        return Ok(None);
    };
    Ok(sov_store::decode_grant(block.data())
        .ok()
        .map(|(_, g)| g.object()))
}

/// Whether `peer` may see object `id`'s metadata: this node can name it as a reader (the
/// owner, any reader if this node is the owner, a reader a legacy grant names), or it is in
/// `listed` (claimed a grant, was asked to pin it, or proved a copy).
pub(crate) fn may_see(
    s: &Store,
    peer: &PeerId,
    id: &ContentId,
    listed: &HashSet<ContentId>,
) -> sov_store::Result<bool> {
    if listed.contains(id) {
        return Ok(true);
    }
    Ok(s.readers_named(id)?
        .iter()
        .any(|d| sov_net::peer_id_of(d) == *peer))
}

/// Of `cids`, those `peer` may have: chunks and other blocks always, an object's manifest
/// and grants only if it may see them.
pub(crate) fn visible(
    s: &Store,
    peer: &PeerId,
    cids: Vec<ContentId>,
    listed: &HashSet<ContentId>,
) -> sov_store::Result<Vec<ContentId>> {
    let mut seen: HashMap<ContentId, bool> = HashMap::new();
    let mut out = Vec::with_capacity(cids.len());
    for cid in cids {
        let ok = match metadata_of(s, &cid)? {
            None => true,
            Some(id) => match seen.get(&id) {
                Some(&v) => v,
                None => {
                    let v = may_see(s, peer, &id, listed)?;
                    seen.insert(id, v);
                    v
                }
            },
        };
        if ok {
            out.push(cid);
        }
    }
    Ok(out)
}
