//! The distributed gateway: a governance group adopts a gateway policy by vote
//! (`Action::Gateway`); every member node then gives access tokens under it for the group
//! (`aud` = `sov:group:<id>`), and honours such tokens issued by any member: the token is
//! checked against its issuer's key (a member's did:key), and it opens no more than the
//! group's policy, as this node holds it, gives its client. Revocations are signed by a member
//! and travel on the group's topic, with the catch-up bringing them to nodes that were away.
//!
//! | records topic | key | value |
//! |---|---|---|
//! | `gw-revoked/<group>` | `jti` | the signed revocation |
//! | `auth-revoked` | `jti` | when the token would have expired (u64, big-endian) |

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sov_core::{ContentId, Did, Message, Signed};
use sov_identity::jwt::{self, AccessClaims};
use tracing::debug;

use super::{REVOKED_TOPIC, unix_now};
use crate::{
    Error, Node, Result,
    gov::state::{Gov, lock},
    protocol::{GovGossip, MAX_GOV_REVOCATIONS as MAX_REVOCATIONS},
};

/// How a group token names its audience: this prefix and the group's id.
pub const GROUP_AUDIENCE_PREFIX: &str = "sov:group:";

/// The audience of tokens for group `id`.
pub fn group_audience(id: &ContentId) -> String {
    format!("{GROUP_AUDIENCE_PREFIX}{id}")
}

fn revoked_topic(group: &ContentId) -> String {
    format!("gw-revoked/{group}")
}

/// A member's word that token `jti`, issued for the group, is not to be honoured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The group.
    pub group: ContentId,
    /// The token's id.
    pub jti: String,
    /// When the token expires anyway (the revocation is forgotten after).
    pub exp: u64,
}

impl Message for Revocation {
    const TAG: &'static str = "sov/gw-revoke/1";
}

/// A group's gateway policy as it applies to one client here.
#[derive(Debug, Clone)]
pub(crate) struct GroupGrant {
    pub(crate) group: ContentId,
    pub(crate) name: String,
    pub(crate) scopes: Vec<String>,
}

impl Node {
    /// What the gateway policies of the groups this node is in give `did`.
    pub(crate) fn group_grants(&self, did: &Did) -> Vec<GroupGrant> {
        let me = self.did();
        let mut out = Vec::new();
        for gov in self.inner.govs.all() {
            let b = lock(&gov.book);
            let members = b.membership();
            if !members.contains(&me) {
                continue;
            }
            let Some((_, rules)) = b.gateway_policy() else {
                continue;
            };
            let scopes = sov_gov::gateway_scopes(rules, did, members.seat(did));
            if !scopes.is_empty() {
                out.push(GroupGrant {
                    group: gov.id,
                    name: b.group().name.clone(),
                    scopes,
                });
            }
        }
        out.sort_by(|a, b| {
            b.scopes
                .len()
                .cmp(&a.scopes.len())
                .then(a.group.cmp(&b.group))
        });
        out
    }

    /// Check a token for group `id`, issued by `iss`: both this node and the issuer are
    /// members, the group has a gateway policy here, the signature is the issuer's. The
    /// claims come back with the scopes the policy gives the client now (and no others).
    pub(crate) fn group_token_check(
        &self,
        id: &str,
        iss: &str,
        token: &str,
    ) -> std::result::Result<AccessClaims, String> {
        let gid: ContentId = id.parse().map_err(|_| "not a group id".to_owned())?;
        let issuer: Did = iss
            .parse()
            .map_err(|_| "the token's issuer is not a did:key".to_owned())?;
        let gov = self
            .inner
            .govs
            .get(&gid)
            .ok_or_else(|| format!("this node is not in group {gid}, the token's audience"))?;
        let b = lock(&gov.book);
        let members = b.membership();
        if !members.contains(&self.did()) {
            return Err("this node is no longer a member of the token's group".into());
        }
        if !members.contains(&issuer) {
            return Err("the token's issuer is not a member of its group".into());
        }
        let Some((_, rules)) = b.gateway_policy() else {
            return Err(
                "the token's group has adopted no gateway policy (that this node knows of)".into(),
            );
        };
        let mut c = jwt::verify_access(token, &issuer, &group_audience(&gid), unix_now())
            .map_err(|e| e.to_string())?;
        let sub: Did = c
            .sub
            .parse()
            .map_err(|_| "the token's subject is not a did:key".to_owned())?;
        let may = sov_gov::gateway_scopes(rules, &sub, members.seat(&sub));
        let kept: Vec<&str> = c.scopes().filter(|s| may.iter().any(|m| m == s)).collect();
        if kept.is_empty() {
            return Err("the group's gateway policy gives this client nothing now".into());
        }
        c.scope = kept.join(" ");
        Ok(c)
    }

