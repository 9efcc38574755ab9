//! Partitions: which training rows each client holds. IID, Dirichlet(α) label skew,
//! label-sorted shards, or an explicit split file (the JSON that Flower's baseline
//! `export_split.py` writes) for point-by-point comparisons.

use std::{collections::HashMap, fmt, str::FromStr};

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use rand_distr::{Distribution, multi::Dirichlet};

use crate::{
    Error, Result,
    data::{Dataset, Split},
};

/// Fewest rows a Dirichlet partition gives a client (it is redrawn until all have them).
pub const MIN_CLIENT_ROWS: usize = 5;
/// Redraws of a Dirichlet partition before giving up.
const MAX_DRAWS: usize = 10_000;

/// How training rows are spread over clients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Partition {
    /// `iid`: shuffled, then dealt out in near-equal parts.
    Iid,
    /// `dirichlet:A`: per class, client shares ~ Dirichlet(A); small A, strong skew.
    Dirichlet(f64),
    /// `shards:S`: rows sorted by label cut into clients × S shards, S per client.
    Shards(usize),
}

impl FromStr for Partition {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Spec(format!(
                "partition {s:?}: expected iid, dirichlet:A (A > 0) or shards:S (S ≥ 1)"
            ))
        };
        if s == "iid" {
            return Ok(Partition::Iid);
        }
        if let Some(a) = s.strip_prefix("dirichlet:") {
            let a: f64 = a.parse().map_err(|_| bad())?;
            if !(a.is_finite() && a > 0.0) {
                return Err(bad());
            }
            return Ok(Partition::Dirichlet(a));
        }
        if let Some(k) = s.strip_prefix("shards:") {
            let k: usize = k.parse().map_err(|_| bad())?;
            if k == 0 {
                return Err(bad());
            }
            return Ok(Partition::Shards(k));
        }
        Err(bad())
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Iid => f.write_str("iid"),
            Partition::Dirichlet(a) => write!(f, "dirichlet:{a}"),
            Partition::Shards(k) => write!(f, "shards:{k}"),
        }
    }
}

impl Partition {
    /// Spread the rows of `data` over `clients`, deterministically for `seed`. Every client
    /// gets at least one row (an error says when that cannot be).
    pub fn apply(&self, data: &Dataset, clients: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
        if clients == 0 {
            return Err(Error::Spec("at least one client is needed".into()));
        }
        if clients > data.len() {
            return Err(Error::Spec(format!(
                "{clients} clients but only {} training rows",
                data.len()
            )));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let parts = match *self {
            Partition::Iid => {
                let mut rows: Vec<usize> = (0..data.len()).collect();
                rows.shuffle(&mut rng);
                (0..clients)
                    .map(|c| {
                        let (a, b) = (c * rows.len() / clients, (c + 1) * rows.len() / clients);
                        let mut p = rows[a..b].to_vec();
                        p.sort_unstable();
                        p
                    })
                    .collect()
            }
            Partition::Dirichlet(alpha) => dirichlet(data, clients, alpha, &mut rng)?,
            Partition::Shards(per) => {
                let n_shards = clients * per;
                if n_shards > data.len() {
                    return Err(Error::Spec(format!(
                        "{n_shards} shards but only {} training rows",
                        data.len()
                    )));
                }
                let mut rows: Vec<usize> = (0..data.len()).collect();
                rows.shuffle(&mut rng);
                rows.sort_by_key(|&r| data.labels[r]);
                let mut order: Vec<usize> = (0..n_shards).collect();
                order.shuffle(&mut rng);
                (0..clients)
                    .map(|c| {
                        let mut p: Vec<usize> = order[c * per..(c + 1) * per]
                            .iter()
                            .flat_map(|&s| {
                                let (a, b) =
                                    (s * rows.len() / n_shards, (s + 1) * rows.len() / n_shards);
                                rows[a..b].iter().copied()
                            })
                            .collect();
                        p.sort_unstable();
                        p
                    })
                    .collect()
            }
        };
        Ok(parts)
    }
}

/// Per class, client shares drawn from Dirichlet(α); clients that already hold more than an
/// even share get no more (the NIID-Bench rule Flower's baseline uses); redrawn until every
/// client has [`MIN_CLIENT_ROWS`] rows (or one, when there are too few rows for that).
fn dirichlet(
    data: &Dataset,
    clients: usize,
    alpha: f64,
    rng: &mut StdRng,
) -> Result<Vec<Vec<usize>>> {
    let min = MIN_CLIENT_ROWS.min(data.len() / clients).max(1);
    let even = data.len() as f64 / clients as f64;
    let dir = Dirichlet::new(vec![alpha; clients].as_slice())
        .map_err(|e| Error::Spec(format!("dirichlet:{alpha}: {e}")))?;
    for _ in 0..MAX_DRAWS {
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); clients];
        for c in 0..data.classes {
            let mut rows: Vec<usize> = (0..data.len())
                .filter(|&r| data.labels[r] as usize == c)
                .collect();
            rows.shuffle(rng);
            let mut p: Vec<f64> = dir.sample(rng);
            for (k, share) in p.iter_mut().enumerate() {
                if parts[k].len() as f64 >= even {
                    *share = 0.0;
                }
            }
            let total: f64 = p.iter().sum();
            if total <= 0.0 || !total.is_finite() {
                continue;
            }
            let mut acc = 0.0;
            let mut start = 0;
            for (k, share) in p.iter().enumerate() {
                acc += share / total;
                let end = if k + 1 == clients {
                    rows.len()
                } else {
                    ((acc * rows.len() as f64) as usize).min(rows.len())
                };
                parts[k].extend_from_slice(&rows[start..end.max(start)]);
                start = end.max(start);
            }
        }
        if parts.iter().all(|p| p.len() >= min) {
            for p in &mut parts {
                p.sort_unstable();
            }
            return Ok(parts);
        }
    }
    Err(Error::Spec(format!(
        "could not draw a dirichlet:{alpha} partition giving each of {clients} clients {min} rows"
    )))
}

