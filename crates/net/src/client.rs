//! [`Client`]: the handle the node uses to drive the network, and the [`Event`]s it gets back.

use std::collections::HashSet;

use libp2p::{Multiaddr, PeerId, request_response::ResponseChannel};
use sov_core::{Block, ContentId, Did};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Error, Result,
    perf::{self, PerfReport},
    wire::{BlocksResponse, MAX_RESPONSE_DATA, MAX_WANT},
};

/// Something the network tells the node.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The first connection to a peer opened.
    PeerConnected {
        /// the peer
        peer: PeerId,
    },
    /// A connected peer told us (through identify) where it listens.
    PeerIdentified {
        /// the peer
        peer: PeerId,
        /// its listen addresses (relay circuits left out)
        listen_addrs: Vec<Multiaddr>,
    },
    /// The last connection to a peer closed.
    PeerDisconnected {
        /// the peer
        peer: PeerId,
    },
    /// A peer asks for blocks; answer with [`BlocksReply::send`].
    BlocksWanted {
        /// the peer
        peer: PeerId,
        /// the blocks it wants
        cids: Vec<ContentId>,
        /// where the answer goes
        reply: BlocksReply,
    },
    /// A peer sent a node message on `/sov/node/5` or `/sov/bulk/3`; answer with
    /// [`Reply::send`].
    Request {
        /// the peer
        peer: PeerId,
        /// which protocol it came on
        channel: Channel,
        /// the message
        data: Vec<u8>,
        /// where the answer goes
        reply: Reply,
    },
    /// A gossip message arrived on a subscribed topic (its signature checked by
    /// gossipsub). It is forwarded to other peers only once the node accepts it: report
    /// the verdict with [`Client::report`].
    Message {
        /// the topic
        topic: String,
        /// the message id (BLAKE3 of the data), for [`Client::report`]
        id: MessageId,
        /// who published it (signed)
        source: Option<PeerId>,
        /// the peer it came from
        propagated_by: PeerId,
        /// the bytes
        data: Vec<u8>,
    },
    /// A peer was banned for misbehaving.
    PeerBanned {
        /// the peer
        peer: PeerId,
        /// what it did
        reason: String,
        /// for how long
        duration: std::time::Duration,
    },
    /// An inbound connection was closed: its address holds as many as one may.
    ConnectionLimited {
        /// the address (an IPv6 one cut to its /64)
        ip: std::net::IpAddr,
    },
}

/// The node's two request-response protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `/sov/node/5`: control messages, at most [`crate::wire::MAX_NODE_MESSAGE`] bytes.
    Control,
    /// `/sov/bulk/3`: large messages (model updates), at most `Config::max_bulk_message`.
    Bulk,
}

/// A gossip message's id.
pub type MessageId = libp2p::gossipsub::MessageId;

/// What the node made of a gossip message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: forward it.
    Accept,
    /// Invalid as this node sees things (it may know more or less than the sender): drop
    /// it, and count it against the sender's gossip score.
    Reject,
    /// Invalid whoever looks (bytes that do not decode, a signature that does not hold, a
    /// signer that is not the publisher): as `Reject`, and towards a ban of the peer that
    /// forwarded it (an honest peer checks the same before it forwards).
    Malformed,
    /// Not for us (a duplicate, too old): drop it without penalty.
    Ignore,
}

/// A connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its PeerId.
    pub peer_id: PeerId,
    /// Its did:key (the same key).
    pub did: Option<Did>,
    /// Addresses it listens on (from identify) or, failing that, the ones we see it at.
    pub addrs: Vec<Multiaddr>,
}

/// What a provider lookup found.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    /// The peers that announced they hold the key (this node left out).
    pub peers: HashSet<PeerId>,
    /// DHT requests the lookup made.
    pub requests: u32,
}

pub(crate) enum Command {
    Dial(Multiaddr, oneshot::Sender<Result<PeerId>>),
    AddAddress(PeerId, Multiaddr),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Provide(ContentId, oneshot::Sender<Result<()>>),
    Unprovide(ContentId),
    Providers {
        key: ContentId,
        enough: usize,
        reply: oneshot::Sender<Providers>,
    },
    Closest(ContentId, oneshot::Sender<Vec<PeerId>>),
    Want(
        PeerId,
        Vec<ContentId>,
        oneshot::Sender<Result<BlocksResponse>>,
    ),
    Request(Channel, PeerId, Vec<u8>, oneshot::Sender<Result<Vec<u8>>>),
    RespondBlocks(ResponseChannel<BlocksResponse>, BlocksResponse),
    Respond(Channel, ResponseChannel<Vec<u8>>, Vec<u8>),
    Subscribe(String, oneshot::Sender<Result<()>>),
    Report(MessageId, PeerId, Verdict),
    Score(PeerId, oneshot::Sender<Option<f64>>),
    Publish(String, Vec<u8>, oneshot::Sender<Result<()>>),
    Ban(PeerId, String, Option<std::time::Duration>),
    Banned(oneshot::Sender<Vec<PeerId>>),
    Shutdown(oneshot::Sender<()>),
}

