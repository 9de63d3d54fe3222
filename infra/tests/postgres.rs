//! Against the real PostgreSQL (`scripts/stack up`): the migrations apply and the schema takes
//! and returns rows through sqlx.

use sqlx::Row;

mod common;

#[tokio::test]
async fn migrations_apply_and_rows_round_trip() {
    let Some(url) = common::service_env(infra::DATABASE_URL_ENV) else {
        return;
    };
    let pool = infra::db::connect(&url, 2).await.expect("connect");
    infra::db::ping(&pool).await.expect("ping");
    // Idempotent: a second run applies nothing and fails on nothing.
    infra::db::migrate(&pool).await.expect("migrate");

    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    let embedded: Vec<i64> = infra::db::MIGRATOR.iter().map(|m| m.version).collect();
    assert_eq!(applied, embedded);

    // Everything below happens in a transaction that is rolled back: the shared database keeps
    // no test rows.
    let mut tx = pool.begin().await.unwrap();
    let name = format!("infra-test-{}", std::process::id());
    let account_id: i64 =
        sqlx::query_scalar("INSERT INTO accounts (name) VALUES ($1) RETURNING id")
            .bind(&name)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    sqlx::query("INSERT INTO api_keys (key_id, account_id, secret) VALUES ($1, $2, $3)")
        .bind(format!("key-{name}"))
        .bind(account_id)
        .bind("c2VjcmV0")
        .execute(&mut *tx)
        .await
        .unwrap();
    let row = sqlx::query(
        "SELECT a.name, k.secret, k.disabled_at IS NULL AS active \
         FROM accounts a JOIN api_keys k ON k.account_id = a.id WHERE a.id = $1",
    )
    .bind(account_id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("name"), name);
    assert_eq!(row.get::<String, _>("secret"), "c2VjcmV0");
    assert!(row.get::<bool, _>("active"));

    let duplicate = sqlx::query("INSERT INTO accounts (name) VALUES ($1)")
        .bind(&name)
        .execute(&mut *tx)
        .await;
    assert!(duplicate.is_err(), "account names are unique");
    tx.rollback().await.unwrap();

    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts WHERE name = $1")
        .bind(&name)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    pool.close().await;
}

#[tokio::test]
async fn a_wrong_password_is_a_connect_error_without_the_password() {
    let Some(url) = common::service_env(infra::DATABASE_URL_ENV) else {
        return;
    };
    let Some((before_at, after_at)) = url.split_once('@') else {
        return;
    };
    let Some((user_part, _)) = before_at.rsplit_once(':') else {
        return;
    };
    let wrong = format!("{user_part}:not-the-password-42@{after_at}");
    let err = infra::db::connect(&wrong, 1).await.expect_err("must fail");
    let text = err.to_string();
    assert!(matches!(err, infra::db::DbError::Connect { .. }), "{text}");
    assert!(!text.contains("not-the-password-42"), "{text}");
}
