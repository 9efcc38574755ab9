//! Aggregation strategies: how the aggregator turns clients' updates (each a parameter
//! delta `client − global` with its example count) into the next global model.
//!
//! FedAvg and FedProx average (example-weighted; FedProx differs only in local training);
//! FedAdam and FedYogi treat the average as a pseudo-gradient for a server optimiser
//! (Reddi et al. 2021); the coordinate-wise median, the trimmed mean and (Multi-)Krum
//! resist a minority of malicious updates; per-update L2 clipping bounds any one client's
//! influence (and is what differential privacy needs).
//!
//! On heterogeneous (non-IID) data honest updates differ widely and robust rules lose much
//! of their accuracy. Two pre-aggregations, composable with every rule, close most of that
//! gap: bucketing (Karimireddy, He, Jaggi, ICLR 2022: average random buckets of `s` updates
//! first) and nearest-neighbour mixing (Allouah et al., AISTATS 2023: replace each update by
//! the mean of its `n − f` nearest). Centered clipping (Karimireddy, He, Jaggi, ICML 2021) is
//! a rule of its own: starting from the last round's aggregate (the server's momentum), it
//! moves towards each update by at most `τ`, a few times over.
//!
//! The screened mean (`screened-mean:F`, what `--robust` picks, chosen by the grid in
//! docs/ROBUSTNESS.md) is sov's own composition of known screens, built for heterogeneous
//! data, where a single round's geometry cannot tell an honest outlier from an attacker but
//! a member's record over rounds can. Each round it excludes at most `F` updates, in this
//! order: those longer than twice the round's median norm (norm screening, as FLAME, Nguyen
//! et al., USENIX Security 2022, bounds norms by the median); those pointing against the
//! last aggregate (cosine < −0.5); and those of members whose record, a moving average of
//! their updates' cosine to the last aggregate, has fallen below 0.03 (a trust score in the
//! manner of FLTrust, Cao et al., NDSS 2021, with the federation's own last step as the
//! reference instead of a root data set). The rest, each clipped to 1.75 times the median
//! norm (FLAME clips to the median), are averaged without weights: example counts are
//! claims, and an attacker would claim many.

use std::{collections::BTreeMap, fmt, str::FromStr};

use crate::{Error, Result};

/// One client's contribution to a round.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// Its parameters minus the global parameters it started from.
    pub delta: Vec<f32>,
    /// How many examples it trained on (FedAvg's weight).
    pub examples: usize,
}

/// An aggregation rule, as written on the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    /// `fedavg`
    FedAvg,
    /// `fedprox:MU` (averaging as FedAvg; clients add the proximal term)
    FedProx(f32),
    /// `fedadam`: server Adam, η 0.01, β₁ 0.9, β₂ 0.99, τ 1e-3
    FedAdam,
    /// `fedyogi`: server Yogi, same constants
    FedYogi,
    /// `median`: coordinate-wise median
    Median,
    /// `trimmed-mean:BETA`: per coordinate, drop the BETA fraction at each end, average the rest
    TrimmedMean(f32),
    /// `krum:F` or `krum:F,M`: the M (default 1) updates closest to their n − F − 2 nearest
    /// neighbours, averaged
    Krum {
        /// malicious clients tolerated
        f: usize,
        /// updates kept
        m: usize,
    },
    /// `centered-clip:TAU` or `centered-clip:TAU,L`: from the last aggregate, L (default 3)
    /// steps towards the mean of the updates' differences, each clipped to L2 norm TAU
    CenteredClip {
        /// the clipping radius
        tau: f32,
        /// the iterations
        iters: usize,
    },
    /// `screened-mean:F`: the unweighted mean of the updates left after excluding at most F
    /// by their norm, their direction and their member's record (see the module docs)
    ScreenedMean {
        /// updates excluded at most per round
        f: usize,
    },
}

/// A step before the rule that makes it hold on heterogeneous data, as written on the
/// command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreAggregation {
    /// `bucket:S`: shuffle the updates and average them in buckets of S
    Bucket(usize),
    /// `nnm:F`: replace each update by the mean of its n − F nearest (itself included)
    Nnm(usize),
    /// `median-norm`: clip every update to the median of the round's update norms, so no
    /// update weighs more than a typical honest one (adaptive norm bounding)
    MedianNorm,
}

