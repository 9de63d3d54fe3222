//! The settlement feed for the account shards (pure): what each applied command line decided
//! that moves funds, grouped by the account shard that holds each account.
//!
//! Events that move funds: `Trade` (both the maker's and the taker's account), `Done`,
//! `Amended`, and `Rejected` of a place or an amend (the shard reserved for it). For each shard a
//! line touches, one `AccountRecord::Settle` line holds those of its events, in order, with `seq`
//! the seq of the last one. A shard holding both sides of a trade gets the trade once.
//!
//! The lines are written straight from the borrowed events into one reusable buffer per shard
//! ([`SettleLine`] serializes exactly as `AccountRecord::Settle(SettleRecord { .. })`), so a
//! batch allocates nothing per event.

use std::ops::Range;

use protocol::accounts::account_shard;
use protocol::records::{RECORD_VERSION, push_line};
use protocol::{AccountId, CommandKind, Event, EventBody};
use serde::ser::{Serialize, SerializeStruct, Serializer};

/// The accounts whose funds an event moves (at most two: a trade's maker and taker).
pub fn funds_accounts(body: &EventBody) -> Option<(AccountId, Option<AccountId>)> {
    match body {
        EventBody::Trade {
            maker_account_id,
            taker_account_id,
            ..
        } => Some((*maker_account_id, Some(*taker_account_id))),
        EventBody::Done { account_id, .. } | EventBody::Amended { account_id, .. } => {
            Some((*account_id, None))
        }
        EventBody::Rejected {
            account_id: Some(account_id),
            command: Some(CommandKind::Place | CommandKind::Amend),
            ..
        } => Some((*account_id, None)),
        _ => None,
    }
}

/// Whether the event moves funds of an account in `shard`.
fn touches(event: &Event, shard: u32, shards: u32) -> bool {
    funds_accounts(&event.body).is_some_and(|(a, b)| {
        account_shard(a, shards) == shard || b.is_some_and(|b| account_shard(b, shards) == shard)
    })
}

/// One shard's settle lines of a batch: newline-separated JSON in `buf`, each line's range in
/// `lines` (the layout `protocol::records::pack_lines` takes).
#[derive(Debug, Default)]
pub struct ShardLines {
    pub buf: Vec<u8>,
    pub lines: Vec<Range<usize>>,
}

/// A batch's settle lines per shard. Reused from batch to batch ([`Settlements::clear`]).
#[derive(Debug)]
pub struct Settlements {
    shards: u32,
    per_shard: Vec<ShardLines>,
    /// The shards one command line touches, in first-touch order (scratch).
    touched: Vec<u32>,
}

impl Settlements {
    /// Buffers for `shards` account shards (the `accounts` topic's partitions).
    pub fn new(shards: u32) -> Settlements {
        assert!(shards > 0, "at least one account shard");
        Settlements {
            shards,
            per_shard: (0..shards).map(|_| ShardLines::default()).collect(),
            touched: Vec::new(),
        }
    }

    /// Empties every shard's lines, keeping the buffers.
    pub fn clear(&mut self) {
        for s in &mut self.per_shard {
            s.buf.clear();
            s.lines.clear();
        }
    }

    /// Adds the settle lines of one applied command line of `pair`, given its events.
    pub fn add(&mut self, pair: &str, events: &[Event]) {
        let shards = self.shards;
        self.touched.clear();
        for event in events {
            let Some((a, b)) = funds_accounts(&event.body) else {
                continue;
            };
            for account in [Some(a), b].into_iter().flatten() {
                let shard = account_shard(account, shards);
                if !self.touched.contains(&shard) {
                    self.touched.push(shard);
                }
            }
        }
        for &shard in &self.touched {
            let seq = events
                .iter()
                .rev()
                .find(|e| touches(e, shard, shards))
                .map_or(0, |e| e.seq);
            let out = &mut self.per_shard[shard as usize];
            push_line(
                &mut out.buf,
                &mut out.lines,
                &SettleLine {
                    pair,
                    seq,
                    events,
                    shard,
                    shards,
                },
            );
        }
    }

    /// The shards with at least one line, and their lines.
    pub fn shards(&self) -> impl Iterator<Item = (u32, &ShardLines)> {
        self.per_shard
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.lines.is_empty())
            .map(|(i, s)| (i as u32, s))
    }
}

/// `AccountRecord::Settle(SettleRecord { v, pair, seq, events })` for one shard, borrowing the
/// command line's events and keeping those that touch the shard.
struct SettleLine<'a> {
    pair: &'a str,
    seq: u64,
    events: &'a [Event],
    shard: u32,
    shards: u32,
}

impl Serialize for SettleLine<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("SettleRecord", 5)?;
        st.serialize_field("kind", "settle")?;
        st.serialize_field("v", &RECORD_VERSION)?;
        st.serialize_field("pair", self.pair)?;
        st.serialize_field("seq", &self.seq)?;
        st.serialize_field("events", &ShardEvents(self))?;
        st.end()
    }
}

struct ShardEvents<'a>(&'a SettleLine<'a>);

