//! A member's side of the federation protocol: what it answers on `/sov/bulk/3`. It
//! answers only members; it trains only for the round after the last one its ledger holds,
//! from the model whose digest its ledger holds, and only when the aggregator is the one
//! the federation's order names among the live members; each later stage of a secure round
//! only from the aggregator that opened it. A round's result is taken only when its record
//! checks against the ledger and, if this member contributed, names the digest of what it
//! sent.

use std::sync::Arc;

use sov_core::{Did, Signed};
use sov_learn::{
    dp::NoiseRng,
    federation::aggregators,
    ledger::{Admission, Ledger, RoundRecord, open_join, params_digest},
    round::{self, client::SecureEncoding, server::DEFAULT_SECAGG_RANGE},
    secagg::{self, Directory},
    train::{self, TrainConfig},
    wire::{self, GlobalModel},
};
use sov_net::PeerId;
use tracing::{debug, info, warn};

use super::state::{self, ClientRound, Fed, Trained, lock};
use crate::{
    Node,
    protocol::{FlRequest, FlResponse, MAX_FL_RECORDS, SecureOpen, Validation},
};

type Answer = std::result::Result<FlResponse, String>;

/// The largest example count an aggregator may ask members to weigh with.
pub(crate) const MAX_WEIGHT: u64 = 1 << 24;

/// The local training a federation's policy asks for.
pub(crate) fn train_config(l: &Ledger) -> std::result::Result<TrainConfig, String> {
    let p = &l.genesis().policy;
    let lr: f32 = p
        .learning_rate
        .parse()
        .map_err(|_| "the learning rate is not a number".to_string())?;
    let strategy = l.genesis().strategy().map_err(|e| e.to_string())?;
    Ok(TrainConfig {
        epochs: p.local_epochs as usize,
        batch: p.batch as usize,
        lr,
        prox_mu: strategy.prox_mu(),
        ..TrainConfig::default()
    })
}

/// The members' signing keys by their place among the members.
pub(crate) fn directory(l: &Ledger) -> Arc<Directory> {
    Arc::new(Directory::new(
        l.members()
            .iter()
            .enumerate()
            .map(|(i, d)| (i as u32, d.verifying_key()))
            .collect(),
    ))
}

/// The encoding of a secure round of `clients` members.
pub(crate) fn encoding(
    l: &Ledger,
    clients: usize,
    max_weight: u64,
) -> std::result::Result<SecureEncoding, String> {
    let dp = l.genesis().dp().map_err(|e| e.to_string())?;
    let dim = l
        .genesis()
        .model_spec()
        .map_err(|e| e.to_string())?
        .num_params();
    SecureEncoding::new(
        DEFAULT_SECAGG_RANGE,
        dp.as_ref(),
        dim,
        clients,
        max_weight as f64,
        clients as f64,
    )
    .map_err(|e| e.to_string())
}

/// The places among the members of `live` (ascending), or why `live` is not a set of
/// members.
pub(crate) fn places(l: &Ledger, live: &[Did]) -> std::result::Result<Vec<u32>, String> {
    let mut ids = Vec::with_capacity(live.len());
    for d in live {
        ids.push(
            l.index_of(d)
                .ok_or_else(|| format!("{d} is not a member"))?,
        );
    }
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err("a member is named live twice".into());
    }
    Ok(ids)
}

impl Node {
    /// Answer a federation message from `peer`.
    pub(crate) async fn answer_fl(&self, peer: PeerId, req: FlRequest) -> FlResponse {
        if let FlRequest::Gov(req) = req {
            return match self.answer_gov(peer, req).await {
                Ok(r) => FlResponse::Gov(r),
                Err(e) => {
                    debug!(%peer, "governance request refused: {e}");
                    FlResponse::refused(e)
                }
            };
        }
        match self.answer_fl_checked(peer, req).await {
            Ok(r) => r,
            Err(e) => {
                debug!(%peer, "federation request refused: {e}");
                FlResponse::refused(e)
            }
        }
    }

    pub(crate) fn fed(&self, id: &sov_core::ContentId) -> std::result::Result<Arc<Fed>, String> {
        self.inner
            .feds
            .get(id)
            .ok_or_else(|| format!("this node is not in federation {id}"))
    }

