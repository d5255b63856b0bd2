-- Production hardening.
--
-- Pending actuals that can never be consumed: an actual deleted upstream and re-inserted with an
-- id refit already consumed would hit the primary key of refit_consumed_actuals at every retrain
-- of its user. Such a row is moved here, with the reason, instead of blocking the user's later
-- actuals. No primary key on actual_id: the same id can come back more than once.
CREATE TABLE refit_unconsumable_actuals (
    id           bigserial PRIMARY KEY,
    actual_id    bigint NOT NULL,
    user_id      text NOT NULL,
    reason       text NOT NULL,              -- e.g. already_consumed
    detail       text,
    set_aside_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refit_unconsumable_user ON refit_unconsumable_actuals (user_id, actual_id);
