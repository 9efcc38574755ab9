//! sov L2: governance by signed votes. Pure: no I/O, no clock (time is an input), no
//! randomness; the node keeps the records, moves them by gossip and sync, and acts on what
//! passed.
//!
//! ```text
//!   Group (sov/gov-group/1, signed by its creator; its CID is the group id)
//!     members with roles (committees) and weights, a rule, a default voting time
//!   Proposal (sov/gov-proposal/1, signed by a member)
//!     an action (promote, admit, remove, policy, release, custom), a deadline, and its
//!     basis: the passed membership changes it was made on (eligibility comes from them)
//!   Vote (sov/gov-vote/1, signed by an eligible member): yes, no or abstain, once
//!   Tally: a pure function of the set of valid votes ─▶ open | passed | rejected | expired
//!   Certificate: the group, the membership changes, the proposal and the votes that
//!     decided it; `verify` needs nothing else
//! ```
//!
//! **A vote is final.** A member votes once per proposal; there is no way to change it. A
//! revisable vote would make the outcome depend on the order in which nodes hear of votes
//! (one node sees the yes that decides, another the later no first), and nodes could then
//! disagree for ever. With final votes the outcome is monotone: once a set of votes decides a
//! proposal, every larger set decides it the same way, so every node that sees the decisive
//! votes reaches the same result and a passed or rejected proposal never changes again. To
//! change course, members make a new proposal. A member that signs two different choices
//! (which an honest node refuses to do) is an equivocator: none of its votes count, and the
//! evidence is kept. A node records the first decision it reaches and keeps it.

mod book;
mod cert;
mod error;
mod group;
mod proposal;
mod rule;
mod tally;

pub use book::{
    Book, MAX_PROPOSALS, MAX_PROPOSALS_PER_MEMBER, MAX_SKEW, Membership, Seat, VoteAdded,
};
pub use cert::{Certificate, Decided, FORMAT, MAX_CERTIFICATE, Verified, verify};
pub use error::{Error, Result};
pub use group::{
    DEADLINE_SECS, Group, MAX_MEMBERS, MAX_NAME, MAX_ROLE, MAX_WEIGHT, Member, check_name,
    check_role,
};
pub use proposal::{
    Action, Choice, GatewayRule, Grantee, MAX_BASIS, MAX_GATEWAY_RULES, MAX_POLICY_CHANGES,
    MAX_RULE_SCOPES, MAX_TEXT, Proposal, Vote, gateway_scopes,
};
pub use rule::{Clause, Fraction, Rule, Threshold};
pub use tally::{ClauseTally, Status, Tally, tally};

/// The id of a signed record: the CID of its bytes (canonical DAG-CBOR).
pub fn record_id(bytes: &[u8]) -> sov_core::ContentId {
    sov_core::ContentId::of(sov_core::Codec::DagCbor, bytes)
}
