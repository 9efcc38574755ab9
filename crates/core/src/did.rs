//! `did:key` for Ed25519 keys: `did:key:` + multibase base58btc (`z`) of
//! `varint(0xed) ‖ 32-byte public key` (the multicodec prefix is the two bytes `ed 01`).

use std::{fmt, str::FromStr};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Multicodec prefix of an Ed25519 public key (`ed25519-pub`, 0xed as an unsigned varint).
const ED25519_PUB_PREFIX: [u8; 2] = [0xed, 0x01];
const SCHEME: &str = "did:key:";

/// Why a string is not a usable Ed25519 `did:key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DidError {
    /// The string does not start with `did:key:`.
    #[error("not a did:key (expected the prefix `did:key:`)")]
    NotDidKey,
    /// The method-specific id is not multibase base58btc (`z…`).
    #[error("did:key id must be base58btc multibase (start with `z`), found {0:?}")]
    NotBase58Btc(char),
    /// The multibase payload does not decode.
    #[error("did:key id is not valid base58btc: {0}")]
    Base58(String),
    /// The key is not an Ed25519 public key.
    #[error(
        "did:key names a key of another type (multicodec prefix {0:02x?}); only Ed25519 (0xed) is supported"
    )]
    WrongCodec(Vec<u8>),
    /// The key has the wrong length.
    #[error("did:key Ed25519 key must be 32 bytes, found {0}")]
    WrongLength(usize),
    /// The 32 bytes are not a point on the curve.
    #[error("did:key names bytes that are not a valid Ed25519 public key")]
    InvalidKey,
    /// The key is of small order: anyone could forge signatures for it.
    #[error("did:key names a weak (small-order) Ed25519 key")]
    WeakKey,
}

/// A W3C `did:key` identifier of an Ed25519 public key.
///
/// Parsing checks the prefix, the encoding, the length, that the key is a curve point and
/// that it is not of small order, so a `Did` always names a key that can verify signatures.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Did {
    key: [u8; 32],
}

impl Did {
    /// The DID of an Ed25519 verifying key; `Err(WeakKey)` for small-order keys.
    pub fn from_public_key(key: &VerifyingKey) -> Result<Self, DidError> {
        if key.is_weak() {
            return Err(DidError::WeakKey);
        }
        Ok(Self {
            key: key.to_bytes(),
        })
    }

    /// The DID of 32 raw public-key bytes.
    pub fn from_public_bytes(bytes: &[u8; 32]) -> Result<Self, DidError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| DidError::InvalidKey)?;
        Self::from_public_key(&key)
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// The Ed25519 verifying key. Infallible: construction already validated the point.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.key).expect("Did is only constructed from valid keys")
    }

    /// The method-specific id, `z6Mk…`, which is also the key's `publicKeyMultibase`.
    pub fn multibase(&self) -> String {
        let mut bytes = Vec::with_capacity(34);
        bytes.extend_from_slice(&ED25519_PUB_PREFIX);
        bytes.extend_from_slice(&self.key);
        multibase::encode(multibase::Base::Base58Btc, bytes)
    }
}

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.multibase())
    }
}

impl fmt::Debug for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Did({self})")
    }
}

impl FromStr for Did {
    type Err = DidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = s.strip_prefix(SCHEME).ok_or(DidError::NotDidKey)?;
        let first = id.chars().next().ok_or(DidError::WrongLength(0))?;
        if first != 'z' {
            return Err(DidError::NotBase58Btc(first));
        }
        let (_, bytes) = multibase::decode(id).map_err(|e| DidError::Base58(e.to_string()))?;
        let key = bytes
            .strip_prefix(&ED25519_PUB_PREFIX)
            .ok_or_else(|| DidError::WrongCodec(bytes.iter().take(2).copied().collect()))?;
        let key: &[u8; 32] = key
            .try_into()
            .map_err(|_| DidError::WrongLength(key.len()))?;
        Self::from_public_bytes(key)
    }
}

impl Serialize for Did {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Did {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_seed_gives_known_did() {
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
        let did = Did::from_public_key(&SigningKey::from_bytes(&seed).verifying_key()).unwrap();
        assert_eq!(
            did.to_string(),
            "did:key:z6MkehRgf7yJbgaGfYsdoAsKdBPE3dj2CYhowQdcjqSJgvVd"
        );
    }

    #[test]
    fn parses_spec_example() {
        let s = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
        let did: Did = s.parse().unwrap();
        assert_eq!(did.to_string(), s);
    }

    #[test]
    fn rejects_malformed() {
        type Check = fn(&DidError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("did:web:example.com", |e| matches!(e, DidError::NotDidKey)),
            ("did:key:", |e| matches!(e, DidError::WrongLength(0))),
            ("did:key:f00", |e| matches!(e, DidError::NotBase58Btc('f'))),
            ("did:key:z0OIl", |e| matches!(e, DidError::Base58(_))),
            // An X25519 (0xec) key is not an Ed25519 did:key.
            (
                "did:key:z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW",
                |e| matches!(e, DidError::WrongCodec(_)),
            ),
        ];
        for (input, check) in cases {
            let err = input.parse::<Did>().unwrap_err();
            assert!(check(&err), "{input}: unexpected {err:?}");
        }
    }

    #[test]
    fn rejects_short_key() {
        let mut bytes = ED25519_PUB_PREFIX.to_vec();
        bytes.extend_from_slice(&[7u8; 31]);
        let s = format!(
            "did:key:{}",
            multibase::encode(multibase::Base::Base58Btc, bytes)
        );
        assert_eq!(s.parse::<Did>().unwrap_err(), DidError::WrongLength(31));
    }

    #[test]
    fn rejects_weak_key() {
        // The identity point (small order) encoded as a did:key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut bytes = ED25519_PUB_PREFIX.to_vec();
        bytes.extend_from_slice(&identity);
        let s = format!(
            "did:key:{}",
            multibase::encode(multibase::Base::Base58Btc, bytes)
        );
        assert_eq!(s.parse::<Did>().unwrap_err(), DidError::WeakKey);
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(seed in any::<[u8; 32]>()) {
            let did = Did::from_public_key(&SigningKey::from_bytes(&seed).verifying_key()).unwrap();
            let text = did.to_string();
            prop_assert!(text.starts_with("did:key:z6Mk"));
            prop_assert_eq!(text.parse::<Did>().unwrap(), did);
        }

        #[test]
        fn parse_never_panics(s in "did:key:z[1-9A-HJ-NP-Za-km-z]{0,60}") {
            let _ = s.parse::<Did>();
        }
    }
}
