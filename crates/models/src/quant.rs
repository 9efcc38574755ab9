//! GGML tensor types: their block layouts and dequantisation to f32, as
//! `ggml-quants.c` defines them (checked against PyPI `gguf==0.19.0`'s numpy reference in
//! `tests/gguf.rs`).
//!
//! | type | block (values) | bytes | layout |
//! |---|---|---|---|
//! | F32 / F16 / BF16 | 1 | 4 / 2 / 2 | the value |
//! | Q4_0 | 32 | 18 | f16 d, 16 bytes of 4-bit q: x = (q − 8)·d |
//! | Q4_1 | 32 | 20 | f16 d, f16 m, 4-bit q: x = q·d + m |
//! | Q5_0 | 32 | 22 | f16 d, 32 high bits, 4-bit low: x = (q − 16)·d |
//! | Q5_1 | 32 | 24 | f16 d, f16 m, 32 high bits, 4-bit low: x = q·d + m |
//! | Q8_0 | 32 | 34 | f16 d, 32 × i8: x = q·d |
//! | Q4_K | 256 | 144 | f16 d, f16 dmin, 12 bytes of 6-bit scales and mins (8 sub-blocks of 32), 4-bit q |
//! | Q5_K | 256 | 176 | as Q4_K, plus 32 bytes of fifth bits |
//! | Q6_K | 256 | 210 | 128 bytes low 4 bits, 64 bytes high 2 bits, 16 × i8 scales, f16 d: x = d·scale·(q − 32) |

use half::{bf16, f16};

use crate::{Error, Result};

/// A GGML tensor type, by its number in the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// 4-bit, 32 per block, symmetric.
    Q4_0,
    /// 4-bit, 32 per block, with a minimum.
    Q4_1,
    /// 5-bit, 32 per block, symmetric.
    Q5_0,
    /// 5-bit, 32 per block, with a minimum.
    Q5_1,
    /// 8-bit, 32 per block.
    Q8_0,
    /// 8-bit with block sums (activations only).
    Q8_1,
    /// 2-bit K-quant.
    Q2K,
    /// 3-bit K-quant.
    Q3K,
    /// 4-bit K-quant.
    Q4K,
    /// 5-bit K-quant.
    Q5K,
    /// 6-bit K-quant.
    Q6K,
    /// 8-bit K-quant (activations only).
    Q8K,
    /// bfloat16.
    Bf16,
}

impl GgmlType {
    /// The type with file-format number `id`; `None` for types sov does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            30 => GgmlType::Bf16,
            _ => return None,
        })
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q8_1 => 32,
            GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::Q8K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::Bf16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q8_1 => 36,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            GgmlType::Q8K => 292,
        }
    }

    /// Bytes that `n` values take; `None` if `n` is not a whole number of blocks or the
    /// size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let b = self.block_len() as u64;
        if !n.is_multiple_of(b) {
            return None;
        }
        (n / b).checked_mul(self.block_bytes() as u64)
    }

    /// Whether [`dequantize`] decodes this type.
    pub fn decodable(self) -> bool {
        !matches!(
            self,
            GgmlType::Q8_1 | GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q8K
        )
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decode `data`, a whole number of blocks of type `ty`, to f32 values.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>> {
    let bb = ty.block_bytes();
    if !data.len().is_multiple_of(bb) {
        return Err(Error::Tensor(format!(
            "{} bytes are not a whole number of {ty:?} blocks ({bb} bytes each)",
            data.len()
        )));
    }
    let mut out = Vec::with_capacity(data.len() / bb * ty.block_len());
    let blocks = data.chunks_exact(bb);
    match ty {
        GgmlType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(|c| f16_at(c, 0))),
        GgmlType::Bf16 => out.extend(
            data.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q4_0 => {
            for b in blocks {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|q| ((q & 0xF) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let with_min = ty == GgmlType::Q5_1;
            for b in blocks {
                let d = f16_at(b, 0);
                let (m, at) = if with_min {
                    (f16_at(b, 2), 4)
                } else {
                    (0.0, 2)
                };
                let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                let qs = &b[at + 4..at + 20];
                let offset = if with_min { 0 } else { 16 };
                let value = |low: u8, high_bit: u32| {
                    let q = (low as u32 | (high_bit << 4)) as i32 - offset;
                    q as f32 * d + m
                };
                out.extend(
                    qs.iter()
                        .enumerate()
                        .map(|(j, q)| value(q & 0xF, (qh >> j) & 1)),
                );
                out.extend(
                    qs.iter()
                        .enumerate()
                        .map(|(j, q)| value(q >> 4, (qh >> (j + 16)) & 1)),
                );
            }
        }
        GgmlType::Q8_0 => {
            for b in blocks {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let five = ty == GgmlType::Q5K;
            for b in blocks {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let (qh, qs) = if five {
                    (&b[16..48], &b[48..176])
                } else {
                    (&b[0..0], &b[16..144])
                };
                for (j, q) in qs.chunks_exact(32).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
                    let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                    let high = |l: usize, bit: u8| -> f32 {
                        if five && qh[l] & bit != 0 { 16.0 } else { 0.0 }
                    };
                    out.extend((0..32).map(|l| d1 * ((q[l] & 0xF) as f32 + high(l, u1)) - min1));
                    out.extend((0..32).map(|l| d2 * ((q[l] >> 4) as f32 + high(l, u2)) - min2));
                }
            }
        }
        GgmlType::Q6K => {
            for b in blocks {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let (ql, qh, sc) = (
                        &ql[64 * half..64 * half + 64],
                        &qh[32 * half..32 * half + 32],
                        &sc[8 * half..8 * half + 8],
                    );
                    let mut y = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8 as f32) * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8 as f32) * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8 as f32) * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8 as f32) * q4 as f32;
                    }
                    out.extend_from_slice(&y);
                }
            }
        }
        GgmlType::Q8_1 | GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q8K => {
            return Err(Error::Tensor(format!(
                "{ty:?} tensors are not decoded by sov yet"
            )));
        }
    }
    Ok(out)
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K/Q5_K block.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sizes_and_bad_lengths() {
        assert_eq!(GgmlType::Q4K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_0.bytes_for(33), None);
        assert_eq!(GgmlType::from_id(5), None);
        assert!(dequantize(GgmlType::Q8_0, &[0; 33]).is_err());
        assert!(dequantize(GgmlType::Q2K, &[0; 84]).is_err());
        // Q8_0: d = 1.0 (0x3C00), values −128..127 come back as themselves.
        let mut b = vec![0x00, 0x3C];
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &b).unwrap();
        assert_eq!(v[0], -16.0);
        assert_eq!(v[31], 15.0);
    }
}
