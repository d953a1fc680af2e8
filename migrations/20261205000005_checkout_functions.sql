-- The checkout's writes as functions, for the reason the award's are
-- (20261205000004): on Citus each runs whole on the member's worker, where a
-- statement with data-modifying CTEs would be split into subplans through the
-- coordinator. On plain PostgreSQL each is one round trip, as the statement it
-- replaces was. They only write what the service decided.

-- The turn of one (member, order): the reservation, completion, cancellation
-- and refunds of an order take turns on its `order_lock` row, inserted by the
-- first call and only locked by the later ones (`do update … where false`
-- locks the row it conflicts with). The advisory lock of earlier releases is
-- taken first, so that during a rolling deploy an older server's calls and
-- this one's still take turns; the next release drops it.
create function loyalty_lock_order(p_account_id text, p_order_id text) returns void
language plpgsql as $$
begin
    perform pg_advisory_xact_lock(hashtextextended(p_account_id || '/' || p_order_id, 0));
    insert into order_lock (account_id, order_id) values (p_account_id, p_order_id)
    on conflict (account_id, order_id) do update set order_id = excluded.order_id where false;
end
$$;
select loyalty_distribute_function('loyalty_lock_order(text, text)');

-- Guarded changes of a member's coupons (one element of each array per
-- change, applied in that order): each moves a coupon only from the stored
-- status and order it expects, and records its transition (when it has an
-- action) and its event (when it has an event type). Returns the coupons that
-- moved, as stored; a change whose guard does not hold returns nothing.
create function loyalty_change_coupons(
    p_account_id text,
    p_coupon_ids bigint[],
    p_from_statuses text[],
    p_from_orders text[],
    p_to_statuses text[],
    p_to_orders text[],
    p_hold_untils timestamptz[],
    p_actions text[],
    p_notes text[],
    p_now timestamptz,
    p_event_types text[],
    p_request_id text,
    p_caller text
) returns setof coupon
language plpgsql as $$
declare
    moved coupon;
    change_order text;
    to_status text;
    to_order text;
    new_hold timestamptz;
begin
    for i in 1 .. coalesce(array_length(p_coupon_ids, 1), 0) loop
        -- Scalars, not `p_to_statuses[i]` in the `set` list: Citus 13.2
        -- crashes deparsing an array element there (local execution of a
        -- delegated call).
        to_status := p_to_statuses[i];
        to_order := p_to_orders[i];
        new_hold := p_hold_untils[i];
        update coupon k
        set status = to_status, order_id = to_order, hold_until = new_hold,
            updated_at = p_now
        where k.account_id = p_account_id and k.coupon_id = p_coupon_ids[i]
          and k.status = p_from_statuses[i] and k.order_id is not distinct from p_from_orders[i]
        returning k.* into moved;
        continue when not found;
        -- The order the coupon goes to, else the one it leaves.
        change_order := coalesce(p_to_orders[i], p_from_orders[i]);
        if p_actions[i] is not null then
            insert into coupon_transition (account_id, coupon_id, action, from_status, to_status, order_id,
                                           note, occurred_at, request_id, caller)
            values (p_account_id, moved.coupon_id, p_actions[i], p_from_statuses[i], moved.status,
                    change_order, p_notes[i], p_now, p_request_id, p_caller);
        end if;
        if p_event_types[i] is not null then
            insert into event (account_id, event_type, occurred_at, request_id, caller, payload)
            values (p_account_id, p_event_types[i], p_now, p_request_id, p_caller,
                    jsonb_build_object('coupon_id', moved.coupon_id, 'template_id', moved.template_id,
                        'from_status', p_from_statuses[i], 'to_status', moved.status, 'order_id', change_order,
                        'hold_until', moved.hold_until, 'action', p_actions[i]));
        end if;
        return next moved;
    end loop;
end
$$;
select loyalty_distribute_function(
    'loyalty_change_coupons(text, bigint[], text[], text[], text[], text[], timestamptz[], text[], text[], '
    'timestamptz, text[], text, text)');

