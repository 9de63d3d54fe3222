-- Initial schema: who may trade, and where each pair's matching actor resumes.
-- Plain PostgreSQL that Amazon Aurora PostgreSQL runs unchanged. Orders and trades come with the
-- engine's migration (0002).

-- A trading account: the owner of orders, balances-to-be and API keys.
CREATE TABLE accounts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- API keys a WebSocket client signs its login with (HMAC-SHA256 over timestamp + nonce).
-- The secret is stored here in clear so the local stack works without other services; in
-- production it belongs in a KMS / secrets manager and this column holds a reference to it.
CREATE TABLE api_keys (
    key_id      text        PRIMARY KEY,
    account_id  bigint      NOT NULL REFERENCES accounts (id),
    secret      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- NULL while the key is usable; a disabled key is kept for audit, never deleted.
    disabled_at timestamptz NULL
);

CREATE INDEX api_keys_account_id_idx ON api_keys (account_id);

-- One row per pair: how far its matching actor has durably processed the `orders` partition.
-- Written in the same transaction as the results of those records (exactly-once into the
-- database); on start the actor seeks to last_offset + 1 and resumes its sequence counters.
CREATE TABLE pair_offsets (
    pair_id       integer     PRIMARY KEY CHECK (pair_id >= 0),
    symbol        text        NOT NULL UNIQUE,
    -- Last `orders` offset whose effects are committed here; -1 before the first record.
    last_offset   bigint      NOT NULL,
    -- Last per-pair sequence number given to a published event (strictly increasing).
    last_seq      bigint      NOT NULL,
    -- Last trade id issued for the pair.
    last_trade_id bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
