//! An OTLP/gRPC trace receiver that counts what it is sent and keeps nothing:
//! the collector `scripts/bench` exports to when it measures the cost of
//! exporting traces (`BENCH_OTLP=1`).
//!
//!   otlp_sink --port 4317
//!
//! Prints `spans <n>` on SIGTERM or Ctrl-C, the number of spans received.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // Without `--port` (as when `cargo test --all-targets` runs the bench
    // targets) there is nothing to receive.
    let Some(port) = args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1)?.parse::<u16>().ok())
    else {
        eprintln!("no --port: nothing to receive (scripts/bench runs the receiver)");
        return Ok(());
    };
    let sink = Sink::default();
    let spans = sink.spans.clone();
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink).max_decoding_message_size(64 << 20))
        .serve_with_shutdown(([127, 0, 0, 1], port).into(), stop)
        .await?;
    println!("spans {}", spans.load(Ordering::Relaxed));
    Ok(())
}
