//! Fault-injection driver for `scripts/chaos`: the client side of each scenario,
//! against a running `loyalty serve`. Every loop is bounded and every call has a
//! deadline. Without a subcommand (as when `cargo test --all-targets` runs the
//! bench target) it does nothing.
//!
//! - `wait`: polls the health check until SERVING.
//! - `writes`: concurrent idempotent writes (`GrantBonus`, `RecordConfirmedOrder`,
//!   each with a unique key) for a fixed time, writing every attempted and every
//!   acknowledged key to files; the script kills the server meanwhile.
//! - `retry`: sends every attempted key again (same content) until it is answered.
//! - `proxy`: a TCP proxy to PostgreSQL that a control file switches between
//!   `open`, `stall` (keep the connections, forward nothing) and `cut`.
//! - `fault`: a steady load of reads and writes (1 s deadline per call) and a
//!   50 ms health poll around one fault (a PostgreSQL restart, or a proxy stall),
//!   printing the codes seen, the health transitions and the longest call.
//! - `races`: cap and stock races (visits, posts, claims of a public code).
//! - `reset-stream`: deletes a JetStream stream, if there is one, so that the
//!   relay scenario starts with a fresh one.
//! - `tap`: a plain NATS subscription to the relay's subjects that writes the
//!   `Nats-Msg-Id` of every publish it sees (duplicates included, which the
//!   stream drops) to a file, until killed.
//! - `relay-check`: waits until a stream holds the expected number of messages,
//!   checks each one's subject, CloudEvents headers and body against its
//!   `Nats-Msg-Id`, and writes the ids (one per message) to a file.
//!
//! cargo bench --bench chaos -- races --addr http://127.0.0.1:50071

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use loyalty::pb;
use loyalty::pb::coupons_client::CouponsClient;
use loyalty::pb::membership_client::MembershipClient;
use loyalty::pb::points_client::PointsClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// cargo passes `--bench`; ignored.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    Wait {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    Writes {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 200)]
        members: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        /// Directory for `attempted` and `acked`.
        #[arg(long)]
        out: PathBuf,
    },
    Retry {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 200)]
        members: u64,
        #[arg(long)]
        out: PathBuf,
    },
    Proxy {
        #[arg(long)]
        listen: u16,
        #[arg(long, default_value_t = 5432)]
        upstream: u16,
        #[arg(long)]
        control: PathBuf,
    },
    Fault {
        #[arg(long)]
        addr: String,
        #[arg(long, value_enum)]
        kind: FaultKind,
        #[arg(long, default_value_t = 200)]
        members: u64,
        /// The proxy's control file (for `stall`).
        #[arg(long)]
        control: Option<PathBuf>,
        #[arg(long, default_value_t = 5)]
        stall_seconds: u64,
    },
    Races {
        #[arg(long)]
        addr: String,
    },
    ResetStream {
        #[arg(long)]
        nats_url: String,
        #[arg(long)]
        stream: String,
    },
    Tap {
        #[arg(long)]
        nats_url: String,
        /// The relay's subject prefix.
        #[arg(long)]
        prefix: String,
        /// The file the ids go to.
        #[arg(long)]
        out: PathBuf,
    },
    RelayCheck {
        #[arg(long)]
        nats_url: String,
        #[arg(long)]
        stream: String,
        /// The relay's subject prefix.
        #[arg(long)]
        prefix: String,
        /// How many messages to wait for (the events in the database).
        #[arg(long)]
        expect: u64,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Directory for `relayed`.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum FaultKind {
    /// `pg_ctlcluster --skip-systemctl-redirect 15 main restart`.
    PgRestart,
    /// The proxy forwards nothing for `--stall-seconds`.
    Stall,
}

/// The deadline of each call of the load.
const DEADLINE: Duration = Duration::from_secs(1);
/// The client-side backstop of every call of the load (5 x the deadline).
const HANG_GUARD: Duration = Duration::from_secs(5);
/// The client-side backstop of the setup and race calls.
const LONG: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(command) = args.command else {
        eprintln!("no subcommand: nothing to do (scripts/chaos runs the scenarios)");
        return Ok(());
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async move {
            match command {
                Command::Wait { addr, seconds } => wait_serving(&addr, seconds).await,
                Command::Writes {
                    addr,
                    members,
                    concurrency,
                    seconds,
                    out,
                } => writes(&addr, members, concurrency, seconds, &out).await,
                Command::Retry { addr, members, out } => retry(&addr, members, &out).await,
                Command::Proxy {
                    listen,
                    upstream,
                    control,
                } => proxy(listen, upstream, control).await,
                Command::Fault {
                    addr,
                    kind,
                    members,
                    control,
                    stall_seconds,
                } => fault(&addr, kind, members, control, stall_seconds).await,
                Command::Races { addr } => races(&addr).await,
                Command::ResetStream { nats_url, stream } => reset_stream(&nats_url, &stream).await,
                Command::Tap {
                    nats_url,
                    prefix,
                    out,
                } => tap(&nats_url, &prefix, &out).await,
                Command::RelayCheck {
                    nats_url,
                    stream,
                    prefix,
                    expect,
                    seconds,
                    out,
                } => relay_check(&nats_url, &stream, &prefix, expect, seconds, &out).await,
            }
        })
}

