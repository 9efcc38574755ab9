//! CAR v1 (content-addressed archive), as IPFS tooling reads and writes it:
//! `varint(len) ‖ DAG-CBOR {roots, version: 1}`, then frames `varint(len) ‖ CID ‖ block`.
//!
//! The reader is built for untrusted input: every length is bounded before anything is
//! allocated, and every block is checked against its CID before it is handed out.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sov_core::{ContentId, dagcbor};

/// Largest header accepted.
const MAX_HEADER: u64 = 64 * 1024;
/// Largest frame accepted: a CID and a block of at most [`crate::MAX_BLOCK`] bytes.
const MAX_FRAME: u64 = crate::MAX_BLOCK as u64 + 128;

/// Why a CAR could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CarError {
    /// The stream ended inside a header or frame.
    #[error("CAR is truncated")]
    Truncated,
    /// A length is larger than sov accepts.
    #[error("CAR {what} of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// header or frame
        what: &'static str,
        /// the claimed length
        len: u64,
        /// the limit
        limit: u64,
    },
    /// A varint is malformed.
    #[error("CAR has a malformed length prefix")]
    BadVarint,
    /// The header is not a CAR v1 header.
    #[error("CAR header: {0}")]
    BadHeader(String),
    /// The CAR names its blocks with another hash (a CAR written by another tool).
    #[error(
        "this CAR was written by another tool: its blocks are named by a hash sov does not use (sov names blocks by BLAKE3 and imports the CARs sov exports)"
    )]
    Foreign,
    /// A frame's CID is malformed or not one sov uses.
    #[error("CAR block CID: {0}")]
    BadCid(String),
    /// A block's bytes do not hash to its CID.
    #[error("CAR block {0} does not match its CID")]
    HashMismatch(ContentId),
    /// Reading failed.
    #[error("reading CAR: {0}")]
    Io(#[from] io::Error),
}

#[derive(Serialize, Deserialize)]
struct Header {
    roots: Vec<ContentId>,
    version: u64,
}

/// Write a CAR v1 header naming `root`.
pub fn write_header(out: &mut impl Write, root: &ContentId) -> io::Result<()> {
    let header = dagcbor::to_vec(&Header {
        roots: vec![*root],
        version: 1,
    })
    .map_err(io::Error::other)?;
    write_varint(out, header.len() as u64)?;
    out.write_all(&header)
}

/// Write one block frame.
pub fn write_block(out: &mut impl Write, cid: &ContentId, data: &[u8]) -> io::Result<()> {
    let cid = cid.to_bytes();
    write_varint(out, (cid.len() + data.len()) as u64)?;
    out.write_all(&cid)?;
    out.write_all(data)
}

/// Reads a CAR v1 stream block by block, verifying each block against its CID.
pub struct CarReader<R> {
    input: R,
    roots: Vec<ContentId>,
}

impl<R: Read> CarReader<R> {
    /// Read and check the header.
    pub fn new(mut input: R) -> Result<Self, CarError> {
        let len = read_varint(&mut input)?.ok_or(CarError::Truncated)?;
        if len > MAX_HEADER {
            return Err(CarError::TooLarge {
                what: "header",
                len,
                limit: MAX_HEADER,
            });
        }
        let bytes = read_exact(&mut input, len as usize)?;
        // The version first: a CAR v2 begins with a pragma that is only `{version: 2}`.
        #[derive(Serialize, Deserialize)]
        struct Version {
            version: u64,
        }
        match dagcbor::from_slice::<Version>(&bytes) {
            Ok(v) if v.version == 2 => {
                return Err(CarError::BadHeader(
                    "this is a CAR v2 file; sov reads CAR v1 (IPFS writes v1 with `ipfs dag export`)"
                        .into(),
                ));
            }
            _ => {}
        }
        let header: Header = dagcbor::from_slice(&bytes).map_err(|e| {
            let e = e.to_string();
            if e.contains("unsupported multihash") || e.contains("only CIDv1") {
                CarError::Foreign
            } else {
                CarError::BadHeader(e)
            }
        })?;
        if header.version != 1 {
            return Err(CarError::BadHeader(format!(
                "version {} (only CAR v1 is supported)",
                header.version
            )));
        }
        if header.roots.is_empty() {
            return Err(CarError::BadHeader("no roots".into()));
        }
        Ok(Self {
            input,
            roots: header.roots,
        })
    }

    /// The roots named in the header.
    pub fn roots(&self) -> &[ContentId] {
        &self.roots
    }

