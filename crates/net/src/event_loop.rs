//! The task that owns the swarm: it turns [`Command`]s into swarm calls and swarm events into
//! replies and [`Event`]s. Nothing here blocks: hashing and storage happen in the callers.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, gossipsub, identify, kad, mdns,
    multiaddr::Protocol,
    noise, request_response,
    swarm::{ConnectionId, DialError, SwarmEvent, dial_opts::DialOpts},
    tcp, yamux,
};
use sov_core::ContentId;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::{
    Client, Config, Error, Event, PeerInfo, Providers, Result,
    behaviour::{Behaviour, BehaviourEvent},
    client::{BlocksReply, Channel, Command, Reply, Verdict},
    perf,
    wire::{BlocksResponse, Inbound},
};

/// Commands waiting for the event loop.
const COMMAND_QUEUE: usize = 256;
/// Events waiting for the node; when full, new inbound requests are dropped (the peer sees
/// its request fail) rather than stalling the swarm.
const EVENT_QUEUE: usize = 1024;

/// Build the swarm, start listening and dialing the bootstrap peers, and spawn the event loop
/// on the current tokio runtime.
pub async fn start(config: Config) -> Result<(Client, mpsc::Receiver<Event>)> {
    let key = libp2p::identity::Keypair::ed25519_from_bytes(config.seed)
        .map_err(|e| Error::Setup(format!("identity key: {e}")))?;
    let me = key.public().to_peer_id();
    let behaviour_config = config.clone();
    let mut swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| Error::Setup(format!("TCP: {e}")))?
        .with_quic()
        .with_dns()
        .map_err(|e| Error::Setup(format!("DNS: {e}")))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| Error::Setup(format!("relay client: {e}")))?
        .with_behaviour(|key, relay| {
            Behaviour::new(key, relay, &behaviour_config)
                .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
        })
        .map_err(|e| Error::Setup(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();

    let mut listeners = 0;
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| Error::Setup(format!("listen on {addr}: {e}")))?;
        listeners += 1;
    }
    let streams = swarm.behaviour().streams.new_control();
    perf::serve(streams.clone()).map_err(Error::Setup)?;

    let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
    let mut event_loop = EventLoop {
        swarm,
        config: config.clone(),
        commands: command_rx,
        command_tx: command_tx.clone(),
        events: event_tx,
        listeners,
        listening: HashMap::new(),
        waiting_listen: Vec::new(),
        dials: HashMap::new(),
        wants: HashMap::new(),
        want_lists: HashMap::new(),
        relookups: HashMap::new(),
        requests: HashMap::new(),
        bulk_requests: HashMap::new(),
        providers: HashMap::new(),
        provides: HashMap::new(),
        closest: HashMap::new(),
        identified: HashMap::new(),
        seen_at: HashMap::new(),
        bans: HashMap::new(),
        rejected: HashMap::new(),
        per_ip: HashMap::new(),
        conn_ip: HashMap::new(),
        backoff: HashMap::new(),
        opened: HashMap::new(),
    };
    for addr in &config.bootstrap {
        event_loop.dial(addr.clone(), None);
    }
    tokio::spawn(event_loop.run());
    Ok((
        Client {
            commands: command_tx,
            me,
            streams,
        },
        event_rx,
    ))
}

type DialReply = oneshot::Sender<Result<PeerId>>;
type WantReply = oneshot::Sender<Result<BlocksResponse>>;

