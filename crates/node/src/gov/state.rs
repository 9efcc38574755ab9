//! What the node holds of each group it is in: the book (genesis, proposals, votes, the
//! decisions it reached), what it enacted, and how both are kept in the store's records.
//!
//! | records topic | key | value |
//! |---|---|---|
//! | `gov-groups` | group id | signed genesis |
//! | `gov/<group>` | `p` ‖ proposal id | signed proposal |
//! | `gov/<group>` | `v` ‖ proposal id ‖ voter key ‖ choice | signed vote |
//! | `gov/<group>` | `e` ‖ proposal id | what this node enacted (JSON) |
//! | `gov-served` | a served name | the promoted model (JSON) |

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicUsize},
};

use serde::{Deserialize, Serialize};
use sov_core::{ContentId, Did, Signed};
use sov_gov::{Book, Choice, Proposal, Vote};
use sov_store::Store;
use tokio::sync::Notify;

/// The records topic of the groups this node is in.
pub(crate) const GROUPS_TOPIC: &str = "gov-groups";
pub(crate) use crate::models::{SERVED_TOPIC, Served};

/// The records topic of one group.
pub(crate) fn topic(id: &ContentId) -> String {
    format!("gov/{id}")
}

pub(crate) fn proposal_key(id: &ContentId) -> Vec<u8> {
    let mut k = b"p".to_vec();
    k.extend_from_slice(&id.to_bytes());
    k
}

pub(crate) fn vote_key(proposal: &ContentId, voter: &Did, choice: Choice) -> Vec<u8> {
    let mut k = b"v".to_vec();
    k.extend_from_slice(&proposal.to_bytes());
    k.extend_from_slice(voter.public_bytes());
    k.push(choice as u8);
    k
}

pub(crate) fn enacted_key(id: &ContentId) -> Vec<u8> {
    let mut k = b"e".to_vec();
    k.extend_from_slice(&id.to_bytes());
    k
}

/// What a node did about a passed proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enactment {
    /// `done`, `failed` (it is tried again) or `nothing` (a proposal with nothing to do).
    pub state: String,
    /// When (Unix seconds).
    pub at: u64,
    /// What was done, or why it failed.
    pub detail: String,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One group this node is in.
pub(crate) struct Gov {
    pub(crate) id: ContentId,
    pub(crate) book: Mutex<Book>,
    /// Members known to hold the genesis (told, or heard from).
    pub(crate) told: Mutex<BTreeSet<Did>>,
    /// What this node enacted, by proposal.
    pub(crate) enacted: Mutex<BTreeMap<ContentId, Enactment>>,
    /// Enactments running now.
    pub(crate) enacting: Mutex<BTreeSet<ContentId>>,
    /// Catch-ups in flight.
    pub(crate) syncing: AtomicUsize,
    /// Members being told of the group now (bounded: an offline member's ask waits for the
    /// bulk protocol's timeout).
    pub(crate) telling: AtomicUsize,
    /// Gossiped revocations being checked and kept now (bounded: a member flooding the topic
    /// costs at most this many tasks; the rest come again with the catch-up).
    pub(crate) revoking: AtomicUsize,
}

impl Gov {
    pub(crate) fn new(book: Book, enacted: BTreeMap<ContentId, Enactment>) -> Self {
        let mut told = BTreeSet::new();
        told.insert(book.creator());
        Self {
            id: *book.id(),
            book: Mutex::new(book),
            told: Mutex::new(told),
            enacted: Mutex::new(enacted),
            enacting: Mutex::new(BTreeSet::new()),
            syncing: AtomicUsize::new(0),
            telling: AtomicUsize::new(0),
            revoking: AtomicUsize::new(0),
        }
    }
}

/// The groups, by id.
#[derive(Default)]
pub(crate) struct Govs {
    all: Mutex<BTreeMap<ContentId, Arc<Gov>>>,
    /// Woken when a decision wants enacting at once.
    pub(crate) wake: Notify,
}

impl Govs {
    pub(crate) fn get(&self, id: &ContentId) -> Option<Arc<Gov>> {
        lock(&self.all).get(id).cloned()
    }

    pub(crate) fn insert(&self, g: Arc<Gov>) {
        lock(&self.all).insert(g.id, g);
    }

    pub(crate) fn all(&self) -> Vec<Arc<Gov>> {
        lock(&self.all).values().cloned().collect()
    }

    /// The group that holds proposal `id`.
    pub(crate) fn holding(&self, id: &ContentId) -> Option<Arc<Gov>> {
        self.all()
            .into_iter()
            .find(|g| lock(&g.book).proposal(id).is_some())
    }
}

/// Keep a group's genesis.
pub(crate) fn save_group(s: &Store, book: &Book) -> sov_store::Result<()> {
    s.put_record(GROUPS_TOPIC, &book.id().to_bytes(), book.genesis_bytes())?;
    Ok(())
}

/// Keep a proposal (checked already).
pub(crate) fn save_proposal(
    s: &Store,
    group: &ContentId,
    id: &ContentId,
    bytes: &[u8],
) -> sov_store::Result<()> {
    s.put_record(&topic(group), &proposal_key(id), bytes)?;
    Ok(())
}

/// Keep a vote (checked already).
pub(crate) fn save_vote(s: &Store, group: &ContentId, bytes: &[u8]) -> sov_store::Result<()> {
    let v = Signed::<Vote>::decode(bytes).map_err(|e| sov_store::Error::Invalid(e.to_string()))?;
    s.put_record(
        &topic(group),
        &vote_key(&v.body().proposal, &v.signer(), v.body().choice),
        bytes,
    )?;
    Ok(())
}

/// Load every group this node keeps: the books rebuilt from their records (proposals in the
/// order of their bases, each followed by its votes, so decisions are reached again).
pub(crate) fn load_all(
    s: &Store,
) -> sov_store::Result<Vec<(Book, BTreeMap<ContentId, Enactment>)>> {
    let mut out = Vec::new();
    for (_, genesis) in s.records(GROUPS_TOPIC)? {
        let Ok(mut book) = Book::new(&genesis) else {
            tracing::warn!("a kept group's genesis no longer checks; skipped");
            continue;
        };
        let records = s.records(&topic(book.id()))?;
        let mut proposals = Vec::new();
        let mut votes: BTreeMap<ContentId, Vec<Vec<u8>>> = BTreeMap::new();
        let mut enacted = BTreeMap::new();
        for (key, value) in records {
            match key.split_first() {
                Some((b'p', _)) => {
                    if let Ok(p) = Signed::<Proposal>::decode(&value) {
                        proposals.push((p.body().basis.len(), p.body().created, value));
                    }
                }
                Some((b'v', rest)) => {
                    if let Ok((id, _)) = ContentId::read_prefix(rest) {
                        votes.entry(id).or_default().push(value);
                    }
                }
                Some((b'e', rest)) => {
                    if let (Ok(id), Ok(e)) = (
                        ContentId::from_bytes(rest),
                        serde_json::from_slice::<Enactment>(&value),
                    ) {
                        enacted.insert(id, e);
                    }
                }
                _ => {}
            }
        }
        proposals.sort_by_key(|a| (a.0, a.1));
        for (_, _, bytes) in proposals {
            match book.add_proposal(&bytes, u64::MAX) {
                Ok((id, _)) => {
                    for v in votes.remove(&id).unwrap_or_default() {
                        let _ = book.add_vote(&v, u64::MAX);
                    }
                }
                Err(e) => {
                    tracing::debug!(group = %book.id(), "a kept proposal is not taken again: {e}")
                }
            }
        }
        out.push((book, enacted));
    }
    Ok(out)
}
