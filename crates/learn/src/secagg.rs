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

mod aggregator;
mod client;
mod crypto;
mod messages;
mod params;

pub use aggregator::{Aggregator, Outcome};
pub use client::Client;
pub use crypto::add_prg;
pub use messages::{
    EncryptedShares, KeyAdvert, KeyBook, MaskedInput, RevealedShare, SealedShare, ShareDelivery,
    UnmaskRequest, UnmaskResponse,
};
pub use params::{Graph, MAX_HOLDERS, Quantizer, RoundParams};
