//! Checking a store, and rebuilding its index from the pack files.
//!
//! Blocks are content-addressed and every pack frame names its block's CID, so the index is
//! a cache of what the packs hold: [`Store::repair`] reads every frame, keeps the blocks that
//! match their CIDs, and re-derives the objects (each manifest whose chunks are all there,
//! with its grants that check out). What an intact pack holds is never lost; what the index
//! alone knew (which objects were pinned, replicas removed on purpose) is, and is said so.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use sov_core::{Codec, ContentId, Signed};
use sov_identity::Keypair;

use crate::{
    Error, Pin, Result, Store,
    blocks::{BLOCKS, LIVE},
    grants::check_grant,
    manifest::Grant,
    pack::{self, pack_ids},
    store::{GRANTS, OBJECTS, REFS, commit_object, create_atomically, decode_manifest, packs_dir},
};

/// What [`Store::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Objects in the index.
    pub objects: usize,
    /// Blocks in the index, and their bytes.
    pub blocks: u64,
    /// Bytes of those blocks.
    pub bytes: u64,
    /// Blocks whose bytes do not match their CID, or cannot be read.
    pub damaged: Vec<ContentId>,
    /// Objects missing a block they need (or whose blocks are damaged).
    pub incomplete: Vec<ContentId>,
}

impl CheckReport {
    /// Whether everything checked out.
    pub fn ok(&self) -> bool {
        self.damaged.is_empty() && self.incomplete.is_empty()
    }
}

/// What [`Store::repair`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Where the old index was moved (kept for inspection), if there was one.
    pub old_index: Option<PathBuf>,
    /// Pack files read.
    pub packs: usize,
    /// Pack files of the format before frames, moved to `store.packs/unindexed/`: their
    /// blocks cannot be re-indexed.
    pub unframed_packs: usize,
    /// Blocks found intact.
    pub blocks: usize,
    /// Frames whose bytes did not match their CID (dropped).
    pub damaged: u64,
    /// Bytes passed over between frames (torn writes, damaged headers).
    pub skipped_bytes: u64,
    /// Objects rebuilt.
    pub objects: usize,
    /// Manifests found without all their chunks (not rebuilt).
    pub incomplete: usize,
    /// Grants rebuilt.
    pub grants: usize,
    /// This node's own objects, pinned again (with no replica count: the old counts were
    /// only in the index).
    pub pinned: usize,
}

impl Store {
    /// Read every block the index names and check it against its CID, and every object's
    /// blocks are there.
    pub fn check(&self) -> Result<CheckReport> {
        let r = self.db().begin_read()?;
        let blocks = self.block_reader(&r)?;
        let mut report = CheckReport::default();
        let mut bad = HashSet::new();
        for key in blocks.all()? {
            let cid = ContentId::from_bytes(&key)
                .map_err(|e| Error::Corrupt(format!("block index key: {e}")))?;
            report.blocks += 1;
            match blocks.get(&cid) {
                Ok(Some(b)) => report.bytes += b.len() as u64,
                _ => {
                    bad.insert(cid);
                    report.damaged.push(cid);
                }
            }
        }
        let objects = r.open_table(OBJECTS)?;
        report.objects = objects.len()? as usize;
        for entry in objects.iter()? {
            let id = ContentId::from_bytes(entry?.0.value())
                .map_err(|e| Error::Corrupt(format!("object key: {e}")))?;
            let complete = match self.manifest(&blocks, &id) {
                Ok(m) => m
                    .chunks
                    .iter()
                    .all(|c| !bad.contains(&c.cid) && blocks.contains(&c.cid).unwrap_or(false)),
                Err(_) => false,
            };
            if !complete {
                report.incomplete.push(id);
            }
        }
        Ok(report)
    }

