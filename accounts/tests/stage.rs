//! The account stage against real Kafka and PostgreSQL: money cannot be spent twice across
//! pairs, and a SIGKILL in the middle of a stream leaves, after a restart, exactly the balances
//! a fresh replay of the `accounts` log gives.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accounts::shard::{Effects, ShardState};
use accounts_core::{AssetRegistry, Ledger, LedgerConfig};
use common::*;
use engine_core::OrderBook;
use protocol::accounts::{AccountRecord, SettleRecord, account_shard, record_offset};
use protocol::records::{OrderRecord, RECORD_VERSION};
use protocol::{
    AccountId, CancelOrder, Command, CommandKind, Event, EventBody, OrderId, OrderRef, OrderType,
    PlaceOrder, Price, Qty, SelfTradePrevention, Side, TimeInForce,
};

fn place(
    command_id: u64,
    pair: &str,
    order_id: u64,
    account: u64,
    side: Side,
    price: i64,
    qty: i64,
) -> OrderRecord {
    OrderRecord {
        v: RECORD_VERSION,
        command_id,
        pair: pair.into(),
        ts_ns: command_id,
        src: None,
        tp: None,
        command: Command::Place(PlaceOrder {
            order_id: OrderId(order_id),
            account_id: AccountId(account),
            client_order_id: None,
            side,
            order_type: OrderType::Limit,
            price: Some(Price(price)),
            qty: Qty(qty),
            tif: TimeInForce::Gtc,
            post_only: false,
            stp: SelfTradePrevention::ExpireTaker,
            quote_budget: None,
        }),
    }
}

const EUR: i128 = 10_000_000_000; // one EUR in EUR units (10 decimals)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orders_in_two_pairs_cannot_spend_the_same_money() {
    let Some(world) = World::new("double_spend").await else {
        return;
    };
    let stage = world.start_stage();
    let producer = world.producer();
    // Account 2 holds 1000 EUR and places two buys of 800 EUR each, in two pairs.
    let btc = place(10, "BTC-EUR", 100, 2, Side::Buy, 8_000_000, 1_000_000); // 80000.00 x 0.01
    let eth = place(11, "ETH-EUR", 101, 2, Side::Buy, 200_000, 40_000_000); // 2000.00 x 0.4
    let lines = vec![
        deposit(1, 2, "EUR", 1000 * EUR),
        (shard_of(2), AccountRecord::Order(btc)),
        (shard_of(2), AccountRecord::Order(eth)),
    ];
    let positions = world.produce(&producer, &lines).await;
    let want = BTreeMap::from([(shard_of(2), positions[2])]);
    world.wait_committed(&want, Duration::from_secs(60)).await;

    let forwards = world.forwards(Duration::from_secs(2)).await;
    let ids: Vec<u64> = forwards.iter().map(|f| f.command_id).collect();
    assert_eq!(ids, [10], "only the first order reaches a book");
    assert_eq!(forwards[0].src.map(|s| s.offset), Some(positions[1]));
    let answers = world.answers(Duration::from_secs(2)).await;
    let refused: Vec<_> = answers
        .iter()
        .filter_map(|a| Some((a.command_id?, a.refusal.as_ref()?.code.clone())))
        .collect();
    assert_eq!(refused, [(11, "insufficient_funds".to_owned())]);
    let balances = accounts::store::all_balances(&world.pool).await.unwrap();
    assert_eq!(balances[&(2, "EUR".to_owned())], (200 * EUR, 800 * EUR));
    stop(stage);
    world.drop_schema().await;
}

/// A deterministic stream of account lines for `accounts` accounts trading BTC-EUR, with the
/// settlements a real book (engine-core) decides for them, grouped by shard as the engine
/// sends them.
struct Stream {
    book: OrderBook,
    seed: u64,
    next_id: u64,
    seq: u64,
    open: Vec<(u64, u64)>,
    events: Vec<Event>,
}

impl Stream {
    fn rand(&mut self) -> u64 {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.seed >> 33
    }

