//! The service's one error type and its single mapping to a gRPC `Status`.
//!
//! Every variant names the gRPC code it becomes. Caller mistakes carry a
//! machine-readable reason (`google.rpc.ErrorInfo`) or field violations
//! (`google.rpc.BadRequest`); internal failures are logged with their source chain
//! and shown to the caller as a generic message, so no database text leaks.
//! Errors a caller may retry (`ABORTED`, `UNAVAILABLE`, `RESOURCE_EXHAUSTED`)
//! carry a `google.rpc.RetryInfo`.
//!
//! The `ErrorInfo.metadata` of every error names the ids it concerns
//! (`account_id`, `order_id`, `template_id`, ...): those the handler declared
//! for the call ([`crate::call::concerns`]), and those only the domain knew,
//! added to the error itself with [`Error::concerning`] (which win over the
//! call's when both name the same key).
//!
//! Each failed call is logged once, here, at the level its cause deserves: a
//! caller's mistake or a refused rule at INFO, an outage or overload at WARN, a
//! bug at ERROR.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of every `google.rpc.ErrorInfo` the service returns.
pub const ERROR_DOMAIN: &str = "loyalty.v1";

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path in the request, as in the proto (`products[2].category_id`).
    pub field: String,
    /// What is wrong with it, for a person.
    pub description: String,
}

/// The ids an error concerns, by key (`account_id`, `coupon_id`, ...): the
/// `metadata` of its `google.rpc.ErrorInfo`. At most [`Ids::MAX`] keys, each
/// value cut like any echo (see [`cut`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ids(BTreeMap<&'static str, String>);

impl Ids {
    /// The most ids kept: the metadata travels in the response's trailers.
    pub const MAX: usize = 8;

    /// Sets `key` to `value`, replacing an earlier value of the key; a new key
    /// beyond [`Ids::MAX`] is left out.
    pub fn set(&mut self, key: &'static str, value: impl fmt::Display) {
        if self.0.len() < Self::MAX || self.0.contains_key(key) {
            self.0.insert(key, cut(&value.to_string()));
        }
    }

