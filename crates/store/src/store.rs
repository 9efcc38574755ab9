//! [`Store`]: objects in a redb file, encrypted, verified on every read.

use std::{
    collections::{HashMap, HashSet},
    io::{Read, Write},
    ops::Range,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use rayon::prelude::*;
use redb::{
    Database, Durability, MultimapTableDefinition, ReadOnlyTable, ReadTransaction,
    ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde_bytes::ByteBuf;
use sov_core::{Block, Codec, ContentId, Did, Signed, dagcbor};
use sov_identity::Keypair;
use zeroize::Zeroizing;

use crate::{
    Error, MAX_BLOCK, Result,
    blocks::{self, BLOCKS, Blocks, BlocksMut, LIVE},
    car::{self, CarReader},
    crypto::{self, Key},
    import::{Arrivals, ImportReader},
    manifest::{ChunkRef, Grant, META_AAD, Manifest, Meta},
    pack::Packs,
};

/// Read access to the blocks of a read transaction.
pub(crate) type ReadBlocks<'a> = Blocks<'a, ReadOnlyTable<&'static [u8], &'static [u8]>>;

/// object id → bytes the object's distinct blocks take.
pub(crate) const OBJECTS: TableDefinition<&[u8], u64> = TableDefinition::new("objects");
pub(crate) const GRANTS: MultimapTableDefinition<&[u8], &[u8]> =
    MultimapTableDefinition::new("grants");
pub(crate) const REFS: TableDefinition<&[u8], u64> = TableDefinition::new("refs");
/// add in progress → its start time; blocks of an add that never finished are collected.
pub(crate) const PENDING: TableDefinition<u64, u64> = TableDefinition::new("pending");

/// Content-defined chunking: at least 256 KiB, about 512 KiB, at most what keeps a sealed
/// block within [`MAX_BLOCK`].
const CHUNK_MIN: usize = 256 * 1024;
const CHUNK_AVG: usize = 512 * 1024;
const CHUNK_MAX: usize = MAX_BLOCK - crypto::SEAL_OVERHEAD;
/// Bytes per write transaction during `add`.
const BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Blocks verified together by `export_car`.
const EXPORT_BATCH: usize = 16;
/// Bytes of blocks read per batch during `get`.
const GET_BATCH: usize = 4 * 1024 * 1024;
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
}

/// Context strings for secrets derived from the identity seed.
const CONVERGENCE_CONTEXT: &str = "sov store 2026-11 convergence secret v1";
const GEAR_CONTEXT: &str = "sov store 2026-11 chunker gear seed v1";

/// Options for [`Store::add`].
#[derive(Debug, Clone)]
pub struct AddOptions {
    /// The name readers see.
    pub name: String,
    /// The media type.
    pub media_type: String,
    /// Creation time, seconds since the Unix epoch (the store reads no clock).
    pub created: u64,
}

/// What [`Store::add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The new object's id.
    pub id: ContentId,
    /// Plaintext bytes.
    pub size: u64,
    /// Chunks in the object.
    pub chunks: usize,
    /// Chunks that were not already stored (the rest were re-used).
    pub new_chunks: usize,
}

/// What this node knows about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object id.
    pub id: ContentId,
    /// Its owner.
    pub owner: Did,
    /// Creation time (Unix seconds), as the owner signed it.
    pub created: u64,
    /// Number of chunks.
    pub chunks: usize,
    /// Bytes of its blocks (ciphertext).
    pub stored_bytes: u64,
    /// Name, media type, size and hash, if this node can read the object.
    pub meta: Option<ObjectMeta>,
}

/// The sealed part of an object, as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The name.
    pub name: String,
    /// The media type.
    pub media_type: String,
    /// Plaintext length.
    pub size: u64,
    /// The plaintext hash (BLAKE3 over the chunks' BLAKE3 hashes).
    pub hash: [u8; 32],
}

