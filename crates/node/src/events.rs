//! The node's event task: what the network reports, and the answers to peers' requests.
//! Each answer runs as one of the node's tasks, so shutdown waits for it.

use sov_net::{Channel, Event, PeerId};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use std::time::Instant;

use crate::{
    Node,
    protocol::{self, FlRequest, FlResponse, Request, Response},
    quota::Kind,
};

impl Node {
    pub(crate) async fn handle_events(self, mut events: mpsc::Receiver<Event>) {
        let mut stopped = self.stopped();
        loop {
            let event = tokio::select! {
                e = events.recv() => match e { Some(e) => e, None => break },
                _ = stopped.changed() => break,
            };
            match event {
                Event::BlocksWanted { peer, cids, reply } => {
                    let node = self.clone();
                    self.spawn(async move {
                        let Ok(_slot) = node.inner.serving.acquire().await else {
                            return;
                        };
                        let limit = sov_net::wire::MAX_RESPONSE_DATA;
                        // Manifests and grants only to those who may see them.
                        let listed = node.inner.access.objects_for(&peer);
                        let served = node
                            .blocking(move |s| {
                                let cids = crate::access::visible(s, &peer, cids, &listed)?;
                                s.blocks(&cids, limit)
                            })
                            .await;
                        match served {
                            Ok(blocks) => reply.send(blocks).await,
                            Err(e) => warn!(%peer, "could not serve blocks: {e}"),
                        }
                    });
                }
                Event::Request {
                    peer,
                    channel: Channel::Control,
                    data,
                    reply,
                } => {
                    let node = self.clone();
                    // Answers in flight are bounded: past the bound, a request is refused
                    // at once instead of queueing.
                    let Ok(slot) = self.inner.quotas.answers.clone().try_acquire_owned() else {
                        let refusal = Response::refused("this node is busy; ask again later");
                        self.spawn(async move { reply.send(refusal.encode()).await });
                        continue;
                    };
                    self.spawn(async move {
                        let _slot = slot;
                        let response = match Request::decode(&data) {
                            Ok(req) => node.admitted(peer, req).await,
                            Err(e) => {
                                node.count_invalid("request");
                                if let Ok(net) = node.net() {
                                    net.ban(peer, format!("malformed node message: {e}")).await;
                                }
                                return;
                            }
                        };
                        reply.send(response.encode()).await;
                    });
                }
                Event::Request {
                    peer,
                    channel: Channel::Bulk,
                    data,
                    reply,
                } => {
                    let node = self.clone();
                    let Ok(slot) = self.inner.quotas.answers.clone().try_acquire_owned() else {
                        let refusal = FlResponse::refused("this node is busy; ask again later");
                        self.spawn(async move { reply.send(refusal.encode()).await });
                        continue;
                    };
                    self.spawn(async move {
                        let _slot = slot;
                        let response = match FlRequest::decode(&data) {
                            Ok(req) => node.answer_fl(peer, req).await.encode(),
                            Err(e) => {
                                node.count_invalid("request");
                                if let Ok(net) = node.net() {
                                    net.ban(peer, format!("malformed federation message: {e}"))
                                        .await;
                                }
                                return;
                            }
                        };
                        node.inner.feds.count(response.len(), data.len());
                        reply.send(response).await;
                    });
                }
                Event::Message {
                    topic,
                    id,
                    source,
                    propagated_by,
                    data,
                } => {
                    let verdict = self.on_gossip(&topic, source, &data);
                    if matches!(
                        verdict,
                        sov_net::Verdict::Reject | sov_net::Verdict::Malformed
                    ) {
                        let kind = topic.split('/').nth(1).unwrap_or("other");
                        self.metrics()
                            .invalid_messages
                            .get_or_create(&crate::metrics::label("kind", kind))
                            .inc();
                    }
                    if let Ok(net) = self.net() {
                        net.report(id, propagated_by, verdict).await;
                    }
                }
                Event::PeerBanned {
                    peer,
                    reason,
                    duration,
                } => {
                    info!(%peer, %reason, secs = duration.as_secs(), "peer banned");
                    if !reason.starts_with(crate::metrics::KEPT_BAN) {
                        self.metrics().bans.inc();
                        let node = self.clone();
                        self.spawn(async move { node.keep_ban(peer, reason, duration).await });
                    }
                }
                Event::ConnectionLimited { ip } => {
                    debug!(%ip, "inbound connection over the per-address limit closed");
                    self.metrics().connections_limited.inc();
                }
                Event::PeerConnected { peer } => debug!(%peer, "peer connected"),
                Event::PeerIdentified { peer, listen_addrs } => self.remember(peer, listen_addrs),
                Event::PeerDisconnected { peer } => debug!(%peer, "peer disconnected"),
                _ => {}
            }
        }
    }

