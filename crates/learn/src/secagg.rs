//! Secure aggregation: the aggregator learns the sum of the clients' inputs and nothing
//! else, and the round survives clients dropping out at any stage down to a threshold.
//!
//! This is the protocol of Bonawitz et al. 2017 ("Practical Secure Aggregation for
//! Privacy-Preserving Machine Learning") with the neighbour graph of SecAgg+ (Bell et al.
//! 2020): each client masks with, and shares its secrets among, `K` neighbours on a ring
//! laid over a seeded random order of the participants (a Harary graph), so the cost per
//! client grows with `K`, not with the number of clients. `K ≥ n − 1` is the complete graph
//! of the original protocol.
//!
//! A round, as seen by client `u` with neighbours `N(u)` and holders `H(u) = N(u) ∪ {u}`:
//!
//! 1. **Advertise keys**: two fresh X25519 key pairs, one to encrypt shares (`c`) and one
//!    to agree mask seeds (`s`), and a commitment to a fresh self-mask seed `b_u`.
//! 2. **Share keys**: `b_u` and the mask secret key `s_u` are each split `t`-of-`|H(u)|`
//!    (Shamir over GF(256)); each neighbour's two shares are sealed for it
//!    (ChaCha20-Poly1305 under a key derived from X25519 of the `c` keys) and sent through
//!    the aggregator, which cannot read them.
//! 3. **Masked input**: `y_u = x_u + PRG(b_u) + Σ_{v∈U2∩N(u), u<v} PRG(s_uv)
//!    − Σ_{v∈U2∩N(u), v<u} PRG(s_uv)` in `Z_2^32`, where `U2` are the clients whose shares
//!    arrived and `s_uv` is derived from X25519 of the `s` keys. `PRG` is the ChaCha20
//!    keystream.
//! 4. **Unmasking**: given the survivors `U3` (clients whose masked input arrived), each
//!    survivor reveals, for every client whose shares it holds, the share of `b` if that
//!    client survived and the share of `s` if it dropped, never both, and answers once. The
//!    aggregator rebuilds the self-masks of the survivors and the pair masks between the
//!    dropped and the survivors, and removes them: what is left is `Σ_{u∈U3} x_u`.
//!
//! With `t > |H|/2`, no client's two secrets can both be rebuilt: that would need `t`
//! holders revealing one kind and `t` others revealing the other kind. A client declared
//! dropped whose masked input arrives late is therefore never unmasked.
//!
//! The inputs are vectors in `Z_2^32`; [`Quantizer`] maps floats to them and back. Messages
//! are plain data (serde); the transport must authenticate who sent each one (the
//! federation signs them), since the pure protocol here cannot tell a forged key
//! advertisement from a real one. What this protects against, and what it does not, is in
//! `docs/SECURITY.md`.

use std::collections::{BTreeMap, BTreeSet};

use chacha20::{
    ChaCha20,
    cipher::{KeyIvInit, StreamCipher},
};
use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit,
    aead::{Aead, Payload},
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use vsss_rs::Gf256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Most holders a client's secrets can be shared among (Shamir over GF(256) numbers the
/// shares 1..=255).
pub const MAX_HOLDERS: usize = 255;

/// Bytes of one Shamir share of a 32-byte secret: its number, then 32 bytes.
const SHARE_LEN: usize = 33;

/// Bytes of a sealed share's plaintext: from, to, round, self-mask share, key share.
const SEALED_PLAIN_LEN: usize = 4 + 4 + 8 + 2 * SHARE_LEN;

fn err(msg: impl Into<String>) -> Error {
    Error::SecAgg(msg.into())
}

/// Settings every participant of a round agrees on (the aggregator announces them with the
/// round; clients check them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundParams {
    /// A number that never repeats for this federation: it separates the keys of rounds.
    pub round: u64,
    /// The selected clients, ascending.
    pub participants: Vec<u32>,
    /// Neighbours per client (even; `≥ n − 1` means every other client).
    pub neighbours: u32,
    /// Shares needed to rebuild a secret; more than half of a client's holders.
    pub threshold: u32,
    /// Length of the input vectors.
    pub dim: u32,
    /// Seed of the order the neighbour ring is laid over.
    #[serde(with = "serde_bytes")]
    pub graph_seed: [u8; 32],
}

