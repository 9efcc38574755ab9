//! Objects across an in-process network of real nodes: fetch, replication, repair.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rand::{Rng as _, RngExt as _, SeedableRng as _, rngs::StdRng};
use sov_core::ContentId;
use sov_testkit::{Cluster, add_granted, add_options, init_logging, read, seed, wait_for};

fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

/// Nodes whose store keeps `id` as a replica (ground truth, not asked over the network).
async fn replica_holders(cluster: &Cluster, id: ContentId) -> Vec<usize> {
    let mut out = Vec::new();
    for i in cluster.live() {
        let pin = cluster.node(i).pin(id).await.unwrap();
        if pin.is_some_and(|p| p.replica) {
            out.push(i);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_an_object() {
    init_logging();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(2, seed, Duration::from_secs(1)).await;
    let data = random_bytes(&mut rng, 3 << 20);
    let (added, holders) = cluster
        .node(0)
        .add(
            std::io::Cursor::new(data.clone()),
            add_options("a.bin"),
            Some(1),
        )
        .await
        .unwrap();
    assert_eq!(holders, vec![cluster.node(1).peer_id()], "node 1 pinned it");
    let did1 = cluster.node(1).did();
    cluster.node(0).grant(added.id, did1).await.unwrap();
    assert_eq!(read(cluster.node(1), added.id).await, data);
    cluster.stop().await;
}

/// An object not stored here reads while it is fetched: the plaintext streams out as the
/// chunks arrive, and the object is stored afterwards; a stored object reads the usual way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_streams_while_it_is_fetched() {
    init_logging();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x57e4);
    let mut cluster = Cluster::start(2, seed, Duration::from_secs(3600)).await;
    let data = random_bytes(&mut rng, 12 << 20);
    let id = add_granted(cluster.node(0), cluster.node(1), &data, "s.bin").await;
    let node = cluster.node(1).clone();
    let reading = node.open_read(id).await.unwrap();
    assert!(reading.is_fetching(), "not stored yet: it streams");
    assert_eq!(reading.meta.size, data.len() as u64);
    let out = node.read_into(reading, Vec::new()).await.unwrap();
    assert!(out == data);
    wait_for(
        "the fetched object is stored",
        Duration::from_secs(20),
        || {
            let node = node.clone();
            async move { node.contains(id).await.unwrap() }
        },
    )
    .await
    .unwrap();
    assert!(!node.open_read(id).await.unwrap().is_fetching());
    cluster.stop().await;
}

/// Issue 3, test (a): 20 nodes; an object added on node 0 with 3 replicas is readable from
/// every node; replica holders are killed one by one with repair in between, and the object
/// stays readable and returns to 3 replicas each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_keep_an_object_through_holder_failures() {
    init_logging();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut cluster = Cluster::start(20, seed, Duration::from_secs(1)).await;
    let data = random_bytes(&mut rng, 5 << 20);
    let (added, holders) = cluster
        .node(0)
        .add(
            std::io::Cursor::new(data.clone()),
            add_options("shared.bin"),
            Some(3),
        )
        .await
        .unwrap();
    let id = added.id;
    assert_eq!(holders.len(), 3, "three peers pinned the object");
    for i in 1..cluster.len() {
        let did = cluster.node(i).did();
        cluster.node(0).grant(id, did).await.unwrap();
    }

    // Readable from every node; readers then drop their cached copies, so later reads must
    // come from the replicas.
    for i in 1..cluster.len() {
        assert_eq!(read(cluster.node(i), id).await, data, "node {i} reads it");
    }
    let replicas = replica_holders(&cluster, id).await;
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    for i in 1..cluster.len() {
        if !replicas.contains(&i) {
            cluster.node(i).remove(id).await.unwrap();
        }
    }

    // Kill holders one by one (the owner last); after each, repair brings the replicas back
    // to 3 and a node without a copy reads the object.
    for round in 0..4 {
        let holders = replica_holders(&cluster, id).await;
        let victim = if round == 3 {
            0
        } else {
            holders[rng.random_range(0..holders.len())]
        };
        eprintln!("round {round}: killing node {victim} (replicas on {holders:?})");
        cluster.kill(victim).await;
        let c = &cluster;
        wait_for(
            "repair back to 3 replicas",
            Duration::from_secs(60),
            || async move { replica_holders(c, id).await.len() >= 3 },
        )
        .await
        .unwrap();
        let holders = replica_holders(&cluster, id).await;
        let readers: Vec<usize> = cluster
            .live()
            .into_iter()
            .filter(|i| !holders.contains(i) && *i != 0)
            .collect();
        let reader = readers[rng.random_range(0..readers.len())];
        assert_eq!(
            read(cluster.node(reader), id).await,
            data,
            "node {reader} reads it after round {round}"
        );
        cluster.node(reader).remove(id).await.unwrap();
    }
    cluster.stop().await;
}