    /// Revoke group token `jti` (expiring at `exp`) on every member: signed, kept, published.
    pub(crate) async fn group_revoke(&self, group: ContentId, jti: &str, exp: u64) -> Result<()> {
        let gov = self
            .inner
            .govs
            .get(&group)
            .ok_or_else(|| Error::NotFound(format!("this node is not in group {group}")))?;
        let body = Revocation {
            group,
            jti: jti.to_owned(),
            exp,
        };
        let bytes = self
            .blocking(move |s| {
                Signed::sign(body, s.identity())
                    .and_then(|x| x.encode())
                    .map_err(|e| sov_store::Error::Invalid(e.to_string()))
            })
            .await?;
        self.take_revocation(&gov, &bytes)
            .await
            .map_err(Error::Refused)?;
        if let Ok(net) = self.net()
            && let Err(e) = net
                .publish(
                    &crate::protocol::gov_topic(&group),
                    GovGossip::Revoke(bytes.into()).encode(),
                )
                .await
        {
            debug!(group = %group, "revocation not published (the catch-up carries it): {e}");
        }
        Ok(())
    }

    /// Check a revocation of `gov` and keep it. Returns whether it was new; an expired one
    /// is not kept.
    pub(crate) async fn take_revocation(
        &self,
        gov: &Gov,
        bytes: &[u8],
    ) -> std::result::Result<bool, String> {
        let r = Signed::<Revocation>::decode(bytes).map_err(|e| e.to_string())?;
        let now = unix_now();
        let body = r.body();
        if body.group != gov.id {
            return Err("a revocation for another group".into());
        }
        if !lock(&gov.book).membership().contains(&r.signer()) {
            return Err("a revocation signed by a non-member".into());
        }
        if body.jti.is_empty()
            || body.jti.len() > 64
            || !body.jti.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err("a revocation of a token id that no node issues".into());
        }
        if body.exp > now + jwt::MAX_ACCESS_TTL + jwt::LEEWAY {
            return Err("a revocation of a token that would live too long".into());
        }
        if body.exp + jwt::LEEWAY < now {
            return Ok(false);
        }
        let topic = revoked_topic(&gov.id);
        let jti = body.jti.clone().into_bytes();
        let exp = body.exp;
        let bytes = bytes.to_vec();
        self.blocking(move |s| {
            if s.record(&topic, &jti)?.is_some() {
                return Ok(false);
            }
            // Expired ones go; a group keeps a bounded number of live ones.
            let mut live = 0;
            for (k, v) in s.records(&topic)? {
                match Signed::<Revocation>::decode(&v) {
                    Ok(r) if r.body().exp + jwt::LEEWAY >= now => live += 1,
                    _ => {
                        s.remove_record(&topic, &k)?;
                        s.remove_record(REVOKED_TOPIC, &k)?;
                    }
                }
            }
            if live >= MAX_REVOCATIONS {
                return Err(sov_store::Error::Invalid(format!(
                    "the group holds {MAX_REVOCATIONS} live revocations already"
                )));
            }
            s.put_record(REVOKED_TOPIC, &jti, &exp.to_be_bytes())?;
            s.put_record(&topic, &jti, &bytes)?;
            Ok(true)
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// The live revocations of `gov`, signed (for a member catching up).
    pub(crate) async fn revocations(&self, gov: &Gov) -> Vec<ByteBuf> {
        let topic = revoked_topic(&gov.id);
        let now = unix_now();
        self.blocking(move |s| {
            Ok(s.records(&topic)?
                .into_iter()
                .filter(|(_, v)| {
                    Signed::<Revocation>::decode(v).is_ok_and(|r| r.body().exp + jwt::LEEWAY >= now)
                })
                .take(MAX_REVOCATIONS)
                .map(|(_, v)| ByteBuf::from(v))
                .collect())
        })
        .await
        .unwrap_or_default()
    }
}
