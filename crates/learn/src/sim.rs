//! Simulation: N clients in one process, through the same round code a federation runs.
//! Clients train in parallel on the rayon pool the caller installs; every random choice
//! (selection, dropouts, malicious clients, shuffles, keys, noise) comes from the seed.
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
    dp::{Accountant, DpConfig},
    model::{Arch, ModelSpec},
    round::{self, Round},
    secagg::{self, Quantizer, RoundParams},
    strategy::{Aggregator, Strategy, clip_l2},
    train::{self, TrainConfig},
    wire::{self, ClientUpdate, GlobalModel},
};

/// Largest magnitude of one coordinate of a delta under secure aggregation without DP: each
/// coordinate is clamped to `[−range, range]` before quantising (Flower's SecAgg+ clips at
/// 8 as well). With a delta per coordinate within it, the weighted sum is exact to
/// `1/scale`.
pub const DEFAULT_SECAGG_RANGE: f64 = 8.0;

/// Secure aggregation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SecAggSettings {
    /// Neighbours per client (`None`: every other selected client).
    pub neighbours: Option<u32>,
    /// Shares needed to rebuild a secret (`None`: two thirds of the holders).
    pub threshold: Option<u32>,
    /// Clamp range of each delta coordinate (without DP).
    pub range: f64,
}

impl Default for SecAggSettings {
    fn default() -> Self {
        SecAggSettings {
            neighbours: None,
            threshold: None,
            range: DEFAULT_SECAGG_RANGE,
        }
    }
}

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
            secagg: None,
            dp: None,
            seed: 0,
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
}