impl RoundParams {
    /// Parameters for `participants` (any order), with `neighbours` per client (`None`: the
    /// complete graph) and threshold `threshold` (`None`: the default, two thirds of the
    /// holders rounded up, as Bonawitz et al. advise against an active aggregator).
    pub fn new(
        round: u64,
        participants: &[u32],
        neighbours: Option<u32>,
        threshold: Option<u32>,
        dim: u32,
        graph_seed: [u8; 32],
    ) -> Result<Self> {
        let mut p = participants.to_vec();
        p.sort_unstable();
        p.dedup();
        let n = p.len() as u32;
        let k = neighbours
            .unwrap_or(n.saturating_sub(1))
            .min(n.saturating_sub(1));
        let holders = k + 1;
        let t = threshold.unwrap_or((2 * holders).div_ceil(3).max(2));
        let params = RoundParams {
            round,
            participants: p,
            neighbours: k,
            threshold: t,
            dim,
            graph_seed,
        };
        params.validate()?;
        Ok(params)
    }

    /// Refuse parameters under which the protocol is unsafe or cannot run.
    pub fn validate(&self) -> Result<()> {
        let n = self.participants.len();
        if n < 2 {
            return Err(err("secure aggregation needs at least 2 clients"));
        }
        if self.participants.windows(2).any(|w| w[0] >= w[1]) {
            return Err(err("participants must be ascending and distinct"));
        }
        let k = self.neighbours as usize;
        if k == 0 || k > n - 1 {
            return Err(err(format!(
                "{k} neighbours: need between 1 and {} for {n} clients",
                n - 1
            )));
        }
        if k < n - 1 && !k.is_multiple_of(2) {
            return Err(err(format!(
                "{k} neighbours: SecAgg+ lays a ring, so the number must be even (or {} for \
                 every other client)",
                n - 1
            )));
        }
        let holders = k + 1;
        if holders > MAX_HOLDERS {
            return Err(err(format!(
                "{k} neighbours: at most {} (shares are numbered in GF(256))",
                MAX_HOLDERS - 1
            )));
        }
        let t = self.threshold as usize;
        if t < 2 || t > holders || 2 * t <= holders {
            return Err(err(format!(
                "threshold {t}: must be more than half of the {holders} holders of each \
                 client's secrets ({}..={holders})",
                holders / 2 + 1
            )));
        }
        if self.dim == 0 || self.dim as usize > crate::wire::MAX_PARAMS {
            return Err(err(format!("input length {} is not allowed", self.dim)));
        }
        Ok(())
    }

    /// The neighbour graph.
    pub fn graph(&self) -> Graph {
        Graph::new(
            &self.participants,
            self.neighbours as usize,
            self.graph_seed,
        )
    }
}

/// Who masks with whom: a ring over a seeded random order of the participants, each
/// client joined to the `K/2` nearest on either side (the complete graph when `K = n − 1`).
#[derive(Debug, Clone)]
pub struct Graph {
    order: Vec<u32>,
    pos: BTreeMap<u32, usize>,
    k: usize,
}

impl Graph {
    fn new(participants: &[u32], k: usize, seed: [u8; 32]) -> Self {
        let mut order = participants.to_vec();
        order.shuffle(&mut StdRng::from_seed(seed));
        let pos = order.iter().enumerate().map(|(i, &c)| (c, i)).collect();
        Graph { order, pos, k }
    }

    /// Is `c` a participant?
    pub fn contains(&self, c: u32) -> bool {
        self.pos.contains_key(&c)
    }

    /// The neighbours of `c`, ascending (empty for a stranger).
    pub fn neighbours(&self, c: u32) -> Vec<u32> {
        let n = self.order.len();
        let Some(&p) = self.pos.get(&c) else {
            return Vec::new();
        };
        let mut v: Vec<u32> = if self.k + 1 >= n {
            self.order.iter().copied().filter(|&x| x != c).collect()
        } else {
            (1..=self.k / 2)
                .flat_map(|j| [self.order[(p + j) % n], self.order[(p + n - j) % n]])
                .collect()
        };
        v.sort_unstable();
        v
    }

    /// The holders of `c`'s shares: its neighbours and itself, ascending. Holder `i` gets
    /// share number `i + 1`.
    pub fn holders(&self, c: u32) -> Vec<u32> {
        let mut v = self.neighbours(c);
        if self.contains(c) {
            let at = v.partition_point(|&x| x < c);
            v.insert(at, c);
        }
        v
    }