-- Writes the order: its header (a new order, or a newer revision of an open
-- one) with its history row, its cart (one element of the line arrays per
-- line, in order) and its allocations. The order has no cart before.
create function loyalty_put_order(
    p_account_id text,
    p_order_id text,
    p_line_ids text[],
    p_positions integer[],
    p_seller_ids text[],
    p_product_ids text[],
    p_category_ids text[],
    p_unit_prices bigint[],
    p_quantities integer[],
    p_sale_prices boolean[],
    p_allocated_coupons bigint[],
    p_allocated_lines text[],
    p_discounts bigint[],
    p_state text,
    p_cart_revision bigint,
    p_content_digest bytea,
    p_currency text,
    p_coupon_ids bigint[],
    p_hold_until timestamptz,
    p_created_at timestamptz,
    p_updated_at timestamptz,
    p_request_id text,
    p_caller text
) returns void
language plpgsql as $$
begin
    insert into checkout_order (account_id, order_id, status, cart_revision, content_digest, currency,
                                coupon_ids, hold_until, created_at, updated_at)
    values (p_account_id, p_order_id, p_state, p_cart_revision, p_content_digest, p_currency, p_coupon_ids,
            p_hold_until, p_created_at, p_updated_at)
    on conflict (account_id, order_id) do update
    set status = excluded.status, cart_revision = excluded.cart_revision,
        content_digest = excluded.content_digest, currency = excluded.currency,
        coupon_ids = excluded.coupon_ids, hold_until = excluded.hold_until, updated_at = excluded.updated_at;
    insert into order_change (account_id, order_id, action, detail, occurred_at, request_id, caller)
    values (p_account_id, p_order_id, 'reserve',
            jsonb_build_object('cart_revision', p_cart_revision, 'coupon_ids', to_jsonb(p_coupon_ids),
                               'hold_until', p_hold_until),
            p_updated_at, p_request_id, p_caller);
    for i in 1 .. coalesce(array_length(p_line_ids, 1), 0) loop
        insert into checkout_order_line (account_id, order_id, line_id, position, seller_id, product_id,
                                         category_id, unit_price_minor, quantity, sale_price)
        values (p_account_id, p_order_id, p_line_ids[i], p_positions[i], p_seller_ids[i], p_product_ids[i],
                p_category_ids[i], p_unit_prices[i], p_quantities[i], p_sale_prices[i]);
    end loop;
    for i in 1 .. coalesce(array_length(p_allocated_coupons, 1), 0) loop
        insert into checkout_allocation (account_id, order_id, coupon_id, line_id, discount_minor)
        values (p_account_id, p_order_id, p_allocated_coupons[i], p_allocated_lines[i], p_discounts[i]);
    end loop;
end
$$;
select loyalty_distribute_function(
    'loyalty_put_order(text, text, text[], integer[], text[], text[], text[], bigint[], integer[], boolean[], '
    'bigint[], text[], bigint[], text, bigint, bytea, text, bigint[], timestamptz, timestamptz, timestamptz, '
    'text, text)');

-- A line of an order's cart with its allocations (the coupons, and the
-- discount of each on the line).
create type loyalty_cart_line as (
    line_position integer,
    line_id text,
    seller_id text,
    product_id text,
    category_id text,
    unit_price_minor bigint,
    quantity integer,
    sale_price boolean,
    coupon_ids bigint[],
    discounts bigint[]
);

-- The order's cart, in the order of its lines, each with its allocations
-- (callers order by `line_position`).
create function loyalty_order_cart(p_account_id text, p_order_id text)
returns setof loyalty_cart_line
-- PL/pgSQL, not SQL: Citus refuses a SQL function that reads distributed
-- tables with parameters when it runs it inside another function.
language plpgsql stable as $$
begin
    return query
    select l.position, l.line_id, l.seller_id, l.product_id, l.category_id, l.unit_price_minor, l.quantity,
           l.sale_price,
           array_remove(array_agg(a.coupon_id order by a.coupon_id), null),
           array_remove(array_agg(a.discount_minor order by a.coupon_id), null)
    from checkout_order_line l
    left join checkout_allocation a using (account_id, order_id, line_id)
    where l.account_id = p_account_id and l.order_id = p_order_id
    group by l.account_id, l.order_id, l.line_id
    order by l.position;
end
$$;
select loyalty_distribute_function('loyalty_order_cart(text, text)');

-- Moves the order to a state, with its history row when the state moves, and
-- returns its cart (neither a completion nor a cancellation changes it).
create function loyalty_set_order_state(
    p_account_id text,
    p_order_id text,
    p_state text,
    p_now timestamptz,
    p_request_id text,
    p_caller text
) returns setof loyalty_cart_line
language plpgsql as $$
declare
    -- Decided here, not by a `case` in the insert: Citus 13.2 deparses a
    -- simple `case x when …` wrongly there (as `case when …`).
    change_action text := case when p_state = 'completed' then 'complete' else 'cancel' end;
begin
    update checkout_order o set status = p_state, updated_at = p_now
    where o.account_id = p_account_id and o.order_id = p_order_id and o.status <> p_state;
    if found then
        insert into order_change (account_id, order_id, action, detail, occurred_at, request_id, caller)
        values (p_account_id, p_order_id, change_action, '{}'::jsonb, p_now, p_request_id, p_caller);
    end if;
    return query select * from loyalty_order_cart(p_account_id, p_order_id);
end
$$;
select loyalty_distribute_function('loyalty_set_order_state(text, text, text, timestamptz, text, text)');
