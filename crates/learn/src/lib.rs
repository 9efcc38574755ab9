//! `sov-learn` is a layer-2 crate of sov: federated learning as pure protocol code. It
//! depends on nothing of the network or the store; time and randomness are inputs (seeds),
//! so every result replays exactly. The networked federation in `sov-node` and the
//! in-process simulation (`sov fl simulate`) drive the same code.
//!
//! ```text
//!   data ──partition──▶ clients' rows
//!   global params ──train (candle, SGD/Adam, FedProx)──▶ client update ──┐
//!                                                  (attack, clip, DP)    │
//!                       strategy (FedAvg, median, Krum, …) ◀── updates ──┘
//!                       ──▶ new global params ──evaluate──▶ accuracy, loss
//! ```

pub mod attack;
pub mod data;
pub mod dp;
pub mod federation;
pub mod ledger;
pub mod member;
pub mod model;
pub mod partition;
pub mod round;
pub mod secagg;
pub mod sim;
pub mod strategy;
pub mod table;
pub mod train;
pub mod wire;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A data set or split file is malformed or does not fit.
    #[error("data: {0}")]
    Data(String),
    /// A model, partition or training setting is not valid.
    #[error("{0}")]
    Spec(String),
    /// A message is malformed.
    #[error("malformed message: {0}")]
    Wire(String),
    /// Secure aggregation refused a message or aborted the round.
    #[error("secure aggregation: {0}")]
    SecAgg(String),
    /// candle failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
