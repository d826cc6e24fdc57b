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

-- The schema itself, and the session-local staging table of duplicate batches.
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO hb_writer, hb_reader', current_schema());
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO hb_writer', current_database());
END $$;

-- Nobody but the owner creates objects in the schema (before PostgreSQL 15,
-- everyone may create in `public`). Otherwise hb_writer could create tables, or
-- functions that the owner's functions below would call in place of built-ins.
DO $$
BEGIN
    IF pg_has_role(current_user,
                   (SELECT nspowner FROM pg_namespace WHERE nspname = current_schema()),
                   'USAGE') THEN
        EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
    END IF;
    IF has_schema_privilege('public', current_schema(), 'CREATE') THEN
        RAISE EXCEPTION 'everyone may create objects in schema %, so hb_writer could too', current_schema()
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('the schema''s owner runs once: REVOKE CREATE ON SCHEMA %I FROM PUBLIC',
                                current_schema());
    END IF;
END $$;

-- Deleting health data is the schema owner's decision: the collector's
-- --retention-days may not go below this floor, which only the owner changes
-- (UPDATE reading_retention_floor SET days = …).
CREATE TABLE reading_retention_floor (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    days     integer NOT NULL CHECK (days >= 1)
);
INSERT INTO reading_retention_floor (days) VALUES (30);
GRANT SELECT ON reading_retention_floor TO hb_writer;

-- Partitions: created and dropped only through these two functions, which run as
-- the owner. Their search_path puts pg_catalog first and their calls name it, so
-- that no object of a caller's can stand in for a built-in.
CREATE OR REPLACE FUNCTION hb_ensure_reading_partitions(stamps timestamptz[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE d date; home name;
BEGIN
    -- The schema of `readings` (current_schema() is pg_catalog here).
    SELECT n.nspname INTO home FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
    WHERE c.oid OPERATOR(pg_catalog.=) 'readings'::regclass;
    FOR d IN SELECT DISTINCT (s AT TIME ZONE 'UTC')::date FROM pg_catalog.unnest(stamps) s LOOP
        BEGIN
            EXECUTE pg_catalog.format(
                'CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.readings FOR VALUES FROM (%L) TO (%L)',
                home,
                'readings_' OPERATOR(pg_catalog.||) pg_catalog.to_char(d, 'YYYYMMDD'),
                home,
                (d::timestamp AT TIME ZONE 'UTC'),
                ((d OPERATOR(pg_catalog.+) 1)::timestamp AT TIME ZONE 'UTC'));
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL; -- another collector created it first
        END;
    END LOOP;
END $$;

-- Drops the daily partitions whose whole day lies more than `keep_days` (at
-- least the floor) before today and which received nothing since then; returns
-- how many. A device whose clock was not yet synchronised can send fresh
-- readings stamped with an old day: such a partition is kept until its newest
-- reading, by receive time, is past the cutoff too.
DROP FUNCTION hb_drop_reading_partitions_before(date);
CREATE FUNCTION hb_drop_reading_partitions_older_than(keep_days integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE p text; n integer := 0; newest timestamptz; cutoff date; floor_days integer; home name;
BEGIN
    SELECT n.nspname INTO home FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
    WHERE c.oid OPERATOR(pg_catalog.=) 'readings'::regclass;
    SELECT f.days INTO floor_days FROM reading_retention_floor f;
    IF keep_days IS NULL OR keep_days OPERATOR(pg_catalog.<) floor_days THEN
        RAISE EXCEPTION 'a retention of % days is below the floor of % days', keep_days, floor_days
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'the schema owner may lower it: UPDATE reading_retention_floor SET days = …';
    END IF;
    cutoff := (pg_catalog.now() AT TIME ZONE 'UTC')::date OPERATOR(pg_catalog.-) keep_days;
    FOR p IN
        SELECT c.relname FROM pg_catalog.pg_inherits i
        JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.inhrelid
        WHERE i.inhparent OPERATOR(pg_catalog.=) 'readings'::regclass
          AND c.relname::text OPERATOR(pg_catalog.~) '^readings_[0-9]{8}$'
          AND pg_catalog.to_date(pg_catalog.substr(c.relname::text, 10), 'YYYYMMDD')
              OPERATOR(pg_catalog.<) cutoff
    LOOP
        EXECUTE pg_catalog.format('SELECT max(received_at) FROM %I.%I', home, p)
            INTO newest;
        CONTINUE WHEN newest IS NOT NULL
            AND newest OPERATOR(pg_catalog.>=) (cutoff::timestamp AT TIME ZONE 'UTC');
        EXECUTE pg_catalog.format('DROP TABLE %I.%I', home, p);
        n := n OPERATOR(pg_catalog.+) 1;
    END LOOP;
    RETURN n;
END $$;

DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'ALTER FUNCTION hb_ensure_reading_partitions(timestamptz[]) SET search_path = pg_catalog, %I, pg_temp',
        current_schema());
    EXECUTE pg_catalog.format(
        'ALTER FUNCTION hb_drop_reading_partitions_older_than(integer) SET search_path = pg_catalog, %I, pg_temp',
        current_schema());
END $$;
REVOKE EXECUTE ON FUNCTION hb_ensure_reading_partitions(timestamptz[]),
    hb_drop_reading_partitions_older_than(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hb_ensure_reading_partitions(timestamptz[]),
    hb_drop_reading_partitions_older_than(integer) TO hb_writer;

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
