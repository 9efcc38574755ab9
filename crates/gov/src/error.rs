//! Why a governance record or certificate is refused.

/// What went wrong, with what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a signed record of the expected kind, or its signature fails.
    #[error("not a valid {what}: {detail}")]
    Malformed {
        /// the kind of record
        what: &'static str,
        /// why
        detail: String,
    },
    /// A group's genesis does not make sense.
    #[error("invalid group: {0}")]
    Group(String),
    /// A rule does not parse or names no committee of the group.
    #[error("invalid rule: {0}")]
    Rule(String),
    /// A proposal is refused.
    #[error("proposal refused: {0}")]
    Proposal(String),
    /// A vote is refused.
    #[error("vote refused: {0}")]
    Vote(String),
    /// A certificate does not prove what it claims.
    #[error("certificate refused: {0}")]
    Certificate(String),
    /// Something this group does not know.
    #[error("unknown {what} {id}")]
    Unknown {
        /// proposal, group…
        what: &'static str,
        /// its id
        id: String,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
