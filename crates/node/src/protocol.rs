//! The node's own messages, as canonical DAG-CBOR, one pair of typed enums per protocol.
//! Peers are authenticated by the transport (Noise), so direct messages carry no signature;
//! anything decoded here came from an untrusted peer and is checked before use.
//!
//! | protocol | limit | messages |
//! |---|---|---|
//! | `/sov/blocks/2` | 16 MiB answers | want-lists and blocks (`sov_net::wire`) |
//! | `/sov/node/5` | 64 KiB | [`Request`] / [`Response`]: objects (has, grants, grant keys, claim, pin, unpin, dropped, prove) |
//! | `/sov/bulk/3` | 64 MiB (`[network] max_bulk_message`) | [`FlRequest`] / [`FlResponse`]: federations (records, join, the stages of a round, its result) and governance ([`GovRequest`] / [`GovResponse`]: a group's genesis, catch-up) |
//! | gossip `sov/models/1` | 64 KiB | [`ModelAnnouncement`]: a model its signer offers |
//! | gossip `sov/fl/1/<federation>` | 64 KiB | a round's signed `sov/fl-round/1` record, by its aggregator |
//! | gossip `sov/gov/1/<group>` | 64 KiB | [`GovGossip`]: a signed proposal or vote of the group, or a member's revocation of a token for the group |
//!
//! Federation and governance add their own variants and topics; each protocol version is in
//! its id, so a change of format is a new id.

use serde::{Deserialize, Serialize};
use sov_core::{ContentId, dagcbor};

/// Most grant CIDs in one answer (keeps it under the 64 KiB message limit).
pub const MAX_GRANTS: usize = 1024;

/// Most grant keys in one answer (64 bytes each: under the 64 KiB message limit).
pub const MAX_GRANT_KEYS: usize = 768;

/// Largest piece of a block a storage challenge asks about.
pub const MAX_PROOF_LEN: u32 = 4096;

/// What a peer asks on `/sov/node/5`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Whether this node stores `object`, and keeps it as a replica.
    Has {
        /// the object
        object: ContentId,
    },
    /// The CIDs of `object`'s grant blocks.
    Grants {
        /// the object
        object: ContentId,
    },
    /// The ephemeral and access keys of `object`'s grants, from number `skip` on: what a
    /// reader needs to find its grant and [`Request::Claim`] it. Random keys to anyone else.
    GrantKeys {
        /// the object
        object: ContentId,
        /// keys to pass over (the answer is paged)
        skip: u32,
    },
    /// A reader's proof that one of `object`'s grants (the one with `ephemeral`) is its own:
    /// a signature by the grant's access key of [`sov_store::claim_message`] for this node
    /// and the asker. Once accepted, the asker may see the object's metadata for an hour.
    Claim {
        /// the object
        object: ContentId,
        /// the grant's ephemeral key (32 bytes)
        ephemeral: serde_bytes::ByteBuf,
        /// the Ed25519 signature (64 bytes)
        signature: serde_bytes::ByteBuf,
    },
    /// Keep a copy of `object` (fetching it from the asker), which should have `replicas`
    /// copies in all, as its owner's `mandate` says.
    Pin {
        /// the object
        object: ContentId,
        /// the copies it should have
        replicas: u32,
        /// a [`PinMandate`] signed by the object's owner (encoded `Signed`), naming this
        /// object and count and not yet expired: without it, no node pins
        mandate: serde_bytes::ByteBuf,
    },
    /// Stop keeping `object` as a replica: it has more copies than it asks for. Only its
    /// owner may ask this.
    Unpin {
        /// the object
        object: ContentId,
    },
    /// To an object's owner, from a node that held a copy: it no longer keeps `object`
    /// (its user removed it), so the owner may place the copy elsewhere now.
    Dropped {
        /// the object
        object: ContentId,
    },
    /// A storage challenge: prove that `object` is stored here by answering
    /// [`proof_digest`] of bytes `offset..offset + len` of the block of its chunk number
    /// `chunk`, keyed with the fresh `nonce`. Asked of a holder before it counts as one.
    Prove {
        /// the object
        object: ContentId,
        /// which chunk (an index into the manifest's chunks)
        chunk: u32,
        /// where the piece starts in the chunk's block
        offset: u32,
        /// the piece's length (1 to [`MAX_PROOF_LEN`])
        len: u32,
        /// 32 fresh random bytes
        nonce: serde_bytes::ByteBuf,
    },
}

