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
    pub driving: Mutex<Driving>,
    /// The round waited for, and since when (for failover).
    pub pending: Mutex<(u32, Instant)>,
    /// The digests of the messages this node sent in each round it took part in (one per
    /// opening of the round it answered).
    pub sent: Mutex<Sent>,
    /// Catch-ups in flight (bounded: a peer that never answers holds one for the bulk
    /// protocol's timeout).
    pub syncing: std::sync::atomic::AtomicUsize,
}

/// The round this node drives as aggregator. A drive's task outlives its round (it sends
/// the result to every member) while the next round's drive starts: only the drive that
/// holds the mark may clear it, or the next round would be driven twice at once, and its
/// members, answering both, would refuse the record of the first to close.
#[derive(Debug, Default)]
pub(crate) struct Driving(Option<u32>);

impl Driving {
    /// Mark `round` as driven; false when it already is.
    pub(crate) fn begin(&mut self, round: u32) -> bool {
        if self.0 == Some(round) {
            return false;
        }
        self.0 = Some(round);
        true
    }

    /// The drive of `round` is over (a later round's mark stays).
    pub(crate) fn end(&mut self, round: u32) {
        if self.0 == Some(round) {
            self.0 = None;
        }
    }
}

/// Messages sent per round at most remembered (a round opened again and again by a
/// faulty aggregator costs no more).
const SENT_PER_ROUND: usize = 16;

/// The digests of the messages this member sent, by round. A round's record is taken only
/// if it names one of them for this member: an aggregator cannot put words in its mouth,
/// and a round opened twice (a retry, a failover racing the first aggregator) closes with
/// either.
#[derive(Debug, Default)]
pub(crate) struct Sent(HashMap<u32, Vec<[u8; 32]>>);

impl Sent {
    pub(crate) fn insert(&mut self, round: u32, digest: [u8; 32]) {
        let all = self.0.entry(round).or_default();
        if !all.contains(&digest) {
            if all.len() == SENT_PER_ROUND {
                all.remove(0);
            }
            all.push(digest);
        }
    }

    /// Whether a record naming `digest` as this member's message of `round` holds what it
    /// sent (true when it sent nothing this node remembers: a round closed before a
    /// restart).
    pub(crate) fn holds(&self, round: u32, digest: &[u8]) -> bool {
        self.0
            .get(&round)
            .is_none_or(|all| all.iter().any(|d| d.as_slice() == digest))
    }

    /// Forget the rounds up to `round`.
    pub(crate) fn closed(&mut self, round: u32) {
        self.0.retain(|r, _| *r > round);
    }
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
            driving: Mutex::new(Driving::default()),
            pending: Mutex::new((round + 1, Instant::now())),
            sent: Mutex::new(Sent::default()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_rounds_drive_does_not_clear_the_next_ones_mark() {
        let mut d = Driving::default();
        assert!(d.begin(8));
        assert!(!d.begin(8));
        // Round 8 closed; its task still sends the result when round 9 starts.
        assert!(d.begin(9));
        d.end(8);
        assert!(!d.begin(9), "round 9 would be driven twice");
        d.end(9);
        assert!(d.begin(9), "a failed round is driven again");
    }

    #[test]
    fn a_record_must_name_one_of_the_messages_sent_in_its_round() {
        let mut s = Sent::default();
        assert!(s.holds(3, &[1; 32]), "nothing remembered for round 3");
        s.insert(3, [1; 32]);
        s.insert(3, [2; 32]);
        assert!(s.holds(3, &[1; 32]) && s.holds(3, &[2; 32]));
        assert!(!s.holds(3, &[9; 32]));
        for i in 0..40u8 {
            s.insert(4, [i; 32]);
        }
        assert_eq!(s.0[&4].len(), SENT_PER_ROUND);
        assert!(s.holds(4, &[39; 32]) && !s.holds(4, &[0; 32]));
        s.closed(3);
        assert!(s.holds(3, &[9; 32]) && !s.holds(4, &[0; 32]));
    }
}
