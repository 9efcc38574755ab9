//! Pins: which objects this node keeps for the network, and how many copies each should
//! have (table [`PINS`]: replicas in the low 32 bits, bit 32 = kept as a replica).

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable};
use sov_core::{ContentId, Did};

use crate::{
    Error, Result, Store,
    store::{DROPPED, MANDATES, OBJECTS, PINS},
};

/// What the replicas this node keeps for others cost it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaUsage {
    /// Bytes of all replicas (their blocks as stored).
    pub total: u64,
    /// Of those, by the owner of each object.
    pub by_owner: HashMap<Did, u64>,
}

/// Why this node keeps an object, and how many copies the network should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    /// Copies the object should have on peers other than its owner.
    pub replicas: u32,
    /// This node keeps it as a replica for someone else (not as its owner or a reader).
    pub replica: bool,
}

impl Pin {
    pub(crate) fn encode(self) -> u64 {
        u64::from(self.replicas) | (u64::from(self.replica) << 32)
    }

    fn decode(v: u64) -> Self {
        Self {
            replicas: (v & 0xffff_ffff) as u32,
            replica: v >> 32 & 1 == 1,
        }
    }
}

impl Store {
    /// Record why this node keeps object `id` (which must be stored).
    pub fn set_pin(&self, id: &ContentId, pin: Pin) -> Result<()> {
        let w = self.begin_write()?;
        {
            if w.open_table(OBJECTS)?
                .get(id.to_bytes().as_slice())?
                .is_none()
            {
                return Err(Error::NotFound(*id));
            }
            w.open_table(PINS)?
                .insert(id.to_bytes().as_slice(), pin.encode())?;
        }
        self.commit(w)?;
        Ok(())
    }

    /// The pin of object `id`, if it has one.
    pub fn pin(&self, id: &ContentId) -> Result<Option<Pin>> {
        let r = self.db().begin_read()?;
        Ok(r.open_table(PINS)?
            .get(id.to_bytes().as_slice())?
            .map(|v| Pin::decode(v.value())))
    }

    /// Every pinned object.
    pub fn pins(&self) -> Result<Vec<(ContentId, Pin)>> {
        let r = self.db().begin_read()?;
        let mut out = Vec::new();
        for entry in r.open_table(PINS)?.iter()? {
            let (k, v) = entry?;
            let id = ContentId::from_bytes(k.value())
                .map_err(|e| Error::Corrupt(format!("pin key: {e}")))?;
            out.push((id, Pin::decode(v.value())));
        }
        Ok(out)
    }

    /// Bytes of the objects kept as replicas for others, in all and by owner.
    pub fn replica_usage(&self) -> Result<ReplicaUsage> {
        let r = self.db().begin_read()?;
        let objects = r.open_table(OBJECTS)?;
        let mut usage = ReplicaUsage::default();
        let mut replicas = Vec::new();
        for entry in r.open_table(PINS)?.iter()? {
            let (k, v) = entry?;
            if Pin::decode(v.value()).replica {
                let bytes = objects.get(k.value())?.map_or(0, |v| v.value());
                replicas.push((k.value().to_vec(), bytes));
            }
        }
        drop((objects, r));
        for (key, bytes) in replicas {
            let id =
                ContentId::from_bytes(&key).map_err(|e| Error::Corrupt(format!("pin key: {e}")))?;
            let owner = self.manifest_of(&id)?.owner;
            usage.total += bytes;
            *usage.by_owner.entry(owner).or_default() += bytes;
        }
        Ok(usage)
    }

    /// Remember that this node removed its replica of `id` on purpose (at `now`).
    pub fn mark_dropped(&self, id: &ContentId, now: u64) -> Result<()> {
        let w = self.begin_write()?;
        w.open_table(DROPPED)?
            .insert(id.to_bytes().as_slice(), now)?;
        self.commit(w)
    }

    /// Forget that this node removed `id` (it keeps it again on its own account).
    pub fn clear_dropped(&self, id: &ContentId) -> Result<()> {
        let w = self.begin_write()?;
        w.open_table(DROPPED)?.remove(id.to_bytes().as_slice())?;
        self.commit(w)
    }

    /// Whether this node removed its replica of `id` on purpose.
    pub fn is_dropped(&self, id: &ContentId) -> Result<bool> {
        let r = self.db().begin_read()?;
        match r.open_table(DROPPED) {
            Ok(t) => Ok(t.get(id.to_bytes().as_slice())?.is_some()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Keep `mandate` (an encoded, checked pin mandate) for object `id`.
    pub fn set_mandate(&self, id: &ContentId, mandate: &[u8]) -> Result<()> {
        let w = self.begin_write()?;
        w.open_table(MANDATES)?
            .insert(id.to_bytes().as_slice(), mandate)?;
        self.commit(w)
    }

    /// The pin mandate kept for object `id`, if any.
    pub fn mandate(&self, id: &ContentId) -> Result<Option<Vec<u8>>> {
        let r = self.db().begin_read()?;
        match r.open_table(MANDATES) {
            Ok(t) => Ok(t.get(id.to_bytes().as_slice())?.map(|v| v.value().to_vec())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
