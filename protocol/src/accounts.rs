//! The account stage's Kafka records (docs/ARCHITECTURE.md, "Accounts and balances").
//!
//! - `accounts`: one partition per account shard ([`account_shard`]). Each line is one
//!   [`AccountRecord`]: a client's place or amend from a gateway (reserve first), an operator's
//!   deposit or withdrawal, or what a pair decided for this shard's accounts (from the engine).
//!   Lines are packed into records like `orders` lines ([`crate::records::command_lines`]). The
//!   log order of a partition is the order in which its shard applies them, so a replay sees the
//!   same interleaving of commands and settlements.
//! - `orders` receives the commands a shard reserved for, each carrying its [`Source`], so an
//!   engine drops the repeats a restarted shard produces again.
//! - `account_events`: one partition per shard; each line an [`AccountEventRecord`], the answer
//!   to one `accounts` line that changed a balance or was refused.
//!
//! Amounts are `i128` in the asset's smallest unit (`accounts_core::AssetRegistry`), written as
//! JSON strings of the integer ("1500000"): JSON numbers above 2^53 lose digits in most readers,
//! and serde cannot buffer an `i128` inside a tagged enum.

use serde::{Deserialize, Serialize};

use crate::domain::{AccountId, Event};
use crate::records::{DecodeError, OrderRecord};

pub const ACCOUNTS_TOPIC: &str = "accounts";
pub const ACCOUNT_EVENTS_TOPIC: &str = "account_events";

/// The shard (partition of `accounts` and `account_events`) that holds an account's balances.
pub fn account_shard(account_id: AccountId, shards: u32) -> u32 {
    assert!(shards > 0, "at least one account shard");
    (account_id.0 % u64::from(shards)) as u32
}

/// A record packs at most this many lines that a shard tells apart ([`position`]).
pub const LINES_PER_RECORD_MAX: usize = 1 << 16;

/// A line's position in its `accounts` partition: the record's offset x 2^16 + the line's index
/// in the record (a record packs lines). Unique and increasing along the partition, so every
/// consumer of a shard's outputs drops repeats by comparing positions. Every `offset` of this
/// module's records, and the account stage's `accounts_offset` / `last_offset` columns, is one.
pub fn position(offset: i64, line: usize) -> i64 {
    assert!(
        line < LINES_PER_RECORD_MAX,
        "line index {line} beyond a record's lines"
    );
    (offset << 16) | line as i64
}

/// The Kafka offset of the record holding the line at `position`.
pub fn record_offset(position: i64) -> i64 {
    position >> 16
}

/// Where a command forwarded to `orders` by an account shard came from: the shard and the
/// [`position`] of its `accounts` line. Per pair, a shard's sources only increase, so an engine
/// keeps the last one per shard and drops anything at or below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Source {
    pub shard: u32,
    /// A [`position`], not a bare Kafka offset.
    pub offset: i64,
}

/// One line of an `accounts` partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccountRecord {
    /// A place or an amend from a gateway: the shard reserves for it, then forwards it to the
    /// pair's `orders` partition, or refuses it (`insufficient_funds`, ...) on `account_events`.
    Order(OrderRecord),
    /// An operator's deposit or withdrawal.
    Transfer(TransferRecord),
    /// The events of one pair's command that touch this shard's accounts (trades, done,
    /// rejections of reserved places, amends), from the engine.
    Settle(SettleRecord),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferDirection {
    Deposit,
    Withdrawal,
}

/// Funds in or out, entered by an operator (never a trading client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    pub v: u16,
    /// The operator's reference, unique per transfer; a shard applies each id once.
    pub transfer_id: u64,
    pub account_id: AccountId,
    pub direction: TransferDirection,
    /// The asset's symbol ("EUR", "BTC").
    pub asset: String,
    /// Positive, in the asset's smallest unit.
    #[serde(with = "units")]
    pub amount_units: i128,
    /// When the operator's tool sent it.
    pub ts_ns: u64,
}

/// What one `orders` line decided that moves funds of this shard's accounts. `seq` is the
/// pair's sequence number of the last of `events`: per pair, a shard applies only records
/// above the last `seq` it applied (an engine restart publishes the same records again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleRecord {
    pub v: u16,
    pub pair: String,
    pub seq: u64,
    pub events: Vec<Event>,
}

impl AccountRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an AccountRecord always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<AccountRecord, DecodeError> {
        serde_json::from_slice(bytes).map_err(|source| DecodeError {
            what: "account",
            source,
        })
    }
}

