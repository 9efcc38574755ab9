//! Two real swarms on loopback: gossip, block exchange and perf through `net::Client`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sov_core::{Block, Codec, ContentId};
use sov_net::{Client, Config, Event};
use tokio::sync::mpsc::Receiver;

async fn pair() -> ((Client, Receiver<Event>), (Client, Receiver<Event>)) {
    let a = sov_net::start(Config::loopback([1; 32])).await.unwrap();
    let mut cb = Config::loopback([2; 32]);
    cb.bootstrap = a.0.listen_addrs().await.unwrap();
    let b = sov_net::start(cb).await.unwrap();
    // Wait until b is connected to a.
    for _ in 0..200 {
        if !b.0.peers().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_reaches_a_subscribed_peer() {
    let ((a, _ea), (b, mut eb)) = pair().await;
    a.subscribe("sov/test/1").await.unwrap();
    b.subscribe("sov/test/1").await.unwrap();
    // publish fails until the mesh knows a subscribed peer: retry over heartbeats
    let mut sent = false;
    for _ in 0..100 {
        if a.publish("sov/test/1", b"hello".to_vec()).await.is_ok() {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sent, "no subscribed peer appeared");
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Event::Message {
                topic,
                source,
                data,
            }) = eb.recv().await
            {
                return (topic, source, data);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got.0, "sov/test/1");
    assert_eq!(got.1, Some(a.peer_id()));
    assert_eq!(got.2, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wanted_blocks_are_served_and_checked_and_perf_runs() {
    let ((a, mut ea), (b, _eb)) = pair().await;
    let data = b"a block of bytes".to_vec();
    let cid = ContentId::of(Codec::Raw, &data);
    let missing = ContentId::of(Codec::Raw, b"nobody has this");
    let block = Block::verified(cid, data.clone()).unwrap();
    tokio::spawn(async move {
        while let Some(e) = ea.recv().await {
            if let Event::BlocksWanted { cids, reply, .. } = e {
                let have: Vec<Block> = cids
                    .iter()
                    .filter(|c| **c == cid)
                    .map(|_| block.clone())
                    .collect();
                reply.send(have).await;
            }
        }
    });
    let got = b.want(a.peer_id(), vec![cid, missing]).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data(), data.as_slice());

    let report = b.perf(a.peer_id(), 1 << 20, 4 << 20).await.unwrap();
    assert_eq!(report.uploaded, 1 << 20);
    assert_eq!(report.downloaded, 4 << 20);

    // A ban closes the connection and is listed.
    b.ban(a.peer_id(), "test".into()).await;
    assert!(b.banned().await.unwrap().contains(&a.peer_id()));
    for _ in 0..200 {
        if b.peers().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(b.peers().await.unwrap().is_empty());
    assert!(b.want(a.peer_id(), vec![cid]).await.is_err());
}
