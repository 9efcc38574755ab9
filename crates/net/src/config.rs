//! [`Config`]: what a node's network needs to start.

use std::time::Duration;

use libp2p::Multiaddr;

/// Network settings; [`Config::new`] gives the defaults for a node with this key seed.
#[derive(Clone)]
pub struct Config {
    /// The node's Ed25519 seed: the PeerId and the did:key come from the same key.
    pub seed: [u8; 32],
    /// Addresses to listen on (TCP and QUIC multiaddrs; port 0 picks a free port).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through (`/ip4/…/tcp/…/p2p/…`).
    pub bootstrap: Vec<Multiaddr>,
    /// Find peers on the local network by multicast DNS.
    pub mdns: bool,
    /// Ask peers whether we are reachable from outside (AutoNAT); useless on loopback.
    pub autonat: bool,
    /// Most connections at once.
    pub max_connections: u32,
    /// How long a peer that misbehaved stays banned.
    pub ban_duration: Duration,
    /// Most inbound connections from one IP address (an IPv6 /64); 0: no limit. Loopback
    /// addresses are not limited unless `limit_loopback` (a local network of nodes, as in
    /// tests and the demo, shares 127.0.0.1).
    pub max_connections_per_ip: u32,
    /// Apply `max_connections_per_ip` to loopback addresses too (for tests of the limit).
    pub limit_loopback: bool,
    /// Malformed gossip messages (`Verdict::Malformed`) a peer may forward within 10
    /// minutes before it is banned; 0: never banned for that (its score still falls).
    pub rejected_gossip_ban: u32,
    /// How long a request may take before it fails.
    pub request_timeout: Duration,
    /// How often to refresh the DHT routing table (Kademlia bootstrap).
    pub kad_refresh: Duration,
    /// The gossipsub heartbeat (short in tests, so meshes form quickly).
    pub gossip_heartbeat: Duration,
    /// Largest message either way on the bulk protocol (`/sov/bulk/3`), for model updates.
    pub max_bulk_message: usize,
    /// How long a bulk request may take before it fails.
    pub bulk_timeout: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("mdns", &self.mdns)
            .field("autonat", &self.autonat)
            .field("max_connections", &self.max_connections)
            .field("max_bulk_message", &self.max_bulk_message)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults: listen on all interfaces on free TCP and QUIC ports, mDNS on.
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            seed,
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            autonat: false,
            max_connections: 256,
            ban_duration: Duration::from_secs(600),
            max_connections_per_ip: 16,
            limit_loopback: false,
            rejected_gossip_ban: 3,
            request_timeout: Duration::from_secs(60),
            kad_refresh: Duration::from_secs(300),
            gossip_heartbeat: Duration::from_secs(1),
            max_bulk_message: crate::wire::DEFAULT_MAX_BULK_MESSAGE,
            bulk_timeout: Duration::from_secs(600),
        }
    }

    /// Loopback only, TCP, no mDNS: for tests and local demos.
    pub fn loopback(seed: [u8; 32]) -> Self {
        Self {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")],
            mdns: false,
            gossip_heartbeat: Duration::from_millis(200),
            ..Self::new(seed)
        }
    }
}
