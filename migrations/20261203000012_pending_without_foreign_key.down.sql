-- Back to one row per actual id, with the foreign key: pending rows whose actual is gone, or now
-- another user's, go first (the cascade would have deleted them).
DELETE FROM refit_pending p
 WHERE NOT EXISTS (SELECT FROM actual_rentals a
                     JOIN prediction_requests r ON r.request_id = a.request_id
                    WHERE a.id = p.actual_id AND r.user_id = p.user_id);
ALTER TABLE refit_pending DROP CONSTRAINT refit_pending_pkey;
ALTER TABLE refit_pending ADD PRIMARY KEY (actual_id);
CREATE INDEX refit_pending_user ON refit_pending (user_id, actual_id);
ALTER TABLE refit_pending
    ADD CONSTRAINT refit_pending_actual_id_fkey
    FOREIGN KEY (actual_id) REFERENCES actual_rentals (id) ON DELETE CASCADE;
