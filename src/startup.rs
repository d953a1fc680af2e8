//! Builds and runs the gRPC server; the binary and the tests run the same code.
//!
//! [`Application::build`] binds the listener (port 0 in tests) and returns at
//! once; [`Application::run_until_stopped`] serves until the shutdown future
//! resolves, then stops accepting, finishes in-flight calls and returns.
//!
//! Health follows reality: every service starts `NOT_SERVING`; a monitor applies
//! the migrations, then pings the database over a connection of its own (so a
//! busy pool does not look like an outage) and keeps the statuses true to it,
//! within one check interval.
//!
//! Every call passes the [`CallLayer`] (deadline, load shedding, size and
//! framing checks, request id) and arrives on a bounded connection
//! ([`connections`]). On shutdown the server stops accepting, tells clients
//! (HTTP/2 GOAWAY), ends streams, lets in-flight calls finish, and returns
//! within the drain timeout whatever its peers do.
//!
//! With a certificate configured the server speaks TLS ([`crate::tls`]), and
//! SIGHUP reads its files again.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::{AuthLayer, Tokens};
use crate::call::budget::Budget;
use crate::call::{CallLayer, CallLimits};
use crate::clock::Clock;
use crate::config::{Config, DatabaseConfig};
use crate::connections::{self, TlsAccept};
use crate::db;
use crate::domain::audit::Audit;
use crate::domain::calendar::Calendar;
use crate::domain::coupons::{Coupons, ExpiryNotices};
use crate::domain::members::Members;
use crate::domain::membership::{LevelRules, Membership};
use crate::domain::points::Points;
use crate::events::relay::{Relay, RelaySettings};
use crate::events::{EventLog, LogSettings};
use crate::grpc::audit::AuditService;
use crate::grpc::coupons::CouponsService;
use crate::grpc::events::EventsService;
use crate::grpc::membership::MembershipService;
use crate::grpc::points::PointsService;
use crate::metrics::{self, Metrics, MetricsLayer};
use crate::pb;
use crate::tls::{Tls, TlsReloader};

/// The names health is reported under: the whole server ("") and each service.
pub const HEALTH_SERVICES: [&str; 6] = [
    "",
    "loyalty.v1.Audit",
    "loyalty.v1.Coupons",
    "loyalty.v1.Events",
    "loyalty.v1.Membership",
    "loyalty.v1.Points",
];

