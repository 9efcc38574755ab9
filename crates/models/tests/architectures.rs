//! Architectures beyond SmolLM2's, on tiny random-weight models written by
//! `fixtures/make_tiny_models.py` (~100 KB each, committed): `qwen2` (q/k/v biases, NEOX
//! RoPE, tied output) and `llama` with a separate output matrix and 4 query heads per KV
//! head. llama.cpp's greedy tokens and log-probabilities for them are in `tiny-models.json`;
//! sov's must be the same numbers.

#![allow(clippy::unwrap_used, missing_docs)]

use sov_models::{gguf::Gguf, llama::Llama, tokenizer::Tokenizer};

#[derive(serde::Deserialize)]
struct Fixture {
    models: std::collections::BTreeMap<String, Vec<Row>>,
}

#[derive(serde::Deserialize)]
struct Row {
    prompt: Vec<u32>,
    steps: Vec<Step>,
}

#[derive(serde::Deserialize)]
struct Step {
    id: u32,
    top: Vec<(u32, f64)>,
}

fn check(file: &str, bytes: &[u8]) {
    let fixture: Fixture =
        serde_json::from_slice(include_bytes!("../fixtures/tiny-models.json")).unwrap();
    let g = Gguf::parse(bytes).unwrap();
    let m = Llama::from_gguf(&g, bytes).unwrap();
    Tokenizer::from_gguf(&g).unwrap();
    let mut worst = 0f64;
    for r in &fixture.models[file] {
        let mut s = m.session(r.prompt.len() + r.steps.len());
        let mut logits = m.forward_batch(&mut s, &r.prompt).unwrap();
        for step in &r.steps {
            assert_eq!(
                sov_models::llama::argmax(&logits),
                Some(step.id),
                "{file}: greedy token"
            );
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + logits
                    .iter()
                    .map(|&l| (l as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            for &(id, lp) in &step.top {
                worst = worst.max((logits[id as usize] as f64 - lse - lp).abs());
            }
            logits = m.forward(&mut s, step.id).unwrap();
        }
    }
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
