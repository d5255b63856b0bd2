-- Back to the insert trigger. Actuals committed since the last ingest are queued first, so none
-- is lost (a refit still running meanwhile may queue some of them as well: ON CONFLICT skips
-- them).
INSERT INTO refit_unconsumable_actuals (actual_id, user_id, reason, detail)
SELECT a.id, r.user_id, 'user_id_too_long',
       'the user id is ' || octet_length(r.user_id) || ' bytes; refit takes at most 1000'
  FROM refit_ingest_cursor c
  JOIN actual_rentals a ON a.refit_xid >= pg_snapshot_xmin(c.snapshot)
                       AND NOT pg_visible_in_snapshot(a.refit_xid, c.snapshot)
  JOIN prediction_requests r ON r.request_id = a.request_id
 WHERE octet_length(r.user_id) > 1000;
INSERT INTO refit_pending (actual_id, user_id)
SELECT a.id, r.user_id
  FROM refit_ingest_cursor c
  JOIN actual_rentals a ON a.refit_xid >= pg_snapshot_xmin(c.snapshot)
                       AND NOT pg_visible_in_snapshot(a.refit_xid, c.snapshot)
  JOIN prediction_requests r ON r.request_id = a.request_id
 WHERE octet_length(r.user_id) <= 1000
ON CONFLICT DO NOTHING;

DROP TABLE refit_ingest_cursor;
DROP INDEX IF EXISTS actual_rentals_refit_xid;
ALTER TABLE actual_rentals DROP COLUMN IF EXISTS refit_xid;

CREATE FUNCTION refit_enqueue_actuals() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    arrived record;
BEGIN
    INSERT INTO refit_unconsumable_actuals (actual_id, user_id, reason, detail)
    SELECT n.id, r.user_id, 'user_id_too_long',
           'the user id is ' || octet_length(r.user_id) || ' bytes; refit takes at most 1000'
      FROM inserted n
      JOIN prediction_requests r ON r.request_id = n.request_id
     WHERE octet_length(r.user_id) > 1000;
    FOR arrived IN
        WITH queued AS (
            INSERT INTO refit_pending (actual_id, user_id)
            SELECT n.id, r.user_id
              FROM inserted n
              JOIN prediction_requests r ON r.request_id = n.request_id
             WHERE octet_length(r.user_id) <= 1000
            RETURNING actual_id, user_id
        )
        SELECT user_id, count(*) AS n, min(actual_id) AS first
          FROM queued
         GROUP BY user_id
         ORDER BY min(actual_id)
    LOOP
        PERFORM pg_notify('refit_actuals',
            arrived.n || ':' || arrived.first || ':' || arrived.user_id);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER refit_enqueue_actual
    AFTER INSERT ON actual_rentals
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION refit_enqueue_actuals();