/// A pool that connects on demand, so the server starts (and reports
/// `NOT_SERVING`) while the database is down.
pub fn connect_pool(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = config
        .database_url
        .expose()
        .parse()
        .context("failed to parse DATABASE_URL")?;
    // sqlx logs every statement at DEBUG by default: deciding whether that log
    // is wanted costs each statement a walk of the subscriber's filters (about
    // 5% of a checkout's instructions), and the statements are already timed
    // by their spans. Statements slower than a second are still logged.
    let options = options
        .options(config.session_settings())
        .log_statements(tracing::log::LevelFilter::Off)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    Ok(PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .acquire_timeout(config.acquire_timeout())
        // No ping before every checkout (sqlx's default): it costs a round trip
        // per call, and a broken connection already fails its query with
        // UNAVAILABLE while the health monitor reports the outage.
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// A bound, not yet serving, loyalty server.
pub struct Application {
    listener: TcpListener,
    port: u16,
    metrics_listener: Option<TcpListener>,
    config: Config,
    /// Checked at build, so a bad threshold or benefits file fails the start.
    level_rules: LevelRules,
    pool: PgPool,
    clock: Arc<dyn Clock>,
    tokens: Option<Tokens>,
    /// The TLS configuration; `None` serves plain TCP.
    tls: Option<Arc<Tls>>,
    /// `max_connections`, lowered to what the file descriptor limit allows.
    max_connections: usize,
}

impl Application {
    /// Binds `config.listen_addr` (and `config.metrics_addr`) and prepares the services.
    pub async fn build(config: Config, pool: PgPool, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let tokens = config
            .auth_tokens_file
            .as_deref()
            .map(Tokens::from_file)
            .transpose()?;
        if tokens.is_none() {
            tracing::warn!("no tokens file: authentication is off, every caller may call everything");
        }
        let tls = config.tls.files()?.map(Tls::load).transpose()?;
        if tls.as_ref().is_some_and(|tls| tls.verifies_clients()) && tokens.is_none() {
            anyhow::bail!(
                "--tls-client-ca-file needs --auth-tokens-file: the callers client certificates name, and their scopes"
            );
        }
        let level_rules = LevelRules {
            thresholds: config.levels.thresholds()?,
            benefits: config.levels.benefits()?,
            program_currency: config.program_currency,
        };
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("failed to bind {}", config.listen_addr))?;
        let port = listener
            .local_addr()
            .context("failed to read the bound address")?
            .port();
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("failed to bind the metrics address {addr}"))?,
            ),
            None => None,
        };
        let mut max_connections = config.limits.max_connections;
        match connections::connection_capacity(config.database.db_max_connections) {
            Some(capacity) if capacity < max_connections => {
                tracing::warn!(
                    max_connections,
                    capacity,
                    "the open-file limit cannot hold --max-connections: lowered"
                );
                max_connections = capacity.max(1);
            }
            _ => {}
        }
        Ok(Self {
            max_connections,
            listener,
            port,
            metrics_listener,
            config,
            level_rules,
            pool,
            clock,
            tokens,
            tls,
        })
    }

    /// What SIGHUP does: reads the TLS files again for new connections; `None`
    /// without TLS.
    pub fn tls_reloader(&self) -> Option<TlsReloader> {
        self.tls.clone().map(TlsReloader::new)
    }

    /// The port the gRPC server is bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the metrics endpoint, when there is one.
    pub fn metrics_port(&self) -> Option<u16> {
        let address = self.metrics_listener.as_ref()?.local_addr().ok()?;
        Some(address.port())
    }

    /// Serves until `shutdown` resolves, then drains in-flight calls.
    pub async fn run_until_stopped(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            port,
            metrics_listener,
            config,
            level_rules,
            pool,
            clock,
            tokens,
            tls,
            max_connections,
        } = self;
        let metrics = Arc::new(Metrics::default());
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::NotServing).await;
        let monitor = tokio::spawn(watch_database(
            pool.clone(),
            health.clone(),
            metrics.clone(),
            config.health_check_interval(),
        ));
        let limits = &config.limits;
        let shutdown = CancellationToken::new();
        let event_log = EventLog::new(pool.clone(), clock.clone(), metrics.clone());
        let calls = CallLayer::new(
            CallLimits {
                call_timeout: limits.call_timeout(),
                job_timeout: limits.job_timeout(),
                statement_timeout: Duration::from_millis(config.database.db_statement_timeout_ms.max(1)),
                lock_timeout: config.database.lock_timeout(),
                max_concurrent_calls: limits.max_concurrent_calls,
                max_request_bytes: limits.max_request_bytes,
                conflict_attempts: limits.conflict_attempts,
                max_watchers: limits.max_watchers,
                watch_max: limits.watch_max(),
            },
            shutdown.clone(),
            event_log.commits(),
            metrics.clone(),
        );
        let in_flight = calls.tasks();
        let reloads = tls
            .clone()
            .map(|tls| tokio::spawn(reload_on_hangup(TlsReloader::new(tls))));
        // A handshake is given as long as a PING is to be answered (and no
        // longer than a connection may sit idle).
        let tls = tls.map(|tls| TlsAccept {
            tls,
            handshake_timeout: Duration::from_millis(limits.http2_keepalive_timeout_ms.max(1))
                .min(limits.idle_connection_timeout()),
        });
        let incoming = connections::incoming(
            listener,
            max_connections,
            limits.idle_connection_timeout(),
            tls,
            shutdown.clone(),
            metrics.clone(),
        );
        let metrics_server = metrics_listener
            .map(|listener| tokio::spawn(metrics::serve(listener, metrics.clone(), pool.clone())));

        let reflection_v1 = reflection().build_v1().context("failed to build reflection v1")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("failed to build reflection v1alpha")?;

        let calendar = Calendar::new(config.time_zone);
        let members = Members::new(pool.clone(), clock.clone());
        let points = Points::new(pool.clone(), config.earning_rules(), calendar, clock.clone());
        let coupons = Coupons::new(pool.clone(), calendar, clock.clone(), config.coupon_hold);
        let membership = Membership::new(
            pool.clone(),
            level_rules,
            calendar,
            clock.clone(),
            points.clone(),
            coupons.clone(),
            config.levels.evaluation_batch,
        );
        // The event log's tasks stop after the calls: the slicer's last cut takes
        // the events of the calls that finished during the drain.
        let log_stop = CancellationToken::new();
        let log_tasks = tokio::spawn(event_log.clone().run(
            LogSettings {
                retention: config.events.retention(),
                prune_interval: config.events.prune_interval(),
            },
            log_stop.clone(),
        ));
        let relay = config.events.nats_url.clone().map(|url| {
            let relay = Relay::new(
                pool.clone(),
                clock.clone(),
                event_log.clone(),
                metrics.clone(),
                RelaySettings {
                    url,
                    stream: config.events.nats_stream.clone(),
                    subject_prefix: config.events.nats_subject_prefix.clone(),
                },
            );
            tokio::spawn(relay.run(shutdown.clone()))
        });
        // Tracked with the calls: the drain waits for a run under way.
        if config.levels.scheduler {
            in_flight.spawn(run_scheduler(
                membership.clone(),
                (coupons.clone(), config.events.expiry_notices()),
                Duration::from_secs(config.levels.scheduler_interval_secs.max(1)),
                limits.job_timeout(),
                shutdown.clone(),
            ));
        }

        // The signal starts the drain: health turns NOT_SERVING, the server stops
        // accepting and sends GOAWAY, streams end, idle connections close.
        let drain_started = Arc::new(OnceLock::new());
        let draining = {
            let shutdown = shutdown.clone();
            let drain_started = drain_started.clone();
            async move {
                signal.await;
                let _ = drain_started.set(Instant::now());
                tracing::info!("shutting down: no new calls, finishing in-flight ones");
                monitor.abort();
                set_health(&health, ServingStatus::NotServing).await;
                shutdown.cancel();
            }
        };
        let drain_timeout = limits.drain_timeout();
        let max_request_bytes = limits.max_request_bytes;
        tracing::info!(
            port,
            time_zone = %config.time_zone,
            max_connections,
            tls = config.tls.tls_cert_file.is_some(),
            "serving gRPC"
        );
        let server = Server::builder()
            .max_concurrent_streams(limits.max_streams_per_connection)
            .http2_keepalive_interval(Some(Duration::from_millis(
                limits.http2_keepalive_interval_ms.max(1),
            )))
            .http2_keepalive_timeout(Some(Duration::from_millis(
                limits.http2_keepalive_timeout_ms.max(1),
            )))
            // The first layer is the outermost: metrics count refused calls too.
            .layer(MetricsLayer::new(metrics))
            .layer(calls)
            .layer(AuthLayer::new(tokens))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                pb::membership_server::MembershipServer::new(MembershipService::new(
                    members,
                    membership,
                    config.program_currency,
                    clock.clone(),
                ))
                .max_decoding_message_size(max_request_bytes),
            )
            .add_service(
                pb::points_server::PointsServer::new(PointsService::new(points, clock))
                    .max_decoding_message_size(max_request_bytes),
            )
            .add_service(
                pb::coupons_server::CouponsServer::new(CouponsService::new(
                    coupons,
                    config.events.expiry_notices(),
                ))
                .max_decoding_message_size(max_request_bytes),
            )
            .add_service(
                pb::events_server::EventsServer::new(EventsService::new(pool.clone(), event_log))
                    .max_decoding_message_size(max_request_bytes),
            )
            .add_service(
                pb::audit_server::AuditServer::new(AuditService::new(Audit::new(pool.clone())))
                    .max_decoding_message_size(max_request_bytes),
            )
            .serve_with_incoming_shutdown(incoming, draining);
        let drained = async {
            shutdown.cancelled().await;
            tokio::time::sleep(drain_timeout).await;
        };
        tokio::select! {
            served = server => served.context("the gRPC server failed")?,
            () = drained => tracing::warn!("the drain timeout passed: closing the remaining connections"),
        }
        // The drain time counts from the signal.
        let deadline = drain_started.get().copied().unwrap_or_else(Instant::now) + drain_timeout;
        // Calls already running finish their database work (bounded by their
        // deadlines) before the pool closes, as far as the drain time allows.
        in_flight.close();
        if tokio::time::timeout_at(deadline, in_flight.wait()).await.is_err() {
            tracing::warn!(
                calls = in_flight.len(),
                "calls still running at the drain timeout"
            );
        }
        if let Some(task) = metrics_server {
            task.abort();
        }
        if let Some(task) = reloads {
            task.abort();
        }
        // The relay stops between batches once the drain starts.
        if let Some(task) = relay {
            let _ =
                tokio::time::timeout_at(deadline.max(Instant::now() + Duration::from_secs(1)), task).await;
        }
        log_stop.cancel();
        let _ =
            tokio::time::timeout_at(deadline.max(Instant::now() + Duration::from_secs(1)), log_tasks).await;
        if tokio::time::timeout_at(
            deadline.max(Instant::now() + Duration::from_secs(1)),
            pool.close(),
        )
        .await
        .is_err()
        {
            tracing::warn!("database connections still busy at exit");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Reflection over the loyalty protos, health, and `google.rpc` error details (so
/// `grpcurl` can decode the `ErrorInfo` and `BadRequest` of an error).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        health.set_service_status(service, status).await;
    }
}