/// A running simulation.
pub struct Simulation<'a> {
    cfg: SimConfig,
    spec: ModelSpec,
    data: &'a Split,
    parts: &'a [Vec<usize>],
    malicious: Vec<bool>,
    aggregator: Aggregator,
    accountant: Accountant,
    global: Vec<f32>,
    round: usize,
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
        if cfg.strategy.needs_individual_updates() {
            if cfg.secagg.is_some() {
                return Err(Error::Spec(format!(
                    "{} needs each client's update, and secure aggregation hides them: use \
                     fedavg, fedprox, fedadam or fedyogi with --secagg (docs/ROBUSTNESS.md)",
                    cfg.strategy
                )));
            }
            if cfg.dp.is_some() {
                return Err(Error::Spec(format!(
                    "differential privacy here noises an average of clipped updates; {} is not \
                     one: use fedavg, fedprox, fedadam or fedyogi",
                    cfg.strategy
                )));
            }
        }
        if let Some(s) = cfg.secagg {
            if !(s.range.is_finite() && s.range >= 1.0) {
                return Err(Error::Spec(format!(
                    "secure aggregation range {} must be ≥ 1",
                    s.range
                )));
            }
            if parts.len() < 2 {
                return Err(Error::Spec(
                    "secure aggregation needs at least 2 clients".into(),
                ));
            }
        }
        if let Some(dp) = cfg.dp {
            dp.validate()?;
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
        let global = spec.init(cfg.seed);
        Ok(Simulation {
            aggregator: Aggregator::new(cfg.strategy),
            accountant: Accountant::default(),
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

    /// Privacy spent so far, `(ε, δ)`, with DP.
    pub fn privacy(&self) -> Option<(f64, f64)> {
        self.cfg
            .dp
            .map(|dp| (self.accountant.epsilon(dp.delta).0, dp.delta))
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
        let (round, seed, attack) = (self.round, self.cfg.seed, self.cfg.attack);
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

    /// Run the next round.
    pub fn round(&mut self) -> Result<RoundReport> {
        self.round += 1;
        let round = self.round;
        let n = self.parts.len();
        let secure = self.cfg.secagg.is_some();
        let mut rng = StdRng::seed_from_u64(self.cfg.seed.wrapping_mul(0x9e37_79b9) ^ round as u64);
        let selected: Vec<usize> = if self.cfg.dp.is_some() && self.cfg.fraction < 1.0 {
            // Poisson sampling, which the accountant's amplification assumes.
            (0..n)
                .filter(|_| rng.random_bool(self.cfg.fraction))
                .collect()
        } else {
            let k = ((self.cfg.fraction * n as f64).round() as usize).clamp(1, n);
            let mut s = rand::seq::index::sample(&mut rng, n, k).into_vec();
            s.sort_unstable();
            s
        };
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
        let (mut plain, global_msg) = Round::open(round as u32, &self.global, &ids);
        let down = wire::encode(&global_msg)?;
        // Clients whose input reaches the aggregator: plain ones that stay, secure ones that
        // send their masked input (stage 3 drops only skip the unmasking answer).
        let senders: Vec<usize> = selected
            .iter()
            .zip(&drop_at)
            .filter(|(_, d)| d.is_none_or(|s| s >= 3))
            .map(|(&c, _)| c)
            .collect();
        let trained = self.train_clients(&global_msg, &senders, senders.len())?;
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
        };
        // Under DP the average divides by the expected number of clients (a constant, so
        // one client's presence changes the sum by at most C).
        let expected = self.cfg.fraction * n as f64;
        let mut noise_multiplier = self.cfg.dp.map(|d| d.noise);

        let mean: Option<Vec<f32>> = match (self.cfg.secagg, self.cfg.dp) {
            (None, dp) => {
                // Each update goes through its bytes, as on the network; the round refuses
                // malformed ones (e.g. a diverged client's NaNs), which count as dropped.
                for t in trained {
                    let bytes = wire::encode(&ClientUpdate {
                        round: round as u32,
                        examples: t.examples as u64,
                        delta: wire::f32s_to_bytes(&t.delta),
                    })?;
                    report.bytes_up += bytes.len() as u64;
                    let received = wire::decode::<ClientUpdate>(&bytes)
                        .and_then(|m| plain.receive(t.client as u32, &m));
                    if received.is_err() {
                        report.dropped += 1;
                    }
                }
                match dp {
                    Some(dp) => {
                        let mut noise_rng = StdRng::from_seed(secagg_seed);
                        Some(plain.close_private(&dp, expected, &mut noise_rng)?)
                    }
                    None if plain.received().is_empty() => {
                        report.aborted = Some("no update arrived".into());
                        None
                    }
                    None => Some(plain.close(&self.aggregator, self.cfg.clip)?),
                }
            }
            (Some(sa), dp) => {
                let secure =
                    self.secure_round(sa, dp, &selected, &drop_at, trained, secagg_seed, expected)?;
                report.bytes_up += secure.bytes_up;
                report.bytes_down += secure.bytes_down;
                report.dropped = selected.len() - secure.survivors;
                if let (Some(z), Some(_)) = (noise_multiplier, dp) {
                    // Only the survivors' noise shares are in the sum.
                    let share = (secure.survivors as f64).min(expected) / expected;
                    noise_multiplier = Some(z * share.sqrt());
                }
                match secure.mean {
                    Ok(m) => Some(m),
                    Err(e) => {
                        report.aborted = Some(e.to_string());
                        None
                    }
                }
            }
        };
        if let Some(mean) = mean {
            self.aggregator.apply_delta(&mut self.global, &mean);
        }
        if let (Some(dp), Some(z)) = (self.cfg.dp, noise_multiplier) {
            let q = if self.cfg.fraction < 1.0 {
                self.cfg.fraction
            } else {
                1.0
            };
            self.accountant.step(q, z, 1)?;
            report.epsilon = Some(self.accountant.epsilon(dp.delta).0);
            report.delta = Some(dp.delta);
        }
        let (loss, accuracy) = self.evaluate()?;
        report.loss = loss;
        report.accuracy = accuracy;
        report.backdoor =
            match self.cfg.attack {
                Some(Attack::Backdoor) if self.cfg.malicious > 0.0 => Some(
                    attack::backdoor_success(&self.spec, &self.global, &self.data.test)?,
                ),
                _ => None,
            };
        Ok(report)
    }

    /// One round of secure aggregation among `selected`, in process, through the client and
    /// aggregator state machines; every message is serialised to count its bytes.
    #[allow(clippy::too_many_arguments)]
    fn secure_round(
        &self,
        sa: SecAggSettings,
        dp: Option<DpConfig>,
        selected: &[usize],
        drop_at: &[Option<usize>],
        trained: Vec<Trained>,
        graph_seed: [u8; 32],
        expected: f64,
    ) -> Result<SecureResult> {
        let dim = self.global.len();
        let m = selected.len();
        let fail = |e: Error| SecureResult {
            mean: Err(e),
            survivors: 0,
            bytes_up: 0,
            bytes_down: 0,
        };
        let ids: Vec<u32> = selected.iter().map(|&c| c as u32).collect();
        // With DP: clip to C, no weights, noise shares on the grid. Without: weight by
        // examples, one more coordinate carries the weight.
        let (quant, weighted, noise) = match dp {
            Some(dp) => {
                let margin = 20.0 * dp.noise * dp.clip * 1.01;
                let fit = Quantizer::for_sum(dp.clip, m.max(1), margin)?;
                let scale = fit.scale.min(dp.grid_scale());
                let q = Quantizer {
                    scale,
                    range: dp.clip,
                };
                (
                    q,
                    false,
                    dp.sampler(dim, scale, expected.ceil().max(1.0) as usize)?,
                )
            }
            None => {
                let w = self.parts.iter().map(Vec::len).max().unwrap_or(1) as f64;
                (Quantizer::for_sum(sa.range * w, m.max(1), 0.0)?, true, None)
            }
        };
        let len = if weighted { dim + 1 } else { dim };
        let params = match RoundParams::new(
            self.round as u64,
            &ids,
            sa.neighbours,
            sa.threshold,
            len as u32,
            graph_seed,
        ) {
            Ok(p) => p,
            Err(e) => return Ok(fail(e)),
        };
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
                let mut delta = t.delta;
                if let Some(c) = self.cfg.clip {
                    clip_l2(&mut delta, c);
                }
                let mut x: Vec<u32> = if let Some(dp) = dp {
                    clip_l2(&mut delta, dp.clip as f32);
                    quant.quantize(&delta)
                } else {
                    let w = t.examples as f64;
                    let r = sa.range;
                    let mut x: Vec<u32> = delta
                        .iter()
                        .map(|&d| quant.quantize_one((d as f64).clamp(-r, r) * w))
                        .collect();
                    x.push(quant.quantize_one(w));
                    x
                };
                if let Some(g) = noise {
                    g.add_to(&mut x, &mut StdRng::seed_from_u64(t.seed ^ 0xd1ff));
                }
                (c, x)
            })
            .collect();
        let inputs: std::collections::BTreeMap<u32, Vec<u32>> = inputs.into_iter().collect();
        let drops: std::collections::BTreeMap<u32, usize> = selected
            .iter()
            .zip(drop_at)
            .filter_map(|(&c, d)| d.map(|s| (c as u32, s)))
            .collect();
        let run = run_secagg(&params, inputs, &drops, self.cfg.seed ^ self.round as u64)?;
        let mean = run.outcome.map(|out| {
            let sum = quant.dequantize(&out.sum);
            let denom = if weighted { sum[dim] } else { expected };
            sum[..dim].iter().map(|s| (s / denom) as f32).collect()
        });
        Ok(SecureResult {
            survivors: run.survivors,
            mean,
            bytes_up: run.bytes_up,
            bytes_down: run.bytes_down,
        })
    }
}