impl Serialize for ShardEvents<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let line = self.0;
        s.collect_seq(
            line.events
                .iter()
                .filter(|e| touches(e, line.shard, line.shards)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::accounts::{AccountRecord, SettleRecord};
    use protocol::{DoneReason, OrderId, Price, Qty, RejectReason, Side};

    fn ev(seq: u64, body: EventBody) -> Event {
        Event {
            seq,
            ts_ns: 7,
            body,
        }
    }

    fn trade(seq: u64, maker: u64, taker: u64) -> Event {
        ev(
            seq,
            EventBody::Trade {
                trade_id: seq,
                price: Price(100),
                qty: Qty(5),
                taker_side: Side::Buy,
                maker_order_id: OrderId(maker * 10),
                maker_account_id: AccountId(maker),
                taker_order_id: OrderId(taker * 10),
                taker_account_id: AccountId(taker),
                maker_filled_qty: None,
                maker_remaining_qty: None,
                maker_client_order_id: None,
                taker_filled_qty: None,
                taker_remaining_qty: None,
                taker_client_order_id: None,
            },
        )
    }

    fn done(seq: u64, account: u64) -> Event {
        ev(
            seq,
            EventBody::Done {
                order_id: OrderId(account * 10),
                account_id: AccountId(account),
                client_order_id: Some("c-1".into()),
                reason: DoneReason::Filled,
                filled_qty: Qty(5),
                remaining_qty: Qty(0),
            },
        )
    }

    fn rejected(seq: u64, account: u64, command: CommandKind) -> Event {
        ev(
            seq,
            EventBody::Rejected {
                order_id: None,
                account_id: Some(AccountId(account)),
                client_order_id: None,
                command: Some(command),
                reason: RejectReason::UnknownOrder,
            },
        )
    }

    fn level(seq: u64) -> Event {
        ev(
            seq,
            EventBody::BookLevel {
                side: Side::Sell,
                price: Price(100),
                qty: Qty(0),
            },
        )
    }

    /// Every shard's lines, decoded.
    fn decoded(s: &Settlements) -> Vec<(u32, Vec<SettleRecord>)> {
        s.shards()
            .map(|(shard, lines)| {
                let recs = lines
                    .lines
                    .iter()
                    .map(
                        |r| match AccountRecord::decode(&lines.buf[r.clone()]).unwrap() {
                            AccountRecord::Settle(s) => s,
                            other => panic!("not a settle line: {other:?}"),
                        },
                    )
                    .collect();
                (shard, recs)
            })
            .collect()
    }

    fn settle(seq: u64, events: Vec<Event>) -> SettleRecord {
        SettleRecord {
            v: RECORD_VERSION,
            pair: "BTC-EUR".into(),
            seq,
            events,
        }
    }

    #[test]
    fn a_trade_goes_to_both_shards_and_once_to_a_shared_one() {
        let mut s = Settlements::new(2);
        // Accounts 2 (shard 0) and 3 (shard 1): one line each.
        let line = [trade(4, 2, 3), done(5, 3), level(6)];
        s.add("BTC-EUR", &line);
        assert_eq!(
            decoded(&s),
            vec![
                (0, vec![settle(4, vec![line[0].clone()])]),
                (1, vec![settle(5, vec![line[0].clone(), line[1].clone()])]),
            ]
        );
        // Accounts 2 and 4, both shard 0: the trade once.
        s.clear();
        assert_eq!(s.shards().count(), 0);
        let line = [trade(7, 2, 4), done(8, 4), done(9, 2), level(10)];
        s.add("BTC-EUR", &line);
        assert_eq!(decoded(&s), vec![(0, vec![settle(9, line[..3].to_vec())])]);
    }

    #[test]
    fn only_events_that_move_funds_make_lines() {
        let mut s = Settlements::new(3);
        s.add("BTC-EUR", &[rejected(1, 5, CommandKind::Cancel)]);
        s.add("BTC-EUR", &[rejected(2, 5, CommandKind::CancelAll)]);
        s.add("BTC-EUR", &[level(3)]);
        s.add(
            "BTC-EUR",
            &[ev(
                4,
                EventBody::Rejected {
                    order_id: None,
                    account_id: None,
                    client_order_id: None,
                    command: None,
                    reason: RejectReason::MalformedRecord,
                },
            )],
        );
        assert_eq!(s.shards().count(), 0, "nothing to settle");
        s.add("BTC-EUR", &[rejected(5, 5, CommandKind::Place)]);
        s.add("BTC-EUR", &[rejected(6, 5, CommandKind::Amend)]);
        let got = decoded(&s);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 2, "account 5 is in shard 5 % 3");
        assert_eq!(
            got[0].1.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![5, 6]
        );
    }

    #[test]
    fn a_line_reads_exactly_as_the_protocol_writes_it() {
        let mut s = Settlements::new(1);
        let line = [trade(4, 2, 3), done(5, 3)];
        s.add("ETH-EUR", &line);
        let (_, lines) = s.shards().next().unwrap();
        let owned = AccountRecord::Settle(SettleRecord {
            v: RECORD_VERSION,
            pair: "ETH-EUR".into(),
            seq: 5,
            events: line.to_vec(),
        });
        assert_eq!(lines.buf, owned.encode());
    }
}
