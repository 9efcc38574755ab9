//! Canonical DAG-CBOR.
//!
//! A block's CID is the hash of its bytes, so the bytes must be a function of the value:
//! maps have text keys sorted by length then bytewise, integers and lengths take their
//! shortest form, lengths are definite, and CIDs are tag 42. [`to_vec`] writes exactly that;
//! [`from_slice`] accepts only bytes that [`to_vec`] would write for the decoded value (so a
//! reordered, padded or trailing-garbage encoding of the same value is refused).
//! Floats are refused: no sov message needs them, and they are the usual source of
//! non-determinism.

use ciborium::Value;
use serde::{Serialize, de::DeserializeOwned};

/// Largest nesting depth accepted when decoding (each level costs stack).
const MAX_DEPTH: usize = 64;

/// Why a value could not be encoded, or bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not well-formed CBOR for the expected type.
    #[error("malformed DAG-CBOR: {0}")]
    Malformed(String),
    /// Well-formed, but not the one canonical encoding of the value.
    #[error("DAG-CBOR is not in canonical form")]
    NotCanonical,
    /// A value DAG-CBOR (as sov uses it) cannot hold.
    #[error("cannot encode as DAG-CBOR: {0}")]
    Unsupported(String),
}

/// Encode `value` as canonical DAG-CBOR.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    let mut v = Value::serialized(value).map_err(|e| Error::Unsupported(e.to_string()))?;
    canonicalize(&mut v, 0)?;
    let mut out = Vec::new();
    ciborium::into_writer(&v, &mut out).map_err(|e| Error::Unsupported(e.to_string()))?;
    Ok(out)
}

/// Decode canonical DAG-CBOR into `T`, refusing any other encoding of the same value.
pub fn from_slice<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let value: T = ciborium::de::from_reader_with_recursion_limit(bytes, MAX_DEPTH)
        .map_err(|e| Error::Malformed(e.to_string()))?;
    if to_vec(&value)? != bytes {
        return Err(Error::NotCanonical);
    }
    Ok(value)
}

fn canonicalize(v: &mut Value, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(Error::Unsupported("nesting too deep".into()));
    }
    match v {
        Value::Map(entries) => {
            for (k, val) in entries.iter_mut() {
                if !k.is_text() {
                    return Err(Error::Unsupported("map keys must be text".into()));
                }
                canonicalize(val, depth + 1)?;
            }
            entries.sort_by(|(a, _), (b, _)| {
                let (a, b) = (a.as_text().unwrap_or(""), b.as_text().unwrap_or(""));
                a.len()
                    .cmp(&b.len())
                    .then_with(|| a.as_bytes().cmp(b.as_bytes()))
            });
            if entries.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(Error::Unsupported("duplicate map key".into()));
            }
        }
        Value::Array(items) => {
            for item in items {
                canonicalize(item, depth + 1)?;
            }
        }
        Value::Tag(tag, inner) => {
            if *tag != 42 {
                return Err(Error::Unsupported(format!("CBOR tag {tag}")));
            }
            canonicalize(inner, depth + 1)?;
        }
        Value::Float(_) => return Err(Error::Unsupported("floats".into())),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        zebra: u64,
        a: String,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        list: Vec<i64>,
    }

    #[test]
    fn keys_sorted_length_first() {
        let s = Sample {
            zebra: 1,
            a: "x".into(),
            bytes: vec![1, 2],
            list: vec![-1, 300],
        };
        let bytes = to_vec(&s).unwrap();
        let v: Value = ciborium::from_reader(&bytes[..]).unwrap();
        let keys: Vec<_> = v
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_text().unwrap().to_owned())
            .collect();
        assert_eq!(keys, ["a", "list", "bytes", "zebra"]);
        assert_eq!(from_slice::<Sample>(&bytes).unwrap(), s);
    }

    #[test]
    fn rejects_non_canonical_order_and_trailing_bytes() {
        let mut m = BTreeMap::new();
        m.insert("zebra", 1u64);
        m.insert("a", 2u64);
        // BTreeMap order is bytewise: "a" < "zebra" happens to be canonical too; build a
        // non-canonical one by hand: {"bb": 1, "a": 2}.
        let bad = [0xa2, 0x62, b'b', b'b', 0x01, 0x61, b'a', 0x02];
        assert_eq!(
            from_slice::<BTreeMap<String, u64>>(&bad),
            Err(Error::NotCanonical)
        );
        let mut good = to_vec(&m).unwrap();
        assert!(from_slice::<BTreeMap<String, u64>>(&good).is_ok());
        good.push(0);
        assert_eq!(
            from_slice::<BTreeMap<String, u64>>(&good),
            Err(Error::NotCanonical)
        );
        // 1 encoded in two bytes instead of one
        let long_int = [0xa1, 0x61, b'a', 0x18, 0x01];
        assert_eq!(
            from_slice::<BTreeMap<String, u64>>(&long_int),
            Err(Error::NotCanonical)
        );
    }

    #[test]
    fn rejects_floats() {
        assert!(matches!(to_vec(&1.5f64), Err(Error::Unsupported(_))));
    }

    proptest! {
        #[test]
        fn round_trip(zebra in any::<u64>(), a in ".{0,20}", bytes in proptest::collection::vec(any::<u8>(), 0..64), list in proptest::collection::vec(any::<i64>(), 0..8)) {
            let s = Sample { zebra, a, bytes, list };
            let enc = to_vec(&s).unwrap();
            prop_assert_eq!(from_slice::<Sample>(&enc).unwrap(), s);
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = from_slice::<Sample>(&data);
            let _ = from_slice::<Value>(&data);
        }
    }
}
