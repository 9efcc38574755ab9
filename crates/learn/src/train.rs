//! Local training: minibatch SGD (with optional momentum) or Adam on softmax
//! cross-entropy, with FedProx's proximal term; and evaluation.

use std::{fmt, str::FromStr};

use candle_core::{Device, Tensor};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};

use crate::{
    Error, Result,
    data::Dataset,
    model::{Model, ModelSpec},
};

/// Examples evaluated per forward pass.
const EVAL_BATCH: usize = 1024;

/// A local optimiser.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// `sgd` or `sgd:M`: plain SGD, or with momentum M (PyTorch's form, no dampening).
    Sgd {
        /// 0 for plain SGD
        momentum: f32,
    },
    /// `adam`: Adam with β₁ 0.9, β₂ 0.999, ε 1e-8, no weight decay.
    Adam,
}

impl FromStr for Optimizer {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Spec(format!(
                "optimizer {s:?}: expected sgd, sgd:M (0 ≤ M < 1) or adam"
            ))
        };
        match s {
            "sgd" => Ok(Optimizer::Sgd { momentum: 0.0 }),
            "adam" => Ok(Optimizer::Adam),
            _ => {
                let m: f32 = s
                    .strip_prefix("sgd:")
                    .ok_or_else(bad)?
                    .parse()
                    .map_err(|_| bad())?;
                if !(0.0..1.0).contains(&m) {
                    return Err(bad());
                }
                Ok(Optimizer::Sgd { momentum: m })
            }
        }
    }
}

impl fmt::Display for Optimizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Optimizer::Sgd { momentum } if *momentum == 0.0 => f.write_str("sgd"),
            Optimizer::Sgd { momentum } => write!(f, "sgd:{momentum}"),
            Optimizer::Adam => f.write_str("adam"),
        }
    }
}

/// How a client trains in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Passes over the client's rows.
    pub epochs: usize,
    /// Rows per step (the last batch of an epoch may be smaller).
    pub batch: usize,
    /// Learning rate.
    pub lr: f32,
    /// The optimiser (its state starts fresh every round).
    pub optimizer: Optimizer,
    /// FedProx's μ: the loss gains μ/2 · ‖w − w_global‖²; 0 turns it off.
    pub prox_mu: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 5,
            batch: 16,
            lr: 0.1,
            optimizer: Optimizer::Sgd { momentum: 0.0 },
            prox_mu: 0.0,
        }
    }
}

impl TrainConfig {
    /// Refuse settings that cannot train.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch == 0 {
            return Err(Error::Spec("epochs and batch must be at least 1".into()));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::Spec(format!(
                "learning rate {} must be > 0",
                self.lr
            )));
        }
        if !(self.prox_mu.is_finite() && self.prox_mu >= 0.0) {
            return Err(Error::Spec(format!(
                "FedProx μ {} must be ≥ 0",
                self.prox_mu
            )));
        }
        Ok(())
    }
}

/// What local training produced.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The client's new parameters.
    pub params: Vec<f32>,
    /// Rows trained on (the example weight in FedAvg).
    pub examples: usize,
    /// Mean training loss over the last epoch.
    pub loss: f32,
}

/// Copy `rows` of `data` into one batch tensor and its label tensor.
fn batch(data: &Dataset, rows: &[usize]) -> Result<(Tensor, Tensor)> {
    let d = data.dim();
    let mut x = Vec::with_capacity(rows.len() * d);
    let mut y = Vec::with_capacity(rows.len());
    for &r in rows {
        x.extend_from_slice(data.row(r));
        y.push(data.labels[r]);
    }
    Ok((
        Tensor::from_vec(x, (rows.len(), d), &Device::Cpu)?,
        Tensor::from_vec(y, rows.len(), &Device::Cpu)?,
    ))
}

/// Train a model of `spec`, starting from `global`, on `rows` of `data`; the shuffling is
/// seeded by `seed`.
pub fn train(
    spec: &ModelSpec,
    global: &[f32],
    data: &Dataset,
    rows: &[usize],
    cfg: &TrainConfig,
    seed: u64,
) -> Result<Trained> {
    cfg.validate()?;
    if rows.is_empty() {
        return Err(Error::Spec("a client with no rows cannot train".into()));
    }
    let model = Model::new(spec, global)?;
    let start: Vec<Tensor> = if cfg.prox_mu > 0.0 {
        model
            .vars()
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?
    } else {
        Vec::new()
    };
    let mut state = OptState::new(cfg.optimizer, &model)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order = rows.to_vec();
    let mut last_loss = 0.0;
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let (mut sum, mut n) = (0.0f64, 0usize);
        for chunk in order.chunks(cfg.batch) {
            let (x, y) = batch(data, chunk)?;
            let loss = candle_nn::loss::cross_entropy(&model.forward(&x)?, &y)?;
            let grads = loss.backward()?;
            for (i, var) in model.vars().iter().enumerate() {
                let Some(g) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let g = if cfg.prox_mu > 0.0 {
                    (g + ((var.as_tensor() - &start[i])? * f64::from(cfg.prox_mu))?)?
                } else {
                    g.clone()
                };
                state.step(i, var, &g, cfg.lr)?;
            }
            sum += f64::from(loss.to_scalar::<f32>()?) * chunk.len() as f64;
            n += chunk.len();
        }
        last_loss = (sum / n as f64) as f32;
    }
    Ok(Trained {
        params: model.params()?,
        examples: rows.len(),
        loss: last_loss,
    })
}

