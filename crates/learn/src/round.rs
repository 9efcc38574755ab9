//! One round of federated training in the clear, as the aggregator's state machine and the
//! client's step, independent of any transport: the simulation feeds it messages in
//! process, the networked federation feeds it the same messages from peers.
//!
//! ```text
//!   aggregator: Round::open(round, global, selected) ──GlobalModel──▶ each selected client
//!   client:     client_update(GlobalModel, its rows) ──ClientUpdate──▶ Round::receive(from, …)
//!   aggregator: Round::close(strategy | central DP) ──▶ the combined delta
//! ```
//!
//! Under secure aggregation the updates travel through [`crate::secagg`] instead, and only
//! their sum reaches the aggregator. [`client`] holds the client's side after training
//! (how a delta is encoded), [`server`] the aggregator's side across rounds (selection,
//! secure rounds with deadlines, the rule, the accountant).

pub mod client;
pub mod server;

use std::collections::BTreeMap;

use crate::{
    Error, Result,
    data::Dataset,
    dp::{DpConfig, NoiseRng},
    model::ModelSpec,
    strategy::{Aggregator, Update, clip_l2},
    train::{self, TrainConfig},
    wire::{self, ClientUpdate, GlobalModel},
};

/// The aggregator's side of one round: who was asked, and what came back.
#[derive(Debug)]
pub struct Round {
    round: u32,
    dim: usize,
    selected: Vec<u32>,
    updates: BTreeMap<u32, Update>,
}

impl Round {
    /// Open round `round` from `global` for `selected` clients; returns the message to send
    /// each of them.
    pub fn open(round: u32, global: &[f32], selected: &[u32]) -> (Self, GlobalModel) {
        let mut selected = selected.to_vec();
        selected.sort_unstable();
        selected.dedup();
        (
            Round {
                round,
                dim: global.len(),
                selected,
                updates: BTreeMap::new(),
            },
            GlobalModel {
                round,
                params: wire::f32s_to_bytes(global),
            },
        )
    }

    /// Take client `from`'s update. Refused, changing nothing: a client that was not
    /// selected or already answered, another round, a vector of the wrong length or with a
    /// value that is not finite, zero examples.
    pub fn receive(&mut self, from: u32, m: &ClientUpdate) -> Result<()> {
        if self.selected.binary_search(&from).is_err() {
            return Err(Error::Wire(format!(
                "client {from} was not selected for round {}",
                self.round
            )));
        }
        if m.round != self.round {
            return Err(Error::Wire(format!(
                "client {from} sent an update for round {} in round {}",
                m.round, self.round
            )));
        }
        if self.updates.contains_key(&from) {
            return Err(Error::Wire(format!("client {from} answered twice")));
        }
        let delta = wire::bytes_to_f32s(&m.delta)?;
        if delta.len() != self.dim {
            return Err(Error::Wire(format!(
                "client {from} sent {} values; the model has {}",
                delta.len(),
                self.dim
            )));
        }
        if m.examples == 0 {
            return Err(Error::Wire(format!("client {from} trained on no examples")));
        }
        self.updates.insert(
            from,
            Update {
                delta,
                examples: m.examples as usize,
            },
        );
        Ok(())
    }

    /// Clients whose updates arrived.
    pub fn received(&self) -> Vec<u32> {
        self.updates.keys().copied().collect()
    }

    /// Close the round: the combined delta by `aggregator`'s rule, each update first
    /// clipped to `clip` if given. Errors when no update arrived.
    pub fn close(self, aggregator: &mut Aggregator, clip: Option<f32>) -> Result<Vec<f32>> {
        let (members, mut updates): (Vec<u32>, Vec<Update>) = self.updates.into_iter().unzip();
        if let Some(c) = clip {
            for u in &mut updates {
                clip_l2(&mut u.delta, c);
            }
        }
        aggregator.combine_members(&members, &updates, self.dim)
    }

