//! `sov-net` is a layer-2 crate of sov: the peer-to-peer network, on rust-libp2p. It moves
//! bytes and blocks between peers and knows nothing of objects, models or votes; the node
//! (layer 3) gives those meaning.
//!
//! ```text
//!   Client (cloneable) ──Command + oneshot──▶ event loop (owns the Swarm) ──Event──▶ node
//!        │                                      │ TCP/QUIC, Noise, Yamux, identify, ping,
//!        │                                      │ Kademlia /sov/kad/1.0.0, gossipsub, mDNS,
//!        └── perf streams (libp2p-stream)       │ /sov/blocks/2, /sov/node/5, relay client,
//!                                               │ DCUtR, AutoNAT, connection limits, bans
//! ```
//!
//! One task owns the [`libp2p::Swarm`]; a [`Client`] sends it commands, each with a reply
//! channel, and [`Event`]s come out on a bounded channel. Every queue is bounded and every
//! message has a size limit ([`wire`]). The PeerId comes from the node's Ed25519 key, so
//! [`did_of`] and [`peer_id_of`] convert between PeerIds and `did:key`s without a lookup.
//! Blocks received from peers are checked against their CIDs before anyone sees them
//! ([`Client::want`]); a peer that sends a wrong block or a malformed message is banned.

mod behaviour;
mod client;
mod config;
mod event_loop;
pub use event_loop::start;
pub mod perf;
pub mod wire;

pub use behaviour::{AGENT, KAD_PROTOCOL};
pub use client::{
    BlocksReply, Channel, Client, Event, MessageId, PeerInfo, Providers, Reply, Verdict,
};
pub use config::Config;
pub use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use sov_core::Did;

/// What went wrong in the network.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The network task has stopped.
    #[error("the network has stopped")]
    Stopped,
    /// The swarm could not be built or could not listen.
    #[error("network setup: {0}")]
    Setup(String),
    /// A dial failed.
    #[error("could not reach {addr}: {reason}")]
    Dial {
        /// where
        addr: String,
        /// why
        reason: String,
    },
    /// A request to a peer failed (unreachable, timeout, closed, unsupported).
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// the peer
        peer: PeerId,
        /// why
        reason: String,
    },
    /// A peer sent something it should not have; it is banned.
    #[error("peer {peer} misbehaved: {reason}")]
    Misbehaved {
        /// the peer
        peer: PeerId,
        /// what it did
        reason: String,
    },
    /// A DHT operation failed.
    #[error("DHT: {0}")]
    Dht(String),
    /// A gossipsub operation failed.
    #[error("gossip: {0}")]
    Gossip(String),
}

/// The network's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The PeerId of a node named by `did` (the same Ed25519 key).
pub fn peer_id_of(did: &Did) -> PeerId {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(did.public_bytes())
        .expect("a Did always holds a valid Ed25519 key");
    libp2p::identity::PublicKey::from(key).to_peer_id()
}

/// The did:key of a peer, if its PeerId embeds an Ed25519 key (every sov node's does).
pub fn did_of(peer: &PeerId) -> Option<Did> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None; // not an identity multihash: the key is not inside
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Did::from_public_bytes(&key.try_into_ed25519().ok()?.to_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_and_did_name_the_same_key() {
        let seed = [7u8; 32];
        let kp = libp2p::identity::Keypair::ed25519_from_bytes(seed).unwrap();
        let peer = kp.public().to_peer_id();
        let did = did_of(&peer).expect("ed25519 peer");
        assert_eq!(peer_id_of(&did), peer);
        assert!(did.to_string().starts_with("did:key:z6Mk"));
        assert_eq!(did_of(&PeerId::random()), None);
    }
}
