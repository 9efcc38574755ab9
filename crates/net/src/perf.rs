//! The standard libp2p `/perf/1.0.0` protocol, so our throughput can be compared with
//! published libp2p figures.
//!
//! The client opens a stream, writes the number of bytes it wants back (u64 big-endian),
//! uploads its bytes and closes its side; the server reads to the end, then sends the bytes
//! asked for and closes. The server caps what it sends and how many streams it serves at once.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::Semaphore;

use crate::{Error, Result};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/perf/1.0.0");
/// Most bytes the server sends back on one stream.
pub const MAX_DOWNLOAD: u64 = 16 << 30;
/// Streams served at once.
const MAX_STREAMS: usize = 4;
const BUF: usize = 256 << 10;

/// What one perf run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerfReport {
    /// Bytes sent.
    pub uploaded: u64,
    /// Bytes received.
    pub downloaded: u64,
    /// Time to send the upload (until the server began answering).
    pub upload_time: Duration,
    /// Time to receive the download.
    pub download_time: Duration,
}

impl PerfReport {
    /// Upload throughput in bits per second.
    pub fn upload_bps(&self) -> f64 {
        self.uploaded as f64 * 8.0 / self.upload_time.as_secs_f64().max(1e-9)
    }
    /// Download throughput in bits per second.
    pub fn download_bps(&self) -> f64 {
        self.downloaded as f64 * 8.0 / self.download_time.as_secs_f64().max(1e-9)
    }
}

/// Serve `/perf/1.0.0` on this node.
pub(crate) fn serve(mut control: libp2p_stream::Control) -> Result<(), String> {
    let mut incoming = control
        .accept(PROTOCOL)
        .map_err(|e| format!("perf protocol: {e}"))?;
    let slots = Arc::new(Semaphore::new(MAX_STREAMS));
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            // Over the limit: drop the stream (the peer sees it reset).
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            tokio::spawn(async move {
                if let Err(e) = answer(stream).await {
                    tracing::debug!(%peer, "perf stream failed: {e}");
                }
                drop(permit);
            });
        }
    });
    Ok(())
}

async fn answer(mut stream: Stream) -> std::io::Result<()> {
    let mut len = [0u8; 8];
    stream.read_exact(&mut len).await?;
    let want = u64::from_be_bytes(len).min(MAX_DOWNLOAD);
    let mut buf = vec![0u8; BUF];
    while stream.read(&mut buf).await? > 0 {}
    buf.fill(0);
    send_zeros(&mut stream, want, &buf).await?;
    stream.close().await
}

async fn send_zeros(stream: &mut Stream, mut n: u64, buf: &[u8]) -> std::io::Result<()> {
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        stream.write_all(&buf[..k]).await?;
        n -= k as u64;
    }
    Ok(())
}

/// Run one perf measurement against `peer`.
pub(crate) async fn run(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    upload: u64,
    download: u64,
) -> Result<PerfReport> {
    let fail = |reason: String| Error::Request { peer, reason };
    let mut stream = control
        .open_stream(peer, PROTOCOL)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let start = Instant::now();
    let buf = vec![0u8; BUF];
    let io = async {
        stream.write_all(&download.to_be_bytes()).await?;
        send_zeros(&mut stream, upload, &buf).await?;
        stream.close().await?;
        let uploaded_at = Instant::now();
        let mut got = 0u64;
        let mut rbuf = vec![0u8; BUF];
        loop {
            let n = stream.read(&mut rbuf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok::<_, std::io::Error>((uploaded_at, got))
    };
    let (uploaded_at, got) = io.await.map_err(|e| fail(e.to_string()))?;
    Ok(PerfReport {
        uploaded: upload,
        downloaded: got,
        upload_time: uploaded_at - start,
        download_time: uploaded_at.elapsed(),
    })
}