/// An explicit split: test rows, and each client's training rows, as row numbers of the
/// whole data set (the JSON `export_split.py` writes).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SplitFile {
    /// Rows the global model is evaluated on.
    pub test_rows: Vec<usize>,
    /// Each client's rows.
    pub clients: Vec<Vec<usize>>,
}

impl SplitFile {
    /// Parse the JSON.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let f: SplitFile =
            serde_json::from_slice(bytes).map_err(|e| Error::Data(format!("split file: {e}")))?;
        if f.clients.is_empty() || f.clients.iter().any(Vec::is_empty) {
            return Err(Error::Data(
                "split file: every client needs at least one row".into(),
            ));
        }
        if f.test_rows.is_empty() {
            return Err(Error::Data("split file: no test rows".into()));
        }
        Ok(f)
    }

    /// Apply to the whole data set `all`: the train part holds the clients' rows (client
    /// after client), the test part the test rows; returns the split and each client's
    /// rows of the train part. Rows out of range, or shared between two clients or between
    /// a client and the test set, are errors.
    pub fn apply(&self, all: &Dataset) -> Result<(Split, Vec<Vec<usize>>)> {
        let mut seen: HashMap<usize, &str> = HashMap::new();
        for &r in &self.test_rows {
            if seen.insert(r, "the test set").is_some() {
                return Err(Error::Data(format!(
                    "split file: test row {r} is listed twice"
                )));
            }
        }
        let mut train_rows = Vec::new();
        let mut parts = Vec::with_capacity(self.clients.len());
        for (c, rows) in self.clients.iter().enumerate() {
            let mut part = Vec::with_capacity(rows.len());
            for &r in rows {
                if let Some(other) = seen.insert(r, "another client") {
                    return Err(Error::Data(format!(
                        "split file: row {r} of client {c} is also in {other}"
                    )));
                }
                part.push(train_rows.len());
                train_rows.push(r);
            }
            parts.push(part);
        }
        Ok((
            Split {
                train: all.select(&train_rows)?,
                test: all.select(&self.test_rows)?,
            },
            parts,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::data;

    fn covers_once(parts: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn every_partition_deals_each_row_once() {
        let d = data::digits().unwrap();
        for p in ["iid", "dirichlet:0.5", "dirichlet:100", "shards:2"] {
            let p: Partition = p.parse().unwrap();
            let parts = p.apply(&d, 10, 7).unwrap();
            assert_eq!(parts.len(), 10);
            covers_once(&parts, d.len());
            assert_eq!(parts, p.apply(&d, 10, 7).unwrap(), "{p} is seeded");
            assert!(parts.iter().all(|c| !c.is_empty()));
        }
    }

    #[test]
    fn label_skew_grows_as_alpha_shrinks() {
        let d = data::digits().unwrap();
        let classes_held = |p: &str| -> f64 {
            let parts = p.parse::<Partition>().unwrap().apply(&d, 20, 1).unwrap();
            parts
                .iter()
                .map(|rows| {
                    let mut cls: Vec<u32> = rows.iter().map(|&r| d.labels[r]).collect();
                    cls.sort_unstable();
                    cls.dedup();
                    cls.len() as f64
                })
                .sum::<f64>()
                / 20.0
        };
        let (skewed, even) = (classes_held("dirichlet:0.1"), classes_held("dirichlet:100"));
        assert!(skewed < 6.0 && even > 9.5, "{skewed} vs {even}");
        assert!(classes_held("shards:2") <= 4.0);
    }

    #[test]
    fn parse_refuses_bad_partitions() {
        for s in [
            "",
            "dirichlet:0",
            "dirichlet:-1",
            "dirichlet:nan",
            "shards:0",
            "noniid",
        ] {
            assert!(s.parse::<Partition>().is_err(), "{s}");
        }
        let d = data::digits().unwrap();
        assert!(Partition::Iid.apply(&d, 0, 0).is_err());
        assert!(Partition::Iid.apply(&d, 5000, 0).is_err());
    }

    #[test]
    fn flowers_split_files_apply_to_the_built_in_digits() {
        let d = data::digits().unwrap();
        for (file, n) in [
            (&include_bytes!("../fixtures/flower-split-10.json")[..], 10),
            (&include_bytes!("../fixtures/flower-split-50.json")[..], 50),
        ] {
            let f = SplitFile::parse(file).unwrap();
            let (split, parts) = f.apply(&d).unwrap();
            assert_eq!(parts.len(), n);
            assert_eq!(split.train.len(), 1347);
            assert_eq!(split.test.len(), 450);
            covers_once(&parts, 1347);
        }
        let dup = br#"{"test_rows":[1,2],"clients":[[3],[3]]}"#;
        let e = SplitFile::parse(dup).unwrap().apply(&d).unwrap_err();
        assert!(e.to_string().contains("row 3 of client 1"), "{e}");
        let out = br#"{"test_rows":[1],"clients":[[99999]]}"#;
        assert!(SplitFile::parse(out).unwrap().apply(&d).is_err());
        assert!(SplitFile::parse(br#"{"test_rows":[1],"clients":[[]]}"#).is_err());
        assert!(SplitFile::parse(b"[").is_err());
    }
}
