//! Structured logs with `tracing`: a span per call, values as fields; and,
//! when an OTLP endpoint is configured, the same spans exported as
//! OpenTelemetry traces (SPEC §5).
//!
//! The subscriber is process-global, so [`init`] is the one place that
//! installs it; [`otlp_provider`] builds the exporting half on its own, for
//! whoever needs it without a global subscriber.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

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

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), `format`
/// is `text` or `json`; with `traces` naming an OTLP endpoint, the spans the
/// filter lets through are exported too. Installing twice leaves the first
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
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces_layer)
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
