//! Configuration: command-line flags, each with an environment fallback.
//!
//! `loyalty serve --help` prints them all; the README has the table.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono_tz::Tz;
use clap::{Args, Parser, Subcommand};

use crate::domain::coupons::{self, ExpiryNotices};
use crate::domain::levels::{BenefitsTable, Thresholds};
use crate::domain::money::{Currency, Money};
use crate::domain::points::rules::EarningRules;
use crate::tls::TlsFiles;

/// The loyalty service.
#[derive(Debug, Parser)]
#[command(
    name = "loyalty",
    version,
    about = "gRPC loyalty service: member points, levels and coupons"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What the binary does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations, then serve gRPC until SIGTERM or Ctrl-C.
    Serve(Box<Config>),
    /// Apply pending migrations and exit.
    Migrate(DatabaseConfig),
    /// Print a new bearer token and the tokens file line granting it; with
    /// `--hash`, print the hash of a token read on stdin.
    Token(TokenArgs),
}

/// `loyalty token`: the caller and scopes of the line to print.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The calling service the token is for.
    #[arg(long, default_value = "EDIT-CALLER", conflicts_with = "hash")]
    pub caller: String,
    /// Its scopes, comma-separated (`*` for all).
    #[arg(long, default_value = "EDIT-SCOPES", conflicts_with = "hash")]
    pub scopes: String,
    /// Read a token on stdin and print its `sha256:` hash instead (to convert a
    /// file of clear-text tokens).
    #[arg(long)]
    pub hash: bool,
}

/// A URL whose secrets never show in `Debug` (nor in `--help`): `Cli` and
/// `Config` are debug-printed, and a URL may carry a password in its user info,
/// a NATS token as its user info, or a `password=` parameter.
#[derive(Clone)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Takes the URL as given; its client checks it when it connects.
    fn parse(url: &str) -> Result<Self, std::convert::Infallible> {
        Ok(Self(url.to_owned()))
    }

    /// The URL with its secrets, for the connection only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with `***` for each secret: the password of the user info; the
    /// whole user info, unless it is a PostgreSQL user name; a `password=`
    /// parameter. A comma-separated list of URLs (NATS servers) has each one
    /// redacted.
    pub fn redacted(&self) -> String {
        self.0.split(',').map(redact_one).collect::<Vec<_>>().join(",")
    }
}

/// One URL of [`SecretUrl::redacted`].
fn redact_one(url: &str) -> String {
    let (before_query, query) = match url.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (url, None),
    };
    let mut redacted = before_query.to_owned();
    if let Some((scheme, rest)) = before_query.split_once("://") {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if let Some((user_info, host)) = authority.rsplit_once('@') {
            let user_info = match user_info.split_once(':') {
                Some((user, _password)) => format!("{user}:***"),
                None if scheme.starts_with("postgres") => user_info.to_owned(),
                None => "***".to_owned(),
            };
            redacted = format!("{scheme}://{user_info}@{host}{path}");
        }
    }
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => parameter.to_owned(),
            })
            .collect();
        redacted = format!("{redacted}?{}", parameters.join("&"));
    }
    redacted
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({:?})", self.redacted())
    }
}

/// How to reach PostgreSQL.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/loyalty",
        value_parser = SecretUrl::parse
    )]
    pub database_url: SecretUrl,
    /// Most connections the pool opens.
    #[arg(long, env = "LOYALTY_DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,
    /// How long a call waits for a connection before failing with UNAVAILABLE (ms);
    /// never longer than the call's own deadline.
    #[arg(long, env = "LOYALTY_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000)]
    pub db_acquire_timeout_ms: u64,
    /// Longest a statement may run (ms), on every connection (`statement_timeout`);
    /// within a call, the call's remaining deadline when that is shorter.
    #[arg(long, env = "LOYALTY_DB_STATEMENT_TIMEOUT_MS", default_value_t = 5000)]
    pub db_statement_timeout_ms: u64,
    /// Longest a statement waits for a lock (ms), on every connection
    /// (`lock_timeout`); within a call, its remaining deadline when that is shorter.
    #[arg(long, env = "LOYALTY_DB_LOCK_TIMEOUT_MS", default_value_t = 2000)]
    pub db_lock_timeout_ms: u64,
    /// Longest a connection may sit idle inside a transaction before PostgreSQL
    /// ends its session (ms, `idle_in_transaction_session_timeout`).
    #[arg(
        long,
        env = "LOYALTY_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub db_idle_in_transaction_timeout_ms: u64,
}