    /// Are `a` and `b` neighbours?
    pub fn adjacent(&self, a: u32, b: u32) -> bool {
        let (Some(&pa), Some(&pb)) = (self.pos.get(&a), self.pos.get(&b)) else {
            return false;
        };
        let n = self.order.len();
        if a == b {
            return false;
        }
        if self.k + 1 >= n {
            return true;
        }
        let d = pa.abs_diff(pb);
        d.min(n - d) <= self.k / 2
    }
}

/// Fixed-point coding of floats into `Z_2^32`: `q(x) = round(x · scale)` as a two's
/// complement 32-bit integer. The scale is chosen so that the sum of up to `clients`
/// inputs whose coordinates lie in `[−range, range]` stays inside `(−2^31, 2^31)`, so the
/// modular sum decodes to the exact sum of the quantised inputs. Inputs outside the range
/// are clamped to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantizer {
    /// Grid points per unit.
    pub scale: f64,
    /// Largest magnitude one input coordinate may have.
    pub range: f64,
}

impl Quantizer {
    /// The finest grid for sums of up to `clients` inputs within `[−range, range]`, with
    /// `margin` more units of headroom on the sum (room for noise added on the grid).
    pub fn for_sum(range: f64, clients: usize, margin: f64) -> Result<Self> {
        let span = range * clients as f64 + margin;
        if !(range.is_finite() && range > 0.0 && margin >= 0.0 && span.is_finite()) {
            return Err(err(format!("quantisation range {range} must be > 0")));
        }
        Ok(Quantizer {
            scale: (i32::MAX as f64 - 1.0) / span,
            range,
        })
    }

    /// Quantise one value.
    pub fn quantize_one(&self, x: f64) -> u32 {
        let x = if x.is_nan() {
            0.0
        } else {
            x.clamp(-self.range, self.range)
        };
        ((x * self.scale).round() as i64) as i32 as u32
    }

    /// Quantise a vector.
    pub fn quantize(&self, x: &[f32]) -> Vec<u32> {
        x.iter().map(|&v| self.quantize_one(v as f64)).collect()
    }

    /// Decode a (sum of) quantised value(s).
    pub fn dequantize_one(&self, q: u32) -> f64 {
        q as i32 as f64 / self.scale
    }

    /// Decode a vector.
    pub fn dequantize(&self, q: &[u32]) -> Vec<f64> {
        q.iter().map(|&v| self.dequantize_one(v)).collect()
    }
}

/// `dim` words of the ChaCha20 keystream under `seed`, added to (`sign = 1`) or subtracted
/// from (`sign = −1`) `acc`, modulo 2^32.
pub fn add_prg(acc: &mut [u32], seed: &[u8; 32], negate: bool) {
    let mut cipher = ChaCha20::new(seed.into(), &[0u8; 12].into());
    let mut buf = [0u8; 4096];
    for chunk in acc.chunks_mut(buf.len() / 4) {
        let bytes = &mut buf[..chunk.len() * 4];
        bytes.fill(0);
        cipher.apply_keystream(bytes);
        for (a, w) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            let m = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            *a = if negate {
                a.wrapping_sub(m)
            } else {
                a.wrapping_add(m)
            };
        }
    }
}

fn pair_seed(shared: &[u8; 32], round: u64) -> Zeroizing<[u8; 32]> {
    let mut m = Zeroizing::new([0u8; 40]);
    m[..32].copy_from_slice(shared);
    m[32..].copy_from_slice(&round.to_le_bytes());
    Zeroizing::new(blake3::derive_key("sov secagg pair mask v1", &m[..]))
}

fn self_seed_commitment(seed: &[u8; 32], round: u64, client: u32) -> [u8; 32] {
    let mut m = [0u8; 44];
    m[..32].copy_from_slice(seed);
    m[32..40].copy_from_slice(&round.to_le_bytes());
    m[40..].copy_from_slice(&client.to_le_bytes());
    blake3::derive_key("sov secagg self mask commitment v1", &m)
}

