//! Wire formats of sov's own protocols, and their request-response codecs.
//!
//! Every message is read whole with a hard size limit before it is parsed, so a peer can
//! make us buffer at most that limit per stream, and the parsers never allocate more than
//! the bytes they were given justify.
//!
//! `/sov/blocks/1` request (a want-list): `u16 n`, then `n` × (`u8 len`, CID bytes).
//! Response: `u16 n`, then `n` × (`u8 len`, CID bytes, `u32 len`, block bytes). All integers
//! big-endian. A response holds only blocks that were asked for, each once; blocks the
//! responder lacks (or that did not fit) are left out.
//!
//! `/sov/node/1` carries opaque bytes (the node's own messages) both ways.

use std::io;

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::{StreamProtocol, request_response};
use sov_core::{ContentId, MAX_BLOCK};

/// The block-exchange protocol.
pub const BLOCKS_PROTOCOL: StreamProtocol = StreamProtocol::new("/sov/blocks/1");
/// The node's direct-message protocol.
pub const NODE_PROTOCOL: StreamProtocol = StreamProtocol::new("/sov/node/1");

/// Most CIDs in one want-list.
pub const MAX_WANT: usize = 256;
/// Most block bytes a responder puts in one response (the rest is asked for again).
pub const MAX_RESPONSE_DATA: usize = 16 << 20;
/// Largest want-list on the wire.
const MAX_WANT_BYTES: usize = 2 + MAX_WANT * (1 + 64);
/// Largest response on the wire: the data limit, plus one more block that may overshoot it
/// (a responder always sends at least one block), plus framing.
const MAX_BLOCKS_BYTES: usize = MAX_RESPONSE_DATA + MAX_BLOCK + 2 + MAX_WANT * (1 + 64 + 4);
/// Largest node message either way.
pub const MAX_NODE_MESSAGE: usize = 64 << 10;

/// Why bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The message ended early.
    #[error("message truncated")]
    Truncated,
    /// Bytes were left after the message.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// More entries than the protocol allows.
    #[error("{0} entries, at most {MAX_WANT} allowed")]
    TooMany(usize),
    /// A block larger than any sov block.
    #[error("block of {0} bytes exceeds {MAX_BLOCK}")]
    BlockTooLarge(usize),
    /// A CID that is not a sov CID.
    #[error("bad CID: {0}")]
    Cid(String),
}