/// Optimiser state, one entry per variable.
enum OptState {
    Sgd {
        momentum: f32,
        bufs: Vec<Option<Tensor>>,
    },
    Adam {
        t: i32,
        m: Vec<Tensor>,
        v: Vec<Tensor>,
    },
}

impl OptState {
    fn new(opt: Optimizer, model: &Model) -> Result<Self> {
        Ok(match opt {
            Optimizer::Sgd { momentum } => OptState::Sgd {
                momentum,
                bufs: vec![None; model.vars().len()],
            },
            Optimizer::Adam => {
                let zeros = || -> candle_core::Result<Vec<Tensor>> {
                    model
                        .vars()
                        .iter()
                        .map(|v| v.as_tensor().zeros_like())
                        .collect()
                };
                OptState::Adam {
                    t: 0,
                    m: zeros()?,
                    v: zeros()?,
                }
            }
        })
    }

    fn step(&mut self, i: usize, var: &candle_core::Var, g: &Tensor, lr: f32) -> Result<()> {
        let lr = f64::from(lr);
        match self {
            OptState::Sgd { momentum, bufs } => {
                let dir = if *momentum > 0.0 {
                    let b = match bufs[i].take() {
                        Some(b) => ((b * f64::from(*momentum))? + g)?,
                        None => g.clone(),
                    };
                    bufs[i] = Some(b.clone());
                    b
                } else {
                    g.clone()
                };
                var.set(&(var.as_tensor() - (dir * lr)?)?)?;
            }
            OptState::Adam { t, m, v } => {
                const B1: f64 = 0.9;
                const B2: f64 = 0.999;
                const EPS: f64 = 1e-8;
                if i == 0 {
                    *t += 1;
                }
                m[i] = ((&m[i] * B1)? + (g * (1.0 - B1))?)?;
                v[i] = ((&v[i] * B2)? + (g.sqr()? * (1.0 - B2))?)?;
                let mhat = (&m[i] / (1.0 - B1.powi(*t)))?;
                let vhat = (&v[i] / (1.0 - B2.powi(*t)))?;
                let step = (mhat / (vhat.sqrt()? + EPS)?)?;
                var.set(&(var.as_tensor() - (step * lr)?)?)?;
            }
        }
        Ok(())
    }
}

/// Mean cross-entropy loss and accuracy of `params` on all of `data`.
pub fn evaluate(spec: &ModelSpec, params: &[f32], data: &Dataset) -> Result<(f32, f32)> {
    if data.is_empty() {
        return Err(Error::Data("nothing to evaluate on".into()));
    }
    let model = Model::new(spec, params)?;
    let rows: Vec<usize> = (0..data.len()).collect();
    let (mut loss, mut right) = (0.0f64, 0.0f64);
    for chunk in rows.chunks(EVAL_BATCH) {
        let (x, y) = batch(data, chunk)?;
        let (l, a) = model.loss_and_accuracy(&x, &y)?;
        loss += f64::from(l) * chunk.len() as f64;
        right += f64::from(a) * chunk.len() as f64;
    }
    let n = data.len() as f64;
    Ok(((loss / n) as f32, (right / n) as f32))
}

/// The class `params` predicts for each example of `data`.
pub fn evaluate_predictions(spec: &ModelSpec, params: &[f32], data: &Dataset) -> Result<Vec<u32>> {
    let model = Model::new(spec, params)?;
    let rows: Vec<usize> = (0..data.len()).collect();
    let mut out = Vec::with_capacity(data.len());
    for chunk in rows.chunks(EVAL_BATCH) {
        let (x, _) = batch(data, chunk)?;
        out.extend(model.forward(&x)?.argmax(1)?.to_vec1::<u32>()?);
    }
    Ok(out)
}

/// Most rows one [`predict_proba`] call takes.
pub const MAX_PREDICT_ROWS: usize = 4096;

