//! What a member node does by itself once a proposal passed: a promotion pulls the model
//! (manifest verified first, every block checked against its CID) and serves it under the
//! group's name and as the node's `default`; a release fetches the artifact and checks it;
//! membership changes are the book's (votes and catch-ups follow the new membership at
//! once). What was done, and when, is kept and shown.

use std::{sync::Arc, time::Duration};

use sov_core::ContentId;
use sov_gov::{Action, Status};
use tracing::{info, warn};

use super::state::{self, Enactment, Gov, SERVED_TOPIC, Served, lock};
use crate::{Error, Node, Result};

/// The name under which the last promoted model is served too.
pub const DEFAULT_NAME: &str = "default";
/// How long a failed enactment waits before it is tried again.
const RETRY: Duration = Duration::from_secs(10);

impl Node {
    /// Start enacting every passed proposal of `gov` not enacted yet (failed ones again
    /// after a pause).
    pub(crate) fn gov_enact_due(&self, gov: &Arc<Gov>) {
        let now = crate::node::unix_now();
        let due: Vec<(ContentId, Action, u64)> = {
            let b = lock(&gov.book);
            let enacted = lock(&gov.enacted);
            let running = lock(&gov.enacting);
            b.proposals()
                .filter(|(id, _, _)| b.decision(id) == Some(Status::Passed))
                .filter(|(id, _, _)| !running.contains(id))
                .filter(|(id, _, _)| match enacted.get(id) {
                    None => true,
                    Some(e) => e.state == "failed" && now >= e.at + RETRY.as_secs(),
                })
                .map(|(id, p, _)| (*id, p.action.clone(), p.created))
                .collect()
        };
        for (id, action, created) in due {
            lock(&gov.enacting).insert(id);
            let node = self.clone();
            let gov = gov.clone();
            self.spawn(async move {
                let result = node.gov_enact(&gov, &id, &action, created).await;
                let e = match result {
                    Ok((state, detail)) => Enactment {
                        state: state.into(),
                        at: crate::node::unix_now(),
                        detail,
                    },
                    Err(e) => {
                        warn!(proposal = %id, "not enacted yet: {e}");
                        Enactment {
                            state: "failed".into(),
                            at: crate::node::unix_now(),
                            detail: e.to_string(),
                        }
                    }
                };
                info!(proposal = %id, state = %e.state, detail = %e.detail, "enacted");
                let json = serde_json::to_vec(&e).unwrap_or_default();
                let group = gov.id;
                let _ = node
                    .blocking(move |s| {
                        s.put_record(&state::topic(&group), &state::enacted_key(&id), &json)
                    })
                    .await;
                lock(&gov.enacted).insert(id, e);
                lock(&gov.enacting).remove(&id);
            });
        }
    }

