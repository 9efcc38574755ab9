//! Grants: who may read an object (the object key wrapped for a reader's X25519 key), and
//! how this node finds its own key in them.

use redb::{ReadableDatabase, ReadableTable};
use serde_bytes::ByteBuf;
use sov_core::{Codec, ContentId, Did, Signed};

use crate::{
    Error, Result,
    crypto::{self, Key},
    manifest::{Grant, Manifest},
    store::{GRANTS, OBJECTS, Store, bump_ref, invalid},
};

impl Store {
    pub(crate) fn make_grant(
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
        let w = self.begin_write()?;
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

    /// The object's verified grants.
    pub(crate) fn grants(
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
    pub(crate) fn object_key(
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
    pub(crate) fn key_from_grants(
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
