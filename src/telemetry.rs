//! Structured logs with `tracing`: a span per call, values as fields; and,
//! when an OTLP endpoint is configured, the same spans exported as
//! OpenTelemetry traces (SPEC §5).
//!
//! The subscriber is process-global, so [`init`] is the one place that
//! installs it; [`otlp_provider`] builds the exporting half on its own, for
//! whoever needs it without a global subscriber.
//!
//! Every database function (`db::…`) is a DEBUG span. Three layers look at
//! the spans, each with its own filter: the logs (`RUST_LOG`), the exported
//! traces (the calls, the domain and the database spans, whatever `RUST_LOG`
//! says), and [`StatementLayer`], which times the database spans into
//! `loyalty_db_statement_duration_seconds`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus::{Histogram, HistogramOpts, HistogramVec};
use tracing::span::{Attributes, Id};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TracesConfig;

/// How long the exit waits for the last spans to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed telemetry: the trace provider when exporting, to flush and
/// shut down on exit.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued, waiting at most the export timeout
    /// (it blocks: call it off the async workers, as [`Telemetry::shutdown`] does).
    pub fn flush(&self) -> anyhow::Result<()> {
        if let Some(provider) = &self.provider {
            provider
                .force_flush()
                .context("failed to export the queued spans")?;
        }
        Ok(())
    }

    /// Exports the spans still queued and stops the exporter, waiting at most
    /// a few seconds for the collector.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The batch processor's thread blocks on the export, which the tokio
        // runtime drives: wait for it from a blocking thread.
        let stopped =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)).await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = %error, "cannot export the last spans"),
            Err(error) => tracing::warn!(error = %error, "cannot export the last spans"),
        }
    }
}

/// The target of the database functions' spans.
const DB_TARGET: &str = "loyalty::db";

/// What the traces export: the call and domain spans (INFO) and the database
/// spans (DEBUG), whatever the logs show.
fn traced() -> Targets {
    Targets::new()
        .with_target(env!("CARGO_CRATE_NAME"), Level::INFO)
        .with_target(DB_TARGET, Level::DEBUG)
}

/// Installs the global subscriber: `RUST_LOG` filters the logs (default
/// `info`), `format` is `text` or `json`; with `traces` naming an OTLP
/// endpoint, the calls, their domain spans and their database statements are
/// exported too. The database spans are timed into [`statement_durations`]
/// unless `traces` says not to (or is `None`, as for `loyalty migrate`). Installing twice leaves the first
/// subscriber in place (and exports nothing from the second).
///
/// Must run inside the tokio runtime when exporting: the exporter's channel
/// lives on it.
pub fn init(format: &str, traces: Option<&TracesConfig>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let logs = if format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let endpoint = traces.and_then(|traces| Some((traces.otlp_endpoint.as_deref()?, traces)));
    let provider = match endpoint {
        Some((endpoint, traces)) => Some(otlp_provider(endpoint, &traces.otlp_service_name)?),
        None => None,
    };
    let traces_layer = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(env!("CARGO_PKG_NAME"))));
    // A missing layer (`None`) would want every span; its filter says none is
    // wanted when nothing is exported, so no span is made for it.
    let traces_filter = if traces_layer.is_some() {
        traced()
    } else {
        Targets::new()
    };
    let statements = if traces.is_some_and(|traces| traces.db_statement_metrics) {
        Targets::new().with_target(DB_TARGET, Level::DEBUG)
    } else {
        Targets::new()
    };
    let installed = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces_layer.with_filter(traces_filter))
        .with(StatementLayer::new().with_filter(statements))
        .try_init();
    if installed.is_err() {
        // Another subscriber is installed: ours would export nothing.
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Ok(Telemetry::default());
    }
    if let Some((endpoint, _)) = endpoint {
        tracing::info!(endpoint = %endpoint, "exporting traces over otlp");
    }
    Ok(Telemetry { provider })
}

/// A trace provider exporting to the OTLP/gRPC collector at `endpoint` (e.g.
/// `http://127.0.0.1:4317`) in batches, naming the service `service_name`.
pub fn otlp_provider(endpoint: &str, service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("failed to build the otlp exporter for {endpoint}"))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build())
}

