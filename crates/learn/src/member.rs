//! A member's own data for a federation: where it comes from (a CSV table, an IDX pair, or
//! for tests a shard of a built-in data set), checked against the federation's task before
//! the member joins, with a validation share held out on which the member reports its
//! accuracy. The data never leaves the member; only what it trains does.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
};

use crate::{
    Error, Result,
    data::{self, Dataset},
    federation::Task,
    partition::Partition,
    table::{self, Standardizer},
};

/// The built-in data sets a shard may come from.
const SHARD_KINDS: [&str; 3] = ["digits", "fashion-mnist", "mnist"];
/// Most shards a built-in data set is cut into.
const MAX_SHARDS: usize = 10_000;

/// Where a member's data comes from (what `--data` takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A CSV table: a header row, numeric features, an integer label.
    Csv(PathBuf),
    /// An IDX pair, images then labels (gzipped or not), written `IMAGES,LABELS`.
    Idx(PathBuf, PathBuf),
    /// The test split of a built-in data set, written `digits:test`: what no shard holds,
    /// to evaluate a federation's model on.
    Test(String),
    /// Part `index` (1 to `count`) of `count` IID parts of a built-in data set's training
    /// split, written `digits:2/5`: for tests and demos, so that members hold disjoint data.
    Shard {
        /// `digits`, `fashion-mnist` or `mnist`
        data: String,
        /// which part, from 1
        index: usize,
        /// how many parts
        count: usize,
    },
}

impl FromStr for Source {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        // A file that exists is a table, whatever its name holds.
        if Path::new(s).is_file() {
            return Ok(Source::Csv(s.into()));
        }
        if let Some((kind, part)) = s.split_once(':')
            && SHARD_KINDS.contains(&kind)
        {
            if part == "test" {
                return Ok(Source::Test(kind.into()));
            }
            let bad = || {
                Error::Spec(format!(
                    "data {s:?}: a shard is written {kind}:I/N, part I of N (1 ≤ I ≤ N ≤ \
                     {MAX_SHARDS}), or {kind}:test for the test split"
                ))
            };
            let (i, n) = part.split_once('/').ok_or_else(bad)?;
            let (index, count): (usize, usize) =
                (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
            if index == 0 || index > count || count > MAX_SHARDS {
                return Err(bad());
            }
            return Ok(Source::Shard {
                data: kind.into(),
                index,
                count,
            });
        }
        if let Some((images, labels)) = s.split_once(',') {
            return Ok(Source::Idx(images.into(), labels.into()));
        }
        Err(Error::Data(format!(
            "{s:?} is not a file; --data takes a CSV file, IMAGES,LABELS (an IDX pair) or a \
             shard such as digits:1/5"
        )))
    }
}

/// How a member loads its data.
#[derive(Debug, Clone)]
pub struct Options {
    /// The label column of a table (default `label`).
    pub label_column: Option<String>,
    /// Standardise features with the member's own statistics (from its training part).
    pub standardize: bool,
    /// The share of each class held out for validation.
    pub validation: f64,
    /// Shuffles the validation split.
    pub seed: u64,
    /// Where `fashion-mnist/` and `mnist/` are (for shards of those).
    pub data_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            label_column: None,
            standardize: false,
            validation: 0.1,
            seed: 0,
            data_dir: None,
        }
    }
}

/// A member's data, ready to train on.
#[derive(Debug, Clone)]
pub struct MemberData {
    /// What it trains on.
    pub train: Dataset,
    /// What it reports its accuracy on (never trained on).
    pub validation: Dataset,
    /// The statistics its features were standardised with, if they were.
    pub standardizer: Option<Standardizer>,
}

/// Load a member's data from `source` for `task`, or say why it does not fit the task (the
/// reason a member is refused at join).
pub fn load(source: &Source, task: &Task, opts: &Options) -> Result<MemberData> {
    let input = task.input.map(|x| x as usize);
    let classes = task.classes as usize;
    let all = match source {
        Source::Csv(path) => {
            let bytes = read(path)?;
            let t = table::parse_csv(&bytes, opts.label_column.as_deref())
                .map_err(|e| Error::Data(format!("{}: {}", path.display(), strip(e))))?;
            if input[0] * input[1] != 1 {
                return Err(Error::Data(format!(
                    "the task learns {}×{}×{} images, not table rows",
                    input[0], input[1], input[2]
                )));
            }
            t.for_task(input[2], classes)
                .map_err(|e| Error::Data(format!("{}: {}", path.display(), strip(e))))?
        }
        Source::Idx(images, labels) => {
            let d = data::parse_idx(&read(images)?, &read(labels)?, classes.max(1))
                .map_err(|e| Error::Data(format!("{}: {}", images.display(), strip(e))))?;
            fits(d, input, classes)?
        }
        Source::Test(data) => {
            if *data != task.data {
                return Err(Error::Data(format!(
                    "the test split of {data} for a model that learns {}",
                    task.data
                )));
            }
            fits(
                builtin(data, true, opts.data_dir.as_deref())?,
                input,
                classes,
            )?
        }
        Source::Shard { data, index, count } => {
            if *data != task.data {
                return Err(Error::Data(format!(
                    "a shard of {data} for a federation that learns {}",
                    task.data
                )));
            }
            let train = builtin(data, false, opts.data_dir.as_deref())?;
            let parts = Partition::Iid.apply(&train, *count, 0)?;
            fits(train.select(&parts[index - 1])?, input, classes)?
        }
    };
    if !(0.0..1.0).contains(&opts.validation) {
        return Err(Error::Spec(format!(
            "validation share {} must be in [0, 1)",
            opts.validation
        )));
    }
    let split = all.stratified_split(opts.validation, opts.seed)?;
    let (mut train, mut validation) = (split.train, split.test);
    if train.is_empty() {
        return Err(Error::Data("no rows left to train on".into()));
    }
    let standardizer = opts.standardize.then(|| {
        let s = Standardizer::fit(&train);
        s.apply(&mut train);
        s.apply(&mut validation);
        s
    });
    Ok(MemberData {
        train,
        validation,
        standardizer,
    })
}

