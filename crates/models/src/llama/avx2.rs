//! The AVX2 + FMA + F16C kernels, written as ggml writes them (maddubs/madd lanes, FMA
//! accumulation) so results are bit for bit llama.cpp's. Every `unsafe` of the inference
//! engine is in this file: the SIMD loads, and the calls into code compiled for these
//! features, each made only after the CPU was found to have them ([`Features::detect`]).

/// activations multiplied in pairs (`maddubs`), summed to 32-bit lanes (`madd`), scaled and
/// accumulated in eight float lanes with FMA, and summed across lanes at the end of the row.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use half::f16;

use super::activations::Activations;
use super::blocks::{Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, Q8KBlock};
use super::ops::Cache;
use super::q8::Q8Block;
use crate::quant::GgmlType;

/// Proof that this CPU has AVX2, FMA and F16C: the only way to reach the code compiled
/// for them; and which integer dot-product instructions it has besides.
#[derive(Debug, Clone, Copy)]
pub(super) struct Features {
    vnni: Vnni,
}

/// The instructions that multiply bytes and sum them by fours in one step (`vpdpbusd`),
/// where the CPU has them: the same integers as AVX2's `maddubs` + `madd`, one instruction
/// instead of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Vnni {
    /// Neither: AVX2's two steps.
    No,
    /// AVX-512 VNNI on 256-bit registers (AVX-512 VL): Intel since Ice Lake, AMD since Zen 4.
    Avx512,
    /// AVX-VNNI (the VEX encoding): Intel since Alder Lake.
    Avx,
}

/// Work to run compiled for these features: its `run` is `#[inline(always)]`, so its body
/// (and what it inlines) is built inside [`Features::run`]'s AVX2/FMA/F16C function.
pub(super) trait Compiled {
    /// What the work gives.
    type Output;
    /// Do it.
    fn run(self) -> Self::Output;
}

