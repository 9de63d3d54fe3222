//! The real ledger against a deliberately naive one on random, consistent command sequences:
//! the same refusals, the same balances, and the invariants after every command.
//!
//! The model hard-codes the test pairs' asset factors instead of deriving them, keeps balances
//! in a `HashMap` of tuples and computes every amount with plain `i128` arithmetic from the
//! rules as the crate documents them. It shares nothing with the ledger but the protocol types.
//!
//! Commands are generated as picks that the driver turns into commands consistent with the
//! model's open orders: a fill names two open orders of one pair on opposite sides (of one
//! account or two), at the maker's limit price (as the engine trades), crossing the taker's
//! limit, for at most what both have left and, for a market buy, what its budget still pays
//! for.

use std::collections::{BTreeMap, HashMap};

use accounts_core::{
    Amend, AssetId, AssetRegistry, Fill, Ledger, LedgerCommand, LedgerConfig, LedgerEvent,
    PairFees, Release, ReleaseReason, Reserve, Transfer,
};
use proptest::prelude::*;
use protocol::{AccountId, OrderId, OrderType, PairId, PairRegistry, Price, Qty, Side};

/// Three pairs over three assets, with factors that are not all 1. Asset decimals: AAA 2
/// (AAA-EEE's qty), EEE 3 (AAA-EEE's notional), BBB 2 (AAA-BBB's notional).
const PAIRS: &str = r#"
[[pair]]
symbol = "AAA-EEE"
price_decimals = 1
qty_decimals = 2
tick_size = "0.1"
lot_size = "0.01"
min_qty = "0.01"
max_qty = "100"
min_notional = "0"

[[pair]]
symbol = "BBB-EEE"
price_decimals = 2
qty_decimals = 0
tick_size = "0.01"
lot_size = "1"
min_qty = "1"
max_qty = "100"
min_notional = "0"

[[pair]]
symbol = "AAA-BBB"
price_decimals = 1
qty_decimals = 1
tick_size = "0.1"
lot_size = "0.1"
min_qty = "0.1"
max_qty = "100"
min_notional = "0"
"#;

const ASSETS: usize = 3;
const ACCOUNTS: u64 = 4;
const FEE_ACCOUNT: u64 = 0;

/// Per pair: (base asset, quote asset, base units per qty unit, quote units per notional unit).
/// Assets are numbered by first appearance: AAA 0, EEE 1, BBB 2.
const MODEL_PAIRS: [(u32, u32, i128, i128); 3] = [(0, 1, 1, 1), (2, 1, 100, 10), (0, 2, 10, 1)];

/// Per pair: (maker ppm, taker ppm).
const FEES: [(u32, u32); 3] = [(0, 0), (2_500, 10_000), (50_000, 333_333)];

// ---- the model ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct MOrder {
    account: u64,
    pair: usize,
    buy: bool,
    limit: Option<i64>,
    qty: i64,
    filled: i64,
    held: i128,
}

#[derive(Default)]
struct Model {
    /// (account, asset) -> (available, reserved)
    balances: HashMap<(u64, u32), (i128, i128)>,
    orders: BTreeMap<u64, MOrder>,
    /// Deposits minus withdrawals, per asset.
    funded: [i128; ASSETS],
}

impl Model {
    fn add(&mut self, account: u64, asset: u32, available: i128, reserved: i128) {
        let b = self.balances.entry((account, asset)).or_default();
        b.0 += available;
        b.1 += reserved;
    }

    fn available(&self, account: u64, asset: u32) -> i128 {
        self.balances.get(&(account, asset)).map_or(0, |b| b.0)
    }

    fn held_for(&self, pair: usize, buy: bool, price: i64, qty: i64) -> i128 {
        let (_, _, bf, qf) = MODEL_PAIRS[pair];
        if buy {
            i128::from(price) * i128::from(qty) * qf
        } else {
            i128::from(qty) * bf
        }
    }

