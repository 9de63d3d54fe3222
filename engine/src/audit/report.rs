//! What an audit found: per rule, how many things it checked and how many broke it; the first
//! violations in detail; what could not be decided yet; its own speed. Printed as a table for
//! an operator and as JSON for a machine.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// A rule the audit checks. The serialized name is the stable one the table, the JSON and the
/// tests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    LogComplete,
    AnsweredOnce,
    AnswerEqualsReplay,
    DuplicateIdentical,
    SeqContiguous,
    TradeIdUnique,
    OrderQuantity,
    BoughtEqualsSold,
    TradesEqualReplay,
    BookEqualsReplay,
    BalancesConserved,
    LedgerCause,
    BalancesEqualReplay,
    SnapshotEqualsReplay,
    ReceivedHasVerdict,
}

impl Rule {
    pub const ALL: [Rule; 15] = [
        Rule::LogComplete,
        Rule::AnsweredOnce,
        Rule::AnswerEqualsReplay,
        Rule::DuplicateIdentical,
        Rule::SeqContiguous,
        Rule::TradeIdUnique,
        Rule::OrderQuantity,
        Rule::BoughtEqualsSold,
        Rule::TradesEqualReplay,
        Rule::BookEqualsReplay,
        Rule::BalancesConserved,
        Rule::LedgerCause,
        Rule::BalancesEqualReplay,
        Rule::SnapshotEqualsReplay,
        Rule::ReceivedHasVerdict,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::LogComplete => "log_complete",
            Rule::AnsweredOnce => "answered_once",
            Rule::AnswerEqualsReplay => "answer_equals_replay",
            Rule::DuplicateIdentical => "duplicate_identical",
            Rule::SeqContiguous => "seq_contiguous",
            Rule::TradeIdUnique => "trade_id_unique",
            Rule::OrderQuantity => "order_quantity",
            Rule::BoughtEqualsSold => "bought_equals_sold",
            Rule::TradesEqualReplay => "trades_equal_replay",
            Rule::BookEqualsReplay => "book_equals_replay",
            Rule::BalancesConserved => "balances_conserved",
            Rule::LedgerCause => "ledger_cause",
            Rule::BalancesEqualReplay => "balances_equal_replay",
            Rule::SnapshotEqualsReplay => "snapshot_equals_replay",
            Rule::ReceivedHasVerdict => "received_has_verdict",
        }
    }

    /// One sentence: what holds when the rule holds.
    pub fn description(self) -> &'static str {
        match self {
            Rule::LogComplete => {
                "every audited partition still starts at offset 0, so a replay from the start is possible"
            }
            Rule::AnsweredOnce => {
                "every command line of every orders record has exactly one answer in events (re-publications aside), and no answer names a line that does not exist"
            }
            Rule::AnswerEqualsReplay => {
                "the first copy of each answer equals what engine-core decides on a replay of the log"
            }
            Rule::DuplicateIdentical => "a re-published answer is identical to the first copy",
            Rule::SeqContiguous => {
                "per pair, the events' seq go 1, 2, 3, ... with no gap or repeat"
            }
            Rule::TradeIdUnique => "per pair, trade ids go 1, 2, 3, ...: none twice, none skipped",
            Rule::OrderQuantity => {
                "for every order, filled + open + cancelled/expired = its quantity, in the log and in PostgreSQL's rows"
            }
            Rule::BoughtEqualsSold => {
                "per pair, the filled quantity of buy orders equals that of sell orders and the traded quantity"
            }
            Rule::TradesEqualReplay => {
                "PostgreSQL's trades are exactly the replay's, up to its committed trade id"
            }
            Rule::BookEqualsReplay => {
                "PostgreSQL's open orders and counters equal the replayed book at its committed offset"
            }
            Rule::BalancesConserved => {
                "per asset, available + reserved over all accounts (fee account included) = deposits - withdrawals"
            }
            Rule::LedgerCause => {
                "every ledger change has its cause: the transfer or trade it names exists, and the replay of its accounts line makes the same change"
            }
            Rule::BalancesEqualReplay => {
                "every balance equals a replay of the accounts log through the account shards' rules"
            }
            Rule::SnapshotEqualsReplay => {
                "each account shard's snapshot (balances, open orders, settled seqs) equals the replay of its log at the snapshot's position"
            }
            Rule::ReceivedHasVerdict => {
                "every command the gateway acknowledged as received has its verdict"
            }
        }
    }
}

