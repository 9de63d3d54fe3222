//! What every connection shares, and the one path a command takes into Kafka.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use protocol::accounts::AccountRecord;
use protocol::records::{OrderRecord, RECORD_VERSION};
use protocol::ws::{ErrorBody, ErrorCode};
use protocol::{AccountId, CancelAll, Command, PairRegistry, PairSpec};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::accounts::Stage;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::deadman::DeadMan;
use crate::hub::{Hub, StageCommand};
use crate::ids::CommandIds;
use crate::outbound::ConnId;
use crate::sink::{Class, Dest, OrderSink, Permit, SendError};
use crate::{GatewayError, now_ms, telemetry};

pub(crate) struct Shared {
    pub config: Config,
    pub pairs: Arc<PairRegistry>,
    pub pool: PgPool,
    pub hub: Arc<Hub>,
    pub sink: OrderSink,
    pub ids: CommandIds,
    pub auth: Authenticator,
    pub account_limiter: DefaultKeyedRateLimiter<AccountId>,
    pub deadman: DeadMan,
    pub shutdown: CancellationToken,
    /// The account stage, when on: place and amend go through it.
    pub stage: Option<Stage>,
    /// Database queries of clients running now (`queries::QUERY_CONCURRENCY_MAX`).
    queries: tokio::sync::Semaphore,
    connections: AtomicUsize,
    next_conn_id: AtomicU64,
    /// New connections per second (`GW_NEW_CONNECTIONS_PER_S`).
    pub upgrades: DefaultDirectRateLimiter,
}

pub(crate) fn quota(per_s: u32, burst: u32) -> Quota {
    let per_s = NonZeroU32::new(per_s.max(1)).expect("max(1) is not zero");
    let burst = NonZeroU32::new(burst.max(1)).expect("max(1) is not zero");
    Quota::per_second(per_s).allow_burst(burst)
}

/// `rate_limited` with the time until the next request would pass.
pub(crate) fn rate_limited(wait: Duration, what: &str) -> ErrorBody {
    let mut e = ErrorBody::new(
        ErrorCode::RateLimited,
        format!("{what} rate limit exceeded; retry later"),
    );
    e.retry_after_ms = Some((wait.as_millis() as u64).max(1));
    e
}

/// An error code's wire name (`price_off_tick`).
pub(crate) fn error_code_name(code: ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".to_owned(),
    }
}

/// Counts an error by its code for `/metrics`.
pub(crate) fn count_error(code: ErrorCode) {
    metrics::counter!("gateway_errors_total", "code" => error_code_name(code)).increment(1);
}

