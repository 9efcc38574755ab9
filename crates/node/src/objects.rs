//! Objects through the node: add, read (from here or, streamed, from peers), grant,
//! remove, list, and CAR export and import. Store work runs on the blocking pool as one of
//! the node's tasks; readers and writers are moved there and handed back.

use std::io::{Read, Write};

use sov_core::{ContentId, Did};
use sov_net::PeerId;
use sov_store::{AddOptions, Added, ObjectInfo, ObjectMeta, Pin};
use tracing::debug;

use crate::{Node, Result, fetch::Streaming, protocol::Request};

/// An object as this node knows it: what the store says, and this node's pin on it.
#[derive(Debug, Clone)]
pub struct ObjectEntry {
    /// Ids, owner, sizes, and (when this node may read it) name and media type.
    pub info: ObjectInfo,
    /// The copies wanted, if this node pins it.
    pub pin: Option<Pin>,
}

/// An object opened for reading: its metadata now, its plaintext through
/// [`Node::read_into`].
#[derive(Debug)]
pub struct Reading {
    /// Name, media type, size and hash.
    pub meta: ObjectMeta,
    source: Source,
}

impl Reading {
    /// Whether the object is being fetched (its chunks arrive while it is read) rather
    /// than stored here.
    pub fn is_fetching(&self) -> bool {
        matches!(self.source, Source::Fetching(_))
    }
}

#[derive(Debug)]
enum Source {
    Stored(ContentId),
    Fetching(Box<Streaming>),
}

impl Node {
    /// Encrypt `input` into a new object, announce it, and have `replicas` peers pin it
    /// (`None`: the configured default). Returns once the object is stored and the pin
    /// requests are answered; repair keeps the count up afterwards. Offline, the pin is
    /// recorded and the node replicates the object when it next runs.
    pub async fn add(
        &self,
        input: impl Read + Send + 'static,
        opts: AddOptions,
        replicas: Option<u32>,
    ) -> Result<(Added, Vec<PeerId>)> {
        self.add_with_progress(input, opts, replicas, |_| {}).await
    }

    /// [`Node::add`], telling `progress` how many bytes were read so far.
    pub async fn add_with_progress(
        &self,
        input: impl Read + Send + 'static,
        opts: AddOptions,
        replicas: Option<u32>,
        mut progress: impl FnMut(u64) + Send + 'static,
    ) -> Result<(Added, Vec<PeerId>)> {
        let replicas = replicas.unwrap_or(self.inner.config.replicas);
        if replicas > crate::quota::MAX_REPLICAS {
            return Err(crate::Error::Refused(format!(
                "{replicas} replicas asked; at most {} (copies on peers besides this node)",
                crate::quota::MAX_REPLICAS
            )));
        }
        let added = self
            .blocking(move |s| {
                let added = s.add(input, opts, &mut progress)?;
                s.set_pin(
                    &added.id,
                    Pin {
                        replicas,
                        replica: false,
                    },
                )?;
                Ok(added)
            })
            .await?;
        let id = added.id;
        if !self.is_online() {
            return Ok((added, Vec::new()));
        }
        self.announce(id).await;
        let holders = if replicas > 0 {
            self.replicate(id).await?
        } else {
            Vec::new()
        };
        Ok((added, holders))
    }

    /// Let `reader` read object `id`, and hand the new grant to the peers holding copies.
    pub async fn grant(&self, id: ContentId, reader: Did) -> Result<ContentId> {
        let gid = self.blocking(move |s| s.grant(&id, &reader)).await?;
        let Ok(net) = self.net() else {
            return Ok(gid);
        };
        // Holders refresh their grants when asked to pin what they already hold.
        let replicas = self
            .blocking(move |s| s.pin(&id))
            .await?
            .map_or(0, |p| p.replicas);
        let mandate = self.mandate_for(id, replicas, self.did()).await?;
        for peer in self.live_holders(id).await? {
            let msg = Request::Pin {
                object: id,
                replicas,
                mandate: serde_bytes::ByteBuf::from(mandate.clone()),
            }
            .encode();
            if let Err(e) = net.request(peer, msg).await {
                debug!(%peer, "could not hand a new grant to a holder: {e}");
            }
        }
        Ok(gid)
    }

