//! TLS served by the service: client certificates naming the caller (mutual
//! TLS), bearer tokens over TLS, and the files read again without a restart.
//! Every certificate is made here, by a CA of the test's own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use loyalty::auth::TokenHash;
use loyalty::clock::ManualClock;
use loyalty::config::Config;
use loyalty::pb;
use loyalty::pb::membership_client::MembershipClient;
use loyalty::pb::points_client::PointsClient;
use loyalty::startup::Application;
use loyalty::tls::TlsReloader;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, ServerName};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::{default_now, reason, ts};

/// A certificate authority of the test's own.
struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A certificate and its key, in PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    fn issue(&self, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.0).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost`.
    fn server(&self) -> Issued {
        self.issue(
            vec![SanType::DnsName("localhost".try_into().unwrap())],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate naming the calling service `name`, the way a
    /// service mesh does.
    fn client(&self, name: &str) -> Issued {
        let uri = format!("spiffe://mesh/ns/prod/sa/{name}");
        self.issue(
            vec![SanType::URI(uri.as_str().try_into().unwrap())],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// The files a test's server reads, in a folder of its own.
struct Files(PathBuf);

impl Files {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("loyalty-tls-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Writes the callers file ([`CALLERS`], tokens hashed, private to its owner).
    fn callers(&self) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let text: String = CALLERS
            .iter()
            .map(|(caller, token, scopes)| format!("{caller} {} {scopes}\n", TokenHash::of(token)))
            .collect();
        let path = self.write("callers.txt", &text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// Writes the server's certificate and key; returns their flags.
    fn server(&self, issued: &Issued) -> Vec<String> {
        vec![
            "--tls-cert-file".into(),
            self.write("server.pem", &issued.cert),
            "--tls-key-file".into(),
            self.write("server.key", &issued.key),
        ]
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The callers: name, token, scopes.
const CALLERS: [(&str, &str, &str); 2] = [
    ("checkout", "t-checkout", "points:read"),
    ("orders", "t-orders", "members:write,points:read"),
];

/// A running TLS server; it stops when dropped.
struct TlsApp {
    port: u16,
    reloader: TlsReloader,
    _stop: oneshot::Sender<()>,
}

async fn start(pool: PgPool, flags: &[String]) -> TlsApp {
    let mut args = vec![
        "loyalty",
        "--listen-addr",
        "127.0.0.1:0",
        "--health-check-interval-ms",
        "100",
    ];
    args.extend(flags.iter().map(String::as_str));
    let config = Config::try_parse_from(args).expect("test flags parse");
    let app = Application::build(config, pool, Arc::new(ManualClock::new(default_now())))
        .await
        .expect("app builds");
    let port = app.port();
    let reloader = app.tls_reloader().expect("the app serves tls");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TlsApp {
        port,
        reloader,
        _stop: stop,
    }
}

/// A TLS channel trusting `ca`, presenting `identity` when there is one.
async fn connect(port: u16, ca: &Ca, identity: Option<&Issued>) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(ca.pem()));
    if let Some(issued) = identity {
        tls = tls.identity(Identity::from_pem(&issued.cert, &issued.key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Waits (bounded) until health says SERVING: migrations ran.
async fn wait_until_serving(channel: Channel) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..100 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .map(|r| r.into_inner().status)
            .ok();
        if status == Some(ServingStatus::Serving as i32) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the test server never became SERVING");
}

fn balance_of(account_id: &str) -> pb::GetBalanceRequest {
    pb::GetBalanceRequest {
        account_id: account_id.into(),
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The flags of a server with mutual TLS: `ca` signs the server and the clients.
fn mutual_tls(files: &Files, ca: &Ca) -> Vec<String> {
    let mut flags = files.server(&ca.server());
    flags.extend([
        "--tls-client-ca-file".into(),
        files.write("clients.pem", &ca.pem()),
        "--auth-tokens-file".into(),
        files.callers(),
    ]);
    flags
}

#[sqlx::test]
async fn a_client_certificate_names_the_caller_and_grants_its_scopes(pool: PgPool) {
    let (ca, files) = (Ca::new("mesh"), Files::new("mtls-ok"));
    let app = start(pool, &mutual_tls(&files, &ca)).await;
    let channel = connect(app.port, &ca, Some(&ca.client("orders")))
        .await
        .expect("a certificate of the client CA is accepted");
    wait_until_serving(channel.clone()).await;

    MembershipClient::new(channel.clone())
        .register_member(pb::RegisterMemberRequest {
            account_id: "alice".into(),
            registered_at: Some(ts("2026-01-01T00:00:00Z")),
            birthday: None,
        })
        .await
        .expect("orders may register members, without a token");
    let balance = PointsClient::new(channel)
        .get_balance(balance_of("alice"))
        .await
        .expect("orders may read balances")
        .into_inner();

    assert_eq!((balance.account_id.as_str(), balance.window_points), ("alice", 0));
}

#[sqlx::test]
async fn a_certificate_naming_a_caller_without_the_scope_is_permission_denied(pool: PgPool) {
    let (ca, files) = (Ca::new("mesh"), Files::new("mtls-scope"));
    let app = start(pool, &mutual_tls(&files, &ca)).await;
    let channel = connect(app.port, &ca, Some(&ca.client("checkout")))
        .await
        .unwrap();

    let register = MembershipClient::new(channel.clone())
        .register_member(pb::RegisterMemberRequest {
            account_id: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    // The certificate wins over a token of another caller.
    let with_orders_token = MembershipClient::new(channel)
        .register_member(with_token(
            pb::RegisterMemberRequest {
                account_id: "alice".into(),
                ..Default::default()
            },
            "t-orders",
        ))
        .await
        .unwrap_err();

    assert_eq!(register.code(), Code::PermissionDenied, "{register:?}");
    assert_eq!(reason(&register), "MISSING_SCOPE");
    assert_eq!(with_orders_token.code(), Code::PermissionDenied);
}

#[sqlx::test]
async fn a_certificate_naming_an_unknown_caller_is_unauthenticated(pool: PgPool) {
    let (ca, files) = (Ca::new("mesh"), Files::new("mtls-unknown"));
    let app = start(pool, &mutual_tls(&files, &ca)).await;
    let channel = connect(app.port, &ca, Some(&ca.client("stranger")))
        .await
        .unwrap();

    let error = PointsClient::new(channel)
        .get_balance(balance_of("alice"))
        .await
        .unwrap_err();

    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");
    assert_eq!(reason(&error), "UNKNOWN_CALLER");
}

#[sqlx::test]
async fn a_certificate_from_another_ca_fails_the_handshake(pool: PgPool) {
    let (ca, files) = (Ca::new("mesh"), Files::new("mtls-other-ca"));
    let app = start(pool, &mutual_tls(&files, &ca)).await;
    let forged = Ca::new("elsewhere").client("orders");

    // A TLS 1.3 client finishes its side of the handshake first: the server's
    // alert shows at the connection or at the first call, in place of any
    // answer of the service.
    let refused = match connect(app.port, &ca, Some(&forged)).await {
        Err(error) => format!("{error:?}"),
        Ok(channel) => {
            let error = PointsClient::new(channel)
                .get_balance(balance_of("alice"))
                .await
                .unwrap_err();
            format!("{error:?}")
        }
    };

    assert!(refused.contains("fatal alert: UnknownCA"), "{refused}");
}

#[sqlx::test]
async fn without_a_certificate_a_token_still_works_and_nothing_is_unauthenticated(pool: PgPool) {
    let (ca, files) = (Ca::new("mesh"), Files::new("mtls-token"));
    let app = start(pool, &mutual_tls(&files, &ca)).await;
    let channel = connect(app.port, &ca, None).await.unwrap();
    let mut points = PointsClient::new(channel.clone());

    let anonymous = points.get_balance(balance_of("alice")).await.unwrap_err();
    let checkout = points
        .grant_bonus(with_token(pb::GrantBonusRequest::default(), "t-checkout"))
        .await
        .unwrap_err();
    wait_until_serving(channel).await;
    let with_token = points
        .get_balance(with_token(balance_of("alice"), "t-checkout"))
        .await;

    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    assert_eq!(reason(&anonymous), "MISSING_TOKEN");
    assert_eq!(checkout.code(), Code::PermissionDenied, "{checkout:?}");
    assert!(
        !matches!(
            with_token.as_ref().map_err(tonic::Status::code),
            Err(Code::Unauthenticated | Code::PermissionDenied | Code::Unavailable)
        ),
        "{with_token:?}"
    );
}

#[sqlx::test]
async fn tls_without_a_client_ca_serves_bearer_tokens(pool: PgPool) {
    let (ca, files) = (Ca::new("server"), Files::new("tls-tokens"));
    let mut flags = files.server(&ca.server());
    flags.extend(["--auth-tokens-file".into(), files.callers()]);
    let app = start(pool, &flags).await;
    let channel = connect(app.port, &ca, None).await.expect("a TLS client connects");
    let mut points = PointsClient::new(channel.clone());

    let anonymous = points.get_balance(balance_of("alice")).await.unwrap_err();
    let denied = points
        .grant_bonus(with_token(pb::GrantBonusRequest::default(), "t-orders"))
        .await
        .unwrap_err();

    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(reason(&denied), "MISSING_SCOPE");
}

#[sqlx::test]
async fn a_plain_text_client_cannot_talk_to_a_tls_server(pool: PgPool) {
    let (ca, files) = (Ca::new("server"), Files::new("tls-plain"));
    let app = start(pool, &files.server(&ca.server())).await;

    let plain = async {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{}", app.port))
            .unwrap()
            .connect()
            .await
            .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("the server answers or closes, it does not hang");

    assert!(outcome.is_err(), "{outcome:?}");
}

#[sqlx::test]
async fn a_client_that_never_finishes_its_handshake_gives_its_slot_back(pool: PgPool) {
    use tokio::io::AsyncReadExt;
    let (ca, files) = (Ca::new("server"), Files::new("tls-stalled"));
    let mut flags = files.server(&ca.server());
    flags.extend(["--max-connections", "1", "--http2-keepalive-timeout-ms", "200"].map(String::from));
    let app = start(pool, &flags).await;
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();

    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut [0; 1]))
        .await
        .expect("the server closes a stalled handshake");
    let served = served_certificate(app.port, &[&ca]).await;

    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(served.is_ok(), "the only slot is free again: {served:?}");
}

/// The certificate a new TLS connection to `port` is served, trusting `roots`.
async fn served_certificate(port: u16, roots: &[&Ca]) -> std::io::Result<CertificateDer<'static>> {
    let mut store = rustls::RootCertStore::empty();
    for ca in roots {
        store.add(ca.0.der().clone()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
    let socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), socket)
        .await?;
    Ok(stream.get_ref().1.peer_certificates().unwrap()[0].clone())
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[sqlx::test]
async fn a_reload_serves_new_files_to_new_connections_and_keeps_the_old_on_a_bad_file(pool: PgPool) {
    let (old_ca, new_ca, files) = (Ca::new("old"), Ca::new("new"), Files::new("tls-reload"));
    let (old, new) = (old_ca.server(), new_ca.server());
    let app = start(pool, &files.server(&old)).await;
    let before = served_certificate(app.port, &[&old_ca, &new_ca]).await.unwrap();

    files.server(&new);
    app.reloader.reload().expect("the new files load");
    let after = served_certificate(app.port, &[&old_ca, &new_ca]).await.unwrap();
    files.write("server.key", "not a key");
    let bad = app.reloader.reload();
    let after_bad = served_certificate(app.port, &[&new_ca]).await.unwrap();

    assert_eq!(before, der_of(&old.cert));
    assert_eq!(after, der_of(&new.cert));
    assert!(bad.is_err());
    assert_eq!(
        after_bad,
        der_of(&new.cert),
        "a bad file keeps the files in force"
    );
}
