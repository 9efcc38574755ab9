//! Differential privacy at the level of clients: each client's update is clipped to an L2
//! norm `C`, Gaussian noise of standard deviation `z·C` is added to the sum (by the
//! aggregator, or in shares by the clients under secure aggregation), and an RDP accountant
//! turns the rounds into (ε, δ).
//!
//! Noise is drawn as a **discrete Gaussian** on the fixed-point grid (Canonne, Kamath and
//! Steinke 2020), exactly, with integer arithmetic: textbook floating-point Gaussian
//! sampling leaks through the gaps between representable values (Mironov 2012). On a grid
//! of `s` points per unit, the sum of clipped, rounded updates has L2 sensitivity at most
//! `C·s + √d` (rounding moves each coordinate by at most one half), and discrete Gaussian
//! noise of scale `σ = z·(C·s + √d)` gives the same Rényi DP as continuous noise of
//! multiplier `z` (CKS20, Proposition 14).
//!
//! The accountant is the RDP analysis of the Poisson-subsampled Gaussian mechanism
//! (Mironov, Talwar and Zhang 2019), as in Opacus and Google's dp-accounting, with the
//! conversion to (ε, δ) of Balle et al. 2020.
//!
//! The noise and the Poisson sample are only as private as their randomness: both are drawn
//! from a [`NoiseRng`], a ChaCha generator seeded by the operating system. A seeded one
//! exists for reproducible experiments, and says of itself that ε does not hold.

use std::convert::Infallible;

use rand::{CryptoRng, Rng, SeedableRng, TryCryptoRng, TryRng, rngs::StdRng};

use crate::{Error, Result};

/// The randomness differential privacy rests on: the noise and the Poisson sample of
/// clients. From the operating system, nobody can regenerate the noise and subtract it, or
/// tell who was sampled. [`NoiseRng::reproducible`] gives the same draws for the same
/// seed, for experiments and pinned tests, and with it the reported ε does not hold.
///
/// The sampling functions take this type (or at least a [`CryptoRng`]), so a simulation's
/// seeded generator cannot be passed where privacy needs the operating system's.
pub struct NoiseRng {
    inner: StdRng,
    reproducible: bool,
}

impl NoiseRng {
    /// A generator seeded by the operating system.
    pub fn from_os() -> Result<Self> {
        let inner = StdRng::try_from_rng(&mut rand::rngs::SysRng).map_err(|e| {
            Error::Spec(format!(
                "the operating system gave no randomness for DP noise: {e}"
            ))
        })?;
        Ok(NoiseRng {
            inner,
            reproducible: false,
        })
    }

    /// A generator that draws the same noise for the same `seed`. Anyone who knows the seed
    /// regenerates the noise and removes it: ε does not hold.
    pub fn reproducible(seed: u64) -> Self {
        NoiseRng {
            inner: StdRng::seed_from_u64(seed),
            reproducible: true,
        }
    }

    /// Whether the draws follow from a seed (so ε does not hold).
    pub fn is_reproducible(&self) -> bool {
        self.reproducible
    }
}

impl std::fmt::Debug for NoiseRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the state: it predicts the noise.
        f.debug_struct("NoiseRng")
            .field("reproducible", &self.reproducible)
            .finish_non_exhaustive()
    }
}

impl TryRng for NoiseRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> std::result::Result<u32, Infallible> {
        self.inner.try_next_u32()
    }

    fn try_next_u64(&mut self) -> std::result::Result<u64, Infallible> {
        self.inner.try_next_u64()
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> std::result::Result<(), Infallible> {
        self.inner.try_fill_bytes(dst)
    }
}

impl TryCryptoRng for NoiseRng {}

/// The RDP orders dp-accounting 0.6.0 uses by default: 1.1 to 11 by tenths, 12 to 63, and
/// 128, 256, 512, 1024.
pub fn default_orders() -> Vec<f64> {
    let mut o: Vec<f64> = (1..=100).map(|x| 1.0 + x as f64 / 10.0).collect();
    o.extend((12..64).map(|x| x as f64));
    o.extend([128.0, 256.0, 512.0, 1024.0]);
    o
}

fn log_add(a: f64, b: f64) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    (lo - hi).exp().ln_1p() + hi
}

fn log_sub(a: f64, b: f64) -> f64 {
    if b == f64::NEG_INFINITY {
        return a;
    }
    if a <= b {
        return f64::NEG_INFINITY;
    }
    let d = (a - b).exp_m1();
    if d.is_finite() { d.ln() + b } else { a }
}