fn share_key(shared: &[u8; 32], round: u64, from: u32, to: u32) -> Zeroizing<[u8; 32]> {
    let mut m = Zeroizing::new([0u8; 48]);
    m[..32].copy_from_slice(shared);
    m[32..40].copy_from_slice(&round.to_le_bytes());
    m[40..44].copy_from_slice(&from.to_le_bytes());
    m[44..].copy_from_slice(&to.to_le_bytes());
    Zeroizing::new(blake3::derive_key("sov secagg share key v1", &m[..]))
}

fn key32(b: &[u8], what: &str) -> Result<[u8; 32]> {
    b.try_into()
        .map_err(|_| err(format!("{what} must be 32 bytes, not {}", b.len())))
}

fn agree(secret: &StaticSecret, public: &[u8; 32], who: u32) -> Result<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(err(format!(
            "client {who} advertised a low-order key (the shared secret would be known)"
        )));
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// Client → aggregator, stage 1: the client's public keys for this round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyAdvert {
    /// The client.
    pub client: u32,
    /// X25519 key that shares are sealed to.
    pub cipher_pk: ByteBuf,
    /// X25519 key that pair-mask seeds are agreed with.
    pub mask_pk: ByteBuf,
    /// Commitment to the self-mask seed (lets the aggregator check its reconstruction).
    pub seed_commitment: ByteBuf,
}

/// Aggregator → client: its neighbours' adverts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyBook {
    /// The round.
    pub round: u64,
    /// The adverts of the neighbours that advertised.
    pub adverts: Vec<KeyAdvert>,
}

/// One client's shares for one holder, sealed so only that holder reads them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedShare {
    /// Whose secrets.
    pub from: u32,
    /// For whom.
    pub to: u32,
    /// ChaCha20-Poly1305 ciphertext of the two shares.
    pub ciphertext: ByteBuf,
}

/// Client → aggregator, stage 2: its sealed shares, one per neighbour that advertised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncryptedShares {
    /// The client.
    pub client: u32,
    /// The sealed shares.
    pub shares: Vec<SealedShare>,
}

/// Aggregator → client: the sealed shares addressed to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareDelivery {
    /// The round.
    pub round: u64,
    /// Shares from the neighbours whose shares arrived.
    pub shares: Vec<SealedShare>,
}

/// Client → aggregator, stage 3: the masked input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskedInput {
    /// The client.
    pub client: u32,
    /// `y_u` as little-endian u32 words.
    pub masked: ByteBuf,
}

/// Aggregator → client, stage 4: who survived among the client's holders' owners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// The round.
    pub round: u64,
    /// Those of the client's neighbours (and itself) whose masked input arrived.
    pub survivors: Vec<u32>,
}

/// A share a holder reveals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevealedShare {
    /// Whose secret.
    pub owner: u32,
    /// The share (its number, then 32 bytes).
    pub share: ByteBuf,
}

/// Client → aggregator, stage 4: shares of the survivors' self-mask seeds and of the
/// dropped clients' mask keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    /// The client.
    pub client: u32,
    /// Shares of `b_v` for surviving `v`.
    pub seed_shares: Vec<RevealedShare>,
    /// Shares of `s_v` for dropped `v`.
    pub key_shares: Vec<RevealedShare>,
}

/// The two shares a holder keeps for one owner: of its self-mask seed, of its mask key.
type SharePair = (Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>);

/// Where a client is in the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientStage {
    Advertised,
    Shared,
    Masked,
    Done,
}

