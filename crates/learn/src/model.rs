//! Models on candle: logistic regression, MLPs and a small CNN. A model is an ordered list
//! of candle `Var`s; its parameters flatten to one `f32` vector (the order of
//! [`ModelSpec::layout`]) and are written back from one, which is all federated learning
//! exchanges.

use std::{fmt, str::FromStr};

use candle_core::{DType, Device, Tensor, Var};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

use crate::{Error, Result};

/// Most hidden layers and widest layer an MLP spec may ask for.
const MAX_LAYERS: usize = 8;
const MAX_WIDTH: usize = 65_536;
/// CNN channels after the first and second 3×3 convolution, and the hidden width after them.
const CNN_C1: usize = 8;
const CNN_C2: usize = 16;
const CNN_HIDDEN: usize = 64;

/// A model architecture, as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arch {
    /// `logreg`: one linear layer, softmax.
    LogReg,
    /// `mlp:H` or `mlp:H1,H2,…`: ReLU hidden layers of those widths.
    Mlp(Vec<usize>),
    /// `cnn`: two 3×3 convolutions (8, 16 channels, ReLU, 2×2 max pool), a 64-wide hidden
    /// layer, then the classes.
    Cnn,
}

impl FromStr for Arch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "logreg" => Ok(Arch::LogReg),
            "cnn" => Ok(Arch::Cnn),
            _ => {
                let bad = || {
                    Error::Spec(format!(
                        "model {s:?}: expected logreg, cnn, mlp:H or mlp:H1,H2 (widths 1..{MAX_WIDTH})"
                    ))
                };
                let widths = s.strip_prefix("mlp:").ok_or_else(bad)?;
                let widths: Vec<usize> = widths
                    .split(',')
                    .map(|w| w.trim().parse::<usize>().map_err(|_| bad()))
                    .collect::<Result<_>>()?;
                if widths.is_empty()
                    || widths.len() > MAX_LAYERS
                    || widths.iter().any(|&w| w == 0 || w > MAX_WIDTH)
                {
                    return Err(bad());
                }
                Ok(Arch::Mlp(widths))
            }
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arch::LogReg => f.write_str("logreg"),
            Arch::Cnn => f.write_str("cnn"),
            Arch::Mlp(w) => {
                let w: Vec<String> = w.iter().map(ToString::to_string).collect();
                write!(f, "mlp:{}", w.join(","))
            }
        }
    }
}

/// An architecture for inputs of one shape and a number of classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The architecture.
    pub arch: Arch,
    /// Channels, height, width of one input.
    pub input: [usize; 3],
    /// Output classes.
    pub classes: usize,
}

/// One parameter tensor of a model: its name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// e.g. `fc1.weight`
    pub name: String,
    /// its dimensions
    pub shape: Vec<usize>,
    /// fan-in for He initialisation; 0 for biases (initialised to zero)
    fan_in: usize,
}

impl Param {
    fn new(name: String, shape: Vec<usize>, fan_in: usize) -> Self {
        Param {
            name,
            shape,
            fan_in,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ModelSpec {
    /// The spec of `arch` for inputs of `input` shape and `classes` outputs.
    pub fn new(arch: Arch, input: [usize; 3], classes: usize) -> Result<Self> {
        if arch == Arch::Cnn && (input[1] < 4 || input[2] < 4) {
            return Err(Error::Spec(format!(
                "the CNN needs inputs of at least 4×4, not {}×{}",
                input[1], input[2]
            )));
        }
        Ok(ModelSpec {
            arch,
            input,
            classes,
        })
    }

    fn dim(&self) -> usize {
        self.input.iter().product()
    }

    /// The parameter tensors, in the order they flatten.
    pub fn layout(&self) -> Vec<Param> {
        let linear = |out: &mut Vec<Param>, name: &str, fan_in: usize, fan_out: usize| {
            out.push(Param::new(
                format!("{name}.weight"),
                vec![fan_in, fan_out],
                fan_in,
            ));
            out.push(Param::new(format!("{name}.bias"), vec![fan_out], 0));
        };
        let mut out = Vec::new();
        match &self.arch {
            Arch::LogReg => {
                out.push(Param::new(
                    "fc.weight".into(),
                    vec![self.dim(), self.classes],
                    0,
                ));
                out.push(Param::new("fc.bias".into(), vec![self.classes], 0));
            }
            Arch::Mlp(widths) => {
                let mut fan_in = self.dim();
                for (i, &w) in widths.iter().enumerate() {
                    linear(&mut out, &format!("fc{}", i + 1), fan_in, w);
                    fan_in = w;
                }
                linear(&mut out, "out", fan_in, self.classes);
            }
            Arch::Cnn => {
                let c = self.input[0];
                out.push(Param::new(
                    "conv1.weight".into(),
                    vec![CNN_C1, c, 3, 3],
                    c * 9,
                ));
                out.push(Param::new("conv1.bias".into(), vec![CNN_C1], 0));
                out.push(Param::new(
                    "conv2.weight".into(),
                    vec![CNN_C2, CNN_C1, 3, 3],
                    CNN_C1 * 9,
                ));
                out.push(Param::new("conv2.bias".into(), vec![CNN_C2], 0));
                let flat = CNN_C2 * (self.input[1] / 4) * (self.input[2] / 4);
                linear(&mut out, "fc1", flat, CNN_HIDDEN);
                linear(&mut out, "out", CNN_HIDDEN, self.classes);
            }
        }
        out
    }

    /// How many parameters the model has.
    pub fn num_params(&self) -> usize {
        self.layout().iter().map(Param::len).sum()
    }

    /// Seeded initial parameters: He-normal weights (std √(2 / fan-in)), zero biases;
    /// logistic regression starts at zero.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(self.num_params());
        for p in self.layout() {
            if p.fan_in == 0 {
                out.extend(std::iter::repeat_n(0.0, p.len()));
            } else {
                let std = (2.0 / p.fan_in as f64).sqrt();
                let normal = Normal::new(0.0, std).expect("a positive finite std");
                out.extend((0..p.len()).map(|_| normal.sample(&mut rng) as f32));
            }
        }
        out
    }
}

/// A model's parameters as candle variables, ready to train or evaluate on the CPU.
pub struct Model {
    spec: ModelSpec,
    vars: Vec<Var>,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("spec", &self.spec)
            .field("params", &self.spec.num_params())
            .finish()
    }
}

impl Model {
    /// A model of `spec` holding `params` (flattened in layout order).
    pub fn new(spec: &ModelSpec, params: &[f32]) -> Result<Self> {
        let layout = spec.layout();
        let total: usize = layout.iter().map(Param::len).sum();
        if params.len() != total {
            return Err(Error::Spec(format!(
                "{} parameters given, the model has {total}",
                params.len()
            )));
        }
        let mut vars = Vec::with_capacity(layout.len());
        let mut at = 0;
        for p in &layout {
            let t =
                Tensor::from_slice(&params[at..at + p.len()], p.shape.as_slice(), &Device::Cpu)?;
            vars.push(Var::from_tensor(&t)?);
            at += p.len();
        }
        Ok(Model {
            spec: spec.clone(),
            vars,
        })
    }