/// A node restarted from its home announces its objects again and serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_serves_its_objects_again() {
    init_logging();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(3, seed, Duration::from_secs(60)).await;
    let data = random_bytes(&mut rng, 2 << 20);
    let (added, _) = cluster
        .node(0)
        .add(
            std::io::Cursor::new(data.clone()),
            add_options("r.bin"),
            Some(0),
        )
        .await
        .unwrap();
    let did2 = cluster.node(2).did();
    cluster.node(0).grant(added.id, did2).await.unwrap();
    cluster.restart(0).await;
    assert!(cluster.alive(0));
    let c = &cluster;
    wait_for(
        "node 2 to reach the restarted node",
        Duration::from_secs(30),
        || async move { c.node(2).prepare_read(added.id).await.is_ok() },
    )
    .await
    .unwrap();
    assert_eq!(read(cluster.node(2), added.id).await, data);
    cluster.stop().await;
}

/// Finding 9 of issue 14, and issue 16: a node that may not read an object gets not even
/// its manifest or grants from a holder (it is not the owner, a reader or a holder), so a
/// refused read downloads nothing; raw requests for the manifest and grant blocks, and for
/// the grant list, come back empty, while a reader gets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_read_downloads_nothing_but_the_manifest() {
    init_logging();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(3, seed, Duration::from_secs(60)).await;
    let data = random_bytes(&mut rng, 12 << 20);
    let (added, _) = cluster
        .node(0)
        .add(std::io::Cursor::new(data), add_options("secret"), Some(1))
        .await
        .unwrap();
    let id = added.id;
    let holders = replica_holders(&cluster, id).await;
    assert_eq!(holders.len(), 1, "{holders:?}");
    let (h, s) = (holders[0], 3 - holders[0]);
    let packs = |home: &std::path::Path| -> u64 {
        std::fs::read_dir(home.join("store.packs"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.metadata().map_or(0, |m| m.len()))
                    .sum()
            })
            .unwrap_or(0)
    };
    let before = packs(cluster.home(s));
    let err = cluster.node(s).read(id).await.unwrap_err();
    assert!(err.to_string().contains("grant"), "{err}");
    assert!(!cluster.node(s).contains(id).await.unwrap());
    let grew = packs(cluster.home(s)) - before;
    assert!(grew < 1 << 20, "a refused read stored {grew} bytes");
    // Asked directly, neither the owner nor the holder gives the stranger the manifest or a
    // grant block, and it has no grant to claim.
    let own_grant = cluster
        .node(0)
        .grant(id, cluster.node(0).did())
        .await
        .unwrap();
    let stranger = cluster.node(s).clone();
    let (owner, holder) = (cluster.node(0).peer_id(), cluster.node(h).peer_id());
    for peer in [owner, holder] {
        assert!(
            stranger
                .want_blocks(peer, vec![id, own_grant])
                .await
                .unwrap()
                .is_empty(),
            "a stranger got metadata"
        );
        assert!(stranger.grant_list(peer, id).await.unwrap().is_empty());
        assert!(!stranger.claim_at(peer, id).await, "a stranger's claim");
    }
    // Granted: the owner knows its reader and answers; the holder cannot tell a reader from
    // anyone else (the grant hides it) until the reader claims its grant there.
    let reader_grant = cluster.node(0).grant(id, stranger.did()).await.unwrap();
    let reader = stranger;
    let got = reader
        .want_blocks(owner, vec![id, reader_grant])
        .await
        .unwrap();
    assert_eq!(
        got.len(),
        2,
        "the owner gives its reader the manifest and grant"
    );
    let c = &cluster;
    wait_for(
        "the holder to have the new grant",
        Duration::from_secs(30),
        || async move {
            c.node(0)
                .grant_list(holder, id)
                .await
                .is_ok_and(|g| g.contains(&reader_grant))
        },
    )
    .await
    .unwrap();
    assert!(
        reader
            .want_blocks(holder, vec![id, reader_grant])
            .await
            .unwrap()
            .is_empty(),
        "the holder told a reader from a stranger without a claim"
    );
    assert!(reader.claim_at(holder, id).await, "the reader's claim");
    let got = reader
        .want_blocks(holder, vec![id, reader_grant])
        .await
        .unwrap();
    assert_eq!(
        got.len(),
        2,
        "the holder gives a claimed reader the manifest and grant"
    );
    assert!(!reader.grant_list(holder, id).await.unwrap().is_empty());
    // And the read goes through, whichever holder answers first.
    reader.read(id).await.unwrap();
    cluster.stop().await;
}

