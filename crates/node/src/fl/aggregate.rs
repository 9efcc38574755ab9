//! The aggregator's side of one round over the network. The node whose turn it is (the first
//! of the federation's order among the members it sees live) asks every live member, itself
//! included, on `/sov/bulk/3`: in the clear, each trains and answers its update; under
//! secure aggregation, the five stages of [`SecureRound`] run one request per member per
//! stage, each stage closing when every member answered or the round's time is up. Members
//! that fail or answer wrongly are left out (secure aggregation recovers from them). The
//! result is signed as a `sov/fl-round/1` record, taken here, and sent to every live member.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_bytes::ByteBuf;
use sov_core::{Did, Signed};
use sov_learn::{
    dp::NoiseRng,
    ledger::{Contribution, RoundRecord, params_digest, write_decimal},
    round::{
        Round,
        server::{Broadcast, Deadlines, SecureRound},
    },
    secagg::{Outcome, RoundParams},
    strategy::Aggregator,
    wire,
};
use sov_net::PeerId;
use tracing::{debug, info};

use super::{
    member::{directory, encoding, places},
    state::{Fed, lock},
};
use crate::{
    Node,
    protocol::{FlRequest, FlResponse, SecureOpen},
};

type Res<T> = std::result::Result<T, String>;

/// The weight bound of a secure round's encoding: members weigh their update by at most
/// this many examples.
const MAX_WEIGHT: u64 = 1 << 16;

/// What the members' answers added up to.
struct Summed {
    mean: Vec<f32>,
    transcript: Vec<Contribution>,
    examples: Option<u64>,
    rows: u64,
    correct: u64,
    multiplier: Option<f64>,
}

impl Node {
    /// Run round `round` of `fed` among `live` as its aggregator; the record taken.
    pub(crate) async fn drive_round(
        &self,
        fed: Arc<Fed>,
        round: u32,
        live: Vec<Did>,
    ) -> Res<RoundRecord> {
        let (timeout, min, secure, parent) = {
            let l = lock(&fed.ledger);
            if l.round() + 1 != round {
                return Err(format!("round {round} is not the next"));
            }
            let p = &l.genesis().policy;
            (
                Duration::from_millis(p.round_timeout_ms),
                p.min_clients as usize,
                p.secagg.is_some(),
                l.head(),
            )
        };
        if live.len() < min {
            return Err(format!(
                "{} members live; the round needs {min}",
                live.len()
            ));
        }
        let params = fed
            .params()
            .ok_or("this node does not have the current model")?;
        let deadline = Instant::now() + timeout;
        info!(federation = %fed.id, round, live = live.len(), "aggregating");
        let summed = if secure {
            self.secure_round(&fed, round, &live, &params, deadline)
                .await?
        } else {
            self.clear_round(&fed, round, &live, &params, deadline)
                .await?
        };
        if summed.transcript.len() < min {
            return Err(format!(
                "{} updates arrived; the round needs {min}",
                summed.transcript.len()
            ));
        }
        let strategy = lock(&fed.ledger)
            .genesis()
            .strategy()
            .map_err(|e| e.to_string())?;
        let mut next = params.to_vec();
        Aggregator::new(strategy).apply_delta(&mut next, &summed.mean);
        let next_bytes = wire::f32s_to_bytes(&next);
        let epsilon = match summed.multiplier {
            Some(z) => lock(&fed.ledger)
                .epsilon_after(z)
                .map_err(|e| e.to_string())?,
            None => None,
        };
        let validation = (summed.rows > 0).then(|| {
            (
                write_decimal(summed.correct as f64 / summed.rows as f64),
                summed.rows,
            )
        });
        if let (Some(e), Some(budget)) = (
            epsilon,
            lock(&fed.ledger)
                .genesis()
                .epsilon_budget()
                .map_err(|e| e.to_string())?,
        ) && e > budget
        {
            return Err(format!(
                "with {} members' noise the round would spend ε to {e}, past the budget of \
                 {budget}: not published",
                summed.transcript.len()
            ));
        }
        let manifest = self
            .publish_model(
                &fed,
                round,
                &next,
                &summed.transcript,
                epsilon,
                validation.as_ref(),
            )
            .await?;
        // The group's passed policy changes go into force from the next round.
        let (policy, changes) = self.gov_policy_for(&fed);
        let record = RoundRecord {
            federation: fed.id,
            round,
            live: live.clone(),
            parent: ByteBuf::from(parent.to_vec()),
            model: ByteBuf::from(params_digest(&next_bytes).to_vec()),
            transcript: summed.transcript,
            examples: summed.examples,
            validation,
            secure,
            multiplier: summed.multiplier.map(write_decimal),
            epsilon: epsilon.map(write_decimal),
            manifest: Some(manifest),
            policy,
            changes,
        };
        let signed = self
            .blocking(move |s| {
                Signed::sign(record, s.identity())
                    .and_then(|s| s.encode())
                    .map_err(|e| sov_store::Error::Invalid(e.to_string()))
            })
            .await
            .map_err(|e| e.to_string())?;
        let taken = self.take_round(&fed, &signed, &next_bytes).await?;
        if let Ok(net) = self.net()
            && let Err(e) = net
                .publish(&crate::protocol::fl_topic(&fed.id), signed.clone())
                .await
        {
            debug!(federation = %fed.id, round, "round not announced on gossip: {e}");
        }
        // Every live member gets the result; one that misses it catches up later.
        let me = self.peer_id();
        let pushes = live
            .iter()
            .map(sov_net::peer_id_of)
            .filter(|p| *p != me)
            .map(|peer| {
                let req = FlRequest::Closed {
                    federation: fed.id,
                    record: ByteBuf::from(signed.clone()),
                    params: next_bytes.clone(),
                };
                async move {
                    if let Err(e) = self.ask_fl(peer, req).await {
                        debug!(%peer, "round result not taken: {e}");
                    }
                }
            });
        let _ = tokio::time::timeout(timeout, futures::future::join_all(pushes)).await;
        Ok(taken)
    }

