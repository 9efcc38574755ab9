//! CAR parsing never panics or allocates beyond its limits, and every block it yields
//! matches its CID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_store::car::CarReader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = CarReader::new(data) else {
        return;
    };
    while let Ok(Some((cid, block))) = reader.next_block() {
        assert!(cid.matches(&block));
    }
});
