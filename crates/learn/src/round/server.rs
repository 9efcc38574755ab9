//! The aggregator's side of a federation, round after round, as a pure state machine:
//! selection, the round in the clear ([`Round`]) or under secure aggregation
//! ([`SecureRound`], whose stages close at deadlines given as inputs), the combination by
//! the federation's rule or with central noise, and the privacy accountant. Time and
//! randomness are inputs; the simulation and the node drive the same code.
//!
//! ```text
//!   Server::select(rng) ─▶ Server::open(selected) ─▶ GlobalModel to each client
//!     clear:  Round::receive(update)… ─▶ Server::close(round) ─▶ mean
//!     secure: SecureRound::receive_*(…) / tick(now) per stage ─▶ Outcome
//!             ─▶ SecureEncoding::mean ─▶ mean
//!   Server::apply(mean) ─▶ Server::account(noise multiplier released, if any) ─▶ (ε, δ)
//! ```
//!
//! Under DP the Poisson sample and the central noise come from the server's own
//! [`NoiseRng`] (the operating system's, unless the plan asks for reproducible noise), never
//! from the generator passed to [`Server::select`].

use std::collections::BTreeSet;

use rand::{Rng, RngExt as _};

use super::{Round, client::SecureEncoding};
use crate::{
    Error, Result,
    dp::{Accountant, DpConfig, NoiseRng},
    secagg::{
        self, Directory, EncryptedShares, KeyAdvert, KeyBook, MaskedInput, Outcome, RoundParams,
        ShareDelivery, SurvivorList, SurvivorSignature, UnmaskRequest, UnmaskResponse,
    },
    strategy::{Aggregator, PreAggregation, Strategy},
    wire::GlobalModel,
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

/// How a federation selects clients and combines their updates: what its aggregator
/// needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Share of clients selected per round (at least one is); under DP, the Poisson rate.
    pub fraction: f64,
    /// The aggregation rule.
    pub strategy: Strategy,
    /// A pre-aggregation before the rule (bucketing or nearest-neighbour mixing).
    pub pre: Option<PreAggregation>,
    /// Clip every update to this L2 norm.
    pub clip: Option<f32>,
    /// Secure aggregation, if on.
    pub secagg: Option<SecAggSettings>,
    /// Differential privacy, if on.
    pub dp: Option<DpConfig>,
    /// Draw the DP noise and the Poisson sample from this seed rather than the operating
    /// system: reproducible runs, for experiments and pinned tests, whose ε does not hold.
    pub noise_seed: Option<u64>,
}

impl Plan {
    /// Check the plan for a federation of `clients` members.
    pub fn validate(&self, clients: usize) -> Result<()> {
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(Error::Spec(format!(
                "fraction {} must be in (0, 1]",
                self.fraction
            )));
        }
        if let Some(c) = self.clip
            && !(c.is_finite() && c > 0.0)
        {
            return Err(Error::Spec(format!("clipping norm {c} must be > 0")));
        }
        if self.pre.is_some() && (self.secagg.is_some() || self.dp.is_some()) {
            return Err(Error::Spec(
                "a pre-aggregation needs each client's update: it cannot run with secure \
                 aggregation or differential privacy"
                    .into(),
            ));
        }
        if self.strategy.needs_individual_updates() {
            if self.secagg.is_some() {
                return Err(Error::Spec(format!(
                    "{} needs each client's update, and secure aggregation hides them: use \
                     fedavg, fedprox, fedadam or fedyogi with --secagg (docs/ROBUSTNESS.md)",
                    self.strategy
                )));
            }
            if self.dp.is_some() {
                return Err(Error::Spec(format!(
                    "differential privacy here noises an average of clipped updates; {} is not \
                     one: use fedavg, fedprox, fedadam or fedyogi",
                    self.strategy
                )));
            }
        }
        if let Some(s) = self.secagg {
            if !(s.range.is_finite() && s.range >= 1.0) {
                return Err(Error::Spec(format!(
                    "secure aggregation range {} must be ≥ 1",
                    s.range
                )));
            }
            if clients < 2 {
                return Err(Error::Spec(
                    "secure aggregation needs at least 2 clients".into(),
                ));
            }
        }
        if let Some(dp) = self.dp {
            dp.validate()?;
        }
        Ok(())
    }

    /// The usual number of clients a round selects.
    pub fn usual_selection(&self, clients: usize) -> usize {
        ((self.fraction * clients as f64).round() as usize).clamp(1, clients.max(1))
    }
}

