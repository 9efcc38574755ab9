//! The aggregator's and the client's round state machines on their own, with time and
//! randomness as inputs: a secure round's stages close at their deadlines (or as soon as
//! everyone still in has answered), messages for another stage are refused, the encoding
//! decodes to the weighted mean, selection and the accountant follow the plan.

#![allow(clippy::unwrap_used)]

use rand::{SeedableRng, rngs::StdRng};
use sov_learn::{
    dp::{Accountant, DpConfig, NoiseRng},
    round::{
        client::SecureEncoding,
        server::{Broadcast, Deadlines, Plan, SecAggSettings, SecureRound, Server, Stage},
    },
    secagg::{Client, RoundParams, seeded_identities},
    strategy::Strategy,
};

fn plan() -> Plan {
    Plan {
        fraction: 1.0,
        strategy: Strategy::FedAvg,
        pre: None,
        clip: None,
        secagg: Some(SecAggSettings::default()),
        dp: None,
        noise_seed: None,
    }
}

#[test]
fn secure_stages_close_at_their_deadline_without_the_missing_and_the_sum_is_exact() {
    let ids: Vec<u32> = (0..5).collect();
    let params = RoundParams::new(1, &ids, None, Some(4), 4, [7; 32]).unwrap();
    let deadlines = Deadlines {
        adverts: 100,
        shares: 200,
        masked: 300,
        confirm: 350,
        unmask: 400,
    };
    let (keys, dir) = seeded_identities(&ids, 1);
    let mut round = SecureRound::open(params.clone(), dir.clone(), 1_000, deadlines).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let mut clients = Vec::new();
    // Client 4 never answers.
    for &c in &ids[..4] {
        let (client, advert) =
            Client::new(params.clone(), c, &keys[&c], dir.clone(), &mut rng).unwrap();
        round.receive_advert(advert).unwrap();
        clients.push(client);
    }
    assert_eq!(round.waiting_for().iter().copied().collect::<Vec<_>>(), [4]);
    assert!(round.tick(1_050).is_none(), "open until its deadline");
    assert_eq!(round.deadline(), Some(1_100));
    let Some(Broadcast::KeyBooks(books)) = round.tick(1_100) else {
        panic!("the adverts stage closes at its deadline")
    };
    assert_eq!(books.len(), 4);
    assert_eq!(round.stage(), Stage::Shares);
    // An advert now is for a closed stage: refused.
    let (_, late) = Client::new(params.clone(), 4, &keys[&4], dir.clone(), &mut rng).unwrap();
    assert!(round.receive_advert(late).is_err());
    for (client, (_, book)) in clients.iter_mut().zip(&books) {
        round
            .receive_shares(client.share_keys(book, &mut rng).unwrap())
            .unwrap();
    }
    // Everyone still in answered: the stage closes before its deadline.
    let Some(Broadcast::Deliveries(deliveries)) = round.tick(1_101) else {
        panic!("closes early once all answered")
    };
    let inputs: Vec<Vec<u32>> = (0..4u32).map(|c| vec![c, 10 * c, 1, u32::MAX]).collect();
    for ((client, (_, d)), x) in clients.iter_mut().zip(&deliveries).zip(&inputs) {
        round
            .receive_masked(client.mask_input(d, x).unwrap())
            .unwrap();
    }
    let Some(Broadcast::SurvivorLists(lists)) = round.tick(1_101) else {
        panic!("survivor lists")
    };
    assert_eq!(round.stage(), Stage::Confirm);
    assert_eq!(round.deadline(), Some(1_350));
    for (client, (_, l)) in clients.iter_mut().zip(&lists) {
        round.receive_signature(client.confirm(l).unwrap()).unwrap();
    }
    let Some(Broadcast::UnmaskRequests(requests)) = round.tick(1_101) else {
        panic!("unmask requests")
    };
    for (client, (_, r)) in clients.iter_mut().zip(&requests) {
        round.receive_unmask(client.unmask(r).unwrap()).unwrap();
    }
    let Some(Broadcast::Finished(Ok(outcome))) = round.tick(1_101) else {
        panic!("the round finishes")
    };
    let want: Vec<u32> = (0..4)
        .map(|k| inputs.iter().fold(0u32, |s, x| s.wrapping_add(x[k])))
        .collect();
    assert_eq!(outcome.sum, want);
    assert_eq!(outcome.survivors, [0, 1, 2, 3]);
    assert_eq!(round.stage(), Stage::Done);
    assert!(round.tick(u64::MAX).is_none());
}

