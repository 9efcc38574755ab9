//! Secure aggregation, end to end through the client and aggregator state machines: exact
//! sums under dropouts at every stage, aborts that reveal nothing, and the aggregator never
//! rebuilding both secrets of one client.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use sov_learn::secagg::{
    Aggregator, Client, KeyBook, MaskedInput, Outcome, Quantizer, RoundParams, ShareDelivery,
    UnmaskRequest, UnmaskResponse,
};

/// When a client stops answering: before stage `s` (0 advert, 1 shares, 2 masked input,
/// 3 unmasking); clients not listed answer everything.
type Drops = BTreeMap<u32, usize>;

struct Run {
    outcome: sov_learn::Result<Outcome>,
    responses: Vec<UnmaskResponse>,
    /// Owner → (aggregator holds a seed share, holds a key share), before finishing.
    held: BTreeMap<u32, (bool, bool)>,
}

fn inputs_for(params: &RoundParams, seed: u64) -> BTreeMap<u32, Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    params
        .participants
        .iter()
        .map(|&c| (c, (0..params.dim).map(|_| rng.next_u32()).collect()))
        .collect()
}

fn run(params: &RoundParams, inputs: &BTreeMap<u32, Vec<u32>>, drops: &Drops, seed: u64) -> Run {
    let mut rng = StdRng::seed_from_u64(seed);
    let alive = |c: u32, stage: usize| drops.get(&c).is_none_or(|&s| s > stage);
    let mut agg = Aggregator::new(params.clone()).unwrap();
    let mut clients = BTreeMap::new();
    let mut responses = Vec::new();
    let outcome = (|| {
        for &c in &params.participants {
            let (client, advert) = Client::new(params.clone(), c, &mut rng)?;
            if alive(c, 0) {
                agg.receive_advert(advert)?;
                clients.insert(c, client);
            }
        }
        for (c, book) in agg.key_books()? {
            let shares = clients.get_mut(&c).unwrap().share_keys(&book, &mut rng)?;
            if alive(c, 1) {
                agg.receive_shares(shares)?;
            }
        }
        for (c, delivery) in agg.deliveries()? {
            let masked = clients
                .get_mut(&c)
                .unwrap()
                .mask_input(&delivery, &inputs[&c])?;
            if alive(c, 2) {
                agg.receive_masked(masked)?;
            }
        }
        for (c, req) in agg.unmask_requests()? {
            let resp = clients.get_mut(&c).unwrap().unmask(&req)?;
            if alive(c, 3) {
                responses.push(resp.clone());
                agg.receive_unmask(resp)?;
            }
        }
        Ok(())
    })();
    let held = params
        .participants
        .iter()
        .map(|&c| (c, agg.holds_shares_of(c)))
        .collect();
    Run {
        outcome: outcome.and_then(|()| agg.finish()),
        responses,
        held,
    }
}

fn sum_of(inputs: &BTreeMap<u32, Vec<u32>>, who: &[u32], dim: u32) -> Vec<u32> {
    let mut s = vec![0u32; dim as usize];
    for c in who {
        for (a, x) in s.iter_mut().zip(&inputs[c]) {
            *a = a.wrapping_add(*x);
        }
    }
    s
}

fn params(n: u32, k: Option<u32>, t: Option<u32>, dim: u32) -> RoundParams {
    let ids: Vec<u32> = (0..n).map(|i| 10 + 3 * i).collect();
    RoundParams::new(7, &ids, k, t, dim, [9; 32]).unwrap()
}

fn never_both(held: &BTreeMap<u32, (bool, bool)>) {
    for (c, (seed, key)) in held {
        assert!(
            !(*seed && *key),
            "the aggregator holds both kinds of share of {c}"
        );
    }
}

