//! What happens to every call around its handler, so that no caller can occupy
//! the service without limit (SPEC §5, "Bounded everything").
//!
//! [`CallLayer`] sits in front of the services. For each call it:
//!
//! 1. names it: the caller's `x-request-id` when it sends a sane one, else a new
//!    one; it is on the call's log span and in the response metadata, and
//!    handlers read it from the call's [`CallContext`] ([`request_id`]), where
//!    they also declare the ids the call concerns ([`concerns`]); it continues
//!    the caller's trace (W3C `traceparent`, see [`trace`]);
//! 2. gives it a deadline: the caller's `grpc-timeout`, capped by the server's
//!    call timeout (the job timeout for the admin jobs);
//! 3. sheds it with `RESOURCE_EXHAUSTED` (and a `RetryInfo`) when
//!    `max_concurrent_calls` calls are already running, rather than queueing;
//! 4. reads its request within the deadline and the size limit (a larger one is
//!    `RESOURCE_EXHAUSTED`), and checks the gRPC framing: exactly one
//!    uncompressed message (anything else is `INVALID_ARGUMENT`);
//! 5. runs the handler in a task of its own, with the call's [`Budget`] and
//!    [`CallContext`], and
//!    answers `DEADLINE_EXCEEDED` when the deadline passes first. The task is
//!    never cancelled halfway through a database exchange (sqlx can then hand a
//!    connection back inside a transaction): PostgreSQL ends its statements and
//!    lock waits at the deadline instead, the transaction rolls back and the
//!    connection returns to the pool clean;
//! 6. retries, within the deadline, a call the database aborted for a concurrent
//!    one (`ABORTED`: the call's one transaction rolled back whole); the jobs,
//!    which run several transactions, are not retried;
//! 7. ends streaming responses (health `Watch`, reflection, the events
//!    `Watch`) with `UNAVAILABLE` when the server shuts down, so that draining
//!    never waits on them;
//! 8. pokes the event log when the call committed, so that its events reach
//!    the watches and the relay soon.
//!
//! The events `Watch` is a long stream: it has a place of its own among at
//! most `max_watchers` (so watchers never take the places of calls, nor the
//! reverse), and its deadline is the caller's capped by `watch_max`.
//!
//! Health and reflection are neither shed nor counted: a load balancer must
//! see the health of an overloaded server.

pub mod budget;
pub mod context;
mod framing;
pub mod trace;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use crate::connections::{ConnInfo, StreamGuard};
use crate::error::Error;
use crate::events::Commits;
use crate::metrics::Metrics;
use budget::Budget;
pub use context::{CallContext, caller, concerned_ids, concerns, request_id, set_caller};

/// The response header (and accepted request header) carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The bounds the layer applies (from [`crate::config::LimitsConfig`] and
/// [`crate::config::DatabaseConfig`]).
#[derive(Debug, Clone)]
pub struct CallLimits {
    pub call_timeout: Duration,
    pub job_timeout: Duration,
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    pub max_concurrent_calls: usize,
    pub max_request_bytes: usize,
    pub conflict_attempts: u32,
    pub max_watchers: usize,
    pub watch_max: Duration,
}

/// How a method is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A loyalty call: counted, deadline capped by the call timeout.
    Call,
    /// An admin job over every member: counted, capped by the job timeout.
    Job,
    /// Health: not counted (load balancers must see an overloaded server).
    Health,
    /// Reflection: a bidirectional stream, passed through, ended at shutdown.
    Reflection,
    /// The events `Watch`: a long server stream, among the watchers, capped by
    /// the watch timeout, ended at shutdown.
    Stream,
}

impl Kind {
    fn of(path: &str) -> Self {
        match path {
            "/loyalty.v1.Membership/EvaluateLevels"
            | "/loyalty.v1.Membership/RunDailyRewards"
            | "/loyalty.v1.Coupons/RunExpiryNotices" => Kind::Job,
            "/loyalty.v1.Events/Watch" => Kind::Stream,
            _ if path.starts_with("/grpc.health.v1.Health/") => Kind::Health,
            _ if path.starts_with("/grpc.reflection.") => Kind::Reflection,
            _ => Kind::Call,
        }
    }
}

/// The layer; see the module documentation.
#[derive(Debug, Clone)]
pub struct CallLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limits: CallLimits,
    in_flight: Arc<Semaphore>,
    watchers: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    commits: Arc<Commits>,
    metrics: Arc<Metrics>,
}

