//! The frame reader and the `/sov/blocks/2` decoders never panic, never allocate more than one block (1 MiB)
//! beyond what the input holds, and what they accept re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_net::wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = wire::unframe(data, wire::MAX_NODE_MESSAGE) {
        assert_eq!(wire::frame(&body), data);
    }
    if let Ok(cids) = wire::decode_want(data) {
        assert_eq!(wire::encode_want(&cids), data);
    }
    if let Ok(blocks) = wire::decode_blocks(data) {
        let refs: Vec<_> = blocks.iter().map(|(c, b)| (*c, b.as_slice())).collect();
        assert_eq!(wire::encode_blocks(&refs), data);
    }
});
