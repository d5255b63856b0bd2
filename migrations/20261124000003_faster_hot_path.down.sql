-- Back to the per-row trigger of the first migration, and pglz for new artifacts.
ALTER TABLE refit_model_versions ALTER COLUMN artifact SET COMPRESSION pglz;
DROP TRIGGER IF EXISTS refit_enqueue_actual ON actual_rentals;
DROP FUNCTION IF EXISTS refit_enqueue_actuals();

CREATE FUNCTION refit_enqueue_actual() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    uid text;
BEGIN
    SELECT user_id INTO uid FROM prediction_requests WHERE request_id = NEW.request_id;
    INSERT INTO refit_pending (actual_id, user_id) VALUES (NEW.id, uid);
    PERFORM pg_notify('refit_actuals', CASE WHEN octet_length(uid) <= 1000 THEN uid ELSE '' END);
    RETURN NULL;
END
$$;

CREATE TRIGGER refit_enqueue_actual
    AFTER INSERT ON actual_rentals
    FOR EACH ROW EXECUTE FUNCTION refit_enqueue_actual();
