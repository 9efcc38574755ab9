//! Client assertions and access tokens from anyone never panic: the bytes are offered to the
//! token endpoint's assertion check, to the access-token check of a node, and to the look
//! at a token's issuer and audience that picks the key to check it with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_identity::{
    Keypair,
    jwt::{Replay, peek_access, verify_access, verify_assertion},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut replay = Replay::new(8);
    let _ = verify_assertion(text, "http://127.0.0.1:7878/oauth/token", 1_800_000_000, &mut replay);
    let node = Keypair::from_seed(&[3; 32]);
    let _ = verify_access(text, &node.did(), &node.did().to_string(), 1_800_000_000);
    let _ = peek_access(text);
});
