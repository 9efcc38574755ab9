//! What the node holds of each federation it is in: the ledger, the current model, the
//! member's own data, the secure rounds it takes part in, and how it keeps them in its
//! store's records (topic `fl/<federation>`, and `fl-member` for its own membership).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use serde::{Deserialize, Serialize};
use sov_core::ContentId;
use sov_learn::{
    ledger::{Ledger, params_digest},
    member::MemberData,
    secagg,
};
use sov_net::PeerId;
use sov_store::Store;
use tokio::sync::oneshot;

use crate::protocol::{SecureOpen, Validation};

/// The records topic of this node's memberships (key: the federation's CID bytes).
pub(crate) const MEMBER_TOPIC: &str = "fl-member";

/// The records topic of one federation.
pub(crate) fn topic(id: &ContentId) -> String {
    format!("fl/{id}")
}

pub(crate) const GENESIS_KEY: &[u8] = b"genesis";
pub(crate) const MODEL_KEY: &[u8] = b"model";

pub(crate) fn admission_key(member: &sov_core::Did) -> Vec<u8> {
    format!("admission/{member}").into_bytes()
}

pub(crate) fn round_key(round: u32) -> Vec<u8> {
    let mut k = b"round/".to_vec();
    k.extend_from_slice(&round.to_be_bytes());
    k
}

/// How this node takes part in a federation: where its data is. Kept as JSON in the
/// `fl-member` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// `--data`: a CSV file, `IMAGES,LABELS`, or a shard such as `digits:1/5`.
    pub data: String,
    /// The label column of a CSV file.
    pub label_column: Option<String>,
    /// Standardise features with the member's own statistics.
    pub standardize: bool,
}

/// A trained update, or why training failed.
pub(crate) type Trained = Result<(Vec<f32>, usize, Validation), String>;

/// This node's side of a secure round.
pub(crate) struct ClientRound {
    /// Who opened it (only it may drive the round on).
    pub aggregator: PeerId,
    pub open: SecureOpen,
    pub client: secagg::Client,
    /// The training started when the round opened.
    pub trained: Option<oneshot::Receiver<Trained>>,
}

