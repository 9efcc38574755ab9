//! The aggregator's side of a round.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use vsss_rs::Gf256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::{
    crypto::{
        Directory, SEALED_PLAIN_LEN, SHARE_LEN, add_prg, advert_transcript, agree, err, key32,
        pair_seed, self_seed_commitment, survivors_transcript,
    },
    messages::{
        EncryptedShares, KeyAdvert, KeyBook, MaskedInput, SealedShare, ShareDelivery, SurvivorList,
        SurvivorSignature, UnmaskRequest, UnmaskResponse,
    },
    params::{Graph, RoundParams},
};
use crate::Result;

/// Where the aggregator is in the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AggStage {
    Adverts,
    Shares,
    Masked,
    Confirming,
    Unmasking,
}

/// What a finished round yields.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `Σ x_u mod 2^32` over the survivors.
    pub sum: Vec<u32>,
    /// The clients whose inputs are in the sum.
    pub survivors: Vec<u32>,
}

/// The aggregator's side of a round.
#[derive(Debug)]
pub struct Aggregator {
    params: RoundParams,
    graph: Graph,
    directory: Arc<Directory>,
    digest: [u8; 32],
    stage: AggStage,
    adverts: BTreeMap<u32, KeyAdvert>,
    /// U1: advertised and alive when the key books went out.
    u1: BTreeSet<u32>,
    /// Sealed shares by recipient.
    mailbox: BTreeMap<u32, Vec<SealedShare>>,
    /// U2: shares arrived.
    u2: BTreeSet<u32>,
    /// U3: masked input arrived.
    u3: BTreeSet<u32>,
    /// Survivors' signatures on U3.
    signatures: BTreeMap<u32, SurvivorSignature>,
    sum: Vec<u32>,
    /// Revealed shares: owner → (holder → share).
    seed_shares: BTreeMap<u32, BTreeMap<u32, Vec<u8>>>,
    key_shares: BTreeMap<u32, BTreeMap<u32, Vec<u8>>>,
    responded: BTreeSet<u32>,
}

impl Aggregator {
    /// Open a round among members whose keys `directory` holds.
    pub fn new(params: RoundParams, directory: Arc<Directory>) -> Result<Self> {
        params.validate()?;
        Ok(Aggregator {
            graph: params.graph(),
            digest: params.digest(),
            directory,
            signatures: BTreeMap::new(),
            sum: vec![0; params.dim as usize],
            params,
            stage: AggStage::Adverts,
            adverts: BTreeMap::new(),
            u1: BTreeSet::new(),
            mailbox: BTreeMap::new(),
            u2: BTreeSet::new(),
            u3: BTreeSet::new(),
            seed_shares: BTreeMap::new(),
            key_shares: BTreeMap::new(),
            responded: BTreeSet::new(),
        })
    }

    /// The round's parameters.
    pub fn params(&self) -> &RoundParams {
        &self.params
    }

    fn expect(&self, stage: AggStage, what: &str, from: u32) -> Result<()> {
        if self.stage != stage {
            return Err(err(format!(
                "{what} from client {from} arrived at stage {:?}: refused",
                self.stage
            )));
        }
        Ok(())
    }

    fn need(&self, alive: &BTreeSet<u32>, stage: &str) -> Result<()> {
        let t = self.params.threshold as usize;
        if alive.len() < t {
            return Err(err(format!(
                "round aborted at {stage}: {} clients left, {t} needed",
                alive.len()
            )));
        }
        Ok(())
    }

    /// Stage 1: take a client's advert.
    pub fn receive_advert(&mut self, a: KeyAdvert) -> Result<()> {
        self.expect(AggStage::Adverts, "a key advert", a.client)?;
        if !self.graph.contains(a.client) {
            return Err(err(format!("client {} is not in this round", a.client)));
        }
        key32(&a.cipher_pk, "a cipher key")?;
        key32(&a.mask_pk, "a mask key")?;
        key32(&a.seed_commitment, "a seed commitment")?;
        self.directory.verify(
            a.client,
            &advert_transcript(&self.digest, &a),
            &a.signature,
            "the key advert",
        )?;
        if self.adverts.contains_key(&a.client) {
            return Err(err(format!("client {} advertised twice", a.client)));
        }
        self.adverts.insert(a.client, a);
        Ok(())
    }

