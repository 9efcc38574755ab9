//! The Llama-family forward pass (Llama, SmolLM, Qwen2) on GGUF weights,
//! one token at a time with a KV cache. Weights stay quantised; each matrix–vector product
//! works block by block on them (see [`QMatrix::matvec`]).
//!
//! Per layer: `x += Wo·attn(RoPE(Wq·n), RoPE(Wk·n), Wv·n)` with `n = RMSNorm(x)`, then
//! `x += Wdown·(silu(Wgate·m) ⊙ Wup·m)` with `m = RMSNorm(x)`; logits are
//! `Wout·RMSNorm(x)` (`Wout` is the token embedding when the file ties them). RoPE is
//! llama.cpp's "normal" kind: pairs `(2i, 2i+1)` of each head rotate by `pos·base^(−2i/d)`
//! (the GGUF converter permutes Q and K for it). Attention heads share KV heads in groups
//! (GQA).
//!
//! This is the reference path, written for clarity and checked token for token against
//! llama.cpp; the fast kernels build on it.

use std::sync::{Arc, Mutex};

use half::f16;

use crate::{Error, Result, gguf::Gguf};

mod activations;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod blocks;
mod ops;
mod pool;
mod q8;
mod qmatrix;

use ops::{Cache, attend_head, expf_ggml, rms_norm, rope, rope_cache, vector};
use pool::{PartFn, Pool};
pub use qmatrix::QMatrix;
use qmatrix::half;

/// Attention this large or larger, in (token, head, position seen) triples, is shared with
/// the helper threads: about 1,024 are worth a hand-off (some 15 µs of work).
const PARALLEL_ATTENTION: usize = 1024;

/// The shape of a Llama model, from its GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Key/value heads (GQA groups).
    pub n_head_kv: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Width of the feed-forward layer.
    pub n_ff: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// RMSNorm ε.
    pub rms_eps: f32,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// Longest context the model was trained for.
    pub n_ctx: usize,
    /// The architecture (`llama`, `qwen2`).
    pub arch: String,
    /// RoPE rotates pairs half a head apart (GPT-NeoX style, Qwen2) rather than
    /// neighbours (Llama as GGUF stores it).
    pub rope_neox: bool,
}

impl Config {
    /// Read the shape from metadata (`{arch}.block_count` etc.).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::tensor("no general.architecture"))?
            .to_string();
        // llama.cpp's rope type per architecture: NORM for llama, NEOX for qwen2.
        let rope_neox = match arch.as_str() {
            "llama" => false,
            "qwen2" => true,
            _ => {
                return Err(Error::tensor(format!(
                    "architecture {arch:?} is not supported yet (llama, qwen2 are)"
                )));
            }
        };
        let u = |k: &str| -> Result<usize> {
            g.get(&format!("{arch}.{k}"))
                .and_then(|v| v.as_u64())
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0 && v < 1 << 24)
                .ok_or_else(|| Error::tensor(format!("{arch}.{k} is missing or out of range")))
        };
        let f = |k: &str, default: f64| -> f32 {
            g.get(&format!("{arch}.{k}"))
                .and_then(|v| v.as_f64())
                .unwrap_or(default) as f32
        };
        let n_embd = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_head_kv = g
            .get(&format!("{arch}.attention.head_count_kv"))
            .map(|_| u("attention.head_count_kv"))
            .transpose()?
            .unwrap_or(n_head);
        if !n_embd.is_multiple_of(n_head) || !n_head.is_multiple_of(n_head_kv) {
            return Err(Error::tensor(format!(
                "{n_embd} wide with {n_head} heads and {n_head_kv} KV heads does not divide"
            )));
        }
        let head_dim = n_embd / n_head;
        if !head_dim.is_multiple_of(2) {
            return Err(Error::tensor("RoPE needs an even head width"));
        }
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::tensor("no token_embd.weight"))?;
        let n_vocab = *embd
            .dims
            .get(1)
            .ok_or_else(|| Error::tensor("token_embd is not 2-D"))? as usize;
        Ok(Config {
            n_layer: u("block_count")?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: u("feed_forward_length")?,
            n_vocab,
            rms_eps: f("attention.layer_norm_rms_epsilon", 1e-5),
            rope_base: f("rope.freq_base", 10_000.0),
            n_ctx: u("context_length")?,
            rope_neox,
            arch,
        })
    }

    /// Width of the keys (and values) of one position.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v: they read the same input.
    qkv: [Arc<QMatrix>; 3],
    /// Their biases (Qwen2).
    qkv_bias: Option<[Vec<f32>; 3]>,
    wo: Arc<QMatrix>,
    ffn_norm: Vec<f32>,
    /// gate and up: they read the same input.
    gate_up: [Arc<QMatrix>; 2],
    w_down: Arc<QMatrix>,
}

