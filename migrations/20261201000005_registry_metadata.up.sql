-- Registry metadata: what people say about models, named pointers to versions, and a record of
-- every registry write.
--
-- 1. A description and key/value tags (a JSON object of strings) on each version and on a user's
--    model as a whole, set by people. Keys starting with `refit.` are reserved for the tags refit
--    derives itself (source, policy step, rejection reason), which are not stored here.
-- 2. Aliases: per user, a name (champion, candidate, last-good, ...) pointing at a version. The
--    active version stays in refit_models; an alias never changes what serving reads. A version an
--    alias points at cannot be deleted (prune skips it; erasure removes the alias first).
-- 3. The audit trail: one row per registry write (update, alias, promote, rollback, prune, import,
--    delete) with the interface, the time, what was written and its old and new values. Rows
--    older than REFIT_AUDIT_RETENTION_DAYS are purged. Erasing a user removes the user's rows and
--    leaves one row without the user id: `user_hash` (SHA-256 of the id) records that an erasure
--    happened.
ALTER TABLE refit_models
    ADD COLUMN description text,
    ADD COLUMN tags jsonb NOT NULL DEFAULT '{}';
ALTER TABLE refit_model_versions
    ADD COLUMN description text,
    ADD COLUMN tags jsonb NOT NULL DEFAULT '{}';

CREATE TABLE refit_aliases (
    user_id     text NOT NULL,
    alias       text NOT NULL CHECK (alias ~ '^[a-z][a-z0-9_-]{0,62}$' AND alias <> 'active'),
    version     integer NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, alias),
    FOREIGN KEY (user_id, version) REFERENCES refit_model_versions (user_id, version)
);
CREATE INDEX refit_aliases_version ON refit_aliases (user_id, version);

CREATE TABLE refit_audit (
    id          bigserial PRIMARY KEY,
    user_id     text,                        -- NULL only on an erasure's record
    user_hash   text,                        -- SHA-256 (hex) of an erased user's id
    interface   text NOT NULL CHECK (interface IN ('cli', 'http')),
    action      text NOT NULL,
    target      jsonb NOT NULL DEFAULT '{}', -- which version or alias
    old_value   jsonb,
    new_value   jsonb,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refit_audit_user ON refit_audit (user_id, id);
CREATE INDEX refit_audit_user_hash ON refit_audit (user_hash) WHERE user_hash IS NOT NULL;
CREATE INDEX refit_audit_at ON refit_audit (at);
