//! `sov gov create | propose | vote | ls | show | verify`: groups that decide by signed
//! votes, through the running node's API (or an offline node on this home, whose records
//! go out when it next runs). `verify` needs neither: a certificate stands on its own.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use sov_api::gov::{CastVote, CreateGroup, NewMember, Propose};
use sov_node::{
    GroupStatus, ProposalStatus,
    gov::{ActionSpec, Choice, member, verify_certificate},
};

use crate::{
    args::{GovCommand, ProposeWhat},
    home::Home,
    output::{note, rfc3339, say},
    target::Target,
};

/// Largest certificate read from a file.
const MAX_CERT_FILE: u64 = 64 << 20;

/// `90s`, `10m`, `2h`, `7d`, or seconds.
pub fn duration_secs(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| {
        anyhow!("{s:?}: a duration is a number with s, m, h or d (90s, 10m, 2h, 7d)")
    })?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{s:?}: a duration is a number with s, m, h or d (90s, 10m, 2h, 7d)"),
    };
    n.checked_mul(unit)
        .filter(|&x| x > 0)
        .ok_or_else(|| anyhow!("{s:?}: not a usable duration"))
}

/// `sov gov verify FILE`: no home, no node.
pub fn verify(path: &Path, json: bool) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_CERT_FILE + 1), &mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_CERT_FILE {
        bail!(
            "{} is larger than a certificate may be (64 MiB)",
            path.display()
        );
    }
    let v = verify_certificate(&bytes)
        .map_err(|e| anyhow!("{}: the certificate does not hold: {e}", path.display()))?;
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "valid": true,
                "group": v.group.to_string(),
                "group_name": v.name,
                "proposal": v.proposal.to_string(),
                "action": ActionSpec::from(&v.action),
                "status": v.status.as_str(),
                "clauses": v.tally.clauses,
                "votes": v.tally.counted.iter().map(|(d, c)| serde_json::json!({"voter": d.to_string(), "choice": c.to_string()})).collect::<Vec<_>>(),
            }))?
        )?;
    } else {
        say!(
            "valid: proposal {} of group {} ({}) {}",
            v.proposal,
            v.name,
            v.group,
            v.status.as_str()
        )?;
        say!("  {}", v.action)?;
        for c in &v.tally.clauses {
            say!(
                "  {}: yes {} no {} abstain {} of {}",
                c.clause,
                c.yes,
                c.no,
                c.abstain,
                c.eligible
            )?;
        }
        say!(
            "  {} signed votes, every one checked",
            v.tally.counted.len()
        )?;
    }
    Ok(())
}

fn pairs(list: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    list.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| anyhow!("{kv:?}: {what} are written KEY=VALUE"))
        })
        .collect()
}

fn action(what: ProposeWhat) -> Result<ActionSpec> {
    Ok(match what {
        ProposeWhat::Promote { model } => ActionSpec {
            kind: "promote".into(),
            model: Some(model),
            ..Default::default()
        },
        ProposeWhat::Admit { did, role, weight } => ActionSpec {
            kind: "admit".into(),
            member: Some(did),
            role: Some(role),
            weight: Some(weight),
            ..Default::default()
        },
        ProposeWhat::Remove { did } => ActionSpec {
            kind: "remove".into(),
            member: Some(did),
            ..Default::default()
        },
        ProposeWhat::Policy {
            federation,
            settings,
        } => ActionSpec {
            kind: "policy".into(),
            federation: Some(federation),
            changes: pairs(&settings, "settings")?,
            ..Default::default()
        },
        ProposeWhat::Release {
            name,
            version,
            object,
        } => ActionSpec {
            kind: "release".into(),
            name: Some(name),
            version: Some(version),
            artifact: Some(object),
            ..Default::default()
        },
        ProposeWhat::Gateway { allow } => ActionSpec {
            kind: "gateway".into(),
            allow,
            ..Default::default()
        },
        ProposeWhat::Custom { text } => ActionSpec {
            kind: "custom".into(),
            text: Some(text),
            ..Default::default()
        },
    })
}

