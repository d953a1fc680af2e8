//! Prometheus metrics: calls by method and gRPC code, call latency, pool use,
//! database health, client connections and the event log, served as text on
//! `GET /metrics` of `--metrics-addr`.
//!
//! The registry is the `prometheus` crate's, one per server (tests run several
//! in one process). Every method's counters and latency histogram are created
//! when the server starts, from the methods the server serves (paths are the
//! caller's text: an unknown one shares the label `unknown`), so recording a
//! call is a map read and atomic increments: no lock, no allocation. The
//! endpoint is served by hyper (HTTP/1.1, one request per connection).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use prost::Message;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower::{Layer, Service};

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The names of the gRPC status codes, by number.
const CODES: [&str; 17] = [
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

/// The label of the methods the server does not serve.
const UNKNOWN_METHOD: &str = "unknown";

/// The number of a gRPC status code (`UNKNOWN` for anything else).
fn code_number(code: &str) -> usize {
    code.parse::<usize>()
        .ok()
        .filter(|n| *n < CODES.len())
        .unwrap_or(2)
}

/// One method's series, created at start.
#[derive(Debug)]
struct MethodSeries {
    calls: [IntCounter; CODES.len()],
    latency: Histogram,
}

/// The service's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The index in `series` of each served method's path.
    methods: HashMap<String, usize>,
    /// Each served method's series, then those of unknown paths (last).
    series: Vec<MethodSeries>,
    database_up: IntGauge,
    pool_connections: IntGauge,
    pool_idle_connections: IntGauge,
    connections_open: IntGauge,
    connections_refused: IntCounter,
    event_slices: IntCounter,
    events_sliced: IntCounter,
    events_relayed: IntCounter,
    relay_lag: Gauge,
    calls_shed: IntCounter,
    watches_refused: IntCounter,
    calls_retried: IntCounter,
    pool_wait: Histogram,
}

