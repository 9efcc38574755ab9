//! Federations across nodes: create one, join one, train it round after round with the
//! other members, and follow it.
//!
//! ```text
//!   fl_create ─▶ signed genesis (its CID is the id) ─▶ records fl/<id> in the store
//!   fl_join   ─▶ genesis from a peer ─▶ own data checked against the task
//!             ─▶ signed join request to the creator ─▶ its signed admission
//!   every tick, per federation: live = members connected (and this node)
//!     first of aggregators(id, round + 1, live) is this node ─▶ drive_round (aggregate.rs)
//!     the round not closed after k × the round timeout ─▶ the (k+1)-th takes over
//!   members answer (member.rs) ─▶ the signed round record and model go to every member
//! ```
//!
//! Each member holds its own data, loaded when it joins and when the node starts, and it
//! never leaves the node: only updates (or, under secure aggregation, masked updates) and a
//! validation figure do.

mod aggregate;
mod member;
mod provenance;
pub(crate) mod state;

use std::{
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use sov_core::{ContentId, Did, Signed};
use sov_learn::{
    federation::{Genesis, Member, Policy, Role, Task, aggregators},
    ledger::{JoinRequest, Ledger, RoundRecord, federation_id},
    member::{self as data, MemberData, Source},
    strategy::Strategy,
};
use tracing::{debug, info, warn};

pub use state::Membership;
use state::{Fed, lock};

use sov_net::Verdict;

use crate::{
    Error, Node, Result,
    protocol::{FL_TOPIC_PREFIX, FlRequest, FlResponse, fl_topic},
};

/// How often each federation is looked at (whose turn it is to aggregate, catching up).
const TICK: Duration = Duration::from_millis(250);
/// How often a member asks a peer for records it may have missed.
const SYNC_EVERY: Duration = Duration::from_secs(5);
/// Members not connected that one catch-up tries to reach.
const MAX_REACH: usize = 8;

/// One round as `sov fl status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundSummary {
    /// The round.
    pub round: u32,
    /// Who aggregated it.
    pub aggregator: String,
    /// Members whose updates are in it.
    pub contributors: Vec<String>,
    /// The contributors' validation accuracy of the model the round started from.
    pub accuracy: Option<f64>,
    /// ε spent after it.
    pub epsilon: Option<f64>,
    /// BLAKE3 of the model it produced (hex).
    pub model: String,
    /// The model's signed manifest (its id in `sov model ls`).
    pub manifest: Option<String>,
}

/// A federation as this node knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FederationStatus {
    /// The federation's id (its genesis CID).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The last round closed.
    pub round: u32,
    /// The rounds it runs at most.
    pub rounds: u32,
    /// The last round's validation accuracy (of the model it started from).
    pub accuracy: Option<f64>,
    /// ε spent so far (with DP).
    pub epsilon: Option<f64>,
    /// The federation's δ (with DP).
    pub delta: Option<f64>,
    /// The ε budget at which training stops.
    pub epsilon_budget: Option<f64>,
    /// The member who aggregates the next round, among those this node sees live.
    pub aggregator: Option<String>,
    /// The members.
    pub members: Vec<String>,
    /// The members this node sees live (itself included).
    pub live: Vec<String>,
    /// Members the governing group removed (no longer asked or answered).
    pub removed: Vec<String>,
    /// The group whose votes govern the federation, if any.
    pub governance: Option<String>,
    /// Secure aggregation on.
    pub secure: bool,
    /// Training is over.
    pub finished: bool,
    /// BLAKE3 of the current model (hex).
    pub model: String,
    /// This node holds the current model.
    pub has_model: bool,
    /// The current model's manifest (`sov model show` and `eval` take it), once published.
    pub model_id: Option<String>,
    /// Where this member's data comes from.
    pub data: String,
    /// Every round.
    pub history: Vec<RoundSummary>,
    /// Bytes of federation messages this node sent and received since it started (all its
    /// federations).
    pub traffic: Traffic,
}

