//! The safetensors format: an 8-byte little-endian header length, a JSON header naming each
//! tensor's dtype, shape and byte range, then the data. Every range is checked against the
//! shape and the file before any tensor is read.

use std::collections::BTreeMap;

use half::{bf16, f16};
use serde::Deserialize;

use crate::{Error, Result};

/// Largest header accepted (Hugging Face's own limit is 100 MB; real headers are KiBs).
const MAX_HEADER: u64 = 100 << 20;

fn err(msg: impl Into<String>) -> Error {
    Error::Tensor(msg.into())
}

/// Element types this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    BF16,
    /// Another type the format knows (integers, f64, bool, f8): its bytes are checked, but
    /// not read as floats.
    Other(&'static str, usize),
}

impl Dtype {
    fn parse(name: &str) -> Option<Dtype> {
        Some(match name {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F64" => Dtype::Other("F64", 8),
            "I64" => Dtype::Other("I64", 8),
            "U64" => Dtype::Other("U64", 8),
            "I32" => Dtype::Other("I32", 4),
            "U32" => Dtype::Other("U32", 4),
            "I16" => Dtype::Other("I16", 2),
            "U16" => Dtype::Other("U16", 2),
            "I8" => Dtype::Other("I8", 1),
            "U8" => Dtype::Other("U8", 1),
            "BOOL" => Dtype::Other("BOOL", 1),
            "F8_E4M3" => Dtype::Other("F8_E4M3", 1),
            "F8_E5M2" => Dtype::Other("F8_E5M2", 1),
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::Other(_, n) => n,
        }
    }
}

/// One tensor's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first (PyTorch order).
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub range: std::ops::Range<usize>,
}

/// A parsed safetensors file: its table and where the data section starts.
#[derive(Debug, Clone)]
pub struct SafeTensors {
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    data_start: usize,
}

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

impl SafeTensors {
    /// Parse the table of `bytes` (the whole file).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        Self::parse_head(bytes, bytes.len() as u64)
    }

    /// Read only the header of a safetensors file of `total` bytes from `input` (positioned
    /// at its start; at most 100 MiB), checking every tensor against `total`: an import
    /// describes the model without reading its weights.
    pub fn read_head(input: &mut impl std::io::Read, total: u64) -> Result<Self> {
        use std::io::Read as _;
        let mut len = [0u8; 8];
        input
            .read_exact(&mut len)
            .map_err(|_| err("safetensors: shorter than its 8-byte header length"))?;
        let n = u64::from_le_bytes(len);
        if n > MAX_HEADER || n > total.saturating_sub(8) {
            return Err(err(format!(
                "safetensors: header of {n} bytes in a file of {total}"
            )));
        }
        let mut head = len.to_vec();
        input
            .take(n)
            .read_to_end(&mut head)
            .map_err(|e| err(format!("safetensors header: {e}")))?;
        Self::parse_head(&head, total)
    }

    /// Parse a table from `bytes`, the first bytes (at least the header) of a file of
    /// `total` bytes.
    fn parse_head(bytes: &[u8], total: u64) -> Result<Self> {
        let len: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| err("safetensors: shorter than its 8-byte header length"))?;
        let n = u64::from_le_bytes(len);
        if n > MAX_HEADER || n > (bytes.len() - 8) as u64 {
            return Err(err(format!(
                "safetensors: header of {n} bytes in a file of {}",
                total.max(bytes.len() as u64)
            )));
        }
        let data_start = 8 + n as usize;
        let header: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..data_start])
                .map_err(|e| err(format!("safetensors header: {e}")))?;
        let data_len = usize::try_from(total.max(bytes.len() as u64))
            .unwrap_or(usize::MAX)
            .saturating_sub(data_start);
        let mut tensors = BTreeMap::new();
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            let e: Entry = serde_json::from_value(v)
                .map_err(|e| err(format!("safetensors tensor {name:?}: {e}")))?;
            let dtype = Dtype::parse(&e.dtype).ok_or_else(|| {
                err(format!(
                    "safetensors tensor {name:?}: unknown dtype {:?}",
                    e.dtype
                ))
            })?;
            let count = e
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .and_then(|c| c.checked_mul(dtype.size() as u64))
                .ok_or_else(|| err(format!("safetensors tensor {name:?}: shape overflows")))?;
            let [start, end] = e.data_offsets;
            if start > end || end > data_len as u64 || end - start != count {
                return Err(err(format!(
                    "safetensors tensor {name:?}: bytes {start}..{end} do not hold shape {:?} of {} in {data_len} data bytes",
                    e.shape, e.dtype
                )));
            }
            tensors.insert(
                name,
                TensorInfo {
                    dtype,
                    shape: e.shape.iter().map(|&d| d as usize).collect(),
                    range: start as usize..end as usize,
                },
            );
        }
        Ok(SafeTensors {
            tensors,
            data_start,
        })
    }

    /// Tensor `name` of `file` (the bytes this table came from) as f32 values, checked to
    /// have `shape`.
    pub fn f32(&self, file: &[u8], name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| err(format!("safetensors: no tensor {name:?}")))?;
        if t.shape != shape {
            return Err(err(format!(
                "safetensors tensor {name:?} has shape {:?}; {shape:?} expected",
                t.shape
            )));
        }
        let bytes = file
            .get(self.data_start + t.range.start..self.data_start + t.range.end)
            .ok_or_else(|| err(format!("safetensors tensor {name:?} lies outside the file")))?;
        Ok(match t.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::Other(name_of_type, _) => {
                return Err(err(format!(
                    "safetensors tensor {name:?} is {name_of_type}, not a float type"
                )));
            }
        })
    }
}

