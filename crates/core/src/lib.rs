//! `sov-core` is layer 0 of sov: the small vocabulary every other crate speaks.
//!
//! - [`Did`]: a `did:key` naming an Ed25519 public key (multicodec `0xed01`, base58btc).
//! - [`ContentId`]: a CIDv1 with a BLAKE3-256 multihash, for raw and DAG-CBOR blocks.
//! - [`Signed`]: canonical DAG-CBOR bytes of a message, a domain tag naming its type and
//!   version, the signer's DID and a strictly verified Ed25519 signature.
//! - [`Block`]: bytes checked against their CID, so no layer hashes them twice.
//! - [`dagcbor`]: deterministic (canonical) DAG-CBOR encoding and a decoder that rejects
//!   anything non-canonical, so a block's bytes and its CID are a function of its value.
//!
//! Nothing here does I/O, reads a clock or draws randomness: callers pass those in.

mod block;
mod cid;
pub mod dagcbor;
mod did;
mod signed;

pub use block::{Block, BlockMismatch};

/// Largest block (chunk ciphertext, manifest or grant) sov writes, accepts or sends: 1 MiB,
/// the block size IPFS implementations accept without special flags.
pub const MAX_BLOCK: usize = 1 << 20;

/// Most characters of untrusted input an error message quotes.
pub const MAX_QUOTED: usize = 40;

/// `input` quoted for an error message, cut to [`MAX_QUOTED`] characters (an ellipsis and the
/// full length say it was cut), so an error never echoes a large input back.
pub fn quote(input: &str) -> String {
    let n = input.chars().count();
    if n <= MAX_QUOTED {
        return format!("{input:?}");
    }
    let head: String = input.chars().take(MAX_QUOTED).collect();
    format!("{head:?}… ({n} characters)")
}

pub use cid::{CidError, Codec, ContentId};
pub use did::{Did, DidError};
pub use signed::{Message, SignError, Signed, Signer};
