//! Wire formats of sov's own protocols, and their request-response codecs.
//!
//! Every message is read with a hard size limit, so a peer can make us buffer at most that
//! limit per stream. Want-lists and node messages are read whole, then parsed; blocks
//! responses are parsed as they are read, each block straight into its own buffer (no copy
//! of the whole response), allocating at most one block (1 MiB) beyond what arrived.
//!
//! Every request, and every answer on `/sov/node/5` and `/sov/bulk/3`, is a frame: `u32 len`
//! then `len` bytes, then the end of the stream. The length tells a message cut short (a
//! stream that ended early: a fault, reported as an I/O error and never punished) from a
//! malformed one (a length over the limit, bytes after the frame, or a body that does not
//! decode: the peer broke the protocol). Without it a request truncated by a stall or a cut
//! connection would read as a complete, malformed message and get an honest peer banned.
//!
//! `/sov/blocks/2` request (a want-list, framed): `u16 n`, then `n` × (`u8 len`, CID bytes).
//! Response (self-delimiting, not framed): `u16 n`, then `n` × (`u8 len`, CID bytes,
//! `u32 len`, block bytes). All integers big-endian. A response holds only blocks that were
//! asked for, each once; blocks the responder lacks (or that did not fit) are left out.
//!
//! `/sov/node/5` and `/sov/bulk/3` carry opaque bytes (the node's own messages) both ways,
//! each with its own size limit: small control messages on the first, large ones (model
//! updates) on the second.

use std::io;

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::{StreamProtocol, request_response};
use sov_core::{Block, ContentId, MAX_BLOCK};

/// The block-exchange protocol.
pub const BLOCKS_PROTOCOL: StreamProtocol = StreamProtocol::new("/sov/blocks/2");
/// The node's protocol for small control messages.
pub const NODE_PROTOCOL: StreamProtocol = StreamProtocol::new("/sov/node/5");
/// The node's protocol for large messages (model updates).
pub const BULK_PROTOCOL: StreamProtocol = StreamProtocol::new("/sov/bulk/3");

/// Most CIDs in one want-list.
pub const MAX_WANT: usize = 256;
/// Most block bytes a responder puts in one response (the rest is asked for again).
pub const MAX_RESPONSE_DATA: usize = 16 << 20;
/// Largest want-list on the wire.
const MAX_WANT_BYTES: usize = 2 + MAX_WANT * (1 + 64);
/// Largest response on the wire: the data limit, plus one more block that may overshoot it
/// (a responder always sends at least one block), plus framing.
const MAX_BLOCKS_BYTES: usize = MAX_RESPONSE_DATA + MAX_BLOCK + 2 + MAX_WANT * (1 + 64 + 4);
/// Largest control message either way.
pub const MAX_NODE_MESSAGE: usize = 64 << 10;
/// Default largest bulk message either way (configurable: `Config::max_bulk_message`).
pub const DEFAULT_MAX_BULK_MESSAGE: usize = 64 << 20;

/// Why bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The message ended early.
    #[error("message truncated")]
    Truncated,
    /// Bytes were left after the message (at least this many).
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// The message is longer than its protocol allows.
    #[error("message exceeds {0} bytes")]
    TooLong(usize),
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

/// Encode a blocks response (one buffer; the network writes responses piece by piece).
pub fn encode_blocks(blocks: &[(ContentId, &[u8])]) -> Vec<u8> {
    let size: usize = blocks.iter().map(|(_, d)| d.len() + 41).sum();
    let mut out = Vec::with_capacity(2 + size);
    out.extend_from_slice(&(blocks.len() as u16).to_be_bytes());
    for (cid, data) in blocks {
        out.extend_from_slice(&block_header(cid, data.len()));
        out.extend_from_slice(data);
    }
    out
}

/// What precedes a block's bytes in a response: its CID and length.
fn block_header(cid: &ContentId, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(41);
    put_cid(&mut out, cid);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out
}

/// Decode a blocks response from a peer (not yet checked against the CIDs).
pub fn decode_blocks(bytes: &[u8]) -> Result<Vec<(ContentId, Vec<u8>)>, WireError> {
    futures::executor::block_on(read_blocks(&mut &bytes[..])).unwrap_or(Err(WireError::Truncated))
}

