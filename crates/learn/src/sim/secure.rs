//! One round of secure aggregation in process: the clients' [`secagg::Client`] state
//! machines and the aggregator's [`SecureRound`] exchange every message as they would over
//! the network (serialised, to count the bytes), and each stage closes at its deadline on a
//! simulated clock, whoever has not answered.

use std::collections::BTreeMap;

use rand::{SeedableRng, rngs::StdRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::{
    Error, Result,
    round::server::{Broadcast, Deadlines, SecureRound},
    secagg::{self, Client, RoundParams},
    wire,
};

/// Clients masking their inputs at once in [`run_secagg`] (bounds the masked vectors held).
const MASK_BATCH: usize = 64;

/// What driving one secure round in process gave.
pub struct SecAggRun {
    /// The unmasked sum, or why the round aborted.
    pub outcome: Result<secagg::Outcome>,
    /// Clients whose input is in the sum.
    pub survivors: usize,
    /// Bytes clients sent (serialised messages).
    pub bytes_up: u64,
    /// Bytes the aggregator sent (the round's parameters and every protocol message).
    pub bytes_down: u64,
}

/// Close the round's current stage at its deadline: what the aggregator sends next, or
/// the round's end as an error (an abort) or the outcome.
fn close(round: &mut SecureRound) -> std::result::Result<Broadcast, Result<secagg::Outcome>> {
    let now = round.deadline().unwrap_or(0);
    match round.tick(now) {
        Some(Broadcast::Finished(r)) => Err(r),
        Some(b) => Ok(b),
        None => Err(Err(Error::SecAgg(
            "the stage did not close at its deadline".into(),
        ))),
    }
}

fn unexpected<T>(b: &Broadcast) -> Result<T> {
    Err(Error::SecAgg(format!("unexpected stage output {b:?}")))
}

/// Run one round of secure aggregation in process: every participant of `params` with an
/// input in `inputs` takes part; `drops[c] = s` makes client `c` stop before stage `s`
/// (0 advert, 1 shares, 2 masked input, 3 its signature on the survivors and its unmasking
/// answer). Client work runs in parallel. Keys, the clients' long-term signing keys
/// included, come from `seed`. An abort is an `Err` in `outcome`; other errors are bugs.
pub fn run_secagg(
    params: &RoundParams,
    mut inputs: BTreeMap<u32, Vec<u32>>,
    drops: &BTreeMap<u32, usize>,
    seed: u64,
) -> Result<SecAggRun> {
    let alive = |c: u32, stage: usize| drops.get(&c).is_none_or(|&s| s > stage);
    let (identities, directory) = secagg::seeded_identities(&params.participants, seed);
    let mut agg = SecureRound::open(params.clone(), directory.clone(), 0, Deadlines::default())?;
    let (mut up, mut down) = (0u64, 0u64);
    let params_len = wire::encode(params)?.len() as u64;
    down += params_len * params.participants.len() as u64;
    let mut clients: Vec<(Client, StdRng)> = params
        .participants
        .par_iter()
        .filter(|&&c| alive(c, 0))
        .map(|&c| {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (c as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let (client, advert) = Client::new(
                params.clone(),
                c,
                &identities[&c],
                directory.clone(),
                &mut rng,
            )?;
            Ok((client, rng, advert))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .map(|(client, rng, advert)| {
            up += size(&advert);
            agg.receive_advert(advert).map(|()| (client, rng))
        })
        .collect::<Result<_>>()?;
    let outcome = (|| -> Result<secagg::Outcome> {
        let books: BTreeMap<u32, secagg::KeyBook> = match close(&mut agg) {
            Ok(Broadcast::KeyBooks(b)) => b.into_iter().collect(),
            Ok(other) => return unexpected(&other),
            Err(end) => return end,
        };
        clients.retain(|(c, _)| books.contains_key(&c.id()));
        down += books.values().map(size).sum::<u64>();
        let shares: Vec<_> = clients
            .par_iter_mut()
            .map(|(c, rng)| c.share_keys(&books[&c.id()], rng))
            .collect::<Result<_>>()?;
        for s in shares {
            if alive(s.client, 1) {
                up += size(&s);
                agg.receive_shares(s)?;
            }
        }
        let deliveries: BTreeMap<u32, secagg::ShareDelivery> = match close(&mut agg) {
            Ok(Broadcast::Deliveries(d)) => d.into_iter().collect(),
            Ok(other) => return unexpected(&other),
            Err(end) => return end,
        };
        clients.retain(|(c, _)| deliveries.contains_key(&c.id()));
        down += deliveries.values().map(size).sum::<u64>();
        // Clients that stop before sending their masked input never compute one. The rest
        // mask in parallel batches whose results go straight into the aggregator's running
        // sum, so at most a batch of masked vectors exists at once.
        clients.retain(|(c, _)| alive(c.id(), 2));
        for batch in clients.chunks_mut(MASK_BATCH) {
            let mut mine = Vec::with_capacity(batch.len());
            for (c, _) in batch.iter() {
                let id = c.id();
                mine.push(
                    inputs
                        .remove(&id)
                        .ok_or_else(|| Error::SecAgg(format!("client {id} has no input")))?,
                );
            }
            let masked: Vec<_> = batch
                .par_iter_mut()
                .zip(mine)
                .map(|((c, _), x)| c.mask_input(&deliveries[&c.id()], &x))
                .collect::<Result<_>>()?;
            for m in masked {
                up += size(&m);
                agg.receive_masked(m)?;
            }
        }
        let lists: BTreeMap<u32, secagg::SurvivorList> = match close(&mut agg) {
            Ok(Broadcast::SurvivorLists(l)) => l.into_iter().collect(),
            Ok(other) => return unexpected(&other),
            Err(end) => return end,
        };
        clients.retain(|(c, _)| lists.contains_key(&c.id()) && alive(c.id(), 3));
        down += lists.values().map(size).sum::<u64>();
        let signatures: Vec<_> = clients
            .par_iter_mut()
            .map(|(c, _)| c.confirm(&lists[&c.id()]))
            .collect::<Result<_>>()?;
        for s in signatures {
            up += size(&s);
            agg.receive_signature(s)?;
        }
        let requests: BTreeMap<u32, secagg::UnmaskRequest> = match close(&mut agg) {
            Ok(Broadcast::UnmaskRequests(r)) => r.into_iter().collect(),
            Ok(other) => return unexpected(&other),
            Err(end) => return end,
        };
        clients.retain(|(c, _)| requests.contains_key(&c.id()));
        down += requests.values().map(size).sum::<u64>();
        let answers: Vec<_> = clients
            .par_iter_mut()
            .map(|(c, _)| c.unmask(&requests[&c.id()]))
            .collect::<Result<_>>()?;
        for a in answers {
            up += size(&a);
            agg.receive_unmask(a)?;
        }
        match close(&mut agg) {
            Ok(other) => unexpected(&other),
            Err(end) => end,
        }
    })();
    let survivors = outcome.as_ref().map(|o| o.survivors.len()).unwrap_or(0);
    Ok(SecAggRun {
        outcome,
        survivors,
        bytes_up: up,
        bytes_down: down,
    })
}

/// Serialised length of a message, for byte counts.
fn size<T: Serialize>(m: &T) -> u64 {
    wire::encode(m).map_or(0, |b| b.len() as u64)
}
