//! How the size of a redb value decides disk space and write speed: the experiment behind
//! storing blocks as 256 KiB − 512 B pieces (docs/BENCHMARKS.md).
//!
//! `cargo run --release -p sov-store --example redb_values -- [MiB]` (default 512).
//! Writes MiB of values of each size in 32 MiB non-durable transactions with one durable
//! commit at the end (as `sov data add` does), reads them back, then compacts the file.

use std::time::Instant;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("values");

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("MiB must be a number"))
        .unwrap_or(512);
    let total = mib << 20;
    // Optional second argument: MiB per write transaction (default 32).
    let txn_mib: usize = std::env::args()
        .nth(2)
        .map(|a| a.parse().expect("MiB must be a number"))
        .unwrap_or(32);
    let dir = tempfile::tempdir().expect("temporary directory");
    println!("| value size | write MB/s | read MB/s | file / data | compacted / data |");
    println!("|---|---|---|---|---|");
    for (label, size, sequential) in [
        ("1 MiB", 1usize << 20, false),
        ("1 MiB − 4 KiB", (1 << 20) - 4096, false),
        ("516 KiB", 516 << 10, false),
        ("256 KiB − 512 B", (256 << 10) - 512, false),
        ("64 KiB − 512 B", (64 << 10) - 512, false),
        ("256 KiB − 512 B, increasing keys", (256 << 10) - 512, true),
    ] {
        let path = dir.path().join(format!("{size}-{sequential}.redb"));
        let db = Database::builder()
            .set_cache_size(64 << 20)
            .create(&path)
            .expect("create");
        let value = vec![7u8; size];
        let count = total / size;
        let per_txn = ((txn_mib << 20) / size).max(1);
        let started = Instant::now();
        let mut i = 0u64;
        while (i as usize) < count {
            let mut w = db.begin_write().expect("write");
            w.set_durability(Durability::None).expect("durability");
            {
                let mut t = w.open_table(T).expect("table");
                for _ in 0..per_txn.min(count - i as usize) {
                    // CID-like keys (scattered), or increasing ones (appended at the edge).
                    let key = if sequential {
                        let mut k = [0u8; 32];
                        k[..8].copy_from_slice(&i.to_be_bytes());
                        k
                    } else {
                        *blake3::hash(&i.to_le_bytes()).as_bytes()
                    };
                    t.insert(&key[..], &value[..]).expect("insert");
                    i += 1;
                }
            }
            w.commit().expect("commit");
        }
        db.begin_write()
            .expect("write")
            .commit()
            .expect("durable commit");
        let write = started.elapsed().as_secs_f64();
        let file = std::fs::metadata(&path).expect("size").len();
        let started = Instant::now();
        let mut sum = 0u64;
        {
            let r = db.begin_read().expect("read");
            let t = r.open_table(T).expect("table");
            for e in t.iter().expect("iter") {
                let (_, v) = e.expect("entry");
                sum += v.value().len() as u64;
            }
        }
        let read = started.elapsed().as_secs_f64();
        let mut db = db;
        db.compact().expect("compact");
        let compacted = std::fs::metadata(&path).expect("size").len();
        let data = (count * size) as f64;
        assert_eq!(sum as f64, data);
        println!(
            "| {label} ({size} B) | {:.0} | {:.0} | {:.2} | {:.2} |",
            data / write / 1e6,
            data / read / 1e6,
            file as f64 / data,
            compacted as f64 / data
        );
    }
}
