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

use std::{
    ops::Range,
    sync::{Arc, Mutex, mpsc},
};

use half::f16;

use crate::{
    Error, Result,
    gguf::Gguf,
    quant::{self, GgmlType},
};

fn err(msg: impl Into<String>) -> Error {
    Error::Tensor(msg.into())
}

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
            .ok_or_else(|| err("no general.architecture"))?
            .to_string();
        // llama.cpp's rope type per architecture: NORM for llama, NEOX for qwen2.
        let rope_neox = match arch.as_str() {
            "llama" => false,
            "qwen2" => true,
            _ => {
                return Err(err(format!(
                    "architecture {arch:?} is not supported yet (llama, qwen2 are)"
                )));
            }
        };
        let u = |k: &str| -> Result<usize> {
            g.get(&format!("{arch}.{k}"))
                .and_then(|v| v.as_u64())
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0 && v < 1 << 24)
                .ok_or_else(|| err(format!("{arch}.{k} is missing or out of range")))
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
            return Err(err(format!(
                "{n_embd} wide with {n_head} heads and {n_head_kv} KV heads does not divide"
            )));
        }
        let head_dim = n_embd / n_head;
        if !head_dim.is_multiple_of(2) {
            return Err(err("RoPE needs an even head width"));
        }
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| err("no token_embd.weight"))?;
        let n_vocab = *embd
            .dims
            .get(1)
            .ok_or_else(|| err("token_embd is not 2-D"))? as usize;
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

/// A weight matrix kept in its file type: `rows` rows of `cols` values, each row a whole
/// number of blocks.
#[derive(Debug, Clone)]
pub struct QMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Vec<u8>,
}

impl QMatrix {
    fn from_gguf(g: &Gguf, bytes: &[u8], name: &str, cols: usize, rows: usize) -> Result<Self> {
        let t = g
            .tensor(name)
            .ok_or_else(|| err(format!("no tensor {name}")))?;
        let shape_ok = t.dims.first() == Some(&(cols as u64))
            && t.dims.iter().skip(1).product::<u64>() == rows as u64;
        if !shape_ok {
            return Err(err(format!(
                "{name} is {:?}; {cols} × {rows} expected",
                t.dims
            )));
        }
        if !t.ty.decodable() {
            return Err(err(format!("{name} is {:?}, not decodable yet", t.ty)));
        }
        let row_bytes =
            t.ty.bytes_for(cols as u64)
                .ok_or_else(|| err(format!("{name}: rows are not whole blocks")))?
                as usize;
        Ok(QMatrix {
            ty: t.ty,
            rows,
            cols,
            row_bytes,
            data: g.tensor_data(bytes, t)?.to_vec(),
        })
    }

    /// Row `r` as f32 values.
    pub fn row(&self, r: usize) -> Result<Vec<f32>> {
        if r >= self.rows {
            return Err(err(format!("row {r} of {}", self.rows)));
        }
        quant::dequantize(
            self.ty,
            &self.data[r * self.row_bytes..(r + 1) * self.row_bytes],
        )
    }