/// A channel that connects on first use (so it survives the server being down).
/// Each call sends its own deadline (`grpc-timeout`); `guard` is only a
/// client-side backstop, reported as `Cancelled`, for a server that ignores it.
fn channel(addr: &str, guard: Duration) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(addr.to_owned())?
        .connect_timeout(Duration::from_millis(500))
        .timeout(guard)
        .tcp_nodelay(true)
        .connect_lazy())
}

fn request<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

async fn health(client: &mut HealthClient<Channel>) -> Option<ServingStatus> {
    let answer = tokio::time::timeout(
        Duration::from_millis(300),
        client.check(request(
            HealthCheckRequest {
                service: String::new(),
            },
            Duration::from_millis(300),
        )),
    )
    .await;
    match answer {
        Ok(Ok(response)) => ServingStatus::try_from(response.into_inner().status).ok(),
        _ => None,
    }
}

/// Polls the health check every 100 ms until SERVING, for at most `seconds`.
async fn wait_serving(addr: &str, seconds: u64) -> anyhow::Result<()> {
    let mut client = HealthClient::new(channel(addr, HANG_GUARD)?);
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        if health(&mut client).await == Some(ServingStatus::Serving) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{addr} not SERVING after {seconds} s")
}

/// The clients of the idempotent writes.
#[derive(Clone)]
struct Writers {
    points: PointsClient<Channel>,
    coupons: CouponsClient<Channel>,
}

impl Writers {
    fn new(addr: &str) -> anyhow::Result<Self> {
        let channel = channel(addr, HANG_GUARD)?;
        Ok(Self {
            points: PointsClient::new(channel.clone()),
            coupons: CouponsClient::new(channel),
        })
    }
}

/// The platform template of the `checkout` writes.
const CHECKOUT_TEMPLATE: &str = "chaos-checkout";

/// Creates the template of the `checkout` writes (idempotent).
async fn create_checkout_template(addr: &str) -> anyhow::Result<()> {
    let usd = |amount_minor| pb::Money {
        amount_minor,
        currency_code: "USD".to_owned(),
    };
    CouponsClient::new(channel(addr, LONG)?)
        .create_coupon_template(request(
            pb::CreateCouponTemplateRequest {
                template: Some(pb::CouponTemplate {
                    template_id: CHECKOUT_TEMPLATE.to_owned(),
                    name: "chaos 5.00 off".to_owned(),
                    issuer: pb::Issuer::Platform.into(),
                    discount: Some(pb::Discount {
                        kind: Some(pb::discount::Kind::AmountOff(usd(500))),
                    }),
                    currency_code: "USD".to_owned(),
                    validity: Some(pb::Validity {
                        kind: Some(pb::validity::Kind::DaysFromIssuance(365)),
                    }),
                    per_member_limit: 1_000_000,
                    regular_price_only: Some(false),
                    ..Default::default()
                }),
            },
            Duration::from_secs(5),
        ))
        .await?;
    Ok(())
}