#[test]
fn the_sum_is_exact_with_up_to_n_minus_t_dropouts_at_each_stage() {
    // Complete graph, n = 7, t = 4: any 3 may drop at any one stage.
    let p = params(7, None, Some(4), 33);
    let inputs = inputs_for(&p, 1);
    let ids = p.participants.clone();
    for stage in 0..4 {
        for d in 0..=3usize {
            let mut rng = StdRng::seed_from_u64(100 * stage as u64 + d as u64);
            let mut order = ids.clone();
            rand::seq::SliceRandom::shuffle(&mut order[..], &mut rng);
            let drops: Drops = order[..d].iter().map(|&c| (c, stage)).collect();
            let r = run(&p, &inputs, &drops, stage as u64 * 10 + d as u64);
            let out = r
                .outcome
                .unwrap_or_else(|e| panic!("stage {stage}, {d} drops: {e}"));
            let survivors: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|c| drops.get(c).is_none_or(|&s| s > 2))
                .collect();
            assert_eq!(out.survivors, survivors, "stage {stage}, {d} drops");
            assert_eq!(
                out.sum,
                sum_of(&inputs, &survivors, p.dim),
                "stage {stage}, {d}"
            );
            never_both(&r.held);
        }
        // One more and the round aborts.
        let drops: Drops = ids[..4].iter().map(|&c| (c, stage)).collect();
        let r = run(&p, &inputs, &drops, 77);
        let e = r.outcome.unwrap_err().to_string();
        assert!(e.contains("aborted"), "stage {stage}: {e}");
        if stage < 3 {
            assert!(
                r.responses.is_empty(),
                "stage {stage}: shares were revealed"
            );
        } else {
            // Three survivors answered: fewer than t shares of any secret.
            for resp in &r.responses {
                assert!(resp.seed_shares.len() + resp.key_shares.len() <= 7);
            }
            let mut per_owner: BTreeMap<u32, usize> = BTreeMap::new();
            for resp in &r.responses {
                for s in resp.seed_shares.iter().chain(&resp.key_shares) {
                    *per_owner.entry(s.owner).or_default() += 1;
                }
            }
            assert!(per_owner.values().all(|&n| n < 4), "{per_owner:?}");
        }
    }
}

#[test]
fn dropouts_spread_over_all_stages_are_recovered() {
    let p = params(9, None, Some(5), 16);
    let inputs = inputs_for(&p, 2);
    let ids = p.participants.clone();
    // One drop at each stage: 4 = n − t in all.
    let drops: Drops = [(ids[1], 0), (ids[3], 1), (ids[5], 2), (ids[8], 3)].into();
    let r = run(&p, &inputs, &drops, 3);
    let out = r.outcome.unwrap();
    let survivors: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|c| ![ids[1], ids[3], ids[5]].contains(c))
        .collect();
    assert_eq!(out.sum, sum_of(&inputs, &survivors, p.dim));
    never_both(&r.held);
    // ids[5] sent shares, then dropped: the aggregator rebuilt its key, not its seed.
    assert_eq!(r.held[&ids[5]], (false, true));
    assert_eq!(r.held[&ids[0]], (true, false));
}

#[test]
fn secagg_plus_on_a_ring_sums_exactly_with_dropouts() {
    // 30 clients, 6 neighbours, threshold 4 of 7 holders.
    let p = params(30, Some(6), Some(4), 50);
    let inputs = inputs_for(&p, 4);
    let g = p.graph();
    for &c in &p.participants {
        let nb = g.neighbours(c);
        assert_eq!(nb.len(), 6);
        assert!(nb.iter().all(|&v| g.adjacent(c, v) && g.adjacent(v, c)));
    }
    let ids = p.participants.clone();
    let drops: Drops = [(ids[2], 0), (ids[11], 1), (ids[17], 2), (ids[25], 3)].into();
    let r = run(&p, &inputs, &drops, 5);
    let out = r.outcome.unwrap();
    let survivors: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|c| ![ids[2], ids[11], ids[17]].contains(c))
        .collect();
    assert_eq!(out.survivors, survivors);
    assert_eq!(out.sum, sum_of(&inputs, &survivors, p.dim));
    never_both(&r.held);
    // Each client's traffic depends on its 6 neighbours, not on the 30 clients.
    for resp in &r.responses {
        assert!(resp.seed_shares.len() + resp.key_shares.len() <= 7);
    }
}

