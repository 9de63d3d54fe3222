//! The settlement feed: with an `accounts` topic, what each command line decided that moves
//! funds (trades, done, amends, rejected places and amends) goes to the partition of each
//! account shard it touches, one `settle` line per command line and shard, keyed by the pair,
//! with the seq of its last event; a restart sends the same lines again (same seq, same bytes),
//! so a shard that drops seq <= its last sees each exactly once. Without the topic the engine
//! refuses to start. Its own test binary: one test serves metrics and injects a fault.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::faults::*;
use common::*;
use protocol::accounts::{AccountRecord, SettleRecord, account_shard};
use protocol::records::{EventRecord, OrderRecord, RECORD_VERSION};
use protocol::{
    AccountId, AmendOrder, CancelOrder, Command, CommandKind, Event, EventBody, OrderId, OrderRef,
    Qty, Side,
};

/// The test's own reading of the contract: the events of one command line that move funds of
/// an account in `shard`.
fn for_shard(events: &[Event], shard: u32, shards: u32) -> Vec<Event> {
    let in_shard = |a: &AccountId| account_shard(*a, shards) == shard;
    events
        .iter()
        .filter(|e| match &e.body {
            EventBody::Trade {
                maker_account_id,
                taker_account_id,
                ..
            } => in_shard(maker_account_id) || in_shard(taker_account_id),
            EventBody::Done { account_id, .. } | EventBody::Amended { account_id, .. } => {
                in_shard(account_id)
            }
            EventBody::Rejected {
                account_id: Some(a),
                command: Some(CommandKind::Place | CommandKind::Amend),
                ..
            } => in_shard(a),
            _ => false,
        })
        .cloned()
        .collect()
}

/// What each shard must receive from a pair, in order, given the pair's answers in order.
fn expected(pair: &str, answers: &[&EventRecord], shards: u32) -> BTreeMap<u32, Vec<SettleRecord>> {
    let mut out: BTreeMap<u32, Vec<SettleRecord>> = BTreeMap::new();
    for r in answers {
        for shard in 0..shards {
            let events = for_shard(&r.events, shard, shards);
            if let Some(last) = events.last() {
                out.entry(shard).or_default().push(SettleRecord {
                    v: RECORD_VERSION,
                    pair: pair.to_owned(),
                    seq: last.seq,
                    events,
                });
            }
        }
    }
    out
}

/// A settle line as sent (its bytes) and as read.
type Sent = (Vec<u8>, SettleRecord);

/// Every settle line of the accounts topic, per (pair, shard) in log order.
async fn settle_lines(world: &World, shards: usize) -> BTreeMap<(String, u32), Vec<Sent>> {
    let topic = world.accounts_topic.as_deref().expect("an accounts topic");
    let mut out: BTreeMap<(String, u32), Vec<Sent>> = BTreeMap::new();
    for l in world.read_lines(topic, shards).await {
        let AccountRecord::Settle(s) = AccountRecord::decode(&l.line).expect("decodes") else {
            panic!("the engine sends only settle lines");
        };
        assert_eq!(l.key.as_deref(), Some(s.pair.as_str()), "keyed by the pair");
        out.entry((s.pair.clone(), l.partition as u32))
            .or_default()
            .push((l.line, s));
    }
    out
}

/// What a shard applies: each line whose seq is above the last it applied. A line at or below
/// it must be a byte-identical copy of the one first sent with that seq. Returns the applied
/// lines and how many copies were dropped.
fn as_a_shard_applies(lines: &[Sent]) -> (Vec<SettleRecord>, usize) {
    let mut first: HashMap<u64, &[u8]> = HashMap::new();
    let mut applied = Vec::new();
    let mut dropped = 0;
    let mut last = 0;
    for (bytes, s) in lines {
        match first.get(&s.seq) {
            Some(prev) => assert_eq!(*prev, &bytes[..], "seq {} sent again differently", s.seq),
            None => {
                first.insert(s.seq, bytes);
            }
        }
        if s.seq <= last {
            dropped += 1;
            continue;
        }
        last = s.seq;
        applied.push(s.clone());
    }
    (applied, dropped)
}

fn cancel(command_id: u64, account: u64, order_id: u64) -> OrderRecord {
    let mut r = limit(command_id, "BTC-EUR", 0, account, Side::Buy, 1, 1);
    r.command = Command::Cancel(CancelOrder {
        account_id: AccountId(account),
        target: OrderRef::Id(OrderId(order_id)),
    });
    r
}