/// The answer to a [`Event::BlocksWanted`].
#[derive(Debug)]
pub struct BlocksReply {
    pub(crate) channel: ResponseChannel<BlocksResponse>,
    pub(crate) commands: mpsc::Sender<Command>,
}

impl BlocksReply {
    /// Send the blocks we have among those wanted (at most [`MAX_RESPONSE_DATA`] bytes of
    /// them, but always at least one; the peer asks again for the rest).
    pub async fn send(self, mut blocks: Vec<Block>) {
        let mut bytes = 0;
        let fit = blocks
            .iter()
            .take_while(|b| {
                let fits = bytes == 0 || bytes + b.data().len() <= MAX_RESPONSE_DATA;
                bytes += b.data().len();
                fits
            })
            .count();
        blocks.truncate(fit);
        let _ = self
            .commands
            .send(Command::RespondBlocks(
                self.channel,
                BlocksResponse::Out(blocks),
            ))
            .await;
    }
}

/// The answer to a [`Event::Request`].
#[derive(Debug)]
pub struct Reply {
    pub(crate) on: Channel,
    pub(crate) channel: ResponseChannel<Vec<u8>>,
    pub(crate) commands: mpsc::Sender<Command>,
}

impl Reply {
    /// Answer the request (within the protocol's limit; a longer answer fails at the asker).
    pub async fn send(self, data: Vec<u8>) {
        let _ = self
            .commands
            .send(Command::Respond(self.on, self.channel, data))
            .await;
    }
}

/// A handle on the network task. Cheap to clone; the task stops when every clone is gone.
#[derive(Clone)]
pub struct Client {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) me: PeerId,
    pub(crate) streams: libp2p_stream::Control,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("me", &self.me).finish()
    }
}

