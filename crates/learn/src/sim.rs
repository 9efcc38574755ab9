//! Simulation: N clients in one process, through the same round code a federation runs.
//! Clients train in parallel on the rayon pool the caller installs; every random choice
//! (selection, dropouts, malicious clients, shuffles, noise) comes from the seed.
//!
//! A round: the aggregator sends the global model to the selected clients; each trains,
//! and (unless it drops out) sends its update; malicious clients tamper with theirs;
//! updates are clipped if asked; the strategy combines them; the new global model is
//! evaluated on the test set.

use rand::{RngExt, SeedableRng, rngs::StdRng, seq::SliceRandom};
use rayon::prelude::*;

use crate::{
    Error, Result,
    attack::{self, Attack},
    data::Split,
    model::{Arch, ModelSpec},
    strategy::{Aggregator, Strategy, Update, clip_l2},
    train::{self, TrainConfig},
    wire::{self, ClientUpdate, GlobalModel},
};

/// Everything a simulation needs besides the data.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The architecture.
    pub model: Arch,
    /// Rounds to run.
    pub rounds: usize,
    /// Share of clients selected per round (at least one is).
    pub fraction: f64,
    /// Local training.
    pub train: TrainConfig,
    /// The aggregation rule.
    pub strategy: Strategy,
    /// Chance that a selected client drops out before sending its update.
    pub dropout: f64,
    /// Clip every update to this L2 norm.
    pub clip: Option<f32>,
    /// Share of clients that are malicious, and what they do.
    pub malicious: f64,
    /// The attack of the malicious clients.
    pub attack: Option<Attack>,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            model: Arch::Mlp(vec![64]),
            rounds: 50,
            fraction: 1.0,
            train: TrainConfig::default(),
            strategy: Strategy::FedAvg,
            dropout: 0.0,
            clip: None,
            malicious: 0.0,
            attack: None,
            seed: 0,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RoundReport {
    /// 1-based round number.
    pub round: usize,
    /// Test accuracy of the new global model.
    pub accuracy: f32,
    /// Its mean test loss.
    pub loss: f32,
    /// Clients selected.
    pub clients: usize,
    /// Selected clients that dropped out.
    pub dropped: usize,
    /// Bytes sent by clients (serialised messages).
    pub bytes_up: u64,
    /// Bytes sent to clients.
    pub bytes_down: u64,
    /// With the backdoor attack: the share of triggered test inputs sent to the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backdoor: Option<f32>,
}

/// A running simulation.
pub struct Simulation<'a> {
    cfg: SimConfig,
    spec: ModelSpec,
    data: &'a Split,
    parts: &'a [Vec<usize>],
    malicious: Vec<bool>,
    aggregator: Aggregator,
    global: Vec<f32>,
    round: usize,
}

