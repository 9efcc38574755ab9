//! A group's records between nodes: the genesis pushed to members, and the catch-up
//! (anti-entropy) by which a node compares what it holds with a member and takes what it
//! lacks. Only members are answered; every record taken is checked into the book.

use std::sync::{Arc, atomic::Ordering::SeqCst};

use serde_bytes::ByteBuf;
use sov_core::{ContentId, Did, Signed};
use sov_gov::{Book, Proposal};
use sov_net::PeerId;
use tracing::debug;

use super::state::{Gov, lock};
use crate::{
    Node,
    protocol::{
        FlRequest, FlResponse, GovRequest, GovResponse, MAX_GOV_PROPOSALS, MAX_GOV_SUMMARY,
        MAX_GOV_VOTES,
    },
};

/// Catch-ups in flight per group.
const MAX_SYNCS: usize = 4;
/// Most groups a node keeps (a stranger can name anyone in a group it founds).
const MAX_GROUPS: usize = 256;
/// Rounds of asking within one catch-up (each may bring what the last one builds on).
const MAX_PASSES: usize = 4;

impl Node {
    /// Answer a peer's governance request.
    pub(crate) async fn answer_gov(
        &self,
        peer: PeerId,
        req: GovRequest,
    ) -> std::result::Result<GovResponse, String> {
        let asker = sov_net::did_of(&peer).ok_or("a peer without a did:key")?;
        match req {
            GovRequest::Group { genesis } => {
                let book = Book::new(&genesis).map_err(|e| e.to_string())?;
                let id = *book.id();
                if let Some(g) = self.inner.govs.get(&id) {
                    lock(&g.told).insert(asker);
                    return Ok(GovResponse::Kept);
                }
                if self.inner.govs.all().len() >= MAX_GROUPS {
                    return Err(format!("this node is in {MAX_GROUPS} groups already"));
                }
                let named = |d: &Did| book.group().members.iter().any(|m| m.did == *d);
                let me = self.did();
                if named(&me) && named(&asker) {
                    let gov = self.gov_enter(book).await.map_err(|e| e.to_string())?;
                    lock(&gov.told).insert(asker);
                    self.gov_sync_soon(&gov, peer);
                    return Ok(GovResponse::Kept);
                }
                // Admitted later (or told by one who was): this node keeps the group only if
                // the teller's records, each checked here, make both of them members.
                let gov = Arc::new(Gov::new(book, Default::default()));
                self.gov_sync_from(&gov, peer).await?;
                let book = lock(&gov.book).clone();
                let members = book.membership();
                if !members.contains(&me) || !members.contains(&asker) {
                    return Err("this node is not a member of that group".into());
                }
                let gov = self.gov_enter(book).await.map_err(|e| e.to_string())?;
                self.gov_sync_from(&gov, peer).await?;
                Ok(GovResponse::Kept)
            }
            GovRequest::Summary { group } => {
                let gov = self.member_gov(&group, &asker)?;
                let b = lock(&gov.book);
                lock(&gov.told).insert(asker);
                Ok(GovResponse::Summary {
                    proposals: b
                        .proposals()
                        .take(MAX_GOV_SUMMARY)
                        .map(|(id, _, _)| (*id, b.vote_count(id) as u32))
                        .collect(),
                })
            }
            GovRequest::Records { group, proposals } => {
                if proposals.len() > MAX_GOV_PROPOSALS {
                    return Err(format!("at most {MAX_GOV_PROPOSALS} proposals at once"));
                }
                let gov = self.member_gov(&group, &asker)?;
                let b = lock(&gov.book);
                let mut ps = Vec::new();
                let mut votes = Vec::new();
                for id in &proposals {
                    if let Some((_, _, bytes)) = b.proposal(id) {
                        ps.push(ByteBuf::from(bytes.to_vec()));
                        for v in b.votes(id) {
                            if votes.len() < MAX_GOV_VOTES {
                                votes.push(ByteBuf::from(v.to_vec()));
                            }
                        }
                    }
                }
                Ok(GovResponse::Records {
                    proposals: ps,
                    votes,
                })
            }
            GovRequest::Revoked { group } => {
                let gov = self.member_gov(&group, &asker)?;
                Ok(GovResponse::Revoked {
                    revocations: self.revocations(&gov).await,
                })
            }
        }
    }

    /// Group `id`, if `asker` is one of its members now.
    fn member_gov(&self, id: &ContentId, asker: &Did) -> std::result::Result<Arc<Gov>, String> {
        let gov = self
            .inner
            .govs
            .get(id)
            .ok_or_else(|| format!("this node is not in group {id}"))?;
        if !lock(&gov.book).membership().contains(asker) {
            return Err("not a member of the group".into());
        }
        Ok(gov)
    }

    async fn ask_gov(
        &self,
        peer: PeerId,
        req: GovRequest,
    ) -> std::result::Result<GovResponse, String> {
        match self.ask_fl(peer, FlRequest::Gov(req)).await? {
            FlResponse::Gov(r) => Ok(r),
            _ => Err(format!("{peer} answered something else")),
        }
    }

    /// Tell member `did` of the group (its genesis).
    pub(super) async fn gov_tell(
        &self,
        gov: &Gov,
        did: Did,
        genesis: Vec<u8>,
    ) -> std::result::Result<(), String> {
        let peer = sov_net::peer_id_of(&did);
        match self
            .ask_gov(
                peer,
                GovRequest::Group {
                    genesis: genesis.into(),
                },
            )
            .await
        {
            Ok(GovResponse::Kept) => Ok(()),
            Ok(_) => Err("an odd answer".into()),
            Err(e) => {
                debug!(group = %gov.id, %did, "not told yet: {e}");
                Err(e)
            }
        }
    }