/// Bytes a node's federation messages moved.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Traffic {
    /// Sent (requests and answers).
    pub sent: u64,
    /// Received.
    pub received: u64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn load_data(l: &Ledger, m: &Membership) -> Result<MemberData> {
    let source = Source::from_str(&m.data).map_err(|e| Error::Refused(e.to_string()))?;
    let opts = data::Options {
        label_column: m.label_column.clone(),
        standardize: m.standardize,
        data_dir: std::env::var_os("SOV_DATA_DIR").map(Into::into),
        ..data::Options::default()
    };
    data::load(&source, &l.genesis().task, &opts)
        .map_err(|e| Error::Refused(format!("this data does not fit the federation's task: {e}")))
}

/// Check what a networked federation cannot run: a server optimiser whose state would be
/// lost when the aggregator rotates.
fn check_runnable(g: &Genesis) -> Result<()> {
    let strategy = g.strategy().map_err(|e| Error::Refused(e.to_string()))?;
    if matches!(strategy, Strategy::FedAdam | Strategy::FedYogi) {
        return Err(Error::Refused(format!(
            "{strategy} keeps optimiser state on the aggregator, and a federation's aggregator \
             rotates every round: use fedavg, fedprox or a robust rule"
        )));
    }
    if g.policy.secagg.is_some() && strategy.needs_individual_updates() {
        return Err(Error::Refused(format!(
            "{strategy} needs each member's update, and secure aggregation hides them: use \
             fedavg or fedprox with secure aggregation (docs/ROBUSTNESS.md)"
        )));
    }
    if g.dp().map_err(|e| Error::Refused(e.to_string()))?.is_some()
        && strategy.needs_individual_updates()
    {
        return Err(Error::Refused(format!(
            "differential privacy noises an average; {strategy} is not one"
        )));
    }
    Ok(())
}

impl Node {
    /// Found a federation with this node as its creator and first member, training on
    /// `membership`'s data (checked against `task` first). Returns its id.
    pub async fn fl_create(
        &self,
        name: &str,
        task: Task,
        policy: Policy,
        membership: Membership,
        governance: Option<ContentId>,
    ) -> Result<ContentId> {
        if let Some(g) = &governance {
            self.gov_check_member(g, &self.did())?;
        }
        let genesis = Genesis {
            name: name.to_owned(),
            created: crate::node::unix_now(),
            task,
            policy,
            members: vec![Member {
                did: self.did(),
                role: Role::Creator,
            }],
            governance,
        };
        genesis
            .validate()
            .map_err(|e| Error::Refused(e.to_string()))?;
        check_runnable(&genesis)?;
        let bytes = self
            .blocking(move |s| {
                Signed::sign(genesis, s.identity())
                    .and_then(|s| s.encode())
                    .map_err(|e| sov_store::Error::Invalid(e.to_string()))
            })
            .await?;
        let ledger = Ledger::new(&bytes).map_err(|e| Error::Refused(e.to_string()))?;
        let id = *ledger.id();
        self.enter(ledger, membership).await?;
        info!(federation = %id, "federation created");
        Ok(id)
    }

