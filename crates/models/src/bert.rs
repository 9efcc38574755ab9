//! BERT sentence embeddings (all-MiniLM-L6-v2 and its kin) from a Hugging Face
//! `config.json`, `model.safetensors` and `tokenizer.json`: the encoder, mean pooling over
//! the tokens and L2 normalisation, as sentence-transformers computes them.
//!
//! The weights are f32 and small (22 M parameters for MiniLM-L6); the products are plain
//! row-major loops over `W·x` rows, which the compiler vectorises.

use serde::Deserialize;

use crate::{Error, Result, safetensors::SafeTensors, wordpiece::WordPiece};

fn err(msg: impl Into<String>) -> Error {
    Error::Tensor(msg.into())
}

/// The settings of `config.json` this encoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest input in tokens.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Segment types.
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    /// LayerNorm ε.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// Activation (`gelu` only).
    #[serde(default = "gelu")]
    pub hidden_act: String,
    /// Architecture family (`bert`).
    #[serde(default)]
    pub model_type: String,
}

fn two() -> usize {
    2
}
fn eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}

/// Largest sizes accepted from a config (BERT-large is 1024 wide, 24 layers).
const MAX_HIDDEN: usize = 8192;
const MAX_LAYERS: usize = 128;

struct Linear {
    w: Vec<f32>,
    b: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Linear {
    fn load(st: &SafeTensors, file: &[u8], name: &str, rows: usize, cols: usize) -> Result<Self> {
        Ok(Linear {
            w: st.f32(file, &format!("{name}.weight"), &[rows, cols])?,
            b: st.f32(file, &format!("{name}.bias"), &[rows])?,
            rows,
            cols,
        })
    }

    /// `y = W x + b` for each of the `n` rows of `x`.
    fn apply(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * self.rows];
        for t in 0..n {
            let xt = &x[t * self.cols..(t + 1) * self.cols];
            let yt = &mut y[t * self.rows..(t + 1) * self.rows];
            for (r, out) in yt.iter_mut().enumerate() {
                let w = &self.w[r * self.cols..(r + 1) * self.cols];
                *out = dot(w, xt) + self.b[r];
            }
        }
        y
    }
}

/// A dot product in eight lanes (so the compiler keeps eight partial sums in registers).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Norm {
    fn load(st: &SafeTensors, file: &[u8], name: &str, n: usize) -> Result<Self> {
        Ok(Norm {
            w: st.f32(file, &format!("{name}.weight"), &[n])?,
            b: st.f32(file, &format!("{name}.bias"), &[n])?,
        })
    }

    fn apply(&self, x: &mut [f32], eps: f64) {
        let d = self.w.len();
        for row in x.chunks_exact_mut(d) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps).sqrt();
            for (i, v) in row.iter_mut().enumerate() {
                *v = ((*v as f64 - mean) * inv) as f32 * self.w[i] + self.b[i];
            }
        }
    }
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// A BERT encoder with its tokeniser.
pub struct Bert {
    /// Its shape.
    pub config: BertConfig,
    tokenizer: WordPiece,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embd_norm: Norm,
    layers: Vec<Layer>,
    max_tokens: usize,
}

impl Bert {
    /// Load from the bytes of `config.json`, `model.safetensors` and `tokenizer.json`.
    /// `max_tokens` caps the input (sentence-transformers' `max_seq_length`; `None`: the
    /// model's position limit).
    pub fn load(
        config: &[u8],
        weights: &[u8],
        tokenizer: &[u8],
        max_tokens: Option<usize>,
    ) -> Result<Self> {
        let c = Self::check_config(config)?;
        let tok = WordPiece::from_json(tokenizer)?;
        Self::load_checked(c, tok, weights, max_tokens)
    }

    /// Parse and check `config.json`: a BERT encoder of a size this crate runs.
    pub fn check_config(config: &[u8]) -> Result<BertConfig> {
        let c: BertConfig =
            serde_json::from_slice(config).map_err(|e| err(format!("config.json: {e}")))?;
        if !c.model_type.is_empty() && c.model_type != "bert" {
            return Err(err(format!(
                "config.json: model_type {:?} is not supported (bert is)",
                c.model_type
            )));
        }
        if c.hidden_act != "gelu" {
            return Err(err(format!(
                "config.json: activation {:?} is not supported (gelu is)",
                c.hidden_act
            )));
        }
        let (h, f) = (c.hidden_size, c.intermediate_size);
        if h == 0
            || h > MAX_HIDDEN
            || c.num_attention_heads == 0
            || !h.is_multiple_of(c.num_attention_heads)
            || c.num_hidden_layers > MAX_LAYERS
            || f == 0
            || f > 8 * MAX_HIDDEN
            || c.max_position_embeddings == 0
        {
            return Err(err(format!(
                "config.json: an encoder of width {h}, {} heads, {} layers, feed-forward {f} is not one this crate runs",
                c.num_attention_heads, c.num_hidden_layers
            )));
        }
        Ok(c)
    }

