//! Governance across nodes: groups, proposals and votes made here, carried by gossip, caught
//! up by anti-entropy, and enacted by every member node by itself.
//!
//! ```text
//!   gov_create ─▶ signed genesis (its CID is the group id) ─▶ records gov-groups
//!              ─▶ pushed to every member (GovRequest::Group on /sov/bulk/3) until it answers
//!   gov_propose / gov_vote ─▶ checked into the book ─▶ records gov/<group>
//!              ─▶ published on the group's topic sov/gov/1/<group>
//!   gossip in ─▶ checked into the book (a record that does not check: rejected)
//!   every few seconds, per group: Summary from a member ─▶ Records it has and this node
//!              lacks (a node that was away learns every vote, and checks each itself)
//!   a proposal passes ─▶ enact (enact.rs): promote ─▶ pull the model, verified, and serve it
//!              under the group's name; release ─▶ fetch the artifact and check it
//! ```
//!
//! The decisions are the book's (`sov_gov`): a pure tally of the valid votes, so every node
//! that holds the same votes reaches the same outcome, whatever order they came in.

mod enact;
pub(crate) mod state;
mod sync;

pub use enact::DEFAULT_NAME;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use sov_core::{ContentId, Did, Signed};
use sov_gov::{Book, ClauseTally, Group, Proposal, Status, Tally, Vote};
use sov_net::{PeerId, Verdict};
use tracing::{debug, info, warn};

pub use crate::models::Served;
pub use sov_gov::{Action, Choice, Member, Verified};
pub use state::Enactment;
use state::{Gov, lock};

use crate::{
    Error, Node, Result,
    protocol::{GOV_TOPIC_PREFIX, GovGossip, gov_topic},
};

/// How often groups are looked at (pushing the genesis, catching up, enacting).
const TICK: Duration = Duration::from_secs(1);
/// How often a node catches up with a member.
const SYNC_EVERY: Duration = Duration::from_secs(5);
/// Members told of a group at once, per group.
const MAX_TELLING: usize = 8;
/// Gossiped revocations checked at once, per group.
const MAX_REVOKING: usize = 16;

/// A member as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    /// Its DID.
    pub did: String,
    /// Its role (committee).
    pub role: String,
    /// Its weight.
    pub weight: u32,
}

/// A group as this node knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Its id (the genesis CID).
    pub id: String,
    /// Its name (promoted models are served under it).
    pub name: String,
    /// Who founded it.
    pub creator: String,
    /// When a proposal passes.
    pub rule: String,
    /// How long a proposal stays open by default (seconds).
    pub voting_secs: u64,
    /// The members now (as far as this node knows).
    pub members: Vec<MemberView>,
    /// Proposals known here.
    pub proposals: usize,
    /// The model this node serves under the group's name, if one was promoted.
    pub served: Option<String>,
}

/// A vote as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VoteView {
    /// Who.
    pub voter: String,
    /// yes, no or abstain.
    pub choice: String,
}

/// A proposal as this node knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProposalStatus {
    /// Its id.
    pub id: String,
    /// The group.
    pub group: String,
    /// The group's name.
    pub group_name: String,
    /// Who proposed it.
    pub proposer: String,
    /// promote, admit, remove, policy, release or custom.
    pub kind: String,
    /// What it asks, in words.
    pub action: String,
    /// The action, field by field.
    pub details: ActionSpec,
    /// When it was made (Unix seconds).
    pub created: u64,
    /// Votes cast after this do not count (Unix seconds).
    pub deadline: u64,
    /// open, passed, rejected or expired.
    pub status: String,
    /// The rule's clauses, counted.
    pub clauses: Vec<ClauseTally>,
    /// The votes that count.
    pub votes: Vec<VoteView>,
    /// Members that signed two different choices (none of their votes count).
    pub equivocators: Vec<String>,
    /// This node's vote.
    pub my_vote: Option<String>,
    /// What this node did about it, once passed.
    pub enacted: Option<Enactment>,
}

/// An action as the API and CLI write it: ids and DIDs as strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionSpec {
    /// promote, admit, remove, policy, release, gateway or custom.
    pub kind: String,
    /// promote: the model's manifest id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// admit, remove: the member's DID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// admit: its role (default `member`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// admit: its weight (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// policy: the federation's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<String>,
    /// policy: settings and their new values.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub changes: std::collections::BTreeMap<String, String>,
    /// release: what is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// release: its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// release: the artifact's object id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// custom: the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// gateway: the rules, `WHO=SCOPE,SCOPE` (WHO: a did:key, `role:NAME` or `members`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