    /// Adds every id of `other`, whose values win over this one's.
    pub fn extend(&mut self, other: Ids) {
        for (key, value) in other.0 {
            self.set(key, value);
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn into_metadata(self) -> HashMap<String, String> {
        self.0
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect()
    }
}

impl fmt::Display for Ids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.0.iter().enumerate() {
            let space = if i == 0 { "" } else { " " };
            write!(f, "{space}{key}={value}")?;
        }
        Ok(())
    }
}

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `INVALID_ARGUMENT` (reason `INVALID_ARGUMENT`): the request is malformed.
    #[error("invalid request: {0}")]
    InvalidArgument(FieldViolation),
    /// `NOT_FOUND`: the account, order, ... does not exist.
    #[error("{message}")]
    NotFound { reason: &'static str, message: String },
    /// `FAILED_PRECONDITION`: a rule refuses the request in the current state.
    #[error("{message}")]
    FailedPrecondition { reason: &'static str, message: String },
    /// `FAILED_PRECONDITION` (reason `COUPON_NOT_APPLICABLE`): picked coupons do not
    /// apply to the order; a `PreconditionFailure` lists `(coupon id, reason)`.
    #[error("{} picked coupon(s) do not apply to the order", .0.len())]
    CouponsNotApplicable(Vec<(i64, &'static str)>),
    /// `ALREADY_EXISTS`: the key is taken by something with other content.
    #[error("{message}")]
    AlreadyExists { reason: &'static str, message: String },
    /// `UNAUTHENTICATED`: no valid bearer token.
    #[error("{message}")]
    Unauthenticated { reason: &'static str, message: String },
    /// `PERMISSION_DENIED`: the token lacks the scope the call needs.
    #[error("{message}")]
    PermissionDenied { reason: &'static str, message: String },
    /// `ABORTED`: the database gave up the call's transaction for a concurrent
    /// one (reason `CONCURRENT_UPDATE`: deadlock, serialization failure;
    /// `LOCK_TIMEOUT`: a lock held too long by another call); retry.
    #[error("the call conflicted with a concurrent one; retry it")]
    Aborted {
        reason: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// `UNAVAILABLE` (reason `DATABASE_UNAVAILABLE`): the database cannot be
    /// reached; the call may be retried.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// `UNAVAILABLE` (reason `SHUTTING_DOWN`): the server is draining; retry on
    /// another replica.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// `DEADLINE_EXCEEDED` (reason `DEADLINE_EXCEEDED`): the call's deadline
    /// passed, or one of its statements ran past `statement_timeout`; nothing of
    /// the call was committed.
    #[error("the call did not finish within its deadline")]
    DeadlineExceeded,
    /// `RESOURCE_EXHAUSTED`: the server sheds the call (reason `OVERLOADED`) or the
    /// request is too large (`REQUEST_TOO_LARGE`).
    #[error("{message}")]
    ResourceExhausted {
        reason: &'static str,
        message: String,
        /// When to try again; `None` where retrying the same request cannot help.
        retry_after: Option<Duration>,
    },
    /// `INTERNAL`: a bug or an unexpected database failure.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
    /// The code and reason of `error`, with ids only the domain knew (built by
    /// [`Error::concerning`]; match on [`Error::inner`], not on this variant).
    #[error("{error}")]
    Concerning { error: Box<Error>, ids: Ids },
}

impl Error {
    /// An `INVALID_ARGUMENT` error for one field.
    pub fn invalid(field: impl Into<String>, description: impl fmt::Display) -> Self {
        Error::InvalidArgument(FieldViolation {
            field: field.into(),
            description: description.to_string(),
        })
    }

    /// This error, saying it concerns `key` = `value` (`coupon_id` = 42): an id
    /// only the domain knows, which the call did not declare. Works on any
    /// variant; the id goes to the `ErrorInfo.metadata` of the answer.
    pub fn concerning(self, key: &'static str, value: impl fmt::Display) -> Self {
        let (error, mut ids) = self.into_parts();
        ids.set(key, value);
        Error::Concerning {
            error: Box::new(error),
            ids,
        }
    }

    /// The error itself, without the ids [`Error::concerning`] added: what to
    /// match a variant on.
    pub fn inner(&self) -> &Error {
        match self {
            Error::Concerning { error, .. } => error.inner(),
            error => error,
        }
    }

    /// The error itself and the ids added to it.
    fn into_parts(self) -> (Error, Ids) {
        match self {
            Error::Concerning { error, ids } => {
                let (error, mut all) = error.into_parts();
                all.extend(ids);
                (error, all)
            }
            error => (error, Ids::default()),
        }
    }

    /// The machine-readable reason of a caller-facing error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::CouponsNotApplicable(_) => "COUPON_NOT_APPLICABLE",
            Error::NotFound { reason, .. }
            | Error::FailedPrecondition { reason, .. }
            | Error::AlreadyExists { reason, .. }
            | Error::Unauthenticated { reason, .. }
            | Error::PermissionDenied { reason, .. }
            | Error::Aborted { reason, .. }
            | Error::ResourceExhausted { reason, .. } => reason,
            Error::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Error::Unavailable(_) => "DATABASE_UNAVAILABLE",
            Error::ShuttingDown => "SHUTTING_DOWN",
            Error::Internal(_) => "INTERNAL",
            Error::Concerning { error, .. } => error.reason(),
        }
    }

    fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::FailedPrecondition { .. } | Error::CouponsNotApplicable(_) => Code::FailedPrecondition,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::Unauthenticated { .. } => Code::Unauthenticated,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::Aborted { .. } => Code::Aborted,
            Error::Unavailable(_) | Error::ShuttingDown => Code::Unavailable,
            Error::DeadlineExceeded => Code::DeadlineExceeded,
            Error::ResourceExhausted { .. } => Code::ResourceExhausted,
            Error::Internal(_) => Code::Internal,
            Error::Concerning { error, .. } => error.code(),
        }
    }

    /// When a caller should retry, for the errors a retry can cure.
    fn retry_after(&self) -> Option<Duration> {
        match self.inner() {
            Error::Aborted { .. } => Some(Duration::from_millis(50)),
            Error::Unavailable(_) | Error::ShuttingDown => Some(Duration::from_secs(1)),
            Error::ResourceExhausted { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The level a failure is logged at: a caller's mistake or a refused rule
    /// is INFO (it must page nobody), an outage or overload WARN, a bug ERROR.
    fn log_level(&self) -> tracing::Level {
        match self.inner() {
            Error::Internal(_) => tracing::Level::ERROR,
            Error::Unavailable(_)
            | Error::Aborted { .. }
            | Error::ShuttingDown
            | Error::DeadlineExceeded
            | Error::ResourceExhausted { .. } => tracing::Level::WARN,
            _ => tracing::Level::INFO,
        }
    }

    /// Logs the failure once, at [`Error::log_level`], with the ids it concerns.
    fn log(&self, ids: &Ids) {
        let reason = self.reason();
        let ids = (!ids.is_empty()).then(|| tracing::field::display(ids));
        match (self.log_level(), self.inner()) {
            (_, Error::Internal(source)) => tracing::error!(error = ?source, ids, "internal error"),
            (_, Error::Unavailable(source) | Error::Aborted { source, .. }) => {
                tracing::warn!(error = %source, reason, ids, "call failed in the database");
            }
            (tracing::Level::WARN, _) => tracing::warn!(reason, ids, "call not served"),
            _ => tracing::info!(code = ?self.code(), reason, ids, "call refused"),
        }
    }
}

impl From<sqlx::Error> for Error {
    /// Connection-level failures become `UNAVAILABLE`; a unique violation that a
    /// domain operation did not expect becomes `ALREADY_EXISTS`; the rest is internal.
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Error::Unavailable(error),
            // A server (or a proxy in front of it) that closes the connection
            // during the TLS negotiation: sqlx reports the missing answer as a
            // protocol error, with no variant of its own.
            sqlx::Error::Protocol(message) if message.starts_with("unexpected response from SSLRequest") => {
                Error::Unavailable(error)
            }
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("23505") => Error::AlreadyExists {
                    reason: "ALREADY_EXISTS",
                    message: "the resource already exists".to_owned(),
                },
                Some("40001" | "40P01") => Error::Aborted {
                    reason: "CONCURRENT_UPDATE",
                    source: error,
                },
                // lock_timeout: another call holds the row for too long.
                Some("55P03") => Error::Aborted {
                    reason: "LOCK_TIMEOUT",
                    source: error,
                },
                // statement_timeout: the call's deadline, or the statement cap.
                Some("57014") => {
                    tracing::info!(error = %db.message(), "a statement reached its time bound");
                    Error::DeadlineExceeded
                }
                // admin_shutdown, crash_shutdown, cannot_connect_now, connection_exception*,
                // idle_in_transaction_session_timeout
                Some(code) if code.starts_with("08") || code.starts_with("57P") || code == "25P03" => {
                    Error::Unavailable(error)
                }
                // A value PostgreSQL cannot store (a NUL byte, a date out of its
                // range, one a check constraint refuses): validation should have
                // refused it, so it is logged, but
                // it is the caller's value, not a bug of the call.
                Some(code @ ("22021" | "22P05" | "22008" | "22003" | "23514")) => {
                    tracing::warn!(sqlstate = code, error = %db.message(), "a value passed validation but not the database");
                    Error::invalid("request", "a value is outside what the service can store")
                }
                _ => Error::Internal(anyhow::Error::new(error).context("database query failed")),
            },
            _ => Error::Internal(anyhow::Error::new(error).context("database query failed")),
        }
    }
}

/// The longest text of a caller's value echoed in a message: a 1 MB field must
/// not come back as 1 MB of trailers.
const MAX_ECHO_CHARS: usize = 200;

/// `text`, cut to [`MAX_ECHO_CHARS`] characters with a note of how much was cut.
pub fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}… ({} bytes in all)", &text[..end], text.len()),
    }
}