/// Upper bounds (seconds) of the statement duration buckets: a statement
/// takes a fraction of a millisecond to a few.
const STATEMENT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// `loyalty_db_statement_duration_seconds{statement}`: how long each database
/// function took, from its span's start to its end (the round trips and the
/// decoding of the rows), labelled `<module>::<function>` (`points::insert_entries`).
/// Process-wide, as the subscriber is; each server's registry shows it.
pub fn statement_durations() -> &'static HistogramVec {
    static DURATIONS: OnceLock<HistogramVec> = OnceLock::new();
    DURATIONS.get_or_init(|| {
        HistogramVec::new(
            HistogramOpts::new(
                "loyalty_db_statement_duration_seconds",
                "Duration of the database statements, by the function that runs them.",
            )
            .buckets(STATEMENT_BUCKETS.to_vec()),
            &["statement"],
        )
        .expect("valid metric")
    })
}

/// Slots of [`SeriesTable`]: more than the database functions there are.
const SERIES_SLOTS: usize = 256;

/// The histogram of each database span's callsite, found without a lock: an
/// open-addressed table of write-once slots keyed by the callsite's (static)
/// metadata address. A slot is written the first time its callsite opens a
/// span; afterwards finding it is a few atomic loads.
struct SeriesTable {
    slots: Vec<OnceLock<(usize, Histogram)>>,
}

impl SeriesTable {
    fn new() -> Self {
        Self {
            slots: (0..SERIES_SLOTS).map(|_| OnceLock::new()).collect(),
        }
    }

    fn series(&self, metadata: &'static Metadata<'static>) -> Histogram {
        let key = std::ptr::from_ref(metadata) as usize;
        let make = || {
            (
                key,
                statement_durations().with_label_values(&[&statement_label(metadata)]),
            )
        };
        let start = (key >> 4) % SERIES_SLOTS;
        for i in 0..SERIES_SLOTS {
            let (slot_key, histogram) = self.slots[(start + i) % SERIES_SLOTS].get_or_init(make);
            if *slot_key == key {
                return histogram.clone();
            }
        }
        // Full (it is sized well beyond the callsites): the labelled lookup.
        make().1
    }
}

/// `points::insert_entries` for the span of `loyalty::db::points::insert_entries`.
fn statement_label(metadata: &Metadata<'_>) -> String {
    let module = metadata
        .target()
        .strip_prefix(DB_TARGET)
        .map(|rest| rest.trim_start_matches("::"))
        .unwrap_or(metadata.target());
    if module.is_empty() {
        metadata.name().to_owned()
    } else {
        format!("{module}::{}", metadata.name())
    }
}

/// When a database span started, and where its duration goes.
struct Timed {
    start: Instant,
    histogram: Histogram,
}

/// Times the spans it is given (the database functions', by its filter) into
/// [`statement_durations`].
pub struct StatementLayer {
    table: SeriesTable,
}

impl StatementLayer {
    /// A layer recording into [`statement_durations`].
    pub fn new() -> Self {
        Self {
            table: SeriesTable::new(),
        }
    }
}

impl Default for StatementLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for StatementLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let histogram = self.table.series(attrs.metadata());
        span.extensions_mut().insert(Timed {
            start: Instant::now(),
            histogram,
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        if let Some(timed) = span.extensions().get::<Timed>() {
            timed.histogram.observe(timed.start.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    mod db_like {
        #[tracing::instrument(level = "debug", target = "loyalty::db::members", name = "lookup")]
        pub fn lookup() {}
    }

    #[tracing::instrument(level = "debug")]
    fn not_a_statement() {}

    #[test]
    fn database_spans_are_timed_under_their_module_and_name() {
        let subscriber = tracing_subscriber::registry()
            .with(StatementLayer::new().with_filter(Targets::new().with_target(DB_TARGET, Level::DEBUG)));
        let count = |label: &str| {
            statement_durations()
                .with_label_values(&[label])
                .get_sample_count()
        };
        let before = count("members::lookup");
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                db_like::lookup();
                not_a_statement();
            }
        });
        assert_eq!(count("members::lookup") - before, 3);
        assert_eq!(count("telemetry::tests::not_a_statement"), 0);
        assert_eq!(count("not_a_statement"), 0);
    }
}