    fn asset_of(pair: usize, buy: bool) -> u32 {
        let (base, quote, _, _) = MODEL_PAIRS[pair];
        if buy { quote } else { base }
    }

    fn apply(&mut self, cmd: &LedgerCommand) -> Result<(), &'static str> {
        match cmd {
            LedgerCommand::Deposit(t) => {
                self.add(t.account_id.0, t.asset_id.0, t.amount_units, 0);
                self.funded[t.asset_id.0 as usize] += t.amount_units;
            }
            LedgerCommand::Withdraw(t) => {
                if self.available(t.account_id.0, t.asset_id.0) < t.amount_units {
                    return Err("insufficient_funds");
                }
                self.add(t.account_id.0, t.asset_id.0, -t.amount_units, 0);
                self.funded[t.asset_id.0 as usize] -= t.amount_units;
            }
            LedgerCommand::Reserve(r) => self.reserve(r)?,
            LedgerCommand::Amend(a) => self.amend(a)?,
            LedgerCommand::Fill(f) => self.fill(f),
            // Not generated: a leg is half a fill, checked against the whole one in the unit
            // test `two_shards_settling_one_leg_each_equal_one_ledger_settling_both`.
            LedgerCommand::FillLeg(_) => unreachable!("the generator makes no FillLeg"),
            LedgerCommand::Release(r) => {
                let o = self
                    .orders
                    .get(&r.order_id.0)
                    .filter(|o| o.account == r.account_id.0)
                    .ok_or("unknown_order")?
                    .clone();
                self.orders.remove(&r.order_id.0);
                self.add(o.account, Self::asset_of(o.pair, o.buy), o.held, -o.held);
            }
        }
        Ok(())
    }

    fn reserve(&mut self, r: &Reserve) -> Result<(), &'static str> {
        let pair = r.pair_id as usize;
        let buy = r.side == Side::Buy;
        let held = match (r.order_type, buy, r.quote_budget_notional) {
            (OrderType::Market, true, None) => return Err("quote_budget_required"),
            (OrderType::Market, true, Some(b)) if b > 0 => b * MODEL_PAIRS[pair].3,
            (_, _, Some(_)) => return Err("invalid_quote_budget"),
            (OrderType::Limit, _, None) => self.held_for(pair, buy, r.price.unwrap().0, r.qty.0),
            (OrderType::Market, false, None) => self.held_for(pair, false, 0, r.qty.0),
        };
        let asset = Self::asset_of(pair, buy);
        if self.available(r.account_id.0, asset) < held {
            return Err("insufficient_funds");
        }
        self.add(r.account_id.0, asset, -held, held);
        let order = MOrder {
            account: r.account_id.0,
            pair,
            buy,
            limit: r.price.map(|p| p.0),
            qty: r.qty.0,
            filled: 0,
            held,
        };
        self.orders.insert(r.order_id.0, order);
        Ok(())
    }

    fn amend(&mut self, a: &Amend) -> Result<(), &'static str> {
        let o = self
            .orders
            .get(&a.order_id.0)
            .filter(|o| o.account == a.account_id.0)
            .ok_or("unknown_order")?
            .clone();
        let Some(limit) = o.limit else {
            return Err("invalid_amend");
        };
        if a.new_price.is_none() && a.new_qty.is_none() {
            return Err("invalid_amend");
        }
        let price = a.new_price.map_or(limit, |p| p.0);
        let qty = a.new_qty.map_or(o.qty, |q| q.0);
        if qty <= o.filled {
            return Err("invalid_amend");
        }
        let held = self.held_for(o.pair, o.buy, price, qty - o.filled);
        let asset = Self::asset_of(o.pair, o.buy);
        let more = held - o.held;
        if more > 0 && self.available(o.account, asset) < more {
            return Err("insufficient_funds");
        }
        self.add(o.account, asset, -more, more);
        let slot = self.orders.get_mut(&a.order_id.0).unwrap();
        slot.limit = Some(price);
        slot.qty = qty;
        slot.held = held;
        Ok(())
    }

    /// Fills are generated consistent, so the model has no refusal for them.
    fn fill(&mut self, f: &Fill) {
        let pair = f.pair_id as usize;
        let (base, quote, bf, qf) = MODEL_PAIRS[pair];
        let (maker_ppm, taker_ppm) = FEES[pair];
        let cost = i128::from(f.price.0) * i128::from(f.qty.0) * qf;
        for (id, ppm) in [(f.maker_order_id, maker_ppm), (f.taker_order_id, taker_ppm)] {
            let o = self.orders[&id.0].clone();
            let ppm = i128::from(ppm);
            if o.buy {
                let consumed = match o.limit {
                    Some(limit) => i128::from(limit) * i128::from(f.qty.0) * qf,
                    None => cost,
                };
                self.add(o.account, quote, consumed - cost, -consumed);
                let received = i128::from(f.qty.0) * bf;
                let fee = received * ppm / 1_000_000;
                self.add(o.account, base, received - fee, 0);
                self.add(FEE_ACCOUNT, base, fee, 0);
                let slot = self.orders.get_mut(&id.0).unwrap();
                slot.held -= consumed;
                slot.filled += f.qty.0;
            } else {
                let consumed = i128::from(f.qty.0) * bf;
                self.add(o.account, base, 0, -consumed);
                let fee = cost * ppm / 1_000_000;
                self.add(o.account, quote, cost - fee, 0);
                self.add(FEE_ACCOUNT, quote, fee, 0);
                let slot = self.orders.get_mut(&id.0).unwrap();
                slot.held -= consumed;
                slot.filled += f.qty.0;
            }
        }
    }
}

