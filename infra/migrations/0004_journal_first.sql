-- Events are now published before their batch commits, and a batch commits only after Kafka
-- acknowledged its events: the `orders` log and the deterministic engine reproduce any event past
-- `pair_offsets.last_offset`, so the transactional outbox and its publish mark go.
--
-- An engine stopped by SIGTERM leaves every outbox row acknowledged. Rows past the publish mark
-- mean an engine was killed and never restarted on the old version: refuse, rather than drop
-- events Kafka may lack (start the previous engine once, let it republish and drain, then
-- migrate).
DO $$
BEGIN
  IF EXISTS (
    SELECT 1 FROM event_log e JOIN pair_offsets p USING (pair_id)
    WHERE e.last_offset > p.published_offset
  ) THEN
    RAISE EXCEPTION 'event_log holds events Kafka may not have: run the previous engine until it drains, then migrate';
  END IF;
END
$$;

DROP TABLE event_log;
ALTER TABLE pair_offsets DROP COLUMN published_offset;

-- Offset in the pair's `events` partition of the last record of the committed batches (Kafka
-- acknowledged it before the commit); -1 until the first commit under this schema. A reader that
-- took its book from PostgreSQL continues the stream right after it, whatever the clocks say.
ALTER TABLE pair_offsets ADD COLUMN events_offset bigint NOT NULL DEFAULT -1;