impl Features {
    /// The features, if this CPU has all three, with the best dot-product instructions
    /// it has. `SOV_KERNELS=portable` (no SIMD kernels) or `SOV_KERNELS=avx2` (no VNNI)
    /// asks for less, to compare them; checked once.
    pub(super) fn detect() -> Option<Self> {
        static CHOSEN: std::sync::OnceLock<Option<Features>> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let best = Self::best()?;
            match std::env::var("SOV_KERNELS").as_deref() {
                Ok("portable") => None,
                Ok("avx2") => best.with_vnni(Vnni::No),
                _ => Some(best),
            }
        })
    }

    fn best() -> Option<Self> {
        let vnni = if std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("avx512vl")
        {
            Vnni::Avx512
        } else if std::is_x86_feature_detected!("avxvnni") {
            Vnni::Avx
        } else {
            Vnni::No
        };
        (std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c"))
        .then_some(Features { vnni })
    }

    /// Which dot-product instructions the kernels use.
    pub(super) fn vnni(self) -> Vnni {
        self.vnni
    }

    /// The same features, using the dot-product instructions `vnni` only if the CPU has
    /// them (tests compare each kind with the others).
    pub(super) fn with_vnni(self, vnni: Vnni) -> Option<Self> {
        let have = match vnni {
            Vnni::No => true,
            Vnni::Avx512 => {
                std::is_x86_feature_detected!("avx512vnni")
                    && std::is_x86_feature_detected!("avx512vl")
            }
            Vnni::Avx => std::is_x86_feature_detected!("avxvnni"),
        };
        have.then_some(Features { vnni })
    }

    /// Run `work` compiled for these features: the portable code, vectorised by the
    /// compiler for AVX2 (3.6× faster on an EPYC than the SSE2 baseline), and `mul_add`
    /// one instruction instead of a libm call; the same arithmetic either way.
    pub(super) fn run<C: Compiled>(self, work: C) -> C::Output {
        // SAFETY: a `Features` exists only when the CPU has AVX2, FMA and F16C, the
        // features `run_compiled` is built for.
        #[allow(unsafe_code)]
        unsafe {
            run_compiled(work)
        }
    }

    /// Whether [`Self::dot_rows`] has a kernel for weights of type `ty`.
    pub(super) fn has_kernel(ty: GgmlType) -> bool {
        matches!(
            ty,
            GgmlType::Q4_1
                | GgmlType::Q8_0
                | GgmlType::Q5_0
                | GgmlType::Q4K
                | GgmlType::Q5K
                | GgmlType::Q6K
        )
    }

    /// Rows of a matrix of type `ty` (`data`, `row_bytes` per row; one that
    /// [`Self::has_kernel`]) times each activation vector of `xs`, through the hand-written
    /// block kernels: each row is read once and used for every input while it sits in L1.
    /// `y[x·rows + i]` gets row `i` for input `x`.
    pub(super) fn dot_rows(
        self,
        ty: GgmlType,
        data: &[u8],
        row_bytes: usize,
        xs: &[Activations],
        y: &mut [f32],
    ) {
        let rows = data.len() / row_bytes;
        if matches!(ty, GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q5_0) {
            // Inputs four at a time: each block is unpacked once for all four.
            let qs: Vec<&[Q8Block]> = xs.iter().map(|a| a.q.as_slice()).collect();
            for (group, out) in qs.chunks(4).zip(y.chunks_mut(4 * rows)) {
                // SAFETY: as in `run`; and the VNNI kernels run only where `detect` or
                // `with_vnni` found their instructions.
                #[allow(unsafe_code)]
                unsafe {
                    let kernel = match ty {
                        GgmlType::Q4_1 => pick::<Q4_1>(self.vnni, group.len()),
                        GgmlType::Q8_0 => pick::<Q8_0>(self.vnni, group.len()),
                        _ => pick::<Q5_0>(self.vnni, group.len()),
                    };
                    kernel(data, row_bytes, group, out)
                }
            }
            return;
        }
        // SAFETY: as in `run`.
        #[allow(unsafe_code)]
        unsafe {
            dot_rows(ty, data, row_bytes, xs, y)
        }
    }

    /// One query head's attention over the f16 cache (see [`super::ops::attend_head`]),
    /// in ggml's lanes: the same values.
    pub(super) fn attend_head(
        self,
        q: &[f32],
        cache: &Cache,
        at: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        // SAFETY: as in `run`.
        #[allow(unsafe_code)]
        unsafe {
            attend_head(q, cache, at, scale, scores, out)
        }
    }

    /// Attention over the f16 cache (see [`super::ops::attend`]), in ggml's lanes.
    #[cfg(test)]
    pub(super) fn attend(
        self,
        scores: &[f32],
        values: &[f16],
        stride: usize,
        at: usize,
        out: &mut [f32],
    ) {
        // SAFETY: as in `run`.
        #[allow(unsafe_code)]
        unsafe {
            attend(scores, values, stride, at, out)
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn run_compiled<C: Compiled>(work: C) -> C::Output {
    work.run()
}

/// Rows of a Q4_K, Q5_K or Q6_K matrix times the inputs, four at a time (each block unpacked
/// once for all four).
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_rows(ty: GgmlType, data: &[u8], row_bytes: usize, xs: &[Activations], y: &mut [f32]) {
    let rows = data.len() / row_bytes;
    let ks: Vec<&[Q8KBlock]> = xs.iter().map(|a| a.k.as_slice()).collect();
    for (group, out) in ks.chunks(4).zip(y.chunks_mut(4 * rows)) {
        match (ty, group.len()) {
            (GgmlType::Q4K, 1) => k_rows::<Q4K, 1>(data, row_bytes, group, out),
            (GgmlType::Q4K, 2) => k_rows::<Q4K, 2>(data, row_bytes, group, out),
            (GgmlType::Q4K, 3) => k_rows::<Q4K, 3>(data, row_bytes, group, out),
            (GgmlType::Q4K, _) => k_rows::<Q4K, 4>(data, row_bytes, group, out),
            (GgmlType::Q5K, 1) => k_rows::<Q5K, 1>(data, row_bytes, group, out),
            (GgmlType::Q5K, 2) => k_rows::<Q5K, 2>(data, row_bytes, group, out),
            (GgmlType::Q5K, 3) => k_rows::<Q5K, 3>(data, row_bytes, group, out),
            (GgmlType::Q5K, _) => k_rows::<Q5K, 4>(data, row_bytes, group, out),
            (_, 1) => k_rows::<Q6K, 1>(data, row_bytes, group, out),
            (_, 2) => k_rows::<Q6K, 2>(data, row_bytes, group, out),
            (_, 3) => k_rows::<Q6K, 3>(data, row_bytes, group, out),
            (_, _) => k_rows::<Q6K, 4>(data, row_bytes, group, out),
        }
    }
}

/// [`k_rows`]' weight types.
const Q4K: u8 = 0;
const Q6K: u8 = 1;
const Q5K: u8 = 2;

/// Every row of a K-quant matrix times `N` inputs; `y[k·rows + i]` gets row `i` for input
/// `k`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k_rows<const T: u8, const N: usize>(
    data: &[u8],
    row_bytes: usize,
    xs: &[&[Q8KBlock]],
    y: &mut [f32],
) {
    let rows = data.len() / row_bytes;
    let Ok(xs) = <&[&[Q8KBlock]; N]>::try_from(xs) else {
        return;
    };
    for (i, row) in data.chunks_exact(row_bytes).enumerate() {
        let out = match T {
            Q4K => dot_q45_k::<false, N>(row, xs),
            Q5K => dot_q45_k::<true, N>(row, xs),
            _ => dot_q6_k::<N>(row, xs),
        };
        for (k, v) in out.into_iter().enumerate() {
            y[k * rows + i] = v;
        }
    }
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

/// Eight f16 values to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8h(v: &[f16; 8]) -> __m256 {
    // SAFETY: `v` is 8 readable f16 values (16 bytes: `f16` is a transparent `u16`), and an
    // unaligned load needs no alignment.
    #[allow(unsafe_code)]
    unsafe {
        _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().cast()))
    }
}

