-- Retention (src/retention.rs): the sweeper deletes delivered outbox entries past their retention
-- by this index instead of scanning the table; undone entries are not in it.
CREATE INDEX refit_outbox_done ON refit_outbox (done_at) WHERE done_at IS NOT NULL;
