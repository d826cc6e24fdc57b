-- End-to-end confirmation: which readings of each (device, epoch) PostgreSQL holds,
-- as a multirange of sequence numbers. The collector adds every batch's readings
-- (stored, already stored, or refused for good into quarantine) in the batch's own
-- transaction, and publishes the result to the device, which then releases those
-- readings from its spool. Any collector instance continues where another left off.
-- Every batch updates the row of each device it touches: no index but the key, and
-- room in each page, so that updates stay HOT (no new index entries). Retention
-- scans the (small) table hourly instead of using an index on updated_at.
CREATE TABLE stored_ranges (
    device_id   text           NOT NULL CHECK (device_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    epoch       bigint         NOT NULL CHECK (epoch >= 0),
    seqs        int8multirange NOT NULL,
    updated_at  timestamptz    NOT NULL,
    PRIMARY KEY (device_id, epoch)
) WITH (fillfactor = 50);

-- At most `keep` ranges: the lowest (it carries the contiguous watermark) and the
-- highest others. Forgetting that a range was stored is safe (the device resends
-- it, the readings key absorbs the repeat); claiming one that is not would lose
-- data, so ranges are only ever dropped, never joined across a gap.
CREATE FUNCTION hb_cap_ranges(m int8multirange, keep integer) RETURNS int8multirange
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN (SELECT count(*) FROM unnest(m)) <= keep THEN m
        ELSE (SELECT range_agg(r) FROM (
                  (SELECT r FROM unnest(m) r ORDER BY lower(r) LIMIT 1)
                  UNION ALL
                  (SELECT r FROM unnest(m) r ORDER BY lower(r) DESC LIMIT keep - 1)) k)
    END
$$;

-- How late each reading reached the collector, in milliseconds after its
-- (corrected) measurement time. The collector stores a reading that arrived more
-- than --late-after-s late as backfill even if it was sent live (it waited in a
-- broker queue). Nullable without a default, so adding it rewrites nothing; rows
-- from before this migration have NULL.
ALTER TABLE readings ADD COLUMN arrival_delay_ms bigint;
