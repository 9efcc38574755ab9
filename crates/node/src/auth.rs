//! Who may use this node's gateway besides its owner: OAuth 2.0 access tokens.
//!
//! A client proves who it is with an assertion signed by its own did:key (RFC 7523
//! `private_key_jwt`, checked by `sov_identity::jwt`); the owner's `policy.toml`
//! ([`policy`]) and the gateway policies of the groups the node is in ([`group`]) say which
//! scopes each DID may get; the node answers with a short-lived access token signed by its
//! own key, for itself (`aud` = its DID) or for a group (`aud` = `sov:group:<id>`, honoured by
//! every member). Every token issued is kept (by `jti`) so the owner can list and revoke it;
//! a revoked token is refused until it would have expired anyway.
//!
//! | records topic | key | value |
//! |---|---|---|
//! | `auth-issued` | `jti` | the token's claims (JSON) |
//! | `auth-revoked` | `jti` | when it would have expired (u64, big-endian) |

pub mod group;
pub mod policy;

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sov_core::Did;
use sov_identity::jwt::{self, JwtError, Replay};
pub use sov_identity::jwt::{ASSERTION_TYPE, AccessClaims, make_assertion};

use crate::{Error, Node, Result};

const ISSUED_TOPIC: &str = "auth-issued";
pub(crate) const REVOKED_TOPIC: &str = "auth-revoked";

/// Every scope, and what it opens.
pub const SCOPES: [(&str, &str); 8] = [
    ("infer", "chat and text completions, the model list (/v1)"),
    ("embed", "embeddings (/v1/embeddings)"),
    ("predict", "classifier predictions and evaluations"),
    ("data:read", "read objects this node may read"),
    ("data:write", "add, import and remove objects"),
    ("fl:join", "see and join federations"),
    ("gov:vote", "see groups and proposals, vote"),
    ("admin", "everything the owner can do"),
];

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Default lifetime of an access token (seconds).
pub const DEFAULT_TTL: u64 = 900;
/// Live tokens one client may hold (each is a record until it expires).
const MAX_LIVE_PER_CLIENT: usize = 64;
/// Live assertion ids remembered at most (replay protection).
const MAX_ASSERTIONS: usize = 65_536;

/// Check a scope list: known scopes, each once, sorted.
pub fn parse_scopes(list: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for s in list
        .iter()
        .flat_map(|s| s.split([' ', ',']))
        .filter(|s| !s.is_empty())
    {
        if !SCOPES.iter().any(|(k, _)| *k == s) {
            return Err(Error::Refused(format!(
                "{}: not a scope ({})",
                sov_core::quote(s),
                SCOPES.map(|(k, _)| k).join(", ")
            )));
        }
        if !out.iter().any(|x| x == s) {
            out.push(s.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// The OAuth error a token request gets (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// `invalid_request`, `invalid_client`, `invalid_grant`, `unauthorized_client`,
    /// `unsupported_grant_type`, `invalid_scope`, `temporarily_unavailable`.
    pub error: &'static str,
    /// Why, for people.
    pub description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            description: description.into(),
        }
    }
}

/// An access token granted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    /// The JWT.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds it lives.
    pub expires_in: u64,
    /// The scopes granted, space-separated.
    pub scope: String,
    /// Its id (for `sov token revoke`).
    pub jti: String,
    /// Who honours it: this node (its DID) or every member of a group (`sov:group:<id>`).
    pub aud: String,
}

/// A token as `sov token ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedToken {
    /// Its id.
    pub jti: String,
    /// The client.
    pub sub: String,
    /// Its scopes.
    pub scope: String,
    /// Issued (Unix seconds).
    pub iat: u64,
    /// Expires (Unix seconds).
    pub exp: u64,
    /// Who honours it.
    pub aud: String,
    /// Revoked by the owner.
    pub revoked: bool,
}

pub use group::{GROUP_AUDIENCE_PREFIX, Revocation, group_audience};
pub use policy::{POLICY_FILE, Policy, Rule, Who};

/// Spent assertion ids.
pub(crate) struct Assertions(Mutex<Replay>);

impl Default for Assertions {
    fn default() -> Self {
        Self(Mutex::new(Replay::new(MAX_ASSERTIONS)))
    }
}

impl Node {
    /// Issue an access token to `to` with `scopes` for `ttl` seconds (the owner's act: no
    /// allow list is consulted).
    pub async fn token_issue(&self, to: Did, scopes: &[String], ttl: u64) -> Result<Grant> {
        self.token_issue_for(to, scopes, ttl, self.did().to_string())
            .await
    }