/// The aggregator of a federation of `population` clients: the global model, the rule,
/// the round counter and the privacy spent.
#[derive(Debug)]
pub struct Server {
    plan: Plan,
    aggregator: Aggregator,
    accountant: Accountant,
    /// The same rounds without sampling amplification: what holds against the aggregator,
    /// which knows who was selected (secure aggregation only; without it the aggregator sees
    /// every update).
    insider: Accountant,
    global: Vec<f32>,
    round: u32,
    population: usize,
    /// The randomness of the Poisson sample and the central noise.
    noise: NoiseRng,
}

impl Server {
    /// A federation of `population` clients starting from `global`.
    pub fn new(plan: Plan, global: Vec<f32>, population: usize) -> Result<Self> {
        plan.validate(population)?;
        let noise = match plan.noise_seed {
            Some(seed) => NoiseRng::reproducible(seed),
            None => NoiseRng::from_os()?,
        };
        Ok(Server {
            noise,
            aggregator: Aggregator::new(plan.strategy).with_pre(plan.pre, 0x5eed_b0c4),
            accountant: Accountant::default(),
            insider: Accountant::default(),
            plan,
            global,
            round: 0,
            population,
        })
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The clients the rule excluded in the last round (the screened mean's; empty for
    /// other rules).
    pub fn screened(&self) -> &[u32] {
        self.aggregator.screened()
    }

    /// The current global parameters.
    pub fn global(&self) -> &[f32] {
        &self.global
    }

    /// The last round opened (0 before the first).
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The expected number of clients per round (under DP, the mean divides by it: a
    /// constant, so one client's presence moves the result by at most `C/expected`).
    pub fn expected(&self) -> f64 {
        self.plan.fraction * self.population as f64
    }

    /// Whether DP noise and sampling follow from a seed (then ε does not hold).
    pub fn noise_is_reproducible(&self) -> bool {
        self.noise.is_reproducible()
    }

    /// Choose the next round's clients (indices into the population, ascending): a Poisson
    /// sample under DP with a fraction below 1 (what the accountant's amplification
    /// assumes), drawn from the server's noise generator so that who took part stays
    /// secret; else a uniform sample of the usual size drawn from `rng`.
    pub fn select<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Vec<usize> {
        let n = self.population;
        if self.plan.dp.is_some() && self.plan.fraction < 1.0 {
            let noise = &mut self.noise;
            (0..n)
                .filter(|_| noise.random_bool(self.plan.fraction))
                .collect()
        } else {
            let k = self.plan.usual_selection(n);
            let mut s = rand::seq::index::sample(rng, n, k).into_vec();
            s.sort_unstable();
            s
        }
    }

    /// Open the next round for `selected`: its state, and the model to send them.
    pub fn open(&mut self, selected: &[u32]) -> (Round, GlobalModel) {
        self.round += 1;
        Round::open(self.round, &self.global, selected)
    }

    /// Close a round in the clear: the mean delta by the federation's rule (each update
    /// clipped if the plan clips), or under DP clipped, summed and noised (see
    /// [`Server::central_multiplier`] for what to charge). `None` when no update arrived and
    /// there is no DP (nothing to publish).
    pub fn close(&mut self, round: Round) -> Result<Option<Vec<f32>>> {
        match self.plan.dp {
            Some(dp) => round
                .close_private(&dp, self.expected(), &mut self.noise)
                .map(Some),
            None if round.received().is_empty() => Ok(None),
            None => round.close(&mut self.aggregator, self.plan.clip).map(Some),
        }
    }

    /// The secure-aggregation parameters of the round just opened, for `ids`, each client
    /// masking `len` words; `graph_seed` draws the neighbour graph.
    pub fn secure_params(
        &self,
        ids: &[u32],
        len: usize,
        graph_seed: [u8; 32],
    ) -> Result<RoundParams> {
        let s = self.plan.secagg.unwrap_or_default();
        RoundParams::new(
            self.round as u64,
            ids,
            s.neighbours,
            s.threshold,
            len as u32,
            graph_seed,
        )
    }

    /// How the `clients` of a secure round encode their deltas (`max_weight` bounds any
    /// client's examples).
    pub fn encoding(&self, clients: usize, max_weight: f64) -> Result<SecureEncoding> {
        SecureEncoding::new(
            self.plan.secagg.unwrap_or_default().range,
            self.plan.dp.as_ref(),
            self.global.len(),
            clients,
            max_weight,
            self.expected(),
        )
    }

    /// Apply a round's mean delta to the global model (through the rule's server
    /// optimiser, if it has one).
    pub fn apply(&mut self, mean: &[f32]) {
        self.aggregator.apply_delta(&mut self.global, mean);
    }

    /// The noise multiplier a round closed in the clear under DP really carries (the
    /// sampler's σ over the sum's sensitivity: at least the plan's `z`).
    pub fn central_multiplier(&self) -> Result<Option<f64>> {
        let Some(dp) = self.plan.dp else {
            return Ok(None);
        };
        let (dim, scale) = (self.global.len(), dp.grid_scale());
        let g = dp.sampler(dim, scale, 1)?;
        Ok(Some(dp.multiplier(g.as_ref(), 1, dim, scale)))
    }

    /// Charge the round to the privacy accountant (with DP); returns `(ε, δ)` so far.
    /// `released` is the noise multiplier the published result really carried
    /// ([`Server::central_multiplier`], or under secure aggregation
    /// [`SecureEncoding::multiplier`] of the shares in the sum), or `None` when the round
    /// published nothing (an aborted secure round: nothing is charged, since whether a
    /// round aborts depends on dropouts, not on anyone's data).
    pub fn account(&mut self, released: Option<f64>) -> Result<Option<(f64, f64)>> {
        let Some(dp) = self.plan.dp else {
            return Ok(None);
        };
        if let Some(z) = released {
            let q = if self.plan.fraction < 1.0 {
                self.plan.fraction
            } else {
                1.0
            };
            self.accountant.step(q, z, 1)?;
            self.insider.step(1.0, z, 1)?;
        }
        Ok(Some((self.accountant.epsilon(dp.delta).0, dp.delta)))
    }

    /// Privacy spent so far against the aggregator itself: it knows which clients were
    /// sampled, so the sampling amplification [`Server::privacy`] counts does not hold
    /// against it (ε of the same rounds at q = 1). Under secure aggregation it sees only the
    /// noisy sum; without it, every client's update in the clear (`Some(∞)`). `None` without
    /// DP.
    pub fn privacy_against_aggregator(&self) -> Option<f64> {
        let dp = self.plan.dp?;
        Some(match self.plan.secagg {
            Some(_) => self.insider.epsilon(dp.delta).0,
            None => f64::INFINITY,
        })
    }

    /// Privacy spent so far, `(ε, δ)`, with DP.
    pub fn privacy(&self) -> Option<(f64, f64)> {
        self.plan
            .dp
            .map(|dp| (self.accountant.epsilon(dp.delta).0, dp.delta))
    }
}

/// When each stage of a secure round closes, in milliseconds after the round opened. A
/// stage closes early once every client still in the round has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Key adverts.
    pub adverts: u64,
    /// Encrypted shares.
    pub shares: u64,
    /// Masked inputs.
    pub masked: u64,
    /// Signatures on the survivor list.
    pub confirm: u64,
    /// Unmasking answers.
    pub unmask: u64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            adverts: 10_000,
            shares: 20_000,
            masked: 120_000,
            confirm: 130_000,
            unmask: 140_000,
        }
    }
}