/// The answer to a storage challenge: a BLAKE3 hash keyed with the challenge's nonce over
/// the object, the chunk, the piece's place, and the piece itself. Only a node with the
/// bytes at hand (or one that fetches them in time) can compute it.
pub fn proof_digest(
    nonce: &[u8; 32],
    object: &ContentId,
    chunk: u32,
    offset: u32,
    piece: &[u8],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(nonce);
    h.update(b"sov storage proof v1");
    h.update(&object.to_bytes());
    h.update(&chunk.to_le_bytes());
    h.update(&offset.to_le_bytes());
    h.update(&(piece.len() as u32).to_le_bytes());
    h.update(piece);
    *h.finalize().as_bytes()
}

/// An owner's word that its object `object` should be kept in `replicas` copies until
/// `until` (Unix seconds). A pin request carries one, and a holder keeps it: holders re-place
/// a copy on the owner's behalf only while it holds, so an owner that is gone for good stops
/// spreading its objects to nodes that join later once its mandates expire. Owners renew
/// theirs at every repair pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinMandate {
    /// the object
    pub object: ContentId,
    /// the copies it should have
    pub replicas: u32,
    /// when the mandate ends (Unix seconds)
    pub until: u64,
}

impl sov_core::Message for PinMandate {
    const TAG: &'static str = "sov/pin/1";
}

/// The answer on `/sov/node/5`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// To [`Request::Has`].
    Has {
        /// stored here
        has: bool,
        /// kept as a replica (pinned for someone else)
        replica: bool,
    },
    /// To [`Request::Grants`].
    Grants {
        /// the grant blocks' CIDs (at most [`MAX_GRANTS`])
        grants: Vec<ContentId>,
    },
    /// To [`Request::GrantKeys`].
    GrantKeys {
        /// each `ephemeral ‖ access` (64 bytes), at most [`MAX_GRANT_KEYS`]; none if the
        /// object is not here
        keys: Vec<serde_bytes::ByteBuf>,
        /// more keys follow past these
        more: bool,
    },
    /// To [`Request::Claim`]: accepted.
    Claimed,
    /// To [`Request::Pin`]: pinned.
    Pinned,
    /// To [`Request::Unpin`]: the replica is gone.
    Unpinned,
    /// To [`Request::Dropped`]: noted.
    Noted,
    /// To [`Request::Prove`]: the [`proof_digest`].
    Proof {
        /// 32 bytes
        digest: serde_bytes::ByteBuf,
    },
    /// The request was understood but not done, and why.
    Refused {
        /// why
        reason: String,
    },
}

impl Request {
    pub(crate) fn encode(&self) -> Vec<u8> {
        dagcbor::to_vec(self).expect("a request always encodes")
    }

    /// Decode a request from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        dagcbor::from_slice(bytes).map_err(|e| e.to_string())
    }
}

impl Response {
    pub(crate) fn refused(why: impl std::fmt::Display) -> Self {
        Response::Refused {
            reason: why.to_string(),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        dagcbor::to_vec(self).expect("a response always encodes")
    }

    /// Decode a response from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let r: Self = dagcbor::from_slice(bytes).map_err(|e| e.to_string())?;
        match &r {
            Response::Grants { grants } if grants.len() > MAX_GRANTS => {
                Err(format!("{} grants, at most {MAX_GRANTS}", grants.len()))
            }
            Response::GrantKeys { keys, .. } if keys.len() > MAX_GRANT_KEYS => Err(format!(
                "{} grant keys, at most {MAX_GRANT_KEYS}",
                keys.len()
            )),
            Response::GrantKeys { keys, .. } if keys.iter().any(|k| k.len() != 64) => {
                Err("a grant key pair that is not 64 bytes".into())
            }
            _ => Ok(r),
        }
    }
}

/// Most records of one kind in a [`FlResponse::Records`] answer.
pub const MAX_FL_RECORDS: usize = 4096;