/// `d` if its examples have the task's shape and its labels the task's classes.
fn fits(d: Dataset, input: [usize; 3], classes: usize) -> Result<Dataset> {
    if d.shape != input {
        return Err(Error::Data(format!(
            "examples of {:?} (channels, height, width), the task's are {input:?}",
            d.shape
        )));
    }
    if let Some(l) = d.labels.iter().find(|&&l| l as usize >= classes) {
        return Err(Error::Data(format!(
            "label {l} is not one of the task's {classes} classes"
        )));
    }
    Ok(Dataset { classes, ..d })
}

/// The training split of a built-in data set (or its test split).
fn builtin(kind: &str, test: bool, dir: Option<&Path>) -> Result<Dataset> {
    let dir = |sub: &str, hint: &str| {
        dir.map(|d| d.join(sub))
            .filter(|d| d.is_dir())
            .ok_or_else(|| Error::Data(format!("{kind} not found: {hint}")))
    };
    let split = match kind {
        "digits" => data::digits()?.stratified_split(0.25, 0)?,
        "fashion-mnist" => data::fashion_mnist(&dir(
            "fashion-mnist",
            "install Debian's dataset-fashion-mnist or run scripts/fetch-data",
        )?)?,
        "mnist" => data::mnist(&dir("mnist", "run scripts/fetch-data")?)?,
        other => return Err(Error::Spec(format!("no built-in data set {other:?}"))),
    };
    Ok(if test { split.test } else { split.train })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Data(format!("reading {}: {e}", path.display())))
}

