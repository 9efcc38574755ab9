//! Blocks in redb, stored as pieces.
//!
//! redb's allocator gives each B-tree page a power-of-two size, so a leaf that holds one
//! ~1 MiB or ~0.5 MiB value takes 2 MiB or 1 MiB: measured 2–3× the data on disk and
//! 150–250 MB/s to write. Pieces of 256 KiB − 512 B fill their pages: 1.06× on disk and
//! ~670 MB/s (see docs/BENCHMARKS.md). A block is the pieces under `cid ‖ index (u16 BE)`,
//! read back in key order and checked against its CID.

use redb::{ReadableTable, Table, TableDefinition};
use sov_core::ContentId;

use crate::{Error, Result};

/// Pieces of every block: `cid bytes ‖ piece index` → piece.
pub(crate) const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("block_pieces");

/// Largest piece: fits a 256 KiB page with redb's leaf overhead.
pub(crate) const PIECE: usize = 256 * 1024 - 512;

fn key(cid: &[u8], index: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(cid.len() + 2);
    k.extend_from_slice(cid);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Store `bytes` as block `cid` unless it is already there; returns whether it was new.
pub(crate) fn put(t: &mut Table<&[u8], &[u8]>, cid: &ContentId, bytes: &[u8]) -> Result<bool> {
    if t.get(key(&cid.to_bytes(), 0).as_slice())?.is_some() {
        return Ok(false);
    }
    put_new(t, cid, bytes)?;
    Ok(true)
}

/// Store `bytes` as block `cid` without looking first. Looking costs a read of the ~256 KiB
/// leaf the key falls into, so callers that know whether a block exists (from `refs`) use
/// this. Writing a block that does exist rewrites the same bytes: harmless.
pub(crate) fn put_new(t: &mut Table<&[u8], &[u8]>, cid: &ContentId, bytes: &[u8]) -> Result<()> {
    let id = cid.to_bytes();
    if bytes.is_empty() {
        t.insert(key(&id, 0).as_slice(), &[][..])?;
        return Ok(());
    }
    for (i, piece) in bytes.chunks(PIECE).enumerate() {
        let index = u16::try_from(i).map_err(|_| Error::TooLarge("block too large".into()))?;
        t.insert(key(&id, index).as_slice(), piece)?;
    }
    Ok(())
}

/// The bytes of block `cid`, checked against the CID; `Ok(None)` if absent.
pub(crate) fn get(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    cid: &ContentId,
) -> Result<Option<Vec<u8>>> {
    let Some(out) = get_unverified(t, cid)? else {
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
/// before use (`get` does so in parallel with decryption).
pub(crate) fn get_unverified(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    cid: &ContentId,
) -> Result<Option<Vec<u8>>> {
    let id = cid.to_bytes();
    let (first, last) = (key(&id, 0), key(&id, u16::MAX));
    let mut out = Vec::new();
    let mut found = false;
    for (expected, entry) in t.range(first.as_slice()..=last.as_slice())?.enumerate() {
        let (k, v) = entry?;
        if k.value()[id.len()..] != (expected as u16).to_be_bytes() {
            return Err(Error::Corrupt(format!("block {cid} has a missing piece")));
        }
        found = true;
        out.extend_from_slice(v.value());
    }
    Ok(found.then_some(out))
}

/// The bytes of block `cid`, checked; a missing block is corruption (something refers to it).
pub(crate) fn read(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    cid: &ContentId,
) -> Result<Vec<u8>> {
    get(t, cid)?.ok_or_else(|| Error::Corrupt(format!("block {cid} is missing")))
}

/// Remove block `cid` (all its pieces).
pub(crate) fn remove(t: &mut Table<&[u8], &[u8]>, cid: &[u8]) -> Result<()> {
    let (first, last) = (key(cid, 0), key(cid, u16::MAX));
    t.retain_in(first.as_slice()..=last.as_slice(), |_, _| false)?;
    Ok(())
}

/// The CID bytes of every stored block.
pub(crate) fn all(t: &impl ReadableTable<&'static [u8], &'static [u8]>) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for entry in t.iter()? {
        let (k, _) = entry?;
        let k = k.value();
        if k.len() >= 2 && k[k.len() - 2..] == [0, 0] {
            out.push(k[..k.len() - 2].to_vec());
        }
    }
    Ok(out)
}

/// How many blocks are stored, and their bytes.
pub(crate) fn stats(t: &impl ReadableTable<&'static [u8], &'static [u8]>) -> Result<(u64, u64)> {
    let (mut n, mut bytes) = (0, 0);
    for entry in t.iter()? {
        let (k, v) = entry?;
        let k = k.value();
        if k.len() >= 2 && k[k.len() - 2..] == [0, 0] {
            n += 1;
        }
        bytes += v.value().len() as u64;
    }
    Ok((n, bytes))
}
