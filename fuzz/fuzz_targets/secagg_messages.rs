//! Secure aggregation messages from a malicious peer never panic the client or the
//! aggregator: an honest round of 4 clients is driven to the stage where the fuzzed message
//! arrives, and the message is fed to the state machine that would receive it.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use rand::{SeedableRng, rngs::StdRng};
use sov_learn::{
    secagg::{
        Aggregator, Client, EncryptedShares, KeyAdvert, KeyBook, MaskedInput, RoundParams,
        ShareDelivery, SurvivorList, SurvivorSignature, UnmaskRequest, UnmaskResponse,
        seeded_identities,
    },
    wire,
};

struct Round {
    agg: Aggregator,
    clients: BTreeMap<u32, Client>,
    books: BTreeMap<u32, KeyBook>,
    deliveries: BTreeMap<u32, ShareDelivery>,
    lists: BTreeMap<u32, SurvivorList>,
    requests: BTreeMap<u32, UnmaskRequest>,
}

/// An honest round of 5 clients (threshold 4, so one may drop) driven up to (not into)
/// `stage`: 0 adverts, 1 shares, 2 masked inputs, 3 signatures on the survivors, 4
/// unmasking. Client 1 does not send the stage's message. Only our own constants are
/// unwrapped here.
fn honest(stage: u8) -> Round {
    let p = RoundParams::new(1, &[1, 2, 3, 4, 5], None, Some(4), 4, [7; 32]).unwrap();
    let (keys, dir) = seeded_identities(&p.participants, 1);
    let mut rng = StdRng::seed_from_u64(1);
    let mut r = Round {
        agg: Aggregator::new(p.clone(), dir.clone()).unwrap(),
        clients: BTreeMap::new(),
        books: BTreeMap::new(),
        deliveries: BTreeMap::new(),
        lists: BTreeMap::new(),
        requests: BTreeMap::new(),
    };
    for &c in &p.participants {
        let (client, advert) = Client::new(p.clone(), c, &keys[&c], dir.clone(), &mut rng).unwrap();
        if stage > 0 || c != 1 {
            r.agg.receive_advert(advert).unwrap();
        }
        r.clients.insert(c, client);
    }
    if stage == 0 {
        return r;
    }
    r.books = r.agg.key_books().unwrap().into_iter().collect();
    for (c, book) in &r.books {
        let s = r
            .clients
            .get_mut(c)
            .unwrap()
            .share_keys(book, &mut rng)
            .unwrap();
        if stage > 1 || *c != 1 {
            r.agg.receive_shares(s).unwrap();
        }
    }
    if stage == 1 {
        return r;
    }
    r.deliveries = r.agg.deliveries().unwrap().into_iter().collect();
    for (c, d) in &r.deliveries {
        let m = r
            .clients
            .get_mut(c)
            .unwrap()
            .mask_input(d, &[1, 2, 3, 4])
            .unwrap();
        if stage > 2 || *c != 1 {
            r.agg.receive_masked(m).unwrap();
        }
    }
    if stage == 2 {
        return r;
    }
    r.lists = r.agg.survivor_lists().unwrap().into_iter().collect();
    for (c, l) in &r.lists {
        let s = r.clients.get_mut(c).unwrap().confirm(l).unwrap();
        if stage > 3 || *c != 1 {
            r.agg.receive_signature(s).unwrap();
        }
    }
    if stage == 3 {
        return r;
    }
    r.requests = r.agg.unmask_requests().unwrap().into_iter().collect();
    for (c, q) in &r.requests {
        let a = r.clients.get_mut(c).unwrap().unmask(q).unwrap();
        if *c != 1 {
            r.agg.receive_unmask(a).unwrap();
        }
    }
    r
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, bytes)) = input.split_first() else {
        return;
    };
    match which % 10 {
        0 => {
            if let Ok(m) = wire::decode::<KeyAdvert>(bytes) {
                let mut r = honest(0);
                if r.agg.receive_advert(m).is_ok() {
                    let _ = r.agg.key_books();
                }
            }
        }
        1 => {
            if let Ok(m) = wire::decode::<KeyBook>(bytes) {
                let mut r = honest(0);
                let mut rng = StdRng::seed_from_u64(2);
                let _ = r.clients.get_mut(&2).map(|c| c.share_keys(&m, &mut rng));
            }
        }
        2 => {
            if let Ok(m) = wire::decode::<EncryptedShares>(bytes) {
                let mut r = honest(1);
                if r.agg.receive_shares(m).is_ok()
                    && let Ok(ds) = r.agg.deliveries()
                {
                    for (c, d) in ds {
                        let _ = r.clients.get_mut(&c).map(|x| x.mask_input(&d, &[0; 4]));
                    }
                }
            }
        }
        3 => {
            if let Ok(m) = wire::decode::<ShareDelivery>(bytes) {
                let mut r = honest(1);
                let _ = r.clients.get_mut(&2).map(|c| c.mask_input(&m, &[0; 4]));
            }
        }
        4 => {
            if let Ok(m) = wire::decode::<MaskedInput>(bytes) {
                let mut r = honest(2);
                if r.agg.receive_masked(m).is_ok() {
                    let _ = r.agg.survivor_lists();
                }
            }
        }
        5 => {
            if let Ok(m) = wire::decode::<SurvivorList>(bytes) {
                let mut r = honest(2);
                let _ = r.agg.survivor_lists();
                let _ = r.clients.get_mut(&2).map(|c| c.confirm(&m));
            }
        }
        6 => {
            if let Ok(m) = wire::decode::<SurvivorSignature>(bytes) {
                let mut r = honest(3);
                if r.agg.receive_signature(m).is_ok() {
                    let _ = r.agg.unmask_requests();
                }
            }
        }
        7 => {
            if let Ok(m) = wire::decode::<UnmaskRequest>(bytes) {
                let mut r = honest(3);
                let _ = r.agg.unmask_requests();
                let _ = r.clients.get_mut(&2).map(|c| c.unmask(&m));
            }
        }
        8 => {
            if let Ok(m) = wire::decode::<UnmaskResponse>(bytes) {
                let mut r = honest(4);
                if r.agg.receive_unmask(m).is_ok() {
                    let _ = r.agg.finish();
                }
            }
        }
        _ => {
            if let Ok(p) = wire::decode::<RoundParams>(bytes)
                && p.validate().is_ok()
                && p.participants.len() <= 64
                && p.dim <= 1024
            {
                let mut rng = StdRng::seed_from_u64(3);
                let (keys, dir) = seeded_identities(&p.participants, 3);
                let _ = Aggregator::new(p.clone(), dir.clone());
                if let Some(&c) = p.participants.first() {
                    let _ = Client::new(p, c, &keys[&c], dir, &mut rng);
                }
            }
        }
    }
});
