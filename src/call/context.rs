//! The context of the call being served: its request id, and the ids of what
//! it concerns (the account, the order, the template, ...).
//!
//! The call layer sets it, as a task-local, around the whole call: the task
//! that runs the handler, and the layer's own answer when the call fails
//! there (a deadline that passes). Handlers read the request id to echo it in
//! the answer of a write ([`request_id`]) and declare, once the request is
//! parsed, the ids the call concerns ([`concerns`]); the mapping of an
//! [`Error`](crate::error::Error) to a `Status` puts those ids in the
//! `ErrorInfo.metadata` of a failure ([`concerned_ids`]).
//!
//! Code outside any call (the scheduler's jobs, tests calling the domain
//! directly) has no context: its request id is empty and what it declares goes
//! nowhere.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::error::Ids;

tokio::task_local! {
    static CONTEXT: Arc<CallContext>;
}

/// What the layer knows of a call, shared by the layer and the call's task.
#[derive(Debug)]
pub struct CallContext {
    request_id: String,
    /// The calling service, once authentication has named it.
    caller: OnceLock<String>,
    /// Set by the handler while the call runs, read when it fails.
    ids: Mutex<Ids>,
    /// Whether the call committed a transaction (so may have written events).
    committed: AtomicBool,
    /// Where the call's waits for a database connection are recorded.
    pool_wait: Option<prometheus::Histogram>,
}

impl CallContext {
    /// The context of a call named `request_id`.
    pub fn new(request_id: String) -> Arc<Self> {
        Arc::new(Self {
            request_id,
            caller: OnceLock::new(),
            ids: Mutex::new(Ids::default()),
            committed: AtomicBool::new(false),
            pool_wait: None,
        })
    }

    /// The context of a call named `request_id` whose waits for a database
    /// connection go to `pool_wait`.
    pub fn with_pool_wait(request_id: String, pool_wait: prometheus::Histogram) -> Arc<Self> {
        let mut context = Self::new(request_id);
        if let Some(context) = Arc::get_mut(&mut context) {
            context.pool_wait = Some(pool_wait);
        }
        context
    }

    /// Whether the call committed a transaction.
    pub fn committed(&self) -> bool {
        self.committed.load(Ordering::Relaxed)
    }

    /// Runs `future` with this context as the current call's.
    pub async fn scope<F: Future>(self: Arc<Self>, future: F) -> F::Output {
        CONTEXT.scope(self, future).await
    }
}

/// The request id of the current call (the caller's `x-request-id`, or the one
/// the layer gave the call); empty outside a call.
pub fn request_id() -> String {
    CONTEXT
        .try_with(|context| context.request_id.clone())
        .unwrap_or_default()
}

/// Records how long the current call waited for a database connection;
/// outside a call this does nothing.
pub fn note_pool_wait(waited: std::time::Duration) {
    let _ = CONTEXT.try_with(|context| {
        if let Some(histogram) = &context.pool_wait {
            histogram.observe(waited.as_secs_f64());
        }
    });
}

/// Notes that the current call committed a transaction; outside a call this
/// does nothing.
pub fn note_commit() {
    let _ = CONTEXT.try_with(|context| context.committed.store(true, Ordering::Relaxed));
}

/// Records the calling service of the current call, as authentication named
/// it (the first name given stays); outside a call this does nothing.
pub fn set_caller(name: &str) {
    let _ = CONTEXT.try_with(|context| context.caller.set(name.to_owned()));
}

/// The calling service of the current call; empty outside a call or when
/// authentication is off.
pub fn caller() -> String {
    CONTEXT
        .try_with(|context| context.caller.get().cloned().unwrap_or_default())
        .unwrap_or_default()
}

/// Declares the ids the current call concerns, once its request is parsed:
/// `call::concerns([("account_id", &account_id), ("order_id", &order_id)])`.
/// A failure of the call names them in its `ErrorInfo.metadata`. A key given
/// again replaces its value; outside a call this does nothing.
pub fn concerns<const N: usize>(ids: [(&'static str, &dyn fmt::Display); N]) {
    let _ = CONTEXT.try_with(|context| {
        let mut declared = context.ids.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, value) in ids {
            declared.set(key, value);
        }
    });
}

/// The ids the current call declared (none outside a call).
pub fn concerned_ids() -> Ids {
    CONTEXT
        .try_with(|context| context.ids.lock().unwrap_or_else(PoisonError::into_inner).clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_context_is_visible_inside_its_scope_only() {
        concerns([("account_id", &"outside")]);
        assert_eq!(request_id(), "");
        assert_eq!(caller(), "");
        assert_eq!(concerned_ids(), Ids::default());

        let context = CallContext::new("req-1".to_owned());
        let (inside, ids) = context
            .clone()
            .scope(async {
                concerns([("account_id", &"alice"), ("coupon_id", &42)]);
                concerns([("account_id", &"bob")]);
                set_caller("checkout");
                set_caller("someone-else");
                assert_eq!(caller(), "checkout");
                (request_id(), concerned_ids())
            })
            .await;
        assert_eq!(inside, "req-1");
        assert_eq!(ids.get("account_id"), Some("bob"));
        assert_eq!(ids.get("coupon_id"), Some("42"));
        // The layer, holding the same context, sees what the handler declared.
        assert_eq!(context.scope(async { concerned_ids() }).await, ids);
    }
}
