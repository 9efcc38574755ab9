//! The recommended robust rule (`--robust`, the screened mean) against every attack on
//! strongly heterogeneous data, at the size of docs/ROBUSTNESS.md's grid: digits over 20
//! clients on a Dirichlet α = 0.1 split, 4 of them attacking, MLP 64, 2 local epochs,
//! 30 rounds. Each case mounts the attack for real (the omniscient ones see the round's
//! honest updates) and checks the final accuracy against clean FedAvg on the same seed.
//!
//! Excluding attackers also loses their data. Where the honest clients alone cover what
//! everyone knows (seed 2: FedAvg without the four attackers loses under a point), the issue's
//! bounds apply to clean FedAvg; where the attackers held data nobody else has (seed 3: FedAvg
//! without them loses 12 points), no rule can give it back, and the bound is against what the
//! honest clients learn alone (the `absent` attack).

#![allow(clippy::unwrap_used)]

use sov_learn::{
    attack::Attack,
    data::{self, Split},
    partition::Partition,
    sim::{SimConfig, Simulation},
    strategy::{self, Strategy},
    train::TrainConfig,
};

const CLIENTS: usize = 20;
const ROUNDS: usize = 30;

fn split(seed: u64) -> (Split, Vec<Vec<usize>>) {
    let d = data::digits().unwrap().stratified_split(0.25, 0).unwrap();
    let parts = Partition::Dirichlet(0.1)
        .apply(&d.train, CLIENTS, seed)
        .unwrap();
    (d, parts)
}

/// Final accuracy (percent) and the clients the rule excluded in the last round.
fn run(
    (d, parts): &(Split, Vec<Vec<usize>>),
    strategy: Strategy,
    attack: Option<Attack>,
    seed: u64,
) -> (f32, Vec<u32>, Vec<u32>) {
    let cfg = SimConfig {
        rounds: ROUNDS,
        strategy,
        malicious: if attack.is_some() { 0.2 } else { 0.0 },
        attack,
        train: TrainConfig {
            epochs: 2,
            ..TrainConfig::default()
        },
        seed,
        ..SimConfig::default()
    };
    let mut sim = Simulation::new(cfg, d, parts).unwrap();
    let mut last = None;
    for _ in 0..ROUNDS {
        last = Some(sim.round().unwrap());
    }
    let last = last.unwrap();
    let bad = (0..CLIENTS as u32)
        .filter(|&c| sim.malicious()[c as usize])
        .collect();
    (
        last.accuracy * 100.0,
        last.screened.unwrap_or_default(),
        bad,
    )
}

fn recipe() -> Strategy {
    strategy::robust(CLIENTS, 0.2).unwrap()
}

#[test]
fn the_robust_rule_holds_every_attack_within_the_bounds_on_a_covered_split() {
    let seed = 2;
    let s = split(seed);
    assert_eq!(recipe(), Strategy::ScreenedMean { f: 4 });
    let (clean, _, _) = run(&s, Strategy::FedAvg, None, seed);
    let (alone, _, _) = run(&s, Strategy::FedAvg, Some(Attack::Absent), seed);
    assert!(
        alone > clean - 2.0,
        "this split's honest clients alone: {alone} vs {clean}"
    );
    // The attack is real: FedAvg collapses under it.
    let (broken, _, _) = run(&s, Strategy::FedAvg, Some(Attack::SignFlip), seed);
    assert!(broken < 30.0, "FedAvg under sign flipping: {broken}");

    let (robust_clean, out, _) = run(&s, recipe(), None, seed);
    assert!(
        robust_clean >= clean - 2.0,
        "without attackers: {robust_clean} vs FedAvg {clean}"
    );
    assert!(out.len() <= 4);
    for (attack, bound) in [
        (Attack::SignFlip, 5.0),
        (Attack::Scale(10.0), 5.0),
        (Attack::Noise, 5.0),
        (Attack::LabelFlip, 5.0),
        // docs/ROBUSTNESS.md: the grid's ALIE and IPM cells stay within 2 points; the issue's
        // bound is 10.
        (Attack::Alie, 10.0),
        (Attack::Ipm(0.5), 10.0),
    ] {
        let (acc, out, bad) = run(&s, recipe(), Some(attack), seed);
        assert!(
            acc >= clean - bound,
            "{attack}: {acc} vs clean FedAvg {clean} (bound {bound})"
        );
        if matches!(attack, Attack::SignFlip | Attack::Scale(_) | Attack::Ipm(_)) {
            assert_eq!(
                out, bad,
                "{attack}: the rule excluded {out:?}, the attackers are {bad:?}"
            );
        }
    }
}

#[test]
fn where_attackers_held_data_nobody_else_has_the_robust_rule_keeps_what_the_honest_learn_alone() {
    let seed = 3;
    let s = split(seed);
    let (clean, _, _) = run(&s, Strategy::FedAvg, None, seed);
    let (alone, _, _) = run(&s, Strategy::FedAvg, Some(Attack::Absent), seed);
    assert!(
        alone < clean - 5.0,
        "the attackers' data: {alone} vs {clean}"
    );
    for attack in [
        Attack::SignFlip,
        Attack::Scale(10.0),
        Attack::LabelFlip,
        Attack::Alie,
        Attack::Ipm(0.5),
    ] {
        let (acc, _, _) = run(&s, recipe(), Some(attack), seed);
        assert!(
            acc >= alone - 3.0,
            "{attack}: {acc} vs the honest clients alone {alone}"
        );
    }
}