impl CallLayer {
    /// Applies `limits`; `shutdown` is cancelled when the server starts
    /// draining; `commits` is poked after a call that committed; shed calls
    /// and retries are counted in `metrics`.
    pub fn new(
        limits: CallLimits,
        shutdown: CancellationToken,
        commits: Arc<Commits>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let in_flight = Arc::new(Semaphore::new(limits.max_concurrent_calls.max(1)));
        let watchers = Arc::new(Semaphore::new(limits.max_watchers.max(1)));
        Self {
            shared: Arc::new(Shared {
                limits,
                in_flight,
                watchers,
                tasks: TaskTracker::new(),
                shutdown,
                commits,
                metrics,
            }),
        }
    }

    /// The tasks serving calls: the server waits for them when it drains.
    pub fn tasks(&self) -> TaskTracker {
        self.shared.tasks.clone()
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`CallLayer`] wraps around the router.
#[derive(Debug, Clone)]
pub struct CallService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Body>> for CallService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's usual dance).
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        // Counted open on its connection from now (hyper calls this on the
        // connection's task), so the connection cannot be idled out under it.
        let stream = request
            .extensions()
            .get::<ConnInfo>()
            .map(ConnInfo::stream_started);
        Box::pin(async move {
            let request_id = request_id_of(request.headers());
            let span = tracing::info_span!(
                "call",
                method = %method_label(request.uri().path()),
                request_id = %request_id,
                trace_id = tracing::field::Empty,
                otel.kind = "server",
            );
            let traceparent = trace::join(&span, request.headers());
            let context = CallContext::with_pool_wait(request_id.clone(), shared.metrics.pool_wait());
            // The layer's own failures are mapped in the call's context too, so
            // they name what the handler declared.
            let mut response = context
                .clone()
                .scope(async move {
                    shared
                        .serve(ready, request, stream, context, span.clone())
                        .instrument(span)
                        .await
                        .unwrap_or_else(|error| Status::from(error).into_http())
                })
                .await;
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            if let Some(value) = traceparent {
                response.headers_mut().insert(trace::TRACEPARENT_HEADER, value);
            }
            Ok(response)
        })
    }
}

impl Shared {
    async fn serve<S>(
        self: Arc<Self>,
        inner: S,
        request: Request<Body>,
        stream: Option<StreamGuard>,
        context: Arc<CallContext>,
        span: tracing::Span,
    ) -> Result<Response<Body>, Error>
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let kind = Kind::of(request.uri().path());
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if kind == Kind::Reflection {
            let Ok(response) = inner.oneshot(request).await;
            return Ok(self.response(response, kind, stream, None));
        }

        let cap = match kind {
            Kind::Job => self.limits.job_timeout,
            Kind::Stream => self.limits.watch_max,
            _ => self.limits.call_timeout,
        };
        let timeout = match grpc_timeout(request.headers())? {
            Some(asked) => asked.min(cap),
            None => cap,
        };
        // The work must be done by `deadline`; the answer goes out by `answer_at`,
        // still before the caller's own timer (see `margin`).
        let (now, margin) = (Instant::now(), margin(timeout));
        let deadline = now + timeout - margin;
        let answer_at = now + timeout - margin / 2;
        let permit = match kind {
            Kind::Health => None,
            Kind::Stream => Some(self.admit_watcher()?),
            _ => Some(self.admit()?),
        };

        let (parts, body) = request.into_parts();
        let message = tokio::select! {
            message = framing::read_message(body, self.limits.max_request_bytes) => message?,
            () = tokio::time::sleep_until(deadline) => {
                return Err(Error::DeadlineExceeded);
            }
            () = self.shutdown.cancelled() => return Err(Error::ShuttingDown),
        };