/// A whole checkout, every step idempotent by the key: issue a coupon, reserve
/// it for order `key` (revision 1), complete the order, refund one unit of a
/// line (`r1`), then the rest (`r2`, the full refund that restores the coupon).
async fn checkout(
    coupons: &mut CouponsClient<Channel>,
    account_id: String,
    key: &str,
) -> Result<(), tonic::Status> {
    let coupon = coupons
        .issue_coupon(request(
            pb::IssueCouponRequest {
                account_id: account_id.clone(),
                template_id: CHECKOUT_TEMPLATE.to_owned(),
                issuance_id: key.to_owned(),
            },
            DEADLINE,
        ))
        .await?
        .into_inner()
        .coupon
        .map_or(0, |c| c.coupon_id);
    let line = |line_id: &str, seller_id: &str, amount_minor, quantity| pb::CheckoutLine {
        line_id: line_id.to_owned(),
        seller_id: seller_id.to_owned(),
        product_id: format!("p-{line_id}"),
        category_id: "c1".to_owned(),
        unit_price: Some(pb::Money {
            amount_minor,
            currency_code: "USD".to_owned(),
        }),
        quantity,
        sale_price: false,
    };
    coupons
        .reserve_coupons(request(
            pb::ReserveCouponsRequest {
                order: Some(pb::CheckoutOrder {
                    order_id: key.to_owned(),
                    account_id: account_id.clone(),
                    currency_code: "USD".to_owned(),
                    lines: vec![line("l1", "s1", 1000, 3), line("l2", "s2", 700, 1)],
                }),
                coupon_ids: vec![coupon],
                cart_revision: 1,
                hold_duration: None,
            },
            DEADLINE,
        ))
        .await?;
    coupons
        .complete_order(request(
            pb::CompleteOrderRequest {
                account_id: account_id.clone(),
                order_id: key.to_owned(),
            },
            DEADLINE,
        ))
        .await?;
    use pb::refund_order_request::Extent;
    for (refund_id, extent) in [
        (
            "r1",
            Extent::Lines(pb::RefundLines {
                lines: vec![pb::RefundLine {
                    line_id: "l1".to_owned(),
                    quantity: 1,
                }],
            }),
        ),
        ("r2", Extent::WholeOrder(pb::WholeOrder {})),
    ] {
        coupons
            .refund_order(request(
                pb::RefundOrderRequest {
                    account_id: account_id.clone(),
                    order_id: key.to_owned(),
                    refund_id: refund_id.to_owned(),
                    extent: Some(extent),
                },
                DEADLINE,
            ))
            .await?;
    }
    Ok(())
}

/// One idempotent write, fully determined by its key: `bonus-...-N`,
/// `order-...-N` or `checkout-...-N` (a whole checkout, see [`checkout`]).
async fn write(writers: &mut Writers, members: u64, key: &str) -> Result<(), tonic::Status> {
    let points = &mut writers.points;
    let (kind, _) = key.split_once('-').expect("key is kind-...-N");
    let (_, n) = key.rsplit_once('-').expect("key is kind-...-N");
    let n: u64 = n.parse().expect("key ends in a number");
    let account_id = format!("m{}", n % members + 1);
    let at = prost_types::Timestamp {
        seconds: 1_780_000_000 + i64::try_from(n % 3600).unwrap_or(0),
        nanos: 0,
    };
    if kind == "checkout" {
        checkout(&mut writers.coupons, account_id, key).await?;
    } else if kind == "bonus" {
        points
            .grant_bonus(request(
                pb::GrantBonusRequest {
                    account_id,
                    campaign_id: key.to_owned(),
                    points: i32::try_from(n % 7 + 1).unwrap_or(1),
                    description: String::new(),
                    granted_at: Some(at),
                },
                DEADLINE,
            ))
            .await?;
    } else {
        points
            .record_confirmed_order(request(
                pb::RecordConfirmedOrderRequest {
                    account_id,
                    order_id: key.to_owned(),
                    amount: Some(pb::Money {
                        amount_minor: 2590,
                        currency_code: "USD".to_owned(),
                    }),
                    confirmed_at: Some(at),
                    products: vec![pb::OrderProduct {
                        product_id: "sku-1".to_owned(),
                        category_id: format!("cat{}", n % 5),
                    }],
                },
                DEADLINE,
            ))
            .await?;
    }
    Ok(())
}