/// What a member asks on `/sov/bulk/3`: the federation protocol. Everything but
/// [`FlRequest::Join`] is answered only to members of the federation; each round's messages
/// only to that round's aggregator (the first of the order among the live members it
/// names), and only in the order of the round's stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlRequest {
    /// The signed records of `federation`: its genesis, admissions, and the rounds after
    /// `after`.
    Records {
        /// the federation
        federation: ContentId,
        /// rounds up to this one are known to the asker
        after: u32,
    },
    /// The parameters of the model of round `round` (0: the initial model).
    Model {
        /// the federation
        federation: ContentId,
        /// the round
        round: u32,
    },
    /// To the creator's node: a signed `sov/fl-join/1` request.
    Join {
        /// the federation
        federation: ContentId,
        /// the signed request
        request: serde_bytes::ByteBuf,
    },
    /// From the aggregator of round `round`: train from `params`. Answered in the clear
    /// with [`FlResponse::Update`]; under secure aggregation with [`FlResponse::Advert`].
    Open {
        /// the federation
        federation: ContentId,
        /// the round
        round: u32,
        /// the members the aggregator counts live
        live: Vec<sov_core::Did>,
        /// the model to train from (f32, little-endian): the ledger's
        params: serde_bytes::ByteBuf,
        /// the secure round's parameters, under secure aggregation
        secure: Option<SecureOpen>,
    },
    /// Secure aggregation, stage 2: the neighbours' keys.
    KeyBook {
        /// the federation
        federation: ContentId,
        /// the round
        round: u32,
        /// the keys
        book: sov_learn::secagg::KeyBook,
    },
    /// Stage 3: the shares sent to this member.
    Deliver {
        /// the federation
        federation: ContentId,
        /// the round
        round: u32,
        /// the shares
        delivery: sov_learn::secagg::ShareDelivery,
    },
    /// Stage 4: the survivors to sign.
    Confirm {
        /// the federation
        federation: ContentId,
        /// the round
        round: u32,
        /// the list
        list: sov_learn::secagg::SurvivorList,
    },
    /// Stage 5: what to reveal.
    Unmask {
        /// the federation
        federation: ContentId,
        /// the round
        round: u32,
        /// the request
        request: sov_learn::secagg::UnmaskRequest,
    },
    /// A round's signed record and the parameters it produced.
    Closed {
        /// the federation
        federation: ContentId,
        /// the signed `sov/fl-round/1` record
        record: serde_bytes::ByteBuf,
        /// the new model (f32, little-endian)
        params: serde_bytes::ByteBuf,
    },
    /// Governance (a group's records), answered with [`FlResponse::Gov`].
    Gov(GovRequest),
}

/// A secure round's settings, as its aggregator opens it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureOpen {
    /// The round's parameters (participants by their place among the members).
    pub params: sov_learn::secagg::RoundParams,
    /// The largest example count a member weighs its update with.
    pub max_weight: u64,
}

/// A member's validation figure: rows held out, and how many of them the round's starting
/// model classified right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    /// rows
    pub rows: u64,
    /// right
    pub correct: u64,
}

/// The answer on `/sov/bulk/3`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlResponse {
    /// To [`FlRequest::Records`].
    Records {
        /// the signed genesis
        genesis: serde_bytes::ByteBuf,
        /// signed admissions (at most [`MAX_FL_RECORDS`])
        admissions: Vec<serde_bytes::ByteBuf>,
        /// signed round records after the asked one, in order (at most [`MAX_FL_RECORDS`])
        rounds: Vec<serde_bytes::ByteBuf>,
    },
    /// To [`FlRequest::Model`].
    Model {
        /// f32, little-endian
        params: serde_bytes::ByteBuf,
    },
    /// To [`FlRequest::Join`]: the creator's signed admission.
    Admitted {
        /// the signed `sov/fl-admission/1`
        admission: serde_bytes::ByteBuf,
    },
    /// To [`FlRequest::Open`] in the clear.
    Update {
        /// the update
        update: sov_learn::wire::ClientUpdate,
        /// the member's validation figure
        validation: Validation,
    },
    /// To [`FlRequest::Open`] under secure aggregation.
    Advert {
        /// the signed key advert
        advert: sov_learn::secagg::KeyAdvert,
    },
    /// To [`FlRequest::KeyBook`].
    Shares {
        /// the sealed shares
        shares: sov_learn::secagg::EncryptedShares,
    },
    /// To [`FlRequest::Deliver`].
    Masked {
        /// the masked input
        masked: sov_learn::secagg::MaskedInput,
        /// the member's validation figure
        validation: Validation,
    },
    /// To [`FlRequest::Confirm`].
    Signature {
        /// the signature on the list
        signature: sov_learn::secagg::SurvivorSignature,
    },
    /// To [`FlRequest::Unmask`].
    Unmasked {
        /// the revealed shares
        response: sov_learn::secagg::UnmaskResponse,
    },
    /// To [`FlRequest::Closed`]: taken.
    Taken,
    /// To [`FlRequest::Gov`].
    Gov(GovResponse),
    /// Understood but not done, and why.
    Refused {
        /// why
        reason: String,
    },
}

