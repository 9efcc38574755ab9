//! The GGUF file format (versions 2 and 3), as llama.cpp writes it:
//!
//! ```text
//!   "GGUF"  version:u32  tensor_count:u64  kv_count:u64
//!   kv_count × (key:string  type:u32  value)          metadata
//!   tensor_count × (name:string  n_dims:u32  dims:u64×n_dims  type:u32  offset:u64)
//!   padding to `general.alignment` (default 32)
//!   tensor data (each tensor at its offset from here, aligned)
//! ```
//!
//! Strings are a u64 length and UTF-8 bytes; everything is little-endian. A file is
//! untrusted input: every length, count, dimension and offset is checked against the bytes
//! that are there before anything is allocated or sliced, so a malformed or hostile file is
//! an error, never a panic or a huge allocation (fuzzed by `fuzz/fuzz_targets/gguf_parse.rs`).

use std::collections::BTreeMap;

use crate::{
    Error, Result,
    quant::{self, GgmlType},
};

const MAGIC: &[u8; 4] = b"GGUF";
/// Most dimensions a tensor may have (GGML_MAX_DIMS).
pub const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays in metadata we accept.
const MAX_DEPTH: usize = 3;

fn err(msg: impl Into<String>) -> Error {
    Error::Gguf(msg.into())
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `UINT8`
    U8(u8),
    /// `INT8`
    I8(i8),
    /// `UINT16`
    U16(u16),
    /// `INT16`
    I16(i16),
    /// `UINT32`
    U32(u32),
    /// `INT32`
    I32(i32),
    /// `FLOAT32`
    F32(f32),
    /// `BOOL`
    Bool(bool),
    /// `STRING`
    String(String),
    /// `ARRAY` (of one type)
    Array(Vec<Value>),
    /// `UINT64`
    U64(u64),
    /// `INT64`
    I64(i64),
    /// `FLOAT64`
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64).or(match *self {
                Value::I8(v) => Some(v.into()),
                Value::I16(v) => Some(v.into()),
                Value::I32(v) => Some(v.into()),
                Value::I64(v) => Some(v as f64),
                _ => None,
            }),
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// One tensor's entry in the table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (the row length) first, as GGML orders them.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
    /// Bytes of its data.
    pub size: u64,
}

