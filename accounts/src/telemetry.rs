//! The stage's metrics (`docs/METRICS.md`, "Accounts"), registered at start so the first scrape
//! shows every series of every owned shard at zero.

pub const RECORDS_TOTAL: &str = "accounts_records_total";
pub const LINES_TOTAL: &str = "accounts_lines_total";
pub const REFUSED_TOTAL: &str = "accounts_refused_total";
pub const REPEATS_TOTAL: &str = "accounts_repeats_total";
pub const INCONSISTENT_TOTAL: &str = "accounts_inconsistent_total";
pub const ACTOR_RESTARTS_TOTAL: &str = "accounts_actor_restarts_total";
pub const BATCH_RECORDS: &str = "accounts_batch_records";
pub const COMMIT_SECONDS: &str = "accounts_commit_seconds";
pub const CONSUMER_LAG_RECORDS: &str = "accounts_consumer_lag_records";
pub const SNAPSHOT_BYTES: &str = "accounts_snapshot_bytes";
pub const SNAPSHOT_OPEN_ORDERS: &str = "accounts_snapshot_open_orders";
pub const RECOVERY_REPLAYED_LINES: &str = "accounts_recovery_replayed_lines";
/// How often [`CONSUMER_LAG_RECORDS`] is sampled, as the engine samples its own.
pub const LAG_SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        RECORDS_TOTAL,
        Unit::Count,
        "accounts records applied and committed, per shard"
    );
    describe_counter!(
        LINES_TOTAL,
        Unit::Count,
        "accounts lines (commands, transfers, settlements) applied and committed, per shard"
    );
    describe_counter!(
        REFUSED_TOTAL,
        Unit::Count,
        "commands and transfers refused (insufficient_funds and the rest), per shard"
    );
    describe_counter!(
        REPEATS_TOTAL,
        Unit::Count,
        "transfers and settlements dropped as repeats, per shard"
    );
    describe_counter!(
        INCONSISTENT_TOTAL,
        Unit::Count,
        "settlements that contradict the reservations (left unapplied, logged as errors), per shard"
    );
    describe_counter!(
        ACTOR_RESTARTS_TOTAL,
        Unit::Count,
        "shard actor restarts after an error or a panic, per shard"
    );
    describe_gauge!(
        CONSUMER_LAG_RECORDS,
        Unit::Count,
        "accounts high watermark minus the next offset the shard will apply, per shard"
    );
    describe_gauge!(
        SNAPSHOT_BYTES,
        Unit::Bytes,
        "size of the shard's last snapshot (its whole state, written with a commit), per shard"
    );
    describe_gauge!(
        SNAPSHOT_OPEN_ORDERS,
        Unit::Count,
        "open orders in the shard's last snapshot, per shard"
    );
    describe_gauge!(
        RECOVERY_REPLAYED_LINES,
        Unit::Count,
        "lines the shard's last recovery replayed from its snapshot, per shard"
    );
    describe_histogram!(
        BATCH_RECORDS,
        Unit::Count,
        "accounts records per committed batch"
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "from a batch's outputs handed to Kafka to its PostgreSQL commit"
    );
}

pub fn register(shards: &[u32]) {
    for shard in shards {
        let labels = [("shard", shard.to_string())];
        for counter in [
            RECORDS_TOTAL,
            LINES_TOTAL,
            REFUSED_TOTAL,
            REPEATS_TOTAL,
            INCONSISTENT_TOTAL,
            ACTOR_RESTARTS_TOTAL,
        ] {
            metrics::counter!(counter, &labels).increment(0);
        }
        for gauge in [
            CONSUMER_LAG_RECORDS,
            SNAPSHOT_BYTES,
            SNAPSHOT_OPEN_ORDERS,
            RECOVERY_REPLAYED_LINES,
        ] {
            metrics::gauge!(gauge, &labels).set(0.0);
        }
    }
    for histogram in [BATCH_RECORDS, COMMIT_SECONDS] {
        let _ = metrics::histogram!(histogram);
    }
}

/// Samples each owned shard's consumer lag every [`LAG_SAMPLE_INTERVAL`] until `stop`: the
/// partition's high watermark minus the next offset its actor will apply (skipped while the
/// actor recovers, or when the broker does not answer within a second).
pub async fn sample_lag(
    stage: std::sync::Arc<crate::actor::Stage>,
    owned: Vec<u32>,
    consumer: std::sync::Arc<rdkafka::consumer::BaseConsumer>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(LAG_SAMPLE_INTERVAL) => {}
        }
        for &shard in &owned {
            let next = stage
                .progress
                .get(shard as usize)
                .map_or(-1, |p| p.load(std::sync::atomic::Ordering::Relaxed));
            if next < 0 {
                continue;
            }
            let marks =
                infra::kafka::watermarks(&consumer, &stage.config.accounts_topic, shard as i32)
                    .await;
            if let Some((_, high)) = marks {
                metrics::gauge!(CONSUMER_LAG_RECORDS, "shard" => shard.to_string())
                    .set((high - next).max(0) as f64);
            }
        }
    }
}