    /// Send each `(place, peer, request)` and gather the answers until `deadline`.
    async fn gather(
        &self,
        asks: Vec<(u32, PeerId, FlRequest)>,
        deadline: Instant,
    ) -> Vec<(u32, FlResponse)> {
        let left = deadline.saturating_duration_since(Instant::now());
        let calls = asks.into_iter().map(|(id, peer, req)| async move {
            match tokio::time::timeout(left, self.ask_fl(peer, req)).await {
                Ok(Ok(answer)) => Some((id, answer)),
                Ok(Err(e)) => {
                    debug!(%peer, "member left out: {e}");
                    None
                }
                Err(_) => {
                    debug!(%peer, "member left out: no answer in time");
                    None
                }
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn clear_round(
        &self,
        fed: &Arc<Fed>,
        round: u32,
        live: &[Did],
        params: &[f32],
        deadline: Instant,
    ) -> Res<Summed> {
        let (ids, dp, strategy, by_id) = {
            let l = lock(&fed.ledger);
            let by_id: BTreeMap<u32, Did> = live
                .iter()
                .filter_map(|d| Some((l.index_of(d)?, *d)))
                .collect();
            (
                places(&l, live)?,
                l.genesis().dp().map_err(|e| e.to_string())?,
                l.genesis().strategy().map_err(|e| e.to_string())?,
                by_id,
            )
        };
        let (mut r, _) = Round::open(round, params, &ids);
        let params_bytes = wire::f32s_to_bytes(params);
        let asks = by_id
            .iter()
            .map(|(&id, did)| {
                let req = FlRequest::Open {
                    federation: fed.id,
                    round,
                    live: live.to_vec(),
                    params: params_bytes.clone(),
                    secure: None,
                };
                (id, sov_net::peer_id_of(did), req)
            })
            .collect();
        let mut s = Summed {
            mean: Vec::new(),
            transcript: Vec::new(),
            examples: Some(0),
            rows: 0,
            correct: 0,
            multiplier: None,
        };
        for (id, answer) in self.gather(asks, deadline).await {
            let FlResponse::Update { update, validation } = answer else {
                continue;
            };
            if let Err(e) = r.receive(id, &update) {
                debug!(member = id, "update refused: {e}");
                continue;
            }
            let digest = params_digest(&wire::encode(&update).map_err(|e| e.to_string())?);
            s.transcript.push(Contribution {
                member: by_id[&id],
                digest: ByteBuf::from(digest.to_vec()),
            });
            s.examples = s.examples.map(|e| e.saturating_add(update.examples));
            add_validation(&mut s, validation);
        }
        let expected = ids.len() as f64;
        s.mean = match dp {
            Some(dp) => {
                let mut noise = NoiseRng::from_os().map_err(|e| e.to_string())?;
                let dim = params.len();
                let scale = dp.grid_scale();
                let g = dp.sampler(dim, scale, 1).map_err(|e| e.to_string())?;
                s.multiplier = Some(dp.multiplier(g.as_ref(), 1, dim, scale));
                r.close_private(&dp, expected, &mut noise)
                    .map_err(|e| e.to_string())?
            }
            None if s.transcript.is_empty() => return Err("no update arrived".into()),
            None => r
                .close(&mut Aggregator::new(strategy), None)
                .map_err(|e| e.to_string())?,
        };
        Ok(s)
    }

    async fn secure_round(
        &self,
        fed: &Arc<Fed>,
        round: u32,
        live: &[Did],
        params: &[f32],
        deadline: Instant,
    ) -> Res<Summed> {
        let (ids, enc, policy, dir, by_id, dp) =
            {
                let l = lock(&fed.ledger);
                let ids = places(&l, live)?;
                let by_id: BTreeMap<u32, Did> = live
                    .iter()
                    .filter_map(|d| Some((l.index_of(d)?, *d)))
                    .collect();
                (
                    ids.clone(),
                    encoding(&l, ids.len(), MAX_WEIGHT)?,
                    l.genesis().policy.secagg.clone().unwrap_or(
                        sov_learn::federation::SecAggPolicy {
                            neighbours: None,
                            threshold: None,
                        },
                    ),
                    directory(&l),
                    by_id,
                    l.genesis().dp().map_err(|e| e.to_string())?,
                )
            };
        let mut graph_seed = [0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut graph_seed);
        let rp = RoundParams::new(
            round as u64,
            &ids,
            policy.neighbours,
            policy.threshold,
            enc.len() as u32,
            graph_seed,
        )
        .map_err(|e| e.to_string())?;
        let open = SecureOpen {
            params: rp.clone(),
            max_weight: MAX_WEIGHT,
        };
        // Stages close when every member answered or the round's time is up; this node
        // closes them itself, so the state machine's own deadlines are not used.
        let far = u64::MAX / 4;
        let never = Deadlines {
            adverts: far,
            shares: far,
            masked: far,
            confirm: far,
            unmask: far,
        };
        let mut sr = SecureRound::open(rp, dir, 0, never).map_err(|e| e.to_string())?;
        let peer = |id: u32| by_id.get(&id).map(sov_net::peer_id_of);
        let params_bytes = wire::f32s_to_bytes(params);
        let asks = ids
            .iter()
            .filter_map(|&id| {
                let req = FlRequest::Open {
                    federation: fed.id,
                    round,
                    live: live.to_vec(),
                    params: params_bytes.clone(),
                    secure: Some(open.clone()),
                };
                Some((id, peer(id)?, req))
            })
            .collect();
        for (id, answer) in self.gather(asks, deadline).await {
            if let FlResponse::Advert { advert } = answer
                && advert.client == id
                && let Err(e) = sr.receive_advert(advert)
            {
                debug!(member = id, "advert refused: {e}");
            }
        }
        let mut s = Summed {
            mean: Vec::new(),
            transcript: Vec::new(),
            examples: None,
            rows: 0,
            correct: 0,
            multiplier: None,
        };
        let mut sent: BTreeMap<u32, [u8; 32]> = BTreeMap::new();
        let mut validations = BTreeMap::new();
        let outcome: Outcome = loop {
            let fid = fed.id;
            let asks: Vec<(u32, PeerId, FlRequest)> = match sr.close_stage() {
                Broadcast::KeyBooks(b) => b
                    .into_iter()
                    .filter_map(|(id, book)| {
                        let req = FlRequest::KeyBook {
                            federation: fid,
                            round,
                            book,
                        };
                        Some((id, peer(id)?, req))
                    })
                    .collect(),
                Broadcast::Deliveries(d) => d
                    .into_iter()
                    .filter_map(|(id, delivery)| {
                        let req = FlRequest::Deliver {
                            federation: fid,
                            round,
                            delivery,
                        };
                        Some((id, peer(id)?, req))
                    })
                    .collect(),
                Broadcast::SurvivorLists(l) => l
                    .into_iter()
                    .filter_map(|(id, list)| {
                        let req = FlRequest::Confirm {
                            federation: fid,
                            round,
                            list,
                        };
                        Some((id, peer(id)?, req))
                    })
                    .collect(),
                Broadcast::UnmaskRequests(r) => r
                    .into_iter()
                    .filter_map(|(id, request)| {
                        let req = FlRequest::Unmask {
                            federation: fid,
                            round,
                            request,
                        };
                        Some((id, peer(id)?, req))
                    })
                    .collect(),
                Broadcast::Finished(Ok(o)) => break o,
                Broadcast::Finished(Err(e)) => {
                    return Err(format!("the secure round aborted: {e}"));
                }
            };
            for (id, answer) in self.gather(asks, deadline).await {
                let taken = match answer {
                    FlResponse::Shares { shares } if shares.client == id => {
                        sr.receive_shares(shares)
                    }
                    FlResponse::Masked { masked, validation } if masked.client == id => {
                        let digest =
                            params_digest(&wire::encode(&masked).map_err(|e| e.to_string())?);
                        let r = sr.receive_masked(masked);
                        if r.is_ok() {
                            sent.insert(id, digest);
                            validations.insert(id, validation);
                        }
                        r
                    }
                    FlResponse::Signature { signature } if signature.client == id => {
                        sr.receive_signature(signature)
                    }
                    FlResponse::Unmasked { response } if response.client == id => {
                        sr.receive_unmask(response)
                    }
                    other => {
                        debug!(member = id, "unexpected answer {other:?}");
                        continue;
                    }
                };
                if let Err(e) = taken {
                    debug!(member = id, "secure aggregation refused a message: {e}");
                }
            }
        };
        for id in &outcome.survivors {
            let (Some(did), Some(digest)) = (by_id.get(id), sent.get(id)) else {
                continue;
            };
            s.transcript.push(Contribution {
                member: *did,
                digest: ByteBuf::from(digest.to_vec()),
            });
            if let Some(v) = validations.get(id) {
                add_validation(&mut s, *v);
            }
        }
        s.mean = enc
            .mean(&outcome.sum, ids.len() as f64)
            .map_err(|e| e.to_string())?;
        if dp.is_some() {
            s.multiplier = Some(enc.multiplier(outcome.survivors.len()));
        }
        Ok(s)
    }
}

/// Add a member's validation figure (a figure past its rows is not counted).
fn add_validation(s: &mut Summed, v: crate::protocol::Validation) {
    if v.correct <= v.rows {
        s.rows = s.rows.saturating_add(v.rows);
        s.correct = s.correct.saturating_add(v.correct);
    }
}
