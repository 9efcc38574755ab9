//! Simulation: N clients in one process, through the same round code a federation runs.
//! Clients train in parallel on the rayon pool the caller installs; every random choice
//! (selection, dropouts, malicious clients, shuffles, keys) comes from the seed, except
//! what privacy rests on: DP noise and the Poisson sample come from the operating system
//! unless [`SimConfig::reproducible_noise`] asks otherwise (and then ε does not hold).
//!
//! A round: the aggregator sends the global model to the selected clients; each trains,
//! and (unless it drops out) sends its update; malicious clients tamper with theirs.
//! Then, by mode:
//!
//! - **plain**: updates are clipped if asked and the strategy combines them;
//! - **secure aggregation**: each client clamps its delta to the quantiser's range,
//!   weights it by its examples and runs the [`secagg`] protocol; the aggregator learns
//!   only the weighted sum and the total weight; clients may drop at any of its stages;
//! - **central DP**: clients clip to `C`; the aggregator adds discrete Gaussian noise to the
//!   sum on a fixed-point grid and divides by the expected number of clients;
//! - **distributed DP** (secure aggregation + DP): each client clips, rounds to the grid
//!   and adds its share of the noise before masking, so no one sees an un-noised sum.
//!
//! Under DP the clients are a Poisson sample (rate = fraction), as the accountant assumes,
//! and every round reports the (ε, δ) spent so far.

use rand::{RngExt, SeedableRng, rngs::StdRng, seq::SliceRandom};
use rayon::prelude::*;
use serde::Serialize;

use crate::{
    Error, Result,
    attack::{self, Attack},
    data::Split,
    dp::{DpConfig, NoiseRng},
    model::{Arch, ModelSpec},
    round::{
        self,
        client::plain_update,
        server::{Plan, Server},
    },
    secagg::RoundParams,
    strategy::Strategy,
    train::{self, TrainConfig},
    wire::{self, ClientUpdate, GlobalModel},
};

mod secure;

pub use secure::{SecAggRun, run_secagg};

pub use crate::round::server::{DEFAULT_SECAGG_RANGE, SecAggSettings};

/// Everything a simulation needs besides the data.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The architecture.
    pub model: Arch,
    /// Rounds to run.
    pub rounds: usize,
    /// Share of clients selected per round (at least one is); under DP, the Poisson rate.
    pub fraction: f64,
    /// Local training.
    pub train: TrainConfig,
    /// The aggregation rule.
    pub strategy: Strategy,
    /// A pre-aggregation before the rule (bucketing, nearest-neighbour mixing).
    pub pre: Option<crate::strategy::PreAggregation>,
    /// Chance that a selected client drops out (under secure aggregation, at a random stage
    /// of the protocol).
    pub dropout: f64,
    /// Clip every update to this L2 norm.
    pub clip: Option<f32>,
    /// Share of clients that are malicious, and what they do.
    pub malicious: f64,
    /// The attack of the malicious clients.
    pub attack: Option<Attack>,
    /// Secure aggregation, if on.
    pub secagg: Option<SecAggSettings>,
    /// Differential privacy, if on.
    pub dp: Option<DpConfig>,
    /// Seed of every random choice but DP noise and the Poisson sample.
    pub seed: u64,
    /// Draw DP noise and the Poisson sample from the seed too: the same run twice gives the
    /// same model, and the ε reported does not hold (anyone with the seed removes the noise).
    pub reproducible_noise: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            model: Arch::Mlp(vec![64]),
            rounds: 50,
            fraction: 1.0,
            train: TrainConfig::default(),
            strategy: Strategy::FedAvg,
            pre: None,
            dropout: 0.0,
            clip: None,
            malicious: 0.0,
            attack: None,
            secagg: None,
            dp: None,
            seed: 0,
            reproducible_noise: false,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundReport {
    /// 1-based round number.
    pub round: usize,
    /// Test accuracy of the new global model.
    pub accuracy: f32,
    /// Its mean test loss.
    pub loss: f32,
    /// Clients selected.
    pub clients: usize,
    /// Selected clients that dropped out (whose input is not in the aggregate).
    pub dropped: usize,
    /// Bytes sent by clients (serialised messages).
    pub bytes_up: u64,
    /// Bytes sent to clients.
    pub bytes_down: u64,
    /// Privacy spent so far (with DP).
    pub epsilon: Option<f64>,
    /// The δ of `epsilon` (with DP).
    pub delta: Option<f64>,
    /// Why the round changed nothing, if it did not (e.g. secure aggregation aborted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// With the backdoor attack: the share of triggered test inputs sent to the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backdoor: Option<f32>,
    /// Under the screened mean: the clients it excluded this round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub screened: Option<Vec<u32>>,
}

