//! The `loyalty.v1.Coupons` service: adapts the wire to [`Coupons`].

use tonic::{Request, Response, Status};

use std::time::Duration;

use crate::call;

use crate::domain::coupons::{
    ClaimCode, Coupon, CouponSource, Coupons, ExpiryNotices, IssuePolicy, OrderCheckout, OrderStatus, Refund,
    RefundExtent, ReserveRequest, Template, TemplateSpec, Transition, Validity, check_hold,
};
use crate::domain::ids::{
    AccountId, BatchRequestId, CategoryId, IssuanceId, LineId, OrderId, ProductId, RefundId, SellerId,
    TemplateId,
};
use crate::domain::levels::Level;
use crate::domain::money::Currency;
use crate::domain::pricing::{
    CheckoutLine, CheckoutOrder, CouponStatus, Discount, Issuer, MAX_LINES, MAX_PICKED, MAX_QUANTITY,
    Pricing, Refusal,
};
use crate::error::{Error, FieldContext};
use crate::grpc::convert::{
    PageQuery, money_in, money_pb, optional_money_in, page_size, required_enum, required_instant, timestamp,
};
use crate::pb;

/// The gRPC face of coupon operations.
pub struct CouponsService {
    coupons: Coupons,
    /// How `RunExpiryNotices` runs: the notice period and the batch.
    expiry_notices: ExpiryNotices,
}

impl CouponsService {
    /// Serves `coupons`; `expiry_notices` is how `RunExpiryNotices` runs.
    pub fn new(coupons: Coupons, expiry_notices: ExpiryNotices) -> Self {
        Self {
            coupons,
            expiry_notices,
        }
    }
}

pub(crate) fn level_pb(level: Level) -> pb::Level {
    match level {
        Level::Silver => pb::Level::Silver,
        Level::Gold => pb::Level::Gold,
        Level::Platinum => pb::Level::Platinum,
        Level::Diamond => pb::Level::Diamond,
    }
}

pub(crate) fn level_domain(value: i32, field: &str) -> Result<Level, Error> {
    Ok(match required_enum::<pb::Level>(value, field)? {
        pb::Level::Silver => Level::Silver,
        pb::Level::Gold => Level::Gold,
        pb::Level::Platinum => Level::Platinum,
        pb::Level::Diamond => Level::Diamond,
        pb::Level::Unspecified => return Err(Error::invalid(field, "is required")),
    })
}

pub(crate) fn status_pb(status: CouponStatus) -> pb::CouponStatus {
    match status {
        CouponStatus::Valid => pb::CouponStatus::Valid,
        CouponStatus::Inactive => pb::CouponStatus::Inactive,
        CouponStatus::Used => pb::CouponStatus::Used,
        CouponStatus::Expired => pb::CouponStatus::Expired,
        CouponStatus::Revoked => pb::CouponStatus::Revoked,
    }
}

fn status_domain(value: i32, field: &str) -> Result<CouponStatus, Error> {
    Ok(match required_enum::<pb::CouponStatus>(value, field)? {
        pb::CouponStatus::Valid => CouponStatus::Valid,
        pb::CouponStatus::Inactive => CouponStatus::Inactive,
        pb::CouponStatus::Used => CouponStatus::Used,
        pb::CouponStatus::Expired => CouponStatus::Expired,
        pb::CouponStatus::Revoked => CouponStatus::Revoked,
        pb::CouponStatus::Unspecified => return Err(Error::invalid(field, "is required")),
    })
}

fn refusal_pb(refusal: Refusal) -> pb::NotApplicableReason {
    use pb::NotApplicableReason as R;
    match refusal {
        Refusal::NotOwner => R::NotOwner,
        Refusal::NotYetValid => R::NotYetValid,
        Refusal::Expired => R::Expired,
        Refusal::AlreadyApplied => R::AlreadyApplied,
        Refusal::Used => R::Used,
        Refusal::Revoked => R::Revoked,
        Refusal::MinPurchaseNotMet => R::MinPurchaseNotMet,
        Refusal::WrongSeller => R::WrongSeller,
        Refusal::NoEligibleLines => R::NoEligibleLines,
        Refusal::CurrencyMismatch => R::CurrencyMismatch,
        Refusal::StackingConflict => R::StackingConflict,
    }
}

