//! Secure aggregation, end to end through the client and aggregator state machines: exact
//! sums under dropouts at every stage, aborts that reveal nothing, the aggregator never
//! rebuilding both secrets of one client, and a malicious aggregator (forged adverts,
//! shares withheld from a target, a different survivor list for each holder) failing.

#![allow(clippy::unwrap_used, missing_docs)]

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use sov_learn::secagg::{
    Aggregator, Client, Directory, KeyAdvert, KeyBook, MaskedInput, Outcome, Quantizer,
    RoundParams, ShareDelivery, SurvivorList, SurvivorSignature, UnmaskRequest, UnmaskResponse,
    seeded_identities,
};

/// The members' long-term signing keys and the directory every member knows them by.
struct Members {
    keys: BTreeMap<u32, ed25519_dalek::SigningKey>,
    dir: Arc<Directory>,
}

fn members(p: &RoundParams) -> Members {
    let (keys, dir) = seeded_identities(&p.participants, 0x5157);
    Members { keys, dir }
}

/// Client `c` joins the round.
fn join(
    p: &RoundParams,
    m: &Members,
    c: u32,
    rng: &mut StdRng,
) -> sov_learn::Result<(Client, KeyAdvert)> {
    let key = m.keys.get(&c).unwrap_or(&m.keys[&p.participants[0]]);
    Client::new(p.clone(), c, key, m.dir.clone(), rng)
}

