//! The simulation's results on the digits fixture, pinned: the round logic lives in pure
//! state machines (`round::client`, `round::server`) that the simulation and the node both
//! drive, and moving code between them must not change what a federation computes. Each
//! case runs a few rounds of one mode (plain FedAvg, SecAgg+ with dropouts, central and
//! distributed DP, a robust rule under attack) and checks every round's accuracy, dropouts
//! and ε against the values the code gave before the split.
//!
//! Accuracies are pinned to within one test example (1/450): candle's matrix kernels may
//! round differently on another CPU. ε is arithmetic on the accountant alone, pinned to
//! 1e-9. Regenerate with `SOV_PRINT_PINS=1 cargo test -p sov-learn --test pinned -- --nocapture`
//! only when a change of results is intended, and say so in the commit.

#![allow(clippy::unwrap_used)]

use sov_learn::{
    attack::Attack,
    data::{self, Split},
    dp::DpConfig,
    partition::SplitFile,
    sim::{RoundReport, SecAggSettings, SimConfig, Simulation},
    strategy::Strategy,
    train::TrainConfig,
};

fn flower10() -> (Split, Vec<Vec<usize>>) {
    let f = SplitFile::parse(include_bytes!("../fixtures/flower-split-10.json")).unwrap();
    f.apply(&data::digits().unwrap()).unwrap()
}

fn run(cfg: SimConfig, rounds: usize) -> Vec<RoundReport> {
    let (split, parts) = flower10();
    let mut sim = Simulation::new(cfg, &split, &parts).unwrap();
    let reports = (0..rounds).map(|_| sim.round().unwrap()).collect();
    if std::env::var_os("SOV_PRINT_PINS").is_some() {
        // The exact parameters, to compare two builds on one machine bit for bit.
        let bits: Vec<u8> = sim.global().iter().flat_map(|v| v.to_le_bytes()).collect();
        let sum: u64 = bits
            .chunks(8)
            .map(|c| c.iter().fold(0u64, |a, &b| a.rotate_left(5) ^ b as u64))
            .fold(0, |a, x| a.wrapping_mul(31).wrapping_add(x));
        println!("parameters checksum {sum:016x}");
    }
    reports
}

/// Round: (accuracy, clients, dropped, aborted, ε).
type Pin = (f32, usize, usize, bool, Option<f64>);

fn check(name: &str, reports: &[RoundReport], pins: &[Pin]) {
    if std::env::var_os("SOV_PRINT_PINS").is_some() {
        println!("{name}:");
        for r in reports {
            println!(
                "    ({:?}, {}, {}, {}, {:?}),",
                r.accuracy,
                r.clients,
                r.dropped,
                r.aborted.is_some(),
                r.epsilon
            );
        }
        return;
    }
    assert_eq!(reports.len(), pins.len(), "{name}");
    for (i, (r, p)) in reports.iter().zip(pins).enumerate() {
        let round = i + 1;
        assert!(
            (r.accuracy - p.0).abs() <= 1.0 / 450.0 + 1e-6,
            "{name} round {round}: accuracy {} (pinned {})",
            r.accuracy,
            p.0
        );
        assert_eq!(
            (r.clients, r.dropped, r.aborted.is_some()),
            (p.1, p.2, p.3),
            "{name} round {round}: clients, dropped, aborted ({r:?})"
        );
        match (r.epsilon, p.4) {
            (Some(e), Some(want)) if want.is_infinite() => {
                assert!(e.is_infinite(), "{name} round {round}: ε {e} (pinned ∞)")
            }
            (Some(e), Some(want)) => assert!(
                (e - want).abs() <= 1e-9 * want.max(1.0),
                "{name} round {round}: ε {e} (pinned {want})"
            ),
            (got, want) => assert_eq!(got, want, "{name} round {round}: ε"),
        }
    }
}

fn train(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        ..TrainConfig::default()
    }
}

#[test]
fn fedavg() {
    let cfg = SimConfig {
        train: train(2),
        ..SimConfig::default()
    };
    check(
        "fedavg",
        &run(cfg, 3),
        &[
            (0.35555556, 10, 0, false, None),
            (0.6666667, 10, 0, false, None),
            (0.7355555, 10, 0, false, None),
        ],
    );
}

#[test]
fn secagg_plus_with_dropouts() {
    let cfg = SimConfig {
        secagg: Some(SecAggSettings {
            neighbours: Some(6),
            threshold: Some(5),
            ..SecAggSettings::default()
        }),
        dropout: 0.1,
        seed: 8,
        train: train(2),
        ..SimConfig::default()
    };
    check(
        "secagg_plus_with_dropouts",
        &run(cfg, 4),
        &[
            (0.46, 10, 0, false, None),
            (0.6666667, 10, 1, false, None),
            (0.6711111, 10, 2, false, None),
            (0.74666667, 10, 2, false, None),
        ],
    );
}

fn dp() -> DpConfig {
    DpConfig {
        noise: 1.0,
        clip: 0.5,
        delta: 1e-5,
    }
}

#[test]
fn central_dp_poisson_sampled() {
    let cfg = SimConfig {
        dp: Some(dp()),
        reproducible_noise: true,
        fraction: 0.5,
        train: train(2),
        ..SimConfig::default()
    };
    check(
        "central_dp_poisson_sampled",
        &run(cfg, 3),
        &[
            (0.08222222, 6, 0, false, Some(3.893575885888257)),
            (0.12888889, 5, 0, false, Some(5.377023513320223)),
            (0.25777778, 6, 0, false, Some(6.482462905380883)),
        ],
    );
}

#[test]
fn distributed_dp_under_secagg_with_dropouts() {
    let cfg = SimConfig {
        dp: Some(dp()),
        reproducible_noise: true,
        secagg: Some(SecAggSettings::default()),
        dropout: 0.2,
        seed: 7,
        train: train(2),
        ..SimConfig::default()
    };
    check(
        "distributed_dp_under_secagg_with_dropouts",
        &run(cfg, 3),
        // Rounds 2 and 3 abort (too few shares survive): they publish nothing, and ε
        // stays where round 1 left it (9 noise shares of 10 in its sum).
        &[
            (0.11111111, 10, 1, false, Some(5.023949750345421)),
            (0.11111111, 10, 10, true, Some(5.023949750345421)),
            (0.11111111, 10, 10, true, Some(5.023949750345421)),
        ],
    );
}

#[test]
fn median_under_sign_flipping_with_clipping() {
    let cfg = SimConfig {
        strategy: Strategy::Median,
        malicious: 0.2,
        attack: Some(Attack::SignFlip),
        clip: Some(2.0),
        fraction: 0.8,
        train: train(1),
        ..SimConfig::default()
    };
    check(
        "median_under_sign_flipping_with_clipping",
        &run(cfg, 3),
        &[
            (0.19555555, 8, 0, false, None),
            (0.31333333, 8, 0, false, None),
            (0.2911111, 8, 0, false, None),
        ],
    );
}