    /// Issue an access token for audience `aud` (this node's DID, or a group's audience).
    async fn token_issue_for(
        &self,
        to: Did,
        scopes: &[String],
        ttl: u64,
        aud: String,
    ) -> Result<Grant> {
        let scopes = parse_scopes(scopes)?;
        if scopes.is_empty() {
            return Err(Error::Refused("a token needs at least one scope".into()));
        }
        if ttl == 0 || ttl > jwt::MAX_ACCESS_TTL {
            return Err(Error::Refused(format!(
                "a token lives 1 s to {} s",
                jwt::MAX_ACCESS_TTL
            )));
        }
        let now = unix_now();
        let me = self.did().to_string();
        let claims = AccessClaims {
            iss: me.clone(),
            sub: to.to_string(),
            aud,
            scope: scopes.join(" "),
            exp: now + ttl,
            iat: now,
            jti: format!("{:032x}", rand::random::<u128>()),
        };
        let json = serde_json::to_vec(&claims).map_err(|e| Error::Refused(e.to_string()))?;
        let c2 = claims.clone();
        let token = self
            .blocking(move |s| {
                // Expired tokens are forgotten; a client holds a bounded number of live ones.
                let mut live = 0;
                for (k, v) in s.records(ISSUED_TOPIC)? {
                    match serde_json::from_slice::<AccessClaims>(&v) {
                        Ok(c) if c.exp + jwt::LEEWAY >= now => {
                            live += usize::from(c.sub == c2.sub);
                        }
                        _ => {
                            s.remove_record(ISSUED_TOPIC, &k)?;
                            s.remove_record(REVOKED_TOPIC, &k)?;
                        }
                    }
                }
                if live >= MAX_LIVE_PER_CLIENT {
                    return Err(sov_store::Error::Invalid(format!(
                        "{} holds {MAX_LIVE_PER_CLIENT} live tokens already",
                        c2.sub
                    )));
                }
                s.put_record(ISSUED_TOPIC, c2.jti.as_bytes(), &json)?;
                jwt::issue_access(s.identity(), &c2)
                    .map_err(|e| sov_store::Error::Invalid(e.to_string()))
            })
            .await?;
        let kind = if claims.aud.starts_with(GROUP_AUDIENCE_PREFIX) {
            "group"
        } else {
            "node"
        };
        self.metrics()
            .tokens_issued
            .get_or_create(&crate::metrics::label("audience", kind))
            .inc();
        Ok(Grant {
            access_token: token,
            token_type: "Bearer".into(),
            expires_in: ttl,
            scope: claims.scope,
            jti: claims.jti,
            aud: claims.aud,
        })
    }