/// Finding 11 of issue 14: a holder that comes back after repair replaced it leaves one copy
/// too many; the owner releases the surplus, back to the count the object asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surplus_replicas_are_released_when_holders_return() {
    init_logging();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(5, seed, Duration::from_secs(2)).await;
    let data = random_bytes(&mut rng, 1 << 20);
    let (added, holders) = cluster
        .node(0)
        .add(std::io::Cursor::new(data), add_options("s.bin"), Some(2))
        .await
        .unwrap();
    let id = added.id;
    assert_eq!(holders.len(), 2, "{holders:?}");
    let first = replica_holders(&cluster, id).await;
    let gone = first[0];
    cluster.kill(gone).await;
    let c = &cluster;
    wait_for(
        "repair to place a new copy",
        Duration::from_secs(60),
        || async move { replica_holders(c, id).await.len() >= 2 },
    )
    .await
    .unwrap();
    cluster.restart(gone).await;
    // Three live copies now (the returned holder kept its own); the owner lets one go. (The
    // owner needs a repair pass, DHT lookups and `has` answers to notice: never this soon.)
    assert_eq!(replica_holders(&cluster, id).await.len(), 3);
    let c = &cluster;
    wait_for(
        "the surplus copy to be released",
        Duration::from_secs(60),
        || async move { replica_holders(c, id).await.len() == 2 },
    )
    .await
    .unwrap();
    cluster.stop().await;
}

/// Finding 1 of issue 14: holders re-place a copy on the owner's behalf only while the
/// owner's signed pin mandate holds. With the owner gone, a lost copy is replaced while its
/// mandate lasts; once it has expired, nobody spreads the object further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_re_place_copies_only_while_the_owners_mandate_holds() {
    init_logging();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut config = sov_node::Config::loopback();
    config.repair_interval = Duration::from_secs(1);
    config.pin_mandate_ttl = Duration::from_secs(20);
    let mut cluster = Cluster::start_with(6, seed, config).await;
    let data = random_bytes(&mut rng, 300_000);
    let (added, holders) = cluster
        .node(0)
        .add(std::io::Cursor::new(data), add_options("m.bin"), Some(2))
        .await
        .unwrap();
    let signed_at = std::time::Instant::now();
    let id = added.id;
    assert_eq!(holders.len(), 2);
    let first = replica_holders(&cluster, id).await;
    // The owner and one holder go: the other holder replaces the copy, on the mandate.
    cluster.kill(0).await;
    cluster.kill(first[0]).await;
    let c = &cluster;
    wait_for(
        "a holder to replace the lost copy",
        Duration::from_secs(15),
        || async move { replica_holders(c, id).await.len() >= 2 },
    )
    .await
    .unwrap();
    // After the mandate expired, a lost copy stays lost.
    let left = Duration::from_secs(21).saturating_sub(signed_at.elapsed());
    tokio::time::sleep(left).await;
    let now = replica_holders(&cluster, id).await;
    let placed = *now.iter().find(|&&i| i != first[1]).unwrap();
    cluster.kill(placed).await;
    tokio::time::sleep(Duration::from_secs(6)).await; // six repair passes
    assert_eq!(
        replica_holders(&cluster, id).await,
        vec![first[1]],
        "a copy was placed on an expired mandate"
    );
    cluster.stop().await;
}

