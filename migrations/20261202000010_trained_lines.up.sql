-- Each trained actual keeps the row it was trained on, so the window a retrain scores and
-- rebuilds on (up to REFIT_REFIT_WINDOW rows) is one index range scan of this table, with no
-- join to the upstream tables and no JSON to parse. `line` holds, little-endian: a fingerprint
-- of the model's feature order (u64), the label (f32) and the feature values in that order
-- (f32, NaN for missing). NULL for set-aside actuals and for actuals consumed before this
-- migration; refit then reads the window from the upstream tables as before.
ALTER TABLE refit_consumed_actuals ADD COLUMN line bytea;