    /// The token endpoint's work: check a client's assertion (for one of `audiences`), and
    /// grant the scopes it asks for (all it may get if it names none) that `policy.toml` or
    /// a group's gateway policy gives its DID. `resource` (RFC 8707) picks who is to honour
    /// the token: this node (its DID) or a group (its id or name, or `sov:group:<id>`).
    /// Without it, a token is for the group or the node that gives the most of what is
    /// asked (a group on a tie: its tokens work on every member).
    async fn token_exchange_inner(
        &self,
        assertion: &str,
        audiences: &[String],
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> std::result::Result<Grant, OAuthError> {
        let now = unix_now();
        let did = {
            let mut replay = self
                .inner
                .assertions
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mut last = JwtError::Audience;
            let mut found = None;
            for aud in audiences {
                match jwt::verify_assertion(assertion, aud, now, &mut replay) {
                    Ok(d) => {
                        found = Some(d);
                        break;
                    }
                    Err(JwtError::Audience) => continue,
                    Err(e) => {
                        last = e;
                        break;
                    }
                }
            }
            match found {
                Some(d) => d,
                None if last == JwtError::Busy => {
                    return Err(OAuthError::new("temporarily_unavailable", last.to_string()));
                }
                None => return Err(OAuthError::new("invalid_client", last.to_string())),
            }
        };
        let local = self.policy_scopes(&did).await.map_err(|e| {
            tracing::warn!("the token endpoint cannot read its policy: {e}");
            OAuthError::new("temporarily_unavailable", e.to_string())
        })?;
        // Who may honour the token, and what each gives: groups first, then this node.
        let me = self.did().to_string();
        let mut candidates: Vec<(String, Vec<String>)> = self
            .group_grants(&did)
            .into_iter()
            .filter(|g| {
                resource.is_none_or(|r| {
                    r == g.name || r == g.group.to_string() || r == group_audience(&g.group)
                })
            })
            .map(|g| (group_audience(&g.group), g.scopes))
            .collect();
        if resource.is_none_or(|r| r == me || audiences.iter().any(|a| a == r)) {
            candidates.push((me, local));
        }
        candidates.retain(|(_, s)| !s.is_empty());
        if candidates.is_empty() {
            return Err(OAuthError::new(
                "unauthorized_client",
                match resource {
                    Some(r) => format!("{did} may get no token for {}", sov_core::quote(r)),
                    None => format!(
                        "{did} is not allowed here (the owner allows it with `sov token allow`, or a group by a gateway policy)"
                    ),
                },
            ));
        }
        let asked = match scope {
            Some(s) if !s.trim().is_empty() => Some(
                parse_scopes(&[s.to_owned()])
                    .map_err(|e| OAuthError::new("invalid_scope", e.to_string()))?,
            ),
            _ => None,
        };
        // The first that gives the most of what is asked (a stable sort keeps groups first).
        let gives = |may: &[String]| match &asked {
            Some(w) => w.iter().filter(|s| may.contains(s)).count(),
            None => may.len(),
        };
        candidates.sort_by_key(|(_, may)| std::cmp::Reverse(gives(may)));
        let (aud, may) = candidates.swap_remove(0);
        let wanted = asked.unwrap_or_else(|| may.clone());
        if let Some(s) = wanted.iter().find(|s| !may.contains(s)) {
            return Err(OAuthError::new(
                "invalid_scope",
                format!("{did} may not get scope {s} (not with the others asked, at least)"),
            ));
        }
        self.token_issue_for(did, &wanted, DEFAULT_TTL, aud)
            .await
            .map_err(|e| OAuthError::new("temporarily_unavailable", e.to_string()))
    }

    /// The token endpoint: see [`Node::token_exchange_inner`]; refusals are counted.
    pub async fn token_exchange(
        &self,
        assertion: &str,
        audiences: &[String],
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> std::result::Result<Grant, OAuthError> {
        let r = self
            .token_exchange_inner(assertion, audiences, scope, resource)
            .await;
        if let Err(e) = &r {
            self.metrics()
                .tokens_refused
                .get_or_create(&crate::metrics::label("error", e.error))
                .inc();
        }
        r
    }

    /// Check an access token presented to this node: signed by it and for it, or for a
    /// group it is in and signed by a member (see [`group`]); not expired, not revoked.
    /// Returns its claims, with the scopes it opens here.
    pub async fn token_check(&self, token: &str) -> std::result::Result<AccessClaims, String> {
        let r = self.token_check_inner(token).await;
        if r.is_err() {
            self.metrics().tokens_rejected.inc();
        }
        r
    }

    async fn token_check_inner(&self, token: &str) -> std::result::Result<AccessClaims, String> {
        let me = self.did();
        let (iss, aud) = jwt::peek_access(token).map_err(|e| e.to_string())?;
        let claims = if let Some(gid) = aud.strip_prefix(GROUP_AUDIENCE_PREFIX) {
            self.group_token_check(gid, &iss, token)?
        } else {
            jwt::verify_access(token, &me, &me.to_string(), unix_now())
                .map_err(|e| e.to_string())?
        };
        let jti = claims.jti.clone().into_bytes();
        let revoked = self
            .blocking(move |s| Ok(s.record(REVOKED_TOPIC, &jti)?.is_some()))
            .await
            .map_err(|e| e.to_string())?;
        if revoked {
            return Err("this token was revoked".into());
        }
        Ok(claims)
    }

    /// Revoke token `jti` (a group token on every member of the group).
    pub async fn token_revoke(&self, jti: &str) -> Result<()> {
        let key = jti.as_bytes().to_vec();
        let claims = self
            .blocking(move |s| {
                let Some(v) = s.record(ISSUED_TOPIC, &key)? else {
                    return Err(sov_store::Error::Invalid(
                        "no token with that id was issued here".into(),
                    ));
                };
                let c = serde_json::from_slice::<AccessClaims>(&v)
                    .map_err(|e| sov_store::Error::Invalid(e.to_string()))?;
                s.put_record(REVOKED_TOPIC, &key, &c.exp.to_be_bytes())?;
                Ok(c)
            })
            .await?;
        if let Some(gid) = claims.aud.strip_prefix(GROUP_AUDIENCE_PREFIX)
            && let Ok(gid) = gid.parse::<sov_core::ContentId>()
        {
            self.group_revoke(gid, &claims.jti, claims.exp).await?;
        }
        Ok(())
    }

    /// The tokens issued here that have not expired.
    pub async fn token_list(&self) -> Result<Vec<IssuedToken>> {
        let now = unix_now();
        self.blocking(move |s| {
            let mut out = Vec::new();
            for (k, v) in s.records(ISSUED_TOPIC)? {
                let Ok(c) = serde_json::from_slice::<AccessClaims>(&v) else {
                    continue;
                };
                if c.exp + jwt::LEEWAY < now {
                    continue;
                }
                out.push(IssuedToken {
                    revoked: s.record(REVOKED_TOPIC, &k)?.is_some(),
                    jti: c.jti,
                    sub: c.sub,
                    scope: c.scope,
                    aud: c.aud,
                    iat: c.iat,
                    exp: c.exp,
                });
            }
            out.sort_by_key(|t| std::cmp::Reverse(t.iat));
            Ok(out)
        })
        .await
    }

    /// The node's public key as a JWK set (RFC 7517; OKP Ed25519), for the discovery
    /// document.
    pub fn jwks(&self) -> serde_json::Value {
        use base64::Engine as _;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.did().public_bytes());
        serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.did().to_string(),
            "alg": "EdDSA", "use": "sig"
        }]})
    }
}