    /// Join federation `id`: its genesis from a connected peer, this member's data checked
    /// against its task, then admission by its creator.
    pub async fn fl_join(&self, id: ContentId, membership: Membership) -> Result<FederationStatus> {
        if self.inner.feds.get(&id).is_some() {
            return self.fl_status(&id).await;
        }
        let net = self.net()?;
        let mut genesis = None;
        for p in net.peers().await? {
            let ask = FlRequest::Records {
                federation: id,
                after: u32::MAX,
            };
            if let Ok(FlResponse::Records { genesis: g, .. }) = self.ask_fl(p.peer_id, ask).await
                && federation_id(&g) == id
            {
                genesis = Some(g.into_vec());
                break;
            }
        }
        let genesis = genesis.ok_or_else(|| Error::Unavailable {
            id,
            detail: ": no connected peer is in this federation".into(),
        })?;
        let mut ledger = Ledger::new(&genesis).map_err(|e| Error::Refused(e.to_string()))?;
        check_runnable(ledger.genesis())?;
        // The data is checked before anyone is asked anything.
        let l2 = ledger.clone();
        let m2 = membership.clone();
        let loaded = tokio::task::spawn_blocking(move || load_data(&l2, &m2))
            .await
            .map_err(|_| Error::Stopped)??;
        drop(loaded);
        let creator = ledger
            .genesis()
            .creator()
            .ok_or_else(|| Error::Refused("the federation names no creator".into()))?;
        let request = self
            .blocking(move |s| {
                Signed::sign(
                    JoinRequest {
                        federation: id,
                        created: crate::node::unix_now(),
                    },
                    s.identity(),
                )
                .and_then(|s| s.encode())
                .map_err(|e| sov_store::Error::Invalid(e.to_string()))
            })
            .await?;
        let answer = self
            .ask_fl(
                sov_net::peer_id_of(&creator),
                FlRequest::Join {
                    federation: id,
                    request: serde_bytes::ByteBuf::from(request),
                },
            )
            .await
            .map_err(|e| Error::Refused(format!("the creator did not admit this node: {e}")))?;
        let FlResponse::Admitted { admission } = answer else {
            return Err(Error::Refused("the creator answered something else".into()));
        };
        if ledger
            .admit(&admission)
            .map_err(|e| Error::Refused(e.to_string()))?
            != Some(self.did())
            && !ledger.is_member(&self.did())
        {
            return Err(Error::Refused("the admission names someone else".into()));
        }
        self.enter(ledger, membership).await?;
        if let Some(fed) = self.inner.feds.get(&id)
            && let Err(e) = self.sync_from(&fed, sov_net::peer_id_of(&creator)).await
        {
            debug!(federation = %id, "first catch-up failed: {e}");
        }
        info!(federation = %id, "joined");
        self.fl_status(&id).await
    }

    /// Keep a federation's records and membership, load the data, and start taking part.
    async fn enter(&self, ledger: Ledger, membership: Membership) -> Result<()> {
        let id = *ledger.id();
        let (l2, m2) = (ledger.clone(), membership.clone());
        let data = tokio::task::spawn_blocking(move || load_data(&l2, &m2))
            .await
            .map_err(|_| Error::Stopped)??;
        let json = serde_json::to_vec(&membership).map_err(|e| Error::Refused(e.to_string()))?;
        let snapshot = ledger.clone();
        self.blocking(move |s| {
            state::save_ledger(s, &snapshot)?;
            s.put_record(state::MEMBER_TOPIC, &id.to_bytes(), &json)?;
            Ok(())
        })
        .await?;
        let (ledger, params) = self
            .blocking(move |s| state::load_ledger(s, &id))
            .await?
            .unwrap_or((ledger, None));
        self.inner
            .feds
            .insert(Arc::new(Fed::new(ledger, params, membership, data)));
        self.fl_subscribe(&id).await;
        self.gov_apply_removals();
        Ok(())
    }

