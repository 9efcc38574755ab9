//! Content ids: CIDv1 with a BLAKE3-256 multihash (code `0x1e`), for raw blocks (`0x55`,
//! encrypted chunks) and DAG-CBOR blocks (`0x71`, manifests and grants).
//!
//! BLAKE3 rather than SHA-256: every byte stored is hashed at least once on add and get, and
//! BLAKE3 runs several times faster than SHA-256 on the CPUs sov targets; kubo and the Go/JS
//! multiformats libraries know the `blake3` multihash, so IPFS tooling still verifies our blocks.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Multihash code of BLAKE3 (256-bit output).
pub const BLAKE3_MULTIHASH: u64 = 0x1e;

/// The IPLD codecs sov's blocks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    /// Opaque bytes (`raw`, 0x55): encrypted chunks.
    Raw,
    /// Canonical DAG-CBOR (0x71): manifests, grants.
    DagCbor,
}

impl Codec {
    /// The multicodec code.
    pub const fn code(self) -> u64 {
        match self {
            Codec::Raw => 0x55,
            Codec::DagCbor => 0x71,
        }
    }

    fn from_code(code: u64) -> Option<Self> {
        match code {
            0x55 => Some(Codec::Raw),
            0x71 => Some(Codec::DagCbor),
            _ => None,
        }
    }
}

/// Why bytes or a string are not one of sov's content ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CidError {
    /// Not a parsable CID at all.
    #[error("not a CID: {0}")]
    Malformed(String),
    /// A CIDv0 (`Qm…`) or other version.
    #[error("only CIDv1 is supported, found version {0}")]
    Version(u64),
    /// A codec sov does not store.
    #[error("unsupported CID codec 0x{0:x} (sov uses raw 0x55 and dag-cbor 0x71)")]
    Codec(u64),
    /// A hash function other than BLAKE3-256.
    #[error("unsupported multihash 0x{code:x} of {size} bytes (sov uses blake3, 0x1e, 32 bytes)")]
    Hash {
        /// the multihash code
        code: u64,
        /// the digest length
        size: u8,
    },
    /// A string CID not in base32 lower case (`b…`).
    #[error("CID strings must be base32 (start with `b`)")]
    Base,
}

/// A CIDv1 whose multihash is BLAKE3-256: the address of one block.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId {
    codec: Codec,
    digest: [u8; 32],
}

impl ContentId {
    /// The id of `bytes` stored as a block of `codec`.
    pub fn of(codec: Codec, bytes: &[u8]) -> Self {
        Self {
            codec,
            digest: *blake3::hash(bytes).as_bytes(),
        }
    }

    /// The id made from an already computed BLAKE3 digest.
    pub fn from_digest(codec: Codec, digest: [u8; 32]) -> Self {
        Self { codec, digest }
    }

    /// Whether `bytes` hash to this id.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        // Timing does not matter: both sides are public.
        blake3::hash(bytes).as_bytes() == &self.digest
    }

    /// The block codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The BLAKE3 digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    fn to_cid(self) -> cid::Cid {
        let mh = cid::multihash::Multihash::<64>::wrap(BLAKE3_MULTIHASH, &self.digest)
            .expect("a 32-byte digest fits a 64-byte multihash");
        cid::Cid::new_v1(self.codec.code(), mh)
    }

    fn from_cid(c: &cid::Cid) -> Result<Self, CidError> {
        if c.version() != cid::Version::V1 {
            return Err(CidError::Version(0));
        }
        let codec = Codec::from_code(c.codec()).ok_or(CidError::Codec(c.codec()))?;
        let mh = c.hash();
        let digest: [u8; 32] = mh.digest().try_into().map_err(|_| CidError::Hash {
            code: mh.code(),
            size: mh.size(),
        })?;
        if mh.code() != BLAKE3_MULTIHASH {
            return Err(CidError::Hash {
                code: mh.code(),
                size: mh.size(),
            });
        }
        Ok(Self { codec, digest })
    }

    /// The binary CID (36 bytes: version, codec, multihash code, length, digest).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_cid().to_bytes()
    }

    /// Parse a binary CID; it must be exactly one CID with nothing after it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CidError> {
        let (id, used) = Self::read_prefix(bytes)?;
        if used != bytes.len() {
            return Err(CidError::Malformed(format!(
                "{} trailing bytes after the CID",
                bytes.len() - used
            )));
        }
        Ok(id)
    }

    /// Parse a binary CID at the start of `bytes`; returns it and how many bytes it used.
    pub fn read_prefix(bytes: &[u8]) -> Result<(Self, usize), CidError> {
        let mut reader = bytes;
        let c =
            cid::Cid::read_bytes(&mut reader).map_err(|e| CidError::Malformed(e.to_string()))?;
        let used = bytes.len() - reader.len();
        Ok((Self::from_cid(&c)?, used))
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // CIDv1's default string form is base32 lower case, `b…`.
        fmt::Display::fmt(&self.to_cid(), f)
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

impl FromStr for ContentId {
    type Err = CidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.starts_with('b') {
            return Err(if s.starts_with("Qm") {
                CidError::Version(0)
            } else {
                CidError::Base
            });
        }
        let c = cid::Cid::try_from(s).map_err(|e| CidError::Malformed(e.to_string()))?;
        Self::from_cid(&c)
    }
}

/// In DAG-CBOR a CID is tag 42 around the binary CID prefixed with a zero byte.
const CID_TAG: u64 = 42;

impl Serialize for ContentId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(37);
        bytes.push(0);
        bytes.extend_from_slice(&self.to_bytes());
        ciborium::tag::Required::<serde_bytes::ByteBuf, CID_TAG>(serde_bytes::ByteBuf::from(bytes))
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ContentId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ciborium::tag::Required(bytes) =
            ciborium::tag::Required::<serde_bytes::ByteBuf, CID_TAG>::deserialize(d)?;
        let inner = bytes
            .strip_prefix(&[0])
            .ok_or_else(|| serde::de::Error::custom("DAG-CBOR CID must start with a 0x00 byte"))?;
        ContentId::from_bytes(inner).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn string_forms_are_base32_v1() {
        let raw = ContentId::of(Codec::Raw, b"hello");
        let cbor = ContentId::of(Codec::DagCbor, b"hello");
        assert!(raw.to_string().starts_with("bafkr4i"), "{raw}");
        assert!(cbor.to_string().starts_with("bafyr4i"), "{cbor}");
        assert_eq!(raw.to_bytes().len(), 36);
    }

    #[test]
    fn rejects_foreign_cids() {
        // CIDv0 (sha2-256, dag-pb)
        assert_eq!(
            "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG".parse::<ContentId>(),
            Err(CidError::Version(0))
        );
        // CIDv1 raw sha2-256
        assert!(matches!(
            "bafkreidon73zkcrwdb5iafqtijxildoonbwnpv7dyd6ef3qdgads2jc4su".parse::<ContentId>(),
            Err(CidError::Hash { code: 0x12, .. })
        ));
        assert!(matches!("zzz".parse::<ContentId>(), Err(CidError::Base)));
        assert!(ContentId::from_bytes(&[1, 0x55, 0x1e, 0x20]).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..256), cbor in any::<bool>()) {
            let codec = if cbor { Codec::DagCbor } else { Codec::Raw };
            let id = ContentId::of(codec, &data);
            prop_assert!(id.matches(&data));
            prop_assert_eq!(id.to_string().parse::<ContentId>().unwrap(), id);
            prop_assert_eq!(ContentId::from_bytes(&id.to_bytes()).unwrap(), id);
        }

        #[test]
        fn from_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ContentId::from_bytes(&data);
        }
    }
}
