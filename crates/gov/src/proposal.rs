//! Proposals and votes: the records members sign.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use sov_core::{ContentId, Did, Message};

use crate::{Error, Result, group};

/// Most membership changes a proposal's basis names.
pub const MAX_BASIS: usize = 4096;
/// Most settings one policy proposal changes.
pub const MAX_POLICY_CHANGES: usize = 32;
/// Longest text (a custom proposal; a release's name and version are shorter).
pub const MAX_TEXT: usize = 4096;
/// Most rules one gateway policy holds.
pub const MAX_GATEWAY_RULES: usize = 64;
/// Most scopes one gateway rule gives.
pub const MAX_RULE_SCOPES: usize = 16;

/// Whom a gateway rule is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grantee {
    /// One client, by its DID (a consumer outside the group).
    Did(Did),
    /// The group's members with this role.
    Role(String),
    /// Every member of the group.
    Members,
}

impl fmt::Display for Grantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grantee::Did(d) => write!(f, "{d}"),
            Grantee::Role(r) => write!(f, "role:{r}"),
            Grantee::Members => f.write_str("members"),
        }
    }
}

impl FromStr for Grantee {
    type Err = Error;

    /// `did:key:…`, `role:NAME` or `members`.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s == "members" {
            Ok(Grantee::Members)
        } else if let Some(r) = s.strip_prefix("role:") {
            Ok(Grantee::Role(r.to_owned()))
        } else {
            s.parse().map(Grantee::Did).map_err(|_| {
                Error::Proposal(format!(
                    "{}: a grantee is a did:key, role:NAME or members",
                    sov_core::quote(s)
                ))
            })
        }
    }
}

/// One rule of a group's gateway policy: these clients may get access tokens with these
/// scopes from any member node, and use them on every member node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRule {
    /// Whom it is for.
    pub who: Grantee,
    /// The scopes it gives (never `admin`: a group does not hand out its members' nodes).
    pub scopes: Vec<String>,
}

impl fmt::Display for GatewayRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.who, self.scopes.join(","))
    }
}

/// The scopes `rules` give `did`, whose seat in the group is `seat` (none: not a member),
/// sorted, each once.
pub fn gateway_scopes(rules: &[GatewayRule], did: &Did, seat: Option<&crate::Seat>) -> Vec<String> {
    let mut out: Vec<String> = rules
        .iter()
        .filter(|r| match &r.who {
            Grantee::Did(d) => d == did,
            Grantee::Role(role) => seat.is_some_and(|s| s.role == *role),
            Grantee::Members => seat.is_some(),
        })
        .flat_map(|r| r.scopes.iter().cloned())
        .filter(|s| s != "admin")
        .collect();
    out.sort();
    out.dedup();
    out
}

impl FromStr for GatewayRule {
    type Err = Error;

