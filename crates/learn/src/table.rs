//! A member's own tabular data: a CSV file with a header row, numeric feature columns and an
//! integer class label (in the column named `label`, or the one the member names), checked
//! against the federation's task before the member joins, and optionally standardised with
//! the member's own means and deviations.
//!
//! The reader follows RFC 4180 (fields separated by commas, records by LF or CRLF, fields in
//! double quotes may hold commas, line breaks and `""`), takes bytes rather than a path, and
//! answers malformed input with an error that names the row and column, never a panic. What
//! it accepts is bounded: [`MAX_COLUMNS`] columns, [`MAX_VALUES`] values in all.

use crate::{Error, Result, data::Dataset};

/// Most columns a table may have.
pub const MAX_COLUMNS: usize = 10_000;
/// Most feature values a table may hold (rows × features): 1 GiB of `f32`.
pub const MAX_VALUES: usize = 1 << 28;
/// Most classes a label may range over.
pub const MAX_CLASSES: usize = 1000;

/// The label column's name unless the member names another.
pub const DEFAULT_LABEL: &str = "label";

/// A parsed table: the feature columns' names and the examples (shape `[1, 1, features]`,
/// classes = the largest label + 1 until [`Table::for_task`] sets the task's count).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The feature columns, in order (the label column left out).
    pub columns: Vec<String>,
    /// The examples.
    pub data: Dataset,
}

impl Table {
    /// The examples for a task of `features` features and `classes` classes, or why this
    /// table does not fit it (what a member is told when it asks to join).
    pub fn for_task(self, features: usize, classes: usize) -> Result<Dataset> {
        let have = self.columns.len();
        if have != features {
            return Err(Error::Data(format!(
                "the table has {have} feature columns, the task {features}"
            )));
        }
        if let Some((row, l)) = self
            .data
            .labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= classes)
        {
            return Err(Error::Data(format!(
                "row {}: label {l} is not one of the task's {classes} classes (0 to {})",
                row + 1,
                classes.saturating_sub(1)
            )));
        }
        Ok(Dataset {
            classes,
            ..self.data
        })
    }
}

/// Parse a CSV table. `label` names the label column (default [`DEFAULT_LABEL`]); every other
/// column is a feature and must hold finite numbers; labels are integers 0 to
/// [`MAX_CLASSES`] − 1. Rows are numbered from 1 after the header in errors.
pub fn parse_csv(bytes: &[u8], label: Option<&str>) -> Result<Table> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Error::Data(format!(
            "the table is not UTF-8 text (byte {})",
            e.valid_up_to()
        ))
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Records::new(text);
    let header = records
        .next()
        .transpose()?
        .ok_or_else(|| Error::Data("the table is empty: no header row".into()))?;
    let label = label.unwrap_or(DEFAULT_LABEL);
    let header: Vec<String> = header.iter().map(|h| h.trim().to_owned()).collect();
    let at: Vec<usize> = (0..header.len()).filter(|&i| header[i] == label).collect();
    let label_at = match at[..] {
        [i] => i,
        [] => {
            return Err(Error::Data(format!(
                "no column is named {label:?} (the columns: {}); name the label column with \
                 --label-column",
                shorten(&header.join(", "))
            )));
        }
        _ => {
            return Err(Error::Data(format!(
                "{} columns are named {label:?}",
                at.len()
            )));
        }
    };
    let columns: Vec<String> = header
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != label_at)
        .map(|(_, h)| h.clone())
        .collect();
    if columns.is_empty() {
        return Err(Error::Data("the table has no feature column".into()));
    }
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    for (n, record) in records.enumerate() {
        let record = record?;
        let row = n + 1;
        if record.len() != header.len() {
            return Err(Error::Data(format!(
                "row {row}: {} fields, the header has {}",
                record.len(),
                header.len()
            )));
        }
        if features.len() + columns.len() > MAX_VALUES {
            return Err(Error::Data(format!(
                "more than {MAX_VALUES} values: too large a table"
            )));
        }
        for (i, field) in record.iter().enumerate() {
            let field = field.trim();
            let bad = |why: &str| {
                Error::Data(format!(
                    "row {row}, column {:?}: {why} ({:?})",
                    shorten(&header[i]),
                    shorten(field)
                ))
            };
            if field.is_empty() {
                return Err(bad("empty; fill in or drop rows with missing values"));
            }
            if i == label_at {
                let l: u32 = field
                    .parse()
                    .map_err(|_| bad("a label is a class number 0, 1, 2, …"))?;
                if l as usize >= MAX_CLASSES {
                    return Err(bad(&format!("labels go up to {}", MAX_CLASSES - 1)));
                }
                labels.push(l);
            } else {
                let v: f32 = field.parse().map_err(|_| bad("not a number"))?;
                if !v.is_finite() {
                    return Err(bad("not a finite number"));
                }
                features.push(v);
            }
        }
    }
    if labels.is_empty() {
        return Err(Error::Data("the table has a header but no rows".into()));
    }
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    Ok(Table {
        data: Dataset {
            shape: [1, 1, columns.len()],
            classes,
            features,
            labels,
        },
        columns,
    })
}