/// A stage of a secure round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Waiting for key adverts.
    Adverts,
    /// Waiting for encrypted shares.
    Shares,
    /// Waiting for masked inputs.
    Masked,
    /// Waiting for signatures on the survivor list.
    Confirm,
    /// Waiting for unmasking answers.
    Unmask,
    /// Finished or aborted.
    Done,
}

/// What closing a stage gives the aggregator to send, or the round's end.
#[derive(Debug)]
pub enum Broadcast {
    /// Each client's key book (after the adverts).
    KeyBooks(Vec<(u32, KeyBook)>),
    /// The shares addressed to each client (after the shares).
    Deliveries(Vec<(u32, ShareDelivery)>),
    /// The survivor list each survivor is to sign (after the masked inputs).
    SurvivorLists(Vec<(u32, SurvivorList)>),
    /// What each client must reveal, with the signatures confirming the list (after the
    /// signatures).
    UnmaskRequests(Vec<(u32, UnmaskRequest)>),
    /// The unmasked sum, or why the round aborted.
    Finished(Result<Outcome>),
}

/// The aggregator's side of one secure round, driven by messages and the clock: each
/// stage closes when its deadline passes or every client still in has answered. Built on
/// [`secagg::Aggregator`], which checks every message.
#[derive(Debug)]
pub struct SecureRound {
    agg: Option<secagg::Aggregator>,
    stage: Stage,
    opened: u64,
    deadlines: Deadlines,
    waiting: BTreeSet<u32>,
}

impl SecureRound {
    /// Open a secure round with `params` at time `now` (milliseconds, any epoch), among
    /// members whose signing keys `directory` holds.
    pub fn open(
        params: RoundParams,
        directory: std::sync::Arc<Directory>,
        now: u64,
        deadlines: Deadlines,
    ) -> Result<Self> {
        let waiting = params.participants.iter().copied().collect();
        Ok(SecureRound {
            agg: Some(secagg::Aggregator::new(params, directory)?),
            stage: Stage::Adverts,
            opened: now,
            deadlines,
            waiting,
        })
    }

