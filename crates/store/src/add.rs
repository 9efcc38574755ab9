//! Adding an object: the plaintext is cut into content-defined chunks, each sealed under
//! its own convergent key on a pool of threads and written in large transactions, while
//! the next buffer is read; the signed manifest and the owner's grant come last.

use std::{
    collections::HashSet,
    io::Read,
    ops::Range,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use rayon::prelude::*;
use redb::{Durability, ReadableTable};
use serde_bytes::ByteBuf;
use sov_core::{Codec, ContentId, Signed, dagcbor};
use zeroize::Zeroizing;

use crate::{
    Error, MAX_BLOCK, Result,
    crypto::{self, Key},
    manifest::{ChunkRef, META_AAD, Manifest, Meta},
    store::{
        AddOptions, Added, GRANTS, OBJECTS, PENDING, REFS, Store, add_refs, decode_manifest,
        invalid, rand_u64,
    },
};

/// Content-defined chunking: at least 256 KiB, about 512 KiB, at most what keeps a sealed
/// block within [`MAX_BLOCK`].
const CHUNK_MIN: usize = 256 * 1024;
const CHUNK_AVG: usize = 512 * 1024;
/// The largest chunk whose padded block fits a block (a full-size chunk pads to a multiple of
/// 16 KiB).
const CHUNK_MAX: usize = MAX_BLOCK - 16 * 1024 - 64;
/// Bytes per write transaction during `add`.
const BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Plaintext read (and chunked) at a time by `add`.
const READ_BUFFER: usize = 16 * 1024 * 1024;
/// Queue bounds between the stages of `add`, in read buffers (~16 MiB each).
const PLAIN_QUEUE: usize = 2;
const SEALED_QUEUE: usize = 2;

/// One read buffer of `add` and the chunks cut in it.
struct Plain {
    buf: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

/// What the writer stage of `add` stored.
struct Written {
    chunks: Vec<ChunkRef>,
    keys: Vec<Key>,
    /// BLAKE3 over the chunks' plaintext hashes.
    hash: [u8; 32],
    new_chunks: usize,
}

/// One chunk, sealed: its convergent key, block id and block.
struct Sealed {
    key: Key,
    cid: ContentId,
    block: Vec<u8>,
    plain_hash: [u8; 32],
    plain_len: usize,
}

impl Store {
    /// Add the bytes of `input` as a new object owned by this node. `progress` is called with
    /// the number of plaintext bytes processed so far.
    ///
    /// An add that fails (bad input, a full disk, a closed reader) keeps nothing: the blocks
    /// it wrote are removed at once when no other add runs (else at the next open), and the
    /// space they took is reclaimed.
    pub fn add(
        &self,
        input: impl Read,
        opts: AddOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Added> {
        let ticket = rand_u64();
        let mut w = self.begin_write()?;
        w.open_table(PENDING)?.insert(ticket, opts.created)?;
        w.set_durability(Durability::None)?;
        w.commit()?;
        self.adds.fetch_add(1, Ordering::SeqCst);
        let mut stored = HashSet::new();
        let r = self.add_inner(input, opts, progress, ticket, &mut stored);
        let alone = self.adds.fetch_sub(1, Ordering::SeqCst) == 1;
        if r.is_err() && alone {
            // Only when no other add runs: another one may be about to count a block this
            // one wrote (the same content added twice at once).
            // A failed cleanup is not the add's error; the next open collects what is left.
            let _ = self.abandon(ticket, &stored);
        }
        r
    }

    /// Remove the blocks a failed add wrote (those no committed object uses) and its ticket,
    /// then reclaim their space.
    fn abandon(&self, ticket: u64, stored: &HashSet<ContentId>) -> Result<()> {
        let w = self.begin_write()?;
        {
            let refs = w.open_table(REFS)?;
            let mut blocks = self.block_writer(&w)?;
            for cid in stored {
                let key = cid.to_bytes();
                if refs.get(key.as_slice())?.is_none() {
                    blocks.remove(&key)?;
                }
            }
            w.open_table(PENDING)?.remove(ticket)?;
        }
        self.commit(w)?;
        self.compact()
    }

    fn add_inner(
        &self,
        mut input: impl Read,
        opts: AddOptions,
        progress: &mut dyn FnMut(u64),
        ticket: u64,
        stored_here: &mut HashSet<ContentId>,
    ) -> Result<Added> {
        // Three stages on bounded queues, so reading, sealing and writing overlap:
        // this thread reads, chunks and hashes the plaintext; a sealing stage encrypts and
        // addresses chunks on all cores; a writer stores the blocks (not yet durable).
        let written = AtomicU64::new(0);
        let (read, write) = std::thread::scope(|s| {
            let (plain_tx, plain_rx) = mpsc::sync_channel::<Plain>(PLAIN_QUEUE);
            let (sealed_tx, sealed_rx) = mpsc::sync_channel::<Vec<Sealed>>(SEALED_QUEUE);
            s.spawn(|| self.seal_stage(plain_rx, sealed_tx));
            let writer = s.spawn(|| self.write_stage(sealed_rx, &written, stored_here));
            let read = (|| -> Result<u64> {
                // Chunk over large read buffers: each buffer goes to the sealers whole, with
                // the chunk ranges, so no chunk is copied on its way there.
                let mut size = 0u64;
                let mut carry: Vec<u8> = Vec::new();
                loop {
                    let mut buf = Vec::with_capacity(READ_BUFFER);
                    buf.append(&mut carry);
                    let want = (READ_BUFFER - buf.len()) as u64;
                    (&mut input).take(want).read_to_end(&mut buf)?;
                    let eof = buf.len() < READ_BUFFER;
                    let mut ranges: Vec<Range<usize>> =
                        self.gear.ranges(&buf, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX);
                    // The last chunk was cut by the end of the buffer, not by the content:
                    // chunk it again together with what follows.
                    if !eof && let Some(last) = ranges.pop() {
                        carry = buf[last.start..].to_vec();
                        buf.truncate(last.start);
                    }
                    size += buf.len() as u64;
                    if !ranges.is_empty() && plain_tx.send(Plain { buf, ranges }).is_err() {
                        break; // the writer failed; its error is reported below
                    }
                    progress(written.load(Ordering::Relaxed));
                    if eof {
                        break;
                    }
                }
                Ok(size)
            })();
            drop(plain_tx);
            let write = writer.join().expect("the writer stage does not panic");
            (read, write)
        });
        let Written {
            chunks,
            keys,
            hash,
            new_chunks,
        } = write?;
        let size = read?;
        progress(size);

        let object_key = crypto::random_key();
        let meta = Meta {
            name: opts.name,
            media_type: opts.media_type,
            size,
            hash: ByteBuf::from(hash.to_vec()),
            keys: keys.iter().map(|k| ByteBuf::from(k.to_vec())).collect(),
        };
        let meta_bytes = Zeroizing::new(dagcbor::to_vec(&meta).map_err(invalid)?);
        let manifest = Manifest {
            version: 1,
            owner: self.me.did(),
            created: opts.created,
            chunks,
            meta: ByteBuf::from(crypto::seal(&object_key, &meta_bytes, META_AAD)),
        };
        let manifest = Signed::sign(manifest, &self.me)
            .and_then(|s| s.encode())
            .map_err(invalid)?;
        if manifest.len() > MAX_BLOCK {
            return Err(Error::TooLarge(format!(
                "{} chunks need a {} byte manifest; the limit is {MAX_BLOCK}",
                meta.keys.len(),
                manifest.len()
            )));
        }
        let id = ContentId::of(Codec::DagCbor, &manifest);
        let (grant_id, grant) = self.make_grant(&id, &object_key, &self.me.did())?;
        let decoded = decode_manifest(&id, &manifest)?;

        let w = self.begin_write()?;
        {
            {
                let mut blocks = self.block_writer(&w)?;
                blocks.put(&id, &manifest)?;
                blocks.put(&grant_id, &grant)?;
            }
            let stored = add_refs(&w, &self.packs, &id, &decoded, &[grant_id])?;
            w.open_table(OBJECTS)?
                .insert(id.to_bytes().as_slice(), stored)?;
            w.open_multimap_table(GRANTS)?
                .insert(id.to_bytes().as_slice(), grant_id.to_bytes().as_slice())?;
            w.open_table(PENDING)?.remove(ticket)?;
        }
        self.commit(w)?;
        Ok(Added {
            id,
            size,
            chunks: meta.keys.len(),
            new_chunks,
        })
    }

    /// Sealing stage of `add`: gathers chunks into batches and seals each batch on all cores.
    fn seal_stage(&self, rx: mpsc::Receiver<Plain>, tx: mpsc::SyncSender<Vec<Sealed>>) {
        let secret = &self.convergence;
        for Plain { buf, ranges } in rx {
            let sealed = ranges
                .into_par_iter()
                .map(|range| {
                    let plain = &buf[range];
                    let plain_hash = *blake3::hash(plain).as_bytes();
                    let key = crypto::chunk_key(secret, &plain_hash);
                    let block = crypto::seal_chunk(&key, plain);
                    let cid = ContentId::of(Codec::Raw, &block);
                    Sealed {
                        key,
                        cid,
                        block,
                        plain_hash,
                        plain_len: plain.len(),
                    }
                })
                .collect();
            if tx.send(sealed).is_err() {
                return;
            }
        }
    }

    /// Writer stage of `add`: stores sealed chunks in non-durable transactions (the object's
    /// final transaction makes them durable); returns the chunk list, keys and new count.
    fn write_stage(
        &self,
        rx: mpsc::Receiver<Vec<Sealed>>,
        written: &AtomicU64,
        stored_here: &mut HashSet<ContentId>,
    ) -> Result<Written> {
        let mut chunks = Vec::new();
        let mut plain_hashes = blake3::Hasher::new();
        let mut keys = Vec::new();
        let mut new_chunks = 0;
        while let Ok(first) = rx.recv() {
            let mut batches = vec![first];
            let mut bytes: usize = batches[0].iter().map(|s| s.block.len()).sum();
            while bytes < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(more) => {
                        bytes += more.iter().map(|s| s.block.len()).sum::<usize>();
                        batches.push(more);
                    }
                    Err(_) => break,
                }
            }
            let mut w = self.begin_write()?;
            w.set_durability(Durability::None)?;
            {
                let mut table = self.block_writer(&w)?;
                let refs = w.open_table(REFS)?;
                for sealed in batches.into_iter().flatten() {
                    // Every stored block is either counted in `refs` (its objects are
                    // committed) or was written by this add (unfinished adds' blocks are
                    // collected at open), so no lookup in the block table is needed.
                    let known = stored_here.contains(&sealed.cid)
                        || refs.get(sealed.cid.to_bytes().as_slice())?.is_some();
                    if !known {
                        table.put(&sealed.cid, &sealed.block)?;
                        stored_here.insert(sealed.cid);
                        new_chunks += 1;
                    }
                    written.fetch_add(sealed.plain_len as u64, Ordering::Relaxed);
                    chunks.push(ChunkRef {
                        cid: sealed.cid,
                        size: sealed.block.len() as u64,
                    });
                    keys.push(sealed.key);
                    plain_hashes.update(&sealed.plain_hash);
                }
            }
            w.commit()?;
        }
        Ok(Written {
            chunks,
            keys,
            hash: *plain_hashes.finalize().as_bytes(),
            new_chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_chunk_still_seals_into_a_block() {
        assert!(crypto::sealed_len(CHUNK_MAX) <= MAX_BLOCK);
        assert!(CHUNK_MAX.is_multiple_of(2) && CHUNK_MIN < CHUNK_AVG && CHUNK_AVG < CHUNK_MAX);
        // Full-size chunks pad by at most 16 KiB: under 3.2 % of the smallest.
        for len in [CHUNK_MIN, CHUNK_AVG, CHUNK_MAX] {
            let extra = crypto::sealed_len(len) - crypto::SEAL_OVERHEAD - len;
            assert!(extra <= 16 * 1024, "{len}: {extra}");
        }
    }
}
