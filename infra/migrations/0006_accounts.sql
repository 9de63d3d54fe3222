-- The account stage (docs/ARCHITECTURE.md, "Accounts and balances"): balances per account and
-- asset, what each open order holds, every change with its cause, and where each shard resumes.
-- One account shard writes its rows in one transaction per commit together with its consumed
-- `accounts` offset, fenced on the previous one (as pair_offsets is for a pair).
--
-- Offsets here are *positions* (protocol::accounts::position): the `accounts` record's offset
-- x 2^16 + the line's index in it, since a record packs lines; position >> 16 is the offset.
--
-- Amounts are in the asset's smallest unit and can exceed 64 bits (an i128 in the service), so
-- they are numeric(39,0); the service binds and reads them as text, losing nothing.

-- Where each shard resumes: the position of the last `accounts` line whose effects are
-- committed here (-1 before any; a shard commits whole records).
CREATE TABLE account_shards (
    shard       integer     PRIMARY KEY CHECK (shard >= 0),
    last_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 10);

-- Per shard and pair, the last pair event `seq` whose settlement the shard applied: the engine
-- re-sends settlements after a restart and the shard drops those at or below it.
CREATE TABLE account_shard_pair_seqs (
    shard    integer NOT NULL,
    pair_id  integer NOT NULL,
    last_seq bigint  NOT NULL,
    PRIMARY KEY (shard, pair_id)
) WITH (fillfactor = 50);

-- One row per (account, asset, shard). An account lives in one shard; only the fee account,
-- credited by every shard that settles a fee, has a row per shard (its balance is their sum).
CREATE TABLE balances (
    account_id      bigint        NOT NULL,
    asset           text          NOT NULL,
    shard           integer       NOT NULL,
    available       numeric(39,0) NOT NULL CHECK (available >= 0),
    reserved        numeric(39,0) NOT NULL CHECK (reserved >= 0),
    -- The `accounts` offset of the shard's line that last changed it: a client's query answer
    -- names it, so pushes at or below it are already counted.
    accounts_offset bigint        NOT NULL,
    PRIMARY KEY (account_id, asset, shard)
) WITH (fillfactor = 80);

CREATE INDEX balances_by_shard_idx ON balances (shard);

-- What each open order holds (a shard restores its ledger from these and the balances).
CREATE TABLE reservations (
    order_id        bigint        PRIMARY KEY,
    shard           integer       NOT NULL,
    account_id      bigint        NOT NULL,
    pair_id         integer       NOT NULL,
    side            text          NOT NULL CHECK (side IN ('buy', 'sell')),
    asset           text          NOT NULL,
    -- NULL for a market order.
    limit_price     bigint        NULL,
    qty             bigint        NOT NULL,
    filled_qty      bigint        NOT NULL,
    reserved        numeric(39,0) NOT NULL CHECK (reserved >= 0),
    client_order_id text          NULL,
    -- While an amend is on its way to the book: the terms before it (it may be refused).
    amend_from_price bigint       NULL,
    amend_from_qty   bigint       NULL
);

CREATE INDEX reservations_by_shard_idx ON reservations (shard);

-- Every change of every balance, with its cause: the audit trail. (shard, accounts_offset,
-- idx) is the position in the shard's log; a replay writes the same rows.
CREATE TABLE ledger (
    shard           integer       NOT NULL,
    accounts_offset bigint        NOT NULL,
    idx             integer       NOT NULL,
    account_id      bigint        NOT NULL,
    asset           text          NOT NULL,
    -- deposit, withdrawal, reserve, amend, fill, fee, release
    cause           text          NOT NULL,
    -- The cause's references (transfer_id, order_id, pair_id, trade_id, liquidity, reason).
    detail          jsonb         NOT NULL,
    available_delta numeric(39,0) NOT NULL,
    reserved_delta  numeric(39,0) NOT NULL,
    available       numeric(39,0) NOT NULL,
    reserved        numeric(39,0) NOT NULL,
    PRIMARY KEY (shard, accounts_offset, idx)
);

CREATE INDEX ledger_by_account_idx ON ledger (account_id, shard, accounts_offset);

-- Every deposit and withdrawal an operator entered, applied or refused, once per transfer_id.
CREATE TABLE transfers (
    transfer_id     bigint        PRIMARY KEY,
    account_id      bigint        NOT NULL,
    asset           text          NOT NULL,
    direction       text          NOT NULL CHECK (direction IN ('deposit', 'withdrawal')),
    amount          numeric(39,0) NOT NULL,
    shard           integer       NOT NULL,
    accounts_offset bigint        NOT NULL,
    -- NULL when applied; the refusal's code otherwise.
    refused         text          NULL
);
