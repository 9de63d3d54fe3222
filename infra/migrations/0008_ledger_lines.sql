-- The account stage's ledger, one row per `accounts` line instead of one per balance change
-- (docs/ARCHITECTURE.md, "Accounts and balances"). Same content, same order, same position.
--
-- Why: measured with pg_stat_statements over a 30 s load run, the per-change INSERT INTO ledger
-- was PostgreSQL's single largest cost: 44.7 s of execution for 849,576 rows and 361 MB of WAL,
-- 34% of all statement time, more than the engine's whole commit. Each change paid for a heap
-- tuple (header, eleven columns, four numerics), a jsonb `detail` parsed and rebuilt, a
-- primary-key entry and a second index entry. A line (a place, a settlement, a transfer) makes
-- a handful of changes; now it makes one heap tuple and one primary-key entry, and its changes
-- are a `json` value, which PostgreSQL only validates and stores as text (a `jsonb` would be
-- parsed into its binary form; nothing on the write path needs that).
--
-- Cost moved elsewhere: reading a change means expanding its line (the `ledger` view below),
-- and there is no per-account index any more (nothing in the services reads the ledger by
-- account; an audit of one account scans, or builds its own index on the view's output).
--
-- `changes`: a JSON array of the line's changes in the order the ledger made them (the old
-- `idx` is the element's index, from 0). Each change is itself an array, in this fixed order:
--   0 account_id       number
--   1 asset            string, the asset's symbol
--   2 cause            string: deposit, withdrawal, reserve, amend, fill, fee, release
--   3 detail           object, the cause's references as the service serializes its `Cause`
--                      (type, transfer_id, order_id, pair_id, trade_id, liquidity, reason)
--   4 available_delta  string of an integer (amounts are in the asset's smallest unit and can
--   5 reserved_delta   string                exceed 64 bits, which a JSON number reader may
--   6 available        string                not keep exactly)
--   7 reserved         string
-- e.g. [[7,"EUR","reserve",{"type":"reserve","order_id":42},"-1500","1500","8500","1500"]]
-- The service writes it compact; the rows moved here from the old table below are written by
-- PostgreSQL's json functions (with spaces), which is the same JSON.
--
-- A line that changed no balance (a refusal, a repeat) has no row, as it had none before.
CREATE TABLE ledger_lines (
    shard           integer NOT NULL,
    -- The line's position (protocol::accounts::position), as accounts_offset was per change.
    accounts_offset bigint  NOT NULL,
    changes         json    NOT NULL,
    PRIMARY KEY (shard, accounts_offset)
);

INSERT INTO ledger_lines (shard, accounts_offset, changes)
SELECT shard, accounts_offset,
       json_agg(json_build_array(account_id, asset, cause, detail, available_delta::text,
                                 reserved_delta::text, available::text, reserved::text)
                ORDER BY idx)
FROM ledger
GROUP BY shard, accounts_offset;

DROP TABLE ledger;

-- The old table's columns, one row per change, so operators' queries and tests that read
-- `ledger` keep working (read-only; the service writes ledger_lines).
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