    async fn answer_fl_checked(&self, peer: PeerId, req: FlRequest) -> Answer {
        let asker = sov_net::did_of(&peer).ok_or("a peer without a did:key")?;
        let federation = match &req {
            FlRequest::Records { federation, .. }
            | FlRequest::Model { federation, .. }
            | FlRequest::Join { federation, .. }
            | FlRequest::Open { federation, .. }
            | FlRequest::KeyBook { federation, .. }
            | FlRequest::Deliver { federation, .. }
            | FlRequest::Confirm { federation, .. }
            | FlRequest::Unmask { federation, .. }
            | FlRequest::Closed { federation, .. } => *federation,
            FlRequest::Gov(_) => return Err("governance is answered elsewhere".into()),
        };
        let fed = self.fed(&federation)?;
        let member = lock(&fed.ledger).is_active(&asker);
        match req {
            FlRequest::Records { after, .. } => {
                let l = lock(&fed.ledger);
                // A stranger may read what the federation is, to decide whether to join.
                let (admissions, rounds) = if member {
                    (
                        l.admissions()
                            .take(MAX_FL_RECORDS)
                            .map(|a| serde_bytes::ByteBuf::from(a.to_vec()))
                            .collect(),
                        (after.saturating_add(1)..=l.round())
                            .take(MAX_FL_RECORDS)
                            .filter_map(|r| l.round_bytes(r))
                            .map(|b| serde_bytes::ByteBuf::from(b.to_vec()))
                            .collect(),
                    )
                } else {
                    (Vec::new(), Vec::new())
                };
                Ok(FlResponse::Records {
                    genesis: serde_bytes::ByteBuf::from(l.genesis_bytes().to_vec()),
                    admissions,
                    rounds,
                })
            }
            _ if !member && !matches!(req, FlRequest::Join { .. }) => {
                Err(format!("{asker} is not a member of {federation}"))
            }
            FlRequest::Model { round, .. } => {
                if round != lock(&fed.ledger).round() {
                    return Err(format!(
                        "only the model of the last round is kept, not {round}'s"
                    ));
                }
                let params = fed
                    .params()
                    .ok_or("this node does not have the model yet")?;
                Ok(FlResponse::Model {
                    params: wire::f32s_to_bytes(&params),
                })
            }
            FlRequest::Join { request, .. } => self.admit(&fed, asker, &request).await,
            FlRequest::Open {
                round,
                live,
                params,
                secure,
                ..
            } => {
                self.open_round(&fed, peer, asker, round, live, params.into_vec(), secure)
                    .await
            }
            FlRequest::KeyBook { round, book, .. } => {
                let mut clients = fed.clients.lock().await;
                let c = clients
                    .get_mut(&(round, peer))
                    .ok_or("no secure round of this aggregator is open here")?;
                let shares = c
                    .client
                    .share_keys(&book, &mut rand::rng())
                    .map_err(|e| e.to_string())?;
                Ok(FlResponse::Shares { shares })
            }
            FlRequest::Deliver {
                round, delivery, ..
            } => self.deliver(&fed, peer, round, delivery).await,
            FlRequest::Confirm { round, list, .. } => {
                let mut clients = fed.clients.lock().await;
                let c = clients
                    .get_mut(&(round, peer))
                    .ok_or("no secure round of this aggregator is open here")?;
                let signature = c.client.confirm(&list).map_err(|e| e.to_string())?;
                Ok(FlResponse::Signature { signature })
            }
            FlRequest::Unmask { round, request, .. } => {
                let mut clients = fed.clients.lock().await;
                let c = clients
                    .get_mut(&(round, peer))
                    .ok_or("no secure round of this aggregator is open here")?;
                let response = c.client.unmask(&request).map_err(|e| e.to_string())?;
                clients.remove(&(round, peer));
                Ok(FlResponse::Unmasked { response })
            }
            FlRequest::Closed { record, params, .. } => {
                self.take_round(&fed, &record, &params).await?;
                Ok(FlResponse::Taken)
            }
            FlRequest::Gov(_) => Err("governance is answered elsewhere".into()),
        }
    }

