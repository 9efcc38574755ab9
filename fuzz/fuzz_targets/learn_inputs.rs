//! What sov-learn reads from outside (round messages, split files, data set files, members'
//! CSV tables, federation records) never
//! panics: malformed bytes are errors, and a decoded message encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_learn::{data, partition::SplitFile, table, wire};

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