    /// The next verified block, or `None` at the end.
    pub fn next_block(&mut self) -> Result<Option<(ContentId, Vec<u8>)>, CarError> {
        let Some(len) = read_varint(&mut self.input)? else {
            return Ok(None);
        };
        if len > MAX_FRAME {
            return Err(CarError::TooLarge {
                what: "block",
                len,
                limit: MAX_FRAME,
            });
        }
        let mut frame = read_exact(&mut self.input, len as usize)?;
        let (cid, used) = ContentId::read_prefix(&frame).map_err(|e| match e {
            sov_core::CidError::Hash { .. } | sov_core::CidError::Version(_) => CarError::Foreign,
            e => CarError::BadCid(e.to_string()),
        })?;
        let data = frame.split_off(used);
        if !cid.matches(&data) {
            return Err(CarError::HashMismatch(cid));
        }
        Ok(Some((cid, data)))
    }
}

fn write_varint(out: &mut impl Write, mut v: u64) -> io::Result<()> {
    let mut buf = [0u8; 10];
    let mut n = 0;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[n] = byte;
            n += 1;
            break;
        }
        buf[n] = byte | 0x80;
        n += 1;
    }
    out.write_all(&buf[..n])
}

/// An unsigned LEB128 varint; `None` on a clean end of stream before its first byte.
fn read_varint(input: &mut impl Read) -> Result<Option<u64>, CarError> {
    let mut value = 0u64;
    for i in 0..9 {
        let mut byte = [0u8; 1];
        let n = loop {
            match input.read(&mut byte) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return if i == 0 {
                Ok(None)
            } else {
                Err(CarError::Truncated)
            };
        }
        value |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            // Minimal encoding: a final zero byte after the first would be padding.
            if i > 0 && byte[0] == 0 {
                return Err(CarError::BadVarint);
            }
            return Ok(Some(value));
        }
    }
    Err(CarError::BadVarint)
}

fn read_exact(input: &mut impl Read, len: usize) -> Result<Vec<u8>, CarError> {
    let mut buf = Vec::new();
    // `len` is bounded by the callers, so this allocation is too.
    input.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(CarError::Truncated);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sov_core::Codec;

    use super::*;

    fn car(blocks: &[Vec<u8>]) -> (Vec<u8>, Vec<ContentId>) {
        let ids: Vec<_> = blocks
            .iter()
            .map(|b| ContentId::of(Codec::Raw, b))
            .collect();
        let mut out = Vec::new();
        write_header(&mut out, &ids[0]).unwrap();
        for (id, b) in ids.iter().zip(blocks) {
            write_block(&mut out, id, b).unwrap();
        }
        (out, ids)
    }

    proptest! {
        #[test]
        fn round_trip(blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6)) {
            let (bytes, ids) = car(&blocks);
            let mut r = CarReader::new(&bytes[..]).unwrap();
            prop_assert_eq!(r.roots(), &ids[..1]);
            for (id, b) in ids.iter().zip(&blocks) {
                let (cid, data) = r.next_block().unwrap().unwrap();
                prop_assert_eq!(&cid, id);
                prop_assert_eq!(&data, b);
            }
            prop_assert!(r.next_block().unwrap().is_none());
        }

        #[test]
        fn varint_round_trip(v in any::<u64>().prop_map(|v| v >> 1)) {
            let mut buf = Vec::new();
            write_varint(&mut buf, v).unwrap();
            prop_assert_eq!(read_varint(&mut &buf[..]).unwrap(), Some(v));
        }

        #[test]
        fn any_flipped_byte_is_an_error_or_changes_what_is_read(pos in any::<usize>(), flip in 1u8..=255) {
            let blocks = [b"first block".to_vec(), b"second".to_vec()];
            let (mut bytes, ids) = car(&blocks);
            let pos = pos % bytes.len();
            bytes[pos] ^= flip;
            type Read = (Vec<ContentId>, Vec<(ContentId, Vec<u8>)>);
            let result = (|| -> Result<Read, CarError> {
                let mut r = CarReader::new(&bytes[..])?;
                let mut read = Vec::new();
                while let Some(b) = r.next_block()? { read.push(b); }
                Ok((r.roots().to_vec(), read))
            })();
            // Blocks always match their CIDs, so a flip either breaks parsing or changes the
            // root or the list of blocks: it can never pass as the original.
            let original: Vec<_> = ids.iter().copied().zip(blocks.iter().cloned()).collect();
            if let Ok((roots, read)) = result {
                prop_assert!(roots != ids[..1] || read != original);
            }
        }
    }

    #[test]
    fn huge_lengths_are_refused_before_allocating() {
        let mut bytes = Vec::new();
        write_varint(&mut bytes, u64::MAX >> 2).unwrap();
        assert!(matches!(
            CarReader::new(&bytes[..]),
            Err(CarError::TooLarge { .. })
        ));
        let (mut good, _) = car(&[b"x".to_vec()]);
        let hdr_len = good.len() - (1 + 36 + 1);
        good.truncate(hdr_len);
        write_varint(&mut good, 1 << 40).unwrap();
        let mut r = CarReader::new(&good[..]).unwrap();
        assert!(matches!(r.next_block(), Err(CarError::TooLarge { .. })));
    }
}