    async fn gov_enact(
        &self,
        gov: &Gov,
        id: &ContentId,
        action: &Action,
        created: u64,
    ) -> Result<(&'static str, String)> {
        let name = lock(&gov.book).group().name.clone();
        match action {
            Action::Promote { model } => {
                let entry = match self.model(&model.to_string()).await {
                    Ok(e) => e,
                    Err(_) => self.pull_model(*model).await?,
                };
                if entry.signer == self.did() {
                    // Members that still lack a grant get one, so they can pull it.
                    self.gov_share(gov, &model.to_string()).await?;
                }
                let served = Served {
                    name: name.clone(),
                    model: *model,
                    group: gov.id,
                    proposal: *id,
                    created,
                };
                let json =
                    serde_json::to_vec(&served).map_err(|e| Error::Refused(e.to_string()))?;
                let replaced = self
                    .blocking(move |s| {
                        let mut newer: Vec<(&[u8], &[u8])> = Vec::new();
                        for key in [served.name.as_str(), DEFAULT_NAME] {
                            let is_newer = match s.record(SERVED_TOPIC, key.as_bytes())? {
                                Some(old) => serde_json::from_slice::<Served>(&old)
                                    .map_or(true, |o| {
                                        (o.created, o.proposal) < (served.created, served.proposal)
                                    }),
                                None => true,
                            };
                            if is_newer {
                                newer.push((key.as_bytes(), &json));
                            }
                        }
                        // Both names at once: no reader sees the group's name served and
                        // `default` not yet.
                        s.put_records(SERVED_TOPIC, &newer)?;
                        Ok(!newer.is_empty())
                    })
                    .await?;
                Ok((
                    "done",
                    if replaced {
                        format!(
                            "serving {} ({}) as {name:?} and {DEFAULT_NAME:?}",
                            entry.manifest.name, model
                        )
                    } else {
                        format!("holds {model}; a later promotion is served as {name:?}")
                    },
                ))
            }
            Action::Release {
                name: what,
                version,
                artifact,
            } => {
                self.gov_grant_artifact(gov, *artifact).await?;
                self.fetch(*artifact, None).await?;
                let size = self
                    .blocking({
                        let a = *artifact;
                        move |s| Ok(s.info(&a)?.meta.map(|m| m.size))
                    })
                    .await?;
                Ok((
                    "done",
                    format!(
                        "holds {what} {version}: {artifact}, {} bytes, every block checked",
                        size.map_or("?".into(), |n| n.to_string())
                    ),
                ))
            }
            Action::Admit { member, .. } => Ok((
                "done",
                format!("{member} is a member; it may join the federations the group governs"),
            )),
            Action::Remove { member } => {
                let n = self.gov_apply_removals();
                Ok((
                    "done",
                    format!(
                        "{member} is no longer a member: its votes on later proposals do not count, \
                         and {n} federation(s) here no longer ask or answer it"
                    ),
                ))
            }
            Action::Policy { federation, .. } => {
                let here = self.inner.feds.get(federation).is_some();
                Ok((
                    "done",
                    if here {
                        format!(
                            "the next round's aggregator names it in its record; it holds from \
                             the round after (federation {federation})"
                        )
                    } else {
                        format!("this node is not in federation {federation}: nothing to do")
                    },
                ))
            }
            Action::Custom { .. } => Ok(("nothing", "a text: nothing to do".into())),
            Action::Gateway { rules } => {
                let now = lock(&gov.book).gateway_policy().map(|(p, _)| p);
                Ok((
                    "done",
                    if now == Some(*id) {
                        format!(
                            "the group's gateway policy ({} rules): tokens for the group are honoured here",
                            rules.len()
                        )
                    } else {
                        "a later gateway policy of the group is in force".into()
                    },
                ))
            }
        }
    }

    /// The group's members now, but this node.
    fn gov_others(&self, gov: &Gov) -> Vec<sov_core::Did> {
        let me = self.did();
        lock(&gov.book)
            .membership()
            .members()
            .map(|(d, _)| *d)
            .filter(|d| *d != me)
            .collect()
    }

    /// Grant model `name_or_id` (signed here) to every member of the group.
    pub(super) async fn gov_share(&self, gov: &Gov, name_or_id: &str) -> Result<()> {
        for d in self.gov_others(gov) {
            self.share_model(name_or_id, d).await?;
        }
        Ok(())
    }

    /// Grant a release's artifact to every member of the group, if this node owns it (so
    /// members can fetch it); nothing otherwise.
    pub(super) async fn gov_grant_artifact(&self, gov: &Gov, artifact: ContentId) -> Result<()> {
        let owned = self
            .blocking(move |s| {
                Ok(s.info(&artifact)
                    .ok()
                    .is_some_and(|i| i.owner == s.identity().did()))
            })
            .await?;
        if !owned {
            return Ok(());
        }
        for d in self.gov_others(gov) {
            self.grant(artifact, d).await?;
        }
        Ok(())
    }

    /// The model served under `name` because a group promoted it.
    pub async fn gov_served(&self, name: &str) -> Result<Option<Served>> {
        let key = name.as_bytes().to_vec();
        self.blocking(move |s| {
            Ok(s.record(SERVED_TOPIC, &key)?
                .and_then(|v| serde_json::from_slice(&v).ok()))
        })
        .await
    }

    /// Every name a promoted model is served under (the groups' names and `default`), with
    /// what it serves.
    pub async fn gov_served_all(&self) -> Result<Vec<(String, Served)>> {
        self.blocking(|s| {
            Ok(s.records(SERVED_TOPIC)?
                .into_iter()
                .filter_map(|(k, v)| {
                    Some((String::from_utf8(k).ok()?, serde_json::from_slice(&v).ok()?))
                })
                .collect())
        })
        .await
    }

    /// Whether `did` is a member of group `group` now, as this node knows it.
    pub(crate) fn gov_check_member(&self, group: &ContentId, did: &sov_core::Did) -> Result<()> {
        let gov = self.inner.govs.get(group).ok_or_else(|| {
            Error::Refused(format!(
                "this node is not in group {group}, which governs the federation"
            ))
        })?;
        if !lock(&gov.book).membership().contains(did) {
            return Err(Error::Refused(format!(
                "{did} is not a member of group {group}, which governs the federation: \
                 propose `sov gov propose {group} admit {did}`"
            )));
        }
        Ok(())
    }

