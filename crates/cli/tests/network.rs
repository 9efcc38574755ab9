//! Issue 3, test (d): `sov node run` processes with separate homes on loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{Home, signal, wait};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

fn read(home: &Home, id: &str, out: &Path) -> Vec<u8> {
    home.ok(&["data", "get", id, "-o", out.to_str().unwrap()]);
    std::fs::read(out).unwrap()
}

#[test]
fn three_node_processes_replicate_and_survive_the_owner() {
    let (mut a, mut b, mut c, mut d) = (Home::new(), Home::new(), Home::new(), Home::new());
    let boot_a = a.start(&[]);
    // One node per home: a second one is refused with a clear message.
    let second = a.run(&["node", "run", "--api", "127.0.0.1:0", "--no-mdns"]);
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("a node already runs on"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let boot_b = b.start(&[
        "--bootstrap",
        &boot_a,
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
    ]);
    c.start(&["--bootstrap", &boot_a]);
    wait("A to see B and C", || {
        let v: serde_json::Value = serde_json::from_str(&a.ok(&["peers", "--json"])).unwrap();
        v.as_array().unwrap().len() >= 2
    });
    let peers: serde_json::Value = serde_json::from_str(&a.ok(&["peers", "--json"])).unwrap();
    let first = &peers[0];
    assert!(first["peer_id"].as_str().unwrap().starts_with("12D3KooW"));
    assert!(first["did"].as_str().unwrap().starts_with("did:key:z6Mk"));
    assert!(first["addrs"].as_array().is_some());

    // An object added on A (through A's API, since A runs) with 2 replicas; C reads it.
    let mut data = vec![0u8; 3 << 20];
    StdRng::seed_from_u64(3).fill_bytes(&mut data);
    let file = a.dir.path().join("data.bin");
    std::fs::write(&file, &data).unwrap();
    let added: serde_json::Value = serde_json::from_str(&a.ok(&[
        "data",
        "add",
        file.to_str().unwrap(),
        "--replicas",
        "2",
        "--json",
    ]))
    .unwrap();
    let id = added["id"].as_str().unwrap().to_owned();
    assert_eq!(added["holders"].as_array().unwrap().len(), 2, "{added}");
    a.ok(&["data", "grant", &id, &c.did()]);
    a.ok(&["data", "grant", &id, &d.did()]);
    assert_eq!(read(&c, &id, &c.dir.path().join("out.bin")), data);

    // A dies without warning; a fresh node D that knows only B reads the object.
    signal(a.pid(), "-KILL");
    d.start(&["--bootstrap", &boot_b]);
    assert_eq!(read(&d, &id, &d.dir.path().join("out.bin")), data);

    // Without a node, commands open the store directly; the API needs the token.
    let node: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.node_json()).unwrap()).unwrap();
    let api = node["api"].as_str().unwrap();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let status = |auth: Option<&str>| {
        let mut req = agent.get(format!("{api}/api/v1/peers"));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        req.call().unwrap().status().as_u16()
    };
    assert_eq!(status(None), 401);
    assert_eq!(status(Some("Bearer wrong")), 401);
    let token = std::fs::read_to_string(d.dir.path().join("admin.token")).unwrap();
    assert_eq!(status(Some(&format!("Bearer {}", token.trim()))), 200);
    let health = agent.get(format!("{api}/health")).call().unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // SIGTERM stops a node cleanly: node.json goes away and the store is usable offline.
    signal(d.pid(), "-TERM");
    wait("D to stop", || !d.node_json().exists());
    let _ = d.child.take().unwrap().wait();
    assert!(d.ok(&["data", "ls"]).contains(&id));
    let err = d.run(&["peers"]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("no node is running"));
}

/// Finding 12 of issue 14: when the local node dies in the middle of a command, the command
/// says so (not "Peer disconnected"), on one line.
#[test]
fn a_command_whose_node_dies_says_so() {
    use std::io::Write as _;
    let mut a = Home::new();
    a.start(&[]);
    let mut add = a
        .cmd(&["data", "add", "-", "--name", "slow.bin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = add.stdin.take().unwrap();
    stdin.write_all(&vec![7u8; 4 << 20]).unwrap();
    signal(a.pid(), "-KILL");
    let _ = a.child.take().unwrap().wait();
    // More input after the node is gone, then the end of it.
    let _ = stdin.write_all(&vec![8u8; 4 << 20]);
    drop(stdin);
    wait("the command to end after its node died", || {
        add.try_wait().unwrap().is_some()
    });
    let out = add.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stopped answering"), "{err}");
    assert!(!err.to_lowercase().contains("panicked"), "{err}");
}
