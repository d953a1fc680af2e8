-- Events for other services (SPEC §6): an outbox written in the same
-- transaction as each change, cut into slices in commit order, read by the
-- `Events.Watch` stream and relayed to NATS JetStream.

-- One row per change another service may react to. Keyed by account first,
-- like every per-member table. `event_id` is unique and grows in the order the
-- events were written; `txid` is the writing transaction, which says when the
-- event became visible (see `event_slice`).
create table event (
    account_id text not null,
    event_id bigint generated always as identity,
    txid xid8 not null default pg_current_xact_id(),
    event_type text not null,
    -- When the change was made (the service's clock).
    occurred_at timestamptz not null,
    -- The call that made it: its request id and the calling service (empty for
    -- the scheduler's jobs, or when authentication is off).
    request_id text not null default '',
    caller text not null default '',
    -- The typed payload, as JSON with the field names of `loyalty.v1` (see
    -- proto/loyalty/v1/events.proto); the service turns it into protobuf.
    payload jsonb not null,
    primary key (account_id, event_id),
    constraint event_type check (event_type in (
        'member_registered', 'member_flagged', 'member_unflagged',
        'points_awarded', 'points_reversed', 'level_changed', 'reward_issued',
        'coupon_issued', 'coupon_reserved', 'coupon_released', 'coupon_used',
        'coupon_restored', 'coupon_revoked', 'coupon_expiring_soon', 'coupon_expired'))
);

-- Slices are found by the transactions that wrote them, each one's events in
-- id order.
create index event_txid on event (txid, event_id);

-- The event log in commit order. A slice holds the events whose transactions
-- committed after the previous slice's snapshot was taken and before its own:
-- visible in `snapshot`, not visible in the previous slice's. Sequence numbers
-- and transaction ids are handed out before commit, in an order commits do not
-- keep, so neither can serve as a cursor; snapshots can. Slices are numbered
-- without gaps by one writer at a time (the lock on `event_slicer`); within a
-- slice, events are read in `event_id` order, which is the order in which a
-- change that waited for another (a row lock) wrote its event after it.
-- `txids` lists the transactions whose events the slice holds, found once when
-- it is cut, so that reading a slice (however large) costs its own events only.
create table event_slice (
    slice_id bigint primary key,
    snapshot pg_snapshot not null,
    txids xid8[] not null,
    closed_at timestamptz not null,
    events integer not null
);

-- Slice 0 is the floor: no event is older. Pruning moves the floor up.
insert into event_slice (slice_id, snapshot, txids, closed_at, events)
values (0, pg_current_snapshot(), '{}', now(), 0);

-- The slicers' turn: one row, locked by the replica closing a slice.
create table event_slicer (
    singleton boolean primary key default true,
    constraint event_slicer_singleton check (singleton)
);
insert into event_slicer default values;

-- How far each relay has published, as a cursor: every event of the slices
-- before `slice_id`, and those of `slice_id` up to `event_id`. The replica
-- relaying holds the row locked; pruning keeps what a relay has not passed.
create table event_relay (
    relay text primary key,
    slice_id bigint not null,
    event_id bigint not null,
    published_events bigint not null default 0,
    updated_at timestamptz not null
);

-- The expiry notices sent for a coupon (each at most once): the lazy read
-- model never writes a coupon when it expires, so the notice job marks them.
alter table coupon add column expiring_notice_at timestamptz;
alter table coupon add column expired_notice_at timestamptz;

