-- Least privilege for health data. Three parties:
--
-- * The schema's owner: the login that runs `hb-collector migrate`. It owns
--   every table, view and function, and is the only one that changes them.
-- * hb_writer: what the collector's connections act as (SET ROLE hb_writer on
--   each connection). It reads and writes the rows the collector ingests and
--   may change no table: daily `readings` partitions are created and dropped
--   only through the two SECURITY DEFINER functions below, which run as the
--   owner. A deployment gives the collector a login of its own that is a member
--   of hb_writer and of nothing else.
-- * hb_reader (0005): the dashboard's reads, SELECT on the dashboard_* views.
--
-- Roles belong to the whole cluster: created once, safe when migrations race.
-- A migrating login without CREATEROLE needs them made beforehand by an
-- administrator (scripts/run.sh and docker-compose do that).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hb_writer') THEN
        CREATE ROLE hb_writer NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL; -- created meanwhile by another migration
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'cannot create the role hb_writer: %', SQLERRM
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'an administrator creates it once: CREATE ROLE hb_writer NOLOGIN';
END $$;

-- Exactly what the collector does to each table; a new table gets its own line
-- in the migration that creates it (a test checks that every table has one).
GRANT SELECT, INSERT ON readings TO hb_writer;
GRANT SELECT, INSERT, UPDATE ON devices TO hb_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON stored_ranges TO hb_writer;
GRANT SELECT, INSERT, UPDATE ON alerts TO hb_writer;
GRANT SELECT, INSERT ON alert_transitions TO hb_writer;
GRANT SELECT, INSERT, DELETE ON alert_outbox TO hb_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON reading_counts TO hb_writer;
GRANT SELECT, INSERT ON quarantine, quarantine_payloads TO hb_writer;
GRANT SELECT ON schema_migrations TO hb_writer;
GRANT USAGE ON SEQUENCE alerts_id_seq, alert_transitions_id_seq, alert_outbox_id_seq TO hb_writer;

-- Partitions: created and dropped as the owner, with a fixed search_path so
-- that a caller cannot slip its own objects in.
ALTER FUNCTION hb_ensure_reading_partitions(timestamptz[]) SECURITY DEFINER;
ALTER FUNCTION hb_drop_reading_partitions_before(date) SECURITY DEFINER;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION hb_ensure_reading_partitions(timestamptz[]) SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION hb_drop_reading_partitions_before(date) SET search_path = %I, pg_temp',
                   current_schema());
END $$;
REVOKE EXECUTE ON FUNCTION hb_ensure_reading_partitions(timestamptz[]),
    hb_drop_reading_partitions_before(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hb_ensure_reading_partitions(timestamptz[]),
    hb_drop_reading_partitions_before(date) TO hb_writer;

-- Before PostgreSQL 15 everyone may create tables in `public`: not any more.
DO $$
BEGIN
    IF pg_has_role(current_user,
                   (SELECT nspowner FROM pg_namespace WHERE nspname = current_schema()),
                   'USAGE') THEN
        EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
    END IF;
END $$;

-- The collector's login acts as hb_reader for the dashboard's reads.
DO $$
BEGIN
    IF NOT pg_has_role('hb_writer', 'hb_reader', 'MEMBER') THEN
        GRANT hb_reader TO hb_writer;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'cannot grant the role hb_reader to hb_writer: %', SQLERRM
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'an administrator grants it once: GRANT hb_reader TO hb_writer';
END $$;
-- A one-login set-up (the owner also runs the collector) acts as hb_writer too.
-- Where the owner may not grant that, it runs no collector: nothing is lost.
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'hb_writer', 'MEMBER') THEN
        EXECUTE format('GRANT hb_writer TO %I', current_user);
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation OR insufficient_privilege THEN
        NULL;
END $$;
