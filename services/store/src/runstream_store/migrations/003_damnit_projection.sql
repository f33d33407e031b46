-- runstream store schema, version 3: change sequences for the DAMNIT projection.
--
-- Every change of a run's row or of its current values takes a fresh number from
-- runstream_change_seq into runs.changed_seq (in the same transaction as the change);
-- every change of a proposal's variables, tags or settings does the same into
-- proposals.meta_seq (triggers below). The store's projection into DAMNIT's runs.sqlite
-- records, in the same SQLite transaction as the data, the numbers it has written, so
-- after any crash it knows exactly which runs (and whether the variables) are behind.

CREATE SEQUENCE runstream_change_seq;

ALTER TABLE runs ADD COLUMN changed_seq bigint NOT NULL DEFAULT nextval('runstream_change_seq');
UPDATE runs SET changed_seq = nextval('runstream_change_seq');
CREATE INDEX runs_changed ON runs (proposal, changed_seq);

ALTER TABLE proposals ADD COLUMN meta_seq bigint NOT NULL DEFAULT nextval('runstream_change_seq');

CREATE FUNCTION runstream_bump_meta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        UPDATE proposals SET meta_seq = nextval('runstream_change_seq')
        WHERE proposal = OLD.proposal;
        RETURN OLD;
    END IF;
    UPDATE proposals SET meta_seq = nextval('runstream_change_seq') WHERE proposal = NEW.proposal;
    RETURN NEW;
END
$$;

CREATE TRIGGER variables_meta AFTER INSERT OR UPDATE OR DELETE ON variables
    FOR EACH ROW EXECUTE FUNCTION runstream_bump_meta();
CREATE TRIGGER variable_tags_meta AFTER INSERT OR UPDATE OR DELETE ON variable_tags
    FOR EACH ROW EXECUTE FUNCTION runstream_bump_meta();
CREATE TRIGGER proposal_settings_meta AFTER INSERT OR UPDATE OR DELETE ON proposal_settings
    FOR EACH ROW EXECUTE FUNCTION runstream_bump_meta();

-- One DAMNIT database per proposal: its stable id (the Kafka topic
-- <prefix>.damnit.db-<db_id>), where it is and how the last attempt to write it went.
CREATE TABLE damnit_projections (
    proposal       integer PRIMARY KEY REFERENCES proposals ON DELETE CASCADE,
    db_id          text NOT NULL CHECK (db_id ~ '^[0-9A-Za-z._-]{1,200}$'),
    path           text NOT NULL,
    last_error     text,
    last_error_at  timestamptz,
    synced_at      timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
