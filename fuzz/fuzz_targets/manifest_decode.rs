//! Manifest and grant decoding (canonical DAG-CBOR + strict signature check) never panics,
//! and whatever decodes re-encodes to the same bytes. Grants of both versions, and the
//! decoder that tells them apart.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_core::Signed;
use sov_store::manifest::{Grant, LegacyGrant, Manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Signed::<Manifest>::decode(data) {
        assert_eq!(m.encode().expect("re-encodes"), data);
    }
    if let Ok(g) = Signed::<Grant>::decode(data) {
        assert_eq!(g.encode().expect("re-encodes"), data);
    }
    if let Ok(g) = Signed::<LegacyGrant>::decode(data) {
        assert_eq!(g.encode().expect("re-encodes"), data);
    }
    if let Ok((signer, grant)) = sov_store::decode_grant(data) {
        let _ = (signer, grant.object(), grant.access(), grant.named_reader());
    }
});
