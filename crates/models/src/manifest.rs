//! The model manifest (DESIGN.md §7): what a model is, which stored objects hold it, where it
//! came from and how it was trained. It travels as a `Signed<ModelManifest>` (tag
//! `sov/model/1`), so whoever receives a model can check who vouches for it before using it.
//!
//! One shape serves both kinds of model a node meets: language and embedding models imported
//! from files (GGUF, safetensors), and the small classifiers federations train, whose
//! training record names the federation, rounds, contributors, strategy and privacy budget.
//! Canonical DAG-CBOR has no floats, so fractional figures (ε, δ, evaluation scores) are
//! decimal strings: exact as printed, and compared as numbers only by code that parses them.

use serde::{Deserialize, Serialize};
use sov_core::{ContentId, Message};

/// What a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Generates text (chat and completions).
    Language,
    /// Turns text into vectors.
    Embedding,
    /// Assigns labels (the models federations train).
    Classifier,
}

impl ModelKind {
    /// Its name in manifests and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Language => "language",
            ModelKind::Embedding => "embedding",
            ModelKind::Classifier => "classifier",
        }
    }
}

/// File formats of weights.
pub mod format {
    /// GGUF (llama.cpp's format: weights, tokeniser and chat template in one file).
    pub const GGUF: &str = "gguf";
    /// safetensors weights with a Hugging Face `config.json` and `tokenizer.json`.
    pub const SAFETENSORS: &str = "safetensors";
    /// sov-learn's own parameter vector (little-endian f32).
    pub const SOV_F32: &str = "sov-f32";
}

/// A signed description of one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// The name it is served under (`/v1/models` ids).
    pub name: String,
    /// What it does.
    pub kind: ModelKind,
    /// The network's architecture (`llama`, `bert`, `mlp`…).
    pub architecture: String,
    /// The weights' file format (see [`format`]).
    pub format: String,
    /// The object holding the weights.
    pub weights: ContentId,
    /// Bytes of the weights file.
    pub weights_size: u64,
    /// The object holding the tokeniser, if it is not inside the weights file.
    pub tokenizer: Option<ContentId>,
    /// The object holding the architecture's settings (`config.json`), if separate.
    pub config: Option<ContentId>,
    /// The object holding a chat template that replaces the weights file's own (Jinja
    /// source), if the importer gave one. Absent from manifests that have none, so those
    /// made before it existed keep their bytes and signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<ContentId>,
    /// Number of parameters.
    pub parameters: u64,
    /// Longest context in tokens (0 for models that take no token sequence).
    pub context_length: u64,
    /// Output width of embedding models (0 otherwise).
    pub dimensions: u64,
    /// Tensor types of the weights, e.g. `Q4_1`.
    pub quantization: String,
    /// The manifest of the model this one was derived from (fine-tuned, trained further).
    pub parent: Option<ContentId>,
    /// Licence (an SPDX expression where known).
    pub license: Option<String>,
    /// How it was trained, for models trained by a federation.
    pub training: Option<TrainingRecord>,
    /// Measured results.
    pub evaluation: Vec<Evaluation>,
    /// When the manifest was made (Unix seconds).
    pub created: u64,
}

impl Message for ModelManifest {
    const TAG: &'static str = "sov/model/1";
}

/// How a federation trained a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// The federation that trained it.
    pub federation: String,
    /// Rounds run.
    pub rounds: u32,
    /// Distinct contributors over all rounds.
    pub contributors: u32,
    /// Aggregation strategy (`fedavg`, `median`, `trimmed-mean`, `multi-krum`…).
    pub strategy: String,
    /// Whether updates were combined by secure aggregation.
    pub secure_aggregation: bool,
    /// The privacy budget spent, if differential privacy was on.
    pub privacy: Option<PrivacyBudget>,
    /// The round that produced this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    /// BLAKE3 of the parameters (f32, little-endian), hex: what the round record names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_digest: Option<String>,
    /// The round's transcript: whose updates were summed, each with the digest of the
    /// message it sent, so a member checks that what was included is what it sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transcript: Vec<Contribution>,
}