impl DatabaseConfig {
    /// The pool's connection wait.
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms.max(1))
    }

    /// The session settings every connection starts with, sent in the startup
    /// packet (no round trip): the bounds of a statement, a lock wait and an idle
    /// transaction. Zero would turn a bound off, so each is at least 1 ms.
    pub fn session_settings(&self) -> [(&'static str, String); 3] {
        let ms = |value: u64| format!("{}ms", value.max(1));
        [
            ("statement_timeout", ms(self.db_statement_timeout_ms)),
            ("lock_timeout", ms(self.db_lock_timeout_ms)),
            (
                "idle_in_transaction_session_timeout",
                ms(self.db_idle_in_transaction_timeout_ms),
            ),
        ]
    }

    /// The lock wait of a statement within a call.
    pub fn lock_timeout(&self) -> Duration {
        Duration::from_millis(self.db_lock_timeout_ms.max(1))
    }
}

/// Everything `loyalty serve` needs.
#[derive(Debug, Clone, Parser)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// Address the gRPC server listens on.
    #[arg(long, env = "LOYALTY_LISTEN_ADDR", default_value = "0.0.0.0:50051")]
    pub listen_addr: SocketAddr,
    /// Program time zone (IANA name): decides local days and months.
    #[arg(long, env = "LOYALTY_TIME_ZONE", default_value = "UTC", value_parser = parse_time_zone)]
    pub time_zone: Tz,
    /// Program currency: a current ISO 4217 code with a minor unit (not XAU,
    /// XXX, ...). Order minimums and fast-refund limits are in it.
    #[arg(long, env = "LOYALTY_PROGRAM_CURRENCY", default_value = "USD", value_parser = Currency::parse)]
    pub program_currency: Currency,
    /// File of callers, the SHA-256 hashes of their bearer tokens and their
    /// scopes (see README); client certificates name callers of it too. It must
    /// be private to its owner (mode 600). Without it, authentication is off:
    /// every caller may call everything.
    #[arg(long, env = "LOYALTY_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Address of the Prometheus endpoint (`GET /metrics`); none to serve no metrics.
    #[arg(long, env = "LOYALTY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// How often the database is pinged to keep the health status true (ms).
    #[arg(long, env = "LOYALTY_HEALTH_CHECK_INTERVAL_MS", default_value_t = 2000)]
    pub health_check_interval_ms: u64,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOYALTY_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    #[command(flatten)]
    pub traces: TracesConfig,
    /// How long a reservation holds its coupons when the checkout asks for no
    /// length (seconds, 60 to 86400): then the coupons read as VALID again.
    #[arg(long = "coupon-hold-secs", env = "LOYALTY_COUPON_HOLD_SECS", default_value = "1800",
          value_parser = parse_hold)]
    pub coupon_hold: Duration,
    #[command(flatten)]
    pub tls: TlsConfig,
    #[command(flatten)]
    pub limits: LimitsConfig,
    #[command(flatten)]
    pub earning: EarningConfig,
    #[command(flatten)]
    pub levels: LevelConfig,
    #[command(flatten)]
    pub events: EventsConfig,
}

