//! `/api/v1/models`: the model registry through the node API.

use axum::{
    Json,
    extract::{Path, State},
};
use serde::{Deserialize, Serialize};
use sov_core::Did;
use sov_node::models::{ImportOptions, ModelEntry};

use crate::{ApiError, AppState, objects::parse_id};

/// A model as the node API and `sov model ls --json` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The manifest's object id (the model's id).
    pub id: String,
    /// The name it is served under.
    pub name: String,
    /// `language`, `embedding` or `classifier`.
    pub kind: String,
    /// Architecture.
    pub architecture: String,
    /// Weights format.
    pub format: String,
    /// Parameters.
    pub parameters: u64,
    /// Context length in tokens.
    pub context_length: u64,
    /// Embedding width (0 for other kinds).
    pub dimensions: u64,
    /// Tensor types.
    pub quantization: String,
    /// Bytes of the weights.
    pub weights_size: u64,
    /// The weights object.
    pub weights: String,
    /// The object holding the chat template used instead of the weights file's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Licence.
    pub license: Option<String>,
    /// The parent model's manifest id.
    pub parent: Option<String>,
    /// Who signed the manifest.
    pub signer: String,
    /// Creation time (Unix seconds).
    pub created: u64,
    /// Federated training record, as the manifest holds it.
    pub training: Option<serde_json::Value>,
    /// Measured results the manifest records.
    #[serde(default)]
    pub evaluation: Vec<serde_json::Value>,
}

/// `GET /api/v1/models/{name}`: the model, with its manifest's signature checked again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelDetail {
    /// The model.
    #[serde(flatten)]
    pub info: ModelInfo,
    /// The stored manifest verifies and is signed by `signer`.
    pub signature_valid: bool,
}

/// Body of `POST /api/v1/models/{id}/predict`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PredictRequest {
    /// Feature rows, each of the model's input size (standardised as the model's members
    /// standardised theirs, if they did).
    pub rows: Vec<Vec<f32>>,
}

/// The answer to a prediction.
#[derive(Debug, Serialize, Deserialize)]
pub struct Prediction {
    /// The model's id.
    pub model: String,
    /// Per row, the probability of each class.
    pub probabilities: Vec<Vec<f32>>,
    /// Per row, the most probable class.
    pub classes: Vec<u32>,
}

/// Body of `POST /api/v1/models/{id}/eval`: a data file on the node's machine.
#[derive(Debug, Serialize, Deserialize)]
pub struct EvalRequest {
    /// A CSV file, IMAGES,LABELS, a shard (`digits:1/5`) or a test split (`digits:test`).
    pub data: String,
    /// The label column of a CSV file.
    pub label_column: Option<String>,
    /// Standardise the features with the file's own statistics.
    #[serde(default)]
    pub standardize: bool,
}

pub(crate) async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelDetail>, ApiError> {
    let entry = state.node.model(&name).await?;
    let signature_valid = state.node.model_signature_valid(&name).await?;
    Ok(Json(ModelDetail {
        info: ModelInfo::from(&entry),
        signature_valid,
    }))
}

pub(crate) async fn predict(
    State(state): State<AppState>,
    Path(name): Path<String>,
    crate::error::JsonBody(req): crate::error::JsonBody<PredictRequest>,
) -> Result<Json<Prediction>, ApiError> {
    let model = state.node.model(&name).await?.id.to_string();
    let probabilities = state.node.predict(&name, req.rows).await?;
    let classes = probabilities
        .iter()
        .map(|row| {
            (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0) as u32
        })
        .collect();
    Ok(Json(Prediction {
        model,
        probabilities,
        classes,
    }))
}

pub(crate) async fn eval(
    State(state): State<AppState>,
    Path(name): Path<String>,
    crate::error::JsonBody(req): crate::error::JsonBody<EvalRequest>,
) -> Result<Json<sov_node::classifier::EvalReport>, ApiError> {
    Ok(Json(
        state
            .node
            .evaluate_model(&name, &req.data, req.label_column, req.standardize)
            .await?,
    ))
}