fn issuer_pb(issuer: &Issuer) -> (pb::Issuer, String) {
    match issuer {
        Issuer::Platform => (pb::Issuer::Platform, String::new()),
        Issuer::Seller(seller) => (pb::Issuer::Seller, seller.to_string()),
    }
}

fn discount_pb(discount: &Discount, currency: Currency) -> pb::Discount {
    pb::Discount {
        kind: Some(match *discount {
            Discount::AmountOff(amount) => pb::discount::Kind::AmountOff(money_pb(amount, currency)),
            Discount::PercentOff {
                basis_points,
                max_minor,
            } => pb::discount::Kind::PercentOff(pb::PercentOff {
                basis_points: i32::try_from(basis_points).unwrap_or(i32::MAX),
                max_discount: max_minor.map(|max| money_pb(max, currency)),
            }),
        }),
    }
}

/// A minimum purchase on the wire: absent when there is none.
fn min_purchase_pb(min_purchase: i64, currency: Currency) -> Option<pb::Money> {
    (min_purchase > 0).then(|| money_pb(min_purchase, currency))
}

/// Keeps the template's amounts in its currency.
const TEMPLATE_CURRENCY: &str = "template.currency_code";

fn template_spec(template: Option<pb::CouponTemplate>) -> Result<TemplateSpec, Error> {
    let t = template.ok_or_else(|| Error::invalid("template", "is required"))?;
    let issuer = match required_enum::<pb::Issuer>(t.issuer, "template.issuer")? {
        pb::Issuer::Platform if t.seller_id.is_empty() => Issuer::Platform,
        pb::Issuer::Platform => {
            return Err(Error::invalid(
                "template.seller_id",
                "must be empty for a platform coupon",
            ));
        }
        pb::Issuer::Seller => Issuer::Seller(SellerId::parse(&t.seller_id).field("template.seller_id")?),
        pb::Issuer::Unspecified => return Err(Error::invalid("template.issuer", "is required")),
    };
    let currency = Currency::parse(&t.currency_code).field(TEMPLATE_CURRENCY)?;
    let discount = match t.discount.and_then(|d| d.kind) {
        Some(pb::discount::Kind::AmountOff(amount)) => Discount::AmountOff(
            money_in(
                Some(amount),
                "template.discount.amount_off",
                currency,
                TEMPLATE_CURRENCY,
            )?
            .minor(),
        ),
        Some(pb::discount::Kind::PercentOff(p)) => Discount::PercentOff {
            basis_points: u32::try_from(p.basis_points).map_err(|_| {
                Error::invalid("template.discount.percent_off.basis_points", "must be 1 to 10000")
            })?,
            max_minor: optional_money_in(
                p.max_discount,
                "template.discount.percent_off.max_discount",
                currency,
                TEMPLATE_CURRENCY,
            )?
            .map(|max| max.minor()),
        },
        None => return Err(Error::invalid("template.discount", "is required")),
    };
    let min_purchase = optional_money_in(
        t.min_purchase,
        "template.min_purchase",
        currency,
        TEMPLATE_CURRENCY,
    )?
    .map_or(0, |min| min.minor());
    let validity = match t.validity.and_then(|v| v.kind) {
        Some(pb::validity::Kind::Window(w)) => Validity::Window {
            from: required_instant(w.valid_from, "template.validity.window.valid_from")?,
            until: required_instant(w.valid_until, "template.validity.window.valid_until")?,
        },
        Some(pb::validity::Kind::DaysFromIssuance(days)) => Validity::Days(
            u32::try_from(days)
                .map_err(|_| Error::invalid("template.validity.days_from_issuance", "must be 1 to 3650"))?,
        ),
        None => return Err(Error::invalid("template.validity", "is required")),
    };
    let allowed_levels = t
        .allowed_levels
        .iter()
        .enumerate()
        .map(|(i, &l)| level_domain(l, &format!("template.allowed_levels[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = TemplateSpec {
        template_id: TemplateId::parse(&t.template_id).field("template.template_id")?,
        name: t.name,
        description: t.description,
        issuer,
        discount,
        currency,
        min_purchase,
        validity,
        total_stock: t.total_stock,
        daily_stock: t.daily_stock,
        per_member_limit: match t.per_member_limit {
            0 => 1,
            n => u32::try_from(n)
                .map_err(|_| Error::invalid("template.per_member_limit", "must be positive"))?,
        },
        allowed_levels,
        regular_price_only: t.regular_price_only.unwrap_or(true),
    };
    spec.check()?;
    Ok(spec)
}

fn template_pb(template: Template) -> pb::CouponTemplate {
    let spec = template.spec;
    let (issuer, seller_id) = issuer_pb(&spec.issuer);
    pb::CouponTemplate {
        template_id: spec.template_id.to_string(),
        name: spec.name,
        description: spec.description,
        issuer: issuer.into(),
        seller_id,
        discount: Some(discount_pb(&spec.discount, spec.currency)),
        currency_code: spec.currency.to_string(),
        min_purchase: min_purchase_pb(spec.min_purchase, spec.currency),
        validity: Some(pb::Validity {
            kind: Some(match spec.validity {
                Validity::Window { from, until } => pb::validity::Kind::Window(pb::ValidityWindow {
                    valid_from: Some(timestamp(from)),
                    valid_until: Some(timestamp(until)),
                }),
                Validity::Days(days) => {
                    pb::validity::Kind::DaysFromIssuance(i32::try_from(days).unwrap_or(i32::MAX))
                }
            }),
        }),
        total_stock: spec.total_stock,
        daily_stock: spec.daily_stock,
        per_member_limit: i32::try_from(spec.per_member_limit).unwrap_or(i32::MAX),
        allowed_levels: spec
            .allowed_levels
            .into_iter()
            .map(|l| level_pb(l).into())
            .collect(),
        regular_price_only: Some(spec.regular_price_only),
        paused: template.paused,
        issued_count: template.issued_count,
        create_time: Some(timestamp(template.created_at)),
        update_time: Some(timestamp(template.updated_at)),
    }
}

pub(crate) fn coupon_pb(coupon: Coupon) -> pb::Coupon {
    let (issuer, seller_id) = issuer_pb(&coupon.issuer);
    pb::Coupon {
        coupon_id: coupon.coupon_id,
        account_id: coupon.account_id.to_string(),
        template_id: coupon.template_id.to_string(),
        name: coupon.name,
        status: status_pb(coupon.status).into(),
        issuer: issuer.into(),
        seller_id,
        discount: Some(discount_pb(&coupon.discount, coupon.currency)),
        currency_code: coupon.currency.to_string(),
        min_purchase: min_purchase_pb(coupon.min_purchase, coupon.currency),
        regular_price_only: coupon.regular_price_only,
        valid_from: Some(timestamp(coupon.valid_from)),
        expires_at: Some(timestamp(coupon.expires_at)),
        source: match coupon.source {
            CouponSource::PublicCode => pb::CouponSource::PublicCode,
            CouponSource::SingleUseCode => pb::CouponSource::SingleUseCode,
            CouponSource::Issuance => pb::CouponSource::Issuance,
        }
        .into(),
        issued_at: Some(timestamp(coupon.issued_at)),
        order_id: coupon.order_id.map(|o| o.to_string()).unwrap_or_default(),
        hold_expire_time: coupon.hold_until.map(timestamp),
    }
}

fn transition_pb(transition: Transition) -> pb::CouponTransition {
    pb::CouponTransition {
        action: transition.action.as_str().to_owned(),
        from_status: transition
            .from_status
            .map_or(pb::CouponStatus::Unspecified, status_pb)
            .into(),
        to_status: status_pb(transition.to_status).into(),
        order_id: transition.order_id.unwrap_or_default(),
        note: transition.note,
        occurred_at: Some(timestamp(transition.occurred_at)),
    }
}

/// Keeps the order's amounts in its currency.
const ORDER_CURRENCY: &str = "order.currency_code";

fn checkout_order(order: Option<pb::CheckoutOrder>) -> Result<CheckoutOrder, Error> {
    let order = order.ok_or_else(|| Error::invalid("order", "is required"))?;
    let currency = Currency::parse(&order.currency_code).field(ORDER_CURRENCY)?;
    let lines = order
        .lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let field = |name: &str| format!("order.lines[{i}].{name}");
            Ok(CheckoutLine {
                line_id: LineId::parse(&l.line_id).field_with(|| field("line_id"))?,
                seller_id: SellerId::parse(&l.seller_id).field_with(|| field("seller_id"))?,
                product_id: ProductId::parse(&l.product_id).field_with(|| field("product_id"))?,
                category_id: CategoryId::parse(&l.category_id).field_with(|| field("category_id"))?,
                unit_price: money_in(l.unit_price, &field("unit_price"), currency, ORDER_CURRENCY)?.minor(),
                quantity: u32::try_from(l.quantity)
                    .map_err(|_| Error::invalid(field("quantity"), "must be 1 to 10000"))?,
                sale_price: l.sale_price,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    CheckoutOrder::new(
        OrderId::parse(&order.order_id).field("order.order_id")?,
        AccountId::parse(&order.account_id).field("order.account_id")?,
        currency,
        lines,
    )
}

fn picked_ids(ids: &[i64]) -> Result<Vec<i64>, Error> {
    if ids.len() > MAX_PICKED {
        return Err(Error::invalid(
            "coupon_ids",
            format!("must name at most {MAX_PICKED} coupons"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(repeated) = ids.iter().find(|id| !seen.insert(**id)) {
        return Err(Error::invalid(
            "coupon_ids",
            format!("names coupon {repeated} twice"),
        ));
    }
    Ok(ids.to_vec())
}

fn pricing_pb(lines: &[CheckoutLine], currency: Currency, pricing: Pricing) -> pb::Pricing {
    let line_id = |index: usize| lines[index].line_id.to_string();
    let money = |minor: i64| Some(money_pb(minor, currency));
    let total = pricing.total();
    pb::Pricing {
        coupons: pricing
            .coupons
            .into_iter()
            .map(|outcome| match outcome.result {
                Ok(applied) => pb::CouponOutcome {
                    coupon_id: outcome.coupon_id,
                    applicable: true,
                    reason: pb::NotApplicableReason::Unspecified.into(),
                    discount: money(applied.discount),
                    allocations: applied
                        .allocations
                        .into_iter()
                        .map(|(line, discount)| pb::LineAllocation {
                            line_id: line_id(line),
                            discount: money(discount),
                        })
                        .collect(),
                },
                Err(refusal) => pb::CouponOutcome {
                    coupon_id: outcome.coupon_id,
                    applicable: false,
                    reason: refusal_pb(refusal).into(),
                    discount: money(0),
                    allocations: Vec::new(),
                },
            })
            .collect(),
        lines: pricing
            .lines
            .iter()
            .enumerate()
            .map(|(i, (amount, discount))| pb::LineTotal {
                line_id: line_id(i),
                amount: money(*amount),
                discount: money(*discount),
                total: money(amount - discount),
            })
            .collect(),
        subtotal: money(pricing.subtotal),
        discount: money(pricing.discount),
        total: money(total),
    }
}

fn line_pb(line: CheckoutLine, currency: Currency) -> pb::CheckoutLine {
    pb::CheckoutLine {
        line_id: line.line_id.to_string(),
        seller_id: line.seller_id.to_string(),
        product_id: line.product_id.to_string(),
        category_id: line.category_id.to_string(),
        unit_price: Some(money_pb(line.unit_price, currency)),
        quantity: i32::try_from(line.quantity).unwrap_or(i32::MAX),
        sale_price: line.sale_price,
    }
}

fn order_status_pb(status: OrderStatus) -> pb::OrderStatus {
    match status {
        OrderStatus::Open => pb::OrderStatus::Open,
        OrderStatus::Completed => pb::OrderStatus::Completed,
        OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
        OrderStatus::Refunded => pb::OrderStatus::Refunded,
    }
}

fn refund_pb(refund: Refund, currency: Currency) -> pb::Refund {
    pb::Refund {
        refund_id: refund.refund_id.to_string(),
        whole_order: refund.whole_order,
        lines: refund
            .lines
            .into_iter()
            .map(|l| pb::RefundLine {
                line_id: l.line_id.to_string(),
                quantity: i32::try_from(l.quantity).unwrap_or(i32::MAX),
            })
            .collect(),
        clawbacks: refund
            .clawbacks
            .into_iter()
            .map(|c| pb::Clawback {
                line_id: c.line_id.to_string(),
                coupon_id: c.coupon_id,
                discount: Some(money_pb(c.discount, currency)),
            })
            .collect(),
        completes_order: refund.completes_order,
        create_time: Some(timestamp(refund.created_at)),
    }
}

fn order_pb(order: OrderCheckout) -> pb::OrderCheckout {
    let currency = order.currency;
    pb::OrderCheckout {
        order_id: order.order_id.to_string(),
        account_id: order.account_id.to_string(),
        status: order_status_pb(order.status).into(),
        cart_revision: order.cart_revision,
        hold_expire_time: (order.status == OrderStatus::Open).then(|| timestamp(order.hold_until)),
        currency_code: currency.to_string(),
        pricing: Some(pricing_pb(&order.lines, currency, order.pricing)),
        lines: order
            .lines
            .into_iter()
            .map(|line| line_pb(line, currency))
            .collect(),
        coupons: order.coupons.into_iter().map(coupon_pb).collect(),
        refunds: order
            .refunds
            .into_iter()
            .map(|r| refund_pb(r, currency))
            .collect(),
        create_time: Some(timestamp(order.created_at)),
        update_time: Some(timestamp(order.updated_at)),
    }
}

/// The order a call names by `account_id` and `order_id`, declared as the ids
/// the call concerns (`ErrorInfo.metadata`) as soon as each parses.
fn order_key(account_id: &str, order_id: &str) -> Result<(AccountId, OrderId), Error> {
    let account_id = AccountId::parse(account_id).field("account_id")?;
    call::concerns([("account_id", &account_id)]);
    let order_id = OrderId::parse(order_id).field("order_id")?;
    call::concerns([("order_id", &order_id)]);
    Ok((account_id, order_id))
}

/// A cart revision: 0 to 2^63 - 1 (what the database stores).
fn cart_revision(revision: u64) -> Result<u64, Error> {
    if i64::try_from(revision).is_err() {
        return Err(Error::invalid(
            "cart_revision",
            format!("must be at most {}", i64::MAX),
        ));
    }
    Ok(revision)
}

/// A hold's length on the wire: absent for the default; else 1 minute to 24 hours.
fn hold_duration(duration: Option<prost_types::Duration>) -> Result<Option<Duration>, Error> {
    let Some(duration) = duration else {
        return Ok(None);
    };
    let exact = u64::try_from(duration.seconds)
        .ok()
        .filter(|_| (0..1_000_000_000).contains(&duration.nanos))
        .map(|seconds| Duration::new(seconds, u32::try_from(duration.nanos).unwrap_or(0)))
        .ok_or_else(|| Error::invalid("hold_duration", "must be 1 minute to 24 hours"))?;
    check_hold(exact).field("hold_duration").map(Some)
}

/// A refund's extent on the wire.
fn refund_extent(extent: Option<pb::refund_order_request::Extent>) -> Result<RefundExtent, Error> {
    use pb::refund_order_request::Extent;
    match extent {
        None => Err(Error::invalid("extent", "is required: whole_order or lines")),
        Some(Extent::WholeOrder(_)) => Ok(RefundExtent::WholeOrder),
        Some(Extent::Lines(lines)) => {
            if lines.lines.is_empty() || lines.lines.len() > MAX_LINES {
                return Err(Error::invalid(
                    "lines.lines",
                    format!("must name 1 to {MAX_LINES} lines"),
                ));
            }
            lines
                .lines
                .into_iter()
                .enumerate()
                .map(|(i, line)| {
                    let line_id =
                        LineId::parse(&line.line_id).field_with(|| format!("lines.lines[{i}].line_id"))?;
                    let quantity = u32::try_from(line.quantity)
                        .ok()
                        .filter(|q| (1..=MAX_QUANTITY).contains(q))
                        .ok_or_else(|| {
                            Error::invalid(
                                format!("lines.lines[{i}].quantity"),
                                format!("must be 1 to {MAX_QUANTITY}"),
                            )
                        })?;
                    Ok((line_id, quantity))
                })
                .collect::<Result<Vec<_>, Error>>()
                .map(RefundExtent::Lines)
        }
    }
}

/// Keeps template page tokens apart from other listings' tokens.
const TEMPLATE_PAGE_KIND: &str = "templates.v1";

/// Keeps coupon page tokens apart from other listings' tokens.
const COUPON_PAGE_KIND: &str = "coupons.v1";

#[tonic::async_trait]
impl pb::coupons_server::Coupons for CouponsService {
    async fn create_coupon_template(
        &self,
        request: Request<pb::CreateCouponTemplateRequest>,
    ) -> Result<Response<pb::CreateCouponTemplateResponse>, Status> {
        let spec = template_spec(request.into_inner().template)?;
        call::concerns([("template_id", &spec.template_id)]);
        let (template, replayed) = self.coupons.create_template(&spec).await?;
        Ok(Response::new(pb::CreateCouponTemplateResponse {
            template: Some(template_pb(template)),
            replayed,
            request_id: call::request_id(),
        }))
    }

    async fn get_coupon_template(
        &self,
        request: Request<pb::GetCouponTemplateRequest>,
    ) -> Result<Response<pb::GetCouponTemplateResponse>, Status> {
        let template_id = TemplateId::parse(&request.get_ref().template_id).field("template_id")?;
        call::concerns([("template_id", &template_id)]);
        let template = self.coupons.template(&template_id).await?;
        Ok(Response::new(pb::GetCouponTemplateResponse {
            template: Some(template_pb(template)),
        }))
    }

    async fn list_coupon_templates(
        &self,
        request: Request<pb::ListCouponTemplatesRequest>,
    ) -> Result<Response<pb::ListCouponTemplatesResponse>, Status> {
        let request = request.into_inner();
        let page_size = page_size(request.page_size)?;
        // No account and no filter: the token is bound to the listing only.
        let query = PageQuery::new(TEMPLATE_PAGE_KIND);
        let after: Option<String> = query.parse(&request.page_token)?;
        let (templates, next) = self.coupons.templates(after.as_deref(), page_size).await?;
        Ok(Response::new(pb::ListCouponTemplatesResponse {
            templates: templates.into_iter().map(template_pb).collect(),
            next_page_token: next.map(|key| query.token(&key)).unwrap_or_default(),
        }))
    }

    async fn update_coupon_template(
        &self,
        request: Request<pb::UpdateCouponTemplateRequest>,
    ) -> Result<Response<pb::UpdateCouponTemplateResponse>, Status> {
        let spec = template_spec(request.into_inner().template)?;
        call::concerns([("template_id", &spec.template_id)]);
        let template = self.coupons.update_template(&spec).await?;
        Ok(Response::new(pb::UpdateCouponTemplateResponse {
            template: Some(template_pb(template)),
            request_id: call::request_id(),
        }))
    }

    async fn set_coupon_template_paused(
        &self,
        request: Request<pb::SetCouponTemplatePausedRequest>,
    ) -> Result<Response<pb::SetCouponTemplatePausedResponse>, Status> {
        let request = request.into_inner();
        let template_id = TemplateId::parse(&request.template_id).field("template_id")?;
        call::concerns([("template_id", &template_id)]);
        let template = self.coupons.set_paused(&template_id, request.paused).await?;
        Ok(Response::new(pb::SetCouponTemplatePausedResponse {
            template: Some(template_pb(template)),
            request_id: call::request_id(),
        }))
    }

    async fn create_public_code(
        &self,
        request: Request<pb::CreatePublicCodeRequest>,
    ) -> Result<Response<pb::CreatePublicCodeResponse>, Status> {
        let request = request.into_inner();
        let template_id = TemplateId::parse(&request.template_id).field("template_id")?;
        call::concerns([("template_id", &template_id)]);
        let code = ClaimCode::parse(&request.code).field("code")?;
        let replayed = self.coupons.create_public_code(&template_id, &code).await?;
        Ok(Response::new(pb::CreatePublicCodeResponse {
            code: code.to_string(),
            replayed,
            request_id: call::request_id(),
        }))
    }

    async fn generate_single_use_codes(
        &self,
        request: Request<pb::GenerateSingleUseCodesRequest>,
    ) -> Result<Response<pb::GenerateSingleUseCodesResponse>, Status> {
        let request = request.into_inner();
        let template_id = TemplateId::parse(&request.template_id).field("template_id")?;
        let batch_request_id = BatchRequestId::parse(&request.request_id).field("request_id")?;
        call::concerns([("template_id", &template_id), ("request_id", &batch_request_id)]);
        let count =
            u32::try_from(request.count).map_err(|_| Error::invalid("count", "must be 1 to 10000"))?;
        let batch = self
            .coupons
            .generate_codes(&batch_request_id, &template_id, count)
            .await?;
        Ok(Response::new(pb::GenerateSingleUseCodesResponse {
            codes: batch.codes.iter().map(ToString::to_string).collect(),
            batch: Some(pb::CodeBatch {
                batch_id: batch.batch_id,
                template_id: batch.template_id.to_string(),
                count: i32::try_from(batch.count).unwrap_or(i32::MAX),
                create_time: Some(timestamp(batch.created_at)),
            }),
            replayed: batch.replayed,
            request_id: call::request_id(),
        }))
    }

    async fn run_expiry_notices(
        &self,
        _request: Request<pb::RunExpiryNoticesRequest>,
    ) -> Result<Response<pb::RunExpiryNoticesResponse>, Status> {
        let sent = self.coupons.send_expiry_notices(self.expiry_notices).await?;
        Ok(Response::new(pb::RunExpiryNoticesResponse {
            expiring_soon: sent.expiring_soon,
            expired: sent.expired,
            request_id: call::request_id(),
        }))
    }

    async fn claim_coupon(
        &self,
        request: Request<pb::ClaimCouponRequest>,
    ) -> Result<Response<pb::ClaimCouponResponse>, Status> {
        let request = request.into_inner();
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let code = ClaimCode::parse(&request.code).field("code")?;
        let issued = self.coupons.claim(&account_id, &code).await?;
        Ok(Response::new(pb::ClaimCouponResponse {
            coupon: Some(coupon_pb(issued.coupon)),
            replayed: issued.replayed,
            request_id: call::request_id(),
        }))
    }

    async fn issue_coupon(
        &self,
        request: Request<pb::IssueCouponRequest>,
    ) -> Result<Response<pb::IssueCouponResponse>, Status> {
        let request = request.into_inner();
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        let template_id = TemplateId::parse(&request.template_id).field("template_id")?;
        let issuance_id = IssuanceId::parse(&request.issuance_id).field("issuance_id")?;
        call::concerns([
            ("account_id", &account_id),
            ("template_id", &template_id),
            ("issuance_id", &issuance_id),
        ]);
        let issued = self
            .coupons
            .issue(&account_id, &template_id, &issuance_id, IssuePolicy::Caller)
            .await?;
        Ok(Response::new(pb::IssueCouponResponse {
            coupon: Some(coupon_pb(issued.coupon)),
            replayed: issued.replayed,
            request_id: call::request_id(),
        }))
    }

    async fn validate_coupons(
        &self,
        request: Request<pb::ValidateCouponsRequest>,
    ) -> Result<Response<pb::ValidateCouponsResponse>, Status> {
        let request = request.into_inner();
        let order = checkout_order(request.order)?;
        call::concerns([("account_id", &order.account_id), ("order_id", &order.order_id)]);
        let ids = picked_ids(&request.coupon_ids)?;
        let pricing = self.coupons.validate(&order, &ids).await?;
        Ok(Response::new(pb::ValidateCouponsResponse {
            pricing: Some(pricing_pb(order.lines(), order.currency, pricing)),
        }))
    }

    async fn best_coupons(
        &self,
        request: Request<pb::BestCouponsRequest>,
    ) -> Result<Response<pb::BestCouponsResponse>, Status> {
        let order = checkout_order(request.into_inner().order)?;
        call::concerns([("account_id", &order.account_id), ("order_id", &order.order_id)]);
        let (coupon_ids, pricing) = self.coupons.best(&order).await?;
        Ok(Response::new(pb::BestCouponsResponse {
            coupon_ids,
            pricing: Some(pricing_pb(order.lines(), order.currency, pricing)),
        }))
    }

    async fn reserve_coupons(
        &self,
        request: Request<pb::ReserveCouponsRequest>,
    ) -> Result<Response<pb::ReserveCouponsResponse>, Status> {
        let request = request.into_inner();
        let order = checkout_order(request.order)?;
        call::concerns([("account_id", &order.account_id), ("order_id", &order.order_id)]);
        let reserve = ReserveRequest {
            order,
            coupon_ids: picked_ids(&request.coupon_ids)?,
            cart_revision: cart_revision(request.cart_revision)?,
            hold: hold_duration(request.hold_duration)?,
        };
        let reservation = self.coupons.reserve(&reserve).await?;
        Ok(Response::new(pb::ReserveCouponsResponse {
            order: Some(order_pb(reservation.order)),
            replayed: reservation.replayed,
            request_id: call::request_id(),
        }))
    }

    async fn get_checkout_order(
        &self,
        request: Request<pb::GetCheckoutOrderRequest>,
    ) -> Result<Response<pb::GetCheckoutOrderResponse>, Status> {
        let (account_id, order_id) = order_key(&request.get_ref().account_id, &request.get_ref().order_id)?;
        let order = self.coupons.order(&account_id, &order_id).await?;
        Ok(Response::new(pb::GetCheckoutOrderResponse {
            order: Some(order_pb(order)),
        }))
    }

    async fn complete_order(
        &self,
        request: Request<pb::CompleteOrderRequest>,
    ) -> Result<Response<pb::CompleteOrderResponse>, Status> {
        let (account_id, order_id) = order_key(&request.get_ref().account_id, &request.get_ref().order_id)?;
        let order = self.coupons.complete(&account_id, &order_id).await?;
        Ok(Response::new(pb::CompleteOrderResponse {
            order: Some(order_pb(order)),
            request_id: call::request_id(),
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let (account_id, order_id) = order_key(&request.get_ref().account_id, &request.get_ref().order_id)?;
        let order = self.coupons.cancel(&account_id, &order_id).await?;
        Ok(Response::new(pb::CancelOrderResponse {
            order: Some(order_pb(order)),
            request_id: call::request_id(),
        }))
    }

    async fn refund_order(
        &self,
        request: Request<pb::RefundOrderRequest>,
    ) -> Result<Response<pb::RefundOrderResponse>, Status> {
        let request = request.into_inner();
        let (account_id, order_id) = order_key(&request.account_id, &request.order_id)?;
        let refund_id = RefundId::parse(&request.refund_id).field("refund_id")?;
        let extent = refund_extent(request.extent)?;
        let refunded = self
            .coupons
            .refund(&account_id, &order_id, &refund_id, &extent)
            .await?;
        let currency = refunded.order.currency;
        Ok(Response::new(pb::RefundOrderResponse {
            order: Some(order_pb(refunded.order)),
            refund: Some(refund_pb(refunded.refund, currency)),
            replayed: refunded.replayed,
            request_id: call::request_id(),
        }))
    }

    async fn list_coupons(
        &self,
        request: Request<pb::ListCouponsRequest>,
    ) -> Result<Response<pb::ListCouponsResponse>, Status> {
        let request = request.into_inner();
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        let statuses = request
            .statuses
            .iter()
            .enumerate()
            .map(|(i, &s)| status_domain(s, &format!("statuses[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let page_size = page_size(request.page_size)?;
        let query = PageQuery::new(COUPON_PAGE_KIND)
            .with("account_id", &account_id)
            .with_set("statuses", statuses.iter().map(|s| status_pb(*s).as_str_name()));
        let before = query.parse(&request.page_token)?;
        let (coupons, next) = self
            .coupons
            .list(&account_id, &statuses, before, page_size)
            .await?;
        Ok(Response::new(pb::ListCouponsResponse {
            coupons: coupons.into_iter().map(coupon_pb).collect(),
            next_page_token: next.map(|id| query.token(&id)).unwrap_or_default(),
        }))
    }

    async fn get_coupon(
        &self,
        request: Request<pb::GetCouponRequest>,
    ) -> Result<Response<pb::GetCouponResponse>, Status> {
        let request = request.into_inner();
        let account_id = AccountId::parse(&request.account_id).field("account_id")?;
        call::concerns([("account_id", &account_id)]);
        if request.coupon_id > 0 {
            call::concerns([("coupon_id", &request.coupon_id)]);
        }
        let (coupon, history) = self.coupons.get(&account_id, request.coupon_id).await?;
        Ok(Response::new(pb::GetCouponResponse {
            coupon: Some(coupon_pb(coupon)),
            history: history.into_iter().map(transition_pb).collect(),
        }))
    }
}
