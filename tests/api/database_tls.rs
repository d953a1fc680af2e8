//! PostgreSQL over TLS (`sslmode` in `DATABASE_URL`): the service's own pool
//! negotiates TLS when asked to, checks the server's certificate and name with
//! `verify-full`, and refuses a server it cannot verify.
//!
//! The local Debian cluster serves TLS with its self-signed "snakeoil"
//! certificate (for `localhost`); where the cluster has TLS off, these tests say
//! so and check nothing.

use clap::Parser;
use loyalty::config::{Cli, Command};
use loyalty::startup::connect_pool;
use sqlx::PgPool;

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// The service's pool for `url` (parsed as `loyalty serve` parses it).
fn service_pool(url: &str) -> PgPool {
    let cli = Cli::try_parse_from(["loyalty", "serve", "--database-url", url]).expect("flags parse");
    let Command::Serve(config) = cli.command else {
        panic!("not serve");
    };
    connect_pool(&config.database).expect("pool options")
}

/// The test database's URL with `host` and extra parameters, or `None` when the
/// cluster serves no TLS (the test then checks nothing).
async fn url_with(pool: &PgPool, host: &str, parameters: &str) -> Option<String> {
    let ssl: String = sqlx::query_scalar("show ssl").fetch_one(pool).await.unwrap();
    if ssl != "on" || !std::path::Path::new(SNAKEOIL).exists() {
        eprintln!("the local PostgreSQL serves no TLS with {SNAKEOIL}: nothing to check");
        return None;
    }
    let options = pool.connect_options();
    let database = options.get_database().expect("a test database");
    let port = options.get_port();
    Some(format!(
        "postgres://postgres@{host}:{port}/{database}?{parameters}"
    ))
}

async fn uses_tls(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
}

#[sqlx::test]
async fn sslmode_require_encrypts_the_services_connections(pool: PgPool) {
    let Some(url) = url_with(&pool, "127.0.0.1", "sslmode=require").await else {
        return;
    };
    assert!(uses_tls(&service_pool(&url)).await.expect("connects over TLS"));
    let plain = url.replace("sslmode=require", "sslmode=disable");
    assert!(!uses_tls(&service_pool(&plain)).await.expect("connects in clear"));
}

#[sqlx::test]
async fn sslmode_verify_full_checks_the_servers_certificate_and_name(pool: PgPool) {
    let Some(url) = url_with(
        &pool,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"),
    )
    .await
    else {
        return;
    };
    assert!(
        uses_tls(&service_pool(&url))
            .await
            .expect("the certificate names localhost")
    );

    // The certificate names localhost, not 127.0.0.1.
    let wrong_name = url.replace("@localhost:", "@127.0.0.1:");
    let refused = uses_tls(&service_pool(&wrong_name))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("certificate not valid for name"), "{refused}");
    // Without the cluster's certificate as the root, the public roots do not
    // vouch for a self-signed certificate.
    let unknown_root = url.replace(&format!("&sslrootcert={SNAKEOIL}"), "");
    let refused = uses_tls(&service_pool(&unknown_root))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
}
