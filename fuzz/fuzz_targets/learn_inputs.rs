//! What sov-learn reads from outside (round messages, split files, data set files, members'
//! CSV tables, federation records) never
//! panics: malformed bytes are errors, and a decoded message encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_learn::{data, partition::SplitFile, table, wire};

/// A small valid ledger to check records against.
fn ledger() -> Option<sov_learn::ledger::Ledger> {
    use sov_learn::federation::{Genesis, Member, Policy, Role, Task};
    let key = sov_identity::Keypair::from_seed(&[5; 32]);
    let g = Genesis {
        name: "fuzz".into(),
        created: 1,
        task: Task {
            data: "digits".into(),
            input: [1, 8, 8],
            classes: 10,
            model: "logreg".into(),
        },
        policy: Policy {
            rounds: 3,
            strategy: "fedavg".into(),
            min_clients: 1,
            secagg: None,
            dp: None,
            epsilon_budget: None,
            local_epochs: 1,
            learning_rate: "0.1".into(),
            batch: 8,
            round_timeout_ms: 10_000,
        },
        members: vec![Member {
            did: key.did(),
            role: Role::Creator,
        }],
        governance: None,
    };
    let bytes = sov_core::Signed::sign(g, &key).ok()?.encode().ok()?;
    sov_learn::ledger::Ledger::new(&bytes).ok()
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, bytes)) = input.split_first() else {
        return;
    };
    match which % 8 {
        0 => {
            if let Ok(m) = wire::decode::<wire::ClientUpdate>(bytes) {
                assert_eq!(wire::encode(&m).ok().as_deref(), Some(bytes));
                let _ = wire::bytes_to_f32s(&m.delta);
            }
        }
        1 => {
            if let Ok(m) = wire::decode::<wire::GlobalModel>(bytes) {
                let _ = wire::bytes_to_f32s(&m.params);
            }
        }
        2 => {
            if let Ok(f) = SplitFile::parse(bytes)
                && let Ok(d) = data::digits()
            {
                let _ = f.apply(&d);
            }
        }
        3 => {
            let _ = data::parse_digits_csv(bytes);
        }
        5 => {
            if let Ok(t) = table::parse_csv(bytes, None) {
                assert_eq!(t.data.features.len(), t.data.len() * t.columns.len());
                let mut d = t.data.clone();
                table::Standardizer::fit(&d).apply(&mut d);
                let _ = t.for_task(3, 10);
            }
        }
        7 => {
            if let Ok((_, g)) = sov_learn::federation::open_genesis(bytes) {
                let _ = (g.model_spec(), g.strategy(), g.dp(), g.epsilon_budget());
            }
        }
        6 => {
            // A federation's later records against a valid ledger: admissions, join
            // requests and round records from peers.
            if let Some(mut l) = ledger() {
                let id = *l.id();
                let _ = sov_learn::ledger::open_join(bytes, &id);
                let _ = l.check_round(bytes);
                let _ = l.admit(bytes);
                let _ = l.accept_round(bytes);
            }
        }
        4 => {
            let mid = bytes.len() / 2;
            let _ = data::parse_idx(&bytes[..mid], &bytes[mid..], 10);
        }
        _ => {
            let mut d = data::Dataset {
                shape: [1, 28, 28],
                classes: 10,
                features: Vec::new(),
                labels: Vec::new(),
            };
            let _ = data::parse_mnist_json(bytes, 3, &mut d);
        }
    }
});
