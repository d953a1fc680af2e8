//! `loyalty serve`, `loyalty migrate` and `loyalty token`: parse the
//! configuration, start the telemetry, and run the application (or make a token).

use std::io::Read as _;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use loyalty::auth::{self, TokenHash};
use loyalty::clock::SystemClock;
use loyalty::config::{Cli, Command, Config, TokenArgs};
use loyalty::db;
use loyalty::startup::{Application, connect_pool};
use loyalty::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(config) => {
            let telemetry = telemetry::init(&config.log_format, Some(&config.traces))?;
            let served = serve(*config).await;
            // The last spans go out whatever the outcome, the error's too.
            telemetry.shutdown().await;
            served
        }
        Command::Migrate(database) => {
            let _telemetry = telemetry::init("text", None)?;
            let pool = connect_pool(&database)?;
            db::migrate(&pool)
                .await
                .context("failed to apply the migrations")?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Token(args) => token(&args),
    }
}

/// Serves until Ctrl-C or SIGTERM, then drains.
async fn serve(config: Config) -> anyhow::Result<()> {
    let pool = connect_pool(&config.database)?;
    let app = Application::build(config, pool, Arc::new(SystemClock)).await?;
    app.run_until_stopped(shutdown_signal()).await
}

/// Prints a new token and its line, or the hash of a token read on stdin.
fn token(args: &TokenArgs) -> anyhow::Result<()> {
    if args.hash {
        let mut token = String::new();
        std::io::stdin()
            .read_to_string(&mut token)
            .context("failed to read the token on stdin")?;
        anyhow::ensure!(!token.trim().is_empty(), "no token on stdin");
        println!("{}", TokenHash::of(&token));
        return Ok(());
    }
    let new = auth::new_token(&args.caller, &args.scopes)?;
    println!("# The token, for the caller only (it is stored nowhere):");
    println!("{}", new.token);
    println!("# The line for the tokens file:");
    println!("{}", new.line);
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
