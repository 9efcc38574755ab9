//! A group's book: its genesis, the proposals and votes a node knows, and what it decided.
//! Records are added one by one, in any order the network delivers them (a proposal after
//! the membership changes it builds on); each is checked whole before it is kept.
//!
//! **Eligibility** is membership as of a proposal's creation, made explicit: a proposal
//! names its *basis*, the passed membership changes its proposer knew. Members are the
//! founders, plus every member a basis admission admits, minus every member a basis removal
//! removes. A removal is for good (the same DID cannot be admitted again), so the result does
//! not depend on the order of the changes and two nodes that know the same changes agree on
//! who the members are. The basis must be closed (it holds the basis of each change in it),
//! so membership is computed without recursion.

use std::collections::{BTreeMap, BTreeSet};

use sov_core::{ContentId, Did, Signed};

use crate::{
    Action, Choice, Error, GatewayRule, Group, MAX_BASIS, MAX_MEMBERS, Proposal, Result, Rule,
    Status, Tally, Vote, group::open_group, record_id, tally::tally,
};

/// How far in the future a record's time may be (seconds): clocks differ.
pub const MAX_SKEW: u64 = 300;
/// Most proposals one group keeps.
pub const MAX_PROPOSALS: usize = 65_536;
/// Most proposals one member may make.
pub const MAX_PROPOSALS_PER_MEMBER: usize = 1024;

/// A member's seat: its role and weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    /// Its role (committee).
    pub role: String,
    /// Its weight.
    pub weight: u32,
}

/// Who the members are at some basis, with their seats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    seats: BTreeMap<Did, Seat>,
    removed: BTreeSet<Did>,
}

impl Membership {
    /// Whether `did` is a member.
    pub fn contains(&self, did: &Did) -> bool {
        self.seats.contains_key(did)
    }

    /// `did`'s seat.
    pub fn seat(&self, did: &Did) -> Option<&Seat> {
        self.seats.get(did)
    }

    /// Every member, by DID.
    pub fn members(&self) -> impl Iterator<Item = (&Did, &Seat)> {
        self.seats.iter()
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.seats.len()
    }

    /// No member at all.
    pub fn is_empty(&self) -> bool {
        self.seats.is_empty()
    }

    /// Whether `did` was removed (it cannot come back).
    pub fn was_removed(&self, did: &Did) -> bool {
        self.removed.contains(did)
    }
}

/// Votes by (voter, choice), each verified and as signed.
type Votes = BTreeMap<(Did, Choice), (Signed<Vote>, Vec<u8>)>;

#[derive(Debug, Clone)]
struct Entry {
    bytes: Vec<u8>,
    proposer: Did,
    proposal: Proposal,
    /// Votes by (voter, choice): an equivocator's two choices are both kept, as evidence.
    votes: Votes,
    /// The first final outcome this book reached, with the votes that decided it.
    decided: Option<(Status, Vec<(Did, Choice)>)>,
}

/// A group and what is known of its proposals.
#[derive(Debug, Clone)]
pub struct Book {
    id: ContentId,
    genesis: Group,
    genesis_bytes: Vec<u8>,
    creator: Did,
    rule: Rule,
    proposals: BTreeMap<ContentId, Entry>,
}

/// What adding a vote did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteAdded {
    /// The proposal voted on.
    pub proposal: ContentId,
    /// It was not known before.
    pub new: bool,
    /// It decided the proposal (the first final outcome).
    pub decided: Option<Status>,
}

fn malformed(what: &'static str, e: impl ToString) -> Error {
    Error::Malformed {
        what,
        detail: e.to_string(),
    }
}

impl Book {
    /// A book for the group founded by `genesis` (signed bytes), checked whole.
    pub fn new(genesis: &[u8]) -> Result<Self> {
        if genesis.len() > sov_core::MAX_BLOCK {
            return Err(malformed("group", "too large"));
        }
        let (id, creator, group) = open_group(genesis)?;
        let rule = group.rule()?;
        Ok(Self {
            id,
            genesis: group,
            genesis_bytes: genesis.to_vec(),
            creator,
            rule,
            proposals: BTreeMap::new(),
        })
    }