#[test]
fn a_client_declared_dropped_that_comes_back_is_never_unmasked() {
    let p = params(6, None, Some(4), 8);
    let inputs = inputs_for(&p, 6);
    let (mut agg, mut clients, deliveries) = to_masking(&p, 6);
    let late = p.participants[2];
    let mut late_input: Option<MaskedInput> = None;
    for (c, d) in deliveries {
        let m = clients
            .get_mut(&c)
            .unwrap()
            .mask_input(&d, &inputs[&c])
            .unwrap();
        if c == late {
            late_input = Some(m);
        } else {
            agg.receive_masked(m).unwrap();
        }
    }
    let requests = agg.unmask_requests().unwrap();
    // The straggler's masked input arrives now: refused, it counts as dropped.
    assert!(agg.receive_masked(late_input.unwrap()).is_err());
    assert!(requests.iter().all(|(c, _)| *c != late));
    for (c, req) in requests {
        let resp = clients.get_mut(&c).unwrap().unmask(&req).unwrap();
        // Nobody reveals the straggler's self-mask seed.
        assert!(resp.seed_shares.iter().all(|s| s.owner != late));
        assert!(resp.key_shares.iter().any(|s| s.owner == late));
        agg.receive_unmask(resp).unwrap();
    }
    assert_eq!(agg.holds_shares_of(late), (false, true));
    let survivors: Vec<u32> = p
        .participants
        .iter()
        .copied()
        .filter(|&c| c != late)
        .collect();
    let out = agg.finish().unwrap();
    assert_eq!(out.sum, sum_of(&inputs, &survivors, p.dim));
    // The straggler itself, asked now, reveals nothing: it is not among the survivors.
    let req = UnmaskRequest {
        round: p.round,
        survivors: survivors.clone(),
    };
    assert!(clients.get_mut(&late).unwrap().unmask(&req).is_err());
}

/// Drive an honest round through key advertisement and sharing: the aggregator, the
/// clients, and the share deliveries for the masked-input stage. Inputs are
/// `inputs_for(p, seed)`.
fn to_masking(
    p: &RoundParams,
    seed: u64,
) -> (Aggregator, BTreeMap<u32, Client>, Vec<(u32, ShareDelivery)>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut agg = Aggregator::new(p.clone()).unwrap();
    let mut clients = BTreeMap::new();
    for &c in &p.participants {
        let (client, advert) = Client::new(p.clone(), c, &mut rng).unwrap();
        agg.receive_advert(advert).unwrap();
        clients.insert(c, client);
    }
    for (c, book) in agg.key_books().unwrap() {
        let s = clients
            .get_mut(&c)
            .unwrap()
            .share_keys(&book, &mut rng)
            .unwrap();
        agg.receive_shares(s).unwrap();
    }
    let deliveries = agg.deliveries().unwrap();
    (agg, clients, deliveries)
}

/// Drive a complete round up to the unmasking requests.
fn to_unmasking(p: &RoundParams, seed: u64) -> (Aggregator, BTreeMap<u32, Client>) {
    let inputs = inputs_for(p, seed);
    let (mut agg, mut clients, deliveries) = to_masking(p, seed);
    for (c, d) in deliveries {
        let m = clients
            .get_mut(&c)
            .unwrap()
            .mask_input(&d, &inputs[&c])
            .unwrap();
        agg.receive_masked(m).unwrap();
    }
    (agg, clients)
}

#[test]
fn a_lying_aggregator_cannot_collect_both_secrets_of_a_client() {
    // t = 4 of 7 holders. The aggregator tells some holders that client v survived and the
    // others that it dropped, then asks again: each honest client answers once, so at most
    // one kind of share reaches the threshold.
    let p = params(7, None, Some(4), 4);
    let (_, mut clients) = to_unmasking(&p, 8);
    let v = p.participants[0];
    let all = p.participants.clone();
    let without_v: Vec<u32> = all.iter().copied().filter(|&c| c != v).collect();
    let mut seed_shares = BTreeSet::new();
    let mut key_shares = BTreeSet::new();
    for (i, (&c, client)) in clients.iter_mut().enumerate() {
        let survivors = if i % 2 == 0 {
            all.clone()
        } else {
            without_v.clone()
        };
        for attempt in 0..2 {
            let flipped = if attempt == 0 {
                survivors.clone()
            } else if survivors.len() == all.len() {
                without_v.clone()
            } else {
                all.clone()
            };
            let req = UnmaskRequest {
                round: p.round,
                survivors: flipped,
            };
            match client.unmask(&req) {
                Ok(resp) => {
                    assert_eq!(attempt, 0, "client {c} answered twice");
                    for s in &resp.seed_shares {
                        if s.owner == v {
                            seed_shares.insert(c);
                        }
                    }
                    for s in &resp.key_shares {
                        if s.owner == v {
                            key_shares.insert(c);
                        }
                    }
                }
                Err(e) => {
                    // v itself refuses a list without itself; the second attempt is refused.
                    assert!(attempt == 1 || c == v, "{c}: {e}");
                }
            }
        }
    }
    assert!(seed_shares.is_disjoint(&key_shares));
    assert!(
        seed_shares.len() < 4 || key_shares.len() < 4,
        "seed shares from {seed_shares:?}, key shares from {key_shares:?}"
    );
}