impl TensorInfo {
    /// Number of values.
    pub fn len(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed GGUF file: metadata and tensor table. The tensor data stays in the caller's
/// bytes; [`Gguf::tensor_data`] slices it.
#[derive(Debug, Clone, PartialEq)]
pub struct Gguf {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section and of each tensor.
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_offset: u64,
}

/// Largest GGUF header (metadata and tensor table) [`Gguf::read_head`] reads.
pub const MAX_HEAD: usize = 64 << 20;

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    /// The whole file's length (`b` may be only its beginning).
    total: usize,
    /// A read ran past `b` but not past the file: more of the file is needed.
    short: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n);
        if end.is_some_and(|e| e > self.b.len() && e <= self.total) {
            self.short = true;
        }
        let end = end.filter(|&e| e <= self.b.len()).ok_or_else(|| {
            err(format!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                self.at, self.total
            ))
        })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// Bytes left in the file (not only in `b`).
    fn remaining(&self) -> usize {
        self.total.saturating_sub(self.at)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_size` bytes: refused if they cannot fit.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|&n| n.saturating_mul(min_size.max(1)) <= self.remaining());
        fits.ok_or_else(|| {
            err(format!(
                "{what} is {n}, more than the {} bytes left can hold",
                self.remaining()
            ))
        })
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| err(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(err(format!("{key}: bool byte {b} is neither 0 nor 1"))),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(err(format!("{key}: arrays nested deeper than {MAX_DEPTH}")));
                }
                let inner = self.u32(key)?;
                let min = match inner {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    t => return Err(err(format!("{key}: unknown array element type {t}"))),
                };
                let n = self.count(key, min)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(inner, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            t => return Err(err(format!("{key}: unknown value type {t}"))),
        })
    }
}

impl Gguf {
    /// Parse the header, metadata and tensor table of a GGUF file held in `bytes`, checking
    /// that every tensor's data lies inside `bytes`, aligned, without overlapping another.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        Self::parse_head(bytes, bytes.len() as u64).map_err(|(e, _)| e)
    }

    /// Parse the table of a GGUF file of `total` bytes from its first bytes, `head` (checks
    /// as [`Gguf::parse`] does, against `total`). The error's flag says whether more of the
    /// file would have been needed.
    fn parse_head(bytes: &[u8], total: u64) -> std::result::Result<Self, (Error, bool)> {
        let total = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .max(bytes.len());
        let mut r = Reader {
            b: bytes,
            at: 0,
            total,
            short: false,
        };
        Self::parse_reader(&mut r).map_err(|e| (e, r.short))
    }

    /// Read only the table of a GGUF file of `total` bytes from `input` (positioned at its
    /// start): at first 1 MiB, then twice as much while the table runs past what was read, up
    /// to [`MAX_HEAD`]. Returns the table and the bytes it took, so a large file is refused,
    /// or described, without being read whole.
    pub fn read_head(input: &mut impl std::io::Read, total: u64) -> Result<(Self, usize)> {
        use std::io::Read as _;
        let mut head = Vec::new();
        let mut want = 1usize << 20;
        loop {
            let have = head.len();
            if want > have {
                (&mut *input)
                    .take((want - have) as u64)
                    .read_to_end(&mut head)
                    .map_err(|source| Error::Io {
                        path: "the model file".into(),
                        source,
                    })?;
            }
            match Self::parse_head(&head, total) {
                Ok(g) => {
                    let used = usize::try_from(g.data_offset).unwrap_or(usize::MAX);
                    return Ok((g, used));
                }
                Err((_, true)) if want < MAX_HEAD && (head.len() as u64) < total => {
                    want = (want * 2).min(MAX_HEAD);
                }
                Err((e, true)) if want >= MAX_HEAD => {
                    return Err(err(format!(
                        "its header is larger than {MAX_HEAD} bytes ({e})"
                    )));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    fn parse_reader(r: &mut Reader<'_>) -> Result<Self> {
        let bytes_total = r.total;
        if r.take(4, "the magic")? != MAGIC {
            return Err(err("not a GGUF file (the magic is not \"GGUF\")"));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(err(format!(
                "version {version} is not supported (2 and 3 are)"
            )));
        }
        // A tensor entry takes at least 8 (name) + 4 + 4 + 8 bytes; a metadata entry 8 + 4 + 1.
        let n_tensors = r.count("the tensor count", 24)?;
        let n_kv = r.count("the metadata count", 13)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("a metadata key")?;
            let ty = r.u32(&key)?;
            let v = r.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(err(format!("metadata key {key:?} appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two() && *a <= 1 << 20)
                .ok_or_else(|| err("general.alignment must be a power of two up to 1 MiB"))?,
        };
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..n_tensors {
            let name = r.string("a tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(err(format!(
                    "tensor {name:?} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&name)?);
            }
            let id = r.u32(&name)?;
            let ty = GgmlType::from_id(id)
                .ok_or_else(|| err(format!("tensor {name:?} has unknown type {id}")))?;
            let offset = r.u64(&name)?;
            let len = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| err(format!("tensor {name:?}: its size overflows")))?;
            if dims[0] % ty.block_len() as u64 != 0 {
                return Err(err(format!(
                    "tensor {name:?}: rows of {} values are not whole {ty:?} blocks of {}",
                    dims[0],
                    ty.block_len()
                )));
            }
            let size = ty
                .bytes_for(len)
                .ok_or_else(|| err(format!("tensor {name:?}: its size overflows")))?;
            if !offset.is_multiple_of(alignment) {
                return Err(err(format!(
                    "tensor {name:?}: offset {offset} is not aligned to {alignment}"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(err(format!("tensor {name:?} appears twice")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }
        let data_offset = (r.at as u64).div_ceil(alignment) * alignment;
        let data_len = (bytes_total as u64).saturating_sub(data_offset);
        let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
        for t in &tensors {
            let end = t.offset.checked_add(t.size).filter(|&e| e <= data_len);
            let Some(end) = end else {
                return Err(err(format!(
                    "tensor {:?}: {} bytes at offset {} run past the end of the data ({} bytes)",
                    t.name, t.size, t.offset, data_len
                )));
            };
            spans.push((t.offset, end, &t.name));
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(err(format!(
                    "tensors {:?} and {:?} overlap",
                    w[0].2, w[1].2
                )));
            }
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// Read and parse a file. Returns the parsed table and the file's bytes.
    pub fn read(path: &std::path::Path) -> Result<(Self, Vec<u8>)> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok((Gguf::parse(&bytes)?, bytes))
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The bytes of tensor `t` inside `file` (the bytes this table was parsed from).
    pub fn tensor_data<'a>(&self, file: &'a [u8], t: &TensorInfo) -> Result<&'a [u8]> {
        let start = self.data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.size));
        match (start, end) {
            (Some(s), Some(e)) if e <= file.len() as u64 => Ok(&file[s as usize..e as usize]),
            _ => Err(err(format!(
                "tensor {:?} lies outside these {} bytes",
                t.name,
                file.len()
            ))),
        }
    }

    /// Tensor `name` decoded to f32 values.
    pub fn dequantize(&self, file: &[u8], name: &str) -> Result<Vec<f32>> {
        let t = self
            .tensor(name)
            .ok_or_else(|| err(format!("no tensor {name:?}")))?;
        quant::dequantize(t.ty, self.tensor_data(file, t)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }

    /// A minimal file: one metadata entry, one F32 tensor of `n` values.
    fn file(n: u64, offset: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        string(&mut b, "general.name");
        b.extend(8u32.to_le_bytes());
        string(&mut b, "tiny");
        string(&mut b, "w");
        b.extend(1u32.to_le_bytes());
        b.extend(n.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(offset.to_le_bytes());
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        for i in 0..4u32 {
            b.extend((i as f32).to_le_bytes());
        }
        b
    }

    #[test]
    fn a_minimal_file_parses_and_hostile_ones_do_not() {
        let f = file(4, 0);
        let g = Gguf::parse(&f).unwrap();
        assert_eq!(g.get("general.name").unwrap().as_str(), Some("tiny"));
        assert_eq!(g.dequantize(&f, "w").unwrap(), vec![0.0, 1.0, 2.0, 3.0]);
        // Past the end, misaligned, truncated anywhere, wrong magic or version.
        assert!(Gguf::parse(&file(5, 0)).is_err());
        assert!(Gguf::parse(&file(2, 4)).is_err());
        assert!(Gguf::parse(&file(u64::MAX, 0)).is_err());
        for cut in 0..f.len() - 16 {
            assert!(Gguf::parse(&f[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = f.clone();
        bad[0] = b'X';
        assert!(Gguf::parse(&bad).is_err());
        let mut bad = f.clone();
        bad[4] = 1;
        assert!(Gguf::parse(&bad).is_err());
        // A tensor count no file could hold is refused before allocating.
        let mut bad = f.clone();
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = Gguf::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("tensor count"), "{e}");
    }

    /// Finding 8 of issue 14: a file's table is read from its head; a 2 GiB file that is
    /// no model costs what its head takes (at most `MAX_HEAD`), not 2 GiB.
    #[test]
    fn the_table_is_read_from_the_head_only() {
        struct Endless {
            head: Vec<u8>,
            at: usize,
            read: usize,
        }
        impl std::io::Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(1 << 16);
                for b in &mut buf[..n] {
                    *b = self.head.get(self.at).copied().unwrap_or(0);
                    self.at += 1;
                }
                self.read += n;
                Ok(n)
            }
        }
        let mut bad = Endless {
            head: b"GGUF\x63\0\0\0".to_vec(),
            at: 0,
            read: 0,
        };
        let e = Gguf::read_head(&mut bad, 2 << 30).unwrap_err().to_string();
        assert!(e.contains("version 99"), "{e}");
        assert!(bad.read <= 1 << 20, "read {} bytes", bad.read);
        // A table that claims a million tensors: refused once it passes MAX_HEAD.
        let mut head = b"GGUF".to_vec();
        head.extend(3u32.to_le_bytes());
        head.extend(1_000_000u64.to_le_bytes());
        head.extend(0u64.to_le_bytes());
        let mut many = Endless {
            head,
            at: 0,
            read: 0,
        };
        assert!(Gguf::read_head(&mut many, 2 << 30).is_err());
        assert!(many.read <= MAX_HEAD, "read {} bytes", many.read);
        // A real file: the same table as parsing it whole.
        let bytes = include_bytes!("../fixtures/tiny-llama.gguf");
        let (g, used) = Gguf::read_head(&mut &bytes[..], bytes.len() as u64).unwrap();
        let whole = Gguf::parse(bytes).unwrap();
        assert_eq!(g.data_offset, whole.data_offset);
        assert_eq!(g.tensors.len(), whole.tensors.len());
        assert_eq!(used as u64, whole.data_offset);
    }
}
