//! The gateway's side of the account stage, against a real gateway, Kafka and PostgreSQL, with
//! the test playing the stage at the Kafka level: it reads what the gateway writes to
//! `accounts` and writes the stage's answers to `account_events`.

mod common;

use std::time::Duration;

use common::*;
use gateway::Limits;
use protocol::accounts::{AccountEventRecord, AccountRecord, BalanceLine, Refusal, account_shard};
use protocol::records::{OrderRecord, RECORD_VERSION};
use protocol::{AccountId, Command, CommandKind};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{Value, json};

const SHARDS: u32 = 2;

/// Every line of every partition of `topic` from the beginning: (partition, line).
fn consumer_of(stack: &Stack, topic: &str, partitions: u32) -> StreamConsumer {
    let consumer: StreamConsumer =
        infra::kafka::client_config(&stack.env.brokers, "gw-test", infra::kafka::Role::Consumer)
            .set("group.id", unique("gw-test"))
            .create()
            .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

async fn answer(stack: &Stack, producer: &FutureProducer, rec: &AccountEventRecord) {
    producer
        .send(
            FutureRecord::to(stack.account_events_topic.as_deref().unwrap())
                .partition(rec.shard as i32)
                .key(&rec.shard.to_string())
                .payload(&rec.encode()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

fn shard_of(stack: &Stack, i: usize) -> u32 {
    account_shard(AccountId(stack.creds[i].account_id), SHARDS)
}

#[tokio::test]
async fn place_and_amend_go_to_the_accounts_shard_and_cancels_to_orders() {
    let Some(stack) = start_with_accounts(Limits::default(), 2, SHARDS as usize).await else {
        return;
    };
    assert_ne!(shard_of(&stack, 0), shard_of(&stack, 1), "both shards used");
    let accounts = consumer_of(&stack, stack.accounts_topic.as_deref().unwrap(), SHARDS);
    let orders = stack.orders_consumer();
    let mut placed = Vec::new();
    for i in 0..2 {
        let mut c = stack.logged_in(i).await;
        let r = c
            .request("place", place_params("BTC-EUR", "buy", "100.10", "0.5"))
            .await;
        let order_id = r["result"]["order_id"].as_u64().expect("received");
        placed.push(order_id);
        let r = c
            .request(
                "amend",
                json!({"pair": "BTC-EUR", "order_id": order_id, "qty": "0.25"}),
            )
            .await;
        assert_eq!(r["result"]["status"], "received", "{r}");
        let r = c
            .request("cancel", json!({"pair": "BTC-EUR", "order_id": order_id}))
            .await;
        assert_eq!(r["result"]["status"], "received", "{r}");
    }
    // Every line on `accounts` is an order line; the places and amends, each in its account's
    // shard.
    let lines = tokio::time::timeout(WAIT, async {
        let mut lines = Vec::new();
        while lines.len() < 4 {
            let m = accounts.recv().await.unwrap();
            for line in protocol::records::command_lines(m.payload()) {
                match AccountRecord::decode(line.unwrap()).expect("an AccountRecord line") {
                    AccountRecord::Order(o) => lines.push((m.partition() as u32, o)),
                    other => panic!("not an order line: {other:?}"),
                }
            }
        }
        lines
    })
    .await
    .expect("places and amends on the accounts topic in time");
    for (i, order_id) in placed.iter().enumerate() {
        let account = stack.creds[i].account_id;
        let mine: Vec<&(u32, OrderRecord)> = lines
            .iter()
            .filter(|(_, o)| o.command.account_id().0 == account)
            .collect();
        assert_eq!(mine.len(), 2, "{lines:?}");
        for (partition, rec) in &mine {
            assert_eq!(*partition, shard_of(&stack, i), "the account's shard");
            assert_eq!(rec.pair, "BTC-EUR");
            assert_eq!(rec.src, None);
        }
        let Command::Place(p) = &mine[0].1.command else {
            panic!("not a place first: {mine:?}")
        };
        assert_eq!(p.order_id.0, *order_id);
        assert_eq!(mine[0].1.command_id, *order_id);
        assert_eq!(mine[1].1.command.kind(), CommandKind::Amend);
    }
    // The cancels went straight to `orders`, and nothing else did: a place or amend there would
    // come before them (each was acknowledged before the cancel was sent).
    let on_orders = stack.wait_orders(&orders, 2, |_, _, _| true).await;
    for (partition, rec) in &on_orders {
        assert_eq!(*partition, 0, "BTC-EUR's partition");
        assert_eq!(rec.command.kind(), CommandKind::Cancel, "{rec:?}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn a_refusal_answers_the_place_like_an_engine_rejection() {
    let Some(stack) = start_with_accounts(Limits::default(), 1, SHARDS as usize).await else {
        return;
    };
    let producer = stack.producer();
    let mut c = stack.logged_in(0).await;
    let mut sibling = stack.logged_in(0).await;
    c.send_text(
        json!({"id": 41, "method": "place",
               "params": {"pair": "ETH-EUR", "side": "buy", "type": "limit", "price": "2000.00",
                          "qty": "1.5", "client_order_id": "mine-1"}})
        .to_string(),
    )
    .await;
    let r = c.response_to(41).await;
    let order_id = r["result"]["order_id"].as_u64().expect("received");
    let shard = shard_of(&stack, 0);
    answer(
        &stack,
        &producer,
        &AccountEventRecord {
            v: RECORD_VERSION,
            shard,
            accounts_offset: 12,
            command_id: Some(order_id),
            ts_ns: Some(1_700_000_000_555_000_000),
            account_id: None,
            transfer_id: None,
            refusal: Some(Refusal {
                code: "insufficient_funds".into(),
                message: "EUR: 3000 needed, 0 available".into(),
            }),
            balances: vec![],
        },
    )
    .await;
    // Heartbeats keep a connection busy, so the wait needs its own bound.
    let rejected = tokio::time::timeout(WAIT, c.push_where(|p| p["channel"] == "orders"))
        .await
        .expect("the refusal pushed in time");
    assert_eq!(
        rejected,
        json!({"channel": "orders", "pair": "ETH-EUR", "req_id": 41, "type": "rejected",
               "order_id": order_id, "client_order_id": "mine-1", "command": "place",
               "command_id": order_id, "code": "insufficient_funds", "message": "EUR: 3000 needed, 0 available",
               "shard": shard, "accounts_offset": 12, "ts_ms": 1_700_000_000_555_u64})
    );
    // The account's other connection sees it too, without the request id.
    let seen = tokio::time::timeout(WAIT, sibling.push_where(|p| p["channel"] == "orders"))
        .await
        .expect("the refusal pushed to the sibling in time");
    assert_eq!(seen["code"], "insufficient_funds");
    assert_eq!(seen.get("req_id"), None, "{seen}");
    stack.stop().await;
}

/// `quote_qty` reaches the stage as the market buy's `quote_budget`, in notional units; on
/// anything but a market buy it is refused before Kafka.
#[tokio::test]
async fn quote_qty_becomes_the_market_buys_quote_budget() {
    let Some(stack) = start_with_accounts(Limits::default(), 1, SHARDS as usize).await else {
        return;
    };
    let accounts = consumer_of(&stack, stack.accounts_topic.as_deref().unwrap(), SHARDS);
    let mut c = stack.logged_in(0).await;
    let r = c
        .request(
            "place",
            json!({"pair": "BTC-EUR", "side": "sell", "type": "market", "qty": "0.1",
                   "quote_qty": "10"}),
        )
        .await;
    assert_eq!(error_code(&r), "invalid_params", "{r}");
    let r = c
        .request(
            "place",
            json!({"pair": "BTC-EUR", "side": "buy", "type": "market", "qty": "0.1",
                   "quote_qty": "250.5"}),
        )
        .await;
    let order_id = r["result"]["order_id"].as_u64().expect("received");
    let place = tokio::time::timeout(WAIT, async {
        loop {
            let m = accounts.recv().await.unwrap();
            for line in protocol::records::command_lines(m.payload()) {
                if let AccountRecord::Order(o) = AccountRecord::decode(line.unwrap()).unwrap()
                    && let Command::Place(p) = o.command
                {
                    return p;
                }
            }
        }
    })
    .await
    .expect("the place on the accounts topic");
    assert_eq!(place.order_id.0, order_id);
    // BTC-EUR: 2 price + 8 quantity decimals.
    assert_eq!(place.quote_budget, Some(2_505 * 10_i128.pow(9)));
    stack.stop().await;
}

/// The stage's answer names the account, so a refusal reaches every connection of it even on
/// a gateway that never saw the command (another gateway wrote it, or this one forgot it): only
/// the pair, kind and order it named are missing, and the command id says which it was.
#[tokio::test]
async fn a_refusal_naming_the_account_reaches_it_without_the_request() {
    let Some(stack) = start_with_accounts(Limits::default(), 2, SHARDS as usize).await else {
        return;
    };
    let producer = stack.producer();
    let mut c = stack.logged_in(0).await;
    let mut sibling = stack.logged_in(0).await;
    let mut other = stack.logged_in(1).await;
    let shard = shard_of(&stack, 0);
    let foreign_command = 1 << 52;
    let refusal = |offset, command_id, account| AccountEventRecord {
        v: RECORD_VERSION,
        shard,
        accounts_offset: offset,
        command_id: Some(command_id),
        ts_ns: Some(1_700_000_000_999_000_000),
        account_id: Some(AccountId(account)),
        transfer_id: None,
        refusal: Some(Refusal {
            code: "insufficient_funds".into(),
            message: "BTC: 1 needed, 0 available".into(),
        }),
        balances: vec![],
    };
    answer(
        &stack,
        &producer,
        &refusal(30, foreign_command, stack.creds[0].account_id),
    )
    .await;
    let want = json!({"channel": "orders", "type": "rejected", "command_id": foreign_command,
                      "code": "insufficient_funds", "message": "BTC: 1 needed, 0 available",
                      "shard": shard, "accounts_offset": 30, "ts_ms": 1_700_000_000_999_u64});
    for conn in [&mut c, &mut sibling] {
        let seen = tokio::time::timeout(WAIT, conn.push_where(|p| p["channel"] == "orders"))
            .await
            .expect("the refusal pushed in time");
        assert_eq!(seen, want);
    }

    // A command this gateway wrote and remembers: the requester gets its req_id and the
    // order's details, the sibling the same without req_id, and both get it once.
    let r = c
        .request("place", place_params("BTC-EUR", "sell", "100.00", "0.5"))
        .await;
    let order_id = r["result"]["order_id"].as_u64().expect("received");
    answer(
        &stack,
        &producer,
        &refusal(31, order_id, stack.creds[0].account_id),
    )
    .await;
    let mine = tokio::time::timeout(WAIT, c.push_where(|p| p["channel"] == "orders"))
        .await
        .expect("the refusal pushed in time");
    assert_eq!(mine["req_id"], r["id"], "{mine}");
    assert_eq!(mine["pair"], "BTC-EUR");
    assert_eq!(mine["order_id"], order_id);
    assert_eq!(mine["command"], "place");
    let seen = tokio::time::timeout(WAIT, sibling.push_where(|p| p["channel"] == "orders"))
        .await
        .expect("the refusal pushed to the sibling in time");
    assert_eq!(seen.get("req_id"), None, "{seen}");
    assert_eq!(seen["order_id"], order_id);
    // The other account saw none of it.
    let r = other.request("ping", Value::Null).await;
    assert!(r["result"]["ts_ms"].is_u64());
    assert!(
        other.pushes.iter().all(|p| p["channel"] != "orders"),
        "{:?}",
        other.pushes
    );
    for conn in [&mut c, &mut sibling] {
        conn.request("ping", Value::Null).await;
        assert!(
            conn.pushes.iter().all(|p| p["channel"] != "orders"),
            "pushed twice: {:?}",
            conn.pushes
        );
    }
    stack.stop().await;
}

fn line(account: u64, asset: &str, available: i128, reserved: i128) -> BalanceLine {
    BalanceLine {
        account_id: AccountId(account),
        asset: asset.into(),
        available_units: available,
        reserved_units: reserved,
    }
}

#[tokio::test]
async fn a_balance_line_reaches_a_subscriber_once_even_when_sent_twice() {
    let Some(stack) = start_with_accounts(Limits::default(), 2, SHARDS as usize).await else {
        return;
    };
    let producer = stack.producer();
    let account = stack.creds[0].account_id;
    let shard = shard_of(&stack, 0);
    let mut anonymous = stack.client().await;
    let r = anonymous
        .request("subscribe", json!({"channel": "balances"}))
        .await;
    assert_eq!(error_code(&r), "unauthenticated");
    let mut c = stack.logged_in(0).await;
    let r = c.request("subscribe", json!({"channel": "balances"})).await;
    assert_eq!(r["result"], json!({"channel": "balances"}), "{r}");

    // EUR has 10 decimals, BTC 14 (docs/ARCHITECTURE.md, "Assets").
    let first = AccountEventRecord {
        v: RECORD_VERSION,
        shard,
        accounts_offset: 7,
        command_id: None,
        ts_ns: None,
        account_id: None,
        transfer_id: Some(1),
        refusal: None,
        balances: vec![line(account, "EUR", 1_000_000_000_000, 5)],
    };
    answer(&stack, &producer, &first).await;
    // A restarted shard sends the same answer again; then the next one.
    answer(&stack, &producer, &first).await;
    let next = AccountEventRecord {
        accounts_offset: 8,
        balances: vec![
            line(account, "BTC", 25 * 10_i128.pow(12), 0),
            // Another account's line is not this connection's business.
            line(stack.creds[1].account_id, "EUR", 1, 1),
        ],
        ..first.clone()
    };
    answer(&stack, &producer, &next).await;

    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got.len() < 2 {
            got.push(c.push_where(|p| p["channel"] == "balances").await);
        }
    })
    .await
    .expect("two balance pushes");
    assert_eq!(
        got,
        vec![
            json!({"channel": "balances", "asset": "EUR", "available": "100.0000000000",
                   "reserved": "0.0000000005", "shard": shard, "accounts_offset": 7}),
            json!({"channel": "balances", "asset": "BTC", "available": "0.25000000000000",
                   "reserved": "0.00000000000000", "shard": shard, "accounts_offset": 8}),
        ]
    );
    // Nothing else came: a ping's answer arrives after anything already queued.
    let r = c.request("ping", Value::Null).await;
    assert!(r["result"]["ts_ms"].is_u64());
    assert!(
        c.pushes.iter().all(|p| p["channel"] != "balances"),
        "a repeat was pushed: {:?}",
        c.pushes
    );
    stack.stop().await;
}

#[tokio::test]
async fn the_balances_query_reads_committed_rows_and_names_the_shard_offset() {
    let Some(stack) = start_with_accounts(Limits::default(), 2, SHARDS as usize).await else {
        return;
    };
    let account = stack.creds[0].account_id as i64;
    let shard = shard_of(&stack, 0) as i32;
    let mut c = stack.logged_in(0).await;

    // Nothing committed yet: no balances, and every push counts.
    let r = c.request("balances", Value::Null).await;
    assert_eq!(
        r["result"],
        json!({"balances": [], "shard": shard, "as_of_offset": -1}),
        "{r}"
    );

    let insert = "INSERT INTO balances (account_id, asset, shard, available, reserved, \
                  accounts_offset) VALUES ($1, $2, $3, $4::numeric, $5::numeric, $6)";
    for (acct, asset, sh, available, reserved, offset) in [
        (
            account,
            "EUR",
            shard,
            "1234500000000",
            "10000000000",
            40_i64,
        ),
        // An account with rows in two shards (as the fee account has): the sum.
        (account, "BTC", shard, "100000000000000", "0", 41),
        (account, "BTC", 1 - shard, "50000000000000", "1", 3),
        // Another account's row is not in the answer.
        (account + 1, "EUR", 1 - shard, "999", "0", 4),
    ] {
        sqlx::query(insert)
            .bind(acct)
            .bind(asset)
            .bind(sh)
            .bind(available)
            .bind(reserved)
            .bind(offset)
            .execute(&stack.pool)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO account_shards (shard, last_offset) VALUES ($1, 41), ($2, 9)")
        .bind(shard)
        .bind(1 - shard)
        .execute(&stack.pool)
        .await
        .unwrap();

    let r = c.request("balances", json!({})).await;
    assert_eq!(
        r["result"],
        json!({"balances": [
                  {"asset": "BTC", "available": "1.50000000000000", "reserved": "0.00000000000001"},
                  {"asset": "EUR", "available": "123.4500000000", "reserved": "1.0000000000"}],
               "shard": shard, "as_of_offset": 41}),
        "{r}"
    );
    let r = c.request("balances", json!({"asset": "EUR"})).await;
    assert_eq!(
        r["result"]["balances"],
        json!([{"asset": "EUR", "available": "123.4500000000", "reserved": "1.0000000000"}]),
        "{r}"
    );
    let r = c.request("balances", json!({"asset": "DOGE"})).await;
    assert_eq!(error_code(&r), "unknown_asset");
    stack.stop().await;
}

#[tokio::test]
async fn without_the_stage_balances_is_refused_and_place_goes_to_orders() {
    let Some(stack) = start(Limits::default(), 1).await else {
        return;
    };
    let orders = stack.orders_consumer();
    let mut c = stack.logged_in(0).await;
    let r = c.request("balances", Value::Null).await;
    assert_eq!(error_code(&r), "accounts_disabled");
    let r = c.request("subscribe", json!({"channel": "balances"})).await;
    assert_eq!(error_code(&r), "accounts_disabled");
    let r = c
        .request("place", place_params("BTC-EUR", "sell", "100.10", "0.5"))
        .await;
    let order_id = r["result"]["order_id"].as_u64().expect("received");
    let found = stack
        .wait_orders(&orders, 1, |_, _, rec| rec.command_id == order_id)
        .await;
    assert_eq!(found[0].0, 0);
    stack.stop().await;
}

#[tokio::test]
async fn a_missing_accounts_topic_stops_the_start_with_a_clear_error() {
    let Some(stack) = start(Limits::default(), 0).await else {
        return;
    };
    let mut limits = Limits::default();
    limits.accounts.accounts_topic = Some(unique("no_such_accounts_topic"));
    let config = gateway::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        brokers: stack.env.brokers.clone(),
        database_url: stack.db_url.clone(),
        pairs: std::sync::Arc::clone(&stack.pairs),
        orders_topic: stack.orders_topic.clone(),
        events_topic: stack.events_topic.clone(),
        gateway_id: 3,
        limits,
    };
    let started = gateway::run(config, tokio_util::sync::CancellationToken::new()).await;
    let err = started.expect_err("no gateway without its accounts topic");
    let text = err.to_string();
    assert!(
        text.contains("no_such_accounts_topic") && text.contains("GW_ACCOUNTS_TOPIC"),
        "{text}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn provision_funding_deposits_to_each_accounts_shard() {
    let Some(stack) = start_with_accounts(Limits::default(), 2, SHARDS as usize).await else {
        return;
    };
    let topic = stack.accounts_topic.clone().unwrap();
    let assets = accounts_core::AssetRegistry::from_pairs(&stack.pairs);
    let funding = gateway::provision::parse_funding("EUR=1000.5,BTC=2", &assets).unwrap();
    let written =
        gateway::provision::fund(&stack.producer(), &topic, SHARDS, &stack.creds, &funding)
            .await
            .unwrap();
    assert_eq!(written, 4);
    let consumer = consumer_of(&stack, &topic, SHARDS);
    let mut transfers = Vec::new();
    tokio::time::timeout(WAIT, async {
        while transfers.len() < 4 {
            let m = consumer.recv().await.unwrap();
            for line in protocol::records::command_lines(m.payload()) {
                match AccountRecord::decode(line.unwrap()).unwrap() {
                    AccountRecord::Transfer(t) => transfers.push((m.partition() as u32, t)),
                    other => panic!("not a transfer: {other:?}"),
                }
            }
        }
    })
    .await
    .expect("the deposits in time");
    let mut ids: Vec<u64> = transfers.iter().map(|(_, t)| t.transfer_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "unique transfer ids");
    for (i, c) in stack.creds.iter().enumerate() {
        let mine: Vec<_> = transfers
            .iter()
            .filter(|(_, t)| t.account_id.0 == c.account_id)
            .collect();
        assert_eq!(mine.len(), 2);
        for (partition, t) in mine {
            assert_eq!(*partition, shard_of(&stack, i));
            assert_eq!(t.direction, protocol::accounts::TransferDirection::Deposit);
            let want = match t.asset.as_str() {
                "EUR" => 10_005 * 10_i128.pow(9),
                "BTC" => 2 * 10_i128.pow(14),
                other => panic!("{other}"),
            };
            assert_eq!(t.amount_units, want, "{t:?}");
        }
    }
    stack.stop().await;
}