/// `ln erfc(x)`, accurate also where `erfc` underflows.
fn log_erfc(x: f64) -> f64 {
    if x < 25.0 {
        return libm::erfc(x).ln();
    }
    // Asymptotic series: erfc(x) = e^{-x²}/(x√π) · (1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶) + …)
    let x2 = x * x;
    let mut term = 1.0;
    let mut series = 1.0;
    for k in 1..8 {
        term *= -((2 * k - 1) as f64) / (2.0 * x2);
        series += term;
    }
    -x2 - x.ln() - 0.5 * std::f64::consts::PI.ln() + series.ln()
}

/// Terms a fractional order's series may take before the order is given up (as
/// dp-accounting does: dropping an order only makes ε larger, never smaller).
const MAX_TERMS: usize = 1000;

fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let mut log_a = f64::NEG_INFINITY;
    let mut log_binom = 0.0;
    for i in 0..=alpha {
        if i > 0 {
            log_binom += ((alpha - i + 1) as f64).ln() - (i as f64).ln();
        }
        let i_f = i as f64;
        let s = log_binom
            + i_f * q.ln()
            + (alpha - i) as f64 * (-q).ln_1p()
            + (i_f * i_f - i_f) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, s);
    }
    log_a
}

/// How the series of a fractional order is summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Series {
    /// Every term counted with its absolute value: an upper bound on the exact series, so
    /// ε is never understated, whatever the rounding. What dp-accounting 0.6.0 does, and
    /// what sov reports.
    #[default]
    Conservative,
    /// Terms with their signs (Mironov, Talwar and Zhang 2019 §3.3, as Opacus sums them):
    /// tighter, but it subtracts nearly equal numbers.
    Exact,
}

