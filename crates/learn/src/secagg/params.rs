//! A round's public parameters: who takes part, the SecAgg+ neighbour graph, the
//! threshold; and the fixed-point coding of inputs into `Z_2^32`.

use std::collections::BTreeMap;

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};

use super::crypto::err;
use crate::Result;

/// Most holders a client's secrets can be shared among (Shamir over GF(256) numbers the
/// shares 1..=255).
pub const MAX_HOLDERS: usize = 255;

/// The least threshold for `holders` holders: more than two thirds of them (and at least
/// 2). Then two survivor lists confirmed by `t` holders each share more than `h/3` signers,
/// so an aggregator with fewer than that many colluding holders cannot get both of a
/// client's secrets revealed (Bonawitz et al. 2017, §4 and Appendix C).
pub fn min_threshold(holders: usize) -> usize {
    (2 * holders / 3 + 1).max(2)
}

/// Settings every participant of a round agrees on (the aggregator announces them with the
/// round; clients check them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundParams {
    /// A number that never repeats for this federation: it separates the keys of rounds.
    pub round: u64,
    /// The selected clients, ascending.
    pub participants: Vec<u32>,
    /// Neighbours per client (even; `≥ n − 1` means every other client).
    pub neighbours: u32,
    /// Shares needed to rebuild a secret; more than two thirds of a client's holders.
    pub threshold: u32,
    /// Length of the input vectors.
    pub dim: u32,
    /// Seed of the order the neighbour ring is laid over.
    #[serde(with = "serde_bytes")]
    pub graph_seed: [u8; 32],
}

impl RoundParams {
    /// Parameters for `participants` (any order), with `neighbours` per client (`None`: the
    /// complete graph) and threshold `threshold` (`None`: the least allowed, just over two
    /// thirds of the holders, as Bonawitz et al. require against an active aggregator).
    pub fn new(
        round: u64,
        participants: &[u32],
        neighbours: Option<u32>,
        threshold: Option<u32>,
        dim: u32,
        graph_seed: [u8; 32],
    ) -> Result<Self> {
        let mut p = participants.to_vec();
        p.sort_unstable();
        p.dedup();
        let n = p.len() as u32;
        let k = neighbours
            .unwrap_or(n.saturating_sub(1))
            .min(n.saturating_sub(1));
        let holders = k + 1;
        let t = threshold.unwrap_or(min_threshold(holders as usize) as u32);
        let params = RoundParams {
            round,
            participants: p,
            neighbours: k,
            threshold: t,
            dim,
            graph_seed,
        };
        params.validate()?;
        Ok(params)
    }

    /// Refuse parameters under which the protocol is unsafe or cannot run.
    pub fn validate(&self) -> Result<()> {
        let n = self.participants.len();
        if n < 2 {
            return Err(err("secure aggregation needs at least 2 clients"));
        }
        if self.participants.windows(2).any(|w| w[0] >= w[1]) {
            return Err(err("participants must be ascending and distinct"));
        }
        let k = self.neighbours as usize;
        if k == 0 || k > n - 1 {
            return Err(err(format!(
                "{k} neighbours: need between 1 and {} for {n} clients",
                n - 1
            )));
        }
        if k < n - 1 && !k.is_multiple_of(2) {
            return Err(err(format!(
                "{k} neighbours: SecAgg+ lays a ring, so the number must be even (or {} for \
                 every other client)",
                n - 1
            )));
        }
        let holders = k + 1;
        if holders > MAX_HOLDERS {
            return Err(err(format!(
                "{k} neighbours: at most {} (shares are numbered in GF(256))",
                MAX_HOLDERS - 1
            )));
        }
        let t = self.threshold as usize;
        if t < min_threshold(holders) || t > holders {
            return Err(err(format!(
                "threshold {t}: must be more than two thirds of the {holders} holders of each \
                 client's secrets ({}..={holders})",
                min_threshold(holders)
            )));
        }
        if self.dim == 0 || self.dim as usize > crate::wire::MAX_PARAMS {
            return Err(err(format!("input length {} is not allowed", self.dim)));
        }
        Ok(())
    }

    /// A digest of everything in the round's parameters: signed into adverts and survivor
    /// lists, so an aggregator that shows different clients different parameters (another
    /// graph, another threshold) is caught.
    pub(super) fn digest(&self) -> [u8; 32] {
        let p = self;
        let mut h = blake3::Hasher::new_derive_key("sov secagg round params v1");
        h.update(&p.round.to_le_bytes());
        h.update(&(p.participants.len() as u64).to_le_bytes());
        for c in &p.participants {
            h.update(&c.to_le_bytes());
        }
        h.update(&p.neighbours.to_le_bytes());
        h.update(&p.threshold.to_le_bytes());
        h.update(&p.dim.to_le_bytes());
        h.update(&p.graph_seed);
        *h.finalize().as_bytes()
    }

