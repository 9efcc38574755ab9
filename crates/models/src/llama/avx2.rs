//! The AVX2 + FMA + F16C kernels, written as ggml writes them (maddubs/madd lanes, FMA
//! accumulation) so results are bit for bit llama.cpp's. Every `unsafe` of the inference
//! engine is in this file: the SIMD loads, and the calls into code compiled for these
//! features, each made only after the CPU was found to have them ([`Features::detect`]).

/// activations multiplied in pairs (`maddubs`), summed to 32-bit lanes (`madd`), scaled and
/// accumulated in eight float lanes with FMA, and summed across lanes at the end of the row.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use std::ops::Range;

use super::{
    Llama, Session,
    qmatrix::{Activations, Q8Block, QMatrix},
};
use crate::{Result, quant::GgmlType};

/// Proof that this CPU has AVX2, FMA and F16C: the only way to reach the code compiled
/// for them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Features(());

impl Features {
    /// The features, if this CPU has all three (the standard library caches the check).
    pub(super) fn detect() -> Option<Self> {
        (std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c"))
        .then_some(Features(()))
    }

    /// Rows `rows` of `m·x` for each of `xs`, through the block kernels (see
    /// [`QMatrix::rows_batch`]).
    pub(super) fn rows(self, m: &QMatrix, xs: &[Activations], rows: Range<usize>, y: &mut [f32]) {
        // SAFETY: a `Features` exists only when the CPU has AVX2, FMA and F16C, the
        // features `matrix_rows` is compiled for.
        #[allow(unsafe_code)]
        unsafe {
            matrix_rows(m, xs, rows, y)
        }
    }

    /// The whole forward pass compiled for these features (so `mul_add` is one instruction,
    /// not a libm call); the same arithmetic as the portable build.
    pub(super) fn forward(self, l: &Llama, s: &mut Session, tokens: &[u32]) -> Result<Vec<f32>> {
        // SAFETY: as in `rows`.
        #[allow(unsafe_code)]
        unsafe {
            forward(l, s, tokens)
        }
    }

    /// Attention over the f16 cache (see [`super::ops::attend`]), in ggml's lanes.
    pub(super) fn attend(
        self,
        scores: &[f32],
        values: &[f32],
        stride: usize,
        at: usize,
        out: &mut [f32],
    ) {
        // SAFETY: as in `rows`.
        #[allow(unsafe_code)]
        unsafe {
            attend(scores, values, stride, at, out)
        }
    }
}

/// Q4_1 and Q8_0 rows through the block kernels below, each row read once and used for
/// every input while it sits in L1; the other types through the portable code, compiled
/// for these features.
#[target_feature(enable = "avx2,fma,f16c")]
fn matrix_rows(m: &QMatrix, xs: &[Activations], rows: Range<usize>, y: &mut [f32]) {
    let q4_1 = match m.ty {
        GgmlType::Q4_1 => true,
        GgmlType::Q8_0 => false,
        _ => return m.rows_portable(xs, rows, y),
    };
    let len = rows.len();
    let data = &m.data[rows.start * m.row_bytes..rows.end * m.row_bytes];
    for (i, row) in data.chunks_exact(m.row_bytes).enumerate() {
        for (x, a) in xs.iter().enumerate() {
            y[x * len + i] = if q4_1 {
                dot_q4_1(row, &a.q)
            } else {
                dot_q8_0(row, &a.q)
            };
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn forward(l: &Llama, s: &mut Session, tokens: &[u32]) -> Result<Vec<f32>> {
    l.forward_impl(s, tokens)
}

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
fn attend(scores: &[f32], values: &[f32], stride: usize, at: usize, out: &mut [f32]) {
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
fn dot_q4_1(row: &[u8], xq: &[Q8Block]) -> f32 {
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
fn dot_q8_0(row: &[u8], xq: &[Q8Block]) -> f32 {
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
