//! The service's one error type and its single mapping to a gRPC `Status`.
//!
//! Every variant names the gRPC code it becomes. Caller mistakes carry a
//! machine-readable reason (`google.rpc.ErrorInfo`) or field violations
//! (`google.rpc.BadRequest`); internal failures are logged with their source chain
//! and shown to the caller as a generic message, so no database text leaks.

use std::collections::HashMap;
use std::fmt;

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
    /// `ABORTED` (reason `CONCURRENT_UPDATE`): the database gave up the call's
    /// transaction for a concurrent one (deadlock, serialization failure); retry.
    #[error("the call conflicted with a concurrent one; retry it")]
    Aborted(#[source] sqlx::Error),
    /// `UNAVAILABLE`: the database cannot be reached; the call may be retried.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// `INTERNAL`: a bug or an unexpected database failure.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// An `INVALID_ARGUMENT` error for one field.
    pub fn invalid(field: impl Into<String>, description: impl fmt::Display) -> Self {
        Error::InvalidArgument(FieldViolation {
            field: field.into(),
            description: description.to_string(),
        })
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
            | Error::PermissionDenied { reason, .. } => reason,
            Error::Aborted(_) => "CONCURRENT_UPDATE",
            Error::Unavailable(_) => "DATABASE_UNAVAILABLE",
            Error::Internal(_) => "INTERNAL",
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
            Error::Aborted(_) => Code::Aborted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
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
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("23505") => Error::AlreadyExists {
                    reason: "ALREADY_EXISTS",
                    message: "the resource already exists".to_owned(),
                },
                Some("40001" | "40P01") => Error::Aborted(error),
                // admin_shutdown, crash_shutdown, cannot_connect_now, connection_exception*
                Some(code) if code.starts_with("08") || code.starts_with("57P") => Error::Unavailable(error),
                _ => Error::Internal(anyhow::Error::new(error).context("database query failed")),
            },
            _ => Error::Internal(anyhow::Error::new(error).context("database query failed")),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = error.code();
        let reason = error.reason();
        let mut details = ErrorDetails::new();
        details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
        let message = match &error {
            Error::InvalidArgument(violation) => {
                details.add_bad_request_violation(&violation.field, &violation.description);
                error.to_string()
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
            Error::Internal(source) => {
                tracing::error!(error = ?source, "internal error");
                "internal error".to_owned()
            }
            Error::Unavailable(source) | Error::Aborted(source) => {
                tracing::warn!(error = %source, reason, "call failed in the database");
                error.to_string()
            }
            _ => error.to_string(),
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
}

impl<T, E: fmt::Display> FieldContext<T> for Result<T, E> {
    fn field(self, field: &str) -> Result<T, Error> {
        self.map_err(|e| Error::invalid(field, e))
    }
}