/// Read a blocks response of at most [`MAX_BLOCKS_BYTES`] from `io`, each block into its own
/// buffer. `Ok(Err(_))`: the peer sent a malformed response; `Err(_)`: the stream failed.
async fn read_blocks<T: AsyncRead + Unpin + Send>(
    io: &mut T,
) -> io::Result<Result<Vec<(ContentId, Vec<u8>)>, WireError>> {
    let mut io = io.take(MAX_BLOCKS_BYTES as u64 + 1);
    // A stream that ends early is a failed stream (a fault: the peer is not punished), unless
    // it ended because the response passed its limit (`Ok(false)`: malformed).
    async fn exact<R: AsyncRead + Unpin>(
        io: &mut futures::io::Take<R>,
        buf: &mut [u8],
    ) -> io::Result<bool> {
        match io.read_exact(buf).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && io.limit() == 0 => Ok(false),
            Err(e) => Err(e),
        }
    }
    let mut head = [0u8; 2];
    if !exact(&mut io, &mut head).await? {
        return Ok(Err(WireError::TooLong(MAX_BLOCKS_BYTES)));
    }
    let n = u16::from_be_bytes(head) as usize;
    if n > MAX_WANT {
        return Ok(Err(WireError::TooMany(n)));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut len = [0u8; 1];
        if !exact(&mut io, &mut len).await? {
            return Ok(Err(WireError::TooLong(MAX_BLOCKS_BYTES)));
        }
        let mut cid = vec![0u8; usize::from(len[0])];
        if !exact(&mut io, &mut cid).await? {
            return Ok(Err(WireError::TooLong(MAX_BLOCKS_BYTES)));
        }
        let cid = match ContentId::from_bytes(&cid) {
            Ok(c) => c,
            Err(e) => return Ok(Err(WireError::Cid(e.to_string()))),
        };
        let mut len = [0u8; 4];
        if !exact(&mut io, &mut len).await? {
            return Ok(Err(WireError::TooLong(MAX_BLOCKS_BYTES)));
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_BLOCK {
            return Ok(Err(WireError::BlockTooLarge(len)));
        }
        let mut data = vec![0u8; len];
        if !exact(&mut io, &mut data).await? {
            return Ok(Err(WireError::TooLong(MAX_BLOCKS_BYTES)));
        }
        out.push((cid, data));
    }
    if io.limit() == 0 {
        return Ok(Err(WireError::TooLong(MAX_BLOCKS_BYTES)));
    }
    let mut probe = [0u8; 1];
    if io.read(&mut probe).await? > 0 {
        return Ok(Err(WireError::Trailing(1)));
    }
    Ok(Ok(out))
}

/// Write a blocks response: framing, then each block's bytes as they are (no copy).
async fn write_blocks<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    blocks: &[Block],
) -> io::Result<()> {
    io.write_all(&(blocks.len() as u16).to_be_bytes()).await?;
    for b in blocks {
        io.write_all(&block_header(b.cid(), b.data().len())).await?;
        io.write_all(b.data()).await?;
    }
    Ok(())
}

/// Read one frame of at most `limit` bytes (a longer one is refused before its body is read)
/// and the end of the stream. `Err(_)`: the stream failed or ended early (a fault);
/// `Ok(Err(_))`: the peer broke the framing (malformed).
async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
) -> io::Result<Result<Vec<u8>, String>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Ok(Err(WireError::TooLong(limit).to_string()));
    }
    // Grown as bytes arrive, so a peer that announces 64 MiB and stalls costs what it sent.
    let mut buf = Vec::with_capacity(len.min(64 << 10));
    let got = io.take(len as u64).read_to_end(&mut buf).await?;
    if got < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("stream ended after {got} of {len} bytes"),
        ));
    }
    let mut probe = [0u8; 1];
    if io.read(&mut probe).await? > 0 {
        return Ok(Err(WireError::Trailing(1).to_string()));
    }
    Ok(Ok(buf))
}

/// Write `body` as one frame (its length, then its bytes).
async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message over 4 GiB"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(body).await
}

/// The body of the one frame that `bytes` must be (for tests and fuzzing): a cut frame and a
/// malformed one are both errors here.
pub fn unframe(bytes: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    match futures::executor::block_on(read_frame(&mut &bytes[..], limit)) {
        Ok(r) => r,
        Err(e) => Err(e.to_string()),
    }
}

/// `body` as one frame, in memory (for tests and fuzzing).
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A request as read from a peer: decoded, or why it could not be. Malformed requests are
/// values, not I/O errors, because libp2p reports failed reads of requests to no one, and
/// the event loop must see them to ban the sender.
pub(crate) type Inbound<T> = Result<T, String>;

/// A blocks response: the blocks this node sends, or what was read from a peer (blocks not
/// yet checked against their CIDs, or why the response is malformed).
#[derive(Debug)]
pub(crate) enum BlocksResponse {
    Out(Vec<Block>),
    In(Result<Vec<(ContentId, Vec<u8>)>, WireError>),
}