/// A safetensors file of f32 `tensors` (name, shape, values), in the order given: the
/// header JSON (its keys sorted, as the format's readers expect nothing else), padded with
/// spaces to a multiple of 8 bytes, then the values little-endian. Refuses a tensor whose
/// values do not fill its shape, or a name given twice.
pub fn write_f32(tensors: &[(&str, &[usize], &[f32])]) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, values) in tensors {
        if shape.iter().product::<usize>() != values.len() {
            return Err(err(format!(
                "tensor {name:?} of shape {shape:?} cannot hold {} values",
                values.len()
            )));
        }
        let end = offset + values.len() * 4;
        let entry =
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]});
        if header.insert((*name).to_owned(), entry).is_some() {
            return Err(err(format!("tensor {name:?} named twice")));
        }
        offset = end;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| err(format!("safetensors header: {e}")))?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, _, values) in tensors {
        for v in *values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend(header.as_bytes());
        v.extend(data);
        v
    }

    #[test]
    fn reads_tensors_and_refuses_bad_tables() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f = file(
            r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
            &data,
        );
        let st = SafeTensors::parse(&f).unwrap();
        assert_eq!(st.f32(&f, "w", &[2, 2]).unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert!(st.f32(&f, "w", &[4]).is_err());
        assert!(st.f32(&f, "x", &[2, 2]).is_err());
        for bad in [
            r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,20]}}"#,
            r#"{"w":{"dtype":"F32","shape":[3,2],"data_offsets":[0,16]}}"#,
            r#"{"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,16]}}"#,
            r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#,
            r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[8,4]}}"#,
            r#"not json"#,
        ] {
            assert!(SafeTensors::parse(&file(bad, &data)).is_err(), "{bad}");
        }
        assert!(SafeTensors::parse(&[1, 2, 3]).is_err());
        assert!(SafeTensors::parse(&u64::MAX.to_le_bytes()).is_err());
    }

    /// Finding 8 of issue 14: an import reads a safetensors file's header, not its weights;
    /// a header too large is refused from its 8-byte length alone.
    #[test]
    fn the_header_is_read_alone() {
        let mut file = Vec::new();
        let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        file.extend((header.len() as u64).to_le_bytes());
        file.extend_from_slice(header);
        let total = file.len() as u64 + 8;
        let mut input = &file[..];
        let st = SafeTensors::read_head(&mut input, total).unwrap();
        assert_eq!(st.tensors["w"].shape, vec![2]);
        assert!(input.is_empty(), "read past the header");
        // The same header in a file too short for its tensor: refused.
        assert!(SafeTensors::read_head(&mut &file[..], total - 1).is_err());
        // A header claiming a terabyte: refused after its length.
        let mut huge = &(1u64 << 40).to_le_bytes()[..];
        assert!(SafeTensors::read_head(&mut huge, 2 << 40).is_err());
    }

    #[test]
    fn written_tensors_read_back() {
        let w = [1.0f32, -2.0, 3.5, 0.25, 5.0, 6.0];
        let b = [0.5f32, -0.5];
        let file = write_f32(&[("fc.weight", &[3, 2], &w), ("fc.bias", &[2], &b)]).unwrap();
        let st = SafeTensors::parse(&file).unwrap();
        assert_eq!(st.f32(&file, "fc.weight", &[3, 2]).unwrap(), w);
        assert_eq!(st.f32(&file, "fc.bias", &[2]).unwrap(), b);
        assert!(write_f32(&[("x", &[3], &b)]).is_err());
        assert!(write_f32(&[("x", &[2], &b), ("x", &[2], &b)]).is_err());
    }
}
