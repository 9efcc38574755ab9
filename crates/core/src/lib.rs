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

/// RFC 3339 UTC time of Unix seconds, e.g. `2026-11-22T01:52:33Z` (Howard Hinnant's
/// days-to-civil algorithm; no clock is read: the caller passes the time).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

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