/// OpenTelemetry traces (SPEC §5): off unless an OTLP endpoint is given; and
/// the metric made from the database spans.
#[derive(Debug, Clone, Args)]
pub struct TracesConfig {
    /// OTLP/gRPC collector the spans are exported to, e.g.
    /// `http://127.0.0.1:4317`; none to export nothing.
    #[arg(long, env = "LOYALTY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` the exported spans carry.
    #[arg(long, env = "LOYALTY_OTLP_SERVICE_NAME", default_value = "loyalty")]
    pub otlp_service_name: String,
    /// Time every database function into
    /// `loyalty_db_statement_duration_seconds` (a span per function: see
    /// docs/benchmarks.md for its cost); `false` to skip it.
    #[arg(long, env = "LOYALTY_DB_STATEMENT_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub db_statement_metrics: bool,
}

/// TLS served by the service, and client certificates (SPEC §5). Plain TCP
/// without a certificate; SIGHUP reads the files again.
#[derive(Debug, Clone, Args)]
pub struct TlsConfig {
    /// Serve TLS with this certificate chain (PEM, leaf first); needs
    /// `--tls-key-file`.
    #[arg(long, env = "LOYALTY_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `--tls-cert-file` (PEM).
    #[arg(long, env = "LOYALTY_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Verify client certificates against these CAs (PEM bundle): a verified
    /// certificate names the calling service, which gets the scopes of its line
    /// in `--auth-tokens-file`. Clients without a certificate still connect and
    /// send a token.
    #[arg(long, env = "LOYALTY_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The files TLS is served from, `None` for plain TCP; fails on a
    /// certificate without its key (or the reverse), or a client CA without TLS.
    pub fn files(&self) -> anyhow::Result<Option<TlsFiles>> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca_file.clone(),
            })),
            (None, None) if self.tls_client_ca_file.is_some() => {
                anyhow::bail!("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
            }
            (None, None) => Ok(None),
            (Some(_), None) => anyhow::bail!("--tls-cert-file needs --tls-key-file"),
            (None, Some(_)) => anyhow::bail!("--tls-key-file needs --tls-cert-file"),
        }
    }
}

/// The bounds of every call and connection (SPEC §5, "Bounded everything").
#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Longest a call may run (ms): the deadline of a call whose caller sends none,
    /// and the cap of a caller's `grpc-timeout`.
    #[arg(long, env = "LOYALTY_CALL_TIMEOUT_MS", default_value_t = 10_000)]
    pub call_timeout_ms: u64,
    /// Longest an admin job call may run (ms): `EvaluateLevels` and
    /// `RunDailyRewards` (and the built-in scheduler's runs), which work on every
    /// member at once.
    #[arg(long, env = "LOYALTY_JOB_TIMEOUT_MS", default_value_t = 600_000)]
    pub job_timeout_ms: u64,
    /// Calls running at once; one more is refused with RESOURCE_EXHAUSTED (and a
    /// RetryInfo) instead of queueing. Health and reflection are not counted.
    #[arg(long, env = "LOYALTY_MAX_CONCURRENT_CALLS", default_value_t = 256)]
    pub max_concurrent_calls: usize,
    /// Largest request message (bytes); a larger one is refused with
    /// RESOURCE_EXHAUSTED (reason `REQUEST_TOO_LARGE`).
    #[arg(long, env = "LOYALTY_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024)]
    pub max_request_bytes: usize,
    /// Client connections open at once; one more is closed at once (and logged).
    /// Lowered at start to what the process's file descriptor limit allows.
    #[arg(long, env = "LOYALTY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// HTTP/2 streams (calls) one connection may have open at once.
    #[arg(long, env = "LOYALTY_MAX_STREAMS_PER_CONNECTION", default_value_t = 128)]
    pub max_streams_per_connection: u32,
    /// A connection with no call open for this long is closed (ms); the client
    /// reconnects on its next call.
    #[arg(long, env = "LOYALTY_IDLE_CONNECTION_TIMEOUT_MS", default_value_t = 300_000)]
    pub idle_connection_timeout_ms: u64,
    /// How often an HTTP/2 PING checks that a client still answers (ms).
    #[arg(long, env = "LOYALTY_HTTP2_KEEPALIVE_INTERVAL_MS", default_value_t = 30_000)]
    pub http2_keepalive_interval_ms: u64,
    /// How long a PING may go unanswered before the connection is closed (ms).
    #[arg(long, env = "LOYALTY_HTTP2_KEEPALIVE_TIMEOUT_MS", default_value_t = 10_000)]
    pub http2_keepalive_timeout_ms: u64,
    /// On SIGTERM, how long in-flight calls may take to finish (ms); then the
    /// process exits whatever its peers do.
    #[arg(long, env = "LOYALTY_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Attempts of a call whose transaction the database aborted for a concurrent
    /// one (serialization failure, deadlock, lock timeout) before it answers ABORTED.
    #[arg(long, env = "LOYALTY_CONFLICT_ATTEMPTS", default_value_t = 3)]
    pub conflict_attempts: u32,
    /// Event watches (`Events.Watch` streams) open at once; one more is refused
    /// with RESOURCE_EXHAUSTED (reason `TOO_MANY_WATCHERS`). They do not count
    /// among the calls.
    #[arg(long, env = "LOYALTY_MAX_WATCHERS", default_value_t = 64)]
    pub max_watchers: usize,
    /// Longest an event watch may stream (seconds): the cap of its caller's
    /// deadline; then it ends and the client resumes from its cursor.
    #[arg(long, env = "LOYALTY_WATCH_MAX_SECS", default_value_t = 1800)]
    pub watch_max_secs: u64,
}

