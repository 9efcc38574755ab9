//! The records an object is made of: its signed manifest, the sealed metadata inside it, and
//! signed read grants. All are canonical DAG-CBOR, so every one of them is an IPLD block.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sov_core::{ContentId, Did, Message, SignError, Signed};

/// One encrypted chunk of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The block's CID (raw codec).
    pub cid: ContentId,
    /// The block's length in bytes (ciphertext).
    pub size: u64,
}

/// The public part of an object, signed by its owner; its CID is the object id.
///
/// What anyone holding the block sees: the owner, the creation time, and the encrypted
/// chunks with their sizes (so roughly the plaintext length). Name, media type, exact length,
/// plaintext hash and the chunk keys are in `meta`, sealed under the object key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, 1.
    pub version: u32,
    /// The owner's DID (also the signer).
    pub owner: Did,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The chunks in order.
    pub chunks: Vec<ChunkRef>,
    /// [`Meta`] sealed with the object key (`nonce ‖ ciphertext ‖ tag`).
    pub meta: ByteBuf,
}

impl Message for Manifest {
    const TAG: &'static str = "sov/manifest/1";
}

/// What only readers learn about an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The file name given at `add`.
    pub name: String,
    /// The media type, e.g. `text/plain`.
    pub media_type: String,
    /// Plaintext length in bytes.
    pub size: u64,
    /// BLAKE3 of the whole plaintext.
    pub hash: ByteBuf,
    /// One 32-byte key per chunk, in chunk order.
    pub keys: Vec<ByteBuf>,
}

/// Associated data of the sealed [`Meta`].
pub const META_AAD: &[u8] = b"sov/meta/1";

/// A read grant: the object key wrapped for one reader, signed by the object's owner. The
/// reader is named only inside the encryption: a reader finds its grant by trial decryption,
/// the owner reads who it is for from `note`, and a holder sees random keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The object id (the manifest's CID).
    pub object: ContentId,
    /// Ephemeral X25519 public key.
    pub ephemeral: ByteBuf,
    /// `nonce ‖ AEAD(object key) ‖ tag`, under a key only the reader can derive.
    pub wrapped: ByteBuf,
    /// The Ed25519 public key (32 bytes) the reader derives from the same exchange, to prove
    /// to a holder that it may see the object's metadata without saying who it is.
    pub access: ByteBuf,
    /// `nonce ‖ AEAD(reader DID) ‖ tag`, under a key only the owner can derive.
    pub note: ByteBuf,
}

impl Message for Grant {
    const TAG: &'static str = "sov/grant/2";
}

/// A grant of the first version, naming its reader in the clear: still read (and upgraded by
/// its owner), no longer made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyGrant {
    /// The object id (the manifest's CID).
    pub object: ContentId,
    /// Who may read.
    pub reader: Did,
    /// Ephemeral X25519 public key.
    pub ephemeral: ByteBuf,
    /// `nonce ‖ AEAD(object key) ‖ tag`.
    pub wrapped: ByteBuf,
}

impl Message for LegacyGrant {
    const TAG: &'static str = "sov/grant/1";
}

/// A grant of either version, its signature checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyGrant {
    /// The reader named only inside the encryption.
    Hidden(Grant),
    /// The reader named in the clear (the first version).
    Named(LegacyGrant),
}

impl AnyGrant {
    /// The object the grant is for.
    pub fn object(&self) -> ContentId {
        match self {
            Self::Hidden(g) => g.object,
            Self::Named(g) => g.object,
        }
    }

    /// The reader, if the grant names it in the clear.
    pub fn named_reader(&self) -> Option<Did> {
        match self {
            Self::Hidden(_) => None,
            Self::Named(g) => Some(g.reader),
        }
    }

    /// The ephemeral X25519 key and the access key of a hidden grant.
    pub fn access(&self) -> Option<([u8; 32], [u8; 32])> {
        match self {
            Self::Hidden(g) => Some((
                g.ephemeral.as_slice().try_into().ok()?,
                g.access.as_slice().try_into().ok()?,
            )),
            Self::Named(_) => None,
        }
    }
}

/// Decode a grant block of either version and check its signature: its signer and the grant.
pub fn decode_grant(bytes: &[u8]) -> std::result::Result<(Did, AnyGrant), SignError> {
    match Signed::<Grant>::decode(bytes) {
        Ok(s) => Ok((s.signer(), AnyGrant::Hidden(s.into_body()))),
        Err(hidden) => match Signed::<LegacyGrant>::decode(bytes) {
            Ok(s) => Ok((s.signer(), AnyGrant::Named(s.into_body()))),
            // Not a legacy grant either: say why it is not a grant.
            Err(SignError::Encoding(_) | SignError::WrongTag { .. }) => Err(hidden),
            Err(legacy) => Err(legacy),
        },
    }
}