impl FromStr for PreAggregation {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Spec(format!(
                "pre-aggregation {s:?}: expected bucket:S (S ≥ 1), nnm:F or median-norm"
            ))
        };
        if s == "median-norm" {
            return Ok(PreAggregation::MedianNorm);
        }
        let (name, arg) = s.split_once(':').ok_or_else(bad)?;
        let n: usize = arg.parse().map_err(|_| bad())?;
        match name {
            "bucket" if n >= 1 => Ok(PreAggregation::Bucket(n)),
            "nnm" => Ok(PreAggregation::Nnm(n)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for PreAggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreAggregation::Bucket(s) => write!(f, "bucket:{s}"),
            PreAggregation::Nnm(n) => write!(f, "nnm:{n}"),
            PreAggregation::MedianNorm => f.write_str("median-norm"),
        }
    }
}

impl FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Spec(format!(
                "strategy {s:?}: expected fedavg, fedprox:MU, fedadam, fedyogi, median, \
                 trimmed-mean:BETA (0 ≤ BETA < 0.5), krum:F[,M], centered-clip:TAU[,L] or \
                 screened-mean:F"
            ))
        };
        let (name, arg) = s.split_once(':').unwrap_or((s, ""));
        let num = |a: &str| a.parse::<f32>().ok().filter(|v| v.is_finite());
        match (name, arg) {
            ("fedavg", "") => Ok(Strategy::FedAvg),
            ("fedadam", "") => Ok(Strategy::FedAdam),
            ("fedyogi", "") => Ok(Strategy::FedYogi),
            ("median", "") => Ok(Strategy::Median),
            ("fedprox", a) => num(a)
                .filter(|&mu| mu >= 0.0)
                .map(Strategy::FedProx)
                .ok_or_else(bad),
            ("trimmed-mean", a) => num(a)
                .filter(|b| (0.0..0.5).contains(b))
                .map(Strategy::TrimmedMean)
                .ok_or_else(bad),
            ("krum", a) => {
                let (f, m) = a.split_once(',').unwrap_or((a, "1"));
                let f = f.parse().map_err(|_| bad())?;
                let m: usize = m.parse().map_err(|_| bad())?;
                if m == 0 {
                    return Err(bad());
                }
                Ok(Strategy::Krum { f, m })
            }
            ("screened-mean", a) => Ok(Strategy::ScreenedMean {
                f: a.parse().map_err(|_| bad())?,
            }),
            ("centered-clip", a) => {
                let (tau, iters) = a.split_once(',').unwrap_or((a, "3"));
                let tau = num(tau).filter(|t| *t > 0.0).ok_or_else(bad)?;
                let iters: usize = iters.parse().map_err(|_| bad())?;
                if !(1..=100).contains(&iters) {
                    return Err(bad());
                }
                Ok(Strategy::CenteredClip { tau, iters })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::FedAvg => f.write_str("fedavg"),
            Strategy::FedProx(mu) => write!(f, "fedprox:{mu}"),
            Strategy::FedAdam => f.write_str("fedadam"),
            Strategy::FedYogi => f.write_str("fedyogi"),
            Strategy::Median => f.write_str("median"),
            Strategy::TrimmedMean(b) => write!(f, "trimmed-mean:{b}"),
            Strategy::Krum { f: n, m: 1 } => write!(f, "krum:{n}"),
            Strategy::Krum { f: n, m } => write!(f, "krum:{n},{m}"),
            Strategy::CenteredClip { tau, iters: 3 } => write!(f, "centered-clip:{tau}"),
            Strategy::CenteredClip { tau, iters } => write!(f, "centered-clip:{tau},{iters}"),
            Strategy::ScreenedMean { f: n } => write!(f, "screened-mean:{n}"),
        }
    }
}

impl Strategy {
    /// Whether the rule needs each client's update on its own (and so cannot run on the
    /// sum that secure aggregation reveals).
    pub fn needs_individual_updates(&self) -> bool {
        matches!(
            self,
            Strategy::Median
                | Strategy::TrimmedMean(_)
                | Strategy::Krum { .. }
                | Strategy::CenteredClip { .. }
                | Strategy::ScreenedMean { .. }
        )
    }

    /// FedProx's μ for local training (0 for every other rule).
    pub fn prox_mu(&self) -> f32 {
        match self {
            Strategy::FedProx(mu) => *mu,
            _ => 0.0,
        }
    }
}

