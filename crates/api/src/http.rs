//! The HTTP server under the API: hyper's HTTP/1.1 with the limits `axum::serve` lacks.
//!
//! - **Header timeout**: a connection must send a request's whole head within
//!   [`Limits::header_timeout`] of being opened or of its previous answer, or it is closed.
//!   This covers slow-headers clients and idle keep-alive connections alike.
//! - **A cap on open connections** ([`Limits::max_connections`], kept below the process's
//!   file-descriptor limit, which [`raise_fd_limit`] lifts to its hard maximum at start).
//!   When a connection arrives at the cap, the connection that has been quiet longest and has
//!   no request in flight is closed to make room; failing that, one whose request has made no
//!   progress (no byte read or written) for [`Limits::stall_timeout`]; failing that, the new
//!   connection is refused. So a flood of idle connections costs the node at most the cap, and
//!   `/health` from a real client still gets in.

use std::{
    collections::HashMap,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, body::Body, extract::Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::Notify,
};
use tower::ServiceExt as _;
use tracing::{debug, warn};

/// The server's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most open connections (lowered to half the file-descriptor limit if that is lower).
    pub max_connections: usize,
    /// Longest wait for a request's head, from the connection's start or its last answer.
    pub header_timeout: Duration,
    /// How long a request may go without reading or writing a byte before its connection may
    /// be closed to make room for a new one (only when the connection cap is reached).
    pub stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(120),
        }
    }
}

/// Raise this process's soft limit on open files to its hard limit (where the system allows)
/// and return the soft limit now in force (`None` where it cannot be read).
#[cfg(unix)]
pub fn raise_fd_limit() -> Option<u64> {
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut lim = getrlimit(Resource::Nofile);
        if let (Some(cur), Some(max)) = (lim.current, lim.maximum)
            && cur < max
        {
            lim.current = Some(max);
            if let Err(e) = setrlimit(Resource::Nofile, lim) {
                debug!("could not raise the open-file limit to {max}: {e}");
            }
        }
        Some(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
    }
}

/// Raise this process's soft limit on open files (nothing to do here).
#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<u64> {
    None
}

/// One open connection, as the registry sees it.
struct Slot {
    /// Milliseconds since the server started, when it last read or wrote a byte.
    active: Arc<AtomicU64>,
    /// Requests in flight (answers still being written count).
    busy: Arc<AtomicUsize>,
    /// Told when the connection must close to make room.
    close: Arc<Notify>,
    /// Already told to close.
    closing: bool,
}

/// The open connections.
struct Registry {
    started: Instant,
    slots: Mutex<HashMap<u64, Slot>>,
}

impl Registry {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Make room for one more connection under `limits`: `true` if there is room (possibly
    /// after telling one connection to close).
    fn make_room(&self, max: usize, stall: Duration) -> bool {
        let now = self.now();
        let mut slots = self.slots();
        let open = slots.values().filter(|s| !s.closing).count();
        if open < max {
            return true;
        }
        let idle = slots
            .iter()
            .filter(|(_, s)| !s.closing && s.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|(_, s)| s.active.load(Ordering::Relaxed))
            .map(|(k, _)| *k);
        let stalled = || {
            slots
                .iter()
                .filter(|(_, s)| {
                    !s.closing
                        && now.saturating_sub(s.active.load(Ordering::Relaxed))
                            >= stall.as_millis() as u64
                })
                .min_by_key(|(_, s)| s.active.load(Ordering::Relaxed))
                .map(|(k, _)| *k)
        };
        match idle.or_else(stalled) {
            Some(victim) => {
                if let Some(s) = slots.get_mut(&victim) {
                    s.closing = true;
                    s.close.notify_one();
                }
                true
            }
            None => false,
        }
    }
}

/// Serve `router` on `listener` under `limits` until `shutdown` completes; then stop
/// accepting, let open requests finish (closing idle connections), and return.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let fd_cap = raise_fd_limit().map_or(usize::MAX, |n| (n / 2) as usize);
    let max = limits.max_connections.min(fd_cap).max(1);
    if max < limits.max_connections {
        warn!(
            "open-file limit allows {max} API connections, not {}",
            limits.max_connections
        );
    }
    let registry = Arc::new(Registry {
        started: Instant::now(),
        slots: Mutex::new(HashMap::new()),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next_id = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait, go on.
                    debug!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        if !registry.make_room(max, limits.stall_timeout) {
            debug!(%peer, "connection refused: {max} connections, all busy");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let active = Arc::new(AtomicU64::new(registry.now()));
        let busy = Arc::new(AtomicUsize::new(0));
        let close = Arc::new(Notify::new());
        registry.slots().insert(
            id,
            Slot {
                active: active.clone(),
                busy: busy.clone(),
                close: close.clone(),
                closing: false,
            },
        );
        let io = TokioIo::new(Tracked {
            inner: stream,
            active,
            registry: registry.clone(),
        });
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let router = router.clone();
            let guard = Busy::new(busy.clone());
            async move {
                let mut req = req.map(Body::new);
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let res = router.oneshot(req).await.unwrap_or_else(|e| match e {});
                // The request counts as busy until its answer's body is fully written.
                Ok::<_, std::convert::Infallible>(res.map(|inner| Guarded {
                    inner,
                    _busy: guard,
                }))
            }
        });
        let mut stop = stop_rx.clone();
        let registry = registry.clone();
        let header_timeout = limits.header_timeout;
        tasks.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            let mut graceful = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            debug!(%peer, "connection ended: {e}");
                        }
                        break;
                    }
                    () = close.notified() => {
                        debug!(%peer, "connection closed to make room");
                        break;
                    }
                    _ = stop.changed(), if !graceful => {
                        graceful = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            registry.slots().remove(&id);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Open requests finish (a streamed answer may take a while); idle connections close now.
    let drained = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .is_err()
    {
        tasks.shutdown().await;
    }
    Ok(())
}

/// Counts a request in flight while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(n: Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body that keeps its request counted as busy until hyper is done with it.
struct Guarded {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A socket that notes when it last moved a byte.
struct Tracked<T> {
    inner: T,
    active: Arc<AtomicU64>,
    registry: Arc<Registry>,
}

impl<T> Tracked<T> {
    fn touch(&self) {
        self.active.store(self.registry.now(), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
