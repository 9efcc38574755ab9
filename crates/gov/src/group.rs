//! A group: the signed genesis record that founds it. Its CID is the group id. It names the
//! founding members (each with a role, which is its committee, and a weight), the rule by
//! which proposals pass, and how long a proposal stays open by default.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use sov_core::{ContentId, Did, Message, Signed};

use crate::{Error, Result, Rule, record_id};

/// Most members a group has (founders and admitted together).
pub const MAX_MEMBERS: usize = 1024;
/// Longest group name.
pub const MAX_NAME: usize = 64;
/// Longest role name.
pub const MAX_ROLE: usize = 32;
/// Largest weight of one member.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// How long a proposal may stay open, in seconds (one second to a year).
pub const DEADLINE_SECS: RangeInclusive<u64> = 1..=365 * 86_400;

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Who.
    pub did: Did,
    /// Its role: the committee it votes in.
    pub role: String,
    /// The weight of its vote (at least 1).
    pub weight: u32,
}

/// The record that founds a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// A name for people; a promoted model is served under it.
    pub name: String,
    /// When it was made (Unix seconds).
    pub created: u64,
    /// The founding members.
    pub members: Vec<Member>,
    /// When a proposal passes ([`Rule`] syntax).
    pub rule: String,
    /// How long a proposal stays open unless it says otherwise (seconds).
    pub voting_secs: u64,
}

impl Message for Group {
    const TAG: &'static str = "sov/gov-group/1";
}

/// Check a group name: it becomes a model name on `/v1`, so letters, digits, `.`, `_`, `-`.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        || name.starts_with(['.', '-'])
    {
        return Err(Error::Group(format!(
            "{}: a group name is 1 to {MAX_NAME} letters, digits, '.', '_' or '-'",
            sov_core::quote(name)
        )));
    }
    Ok(())
}

/// Check a role name: a lowercase word.
pub fn check_role(role: &str) -> Result<()> {
    if role.is_empty()
        || role.len() > MAX_ROLE
        || !role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        || !role.starts_with(|c: char| c.is_ascii_lowercase())
        || matches!(role, "and" | "majority" | "unanimous" | "all")
    {
        return Err(Error::Rule(format!(
            "{}: a role is a lowercase word of at most {MAX_ROLE} characters (not and, all, majority, unanimous)",
            sov_core::quote(role)
        )));
    }
    Ok(())
}

pub(crate) fn check_member(m: &Member) -> Result<()> {
    check_role(&m.role).map_err(|e| Error::Group(e.to_string()))?;
    if m.weight == 0 || m.weight > MAX_WEIGHT {
        return Err(Error::Group(format!(
            "{}: a weight is 1 to {MAX_WEIGHT}",
            m.did
        )));
    }
    Ok(())
}

impl Group {
    /// The rule, parsed.
    pub fn rule(&self) -> Result<Rule> {
        self.rule.parse()
    }

    /// Check the whole record: refused whole when any part does not make sense.
    pub fn validate(&self) -> Result<()> {
        check_name(&self.name)?;
        if self.members.is_empty() || self.members.len() > MAX_MEMBERS {
            return Err(Error::Group(format!(
                "a group has 1 to {MAX_MEMBERS} members"
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.members {
            check_member(m)?;
            if !seen.insert(m.did) {
                return Err(Error::Group(format!("{} is named twice", m.did)));
            }
        }
        let rule = self.rule()?;
        for c in rule.committees() {
            if !self.members.iter().any(|m| m.role == c) {
                return Err(Error::Rule(format!(
                    "the rule names committee {c:?}, and no member has that role"
                )));
            }
        }
        if !DEADLINE_SECS.contains(&self.voting_secs) {
            return Err(Error::Group(format!(
                "voting time {} s: it is 1 s to a year",
                self.voting_secs
            )));
        }
        Ok(())
    }
}

/// A checked genesis: its id and signer.
pub(crate) fn open_group(bytes: &[u8]) -> Result<(ContentId, Did, Group)> {
    let signed = Signed::<Group>::decode(bytes).map_err(|e| Error::Malformed {
        what: "group",
        detail: e.to_string(),
    })?;
    let signer = signed.signer();
    let group = signed.into_body();
    group.validate()?;
    if !group.members.iter().any(|m| m.did == signer) {
        return Err(Error::Group(format!(
            "signed by {signer}, who is not one of its members"
        )));
    }
    Ok((record_id(bytes), signer, group))
}
