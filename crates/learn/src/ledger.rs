//! A federation's ledger: the signed records that follow its genesis, and what a member
//! concludes from them. Pure data and checks; the node keeps the records, sends them and
//! syncs them.
//!
//! | record | tag | signed by | says |
//! |---|---|---|---|
//! | [`JoinRequest`] | `sov/fl-join/1` | the joiner | "admit me to this federation" |
//! | [`Admission`] | `sov/fl-admission/1` | the creator | "this DID is a member" |
//! | [`RoundRecord`] | `sov/fl-round/1` | the round's aggregator | the round's result and provenance |
//!
//! A round record is accepted only if its signer is the first of
//! [`crate::federation::aggregators`] among the live members the record names (so an
//! aggregator that takes over from one that failed leaves it out of `live`), every name in
//! it is a member, it starts from the model the ledger holds (its `parent`), enough members
//! contributed, and the privacy it reports is what replaying the noise multipliers of every
//! round gives. Each contributor finds the digest of the message it sent in the transcript,
//! so it can check that what was summed is what it sent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sov_core::{Codec, ContentId, Did, Message, Signed};

use crate::{
    Error, Result,
    dp::Accountant,
    federation::{Genesis, Role, aggregators, open_genesis},
};

/// A member's request to join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The federation.
    pub federation: ContentId,
    /// When it was asked (Unix seconds).
    pub created: u64,
}

impl Message for JoinRequest {
    const TAG: &'static str = "sov/fl-join/1";
}

/// The creator's word that `member` belongs to the federation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The federation.
    pub federation: ContentId,
    /// The new member.
    pub member: Did,
    /// Its role (never creator).
    pub role: Role,
    /// When (Unix seconds).
    pub admitted: u64,
}

impl Message for Admission {
    const TAG: &'static str = "sov/fl-admission/1";
}

/// One contributor's entry in a round's transcript: the digest of the message it sent (its
/// update in the clear, or its masked input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    /// The member.
    pub member: Did,
    /// BLAKE3 of the message as it arrived.
    pub digest: ByteBuf,
}

/// The result of one round, signed by its aggregator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// The federation.
    pub federation: ContentId,
    /// The round (1 for the first).
    pub round: u32,
    /// The members the aggregator counted live (its place is first among them).
    pub live: Vec<Did>,
    /// BLAKE3 of the parameters the round started from.
    pub parent: ByteBuf,
    /// BLAKE3 of the new parameters (f32, little-endian).
    pub model: ByteBuf,
    /// Whose updates are in the result, with the digest of what each sent.
    pub transcript: Vec<Contribution>,
    /// Examples the result was trained on (the sum of the weights; `None` when the
    /// encoding hides it).
    pub examples: Option<u64>,
    /// The contributors' validation accuracy, weighted by their validation rows
    /// (a decimal), with the rows counted.
    pub validation: Option<(String, u64)>,
    /// Whether the updates were summed under secure aggregation.
    pub secure: bool,
    /// The noise multiplier the published result carries (a decimal; `None` without DP).
    pub multiplier: Option<String>,
    /// ε spent so far (δ is the federation's), after this round.
    pub epsilon: Option<String>,
    /// The model's signed manifest (a `sov/model/1` object the members pull), if the
    /// aggregator published one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ContentId>,
    /// The governing group's passed policy proposals in force from the next round on
    /// (every one the previous record named, and any newly passed), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<ContentId>,
    /// The policy settings those proposals change, merged (later proposals win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub changes: BTreeMap<String, String>,
}

impl Message for RoundRecord {
    const TAG: &'static str = "sov/fl-round/1";
}

/// BLAKE3 of parameters as they travel (f32 little-endian bytes).
pub fn params_digest(params_bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(params_bytes).as_bytes()
}