/// One rule's count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub checked: u64,
    pub violations: u64,
    /// Why the rule was not run, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// One broken rule, located as precisely as the rule allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub rule: Rule,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orders_offset: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_offset: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trade_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    /// An `accounts` line position (`protocol::accounts::position`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts_position: Option<i64>,
    pub detail: String,
}

impl Violation {
    pub fn new(rule: Rule, detail: impl Into<String>) -> Violation {
        Violation {
            rule,
            pair: None,
            orders_offset: None,
            events_offset: None,
            seq: None,
            order_id: None,
            trade_id: None,
            shard: None,
            accounts_position: None,
            detail: detail.into(),
        }
    }

    pub fn pair(mut self, pair: &str) -> Violation {
        self.pair = Some(pair.to_owned());
        self
    }

    pub fn orders_offset(mut self, offset: i64) -> Violation {
        self.orders_offset = Some(offset);
        self
    }

    pub fn events_offset(mut self, offset: i64) -> Violation {
        self.events_offset = Some(offset);
        self
    }

    pub fn seq(mut self, seq: Option<u64>) -> Violation {
        self.seq = seq;
        self
    }

    pub fn order_id(mut self, order_id: u64) -> Violation {
        self.order_id = Some(order_id);
        self
    }

    pub fn trade_id(mut self, trade_id: u64) -> Violation {
        self.trade_id = Some(trade_id);
        self
    }

    pub fn shard(mut self, shard: u32) -> Violation {
        self.shard = Some(shard);
        self
    }

    pub fn accounts_position(mut self, position: i64) -> Violation {
        self.accounts_position = Some(position);
        self
    }

    /// `rule pair offset ...: detail`, for the table.
    fn line(&self) -> String {
        let mut out = self.rule.name().to_owned();
        let mut field = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                let _ = write!(out, " {name}={v}");
            }
        };
        field("pair", self.pair.clone());
        field("orders_offset", self.orders_offset.map(|v| v.to_string()));
        field("events_offset", self.events_offset.map(|v| v.to_string()));
        field("seq", self.seq.map(|v| v.to_string()));
        field("order", self.order_id.map(|v| v.to_string()));
        field("trade", self.trade_id.map(|v| v.to_string()));
        field("shard", self.shard.map(|v| v.to_string()));
        field("position", self.accounts_position.map(|v| v.to_string()));
        let _ = write!(out, ": {}", self.detail);
        out
    }
}

/// What could not be decided yet because the services are behind the logs (not violations).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// Command lines past PostgreSQL's committed offset whose answer is not in `events` yet.
    pub unanswered_past_commit: u64,
    /// Trades past PostgreSQL's committed trade id (compared with the replay once committed).
    pub trades_past_commit: u64,
    /// Ledger fills and fees naming a trade past its pair's committed trade id.
    pub ledger_fills_past_commit: u64,
}

/// One pair's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PairSummary {
    pub pair: String,
    /// PostgreSQL's `pair_offsets.last_offset` in the audit's snapshot (-1: none).
    pub committed_offset: i64,
    pub orders_records: u64,
    pub command_lines: u64,
    pub event_records: u64,
    pub duplicates: u64,
    pub last_seq: u64,
    pub open_orders: u64,
    /// Hash (FNV-1a 64 of the canonical JSON) of the replayed book at the committed offset, and
    /// of PostgreSQL's.
    pub book_digest_replay: String,
    pub book_digest_db: String,
}

/// The account stage's figures, when it was audited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BalancesSummary {
    pub shards: u32,
    pub lines_replayed: u64,
    pub ledger_changes: u64,
    pub balances: u64,
    /// Per asset, available + reserved over all accounts, in the asset's smallest unit.
    pub totals_units: BTreeMap<String, String>,
}

/// How fast the audit read.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Speed {
    pub elapsed_s: f64,
    /// Kafka records read: `orders`, `events`, `accounts`, `account_events`.
    pub records: u64,
    pub records_per_s: f64,
    /// Lines those records held (commands, answers, account lines).
    pub lines: u64,
    pub lines_per_s: f64,
}

/// Everything an audit found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    #[serde(serialize_with = "rules_as_list")]
    pub rules: BTreeMap<Rule, Tally>,
    pub violations_total: u64,
    /// The first `violations_max` violations, in the order found.
    pub violations: Vec<Violation>,
    pub violations_max: usize,
    pub pending: Pending,
    pub pairs: Vec<PairSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balances: Option<BalancesSummary>,
    pub notes: Vec<String>,
    pub speed: Speed,
}

fn rules_as_list<S: serde::Serializer>(
    rules: &BTreeMap<Rule, Tally>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Row<'a> {
        rule: Rule,
        description: &'static str,
        #[serde(flatten)]
        tally: &'a Tally,
    }
    s.collect_seq(rules.iter().map(|(&rule, tally)| Row {
        rule,
        description: rule.description(),
        tally,
    }))
}

