//! Load generator for the event log (`scripts/bench-events` seeds the
//! database, starts the server and runs it). Without a subcommand (as when
//! `cargo test --all-targets` runs the bench target) it does nothing.
//!
//! - `relay`: how fast the NATS JetStream relay drains a backlog. The database
//!   holds `--events` events before the server starts; this polls the stream
//!   (which the server's relay creates) until it holds them all, and reports
//!   events/s from the first message seen to the last (the server's start is
//!   not counted). With `--rate`, writes go on meanwhile
//!   (`RecordConfirmedOrder` at that fixed rate); their events come after the
//!   backlog in the log, so the backlog is drained when the stream holds
//!   `--events` messages.
//! - `watch`: commit-to-client latency of `Events/Watch`. `--watchers` watches
//!   start at the latest cursor; then `RecordConfirmedOrder` at `--rate` calls/s
//!   for `--seconds`, each with its own `x-request-id`. An event's latency is
//!   the instant a watcher received it minus the instant its call returned OK
//!   (the transaction committed before the answer), matched by the event's
//!   `request_id`; p50, p99 and max over every (watcher, event).
//! - `drop-stream`: deletes the stream a `relay` run filled.
//!
//! cargo bench --bench events -- watch --addr http://127.0.0.1:50063 --rate 200 --seconds 10

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use clap::{Parser, Subcommand};
use loyalty::pb;
use loyalty::pb::events_client::EventsClient;
use loyalty::pb::points_client::PointsClient;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 2, global = true)]
    threads: usize,
    /// Print one machine-readable line instead of a sentence.
    #[arg(long, global = true)]
    tsv: bool,
    /// cargo passes `--bench`; ignored.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Times the relay's drain of a backlog into a JetStream stream.
    Relay {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// The stream the server relays to (`--nats-stream`).
        #[arg(long)]
        stream: String,
        /// Events in the backlog.
        #[arg(long)]
        events: u64,
        /// The server, for the writes that go on meanwhile.
        #[arg(long, default_value = "http://127.0.0.1:50063")]
        addr: String,
        /// Writes per second meanwhile; 0 for none.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Members seeded as m1..mN (`bench/seed.sql`).
        #[arg(long, default_value_t = 100_000)]
        members: u64,
        /// How long to wait, at most, for the stream and for the drain.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Measures commit-to-watcher latency under a fixed rate of writes.
    Watch {
        #[arg(long, default_value = "http://127.0.0.1:50063")]
        addr: String,
        /// Concurrent watches, each receiving every event.
        #[arg(long, default_value_t = 4)]
        watchers: usize,
        /// Writes per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// How long to write.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Members seeded as m1..mN (`bench/seed.sql`).
        #[arg(long, default_value_t = 100_000)]
        members: u64,
    },
    /// Deletes a stream (absent is fine).
    DropStream {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        #[arg(long)]
        stream: String,
    },
}

/// The deadline of each write.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// How often the relay run looks at the stream.
const POLL: Duration = Duration::from_millis(5);
/// How long a watch run waits, after the last write answered, for the
/// watchers to receive the last events.
const GRACE: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(command) = args.command else {
        eprintln!("no subcommand: nothing to do (scripts/bench-events runs the scenarios)");
        return Ok(());
    };
    let tsv = args.tsv;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(async move {
            match command {
                Command::Relay {
                    nats_url,
                    stream,
                    events,
                    addr,
                    rate,
                    members,
                    timeout_secs,
                } => {
                    let writes = (rate > 0.0).then_some(WriteLoad {
                        addr,
                        rate,
                        members,
                        prefix: run_prefix("relay"),
                    });
                    relay(
                        &nats_url,
                        &stream,
                        events,
                        writes,
                        Duration::from_secs(timeout_secs),
                        tsv,
                    )
                    .await
                }
                Command::Watch {
                    addr,
                    watchers,
                    rate,
                    seconds,
                    members,
                } => {
                    let writes = WriteLoad {
                        addr,
                        rate,
                        members,
                        prefix: run_prefix("watch"),
                    };
                    watch(writes, watchers, Duration::from_secs(seconds), tsv).await
                }
                Command::DropStream { nats_url, stream } => drop_stream(&nats_url, &stream).await,
            }
        })
}

/// A request id prefix no earlier run used.
fn run_prefix(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bench-{kind}-{:x}", nanos % (1 << 48))
}

fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(addr.to_owned())?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Polls the health check every 50 ms until SERVING, for at most `limit`.
async fn wait_serving(addr: &str, limit: Duration) -> anyhow::Result<()> {
    let mut client = HealthClient::new(channel(addr)?);
    let until = Instant::now() + limit;
    while Instant::now() < until {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(Duration::from_millis(300));
        if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_millis(500), client.check(request)).await
            && answer.into_inner().status == ServingStatus::Serving as i32
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{addr} not SERVING after {limit:?}")
}

