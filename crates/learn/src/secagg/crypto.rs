//! The round's key derivations and the ChaCha20 mask stream: pairwise seeds from X25519,
//! self-mask commitments, share-sealing keys; and what clients sign with their long-term
//! Ed25519 keys (adverts, survivor lists), checked against the [`Directory`].

use chacha20::{
    ChaCha20,
    cipher::{KeyIvInit, StreamCipher},
};
use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::messages::KeyAdvert;
use crate::Result;

/// Each participant's long-term Ed25519 verifying key, as every member knows it from the
/// federation's membership (the members' DIDs), never from the aggregator: with it a
/// client tells a neighbour's real key advert and survivor signature from ones the
/// aggregator forged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    keys: BTreeMap<u32, VerifyingKey>,
}

impl Directory {
    /// The directory of these participants' keys.
    pub fn new(keys: BTreeMap<u32, VerifyingKey>) -> Self {
        Directory { keys }
    }

    /// The key of `client`, if it is a member.
    pub fn key(&self, client: u32) -> Option<&VerifyingKey> {
        self.keys.get(&client)
    }

    /// Check `client`'s signature on `message` (strict: no malleable signatures).
    pub(super) fn verify(&self, client: u32, message: &[u8], sig: &[u8], what: &str) -> Result<()> {
        let key = self
            .keys
            .get(&client)
            .ok_or_else(|| err(format!("client {client} is not in the directory")))?;
        let sig = Signature::from_slice(sig).map_err(|_| {
            err(format!(
                "{what} of client {client}: a signature is 64 bytes"
            ))
        })?;
        key.verify_strict(message, &sig).map_err(|_| {
            err(format!(
                "{what} of client {client} is not signed by its key: refused"
            ))
        })
    }
}

/// What a client signs to advertise its round keys.
pub(super) fn advert_transcript(params: &[u8; 32], a: &KeyAdvert) -> Vec<u8> {
    let mut m = b"sov secagg advert v1".to_vec();
    m.extend_from_slice(params);
    m.extend_from_slice(&a.client.to_le_bytes());
    for part in [&a.cipher_pk, &a.mask_pk, &a.seed_commitment] {
        m.extend_from_slice(&(part.len() as u32).to_le_bytes());
        m.extend_from_slice(part);
    }
    m
}

/// What a client signs to confirm the round's survivor list (it signs one list per round).
pub(super) fn survivors_transcript(params: &[u8; 32], survivors: &[u32]) -> Vec<u8> {
    let mut m = b"sov secagg survivors v1".to_vec();
    m.extend_from_slice(params);
    m.extend_from_slice(&(survivors.len() as u32).to_le_bytes());
    for c in survivors {
        m.extend_from_slice(&c.to_le_bytes());
    }
    m
}

/// Sign `message` with `key`.
pub(super) fn sign(key: &SigningKey, message: &[u8]) -> Vec<u8> {
    key.sign(message).to_bytes().to_vec()
}

/// Bytes of one Shamir share of a 32-byte secret: its number, then 32 bytes.
pub(super) const SHARE_LEN: usize = 33;

/// Bytes of a sealed share's plaintext: from, to, round, self-mask share, key share.
pub(super) const SEALED_PLAIN_LEN: usize = 4 + 4 + 8 + 2 * SHARE_LEN;

/// A refusal or an abort of the protocol.
pub(super) fn err(msg: impl Into<String>) -> crate::Error {
    crate::Error::SecAgg(msg.into())
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

pub(super) fn pair_seed(shared: &[u8; 32], round: u64) -> Zeroizing<[u8; 32]> {
    let mut m = Zeroizing::new([0u8; 40]);
    m[..32].copy_from_slice(shared);
    m[32..].copy_from_slice(&round.to_le_bytes());
    Zeroizing::new(blake3::derive_key("sov secagg pair mask v1", &m[..]))
}

pub(super) fn self_seed_commitment(seed: &[u8; 32], round: u64, client: u32) -> [u8; 32] {
    let mut m = [0u8; 44];
    m[..32].copy_from_slice(seed);
    m[32..40].copy_from_slice(&round.to_le_bytes());
    m[40..].copy_from_slice(&client.to_le_bytes());
    blake3::derive_key("sov secagg self mask commitment v1", &m)
}

pub(super) fn share_key(shared: &[u8; 32], round: u64, from: u32, to: u32) -> Zeroizing<[u8; 32]> {
    let mut m = Zeroizing::new([0u8; 48]);
    m[..32].copy_from_slice(shared);
    m[32..40].copy_from_slice(&round.to_le_bytes());
    m[40..44].copy_from_slice(&from.to_le_bytes());
    m[44..].copy_from_slice(&to.to_le_bytes());
    Zeroizing::new(blake3::derive_key("sov secagg share key v1", &m[..]))
}

pub(super) fn key32(b: &[u8], what: &str) -> Result<[u8; 32]> {
    b.try_into()
        .map_err(|_| err(format!("{what} must be 32 bytes, not {}", b.len())))
}

pub(super) fn agree(
    secret: &StaticSecret,
    public: &[u8; 32],
    who: u32,
) -> Result<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(err(format!(
            "client {who} advertised a low-order key (the shared secret would be known)"
        )));
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}