impl From<&Action> for ActionSpec {
    fn from(a: &Action) -> Self {
        let mut s = ActionSpec {
            kind: a.kind().into(),
            ..Default::default()
        };
        match a {
            Action::Promote { model } => s.model = Some(model.to_string()),
            Action::Admit {
                member,
                role,
                weight,
            } => {
                s.member = Some(member.to_string());
                s.role = Some(role.clone());
                s.weight = Some(*weight);
            }
            Action::Remove { member } => s.member = Some(member.to_string()),
            Action::Policy {
                federation,
                changes,
            } => {
                s.federation = Some(federation.to_string());
                s.changes = changes.clone();
            }
            Action::Release {
                name,
                version,
                artifact,
            } => {
                s.name = Some(name.clone());
                s.version = Some(version.clone());
                s.artifact = Some(artifact.to_string());
            }
            Action::Gateway { rules } => s.allow = rules.iter().map(ToString::to_string).collect(),
            Action::Custom { text } => s.text = Some(text.clone()),
        }
        s
    }
}

impl ActionSpec {
    /// The action it describes, with the reason when a field is missing or malformed.
    pub fn to_action(&self) -> Result<Action> {
        let need = |v: &Option<String>, what: &str| {
            v.clone()
                .ok_or_else(|| Error::Refused(format!("{}: give {what}", self.kind)))
        };
        let cid = |v: &Option<String>, what: &str| -> Result<ContentId> {
            let s = need(v, what)?;
            s.parse()
                .map_err(|_| Error::Refused(format!("{}: not an id (a CID)", sov_core::quote(&s))))
        };
        let did = |v: &Option<String>| -> Result<Did> {
            let s = need(v, "the member's DID")?;
            s.parse()
                .map_err(|_| Error::Refused(format!("{}: not a did:key", sov_core::quote(&s))))
        };
        let action = match self.kind.as_str() {
            "promote" => Action::Promote {
                model: cid(&self.model, "the model's id")?,
            },
            "admit" => Action::Admit {
                member: did(&self.member)?,
                role: self.role.clone().unwrap_or_else(|| "member".into()),
                weight: self.weight.unwrap_or(1),
            },
            "remove" => Action::Remove {
                member: did(&self.member)?,
            },
            "policy" => Action::Policy {
                federation: cid(&self.federation, "the federation's id")?,
                changes: self.changes.clone(),
            },
            "release" => Action::Release {
                name: need(&self.name, "a name")?,
                version: need(&self.version, "a version")?,
                artifact: cid(&self.artifact, "the artifact's object id")?,
            },
            "custom" => Action::Custom {
                text: need(&self.text, "a text")?,
            },
            "gateway" => {
                let mut rules = Vec::new();
                for r in &self.allow {
                    let rule: sov_gov::GatewayRule = r.parse().map_err(refused)?;
                    let known = crate::auth::parse_scopes(&rule.scopes)?;
                    rules.push(sov_gov::GatewayRule {
                        who: rule.who,
                        scopes: known,
                    });
                }
                Action::Gateway { rules }
            }
            k => {
                return Err(Error::Refused(format!(
                    "{}: a proposal is promote, admit, remove, policy, release, gateway or custom",
                    sov_core::quote(k)
                )));
            }
        };
        action.validate().map_err(refused)?;
        Ok(action)
    }
}

fn sign<T: sov_core::Message + Send + 'static>(
    node: &Node,
    body: T,
) -> impl Future<Output = Result<Vec<u8>>> {
    node.blocking(move |s| {
        Signed::sign(body, s.identity())
            .and_then(|x| x.encode())
            .map_err(|e| sov_store::Error::Invalid(e.to_string()))
    })
}

fn refused(e: sov_gov::Error) -> Error {
    Error::Refused(e.to_string())
}