/// A running simulation.
pub struct Simulation<'a> {
    cfg: SimConfig,
    spec: ModelSpec,
    data: &'a Split,
    parts: &'a [Vec<usize>],
    malicious: Vec<bool>,
    /// The aggregator's state machine: selection, rounds, rule, accountant.
    server: Server,
}

/// A client's contribution to a round, before aggregation.
struct Trained {
    client: usize,
    delta: Vec<f32>,
    examples: usize,
    seed: u64,
}

impl<'a> Simulation<'a> {
    /// Set up a simulation of `cfg` on `data`, with client `i` holding `parts[i]` (rows of
    /// `data.train`).
    pub fn new(cfg: SimConfig, data: &'a Split, parts: &'a [Vec<usize>]) -> Result<Self> {
        cfg.train.validate()?;
        if parts.is_empty() || parts.iter().any(Vec::is_empty) {
            return Err(Error::Spec("every client needs at least one row".into()));
        }
        let plan = Plan {
            fraction: cfg.fraction,
            strategy: cfg.strategy,
            pre: cfg.pre,
            clip: cfg.clip,
            secagg: cfg.secagg,
            dp: cfg.dp,
            noise_seed: cfg
                .reproducible_noise
                .then_some(cfg.seed ^ 0x006e_6f69_7365),
        };
        plan.validate(parts.len())?;
        for (what, p) in [("dropout", cfg.dropout), ("malicious", cfg.malicious)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::Spec(format!("{what} {p} must be in [0, 1]")));
            }
        }
        if cfg.malicious > 0.0 && cfg.attack.is_none() {
            return Err(Error::Spec("malicious clients need an attack".into()));
        }
        let spec = ModelSpec::new(cfg.model.clone(), data.train.shape, data.train.classes)?;
        if let Some(s) = cfg.secagg {
            // The selection's usual size must admit the graph and threshold asked for.
            let k = ((cfg.fraction * parts.len() as f64).round() as usize).clamp(2, parts.len());
            let ids: Vec<u32> = (0..k as u32).collect();
            RoundParams::new(
                0,
                &ids,
                s.neighbours,
                s.threshold,
                spec.num_params() as u32 + 1,
                [0; 32],
            )?;
        }
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x6d61_6c69);
        let n_bad = (cfg.malicious * parts.len() as f64).round() as usize;
        let mut order: Vec<usize> = (0..parts.len()).collect();
        order.shuffle(&mut rng);
        let mut malicious = vec![false; parts.len()];
        for &i in &order[..n_bad] {
            malicious[i] = true;
        }
        let server = Server::new(plan, spec.init(cfg.seed), parts.len())?;
        Ok(Simulation {
            cfg,
            spec,
            data,
            parts,
            malicious,
            server,
        })
    }

    /// The model spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The current global parameters.
    pub fn global(&self) -> &[f32] {
        self.server.global()
    }

    /// Which clients are malicious.
    pub fn malicious(&self) -> &[bool] {
        &self.malicious
    }

    /// Test loss and accuracy of the current global model.
    pub fn evaluate(&self) -> Result<(f32, f32)> {
        train::evaluate(&self.spec, self.server.global(), &self.data.test)
    }

    /// Privacy spent so far, `(ε, δ)`, with DP.
    pub fn privacy(&self) -> Option<(f64, f64)> {
        self.server.privacy()
    }

    /// ε against the aggregator (see [`Server::privacy_against_aggregator`]).
    pub fn privacy_against_aggregator(&self) -> Option<f64> {
        self.server.privacy_against_aggregator()
    }

    /// Whether DP noise and sampling follow from the seed (then ε does not hold).
    pub fn noise_is_reproducible(&self) -> bool {
        self.server.noise_is_reproducible()
    }

    /// Train the given clients in parallel; malicious ones tamper with their deltas.
    fn train_clients(
        &self,
        global: &GlobalModel,
        clients: &[usize],
        senders: usize,
    ) -> Result<Vec<Trained>> {
        let mut cfg = self.cfg.train.clone();
        cfg.prox_mu = self.cfg.strategy.prox_mu();
        let (round, seed, attack) = (self.server.round() as usize, self.cfg.seed, self.cfg.attack);
        let (spec, data, parts) = (&self.spec, self.data, self.parts);
        clients
            .par_iter()
            .map(|&c| {
                let bad = self.malicious[c];
                let client_seed = seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(1000 * round as u64 + c as u64);
                let poisoned = match (bad, attack) {
                    (true, Some(a)) => a.poison(&data.train, &parts[c])?,
                    _ => None,
                };
                let (mut delta, examples) = match &poisoned {
                    Some(d) => {
                        let rows: Vec<usize> = (0..d.len()).collect();
                        round::client_update(spec, global, d, &rows, &cfg, client_seed)?
                    }
                    None => round::client_update(
                        spec,
                        global,
                        &data.train,
                        &parts[c],
                        &cfg,
                        client_seed,
                    )?,
                };
                if let (true, Some(a)) = (bad, attack) {
                    let mut r = StdRng::seed_from_u64(client_seed ^ 0xa77a);
                    a.tamper(&mut delta, senders, &mut r);
                }
                Ok(Trained {
                    client: c,
                    delta,
                    examples,
                    seed: client_seed,
                })
            })
            .collect()
    }

    /// Under an omniscient attack (ALIE, IPM), the attackers see the round's honest updates
    /// and all send the update crafted from them.
    fn collude(&self, mut trained: Vec<Trained>, n: usize) -> Vec<Trained> {
        let Some(attack) = self.cfg.attack.filter(Attack::is_omniscient) else {
            return trained;
        };
        let f = trained.iter().filter(|t| self.malicious[t.client]).count();
        if f == 0 {
            return trained;
        }
        let crafted = {
            let honest: Vec<&[f32]> = trained
                .iter()
                .filter(|t| !self.malicious[t.client])
                .map(|t| t.delta.as_slice())
                .collect();
            attack.collude(&honest, n, f)
        };
        if let Some(c) = crafted {
            for t in trained.iter_mut().filter(|t| self.malicious[t.client]) {
                t.delta.clone_from(&c);
            }
        }
        trained
    }

    /// Run the next round.
    pub fn round(&mut self) -> Result<RoundReport> {
        let round = self.server.round() as usize + 1;
        let secure = self.cfg.secagg.is_some();
        let mut rng = StdRng::seed_from_u64(self.cfg.seed.wrapping_mul(0x9e37_79b9) ^ round as u64);
        let selected = self.server.select(&mut rng);
        // The stage a client stops at (0: before training; under secure aggregation 0–3:
        // before its advert, shares, masked input or unmasking answer), or none.
        let drop_at: Vec<Option<usize>> = selected
            .iter()
            .map(|_| {
                rng.random_bool(self.cfg.dropout)
                    .then(|| if secure { rng.random_range(0..4) } else { 0 })
            })
            .collect();
        let mut secagg_seed = [0u8; 32];
        rng.fill(&mut secagg_seed);

        let ids: Vec<u32> = selected.iter().map(|&c| c as u32).collect();
        let (mut plain, global_msg) = self.server.open(&ids);
        let down = wire::encode(&global_msg)?;
        // Clients whose input reaches the aggregator: plain ones that stay, secure ones that
        // send their masked input (stage 3 drops only skip the unmasking answer).
        let absent = self.cfg.attack == Some(Attack::Absent);
        let senders: Vec<usize> = selected
            .iter()
            .zip(&drop_at)
            .filter(|(c, d)| d.is_none_or(|s| s >= 3) && !(absent && self.malicious[**c]))
            .map(|(&c, _)| c)
            .collect();
        let trained = self.train_clients(&global_msg, &senders, senders.len())?;
        let trained = self.collude(trained, senders.len());
        let mut report = RoundReport {
            round,
            accuracy: 0.0,
            loss: 0.0,
            clients: selected.len(),
            dropped: selected.len() - senders.len(),
            bytes_up: 0,
            bytes_down: down.len() as u64 * selected.len() as u64,
            epsilon: None,
            delta: None,
            aborted: None,
            backdoor: None,
            screened: None,
        };
        // Under secure aggregation, how many noise shares made it into the sum.
        // The noise multiplier the published mean carries (under DP), none if nothing is
        // published.
        let mut released = None;
        let mean: Option<Vec<f32>> = if secure {
            let result = self.secure_round(&selected, &drop_at, trained, secagg_seed)?;
            report.bytes_up += result.bytes_up;
            report.bytes_down += result.bytes_down;
            report.dropped = selected.len() - result.survivors;
            match result.mean {
                Ok(m) => {
                    released = Some(result.multiplier);
                    Some(m)
                }
                Err(e) => {
                    report.aborted = Some(e.to_string());
                    None
                }
            }
        } else {
            // Each update goes through its bytes, as on the network; the round refuses
            // malformed ones (e.g. a diverged client's NaNs), which count as dropped.
            for t in trained {
                let bytes = wire::encode(&plain_update(round as u32, &t.delta, t.examples))?;
                report.bytes_up += bytes.len() as u64;
                let received = wire::decode::<ClientUpdate>(&bytes)
                    .and_then(|m| plain.receive(t.client as u32, &m));
                if received.is_err() {
                    report.dropped += 1;
                }
            }
            let mean = self.server.close(plain)?;
            released = self.server.central_multiplier()?;
            if mean.is_none() {
                report.aborted = Some("no update arrived".into());
            }
            mean
        };
        if let Some(mean) = mean {
            self.server.apply(&mean);
        }
        if matches!(self.cfg.strategy, Strategy::ScreenedMean { .. }) {
            report.screened = Some(self.server.screened().to_vec());
        }
        if let Some((epsilon, delta)) = self.server.account(released)? {
            report.epsilon = Some(epsilon);
            report.delta = Some(delta);
        }
        let (loss, accuracy) = self.evaluate()?;
        report.loss = loss;
        report.accuracy = accuracy;
        report.backdoor =
            match self.cfg.attack {
                Some(Attack::Backdoor) if self.cfg.malicious > 0.0 => Some(
                    attack::backdoor_success(&self.spec, self.server.global(), &self.data.test)?,
                ),
                _ => None,
            };
        Ok(report)
    }

    /// One round of secure aggregation among `selected`, in process, through the client
    /// encoding and the aggregator's deadline-driven state machine; every message is
    /// serialised to count its bytes.
    fn secure_round(
        &self,
        selected: &[usize],
        drop_at: &[Option<usize>],
        trained: Vec<Trained>,
        graph_seed: [u8; 32],
    ) -> Result<SecureResult> {
        let fail = |e: Error| SecureResult {
            mean: Err(e),
            multiplier: 0.0,
            survivors: 0,
            bytes_up: 0,
            bytes_down: 0,
        };
        let ids: Vec<u32> = selected.iter().map(|&c| c as u32).collect();
        let max_weight = self.parts.iter().map(Vec::len).max().unwrap_or(1) as f64;
        let encoding = self.server.encoding(selected.len(), max_weight)?;
        let params = match self.server.secure_params(&ids, encoding.len(), graph_seed) {
            Ok(p) => p,
            Err(e) => return Ok(fail(e)),
        };
        let clip = self.cfg.clip;
        let reproducible = self.cfg.reproducible_noise;
        let inputs: Vec<(u32, Vec<u32>)> = trained
            .into_par_iter()
            .zip(
                selected
                    .iter()
                    .zip(drop_at)
                    .filter(|(_, d)| d.is_none_or(|s| s >= 3))
                    .map(|(&c, _)| c as u32)
                    .collect::<Vec<_>>(),
            )
            .map(|(t, c)| {
                // Each client's own noise share, from its own operating system.
                let mut noise = if reproducible {
                    NoiseRng::reproducible(t.seed ^ 0xd1ff)
                } else {
                    NoiseRng::from_os()?
                };
                Ok((c, encoding.encode(t.delta, t.examples, clip, &mut noise)))
            })
            .collect::<Result<_>>()?;
        let inputs: std::collections::BTreeMap<u32, Vec<u32>> = inputs.into_iter().collect();
        let drops: std::collections::BTreeMap<u32, usize> = selected
            .iter()
            .zip(drop_at)
            .filter_map(|(&c, d)| d.map(|s| (c as u32, s)))
            .collect();
        let round = self.server.round() as u64;
        let run = run_secagg(&params, inputs, &drops, self.cfg.seed ^ round)?;
        let expected = self.server.expected();
        let mean = run
            .outcome
            .and_then(|out| encoding.mean(&out.sum, expected));
        Ok(SecureResult {
            multiplier: encoding.multiplier(run.survivors),
            survivors: run.survivors,
            mean,
            bytes_up: run.bytes_up,
            bytes_down: run.bytes_down,
        })
    }
}