/// Writes at a fixed rate.
#[derive(Debug, Clone)]
struct WriteLoad {
    addr: String,
    rate: f64,
    members: u64,
    /// Call `n` sends `x-request-id: <prefix>-<n>`.
    prefix: String,
}

/// What the writes did.
#[derive(Debug, Default)]
struct Writes {
    /// When each answered call (by its number) returned OK.
    answered: HashMap<u64, Instant>,
    errors: u64,
    /// How long the writes went on.
    elapsed: Duration,
}

/// One `RecordConfirmedOrder` of a fresh order by a spread-out member, as the
/// `award-order` scenario of `benches/load.rs` sends it.
fn award(load: &WriteLoad, n: u64) -> anyhow::Result<tonic::Request<pb::RecordConfirmedOrderRequest>> {
    let m = n.wrapping_mul(2_654_435_761) % load.members.max(1) + 1;
    let category = |k: u64| format!("cat{}", (n + k) % 20);
    let mut request = tonic::Request::new(pb::RecordConfirmedOrderRequest {
        account_id: format!("m{m}"),
        order_id: format!("{}-{n}", load.prefix),
        amount: Some(pb::Money {
            amount_minor: 2590,
            currency_code: "USD".to_owned(),
        }),
        confirmed_at: Some(prost_types::Timestamp {
            seconds: 1_780_000_000 + i64::try_from(n % 86_400).unwrap_or(0),
            nanos: 0,
        }),
        products: vec![
            pb::OrderProduct {
                product_id: "sku-1".to_owned(),
                category_id: category(0),
            },
            pb::OrderProduct {
                product_id: "sku-2".to_owned(),
                category_id: category(7),
            },
        ],
    });
    request.set_timeout(WRITE_DEADLINE);
    request
        .metadata_mut()
        .insert("x-request-id", format!("{}-{n}", load.prefix).parse()?);
    Ok(request)
}

/// Calls at `load.rate` until `stop`: open loop, each call on its own task,
/// so that a slow answer does not hold back the next call. `answered` counts
/// the calls answered OK as they are.
async fn write(load: WriteLoad, stop: CancellationToken, answered: Arc<AtomicU64>) -> anyhow::Result<Writes> {
    let client = PointsClient::new(channel(&load.addr)?);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate.max(0.001)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut calls: Vec<JoinHandle<(u64, Result<Instant, tonic::Status>)>> = Vec::new();
    for n in 1.. {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => break,
        }
        let request = award(&load, n)?;
        let (mut client, answered) = (client.clone(), answered.clone());
        calls.push(tokio::spawn(async move {
            let outcome = client.record_confirmed_order(request).await.map(|_| {
                answered.fetch_add(1, Ordering::Relaxed);
                Instant::now()
            });
            (n, outcome)
        }));
    }
    let elapsed = started.elapsed();
    let mut writes = Writes {
        elapsed,
        ..Writes::default()
    };
    for call in calls {
        match call.await? {
            (n, Ok(at)) => {
                writes.answered.insert(n, at);
            }
            (_, Err(status)) => {
                if writes.errors == 0 {
                    eprintln!("first write error: {status:?}");
                }
                writes.errors += 1;
            }
        }
    }
    Ok(writes)
}

/// Polls `stream` until it holds `events` messages; events/s from the first
/// message seen to then, and the writes/s meanwhile.
async fn relay(
    nats_url: &str,
    stream: &str,
    events: u64,
    writes: Option<WriteLoad>,
    limit: Duration,
    tsv: bool,
) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .name("loyalty-bench-events")
        .connection_timeout(Duration::from_secs(5))
        .connect(nats_url)
        .await
        .with_context(|| format!("failed to connect to {nats_url}"))?;
    let context = jetstream::new(client);
    let until = Instant::now() + limit;

    let stop = CancellationToken::new();
    let answered = Arc::new(AtomicU64::new(0));
    let writer = writes.map(|load| {
        let (stop, answered) = (stop.clone(), answered.clone());
        tokio::spawn(async move {
            wait_serving(&load.addr, limit).await?;
            write(load, stop, answered).await
        })
    });

    // The relay creates the stream once the server is up.
    let mut handle = loop {
        match context.get_stream(stream).await {
            Ok(handle) => break handle,
            Err(_) if Instant::now() < until => tokio::time::sleep(POLL).await,
            Err(error) => return Err(error).context(format!("stream {stream} did not appear")),
        }
    };
    let mut first: Option<(Instant, u64, u64)> = None;
    let (done, done_writes) = loop {
        let messages = handle.info().await?.state.messages;
        let now = Instant::now();
        if messages > 0 && first.is_none() {
            first = Some((now, messages, answered.load(Ordering::Relaxed)));
        }
        if messages >= events {
            break (now, answered.load(Ordering::Relaxed));
        }
        anyhow::ensure!(
            now < until,
            "the stream holds {messages} of {events} messages after {limit:?}"
        );
        tokio::time::sleep(POLL).await;
    };
    stop.cancel();
    let writes = match writer {
        Some(writer) => Some(writer.await??),
        None => None,
    };

    let (started, seen, seen_writes) = first.unwrap_or((done, events, done_writes));
    let seconds = done.duration_since(started).as_secs_f64();
    let rate = |count: u64| {
        if seconds > 0.0 {
            format!("{:.0}", count as f64 / seconds)
        } else {
            "-".to_owned()
        }
    };
    let events_rate = rate(events.saturating_sub(seen));
    let (writes_rate, errors) = match &writes {
        Some(writes) => (rate(done_writes - seen_writes), writes.errors),
        None => ("-".to_owned(), 0),
    };
    if tsv {
        println!("relay\t{events}\t{seconds:.2}\t{events_rate}\t{writes_rate}\t{errors}");
    } else {
        println!(
            "relay: {} events in {seconds:.2} s (after the first {seen}) = {events_rate} events/s; \
             writes meanwhile {writes_rate}/s, {errors} write errors",
            events.saturating_sub(seen)
        );
    }
    Ok(())
}

