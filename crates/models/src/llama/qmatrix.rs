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
use super::kquant;
use super::q8::{dot_i8, f16_table, h};

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
            || a.k.len() * kquant::QK_K == self.cols));
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

    #[inline(always)]
    pub(super) fn rows_portable(&self, xs: &[Activations], rows: Range<usize>, y: &mut [f32]) {
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
            GgmlType::Q5_0 | GgmlType::Q4K | GgmlType::Q6K => {
                for (i, row) in data.chunks_exact(self.row_bytes).enumerate() {
                    for (x, a) in xs.iter().enumerate() {
                        y[x * len + i] = dot_other(self.ty, row, a, t);
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
    pub(super) fn rows_one(&self, a: &Activations, rows: Range<usize>, y: &mut [f32]) {
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
            GgmlType::Q5_0 | GgmlType::Q4K | GgmlType::Q6K => {
                for (yo, row) in y.iter_mut().zip(data.chunks_exact(self.row_bytes)) {
                    *yo = dot_other(self.ty, row, a, t);
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

/// One row of a Q5_0, Q4_K or Q6_K matrix times one input (the portable kernels).
#[inline(always)]
fn dot_other(ty: GgmlType, row: &[u8], a: &Activations, t: &[f32]) -> f32 {
    match ty {
        GgmlType::Q5_0 => kquant::dot_q5_0(row, &a.q, t),
        GgmlType::Q4K => kquant::dot_q4_k(row, &a.k, t),
        GgmlType::Q6K => kquant::dot_q6_k(row, &a.k, t),
        _ => f32::NAN,
    }
}

/// Round to f16 precision (llama.cpp keeps its KV cache in f16).
#[inline(always)]
pub(super) fn half(v: &mut [f32]) {
    for x in v {
        *x = f16::from_f32(*x).to_f32();
    }
}