/// [`super::ops::dot_f16_order`] of `q` and f16 values `k` (of a length that is a multiple
/// of 32): four accumulators of eight lanes, then the same pairwise sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f16_32(q: &[f32], k: &[f16]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    for (qb, kb) in q.chunks_exact(32).zip(k.chunks_exact(32)) {
        for (j, a) in acc.iter_mut().enumerate() {
            if let (Ok(x), Ok(y)) = (
                <&[f32; 8]>::try_from(&qb[j * 8..j * 8 + 8]),
                <&[f16; 8]>::try_from(&kb[j * 8..j * 8 + 8]),
            ) {
                *a = _mm256_fmadd_ps(load8(x), load8h(y), *a);
            }
        }
    }
    let a0 = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
    // Lanes l + (l + 4), then (0 + 1) and (2 + 3), then the two.
    let t = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps::<1>(a0));
    let h = _mm_add_ps(t, _mm_movehdup_ps(t)); // [t0 + t1, _, t2 + t3, _]
    _mm_cvtss_f32(_mm_add_ss(h, _mm_movehl_ps(h, h)))
}

/// [`super::ops::attend_head`] in eight lanes; heads whose width is not a multiple of 32
/// take the portable scores.
#[target_feature(enable = "avx2,fma,f16c")]
fn attend_head(
    q: &[f32],
    cache: &Cache,
    at: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    if !hd.is_multiple_of(32) {
        return super::ops::attend_head(q, cache, at, scale, scores, out);
    }
    for (p, sc) in scores.iter_mut().enumerate() {
        let kp = &cache.keys[p * cache.stride + at..p * cache.stride + at + hd];
        *sc = dot_f16_32(q, kp) * scale;
    }
    attend(scores, cache.values, cache.stride, at, out);
}

