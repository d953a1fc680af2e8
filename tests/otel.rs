//! OpenTelemetry traces end to end (SPEC §5): the real server, started with
//! `--otlp-endpoint`, exports the spans of a call to a collector in the test,
//! and the call continues the trace its caller sent in `traceparent`.
//!
//! A test binary of its own: the subscriber is process-global, so the test
//! installs it once, with `telemetry::init`, as `loyalty serve` does; the
//! app's tasks (which would not see a thread-local subscriber) see it too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use loyalty::clock::SystemClock;
use loyalty::config::Config;
use loyalty::pb;
use loyalty::pb::membership_client::MembershipClient;
use loyalty::startup::Application;
use loyalty::telemetry;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The trace and the span the caller says the call belongs to.
const CALLER_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

#[sqlx::test]
async fn a_call_continues_the_callers_trace_and_its_spans_reach_the_collector(pool: PgPool) {
    // Arrange: a collector, the telemetry exporting to it, the app.
    let collector = Collector::start().await;
    let config = Config::try_parse_from([
        "loyalty",
        "--listen-addr",
        "127.0.0.1:0",
        "--health-check-interval-ms",
        "100",
        "--otlp-endpoint",
        &collector.endpoint,
        "--otlp-service-name",
        "loyalty-under-test",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .expect("test flags parse");
    let telemetry = telemetry::init("text", Some(&config.traces)).expect("telemetry starts");
    let app = Application::build(config, pool, Arc::new(SystemClock))
        .await
        .expect("app builds");
    let port = app.port();
    let metrics_port = app.metrics_port().expect("metrics are served");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .expect("the test server accepts connections");
    wait_until_serving(channel.clone()).await;

    // Act: a call in the caller's trace; then the server stops and the
    // telemetry shuts down, as at exit, exporting what is queued.
    let mut request = tonic::Request::new(pb::RegisterMemberRequest {
        account_id: "alice".into(),
        registered_at: Some(prost_types::Timestamp {
            seconds: 1_748_736_000, // 2025-06-01T00:00:00Z
            nanos: 0,
        }),
        birthday: None,
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    let response = MembershipClient::new(channel)
        .register_member(request)
        .await
        .expect("the member registers");
    let metrics = scrape(metrics_port).await;
    let _ = stop.send(());
    server.await.unwrap().expect("the server stops cleanly");
    telemetry.shutdown().await;

    // Assert: the response names the call's span in the caller's trace.
    let answered = response
        .metadata()
        .get("traceparent")
        .expect("the response carries a traceparent")
        .to_str()
        .unwrap()
        .to_owned();
    let fields: Vec<&str> = answered.split('-').collect();
    assert_eq!(fields.len(), 4, "{answered}");
    assert_eq!(fields[1], CALLER_TRACE_ID, "{answered}");
    assert_ne!(fields[2], CALLER_SPAN_ID, "the call's own span: {answered}");

    // The call span: in the caller's trace, under the caller's span, a server
    // span naming the method and the request id, from the named service.
    let spans = collector.spans_of(&hex(CALLER_TRACE_ID)).await;
    let (service, call) = spans
        .iter()
        .find(|(_, span)| {
            span.name == "call"
                && attribute(span, "method").as_deref() == Some("/loyalty.v1.Membership/RegisterMember")
        })
        .unwrap_or_else(|| panic!("no call span in the caller's trace: {spans:#?}"));
    assert_eq!(service, "loyalty-under-test");
    assert_eq!(call.parent_span_id, hex(CALLER_SPAN_ID));
    assert_eq!(call.span_id, hex(fields[2]), "the answered span is the call span");
    assert_eq!(call.kind, SpanKind::Server as i32);
    assert!(attribute(call, "request_id").is_some_and(|id| !id.is_empty()));
    assert_eq!(attribute(call, "trace_id").as_deref(), Some(CALLER_TRACE_ID));
    // The domain operation's span is the call span's child, in the same trace.
    assert!(
        spans
            .iter()
            .any(|(_, span)| span.name == "register" && span.parent_span_id == call.span_id),
        "no register span under the call span: {spans:#?}"
    );
    // The statement's span is the domain span's child, with its duration.
    let register = spans
        .iter()
        .find(|(_, span)| span.name == "register")
        .map(|(_, span)| span)
        .unwrap();
    let statement = spans
        .iter()
        .find(|(_, span)| span.name == "insert" && span.parent_span_id == register.span_id)
        .map(|(_, span)| span)
        .unwrap_or_else(|| panic!("no database span under the register span: {spans:#?}"));
    assert!(statement.end_time_unix_nano > statement.start_time_unix_nano);
    assert_eq!(attribute(statement, "account_id").as_deref(), Some("alice"));

    // The same statement was timed into the metrics (the subscriber is this
    // process's: the series is the process's too).
    let count = metrics
        .lines()
        .find(|line| {
            line.starts_with("loyalty_db_statement_duration_seconds_count")
                && line.contains(r#"statement="members::insert""#)
        })
        .unwrap_or_else(|| panic!("no statement series in the scrape:\n{metrics}"));
    assert!(count.ends_with(" 1"), "{count}");
}

/// The metrics endpoint's text.
async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    response
}

/// An OTLP/gRPC trace receiver on a port of its own, keeping what it is sent.
#[derive(Clone)]
struct Collector {
    endpoint: String,
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

impl Collector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector = Collector {
            endpoint: format!("http://{}", listener.local_addr().unwrap()),
            received: Arc::default(),
        };
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        collector
    }

    /// The spans of the trace `trace_id` received, each with the
    /// `service.name` of its resource, waiting (bounded) until there are some.
    async fn spans_of(&self, trace_id: &[u8]) -> Vec<(String, Span)> {
        for _ in 0..100 {
            let spans: Vec<(String, Span)> = self
                .received
                .lock()
                .unwrap()
                .iter()
                .flat_map(|request| &request.resource_spans)
                .flat_map(|resource| {
                    let service = resource
                        .resource
                        .as_ref()
                        .and_then(|resource| string_value(&resource.attributes, "service.name"))
                        .unwrap_or_default();
                    resource
                        .scope_spans
                        .iter()
                        .flat_map(|scope| &scope.spans)
                        .map(move |span| (service.clone(), span.clone()))
                })
                .filter(|(_, span)| span.trace_id == trace_id)
                .collect();
            if !spans.is_empty() {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the collector received no span of the trace");
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A span attribute's text.
fn attribute(span: &Span, key: &str) -> Option<String> {
    string_value(&span.attributes, key)
}

fn string_value(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| match attribute.value.as_ref()?.value.as_ref()? {
            Value::StringValue(text) => Some(text.clone()),
            _ => None,
        })
}

/// The bytes of a hex id.
fn hex(id: &str) -> Vec<u8> {
    (0..id.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&id[at..at + 2], 16).unwrap())
        .collect()
}

/// Waits (bounded) until the health check says SERVING: migrations ran.
async fn wait_until_serving(channel: Channel) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..100 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|response| response.into_inner().status)
            .ok();
        if status == Some(ServingStatus::Serving as i32) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the test server never became SERVING");
}