/// One client's side of a round.
pub struct Client {
    params: RoundParams,
    graph: Graph,
    id: u32,
    stage: ClientStage,
    cipher_sk: StaticSecret,
    mask_sk: StaticSecret,
    self_seed: Zeroizing<[u8; 32]>,
    /// Neighbours' mask keys (from the key book).
    book: BTreeMap<u32, [u8; 32]>,
    /// X25519 of this client's cipher key with each neighbour's: the same secret seals
    /// shares both ways, so it is agreed once.
    channels: BTreeMap<u32, Zeroizing<[u8; 32]>>,
    /// Owner → (share of b, share of s) this client holds, its own included.
    held: BTreeMap<u32, SharePair>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Join the round as `id`, drawing keys and the self-mask seed from `rng` (a CSPRNG in
    /// a real node; a seeded one in the simulation). Returns the advert to send.
    pub fn new<R: Rng + ?Sized>(
        params: RoundParams,
        id: u32,
        rng: &mut R,
    ) -> Result<(Self, KeyAdvert)> {
        params.validate()?;
        let graph = params.graph();
        if !graph.contains(id) {
            return Err(err(format!(
                "client {id} is not a participant of the round"
            )));
        }
        let mut bytes = Zeroizing::new([0u8; 96]);
        rng.fill_bytes(&mut bytes[..]);
        let cipher_sk = StaticSecret::from(key32(&bytes[..32], "key")?);
        let mask_sk = StaticSecret::from(key32(&bytes[32..64], "key")?);
        let self_seed = Zeroizing::new(key32(&bytes[64..], "seed")?);
        let advert = KeyAdvert {
            client: id,
            cipher_pk: ByteBuf::from(PublicKey::from(&cipher_sk).as_bytes().to_vec()),
            mask_pk: ByteBuf::from(PublicKey::from(&mask_sk).as_bytes().to_vec()),
            seed_commitment: ByteBuf::from(
                self_seed_commitment(&self_seed, params.round, id).to_vec(),
            ),
        };
        Ok((
            Client {
                params,
                graph,
                id,
                stage: ClientStage::Advertised,
                cipher_sk,
                mask_sk,
                self_seed,
                book: BTreeMap::new(),
                channels: BTreeMap::new(),
                held: BTreeMap::new(),
            },
            advert,
        ))
    }

    /// The client's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn expect(&self, stage: ClientStage, what: &str) -> Result<()> {
        if self.stage != stage {
            return Err(err(format!(
                "client {}: {what} arrived out of order (at stage {:?})",
                self.id, self.stage
            )));
        }
        Ok(())
    }

    /// Stage 2: split the secrets among the neighbours in `book` (and itself) and seal each
    /// neighbour's shares for it.
    pub fn share_keys<R: Rng + ?Sized>(
        &mut self,
        book: &KeyBook,
        rng: &mut R,
    ) -> Result<EncryptedShares> {
        self.expect(ClientStage::Advertised, "a key book")?;
        if book.round != self.params.round {
            return Err(err(format!(
                "a key book for round {} in round {}",
                book.round, self.params.round
            )));
        }
        let mut seen_keys = BTreeSet::new();
        let mut entries = BTreeMap::new();
        for a in &book.adverts {
            if !self.graph.adjacent(self.id, a.client) {
                return Err(err(format!(
                    "the key book lists client {}, which is not a neighbour of {}",
                    a.client, self.id
                )));
            }
            let c = key32(&a.cipher_pk, "a cipher key")?;
            let s = key32(&a.mask_pk, "a mask key")?;
            key32(&a.seed_commitment, "a seed commitment")?;
            if !seen_keys.insert(c) || !seen_keys.insert(s) {
                return Err(err(format!(
                    "client {} reuses a public key: refusing the key book",
                    a.client
                )));
            }
            if entries.insert(a.client, (c, s)).is_some() {
                return Err(err(format!("the key book lists client {} twice", a.client)));
            }
        }
        let holders = self.graph.holders(self.id);
        let t = self.params.threshold as usize;
        if entries.len() + 1 < t {
            return Err(err(format!(
                "only {} of client {}'s {} holders advertised keys; {t} are needed",
                entries.len() + 1,
                self.id,
                holders.len()
            )));
        }
        let mut rng_bytes = Zeroizing::new([0u8; 64]);
        rng.fill_bytes(&mut rng_bytes[..]);
        let split = |secret: &[u8], seed: &[u8]| -> Result<Vec<Vec<u8>>> {
            let mut r = StdRng::from_seed(key32(seed, "seed")?);
            Gf256::split_bytes(t, holders.len(), secret, &mut r)
                .map_err(|e| err(format!("Shamir split failed: {e:?}")))
        };
        let b_shares = split(&self.self_seed[..], &rng_bytes[..32])?;
        let s_shares = split(self.mask_sk.as_bytes(), &rng_bytes[32..])?;
        let mut sealed = Vec::with_capacity(entries.len());
        let mut channels = BTreeMap::new();
        for (&v, (cpk, _)) in &entries {
            channels.insert(v, agree(&self.cipher_sk, cpk, v)?);
        }
        for (i, &h) in holders.iter().enumerate() {
            let (b, s) = (&b_shares[i], &s_shares[i]);
            if h == self.id {
                self.held
                    .insert(h, (Zeroizing::new(b.clone()), Zeroizing::new(s.clone())));
                continue;
            }
            let Some(shared) = channels.get(&h) else {
                continue;
            };
            let key = share_key(shared, self.params.round, self.id, h);
            let mut plain = Zeroizing::new(Vec::with_capacity(SEALED_PLAIN_LEN));
            plain.extend_from_slice(&self.id.to_le_bytes());
            plain.extend_from_slice(&h.to_le_bytes());
            plain.extend_from_slice(&self.params.round.to_le_bytes());
            plain.extend_from_slice(b);
            plain.extend_from_slice(s);
            let ct = ChaCha20Poly1305::new(&(*key).into())
                .encrypt(
                    &[0u8; 12].into(),
                    Payload {
                        msg: &plain,
                        aad: b"sov secagg share",
                    },
                )
                .map_err(|_| err("sealing a share failed"))?;
            sealed.push(SealedShare {
                from: self.id,
                to: h,
                ciphertext: ByteBuf::from(ct),
            });
        }
        self.book = entries.into_iter().map(|(v, (_, s))| (v, s)).collect();
        self.channels = channels;
        self.stage = ClientStage::Shared;
        Ok(EncryptedShares {
            client: self.id,
            shares: sealed,
        })
    }