/// [`super::ops::attend`] with eight lanes at a time (the same operations, so the same
/// values); heads whose width is not a multiple of 8 take the portable code.
#[target_feature(enable = "avx2,fma,f16c")]
fn attend(scores: &[f32], values: &[f16], stride: usize, at: usize, out: &mut [f32]) {
    let hd = out.len();
    if !hd.is_multiple_of(8) {
        return super::ops::attend(scores, values, stride, at, out);
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
            if let (Ok(o), Ok(v)) = (<&mut [f32; 8]>::try_from(o), <&[f16; 8]>::try_from(v)) {
                store8(o, f16_round(_mm256_fmadd_ps(load8h(v), k, load8(o))));
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

/// Eight 6-bit scales then eight minimums of a Q4_K/Q5_K block's 12 scale bytes, widened
/// to 16 bits (ggml's `utmp` unpacking).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mins_and_scales(b: &[u8]) -> __m256i {
    let w = |k: usize| u32::from_le_bytes([b[4 * k], b[1 + 4 * k], b[2 + 4 * k], b[3 + 4 * k]]);
    let (u0, u1, u2) = (w(0), w(1), w(2));
    let (m1, m2, m3) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
    let u3 = ((u2 >> 4) & m2) | (((u1 >> 6) & m3) << 4);
    let mins_hi = u1 & m1;
    let u1 = (u2 & m2) | (((u0 >> 6) & m3) << 4);
    let (u0, u2) = (u0 & m1, mins_hi);
    _mm256_cvtepu8_epi16(_mm_set_epi32(u3 as i32, u2 as i32, u1 as i32, u0 as i32))
}

/// One Q4_K (`FIVE` false) or Q5_K row times `N` Q8_K activation vectors: ggml's AVX2
/// `ggml_vec_dot_q4_K_q8_K` / `ggml_vec_dot_q5_K_q8_K` for each (the same lanes as
/// [`super::blocks::dot_q4_k`] and [`super::blocks::dot_q5_k`]: Q4_K sums its minimums in
/// four float lanes, Q5_K in one integer and a scalar), each block unpacked once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q45_k<const FIVE: bool, const N: usize>(row: &[u8], xs: &[&[Q8KBlock]; N]) -> [f32; N] {
    let m4 = _mm256_set1_epi8(0xF);
    let (block, values) = if FIVE {
        (Q5_K_BYTES, 48)
    } else {
        (Q4_K_BYTES, 16)
    };
    let mut acc = [_mm256_setzero_ps(); N];
    let mut acc_m = [_mm_setzero_ps(); N];
    let mut mins = [0f32; N];
    for (bi, b) in row.chunks_exact(block).enumerate() {
        let (xd, xmin) = f16x2(b);
        let ms = mins_and_scales(&b[4..16]);
        let mins16 = _mm256_extracti128_si256::<1>(ms);
        let sc = _mm256_extracti128_si256::<0>(ms);
        let scales = _mm256_set_m128i(sc, sc);
        let hbits = match <&[u8; 32]>::try_from(&b[16..48]) {
            Ok(qh) if FIVE => load32(qh),
            _ => _mm256_setzero_si256(),
        };
        // Q5_K's fifth bit `bit` of each byte, moved to 16.
        let fifth = |bit: usize| {
            let one = _mm256_and_si256(hbits, _mm256_set1_epi8(1 << bit));
            _mm256_slli_epi16::<4>(_mm256_srl_epi16(one, _mm_cvtsi32_si128(bit as i32)))
        };
        let mut sumi = [_mm256_setzero_si256(); N];
        for j in 0..4 {
            let Ok(q) = <&[u8; 32]>::try_from(&b[values + 32 * j..values + 32 * (j + 1)]) else {
                continue;
            };
            let scale_l = _mm256_shuffle_epi8(scales, _mm256_set1_epi16(k4_pair(2 * j)));
            let scale_h = _mm256_shuffle_epi8(scales, _mm256_set1_epi16(k4_pair(2 * j + 1)));
            let bits = load32(q);
            let mut ql = _mm256_and_si256(bits, m4);
            let mut qhi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
            if FIVE {
                ql = _mm256_add_epi8(ql, fifth(2 * j));
                qhi = _mm256_add_epi8(qhi, fifth(2 * j + 1));
            }
            for k in 0..N {
                let Some(y) = xs[k].get(bi) else { continue };
                let (Ok(lo), Ok(hi)) = (
                    <&[i8; 32]>::try_from(&y.q[64 * j..64 * j + 32]),
                    <&[i8; 32]>::try_from(&y.q[64 * j + 32..64 * (j + 1)]),
                ) else {
                    continue;
                };
                let pl = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(ql, load32(lo)));
                let ph = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(qhi, load32(hi)));
                sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(pl, ph));
            }
        }
        for k in 0..N {
            let Some(y) = xs[k].get(bi) else { continue };
            let bsums = load16i(&y.bsums);
            let q8s = _mm_hadd_epi16(
                _mm256_extracti128_si256::<0>(bsums),
                _mm256_extracti128_si256::<1>(bsums),
            );
            let prod = _mm_madd_epi16(mins16, q8s);
            if FIVE {
                let z = _mm_setzero_si128();
                let total = _mm_cvtsi128_si32(_mm_hadd_epi32(_mm_hadd_epi32(prod, z), z));
                mins[k] = (-y.d * xmin).mul_add(total as f32, mins[k]);
            } else {
                acc_m[k] = _mm_fmadd_ps(_mm_set1_ps(-y.d * xmin), _mm_cvtepi32_ps(prod), acc_m[k]);
            }
            acc[k] = _mm256_fmadd_ps(
                _mm256_set1_ps(y.d * xd),
                _mm256_cvtepi32_ps(sumi[k]),
                acc[k],
            );
        }
    }
    std::array::from_fn(|k| {
        if FIVE {
            return hsum(acc[k]) + mins[k];
        }
        let m = _mm_add_ps(acc_m[k], _mm_movehl_ps(acc_m[k], acc_m[k]));
        let m = _mm_add_ss(m, _mm_movehdup_ps(m));
        hsum(acc[k]) + _mm_cvtss_f32(m)
    })
}

