//! Grants: who may read an object (the object key wrapped for a reader's X25519 key), how
//! this node finds its own key in them, and how a reader proves to a holder that one is its
//! own.
//!
//! A grant (`sov/grant/2`) names its reader only inside the encryption. The reader finds its
//! grant by trial decryption; the owner reads whom each is for from a note sealed under a key
//! only it derives; a holder sees an ephemeral key, a wrapped key and an access key, none
//! of which it can tie to a DID. To see an object's metadata, a reader signs a claim with
//! the access key its grant's key exchange gives it ([`Store::claim`],
//! [`Store::check_claim`]). Grants of the first version (`sov/grant/1`) named the reader
//! in the clear: they are still read, the owner replaces its own with hidden ones when its
//! store opens, and a holder drops them once hidden grants of the object reach it.

use ed25519_dalek::Signature;
use redb::{ReadableDatabase, ReadableTable};
use serde_bytes::ByteBuf;
use sov_core::{Codec, ContentId, Did, Signed};

use crate::{
    Error, Result,
    blocks::Blocks,
    crypto::{self, GrantVersion, Key},
    manifest::{AnyGrant, Grant, Manifest},
    store::{GRANTS, META, OBJECTS, Store, commit_object, invalid},
};

/// Context of the secret an owner seals its grants' reader DIDs under.
const NOTE_CONTEXT: &str = "sov 2026-12 grant reader notes";
/// Domain of a reader's claim to a holder.
const CLAIM_DOMAIN: &[u8] = b"sov/grant-claim/2\0";

/// What a reader signs to claim a grant at a holder: the object, the holder and itself, so
/// the claim is worth nothing to anyone else or at any other holder.
pub fn claim_message(object: &ContentId, holder: &[u8], claimant: &[u8]) -> Vec<u8> {
    let mut m = CLAIM_DOMAIN.to_vec();
    for part in [&object.to_bytes()[..], holder, claimant] {
        m.extend_from_slice(&(part.len() as u16).to_be_bytes());
        m.extend_from_slice(part);
    }
    m
}

impl Store {
    pub(crate) fn make_grant(
        &self,
        object: &ContentId,
        object_key: &[u8; 32],
        reader: &Did,
    ) -> Result<(ContentId, Vec<u8>)> {
        let w = crypto::wrap_key(object_key, object, reader);
        let note = crypto::seal(
            &self.note_key(object),
            reader.to_string().as_bytes(),
            &crypto::note_aad(object),
        );
        let grant = Grant {
            object: *object,
            ephemeral: ByteBuf::from(w.ephemeral.to_vec()),
            wrapped: ByteBuf::from(w.sealed),
            access: ByteBuf::from(w.access.to_vec()),
            note: ByteBuf::from(note),
        };
        let bytes = Signed::sign(grant, &self.me)
            .and_then(|s| s.encode())
            .map_err(invalid)?;
        Ok((ContentId::of(Codec::DagCbor, &bytes), bytes))
    }

    fn note_key(&self, object: &ContentId) -> Key {
        crypto::note_key(&self.me.derive_secret(NOTE_CONTEXT), object)
    }

    /// Whom grant `g` of object `id` is for, if this node can tell: the reader a legacy grant
    /// names, or (for the owner) the one its note names.
    fn reader_of(&self, id: &ContentId, g: &AnyGrant) -> Option<Did> {
        match g {
            AnyGrant::Named(g) => Some(g.reader),
            AnyGrant::Hidden(g) => {
                let did = crypto::open(&self.note_key(id), &g.note, &crypto::note_aad(id)).ok()?;
                std::str::from_utf8(&did).ok()?.parse().ok()
            }
        }
    }

    /// The manifest of object `id`, if this node owns it (only the owner can grant).
    fn owned_manifest(
        &self,
        blocks: &Blocks<'_, impl ReadableTable<&'static [u8], &'static [u8]>>,
        id: &ContentId,
    ) -> Result<Manifest> {
        let manifest = self.manifest(blocks, id)?;
        if manifest.owner != self.me.did() {
            return Err(Error::NotOwner {
                object: *id,
                owner: manifest.owner,
            });
        }
        Ok(manifest)
    }