impl From<Error> for Status {
    /// The status of `error`: its code, its message, and its details: an
    /// `ErrorInfo` whose metadata holds the ids the call declared and those
    /// added to the error, plus what its variant adds.
    fn from(error: Error) -> Self {
        let (error, own) = error.into_parts();
        let mut ids = crate::call::concerned_ids();
        ids.extend(own);
        error.log(&ids);
        let code = error.code();
        let reason = error.reason();
        let mut details = ErrorDetails::new();
        details.set_error_info(reason, ERROR_DOMAIN, ids.into_metadata());
        if let Some(delay) = error.retry_after() {
            details.set_retry_info(Some(delay));
        }
        let message = match &error {
            Error::InvalidArgument(violation) => {
                details.add_bad_request_violation(cut(&violation.field), cut(&violation.description));
                cut(&error.to_string())
            }
            Error::CouponsNotApplicable(refusals) => {
                for (coupon_id, reason) in refusals {
                    details.add_precondition_failure_violation(
                        *reason,
                        coupon_id.to_string(),
                        format!("coupon {coupon_id}: {reason}"),
                    );
                }
                error.to_string()
            }
            Error::Internal(_) => "internal error".to_owned(),
            _ => cut(&error.to_string()),
        };
        Status::with_error_details(code, message, details)
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// Attaches a request field's name to a validation failure.
pub trait FieldContext<T> {
    /// Turns `Err(description)` into an `INVALID_ARGUMENT` error for `field`.
    fn field(self, field: &str) -> Result<T, Error>;

    /// As [`field`](FieldContext::field), with a field name that is built
    /// (`order.lines[3].line_id`) only when there is an error to name.
    fn field_with(self, field: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T, E: fmt::Display> FieldContext<T> for Result<T, E> {
    fn field(self, field: &str) -> Result<T, Error> {
        self.map_err(|e| Error::invalid(field, e))
    }

    fn field_with(self, field: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::invalid(field(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_gone_during_the_tls_negotiation_is_unavailable_not_a_bug() {
        let gone = sqlx::Error::Protocol("unexpected response from SSLRequest: 0x00 (tls:95)".into());
        assert!(matches!(Error::from(gone), Error::Unavailable(_)));
        let other = sqlx::Error::Protocol("something else".into());
        assert!(matches!(Error::from(other), Error::Internal(_)));
    }
    #[test]
    fn caller_mistakes_are_info_outages_warn_and_bugs_error() {
        let not_found = Error::NotFound {
            reason: "MEMBER_NOT_FOUND",
            message: "no such member".into(),
        };
        let refused = Error::FailedPrecondition {
            reason: "ORDER_CLOSED",
            message: "closed".into(),
        };
        let taken = Error::from(sqlx::Error::Protocol("x".into()));
        assert_eq!(not_found.log_level(), tracing::Level::INFO);
        assert_eq!(refused.log_level(), tracing::Level::INFO);
        assert_eq!(Error::invalid("field", "bad").log_level(), tracing::Level::INFO);
        assert_eq!(Error::ShuttingDown.log_level(), tracing::Level::WARN);
        assert_eq!(taken.log_level(), tracing::Level::ERROR);
    }

    #[test]
    fn retryable_errors_carry_retry_info_and_echoes_are_cut() {
        let status = Status::from(Error::ResourceExhausted {
            reason: "OVERLOADED",
            message: "busy".into(),
            retry_after: Some(Duration::from_millis(100)),
        });
        assert!(status.get_details_retry_info().is_some());
        let status = Status::from(Error::invalid("currency_code", "x".repeat(100_000)));
        assert!(status.message().len() < 1_000);
        assert!(
            Status::from(Error::ShuttingDown)
                .get_details_retry_info()
                .is_some()
        );
    }

    #[tokio::test]
    async fn error_info_names_the_calls_ids_and_the_errors_own() {
        let refused = Error::FailedPrecondition {
            reason: "ORDER_CLOSED",
            message: "closed".into(),
        }
        .concerning("coupon_id", 42)
        .concerning("order_id", "o-from-the-domain");
        assert!(matches!(refused.inner(), Error::FailedPrecondition { .. }));
        assert_eq!(refused.reason(), "ORDER_CLOSED");
        assert_eq!(refused.to_string(), "closed");

        let context = crate::call::CallContext::new("req-1".into());
        let status = context
            .scope(async {
                crate::call::concerns([("account_id", &"alice"), ("order_id", &"o-1")]);
                Status::from(refused)
            })
            .await;
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "closed");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "ORDER_CLOSED");
        let metadata: std::collections::BTreeMap<_, _> = info.metadata.into_iter().collect();
        let expected = [
            ("account_id", "alice"),
            ("coupon_id", "42"),
            ("order_id", "o-from-the-domain"),
        ];
        assert_eq!(
            metadata,
            expected.map(|(k, v)| (k.to_owned(), v.to_owned())).into()
        );
    }

    #[test]
    fn error_info_metadata_stays_small() {
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let error = keys.iter().fold(Error::DeadlineExceeded, |error, key| {
            error.concerning(key, "x".repeat(10_000))
        });
        let status = Status::from(error);
        assert_eq!(status.code(), Code::DeadlineExceeded);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.metadata.len(), Ids::MAX);
        assert!(info.metadata.values().all(|value| value.len() < 300));
        // Outside a call, with nothing added, the metadata is empty.
        let info = Status::from(Error::ShuttingDown)
            .get_details_error_info()
            .unwrap();
        assert!(info.metadata.is_empty());
    }
}