    /// `y = W·x` (`x` has `cols` values, `y` gets `rows`). Quantised weights multiply
    /// activations rounded to 8 bits per block of 32, with integer dot products, as
    /// llama.cpp does (Q8_1 activations for Q4_1 weights, Q8_0 for Q8_0).
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        let a = Activations::new(self.ty, x);
        self.rows_into(&a, 0..self.rows, y);
    }

    /// Bytes of the weights.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Rows `rows` of `W·x` into `y` (`y.len() == rows.len()`).
    fn rows_into(&self, a: &Activations, rows: Range<usize>, y: &mut [f32]) {
        self.rows_batch(std::slice::from_ref(a), rows, y);
    }

    /// Rows `rows` of `W·xₜ` for each input `xₜ`, into `y` token by token
    /// (`y[t·len + i]` is row `rows.start + i` for input `t`). Each weight row is read once
    /// for all inputs, and every value is the same as a single product would give.
    ///
    /// On x86-64 CPUs with AVX2, FMA and F16C (detected at run time) the same code runs
    /// compiled for them: the compiler vectorises the fixed-size block loops (3.6× faster on
    /// this machine's EPYC than the SSE2 baseline).
    fn rows_batch(&self, xs: &[Activations], rows: Range<usize>, y: &mut [f32]) {
        debug_assert!(
            xs.iter()
                .all(|a| a.x.len() == self.cols || a.q.len() * 32 == self.cols)
        );
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            // SAFETY: `rows_avx2` only differs from `rows_portable` in being compiled for
            // AVX2, FMA and F16C, and the CPU has all three (checked just above).
            #[allow(unsafe_code)]
            unsafe {
                self.rows_avx2(xs, rows, y)
            };
            return;
        }
        self.rows_portable(xs, rows, y);
    }

    /// The AVX2 build: Q4_1 and Q8_0 rows through hand-written block kernels
    /// ([`avx2`]), each row read once and used for every input while it sits in L1; the
    /// other types through the portable code, compiled for AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn rows_avx2(&self, xs: &[Activations], rows: Range<usize>, y: &mut [f32]) {
        let q4_1 = match self.ty {
            GgmlType::Q4_1 => true,
            GgmlType::Q8_0 => false,
            _ => return self.rows_portable(xs, rows, y),
        };
        let len = rows.len();
        let data = &self.data[rows.start * self.row_bytes..rows.end * self.row_bytes];
        for (i, row) in data.chunks_exact(self.row_bytes).enumerate() {
            for (x, a) in xs.iter().enumerate() {
                y[x * len + i] = if q4_1 {
                    avx2::dot_q4_1(row, &a.q)
                } else {
                    avx2::dot_q8_0(row, &a.q)
                };
            }
        }
    }

    #[inline(always)]
    fn rows_portable(&self, xs: &[Activations], rows: Range<usize>, y: &mut [f32]) {
        let len = rows.len();
        debug_assert_eq!(y.len(), len * xs.len());
        let data = &self.data[rows.start * self.row_bytes..rows.end * self.row_bytes];
        let t = f16_table();
        if let [a] = xs {
            return self.rows_one(a, rows, y);
        }
        let nx = xs.len();
        let mut acc = vec![0f32; nx];
        let mut mins = vec![0f32; nx];
        match self.ty {
            GgmlType::Q4_1 => {
                // Σ (q·d + m)·x ≈ d·dx·Σ q·qx + m·sx, per block of 32. Each block is
                // unpacked once, in registers, and used for every input; each input's sums
                // run over the blocks in the same order as a single product's.
                for (i, row) in data.chunks_exact(self.row_bytes).enumerate() {
                    acc.fill(0.0);
                    mins.fill(0.0);
                    for (bi, b) in row.chunks_exact(20).enumerate() {
                        let d = h(t, b[0], b[1]);
                        let m = h(t, b[2], b[3]);
                        let mut w = [0i8; 32];
                        for j in 0..16 {
                            w[j] = (b[4 + j] & 0xF) as i8;
                            w[j + 16] = (b[4 + j] >> 4) as i8;
                        }
                        for ((a, ac), mn) in xs.iter().zip(&mut acc).zip(&mut mins) {
                            let xb = &a.q[bi];
                            *ac += d * xb.d * dot_i8(&w, &xb.q) as f32;
                            *mn += m * xb.s;
                        }
                    }
                    for (x, (ac, mn)) in acc.iter().zip(&mins).enumerate() {
                        y[x * len + i] = ac + mn;
                    }
                }
            }
            GgmlType::Q8_0 => {
                for (i, row) in data.chunks_exact(self.row_bytes).enumerate() {
                    acc.fill(0.0);
                    for (bi, b) in row.chunks_exact(34).enumerate() {
                        let d = h(t, b[0], b[1]);
                        let mut w = [0i8; 32];
                        for (o, &q) in w.iter_mut().zip(&b[2..34]) {
                            *o = q as i8;
                        }
                        for (a, ac) in xs.iter().zip(&mut acc) {
                            let xb = &a.q[bi];
                            *ac += d * xb.d * dot_i8(&w, &xb.q) as f32;
                        }
                    }
                    for (x, ac) in acc.iter().enumerate() {
                        y[x * len + i] = *ac;
                    }
                }
            }
            _ => {
                for (i, r) in rows.enumerate() {
                    let w = self.row(r);
                    for (x, a) in xs.iter().enumerate() {
                        y[x * len + i] = match &w {
                            Ok(w) => w.iter().zip(&a.x).map(|(a, b)| a * b).sum(),
                            Err(_) => f32::NAN,
                        };
                    }
                }
            }
        }
    }
}