    /// Stage 3: open the shares addressed to this client and mask `input` with the self-mask
    /// and the pair masks of every neighbour whose shares arrived.
    pub fn mask_input(&mut self, delivery: &ShareDelivery, input: &[u32]) -> Result<MaskedInput> {
        self.expect(ClientStage::Shared, "a share delivery")?;
        if delivery.round != self.params.round {
            return Err(err(format!(
                "shares for round {} in round {}",
                delivery.round, self.params.round
            )));
        }
        if input.len() != self.params.dim as usize {
            return Err(err(format!(
                "an input of {} values in a round of {}",
                input.len(),
                self.params.dim
            )));
        }
        let mut opened = BTreeMap::new();
        for s in &delivery.shares {
            if s.to != self.id {
                return Err(err(format!(
                    "a share for client {} was delivered to {}",
                    s.to, self.id
                )));
            }
            let Some(shared) = self.channels.get(&s.from) else {
                return Err(err(format!(
                    "a share from client {}, which is not in {}'s key book",
                    s.from, self.id
                )));
            };
            let key = share_key(shared, self.params.round, s.from, self.id);
            let plain = Zeroizing::new(
                ChaCha20Poly1305::new(&(*key).into())
                    .decrypt(
                        &[0u8; 12].into(),
                        Payload {
                            msg: &s.ciphertext,
                            aad: b"sov secagg share",
                        },
                    )
                    .map_err(|_| {
                        err(format!(
                            "the share from client {} does not open: refusing to go on",
                            s.from
                        ))
                    })?,
            );
            if plain.len() != SEALED_PLAIN_LEN
                || plain[..4] != s.from.to_le_bytes()
                || plain[4..8] != self.id.to_le_bytes()
                || plain[8..16] != self.params.round.to_le_bytes()
            {
                return Err(err(format!(
                    "the share from client {} names another sender, holder or round",
                    s.from
                )));
            }
            let b = Zeroizing::new(plain[16..16 + SHARE_LEN].to_vec());
            let k = Zeroizing::new(plain[16 + SHARE_LEN..].to_vec());
            if opened.insert(s.from, (b, k)).is_some() {
                return Err(err(format!("two shares from client {}", s.from)));
            }
        }
        let t = self.params.threshold as usize;
        if opened.len() + 1 < t {
            return Err(err(format!(
                "shares from only {} of client {}'s holders arrived; {t} are needed",
                opened.len() + 1,
                self.id
            )));
        }
        let mut y = input.to_vec();
        add_prg(&mut y, &self.self_seed, false);
        for &v in opened.keys() {
            let spk = self.book[&v];
            let seed = pair_seed(&*agree(&self.mask_sk, &spk, v)?, self.params.round);
            add_prg(&mut y, &seed, v < self.id);
        }
        self.held.extend(opened);
        self.channels.clear();
        self.stage = ClientStage::Masked;
        Ok(MaskedInput {
            client: self.id,
            masked: ByteBuf::from(y.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()),
        })
    }

