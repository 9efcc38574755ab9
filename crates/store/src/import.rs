//! Objects that arrive block by block (from peers).
//!
//! A fetch is an [`Import`]: [`Store::begin_import`] checks the signed manifest,
//! [`Store::import_blocks`] stores verified chunks as they arrive (not yet durable, under a
//! `pending` ticket so a crash leaves nothing behind), and [`Store::finish_import`] checks
//! that every chunk is there and makes the object visible in one durable transaction.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Condvar, Mutex, PoisonError},
};

use redb::{Durability, ReadableDatabase, ReadableTable};
use sov_core::{Block, Codec, ContentId};

use crate::{
    Error, MAX_BLOCK, Result, Store,
    grants::check_grant,
    manifest::{ChunkRef, Manifest},
    store::{GRANTS, OBJECTS, PENDING, REFS, commit_object, decode_manifest, rand_u64},
};

/// An object being received block by block; see the module docs.
#[derive(Debug)]
pub struct Import {
    root: ContentId,
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    ticket: u64,
    /// Distinct chunks not stored when the import began → their size.
    wanted: HashMap<ContentId, u64>,
    written: HashSet<ContentId>,
    arrivals: Arrivals,
}

impl Drop for Import {
    fn drop(&mut self) {
        // A reader still waiting for a chunk would wait forever: tell it. (After a finished
        // import every chunk has arrived, so no reader is waiting.)
        self.arrivals
            .fail("the import stopped before every chunk arrived");
    }
}

/// The chunks of an import stored so far, shared with a reader that streams the object while
/// it arrives ([`Store::get_importing`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Arrivals(Arc<(Mutex<ArrivalState>, Condvar)>);

#[derive(Debug, Default)]
struct ArrivalState {
    stored: HashSet<ContentId>,
    /// Of those, the chunks this import received (as [`Block`]s: checked against their CIDs).
    received: HashSet<ContentId>,
    failed: Option<String>,
}

impl Arrivals {
    fn update(&self, f: impl FnOnce(&mut ArrivalState)) {
        let (state, changed) = &*self.0;
        f(&mut state.lock().unwrap_or_else(PoisonError::into_inner));
        changed.notify_all();
    }

    fn add(&self, cids: impl IntoIterator<Item = ContentId>) {
        self.update(|s| s.stored.extend(cids));
    }

