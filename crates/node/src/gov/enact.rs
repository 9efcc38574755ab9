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
                        let mut replaced = false;
                        for key in [served.name.as_str(), DEFAULT_NAME] {
                            let newer = match s.record(SERVED_TOPIC, key.as_bytes())? {
                                Some(old) => serde_json::from_slice::<Served>(&old)
                                    .map_or(true, |o| {
                                        (o.created, o.proposal) < (served.created, served.proposal)
                                    }),
                                None => true,
                            };
                            if newer {
                                s.put_record(SERVED_TOPIC, key.as_bytes(), &json)?;
                                replaced = true;
                            }
                        }
                        Ok(replaced)
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
            Action::Policy { .. } => Ok((
                "unsupported",
                "federation policy changes are not enacted by this version".into(),
            )),
            Action::Custom { .. } => Ok(("nothing", "a text: nothing to do".into())),
        }
    }

    /// Grant model `name_or_id` (signed here) to every member of the group.
    pub(super) async fn gov_share(&self, gov: &Gov, name_or_id: &str) -> Result<()> {
        let members: Vec<_> = lock(&gov.book)
            .membership()
            .members()
            .map(|(d, _)| *d)
            .filter(|d| *d != self.did())
            .collect();
        for d in members {
            self.share_model(name_or_id, d).await?;
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
}