struct EventLoop {
    swarm: Swarm<Behaviour>,
    config: Config,
    commands: mpsc::Receiver<Command>,
    command_tx: mpsc::Sender<Command>,
    events: mpsc::Sender<Event>,
    listeners: usize,
    listening: HashMap<libp2p::core::transport::ListenerId, Vec<Multiaddr>>,
    waiting_listen: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    dials: HashMap<ConnectionId, (Multiaddr, Option<DialReply>)>,
    wants: HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<BlocksResponse>>>,
    /// First attempts of want-lists, kept to retry once if the peer cannot be dialled.
    want_lists: HashMap<request_response::OutboundRequestId, (PeerId, Vec<ContentId>)>,
    /// Want-lists waiting for a DHT lookup of their peer's current addresses.
    relookups: HashMap<kad::QueryId, (PeerId, Vec<ContentId>, WantReply)>,
    /// Our requests on `/sov/node/5` waiting for their answers. Each request-response
    /// behaviour numbers its requests itself, so the two protocols keep apart maps: a bulk
    /// answer must never resolve a control request that happens to share its number.
    requests: HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<Vec<u8>>>>,
    /// Our requests on `/sov/bulk/3` waiting for their answers.
    bulk_requests: HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<Vec<u8>>>>,
    providers: HashMap<kad::QueryId, (usize, Providers, oneshot::Sender<Providers>)>,
    provides: HashMap<kad::QueryId, oneshot::Sender<Result<()>>>,
    closest: HashMap<kad::QueryId, oneshot::Sender<Vec<PeerId>>>,
    /// Listen addresses peers told us through identify.
    identified: HashMap<PeerId, Vec<Multiaddr>>,
    /// Where we see connected peers.
    seen_at: HashMap<PeerId, Vec<Multiaddr>>,
    bans: HashMap<PeerId, Instant>,
    /// Gossip messages each peer forwarded that the node rejected, since when.
    rejected: HashMap<PeerId, (u32, Instant)>,
    /// Inbound connections by IP address (IPv6 by /64).
    per_ip: HashMap<IpAddr, HashSet<ConnectionId>>,
    conn_ip: HashMap<ConnectionId, IpAddr>,
    /// Peers whose connections keep failing (dials refused, connections cut at once): no
    /// request dials them again before `until`, which doubles with each failure.
    backoff: HashMap<PeerId, Backoff>,
    /// When each open connection was established.
    opened: HashMap<ConnectionId, Instant>,
}

/// Reconnect backoff of one peer.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// The window over which rejected gossip messages count towards a ban.
const REJECT_WINDOW: Duration = Duration::from_secs(600);

/// A connection that closes sooner than this after it opened counts as a failure.
const SHORT_LIVED: Duration = Duration::from_secs(2);
/// Longest reconnect backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Peers whose backoff is remembered (the oldest are forgotten first).
const BACKOFF_PEERS: usize = 4096;

fn kad_key(key: &ContentId) -> kad::RecordKey {
    kad::RecordKey::new(&key.to_bytes())
}