    fn add_received(&self, cids: &[ContentId]) {
        self.update(|s| {
            s.stored.extend(cids);
            s.received.extend(cids);
        });
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ArrivalState> {
        self.0.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether chunk `cid` is stored (without waiting).
    pub(crate) fn is_stored(&self, cid: &ContentId) -> bool {
        self.state().stored.contains(cid)
    }

    /// Whether chunk `cid` came in through this import, checked against its CID on arrival.
    pub(crate) fn was_checked(&self, cid: &ContentId) -> bool {
        self.state().received.contains(cid)
    }

    fn fail(&self, reason: &str) {
        self.update(|s| {
            s.failed.get_or_insert_with(|| reason.to_owned());
        });
    }

    /// Why the import stopped, if it did.
    pub(crate) fn stopped(&self) -> Option<String> {
        self.state().failed.clone()
    }

    /// Block until chunk `cid` is stored; an error if the import stopped first.
    pub(crate) fn wait(&self, cid: &ContentId) -> Result<()> {
        let (state, changed) = &*self.0;
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if s.stored.contains(cid) {
                return Ok(());
            }
            if let Some(reason) = &s.failed {
                return Err(Error::Invalid(format!("chunk {cid}: {reason}")));
            }
            s = changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// What a reader needs to stream an object while it is imported: see [`Import::reader`].
#[derive(Debug, Clone)]
pub struct ImportReader {
    pub(crate) root: ContentId,
    pub(crate) manifest: Manifest,
    pub(crate) arrivals: Arrivals,
}

impl Import {
    /// The object id.
    pub fn root(&self) -> &ContentId {
        &self.root
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// A handle for reading the object while it arrives ([`Store::get_importing`]).
    pub fn reader(&self) -> ImportReader {
        ImportReader {
            root: self.root,
            manifest: self.manifest.clone(),
            arrivals: self.arrivals.clone(),
        }
    }

    /// Whether `grant` is a valid grant block of this object (signed by its owner, for it).
    pub fn accepts_grant(&self, grant: &Block) -> bool {
        grant.data().len() <= MAX_BLOCK
            && check_grant(&self.root, &self.manifest, grant.cid(), grant.data()).is_ok()
    }

    /// The chunks still to be received, in the object's order, each once.
    pub fn missing(&self) -> Vec<ChunkRef> {
        let mut seen = HashSet::new();
        self.manifest
            .chunks
            .iter()
            .filter(|c| {
                self.wanted.contains_key(&c.cid)
                    && !self.written.contains(&c.cid)
                    && seen.insert(c.cid)
            })
            .cloned()
            .collect()
    }
}

impl Store {
    /// Begin receiving object `root` whose manifest block is `manifest`. The manifest must be
    /// the root's bytes and carry a valid signature by the owner it names.
    pub fn begin_import(&self, manifest: Block) -> Result<Import> {
        let root = *manifest.cid();
        if root.codec() != Codec::DagCbor {
            return Err(Error::Invalid(format!("{root} is not a manifest")));
        }
        let manifest_bytes = manifest.into_data();
        let decoded = decode_manifest(&root, &manifest_bytes)?;
        let mut wanted = HashMap::new();
        {
            let r = self.db().begin_read()?;
            let refs = r.open_table(REFS)?;
            for c in &decoded.chunks {
                if refs.get(c.cid.to_bytes().as_slice())?.is_none() {
                    wanted.insert(c.cid, c.size);
                }
            }
        }
        let ticket = rand_u64();
        let mut w = self.begin_write()?;
        w.open_table(PENDING)?.insert(ticket, 0)?;
        w.set_durability(Durability::None)?;
        w.commit()?;
        let arrivals = Arrivals::default();
        arrivals.add(
            decoded
                .chunks
                .iter()
                .map(|c| c.cid)
                .filter(|c| !wanted.contains_key(c)),
        );
        Ok(Import {
            root,
            manifest_bytes,
            manifest: decoded,
            ticket,
            wanted,
            written: HashSet::new(),
            arrivals,
        })
    }

    /// Store received chunks of `import`. Each must be one the manifest lists, of the size it
    /// lists; the writes become durable with [`Store::finish_import`].
    pub fn import_blocks(&self, import: &mut Import, received: Vec<Block>) -> Result<()> {
        for b in &received {
            match import.wanted.get(b.cid()) {
                Some(&size) if size == b.data().len() as u64 => {}
                Some(_) => {
                    return Err(Error::Invalid(format!(
                        "chunk {} has another size than the manifest says",
                        b.cid()
                    )));
                }
                None if import.manifest.chunks.iter().any(|c| c.cid == *b.cid()) => {}
                None => {
                    return Err(Error::Invalid(format!(
                        "block {} is not a chunk of object {}",
                        b.cid(),
                        import.root
                    )));
                }
            }
        }
        let mut w = self.begin_write()?;
        w.set_durability(Durability::None)?;
        {
            let mut table = self.block_writer(&w)?;
            for b in &received {
                if import.wanted.contains_key(b.cid()) && !import.written.contains(b.cid()) {
                    table.put(b.cid(), b.data())?;
                }
            }
        }
        w.commit()?;
        let new: Vec<ContentId> = received
            .iter()
            .map(|b| *b.cid())
            .filter(|c| import.wanted.contains_key(c))
            .collect();
        import.arrivals.add_received(&new);
        import.written.extend(new);
        Ok(())
    }

    /// Make the imported object visible, with the given grant blocks (each checked: signed by
    /// the owner, for this object). Fails, storing nothing more, if a chunk is missing.
    pub fn finish_import(&self, import: Import, grants: Vec<Block>) -> Result<()> {
        if let Some(c) = import.missing().first() {
            return Err(Error::Invalid(format!(
                "chunk {} of object {} was not received",
                c.cid, import.root
            )));
        }
        let grants = check_grants(&import.root, &import.manifest, grants)?;
        let w = self.begin_write()?;
        {
            // Chunks that were stored when the import began may have been removed since.
            let table = self.block_writer(&w)?;
            for c in &import.manifest.chunks {
                if !import.wanted.contains_key(&c.cid) && !table.contains(&c.cid)? {
                    return Err(Error::Invalid(format!(
                        "chunk {} of object {} was removed during the import",
                        c.cid, import.root
                    )));
                }
            }
        }
        commit_object(
            &w,
            self.packs(),
            &import.root,
            &import.manifest_bytes,
            &import.manifest,
            &grants,
        )?;
        w.open_table(PENDING)?.remove(import.ticket)?;
        self.commit(w)?;
        Ok(())
    }

    /// Give up an import: its blocks that no object uses are removed.
    pub fn abort_import(&self, import: Import) -> Result<()> {
        // Readers learn it stopped before its chunks go, so a chunk they find missing is
        // explained.
        import
            .arrivals
            .fail("the import stopped before every chunk arrived");
        let w = self.begin_write()?;
        {
            let refs = w.open_table(REFS)?;
            let mut table = self.block_writer(&w)?;
            for cid in &import.written {
                if refs.get(cid.to_bytes().as_slice())?.is_none() {
                    table.remove(&cid.to_bytes())?;
                }
            }
            w.open_table(PENDING)?.remove(import.ticket)?;
        }
        self.commit(w)?;
        // Space not reclaimed now is reclaimed by a later compaction.
        let _ = self.compact();
        Ok(())
    }

    /// Add grant blocks to a stored object, skipping any that is not a valid grant of it
    /// (signed by its owner, for this object); returns how many were new.
    pub fn add_grants(&self, id: &ContentId, grants: Vec<Block>) -> Result<usize> {
        let r = self.db().begin_read()?;
        let manifest_bytes = self
            .block_reader(&r)?
            .get(id)?
            .ok_or(Error::NotFound(*id))?;
        drop(r);
        let manifest = decode_manifest(id, &manifest_bytes)?;
        let grants: Vec<Block> = grants
            .into_iter()
            .filter(|g| {
                g.data().len() <= MAX_BLOCK && check_grant(id, &manifest, g.cid(), g.data()).is_ok()
            })
            .collect();
        let grants = check_grants(id, &manifest, grants)?;
        let before = self.grant_blocks(id)?.len();
        let w = self.begin_write()?;
        commit_object(&w, self.packs(), id, &manifest_bytes, &manifest, &grants)?;
        self.commit(w)?;
        Ok(self.grant_blocks(id)?.len() - before)
    }

    /// The stored blocks among `cids` (any kind: manifests, grants, chunks), each checked
    /// against its CID; absent ones are left out, and reading stops once `max_bytes` are
    /// gathered (at least one block is returned if any is stored).
    pub fn blocks(&self, cids: &[ContentId], max_bytes: usize) -> Result<Vec<Block>> {
        let r = self.db().begin_read()?;
        let table = self.block_reader(&r)?;
        let mut out = Vec::with_capacity(cids.len());
        let mut bytes = 0;
        for cid in cids {
            if bytes >= max_bytes {
                break;
            }
            if let Some(data) = table.get_unverified(cid)? {
                bytes += data.len();
                out.push(Block::verified(*cid, data).map_err(|e| Error::Corrupt(e.to_string()))?);
            }
        }
        Ok(out)
    }

    /// The grant blocks of object `id`.
    pub fn grant_blocks(&self, id: &ContentId) -> Result<Vec<Block>> {
        let ids = {
            let r = self.db().begin_read()?;
            let table = r.open_multimap_table(GRANTS)?;
            let mut ids = Vec::new();
            for gid in table.get(id.to_bytes().as_slice())? {
                ids.push(
                    ContentId::from_bytes(gid?.value())
                        .map_err(|e| Error::Corrupt(format!("grant id: {e}")))?,
                );
            }
            ids
        };
        self.blocks(&ids, usize::MAX)
    }

    /// The manifest of a stored object.
    pub fn manifest_of(&self, id: &ContentId) -> Result<Manifest> {
        let r = self.db().begin_read()?;
        if r.open_table(OBJECTS)?
            .get(id.to_bytes().as_slice())?
            .is_none()
        {
            return Err(Error::NotFound(*id));
        }
        let bytes = self.block_reader(&r)?.read(id)?;
        decode_manifest(id, &bytes)
    }
}

/// Check grant blocks of object `id`; the result is ready for `commit_object`.
fn check_grants(
    id: &ContentId,
    manifest: &Manifest,
    grants: Vec<Block>,
) -> Result<Vec<(ContentId, Vec<u8>)>> {
    if grants.len() > 4096 {
        return Err(Error::Invalid("too many grant blocks".into()));
    }
    grants
        .into_iter()
        .map(|g| {
            if g.data().len() > MAX_BLOCK {
                return Err(Error::Invalid(format!("grant {} exceeds 1 MiB", g.cid())));
            }
            let gid = *g.cid();
            check_grant(id, manifest, &gid, g.data())?;
            Ok((gid, g.into_data()))
        })
        .collect()
}
