//! The whole loop against real Kafka and PostgreSQL: places go to the account stage (as a
//! gateway sends them), reserved ones on to the real engine, whose settlements come back to the
//! stage; cancels go straight to the engine. The engine's pair actor fails between matching and
//! its commit and panics mid-batch (its settlements are sent again), the stage is SIGKILLed
//! between reserving and forwarding and between a fill and its settlement. Afterwards: balances equal a replay of the `accounts`
//! log, nothing was created or lost, and what the stage holds for each order is exactly what
//! the engine's book still has open.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accounts::shard::{Effects, ShardState};
use accounts_core::{AssetRegistry, Ledger, LedgerConfig};
use common::*;
use protocol::accounts::{AccountRecord, record_offset};
use protocol::records::{OrderRecord, RECORD_VERSION};
use protocol::{
    AccountId, CancelOrder, Command, OrderId, OrderRef, OrderType, PlaceOrder, Price, Qty,
    SelfTradePrevention, Side, TimeInForce,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

const ACCOUNTS: u64 = 10;
const COMMANDS: u64 = 2400;
const EUR: i128 = 10_000_000_000;
const BTC: i128 = 100_000_000_000_000;

/// The real engine, in process, with fault injection: a record with the `x-fault` header
/// `commit` has its batch matched and its events and settlements published, then the commit
/// fails and the pair's actor restarts from PostgreSQL (a crash between a fill and its durable
/// settlement, as a SIGKILL would leave it); `panic` panics the actor while it applies the
/// record (a crash mid-batch).
fn start_engine(
    world: &World,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Result<(), engine::EngineError>>,
) {
    let mut config = engine::Config::new(
        world.stack.brokers.clone(),
        world.database_url.clone(),
        world.registry.clone(),
    );
    config.orders_topic = world.orders_topic.clone();
    config.events_topic = world.events_topic.clone();
    config.accounts_topic = Some(world.accounts_topic.clone());
    config.static_pairs = Some(vec!["BTC-EUR".into()]);
    // Commits far apart: at a fault, a second of matched and settled work is uncommitted, so
    // the restarted actor sends those settlements again.
    config.commit_interval = Duration::from_millis(1000);
    let token = tokio_util::sync::CancellationToken::new();
    (token.clone(), tokio::spawn(engine::run(config, token)))
}

/// The end offset of `orders` (one partition: BTC-EUR).
async fn orders_end(producer: &rdkafka::producer::FutureProducer, topic: &str) -> i64 {
    let producer = producer.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        producer
            .client()
            .fetch_watermarks(&topic, 0, Duration::from_secs(5))
            .expect("watermarks")
            .1
    })
    .await
    .expect("watermarks task")
}

/// The gateway's side of the load: places to the stage, cancels straight to `orders`.
enum Line {
    Stage(u32, AccountRecord),
    Orders(OrderRecord),
}