struct SecureResult {
    mean: Result<Vec<f32>>,
    /// The noise multiplier the shares in the sum add up to (under DP).
    multiplier: f64,
    survivors: usize,
    bytes_up: u64,
    bytes_down: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{data, dp::Accountant, partition::SplitFile};

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

    fn quick(secagg: Option<SecAggSettings>, dp: Option<DpConfig>) -> SimConfig {
        SimConfig {
            rounds: 3,
            secagg,
            dp,
            train: TrainConfig {
                epochs: 2,
                ..TrainConfig::default()
            },
            ..SimConfig::default()
        }
    }

    #[test]
    fn secure_aggregation_gives_fedavgs_model_up_to_quantisation() {
        let (split, parts) = flower10();
        let mut plain = Simulation::new(quick(None, None), &split, &parts).unwrap();
        let sa = SecAggSettings {
            neighbours: Some(6),
            threshold: Some(5),
            ..SecAggSettings::default()
        };
        let mut secure = Simulation::new(quick(Some(sa), None), &split, &parts).unwrap();
        for _ in 0..2 {
            let p = plain.round().unwrap();
            let s = secure.round().unwrap();
            assert_eq!(s.aborted, None);
            assert_eq!(s.dropped, 0);
            // The masked input is the model's size (plus one weight); keys, shares and
            // answers for 6 neighbours add little: far below twice the plain upload.
            assert!(
                s.bytes_up > p.bytes_up && s.bytes_up < 2 * p.bytes_up,
                "{s:?} {p:?}"
            );
            assert!(s.bytes_down < 2 * p.bytes_down, "{s:?} {p:?}");
        }
        let gap = plain
            .global()
            .iter()
            .zip(secure.global())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(gap < 1e-4, "largest difference {gap}");
    }