/// Registers m1..mN (idempotent), 32 at a time.
async fn register(addr: &str, members: u64) -> anyhow::Result<()> {
    let client = MembershipClient::new(channel(addr, LONG)?);
    let results: Vec<_> = futures::stream::iter(1..=members)
        .map(|m| {
            let mut client = client.clone();
            async move {
                client
                    .register_member(request(
                        pb::RegisterMemberRequest {
                            account_id: format!("m{m}"),
                            registered_at: Some(prost_types::Timestamp {
                                seconds: 1_760_000_000,
                                nanos: 0,
                            }),
                            birthday: None,
                        },
                        Duration::from_secs(5),
                    ))
                    .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    if let Some(error) = results.into_iter().find_map(Result::err) {
        anyhow::bail!("registration failed: {error:?}");
    }
    Ok(())
}

/// Scenario 1, first half: writes for `seconds`, recording attempted and acked keys.
async fn writes(
    addr: &str,
    members: u64,
    concurrency: usize,
    seconds: u64,
    out: &Path,
) -> anyhow::Result<()> {
    register(addr, members).await?;
    create_checkout_template(addr).await?;
    let writers = Writers::new(addr)?;
    let sequence = Arc::new(AtomicU64::new(0));
    let attempted = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let codes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut callers = Vec::new();
    for _ in 0..concurrency {
        let (mut writers, sequence) = (writers.clone(), sequence.clone());
        let (attempted, acked, codes) = (attempted.clone(), acked.clone(), codes.clone());
        callers.push(tokio::spawn(async move {
            while Instant::now() < until {
                let n = sequence.fetch_add(1, Ordering::Relaxed);
                let kind = ["bonus", "order", "checkout"][usize::try_from(n % 3).unwrap_or(0)];
                let key = format!("{kind}-{n}");
                attempted.lock().unwrap().push(key.clone());
                let code = match write(&mut writers, members, &key).await {
                    Ok(()) => {
                        acked.lock().unwrap().push(key);
                        "OK".to_owned()
                    }
                    Err(status) => {
                        // Down: do not spin; try again shortly.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        format!("{:?}", status.code())
                    }
                };
                *codes.lock().unwrap().entry(code).or_default() += 1;
            }
        }));
    }
    for caller in callers {
        caller.await?;
    }
    std::fs::write(out.join("attempted"), attempted.lock().unwrap().join("\n") + "\n")?;
    std::fs::write(out.join("acked"), acked.lock().unwrap().join("\n") + "\n")?;
    println!(
        "writes: {} attempted, {} acknowledged; codes {:?}",
        attempted.lock().unwrap().len(),
        acked.lock().unwrap().len(),
        codes.lock().unwrap()
    );
    Ok(())
}

/// Scenario 1, second half: every attempted key again, each until OK (at most 20 tries).
async fn retry(addr: &str, members: u64, out: &Path) -> anyhow::Result<()> {
    let keys = std::fs::read_to_string(out.join("attempted"))?;
    let writers = Writers::new(addr)?;
    let failures: Vec<String> = futures::stream::iter(keys.lines().filter(|k| !k.is_empty()))
        .map(|key| {
            let mut writers = writers.clone();
            async move {
                for _ in 0..20 {
                    if write(&mut writers, members, key).await.is_ok() {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some(key.to_owned())
            }
        })
        .buffer_unordered(32)
        .filter_map(|failed| async move { failed })
        .collect()
        .await;
    println!(
        "retry: {} keys sent again, {} never answered OK",
        keys.lines().count(),
        failures.len()
    );
    if !failures.is_empty() {
        anyhow::bail!("retries failed: {:?}", &failures[..failures.len().min(5)]);
    }
    Ok(())
}

const OPEN: u8 = 0;
const STALLED: u8 = 1;
const CUT: u8 = 2;

/// A TCP proxy to PostgreSQL; the control file's content (`open`, `stall`, `cut`)
/// is read every 20 ms. Runs until killed.
async fn proxy(listen: u16, upstream: u16, control: PathBuf) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await?;
    let mode = Arc::new(AtomicU8::new(OPEN));
    let generation = Arc::new(AtomicU64::new(0));
    {
        let (mode, generation) = (mode.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let wanted = match std::fs::read_to_string(&control).unwrap_or_default().trim() {
                    "stall" => STALLED,
                    "cut" => CUT,
                    _ => OPEN,
                };
                if wanted == CUT && mode.load(Ordering::SeqCst) != CUT {
                    generation.fetch_add(1, Ordering::SeqCst);
                }
                mode.store(wanted, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    loop {
        let (client, _) = listener.accept().await?;
        if mode.load(Ordering::SeqCst) == CUT {
            continue; // dropped: refused
        }
        let (mode, generation) = (mode.clone(), generation.clone());
        tokio::spawn(async move {
            let born = generation.load(Ordering::SeqCst);
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let cut = async {
                while generation.load(Ordering::SeqCst) == born {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::select! {
                () = pump(client_read, server_write, mode.clone()) => {}
                () = pump(server_read, client_write, mode) => {}
                () = cut => {}
            }
        });
    }
}

/// Copies `from` to `to`, holding the bytes while the proxy is stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        while mode.load(Ordering::SeqCst) == STALLED {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// One call of the steady load: when it started, how long it took, its code.
struct Sample {
    started: Instant,
    took: Duration,
    code: String,
}

/// Scenario 2: a steady load (8 callers, reads and writes, 1 s deadline) and a
/// 50 ms health poll around one fault.
async fn fault(
    addr: &str,
    kind: FaultKind,
    members: u64,
    control: Option<PathBuf>,
    stall_seconds: u64,
) -> anyhow::Result<()> {
    register(addr, members).await?;
    let channel = channel(addr, HANG_GUARD)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sequence = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let tag = match kind {
        FaultKind::PgRestart => "restart",
        FaultKind::Stall => "stall",
    };
    let mut callers = Vec::new();
    for caller in 0..8u64 {
        let mut writers = Writers {
            points: PointsClient::new(channel.clone()),
            coupons: CouponsClient::new(channel.clone()),
        };
        let (stop, sequence, samples) = (stop.clone(), sequence.clone(), samples.clone());
        callers.push(tokio::spawn(async move {
            // Bounded by `stop`, which is set at the latest 40 s after the start.
            while !stop.load(Ordering::SeqCst) {
                let n = sequence.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let result = if caller % 2 == 0 {
                    writers
                        .points
                        .get_balance(request(
                            pb::GetBalanceRequest {
                                account_id: format!("m{}", n % members + 1),
                            },
                            DEADLINE,
                        ))
                        .await
                        .map(|_| ())
                } else {
                    write(&mut writers, members, &format!("bonus-{tag}-{n}")).await
                };
                let took = started.elapsed();
                let code = match result {
                    Ok(()) => "OK".to_owned(),
                    Err(status) => format!("{:?}", status.code()),
                };
                samples.lock().unwrap().push(Sample { started, took, code });
                if took < Duration::from_millis(5) && code_is_error(&samples) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let health_log = Arc::new(Mutex::new(Vec::<(Instant, Option<ServingStatus>)>::new()));
    let poller = {
        let (stop, health_log) = (stop.clone(), health_log.clone());
        let mut client = HealthClient::new(channel.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let at = Instant::now();
                let status = health(&mut client).await;
                health_log.lock().unwrap().push((at, status));
                tokio::time::sleep(Duration::from_millis(50).saturating_sub(at.elapsed())).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    let fault_at = Instant::now();
    match kind {
        FaultKind::PgRestart => {
            let status = tokio::task::spawn_blocking(|| {
                std::process::Command::new("pg_ctlcluster")
                    .args(["--skip-systemctl-redirect", "15", "main", "restart"])
                    .status()
            })
            .await??;
            anyhow::ensure!(status.success(), "pg_ctlcluster restart failed: {status}");
        }
        FaultKind::Stall => {
            let control = control.ok_or_else(|| anyhow::anyhow!("--control is needed"))?;
            std::fs::write(&control, "stall")?;
            tokio::time::sleep(Duration::from_secs(stall_seconds)).await;
            std::fs::write(&control, "open")?;
        }
    }
    let recovered_at = Instant::now();
    // Wait for SERVING again (at most 30 s), then 2 s of steady load.
    let give_up = recovered_at + Duration::from_secs(30);
    let serving_at = loop {
        let last = health_log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(at, _)| *at >= recovered_at)
            .copied();
        if let Some((at, Some(ServingStatus::Serving))) = last {
            break Some(at);
        }
        if Instant::now() > give_up {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await?;
    }
    poller.await?;

    let window_end = serving_at.unwrap_or(give_up);
    let samples = samples.lock().unwrap();
    let mut codes = BTreeMap::<&str, u64>::new();
    let mut longest = Duration::ZERO;
    for sample in samples
        .iter()
        .filter(|s| s.started + s.took >= fault_at && s.started <= window_end)
    {
        *codes.entry(sample.code.as_str()).or_default() += 1;
        longest = longest.max(sample.took);
    }
    let after: BTreeMap<&str, u64> = samples
        .iter()
        .filter(|s| s.started > window_end + Duration::from_millis(500))
        .fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s.code.as_str()).or_default() += 1;
            m
        });
    let health_log = health_log.lock().unwrap();
    let not_serving = health_log
        .iter()
        .find(|(at, status)| *at >= fault_at && *status != Some(ServingStatus::Serving))
        .map(|(at, status)| (at.duration_since(fault_at), *status));
    let ms = |d: Duration| format!("{} ms", d.as_millis());
    println!("{kind:?}: fault lasted {}", ms(recovered_at - fault_at));
    println!("{kind:?}: codes from the fault to SERVING again: {codes:?}");
    match not_serving {
        Some((after, status)) => println!(
            "{kind:?}: health left SERVING {} after the fault (answer {})",
            ms(after),
            status.map_or("none within 300 ms".to_owned(), |s| format!("{s:?}"))
        ),
        None => println!("{kind:?}: health never left SERVING"),
    }
    match serving_at {
        Some(at) => println!(
            "{kind:?}: SERVING again {} after the recovery",
            ms(at.saturating_duration_since(recovered_at))
        ),
        None => println!("{kind:?}: not SERVING 30 s after the recovery"),
    }
    println!(
        "{kind:?}: longest call in that window {} (deadline {})",
        ms(longest),
        ms(DEADLINE)
    );
    println!("{kind:?}: codes after recovery (from 0.5 s after SERVING): {after:?}");
    Ok(())
}

/// Whether the caller's last sample is an error (then it pauses briefly, so a
/// refused connection does not turn into a busy loop).
fn code_is_error(samples: &Mutex<Vec<Sample>>) -> bool {
    samples.lock().unwrap().last().is_some_and(|s| s.code != "OK")
}

/// Scenario 3: cap and stock races. Prints each overshoot (must be 0).
async fn races(addr: &str) -> anyhow::Result<()> {
    let channel = channel(addr, LONG)?;
    let points = PointsClient::new(channel.clone());
    let mut coupons = CouponsClient::new(channel.clone());
    let members = 2000;
    register(addr, members).await?;
    let long = LONG;

    // 100 concurrent visits of one member on one day: 1 point.
    let visits = futures::future::join_all((0..100).map(|i| {
        let mut points = points.clone();
        async move {
            points
                .record_visit(request(
                    pb::RecordVisitRequest {
                        account_id: "m1".to_owned(),
                        channel: pb::VisitChannel::App.into(),
                        visited_at: Some(prost_types::Timestamp {
                            seconds: 1_781_424_000 + 8 * 3600 + i * 60,
                            nanos: 0,
                        }),
                    },
                    long,
                ))
                .await
        }
    }))
    .await;
    let visit_errors = visits.iter().filter(|r| r.is_err()).count();
    let visit_points: i32 = visits
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|r| !r.get_ref().replayed)
        .map(|r| r.get_ref().entry.as_ref().map_or(0, |e| e.points))
        .sum();
    let balance = |account: &'static str| {
        let mut points = points.clone();
        async move {
            points
                .get_balance(request(
                    pb::GetBalanceRequest {
                        account_id: account.to_owned(),
                    },
                    long,
                ))
                .await
                .map(|r| r.into_inner().lifetime_points)
        }
    };
    let m1 = balance("m1").await?;
    println!(
        "races: 100 concurrent visits, one day: {visit_points} point(s) awarded, balance {m1}, overshoot {}, errors {visit_errors}",
        m1 - 1
    );

    // 50 concurrent posts of one member in one month: 10 points (5 x 2).
    let posts = futures::future::join_all((0..50).map(|i| {
        let mut points = points.clone();
        async move {
            points
                .record_post(request(
                    pb::RecordPostRequest {
                        account_id: "m2".to_owned(),
                        post_id: format!("post-{i}"),
                        published_at: Some(prost_types::Timestamp {
                            seconds: 1_781_085_600,
                            nanos: 0,
                        }),
                    },
                    long,
                ))
                .await
        }
    }))
    .await;
    let post_errors = posts.iter().filter(|r| r.is_err()).count();
    let m2 = balance("m2").await?;
    println!(
        "races: 50 concurrent posts, one month: balance {m2}, overshoot {}, errors {post_errors}",
        m2 - 10
    );

    // 2,000 concurrent claims of one public code, stock 200: 200 coupons.
    coupons
        .create_coupon_template(request(
            pb::CreateCouponTemplateRequest {
                template: Some(pb::CouponTemplate {
                    template_id: "chaos-stock".to_owned(),
                    name: "chaos stock".to_owned(),
                    issuer: pb::Issuer::Platform.into(),
                    discount: Some(pb::Discount {
                        kind: Some(pb::discount::Kind::AmountOff(pb::Money {
                            amount_minor: 100,
                            currency_code: "USD".to_owned(),
                        })),
                    }),
                    currency_code: "USD".to_owned(),
                    validity: Some(pb::Validity {
                        kind: Some(pb::validity::Kind::DaysFromIssuance(30)),
                    }),
                    total_stock: Some(200),
                    ..Default::default()
                }),
            },
            long,
        ))
        .await?;
    coupons
        .create_public_code(request(
            pb::CreatePublicCodeRequest {
                template_id: "chaos-stock".to_owned(),
                code: "CHAOS-STOCK".to_owned(),
            },
            long,
        ))
        .await?;
    let claims: Vec<_> = futures::stream::iter(1..=members)
        .map(|m| {
            let mut coupons = coupons.clone();
            async move {
                coupons
                    .claim_coupon(request(
                        pb::ClaimCouponRequest {
                            account_id: format!("m{m}"),
                            code: "CHAOS-STOCK".to_owned(),
                        },
                        long,
                    ))
                    .await
            }
        })
        .buffer_unordered(2000)
        .collect()
        .await;
    let claimed = claims.iter().filter(|r| r.is_ok()).count();
    let mut refused = BTreeMap::<String, u64>::new();
    for error in claims.iter().filter_map(|r| r.as_ref().err()) {
        let reason = tonic_types::StatusExt::get_error_details(error)
            .error_info()
            .map_or_else(|| format!("{:?}", error.code()), |i| i.reason.clone());
        *refused.entry(reason).or_default() += 1;
    }
    println!(
        "races: 2000 concurrent claims, stock 200: {claimed} coupons, overshoot {}, refusals {refused:?}",
        claimed as i64 - 200
    );
    Ok(())
}

/// Deletes `stream` if it exists.
async fn reset_stream(nats_url: &str, stream: &str) -> anyhow::Result<()> {
    let jetstream = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    if jetstream.get_stream(stream).await.is_ok() {
        jetstream.delete_stream(stream).await?;
    }
    Ok(())
}

/// Writes the `Nats-Msg-Id` of every message published under `prefix` to
/// `out`, a line each, as they come. Runs until killed.
async fn tap(nats_url: &str, prefix: &str, out: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let client = async_nats::connect(nats_url).await?;
    let mut messages = client.subscribe(format!("{prefix}.>")).await?;
    client.flush().await?;
    let mut file = std::fs::File::create(out)?;
    while let Some(message) = messages.next().await {
        let id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
            .map_or("", |value| value.as_str());
        writeln!(file, "{id}")?;
    }
    Ok(())
}

/// How many messages `stream` holds (0 before the relay created it).
async fn stream_messages(jetstream: &async_nats::jetstream::Context, stream: &str) -> anyhow::Result<u64> {
    match jetstream.get_stream(stream).await {
        Ok(mut found) => Ok(found.info().await?.state.messages),
        Err(_) => Ok(0),
    }
}

/// Scenario 4, the stream's side: waits (at most `seconds`) until `stream`
/// holds `expect` messages, reads every message with an ordered consumer,
/// checks it against its `Nats-Msg-Id`, and writes the ids to `<out>/relayed`.
async fn relay_check(
    nats_url: &str,
    stream: &str,
    prefix: &str,
    expect: u64,
    seconds: u64,
    out: &Path,
) -> anyhow::Result<()> {
    use async_nats::header::NATS_MESSAGE_ID;
    use prost::Message;

    let jetstream = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let held = loop {
        let held = stream_messages(&jetstream, stream).await?;
        if held >= expect || Instant::now() > until {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let waited = started.elapsed();
    let mut ids = Vec::new();
    let mut mismatched = 0u64;
    if held > 0 {
        let consumer = jetstream
            .get_stream(stream)
            .await?
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
            .await?;
        let mut messages = consumer.messages().await?;
        while (ids.len() as u64) < held {
            let message = tokio::time::timeout(LONG, messages.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("the consumer ended"))??;
            let headers = message.headers.clone().unwrap_or_default();
            let header = |name: &str| headers.get(name).map_or("", |value| value.as_str());
            let id = headers
                .get(NATS_MESSAGE_ID)
                .map_or("", |value| value.as_str())
                .to_owned();
            let event = pb::Event::decode(message.payload.clone()).ok();
            let kind = message
                .subject
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('.'))
                .unwrap_or_default();
            let whole = !kind.is_empty()
                && header("ce-id") == id
                && header("ce-type") == format!("loyalty.v1.{kind}")
                && header("ce-specversion") == "1.0"
                && event
                    .as_ref()
                    .is_some_and(|event| event.event_id == id && event.account_id == header("ce-subject"));
            if !whole {
                mismatched += 1;
            }
            ids.push(id);
        }
    }
    std::fs::write(out.join("relayed"), ids.join("\n") + "\n")?;
    println!(
        "relay: the stream holds {held} messages ({expect} expected) after {} ms; \
         {mismatched} with a subject, headers or body that do not match their id",
        waited.as_millis()
    );
    Ok(())
}