    /// The group id.
    pub fn id(&self) -> &ContentId {
        &self.id
    }

    /// The genesis.
    pub fn group(&self) -> &Group {
        &self.genesis
    }

    /// The genesis as signed.
    pub fn genesis_bytes(&self) -> &[u8] {
        &self.genesis_bytes
    }

    /// Who founded it.
    pub fn creator(&self) -> Did {
        self.creator
    }

    /// Its rule.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// Members at `basis` (passed membership changes, closed).
    pub fn membership_at(&self, basis: &[ContentId]) -> Result<Membership> {
        let mut m = Membership::default();
        for f in &self.genesis.members {
            m.seats.insert(
                f.did,
                Seat {
                    role: f.role.clone(),
                    weight: f.weight,
                },
            );
        }
        let mut admits = Vec::new();
        for id in basis {
            let e = self.proposals.get(id).ok_or_else(|| Error::Unknown {
                what: "membership change",
                id: id.to_string(),
            })?;
            if !matches!(e.decided, Some((Status::Passed, _)))
                || !e.proposal.action.changes_membership()
            {
                return Err(Error::Proposal(format!(
                    "{id} in the basis is not a passed membership change"
                )));
            }
            match &e.proposal.action {
                Action::Remove { member } => {
                    m.removed.insert(*member);
                }
                Action::Admit {
                    member,
                    role,
                    weight,
                } => admits.push((*id, *member, role.clone(), *weight)),
                _ => {}
            }
        }
        // Basis ids are sorted: of two admissions of one DID, the smaller id gives the seat.
        for (_, member, role, weight) in admits {
            m.seats.entry(member).or_insert(Seat { role, weight });
        }
        for d in &m.removed {
            m.seats.remove(d);
        }
        Ok(m)
    }