        let (statement_cap, lock_cap) = self.caps(kind);
        let budget = Budget::new(deadline, statement_cap, lock_cap);
        // A job runs several transactions: one that was aborted may follow one
        // that committed, so a job is not run again.
        let attempts = match kind {
            Kind::Job | Kind::Stream => 1,
            _ => self.limits.conflict_attempts.max(1),
        };
        let probe = context.clone();
        let task = self.tasks.spawn(
            context
                .scope(budget.scope(serve_with_retries(
                    inner,
                    parts,
                    message,
                    attempts,
                    self.metrics.retries(),
                )))
                .instrument(span),
        );
        let response = tokio::select! {
            joined = task => joined.map_err(|error| {
                Error::Internal(anyhow::Error::new(error).context("the call's task failed"))
            })?,
            () = tokio::time::sleep_until(answer_at) => {
                return Err(Error::DeadlineExceeded);
            }
        };
        if probe.committed() {
            self.commits.poke();
        }
        // The call's place among the running calls ends with its answer: a task
        // still finishing after its deadline is bounded by the database (its
        // statements end at the deadline) and by the pool, not by this limit.
        // A watcher's place lasts as long as its stream.
        let place = match kind {
            Kind::Stream => permit,
            _ => None,
        };
        Ok(self.response(response, kind, stream, place))
    }

    /// A place among the running watches, or `RESOURCE_EXHAUSTED`.
    fn admit_watcher(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.watchers.clone().try_acquire_owned().map_err(|_| {
            self.metrics.watch_refused();
            Error::ResourceExhausted {
                reason: "TOO_MANY_WATCHERS",
                message: format!(
                    "the server is running its maximum of {} event watches; retry later",
                    self.limits.max_watchers
                ),
                retry_after: Some(Duration::from_secs(1)),
            }
        })
    }

    /// A place among the running calls, or `RESOURCE_EXHAUSTED`.
    fn admit(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.in_flight.clone().try_acquire_owned().map_err(|_| {
            self.metrics.call_shed();
            Error::ResourceExhausted {
                reason: "OVERLOADED",
                message: format!(
                    "the server is running its maximum of {} calls; retry shortly",
                    self.limits.max_concurrent_calls
                ),
                retry_after: Some(Duration::from_millis(100)),
            }
        })
    }

    /// The statement and lock-wait caps: a job's statement may run, and wait for
    /// a replica running the same job, as long as the job; a call's are the
    /// configured statement and lock timeouts.
    fn caps(&self, kind: Kind) -> (Duration, Duration) {
        match kind {
            Kind::Job => (self.limits.job_timeout, self.limits.job_timeout),
            _ => (self.limits.statement_timeout, self.limits.lock_timeout),
        }
    }

    /// The response, its body keeping the call open on its connection until it
    /// is sent, and (for the streaming methods) ending at shutdown.
    fn response(
        &self,
        response: Response<Body>,
        kind: Kind,
        stream: Option<StreamGuard>,
        place: Option<OwnedSemaphorePermit>,
    ) -> Response<Body> {
        let shutdown = match kind {
            Kind::Health | Kind::Reflection | Kind::Stream => {
                Some(Box::pin(self.shutdown.clone().cancelled_owned()))
            }
            Kind::Call | Kind::Job => None,
        };
        response.map(|body| {
            Body::new(ResponseBody {
                body,
                shutdown,
                ended: false,
                _stream: stream,
                _place: place,
            })
        })
    }
}

/// Serves the call, again while the database aborts it for a concurrent one
/// and attempts are left.
async fn serve_with_retries<S>(
    mut inner: S,
    parts: http::request::Parts,
    message: Bytes,
    attempts: u32,
    retries: prometheus::IntCounter,
) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let mut attempt = 1;
    loop {
        let request = Request::from_parts(
            parts.clone(),
            Body::new(http_body_util::Full::new(message.clone())),
        );
        let Ok(ready) = inner.ready().await;
        let Ok(response) = ready.call(request).await;
        let aborted = response
            .headers()
            .get("grpc-status")
            .is_some_and(|status| status == "10");
        if !aborted || attempt >= attempts {
            return response;
        }
        attempt += 1;
        // A little jitter, growing with each attempt, so twins do not collide again.
        let pause = rand::thread_rng().gen_range(1..=10u64) * u64::from(attempt);
        let pause = Duration::from_millis(pause);
        let left = Budget::current().and_then(|budget| budget.remaining().ok());
        if left.is_none_or(|left| left <= pause) {
            return response;
        }
        tracing::info!(
            attempt,
            "retrying a call the database aborted for a concurrent one"
        );
        retries.inc();
        tokio::time::sleep(pause).await;
    }
}

/// The caller's `grpc-timeout` (`<digits><unit>`, gRPC over HTTP/2); a
/// malformed one is `INVALID_ARGUMENT`.
fn grpc_timeout(headers: &HeaderMap) -> Result<Option<Duration>, Error> {
    let Some(value) = headers.get("grpc-timeout") else {
        return Ok(None);
    };
    let malformed = || {
        Error::invalid(
            "grpc-timeout",
            "must be 1 to 8 digits and a unit of H, M, S, m, u or n",
        )
    };
    let text = value.to_str().map_err(|_| malformed())?;
    if text.len() < 2 || text.len() > 9 {
        return Err(malformed());
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let amount: u64 = digits.parse().map_err(|_| malformed())?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return Err(malformed()),
    };
    Ok(Some(timeout))
}

