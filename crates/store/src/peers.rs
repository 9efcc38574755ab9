//! The peer book: where the peers this node met were listening, so that a node restarted
//! (perhaps on another port) reaches them again without its bootstrap list.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::{Error, Result, Store};

/// peer id (text) → last seen (unix seconds, 8 bytes big-endian) ‖ addresses, one per line.
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");

/// Peers kept; the least recently seen go first.
pub const PEER_BOOK_SIZE: usize = 64;
/// Addresses kept per peer.
const ADDRS_PER_PEER: usize = 8;
/// A peer seen again at the same addresses within this many seconds is not written again.
const REFRESH_SECS: u64 = 600;

/// A peer from the book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPeer {
    /// The peer's id, as text.
    pub peer: String,
    /// When it was last seen connected (unix seconds).
    pub seen: u64,
    /// Its listen addresses, as text.
    pub addrs: Vec<String>,
}

fn decode(peer: &str, bytes: &[u8]) -> Result<KnownPeer> {
    let bad = || Error::Corrupt(format!("peer book entry of {peer} is malformed"));
    let (seen, rest) = bytes.split_first_chunk::<8>().ok_or_else(bad)?;
    let text = std::str::from_utf8(rest).map_err(|_| bad())?;
    Ok(KnownPeer {
        peer: peer.to_owned(),
        seen: u64::from_be_bytes(*seen),
        addrs: text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl Store {
    /// Record that `peer` was seen at `seen` listening on `addrs` (replacing what was known).
    /// Addresses with a line break are dropped; the book keeps the [`PEER_BOOK_SIZE`] most
    /// recently seen peers. Seeing a peer again at the same addresses soon after is not
    /// written (identify repeats itself).
    pub fn remember_peer(&self, peer: &str, addrs: &[String], seen: u64) -> Result<()> {
        let addrs: Vec<&str> = addrs
            .iter()
            .map(String::as_str)
            .filter(|a| !a.is_empty() && !a.contains(['\n', '\r']))
            .take(ADDRS_PER_PEER)
            .collect();
        if addrs.is_empty() {
            return Ok(());
        }
        let known = self.known_peers()?.into_iter().find(|p| p.peer == peer);
        if let Some(k) = known
            && k.addrs == addrs
            && seen.saturating_sub(k.seen) < REFRESH_SECS
        {
            return Ok(());
        }
        let mut value = seen.to_be_bytes().to_vec();
        value.extend_from_slice(addrs.join("\n").as_bytes());
        let w = self.begin_write()?;
        {
            let mut t = w.open_table(PEERS)?;
            t.insert(peer, value.as_slice())?;
            let len = usize::try_from(t.len()?).unwrap_or(usize::MAX);
            if len > PEER_BOOK_SIZE {
                let mut entries = Vec::new();
                for e in t.iter()? {
                    let (k, v) = e?;
                    let seen = v
                        .value()
                        .split_first_chunk::<8>()
                        .map_or(0, |(s, _)| u64::from_be_bytes(*s));
                    entries.push((seen, k.value().to_owned()));
                }
                entries.sort();
                for (_, k) in entries.into_iter().take(len - PEER_BOOK_SIZE) {
                    t.remove(k.as_str())?;
                }
            }
        }
        self.commit(w)
    }

    /// The peers in the book, most recently seen first.
    pub fn known_peers(&self) -> Result<Vec<KnownPeer>> {
        let r = self.db().begin_read()?;
        let t = match r.open_table(PEERS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            out.push(decode(k.value(), v.value())?);
        }
        out.sort_by(|a, b| b.seen.cmp(&a.seen).then_with(|| a.peer.cmp(&b.peer)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sov_identity::Keypair;

    use super::*;

    #[test]
    fn the_book_keeps_the_latest_addresses_of_the_most_recent_peers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path, Keypair::from_seed(&[7; 32])).unwrap();
        assert!(store.known_peers().unwrap().is_empty());
        store
            .remember_peer("p0", &["/ip4/1.2.3.4/tcp/1".into()], 10)
            .unwrap();
        store
            .remember_peer("p0", &["/ip4/1.2.3.4/tcp/2".into(), "bad\nline".into()], 11)
            .unwrap();
        // No address: nothing to remember.
        store.remember_peer("p1", &[], 12).unwrap();
        // The same addresses again soon after: not rewritten.
        store
            .remember_peer("p0", &["/ip4/1.2.3.4/tcp/2".into()], 20)
            .unwrap();
        let book = store.known_peers().unwrap();
        assert_eq!(book.len(), 1);
        assert_eq!(book[0].addrs, vec!["/ip4/1.2.3.4/tcp/2".to_string()]);
        assert_eq!(book[0].seen, 11);
        for i in 0..PEER_BOOK_SIZE as u64 + 5 {
            store
                .remember_peer(
                    &format!("q{i}"),
                    &[format!("/ip4/10.0.0.1/tcp/{i}")],
                    100 + i,
                )
                .unwrap();
        }
        drop(store);
        let store = Store::open(&path, Keypair::from_seed(&[7; 32])).unwrap();
        let book = store.known_peers().unwrap();
        assert_eq!(book.len(), PEER_BOOK_SIZE);
        assert_eq!(book[0].peer, format!("q{}", PEER_BOOK_SIZE + 4));
        assert!(book.iter().all(|p| p.peer != "p0" && p.peer != "q0"));
    }
}
