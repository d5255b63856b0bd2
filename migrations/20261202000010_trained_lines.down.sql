ALTER TABLE refit_consumed_actuals DROP COLUMN line;