impl QMatrix {
    /// One input: each block is unpacked and multiplied at once, in registers (the batch
    /// path's unpack-then-reuse is slower when there is nothing to reuse). Same values.
    #[inline(always)]
    fn rows_one(&self, a: &Activations, rows: Range<usize>, y: &mut [f32]) {
        let data = &self.data[rows.start * self.row_bytes..rows.end * self.row_bytes];
        let t = f16_table();
        let xq = &a.q;
        match self.ty {
            GgmlType::Q4_1 => {
                for (yo, row) in y.iter_mut().zip(data.chunks_exact(self.row_bytes)) {
                    let mut acc = 0f32;
                    let mut mins = 0f32;
                    for (b, xb) in row.chunks_exact(20).zip(xq) {
                        let d = h(t, b[0], b[1]);
                        let m = h(t, b[2], b[3]);
                        let mut w = [0i8; 32];
                        for j in 0..16 {
                            w[j] = (b[4 + j] & 0xF) as i8;
                            w[j + 16] = (b[4 + j] >> 4) as i8;
                        }
                        let dot = dot_i8(&w, &xb.q);
                        acc += d * xb.d * dot as f32;
                        mins += m * xb.s;
                    }
                    *yo = acc + mins;
                }
            }
            GgmlType::Q8_0 => {
                for (yo, row) in y.iter_mut().zip(data.chunks_exact(self.row_bytes)) {
                    let mut acc = 0f32;
                    for (b, xb) in row.chunks_exact(34).zip(xq) {
                        let d = h(t, b[0], b[1]);
                        let mut w = [0i8; 32];
                        for (o, &q) in w.iter_mut().zip(&b[2..34]) {
                            *o = q as i8;
                        }
                        let dot = dot_i8(&w, &xb.q);
                        acc += d * xb.d * dot as f32;
                    }
                    *yo = acc;
                }
            }
            _ => {
                for (r, yo) in rows.zip(y.iter_mut()) {
                    *yo = match self.row(r) {
                        Ok(w) => w.iter().zip(&a.x).map(|(a, b)| a * b).sum(),
                        Err(_) => f32::NAN,
                    };
                }
            }
        }
    }
}

/// The input of a matrix product: the values, and for quantised weights, the values
/// rounded to 8 bits per block.
struct Activations {
    x: Vec<f32>,
    q: Vec<Q8Block>,
}

impl Activations {
    fn new(ty: GgmlType, x: &[f32]) -> Self {
        match ty {
            // The quantised kernels read only the 8-bit blocks.
            GgmlType::Q4_1 | GgmlType::Q8_0 => Activations {
                x: Vec::new(),
                q: quantize_q8(x),
            },
            _ => Activations {
                x: x.to_vec(),
                q: Vec::new(),
            },
        }
    }
}

/// Matrices at least this large are split across threads; below it, waking a helper costs
/// more than it saves.
const SPLIT_BYTES: usize = 64 << 10;

type Job = Box<dyn FnOnce() -> Vec<f32> + Send>;

/// Helper threads for the matrix products: each waits, blocked (no spinning: these
/// machines' cores are shared), for a block of rows to compute, and sends the values back.
struct Pool {
    helpers: Vec<(mpsc::SyncSender<Job>, mpsc::Receiver<Vec<f32>>)>,
}

impl Pool {
    fn new(helpers: usize) -> Self {
        let helpers = (0..helpers)
            .filter_map(|i| {
                let (job_tx, job_rx) = mpsc::sync_channel::<Job>(1);
                let (out_tx, out_rx) = mpsc::sync_channel(1);
                std::thread::Builder::new()
                    .name(format!("sov-matvec-{}", i + 1))
                    .spawn(move || {
                        while let Ok(job) = job_rx.recv() {
                            if out_tx.send(job()).is_err() {
                                break;
                            }
                        }
                    })
                    .ok()
                    .map(|_| (job_tx, out_rx))
            })
            .collect();
        Pool { helpers }
    }

