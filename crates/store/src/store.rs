//! [`Store`]: objects in a redb file, encrypted, verified on every read.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use redb::{
    Database, MultimapTableDefinition, ReadOnlyTable, ReadTransaction, ReadableDatabase,
    ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use sov_core::{Codec, ContentId, Did, Signed, dagcbor};
use sov_identity::Keypair;
use zeroize::Zeroizing;

use crate::{
    Error, MAX_BLOCK, Result,
    blocks::{self, BLOCKS, Blocks, BlocksMut, LIVE},
    crypto::{self},
    manifest::{META_AAD, Manifest, Meta},
    pack::{Packs, Room},
};

/// Read access to the blocks of a read transaction.
pub(crate) type ReadBlocks<'a> = Blocks<'a, ReadOnlyTable<&'static [u8], &'static [u8]>>;

/// object id → bytes the object's distinct blocks take.
pub(crate) const OBJECTS: TableDefinition<&[u8], u64> = TableDefinition::new("objects");
pub(crate) const GRANTS: MultimapTableDefinition<&[u8], &[u8]> =
    MultimapTableDefinition::new("grants");
pub(crate) const REFS: TableDefinition<&[u8], u64> = TableDefinition::new("refs");
/// Pinned objects: object id → [`crate::Pin`] (replicas in the low 32 bits, bit 32 =
/// replica).
pub(crate) const PINS: TableDefinition<&[u8], u64> = TableDefinition::new("pins");
/// Replicas this node removed on purpose: object id → when (Unix seconds). A peer asking to
/// pin one again is refused, so a removal sticks and the owner places the copy elsewhere.
pub(crate) const DROPPED: TableDefinition<&[u8], u64> = TableDefinition::new("dropped_replicas");
/// The owner's pin mandate each replica was pinned with: object id → encoded signed mandate.
pub(crate) const MANDATES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pin_mandates");
/// add in progress → its start time; blocks of an add that never finished are collected.
pub(crate) const PENDING: TableDefinition<u64, u64> = TableDefinition::new("pending");
/// Facts about the store itself: name → value (`grants`: the grant version the owner's own
/// objects were last upgraded to).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Open and check the redb index at `path`. A damaged file is refused with
/// [`Error::Corrupt`] (redb's own panics on some damage are caught and said the same way),
/// so no damaged index is ever used.
fn open_db(path: &Path) -> Result<Database> {
    let damaged = |e: String| {
        Error::Corrupt(format!(
            "the store index {} is damaged ({e}); `sov store repair` rebuilds it from the pack files",
            path.display()
        ))
    };
    let opened = std::panic::catch_unwind(|| {
        // redb caches pages in memory (1 GiB by default); blocks stream through once, so a
        // small cache keeps a 1 GiB add or get from holding a gigabyte.
        let mut db = match Database::builder().set_cache_size(64 << 20).create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(Error::InUse(path.to_owned()));
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if e.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(Error::Io(e));
            }
            Err(e) => return Err(damaged(e.to_string())),
        };
        // The database holds only the index (block bytes are in packs), so checking all of
        // it on every open is cheap, and a damaged file is refused here with one clear error
        // instead of failing somewhere inside redb later. `Ok(false)`: repaired (redb rolled
        // back to the last durable commit).
        match db.check_integrity() {
            Ok(_) => Ok(db),
            Err(e) => Err(damaged(e.to_string())),
        }
    });
    match opened {
        Ok(r) => r,
        Err(panic) => Err(damaged(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "the database engine failed on it".into()),
        )),
    }
}

/// Bytes the file system must have free before the index is written (a transaction's pages
/// and redb's growth by a region).
const INDEX_ROOM: u64 = 16 << 20;

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

