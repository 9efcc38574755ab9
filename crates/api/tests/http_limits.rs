//! Finding 4 of issue 14, on a real socket: a connection that never finishes its headers is
//! closed, a flood of idle connections cannot exhaust the server (the cap closes the
//! quietest), and `/health` from a real client still gets in.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use sov_api::http::Limits;
use sov_identity::Keypair;
use sov_node::{Config, Node};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// `GET /health` on a new connection; the answer's first line.
async fn health(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Whether the server has closed `s` (a read ends or fails), polled until `deadline`.
async fn closed_within(s: &mut TcpStream, deadline: Duration) -> bool {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(deadline, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => true, // an answer (408) and then the close
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_and_idle_floods_cannot_lock_out_health() {
    let home = tempfile::tempdir().unwrap();
    let node = Node::offline(home.path(), Keypair::generate(), Config::loopback())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits {
        max_connections: 32,
        header_timeout: Duration::from_secs(2),
        stall_timeout: Duration::from_secs(30),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sov_api::http::serve_with(
        listener,
        sov_api::router(node.clone(), "t"),
        limits,
        async {
            let _ = stopped.await;
        },
    ));
    assert!(health(addr).await.contains("200"));

    // A slow-headers client: half a request head, then nothing. It is cut off.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(20)).await,
        "a connection that never finished its headers stayed open"
    );

    // Ten times the cap of idle connections: /health still answers, each time.
    let mut idle = Vec::new();
    for _ in 0..(10 * limits.max_connections) {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..5 {
        let t = Instant::now();
        let line = tokio::time::timeout(Duration::from_secs(20), health(addr))
            .await
            .expect("/health locked out by idle connections");
        assert!(line.contains("200"), "{line}");
        eprintln!("/health under an idle flood: {:?}", t.elapsed());
    }
    // The server holds at most its cap: all but a few of the idle connections are closed.
    let mut open = 0;
    for s in &mut idle {
        if !closed_within(s, Duration::from_millis(50)).await {
            open += 1;
        }
    }
    assert!(
        open <= limits.max_connections,
        "{open} idle connections still open, cap {}",
        limits.max_connections
    );
    // And the idle ones left are closed by the header timeout.
    let mut left = Vec::new();
    for s in &mut idle {
        if !closed_within(s, Duration::from_secs(10)).await {
            left.push(());
        }
    }
    assert!(
        left.is_empty(),
        "{} idle connections outlived the header timeout",
        left.len()
    );

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    node.shutdown().await;
}