/// Per-feature standardisation, `(x − mean) / deviation`, with a member's own statistics
/// (a constant feature keeps deviation 1, so it becomes 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    /// The mean of each feature.
    pub mean: Vec<f32>,
    /// The standard deviation of each feature (1 where it is 0).
    pub deviation: Vec<f32>,
}

impl Standardizer {
    /// The statistics of `data`'s features.
    pub fn fit(data: &Dataset) -> Self {
        let (d, n) = (data.dim(), data.len().max(1) as f64);
        let (mut sum, mut sq) = (vec![0f64; d], vec![0f64; d]);
        for i in 0..data.len() {
            for (j, &x) in data.row(i).iter().enumerate() {
                sum[j] += f64::from(x);
                sq[j] += f64::from(x) * f64::from(x);
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let deviation = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| {
                let var = (s / n - m * m).max(0.0);
                if var > 1e-12 { var.sqrt() as f32 } else { 1.0 }
            })
            .collect();
        Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            deviation,
        }
    }

    /// Standardise `data`'s features in place.
    pub fn apply(&self, data: &mut Dataset) {
        let d = self.mean.len().max(1);
        for (i, x) in data.features.iter_mut().enumerate() {
            let j = i % d;
            *x = (*x - self.mean[j]) / self.deviation[j];
        }
    }
}

/// At most 40 characters of user input in a message.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// RFC 4180 records of `text`; blank lines are skipped.
struct Records<'a> {
    rest: &'a str,
    line: usize,
}