    /// Close stage 1: the key book for each client that advertised (its neighbours'
    /// adverts). Clients with too few advertising holders are left out.
    pub fn key_books(&mut self) -> Result<Vec<(u32, KeyBook)>> {
        self.expect(AggStage::Adverts, "closing the adverts", 0)?;
        let alive: BTreeSet<u32> = self.adverts.keys().copied().collect();
        let alive = self.viable(alive);
        self.need(&alive, "key advertisement")?;
        self.u1 = alive;
        self.stage = AggStage::Shares;
        Ok(self
            .u1
            .iter()
            .map(|&c| {
                let adverts = self
                    .graph
                    .neighbours(c)
                    .into_iter()
                    .filter(|v| self.u1.contains(v))
                    .map(|v| self.adverts[&v].clone())
                    .collect();
                (
                    c,
                    KeyBook {
                        round: self.params.round,
                        adverts,
                    },
                )
            })
            .collect())
    }

    /// Drop, until none is left, every client with fewer than `t` live holders: its
    /// secrets could not be rebuilt.
    fn viable(&self, mut alive: BTreeSet<u32>) -> BTreeSet<u32> {
        let t = self.params.threshold as usize;
        loop {
            let weak: Vec<u32> = alive
                .iter()
                .copied()
                .filter(|&c| {
                    self.graph
                        .holders(c)
                        .iter()
                        .filter(|h| alive.contains(h))
                        .count()
                        < t
                })
                .collect();
            if weak.is_empty() {
                return alive;
            }
            for c in weak {
                alive.remove(&c);
            }
        }
    }

    /// Stage 2: take a client's sealed shares.
    pub fn receive_shares(&mut self, s: EncryptedShares) -> Result<()> {
        self.expect(AggStage::Shares, "shares", s.client)?;
        if !self.u1.contains(&s.client) {
            return Err(err(format!(
                "client {} sent shares without a key book",
                s.client
            )));
        }
        if self.u2.contains(&s.client) {
            return Err(err(format!("client {} sent its shares twice", s.client)));
        }
        let expected: BTreeSet<u32> = self
            .graph
            .neighbours(s.client)
            .into_iter()
            .filter(|v| self.u1.contains(v))
            .collect();
        let got: BTreeSet<u32> = s.shares.iter().map(|x| x.to).collect();
        if got != expected
            || got.len() != s.shares.len()
            || s.shares
                .iter()
                .any(|x| x.from != s.client || x.ciphertext.len() != SEALED_PLAIN_LEN + 16)
        {
            return Err(err(format!(
                "client {} sent shares that are not one sealed share per neighbour",
                s.client
            )));
        }
        for x in s.shares {
            self.mailbox.entry(x.to).or_default().push(x);
        }
        self.u2.insert(s.client);
        Ok(())
    }