/// The parameters every member starts from: the model's initialisation seeded by the
/// federation id, so every member computes the same.
pub fn initial_params(id: &ContentId, genesis: &Genesis) -> Result<Vec<f32>> {
    let seed = u64::from_le_bytes(
        blake3::derive_key("sov 2026-12 federation initial model", &id.to_bytes())[..8]
            .try_into()
            .map_err(|_| Error::Spec("digest".into()))?,
    );
    Ok(genesis.model_spec()?.init(seed))
}

/// A checked join request: who asks.
pub fn open_join(bytes: &[u8], federation: &ContentId) -> Result<(Did, JoinRequest)> {
    let signed = Signed::<JoinRequest>::decode(bytes)
        .map_err(|e| Error::Spec(format!("not a join request: {e}")))?;
    if signed.body().federation != *federation {
        return Err(Error::Spec("a join request for another federation".into()));
    }
    Ok((signed.signer(), signed.into_body()))
}

/// A real number from a record.
fn decimal(what: &str, s: &str) -> Result<f64> {
    if s.len() > 40 {
        return Err(Error::Spec(format!("{what}: too long a number")));
    }
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() || *v == f64::INFINITY)
        .ok_or_else(|| Error::Spec(format!("{what} {s:?} is not a number")))
}

/// A number as a record writes it (shortest exact decimal).
pub fn write_decimal(x: f64) -> String {
    format!("{x}")
}

/// What a member knows of a federation: its genesis, members, and the rounds accepted.
#[derive(Debug, Clone)]
pub struct Ledger {
    id: ContentId,
    /// The genesis as signed.
    original: Genesis,
    /// The genesis with the policy changes the last round record names (what holds for
    /// the next round).
    genesis: Genesis,
    genesis_bytes: Vec<u8>,
    members: BTreeMap<Did, Role>,
    /// Members the governing group removed: no longer asked, answered or admitted. They
    /// stay in `members`, so the records of rounds they took part in still check.
    removed: std::collections::BTreeSet<Did>,
    admissions: BTreeMap<Did, Vec<u8>>,
    rounds: Vec<(RoundRecord, Did, Vec<u8>)>,
    accountant: Accountant,
    /// The digest of the current model.
    head: [u8; 32],
}

impl Ledger {
    /// A ledger from a signed genesis block.
    pub fn new(genesis_bytes: &[u8]) -> Result<Self> {
        let (id, genesis) = open_genesis(genesis_bytes)?;
        let members = genesis.members.iter().map(|m| (m.did, m.role)).collect();
        let init = initial_params(&id, &genesis)?;
        let head = params_digest(&crate::wire::f32s_to_bytes(&init));
        Ok(Ledger {
            id,
            original: genesis.clone(),
            genesis,
            genesis_bytes: genesis_bytes.to_vec(),
            members,
            removed: Default::default(),
            admissions: BTreeMap::new(),
            rounds: Vec::new(),
            accountant: Accountant::default(),
            head,
        })
    }

    /// The federation id.
    pub fn id(&self) -> &ContentId {
        &self.id
    }

    /// The genesis record, with the policy in force for the next round (the signed genesis'
    /// policy, changed by the proposals the last round record names).
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The signed genesis block.
    pub fn genesis_bytes(&self) -> &[u8] {
        &self.genesis_bytes
    }

    /// The policy proposals the last round put in force, and the settings they change.
    pub fn policy_in_force(&self) -> (Vec<ContentId>, BTreeMap<String, String>) {
        self.rounds
            .last()
            .map(|(r, _, _)| (r.policy.clone(), r.changes.clone()))
            .unwrap_or_default()
    }

    /// The members, by DID (ascending).
    pub fn members(&self) -> Vec<Did> {
        self.members.keys().copied().collect()
    }

    /// Whether `did` is a member.
    pub fn is_member(&self, did: &Did) -> bool {
        self.members.contains_key(did)
    }

    /// Whether `did` is a member that was not removed: one that is asked to train, answered
    /// and may aggregate.
    pub fn is_active(&self, did: &Did) -> bool {
        self.members.contains_key(did) && !self.removed.contains(did)
    }