    /// Take up again every federation this node is in (a running node does it at start;
    /// an offline node when a command asks about federations): records and data loaded.
    pub async fn fl_resume(&self) {
        let memberships = match self.blocking(|s| s.records(state::MEMBER_TOPIC)).await {
            Ok(m) => m,
            Err(e) => {
                warn!("could not read this node's federations: {e}");
                return;
            }
        };
        for (key, json) in memberships {
            let Ok(id) = ContentId::from_bytes(&key) else {
                continue;
            };
            let Ok(membership) = serde_json::from_slice::<Membership>(&json) else {
                warn!(federation = %id, "this node's membership record is malformed");
                continue;
            };
            let loaded = self.blocking(move |s| state::load_ledger(s, &id)).await;
            let (ledger, params) = match loaded {
                Ok(Some(x)) => x,
                Ok(None) => continue,
                Err(e) => {
                    warn!(federation = %id, "could not load: {e}");
                    continue;
                }
            };
            let (l2, m2) = (ledger.clone(), membership.clone());
            match tokio::task::spawn_blocking(move || load_data(&l2, &m2)).await {
                Ok(Ok(data)) => {
                    self.inner
                        .feds
                        .insert(Arc::new(Fed::new(ledger, params, membership, data)));
                    self.fl_subscribe(&id).await;
                    info!(federation = %id, "federation resumed");
                }
                Ok(Err(e)) => warn!(federation = %id, "not resumed: {e}"),
                Err(_) => return,
            }
        }
    }

    /// Subscribe to federation `id`'s gossip topic.
    async fn fl_subscribe(&self, id: &ContentId) {
        if let Ok(net) = self.net()
            && let Err(e) = net.subscribe(&fl_topic(id)).await
        {
            warn!(federation = %id, "could not subscribe to its topic: {e}");
        }
    }

    /// A round record announced on a federation's topic: checked against the ledger; the
    /// next round's record from its aggregator is taken with the model fetched from it.
    pub(crate) fn on_fl_gossip(
        &self,
        topic: &str,
        source: Option<sov_net::PeerId>,
        data: &[u8],
    ) -> Verdict {
        let Some(id) = topic
            .strip_prefix(FL_TOPIC_PREFIX)
            .and_then(|s| s.parse::<ContentId>().ok())
        else {
            return Verdict::Malformed;
        };
        let Some(fed) = self.inner.feds.get(&id) else {
            return Verdict::Ignore;
        };
        let Some(source) = source else {
            return Verdict::Malformed;
        };
        let Ok(signed) = Signed::<RoundRecord>::decode(data) else {
            return Verdict::Malformed;
        };
        let (round, signer) = (signed.body().round, signed.signer());
        {
            let l = lock(&fed.ledger);
            if sov_net::did_of(&source) != Some(signer) {
                return Verdict::Malformed;
            }
            if !l.is_active(&signer) {
                return Verdict::Reject;
            }
            if round <= l.round() {
                return Verdict::Ignore;
            }
            if round > l.round() + 1 {
                // Behind: the regular catch-up brings the rounds in between.
                return Verdict::Ignore;
            }
            if let Err(e) = l.check_round(data) {
                debug!(federation = %id, round, "announced round refused: {e}");
                return Verdict::Reject;
            }
        }
        let node = self.clone();
        let record = data.to_vec();
        self.spawn(async move {
            let ask = FlRequest::Model {
                federation: id,
                round,
            };
            match node.ask_fl(source, ask).await {
                Ok(FlResponse::Model { params }) => {
                    if let Err(e) = node.take_round(&fed, &record, &params).await {
                        debug!(federation = %id, round, "announced round not taken: {e}");
                    }
                }
                Ok(_) => debug!(federation = %id, "the announcer answered something else"),
                Err(e) => debug!(federation = %id, round, "the announcer's model: {e}"),
            }
        });
        Verdict::Accept
    }

    /// The federations this node is in.
    pub async fn fl_list(&self) -> Result<Vec<FederationStatus>> {
        let mut out = Vec::new();
        for f in self.inner.feds.all() {
            out.push(self.fl_status(&f.id).await?);
        }
        Ok(out)
    }

    /// Leave federation `id`: this node stops taking part and forgets its records.
    pub async fn fl_leave(&self, id: &ContentId) -> Result<()> {
        let fed = self
            .inner
            .feds
            .remove(id)
            .ok_or_else(|| Error::NoModel(format!("this node is not in federation {id}")))?;
        let id = fed.id;
        self.blocking(move |s| {
            s.remove_record(state::MEMBER_TOPIC, &id.to_bytes())?;
            s.remove_records(&state::topic(&id))?;
            Ok(())
        })
        .await
    }

