//! Architectures beyond SmolLM2's, on tiny random-weight models written by
//! `fixtures/make_tiny_models.py` (~100 KB each, committed): `qwen2` (q/k/v biases, NEOX
//! RoPE, tied output) and `llama` with a separate output matrix and 4 query heads per KV
//! head. llama.cpp's greedy tokens and log-probabilities for them are in `tiny-models.json`;
//! sov's must be the same numbers.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use sov_models::{gguf::Gguf, llama::Llama, tokenizer::Tokenizer};

#[derive(serde::Deserialize)]
struct Fixture {
    models: std::collections::BTreeMap<String, Vec<common::LogprobRow>>,
}

fn check(file: &str, bytes: &[u8]) {
    let fixture: Fixture =
        serde_json::from_slice(include_bytes!("../fixtures/tiny-models.json")).unwrap();
    let g = Gguf::parse(bytes).unwrap();
    let m = Llama::from_gguf(&g, bytes).unwrap();
    Tokenizer::from_gguf(&g).unwrap();
    let (_, _, worst) = common::compare_logprobs(&m, &fixture.models[file], true);
    eprintln!("{file}: largest log-probability difference {worst:.2e}");
    assert!(worst < 2e-3, "{file}: {worst}");
}

#[test]
fn qwen2_matches_llama_cpp() {
    let bytes = include_bytes!("../fixtures/tiny-qwen2.gguf");
    let g = Gguf::parse(bytes).unwrap();
    let c = sov_models::llama::Config::from_gguf(&g).unwrap();
    assert!(c.rope_neox && c.arch == "qwen2" && c.rope_base == 1e6);
    check("tiny-qwen2.gguf", bytes);
}

#[test]
fn llama_with_an_output_matrix_and_gqa_4_matches_llama_cpp() {
    check(
        "tiny-llama.gguf",
        include_bytes!("../fixtures/tiny-llama.gguf"),
    );
}