// ---- generation --------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Deposit(u64, u32, i128),
    Withdraw(u64, u32, i128),
    Limit(u64, usize, bool, i64, i64),
    /// account, pair, buy, qty, budget (`None`, or a value that may be 0 to be refused).
    Market(u64, usize, bool, i64, Option<i128>),
    /// pick, new price, new qty, whether to name another account.
    Amend(usize, Option<i64>, Option<i64>, bool),
    /// couple pick (maker and taker), qty pick.
    Fill(usize, i64),
    /// pick, or a never-used order id when `None`.
    Release(Option<usize>),
}

fn deposit() -> impl Strategy<Value = Op> {
    (0..ACCOUNTS, 0..ASSETS as u32, 1..20_000_i128).prop_map(|(a, s, n)| Op::Deposit(a, s, n))
}

/// Some deposits first, so that orders are not all refused for want of funds; then anything.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    (
        prop::collection::vec(deposit(), 8..24),
        prop::collection::vec(op(), 1..120),
    )
        .prop_map(|(mut funding, rest)| {
            funding.extend(rest);
            funding
        })
}

fn op() -> impl Strategy<Value = Op> {
    let account = 0..ACCOUNTS;
    let asset = 0..ASSETS as u32;
    let pair = 0..MODEL_PAIRS.len();
    prop_oneof![
        3 => deposit(),
        1 => (account.clone(), asset, 1..3_000_i128).prop_map(|(a, s, n)| Op::Withdraw(a, s, n)),
        8 => (account.clone(), pair.clone(), any::<bool>(), 1..20_i64, 1..20_i64)
            .prop_map(|(a, p, b, price, qty)| Op::Limit(a, p, b, price, qty)),
        1 => (account, pair, any::<bool>(), 1..20_i64, prop::option::weighted(0.9, 0..400_i128))
            .prop_map(|(a, p, b, qty, budget)| Op::Market(a, p, b, qty, budget)),
        2 => (any::<usize>(), prop::option::of(1..20_i64), prop::option::of(1..25_i64), prop::bool::weighted(0.1))
            .prop_map(|(i, p, q, other)| Op::Amend(i, p, q, other)),
        6 => (any::<usize>(), 0..1_000_i64).prop_map(|(c, q)| Op::Fill(c, q)),
        2 => prop::option::weighted(0.9, any::<usize>()).prop_map(Op::Release),
    ]
}

