//! Blocks: bytes in pack files ([`crate::pack`]), indexed in redb by CID.
//!
//! [`Blocks`] reads through the index of a read or write transaction; [`BlocksMut`] also
//! writes, keeping each pack's count of live bytes (which decides when a pack is compacted)
//! in the same transaction as the index.

use redb::{ReadableTable, Table, TableDefinition, TableHandle as _, WriteTransaction};
use sov_core::ContentId;

use crate::{
    Error, Result,
    pack::{Loc, Packs},
};

/// CID bytes → where the block is ([`Loc`], 16 bytes).
pub(crate) const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("block_index");
/// Pack id → bytes of the blocks the index points to in it.
pub(crate) const LIVE: TableDefinition<u32, u64> = TableDefinition::new("pack_live_bytes");
/// The first layout kept blocks inside redb as pieces under `cid ‖ index (u16 BE)`; stores
/// made by it are moved into packs when opened ([`migrate_pieces`]).
const PIECES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("block_pieces");

/// Read access to the blocks of one transaction.
pub(crate) struct Blocks<'p, T> {
    pub(crate) index: T,
    pub(crate) packs: &'p Packs,
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> Blocks<'_, T> {
    /// Where block `cid` is, if stored.
    pub(crate) fn loc(&self, cid: &ContentId) -> Result<Option<Loc>> {
        self.loc_of(&cid.to_bytes())
    }

    fn loc_of(&self, cid: &[u8]) -> Result<Option<Loc>> {
        match self.index.get(cid)? {
            Some(v) => Ok(Some(Loc::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Whether block `cid` is stored.
    pub(crate) fn contains(&self, cid: &ContentId) -> Result<bool> {
        Ok(self.index.get(cid.to_bytes().as_slice())?.is_some())
    }

    /// The stored length of block `cid`, if stored.
    pub(crate) fn len(&self, cid: &ContentId) -> Result<Option<u64>> {
        Ok(self.loc(cid)?.map(|l| u64::from(l.len)))
    }

    /// The bytes of block `cid`, checked against the CID; `Ok(None)` if absent.
    pub(crate) fn get(&self, cid: &ContentId) -> Result<Option<Vec<u8>>> {
        let Some(out) = self.get_unverified(cid)? else {
            return Ok(None);
        };
        if !cid.matches(&out) {
            return Err(Error::Corrupt(format!(
                "block {cid} does not match its CID"
            )));
        }
        Ok(Some(out))
    }

    /// The bytes of block `cid`, *not* checked against the CID: the caller must check them
    /// before use (`Store::get` does so in parallel with decryption).
    pub(crate) fn get_unverified(&self, cid: &ContentId) -> Result<Option<Vec<u8>>> {
        match self.loc(cid)? {
            Some(loc) => Ok(Some(self.packs.read(loc)?)),
            None => Ok(None),
        }
    }

    /// The bytes of block `cid`, checked; a missing block is corruption (something refers
    /// to it).
    pub(crate) fn read(&self, cid: &ContentId) -> Result<Vec<u8>> {
        self.get(cid)?
            .ok_or_else(|| Error::Corrupt(format!("block {cid} is missing")))
    }

    /// The CID bytes of every stored block.
    pub(crate) fn all(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for entry in self.index.iter()? {
            out.push(entry?.0.value().to_vec());
        }
        Ok(out)
    }

    /// How many blocks are stored, and their bytes.
    pub(crate) fn stats(&self) -> Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        for entry in self.index.iter()? {
            n += 1;
            bytes += u64::from(Loc::decode(entry?.1.value())?.len);
        }
        Ok((n, bytes))
    }
}

/// Read and write access to the blocks of one write transaction.
pub(crate) struct BlocksMut<'p, 't> {
    blocks: Blocks<'p, Table<'t, &'static [u8], &'static [u8]>>,
    live: Table<'t, u32, u64>,
}

impl<'p, 't> std::ops::Deref for BlocksMut<'p, 't> {
    type Target = Blocks<'p, Table<'t, &'static [u8], &'static [u8]>>;
    fn deref(&self) -> &Self::Target {
        &self.blocks
    }
}

impl<'p, 't> BlocksMut<'p, 't> {
    pub(crate) fn open(w: &'t WriteTransaction, packs: &'p Packs) -> Result<Self> {
        Ok(Self {
            blocks: Blocks {
                index: w.open_table(BLOCKS)?,
                packs,
            },
            live: w.open_table(LIVE)?,
        })
    }

    /// Store `bytes` as block `cid` unless it is already there; returns whether it was new.
    pub(crate) fn put(&mut self, cid: &ContentId, bytes: &[u8]) -> Result<bool> {
        let key = cid.to_bytes();
        if self.blocks.index.get(key.as_slice())?.is_some() {
            return Ok(false);
        }
        let loc = if bytes.is_empty() {
            Loc {
                pack: self.blocks.packs.active_id(),
                offset: 0,
                len: 0,
            }
        } else {
            self.blocks.packs.append(cid, bytes)?
        };
        self.blocks
            .index
            .insert(key.as_slice(), loc.encode().as_slice())?;
        self.add_live(loc.pack, i128::from(loc.len))?;
        Ok(true)
    }

    /// Point block `cid` at `loc` (compaction moved it), keeping live counts right.
    pub(crate) fn relocate(&mut self, cid: &[u8], loc: Loc) -> Result<()> {
        let old = self
            .blocks
            .index
            .insert(cid, loc.encode().as_slice())?
            .map(|v| Loc::decode(v.value()))
            .transpose()?;
        if let Some(old) = old {
            self.add_live(old.pack, -i128::from(old.len))?;
        }
        self.add_live(loc.pack, i128::from(loc.len))
    }

    /// Remove block `cid` (its bytes become garbage in their pack).
    pub(crate) fn remove(&mut self, cid: &[u8]) -> Result<()> {
        let old = self
            .blocks
            .index
            .remove(cid)?
            .map(|v| Loc::decode(v.value()))
            .transpose()?;
        if let Some(old) = old {
            self.add_live(old.pack, -i128::from(old.len))?;
        }
        Ok(())
    }

    /// Every (CID bytes, location) in packs `packs`.
    pub(crate) fn in_packs(&self, packs: &[u32]) -> Result<Vec<(Vec<u8>, Loc)>> {
        let mut out = Vec::new();
        for entry in self.blocks.index.iter()? {
            let (k, v) = entry?;
            let loc = Loc::decode(v.value())?;
            if packs.contains(&loc.pack) {
                out.push((k.value().to_vec(), loc));
            }
        }
        Ok(out)
    }

    /// Forget pack `id` in the live counts (it is about to be deleted).
    pub(crate) fn forget_pack(&mut self, id: u32) -> Result<()> {
        self.live.remove(id)?;
        Ok(())
    }

    fn add_live(&mut self, pack: u32, by: i128) -> Result<()> {
        let now = self.live.get(pack)?.map_or(0, |v| v.value());
        let next = (i128::from(now) + by).clamp(0, i128::from(u64::MAX));
        self.live.insert(pack, next as u64)?;
        Ok(())
    }
}

/// Move the blocks of a store made by the first layout (pieces inside redb) into packs, in
/// one transaction; returns how many blocks moved.
pub(crate) fn migrate_pieces(w: &WriteTransaction, packs: &Packs) -> Result<u64> {
    if !w.list_tables()?.any(|t| t.name() == PIECES.name()) {
        return Ok(0);
    }
    let mut moved = 0;
    {
        let pieces = w.open_table(PIECES)?;
        let mut blocks = BlocksMut::open(w, packs)?;
        let mut current: Option<(Vec<u8>, Vec<u8>)> = None;
        for entry in pieces.iter()? {
            let (k, v) = entry?;
            let k = k.value();
            let split = k
                .len()
                .checked_sub(2)
                .ok_or_else(|| Error::Corrupt("a block piece key is too short".into()))?;
            let (cid, index) = k.split_at(split);
            if index == [0, 0] {
                if let Some((cid, bytes)) = current.take() {
                    moved += u64::from(store_piece_block(&mut blocks, &cid, &bytes)?);
                }
                current = Some((cid.to_vec(), Vec::new()));
            }
            match &mut current {
                Some((c, bytes)) if c.as_slice() == cid => bytes.extend_from_slice(v.value()),
                _ => return Err(Error::Corrupt("a block is missing its first piece".into())),
            }
        }
        if let Some((cid, bytes)) = current.take() {
            moved += u64::from(store_piece_block(&mut blocks, &cid, &bytes)?);
        }
    }
    w.delete_table(PIECES)?;
    Ok(moved)
}

fn store_piece_block(blocks: &mut BlocksMut<'_, '_>, cid: &[u8], bytes: &[u8]) -> Result<bool> {
    let cid = ContentId::from_bytes(cid)
        .map_err(|e| Error::Corrupt(format!("a stored block's CID: {e}")))?;
    blocks.put(&cid, bytes)
}
