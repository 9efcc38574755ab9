//! `sov-node` is layer 3 of sov: the node actor, the only crate that sees both the store and
//! the network. It answers peers' block requests from the store, fetches objects it lacks
//! from the peers that provide them (verified block by block, from several providers at
//! once, banning liars), has peers pin copies of objects, and repairs the copy count when
//! holders disappear.
//!
//! ```text
//!              ┌───────────── Node (cloneable handle) ─────────────┐
//!   api / cli ─┤ add · get · fetch · replicate · grant · peers    │
//!              │        │                 │                        │
//!              │   Store (redb,      net::Client ──▶ swarm task    │
//!              │   blocking pool)        ▲                         │
//!              │        ▲                │ net::Event              │
//!              │        └── event task ◀─┘ (want-lists, pin/has/   │
//!              │            repair task     grants requests)       │
//!              └───────────────────────────────────────────────────┘
//! ```

mod config;
mod events;
mod fetch;
mod gossip;
pub mod models;
mod node;
mod objects;
pub mod protocol;
mod replicate;
pub mod serve;

pub use config::{CONFIG_FILE, Config, File as ConfigFile};
pub use fetch::FetchReport;
pub use node::Node;
pub use objects::{ObjectEntry, Reading};
pub use sov_net::{Multiaddr, PeerId, PeerInfo, Providers, peer_id_of, perf::PerfReport};
/// The store's types that callers of the node see.
pub use sov_store::{AddOptions, Added, DB_FILE, Error as StoreError, ObjectInfo, ObjectMeta, Pin};

/// What went wrong in the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] sov_store::Error),
    /// The network failed.
    #[error(transparent)]
    Net(#[from] sov_net::Error),
    /// `config.toml` is invalid.
    #[error("config: {0}")]
    Config(String),
    /// The object is neither here nor with any reachable peer.
    #[error("object {id} is not stored here and no peer provides it{detail}")]
    Unavailable {
        /// the object
        id: sov_core::ContentId,
        /// what was tried
        detail: String,
    },
    /// A fetch could not complete.
    #[error("fetching {id}: {reason}")]
    Fetch {
        /// the object
        id: sov_core::ContentId,
        /// why
        reason: String,
    },
    /// A model could not be imported, found, verified or loaded.
    #[error("{0}")]
    Model(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Stopped,
    /// The node was opened without a network (no `sov node run` is running).
    #[error("this needs the network: start the node first (`sov node run`)")]
    Offline,
}

/// The node's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