/// Class probabilities (softmax of the outputs) of `params` for each row of `rows`, each
/// holding the model's input size of features. Refuses a row of another size, a value that
/// is not finite, or more than [`MAX_PREDICT_ROWS`] rows.
pub fn predict_proba(spec: &ModelSpec, params: &[f32], rows: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    let width: usize = spec.input.iter().product();
    if rows.len() > MAX_PREDICT_ROWS {
        return Err(Error::Data(format!(
            "{} rows; at most {MAX_PREDICT_ROWS} at once",
            rows.len()
        )));
    }
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != width) {
        return Err(Error::Data(format!(
            "row {i} has {} features; the model takes {width}",
            r.len()
        )));
    }
    if rows.iter().flatten().any(|x| !x.is_finite()) {
        return Err(Error::Data("a feature is not a finite number".into()));
    }
    let model = Model::new(spec, params)?;
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(EVAL_BATCH) {
        let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
        let x = Tensor::from_vec(flat, (chunk.len(), width), &Device::Cpu)?;
        let p = candle_nn::ops::softmax(&model.forward(&x)?, 1)?;
        out.extend(p.to_vec2::<f32>()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::data;

    #[test]
    fn predicted_probabilities_sum_to_one_and_agree_with_the_predictions() {
        let (spec, s) = digits();
        let rows: Vec<usize> = (0..s.train.len()).collect();
        let cfg = TrainConfig {
            epochs: 2,
            ..TrainConfig::default()
        };
        let params = train(&spec, &spec.init(1), &s.train, &rows, &cfg, 1)
            .unwrap()
            .params;
        let some: Vec<Vec<f32>> = (0..20).map(|i| s.test.row(i).to_vec()).collect();
        let p = predict_proba(&spec, &params, &some).unwrap();
        let classes = evaluate_predictions(&spec, &params, &s.test).unwrap();
        for (i, row) in p.iter().enumerate() {
            assert_eq!(row.len(), 10);
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
            let best = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            assert_eq!(best as u32, classes[i]);
        }
        assert!(predict_proba(&spec, &params, &[vec![0.0; 3]]).is_err());
        assert!(predict_proba(&spec, &params, &[vec![f32::NAN; 64]]).is_err());
    }

    fn digits() -> (ModelSpec, data::Split) {
        let d = data::digits().unwrap();
        let spec = ModelSpec::new("mlp:64".parse().unwrap(), d.shape, 10).unwrap();
        (spec, d.stratified_split(0.25, 0).unwrap())
    }

    #[test]
    fn every_optimiser_learns_the_digits() {
        let (spec, s) = digits();
        let rows: Vec<usize> = (0..s.train.len()).collect();
        let init = spec.init(42);
        let (_, before) = evaluate(&spec, &init, &s.test).unwrap();
        assert!(before < 0.3, "{before}");
        for (opt, lr) in [("sgd", 0.05), ("sgd:0.9", 0.01), ("adam", 0.002)] {
            let cfg = TrainConfig {
                epochs: 5,
                lr,
                optimizer: opt.parse().unwrap(),
                ..TrainConfig::default()
            };
            let t = train(&spec, &init, &s.train, &rows, &cfg, 1).unwrap();
            let (loss, acc) = evaluate(&spec, &t.params, &s.test).unwrap();
            // Chance is 0.1; five epochs of any of them reach ~0.95 (margin for SIMD rounding).
            assert!(acc > 0.85 && loss < 0.6, "{opt}: acc {acc} loss {loss}");
            assert_eq!(t.examples, rows.len());
            // The same seed trains to the same parameters.
            let again = train(&spec, &init, &s.train, &rows, &cfg, 1).unwrap();
            assert_eq!(t.params, again.params, "{opt}");
        }
    }

    #[test]
    fn the_proximal_term_keeps_the_update_near_the_global_model() {
        let (spec, s) = digits();
        let rows: Vec<usize> = (0..200).collect();
        let init = spec.init(42);
        let dist = |mu: f32| -> f32 {
            let cfg = TrainConfig {
                prox_mu: mu,
                ..TrainConfig::default()
            };
            let t = train(&spec, &init, &s.train, &rows, &cfg, 1).unwrap();
            t.params
                .iter()
                .zip(&init)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt()
        };
        let (free, held) = (dist(0.0), dist(1.0));
        assert!(held < 0.8 * free, "{held} vs {free}");
    }

    #[test]
    fn bad_settings_are_refused() {
        let (spec, s) = digits();
        let init = spec.init(0);
        let bad = TrainConfig {
            lr: 0.0,
            ..TrainConfig::default()
        };
        assert!(train(&spec, &init, &s.train, &[0], &bad, 0).is_err());
        assert!(train(&spec, &init, &s.train, &[], &TrainConfig::default(), 0).is_err());
        assert!(
            train(
                &spec,
                &init[1..],
                &s.train,
                &[0],
                &TrainConfig::default(),
                0
            )
            .is_err()
        );
        for o in ["sgd:1", "sgd:-0.1", "rmsprop"] {
            assert!(o.parse::<Optimizer>().is_err(), "{o}");
        }
    }
}
