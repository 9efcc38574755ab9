//! Quantised weight matrices kept as they are in the file, the 8-bit activations their
//! products take, and the matrix–vector products block by block (portable code, or the
//! AVX2 kernels of [`super::avx2`] when the CPU has them).

use std::ops::Range;

use half::f16;

use crate::{
    Result,
    gguf::Gguf,
    quant::{self, GgmlType},
};

pub(super) use super::activations::Activations;
#[cfg(target_arch = "x86_64")]
use super::avx2::{self, Compiled};
use super::blocks;
use super::q8::f16_table;

/// A weight matrix kept in its file type: `rows` rows of `cols` values, each row a whole
/// number of blocks.
#[derive(Debug, Clone)]
pub struct QMatrix {
    pub(super) ty: GgmlType,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_bytes: usize,
    pub(super) data: Vec<u8>,
}

impl QMatrix {
    pub(super) fn from_gguf(
        g: &Gguf,
        bytes: &[u8],
        name: &str,
        cols: usize,
        rows: usize,
    ) -> Result<Self> {
        let t = g
            .tensor(name)
            .ok_or_else(|| crate::Error::tensor(format!("no tensor {name}")))?;
        let shape_ok = t.dims.first() == Some(&(cols as u64))
            && t.dims.iter().skip(1).product::<u64>() == rows as u64;
        if !shape_ok {
            return Err(crate::Error::tensor(format!(
                "{name} is {:?}; {cols} × {rows} expected",
                t.dims
            )));
        }
        if !t.ty.decodable() {
            return Err(crate::Error::tensor(format!(
                "{name} is {:?}, not decodable yet",
                t.ty
            )));
        }
        let row_bytes =
            t.ty.bytes_for(cols as u64)
                .ok_or_else(|| crate::Error::tensor(format!("{name}: rows are not whole blocks")))?
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
            return Err(crate::Error::tensor(format!("row {r} of {}", self.rows)));
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
    pub(super) fn rows_into(&self, a: &Activations, rows: Range<usize>, y: &mut [f32]) {
        self.rows_batch(std::slice::from_ref(a), rows, y);
    }

    /// Rows `rows` of `W·xₜ` for each input `xₜ`, into `y` token by token
    /// (`y[t·len + i]` is row `rows.start + i` for input `t`). Each weight row is read once
    /// for all inputs, and every value is the same as a single product would give.
    ///
    /// On x86-64 CPUs with AVX2, FMA and F16C (detected at run time) the same code runs
    /// compiled for them: the compiler vectorises the fixed-size block loops (3.6× faster on
    /// this machine's EPYC than the SSE2 baseline).
    pub(super) fn rows_batch(&self, xs: &[Activations], rows: Range<usize>, y: &mut [f32]) {
        debug_assert!(xs.iter().all(|a| a.x.len() == self.cols
            || a.q.len() * 32 == self.cols
            || a.k.len() * blocks::QK_K == self.cols));
        #[cfg(target_arch = "x86_64")]
        if let Some(f) = avx2::Features::detect() {
            if avx2::Features::has_kernel(self.ty) {
                let data = &self.data[rows.start * self.row_bytes..rows.end * self.row_bytes];
                f.dot_rows(self.ty, data, self.row_bytes, xs, y);
            } else {
                f.run(Portable {
                    m: self,
                    xs,
                    rows,
                    y,
                });
            }
            return;
        }
        self.rows_portable(xs, rows, y);
    }

    /// The portable kernels ([`blocks`]), in the lanes of the AVX2 ones: the same bits.
    #[inline(always)]
    pub(super) fn rows_portable(&self, xs: &[Activations], rows: Range<usize>, y: &mut [f32]) {
        let len = rows.len();
        debug_assert_eq!(y.len(), len * xs.len());
        let data = &self.data[rows.start * self.row_bytes..rows.end * self.row_bytes];
        let t = f16_table();
        let dot: Option<RowDot> = match self.ty {
            GgmlType::Q4_1 => Some(|r, a, t| blocks::dot_q4_1(r, &a.q, t)),
            GgmlType::Q8_0 => Some(|r, a, t| blocks::dot_q8_0(r, &a.q, t)),
            GgmlType::Q5_0 => Some(|r, a, t| blocks::dot_q5_0(r, &a.q, t)),
            GgmlType::Q4K => Some(|r, a, t| blocks::dot_q4_k(r, &a.k, t)),
            GgmlType::Q5K => Some(|r, a, t| blocks::dot_q5_k(r, &a.k, t)),
            GgmlType::Q6K => Some(|r, a, t| blocks::dot_q6_k(r, &a.k, t)),
            _ => None,
        };
        for (i, r) in rows.enumerate() {
            match dot {
                Some(dot) => {
                    let row = &data[i * self.row_bytes..(i + 1) * self.row_bytes];
                    for (x, a) in xs.iter().enumerate() {
                        y[x * len + i] = dot(row, a, t);
                    }
                }
                None => {
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

/// One row times one input, given the f16 table.
type RowDot = fn(&[u8], &Activations, &[f32]) -> f32;

/// The portable rows of a product, run compiled for AVX2 (see [`avx2::Compiled`]).
#[cfg(target_arch = "x86_64")]
struct Portable<'a> {
    m: &'a QMatrix,
    xs: &'a [Activations],
    rows: Range<usize>,
    y: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl Compiled for Portable<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        self.m.rows_portable(self.xs, self.rows, self.y)
    }
}

/// Round to f16 precision (llama.cpp keeps its KV cache in f16).
#[inline(always)]
pub(super) fn half(v: &mut [f32]) {
    for x in v {
        *x = f16::from_f32(*x).to_f32();
    }
}
