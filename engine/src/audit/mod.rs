//! The audit: an operator's check that the system kept its guarantees (docs/ARCHITECTURE.md,
//! "Audit"). For one pair or all, it replays the `orders` log through engine-core exactly as
//! the engine applies it and compares, record by record, with the `events` topic and with
//! PostgreSQL; with the account stage, it replays the `accounts` log through the shards' rules
//! and compares with the balances and the ledger; with a load generator's record of the
//! commands acknowledged as `received`, it finds each one's verdict.
//!
//! ```text
//! orders[p] ──replay (engine-core)──▶ expected answers ──compare in step──◀── events[p]
//!                 │ book at PostgreSQL's committed offset, trades, orders
//!                 ▼
//!          PostgreSQL (one REPEATABLE READ snapshot for the whole run)
//! accounts[s] ──replay (ShardState)──▶ ledger lines, balances ──compare──▶ PostgreSQL
//! ```
//!
//! Everything is streamed: memory is one book with its open orders (or one shard's balances)
//! and a bounded window of answer hashes, never the log. [`run`] returns a [`Report`]; the
//! `audit` binary prints it and exits non-zero on any violation.

mod balances;
mod db;
mod log;
mod pair;
mod received;
mod report;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use accounts_core::LedgerConfig;
use protocol::{AccountId, PairRegistry, PairSpec};

pub use report::{
    BalancesSummary, PairSummary, Pending, Report, Rule, Speed, Tally, Violation, digest, fnv1a,
};

use received::Received;

/// Everything an audit needs, already parsed.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub brokers: String,
    pub database_url: String,
    pub registry: PairRegistry,
    pub orders_topic: String,
    pub events_topic: String,
    pub accounts_topic: String,
    pub account_events_topic: String,
    /// The account the stage credits fees to (`accounts run --fee-account`).
    pub fee_account_id: AccountId,
    /// `Some`: only these pair symbols. `None`: every pair of the registry.
    pub pairs: Option<Vec<String>>,
    /// The load generator's record of acknowledged commands (JSON lines; docs/ARCHITECTURE.md,
    /// "Audit").
    pub received: Option<PathBuf>,
    /// Audit the account stage when its tables hold data.
    pub balances: bool,
    /// How many violations the report lists in detail (all are counted).
    pub violations_max: usize,
    /// How many answers per pair are remembered (by hash) to compare re-publications with.
    pub duplicate_window: usize,
}

impl AuditConfig {
    /// The defaults: every pair, the default topic names, fee account 0, balances on.
    pub fn new(brokers: String, database_url: String, registry: PairRegistry) -> AuditConfig {
        AuditConfig {
            brokers,
            database_url,
            registry,
            orders_topic: protocol::records::ORDERS_TOPIC.to_owned(),
            events_topic: protocol::records::EVENTS_TOPIC.to_owned(),
            accounts_topic: protocol::accounts::ACCOUNTS_TOPIC.to_owned(),
            account_events_topic: protocol::accounts::ACCOUNT_EVENTS_TOPIC.to_owned(),
            fee_account_id: AccountId(0),
            pairs: None,
            received: None,
            balances: true,
            violations_max: 100,
            duplicate_window: 1_000_000,
        }
    }

    fn specs(&self) -> Result<Vec<PairSpec>, AuditError> {
        match &self.pairs {
            None => Ok(self.registry.iter().cloned().collect()),
            Some(symbols) => symbols
                .iter()
                .map(|s| {
                    self.registry
                        .by_symbol(s)
                        .cloned()
                        .ok_or_else(|| AuditError::UnknownPair(s.clone()))
                })
                .collect(),
        }
    }

    /// The ledger rules the account stage runs with: its fee account, the registry's fees.
    fn ledger_config(&self) -> LedgerConfig {
        let mut stage = accounts::Config::new(String::new(), String::new(), self.registry.clone());
        stage.fee_account_id = self.fee_account_id;
        stage.ledger_config()
    }
}

/// Why an audit could not run to its end (a violation is not an error: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Connect(#[from] infra::db::DbError),
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot {what}: {source}")]
    Kafka {
        what: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(transparent)]
    KafkaSetup(#[from] infra::kafka::KafkaSetupError),
    #[error(
        "{topic}[{partition}]: no record arrived for 30 s at offset {at}, below the end {end} \
         read at start"
    )]
    Stalled {
        topic: String,
        partition: i32,
        at: i64,
        end: i64,
    },
    #[error("pair {0:?} is not in the pairs file")]
    UnknownPair(String),
    #[error("cannot read {}: {source}", path.display())]
    ReceivedIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} line {line}: {reason}", path.display())]
    Received {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("PostgreSQL holds a row the audit cannot read: {0}")]
    Corrupt(String),
    #[error("the ledger's configuration: {0}")]
    Ledger(#[from] accounts_core::ConfigError),
    #[error("a blocking Kafka call failed to run: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs the whole audit; `Err` only when it could not run to its end.
pub async fn run(config: &AuditConfig) -> Result<Report, AuditError> {
    let started = Instant::now();
    let specs = config.specs()?;
    let symbols: BTreeSet<String> = specs.iter().map(|s| s.symbol.clone()).collect();
    let mut received = match &config.received {
        Some(path) => Some(Received::load(path, &symbols)?),
        None => None,
    };
    let mut report = Report::new(config.violations_max);
    let consumers = log::Consumers::new(&config.brokers);
    let pool = infra::db::connect(&config.database_url, 1).await?;
    let mut tx = db::snapshot(&pool).await?;
    for spec in &specs {
        tracing::info!(pair = %spec.symbol, "auditing pair");
        let summary = pair::audit(
            config,
            &consumers,
            spec,
            &mut tx,
            &mut report,
            received.as_mut(),
        )
        .await?;
        report.pairs.push(summary);
    }
    if config.balances {
        report.balances = balances::audit(config, &consumers, &mut tx, &mut report).await?;
    } else {
        for rule in [
            Rule::BalancesConserved,
            Rule::LedgerCause,
            Rule::BalancesEqualReplay,
        ] {
            report.skip(rule, "--no-balances");
        }
    }
    tx.rollback().await?;
    pool.close().await;
    match received {
        Some(mut r) => {
            if r.awaits() {
                let topics = (
                    config.accounts_topic.as_str(),
                    config.account_events_topic.as_str(),
                );
                let kafka = (config.brokers.as_str(), &consumers);
                received::account_refusals(kafka, topics, &mut r, &mut report).await?;
            }
            r.finish(&mut report);
        }
        None => report.skip(Rule::ReceivedHasVerdict, "no --received file"),
    }
    let elapsed = started.elapsed().as_secs_f64();
    let s = &mut report.speed;
    s.elapsed_s = elapsed;
    s.records_per_s = s.records as f64 / elapsed.max(1e-9);
    s.lines_per_s = s.lines as f64 / elapsed.max(1e-9);
    if config.pairs.is_some() {
        report.note("only the listed pairs were audited; the balance rules cover every pair");
    }
    Ok(report)
}
