-- refit's schema. The two upstream tables (the data contract) are created only when absent:
-- in production the serving stack owns them and refit only adds what follows.

CREATE TABLE IF NOT EXISTS prediction_requests (
    request_id  uuid PRIMARY KEY,
    user_id     text NOT NULL,
    features    jsonb NOT NULL,              -- {"name": number, ...}
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS actual_rentals (
    id            bigserial PRIMARY KEY,
    request_id    uuid NOT NULL REFERENCES prediction_requests,
    actual_value  double precision NOT NULL,
    "timestamp"   timestamptz NOT NULL DEFAULT now()
);

-- One row per user with a model: the registry head. Its row lock (FOR UPDATE SKIP LOCKED) is what
-- makes a user's retrains run one at a time across every replica.
CREATE TABLE refit_models (
    user_id         text PRIMARY KEY,
    active_version  integer,                 -- the version serving should use
    failures        integer NOT NULL DEFAULT 0,  -- consecutive failed retrains
    retry_after     timestamptz,             -- back-off after a failure
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Every retrain attempt of a user, successful or not.
CREATE TABLE refit_model_versions (
    user_id         text NOT NULL REFERENCES refit_models (user_id),
    version         integer NOT NULL,
    status          text NOT NULL CHECK (status IN ('ready', 'rejected', 'failed')),
    parent_version  integer,                 -- the version this one continued from
    artifact        bytea,                   -- UBJSON model; NULL for a failed attempt
    rows_used       integer NOT NULL DEFAULT 0,
    rows_set_aside  integer NOT NULL DEFAULT 0,
    trees           integer,
    boosted_rounds  integer,
    params          jsonb NOT NULL DEFAULT '{}',
    features        jsonb NOT NULL DEFAULT '[]',
    timings_ms      jsonb NOT NULL DEFAULT '{}',
    metrics         jsonb NOT NULL DEFAULT '{}',
    error           text,                    -- why a failed attempt failed
    source          text NOT NULL DEFAULT 'retrain',
    retrain_id      uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, version)
);

ALTER TABLE refit_models
    ADD CONSTRAINT refit_models_active_fk FOREIGN KEY (user_id, active_version)
    REFERENCES refit_model_versions (user_id, version) DEFERRABLE INITIALLY DEFERRED;

-- Actuals not yet consumed, fed by a trigger in the inserting transaction: a row becomes pending
-- exactly when its actual commits, whatever the commit order. No watermark is involved.
CREATE TABLE refit_pending (
    actual_id    bigint PRIMARY KEY REFERENCES actual_rentals (id) ON DELETE CASCADE,
    user_id      text NOT NULL,
    enqueued_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX refit_pending_user ON refit_pending (user_id, actual_id);

-- Every consumed actual, once: the primary key makes "trained twice" impossible.
CREATE TABLE refit_consumed_actuals (
    actual_id    bigint PRIMARY KEY,
    user_id      text NOT NULL,
    version      integer,                    -- the version trained on it; NULL when set aside
    outcome      text NOT NULL CHECK (outcome IN ('trained', 'set_aside')),
    reason       text,                       -- why it was set aside
    detail       text,
    consumed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refit_consumed_user_version ON refit_consumed_actuals (user_id, version);
CREATE INDEX refit_consumed_set_aside ON refit_consumed_actuals (consumed_at) WHERE outcome = 'set_aside';

-- Side effects of a committed retrain, recorded in the same transaction and carried out after it.
CREATE TABLE refit_outbox (
    id               bigserial PRIMARY KEY,
    event_id         uuid NOT NULL,
    user_id          text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('invalidate', 'announce')),
    payload          jsonb NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    done_at          timestamptz
);
CREATE INDEX refit_outbox_undone ON refit_outbox (user_id, id) WHERE done_at IS NULL;

CREATE FUNCTION refit_enqueue_actual() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    uid text;
BEGIN
    SELECT user_id INTO uid FROM prediction_requests WHERE request_id = NEW.request_id;
    INSERT INTO refit_pending (actual_id, user_id) VALUES (NEW.id, uid);
    -- NOTIFY payloads are limited to 8000 bytes: a longer user id wakes a full scan instead.
    PERFORM pg_notify('refit_actuals', CASE WHEN octet_length(uid) <= 1000 THEN uid ELSE '' END);
    RETURN NULL;
END
$$;

CREATE TRIGGER refit_enqueue_actual
    AFTER INSERT ON actual_rentals
    FOR EACH ROW EXECUTE FUNCTION refit_enqueue_actual();

-- Actuals that were already there when refit was installed are pending too.
INSERT INTO refit_pending (actual_id, user_id)
SELECT a.id, p.user_id
FROM actual_rentals a JOIN prediction_requests p USING (request_id)
ON CONFLICT DO NOTHING;
