//! One running gateway per `GW_GATEWAY_ID`.
//!
//! The id is the top of every command id this gateway hands out (`ids`), and a place command's
//! id is its order's id: two gateways running with one id on the same topics and database hand
//! out the same order ids within minutes, and the second order with an id overwrites the first
//! in PostgreSQL (`orders` is keyed by order id alone), whichever pair it belongs to. So a
//! gateway claims its id before it serves, with a PostgreSQL session advisory lock keyed by the
//! schema and the id, held on a connection of its own for as long as it runs:
//! - at start, a live claim by another gateway makes it wait up to `GW_ID_CLAIM_WAIT_MS` (15 s;
//!   a killed predecessor's session ends as soon as PostgreSQL sees its socket closed), then
//!   refuse to start with [`GatewayError::IdInUse`];
//! - the claim's connection asks the server for TCP keepalives of ~25 s, so a gateway whose host
//!   vanished does not hold its id for the kernel's default two hours;
//! - if the connection drops (PostgreSQL restarted, a network cut), the gateway serves on and
//!   claims again as soon as it can; should another gateway have taken the id meanwhile, this
//!   one stops (an orderly drain), since it can no longer tell its ids apart from the other's.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio_util::sync::CancellationToken;

use crate::GatewayError;

/// How often the claim's connection is checked (and, once lost, claimed again).
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// The lock's first key: the schema's hash (`orders` lives there); the second is the id.
const TRY_LOCK: &str =
    "SELECT pg_try_advisory_lock(hashtext('gateway_id:' || current_schema()), $1)";

/// A claimed gateway id, held until dropped.
pub struct Claim {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        // The connection closes with the task, and the lock with the session.
        self.task.abort();
    }
}

/// Claims `gateway_id` in `database_url`'s schema (waiting up to `wait` for another holder),
/// then keeps it in a task; `lost` is cancelled if another gateway takes the id after a
/// dropped connection.
pub async fn claim(
    database_url: &str,
    gateway_id: u8,
    wait: Duration,
    lost: CancellationToken,
) -> Result<Claim, GatewayError> {
    let options = PgConnectOptions::from_str(database_url)
        .map_err(|e| GatewayError::Claim(format!("database URL: {e}")))?
        .application_name(&format!("gateway {gateway_id} id claim"))
        .options([
            ("tcp_keepalives_idle", "10"),
            ("tcp_keepalives_interval", "5"),
            ("tcp_keepalives_count", "3"),
        ])
        .disable_statement_logging();
    let started = tokio::time::Instant::now();
    let conn = loop {
        match try_claim(&options, gateway_id).await {
            Ok(Some(conn)) => break conn,
            Ok(None) if started.elapsed() < wait => {}
            Ok(None) => return Err(GatewayError::IdInUse(gateway_id)),
            Err(e) if started.elapsed() < wait => {
                tracing::debug!(error = %e, gateway_id, "cannot claim the gateway id yet");
            }
            Err(e) => return Err(GatewayError::Claim(e.to_string())),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    tracing::info!(gateway_id, "gateway id claimed");
    let task = tokio::spawn(hold(options, gateway_id, conn, lost));
    Ok(Claim { task })
}

/// Connects and tries the lock once: the connection holding it, or `None` if another has it.
async fn try_claim(
    options: &PgConnectOptions,
    gateway_id: u8,
) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = options.connect().await?;
    let got: bool = sqlx::query_scalar(TRY_LOCK)
        .bind(i32::from(gateway_id))
        .fetch_one(&mut conn)
        .await?;
    if got {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

async fn hold(
    options: PgConnectOptions,
    gateway_id: u8,
    mut conn: PgConnection,
    lost: CancellationToken,
) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if conn.ping().await.is_ok() {
            continue;
        }
        tracing::warn!(
            gateway_id,
            "the connection holding the gateway id's claim dropped; claiming it again"
        );
        conn = loop {
            match try_claim(&options, gateway_id).await {
                Ok(Some(conn)) => break conn,
                Ok(None) => {
                    tracing::error!(
                        gateway_id,
                        "another gateway claimed this gateway id while the claim's connection \
                         was down: stopping, so that no two gateways hand out the same order ids"
                    );
                    lost.cancel();
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, gateway_id, "cannot claim the gateway id yet");
                    tokio::time::sleep(CHECK_EVERY).await;
                }
            }
        };
        tracing::info!(gateway_id, "gateway id claimed again");
    }
}