/// Turns a pick into a command consistent with the model's open orders; `None` when there is
/// nothing to pick from (the step is skipped).
fn command(op: &Op, model: &Model, next_id: &mut u64) -> Option<LedgerCommand> {
    let open: Vec<(u64, &MOrder)> = model.orders.iter().map(|(&id, o)| (id, o)).collect();
    let side = |buy: bool| if buy { Side::Buy } else { Side::Sell };
    Some(match *op {
        Op::Deposit(account, asset, amount_units) | Op::Withdraw(account, asset, amount_units) => {
            let t = Transfer {
                transfer_id: 1,
                account_id: AccountId(account),
                asset_id: AssetId(asset),
                amount_units,
            };
            if matches!(op, Op::Deposit(..)) {
                LedgerCommand::Deposit(t)
            } else {
                LedgerCommand::Withdraw(t)
            }
        }
        Op::Limit(account, pair, buy, price, qty) => {
            *next_id += 1;
            LedgerCommand::Reserve(Reserve {
                order_id: OrderId(*next_id),
                account_id: AccountId(account),
                pair_id: pair as PairId,
                side: side(buy),
                order_type: OrderType::Limit,
                price: Some(Price(price)),
                qty: Qty(qty),
                quote_budget_notional: None,
            })
        }
        Op::Market(account, pair, buy, qty, budget) => {
            *next_id += 1;
            // A sell with a budget is refused; keep that rare.
            let budget = if buy {
                budget
            } else {
                budget.filter(|b| *b == 0)
            };
            LedgerCommand::Reserve(Reserve {
                order_id: OrderId(*next_id),
                account_id: AccountId(account),
                pair_id: pair as PairId,
                side: side(buy),
                order_type: OrderType::Market,
                price: None,
                qty: Qty(qty),
                quote_budget_notional: budget,
            })
        }
        Op::Amend(pick, price, qty, other_account) => {
            let (id, o) = *open.get(pick % open.len().max(1))?;
            let account = if other_account {
                (o.account + 1) % ACCOUNTS
            } else {
                o.account
            };
            LedgerCommand::Amend(Amend {
                order_id: OrderId(id),
                account_id: AccountId(account),
                new_price: price.map(Price),
                new_qty: qty.map(Qty),
            })
        }
        Op::Fill(couple_pick, qty_pick) => fill(&open, couple_pick, qty_pick, next_id)?,
        Op::Release(pick) => match pick {
            Some(pick) => {
                let (id, o) = *open.get(pick % open.len().max(1))?;
                LedgerCommand::Release(Release {
                    order_id: OrderId(id),
                    account_id: AccountId(o.account),
                    reason: ReleaseReason::Cancelled,
                })
            }
            None => LedgerCommand::Release(Release {
                order_id: OrderId(u64::MAX),
                account_id: AccountId(1),
                reason: ReleaseReason::Expired,
            }),
        },
    })
}

