-- The dashboard (served by hb-collector): what it reads, and the role it reads as.
--
-- The dashboard reads only these `dashboard_*` views, as the role `hb_reader`,
-- which may SELECT from them and nothing else: a bug in a dashboard query cannot
-- write, and cannot read the quarantine or the outbox. Acknowledging an alert is
-- the one write, and goes through the collector's own (writer) connection.

-- What the agent last reported for the device (its retained status: buffered,
-- dropped, corrupt spool tails, unconfirmed readings), from hb.device-status.v1.
ALTER TABLE devices
    ADD COLUMN agent_status    jsonb,
    ADD COLUMN agent_status_at timestamptz;

-- Readings stored per minute (collector clock) and status, one row per Kafka
-- partition so that collectors (which own disjoint partitions) never wait on each
-- other's row locks. The fleet page's counters and its 15-minute status donut
-- read these few rows instead of scanning readings.
CREATE TABLE reading_counts (
    minute          timestamptz NOT NULL,
    kafka_partition integer     NOT NULL,
    status          text        NOT NULL CHECK (status IN ('normal', 'bradycardia', 'tachycardia', 'no_signal')),
    readings        bigint      NOT NULL,
    PRIMARY KEY (minute, kafka_partition, status)
);

-- The live log's alert transitions, newest first; a device's alert history.
CREATE INDEX alert_transitions_recorded ON alert_transitions (recorded_at DESC);
CREATE INDEX alerts_device_opened ON alerts (device_id, opened_at DESC);

CREATE VIEW dashboard_devices AS
SELECT device_id, first_seen, last_seen, last_ts, last_epoch, last_seq, last_bpm, last_status,
       clock_skew_ms, bradycardia_below_bpm, tachycardia_above_bpm, agent_status, agent_status_at
FROM devices;

CREATE VIEW dashboard_alerts AS
SELECT id, alert_key, device_id, kind, severity, retrospective, onset_at, opened_at, closed_at,
       peak_bpm, last_bpm, readings, signal_lost, acknowledged_by, acknowledged_at, updated_at
FROM alerts;

CREATE VIEW dashboard_alert_transitions AS
SELECT t.id, t.alert_id, a.device_id, a.kind, a.retrospective, t.transition, t.ordinal, t.severity,
       t.at, t.value_bpm, t.recorded_at
FROM alert_transitions t JOIN alerts a ON a.id = t.alert_id;

CREATE VIEW dashboard_readings AS
SELECT device_id, epoch, seq, ts, received_at, bpm, contact, rr_1024, status, backfill, clock_synced
FROM readings;

CREATE VIEW dashboard_reading_counts AS
SELECT minute, status, sum(readings)::bigint AS readings
FROM reading_counts GROUP BY minute, status;

-- Roles belong to the whole cluster: created once (collectors migrating other
-- databases of the cluster may race for it), granted per database.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hb_reader') THEN
        CREATE ROLE hb_reader NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- created meanwhile by another migration
END $$;
GRANT SELECT ON dashboard_devices, dashboard_alerts, dashboard_alert_transitions,
    dashboard_readings, dashboard_reading_counts TO hb_reader;
-- The collector's dashboard connections switch to it (SET ROLE hb_reader).
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'hb_reader', 'MEMBER') THEN
        EXECUTE format('GRANT hb_reader TO %I', current_user);
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END $$;
