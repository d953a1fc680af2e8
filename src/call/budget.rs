//! The budget of the call being served: its deadline, and how long one of its
//! statements may run or wait for a lock.
//!
//! The call layer sets it, as a task-local, around the task that serves the
//! call (and the scheduler around each job run); [`crate::db::begin`] reads it
//! to bound the transaction in PostgreSQL itself. Code outside any call (tests
//! calling the domain directly) has none, and runs under the connection's
//! session bounds only.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;

tokio::task_local! {
    static BUDGET: Budget;
}

/// A call's deadline and the caps of its statements.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    deadline: Instant,
    statement_timeout: Duration,
    lock_timeout: Duration,
}

impl Budget {
    /// A budget ending at `deadline`; no statement runs longer than
    /// `statement_timeout` nor waits for a lock longer than `lock_timeout`.
    pub fn new(deadline: Instant, statement_timeout: Duration, lock_timeout: Duration) -> Self {
        Self {
            deadline,
            statement_timeout,
            lock_timeout,
        }
    }

    /// The budget of the call this task serves, if it serves one.
    pub fn current() -> Option<Self> {
        BUDGET.try_with(|budget| *budget).ok()
    }

    /// Runs `future` with this budget as the current one.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        BUDGET.scope(self, future).await
    }

    /// When the call must be answered.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The time left, or `DEADLINE_EXCEEDED` once there is none.
    pub fn remaining(&self) -> Result<Duration, Error> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or(Error::DeadlineExceeded)
    }

    /// The statement that opens a transaction of this call: `BEGIN` with the
    /// statement bound cut to the time left, sent as one simple query (one round
    /// trip, as a bare `BEGIN`). A lock wait is bounded by the lock cap when that
    /// is shorter than the time left; otherwise by the statement bound alone (so
    /// a wait that reaches the deadline ends as the deadline, not as a conflict).
    pub fn begin_statement(&self) -> Result<String, Error> {
        let left = self.remaining()?;
        // Whole milliseconds, at least 1 (0 would turn the bound off).
        let ms = |bound: Duration| bound.as_millis().max(1);
        let lock = if self.lock_timeout < left {
            ms(self.lock_timeout)
        } else {
            0 // off: statement_timeout, which counts lock waits, ends it
        };
        Ok(format!(
            "begin; set local statement_timeout = {}; set local lock_timeout = {lock}",
            ms(self.statement_timeout.min(left)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_transaction_bounds_are_cut_to_the_time_left() {
        let budget = Budget::new(
            Instant::now() + Duration::from_millis(1500),
            Duration::from_secs(5),
            Duration::from_millis(200),
        );
        let statement = budget.begin_statement().unwrap();
        let timeout: u128 = statement
            .split("statement_timeout = ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .and_then(|ms| ms.parse().ok())
            .unwrap();
        assert!((1000..=1500).contains(&timeout), "{statement}");
        assert!(statement.ends_with("lock_timeout = 200"), "{statement}");
    }

    #[tokio::test]
    async fn a_lock_wait_reaching_the_deadline_is_left_to_the_statement_bound() {
        let budget = Budget::new(
            Instant::now() + Duration::from_millis(300),
            Duration::from_secs(5),
            Duration::from_secs(2),
        );
        let statement = budget.begin_statement().unwrap();
        assert!(statement.ends_with("lock_timeout = 0"), "{statement}");
    }

    #[tokio::test]
    async fn a_spent_budget_refuses_to_begin() {
        let budget = Budget::new(Instant::now(), Duration::from_secs(5), Duration::from_secs(1));
        let error = budget.begin_statement().unwrap_err();
        assert_eq!(error.reason(), "DEADLINE_EXCEEDED");
    }

    #[tokio::test]
    async fn the_budget_is_visible_inside_its_scope_only() {
        assert!(Budget::current().is_none());
        let budget = Budget::new(Instant::now(), Duration::from_secs(1), Duration::from_secs(1));
        let inside = budget.scope(async { Budget::current().is_some() }).await;
        assert!(inside);
    }
}
