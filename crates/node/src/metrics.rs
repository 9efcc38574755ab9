//! What the node counts, for `/metrics` (Prometheus' text format, through the
//! `prometheus-client` crate's OpenMetrics encoder).
//!
//! Counters move where things happen (requests, tokens, rate limits, generations, rounds,
//! bans, invalid peer messages); gauges that describe a state (peers, bytes stored, queued
//! generation work) are read when `/metrics` is asked.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::Node;

/// A metric's labels.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by route (its pattern), method and status.
    pub http_requests: Family<Labels, Counter>,
    /// Requests refused with 429, by what was limited (`token`, `address`).
    pub rate_limited: Family<Labels, Counter>,
    /// Access tokens issued, by audience kind (`node`, `group`).
    pub tokens_issued: Family<Labels, Counter>,
    /// Token requests refused, by OAuth error.
    pub tokens_refused: Family<Labels, Counter>,
    /// Presented access tokens refused (bad, expired, revoked, foreign).
    pub tokens_rejected: Counter,
    /// Tokens generated, by model.
    pub generated_tokens: Family<Labels, Counter>,
    /// Seconds spent generating, by model (tokens/s = the ratio of the two rates).
    pub generation_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    /// Tokens of generation work queued or running, by model.
    pub queued_tokens: Family<Labels, Gauge>,
    /// Requests decoded together in each step of a model (continuous batching).
    pub decode_batch: Histogram,
    /// Connected peers.
    pub peers: Gauge,
    /// Peers banned now.
    pub banned_peers: Gauge,
    /// Bans imposed.
    pub bans: Counter,
    /// Invalid messages from peers, by kind.
    pub invalid_messages: Family<Labels, Counter>,
    /// Inbound connections closed because their address held as many as one may.
    pub connections_limited: Counter,
    /// Federation rounds this node took.
    pub fl_rounds: Counter,
    /// How long rounds took, from this node's wait for them to their result (seconds).
    pub fl_round_seconds: Histogram,
    /// Bytes of blocks stored.
    pub store_bytes: Gauge,
    /// Blocks stored.
    pub store_blocks: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("sov");
        let m = Self {
            registry: Registry::default(),
            http_requests: Family::default(),
            rate_limited: Family::default(),
            tokens_issued: Family::default(),
            tokens_refused: Family::default(),
            tokens_rejected: Counter::default(),
            generated_tokens: Family::default(),
            generation_seconds: Family::default(),
            queued_tokens: Family::default(),
            decode_batch: Histogram::new(exponential_buckets(1.0, 2.0, 7)),
            peers: Gauge::default(),
            banned_peers: Gauge::default(),
            bans: Counter::default(),
            invalid_messages: Family::default(),
            connections_limited: Counter::default(),
            fl_rounds: Counter::default(),
            fl_round_seconds: Histogram::new(exponential_buckets(0.25, 2.0, 14)),
            store_bytes: Gauge::default(),
            store_blocks: Gauge::default(),
        };
        r.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            m.http_requests.clone(),
        );
        r.register(
            "http_rate_limited",
            "requests refused with 429, by what was limited",
            m.rate_limited.clone(),
        );
        r.register(
            "tokens_issued",
            "access tokens issued, by audience (node or group)",
            m.tokens_issued.clone(),
        );
        r.register(
            "tokens_refused",
            "token requests refused, by OAuth error",
            m.tokens_refused.clone(),
        );
        r.register(
            "tokens_rejected",
            "access tokens presented and refused (forged, expired, revoked, foreign)",
            m.tokens_rejected.clone(),
        );
        r.register(
            "generated_tokens",
            "tokens generated, by model",
            m.generated_tokens.clone(),
        );
        r.register(
            "generation_seconds",
            "seconds spent generating, by model",
            m.generation_seconds.clone(),
        );
        r.register(
            "generation_queued_tokens",
            "tokens of generation work queued or running, by model",
            m.queued_tokens.clone(),
        );
        r.register(
            "generation_decode_batch",
            "requests decoded together in one step of a model",
            m.decode_batch.clone(),
        );
        r.register("peers", "connected peers", m.peers.clone());
        r.register("banned_peers", "peers banned now", m.banned_peers.clone());
        r.register("peer_bans", "bans imposed on peers", m.bans.clone());
        r.register(
            "peer_invalid_messages",
            "invalid messages from peers, by kind",
            m.invalid_messages.clone(),
        );
        r.register(
            "peer_connections_limited",
            "inbound connections closed: their address held as many as one may",
            m.connections_limited.clone(),
        );
        r.register("fl_rounds", "federation rounds taken", m.fl_rounds.clone());
        r.register(
            "fl_round_seconds",
            "how long federation rounds took",
            m.fl_round_seconds.clone(),
        );
        r.register(
            "store_bytes",
            "bytes of blocks stored",
            m.store_bytes.clone(),
        );
        r.register("store_blocks", "blocks stored", m.store_blocks.clone());
        Self { registry: r, ..m }
    }
}

