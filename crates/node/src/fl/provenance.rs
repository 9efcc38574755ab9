//! Models with provenance. Each round's aggregator stores the new model as a classifier
//! (safetensors weights and a config object) with a `sov/model/1` manifest it signs: the
//! federation, the round, the parent model (the last round's manifest), the strategy, ε and
//! δ spent so far, the contributors' validation accuracy, and the round's transcript (each
//! contributor with the digest of what it sent). It grants the model to every member and
//! names the manifest in the round record. Each member pulls it, checks that the signer is
//! the round's aggregator and that the weights are the parameters the record names, and
//! keeps it.

use std::{sync::Arc, time::Duration};

use sov_core::{ContentId, Did};
use sov_learn::ledger::{Contribution, RoundRecord, params_digest, write_decimal};
use sov_models::manifest::{
    self, Evaluation, ModelKind, ModelManifest, PrivacyBudget, TrainingRecord,
};
use tracing::{debug, info, warn};

use super::state::{Fed, lock};
use crate::{
    Node,
    classifier::{CONFIG_MEDIA_TYPE, ClassifierConfig, classifier_weights},
};

type Res<T> = std::result::Result<T, String>;

/// Pull attempts for a round's model before a member leaves it to the next catch-up.
const PULL_TRIES: usize = 5;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The model name of round `round` of a federation: its name made safe, the end of its id,
/// the round (unique among a node's models, at most 64 characters).
pub(crate) fn model_name(federation_name: &str, id: &ContentId, round: u32) -> String {
    let mut safe = String::new();
    for c in federation_name.chars() {
        if c.is_ascii_alphanumeric() {
            safe.push(c.to_ascii_lowercase());
        } else if !safe.ends_with('-') {
            safe.push('-');
        }
        if safe.len() >= 32 {
            break;
        }
    }
    let safe = safe.trim_matches('-');
    let id = id.to_string();
    let tail = &id[id.len().saturating_sub(6)..];
    let name = format!(
        "{}-{tail}-r{round}",
        if safe.is_empty() { "fl" } else { safe }
    );
    if manifest::check_name(&name).is_ok() {
        name
    } else {
        format!("fl-{tail}-r{round}")
    }
}

