//! The portable block kernels: Q4_1, Q8_0 and Q5_0 weights times activations rounded to 8
//! bits per block of 32 (GGML's Q8_1/Q8_0), and the K-quants (Q4_K, Q6_K) times
//! activations rounded per block of 256 (GGML's Q8_K). Each is written in the lanes of
//! ggml's AVX2 kernel (eight 32-bit integer sums per
//! block, each scaled into its own float accumulator with a fused multiply-add, the lanes
//! added at the end in ggml's order), so it gives the same bits as they do, and as the
//! AVX2 versions in [`super::avx2`] do.

use super::q8::{Q8Block, h, round_even};
use crate::quant::scale_min_k4;

/// Values per K-quant block.
pub(super) const QK_K: usize = 256;
/// Bytes of one Q4_K block: f16 d, f16 dmin, 12 bytes of 6-bit scales and minimums, 128
/// bytes of 4-bit values.
pub(super) const Q4_K_BYTES: usize = 144;
/// Bytes of one Q5_K block: as Q4_K, with 32 bytes of fifth bits before the 4-bit values.
pub(super) const Q5_K_BYTES: usize = 176;
/// Bytes of one Q6_K block: 128 bytes of low 4 bits, 64 of high 2 bits, 16 i8 scales, f16 d.
pub(super) const Q6_K_BYTES: usize = 210;
/// Bytes of one Q5_0 block: f16 d, 32 fifth bits, 16 bytes of 4-bit values.
pub(super) const Q5_0_BYTES: usize = 22;

/// 256 activations rounded to 8 bits (`x ≈ d·q`) with the sums of each 16 (GGML's Q8_K).
pub(super) struct Q8KBlock {
    pub(super) d: f32,
    pub(super) q: [i8; QK_K],
    pub(super) bsums: [i16; 16],
}

/// Round activations to 8 bits per block of 256 as llama.cpp's `quantize_row_q8_K` does:
/// the value of largest magnitude becomes −127 exactly, the others round half to even.
pub(super) fn quantize_q8k(x: &[f32]) -> Vec<Q8KBlock> {
    x.chunks_exact(QK_K)
        .map(|c| {
            let mut b = Q8KBlock {
                d: 0.0,
                q: [0; QK_K],
                bsums: [0; 16],
            };
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in c {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                return b;
            }
            let iscale = -127.0 / max;
            for (o, &v) in b.q.iter_mut().zip(c) {
                *o = (round_even(iscale * v) as i32).min(127) as i8;
            }
            for (s, q) in b.bsums.iter_mut().zip(b.q.chunks_exact(16)) {
                *s = q.iter().map(|&v| v as i16).sum();
            }
            b.d = 1.0 / iscale;
            b
        })
        .collect()
}

/// Eight float lanes added as ggml's `hsum_float_8` adds them.
#[inline(always)]
pub(super) fn hsum8(a: &[f32; 8]) -> f32 {
    let r: [f32; 4] = std::array::from_fn(|k| a[4 + k] + a[k]);
    (r[0] + r[2]) + (r[1] + r[3])
}

/// The eight 6-bit scales and minimums of a Q4_K/Q5_K block (its 12 scale bytes).
#[inline(always)]
fn scales_mins(q: &[u8]) -> ([i32; 8], [i32; 8]) {
    let (mut sc, mut mn) = ([0i32; 8], [0i32; 8]);
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, q);
        sc[j] = s as i32;
        mn[j] = m as i32;
    }
    (sc, mn)
}