    /// Let `reader` read object `id`: wraps the object key for their X25519 key. Only the
    /// owner can grant. Granting twice to the same reader returns the existing grant.
    pub fn grant(&self, id: &ContentId, reader: &Did) -> Result<ContentId> {
        let r = self.db.begin_read()?;
        let blocks = self.block_reader(&r)?;
        let manifest = self.owned_manifest(&blocks, id)?;
        let grants = self.grants(&r, id, &manifest)?;
        if let Some((gid, _)) = grants.iter().find(|(_, g)| {
            matches!(g, AnyGrant::Hidden(_)) && self.reader_of(id, g) == Some(*reader)
        }) {
            return Ok(*gid);
        }
        let key = self.object_key(&r, id, &manifest)?;
        let manifest_bytes = blocks.read(id)?;
        drop((blocks, r));
        let granted = self.make_grant(id, &key, reader)?;
        let gid = granted.0;
        let w = self.begin_write()?;
        commit_object(&w, self.packs(), id, &manifest_bytes, &manifest, &[granted])?;
        self.commit(w)?;
        Ok(gid)
    }

    /// Let every one of `readers` read object `id`, in one transaction (a federation's model
    /// for its members); readers already granted keep their grant. Returns how many grants
    /// were made.
    pub fn grant_all(&self, id: &ContentId, readers: &[Did]) -> Result<usize> {
        let r = self.db.begin_read()?;
        let blocks = self.block_reader(&r)?;
        let manifest = self.owned_manifest(&blocks, id)?;
        let grants = self.grants(&r, id, &manifest)?;
        let have: Vec<Did> = grants
            .iter()
            .filter(|(_, g)| matches!(g, AnyGrant::Hidden(_)))
            .filter_map(|(_, g)| self.reader_of(id, g))
            .collect();
        let mut todo: Vec<Did> = readers
            .iter()
            .filter(|d| !have.contains(d))
            .copied()
            .collect();
        todo.sort_by_key(|d| d.to_string());
        todo.dedup();
        if todo.is_empty() {
            return Ok(0);
        }
        let key = self.object_key(&r, id, &manifest)?;
        let manifest_bytes = blocks.read(id)?;
        drop((blocks, r));
        let made = todo
            .iter()
            .map(|reader| self.make_grant(id, &key, reader))
            .collect::<Result<Vec<_>>>()?;
        let w = self.begin_write()?;
        commit_object(&w, self.packs(), id, &manifest_bytes, &manifest, &made)?;
        self.commit(w)?;
        Ok(made.len())
    }

    /// The readers of `id` this node can tell: for its owner, every reader (itself
    /// included); for another node, the owner, this node if it may read, and the readers
    /// legacy grants name.
    pub fn readers(&self, id: &ContentId) -> Result<Vec<Did>> {
        let (mut out, grants) = self.named_readers(id)?;
        let me = self.me.did();
        if !out.contains(&me) && self.key_from_grants(id, grants).is_ok() {
            out.push(me);
        }
        Ok(out)
    }

    /// [`Store::readers`] without trying this node's own key on each grant, which a holder
    /// asks on every request for an object's metadata, from peers other than itself: for
    /// the owner every reader (from its notes, a symmetric open each), else the owner and
    /// the readers legacy grants name.
    pub fn readers_named(&self, id: &ContentId) -> Result<Vec<Did>> {
        Ok(self.named_readers(id)?.0)
    }

    /// [`Store::readers_named`], with the object's grants.
    fn named_readers(&self, id: &ContentId) -> Result<(Vec<Did>, Vec<AnyGrant>)> {
        let r = self.db.begin_read()?;
        let manifest = self.manifest(&self.block_reader(&r)?, id)?;
        let grants: Vec<AnyGrant> = self
            .grants(&r, id, &manifest)?
            .into_iter()
            .map(|(_, g)| g)
            .collect();
        let owner = manifest.owner == self.me.did();
        let mut out = vec![manifest.owner];
        for g in &grants {
            let reader = if owner {
                self.reader_of(id, g)
            } else {
                g.named_reader()
            };
            if let Some(d) = reader
                && !out.contains(&d)
            {
                out.push(d);
            }
        }
        Ok((out, grants))
    }

    /// The ephemeral and access keys of `id`'s hidden grants: what a reader needs to find its
    /// grant and claim it (random keys to anyone else).
    pub fn grant_keys(&self, id: &ContentId) -> Result<Vec<([u8; 32], [u8; 32])>> {
        let r = self.db.begin_read()?;
        let manifest = self.manifest(&self.block_reader(&r)?, id)?;
        Ok(self
            .grants(&r, id, &manifest)?
            .iter()
            .filter_map(|(_, g)| g.access())
            .collect())
    }