impl<'a> Records<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            rest: text,
            line: 1,
        }
    }

    /// One record, from `self.rest`.
    fn record(&mut self) -> Result<Vec<String>> {
        let mut fields = Vec::new();
        let mut chars = self.rest.char_indices().peekable();
        let mut field = String::new();
        let started = self.line;
        loop {
            // The start of a field.
            if let Some(&(_, '"')) = chars.peek() {
                chars.next();
                loop {
                    match chars.next() {
                        Some((_, '"')) => {
                            if let Some(&(_, '"')) = chars.peek() {
                                chars.next();
                                field.push('"');
                            } else {
                                break;
                            }
                        }
                        Some((_, c)) => {
                            if c == '\n' {
                                self.line += 1;
                            }
                            field.push(c);
                        }
                        None => {
                            return Err(Error::Data(format!(
                                "line {started}: a quoted field is not closed"
                            )));
                        }
                    }
                }
                // Only a separator or the record's end may follow a closing quote.
                match chars.peek() {
                    None | Some(&(_, ',' | '\n' | '\r')) => {}
                    Some(&(_, c)) => {
                        return Err(Error::Data(format!(
                            "line {}: {c:?} after a closing quote",
                            self.line
                        )));
                    }
                }
            }
            // The rest of an unquoted field, up to a separator or the record's end.
            loop {
                match chars.peek() {
                    Some(&(_, ',')) => {
                        chars.next();
                        fields.push(std::mem::take(&mut field));
                        if fields.len() > MAX_COLUMNS {
                            return Err(Error::Data(format!(
                                "line {started}: more than {MAX_COLUMNS} columns"
                            )));
                        }
                        break;
                    }
                    Some(&(i, '\r')) if self.rest[i + 1..].starts_with('\n') => {
                        chars.next();
                    }
                    Some(&(i, '\n')) => {
                        fields.push(std::mem::take(&mut field));
                        self.rest = &self.rest[i + 1..];
                        self.line += 1;
                        return Ok(fields);
                    }
                    None => {
                        fields.push(std::mem::take(&mut field));
                        self.rest = "";
                        return Ok(fields);
                    }
                    Some(&(_, '"')) => {
                        return Err(Error::Data(format!(
                            "line {}: a quote inside an unquoted field",
                            self.line
                        )));
                    }
                    Some(&(_, c)) => {
                        chars.next();
                        field.push(c);
                    }
                }
            }
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Vec<String>>;

    fn next(&mut self) -> Option<Self::Item> {
        let trimmed = self.rest.trim_start_matches(['\r', '\n']);
        self.line += self.rest[..self.rest.len() - trimmed.len()]
            .matches('\n')
            .count();
        self.rest = trimmed;
        if self.rest.is_empty() {
            return None;
        }
        let r = self.record();
        if r.is_err() {
            // No more records after a malformed one.
            self.rest = "";
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn err(csv: &str, label: Option<&str>) -> String {
        parse_csv(csv.as_bytes(), label).unwrap_err().to_string()
    }

    #[test]
    fn reads_rfc4180_tables() {
        let t = parse_csv(
            "\u{feff}age,\"income, net\",label\r\n31, 2.5e3 ,1\r\n\r\n\"45\",\"-7\",0\n".as_bytes(),
            None,
        )
        .unwrap();
        assert_eq!(t.columns, ["age", "income, net"]);
        assert_eq!(t.data.features, [31.0, 2500.0, 45.0, -7.0]);
        assert_eq!(t.data.labels, [1, 0]);
        assert_eq!((t.data.shape, t.data.classes), ([1, 1, 2], 2));
        // Another label column, anywhere; quotes with quotes and line breaks in a header.
        let t = parse_csv(
            "class,\"say \"\"x\"\"\nplease\",y\n2,0.5,1\n".as_bytes(),
            Some("class"),
        )
        .unwrap();
        assert_eq!(t.columns, ["say \"x\"\nplease", "y"]);
        assert_eq!((t.data.labels.as_slice(), t.data.classes), (&[2][..], 3));
        // No newline at the end.
        assert_eq!(parse_csv(b"a,label\n1,0", None).unwrap().data.len(), 1);
    }

    #[test]
    fn says_what_is_wrong_where() {
        for (csv, label, want) in [
            ("", None, "empty"),
            ("a,b\n1,2\n", None, "no column is named \"label\""),
            ("a,b\n1,2\n", Some("c"), "--label-column"),
            ("label,label\n1,2\n", None, "2 columns are named"),
            ("label\n1\n", None, "no feature column"),
            ("a,label\n", None, "no rows"),
            (
                "a,label\n1,0\n2\n",
                None,
                "row 2: 1 fields, the header has 2",
            ),
            (
                "a,label\n1,0\nx,1\n",
                None,
                "row 2, column \"a\": not a number (\"x\")",
            ),
            ("a,label\n,0\n", None, "empty; fill in"),
            ("a,label\nNaN,0\n", None, "not a finite number"),
            ("a,label\ninf,0\n", None, "not a finite number"),
            ("a,label\n1,cat\n", None, "a label is a class number"),
            ("a,label\n1,-1\n", None, "a label is a class number"),
            ("a,label\n1,1.5\n", None, "a label is a class number"),
            ("a,label\n1,1000\n", None, "labels go up to 999"),
            (
                "a,label\n\"1,0\n",
                None,
                "line 2: a quoted field is not closed",
            ),
            ("a,label\n\"1\"x,0\n", None, "after a closing quote"),
            (
                "a,label\n1\"2,0\n",
                None,
                "a quote inside an unquoted field",
            ),
        ] {
            let got = err(csv, label);
            assert!(got.contains(want), "{csv:?}: {got}");
        }
        assert!(
            parse_csv(&[0xff, 0xfe], None)
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
        let wide = format!("{}label\n", "a,".repeat(MAX_COLUMNS + 1));
        assert!(err(&wide, None).contains("more than 10000 columns"));
    }

    #[test]
    fn a_table_fits_a_task_or_says_why_not() {
        let t = parse_csv(b"a,b,label\n1,2,0\n3,4,2\n", None).unwrap();
        let d = t.clone().for_task(2, 10).unwrap();
        assert_eq!((d.classes, d.len()), (10, 2));
        assert!(
            t.clone()
                .for_task(3, 10)
                .unwrap_err()
                .to_string()
                .contains("2 feature columns, the task 3")
        );
        let e = t.for_task(2, 2).unwrap_err().to_string();
        assert!(
            e.contains("row 2: label 2 is not one of the task's 2 classes"),
            "{e}"
        );
    }

    #[test]
    fn standardising_gives_zero_mean_and_unit_deviation() {
        let mut t = parse_csv(b"a,b,c,label\n1,10,5,0\n3,30,5,1\n5,50,5,0\n", None).unwrap();
        let s = Standardizer::fit(&t.data);
        assert_eq!(s.mean, [3.0, 30.0, 5.0]);
        assert_eq!(s.deviation[2], 1.0, "a constant column");
        s.apply(&mut t.data);
        for j in 0..3 {
            let col: Vec<f32> = (0..3).map(|i| t.data.row(i)[j]).collect();
            let mean = col.iter().sum::<f32>() / 3.0;
            assert!(mean.abs() < 1e-6);
            if j < 2 {
                let var = col.iter().map(|x| x * x).sum::<f32>() / 3.0;
                assert!((var - 1.0).abs() < 1e-5, "{var}");
            }
        }
    }

    proptest! {
        /// Any table written with quoting reads back as written.
        #[test]
        fn writes_read_back(
            rows in proptest::collection::vec((proptest::collection::vec(-1e6f32..1e6, 3), 0u32..5), 1..20),
            name in "[ -~\n]{0,12}",
        ) {
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            let mut csv = format!("{quoted},x2,x3,label\r\n");
            for (f, l) in &rows {
                csv.push_str(&format!("{},{},{},{l}\r\n", f[0], f[1], f[2]));
            }
            let t = parse_csv(csv.as_bytes(), None).unwrap();
            prop_assert_eq!(&t.columns[0], name.trim());
            let want: Vec<f32> = rows.iter().flat_map(|(f, _)| f.clone()).collect();
            prop_assert_eq!(t.data.features, want);
            let labels: Vec<u32> = rows.iter().map(|r| r.1).collect();
            prop_assert_eq!(t.data.labels, labels);
        }

        /// Arbitrary bytes never panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_csv(&bytes, None);
            let _ = parse_csv(&bytes, Some("a"));
        }
    }
}
