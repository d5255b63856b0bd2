-- The upstream pays (almost) nothing for refit: no trigger on actual_rentals any more.
--
-- Before, a statement-level trigger queued every inserted actual in refit_pending and NOTIFYed,
-- inside the upstream's own transaction; PostgreSQL serialises the commits of all transactions
-- that notified, and the trigger halved the upstream's single-row insert throughput
-- (`make upstream-cost`). Now each actual only records the transaction that inserted it
-- (`refit_xid`, a column default: no trigger, one small index), and refit moves committed actuals
-- into refit_pending itself (src/ingest.rs), every REFIT_INGEST_INTERVAL_MS.
--
-- Exactly once, whatever the commit order: refit_ingest_cursor keeps the snapshot of the last
-- ingest. An ingest takes, under its own statement's snapshot, every actual whose transaction that
-- cursor snapshot did not see committed, queues them, and stores its own snapshot as the cursor.
-- A transaction still running is in neither's view until it commits; its rows are taken by the
-- first ingest that sees it committed, and by no later one. (PgQ builds its batches the same way.)
--
-- Adding the column is instant (no default for existing rows, which the trigger already queued);
-- building its index reads actual_rentals once.
DROP TRIGGER IF EXISTS refit_enqueue_actual ON actual_rentals;
DROP FUNCTION IF EXISTS refit_enqueue_actuals();

ALTER TABLE actual_rentals ADD COLUMN IF NOT EXISTS refit_xid xid8;
ALTER TABLE actual_rentals ALTER COLUMN refit_xid SET DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS actual_rentals_refit_xid ON actual_rentals (refit_xid)
    WHERE refit_xid IS NOT NULL;

-- One row: the snapshot of the last ingest that queued anything.
CREATE TABLE refit_ingest_cursor (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    snapshot     pg_snapshot NOT NULL,
    advanced_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO refit_ingest_cursor (snapshot) VALUES (pg_current_snapshot());