impl EventLoop {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        let _ = done.send(());
                        break;
                    }
                    Some(c) => self.on_command(c),
                    // Only our own sender is left (inside replies): every Client is gone.
                    None => break,
                },
                _ = tick.tick() => self.unban_expired(),
            }
            if self.commands.sender_strong_count() <= 1 && self.commands.is_empty() {
                // Every Client is gone; only the loop's own sender (for replies) remains.
                break;
            }
        }
        debug!("network stopped");
    }

    fn emit(&self, event: Event) {
        if let Err(e) = self.events.try_send(event) {
            warn!("node is not keeping up with the network; dropped an event: {e}");
        }
    }

    fn dial(&mut self, addr: Multiaddr, reply: Option<oneshot::Sender<Result<PeerId>>>) {
        let opts = DialOpts::from(addr.clone());
        let id = opts.connection_id();
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(id, (addr, reply));
            }
            Err(e) => {
                warn!(%addr, "dial failed: {e}");
                if let Some(r) = reply {
                    let _ = r.send(Err(Error::Dial {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    }));
                }
            }
        }
    }

    fn listen_addrs(&self) -> Vec<Multiaddr> {
        let me = *self.swarm.local_peer_id();
        let mut out: Vec<Multiaddr> = self
            .listening
            .values()
            .flatten()
            .map(|a| a.clone().with(Protocol::P2p(me)))
            .collect();
        out.sort();
        out
    }

    fn ban(&mut self, peer: PeerId, reason: String) {
        self.ban_for(peer, reason, self.config.ban_duration);
    }

    fn ban_for(&mut self, peer: PeerId, reason: String, duration: Duration) {
        warn!(%peer, %reason, secs = duration.as_secs(), "banning peer");
        let b = self.swarm.behaviour_mut();
        b.bans.block_peer(peer);
        b.kad.remove_peer(&peer);
        self.bans.insert(peer, Instant::now() + duration);
        self.rejected.remove(&peer);
        self.emit(Event::PeerBanned {
            peer,
            reason,
            duration,
        });
    }

    /// A gossip message `peer` forwarded was rejected: past the threshold within the window,
    /// the peer is banned.
    fn gossip_rejected(&mut self, peer: PeerId) {
        let limit = self.config.rejected_gossip_ban;
        if limit == 0 {
            return;
        }
        let now = Instant::now();
        if self.rejected.len() >= BACKOFF_PEERS && !self.rejected.contains_key(&peer) {
            self.rejected
                .retain(|_, (_, since)| now.duration_since(*since) < REJECT_WINDOW);
            if self.rejected.len() >= BACKOFF_PEERS {
                return;
            }
        }
        let e = self.rejected.entry(peer).or_insert((0, now));
        if now.duration_since(e.1) >= REJECT_WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
        if e.0 >= limit {
            let n = e.0;
            self.ban(peer, format!("{n} invalid gossip messages"));
        }
    }

    /// An inbound connection from `addr` opened: whether its IP holds more than it may.
    fn over_ip_limit(&mut self, id: ConnectionId, addr: &Multiaddr) -> Option<IpAddr> {
        let limit = self.config.max_connections_per_ip as usize;
        if limit == 0 {
            return None;
        }
        let ip = addr.iter().find_map(|p| match p {
            Protocol::Ip4(v4) => Some(IpAddr::V4(v4)),
            Protocol::Ip6(v6) => {
                let mut o = v6.octets();
                o[8..].fill(0);
                Some(IpAddr::V6(o.into()))
            }
            _ => None,
        })?;
        if ip.is_loopback() && !self.config.limit_loopback {
            return None;
        }
        let held = self.per_ip.entry(ip).or_default();
        if held.len() >= limit {
            return Some(ip);
        }
        held.insert(id);
        self.conn_ip.insert(id, ip);
        None
    }

    /// Count a failed connection to `peer`. One failure alone never holds requests back (a
    /// peer that just restarted, a connection closed as a test ends); from the second in a
    /// row, requests wait 1 s, then 2 s, 4 s, … up to 5 min. Failures inside a wait do not
    /// count: the wait grows once per window, so it stays within about the time the peer
    /// has been gone.
    fn connection_failed(&mut self, peer: PeerId) {
        let now = Instant::now();
        if self.backoff.len() >= BACKOFF_PEERS && !self.backoff.contains_key(&peer) {
            self.backoff.retain(|_, b| b.until > now);
            if self.backoff.len() >= BACKOFF_PEERS {
                return;
            }
        }
        let b = self.backoff.entry(peer).or_insert(Backoff {
            failures: 0,
            until: now,
        });
        if b.until > now {
            // A dial the backoff does not gate (the DHT's, identify's) failed inside the
            // window: the peer is no more gone than we knew. Escalating here would grow the
            // wait with every such dial, and keep a peer that came back unreachable for
            // minutes.
            return;
        }
        b.failures = b.failures.saturating_add(1);
        let wait = match b.failures {
            1 => Duration::ZERO,
            n => Duration::from_secs(1u64 << (n - 2).min(9)).min(MAX_BACKOFF),
        };
        b.until = now + wait;
        debug!(%peer, failures = b.failures, ?wait, "backing off reconnects");
    }

    /// `Some(reason)` when a request to `peer` must not dial it now: it is not connected and
    /// its connections failed recently.
    fn backing_off(&self, peer: &PeerId) -> Option<String> {
        if self.swarm.is_connected(peer) {
            return None;
        }
        let b = self.backoff.get(peer)?;
        let left = b.until.checked_duration_since(Instant::now())?;
        Some(format!(
            "{} failed connections in a row; not dialling again for {} s",
            b.failures,
            left.as_secs().max(1)
        ))
    }

    fn unban_expired(&mut self) {
        let now = Instant::now();
        let expired: Vec<PeerId> = self
            .bans
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            self.bans.remove(&p);
            self.swarm.behaviour_mut().bans.unblock_peer(p);
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial(addr, reply) => self.dial(addr, Some(reply)),
            Command::AddAddress(peer, addr) => {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
            Command::ListenAddrs(reply) => {
                if self.listening.len() >= self.listeners {
                    let _ = reply.send(self.listen_addrs());
                } else {
                    self.waiting_listen.push(reply);
                }
            }
            Command::Peers(reply) => {
                let peers = self
                    .swarm
                    .connected_peers()
                    .map(|p| PeerInfo {
                        peer_id: *p,
                        did: crate::did_of(p),
                        addrs: self
                            .identified
                            .get(p)
                            .or_else(|| self.seen_at.get(p))
                            .cloned()
                            .unwrap_or_default(),
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Provide(key, reply) => {
                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(kad_key(&key))
                {
                    Ok(q) => {
                        self.provides.insert(q, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Error::Dht(e.to_string())));
                    }
                }
            }
            Command::Unprovide(key) => {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .stop_providing(&kad_key(&key));
            }
            Command::Providers { key, enough, reply } => {
                let q = self.swarm.behaviour_mut().kad.get_providers(kad_key(&key));
                self.providers
                    .insert(q, (enough.max(1), Providers::default(), reply));
            }
            Command::Closest(key, reply) => {
                let q = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_closest_peers(key.to_bytes());
                self.closest.insert(q, reply);
            }
            Command::Want(peer, _, reply) if self.backing_off(&peer).is_some() => {
                let reason = self.backing_off(&peer).unwrap_or_default();
                let _ = reply.send(Err(Error::Request { peer, reason }));
            }
            Command::Request(_, peer, _, reply) if self.backing_off(&peer).is_some() => {
                let reason = self.backing_off(&peer).unwrap_or_default();
                let _ = reply.send(Err(Error::Request { peer, reason }));
            }
            Command::Want(peer, cids, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .blocks
                    .send_request(&peer, Ok(cids.clone()));
                self.want_lists.insert(id, (peer, cids));
                self.wants.insert(id, reply);
            }
            Command::Request(channel, peer, data, reply) => {
                let b = self.swarm.behaviour_mut();
                match channel {
                    Channel::Control => {
                        let id = b.node.send_request(&peer, Ok(data));
                        self.requests.insert(id, reply);
                    }
                    Channel::Bulk => {
                        let id = b.bulk.send_request(&peer, Ok(data));
                        self.bulk_requests.insert(id, reply);
                    }
                }
            }
            Command::RespondBlocks(channel, data) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .blocks
                    .send_response(channel, data);
            }
            Command::Respond(on, channel, data) => {
                let b = self.swarm.behaviour_mut();
                let _ = match on {
                    Channel::Control => b.node.send_response(channel, data),
                    Channel::Bulk => b.bulk.send_response(channel, data),
                };
            }
            Command::Subscribe(topic, reply) => {
                let t = gossipsub::IdentTopic::new(topic);
                let gossip = &mut self.swarm.behaviour_mut().gossip;
                // Invalid messages on our topics lower their sender's score (by default
                // gossipsub scores no topic, so a rejection would cost nothing).
                let _ = gossip.set_topic_params(t.clone(), topic_score());
                let r = gossip
                    .subscribe(&t)
                    .map(|_| ())
                    .map_err(|e| Error::Gossip(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Report(id, peer, verdict) => {
                let acceptance = match verdict {
                    Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                    Verdict::Reject | Verdict::Malformed => gossipsub::MessageAcceptance::Reject,
                    Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                };
                self.swarm
                    .behaviour_mut()
                    .gossip
                    .report_message_validation_result(&id, &peer, acceptance);
                if verdict == Verdict::Malformed {
                    self.gossip_rejected(peer);
                }
            }
            Command::Score(peer, reply) => {
                let _ = reply.send(self.swarm.behaviour().gossip.peer_score(&peer));
            }
            Command::Publish(topic, data, reply) => {
                let t = gossipsub::IdentTopic::new(topic);
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .publish(t, data)
                    .map(|_| ())
                    .map_err(|e| Error::Gossip(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Ban(peer, reason, None) => self.ban(peer, reason),
            Command::Ban(peer, reason, Some(d)) => self.ban_for(peer, reason, d),
            Command::Banned(reply) => {
                let _ = reply.send(self.bans.keys().copied().collect());
            }
            Command::Shutdown(_) => unreachable!("handled by the loop"),
        }
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                info!(%address, "listening");
                self.listening.entry(listener_id).or_default().push(address);
                if self.listening.len() >= self.listeners {
                    let addrs = self.listen_addrs();
                    for r in self.waiting_listen.drain(..) {
                        let _ = r.send(addrs.clone());
                    }
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                if let Some((_, Some(reply))) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
                if endpoint.is_listener()
                    && let Some(ip) =
                        self.over_ip_limit(connection_id, endpoint.get_remote_address())
                {
                    debug!(%peer_id, %ip, "inbound connection closed: its address holds enough");
                    self.swarm.close_connection(connection_id);
                    self.emit(Event::ConnectionLimited { ip });
                    return;
                }
                self.opened.insert(connection_id, Instant::now());
                let seen = self.seen_at.entry(peer_id).or_default();
                let addr = endpoint.get_remote_address().clone();
                if !seen.contains(&addr) {
                    seen.push(addr);
                }
                if num_established.get() == 1 {
                    debug!(%peer_id, "connected");
                    self.emit(Event::PeerConnected { peer: peer_id });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(ip) = self.conn_ip.remove(&connection_id)
                    && let Some(held) = self.per_ip.get_mut(&ip)
                {
                    held.remove(&connection_id);
                    if held.is_empty() {
                        self.per_ip.remove(&ip);
                    }
                }
                let lived = self.opened.remove(&connection_id).map(|t| t.elapsed());
                match lived {
                    Some(l) if l < SHORT_LIVED => self.connection_failed(peer_id),
                    // A connection that held for a while: the peer is healthy again.
                    Some(_) => {
                        self.backoff.remove(&peer_id);
                    }
                    None => {}
                }
                if num_established == 0 {
                    self.seen_at.remove(&peer_id);
                    self.emit(Event::PeerDisconnected { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some((addr, reply)) = self.dials.remove(&connection_id) {
                    let reason = match &error {
                        DialError::Transport(errs) => errs
                            .iter()
                            .map(|(_, e)| e.to_string())
                            .collect::<Vec<_>>()
                            .join("; "),
                        e => e.to_string(),
                    };
                    warn!(%addr, "dial failed: {reason}");
                    if let Some(r) = reply {
                        let _ = r.send(Err(Error::Dial {
                            addr: addr.to_string(),
                            reason,
                        }));
                    }
                } else {
                    debug!(?peer_id, "outgoing connection failed: {error}");
                }
                if let Some(peer) = peer_id {
                    self.connection_failed(peer);
                }
            }
            SwarmEvent::Behaviour(e) => self.on_behaviour(e),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let addrs: Vec<Multiaddr> = info
                    .listen_addrs
                    .into_iter()
                    .filter(|a| !a.iter().any(|p| matches!(p, Protocol::P2pCircuit)))
                    .collect();
                for a in &addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, a.clone());
                }
                self.identified.insert(peer_id, addrs.clone());
                self.emit(Event::PeerIdentified {
                    peer: peer_id,
                    listen_addrs: addrs,
                });
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if self.bans.contains_key(&peer) {
                        continue;
                    }
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
                ..
            }) => self.on_query(id, result, step.last, stats.num_requests()),
            BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.emit(Event::Message {
                topic: message.topic.into_string(),
                id: message_id,
                source: message.source,
                propagated_by: propagation_source,
                data: message.data,
            }),
            BehaviourEvent::Blocks(e) => self.on_blocks(e),
            BehaviourEvent::Node(e) => self.on_direct(Channel::Control, e),
            BehaviourEvent::Bulk(e) => self.on_direct(Channel::Bulk, e),
            _ => {}
        }
    }

    fn on_query(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool, requests: u32) {
        match result {
            kad::QueryResult::GetProviders(r) => {
                let Some((enough, mut found, reply)) = self.providers.remove(&id) else {
                    return;
                };
                let me = *self.swarm.local_peer_id();
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = r {
                    found
                        .peers
                        .extend(providers.into_iter().filter(|p| *p != me));
                }
                found.requests = requests;
                if last || found.peers.len() >= enough {
                    if !last && let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        q.finish();
                    }
                    let _ = reply.send(found);
                } else {
                    self.providers.insert(id, (enough, found, reply));
                }
            }
            kad::QueryResult::StartProviding(r) => {
                if let Some(reply) = self.provides.remove(&id) {
                    // Announcing to no one (we are alone) still records us locally: not an error.
                    let _ = reply.send(match r {
                        Ok(_) | Err(kad::AddProviderError::Timeout { .. }) => Ok(()),
                    });
                }
            }
            kad::QueryResult::GetClosestPeers(r) => {
                let peers = match r {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                if let Some(reply) = self.closest.remove(&id) {
                    let _ = reply.send(peers.into_iter().map(|p| p.peer_id).collect());
                } else if let Some((peer, cids, reply)) = self.relookups.remove(&id) {
                    self.retry_want(peer, cids, reply, peers);
                }
            }
            _ => {}
        }
    }

    fn on_blocks(
        &mut self,
        event: request_response::Event<Inbound<Vec<ContentId>>, BlocksResponse>,
    ) {
        use request_response::{Event as E, Message as M, OutboundFailure};
        match &event {
            E::OutboundFailure {
                peer,
                request_id,
                error: OutboundFailure::DialFailure,
                ..
            } if self.want_lists.contains_key(request_id) => {
                // The addresses we hold for a provider may be stale (it restarted elsewhere):
                // ask the DHT where it is now before giving up.
                let Some((_, cids)) = self.want_lists.remove(request_id) else {
                    return;
                };
                let Some(reply) = self.wants.remove(request_id) else {
                    return;
                };
                // Its routing-table entry goes first: a lookup starting from it would mark it
                // failed at once and never try the addresses other peers report.
                debug!(%peer, "cannot dial a provider; looking up its addresses");
                let kad = &mut self.swarm.behaviour_mut().kad;
                kad.remove_peer(peer);
                let q = kad.get_closest_peers(*peer);
                self.relookups.insert(q, (*peer, cids, reply));
                return;
            }
            E::OutboundFailure { request_id, .. }
            | E::Message {
                message: M::Response { request_id, .. },
                ..
            } => {
                self.want_lists.remove(request_id);
            }
            _ => {}
        }
        let commands = self.command_tx.clone();
        self.on_request_response(
            event,
            "want-list",
            |l| &mut l.wants,
            |peer, cids, channel| Event::BlocksWanted {
                peer,
                cids,
                reply: BlocksReply { channel, commands },
            },
        );
    }

    /// Sends a want-list again after a lookup of its peer, with whatever addresses it found;
    /// a second failure goes to the caller.
    fn retry_want(
        &mut self,
        peer: PeerId,
        cids: Vec<ContentId>,
        reply: WantReply,
        found: Vec<kad::PeerInfo>,
    ) {
        debug!(%peer, ?found, "lookup of a provider's addresses done");
        let b = self.swarm.behaviour_mut();
        for info in found.into_iter().filter(|i| i.peer_id == peer) {
            for addr in info.addrs {
                b.kad.add_address(&peer, addr);
            }
        }
        let id = b.blocks.send_request(&peer, Ok(cids));
        self.wants.insert(id, reply);
    }

    fn on_direct(
        &mut self,
        on: Channel,
        event: request_response::Event<Inbound<Vec<u8>>, Vec<u8>>,
    ) {
        let commands = self.command_tx.clone();
        let pending: fn(&mut Self) -> &mut HashMap<_, _> = match on {
            Channel::Control => |l| &mut l.requests,
            Channel::Bulk => |l| &mut l.bulk_requests,
        };
        self.on_request_response(event, "node message", pending, |peer, data, channel| {
            Event::Request {
                peer,
                channel: on,
                data,
                reply: Reply {
                    on,
                    channel,
                    commands,
                },
            }
        });
    }

    /// Both request-response protocols: a malformed request bans its sender, a good one
    /// becomes an [`Event`]; answers and failures go to the waiting caller in `pending`.
    fn on_request_response<Req, Resp>(
        &mut self,
        event: request_response::Event<Inbound<Req>, Resp>,
        what: &str,
        pending: fn(
            &mut Self,
        ) -> &mut HashMap<
            request_response::OutboundRequestId,
            oneshot::Sender<Result<Resp>>,
        >,
        inbound: impl FnOnce(PeerId, Req, request_response::ResponseChannel<Resp>) -> Event,
    ) {
        use request_response::{Event as E, Message as M};
        match event {
            E::Message { peer, message, .. } => match message {
                M::Request {
                    request: Err(e), ..
                } => self.ban(peer, format!("malformed {what}: {e}")),
                M::Request {
                    request: Ok(request),
                    channel,
                    ..
                } => self.emit(inbound(peer, request, channel)),
                M::Response {
                    request_id,
                    response,
                } => {
                    if let Some(r) = pending(self).remove(&request_id) {
                        let _ = r.send(Ok(response));
                    }
                }
            },
            E::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let reason = self.outbound_failed(peer, &error);
                if let Some(r) = pending(self).remove(&request_id) {
                    let _ = r.send(Err(reason));
                }
            }
            E::InboundFailure { peer, error, .. } => self.inbound_failed(peer, &error),
            E::ResponseSent { .. } => {}
        }
    }

    /// A request of ours failed; a malformed or oversized answer gets the peer banned.
    fn outbound_failed(
        &mut self,
        peer: PeerId,
        error: &request_response::OutboundFailure,
    ) -> Error {
        if let request_response::OutboundFailure::Io(e) = error
            && e.kind() == std::io::ErrorKind::InvalidData
        {
            let reason = format!("malformed answer: {e}");
            self.ban(peer, reason.clone());
            return Error::Misbehaved { peer, reason };
        }
        Error::Request {
            peer,
            reason: error.to_string(),
        }
    }

    /// A peer's request to us failed; a malformed or oversized one gets it banned.
    fn inbound_failed(&mut self, peer: PeerId, error: &request_response::InboundFailure) {
        match error {
            request_response::InboundFailure::Io(e)
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                self.ban(peer, format!("malformed request: {e}"));
            }
            e => debug!(%peer, "inbound request failed: {e}"),
        }
    }
}

/// Score parameters for each topic the node subscribes to: a rejected message costs its
/// sender (squared, so a flood costs more than a slip), decaying over minutes.
fn topic_score() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.9,
        ..gossipsub::TopicScoreParams::default()
    }
}
