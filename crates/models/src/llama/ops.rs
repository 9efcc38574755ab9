//! The forward pass's small operations, each in llama.cpp's order of arithmetic: RMS
//! norm, f16-ordered dot products, ggml's vectorised `expf`, attention over the f16 cache,
//! and RoPE.

use half::f16;

use crate::{Result, gguf::Gguf};

pub(super) fn vector(g: &Gguf, bytes: &[u8], name: &str, len: usize) -> Result<Vec<f32>> {
    let v = g.dequantize(bytes, name)?;
    if v.len() != len {
        return Err(crate::Error::tensor(format!(
            "{name} has {} values; {len} expected",
            v.len()
        )));
    }
    Ok(v)
}

#[inline(always)]
pub(super) fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = (x.iter().map(|&v| (v * v) as f64).sum::<f64>() / x.len() as f64) as f32;
    let scale = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * scale * w).collect()
}

/// A dot product of f16-valued vectors summed in llama.cpp's order (`ggml_vec_dot_f16` on
/// AVX2): four accumulators of eight lanes over blocks of 32, fused multiply-adds, then
/// the accumulators and lanes added pairwise; the rest one by one in f64.
#[inline(always)]
pub(super) fn dot_f16_order(x: &[f32], y: &[f32]) -> f32 {
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
pub(super) fn expf_ggml(x: f32) -> f32 {
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

/// One sequence's cached keys and values for one layer: `stride` f16 values per position
/// (every key head side by side; the same for values).
pub(super) struct Cache<'a> {
    pub(super) keys: &'a [f16],
    pub(super) values: &'a [f16],
    pub(super) stride: usize,
}

/// One query head's attention over the positions `0..scores.len()` of `cache`, its key and
/// value head starting at `at`: the scores `q·kₚ·scale` (summed in f16 order, as
/// `ggml_vec_dot_f16` sums them), then [`attend`].
pub(super) fn attend_head(
    q: &[f32],
    cache: &Cache,
    at: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    let mut k = vec![0f32; hd];
    for (p, sc) in scores.iter_mut().enumerate() {
        let kp = &cache.keys[p * cache.stride + at..p * cache.stride + at + hd];
        for (d, s) in k.iter_mut().zip(kp) {
            *d = s.to_f32();
        }
        *sc = dot_f16_order(q, &k) * scale;
    }
    attend(scores, cache.values, cache.stride, at, out);
}

/// The weighted sum of V for one head, as llama.cpp's CPU flash attention computes it: an
/// online softmax over `scores`, the running sum of V kept at f16 precision (rounded after
/// every step), divided by the softmax sum at the end. `values` holds one row of `stride`
/// values per position; the head's values start at `at`.
pub(super) fn attend(scores: &[f32], values: &[f16], stride: usize, at: usize, out: &mut [f32]) {
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
            *o = f16::from_f32(v.to_f32().mul_add(vs, *o)).to_f32();
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
pub(super) fn rope_cache(head_dim: usize, pos: usize, base: f32) -> Vec<(f32, f32)> {
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
pub(super) fn rope(x: &mut [f32], head_dim: usize, cache: &[(f32, f32)], neox: bool) {
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