    /// The neighbour graph.
    pub fn graph(&self) -> Graph {
        Graph::new(
            &self.participants,
            self.neighbours as usize,
            self.graph_seed,
        )
    }
}

/// Who masks with whom: a ring over a seeded random order of the participants, each
/// client joined to the `K/2` nearest on either side (the complete graph when `K = n − 1`).
#[derive(Debug, Clone)]
pub struct Graph {
    order: Vec<u32>,
    pos: BTreeMap<u32, usize>,
    k: usize,
}

impl Graph {
    fn new(participants: &[u32], k: usize, seed: [u8; 32]) -> Self {
        let mut order = participants.to_vec();
        order.shuffle(&mut StdRng::from_seed(seed));
        let pos = order.iter().enumerate().map(|(i, &c)| (c, i)).collect();
        Graph { order, pos, k }
    }

    /// Is `c` a participant?
    pub fn contains(&self, c: u32) -> bool {
        self.pos.contains_key(&c)
    }

    /// The neighbours of `c`, ascending (empty for a stranger).
    pub fn neighbours(&self, c: u32) -> Vec<u32> {
        let n = self.order.len();
        let Some(&p) = self.pos.get(&c) else {
            return Vec::new();
        };
        let mut v: Vec<u32> = if self.k + 1 >= n {
            self.order.iter().copied().filter(|&x| x != c).collect()
        } else {
            (1..=self.k / 2)
                .flat_map(|j| [self.order[(p + j) % n], self.order[(p + n - j) % n]])
                .collect()
        };
        v.sort_unstable();
        v
    }

    /// The holders of `c`'s shares: its neighbours and itself, ascending. Holder `i` gets
    /// share number `i + 1`.
    pub fn holders(&self, c: u32) -> Vec<u32> {
        let mut v = self.neighbours(c);
        if self.contains(c) {
            let at = v.partition_point(|&x| x < c);
            v.insert(at, c);
        }
        v
    }

    /// Are `a` and `b` neighbours?
    pub fn adjacent(&self, a: u32, b: u32) -> bool {
        let (Some(&pa), Some(&pb)) = (self.pos.get(&a), self.pos.get(&b)) else {
            return false;
        };
        let n = self.order.len();
        if a == b {
            return false;
        }
        if self.k + 1 >= n {
            return true;
        }
        let d = pa.abs_diff(pb);
        d.min(n - d) <= self.k / 2
    }
}

/// Fixed-point coding of floats into `Z_2^32`: `q(x) = round(x · scale)` as a two's
/// complement 32-bit integer. The scale is chosen so that the sum of up to `clients`
/// inputs whose coordinates lie in `[−range, range]` stays inside `(−2^31, 2^31)`, so the
/// modular sum decodes to the exact sum of the quantised inputs. Inputs outside the range
/// are clamped to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantizer {
    /// Grid points per unit.
    pub scale: f64,
    /// Largest magnitude one input coordinate may have.
    pub range: f64,
}

impl Quantizer {
    /// The finest grid for sums of up to `clients` inputs within `[−range, range]`, with
    /// `margin` more units of headroom on the sum (room for noise added on the grid).
    pub fn for_sum(range: f64, clients: usize, margin: f64) -> Result<Self> {
        let span = range * clients as f64 + margin;
        if !(range.is_finite() && range > 0.0 && margin >= 0.0 && span.is_finite()) {
            return Err(err(format!("quantisation range {range} must be > 0")));
        }
        Ok(Quantizer {
            scale: (i32::MAX as f64 - 1.0) / span,
            range,
        })
    }

    /// Quantise one value.
    pub fn quantize_one(&self, x: f64) -> u32 {
        let x = if x.is_nan() {
            0.0
        } else {
            x.clamp(-self.range, self.range)
        };
        ((x * self.scale).round() as i64) as i32 as u32
    }

    /// Quantise a vector.
    pub fn quantize(&self, x: &[f32]) -> Vec<u32> {
        x.iter().map(|&v| self.quantize_one(v as f64)).collect()
    }

    /// Decode a (sum of) quantised value(s).
    pub fn dequantize_one(&self, q: u32) -> f64 {
        q as i32 as f64 / self.scale
    }

    /// Decode a vector.
    pub fn dequantize(&self, q: &[u32]) -> Vec<f64> {
        q.iter().map(|&v| self.dequantize_one(v)).collect()
    }
}
