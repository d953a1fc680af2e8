//! Checkout orders: the order's header (state, cart revision, hold), its cart
//! and stored allocations, and its refunds with their claw-backs.

use super::*;
use crate::domain::coupons::{Allocation, Clawback, OrderRecord, OrderState, Refund, StoredRefundLine};
use crate::domain::ids::{CategoryId, LineId, ProductId, RefundId};
use crate::domain::pricing::CheckoutLine;

/// A `checkout_order` row.
#[derive(sqlx::FromRow)]
struct OrderRow {
    state: OrderState,
    cart_revision: i64,
    content_digest: Option<Vec<u8>>,
    currency: String,
    coupon_ids: Vec<i64>,
    hold_until: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The order's header, if the checkout reserved for it.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn order(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<Option<OrderRecord>, sqlx::Error> {
    let row: Option<OrderRow> = sqlx::query_as(
        "select status as state, cart_revision, content_digest, currency, coupon_ids, hold_until, \
                created_at, updated_at \
         from checkout_order where account_id = $1 and order_id = $2",
    )
    .bind(account_id)
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(OrderRecord {
            state: row.state,
            cart_revision: u64::try_from(row.cart_revision).map_err(|e| decode("cart_revision", e))?,
            content_digest: row.content_digest,
            currency: currency_from(&row.currency)?,
            coupon_ids: row.coupon_ids,
            hold_until: row.hold_until,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    })
    .transpose()
}

