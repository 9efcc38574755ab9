//! A GGUF file is untrusted input (models arrive from peers): parsing any bytes, and then
//! decoding every tensor the table names and building its tokeniser, is an error or a result, never a panic or an
//! allocation beyond what the bytes can back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_models::{gguf::Gguf, tokenizer::Tokenizer};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(g) = Gguf::parse(bytes) {
        for t in &g.tensors {
            let _ = g.dequantize(bytes, &t.name);
        }
        if let Ok(t) = Tokenizer::from_gguf(&g)
            && let Ok(ids) = t.encode("It's 12 o'clock, héllo  😀\n")
        {
            let _ = t.decode(&ids);
        }
        for v in g.metadata.values() {
            let _ = (v.as_u64(), v.as_f64(), v.as_str(), v.as_array());
        }
    }
});
