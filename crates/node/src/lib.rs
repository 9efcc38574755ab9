//! `sov-node` is layer 3 of sov: the node, the only crate that sees the store, the network
//! and the models, and the one door through which the API and the CLI reach them. It
//! answers peers' block requests from the store, fetches objects it lacks from the peers
//! that provide them (verified block by block, from several providers at once, banning
//! liars), has peers pin copies and repairs the copy count when holders disappear, checks
//! the gossip it receives, keeps the model registry and serves loaded models.
//!
//! ```text
//!              ┌──────────────── Node (cloneable handle, no store or net inside) ───────────────┐
//!   api / cli ─┤ objects: add · open_read · read_into · grant · remove · CAR                     │
//!              │ models: import · pull · share · remove   serve: generate · embed ─▶ serve actor │
//!              │                                                                                │
//!              │  Store (redb) ◀─ blocking tasks        net::Client ──▶ swarm task               │
//!              │                                            │ net::Event                        │
//!              │  tasks (one JoinSet): events · repair · offers · answers · fetches · workers   │
//!              └────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! [`Node::shutdown`] ends every task and closes the store; [`Node::offline`] opens a home
//! without a network (the CLI's local mode). `docs/ARCHITECTURE.md` walks a read and a chat
//! completion through the code.

mod access;
pub mod auth;
pub mod classifier;
mod config;
mod events;
mod fetch;
mod fl;
mod gossip;
pub mod gov;
pub mod metrics;
pub mod models;
mod node;
mod objects;
pub mod protocol;
pub mod quota;
mod replicate;
pub mod serve;

pub use config::{CONFIG_FILE, Config, File as ConfigFile};
pub use fetch::FetchReport;
pub use fl::{FederationStatus, Membership, RoundSummary, Traffic};
pub use gov::{GroupStatus, MemberView, ProposalStatus, VoteView};
pub use node::{Node, check_store, repair_store};
pub use objects::{ObjectEntry, Reading};
pub use sov_net::{Multiaddr, PeerId, PeerInfo, Providers, peer_id_of, perf::PerfReport};
/// The store's types that callers of the node see.
pub use sov_store::{
    AddOptions, Added, CheckReport, DB_FILE, Error as StoreError, ObjectInfo, ObjectMeta, Pin,
    RepairReport,
};

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
    /// A model could not be imported, verified or loaded.
    #[error("{0}")]
    Model(String),
    /// A peer's request, or one of ours, is past a limit or quota of this node (the reason
    /// says which).
    #[error("{0}")]
    Refused(String),
    /// No model has this name or id here.
    #[error("{0}")]
    NoModel(String),
    /// No group or proposal has this id here.
    #[error("{0}")]
    NotFound(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Stopped,
    /// The node was opened without a network (no `sov node run` is running).
    #[error("this needs the network: start the node first (`sov node run`)")]
    Offline,
}

/// The node's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
