//! The audit against the real stack: the real engine (and, in the second test, the real account
//! stage) runs a small generated workload, the audit passes; then one violation at a time is
//! injected into PostgreSQL or the topics, and the audit fails naming exactly the rules it
//! breaks (and passes again once a reversible injection is undone).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faults::{FAULT_OFFSET, PER_PAIR, produce_with_fault};
use common::*;
use engine::audit::{AuditConfig, Report, Rule};
use engine::workload::Workload;
use protocol::accounts::{
    AccountRecord, TransferDirection, TransferRecord, account_shard, record_offset,
};
use protocol::records::{EventRecord, OrderRecord, RECORD_VERSION};
use protocol::{
    AccountId, CancelOrder, Command, OrderId, OrderRef, OrderType, PairRegistry, PlaceOrder, Price,
    Qty, SelfTradePrevention, Side, TimeInForce,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;

fn audit_config(world: &World) -> AuditConfig {
    let mut c = AuditConfig::new(
        world.stack.brokers.clone(),
        world.database_url.clone(),
        world.registry.clone(),
    );
    c.orders_topic = world.orders_topic.clone();
    c.events_topic = world.events_topic.clone();
    // The world's own names, even where they do not exist: never the shared stack's topics.
    c.accounts_topic = format!("accounts_{}", world.schema);
    c.account_events_topic = format!("account_events_{}", world.schema);
    c
}

async fn audit(config: &AuditConfig) -> Report {
    engine::audit::run(config).await.expect("the audit runs")
}

fn violated(report: &Report) -> BTreeSet<Rule> {
    report.violated().into_iter().collect()
}

/// Asserts the report breaks exactly `rules`; prints its table when it does not.
fn assert_violates(report: &Report, rules: &[Rule]) {
    let want: BTreeSet<Rule> = rules.iter().copied().collect();
    assert_eq!(violated(report), want, "{}", report.table());
}

async fn sql(world: &World, statement: &str) -> u64 {
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&world.pool)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"))
        .rows_affected()
}