    /// Apply every removal the groups here passed to the federations they govern: the
    /// removed are no longer asked, answered or admitted. Returns how many federations
    /// changed.
    pub(crate) fn gov_apply_removals(&self) -> usize {
        let mut changed = 0;
        for fed in self.inner.feds.all() {
            let Some(group) = crate::fl::state::lock(&fed.ledger).genesis().governance else {
                continue;
            };
            let Some(gov) = self.inner.govs.get(&group) else {
                continue;
            };
            let removed: Vec<sov_core::Did> = {
                let b = lock(&gov.book);
                b.proposals()
                    .filter(|(id, _, _)| b.decision(id) == Some(Status::Passed))
                    .filter_map(|(_, p, _)| match &p.action {
                        Action::Remove { member } => Some(*member),
                        _ => None,
                    })
                    .collect()
            };
            let mut l = crate::fl::state::lock(&fed.ledger);
            let mut any = false;
            for d in removed {
                if l.remove(&d) {
                    info!(federation = %fed.id, member = %d, "removed by the group's vote");
                    any = true;
                }
            }
            changed += usize::from(any);
        }
        changed
    }

    /// The policy proposals of `fed`'s governing group that are in force or passed, and the
    /// settings they change, merged in the order they were made (what an aggregator writes
    /// into its round record).
    pub(crate) fn gov_policy_for(
        &self,
        fed: &crate::fl::state::Fed,
    ) -> (Vec<ContentId>, std::collections::BTreeMap<String, String>) {
        let (in_force, original) = {
            let l = crate::fl::state::lock(&fed.ledger);
            (l.policy_in_force(), l.genesis().governance)
        };
        let Some(gov) = original.and_then(|g| self.inner.govs.get(&g)) else {
            return in_force;
        };
        let (mut ids, _) = in_force.clone();
        {
            let b = lock(&gov.book);
            for (id, p, _) in b.proposals() {
                if matches!(&p.action, Action::Policy { federation, .. } if *federation == fed.id)
                    && b.decision(id) == Some(Status::Passed)
                    && !ids.contains(id)
                {
                    ids.push(*id);
                }
            }
        }
        ids.sort();
        match self.gov_merge_policy(&gov, fed, &ids) {
            Ok(changes) => (ids, changes),
            Err(e) => {
                warn!(federation = %fed.id, "a passed policy change does not apply: {e}");
                in_force
            }
        }
    }

    /// The settings the policy proposals `ids` change, merged in the order they were made,
    /// checked against the federation's genesis.
    fn gov_merge_policy(
        &self,
        gov: &Gov,
        fed: &crate::fl::state::Fed,
        ids: &[ContentId],
    ) -> std::result::Result<std::collections::BTreeMap<String, String>, String> {
        let b = lock(&gov.book);
        let mut ordered = Vec::new();
        for id in ids {
            let (p, _, _) = b
                .proposal(id)
                .ok_or_else(|| format!("policy proposal {id} is not known here yet"))?;
            match &p.action {
                Action::Policy {
                    federation,
                    changes,
                } if *federation == fed.id && b.decision(id) == Some(Status::Passed) => {
                    ordered.push((p.created, *id, changes.clone()));
                }
                _ => {
                    return Err(format!(
                        "{id} is not a passed policy change of this federation"
                    ));
                }
            }
        }
        ordered.sort_by_key(|(created, id, _)| (*created, *id));
        let mut merged = std::collections::BTreeMap::new();
        for (_, _, c) in ordered {
            merged.extend(c);
        }
        let bytes = crate::fl::state::lock(&fed.ledger).genesis_bytes().to_vec();
        let (_, genesis) =
            sov_learn::federation::open_genesis(&bytes).map_err(|e| e.to_string())?;
        genesis.with_changes(&merged).map_err(|e| e.to_string())?;
        Ok(merged)
    }

    /// Check the policy a round record puts in force: every proposal it names is a passed
    /// policy change of this federation in its group, and the settings are theirs merged.
    pub(crate) fn gov_check_policy(
        &self,
        fed: &crate::fl::state::Fed,
        r: &sov_learn::ledger::RoundRecord,
    ) -> std::result::Result<(), String> {
        if r.policy.is_empty() {
            return Ok(());
        }
        let group = crate::fl::state::lock(&fed.ledger)
            .genesis()
            .governance
            .ok_or("a policy change in a federation no group governs")?;
        let gov = self
            .inner
            .govs
            .get(&group)
            .ok_or_else(|| format!("this node is not in group {group}"))?;
        let merged = self.gov_merge_policy(&gov, fed, &r.policy)?;
        if merged != r.changes {
            return Err("the record's policy settings are not its proposals'".into());
        }
        Ok(())
    }
}