/// The paths of every method the server serves: the loyalty services', health
/// and reflection.
fn served_methods() -> Vec<String> {
    let sets = [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = Vec::new();
    for set in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    if crate::auth::is_known_method(&path) && !methods.contains(&path) {
                        methods.push(path);
                    }
                }
            }
        }
    }
    methods
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every series of every served method.
    pub fn new() -> Self {
        let registry = Registry::new();
        // The names and help texts are constants: registering them cannot fail.
        fn registered<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
            registry
                .register(Box::new(metric.clone()))
                .expect("metric names are unique and valid");
            metric
        }
        let calls = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "loyalty_grpc_calls_total",
                    "Finished gRPC calls by method and status code.",
                ),
                &["method", "code"],
            )
            .expect("valid metric"),
        );
        let latency = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "loyalty_grpc_call_duration_seconds",
                    "gRPC call latency by method.",
                )
                .buckets(BUCKETS.to_vec()),
                &["method"],
            )
            .expect("valid metric"),
        );
        // Recorded from the database spans by the process's subscriber
        // (`telemetry::StatementLayer`).
        registered(&registry, crate::telemetry::statement_durations().clone());
        let mut methods = HashMap::new();
        let mut series = Vec::new();
        for method in served_methods().into_iter().chain([UNKNOWN_METHOD.to_owned()]) {
            series.push(MethodSeries {
                calls: CODES.map(|code| calls.with_label_values(&[method.as_str(), code])),
                latency: latency.with_label_values(&[method.as_str()]),
            });
            methods.insert(method, series.len() - 1);
        }
        let gauge =
            |name: &str, help: &str| registered(&registry, IntGauge::new(name, help).expect("valid metric"));
        let counter = |name: &str, help: &str| {
            registered(&registry, IntCounter::new(name, help).expect("valid metric"))
        };
        Self {
            methods,
            series,
            database_up: gauge(
                "loyalty_database_up",
                "Whether the database answered the last health ping.",
            ),
            pool_connections: gauge("loyalty_db_pool_connections", "Open database connections."),
            pool_idle_connections: gauge("loyalty_db_pool_idle_connections", "Idle database connections."),
            connections_open: gauge("loyalty_connections_open", "Open client connections."),
            connections_refused: counter(
                "loyalty_connections_refused_total",
                "Client connections closed at once: too many were open.",
            ),
            event_slices: counter(
                "loyalty_event_slices_total",
                "Slices of the event log this replica cut.",
            ),
            events_sliced: counter(
                "loyalty_events_sliced_total",
                "Events in the slices this replica cut.",
            ),
            events_relayed: counter(
                "loyalty_events_relayed_total",
                "Events this replica published to NATS JetStream.",
            ),
            relay_lag: registered(
                &registry,
                Gauge::new(
                    "loyalty_event_relay_lag_seconds",
                    "Age of the oldest event slice not yet published (as this replica's relay last saw it).",
                )
                .expect("valid metric"),
            ),
            calls_shed: counter(
                "loyalty_calls_shed_total",
                "Calls refused with RESOURCE_EXHAUSTED (OVERLOADED): --max-concurrent-calls were running.",
            ),
            watches_refused: counter(
                "loyalty_watches_refused_total",
                "Event watches refused with RESOURCE_EXHAUSTED (TOO_MANY_WATCHERS).",
            ),
            calls_retried: counter(
                "loyalty_calls_retried_total",
                "Attempts made again after the database aborted a call for a concurrent one.",
            ),
            pool_wait: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "loyalty_db_pool_wait_seconds",
                        "How long calls waited for a database connection of the pool.",
                    )
                    .buckets(BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }

    /// The histogram of the calls' waits for a database connection (a handle:
    /// cloning it is cheap).
    pub fn pool_wait(&self) -> Histogram {
        self.pool_wait.clone()
    }

    /// Counts a call shed because the server ran its maximum of calls.
    pub fn call_shed(&self) {
        self.calls_shed.inc();
    }

    /// Counts a watch refused because the server ran its maximum of watches.
    pub fn watch_refused(&self) {
        self.watches_refused.inc();
    }

    /// The counter of retried attempts (a handle: cloning it is cheap).
    pub fn retries(&self) -> IntCounter {
        self.calls_retried.clone()
    }

    /// The series of the method at `path` (those of unknown paths for a path
    /// the server does not serve): a map read.
    pub fn method(&self, path: &str) -> usize {
        self.methods.get(path).copied().unwrap_or(self.series.len() - 1)
    }

    /// Records one finished call of the method [`method`](Self::method) found,
    /// with the gRPC status number `code` (as in `grpc-status`).
    pub fn record_call(&self, method: usize, code: &str, seconds: f64) {
        if let Some(series) = self.series.get(method) {
            series.calls[code_number(code)].inc();
            series.latency.observe(seconds);
        }
    }

    /// Counts a client connection accepted.
    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    /// Counts a client connection closed.
    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// Counts a client connection closed at once because too many were open.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Counts a slice of the event log cut by this replica.
    pub fn slice_cut(&self, events: i32) {
        self.event_slices.inc();
        self.events_sliced.inc_by(u64::try_from(events).unwrap_or(0));
    }

    /// Counts events this replica published to NATS.
    pub fn events_relayed(&self, events: u64) {
        self.events_relayed.inc_by(events);
    }

    /// Records how long the oldest event not yet published has waited.
    pub fn set_relay_lag(&self, seconds: f64) {
        self.relay_lag.set(seconds);
    }

    /// Records whether the database answers (the health monitor calls this).
    pub fn set_database_up(&self, up: bool) {
        self.database_up.set(i64::from(up));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, pool: &PgPool) -> String {
        self.pool_connections.set(i64::from(pool.size()));
        self.pool_idle_connections
            .set(i64::try_from(pool.num_idle()).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %error, "encoding the metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped, with hyper:
/// HTTP/1.1, one request per connection, a bounded head.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, pool: PgPool) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, pool) = (metrics.clone(), pool.clone());
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let response = if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
                hyper::Response::builder()
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("connection", "close")
                    .body(Full::new(Bytes::from(metrics.render(&pool))))
            } else {
                hyper::Response::builder()
                    .status(hyper::StatusCode::NOT_FOUND)
                    .header("connection", "close")
                    .body(Full::new(Bytes::new()))
            };
            std::future::ready(Ok::<_, Infallible>(response.unwrap_or_default()))
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .max_buf_size(16 * 1024)
                .keep_alive(false)
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await;
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
        // Only served methods get a label of their own: paths are caller-controlled.
        let method = self.metrics.method(request.uri().path());
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
                    .unwrap_or("0"),
                Err(_) => "2",
            };
            metrics.record_call(method, code, started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn a_call_lands_in_its_method_its_code_and_its_buckets() {
        let metrics = Metrics::new();
        let method = metrics.method("/loyalty.v1.Points/GetBalance");
        metrics.record_call(method, "5", 0.003);
        let registry = metrics.registry.gather();
        let mut text = Vec::new();
        TextEncoder::new().encode(&registry, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let calls = "loyalty_grpc_calls_total{code=\"NOT_FOUND\",method=\"/loyalty.v1.Points/GetBalance\"}";
        assert_eq!(line(&text, calls), Some(format!("{calls} 1").as_str()));
        let bucket = |le: &str| {
            format!(
                "loyalty_grpc_call_duration_seconds_bucket{{method=\"/loyalty.v1.Points/GetBalance\",le=\"{le}\"}}"
            )
        };
        assert_eq!(
            line(&text, &bucket("0.0025")),
            Some(format!("{} 0", bucket("0.0025")).as_str())
        );
        assert_eq!(
            line(&text, &bucket("0.005")),
            Some(format!("{} 1", bucket("0.005")).as_str())
        );
    }

    #[test]
    fn a_path_the_server_does_not_serve_shares_the_unknown_series() {
        let metrics = Metrics::new();
        assert_eq!(metrics.method("/evil/Path"), metrics.method("/other/Thing"));
        assert_ne!(
            metrics.method("/loyalty.v1.Points/GetBalance"),
            metrics.method("/evil/Path")
        );
        assert_ne!(
            metrics.method("/grpc.health.v1.Health/Check"),
            metrics.method("/evil/Path")
        );
        assert_ne!(
            metrics.method("/loyalty.v1.Events/Watch"),
            metrics.method("/evil/Path")
        );
    }

    #[test]
    fn status_numbers_have_their_names() {
        assert_eq!(CODES[code_number("0")], "OK");
        assert_eq!(CODES[code_number("3")], "INVALID_ARGUMENT");
        assert_eq!(CODES[code_number("16")], "UNAUTHENTICATED");
        assert_eq!(CODES[code_number("99")], "UNKNOWN");
        assert_eq!(CODES[code_number("x")], "UNKNOWN");
    }
}