impl Client {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// Connect to `addr`; returns the peer's id once connected.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId> {
        self.ask(|tx| Command::Dial(addr, tx)).await?
    }

    /// Tell the DHT where `peer` can be reached.
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<()> {
        self.commands
            .send(Command::AddAddress(peer, addr))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// The addresses this node listens on, each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        self.ask(Command::ListenAddrs).await
    }

    /// The peers connected now.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>> {
        self.ask(Command::Peers).await
    }

    /// Announce in the DHT that this node holds `key`.
    pub async fn provide(&self, key: ContentId) -> Result<()> {
        self.ask(|tx| Command::Provide(key, tx)).await?
    }

    /// Stop announcing `key`.
    pub async fn unprovide(&self, key: ContentId) -> Result<()> {
        self.commands
            .send(Command::Unprovide(key))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// The peers that announced `key`; the lookup ends early once `enough` are found.
    pub async fn providers(&self, key: ContentId, enough: usize) -> Result<Providers> {
        self.ask(|reply| Command::Providers { key, enough, reply })
            .await
    }

    /// The peers closest to `key` in the DHT's XOR metric.
    pub async fn closest_peers(&self, key: ContentId) -> Result<Vec<PeerId>> {
        self.ask(|tx| Command::Closest(key, tx)).await
    }

    /// Ask `peer` for blocks. Returns those it sent, each checked against its CID; a peer
    /// that sends a block nobody asked for, a wrong block or a malformed answer is banned
    /// and the call fails with [`Error::Misbehaved`].
    pub async fn want(&self, peer: PeerId, cids: Vec<ContentId>) -> Result<Vec<Block>> {
        if cids.len() > MAX_WANT {
            return Err(Error::Request {
                peer,
                reason: format!("want-list of {} CIDs exceeds {MAX_WANT}", cids.len()),
            });
        }
        let wanted = cids.clone();
        let checked = match self.ask(|tx| Command::Want(peer, cids, tx)).await?? {
            // Hash off the async threads: a response holds up to 16 MiB.
            BlocksResponse::In(Ok(entries)) => {
                tokio::task::spawn_blocking(move || verify_blocks(&wanted, entries))
                    .await
                    .map_err(|e| Error::Request {
                        peer,
                        reason: e.to_string(),
                    })?
            }
            BlocksResponse::In(Err(e)) => Err(format!("malformed blocks response: {e}")),
            BlocksResponse::Out(_) => Err("an outgoing response came back".into()),
        };
        match checked {
            Ok(blocks) => Ok(blocks),
            Err(reason) => {
                self.ban(peer, reason.clone()).await;
                Err(Error::Misbehaved { peer, reason })
            }
        }
    }

    /// Send a control message to `peer` and wait for its answer.
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>> {
        self.request_on(Channel::Control, peer, data).await
    }

    /// Send a message on `channel` to `peer` and wait for its answer.
    pub async fn request_on(
        &self,
        channel: Channel,
        peer: PeerId,
        data: Vec<u8>,
    ) -> Result<Vec<u8>> {
        self.ask(|tx| Command::Request(channel, peer, data, tx))
            .await?
    }

    /// Tell gossipsub what the node made of message `id` from `propagated_by`.
    pub async fn report(&self, id: MessageId, propagated_by: PeerId, verdict: Verdict) {
        let _ = self
            .commands
            .send(Command::Report(id, propagated_by, verdict))
            .await;
    }

    /// `peer`'s gossipsub score here (negative after invalid messages), if it has one.
    pub async fn gossip_score(&self, peer: PeerId) -> Result<Option<f64>> {
        self.ask(|tx| Command::Score(peer, tx)).await
    }

    /// Subscribe to a gossip topic.
    pub async fn subscribe(&self, topic: &str) -> Result<()> {
        let topic = topic.to_owned();
        self.ask(|tx| Command::Subscribe(topic, tx)).await?
    }

    /// Publish on a gossip topic (at most 64 KiB).
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<()> {
        let topic = topic.to_owned();
        self.ask(|tx| Command::Publish(topic, data, tx)).await?
    }

    /// Ban `peer`: close its connections and refuse it for the configured time.
    pub async fn ban(&self, peer: PeerId, reason: String) {
        let _ = self.commands.send(Command::Ban(peer, reason, None)).await;
    }

    /// Ban `peer` for `duration` (a ban kept from an earlier run, say).
    pub async fn ban_for(&self, peer: PeerId, reason: String, duration: std::time::Duration) {
        let _ = self
            .commands
            .send(Command::Ban(peer, reason, Some(duration)))
            .await;
    }

    /// The peers banned now.
    pub async fn banned(&self) -> Result<Vec<PeerId>> {
        self.ask(Command::Banned).await
    }

    /// Stop the network: listeners and connections close. Later calls fail with
    /// [`Error::Stopped`].
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
    }

    /// Measure throughput to `peer` with the `/perf/1.0.0` protocol.
    pub async fn perf(&self, peer: PeerId, upload: u64, download: u64) -> Result<PerfReport> {
        perf::run(self.streams.clone(), peer, upload, download).await
    }
}

/// Check a blocks response against the want-list: only wanted blocks, each once, each
/// matching its CID.
fn verify_blocks(
    wanted: &[ContentId],
    entries: Vec<(ContentId, Vec<u8>)>,
) -> Result<Vec<Block>, String> {
    let mut open: HashSet<&ContentId> = wanted.iter().collect();
    let mut out = Vec::with_capacity(entries.len());
    for (cid, data) in entries {
        if !open.remove(&cid) {
            return Err(format!(
                "sent block {cid}, which was not asked for (or twice)"
            ));
        }
        out.push(Block::verified(cid, data).map_err(|e| format!("sent a bad block: {e}"))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use sov_core::Codec;

    use super::*;

    #[test]
    fn responses_are_checked_against_the_want_list() {
        let a = ContentId::of(Codec::Raw, b"a");
        let b = ContentId::of(Codec::Raw, b"b");
        let ok = vec![(a, b"a".to_vec())];
        assert_eq!(verify_blocks(&[a, b], ok).unwrap().len(), 1);
        let liar = vec![(a, b"x".to_vec())];
        assert!(verify_blocks(&[a], liar).unwrap_err().contains("bad block"));
        let unasked = vec![(b, b"b".to_vec())];
        assert!(
            verify_blocks(&[a], unasked)
                .unwrap_err()
                .contains("not asked")
        );
        let twice = vec![(a, b"a".to_vec()), (a, b"a".to_vec())];
        assert!(verify_blocks(&[a], twice).is_err());
    }
}
