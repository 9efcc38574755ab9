//! The libp2p behaviours a sov node runs, combined into one.

use std::time::Duration;

use libp2p::{
    StreamProtocol, allow_block_list, autonat, connection_limits, dcutr, gossipsub, identify,
    identity::Keypair,
    kad, mdns, ping, relay, request_response,
    swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
};

use crate::{
    Config,
    wire::{self, BLOCKS_PROTOCOL, BULK_PROTOCOL, Codec, NODE_PROTOCOL},
};

/// Our own DHT: never the public IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/sov/kad/1.0.0");
/// What identify announces.
pub const AGENT: &str = concat!("sov/", env!("CARGO_PKG_VERSION"));
/// Bulk streams open at once per connection (each may buffer `max_bulk_message`).
const BULK_STREAMS: usize = 2;
const IDENTIFY_PROTOCOL: &str = "/sov/id/1.0.0";

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    // Limits and bans come first: they refuse connections before others see them.
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) bans: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) gossip: gossipsub::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) blocks: request_response::Behaviour<Codec<wire::Blocks>>,
    pub(crate) node: request_response::Behaviour<Codec<wire::Direct>>,
    pub(crate) bulk: request_response::Behaviour<Codec<wire::Direct>>,
    pub(crate) streams: libp2p_stream::Behaviour,
    pub(crate) relay: relay::client::Behaviour,
    pub(crate) dcutr: dcutr::Behaviour,
    pub(crate) autonat: Toggle<autonat::Behaviour>,
}

impl Behaviour {
    pub(crate) fn new(
        key: &Keypair,
        relay: relay::client::Behaviour,
        config: &Config,
    ) -> Result<Self, String> {
        let me = key.public().to_peer_id();
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(4))
            .with_max_pending_incoming(Some(64))
            .with_max_pending_outgoing(Some(128));

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config
            .set_periodic_bootstrap_interval(Some(config.kad_refresh))
            .set_query_timeout(Duration::from_secs(30))
            .set_max_packet_size(64 << 10);
        let mut kad = kad::Behaviour::with_config(me, kad::store::MemoryStore::new(me), kad_config);
        // Every sov node answers DHT queries (client mode would wait for AutoNAT).
        kad.set_mode(Some(kad::Mode::Server));

        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(config.gossip_heartbeat)
            .validation_mode(gossipsub::ValidationMode::Strict)
            // The node decodes and checks every message and reports the verdict
            // (`Client::report`); only accepted messages are forwarded, and rejected ones
            // count against their sender's score.
            .validate_messages()
            .max_transmit_size(64 << 10)
            // Content-hash ids: the same message published twice is one message.
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(blake3::hash(&m.data).to_hex().as_str())
            })
            .build()
            .map_err(|e| format!("gossipsub config: {e}"))?;
        let mut gossip = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
        .map_err(|e| format!("gossipsub: {e}"))?;
        gossip
            .with_peer_score(
                gossipsub::PeerScoreParams::default(),
                gossipsub::PeerScoreThresholds::default(),
            )
            .map_err(|e| format!("gossipsub scoring: {e}"))?;

        let mdns = if config.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), me)
                    .map_err(|e| format!("mDNS: {e}"))?,
            )
        } else {
            None
        };
        let rr = request_response::Config::default()
            .with_request_timeout(config.request_timeout)
            .with_max_concurrent_streams(64);
        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            bans: Default::default(),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(AGENT.into()),
            ),
            ping: ping::Behaviour::new(ping::Config::new()),
            kad,
            gossip,
            mdns: mdns.into(),
            blocks: request_response::Behaviour::with_codec(
                Codec::default(),
                [(BLOCKS_PROTOCOL, request_response::ProtocolSupport::Full)],
                rr.clone(),
            ),
            node: request_response::Behaviour::with_codec(
                Codec(wire::Direct {
                    max: wire::MAX_NODE_MESSAGE,
                }),
                [(NODE_PROTOCOL, request_response::ProtocolSupport::Full)],
                rr.clone(),
            ),
            bulk: request_response::Behaviour::with_codec(
                Codec(wire::Direct {
                    max: config.max_bulk_message,
                }),
                [(BULK_PROTOCOL, request_response::ProtocolSupport::Full)],
                // Each bulk stream may buffer up to its limit: few at once per connection.
                rr.with_request_timeout(config.bulk_timeout)
                    .with_max_concurrent_streams(BULK_STREAMS),
            ),
            streams: libp2p_stream::Behaviour::new(),
            relay,
            dcutr: dcutr::Behaviour::new(me),
            autonat: config
                .autonat
                .then(|| autonat::Behaviour::new(me, autonat::Config::default()))
                .into(),
        })
    }
}
