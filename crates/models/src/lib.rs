//! `sov-models` is a layer-2 crate of sov: the models a node runs. Today: the GGUF file
//! format (`gguf`), its quantised tensor types (`quant`) and the Llama-family forward pass
//! (`llama`). Fast kernels, tokenisers, sampling and signed model manifests come next
//! (issue 5).
//!
//! ```text
//!   file bytes ──gguf::Gguf::parse──▶ metadata + tensor table (every offset and size checked)
//!                                       │
//!   tensor bytes ◀──Gguf::tensor_data───┘──quant::dequantize──▶ f32 values
//! ```

pub mod bert;
pub mod chat;
pub mod constrain;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod manifest;
pub mod quant;
pub mod safetensors;
pub mod sample;
pub mod tokenizer;
pub mod tools;
pub mod wordpiece;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A GGUF file is malformed, truncated or asks for more than it holds.
    #[error("GGUF: {0}")]
    Gguf(String),
    /// A tensor type this crate cannot decode, or data that does not fit its type.
    #[error("tensor: {0}")]
    Tensor(String),
    /// A chat template that does not compile or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A request this model cannot serve (bad settings, tokens outside the vocabulary).
    #[error("{0}")]
    Input(String),
    /// An input longer than the model takes (a prompt past its context, a text past an
    /// embedding model's length): refused, never cut silently.
    #[error("{0}")]
    ContextLength(String),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl Error {
    /// A tensor or model-shape error with this message.
    pub(crate) fn tensor(msg: impl Into<String>) -> Self {
        Error::Tensor(msg.into())
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
