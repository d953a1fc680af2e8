//! The `loyalty.v1.Audit` service: the audit of a template, a member or an
//! order.

use prost_types::value::Kind;
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::call;
use crate::domain::audit::{Audit, AuditCursor, AuditEntry, AuditSubject};
use crate::domain::ids::{AccountId, OrderId, TemplateId};
use crate::error::{Error, FieldContext};
use crate::grpc::convert::{PageCursor, PageQuery, page_size, timestamp};
use crate::pb;

/// The listing's page tokens (see [`PageQuery`]).
const AUDIT_PAGE_KIND: &str = "audit.v1";

/// Serves `loyalty.v1.Audit`.
pub struct AuditService {
    audit: Audit,
}

impl AuditService {
    /// Serves `audit`.
    pub fn new(audit: Audit) -> Self {
        Self { audit }
    }
}

/// `<micros>.<source>.<id>`: the instant as a listing's instants are (within
/// the supported range), then the order among equal instants.
impl PageCursor for AuditCursor {
    fn encode(&self) -> String {
        format!("{}.{}.{}", self.occurred_at.encode(), self.source, self.id)
    }

    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let occurred_at = PageCursor::decode(parts.next()?)?;
        let source: i16 = parts.next()?.parse().ok()?;
        let id: i64 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !(1..=5).contains(&source) {
            return None;
        }
        Some(Self {
            occurred_at,
            source,
            id,
        })
    }
}

/// The subject a request names: exactly one of `template_id`, `account_id`
/// and `admin_changes`, and `order_id` only with `account_id`.
fn subject(request: &pb::ListAuditRequest) -> Result<AuditSubject, Error> {
    if request.admin_changes {
        if !(request.template_id.is_empty() && request.account_id.is_empty() && request.order_id.is_empty()) {
            return Err(Error::invalid(
                "admin_changes",
                "cannot be combined with template_id, account_id or order_id: ask for one subject",
            ));
        }
        return Ok(AuditSubject::Admin);
    }
    match (
        request.template_id.is_empty(),
        request.account_id.is_empty(),
        request.order_id.is_empty(),
    ) {
        (false, true, true) => Ok(AuditSubject::Template(
            TemplateId::parse(&request.template_id).field("template_id")?,
        )),
        (true, false, true) => Ok(AuditSubject::Member(
            AccountId::parse(&request.account_id).field("account_id")?,
        )),
        (true, false, false) => Ok(AuditSubject::Order(
            AccountId::parse(&request.account_id).field("account_id")?,
            OrderId::parse(&request.order_id).field("order_id")?,
        )),
        (true, true, false) => Err(Error::invalid(
            "account_id",
            "is required with order_id: an order is listed within its member's audit",
        )),
        (true, true, true) => Err(Error::invalid(
            "template_id",
            "or account_id or admin_changes is required: the audit of a template, a member, an \
             order or the admin changes",
        )),
        (false, _, _) => Err(Error::invalid(
            "template_id",
            "cannot be combined with account_id or order_id: ask for one subject",
        )),
    }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let request = request.into_inner();
        let subject = subject(&request)?;
        let page_size = page_size(request.page_size)?;
        let query = PageQuery::new(AUDIT_PAGE_KIND)
            .with("template_id", &request.template_id)
            .with("account_id", &request.account_id)
            .with("order_id", &request.order_id)
            .with("admin_changes", request.admin_changes);
        let after: Option<AuditCursor> = query.parse(&request.page_token)?;
        match &subject {
            AuditSubject::Template(template_id) => call::concerns([("template_id", template_id)]),
            AuditSubject::Member(account_id) | AuditSubject::Order(account_id, _) => {
                call::concerns([("account_id", account_id)])
            }
            AuditSubject::Admin => {}
        }
        let (entries, next) = self.audit.list(&subject, after.as_ref(), page_size).await?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries.into_iter().map(entry_pb).collect(),
            next_page_token: next.map(|cursor| query.token(&cursor)).unwrap_or_default(),
        }))
    }
}

fn entry_pb(entry: AuditEntry) -> pb::AuditEntry {
    let detail = match value_pb(entry.detail).kind {
        Some(Kind::StructValue(detail)) => Some(detail),
        _ => None,
    };
    pb::AuditEntry {
        occurred_at: Some(timestamp(entry.occurred_at)),
        action: entry.action,
        caller: entry.caller,
        request_id: entry.request_id,
        account_id: entry.account_id.unwrap_or_default(),
        template_id: entry.template_id.unwrap_or_default(),
        order_id: entry.order_id.unwrap_or_default(),
        coupon_id: entry.coupon_id.unwrap_or_default(),
        detail,
    }
}

/// A JSON value as a `google.protobuf.Value` (numbers become doubles, as
/// JSON's do; the audit's amounts stay well within 2^53).
fn value_pb(value: Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(values) => Kind::ListValue(prost_types::ListValue {
            values: values.into_iter().map(value_pb).collect(),
        }),
        Value::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields.into_iter().map(|(k, v)| (k, value_pb(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    #[test]
    fn a_cursor_round_trips_and_refuses_what_it_did_not_write() {
        let cursor = AuditCursor {
            occurred_at: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            source: 3,
            id: 42,
        };
        assert_eq!(
            <AuditCursor as PageCursor>::decode(&cursor.encode()),
            Some(cursor)
        );
        for bad in ["", "1.2", "1.2.3.4", "1.6.3", "x.1.1", "400000000000000000.1.1"] {
            assert_eq!(<AuditCursor as PageCursor>::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_request_names_exactly_one_subject() {
        let request = |template: &str, account: &str, order: &str| pb::ListAuditRequest {
            template_id: template.into(),
            account_id: account.into(),
            order_id: order.into(),
            ..Default::default()
        };
        assert!(matches!(
            subject(&request("t1", "", "")),
            Ok(AuditSubject::Template(_))
        ));
        assert!(matches!(
            subject(&request("", "a1", "")),
            Ok(AuditSubject::Member(_))
        ));
        assert!(matches!(
            subject(&request("", "a1", "o1")),
            Ok(AuditSubject::Order(..))
        ));
        for (template, account, order) in [("", "", ""), ("", "", "o1"), ("t1", "a1", ""), ("t1", "", "o1")] {
            assert!(
                matches!(
                    subject(&request(template, account, order)),
                    Err(Error::InvalidArgument(_))
                ),
                "{template} {account} {order}"
            );
        }
    }
}
