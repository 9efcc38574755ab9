//! Reading an object: every block checked against its CID and decrypted before a byte of
//! it is written out, in batches; also while an object is still arriving from peers.

use std::{io::Write, sync::mpsc};

use rayon::prelude::*;
use redb::ReadableDatabase;
use serde_bytes::ByteBuf;
use sov_core::{Block, ContentId};

use crate::{
    Error, MAX_BLOCK, Result,
    crypto::{self},
    grants::check_grant,
    import::{Arrivals, ImportReader},
    manifest::{ChunkRef, Manifest, Meta},
    store::{ObjectInfo, ObjectMeta, Store, info, open_meta, total_size},
};

/// Bytes of blocks read per batch during `get`.
const GET_BATCH: usize = 4 * 1024 * 1024;

impl Store {
    /// Read the object `id` and write its plaintext to `out`, chunk by chunk. Every block is
    /// checked against its CID and decrypted (authenticated) before any of its bytes are
    /// written; the whole plaintext hash is checked at the end, and a mismatch is an error.
    pub fn get(&self, id: &ContentId, out: &mut dyn Write) -> Result<ObjectInfo> {
        let r = self.db.begin_read()?;
        let blocks = self.block_reader(&r)?;
        let manifest = self.manifest(&blocks, id)?;
        let key = self.object_key(&r, id, &manifest)?;
        let meta = open_meta(&key, &manifest)?;
        drop((blocks, r));
        self.write_plaintext(id, &manifest, &meta, None, out)?;
        Ok(info(id, &manifest, total_size(&manifest), Some(&meta)))
    }

    /// What a reader of an object being imported learns from its `grants` (blocks received
    /// with it, each checked here): name, media type, size, hash. `NoGrant` if none is for
    /// this node.
    pub fn meta_importing(&self, reader: &ImportReader, grants: &[Block]) -> Result<ObjectMeta> {
        let meta = self.open_importing(reader, grants)?;
        Ok(info(&reader.root, &reader.manifest, 0, Some(&meta))
            .meta
            .expect("info keeps the meta it is given"))
    }

    pub(crate) fn open_importing(&self, reader: &ImportReader, grants: &[Block]) -> Result<Meta> {
        let (id, manifest) = (&reader.root, &reader.manifest);
        let checked = grants
            .iter()
            .filter(|g| g.data().len() <= MAX_BLOCK)
            .filter_map(|g| check_grant(id, manifest, g.cid(), g.data()).ok());
        let key = self.key_from_grants(id, checked)?;
        open_meta(&key, manifest)
    }

    /// Like [`Store::get`], for an object still being imported: each chunk is read as soon
    /// as the import has stored it, checked and decrypted as `get` does, so the plaintext
    /// streams out while the rest arrives. Fails if the import stops first.
    pub fn get_importing(
        &self,
        reader: &ImportReader,
        grants: &[Block],
        out: &mut dyn Write,
    ) -> Result<ObjectInfo> {
        let meta = self.open_importing(reader, grants)?;
        let (id, manifest) = (&reader.root, &reader.manifest);
        self.write_plaintext(id, manifest, &meta, Some(&reader.arrivals), out)?;
        Ok(info(id, manifest, total_size(manifest), Some(&meta)))
    }