const SERVER_LR: f32 = 0.01;
const BETA1: f32 = 0.9;
const BETA2: f32 = 0.99;
const TAU: f32 = 1e-3;

/// The aggregator's side of a strategy, with the server optimiser's state.
#[derive(Debug, Clone)]
pub struct Aggregator {
    strategy: Strategy,
    pre: Option<PreAggregation>,
    /// Seeds bucketing's shuffles (one per aggregation).
    seed: u64,
    rounds: u64,
    /// The last aggregate: centered clipping's starting point, the screened mean's reference.
    last: Vec<f32>,
    /// The screened mean's record of each member (by client id).
    records: BTreeMap<u32, Record>,
    /// The client ids the screened mean excluded in the last round.
    screened: Vec<u32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Aggregator {
    /// A fresh aggregator for `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Aggregator {
            strategy,
            pre: None,
            seed: 0,
            rounds: 0,
            last: Vec::new(),
            records: BTreeMap::new(),
            screened: Vec::new(),
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// The same, with `pre` applied to the updates before the rule; `seed` seeds
    /// bucketing's shuffles.
    pub fn with_pre(mut self, pre: Option<PreAggregation>, seed: u64) -> Self {
        self.pre = pre;
        self.seed = seed;
        self
    }

    /// The pre-aggregation, if any.
    pub fn pre(&self) -> Option<PreAggregation> {
        self.pre
    }

    /// The rule.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The client ids whose updates the screened mean excluded in the last round (empty
    /// for every other rule).
    pub fn screened(&self) -> &[u32] {
        &self.screened
    }

    /// Apply this round's `updates` to `global`.
    pub fn apply(&mut self, global: &mut [f32], updates: &[Update]) -> Result<()> {
        let delta = self.combine(updates, global.len())?;
        self.apply_delta(global, &delta);
        Ok(())
    }

    /// Apply an already combined delta (e.g. the average that secure aggregation revealed)
    /// to `global`, through the server optimiser if the rule has one.
    pub fn apply_delta(&mut self, global: &mut [f32], delta: &[f32]) {
        match self.strategy {
            Strategy::FedAdam | Strategy::FedYogi => {
                if self.m.len() != global.len() {
                    self.m = vec![0.0; global.len()];
                    self.v = vec![TAU * TAU; global.len()];
                }
                let yogi = self.strategy == Strategy::FedYogi;
                for i in 0..global.len() {
                    let d = delta[i];
                    self.m[i] = BETA1 * self.m[i] + (1.0 - BETA1) * d;
                    let d2 = d * d;
                    self.v[i] = if yogi {
                        self.v[i] - (1.0 - BETA2) * d2 * (self.v[i] - d2).signum()
                    } else {
                        BETA2 * self.v[i] + (1.0 - BETA2) * d2
                    };
                    global[i] += SERVER_LR * self.m[i] / (self.v[i].sqrt() + TAU);
                }
            }
            _ => {
                for (g, d) in global.iter_mut().zip(delta) {
                    *g += d;
                }
            }
        }
    }

    /// The combined delta of `updates` (each of `len` values), client `i` being member `i`.
    pub fn combine(&mut self, updates: &[Update], len: usize) -> Result<Vec<f32>> {
        let members: Vec<u32> = (0..updates.len() as u32).collect();
        self.combine_members(&members, updates, len)
    }

    /// The combined delta of `updates` (each of `len` values) from clients `members` (the
    /// screened mean keeps a record of each).
    pub fn combine_members(
        &mut self,
        members: &[u32],
        updates: &[Update],
        len: usize,
    ) -> Result<Vec<f32>> {
        if members.len() != updates.len() {
            return Err(Error::Spec(format!(
                "{} updates from {} members",
                updates.len(),
                members.len()
            )));
        }
        if updates.is_empty() {
            return Err(Error::Spec("no updates to aggregate".into()));
        }
        if let Some(u) = updates.iter().find(|u| u.delta.len() != len) {
            return Err(Error::Spec(format!(
                "an update has {} values, the model {len}",
                u.delta.len()
            )));
        }
        self.rounds += 1;
        self.screened.clear();
        // A pre-aggregation mixes updates: members' records only follow their own.
        let members = if self.pre.is_none() {
            Some(members)
        } else {
            None
        };
        let mixed;
        let updates = match self.pre {
            None => updates,
            Some(PreAggregation::Bucket(s)) => {
                mixed = bucket(
                    updates,
                    s,
                    self.seed ^ self.rounds.wrapping_mul(0x9e37_79b9),
                );
                &mixed
            }
            Some(PreAggregation::Nnm(f)) => {
                mixed = nearest_neighbour_mix(updates, f);
                &mixed
            }
            Some(PreAggregation::MedianNorm) => {
                mixed = clip_to_median_norm(updates);
                &mixed
            }
        };
        Ok(match self.strategy {
            Strategy::FedAvg | Strategy::FedProx(_) | Strategy::FedAdam | Strategy::FedYogi => {
                weighted_mean(updates, len)
            }
            Strategy::CenteredClip { tau, iters } => {
                if self.last.len() != len {
                    self.last = vec![0.0; len];
                }
                let v = centered_clip(updates, &self.last, tau, iters);
                self.last.clone_from(&v);
                v
            }
            Strategy::ScreenedMean { f } => {
                let (v, out) = screened_mean(updates, members, &self.last, &mut self.records, f);
                self.screened = out;
                self.last.clone_from(&v);
                v
            }
            Strategy::Median => coordinate_wise(updates, len, median),
            Strategy::TrimmedMean(beta) => {
                let k = (beta * updates.len() as f32).floor() as usize;
                coordinate_wise(updates, len, |v| trimmed_mean(v, k))
            }
            Strategy::Krum { f, m } => krum(updates, f, m),
        })
    }
}

/// The recommended robust rule (`--robust`; docs/ROBUSTNESS.md shows the measurements that
/// chose it): the screened mean, excluding per round at most the attackers a round of
/// `selected` clients holds when a `share` of all clients attack, rounded up. Refused
/// without an honest majority.
pub fn robust(selected: usize, share: f64) -> Result<Strategy> {
    if !(0.0..0.5).contains(&share) {
        return Err(Error::Spec(format!(
            "robust aggregation needs a majority of honest clients; {share} are assumed to attack"
        )));
    }
    Ok(Strategy::ScreenedMean {
        f: (share * selected as f64 - 1e-9).ceil().max(0.0) as usize,
    })
}

/// Example-weighted mean (plain mean when no update reports examples).
pub fn weighted_mean(updates: &[Update], len: usize) -> Vec<f32> {
    let total: f64 = updates.iter().map(|u| u.examples as f64).sum();
    let mut acc = vec![0f64; len];
    for u in updates {
        let w = if total > 0.0 {
            u.examples as f64 / total
        } else {
            1.0 / updates.len() as f64
        };
        for (a, d) in acc.iter_mut().zip(&u.delta) {
            *a += w * f64::from(*d);
        }
    }
    acc.into_iter().map(|a| a as f32).collect()
}

fn coordinate_wise(updates: &[Update], len: usize, f: impl Fn(&mut [f32]) -> f32) -> Vec<f32> {
    let mut column = vec![0f32; updates.len()];
    (0..len)
        .map(|i| {
            for (c, u) in column.iter_mut().zip(updates) {
                *c = u.delta[i];
            }
            f(&mut column)
        })
        .collect()
}

fn median(v: &mut [f32]) -> f32 {
    v.sort_unstable_by(f32::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn trimmed_mean(v: &mut [f32], k: usize) -> f32 {
    v.sort_unstable_by(f32::total_cmp);
    let kept = &v[k..v.len() - k];
    (kept.iter().map(|&x| f64::from(x)).sum::<f64>() / kept.len() as f64) as f32
}

fn krum(updates: &[Update], f: usize, m: usize) -> Vec<f32> {
    let n = updates.len();
    let neighbours = n.saturating_sub(f + 2).max(1);
    let dist = distances(updates);
    let mut scores: Vec<(f64, usize)> = (0..n)
        .map(|i| {
            let mut d: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| dist[i][j]).collect();
            d.sort_unstable_by(f64::total_cmp);
            (d.iter().take(neighbours).sum(), i)
        })
        .collect();
    scores.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let chosen: Vec<Update> = scores
        .iter()
        .take(m.min(n))
        .map(|&(_, i)| Update {
            delta: updates[i].delta.clone(),
            examples: 1,
        })
        .collect();
    weighted_mean(&chosen, updates[0].delta.len())
}

/// Bucketing: the updates shuffled (by `seed`) and averaged in buckets of `s`, each bucket
/// weighing its updates by examples and carrying their total.
pub fn bucket(updates: &[Update], s: usize, seed: u64) -> Vec<Update> {
    use rand::{SeedableRng as _, seq::SliceRandom as _};
    let mut order: Vec<usize> = (0..updates.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let len = updates.first().map_or(0, |u| u.delta.len());
    order
        .chunks(s.max(1))
        .map(|chunk| {
            let members: Vec<Update> = chunk.iter().map(|&i| updates[i].clone()).collect();
            Update {
                delta: weighted_mean(&members, len),
                examples: members.iter().map(|u| u.examples).sum(),
            }
        })
        .collect()
}

/// Nearest-neighbour mixing: each update replaced by the mean of the `n − f` updates
/// nearest to it in L2 distance (itself included).
pub fn nearest_neighbour_mix(updates: &[Update], f: usize) -> Vec<Update> {
    let n = updates.len();
    let keep = n.saturating_sub(f).max(1);
    let dist = distances(updates);
    let len = updates.first().map_or(0, |u| u.delta.len());
    (0..n)
        .map(|i| {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| dist[i][a].total_cmp(&dist[i][b]).then(a.cmp(&b)));
            let members: Vec<Update> = order[..keep]
                .iter()
                .map(|&j| Update {
                    delta: updates[j].delta.clone(),
                    examples: 1,
                })
                .collect();
            Update {
                delta: weighted_mean(&members, len),
                examples: updates[i].examples,
            }
        })
        .collect()
}

/// Every update clipped to the median of the updates' L2 norms.
pub fn clip_to_median_norm(updates: &[Update]) -> Vec<Update> {
    let mut norms: Vec<f32> = updates.iter().map(|u| l2_norm(&u.delta)).collect();
    let bound = median(&mut norms);
    updates
        .iter()
        .map(|u| {
            let mut delta = u.delta.clone();
            clip_l2(&mut delta, bound);
            Update {
                delta,
                examples: u.examples,
            }
        })
        .collect()
}

/// Squared L2 distances between every pair of updates.
fn distances(updates: &[Update]) -> Vec<Vec<f64>> {
    let n = updates.len();
    let mut dist = vec![vec![0f64; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let d: f64 = updates[i]
                .delta
                .iter()
                .zip(&updates[j].delta)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            dist[i][j] = d;
            dist[j][i] = d;
        }
    }
    dist
}

/// Centered clipping: from `center`, `iters` times, move by the mean of the updates'
/// differences from the current point, each clipped to L2 norm `tau`.
pub fn centered_clip(updates: &[Update], center: &[f32], tau: f32, iters: usize) -> Vec<f32> {
    let mut v: Vec<f32> = center.to_vec();
    let n = updates.len().max(1) as f32;
    for _ in 0..iters {
        let mut step = vec![0f32; v.len()];
        for u in updates {
            let mut diff: Vec<f32> = u.delta.iter().zip(&v).map(|(x, c)| x - c).collect();
            clip_l2(&mut diff, tau);
            for (s, d) in step.iter_mut().zip(&diff) {
                *s += d / n;
            }
        }
        for (x, s) in v.iter_mut().zip(&step) {
            *x += s;
        }
    }
    v
}

/// An update longer than this many times the round's median norm is screened out.
const SCREEN_NORM: f32 = 2.0;
/// The updates kept are clipped to this many times the round's median norm: an attacker
/// whose updates stay long round after round (a label flipper fights the model on its own
/// data) weighs little more than an honest member. Tighter clips cost more against ALIE
/// where honest members hold data nobody else has (their long updates are what carries it):
/// docs/ROBUSTNESS.md has the measurements that chose 1.75.
const SCREEN_CLIP: f32 = 1.75;
/// An update whose cosine to the last aggregate is below this is screened out.
const SCREEN_OPPOSED: f64 = -0.5;
/// A member whose record (moving average of cosines to the last aggregate) is below this is
/// screened out.
const SCREEN_TRUST: f64 = 0.03;
/// The record's memory: each round's cosine enters with weight 1 − this.
const SCREEN_MEMORY: f64 = 0.8;

/// A member's record under the screened mean: an exponential moving average of its
/// updates' cosines to the last aggregate, starting from zero, so that trust is earned: a
/// newcomer must agree for a round or two before it clears the bar (and while it has not,
/// it is only excluded within the round's allowance of `F`).
#[derive(Debug, Clone, Copy, Default)]
struct Record(f64);

impl Record {
    fn add(&mut self, cosine: f64) -> f64 {
        self.0 = SCREEN_MEMORY * self.0 + (1.0 - SCREEN_MEMORY) * cosine;
        self.0
    }
}

/// The screened mean (module docs): the aggregate and the members excluded (or, with no
/// `members`, the excluded updates' positions). At most `f` (and fewer than half) are
/// excluded: first updates longer than twice the median norm (longest first), then those
/// opposed to `last` (most opposed first), then those whose member's record fell below
/// the trust bar (lowest first). Without a `last` aggregate (the first round), only norms
/// screen. The rest are clipped to 1.75 times the median norm and averaged.
fn screened_mean(
    updates: &[Update],
    members: Option<&[u32]>,
    last: &[f32],
    records: &mut BTreeMap<u32, Record>,
    f: usize,
) -> (Vec<f32>, Vec<u32>) {
    let n = updates.len();
    let len = updates.first().map_or(0, |u| u.delta.len());
    let f = f.min(n.saturating_sub(1) / 2);
    let norms: Vec<f32> = updates.iter().map(|u| l2_norm(&u.delta)).collect();
    let median_norm = median(&mut norms.clone());
    let (bound, clip) = (SCREEN_NORM * median_norm, SCREEN_CLIP * median_norm);
    let last_norm = l2_norm(last);
    let reference = (last.len() == len && last_norm > 0.0).then_some(last);
    // (screen, severity, position): lower screens go first, then higher severity.
    let mut suspects: Vec<(u8, f64, usize)> = Vec::new();
    for (i, u) in updates.iter().enumerate() {
        let cosine = reference.map(|r| {
            dot(&u.delta, r) / (f64::from(norms[i]) * f64::from(last_norm)).max(f64::MIN_POSITIVE)
        });
        let record = match (cosine, members) {
            (Some(c), Some(m)) => Some(records.entry(m[i]).or_default().add(c)),
            _ => None,
        };
        if norms[i] > bound {
            suspects.push((0, f64::from(norms[i]), i));
        } else if let Some(c) = cosine.filter(|&c| c < SCREEN_OPPOSED) {
            suspects.push((1, -c, i));
        } else if let Some(r) = record.filter(|&r| r < SCREEN_TRUST) {
            suspects.push((2, -r, i));
        }
    }
    suspects.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
    let mut out: Vec<usize> = suspects.iter().take(f).map(|s| s.2).collect();
    out.sort_unstable();
    let kept: Vec<Update> = updates
        .iter()
        .enumerate()
        .filter(|(i, _)| out.binary_search(i).is_err())
        .map(|(_, u)| {
            let mut delta = u.delta.clone();
            clip_l2(&mut delta, clip);
            Update { delta, examples: 1 }
        })
        .collect();
    let ids = out
        .iter()
        .map(|&i| members.map_or(i as u32, |m| m[i]))
        .collect();
    (weighted_mean(&kept, len), ids)
}

/// The dot product of `a` and `b` (summed in f64).
fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// The L2 norm of `v` (summed in f64).
fn l2_norm(v: &[f32]) -> f32 {
    dot(v, v).sqrt() as f32
}

/// Scale `delta` down to L2 norm `c` if it is longer; returns the norm before.
pub fn clip_l2(delta: &mut [f32], c: f32) -> f32 {
    let norm = l2_norm(delta);
    if norm > c && norm > 0.0 {
        let s = c / norm;
        for x in delta.iter_mut() {
            *x *= s;
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn up(delta: &[f32], examples: usize) -> Update {
        Update {
            delta: delta.to_vec(),
            examples,
        }
    }

    /// Five honest updates near (1, 2) and two wild ones.
    fn wild_minority() -> Vec<Update> {
        let honest = [
            [1.0f32, 2.0],
            [1.1, 2.1],
            [0.9, 1.9],
            [1.0, 2.05],
            [1.05, 1.95],
        ];
        let mut ups: Vec<Update> = honest.iter().map(|d| up(d, 10)).collect();
        ups.push(up(&[-100.0, 500.0], 10));
        ups.push(up(&[80.0, -300.0], 10));
        ups
    }

    #[test]
    fn strategies_parse_and_print_back() {
        for s in [
            "fedavg",
            "fedprox:0.01",
            "fedadam",
            "fedyogi",
            "median",
            "trimmed-mean:0.2",
            "krum:2",
            "krum:2,3",
            "centered-clip:0.5",
            "centered-clip:0.5,1",
            "screened-mean:4",
        ] {
            assert_eq!(s.parse::<Strategy>().unwrap().to_string(), s);
        }
        for s in ["bucket:2", "nnm:4", "median-norm"] {
            assert_eq!(s.parse::<PreAggregation>().unwrap().to_string(), s);
        }
        for s in ["bucket:0", "bucket", "nnm:x", "mix:2"] {
            assert!(s.parse::<PreAggregation>().is_err(), "{s}");
        }
        for s in [
            "fedavg:1",
            "trimmed-mean:0.5",
            "krum:x",
            "krum:1,0",
            "fedprox:-1",
            "avg",
            "centered-clip:0",
            "centered-clip:1,0",
            "screened-mean:",
            "screened-mean:-1",
        ] {
            assert!(s.parse::<Strategy>().is_err(), "{s}");
        }
    }

    #[test]
    fn the_screened_mean_excludes_long_opposed_and_distrusted_updates() {
        let norm = |d: &[f32]| d.iter().map(|x| x * x).sum::<f32>().sqrt();
        // First round, no last aggregate: only norms screen. The two wild updates go, the
        // rest are averaged without weights.
        let ups = wild_minority();
        let mut a = Aggregator::new("screened-mean:2".parse().unwrap());
        let d = a.combine(&ups, 2).unwrap();
        assert_eq!(a.screened(), &[5, 6]);
        assert!(
            (d[0] - 1.01).abs() < 1e-4 && (d[1] - 2.0).abs() < 1e-4,
            "{d:?}"
        );
        // Allowed to exclude one, it excludes the longest and clips the other to twice the
        // median norm, so the aggregate moves by at most that over n.
        let mut one = Aggregator::new("screened-mean:1".parse().unwrap());
        let d = one.combine(&ups, 2).unwrap();
        assert_eq!(one.screened(), &[5]);
        let honest = norm(&ups[0].delta);
        assert!(
            norm(&[d[0] - 1.0, d[1] - 2.0]) < 2.2 * honest * 2.0 / 6.0,
            "{d:?}"
        );
        // Never half or more, whatever F says.
        let mut greedy = Aggregator::new("screened-mean:10".parse().unwrap());
        greedy.combine(&ups, 2).unwrap();
        assert!(greedy.screened().len() <= 3);

        // Later rounds, by member id (positions shuffle): member 7 points against the last
        // aggregate; member 8 at a slight angle against it, of honest length and far from
        // opposed, which only its record catches; member 9 is an honest outlier (another
        // direction, still agreeing) and stays.
        let mut a = Aggregator::new("screened-mean:3".parse().unwrap());
        let round = |a: &mut Aggregator, r: usize| {
            let mut ups: Vec<(u32, Update)> = vec![
                (1, up(&[1.0, 2.0, 0.0], 1)),
                (2, up(&[1.1, 2.1, 0.1], 1)),
                (3, up(&[0.9, 1.9, -0.1], 1)),
                (4, up(&[1.0, 2.05, 0.0], 1)),
                (5, up(&[1.05, 1.95, 0.05], 1)),
                (6, up(&[0.95, 2.0, 0.0], 1)),
                (9, up(&[1.0, 0.0, 2.0], 1)),
            ];
            if r > 0 {
                ups.push((7, up(&[-1.0, -2.0, 0.0], 1)));
                ups.push((8, up(&[-0.6, 0.0, 1.6], 1)));
            }
            let n = ups.len();
            ups.rotate_left(r % n);
            let (ids, ups): (Vec<u32>, Vec<Update>) = ups.into_iter().unzip();
            let d = a.combine_members(&ids, &ups, 3).unwrap();
            let mut out = a.screened().to_vec();
            out.sort_unstable();
            (d, out)
        };
        round(&mut a, 0);
        let (d, out) = round(&mut a, 1);
        assert_eq!(out, vec![7, 8], "{d:?}");
        for r in 2..6 {
            let (d, out) = round(&mut a, r);
            assert_eq!(out, vec![7, 8], "round {r}: {d:?}");
            assert!(d[0] > 0.8 && d[1] > 1.5 && d[2] < 0.4, "round {r}: {d:?}");
        }
        assert!(a.combine_members(&[1], &[], 3).is_err());
    }

    #[test]
    fn fedavg_weights_by_examples() {
        let mut a = Aggregator::new(Strategy::FedAvg);
        let d = a
            .combine(&[up(&[1.0, 0.0], 1), up(&[4.0, 3.0], 2)], 2)
            .unwrap();
        assert_eq!(d, vec![3.0, 2.0]);
        assert!(a.combine(&[up(&[1.0], 1)], 2).is_err());
        assert!(a.combine(&[], 2).is_err());
    }

    #[test]
    fn robust_rules_ignore_a_wild_minority() {
        let ups = wild_minority();
        for s in ["median", "trimmed-mean:0.3", "krum:2", "krum:2,3"] {
            let d = Aggregator::new(s.parse().unwrap())
                .combine(&ups, 2)
                .unwrap();
            assert!(
                (d[0] - 1.0).abs() < 0.15 && (d[1] - 2.0).abs() < 0.15,
                "{s}: {d:?}"
            );
        }
        let avg = Aggregator::new(Strategy::FedAvg).combine(&ups, 2).unwrap();
        assert!((avg[1] - 2.0).abs() > 10.0, "{avg:?}");
    }

    #[test]
    fn pre_aggregation_and_centered_clipping_hold_against_a_wild_minority() {
        let ups = wild_minority();
        // Mixing with the n − f nearest: every honest update stays among honest ones.
        for rule in ["median", "krum:2", "trimmed-mean:0.3"] {
            let d = Aggregator::new(rule.parse().unwrap())
                .with_pre(Some(PreAggregation::Nnm(2)), 1)
                .combine(&ups, 2)
                .unwrap();
            assert!(
                (d[0] - 1.0).abs() < 0.2 && (d[1] - 2.0).abs() < 0.2,
                "nnm + {rule}: {d:?}"
            );
        }
        // Buckets of one are the updates themselves (shuffled); one bucket is the mean.
        let plain = Aggregator::new(Strategy::Median).combine(&ups, 2).unwrap();
        let ones = Aggregator::new(Strategy::Median)
            .with_pre(Some(PreAggregation::Bucket(1)), 7)
            .combine(&ups, 2)
            .unwrap();
        assert_eq!(plain, ones);
        let all = Aggregator::new(Strategy::Median)
            .with_pre(Some(PreAggregation::Bucket(ups.len())), 7)
            .combine(&ups, 2)
            .unwrap();
        assert_eq!(all, weighted_mean(&ups, 2));
        // Centered clipping: each round starts from the last aggregate and converges on the
        // honest updates; the outliers move it by at most τ each step.
        let mut cc = Aggregator::new("centered-clip:1".parse().unwrap());
        let mut d = Vec::new();
        for _ in 0..6 {
            d = cc.combine(&ups, 2).unwrap();
        }
        assert!(
            (d[0] - 1.0).abs() < 0.6 && (d[1] - 2.0).abs() < 0.6,
            "centered clipping: {d:?}"
        );
        let avg = weighted_mean(&ups, 2);
        assert!((avg[1] - 2.0).abs() > 10.0);
        // Median-norm clipping: the wild updates shrink to a typical honest norm.
        let clipped = clip_to_median_norm(&ups);
        let norm = |d: &[f32]| d.iter().map(|x| x * x).sum::<f32>().sqrt();
        let typical = norm(&ups[0].delta);
        assert!(clipped.iter().all(|u| norm(&u.delta) <= typical * 1.1));
        assert_eq!(clipped[0], ups[0]);
    }

    #[test]
    fn server_optimisers_move_along_the_average() {
        for s in [Strategy::FedAdam, Strategy::FedYogi] {
            let mut a = Aggregator::new(s);
            let mut g = vec![0.0f32; 2];
            for _ in 0..10 {
                a.apply(&mut g, &[up(&[1.0, -1.0], 1)]).unwrap();
            }
            assert!(g[0] > 0.05 && g[1] < -0.05, "{s}: {g:?}");
        }
    }

    #[test]
    fn clipping_bounds_the_norm() {
        let mut d = vec![3.0f32, 4.0];
        assert_eq!(clip_l2(&mut d, 1.0), 5.0);
        assert!((d[0] - 0.6).abs() < 1e-6 && (d[1] - 0.8).abs() < 1e-6);
        let mut small = vec![0.1f32, 0.0];
        clip_l2(&mut small, 1.0);
        assert_eq!(small, vec![0.1, 0.0]);
    }
}