    /// Catch up on `gov` from `peer` in the background (a few at a time).
    pub(crate) fn gov_sync_soon(&self, gov: &Arc<Gov>, peer: PeerId) {
        if gov.syncing.fetch_add(1, SeqCst) >= MAX_SYNCS {
            gov.syncing.fetch_sub(1, SeqCst);
            return;
        }
        let node = self.clone();
        let gov = gov.clone();
        self.spawn(async move {
            if let Err(e) = node.gov_sync_from(&gov, peer).await {
                debug!(group = %gov.id, %peer, "catch-up: {e}");
            }
            gov.syncing.fetch_sub(1, SeqCst);
        });
    }

    /// Take from `peer` the proposals and votes of `gov` this node lacks.
    pub(crate) async fn gov_sync_from(
        &self,
        gov: &Gov,
        peer: PeerId,
    ) -> std::result::Result<(), String> {
        self.gov_sync_records(gov, peer).await?;
        // Revocations of the group's tokens (checked one by one; the bad ones are dropped).
        if let GovResponse::Revoked { revocations } = self
            .ask_gov(peer, GovRequest::Revoked { group: gov.id })
            .await?
        {
            for r in revocations {
                if let Err(e) = self.take_revocation(gov, &r).await {
                    debug!(group = %gov.id, %peer, "a revocation refused: {e}");
                }
            }
        }
        Ok(())
    }

    async fn gov_sync_records(&self, gov: &Gov, peer: PeerId) -> std::result::Result<(), String> {
        for _ in 0..MAX_PASSES {
            let GovResponse::Summary { proposals } = self
                .ask_gov(peer, GovRequest::Summary { group: gov.id })
                .await?
            else {
                return Err("an odd answer to a summary".into());
            };
            let want: Vec<ContentId> = {
                let b = lock(&gov.book);
                proposals
                    .into_iter()
                    .filter(|(id, n)| b.proposal(id).is_none() || (*n as usize) > b.vote_count(id))
                    .map(|(id, _)| id)
                    .take(MAX_GOV_PROPOSALS)
                    .collect()
            };
            if want.is_empty() {
                return Ok(());
            }
            let GovResponse::Records { proposals, votes } = self
                .ask_gov(
                    peer,
                    GovRequest::Records {
                        group: gov.id,
                        proposals: want,
                    },
                )
                .await?
            else {
                return Err("an odd answer to a records request".into());
            };
            let progress = self.gov_take(gov, proposals, votes).await;
            if !progress {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Check records from a peer into the book (proposals in the order of their bases), and
    /// keep the new ones. Returns whether anything was new.
    async fn gov_take(&self, gov: &Gov, proposals: Vec<ByteBuf>, votes: Vec<ByteBuf>) -> bool {
        let now = crate::node::unix_now();
        let mut ps: Vec<(usize, ByteBuf)> = proposals
            .into_iter()
            .filter_map(|b| {
                let n = Signed::<Proposal>::decode(&b).ok()?.body().basis.len();
                Some((n, b))
            })
            .collect();
        ps.sort_by_key(|(n, _)| *n);
        let mut new_ps = Vec::new();
        let mut new_vs = Vec::new();
        let mut decided = None;
        {
            let mut b = lock(&gov.book);
            // Votes may decide a change a later proposal builds on: a few passes.
            let mut pending = ps;
            let mut vs: Vec<ByteBuf> = votes;
            for _ in 0..MAX_PASSES {
                let mut left = Vec::new();
                for (n, p) in pending {
                    match b.add_proposal(&p, now) {
                        Ok((id, true)) => new_ps.push((id, p.into_vec())),
                        Ok(_) => {}
                        Err(sov_gov::Error::Unknown { .. }) | Err(sov_gov::Error::Proposal(_)) => {
                            left.push((n, p))
                        }
                        Err(e) => debug!(group = %gov.id, "a peer's proposal refused: {e}"),
                    }
                }
                let mut vleft = Vec::new();
                for v in vs {
                    match b.add_vote(&v, now) {
                        Ok(a) if a.new => {
                            decided = decided.or(a.decided);
                            new_vs.push(v.into_vec());
                        }
                        Ok(_) => {}
                        Err(sov_gov::Error::Unknown { .. }) => vleft.push(v),
                        Err(e) => debug!(group = %gov.id, "a peer's vote refused: {e}"),
                    }
                }
                let stuck = left.is_empty() || (new_ps.is_empty() && new_vs.is_empty());
                pending = left;
                vs = vleft;
                if stuck {
                    break;
                }
            }
        }
        let progress = !new_ps.is_empty() || !new_vs.is_empty();
        for (id, p) in new_ps {
            if let Err(e) = self.gov_keep_proposal(gov, id, p).await {
                debug!(group = %gov.id, "could not keep a proposal: {e}");
            }
        }
        let mut it = new_vs.into_iter().peekable();
        while let Some(v) = it.next() {
            let d = if it.peek().is_none() { decided } else { None };
            if let Err(e) = self.gov_keep_vote(gov, v, d).await {
                debug!(group = %gov.id, "could not keep a vote: {e}");
            }
        }
        progress
    }
}
