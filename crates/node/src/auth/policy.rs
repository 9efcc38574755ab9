//! `$SOV_HOME/policy.toml`: which clients this node gives access tokens to, and with which
//! scopes. A client gets every scope of every rule that names it.
//!
//! ```toml
//! [[allow]]
//! did = "did:key:z6Mk…"          # one client
//! scopes = ["infer", "predict"]
//!
//! [[allow]]
//! group = "hospitals"            # members of a governance group this node is in (name or id)
//! role = "maintainers"           # … only those with this role (optional)
//! scopes = ["fl:join", "gov:vote"]
//! ```
//!
//! The file is the owner's to edit by hand; `sov token allow` rewrites it (comments are
//! lost then). A file that does not parse refuses every client until it is mended, with the
//! reason in the token endpoint's answer and the node's log. A group's own gateway policy,
//! adopted by vote, is separate (see [`group`](super::group)).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sov_core::Did;

use super::parse_scopes;
use crate::{Error, Node, Result, gov::state::lock};

/// The file's name in the node's home.
pub const POLICY_FILE: &str = "policy.toml";
/// Largest policy file read.
const MAX_POLICY_BYTES: u64 = 1 << 20;
/// Most rules.
const MAX_RULES: usize = 4096;

/// One rule: who, and the scopes it may get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// One client's DID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub did: Option<String>,
    /// The members of a governance group this node is in (its name or id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// With `group`: only members with this role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The scopes.
    pub scopes: Vec<String>,
}

impl Rule {
    fn check(&self) -> Result<()> {
        match (&self.did, &self.group) {
            (Some(d), None) => {
                d.parse::<Did>().map_err(|_| {
                    Error::Refused(format!("{}: not a did:key", sov_core::quote(d)))
                })?;
                if self.role.is_some() {
                    return Err(Error::Refused("a role goes with a group, not a DID".into()));
                }
            }
            (None, Some(_)) => {}
            _ => {
                return Err(Error::Refused(
                    "a rule names either a did or a group".into(),
                ));
            }
        }
        if parse_scopes(&self.scopes)?.is_empty() {
            return Err(Error::Refused("a rule gives at least one scope".into()));
        }
        Ok(())
    }

    /// Whom it is for, in words.
    pub fn who(&self) -> String {
        match (&self.did, &self.group, &self.role) {
            (Some(d), _, _) => d.clone(),
            (_, Some(g), Some(r)) => format!("group {g}, role {r}"),
            (_, Some(g), None) => format!("group {g}"),
            _ => "no one".into(),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The rules.
    #[serde(default)]
    pub allow: Vec<Rule>,
}

impl Policy {
    /// Read it from `path` (a missing file: no rules).
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |why: String| Error::Refused(format!("{}: {why}", path.display()));
        let text = match std::fs::metadata(path) {
            Ok(m) if m.len() > MAX_POLICY_BYTES => {
                return Err(bad(format!("larger than {MAX_POLICY_BYTES} bytes")));
            }
            Ok(_) => std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(bad(e.to_string())),
        };
        let p: Policy = toml::from_str(&text).map_err(|e| bad(e.message().to_owned()))?;
        if p.allow.len() > MAX_RULES {
            return Err(bad(format!("more than {MAX_RULES} rules")));
        }
        for (i, r) in p.allow.iter().enumerate() {
            r.check().map_err(|e| bad(format!("rule {}: {e}", i + 1)))?;
        }
        Ok(p)
    }

    /// Write it to `path` (whole, or not at all).
    fn write(&self, path: &Path) -> Result<()> {
        let body = toml::to_string_pretty(self).map_err(|e| Error::Refused(e.to_string()))?;
        let text = format!(
            "# Who may get access tokens from this node (POST /oauth/token), with which scopes.\n\
             # A rule names a did, or a group this node is in (with an optional role).\n\
             # Written by `sov token allow`; edit by hand as you like.\n\n{body}"
        );
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| Error::Refused(format!("{}: {e}", path.display())))
    }
}

/// Whom a `sov token allow` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// One client.
    Did(Did),
    /// A group's members (with a role, if given).
    Group {
        /// The group's name or id.
        group: String,
        /// Only members with this role.
        role: Option<String>,
    },
}