/// Most proposals in a [`GovResponse::Summary`].
pub const MAX_GOV_SUMMARY: usize = 65_536;
/// Most proposals asked for, and answered, at once.
pub const MAX_GOV_PROPOSALS: usize = 256;
/// Most votes in one [`GovResponse::Records`].
pub const MAX_GOV_VOTES: usize = 65_536;
/// Most live revocations a group keeps (and one [`GovResponse::Revoked`] holds).
pub const MAX_GOV_REVOCATIONS: usize = 4096;

/// Governance on `/sov/bulk/3`: a group's genesis pushed to its members, and the catch-up
/// by which a node that was away learns the proposals and votes it missed. Only members
/// of the group are answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GovRequest {
    /// A group's signed genesis, for a member that may not know it yet.
    Group {
        /// the signed `sov/gov-group/1`
        genesis: serde_bytes::ByteBuf,
    },
    /// The proposals of `group` known to the asked node, with how many votes it holds on each.
    Summary {
        /// the group
        group: ContentId,
    },
    /// These proposals of `group` and every vote on them.
    Records {
        /// the group
        group: ContentId,
        /// at most [`MAX_GOV_PROPOSALS`]
        proposals: Vec<ContentId>,
    },
    /// The live revocations of tokens for `group` (the distributed gateway).
    Revoked {
        /// the group
        group: ContentId,
    },
}

/// The answers to [`GovRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GovResponse {
    /// To [`GovRequest::Group`]: kept (or known).
    Kept,
    /// To [`GovRequest::Summary`].
    Summary {
        /// (proposal, votes held), at most [`MAX_GOV_SUMMARY`]
        proposals: Vec<(ContentId, u32)>,
    },
    /// To [`GovRequest::Records`].
    Records {
        /// signed proposals
        proposals: Vec<serde_bytes::ByteBuf>,
        /// signed votes on them
        votes: Vec<serde_bytes::ByteBuf>,
    },
    /// To [`GovRequest::Revoked`].
    Revoked {
        /// signed `sov/gw-revoke/1`, at most [`MAX_GOV_REVOCATIONS`]
        revocations: Vec<serde_bytes::ByteBuf>,
    },
}

impl FlRequest {
    pub(crate) fn encode(&self) -> Vec<u8> {
        dagcbor::to_vec(self).expect("a request always encodes")
    }

    /// Decode a request from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        dagcbor::from_slice(bytes).map_err(|e| e.to_string())
    }
}

impl FlResponse {
    pub(crate) fn refused(why: impl std::fmt::Display) -> Self {
        FlResponse::Refused {
            reason: why.to_string(),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        dagcbor::to_vec(self).expect("a response always encodes")
    }

    /// Decode a response from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let r: Self = dagcbor::from_slice(bytes).map_err(|e| e.to_string())?;
        match &r {
            FlResponse::Records {
                admissions, rounds, ..
            } if admissions.len() > MAX_FL_RECORDS || rounds.len() > MAX_FL_RECORDS => {
                Err(format!("more than {MAX_FL_RECORDS} records of a kind"))
            }
            FlResponse::Gov(GovResponse::Summary { proposals })
                if proposals.len() > MAX_GOV_SUMMARY =>
            {
                Err(format!("more than {MAX_GOV_SUMMARY} proposals"))
            }
            FlResponse::Gov(GovResponse::Records { proposals, votes })
                if proposals.len() > MAX_GOV_PROPOSALS || votes.len() > MAX_GOV_VOTES =>
            {
                Err("more governance records than an answer holds".into())
            }
            FlResponse::Gov(GovResponse::Revoked { revocations })
                if revocations.len() > MAX_GOV_REVOCATIONS =>
            {
                Err("more revocations than a group keeps".into())
            }
            _ => Ok(r),
        }
    }
}