fn cid(s: &str, what: &str) -> Result<sov_core::ContentId> {
    s.parse().map_err(|_| anyhow!("{s:?} is not a {what} id"))
}

pub fn run(home: &Home, cmd: GovCommand) -> Result<()> {
    if let GovCommand::Verify { cert, json } = &cmd {
        return verify(cert, *json);
    }
    let target = Target::pick(home, None)?;
    if let Target::Local(l) = &target {
        l.block_on(l.node().gov_resume());
        note!("no node is running here: records are kept and go out when it runs (`sov node run`)");
    }
    match cmd {
        GovCommand::Verify { .. } => unreachable!("handled above"),
        GovCommand::Create {
            members,
            roles,
            weights,
            threshold,
            rule,
            name,
            voting,
            json,
        } => {
            let roles = pairs(&roles, "roles")?;
            let weights = pairs(&weights, "weights")?;
            for did in roles.keys().chain(weights.keys()) {
                if !members.contains(did) {
                    bail!("{did} has a role or weight but is not in --members");
                }
            }
            let mut list = Vec::new();
            for did in &members {
                let weight = weights
                    .get(did)
                    .map(|w| {
                        w.parse::<u32>()
                            .map_err(|_| anyhow!("{w:?}: a weight is a whole number"))
                    })
                    .transpose()?;
                list.push(NewMember {
                    did: did.clone(),
                    role: roles.get(did).cloned(),
                    weight,
                });
            }
            let rule = threshold.or(rule).unwrap_or_else(|| "majority".into());
            let req = CreateGroup {
                name,
                members: list,
                rule: Some(rule),
                voting_secs: Some(duration_secs(&voting)?),
            };
            let g: GroupStatus = match &target {
                Target::Remote(api) => api.post_json("/api/v1/gov/groups", &req)?,
                Target::Local(l) => {
                    let mut ms = Vec::new();
                    for m in &req.members {
                        let did = m
                            .did
                            .parse()
                            .map_err(|_| anyhow!("{:?} is not a did:key", m.did))?;
                        ms.push(member(did, m.role.as_deref(), m.weight));
                    }
                    l.block_on(l.node().gov_create(
                        &req.name,
                        ms,
                        req.rule.as_deref().unwrap_or("majority"),
                        req.voting_secs.unwrap_or(7 * 86_400),
                    ))?
                }
            };
            if json {
                say!("{}", serde_json::to_string_pretty(&g)?)?;
            } else {
                say!("{}", g.id)?;
                note!(
                    "group {:?}: {} members, rule {:?}; propose with `sov gov propose {} …`",
                    g.name,
                    g.members.len(),
                    g.rule,
                    g.id
                );
            }
            Ok(())
        }
        GovCommand::Propose {
            group,
            what,
            deadline,
            json,
        } => {
            let voting_secs = deadline.as_deref().map(duration_secs).transpose()?;
            let req = Propose {
                group: group.clone(),
                action: action(what)?,
                voting_secs,
            };
            let p: ProposalStatus = match &target {
                Target::Remote(api) => api.post_json("/api/v1/gov/proposals", &req)?,
                Target::Local(l) => {
                    let a = req.action.to_action()?;
                    l.block_on(l.node().gov_propose(&cid(&group, "group")?, a, voting_secs))?
                }
            };
            if json {
                say!("{}", serde_json::to_string_pretty(&p)?)?;
            } else {
                say!("{}", p.id)?;
                note!(
                    "{}; open until {}; vote with `sov gov vote {} yes|no|abstain`",
                    p.action,
                    rfc3339(p.deadline),
                    p.id
                );
            }
            Ok(())
        }
        GovCommand::Vote {
            proposal,
            choice,
            json,
        } => {
            let c: Choice = choice.parse()?;
            let p: ProposalStatus = match &target {
                Target::Remote(api) => api.post_json(
                    &format!("/api/v1/gov/proposals/{proposal}/votes"),
                    &CastVote {
                        choice: c.to_string(),
                    },
                )?,
                Target::Local(l) => {
                    l.block_on(l.node().gov_vote(&cid(&proposal, "proposal")?, c))?
                }
            };
            if json {
                say!("{}", serde_json::to_string_pretty(&p)?)?;
            } else {
                say!("voted {c} on {}: {}", p.id, p.status)?;
                print_clauses(&p)?;
            }
            Ok(())
        }
        GovCommand::Ls { group: None, json } => {
            let all: Vec<GroupStatus> = match &target {
                Target::Remote(api) => api.get_json("/api/v1/gov/groups")?,
                Target::Local(l) => l.block_on(l.node().gov_groups())?,
            };
            if json {
                say!("{}", serde_json::to_string_pretty(&all)?)?;
            } else if all.is_empty() {
                note!("this node is in no group (`sov gov create`)");
            } else {
                for g in &all {
                    say!(
                        "{}  {:<16} {} members  rule {:<24} {} proposals{}",
                        g.id,
                        g.name,
                        g.members.len(),
                        g.rule,
                        g.proposals,
                        g.served
                            .as_deref()
                            .map_or(String::new(), |m| format!("  serving {m}"))
                    )?;
                }
            }
            Ok(())
        }
        GovCommand::Ls {
            group: Some(group),
            json,
        } => {
            let all: Vec<ProposalStatus> = match &target {
                Target::Remote(api) => {
                    api.get_json(&format!("/api/v1/gov/proposals?group={group}"))?
                }
                Target::Local(l) => {
                    l.block_on(l.node().gov_proposals(Some(&cid(&group, "group")?)))?
                }
            };
            if json {
                say!("{}", serde_json::to_string_pretty(&all)?)?;
            } else if all.is_empty() {
                note!("no proposal yet (`sov gov propose {group} …`)");
            } else {
                for p in &all {
                    say!("{}  {:<8} {:<8} {}", p.id, p.status, p.kind, p.action)?;
                }
            }
            Ok(())
        }
        GovCommand::Show {
            proposal,
            json,
            cert,
        } => {
            let p: ProposalStatus = match &target {
                Target::Remote(api) => {
                    api.get_json(&format!("/api/v1/gov/proposals/{proposal}"))?
                }
                Target::Local(l) => l.block_on(l.node().gov_show(&cid(&proposal, "proposal")?))?,
            };
            if let Some(path) = &cert {
                let bytes = match &target {
                    Target::Remote(api) => {
                        api.get_bytes(&format!("/api/v1/gov/proposals/{proposal}/certificate"))?
                    }
                    Target::Local(l) => {
                        l.block_on(l.node().gov_certificate(&cid(&proposal, "proposal")?))?
                    }
                };
                std::fs::write(path, &bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
                note!(
                    "certificate written to {} ({} bytes); check it anywhere with `sov gov verify {}`",
                    path.display(),
                    bytes.len(),
                    path.display()
                );
            }
            if json {
                say!("{}", serde_json::to_string_pretty(&p)?)?;
            } else {
                say!("{}  {}", p.id, p.status)?;
                say!("  group     {} ({})", p.group_name, p.group)?;
                say!("  proposal  {}", p.action)?;
                say!("  by        {}", p.proposer)?;
                say!(
                    "  open      {} to {}",
                    rfc3339(p.created),
                    rfc3339(p.deadline)
                )?;
                print_clauses(&p)?;
                for v in &p.votes {
                    say!("  vote      {:<8} {}", v.choice, v.voter)?;
                }
                for d in &p.equivocators {
                    say!("  equivocated (not counted) {d}")?;
                }
                if let Some(e) = &p.enacted {
                    say!("  enacted   {} at {}: {}", e.state, rfc3339(e.at), e.detail)?;
                }
            }
            Ok(())
        }
    }
}

fn print_clauses(p: &ProposalStatus) -> Result<()> {
    for c in &p.clauses {
        say!(
            "  {:<30} yes {} · no {} · abstain {} of {}{}",
            c.clause,
            c.yes,
            c.no,
            c.abstain,
            c.eligible,
            if c.holds {
                "  holds"
            } else if c.lost {
                "  lost"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}
