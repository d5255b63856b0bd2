-- Back to queueing every user id (a longer one notified with an empty payload), a btree index on
-- the set-aside table (records of ids too long for it are deleted first), no dead letters (a
-- dead-lettered entry stays done).
ALTER TABLE refit_outbox DROP COLUMN IF EXISTS dead_letter;

DELETE FROM refit_unconsumable_actuals WHERE octet_length(user_id) > 1000;
DROP INDEX IF EXISTS refit_unconsumable_user;
CREATE INDEX refit_unconsumable_user ON refit_unconsumable_actuals (user_id, actual_id);

CREATE OR REPLACE FUNCTION refit_enqueue_actuals() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    arrived record;
BEGIN
    FOR arrived IN
        WITH queued AS (
            INSERT INTO refit_pending (actual_id, user_id)
            SELECT n.id, r.user_id
              FROM inserted n
              JOIN prediction_requests r ON r.request_id = n.request_id
            RETURNING actual_id, user_id
        )
        SELECT user_id, count(*) AS n, min(actual_id) AS first
          FROM queued
         GROUP BY user_id
         ORDER BY min(actual_id)
    LOOP
        PERFORM pg_notify('refit_actuals',
            CASE WHEN octet_length(arrived.user_id) <= 1000
                 THEN arrived.n || ':' || arrived.first || ':' || arrived.user_id
                 ELSE '' END);
    END LOOP;
    RETURN NULL;
END
$$;
