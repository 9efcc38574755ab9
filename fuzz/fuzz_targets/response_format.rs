//! A client's `response_format` schema never panics the compiler, and a compiled grammar
//! never panics (or recurses for ever) on any output: the first half of the bytes is offered
//! as a JSON schema, the rest as generated text, fed byte by byte.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sov_models::constrain::{Grammar, Matcher};

fuzz_target!(|data: &[u8]| {
    let (schema, text) = data.split_at(data.len() / 2);
    let grammar = match serde_json::from_slice::<serde_json::Value>(schema) {
        Ok(v) => match Grammar::from_schema(&v) {
            Ok(g) => g,
            Err(_) => return,
        },
        Err(_) => Grammar::json_object(),
    };
    let mut m = Matcher::new(Arc::new(grammar));
    for b in text {
        let _ = m.allows(&[*b]);
        if !m.advance(&[*b]) {
            break;
        }
    }
    let _ = m.can_end();
    let _ = m.first_bytes();
});
