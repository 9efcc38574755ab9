//! Choosing the next token from logits: penalties, then top-k, top-p and min-p, then
//! temperature, then a seeded draw. The chain is llama.cpp's default order
//! (`penalties → top_k → top_p → min_p → temp → dist`), so the same settings mean the same
//! thing in both engines. Temperature 0 is greedy (argmax after penalties).

use std::collections::HashMap;

/// Sampling settings. The defaults are llama.cpp's, except that penalties are off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0: none).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens by this (1: off).
    pub repeat_penalty: f32,
    /// Subtract this times a recent token's count from its logit (OpenAI's
    /// `frequency_penalty`; 0: off).
    pub frequency_penalty: f32,
    /// Subtract this from the logit of every recent token (OpenAI's `presence_penalty`).
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Seed of the draw: the same seed, prompt and settings give the same text.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: the most likely token every time.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether the values make sense; the message names the first that does not.
    pub fn check(&self) -> Result<(), String> {
        let finite = |name: &str, v: f32| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be a finite number"))
            }
        };
        finite("temperature", self.temperature)?;
        finite("top_p", self.top_p)?;
        finite("min_p", self.min_p)?;
        finite("repeat_penalty", self.repeat_penalty)?;
        finite("frequency_penalty", self.frequency_penalty)?;
        finite("presence_penalty", self.presence_penalty)?;
        if self.temperature < 0.0 {
            return Err("temperature must be 0 or more".into());
        }
        if !(0.0..=1.0).contains(&self.top_p) || self.top_p == 0.0 {
            return Err("top_p must be in (0, 1]".into());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err("min_p must be in [0, 1]".into());
        }
        if self.repeat_penalty <= 0.0 {
            return Err("repeat_penalty must be more than 0".into());
        }
        Ok(())
    }
}

