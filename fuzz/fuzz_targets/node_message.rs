//! The `/sov/node/5` message decoders, the federation messages of `/sov/bulk/3`, the pin
//! mandate a pin carries, and the model-offer decoder (gossip `sov/models/1`) never panic on
//! a peer's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_node::protocol::{FlRequest, FlResponse, ModelAnnouncement, PinMandate, Request, Response};

fuzz_target!(|data: &[u8]| {
    let _ = Request::decode(data);
    let _ = Response::decode(data);
    let _ = FlRequest::decode(data);
    let _ = FlResponse::decode(data);
    let _ = ModelAnnouncement::decode(data);
    let _ = sov_core::Signed::<PinMandate>::decode(data);
});