/// Reads the TLS files again on each SIGHUP (a file that does not load is
/// logged and the old configuration kept).
async fn reload_on_hangup(reloader: TlsReloader) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::error!(error = %error, "cannot listen for SIGHUP: the tls files will not be reloaded");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let _ = reloader.reload();
    }
}

/// Applies the migrations once the database answers, then keeps the health
/// statuses true to whether it still answers: a ping over the monitor's own
/// connection, given half a check interval to answer (a database that refuses
/// connections or drops packets turns health `NOT_SERVING` within about one
/// interval, not after the pool's acquire timeout or the OS's TCP timeout).
async fn watch_database(pool: PgPool, health: HealthReporter, metrics: Arc<Metrics>, interval: Duration) {
    while let Err(error) = db::migrate(&pool).await {
        tracing::warn!(error = %format!("{error:#}"), "cannot migrate the database yet; retrying");
        tokio::time::sleep(interval).await;
    }
    tracing::info!("database migrated");
    let options = pool.connect_options();
    let mut connection: Option<PgConnection> = None;
    let mut serving = None;
    loop {
        let tick = Instant::now() + interval;
        // Half an interval to answer: an outage shows within about one interval.
        let up = tokio::time::timeout(interval / 2, ping(&mut connection, &options))
            .await
            .unwrap_or(false);
        if !up {
            // Broken or cut off halfway through the ping: start afresh next time.
            connection = None;
        }
        metrics.set_database_up(up);
        if serving != Some(up) {
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::info!(database_up = up, "health changed");
            set_health(&health, status).await;
            serving = Some(up);
        }
        tokio::time::sleep_until(tick).await;
    }
}

