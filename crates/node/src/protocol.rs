//! The node's own messages on `/sov/node/1`, as canonical DAG-CBOR. Peers are authenticated
//! by the transport (Noise), so messages carry no signature; anything decoded here came from
//! an untrusted peer and is checked before use.

use serde::{Deserialize, Serialize};
use sov_core::{ContentId, dagcbor};

/// What a peer asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `"pin"`, `"grants"` or `"has"`.
    pub op: String,
    /// The object it is about.
    pub object: ContentId,
    /// For `pin`: the copies the object should have.
    pub replicas: u32,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Empty when the request succeeded, else why it did not.
    pub error: String,
    /// For `has`: whether the object is stored here.
    pub has: bool,
    /// For `has`: whether it is kept as a replica (pinned for someone else).
    pub replica: bool,
    /// For `grants`: the object's grant blocks' CIDs.
    pub grants: Vec<ContentId>,
}

/// The operations.
pub(crate) const PIN: &str = "pin";
pub(crate) const GRANTS: &str = "grants";
pub(crate) const HAS: &str = "has";
/// Most grant CIDs in one answer (keeps it under the 64 KiB message limit).
pub(crate) const MAX_GRANTS: usize = 1024;

impl Request {
    pub(crate) fn new(op: &str, object: ContentId, replicas: u32) -> Self {
        Self {
            op: op.into(),
            object,
            replicas,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        dagcbor::to_vec(self).expect("a request always encodes")
    }

    /// Decode a request from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        dagcbor::from_slice(bytes).map_err(|e| e.to_string())
    }
}

impl Response {
    pub(crate) fn ok() -> Self {
        Self {
            error: String::new(),
            has: false,
            replica: false,
            grants: Vec::new(),
        }
    }

    pub(crate) fn failed(why: impl std::fmt::Display) -> Self {
        Self {
            error: why.to_string(),
            ..Self::ok()
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        dagcbor::to_vec(self).expect("a response always encodes")
    }

    /// Decode a response from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let r: Self = dagcbor::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.grants.len() > MAX_GRANTS {
            return Err(format!("{} grants, at most {MAX_GRANTS}", r.grants.len()));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use sov_core::Codec;

    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let id = ContentId::of(Codec::DagCbor, b"x");
        let req = Request::new(PIN, id, 3);
        assert_eq!(Request::decode(&req.encode()).unwrap(), req);
        let mut resp = Response::ok();
        resp.grants = vec![id];
        assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
        assert!(Request::decode(b"\xff\x00garbage").is_err());
        assert!(Response::decode(&[]).is_err());
    }
}
