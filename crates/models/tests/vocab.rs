//! llama.cpp's own tokeniser test vectors (`ggml-vocab-*.gguf` with `.inp`/`.out`, from the
//! llama-cpp-python==0.3.36 sdist, fetched by `scripts/fetch-models`): every test text
//! encodes to exactly the ids llama.cpp's reference tokenisers give, and decodes back.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use sov_models::{gguf::Gguf, tokenizer::Tokenizer};

fn vocab_dir() -> PathBuf {
    common::models_dir().join("llama-vocab")
}

/// (text, expected ids) pairs of one vocabulary.
fn cases(dir: &Path, name: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    // The input ends with a separator line; the output has one line per test.
    let texts = &texts[..ids.len()];
    texts.iter().map(|t| t.to_string()).zip(ids).collect()
}

fn check(name: &str) -> (usize, usize) {
    let dir = vocab_dir();
    let (g, _) = Gguf::read(&dir.join(format!("ggml-vocab-{name}.gguf"))).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let cases = cases(&dir, name);
    let mut failed = Vec::new();
    for (text, want) in &cases {
        let got = tok.encode(text).unwrap();
        if &got != want {
            failed.push(format!(
                "{text:?}\n  llama.cpp {want:?}\n  sov       {got:?}"
            ));
        }
    }
    eprintln!(
        "{name}: {} of {} texts as llama.cpp",
        cases.len() - failed.len(),
        cases.len()
    );
    assert!(failed.is_empty(), "{name}:\n{}", failed.join("\n"));
    (cases.len(), failed.len())
}

#[test]
fn gpt2_byte_level_bpe_matches_llama_cpp() {
    check("gpt-2");
}

#[test]
fn llama_sentencepiece_matches_llama_cpp() {
    check("llama-spm");
}

#[test]
fn phi3_sentencepiece_matches_llama_cpp() {
    check("phi-3");
}

#[test]
fn llama3_bpe_matches_llama_cpp() {
    check("llama-bpe");
}

#[test]
fn qwen2_bpe_matches_llama_cpp() {
    check("qwen2");
}

#[test]
fn starcoder_bpe_matches_llama_cpp() {
    check("starcoder");
}