    /// Answer a peer's node message.
    /// Answer `req` if `peer` is within its rate for this kind of request.
    async fn admitted(&self, peer: PeerId, req: Request) -> Response {
        let kind = match req {
            Request::Pin { .. } | Request::Unpin { .. } | Request::Dropped { .. } => Kind::Pin,
            Request::Has { .. }
            | Request::Grants { .. }
            | Request::GrantKeys { .. }
            | Request::Claim { .. }
            | Request::Prove { .. } => Kind::Query,
        };
        if let Err(wait) = self.inner.quotas.admit(peer, kind, Instant::now()) {
            return Response::refused(format!(
                "rate limit: ask again in {} ms",
                wait.as_millis().max(1)
            ));
        }
        self.answer(peer, req).await
    }

    async fn answer(&self, peer: PeerId, req: Request) -> Response {
        match req {
            Request::Has { object: id } => {
                let found = self
                    .blocking(move |s| Ok((s.contains(&id)?, s.pin(&id)?)))
                    .await;
                match found {
                    Ok((has, pin)) => Response::Has {
                        has,
                        replica: has && pin.is_some_and(|p| p.replica),
                    },
                    Err(e) => Response::refused(e),
                }
            }
            Request::Grants { object: id } => {
                let listed = self.inner.access.objects_for(&peer);
                let grants = self
                    .blocking(move |s| {
                        // A peer that may not see the object hears of no grants.
                        if !s.contains(&id)? || !crate::access::may_see(s, &peer, &id, &listed)? {
                            return Ok(Vec::new());
                        }
                        s.grant_blocks(&id)
                    })
                    .await;
                match grants {
                    Ok(grants) => Response::Grants {
                        grants: grants
                            .iter()
                            .take(protocol::MAX_GRANTS)
                            .map(|g| *g.cid())
                            .collect(),
                    },
                    Err(e) => Response::refused(e),
                }
            }
            Request::GrantKeys { object: id, skip } => {
                let keys = self
                    .blocking(move |s| {
                        if !s.contains(&id)? {
                            return Ok(Vec::new());
                        }
                        s.grant_keys(&id)
                    })
                    .await;
                match keys {
                    Ok(keys) => {
                        let rest = keys.len().saturating_sub(skip as usize);
                        Response::GrantKeys {
                            keys: keys
                                .iter()
                                .skip(skip as usize)
                                .take(protocol::MAX_GRANT_KEYS)
                                .map(|(eph, access)| {
                                    serde_bytes::ByteBuf::from([&eph[..], &access[..]].concat())
                                })
                                .collect(),
                            more: rest > protocol::MAX_GRANT_KEYS,
                        }
                    }
                    Err(e) => Response::refused(e),
                }
            }
            Request::Claim {
                object: id,
                ephemeral,
                signature,
            } => {
                let Ok(ephemeral) = <[u8; 32]>::try_from(ephemeral.as_slice()) else {
                    return Response::refused("a grant's ephemeral key is 32 bytes");
                };
                let (me, asker) = (self.peer_id().to_bytes(), peer.to_bytes());
                let ok = self
                    .blocking(move |s| {
                        Ok(s.contains(&id)?
                            && s.check_claim(&id, &ephemeral, &signature, &me, &asker)?)
                    })
                    .await;
                match ok {
                    Ok(true) => {
                        self.inner.access.allow(id, peer);
                        Response::Claimed
                    }
                    Ok(false) => Response::refused("no grant here is claimed by that signature"),
                    Err(e) => Response::refused(e),
                }
            }
            Request::Pin {
                object,
                replicas,
                mandate,
            } => match self
                .pin_for(peer, object, replicas, mandate.into_vec())
                .await
            {
                Ok(()) => Response::Pinned,
                Err(e) => Response::refused(e),
            },
            Request::Unpin { object } => match self.unpin_for(peer, object).await {
                Ok(()) => Response::Unpinned,
                Err(e) => Response::refused(e),
            },
            Request::Prove {
                object,
                chunk,
                offset,
                len,
                nonce,
            } => match self
                .prove_for(object, chunk, offset, len, nonce.into_vec())
                .await
            {
                Ok(digest) => Response::Proof {
                    digest: serde_bytes::ByteBuf::from(digest.to_vec()),
                },
                Err(e) => Response::refused(e),
            },
            Request::Dropped { object } => {
                // Only an owner acts on it: it checks again who holds its object.
                let mine = self.blocking(move |s| s.pin(&object)).await;
                if matches!(mine, Ok(Some(p)) if !p.replica && p.replicas > 0)
                    && self.inner.quotas.begin_placing(object)
                {
                    let node = self.clone();
                    self.spawn(async move {
                        if let Err(e) = node.replicate(object).await {
                            debug!(%object, "placing a dropped copy elsewhere failed: {e}");
                        }
                        node.inner.quotas.end_placing(&object);
                    });
                }
                Response::Noted
            }
        }
    }
}