    /// Rebuild the index of the store at `path` from its pack files: the old index (if any)
    /// is moved aside, every pack frame is read and checked against its CID, and the objects
    /// are re-derived from the manifests and grants found. The node must not be running.
    pub fn repair(path: &Path, me: Keypair) -> Result<(Store, RepairReport)> {
        let mut report = RepairReport::default();
        if path.exists() {
            // A running node holds the file locked: refuse rather than move it from under it.
            // (redb may panic on a damaged file: that only means it is not in use.)
            let opened = std::panic::catch_unwind(|| Database::builder().create(path).map(drop));
            if let Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) = opened {
                return Err(Error::InUse(path.to_owned()));
            }
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = path.with_extension(format!("redb.damaged-{stamp}"));
            std::fs::rename(path, &aside)?;
            report.old_index = Some(aside);
        }
        let dir = packs_dir(path);
        let mut found: HashMap<ContentId, pack::Loc> = HashMap::new();
        let mut live: HashMap<u32, u64> = HashMap::new();
        for id in pack_ids(&dir)? {
            report.packs += 1;
            let scanned = pack::scan(&dir, id)?;
            if scanned.unframed {
                report.unframed_packs += 1;
                let keep = dir.join("unindexed");
                std::fs::create_dir_all(&keep)?;
                let name = format!("{id:08x}.pack");
                std::fs::rename(dir.join(&name), keep.join(&name))?;
                continue;
            }
            report.damaged += scanned.damaged;
            report.skipped_bytes += scanned.skipped;
            // Every pack with frames is recorded (so opening keeps it), even an empty one.
            live.entry(id).or_insert(0);
            for (cid, loc) in scanned.blocks {
                if let std::collections::hash_map::Entry::Vacant(e) = found.entry(cid) {
                    e.insert(loc);
                    *live.entry(id).or_insert(0) += u64::from(loc.len);
                }
            }
        }
        report.blocks = found.len();
        create_atomically(path)?;
        {
            let db = Database::builder()
                .create(path)
                .map_err(|e| Error::Db(format!("{}: {e}", path.display())))?;
            let w = db.begin_write()?;
            {
                let mut index = w.open_table(BLOCKS)?;
                for (cid, loc) in &found {
                    index.insert(cid.to_bytes().as_slice(), loc.encode().as_slice())?;
                }
                let mut counts = w.open_table(LIVE)?;
                for (id, bytes) in &live {
                    counts.insert(*id, *bytes)?;
                }
            }
            w.commit()?;
        }
        let store = Store::open(path, me)?;
        store.rebuild_objects(&found, &mut report)?;
        Ok((store, report))
    }

    /// Re-derive objects and grants from the blocks now indexed; blocks no object uses are
    /// dropped from the index (and their space reclaimed).
    fn rebuild_objects(
        &self,
        found: &HashMap<ContentId, pack::Loc>,
        report: &mut RepairReport,
    ) -> Result<()> {
        let mut manifests = Vec::new();
        let mut grants: HashMap<ContentId, Vec<(ContentId, Vec<u8>)>> = HashMap::new();
        {
            let r = self.db().begin_read()?;
            let blocks = self.block_reader(&r)?;
            for cid in found.keys().filter(|c| c.codec() == Codec::DagCbor) {
                let Some(bytes) = blocks.get(cid)? else {
                    continue;
                };
                if let Ok(m) = decode_manifest(cid, &bytes) {
                    manifests.push((*cid, bytes, m));
                } else if let Ok(g) = Signed::<Grant>::decode(&bytes) {
                    grants
                        .entry(g.body().object)
                        .or_default()
                        .push((*cid, bytes));
                }
            }
        }
        let me = self.identity().did();
        let w = self.begin_write()?;
        {
            for (root, bytes, manifest) in &manifests {
                if !manifest.chunks.iter().all(|c| found.contains_key(&c.cid)) {
                    report.incomplete += 1;
                    continue;
                }
                let valid: Vec<(ContentId, Vec<u8>)> = grants
                    .get(root)
                    .into_iter()
                    .flatten()
                    .filter(|(gid, data)| check_grant(root, manifest, gid, data).is_ok())
                    .cloned()
                    .collect();
                report.grants += valid.len();
                commit_object(&w, self.packs(), root, bytes, manifest, &valid)?;
                report.objects += 1;
                if manifest.owner == me {
                    w.open_table(crate::store::PINS)?.insert(
                        root.to_bytes().as_slice(),
                        Pin {
                            replicas: 0,
                            replica: false,
                        }
                        .encode(),
                    )?;
                    report.pinned += 1;
                }
            }
            // Blocks no rebuilt object uses (chunks of incomplete objects, stray grants).
            let refs = w.open_table(REFS)?;
            let mut blocks = self.block_writer(&w)?;
            for cid in blocks.all()? {
                if refs.get(cid.as_slice())?.is_none() {
                    blocks.remove(&cid)?;
                }
            }
            drop(refs);
            let _ = w.open_multimap_table(GRANTS)?;
        }
        self.commit(w)?;
        self.compact()
    }
}
