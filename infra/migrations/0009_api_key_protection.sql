-- API keys that a copy of the database does not give away (docs/ARCHITECTURE.md, "API keys").
--
-- `kind` says how a login with the key is checked:
--   ed25519  the client signs with its private key; the row holds only `public_key`
--            (32 raw bytes). Nothing here lets anyone sign.
--   hmac     HMAC-SHA256 with a shared secret, kept for compatibility. The gateway must know
--            the secret, so the row holds it sealed: `secret_ciphertext` (XChaCha20-Poly1305
--            ciphertext and tag, with the row's key_id as associated data), `secret_nonce` (24
--            random bytes, fresh per row) and `secret_key_id`, the id of the key-encryption
--            key that sealed it. That key comes from the environment
--            (GW_KEY_ENCRYPTION_KEY), never from here; the id lets it be rotated.
--
-- `secret`, the clear column of 0001, stays only for rows written before this migration:
-- `gateway keys encrypt-existing` seals each one and sets it to NULL. New rows never fill it.
-- (The old values stay in WAL, backups and dead tuples until those are gone; the command
-- runs VACUUM FULL on the table, the rest is the operator's: docs/DEPLOY.md.)
ALTER TABLE api_keys
    ALTER COLUMN secret DROP NOT NULL,
    ADD COLUMN kind              text  NOT NULL DEFAULT 'hmac' CHECK (kind IN ('hmac', 'ed25519')),
    ADD COLUMN public_key        bytea NULL CHECK (octet_length(public_key) = 32),
    ADD COLUMN secret_ciphertext bytea NULL,
    ADD COLUMN secret_nonce      bytea NULL CHECK (octet_length(secret_nonce) = 24),
    ADD COLUMN secret_key_id     text  NULL;

-- Each kind carries exactly its own material: an Ed25519 row no secret, an HMAC row either
-- its clear secret (before encrypt-existing) or the three sealed columns, never both.
ALTER TABLE api_keys ADD CONSTRAINT api_keys_material_check CHECK (
    (kind = 'ed25519'
        AND public_key IS NOT NULL
        AND secret IS NULL AND secret_ciphertext IS NULL
        AND secret_nonce IS NULL AND secret_key_id IS NULL)
    OR (kind = 'hmac'
        AND public_key IS NULL
        AND (secret_ciphertext IS NULL) = (secret_nonce IS NULL)
        AND (secret_ciphertext IS NULL) = (secret_key_id IS NULL)
        AND (secret IS NULL) <> (secret_ciphertext IS NULL))
);
