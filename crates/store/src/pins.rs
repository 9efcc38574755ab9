//! Pins: which objects this node keeps for the network, and how many copies each should
//! have (table [`PINS`]: replicas in the low 32 bits, bit 32 = kept as a replica).

use redb::{ReadableDatabase, ReadableTable};
use sov_core::ContentId;

use crate::{
    Error, Result, Store,
    store::{OBJECTS, PINS},
};

/// Why this node keeps an object, and how many copies the network should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    /// Copies the object should have on peers other than its owner.
    pub replicas: u32,
    /// This node keeps it as a replica for someone else (not as its owner or a reader).
    pub replica: bool,
}

impl Pin {
    fn encode(self) -> u64 {
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
}
