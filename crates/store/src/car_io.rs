//! Objects in and out as CAR v1 files: export verifies every block it writes; import
//! verifies the manifest, the grants and every chunk before anything is stored.

use std::{
    collections::{HashMap, HashSet},
    io::{Read, Write},
};

use rayon::prelude::*;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use sov_core::{Codec, ContentId};

use crate::{
    Error, MAX_BLOCK, Result,
    blocks::Blocks,
    car::{self, CarReader},
    grants::check_grant,
    manifest::Manifest,
    store::{Store, commit_object, decode_manifest},
};

/// Blocks verified together by `export_car`.
const EXPORT_BATCH: usize = 16;

impl Store {
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
        let w = self.begin_write()?;
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

    pub(crate) fn import_into<R: Read>(
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
    pub(crate) fn manifest(
        &self,
        blocks: &Blocks<'_, impl ReadableTable<&'static [u8], &'static [u8]>>,
        id: &ContentId,
    ) -> Result<Manifest> {
        let bytes = blocks.get(id)?.ok_or(Error::NotFound(*id))?;
        decode_manifest(id, &bytes)
    }
}
