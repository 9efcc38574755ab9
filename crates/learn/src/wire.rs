//! The messages of a round as bytes (canonical DAG-CBOR, vectors as little-endian byte
//! strings). The simulation counts these bytes; the networked federation sends them.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sov_core::dagcbor;

use crate::{Error, Result};

/// Most parameters a message may carry (bounds what a malicious peer can make us allocate).
pub const MAX_PARAMS: usize = 64 << 20;

/// Aggregator → client: the global model to train from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalModel {
    /// The round it opens.
    pub round: u32,
    /// The parameters (f32, little-endian).
    pub params: ByteBuf,
}

/// Client → aggregator: a plain (unmasked) update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientUpdate {
    /// The round it belongs to.
    pub round: u32,
    /// Examples trained on.
    pub examples: u64,
    /// The delta (f32, little-endian).
    pub delta: ByteBuf,
}

/// f32 values as little-endian bytes.
pub fn f32s_to_bytes(v: &[f32]) -> ByteBuf {
    ByteBuf::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

/// Little-endian bytes back to f32 values; refuses a length that is not a multiple of 4,
/// too many values, or values that are not finite.
pub fn bytes_to_f32s(b: &[u8]) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) || b.len() / 4 > MAX_PARAMS {
        return Err(Error::Wire(format!(
            "a vector of {} bytes is not a whole number of at most {MAX_PARAMS} f32 values",
            b.len()
        )));
    }
    let v: Vec<f32> = b
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::Wire(
            "a vector holds a value that is not finite".into(),
        ));
    }
    Ok(v)
}

/// Encode a message.
pub fn encode<T: Serialize>(m: &T) -> Result<Vec<u8>> {
    dagcbor::to_vec(m).map_err(|e| Error::Wire(e.to_string()))
}

/// Decode a message, refusing anything but its canonical encoding.
pub fn decode<T: Serialize + serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    dagcbor::from_slice(b).map_err(|e| Error::Wire(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn messages_round_trip_and_bad_vectors_are_refused() {
        let m = ClientUpdate {
            round: 3,
            examples: 17,
            delta: f32s_to_bytes(&[1.5, -2.0]),
        };
        let b = encode(&m).unwrap();
        let back: ClientUpdate = decode(&b).unwrap();
        assert_eq!(back, m);
        assert_eq!(bytes_to_f32s(&back.delta).unwrap(), vec![1.5, -2.0]);
        assert!(bytes_to_f32s(&[0, 0, 0]).is_err());
        assert!(bytes_to_f32s(&f32::NAN.to_le_bytes()).is_err());
        assert!(decode::<ClientUpdate>(&b[..b.len() - 1]).is_err());
    }
}