    #[test]
    fn secure_rounds_survive_dropouts_and_abort_below_the_threshold() {
        let (split, parts) = flower10();
        // 7 of 10 holders: up to 3 may drop.
        let sa = SecAggSettings {
            threshold: Some(7),
            ..SecAggSettings::default()
        };
        let cfg = SimConfig {
            dropout: 0.25,
            seed: 3,
            ..quick(Some(sa), None)
        };
        let mut sim = Simulation::new(cfg, &split, &parts).unwrap();
        let before = sim.global().to_vec();
        let (mut ok, mut dropped) = (0, 0);
        for _ in 0..6 {
            let r = sim.round().unwrap();
            if r.aborted.is_none() {
                ok += 1;
                dropped += r.dropped;
                assert!(r.dropped <= 3, "{r:?}");
            } else {
                assert!(
                    r.aborted.as_deref().unwrap_or("").contains("aborted"),
                    "{r:?}"
                );
            }
        }
        assert!(
            ok >= 3 && dropped >= 1,
            "{ok} rounds, {dropped} dropouts recovered"
        );
        assert_ne!(sim.global(), &before[..]);
        // Everyone gone: every round aborts and the model stays.
        let cfg = SimConfig {
            dropout: 1.0,
            ..quick(Some(sa), None)
        };
        let mut sim = Simulation::new(cfg, &split, &parts).unwrap();
        let before = sim.global().to_vec();
        assert!(sim.round().unwrap().aborted.is_some());
        assert_eq!(sim.global(), &before[..]);
    }

