DROP INDEX IF EXISTS refit_consumed_user_recent;
