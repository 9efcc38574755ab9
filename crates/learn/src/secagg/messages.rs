//! The messages of a round, in protocol order, as plain serde data.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

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
    /// The client's Ed25519 signature over the round's parameters and the three above.
    pub signature: ByteBuf,
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

/// Aggregator → client, after the masked inputs: the round's survivors (every client whose
/// masked input arrived), for the client to confirm by signing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurvivorList {
    /// The round.
    pub round: u64,
    /// The survivors, ascending.
    pub survivors: Vec<u32>,
}

/// Client → aggregator: its signature on the one survivor list it confirms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurvivorSignature {
    /// The client.
    pub client: u32,
    /// Ed25519 signature over the round's parameters and the list.
    pub signature: ByteBuf,
}

/// Aggregator → client, stage 4: the confirmed survivor list, with the signatures that
/// confirm it (those of the signers among the holders of every client whose shares the
/// recipient holds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// The round.
    pub round: u64,
    /// The survivors, exactly the list the recipient signed.
    pub survivors: Vec<u32>,
    /// Survivors' signatures on that list.
    pub signatures: Vec<SurvivorSignature>,
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
