//! The engine's metrics (documented in docs/METRICS.md); its endpoint serving `/metrics` and
//! `/healthz` is `infra::telemetry::serve`.

pub const COMMANDS_TOTAL: &str = "engine_commands_total";
pub const BATCH_RECORDS: &str = "engine_batch_records";
pub const BATCH_COMMANDS: &str = "engine_batch_commands";
pub const PERSIST_SECONDS: &str = "engine_persist_seconds";
pub const RECORD_AGE_SECONDS: &str = "engine_record_age_seconds";
pub const BATCH_WAIT_SECONDS: &str = "engine_batch_wait_seconds";
pub const CONSUMER_LAG_RECORDS: &str = "engine_consumer_lag_records";
pub const PAUSED: &str = "engine_paused";
pub const ACTOR_RESTARTS_TOTAL: &str = "engine_actor_restarts_total";
pub const POISON_RECORDS_TOTAL: &str = "engine_poison_records_total";
pub const REPEATED_COMMANDS_TOTAL: &str = "engine_repeated_commands_total";
pub const COMMIT_LAG_SECONDS: &str = "engine_commit_lag_seconds";
pub const COMMIT_BATCHES: &str = "engine_commit_batches";

/// Registers every metric's description with the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        COMMANDS_TOTAL,
        Unit::Count,
        "orders command lines applied and committed, per pair"
    );
    describe_histogram!(
        BATCH_RECORDS,
        Unit::Count,
        "orders records per persisted batch"
    );
    describe_histogram!(
        BATCH_COMMANDS,
        Unit::Count,
        "command lines per persisted batch"
    );
    describe_histogram!(
        PERSIST_SECONDS,
        Unit::Seconds,
        "duration of one commit's PostgreSQL transaction (one or more batches)"
    );
    describe_histogram!(
        RECORD_AGE_SECONDS,
        Unit::Seconds,
        "from an orders record's Kafka timestamp (the gateway's produce call) to its actor reading it"
    );
    describe_histogram!(
        BATCH_WAIT_SECONDS,
        Unit::Seconds,
        "from a batch's first record read to its events handed to the producer (linger, matching, a full staging queue)"
    );
    describe_gauge!(
        CONSUMER_LAG_RECORDS,
        Unit::Count,
        "orders records in the partition not yet applied (high watermark - next offset)"
    );
    describe_gauge!(
        PAUSED,
        "1 while the pair does not consume (recovering or backing off)"
    );
    describe_counter!(
        ACTOR_RESTARTS_TOTAL,
        Unit::Count,
        "actor restarts after an error or a panic, per pair"
    );
    describe_counter!(
        POISON_RECORDS_TOTAL,
        Unit::Count,
        "records rejected as malformed_record or wrong_pair, per pair"
    );
    describe_counter!(
        REPEATED_COMMANDS_TOTAL,
        Unit::Count,
        "forwarded command lines skipped because their source (account shard and position) was applied already, per pair"
    );
    describe_histogram!(
        COMMIT_BATCHES,
        Unit::Count,
        "batches one PostgreSQL transaction commits (batches published meanwhile join it)"
    );
    describe_histogram!(
        COMMIT_LAG_SECONDS,
        Unit::Seconds,
        "from a batch's events handed to the producer to its commit in PostgreSQL (Kafka ack, queue, transaction)"
    );
}

/// Creates every series at zero before anything happens, so a scrape right after start shows
/// each documented metric and `rate()` / `absent()` alerts work from the first minute. `pairs`
/// are the pairs this process may own (its static pairs, or every pair in group mode).
pub fn register<'a>(pairs: impl IntoIterator<Item = &'a str>) {
    for pair in pairs {
        let labels = [("pair", pair.to_owned())];
        metrics::counter!(COMMANDS_TOTAL, &labels).increment(0);
        metrics::counter!(ACTOR_RESTARTS_TOTAL, &labels).increment(0);
        metrics::counter!(POISON_RECORDS_TOTAL, &labels).increment(0);
        metrics::counter!(REPEATED_COMMANDS_TOTAL, &labels).increment(0);
        metrics::gauge!(CONSUMER_LAG_RECORDS, &labels).set(0.0);
        metrics::gauge!(PAUSED, &labels).set(0.0);
    }
    for histogram in [
        BATCH_RECORDS,
        BATCH_COMMANDS,
        PERSIST_SECONDS,
        RECORD_AGE_SECONDS,
        BATCH_WAIT_SECONDS,
        COMMIT_LAG_SECONDS,
        COMMIT_BATCHES,
    ] {
        // Registering the handle is enough: it renders with a count of 0.
        let _ = metrics::histogram!(histogram);
    }
}

pub use infra::telemetry::{Health, bind, serve};
