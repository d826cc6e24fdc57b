-- Readings become range-partitioned by day of the device timestamp `ts`, so that
-- retention drops whole partitions instead of deleting rows. PostgreSQL requires
-- the partition key in every unique key, so the dedup key is
-- (device_id, epoch, seq, ts): a reading's `ts` is part of its payload and never
-- changes between redeliveries (the agent resends spooled readings byte for byte).
-- The collector creates the partition of every day it is about to write.
ALTER TABLE readings RENAME TO readings_v1;
ALTER INDEX readings_device_ts RENAME TO readings_v1_device_ts;
ALTER TABLE readings_v1 RENAME CONSTRAINT readings_pkey TO readings_v1_pkey;

CREATE TABLE readings (
    device_id     text        NOT NULL CHECK (device_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    epoch         bigint      NOT NULL CHECK (epoch >= 0),
    seq           bigint      NOT NULL CHECK (seq >= 0),
    ts            timestamptz NOT NULL,              -- device clock, as sent
    ts_corrected  timestamptz NOT NULL,              -- ts, or an estimate from the receive time when the device clock was not synced
    mono_ms       bigint      NOT NULL,
    clock_synced  boolean     NOT NULL,
    received_at   timestamptz NOT NULL,              -- collector clock
    bpm           integer     NOT NULL CHECK (bpm BETWEEN 0 AND 65535),
    contact       text        NOT NULL CHECK (contact IN ('not_supported', 'not_detected', 'detected')),
    rr_1024       integer[]   NOT NULL,
    rr_consistent boolean     NOT NULL,              -- RR intervals agree with the BPM (within the tolerance)
    energy_kj     integer,
    status        text        NOT NULL CHECK (status IN ('normal', 'bradycardia', 'tachycardia', 'no_signal')),
    local_flag    text        CHECK (local_flag IN ('normal', 'bradycardia', 'tachycardia', 'no_signal')),
    flag_disagrees boolean    GENERATED ALWAYS AS (local_flag IS NOT NULL AND local_flag <> status) STORED,
    backfill      boolean     NOT NULL,
    kafka_partition integer   NOT NULL,
    kafka_offset  bigint      NOT NULL,
    PRIMARY KEY (device_id, epoch, seq, ts)
) PARTITION BY RANGE (ts);

-- Per device over time, and the latest reading per device.
CREATE INDEX readings_device_ts ON readings (device_id, ts DESC);

-- Partitions for the days already holding readings, then move them.
DO $$
DECLARE d date;
BEGIN
    FOR d IN SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM readings_v1 LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
            'readings_' || to_char(d, 'YYYYMMDD'),
            (d::timestamp AT TIME ZONE 'UTC'),
            ((d + 1)::timestamp AT TIME ZONE 'UTC'));
    END LOOP;
END $$;

INSERT INTO readings (device_id, epoch, seq, ts, ts_corrected, mono_ms, clock_synced, received_at, bpm,
                      contact, rr_1024, rr_consistent, energy_kj, status, local_flag, backfill,
                      kafka_partition, kafka_offset)
SELECT device_id, epoch, seq, ts, ts, mono_ms, clock_synced, received_at, bpm,
       contact, rr_1024, true, energy_kj, status, local_flag, backfill, kafka_partition, kafka_offset
FROM readings_v1;
DROP TABLE readings_v1;

-- The device registry: first and last seen, the latest reading, clock skew, and
-- per-device alarm limits (NULL: the collector's defaults).
CREATE TABLE devices (
    device_id       text        PRIMARY KEY CHECK (device_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    first_seen      timestamptz NOT NULL,
    last_seen       timestamptz NOT NULL,
    last_ts         timestamptz NOT NULL,
    last_epoch      bigint      NOT NULL,
    last_seq        bigint      NOT NULL,
    last_bpm        integer     NOT NULL,
    last_status     text        NOT NULL,
    clock_skew_ms   bigint,                  -- receive time minus device time of the latest synced reading
    bradycardia_below_bpm integer,
    tachycardia_above_bpm integer
);

-- Quarantine entries may concern one reading of a record (epoch, seq) or the
-- whole record; a replayed batch must not add them twice.
ALTER TABLE quarantine ADD COLUMN device_id text, ADD COLUMN epoch bigint, ADD COLUMN seq bigint;
ALTER TABLE quarantine DROP CONSTRAINT quarantine_source_topic_source_partition_source_offset_reas_key;
CREATE UNIQUE INDEX quarantine_once ON quarantine
    (source_topic, source_partition, source_offset, reason, coalesce(epoch, -1), coalesce(seq, -1));
CREATE INDEX quarantine_received ON quarantine (received_at DESC);

-- Creates the daily partitions holding the given timestamps (UTC days), if
-- missing. Safe when collectors race: a concurrent creation is not an error.
CREATE FUNCTION hb_ensure_reading_partitions(stamps timestamptz[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE d date;
BEGIN
    FOR d IN SELECT DISTINCT (s AT TIME ZONE 'UTC')::date FROM unnest(stamps) s LOOP
        BEGIN
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
                'readings_' || to_char(d, 'YYYYMMDD'),
                (d::timestamp AT TIME ZONE 'UTC'),
                ((d + 1)::timestamp AT TIME ZONE 'UTC'));
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL; -- another collector created it first
        END;
    END LOOP;
END $$;

-- Drops the daily partitions whose whole day lies before `cutoff` and which
-- received nothing since then; returns how many. Retention by partition: no
-- row-by-row DELETE, no bloat. A device whose clock was not yet synchronised can
-- send fresh readings stamped with an old day: such a partition is kept until
-- its newest reading, by receive time, is past the cutoff too.
CREATE FUNCTION hb_drop_reading_partitions_before(cutoff date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE p text; n integer := 0; newest timestamptz;
BEGIN
    FOR p IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class parent ON parent.oid = i.inhparent
        WHERE parent.relname = 'readings' AND c.relname ~ '^readings_[0-9]{8}$'
          AND to_date(substr(c.relname, 10), 'YYYYMMDD') < cutoff
    LOOP
        EXECUTE format('SELECT max(received_at) FROM %I', p) INTO newest;
        CONTINUE WHEN newest IS NOT NULL AND newest >= (cutoff::timestamp AT TIME ZONE 'UTC');
        EXECUTE format('DROP TABLE %I', p);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
