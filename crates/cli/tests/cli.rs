//! The `sov` binary end to end, as a person or a script uses it.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use tempfile::TempDir;

struct Node {
    home: TempDir,
    passphrase: Option<&'static str>,
}

impl Node {
    fn new() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
            passphrase: None,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sov"));
        c.args(args)
            .env("SOV_HOME", self.home.path())
            .env_remove("SOV_PASSPHRASE")
            .env_remove("SOV_PASSPHRASE_FILE")
            .stdin(Stdio::null());
        if let Some(p) = self.passphrase {
            c.env("SOV_PASSPHRASE", p);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Run, expect success, return stdout.
    fn ok_bytes(&self, args: &[&str]) -> Vec<u8> {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "sov {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Run, expect success, return stdout as text.
    fn ok(&self, args: &[&str]) -> String {
        String::from_utf8(self.ok_bytes(args)).expect("text output")
    }

    /// Run, expect a clean failure (non-zero, one line on stderr, no panic); return stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "sov {args:?} should have failed");
        assert!(!err.contains("panicked"), "sov {args:?} panicked: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
        err
    }

    fn init(&self) -> String {
        self.ok(&["init"]).trim().to_owned()
    }

    fn path(&self) -> &Path {
        self.home.path()
    }
}

fn last_line(s: &str) -> &str {
    s.trim_end().lines().last().unwrap()
}

fn random_file(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let p = dir.join(name);
    fs::write(&p, &data).unwrap();
    (p, data)
}

/// Fails if any 64-byte run of `plain` occurs in any file under `dir`. Any such run contains a
/// whole 32-byte block of `plain` at a multiple of 32, so it suffices to look for those.
fn assert_no_plaintext_under(dir: &Path, plain: &[u8]) {
    let mut index: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut bits = vec![0u64; 1 << 21];
    for start in (0..plain.len().saturating_sub(31)).step_by(32) {
        let k = u64::from_le_bytes(plain[start..start + 8].try_into().unwrap());
        index.entry(k).or_default().push(start);
        let b = (k >> 37) as usize;
        bits[b >> 6] |= 1 << (b & 63);
    }
    for entry in walk(dir) {
        let bytes = fs::read(&entry).unwrap();
        for i in 0..bytes.len().saturating_sub(31) {
            let k = u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
            let b = (k >> 37) as usize;
            if bits[b >> 6] & (1 << (b & 63)) == 0 {
                continue;
            }
            if let Some(starts) = index.get(&k) {
                for &s in starts {
                    assert_ne!(
                        &bytes[i..i + 32],
                        &plain[s..s + 32],
                        "plaintext at offset {s} found in {} at {i}",
                        entry.display()
                    );
                }
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn block_count(node: &Node) -> u64 {
    let key =
        sov_identity::keystore::load(node.path(), node.passphrase.map(str::as_bytes)).unwrap();
    let store = sov_store::Store::open(&node.path().join(sov_store::DB_FILE), key).unwrap();
    store.block_stats().unwrap().0
}

#[test]
fn seed_0_to_31_gives_the_known_did_and_document() {
    let n = Node::new();
    let seed = n.path().join("seed.hex");
    let hex: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
    fs::write(&seed, hex).unwrap();
    let did = n.ok(&["init", "--import-seed", seed.to_str().unwrap()]);
    assert_eq!(
        did.trim(),
        "did:key:z6MkehRgf7yJbgaGfYsdoAsKdBPE3dj2CYhowQdcjqSJgvVd"
    );
    assert_eq!(n.ok(&["id"]).trim(), did.trim());
    let doc: serde_json::Value = serde_json::from_str(&n.ok(&["id", "--json"])).unwrap();
    assert_eq!(doc["id"], did.trim());
    let ka = doc["keyAgreement"][0].as_str().unwrap();
    assert!(
        ka.ends_with("#z6LSgTMiVvjkfQd8CF1kWasYZKBqtAYf6h8TC3yDfjPgDbWQ"),
        "{ka}"
    );
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let n = Node::new();
    let first = n.init();
    assert!(first.starts_with("did:key:z6Mk"));
    let err = n.fails(&["init"]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(n.ok(&["id"]).trim(), first);
    let second = n.ok(&["init", "--force"]);
    assert_ne!(second.trim(), first);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(n.path().join("identity.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// Finding 2 of issue 14: sealing an identity keeps its key (the objects stay readable);
/// `init --force` over a store refuses unless told twice, and always keeps a dated backup,
/// from which `sov id import` restores the identity.
#[test]
fn sealing_keeps_the_key_and_no_command_loses_an_identity() {
    let mut n = Node::new();
    let did = n.init().trim().to_owned();
    let (file, data) = random_file(n.path(), "small.txt", 1000, 7);
    let id = last_line(&n.ok(&["data", "add", file.to_str().unwrap()])).to_owned();

    // What the README used to suggest: refused, and nothing changes.
    n.passphrase = Some("correct horse battery staple");
    let err = n.fails(&["init", "--force"]);
    assert!(
        err.contains("sov id seal") && err.contains("--discard-data"),
        "{err}"
    );
    n.passphrase = None;
    assert_eq!(n.ok(&["id"]).trim(), did);
    assert!(n.ok_bytes(&["data", "get", &id]) == data);

    // `sov id seal` keeps the key: the object is still readable, now with the passphrase.
    n.passphrase = Some("correct horse battery staple");
    assert_eq!(last_line(&n.ok(&["id", "seal"])), did);
    assert!(n.ok_bytes(&["data", "get", &id]) == data);
    n.passphrase = None;
    assert!(n.fails(&["data", "get", &id]).contains("SOV_PASSPHRASE"));
    n.passphrase = Some("correct horse battery staple");
    assert!(n.fails(&["id", "seal"]).contains("already sealed"));

    // Export a backup (sealed stays sealed), then replace the identity for real.
    let backup = n.path().join("my-identity.key");
    n.ok(&["id", "export", backup.to_str().unwrap()]);
    assert!(
        n.fails(&["id", "export", backup.to_str().unwrap()])
            .contains("exists")
    );
    let new = n
        .ok(&["init", "--force", "--discard-data"])
        .trim()
        .to_owned();
    assert_ne!(new, did);
    let kept: Vec<_> = fs::read_dir(n.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("identity.key.") && f.ends_with(".bak"))
        .collect();
    assert!(!kept.is_empty(), "no dated backup of the old key");
    assert!(n.fails(&["data", "get", &id]).contains("grant"));

    // Restore: another identity over a store needs --discard-data too; then all is back.
    let err = n.fails(&["id", "import", backup.to_str().unwrap(), "--force"]);
    assert!(err.contains("--discard-data"), "{err}");
    let out = n.ok(&[
        "id",
        "import",
        backup.to_str().unwrap(),
        "--force",
        "--discard-data",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["did"], did.as_str());
    assert!(n.ok_bytes(&["data", "get", &id]) == data);
    // Unseal keeps the key as well.
    assert_eq!(last_line(&n.ok(&["id", "unseal"])), did);
    n.passphrase = None;
    assert!(n.ok_bytes(&["data", "get", &id]) == data);
}

#[test]
fn passphrase_and_permissions_are_enforced() {
    let mut n = Node::new();
    n.passphrase = Some("correct horse battery staple");
    n.init();
    let (file, _) = random_file(n.path(), "small.txt", 1000, 1);
    let id = last_line(&n.ok(&["data", "add", file.to_str().unwrap()])).to_owned();
    n.passphrase = Some("wrong");
    assert!(n.fails(&["data", "ls"]).contains("wrong passphrase"));
    n.passphrase = None;
    assert!(n.fails(&["data", "get", &id]).contains("SOV_PASSPHRASE"));
    // --passphrase-file works too.
    let pf = n.path().join("pass");
    fs::write(&pf, "correct horse battery staple\n").unwrap();
    n.ok_bytes(&[
        "--passphrase-file",
        pf.to_str().unwrap(),
        "data",
        "get",
        &id,
    ]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(
            n.path().join("identity.key"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let err = n.fails(&["--passphrase-file", pf.to_str().unwrap(), "data", "ls"]);
        assert!(err.contains("readable by others"), "{err}");
    }
}

#[test]
fn fifty_mib_round_trip_grant_export_import_and_refusals() {
    let (a, b, c) = (Node::new(), Node::new(), Node::new());
    a.init();
    let bob = b.init();
    c.init();
    let work = tempfile::tempdir().unwrap();
    let (file, data) = random_file(work.path(), "big.bin", 50 << 20, 42);

    let id = last_line(&a.ok(&["data", "add", file.to_str().unwrap()])).to_owned();
    assert!(id.starts_with("bafyr4i"), "{id}");
    let out = work.path().join("out.bin");
    a.ok(&["data", "get", &id, "-o", out.to_str().unwrap()]);
    assert!(fs::read(&out).unwrap() == data, "round trip differs");
    assert_no_plaintext_under(a.path(), &data);

    let listed: serde_json::Value = serde_json::from_str(&a.ok(&["data", "ls", "--json"])).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["name"], "big.bin");
    assert_eq!(listed[0]["size"], 50 << 20);

    a.ok(&["data", "grant", &id, &bob]);
    let car = work.path().join("big.car");
    a.ok(&["data", "export", &id, "-o", car.to_str().unwrap()]);

    assert_eq!(
        last_line(&b.ok(&["data", "import", car.to_str().unwrap()])),
        id
    );
    let from_b = b.ok_bytes(&["data", "get", &id]);
    assert!(from_b == data, "second node reads other bytes");
    assert_no_plaintext_under(b.path(), &data);

    let imported: serde_json::Value =
        serde_json::from_str(&c.ok(&["data", "import", car.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(imported["readable"], false);
    let err = c.fails(&[
        "data",
        "get",
        &id,
        "-o",
        work.path().join("c.bin").to_str().unwrap(),
    ]);
    assert!(err.contains("no read grant"), "{err}");
    assert!(!work.path().join("c.bin").exists());

    // One flipped byte, in the manifest and in a chunk: refused, nothing stored.
    let car_bytes = fs::read(&car).unwrap();
    for pos in [60, car_bytes.len() / 2, car_bytes.len() - 1] {
        let d = Node::new();
        d.init();
        let mut bad = car_bytes.clone();
        bad[pos] ^= 0x04;
        let bad_car = work.path().join("bad.car");
        fs::write(&bad_car, &bad).unwrap();
        let err = d.fails(&["data", "import", bad_car.to_str().unwrap()]);
        assert!(err.contains("invalid") || err.contains("CAR"), "{err}");
        assert_eq!(d.ok(&["data", "ls", "--json"]).trim(), "[]");
        assert_eq!(block_count(&d), 0, "flip at {pos} left blocks behind");
    }
}

#[test]
fn rm_removes_and_ls_is_empty() {
    let n = Node::new();
    n.init();
    let (file, _) = random_file(n.path(), "a.txt", 5000, 3);
    let id =
        last_line(&n.ok(&["data", "add", file.to_str().unwrap(), "--name", "note"])).to_owned();
    assert!(n.ok(&["data", "ls"]).contains("note"));
    n.ok(&["data", "rm", &id]);
    assert_eq!(n.ok(&["data", "ls", "--json"]).trim(), "[]");
    assert!(n.fails(&["data", "rm", &id]).contains("not in this store"));
    assert_eq!(block_count(&n), 0);
}

#[test]
fn stdin_add_and_stdout_get() {
    let n = Node::new();
    n.init();
    let mut child = n
        .cmd(&["data", "add", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello from stdin")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["name"], "stdin");
    assert_eq!(
        n.ok(&["data", "get", j["id"].as_str().unwrap()]),
        "hello from stdin"
    );
}

#[test]
fn bad_input_gets_one_line_errors() {
    let n = Node::new();
    assert!(n.fails(&["id"]).contains("sov init"));
    assert!(n.fails(&["data", "ls"]).contains("sov init"));
    n.init();
    let dir = n.path().to_str().unwrap().to_owned();
    let junk = n.path().join("junk.car");
    fs::write(&junk, b"\x0a not a car at all").unwrap();
    let cases: &[&[&str]] = &[
        &["data", "get", "not-a-cid"],
        &[
            "data",
            "get",
            "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
        ],
        &[
            "data",
            "get",
            "bafyr4ihybta3gc7uahvk4gcgoetbd5b224oc4cq4cfkkejcexmzxxc3wxq",
        ],
        &["data", "add", "/definitely/missing/file"],
        &["data", "add", &dir],
        &["data", "import", junk.to_str().unwrap()],
        &["data", "import", "/missing.car"],
        &[
            "data",
            "grant",
            "bafyr4ihybta3gc7uahvk4gcgoetbd5b224oc4cq4cfkkejcexmzxxc3wxq",
            "did:web:x",
        ],
        &[
            "data",
            "export",
            "bafyr4ihybta3gc7uahvk4gcgoetbd5b224oc4cq4cfkkejcexmzxxc3wxq",
            "-o",
            "/tmp/x.car",
        ],
        &["data", "frobnicate"],
        &["init", "--import-seed", "/missing/seed"],
    ];
    for args in cases {
        n.fails(args);
    }
    assert_eq!(n.ok(&["data", "ls", "--json"]).trim(), "[]");
}

#[test]
fn a_killed_add_leaves_no_half_visible_object() {
    let n = Node::new();
    n.init();
    let work = tempfile::tempdir().unwrap();
    let (file, data) = random_file(work.path(), "big.bin", 96 << 20, 9);
    for delay_ms in [50u64, 200, 400] {
        let mut child = n
            .cmd(&["data", "add", file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // Whatever the moment of death, an object is either absent or complete.
        let listed: serde_json::Value =
            serde_json::from_str(&n.ok(&["data", "ls", "--json"])).unwrap();
        for o in listed.as_array().unwrap() {
            let got = n.ok_bytes(&["data", "get", o["id"].as_str().unwrap()]);
            assert!(got == data, "a visible object is incomplete");
        }
    }
    let id = last_line(&n.ok(&["data", "add", file.to_str().unwrap()])).to_owned();
    assert!(n.ok_bytes(&["data", "get", &id]) == data);
}

#[test]
fn the_demo_runs_every_step() {
    let n = Node::new();
    let keep = n.path().join("demo");
    let models = common::models_dir();
    let out = n.ok(&[
        "demo",
        "--size-mib",
        "4",
        "--dir",
        keep.to_str().unwrap(),
        "--models",
        models.to_str().unwrap(),
    ]);
    assert_eq!(out.matches("identical bytes").count(), 3, "{out}");
    // Step 8: the model travels to erin, verified, and answers there.
    assert!(out.contains("erin pulled it"), "{out}");
    assert!(
        out.contains("answers: The capital of France is Paris."),
        "{out}"
    );
    assert!(out.contains("unreadable (no grant)"), "{out}");
    assert!(out.contains("after repair"), "{out}");
    // Holders count only once they prove their copies (issue 16).
    let proved = out
        .lines()
        .find(|l| l.contains("copies proved by: "))
        .expect("step 6 challenges the holders");
    assert!(!proved.ends_with("copies proved by: none"), "{proved}");
    // Step 9: the nodes train together through an aggregator's stop; every live node holds
    // the final model, whose signature verifies, and it classifies the test split.
    let kept = out
        .lines()
        .find(|l| l.contains("every live node holds the final model"))
        .expect("step 9 finishes");
    assert!(kept.contains("signature valid"), "{kept}");
    assert!(out.contains("and stops now"), "{out}");
    let test = out
        .lines()
        .find(|l| l.contains("which no member trained on:"))
        .expect("step 9 evaluates the model");
    let acc: f64 = test
        .split("on: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(acc >= 70.0, "{test}");
    // Step 10: the promotion passes by vote and every node serves the model by the group's
    // name, the member that was away included; the certificate verifies.
    assert!(
        out.contains("passed on every node; each now serves the model as \"digits-coop\""),
        "{out}"
    );
    assert!(out.contains("was away during the vote"), "{out}");
    assert!(out.contains("says passed"), "{out}");
    // Step 11: the robust rule screens out exactly the attackers, and keeps its accuracy
    // where FedAvg collapses.
    let screened = out
        .lines()
        .find(|l| l.contains("--robust (screened-mean:4)"))
        .expect("step 11 reports the robust run");
    let ids = |s: &str| -> Vec<u32> {
        let mut v: Vec<u32> = s
            .split(", ")
            .map(|x| x.trim_end_matches(')').parse().unwrap())
            .collect();
        v.sort_unstable();
        v
    };
    let (out_part, bad_part) = screened
        .split_once("screened out clients ")
        .unwrap()
        .1
        .split_once(" (the attackers: ")
        .unwrap();
    assert_eq!(ids(out_part), ids(bad_part), "{screened}");
    let pct = |l: &str| -> f64 {
        l.split("accuracy ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let fedavg = out
        .lines()
        .find(|l| l.contains("FedAvg: accuracy"))
        .unwrap();
    assert!(
        pct(fedavg) < 30.0 && pct(screened) > 80.0,
        "{fedavg}\n{screened}"
    );
    // Step 12: the data marketplace. A consumer refused until the group's policy names it,
    // then served by another member than the one that issued its token, for predictions
    // only; a stranger refused; a revocation honoured by the other member.
    let market = out
        .split("[12] the data marketplace")
        .nth(1)
        .expect("step 12 runs");
    assert!(
        market.contains("refused (400 unauthorized_client): no rule lets it in yet"),
        "{market}"
    );
    assert!(market.contains("passed on every node"), "{market}");
    assert!(market.contains("a token for scope predict"), "{market}");
    assert!(
        market.contains("gateway honours it (signed by alice"),
        "{market}"
    );
    assert!(market.contains("(`GET /api/v1/objects`): 403"), "{market}");
    assert!(
        market.contains("does not name") && market.contains("refused (400 unauthorized_client)"),
        "{market}"
    );
    assert!(market.contains("refuses it too (401)"), "{market}");
    // The gear table is per node (random here), so an edit may re-chunk one or two chunks,
    // and only those travel.
    let fetched: u32 = out
        .lines()
        .find(|l| l.contains("version 2 has"))
        .and_then(|l| l.split(" fetched ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("step 5 reports how many chunks were fetched");
    assert!((1..=2).contains(&fetched), "{out}");
    // The kept homes are real nodes: alice's store lists both versions.
    let alice = Node {
        home: tempfile::tempdir().unwrap(),
        passphrase: None,
    };
    let listed = alice
        .cmd(&[
            "--home",
            keep.join("alice").to_str().unwrap(),
            "data",
            "ls",
            "--json",
        ])
        .output()
        .unwrap();
    let objects: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let mut names: Vec<&str> = objects
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["name"].as_str())
        .filter(|n| n.starts_with("dataset"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["dataset-v2.bin", "dataset.bin"], "{objects}");
    // A non-empty --dir is refused.
    assert!(
        n.fails(&["demo", "--dir", keep.to_str().unwrap()])
            .contains("not empty")
    );
}

#[test]
fn a_damaged_store_file_gives_errors_never_wrong_bytes_or_panics() {
    let n = Node::new();
    n.init();
    let (file, data) = random_file(n.path(), "f.bin", 3_000_000, 17);
    let id = last_line(&n.ok(&["data", "add", file.to_str().unwrap()])).to_owned();
    // The index (redb) and the pack files that hold the blocks, damaged in turn.
    let index = n.path().join(sov_store::DB_FILE);
    let pack = fs::read_dir(index.with_extension("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let (mut read_ok, mut refused) = (0, 0);
    for i in 0..25 {
        let store = if i % 2 == 0 { &index } else { &pack };
        let clean = fs::read(store).unwrap();
        let mut damaged = clean.clone();
        let at = (rng.next_u64() as usize) % damaged.len();
        for b in damaged.iter_mut().skip(at).take(16) {
            *b ^= (rng.next_u64() as u8) | 1;
        }
        fs::write(store, &damaged).unwrap();
        let out = n.run(&["data", "get", &id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("internal error"),
            "{err}"
        );
        if out.status.success() {
            assert!(out.stdout == data, "damage at {at} gave wrong bytes");
            read_ok += 1;
        } else {
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            refused += 1;
        }
        fs::write(store, &clean).unwrap();
    }
    assert_eq!(read_ok + refused, 25);
}

/// `sov fl simulate --json`: one object per round with the documented fields, then a final
/// one; the same seed prints the same accuracies; bad settings fail in one line.
#[test]
fn fl_simulate_reports_each_round_as_json() {
    let n = Node::new();
    let split = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../learn/fixtures/flower-split-10.json"
    );
    let args = [
        "fl",
        "simulate",
        "--split-file",
        split,
        "--rounds",
        "3",
        "--dropout",
        "0.2",
        "--seed",
        "4",
        "--json",
    ];
    let out = n.ok(&args);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (i, l) in lines[..3].iter().enumerate() {
        assert_eq!(l["round"], i + 1);
        for key in [
            "accuracy",
            "loss",
            "epsilon",
            "delta",
            "clients",
            "dropped",
            "bytes_up",
            "bytes_down",
            "wall_s",
            "cpu_s",
        ] {
            assert!(l.get(key).is_some(), "{key} missing in {l}");
        }
        assert_eq!(l["clients"], 10);
        assert!(l["epsilon"].is_null());
        assert!(l["bytes_down"].as_u64().unwrap() > 10 * 19_240);
    }
    assert_eq!(lines[3]["final"], true);
    assert!(lines[3]["accuracy"].as_f64().unwrap() > 0.6, "{}", lines[3]);
    let again: Vec<serde_json::Value> = n
        .ok(&args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (a, b) in lines.iter().zip(&again) {
        assert_eq!(a["accuracy"], b["accuracy"]);
        assert_eq!(a["dropped"], b["dropped"]);
    }
    let e = n.fails(&["fl", "simulate", "--model", "rnn"]);
    assert!(e.contains("model \"rnn\""), "{e}");
    let e = n.fails(&[
        "fl",
        "simulate",
        "--dataset",
        "mnist",
        "--data-dir",
        "/nonexistent",
    ]);
    assert!(e.contains("MNIST not found"), "{e}");
    let e = n.fails(&["fl", "simulate", "--split-file", "/nonexistent.json"]);
    assert!(e.contains("reading /nonexistent.json"), "{e}");
}

#[test]
fn fl_simulate_with_secure_aggregation_and_dp_reports_epsilon() {
    let n = Node::new();
    let split = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../learn/fixtures/flower-split-10.json"
    );
    let out = n.ok(&[
        "fl",
        "simulate",
        "--split-file",
        split,
        "--rounds",
        "3",
        "--secagg",
        "--secagg-neighbours",
        "6",
        "--secagg-threshold",
        "5",
        "--dp-noise",
        "0.5",
        "--dp-clip",
        "1",
        "--dropout",
        "0.1",
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    let mut last = 0.0;
    for l in &lines[..3] {
        let eps = l["epsilon"].as_f64().unwrap();
        assert!(eps > last, "{l}");
        last = eps;
        assert_eq!(l["delta"], 1e-5);
        // Masked input plus keys and shares: more than a plain update, under twice it.
        let up = l["bytes_up"].as_u64().unwrap();
        let senders = 10 - l["dropped"].as_u64().unwrap();
        assert!(up > senders * 19_240 && up < 2 * 10 * 19_300, "{l}");
    }
    assert_eq!(lines[3]["epsilon"], lines[2]["epsilon"]);
    // Robust rules cannot run on the sum secure aggregation reveals.
    let e = n.fails(&["fl", "simulate", "--secagg", "--strategy", "median"]);
    assert!(e.contains("secure aggregation hides them"), "{e}");
    let e = n.fails(&["fl", "simulate", "--dp-noise", "1"]);
    assert!(e.contains("--dp-clip"), "{e}");
    let e = n.fails(&["fl", "simulate", "--secagg", "--secagg-neighbours", "3"]);
    assert!(e.contains("even"), "{e}");
}

/// DP noise comes from the operating system: the same command twice gives two models (the
/// noise is not a function of --seed, which anyone may know); --reproducible-noise repeats a
/// run exactly and says that its ε does not hold.
#[test]
fn fl_simulate_dp_noise_is_fresh_unless_asked_to_be_reproducible() {
    let n = Node::new();
    let base = [
        "fl",
        "simulate",
        "--rounds",
        "2",
        "--local-epochs",
        "1",
        "--dp-noise",
        "1",
        "--dp-clip",
        "0.5",
        "--seed",
        "3",
        "--json",
    ];
    let last = |out: String| -> serde_json::Value {
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    };
    let (a, b) = (last(n.ok(&base)), last(n.ok(&base)));
    assert_ne!(a["loss"], b["loss"], "{a}\n{b}");
    assert_eq!(
        a["epsilon"], b["epsilon"],
        "ε depends on the plan, not the draws"
    );
    assert_eq!(a["epsilon_holds"], true);
    assert_eq!(
        a["epsilon_against_aggregator"],
        serde_json::Value::Null,
        "no SecAgg"
    );
    let fixed = [&base[..], &["--reproducible-noise"]].concat();
    let (c, d) = (last(n.ok(&fixed)), last(n.ok(&fixed)));
    assert_eq!(c["loss"], d["loss"], "{c}\n{d}");
    assert_eq!(c["epsilon_holds"], false);
    let text_mode = [&base[..base.len() - 1], &["--reproducible-noise"]].concat();
    let out = n.run(&text_mode);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("does not hold"), "{text}");
    let e = n.fails(&["fl", "simulate", "--reproducible-noise"]);
    assert!(e.contains("--dp-noise"), "{e}");
}

/// Issue 17, a member's own data: `sov fl simulate --data FILE.csv` trains on a CSV table
/// (header, numeric features, a label column), standardised on request, and says where a
/// table is wrong.
#[test]
fn fl_simulate_trains_on_a_csv_table() {
    let n = Node::new();
    let dir = tempfile::tempdir().unwrap();
    // Three classes, separable in the first two columns (on a scale of hundreds), a noise
    // column, the label in a column named "kind", a quoted header with a comma.
    let mut csv = String::from("\"width, mm\",height,noise,kind\r\n");
    let mut state = 7u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    for i in 0..450 {
        let c = i % 3;
        let (w, h) = (c as f64 * 300.0, (2 - c) as f64 * 200.0);
        csv.push_str(&format!(
            "{:.2},{:.2},{:.4},{c}\r\n",
            w + next() * 150.0,
            h + next() * 100.0,
            next()
        ));
    }
    let file = dir.path().join("t.csv");
    std::fs::write(&file, csv).unwrap();
    let f = file.to_str().unwrap();
    let run = |extra: &[&str]| -> serde_json::Value {
        let args = [
            &[
                "fl",
                "simulate",
                "--data",
                f,
                "--label-column",
                "kind",
                "--model",
                "logreg",
            ][..],
            &["--rounds", "8", "--clients", "4", "--json"],
            extra,
        ]
        .concat();
        serde_json::from_str(n.ok(&args).lines().last().unwrap()).unwrap()
    };
    let out = run(&["--standardize"]);
    let acc = out["accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "{out}");
    let e = n.fails(&["fl", "simulate", "--data", f]);
    assert!(e.contains("no column is named \"label\""), "{e}");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "a,label\n1,0\n2,one\n").unwrap();
    let e = n.fails(&["fl", "simulate", "--data", bad.to_str().unwrap()]);
    assert!(e.contains("row 2, column \"label\""), "{e}");
}

/// `sov fl simulate --robust`: the screened mean, set for the clients and the attackers
/// assumed; each round reports whom it excluded (under sign flipping, the attackers); settings
/// that cannot be robust are refused.
#[test]
fn fl_simulate_robust_picks_the_screened_mean_and_reports_whom_it_excluded() {
    let n = Node::new();
    let base = [
        "fl",
        "simulate",
        "--clients",
        "20",
        "--partition",
        "dirichlet:0.1",
        "--rounds",
        "4",
        "--local-epochs",
        "1",
        "--robust",
    ];
    let attacked = [&base[..], &["--malicious", "0.2", "--attack", "sign-flip"]].concat();
    let out = n.ok(&[&attacked[..], &["--json"]].concat());
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for l in &lines[..4] {
        let out = l["screened"].as_array().unwrap();
        // At most a fifth of 20 (the --malicious share), and under a ×−10 flip exactly the
        // four attackers, every round.
        assert_eq!(out.len(), 4, "{l}");
    }
    let text = n.ok(&attacked);
    assert_eq!(text.matches("  screened out ").count(), 4, "{text}");
    let out = n.ok(&[&base[..], &["--robust-f", "2", "--json"]].concat());
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(first["screened"].as_array().unwrap().len() <= 2, "{first}");

    let e = n.fails(&[&base[..], &["--robust-f", "10"]].concat());
    assert!(e.contains("majority of honest clients"), "{e}");
    let e = n.fails(&[&base[..], &["--strategy", "median"]].concat());
    assert!(e.contains("--robust picks the rule itself"), "{e}");
    let e = n.fails(&[&base[..], &["--pre-aggregate", "bucket:2"]].concat());
    assert!(e.contains("cannot be used with"), "{e}");
    let e = n.fails(&["fl", "simulate", "--robust-f", "2"]);
    assert!(e.contains("--robust"), "{e}");
}

#[test]
fn fl_simulate_trains_on_real_fashion_mnist_and_mnist() {
    let n = Node::new();
    let dir = common::real_data();
    let dir = dir.to_str().unwrap();
    for dataset in ["fashion-mnist", "mnist"] {
        let out = n.ok(&[
            "fl",
            "simulate",
            "--dataset",
            dataset,
            "--data-dir",
            dir,
            "--clients",
            "20",
            "--partition",
            "dirichlet:0.5",
            "--model",
            "logreg",
            "--rounds",
            "2",
            "--fraction",
            "0.25",
            "--batch",
            "32",
            "--local-epochs",
            "1",
            "--secagg",
            "--json",
        ]);
        let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        // 10 classes: chance is 10 %; two rounds of logistic regression on real images do
        // far better.
        let acc = last["accuracy"].as_f64().unwrap();
        assert!(acc > 0.5, "{dataset}: {last}");
        assert_eq!(last["params"], 28 * 28 * 10 + 10);
    }
}

/// Finding 12 of issue 14: CAR files sov cannot read say why, once, on one line.
#[test]
fn cars_from_other_tools_are_refused_with_the_reason() {
    let n = Node::new();
    n.init();
    // A CAR v1 from another tool: its root and block are named by SHA-256 (multihash 0x12).
    let digest = [7u8; 32];
    let mut cid = vec![0x01, 0x55, 0x12, 0x20];
    cid.extend_from_slice(&digest);
    let mut header = vec![0xa2, 0x65];
    header.extend_from_slice(b"roots");
    header.extend_from_slice(&[0x81, 0xd8, 0x2a, 0x58, cid.len() as u8 + 1, 0x00]);
    header.extend_from_slice(&cid);
    header.push(0x67);
    header.extend_from_slice(b"version");
    header.push(0x01);
    let mut foreign = vec![header.len() as u8];
    foreign.extend_from_slice(&header);
    foreign.push((cid.len() + 5) as u8);
    foreign.extend_from_slice(&cid);
    foreign.extend_from_slice(b"hello");
    let path = n.path().join("foreign.car");
    fs::write(&path, &foreign).unwrap();
    let err = n.fails(&["data", "import", path.to_str().unwrap()]);
    assert!(err.contains("written by another tool"), "{err}");
    assert_eq!(err.matches("another tool").count(), 1, "said twice: {err}");

    // A CAR v2: its pragma is only {version: 2}.
    let mut v2 = vec![0x0a, 0xa1, 0x67];
    v2.extend_from_slice(b"version");
    v2.push(0x02);
    v2.extend_from_slice(&[0u8; 40]);
    fs::write(&path, &v2).unwrap();
    let err = n.fails(&["data", "import", path.to_str().unwrap()]);
    assert!(err.contains("CAR v2") && !err.contains("roots"), "{err}");
    assert!(n.ok(&["data", "ls", "--json"]).trim() == "[]");
}

/// Finding 7 of issue 14: a destroyed index is refused with the way out, and `sov store
/// repair` rebuilds it from the pack files with every object readable again.
#[test]
fn store_repair_rebuilds_a_destroyed_index() {
    let n = Node::new();
    n.init();
    let (file, data) = random_file(n.path(), "a.bin", 3 << 20, 11);
    let id = last_line(&n.ok(&["data", "add", file.to_str().unwrap()])).to_owned();
    let check: serde_json::Value =
        serde_json::from_str(&n.ok(&["store", "check", "--json"])).unwrap();
    assert_eq!(check["ok"], true, "{check}");
    fs::write(n.path().join("store.redb"), vec![0x5au8; 64 << 10]).unwrap();
    let err = n.fails(&["data", "ls"]);
    assert!(err.contains("sov store repair"), "{err}");
    assert!(n.fails(&["store", "check"]).contains("sov store repair"));
    let report: serde_json::Value =
        serde_json::from_str(&n.ok(&["store", "repair", "--json"])).unwrap();
    assert_eq!(report["objects"], 1, "{report}");
    assert_eq!(report["damaged_blocks"], 0, "{report}");
    assert!(n.ok_bytes(&["data", "get", &id]) == data);
    assert!(n.ok(&["data", "ls"]).contains(&id));
}

/// Finding 6 of issue 14, with a real kill: `sov data add` killed midway leaves no object,
/// and the next command that opens the store reclaims the blocks it wrote.
#[test]
fn a_killed_add_leaves_nothing_behind() {
    use std::io::Write as _;
    let n = Node::new();
    n.init();
    // An object stored before, so the pack the add appends to is one the index knows.
    let (small, small_data) = random_file(n.path(), "small.bin", 300_000, 4);
    let small_id = last_line(&n.ok(&["data", "add", small.to_str().unwrap()])).to_owned();
    let packs = n.path().join("store.packs");
    let on_disk = || -> u64 {
        fs::read_dir(&packs)
            .map(|d| {
                d.flatten()
                    .map(|e| e.metadata().map_or(0, |m| m.len()))
                    .sum()
            })
            .unwrap_or(0)
    };
    let mut add = n
        .cmd(&["data", "add", "-", "--name", "big.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = add.stdin.take().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let mut chunk = vec![0u8; 1 << 20];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Feed it until tens of MiB are in the packs, then kill it mid-add.
    while on_disk() < 40 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the add wrote nothing"
        );
        rng.fill_bytes(&mut chunk);
        stdin.write_all(&chunk).unwrap();
    }
    add.kill().unwrap();
    let _ = add.wait();
    drop(stdin);
    let left = on_disk();
    assert!(left >= 40 << 20, "{left}");
    let listed: serde_json::Value = serde_json::from_str(&n.ok(&["data", "ls", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let after = on_disk();
    assert!(
        after < 1 << 20,
        "{after} bytes of the killed add are still in the packs"
    );
    assert!(n.ok_bytes(&["data", "get", &small_id]) == small_data);
}