fn amend(command_id: u64, account: u64, order_id: u64, new_qty: i64) -> OrderRecord {
    let mut r = limit(command_id, "BTC-EUR", 0, account, Side::Buy, 1, 1);
    r.command = Command::Amend(AmendOrder {
        account_id: AccountId(account),
        target: OrderRef::Id(OrderId(order_id)),
        new_price: None,
        new_qty: Some(Qty(new_qty)),
    });
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settlements_go_to_the_shards_of_the_accounts_they_move() {
    let Some(stack) = stack("settle") else { return };
    // Two shards: even accounts in 0, odd ones in 1.
    let world = World::new(stack, "settle").await.with_accounts(2).await;
    const P: i64 = 5_000_000;
    let records = vec![
        // 0: account 2 (shard 0) rests a sell: nothing moves yet.
        limit(1, "BTC-EUR", 101, 2, Side::Sell, P, 10_000_000),
        // 1: account 3 (shard 1) takes 4 of it: the trade to both, the taker's done to 1.
        limit(2, "BTC-EUR", 102, 3, Side::Buy, P, 4_000_000),
        // 2: account 2 cancels the rest: its done to shard 0.
        cancel(3, 2, 101),
        // 3: a cancel of an unknown order is rejected: nothing moves.
        cancel(4, 3, 999),
        // 4: an off-lot place by account 3 is rejected: shard 1 releases its reservation.
        limit(5, "BTC-EUR", 105, 3, Side::Buy, P, 4_000_001),
        // 5, 6: accounts 2 and 4, both shard 0, trade: one line, the trade in it once.
        limit(6, "BTC-EUR", 106, 2, Side::Sell, P, 1_000_000),
        limit(7, "BTC-EUR", 107, 4, Side::Buy, P, 1_000_000),
        // 7, 8: account 5 (shard 1) rests a sell and amends it down.
        limit(8, "BTC-EUR", 108, 5, Side::Sell, P + 10, 3_000_000),
        amend(9, 5, 108, 2_000_000),
        // 9: an amend of an unknown order is rejected: shard 1 restores the old terms.
        amend(10, 5, 999, 1_000_000),
    ];
    world.produce(&records).await;
    // ETH-EUR, same shards: its lines carry its own pair and seq.
    world
        .produce(&[
            limit(11, "ETH-EUR", 201, 7, Side::Sell, 300_000, 100_000_000),
            limit(12, "ETH-EUR", 202, 8, Side::Buy, 300_000, 100_000_000),
        ])
        .await;
    let mut config = world.config();
    config.static_pairs = Some(vec!["BTC-EUR".into(), "ETH-EUR".into()]);
    let (stop, engine) = spawn_engine(config);
    world
        .wait_applied(&HashMap::from([(0, 9), (1, 1)]), Duration::from_secs(30))
        .await;
    stop.cancel();
    engine.await.unwrap().unwrap();

    let events = world.read_events(12, Duration::from_secs(30)).await;
    let lines = settle_lines(&world, 2).await;
    for pair in ["BTC-EUR", "ETH-EUR"] {
        let answers: Vec<&EventRecord> = events.iter().filter(|r| r.pair == pair).collect();
        let want = expected(pair, &answers, 2);
        for shard in 0..2 {
            let got: Vec<SettleRecord> = lines
                .get(&(pair.to_owned(), shard))
                .map(|l| l.iter().map(|(_, s)| s.clone()).collect())
                .unwrap_or_default();
            assert_eq!(
                got,
                want.get(&shard).cloned().unwrap_or_default(),
                "{pair} shard {shard}"
            );
        }
    }

    // The same, spelled out for BTC-EUR.
    let kinds = |shard: u32| -> Vec<(u64, Vec<&'static str>)> {
        lines[&("BTC-EUR".to_owned(), shard)]
            .iter()
            .map(|(_, s)| {
                let names = s
                    .events
                    .iter()
                    .map(|e| match &e.body {
                        EventBody::Trade { .. } => "trade",
                        EventBody::Done { .. } => "done",
                        EventBody::Amended { .. } => "amended",
                        EventBody::Rejected { .. } => "rejected",
                        _ => "other",
                    })
                    .collect();
                (s.seq, names)
            })
            .collect()
    };
    let seq_of = |offset: i64, pred: &dyn Fn(&EventBody) -> bool| -> u64 {
        events
            .iter()
            .find(|r| r.pair == "BTC-EUR" && r.orders_offset == offset)
            .and_then(|r| r.events.iter().rev().find(|e| pred(&e.body)))
            .map(|e| e.seq)
            .expect("the event")
    };
    let trade = |b: &EventBody| matches!(b, EventBody::Trade { .. });
    let done = |b: &EventBody| matches!(b, EventBody::Done { .. });
    let any_fund = |b: &EventBody| !matches!(b, EventBody::BookLevel { .. });
    assert_eq!(
        kinds(0),
        vec![
            (seq_of(1, &trade), vec!["trade"]),
            (seq_of(2, &done), vec!["done"]),
            (seq_of(6, &done), vec!["trade", "done", "done"]),
        ],
        "shard 0: the maker's side of the trade, the cancel's done, the shared trade once"
    );
    assert_eq!(
        kinds(1),
        vec![
            (seq_of(1, &done), vec!["trade", "done"]),
            (seq_of(4, &any_fund), vec!["rejected"]),
            (seq_of(8, &any_fund), vec!["amended"]),
            (seq_of(9, &any_fund), vec!["rejected"]),
        ],
        "shard 1: the taker's trade and done, the rejected place, the amend, the rejected amend"
    );
    world.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settlements_sent_again_after_a_restart_are_the_same_lines() {
    infra::telemetry::init_tracing_with_default("error");
    let Some(stack) = stack("settle_restart") else {
        return;
    };
    const SHARDS: u32 = 3;
    let world = World::new(stack, "settle_restart")
        .await
        .with_accounts(SHARDS as usize)
        .await;
    let specs: Vec<_> = world.registry.iter().take(PAIRS).cloned().collect();
    // The commit holding pair 0's record FAULT_OFFSET fails after its batch went out: the actor
    // restarts from PostgreSQL and sends that batch's settlements (and any after it) again.
    produce_with_fault(&world, &specs, "commit").await;
    run_to_the_end(&world, &specs).await;
    verify_against_replay(&world, &specs, PER_PAIR).await;

    let events = world
        .read_all_events(specs.len() * PER_PAIR, Duration::from_secs(60))
        .await;
    let lines = settle_lines(&world, SHARDS as usize).await;
    for spec in &specs {
        // The pair's answers once each, in log order.
        let mut answers: BTreeMap<(i64, Option<u64>), &EventRecord> = BTreeMap::new();
        for r in events.iter().filter(|r| r.pair == spec.symbol) {
            answers.entry((r.orders_offset, r.command_id)).or_insert(r);
        }
        let mut answers: Vec<&EventRecord> = answers.into_values().collect();
        answers.sort_by_key(|r| r.events.first().map(|e| e.seq));
        let want = expected(&spec.symbol, &answers, SHARDS);
        let mut dropped_total = 0;
        for shard in 0..SHARDS {
            let sent = lines
                .get(&(spec.symbol.clone(), shard))
                .cloned()
                .unwrap_or_default();
            let (applied, dropped) = as_a_shard_applies(&sent);
            dropped_total += dropped;
            let want = want.get(&shard).cloned().unwrap_or_default();
            assert!(
                want.len() > 10,
                "{} shard {shard}: a real stream",
                spec.symbol
            );
            assert_eq!(
                applied.len(),
                want.len(),
                "{} shard {shard}: each line exactly once",
                spec.symbol
            );
            assert!(
                applied == want,
                "{} shard {shard}: lines differ",
                spec.symbol
            );
        }
        if spec.id == specs[0].id {
            assert!(
                dropped_total > 0,
                "the restart sent {}'s uncommitted settlements again",
                spec.symbol
            );
        } else {
            assert_eq!(dropped_total, 0, "{} never restarted", spec.symbol);
        }
    }
    world.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_accounts_topic_stops_the_start() {
    let Some(stack) = stack("settle_missing") else {
        return;
    };
    let world = World::new(stack, "settle_missing").await;
    let mut config = world.config();
    config.accounts_topic = Some(format!("no_such_topic_{}", world.schema));
    config.static_pairs = Some(vec!["BTC-EUR".into()]);
    let (_stop, engine) = spawn_engine(config);
    let result = tokio::time::timeout(Duration::from_secs(30), engine)
        .await
        .expect("the engine gives up at once")
        .unwrap();
    let err = result.expect_err("no accounts topic, no start");
    assert!(
        matches!(err, engine::EngineError::AccountsTopicMissing(_)),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
    world.drop_schema().await;
}
