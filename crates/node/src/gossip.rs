//! Gossip: the topics the node subscribes to. Gossipsub checks each message's signature;
//! the node then decodes and checks its content and reports the verdict back (accept,
//! reject, ignore), so only valid messages travel further and a peer that sends invalid
//! ones loses score (and, below gossipsub's thresholds, its mesh links).
//!
//! Today one topic: [`MODELS_TOPIC`], on which each node offers the models it signed. A
//! valid offer names a manifest whose signature verifies and whose signer is the peer that
//! published it; peers keep a bounded list of offers ([`Node::announced_models`]) and
//! can pull any of them. Federations (`sov/fl/1/<id>`) and groups (`sov/gov/1/<id>`) have their own topics.

use std::{collections::HashMap, sync::Mutex};

use sov_core::{ContentId, Signed};
use sov_models::manifest::{self, ModelManifest};
use sov_net::{PeerId, Verdict};
use tracing::debug;

use crate::{
    Node, Result,
    models::ModelEntry,
    protocol::{MODELS_TOPIC, ModelAnnouncement},
};

/// Tries to publish a new model's offer before leaving it to the periodic round.
const OFFER_TRIES: usize = 15;

/// Offers kept at most; the oldest go first.
const MAX_ANNOUNCED: usize = 1024;

/// Models offered by peers, by id, with the order they arrived in.
#[derive(Default)]
pub(crate) struct Announced(Mutex<Offers>);

#[derive(Default)]
struct Offers {
    seq: u64,
    by_id: HashMap<ContentId, (u64, ModelEntry)>,
}

impl Announced {
    fn insert(&self, entry: ModelEntry) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Offers { seq, by_id: map } = &mut *g;
        *seq += 1;
        if !map.contains_key(&entry.id)
            && map.len() >= MAX_ANNOUNCED
            && let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(id, _)| *id)
        {
            map.remove(&oldest);
        }
        map.insert(entry.id, (*seq, entry));
    }

    fn list(&self) -> Vec<ModelEntry> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<ModelEntry> = g.by_id.values().map(|(_, e)| e.clone()).collect();
        v.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name).then(a.id.cmp(&b.id)));
        v
    }
}

/// Check a model offer from gossip: well-formed, signature valid, signed by its publisher.
pub(crate) fn check_announcement(
    data: &[u8],
    source: Option<PeerId>,
) -> std::result::Result<ModelEntry, String> {
    let a = ModelAnnouncement::decode(data)?;
    let signed = Signed::<ModelManifest>::decode(&a.manifest).map_err(|e| e.to_string())?;
    let signer = signed.signer();
    match source {
        Some(p) if p == sov_net::peer_id_of(&signer) => {}
        Some(p) => return Err(format!("published by {p}, signed by {signer}")),
        None => return Err("an anonymous offer".into()),
    }
    let manifest = signed.into_body();
    manifest::check_name(&manifest.name)?;
    Ok(ModelEntry {
        id: a.model,
        signer,
        manifest,
    })
}

impl Node {
    /// Subscribe to the node's topics.
    pub(crate) async fn join_topics(&self) {
        let Ok(net) = self.net() else { return };
        if let Err(e) = net.subscribe(MODELS_TOPIC).await {
            tracing::warn!("could not subscribe to {MODELS_TOPIC}: {e}");
        }
    }

    /// Decode and check a gossip message; the verdict goes back to gossipsub.
    pub(crate) fn on_gossip(&self, topic: &str, source: Option<PeerId>, data: &[u8]) -> Verdict {
        match topic {
            MODELS_TOPIC => match check_announcement(data, source) {
                Ok(entry) => {
                    debug!(model = %entry.id, name = %entry.manifest.name, signer = %entry.signer, "model offered");
                    self.inner.announced.insert(entry);
                    Verdict::Accept
                }
                Err(e) => {
                    // Every check of an offer is one any node makes alike.
                    debug!(?source, "invalid model offer: {e}");
                    Verdict::Malformed
                }
            },
            t if t.starts_with(crate::protocol::FL_TOPIC_PREFIX) => {
                self.on_fl_gossip(t, source, data)
            }
            t if t.starts_with(crate::protocol::GOV_TOPIC_PREFIX) => {
                self.on_gov_gossip(t, source, data)
            }
            _ => Verdict::Ignore,
        }
    }

    /// The models peers offered on gossip (not stored here until pulled), by name.
    pub fn announced_models(&self) -> Vec<ModelEntry> {
        self.inner.announced.list()
    }

    /// `peer`'s gossip score here: negative once it sent invalid messages.
    pub async fn gossip_score(&self, peer: PeerId) -> Result<Option<f64>> {
        Ok(self.net()?.gossip_score(peer).await?)
    }

    /// Offer on gossip every model here that this node signed; false if an offer could not
    /// be published (no peer on the topic yet, or a repeat gossipsub still remembers).
    pub(crate) async fn announce_models(&self) -> bool {
        let Ok(net) = self.net() else { return true };
        let Ok(models) = self.models().await else {
            return false;
        };
        let mut all = true;
        // Classifiers a federation trained are for its members, who hold grants: not offered.
        for entry in models.into_iter().filter(|e| {
            e.signer == self.did() && e.manifest.kind != sov_models::manifest::ModelKind::Classifier
        }) {
            let manifest = match self.read(entry.id).await {
                Ok(m) => m,
                Err(e) => {
                    debug!(model = %entry.id, "cannot read the manifest to offer it: {e}");
                    continue;
                }
            };
            let msg = ModelAnnouncement {
                model: entry.id,
                manifest,
            };
            // Fails while no peer shares the topic, or for a repeat still in gossipsub's
            // cache: both are fine, the next round offers it again.
            if let Err(e) = net.publish(MODELS_TOPIC, msg.encode()).await {
                debug!(model = %entry.id, "model offer not published: {e}");
                all = false;
            }
        }
        all
    }

    /// Offer the node's models now, retrying for a while if no peer is on the topic yet
    /// (a mesh forms within a few heartbeats of connecting).
    pub(crate) async fn offer_now(self) {
        let mut stopped = self.stopped();
        for _ in 0..OFFER_TRIES {
            if self.announce_models().await {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.inner.config.gossip_heartbeat * 2) => {}
                _ = stopped.changed() => return,
            }
        }
    }

    /// Offer the node's models now and then, so peers that joined later learn of them.
    pub(crate) async fn announce_loop(self) {
        let mut stopped = self.stopped();
        let mut tick = tokio::time::interval(self.inner.config.repair_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => return,
            }
            let _ = self.announce_models().await;
        }
    }
}