fn log_a_frac(q: f64, sigma: f64, alpha: f64, series: Series) -> Option<f64> {
    let (mut a0, mut a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (mut last0, mut last1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let mut coef = 1.0f64;
    let sq = std::f64::consts::SQRT_2 * sigma;
    for i in 0..MAX_TERMS {
        let i_f = i as f64;
        if i > 0 {
            coef *= (alpha - i_f + 1.0) / i_f;
        }
        let log_coef = coef.abs().ln();
        let j = alpha - i_f;
        let t0 = log_coef + i_f * q.ln() + j * (-q).ln_1p();
        let t1 = log_coef + j * q.ln() + i_f * (-q).ln_1p();
        let e0 = 0.5f64.ln() + log_erfc((i_f - z0) / sq);
        let e1 = 0.5f64.ln() + log_erfc((z0 - j) / sq);
        let s0 = t0 + (i_f * i_f - i_f) / (2.0 * sigma * sigma) + e0;
        let s1 = t1 + (j * j - j) / (2.0 * sigma * sigma) + e1;
        match series {
            Series::Exact => {
                if coef > 0.0 {
                    a0 = log_add(a0, s0);
                    a1 = log_add(a1, s1);
                } else {
                    a0 = log_sub(a0, s0);
                    a1 = log_sub(a1, s1);
                }
                if s0.max(s1) < -30.0 {
                    return Some(log_add(a0, a1));
                }
            }
            Series::Conservative => {
                a0 = log_add(a0, s0);
                a1 = log_add(a1, s1);
                let total = log_add(a0, a1);
                // Stop once both halves shrink and are negligible against the total.
                if s0 < last0 && s1 < last1 && s0.max(s1) < total - 30.0 {
                    return Some(total);
                }
                (last0, last1) = (s0, s1);
            }
        }
    }
    None
}

/// RDP of one step of the Gaussian mechanism with noise multiplier `sigma`, applied to a
/// Poisson sample of rate `q`, at order `alpha`; `None` where the series does not settle.
pub fn rdp_step(q: f64, sigma: f64, alpha: f64, series: Series) -> Option<f64> {
    if q == 0.0 {
        return Some(0.0);
    }
    if sigma == 0.0 || alpha.is_infinite() {
        return Some(f64::INFINITY);
    }
    if q >= 1.0 {
        return Some(alpha / (2.0 * sigma * sigma));
    }
    let log_a = if alpha.fract() == 0.0 {
        log_a_int(q, sigma, alpha as u64)
    } else {
        log_a_frac(q, sigma, alpha, series)?
    };
    Some(log_a / (alpha - 1.0))
}

/// The privacy spent so far: RDP summed over steps, at a fixed list of orders.
#[derive(Debug, Clone, PartialEq)]
pub struct Accountant {
    orders: Vec<f64>,
    /// Spent RDP per order (`inf` once an order is given up).
    rdp: Vec<f64>,
    series: Series,
}

impl Default for Accountant {
    fn default() -> Self {
        Accountant::new(default_orders())
    }
}

impl Accountant {
    /// An accountant over these orders (each > 1), summing fractional orders' series
    /// conservatively.
    pub fn new(orders: Vec<f64>) -> Self {
        Accountant::with_series(orders, Series::Conservative)
    }

    /// An accountant that sums fractional orders' series as `series` says.
    pub fn with_series(orders: Vec<f64>, series: Series) -> Self {
        let rdp = vec![0.0; orders.len()];
        Accountant {
            orders,
            rdp,
            series,
        }
    }

    /// Account `steps` releases of the Gaussian mechanism with noise multiplier `sigma` on
    /// a Poisson sample of rate `q`.
    pub fn step(&mut self, q: f64, sigma: f64, steps: u64) -> Result<()> {
        if !((0.0..=1.0).contains(&q) && sigma >= 0.0 && sigma.is_finite()) {
            return Err(Error::Spec(format!(
                "sampling rate {q} must be in [0, 1] and noise multiplier {sigma} ≥ 0"
            )));
        }
        for (r, &a) in self.rdp.iter_mut().zip(&self.orders) {
            *r += match rdp_step(q, sigma, a, self.series) {
                Some(x) => x * steps as f64,
                None => f64::INFINITY,
            };
        }
        Ok(())
    }

    /// The smallest ε for which the steps so far are (ε, δ)-DP, and the order that gives it.
    pub fn epsilon(&self, delta: f64) -> (f64, f64) {
        let mut best = (f64::INFINITY, f64::NAN);
        for (&r, &a) in self.rdp.iter().zip(&self.orders) {
            let eps = if delta * delta + (-r).exp_m1() > 0.0 {
                // δ ≥ sqrt(1 − exp(−KL)): nothing is spent.
                0.0
            } else if a > 1.01 {
                r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
            } else {
                f64::INFINITY
            };
            if eps < best.0 {
                best = (eps, a);
            }
        }
        (best.0.max(0.0), best.1)
    }
}

/// A uniform integer in `[0, n)` (`n ≥ 1`), by rejection from 128 random bits.
fn uniform_below<R: Rng + ?Sized>(rng: &mut R, n: u128) -> u128 {
    let zone = u128::MAX - (u128::MAX - n + 1) % n;
    loop {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        let v = u128::from_le_bytes(b);
        if v <= zone {
            return v % n;
        }
    }
}

/// Bernoulli(n/d), exactly.
fn bernoulli<R: Rng + ?Sized>(rng: &mut R, n: u128, d: u128) -> bool {
    uniform_below(rng, d) < n
}

/// Bernoulli(exp(−n/d)), exactly (CKS20 Algorithm 1). `None` on arithmetic overflow.
fn bernoulli_exp<R: Rng + ?Sized>(rng: &mut R, n: u128, d: u128) -> Option<bool> {
    let (whole, frac) = (n / d, n % d);
    for _ in 0..whole {
        if !bernoulli_exp_small(rng, 1, 1)? {
            return Some(false);
        }
    }
    bernoulli_exp_small(rng, frac, d)
}

/// Bernoulli(exp(−n/d)) for `n ≤ d`.
fn bernoulli_exp_small<R: Rng + ?Sized>(rng: &mut R, n: u128, d: u128) -> Option<bool> {
    let mut k: u128 = 1;
    loop {
        if !bernoulli(rng, n, d.checked_mul(k)?) {
            return Some(k % 2 == 1);
        }
        k += 1;
    }
}

/// Sampler of the discrete Gaussian `N_Z(0, σ²)`: `P(x) ∝ exp(−x²/(2σ²))` on the integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiscreteGaussian {
    /// σ², rounded up to an integer (rounding up only adds noise).
    sigma2: u128,
    /// The discrete Laplace scale the rejection sampler draws from: `⌊σ⌋ + 1`.
    t: u128,
}

/// Largest σ the sampler takes: beyond it the exact arithmetic would overflow 128 bits.
pub const MAX_SIGMA: f64 = 1e8;

impl DiscreteGaussian {
    /// The sampler for standard deviation `sigma` (in grid units, `1 ≤ σ ≤ MAX_SIGMA`).
    pub fn new(sigma: f64) -> Result<Self> {
        if !(1.0..=MAX_SIGMA).contains(&sigma) {
            return Err(Error::Spec(format!(
                "discrete Gaussian σ = {sigma} grid units is outside [1, {MAX_SIGMA}]"
            )));
        }
        Ok(DiscreteGaussian {
            sigma2: (sigma * sigma).ceil() as u128,
            t: sigma.floor() as u128 + 1,
        })
    }

    /// The σ² it samples with (the asked σ², rounded up).
    pub fn sigma2(&self) -> u128 {
        self.sigma2
    }

    /// Discrete Laplace with scale `t` (CKS20 Algorithm 2).
    fn laplace<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Option<i128> {
        let t = self.t;
        loop {
            let u = uniform_below(rng, t);
            if !bernoulli_exp(rng, u, t)? {
                continue;
            }
            let mut v: u128 = 0;
            while bernoulli_exp(rng, 1, 1)? {
                v += 1;
            }
            let x = u.checked_add(t.checked_mul(v)?)?;
            let negative = bernoulli(rng, 1, 2);
            if negative && x == 0 {
                continue;
            }
            let x = i128::try_from(x).ok()?;
            return Some(if negative { -x } else { x });
        }
    }

    /// One sample (CKS20 Algorithm 3). A candidate so far out that the acceptance test
    /// would overflow is rejected (its acceptance probability is below e^-1000).
    pub fn sample<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> i64 {
        loop {
            let Some(y) = self.laplace(rng) else {
                continue;
            };
            // Accept with probability exp(−(|y| − σ²/t)² / (2σ²))
            //   = exp(−(|y|·t − σ²)² / (2σ²t²)).
            let accept = (|| {
                let a = (y.unsigned_abs()).checked_mul(self.t)?;
                let diff = a.abs_diff(self.sigma2);
                let num = diff.checked_mul(diff)?;
                let den = 2u128
                    .checked_mul(self.sigma2)?
                    .checked_mul(self.t.checked_mul(self.t)?)?;
                bernoulli_exp(rng, num, den)
            })();
            if accept == Some(true) {
                return y as i64;
            }
        }
    }

    /// Add a sample to every coordinate of `v` (words of `Z_2^32`).
    pub fn add_to<R: CryptoRng + ?Sized>(&self, v: &mut [u32], rng: &mut R) {
        for x in v {
            *x = x.wrapping_add(self.sample(rng) as i32 as u32);
        }
    }
}

/// The smallest σ (grid units) noise is drawn with: a sum of discrete Gaussians this wide
/// is a discrete Gaussian but for a divergence below e^−150 (see [`DpConfig::multiplier`]).
/// Raising σ to it only adds noise.
pub const MIN_SHARE_SIGMA: f64 = 4.0;

/// How differential privacy is applied to a round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpConfig {
    /// Noise multiplier `z`: the noise on the sum has standard deviation `z·C`.
    pub noise: f64,
    /// Clipping norm `C` of each client's update.
    pub clip: f64,
    /// δ of the reported (ε, δ).
    pub delta: f64,
}

