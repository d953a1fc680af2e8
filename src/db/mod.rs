//! Queries and row types. Functions take `&mut PgConnection`, so the domain
//! operation that calls them owns the transaction. No rules live here, except
//! where a rule is a constraint (a unique key, a guarded counter).
//!
//! Domain operations take their connection or transaction through [`acquire`]
//! and [`begin`], which bound them by the call's [`Budget`]: the wait for a
//! connection ends at the deadline, and PostgreSQL itself stops a statement or
//! a lock wait that would outlive it.

/// A statement's text, built once on first use from its parts (`format!` on
/// every call would rebuild the same string, `coupon_columns` and all, each
/// time). The parts must be constants: the builder cannot see the caller's
/// variables.
macro_rules! statement {
    ($build:expr) => {{
        static TEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| $build);
        TEXT.as_str()
    }};
}

pub mod audit;
pub mod coupons;
pub mod events;
pub mod levels;
pub mod members;
pub mod points;

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};

use crate::call;
use crate::call::budget::Budget;
use crate::error::Error;

/// The migrations under `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Whether the database has the `citus` extension (docs/scale-out.md).
pub async fn is_citus(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select exists (select 1 from pg_extension where extname = 'citus')")
        .fetch_one(pool)
        .await
}

/// Applies the migrations, except on a Citus worker: there it only checks that
/// the coordinator has applied them all (`_sqlx_migrations` is a reference
/// table), and fails naming those it has not. DDL belongs on the coordinator;
/// run on a worker, a migration could create objects on that worker alone and
/// still be recorded as applied for the whole cluster.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    if !is_citus(pool).await?
        || sqlx::query_scalar::<_, bool>("select citus_is_coordinator()")
            .fetch_one(pool)
            .await?
    {
        // A migration may rewrite a large table (a backfill, an index built
        // concurrently): not bounded by the calls' statement timeout. Lock
        // waits stay bounded (the caller retries), and the connection, its
        // setting changed, is closed rather than given back to the pool.
        let mut conn = pool.acquire().await?.detach();
        sqlx::query("set statement_timeout = 0")
            .execute(&mut conn)
            .await?;
        let applied = MIGRATOR.run_direct(&mut conn).await;
        conn.close().await.ok();
        applied?;
        return Ok(());
    }
    let applied: Vec<i64> = sqlx::query_scalar("select version from _sqlx_migrations where success")
        .fetch_all(pool)
        .await?;
    let missing: Vec<i64> = MIGRATOR
        .iter()
        .map(|migration| migration.version)
        .filter(|version| !applied.contains(version))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "connected to a Citus worker, which does not apply migrations: the coordinator has not applied {missing:?}"
    );
    Ok(())
}

/// A connection for the current call's reads, waiting for one no longer than its
/// deadline. Its statements are bounded by the session's `statement_timeout`, not
/// by the deadline: a write goes through [`begin`], whose bounds are the call's.
pub async fn acquire(pool: &PgPool) -> Result<PoolConnection<Postgres>, Error> {
    let Some(budget) = Budget::current() else {
        return Ok(pool.acquire().await?);
    };
    let started = tokio::time::Instant::now();
    let acquired = tokio::time::timeout(budget.remaining()?, pool.acquire()).await;
    call::context::note_pool_wait(started.elapsed());
    match acquired {
        Ok(connection) => Ok(connection?),
        Err(_) => Err(Error::DeadlineExceeded),
    }
}

/// Commits a call's transaction, unless the call's deadline has passed: then it
/// rolls back and the call is `DEADLINE_EXCEEDED`, so that a caller told its
/// deadline passed is never one whose call took effect (a commit already sent
/// when the deadline comes still lands: the call layer answers a little after
/// the budget's deadline, see `call::margin`).
pub async fn commit(tx: Transaction<'_, Postgres>) -> Result<(), Error> {
    if let Some(budget) = Budget::current() {
        budget.remaining()?;
    }
    tx.commit().await?;
    // The event log cuts a slice soon after (the call layer pokes it).
    call::context::note_commit();
    Ok(())
}

/// Makes the transaction just begun a read-only snapshot (repeatable read):
/// several reads that must agree see one state of the database. Call it before
/// the transaction's first query.
pub async fn read_only_snapshot(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(conn)
        .await?;
    Ok(())
}

/// A transaction for the current call, its statements and lock waits bounded by
/// the time the call has left (set in the same round trip as `BEGIN`).
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, Error> {
    let Some(budget) = Budget::current() else {
        return Ok(pool.begin().await?);
    };
    let connection = acquire(pool).await?;
    let statement = budget.begin_statement()?;
    // `Transaction::begin` with a custom statement is what `Pool::begin_with`
    // runs; called here on a connection taken within the deadline.
    Ok(Transaction::begin(connection, Some(statement.into())).await?)
}
