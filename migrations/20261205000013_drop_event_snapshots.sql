-- What only the previous release's event log used: the writing transaction
-- of each event, and each slice's snapshot and transactions.
--
-- A replica of the previous release still running (a rolling deploy) keeps
-- serving calls and writing their events, which the new slicer stamps; its
-- own slicer, pruner, relay and watches fail from here on (logged, retried)
-- until it is replaced. So the NATS relay and the watches run on the new
-- release only, and nothing is read through two mechanisms at once
-- (docs/decisions.md, "Events").
--
-- Each statement on its own (`execute`): Citus passes a dropped column's
-- command on to the workers as the whole query string, which they refuse
-- when it holds several commands.
do $$
begin
    execute 'drop index event_txid';
    execute 'alter table event drop column txid';
    execute 'alter table event_slice drop column snapshot, drop column txids';
end
$$;
