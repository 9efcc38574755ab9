//! The W3C DID document of a `did:key`, derived, never stored.
//!
//! We use the **Multikey** representation (`https://w3id.org/security/multikey/v1`), which the
//! current did:key method specification produces: the Ed25519 key (`z6Mk…`) for
//! authentication, assertion and capabilities, and the derived X25519 key (`z6LS…`,
//! multicodec `0xec`) for key agreement.

use serde::Serialize;
use sov_core::Did;

use crate::key_agreement_public;

/// Multicodec prefix of an X25519 public key (`x25519-pub`, 0xec as a varint).
const X25519_PUB_PREFIX: [u8; 2] = [0xec, 0x01];

/// The `publicKeyMultibase` of a DID's X25519 key-agreement key (`z6LS…`).
pub fn key_agreement_multibase(did: &Did) -> String {
    let mut bytes = X25519_PUB_PREFIX.to_vec();
    bytes.extend_from_slice(key_agreement_public(did).as_bytes());
    multibase::encode(multibase::Base::Base58Btc, bytes)
}

/// One key in a DID document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationMethod {
    /// `did:key:z…#z…`
    pub id: String,
    /// Always `Multikey`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The DID that controls the key (the DID itself).
    pub controller: String,
    /// The key, multicodec-prefixed and base58btc-encoded.
    pub public_key_multibase: String,
}

/// A DID document in the Multikey representation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DidDocument {
    /// JSON-LD contexts.
    #[serde(rename = "@context")]
    pub context: Vec<String>,
    /// The DID.
    pub id: String,
    /// The Ed25519 key and the X25519 key.
    pub verification_method: Vec<VerificationMethod>,
    /// References to the Ed25519 key.
    pub authentication: Vec<String>,
    /// References to the Ed25519 key.
    pub assertion_method: Vec<String>,
    /// References to the Ed25519 key.
    pub capability_invocation: Vec<String>,
    /// References to the Ed25519 key.
    pub capability_delegation: Vec<String>,
    /// Reference to the X25519 key.
    pub key_agreement: Vec<String>,
}

impl DidDocument {
    /// Derive the document of `did`.
    pub fn resolve(did: &Did) -> Self {
        let id = did.to_string();
        let signing = did.multibase();
        let agreement = key_agreement_multibase(did);
        let method = |key: &str| VerificationMethod {
            id: format!("{id}#{key}"),
            kind: "Multikey".into(),
            controller: id.clone(),
            public_key_multibase: key.into(),
        };
        let signing_ref = vec![format!("{id}#{signing}")];
        Self {
            context: vec![
                "https://www.w3.org/ns/did/v1".into(),
                "https://w3id.org/security/multikey/v1".into(),
            ],
            verification_method: vec![method(&signing), method(&agreement)],
            authentication: signing_ref.clone(),
            assertion_method: signing_ref.clone(),
            capability_invocation: signing_ref.clone(),
            capability_delegation: signing_ref,
            key_agreement: vec![format!("{id}#{agreement}")],
            id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;

    #[test]
    fn spec_vector_key_agreement() {
        let did: Did = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
            .parse()
            .unwrap();
        assert_eq!(
            key_agreement_multibase(&did),
            "z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW"
        );
    }

    #[test]
    fn seed_0_to_31_document() {
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
        let did = Keypair::from_seed(&seed).did();
        assert_eq!(
            did.to_string(),
            "did:key:z6MkehRgf7yJbgaGfYsdoAsKdBPE3dj2CYhowQdcjqSJgvVd"
        );
        let doc = serde_json::to_value(DidDocument::resolve(&did)).unwrap();
        let ka = "did:key:z6MkehRgf7yJbgaGfYsdoAsKdBPE3dj2CYhowQdcjqSJgvVd#z6LSgTMiVvjkfQd8CF1kWasYZKBqtAYf6h8TC3yDfjPgDbWQ";
        assert_eq!(doc["keyAgreement"][0], ka);
        assert_eq!(doc["verificationMethod"][1]["id"], ka);
        assert_eq!(doc["verificationMethod"][1]["type"], "Multikey");
        assert_eq!(
            doc["verificationMethod"][1]["publicKeyMultibase"],
            "z6LSgTMiVvjkfQd8CF1kWasYZKBqtAYf6h8TC3yDfjPgDbWQ"
        );
    }
}
