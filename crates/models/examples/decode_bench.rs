//! Decode speed of the reference forward pass: load a GGUF, feed a prompt of token ids,
//! decode greedily, print one JSON line (prompt and decode tokens per second, wall and CPU).
//!
//!     cargo run --release -p sov-models --example decode_bench -- MODEL.gguf [TOKENS] [THREADS] [PROMPT_TOKENS | @IDS.json]

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

/// Peak resident memory of this process in MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: decode_bench MODEL.gguf [TOKENS] [THREADS] [PROMPT_TOKENS | @IDS.json]")?;
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let threads: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    // PROMPT_TOKENS, or @FILE: the prompt's ids as a JSON array (e.g. llama.cpp's /tokenize).
    let prompt_arg = args.next().unwrap_or_else(|| "5".into());
    let given: Option<Vec<u32>> = match prompt_arg.strip_prefix('@') {
        Some(file) => Some(
            std::fs::read_to_string(file)?
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|t| t.trim().parse())
                .collect::<Result<_, _>>()?,
        ),
        None => None,
    };
    let prompt_len: usize = match &given {
        Some(ids) => ids.len(),
        None => prompt_arg.parse()?,
    };
    let t0 = Instant::now();
    let (g, bytes) = Gguf::read(path.as_ref())?;
    let mut m = Llama::from_gguf(&g, &bytes)?;
    m.set_threads(threads);
    drop(bytes);
    let load_s = t0.elapsed().as_secs_f64();
    // "The capital of France is", repeated to PROMPT_TOKENS (scripts/bench-llamacpp feeds
    // llama.cpp the same ids).
    let prompt: Vec<u32> = given.unwrap_or_else(|| {
        [504u32, 3575, 282, 4649, 314]
            .iter()
            .copied()
            .cycle()
            .take(prompt_len)
            .collect()
    });
    let mut s = m.session(prompt.len() + n + 1);
    let (t1, c1) = (Instant::now(), cpu_seconds());
    let mut logits = m.forward_batch(&mut s, &prompt)?;
    let (prompt_s, prompt_cpu) = (t1.elapsed().as_secs_f64(), cpu_seconds() - c1);
    let (t2, c2) = (Instant::now(), cpu_seconds());
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let next = argmax(&logits).ok_or("no logits")?;
        ids.push(next);
        logits = m.forward(&mut s, next)?;
    }
    let (decode_s, decode_cpu) = (t2.elapsed().as_secs_f64(), cpu_seconds() - c2);
    println!(
        "{{\"threads\":{threads},\"load_s\":{load_s:.3},\"prompt_tokens\":{},\"prompt_tokens_per_s\":{:.2},\"completion_tokens\":{n},\"decode_tokens_per_s\":{:.2},\"decode_tokens_per_cpu_s\":{:.2},\"prompt_cpu_s\":{prompt_cpu:.2},\"peak_rss_mib\":{:.1},\"bytes_per_token\":{},\"kernels\":\"{}\",\"ids\":{:?}}}",
        prompt.len(),
        prompt.len() as f64 / prompt_s,
        n as f64 / decode_s,
        n as f64 / decode_cpu,
        peak_rss_mib(),
        m.bytes_per_token(),
        Llama::kernels(),
        ids,
    );
    Ok(())
}
