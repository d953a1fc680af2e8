//! The server around the services: health, reflection, authentication, database
//! outages, graceful shutdown.

use std::time::Duration;

use loyalty::pb;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{DatabaseProxy, reason, spawn_app, spawn_app_with, start_app, tokens_file, ts};

async fn health_of(channel: Channel, service: &str) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

pub async fn status_of(channel: Channel, service: &str) -> i32 {
    health_of(channel, service).await.expect("health answers")
}

#[sqlx::test]
async fn health_reports_serving_overall_and_per_service(pool: PgPool) {
    let app = spawn_app(pool).await;
    for service in ["", "loyalty.v1.Points", "loyalty.v1.Membership"] {
        assert_eq!(
            status_of(app.channel.clone(), service).await,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let unknown = health_of(app.channel.clone(), "loyalty.v1.Nope")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn without_a_database_health_is_not_serving_and_calls_are_unavailable() {
    let unreachable = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/loyalty")
        .unwrap();
    let app = start_app(unreachable, &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    for service in ["", "loyalty.v1.Points", "loyalty.v1.Membership"] {
        assert_eq!(
            status_of(app.channel.clone(), service).await,
            ServingStatus::NotServing as i32
        );
    }
    let error = app
        .members
        .clone()
        .get_member(pb::GetMemberRequest {
            account_id: "alice".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert_eq!(reason(&error), "DATABASE_UNAVAILABLE");
    assert!(
        !error.message().contains("127.0.0.1"),
        "no connection details leak: {}",
        error.message()
    );
}

async fn list_services_v1(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match responses.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

async fn list_services_v1alpha(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match responses.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

#[sqlx::test]
async fn reflection_v1_and_v1alpha_list_the_loyalty_services(pool: PgPool) {
    let app = spawn_app(pool).await;
    for services in [
        list_services_v1(app.channel.clone()).await,
        list_services_v1alpha(app.channel.clone()).await,
    ] {
        for expected in [
            "loyalty.v1.Points",
            "loyalty.v1.Membership",
            "grpc.health.v1.Health",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }
    }
}

/// Just enough of `google.protobuf.FileDescriptorProto` to read the
/// `google.api.field_behavior` extension of its fields, which `prost_types`
/// drops.
mod annotated {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct File {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, repeated, tag = "3")]
        pub dependency: Vec<String>,
        #[prost(message, repeated, tag = "4")]
        pub message_type: Vec<Message>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Message {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, repeated, tag = "2")]
        pub field: Vec<Field>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Field {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "8")]
        pub options: Option<Options>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Options {
        /// `(google.api.field_behavior)`: 2 is REQUIRED, 3 OUTPUT_ONLY.
        #[prost(int32, repeated, packed = "false", tag = "1052")]
        pub field_behavior: Vec<i32>,
    }
}

/// The file reflection serves for a symbol (`symbol`) or a file name.
async fn reflected_file_v1(channel: Channel, symbol: Option<&str>, file: &str) -> annotated::File {
    use prost::Message;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(match symbol {
            Some(symbol) => MessageRequest::FileContainingSymbol(symbol.into()),
            None => MessageRequest::FileByFilename(file.into()),
        }),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match responses.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => {
            let files: Vec<annotated::File> = files
                .file_descriptor_proto
                .iter()
                .map(|bytes| annotated::File::decode(bytes.as_slice()).unwrap())
                .collect();
            files
                .into_iter()
                .find(|f| f.name == file)
                .unwrap_or_else(|| panic!("reflection did not serve {file}"))
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

#[sqlx::test]
async fn reflection_serves_the_field_behavior_annotations_and_their_definition(pool: PgPool) {
    let app = spawn_app(pool).await;
    let coupons = reflected_file_v1(
        app.channel.clone(),
        Some("loyalty.v1.Coupons"),
        "loyalty/v1/coupons.proto",
    )
    .await;
    assert!(
        coupons
            .dependency
            .iter()
            .any(|d| d == "google/api/field_behavior.proto"),
        "{:?}",
        coupons.dependency
    );
    // A client resolving the annotation finds its definition and what it extends.
    let field_behavior =
        reflected_file_v1(app.channel.clone(), None, "google/api/field_behavior.proto").await;
    assert_eq!(field_behavior.dependency, ["google/protobuf/descriptor.proto"]);
    reflected_file_v1(app.channel.clone(), None, "google/protobuf/descriptor.proto").await;
    let behavior = |message: &str, field: &str| {
        let message = coupons.message_type.iter().find(|m| m.name == message).unwrap();
        let field = message.field.iter().find(|f| f.name == field).unwrap();
        field
            .options
            .as_ref()
            .map(|o| o.field_behavior.clone())
            .unwrap_or_default()
    };
    const REQUIRED: i32 = 2;
    const OUTPUT_ONLY: i32 = 3;
    assert_eq!(behavior("RefundOrderRequest", "refund_id"), [REQUIRED]);
    assert_eq!(behavior("CouponTemplate", "template_id"), [REQUIRED]);
    assert_eq!(behavior("CouponTemplate", "issued_count"), [OUTPUT_ONLY]);
    assert_eq!(behavior("ReserveCouponsResponse", "request_id"), [OUTPUT_ONLY]);
    assert_eq!(behavior("ReserveCouponsRequest", "cart_revision"), [] as [i32; 0]);
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[sqlx::test]
async fn tokens_grant_only_their_scopes(pool: PgPool) {
    let file = tokens_file(
        "tokens",
        &[
            ("checkout", "t-checkout", "points:read"),
            ("orders", "t-orders", "points:earn,members:write"),
            ("admin", "t-admin", "*"),
            ("certificate-only", "-", "*"),
        ],
    );
    let app = spawn_app_with(pool, &["--auth-tokens-file", file.to_str().unwrap()]).await;
    let mut points = app.points.clone();
    let bonus = || pb::GrantBonusRequest {
        account_id: "alice".into(),
        campaign_id: "c1".into(),
        points: 10,
        ..Default::default()
    };

    let anonymous = points.grant_bonus(bonus()).await.unwrap_err();
    let unknown = points
        .grant_bonus(with_token(bonus(), "t-forged"))
        .await
        .unwrap_err();
    let no_token_caller = points.grant_bonus(with_token(bonus(), "-")).await.unwrap_err();
    let checkout = points
        .grant_bonus(with_token(bonus(), "t-checkout"))
        .await
        .unwrap_err();
    app.members
        .clone()
        .register_member(with_token(
            pb::RegisterMemberRequest {
                account_id: "alice".into(),
                registered_at: Some(ts("2026-01-01T00:00:00Z")),
                birthday: None,
            },
            "t-orders",
        ))
        .await
        .expect("the orders token may register members");
    let admin = points.grant_bonus(with_token(bonus(), "t-admin")).await;

    assert_eq!(
        (anonymous.code(), reason(&anonymous).as_str()),
        (Code::Unauthenticated, "MISSING_TOKEN")
    );
    assert_eq!(
        (unknown.code(), reason(&unknown).as_str()),
        (Code::Unauthenticated, "UNKNOWN_TOKEN")
    );
    assert_eq!(
        (no_token_caller.code(), reason(&no_token_caller).as_str()),
        (Code::Unauthenticated, "UNKNOWN_TOKEN")
    );
    assert_eq!(
        (checkout.code(), reason(&checkout).as_str()),
        (Code::PermissionDenied, "MISSING_SCOPE")
    );
    assert_eq!(admin.unwrap().into_inner().entry.unwrap().points, 10);
    // Health stays open to load balancers without a token.
    assert_eq!(
        status_of(app.channel.clone(), "").await,
        ServingStatus::Serving as i32
    );
    std::fs::remove_file(file).ok();
}

#[sqlx::test]
async fn shutdown_finishes_in_flight_calls_then_refuses_new_ones(pool: PgPool) {
    let mut app = spawn_app(pool.clone()).await;
    // Hold a lock the registration needs, so it is in flight when shutdown starts.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("lock table member in exclusive mode")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut members = app.members.clone();
    let in_flight = tokio::spawn(async move {
        members
            .register_member(pb::RegisterMemberRequest {
                account_id: "alice".into(),
                registered_at: Some(ts("2026-01-01T00:00:00Z")),
                birthday: None,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    app.signal_stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!app.has_stopped(), "the server waits for the in-flight call");
    blocker.commit().await.unwrap();

    let response = in_flight.await.unwrap().expect("the in-flight call completes");
    assert!(!response.into_inner().replayed);
    let port = app.port;
    app.stop().await;
    let refused = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    assert!(refused.is_err(), "a stopped server accepts no connections");
}

pub async fn scrape(port: u16) -> String {
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

#[sqlx::test]
async fn metrics_count_calls_by_method_and_code(pool: PgPool) {
    let app = spawn_app_with(pool, &["--metrics-addr", "127.0.0.1:0"]).await;
    app.register("alice").await;
    let missing = app
        .members
        .clone()
        .get_member(pb::GetMemberRequest {
            account_id: "ghost".into(),
        })
        .await;
    assert!(missing.is_err());

    let response = scrape(app.metrics_port.unwrap()).await;

    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    for line in [
        "loyalty_grpc_calls_total{code=\"OK\",method=\"/loyalty.v1.Membership/RegisterMember\"} 1",
        "loyalty_grpc_calls_total{code=\"NOT_FOUND\",method=\"/loyalty.v1.Membership/GetMember\"} 1",
        "loyalty_grpc_call_duration_seconds_count{method=\"/loyalty.v1.Membership/GetMember\"} 1",
        "loyalty_database_up 1",
    ] {
        assert!(
            response.lines().any(|l| l == line),
            "missing {line:?} in\n{response}"
        );
    }
    // Both calls waited for a connection of the pool (each once at least).
    let waits: u64 = response
        .lines()
        .find_map(|l| l.strip_prefix("loyalty_db_pool_wait_seconds_count "))
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    assert!(waits >= 2, "{response}");
}

pub async fn wait_for_status(channel: Channel, wanted: ServingStatus) {
    for _ in 0..100 {
        if status_of(channel.clone(), "").await == wanted as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health never became {wanted:?}");
}

#[sqlx::test]
async fn health_follows_the_database_going_away_and_coming_back(
    _options: PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let proxy = DatabaseProxy::start(connect.get_port()).await;
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(connect.port(proxy.port));
    let app = start_app(pool, &[]).await;
    wait_for_status(app.channel.clone(), ServingStatus::Serving).await;
    app.register("alice").await;

    proxy.cut();
    wait_for_status(app.channel.clone(), ServingStatus::NotServing).await;
    let error = app
        .members
        .clone()
        .get_member(pb::GetMemberRequest {
            account_id: "alice".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);

    proxy.restore();
    wait_for_status(app.channel.clone(), ServingStatus::Serving).await;
    let member = app
        .members
        .clone()
        .get_member(pb::GetMemberRequest {
            account_id: "alice".into(),
        })
        .await;
    assert!(member.is_ok(), "calls work again: {member:?}");
}

#[tokio::test]
async fn bad_level_settings_fail_the_start() {
    use clap::Parser;
    let lazy = PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:1/loyalty")
        .unwrap();
    let clock = std::sync::Arc::new(loyalty::clock::ManualClock::new(crate::helpers::default_now()));
    let config = loyalty::config::Config::try_parse_from([
        "loyalty",
        "--listen-addr",
        "127.0.0.1:0",
        "--gold-min-points",
        "600",
    ])
    .unwrap();

    let built = loyalty::startup::Application::build(config, lazy, clock).await;

    let error = built.err().expect("thresholds must increase");
    assert!(error.to_string().contains("thresholds"), "{error}");
}

#[tokio::test]
async fn a_tokens_file_open_to_others_fails_the_start() {
    use clap::Parser;
    use std::os::unix::fs::PermissionsExt as _;
    let lazy = PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:1/loyalty")
        .unwrap();
    let clock = std::sync::Arc::new(loyalty::clock::ManualClock::new(crate::helpers::default_now()));
    let file = tokens_file("open-tokens", &[("admin", "t-admin", "*")]);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = loyalty::config::Config::try_parse_from([
        "loyalty",
        "--listen-addr",
        "127.0.0.1:0",
        "--auth-tokens-file",
        file.to_str().unwrap(),
    ])
    .unwrap();

    let built = loyalty::startup::Application::build(config, lazy, clock).await;

    let error = built.err().expect("a tokens file others may read is refused");
    assert!(error.to_string().contains("chmod 600"), "{error}");
    std::fs::remove_file(file).ok();
}
