//! The `/sov/node/1` message decoders never panic on a peer's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_node::protocol::{Request, Response};

fuzz_target!(|data: &[u8]| {
    let _ = Request::decode(data);
    let _ = Response::decode(data);
});
