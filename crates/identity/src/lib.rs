//! `sov-identity` is layer 1 of sov: who a node is.
//!
//! - [`Keypair`]: the node's Ed25519 key; its name is a `did:key`; the X25519 key for key
//!   agreement is derived from it as the did:key method specifies (Ed25519 → Montgomery).
//! - [`DidDocument`]: the W3C DID document derived from a DID (never stored).
//! - [`keystore`]: `$SOV_HOME/identity.key`, mode 0600, optionally sealed with a passphrase
//!   (Argon2id + XChaCha20-Poly1305).
//! - [`token`]: the local admin token, `$SOV_HOME/admin.token`, mode 0600.
//! - [`jwt`]: OAuth 2.0 client assertions signed by a client's did:key (RFC 7523) and the
//!   access tokens a node issues.

mod document;
pub mod jwt;
mod keypair;
pub mod keystore;
pub mod token;

pub use document::{DidDocument, VerificationMethod, key_agreement_multibase};
pub use keypair::{Keypair, key_agreement_public};
pub use sov_core::{Did, DidError};