/// The gossip topics of federations: `sov/fl/1/<federation id>`, on which each round's
/// aggregator announces the round's signed record (`sov/fl-round/1`); members check it
/// against their ledger and fetch the model from the announcer.
pub const FL_TOPIC_PREFIX: &str = "sov/fl/1/";

/// The gossip topic of federation `id`.
pub fn fl_topic(id: &ContentId) -> String {
    format!("{FL_TOPIC_PREFIX}{id}")
}

/// The gossip topic on which nodes offer the models they signed.
pub const MODELS_TOPIC: &str = "sov/models/1";

/// A model offered on [`MODELS_TOPIC`] by the node that signed it: the model's id (its
/// manifest object) and the signed manifest itself, so a peer can check the signature and
/// the signer before it fetches anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelAnnouncement {
    /// The manifest object's id (what `sov model pull` takes).
    pub model: ContentId,
    /// The `Signed<ModelManifest>` envelope.
    #[serde(with = "serde_bytes")]
    pub manifest: Vec<u8>,
}

impl ModelAnnouncement {
    pub(crate) fn encode(&self) -> Vec<u8> {
        dagcbor::to_vec(self).expect("an announcement always encodes")
    }

    /// Decode an announcement from gossip (not yet checked).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        dagcbor::from_slice(bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use sov_core::Codec;

    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let id = ContentId::of(Codec::DagCbor, b"x");
        for req in [
            Request::Pin {
                object: id,
                replicas: 3,
                mandate: serde_bytes::ByteBuf::from(vec![1, 2, 3]),
            },
            Request::Unpin { object: id },
            Request::Dropped { object: id },
            Request::Has { object: id },
            Request::Grants { object: id },
            Request::Prove {
                object: id,
                chunk: 2,
                offset: 100,
                len: 64,
                nonce: serde_bytes::ByteBuf::from(vec![7; 32]),
            },
        ] {
            assert_eq!(Request::decode(&req.encode()).unwrap(), req);
        }
        for resp in [
            Response::Grants { grants: vec![id] },
            Response::Has {
                has: true,
                replica: false,
            },
            Response::Pinned,
            Response::Unpinned,
            Response::Noted,
            Response::Proof {
                digest: serde_bytes::ByteBuf::from(vec![1; 32]),
            },
            Response::refused("no"),
        ] {
            assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
        }
        assert!(Request::decode(b"\xff\x00garbage").is_err());
        assert!(Response::decode(&[]).is_err());
        // An unknown operation is not a request.
        let unknown = dagcbor::to_vec(&serde_json::json!({"delete": {"object": 1}})).unwrap();
        assert!(Request::decode(&unknown).is_err());
        let too_many = Response::Grants {
            grants: vec![id; MAX_GRANTS + 1],
        };
        assert!(Response::decode(&too_many.encode()).is_err());
        let a = ModelAnnouncement {
            model: id,
            manifest: vec![1, 2, 3],
        };
        assert_eq!(ModelAnnouncement::decode(&a.encode()).unwrap(), a);
    }
}

/// The gossip topics of groups: `sov/gov/1/<group id>`, on which members publish the
/// group's signed proposals and votes as they are made.
pub const GOV_TOPIC_PREFIX: &str = "sov/gov/1/";

/// The gossip topic of group `id`.
pub fn gov_topic(id: &ContentId) -> String {
    format!("{GOV_TOPIC_PREFIX}{id}")
}

/// A message on a group's topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GovGossip {
    /// A signed `sov/gov-proposal/1`.
    Proposal(serde_bytes::ByteBuf),
    /// A signed `sov/gov-vote/1`.
    Vote(serde_bytes::ByteBuf),
    /// A signed `sov/gw-revoke/1`: a member revoked a token issued for the group.
    Revoke(serde_bytes::ByteBuf),
}

impl GovGossip {
    pub(crate) fn encode(&self) -> Vec<u8> {
        dagcbor::to_vec(self).expect("a gossip message always encodes")
    }

    /// Decode a message from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        dagcbor::from_slice(bytes).map_err(|e| e.to_string())
    }
}
