//! Network benchmarks for docs/BENCHMARKS.md, all measured in one run on this machine:
//!
//! - an object of `--size-mib` MiB fetched between two nodes on loopback, over TCP and over
//!   QUIC (wall time, MB/s, CPU seconds of the process), beside a plain TCP copy of the same
//!   number of bytes between two sockets in this process (the limit);
//! - `/perf/1.0.0` between the same nodes;
//! - Kademlia provider lookups in a `--dht-nodes` network (DHT requests per lookup, against
//!   ⌈log2 N⌉).
//!
//! `cargo run --release -p sov-testkit --example net_bench -- --size-mib 1024 --dht-nodes 100`
//! (`--only-tcp`: just the TCP fetch.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use sov_node::Config;
use sov_store::AddOptions;
use sov_testkit::Cluster;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn cpu_seconds() -> f64 {
    // user + system time of this process, from /proc (Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// With `SOV_PERF_CTL=FIFO`, profile only the fetch: `mkfifo ctl; perf record -D -1
/// --control fifo:ctl -g -- net_bench --only-tcp` starts disabled and this enables it.
fn perf_control(command: &str) {
    if let Ok(path) = std::env::var("SOV_PERF_CTL") {
        let _ = std::fs::write(path, format!("{command}\n"));
    }
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sample(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    blake3::Hasher::new_derive_key("sov net bench sample")
        .finalize_xof()
        .fill(&mut data);
    data
}

/// Fetch an object of `data` from node 0 to node 1 over `listen`; returns (seconds, cpu s,
/// wire bytes).
async fn fetch(listen: &str, data: &[u8]) -> (f64, f64, u64, Cluster) {
    let mut config = Config::loopback();
    config.listen = vec![listen.parse().unwrap()];
    config.repair_interval = Duration::from_secs(3600);
    let cluster = Cluster::start_with(2, 1, config).await;
    let (added, _) = cluster
        .node(0)
        .add(
            std::io::Cursor::new(data.to_vec()),
            AddOptions {
                name: "bench.bin".into(),
                media_type: "application/octet-stream".into(),
                created: 0,
            },
            Some(0),
        )
        .await
        .unwrap();
    // Let the provider record settle, so the timing is the transfer, not the first lookup.
    tokio::time::sleep(Duration::from_millis(300)).await;
    perf_control("enable");
    let (t, c) = (Instant::now(), cpu_seconds());
    let report = cluster.node(1).fetch(added.id, None).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    perf_control("disable");
    println!(
        "      (DHT lookup {:.3} s, chunk transfer into the store {:.3} s of which the store's writer was busy {:.3} s, commit and announce {:.3} s)",
        report.lookup.as_secs_f64(),
        report.transfer.as_secs_f64(),
        report.store_writes.as_secs_f64(),
        (report.elapsed - report.lookup - report.transfer).as_secs_f64()
    );
    (secs, cpu_seconds() - c, report.bytes, cluster)
}

/// Copy `n` bytes between two loopback sockets in this process.
async fn plain_tcp(n: u64) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let k = s.read(&mut buf).await.unwrap();
            if k == 0 {
                break;
            }
            got += k as u64;
        }
        got
    });
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let buf = vec![7u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..k]).await.unwrap();
        left -= k as u64;
    }
    s.shutdown().await.unwrap();
    assert_eq!(reader.await.unwrap(), n);
    t.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let size = arg("--size-mib", 1024) << 20;
    let dht_nodes = arg("--dht-nodes", 100);
    let lookups = arg("--lookups", 50);
    let data = sample(size);
    let mb = |bytes: u64, secs: f64| bytes as f64 / secs / 1e6;

    println!(
        "## fetch of a {} MiB object between two nodes on loopback",
        size >> 20
    );
    let mut tcp_bytes = 0;
    for (name, listen) in [
        ("TCP", "/ip4/127.0.0.1/tcp/0"),
        ("QUIC", "/ip4/127.0.0.1/udp/0/quic-v1"),
    ] {
        let (secs, cpu, bytes, mut cluster) = fetch(listen, &data).await;
        tcp_bytes = bytes;
        println!(
            "{name:<5} fetch: {secs:.2} s, {:.0} MB/s of blocks, {cpu:.2} CPU-s (both nodes)",
            mb(bytes, secs)
        );
        if name == "TCP" && !flag("--only-tcp") {
            let peer = cluster.node(0).peer_id();
            for (up, down) in [(0u64, size as u64), (size as u64, 0)] {
                let r = cluster.node(1).perf(peer, up, down).await.unwrap();
                println!(
                    "perf  /perf/1.0.0 upload {} MiB: {:.0} MB/s; download {} MiB: {:.0} MB/s",
                    up >> 20,
                    r.upload_bps() / 8e6,
                    down >> 20,
                    r.download_bps() / 8e6
                );
            }
        }
        cluster.stop().await;
        if flag("--only-tcp") {
            return;
        }
    }
    let secs = plain_tcp(tcp_bytes).await;
    println!(
        "plain TCP copy of the same {} bytes (in-process sockets): {secs:.2} s, {:.0} MB/s",
        tcp_bytes,
        mb(tcp_bytes, secs)
    );

    if dht_nodes > 0 {
        println!("\n## provider lookups in a {dht_nodes}-node DHT");
        let mut config = Config::loopback();
        config.repair_interval = Duration::from_secs(3600);
        config.replicas = 0;
        let mut cluster = Cluster::start_with(dht_nodes, 2, config).await;
        // Let routing tables fill (Kademlia bootstraps on its own after the first dial).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut requests = Vec::new();
        let mut found = 0;
        for i in 0..lookups {
            let key = sov_core::ContentId::of(sov_core::Codec::Raw, &(i as u64).to_le_bytes());
            let provider = cluster.node(i % dht_nodes);
            provider.announce(key).await;
            let asker = cluster.node((i * 37 + 11) % dht_nodes);
            let p = asker.providers(key, 1).await.unwrap();
            if p.peers.contains(&provider.peer_id()) {
                found += 1;
            }
            requests.push(p.requests);
        }
        requests.sort_unstable();
        let mean = requests.iter().sum::<u32>() as f64 / requests.len() as f64;
        println!(
            "{found}/{lookups} lookups found the provider; DHT requests per lookup: median {}, mean {mean:.1}, max {}; ⌈log2 {dht_nodes}⌉ = {}",
            requests[requests.len() / 2],
            requests[requests.len() - 1],
            (dht_nodes as f64).log2().ceil()
        );
        cluster.stop().await;
    }
}