    /// Stage 4: reveal, for each client whose shares this one holds, the self-mask share if
    /// it survived and the key share if it dropped. Answers once; refuses a survivor list
    /// that names a client whose shares never arrived, or too few survivors.
    pub fn unmask(&mut self, req: &UnmaskRequest) -> Result<UnmaskResponse> {
        self.expect(ClientStage::Masked, "an unmasking request")?;
        // From here on this client never answers again, whatever happens.
        self.stage = ClientStage::Done;
        if req.round != self.params.round {
            return Err(err(format!(
                "an unmasking request for round {} in round {}",
                req.round, self.params.round
            )));
        }
        let survivors: BTreeSet<u32> = req.survivors.iter().copied().collect();
        if survivors.len() != req.survivors.len() {
            return Err(err("the survivor list repeats a client"));
        }
        if !survivors.contains(&self.id) {
            return Err(err(format!(
                "client {} is not among the survivors, so it reveals nothing",
                self.id
            )));
        }
        if let Some(v) = survivors.iter().find(|v| !self.held.contains_key(v)) {
            return Err(err(format!(
                "the survivor list names client {v}, whose shares client {} never got",
                self.id
            )));
        }
        let t = self.params.threshold as usize;
        if survivors.len() < t {
            return Err(err(format!(
                "only {} of client {}'s holders survived; {t} are needed, so it reveals nothing",
                survivors.len(),
                self.id
            )));
        }
        let mut resp = UnmaskResponse {
            client: self.id,
            seed_shares: Vec::new(),
            key_shares: Vec::new(),
        };
        for (&owner, (b, s)) in &self.held {
            if survivors.contains(&owner) {
                resp.seed_shares.push(RevealedShare {
                    owner,
                    share: ByteBuf::from(b.to_vec()),
                });
            } else {
                resp.key_shares.push(RevealedShare {
                    owner,
                    share: ByteBuf::from(s.to_vec()),
                });
            }
        }
        self.held.clear();
        Ok(resp)
    }
}

/// Where the aggregator is in the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggStage {
    Adverts,
    Shares,
    Masked,
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
    sum: Vec<u32>,
    /// Revealed shares: owner → (holder → share).
    seed_shares: BTreeMap<u32, BTreeMap<u32, Vec<u8>>>,
    key_shares: BTreeMap<u32, BTreeMap<u32, Vec<u8>>>,
    responded: BTreeSet<u32>,
}

impl Aggregator {
    /// Open a round.
    pub fn new(params: RoundParams) -> Result<Self> {
        params.validate()?;
        Ok(Aggregator {
            graph: params.graph(),
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

    /// Close stage 3: the unmasking request for each survivor. From here on a late masked
    /// input is refused: its sender counts as dropped.
    pub fn unmask_requests(&mut self) -> Result<Vec<(u32, UnmaskRequest)>> {
        self.expect(AggStage::Masked, "closing the masked inputs", 0)?;
        self.need(&self.u3, "masked input")?;
        // Every client in U2 must be rebuildable from the survivors: its self-mask if it
        // survived, its key if it dropped.
        for &v in &self.u2 {
            let live = self
                .graph
                .holders(v)
                .iter()
                .filter(|h| self.u3.contains(h))
                .count();
            if live < self.params.threshold as usize {
                return Err(err(format!(
                    "round aborted at masked input: only {live} of client {v}'s holders \
                     survived, {} needed",
                    self.params.threshold
                )));
            }
        }
        self.stage = AggStage::Unmasking;
        Ok(self
            .u3
            .iter()
            .map(|&c| {
                let survivors = self
                    .graph
                    .holders(c)
                    .into_iter()
                    .filter(|v| self.u3.contains(v))
                    .collect();
                (
                    c,
                    UnmaskRequest {
                        round: self.params.round,
                        survivors,
                    },
                )
            })
            .collect())
    }

    /// Stage 4: take a survivor's revealed shares. A response that reveals a share of the
    /// wrong kind for a client, or a share it cannot hold, is refused whole.
    pub fn receive_unmask(&mut self, r: UnmaskResponse) -> Result<()> {
        self.expect(AggStage::Unmasking, "an unmasking response", r.client)?;
        if !self.u3.contains(&r.client) {
            return Err(err(format!(
                "client {} is not a survivor; its shares are not wanted",
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