/// xoshiro256** seeded through SplitMix64: small, fast, and the same stream on every
/// platform and crate version, so a seed names one text for good.
#[derive(Debug, Clone)]
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A sampler: settings plus the state of its random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    /// A sampler with these settings, its stream started from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = Rng::new(params.seed);
        Sampler { params, rng }
    }

    /// The settings.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Choose the next token. `logits` is changed (penalties); `recent` holds the tokens so
    /// far (prompt and output), of which the last `penalty_last_n` count for penalties.
    pub fn sample(&mut self, logits: &mut [f32], recent: &[u32]) -> u32 {
        self.penalise(logits, recent);
        let p = &self.params;
        if p.temperature <= 0.0 {
            return crate::llama::argmax(logits).unwrap_or(0);
        }
        // Candidates, most likely first.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if cand.is_empty() {
            return 0;
        }
        let k = if p.top_k == 0 {
            cand.len()
        } else {
            p.top_k.min(cand.len())
        };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            cand.truncate(k);
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1));
        // top-p on the softmax at temperature 1, as llama.cpp does.
        if p.top_p < 1.0 {
            let probs = softmax(cand.iter().map(|c| c.1), 1.0);
            let mut sum = 0.0;
            let mut keep = cand.len();
            for (i, q) in probs.iter().enumerate() {
                sum += q;
                if sum >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        // min-p: relative to the best token's probability, i.e. a logit margin.
        if p.min_p > 0.0 {
            let floor = cand[0].1 + p.min_p.ln();
            let keep = cand.iter().take_while(|c| c.1 >= floor).count();
            cand.truncate(keep.max(1));
        }
        let probs = softmax(cand.iter().map(|c| c.1), p.temperature);
        let mut u = self.rng.next_f64();
        for (c, q) in cand.iter().zip(&probs) {
            if u < *q {
                return c.0;
            }
            u -= q;
        }
        cand[cand.len() - 1].0
    }

    fn penalise(&self, logits: &mut [f32], recent: &[u32]) {
        let p = &self.params;
        if p.repeat_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0 {
            return;
        }
        let window = &recent[recent.len().saturating_sub(p.penalty_last_n)..];
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in window {
            *counts.entry(t).or_default() += 1;
        }
        for (&t, &n) in &counts {
            let Some(l) = logits.get_mut(t as usize) else {
                continue;
            };
            if *l > 0.0 {
                *l /= p.repeat_penalty;
            } else {
                *l *= p.repeat_penalty;
            }
            *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }
}

/// Probabilities of `logits / temperature`, in f64.
fn softmax(logits: impl Iterator<Item = f32> + Clone, temperature: f32) -> Vec<f64> {
    let t = f64::from(temperature);
    let max = logits
        .clone()
        .map(f64::from)
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.map(|l| ((f64::from(l) - max) / t).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(params: SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(params);
        (0..n)
            .map(|_| s.sample(&mut logits.to_vec(), &[]))
            .collect()
    }

    #[test]
    fn temperature_zero_is_argmax() {
        let l = [0.1, 3.0, 2.9, -1.0];
        assert_eq!(draws(SamplingParams::greedy(), &l, 5), vec![1; 5]);
    }

    #[test]
    fn same_seed_same_draws_other_seed_other_draws() {
        let l: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let p = SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..Default::default()
        };
        let a = draws(p.clone(), &l, 64);
        assert_eq!(a, draws(p.clone(), &l, 64));
        assert_ne!(a, draws(SamplingParams { seed: 8, ..p }, &l, 64));
    }

    #[test]
    fn top_k_top_p_min_p_cut_the_tail() {
        let l = [5.0, 4.0, 3.0, 0.0, -1.0];
        let only = |p: SamplingParams| {
            let mut seen: Vec<u32> = draws(p, &l, 2000);
            seen.sort();
            seen.dedup();
            seen
        };
        let base = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 1,
            ..Default::default()
        };
        assert_eq!(only(base.clone()).len(), 5);
        assert_eq!(
            only(SamplingParams {
                top_k: 2,
                ..base.clone()
            }),
            [0, 1]
        );
        // p(0) = 0.66, p(0)+p(1) = 0.90.
        assert_eq!(
            only(SamplingParams {
                top_p: 0.8,
                ..base.clone()
            }),
            [0, 1]
        );
        // exp(-2) = 0.135: token 2 is kept at min_p 0.1, dropped at 0.2.
        assert_eq!(
            only(SamplingParams {
                min_p: 0.1,
                ..base.clone()
            }),
            [0, 1, 2]
        );
        assert_eq!(only(SamplingParams { min_p: 0.2, ..base }), [0, 1]);
    }

    #[test]
    fn draws_follow_the_distribution() {
        // Two tokens, logits ln 3 and 0: p = 3/4 and 1/4.
        let l = [3f32.ln(), 0.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 3,
            ..Default::default()
        };
        let n = 20_000;
        let zeros = draws(p, &l, n).iter().filter(|&&t| t == 0).count();
        let share = zeros as f64 / n as f64;
        // 5 standard deviations of a binomial share at n = 20,000 is 0.015.
        assert!((share - 0.75).abs() < 0.015, "{share}");
    }

    #[test]
    fn penalties_push_recent_tokens_down() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            repeat_penalty: 2.0,
            ..Default::default()
        });
        // Token 0 leads, but it was just said: 3.0 / 2 = 1.5 < 2.0.
        assert_eq!(s.sample(&mut [3.0, 2.0, 1.0], &[0]), 1);
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            frequency_penalty: 0.6,
            ..Default::default()
        });
        // Said twice: 3.0 − 1.2 = 1.8 < 2.0.
        assert_eq!(s.sample(&mut [3.0, 2.0, 1.0], &[0, 0]), 1);
        assert_eq!(s.sample(&mut [3.0, 2.0, 1.0], &[0]), 0);
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            presence_penalty: 1.5,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [3.0, 2.0, 1.0], &[0]), 1);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = SamplingParams {
            temperature: -1.0,
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().contains("temperature"));
        let bad = SamplingParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().contains("top_p"));
        assert!(SamplingParams::default().check().is_ok());
    }
}
