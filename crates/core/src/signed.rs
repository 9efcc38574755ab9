//! `Signed<T>`: the envelope for everything that crosses a trust boundary.
//!
//! The signature covers `"sov-signed-v1\0" ‖ len(tag) ‖ tag ‖ canonical DAG-CBOR of T`, where
//! the tag names the message type and its version (`sov/manifest/1`), so a signature made for
//! one kind of message can never be replayed as another. Verification is strict: the
//! signer's key must not be of small order and the signature must be canonical
//! (`verify_strict`), which rules out malleated signatures.
//!
//! Encoded, the envelope is itself a canonical DAG-CBOR map `{body, signer, sig, tag}` with
//! `body` nested as a value (not as opaque bytes), so IPLD tooling can follow the links in it.

use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{Did, dagcbor};

const DOMAIN: &[u8] = b"sov-signed-v1\0";

/// A message type that can be signed: it names itself with a versioned domain tag.
pub trait Message: Serialize + DeserializeOwned {
    /// The domain tag, e.g. `sov/manifest/1`. Change the version when the meaning changes.
    const TAG: &'static str;
}

/// Something that holds an Ed25519 secret key and can sign with it.
pub trait Signer {
    /// The DID of the signing key.
    fn did(&self) -> Did;
    /// An Ed25519 signature of `message`.
    fn sign(&self, message: &[u8]) -> Signature;
}

/// Why an envelope could not be made, decoded or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The envelope or body is not canonical DAG-CBOR of the expected shape.
    #[error("malformed signed message: {0}")]
    Encoding(#[from] dagcbor::Error),
    /// The envelope carries another message type.
    #[error("wrong message type: expected {expected}, found {found}")]
    WrongTag {
        /// the tag the caller expected
        expected: &'static str,
        /// the tag in the envelope
        found: String,
    },
    /// The signature does not verify for the claimed signer.
    #[error("bad signature by {0}")]
    BadSignature(Did),
}

/// A message `T`, its signer and a signature that has been (or will be) strictly verified.
///
/// A `Signed<T>` obtained from [`Signed::sign`] or [`Signed::decode`] has a valid signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "T: Message")]
pub struct Signed<T: Message> {
    tag: String,
    signer: Did,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
    body: T,
}

impl<T: Message> Signed<T> {
    /// Sign `body` with `signer`.
    pub fn sign(body: T, signer: &impl Signer) -> Result<Self, SignError> {
        let input = signing_input(T::TAG, &dagcbor::to_vec(&body)?);
        let sig = signer.sign(&input);
        Ok(Self {
            tag: T::TAG.to_owned(),
            signer: signer.did(),
            sig: sig.to_bytes().to_vec(),
            body,
        })
    }

    /// The canonical DAG-CBOR bytes of the envelope (the block that gets a CID).
    pub fn encode(&self) -> Result<Vec<u8>, SignError> {
        Ok(dagcbor::to_vec(self)?)
    }

    /// Decode canonical bytes and verify the signature: verify-then-trust.
    pub fn decode(bytes: &[u8]) -> Result<Self, SignError> {
        let env: Self = dagcbor::from_slice(bytes)?;
        env.verify()?;
        Ok(env)
    }

    fn verify(&self) -> Result<(), SignError> {
        if self.tag != T::TAG {
            return Err(SignError::WrongTag {
                expected: T::TAG,
                found: self.tag.clone(),
            });
        }
        let sig_bytes: [u8; 64] = self
            .sig
            .as_slice()
            .try_into()
            .map_err(|_| SignError::BadSignature(self.signer))?;
        let sig = Signature::from_bytes(&sig_bytes);
        let input = signing_input(T::TAG, &dagcbor::to_vec(&self.body)?);
        // `Did` never holds a weak key; verify_strict also rejects non-canonical R and s.
        self.signer
            .verifying_key()
            .verify_strict(&input, &sig)
            .map_err(|_| SignError::BadSignature(self.signer))
    }