    /// Close stage 2: each client whose shares arrived gets the shares addressed to it from
    /// the others whose shares arrived.
    pub fn deliveries(&mut self) -> Result<Vec<(u32, ShareDelivery)>> {
        self.expect(AggStage::Shares, "closing the shares", 0)?;
        let alive = self.viable(self.u2.clone());
        self.need(&alive, "key sharing")?;
        // Clients left out as not viable still count in U2 for the others: their shares
        // went out and their pair masks are in the others' inputs.
        let mut mailbox = std::mem::take(&mut self.mailbox);
        self.stage = AggStage::Masked;
        Ok(alive
            .iter()
            .map(|&c| {
                let shares = mailbox
                    .remove(&c)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|x| self.u2.contains(&x.from))
                    .collect();
                (
                    c,
                    ShareDelivery {
                        round: self.params.round,
                        shares,
                    },
                )
            })
            .collect())
    }

    /// Stage 3: take a client's masked input.
    pub fn receive_masked(&mut self, m: MaskedInput) -> Result<()> {
        self.expect(AggStage::Masked, "a masked input", m.client)?;
        if !self.u2.contains(&m.client) {
            return Err(err(format!(
                "client {} sent a masked input without sharing its keys",
                m.client
            )));
        }
        if self.u3.contains(&m.client) {
            return Err(err(format!("client {} sent two masked inputs", m.client)));
        }
        if m.masked.len() != 4 * self.params.dim as usize {
            return Err(err(format!(
                "client {} sent {} bytes of masked input; {} expected",
                m.client,
                m.masked.len(),
                4 * self.params.dim
            )));
        }
        for (a, w) in self.sum.iter_mut().zip(m.masked.chunks_exact(4)) {
            *a = a.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        }
        self.u3.insert(m.client);
        Ok(())
    }

    /// Close stage 3: the survivor list U3, for each survivor to confirm by signing. From
    /// here on a late masked input is refused: its sender counts as dropped.
    pub fn survivor_lists(&mut self) -> Result<Vec<(u32, SurvivorList)>> {
        self.expect(AggStage::Masked, "closing the masked inputs", 0)?;
        self.need(&self.u3, "masked input")?;
        // Every client in U2 must be rebuildable from the survivors: its self-mask if it
        // survived, its key if it dropped.
        self.rebuildable(&self.u3, "masked input")?;
        self.stage = AggStage::Confirming;
        let list = SurvivorList {
            round: self.params.round,
            survivors: self.u3.iter().copied().collect(),
        };
        Ok(self.u3.iter().map(|&c| (c, list.clone())).collect())
    }

    /// Abort unless every client in U2 has `t` holders in `live`.
    fn rebuildable(&self, live: &BTreeSet<u32>, stage: &str) -> Result<()> {
        for &v in &self.u2 {
            let n = self
                .graph
                .holders(v)
                .iter()
                .filter(|h| live.contains(h))
                .count();
            if n < self.params.threshold as usize {
                return Err(err(format!(
                    "round aborted at {stage}: only {n} of client {v}'s holders are left, {} \
                     needed",
                    self.params.threshold
                )));
            }
        }
        Ok(())
    }

    /// Consistency check: take a survivor's signature on U3.
    pub fn receive_signature(&mut self, s: SurvivorSignature) -> Result<()> {
        self.expect(AggStage::Confirming, "a survivor signature", s.client)?;
        if !self.u3.contains(&s.client) {
            return Err(err(format!(
                "client {} is not a survivor; its signature is not wanted",
                s.client
            )));
        }
        if self.signatures.contains_key(&s.client) {
            return Err(err(format!("client {} signed twice", s.client)));
        }
        let list: Vec<u32> = self.u3.iter().copied().collect();
        self.directory.verify(
            s.client,
            &survivors_transcript(&self.digest, &list),
            &s.signature,
            "the survivor list",
        )?;
        self.signatures.insert(s.client, s);
        Ok(())
    }

    /// Close the consistency check: the unmasking request for each survivor that signed,
    /// with, for every client whose shares it holds, the signatures of `t` of that client's
    /// signing holders (what it needs to see before revealing them).
    pub fn unmask_requests(&mut self) -> Result<Vec<(u32, UnmaskRequest)>> {
        self.expect(AggStage::Confirming, "closing the consistency check", 0)?;
        let signers: BTreeSet<u32> = self.signatures.keys().copied().collect();
        self.need(&signers, "the consistency check")?;
        self.rebuildable(&signers, "the consistency check")?;
        self.stage = AggStage::Unmasking;
        let survivors: Vec<u32> = self.u3.iter().copied().collect();
        Ok(signers
            .iter()
            .map(|&c| {
                // For each owner, its first t signing holders are enough; holders come in
                // ascending order, so owners that share holders share these (in the complete
                // graph every client gets the same t signatures, not all n).
                let t = self.params.threshold as usize;
                let wanted: BTreeSet<u32> = self
                    .graph
                    .holders(c)
                    .into_iter()
                    .filter(|v| self.u2.contains(v))
                    .flat_map(|v| {
                        self.graph
                            .holders(v)
                            .into_iter()
                            .filter(|h| signers.contains(h))
                            .take(t)
                    })
                    .collect();
                (
                    c,
                    UnmaskRequest {
                        round: self.params.round,
                        survivors: survivors.clone(),
                        signatures: wanted.iter().map(|h| self.signatures[h].clone()).collect(),
                    },
                )
            })
            .collect())
    }

    /// Stage 4: take a survivor's revealed shares. A response that reveals a share of the
    /// wrong kind for a client, or a share it cannot hold, is refused whole.
    pub fn receive_unmask(&mut self, r: UnmaskResponse) -> Result<()> {
        self.expect(AggStage::Unmasking, "an unmasking response", r.client)?;
        if !self.signatures.contains_key(&r.client) {
            return Err(err(format!(
                "client {} did not confirm the survivors; its shares are not wanted",
                r.client
            )));
        }
        if !self.responded.insert(r.client) {
            return Err(err(format!("client {} answered twice", r.client)));
        }
        let mut staged = Vec::new();
        for (survived, list) in [(true, &r.seed_shares), (false, &r.key_shares)] {
            for s in list {
                let ok = self.u2.contains(&s.owner)
                    && self.u3.contains(&s.owner) == survived
                    && s.share.len() == SHARE_LEN
                    && self
                        .graph
                        .holders(s.owner)
                        .iter()
                        .position(|&h| h == r.client)
                        .is_some_and(|i| s.share[0] as usize == i + 1);
                if !ok {
                    self.responded.remove(&r.client);
                    return Err(err(format!(
                        "client {} revealed a share for client {} that it cannot hold or \
                         that is of the wrong kind",
                        r.client, s.owner
                    )));
                }
                staged.push((survived, s.owner, s.share.to_vec()));
            }
        }
        for (survived, owner, share) in staged {
            let map = if survived {
                &mut self.seed_shares
            } else {
                &mut self.key_shares
            };
            map.entry(owner).or_default().insert(r.client, share);
        }
        Ok(())
    }

    /// Does the aggregator hold a share of `owner`'s self-mask seed? Of its mask key?
    pub fn holds_shares_of(&self, owner: u32) -> (bool, bool) {
        (
            self.seed_shares.get(&owner).is_some_and(|m| !m.is_empty()),
            self.key_shares.get(&owner).is_some_and(|m| !m.is_empty()),
        )
    }

    /// Close stage 4: rebuild the secrets and remove every mask. Aborts, revealing nothing,
    /// if some secret has fewer than `t` shares.
    pub fn finish(self) -> Result<Outcome> {
        if self.stage != AggStage::Unmasking {
            return Err(err(format!(
                "the round cannot finish at stage {:?}",
                self.stage
            )));
        }
        let t = self.params.threshold as usize;
        let combine = |shares: Option<&BTreeMap<u32, Vec<u8>>>, owner: u32, what: &str| {
            let shares: Vec<Vec<u8>> = shares
                .map(|m| m.values().take(t).cloned().collect())
                .unwrap_or_default();
            if shares.len() < t {
                return Err(err(format!(
                    "round aborted at unmasking: {} of the {t} shares of client {owner}'s {what} \
                     arrived",
                    shares.len()
                )));
            }
            let secret = Gf256::combine_bytes(&shares)
                .map_err(|e| err(format!("rebuilding client {owner}'s {what}: {e:?}")))?;
            Ok(Zeroizing::new(key32(&secret, what)?))
        };
        let mut sum = self.sum.clone();
        for &v in &self.u3 {
            let seed = combine(self.seed_shares.get(&v), v, "self-mask seed")?;
            let commitment = self_seed_commitment(&seed, self.params.round, v);
            if commitment[..] != self.adverts[&v].seed_commitment[..] {
                return Err(err(format!(
                    "client {v}'s self-mask seed does not match its commitment: a holder \
                     revealed a bad share"
                )));
            }
            add_prg(&mut sum, &seed, true);
        }
        for &v in self.u2.difference(&self.u3) {
            let partners: Vec<u32> = self
                .graph
                .neighbours(v)
                .into_iter()
                .filter(|w| self.u3.contains(w))
                .collect();
            if partners.is_empty() {
                continue;
            }
            let sk = StaticSecret::from(*combine(self.key_shares.get(&v), v, "mask key")?);
            if PublicKey::from(&sk).as_bytes()[..] != self.adverts[&v].mask_pk[..] {
                return Err(err(format!(
                    "client {v}'s rebuilt mask key does not match its advert: a holder \
                     revealed a bad share"
                )));
            }
            for w in partners {
                let wpk = key32(&self.adverts[&w].mask_pk, "a mask key")?;
                let seed = pair_seed(&*agree(&sk, &wpk, w)?, self.params.round);
                // w added +PRG if w < v, −PRG if w > v: undo it.
                add_prg(&mut sum, &seed, w < v);
            }
        }
        Ok(Outcome {
            sum,
            survivors: self.u3.into_iter().collect(),
        })
    }
}