    /// The stage the round is in.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The clients whose answer to the current stage has not arrived.
    pub fn waiting_for(&self) -> &BTreeSet<u32> {
        &self.waiting
    }

    /// When the current stage closes at the latest (`None` once done).
    pub fn deadline(&self) -> Option<u64> {
        let d = &self.deadlines;
        let after = match self.stage {
            Stage::Adverts => d.adverts,
            Stage::Shares => d.shares,
            Stage::Masked => d.masked,
            Stage::Confirm => d.confirm,
            Stage::Unmask => d.unmask,
            Stage::Done => return None,
        };
        Some(self.opened.saturating_add(after))
    }

    fn at(&mut self, stage: Stage, client: u32) -> Result<&mut secagg::Aggregator> {
        if self.stage != stage {
            return Err(Error::SecAgg(format!(
                "a {stage:?} message from client {client} while the round is at {:?}",
                self.stage
            )));
        }
        self.agg
            .as_mut()
            .ok_or_else(|| Error::SecAgg("the round has ended".into()))
    }

    /// A client's key advert.
    pub fn receive_advert(&mut self, a: KeyAdvert) -> Result<()> {
        let c = a.client;
        self.at(Stage::Adverts, c)?.receive_advert(a)?;
        self.waiting.remove(&c);
        Ok(())
    }

    /// A client's encrypted shares.
    pub fn receive_shares(&mut self, s: EncryptedShares) -> Result<()> {
        let c = s.client;
        self.at(Stage::Shares, c)?.receive_shares(s)?;
        self.waiting.remove(&c);
        Ok(())
    }

    /// A client's masked input.
    pub fn receive_masked(&mut self, m: MaskedInput) -> Result<()> {
        let c = m.client;
        self.at(Stage::Masked, c)?.receive_masked(m)?;
        self.waiting.remove(&c);
        Ok(())
    }

    /// A client's signature on the survivor list.
    pub fn receive_signature(&mut self, s: SurvivorSignature) -> Result<()> {
        let c = s.client;
        self.at(Stage::Confirm, c)?.receive_signature(s)?;
        self.waiting.remove(&c);
        Ok(())
    }

    /// A client's unmasking answer.
    pub fn receive_unmask(&mut self, r: UnmaskResponse) -> Result<()> {
        let c = r.client;
        self.at(Stage::Unmask, c)?.receive_unmask(r)?;
        self.waiting.remove(&c);
        Ok(())
    }

    /// Close the current stage if its deadline has passed at `now` or no answer is
    /// missing; returns what to send next (or the end), `None` if the stage stays open.
    pub fn tick(&mut self, now: u64) -> Option<Broadcast> {
        let due = self.deadline()?;
        if now < due && !self.waiting.is_empty() {
            return None;
        }
        Some(self.close_stage())
    }

    /// Close the current stage now, whoever has not answered.
    pub fn close_stage(&mut self) -> Broadcast {
        let Some(agg) = self.agg.as_mut() else {
            return Broadcast::Finished(Err(Error::SecAgg("the round has ended".into())));
        };
        let next = match self.stage {
            Stage::Adverts => agg.key_books().map(|b| {
                self.waiting = ids(&b);
                (Stage::Shares, Broadcast::KeyBooks(b))
            }),
            Stage::Shares => agg.deliveries().map(|d| {
                self.waiting = ids(&d);
                (Stage::Masked, Broadcast::Deliveries(d))
            }),
            Stage::Masked => agg.survivor_lists().map(|r| {
                self.waiting = ids(&r);
                (Stage::Confirm, Broadcast::SurvivorLists(r))
            }),
            Stage::Confirm => agg.unmask_requests().map(|r| {
                self.waiting = ids(&r);
                (Stage::Unmask, Broadcast::UnmaskRequests(r))
            }),
            Stage::Unmask | Stage::Done => {
                self.stage = Stage::Done;
                self.waiting.clear();
                let agg = self.agg.take().map(|a| a.finish());
                return Broadcast::Finished(
                    agg.unwrap_or_else(|| Err(Error::SecAgg("the round has ended".into()))),
                );
            }
        };
        match next {
            Ok((stage, b)) => {
                self.stage = stage;
                b
            }
            Err(e) => {
                self.stage = Stage::Done;
                self.waiting.clear();
                self.agg = None;
                Broadcast::Finished(Err(e))
            }
        }
    }
}

/// The clients a stage's messages go to.
fn ids<T>(v: &[(u32, T)]) -> BTreeSet<u32> {
    v.iter().map(|(c, _)| *c).collect()
}