/// The shuffle that spreads 16-bit scale `i` of a register to every 16-bit lane.
#[inline(always)]
fn k4_pair(i: usize) -> i16 {
    let lo = (2 * i) as i16;
    lo | ((lo + 1) << 8)
}

/// One Q6_K row times `N` Q8_K activation vectors: ggml's AVX2 `ggml_vec_dot_q6_K_q8_K`
/// for each (the same lanes as [`super::blocks::dot_q6_k`]), each block unpacked once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6_k<const N: usize>(row: &[u8], xs: &[&[Q8KBlock]; N]) -> [f32; N] {
    let m4 = _mm256_set1_epi8(0xF);
    let m2 = _mm256_set1_epi8(3);
    let m32s = _mm256_set1_epi8(32);
    let mut acc = [_mm256_setzero_ps(); N];
    for (bi, b) in row.chunks_exact(Q6_K_BYTES).enumerate() {
        let xd = f16x1(&b[208..210]);
        let Ok(sc) = <&[u8; 16]>::try_from(&b[192..208]) else {
            continue;
        };
        let scales = load16(sc);
        let mut sumi = [_mm256_setzero_si256(); N];
        for j in 0..2 {
            let (Ok(ql1), Ok(ql2), Ok(qh)) = (
                <&[u8; 32]>::try_from(&b[64 * j..64 * j + 32]),
                <&[u8; 32]>::try_from(&b[64 * j + 32..64 * (j + 1)]),
                <&[u8; 32]>::try_from(&b[128 + 32 * j..128 + 32 * (j + 1)]),
            ) else {
                continue;
            };
            let (q4bits1, q4bits2, q4bits_h) = (load32(ql1), load32(ql2), load32(qh));
            let high = |h: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(h, m2));
            let q = [
                _mm256_or_si256(_mm256_and_si256(q4bits1, m4), high(q4bits_h)),
                _mm256_or_si256(
                    _mm256_and_si256(q4bits2, m4),
                    high(_mm256_srli_epi16::<2>(q4bits_h)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q4bits1), m4),
                    high(_mm256_srli_epi16::<4>(q4bits_h)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q4bits2), m4),
                    high(_mm256_srli_epi16::<6>(q4bits_h)),
                ),
            ];
            for (part, q) in q.into_iter().enumerate() {
                // Scales 2·(4j + part) and the next, eight 16-bit lanes each.
                let s = (8 * j + 2 * part) as i8;
                let t = s + 1;
                let pick = _mm_set_epi8(t, t, t, t, t, t, t, t, s, s, s, s, s, s, s, s);
                let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick));
                let at = 128 * j + 32 * part;
                for k in 0..N {
                    let Some(y) = xs[k].get(bi) else { continue };
                    let Ok(x) = <&[i8; 32]>::try_from(&y.q[at..at + 32]) else {
                        continue;
                    };
                    let x = load32(x);
                    let p =
                        _mm256_sub_epi16(_mm256_maddubs_epi16(q, x), _mm256_maddubs_epi16(m32s, x));
                    sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(scale, p));
                }
            }
        }
        for k in 0..N {
            let Some(y) = xs[k].get(bi) else { continue };
            acc[k] = _mm256_fmadd_ps(
                _mm256_set1_ps(y.d * xd),
                _mm256_cvtepi32_ps(sumi[k]),
                acc[k],
            );
        }
    }
    std::array::from_fn(|k| hsum(acc[k]))
}

