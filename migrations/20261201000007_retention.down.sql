DROP INDEX IF EXISTS refit_outbox_done;
