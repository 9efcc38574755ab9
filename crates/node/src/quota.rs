//! What peers may ask of this node: replica quotas, request rates, answers in flight.
//!
//! - **Replicas**: at most [`MAX_REPLICAS`] copies per object; the replicas kept for others
//!   are bounded in all (`[storage] max_replica_bytes`) and per owner
//!   (`max_replica_bytes_per_owner`). An object's size is known from its manifest, so a pin
//!   past the quota is refused before a chunk is fetched.
//! - **Rates**: each peer has a token bucket per kind of request (pins are dear, queries
//!   cheap); a request past its rate is refused at once.
//! - **In flight**: at most [`MAX_ANSWERS`] answers to peers run at once; more are refused.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use sov_core::Did;
use sov_net::PeerId;
use tokio::sync::Semaphore;

/// Most copies an object may ask for (replicas besides its owner).
pub const MAX_REPLICAS: u32 = 16;
/// Answers to peers' node requests running at once.
pub const MAX_ANSWERS: usize = 64;
/// Pin requests a peer may make per minute (burst as large).
pub const PINS_PER_MINUTE: u32 = 60;
/// `has`, `grants` and `prove` requests a peer may make per minute (burst as large).
pub const QUERIES_PER_MINUTE: u32 = 1200;
/// Peers whose rates are remembered (the least recently seen are forgotten first).
const RATE_PEERS: usize = 4096;

/// The replica quota in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaQuota {
    /// Bytes of replicas in all.
    pub total: u64,
    /// Bytes of replicas for one owner.
    pub per_owner: u64,
}

impl ReplicaQuota {
    /// The quota `config` sets, with defaults taken from `free` bytes on the home's disk.
    pub fn resolve(total: Option<u64>, per_owner: Option<u64>, free: Option<u64>) -> Self {
        let total = total.unwrap_or_else(|| free.map_or(1 << 30, |f| f / 4));
        Self {
            total,
            per_owner: per_owner.unwrap_or(total / 4).min(total),
        }
    }
}

/// Kinds of peer request with their own rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Pin,
    Query,
}

impl Kind {
    fn per_minute(self) -> u32 {
        match self {
            Kind::Pin => PINS_PER_MINUTE,
            Kind::Query => QUERIES_PER_MINUTE,
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The node's bookkeeping of what peers ask.
#[derive(Debug)]
pub(crate) struct Quotas {
    pub(crate) replicas: ReplicaQuota,
    /// Bytes of pins being fetched now, by owner (counted against the quota until stored).
    reserved: Mutex<HashMap<Did, u64>>,
    rates: Mutex<HashMap<(PeerId, Kind), Bucket>>,
    pub(crate) answers: std::sync::Arc<Semaphore>,
    /// Objects whose copies are being placed because a holder dropped one (one placement
    /// per object at a time, however many peers report it).
    placing: Mutex<std::collections::HashSet<sov_core::ContentId>>,
}

impl Quotas {
    pub(crate) fn new(replicas: ReplicaQuota) -> Self {
        Self {
            replicas,
            reserved: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
            answers: std::sync::Arc::new(Semaphore::new(MAX_ANSWERS)),
            placing: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Start placing copies of `id`: `false` if a placement of it already runs.
    pub(crate) fn begin_placing(&self, id: sov_core::ContentId) -> bool {
        self.placing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id)
    }

    /// A placement started by [`Self::begin_placing`] ended.
    pub(crate) fn end_placing(&self, id: &sov_core::ContentId) {
        self.placing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Take one request of `kind` from `peer`'s bucket, or say how long to wait.
    pub(crate) fn admit(&self, peer: PeerId, kind: Kind, now: Instant) -> Result<(), Duration> {
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        if rates.len() >= RATE_PEERS && !rates.contains_key(&(peer, kind)) {
            // Forget the buckets that are full again (idle peers) first.
            rates.retain(|(_, k), b| {
                b.tokens + now.duration_since(b.last).as_secs_f64() * rate(*k)
                    < f64::from(k.per_minute())
            });
            if rates.len() >= RATE_PEERS {
                return Err(Duration::from_secs(1));
            }
        }
        let burst = f64::from(kind.per_minute());
        let b = rates.entry((peer, kind)).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate(kind)).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate(kind)))
        }
    }

    /// Reserve `bytes` of replica quota for `owner`, given what is stored now (`usage`):
    /// `Err` says which limit it would pass. The reservation lasts until [`Self::release`].
    pub(crate) fn reserve(
        &self,
        owner: &Did,
        bytes: u64,
        usage: &sov_store::ReplicaUsage,
    ) -> Result<(), String> {
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let pending_total: u64 = reserved.values().sum();
        let pending_owner = reserved.get(owner).copied().unwrap_or(0);
        let owner_now = usage.by_owner.get(owner).copied().unwrap_or(0);
        let q = self.replicas;
        if usage.total + pending_total + bytes > q.total {
            return Err(format!(
                "replica quota: this node keeps {} of its {} bytes of replicas for others; {bytes} more do not fit",
                usage.total + pending_total,
                q.total
            ));
        }
        if owner_now + pending_owner + bytes > q.per_owner {
            return Err(format!(
                "replica quota: this node keeps {} of the {} bytes of replicas it allows one owner; {bytes} more do not fit",
                owner_now + pending_owner,
                q.per_owner
            ));
        }
        *reserved.entry(*owner).or_default() += bytes;
        Ok(())
    }

    /// Give back a reservation made by [`Self::reserve`].
    pub(crate) fn release(&self, owner: &Did, bytes: u64) {
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = reserved.get_mut(owner) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                reserved.remove(owner);
            }
        }
    }
}

/// Tokens per second.
fn rate(kind: Kind) -> f64 {
    f64::from(kind.per_minute()) / 60.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_their_rate() {
        let q = Quotas::new(ReplicaQuota::resolve(Some(100), None, None));
        let peer = PeerId::random();
        let t0 = Instant::now();
        for _ in 0..PINS_PER_MINUTE {
            assert!(q.admit(peer, Kind::Pin, t0).is_ok());
        }
        let wait = q.admit(peer, Kind::Pin, t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        // Queries have their own bucket; another peer its own.
        assert!(q.admit(peer, Kind::Query, t0).is_ok());
        assert!(q.admit(PeerId::random(), Kind::Pin, t0).is_ok());
        assert!(
            q.admit(peer, Kind::Pin, t0 + Duration::from_secs(2))
                .is_ok()
        );
    }

    #[test]
    fn reservations_count_against_the_quota_until_released() {
        let q = Quotas::new(ReplicaQuota {
            total: 100,
            per_owner: 60,
        });
        let (a, b) = (
            sov_identity::Keypair::generate().did(),
            sov_identity::Keypair::generate().did(),
        );
        let usage = sov_store::ReplicaUsage::default();
        q.reserve(&a, 50, &usage).unwrap();
        assert!(q.reserve(&a, 20, &usage).unwrap_err().contains("one owner"));
        q.reserve(&b, 50, &usage).unwrap();
        assert!(
            q.reserve(&b, 1, &usage)
                .unwrap_err()
                .contains("replicas for others")
        );
        q.release(&a, 50);
        q.reserve(&b, 10, &usage).unwrap();
    }
}