/// Two pairs of the engine's workload (one batch's commit fails after its events went out, so
/// `events` holds re-published answers), plus a packed record with a poison line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_passes_on_a_real_run_and_names_each_injected_violation() {
    infra::telemetry::init_tracing_with_default("error");
    let Some(stack) = stack("audit") else { return };
    let world = World::new(stack, "audit").await;
    let specs: Vec<_> = world.registry.iter().take(2).cloned().collect();
    produce_with_fault(&world, &specs, "commit").await;
    let packed = [
        limit(
            9_001,
            &specs[1].symbol,
            9_001,
            3,
            Side::Buy,
            100_000,
            100_000,
        )
        .encode(),
        b"a line that is not a command".to_vec(),
        limit(
            9_002,
            &specs[1].symbol,
            9_002,
            4,
            Side::Sell,
            100_000,
            50_000,
        )
        .encode(),
    ]
    .join(&b'\n');
    world.produce_raw(specs[1].id, &[packed]).await;
    run_engine(&world, &specs, &[PER_PAIR as i64 - 1, PER_PAIR as i64]).await;

    let received = received_file(&world, &specs, &[]);
    let mut config = audit_config(&world);
    config.received = Some(received.clone());
    let report = audit(&config).await;
    assert!(report.ok, "{}", report.table());
    eprintln!("audit of the engine's run:\n{}", report.table());
    let count = |rule: Rule| report.rules[&rule].checked;
    assert_eq!(count(Rule::AnsweredOnce), 2 * PER_PAIR as u64 + 3);
    assert!(count(Rule::TradesEqualReplay) > 10, "{}", report.table());
    assert!(count(Rule::BookEqualsReplay) > 10, "open orders compared");
    assert!(
        report.pairs[0].duplicates > 0,
        "the failed commit re-published answers"
    );
    assert_eq!(count(Rule::ReceivedHasVerdict), 2 * PER_PAIR as u64 + 2);
    assert!(report.rules[&Rule::BalancesEqualReplay].skipped.is_some());
    let (code, stdout) = run_binary(&world, &["--received", path_str(&received)]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("result: OK"), "{stdout}");

    // A trade row lost from PostgreSQL.
    let pair0 = specs[0].id;
    sql(
        &world,
        &format!(
            "CREATE TABLE saved AS SELECT * FROM trades WHERE pair_id = {pair0} AND trade_id = 5"
        ),
    )
    .await;
    assert_eq!(
        sql(
            &world,
            &format!("DELETE FROM trades WHERE pair_id = {pair0} AND trade_id = 5")
        )
        .await,
        1
    );
    let report = audit(&config).await;
    assert_violates(
        &report,
        &[
            Rule::OrderQuantity,
            Rule::BoughtEqualsSold,
            Rule::TradesEqualReplay,
        ],
    );
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.rule == Rule::TradesEqualReplay
                && v.trade_id == Some(5)
                && v.pair.as_deref() == Some(specs[0].symbol.as_str()))
    );
    let (code, stdout) = run_binary(&world, &[]);
    assert_eq!(code, 1, "a violation exits 1: {stdout}");
    assert!(
        stdout.contains("trades_equal_replay pair=BTC-EUR"),
        "{stdout}"
    );
    sql(&world, "INSERT INTO trades SELECT * FROM saved").await;
    assert!(audit(&config).await.ok, "the trade is back");

    // An open order whose price changed in PostgreSQL only.
    let tick = specs[1].tick_size.0;
    let one_open = format!(
        "order_id = (SELECT min(order_id) FROM orders WHERE pair_id = {} AND status = 'open')",
        specs[1].id
    );
    sql(
        &world,
        &format!("UPDATE orders SET price = price + {tick} WHERE {one_open}"),
    )
    .await;
    assert_violates(&audit(&config).await, &[Rule::BookEqualsReplay]);
    sql(
        &world,
        &format!("UPDATE orders SET price = price - {tick} WHERE {one_open}"),
    )
    .await;

    // A command acknowledged as received that never got a verdict.
    let mut with_lost = config.clone();
    with_lost.received = Some(received_file(&world, &specs, &[77_777_777]));
    let report = audit(&with_lost).await;
    assert_violates(&report, &[Rule::ReceivedHasVerdict]);
    assert_eq!(report.violations[0].order_id, Some(77_777_777));

    // A forged re-publication of pair 0's answer to its faulty record, one event changed.
    let lines = world.read_lines(&world.events_topic, 1).await;
    let mut forged: EventRecord = lines
        .iter()
        .map(|l| EventRecord::decode(&l.line).expect("decodes"))
        .find(|r| r.orders_offset == FAULT_OFFSET as i64)
        .expect("an answer to the faulty record");
    forged.events[0].ts_ns += 1;
    produce_events(&world, pair0, &forged).await;
    let report = audit(&config).await;
    assert_violates(&report, &[Rule::DuplicateIdentical]);
    assert_eq!(
        report.violations[0].orders_offset,
        Some(FAULT_OFFSET as i64)
    );

    // A new command whose forged answer skips a seq.
    let last_seq: i64 = sqlx::query_scalar("SELECT last_seq FROM pair_offsets WHERE pair_id = $1")
        .bind(pair0 as i32)
        .fetch_one(&world.pool)
        .await
        .unwrap();
    let place = limit(
        9_100,
        &specs[0].symbol,
        9_100,
        5,
        Side::Buy,
        100_000,
        100_000,
    );
    world.produce(std::slice::from_ref(&place)).await;
    let offset = world.read_orders(pair0).await.len() as i64 - 1;
    let mut answer = forged.clone();
    answer.orders_offset = offset;
    answer.command_id = Some(place.command_id);
    answer.events.truncate(1);
    answer.events[0].seq = last_seq as u64 + 2;
    produce_events(&world, pair0, &answer).await;
    let report = audit(&config).await;
    assert_violates(
        &report,
        &[
            Rule::AnswerEqualsReplay,
            Rule::DuplicateIdentical,
            Rule::SeqContiguous,
        ],
    );
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.rule == Rule::SeqContiguous
                && v.seq == Some(last_seq as u64 + 2)
                && v.orders_offset == Some(offset))
    );
    let _ = std::fs::remove_file(received);
    world.drop_schema().await;
}

