//! The tally: a pure function of the set of valid votes. It does not care in which order
//! votes arrive or how often one arrives, and it refuses nothing loudly: a vote that does
//! not count (another proposal's, a non-member's, cast after the deadline) is passed over
//! and counted as ignored.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sov_core::{ContentId, Did, Signed};

use crate::{Choice, Membership, Proposal, Rule, Vote};

/// Where a proposal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Votes may still decide it.
    Open,
    /// Every clause of the rule holds: final.
    Passed,
    /// Some clause can no longer hold: final.
    Rejected,
    /// The deadline passed undecided (votes cast in time that arrive later may still
    /// decide it).
    Expired,
}

impl Status {
    /// Passed or rejected: nothing changes it any more.
    pub fn is_final(&self) -> bool {
        matches!(self, Status::Passed | Status::Rejected)
    }

    /// As the CLI shows it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Passed => "passed",
            Status::Rejected => "rejected",
            Status::Expired => "expired",
        }
    }
}

/// One clause's count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClauseTally {
    /// The clause as written.
    pub clause: String,
    /// The committee's weight (every eligible member of it).
    pub eligible: u64,
    /// Weight that voted yes.
    pub yes: u64,
    /// Weight that voted no.
    pub no: u64,
    /// Weight that abstained.
    pub abstain: u64,
    /// The clause holds.
    pub holds: bool,
    /// The clause can no longer hold.
    pub lost: bool,
}

/// The count of one proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// The outcome.
    pub status: Status,
    /// Each clause of the rule.
    pub clauses: Vec<ClauseTally>,
    /// The votes that count, one per member, by member.
    pub counted: Vec<(Did, Choice)>,
    /// Members that signed two different choices: none of their votes count.
    pub equivocators: Vec<Did>,
    /// Votes passed over (another proposal's, a non-member's, cast after the deadline).
    pub ignored: usize,
}

/// Count `votes` on proposal `id` among the members eligible for it, under `rule`, at time
/// `now` (which only tells open from expired).
pub fn tally<'a>(
    eligible: &Membership,
    rule: &Rule,
    id: &ContentId,
    proposal: &Proposal,
    votes: impl IntoIterator<Item = &'a Signed<Vote>>,
    now: u64,
) -> Tally {
    let mut choices: BTreeMap<Did, BTreeSet<Choice>> = BTreeMap::new();
    let mut ignored = 0;
    let mut seen = BTreeSet::new();
    for v in votes {
        let (voter, body) = (v.signer(), v.body());
        if !seen.insert((voter, body.choice, body.cast, body.proposal)) {
            continue; // the same vote delivered again
        }
        if body.proposal != *id || body.cast > proposal.deadline || !eligible.contains(&voter) {
            ignored += 1;
            continue;
        }
        choices.entry(voter).or_default().insert(body.choice);
    }
    let mut counted = Vec::new();
    let mut equivocators = Vec::new();
    for (voter, set) in choices {
        match set.len() {
            1 => counted.extend(set.into_iter().map(|c| (voter, c))),
            _ => equivocators.push(voter),
        }
    }
    let clauses: Vec<ClauseTally> = rule
        .clauses
        .iter()
        .map(|c| {
            let in_committee = |d: &Did| {
                eligible
                    .seat(d)
                    .is_some_and(|s| c.committee.as_ref().is_none_or(|r| *r == s.role))
            };
            let weight = |d: &Did| eligible.seat(d).map_or(0, |s| u64::from(s.weight));
            let total: u64 = eligible
                .members()
                .filter(|(d, _)| in_committee(d))
                .map(|(d, _)| weight(d))
                .sum();
            let sum = |choice: Choice| -> u64 {
                counted
                    .iter()
                    .filter(|(d, ch)| *ch == choice && in_committee(d))
                    .map(|(d, _)| weight(d))
                    .sum()
            };
            let (yes, no, abstain) = (sum(Choice::Yes), sum(Choice::No), sum(Choice::Abstain));
            let quorum = c
                .quorum
                .is_none_or(|q| q.reached(yes + no + abstain, total));
            let holds = total > 0 && c.threshold.reached(yes, total) && quorum;
            let lost = total == 0
                || !c
                    .threshold
                    .reached(total.saturating_sub(no + abstain), total);
            ClauseTally {
                clause: c.to_string(),
                eligible: total,
                yes,
                no,
                abstain,
                holds,
                lost,
            }
        })
        .collect();
    let status = if clauses.iter().all(|c| c.holds) {
        Status::Passed
    } else if clauses.iter().any(|c| c.lost) {
        Status::Rejected
    } else if now > proposal.deadline {
        Status::Expired
    } else {
        Status::Open
    };
    Tally {
        status,
        clauses,
        counted,
        equivocators,
        ignored,
    }
}