    /// The parameters of federation `id`'s current model, and the round that made it.
    pub fn fl_model(&self, id: &ContentId) -> Result<(u32, Arc<Vec<f32>>)> {
        let fed = self
            .inner
            .feds
            .get(id)
            .ok_or_else(|| Error::NoModel(format!("this node is not in federation {id}")))?;
        let round = lock(&fed.ledger).round();
        let params = fed.params().ok_or_else(|| {
            Error::NoModel("this node does not have the current model yet".into())
        })?;
        Ok((round, params))
    }

    /// Federation `id` as this node knows it.
    pub async fn fl_status(&self, id: &ContentId) -> Result<FederationStatus> {
        let fed = self
            .inner
            .feds
            .get(id)
            .ok_or_else(|| Error::NoModel(format!("this node is not in federation {id}")))?;
        let live = self.live_members(&fed).await;
        let l = lock(&fed.ledger).clone();
        let g = l.genesis();
        let dp = g.dp().ok().flatten();
        let decimal = |s: &Option<String>| s.as_deref().and_then(|x| x.parse::<f64>().ok());
        let history: Vec<RoundSummary> = l
            .rounds()
            .map(|(r, signer)| RoundSummary {
                round: r.round,
                aggregator: signer.to_string(),
                contributors: r.transcript.iter().map(|c| c.member.to_string()).collect(),
                accuracy: r.validation.as_ref().and_then(|(a, _)| a.parse().ok()),
                epsilon: decimal(&r.epsilon),
                model: hex(&r.model),
                manifest: r.manifest.map(|m| m.to_string()),
            })
            .collect();
        let next = aggregators(&fed.id, l.round() + 1, &live).first().copied();
        Ok(FederationStatus {
            id: fed.id.to_string(),
            name: g.name.clone(),
            round: l.round(),
            rounds: g.policy.rounds,
            accuracy: history.last().and_then(|h| h.accuracy),
            epsilon: l.epsilon().ok().flatten(),
            delta: dp.map(|d| d.delta),
            epsilon_budget: g.epsilon_budget().ok().flatten(),
            aggregator: next.map(|d| d.to_string()),
            members: l.members().iter().map(ToString::to_string).collect(),
            live: live.iter().map(ToString::to_string).collect(),
            removed: l.removed().iter().map(ToString::to_string).collect(),
            governance: g.governance.map(|x| x.to_string()),
            secure: g.policy.secagg.is_some(),
            finished: l.finished().unwrap_or(true),
            model: hex(&l.head()),
            has_model: fed.params().is_some(),
            model_id: l.manifest().map(|m| m.to_string()),
            data: fed.membership.data.clone(),
            history,
            traffic: Traffic {
                sent: self
                    .inner
                    .feds
                    .sent
                    .load(std::sync::atomic::Ordering::Relaxed),
                received: self
                    .inner
                    .feds
                    .received
                    .load(std::sync::atomic::Ordering::Relaxed),
            },
        })
    }