/// 16 signed 16-bit values into a register.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load16i(v: &[i16; 16]) -> __m256i {
    // SAFETY: `v` is 32 readable bytes, and an unaligned load needs no alignment.
    #[allow(unsafe_code)]
    unsafe {
        _mm256_loadu_si256(v.as_ptr().cast())
    }
}

/// u8 × i8 products summed by fours into eight 32-bit lanes: `maddubs` then `madd` (AVX2;
/// the 16-bit pair sums cannot saturate for these weights).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sum4_avx2(w: __m256i, x: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
}

/// The same sums in one instruction (AVX-512 VNNI on 256-bit registers).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
fn sum4_vnni512(w: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x)
}

/// The same sums in one instruction (AVX-VNNI).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn sum4_avxvnni(w: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x)
}

/// Rows of a Q4_1, Q8_0 or Q5_0 matrix times up to four inputs (Q8 blocks of 32), as
/// ggml's `ggml_vec_dot_q4_1_q8_1`, `…_q8_0_q8_0` and `…_q5_0_q8_0` compute each product:
/// per block, the integer sums in eight lanes, scaled by `d·dₓ` into eight float lanes
/// with FMA (and Q4_1's minimums in one scalar), the lanes added at the end of the row.
/// Each block is unpacked once for every input, and each input's arithmetic is what it
/// would be alone. One version per way of summing bytes by fours ([`Vnni`]), all giving
/// the same integers.
macro_rules! block_kernels {
    ($name:ident, $features:literal, $sum4:ident) => {
        #[target_feature(enable = $features)]
        fn $name<const T: u8, const N: usize>(
            data: &[u8],
            row_bytes: usize,
            xs: &[&[Q8Block]],
            y: &mut [f32],
        ) {
            let rows = data.len() / row_bytes;
            let Ok(xs) = <&[&[Q8Block]; N]>::try_from(xs) else {
                return;
            };
            let mask = _mm_set1_epi8(0x0F);
            // Q5_0's fifth bits, one per byte (ggml's `bytes_from_bits_32`).
            let spread = _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            );
            let bit = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
            let high = _mm256_set1_epi8(0xF0u8 as i8);
            for (i, row) in data.chunks_exact(row_bytes).enumerate() {
                let mut acc = [_mm256_setzero_ps(); N];
                let mut mins = [0f32; N];
                let block = match T {
                    Q4_1 => 20,
                    Q8_0 => 34,
                    _ => 22,
                };
                for (bi, b) in row.chunks_exact(block).enumerate() {
                    // The weights as unsigned bytes, and the signs to give the inputs.
                    let (d, m, w, sign) = match T {
                        Q4_1 => {
                            let (d, m) = f16x2(b);
                            let Ok(nibbles) = <&[u8; 16]>::try_from(&b[4..20]) else {
                                continue;
                            };
                            let qs = load16(nibbles);
                            let lo = _mm_and_si128(qs, mask);
                            let hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), mask);
                            (d, m, _mm256_set_m128i(hi, lo), None)
                        }
                        Q8_0 => {
                            let Ok(qs) = <&[u8; 32]>::try_from(&b[2..34]) else {
                                continue;
                            };
                            let w = load32(qs);
                            // |w| unsigned, and w's sign moved onto the input.
                            (f16x1(b), 0.0, _mm256_sign_epi8(w, w), Some(w))
                        }
                        _ => {
                            let Ok(nibbles) = <&[u8; 16]>::try_from(&b[6..22]) else {
                                continue;
                            };
                            let qs = load16(nibbles);
                            let lo = _mm_and_si128(qs, mask);
                            let hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), mask);
                            let qh = i32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                            let bits = _mm256_shuffle_epi8(_mm256_set1_epi32(qh), spread);
                            let bits = _mm256_cmpeq_epi8(
                                _mm256_or_si256(bits, bit),
                                _mm256_set1_epi64x(-1),
                            );
                            // Without its fifth bit a value is its nibble − 16.
                            let q = _mm256_or_si256(
                                _mm256_set_m128i(hi, lo),
                                _mm256_andnot_si256(bits, high),
                            );
                            (f16x1(b), 0.0, _mm256_sign_epi8(q, q), Some(q))
                        }
                    };
                    for k in 0..N {
                        let Some(xb) = xs[k].get(bi) else { continue };
                        let x = load32(&xb.q);
                        let x = match sign {
                            Some(s) => _mm256_sign_epi8(x, s),
                            None => x,
                        };
                        let p = _mm256_cvtepi32_ps($sum4(w, x));
                        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), p, acc[k]);
                        mins[k] = m.mul_add(xb.s, mins[k]);
                    }
                }
                for k in 0..N {
                    y[k * rows + i] = if T == Q4_1 {
                        hsum(acc[k]) + mins[k]
                    } else {
                        hsum(acc[k])
                    };
                }
            }
        }
    };
}