    /// Of the grant keys a holder offered for object `id`, the one whose grant is this node's,
    /// with a claim signed by its access key for `holder` (the holder's and this node's peer
    /// ids, as bytes, are what the claim is bound to).
    pub fn claim(
        &self,
        id: &ContentId,
        offered: &[([u8; 32], [u8; 32])],
        holder: &[u8],
        me: &[u8],
    ) -> Option<([u8; 32], Signature)> {
        offered.iter().find_map(|(eph, access)| {
            let key = crypto::access_key(&self.me, id, eph).ok()?;
            (key.did().public_bytes() == access).then(|| {
                let sig = sov_core::Signer::sign(&key, &claim_message(id, holder, me));
                (*eph, sig)
            })
        })
    }

    /// Whether `signature` claims a hidden grant of stored object `id` (the one with
    /// `ephemeral`) for `claimant` at `holder` (peer ids as bytes): signed by the grant's
    /// access key.
    pub fn check_claim(
        &self,
        id: &ContentId,
        ephemeral: &[u8; 32],
        signature: &[u8],
        holder: &[u8],
        claimant: &[u8],
    ) -> Result<bool> {
        let Ok(sig) = Signature::from_slice(signature) else {
            return Ok(false);
        };
        let message = claim_message(id, holder, claimant);
        Ok(self.grant_keys(id)?.iter().any(|(eph, access)| {
            eph == ephemeral
                && Did::from_public_bytes(access)
                    .is_ok_and(|d| d.verifying_key().verify_strict(&message, &sig).is_ok())
        }))
    }

