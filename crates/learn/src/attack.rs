//! Attacks by malicious clients, for tests and benchmarks of the robust rules: they change
//! what a client trains on (label flipping, a backdoor trigger) or the update it sends
//! (sign flip, scaling, noise, model replacement).

use std::{fmt, str::FromStr};

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::{Error, Result, data::Dataset, model::ModelSpec, train::evaluate_predictions};

/// The class a backdoored model should give any input carrying the trigger.
pub const BACKDOOR_TARGET: u32 = 0;
/// The sign-flip attack's factor.
pub const SIGN_FLIP: f32 = -10.0;

/// What a malicious client does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack {
    /// `sign-flip`: sends its update × −10.
    SignFlip,
    /// `scale:S`: sends its update × S.
    Scale(f32),
    /// `noise`: sends standard Gaussian noise instead of an update.
    Noise,
    /// `label-flip`: trains on labels mapped `l → classes − 1 − l`.
    LabelFlip,
    /// `backdoor`: trains on its data plus copies carrying a trigger (a bright corner patch)
    /// labelled [`BACKDOOR_TARGET`], then boosts its update by the number of clients in the
    /// round so that averaging leaves the backdoored model (model replacement).
    Backdoor,
}

impl FromStr for Attack {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Spec(format!(
                "attack {s:?}: expected sign-flip, scale:S, noise, label-flip or backdoor"
            ))
        };
        match s {
            "sign-flip" => Ok(Attack::SignFlip),
            "noise" => Ok(Attack::Noise),
            "label-flip" => Ok(Attack::LabelFlip),
            "backdoor" => Ok(Attack::Backdoor),
            _ => {
                let v: f32 = s
                    .strip_prefix("scale:")
                    .ok_or_else(bad)?
                    .parse()
                    .map_err(|_| bad())?;
                if !v.is_finite() {
                    return Err(bad());
                }
                Ok(Attack::Scale(v))
            }
        }
    }
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attack::SignFlip => f.write_str("sign-flip"),
            Attack::Scale(s) => write!(f, "scale:{s}"),
            Attack::Noise => f.write_str("noise"),
            Attack::LabelFlip => f.write_str("label-flip"),
            Attack::Backdoor => f.write_str("backdoor"),
        }
    }
}

/// Stamp the trigger on one example: the bottom-right quarter-side square (at least 2×2)
/// of every channel set to full brightness.
pub fn add_trigger(row: &mut [f32], shape: [usize; 3]) {
    let [c, h, w] = shape;
    let side = (h.min(w) / 4).max(2).min(h.min(w));
    for ch in 0..c {
        for y in h - side..h {
            for x in w - side..w {
                row[ch * h * w + y * w + x] = 1.0;
            }
        }
    }
}

impl Attack {
    /// The data a malicious client trains on instead of `rows` of `data` (`None`: the same).
    pub fn poison(&self, data: &Dataset, rows: &[usize]) -> Result<Option<Dataset>> {
        match self {
            Attack::LabelFlip => {
                let mut d = data.select(rows)?;
                crate::data::flip_labels(&mut d);
                Ok(Some(d))
            }
            Attack::Backdoor => {
                let mut d = data.select(rows)?;
                let clean = d.clone();
                for i in 0..clean.len() {
                    let mut row = clean.row(i).to_vec();
                    add_trigger(&mut row, d.shape);
                    d.features.extend_from_slice(&row);
                    d.labels.push(BACKDOOR_TARGET);
                }
                Ok(Some(d))
            }
            _ => Ok(None),
        }
    }

    /// Change the update a malicious client sends; `clients` is how many take part in
    /// the round.
    pub fn tamper(&self, delta: &mut [f32], clients: usize, rng: &mut impl Rng) {
        let scale = match self {
            Attack::SignFlip => SIGN_FLIP,
            Attack::Scale(s) => *s,
            Attack::Backdoor => clients as f32,
            Attack::Noise => {
                for d in delta.iter_mut() {
                    *d = StandardNormal.sample(rng);
                }
                return;
            }
            Attack::LabelFlip => return,
        };
        for d in delta.iter_mut() {
            *d *= scale;
        }
    }
}

/// The share of `test` examples not of the target class that the model puts in the target
/// class once they carry the trigger (the backdoor's success rate).
pub fn backdoor_success(spec: &ModelSpec, params: &[f32], test: &Dataset) -> Result<f32> {
    let rows: Vec<usize> = (0..test.len())
        .filter(|&i| test.labels[i] != BACKDOOR_TARGET)
        .collect();
    let mut triggered = test.select(&rows)?;
    let d = triggered.dim();
    for i in 0..triggered.len() {
        add_trigger(&mut triggered.features[i * d..(i + 1) * d], triggered.shape);
    }
    let predicted = evaluate_predictions(spec, params, &triggered)?;
    let hits = predicted.iter().filter(|&&p| p == BACKDOOR_TARGET).count();
    Ok(hits as f32 / predicted.len().max(1) as f32)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn attacks_parse_and_print_back() {
        for s in ["sign-flip", "scale:5", "noise", "label-flip", "backdoor"] {
            assert_eq!(s.parse::<Attack>().unwrap().to_string(), s);
        }
        assert!("scale:inf".parse::<Attack>().is_err());
        assert!("flip".parse::<Attack>().is_err());
    }

    #[test]
    fn tampering_changes_the_update_as_documented() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut d = vec![1.0, -2.0];
        Attack::SignFlip.tamper(&mut d, 10, &mut rng);
        assert_eq!(d, vec![-10.0, 20.0]);
        let mut d = vec![1.0, -2.0];
        Attack::Backdoor.tamper(&mut d, 4, &mut rng);
        assert_eq!(d, vec![4.0, -8.0]);
        let mut d = vec![0.0; 1000];
        Attack::Noise.tamper(&mut d, 4, &mut rng);
        let var = d.iter().map(|x| x * x).sum::<f32>() / 1000.0;
        assert!((0.8..1.2).contains(&var), "{var}");
    }

    #[test]
    fn poisoned_data_is_flipped_or_triggered() {
        let data = crate::data::digits().unwrap();
        let flipped = Attack::LabelFlip.poison(&data, &[0, 1]).unwrap().unwrap();
        assert_eq!(flipped.labels, vec![9 - data.labels[0], 9 - data.labels[1]]);
        let bd = Attack::Backdoor.poison(&data, &[0, 1]).unwrap().unwrap();
        assert_eq!(bd.len(), 4);
        assert_eq!(bd.labels[2..], [BACKDOOR_TARGET, BACKDOOR_TARGET]);
        assert_eq!(bd.row(2)[63], 1.0);
        assert!(Attack::SignFlip.poison(&data, &[0]).unwrap().is_none());
    }
}
