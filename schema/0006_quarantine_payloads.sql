-- A quarantined record's payload is stored once, however many of its readings are
-- refused. Before, every refused reading copied the whole payload: one JSON
-- envelope of 256 readings and 256 KiB, all out of range, wrote 64 MiB.
CREATE TABLE quarantine_payloads (
    source_topic     text    NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint  NOT NULL,
    payload          bytea   NOT NULL,
    PRIMARY KEY (source_topic, source_partition, source_offset)
);

INSERT INTO quarantine_payloads (source_topic, source_partition, source_offset, payload)
SELECT DISTINCT ON (source_topic, source_partition, source_offset)
       source_topic, source_partition, source_offset, payload
FROM quarantine
ORDER BY source_topic, source_partition, source_offset, id;

ALTER TABLE quarantine DROP COLUMN payload;

-- Quarantine entries with their record's payload, for people reading the
-- quarantine (`SELECT … FROM quarantine_entries WHERE reason = …`).
CREATE VIEW quarantine_entries AS
SELECT q.id, q.source_topic, q.source_partition, q.source_offset, q.reason, q.detail,
       q.device_id, q.epoch, q.seq, q.received_at, p.payload
FROM quarantine q
LEFT JOIN quarantine_payloads p USING (source_topic, source_partition, source_offset);