    /// Close the round under central DP: every update clipped to `dp.clip`, summed, rounded
    /// to a grid of `dp.grid_scale()` points per unit, noised with a discrete Gaussian of
    /// σ = z·(C·s + √d) grid units, and divided by `expected`, the expected number of
    /// clients (a constant, so one client's presence moves the result by at most C/expected).
    /// With no update the result is noise alone, as DP requires.
    pub fn close_private(
        self,
        dp: &DpConfig,
        expected: f64,
        rng: &mut NoiseRng,
    ) -> Result<Vec<f32>> {
        dp.validate()?;
        if !(expected.is_finite() && expected > 0.0) {
            return Err(Error::Spec(format!(
                "expected clients {expected} must be > 0"
            )));
        }
        let scale = dp.grid_scale();
        let mut sum = vec![0f64; self.dim];
        for mut u in self.updates.into_values() {
            clip_l2(&mut u.delta, dp.clip as f32);
            for (s, d) in sum.iter_mut().zip(&u.delta) {
                *s += *d as f64;
            }
        }
        let mut grid: Vec<i64> = sum.iter().map(|s| (s * scale).round() as i64).collect();
        if let Some(g) = dp.sampler(self.dim, scale, 1)? {
            for x in &mut grid {
                *x += g.sample(rng);
            }
        }
        Ok(grid
            .iter()
            .map(|&x| (x as f64 / scale / expected) as f32)
            .collect())
    }
}

/// The client's step: train from the global model on `rows` of `data` and return the
/// delta (trained − global) and the examples trained on. Refuses a model of the wrong size.
pub fn client_update(
    spec: &ModelSpec,
    global: &GlobalModel,
    data: &Dataset,
    rows: &[usize],
    cfg: &TrainConfig,
    seed: u64,
) -> Result<(Vec<f32>, usize)> {
    let params = wire::bytes_to_f32s(&global.params)?;
    if params.len() != spec.num_params() {
        return Err(Error::Wire(format!(
            "the global model has {} values; {} expected",
            params.len(),
            spec.num_params()
        )));
    }
    let trained = train::train(spec, &params, data, rows, cfg, seed)?;
    let delta = trained
        .params
        .iter()
        .zip(&params)
        .map(|(p, g)| p - g)
        .collect();
    Ok((delta, trained.examples))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::strategy::Strategy;

    fn update(round: u32, delta: &[f32], examples: u64) -> ClientUpdate {
        ClientUpdate {
            round,
            examples,
            delta: wire::f32s_to_bytes(delta),
        }
    }

    #[test]
    fn a_round_takes_each_selected_client_once_and_averages() {
        let (mut r, msg) = Round::open(3, &[0.0, 0.0], &[7, 2, 7]);
        assert_eq!(msg.round, 3);
        r.receive(2, &update(3, &[1.0, 0.0], 1)).unwrap();
        // Not selected, wrong round, twice, wrong length, not finite, no examples.
        assert!(r.receive(5, &update(3, &[1.0, 0.0], 1)).is_err());
        assert!(r.receive(7, &update(4, &[1.0, 0.0], 1)).is_err());
        assert!(r.receive(2, &update(3, &[1.0, 0.0], 1)).is_err());
        assert!(r.receive(7, &update(3, &[1.0], 1)).is_err());
        assert!(r.receive(7, &update(3, &[f32::NAN, 0.0], 1)).is_err());
        assert!(r.receive(7, &update(3, &[0.0, 1.0], 0)).is_err());
        r.receive(7, &update(3, &[0.0, 4.0], 3)).unwrap();
        assert_eq!(r.received(), vec![2, 7]);
        let mean = r
            .close(&mut Aggregator::new(Strategy::FedAvg), None)
            .unwrap();
        assert_eq!(mean, vec![0.25, 3.0]);
        let (empty, _) = Round::open(1, &[0.0], &[1]);
        assert!(
            empty
                .close(&mut Aggregator::new(Strategy::FedAvg), None)
                .is_err()
        );
    }

    #[test]
    fn central_dp_clips_and_noises_with_the_stated_spread() {
        let dp = DpConfig {
            noise: 1.0,
            clip: 1.0,
            delta: 1e-5,
        };
        let dim = 4000;
        let (mut r, _) = Round::open(1, &vec![0.0; dim], &[1, 2]);
        let mut big = vec![0.0f32; dim];
        big[0] = 100.0;
        r.receive(1, &update(1, &big, 10)).unwrap();
        r.receive(2, &update(1, &big, 10)).unwrap();
        let out = r
            .close_private(&dp, 2.0, &mut NoiseRng::reproducible(1))
            .unwrap();
        // Clipped to 1 each: the mean of coordinate 0 is 1; noise std z·C/2 = 0.5 on the mean.
        assert!((out[0] - 1.0).abs() < 2.5, "{}", out[0]);
        let rest = &out[1..];
        let var = rest.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / rest.len() as f64;
        assert!((var.sqrt() - 0.5).abs() < 0.03, "sd {}", var.sqrt());
    }
}