/// An error's message without its kind's prefix (it is wrapped in one of the same kind).
fn strip(e: Error) -> String {
    match e {
        Error::Data(m) | Error::Spec(m) => m,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(data: &str, input: [u32; 3], classes: u32) -> Task {
        Task {
            data: data.into(),
            input,
            classes,
            model: "logreg".into(),
        }
    }

    fn digits_task() -> Task {
        task("digits", [1, 8, 8], 10)
    }

    #[test]
    fn the_test_split_is_what_no_shard_holds() {
        let test = "digits:test".parse::<Source>().unwrap();
        assert_eq!(test, Source::Test("digits".into()));
        let opts = Options {
            validation: 0.0,
            ..Options::default()
        };
        let t = load(&test, &digits_task(), &opts).unwrap();
        let all: usize = (1..=3)
            .map(|i| {
                let s = Source::Shard {
                    data: "digits".into(),
                    index: i,
                    count: 3,
                };
                load(&s, &digits_task(), &opts).unwrap().train.len()
            })
            .sum();
        assert_eq!(t.train.len() + all, 1797);
        let e = load(&test, &task("mnist", [1, 28, 28], 10), &opts).unwrap_err();
        assert!(e.to_string().contains("test split of digits"), "{e}");
    }

    #[test]
    fn sources_parse_or_say_how_to_write_them() {
        assert_eq!(
            "digits:2/5".parse::<Source>().unwrap(),
            Source::Shard {
                data: "digits".into(),
                index: 2,
                count: 5
            }
        );
        assert_eq!(
            "a.idx,b.idx".parse::<Source>().unwrap(),
            Source::Idx("a.idx".into(), "b.idx".into())
        );
        for bad in [
            "digits:0/5",
            "digits:6/5",
            "digits:1/0",
            "digits:x",
            "digits:1/99999",
        ] {
            let e = bad.parse::<Source>().unwrap_err().to_string();
            assert!(e.contains("digits:I/N"), "{bad}: {e}");
        }
        let e = "missing.csv".parse::<Source>().unwrap_err().to_string();
        assert!(e.contains("is not a file"), "{e}");
        // An existing file is a table, even with a comma or colon in its name.
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("digits:1,2.csv");
        std::fs::write(&odd, "a,label\n1,0\n").unwrap();
        let s = odd.to_str().unwrap().parse::<Source>().unwrap();
        assert_eq!(s, Source::Csv(odd));
    }

    #[test]
    fn shards_are_disjoint_parts_with_a_validation_share() {
        let opts = Options::default();
        let parts: Vec<MemberData> = (1..=3)
            .map(|i| {
                let src = Source::Shard {
                    data: "digits".into(),
                    index: i,
                    count: 3,
                };
                load(&src, &digits_task(), &opts).unwrap()
            })
            .collect();
        let total: usize = parts
            .iter()
            .map(|p| p.train.len() + p.validation.len())
            .sum();
        let whole = data::digits()
            .unwrap()
            .stratified_split(0.25, 0)
            .unwrap()
            .train
            .len();
        assert_eq!(total, whole, "the digits' training split, all of it");
        for p in &parts {
            let share = p.validation.len() as f64 / (p.train.len() + p.validation.len()) as f64;
            assert!((0.07..0.13).contains(&share), "{share}");
            assert_eq!(p.train.classes, 10);
        }
        // Disjoint: no training row of the first part is in the second.
        let rows = |d: &Dataset| -> std::collections::HashSet<Vec<u32>> {
            (0..d.len())
                .map(|i| d.row(i).iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        let (a, b) = (rows(&parts[0].train), rows(&parts[1].train));
        assert!(
            a.intersection(&b).count() < 5,
            "digits has a few duplicate images"
        );
        // A shard of another data set, or a task it does not fit, is refused with why.
        let src = Source::Shard {
            data: "digits".into(),
            index: 1,
            count: 3,
        };
        let e = load(&src, &task("mnist", [1, 28, 28], 10), &opts).unwrap_err();
        assert!(
            e.to_string()
                .contains("a shard of digits for a federation that learns mnist")
        );
        let e = load(&src, &task("digits", [1, 8, 8], 5), &opts).unwrap_err();
        assert!(
            e.to_string().contains("is not one of the task's 5 classes"),
            "{e}"
        );
        let e = load(&src, &task("digits", [1, 4, 16], 10), &opts).unwrap_err();
        assert!(e.to_string().contains("the task's are [1, 4, 16]"), "{e}");
    }

    #[test]
    fn tables_and_idx_pairs_load_for_a_task_or_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("mine.csv");
        let mut text = String::from("a,b,kind\n");
        for i in 0..60 {
            text.push_str(&format!("{},{},{}\n", i * 10, 1000 - i, i % 3));
        }
        std::fs::write(&csv, text).unwrap();
        let opts = Options {
            label_column: Some("kind".into()),
            standardize: true,
            ..Options::default()
        };
        let table_task = task("csv", [1, 1, 2], 3);
        let m = load(&Source::Csv(csv.clone()), &table_task, &opts).unwrap();
        assert_eq!(
            (m.train.len() + m.validation.len(), m.train.classes),
            (60, 3)
        );
        let s = m.standardizer.unwrap();
        assert!(s.mean[0] > 100.0 && s.deviation[0] > 100.0, "{s:?}");
        let mean: f32 = (0..m.train.len()).map(|i| m.train.row(i)[0]).sum::<f32>();
        assert!((mean / m.train.len() as f32).abs() < 1e-4);
        for (t, want) in [
            (task("csv", [1, 1, 3], 3), "2 feature columns, the task 3"),
            (
                task("csv", [1, 1, 2], 2),
                "label 2 is not one of the task's 2 classes",
            ),
            (digits_task(), "images, not table rows"),
        ] {
            let e = load(&Source::Csv(csv.clone()), &t, &opts)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
        let e = load(&Source::Csv(csv.clone()), &table_task, &Options::default()).unwrap_err();
        assert!(
            e.to_string().contains("no column is named \"label\""),
            "{e}"
        );

        // An IDX pair of 20 2×2 images.
        let (n, side) = (20u32, 2u32);
        let mut images = 0x0000_0803u32.to_be_bytes().to_vec();
        for v in [n, side, side] {
            images.extend_from_slice(&v.to_be_bytes());
        }
        images.extend((0..n * side * side).map(|i| (i % 256) as u8));
        let mut labels = 0x0000_0801u32.to_be_bytes().to_vec();
        labels.extend_from_slice(&n.to_be_bytes());
        labels.extend((0..n).map(|i| (i % 4) as u8));
        let (ip, lp) = (dir.path().join("img.idx"), dir.path().join("lab.idx"));
        std::fs::write(&ip, images).unwrap();
        std::fs::write(&lp, labels).unwrap();
        let src = Source::Idx(ip, lp);
        let m = load(&src, &task("csv", [1, 2, 2], 4), &Options::default()).unwrap();
        assert_eq!(m.train.len() + m.validation.len(), 20);
        let e = load(&src, &task("csv", [1, 2, 2], 3), &Options::default()).unwrap_err();
        assert!(e.to_string().contains("label 3"), "{e}");
        let e = load(&src, &digits_task(), &Options::default()).unwrap_err();
        assert!(e.to_string().contains("the task's are [1, 8, 8]"), "{e}");
    }
}