impl Node {
    fn gov(&self, id: &ContentId) -> Result<Arc<Gov>> {
        self.inner
            .govs
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("this node is not in group {id}")))
    }

    /// The group named `name_or_id` (its id, or its name if one group here has it).
    pub(crate) fn gov_named(&self, name_or_id: &str) -> Result<Arc<Gov>> {
        if let Ok(id) = name_or_id.parse::<ContentId>() {
            return self.gov(&id);
        }
        let mut found = self
            .inner
            .govs
            .all()
            .into_iter()
            .filter(|g| lock(&g.book).group().name == name_or_id);
        match (found.next(), found.next()) {
            (Some(g), None) => Ok(g),
            (Some(_), Some(_)) => Err(Error::Refused(format!(
                "more than one group here is named {}: give its id",
                sov_core::quote(name_or_id)
            ))),
            _ => Err(Error::NotFound(format!(
                "this node is in no group {}",
                sov_core::quote(name_or_id)
            ))),
        }
    }

    fn gov_of(&self, proposal: &ContentId) -> Result<Arc<Gov>> {
        self.inner
            .govs
            .holding(proposal)
            .ok_or_else(|| Error::NotFound(format!("no proposal {proposal} is known here")))
    }

    /// Found a group of `members` (this node is added as a member if it is not named),
    /// deciding by `rule`, with proposals open `voting_secs` by default. Its genesis goes to
    /// every member.
    pub async fn gov_create(
        &self,
        name: &str,
        mut members: Vec<Member>,
        rule: &str,
        voting_secs: u64,
    ) -> Result<GroupStatus> {
        if !members.iter().any(|m| m.did == self.did()) {
            members.insert(
                0,
                Member {
                    did: self.did(),
                    role: members.first().map_or("member".into(), |m| m.role.clone()),
                    weight: 1,
                },
            );
        }
        let group = Group {
            name: name.to_owned(),
            created: crate::node::unix_now(),
            members,
            rule: rule.to_owned(),
            voting_secs,
        };
        group.validate().map_err(refused)?;
        let bytes = sign(self, group).await?;
        let book = Book::new(&bytes).map_err(refused)?;
        let id = *book.id();
        self.gov_enter(book).await?;
        info!(group = %id, "group created");
        self.inner.govs.wake.notify_one();
        self.gov_status(&id).await
    }

    /// Keep a group and take part in it.
    async fn gov_enter(&self, book: Book) -> Result<Arc<Gov>> {
        if let Some(g) = self.inner.govs.get(book.id()) {
            return Ok(g);
        }
        let b2 = book.clone();
        self.blocking(move |s| state::save_group(s, &b2)).await?;
        let gov = Arc::new(Gov::new(book, Default::default()));
        self.inner.govs.insert(gov.clone());
        self.gov_subscribe(&gov.id).await;
        Ok(gov)
    }

    async fn gov_subscribe(&self, id: &ContentId) {
        if let Ok(net) = self.net()
            && let Err(e) = net.subscribe(&gov_topic(id)).await
        {
            warn!(group = %id, "could not subscribe to its topic: {e}");
        }
    }

    /// Take up every group kept here (at start).
    pub async fn gov_resume(&self) {
        match self.blocking(state::load_all).await {
            Ok(all) => {
                for (book, enacted) in all {
                    let id = *book.id();
                    self.inner.govs.insert(Arc::new(Gov::new(book, enacted)));
                    self.gov_subscribe(&id).await;
                }
            }
            Err(e) => warn!("could not read this node's groups: {e}"),
        }
    }

    /// Propose `action` to group `group`, open for `voting_secs` (the group's default if
    /// `None`). A promotion of a model this node signed grants it to every member first.
    pub async fn gov_propose(
        &self,
        group: &ContentId,
        action: Action,
        voting_secs: Option<u64>,
    ) -> Result<ProposalStatus> {
        let gov = self.gov(group)?;
        action.validate().map_err(refused)?;
        if let Action::Promote { model } = &action {
            let entry = self
                .model(&model.to_string())
                .await
                .map_err(|e| Error::Refused(format!("promote: {e} (pull or import it first)")))?;
            if entry.signer == self.did() {
                self.gov_share(&gov, &entry.id.to_string()).await?;
            }
        }
        if let Action::Release { artifact, .. } = &action {
            self.gov_grant_artifact(&gov, *artifact).await?;
        }
        if let Action::Policy {
            federation,
            changes,
        } = &action
            && let Some(fed) = self.inner.feds.get(federation)
        {
            let l = crate::fl::state::lock(&fed.ledger);
            if l.genesis().governance != Some(*group) {
                return Err(Error::Refused(format!(
                    "federation {federation} is not governed by this group"
                )));
            }
            l.genesis()
                .with_changes(changes)
                .map_err(|e| Error::Refused(format!("policy: {e}")))?;
        }
        let (basis, default_secs) = {
            let b = lock(&gov.book);
            if !b.membership().contains(&self.did()) {
                return Err(Error::Refused(
                    "this node is not a member of the group".into(),
                ));
            }
            (b.current_basis(), b.group().voting_secs)
        };
        let created = crate::node::unix_now();
        let secs = voting_secs.unwrap_or(default_secs);
        let proposal = Proposal {
            group: *group,
            action,
            created,
            deadline: created.saturating_add(secs),
            basis,
        };
        let bytes = sign(self, proposal).await?;
        let id = lock(&gov.book)
            .add_proposal(&bytes, crate::node::unix_now())
            .map_err(refused)?
            .0;
        self.gov_keep_proposal(&gov, id, bytes.clone()).await?;
        self.gov_publish(&gov.id, GovGossip::Proposal(bytes.into()))
            .await;
        info!(group = %group, proposal = %id, "proposed");
        self.gov_show(&id).await
    }

    /// Vote `choice` on `proposal`. A vote is final: a second one is refused.
    pub async fn gov_vote(&self, proposal: &ContentId, choice: Choice) -> Result<ProposalStatus> {
        let gov = self.gov_of(proposal)?;
        let now = crate::node::unix_now();
        {
            let b = lock(&gov.book);
            if let Some(c) = b.has_voted(proposal, &self.did()) {
                return Err(Error::Refused(format!(
                    "this node voted {c} already, and a vote is final (make a new proposal to change course)"
                )));
            }
            let (p, _, _) = b.proposal(proposal).expect("the group holds it");
            if now > p.deadline {
                return Err(Error::Refused(format!(
                    "voting closed at {} (Unix time)",
                    p.deadline
                )));
            }
            // A proposal made without a removal this node knows of would let the removed
            // member vote: an honest member does not take part.
            let eligible = b.membership_at(&p.basis).map_err(refused)?;
            let now_members = b.membership();
            if let Some((d, _)) = eligible.members().find(|(d, _)| now_members.was_removed(d)) {
                return Err(Error::Refused(format!(
                    "the proposal was made without the removal of {d}: propose it again"
                )));
            }
            if !eligible.contains(&self.did()) {
                return Err(Error::Refused(
                    "this node was not a member when the proposal was made".into(),
                ));
            }
        }
        let bytes = sign(
            self,
            Vote {
                proposal: *proposal,
                choice,
                cast: now,
            },
        )
        .await?;
        let added = lock(&gov.book).add_vote(&bytes, now).map_err(refused)?;
        self.gov_keep_vote(&gov, bytes.clone(), added.decided)
            .await?;
        self.gov_publish(&gov.id, GovGossip::Vote(bytes.into()))
            .await;
        info!(proposal = %proposal, %choice, "voted");
        self.gov_show(proposal).await
    }

    /// Keep a new proposal in the store.
    async fn gov_keep_proposal(&self, gov: &Gov, id: ContentId, bytes: Vec<u8>) -> Result<()> {
        let group = gov.id;
        self.blocking(move |s| state::save_proposal(s, &group, &id, &bytes))
            .await
    }

    /// Keep a new vote in the store; act on the decision it made, if any.
    async fn gov_keep_vote(
        &self,
        gov: &Gov,
        bytes: Vec<u8>,
        decided: Option<Status>,
    ) -> Result<()> {
        let group = gov.id;
        self.blocking(move |s| state::save_vote(s, &group, &bytes))
            .await?;
        if let Some(status) = decided {
            info!(group = %group, status = status.as_str(), "a proposal was decided");
            self.inner.govs.wake.notify_one();
        }
        Ok(())
    }

    async fn gov_publish(&self, group: &ContentId, msg: GovGossip) {
        if let Ok(net) = self.net()
            && let Err(e) = net.publish(&gov_topic(group), msg.encode()).await
        {
            // No peer on the topic yet: the catch-up carries it.
            debug!(group = %group, "not published: {e}");
        }
    }

    /// A proposal or vote on a group's topic: checked into the book.
    pub(crate) fn on_gov_gossip(
        &self,
        topic: &str,
        source: Option<PeerId>,
        data: &[u8],
    ) -> Verdict {
        let Some(id) = topic
            .strip_prefix(GOV_TOPIC_PREFIX)
            .and_then(|s| s.parse::<ContentId>().ok())
        else {
            return Verdict::Malformed;
        };
        let Some(gov) = self.inner.govs.get(&id) else {
            return Verdict::Ignore;
        };
        let Ok(msg) = GovGossip::decode(data) else {
            return Verdict::Malformed;
        };
        let now = crate::node::unix_now();
        let outcome = match &msg {
            GovGossip::Proposal(b) => lock(&gov.book)
                .add_proposal(b, now)
                .map(|(_, new)| (new, None)),
            GovGossip::Vote(b) => lock(&gov.book).add_vote(b, now).map(|a| (a.new, a.decided)),
            GovGossip::Revoke(b) => {
                // Checked and kept off the gossip thread; a bad one costs its sender.
                if let Err(e) = Signed::<crate::auth::Revocation>::decode(b) {
                    debug!(group = %id, ?source, "revocation refused: {e}");
                    return Verdict::Malformed;
                }
                use std::sync::atomic::Ordering::SeqCst;
                if gov.revoking.fetch_add(1, SeqCst) >= MAX_REVOKING {
                    gov.revoking.fetch_sub(1, SeqCst);
                    return Verdict::Ignore;
                }
                let node = self.clone();
                let gov = gov.clone();
                let b = b.clone();
                self.spawn(async move {
                    if let Err(e) = node.take_revocation(&gov, &b).await {
                        debug!(group = %gov.id, "revocation refused: {e}");
                    }
                    gov.revoking.fetch_sub(1, SeqCst);
                });
                return Verdict::Accept;
            }
        };
        match outcome {
            Ok((false, _)) => Verdict::Ignore,
            Ok((true, decided)) => {
                let node = self.clone();
                let gov = gov.clone();
                self.spawn(async move {
                    let kept = match msg {
                        GovGossip::Proposal(b) => {
                            let pid = sov_gov::record_id(&b);
                            node.gov_keep_proposal(&gov, pid, b.into_vec()).await
                        }
                        GovGossip::Vote(b) => node.gov_keep_vote(&gov, b.into_vec(), decided).await,
                        GovGossip::Revoke(_) => Ok(()),
                    };
                    if let Err(e) = kept {
                        warn!(group = %gov.id, "could not keep a governance record: {e}");
                    }
                });
                Verdict::Accept
            }
            Err(sov_gov::Error::Unknown { .. }) => {
                // Something it builds on has not reached this node: the catch-up brings both.
                if let Some(peer) = source {
                    self.gov_sync_soon(&gov, peer);
                }
                Verdict::Ignore
            }
            Err(e) => {
                debug!(group = %id, ?source, "governance record refused: {e}");
                Verdict::Reject
            }
        }
    }

    /// The groups this node is in.
    pub async fn gov_groups(&self) -> Result<Vec<GroupStatus>> {
        let mut out = Vec::new();
        for g in self.inner.govs.all() {
            out.push(self.gov_status(&g.id).await?);
        }
        Ok(out)
    }

    /// Group `id` as this node knows it.
    pub async fn gov_status(&self, id: &ContentId) -> Result<GroupStatus> {
        let gov = self.gov(id)?;
        let (name, status) = {
            let b = lock(&gov.book);
            let g = b.group();
            let status = GroupStatus {
                id: id.to_string(),
                name: g.name.clone(),
                creator: b.creator().to_string(),
                rule: b.rule().to_string(),
                voting_secs: g.voting_secs,
                members: b
                    .membership()
                    .members()
                    .map(|(d, s)| MemberView {
                        did: d.to_string(),
                        role: s.role.clone(),
                        weight: s.weight,
                    })
                    .collect(),
                proposals: b.proposals().count(),
                served: None,
            };
            (g.name.clone(), status)
        };
        let served = self.gov_served(&name).await?;
        Ok(GroupStatus {
            served: served
                .filter(|s| s.group == *id)
                .map(|s| s.model.to_string()),
            ..status
        })
    }

    /// The proposals of group `group` (every group's if `None`), newest first.
    pub async fn gov_proposals(&self, group: Option<&ContentId>) -> Result<Vec<ProposalStatus>> {
        let govs = match group {
            Some(g) => vec![self.gov(g)?],
            None => self.inner.govs.all(),
        };
        let mut out = Vec::new();
        for g in govs {
            let ids: Vec<ContentId> = lock(&g.book).proposals().map(|(id, _, _)| *id).collect();
            for id in ids {
                out.push(self.gov_show(&id).await?);
            }
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Proposal `id` as this node knows it: its count, its votes, what was enacted.
    pub async fn gov_show(&self, id: &ContentId) -> Result<ProposalStatus> {
        let gov = self.gov_of(id)?;
        let b = lock(&gov.book);
        let (p, proposer, _) = b.proposal(id).expect("the group holds it");
        let t: Tally = b.tally(id, crate::node::unix_now()).map_err(refused)?;
        Ok(ProposalStatus {
            id: id.to_string(),
            group: gov.id.to_string(),
            group_name: b.group().name.clone(),
            proposer: proposer.to_string(),
            kind: p.action.kind().into(),
            action: p.action.to_string(),
            details: ActionSpec::from(&p.action),
            created: p.created,
            deadline: p.deadline,
            status: t.status.as_str().into(),
            clauses: t.clauses,
            votes: t
                .counted
                .iter()
                .map(|(d, c)| VoteView {
                    voter: d.to_string(),
                    choice: c.to_string(),
                })
                .collect(),
            equivocators: t.equivocators.iter().map(ToString::to_string).collect(),
            my_vote: b.has_voted(id, &self.did()).map(|c| c.to_string()),
            enacted: lock(&gov.enacted).get(id).cloned(),
        })
    }

    /// The certificate of decided proposal `id` (DAG-CBOR): `sov gov verify` checks it with
    /// nothing else.
    pub async fn gov_certificate(&self, id: &ContentId) -> Result<Vec<u8>> {
        let gov = self.gov_of(id)?;
        let b = lock(&gov.book);
        b.certificate(id).and_then(|c| c.encode()).map_err(refused)
    }

    /// The groups' clock: genesis pushed to members, catch-ups, enactment.
    pub(crate) async fn gov_loop(self) {
        let mut stopped = self.stopped();
        let mut tick = tokio::time::interval(TICK);
        let mut last_sync = Instant::now() - SYNC_EVERY;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.inner.govs.wake.notified() => {}
                _ = stopped.changed() => return,
            }
            let sync = last_sync.elapsed() >= SYNC_EVERY;
            if sync {
                last_sync = Instant::now();
            }
            for gov in self.inner.govs.all() {
                if sync {
                    self.gov_reach(&gov).await;
                }
                self.gov_enact_due(&gov);
            }
        }
    }

    /// Members this node has not told of the group get its genesis; one connected member
    /// is asked what this node missed.
    async fn gov_reach(&self, gov: &Arc<Gov>) {
        let me = self.did();
        let (members, genesis): (Vec<Did>, Vec<u8>) = {
            let b = lock(&gov.book);
            (
                b.membership().members().map(|(d, _)| *d).collect(),
                b.genesis_bytes().to_vec(),
            )
        };
        let connected: Vec<Did> = match self.net() {
            Ok(net) => net
                .peers()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| p.did)
                .filter(|d| *d != me && members.contains(d))
                .collect(),
            Err(_) => return,
        };
        let untold: Vec<Did> = {
            let told = lock(&gov.told);
            members
                .iter()
                .copied()
                .filter(|d| *d != me && !told.contains(d))
                .take(8)
                .collect()
        };
        use std::sync::atomic::Ordering::SeqCst;
        for d in untold {
            if gov.telling.fetch_add(1, SeqCst) >= MAX_TELLING {
                gov.telling.fetch_sub(1, SeqCst);
                break;
            }
            let node = self.clone();
            let gov = gov.clone();
            let genesis = genesis.clone();
            self.spawn(async move {
                if node.gov_tell(&gov, d, genesis).await.is_ok() {
                    lock(&gov.told).insert(d);
                }
                gov.telling.fetch_sub(1, SeqCst);
            });
        }
        if let Some(d) = connected.get(rand::random_range(0..connected.len().max(1))) {
            self.gov_sync_soon(gov, sov_net::peer_id_of(d));
        }
    }
}

/// `Member` from the CLI's pieces.
pub fn member(did: Did, role: Option<&str>, weight: Option<u32>) -> Member {
    Member {
        did,
        role: role.unwrap_or("member").to_owned(),
        weight: weight.unwrap_or(1),
    }
}

/// Check a certificate offline (no node needed).
pub fn verify_certificate(bytes: &[u8]) -> std::result::Result<sov_gov::Verified, sov_gov::Error> {
    sov_gov::verify(bytes)
}