impl Report {
    pub fn new(violations_max: usize) -> Report {
        Report {
            ok: true,
            rules: Rule::ALL.iter().map(|&r| (r, Tally::default())).collect(),
            violations_total: 0,
            violations: Vec::new(),
            violations_max,
            pending: Pending::default(),
            pairs: Vec::new(),
            balances: None,
            notes: Vec::new(),
            speed: Speed::default(),
        }
    }

    /// Counts `n` more things checked under `rule`.
    pub fn check(&mut self, rule: Rule, n: u64) {
        self.tally(rule).checked += n;
    }

    /// Records a broken rule.
    pub fn violate(&mut self, v: Violation) {
        tracing::debug!(violation = %v.line(), "audit violation");
        self.tally(v.rule).violations += 1;
        self.violations_total += 1;
        self.ok = false;
        if self.violations.len() < self.violations_max {
            self.violations.push(v);
        }
    }

    /// Marks a rule as not run, with the reason (kept with the first reason given).
    pub fn skip(&mut self, rule: Rule, why: impl Into<String>) {
        let tally = self.tally(rule);
        if tally.skipped.is_none() {
            tally.skipped = Some(why.into());
        }
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    fn tally(&mut self, rule: Rule) -> &mut Tally {
        self.rules.entry(rule).or_default()
    }

    /// Rules with at least one violation.
    pub fn violated(&self) -> Vec<Rule> {
        self.rules
            .iter()
            .filter(|(_, t)| t.violations > 0)
            .map(|(&r, _)| r)
            .collect()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// The table an operator reads: one row per rule, then speed, the result and the first
    /// violations.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{:<22} {:>12} {:>10}", "rule", "checked", "violations");
        for (rule, t) in &self.rules {
            match &t.skipped {
                Some(why) if t.checked == 0 => {
                    let _ = writeln!(out, "{:<22} {:>12} {:>10}  ({why})", rule.name(), "-", "-");
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "{:<22} {:>12} {:>10}",
                        rule.name(),
                        t.checked,
                        t.violations
                    );
                }
            }
        }
        let p = &self.pending;
        if *p != Pending::default() {
            let _ = writeln!(
                out,
                "pending (services behind the logs, not violations): {} unanswered lines, {} \
                 trades, {} ledger fills past the committed offsets",
                p.unanswered_past_commit, p.trades_past_commit, p.ledger_fills_past_commit
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        let s = &self.speed;
        let _ = writeln!(
            out,
            "speed: {} records ({} lines) in {:.2} s: {:.0} records/s, {:.0} lines/s",
            s.records, s.lines, s.elapsed_s, s.records_per_s, s.lines_per_s
        );
        if self.ok {
            let _ = writeln!(out, "result: OK");
        } else {
            let _ = writeln!(
                out,
                "result: FAILED, {} violations; the first {}:",
                self.violations_total,
                self.violations.len()
            );
            for v in &self.violations {
                let _ = writeln!(out, "  {}", v.line());
            }
        }
        out
    }
}

/// FNV-1a, 64 bits: a stable hash (the same on every run and build) for digests printed in a
/// report and for remembering answers without keeping them.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// [`fnv1a`] of a value's JSON.
pub fn digest<T: Serialize>(value: &T) -> u64 {
    fnv1a(&serde_json::to_vec(value).expect("audited values serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_fails_the_report_and_names_its_rule() {
        let mut r = Report::new(1);
        r.check(Rule::SeqContiguous, 3);
        assert!(r.ok);
        r.violate(
            Violation::new(Rule::SeqContiguous, "seq 5 after 3")
                .pair("BTC-EUR")
                .seq(Some(5)),
        );
        r.violate(Violation::new(Rule::SeqContiguous, "another"));
        assert!(!r.ok);
        assert_eq!(r.violated(), vec![Rule::SeqContiguous]);
        assert_eq!(
            r.violations.len(),
            1,
            "only the first violations_max are kept"
        );
        assert_eq!(r.violations_total, 2);
        let table = r.table();
        assert!(
            table.contains("seq_contiguous pair=BTC-EUR seq=5: seq 5 after 3"),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["ok"], false);
        let seq = json["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == "seq_contiguous")
            .unwrap();
        assert_eq!(seq["checked"], 3);
        assert_eq!(seq["violations"], 2);
    }

    #[test]
    fn the_digest_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(digest(&[1, 2]), fnv1a(b"[1,2]"));
    }
}