/// A loaded Llama model.
pub struct Llama {
    /// Its shape.
    pub config: Config,
    embd: Arc<QMatrix>,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Option<Arc<QMatrix>>,
    pool: Mutex<Pool>,
    threads: usize,
}

/// The state of one sequence: its KV cache and position.
#[derive(Debug, Default)]
pub struct Session {
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
    pos: usize,
    ctx: usize,
}

impl Session {
    /// Tokens seen so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    /// Whether no token was seen yet.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Keep the first `n` tokens' keys and values and forget the rest, to go on from there
    /// with room for `ctx` tokens in all (at most the model's context): a prompt that begins
    /// as an earlier one did reads only what follows the shared part.
    pub fn rewind(&mut self, n: usize, ctx: usize, model: &Llama) {
        let n = n.min(self.pos);
        let kv = model.config.kv_dim();
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            layer.truncate(n * kv);
        }
        self.pos = n;
        self.ctx = ctx.min(model.config.n_ctx).max(n + 1);
    }

    /// Bytes its keys and values take.
    pub fn kv_bytes(&self) -> usize {
        self.k
            .iter()
            .chain(&self.v)
            .map(|l| l.len() * std::mem::size_of::<f16>())
            .sum()
    }
}

impl Llama {
    /// Load the model from a parsed GGUF file and its bytes.
    pub fn from_gguf(g: &Gguf, bytes: &[u8]) -> Result<Self> {
        let c = Config::from_gguf(g)?;
        let (e, kv, ff) = (c.n_embd, c.kv_dim(), c.n_ff);
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let m = |n: &str, cols, rows| {
                QMatrix::from_gguf(g, bytes, &format!("blk.{i}.{n}.weight"), cols, rows)
                    .map(Arc::new)
            };
            layers.push(Layer {
                attn_norm: vector(g, bytes, &format!("blk.{i}.attn_norm.weight"), e)?,
                qkv: [m("attn_q", e, e)?, m("attn_k", e, kv)?, m("attn_v", e, kv)?],
                qkv_bias: match g.tensor(&format!("blk.{i}.attn_q.bias")) {
                    Some(_) => Some([
                        vector(g, bytes, &format!("blk.{i}.attn_q.bias"), e)?,
                        vector(g, bytes, &format!("blk.{i}.attn_k.bias"), kv)?,
                        vector(g, bytes, &format!("blk.{i}.attn_v.bias"), kv)?,
                    ]),
                    None => None,
                },
                wo: m("attn_output", e, e)?,
                ffn_norm: vector(g, bytes, &format!("blk.{i}.ffn_norm.weight"), e)?,
                gate_up: [m("ffn_gate", e, ff)?, m("ffn_up", e, ff)?],
                w_down: m("ffn_down", ff, e)?,
            });
        }
        let output = match g.tensor("output.weight") {
            Some(_) => Some(Arc::new(QMatrix::from_gguf(
                g,
                bytes,
                "output.weight",
                e,
                c.n_vocab,
            )?)),
            None => None,
        };
        Ok(Llama {
            embd: Arc::new(QMatrix::from_gguf(
                g,
                bytes,
                "token_embd.weight",
                e,
                c.n_vocab,
            )?),
            out_norm: vector(g, bytes, "output_norm.weight", e)?,
            layers,
            output,
            config: c,
            pool: Mutex::new(Pool::new(0)),
            threads: 1,
        })
    }

    /// Use `n` threads for the large matrix products (this one and `n − 1` helpers, which
    /// wait blocked between products). Results do not depend on `n`.
    pub fn set_threads(&mut self, n: usize) {
        let n = n.clamp(1, 256);
        if n != self.threads {
            self.pool = Mutex::new(Pool::new(n - 1));
            self.threads = n;
        }
    }

    /// Threads used for the matrix products.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The kernels the products run on this CPU (chosen at run time): `avx512-vnni`,
    /// `avx-vnni` or `avx2` (with FMA and F16C), else `portable`.
    pub fn kernels() -> &'static str {
        #[cfg(target_arch = "x86_64")]
        if let Some(f) = avx2::Features::detect() {
            return match f.vnni() {
                avx2::Vnni::Avx512 => "avx512-vnni",
                avx2::Vnni::Avx => "avx-vnni",
                avx2::Vnni::No => "avx2",
            };
        }
        "portable"
    }

    /// Bytes of weights one token reads: every matrix once (the embedding only one row,
    /// unless it is also the output matrix).
    pub fn bytes_per_token(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv
                    .iter()
                    .chain(&l.gate_up)
                    .chain([&l.wo, &l.w_down])
                    .map(|m| m.bytes())
                    .sum::<usize>()
            })
            .sum();
        let out = self.output.as_ref().unwrap_or(&self.embd).bytes();
        layers + out
    }

    /// A fresh sequence of at most `ctx` tokens (capped at the model's context length).
    pub fn session(&self, ctx: usize) -> Session {
        let ctx = ctx.min(self.config.n_ctx).max(1);
        let kv = self.config.kv_dim();
        Session {
            k: vec![Vec::with_capacity(ctx * kv); self.config.n_layer],
            v: vec![Vec::with_capacity(ctx * kv); self.config.n_layer],
            pos: 0,
            ctx,
        }
    }

    /// Feed one token; returns the logits for the next one.
    pub fn forward(&self, s: &mut Session, token: u32) -> Result<Vec<f32>> {
        self.forward_batch(s, &[token])
    }

    /// Feed several tokens at once (a prompt); returns the logits after the last one. Each
    /// weight matrix is read once for all of them, which makes reading a prompt several
    /// times faster than feeding it token by token; the values are the same.
    pub fn forward_batch(&self, s: &mut Session, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut out = self.forward_multi(&mut [(s, tokens)])?;
        out.pop().ok_or_else(|| Error::tensor("no logits"))
    }

    /// Feed several sequences at once, each its own tokens (a prompt's next part, or the
    /// one token just sampled); returns each sequence's logits after its last token. Every
    /// weight matrix is read once for all the tokens of all the sequences (continuous
    /// batching: concurrent requests share the read that bounds a decode step); attention
    /// stays within each sequence. Each sequence's values are the same as if it were fed
    /// alone. Nothing is changed when any sequence's tokens do not fit its context.
    pub fn forward_multi(&self, seqs: &mut [(&mut Session, &[u32])]) -> Result<Vec<Vec<f32>>> {
        #[cfg(target_arch = "x86_64")]
        if let Some(f) = avx2::Features::detect() {
            return f.run(Forward { model: self, seqs });
        }
        self.forward_impl(seqs)
    }

    #[inline(always)]
    fn forward_impl(&self, seqs: &mut [(&mut Session, &[u32])]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        for (s, tokens) in seqs.iter() {
            if tokens.is_empty() {
                return Err(Error::tensor("no tokens to feed"));
            }
            if s.pos + tokens.len() > s.ctx {
                return Err(Error::tensor(format!(
                    "{} more tokens do not fit the context of {} ({} used)",
                    tokens.len(),
                    s.ctx,
                    s.pos
                )));
            }
        }
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        // Every token of every sequence, in order: (sequence, position).
        let at: Vec<(usize, usize)> = seqs
            .iter()
            .enumerate()
            .flat_map(|(i, (s, tokens))| (0..tokens.len()).map(move |t| (i, s.pos + t)))
            .collect();
        let mut x: Vec<Vec<f32>> = seqs
            .iter()
            .flat_map(|(_, tokens)| tokens.iter())
            .map(|&t| self.embd.row(t as usize))
            .collect::<Result<_>>()?;
        let n = x.len();
        let hd = c.head_dim;
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let angles: Vec<Vec<(f32, f32)>> = at
            .iter()
            .map(|&(_, pos)| rope_cache(hd, pos, c.rope_base))
            .collect();
        for (l, layer) in self.layers.iter().enumerate() {
            let normed: Vec<Vec<f32>> = x
                .iter()
                .map(|v| rms_norm(v, &layer.attn_norm, c.rms_eps))
                .collect();
            let mut qkv = pool.matmul_group(&layer.qkv, &normed).into_iter();
            let (mut q, mut k, mut v) = (
                qkv.next().unwrap_or_default(),
                qkv.next().unwrap_or_default(),
                qkv.next().unwrap_or_default(),
            );
            // Qwen2's q/k/v biases, added after the products as llama.cpp adds them.
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                for t in 0..n {
                    for (out, b) in [(&mut q[t], bq), (&mut k[t], bk), (&mut v[t], bv)] {
                        for (o, b) in out.iter_mut().zip(b) {
                            *o += b;
                        }
                    }
                }
            }
            for t in 0..n {
                let s = &mut seqs[at[t].0].0;
                rope(&mut q[t], hd, &angles[t], c.rope_neox);
                rope(&mut k[t], hd, &angles[t], c.rope_neox);
                half(&mut q[t]);
                s.k[l].extend(k[t].iter().map(|&x| f16::from_f32(x)));
                s.v[l].extend(v[t].iter().map(|&x| f16::from_f32(x)));
            }
            let att = self.attention(&pool, seqs, l, &at, q);
            let o = pool.matmul(&layer.wo, &att);
            for (xt, ot) in x.iter_mut().zip(&o) {
                for (a, b) in xt.iter_mut().zip(ot) {
                    *a += b;
                }
            }
            let m: Vec<Vec<f32>> = x
                .iter()
                .map(|v| rms_norm(v, &layer.ffn_norm, c.rms_eps))
                .collect();
            let mut gate_up = pool.matmul_group(&layer.gate_up, &m).into_iter();
            let (mut gate, up) = (
                gate_up.next().unwrap_or_default(),
                gate_up.next().unwrap_or_default(),
            );
            for (gt, ut) in gate.iter_mut().zip(&up) {
                for (g, u) in gt.iter_mut().zip(ut) {
                    *g = *g / (1.0 + expf_ggml(-*g)) * u;
                }
            }
            let down = pool.matmul(&layer.w_down, &gate);
            for (xt, dt) in x.iter_mut().zip(&down) {
                for (a, b) in xt.iter_mut().zip(dt) {
                    *a += b;
                }
            }
        }
        // Each sequence's last token gives its logits.
        let mut last = Vec::with_capacity(seqs.len());
        let mut end = 0;
        for (s, tokens) in seqs.iter_mut() {
            end += tokens.len();
            s.pos += tokens.len();
            last.push(rms_norm(&x[end - 1], &self.out_norm, c.rms_eps));
        }
        let out = self.output.as_ref().unwrap_or(&self.embd);
        Ok(pool.matmul(out, &last))
    }

    /// Layer `l`'s attention for every token of `seqs` (`at`: each token's sequence and
    /// position; `q`: its queries; its keys and values already in the cache): one output of
    /// `n_embd` per token. Each (token, head) is one unit of work, its cost the positions it
    /// sees; when there are enough, they are cut into parts of about equal cost shared with
    /// the helper threads (a long prompt's attention grows with the square of its length).
    fn attention(
        &self,
        pool: &Pool,
        seqs: &mut [(&mut Session, &[u32])],
        l: usize,
        at: &[(usize, usize)],
        q: Vec<Vec<f32>>,
    ) -> Vec<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        let fast = avx2::Features::detect();
        let c = &self.config;
        let (hd, kvd, heads) = (c.head_dim, c.kv_dim(), c.n_head);
        let group = heads / c.n_head_kv;
        let scale = 1.0 / (hd as f32).sqrt();
        // The caches move into the work and back (no copy).
        let kv: Arc<Vec<(Vec<f16>, Vec<f16>)>> = Arc::new(
            seqs.iter_mut()
                .map(|(s, _)| (std::mem::take(&mut s.k[l]), std::mem::take(&mut s.v[l])))
                .collect(),
        );
        let cost: usize = at.iter().map(|&(_, p)| p + 1).sum::<usize>() * heads;
        let units = at.len() * heads;
        let parts = if cost < PARALLEL_ATTENTION {
            1
        } else {
            units.min(pool.threads() * 4)
        };
        // Part k: the units from ends[k - 1] (or 0) to ends[k], cut where the cost so far
        // passes k/parts of the whole.
        let mut ends = Vec::with_capacity(parts);
        let mut so_far = 0;
        for (u, &(_, p)) in at
            .iter()
            .flat_map(|a| std::iter::repeat_n(a, heads))
            .enumerate()
        {
            so_far += p + 1;
            if so_far * parts >= cost * (ends.len() + 1) {
                ends.push(u + 1);
            }
        }
        ends.truncate(parts);
        if let Some(last) = ends.last_mut() {
            *last = units;
        }
        let ends = Arc::new(ends);
        let (q, at_all) = (Arc::new(q), Arc::new(at.to_vec()));
        let longest = at.iter().map(|&(_, p)| p + 1).max().unwrap_or(1);
        let work: PartFn = {
            let (kv, ends) = (kv.clone(), ends.clone());
            Arc::new(move |part| {
                let start = if part == 0 { 0 } else { ends[part - 1] };
                let end = ends.get(part).copied().unwrap_or(start);
                let mut out = vec![0f32; (end - start) * hd];
                let mut scores = vec![0f32; longest];
                for (u, o) in (start..end).zip(out.chunks_exact_mut(hd)) {
                    let (t, h) = (u / heads, u % heads);
                    let (i, pos) = at_all[t];
                    let (keys, values) = &kv[i];
                    let cache = Cache {
                        keys,
                        values,
                        stride: kvd,
                    };
                    // The token at `pos` sees its sequence's positions 0 ..= pos.
                    let (qh, kvh) = (&q[t][h * hd..(h + 1) * hd], (h / group) * hd);
                    #[cfg(target_arch = "x86_64")]
                    if let Some(f) = fast {
                        f.attend_head(qh, &cache, kvh, scale, &mut scores[..=pos], o);
                        continue;
                    }
                    attend_head(qh, &cache, kvh, scale, &mut scores[..=pos], o);
                }
                out
            })
        };
        let values = pool.run_parts(ends.len(), work);
        let mut att = vec![vec![0f32; c.n_embd]; at.len()];
        let mut u = 0;
        for v in &values {
            for o in v.chunks_exact(hd) {
                let (t, h) = (u / heads, u % heads);
                att[t][h * hd..(h + 1) * hd].copy_from_slice(o);
                u += 1;
            }
        }
        let kv = Arc::try_unwrap(kv).unwrap_or_else(|shared| (*shared).clone());
        for ((s, _), (k, v)) in seqs.iter_mut().zip(kv) {
            s.k[l] = k;
            s.v[l] = v;
        }
        att
    }

    /// Greedy decoding: feed `prompt`, then pick the most likely token `n` times.
    pub fn greedy(&self, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
        let mut s = self.session(prompt.len() + n);
        let mut logits = Vec::new();
        for &t in prompt {
            logits = self.forward(&mut s, t)?;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let next = argmax(&logits).ok_or_else(|| Error::tensor("no logits"))?;
            out.push(next);
            logits = self.forward(&mut s, next)?;
        }
        Ok(out)
    }
}