    /// Write the plaintext of object `id` to `out`; with `arrivals`, wait for each chunk
    /// to be stored before reading it.
    pub(crate) fn write_plaintext(
        &self,
        id: &ContentId,
        manifest: &Manifest,
        meta: &Meta,
        arrivals: Option<&Arrivals>,
        out: &mut dyn Write,
    ) -> Result<()> {
        // Three stages on bounded queues: a fetcher reads raw blocks from redb; an opening
        // stage checks each against its CID and decrypts it on all cores; this thread hashes
        // and writes the plaintext in order.
        let (mut hasher, mut written) = (blake3::Hasher::new(), 0u64);
        let result = std::thread::scope(|s| -> Result<()> {
            // Each raw block with whether it still needs its CID check.
            type Raw = Vec<(Vec<u8>, bool)>;
            let (raw_tx, raw_rx) = mpsc::sync_channel::<Result<(usize, Raw)>>(2);
            type Opened = Vec<(Vec<u8>, blake3::Hash)>;
            let (open_tx, open_rx) = mpsc::sync_channel::<Result<Opened>>(2);
            let chunks = &manifest.chunks;
            s.spawn(move || {
                let fetch = || -> Result<()> {
                    let mut r = self.db.begin_read()?;
                    let mut table = self.block_reader(&r)?;
                    let mut start = 0;
                    while start < chunks.len() {
                        let (mut batch, mut bytes) = (Vec::new(), 0u64);
                        while start + batch.len() < chunks.len() && bytes < GET_BATCH as u64 {
                            let c = &chunks[start + batch.len()];
                            let mut check = true;
                            if let Some(arrivals) = arrivals {
                                if !batch.is_empty() && !arrivals.is_stored(&c.cid) {
                                    break; // pass on what is here before waiting
                                }
                                arrivals.wait(&c.cid)?;
                                // Checked on arrival moments ago (the AEAD still guards
                                // against any change since): one hash pass fewer.
                                check = !arrivals.was_checked(&c.cid);
                                if !table.contains(&c.cid)? {
                                    // Stored after this snapshot was taken: look again.
                                    drop(table);
                                    r = self.db.begin_read()?;
                                    table = self.block_reader(&r)?;
                                }
                            }
                            let block = table.get_unverified(&c.cid)?.ok_or_else(|| {
                                // An import that stopped takes its chunks away with it.
                                match arrivals.and_then(Arrivals::stopped) {
                                    Some(reason) => {
                                        Error::Invalid(format!("chunk {}: {reason}", c.cid))
                                    }
                                    None => Error::Corrupt(format!("block {} is missing", c.cid)),
                                }
                            })?;
                            bytes += block.len() as u64;
                            batch.push((block, check));
                        }
                        let n = batch.len();
                        if raw_tx.send(Ok((start, batch))).is_err() {
                            return Ok(());
                        }
                        start += n;
                    }
                    Ok(())
                };
                if let Err(e) = fetch() {
                    let _ = raw_tx.send(Err(e));
                }
            });
            let keys = &meta.keys;
            s.spawn(move || {
                for batch in raw_rx {
                    let opened = batch.and_then(|(start, sealed)| {
                        sealed
                            .par_iter()
                            .enumerate()
                            .map(|(i, (block, check))| {
                                let chunk = &chunks[start + i];
                                if *check && !chunk.cid.matches(block) {
                                    return Err(Error::Corrupt(format!(
                                        "block {} does not match its CID",
                                        chunk.cid
                                    )));
                                }
                                let plain = open_block(id, chunk, &keys[start + i], block)?;
                                let hash = blake3::hash(&plain);
                                Ok((plain, hash))
                            })
                            .collect::<Result<Vec<_>>>()
                    });
                    let failed = opened.is_err();
                    if open_tx.send(opened).is_err() || failed {
                        return;
                    }
                }
            });
            for batch in open_rx {
                for (p, chunk_hash) in batch? {
                    hasher.update(chunk_hash.as_bytes());
                    written += p.len() as u64;
                    if written > meta.size {
                        return Err(Error::Corrupt(format!(
                            "object {id} is longer than recorded"
                        )));
                    }
                    out.write_all(&p)?;
                }
            }
            Ok(())
        });
        result?;
        out.flush()?;
        if written != meta.size || hasher.finalize().as_bytes() != meta.hash.as_slice() {
            return Err(Error::Corrupt(format!(
                "object {id}: plaintext does not match its recorded length and hash"
            )));
        }
        Ok(())
    }
}

/// Check one chunk's block against its CID and decrypt it.
/// Decrypt a chunk (already checked against its CID, or known to be).
pub(crate) fn open_block(
    id: &ContentId,
    chunk: &ChunkRef,
    key: &ByteBuf,
    block: &[u8],
) -> Result<Vec<u8>> {
    let key: &[u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| Error::Invalid(format!("object {id}: chunk key is not 32 bytes")))?;
    crypto::open_chunk(key, block).map_err(|_| {
        Error::Corrupt(format!(
            "chunk {} of object {id} does not decrypt",
            chunk.cid
        ))
    })
}