/// One member's part in a round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    /// The member's DID.
    pub member: String,
    /// BLAKE3 of the message it sent, hex.
    pub digest: String,
}

/// (ε, δ)-differential privacy, as decimal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivacyBudget {
    /// ε.
    pub epsilon: String,
    /// δ.
    pub delta: String,
}

/// One measured result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    /// What was measured (`accuracy`, `perplexity`…).
    pub metric: String,
    /// The figure, as a decimal string.
    pub value: String,
    /// On what data.
    pub dataset: String,
}

/// What a weights file says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// What the model does.
    pub kind: ModelKind,
    /// Architecture.
    pub architecture: String,
    /// Parameters.
    pub parameters: u64,
    /// Context length in tokens.
    pub context_length: u64,
    /// Output width of embedding models.
    pub dimensions: u64,
    /// Tensor types, most used first (`Q4_1+Q8_0+F32`).
    pub quantization: String,
}

/// Describe a GGUF language model, checking that this crate can run it (its shape, tensors
/// and tokeniser load).
pub fn describe_gguf(g: &crate::gguf::Gguf) -> crate::Result<Description> {
    let config = crate::llama::Config::from_gguf(g)?;
    crate::tokenizer::Tokenizer::from_gguf(g)?;
    let mut by_type: Vec<(String, u64)> = Vec::new();
    let mut parameters = 0u64;
    for t in &g.tensors {
        let n: u64 = t.dims.iter().product();
        parameters += n;
        let name = format!("{:?}", t.ty);
        match by_type.iter_mut().find(|(ty, _)| *ty == name) {
            Some((_, c)) => *c += n,
            None => by_type.push((name, n)),
        }
    }
    by_type.sort_by_key(|t| std::cmp::Reverse(t.1));
    Ok(Description {
        kind: ModelKind::Language,
        architecture: g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("llama")
            .to_string(),
        parameters,
        context_length: config.n_ctx as u64,
        dimensions: 0,
        quantization: by_type
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>()
            .join("+"),
    })
}

/// Describe a BERT embedding model from its `config.json`, safetensors weights and
/// `tokenizer.json`, checking that this crate can run it.
pub fn describe_bert(
    config: &[u8],
    weights: &[u8],
    tokenizer: &[u8],
) -> crate::Result<Description> {
    crate::bert::Bert::load(config, weights, tokenizer, None)?;
    let st = crate::safetensors::SafeTensors::parse(weights)?;
    describe_bert_table(config, &st, tokenizer)
}

/// [`describe_bert`] from the safetensors table alone (its header): the config and the
/// tokeniser are checked, the tensors are checked when the model loads. What an import uses,
/// so the weights can stream into the store unread.
pub fn describe_bert_table(
    config: &[u8],
    st: &crate::safetensors::SafeTensors,
    tokenizer: &[u8],
) -> crate::Result<Description> {
    let c = crate::bert::Bert::check_config(config)?;
    crate::wordpiece::WordPiece::from_json(tokenizer)?;
    let parameters = st
        .tensors
        .values()
        .filter(|t| !matches!(t.dtype, crate::safetensors::Dtype::Other(..)))
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum();
    let mut types: Vec<String> = st
        .tensors
        .values()
        .filter(|t| !matches!(t.dtype, crate::safetensors::Dtype::Other(..)))
        .map(|t| format!("{:?}", t.dtype))
        .collect();
    types.sort();
    types.dedup();
    Ok(Description {
        kind: ModelKind::Embedding,
        architecture: "bert".into(),
        parameters,
        context_length: c.max_position_embeddings as u64,
        dimensions: c.hidden_size as u64,
        quantization: types.join("+"),
    })
}

/// A name a model may be served under: 1–64 characters of ASCII letters, digits and
/// `-_.:`, starting with a letter or digit (so it is safe in URLs, file names and JSON).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "a model name has 1 to 64 characters; {name:?} has {}",
            name.len()
        ));
    }
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "model name {name:?}: use letters, digits and - _ . : (starting with a letter or digit)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["smollm2", "SmolLM2-135M-Instruct.Q4_1", "minilm:l6", "7b"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