impl LimitsConfig {
    /// The cap of an ordinary call's deadline.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms.max(1))
    }

    /// The cap of a job call's deadline.
    pub fn job_timeout(&self) -> Duration {
        Duration::from_millis(self.job_timeout_ms.max(1))
    }

    /// The idle time after which a connection is closed.
    pub fn idle_connection_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_connection_timeout_ms.max(1))
    }

    /// The drain time on shutdown.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// The cap of an event watch's deadline.
    pub fn watch_max(&self) -> Duration {
        Duration::from_secs(self.watch_max_secs.max(1))
    }
}

/// Events for other services (SPEC §6): retention, expiry notices, NATS.
#[derive(Debug, Clone, Args)]
pub struct EventsConfig {
    /// Publish the event log to NATS JetStream at this URL
    /// (`nats://127.0.0.1:4222`); off by default.
    #[arg(long, env = "LOYALTY_NATS_URL", hide_env_values = true, value_parser = SecretUrl::parse)]
    pub nats_url: Option<SecretUrl>,
    /// The JetStream stream the events go to (created when missing, with the
    /// subjects `<prefix>.>`).
    #[arg(long, env = "LOYALTY_NATS_STREAM", default_value = "LOYALTY_EVENTS")]
    pub nats_stream: String,
    /// The subject prefix: an event goes to `<prefix>.<type>`.
    #[arg(long, env = "LOYALTY_NATS_SUBJECT_PREFIX", default_value = "loyalty.events")]
    pub nats_subject_prefix: String,
    /// How long events are kept once every relay has published them (days);
    /// a watch cursor older than that is FAILED_PRECONDITION.
    #[arg(long, env = "LOYALTY_EVENT_RETENTION_DAYS", default_value_t = 7)]
    pub event_retention_days: u32,
    /// How often old events are pruned (seconds).
    #[arg(long, env = "LOYALTY_EVENT_PRUNE_INTERVAL_SECS", default_value_t = 60)]
    pub event_prune_interval_secs: u64,
    /// How many days before its expiry a usable coupon is "expiring soon"
    /// (`RunExpiryNotices`, and the scheduler's runs).
    #[arg(long, env = "LOYALTY_COUPON_EXPIRING_DAYS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=3650))]
    pub coupon_expiring_days: u32,
    /// How many coupons one batch (one transaction) of an expiry notice run
    /// tells at most.
    #[arg(long, env = "LOYALTY_NOTICE_BATCH", default_value_t = 1_000,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub notice_batch: i64,
}