/// One Q4_K row times Q8_K activations (ggml's `ggml_vec_dot_q4_K_q8_K`, AVX2 lanes).
#[inline(always)]
pub(super) fn dot_q4_k(row: &[u8], xs: &[Q8KBlock], t: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut acc_m = [0f32; 4];
    for (b, y) in row.chunks_exact(Q4_K_BYTES).zip(xs) {
        let d = y.d * h(t, b[0], b[1]);
        let dmin = -y.d * h(t, b[2], b[3]);
        let (sc, mn) = scales_mins(&b[4..16]);
        // The minimums: Σ over sub-blocks of min · (Σ of its 32 activations), in 4 lanes.
        for (m, a) in acc_m.iter_mut().enumerate() {
            let s = |k: usize| y.bsums[2 * k] as i32 + y.bsums[2 * k + 1] as i32;
            let p = mn[2 * m] * s(2 * m) + mn[2 * m + 1] * s(2 * m + 1);
            *a = dmin.mul_add(p as f32, *a);
        }
        let mut sumi = [0i32; 8];
        for j in 0..4 {
            let q4 = &b[16 + 32 * j..16 + 32 * (j + 1)];
            let lo = &y.q[64 * j..64 * j + 32];
            let hi = &y.q[64 * j + 32..64 * (j + 1)];
            for (l, s) in sumi.iter_mut().enumerate() {
                let (mut pl, mut ph) = (0i32, 0i32);
                for k in 4 * l..4 * l + 4 {
                    pl += (q4[k] & 0xF) as i32 * lo[k] as i32;
                    ph += (q4[k] >> 4) as i32 * hi[k] as i32;
                }
                *s += sc[2 * j] * pl + sc[2 * j + 1] * ph;
            }
        }
        for (a, s) in acc.iter_mut().zip(sumi) {
            *a = d.mul_add(s as f32, *a);
        }
    }
    hsum8(&acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
}

/// One Q5_K row times Q8_K activations (ggml's `ggml_vec_dot_q5_K_q8_K`, AVX2 lanes; its
/// minimums summed to one integer per block and added in a scalar).
#[inline(always)]
pub(super) fn dot_q5_k(row: &[u8], xs: &[Q8KBlock], t: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut mins = 0f32;
    for (b, y) in row.chunks_exact(Q5_K_BYTES).zip(xs) {
        let d = y.d * h(t, b[0], b[1]);
        let dmin = -y.d * h(t, b[2], b[3]);
        let (sc, mn) = scales_mins(&b[4..16]);
        let m: i32 = (0..8)
            .map(|k| mn[k] * (y.bsums[2 * k] as i32 + y.bsums[2 * k + 1] as i32))
            .sum();
        mins = dmin.mul_add(m as f32, mins);
        let (qh, qs) = (&b[16..48], &b[48..176]);
        let mut sumi = [0i32; 8];
        for j in 0..4 {
            let q = &qs[32 * j..32 * (j + 1)];
            let lo = &y.q[64 * j..64 * j + 32];
            let hi = &y.q[64 * j + 32..64 * (j + 1)];
            for (l, s) in sumi.iter_mut().enumerate() {
                let (mut pl, mut ph) = (0i32, 0i32);
                for k in 4 * l..4 * l + 4 {
                    let bl = ((qh[k] >> (2 * j)) & 1) << 4;
                    let bh = ((qh[k] >> (2 * j + 1)) & 1) << 4;
                    pl += ((q[k] & 0xF) | bl) as i32 * lo[k] as i32;
                    ph += ((q[k] >> 4) | bh) as i32 * hi[k] as i32;
                }
                *s += sc[2 * j] * pl + sc[2 * j + 1] * ph;
            }
        }
        for (a, s) in acc.iter_mut().zip(sumi) {
            *a = d.mul_add(s as f32, *a);
        }
    }
    hsum8(&acc) + mins
}

/// One Q6_K row times Q8_K activations (ggml's `ggml_vec_dot_q6_K_q8_K`, AVX2 lanes).
#[inline(always)]
pub(super) fn dot_q6_k(row: &[u8], xs: &[Q8KBlock], t: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (b, y) in row.chunks_exact(Q6_K_BYTES).zip(xs) {
        let d = y.d * h(t, b[208], b[209]);
        let mut sumi = [0i32; 8];
        for j in 0..2 {
            let (ql, qh) = (
                &b[64 * j..64 * (j + 1)],
                &b[128 + 32 * j..128 + 32 * (j + 1)],
            );
            for part in 0..4 {
                let x = &y.q[128 * j + 32 * part..128 * j + 32 * (part + 1)];
                let scale = |k: usize| b[192 + 8 * j + 2 * part + k / 16] as i8 as i32;
                for (l, s) in sumi.iter_mut().enumerate() {
                    let mut p = 0i32;
                    for k in 4 * l..4 * l + 4 {
                        let low = match part {
                            0 => ql[k] & 0xF,
                            1 => ql[32 + k] & 0xF,
                            2 => ql[k] >> 4,
                            _ => ql[32 + k] >> 4,
                        };
                        let q = (low | (((qh[k] >> (2 * part)) & 3) << 4)) as i32 - 32;
                        p += q * x[k] as i32;
                    }
                    *s += scale(4 * l) * p;
                }
            }
        }
        for (a, s) in acc.iter_mut().zip(sumi) {
            *a = d.mul_add(s as f32, *a);
        }
    }
    hsum8(&acc)
}

/// One Q4_1 row times Q8_1 activations (ggml's `ggml_vec_dot_q4_1_q8_1`, AVX2 lanes).
#[inline(always)]
pub(super) fn dot_q4_1(row: &[u8], xs: &[Q8Block], t: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut mins = 0f32;
    for (b, y) in row.chunks_exact(20).zip(xs) {
        let (d, m) = (h(t, b[0], b[1]), h(t, b[2], b[3]));
        let qs = &b[4..20];
        let dx = d * y.d;
        for (l, a) in acc.iter_mut().enumerate() {
            let mut p = 0i32;
            for k in 4 * l..4 * l + 4 {
                let q = if k < 16 { qs[k] & 0xF } else { qs[k - 16] >> 4 };
                p += q as i32 * y.q[k] as i32;
            }
            *a = dx.mul_add(p as f32, *a);
        }
        mins = m.mul_add(y.s, mins);
    }
    hsum8(&acc) + mins
}

/// One Q8_0 row times Q8_0 activations (ggml's `ggml_vec_dot_q8_0_q8_0`, AVX2 lanes).
#[inline(always)]
pub(super) fn dot_q8_0(row: &[u8], xs: &[Q8Block], t: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (b, y) in row.chunks_exact(34).zip(xs) {
        let dx = h(t, b[0], b[1]) * y.d;
        for (l, a) in acc.iter_mut().enumerate() {
            let mut p = 0i32;
            for k in 4 * l..4 * l + 4 {
                p += b[2 + k] as i8 as i32 * y.q[k] as i32;
            }
            *a = dx.mul_add(p as f32, *a);
        }
    }
    hsum8(&acc)
}

/// One Q5_0 row times Q8_0 activations (ggml's `ggml_vec_dot_q5_0_q8_0`, AVX2 lanes).
#[inline(always)]
pub(super) fn dot_q5_0(row: &[u8], xs: &[Q8Block], t: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (b, y) in row.chunks_exact(Q5_0_BYTES).zip(xs) {
        let d = h(t, b[0], b[1]) * y.d;
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        for (l, a) in acc.iter_mut().enumerate() {
            let mut p = 0i32;
            for k in 4 * l..4 * l + 4 {
                let nibble = if k < 16 { qs[k] & 0xF } else { qs[k - 16] >> 4 };
                let q = (nibble | ((((qh >> k) & 1) as u8) << 4)) as i32 - 16;
                p += q * y.q[k] as i32;
            }
            *a = d.mul_add(p as f32, *a);
        }
    }
    hsum8(&acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{GgmlType, dequantize};

    use super::super::q8::test_bytes as bytes;

    /// Random blocks of `ty` with sane f16 scales (a small positive d, and dmin).
    fn blocks(ty: GgmlType, n: usize, seed: u32) -> Vec<u8> {
        let mut b = bytes(n * ty.block_bytes(), seed);
        let d = half::f16::from_f32(0.0123).to_le_bytes();
        let m = half::f16::from_f32(0.0071).to_le_bytes();
        for blk in b.chunks_exact_mut(ty.block_bytes()) {
            match ty {
                GgmlType::Q4K | GgmlType::Q5K => {
                    blk[..2].copy_from_slice(&d);
                    blk[2..4].copy_from_slice(&m);
                }
                GgmlType::Q6K => blk[208..].copy_from_slice(&d),
                _ => blk[..2].copy_from_slice(&d),
            }
        }
        b
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        bytes(n * 2, seed)
            .chunks_exact(2)
            .map(|c| (u16::from_le_bytes([c[0], c[1]]) as f32 / 65535.0 - 0.5) * 4.0)
            .collect()
    }

    #[test]
    fn q8k_rounds_as_ggml_does() {
        let mut x = values(512, 1);
        x[3] = -9.0; // the largest magnitude becomes −127 exactly, whatever its sign
        x[300] = 7.0;
        let q = quantize_q8k(&x);
        assert_eq!((q[0].q[3], q[1].q[44]), (-127, -127));
        assert!(q[0].d > 0.0 && q[1].d < 0.0);
        for (b, c) in q.iter().zip(x.chunks_exact(256)) {
            for (i, s) in b.bsums.iter().enumerate() {
                assert_eq!(
                    *s,
                    b.q[16 * i..16 * i + 16]
                        .iter()
                        .map(|&v| v as i16)
                        .sum::<i16>()
                );
            }
            for (q, v) in b.q.iter().zip(c) {
                assert!((*q as f32 * b.d - v).abs() <= b.d.abs() * 0.5 + 1e-6);
            }
        }
        assert!(quantize_q8k(&[0.0; 256])[0].q.iter().all(|&v| v == 0));
    }

    /// Each kernel against the f32 product of the dequantised row with the dequantised
    /// activations: equal up to float rounding (the integer parts are exact).
    #[test]
    fn the_kernels_give_the_dequantised_product() {
        let t = super::super::q8::f16_table();
        // Within float rounding of the sum of magnitudes.
        let close = |a: f32, w: &[f32], x: &[f64], what: &str| {
            let exact: f64 = w.iter().zip(x).map(|(a, b)| *a as f64 * b).sum();
            let size: f64 = w.iter().zip(x).map(|(a, b)| (*a as f64 * b).abs()).sum();
            assert!(
                ((a as f64) - exact).abs() <= 1e-5 * size,
                "{what}: {a} vs {exact}"
            );
        };
        for seed in 1..6 {
            let x = values(1024, 100 + seed);
            let xk = quantize_q8k(&x);
            let xk_deq: Vec<f64> = xk
                .iter()
                .flat_map(|b| b.q.iter().map(move |&q| q as f64 * b.d as f64))
                .collect();
            for (ty, f) in [
                (
                    GgmlType::Q4K,
                    dot_q4_k as fn(&[u8], &[Q8KBlock], &[f32]) -> f32,
                ),
                (GgmlType::Q5K, dot_q5_k),
                (GgmlType::Q6K, dot_q6_k),
            ] {
                let row = blocks(ty, 4, seed);
                let w = dequantize(ty, &row).unwrap();
                close(f(&row, &xk, t), &w, &xk_deq, &format!("{ty:?}"));
            }
            let x8 = super::super::q8::quantize_q8(&x);
            let x8_deq: Vec<f64> = x8
                .iter()
                .flat_map(|b| b.q.iter().map(move |&q| q as f64 * b.d as f64))
                .collect();
            let row = blocks(GgmlType::Q5_0, 32, seed);
            let w = dequantize(GgmlType::Q5_0, &row).unwrap();
            close(dot_q5_0(&row, &x8, t), &w, &x8_deq, "Q5_0");
        }
    }
}