/// What differs between our request-response protocols: message types, limits, encodings.
pub(crate) trait Wire: Send + Sync + Clone + 'static {
    type Request: Send;
    type Response: Send;
    fn max_request(&self) -> usize;
    fn encode_request(req: &Self::Request) -> Vec<u8>;
    fn decode_request(bytes: Vec<u8>) -> Result<Self::Request, String>;
    fn read_response<T: AsyncRead + Unpin + Send>(
        &self,
        io: &mut T,
    ) -> impl Future<Output = io::Result<Self::Response>> + Send;
    fn write_response<T: AsyncWrite + Unpin + Send>(
        io: &mut T,
        res: Self::Response,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

/// `/sov/blocks/2`: want-lists out, blocks in, parsed as they arrive (the client verifies
/// them, and a malformed response is a value, so it can tell a lying peer from a broken
/// stream).
#[derive(Debug, Clone, Default)]
pub(crate) struct Blocks;

impl Wire for Blocks {
    type Request = Vec<ContentId>;
    type Response = BlocksResponse;
    fn max_request(&self) -> usize {
        MAX_WANT_BYTES
    }
    fn encode_request(req: &Vec<ContentId>) -> Vec<u8> {
        encode_want(req)
    }
    fn decode_request(bytes: Vec<u8>) -> Result<Vec<ContentId>, String> {
        decode_want(&bytes).map_err(|e| e.to_string())
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &self,
        io: &mut T,
    ) -> io::Result<BlocksResponse> {
        Ok(BlocksResponse::In(read_blocks(io).await?))
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        io: &mut T,
        res: BlocksResponse,
    ) -> io::Result<()> {
        match res {
            BlocksResponse::Out(blocks) => write_blocks(io, &blocks).await,
            BlocksResponse::In(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a received response cannot be sent",
            )),
        }
    }
}

/// `/sov/node/5` and `/sov/bulk/3`: opaque bytes both ways, at most `max` each.
#[derive(Debug, Clone)]
pub(crate) struct Direct {
    pub(crate) max: usize,
}

impl Wire for Direct {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    fn max_request(&self) -> usize {
        self.max
    }
    fn encode_request(req: &Vec<u8>) -> Vec<u8> {
        req.clone()
    }
    fn decode_request(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(bytes)
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(&self, io: &mut T) -> io::Result<Vec<u8>> {
        read_frame(io, self.max)
            .await?
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &res).await
    }
}

/// The request-response codec of a [`Wire`] protocol: every message read whole with its
/// limit, then decoded.
#[derive(Debug, Clone, Default)]
pub(crate) struct Codec<W>(pub(crate) W);

impl<W: Wire> request_response::Codec for Codec<W> {
    type Protocol = StreamProtocol;
    type Request = Inbound<W::Request>;
    type Response = W::Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Request> {
        Ok(read_frame(io, self.0.max_request())
            .await?
            .and_then(W::decode_request))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Response> {
        self.0.read_response(io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Self::Request,
    ) -> io::Result<()> {
        let req = req.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        write_frame(io, &W::encode_request(&req)).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Self::Response,
    ) -> io::Result<()> {
        W::write_response(io, res).await?;
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
        // Well-formed blocks, but more of them than a response may carry: refused once the
        // limit is passed, not buffered.
        let big = vec![7u8; MAX_BLOCK];
        let cid = ContentId::of(Codec::Raw, &big);
        let many: Vec<(ContentId, &[u8])> = (0..20).map(|_| (cid, big.as_slice())).collect();
        assert_eq!(
            decode_blocks(&encode_blocks(&many)),
            Err(WireError::TooLong(MAX_BLOCKS_BYTES))
        );
    }

    /// Finding 10 of issue 14: a request cut short by a stall or a cut connection is a fault
    /// (an I/O error, never punished); only a broken frame is malformed (the peer is banned).
    #[test]
    fn a_cut_message_is_a_fault_not_malice() {
        let read = |bytes: &[u8]| {
            futures::executor::block_on(async {
                let mut codec = Codec(Direct { max: 1024 });
                request_response::Codec::read_request(&mut codec, &NODE_PROTOCOL, &mut &bytes[..])
                    .await
            })
        };
        let whole = frame(b"a complete message");
        assert_eq!(read(&whole).unwrap().unwrap(), b"a complete message");
        for cut in 0..whole.len() {
            let e = read(&whole[..cut]).expect_err("a cut message must be an I/O error");
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
        // Malformed: more than the limit announced (refused before reading it), bytes after.
        assert!(read(&frame(&[0u8; 1025])).unwrap().is_err());
        let mut trailing = whole.clone();
        trailing.push(0);
        assert!(read(&trailing).unwrap().is_err());
        // A blocks response cut short is a fault too, not a malformed response.
        let a = ContentId::of(Codec::Raw, b"a");
        let good = encode_blocks(&[(a, b"abc")]);
        for cut in 0..good.len() {
            let r = futures::executor::block_on(read_blocks(&mut &good[..cut]));
            assert_eq!(r.expect_err("cut").kind(), io::ErrorKind::UnexpectedEof);
        }
    }
}
