-- Alert episodes (see hb_shared::alert). The collector evaluates every reading it
-- stores, in the batch's own transaction: the device's alert state (a JSON
-- document of the state machine) lives in its `devices` row, and the transitions
-- a batch causes are written with it. A redelivered reading is not stored again,
-- so it is not evaluated again; a collector restart or a partition moving to
-- another collector resumes from the stored state.

-- The state machine's state, and per-device delays next to the thresholds that
-- 0002 already allows (NULL: the collector's flags).
ALTER TABLE devices
    ADD COLUMN alert_state          jsonb,
    -- The Kafka partition of the device's latest reading: the offline sweep of a
    -- collector looks only at devices of partitions it owns and has caught up with.
    ADD COLUMN kafka_partition      integer,
    ADD COLUMN alert_onset_delay_s  integer CHECK (alert_onset_delay_s BETWEEN 0 AND 3600),
    ADD COLUMN alert_clear_delay_s  integer CHECK (alert_clear_delay_s BETWEEN 0 AND 3600);

-- One row per episode. `alert_key` is its identity end to end:
-- `{device}/{kind}/{epoch}/{seq}`, the reading it began with, `/r` for the
-- retrospective lane (backfilled readings; never paged as live).
CREATE TABLE alerts (
    id               bigserial   PRIMARY KEY,
    alert_key        text        NOT NULL UNIQUE,
    device_id        text        NOT NULL,
    kind             text        NOT NULL
        CHECK (kind IN ('bradycardia', 'tachycardia', 'signal_loss', 'device_offline')),
    severity         text        NOT NULL CHECK (severity IN ('none', 'medium', 'high')),
    retrospective    boolean     NOT NULL,
    origin_epoch     bigint      NOT NULL,
    origin_seq       bigint      NOT NULL,
    onset_at         timestamptz NOT NULL,   -- the first reading in the condition
    opened_at        timestamptz NOT NULL,   -- when the onset delay was reached
    closed_at        timestamptz,
    peak_bpm         integer,
    last_bpm         integer,
    readings         integer     NOT NULL,
    signal_lost      boolean     NOT NULL,
    acknowledged_by  text,
    acknowledged_at  timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_open ON alerts (device_id) WHERE closed_at IS NULL;
CREATE INDEX alerts_opened_at ON alerts (opened_at DESC);

-- Every change of every alert: open, escalate, de-escalate, close.
-- `transition_key` is `{alert_key}#{ordinal}`.
CREATE TABLE alert_transitions (
    id              bigserial   PRIMARY KEY,
    transition_key  text        NOT NULL UNIQUE,
    alert_id        bigint      NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    transition      text        NOT NULL CHECK (transition IN ('open', 'escalate', 'deescalate', 'close')),
    ordinal         integer     NOT NULL,
    severity        text        NOT NULL CHECK (severity IN ('none', 'medium', 'high')),
    at              timestamptz NOT NULL,
    value_bpm       integer,
    peak_bpm        integer,
    readings        integer     NOT NULL,
    signal_lost     boolean     NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_transitions_alert ON alert_transitions (alert_id);

-- Transitions waiting to be produced to Kafka (`hb.alerts.v1`): written in the
-- same transaction as the transition, deleted once Kafka acknowledged them. A
-- crash between COMMIT and produce leaves them here for the next drain.
CREATE TABLE alert_outbox (
    id          bigserial   PRIMARY KEY,
    device_id   text        NOT NULL,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