/// The part of a call's time kept back: a twentieth, at most 20 ms. The work
/// must end that much before the caller's deadline; the answer goes out half of
/// it before. So a commit sent just before the work's deadline is still reported
/// as done, and a `DEADLINE_EXCEEDED`, with its reason, reaches the caller before
/// the caller's own timer fires and before tonic's own enforcement of
/// `grpc-timeout` answers `CANCELLED` without one.
fn margin(timeout: Duration) -> Duration {
    (timeout / 20).min(Duration::from_millis(20))
}

/// The caller's request id when it is 1 to 128 visible ASCII characters;
/// otherwise a new one (32 hex digits).
fn request_id_of(headers: &HeaderMap) -> String {
    let theirs = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()));
    match theirs {
        Some(id) => id.to_owned(),
        None => format!("{:032x}", rand::thread_rng().r#gen::<u128>()),
    }
}

/// The method for logs: its path when the server serves it (paths are the
/// caller's text, so an unknown one is not echoed).
fn method_label(path: &str) -> &str {
    if crate::auth::is_known_method(path) {
        path
    } else {
        "unknown"
    }
}

/// A response body that marks its call open on the connection until it is
/// sent, and, with a shutdown signal, ends with `UNAVAILABLE` (reason
/// `SHUTTING_DOWN`) when the server starts draining.
struct ResponseBody {
    body: Body,
    shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    ended: bool,
    _stream: Option<StreamGuard>,
    /// A watcher's place, given back when its stream ends.
    _place: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // What the stream already has goes first (the NOT_SERVING of a health
        // watch, set just before the drain starts).
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match polled {
            Poll::Ready(None) => self.ended = true,
            Poll::Pending
                if self
                    .shutdown
                    .as_mut()
                    .is_some_and(|shutdown| shutdown.as_mut().poll(cx).is_ready()) =>
            {
                self.ended = true;
                // The status as trailers: the grpc-* headers of its trailers-only form.
                let (parts, _) = Status::from(Error::ShuttingDown).into_http::<Body>().into_parts();
                let trailers: HeaderMap = parts
                    .headers
                    .into_iter()
                    .filter_map(|(name, value)| Some((name?, value)))
                    .filter(|(name, _)| name.as_str().starts_with("grpc-"))
                    .collect();
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.shutdown.is_none() && self.body.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Request headers made of `pairs`.
    pub(crate) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        let read = |value| grpc_timeout(&headers(&[("grpc-timeout", value)])).map_err(|e| e.reason());
        assert_eq!(read("2S"), Ok(Some(Duration::from_secs(2))));
        assert_eq!(read("1500m"), Ok(Some(Duration::from_millis(1500))));
        assert_eq!(read("3M"), Ok(Some(Duration::from_secs(180))));
        assert_eq!(read("10u"), Ok(Some(Duration::from_micros(10))));
        assert_eq!(grpc_timeout(&HeaderMap::new()).ok(), Some(None));
        for bad in ["S", "12", "1x", "123456789S", "-1S"] {
            assert_eq!(read(bad), Err("INVALID_ARGUMENT"), "{bad}");
        }
    }

    #[test]
    fn a_little_of_the_callers_time_is_kept_back() {
        assert_eq!(margin(Duration::from_secs(1)), Duration::from_millis(20));
        assert_eq!(margin(Duration::from_millis(100)), Duration::from_millis(5));
        assert_eq!(margin(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_sane_request_id_is_kept_and_a_missing_or_odd_one_replaced() {
        assert_eq!(
            request_id_of(&headers(&[(REQUEST_ID_HEADER, "checkout-42")])),
            "checkout-42"
        );
        let fresh = request_id_of(&HeaderMap::new());
        assert_eq!(fresh.len(), 32);
        let odd = request_id_of(&headers(&[(REQUEST_ID_HEADER, &"x".repeat(200))]));
        assert_eq!(odd.len(), 32);
    }

    #[test]
    fn jobs_health_and_reflection_are_told_apart() {
        assert_eq!(Kind::of("/loyalty.v1.Membership/EvaluateLevels"), Kind::Job);
        assert_eq!(Kind::of("/loyalty.v1.Points/GetBalance"), Kind::Call);
        assert_eq!(Kind::of("/loyalty.v1.Coupons/RunExpiryNotices"), Kind::Job);
        assert_eq!(Kind::of("/loyalty.v1.Events/Watch"), Kind::Stream);
        assert_eq!(Kind::of("/grpc.health.v1.Health/Watch"), Kind::Health);
        assert_eq!(
            Kind::of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Kind::Reflection
        );
    }
}
