//! The client's side of a round, after training ([`super::client_update`]): how its delta
//! becomes what it sends. In the clear that is a [`ClientUpdate`]; under secure
//! aggregation it is a fixed-point vector for [`crate::secagg::Client::mask_input`],
//! clipped, weighted and noised as the round's [`SecureEncoding`] says. Every participant
//! derives the same encoding from public values, and the aggregator decodes the sum with
//! it. Randomness (the noise share) is an input: the client's [`NoiseRng`].

use crate::{
    Error, Result,
    dp::{DiscreteGaussian, DpConfig, NoiseRng},
    secagg::Quantizer,
    strategy::clip_l2,
    wire::{self, ClientUpdate},
};

/// A delta in the clear, as the client sends it.
pub fn plain_update(round: u32, delta: &[f32], examples: usize) -> ClientUpdate {
    ClientUpdate {
        round,
        examples: examples as u64,
        delta: wire::f32s_to_bytes(delta),
    }
}

/// How the clients of one secure round encode their deltas, and how the sum decodes.
///
/// - Without DP, each coordinate is clamped to `±range`, weighted by the client's example
///   count, and one more coordinate carries the weight, so the sum decodes to an
///   example-weighted mean (FedAvg).
/// - With DP, each delta is clipped to `C` and unweighted, and each client adds its share
///   of the discrete Gaussian noise on the grid before masking (distributed DP); the sum is
///   divided by the expected number of clients.
#[derive(Debug, Clone)]
pub struct SecureEncoding {
    quant: Quantizer,
    /// Without DP: the clamp range of each coordinate (weighted encoding).
    weighted_range: Option<f64>,
    /// With DP: the clipping norm.
    dp_clip: Option<f32>,
    /// With DP: each client's noise share.
    noise: Option<DiscreteGaussian>,
    /// With DP: the federation's settings (for the multiplier the shares add up to).
    dp: Option<DpConfig>,
    dim: usize,
}

impl SecureEncoding {
    /// The encoding of a round of `clients` participants over `dim` parameters. Without DP,
    /// each coordinate is clamped to `±range` and `max_weight` bounds any client's example
    /// count (the sum must not wrap); with DP, `expected` is the expected number of clients
    /// the noise is shared among.
    pub fn new(
        range: f64,
        dp: Option<&DpConfig>,
        dim: usize,
        clients: usize,
        max_weight: f64,
        expected: f64,
    ) -> Result<Self> {
        Ok(match dp {
            Some(dp) => {
                let margin = 20.0 * dp.noise * dp.clip * 1.01;
                let fit = Quantizer::for_sum(dp.clip, clients.max(1), margin)?;
                let scale = fit.scale.min(dp.grid_scale());
                SecureEncoding {
                    quant: Quantizer {
                        scale,
                        range: dp.clip,
                    },
                    weighted_range: None,
                    dp_clip: Some(dp.clip as f32),
                    noise: dp.sampler(dim, scale, expected.ceil().max(1.0) as usize)?,
                    dp: Some(*dp),
                    dim,
                }
            }
            None => SecureEncoding {
                quant: Quantizer::for_sum(range * max_weight, clients.max(1), 0.0)?,
                weighted_range: Some(range),
                dp_clip: None,
                noise: None,
                dp: None,
                dim,
            },
        })
    }

    /// Words each client masks: the parameters, plus the weight when weighted.
    pub fn len(&self) -> usize {
        self.dim + usize::from(self.weighted_range.is_some())
    }

    /// Whether the encoding holds no parameters.
    pub fn is_empty(&self) -> bool {
        self.dim == 0
    }

    /// The noise multiplier of a sum holding `shares` clients' noise shares (under DP; 0
    /// without): what the accountant is charged, whatever the expected count was.
    pub fn multiplier(&self, shares: usize) -> f64 {
        match &self.dp {
            Some(dp) => dp.multiplier(self.noise.as_ref(), shares, self.dim, self.quant.scale),
            None => 0.0,
        }
    }

    /// Encode one client's `delta` (trained on `examples` examples), first clipped to
    /// `clip` if the federation clips; `noise` draws the client's noise share under DP.
    pub fn encode(
        &self,
        mut delta: Vec<f32>,
        examples: usize,
        clip: Option<f32>,
        noise: &mut NoiseRng,
    ) -> Vec<u32> {
        if let Some(c) = clip {
            clip_l2(&mut delta, c);
        }
        let mut x: Vec<u32> = match (self.dp_clip, self.weighted_range) {
            (Some(c), _) => {
                clip_l2(&mut delta, c);
                self.quant.quantize(&delta)
            }
            (None, range) => {
                let r = range.unwrap_or(self.quant.range);
                let w = examples as f64;
                let mut x: Vec<u32> = delta
                    .iter()
                    .map(|&d| self.quant.quantize_one((d as f64).clamp(-r, r) * w))
                    .collect();
                x.push(self.quant.quantize_one(w));
                x
            }
        };
        if let Some(g) = &self.noise {
            g.add_to(&mut x, noise);
        }
        x
    }

    /// The mean delta from the unmasked `sum`: divided by the summed weight, or under DP
    /// by `expected` clients.
    pub fn mean(&self, sum: &[u32], expected: f64) -> Result<Vec<f32>> {
        if sum.len() != self.len() {
            return Err(Error::Spec(format!(
                "a sum of {} words for an encoding of {}",
                sum.len(),
                self.len()
            )));
        }
        let sum = self.quant.dequantize(sum);
        let denom = if self.weighted_range.is_some() {
            sum[self.dim]
        } else {
            expected
        };
        Ok(sum[..self.dim].iter().map(|s| (s / denom) as f32).collect())
    }
}
