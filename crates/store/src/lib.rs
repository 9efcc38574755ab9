//! `sov-store` is a layer-2 crate of sov: the node's encrypted, content-addressed object store.
//!
//! ```text
//!   file ──FastCDC──▶ chunks ──seal (convergent key)──▶ raw blocks   (CID = BLAKE3 of ciphertext)
//!                                 │
//!                 chunk keys, name, media type, size, hash ──seal (random object key)──▶ meta
//!                                 │
//!   manifest {owner, created, chunks, meta} ──sign──▶ DAG-CBOR block; its CID is the object id
//!   grant {object, reader, wrapped object key} ──sign──▶ DAG-CBOR block, one per reader
//! ```
//!
//! Every block is verified against its CID when read, even from our own disk; plaintext
//! exists only in memory. On disk: block bytes in append-only pack files (`store.packs/`),
//! indexed by a redb file holding `block_index` (CID → pack location), `pack_live_bytes`,
//! `objects`, `grants` (object → grant CIDs), `refs` (CID → how many objects use the block),
//! `pending` (adds in progress, so a crash mid-add is cleaned up at the next open), `pins`
//! and `peers` (the peer book).
//! An object becomes visible in one final transaction, so a process killed during `add`
//! leaves no half-visible object. CAR v1 export/import moves objects to other nodes and to
//! IPFS tooling; import verifies everything before it commits anything.

mod add;
mod blocks;
pub mod car;
mod car_io;
mod chunker;
mod crypto;
mod grants;
mod import;
pub mod manifest;
mod pack;
mod peers;
mod pins;
mod read;
mod records;
mod repair;
mod store;

use std::path::PathBuf;

pub use car::CarError;
pub use grants::claim_message;
pub use import::{Import, ImportReader};
pub use manifest::{AnyGrant, decode_grant};
pub use pack::{RESERVE, free_space};
pub use peers::{KnownPeer, PEER_BOOK_SIZE};
pub use pins::{Pin, ReplicaUsage};
pub use records::{MAX_RECORD, MAX_RECORD_KEY, MAX_RECORD_TOPIC};
pub use repair::{CheckReport, RepairReport};
use sov_core::{ContentId, Did};
pub use store::{AddOptions, Added, ObjectInfo, ObjectMeta, Store, StoreOptions};

pub use sov_core::MAX_BLOCK;

/// The store's file name inside the node's home.
pub const DB_FILE: &str = "store.redb";

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No such object here.
    #[error("object {0} is not in this store")]
    NotFound(ContentId),
    /// The object is here, but no grant lets this node read it.
    #[error(
        "{reader} has no read grant for object {object}: its owner must run `sov data grant {object} {reader}`"
    )]
    NoGrant {
        /// the object
        object: ContentId,
        /// this node
        reader: Did,
    },
    /// Only the owner of an object can grant access to it.
    #[error("only the owner ({owner}) can grant access to object {object}")]
    NotOwner {
        /// the object
        object: ContentId,
        /// its owner
        owner: Did,
    },
    /// Stored bytes fail verification.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// A manifest or grant is not valid.
    #[error("invalid object: {0}")]
    Invalid(String),
    /// A CAR file is malformed or fails verification.
    #[error("invalid CAR: {0}")]
    Car(CarError),
    /// The object exceeds what one manifest can describe.
    #[error("object too large: {0}")]
    TooLarge(String),
    /// Not enough room to store this (the disk, or the store's capacity); nothing was kept.
    #[error(
        "not enough space: {0}; remove objects (`sov data rm`) or free disk space, then try again"
    )]
    Full(String),
    /// Another process holds the database.
    #[error("the store {0} is in use by another sov process (is a node running?)")]
    InUse(PathBuf),
    /// The database failed.
    #[error("database: {0}")]
    Db(String),
    /// Reading input or writing output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

// Not `#[from]`: that would make the CAR error the source too, and a cause chain printed on
// one line would say it twice.
impl From<CarError> for Error {
    fn from(e: CarError) -> Self {
        Error::Car(e)
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! db_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Db(e.to_string())
            }
        }
    )*};
}
db_errors!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
