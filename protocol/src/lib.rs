//! The vocabulary shared by the gateway, the engine and the load generator.
//!
//! - [`accounts`]: the account stage's Kafka records (`accounts`, `account_events`).
//! - [`domain`]: commands and events in integer units, the input and output of the matching core.
//! - [`fuzz`]: the bodies of the fuzz targets in `fuzz/`, replayed on the seed corpus by tests.
//! - [`pairs`]: the pair registry (`config/pairs.toml`) and decimal <-> integer conversion.
//! - [`records`]: the Kafka record envelopes on the `orders` and `events` topics.
//! - [`ws`]: the JSON messages between trading clients and the gateway.
//!
//! Nothing here does I/O; reading the registry file is the caller's job.

pub mod accounts;
pub mod domain;
mod event_de;
pub mod fuzz;
pub mod pairs;
pub mod records;
pub mod ws;

pub use domain::*;
pub use pairs::{PPM_WHOLE, PairFees, PairId, PairRegistry, PairSpec};
