//! Against the real broker (`scripts/stack up`): every `orders` partition takes a record from the
//! project's producer config and serves it back to the project's consumer config.

use std::time::Duration;

use infra::kafka::{self, PROBE_TOPIC};
use protocol::records::{EVENTS_TOPIC, ORDERS_TOPIC};
use tokio::task::JoinSet;

mod common;

#[tokio::test]
async fn every_orders_partition_round_trips_through_infra_kafka() {
    let Some(brokers) = common::service_env(infra::KAFKA_BROKERS_ENV) else {
        return;
    };
    let (_, registry) = infra::config::load_pairs().expect("pairs file");

    let counts = kafka::topic_partitions(&brokers, &[ORDERS_TOPIC, EVENTS_TOPIC])
        .await
        .expect("topic metadata");
    for (topic, partitions) in &counts {
        assert_eq!(
            *partitions,
            Some(registry.len()),
            "topic {topic} must have one partition per pair (run scripts/stack up)"
        );
    }

    let mut trips = JoinSet::new();
    for pair in registry.iter() {
        let brokers = brokers.clone();
        let partition = i32::try_from(pair.id).unwrap();
        trips.spawn(async move {
            kafka::round_trip(&brokers, ORDERS_TOPIC, partition, Duration::from_secs(30)).await
        });
    }
    let mut seen = Vec::new();
    while let Some(result) = trips.join_next().await {
        let trip = result.expect("task").expect("round trip");
        assert!(trip.offset >= 0);
        seen.push(trip.partition);
    }
    seen.sort_unstable();
    let expected: Vec<i32> = (0..registry.len())
        .map(|i| i32::try_from(i).unwrap())
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn probe_topic_round_trip_gives_distinct_payloads() {
    let Some(brokers) = common::service_env(infra::KAFKA_BROKERS_ENV) else {
        return;
    };
    kafka::ensure_probe_topic(&brokers)
        .await
        .expect("probe topic");
    let first = kafka::round_trip(&brokers, PROBE_TOPIC, 0, Duration::from_secs(30))
        .await
        .expect("first round trip");
    let second = kafka::round_trip(&brokers, PROBE_TOPIC, 0, Duration::from_secs(30))
        .await
        .expect("second round trip");
    assert!(second.offset > first.offset);
    assert_ne!(first.payload, second.payload);
}

#[tokio::test]
async fn a_topic_with_more_partitions_than_pairs_is_refused() {
    let Some(brokers) = common::service_env(infra::KAFKA_BROKERS_ENV) else {
        return;
    };
    let admin = std::sync::Arc::new(kafka::admin_client(&brokers).unwrap());
    let topic = format!("infra-test-excess-{}", std::process::id());
    let created = kafka::ensure_topic(&admin, &brokers, &topic, 3, &[("retention.ms", "600000")])
        .await
        .expect("create");
    assert_eq!(created.action, kafka::TopicAction::Created);
    let grown = kafka::ensure_topic(&admin, &brokers, &topic, 4, &[])
        .await
        .expect("grow");
    assert_eq!(grown.action, kafka::TopicAction::Increased { from: 3 });
    let same = kafka::ensure_topic(&admin, &brokers, &topic, 4, &[])
        .await
        .expect("unchanged");
    assert_eq!(same.action, kafka::TopicAction::Unchanged);
    let err = kafka::ensure_topic(&admin, &brokers, &topic, 2, &[])
        .await
        .expect_err("shrinking must fail");
    assert!(
        matches!(
            err,
            kafka::KafkaSetupError::TooManyPartitions {
                actual: 4,
                expected: 2,
                ..
            }
        ),
        "{err}"
    );
    let _ = admin
        .delete_topics(&[topic.as_str()], &rdkafka::admin::AdminOptions::new())
        .await;
}