impl<'a> Simulation<'a> {
    /// Set up a simulation of `cfg` on `data`, with client `i` holding `parts[i]` (rows of
    /// `data.train`).
    pub fn new(cfg: SimConfig, data: &'a Split, parts: &'a [Vec<usize>]) -> Result<Self> {
        cfg.train.validate()?;
        if parts.is_empty() || parts.iter().any(Vec::is_empty) {
            return Err(Error::Spec("every client needs at least one row".into()));
        }
        if !(cfg.fraction > 0.0 && cfg.fraction <= 1.0) {
            return Err(Error::Spec(format!(
                "fraction {} must be in (0, 1]",
                cfg.fraction
            )));
        }
        for (what, p) in [("dropout", cfg.dropout), ("malicious", cfg.malicious)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::Spec(format!("{what} {p} must be in [0, 1]")));
            }
        }
        if let Some(c) = cfg.clip
            && !(c.is_finite() && c > 0.0)
        {
            return Err(Error::Spec(format!("clipping norm {c} must be > 0")));
        }
        if cfg.malicious > 0.0 && cfg.attack.is_none() {
            return Err(Error::Spec("malicious clients need an attack".into()));
        }
        let spec = ModelSpec::new(cfg.model.clone(), data.train.shape, data.train.classes)?;
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x6d61_6c69);
        let n_bad = (cfg.malicious * parts.len() as f64).round() as usize;
        let mut order: Vec<usize> = (0..parts.len()).collect();
        order.shuffle(&mut rng);
        let mut malicious = vec![false; parts.len()];
        for &i in &order[..n_bad] {
            malicious[i] = true;
        }
        let global = spec.init(cfg.seed);
        Ok(Simulation {
            aggregator: Aggregator::new(cfg.strategy),
            cfg,
            spec,
            data,
            parts,
            malicious,
            global,
            round: 0,
        })
    }

    /// The model spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The current global parameters.
    pub fn global(&self) -> &[f32] {
        &self.global
    }

    /// Which clients are malicious.
    pub fn malicious(&self) -> &[bool] {
        &self.malicious
    }

    /// Test loss and accuracy of the current global model.
    pub fn evaluate(&self) -> Result<(f32, f32)> {
        train::evaluate(&self.spec, &self.global, &self.data.test)
    }

    /// Run the next round.
    pub fn round(&mut self) -> Result<RoundReport> {
        self.round += 1;
        let round = self.round;
        let n = self.parts.len();
        let mut rng = StdRng::seed_from_u64(self.cfg.seed.wrapping_mul(0x9e37_79b9) ^ round as u64);
        let k = ((self.cfg.fraction * n as f64).round() as usize).clamp(1, n);
        let mut selected = rand::seq::index::sample(&mut rng, n, k).into_vec();
        selected.sort_unstable();
        let dropped: Vec<bool> = selected
            .iter()
            .map(|_| rng.random_bool(self.cfg.dropout))
            .collect();

        let down = wire::encode(&GlobalModel {
            round: round as u32,
            params: wire::f32s_to_bytes(&self.global),
        })?;

        let mut cfg = self.cfg.train.clone();
        cfg.prox_mu = self.cfg.strategy.prox_mu();
        let jobs: Vec<(usize, bool)> = selected
            .iter()
            .zip(&dropped)
            .filter(|(_, d)| !**d)
            .map(|(&c, _)| (c, self.malicious[c]))
            .collect();
        let survivors = jobs.len();
        let seed = self.cfg.seed;
        let (spec, data, parts, global) = (&self.spec, self.data, self.parts, &self.global);
        let attack = self.cfg.attack;
        let clip = self.cfg.clip;
        let results: Vec<Result<(Update, u64)>> = jobs
            .par_iter()
            .map(|&(c, bad)| {
                let client_seed = seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(1000 * round as u64 + c as u64);
                let poisoned = match (bad, attack) {
                    (true, Some(a)) => a.poison(&data.train, &parts[c])?,
                    _ => None,
                };
                let trained = match &poisoned {
                    Some(d) => {
                        let rows: Vec<usize> = (0..d.len()).collect();
                        train::train(spec, global, d, &rows, &cfg, client_seed)?
                    }
                    None => train::train(spec, global, &data.train, &parts[c], &cfg, client_seed)?,
                };
                let mut delta: Vec<f32> = trained
                    .params
                    .iter()
                    .zip(global)
                    .map(|(p, g)| p - g)
                    .collect();
                if let (true, Some(a)) = (bad, attack) {
                    let mut r = StdRng::seed_from_u64(client_seed ^ 0xa77a);
                    a.tamper(&mut delta, survivors, &mut r);
                }
                let up = wire::encode(&ClientUpdate {
                    round: round as u32,
                    examples: parts[c].len() as u64,
                    delta: wire::f32s_to_bytes(&delta),
                })?;
                if let Some(c) = clip {
                    clip_l2(&mut delta, c);
                }
                Ok((
                    Update {
                        delta,
                        examples: trained.examples,
                    },
                    up.len() as u64,
                ))
            })
            .collect();
        let mut updates = Vec::with_capacity(results.len());
        let mut bytes_up = 0;
        for r in results {
            let (u, b) = r?;
            bytes_up += b;
            updates.push(u);
        }
        if !updates.is_empty() {
            self.aggregator.apply(&mut self.global, &updates)?;
        }
        let (loss, accuracy) = self.evaluate()?;
        let backdoor =
            match attack {
                Some(Attack::Backdoor) if self.cfg.malicious > 0.0 => Some(
                    attack::backdoor_success(&self.spec, &self.global, &self.data.test)?,
                ),
                _ => None,
            };
        Ok(RoundReport {
            round,
            accuracy,
            loss,
            clients: k,
            dropped: k - survivors,
            bytes_up,
            bytes_down: down.len() as u64 * k as u64,
            backdoor,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{data, partition::SplitFile};

    fn flower10() -> (Split, Vec<Vec<usize>>) {
        let f = SplitFile::parse(include_bytes!("../fixtures/flower-split-10.json")).unwrap();
        f.apply(&data::digits().unwrap()).unwrap()
    }

    #[test]
    fn fedavg_on_flowers_split_learns_and_replays() {
        let (split, parts) = flower10();
        let cfg = SimConfig {
            rounds: 3,
            ..SimConfig::default()
        };
        let mut sim = Simulation::new(cfg.clone(), &split, &parts).unwrap();
        let mut last = None;
        for _ in 0..3 {
            last = Some(sim.round().unwrap());
        }
        let last = last.unwrap();
        assert!(last.accuracy > 0.7, "{last:?}");
        assert_eq!(last.clients, 10);
        assert_eq!(last.dropped, 0);
        // 4,810 f32 values each way per client, plus a small envelope.
        assert!(last.bytes_down > 10 * 19_240 && last.bytes_down < 10 * 19_400);
        assert!(last.bytes_up > 10 * 19_240 && last.bytes_up < 10 * 19_400);
        let mut again = Simulation::new(cfg, &split, &parts).unwrap();
        for _ in 0..3 {
            again.round().unwrap();
        }
        assert_eq!(again.global(), sim.global(), "a seed replays exactly");
    }

    #[test]
    fn dropouts_and_fractions_are_counted() {
        let (split, parts) = flower10();
        let cfg = SimConfig {
            fraction: 0.5,
            dropout: 0.4,
            train: TrainConfig {
                epochs: 1,
                ..TrainConfig::default()
            },
            seed: 5,
            ..SimConfig::default()
        };
        let mut sim = Simulation::new(cfg, &split, &parts).unwrap();
        let mut dropped = 0;
        for _ in 0..5 {
            let r = sim.round().unwrap();
            assert_eq!(r.clients, 5);
            dropped += r.dropped;
        }
        assert!(
            (3..=18).contains(&dropped),
            "{dropped} of 25 dropped at p = 0.4"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let (split, parts) = flower10();
        for cfg in [
            SimConfig {
                fraction: 0.0,
                ..SimConfig::default()
            },
            SimConfig {
                dropout: 1.5,
                ..SimConfig::default()
            },
            SimConfig {
                malicious: 0.2,
                ..SimConfig::default()
            },
            SimConfig {
                clip: Some(0.0),
                ..SimConfig::default()
            },
        ] {
            assert!(Simulation::new(cfg, &split, &parts).is_err());
        }
    }
}
