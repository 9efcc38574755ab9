//! [`Block`]: bytes together with the CID they were checked against.

use crate::ContentId;

/// A block whose bytes have been checked against its CID.
///
/// The only way to make one is [`Block::verified`], so a `Block` handed between crates
/// (the network fetched it, the store keeps it) needs no second hash pass.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    cid: ContentId,
    data: Vec<u8>,
}

/// The bytes do not hash to the CID they came with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block does not match its CID {0}")]
pub struct BlockMismatch(pub ContentId);

impl Block {
    /// Check `data` against `cid`.
    pub fn verified(cid: ContentId, data: Vec<u8>) -> Result<Self, BlockMismatch> {
        if cid.matches(&data) {
            Ok(Self { cid, data })
        } else {
            Err(BlockMismatch(cid))
        }
    }

    /// The block's CID.
    pub fn cid(&self) -> &ContentId {
        &self.cid
    }

    /// The block's bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The bytes, giving up the block.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block({}, {} bytes)", self.cid, self.data.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Codec;

    #[test]
    fn only_matching_bytes_make_a_block() {
        let cid = ContentId::of(Codec::Raw, b"abc");
        assert_eq!(
            Block::verified(cid, b"abc".to_vec()).unwrap().data(),
            b"abc"
        );
        assert_eq!(
            Block::verified(cid, b"abd".to_vec()),
            Err(BlockMismatch(cid))
        );
    }
}
