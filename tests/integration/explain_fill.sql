-- Fills a migrated database at scale for the EXPLAIN check (explain.rs). The scale is the custom
-- setting refit.explain_rows: that many consumed actuals (and upstream actuals and requests).
-- rows / 500 users have a registry row, 100 versions (the newest 5 with an artifact) and 50
-- pending actuals; the first rows / 4,000 of them also 4,000 consumed actuals each (what the
-- default policy window keeps), trained by their versions 21..100. The outbox, the audit trail
-- and the set-aside table hold rows / 5, rows / 5 and rows / 100 rows. Triggers (foreign keys)
-- are off while filling: the rows are consistent by construction.
SET session_replication_role = replica;
SET maintenance_work_mem = '256MB';

CREATE TEMP TABLE scale AS
SELECT current_setting('refit.explain_rows')::bigint AS rows,
       current_setting('refit.explain_rows')::bigint / 500 AS users,
       current_setting('refit.explain_rows')::bigint / 10 AS pending;

CREATE FUNCTION pg_temp.user_name(u bigint) RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT 'user-' || lpad(u::text, 6, '0') $$;

-- Upstream: consumed actuals 1..rows (user (i - 1) / 4000), pending ones after them (50 a user).
INSERT INTO prediction_requests (request_id, user_id, features, created_at)
SELECT md5(i::text)::uuid,
       pg_temp.user_name(CASE WHEN i <= s.rows THEN (i - 1) / 4000 ELSE (i - s.rows - 1) / 50 END),
       jsonb_build_object('hour', i % 24, 'temperature', (i % 40) - 5, 'humidity', 20 + i % 80,
                          'weekday', i % 7),
       now() - make_interval(secs => (s.rows + s.pending - i) * 0.01)
  FROM scale s, generate_series(1, s.rows + s.pending) AS i;
INSERT INTO actual_rentals (id, request_id, actual_value, "timestamp")
SELECT i, md5(i::text)::uuid, (i * 7 % 300)::float8,
       now() - make_interval(secs => (s.rows + s.pending - i) * 0.01)
  FROM scale s, generate_series(1, s.rows + s.pending) AS i;
SELECT setval('actual_rentals_id_seq', (SELECT rows + pending FROM scale));

INSERT INTO refit_pending (actual_id, user_id, enqueued_at)
SELECT s.rows + k, pg_temp.user_name((k - 1) / 50), now() - make_interval(secs => k * 0.001)
  FROM scale s, generate_series(1, s.pending) AS k;

-- The registry: 100 versions a user, every 7th rejected, the newest 5 with an artifact.
INSERT INTO refit_models (user_id, active_version)
SELECT pg_temp.user_name(u), 100 FROM scale s, generate_series(0, s.users - 1) AS u;
INSERT INTO refit_model_versions
    (user_id, version, status, parent_version, artifact, rows_used, trees, boosted_rounds,
     metrics, retrain_id, created_at)
SELECT pg_temp.user_name(u), v,
       CASE WHEN v % 7 = 0 AND v < 100 THEN 'rejected' ELSE 'ready' END,
       nullif(v - 1, 0),
       CASE WHEN v > 95 THEN decode(repeat(md5(u::text || v), 64), 'hex') END,
       50, 10 + v, 10 + v,
       jsonb_build_object('live', jsonb_build_object('rmse', 40 + v % 9, 'mae', 30 + v % 7),
                          'policy', jsonb_build_object('step', 'continue', 'since_rebuild', v % 4)),
       md5(u::text || ':' || v)::uuid,
       now() - make_interval(secs => (100 - v) * 60)
  FROM scale s, generate_series(0, s.users - 1) AS u, generate_series(1, 100) AS v;

-- Consumed actuals: 4,000 a user, trained by versions 21..100; every 10th held out, every 250th
-- set aside.
INSERT INTO refit_consumed_actuals (actual_id, user_id, version, outcome, reason, consumed_at)
SELECT i, pg_temp.user_name((i - 1) / 4000),
       CASE WHEN i % 250 = 0 THEN NULL ELSE 21 + ((i - 1) % 4000) / 50 END,
       CASE WHEN i % 250 = 0 THEN 'set_aside' WHEN i % 10 = 0 THEN 'held_out' ELSE 'trained' END,
       CASE WHEN i % 250 = 0 THEN 'not_a_number' END,
       now() - make_interval(secs => (s.rows - i) * 0.1)
  FROM scale s, generate_series(1, s.rows) AS i;

-- The outbox as REFIT_OUTBOX_RETENTION_SECS=3600 leaves it: delivered entries of the last hour
-- (every 1,000th dead-lettered), and two undone entries for every 100th user.
INSERT INTO refit_outbox (event_id, user_id, kind, payload, attempts, created_at, done_at, dead_letter)
SELECT md5('e' || (j / 2))::uuid, pg_temp.user_name(j % s.users),
       CASE WHEN j % 2 = 0 THEN 'invalidate' ELSE 'announce' END,
       jsonb_build_object('retrain_id', md5('r' || (j / 2)), 'model_version', j % 100 + 1),
       1, now() - make_interval(secs => 3600.0 * j / (s.rows / 5)),
       now() - make_interval(secs => 3600.0 * j / (s.rows / 5)),
       CASE WHEN j % 1000 = 1 THEN 'message too large' END
  FROM scale s, generate_series(1, s.rows / 5) AS j;
INSERT INTO refit_outbox (event_id, user_id, kind, payload, created_at)
SELECT md5('undone' || u)::uuid, pg_temp.user_name(u), k,
       jsonb_build_object('retrain_id', md5('undone' || u), 'model_version', 101),
       now() - interval '5 seconds'
  FROM scale s, generate_series(0, s.users - 1, 100) AS u,
       unnest(ARRAY['invalidate', 'announce']) AS k;

-- The audit trail over two years, and set-aside actuals.
INSERT INTO refit_audit (user_id, interface, action, target, at)
SELECT pg_temp.user_name(j % s.users), 'cli', 'update', jsonb_build_object('version', j % 100 + 1),
       now() - make_interval(secs => 730.0 * 86400 * j / (s.rows / 5))
  FROM scale s, generate_series(1, s.rows / 5) AS j;
INSERT INTO refit_unconsumable_actuals (actual_id, user_id, reason, detail)
SELECT j, pg_temp.user_name(j % s.users), 'already_consumed', 'consumed before'
  FROM scale s, generate_series(1, s.rows / 100) AS j;
INSERT INTO refit_aliases (user_id, alias, version)
SELECT pg_temp.user_name(u), 'champion', 98 FROM scale s, generate_series(0, s.users - 1, 10) AS u;

RESET session_replication_role;
ANALYZE;