/// Runs the engine over `specs` until pair i applied `last[i]`, then drains it.
async fn run_engine(world: &World, specs: &[protocol::PairSpec], last: &[i64]) {
    let mut config = world.config();
    config.static_pairs = Some(specs.iter().map(|s| s.symbol.clone()).collect());
    // Small batches, so the faulty batch is not the pair's first one.
    config.batch_records_max = 100;
    let (stop, engine) = spawn_engine(config);
    let want: HashMap<u32, i64> = specs
        .iter()
        .map(|s| s.id)
        .zip(last.iter().copied())
        .collect();
    world.wait_applied(&want, Duration::from_secs(60)).await;
    stop.cancel();
    engine.await.unwrap().unwrap();
}

/// The load generator's record, in its format (`loadtest --received-out`): every place and
/// cancel of the workload (as `produce_with_fault` made it) by the order it names, the packed
/// record's two commands by command id, plus `lost` places.
fn received_file(world: &World, specs: &[protocol::PairSpec], lost: &[u64]) -> PathBuf {
    let mut text = String::new();
    let mut line = |order_id: u64, pair: &str, kind: &str| {
        text += &format!("{{\"order_id\":{order_id},\"pair\":\"{pair}\",\"kind\":\"{kind}\"}}\n");
    };
    for spec in specs {
        let mut w = Workload::new(spec.clone(), 11);
        for i in 0..PER_PAIR {
            match w.next_record(i as u64 + 1).command {
                Command::Place(p) => line(p.order_id.0, &spec.symbol, "place"),
                Command::Cancel(CancelOrder {
                    target: OrderRef::Id(id),
                    ..
                }) => line(id.0, &spec.symbol, "cancel"),
                other => panic!("the workload sends places and cancels by id: {other:?}"),
            }
        }
    }
    for id in lost {
        line(*id, &specs[0].symbol, "place");
    }
    text += "{\"command_id\":9001}\n{\"command_id\":9002}\n";
    let path = std::env::temp_dir().join(format!("{}_{}.jsonl", world.schema, lost.len()));
    std::fs::write(&path, text).expect("write the received file");
    path
}

