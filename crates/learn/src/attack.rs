//! Attacks by malicious clients, for tests and benchmarks of the robust rules: they change
//! what a client trains on (label flipping, a backdoor trigger) or the update it sends
//! (sign flip, scaling, noise, model replacement). Two are omniscient and collude, as the
//! papers define them in their strongest setting: the attackers see every honest update of
//! the round and all send the same crafted one (`alie`: "A Little Is Enough", Baruch et al.,
//! NeurIPS 2019; `ipm:EPS`: inner product manipulation, Xie et al., UAI 2020).

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
    /// `alie`: every attacker sends μ − z·σ, the honest updates' coordinate-wise mean less
    /// z standard deviations, z as large as still hides among the honest ones (the paper's
    /// z_max for n clients and f attackers).
    Alie,
    /// `ipm:EPS`: every attacker sends −EPS × the honest updates' mean, so the aggregate's
    /// inner product with the true direction turns negative.
    Ipm(f32),
    /// `absent`: the malicious clients send nothing. Not an attack on the model but the
    /// baseline every defence is judged against: what the honest clients learn alone, since
    /// no rule can keep data its owners poison.
    Absent,
}

impl FromStr for Attack {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Spec(format!(
                "attack {s:?}: expected sign-flip, scale:S, noise, label-flip, backdoor, alie, ipm:EPS or absent"
            ))
        };
        match s {
            "sign-flip" => Ok(Attack::SignFlip),
            "noise" => Ok(Attack::Noise),
            "label-flip" => Ok(Attack::LabelFlip),
            "backdoor" => Ok(Attack::Backdoor),
            "alie" => Ok(Attack::Alie),
            "absent" => Ok(Attack::Absent),
            _ if s.starts_with("ipm:") => s["ipm:".len()..]
                .parse::<f32>()
                .ok()
                .filter(|e| e.is_finite() && *e > 0.0)
                .map(Attack::Ipm)
                .ok_or_else(bad),
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
            Attack::Alie => f.write_str("alie"),
            Attack::Ipm(e) => write!(f, "ipm:{e}"),
            Attack::Absent => f.write_str("absent"),
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
            Attack::LabelFlip | Attack::Alie | Attack::Ipm(_) | Attack::Absent => return,
        };
        for d in delta.iter_mut() {
            *d *= scale;
        }
    }
}

impl Attack {
    /// Whether the attackers craft their update from the honest ones ([`Attack::collude`]).
    pub fn is_omniscient(&self) -> bool {
        matches!(self, Attack::Alie | Attack::Ipm(_))
    }

    /// The update the colluding attackers all send, from the round's `honest` updates, with
    /// `n` clients in the round of which `f` are attackers. `None` for the other attacks, or
    /// with no honest update to see.
    pub fn collude(&self, honest: &[&[f32]], n: usize, f: usize) -> Option<Vec<f32>> {
        let first = honest.first()?;
        let dim = first.len();
        let k = honest.len() as f64;
        let mut mean = vec![0f64; dim];
        for u in honest {
            for (m, &x) in mean.iter_mut().zip(u.iter()) {
                *m += f64::from(x) / k;
            }
        }
        match self {
            Attack::Ipm(eps) => Some(
                mean.iter()
                    .map(|&m| (-f64::from(*eps) * m) as f32)
                    .collect(),
            ),
            Attack::Alie => {
                let mut var = vec![0f64; dim];
                for u in honest {
                    for ((v, &x), m) in var.iter_mut().zip(u.iter()).zip(&mean) {
                        *v += (f64::from(x) - m).powi(2) / k;
                    }
                }
                let z = alie_z(n, f);
                Some(
                    mean.iter()
                        .zip(&var)
                        .map(|(m, v)| (m - z * v.sqrt()) as f32)
                        .collect(),
                )
            }
            _ => None,
        }
    }
}

/// ALIE's z_max (Baruch et al. 2019): with `n` clients and `f` attackers, `s = ⌊n/2 + 1⌋ − f`
/// honest clients must be "won over", and z is the standard normal quantile of
/// `(n − s) / n`.
pub fn alie_z(n: usize, f: usize) -> f64 {
    let s = (n / 2 + 1).saturating_sub(f) as f64;
    let p = ((n as f64 - s) / n.max(1) as f64).clamp(1e-6, 1.0 - 1e-6);
    normal_quantile(p)
}

/// The standard normal quantile function (Acklam's rational approximation, relative error
/// below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
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