/// How to open a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most bytes the store's block files may hold (`None`: what the disk holds, less
    /// [`crate::RESERVE`]). Adds, imports and fetches past it fail with [`Error::Full`].
    pub capacity: Option<u64>,
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
    pub(crate) db: Database,
    pub(crate) packs: Packs,
    pub(crate) path: PathBuf,
    pub(crate) me: Keypair,
    pub(crate) convergence: Zeroizing<[u8; 32]>,
    pub(crate) gear: crate::chunker::Gear,
    /// Adds in progress.
    pub(crate) adds: std::sync::atomic::AtomicUsize,
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
        Self::open_with(path, me, StoreOptions::default())
    }

    /// [`Store::open`] with options (a capacity).
    pub fn open_with(path: &Path, me: Keypair, options: StoreOptions) -> Result<Self> {
        if !path.exists() {
            create_atomically(path)?;
        }
        let db = open_db(path)?;
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
            w.open_table(PINS)?;
            w.open_table(DROPPED)?;
            w.open_table(MANDATES)?;
            w.open_table(META)?;
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
        let packs = Packs::open(&packs_dir(path), &recorded, options.capacity)?;
        let w = db.begin_write()?;
        if blocks::migrate_pieces(&w, &packs)? > 0 {
            packs.sync()?;
        }
        w.commit()?;
        let convergence = me.derive_secret(CONVERGENCE_CONTEXT);
        let gear = crate::chunker::Gear::new(&me.derive_secret(GEAR_CONTEXT));
        let store = Self {
            db,
            packs,
            path: path.to_owned(),
            me,
            convergence,
            gear,
            adds: std::sync::atomic::AtomicUsize::new(0),
        };
        store.collect_unfinished()?;
        store.upgrade_grants_once()?;
        // A process killed mid-write may leave bytes past the last block the (durable) index
        // knows, even when no unfinished add was recorded (its non-durable commits were
        // lost): cut them off, and reclaim a mostly dead pack. Cheap when there is nothing
        // to do. Not fatal: the store works without it.
        let _ = store.compact();
        Ok(store)
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Begin a write transaction, if the disk has room for the index to commit it. redb
    /// cannot be used again after a failed write (every later call fails until the file is
    /// reopened), so a full disk must be refused before redb writes, not after.
    pub(crate) fn begin_write(&self) -> Result<WriteTransaction> {
        if let Some(free) = crate::pack::free_space(self.packs.dir())
            && free < INDEX_ROOM
        {
            return Err(Error::Full(format!(
                "{} has {free} bytes free; the index needs {INDEX_ROOM} to write safely",
                self.packs.dir().display()
            )));
        }
        Ok(self.db.begin_write()?)
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

    /// Reclaim space: packs whose live blocks fill less than half of them are rewritten,
    /// their live blocks appended to the active pack, and deleted. The pack being appended to
    /// counts too (its garbage is what killed or failed adds leave): it is closed first, and a
    /// new one begun. A reader still holding a snapshot taken before may then fail to find a
    /// moved block's old pack (a `Corrupt` error naming the pack); reading again works.
    pub(crate) fn compact(&self) -> Result<()> {
        // Appends happen only inside write transactions: holding one keeps the active pack
        // still while it is judged and closed.
        let w = self.begin_write()?;
        let active = self.packs.active_id();
        // What failed or killed adds leave is mostly the active pack's tail: cut it off.
        let end = self
            .block_writer(&w)?
            .in_packs(&[active])?
            .iter()
            .map(|(_, loc)| loc.offset + u64::from(loc.len))
            .max()
            .unwrap_or(0);
        self.packs.truncate_active(end)?;
        let mut victims = Vec::new();
        let mut rotate = false;
        {
            let live_table = w.open_table(LIVE)?;
            let mut seen_active = false;
            for entry in live_table.iter()? {
                let (id, live) = entry?;
                let (id, live) = (id.value(), live.value());
                let len = self.packs.file_len(id)?;
                if id == active {
                    seen_active = true;
                    // Closing the active pack costs a new file: only for real garbage.
                    if len.saturating_sub(live) >= (1 << 20).max(len / 2) {
                        rotate = true;
                        victims.push(id);
                    }
                } else if live.saturating_mul(2) < len.max(1) {
                    victims.push(id);
                }
            }
            if !seen_active && self.packs.file_len(active)? >= 1 << 20 {
                // No live block at all in the active pack.
                rotate = true;
                victims.push(active);
            }
        }
        if victims.is_empty() {
            return Ok(());
        }
        if rotate {
            self.packs.rotate()?;
        }
        {
            let mut blocks = self.block_writer(&w)?;
            for (cid, loc) in blocks.in_packs(&victims)? {
                let bytes = self.packs.read(loc)?;
                let id = ContentId::from_bytes(&cid)
                    .map_err(|e| Error::Corrupt(format!("block index key: {e}")))?;
                let new = self.packs.append_with(&id, &bytes, Room::Reclaim)?;
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
        let w = self.begin_write()?;
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

    /// Remove object `id` and every block no other object uses.
    pub fn remove(&self, id: &ContentId) -> Result<()> {
        let w = self.begin_write()?;
        {
            let key = id.to_bytes();
            if w.open_table(OBJECTS)?.remove(key.as_slice())?.is_none() {
                return Err(Error::NotFound(*id));
            }
            w.open_table(PINS)?.remove(key.as_slice())?;
            w.open_table(MANDATES)?.remove(key.as_slice())?;
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
}

/// The directory of the pack files of the store at `path`.
pub(crate) fn packs_dir(path: &Path) -> PathBuf {
    path.with_extension("packs")
}

/// Create an empty database beside `path` and link it into place only once it is whole: a
/// process killed while creating the store must not leave a file that is not yet a redb
/// database (every later open would refuse it). Linking (not renaming) never replaces a
/// store another process created meanwhile.
pub(crate) fn create_atomically(path: &Path) -> Result<()> {
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

pub(crate) fn open_meta(key: &[u8; 32], manifest: &Manifest) -> Result<Meta> {
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

pub(crate) fn info(
    id: &ContentId,
    manifest: &Manifest,
    stored: u64,
    meta: Option<&Meta>,
) -> ObjectInfo {
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

pub(crate) fn total_size(manifest: &Manifest) -> u64 {
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
/// the checked `grants`, or add the grants it lacks if the object is already here. Once the
/// object has a grant that hides its reader, grants that name theirs are dropped (its owner
/// replaced them) and not taken again.
pub(crate) fn commit_object(
    w: &WriteTransaction,
    packs: &Packs,
    root: &ContentId,
    manifest_bytes: &[u8],
    manifest: &Manifest,
    grants: &[(ContentId, Vec<u8>)],
) -> Result<()> {
    let root = *root;
    let key = root.to_bytes();
    let is_new = w.open_table(OBJECTS)?.get(key.as_slice())?.is_none();
    let hidden = |bytes: &[u8]| {
        matches!(
            crate::manifest::decode_grant(bytes),
            Ok((_, crate::manifest::AnyGrant::Hidden(_)))
        )
    };
    // The grants already here, and whether each hides its reader.
    let mut existing = Vec::new();
    if !is_new {
        use redb::ReadableMultimapTable as _;
        let blocks = BlocksMut::open(w, packs)?;
        let table = w.open_multimap_table(GRANTS)?;
        for gid in table.get(key.as_slice())? {
            let gid = ContentId::from_bytes(gid?.value())
                .map_err(|e| Error::Corrupt(format!("grant id: {e}")))?;
            let bytes = blocks.read(&gid)?;
            existing.push((gid, hidden(&bytes), bytes.len() as u64));
        }
    }
    let incoming: Vec<bool> = grants.iter().map(|(_, b)| hidden(b)).collect();
    let any_hidden = existing.iter().any(|e| e.1) || incoming.contains(&true);
    let mut new_grants = Vec::new();
    let mut added = 0u64;
    {
        let mut blocks = BlocksMut::open(w, packs)?;
        let mut grant_table = w.open_multimap_table(GRANTS)?;
        if is_new {
            blocks.put(&root, manifest_bytes)?;
        }
        for ((gid, bytes), is_hidden) in grants.iter().zip(incoming) {
            if any_hidden && !is_hidden {
                continue;
            }
            if grant_table.insert(key.as_slice(), gid.to_bytes().as_slice())? {
                continue; // already had it
            }
            blocks.put(gid, bytes)?;
            new_grants.push(*gid);
            added += bytes.len() as u64;
        }
    }
    if is_new {
        let stored = add_refs(w, packs, &root, manifest, &new_grants)?;
        w.open_table(OBJECTS)?.insert(key.as_slice(), stored)?;
        return Ok(());
    }
    for g in &new_grants {
        bump_ref(w, g, 1)?;
    }
    let mut removed = 0u64;
    if any_hidden {
        let mut grant_table = w.open_multimap_table(GRANTS)?;
        let mut refs = w.open_table(REFS)?;
        let mut blocks = BlocksMut::open(w, packs)?;
        for (gid, _, len) in existing.iter().filter(|e| !e.1) {
            let g = gid.to_bytes();
            grant_table.remove(key.as_slice(), g.as_slice())?;
            let n = refs.get(g.as_slice())?.map(|v| v.value()).unwrap_or(0);
            if n <= 1 {
                refs.remove(g.as_slice())?;
                blocks.remove(&g)?;
            } else {
                refs.insert(g.as_slice(), n - 1)?;
            }
            removed += len;
        }
    }
    let mut objects = w.open_table(OBJECTS)?;
    let stored = objects.get(key.as_slice())?.map_or(0, |v| v.value());
    objects.insert(key.as_slice(), (stored + added).saturating_sub(removed))?;
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
