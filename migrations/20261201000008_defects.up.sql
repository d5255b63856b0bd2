-- Defects of issue 12.
--
-- 1. User ids over 1000 bytes are not queued: the trigger sets their actuals aside in
--    refit_unconsumable_actuals (reason user_id_too_long) instead of refit_pending. Before, such
--    an id was notified with an empty payload (a full scan by every replica, per insert), trained
--    and announced with the id three times in the Kafka message; an incompressible one over about
--    2.7 kB made the upstream's own insert fail on refit_pending's index. The set-aside table is
--    indexed by a hash of the user id, which takes ids of any length.
-- 2. An outbox entry that can never be delivered (an event over the broker's message size) is
--    dead-lettered: done, with dead_letter saying why, so the user's later entries follow it.
CREATE OR REPLACE FUNCTION refit_enqueue_actuals() RETURNS trigger LANGUAGE plpgsql AS $$
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

DROP INDEX IF EXISTS refit_unconsumable_user;
CREATE INDEX refit_unconsumable_user ON refit_unconsumable_actuals USING hash (user_id);

-- Actuals of such ids already queued are set aside too.
WITH moved AS (
    DELETE FROM refit_pending WHERE octet_length(user_id) > 1000
    RETURNING actual_id, user_id
)
INSERT INTO refit_unconsumable_actuals (actual_id, user_id, reason, detail)
SELECT actual_id, user_id, 'user_id_too_long',
       'the user id is ' || octet_length(user_id) || ' bytes; refit takes at most 1000'
  FROM moved;

ALTER TABLE refit_outbox ADD COLUMN dead_letter text;
