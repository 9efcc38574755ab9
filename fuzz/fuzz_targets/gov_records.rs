//! Governance records and certificates from anyone never panic: the bytes are offered as a
//! group genesis, as a proposal and a vote to a real group's book, as a certificate, and as
//! a member's revocation of a group token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sov_core::Signed;
use sov_gov::{Book, Group, Member, verify};
use sov_identity::Keypair;

fuzz_target!(|data: &[u8]| {
    let _ = Book::new(data);
    let _ = verify(data);
    let k = Keypair::from_seed(&[7; 32]);
    let g = Group {
        name: "fuzz".into(),
        created: 0,
        members: vec![Member {
            did: k.did(),
            role: "member".into(),
            weight: 1,
        }],
        rule: "majority".into(),
        voting_secs: 60,
    };
    let Ok(bytes) = Signed::sign(g, &k).and_then(|s| s.encode()) else {
        return;
    };
    let Ok(mut book) = Book::new(&bytes) else {
        return;
    };
    let _ = book.add_proposal(data, u64::MAX);
    let _ = book.add_vote(data, u64::MAX);
    let _ = Signed::<sov_node::auth::Revocation>::decode(data);
});