    /// Remove `did` (the governing group voted so): from now on it is not asked, answered
    /// or admitted again. Returns whether it was an active member.
    pub fn remove(&mut self, did: &Did) -> bool {
        self.members.contains_key(did) && self.removed.insert(*did)
    }

    /// The members removed by the governing group.
    pub fn removed(&self) -> Vec<Did> {
        self.removed.iter().copied().collect()
    }

    /// A member's place among the members (its id in secure aggregation).
    pub fn index_of(&self, did: &Did) -> Option<u32> {
        self.members
            .keys()
            .position(|d| d == did)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// The signed admissions, by member.
    pub fn admissions(&self) -> impl Iterator<Item = &[u8]> {
        self.admissions.values().map(Vec::as_slice)
    }

    /// The rounds accepted, in order, with their signers.
    pub fn rounds(&self) -> impl Iterator<Item = (&RoundRecord, &Did)> {
        self.rounds.iter().map(|(r, d, _)| (r, d))
    }

    /// The manifest of the last round's model, if its aggregator published one.
    pub fn manifest(&self) -> Option<ContentId> {
        self.rounds.last().and_then(|(r, _, _)| r.manifest)
    }

    /// The signed block of round `round`.
    pub fn round_bytes(&self, round: u32) -> Option<&[u8]> {
        let i = usize::try_from(round).ok()?.checked_sub(1)?;
        self.rounds.get(i).map(|(_, _, b)| b.as_slice())
    }

    /// The last round accepted (0 before the first).
    pub fn round(&self) -> u32 {
        self.rounds.len() as u32
    }

    /// The digest of the current model.
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    /// ε spent so far (`None` without DP).
    pub fn epsilon(&self) -> Result<Option<f64>> {
        Ok(self
            .genesis
            .dp()?
            .map(|dp| self.accountant.epsilon(dp.delta).0))
    }

    /// Whether training is over: every round run, or the ε budget would not hold one more
    /// round at the policy's noise.
    pub fn finished(&self) -> Result<bool> {
        if self.round() >= self.genesis.policy.rounds {
            return Ok(true);
        }
        Ok(match (self.genesis.epsilon_budget()?, self.genesis.dp()?) {
            (Some(budget), Some(dp)) => self.epsilon_after(dp.noise)?.is_some_and(|e| e > budget),
            _ => false,
        })
    }

    /// Take a signed admission; returns the new member, or `None` if it was one already.
    pub fn admit(&mut self, bytes: &[u8]) -> Result<Option<Did>> {
        let signed = Signed::<Admission>::decode(bytes)
            .map_err(|e| Error::Spec(format!("not an admission: {e}")))?;
        let a = signed.body();
        if a.federation != self.id {
            return Err(Error::Spec("an admission to another federation".into()));
        }
        if Some(signed.signer()) != self.genesis.creator() {
            return Err(Error::Spec(format!(
                "an admission signed by {}, who is not the creator",
                signed.signer()
            )));
        }
        if a.role == Role::Creator {
            return Err(Error::Spec("an admission may not make a creator".into()));
        }
        if self.removed.contains(&a.member) {
            return Err(Error::Spec(format!(
                "{} was removed from the federation by its group",
                a.member
            )));
        }
        if self.members.contains_key(&a.member) {
            return Ok(None);
        }
        if self.members.len() >= crate::federation::MAX_MEMBERS {
            return Err(Error::Spec("the federation is full".into()));
        }
        self.members.insert(a.member, a.role);
        self.admissions.insert(a.member, bytes.to_vec());
        Ok(Some(a.member))
    }

    /// Check a signed round record against the ledger without taking it: the signer, the
    /// round number, the parent model, the members it names, and the privacy it claims.
    pub fn check_round(&self, bytes: &[u8]) -> Result<(Did, RoundRecord)> {
        let signed = Signed::<RoundRecord>::decode(bytes)
            .map_err(|e| Error::Spec(format!("not a round record: {e}")))?;
        let signer = signed.signer();
        let r = signed.into_body();
        if r.federation != self.id {
            return Err(Error::Spec("a round of another federation".into()));
        }
        if r.round != self.round() + 1 {
            return Err(Error::Spec(format!(
                "round {} comes after round {}, which is not the last here ({})",
                r.round,
                r.round.saturating_sub(1),
                self.round()
            )));
        }
        if self.finished()? {
            return Err(Error::Spec("the federation has finished training".into()));
        }
        if r.parent.as_slice() != self.head {
            return Err(Error::Spec(format!(
                "round {} did not start from the model of round {}",
                r.round,
                self.round()
            )));
        }
        if r.model.len() != 32 {
            return Err(Error::Spec("a model digest is 32 bytes".into()));
        }
        if let Some(d) = r.live.iter().find(|d| !self.is_member(d)) {
            return Err(Error::Spec(format!("{d} is named live but is no member")));
        }
        if aggregators(&self.id, r.round, &r.live).first() != Some(&signer) {
            return Err(Error::Spec(format!(
                "{signer} is not the aggregator of round {} among the live members it names",
                r.round
            )));
        }
        let min = self.genesis.policy.min_clients as usize;
        if r.transcript.len() < min {
            return Err(Error::Spec(format!(
                "{} contributors; the federation needs {min}",
                r.transcript.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &r.transcript {
            if !r.live.contains(&c.member) || !seen.insert(c.member) || c.digest.len() != 32 {
                return Err(Error::Spec(format!(
                    "{} is in the transcript twice, not live, or with a bad digest",
                    c.member
                )));
            }
        }
        let before = self
            .rounds
            .last()
            .map_or(&[][..], |(p, _, _)| p.policy.as_slice());
        if !r.policy.windows(2).all(|w| w[0] < w[1])
            || before.iter().any(|b| r.policy.binary_search(b).is_err())
        {
            return Err(Error::Spec(
                "the round's policy proposals are unsorted or drop one in force".into(),
            ));
        }
        if !r.changes.is_empty() && r.policy.is_empty() {
            return Err(Error::Spec(
                "policy changes without the proposals that made them".into(),
            ));
        }
        self.original.with_changes(&r.changes)?;
        if r.secure != self.genesis.policy.secagg.is_some() {
            return Err(Error::Spec(
                "the round's secure aggregation is not the policy's".into(),
            ));
        }
        let dp = self.genesis.dp()?;
        match (dp, &r.multiplier, &r.epsilon) {
            (None, None, None) => {}
            (Some(dp), Some(z), Some(e)) => {
                let z = decimal("noise multiplier", z)?;
                if z < dp.noise * (1.0 - 1e-9) {
                    return Err(Error::Spec(format!(
                        "a noise multiplier of {z} is below the policy's {}",
                        dp.noise
                    )));
                }
                let mut acc = self.accountant.clone();
                acc.step(1.0, z, 1)?;
                let want = acc.epsilon(dp.delta).0;
                let got = decimal("ε", e)?;
                if (got - want).abs() > 1e-6 * want.abs().max(1.0) {
                    return Err(Error::Spec(format!(
                        "the record claims ε = {got}; its noise gives {want}"
                    )));
                }
                if let Some(budget) = self.genesis.epsilon_budget()?
                    && want > budget
                {
                    return Err(Error::Spec(format!(
                        "the round spends ε to {want}, past the budget of {budget}"
                    )));
                }
            }
            _ => {
                return Err(Error::Spec(
                    "the round's privacy fields do not match the policy".into(),
                ));
            }
        }
        Ok((signer, r))
    }

    /// Check and take a round record; returns it.
    pub fn accept_round(&mut self, bytes: &[u8]) -> Result<RoundRecord> {
        let (signer, r) = self.check_round(bytes)?;
        if let Some(z) = &r.multiplier {
            self.accountant
                .step(1.0, decimal("noise multiplier", z)?, 1)?;
        }
        self.head.copy_from_slice(&r.model[..]);
        self.genesis = self.original.with_changes(&r.changes)?;
        self.rounds.push((r.clone(), signer, bytes.to_vec()));
        Ok(r)
    }

    /// ε after one more round releasing multiplier `z` (what an aggregator writes).
    pub fn epsilon_after(&self, z: f64) -> Result<Option<f64>> {
        let Some(dp) = self.genesis.dp()? else {
            return Ok(None);
        };
        let mut acc = self.accountant.clone();
        acc.step(1.0, z, 1)?;
        Ok(Some(acc.epsilon(dp.delta).0))
    }
}

/// The federation id of a signed genesis block.
pub fn federation_id(genesis_bytes: &[u8]) -> ContentId {
    ContentId::of(Codec::DagCbor, genesis_bytes)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::federation::{DpPolicy, Member, Policy, SecAggPolicy, Task};

    struct Key(SigningKey);

    impl sov_core::Signer for Key {
        fn did(&self) -> Did {
            Did::from_public_key(&self.0.verifying_key()).unwrap()
        }
        fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
            ed25519_dalek::Signer::sign(&self.0, message)
        }
    }

    fn key(i: u8) -> Key {
        Key(SigningKey::from_bytes(&[i; 32]))
    }

    fn did(i: u8) -> Did {
        sov_core::Signer::did(&key(i))
    }

    fn genesis_bytes(dp: bool) -> Vec<u8> {
        let g = Genesis {
            name: "t".into(),
            created: 1,
            task: Task {
                data: "digits".into(),
                input: [1, 8, 8],
                classes: 10,
                model: "logreg".into(),
            },
            policy: Policy {
                rounds: if dp { 3 } else { 2 },
                strategy: "fedavg".into(),
                min_clients: 2,
                secagg: Some(SecAggPolicy {
                    neighbours: None,
                    threshold: None,
                }),
                dp: dp.then(|| DpPolicy {
                    noise: "1.0".into(),
                    clip: "0.5".into(),
                    delta: "1e-5".into(),
                }),
                epsilon_budget: None,
                local_epochs: 1,
                learning_rate: "0.1".into(),
                batch: 32,
                round_timeout_ms: 30_000,
            },
            members: vec![Member {
                did: did(1),
                role: Role::Creator,
            }],
            governance: None,
        };
        Signed::sign(g, &key(1)).unwrap().encode().unwrap()
    }

    fn admission(l: &Ledger, by: u8, member: u8) -> Vec<u8> {
        let a = Admission {
            federation: *l.id(),
            member: did(member),
            role: Role::Member,
            admitted: 2,
        };
        Signed::sign(a, &key(by)).unwrap().encode().unwrap()
    }

    fn round(l: &Ledger, signer: u8, live: &[u8], z: Option<f64>) -> Vec<u8> {
        let live: Vec<Did> = live.iter().map(|&i| did(i)).collect();
        let r = RoundRecord {
            federation: *l.id(),
            round: l.round() + 1,
            transcript: live
                .iter()
                .map(|d| Contribution {
                    member: *d,
                    digest: ByteBuf::from(vec![7; 32]),
                })
                .collect(),
            live,
            parent: ByteBuf::from(l.head().to_vec()),
            model: ByteBuf::from(vec![l.round() as u8 + 1; 32]),
            examples: None,
            validation: None,
            secure: true,
            multiplier: z.map(write_decimal),
            epsilon: z.map(|z| write_decimal(l.epsilon_after(z).unwrap().unwrap_or(1.0))),
            manifest: None,
            policy: vec![],
            changes: BTreeMap::new(),
        };
        Signed::sign(r, &key(signer)).unwrap().encode().unwrap()
    }

    /// Of `live`, the one who aggregates the next round.
    fn first(l: &Ledger, live: &[u8]) -> u8 {
        let dids: Vec<Did> = live.iter().map(|&i| did(i)).collect();
        let a = aggregators(l.id(), l.round() + 1, &dids)[0];
        *live.iter().find(|&&i| did(i) == a).unwrap()
    }

    #[test]
    fn only_the_creator_admits_and_only_the_rounds_aggregator_records() {
        let mut l = Ledger::new(&genesis_bytes(false)).unwrap();
        assert_eq!(l.members(), vec![did(1)]);
        // A member may not admit; the creator may, once.
        assert!(l.admit(&admission(&l, 2, 3)).is_err());
        assert_eq!(l.admit(&admission(&l, 1, 2)).unwrap(), Some(did(2)));
        assert_eq!(l.admit(&admission(&l, 1, 2)).unwrap(), None);
        l.admit(&admission(&l, 1, 3)).unwrap();
        let live = [1, 2, 3];
        let agg = first(&l, &live);
        let other = live.iter().copied().find(|&i| i != agg).unwrap();
        // Signed by another member than the round's aggregator: refused.
        let e = l.check_round(&round(&l, other, &live, None)).unwrap_err();
        assert!(e.to_string().contains("not the aggregator"), "{e}");
        // A stranger named live: refused.
        let e = l.check_round(&round(&l, 9, &[1, 2, 9], None)).unwrap_err();
        assert!(e.to_string().contains("no member"), "{e}");
        // Privacy claimed in a federation without DP: refused.
        assert!(l.check_round(&round(&l, agg, &live, Some(1.0))).is_err());
        let r = l.accept_round(&round(&l, agg, &live, None)).unwrap();
        assert_eq!(l.round(), 1);
        assert_eq!(l.head().to_vec(), r.model.to_vec());
        // The same record again: not the next round.
        let stale = l.round_bytes(1).unwrap().to_vec();
        assert!(l.check_round(&stale).is_err());
        // An aggregator that failed is left out of live by the one that takes over.
        let agg3 = first(&l, &live);
        let rest: Vec<u8> = live.iter().copied().filter(|&i| i != agg3).collect();
        let next = first(&l, &rest);
        assert!(l.check_round(&round(&l, next, &live, None)).is_err());
        l.accept_round(&round(&l, next, &rest, None)).unwrap();
        assert!(l.finished().unwrap());
        assert!(
            l.check_round(&round(&l, first(&l, &live), &live, None))
                .is_err()
        );
    }

    #[test]
    fn a_round_must_report_the_privacy_its_noise_gives() {
        let mut l = Ledger::new(&genesis_bytes(true)).unwrap();
        l.admit(&admission(&l, 1, 2)).unwrap();
        let live = [1, 2];
        let agg = first(&l, &live);
        // Less noise than the policy's, or no privacy at all: refused.
        assert!(l.check_round(&round(&l, agg, &live, Some(0.5))).is_err());
        assert!(l.check_round(&round(&l, agg, &live, None)).is_err());
        // A lie about ε: refused.
        let mut lie = Signed::<RoundRecord>::decode(&round(&l, agg, &live, Some(1.2)))
            .unwrap()
            .into_body();
        lie.epsilon = Some("0.01".into());
        let lie = Signed::sign(lie, &key(agg)).unwrap().encode().unwrap();
        assert!(
            l.check_round(&lie)
                .unwrap_err()
                .to_string()
                .contains("claims")
        );
        l.accept_round(&round(&l, agg, &live, Some(1.2))).unwrap();
        let e1 = l.epsilon().unwrap().unwrap();
        let agg = first(&l, &live);
        l.accept_round(&round(&l, agg, &live, Some(1.2))).unwrap();
        assert!(l.epsilon().unwrap().unwrap() > e1);
        // A round that does not start from the ledger's model: refused.
        let mut r = Signed::<RoundRecord>::decode(&round(&l, first(&l, &live), &live, Some(1.2)))
            .unwrap()
            .into_body();
        r.parent = ByteBuf::from(vec![0; 32]);
        let r = Signed::sign(r, &key(first(&l, &live)))
            .unwrap()
            .encode()
            .unwrap();
        assert!(
            l.check_round(&r)
                .unwrap_err()
                .to_string()
                .contains("start from")
        );
    }
}