/// The node's object store. Methods take `&self`; redb serialises writers.
pub struct Store {
    db: Database,
    packs: Packs,
    path: PathBuf,
    me: Keypair,
    convergence: Zeroizing<[u8; 32]>,
    gear_seed: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("me", &self.me.did())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Open (or create) the store at `path` for the node `me`.
    pub fn open(path: &Path, me: Keypair) -> Result<Self> {
        if !path.exists() {
            create_atomically(path)?;
        }
        // redb caches pages in memory (1 GiB by default); blocks stream through once, so a
        // small cache keeps a 1 GiB add or get from holding a gigabyte.
        let mut db = Database::builder()
            .set_cache_size(64 << 20)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse(path.to_owned()),
                e => Error::Db(format!("{}: {e}", path.display())),
            })?;
        // The database holds only the index (block bytes are in packs), so checking all of
        // it on every open is cheap, and a damaged file is refused here with one clear error
        // instead of failing somewhere inside redb later.
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => {} // repaired: redb rolled back to the last durable commit
            Err(e) => {
                return Err(Error::Corrupt(format!(
                    "{} is damaged and cannot be repaired: {e}",
                    path.display()
                )));
            }
        }
        // Only ciphertext is inside, but what the node holds is its own business.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        let w = db.begin_write()?;
        {
            w.open_table(BLOCKS)?;
            w.open_table(LIVE)?;
            w.open_table(OBJECTS)?;
            w.open_multimap_table(GRANTS)?;
            w.open_table(REFS)?;
            w.open_table(PENDING)?;
            w.open_table(crate::import::PINS)?;
        }
        w.commit()?;
        // Block bytes live in pack files beside the database; packs no committed
        // transaction knows are garbage from a crash, removed here.
        let recorded = {
            let r = db.begin_read()?;
            let mut ids = Vec::new();
            for entry in r.open_table(LIVE)?.iter()? {
                ids.push(entry?.0.value());
            }
            ids
        };
        let packs = Packs::open(&packs_dir(path), &recorded)?;
        let w = db.begin_write()?;
        if blocks::migrate_pieces(&w, &packs)? > 0 {
            packs.sync()?;
        }
        w.commit()?;
        let convergence = me.derive_secret(CONVERGENCE_CONTEXT);
        let gear = me.derive_secret(GEAR_CONTEXT);
        let gear_seed = u64::from_le_bytes(gear[..8].try_into().expect("8 bytes"));
        let store = Self {
            db,
            packs,
            path: path.to_owned(),
            me,
            convergence,
            gear_seed,
        };
        store.collect_unfinished()?;
        Ok(store)
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    pub(crate) fn packs(&self) -> &Packs {
        &self.packs
    }

    /// The blocks, read through `r`.
    pub(crate) fn block_reader(&self, r: &ReadTransaction) -> Result<ReadBlocks<'_>> {
        Ok(Blocks {
            index: r.open_table(BLOCKS)?,
            packs: &self.packs,
        })
    }

    /// The blocks, read and written through `w`.
    pub(crate) fn block_writer<'t>(&self, w: &'t WriteTransaction) -> Result<BlocksMut<'_, 't>> {
        BlocksMut::open(w, &self.packs)
    }

    /// Commit `w` durably. Every durable commit goes through here: redb's durable commit
    /// also makes earlier non-durable ones durable, so the pack bytes any of them points at
    /// are synced first.
    pub(crate) fn commit(&self, w: WriteTransaction) -> Result<()> {
        self.packs.sync()?;
        w.commit()?;
        Ok(())
    }

    /// Reclaim space: packs (other than the one being appended to) whose live blocks fill
    /// less than half of them are rewritten, their live blocks appended to the active pack,
    /// and deleted. A reader still holding a snapshot taken before may then fail to find a
    /// moved block's old pack (a `Corrupt` error naming the pack); reading again works.
    pub(crate) fn compact(&self) -> Result<()> {
        let active = self.packs.active_id();
        let mut victims = Vec::new();
        {
            let r = self.db.begin_read()?;
            for entry in r.open_table(LIVE)?.iter()? {
                let (id, live) = entry?;
                let (id, live) = (id.value(), live.value());
                if id != active && live.saturating_mul(2) < self.packs.file_len(id)?.max(1) {
                    victims.push(id);
                }
            }
        }
        if victims.is_empty() {
            return Ok(());
        }
        let w = self.db.begin_write()?;
        {
            let mut blocks = self.block_writer(&w)?;
            for (cid, loc) in blocks.in_packs(&victims)? {
                let bytes = self.packs.read(loc)?;
                let new = self.packs.append(&bytes)?;
                blocks.relocate(&cid, new)?;
            }
            for id in &victims {
                blocks.forget_pack(*id)?;
            }
        }
        self.commit(w)?;
        for id in victims {
            self.packs.delete(id)?;
        }
        Ok(())
    }

    /// The identity this store reads and signs as.
    pub fn identity(&self) -> &Keypair {
        &self.me
    }

    /// Remove the blocks of adds that never finished (the process died mid-add).
    fn collect_unfinished(&self) -> Result<()> {
        let r = self.db.begin_read()?;
        if r.open_table(PENDING)?.is_empty()? {
            return Ok(());
        }
        drop(r);
        let w = self.db.begin_write()?;
        {
            let refs = w.open_table(REFS)?;
            let mut blocks = self.block_writer(&w)?;
            for cid in blocks.all()? {
                if refs.get(cid.as_slice())?.is_none() {
                    blocks.remove(&cid)?;
                }
            }
            w.open_table(PENDING)?.retain(|_, _| false)?;
        }
        self.commit(w)?;
        self.compact()
    }

    /// Add the bytes of `input` as a new object owned by this node. `progress` is called with
    /// the number of plaintext bytes processed so far.
    pub fn add(
        &self,
        mut input: impl Read,
        opts: AddOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Added> {
        let ticket = rand_u64();
        let mut w = self.db.begin_write()?;
        w.open_table(PENDING)?.insert(ticket, opts.created)?;
        w.set_durability(Durability::None)?;
        w.commit()?;

        // Three stages on bounded queues, so reading, sealing and writing overlap:
        // this thread reads, chunks and hashes the plaintext; a sealing stage encrypts and
        // addresses chunks on all cores; a writer stores the blocks (not yet durable).
        let written = AtomicU64::new(0);
        let (read, write) = std::thread::scope(|s| {
            let (plain_tx, plain_rx) = mpsc::sync_channel::<Plain>(PLAIN_QUEUE);
            let (sealed_tx, sealed_rx) = mpsc::sync_channel::<Vec<Sealed>>(SEALED_QUEUE);
            s.spawn(|| self.seal_stage(plain_rx, sealed_tx));
            let writer = s.spawn(|| self.write_stage(sealed_rx, &written));
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
                        fastcdc::v2020::FastCDC::with_level_and_seed(
                            &buf,
                            CHUNK_MIN,
                            CHUNK_AVG,
                            CHUNK_MAX,
                            fastcdc::v2020::Normalization::Level1,
                            self.gear_seed,
                        )
                        .map(|c| c.offset..c.offset + c.length)
                        .collect();
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

        let w = self.db.begin_write()?;
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
    fn write_stage(&self, rx: mpsc::Receiver<Vec<Sealed>>, written: &AtomicU64) -> Result<Written> {
        let mut chunks = Vec::new();
        let mut plain_hashes = blake3::Hasher::new();
        let mut stored_here = HashSet::new();
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
            let mut w = self.db.begin_write()?;
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
                    written.fetch_add(
                        (sealed.block.len() - crypto::SEAL_OVERHEAD) as u64,
                        Ordering::Relaxed,
                    );
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

    fn make_grant(
        &self,
        object: &ContentId,
        object_key: &[u8; 32],
        reader: &Did,
    ) -> Result<(ContentId, Vec<u8>)> {
        let w = crypto::wrap_key(object_key, object, reader);
        let grant = Grant {
            object: *object,
            reader: *reader,
            ephemeral: ByteBuf::from(w.ephemeral.to_vec()),
            wrapped: ByteBuf::from(w.sealed),
        };
        let bytes = Signed::sign(grant, &self.me)
            .and_then(|s| s.encode())
            .map_err(invalid)?;
        Ok((ContentId::of(Codec::DagCbor, &bytes), bytes))
    }

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

    fn open_importing(&self, reader: &ImportReader, grants: &[Block]) -> Result<Meta> {
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
    fn write_plaintext(
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
                                Error::Corrupt(format!("block {} is missing", c.cid))
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

    /// What this node knows about `id`.
    pub fn info(&self, id: &ContentId) -> Result<ObjectInfo> {
        let r = self.db.begin_read()?;
        let stored = r
            .open_table(OBJECTS)?
            .get(id.to_bytes().as_slice())?
            .map(|v| v.value())
            .ok_or(Error::NotFound(*id))?;
        let blocks = self.block_reader(&r)?;
        let manifest = self.manifest(&blocks, id)?;
        let meta = match self.object_key(&r, id, &manifest) {
            Ok(key) => Some(open_meta(&key, &manifest)?),
            Err(Error::NoGrant { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(info(id, &manifest, stored, meta.as_ref()))
    }

    /// Every object in the store, oldest first.
    pub fn list(&self) -> Result<Vec<ObjectInfo>> {
        let ids: Vec<ContentId> = {
            let r = self.db.begin_read()?;
            let objects = r.open_table(OBJECTS)?;
            let mut ids = Vec::new();
            for entry in objects.iter()? {
                let (k, _) = entry?;
                ids.push(
                    ContentId::from_bytes(k.value())
                        .map_err(|e| Error::Corrupt(format!("object key: {e}")))?,
                );
            }
            ids
        };
        let mut all = ids
            .iter()
            .map(|id| self.info(id))
            .collect::<Result<Vec<_>>>()?;
        all.sort_by_key(|o| (o.created, o.id));
        Ok(all)
    }

    /// How many blocks the store holds, and their total size in bytes.
    pub fn block_stats(&self) -> Result<(u64, u64)> {
        let r = self.db.begin_read()?;
        self.block_reader(&r)?.stats()
    }

    /// Whether the object is stored here.
    pub fn contains(&self, id: &ContentId) -> Result<bool> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(OBJECTS)?
            .get(id.to_bytes().as_slice())?
            .is_some())
    }

    /// Let `reader` read object `id`: wraps the object key for their X25519 key. Only the
    /// owner can grant. Granting twice to the same reader returns the existing grant.
    pub fn grant(&self, id: &ContentId, reader: &Did) -> Result<ContentId> {
        let r = self.db.begin_read()?;
        let blocks = self.block_reader(&r)?;
        let manifest = self.manifest(&blocks, id)?;
        if manifest.owner != self.me.did() {
            return Err(Error::NotOwner {
                object: *id,
                owner: manifest.owner,
            });
        }
        if let Some((gid, _)) = self
            .grants(&r, id, &manifest)?
            .into_iter()
            .find(|(_, g)| g.reader == *reader)
        {
            return Ok(gid);
        }
        let key = self.object_key(&r, id, &manifest)?;
        drop((blocks, r));
        let (gid, bytes) = self.make_grant(id, &key, reader)?;
        let w = self.db.begin_write()?;
        {
            self.block_writer(&w)?.put(&gid, &bytes)?;
            w.open_multimap_table(GRANTS)?
                .insert(id.to_bytes().as_slice(), gid.to_bytes().as_slice())?;
            bump_ref(&w, &gid, 1)?;
            let mut objects = w.open_table(OBJECTS)?;
            let stored = objects
                .get(id.to_bytes().as_slice())?
                .map(|v| v.value())
                .ok_or(Error::NotFound(*id))?;
            objects.insert(id.to_bytes().as_slice(), stored + bytes.len() as u64)?;
        }
        self.commit(w)?;
        Ok(gid)
    }

    /// The readers granted access to `id` (the owner included).
    pub fn readers(&self, id: &ContentId) -> Result<Vec<Did>> {
        let r = self.db.begin_read()?;
        let manifest = self.manifest(&self.block_reader(&r)?, id)?;
        Ok(self
            .grants(&r, id, &manifest)?
            .into_iter()
            .map(|(_, g)| g.reader)
            .collect())
    }

    /// Remove object `id` and every block no other object uses.
    pub fn remove(&self, id: &ContentId) -> Result<()> {
        let w = self.db.begin_write()?;
        {
            let key = id.to_bytes();
            if w.open_table(OBJECTS)?.remove(key.as_slice())?.is_none() {
                return Err(Error::NotFound(*id));
            }
            w.open_table(crate::import::PINS)?.remove(key.as_slice())?;
            let manifest = self.manifest(&*self.block_writer(&w)?, id)?;
            let grant_ids: Vec<Vec<u8>> = {
                let mut grants = w.open_multimap_table(GRANTS)?;
                let mut ids = Vec::new();
                for g in grants.remove_all(key.as_slice())? {
                    ids.push(g?.value().to_vec());
                }
                ids
            };
            let mut used: HashSet<Vec<u8>> =
                manifest.chunks.iter().map(|c| c.cid.to_bytes()).collect();
            used.insert(key);
            used.extend(grant_ids);
            let mut refs = w.open_table(REFS)?;
            let mut blocks = self.block_writer(&w)?;
            for cid in used {
                let n = refs.get(cid.as_slice())?.map(|v| v.value()).unwrap_or(0);
                if n <= 1 {
                    refs.remove(cid.as_slice())?;
                    blocks.remove(&cid)?;
                } else {
                    refs.insert(cid.as_slice(), n - 1)?;
                }
            }
        }
        self.commit(w)?;
        // The object is gone either way; space not reclaimed now is reclaimed by the next
        // removal's compaction.
        let _ = self.compact();
        Ok(())
    }

    /// Write object `id` as a CAR v1 file: manifest, grants, then each distinct chunk once.
    /// Every block is verified against its CID on the way out.
    pub fn export_car(&self, id: &ContentId, out: &mut dyn Write) -> Result<()> {
        let r = self.db.begin_read()?;
        let blocks = self.block_reader(&r)?;
        let manifest = self.manifest(&blocks, id)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
        car::write_header(&mut out, id)?;
        car::write_block(&mut out, id, &blocks.read(id)?)?;
        for (gid, _) in self.grants(&r, id, &manifest)? {
            car::write_block(&mut out, &gid, &blocks.read(&gid)?)?;
        }
        let mut seen = HashSet::new();
        let distinct: Vec<ContentId> = manifest
            .chunks
            .iter()
            .map(|c| c.cid)
            .filter(|cid| seen.insert(*cid))
            .collect();
        // Read a batch, check its blocks against their CIDs on all cores, write it in order.
        for batch in distinct.chunks(EXPORT_BATCH) {
            let raw = batch
                .iter()
                .map(|cid| {
                    blocks
                        .get_unverified(cid)?
                        .ok_or_else(|| Error::Corrupt(format!("block {cid} is missing")))
                })
                .collect::<Result<Vec<_>>>()?;
            if let Some(bad) = batch
                .par_iter()
                .zip(&raw)
                .find_any(|(cid, bytes)| !cid.matches(bytes))
            {
                return Err(Error::Corrupt(format!(
                    "block {} does not match its CID",
                    bad.0
                )));
            }
            for (cid, bytes) in batch.iter().zip(&raw) {
                car::write_block(&mut out, cid, bytes)?;
            }
        }
        out.flush()?;
        Ok(())
    }

    /// Import an object from a CAR v1 stream: its root must be a manifest, every other block
    /// one of its chunks or a grant signed by its owner, each block must match its CID and
    /// every chunk must be present. All of it is checked inside one write transaction that
    /// is committed only if everything holds: a bad CAR leaves nothing behind.
    pub fn import_car(&self, input: impl Read) -> Result<ContentId> {
        let mut reader = CarReader::new(std::io::BufReader::with_capacity(1 << 20, input))?;
        let [root] = reader.roots() else {
            return Err(Error::Invalid("a sov CAR has exactly one root".into()));
        };
        let root = *root;
        if root.codec() != Codec::DagCbor {
            return Err(Error::Invalid(format!("root {root} is not a manifest")));
        }
        let w = self.db.begin_write()?;
        match self.import_into(&w, root, &mut reader) {
            Ok(()) => {
                self.commit(w)?;
                Ok(root)
            }
            Err(e) => {
                w.abort()?;
                Err(e)
            }
        }
    }

    fn import_into<R: Read>(
        &self,
        w: &WriteTransaction,
        root: ContentId,
        reader: &mut CarReader<R>,
    ) -> Result<()> {
        let mut structured: HashMap<ContentId, Vec<u8>> = HashMap::new();
        let mut raw_seen: HashSet<ContentId> = HashSet::new();
        {
            let mut blocks = self.block_writer(w)?;
            while let Some((cid, data)) = reader.next_block()? {
                match cid.codec() {
                    Codec::DagCbor => {
                        if data.len() > MAX_BLOCK {
                            return Err(Error::Invalid(format!("block {cid} exceeds 1 MiB")));
                        }
                        if structured.len() >= 4096 {
                            return Err(Error::Invalid("too many grant blocks".into()));
                        }
                        structured.insert(cid, data);
                    }
                    Codec::Raw => {
                        if raw_seen.insert(cid) {
                            blocks.put(&cid, &data)?;
                        }
                    }
                }
            }
        }
        let manifest_bytes = structured
            .remove(&root)
            .ok_or_else(|| Error::Invalid(format!("CAR does not contain its root {root}")))?;
        let manifest = decode_manifest(&root, &manifest_bytes)?;
        let wanted: HashSet<ContentId> = manifest.chunks.iter().map(|c| c.cid).collect();
        if let Some(extra) = raw_seen.difference(&wanted).next() {
            return Err(Error::Invalid(format!(
                "CAR holds block {extra}, which object {root} does not use"
            )));
        }
        {
            let blocks = self.block_writer(w)?;
            for c in &manifest.chunks {
                match blocks.len(&c.cid)? {
                    Some(len) if len == c.size => {}
                    Some(_) => {
                        return Err(Error::Invalid(format!(
                            "chunk {} has another size than the manifest says",
                            c.cid
                        )));
                    }
                    None => {
                        return Err(Error::Invalid(format!(
                            "CAR lacks chunk {} of object {root}",
                            c.cid
                        )));
                    }
                }
            }
        }
        let mut grants = Vec::new();
        for (gid, bytes) in structured {
            check_grant(&root, &manifest, &gid, &bytes)?;
            grants.push((gid, bytes));
        }
        commit_object(w, &self.packs, &root, &manifest_bytes, &manifest, &grants)
    }

    /// The verified manifest of `id`.
    fn manifest(
        &self,
        blocks: &Blocks<'_, impl ReadableTable<&'static [u8], &'static [u8]>>,
        id: &ContentId,
    ) -> Result<Manifest> {
        let bytes = blocks.get(id)?.ok_or(Error::NotFound(*id))?;
        decode_manifest(id, &bytes)
    }

    /// The object's verified grants.
    fn grants(
        &self,
        r: &redb::ReadTransaction,
        id: &ContentId,
        manifest: &Manifest,
    ) -> Result<Vec<(ContentId, Grant)>> {
        let table = r.open_multimap_table(GRANTS)?;
        let blocks = self.block_reader(r)?;
        let mut out = Vec::new();
        for gid in table.get(id.to_bytes().as_slice())? {
            let gid = ContentId::from_bytes(gid?.value())
                .map_err(|e| Error::Corrupt(format!("grant id: {e}")))?;
            let bytes = blocks.read(&gid)?;
            out.push((gid, check_grant(id, manifest, &gid, &bytes)?));
        }
        Ok(out)
    }

    /// The object key, unwrapped from this node's grant.
    fn object_key(
        &self,
        r: &redb::ReadTransaction,
        id: &ContentId,
        manifest: &Manifest,
    ) -> Result<Key> {
        self.key_from_grants(
            id,
            self.grants(r, id, manifest)?.into_iter().map(|(_, g)| g),
        )
    }

    /// The object key, unwrapped from whichever of `grants` (checked) is for this node.
    fn key_from_grants(
        &self,
        id: &ContentId,
        grants: impl IntoIterator<Item = Grant>,
    ) -> Result<Key> {
        let me = self.me.did();
        for g in grants {
            if g.reader != me {
                continue;
            }
            let eph: [u8; 32] = g
                .ephemeral
                .as_slice()
                .try_into()
                .map_err(|_| Error::Invalid("grant ephemeral key is not 32 bytes".into()))?;
            return crypto::unwrap_key(&self.me, id, &eph, &g.wrapped).map_err(|_| {
                Error::Invalid(format!("the grant of object {id} to {me} does not open"))
            });
        }
        Err(Error::NoGrant {
            object: *id,
            reader: me,
        })
    }
}

/// The directory of the pack files of the store at `path`.
fn packs_dir(path: &Path) -> PathBuf {
    path.with_extension("packs")
}

/// Create an empty database beside `path` and link it into place only once it is whole: a
/// process killed while creating the store must not leave a file that is not yet a redb
/// database (every later open would refuse it). Linking (not renaming) never replaces a
/// store another process created meanwhile.
fn create_atomically(path: &Path) -> Result<()> {
    let tmp = path.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    Database::builder()
        .create(&tmp)
        .map_err(|e| Error::Db(format!("{}: {e}", tmp.display())))?;
    match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(std::fs::remove_file(&tmp)?),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(std::fs::remove_file(&tmp)?),
        // A file system without hard links: rename (the race above is then unguarded).
        Err(_) => Ok(std::fs::rename(&tmp, path)?),
    }
}

/// Decode and verify a manifest block: a valid signature by the owner it names.
pub(crate) fn decode_manifest(id: &ContentId, bytes: &[u8]) -> Result<Manifest> {
    let signed = Signed::<Manifest>::decode(bytes)
        .map_err(|e| Error::Invalid(format!("manifest {id}: {e}")))?;
    let manifest = signed.body();
    if signed.signer() != manifest.owner {
        return Err(Error::Invalid(format!(
            "manifest {id} is signed by {}, not its owner {}",
            signed.signer(),
            manifest.owner
        )));
    }
    if manifest.version != 1 {
        return Err(Error::Invalid(format!(
            "manifest {id} has version {}",
            manifest.version
        )));
    }
    if let Some(c) = manifest
        .chunks
        .iter()
        .find(|c| c.cid.codec() != Codec::Raw || c.size > MAX_BLOCK as u64)
    {
        return Err(Error::Invalid(format!(
            "manifest {id}: bad chunk {}",
            c.cid
        )));
    }
    Ok(signed.into_body())
}

/// Decode and verify a grant block of object `id`.
pub(crate) fn check_grant(
    id: &ContentId,
    manifest: &Manifest,
    gid: &ContentId,
    bytes: &[u8],
) -> Result<Grant> {
    let signed =
        Signed::<Grant>::decode(bytes).map_err(|e| Error::Invalid(format!("grant {gid}: {e}")))?;
    if signed.signer() != manifest.owner {
        return Err(Error::Invalid(format!(
            "grant {gid} is signed by {}, not the owner of {id}",
            signed.signer()
        )));
    }
    if signed.body().object != *id {
        return Err(Error::Invalid(format!("grant {gid} is for another object")));
    }
    Ok(signed.into_body())
}

/// Check one chunk's block against its CID and decrypt it.
/// Decrypt a chunk (already checked against its CID, or known to be).
fn open_block(id: &ContentId, chunk: &ChunkRef, key: &ByteBuf, block: &[u8]) -> Result<Vec<u8>> {
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

fn open_meta(key: &[u8; 32], manifest: &Manifest) -> Result<Meta> {
    let plain = Zeroizing::new(
        crypto::open(key, &manifest.meta, META_AAD)
            .map_err(|_| Error::Invalid("object metadata does not decrypt".into()))?,
    );
    let meta: Meta =
        dagcbor::from_slice(&plain).map_err(|e| Error::Invalid(format!("object metadata: {e}")))?;
    if meta.keys.len() != manifest.chunks.len() || meta.hash.len() != 32 {
        return Err(Error::Invalid(
            "object metadata does not match its chunk list".into(),
        ));
    }
    Ok(meta)
}

fn info(id: &ContentId, manifest: &Manifest, stored: u64, meta: Option<&Meta>) -> ObjectInfo {
    ObjectInfo {
        id: *id,
        owner: manifest.owner,
        created: manifest.created,
        chunks: manifest.chunks.len(),
        stored_bytes: stored,
        meta: meta.map(|m| ObjectMeta {
            name: m.name.clone(),
            media_type: m.media_type.clone(),
            size: m.size,
            hash: m.hash.as_slice().try_into().unwrap_or([0; 32]),
        }),
    }
}

fn total_size(manifest: &Manifest) -> u64 {
    let distinct: HashMap<ContentId, u64> =
        manifest.chunks.iter().map(|c| (c.cid, c.size)).collect();
    distinct.values().sum()
}

/// Count one more use of each distinct block of a new object; returns the bytes they take.
pub(crate) fn add_refs(
    w: &WriteTransaction,
    packs: &Packs,
    id: &ContentId,
    manifest: &Manifest,
    grants: &[ContentId],
) -> Result<u64> {
    let mut distinct: HashMap<ContentId, u64> = HashMap::new();
    for c in &manifest.chunks {
        distinct.insert(c.cid, c.size);
    }
    distinct.insert(*id, 0);
    for g in grants {
        distinct.insert(*g, 0);
    }
    let blocks = BlocksMut::open(w, packs)?;
    let mut stored = 0;
    for cid in distinct.keys() {
        bump_ref(w, cid, 1)?;
        stored += blocks.len(cid)?.unwrap_or(0);
    }
    Ok(stored)
}

pub(crate) fn bump_ref(w: &WriteTransaction, cid: &ContentId, by: u64) -> Result<()> {
    let mut refs = w.open_table(REFS)?;
    let key = cid.to_bytes();
    let n = refs.get(key.as_slice())?.map(|v| v.value()).unwrap_or(0);
    refs.insert(key.as_slice(), n + by)?;
    Ok(())
}

pub(crate) fn invalid(e: impl std::fmt::Display) -> Error {
    Error::Invalid(e.to_string())
}

pub(crate) fn rand_u64() -> u64 {
    use rand::Rng as _;
    rand::rng().next_u64()
}

/// Record object `root` (its manifest and chunks already checked, every chunk stored) with
/// the checked `grants`, or add the grants it lacks if the object is already here.
pub(crate) fn commit_object(
    w: &WriteTransaction,
    packs: &Packs,
    root: &ContentId,
    manifest_bytes: &[u8],
    manifest: &Manifest,
    grants: &[(ContentId, Vec<u8>)],
) -> Result<()> {
    let root = *root;
    let is_new = w
        .open_table(OBJECTS)?
        .get(root.to_bytes().as_slice())?
        .is_none();
    let mut new_grants = Vec::new();
    {
        let mut blocks = BlocksMut::open(w, packs)?;
        let mut grant_table = w.open_multimap_table(GRANTS)?;
        if is_new {
            blocks.put(&root, manifest_bytes)?;
        }
        for (gid, bytes) in grants {
            if grant_table.insert(root.to_bytes().as_slice(), gid.to_bytes().as_slice())? {
                continue; // already had it
            }
            blocks.put(gid, bytes)?;
            new_grants.push(*gid);
        }
    }
    if is_new {
        let stored = add_refs(w, packs, &root, manifest, &new_grants)?;
        w.open_table(OBJECTS)?
            .insert(root.to_bytes().as_slice(), stored)?;
    } else {
        for g in &new_grants {
            bump_ref(w, g, 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::ReadableMultimapTable as _;

    use super::*;

    fn opts(name: &str) -> AddOptions {
        AddOptions {
            name: name.into(),
            media_type: "application/octet-stream".into(),
            created: 0,
        }
    }

    fn random(len: usize, seed: u8) -> Vec<u8> {
        let mut v = vec![0u8; len];
        blake3::Hasher::new_derive_key("sov store pack test")
            .update(&[seed])
            .finalize_xof()
            .fill(&mut v);
        v
    }

    fn read(store: &Store, id: &ContentId) -> Vec<u8> {
        let mut out = Vec::new();
        store.get(id, &mut out).unwrap();
        out
    }

    fn pack_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    /// Packs are 4 MiB in unit tests: objects of 10 MiB span several. Removing one object
    /// deletes the packs only it used and rewrites the mixed ones, so the files shrink to
    /// about what the remaining object needs, and everything still reads, also after a
    /// reopen; a pack file no transaction recorded (a crash's leftover) is removed at open.
    #[test]
    fn removal_reclaims_space_by_compacting_packs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let packs = packs_dir(&path);
        let me = Keypair::generate();
        let (a_data, b_data) = (random(10 << 20, 1), random(10 << 20, 2));
        let store = Store::open(&path, me.clone()).unwrap();
        let a = store.add(&a_data[..], opts("a"), &mut |_| {}).unwrap().id;
        let b = store.add(&b_data[..], opts("b"), &mut |_| {}).unwrap().id;
        let before = pack_bytes(&packs);
        assert!(before >= 20 << 20, "{before}");
        assert!(std::fs::read_dir(&packs).unwrap().count() >= 5);

        store.remove(&a).unwrap();
        let (_, live) = store.block_stats().unwrap();
        let after = pack_bytes(&packs);
        // Only the active pack may still hold garbage.
        assert!(
            after <= live + PACK_SIZE_FOR_TESTS,
            "{after} bytes for {live} live"
        );
        assert!(after < before * 3 / 4, "{after} of {before}");
        assert_eq!(read(&store, &b), b_data);
        drop(store);

        std::fs::write(packs.join("000000ff.pack"), b"left by a crash").unwrap();
        let store = Store::open(&path, me).unwrap();
        assert!(!packs.join("000000ff.pack").exists());
        assert_eq!(read(&store, &b), b_data);
        store.remove(&b).unwrap();
        assert_eq!(store.block_stats().unwrap(), (0, 0));
        assert!(pack_bytes(&packs) <= PACK_SIZE_FOR_TESTS);
    }

    const PACK_SIZE_FOR_TESTS: u64 = crate::pack::PACK_SIZE;

    /// A store made by the first layout (blocks as pieces inside redb) is moved into packs
    /// when opened, and its objects read as before.
    #[test]
    fn a_store_of_the_first_layout_is_migrated_into_packs() {
        const PIECES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("block_pieces");
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old.redb"), dir.path().join("new.redb"));
        let me = Keypair::generate();
        let data = random(3 << 20, 3);
        // Make a store the current way, then rewrite its blocks as the first layout did.
        let id = {
            let store = Store::open(&old, me.clone()).unwrap();
            store.add(&data[..], opts("old"), &mut |_| {}).unwrap().id
        };
        {
            let store = Store::open(&old, me.clone()).unwrap();
            let r = store.db.begin_read().unwrap();
            let blocks = store.block_reader(&r).unwrap();
            let cids = blocks.all().unwrap();
            let db = Database::create(&new).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut pieces = w.open_table(PIECES).unwrap();
                for cid in &cids {
                    let cid = ContentId::from_bytes(cid).unwrap();
                    let bytes = blocks.read(&cid).unwrap();
                    let parts: Vec<&[u8]> = if bytes.is_empty() {
                        vec![&[]]
                    } else {
                        bytes.chunks(256 * 1024 - 512).collect()
                    };
                    for (i, part) in parts.into_iter().enumerate() {
                        let mut key = cid.to_bytes();
                        key.extend_from_slice(&(i as u16).to_be_bytes());
                        pieces.insert(key.as_slice(), part).unwrap();
                    }
                }
                for table in [OBJECTS, REFS] {
                    let from = r.open_table(table).unwrap();
                    let mut to = w.open_table(table).unwrap();
                    for e in from.iter().unwrap() {
                        let (k, v) = e.unwrap();
                        to.insert(k.value(), v.value()).unwrap();
                    }
                }
                let from = r.open_multimap_table(GRANTS).unwrap();
                let mut to = w.open_multimap_table(GRANTS).unwrap();
                for e in from.iter().unwrap() {
                    let (k, vs) = e.unwrap();
                    for v in vs {
                        to.insert(k.value(), v.unwrap().value()).unwrap();
                    }
                }
            }
            w.commit().unwrap();
        }
        let store = Store::open(&new, me).unwrap();
        assert_eq!(read(&store, &id), data);
        let r = store.db.begin_read().unwrap();
        assert!(r.list_tables().unwrap().all(|t| {
            use redb::TableHandle as _;
            t.name() != "block_pieces"
        }));
    }
}
