//! The node's Ed25519 keypair and the X25519 key-agreement keys derived from it.

use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey};
use rand::Rng as _;
use sov_core::{Did, Signer};
use zeroize::Zeroizing;

/// A node's Ed25519 secret key. `Debug` prints only the DID; the secret is zeroised on drop.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// The key for a 32-byte Ed25519 seed (RFC 8032 secret key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte seed, for the keystore.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The Ed25519 signing key itself, for protocols that sign their own messages (secure
    /// aggregation's adverts and survivor signatures).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The node's DID.
    pub fn did(&self) -> Did {
        // A key made from a seed is never of small order (its scalar is clamped, non-zero).
        Did::from_public_key(&self.signing.verifying_key())
            .expect("a public key derived from a secret scalar is not weak")
    }

    /// The X25519 secret for key agreement: the clamped Ed25519 scalar (the first half of
    /// SHA-512(seed)), the same conversion libsodium's `crypto_sign_ed25519_sk_to_curve25519` does.
    pub fn x25519_secret(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(self.signing.to_scalar_bytes())
    }

    /// Derive a 32-byte secret for one purpose from the seed (BLAKE3 `derive_key`), so
    /// sub-keys such as the store's convergence secret never reuse the identity key itself.
    pub fn derive_secret(&self, context: &'static str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(context, self.signing.as_bytes()))
    }
}

impl Signer for Keypair {
    fn did(&self) -> Did {
        Keypair::did(self)
    }

    fn sign(&self, message: &[u8]) -> Signature {
        self.signing.sign(message)
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.did())
    }
}

/// The X25519 public key-agreement key of a DID: the Montgomery form of its Ed25519 key.
pub fn key_agreement_public(did: &Did) -> x25519_dalek::PublicKey {
    x25519_dalek::PublicKey::from(did.verifying_key().to_montgomery().to_bytes())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn derived_x25519_pair_agrees(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            let (a, b) = (Keypair::from_seed(&a), Keypair::from_seed(&b));
            let pa = key_agreement_public(&a.did());
            prop_assert_eq!(x25519_dalek::PublicKey::from(&a.x25519_secret()), pa);
            let ab = a.x25519_secret().diffie_hellman(&key_agreement_public(&b.did()));
            let ba = b.x25519_secret().diffie_hellman(&pa);
            prop_assert_eq!(ab.as_bytes(), ba.as_bytes());
        }
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let k = Keypair::from_seed(&[0x42; 32]);
        let shown = format!("{k:?}");
        assert!(shown.starts_with("Keypair(did:key:z6Mk"));
        assert!(!shown.contains("42, 42"));
    }
}