    /// The model's spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The candle variables, in layout order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The parameters, flattened.
    pub fn params(&self) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.spec.num_params());
        for v in &self.vars {
            out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Overwrite the parameters with `params` (flattened, layout order).
    pub fn set_params(&self, params: &[f32]) -> Result<()> {
        if params.len() != self.spec.num_params() {
            return Err(Error::Spec(format!(
                "{} parameters given, the model has {}",
                params.len(),
                self.spec.num_params()
            )));
        }
        let mut at = 0;
        for v in &self.vars {
            let n = v.elem_count();
            v.set(&Tensor::from_slice(
                &params[at..at + n],
                v.shape(),
                &Device::Cpu,
            )?)?;
            at += n;
        }
        Ok(())
    }

    /// Logits for a batch `x` of shape (batch, features).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let v = |i: usize| self.vars[i].as_tensor();
        let linear = |x: &Tensor, i: usize| -> Result<Tensor> {
            Ok(x.matmul(v(i))?.broadcast_add(v(i + 1))?)
        };
        match &self.spec.arch {
            Arch::LogReg => linear(x, 0),
            Arch::Mlp(widths) => {
                let mut h = x.clone();
                for i in 0..widths.len() {
                    h = linear(&h, 2 * i)?.relu()?;
                }
                linear(&h, 2 * widths.len())
            }
            Arch::Cnn => {
                let [c, hgt, wid] = self.spec.input;
                let b = x.dim(0)?;
                let conv = |x: &Tensor, i: usize| -> Result<Tensor> {
                    let bias = v(i + 1).reshape((1, v(i + 1).dim(0)?, 1, 1))?;
                    Ok(x.conv2d(v(i), 1, 1, 1, 1)?
                        .broadcast_add(&bias)?
                        .relu()?
                        .max_pool2d(2)?)
                };
                let h = conv(&x.reshape((b, c, hgt, wid))?, 0)?;
                let h = conv(&h, 2)?;
                let h = h.flatten_from(1)?;
                let h = linear(&h, 4)?.relu()?;
                linear(&h, 6)
            }
        }
    }

    /// Mean cross-entropy loss and accuracy on `x` (batch, features) with `labels`.
    pub fn loss_and_accuracy(&self, x: &Tensor, labels: &Tensor) -> Result<(f32, f32)> {
        let logits = self.forward(x)?;
        let loss = candle_nn::loss::cross_entropy(&logits, labels)?.to_scalar::<f32>()?;
        let predicted = logits.argmax(1)?;
        let right = predicted
            .eq(labels)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        Ok((loss, right / labels.dim(0)? as f32))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for s in ["logreg", "cnn", "mlp:64", "mlp:64,32"] {
            assert_eq!(s.parse::<Arch>().unwrap().to_string(), s);
        }
        for s in ["mlp:", "mlp:0", "mlp:a", "rnn", "mlp:1,2,3,4,5,6,7,8,9"] {
            assert!(s.parse::<Arch>().is_err(), "{s}");
        }
    }

    #[test]
    fn the_digits_mlp_has_flowers_parameter_count() {
        let spec = ModelSpec::new("mlp:64".parse().unwrap(), [1, 8, 8], 10).unwrap();
        assert_eq!(spec.num_params(), 4810);
    }

    #[test]
    fn params_flatten_and_come_back_for_every_arch() {
        for (arch, input) in [
            ("logreg", [1, 8, 8]),
            ("mlp:16,8", [1, 8, 8]),
            ("cnn", [1, 8, 8]),
            ("cnn", [1, 28, 28]),
        ] {
            let spec = ModelSpec::new(arch.parse().unwrap(), input, 10).unwrap();
            let p = spec.init(3);
            assert_eq!(p, spec.init(3), "seeded init is deterministic");
            let m = Model::new(&spec, &p).unwrap();
            assert_eq!(m.params().unwrap(), p);
            let q: Vec<f32> = p.iter().map(|v| v + 1.0).collect();
            m.set_params(&q).unwrap();
            assert_eq!(m.params().unwrap(), q);
            let x = Tensor::zeros((5, spec.dim()), DType::F32, &Device::Cpu).unwrap();
            assert_eq!(m.forward(&x).unwrap().dims(), &[5, 10]);
            assert!(m.set_params(&q[1..]).is_err());
        }
    }
}
