-- What only the previous release's event log used: the writing transaction
-- of each event, and each slice's snapshot and transactions.
--
-- A replica of the previous release still running (a rolling deploy) keeps
-- serving calls and writing their events, which the new slicer stamps; its
-- own slicer, pruner, relay and watches fail from here on (logged, retried)
-- until it is replaced. So the NATS relay and the watches run on the new
-- release only, and nothing is read through two mechanisms at once
-- (docs/decisions.md, "Events").
drop index event_txid;
alter table event drop column txid;
alter table event_slice drop column snapshot, drop column txids;
