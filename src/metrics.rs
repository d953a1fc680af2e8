//! Prometheus metrics: calls by method and gRPC code, call latency, pool use and
//! database health, served as text on `GET /metrics` of `--metrics-addr`.
//!
//! The registry is small and hand-rolled (a mutex-guarded map per family), which
//! is plenty for a few dozen methods; the lock is held for a map update only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::{Layer, Service};

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The service's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    calls: Mutex<BTreeMap<(String, &'static str), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    database_up: AtomicBool,
    connections_open: AtomicI64,
    connections_refused: AtomicU64,
    event_slices: AtomicU64,
    events_sliced: AtomicU64,
    events_relayed: AtomicU64,
    /// Seconds, as `f64` bits.
    relay_lag: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map half-updated in a way that
    // matters for counters; keep serving them.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The name of a gRPC status code number.
fn code_name(code: &str) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    code.parse::<usize>()
        .ok()
        .and_then(|n| NAMES.get(n).copied())
        .unwrap_or("UNKNOWN")
}

impl Metrics {
    /// Records one finished call.
    pub fn record_call(&self, method: &str, code: &'static str, seconds: f64) {
        *lock(&self.calls).entry((method.to_owned(), code)).or_default() += 1;
        let mut latency = lock(&self.latency);
        let histogram = latency.entry(method.to_owned()).or_default();
        for (bound, count) in BUCKETS.iter().zip(histogram.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// Counts a client connection accepted.
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a client connection closed.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a client connection closed at once because too many were open.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a slice of the event log cut by this replica.
    pub fn slice_cut(&self, events: i32) {
        self.event_slices.fetch_add(1, Ordering::Relaxed);
        self.events_sliced
            .fetch_add(u64::try_from(events).unwrap_or(0), Ordering::Relaxed);
    }

    /// Counts events this replica published to NATS.
    pub fn events_relayed(&self, events: u64) {
        self.events_relayed.fetch_add(events, Ordering::Relaxed);
    }

    /// Records how long the oldest event not yet published has waited.
    pub fn set_relay_lag(&self, seconds: f64) {
        self.relay_lag.store(seconds.to_bits(), Ordering::Relaxed);
    }

    /// Records whether the database answers (the health monitor calls this).
    pub fn set_database_up(&self, up: bool) {
        self.database_up.store(up, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, pool: &PgPool) -> String {
        let mut out = String::new();
        out.push_str("# HELP loyalty_grpc_calls_total Finished gRPC calls by method and status code.\n");
        out.push_str("# TYPE loyalty_grpc_calls_total counter\n");
        for ((method, code), count) in lock(&self.calls).iter() {
            let _ = writeln!(
                out,
                "loyalty_grpc_calls_total{{method=\"{method}\",code=\"{code}\"}} {count}"
            );
        }
        out.push_str("# HELP loyalty_grpc_call_duration_seconds gRPC call latency by method.\n");
        out.push_str("# TYPE loyalty_grpc_call_duration_seconds histogram\n");
        for (method, h) in lock(&self.latency).iter() {
            for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    out,
                    "loyalty_grpc_call_duration_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "loyalty_grpc_call_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "loyalty_grpc_call_duration_seconds_sum{{method=\"{method}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "loyalty_grpc_call_duration_seconds_count{{method=\"{method}\"}} {}",
                h.count
            );
        }
        let up = u8::from(self.database_up.load(Ordering::Relaxed));
        let _ = write!(
            out,
            "# HELP loyalty_database_up Whether the database answered the last health ping.\n\
             # TYPE loyalty_database_up gauge\nloyalty_database_up {up}\n\
             # HELP loyalty_db_pool_connections Open database connections.\n\
             # TYPE loyalty_db_pool_connections gauge\nloyalty_db_pool_connections {}\n\
             # HELP loyalty_db_pool_idle_connections Idle database connections.\n\
             # TYPE loyalty_db_pool_idle_connections gauge\nloyalty_db_pool_idle_connections {}\n\
             # HELP loyalty_connections_open Open client connections.\n\
             # TYPE loyalty_connections_open gauge\nloyalty_connections_open {}\n\
             # HELP loyalty_connections_refused_total Client connections closed at once: too many were open.\n\
             # TYPE loyalty_connections_refused_total counter\nloyalty_connections_refused_total {}\n\
             # HELP loyalty_event_slices_total Slices of the event log this replica cut.\n\
             # TYPE loyalty_event_slices_total counter\nloyalty_event_slices_total {}\n\
             # HELP loyalty_events_sliced_total Events in the slices this replica cut.\n\
             # TYPE loyalty_events_sliced_total counter\nloyalty_events_sliced_total {}\n\
             # HELP loyalty_events_relayed_total Events this replica published to NATS JetStream.\n\
             # TYPE loyalty_events_relayed_total counter\nloyalty_events_relayed_total {}\n\
             # HELP loyalty_event_relay_lag_seconds Age of the oldest event slice not yet published (as this replica's relay last saw it).\n\
             # TYPE loyalty_event_relay_lag_seconds gauge\nloyalty_event_relay_lag_seconds {}\n",
            pool.size(),
            pool.num_idle(),
            self.connections_open.load(Ordering::Relaxed),
            self.connections_refused.load(Ordering::Relaxed),
            self.event_slices.load(Ordering::Relaxed),
            self.events_sliced.load(Ordering::Relaxed),
            self.events_relayed.load(Ordering::Relaxed),
            f64::from_bits(self.relay_lag.load(Ordering::Relaxed)),
        );
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped. Each connection
/// gets one response and is closed.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, pool: PgPool) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, pool) = (metrics.clone(), pool.clone());
        tokio::spawn(async move {
            let mut request = Vec::with_capacity(1024);
            let mut buffer = [0u8; 1024];
            // Read the request head (bounded), ignoring any body.
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let response = if request.starts_with(b"GET /metrics ") {
                let body = metrics.render(&pool);
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
            };
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// The layer timing every call and counting it by its gRPC status.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`MetricsLayer`] wraps around the router.
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> Service<http::Request<B>> for MetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        // Only known methods get a label of their own: paths are caller-controlled.
        let method = if crate::auth::is_known_method(path) {
            path.to_owned()
        } else {
            "unknown".to_owned()
        };
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            // A unary error is "trailers-only": its status is in the headers. A
            // response without it carries OK in its trailers.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or("OK", code_name),
                Err(_) => "UNKNOWN",
            };
            metrics.record_call(&method, code, started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_lands_in_its_bucket_and_the_ones_above() {
        let metrics = Metrics::default();
        metrics.record_call("/m", "OK", 0.003);
        let latency = lock(&metrics.latency);
        let h = &latency["/m"];
        assert_eq!(&h.counts[..4], &[0, 0, 1, 1]);
        assert_eq!(h.count, 1);
    }

    #[test]
    fn status_numbers_have_their_names() {
        assert_eq!(code_name("0"), "OK");
        assert_eq!(code_name("3"), "INVALID_ARGUMENT");
        assert_eq!(code_name("16"), "UNAUTHENTICATED");
        assert_eq!(code_name("99"), "UNKNOWN");
    }
}