/// When a client stops answering: before stage `s` (0 advert, 1 shares, 2 masked input,
/// 3 its signature on the survivors and its unmasking answer); clients not listed answer
/// everything.
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
    let m = members(params);
    let mut agg = Aggregator::new(params.clone(), m.dir.clone()).unwrap();
    let mut clients = BTreeMap::new();
    let mut responses = Vec::new();
    let outcome = (|| {
        for &c in &params.participants {
            let (client, advert) = join(params, &m, c, &mut rng)?;
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
        for (c, list) in agg.survivor_lists()? {
            if alive(c, 3) {
                let sig = clients.get_mut(&c).unwrap().confirm(&list)?;
                agg.receive_signature(sig)?;
            }
        }
        for (c, req) in agg.unmask_requests()? {
            let resp = clients.get_mut(&c).unwrap().unmask(&req)?;
            responses.push(resp.clone());
            agg.receive_unmask(resp)?;
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
    // Complete graph, n = 7, t = 5 (more than two thirds): any 2 may drop at any one stage.
    let p = params(7, None, None, 33);
    assert_eq!(p.threshold, 5);
    let inputs = inputs_for(&p, 1);
    let ids = p.participants.clone();
    for stage in 0..4 {
        for d in 0..=2usize {
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
        // One more and the round aborts before anyone reveals a share (after the masked
        // inputs: too few survivors sign the list, and no one reveals without t signers).
        let drops: Drops = ids[..3].iter().map(|&c| (c, stage)).collect();
        let r = run(&p, &inputs, &drops, 77);
        let e = r.outcome.unwrap_err().to_string();
        assert!(e.contains("aborted"), "stage {stage}: {e}");
        assert!(
            r.responses.is_empty(),
            "stage {stage}: shares were revealed"
        );
    }
}

#[test]
fn dropouts_spread_over_all_stages_are_recovered() {
    let p = params(13, None, None, 16);
    assert_eq!(p.threshold, 9);
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
    // 30 clients, 6 neighbours, threshold 5 of 7 holders.
    let p = params(30, Some(6), None, 50);
    assert_eq!(p.threshold, 5);
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
    let p = params(6, None, None, 8);
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
    let lists = agg.survivor_lists().unwrap();
    // The straggler's masked input arrives now: refused, it counts as dropped.
    assert!(agg.receive_masked(late_input.unwrap()).is_err());
    assert!(lists.iter().all(|(c, _)| *c != late));
    for (c, list) in &lists {
        let sig = clients.get_mut(c).unwrap().confirm(list).unwrap();
        agg.receive_signature(sig).unwrap();
    }
    // The straggler will not confirm a list without itself.
    let e = clients
        .get_mut(&late)
        .unwrap()
        .confirm(&lists[0].1)
        .unwrap_err();
    assert!(e.to_string().contains("not among the survivors"), "{e}");
    let requests = agg.unmask_requests().unwrap();
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
    // The straggler itself, asked now, reveals nothing: it confirmed no list.
    let req = UnmaskRequest {
        round: p.round,
        survivors: survivors.clone(),
        signatures: Vec::new(),
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
    let m = members(p);
    let mut agg = Aggregator::new(p.clone(), m.dir.clone()).unwrap();
    let mut clients = BTreeMap::new();
    for &c in &p.participants {
        let (client, advert) = join(p, &m, c, &mut rng).unwrap();
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

/// What a malicious aggregator collected from honest clients: who revealed a share of each
/// owner's self-mask seed, and of its mask key.
#[derive(Default)]
struct Loot {
    seed: BTreeMap<u32, BTreeSet<u32>>,
    key: BTreeMap<u32, BTreeSet<u32>>,
    refused: BTreeSet<u32>,
}

impl Loot {
    fn take(&mut self, c: u32, r: sov_learn::Result<UnmaskResponse>) {
        match r {
            Ok(resp) => {
                for s in &resp.seed_shares {
                    self.seed.entry(s.owner).or_default().insert(c);
                }
                for s in &resp.key_shares {
                    self.key.entry(s.owner).or_default().insert(c);
                }
            }
            Err(_) => {
                self.refused.insert(c);
            }
        }
    }

    fn seeds_of(&self, v: u32) -> usize {
        self.seed.get(&v).map_or(0, BTreeSet::len)
    }

    fn keys_of(&self, v: u32) -> usize {
        self.key.get(&v).map_or(0, BTreeSet::len)
    }
}

/// Show each client its own survivor list, have it sign, and hand it every signature made
/// on that same list (all the aggregator has); then ask again with the other list.
fn per_holder_lists(
    p: &RoundParams,
    clients: &mut BTreeMap<u32, Client>,
    list_of: impl Fn(u32) -> Vec<u32>,
) -> Loot {
    let mut signed: BTreeMap<Vec<u32>, Vec<SurvivorSignature>> = BTreeMap::new();
    for (&c, client) in clients.iter_mut() {
        let survivors = list_of(c);
        let list = SurvivorList {
            round: p.round,
            survivors: survivors.clone(),
        };
        if let Ok(sig) = client.confirm(&list) {
            signed.entry(survivors.clone()).or_default().push(sig);
            // A second list is never signed.
            let other = SurvivorList {
                round: p.round,
                survivors: p.participants.clone(),
            };
            assert!(client.confirm(&other).is_err(), "client {c} signed twice");
        }
    }
    let mut loot = Loot::default();
    for (&c, client) in clients.iter_mut() {
        let survivors = list_of(c);
        let req = UnmaskRequest {
            round: p.round,
            signatures: signed.get(&survivors).cloned().unwrap_or_default(),
            survivors,
        };
        loot.take(c, client.unmask(&req));
    }
    loot
}

#[test]
fn a_lying_aggregator_cannot_collect_both_secrets_of_a_client() {
    // t = 5 of 7 holders. The aggregator tells four clients that v survived and three that
    // it dropped: neither list gets t signatures, so no one reveals anything.
    let p = params(7, None, None, 4);
    let (_, mut clients) = to_unmasking(&p, 8);
    let v = p.participants[0];
    let all = p.participants.clone();
    let without_v: Vec<u32> = all.iter().copied().filter(|&c| c != v).collect();
    let loot = per_holder_lists(&p, &mut clients, |c| {
        if all.iter().position(|&x| x == c).unwrap() % 2 == 0 {
            all.clone()
        } else {
            without_v.clone()
        }
    });
    assert_eq!(loot.refused.len(), 7, "every client refuses");
    assert_eq!((loot.seeds_of(v), loot.keys_of(v)), (0, 0));
}

/// The attack of the review (issue 16): on a ring of 24 clients with 8 neighbours, the
/// aggregator delivers to client 0 the shares of only t − 1 neighbours (as if the others
/// had dropped), so 0 masks with those alone; then it tells 0's holders that 0 survived
/// and those neighbours' holders that they dropped, to get 0's self-mask seed and the
/// neighbours' mask keys: everything that hides 0's input. With the consistency round,
/// every holder of 0's secrets refuses, and neither 0's seed nor its key can be rebuilt.
#[test]
fn a_malicious_aggregator_withholding_shares_and_splitting_survivor_lists_learns_no_input() {
    let p = params(24, Some(8), None, 4);
    let t = p.threshold as usize;
    assert_eq!(t, 7, "more than two thirds of 9 holders");
    let g = p.graph();
    let target = p.participants[0];
    let inputs = inputs_for(&p, 11);
    // Only t − 1 of the target's neighbours' shares will reach it.
    let kept: Vec<u32> = g.neighbours(target)[..t - 1].to_vec();
    let holders_of_target: BTreeSet<u32> = g.holders(target).into_iter().collect();
    // The threshold the review's attack succeeded at (6 of 9) is no longer accepted.
    assert!(RoundParams::new(7, &p.participants, Some(8), Some(6), 4, [9; 32]).is_err());
    let everyone = p.participants.clone();
    let without_kept: Vec<u32> = everyone
        .iter()
        .copied()
        .filter(|c| !kept.contains(c))
        .collect();
    // A list per holder, as the review's search built them: the target alive for everyone;
    // each holder told that as many kept neighbours dropped as it will believe (its list
    // must still hold t of its own holders), those that need more key shares first; the
    // target told only of the neighbours it heard from.
    let mut per_holder: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut still_needed: BTreeMap<u32, usize> = kept.iter().map(|&v| (v, t)).collect();
    for &h in &everyone {
        let mine: Vec<u32> = g.holders(h);
        let dropped: BTreeSet<u32> = if h == target {
            mine.iter()
                .copied()
                .filter(|&v| v != target && !kept.contains(&v))
                .collect()
        } else {
            let mut candidates: Vec<u32> = mine
                .iter()
                .copied()
                .filter(|v| *v != h && kept.contains(v))
                .collect();
            candidates.sort_by_key(|v| std::cmp::Reverse(still_needed[v]));
            candidates.truncate(mine.len() - t);
            for v in &candidates {
                *still_needed.get_mut(v).unwrap() = still_needed[v].saturating_sub(1);
            }
            candidates.into_iter().collect()
        };
        per_holder.insert(
            h,
            everyone
                .iter()
                .copied()
                .filter(|c| !dropped.contains(c))
                .collect(),
        );
    }
    // Two ways to split: one list for all (the kept neighbours dropped), or a list for each
    // holder.
    for attempt in ["one list for all", "a list per holder"] {
        let (_, mut clients, deliveries) = to_masking(&p, 11);
        for (c, mut d) in deliveries {
            if c == target {
                d.shares.retain(|s| kept.contains(&s.from));
            }
            clients
                .get_mut(&c)
                .unwrap()
                .mask_input(&d, &inputs[&c])
                .unwrap();
        }
        let loot = per_holder_lists(&p, &mut clients, |c| {
            if attempt == "one list for all" {
                without_kept.clone()
            } else {
                per_holder[&c].clone()
            }
        });
        // Whatever else was revealed, the target's input stays hidden: rebuilding it needs
        // its seed and the mask key of every kept neighbour.
        let exposed = loot.seeds_of(target) >= t && kept.iter().all(|&v| loot.keys_of(v) >= t);
        assert!(!exposed, "{attempt}: the target's input can be rebuilt");
        // Every holder of the target's secrets refuses.
        for h in &holders_of_target {
            assert!(loot.refused.contains(h), "{attempt}: holder {h} revealed");
        }
        assert!(
            loot.seeds_of(target) < t && loot.keys_of(target) < t,
            "{attempt}: {} seed and {} key shares of the target",
            loot.seeds_of(target),
            loot.keys_of(target)
        );
        assert_eq!(loot.seeds_of(target) + loot.keys_of(target), 0, "{attempt}");
    }
}

#[test]
fn clients_refuse_bad_requests_and_the_aggregator_refuses_bad_messages() {
    let p = params(5, None, None, 4);
    let mut rng = StdRng::seed_from_u64(9);
    let m = members(&p);
    // A stranger cannot join, nor a member with another's key; parameters that are unsafe
    // are refused.
    assert!(join(&p, &m, 999, &mut rng).is_err());
    let ids = p.participants.clone();
    let e = Client::new(p.clone(), ids[1], &m.keys[&ids[0]], m.dir.clone(), &mut rng);
    assert!(e.unwrap_err().to_string().contains("directory"));
    for (k, t) in [
        (Some(3), Some(3)),
        (Some(2), Some(1)),
        (Some(4), Some(2)),
        // Three of five holders: a majority, not more than two thirds.
        (Some(4), Some(3)),
        (Some(4), Some(6)),
    ] {
        assert!(
            RoundParams::new(1, &ids, k, t, 4, [0; 32]).is_err(),
            "{k:?} {t:?}"
        );
    }
    assert!(RoundParams::new(1, &ids[..1], None, None, 4, [0; 32]).is_err());

    let mut agg = Aggregator::new(p.clone(), m.dir.clone()).unwrap();
    let mut clients = BTreeMap::new();
    let mut adverts = Vec::new();
    for &c in &ids {
        let (client, advert) = join(&p, &m, c, &mut rng).unwrap();
        adverts.push(advert.clone());
        agg.receive_advert(advert).unwrap();
        clients.insert(c, client);
    }
    // An advert whose keys were swapped (the aggregator's own, say) is not signed by the
    // member: the aggregator and every client refuse it.
    let mut forged = adverts[1].clone();
    forged.mask_pk = adverts[2].mask_pk.clone();
    let e = Aggregator::new(p.clone(), m.dir.clone())
        .unwrap()
        .receive_advert(forged.clone())
        .unwrap_err();
    assert!(e.to_string().contains("not signed"), "{e}");
    // Twice, or from a stranger, or with a short key: refused.
    assert!(agg.receive_advert(adverts[0].clone()).is_err());
    let mut stranger = adverts[1].clone();
    stranger.client = 4242;
    assert!(agg.receive_advert(stranger).is_err());
    let mut short = adverts[1].clone();
    short.mask_pk.truncate(5);
    assert!(
        Aggregator::new(p.clone(), m.dir.clone())
            .unwrap()
            .receive_advert(short)
            .is_err()
    );
    // A key book with a duplicated key or a non-neighbour is refused by the client.
    let books = agg.key_books().unwrap();
    let (c0, book0) = books[0].clone();
    let mut dup = book0.clone();
    dup.adverts[1].mask_pk = dup.adverts[0].mask_pk.clone();
    let (mut fresh, _) = join(&p, &m, c0, &mut rng).unwrap();
    assert!(fresh.share_keys(&dup, &mut rng).is_err());
    let mut with_forged = book0.clone();
    let i = with_forged
        .adverts
        .iter()
        .position(|a| a.client == forged.client)
        .unwrap();
    with_forged.adverts[i] = forged;
    let (mut fresh, _) = join(&p, &m, c0, &mut rng).unwrap();
    let e = fresh.share_keys(&with_forged, &mut rng).unwrap_err();
    assert!(e.to_string().contains("not signed"), "{e}");
    let wrong_round = KeyBook {
        round: 8,
        ..book0.clone()
    };
    let (mut fresh, _) = join(&p, &m, c0, &mut rng).unwrap();
    assert!(fresh.share_keys(&wrong_round, &mut rng).is_err());
    // Out of order: an unmasking request before any key book.
    let (mut fresh, _) = join(&p, &m, c0, &mut rng).unwrap();
    assert!(
        fresh
            .unmask(&UnmaskRequest {
                round: 7,
                survivors: ids.clone(),
                signatures: Vec::new(),
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
    let mut agg2 = Aggregator::new(p.clone(), m.dir.clone()).unwrap();
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
fn survivor_signatures_are_checked_by_the_aggregator_and_by_each_client() {
    let p = params(5, None, None, 4);
    let (mut agg, mut clients) = to_unmasking(&p, 12);
    let lists = agg.survivor_lists().unwrap();
    let mut sigs = BTreeMap::new();
    for (c, list) in &lists {
        sigs.insert(*c, clients.get_mut(c).unwrap().confirm(list).unwrap());
    }
    let ids = p.participants.clone();
    // A signature with a flipped bit, or one member's signature sent as another's: refused.
    let mut flipped = sigs[&ids[0]].clone();
    flipped.signature[5] ^= 1;
    assert!(agg.receive_signature(flipped).is_err());
    let mut borrowed = sigs[&ids[0]].clone();
    borrowed.client = ids[1];
    assert!(agg.receive_signature(borrowed).is_err());
    for s in sigs.values() {
        agg.receive_signature(s.clone()).unwrap();
    }
    assert!(
        agg.receive_signature(sigs[&ids[0]].clone()).is_err(),
        "twice"
    );
    let requests: BTreeMap<u32, UnmaskRequest> =
        agg.unmask_requests().unwrap().into_iter().collect();
    // In the complete graph t signatures confirm every owner: no more are sent.
    for r in requests.values() {
        assert_eq!(r.signatures.len(), p.threshold as usize);
    }
    // A client refuses a request whose list is not the one it signed, or whose signatures
    // do not verify; it answers once, so each refusal is on a fresh round.
    let (mut agg2, mut clients2) = to_unmasking(&p, 13);
    for (c, list) in agg2.survivor_lists().unwrap() {
        clients2.get_mut(&c).unwrap().confirm(&list).unwrap();
    }
    let mut other_list = requests[&ids[0]].clone();
    other_list.survivors.pop();
    let e = clients2
        .get_mut(&ids[0])
        .unwrap()
        .unmask(&other_list)
        .unwrap_err();
    assert!(e.to_string().contains("not the one"), "{e}");
    // Signatures from round 12's keys do not verify on round 13's adverts' list? They do
    // (same members, same list): the long-term keys sign the parameters and the list.
    // A tampered one does not.
    let mut tampered = requests[&ids[1]].clone();
    tampered.signatures[0].signature[0] ^= 1;
    let e = clients2
        .get_mut(&ids[1])
        .unwrap()
        .unmask(&tampered)
        .unwrap_err();
    assert!(e.to_string().contains("not signed"), "{e}");
    // Honest requests are answered and the sum comes out.
    for (c, req) in requests {
        let resp = clients.get_mut(&c).unwrap().unmask(&req).unwrap();
        agg.receive_unmask(resp).unwrap();
    }
    let inputs = inputs_for(&p, 12);
    assert_eq!(agg.finish().unwrap().sum, sum_of(&inputs, &ids, p.dim));
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
