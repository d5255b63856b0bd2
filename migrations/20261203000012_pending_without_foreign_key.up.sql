-- refit_pending costs each ingested actual less (issue 13: what refit costs the upstream).
--
-- 1. No foreign key to actual_rentals. Its check ran for every actual the ingest queued: an index
--    probe of actual_rentals and a FOR KEY SHARE lock on the upstream's row, which writes to the
--    upstream's heap page and WAL; it was a third of the ingest statement's time. What its ON
--    DELETE CASCADE did, refit now does itself:
--    - a retrain drops its user's pending rows whose actual is gone, or now belongs to another
--      user's request, before it reads its batch (src/store/actuals.rs, READ_PENDING);
--    - consuming removes a pending row only while it is the retrained user's.
-- 2. One index instead of two: the primary key is (user_id, actual_id), what every reader and
--    every delete looks rows up by (the retrain, the scheduler, erasure). An actual id deleted
--    and inserted again upstream for another user's request is pending for that user too; its
--    first owner's retrain drops its own row (1.); one inserted again for the same user while
--    still pending stays pending once (the ingest's ON CONFLICT DO NOTHING).
ALTER TABLE refit_pending DROP CONSTRAINT IF EXISTS refit_pending_actual_id_fkey;
ALTER TABLE refit_pending DROP CONSTRAINT refit_pending_pkey;
DROP INDEX refit_pending_user;
ALTER TABLE refit_pending ADD PRIMARY KEY (user_id, actual_id);