struct SecureResult {
    mean: Result<Vec<f32>>,
    survivors: usize,
    bytes_up: u64,
    bytes_down: u64,
}

/// Clients masking their inputs at once in [`run_secagg`] (bounds the masked vectors held).
const MASK_BATCH: usize = 64;

/// What driving one secure round in process gave.
pub struct SecAggRun {
    /// The unmasked sum, or why the round aborted.
    pub outcome: Result<secagg::Outcome>,
    /// Clients whose input is in the sum.
    pub survivors: usize,
    /// Bytes clients sent (serialised messages).
    pub bytes_up: u64,
    /// Bytes the aggregator sent (the round's parameters and every protocol message).
    pub bytes_down: u64,
}

/// Run one round of secure aggregation in process: every participant of `params` with an
/// input in `inputs` takes part; `drops[c] = s` makes client `c` stop before stage `s`
/// (0 advert, 1 shares, 2 masked input, 3 unmasking answer). Client work runs in parallel.
/// Keys come from `seed`. An abort is an `Err` in `outcome`; other errors are bugs.
pub fn run_secagg(
    params: &RoundParams,
    mut inputs: std::collections::BTreeMap<u32, Vec<u32>>,
    drops: &std::collections::BTreeMap<u32, usize>,
    seed: u64,
) -> Result<SecAggRun> {
    use secagg::{Aggregator as SecAggregator, Client};
    let alive = |c: u32, stage: usize| drops.get(&c).is_none_or(|&s| s > stage);
    let mut agg = SecAggregator::new(params.clone())?;
    let (mut up, mut down) = (0u64, 0u64);
    let params_len = wire::encode(params)?.len() as u64;
    down += params_len * params.participants.len() as u64;
    let mut clients: Vec<(Client, StdRng)> = params
        .participants
        .par_iter()
        .filter(|&&c| alive(c, 0))
        .map(|&c| {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (c as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let (client, advert) = Client::new(params.clone(), c, &mut rng)?;
            Ok((client, rng, advert))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .map(|(client, rng, advert)| {
            up += size(&advert);
            agg.receive_advert(advert).map(|()| (client, rng))
        })
        .collect::<Result<_>>()?;
    let outcome = (|| -> Result<secagg::Outcome> {
        let books: std::collections::BTreeMap<u32, secagg::KeyBook> =
            agg.key_books()?.into_iter().collect();
        clients.retain(|(c, _)| books.contains_key(&c.id()));
        down += books.values().map(size).sum::<u64>();
        let shares: Vec<_> = clients
            .par_iter_mut()
            .map(|(c, rng)| c.share_keys(&books[&c.id()], rng))
            .collect::<Result<_>>()?;
        for s in shares {
            if alive(s.client, 1) {
                up += size(&s);
                agg.receive_shares(s)?;
            }
        }
        let deliveries: std::collections::BTreeMap<u32, secagg::ShareDelivery> =
            agg.deliveries()?.into_iter().collect();
        clients.retain(|(c, _)| deliveries.contains_key(&c.id()));
        down += deliveries.values().map(size).sum::<u64>();
        // Clients that stop before sending their masked input never compute one. The rest
        // mask in parallel batches whose results go straight into the aggregator's running
        // sum, so at most a batch of masked vectors exists at once.
        clients.retain(|(c, _)| alive(c.id(), 2));
        for batch in clients.chunks_mut(MASK_BATCH) {
            let mut mine = Vec::with_capacity(batch.len());
            for (c, _) in batch.iter() {
                let id = c.id();
                mine.push(
                    inputs
                        .remove(&id)
                        .ok_or_else(|| Error::SecAgg(format!("client {id} has no input")))?,
                );
            }
            let masked: Vec<_> = batch
                .par_iter_mut()
                .zip(mine)
                .map(|((c, _), x)| c.mask_input(&deliveries[&c.id()], &x))
                .collect::<Result<_>>()?;
            for m in masked {
                up += size(&m);
                agg.receive_masked(m)?;
            }
        }
        let requests: std::collections::BTreeMap<u32, secagg::UnmaskRequest> =
            agg.unmask_requests()?.into_iter().collect();
        clients.retain(|(c, _)| requests.contains_key(&c.id()));
        down += requests.values().map(size).sum::<u64>();
        let answers: Vec<_> = clients
            .par_iter_mut()
            .map(|(c, _)| c.unmask(&requests[&c.id()]))
            .collect::<Result<_>>()?;
        for a in answers {
            if alive(a.client, 3) {
                up += size(&a);
                agg.receive_unmask(a)?;
            }
        }
        agg.finish()
    })();
    let survivors = outcome.as_ref().map(|o| o.survivors.len()).unwrap_or(0);
    Ok(SecAggRun {
        outcome,
        survivors,
        bytes_up: up,
        bytes_down: down,
    })
}

/// Serialised length of a message, for byte counts.
fn size<T: Serialize>(m: &T) -> u64 {
    wire::encode(m).map_or(0, |b| b.len() as u64)
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
            threshold: Some(4),
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
        let sa = SecAggSettings {
            threshold: Some(6),
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
                assert!(r.dropped <= 4, "{r:?}");
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
            assert_eq!(c.epsilon, Some(want));
            assert_eq!(
                d.epsilon,
                Some(want),
                "no dropouts: every noise share is in"
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
