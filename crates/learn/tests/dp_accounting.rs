//! The accountant agrees with Google's dp-accounting 0.6.0 over a grid of noise
//! multipliers, sampling rates, step counts and δ (fixture written by
//! `fixtures/dp_accounting_grid.py`).

#![allow(clippy::unwrap_used, missing_docs)]

use serde::Deserialize;
use sov_learn::dp::{Accountant, default_orders};

#[derive(Deserialize)]
struct Grid {
    orders: Vec<f64>,
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    sigma: f64,
    q: f64,
    steps: u64,
    delta: f64,
    epsilon: f64,
}

#[test]
fn epsilon_agrees_with_dp_accounting_within_one_percent() {
    let grid: Grid =
        serde_json::from_slice(include_bytes!("../fixtures/dp-accounting-grid.json")).unwrap();
    assert_eq!(
        grid.orders,
        default_orders(),
        "the fixture's orders are ours"
    );
    assert!(grid.rows.len() >= 100);
    let mut worst = (0.0f64, String::new());
    for r in &grid.rows {
        let mut acc = Accountant::default();
        acc.step(r.q, r.sigma, r.steps).unwrap();
        let (eps, order) = acc.epsilon(r.delta);
        let rel = (eps - r.epsilon).abs() / r.epsilon.max(1e-12);
        if rel > worst.0 {
            worst = (
                rel,
                format!(
                    "σ {} q {} steps {} δ {}: ours {eps} (order {order}), theirs {}",
                    r.sigma, r.q, r.steps, r.delta, r.epsilon
                ),
            );
        }
    }
    eprintln!("worst relative gap {:.2e}: {}", worst.0, worst.1);
    assert!(
        worst.0 <= 0.01,
        "worst relative gap {}: {}",
        worst.0,
        worst.1
    );
}