    /// `WHO=SCOPE,SCOPE…`, e.g. `members=infer,predict` or `did:key:z…=predict`.
    fn from_str(s: &str) -> Result<Self> {
        let (who, scopes) = s.rsplit_once('=').ok_or_else(|| {
            Error::Proposal(format!(
                "{}: a gateway rule is WHO=SCOPE,SCOPE (WHO: a did:key, role:NAME or members)",
                sov_core::quote(s)
            ))
        })?;
        Ok(GatewayRule {
            who: who.parse()?,
            scopes: scopes
                .split([',', ' '])
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// What a proposal asks the group to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Serve this model (a signed model manifest's id) under the group's name.
    Promote {
        /// the model's manifest id
        model: ContentId,
    },
    /// Make `member` a member, with a role and a weight.
    Admit {
        /// who
        member: Did,
        /// its role (committee)
        role: String,
        /// its weight
        weight: u32,
    },
    /// Remove `member`: from the group, for good, and from the federations it governs.
    Remove {
        /// who
        member: Did,
    },
    /// Change settings of a federation the group governs, from its next round.
    Policy {
        /// the federation
        federation: ContentId,
        /// setting → new value, as `sov fl create` takes them
        changes: BTreeMap<String, String>,
    },
    /// A release: members' nodes fetch the artifact and check it.
    Release {
        /// what is released
        name: String,
        /// its version
        version: String,
        /// the artifact (an object id)
        artifact: ContentId,
    },
    /// The group's gateway policy (replacing any earlier one): who may get access tokens
    /// from member nodes, with which scopes, honoured by every member. No rules: none.
    Gateway {
        /// the rules
        rules: Vec<GatewayRule>,
    },
    /// Anything else, in words.
    Custom {
        /// the text
        text: String,
    },
}

impl Action {
    /// The kind of action, as the CLI names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Promote { .. } => "promote",
            Action::Admit { .. } => "admit",
            Action::Remove { .. } => "remove",
            Action::Policy { .. } => "policy",
            Action::Release { .. } => "release",
            Action::Gateway { .. } => "gateway",
            Action::Custom { .. } => "custom",
        }
    }

    /// Whether passing it changes who the members are.
    pub fn changes_membership(&self) -> bool {
        matches!(self, Action::Admit { .. } | Action::Remove { .. })
    }

    /// Check its shape (what does not depend on the group's state).
    pub fn validate(&self) -> Result<()> {
        let text = |what: &str, s: &str, max: usize| {
            if s.is_empty()
                || s.chars().count() > max
                || s.chars().any(char::is_control) && what != "text"
            {
                return Err(Error::Proposal(format!(
                    "{what}: 1 to {max} characters, no control characters"
                )));
            }
            Ok(())
        };
        match self {
            Action::Promote { .. } | Action::Remove { .. } => Ok(()),
            Action::Admit {
                role,
                weight,
                member,
            } => group::check_member(&group::Member {
                did: *member,
                role: role.clone(),
                weight: *weight,
            })
            .map_err(|e| Error::Proposal(e.to_string())),
            Action::Policy { changes, .. } => {
                if changes.is_empty() || changes.len() > MAX_POLICY_CHANGES {
                    return Err(Error::Proposal(format!(
                        "a policy proposal changes 1 to {MAX_POLICY_CHANGES} settings"
                    )));
                }
                for (k, v) in changes {
                    text("setting", k, 64)?;
                    text("value", v, 256)?;
                }
                Ok(())
            }
            Action::Release { name, version, .. } => {
                text("name", name, 128)?;
                text("version", version, 64)
            }
            Action::Gateway { rules } => {
                if rules.len() > MAX_GATEWAY_RULES {
                    return Err(Error::Proposal(format!(
                        "a gateway policy holds at most {MAX_GATEWAY_RULES} rules"
                    )));
                }
                for r in rules {
                    if let Grantee::Role(role) = &r.who {
                        text("role", role, 64)?;
                    }
                    if r.scopes.is_empty() || r.scopes.len() > MAX_RULE_SCOPES {
                        return Err(Error::Proposal(format!(
                            "a gateway rule gives 1 to {MAX_RULE_SCOPES} scopes"
                        )));
                    }
                    for s in &r.scopes {
                        if s.is_empty()
                            || s.len() > 32
                            || !s.bytes().all(|b| b.is_ascii_lowercase() || b == b':')
                        {
                            return Err(Error::Proposal(format!(
                                "{}: a scope is a short lowercase word",
                                sov_core::quote(s)
                            )));
                        }
                        if s == "admin" {
                            return Err(Error::Proposal(
                                "a group's gateway policy never gives admin".into(),
                            ));
                        }
                    }
                }
                Ok(())
            }
            Action::Custom { text: t } => text("text", t, MAX_TEXT),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Promote { model } => write!(f, "promote model {model}"),
            Action::Admit {
                member,
                role,
                weight,
            } => write!(f, "admit {member} as {role} (weight {weight})"),
            Action::Remove { member } => write!(f, "remove {member}"),
            Action::Policy {
                federation,
                changes,
            } => {
                write!(f, "federation {federation}:")?;
                for (k, v) in changes {
                    write!(f, " {k}={v}")?;
                }
                Ok(())
            }
            Action::Release {
                name,
                version,
                artifact,
            } => write!(f, "release {name} {version} ({artifact})"),
            Action::Gateway { rules } if rules.is_empty() => f.write_str("gateway policy: no one"),
            Action::Gateway { rules } => {
                f.write_str("gateway policy:")?;
                for r in rules {
                    write!(f, " {r}")?;
                }
                Ok(())
            }
            Action::Custom { text } => write!(f, "{}", sov_core::quote(text)),
        }
    }
}

/// A proposal to a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The group.
    pub group: ContentId,
    /// What it asks.
    pub action: Action,
    /// When it was made (Unix seconds).
    pub created: u64,
    /// Votes cast after this time (Unix seconds) do not count.
    pub deadline: u64,
    /// The passed membership changes it was made on, sorted: who may vote on it (and
    /// propose it) follows from the group's founders and these.
    pub basis: Vec<ContentId>,
}

impl Message for Proposal {
    const TAG: &'static str = "sov/gov-proposal/1";
}

/// A vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// For.
    Yes,
    /// Against.
    No,
    /// Present, neither for nor against (counts towards a quorum).
    Abstain,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Choice::Yes => "yes",
            Choice::No => "no",
            Choice::Abstain => "abstain",
        })
    }
}

impl FromStr for Choice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "yes" | "y" => Ok(Choice::Yes),
            "no" | "n" => Ok(Choice::No),
            "abstain" => Ok(Choice::Abstain),
            _ => Err(Error::Vote(format!(
                "{}: a vote is yes, no or abstain",
                sov_core::quote(s)
            ))),
        }
    }
}

/// A member's vote on one proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The proposal (its id: a vote cannot be moved to another).
    pub proposal: ContentId,
    /// The choice.
    pub choice: Choice,
    /// When it was cast (Unix seconds, the voter's clock).
    pub cast: u64,
}

impl Message for Vote {
    const TAG: &'static str = "sov/gov-vote/1";
}
