//! The input of a matrix product, as the weights' kernels take it.

use super::blocks::{Q8KBlock, quantize_q8k};
use super::q8::{Q8Block, quantize_q8};
use crate::quant::GgmlType;

/// The input of a matrix product: the values, or for quantised weights, the values
/// rounded to 8 bits per block of 32 (`q`, as Q4_1, Q5_0 and Q8_0 weights take them) or
/// 256 (`k`, as the K-quants take them).
pub(super) struct Activations {
    pub(super) x: Vec<f32>,
    pub(super) q: Vec<Q8Block>,
    pub(super) k: Vec<Q8KBlock>,
}

impl Activations {
    pub(super) fn new(ty: GgmlType, x: &[f32]) -> Self {
        let mut a = Activations {
            x: Vec::new(),
            q: Vec::new(),
            k: Vec::new(),
        };
        match ty {
            // The quantised kernels read only the 8-bit blocks.
            GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q5_0 => a.q = quantize_q8(x),
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => a.k = quantize_q8k(x),
            _ => a.x = x.to_vec(),
        }
        a
    }
}