impl Node {
    fn policy_path(&self) -> PathBuf {
        self.inner.home.join(POLICY_FILE)
    }

    /// The rules of `policy.toml`.
    pub async fn token_policy(&self) -> Result<Vec<Rule>> {
        let path = self.policy_path();
        tokio::task::spawn_blocking(move || Policy::read(&path).map(|p| p.allow))
            .await
            .map_err(|e| Error::Refused(e.to_string()))?
    }

    /// Let `who` get tokens with `scopes` (none: take its rule out), in `policy.toml`.
    pub async fn token_allow(&self, who: Who, scopes: &[String]) -> Result<Vec<String>> {
        let scopes = parse_scopes(scopes)?;
        let rule = match who {
            Who::Did(d) => Rule {
                did: Some(d.to_string()),
                group: None,
                role: None,
                scopes: scopes.clone(),
            },
            Who::Group { group, role } => {
                self.gov_named(&group)?;
                Rule {
                    did: None,
                    group: Some(group),
                    role,
                    scopes: scopes.clone(),
                }
            }
        };
        let path = self.policy_path();
        let _one_writer = lock(&self.inner.policy_writer);
        let mut p = Policy::read(&path)?;
        p.allow
            .retain(|r| (&r.did, &r.group, &r.role) != (&rule.did, &rule.group, &rule.role));
        if !scopes.is_empty() {
            p.allow.push(rule);
        }
        p.write(&path)?;
        Ok(scopes)
    }

    /// The scopes `policy.toml` gives `did`.
    pub(crate) async fn policy_scopes(&self, did: &Did) -> Result<Vec<String>> {
        let rules = self.token_policy().await?;
        let mut out = Vec::new();
        for r in rules {
            let applies = match (&r.did, &r.group) {
                (Some(d), _) => *d == did.to_string(),
                (None, Some(g)) => self.gov_named(g).is_ok_and(|gov| {
                    let b = lock(&gov.book);
                    let m = b.membership();
                    m.seat(did)
                        .is_some_and(|s| r.role.as_ref().is_none_or(|role| *role == s.role))
                }),
                _ => false,
            };
            if applies {
                out.extend(r.scopes);
            }
        }
        parse_scopes(&out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read(text: &str) -> Result<Policy> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(POLICY_FILE);
        std::fs::write(&p, text).unwrap();
        Policy::read(&p)
    }

    #[test]
    fn a_policy_file_reads_its_rules_and_names_what_is_wrong() {
        let did = sov_identity::Keypair::from_seed(&[5; 32]).did();
        let ok = read(&format!(
            "[[allow]]\ndid = \"{did}\"\nscopes = [\"infer\"]\n\n[[allow]]\ngroup = \"co-op\"\nrole = \"maintainers\"\nscopes = [\"gov:vote\"]\n"
        ))
        .unwrap();
        assert_eq!(ok.allow.len(), 2);
        assert_eq!(ok.allow[1].who(), "group co-op, role maintainers");
        for (text, why) in [
            (
                "[[allow]]\nscopes = [\"infer\"]\n",
                "either a did or a group",
            ),
            (
                &format!("[[allow]]\ndid = \"{did}\"\ngroup = \"g\"\nscopes = [\"infer\"]\n"),
                "either a did or a group",
            ),
            (
                &format!("[[allow]]\ndid = \"{did}\"\nrole = \"r\"\nscopes = [\"infer\"]\n"),
                "a role goes with a group",
            ),
            (
                "[[allow]]\ngroup = \"g\"\nscopes = [\"root\"]\n",
                "not a scope",
            ),
            (
                "[[allow]]\ngroup = \"g\"\nscopes = []\n",
                "at least one scope",
            ),
            (
                "[[allow]]\ndid = \"did:web:x\"\nscopes = [\"infer\"]\n",
                "not a did:key",
            ),
            ("[[deny]]\n", "unknown field"),
        ] {
            let e = read(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        // No file: no rules.
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Policy::read(&dir.path().join(POLICY_FILE))
                .unwrap()
                .allow
                .is_empty()
        );
    }
}