/// A forward pass to run compiled for AVX2/FMA/F16C (see [`avx2::Compiled`]).
#[cfg(target_arch = "x86_64")]
struct Forward<'a, 'b, 'c> {
    model: &'a Llama,
    seqs: &'a mut [(&'b mut Session, &'c [u32])],
}

#[cfg(target_arch = "x86_64")]
impl avx2::Compiled for Forward<'_, '_, '_> {
    type Output = Result<Vec<Vec<f32>>>;
    #[inline(always)]
    fn run(self) -> Self::Output {
        self.model.forward_impl(self.seqs)
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in v.iter().enumerate() {
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    use super::qmatrix::Activations;
    use crate::quant::GgmlType;

    /// A small deterministic stream of values in [-r, r].
    fn values(n: usize, seed: u32, r: f32) -> Vec<f32> {
        q8::xorshift(n, seed)
            .map(|x| (x as f32 / u32::MAX as f32 * 2.0 - 1.0) * r)
            .collect()
    }

    #[test]
    fn ggml_exp_is_within_two_ulp_of_libm() {
        for x in values(100_000, 1, 80.0)
            .into_iter()
            .chain([0.0, -0.0, 1.0, -87.0, 88.0])
        {
            let (a, b) = (expf_ggml(x), x.exp());
            let ulp = (a.to_bits() as i64 - b.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}): {a} vs {b}");
        }
        // Past the range: 0 and ∞ as ggml gives them.
        assert_eq!(expf_ggml(-200.0), 0.0);
        assert_eq!(expf_ggml(200.0), f32::INFINITY);
    }

    #[test]
    fn the_attention_kernels_agree_bit_for_bit() {
        let (hd, stride, positions) = (64, 192, 37);
        let scores = values(positions, 2, 6.0);
        let v: Vec<f16> = values(positions * stride, 3, 2.0)
            .into_iter()
            .map(f16::from_f32)
            .collect();
        let mut portable = vec![0f32; hd];
        ops::attend(&scores, &v, stride, 64, &mut portable);
        // A sum of f16-rounded values, divided: finite and of V's scale.
        assert!(portable.iter().all(|x| x.is_finite() && x.abs() <= 2.0));
        #[cfg(target_arch = "x86_64")]
        if let Some(f) = avx2::Features::detect() {
            let mut fast = vec![0f32; hd];
            f.attend(&scores, &v, stride, 64, &mut fast);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&portable), bits(&fast));
        }
        // The f16-order dot product is the exact dot product up to rounding.
        let (a, b) = (values(64, 4, 1.0), values(64, 5, 1.0));
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((ops::dot_f16_order(&a, &b) as f64 - exact).abs() < 1e-5);
    }

    #[test]
    fn a_head_s_scores_and_attention_agree_bit_for_bit_across_kernels() {
        // Two key/value heads of 64 side by side, 300 positions: scores in f16 order.
        let (hd, stride, positions) = (64, 128, 300);
        let keys: Vec<f16> = values(positions * stride, 6, 1.5)
            .into_iter()
            .map(f16::from_f32)
            .collect();
        let vals: Vec<f16> = values(positions * stride, 7, 2.0)
            .into_iter()
            .map(f16::from_f32)
            .collect();
        let cache = Cache {
            keys: &keys,
            values: &vals,
            stride,
        };
        let q: Vec<f32> = values(hd, 8, 1.0)
            .into_iter()
            .map(|x| f16::from_f32(x).to_f32())
            .collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let (mut s1, mut portable) = (vec![0f32; positions], vec![0f32; hd]);
        attend_head(&q, &cache, hd, scale, &mut s1, &mut portable);
        // Scores are q·k of the second head.
        let k7: Vec<f32> = keys[7 * stride + hd..7 * stride + 2 * hd]
            .iter()
            .map(|x| x.to_f32())
            .collect();
        let exact: f32 = q.iter().zip(&k7).map(|(a, b)| a * b).sum::<f32>() * scale;
        assert!((s1[7] - exact).abs() < 1e-4, "{} vs {exact}", s1[7]);
        assert!(portable.iter().all(|x| x.is_finite() && x.abs() <= 2.0));
        #[cfg(target_arch = "x86_64")]
        if let Some(f) = avx2::Features::detect() {
            let (mut s2, mut fast) = (vec![0f32; positions], vec![0f32; hd]);
            f.attend_head(&q, &cache, hd, scale, &mut s2, &mut fast);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&s1), bits(&s2));
            assert_eq!(bits(&portable), bits(&fast));
        }
    }

    #[test]
    fn batched_and_single_products_give_the_same_values() {
        // A Q8_0 matrix of 4 rows × 64 columns with known blocks.
        let mut data = Vec::new();
        for r in 0..4u8 {
            for _ in 0..2 {
                data.extend(f16::from_f32(0.01 * (r + 1) as f32).to_le_bytes());
                data.extend((0..32).map(|i| (i as i8 - 16 + r as i8) as u8));
            }
        }
        let m = QMatrix {
            ty: GgmlType::Q8_0,
            rows: 4,
            cols: 64,
            row_bytes: 68,
            data,
        };
        let xs: Vec<Vec<f32>> = (0..3).map(|s| values(64, 10 + s, 1.0)).collect();
        let acts: Vec<Activations> = xs.iter().map(|x| Activations::new(m.ty, x)).collect();
        let mut batched = vec![0f32; 12];
        m.rows_batch(&acts, 0..4, &mut batched);
        for (t, x) in xs.iter().enumerate() {
            let mut one = vec![0f32; 4];
            m.matvec(x, &mut one);
            assert_eq!(one, batched[t * 4..t * 4 + 4]);
            // And close to the f32 product (8-bit activations).
            for (r, y) in one.iter().enumerate() {
                let w = m.row(r).unwrap();
                let exact: f32 = w.iter().zip(x).map(|(a, b)| a * b).sum();
                // Each activation is off by at most half a step, max|x|/254.
                let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                let bound = w.iter().map(|v| v.abs()).sum::<f32>() * amax / 254.0 * 1.01;
                assert!((y - exact).abs() <= bound + 1e-6, "{y} vs {exact}");
            }
        }
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::qmatrix::Activations;
    use super::*;
    use crate::quant::GgmlType;

    use super::q8::test_bytes as bytes;

    /// A matrix of random blocks of `ty` (scales set to small f16 values).
    fn matrix(ty: GgmlType, rows: usize, cols: usize, seed: u32) -> QMatrix {
        let row_bytes = ty.bytes_for(cols as u64).unwrap() as usize;
        let mut data = bytes(rows * row_bytes, seed);
        let scale = |i: usize| half::f16::from_f32(0.002 + 0.001 * (i % 7) as f32).to_le_bytes();
        for (i, b) in data.chunks_exact_mut(ty.block_bytes()).enumerate() {
            match ty {
                GgmlType::Q6K => b[208..].copy_from_slice(&scale(i)),
                GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q4_1 => {
                    b[..2].copy_from_slice(&scale(i));
                    b[2..4].copy_from_slice(&scale(i + 3));
                }
                _ => b[..2].copy_from_slice(&scale(i)),
            }
        }
        QMatrix {
            ty,
            rows,
            cols,
            row_bytes,
            data,
        }
    }

    /// Every hand-written kernel against the portable code, bit for bit, one input and
    /// several; and both close to the product of the dequantised weights.
    #[test]
    fn the_kernels_agree_with_the_portable_code_bit_for_bit() {
        let (rows, cols) = (12, 512);
        let xs: Vec<Vec<f32>> = (0..6)
            .map(|s| {
                bytes(cols, 50 + s)
                    .into_iter()
                    .map(|b| (b as f32 - 127.5) / 40.0)
                    .collect()
            })
            .collect();
        for ty in [
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q5_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ] {
            let m = matrix(ty, rows, cols, ty as u32 + 7);
            let acts: Vec<Activations> = xs.iter().map(|x| Activations::new(ty, x)).collect();
            let mut portable = vec![0f32; rows * xs.len()];
            m.rows_portable(&acts, 0..rows, &mut portable);
            for (t, x) in xs.iter().enumerate() {
                let mut one = vec![0f32; rows];
                m.rows_portable(&acts[t..t + 1], 0..rows, &mut one);
                assert_eq!(one, portable[t * rows..(t + 1) * rows], "{ty:?}");
                for (r, y) in one.iter().enumerate() {
                    let w = m.row(r).unwrap();
                    let exact: f32 = w.iter().zip(x).map(|(a, b)| a * b).sum();
                    let size: f32 = w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
                    // 8-bit activations: within a few percent of the magnitudes.
                    assert!((y - exact).abs() <= 0.02 * size, "{ty:?}: {y} vs {exact}");
                }
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(f) = avx2::Features::detect() {
                use avx2::Vnni;
                assert!(avx2::Features::has_kernel(ty));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let mut avx2_bits = None;
                // Each kind of integer dot product this CPU has (AVX2's always), for one
                // input up to six (the kernels take four at a time): the same bits.
                for vnni in [Vnni::No, Vnni::Avx512, Vnni::Avx] {
                    let Some(f) = f.with_vnni(vnni) else { continue };
                    for n in 1..=xs.len() {
                        let mut fast = vec![0f32; rows * n];
                        f.dot_rows(ty, &m.data, m.row_bytes, &acts[..n], &mut fast);
                        assert_eq!(
                            bits(&fast),
                            bits(
                                &avx2_bits.get_or_insert_with(|| {
                                    let mut all = vec![0f32; rows * xs.len()];
                                    f.dot_rows(ty, &m.data, m.row_bytes, &acts, &mut all);
                                    all
                                })[..rows * n]
                            ),
                            "{ty:?} {vnni:?} {n} inputs"
                        );
                    }
                }
                let fast = avx2_bits.unwrap_or_default();
                assert_eq!(bits(&fast), bits(&portable), "{ty:?}");
                eprintln!("{ty:?}: the kernels agree ({:?} present)", f.vnni());
            }
        }
    }
}