    /// `W·xₜ` for every input, one output vector per input.
    fn matmul(&self, m: &Arc<QMatrix>, xs: &[Vec<f32>]) -> Vec<Vec<f32>> {
        self.matmul_group(std::slice::from_ref(m), xs)
            .pop()
            .unwrap_or_default()
    }

    /// `Wₖ·xₜ` for several matrices of the same input width (q, k and v; gate and up):
    /// one output per matrix per input. When the group is large enough, every matrix's
    /// rows are split between this thread and the helpers, and each helper gets its whole
    /// share in one hand-off (one wake-up per group, not per matrix).
    fn matmul_group(&self, ms: &[Arc<QMatrix>], xs: &[Vec<f32>]) -> Vec<Vec<Vec<f32>>> {
        let acts: Arc<Vec<Vec<Activations>>> = Arc::new(
            ms.iter()
                .map(|m| xs.iter().map(|x| Activations::new(m.ty, x)).collect())
                .collect(),
        );
        let n = self.helpers.len() + 1;
        let bytes: usize = ms.iter().map(|m| m.bytes()).sum();
        let mut flat: Vec<Vec<f32>> = ms.iter().map(|m| vec![0f32; m.rows * xs.len()]).collect();
        if n == 1 || bytes < SPLIT_BYTES {
            for ((m, a), out) in ms.iter().zip(acts.iter()).zip(&mut flat) {
                m.rows_batch(a, 0..m.rows, out);
            }
        } else {
            // Share i of matrix k: rows part(k, i).
            let part = |rows: usize, i: usize| {
                let per = rows.div_ceil(n);
                (i * per).min(rows)..((i + 1) * per).min(rows)
            };
            let compute = |ms: &[Arc<QMatrix>], acts: &[Vec<Activations>], i: usize| -> Vec<f32> {
                let mut out = Vec::new();
                for (m, a) in ms.iter().zip(acts) {
                    let r = part(m.rows, i);
                    let at = out.len();
                    out.resize(at + r.len() * a.len(), 0.0);
                    m.rows_batch(a, r, &mut out[at..]);
                }
                out
            };
            let mut sent = vec![false; n];
            for (i, (tx, _)) in self.helpers.iter().enumerate() {
                let (mj, aj) = (ms.to_vec(), acts.clone());
                let job: Job = Box::new(move || {
                    let mut out = Vec::new();
                    for (m, a) in mj.iter().zip(aj.iter()) {
                        let per = m.rows.div_ceil(n);
                        let r = ((i + 1) * per).min(m.rows)..((i + 2) * per).min(m.rows);
                        let at = out.len();
                        out.resize(at + r.len() * a.len(), 0.0);
                        m.rows_batch(a, r, &mut out[at..]);
                    }
                    out
                });
                sent[i + 1] = tx.send(job).is_ok();
            }
            let mut shares: Vec<Vec<f32>> = Vec::with_capacity(n);
            shares.push(compute(ms, &acts, 0));
            for (i, &was_sent) in sent.iter().enumerate().skip(1) {
                let got = if was_sent {
                    self.helpers[i - 1].1.recv().ok()
                } else {
                    None
                };
                // A helper that is gone: its share is done here.
                shares.push(got.unwrap_or_else(|| compute(ms, &acts, i)));
            }
            for (i, share) in shares.iter().enumerate() {
                let mut at = 0;
                for (m, out) in ms.iter().zip(&mut flat) {
                    let r = part(m.rows, i);
                    let len = r.len();
                    for x in 0..xs.len() {
                        out[x * m.rows + r.start..x * m.rows + r.end]
                            .copy_from_slice(&share[at + x * len..at + (x + 1) * len]);
                    }
                    at += len * xs.len();
                }
            }
        }
        ms.iter()
            .zip(flat)
            .map(|(m, f)| f.chunks_exact(m.rows).map(|c| c.to_vec()).collect())
            .collect()
    }
}

/// f16 → f32 for every bit pattern (256 KiB, built once): `half`'s conversion is done in
/// software unless the binary is built for F16C, and a model holds millions of block scales.
fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|b| f16::from_bits(b).to_f32()).collect())
}

#[inline(always)]
fn h(table: &[f32], lo: u8, hi: u8) -> f32 {
    table[u16::from_le_bytes([lo, hi]) as usize]
}

