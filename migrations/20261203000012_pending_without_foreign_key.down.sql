-- Back to the foreign key: pending rows whose actual is gone go first (the cascade would have
-- deleted them).
DELETE FROM refit_pending p
 WHERE NOT EXISTS (SELECT FROM actual_rentals a WHERE a.id = p.actual_id);
ALTER TABLE refit_pending
    ADD CONSTRAINT refit_pending_actual_id_fkey
    FOREIGN KEY (actual_id) REFERENCES actual_rentals (id) ON DELETE CASCADE;