/// Opens `watchers` watches, writes at the load's rate for `seconds`, and
/// reports the latency from each call's answer to each watcher's receipt of
/// its event.
async fn watch(load: WriteLoad, watchers: usize, seconds: Duration, tsv: bool) -> anyhow::Result<()> {
    wait_serving(&load.addr, Duration::from_secs(30)).await?;
    let watch_channel = channel(&load.addr)?;
    let stop = CancellationToken::new();
    // Events of this run received, over all watchers.
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..watchers.max(1) {
        let mut client = EventsClient::new(watch_channel.clone());
        let mut request = tonic::Request::new(pb::WatchRequest {
            start: pb::WatchStart::Latest as i32,
            ..Default::default()
        });
        request.set_timeout(seconds + Duration::from_secs(60));
        let mut stream = client.watch(request).await?.into_inner();
        // The first message says where the watch starts: it is running.
        let first = stream.message().await?.context("the watch ended at once")?;
        anyhow::ensure!(first.event.is_none(), "the first message of a watch is an event");
        let (stop, received, prefix) = (stop.clone(), received.clone(), format!("{}-", load.prefix));
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<(String, Instant)> = Vec::new();
            loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    () = stop.cancelled() => break,
                };
                match message {
                    Ok(Some(pb::WatchResponse {
                        event: Some(event), ..
                    })) => {
                        let at = Instant::now();
                        if event.request_id.starts_with(&prefix) {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        seen.push((event.request_id, at));
                    }
                    Ok(Some(_heartbeat)) => {}
                    Ok(None) => break,
                    Err(status) => {
                        eprintln!("a watch failed: {status:?}");
                        break;
                    }
                }
            }
            seen
        }));
    }

    let writes = {
        let writer_stop = CancellationToken::new();
        let writer = tokio::spawn(write(
            load.clone(),
            writer_stop.clone(),
            Arc::new(AtomicU64::new(0)),
        ));
        tokio::time::sleep(seconds).await;
        writer_stop.cancel();
        writer.await??
    };
    let expected = writes.answered.len() as u64 * tasks.len() as u64;
    let grace = Instant::now() + GRACE;
    while received.load(Ordering::Relaxed) < expected && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();

    let prefix = format!("{}-", load.prefix);
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut early = 0u64;
    for task in tasks {
        for (request_id, at) in task.await? {
            let Some(n) = request_id
                .strip_prefix(&prefix)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let Some(answered) = writes.answered.get(&n) else {
                continue;
            };
            // An event may reach a watcher before its call's answer reaches
            // the writer; that counts as no delay.
            let latency = at.checked_duration_since(*answered).unwrap_or_else(|| {
                early += 1;
                Duration::ZERO
            });
            latencies.push(latency);
        }
    }
    latencies.sort();
    let missing = expected.saturating_sub(latencies.len() as u64);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99, max) = (
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    let calls_rate = writes.answered.len() as f64 / writes.elapsed.as_secs_f64().max(0.001);
    if tsv {
        println!(
            "watch\t{}\t{p50:.2}\t{p99:.2}\t{max:.2}\t{missing}\t{early}\t{calls_rate:.0}\t{}",
            latencies.len(),
            writes.errors
        );
    } else {
        println!(
            "watch: {} events received at {calls_rate:.0} calls/s: p50 {p50:.2} ms, p99 {p99:.2} ms, \
             max {max:.2} ms; {missing} missing, {early} before the answer, {} write errors",
            latencies.len(),
            writes.errors
        );
    }
    Ok(())
}

async fn drop_stream(nats_url: &str, stream: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("failed to connect to {nats_url}"))?;
    // Absent already (the relay never started) is fine.
    let _ = jetstream::new(client).delete_stream(stream).await;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