    /// The lines of one command: the command to its account's shard, then the settlements.
    fn next(&mut self, accounts: u64) -> Vec<(u32, AccountRecord)> {
        self.next_id += 1;
        let id = self.next_id;
        let account = 1 + self.rand() % accounts;
        let cancel = !self.open.is_empty() && self.rand().is_multiple_of(4);
        let rec = if cancel {
            let i = (self.rand() as usize) % self.open.len();
            let (order, acc) = self.open.swap_remove(i);
            OrderRecord {
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
            }
        } else {
            let side = if self.rand().is_multiple_of(2) {
                Side::Buy
            } else {
                Side::Sell
            };
            let price = 5_000_000 + (self.rand() % 20) as i64 * 10; // 50000.00 .. 50001.90
            let qty = 1_000 * (1 + (self.rand() % 50) as i64); // lots of 0.00001
            self.open.push((id, account));
            place(id, "BTC-EUR", id, account, side, price, qty)
        };
        self.events.clear();
        self.book.apply(&rec.command, rec.ts_ns, &mut self.events);
        let mut out = Vec::new();
        // A cancel travels straight to the book; a place through its shard.
        if !cancel {
            out.push((shard_of(account), AccountRecord::Order(rec)));
        }
        let mut by_shard: BTreeMap<u32, Vec<Event>> = BTreeMap::new();
        for e in &self.events {
            self.seq = self.seq.max(e.seq);
            let accounts: Vec<AccountId> = match &e.body {
                EventBody::Trade {
                    maker_account_id,
                    taker_account_id,
                    ..
                } => {
                    vec![*maker_account_id, *taker_account_id]
                }
                EventBody::Done {
                    account_id,
                    order_id,
                    ..
                } => {
                    self.open.retain(|(o, _)| *o != order_id.0);
                    vec![*account_id]
                }
                EventBody::Rejected {
                    account_id: Some(a),
                    command: Some(CommandKind::Place),
                    ..
                } => {
                    vec![*a]
                }
                _ => vec![],
            };
            let shards: BTreeSet<u32> =
                accounts.iter().map(|a| account_shard(*a, SHARDS)).collect();
            for s in shards {
                by_shard.entry(s).or_default().push(e.clone());
            }
        }
        for (shard, events) in by_shard {
            let seq = events.last().expect("non-empty").seq;
            out.push((
                shard,
                AccountRecord::Settle(SettleRecord {
                    v: RECORD_VERSION,
                    pair: "BTC-EUR".into(),
                    seq,
                    events,
                }),
            ));
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_equals_a_replay() {
    const ACCOUNTS: u64 = 12;
    const COMMANDS: usize = 3000;
    let Some(world) = World::new("stage_crash").await else {
        return;
    };
    let world = Arc::new(world);
    let producer = world.producer();
    // Everyone is funded well beyond what the stream can hold, so refusals are rare but real.
    let mut funding = Vec::new();
    for a in 1..=ACCOUNTS {
        funding.push(deposit(a, a, "EUR", 200_000 * EUR));
        funding.push(deposit(1_000 + a, a, "BTC", 4 * 100_000_000_000_000));
    }
    world.produce(&producer, &funding).await;
    let spec = world.registry.by_symbol("BTC-EUR").unwrap().clone();
    let mut stream = Stream {
        book: OrderBook::new(spec),
        seed: 7,
        next_id: 10_000,
        seq: 0,
        open: Vec::new(),
        events: Vec::new(),
    };
    // An engine that restarts sends its recent settlements again: every 10 commands, the last
    // 10 commands' settlements come twice, so some repeat across the crash below.
    let mut lines: Vec<(u32, AccountRecord)> = Vec::new();
    let mut recent = Vec::new();
    for i in 0..COMMANDS {
        for line in stream.next(ACCOUNTS) {
            if matches!(line.1, AccountRecord::Settle(_)) {
                recent.push(line.clone());
            }
            lines.push(line);
        }
        if i % 10 == 9 {
            lines.append(&mut recent);
        }
    }

    let mut stage = world.start_stage();
    let streaming = {
        let world = Arc::clone(&world);
        let lines = lines.clone();
        tokio::spawn(async move {
            let producer = world.producer();
            let mut last = BTreeMap::new();
            for chunk in lines.chunks(200) {
                let positions = world.produce(&producer, chunk).await;
                for ((shard, _), p) in chunk.iter().zip(positions) {
                    last.insert(*shard, p);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            last
        })
    };
    // Kill it once it is clearly mid-stream.
    let started = Instant::now();
    loop {
        let committed: i64 = world
            .positions()
            .await
            .values()
            .map(|p| (p >> 16).max(0))
            .sum();
        if committed as usize >= lines.len() / 4 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the stage made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stage.kill().expect("SIGKILL");
    stage.wait().expect("reaped");
    let last = streaming.await.expect("producer");
    let stage = world.start_stage();
    world.wait_committed(&last, Duration::from_secs(120)).await;
    stop(stage);
    // A restarted engine sends its last settlements again, and they are the first lines the
    // restarted stage reads: only the seqs it recovered tell them apart.
    let settles: Vec<_> = lines
        .iter()
        .filter(|(_, r)| matches!(r, AccountRecord::Settle(_)))
        .cloned()
        .collect();
    let tail = &settles[settles.len() - 30..];
    let again = world.produce(&producer, tail).await;
    let mut last = last;
    for ((shard, _), p) in tail.iter().zip(again) {
        last.insert(*shard, p.max(last[shard]));
    }
    let stage = world.start_stage();
    world.wait_committed(&last, Duration::from_secs(60)).await;
    stop(stage);

    // The replay: every line of each shard's partition, from the start, through a fresh state.
    let pairs = Arc::new(world.registry.clone());
    let mut replayed: BTreeMap<(u64, String), (i128, i128)> = BTreeMap::new();
    let mut want_forwards = BTreeSet::new();
    let mut ledger_rows = 0;
    let all = world
        .read_all(&world.accounts_topic, SHARDS, Duration::from_secs(2))
        .await;
    let mut states = Vec::new();
    for shard in 0..SHARDS {
        let mut state = fresh_state(&pairs, shard);
        let mut fx = Effects::default();
        for (_, pos, line) in all.iter().filter(|(s, _, _)| *s == shard) {
            state.apply_line(*pos, Some(line), &mut fx);
        }
        assert_eq!(fx.inconsistent, 0, "the stream is consistent");
        ledger_rows += fx.ledger.len();
        want_forwards.extend(
            fx.forwards
                .iter()
                .map(|(_, f)| (f.src.unwrap().shard, f.src.unwrap().offset, f.command_id)),
        );
        for (acc, asset, b) in state.ledger.balances() {
            let symbol = state.ledger.assets().get(asset).unwrap().symbol.clone();
            let e = replayed.entry((acc.0, symbol)).or_default();
            e.0 += b.available_units;
            e.1 += b.reserved_units;
        }
        states.push(state);
    }
    let stored = accounts::store::all_balances(&world.pool).await.unwrap();
    assert_eq!(
        stored, replayed,
        "balances after the crash equal a replay of the log"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert_eq!(rows as usize, ledger_rows, "every ledger row once");
    // Forwards are at least once: the crash may have re-sent some, never lost or changed one.
    let forwards = world.forwards(Duration::from_secs(2)).await;
    let got: BTreeSet<_> = forwards
        .iter()
        .map(|f| (f.src.unwrap().shard, f.src.unwrap().offset, f.command_id))
        .collect();
    assert_eq!(
        got, want_forwards,
        "the forwarded commands are exactly the replay's"
    );
    let placed = lines
        .iter()
        .filter(|(_, r)| matches!(r, AccountRecord::Order(_)))
        .count();
    assert!(
        want_forwards.len() > placed / 2,
        "most places were funded: {} of {placed}",
        want_forwards.len()
    );
    eprintln!(
        "stage crash: {} lines, {} forwards ({} sent in all), {} ledger rows, positions {:?}",
        lines.len(),
        want_forwards.len(),
        forwards.len(),
        ledger_rows,
        world.positions().await
    );
    // Last: it changes the stored state (snapshots moved, rows written, a deposit per shard).
    check_recovery(&world, &all, &states).await;
    Arc::try_unwrap(world)
        .ok()
        .expect("one owner")
        .drop_schema()
        .await;
}

fn fresh_state(pairs: &Arc<protocol::PairRegistry>, shard: u32) -> ShardState {
    let ledger = Ledger::new(
        AssetRegistry::from_pairs(pairs),
        LedgerConfig {
            fee_account_id: AccountId(0),
            pair_fees: BTreeMap::new(),
        },
    )
    .unwrap();
    ShardState::new(shard, SHARDS, Arc::clone(pairs), ledger)
}

fn assert_same(got: &ShardState, want: &ShardState, what: &str) {
    let shard = want.shard;
    assert_eq!(
        got.ledger.balances().collect::<Vec<_>>(),
        want.ledger.balances().collect::<Vec<_>>(),
        "shard {shard} {what}: balances"
    );
    assert_eq!(
        got.ledger.reservations().collect::<Vec<_>>(),
        want.ledger.reservations().collect::<Vec<_>>(),
        "shard {shard} {what}: reservations"
    );
    assert_eq!(got.meta, want.meta, "shard {shard} {what}: order meta");
    assert_eq!(got.pair_seqs, want.pair_seqs, "shard {shard} {what}: seqs");
    assert_eq!(
        got.transfers_seen, want.transfers_seen,
        "shard {shard} {what}: transfers"
    );
}

/// The recovery a restart takes (`accounts::actor::recover`): the stage's own snapshot plus
/// the log after it gives the full replay's state; so does a snapshot at the middle of the log
/// (half the partition replayed); and a replay that disagrees with the stored balances is
/// refused rather than run on.
async fn check_recovery(world: &World, all: &[(u32, i64, Vec<u8>)], states: &[ShardState]) {
    let stage = world.stage().await;
    let never = tokio_util::sync::CancellationToken::new();
    for (shard, want) in (0..SHARDS).zip(states) {
        let r = accounts::actor::recover(&stage, shard, &never)
            .await
            .expect("recovers from its own snapshot");
        assert_same(&r.state, want, "from the stage's snapshot");

        let lines: Vec<_> = all.iter().filter(|(s, _, _)| *s == shard).collect();
        let mid = record_offset(lines[lines.len() / 2].1);
        // A snapshot is taken at a record's end: its last line.
        let at = lines
            .iter()
            .map(|(_, p, _)| *p)
            .filter(|p| record_offset(*p) <= mid)
            .max()
            .unwrap();
        let mut early = fresh_state(&stage.pairs, shard);
        let mut fx = Effects::default();
        for (_, pos, line) in lines.iter().filter(|(_, p, _)| *p <= at) {
            early.apply_line(*pos, Some(line), &mut fx);
        }
        sqlx::query("UPDATE account_snapshots SET position = $2, state = $3 WHERE shard = $1")
            .bind(shard as i32)
            .bind(at)
            .bind(accounts::store::Snapshot::encode(&early))
            .execute(&world.pool)
            .await
            .unwrap();
        let r = accounts::actor::recover(&stage, shard, &never)
            .await
            .expect("recovers from a snapshot at the middle");
        assert!(
            r.replayed as usize >= lines.len() / 3,
            "shard {shard}: replayed {} of {} lines",
            r.replayed,
            lines.len()
        );
        assert_same(&r.state, want, "from a snapshot at the middle");
    }
    check_legacy_rows(world, &stage, states).await;
    sqlx::query(
        "UPDATE balances SET available = available + 1 WHERE shard = 0 \
         AND account_id = (SELECT min(account_id) FROM balances WHERE shard = 0)",
    )
    .execute(&world.pool)
    .await
    .unwrap();
    match accounts::actor::recover(&stage, 0, &never).await {
        Err(accounts::actor::ActorError::Store(accounts::store::StoreError::Corrupt {
            what,
            ..
        })) => assert!(what.contains("do not give the stored balances"), "{what}"),
        Err(e) => panic!("a tampered balance: {e}"),
        Ok(_) => panic!("a tampered balance was not noticed"),
    }
}

/// A stage from before snapshots left one `reservations` row per open order and no snapshot:
/// a shard recovers from those rows, and its first commit writes a snapshot and deletes them.
async fn check_legacy_rows(world: &World, stage: &accounts::actor::Stage, states: &[ShardState]) {
    let never = tokio_util::sync::CancellationToken::new();
    for (shard, want) in (0..SHARDS).zip(states) {
        sqlx::query("DELETE FROM account_snapshots WHERE shard = $1")
            .bind(shard as i32)
            .execute(&world.pool)
            .await
            .unwrap();
        for (id, r) in want.ledger.reservations() {
            let meta = want.meta.get(&id);
            let amend = meta.and_then(|m| m.amend_from);
            sqlx::query(
                "INSERT INTO reservations (order_id, shard, account_id, pair_id, side, asset, \
                   limit_price, qty, filled_qty, reserved, client_order_id, amend_from_price, \
                   amend_from_qty) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::numeric, $11, $12, $13)",
            )
            .bind(id.0 as i64)
            .bind(shard as i32)
            .bind(r.account_id.0 as i64)
            .bind(r.pair_id as i32)
            .bind(if r.side == Side::Buy { "buy" } else { "sell" })
            .bind(&want.ledger.assets().get(r.asset_id).unwrap().symbol)
            .bind(r.limit_price.map(|p| p.0))
            .bind(r.qty.0)
            .bind(r.filled_qty.0)
            .bind(r.reserved_units.to_string())
            .bind(meta.and_then(|m| m.client_order_id.clone()))
            .bind(amend.map(|(p, _)| p.0))
            .bind(amend.map(|(_, q)| q.0))
            .execute(&world.pool)
            .await
            .unwrap();
        }
        let r = accounts::actor::recover(stage, shard, &never)
            .await
            .expect("recovers from the rows of a stage from before snapshots");
        assert!(r.snapshot_due, "shard {shard}: a snapshot is due");
        assert_eq!(r.replayed, 0);
        assert_same(&r.state, want, "from reservation rows");
    }
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations")
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert!(open > 0, "the stream leaves open orders");
    // One deposit per shard makes each commit once.
    let lines: Vec<_> = (0..SHARDS)
        .map(|s| {
            let account = (1..).find(|a| shard_of(*a) == s).unwrap();
            deposit(900_000 + u64::from(s), account, "EUR", 1)
        })
        .collect();
    let child = world.start_stage();
    let positions = world.produce(&world.producer(), &lines).await;
    let want: BTreeMap<u32, i64> = lines.iter().map(|(s, _)| *s).zip(positions).collect();
    world.wait_committed(&want, Duration::from_secs(60)).await;
    stop(child);
    let (rows, snapshots): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM reservations), (SELECT count(*) FROM account_snapshots)",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(
        (rows, snapshots),
        (0, i64::from(SHARDS)),
        "the first commits replaced the rows with snapshots"
    );
}
