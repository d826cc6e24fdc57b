-- Readings, one row per (device_id, epoch, seq): the identity a reading keeps from
-- the device to this table. The primary key is the dedup key: the collector inserts
-- with ON CONFLICT DO NOTHING, so a redelivered Kafka record never becomes a second
-- row.
CREATE TABLE readings (
    device_id     text        NOT NULL CHECK (device_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    epoch         bigint      NOT NULL CHECK (epoch >= 0),
    seq           bigint      NOT NULL CHECK (seq >= 0),
    ts            timestamptz NOT NULL,              -- device clock, as sent
    mono_ms       bigint      NOT NULL,
    clock_synced  boolean     NOT NULL,
    received_at   timestamptz NOT NULL,              -- collector clock
    bpm           integer     NOT NULL CHECK (bpm BETWEEN 0 AND 65535),
    contact       text        NOT NULL CHECK (contact IN ('not_supported', 'not_detected', 'detected')),
    rr_1024       integer[]   NOT NULL,
    energy_kj     integer,
    status        text        NOT NULL CHECK (status IN ('normal', 'bradycardia', 'tachycardia', 'no_signal')),
    local_flag    text        CHECK (local_flag IN ('normal', 'bradycardia', 'tachycardia', 'no_signal')),
    backfill      boolean     NOT NULL,
    kafka_partition integer   NOT NULL,
    kafka_offset  bigint      NOT NULL,
    PRIMARY KEY (device_id, epoch, seq)
);

CREATE INDEX readings_device_ts ON readings (device_id, ts DESC);

-- Anything the collector could not accept, with where it came from and why.
CREATE TABLE quarantine (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_topic  text        NOT NULL,
    source_partition integer  NOT NULL,
    source_offset bigint      NOT NULL,
    reason        text        NOT NULL,
    detail        text        NOT NULL,
    payload       bytea       NOT NULL,
    received_at   timestamptz NOT NULL,
    UNIQUE (source_topic, source_partition, source_offset, reason)
);