/// One block of 32 activations rounded to 8 bits: `x ≈ d·q`, with `s = d·Σq` (both kept
/// at f16 precision, as GGML's Q8_1 stores them).
struct Q8Block {
    d: f32,
    s: f32,
    q: [i8; 32],
}

/// Round activations to 8 bits per block of 32 (llama.cpp's `quantize_row_q8_1`: scale
/// `max|x|/127`, round half to even).
#[inline(always)]
fn quantize_q8(x: &[f32]) -> Vec<Q8Block> {
    x.chunks_exact(32)
        .map(|c| {
            let amax = c.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut q = [0i8; 32];
            let mut sum = 0i32;
            for (o, v) in q.iter_mut().zip(c) {
                *o = round_even(v * id) as i8;
                sum += *o as i32;
            }
            Q8Block {
                d: f16::from_f32(d).to_f32(),
                s: f16::from_f32(d * sum as f32).to_f32(),
                q,
            }
        })
        .collect()
}

/// Block kernels for x86-64 with AVX2, FMA and F16C, llama.cpp's way: weights and 8-bit
/// activations multiplied in pairs (`maddubs`), summed to 32-bit lanes (`madd`), scaled and
/// accumulated in eight float lanes with FMA, and summed across lanes at the end of the row.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Q8Block;

    /// 32 bytes (u8 weights or i8 activations) into a register.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load32<T: Byte>(bytes: &[T; 32]) -> __m256i {
        // SAFETY: `T` is one byte wide (the `Byte` trait is only for u8 and i8), so
        // `bytes` is 32 readable bytes; an unaligned load needs no alignment.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_loadu_si256(bytes.as_ptr().cast())
        }
    }

    /// One-byte element types.
    trait Byte {}
    impl Byte for u8 {}
    impl Byte for i8 {}

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load16(bytes: &[u8; 16]) -> __m128i {
        // SAFETY: `bytes` is 16 readable bytes, and an unaligned load needs no alignment.
        #[allow(unsafe_code)]
        unsafe {
            _mm_loadu_si128(bytes.as_ptr().cast())
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn load8(v: &[f32; 8]) -> __m256 {
        // SAFETY: `v` is 8 readable floats, and an unaligned load needs no alignment.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_loadu_ps(v.as_ptr())
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn store8(v: &mut [f32; 8], x: __m256) {
        // SAFETY: `v` is 8 writable floats, and an unaligned store needs no alignment.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_storeu_ps(v.as_mut_ptr(), x)
        }
    }

    /// Round eight floats to f16 precision (to nearest, ties to even) and back.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16_round(x: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
    }

    /// [`super::attend`] with eight lanes at a time (the same operations, so the same
    /// values); heads whose width is not a multiple of 8 take the portable code.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn attend(
        scores: &[f32],
        values: &[f32],
        stride: usize,
        at: usize,
        out: &mut [f32],
    ) {
        let hd = out.len();
        if !hd.is_multiple_of(8) {
            return super::attend(scores, values, stride, at, out);
        }
        out.fill(0.0);
        let mut m = f32::NEG_INFINITY;
        let mut sum = 0f32;
        for (p, &sc) in scores.iter().enumerate() {
            let vp = &values[p * stride + at..p * stride + at + hd];
            let (mut ms, mut vs) = (1f32, 1f32);
            if sc > m {
                let old = m;
                m = sc;
                ms = (old - m).exp();
                let k = _mm256_set1_ps(ms);
                for o in out.chunks_exact_mut(8) {
                    if let Ok(o) = <&mut [f32; 8]>::try_from(o) {
                        store8(o, f16_round(_mm256_mul_ps(load8(o), k)));
                    }
                }
            } else {
                vs = (sc - m).exp();
            }
            let k = _mm256_set1_ps(vs);
            for (o, v) in out.chunks_exact_mut(8).zip(vp.chunks_exact(8)) {
                if let (Ok(o), Ok(v)) = (<&mut [f32; 8]>::try_from(o), <&[f32; 8]>::try_from(v)) {
                    store8(o, f16_round(_mm256_fmadd_ps(load8(v), k, load8(o))));
                }
            }
            sum = sum * ms + vs;
        }
        let inv = 1.0 / sum;
        for o in out.iter_mut() {
            *o *= inv;
        }
    }

    /// Two f16 values (little-endian bytes) to f32 with F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16x2(b: &[u8]) -> (f32, f32) {
        let bits = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }

    /// One f16 value (little-endian bytes) to f32 with F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16x1(b: &[u8]) -> f32 {
        let bits = i32::from(u16::from_le_bytes([b[0], b[1]]));
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
    }

    /// One Q4_1 row (blocks of d, m: f16 and 16 bytes of nibbles) times Q8_1 activations.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot_q4_1(row: &[u8], xq: &[Q8Block]) -> f32 {
        let mask = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        for (b, xb) in row.chunks_exact(20).zip(xq) {
            let (d, m) = f16x2(b);
            let Ok(nibbles) = <&[u8; 16]>::try_from(&b[4..20]) else {
                continue;
            };
            let qs = load16(nibbles);
            let lo = _mm_and_si128(qs, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
            let w = _mm256_set_m128i(hi, lo);
            let x = load32(&xb.q);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(p), acc);
            mins = m.mul_add(xb.s, mins);
        }
        hsum(acc) + mins
    }

    /// One Q8_0 row (blocks of d: f16 and 32 signed bytes) times Q8_0 activations.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dot_q8_0(row: &[u8], xq: &[Q8Block]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for (b, xb) in row.chunks_exact(34).zip(xq) {
            let d = f16x1(b);
            let Ok(qs) = <&[u8; 32]>::try_from(&b[2..34]) else {
                continue;
            };
            let w = load32(qs);
            let x = load32(&xb.q);
            // |w| as unsigned times x with w's sign: maddubs wants one unsigned operand.
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
            let p = _mm256_madd_epi16(p, ones);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(p), acc);
        }
        hsum(acc)
    }
}

