-- Checkout orders (SPEC §4.2, §4.3): holds that end, cart revisions, the pricing
-- stored at reservation, and line refunds.

-- A reserved coupon is held until an instant. Once it has passed, the coupon
-- reads as VALID (or EXPIRED) and another order may take it; the stored row
-- keeps 'inactive' until something touches it (no job is needed).
alter table coupon add column hold_until timestamptz;
-- Reservations made before holds had an end get the default hold from now.
update coupon set hold_until = now() + interval '30 minutes' where status = 'inactive';
alter table coupon add constraint coupon_hold check ((status = 'inactive') = (hold_until is not null));

-- New transitions: 'release' (a newer cart revision dropped the coupon) and
-- 'lapse' (the hold ended and another order, or a newer revision, took over).
-- A partial refund is recorded once per refund (its note names the refund);
-- the other order actions stay once per (order, coupon).
alter table coupon_transition drop constraint coupon_transition_action;
alter table coupon_transition add constraint coupon_transition_action check (
    action in ('issue', 'reserve', 'release', 'lapse', 'complete', 'cancel',
               'refund_full', 'refund_partial', 'revoke'));
drop index coupon_transition_order_once;
create unique index coupon_transition_order_once
    on coupon_transition (account_id, order_id, coupon_id, action)
    where action in ('complete', 'cancel', 'refund_full');

-- One row per order the checkout reserved for: its state, its latest cart
-- revision and the hold of its coupons.
create table checkout_order (
    account_id text not null references member (account_id),
    order_id text not null,
    -- 'open' (coupons held), 'completed', 'cancelled'. A completed order whose
    -- every unit was refunded reads as REFUNDED.
    status text not null,
    cart_revision bigint not null,
    -- sha256 of what the reserve of this revision carried (cart, coupons, hold):
    -- the same revision with other content is refused. Null for orders
    -- reserved before revisions existed.
    content_digest bytea,
    currency text not null,
    -- The coupons picked, in the order picked.
    coupon_ids bigint[] not null,
    hold_until timestamptz not null,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    primary key (account_id, order_id),
    constraint checkout_order_status check (status in ('open', 'completed', 'cancelled')),
    constraint checkout_order_revision check (cart_revision >= 0)
);

-- The cart of the order's latest revision.
create table checkout_order_line (
    account_id text not null,
    order_id text not null,
    line_id text not null,
    position integer not null,
    seller_id text not null,
    product_id text not null,
    category_id text not null,
    unit_price_minor bigint not null,
    quantity integer not null,
    sale_price boolean not null,
    primary key (account_id, order_id, line_id),
    foreign key (account_id, order_id) references checkout_order (account_id, order_id) on delete cascade,
    constraint checkout_order_line_amounts check (unit_price_minor >= 0 and quantity > 0)
);

-- Each applied coupon's discount on each line (the allocation of SPEC §4.3),
-- as priced at reservation. A coupon's discount is the sum of its rows.
create table checkout_allocation (
    account_id text not null,
    order_id text not null,
    coupon_id bigint not null,
    line_id text not null,
    discount_minor bigint not null,
    primary key (account_id, order_id, coupon_id, line_id),
    foreign key (account_id, order_id, line_id)
        references checkout_order_line (account_id, order_id, line_id) on delete cascade,
    constraint checkout_allocation_amount check (discount_minor >= 0)
);

-- Refunds of a completed order, idempotent by their id.
create table checkout_refund (
    account_id text not null,
    order_id text not null,
    refund_id text not null,
    -- sha256 of the request's extent: the same id with another extent is refused.
    content_digest bytea not null,
    whole_order boolean not null,
    -- Whether this refund covered the order's last units (the full refund).
    completes_order boolean not null,
    created_at timestamptz not null,
    primary key (account_id, order_id, refund_id),
    foreign key (account_id, order_id) references checkout_order (account_id, order_id)
);

-- The units a refund returned, per line.
create table checkout_refund_line (
    account_id text not null,
    order_id text not null,
    refund_id text not null,
    line_id text not null,
    quantity integer not null,
    primary key (account_id, order_id, refund_id, line_id),
    foreign key (account_id, order_id, refund_id)
        references checkout_refund (account_id, order_id, refund_id),
    constraint checkout_refund_line_quantity check (quantity > 0)
);

-- What a refund claws back of each coupon's discount, per line.
create table checkout_clawback (
    account_id text not null,
    order_id text not null,
    refund_id text not null,
    line_id text not null,
    coupon_id bigint not null,
    discount_minor bigint not null,
    primary key (account_id, order_id, refund_id, line_id, coupon_id),
    foreign key (account_id, order_id, refund_id, line_id)
        references checkout_refund_line (account_id, order_id, refund_id, line_id),
    constraint checkout_clawback_amount check (discount_minor >= 0)
);

-- Orders reserved before this migration: their state from the coupons'
-- transitions; their cart was not stored, so they have no lines (a whole-order
-- refund still works; a line refund cannot name a line).
insert into checkout_order (account_id, order_id, status, cart_revision, content_digest, currency,
                            coupon_ids, hold_until, created_at, updated_at)
select t.account_id, t.order_id,
       case when bool_or(t.action = 'cancel') then 'cancelled'
            when bool_or(t.action = 'complete') then 'completed'
            else 'open' end,
       0, null, min(c.currency),
       array_agg(distinct t.coupon_id order by t.coupon_id),
       now() + interval '30 minutes', min(t.occurred_at), max(t.occurred_at)
from coupon_transition t
join coupon c on c.account_id = t.account_id and c.coupon_id = t.coupon_id
where t.order_id is not null and t.action = 'reserve'
   or t.order_id is not null and t.action in ('complete', 'cancel')
group by t.account_id, t.order_id;

-- Their full refunds, as one refund each that returned the whole order (so the
-- order reads REFUNDED and refuses another refund).
insert into checkout_refund (account_id, order_id, refund_id, content_digest, whole_order, completes_order,
                             created_at)
select t.account_id, t.order_id, 'legacy-full-refund', '\x'::bytea, true, true, min(t.occurred_at)
from coupon_transition t
where t.action = 'refund_full' and t.order_id is not null
  and exists (select 1 from checkout_order o where o.account_id = t.account_id and o.order_id = t.order_id)
group by t.account_id, t.order_id;
