//! Records: small values the node keeps by topic and key, outside the object store. A
//! federation keeps its signed records here (genesis, admissions, round results) and a
//! node its own state of each federation it is in; governance will keep its proposals and
//! votes the same way. The store checks nothing in a record: whoever puts one has checked
//! it (a signature, a size), and whoever reads one decodes it as untrusted bytes.

use redb::{ReadableDatabase, TableDefinition};

use crate::{Error, Result, Store};

/// `len(topic) (1 byte) ‖ topic ‖ key` → value.
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");

/// Longest topic.
pub const MAX_RECORD_TOPIC: usize = 200;
/// Longest key.
pub const MAX_RECORD_KEY: usize = 256;
/// Largest value.
pub const MAX_RECORD: usize = sov_core::MAX_BLOCK;

fn prefix(topic: &str) -> Result<Vec<u8>> {
    if topic.is_empty() || topic.len() > MAX_RECORD_TOPIC {
        return Err(Error::Invalid(format!(
            "a record topic is 1 to {MAX_RECORD_TOPIC} bytes"
        )));
    }
    let mut p = Vec::with_capacity(1 + topic.len());
    p.push(topic.len() as u8);
    p.extend_from_slice(topic.as_bytes());
    Ok(p)
}

fn full_key(topic: &str, key: &[u8]) -> Result<Vec<u8>> {
    if key.len() > MAX_RECORD_KEY {
        return Err(Error::Invalid(format!(
            "a record key is at most {MAX_RECORD_KEY} bytes"
        )));
    }
    let mut k = prefix(topic)?;
    k.extend_from_slice(key);
    Ok(k)
}

impl Store {
    /// Keep `value` under `topic` and `key`, replacing what was there. Returns whether the
    /// value is new or changed.
    pub fn put_record(&self, topic: &str, key: &[u8], value: &[u8]) -> Result<bool> {
        if value.len() > MAX_RECORD {
            return Err(Error::Invalid(format!(
                "a record of {} bytes is over the limit of {MAX_RECORD}",
                value.len()
            )));
        }
        let k = full_key(topic, key)?;
        if self.record(topic, key)?.as_deref() == Some(value) {
            return Ok(false);
        }
        let w = self.begin_write()?;
        w.open_table(RECORDS)?.insert(k.as_slice(), value)?;
        self.commit(w)?;
        Ok(true)
    }

    /// Keep every `(key, value)` under `topic` in one transaction: a reader sees all of them
    /// or none. Returns how many were new or changed.
    pub fn put_records(&self, topic: &str, entries: &[(&[u8], &[u8])]) -> Result<usize> {
        let mut keys = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            if value.len() > MAX_RECORD {
                return Err(Error::Invalid(format!(
                    "a record of {} bytes is over the limit of {MAX_RECORD}",
                    value.len()
                )));
            }
            keys.push(full_key(topic, key)?);
        }
        let w = self.begin_write()?;
        let mut changed = 0;
        {
            let mut t = w.open_table(RECORDS)?;
            for (k, (_, value)) in keys.iter().zip(entries) {
                let old = t.insert(k.as_slice(), *value)?;
                if old.is_none_or(|o| o.value() != *value) {
                    changed += 1;
                }
            }
        }
        self.commit(w)?;
        Ok(changed)
    }

    /// The value under `topic` and `key`.
    pub fn record(&self, topic: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let k = full_key(topic, key)?;
        let r = self.db().begin_read()?;
        let t = match r.open_table(RECORDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get(k.as_slice())?.map(|v| v.value().to_vec()))
    }

    /// Every `(key, value)` under `topic`, by key.
    pub fn records(&self, topic: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let p = prefix(topic)?;
        let r = self.db().begin_read()?;
        let t = match r.open_table(RECORDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for e in t.range(p.as_slice()..)? {
            let (k, v) = e?;
            let Some(key) = k.value().strip_prefix(p.as_slice()) else {
                break;
            };
            out.push((key.to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Forget the value under `topic` and `key`; whether there was one.
    pub fn remove_record(&self, topic: &str, key: &[u8]) -> Result<bool> {
        let k = full_key(topic, key)?;
        let w = self.begin_write()?;
        let had = w.open_table(RECORDS)?.remove(k.as_slice())?.is_some();
        self.commit(w)?;
        Ok(had)
    }

    /// Forget every value under `topic`; how many there were.
    pub fn remove_records(&self, topic: &str) -> Result<usize> {
        let keys: Vec<Vec<u8>> = self.records(topic)?.into_iter().map(|(k, _)| k).collect();
        let p = prefix(topic)?;
        let w = self.begin_write()?;
        {
            let mut t = w.open_table(RECORDS)?;
            for k in &keys {
                let mut full = p.clone();
                full.extend_from_slice(k);
                t.remove(full.as_slice())?;
            }
        }
        self.commit(w)?;
        Ok(keys.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sov_identity::Keypair;

    use super::*;

    #[test]
    fn records_are_kept_by_topic_and_key_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path, Keypair::from_seed(&[7; 32])).unwrap();
        assert!(store.records("fl").unwrap().is_empty());
        assert!(store.put_record("fl", b"b", b"2").unwrap());
        assert!(store.put_record("fl", b"a", b"1").unwrap());
        assert!(!store.put_record("fl", b"a", b"1").unwrap());
        assert_eq!(
            store
                .put_records("both", &[(b"x", b"1"), (b"y", b"2")])
                .unwrap(),
            2
        );
        assert_eq!(
            store
                .put_records("both", &[(b"x", b"1"), (b"y", b"3")])
                .unwrap(),
            1
        );
        assert_eq!(store.record("both", b"y").unwrap().unwrap(), b"3");
        assert!(
            store
                .put_records("both", &[(b"z", &[0; MAX_RECORD + 1])])
                .is_err()
        );
        assert!(store.record("both", b"z").unwrap().is_none());
        // A topic that is a prefix of another, or extends it, stays apart.
        store.put_record("f", b"lx", b"other").unwrap();
        store.put_record("fl2", b"a", b"other").unwrap();
        assert_eq!(
            store.records("fl").unwrap(),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
        assert!(store.put_record("", b"a", b"1").is_err());
        assert!(store.put_record("fl", &[0; 257], b"1").is_err());
        assert!(
            store
                .put_record("fl", b"c", &vec![0; MAX_RECORD + 1])
                .is_err()
        );
        drop(store);
        let store = Store::open(&path, Keypair::from_seed(&[7; 32])).unwrap();
        assert_eq!(store.record("fl", b"b").unwrap(), Some(b"2".to_vec()));
        assert!(store.remove_record("fl", b"b").unwrap());
        assert!(!store.remove_record("fl", b"b").unwrap());
        assert_eq!(store.remove_records("fl").unwrap(), 1);
        assert!(store.records("fl").unwrap().is_empty());
        assert_eq!(store.records("fl2").unwrap().len(), 1);
        assert_eq!(store.record("f", b"lx").unwrap(), Some(b"other".to_vec()));
    }
}
