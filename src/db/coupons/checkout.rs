//! Checkout orders: the order's header (state, cart revision, hold), its cart
//! and stored allocations, and its refunds with their claw-backs.

use super::*;
use crate::db::audit;
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

impl OrderRow {
    fn into_record(self) -> Result<OrderRecord, sqlx::Error> {
        Ok(OrderRecord {
            state: self.state,
            cart_revision: u64::try_from(self.cart_revision).map_err(|e| decode("cart_revision", e))?,
            content_digest: self.content_digest,
            currency: currency_from(&self.currency)?,
            coupon_ids: self.coupon_ids,
            hold_until: self.hold_until,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const ORDER_COLUMNS: &str = "o.status as state, o.cart_revision, o.content_digest, o.currency, o.coupon_ids, \
                             o.hold_until, o.created_at, o.updated_at";

/// The order's header, if the checkout reserved for it.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn order(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<Option<OrderRecord>, sqlx::Error> {
    let row: Option<OrderRow> = sqlx::query_as(statement!(format!(
        "select {ORDER_COLUMNS} from checkout_order o where o.account_id = $1 and o.order_id = $2"
    )))
    .bind(account_id)
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    row.map(OrderRow::into_record).transpose()
}

/// Whether the member is flagged, and the order's header if the checkout
/// reserved for it; one statement, `None` when there is no such member. The
/// member's row is share-locked until the transaction ends: a concurrent flag
/// (which updates the row) waits for the caller, and the caller waits for a
/// flag under way, so a reservation and a flag never miss each other; shared,
/// so reservations of one member do not wait for each other.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn member_and_order(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<Option<(bool, Option<OrderRecord>)>, sqlx::Error> {
    let row = sqlx::query(statement!(format!(
        "select m.fraud_flagged_at is not null as flagged, o.order_id is not null as found, {ORDER_COLUMNS} \
         from member m left join checkout_order o on o.account_id = m.account_id and o.order_id = $2 \
         where m.account_id = $1 for share of m"
    )))
    .bind(account_id)
    .bind(order_id)
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    use sqlx::Row;
    let flagged: bool = row.try_get("flagged")?;
    let found: bool = row.try_get("found")?;
    let order = if found {
        Some(<OrderRow as sqlx::FromRow<_>>::from_row(&row)?.into_record()?)
    } else {
        None
    };
    Ok(Some((flagged, order)))
}

/// Moves the order `$1`/`$2` to the state `$3` at `$4` (audited with
/// `$5`/`$6` when the state moves) and returns its cart ([`cart`]'s rows): the
/// function `loyalty_set_order_state`
/// (`migrations/20261205000005_checkout_functions.sql`).
const SET_ORDER_STATE: &str =
    "select * from loyalty_set_order_state($1, $2, $3, $4, $5, $6) order by line_position";

/// Moves the order to `state`.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn set_order_state(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
    state: OrderState,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let origin = Origin::current();
    sqlx::query(SET_ORDER_STATE)
        .bind(account_id)
        .bind(order_id)
        .bind(state)
        .bind(now)
        .bind(&origin.request_id)
        .bind(&origin.caller)
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves the order to COMPLETED and reads its cart ([`cart`]), in one
/// statement: the completion does not change the cart.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn complete_order(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
    now: DateTime<Utc>,
) -> Result<(Vec<CheckoutLine>, Vec<Allocation>), sqlx::Error> {
    let origin = Origin::current();
    let rows: Vec<LineRow> = sqlx::query_as(SET_ORDER_STATE)
        .bind(account_id)
        .bind(order_id)
        .bind(OrderState::Completed)
        .bind(now)
        .bind(&origin.request_id)
        .bind(&origin.caller)
        .fetch_all(conn)
        .await?;
    cart_of(rows)
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

/// Writes the order: its header (a new order, or a newer revision of an open
/// one) with its history row, its cart and its allocations, in one round trip
/// (the function `loyalty_put_order`,
/// `migrations/20261205000005_checkout_functions.sql`). The order has no cart
/// ([`delete_cart`]).
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn put_order(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
    record: &OrderRecord,
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
    let origin = Origin::current();
    sqlx::query(
        "select loyalty_put_order($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
                                  $18, $19, $20, $21, $22, $23)",
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
    .bind(record.state)
    .bind(i64::try_from(record.cart_revision).unwrap_or(i64::MAX))
    .bind(&record.content_digest)
    .bind(record.currency.as_str())
    .bind(&record.coupon_ids)
    .bind(record.hold_until)
    .bind(record.created_at)
    .bind(record.updated_at)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .execute(conn)
    .await?;
    Ok(())
}

/// A `checkout_order_line` row with its allocations.
#[derive(sqlx::FromRow)]
struct LineRow {
    line_id: String,
    seller_id: String,
    product_id: String,
    category_id: String,
    unit_price_minor: i64,
    quantity: i32,
    sale_price: bool,
    coupon_ids: Vec<i64>,
    discounts: Vec<i64>,
}

/// The order's cart, in the order of its lines, and its allocations. One
/// statement: each line with its allocations.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn cart(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<(Vec<CheckoutLine>, Vec<Allocation>), sqlx::Error> {
    let rows: Vec<LineRow> = sqlx::query_as(CART)
        .bind(account_id)
        .bind(order_id)
        .fetch_all(conn)
        .await?;
    cart_of(rows)
}

/// The cart of the order `$1`/`$2`: one row per line with its allocations,
/// in the order of the lines (the function `loyalty_order_cart`, which
/// `loyalty_set_order_state` returns too).
const CART: &str = "select * from loyalty_order_cart($1, $2) order by line_position";

/// The cart's lines, in order, and its allocations, from its rows.
fn cart_of(rows: Vec<LineRow>) -> Result<(Vec<CheckoutLine>, Vec<Allocation>), sqlx::Error> {
    let id = |what: &str, e: String| decode(what, e);
    let mut lines = Vec::with_capacity(rows.len());
    let mut allocations = Vec::new();
    for (line, row) in rows.into_iter().enumerate() {
        if row.coupon_ids.len() != row.discounts.len() {
            return Err(decode("allocations of line", &row.line_id));
        }
        allocations.extend(
            row.coupon_ids
                .iter()
                .zip(&row.discounts)
                .map(|(&coupon_id, &discount)| Allocation {
                    coupon_id,
                    line,
                    discount,
                }),
        );
        lines.push(CheckoutLine {
            line_id: LineId::parse(&row.line_id).map_err(|e| id("line_id", e))?,
            seller_id: SellerId::parse(&row.seller_id).map_err(|e| id("seller_id", e))?,
            product_id: ProductId::parse(&row.product_id).map_err(|e| id("product_id", e))?,
            category_id: CategoryId::parse(&row.category_id).map_err(|e| id("category_id", e))?,
            unit_price: row.unit_price_minor,
            quantity: u32::try_from(row.quantity).map_err(|e| decode("quantity", e))?,
            sale_price: row.sale_price,
        });
    }
    allocations.sort_by_key(|a| (a.coupon_id, a.line));
    Ok((lines, allocations))
}

/// A `checkout_refund` row with its lines and claw-backs.
#[derive(sqlx::FromRow)]
struct RefundRow {
    refund_id: String,
    content_digest: Vec<u8>,
    whole_order: bool,
    completes_order: bool,
    created_at: DateTime<Utc>,
    line_ids: Vec<String>,
    quantities: Vec<i32>,
    claw_lines: Vec<String>,
    claw_coupons: Vec<i64>,
    claw_amounts: Vec<i64>,
}

/// The order's refunds, oldest first, with their lines and claw-backs. One
/// statement. Each lateral names the member as `$1`, not only as
/// `r.account_id`: Citus routes a statement to one shard only when every
/// distributed table in it is filtered on `account_id` by a value.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn refunds(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<Vec<Refund>, sqlx::Error> {
    let rows: Vec<RefundRow> = sqlx::query_as(
        "select r.refund_id, r.content_digest, r.whole_order, r.completes_order, r.created_at, \
                l.line_ids, l.quantities, c.claw_lines, c.claw_coupons, c.claw_amounts \
         from checkout_refund r \
         cross join lateral ( \
             select coalesce(array_agg(line_id order by line_id), '{}') as line_ids, \
                    coalesce(array_agg(quantity order by line_id), '{}') as quantities \
             from checkout_refund_line \
             where account_id = $1 and order_id = r.order_id and refund_id = r.refund_id) l \
         cross join lateral ( \
             select coalesce(array_agg(line_id order by line_id, coupon_id), '{}') as claw_lines, \
                    coalesce(array_agg(coupon_id order by line_id, coupon_id), '{}') as claw_coupons, \
                    coalesce(array_agg(discount_minor order by line_id, coupon_id), '{}') as claw_amounts \
             from checkout_clawback \
             where account_id = $1 and order_id = r.order_id and refund_id = r.refund_id) c \
         where r.account_id = $1 and r.order_id = $2 \
         order by r.created_at, r.refund_id",
    )
    .bind(account_id)
    .bind(order_id)
    .fetch_all(conn)
    .await?;
    let line_id = |id: &str| LineId::parse(id).map_err(|e| decode("line_id", e));
    rows.into_iter()
        .map(|row| {
            if row.line_ids.len() != row.quantities.len()
                || row.claw_lines.len() != row.claw_coupons.len()
                || row.claw_lines.len() != row.claw_amounts.len()
            {
                return Err(decode("refund", &row.refund_id));
            }
            Ok(Refund {
                refund_id: RefundId::parse(&row.refund_id).map_err(|e| decode("refund_id", e))?,
                content_digest: row.content_digest,
                whole_order: row.whole_order,
                completes_order: row.completes_order,
                lines: row
                    .line_ids
                    .iter()
                    .zip(&row.quantities)
                    .map(|(id, quantity)| {
                        Ok(StoredRefundLine {
                            line_id: line_id(id)?,
                            quantity: u32::try_from(*quantity).map_err(|e| decode("quantity", e))?,
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()?,
                clawbacks: row
                    .claw_lines
                    .iter()
                    .zip(row.claw_coupons.iter().zip(&row.claw_amounts))
                    .map(|(id, (coupon_id, discount))| {
                        Ok(Clawback {
                            line_id: line_id(id)?,
                            coupon_id: *coupon_id,
                            discount: *discount,
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
    let origin = Origin::current();
    sqlx::query(statement!({
        let audit = audit::insert_order_change_sql(
            "refund",
            "'refund'",
            "jsonb_build_object('refund_id', refund_id, 'whole_order', whole_order, \
             'completes_order', completes_order)",
            "$7",
            ("$13", "$14"),
        );
        format!(
            "with refund as ( \
             insert into checkout_refund (account_id, order_id, refund_id, content_digest, whole_order, \
                                          completes_order, created_at) \
             values ($1, $2, $3, $4, $5, $6, $7) \
             returning account_id, order_id, refund_id, whole_order, completes_order \
         ), audit as ({audit}), lines as ( \
             insert into checkout_refund_line (account_id, order_id, refund_id, line_id, quantity) \
             select $1, $2, refund.refund_id, l.line_id, l.quantity \
             from refund, unnest($8::text[], $9::int[]) as l (line_id, quantity) \
             returning refund_id, line_id \
         ) \
         insert into checkout_clawback (account_id, order_id, refund_id, line_id, coupon_id, discount_minor) \
         select $1, $2, lines.refund_id, c.line_id, c.coupon_id, c.discount \
         from unnest($10::text[], $11::bigint[], $12::bigint[]) as c (line_id, coupon_id, discount) \
         join lines using (line_id)"
        )
    }))
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
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .execute(conn)
    .await?;
    Ok(())
}
