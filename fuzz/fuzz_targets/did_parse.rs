//! did:key parsing never panics, and whatever parses prints back to the same string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_core::Did;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(did) = s.parse::<Did>() {
            assert_eq!(did.to_string(), s);
        }
    }
});