    /// Every passed membership change known here, sorted: the basis of a new proposal.
    pub fn current_basis(&self) -> Vec<ContentId> {
        self.proposals
            .iter()
            .filter(|(_, e)| {
                e.proposal.action.changes_membership()
                    && matches!(e.decided, Some((Status::Passed, _)))
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Members now, as far as this book knows.
    pub fn membership(&self) -> Membership {
        self.membership_at(&self.current_basis())
            .expect("the current basis holds passed changes known here, and is closed")
    }

    /// Check and keep a signed proposal. `now` bounds how far in the future it may be made.
    /// Returns its id and whether it was new.
    pub fn add_proposal(&mut self, bytes: &[u8], now: u64) -> Result<(ContentId, bool)> {
        if bytes.len() > sov_core::MAX_BLOCK {
            return Err(malformed("proposal", "too large"));
        }
        let id = record_id(bytes);
        if self.proposals.contains_key(&id) {
            return Ok((id, false));
        }
        let signed = Signed::<Proposal>::decode(bytes).map_err(|e| malformed("proposal", e))?;
        let proposer = signed.signer();
        let p = signed.into_body();
        if p.group != self.id {
            return Err(Error::Proposal(format!("it is for group {}", p.group)));
        }
        p.action.validate()?;
        if p.created > now.saturating_add(MAX_SKEW) {
            return Err(Error::Proposal("it was made in the future".into()));
        }
        let open = p.deadline.saturating_sub(p.created);
        if !crate::DEADLINE_SECS.contains(&open) {
            return Err(Error::Proposal(format!(
                "it stays open {open} s: a proposal stays open 1 s to a year"
            )));
        }
        if p.basis.len() > MAX_BASIS || !p.basis.windows(2).all(|w| w[0] < w[1]) {
            return Err(Error::Proposal(format!(
                "its basis must be sorted, without repeats, at most {MAX_BASIS}"
            )));
        }
        for b in &p.basis {
            let e = self.proposals.get(b).ok_or_else(|| Error::Unknown {
                what: "membership change",
                id: b.to_string(),
            })?;
            if !e
                .proposal
                .basis
                .iter()
                .all(|x| p.basis.binary_search(x).is_ok())
            {
                return Err(Error::Proposal(format!(
                    "its basis holds {b} but not that change's own basis"
                )));
            }
        }
        let members = self.membership_at(&p.basis)?;
        if !members.contains(&proposer) {
            return Err(Error::Proposal(format!(
                "{proposer} is not a member at the proposal's basis"
            )));
        }
        match &p.action {
            Action::Admit { member, .. } if members.contains(member) => {
                return Err(Error::Proposal(format!("{member} is a member already")));
            }
            Action::Admit { member, .. } if members.was_removed(member) => {
                return Err(Error::Proposal(format!(
                    "{member} was removed, and a removal is for good"
                )));
            }
            Action::Admit { .. } if members.len() >= MAX_MEMBERS => {
                return Err(Error::Proposal(format!(
                    "a group has at most {MAX_MEMBERS} members"
                )));
            }
            Action::Remove { member } if !members.contains(member) => {
                return Err(Error::Proposal(format!("{member} is not a member")));
            }
            _ => {}
        }
        if self.proposals.len() >= MAX_PROPOSALS {
            return Err(Error::Proposal(format!(
                "the group holds {MAX_PROPOSALS} proposals already"
            )));
        }
        if self
            .proposals
            .values()
            .filter(|e| e.proposer == proposer)
            .count()
            >= MAX_PROPOSALS_PER_MEMBER
        {
            return Err(Error::Proposal(format!(
                "{proposer} made {MAX_PROPOSALS_PER_MEMBER} proposals already"
            )));
        }
        self.proposals.insert(
            id,
            Entry {
                bytes: bytes.to_vec(),
                proposer,
                proposal: p,
                votes: BTreeMap::new(),
                decided: None,
            },
        );
        Ok((id, true))
    }

    /// Check and keep a signed vote; the proposal must be known. Returns what it did.
    pub fn add_vote(&mut self, bytes: &[u8], now: u64) -> Result<VoteAdded> {
        if bytes.len() > 4096 {
            return Err(malformed("vote", "too large"));
        }
        let signed = Signed::<Vote>::decode(bytes).map_err(|e| malformed("vote", e))?;
        let (voter, v) = (signed.signer(), signed.body().clone());
        let members = {
            let e = self
                .proposals
                .get(&v.proposal)
                .ok_or_else(|| Error::Unknown {
                    what: "proposal",
                    id: v.proposal.to_string(),
                })?;
            if v.cast > e.proposal.deadline {
                return Err(Error::Vote(format!(
                    "cast at {}, after the deadline {}",
                    v.cast, e.proposal.deadline
                )));
            }
            if v.cast > now.saturating_add(MAX_SKEW) {
                return Err(Error::Vote("cast in the future".into()));
            }
            self.membership_at(&e.proposal.basis)?
        };
        if !members.contains(&voter) {
            return Err(Error::Vote(format!(
                "{voter} was not a member when the proposal was made"
            )));
        }
        let id = v.proposal;
        let rule = self.rule.clone();
        let e = self
            .proposals
            .get_mut(&id)
            .expect("looked up above, and nothing removes proposals");
        if e.votes.contains_key(&(voter, v.choice)) {
            return Ok(VoteAdded {
                proposal: id,
                new: false,
                decided: None,
            });
        }
        e.votes.insert((voter, v.choice), (signed, bytes.to_vec()));
        let mut decided = None;
        if e.decided.is_none() {
            let t = tally(
                &members,
                &rule,
                &id,
                &e.proposal,
                e.votes.values().map(|(s, _)| s),
                0,
            );
            if t.status.is_final() {
                let deciding = minimal(&members, &rule, &id, &e.proposal, &e.votes, t.status);
                e.decided = Some((t.status, deciding));
                decided = Some(t.status);
            }
        }
        Ok(VoteAdded {
            proposal: id,
            new: true,
            decided,
        })
    }

    /// The proposal `id`, its proposer and its signed bytes.
    pub fn proposal(&self, id: &ContentId) -> Option<(&Proposal, Did, &[u8])> {
        self.proposals
            .get(id)
            .map(|e| (&e.proposal, e.proposer, e.bytes.as_slice()))
    }

    /// Every proposal: id, proposal, proposer, by id.
    pub fn proposals(&self) -> impl Iterator<Item = (&ContentId, &Proposal, Did)> {
        self.proposals
            .iter()
            .map(|(id, e)| (id, &e.proposal, e.proposer))
    }

    /// The signed votes on `id` known here.
    pub fn votes(&self, id: &ContentId) -> Vec<&[u8]> {
        self.proposals
            .get(id)
            .map(|e| e.votes.values().map(|(_, b)| b.as_slice()).collect())
            .unwrap_or_default()
    }

    /// How many votes on `id` are known here (for comparing with a peer).
    pub fn vote_count(&self, id: &ContentId) -> usize {
        self.proposals.get(id).map_or(0, |e| e.votes.len())
    }

    /// Whether `voter` voted on `id` (any choice).
    pub fn has_voted(&self, id: &ContentId, voter: &Did) -> Option<Choice> {
        self.proposals
            .get(id)
            .and_then(|e| e.votes.keys().find(|(d, _)| d == voter).map(|(_, c)| *c))
    }

    /// The count of proposal `id` at time `now`; a decision this book reached stays (see the
    /// crate doc on equivocation).
    pub fn tally(&self, id: &ContentId, now: u64) -> Result<Tally> {
        let e = self.proposals.get(id).ok_or_else(|| Error::Unknown {
            what: "proposal",
            id: id.to_string(),
        })?;
        let members = self.membership_at(&e.proposal.basis)?;
        let mut t = tally(
            &members,
            &self.rule,
            id,
            &e.proposal,
            e.votes.values().map(|(s, _)| s),
            now,
        );
        if let Some((status, _)) = &e.decided {
            t.status = *status;
        }
        Ok(t)
    }

    /// The group's gateway policy: the rules of the passed gateway proposal made last (by
    /// creation time, then id, so every node that holds the same decisions agrees), with
    /// that proposal's id.
    pub fn gateway_policy(&self) -> Option<(ContentId, &[GatewayRule])> {
        self.proposals
            .iter()
            .filter(|(id, _)| self.decision(id) == Some(Status::Passed))
            .filter_map(|(id, e)| match &e.proposal.action {
                Action::Gateway { rules } => Some((e.proposal.created, *id, rules.as_slice())),
                _ => None,
            })
            .max_by_key(|(created, id, _)| (*created, *id))
            .map(|(_, id, rules)| (id, rules))
    }

    /// The decision this book reached on `id`, if any.
    pub fn decision(&self, id: &ContentId) -> Option<Status> {
        self.proposals
            .get(id)
            .and_then(|e| e.decided.as_ref().map(|(s, _)| *s))
    }

    /// The signed votes that decided `id` (a minimal set: without any one of them, it would
    /// not be decided).
    pub fn deciding_votes(&self, id: &ContentId) -> Option<Vec<&[u8]>> {
        let e = self.proposals.get(id)?;
        let (_, who) = e.decided.as_ref()?;
        Some(
            who.iter()
                .filter_map(|k| e.votes.get(k).map(|(_, b)| b.as_slice()))
                .collect(),
        )
    }
}

/// Of the counted votes, a set that still reaches `status` while leaving out any one of its
/// votes would not: the votes a certificate carries.
fn minimal(
    members: &crate::Membership,
    rule: &Rule,
    id: &ContentId,
    proposal: &Proposal,
    votes: &Votes,
    status: Status,
) -> Vec<(Did, Choice)> {
    let all = tally(
        members,
        rule,
        id,
        proposal,
        votes.values().map(|(s, _)| s),
        0,
    );
    let mut keep: Vec<(Did, Choice)> = all.counted.clone();
    // Try to leave out the lightest votes first, so heavy ones carry the certificate.
    let weight = |d: &Did| members.seat(d).map_or(0, |s| s.weight);
    let mut order = keep.clone();
    order.sort_by_key(|(d, _)| (weight(d), *d));
    for k in order {
        let without: Vec<&Signed<Vote>> = keep
            .iter()
            .filter(|x| **x != k)
            .filter_map(|x| votes.get(x).map(|(s, _)| s))
            .collect();
        if tally(members, rule, id, proposal, without, 0).status == status {
            keep.retain(|x| *x != k);
        }
    }
    keep
}