    #[test]
    fn dp_reports_the_accountants_epsilon_central_and_distributed() {
        let (split, parts) = flower10();
        let dp = DpConfig {
            noise: 1.0,
            clip: 0.5,
            delta: 1e-5,
        };
        let mut expect = Accountant::default();
        let mut central = Simulation::new(quick(None, Some(dp)), &split, &parts).unwrap();
        let mut distributed = Simulation::new(
            quick(Some(SecAggSettings::default()), Some(dp)),
            &split,
            &parts,
        )
        .unwrap();
        let mut last = 0.0;
        for _ in 0..3 {
            expect.step(1.0, 1.0, 1).unwrap();
            let want = expect.epsilon(1e-5).0;
            let c = central.round().unwrap();
            let d = distributed.round().unwrap();
            // The sampler rounds σ² up: a hair more noise than z = 1, a hair less ε.
            let near = |e: Option<f64>| e.is_some_and(|e| e <= want && e > want * (1.0 - 1e-6));
            assert!(near(c.epsilon), "{:?} vs {want}", c.epsilon);
            assert!(
                near(d.epsilon),
                "no dropouts: every noise share is in: {:?} vs {want}",
                d.epsilon
            );
            assert_eq!(c.delta, Some(1e-5));
            assert!(want > last);
            last = want;
            assert!(c.loss.is_finite() && d.loss.is_finite(), "{c:?} {d:?}");
        }
        // Noise is on: the two differ, and differ from a noiseless run.
        assert_ne!(central.global(), distributed.global());
        // Poisson sampling at 50%: a smaller ε for the same noise.
        let cfg = SimConfig {
            fraction: 0.5,
            ..quick(None, Some(dp))
        };
        let mut sampled = Simulation::new(cfg, &split, &parts).unwrap();
        let mut r = None;
        for _ in 0..3 {
            r = Some(sampled.round().unwrap());
        }
        assert!(r.unwrap().epsilon.unwrap() < last);
    }