/// Round half to even for |v| ≤ 2²² (adding and removing 1.5·2²³ leaves the rounded
/// value in the current rounding mode, which is to nearest, ties to even); the same as
/// `round_ties_even`, without a libm call where SSE4.1 is not assumed.
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³
    (v + MAGIC) - MAGIC
}

/// Σ a·b over 32 signed bytes, exactly (fixed sizes let the compiler vectorise it).
#[inline(always)]
fn dot_i8(a: &[i8; 32], b: &[i8; 32]) -> i32 {
    let mut acc = [0i32; 8];
    for k in 0..4 {
        for l in 0..8 {
            acc[l] += a[8 * k + l] as i16 as i32 * b[8 * k + l] as i16 as i32;
        }
    }
    acc.iter().sum()
}

/// Round to f16 precision (llama.cpp keeps its KV cache in f16).
#[inline(always)]
fn half(v: &mut [f32]) {
    for x in v {
        *x = f16::from_f32(*x).to_f32();
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
pub struct Session {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
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
}

fn vector(g: &Gguf, bytes: &[u8], name: &str, len: usize) -> Result<Vec<f32>> {
    let v = g.dequantize(bytes, name)?;
    if v.len() != len {
        return Err(err(format!(
            "{name} has {} values; {len} expected",
            v.len()
        )));
    }
    Ok(v)
}

#[inline(always)]
fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = (x.iter().map(|&v| (v * v) as f64).sum::<f64>() / x.len() as f64) as f32;
    let scale = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * scale * w).collect()
}

/// A dot product of f16-valued vectors summed in llama.cpp's order (`ggml_vec_dot_f16` on
/// AVX2): four accumulators of eight lanes over blocks of 32, fused multiply-adds, then
/// the accumulators and lanes added pairwise; the rest one by one in f64.
#[inline(always)]
fn dot_f16_order(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let np = n & !31;
    let mut acc = [[0f32; 8]; 4];
    for i in (0..np).step_by(32) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, v) in a.iter_mut().enumerate() {
                let k = i + j * 8 + l;
                *v = x[k].mul_add(y[k], *v);
            }
        }
    }
    let mut sum = 0f64;
    if np > 0 {
        let mut a0 = [0f32; 8];
        for l in 0..8 {
            let x0 = acc[0][l] + acc[2][l];
            let x1 = acc[1][l] + acc[3][l];
            a0[l] = x0 + x1;
        }
        let t: [f32; 4] = std::array::from_fn(|l| a0[l] + a0[l + 4]);
        let h = [t[0] + t[1], t[2] + t[3]];
        sum = f64::from(h[0] + h[1]);
    }
    for k in np..n {
        sum += f64::from(x[k] * y[k]);
    }
    sum as f32
}