impl Node {
    /// As round `round`'s aggregator: store `params` as a signed classifier model granted to
    /// every member; returns its manifest's id.
    pub(crate) async fn publish_model(
        &self,
        fed: &Arc<Fed>,
        round: u32,
        params: &[f32],
        transcript: &[Contribution],
        epsilon: Option<f64>,
        validation: Option<&(String, u64)>,
    ) -> Res<ContentId> {
        let (g, parent, members) = {
            let l = lock(&fed.ledger);
            (l.genesis().clone(), l.manifest(), l.members())
        };
        let spec = g.model_spec().map_err(|e| e.to_string())?;
        let weights = classifier_weights(&spec, params).map_err(|e| e.to_string())?;
        let config = serde_json::to_vec(&ClassifierConfig {
            task: g.task.data.clone(),
            architecture: g.task.model.clone(),
            input: g.task.input,
            classes: g.task.classes,
            federation: Some(fed.id.to_string()),
        })
        .map_err(|e| e.to_string())?;
        let name = model_name(&g.name, &fed.id, round);
        let created = crate::node::unix_now();
        let weights_size = weights.len() as u64;
        let (wname, cname) = (format!("{name}.safetensors"), format!("{name}.json"));
        let (weights_id, config_id) = self
            .blocking(move |s| {
                let w = crate::models::add_bytes(
                    s,
                    weights,
                    &wname,
                    "application/octet-stream",
                    created,
                )
                .map_err(|e| sov_store::Error::Invalid(e.to_string()))?;
                let c = crate::models::add_bytes(s, config, &cname, CONFIG_MEDIA_TYPE, created)
                    .map_err(|e| sov_store::Error::Invalid(e.to_string()))?;
                Ok((w, c))
            })
            .await
            .map_err(|e| e.to_string())?;
        let dp = g.dp().map_err(|e| e.to_string())?;
        let bytes = sov_learn::wire::f32s_to_bytes(params);
        let manifest = ModelManifest {
            chat_template: None,
            name,
            kind: ModelKind::Classifier,
            architecture: g.task.model.clone(),
            format: manifest::format::SAFETENSORS.into(),
            weights: weights_id,
            weights_size,
            tokenizer: None,
            config: Some(config_id),
            parameters: params.len() as u64,
            context_length: 0,
            dimensions: 0,
            quantization: "F32".into(),
            parent,
            license: None,
            training: Some(TrainingRecord {
                federation: fed.id.to_string(),
                rounds: round,
                contributors: transcript.len() as u32,
                strategy: g.policy.strategy.clone(),
                secure_aggregation: g.policy.secagg.is_some(),
                privacy: match (epsilon, dp) {
                    (Some(e), Some(dp)) => Some(PrivacyBudget {
                        epsilon: write_decimal(e),
                        delta: write_decimal(dp.delta),
                    }),
                    _ => None,
                },
                round: Some(round),
                parameters_digest: Some(hex(&params_digest(&bytes))),
                transcript: transcript
                    .iter()
                    .map(|c| manifest::Contribution {
                        member: c.member.to_string(),
                        digest: hex(&c.digest),
                    })
                    .collect(),
            }),
            evaluation: validation
                .map(|(accuracy, rows)| Evaluation {
                    metric: "accuracy".into(),
                    value: accuracy.clone(),
                    dataset: format!(
                        "the contributors' validation shares ({rows} rows), of the model the \
                         round started from"
                    ),
                })
                .into_iter()
                .collect(),
            created,
        };
        let entry = self
            .register_model(manifest)
            .await
            .map_err(|e| e.to_string())?;
        // The objects are new (no holder has them yet): one transaction grants each to
        // every member.
        let me = self.did();
        let readers: Vec<Did> = members.into_iter().filter(|m| *m != me).collect();
        for object in std::iter::once(entry.id).chain(crate::models::parts(&entry.manifest)) {
            let readers = readers.clone();
            self.blocking(move |s| s.grant_all(&object, &readers))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(entry.id)
    }

    /// As a member: pull the model a round's record names, check it is the aggregator's
    /// and holds the parameters the record names, and keep it.
    pub(crate) async fn pull_round_model(&self, record: &RoundRecord, signer: Did) -> Res<()> {
        let Some(id) = record.manifest else {
            return Ok(());
        };
        if self.model(&id.to_string()).await.is_ok() {
            return Ok(());
        }
        let mut last = String::new();
        for attempt in 0..PULL_TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
            }
            match self.pull_model(id).await {
                Ok(_) => {
                    last.clear();
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        if !last.is_empty() {
            return Err(format!("model {id} not pulled: {last}"));
        }
        let checked = async {
            let c = self
                .classifier(&id.to_string())
                .await
                .map_err(|e| e.to_string())?;
            if c.entry.signer != signer {
                return Err(format!(
                    "signed by {}, not the round's aggregator",
                    c.entry.signer
                ));
            }
            let digest = params_digest(&sov_learn::wire::f32s_to_bytes(&c.params));
            if digest.as_slice() != record.model.as_slice() {
                return Err("its weights are not the parameters the round names".into());
            }
            Ok(())
        }
        .await;
        if let Err(e) = checked {
            warn!(model = %id, round = record.round, "round model refused: {e}");
            let _ = self.remove_model(&id.to_string()).await;
            return Err(e);
        }
        info!(model = %id, round = record.round, "round model kept");
        Ok(())
    }

    /// Pull a round's model in the background.
    pub(crate) fn pull_soon(&self, record: RoundRecord, signer: Did) {
        if record.manifest.is_none() || signer == self.did() {
            return;
        }
        let node = self.clone();
        self.spawn(async move {
            if let Err(e) = node.pull_round_model(&record, signer).await {
                debug!(round = record.round, "{e}");
            }
        });
    }
}