fn fill(
    open: &[(u64, &MOrder)],
    couple_pick: usize,
    qty_pick: i64,
    next_trade_id: &mut u64,
) -> Option<LedgerCommand> {
    // A maker rests, so it is a limit order; the trade is at its price and must cross the
    // taker's limit. Every couple that could trade, then one of them.
    let live = || open.iter().filter(|(_, o)| o.filled < o.qty);
    let couples: Vec<_> = live()
        .filter(|(_, m)| m.limit.is_some())
        .flat_map(|m| live().map(move |t| (m, t)))
        .filter(|((mid, m), (tid, t))| {
            let price = m.limit.unwrap();
            mid != tid
                && m.pair == t.pair
                && m.buy != t.buy
                && match (t.buy, t.limit) {
                    (_, None) => true,
                    (true, Some(l)) => l >= price,
                    (false, Some(l)) => l <= price,
                }
        })
        .collect();
    let &(&(maker_id, maker), &(taker_id, taker)) =
        couples.get(couple_pick % couples.len().max(1))?;
    let price = maker.limit?;
    let mut qty_max = (maker.qty - maker.filled).min(taker.qty - taker.filled);
    if taker.buy && taker.limit.is_none() {
        // A market buy stops where its budget stops.
        let per_qty_unit = i128::from(price) * MODEL_PAIRS[maker.pair].3;
        qty_max = qty_max.min(i64::try_from(taker.held / per_qty_unit).unwrap());
    }
    if qty_max == 0 {
        return None;
    }
    *next_trade_id += 1;
    Some(LedgerCommand::Fill(Fill {
        pair_id: maker.pair as PairId,
        trade_id: *next_trade_id,
        price: Price(price),
        qty: Qty(1 + qty_pick % qty_max),
        maker_side: if maker.buy { Side::Buy } else { Side::Sell },
        maker_order_id: OrderId(maker_id),
        maker_account_id: AccountId(maker.account),
        taker_order_id: OrderId(taker_id),
        taker_account_id: AccountId(taker.account),
    }))
}

// ---- the checks --------------------------------------------------------------------------

fn ledger() -> Ledger {
    let pairs = PairRegistry::from_toml(PAIRS).unwrap();
    let assets = AssetRegistry::from_pairs(&pairs);
    let symbols: Vec<_> = assets
        .iter()
        .map(|a| (a.symbol.as_str(), a.decimals))
        .collect();
    assert_eq!(symbols, [("AAA", 2), ("EEE", 3), ("BBB", 2)]);
    let pair_fees = FEES
        .iter()
        .enumerate()
        .map(|(i, &(maker_fee_ppm, taker_fee_ppm))| {
            let fees = PairFees {
                maker_fee_ppm,
                taker_fee_ppm,
            };
            (i as PairId, fees)
        })
        .collect();
    let config = LedgerConfig {
        fee_account_id: AccountId(FEE_ACCOUNT),
        pair_fees,
    };
    Ledger::new(assets, config).unwrap()
}

/// The invariants, on the real ledger, after every command.
fn check_invariants(ledger: &Ledger, model: &Model) {
    let mut totals = [0_i128; ASSETS];
    let mut reserved: BTreeMap<(AccountId, AssetId), i128> = BTreeMap::new();
    for (_, r) in ledger.reservations() {
        assert!(r.reserved_units >= 0 && r.filled_qty <= r.qty, "{r:?}");
        *reserved.entry((r.account_id, r.asset_id)).or_default() += r.reserved_units;
    }
    for (account, asset, b) in ledger.balances() {
        assert!(b.available_units >= 0 && b.reserved_units >= 0, "{b:?}");
        totals[asset.0 as usize] += b.total_units();
        let held = reserved.get(&(account, asset)).copied().unwrap_or(0);
        assert_eq!(
            b.reserved_units, held,
            "reserved = the open orders' reservations"
        );
    }
    assert_eq!(
        totals, model.funded,
        "per asset, all balances = deposits - withdrawals"
    );
    let open: Vec<u64> = ledger.reservations().map(|(id, _)| id.0).collect();
    let model_open: Vec<u64> = model.orders.keys().copied().collect();
    assert_eq!(open, model_open, "a released order leaves no reservation");
}

/// Each touched balance's events: deltas that add up, and the last one is the balance now.
fn check_events(
    ledger: &Ledger,
    before: &HashMap<(u64, u32), (i128, i128)>,
    events: &[LedgerEvent],
) {
    let mut running: HashMap<(u64, u32), (i128, i128)> = HashMap::new();
    for e in events {
        let key = (e.account_id.0, e.asset_id.0);
        let r = running
            .entry(key)
            .or_insert_with(|| before.get(&key).copied().unwrap_or_default());
        r.0 += e.available_delta_units;
        r.1 += e.reserved_delta_units;
        assert_eq!(
            *r,
            (e.balance.available_units, e.balance.reserved_units),
            "{e:?}"
        );
    }
    for ((account, asset), (available, reserved)) in running {
        let b = ledger.balance(AccountId(account), AssetId(asset));
        assert_eq!((b.available_units, b.reserved_units), (available, reserved));
    }
}