    /// The creator admits a member who asks (federations are open to whoever asks until
    /// governance decides admissions).
    async fn admit(&self, fed: &Arc<Fed>, asker: Did, request: &[u8]) -> Answer {
        let (joiner, _) = open_join(request, &fed.id).map_err(|e| e.to_string())?;
        if joiner != asker {
            return Err("a join request signed by someone else".into());
        }
        let (creator, finished) = {
            let l = lock(&fed.ledger);
            (
                l.genesis().creator(),
                l.finished().map_err(|e| e.to_string())?,
            )
        };
        if creator != Some(self.did()) {
            return Err("only the federation's creator admits members".into());
        }
        let governance = lock(&fed.ledger).genesis().governance;
        if let Some(group) = governance {
            // A governed federation admits the members of its group, as its votes made them.
            self.gov_check_member(&group, &asker)
                .map_err(|e| e.to_string())?;
        }
        if finished {
            return Err("the federation has finished training".into());
        }
        let body = Admission {
            federation: fed.id,
            member: asker,
            role: sov_learn::federation::Role::Member,
            admitted: crate::node::unix_now(),
        };
        let existing = lock(&fed.ledger)
            .admissions()
            .find(|a| Signed::<Admission>::decode(a).is_ok_and(|s| s.body().member == asker))
            .map(<[u8]>::to_vec);
        let admission = match existing {
            Some(a) => a,
            None => {
                let signed = self
                    .blocking(move |s| {
                        Signed::sign(body, s.identity())
                            .and_then(|s| s.encode())
                            .map_err(|e| sov_store::Error::Invalid(e.to_string()))
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                lock(&fed.ledger)
                    .admit(&signed)
                    .map_err(|e| e.to_string())?;
                let snapshot = lock(&fed.ledger).clone();
                self.blocking(move |s| state::save_ledger(s, &snapshot))
                    .await
                    .map_err(|e| e.to_string())?;
                info!(federation = %fed.id, member = %asker, "member admitted");
                signed
            }
        };
        Ok(FlResponse::Admitted {
            admission: serde_bytes::ByteBuf::from(admission),
        })
    }

    /// The round `round` opens: check who opens it and from what, start training.
    #[allow(clippy::too_many_arguments)]
    async fn open_round(
        &self,
        fed: &Arc<Fed>,
        peer: PeerId,
        asker: Did,
        round: u32,
        live: Vec<Did>,
        params: Vec<u8>,
        secure: Option<SecureOpen>,
    ) -> Answer {
        if lock(&fed.ledger).round().saturating_add(1) < round {
            // Behind: catch up from the aggregator first.
            let _ = self.sync_from(fed, peer).await;
        }
        let (spec, cfg, index, dir) = {
            let l = lock(&fed.ledger);
            if l.round() + 1 != round {
                return Err(format!(
                    "round {round} is not the next here (round {} is)",
                    l.round() + 1
                ));
            }
            if l.finished().map_err(|e| e.to_string())? {
                return Err("the federation has finished training".into());
            }
            let ids = places(&l, &live)?;
            if !live.contains(&self.did()) {
                return Err("this member is not named live".into());
            }
            if aggregators(&fed.id, round, &live).first() != Some(&asker) {
                return Err(format!(
                    "{asker} is not the aggregator of round {round} among the members it names"
                ));
            }
            if params_digest(&params) != l.head() {
                return Err(format!(
                    "that is not the model of round {} held here",
                    l.round()
                ));
            }
            if let Some(open) = &secure {
                let p = &open.params;
                let enc = encoding(&l, ids.len(), open.max_weight)?;
                let policy = l.genesis().policy.secagg.clone();
                if policy.is_none() {
                    return Err("the federation does not use secure aggregation".into());
                }
                if p.round != round as u64 || p.participants != ids || p.dim as usize != enc.len() {
                    return Err("the secure round's parameters do not match the round".into());
                }
                if open.max_weight == 0 || open.max_weight > MAX_WEIGHT {
                    return Err(format!("a maximum weight of 1 to {MAX_WEIGHT}"));
                }
            } else if l.genesis().policy.secagg.is_some() {
                return Err("the federation requires secure aggregation".into());
            }
            (
                l.genesis().model_spec().map_err(|e| e.to_string())?,
                train_config(&l)?,
                l.index_of(&self.did()).ok_or("not a member")?,
                directory(&l),
            )
        };
        let global = wire::bytes_to_f32s(&params).map_err(|e| e.to_string())?;
        if global.len() != spec.num_params() {
            return Err(format!(
                "a model of {} values; the task's has {}",
                global.len(),
                spec.num_params()
            ));
        }
        // Train on the blocking pool; the answer (or a later stage) waits for it.
        let (tx, rx) = tokio::sync::oneshot::channel::<Trained>();
        let data = fed.data.clone();
        let seed = rand::random::<u64>();
        let started = self.spawn_blocking(move || {
            let trained = (|| {
                let (_, accuracy) =
                    train::evaluate(&spec, &global, &data.validation).map_err(|e| e.to_string())?;
                let rows = data.validation.len() as u64;
                let validation = Validation {
                    rows,
                    correct: (f64::from(accuracy) * rows as f64).round() as u64,
                };
                let all: Vec<usize> = (0..data.train.len()).collect();
                let model = GlobalModel {
                    round,
                    params: wire::f32s_to_bytes(&global),
                };
                let (delta, examples) =
                    round::client_update(&spec, &model, &data.train, &all, &cfg, seed)
                        .map_err(|e| e.to_string())?;
                Ok((delta, examples, validation))
            })();
            let _ = tx.send(trained);
        });
        if !started {
            return Err("the node is shutting down".into());
        }
        match secure {
            None => {
                let (delta, examples, validation) = rx
                    .await
                    .map_err(|_| "training was cut short".to_string())??;
                let update = round::client::plain_update(round, &delta, examples);
                let sent = params_digest(&wire::encode(&update).map_err(|e| e.to_string())?);
                state::lock(&fed.sent).insert(round, sent);
                Ok(FlResponse::Update { update, validation })
            }
            Some(open) => {
                let signer = self
                    .store()
                    .map_err(|e| e.to_string())?
                    .identity()
                    .signing_key()
                    .clone();
                let (client, advert) =
                    secagg::Client::new(open.params.clone(), index, &signer, dir, &mut rand::rng())
                        .map_err(|e| e.to_string())?;
                let mut clients = fed.clients.lock().await;
                // Rounds this member has moved past are over.
                let last = lock(&fed.ledger).round();
                clients.retain(|(r, _), _| *r > last);
                clients.insert(
                    (round, peer),
                    ClientRound {
                        aggregator: peer,
                        open,
                        client,
                        trained: Some(rx),
                    },
                );
                Ok(FlResponse::Advert { advert })
            }
        }
    }

    /// Stage 3 of a secure round: wait for training, encode, mask.
    async fn deliver(
        &self,
        fed: &Arc<Fed>,
        peer: PeerId,
        round: u32,
        delivery: secagg::ShareDelivery,
    ) -> Answer {
        let (rx, open) = {
            let mut clients = fed.clients.lock().await;
            let c = clients
                .get_mut(&(round, peer))
                .ok_or("no secure round of this aggregator is open here")?;
            debug_assert_eq!(c.aggregator, peer);
            (
                c.trained
                    .take()
                    .ok_or("the masked input was already sent")?,
                c.open.clone(),
            )
        };
        let (delta, examples, validation) = rx
            .await
            .map_err(|_| "training was cut short".to_string())??;
        let enc = encoding(
            &lock(&fed.ledger),
            open.params.participants.len(),
            open.max_weight,
        )?;
        let weight = (examples as u64).min(open.max_weight) as usize;
        let input = tokio::task::spawn_blocking(move || -> std::result::Result<_, String> {
            let mut noise = NoiseRng::from_os().map_err(|e| e.to_string())?;
            Ok(enc.encode(delta, weight, None, &mut noise))
        })
        .await
        .map_err(|_| "encoding was cut short".to_string())??;
        let mut clients = fed.clients.lock().await;
        let c = clients
            .get_mut(&(round, peer))
            .ok_or("the secure round ended")?;
        let masked = c
            .client
            .mask_input(&delivery, &input)
            .map_err(|e| e.to_string())?;
        let sent = params_digest(&wire::encode(&masked).map_err(|e| e.to_string())?);
        state::lock(&fed.sent).insert(round, sent);
        Ok(FlResponse::Masked { masked, validation })
    }

    /// Check a round's record against the ledger and take it with its model.
    pub(crate) async fn take_round(
        &self,
        fed: &Arc<Fed>,
        record: &[u8],
        params: &[u8],
    ) -> std::result::Result<RoundRecord, String> {
        let (signer, r) = lock(&fed.ledger)
            .check_round(record)
            .map_err(|e| e.to_string())?;
        if params_digest(params) != r.model.as_slice() {
            return Err("the parameters are not the model the record names".into());
        }
        self.gov_check_policy(fed, &r)?;
        let values = wire::bytes_to_f32s(params).map_err(|e| e.to_string())?;
        let spec = lock(&fed.ledger)
            .genesis()
            .model_spec()
            .map_err(|e| e.to_string())?;
        if values.len() != spec.num_params() {
            return Err("a model of the wrong size".into());
        }
        let me = self.did();
        if let Some(mine) = r.transcript.iter().find(|c| c.member == me)
            && !state::lock(&fed.sent).holds(r.round, &mine.digest)
        {
            warn!(federation = %fed.id, round = r.round, "the round names another message than the one this member sent");
            return Err("the transcript does not hold what this member sent".into());
        }
        lock(&fed.ledger)
            .accept_round(record)
            .map_err(|e| e.to_string())?;
        *lock(&fed.params) = Some(Arc::new(values));
        state::lock(&fed.sent).closed(r.round);
        let (id, round, record, params) = (fed.id, r.round, record.to_vec(), params.to_vec());
        if let Err(e) = self
            .blocking(move |s| state::save_round(s, &id, round, &record, &params))
            .await
        {
            warn!(federation = %fed.id, "could not store round {round}: {e}");
        }
        info!(federation = %fed.id, round = r.round, contributors = r.transcript.len(), "round taken");
        let m = self.metrics();
        m.fl_rounds.inc();
        let (waiting_for, since) = *lock(&fed.pending);
        if waiting_for == r.round {
            m.fl_round_seconds.observe(since.elapsed().as_secs_f64());
        }
        self.pull_soon(r.clone(), signer);
        self.inner.feds.wake.notify_one();
        Ok(r)
    }

    /// Catch up on `fed`'s records from `peer`: admissions, rounds, and the last model.
    pub(crate) async fn sync_from(
        &self,
        fed: &Arc<Fed>,
        peer: PeerId,
    ) -> std::result::Result<(), String> {
        let after = lock(&fed.ledger).round();
        let answer = self
            .ask_fl(
                peer,
                FlRequest::Records {
                    federation: fed.id,
                    after,
                },
            )
            .await?;
        let FlResponse::Records {
            admissions, rounds, ..
        } = answer
        else {
            return Err(format!("{peer} answered records with something else"));
        };
        let mut admitted = false;
        for a in &admissions {
            if let Ok(Some(_)) = lock(&fed.ledger).admit(a) {
                admitted = true;
            }
        }
        if admitted {
            let snapshot = lock(&fed.ledger).clone();
            let _ = self
                .blocking(move |s| state::save_ledger(s, &snapshot))
                .await;
        }
        let Some(last) = rounds.last() else {
            return Ok(());
        };
        // Take every round but the last on its record alone (their models are gone), then
        // the last with its model.
        let mut scratch = lock(&fed.ledger).clone();
        for r in &rounds {
            scratch.accept_round(r).map_err(|e| e.to_string())?;
        }
        let round = scratch.round();
        let FlResponse::Model { params } = self
            .ask_fl(
                peer,
                FlRequest::Model {
                    federation: fed.id,
                    round,
                },
            )
            .await?
        else {
            return Err(format!("{peer} answered the model with something else"));
        };
        for r in &rounds[..rounds.len() - 1] {
            let _ = lock(&fed.ledger).accept_round(r);
            let (id, n, bytes) = (fed.id, lock(&fed.ledger).round(), r.to_vec());
            let _ = self
                .blocking(move |s| {
                    s.put_record(&state::topic(&id), &state::round_key(n), &bytes)
                        .map(|_| ())
                })
                .await;
        }
        self.take_round(fed, last, &params).await?;
        Ok(())
    }

    /// Send a federation message to `peer` (or answer it here, if `peer` is this node).
    pub(crate) async fn ask_fl(
        &self,
        peer: PeerId,
        req: FlRequest,
    ) -> std::result::Result<FlResponse, String> {
        let answer = if peer == self.peer_id() {
            Box::pin(self.answer_fl(peer, req)).await
        } else {
            let net = self.net().map_err(|e| e.to_string())?;
            let out = req.encode();
            let sent = out.len();
            let bytes = net
                .request_on(sov_net::Channel::Bulk, peer, out)
                .await
                .map_err(|e| e.to_string())?;
            self.inner.feds.count(sent, bytes.len());
            FlResponse::decode(&bytes)
                .map_err(|e| format!("{peer} sent a malformed answer: {e}"))?
        };
        match answer {
            FlResponse::Refused { reason } => Err(reason),
            other => Ok(other),
        }
    }
}
