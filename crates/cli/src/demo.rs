//! `sov demo`: a narrated walk-through on local nodes, each with its own home.
//!
//! Until the peer-to-peer network lands, the nodes exchange objects as CAR files, exactly
//! as a person would with `sov data export` / `sov data import`; every step runs the real
//! identity, store and crypto code.

use std::{
    path::{Path, PathBuf},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use sov_identity::{DidDocument, Keypair, keystore};
use sov_store::{AddOptions, Store};

use crate::output::{self, say};

struct DemoNode {
    name: &'static str,
    home: PathBuf,
    store: Store,
}

impl DemoNode {
    fn new(root: &Path, name: &'static str) -> anyhow::Result<Self> {
        let home = root.join(name);
        let key = Keypair::generate();
        keystore::save(&home, &key, None, false)?;
        let store = Store::open(&home.join(sov_store::DB_FILE), key)?;
        Ok(Self { name, home, store })
    }

    fn did(&self) -> String {
        self.store.identity().did().to_string()
    }
}

fn step(n: u32, text: &str) -> std::io::Result<()> {
    say!("\n[{n}] {text}")
}

/// Deterministic sample bytes (a BLAKE3 stream), so runs are comparable.
fn sample(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    blake3::Hasher::new_derive_key("sov demo sample data")
        .finalize_xof()
        .fill(&mut data);
    data
}

pub fn run(dir: Option<PathBuf>, size_mib: usize) -> anyhow::Result<()> {
    if size_mib == 0 || size_mib > 4096 {
        bail!("--size-mib must be between 1 and 4096");
    }
    let (root, guard) = match dir {
        Some(d) => {
            if d.exists() && d.read_dir()?.next().is_some() {
                bail!(
                    "{} is not empty; give a new or empty directory",
                    d.display()
                );
            }
            std::fs::create_dir_all(&d)?;
            (d, None)
        }
        None => {
            let t = tempfile::tempdir().context("creating a temporary directory")?;
            (t.path().to_owned(), Some(t))
        }
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    say!("sov demo: three local nodes, each with its own identity and encrypted store.")?;
    say!("homes under {}", root.display())?;

    step(
        1,
        "Each node creates its identity: an Ed25519 key, named by a did:key.",
    )?;
    let alice = DemoNode::new(&root, "alice")?;
    let bob = DemoNode::new(&root, "bob")?;
    let carol = DemoNode::new(&root, "carol")?;
    for n in [&alice, &bob, &carol] {
        say!("    {:<6} {}", n.name, n.did())?;
    }
    let doc = DidDocument::resolve(&bob.store.identity().did());
    say!(
        "    bob's key-agreement key (X25519, derived from the DID): {}",
        doc.verification_method[1].public_key_multibase
    )?;

    let len = size_mib << 20;
    step(
        2,
        &format!("alice adds a {size_mib} MiB file: chunked, encrypted, content-addressed."),
    )?;
    let mut data = sample(len);
    let started = Instant::now();
    let added = alice.store.add(
        &data[..],
        AddOptions {
            name: "dataset.bin".into(),
            media_type: "application/octet-stream".into(),
            created: now,
        },
        &mut |_| {},
    )?;
    let secs = started.elapsed().as_secs_f64();
    say!("    object id  {}", added.id)?;
    say!(
        "    {} chunks, {:.0} MB/s; the store holds only ciphertext and a signed manifest",
        added.chunks,
        len as f64 / secs / 1e6
    )?;

    step(
        3,
        "alice edits one byte and adds the new version: unchanged chunks are re-used.",
    )?;
    data[len / 2] ^= 0xff;
    let edited = alice.store.add(
        &data[..],
        AddOptions {
            name: "dataset-v2.bin".into(),
            media_type: "application/octet-stream".into(),
            created: now,
        },
        &mut |_| {},
    )?;
    say!(
        "    new object {}: {} of {} chunks were new",
        edited.id,
        edited.new_chunks,
        edited.chunks
    )?;

    step(
        4,
        "alice grants bob read access and exports the object as a CAR file.",
    )?;
    alice.store.grant(&edited.id, &bob.store.identity().did())?;
    let car = root.join("dataset-v2.car");
    let mut f = std::fs::File::create(&car)?;
    alice.store.export_car(&edited.id, &mut f)?;
    drop(f);
    say!(
        "    {} ({}): manifest, 2 grants (alice, bob), encrypted blocks",
        car.display(),
        output::bytes(std::fs::metadata(&car)?.len())
    )?;

    step(
        5,
        "bob imports the CAR (every block checked against its CID) and reads it.",
    )?;
    bob.store.import_car(std::fs::File::open(&car)?)?;
    let mut read_back = Vec::with_capacity(len);
    bob.store.get(&edited.id, &mut read_back)?;
    if read_back != data {
        bail!("bob read different bytes: the demo found a bug");
    }
    say!("    bob read {} identical bytes", read_back.len())?;

    step(
        6,
        "carol imports the same CAR: she can hold the blocks, but not read them.",
    )?;
    carol.store.import_car(std::fs::File::open(&car)?)?;
    match carol.store.get(&edited.id, &mut std::io::sink()) {
        Err(e @ sov_store::Error::NoGrant { .. }) => say!("    refused: {e}")?,
        Err(e) => bail!("carol got an unexpected error: {e}"),
        Ok(_) => bail!("carol could read an object she was never granted"),
    }

    step(
        7,
        "a CAR with one flipped byte is refused, and nothing of it is stored.",
    )?;
    let mut bad = std::fs::read(&car)?;
    let pos = bad.len() / 3;
    bad[pos] ^= 0x01;
    let fresh = DemoNode::new(&root, "dave")?;
    match fresh.store.import_car(&bad[..]) {
        Err(e) => say!("    refused: {e}")?,
        Ok(_) => bail!("a tampered CAR was accepted"),
    }
    let (blocks, _) = fresh.store.block_stats()?;
    say!("    dave's store holds {blocks} blocks")?;

    if guard.is_none() {
        say!("\ndone. The homes are kept; look around:")?;
        say!("    sov --home {} data ls", alice.home.display())?;
    } else {
        say!("\ndone. (The temporary homes are removed; pass --dir DIR to keep them.)")?;
    }
    Ok(())
}