impl DpConfig {
    /// Refuse settings that make no sense.
    pub fn validate(&self) -> Result<()> {
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return Err(Error::Spec(format!(
                "noise multiplier {} must be ≥ 0",
                self.noise
            )));
        }
        if !(self.clip > 0.0 && self.clip.is_finite()) {
            return Err(Error::Spec(format!(
                "DP clipping norm {} must be > 0",
                self.clip
            )));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(Error::Spec(format!("δ = {} must be in (0, 1)", self.delta)));
        }
        Ok(())
    }

    /// Grid points per unit for DP noise: `C·s = 2^20`, fine enough that rounding adds
    /// `√d / 2^20` of `C` to the sensitivity, coarse enough for exact 128-bit sampling.
    pub fn grid_scale(&self) -> f64 {
        (1u64 << 20) as f64 / self.clip
    }

    /// The discrete Gaussian σ (grid units) for a sum over `dim` coordinates on a grid of
    /// `scale`, split among `shares` clients that each add one part (1 for central noise).
    pub fn sampler(
        &self,
        dim: usize,
        scale: f64,
        shares: usize,
    ) -> Result<Option<DiscreteGaussian>> {
        if self.noise == 0.0 {
            return Ok(None);
        }
        let sigma = self.noise * self.sensitivity(dim, scale) / (shares.max(1) as f64).sqrt();
        DiscreteGaussian::new(sigma.max(MIN_SHARE_SIGMA)).map(Some)
    }

    /// The L2 sensitivity (grid units) of a sum of clipped updates over `dim` coordinates
    /// rounded to a grid of `scale`: `C·s + √d`.
    pub fn sensitivity(&self, dim: usize, scale: f64) -> f64 {
        self.clip * scale + (dim as f64).sqrt()
    }

    /// The noise multiplier a release really carries when `shares` draws of `noise` (one
    /// for central noise; under distributed DP, one per client whose masked input is in
    /// the sum) are added to a sum over `dim` coordinates on a grid of `scale`:
    /// `√(shares·σ²) / (C·s + √d)`, with the σ² the sampler rounded up. This, not the
    /// asked `z`, is what the accountant is charged.
    ///
    /// A sum of `n` discrete Gaussians of parameter σ² is within τ of the discrete
    /// Gaussian of parameter nσ² in Rényi divergence, τ ≤ 10·Σₖ exp(−2π²σ²·k/(k+1))
    /// (Kairouz, Liu and Steinke 2021, Theorem 3). The sampler never draws with σ below
    /// [`MIN_SHARE_SIGMA`], where τ < e^−150: not charged.
    pub fn multiplier(
        &self,
        noise: Option<&DiscreteGaussian>,
        shares: usize,
        dim: usize,
        scale: f64,
    ) -> f64 {
        match noise {
            None => 0.0,
            Some(g) => (shares as f64 * g.sigma2() as f64).sqrt() / self.sensitivity(dim, scale),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn opacus_golden_value() {
        // Opacus' own test: orders 1.1..10.9 and 12..63, σ = 1.5, q = 0.04, 2,250 steps.
        let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + x as f64 / 10.0).collect();
        orders.extend((12..64).map(|x| x as f64));
        let mut acc = Accountant::with_series(orders.clone(), Series::Exact);
        acc.step(0.04, 1.5, 2250).unwrap();
        let (eps, order) = acc.epsilon(1e-5);
        assert!(
            (eps - 7.329_111_171_43).abs() < 1e-6,
            "ε = {eps} at order {order}"
        );
        assert!((order - 3.9).abs() < 1e-9);
        // The conservative sum is never below the exact one.
        let mut upper = Accountant::new(orders);
        upper.step(0.04, 1.5, 2250).unwrap();
        let (up, _) = upper.epsilon(1e-5);
        assert!(up >= eps - 1e-9 && up < eps * 1.01, "{up} vs {eps}");
    }

    #[test]
    fn full_participation_is_the_plain_gaussian() {
        let mut acc = Accountant::default();
        acc.step(1.0, 1.0, 50).unwrap();
        // RDP 25α; ε = min_α 25α + ln(1 − 1/α) − ln(δα)/(α − 1).
        let (eps, _) = acc.epsilon(1e-5);
        assert!(eps > 50.0 && eps < 60.0, "{eps}");
        let mut none = Accountant::default();
        none.step(0.0, 1.0, 100).unwrap();
        assert_eq!(none.epsilon(1e-5).0, 0.0);
        assert!(Accountant::default().step(1.5, 1.0, 1).is_err());
    }

    #[test]
    fn log_erfc_is_continuous_where_the_series_takes_over() {
        // The slope there is −2x − 1/x + … ≈ −50.04.
        let below = log_erfc(24.999_999);
        let above = log_erfc(25.000_001);
        assert!(
            (below - above - 2e-6 * 50.04).abs() < 1e-8,
            "{below} {above}"
        );
        assert!((log_erfc(0.0) - 0.0).abs() < 1e-15);
        assert!((log_erfc(-3.0) - 2f64.ln()).abs() < 1e-4);
    }

    #[test]
    fn discrete_gaussian_has_the_right_moments() {
        let mut rng = StdRng::seed_from_u64(1);
        for sigma in [1.0, 3.7, 250.0, 1e6] {
            let g = DiscreteGaussian::new(sigma).unwrap();
            let n = 40_000;
            let xs: Vec<f64> = (0..n).map(|_| g.sample(&mut rng) as f64).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
            let sd = var.sqrt();
            // Standard error of the mean is σ/200; of the sd about σ/280.
            assert!(mean.abs() < 5.0 * sigma / 200.0, "σ {sigma}: mean {mean}");
            assert!((sd / sigma - 1.0).abs() < 0.03, "σ {sigma}: sd {sd}");
        }
        // Symmetric, and P(0) is the largest mass for σ = 1 (≈ 0.399 for the continuous
        // density; 0.3989… for N_Z too at this σ).
        let g = DiscreteGaussian::new(1.0).unwrap();
        let zeros = (0..20_000).filter(|_| g.sample(&mut rng) == 0).count();
        assert!((7_400..8_600).contains(&zeros), "{zeros}");
        assert!(DiscreteGaussian::new(0.5).is_err());
        assert!(DiscreteGaussian::new(1e9).is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        for c in [
            DpConfig {
                noise: -1.0,
                clip: 1.0,
                delta: 1e-5,
            },
            DpConfig {
                noise: 1.0,
                clip: 0.0,
                delta: 1e-5,
            },
            DpConfig {
                noise: 1.0,
                clip: 1.0,
                delta: 1.0,
            },
        ] {
            assert!(c.validate().is_err());
        }
    }
}