    /// Remove object `id` here and stop announcing it.
    ///
    /// Removing a replica kept for a peer sticks: this node refuses to pin it again, so its
    /// owner's repair places the copy elsewhere.
    pub async fn remove(&self, id: ContentId) -> Result<()> {
        let now = crate::node::unix_now();
        let owner = self
            .blocking(move |s| {
                let replica = s.pin(&id)?.is_some_and(|p| p.replica);
                let owner = if replica {
                    Some(s.manifest_of(&id)?.owner)
                } else {
                    None
                };
                s.remove(&id)?;
                if replica {
                    s.mark_dropped(&id, now)?;
                }
                Ok(owner)
            })
            .await?;
        // A replica: tell its owner, so it places the copy elsewhere without waiting.
        if let (Some(owner), Ok(net)) = (owner, self.net()) {
            let msg = Request::Dropped { object: id }.encode();
            let peer = sov_net::peer_id_of(&owner);
            let net = net.clone();
            self.spawn(async move {
                if let Err(e) = net.request(peer, msg).await {
                    debug!(%peer, "could not tell the owner a replica was dropped: {e}");
                }
            });
        }
        self.inner.manifests.forget(&id);
        if let Ok(net) = self.net() {
            let _ = net.unprovide(id).await;
        }
        Ok(())
    }

    /// Every object stored here, oldest first.
    pub async fn objects(&self) -> Result<Vec<ObjectEntry>> {
        self.blocking(|s| {
            s.list()?
                .into_iter()
                .map(|info| {
                    let pin = s.pin(&info.id)?;
                    Ok(ObjectEntry { info, pin })
                })
                .collect()
        })
        .await
    }

    /// Object `id` as stored here.
    pub async fn object(&self, id: ContentId) -> Result<ObjectEntry> {
        self.blocking(move |s| {
            Ok(ObjectEntry {
                info: s.info(&id)?,
                pin: s.pin(&id)?,
            })
        })
        .await
    }

    /// The readers of stored object `id` this node can name: every one if it is the owner
    /// (from the notes only the owner can open); otherwise the owner, itself if it may read,
    /// and readers that version-1 grants name. A grant hides its reader from everyone else.
    pub async fn readers(&self, id: ContentId) -> Result<Vec<sov_core::Did>> {
        self.blocking(move |s| s.readers(&id)).await
    }

    /// This node's pin on object `id` (`None`: it does not pin it, or does not hold it).
    pub async fn pin(&self, id: ContentId) -> Result<Option<Pin>> {
        self.blocking(move |s| s.pin(&id)).await
    }

    /// Whether object `id` is stored here, whole.
    pub async fn contains(&self, id: ContentId) -> Result<bool> {
        self.blocking(move |s| s.contains(&id)).await
    }

    /// Open object `id` for reading: stored here, or (online) fetched from the peers that
    /// hold it, readable while its chunks arrive. Fails if this node may not read it.
    pub async fn open_read(&self, id: ContentId) -> Result<Reading> {
        if self.is_online()
            && let Some(streaming) = self.read_streaming(id).await?
        {
            return Ok(Reading {
                meta: streaming.meta.clone(),
                source: Source::Fetching(Box::new(streaming)),
            });
        }
        let info = self.blocking(move |s| s.info(&id)).await?;
        let Some(meta) = info.meta else {
            return Err(sov_store::Error::NoGrant {
                object: id,
                reader: self.did(),
            }
            .into());
        };
        Ok(Reading {
            meta,
            source: Source::Stored(id),
        })
    }

    /// Write the plaintext of `reading` to `out`, each chunk checked and decrypted before
    /// it is written, and flush it; returns `out`.
    pub async fn read_into<W: Write + Send + 'static>(
        &self,
        reading: Reading,
        mut out: W,
    ) -> Result<W> {
        self.blocking(move |s| {
            match &reading.source {
                Source::Stored(id) => {
                    s.get(id, &mut out)?;
                }
                Source::Fetching(st) => {
                    s.get_importing(&st.reader, &st.grants, &mut out)?;
                }
            }
            out.flush()?;
            Ok(out)
        })
        .await
    }

    /// The plaintext of object `id` (fetched if needed), in memory: for small objects.
    pub async fn read(&self, id: ContentId) -> Result<Vec<u8>> {
        let reading = self.open_read(id).await?;
        self.read_into(reading, Vec::new()).await
    }

    /// Write object `id` (manifest, grants and encrypted blocks) to `out` as CAR v1.
    pub async fn export_car<W: Write + Send + 'static>(
        &self,
        id: ContentId,
        mut out: W,
    ) -> Result<W> {
        self.blocking(move |s| {
            s.export_car(&id, &mut out)?;
            out.flush()?;
            Ok(out)
        })
        .await
    }

    /// Verify and store the object in the CAR v1 file `input`, and announce it.
    pub async fn import_car(&self, input: impl Read + Send + 'static) -> Result<ContentId> {
        let id = self.blocking(move |s| s.import_car(input)).await?;
        self.announce(id).await;
        Ok(id)
    }
}
