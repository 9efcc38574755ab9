//! Aggregation strategies: how the aggregator turns clients' updates (each a parameter
//! delta `client − global` with its example count) into the next global model.
//!
//! FedAvg and FedProx average (example-weighted; FedProx differs only in local training);
//! FedAdam and FedYogi treat the average as a pseudo-gradient for a server optimiser
//! (Reddi et al. 2021); the coordinate-wise median, the trimmed mean and (Multi-)Krum
//! resist a minority of malicious updates; per-update L2 clipping bounds any one client's
//! influence (and is what differential privacy needs).

use std::{fmt, str::FromStr};

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
}

impl FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Spec(format!(
                "strategy {s:?}: expected fedavg, fedprox:MU, fedadam, fedyogi, median, \
                 trimmed-mean:BETA (0 ≤ BETA < 0.5) or krum:F[,M]"
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
        }
    }
}

impl Strategy {
    /// Whether the rule needs each client's update on its own (and so cannot run on the
    /// sum that secure aggregation reveals).
    pub fn needs_individual_updates(&self) -> bool {
        matches!(
            self,
            Strategy::Median | Strategy::TrimmedMean(_) | Strategy::Krum { .. }
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
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Aggregator {
    /// A fresh aggregator for `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Aggregator {
            strategy,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// The rule.
    pub fn strategy(&self) -> Strategy {
        self.strategy
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

    /// The combined delta of `updates` (each of `len` values).
    pub fn combine(&self, updates: &[Update], len: usize) -> Result<Vec<f32>> {
        if updates.is_empty() {
            return Err(Error::Spec("no updates to aggregate".into()));
        }
        if let Some(u) = updates.iter().find(|u| u.delta.len() != len) {
            return Err(Error::Spec(format!(
                "an update has {} values, the model {len}",
                u.delta.len()
            )));
        }
        Ok(match self.strategy {
            Strategy::FedAvg | Strategy::FedProx(_) | Strategy::FedAdam | Strategy::FedYogi => {
                weighted_mean(updates, len)
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

/// Scale `delta` down to L2 norm `c` if it is longer; returns the norm before.
pub fn clip_l2(delta: &mut [f32], c: f32) -> f32 {
    let norm = delta
        .iter()
        .map(|&x| f64::from(x).powi(2))
        .sum::<f64>()
        .sqrt() as f32;
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
        ] {
            assert_eq!(s.parse::<Strategy>().unwrap().to_string(), s);
        }
        for s in [
            "fedavg:1",
            "trimmed-mean:0.5",
            "krum:x",
            "krum:1,0",
            "fedprox:-1",
            "avg",
        ] {
            assert!(s.parse::<Strategy>().is_err(), "{s}");
        }
    }

    #[test]
    fn fedavg_weights_by_examples() {
        let a = Aggregator::new(Strategy::FedAvg);
        let d = a
            .combine(&[up(&[1.0, 0.0], 1), up(&[4.0, 3.0], 2)], 2)
            .unwrap();
        assert_eq!(d, vec![3.0, 2.0]);
        assert!(a.combine(&[up(&[1.0], 1)], 2).is_err());
        assert!(a.combine(&[], 2).is_err());
    }

    #[test]
    fn robust_rules_ignore_a_wild_minority() {
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