/// One federation this node is in.
pub(crate) struct Fed {
    pub id: ContentId,
    pub ledger: Mutex<Ledger>,
    /// The current model (its digest is the ledger's head), if this node has it.
    pub params: Mutex<Option<Arc<Vec<f32>>>>,
    pub membership: Membership,
    /// Loaded at join and at start.
    pub data: Arc<MemberData>,
    /// Secure rounds this node takes part in, by round and aggregator.
    pub clients: tokio::sync::Mutex<HashMap<(u32, PeerId), ClientRound>>,
    /// The round this node is aggregating, if any.
    pub driving: Mutex<Option<u32>>,
    /// The round waited for, and since when (for failover).
    pub pending: Mutex<(u32, Instant)>,
    /// The digest of the message this node sent in each round it took part in.
    pub sent: Mutex<HashMap<u32, [u8; 32]>>,
    /// Catch-ups in flight (bounded: a peer that never answers holds one for the bulk
    /// protocol's timeout).
    pub syncing: std::sync::atomic::AtomicUsize,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fed {
    pub(crate) fn new(
        ledger: Ledger,
        params: Option<Vec<f32>>,
        membership: Membership,
        data: MemberData,
    ) -> Self {
        let round = ledger.round();
        Fed {
            id: *ledger.id(),
            ledger: Mutex::new(ledger),
            params: Mutex::new(params.map(Arc::new)),
            membership,
            data: Arc::new(data),
            clients: tokio::sync::Mutex::new(HashMap::new()),
            driving: Mutex::new(None),
            pending: Mutex::new((round + 1, Instant::now())),
            sent: Mutex::new(HashMap::new()),
            syncing: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The current model, if this node has it.
    pub(crate) fn params(&self) -> Option<Arc<Vec<f32>>> {
        lock(&self.params).clone()
    }
}

/// The federations this node is in, and the bytes its federation messages moved.
#[derive(Default)]
pub(crate) struct Feds {
    map: Mutex<HashMap<ContentId, Arc<Fed>>>,
    /// Bytes of federation messages this node sent (requests and answers).
    pub sent: std::sync::atomic::AtomicU64,
    /// Bytes of federation messages this node received.
    pub received: std::sync::atomic::AtomicU64,
    /// Woken when a round is taken, so the next one starts without waiting for a tick.
    pub wake: tokio::sync::Notify,
}

impl Feds {
    pub(crate) fn get(&self, id: &ContentId) -> Option<Arc<Fed>> {
        lock(&self.map).get(id).cloned()
    }

    pub(crate) fn all(&self) -> Vec<Arc<Fed>> {
        let mut v: Vec<Arc<Fed>> = lock(&self.map).values().cloned().collect();
        v.sort_by_key(|f| f.id);
        v
    }

    pub(crate) fn insert(&self, fed: Arc<Fed>) {
        lock(&self.map).insert(fed.id, fed);
    }

    pub(crate) fn remove(&self, id: &ContentId) -> Option<Arc<Fed>> {
        lock(&self.map).remove(id)
    }

    /// Count a message's bytes.
    pub(crate) fn count(&self, sent: usize, received: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.sent.fetch_add(sent as u64, Relaxed);
        self.received.fetch_add(received as u64, Relaxed);
    }
}

/// Store a federation's genesis and admissions.
pub(crate) fn save_ledger(s: &Store, ledger: &Ledger) -> sov_store::Result<()> {
    let t = topic(ledger.id());
    s.put_record(&t, GENESIS_KEY, ledger.genesis_bytes())?;
    for a in ledger.admissions() {
        let opened = sov_core::Signed::<sov_learn::ledger::Admission>::decode(a)
            .map_err(|e| sov_store::Error::Invalid(e.to_string()))?;
        s.put_record(&t, &admission_key(&opened.body().member), a)?;
    }
    Ok(())
}

/// Store an accepted round and the model it produced.
pub(crate) fn save_round(
    s: &Store,
    id: &ContentId,
    round: u32,
    record: &[u8],
    params: &[u8],
) -> sov_store::Result<()> {
    let t = topic(id);
    s.put_record(&t, &round_key(round), record)?;
    s.put_record(&t, MODEL_KEY, params)?;
    Ok(())
}

/// Rebuild a federation's ledger and model from the store (`None` if it holds no genesis).
pub(crate) fn load_ledger(
    s: &Store,
    id: &ContentId,
) -> sov_store::Result<Option<(Ledger, Option<Vec<f32>>)>> {
    let t = topic(id);
    let corrupt = |e: sov_learn::Error| sov_store::Error::Corrupt(format!("federation {id}: {e}"));
    let Some(genesis) = s.record(&t, GENESIS_KEY)? else {
        return Ok(None);
    };
    let mut ledger = Ledger::new(&genesis).map_err(corrupt)?;
    let mut rounds = Vec::new();
    for (k, v) in s.records(&t)? {
        if k.starts_with(b"admission/") {
            ledger.admit(&v).map_err(corrupt)?;
        } else if k.starts_with(b"round/") {
            rounds.push((k, v));
        }
    }
    rounds.sort();
    for (_, v) in rounds {
        ledger.accept_round(&v).map_err(corrupt)?;
    }
    let params = match s.record(&t, MODEL_KEY)? {
        Some(b) if params_digest(&b) == ledger.head() => {
            Some(sov_learn::wire::bytes_to_f32s(&b).map_err(corrupt)?)
        }
        _ if ledger.round() == 0 => Some(
            sov_learn::ledger::initial_params(ledger.id(), ledger.genesis()).map_err(corrupt)?,
        ),
        _ => None,
    };
    Ok(Some((ledger, params)))
}
