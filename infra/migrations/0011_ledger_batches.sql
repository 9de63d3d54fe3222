-- The account stage's ledger, one row per commit instead of one per `accounts` line
-- (docs/ARCHITECTURE.md, "Accounts and balances"). Same content, same order, same positions.
--
-- Why: measured with pg_stat_statements over a default load run (1.6M/min offered, stage on,
-- 2026-12-04), `INSERT INTO ledger_lines` was the stage's largest statement in PostgreSQL:
-- 19.3 s of execution for 1.4M rows and 505 MB of WAL, against 67.9 s for the engine's whole
-- commit. Each line still paid for a heap tuple and a primary-key entry. A shard commits about
-- every 100 ms under load, a thousand lines at a time; stored as one value, compressed with
-- lz4, the same lines took 2.3 times less time to insert and 5 times less WAL
-- (BENCHMARKS.md, "The ledger as one row per commit").
--
-- `lines`: a JSON array of the commit's lines in position order, each `[position, changes]`,
-- `changes` being exactly what `ledger_lines.changes` held (0008_ledger_lines.sql documents
-- it), e.g. [[65536,[[7,"EUR","reserve",{"type":"reserve","order_id":42},"-1500","1500","8500","1500"]]]]
-- `first_offset` and `last_offset` are the first and last of those positions; a shard's
-- commits never overlap (each is fenced on the previous position), so rows ordered by
-- `first_offset` give the lines in position order.
--
-- A commit that changed no balance has no row. Readers use the views below, which give the old
-- rows back: `ledger_lines` one per line, `ledger` one per change.
CREATE TABLE ledger_batches (
    shard        integer NOT NULL,
    first_offset bigint  NOT NULL,
    last_offset  bigint  NOT NULL,
    lines        json    NOT NULL,
    PRIMARY KEY (shard, first_offset),
    CHECK (first_offset <= last_offset)
);

-- lz4 compresses a commit's lines several times faster than PostgreSQL's default (pglz) for
-- about the same size; the shard's snapshot is the other large value the stage writes. A server
-- built without lz4 (it is in Debian's, RDS's and Aurora's builds from PostgreSQL 14) keeps pglz.
DO $$
BEGIN
    ALTER TABLE ledger_batches ALTER COLUMN lines SET COMPRESSION lz4;
    ALTER TABLE account_snapshots ALTER COLUMN state SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available on this server; the ledger and snapshots use pglz';
END
$$;

-- Rows written before: one batch per line.
INSERT INTO ledger_batches (shard, first_offset, last_offset, lines)
SELECT shard, accounts_offset, accounts_offset, json_build_array(json_build_array(accounts_offset, changes))
FROM ledger_lines;

DROP VIEW ledger;
DROP TABLE ledger_lines;

-- One row per line, as the table of 0008 had them (read-only).
CREATE VIEW ledger_lines AS
SELECT b.shard,
       (l.line ->> 0)::bigint AS accounts_offset,
       l.line -> 1            AS changes
FROM ledger_batches AS b
CROSS JOIN LATERAL json_array_elements(b.lines) AS l(line);

-- One row per change, as the table of 0006 had them (read-only), unchanged from 0008.
CREATE VIEW ledger AS
SELECT l.shard,
       l.accounts_offset,
       (c.n - 1)::integer                     AS idx,
       (c.change ->> 0)::bigint               AS account_id,
       c.change ->> 1                         AS asset,
       c.change ->> 2                         AS cause,
       (c.change -> 3)::jsonb                 AS detail,
       (c.change ->> 4)::numeric(39,0)        AS available_delta,
       (c.change ->> 5)::numeric(39,0)        AS reserved_delta,
       (c.change ->> 6)::numeric(39,0)        AS available,
       (c.change ->> 7)::numeric(39,0)        AS reserved
FROM ledger_lines AS l
CROSS JOIN LATERAL json_array_elements(l.changes) WITH ORDINALITY AS c(change, n);