fn path_str(path: &std::path::Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// Runs the `audit` binary on the world; its exit code and stdout.
fn run_binary(world: &World, extra: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audit"))
        .args(["--orders-topic", &world.orders_topic])
        .args(["--events-topic", &world.events_topic])
        .args(["--accounts-topic", &format!("accounts_{}", world.schema)])
        .args([
            "--account-events-topic",
            &format!("account_events_{}", world.schema),
        ])
        .args(["--pair", "BTC-EUR,ETH-EUR"])
        .args(extra)
        .env("KAFKA_BROKERS", &world.stack.brokers)
        .env("DATABASE_URL", &world.database_url)
        .env("RUST_LOG", "error")
        .output()
        .expect("run the audit binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Appends one answer, as its own record, to the pair's `events` partition.
async fn produce_events(world: &World, pair_id: u32, answer: &EventRecord) {
    let producer = world.producer();
    let payload = answer.encode();
    producer
        .send_result(
            FutureRecord::to(&world.events_topic)
                .partition(pair_id as i32)
                .key(answer.pair.as_str())
                .payload(&payload),
        )
        .map_err(|(e, _)| e)
        .expect("enqueue")
        .await
        .expect("delivery")
        .map_err(|(e, _)| e)
        .expect("acked");
}

const SHARDS: usize = 2;
const ACCOUNTS: u64 = 6;
const EUR: i128 = 10_000_000_000;
const BTC: i128 = 100_000_000_000_000;
const DEPOSIT: TransferDirection = TransferDirection::Deposit;
/// The place of an account that deposited nothing.
const POOR_ORDER: u64 = 5_000;

/// `config/pairs.toml` with fees on BTC-EUR, so trades credit the fee account in both shards.
fn registry_with_fees() -> PairRegistry {
    let text = std::fs::read_to_string(infra::config::pairs_path().expect("pairs.toml"))
        .expect("read pairs.toml");
    let text = text.replacen(
        "min_notional = \"5\"",
        "min_notional = \"5\"\nmaker_fee = \"0.001\"\ntaker_fee = \"0.002\"",
        1,
    );
    let registry = PairRegistry::from_toml(&text).expect("pairs with fees");
    assert_ne!(registry.fees(0), Default::default(), "BTC-EUR has fees");
    registry
}

/// The whole loop with the account stage: the audit passes, then a balance or a ledger line
/// changed in PostgreSQL alone fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_replays_the_account_stage_and_names_broken_balances() {
    infra::telemetry::init_tracing_with_default("error");
    let Some(stack) = stack("audit_balances") else {
        return;
    };
    let mut world = World::new(stack, "audit_bal")
        .await
        .with_accounts(SHARDS)
        .await;
    world.registry = registry_with_fees();
    let account_events = format!("account_events_{}", world.schema);
    let admin = Arc::new(infra::kafka::admin_client(&world.stack.brokers).expect("admin"));
    infra::kafka::ensure_topic(&admin, &world.stack.brokers, &account_events, SHARDS, &[])
        .await
        .expect("create the account_events topic");
    let accounts_topic = world.accounts_topic.clone().expect("accounts topic");

    let mut stage_config = accounts::Config::new(
        world.stack.brokers.clone(),
        world.database_url.clone(),
        world.registry.clone(),
    );
    stage_config.accounts_topic = accounts_topic.clone();
    stage_config.orders_topic = world.orders_topic.clone();
    stage_config.account_events_topic = account_events.clone();
    let stage_stop = tokio_util::sync::CancellationToken::new();
    let stage = tokio::spawn(accounts::run(stage_config, stage_stop.clone()));
    let mut engine_config = world.config();
    engine_config.static_pairs = Some(vec!["BTC-EUR".into()]);
    let (engine_stop, engine) = spawn_engine(engine_config);

    let producer = world.producer();
    let mut lines: Vec<(u32, AccountRecord)> = Vec::new();
    for a in 1..=ACCOUNTS {
        lines.push(transfer(DEPOSIT, (a * 10, a), "EUR", 1_000_000 * EUR));
        lines.push(transfer(DEPOSIT, (a * 10 + 1, a), "BTC", 20 * BTC));
    }
    let mut cancels = Vec::new();
    for (id, side, price, account) in trading() {
        let place = place(id, account, side, price);
        lines.push((shard_of(account), AccountRecord::Order(place)));
        if id.is_multiple_of(7) {
            cancels.push(cancel(id + 1_000_000, id, account));
        }
    }
    let withdrawal = TransferDirection::Withdrawal;
    lines.push(transfer(withdrawal, (999, 2), "EUR", 5 * EUR));
    // An account without funds: the stage refuses its place, which never reaches `events`.
    let poor = place(POOR_ORDER, 9, Side::Buy, 4_999_900);
    lines.push((shard_of(9), AccountRecord::Order(poor)));
    for (shard, line) in &lines {
        let payload = line.encode();
        producer
            .send_result(
                FutureRecord::to(&accounts_topic)
                    .partition(*shard as i32)
                    .key("audit")
                    .payload(&payload),
            )
            .map_err(|(e, _)| e)
            .expect("enqueue")
            .await
            .expect("delivery")
            .map_err(|(e, _)| e)
            .expect("acked");
    }
    settle_down(&world, &accounts_topic).await;
    world.produce(&cancels).await;
    settle_down(&world, &accounts_topic).await;
    stage_stop.cancel();
    engine_stop.cancel();
    stage.await.unwrap().expect("the stage drains");
    engine.await.unwrap().expect("the engine drains");

    let mut config = audit_config(&world);
    assert_eq!(config.accounts_topic, accounts_topic);
    assert_eq!(config.account_events_topic, account_events);
    let received = std::env::temp_dir().join(format!("{}.jsonl", world.schema));
    let places = trading().into_iter().map(|t| t.0).chain([POOR_ORDER]);
    let text: String = places
        .map(|id| format!("{{\"order_id\":{id},\"pair\":\"BTC-EUR\",\"kind\":\"place\"}}\n"))
        .collect();
    std::fs::write(&received, text).expect("write the received file");
    config.received = Some(received.clone());
    let report = audit(&config).await;
    assert!(report.ok, "{}", report.table());
    eprintln!("audit of the account stage's run:\n{}", report.table());
    let balances = report
        .balances
        .as_ref()
        .expect("the account stage was audited");
    assert_eq!(balances.shards, SHARDS as u32);
    assert!(balances.ledger_changes > 50, "{balances:?}");
    let count = |rule: Rule| report.rules[&rule].checked;
    assert!(count(Rule::BalancesConserved) >= 2, "{}", report.table());
    assert!(
        count(Rule::BalancesEqualReplay) > ACCOUNTS * 2,
        "{}",
        report.table()
    );
    assert!(count(Rule::LedgerCause) > 50, "{}", report.table());
    assert!(
        count(Rule::SnapshotEqualsReplay) >= 1,
        "the stage's first commit wrote a snapshot: {}",
        report.table()
    );
    assert!(
        count(Rule::TradesEqualReplay) > 10,
        "the workload trades: {}",
        report.table()
    );
    assert_eq!(
        count(Rule::ReceivedHasVerdict),
        241,
        "with the poor account's refusal"
    );
    let fees: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger WHERE cause = 'fee'")
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert!(fees > 10, "fees were settled: {fees}");

    // A balance changed in PostgreSQL alone.
    let one = "account_id = 1 AND asset = 'EUR'";
    assert_eq!(
        sql(
            &world,
            &format!("UPDATE balances SET available = available + 1 WHERE {one}")
        )
        .await,
        1
    );
    let report = audit(&config).await;
    assert_violates(
        &report,
        &[Rule::BalancesConserved, Rule::BalancesEqualReplay],
    );
    sql(
        &world,
        &format!("UPDATE balances SET available = available - 1 WHERE {one}"),
    )
    .await;
    assert!(audit(&config).await.ok, "the balance is back");

    // A snapshot whose first balance differs from the replay at its position.
    let (shard, original): (i32, Vec<u8>) =
        sqlx::query_as("SELECT shard, state FROM account_snapshots ORDER BY shard LIMIT 1")
            .fetch_one(&world.pool)
            .await
            .expect("a snapshot");
    let mut tampered: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let available = tampered["balances"][0][2]
        .as_str()
        .expect("the snapshot holds a balance")
        .to_owned();
    tampered["balances"][0][2] = serde_json::json!(format!("{available}1"));
    let set = "UPDATE account_snapshots SET state = $2 WHERE shard = $1";
    sqlx::query(set)
        .bind(shard)
        .bind(serde_json::to_vec(&tampered).unwrap())
        .execute(&world.pool)
        .await
        .unwrap();
    let report = audit(&config).await;
    assert_violates(&report, &[Rule::SnapshotEqualsReplay]);
    sqlx::query(set)
        .bind(shard)
        .bind(&original)
        .execute(&world.pool)
        .await
        .unwrap();
    assert!(audit(&config).await.ok, "the snapshot is back");

    // A deposit in the ledger that no transfer and no accounts line made.
    sql(
        &world,
        "INSERT INTO ledger_batches (shard, first_offset, last_offset, lines) VALUES (0, 1, 1, \
         '[[1,[[2,\"EUR\",\"deposit\",{\"type\":\"deposit\",\"transfer_id\":987654},\"5\",\"0\",\"5\",\"0\"]]]]')",
    )
    .await;
    let report = audit(&config).await;
    assert_violates(&report, &[Rule::LedgerCause]);
    assert!(
        report
            .violations
            .iter()
            .all(|v| v.accounts_position == Some(1))
    );
    let _ = std::fs::remove_file(received);
    world.drop_schema().await;
}

fn shard_of(account: u64) -> u32 {
    account_shard(AccountId(account), SHARDS as u32)
}

fn transfer(
    direction: TransferDirection,
    (id, account): (u64, u64),
    asset: &str,
    units: i128,
) -> (u32, AccountRecord) {
    (
        shard_of(account),
        AccountRecord::Transfer(TransferRecord {
            v: RECORD_VERSION,
            transfer_id: id,
            account_id: AccountId(account),
            direction,
            asset: asset.into(),
            amount_units: units,
            ts_ns: 0,
        }),
    )
}

/// (order id, side, price, account) of 240 limit orders around 50000.00 EUR: many cross.
fn trading() -> Vec<(u64, Side, i64, u64)> {
    let mut seed = 7_u64;
    let mut rand = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    (1..=240)
        .map(|id| {
            let side = if rand().is_multiple_of(2) {
                Side::Buy
            } else {
                Side::Sell
            };
            let price = 4_999_900 + (rand() % 20) as i64 * 10;
            (id, side, price, 1 + rand() % ACCOUNTS)
        })
        .collect()
}

fn place(id: u64, account: u64, side: Side, price: i64) -> OrderRecord {
    OrderRecord {
        v: RECORD_VERSION,
        command_id: id,
        pair: "BTC-EUR".into(),
        ts_ns: id,
        src: None,
        tp: None,
        command: Command::Place(PlaceOrder {
            order_id: OrderId(id),
            account_id: AccountId(account),
            client_order_id: None,
            side,
            order_type: OrderType::Limit,
            price: Some(Price(price)),
            qty: Qty(1_000 * (1 + (id % 40) as i64)),
            tif: if id.is_multiple_of(4) {
                TimeInForce::Ioc
            } else {
                TimeInForce::Gtc
            },
            post_only: false,
            stp: SelfTradePrevention::ExpireTaker,
            quote_budget: None,
        }),
    }
}

fn cancel(command_id: u64, order_id: u64, account: u64) -> OrderRecord {
    OrderRecord {
        v: RECORD_VERSION,
        command_id,
        pair: "BTC-EUR".into(),
        ts_ns: command_id,
        src: None,
        tp: None,
        command: Command::Cancel(CancelOrder {
            account_id: AccountId(account),
            target: OrderRef::Id(OrderId(order_id)),
        }),
    }
}

/// Waits until the engine applied every `orders` record of BTC-EUR and the stage committed
/// every `accounts` line, and both stayed so for a second (settlements follow the orders).
async fn settle_down(world: &World, accounts_topic: &str) {
    let started = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    loop {
        let orders_end = high(world, &world.orders_topic, 0).await - 1;
        let engine_at = world.last_offsets().await.get(&0).copied().unwrap_or(-1);
        let positions: HashMap<i32, i64> =
            sqlx::query_as::<_, (i32, i64)>("SELECT shard, last_offset FROM account_shards")
                .fetch_all(&world.pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let mut done = engine_at == orders_end;
        for shard in 0..SHARDS as i32 {
            let end = high(world, accounts_topic, shard).await - 1;
            done &= positions.get(&shard).map_or(-1, |p| record_offset(*p)) >= end;
        }
        match (done, quiet_since) {
            (true, Some(t)) if t.elapsed() > Duration::from_secs(1) => return,
            (true, None) => quiet_since = Some(Instant::now()),
            (true, Some(_)) => {}
            (false, _) => quiet_since = None,
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not settled in 120 s: engine at {engine_at} of {orders_end}, shards at {positions:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn high(world: &World, topic: &str, partition: i32) -> i64 {
    let (brokers, topic) = (world.stack.brokers.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer =
            infra::kafka::client_config(&brokers, "audit-test", infra::kafka::Role::Consumer)
                .set("group.id", "audit-test-watermarks")
                .create()
                .expect("consumer");
        consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(5))
            .expect("watermarks")
            .1
    })
    .await
    .expect("watermarks task")
}
