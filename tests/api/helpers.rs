//! Spawns the real application on port 0 against a test database and hands out
//! typed gRPC clients.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::Parser;
use loyalty::auth::TokenHash;
use loyalty::clock::ManualClock;
use loyalty::config::Config;
use loyalty::pb;
use loyalty::pb::coupons_client::CouponsClient;
use loyalty::pb::events_client::EventsClient;
use loyalty::pb::membership_client::MembershipClient;
use loyalty::pb::points_client::PointsClient;
use loyalty::startup::Application;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Writes a private (mode 600) tokens file granting each `(caller, token,
/// scopes)` its scopes, with the token stored as its hash; `-` as the token
/// writes a caller without one.
pub fn tokens_file(name: &str, callers: &[(&str, &str, &str)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::temp_dir().join(format!("loyalty-{name}-{}.txt", std::process::id()));
    let text: String = callers
        .iter()
        .map(|(caller, token, scopes)| match *token {
            "-" => format!("{caller} - {scopes}\n"),
            token => format!("{caller} {} {scopes}\n", TokenHash::of(token)),
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Migrates `pool` as a database of an earlier release: the migrations whose
/// file names sort before `version` (e.g. "20261205000006"), the ones that
/// release shipped.
pub async fn migrate_before(pool: &PgPool, version: &str) {
    let dir = std::env::temp_dir().join(format!("loyalty-migrations-{version}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir("migrations").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < version {
            std::fs::copy(&path, dir.join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(dir.as_path())
        .await
        .unwrap()
        .run(pool)
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether the test database is a Citus database (`LOYALTY_TEST_CITUS_URL`,
/// docs/scale-out.md).
pub async fn on_citus(pool: &PgPool) -> bool {
    loyalty::db::is_citus(pool).await.unwrap()
}

/// Waits (5 s at most, else panics) until a backend of this database whose
/// statement contains `statement_part` waits for a lock, and answers its id
/// for `pg_terminate_backend`: on Citus the global one, since the wait is
/// on a worker (`citus_stat_activity`).
pub async fn lock_waiter(pool: &PgPool, statement_part: &str) -> i64 {
    let (view, pid) = if on_citus(pool).await {
        ("citus_stat_activity", "global_pid")
    } else {
        ("pg_stat_activity", "pid::bigint")
    };
    for _ in 0..250 {
        let waiter: Option<i64> = sqlx::query_scalar(&format!(
            "select {pid} from {view} where datname = current_database() \
             and wait_event_type = 'Lock' and query ilike '%' || $1 || '%' and pid <> pg_backend_pid() \
             limit 1"
        ))
        .bind(statement_part)
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some(waiter) = waiter {
            return waiter;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no statement with {statement_part:?} waited for a lock");
}

/// The instant the test clock starts at: mid-June, far from month edges.
pub fn default_now() -> DateTime<Utc> {
    "2026-06-15T12:00:00Z".parse().unwrap()
}

/// A running server and clients talking to it over a real socket.
pub struct TestApp {
    pub port: u16,
    pub metrics_port: Option<u16>,
    pub clock: Arc<ManualClock>,
    pub members: MembershipClient<Channel>,
    pub points: PointsClient<Channel>,
    pub coupons: CouponsClient<Channel>,
    pub events: EventsClient<Channel>,
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Spawns the app with the default configuration (program time zone UTC).
pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, &[]).await
}

/// Spawns the app with extra `loyalty serve` flags, e.g. `["--time-zone", "Europe/Berlin"]`,
/// and waits until it reports SERVING.
pub async fn spawn_app_with(pool: PgPool, flags: &[&str]) -> TestApp {
    let app = start_app(pool, flags).await;
    wait_until_serving(app.channel.clone()).await;
    app
}

/// Starts the app without waiting for the database.
pub async fn start_app(pool: PgPool, flags: &[&str]) -> TestApp {
    let mut args = vec![
        "loyalty",
        "--listen-addr",
        "127.0.0.1:0",
        "--health-check-interval-ms",
        "100",
    ];
    args.extend_from_slice(flags);
    let config = Config::try_parse_from(args).expect("test flags parse");
    let clock = Arc::new(ManualClock::new(default_now()));
    let app = Application::build(config, pool, clock.clone())
        .await
        .expect("app builds");
    let port = app.port();
    let metrics_port = app.metrics_port();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .expect("the test server accepts connections");
    TestApp {
        port,
        metrics_port,
        clock,
        members: MembershipClient::new(channel.clone()),
        points: PointsClient::new(channel.clone()),
        coupons: CouponsClient::new(channel.clone()),
        events: EventsClient::new(channel.clone()),
        channel,
        stop: Some(stop),
        server: Some(server),
    }
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
            .map(|r| r.into_inner().status)
            .ok();
        if status == Some(ServingStatus::Serving as i32) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the test server never became SERVING");
}

impl TestApp {
    /// Asks the server to shut down gracefully (as SIGTERM does), without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Whether the server has exited.
    pub fn has_stopped(&self) -> bool {
        self.server.as_ref().is_none_or(|s| s.is_finished())
    }

    /// Stops the server gracefully and waits (bounded) for it to exit.
    pub async fn stop(mut self) {
        self.signal_stop();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(std::time::Duration::from_secs(10), server)
                .await
                .expect("the server stops within 10 s")
                .expect("server task")
                .expect("server ran cleanly");
        }
    }

    /// Registers a member registered a year before the test clock.
    pub async fn register(&self, account_id: &str) {
        self.members
            .clone()
            .register_member(pb::RegisterMemberRequest {
                account_id: account_id.to_owned(),
                registered_at: Some(ts("2025-06-01T00:00:00Z")),
                birthday: None,
            })
            .await
            .expect("registration succeeds");
    }

    /// Reports a confirmed order of `amount_minor` USD with `(product, category)` lines.
    pub async fn confirm_order(
        &self,
        account_id: &str,
        order_id: &str,
        amount_minor: i64,
        at: &str,
        products: &[(&str, &str)],
    ) -> Result<pb::RecordConfirmedOrderResponse, tonic::Status> {
        self.points
            .clone()
            .record_confirmed_order(order_request(account_id, order_id, amount_minor, at, products))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Grants a campaign bonus counting at `granted_at`.
    pub async fn bonus(
        &self,
        account_id: &str,
        campaign_id: &str,
        points: i32,
        granted_at: &str,
    ) -> pb::PointEntry {
        self.points
            .clone()
            .grant_bonus(pb::GrantBonusRequest {
                account_id: account_id.to_owned(),
                campaign_id: campaign_id.to_owned(),
                points,
                description: String::new(),
                granted_at: Some(ts(granted_at)),
            })
            .await
            .expect("bonus granted")
            .into_inner()
            .entry
            .unwrap()
    }

    /// Reports a visit at `at`.
    pub async fn visit(&self, account_id: &str, at: &str) -> Result<pb::RecordVisitResponse, tonic::Status> {
        self.points
            .clone()
            .record_visit(pb::RecordVisitRequest {
                account_id: account_id.to_owned(),
                channel: pb::VisitChannel::App.into(),
                visited_at: Some(ts(at)),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Reports a published post.
    pub async fn post(
        &self,
        account_id: &str,
        post_id: &str,
        at: &str,
    ) -> Result<pb::RecordPostResponse, tonic::Status> {
        self.points
            .clone()
            .record_post(pb::RecordPostRequest {
                account_id: account_id.to_owned(),
                post_id: post_id.to_owned(),
                published_at: Some(ts(at)),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// The member's balance.
    pub async fn balance(&self, account_id: &str) -> pb::GetBalanceResponse {
        self.points
            .clone()
            .get_balance(pb::GetBalanceRequest {
                account_id: account_id.to_owned(),
            })
            .await
            .expect("balance")
            .into_inner()
    }

    /// Every entry of the member, newest first, walking all pages.
    pub async fn all_entries(&self, account_id: &str) -> Vec<pb::PointEntry> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .points
                .clone()
                .list_point_entries(pb::ListPointEntriesRequest {
                    account_id: account_id.to_owned(),
                    page_size: 100,
                    page_token,
                    ..Default::default()
                })
                .await
                .expect("listing")
                .into_inner();
            entries.extend(page.entries);
            if page.next_page_token.is_empty() {
                return entries;
            }
            page_token = page.next_page_token;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A confirmed-order request in USD.
pub fn order_request(
    account_id: &str,
    order_id: &str,
    amount_minor: i64,
    at: &str,
    products: &[(&str, &str)],
) -> pb::RecordConfirmedOrderRequest {
    pb::RecordConfirmedOrderRequest {
        account_id: account_id.to_owned(),
        order_id: order_id.to_owned(),
        amount: Some(usd(amount_minor)),
        confirmed_at: Some(ts(at)),
        products: products
            .iter()
            .map(|(p, c)| pb::OrderProduct {
                product_id: (*p).to_owned(),
                category_id: (*c).to_owned(),
            })
            .collect(),
    }
}

/// A wire timestamp from RFC 3339 text.
pub fn ts(rfc3339: &str) -> prost_types::Timestamp {
    let instant: DateTime<Utc> = rfc3339.parse().expect("valid RFC 3339 instant");
    prost_types::Timestamp {
        seconds: instant.timestamp(),
        nanos: instant.timestamp_subsec_nanos() as i32,
    }
}

/// The `google.rpc.ErrorInfo` reason of an error status.
pub fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"))
}

/// The fields named by the `google.rpc.BadRequest` of an error status.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|br| br.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Points of each entry, in order.
pub fn points_of(entries: &[pb::PointEntry]) -> Vec<i32> {
    entries.iter().map(|e| e.points).collect()
}

/// An amount of US dollars on the wire: `amount_minor` cents.
pub fn usd(amount_minor: i64) -> pb::Money {
    pb::Money {
        amount_minor,
        currency_code: "USD".to_owned(),
    }
}

/// The cents of an amount the server answered in US dollars; panics on an
/// absent amount or another currency.
pub fn usd_cents(money: &Option<pb::Money>) -> i64 {
    let money = money.as_ref().expect("an amount");
    assert_eq!(money.currency_code, "USD", "an amount in US dollars");
    money.amount_minor
}

/// A USD platform template: `amount_off` cents off, valid 30 days from issuance.
pub fn platform_template(template_id: &str, amount_off: i64) -> pb::CouponTemplate {
    pb::CouponTemplate {
        template_id: template_id.to_owned(),
        name: format!("{template_id} name"),
        issuer: pb::Issuer::Platform.into(),
        discount: Some(pb::Discount {
            kind: Some(pb::discount::Kind::AmountOff(usd(amount_off))),
        }),
        currency_code: "USD".to_owned(),
        validity: Some(pb::Validity {
            kind: Some(pb::validity::Kind::DaysFromIssuance(30)),
        }),
        ..Default::default()
    }
}

/// A seller template: `basis_points` off the seller's lines.
pub fn seller_template(template_id: &str, seller_id: &str, basis_points: i32) -> pb::CouponTemplate {
    pb::CouponTemplate {
        issuer: pb::Issuer::Seller.into(),
        seller_id: seller_id.to_owned(),
        discount: Some(pb::Discount {
            kind: Some(pb::discount::Kind::PercentOff(pb::PercentOff {
                basis_points,
                max_discount: None,
            })),
        }),
        ..platform_template(template_id, 1)
    }
}

/// A checkout line: (line id, seller, unit price in US cents, quantity, sale price).
pub fn checkout_line(
    line_id: &str,
    seller_id: &str,
    unit_price_minor: i64,
    quantity: i32,
    sale: bool,
) -> pb::CheckoutLine {
    pb::CheckoutLine {
        line_id: line_id.to_owned(),
        seller_id: seller_id.to_owned(),
        product_id: format!("p-{line_id}"),
        category_id: "cat".to_owned(),
        unit_price: Some(usd(unit_price_minor)),
        quantity,
        sale_price: sale,
    }
}

/// A USD order at checkout.
pub fn checkout(account_id: &str, order_id: &str, lines: Vec<pb::CheckoutLine>) -> pb::CheckoutOrder {
    pb::CheckoutOrder {
        order_id: order_id.to_owned(),
        account_id: account_id.to_owned(),
        currency_code: "USD".to_owned(),
        lines,
    }
}

impl TestApp {
    /// Creates a template.
    pub async fn create_template(&self, template: pb::CouponTemplate) -> pb::CouponTemplate {
        self.coupons
            .clone()
            .create_coupon_template(pb::CreateCouponTemplateRequest {
                template: Some(template),
            })
            .await
            .expect("template created")
            .into_inner()
            .template
            .unwrap()
    }

    /// Reads a template.
    pub async fn template(&self, template_id: &str) -> pb::CouponTemplate {
        self.coupons
            .clone()
            .get_coupon_template(pb::GetCouponTemplateRequest {
                template_id: template_id.to_owned(),
            })
            .await
            .expect("template read")
            .into_inner()
            .template
            .unwrap()
    }

    /// Issues a coupon of `template_id` (issuance id derived from both ids).
    pub async fn issue(&self, account_id: &str, template_id: &str) -> Result<pb::Coupon, tonic::Status> {
        self.issue_as(account_id, template_id, &format!("{template_id}.{account_id}"))
            .await
    }

    /// Issues a coupon with an explicit issuance id.
    pub async fn issue_as(
        &self,
        account_id: &str,
        template_id: &str,
        issuance_id: &str,
    ) -> Result<pb::Coupon, tonic::Status> {
        self.coupons
            .clone()
            .issue_coupon(pb::IssueCouponRequest {
                account_id: account_id.to_owned(),
                template_id: template_id.to_owned(),
                issuance_id: issuance_id.to_owned(),
            })
            .await
            .map(|r| r.into_inner().coupon.unwrap())
    }

    /// Reads one coupon and its history.
    pub async fn coupon(&self, account_id: &str, coupon_id: i64) -> pb::GetCouponResponse {
        self.coupons
            .clone()
            .get_coupon(pb::GetCouponRequest {
                account_id: account_id.to_owned(),
                coupon_id,
            })
            .await
            .expect("coupon")
            .into_inner()
    }

    /// The status of one coupon now.
    pub async fn status_of(&self, account_id: &str, coupon_id: i64) -> pb::CouponStatus {
        self.coupon(account_id, coupon_id).await.coupon.unwrap().status()
    }

    /// Opens the pool's connections with concurrent reads, so a race starts with
    /// every connection ready rather than on the first few.
    pub async fn warm_up(&self, account_id: &str) {
        futures::future::join_all((0..32).map(|_| self.balance(account_id))).await;
    }

    /// Reserves coupons for an order.
    pub async fn reserve(
        &self,
        order: pb::CheckoutOrder,
        coupon_ids: Vec<i64>,
    ) -> Result<pb::ReserveCouponsResponse, tonic::Status> {
        self.coupons
            .clone()
            .reserve_coupons(pb::ReserveCouponsRequest {
                order: Some(order),
                coupon_ids,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Completes an order.
    pub async fn complete(
        &self,
        account_id: &str,
        order_id: &str,
    ) -> Result<pb::OrderCheckout, tonic::Status> {
        self.coupons
            .clone()
            .complete_order(pb::CompleteOrderRequest {
                account_id: account_id.into(),
                order_id: order_id.into(),
            })
            .await
            .map(|r| r.into_inner().order.expect("order"))
    }

    /// Cancels an order.
    pub async fn cancel(&self, account_id: &str, order_id: &str) -> Result<pb::OrderCheckout, tonic::Status> {
        self.coupons
            .clone()
            .cancel_order(pb::CancelOrderRequest {
                account_id: account_id.into(),
                order_id: order_id.into(),
            })
            .await
            .map(|r| r.into_inner().order.expect("order"))
    }

    /// Refunds an order: the whole of it, or `(line, units)`.
    pub async fn refund(
        &self,
        account_id: &str,
        order_id: &str,
        refund_id: &str,
        lines: &[(&str, i32)],
    ) -> Result<pb::RefundOrderResponse, tonic::Status> {
        use pb::refund_order_request::Extent;
        let extent = if lines.is_empty() {
            Extent::WholeOrder(pb::WholeOrder {})
        } else {
            Extent::Lines(pb::RefundLines {
                lines: lines
                    .iter()
                    .map(|(line_id, quantity)| pb::RefundLine {
                        line_id: (*line_id).into(),
                        quantity: *quantity,
                    })
                    .collect(),
            })
        };
        self.coupons
            .clone()
            .refund_order(pb::RefundOrderRequest {
                account_id: account_id.into(),
                order_id: order_id.into(),
                refund_id: refund_id.into(),
                extent: Some(extent),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// An order as the checkout knows it.
    pub async fn checkout_order(
        &self,
        account_id: &str,
        order_id: &str,
    ) -> Result<pb::OrderCheckout, tonic::Status> {
        self.coupons
            .clone()
            .get_checkout_order(pb::GetCheckoutOrderRequest {
                account_id: account_id.into(),
                order_id: order_id.into(),
            })
            .await
            .map(|r| r.into_inner().order.expect("order"))
    }
}

/// `message` sent with `x-request-id: request_id`.
pub fn named<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    request
}

/// A watch of every event still kept.
pub fn from_oldest() -> pb::WatchRequest {
    pb::WatchRequest {
        start: pb::WatchStart::Oldest.into(),
        ..Default::default()
    }
}

/// What a watch delivered before the test stopped reading it.
#[derive(Debug, Default)]
pub struct Watched {
    /// The events, in the order they came.
    pub events: Vec<pb::Event>,
    /// The last cursor received, of an event or a heartbeat.
    pub cursor: String,
}

impl TestApp {
    /// Opens a watch of the event log.
    pub async fn watch(
        &self,
        request: impl tonic::IntoRequest<pb::WatchRequest>,
    ) -> Result<tonic::Streaming<pb::WatchResponse>, tonic::Status> {
        self.events
            .clone()
            .watch(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Watches with `request` and collects the events until `done` holds of
    /// those received, the stream ends, or `limit` passes (then it returns
    /// what came, for the test's assertions to show).
    pub async fn watch_until(
        &self,
        request: impl tonic::IntoRequest<pb::WatchRequest>,
        limit: std::time::Duration,
        mut done: impl FnMut(&[pb::Event]) -> bool,
    ) -> Watched {
        let mut stream = self.watch(request).await.expect("the watch opens");
        let deadline = tokio::time::Instant::now() + limit;
        let mut watched = Watched::default();
        while !done(&watched.events) {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(message))) => {
                    watched.cursor = message.cursor;
                    watched.events.extend(message.event);
                }
                Ok(Ok(None)) | Err(_) => break,
                Ok(Err(status)) => panic!("the watch failed: {status:?}"),
            }
        }
        watched
    }

    /// Every event of the log, as a watch from the oldest delivers them. It
    /// reads until each event stored in table `event` has come (bounded), so
    /// the list is complete; the events of calls that answered before are all
    /// stored.
    pub async fn logged_events(&self, pool: &PgPool) -> Vec<pb::Event> {
        let stored: std::collections::BTreeSet<String> =
            sqlx::query_scalar::<_, i64>("select event_id from event")
                .fetch_all(pool)
                .await
                .unwrap()
                .into_iter()
                .map(|id| id.to_string())
                .collect();
        let watched = self
            .watch_until(from_oldest(), std::time::Duration::from_secs(10), |events| {
                events.len() >= stored.len()
                    && stored.iter().all(|id| events.iter().any(|e| &e.event_id == id))
            })
            .await;
        let missing: Vec<&String> = stored
            .iter()
            .filter(|id| !watched.events.iter().any(|e| &e.event_id == *id))
            .collect();
        assert!(
            missing.is_empty(),
            "events {missing:?} never came; came: {:?}",
            watched.events
        );
        watched.events
    }
}

/// A TCP proxy to PostgreSQL that a test can cut (connections refused and
/// broken), stall (packets dropped: connections stay open and nothing passes)
/// and restore.
pub struct DatabaseProxy {
    pub port: u16,
    mode: Arc<std::sync::atomic::AtomicU8>,
    /// Milliseconds every chunk waits before it is passed on.
    latency_ms: Arc<std::sync::atomic::AtomicU64>,
    links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

const PROXY_OPEN: u8 = 0;
const PROXY_CUT: u8 = 1;
const PROXY_STALLED: u8 = 2;

impl DatabaseProxy {
    pub async fn start(upstream_port: u16) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(PROXY_OPEN));
        let latency_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let links = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (accept_mode, accept_links, accept_latency) = (mode.clone(), links.clone(), latency_ms.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                match accept_mode.load(Ordering::SeqCst) {
                    PROXY_CUT => continue, // closed at once: refused
                    PROXY_STALLED => {
                        held.push(client); // accepted, never answered
                        continue;
                    }
                    _ => held.clear(),
                }
                let mode = accept_mode.clone();
                let latency = accept_latency.clone();
                let link = tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        () = pump(client_read, server_write, mode.clone(), latency.clone()) => {}
                        () = pump(server_read, client_write, mode, latency) => {}
                    }
                });
                accept_links.lock().unwrap().push(link);
            }
        });
        Self {
            port,
            mode,
            latency_ms,
            links,
        }
    }

    /// Delays every chunk, each way, by `latency`.
    pub fn set_latency(&self, latency: std::time::Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Refuses new connections and breaks the open ones.
    pub fn cut(&self) {
        self.mode.store(PROXY_CUT, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// Lets nothing through, and closes nothing.
    pub fn stall(&self) {
        self.mode
            .store(PROXY_STALLED, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.mode.store(PROXY_OPEN, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding the bytes while the proxy is stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<std::sync::atomic::AtomicU8>,
    latency_ms: Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        while mode.load(std::sync::atomic::Ordering::SeqCst) == PROXY_STALLED {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let latency = latency_ms.load(std::sync::atomic::Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Calls `path` (`/loyalty.v1.Points/GetBalance`) with `message` as raw bytes.
pub async fn raw_unary(
    channel: Channel,
    path: &'static str,
    message: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(bytes::Bytes::from(message)), path, RawCodec)
        .await
        .map(|response| response.into_inner().to_vec())
}

/// A codec that sends and receives message bytes untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        use bytes::BufMut;
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, Self::Error> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
