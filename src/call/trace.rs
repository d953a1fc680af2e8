//! The call's place in its caller's trace (SPEC §5): the caller's W3C
//! `traceparent` (and `tracestate`) becomes the parent of the call span, and
//! the call's trace id is named in the logs and in the response.
//!
//! A missing or malformed `traceparent` is ignored, never an error: the call
//! then starts a trace of its own (when spans are exported) or has none.

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The request header the caller's trace comes in, and the response header
/// naming the call's own span in it.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Joins `span` (the call span, not yet entered) to the trace its caller sent
/// in `headers`, and records the call's trace id as the span's `trace_id`
/// field: the exported trace's when spans are exported, else the caller's
/// when it sent one. Returns the `traceparent` naming the call span, for the
/// response, when spans are exported.
pub(super) fn join(span: &tracing::Span, headers: &HeaderMap) -> Option<HeaderValue> {
    let caller = caller_context(headers);
    let caller_trace = caller
        .as_ref()
        .map(|context| context.span().span_context().trace_id());
    if let Some(context) = caller {
        // Fails only when spans are not exported (or the span is disabled).
        let _ = span.set_parent(context);
    }
    // Empty unless spans are exported.
    let own = span.context().span().span_context().clone();
    let trace_id = if own.is_valid() {
        Some(own.trace_id())
    } else {
        caller_trace
    };
    if let Some(trace_id) = trace_id {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    own.is_valid()
        .then(|| HeaderValue::from_str(&traceparent(&own)).ok())
        .flatten()
}

/// The caller's trace context when it sent a valid `traceparent` (with its
/// `tracestate`); `None` when it sent none or a malformed one.
pub(super) fn caller_context(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    let sent = headers.get(TRACEPARENT_HEADER)?.to_str().ok()?;
    if !well_formed(sent) {
        return None;
    }
    let context = TraceContextPropagator::new().extract(&Headers(headers));
    let valid = context.span().span_context().is_valid();
    valid.then_some(context)
}

/// Whether a `traceparent` has the W3C fields at their lengths: version,
/// trace id, parent id and flags (2, 32, 16 and 2 digits; a later version may
/// add fields). The propagator checks the digits and the values, but takes
/// a short trace id.
fn well_formed(traceparent: &str) -> bool {
    let fields: Vec<&str> = traceparent.split('-').collect();
    let lengths = fields.iter().take(4).map(|field| field.len());
    fields.len() >= 4 && lengths.eq([2, 32, 16, 2]) && (fields.len() == 4 || fields[0] != "00")
}

/// A span's `traceparent` (version 00).
fn traceparent(span: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8()
    )
}

/// The request headers, as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The trace id a caller's `traceparent` names, if it is valid.
#[cfg(test)]
fn caller_trace_id(headers: &HeaderMap) -> Option<opentelemetry::trace::TraceId> {
    caller_context(headers).map(|context| context.span().span_context().trace_id())
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceId};

    use super::*;
    use crate::call::tests::headers;

    #[test]
    fn a_valid_traceparent_and_its_tracestate_are_the_callers_context() {
        let sent = headers(&[
            (
                TRACEPARENT_HEADER,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=abc"),
        ]);

        let context = caller_context(&sent).expect("a valid traceparent is read");

        let span = context.span().span_context().clone();
        assert_eq!(
            span.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(span.span_id(), SpanId::from_hex("00f067aa0ba902b7").unwrap());
        assert!(span.is_remote());
        assert!(span.is_sampled());
        assert_eq!(span.trace_state().get("vendor"), Some("abc"));
    }

    #[test]
    fn a_missing_or_malformed_traceparent_is_ignored() {
        assert_eq!(caller_trace_id(&HeaderMap::new()), None);
        for malformed in [
            "",
            "garbage",
            // All-zero trace id and span id are invalid.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Too short a trace id, a non-hex digit, the forbidden version ff.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Version 00 has exactly four fields.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let sent = headers(&[(TRACEPARENT_HEADER, malformed)]);
            assert_eq!(caller_trace_id(&sent), None, "{malformed:?}");
        }
    }

    /// Log lines written to a buffer the test reads.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn without_an_exporter_the_log_still_names_the_callers_trace() {
        let lines = Lines::default();
        let writer = lines.clone();
        let logs = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let sent = headers(&[(
            TRACEPARENT_HEADER,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);

        tracing::subscriber::with_default(logs, || {
            let span = tracing::info_span!("call", trace_id = tracing::field::Empty);
            assert_eq!(join(&span, &sent), None, "no span of its own to name");
            span.in_scope(|| tracing::info!("served"));
        });

        let logged = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(
            logged.contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{logged}"
        );
    }

    #[test]
    fn a_traceparent_names_the_trace_the_span_and_the_flags() {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            opentelemetry::trace::TraceFlags::SAMPLED,
            false,
            Default::default(),
        );
        assert_eq!(
            traceparent(&span),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
}