    /// The members connected to this node now, and this node.
    async fn live_members(&self, fed: &Fed) -> Vec<Did> {
        let mut connected: Vec<Did> = match self.net() {
            Ok(net) => net
                .peers()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| p.did)
                .collect(),
            Err(_) => Vec::new(),
        };
        connected.push(self.did());
        let l = lock(&fed.ledger);
        let mut live: Vec<Did> = connected.into_iter().filter(|d| l.is_active(d)).collect();
        live.sort_by_key(|d| d.to_string());
        live.dedup();
        live
    }

    /// The federations' clock: whose turn it is to aggregate, failover, catching up.
    pub(crate) async fn fl_loop(self) {
        let mut stopped = self.stopped();
        let mut tick = tokio::time::interval(TICK);
        let mut last_sync = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.inner.feds.wake.notified() => {}
                _ = stopped.changed() => return,
            }
            let sync = last_sync.elapsed() >= SYNC_EVERY;
            if sync {
                last_sync = Instant::now();
            }
            for fed in self.inner.feds.all() {
                self.fl_tick(&fed, sync).await;
            }
        }
    }

    /// Catch up on `fed` from `peer` in the background, unless as many catch-ups as one
    /// tick starts are already in flight.
    fn sync_soon(&self, fed: &Arc<Fed>, peer: sov_net::PeerId) {
        use std::sync::atomic::Ordering::SeqCst;
        if fed.syncing.fetch_add(1, SeqCst) > MAX_REACH {
            fed.syncing.fetch_sub(1, SeqCst);
            return;
        }
        let node = self.clone();
        let fed = fed.clone();
        self.spawn(async move {
            if let Err(e) = node.sync_from(&fed, peer).await {
                debug!(federation = %fed.id, %peer, "catch-up: {e}");
            }
            fed.syncing.fetch_sub(1, SeqCst);
        });
    }

    async fn fl_tick(&self, fed: &Arc<Fed>, sync: bool) {
        let me = self.did();
        if !lock(&fed.ledger).is_active(&me) {
            // Removed by the governing group: this node no longer takes part.
            return;
        }
        let live = self.live_members(fed).await;
        let others: Vec<Did> = live.iter().copied().filter(|d| *d != me).collect();
        if sync {
            // Members not connected are asked for records: that dials them (their addresses
            // come from the DHT), and a member reached is live from the next tick on.
            let missing: Vec<Did> = {
                let l = lock(&fed.ledger);
                l.members()
                    .into_iter()
                    .filter(|d| *d != me && !live.contains(d) && l.is_active(d))
                    .take(MAX_REACH)
                    .collect()
            };
            for d in missing {
                self.sync_soon(fed, sov_net::peer_id_of(&d));
            }
        }
        if (sync || fed.params().is_none())
            && let Some(peer) = others.get(rand::random_range(0..others.len().max(1)))
        {
            self.sync_soon(fed, sov_net::peer_id_of(peer));
        }
        let (round, finished, timeout, min) = {
            let l = lock(&fed.ledger);
            (
                l.round(),
                l.finished().unwrap_or(true),
                Duration::from_millis(l.genesis().policy.round_timeout_ms),
                l.genesis().policy.min_clients as usize,
            )
        };
        if finished || live.len() < min || fed.params().is_none() {
            return;
        }
        let next = round + 1;
        let waited = {
            let mut p = lock(&fed.pending);
            if p.0 != next {
                *p = (next, Instant::now());
            }
            p.1.elapsed()
        };
        // After k round timeouts without a result, the first k of the order are passed over.
        let order = aggregators(&fed.id, next, &live);
        let k = (waited.as_millis() / timeout.as_millis().max(1)) as usize;
        if k >= order.len() {
            *lock(&fed.pending) = (next, Instant::now());
            return;
        }
        if order[k] != me {
            return;
        }
        let skipped = &order[..k];
        let live: Vec<Did> = live.into_iter().filter(|d| !skipped.contains(d)).collect();
        if !lock(&fed.driving).begin(next) {
            return;
        }
        let node = self.clone();
        let fed = fed.clone();
        self.spawn(async move {
            let result = tokio::time::timeout(
                timeout.saturating_mul(2),
                node.drive_round(fed.clone(), next, live),
            )
            .await;
            match result {
                Ok(Ok(r)) => info!(federation = %fed.id, round = r.round, "round closed"),
                Ok(Err(e)) => warn!(federation = %fed.id, round = next, "round failed: {e}"),
                Err(_) => warn!(federation = %fed.id, round = next, "round timed out"),
            }
            // A failed round is tried again after a pause, not at once.
            if lock(&fed.ledger).round() < next {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            lock(&fed.driving).end(next);
        });
    }
}