#[test]
fn a_secure_round_with_too_few_answers_aborts_at_the_deadline() {
    let ids: Vec<u32> = (0..5).collect();
    let params = RoundParams::new(1, &ids, None, Some(4), 2, [1; 32]).unwrap();
    let (keys, dir) = seeded_identities(&ids, 2);
    let mut round =
        SecureRound::open(params.clone(), dir.clone(), 0, Deadlines::default()).unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    for c in 0..2 {
        let (_, advert) = Client::new(params.clone(), c, &keys[&c], dir.clone(), &mut rng).unwrap();
        round.receive_advert(advert).unwrap();
    }
    match round.tick(Deadlines::default().adverts) {
        Some(Broadcast::Finished(Err(e))) => assert!(e.to_string().contains("abort"), "{e}"),
        other => panic!("expected an abort, got {other:?}"),
    }
    assert_eq!(round.stage(), Stage::Done);
}

#[test]
fn the_weighted_encoding_decodes_to_the_example_weighted_mean() {
    let enc = SecureEncoding::new(SecAggSettings::default().range, None, 3, 2, 100.0, 2.0).unwrap();
    assert_eq!(enc.len(), 4);
    let mut rng = NoiseRng::reproducible(0);
    let a = enc.encode(vec![1.0, -2.0, 0.5], 30, None, &mut rng);
    let b = enc.encode(vec![-1.0, 4.0, 0.25], 10, None, &mut rng);
    let sum: Vec<u32> = a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect();
    let mean = enc.mean(&sum, 2.0).unwrap();
    let want = [0.5, -0.5, 0.4375];
    for (m, w) in mean.iter().zip(want) {
        assert!((m - w).abs() < 1e-5, "{mean:?}");
    }
    assert!(
        enc.mean(&sum[..3], 2.0).is_err(),
        "a sum of the wrong length"
    );
}

#[test]
fn the_server_selects_and_accounts_as_its_plan_says() {
    let dp = DpConfig {
        noise: 1.0,
        clip: 1.0,
        delta: 1e-5,
    };
    let mut sampled = Server::new(
        Plan {
            fraction: 0.3,
            secagg: None,
            dp: Some(dp),
            ..plan()
        },
        vec![0.0; 4],
        100,
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let sizes: Vec<usize> = (0..20).map(|_| sampled.select(&mut rng).len()).collect();
    assert!(
        sizes.iter().any(|&n| n != 30),
        "Poisson: sizes vary {sizes:?}"
    );
    let mut uniform = Server::new(
        Plan {
            fraction: 0.3,
            ..plan()
        },
        vec![0.0; 4],
        100,
    )
    .unwrap();
    assert!((0..5).all(|_| uniform.select(&mut rng).len() == 30));
    // The accountant is charged the multiplier the noise really has: the plan's z, but for
    // the sampler rounding σ² up.
    let z = sampled.central_multiplier().unwrap().unwrap();
    assert!((1.0..1.0 + 1e-9).contains(&z), "{z}");
    let (eps, delta) = sampled.account(Some(z)).unwrap().unwrap();
    let mut want = Accountant::default();
    want.step(0.3, z, 1).unwrap();
    assert_eq!(eps, want.epsilon(1e-5).0);
    assert_eq!(delta, 1e-5);
    // A round that published nothing (an aborted secure round) costs nothing.
    assert_eq!(sampled.account(None).unwrap().unwrap().0, eps);
    // Without secure aggregation the aggregator sees every update: no bound against it.
    assert_eq!(sampled.privacy_against_aggregator(), Some(f64::INFINITY));
    assert_eq!(uniform.privacy_against_aggregator(), None, "no DP");
    assert!(
        !sampled.noise_is_reproducible(),
        "noise from the OS by default"
    );
    // Plans the server cannot run are refused.
    for bad in [
        Plan {
            fraction: 0.0,
            ..plan()
        },
        Plan {
            strategy: Strategy::Median,
            ..plan()
        },
        Plan {
            pre: Some(sov_learn::strategy::PreAggregation::Bucket(2)),
            ..plan()
        },
    ] {
        assert!(Server::new(bad, vec![0.0; 4], 10).is_err());
    }
    assert!(
        Server::new(plan(), vec![0.0; 4], 1).is_err(),
        "SecAgg needs two"
    );
}
