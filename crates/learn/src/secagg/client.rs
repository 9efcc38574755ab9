//! The client's side of a round.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit,
    aead::{Aead, Payload},
};
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_bytes::ByteBuf;
use vsss_rs::Gf256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::{
    crypto::{
        Directory, SEALED_PLAIN_LEN, SHARE_LEN, add_prg, advert_transcript, agree, err, key32,
        pair_seed, self_seed_commitment, share_key, sign, survivors_transcript,
    },
    messages::{
        EncryptedShares, KeyAdvert, KeyBook, MaskedInput, RevealedShare, SealedShare,
        ShareDelivery, SurvivorList, SurvivorSignature, UnmaskRequest, UnmaskResponse,
    },
    params::{Graph, RoundParams},
};
use crate::Result;

/// The two shares a holder keeps for one owner: of its self-mask seed, of its mask key.
pub(super) type SharePair = (Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>);

/// Where a client is in the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientStage {
    Advertised,
    Shared,
    Masked,
    Confirmed,
    Done,
}

/// One client's side of a round.
pub struct Client {
    params: RoundParams,
    graph: Graph,
    id: u32,
    stage: ClientStage,
    /// The client's long-term signing key, and everyone's verifying keys.
    signer: SigningKey,
    directory: Arc<Directory>,
    /// Digest of `params`, in everything signed.
    digest: [u8; 32],
    /// The one survivor list this client signed.
    confirmed: Vec<u32>,
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
    /// Join the round as `id`, signing with its long-term key `signer` (whose verifying key
    /// `directory` must list for `id`), drawing round keys and the self-mask seed from `rng`
    /// (a CSPRNG in a real node; a seeded one in the simulation). Returns the signed advert
    /// to send.
    pub fn new<R: Rng + ?Sized>(
        params: RoundParams,
        id: u32,
        signer: &SigningKey,
        directory: Arc<Directory>,
        rng: &mut R,
    ) -> Result<(Self, KeyAdvert)> {
        params.validate()?;
        let graph = params.graph();
        if !graph.contains(id) {
            return Err(err(format!(
                "client {id} is not a participant of the round"
            )));
        }
        if directory.key(id) != Some(&signer.verifying_key()) {
            return Err(err(format!(
                "the directory does not list this signing key for client {id}"
            )));
        }
        let digest = params.digest();
        let mut bytes = Zeroizing::new([0u8; 96]);
        rng.fill_bytes(&mut bytes[..]);
        let cipher_sk = StaticSecret::from(key32(&bytes[..32], "key")?);
        let mask_sk = StaticSecret::from(key32(&bytes[32..64], "key")?);
        let self_seed = Zeroizing::new(key32(&bytes[64..], "seed")?);
        let mut advert = KeyAdvert {
            client: id,
            cipher_pk: ByteBuf::from(PublicKey::from(&cipher_sk).as_bytes().to_vec()),
            mask_pk: ByteBuf::from(PublicKey::from(&mask_sk).as_bytes().to_vec()),
            seed_commitment: ByteBuf::from(
                self_seed_commitment(&self_seed, params.round, id).to_vec(),
            ),
            signature: ByteBuf::new(),
        };
        advert.signature = ByteBuf::from(sign(signer, &advert_transcript(&digest, &advert)));
        Ok((
            Client {
                params,
                graph,
                id,
                stage: ClientStage::Advertised,
                signer: signer.clone(),
                directory,
                digest,
                confirmed: Vec::new(),
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
            // Signed by the neighbour's own key: the aggregator cannot put its keys in.
            self.directory.verify(
                a.client,
                &advert_transcript(&self.digest, a),
                &a.signature,
                "the key advert",
            )?;
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

    /// Consistency check (Bonawitz et al. 2017, §4): sign the round's survivor list. A
    /// client signs one list per round, and only one that names itself and names no
    /// neighbour whose shares it lacks; it will reveal shares only for this list.
    pub fn confirm(&mut self, list: &SurvivorList) -> Result<SurvivorSignature> {
        self.expect(ClientStage::Masked, "a survivor list")?;
        // Whatever happens, this client never signs a second list.
        self.stage = ClientStage::Confirmed;
        if list.round != self.params.round {
            return Err(err(format!(
                "a survivor list for round {} in round {}",
                list.round, self.params.round
            )));
        }
        if list.survivors.windows(2).any(|w| w[0] >= w[1]) {
            return Err(err("the survivor list is not ascending and distinct"));
        }
        if let Some(v) = list.survivors.iter().find(|&&v| !self.graph.contains(v)) {
            return Err(err(format!(
                "the survivor list names client {v}, which is not in the round"
            )));
        }
        if list.survivors.binary_search(&self.id).is_err() {
            return Err(err(format!(
                "client {} is not among the survivors, so it confirms nothing",
                self.id
            )));
        }
        let holders = self.graph.holders(self.id);
        if let Some(v) = holders
            .iter()
            .find(|v| list.survivors.binary_search(v).is_ok() && !self.held.contains_key(v))
        {
            return Err(err(format!(
                "the survivor list names client {v}, whose shares client {} never got",
                self.id
            )));
        }
        let t = self.params.threshold as usize;
        let live = holders
            .iter()
            .filter(|v| list.survivors.binary_search(v).is_ok())
            .count();
        if live < t {
            return Err(err(format!(
                "only {live} of client {}'s holders survived; {t} are needed, so it reveals \
                 nothing",
                self.id
            )));
        }
        self.confirmed = list.survivors.clone();
        Ok(SurvivorSignature {
            client: self.id,
            signature: ByteBuf::from(sign(
                &self.signer,
                &survivors_transcript(&self.digest, &self.confirmed),
            )),
        })
    }

    /// Stage 4: reveal, for each client whose shares this one holds, the self-mask share if
    /// it survived and the key share if it dropped. Only for the list this client signed,
    /// and only once at least `t` of that client's holders have signed the same list: two
    /// different lists cannot both have `t` signers among one client's holders unless more
    /// than a third of them collude, so every honest holder of a client reveals the same
    /// kind of share for it. Answers once.
    pub fn unmask(&mut self, req: &UnmaskRequest) -> Result<UnmaskResponse> {
        self.expect(ClientStage::Confirmed, "an unmasking request")?;
        // From here on this client never answers again, whatever happens.
        self.stage = ClientStage::Done;
        if req.round != self.params.round {
            return Err(err(format!(
                "an unmasking request for round {} in round {}",
                req.round, self.params.round
            )));
        }
        if req.survivors != self.confirmed {
            return Err(err(format!(
                "the unmasking request's survivor list is not the one client {} signed",
                self.id
            )));
        }
        let transcript = survivors_transcript(&self.digest, &self.confirmed);
        // Only the holders of the owners this client holds count: O(K²) signatures at most
        // are checked, each once, whatever the aggregator sends; others are passed over.
        let relevant: BTreeSet<u32> = self
            .held
            .keys()
            .flat_map(|&o| self.graph.holders(o))
            .collect();
        let mut signers = BTreeSet::new();
        for s in &req.signatures {
            if !relevant.contains(&s.client) {
                continue;
            }
            if self.confirmed.binary_search(&s.client).is_err() {
                return Err(err(format!(
                    "a signature from client {}, which is not a survivor",
                    s.client
                )));
            }
            if !signers.insert(s.client) {
                return Err(err(format!("two signatures from client {}", s.client)));
            }
            self.directory
                .verify(s.client, &transcript, &s.signature, "the survivor list")?;
        }
        let t = self.params.threshold as usize;
        for &owner in self.held.keys() {
            let confirmed = self
                .graph
                .holders(owner)
                .iter()
                .filter(|h| signers.contains(h))
                .count();
            if confirmed < t {
                return Err(err(format!(
                    "the survivor list is confirmed by {confirmed} of client {owner}'s holders; \
                     {t} are needed before client {} reveals anything",
                    self.id
                )));
            }
        }
        let survivors: BTreeSet<u32> = self.confirmed.iter().copied().collect();
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