impl Shared {
    pub fn new(
        config: Config,
        pool: PgPool,
        producer: FutureProducer,
        now_s: u64,
        shutdown: CancellationToken,
        stage: Option<Stage>,
    ) -> Result<Shared, GatewayError> {
        let limits = &config.limits;
        let pairs = Arc::clone(&config.pairs);
        let hub = Arc::new(Hub::new(
            Arc::clone(&pairs),
            limits.book_depth,
            limits.request_map_max,
            stage.is_some(),
        ));
        let (engine_delay, awaiting_verdict) = hub.verdict_signals();
        Ok(Shared {
            hub,
            sink: OrderSink::new(
                producer,
                config.orders_topic.clone(),
                limits.clone(),
                engine_delay,
                awaiting_verdict,
            ),
            ids: CommandIds::new(config.gateway_id, now_s)?,
            auth: Authenticator::new(pool.clone(), limits.login_window_ms, limits.keys.clone()),
            account_limiter: RateLimiter::keyed(quota(
                limits.account_rate_per_s,
                limits.account_burst,
            )),
            deadman: DeadMan::default(),
            pool,
            pairs,
            shutdown,
            stage,
            queries: tokio::sync::Semaphore::new(crate::queries::QUERY_CONCURRENCY_MAX),
            connections: AtomicUsize::new(0),
            next_conn_id: AtomicU64::new(1),
            upgrades: RateLimiter::direct(quota(
                limits.new_connections_per_s,
                limits.new_connections_burst,
            )),
            config,
        })
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a connection slot if one is free.
    pub fn try_open_connection(&self) -> bool {
        let max = self.config.limits.max_connections;
        let ok = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        metrics::gauge!("gateway_connections").set(self.connection_count() as f64);
        ok
    }

    pub fn close_connection(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("gateway_connections").set(self.connection_count() as f64);
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    pub fn check_account_rate(&self, account: AccountId) -> Result<(), ErrorBody> {
        self.account_limiter
            .check_key(&account)
            .map_err(|not_until| {
                metrics::counter!("gateway_shed_total", "reason" => telemetry::SHED_ACCOUNT_RATE)
                    .increment(1);
                rate_limited(
                    not_until.wait_time_from(DefaultClock::default().now()),
                    "account",
                )
            })
    }

    /// A slot for one client query of the database, or `overloaded`.
    pub fn query_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ErrorBody> {
        self.queries.try_acquire().map_err(|_| {
            metrics::counter!("gateway_shed_total", "reason" => telemetry::SHED_QUERIES)
                .increment(1);
            let mut e = ErrorBody::new(
                ErrorCode::Overloaded,
                "too many queries of the database at once; retry",
            );
            e.retry_after_ms = Some(crate::queries::QUERY_RETRY_AFTER_MS);
            e
        })
    }

    /// Admission control (see `sink`): a slot, or `overloaded` with `retry_after_ms`.
    pub fn admit(&self, class: Class) -> Result<Permit, ErrorBody> {
        if self.shutdown.is_cancelled() {
            return Err(ErrorBody::new(
                ErrorCode::ShuttingDown,
                "the gateway is shutting down; reconnect to another",
            ));
        }
        self.sink.admit(class).map_err(|shed| {
            metrics::counter!("gateway_shed_total", "reason" => shed.label()).increment(1);
            self.overloaded(format!("shedding load: {shed}"))
        })
    }

    fn overloaded(&self, message: String) -> ErrorBody {
        let mut e = ErrorBody::new(ErrorCode::Overloaded, message);
        e.retry_after_ms = Some(self.config.limits.overload_retry_after_ms);
        e
    }

    /// Writes one admitted command and waits for Kafka. `origin` ties the engine's verdict to
    /// the request (connection, request id). With the account stage on, a place or amend goes
    /// to the account's shard of `accounts` (the stage reserves, then forwards it to `orders`);
    /// everything else, and everything with the stage off, goes to the pair's `orders`.
    pub async fn produce(
        &self,
        permit: Permit,
        spec: &PairSpec,
        command_id: u64,
        command: Command,
        origin: Option<(ConnId, u64)>,
        tp: Option<String>,
    ) -> Result<(), ErrorBody> {
        let via_stage = match (&self.stage, &command) {
            (Some(stage), Command::Place(_) | Command::Amend(_)) => Some(stage),
            _ => None,
        };
        let context = via_stage.map(|_| stage_command(spec, &command));
        let record = OrderRecord {
            v: RECORD_VERSION,
            command_id,
            pair: spec.symbol.clone(),
            ts_ns: now_ms().saturating_mul(1_000_000),
            src: None,
            tp,
            command,
        };
        if let Some((conn, req_id)) = origin {
            self.hub.remember_request(command_id, conn, req_id, context);
        }
        let sent = match via_stage {
            None => self.sink.send(permit, spec, &record).await,
            Some(stage) => {
                let shard = stage.shard(record.command.account_id());
                let partition = i32::try_from(shard).expect("shards fit a partition number");
                let line = AccountRecord::Order(record);
                self.sink
                    .send_line(permit, Dest::Accounts, partition, &shard.to_string(), &line)
                    .await
            }
        };
        sent.map_err(|e| {
            self.hub.forget_request(command_id);
            match e {
                // The record may have reached the broker before it went quiet (librdkafka
                // cannot tell whether an in-flight record was written): the client must not
                // take this for a refusal and place the order again.
                SendError::Delivery(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageTimedOut,
                )) => {
                    metrics::counter!("gateway_shed_total", "reason" => telemetry::SHED_KAFKA)
                        .increment(1);
                    ErrorBody::new(
                        ErrorCode::OutcomeUnknown,
                        "Kafka did not acknowledge the command in time: it may or may not take \
                         effect; its verdict, if any, goes to the account's connections \
                         (order_status tells)",
                    )
                }
                SendError::QueueFull
                | SendError::Delivery(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) =>
                {
                    metrics::counter!("gateway_shed_total", "reason" => telemetry::SHED_KAFKA)
                        .increment(1);
                    self.overloaded(format!("Kafka did not take the command: {e}"))
                }
                other => {
                    tracing::warn!(error = %other, "produce failed");
                    ErrorBody::new(
                        ErrorCode::Internal,
                        format!("the command may not have been written: {other}"),
                    )
                }
            }
        })
    }

    /// One cancel-all per pair (all pairs when `only` is `None`). Returns how many were written.
    pub async fn cancel_all(
        &self,
        account_id: AccountId,
        only: Option<&PairSpec>,
        origin: Option<(ConnId, u64)>,
    ) -> Result<u32, ErrorBody> {
        let specs: Vec<&PairSpec> = match only {
            Some(spec) => vec![spec],
            None => self.pairs.iter().collect(),
        };
        let mut permits = Vec::with_capacity(specs.len());
        for _ in &specs {
            permits.push(self.admit(Class::Cancel)?);
        }
        let sends = specs.iter().zip(permits).map(|(spec, permit)| {
            let command = Command::CancelAll(CancelAll { account_id });
            self.produce(permit, spec, self.ids.next(), command, origin, None)
        });
        let results = futures_util::future::join_all(sends).await;
        let written = results.iter().filter(|r| r.is_ok()).count() as u32;
        match results.into_iter().find_map(Result::err) {
            None => Ok(written),
            Some(mut e) => {
                e.message = format!(
                    "{written} of {} cancel-all commands written: {}",
                    specs.len(),
                    e.message
                );
                Err(e)
            }
        }
    }
}

/// What a refusal of this command by the account stage shows besides its code: the pair, the
/// command's kind and the order it names (a refusal names only the command id).
fn stage_command(spec: &PairSpec, command: &Command) -> StageCommand {
    let (order_id, client_order_id) = match command {
        Command::Place(p) => (Some(p.order_id.0), p.client_order_id.clone()),
        Command::Amend(a) => match &a.target {
            protocol::OrderRef::Id(id) => (Some(id.0), None),
            protocol::OrderRef::ClientId(c) => (None, Some(c.clone())),
        },
        Command::Cancel(_) | Command::CancelAll(_) => (None, None),
    };
    StageCommand {
        account: command.account_id(),
        pair: spec.id,
        command: command.kind(),
        order_id,
        client_order_id,
    }
}