/// eˣ as llama.cpp's vectorised `ggml_v_expf` computes it (a polynomial after range
/// reduction, error ≤ 1.5 ulp): its SiLU uses it, and matching it keeps the two engines'
/// 8-bit activation roundings the same.
#[inline(always)]
fn expf_ggml(x: f32) -> f32 {
    let r = f32::from_bits(0x4B40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3FB8_AA3B), r); // log2(e)
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35BF_BE8E),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3F31_7200), x), // 0x1.62e4p-1
    );
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let c = n.abs() > 126.0;
    let u = b * b;
    let j = f32::from_bits(0x3C07_2010) // 0x1.0e4020p-7
        .mul_add(b, f32::from_bits(0x3D2B_9F17)) // 0x1.573e2ep-5
        .mul_add(
            u,
            f32::from_bits(0x3E2A_AF33).mul_add(b, f32::from_bits(0x3EFF_FEDB)), // 0x1.555e66p-3, 0x1.fffdb6p-2
        )
        .mul_add(u, f32::from_bits(0x3F7F_FFF6) * b); // 0x1.ffffecp-1
    if !c {
        return j.mul_add(k, k);
    }
    let d = if n <= 0.0 { 0x8200_0000u32 } else { 0 };
    let s1 = f32::from_bits(d.wrapping_add(0x7F00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(d));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// The weighted sum of V for one head, as llama.cpp's CPU flash attention computes it: an
/// online softmax over `scores`, the running sum of V kept at f16 precision (rounded after
/// every step), divided by the softmax sum at the end. `values` holds one row of `stride`
/// values per position; the head's values start at `at`.
fn attend(scores: &[f32], values: &[f32], stride: usize, at: usize, out: &mut [f32]) {
    let hd = out.len();
    out.fill(0.0);
    let mut m = f32::NEG_INFINITY;
    let mut sum = 0f32;
    for (p, &sc) in scores.iter().enumerate() {
        let vp = &values[p * stride + at..p * stride + at + hd];
        let (mut ms, mut vs) = (1f32, 1f32);
        if sc > m {
            let old = m;
            m = sc;
            ms = (old - m).exp();
            for o in out.iter_mut() {
                *o = f16::from_f32(*o * ms).to_f32();
            }
        } else {
            vs = (sc - m).exp();
        }
        for (o, v) in out.iter_mut().zip(vp) {
            *o = f16::from_f32(v.mul_add(vs, *o)).to_f32();
        }
        sum = sum * ms + vs;
    }
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

#[inline(always)]
/// (cos θᵢ, sin θᵢ) for one position: θᵢ = pos·base^(−2i/d), formed by repeated
/// multiplication as llama.cpp does (its rope cache). The same for every head and layer, so
/// it is computed once per token.
fn rope_cache(head_dim: usize, pos: usize, base: f32) -> Vec<(f32, f32)> {
    let step = base.powf(-2.0 / head_dim as f32);
    let mut theta = pos as f32;
    (0..head_dim / 2)
        .map(|_| {
            let (sin, cos) = theta.sin_cos();
            theta *= step;
            (cos, sin)
        })
        .collect()
}

#[inline(always)]
fn rope(x: &mut [f32], head_dim: usize, cache: &[(f32, f32)], neox: bool) {
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(cos, sin)) in cache.iter().enumerate().take(head_dim / 2) {
            // NORM rotates neighbours (2i, 2i+1); NEOX pairs i with i + d/2.
            let (ia, ib) = if neox {
                (i, i + head_dim / 2)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (a, b) = (head[ia], head[ib]);
            head[ia] = a.mul_add(cos, -(b * sin));
            head[ib] = a.mul_add(sin, b * cos);
        }
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
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            // SAFETY: `forward_fma` only differs from `forward_impl` in being compiled for
            // AVX2, FMA and F16C (so `mul_add` is one instruction, not a libm call), and the
            // CPU has all three (checked just above).
            #[allow(unsafe_code)]
            return unsafe { self.forward_fma(s, tokens) };
        }
        self.forward_impl(s, tokens)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn forward_fma(&self, s: &mut Session, tokens: &[u32]) -> Result<Vec<f32>> {
        self.forward_impl(s, tokens)
    }

    #[inline(always)]
    fn forward_impl(&self, s: &mut Session, tokens: &[u32]) -> Result<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        let fast = std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c");
        let c = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Err(err("no tokens to feed"));
        }
        if s.pos + n > s.ctx {
            return Err(err(format!(
                "{n} more tokens do not fit the context of {} ({} used)",
                s.ctx, s.pos
            )));
        }
        let mut x: Vec<Vec<f32>> = tokens
            .iter()
            .map(|&t| self.embd.row(t as usize))
            .collect::<Result<_>>()?;
        let (hd, kvd) = (c.head_dim, c.kv_dim());
        let group = c.n_head / c.n_head_kv;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores = vec![0f32; s.pos + n];
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let angles: Vec<Vec<(f32, f32)>> = (0..n)
            .map(|t| rope_cache(hd, s.pos + t, c.rope_base))
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
                rope(&mut q[t], hd, &angles[t], c.rope_neox);
                rope(&mut k[t], hd, &angles[t], c.rope_neox);
                half(&mut q[t]);
                half(&mut k[t]);
                half(&mut v[t]);
                s.k[l].extend_from_slice(&k[t]);
                s.v[l].extend_from_slice(&v[t]);
            }
            let (keys, values) = (&s.k[l], &s.v[l]);
            let mut att = vec![vec![0f32; c.n_embd]; n];
            for (t, att_out) in att.iter_mut().enumerate() {
                // Token t sees positions 0 ..= pos + t.
                let seen = s.pos + t + 1;
                let scores = &mut scores[..seen];
                for h in 0..c.n_head {
                    let kvh = h / group;
                    let qh = &q[t][h * hd..(h + 1) * hd];
                    for (p, sc) in scores.iter_mut().enumerate() {
                        let kp = &keys[p * kvd + kvh * hd..p * kvd + (kvh + 1) * hd];
                        *sc = dot_f16_order(qh, kp) * scale;
                    }
                    let out = &mut att_out[h * hd..(h + 1) * hd];
                    let at = kvh * hd;
                    #[cfg(target_arch = "x86_64")]
                    if fast {
                        // SAFETY: `fast` is set only when the CPU has AVX2, FMA and F16C.
                        #[allow(unsafe_code)]
                        unsafe {
                            avx2::attend(scores, values, kvd, at, out)
                        };
                        continue;
                    }
                    attend(scores, values, kvd, at, out);
                }
            }
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
        s.pos += n;
        let last = rms_norm(&x[n - 1], &self.out_norm, c.rms_eps);
        let out = self.output.as_ref().unwrap_or(&self.embd);
        Ok(pool
            .matmul(out, std::slice::from_ref(&last))
            .pop()
            .unwrap_or_default())
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
            let next = argmax(&logits).ok_or_else(|| err("no logits"))?;
            out.push(next);
            logits = self.forward(&mut s, next)?;
        }
        Ok(out)
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

    /// A small deterministic stream of values in [-r, r].
    fn values(n: usize, seed: u32, r: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 * 2.0 - 1.0) * r
            })
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
        let v: Vec<f32> = values(positions * stride, 3, 2.0)
            .into_iter()
            .map(|x| f16::from_f32(x).to_f32())
            .collect();
        let mut portable = vec![0f32; hd];
        attend(&scores, &v, stride, 64, &mut portable);
        // A sum of f16-rounded values, divided: finite and of V's scale.
        assert!(portable.iter().all(|x| x.is_finite() && x.abs() <= 2.0));
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            let mut fast = vec![0f32; hd];
            // SAFETY: the CPU has the features (checked just above).
            #[allow(unsafe_code)]
            unsafe {
                avx2::attend(&scores, &v, stride, 64, &mut fast)
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&portable), bits(&fast));
        }
        // The f16-order dot product is the exact dot product up to rounding.
        let (a, b) = (values(64, 4, 1.0), values(64, 5, 1.0));
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot_f16_order(&a, &b) as f64 - exact).abs() < 1e-5);
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