    /// The object's verified grants.
    pub(crate) fn grants(
        &self,
        r: &redb::ReadTransaction,
        id: &ContentId,
        manifest: &Manifest,
    ) -> Result<Vec<(ContentId, AnyGrant)>> {
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

    /// The object key, unwrapped from whichever of `grants` (checked) is for this node: a
    /// legacy grant that names it, or a hidden grant that opens for it.
    pub(crate) fn key_from_grants(
        &self,
        id: &ContentId,
        grants: impl IntoIterator<Item = AnyGrant>,
    ) -> Result<Key> {
        let me = self.me.did();
        for g in grants {
            let version = match &g {
                AnyGrant::Named(n) if n.reader != me => continue,
                AnyGrant::Named(_) => GrantVersion::Named,
                AnyGrant::Hidden(_) => GrantVersion::Hidden,
            };
            let wrapped = match &g {
                AnyGrant::Hidden(h) => &h.wrapped,
                AnyGrant::Named(n) => &n.wrapped,
            };
            match crypto::unwrap_key(&self.me, id, &ephemeral(&g)?, wrapped, version) {
                Ok(key) => return Ok(key),
                // Someone else's.
                Err(_) if version == GrantVersion::Hidden => continue,
                Err(_) => {
                    return Err(Error::Invalid(format!(
                        "the grant of object {id} to {me} does not open"
                    )));
                }
            }
        }
        Err(Error::NoGrant {
            object: *id,
            reader: me,
        })
    }

    /// [`Store::upgrade_grants`], unless the store says it was done.
    pub(crate) fn upgrade_grants_once(&self) -> Result<()> {
        let done = {
            let r = self.db.begin_read()?;
            r.open_table(META)?.get("grants")?.map(|v| v.value())
        };
        if done >= Some(2) {
            return Ok(());
        }
        self.upgrade_grants()?;
        let w = self.begin_write()?;
        w.open_table(META)?.insert("grants", 2)?;
        self.commit(w)?;
        Ok(())
    }

    /// Replace the legacy grants of the objects this node owns with hidden ones (the same
    /// readers); returns how many objects were upgraded. Runs when the store opens.
    pub(crate) fn upgrade_grants(&self) -> Result<usize> {
        let me = self.me.did();
        let mut todo = Vec::new();
        {
            let r = self.db.begin_read()?;
            let blocks = self.block_reader(&r)?;
            for entry in r.open_table(OBJECTS)?.iter()? {
                let id = ContentId::from_bytes(entry?.0.value())
                    .map_err(|e| Error::Corrupt(format!("object id: {e}")))?;
                let manifest = self.manifest(&blocks, &id)?;
                if manifest.owner != me {
                    continue;
                }
                let grants = self.grants(&r, &id, &manifest)?;
                let named: Vec<Did> = grants
                    .iter()
                    .filter_map(|(_, g)| g.named_reader())
                    .collect();
                if named.is_empty() {
                    continue;
                }
                let key = self.key_from_grants(&id, grants.into_iter().map(|(_, g)| g))?;
                todo.push((id, blocks.read(&id)?, manifest, key, named));
            }
        }
        let upgraded = todo.len();
        for (id, manifest_bytes, manifest, key, mut named) in todo {
            named.sort_by_key(|d| d.to_string());
            named.dedup();
            let grants = named
                .iter()
                .map(|reader| self.make_grant(&id, &key, reader))
                .collect::<Result<Vec<_>>>()?;
            let w = self.begin_write()?;
            commit_object(&w, self.packs(), &id, &manifest_bytes, &manifest, &grants)?;
            self.commit(w)?;
        }
        Ok(upgraded)
    }
}

fn ephemeral(g: &AnyGrant) -> Result<[u8; 32]> {
    let eph = match g {
        AnyGrant::Hidden(g) => &g.ephemeral,
        AnyGrant::Named(g) => &g.ephemeral,
    };
    eph.as_slice()
        .try_into()
        .map_err(|_| Error::Invalid("grant ephemeral key is not 32 bytes".into()))
}

/// Decode and verify a grant block of object `id`.
pub(crate) fn check_grant(
    id: &ContentId,
    manifest: &Manifest,
    gid: &ContentId,
    bytes: &[u8],
) -> Result<AnyGrant> {
    let (signer, grant) = crate::manifest::decode_grant(bytes)
        .map_err(|e| Error::Invalid(format!("grant {gid}: {e}")))?;
    if signer != manifest.owner {
        return Err(Error::Invalid(format!(
            "grant {gid} is signed by {signer}, not the owner of {id}"
        )));
    }
    if grant.object() != *id {
        return Err(Error::Invalid(format!("grant {gid} is for another object")));
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use sov_core::Block;
    use sov_identity::Keypair;

    use super::*;
    use crate::{
        AddOptions,
        manifest::LegacyGrant,
        store::{REFS, bump_ref},
    };

    fn legacy_grant(owner: &Store, id: &ContentId, key: &[u8; 32], reader: &Did) -> Block {
        let w = crypto::wrap_key_named(key, id, reader);
        let grant = LegacyGrant {
            object: *id,
            reader: *reader,
            ephemeral: ByteBuf::from(w.ephemeral.to_vec()),
            wrapped: ByteBuf::from(w.sealed),
        };
        let bytes = Signed::sign(grant, &owner.me).unwrap().encode().unwrap();
        Block::verified(ContentId::of(Codec::DagCbor, &bytes), bytes).unwrap()
    }

    fn kinds(s: &Store, id: &ContentId) -> (usize, usize) {
        let r = s.db.begin_read().unwrap();
        let manifest = s.manifest(&s.block_reader(&r).unwrap(), id).unwrap();
        let grants = s.grants(&r, id, &manifest).unwrap();
        let named = grants
            .iter()
            .filter(|(_, g)| g.named_reader().is_some())
            .count();
        (grants.len() - named, named)
    }

    fn stored(s: &Store, id: &ContentId) -> u64 {
        let r = s.db.begin_read().unwrap();
        let v = r
            .open_table(OBJECTS)
            .unwrap()
            .get(id.to_bytes().as_slice())
            .unwrap();
        v.unwrap().value()
    }

    /// A store made before hidden grants: the owner's object has grants that name its readers.
    /// Opening it again replaces them with hidden ones for the same readers (once); a holder
    /// and a reader that got the legacy grants still read and list them, until hidden grants
    /// reach the holder: then the legacy ones go, and are not taken again.
    #[test]
    fn legacy_grants_are_upgraded_by_the_owner_and_dropped_by_holders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owner.redb");
        let me = Keypair::generate();
        let bob = Keypair::generate();
        let owner = Store::open(&path, me.clone()).unwrap();
        let data = vec![7u8; 300_000];
        let opts = AddOptions {
            name: "old.bin".into(),
            media_type: "application/octet-stream".into(),
            created: 0,
        };
        let id = owner.add(&data[..], opts, &mut |_| {}).unwrap().id;
        // Rewrite its grants the first way.
        let key = {
            let r = owner.db.begin_read().unwrap();
            let m = owner
                .manifest(&owner.block_reader(&r).unwrap(), &id)
                .unwrap();
            owner.object_key(&r, &id, &m).unwrap()
        };
        let legacy: Vec<Block> = [me.did(), bob.did()]
            .iter()
            .map(|d| legacy_grant(&owner, &id, &key, d))
            .collect();
        let w = owner.begin_write().unwrap();
        {
            let mut table = w.open_multimap_table(GRANTS).unwrap();
            let old: Vec<Vec<u8>> = table
                .remove_all(id.to_bytes().as_slice())
                .unwrap()
                .map(|g| g.unwrap().value().to_vec())
                .collect();
            let mut refs = w.open_table(REFS).unwrap();
            for g in old {
                refs.remove(g.as_slice()).unwrap();
            }
            drop(refs);
            let mut blocks = owner.block_writer(&w).unwrap();
            for g in &legacy {
                blocks.put(g.cid(), g.data()).unwrap();
                table
                    .insert(id.to_bytes().as_slice(), g.cid().to_bytes().as_slice())
                    .unwrap();
                bump_ref(&w, g.cid(), 1).unwrap();
            }
            w.open_table(META).unwrap().insert("grants", 0).unwrap();
        }
        owner.commit(w).unwrap();
        assert_eq!(kinds(&owner, &id), (0, 2));
        let mut car = Vec::new();
        owner.export_car(&id, &mut car).unwrap();
        drop(owner);

        // A holder and the reader took the legacy state.
        let holder = Store::open(&dir.path().join("holder.redb"), Keypair::generate()).unwrap();
        holder.import_car(&car[..]).unwrap();
        assert_eq!(
            holder.readers(&id).unwrap().len(),
            2,
            "a legacy grant names its reader"
        );
        let reader = Store::open(&dir.path().join("bob.redb"), bob.clone()).unwrap();
        reader.import_car(&car[..]).unwrap();
        let mut out = Vec::new();
        reader.get(&id, &mut out).unwrap();
        assert_eq!(out, data, "a legacy grant still reads");

        // The owner's store opens: hidden grants for the same readers, and only those.
        let owner = Store::open(&path, me.clone()).unwrap();
        assert_eq!(kinds(&owner, &id), (2, 0));
        let mut readers = owner.readers(&id).unwrap();
        readers.sort_by_key(|d| d.to_string());
        let mut want = vec![me.did(), bob.did()];
        want.sort_by_key(|d| d.to_string());
        assert_eq!(readers, want);
        let hidden = owner.grant_blocks(&id).unwrap();
        let mut out = Vec::new();
        owner.get(&id, &mut out).unwrap();
        assert_eq!(out, data);
        drop(owner);
        let owner = Store::open(&path, me.clone()).unwrap();
        assert_eq!(owner.grant_blocks(&id).unwrap(), hidden, "upgraded once");

        // The holder gets the hidden grants: the legacy ones go, with their bytes.
        let before = stored(&holder, &id);
        assert_eq!(
            holder.add_grants(&id, hidden.clone()).unwrap(),
            0,
            "two in, two out"
        );
        assert_eq!(kinds(&holder, &id), (2, 0));
        assert_eq!(holder.readers(&id).unwrap(), vec![me.did()]);
        let legacy_bytes: u64 = legacy.iter().map(|g| g.data().len() as u64).sum();
        let hidden_bytes: u64 = hidden.iter().map(|g| g.data().len() as u64).sum();
        assert_eq!(stored(&holder, &id), before + hidden_bytes - legacy_bytes);
        assert!(
            holder
                .blocks(&[*legacy[1].cid()], usize::MAX)
                .unwrap()
                .is_empty()
        );
        assert_eq!(holder.add_grants(&id, legacy.clone()).unwrap(), 0);
        assert_eq!(kinds(&holder, &id), (2, 0));
        // And the reader reads through its hidden grant.
        reader.add_grants(&id, hidden).unwrap();
        assert_eq!(kinds(&reader, &id), (2, 0));
        let mut out = Vec::new();
        reader.get(&id, &mut out).unwrap();
        assert_eq!(out, data);
    }
}