impl From<&ModelEntry> for ModelInfo {
    fn from(e: &ModelEntry) -> Self {
        let m = &e.manifest;
        ModelInfo {
            id: e.id.to_string(),
            name: m.name.clone(),
            kind: m.kind.as_str().into(),
            architecture: m.architecture.clone(),
            format: m.format.clone(),
            parameters: m.parameters,
            context_length: m.context_length,
            dimensions: m.dimensions,
            quantization: m.quantization.clone(),
            weights_size: m.weights_size,
            weights: m.weights.to_string(),
            chat_template: m.chat_template.map(|t| t.to_string()),
            license: m.license.clone(),
            parent: m.parent.map(|p| p.to_string()),
            signer: e.signer.to_string(),
            created: m.created,
            training: m.training.as_ref().map(|t| {
                serde_json::json!({
                    "federation": t.federation, "rounds": t.rounds,
                    "contributors": t.contributors, "strategy": t.strategy,
                    "secure_aggregation": t.secure_aggregation,
                    "privacy": t.privacy.as_ref().map(|p| serde_json::json!({
                        "epsilon": p.epsilon, "delta": p.delta})),
                    "round": t.round,
                    "parameters_digest": t.parameters_digest,
                    "transcript": t.transcript.iter().map(|c| serde_json::json!({
                        "member": c.member, "digest": c.digest})).collect::<Vec<_>>(),
                })
            }),
            evaluation: m
                .evaluation
                .iter()
                .map(|e| {
                    serde_json::json!({"metric": e.metric, "value": e.value, "dataset": e.dataset})
                })
                .collect(),
        }
    }
}

pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Vec<ModelInfo>>, ApiError> {
    let all = state.node.models().await?;
    Ok(Json(all.iter().map(ModelInfo::from).collect()))
}

pub(crate) async fn offered(State(state): State<AppState>) -> Json<Vec<ModelInfo>> {
    Json(
        state
            .node
            .announced_models()
            .iter()
            .map(ModelInfo::from)
            .collect(),
    )
}

/// Body of `POST /api/v1/models`: a file or folder on the node's machine.
#[derive(Debug, Serialize, Deserialize)]
pub struct ImportRequest {
    /// A GGUF file or a Hugging Face model folder, on the node's machine.
    pub path: String,
    /// The name to serve it under.
    pub name: Option<String>,
    /// Its licence.
    pub license: Option<String>,
    /// A chat template file (Jinja) to use instead of the GGUF file's own, on the node's
    /// machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
}

pub(crate) async fn import(
    State(state): State<AppState>,
    crate::error::JsonBody(req): crate::error::JsonBody<ImportRequest>,
) -> Result<Json<ModelInfo>, ApiError> {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = std::path::PathBuf::from(&req.path);
    if !path.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "{} is not an absolute path (the node resolves no relative paths)",
            sov_core::quote(&req.path)
        )));
    }
    let chat_template = match req.chat_template {
        None => None,
        Some(t) => {
            let p = std::path::PathBuf::from(&t);
            if !p.is_absolute() {
                return Err(ApiError::bad_request(format!(
                    "{} is not an absolute path (the node resolves no relative paths)",
                    sov_core::quote(&t)
                )));
            }
            Some(p)
        }
    };
    let opts = ImportOptions {
        name: req.name,
        license: req.license,
        parent: None,
        created,
        chat_template,
    };
    let entry = state.node.import_model(&path, opts).await?;
    Ok(Json(ModelInfo::from(&entry)))
}

pub(crate) async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelInfo>, ApiError> {
    let entry = state.node.remove_model(&name).await?;
    Ok(Json(ModelInfo::from(&entry)))
}

/// Body of `POST /api/v1/models/pull`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PullRequest {
    /// The model's manifest id.
    pub id: String,
}

pub(crate) async fn pull(
    State(state): State<AppState>,
    crate::error::JsonBody(req): crate::error::JsonBody<PullRequest>,
) -> Result<Json<ModelInfo>, ApiError> {
    let id = parse_id(&req.id)?;
    let entry = state.node.pull_model(id).await?;
    Ok(Json(ModelInfo::from(&entry)))
}

/// Body of `POST /api/v1/models/{name}/share`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShareRequest {
    /// The reader's did:key.
    pub did: String,
}

pub(crate) async fn share(
    State(state): State<AppState>,
    Path(name): Path<String>,
    crate::error::JsonBody(req): crate::error::JsonBody<ShareRequest>,
) -> Result<Json<ModelInfo>, ApiError> {
    let did: Did = req.did.parse().map_err(|e| {
        ApiError::bad_request(format!(
            "{} is not a did:key: {e}",
            sov_core::quote(&req.did)
        ))
    })?;
    let entry = state.node.share_model(&name, did).await?;
    Ok(Json(ModelInfo::from(&entry)))
}