    /// The verified message.
    pub fn body(&self) -> &T {
        &self.body
    }

    /// Who signed it.
    pub fn signer(&self) -> Did {
        self.signer
    }

    /// Take the verified message.
    pub fn into_body(self) -> T {
        self.body
    }
}

fn signing_input(tag: &str, body: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(DOMAIN.len() + 2 + tag.len() + body.len());
    input.extend_from_slice(DOMAIN);
    // Tags are short constants; u16 keeps the framing unambiguous.
    input.extend_from_slice(&(tag.len() as u16).to_be_bytes());
    input.extend_from_slice(tag.as_bytes());
    input.extend_from_slice(body);
    input
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer as _, SigningKey};
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Note {
        text: String,
        n: u32,
    }
    impl Message for Note {
        const TAG: &'static str = "sov/test-note/1";
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Other {
        text: String,
        n: u32,
    }
    impl Message for Other {
        const TAG: &'static str = "sov/test-other/1";
    }

    struct Key(SigningKey);
    impl Signer for Key {
        fn did(&self) -> Did {
            Did::from_public_key(&self.0.verifying_key()).unwrap()
        }
        fn sign(&self, m: &[u8]) -> Signature {
            self.0.sign(m)
        }
    }

    fn key(b: u8) -> Key {
        Key(SigningKey::from_bytes(&[b; 32]))
    }

    #[test]
    fn sign_encode_decode() {
        let s = Signed::sign(
            Note {
                text: "hi".into(),
                n: 7,
            },
            &key(1),
        )
        .unwrap();
        let bytes = s.encode().unwrap();
        let back = Signed::<Note>::decode(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.signer(), key(1).did());
    }

    #[test]
    fn other_type_with_same_shape_is_refused() {
        let s = Signed::sign(
            Note {
                text: "hi".into(),
                n: 7,
            },
            &key(1),
        )
        .unwrap();
        let bytes = s.encode().unwrap();
        assert!(matches!(
            Signed::<Other>::decode(&bytes),
            Err(SignError::WrongTag { .. })
        ));
    }

    #[test]
    fn tampered_body_or_signer_is_refused() {
        let mut s = Signed::sign(
            Note {
                text: "hi".into(),
                n: 7,
            },
            &key(1),
        )
        .unwrap();
        s.body.n = 8;
        let bytes = s.encode().unwrap();
        assert!(matches!(
            Signed::<Note>::decode(&bytes),
            Err(SignError::BadSignature(_))
        ));
        s.body.n = 7;
        s.signer = key(2).did();
        assert!(matches!(
            Signed::<Note>::decode(&s.encode().unwrap()),
            Err(SignError::BadSignature(_))
        ));
    }

    #[test]
    fn malleated_signature_is_refused() {
        // s + L (the group order) verifies under lax rules but is not canonical.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut s = Signed::sign(
            Note {
                text: "hi".into(),
                n: 7,
            },
            &key(3),
        )
        .unwrap();
        let mut carry = 0u16;
        for (byte, l) in s.sig[32..].iter_mut().zip(L) {
            let v = *byte as u16 + l as u16 + carry;
            *byte = v as u8;
            carry = v >> 8;
        }
        assert!(matches!(
            Signed::<Note>::decode(&s.encode().unwrap()),
            Err(SignError::BadSignature(_))
        ));
    }

    proptest! {
        #[test]
        fn round_trip(text in ".{0,40}", n in any::<u32>(), k in any::<u8>()) {
            let s = Signed::sign(Note { text, n }, &key(k)).unwrap();
            prop_assert_eq!(Signed::<Note>::decode(&s.encode().unwrap()).unwrap(), s);
        }

        #[test]
        fn any_flipped_bit_is_refused(bit in 0usize..2000) {
            let s = Signed::sign(Note { text: "a note".into(), n: 1 }, &key(9)).unwrap();
            let mut bytes = s.encode().unwrap();
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Signed::<Note>::decode(&bytes).is_err());
        }
    }
}
