//! Client connections, bounded: how many may be open, and how long one may sit
//! with no call.
//!
//! [`incoming`] accepts TCP connections for the gRPC server. Past
//! `max_connections` open ones it closes a new connection at once (and says so
//! in the log and the metrics) instead of running the process out of file
//! descriptors. Each accepted [`Conn`] counts the calls open on it (the call
//! layer marks them through [`ConnInfo`]); once none has been open for the idle
//! timeout, or none is open when the server drains, the connection is closed.
//! A client whose connection closed while idle reconnects on its next call.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

use crate::metrics::Metrics;

/// File descriptors kept for everything but client connections: the database
/// pool is added to it.
const RESERVED_FDS: u64 = 64;

/// When the server drains, how long a connection with no open call stays, so
/// that the last response is flushed and the GOAWAY read.
const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// Raises the process's open-file limit to its hard limit, and returns how many
/// client connections fit in it beside `db_connections` and a reserve.
pub fn connection_capacity(db_connections: u32) -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    let reserve = RESERVED_FDS + u64::from(db_connections);
    usize::try_from(limit.rlim_cur.saturating_sub(reserve)).ok()
}

/// Accepts connections from `listener`, at most `max_connections` open at once.
pub fn incoming(
    listener: TcpListener,
    max_connections: usize,
    idle_timeout: Duration,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<Conn>> {
    let open = Arc::new(Semaphore::new(max_connections.max(1)));
    let state = (listener, open, None::<Instant>);
    futures::stream::unfold(state, move |(listener, open, mut last_warning)| {
        let shutdown = shutdown.clone();
        let metrics = metrics.clone();
        async move {
            loop {
                let (socket, remote) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, or a connection reset before it
                        // was accepted: wait a little rather than spin.
                        tracing::warn!(error = %error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = open.clone().try_acquire_owned() else {
                    metrics.connection_refused();
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(
                            max_connections,
                            remote = %remote,
                            "too many open connections: closing new ones"
                        );
                        last_warning = Some(Instant::now());
                    }
                    drop(socket);
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let conn = Conn::new(socket, remote, permit, idle_timeout, &shutdown, metrics);
                return Some((Ok(conn), (listener, open, last_warning)));
            }
        }
    })
}

/// What the call layer sees of the connection a call came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    state: Arc<ConnState>,
}

impl ConnInfo {
    /// Marks a call open on this connection until the guard is dropped.
    pub fn stream_started(&self) -> StreamGuard {
        self.state.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.state.clone())
    }
}

/// Keeps a call counted as open on its connection.
#[derive(Debug)]
pub struct StreamGuard(Arc<ConnState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.touch();
        // Release: a reader that sees no call open also sees when the last ended.
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The connection may now be idle: let it arm its timer.
            self.0.reader.wake();
        }
    }
}

/// The calls open on a connection, and since when it has had none.
#[derive(Debug)]
struct ConnState {
    opened_at: Instant,
    open: AtomicUsize,
    /// Milliseconds from `opened_at` to the end of the last call.
    idle_since_ms: AtomicU64,
    /// The connection's reader, woken when its last call ends.
    reader: AtomicWaker,
}

impl ConnState {
    fn touch(&self) {
        let ms = u64::try_from(self.opened_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_since(&self) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.opened_at + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed)))
    }
}

/// An accepted client connection.
pub struct Conn {
    socket: TcpStream,
    info: ConnInfo,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// When this connection first saw the server draining.
    draining_since: Option<Instant>,
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn new(
        socket: TcpStream,
        remote_addr: SocketAddr,
        permit: OwnedSemaphorePermit,
        idle_timeout: Duration,
        shutdown: &CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        let opened_at = Instant::now();
        metrics.connection_opened();
        Self {
            socket,
            info: ConnInfo {
                remote_addr,
                state: Arc::new(ConnState {
                    opened_at,
                    open: AtomicUsize::new(0),
                    idle_since_ms: AtomicU64::new(0),
                    reader: AtomicWaker::new(),
                }),
            },
            idle_timeout,
            idle: Box::pin(tokio::time::sleep_until(opened_at + idle_timeout)),
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
            draining_since: None,
            metrics,
            _permit: permit,
        }
    }

    /// Whether the connection should close now: no call open for the idle
    /// timeout, or for a short grace once the server drains. Registers the
    /// wake-ups.
    fn should_close(&mut self, cx: &mut Context<'_>) -> bool {
        self.info.state.reader.register(cx.waker());
        if self.draining_since.is_none() && self.shutdown.as_mut().poll(cx).is_ready() {
            self.draining_since = Some(Instant::now());
        }
        let Some(idle_since) = self.info.state.idle_since() else {
            return false;
        };
        let expires = match self.draining_since {
            Some(draining_since) => idle_since.max(draining_since) + self.idle_timeout.min(DRAIN_GRACE),
            None => idle_since + self.idle_timeout,
        };
        if self.idle.deadline() != expires {
            self.idle.as_mut().reset(expires);
        }
        self.idle.as_mut().poll(cx).is_ready()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.should_close(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "closing a connection with no open call",
            )));
        }
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}
