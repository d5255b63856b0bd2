DO $$
BEGIN
  IF current_setting('server_version_num')::int >= 140000 THEN
    EXECUTE 'ALTER TABLE refit_model_versions ALTER COLUMN artifact SET COMPRESSION default';
  END IF;
END
$$;