#[test]
fn clients_refuse_bad_requests_and_the_aggregator_refuses_bad_messages() {
    let p = params(5, None, Some(3), 4);
    let mut rng = StdRng::seed_from_u64(9);
    // A stranger cannot join; parameters that are unsafe are refused.
    assert!(Client::new(p.clone(), 999, &mut rng).is_err());
    let ids = p.participants.clone();
    for (k, t) in [
        (Some(3), Some(3)),
        (Some(2), Some(1)),
        (Some(4), Some(2)),
        (Some(4), Some(6)),
    ] {
        assert!(
            RoundParams::new(1, &ids, k, t, 4, [0; 32]).is_err(),
            "{k:?} {t:?}"
        );
    }
    assert!(RoundParams::new(1, &ids[..1], None, None, 4, [0; 32]).is_err());

    let mut agg = Aggregator::new(p.clone()).unwrap();
    let mut clients = BTreeMap::new();
    let mut adverts = Vec::new();
    for &c in &ids {
        let (client, advert) = Client::new(p.clone(), c, &mut rng).unwrap();
        adverts.push(advert.clone());
        agg.receive_advert(advert).unwrap();
        clients.insert(c, client);
    }
    // Twice, or from a stranger, or with a short key: refused.
    assert!(agg.receive_advert(adverts[0].clone()).is_err());
    let mut stranger = adverts[1].clone();
    stranger.client = 4242;
    assert!(agg.receive_advert(stranger).is_err());
    let mut short = adverts[1].clone();
    short.mask_pk.truncate(5);
    assert!(
        Aggregator::new(p.clone())
            .unwrap()
            .receive_advert(short)
            .is_err()
    );
    // A key book with a duplicated key or a non-neighbour is refused by the client.
    let books = agg.key_books().unwrap();
    let (c0, book0) = books[0].clone();
    let mut dup = book0.clone();
    dup.adverts[1].mask_pk = dup.adverts[0].mask_pk.clone();
    let (mut fresh, _) = Client::new(p.clone(), c0, &mut rng).unwrap();
    assert!(fresh.share_keys(&dup, &mut rng).is_err());
    let wrong_round = KeyBook {
        round: 8,
        ..book0.clone()
    };
    let (mut fresh, _) = Client::new(p.clone(), c0, &mut rng).unwrap();
    assert!(fresh.share_keys(&wrong_round, &mut rng).is_err());
    // Out of order: a masked input before any key book.
    let (mut fresh, _) = Client::new(p.clone(), c0, &mut rng).unwrap();
    assert!(
        fresh
            .unmask(&UnmaskRequest {
                round: 7,
                survivors: ids.clone()
            })
            .is_err()
    );

    let mut all_shares = BTreeMap::new();
    for (c, book) in books {
        let s = clients
            .get_mut(&c)
            .unwrap()
            .share_keys(&book, &mut rng)
            .unwrap();
        all_shares.insert(c, s);
    }
    // A tampered ciphertext is caught by the holder.
    let mut bad = all_shares[&ids[1]].clone();
    bad.shares[0].ciphertext[3] ^= 1;
    let target = bad.shares[0].to;
    let mut agg2 = Aggregator::new(p.clone()).unwrap();
    for a in &adverts {
        agg2.receive_advert(a.clone()).unwrap();
    }
    agg2.key_books().unwrap();
    // Shares that skip a neighbour are refused by the aggregator.
    let mut missing = all_shares[&ids[2]].clone();
    missing.shares.pop();
    assert!(agg2.receive_shares(missing).is_err());
    for (c, s) in &all_shares {
        agg2.receive_shares(if *c == ids[1] { bad.clone() } else { s.clone() })
            .unwrap();
    }
    for (c, d) in agg2.deliveries().unwrap() {
        let r = clients.get_mut(&c).unwrap().mask_input(&d, &[1, 2, 3, 4]);
        if c == target {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("does not open"), "{e}");
        } else {
            let m = r.unwrap();
            // Wrong length, or twice: refused.
            let mut short = m.clone();
            short.masked.truncate(3);
            assert!(agg2.receive_masked(short).is_err());
            agg2.receive_masked(m.clone()).unwrap();
            assert!(agg2.receive_masked(m).is_err());
        }
    }
}