/// Finding 1 of issue 14: a holder that removes its replica tells the owner, who places the
/// copy elsewhere at once (repair here runs only once a minute), and the holder refuses it
/// from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_replica_is_placed_elsewhere_by_its_owner() {
    init_logging();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(5, seed, Duration::from_secs(60)).await;
    let data = random_bytes(&mut rng, 400_000);
    let (added, holders) = cluster
        .node(0)
        .add(std::io::Cursor::new(data), add_options("d.bin"), Some(2))
        .await
        .unwrap();
    let id = added.id;
    assert_eq!(holders.len(), 2);
    let first = replica_holders(&cluster, id).await;
    cluster.node(first[0]).remove(id).await.unwrap();
    let c = &cluster;
    let dropper = first[0];
    wait_for(
        "the owner to place the copy elsewhere",
        Duration::from_secs(30),
        || async move {
            let now = replica_holders(c, id).await;
            now.len() == 2 && !now.contains(&dropper)
        },
    )
    .await
    .unwrap();
    cluster.stop().await;
}

/// Issue 16: a holder is not taken at its word. One whose copy is gone (its block packs
/// wiped while it was down) still says it keeps the object; it fails the storage challenge,
/// is not counted, and the owner places the copy on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_lost_its_copy_fails_the_challenge_and_the_object_is_placed_elsewhere() {
    init_logging();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9f0f);
    // Repair only when the test asks.
    let mut cluster = Cluster::start(5, seed, Duration::from_secs(3600)).await;
    let data = random_bytes(&mut rng, 600_000);
    let (added, holders) = cluster
        .node(0)
        .add(std::io::Cursor::new(data), add_options("p.bin"), Some(2))
        .await
        .unwrap();
    let id = added.id;
    assert_eq!(holders.len(), 2);
    let first = replica_holders(&cluster, id).await;
    assert_eq!(first.len(), 2, "{first:?}");
    // Both holders prove their copies.
    let mut proved = cluster.node(0).live_holders(id).await.unwrap();
    proved.sort();
    let mut want: Vec<_> = first.iter().map(|&i| cluster.node(i).peer_id()).collect();
    want.sort();
    assert_eq!(proved, want);

    let victim = first[0];
    let victim_peer = cluster.node(victim).peer_id();
    cluster.kill(victim).await;
    let mut wiped = 0;
    for entry in std::fs::read_dir(cluster.home(victim)).unwrap() {
        let dir = entry.unwrap().path();
        if dir.extension().is_some_and(|e| e == "packs") {
            for pack in std::fs::read_dir(&dir).unwrap() {
                let pack = pack.unwrap().path();
                let len = std::fs::metadata(&pack).unwrap().len();
                std::fs::write(&pack, vec![0u8; len as usize]).unwrap();
                wiped += 1;
            }
        }
    }
    assert!(wiped > 0, "the victim's packs were found");
    cluster.restart(victim).await;
    // It still claims the object: what `has` answers is its pin and manifest.
    let node = cluster.node(victim).clone();
    assert!(node.contains(id).await.unwrap());
    assert!(node.pin(id).await.unwrap().is_some_and(|p| p.replica));

    let c = &cluster;
    wait_for(
        "the owner to count only proved copies and place one elsewhere",
        Duration::from_secs(60),
        || async move {
            let Ok(now) = c.node(0).replicate(id).await else {
                return false;
            };
            now.len() == 2 && !now.contains(&victim_peer)
        },
    )
    .await
    .unwrap();
    let now = replica_holders(&cluster, id).await;
    assert!(
        now.iter().any(|i| !first.contains(i)),
        "a new node holds a copy: {now:?} (first {first:?})"
    );
    cluster.stop().await;
}