    #[test]
    fn robust_rules_hold_against_a_malicious_fifth_where_fedavg_collapses() {
        // docs/ROBUSTNESS.md's setting at one seed: digits, 20 IID clients, 4 of them
        // flipping their updates ×−10; robust rules stay within 2 points of their clean run.
        let d = data::digits().unwrap().stratified_split(0.25, 0).unwrap();
        let parts = crate::partition::Partition::Iid
            .apply(&d.train, 20, 0)
            .unwrap();
        let accuracy = |strategy: Strategy, malicious: f64| {
            let cfg = SimConfig {
                rounds: 30,
                strategy,
                malicious,
                attack: Some(Attack::SignFlip),
                train: TrainConfig {
                    epochs: 2,
                    ..TrainConfig::default()
                },
                ..SimConfig::default()
            };
            let mut sim = Simulation::new(cfg, &d, &parts).unwrap();
            let mut acc = 0.0;
            for _ in 0..30 {
                acc = sim.round().unwrap().accuracy;
            }
            acc
        };
        let fedavg = accuracy(Strategy::FedAvg, 0.2);
        assert!(fedavg < 0.3, "FedAvg under sign flipping: {fedavg}");
        for rule in [
            Strategy::Median,
            Strategy::TrimmedMean(0.2),
            Strategy::Krum { f: 4, m: 10 },
        ] {
            let clean = accuracy(rule, 0.0);
            let attacked = accuracy(rule, 0.2);
            assert!(clean > 0.8, "{rule}: clean {clean}");
            assert!(
                attacked >= clean - 0.02,
                "{rule}: {attacked} vs clean {clean}"
            );
        }
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
            SimConfig {
                strategy: Strategy::Median,
                secagg: Some(SecAggSettings::default()),
                ..SimConfig::default()
            },
            SimConfig {
                strategy: Strategy::Krum { f: 1, m: 1 },
                dp: Some(DpConfig {
                    noise: 1.0,
                    clip: 1.0,
                    delta: 1e-5,
                }),
                ..SimConfig::default()
            },
            SimConfig {
                dp: Some(DpConfig {
                    noise: 1.0,
                    clip: -1.0,
                    delta: 1e-5,
                }),
                ..SimConfig::default()
            },
        ] {
            assert!(Simulation::new(cfg, &split, &parts).is_err());
        }
    }
}
