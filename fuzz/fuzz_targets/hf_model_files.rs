//! The files of a Hugging Face model (safetensors, tokenizer.json, config.json) and a
//! GGUF chat template are untrusted input (models arrive from peers): parsing any bytes is
//! an error or a result, never a panic or an allocation the bytes cannot back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_models::{
    bert::Bert,
    chat::{ChatTemplate, Message},
    safetensors::SafeTensors,
    wordpiece::WordPiece,
};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(st) = SafeTensors::parse(bytes) {
        for (name, t) in &st.tensors {
            let _ = st.f32(bytes, name, &t.shape);
        }
    }
    if let Ok(t) = WordPiece::from_json(bytes) {
        let _ = t.encode("Héllo, wörld! 你好 unaffable", 64);
    }
    let _ = Bert::load(bytes, bytes, bytes, Some(16));
    if let Ok(src) = std::str::from_utf8(bytes)
        && let Ok(t) = ChatTemplate::new(src, "<s>", "</s>")
    {
        let _ = t.render(&[Message::new("user", "hi")], true);
    }
});
