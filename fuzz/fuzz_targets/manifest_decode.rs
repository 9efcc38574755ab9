//! Manifest and grant decoding (canonical DAG-CBOR + strict signature check) never panics,
//! and whatever decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_core::Signed;
use sov_store::manifest::{Grant, Manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Signed::<Manifest>::decode(data) {
        assert_eq!(m.encode().expect("re-encodes"), data);
    }
    if let Ok(g) = Signed::<Grant>::decode(data) {
        assert_eq!(g.encode().expect("re-encodes"), data);
    }
});