fn workload() -> Vec<Line> {
    let mut seed = 11_u64;
    let mut rand = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut placed: Vec<(u64, u64)> = Vec::new();
    let mut out = Vec::new();
    for id in 1..=COMMANDS {
        let account = 1 + rand() % ACCOUNTS;
        if !placed.is_empty() && rand().is_multiple_of(5) {
            let (order, acc) = placed[(rand() as usize) % placed.len()];
            out.push(Line::Orders(OrderRecord {
                v: RECORD_VERSION,
                command_id: id,
                pair: "BTC-EUR".into(),
                ts_ns: id,
                src: None,
                tp: None,
                command: Command::Cancel(CancelOrder {
                    account_id: AccountId(acc),
                    target: OrderRef::Id(OrderId(order)),
                }),
            }));
            continue;
        }
        let side = if rand().is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell
        };
        // 50000.00 +- 1.00: buys and sells cross often.
        let price = 4_999_900 + (rand() % 20) as i64 * 10;
        let qty = 1_000 * (1 + (rand() % 40) as i64);
        placed.push((id, account));
        let rec = OrderRecord {
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
                qty: Qty(qty),
                tif: if rand().is_multiple_of(4) {
                    TimeInForce::Ioc
                } else {
                    TimeInForce::Gtc
                },
                post_only: false,
                stp: SelfTradePrevention::ExpireTaker,
                quote_budget: None,
            }),
        };
        out.push(Line::Stage(shard_of(account), AccountRecord::Order(rec)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_of_either_stage_leave_balances_equal_to_a_replay() {
    let Some(world) = World::new("full_loop").await else {
        return;
    };
    let world = Arc::new(world);
    let producer = world.producer();
    // Account 1 is poor: many of its orders are refused. The rest can afford everything.
    let mut funding = vec![
        deposit(1, 1, "EUR", 30 * EUR),
        deposit(2, 1, "BTC", BTC / 1000),
    ];
    for a in 2..=ACCOUNTS {
        funding.push(deposit(a * 10, a, "EUR", 1_000_000 * EUR));
        funding.push(deposit(a * 10 + 1, a, "BTC", 20 * BTC));
    }
    world.produce(&producer, &funding).await;

    let mut stage = world.start_stage();
    let (engine_stop, engine) = start_engine(&world);
    let lines = workload();
    let total = lines.len();
    let mut sent = 0;
    for (chunk_no, chunk) in lines.chunks(100).enumerate() {
        // Faults on a cancel (it goes straight to the book): a failed commit in four chunks, a
        // panic in one.
        let chunk_fault = match chunk_no {
            6 | 8 | 16 | 18 => Some("commit"),
            12 => Some("panic"),
            _ => None,
        };
        let to_stage: Vec<_> = chunk
            .iter()
            .filter_map(|line| match line {
                Line::Stage(shard, rec) => Some((*shard, rec.clone())),
                Line::Orders(_) => None,
            })
            .collect();
        if chunk_fault == Some("commit") {
            // Settlements are sent again only if the failed commit held fills: the chunk's
            // places go first, and its cancels (the faulted one first) once the stage has
            // forwarded them, so that they reach the engine right behind those places.
            let before = orders_end(&producer, &world.orders_topic).await;
            world.produce(&producer, &to_stage).await;
            let waiting = Instant::now();
            while orders_end(&producer, &world.orders_topic).await == before
                && waiting.elapsed() < Duration::from_secs(10)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut futures = Vec::new();
        for line in chunk {
            match line {
                Line::Stage(..) => {}
                Line::Orders(rec) => {
                    let payload = rec.encode();
                    let fault = chunk_fault.filter(|_| futures.is_empty());
                    let mut record = FutureRecord::to(&world.orders_topic)
                        .partition(0)
                        .key("BTC-EUR")
                        .payload(&payload);
                    if let Some(fault) = fault {
                        record = record.headers(OwnedHeaders::new().insert(Header {
                            key: "x-fault",
                            value: Some(fault),
                        }));
                    }
                    futures.push(
                        producer
                            .send_result(record)
                            .map_err(|(e, _)| e)
                            .expect("enqueue"),
                    );
                }
            }
        }
        if chunk_fault != Some("commit") {
            world.produce(&producer, &to_stage).await;
        }
        for f in futures {
            f.await
                .expect("delivery")
                .map_err(|(e, _)| e)
                .expect("acked");
        }
        sent += chunk.len();
        tokio::time::sleep(Duration::from_millis(30)).await;
        if chunk_no == 14 {
            // The stage dies with forwards and settlements in flight.
            stage.kill().expect("SIGKILL");
            stage.wait().expect("reaped");
            stage = world.start_stage();
        }
    }
    assert_eq!(sent, total);
    settle_down(&world).await;
    stop(stage);
    engine_stop.cancel();
    engine.await.expect("engine task").expect("engine drains");

    // 1. The stage's balances are a replay of its log (each settlement applied once).
    let pairs = Arc::new(world.registry.clone());
    let all = world
        .read_all(&world.accounts_topic, SHARDS, Duration::from_secs(2))
        .await;
    let mut replayed: BTreeMap<(u64, String), (i128, i128)> = BTreeMap::new();
    let mut held: HashMap<u64, i64> = HashMap::new();
    let mut refused = 0;
    let mut repeats = 0;
    for shard in 0..SHARDS {
        let config = LedgerConfig {
            fee_account_id: AccountId(0),
            pair_fees: BTreeMap::new(),
        };
        let ledger = Ledger::new(AssetRegistry::from_pairs(&pairs), config).unwrap();
        let mut state = ShardState::new(shard, SHARDS, Arc::clone(&pairs), ledger);
        let mut fx = Effects::default();
        for (_, pos, line) in all.iter().filter(|(s, _, _)| *s == shard) {
            state.apply_line(*pos, Some(line), &mut fx);
        }
        assert_eq!(fx.inconsistent, 0, "every settlement matched a reservation");
        repeats += fx.repeats;
        refused += fx.answers.iter().filter(|a| a.refusal.is_some()).count();
        for (acc, asset, b) in state.ledger.balances() {
            let symbol = state.ledger.assets().get(asset).unwrap().symbol.clone();
            let e = replayed.entry((acc.0, symbol)).or_default();
            e.0 += b.available_units;
            e.1 += b.reserved_units;
        }
        for (id, r) in state.ledger.reservations() {
            held.insert(id.0, r.qty.0 - r.filled_qty.0);
        }
    }
    let stored = accounts::store::all_balances(&world.pool).await.unwrap();
    assert_eq!(
        stored, replayed,
        "balances equal a replay of the accounts log"
    );

    // 2. Nothing created or lost: per asset, the sum over accounts is what was deposited.
    let mut totals: BTreeMap<&str, i128> = BTreeMap::new();
    for ((_, asset), (available, reserved)) in &stored {
        *totals.entry(asset.as_str()).or_default() += available + reserved;
    }
    let eur_in = 30 * EUR + (ACCOUNTS as i128 - 1) * 1_000_000 * EUR;
    let btc_in = BTC / 1000 + (ACCOUNTS as i128 - 1) * 20 * BTC;
    assert_eq!(totals, BTreeMap::from([("BTC", btc_in), ("EUR", eur_in)]));

    // 3. The stage holds funds for exactly the orders the engine's book has open, for what is
    //    left of each.
    let open: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT order_id, qty, filled_qty FROM orders WHERE status = 'open'")
            .fetch_all(&world.pool)
            .await
            .unwrap();
    let open: HashMap<u64, i64> = open
        .into_iter()
        .map(|(id, qty, filled)| (id as u64, qty - filled))
        .collect();
    assert_eq!(held, open, "reservations match the open orders");
    // And what a restart of the stage would hold: its snapshot plus the log replayed after it.
    let stage = world.stage().await;
    let never = tokio_util::sync::CancellationToken::new();
    let mut recovered = HashMap::new();
    for shard in 0..SHARDS {
        let r = accounts::actor::recover(&stage, shard, &never)
            .await
            .expect("the stage recovers");
        for (id, res) in r.state.ledger.reservations() {
            recovered.insert(id.0, res.qty.0 - res.filled_qty.0);
        }
    }
    assert_eq!(recovered, open, "a recovery holds for the open orders");
    let trades: i64 = sqlx::query_scalar("SELECT count(*) FROM trades")
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert!(trades > 100, "the workload trades: {trades}");
    assert!(refused > 5, "the poor account is refused: {refused}");
    assert!(repeats > 0, "the engine's restarts sent settlements again");
    eprintln!(
        "full loop: {total} commands, {trades} trades, {refused} refused, {} open orders, \
         {repeats} settlements sent twice",
        open.len()
    );
    Arc::try_unwrap(world)
        .ok()
        .expect("one owner")
        .drop_schema()
        .await;
}

/// Waits until the engine applied every `orders` record and the stage every `accounts` line,
/// and both stayed so for a second (the last settlements arrive after the last orders).
async fn settle_down(world: &World) {
    let started = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    loop {
        let orders_end = world.high(&world.orders_topic, 0).await - 1;
        let engine_at: Option<i64> =
            sqlx::query_scalar("SELECT last_offset FROM pair_offsets WHERE pair_id = 0")
                .fetch_optional(&world.pool)
                .await
                .unwrap();
        let mut stage_done = true;
        let positions = world.positions().await;
        for shard in 0..SHARDS {
            let end = world.high(&world.accounts_topic, shard).await - 1;
            let at = positions.get(&shard).map_or(-1, |p| record_offset(*p));
            stage_done &= at >= end;
        }
        if engine_at == Some(orders_end) && stage_done {
            match quiet_since {
                Some(t) if t.elapsed() > Duration::from_secs(1) => return,
                Some(_) => {}
                None => quiet_since = Some(Instant::now()),
            }
        } else {
            quiet_since = None;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not settled within 120 s: engine at {engine_at:?} of {orders_end}, stage at {positions:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
