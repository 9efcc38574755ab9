//! Certificates: the records that prove a decision, checked with nothing else. A
//! certificate holds the group's genesis, the membership changes the proposal was made on
//! (each with the votes that passed it), the proposal, and the votes that decided it. Each
//! vote set is minimal, so a certificate missing any vote, or with one altered, proves
//! nothing.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sov_core::{ContentId, Signed, dagcbor};

use crate::{Action, Book, Error, Proposal, Result, Status, Tally, record_id};

/// The format's name, inside every certificate.
pub const FORMAT: &str = "sov/gov-cert/1";
/// Largest certificate accepted.
pub const MAX_CERTIFICATE: usize = 64 << 20;

/// A signed proposal and the signed votes that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// The signed proposal.
    pub proposal: ByteBuf,
    /// The signed votes that decided it.
    pub votes: Vec<ByteBuf>,
}

/// Everything needed to check a decision offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// [`FORMAT`].
    pub format: String,
    /// The group's signed genesis.
    pub group: ByteBuf,
    /// The passed membership changes the proposal builds on.
    pub changes: Vec<Decided>,
    /// The proposal and its deciding votes.
    pub decided: Decided,
}

/// What a certificate proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The group.
    pub group: ContentId,
    /// Its name.
    pub name: String,
    /// The proposal.
    pub proposal: ContentId,
    /// What it asked.
    pub action: Action,
    /// Passed or rejected.
    pub status: Status,
    /// The count of the certificate's votes.
    pub tally: Tally,
}

impl Certificate {
    /// Canonical DAG-CBOR.
    pub fn encode(&self) -> Result<Vec<u8>> {
        dagcbor::to_vec(self).map_err(|e| Error::Certificate(e.to_string()))
    }
}

fn decided(book: &Book, id: &ContentId) -> Result<Decided> {
    let (_, _, bytes) = book.proposal(id).ok_or_else(|| Error::Unknown {
        what: "proposal",
        id: id.to_string(),
    })?;
    let votes = book
        .deciding_votes(id)
        .ok_or_else(|| Error::Certificate(format!("proposal {id} is not decided here")))?;
    Ok(Decided {
        proposal: ByteBuf::from(bytes.to_vec()),
        votes: votes
            .into_iter()
            .map(|v| ByteBuf::from(v.to_vec()))
            .collect(),
    })
}

impl Book {
    /// The certificate of decided proposal `id`.
    pub fn certificate(&self, id: &ContentId) -> Result<Certificate> {
        let (p, _, _) = self.proposal(id).ok_or_else(|| Error::Unknown {
            what: "proposal",
            id: id.to_string(),
        })?;
        let changes = p
            .basis
            .iter()
            .map(|b| decided(self, b))
            .collect::<Result<Vec<_>>>()?;
        Ok(Certificate {
            format: FORMAT.to_owned(),
            group: ByteBuf::from(self.genesis_bytes().to_vec()),
            changes,
            decided: decided(self, id)?,
        })
    }
}

/// Replay one decided record into `book`: every vote must be valid and count, and together
/// they must decide it.
fn replay(book: &mut Book, d: &Decided) -> Result<(ContentId, Status)> {
    let (id, _) = book.add_proposal(&d.proposal, u64::MAX)?;
    for v in &d.votes {
        let added = book
            .add_vote(v, u64::MAX)
            .map_err(|e| Error::Certificate(format!("a vote on {id} does not count: {e}")))?;
        if added.proposal != id {
            return Err(Error::Certificate(format!(
                "a vote in the certificate is for {}, not {id}",
                added.proposal
            )));
        }
    }
    let t = book.tally(&id, 0)?;
    if !t.equivocators.is_empty() {
        return Err(Error::Certificate(format!(
            "{} signed two different votes on {id}",
            t.equivocators[0]
        )));
    }
    match book.decision(&id) {
        Some(s) if t.counted.len() == d.votes.len() => Ok((id, s)),
        Some(_) => Err(Error::Certificate(format!("a vote on {id} is there twice"))),
        None => Err(Error::Certificate(format!(
            "the votes in the certificate do not decide {id}"
        ))),
    }
}

/// Check a certificate with nothing but its bytes: the genesis, each membership change
/// passed by its votes in order, and the proposal decided by its own.
pub fn verify(bytes: &[u8]) -> Result<Verified> {
    if bytes.len() > MAX_CERTIFICATE {
        return Err(Error::Certificate("larger than 64 MiB".into()));
    }
    let cert: Certificate =
        dagcbor::from_slice(bytes).map_err(|e| Error::Certificate(e.to_string()))?;
    if cert.format != FORMAT {
        return Err(Error::Certificate(format!(
            "format {}, expected {FORMAT}",
            sov_core::quote(&cert.format)
        )));
    }
    if cert.changes.len() > crate::MAX_BASIS {
        return Err(Error::Certificate("too many membership changes".into()));
    }
    let mut book = Book::new(&cert.group)?;
    // A change builds on changes with a smaller basis: replay in that order.
    let mut changes = Vec::with_capacity(cert.changes.len());
    for d in &cert.changes {
        let p = Signed::<Proposal>::decode(&d.proposal).map_err(|e| Error::Malformed {
            what: "proposal",
            detail: e.to_string(),
        })?;
        changes.push((p.body().basis.len(), record_id(&d.proposal), d));
    }
    changes.sort_by_key(|(n, id, _)| (*n, *id));
    for (_, id, d) in changes {
        let (_, status) = replay(&mut book, d)?;
        if status != Status::Passed {
            return Err(Error::Certificate(format!(
                "membership change {id} did not pass"
            )));
        }
    }
    let (id, status) = replay(&mut book, &cert.decided)?;
    let (p, _, _) = book
        .proposal(&id)
        .ok_or_else(|| Error::Certificate("lost".into()))?;
    if p.basis.len() != cert.changes.len() {
        return Err(Error::Certificate(
            "it carries membership changes the proposal does not build on".into(),
        ));
    }
    Ok(Verified {
        group: *book.id(),
        name: book.group().name.clone(),
        proposal: id,
        action: p.action.clone(),
        status,
        tally: book.tally(&id, 0)?,
    })
}