/// One label.
pub fn label(key: &'static str, value: impl Into<String>) -> Labels {
    vec![(key, value.into())]
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How a ban imposed again at start begins its reason.
pub(crate) const KEPT_BAN: &str = "kept from an earlier run: ";

/// Most bans kept in the store at once.
const MAX_KEPT_BANS: usize = 4096;

/// The records topic of the bans this node imposed: PeerId → `{until, reason}` (JSON).
const BANS_TOPIC: &str = "peer-bans";

#[derive(serde::Serialize, serde::Deserialize)]
struct KeptBan {
    until: u64,
    reason: String,
}

impl Node {
    /// Count an invalid message of `kind` from a peer.
    pub(crate) fn count_invalid(&self, kind: &'static str) {
        self.metrics()
            .invalid_messages
            .get_or_create(&label("kind", kind))
            .inc();
    }

    /// Keep a ban, so it outlives a restart.
    pub(crate) async fn keep_ban(
        &self,
        peer: sov_net::PeerId,
        reason: String,
        duration: std::time::Duration,
    ) {
        let until = unix_now().saturating_add(duration.as_secs());
        let Ok(json) = serde_json::to_vec(&KeptBan { until, reason }) else {
            return;
        };
        let now = unix_now();
        let kept = self
            .blocking(move |s| {
                // Ended bans are forgotten as new ones come; past the cap (PeerIds are free),
                // a ban holds in memory for this run only.
                let mut live = 0;
                for (k, v) in s.records(BANS_TOPIC)? {
                    if serde_json::from_slice::<KeptBan>(&v).map_or(true, |b| b.until <= now) {
                        s.remove_record(BANS_TOPIC, &k)?;
                    } else {
                        live += 1;
                    }
                }
                if live >= MAX_KEPT_BANS {
                    return Ok(false);
                }
                s.put_record(BANS_TOPIC, &peer.to_bytes(), &json)
            })
            .await;
        if let Err(e) = kept {
            tracing::warn!(%peer, "could not keep the ban: {e}");
        }
    }

    /// Impose again the bans kept from an earlier run that have not ended.
    pub(crate) async fn resume_bans(&self) {
        let Ok(net) = self.net() else { return };
        let now = unix_now();
        let Ok(kept) = self.blocking(|s| s.records(BANS_TOPIC)).await else {
            return;
        };
        for (k, v) in kept {
            let (Ok(peer), Ok(b)) = (
                sov_net::PeerId::from_bytes(&k),
                serde_json::from_slice::<KeptBan>(&v),
            ) else {
                continue;
            };
            if b.until > now {
                net.ban_for(
                    peer,
                    format!("{KEPT_BAN}{}", b.reason),
                    std::time::Duration::from_secs(b.until - now),
                )
                .await;
            }
        }
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Every metric in the text format (OpenMetrics 1.0, which Prometheus reads), the gauges
    /// read now.
    pub async fn metrics_text(&self) -> String {
        let m = self.metrics();
        if let Ok(peers) = self.peers().await {
            m.peers.set(peers.len() as i64);
        }
        if let Ok(net) = self.net()
            && let Ok(banned) = net.banned().await
        {
            m.banned_peers.set(banned.len() as i64);
        }
        if let Ok((blocks, bytes)) = self.blocking(|s| s.block_stats()).await {
            m.store_blocks.set(blocks as i64);
            m.store_bytes.set(bytes as i64);
        }
        let mut out = String::new();
        if encode(&mut out, &m.registry).is_err() {
            out.clear();
        }
        out
    }
}
