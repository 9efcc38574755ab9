//! `sov token allow | issue | revoke | ls`: access tokens for clients other than the owner,
//! through the running node's API (or an offline node on this home).

use anyhow::{Result, anyhow, bail};
use sov_api::oauth::{AllowClient, IssueToken};
use sov_node::auth::{Grant, IssuedToken, Rule, Who};

use crate::{
    args::TokenCommand,
    gov::duration_secs,
    home::Home,
    output::{note, rfc3339, say},
    target::Target,
};

fn did(s: &str) -> Result<sov_core::Did> {
    s.parse().map_err(|_| anyhow!("{s:?} is not a did:key"))
}

pub fn run(home: &Home, cmd: TokenCommand) -> Result<()> {
    let target = Target::pick(home, None)?;
    match cmd {
        TokenCommand::Allow {
            did: d,
            group,
            role,
            scope,
            json,
        } => {
            let who = match (&d, &group) {
                (Some(d), None) if role.is_none() => Who::Did(did(d)?),
                (None, Some(g)) => Who::Group {
                    group: g.clone(),
                    role: role.clone(),
                },
                _ => bail!("name a DID, or --group NAME (with an optional --role)"),
            };
            let whom = match &who {
                Who::Did(d) => d.to_string(),
                Who::Group { group, role: None } => format!("the members of {group}"),
                Who::Group {
                    group,
                    role: Some(r),
                } => format!("the {r} of {group}"),
            };
            let scopes: Vec<String> = match &target {
                Target::Remote(api) => {
                    let v: serde_json::Value = api.post_json(
                        "/api/v1/tokens/allow",
                        &AllowClient {
                            did: d.clone(),
                            group,
                            role,
                            scope,
                        },
                    )?;
                    serde_json::from_value(v["scopes"].clone())?
                }
                Target::Local(l) => l.block_on(l.node().token_allow(who, &scope))?,
            };
            if json {
                say!("{}", serde_json::json!({"who": whom, "scopes": scopes}))?;
            } else if scopes.is_empty() {
                say!("{whom}: no longer allowed (by this rule)")?;
            } else {
                say!("{whom} may get tokens with: {}", scopes.join(", "))?;
                note!("it asks at POST /oauth/token with a JWT signed by its own key (RFC 7523)");
            }
            Ok(())
        }
        TokenCommand::Issue {
            to,
            scope,
            ttl,
            json,
        } => {
            let ttl = duration_secs(&ttl)?;
            let g: Grant = match &target {
                Target::Remote(api) => api.post_json(
                    "/api/v1/tokens",
                    &IssueToken {
                        to: to.clone(),
                        scope,
                        ttl_secs: Some(ttl),
                    },
                )?,
                Target::Local(l) => l.block_on(l.node().token_issue(did(&to)?, &scope, ttl))?,
            };
            if json {
                say!("{}", serde_json::to_string_pretty(&g)?)?;
            } else {
                say!("{}", g.access_token)?;
                note!(
                    "scope {}, valid {} s, id {} (`sov token revoke {}`)",
                    g.scope,
                    g.expires_in,
                    g.jti,
                    g.jti
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { jti } => {
            match &target {
                Target::Remote(api) => {
                    let _: serde_json::Value = api.delete_json(&format!("/api/v1/tokens/{jti}"))?;
                }
                Target::Local(l) => l.block_on(l.node().token_revoke(&jti))?,
            }
            say!("revoked {jti}")?;
            Ok(())
        }
        TokenCommand::Ls { json } => {
            let (allowed, issued): (Vec<Rule>, Vec<IssuedToken>) = match &target {
                Target::Remote(api) => {
                    let v: serde_json::Value = api.get_json("/api/v1/tokens")?;
                    (
                        serde_json::from_value(v["allowed"].clone())?,
                        serde_json::from_value(v["issued"].clone())?,
                    )
                }
                Target::Local(l) => (
                    l.block_on(l.node().token_policy())?,
                    l.block_on(l.node().token_list())?,
                ),
            };
            if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"allowed": allowed, "issued": issued})
                    )?
                )?;
                return Ok(());
            }
            if allowed.is_empty() && issued.is_empty() {
                note!(
                    "no client is allowed and no token is live (`sov token allow DID --scope infer`)"
                );
            }
            for a in &allowed {
                say!("allowed  {}  {}", a.who(), a.scopes.join(","))?;
            }
            for t in &issued {
                say!(
                    "token    {}  {}  {}  for {}  until {}{}",
                    t.jti,
                    t.sub,
                    t.scope,
                    if t.aud.starts_with(sov_node::auth::GROUP_AUDIENCE_PREFIX) {
                        &t.aud
                    } else {
                        "this node"
                    },
                    rfc3339(t.exp),
                    if t.revoked { "  revoked" } else { "" }
                )?;
            }
            Ok(())
        }
    }
}