impl From<WireError> for io::Error {
    fn from(e: WireError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cid(&mut self) -> Result<ContentId, WireError> {
        let n = self.u8()? as usize;
        ContentId::from_bytes(self.take(n)?).map_err(|e| WireError::Cid(e.to_string()))
    }
    fn end(&self) -> Result<(), WireError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

fn put_cid(out: &mut Vec<u8>, cid: &ContentId) {
    let b = cid.to_bytes();
    out.push(b.len() as u8); // a sov CID is 36 bytes
    out.extend_from_slice(&b);
}

/// Encode a want-list (at most [`MAX_WANT`] CIDs; callers split longer lists).
pub fn encode_want(cids: &[ContentId]) -> Vec<u8> {
    debug_assert!(cids.len() <= MAX_WANT);
    let mut out = Vec::with_capacity(2 + cids.len() * 37);
    out.extend_from_slice(&(cids.len() as u16).to_be_bytes());
    for c in cids {
        put_cid(&mut out, c);
    }
    out
}

/// Decode a want-list from a peer.
pub fn decode_want(bytes: &[u8]) -> Result<Vec<ContentId>, WireError> {
    let mut c = Cursor(bytes);
    let n = c.u16()? as usize;
    if n > MAX_WANT {
        return Err(WireError::TooMany(n));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(c.cid()?);
    }
    c.end()?;
    Ok(out)
}

/// Encode a blocks response.
pub fn encode_blocks(blocks: &[(ContentId, &[u8])]) -> Vec<u8> {
    let size: usize = blocks.iter().map(|(_, d)| d.len() + 41).sum();
    let mut out = Vec::with_capacity(2 + size);
    out.extend_from_slice(&(blocks.len() as u16).to_be_bytes());
    for (cid, data) in blocks {
        put_cid(&mut out, cid);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// Decode a blocks response from a peer (not yet checked against the CIDs).
pub fn decode_blocks(bytes: &[u8]) -> Result<Vec<(ContentId, Vec<u8>)>, WireError> {
    let mut c = Cursor(bytes);
    let n = c.u16()? as usize;
    if n > MAX_WANT {
        return Err(WireError::TooMany(n));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let cid = c.cid()?;
        let len = c.u32()? as usize;
        if len > MAX_BLOCK {
            return Err(WireError::BlockTooLarge(len));
        }
        out.push((cid, c.take(len)?.to_vec()));
    }
    c.end()?;
    Ok(out)
}

/// Read a whole message of at most `limit` bytes (never more: a longer one is cut off and
/// refused).
async fn read_limited<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
) -> io::Result<Result<Vec<u8>, String>> {
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        return Ok(Err(format!("message exceeds {limit} bytes")));
    }
    Ok(Ok(buf))
}

/// A request as read from a peer: decoded, or why it could not be. Malformed requests are
/// values, not I/O errors, because libp2p reports failed reads of requests to no one, and
/// the event loop must see them to ban the sender.
pub(crate) type Inbound<T> = Result<T, String>;

/// A blocks response as it leaves this node: encoded already (by the node's task, not the
/// swarm's).
pub(crate) type EncodedBlocks = Vec<u8>;

/// What differs between our request-response protocols: message types, limits, encodings.
pub(crate) trait Wire: Send + Clone + 'static {
    type Request: Send;
    type Response: Send;
    const MAX_REQUEST: usize;
    const MAX_RESPONSE: usize;
    fn encode_request(req: &Self::Request) -> Vec<u8>;
    fn decode_request(bytes: Vec<u8>) -> Result<Self::Request, String>;
    fn encode_response(res: Self::Response) -> Vec<u8>;
    fn decode_response(bytes: Vec<u8>) -> Self::Response;
}

/// `/sov/blocks/1`: want-lists out, raw response bytes in (the client parses and verifies
/// them, so it can tell a lying peer from a broken stream); responses leave encoded.
#[derive(Debug, Clone, Default)]
pub(crate) struct Blocks;

impl Wire for Blocks {
    type Request = Vec<ContentId>;
    type Response = EncodedBlocks;
    const MAX_REQUEST: usize = MAX_WANT_BYTES;
    const MAX_RESPONSE: usize = MAX_BLOCKS_BYTES;
    fn encode_request(req: &Vec<ContentId>) -> Vec<u8> {
        encode_want(req)
    }
    fn decode_request(bytes: Vec<u8>) -> Result<Vec<ContentId>, String> {
        decode_want(&bytes).map_err(|e| e.to_string())
    }
    fn encode_response(res: EncodedBlocks) -> Vec<u8> {
        res
    }
    fn decode_response(bytes: Vec<u8>) -> EncodedBlocks {
        bytes
    }
}

/// `/sov/node/1`: bounded opaque bytes both ways.
#[derive(Debug, Clone, Default)]
pub(crate) struct Node;

impl Wire for Node {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    const MAX_REQUEST: usize = MAX_NODE_MESSAGE;
    const MAX_RESPONSE: usize = MAX_NODE_MESSAGE;
    fn encode_request(req: &Vec<u8>) -> Vec<u8> {
        req.clone()
    }
    fn decode_request(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(bytes)
    }
    fn encode_response(res: Vec<u8>) -> Vec<u8> {
        res
    }
    fn decode_response(bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }
}

/// The request-response codec of a [`Wire`] protocol: every message read whole with its
/// limit, then decoded.
#[derive(Debug, Clone, Default)]
pub(crate) struct Codec<W>(std::marker::PhantomData<W>);

impl<W: Wire> request_response::Codec for Codec<W> {
    type Protocol = StreamProtocol;
    type Request = Inbound<W::Request>;
    type Response = W::Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Request> {
        Ok(read_limited(io, W::MAX_REQUEST)
            .await?
            .and_then(W::decode_request))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Response> {
        read_limited(io, W::MAX_RESPONSE)
            .await?
            .map(W::decode_response)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Self::Request,
    ) -> io::Result<()> {
        let req = req.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        io.write_all(&W::encode_request(&req)).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Self::Response,
    ) -> io::Result<()> {
        io.write_all(&W::encode_response(res)).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use sov_core::Codec;

    use super::*;

    #[test]
    fn want_and_blocks_round_trip() {
        let a = ContentId::of(Codec::Raw, b"a");
        let b = ContentId::of(Codec::DagCbor, b"b");
        assert_eq!(decode_want(&encode_want(&[a, b])).unwrap(), vec![a, b]);
        let enc = encode_blocks(&[(a, b"a"), (b, b"b")]);
        assert_eq!(
            decode_blocks(&enc).unwrap(),
            vec![(a, b"a".to_vec()), (b, b"b".to_vec())]
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        let a = ContentId::of(Codec::Raw, b"a");
        let good = encode_blocks(&[(a, b"abc")]);
        for cut in 0..good.len() {
            assert!(decode_blocks(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode_blocks(&long), Err(WireError::Trailing(1)));
        assert_eq!(decode_want(&[0xff, 0xff]), Err(WireError::TooMany(65535)));
        // A block length beyond 1 MiB is refused before anything is allocated for it.
        let mut huge = vec![0, 1];
        put_cid(&mut huge, &a);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode_blocks(&huge),
            Err(WireError::BlockTooLarge(u32::MAX as usize))
        );
        assert!(decode_want(&[0, 1, 3, 1, 2, 3]).is_err());
    }
}