/// One account's holding of one asset after a change, in the asset's smallest unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceLine {
    pub account_id: AccountId,
    pub asset: String,
    #[serde(with = "units")]
    pub available_units: i128,
    #[serde(with = "units")]
    pub reserved_units: i128,
}

/// A refused `accounts` line: the stable code and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: String,
    pub message: String,
}

/// The answer to one `accounts` line: the balances it left (absolute, so the latest by
/// `accounts_offset` wins) and, for a refused command, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEventRecord {
    pub v: u16,
    pub shard: u32,
    /// The [`position`] of the `accounts` line this answers; with `shard`, unique and
    /// increasing per shard.
    pub accounts_offset: i64,
    /// The gateway command this answers, for an `order` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<u64>,
    /// When the gateway received that command (its `ts_ns`): a refusal's event time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_ns: Option<u64>,
    /// The account whose command or transfer this answers, so a refusal reaches every
    /// connection of the account, on any gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<AccountId>,
    /// The operator's transfer this answers, for a `transfer` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    /// Every balance the line changed, after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub balances: Vec<BalanceLine>,
}

impl AccountEventRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an AccountEventRecord always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<AccountEventRecord, DecodeError> {
        serde_json::from_slice(bytes).map_err(|source| DecodeError {
            what: "account event",
            source,
        })
    }
}

/// An `i128` amount as a JSON string of its decimal digits.
pub mod units {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i128, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse()
            .map_err(|_| D::Error::custom(format!("not an integer amount: {text:?}")))
    }
}

/// An optional `i128` amount as a JSON string of its decimal digits (absent: `None`).
pub mod opt_units {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<i128>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::units::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i128>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::units")] i128);
        Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(v)| v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;
    use crate::records::RECORD_VERSION;

    #[test]
    fn positions_order_lines_within_and_across_records() {
        assert!(position(5, 0) > position(4, LINES_PER_RECORD_MAX - 1));
        assert!(position(5, 1) > position(5, 0));
        assert_eq!(record_offset(position(5, 300)), 5);
        assert_eq!(record_offset(position(-1, 0)), -1);
    }

    #[test]
    fn shards_spread_accounts_and_stay_put() {
        assert_eq!(account_shard(AccountId(7), 4), 3);
        assert_eq!(account_shard(AccountId(8), 4), 0);
        assert_eq!(account_shard(AccountId(8), 1), 0);
    }

    #[test]
    fn account_records_round_trip_with_their_kind_tag() {
        let order = OrderRecord {
            v: RECORD_VERSION,
            command_id: 9,
            pair: "BTC-EUR".into(),
            ts_ns: 5,
            src: None,
            tp: None,
            command: Command::CancelAll(CancelAll {
                account_id: AccountId(3),
            }),
        };
        let recs = [
            AccountRecord::Order(order),
            AccountRecord::Transfer(TransferRecord {
                v: RECORD_VERSION,
                transfer_id: 1,
                account_id: AccountId(3),
                direction: TransferDirection::Deposit,
                asset: "EUR".into(),
                amount_units: 1 << 100,
                ts_ns: 6,
            }),
            AccountRecord::Settle(SettleRecord {
                v: RECORD_VERSION,
                pair: "BTC-EUR".into(),
                seq: 12,
                events: vec![],
            }),
        ];
        for rec in recs {
            let bytes = rec.encode();
            assert_eq!(AccountRecord::decode(&bytes).unwrap(), rec);
        }
        let text = String::from_utf8(
            AccountRecord::Transfer(TransferRecord {
                v: 1,
                transfer_id: 1,
                account_id: AccountId(3),
                direction: TransferDirection::Withdrawal,
                asset: "BTC".into(),
                amount_units: 5,
                ts_ns: 0,
            })
            .encode(),
        )
        .unwrap();
        assert!(text.starts_with(r#"{"kind":"transfer""#), "{text}");
        assert!(text.contains(r#""amount_units":"5""#), "{text}");
        assert!(AccountRecord::decode(b"{\"kind\":\"nope\"}").is_err());
    }

    #[test]
    fn account_events_round_trip() {
        let rec = AccountEventRecord {
            v: RECORD_VERSION,
            shard: 2,
            accounts_offset: 40,
            command_id: Some(7),
            ts_ns: None,
            account_id: Some(AccountId(3)),
            transfer_id: None,
            refusal: Some(Refusal {
                code: "insufficient_funds".into(),
                message: "not enough".into(),
            }),
            balances: vec![BalanceLine {
                account_id: AccountId(3),
                asset: "EUR".into(),
                available_units: 10,
                reserved_units: 0,
            }],
        };
        assert_eq!(AccountEventRecord::decode(&rec.encode()).unwrap(), rec);
    }
}
