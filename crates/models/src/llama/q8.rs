//! Activations rounded to 8 bits per block of 32, as llama.cpp's quantised products take
//! them (GGML's Q8_1), and the exact integer dot product of two such blocks.

use half::f16;

/// One block of 32 activations rounded to 8 bits: `x ≈ d·q`, with `s = d·Σq` (both kept
/// at f16 precision, as GGML's Q8_1 stores them).
pub(super) struct Q8Block {
    pub(super) d: f32,
    pub(super) s: f32,
    pub(super) q: [i8; 32],
}

/// Round activations to 8 bits per block of 32 (llama.cpp's `quantize_row_q8_1`: scale
/// `max|x|/127`, round half to even).
#[inline(always)]
pub(super) fn quantize_q8(x: &[f32]) -> Vec<Q8Block> {
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

/// Round half to even for |v| ≤ 2²² (adding and removing 1.5·2²³ leaves the rounded
/// value in the current rounding mode, which is to nearest, ties to even); the same as
/// `round_ties_even`, without a libm call where SSE4.1 is not assumed.
#[inline(always)]
pub(super) fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³
    (v + MAGIC) - MAGIC
}

/// f16 → f32 for every bit pattern (256 KiB, built once): `half`'s conversion is done in
/// software unless the binary is built for F16C, and a model holds millions of block scales.
pub(super) fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|b| f16::from_bits(b).to_f32()).collect())
}

#[inline(always)]
pub(super) fn h(table: &[f32], lo: u8, hi: u8) -> f32 {
    table[u16::from_le_bytes([lo, hi]) as usize]
}

/// A deterministic xorshift stream of `n` words from `seed`, for the tests' inputs.
#[cfg(test)]
pub(super) fn xorshift(n: usize, seed: u32) -> impl Iterator<Item = u32> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n).map(move |_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    })
}

/// `n` deterministic bytes from `seed`, for the tests' inputs.
#[cfg(test)]
pub(super) fn test_bytes(n: usize, seed: u32) -> Vec<u8> {
    xorshift(n, seed).map(|x| (x >> 24) as u8).collect()
}
