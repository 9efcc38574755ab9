//! Decode speed of the reference forward pass: load a GGUF, feed a prompt of token ids,
//! decode greedily, print one JSON line (prompt and decode tokens per second, wall and CPU).
//!
//!     cargo run --release -p sov-models --example decode_bench -- MODEL.gguf [TOKENS] [THREADS]

use std::time::Instant;

use sov_models::{
    gguf::Gguf,
    llama::{Llama, argmax},
};

fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: decode_bench MODEL.gguf [TOKENS] [THREADS]")?;
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let threads: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let t0 = Instant::now();
    let (g, bytes) = Gguf::read(path.as_ref())?;
    let mut m = Llama::from_gguf(&g, &bytes)?;
    m.set_threads(threads);
    drop(bytes);
    let load_s = t0.elapsed().as_secs_f64();
    // "The capital of France is"
    let prompt = [504u32, 3575, 282, 4649, 314];
    let mut s = m.session(prompt.len() + n + 1);
    let (t1, c1) = (Instant::now(), cpu_seconds());
    let mut logits = Vec::new();
    for &t in &prompt {
        logits = m.forward(&mut s, t)?;
    }
    let (prompt_s, prompt_cpu) = (t1.elapsed().as_secs_f64(), cpu_seconds() - c1);
    let (t2, c2) = (Instant::now(), cpu_seconds());
    for _ in 0..n {
        let next = argmax(&logits).ok_or("no logits")?;
        logits = m.forward(&mut s, next)?;
    }
    let (decode_s, decode_cpu) = (t2.elapsed().as_secs_f64(), cpu_seconds() - c2);
    println!(
        "{{\"threads\":{threads},\"load_s\":{load_s:.3},\"prompt_tokens\":{},\"prompt_tokens_per_s\":{:.2},\"completion_tokens\":{n},\"decode_tokens_per_s\":{:.2},\"decode_tokens_per_cpu_s\":{:.2},\"prompt_cpu_s\":{prompt_cpu:.2}}}",
        prompt.len(),
        prompt.len() as f64 / prompt_s,
        n as f64 / decode_s,
        n as f64 / decode_cpu,
    );
    Ok(())
}