/// `select 1` over `connection`, connecting it first when there is none.
async fn ping(connection: &mut Option<PgConnection>, options: &PgConnectOptions) -> bool {
    if connection.is_none() {
        *connection = PgConnection::connect_with(options).await.ok();
    }
    match connection {
        Some(connection) => sqlx::query("select 1").execute(connection).await.is_ok(),
        None => false,
    }
}

/// The built-in scheduler: every `interval`, runs today's daily rewards, the
/// previous month's evaluation and the coupon expiry notices. All are idempotent and take turns across
/// replicas, so every replica may run it; a failure is logged and retried at the
/// next tick.
async fn run_scheduler(
    membership: Membership,
    expiry: (Coupons, ExpiryNotices),
    interval: Duration,
    job_timeout: Duration,
    shutdown: CancellationToken,
) {
    // Each run is bounded like an admin job call.
    let budget = || Budget::new(Instant::now() + job_timeout, job_timeout, job_timeout);
    while !shutdown.is_cancelled() {
        let rewards = budget().scope(membership.run_daily_rewards(membership.today()));
        if let Err(error) = rewards.await {
            tracing::warn!(error = %error, "scheduled daily rewards failed");
        }
        // A run cut short goes on first; the previous month follows at the
        // next turn.
        let evaluation = budget().scope(async {
            let month = membership.month_in_progress().await?;
            membership
                .evaluate(month.unwrap_or_else(|| membership.previous_month()))
                .await
        });
        match evaluation.await {
            Ok(_)
            | Err(crate::error::Error::FailedPrecondition {
                reason: "EVALUATION_OUT_OF_ORDER",
                ..
            }) => {}
            Err(error) => tracing::warn!(error = %error, "scheduled level evaluation failed"),
        }
        let (coupons, notice) = &expiry;
        if let Err(error) = budget().scope(coupons.send_expiry_notices(*notice)).await {
            tracing::warn!(error = %error, "scheduled expiry notices failed");
        }
        // No new run once the server drains; a run under way finishes (the
        // drain waits for it, as for a call).
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => {}
        }
    }
}
