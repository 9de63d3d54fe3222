//! Records written straight into a scenario's topics, past the gateway: copies of records
//! already there (a producer's retry or a broker's redelivery) and records no gateway would
//! write (poison). Each kind is counted, so the suite can say what the services made of it.

use std::time::Duration;

use anyhow::{Context as _, Result};
use protocol::accounts::AccountRecord;
use rdkafka::Message as _;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::world::World;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Injected {
    /// `orders` records written again, unchanged, to their own partition.
    pub orders_copies: u64,
    /// Of their command lines, those an account shard forwarded (the engine skips them by source).
    pub orders_copied_forwarded_lines: u64,
    /// `accounts` records of settlements and transfers written again (the stage skips them).
    pub accounts_copies: u64,
    /// Poison command lines in `orders`: not JSON, another pair's symbol, an unknown version.
    pub orders_poison_lines: u64,
}

/// Up to `n` records of `topic`'s `partition` from its start.
fn read_some(world: &World, topic: &str, partition: i32, n: usize) -> Result<Vec<Vec<u8>>> {
    let consumer: BaseConsumer =
        infra::kafka::client_config(&world.brokers, "chaos-inject", infra::kafka::Role::Consumer)
            .set("group.id", format!("chaos-inject-{}", world.name))
            .create()
            .context("create the injecting consumer")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while out.len() < n && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200))
            && let Some(p) = m.payload()
        {
            out.push(p.to_vec());
        }
    }
    Ok(out)
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    payload: &[u8],
) -> Result<()> {
    producer
        .send(
            FutureRecord::<(), [u8]>::to(topic)
                .partition(partition)
                .payload(payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("produce to {topic}/{partition}"))?;
    Ok(())
}

/// One round: for each pair partition, copies of its first records and three poison lines; for
/// each account shard, copies of its settlement and transfer records.
pub async fn round(world: &World, pairs: &[String], shards: i32, out: &mut Injected) -> Result<()> {
    let producer: FutureProducer =
        infra::kafka::client_config(&world.brokers, "chaos-inject", infra::kafka::Role::Producer)
            .create()
            .context("create the injecting producer")?;
    for (partition, pair) in pairs.iter().enumerate() {
        let partition = partition as i32;
        let records = {
            let w = world;
            let topic = w.orders_topic.clone();
            tokio::task::block_in_place(|| read_some(w, &topic, partition, 5))?
        };
        for payload in records {
            let forwarded = protocol::records::command_lines(Some(&payload))
                .into_iter()
                .flatten()
                .filter_map(|l| protocol::records::OrderRecord::decode(l).ok())
                .filter(|r| r.src.is_some())
                .count();
            send(&producer, &world.orders_topic, partition, &payload).await?;
            out.orders_copies += 1;
            out.orders_copied_forwarded_lines += forwarded as u64;
        }
        let other = pairs
            .iter()
            .find(|p| *p != pair)
            .cloned()
            .unwrap_or_default();
        // A well-formed command for another pair (of an account that does not exist, should it
        // ever be applied): the engine must answer `wrong_pair` and apply nothing.
        let wrong_pair = serde_json::to_string(&protocol::records::OrderRecord {
            v: protocol::records::RECORD_VERSION,
            command_id: (1 << 62) + out.orders_poison_lines,
            pair: other,
            ts_ns: 1,
            src: None,
            tp: None,
            command: protocol::Command::CancelAll(protocol::CancelAll {
                account_id: protocol::AccountId(999_999_999),
            }),
        })?;
        let poison = [
            b"this is not json".to_vec(),
            wrong_pair.into_bytes(),
            br#"{"v":999,"command_id":2,"pair":"X","ts_ns":1}"#.to_vec(),
        ];
        let mut packed = Vec::new();
        for (i, line) in poison.iter().enumerate() {
            if i > 0 {
                packed.push(b'\n');
            }
            packed.extend_from_slice(line);
        }
        send(&producer, &world.orders_topic, partition, &packed).await?;
        out.orders_poison_lines += poison.len() as u64;
    }
    for shard in 0..shards {
        let records = {
            let w = world;
            let topic = w.accounts_topic.clone();
            tokio::task::block_in_place(|| read_some(w, &topic, shard, 50))?
        };
        for payload in records {
            let lines = protocol::records::command_lines(Some(&payload));
            let replayable = lines.iter().all(|l| {
                matches!(
                    l.and_then(|l| AccountRecord::decode(l).ok()),
                    Some(AccountRecord::Settle(_) | AccountRecord::Transfer(_))
                )
            });
            if replayable {
                send(&producer, &world.accounts_topic, shard, &payload).await?;
                out.accounts_copies += 1;
            }
        }
    }
    Ok(())
}