fn run(ops: &[Op]) {
    let mut ledger = ledger();
    let mut model = Model::default();
    let mut next_id = 0;
    let mut events = Vec::new();
    for op in ops {
        let Some(cmd) = command(op, &model, &mut next_id) else {
            continue;
        };
        let before = model.balances.clone();
        let expected = model.apply(&cmd);
        events.clear();
        let got = ledger.apply(&cmd, &mut events).map_err(|e| e.code());
        assert_eq!(got, expected, "{cmd:?}");
        if got.is_err() {
            assert!(events.is_empty(), "a refusal emits nothing");
        }
        check_events(&ledger, &before, &events);
        for (&(account, asset), &(available, reserved)) in &model.balances {
            let b = ledger.balance(AccountId(account), AssetId(asset));
            assert_eq!(
                (b.available_units, b.reserved_units),
                (available, reserved),
                "{cmd:?}"
            );
        }
        check_invariants(&ledger, &model);
    }
    // Releasing every order leaves nothing reserved anywhere.
    let open: Vec<_> = ledger
        .reservations()
        .map(|(id, r)| (id, r.account_id))
        .collect();
    for (order_id, account_id) in open {
        let release = Release {
            order_id,
            account_id,
            reason: ReleaseReason::Cancelled,
        };
        ledger
            .apply(&LedgerCommand::Release(release), &mut events)
            .unwrap();
    }
    assert!(ledger.balances().all(|(_, _, b)| b.reserved_units == 0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_agrees_with_the_model_and_conserves_every_asset(
        ops in ops()
    ) {
        run(&ops);
    }
}

/// The generator must reach the interesting cases, or the property proves little.
#[test]
fn generated_sequences_reach_the_interesting_cases() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    for _ in 0..50 {
        let ops = ops().new_tree(&mut runner).unwrap().current();
        let mut model = Model::default();
        let mut next_id = 0;
        for op in &ops {
            let Some(cmd) = command(op, &model, &mut next_id) else {
                continue;
            };
            if let LedgerCommand::Fill(f) = &cmd {
                let (maker, taker) = (
                    &model.orders[&f.maker_order_id.0],
                    &model.orders[&f.taker_order_id.0],
                );
                let buyer = if maker.buy { maker } else { taker };
                let kinds = [
                    ("fill", true),
                    ("self-trade", maker.account == taker.account),
                    (
                        "price improvement",
                        buyer.limit.is_some_and(|l| l > f.price.0),
                    ),
                    ("market buy fill", buyer.limit.is_none()),
                    (
                        "fee account trades",
                        maker.account == FEE_ACCOUNT || taker.account == FEE_ACCOUNT,
                    ),
                ];
                for (kind, _) in kinds.iter().filter(|(_, yes)| *yes) {
                    *seen.entry(kind).or_default() += 1;
                }
            }
            match (&cmd, model.apply(&cmd)) {
                (_, Err(code)) => *seen.entry(code).or_default() += 1,
                (LedgerCommand::Release(_), Ok(())) => *seen.entry("release").or_default() += 1,
                (LedgerCommand::Amend(_), Ok(())) => *seen.entry("amend").or_default() += 1,
                _ => {}
            }
        }
    }
    let at_least = [
        ("fill", 300),
        ("self-trade", 30),
        ("price improvement", 50),
        ("market buy fill", 10),
        ("fee account trades", 30),
        ("release", 100),
        ("amend", 50),
        ("insufficient_funds", 50),
        ("invalid_amend", 10),
        ("unknown_order", 10),
        ("quote_budget_required", 5),
    ];
    for (kind, min) in at_least {
        let n = seen.get(kind).copied().unwrap_or(0);
        assert!(n >= min, "{kind}: {n} < {min}, seen {seen:?}");
    }
}
