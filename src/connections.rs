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
//!
//! With TLS configured ([`crate::tls`]), each accepted connection first runs
//! the handshake, holding its slot, within the handshake timeout; handshakes
//! run side by side. The verified client certificate, if any, reaches the calls
//! in [`ConnInfo::client_cert`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

use crate::metrics::Metrics;
use crate::tls::Tls;

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

/// How accepted connections become TLS ones; none for plain TCP.
#[derive(Debug, Clone)]
pub struct TlsAccept {
    /// The configuration in force (reloadable).
    pub tls: Arc<Tls>,
    /// How long a client may take to finish the handshake; then its connection
    /// (and the slot it holds) is closed.
    pub handshake_timeout: Duration,
}

/// A TLS handshake under way; yields the connection once it is done.
type Handshake = Pin<Box<dyn Future<Output = Option<Conn>> + Send>>;

/// What the accept loop keeps between connections.
struct Accepting {
    listener: TcpListener,
    open: Arc<Semaphore>,
    last_warning: Option<Instant>,
    /// Handshakes run side by side, so a slow client does not hold up the others.
    handshakes: FuturesUnordered<Handshake>,
}

/// Accepts connections from `listener`, at most `max_connections` open at once
/// (a connection in its TLS handshake counts).
pub fn incoming(
    listener: TcpListener,
    max_connections: usize,
    idle_timeout: Duration,
    tls: Option<TlsAccept>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<Conn>> {
    let state = Accepting {
        listener,
        open: Arc::new(Semaphore::new(max_connections.max(1))),
        last_warning: None,
        handshakes: FuturesUnordered::new(),
    };
    futures::stream::unfold(state, move |mut state| {
        let shutdown = shutdown.clone();
        let metrics = metrics.clone();
        let tls = tls.clone();
        async move {
            loop {
                let (socket, remote) = tokio::select! {
                    accepted = state.listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of file descriptors, or a connection reset before
                            // it was accepted: wait a little rather than spin.
                            tracing::warn!(error = %error, "cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    Some(handshaken) = state.handshakes.next(), if !state.handshakes.is_empty() => {
                        match handshaken {
                            Some(conn) => return Some((Ok(conn), state)),
                            None => continue,
                        }
                    }
                };
                let Ok(permit) = state.open.clone().try_acquire_owned() else {
                    metrics.connection_refused();
                    if state
                        .last_warning
                        .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
                    {
                        tracing::warn!(
                            max_connections,
                            remote = %remote,
                            "too many open connections: closing new ones"
                        );
                        state.last_warning = Some(Instant::now());
                    }
                    drop(socket);
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let accepted = Accepted {
                    remote,
                    permit,
                    idle_timeout,
                    shutdown: shutdown.clone(),
                    metrics: metrics.clone(),
                };
                match &tls {
                    None => return Some((Ok(accepted.into_conn(Io::Plain(socket), None)), state)),
                    Some(tls) => state
                        .handshakes
                        .push(Box::pin(accepted.handshake(socket, tls.clone()))),
                }
            }
        }
    })
}

/// A connection accepted and given its slot, not yet serving.
struct Accepted {
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Accepted {
    fn into_conn(self, io: Io, client_cert: Option<ClientCert>) -> Conn {
        Conn::new(
            io,
            self.remote,
            client_cert,
            self.permit,
            self.idle_timeout,
            &self.shutdown,
            self.metrics,
        )
    }

    /// Runs the TLS handshake, bounded by the handshake timeout; `None` when it
    /// fails (logged: a client's mistake or a scanner, not the server's).
    async fn handshake(self, socket: TcpStream, accept: TlsAccept) -> Option<Conn> {
        let remote = self.remote;
        let handshake = accept.tls.acceptor().accept(socket);
        let stream = match tokio::time::timeout(accept.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::info!(remote = %remote, error = %error, "tls handshake failed");
                return None;
            }
            Err(_) => {
                tracing::info!(remote = %remote, "tls handshake timed out");
                return None;
            }
        };
        let client_cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(<[_]>::first)
            .map(|certificate| ClientCert {
                caller: crate::tls::caller_of(certificate).map(Arc::from),
            });
        Some(self.into_conn(Io::Tls(Box::new(stream)), client_cert))
    }
}

/// A client certificate the TLS handshake verified.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The calling service it names ([`crate::tls::caller_of`]); `None` when
    /// it names none.
    pub caller: Option<Arc<str>>,
}

/// What the call layer sees of the connection a call came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The client's verified certificate, on a TLS connection where it sent one.
    pub client_cert: Option<ClientCert>,
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

/// A connection's byte stream: plain TCP, or TLS over it.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted client connection.
pub struct Conn {
    socket: Io,
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
        socket: Io,
        remote_addr: SocketAddr,
        client_cert: Option<ClientCert>,
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
                client_cert,
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
        match &mut self.socket {
            Io::Plain(socket) => Pin::new(socket).poll_read(cx, buf),
            Io::Tls(socket) => Pin::new(socket).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.socket {
            Io::Plain(socket) => Pin::new(socket).poll_write(cx, buf),
            Io::Tls(socket) => Pin::new(socket).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.socket {
            Io::Plain(socket) => Pin::new(socket).poll_write_vectored(cx, bufs),
            Io::Tls(socket) => Pin::new(socket).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.socket {
            Io::Plain(socket) => socket.is_write_vectored(),
            Io::Tls(socket) => socket.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.socket {
            Io::Plain(socket) => Pin::new(socket).poll_flush(cx),
            Io::Tls(socket) => Pin::new(socket).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.socket {
            Io::Plain(socket) => Pin::new(socket).poll_shutdown(cx),
            Io::Tls(socket) => Pin::new(socket).poll_shutdown(cx),
        }
    }
}