#[test]
fn quantised_sums_decode_exactly_and_out_of_range_values_are_clamped() {
    let q = Quantizer::for_sum(8.0, 1000, 0.0).unwrap();
    let xs: Vec<f32> = vec![8.0, -8.0, 7.99, 0.123_456, -3.5];
    let mut sum = 0u32;
    let mut exact = 0i64;
    for i in 0..1000 {
        let v = xs[i % xs.len()];
        let w = q.quantize(&[v])[0];
        exact += w as i32 as i64;
        sum = sum.wrapping_add(w);
    }
    assert_eq!(sum as i32 as i64, exact, "no wrap-around within the range");
    assert!((q.dequantize_one(q.quantize_one(0.123_456)) - 0.123_456).abs() < 1.0 / q.scale);
    assert_eq!(q.quantize_one(1e9), q.quantize_one(8.0));
    assert_eq!(q.quantize_one(f64::NAN), 0);
    assert!(Quantizer::for_sum(0.0, 10, 0.0).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Masks cancel: with any graph, threshold and dropouts, the round either yields exactly
    /// the survivors' sum or aborts; and the aggregator never holds both kinds of share.
    #[test]
    fn masks_cancel_and_survivors_sum_exactly(
        n in 3u32..9,
        ring in any::<bool>(),
        dim in 1u32..40,
        drop_stages in proptest::collection::vec(0usize..6, 9),
        seed in any::<u64>(),
    ) {
        let k = if ring && n >= 5 { Some(2) } else { None };
        let p = params(n, k, None, dim);
        let inputs = inputs_for(&p, seed);
        let drops: Drops = p.participants.iter().zip(&drop_stages)
            .filter(|(_, s)| **s < 4)
            .map(|(&c, &s)| (c, s))
            .collect();
        let r = run(&p, &inputs, &drops, seed ^ 1);
        never_both(&r.held);
        match r.outcome {
            Ok(out) => {
                let expect: Vec<u32> = p.participants.iter().copied()
                    .filter(|c| drops.get(c).is_none_or(|&s| s > 2)).collect();
                // The sum is exactly that of the clients it names.
                prop_assert_eq!(out.sum, sum_of(&inputs, &out.survivors, dim));
                prop_assert!(out.survivors.iter().all(|c| expect.contains(c)));
                if k.is_none() {
                    prop_assert_eq!(&out.survivors, &expect);
                } else {
                    // On a ring a client whose neighbours all dropped has fewer than t live
                    // holders: the aggregator leaves it out (its secrets could not be
                    // rebuilt); every other client that sent its input is in.
                    let g = p.graph();
                    for c in expect.iter().filter(|c| !out.survivors.contains(c)) {
                        let live = g.neighbours(*c).iter()
                            .filter(|v| drops.get(v).is_none_or(|&s| s > 2)).count();
                        prop_assert!(live + 1 < p.threshold as usize, "{} left out with {} live", c, live);
                    }
                }
            }
            Err(e) => {
                prop_assert!(e.to_string().contains("aborted"), "{}", e);
                // In the complete graph a round aborts only with fewer than t clients left.
                if k.is_none() {
                    let t = p.threshold as usize;
                    let left = |s: usize| p.participants.iter()
                        .filter(|c| drops.get(c).is_none_or(|&d| d > s)).count();
                    prop_assert!((0..4).any(|s| left(s) < t));
                }
            }
        }
    }
}
