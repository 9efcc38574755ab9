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
//!    to agree mask seeds (`s`), and a commitment to a fresh self-mask seed `b_u`, signed
//!    with `u`'s long-term Ed25519 key over a digest of the round's parameters. Every
//!    member knows the others' verifying keys from the federation (the [`Directory`]), not
//!    from the aggregator, so the aggregator can neither forge an advert nor show clients
//!    different parameters.
//! 2. **Share keys**: `b_u` and the mask secret key `s_u` are each split `t`-of-`|H(u)|`
//!    (Shamir over GF(256)); each neighbour's two shares are sealed for it
//!    (ChaCha20-Poly1305 under a key derived from X25519 of the `c` keys) and sent through
//!    the aggregator, which cannot read them.
//! 3. **Masked input**: `y_u = x_u + PRG(b_u) + Σ_{v∈U2∩N(u), u<v} PRG(s_uv)
//!    − Σ_{v∈U2∩N(u), v<u} PRG(s_uv)` in `Z_2^32`, where `U2` are the clients whose shares
//!    arrived and `s_uv` is derived from X25519 of the `s` keys. `PRG` is the ChaCha20
//!    keystream.
//! 4. **Consistency check** (Bonawitz et al. §4): the aggregator sends the survivors `U3`
//!    (clients whose masked input arrived) to each survivor, which signs it if it names
//!    itself, names no holder of its own whose shares it lacks, and leaves it `t` live
//!    holders. A client signs one list per round.
//! 5. **Unmasking**: each signer gets the list back with the signatures of the signers
//!    among the holders of every client whose shares it holds, checks that the list is the
//!    one it signed and that each such client has `t` holders who signed it, and only then
//!    reveals, for every client whose shares it holds, the share of `b` if that client
//!    survived and the share of `s` if it dropped, never both, once. The aggregator rebuilds
//!    the self-masks of the survivors and the pair masks between the dropped and the
//!    survivors, and removes them: what is left is `Σ_{u∈U3} x_u`.
//!
//! Why this holds against a malicious aggregator: to unmask one client it must rebuild its
//! self-mask `b` (from `t` holders told it survived) and every pair mask in its input (from
//! the keys of its partners, `t` holders each told they dropped). Without step 4 it can
//! tell each holder something else (the attack of issue 16 recovered an input on a ring
//! of 24 clients with `K = 8, t = 6`). With it, every honest holder of a client reveals
//! for the one list that `t` of that client's holders signed; two different lists with `t`
//! signers each among `K + 1` holders share `2t − K − 1` signers, so with
//! `t > 2(K+1)/3` ([`min_threshold`]) that needs more than a third of a client's holders
//! to collude with the aggregator. A client declared dropped whose masked input arrives
//! late is never unmasked, and a client that heard from fewer than `t − 1` neighbours
//! refuses to sign a list that names the others.
//!
//! The inputs are vectors in `Z_2^32`; [`Quantizer`] maps floats to them and back. Messages
//! are plain data (serde); adverts and survivor signatures carry their own Ed25519
//! signatures, the rest is authenticated by the sealed shares and commitments. What this
//! protects against, and what it does not, is in `docs/SECURITY.md`.

mod aggregator;
mod client;
mod crypto;
mod messages;
mod params;

pub use aggregator::{Aggregator, Outcome};
pub use client::Client;
pub use crypto::{Directory, add_prg};
pub use messages::{
    EncryptedShares, KeyAdvert, KeyBook, MaskedInput, RevealedShare, SealedShare, ShareDelivery,
    SurvivorList, SurvivorSignature, UnmaskRequest, UnmaskResponse,
};
pub use params::{Graph, MAX_HOLDERS, Quantizer, RoundParams, min_threshold};

/// Long-term signing keys for `participants`, derived from `seed`, and the directory of
/// their verifying keys: what a simulation or a test gives its clients in place of the
/// members' node identities.
pub fn seeded_identities(
    participants: &[u32],
    seed: u64,
) -> (
    std::collections::BTreeMap<u32, ed25519_dalek::SigningKey>,
    std::sync::Arc<Directory>,
) {
    let keys: std::collections::BTreeMap<u32, ed25519_dalek::SigningKey> = participants
        .iter()
        .map(|&c| {
            let mut m = [0u8; 12];
            m[..8].copy_from_slice(&seed.to_le_bytes());
            m[8..].copy_from_slice(&c.to_le_bytes());
            let secret = blake3::derive_key("sov secagg simulated identity v1", &m);
            (c, ed25519_dalek::SigningKey::from_bytes(&secret))
        })
        .collect();
    let dir = Directory::new(keys.iter().map(|(&c, k)| (c, k.verifying_key())).collect());
    (keys, std::sync::Arc::new(dir))
}