impl EventsConfig {
    /// How long events are kept.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.event_retention_days) * 86_400)
    }

    /// How often the pruner runs.
    pub fn prune_interval(&self) -> Duration {
        Duration::from_secs(self.event_prune_interval_secs.max(1))
    }

    /// How expiry notice runs go: the notice period and the batch.
    pub fn expiry_notices(&self) -> ExpiryNotices {
        ExpiryNotices {
            period: Duration::from_secs(u64::from(self.coupon_expiring_days) * 86_400),
            batch: self.notice_batch,
        }
    }
}

/// Level thresholds, benefits and the built-in scheduler (SPEC §3).
#[derive(Debug, Clone, Args)]
pub struct LevelConfig {
    /// Least 12-month points of Gold.
    #[arg(long, env = "LOYALTY_GOLD_MIN_POINTS", default_value_t = 101)]
    pub gold_min_points: i64,
    /// Least 12-month points of Platinum.
    #[arg(long, env = "LOYALTY_PLATINUM_MIN_POINTS", default_value_t = 501)]
    pub platinum_min_points: i64,
    /// Least 12-month points of Diamond.
    #[arg(long, env = "LOYALTY_DIAMOND_MIN_POINTS", default_value_t = 1501)]
    pub diamond_min_points: i64,
    /// JSON file replacing the benefits table (see docs/membership.md); the
    /// SPEC §3.1 table without it.
    #[arg(long, env = "LOYALTY_BENEFITS_FILE")]
    pub benefits_file: Option<PathBuf>,
    /// Run the jobs by themselves: each day the daily rewards of the day, and the
    /// evaluation of the previous month once it is over. Off by default (an admin
    /// or a cron calls EvaluateLevels and RunDailyRewards).
    #[arg(long, env = "LOYALTY_SCHEDULER", default_value_t = false)]
    pub scheduler: bool,
    /// How often the scheduler looks for work (seconds).
    #[arg(long, env = "LOYALTY_SCHEDULER_INTERVAL_SECS", default_value_t = 300)]
    pub scheduler_interval_secs: u64,
    /// The most members one batch (one transaction) of the monthly
    /// evaluation reads; a batch ends at a sampled member about this many
    /// members on, so most read somewhat fewer.
    #[arg(long, env = "LOYALTY_EVALUATION_BATCH", default_value_t = 10_000,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub evaluation_batch: i64,
}

impl LevelConfig {
    /// The thresholds, checked.
    pub fn thresholds(&self) -> anyhow::Result<Thresholds> {
        let thresholds = Thresholds {
            gold: self.gold_min_points,
            platinum: self.platinum_min_points,
            diamond: self.diamond_min_points,
        };
        thresholds.check().map_err(anyhow::Error::msg)?;
        Ok(thresholds)
    }

