//! Classifiers: the models federations train, stored as safetensors weights and a small JSON
//! config naming the task, described by a signed manifest like every model. A node loads one
//! to predict class probabilities for feature rows, or to evaluate it on a data file.

use serde::{Deserialize, Serialize};
use sov_learn::{
    federation::Task,
    member::{self, Source},
    model::ModelSpec,
    train,
};
use sov_models::manifest::ModelKind;

use crate::{Error, Node, Result, models::ModelEntry};

/// Media type of a classifier's config object.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.sov.classifier+json";

/// Largest config object read.
const MAX_CONFIG: usize = 64 << 10;

/// What a classifier's config object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// The data kind it learned (`digits`, `csv`…).
    pub task: String,
    /// `logreg`, `mlp:H…` or `cnn`.
    pub architecture: String,
    /// Input shape: channels, height, width (tables: 1, 1, features).
    pub input: [u32; 3],
    /// Classes.
    pub classes: u32,
    /// The federation that trained it, if one did.
    pub federation: Option<String>,
}

impl ClassifierConfig {
    /// The task this config describes.
    pub fn task(&self) -> Task {
        Task {
            data: self.task.clone(),
            input: self.input,
            classes: self.classes,
            model: self.architecture.clone(),
        }
    }

    /// The network it describes.
    pub fn spec(&self) -> Result<ModelSpec> {
        let arch = self
            .architecture
            .parse()
            .map_err(|e: sov_learn::Error| Error::Model(e.to_string()))?;
        ModelSpec::new(arch, self.input.map(|x| x as usize), self.classes as usize)
            .map_err(|e| Error::Model(e.to_string()))
    }
}

/// A classifier's weights as safetensors, one tensor per parameter of `spec`'s layout.
pub fn classifier_weights(spec: &ModelSpec, params: &[f32]) -> Result<Vec<u8>> {
    if params.len() != spec.num_params() {
        return Err(Error::Model(format!(
            "{} parameters for a model of {}",
            params.len(),
            spec.num_params()
        )));
    }
    let layout = spec.layout();
    let mut tensors = Vec::with_capacity(layout.len());
    let mut at = 0;
    for p in &layout {
        tensors.push((
            p.name.as_str(),
            p.shape.as_slice(),
            &params[at..at + p.len()],
        ));
        at += p.len();
    }
    sov_models::safetensors::write_f32(&tensors).map_err(|e| Error::Model(e.to_string()))
}

/// A classifier loaded: its entry, config, network and parameters.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// The registry entry (manifest and signer).
    pub entry: ModelEntry,
    /// Its config.
    pub config: ClassifierConfig,
    /// Its network.
    pub spec: ModelSpec,
    /// Its parameters, flattened in the layout's order.
    pub params: Vec<f32>,
}

/// How a classifier did on a data file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// The model's id.
    pub model: String,
    /// Rows evaluated.
    pub rows: usize,
    /// Share classified right.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
}

impl Node {
    /// Load classifier `name_or_id`: its config and weights objects, checked against each
    /// other.
    pub async fn classifier(&self, name_or_id: &str) -> Result<Classifier> {
        let entry = self.model(name_or_id).await?;
        let m = &entry.manifest;
        if m.kind != ModelKind::Classifier {
            return Err(Error::Model(format!(
                "{} is a {} model, not a classifier",
                m.name,
                m.kind.as_str()
            )));
        }
        let config_id = m
            .config
            .ok_or_else(|| Error::Model(format!("classifier {} has no config", m.name)))?;
        let config = self.read(config_id).await?;
        if config.len() > MAX_CONFIG {
            return Err(Error::Model("a classifier config over 64 KiB".into()));
        }
        let config: ClassifierConfig = serde_json::from_slice(&config)
            .map_err(|e| Error::Model(format!("classifier {}: its config: {e}", m.name)))?;
        let spec = config.spec()?;
        let weights = self.read(m.weights).await?;
        let st = sov_models::safetensors::SafeTensors::parse(&weights)
            .map_err(|e| Error::Model(e.to_string()))?;
        let mut params = Vec::with_capacity(spec.num_params());
        for p in spec.layout() {
            params.extend(
                st.f32(&weights, &p.name, &p.shape)
                    .map_err(|e| Error::Model(e.to_string()))?,
            );
        }
        if params.iter().any(|x| !x.is_finite()) {
            return Err(Error::Model(format!(
                "classifier {} holds a value that is not finite",
                m.name
            )));
        }
        Ok(Classifier {
            entry,
            config,
            spec,
            params,
        })
    }

    /// Class probabilities of classifier `name_or_id` for each row of features.
    pub async fn predict(&self, name_or_id: &str, rows: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>> {
        let c = self.classifier(name_or_id).await?;
        tokio::task::spawn_blocking(move || train::predict_proba(&c.spec, &c.params, &rows))
            .await
            .map_err(|_| Error::Stopped)?
            .map_err(|e| Error::Refused(e.to_string()))
    }

    /// Evaluate classifier `name_or_id` on `data` (a CSV file, an IDX pair, a shard or a
    /// test split such as `digits:test`), every row of it.
    pub async fn evaluate_model(
        &self,
        name_or_id: &str,
        data: &str,
        label_column: Option<String>,
        standardize: bool,
    ) -> Result<EvalReport> {
        let c = self.classifier(name_or_id).await?;
        let source: Source = data
            .parse()
            .map_err(|e: sov_learn::Error| Error::Refused(e.to_string()))?;
        let opts = member::Options {
            label_column,
            standardize,
            validation: 0.0,
            data_dir: std::env::var_os("SOV_DATA_DIR").map(Into::into),
            ..member::Options::default()
        };
        let id = c.entry.id.to_string();
        tokio::task::spawn_blocking(move || {
            let d = member::load(&source, &c.config.task(), &opts)
                .map_err(|e| Error::Refused(format!("this data does not fit the model: {e}")))?;
            let (loss, accuracy) = train::evaluate(&c.spec, &c.params, &d.train)
                .map_err(|e| Error::Refused(e.to_string()))?;
            Ok(EvalReport {
                model: id,
                rows: d.train.len(),
                accuracy: f64::from(accuracy),
                loss: f64::from(loss),
            })
        })
        .await
        .map_err(|_| Error::Stopped)?
    }
}