block_kernels!(blocks_avx2, "avx2,fma,f16c", sum4_avx2);
block_kernels!(
    blocks_vnni512,
    "avx2,fma,f16c,avx512vnni,avx512vl",
    sum4_vnni512
);
block_kernels!(blocks_avxvnni, "avx2,fma,f16c,avxvnni", sum4_avxvnni);

/// [`block_kernels`]' weight types.
const Q4_1: u8 = 0;
const Q8_0: u8 = 1;
const Q5_0: u8 = 2;

/// A block kernel, compiled for its features.
type BlockKernel = unsafe fn(&[u8], usize, &[&[Q8Block]], &mut [f32]);

/// The block kernel for weight type `T`, `n` inputs (1 to 4) and these instructions.
fn pick<const T: u8>(vnni: Vnni, n: usize) -> BlockKernel {
    match (vnni, n) {
        (Vnni::No, 1) => blocks_avx2::<T, 1>,
        (Vnni::No, 2) => blocks_avx2::<T, 2>,
        (Vnni::No, 3) => blocks_avx2::<T, 3>,
        (Vnni::No, _) => blocks_avx2::<T, 4>,
        (Vnni::Avx512, 1) => blocks_vnni512::<T, 1>,
        (Vnni::Avx512, 2) => blocks_vnni512::<T, 2>,
        (Vnni::Avx512, 3) => blocks_vnni512::<T, 3>,
        (Vnni::Avx512, _) => blocks_vnni512::<T, 4>,
        (Vnni::Avx, 1) => blocks_avxvnni::<T, 1>,
        (Vnni::Avx, 2) => blocks_avxvnni::<T, 2>,
        (Vnni::Avx, 3) => blocks_avxvnni::<T, 3>,
        (Vnni::Avx, _) => blocks_avxvnni::<T, 4>,
    }
}