    /// The benefits table: the file's, or the default.
    pub fn benefits(&self) -> anyhow::Result<BenefitsTable> {
        let Some(path) = &self.benefits_file else {
            return Ok(BenefitsTable::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read the benefits file {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("failed to parse the benefits file {}", path.display()))
    }
}

/// The amounts and caps of the earning rules (SPEC §2.1).
#[derive(Debug, Clone, Args)]
pub struct EarningConfig {
    /// Points of an order reaching the minimum amount.
    #[arg(long, env = "LOYALTY_ORDER_POINTS", default_value_t = 5)]
    pub order_points: u16,
    /// Least order amount earning order points, in minor units of the program currency.
    #[arg(long, env = "LOYALTY_ORDER_MINIMUM_MINOR", default_value_t = 200)]
    pub order_minimum_minor: u32,
    /// Order points per member and local day.
    #[arg(long, env = "LOYALTY_ORDER_DAILY_CAP", default_value_t = 5)]
    pub order_daily_cap: u16,
    /// Points per distinct category bought on a local day beyond the first.
    #[arg(long, env = "LOYALTY_VARIETY_POINTS", default_value_t = 1)]
    pub variety_points: u16,
    /// Category-variety points per member and local day.
    #[arg(long, env = "LOYALTY_VARIETY_DAILY_CAP", default_value_t = 5)]
    pub variety_daily_cap: u16,
    /// Points of a review.
    #[arg(long, env = "LOYALTY_REVIEW_POINTS", default_value_t = 1)]
    pub review_points: u16,
    /// Points of the first visit of a local day.
    #[arg(long, env = "LOYALTY_VISIT_POINTS", default_value_t = 1)]
    pub visit_points: u16,
    /// Visit points per member and local month.
    #[arg(long, env = "LOYALTY_VISIT_MONTHLY_CAP", default_value_t = 10)]
    pub visit_monthly_cap: u16,
    /// Points of a community post.
    #[arg(long, env = "LOYALTY_POST_POINTS", default_value_t = 2)]
    pub post_points: u16,
    /// Post points per member and local month.
    #[arg(long, env = "LOYALTY_POST_MONTHLY_CAP", default_value_t = 10)]
    pub post_monthly_cap: u16,
    /// Largest bonus one campaign may grant one member.
    #[arg(long, env = "LOYALTY_BONUS_MAX", default_value_t = 100_000)]
    pub bonus_max: u32,
}

impl Config {
    /// The earning rules in the program currency.
    pub fn earning_rules(&self) -> EarningRules {
        let e = &self.earning;
        // u16/u32 flags: always within i32 and non-negative.
        let points = |v: u16| i32::from(v);
        EarningRules {
            order_points: points(e.order_points),
            order_minimum: Money::new(e.order_minimum_minor.into(), self.program_currency)
                .unwrap_or_else(|_| unreachable!("a u32 amount is never negative")),
            order_daily_cap: points(e.order_daily_cap),
            variety_points: points(e.variety_points),
            variety_daily_cap: points(e.variety_daily_cap),
            review_points: points(e.review_points),
            visit_points: points(e.visit_points),
            visit_monthly_cap: points(e.visit_monthly_cap),
            post_points: points(e.post_points),
            post_monthly_cap: points(e.post_monthly_cap),
            bonus_max: i32::try_from(e.bonus_max).unwrap_or(i32::MAX),
        }
    }

    /// How often the health monitor pings the database.
    pub fn health_check_interval(&self) -> Duration {
        Duration::from_millis(self.health_check_interval_ms.max(100))
    }
}

/// A default hold in seconds, within the bounds a caller may ask for.
fn parse_hold(seconds: &str) -> Result<Duration, String> {
    let seconds: u64 = seconds
        .parse()
        .map_err(|_| format!("{seconds:?} is not a number of seconds"))?;
    coupons::check_hold(Duration::from_secs(seconds))
}

fn parse_time_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown IANA time zone {name:?} (for example Europe/Berlin)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_hold_is_bounded_like_a_callers() {
        assert_eq!(parse_hold("1800"), Ok(Duration::from_secs(1800)));
        for bad in ["59", "86401", "-1", "ten"] {
            assert!(parse_hold(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_defaults_are_the_spec_rules() {
        let config = Config::parse_from(["loyalty"]);
        let rules = config.earning_rules();
        assert_eq!((rules.order_points, rules.order_daily_cap), (5, 5));
        assert_eq!(rules.order_minimum.minor(), 200);
        assert_eq!((rules.visit_points, rules.visit_monthly_cap), (1, 10));
        assert_eq!((rules.post_points, rules.post_monthly_cap), (2, 10));
        assert_eq!(config.time_zone, chrono_tz::UTC);
    }

    #[test]
    fn a_tls_certificate_comes_with_its_key() {
        let files = |flags: &[&str]| {
            let config = Config::try_parse_from([&["loyalty"], flags].concat()).unwrap();
            config.tls.files().map(|files| files.is_some())
        };
        assert!(!files(&[]).unwrap());
        assert!(files(&["--tls-cert-file", "c.pem", "--tls-key-file", "k.pem"]).unwrap());
        for half in [
            &["--tls-cert-file", "c.pem"][..],
            &["--tls-key-file", "k.pem"],
            &["--tls-client-ca-file", "ca.pem"],
        ] {
            let error = files(half).unwrap_err().to_string();
            assert!(error.contains("needs"), "{half:?}: {error}");
        }
    }

    #[test]
    fn the_expiry_notice_settings_are_bounded() {
        let parse = |flag: &str, value: &str| Config::try_parse_from(["loyalty", flag, value]);
        assert!(
            parse("--coupon-expiring-days", "3651").is_err(),
            "a horizon past what the database holds"
        );
        assert!(parse("--notice-batch", "0").is_err());
        let config = parse("--coupon-expiring-days", "3650").unwrap();
        assert_eq!(
            config.events.expiry_notices().period,
            Duration::from_secs(3650 * 86_400)
        );
        assert_eq!(config.events.expiry_notices().batch, 1_000);
    }

    #[test]
    fn an_unknown_time_zone_is_refused() {
        assert!(Config::try_parse_from(["loyalty", "--time-zone", "Mars/Olympus"]).is_err());
        let config = Config::try_parse_from(["loyalty", "--time-zone", "Europe/Berlin"]).unwrap();
        assert_eq!(config.time_zone, chrono_tz::Europe::Berlin);
    }

    #[test]
    fn the_program_currency_is_a_current_iso_4217_currency() {
        for bad in ["ABC", "usd", "XAU", "XXX", "HRK"] {
            assert!(
                Config::try_parse_from(["loyalty", "--program-currency", bad]).is_err(),
                "{bad} accepted"
            );
        }
        let config = Config::try_parse_from(["loyalty", "--program-currency", "JPY"]).unwrap();
        assert_eq!(config.program_currency.minor_units(), 0);
        assert_eq!(config.earning_rules().order_minimum.to_string(), "200 JPY");
    }

    #[test]
    fn url_secrets_never_show_in_debug() {
        for url in [
            "postgres://u:s3cret@h/db",
            "postgres://u:s3cret@h:5432/db?sslmode=require",
            "postgres://u@h/db?password=s3cret&sslmode=disable",
        ] {
            let config = Config::parse_from(["loyalty", "--database-url", url, "--nats-url", url]);
            let cli = Cli::parse_from(["loyalty", "migrate", "--database-url", url]);

            assert_eq!(config.database.database_url.expose(), url);
            for debug in [format!("{config:?}"), format!("{cli:?}")] {
                assert!(!debug.contains("s3cret"), "{debug}");
                assert!(
                    debug.contains("u:***@h") || debug.contains("password=***"),
                    "{debug}"
                );
            }
        }
        let config = Config::parse_from(["loyalty", "--nats-url", "nats://s3cret@h:4222"]);
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "a NATS token is hidden"
        );
        let servers = SecretUrl::parse("nats://a:s3cret@h1:4222,nats://b:s3cret@h2:4222").unwrap();
        assert_eq!(
            servers.redacted(),
            "nats://a:***@h1:4222,nats://b:***@h2:4222",
            "every server of a list is redacted"
        );
        let plain = SecretUrl::parse("postgres://postgres@127.0.0.1:5432/loyalty").unwrap();
        assert_eq!(plain.redacted(), plain.expose(), "a user name is no secret");
    }

    #[test]
    fn the_token_command_takes_a_caller_and_scopes_or_hashes() {
        let Command::Token(args) = Cli::parse_from(["loyalty", "token"]).command else {
            panic!("not the token command");
        };
        assert_eq!(
            (args.caller.as_str(), args.scopes.as_str(), args.hash),
            ("EDIT-CALLER", "EDIT-SCOPES", false)
        );
        let Command::Token(args) = Cli::parse_from(["loyalty", "token", "--hash"]).command else {
            panic!("not the token command");
        };
        assert!(args.hash);
        assert!(Cli::try_parse_from(["loyalty", "token", "--hash", "--caller", "x"]).is_err());
    }
}
