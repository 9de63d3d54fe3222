//! `gateway provision`: accounts and API keys for local use and load tests, inserted in
//! batches (one statement per batch, not per row).

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

const BATCH_ROWS_MAX: usize = 5_000;

/// One line of the provision output file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub key_id: String,
    pub secret: String,
    pub account_id: u64,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("key_id", &self.key_id)
            .field("secret", &"***")
            .field("account_id", &self.account_id)
            .finish()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0_u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Creates `count` accounts named `{prefix}-{run}-{i}`, each with one API key.
pub async fn provision(
    pool: &PgPool,
    count: usize,
    prefix: &str,
) -> Result<Vec<Credential>, sqlx::Error> {
    let run = random_hex(4);
    let mut out = Vec::with_capacity(count);
    let mut start = 0;
    while start < count {
        let end = (start + BATCH_ROWS_MAX).min(count);
        let names: Vec<String> = (start..end)
            .map(|i| format!("{prefix}-{run}-{i}"))
            .collect();
        let mut tx = pool.begin().await?;
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "INSERT INTO accounts (name) SELECT * FROM UNNEST($1::text[]) RETURNING id, name",
        )
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?;
        let by_name: std::collections::HashMap<String, i64> =
            rows.into_iter().map(|(id, name)| (name, id)).collect();
        let mut key_ids = Vec::with_capacity(names.len());
        let mut secrets = Vec::with_capacity(names.len());
        let mut account_ids = Vec::with_capacity(names.len());
        for name in &names {
            key_ids.push(format!("k{}", random_hex(12)));
            secrets.push(random_hex(32));
            account_ids.push(by_name[name]);
        }
        sqlx::query(
            "INSERT INTO api_keys (key_id, account_id, secret) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[])",
        )
        .bind(&key_ids)
        .bind(&account_ids)
        .bind(&secrets)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        for ((key_id, secret), account_id) in key_ids.into_iter().zip(secrets).zip(account_ids) {
            out.push(Credential {
                key_id,
                secret,
                account_id: account_id as u64,
            });
        }
        start = end;
    }
    Ok(out)
}
