//! The records an object is made of: its signed manifest, the sealed metadata inside it, and
//! signed read grants. All are canonical DAG-CBOR, so every one of them is an IPLD block.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sov_core::{ContentId, Did, Message};

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

/// A read grant: the object key wrapped for one reader, signed by the object's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The object id (the manifest's CID).
    pub object: ContentId,
    /// Who may read.
    pub reader: Did,
    /// Ephemeral X25519 public key.
    pub ephemeral: ByteBuf,
    /// `nonce ‖ AEAD(object key) ‖ tag`.
    pub wrapped: ByteBuf,
}

impl Message for Grant {
    const TAG: &'static str = "sov/grant/1";
}