/// Writes the order's header (a new order, or a newer revision of an open one).
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn put_order(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
    record: &OrderRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into checkout_order (account_id, order_id, status, cart_revision, content_digest, currency, \
                                     coupon_ids, hold_until, created_at, updated_at) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         on conflict (account_id, order_id) do update \
         set status = excluded.status, cart_revision = excluded.cart_revision, \
             content_digest = excluded.content_digest, currency = excluded.currency, \
             coupon_ids = excluded.coupon_ids, hold_until = excluded.hold_until, \
             updated_at = excluded.updated_at",
    )
    .bind(account_id)
    .bind(order_id)
    .bind(record.state)
    .bind(i64::try_from(record.cart_revision).unwrap_or(i64::MAX))
    .bind(&record.content_digest)
    .bind(record.currency.as_str())
    .bind(&record.coupon_ids)
    .bind(record.hold_until)
    .bind(record.created_at)
    .bind(record.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves the order to `state`.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn set_order_state(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
    state: OrderState,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update checkout_order set status = $3, updated_at = $4 where account_id = $1 and order_id = $2",
    )
    .bind(account_id)
    .bind(order_id)
    .bind(state)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Drops the order's cart and allocations (before a newer revision's).
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn delete_cart(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<(), sqlx::Error> {
    sqlx::query("delete from checkout_order_line where account_id = $1 and order_id = $2")
        .bind(account_id)
        .bind(order_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores the order's cart and allocations; the order has none ([`delete_cart`]).
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn put_cart(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
    lines: &[CheckoutLine],
    allocations: &[Allocation],
) -> Result<(), sqlx::Error> {
    let line_ids: Vec<&LineId> = lines.iter().map(|l| &l.line_id).collect();
    let positions: Vec<i32> = (0..lines.len())
        .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
        .collect();
    let sellers: Vec<&SellerId> = lines.iter().map(|l| &l.seller_id).collect();
    let products: Vec<&ProductId> = lines.iter().map(|l| &l.product_id).collect();
    let categories: Vec<&CategoryId> = lines.iter().map(|l| &l.category_id).collect();
    let prices: Vec<i64> = lines.iter().map(|l| l.unit_price).collect();
    let quantities: Vec<i32> = lines
        .iter()
        .map(|l| i32::try_from(l.quantity).unwrap_or(i32::MAX))
        .collect();
    let sale: Vec<bool> = lines.iter().map(|l| l.sale_price).collect();
    let coupon_ids: Vec<i64> = allocations.iter().map(|a| a.coupon_id).collect();
    let allocated_lines: Vec<&LineId> = allocations.iter().map(|a| &lines[a.line].line_id).collect();
    let amounts: Vec<i64> = allocations.iter().map(|a| a.discount).collect();
    sqlx::query(
        "with lines as ( \
             insert into checkout_order_line (account_id, order_id, line_id, position, seller_id, product_id, \
                                              category_id, unit_price_minor, quantity, sale_price) \
             select $1, $2, * from unnest($3::text[], $4::int[], $5::text[], $6::text[], $7::text[], \
                                          $8::bigint[], $9::int[], $10::bool[]) \
             returning line_id \
         ) \
         insert into checkout_allocation (account_id, order_id, coupon_id, line_id, discount_minor) \
         select $1, $2, a.coupon_id, a.line_id, a.discount \
         from unnest($11::bigint[], $12::text[], $13::bigint[]) as a (coupon_id, line_id, discount) \
         join lines using (line_id)",
    )
    .bind(account_id)
    .bind(order_id)
    .bind(&line_ids)
    .bind(&positions)
    .bind(&sellers)
    .bind(&products)
    .bind(&categories)
    .bind(&prices)
    .bind(&quantities)
    .bind(&sale)
    .bind(&coupon_ids)
    .bind(&allocated_lines)
    .bind(&amounts)
    .execute(conn)
    .await?;
    Ok(())
}

/// A `checkout_order_line` row.
#[derive(sqlx::FromRow)]
struct LineRow {
    line_id: String,
    seller_id: String,
    product_id: String,
    category_id: String,
    unit_price_minor: i64,
    quantity: i32,
    sale_price: bool,
}

/// The order's cart, in the order of its lines, and its allocations.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn cart(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<(Vec<CheckoutLine>, Vec<Allocation>), sqlx::Error> {
    let rows: Vec<LineRow> = sqlx::query_as(
        "select line_id, seller_id, product_id, category_id, unit_price_minor, quantity, sale_price \
         from checkout_order_line where account_id = $1 and order_id = $2 order by position",
    )
    .bind(account_id)
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    let id = |what: &str, e: String| decode(what, e);
    let lines = rows
        .into_iter()
        .map(|row| {
            Ok(CheckoutLine {
                line_id: LineId::parse(&row.line_id).map_err(|e| id("line_id", e))?,
                seller_id: SellerId::parse(&row.seller_id).map_err(|e| id("seller_id", e))?,
                product_id: ProductId::parse(&row.product_id).map_err(|e| id("product_id", e))?,
                category_id: CategoryId::parse(&row.category_id).map_err(|e| id("category_id", e))?,
                unit_price: row.unit_price_minor,
                quantity: u32::try_from(row.quantity).map_err(|e| decode("quantity", e))?,
                sale_price: row.sale_price,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let allocations: Vec<(i64, String, i64)> = sqlx::query_as(
        "select coupon_id, line_id, discount_minor from checkout_allocation \
         where account_id = $1 and order_id = $2 order by coupon_id, line_id",
    )
    .bind(account_id)
    .bind(order_id)
    .fetch_all(conn)
    .await?;
    let allocations = allocations
        .into_iter()
        .map(|(coupon_id, line_id, discount)| {
            let line = lines
                .iter()
                .position(|l| l.line_id.as_str() == line_id)
                .ok_or_else(|| decode("allocation line", &line_id))?;
            Ok(Allocation {
                coupon_id,
                line,
                discount,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok((lines, allocations))
}

/// A `checkout_refund` row.
#[derive(sqlx::FromRow)]
struct RefundRow {
    refund_id: String,
    content_digest: Vec<u8>,
    whole_order: bool,
    completes_order: bool,
    created_at: DateTime<Utc>,
}

/// The order's refunds, oldest first, with their lines and claw-backs.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn refunds(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<Vec<Refund>, sqlx::Error> {
    let rows: Vec<RefundRow> = sqlx::query_as(
        "select refund_id, content_digest, whole_order, completes_order, created_at from checkout_refund \
         where account_id = $1 and order_id = $2 order by created_at, refund_id",
    )
    .bind(account_id)
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let lines: Vec<(String, String, i32)> = sqlx::query_as(
        "select refund_id, line_id, quantity from checkout_refund_line \
         where account_id = $1 and order_id = $2 order by refund_id, line_id",
    )
    .bind(account_id)
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    let clawbacks: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "select refund_id, line_id, coupon_id, discount_minor from checkout_clawback \
         where account_id = $1 and order_id = $2 order by refund_id, line_id, coupon_id",
    )
    .bind(account_id)
    .bind(order_id)
    .fetch_all(conn)
    .await?;
    let line_id = |id: &str| LineId::parse(id).map_err(|e| decode("line_id", e));
    rows.into_iter()
        .map(|row| {
            Ok(Refund {
                refund_id: RefundId::parse(&row.refund_id).map_err(|e| decode("refund_id", e))?,
                content_digest: row.content_digest,
                whole_order: row.whole_order,
                completes_order: row.completes_order,
                lines: lines
                    .iter()
                    .filter(|l| l.0 == row.refund_id)
                    .map(|l| {
                        Ok(StoredRefundLine {
                            line_id: line_id(&l.1)?,
                            quantity: u32::try_from(l.2).map_err(|e| decode("quantity", e))?,
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()?,
                clawbacks: clawbacks
                    .iter()
                    .filter(|c| c.0 == row.refund_id)
                    .map(|c| {
                        Ok(Clawback {
                            line_id: line_id(&c.1)?,
                            coupon_id: c.2,
                            discount: c.3,
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()?,
                created_at: row.created_at,
            })
        })
        .collect()
}

/// Records a refund with its lines and claw-backs. One statement.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn insert_refund(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
    refund: &Refund,
) -> Result<(), sqlx::Error> {
    let line_ids: Vec<&LineId> = refund.lines.iter().map(|l| &l.line_id).collect();
    let quantities: Vec<i32> = refund
        .lines
        .iter()
        .map(|l| i32::try_from(l.quantity).unwrap_or(i32::MAX))
        .collect();
    let claw_lines: Vec<&LineId> = refund.clawbacks.iter().map(|c| &c.line_id).collect();
    let claw_coupons: Vec<i64> = refund.clawbacks.iter().map(|c| c.coupon_id).collect();
    let claw_amounts: Vec<i64> = refund.clawbacks.iter().map(|c| c.discount).collect();
    sqlx::query(
        "with refund as ( \
             insert into checkout_refund (account_id, order_id, refund_id, content_digest, whole_order, \
                                          completes_order, created_at) \
             values ($1, $2, $3, $4, $5, $6, $7) \
             returning refund_id \
         ), lines as ( \
             insert into checkout_refund_line (account_id, order_id, refund_id, line_id, quantity) \
             select $1, $2, refund.refund_id, l.line_id, l.quantity \
             from refund, unnest($8::text[], $9::int[]) as l (line_id, quantity) \
             returning refund_id, line_id \
         ) \
         insert into checkout_clawback (account_id, order_id, refund_id, line_id, coupon_id, discount_minor) \
         select $1, $2, lines.refund_id, c.line_id, c.coupon_id, c.discount \
         from unnest($10::text[], $11::bigint[], $12::bigint[]) as c (line_id, coupon_id, discount) \
         join lines using (line_id)",
    )
    .bind(account_id)
    .bind(order_id)
    .bind(&refund.refund_id)
    .bind(&refund.content_digest)
    .bind(refund.whole_order)
    .bind(refund.completes_order)
    .bind(refund.created_at)
    .bind(&line_ids)
    .bind(&quantities)
    .bind(&claw_lines)
    .bind(&claw_coupons)
    .bind(&claw_amounts)
    .execute(conn)
    .await?;
    Ok(())
}