    fn load_checked(
        c: BertConfig,
        tok: WordPiece,
        weights: &[u8],
        max_tokens: Option<usize>,
    ) -> Result<Self> {
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let st = SafeTensors::parse(weights)?;
        // Checkpoints exported from a BertModel name tensors `embeddings.…`; from a
        // pre-training head, `bert.embeddings.…`.
        let p = if st
            .tensors
            .contains_key("bert.embeddings.word_embeddings.weight")
        {
            "bert."
        } else {
            ""
        };
        let t = |name: &str, shape: &[usize]| st.f32(weights, &format!("{p}{name}"), shape);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = format!("{p}encoder.layer.{i}");
            let lin = |n: &str, r, k| Linear::load(&st, weights, &format!("{l}.{n}"), r, k);
            layers.push(Layer {
                q: lin("attention.self.query", h, h)?,
                k: lin("attention.self.key", h, h)?,
                v: lin("attention.self.value", h, h)?,
                o: lin("attention.output.dense", h, h)?,
                attn_norm: Norm::load(&st, weights, &format!("{l}.attention.output.LayerNorm"), h)?,
                up: lin("intermediate.dense", f, h)?,
                down: lin("output.dense", h, f)?,
                out_norm: Norm::load(&st, weights, &format!("{l}.output.LayerNorm"), h)?,
            });
        }
        Ok(Bert {
            word: t("embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
            position: t(
                "embeddings.position_embeddings.weight",
                &[c.max_position_embeddings, h],
            )?,
            token_type: t(
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, h],
            )?,
            embd_norm: Norm::load(&st, weights, &format!("{p}embeddings.LayerNorm"), h)?,
            layers,
            max_tokens: max_tokens
                .unwrap_or(c.max_position_embeddings)
                .min(c.max_position_embeddings),
            tokenizer: tok,
            config: c,
        })
    }

    /// Output width.
    pub fn dimensions(&self) -> usize {
        self.config.hidden_size
    }

    /// Longest input in tokens ([`Bert::embed`] refuses longer texts).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Token ids of `text`, `[CLS]` and `[SEP]` included, cut to [`Bert::max_tokens`] (as
    /// sentence-transformers cuts).
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, self.max_tokens)
    }

    /// The normalised mean-pooled embedding of `text`, and its token count. A text longer
    /// than [`Bert::max_tokens`] is refused ([`Error::ContextLength`]), not cut: an embedding
    /// of part of a text would be taken for one of the whole.
    pub fn embed(&self, text: &str) -> Result<(Vec<f32>, usize)> {
        // One token past the limit is enough to know the text does not fit.
        let ids = self.tokenizer.encode(text, self.max_tokens + 1);
        if ids.len() > self.max_tokens {
            return Err(Error::ContextLength(format!(
                "the input is too large: more than the {} tokens this model takes",
                self.max_tokens
            )));
        }
        Ok((self.embed_ids(&ids)?, ids.len()))
    }

    /// The normalised mean-pooled embedding of token ids.
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let c = &self.config;
        let (h, n) = (c.hidden_size, ids.len());
        if n > self.max_tokens {
            return Err(Error::ContextLength(format!(
                "{n} tokens; this model takes at most {}",
                self.max_tokens
            )));
        }
        if n == 0 {
            return Err(Error::Input(format!(
                "{n} tokens; 1 to {} fit",
                self.max_tokens
            )));
        }
        let mut x = vec![0f32; n * h];
        for (t, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= c.vocab_size {
                return Err(Error::Input(format!(
                    "token {id} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            let row = &mut x[t * h..(t + 1) * h];
            let (w, p, y) = (
                &self.word[id * h..(id + 1) * h],
                &self.position[t * h..(t + 1) * h],
                &self.token_type[..h],
            );
            for i in 0..h {
                row[i] = w[i] + p[i] + y[i];
            }
        }
        self.embd_norm.apply(&mut x, c.layer_norm_eps);
        let heads = c.num_attention_heads;
        let hd = h / heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores = vec![0f32; n];
        for layer in &self.layers {
            let (q, k, v) = (
                layer.q.apply(&x, n),
                layer.k.apply(&x, n),
                layer.v.apply(&x, n),
            );
            let mut ctx = vec![0f32; n * h];
            for head in 0..heads {
                let off = head * hd;
                for i in 0..n {
                    let qi = &q[i * h + off..i * h + off + hd];
                    for (j, s) in scores.iter_mut().enumerate() {
                        *s = dot(qi, &k[j * h + off..j * h + off + hd]) * scale;
                    }
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for s in scores.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let out = &mut ctx[i * h + off..i * h + off + hd];
                    for (j, s) in scores.iter().enumerate() {
                        let w = s / sum;
                        for (o, vv) in out.iter_mut().zip(&v[j * h + off..j * h + off + hd]) {
                            *o += w * vv;
                        }
                    }
                }
            }
            let attn = layer.o.apply(&ctx, n);
            for (a, b) in x.iter_mut().zip(&attn) {
                *a += b;
            }
            layer.attn_norm.apply(&mut x, c.layer_norm_eps);
            let mut up = layer.up.apply(&x, n);
            for u in up.iter_mut() {
                // GELU with erf, as BERT defines it.
                *u = 0.5 * *u * (1.0 + libm::erff(*u / std::f32::consts::SQRT_2));
            }
            let down = layer.down.apply(&up, n);
            for (a, b) in x.iter_mut().zip(&down) {
                *a += b;
            }
            layer.out_norm.apply(&mut x, c.layer_norm_eps);
        }
        // Mean over tokens, then unit length.
        let mut pooled = vec![0f32; h];
        for row in x.chunks_exact(h) {
            for (p, v) in pooled.iter_mut().zip(row) {
                *p += v;
            }
        }
        for p in pooled.iter_mut() {
            *p /= n as f32;
        }
        let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        for p in pooled.iter_mut() {
            *p /= norm;
        }
        Ok(pooled)
    }
}
