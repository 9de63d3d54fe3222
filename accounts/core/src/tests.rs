//! The ledger's rules, one at a time, on today's `config/pairs.toml`.

use std::collections::BTreeMap;

use protocol::{AccountId, OrderId, OrderType, PairId, PairRegistry, PairSpec, Price, Qty, Side};

use crate::*;

const REPO_PAIRS: &str = include_str!("../../../config/pairs.toml");
const FEES: AccountId = AccountId(0);
const ALICE: AccountId = AccountId(1);
const BOB: AccountId = AccountId(2);

struct T {
    pairs: PairRegistry,
    ledger: Ledger,
    events: Vec<LedgerEvent>,
}

fn setup(fees: &[(&str, u32, u32)]) -> T {
    let pairs = PairRegistry::from_toml(REPO_PAIRS).unwrap();
    let assets = AssetRegistry::from_pairs(&pairs);
    let pair_fees = fees
        .iter()
        .map(|&(symbol, maker_fee_ppm, taker_fee_ppm)| {
            let fees = PairFees {
                maker_fee_ppm,
                taker_fee_ppm,
            };
            (pairs.by_symbol(symbol).unwrap().id, fees)
        })
        .collect();
    let config = LedgerConfig {
        fee_account_id: FEES,
        pair_fees,
    };
    let ledger = Ledger::new(assets, config).unwrap();
    T {
        pairs,
        ledger,
        events: Vec::new(),
    }
}

impl T {
    fn asset(&self, symbol: &str) -> AssetId {
        self.ledger.assets().by_symbol(symbol).unwrap().id
    }

    fn pair(&self, symbol: &str) -> &PairSpec {
        self.pairs.by_symbol(symbol).unwrap()
    }

    /// Applies a command, keeping only its events; a refusal must change nothing.
    fn apply(&mut self, cmd: LedgerCommand) -> Result<(), LedgerError> {
        self.events.clear();
        let before = format!("{:?}", self.ledger);
        let result = self.ledger.apply(&cmd, &mut self.events);
        if result.is_err() {
            assert_eq!(
                format!("{:?}", self.ledger),
                before,
                "a refusal changed the ledger"
            );
            assert!(self.events.is_empty());
        }
        result
    }

    fn deposit(&mut self, account_id: AccountId, symbol: &str, amount: &str) {
        let asset_id = self.asset(symbol);
        let amount_units = self.units(symbol, amount);
        let t = Transfer {
            transfer_id: 1,
            account_id,
            asset_id,
            amount_units,
        };
        self.apply(LedgerCommand::Deposit(t)).unwrap();
    }

    /// A decimal amount of an asset in its units.
    fn units(&self, symbol: &str, amount: &str) -> i128 {
        let decimals = self.ledger.assets().by_symbol(symbol).unwrap().decimals;
        let (int, frac) = amount.split_once('.').unwrap_or((amount, ""));
        assert!(frac.len() as u32 <= decimals);
        let digits = format!("{int}{frac:0<width$}", width = decimals as usize);
        digits.parse().unwrap()
    }

    fn balance(&self, account_id: AccountId, symbol: &str) -> (i128, i128) {
        let b = self.ledger.balance(account_id, self.asset(symbol));
        (b.available_units, b.reserved_units)
    }

    fn limit(
        &self,
        id: u64,
        acc: AccountId,
        pair: &str,
        side: Side,
        price: &str,
        qty: &str,
    ) -> LedgerCommand {
        let spec = self.pair(pair);
        LedgerCommand::Reserve(Reserve {
            order_id: OrderId(id),
            account_id: acc,
            pair_id: spec.id,
            side,
            order_type: OrderType::Limit,
            price: Some(spec.parse_price(price).unwrap()),
            qty: spec.parse_qty(qty).unwrap(),
            quote_budget_notional: None,
        })
    }

    fn market(
        &self,
        id: u64,
        acc: AccountId,
        pair: &str,
        side: Side,
        qty: &str,
        budget: Option<&str>,
    ) -> LedgerCommand {
        let spec = self.pair(pair);
        let budget = budget.map(|b| {
            let scale = spec.price_decimals + spec.qty_decimals;
            i128::from(protocol::pairs::parse_units(b, scale).unwrap())
        });
        LedgerCommand::Reserve(Reserve {
            order_id: OrderId(id),
            account_id: acc,
            pair_id: spec.id,
            side,
            order_type: OrderType::Market,
            price: None,
            qty: spec.parse_qty(qty).unwrap(),
            quote_budget_notional: budget,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn fill(
        &self,
        pair: &str,
        price: &str,
        qty: &str,
        maker_side: Side,
        maker: (u64, AccountId),
        taker: (u64, AccountId),
    ) -> LedgerCommand {
        let spec = self.pair(pair);
        LedgerCommand::Fill(Fill {
            pair_id: spec.id,
            trade_id: 7,
            price: spec.parse_price(price).unwrap(),
            qty: spec.parse_qty(qty).unwrap(),
            maker_side,
            maker_order_id: OrderId(maker.0),
            maker_account_id: maker.1,
            taker_order_id: OrderId(taker.0),
            taker_account_id: taker.1,
        })
    }

    fn amend(
        &self,
        id: u64,
        acc: AccountId,
        pair: &str,
        price: Option<&str>,
        qty: Option<&str>,
    ) -> LedgerCommand {
        let spec = self.pair(pair);
        LedgerCommand::Amend(Amend {
            order_id: OrderId(id),
            account_id: acc,
            new_price: price.map(|p| spec.parse_price(p).unwrap()),
            new_qty: qty.map(|q| spec.parse_qty(q).unwrap()),
        })
    }

    fn release(id: u64, acc: AccountId) -> LedgerCommand {
        LedgerCommand::Release(Release {
            order_id: OrderId(id),
            account_id: acc,
            reason: ReleaseReason::Cancelled,
        })
    }

    /// Per asset, the sum over all accounts of available + reserved.
    fn totals(&self) -> BTreeMap<AssetId, i128> {
        let mut totals = BTreeMap::new();
        for (_, asset, b) in self.ledger.balances() {
            *totals.entry(asset).or_default() += b.total_units();
        }
        totals
    }
}

fn code(result: Result<(), LedgerError>) -> &'static str {
    result.unwrap_err().code()
}

// ---- funding -----------------------------------------------------------------------------

#[test]
fn deposit_and_withdraw_move_available_and_name_their_cause() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "EUR", "100");
    let eur = t.asset("EUR");
    let hundred = t.units("EUR", "100");
    assert_eq!(hundred, 100 * 10_i128.pow(10));
    let w = Transfer {
        transfer_id: 9,
        account_id: ALICE,
        asset_id: eur,
        amount_units: t.units("EUR", "30"),
    };
    t.apply(LedgerCommand::Withdraw(w)).unwrap();
    assert_eq!(
        t.events,
        [LedgerEvent {
            cause: Cause::Withdrawal { transfer_id: 9 },
            account_id: ALICE,
            asset_id: eur,
            available_delta_units: -t.units("EUR", "30"),
            reserved_delta_units: 0,
            balance: Balance {
                available_units: t.units("EUR", "70"),
                reserved_units: 0,
            },
        }]
    );
}

#[test]
fn a_withdrawal_beyond_available_is_insufficient_funds() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "EUR", "100");
    t.apply(t.limit(1, ALICE, "BTC-EUR", Side::Buy, "100", "0.5"))
        .unwrap();
    let w = Transfer {
        transfer_id: 2,
        account_id: ALICE,
        asset_id: t.asset("EUR"),
        amount_units: t.units("EUR", "50.0000000001"),
    };
    let err = t.apply(LedgerCommand::Withdraw(w)).unwrap_err();
    assert_eq!(
        err,
        LedgerError::InsufficientFunds {
            account_id: ALICE,
            asset_id: t.asset("EUR"),
            needed_units: t.units("EUR", "50.0000000001"),
            available_units: t.units("EUR", "50"),
        }
    );
    assert_eq!(err.code(), "insufficient_funds");
}

#[test]
fn transfers_must_be_positive_and_of_a_known_asset() {
    let mut t = setup(&[]);
    let mut d = Transfer {
        transfer_id: 1,
        account_id: ALICE,
        asset_id: t.asset("EUR"),
        amount_units: 0,
    };
    assert_eq!(code(t.apply(LedgerCommand::Deposit(d))), "invalid_amount");
    d.amount_units = -5;
    assert_eq!(code(t.apply(LedgerCommand::Withdraw(d))), "invalid_amount");
    d.amount_units = 5;
    d.asset_id = AssetId(99);
    assert_eq!(code(t.apply(LedgerCommand::Deposit(d))), "unknown_asset");
}

// ---- reserve -----------------------------------------------------------------------------

#[test]
fn a_limit_buy_reserves_price_times_qty_of_the_quote() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "EUR", "40000");
    t.apply(t.limit(1, ALICE, "BTC-EUR", Side::Buy, "60000.10", "0.5"))
        .unwrap();
    let cost = t.units("EUR", "30000.05");
    assert_eq!(t.balance(ALICE, "EUR"), (t.units("EUR", "9999.95"), cost));
    assert_eq!(t.events.len(), 1);
    assert_eq!(
        t.events[0].cause,
        Cause::Reserve {
            order_id: OrderId(1)
        }
    );
    assert_eq!(t.events[0].reserved_delta_units, cost);
    let r = t.ledger.reservation(OrderId(1)).unwrap();
    assert_eq!((r.asset_id, r.reserved_units), (t.asset("EUR"), cost));
}

#[test]
fn a_sell_reserves_its_qty_of_the_base_limit_or_market() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "BTC", "1");
    t.apply(t.limit(1, ALICE, "BTC-EUR", Side::Sell, "60000", "0.25"))
        .unwrap();
    t.apply(t.market(2, ALICE, "BTC-USD", Side::Sell, "0.5", None))
        .unwrap();
    assert_eq!(
        t.balance(ALICE, "BTC"),
        (t.units("BTC", "0.25"), t.units("BTC", "0.75"))
    );
    assert_eq!(
        code(t.apply(t.market(3, ALICE, "BTC-GBP", Side::Sell, "0.25001", None))),
        "insufficient_funds"
    );
}

#[test]
fn a_market_buy_needs_a_quote_budget_and_reserves_it() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "EUR", "100");
    let err = t
        .apply(t.market(1, ALICE, "ETH-EUR", Side::Buy, "1", None))
        .unwrap_err();
    assert_eq!(
        err,
        LedgerError::QuoteBudgetRequired {
            order_id: OrderId(1)
        }
    );
    assert_eq!(err.code(), "quote_budget_required");
    t.apply(t.market(1, ALICE, "ETH-EUR", Side::Buy, "1", Some("80")))
        .unwrap();
    assert_eq!(
        t.balance(ALICE, "EUR"),
        (t.units("EUR", "20"), t.units("EUR", "80"))
    );
    assert_eq!(
        code(t.apply(t.market(2, ALICE, "ETH-EUR", Side::Buy, "1", Some("20.01")))),
        "insufficient_funds"
    );
}

type Mutation = fn(&mut Reserve);

#[test]
fn malformed_reserves_are_refused() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "EUR", "100");
    t.deposit(ALICE, "BTC", "1");
    let LedgerCommand::Reserve(good) = t.limit(1, ALICE, "BTC-EUR", Side::Buy, "10", "1") else {
        unreachable!()
    };
    let bad = |f: Mutation| {
        let mut r = good;
        f(&mut r);
        LedgerCommand::Reserve(r)
    };
    let cases: [(Mutation, &str); 7] = [
        (
            |r| r.quote_budget_notional = Some(5),
            "invalid_quote_budget",
        ),
        (|r| r.price = None, "invalid_price"),
        (|r| r.price = Some(Price(0)), "invalid_price"),
        (|r| r.qty = Qty(0), "invalid_qty"),
        (|r| r.pair_id = 99, "unknown_pair"),
        (
            |r| {
                r.order_type = OrderType::Market;
                r.price = None;
                r.quote_budget_notional = Some(0);
            },
            "invalid_quote_budget",
        ),
        (
            |r| {
                r.side = Side::Sell;
                r.order_type = OrderType::Market;
                r.price = None;
                r.quote_budget_notional = Some(5);
            },
            "invalid_quote_budget",
        ),
    ];
    for (f, expected) in cases {
        assert_eq!(code(t.apply(bad(f))), expected);
    }
    t.apply(LedgerCommand::Reserve(good)).unwrap();
    assert_eq!(
        code(t.apply(LedgerCommand::Reserve(good))),
        "duplicate_order_id"
    );
}

#[test]
fn two_orders_in_two_pairs_cannot_reserve_the_same_money() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "EUR", "100");
    t.apply(t.limit(1, ALICE, "BTC-EUR", Side::Buy, "60", "1"))
        .unwrap();
    let err = t
        .apply(t.limit(2, ALICE, "ETH-EUR", Side::Buy, "60", "1"))
        .unwrap_err();
    assert_eq!(err.code(), "insufficient_funds");
    // Nor a market order or a withdrawal in a third place.
    assert_eq!(
        code(t.apply(t.market(3, ALICE, "SOL-EUR", Side::Buy, "1", Some("40.01")))),
        "insufficient_funds"
    );
    // Once the first is released, the money is free for the second.
    t.apply(T::release(1, ALICE)).unwrap();
    t.apply(t.limit(2, ALICE, "ETH-EUR", Side::Buy, "60", "1"))
        .unwrap();
    assert_eq!(
        t.balance(ALICE, "EUR"),
        (t.units("EUR", "40"), t.units("EUR", "60"))
    );
}

// ---- fill --------------------------------------------------------------------------------

#[test]
fn a_fill_moves_the_reserved_funds_of_both_sides() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "BTC", "1");
    t.deposit(BOB, "EUR", "50000");
    t.apply(t.limit(1, ALICE, "BTC-EUR", Side::Sell, "60000", "1"))
        .unwrap();
    t.apply(t.limit(2, BOB, "BTC-EUR", Side::Buy, "60000", "0.4"))
        .unwrap();
    t.apply(t.fill("BTC-EUR", "60000", "0.4", Side::Sell, (1, ALICE), (2, BOB)))
        .unwrap();

    assert_eq!(t.balance(ALICE, "BTC"), (0, t.units("BTC", "0.6")));
    assert_eq!(t.balance(ALICE, "EUR"), (t.units("EUR", "24000"), 0));
    assert_eq!(t.balance(BOB, "BTC"), (t.units("BTC", "0.4"), 0));
    assert_eq!(t.balance(BOB, "EUR"), (t.units("EUR", "26000"), 0));
    // Maker's rows (paid, received), then the taker's; no fee rows at 0 ppm.
    let rows: Vec<_> = t
        .events
        .iter()
        .map(|e| {
            (
                e.account_id,
                e.asset_id,
                e.available_delta_units,
                e.reserved_delta_units,
            )
        })
        .collect();
    let (btc, eur) = (t.asset("BTC"), t.asset("EUR"));
    assert_eq!(
        rows,
        [
            (ALICE, btc, 0, -t.units("BTC", "0.4")),
            (ALICE, eur, t.units("EUR", "24000"), 0),
            (BOB, eur, 0, -t.units("EUR", "24000")),
            (BOB, btc, t.units("BTC", "0.4"), 0),
        ]
    );
    assert_eq!(
        t.events[2].cause,
        Cause::Fill {
            pair_id: 0,
            trade_id: 7,
            order_id: OrderId(2),
            liquidity: Liquidity::Taker
        }
    );
    assert_eq!(t.ledger.reservation(OrderId(2)).unwrap().reserved_units, 0);
    assert_eq!(
        t.ledger.reservation(OrderId(1)).unwrap().filled_qty,
        Qty(40_000_000)
    );
}

#[test]
fn a_limit_buyer_gets_its_price_improvement_back() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "ETH", "2");
    t.deposit(BOB, "EUR", "5000");
    t.apply(t.limit(1, ALICE, "ETH-EUR", Side::Sell, "2000", "2"))
        .unwrap();
    // Bob bids 2100 for 2 ETH and takes Alice's 2000 ask for 1.5 of them.
    t.apply(t.limit(2, BOB, "ETH-EUR", Side::Buy, "2100", "2"))
        .unwrap();
    t.apply(t.fill("ETH-EUR", "2000", "1.5", Side::Sell, (1, ALICE), (2, BOB)))
        .unwrap();
    // 4200 reserved; 1.5 x 2100 = 3150 leaves it, 3000 is paid, 150 comes back.
    assert_eq!(
        t.balance(BOB, "EUR"),
        (t.units("EUR", "950"), t.units("EUR", "1050"))
    );
    assert_eq!(t.events[2].available_delta_units, t.units("EUR", "150"));
    // The rest is still reserved at the limit, and a release returns it.
    t.apply(T::release(2, BOB)).unwrap();
    assert_eq!(t.balance(BOB, "EUR"), (t.units("EUR", "2000"), 0));
    assert_eq!(t.balance(BOB, "ETH"), (t.units("ETH", "1.5"), 0));
}

#[test]
fn fees_are_taken_from_what_is_received_rounded_down_to_the_fee_account() {
    // XRP-EUR: qty in hundredths of an XRP (XRP's unit), notional x 1000 is EUR's unit.
    let mut t = setup(&[("XRP-EUR", 2_500, 100_000)]);
    t.deposit(ALICE, "XRP", "1");
    t.deposit(BOB, "EUR", "1");
    t.apply(t.limit(1, ALICE, "XRP-EUR", Side::Sell, "0.00007", "1"))
        .unwrap();
    t.apply(t.limit(2, BOB, "XRP-EUR", Side::Buy, "0.00007", "0.15"))
        .unwrap();
    t.apply(t.fill(
        "XRP-EUR",
        "0.00007",
        "0.15",
        Side::Sell,
        (1, ALICE),
        (2, BOB),
    ))
    .unwrap();
    // Alice (maker, 0.25%) receives 105 notional units = 105000 EUR units: fee 262.5 -> 262.
    assert_eq!(t.balance(ALICE, "EUR"), (105_000 - 262, 0));
    assert_eq!(t.balance(FEES, "EUR"), (262, 0));
    // Bob (taker, 10%) receives 15 XRP units: fee 1.5 -> 1.
    assert_eq!(t.balance(BOB, "XRP"), (14, 0));
    assert_eq!(t.balance(FEES, "XRP"), (1, 0));
    let fee_rows: Vec<_> = t
        .events
        .iter()
        .filter(|e| matches!(e.cause, Cause::Fee { .. }))
        .collect();
    assert_eq!(fee_rows.len(), 2);
    assert!(fee_rows.iter().all(|e| e.account_id == FEES));
    // Nothing is created or lost.
    assert_eq!(t.totals()[&t.asset("XRP")], t.units("XRP", "1"));
    assert_eq!(t.totals()[&t.asset("EUR")], t.units("EUR", "1"));
}

#[test]
fn fee_units_rounds_down_without_overflow() {
    assert_eq!(fee_units(999, 1_000), 0);
    assert_eq!(fee_units(1_000, 1_000), 1);
    assert_eq!(fee_units(1_999, 1_000), 1);
    assert_eq!(fee_units(3_000_001, 333_333), 999_999);
    assert_eq!(fee_units(i128::MAX, PPM_WHOLE), i128::MAX);
    assert_eq!(fee_units(i128::MAX, 0), 0);
    assert_eq!(fee_units(i128::MAX, 500_000), i128::MAX / 2);
}

#[test]
fn a_market_buy_spends_its_budget_and_the_rest_is_released() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "SOL", "10");
    t.deposit(BOB, "EUR", "100");
    t.apply(t.limit(1, ALICE, "SOL-EUR", Side::Sell, "20", "10"))
        .unwrap();
    t.apply(t.market(2, BOB, "SOL-EUR", Side::Buy, "10", Some("90")))
        .unwrap();
    t.apply(t.fill("SOL-EUR", "20", "4", Side::Sell, (1, ALICE), (2, BOB)))
        .unwrap();
    assert_eq!(
        t.balance(BOB, "EUR"),
        (t.units("EUR", "10"), t.units("EUR", "10"))
    );
    // A fifth SOL would cost 20 with 10 left of the budget: the engine overspent.
    let err = t
        .apply(t.fill("SOL-EUR", "20", "1", Side::Sell, (1, ALICE), (2, BOB)))
        .unwrap_err();
    assert_eq!(err.code(), "inconsistent_fill");
    t.apply(LedgerCommand::Release(Release {
        order_id: OrderId(2),
        account_id: BOB,
        reason: ReleaseReason::Expired,
    }))
    .unwrap();
    assert_eq!(t.balance(BOB, "EUR"), (t.units("EUR", "20"), 0));
    assert_eq!(t.balance(BOB, "SOL"), (t.units("SOL", "4"), 0));
    assert_eq!(
        t.events[0].cause,
        Cause::Release {
            order_id: OrderId(2),
            reason: ReleaseReason::Expired
        }
    );
}

#[test]
fn a_self_trade_settles_like_any_other() {
    let mut t = setup(&[("BTC-EUR", 1_000, 2_000)]);
    t.deposit(ALICE, "BTC", "1");
    t.deposit(ALICE, "EUR", "1000");
    t.apply(t.limit(1, ALICE, "BTC-EUR", Side::Buy, "1000", "1"))
        .unwrap();
    t.apply(t.limit(2, ALICE, "BTC-EUR", Side::Sell, "900", "1"))
        .unwrap();
    t.apply(t.fill("BTC-EUR", "1000", "1", Side::Buy, (1, ALICE), (2, ALICE)))
        .unwrap();
    // Alice paid herself, less the fees: 0.1% of the BTC as maker, 0.2% of the EUR as taker.
    assert_eq!(t.balance(ALICE, "BTC"), (t.units("BTC", "0.999"), 0));
    assert_eq!(t.balance(ALICE, "EUR"), (t.units("EUR", "998"), 0));
    assert_eq!(t.balance(FEES, "BTC"), (t.units("BTC", "0.001"), 0));
    assert_eq!(t.balance(FEES, "EUR"), (t.units("EUR", "2"), 0));
    t.apply(T::release(1, ALICE)).unwrap();
    t.apply(T::release(2, ALICE)).unwrap();
    assert!(t.events.is_empty(), "nothing was left reserved");
    assert_eq!(t.ledger.reservations().count(), 0);
}

#[test]
fn fills_that_contradict_the_reservations_change_nothing() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "BTC", "1");
    t.deposit(BOB, "EUR", "1000");
    t.apply(t.limit(1, ALICE, "BTC-EUR", Side::Sell, "500", "1"))
        .unwrap();
    t.apply(t.limit(2, BOB, "BTC-EUR", Side::Buy, "600", "1"))
        .unwrap();
    let cases = [
        t.fill("BTC-EUR", "500", "1", Side::Sell, (1, ALICE), (3, BOB)),
        t.fill("BTC-EUR", "500", "1", Side::Sell, (1, BOB), (2, BOB)),
        t.fill("BTC-EUR", "500", "1.1", Side::Sell, (1, ALICE), (2, BOB)),
        t.fill("BTC-EUR", "600.1", "1", Side::Sell, (1, ALICE), (2, BOB)),
        t.fill("BTC-EUR", "500", "1", Side::Buy, (1, ALICE), (2, BOB)),
        t.fill("BTC-USD", "500", "1", Side::Sell, (1, ALICE), (2, BOB)),
        t.fill("BTC-EUR", "500", "1", Side::Sell, (1, ALICE), (1, ALICE)),
        t.fill("BTC-EUR", "500", "0", Side::Sell, (1, ALICE), (2, BOB)),
    ];
    for cmd in cases {
        assert_eq!(code(t.apply(cmd.clone())), "inconsistent_fill", "{cmd:?}");
    }
}

// ---- amend -------------------------------------------------------------------------------

#[test]
fn an_amend_up_reserves_the_difference_or_is_refused() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "EUR", "1000");
    t.apply(t.limit(1, ALICE, "ETH-EUR", Side::Buy, "100", "5"))
        .unwrap();
    t.apply(t.amend(1, ALICE, "ETH-EUR", Some("150"), None))
        .unwrap();
    assert_eq!(
        t.balance(ALICE, "EUR"),
        (t.units("EUR", "250"), t.units("EUR", "750"))
    );
    assert_eq!(
        t.events[0].cause,
        Cause::Amend {
            order_id: OrderId(1)
        }
    );
    assert_eq!(t.events[0].reserved_delta_units, t.units("EUR", "250"));
    // 8 at 150 needs 450 more than the 750 held; 250 are available.
    let err = t
        .apply(t.amend(1, ALICE, "ETH-EUR", None, Some("8")))
        .unwrap_err();
    assert_eq!(
        err,
        LedgerError::InsufficientFunds {
            account_id: ALICE,
            asset_id: t.asset("EUR"),
            needed_units: t.units("EUR", "450"),
            available_units: t.units("EUR", "250"),
        }
    );
}

#[test]
fn an_amend_down_releases_the_difference() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "BTC", "2");
    t.apply(t.limit(1, ALICE, "BTC-EUR", Side::Sell, "100", "2"))
        .unwrap();
    t.apply(t.amend(1, ALICE, "BTC-EUR", Some("90"), Some("0.5")))
        .unwrap();
    assert_eq!(
        t.balance(ALICE, "BTC"),
        (t.units("BTC", "1.5"), t.units("BTC", "0.5"))
    );
    assert_eq!(t.events[0].available_delta_units, t.units("BTC", "1.5"));
    // A new price alone does not change what a sell holds.
    t.apply(t.amend(1, ALICE, "BTC-EUR", Some("95"), None))
        .unwrap();
    assert!(t.events.is_empty());
}

#[test]
fn an_amend_counts_the_settled_fills() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "EUR", "1000");
    t.deposit(BOB, "ETH", "10");
    t.apply(t.limit(1, ALICE, "ETH-EUR", Side::Buy, "100", "5"))
        .unwrap();
    t.apply(t.limit(2, BOB, "ETH-EUR", Side::Sell, "100", "3"))
        .unwrap();
    t.apply(t.fill("ETH-EUR", "100", "3", Side::Buy, (1, ALICE), (2, BOB)))
        .unwrap();
    // 2 left at 100 = 200 held; a new total of 6 leaves 3 to fill at 120 = 360.
    t.apply(t.amend(1, ALICE, "ETH-EUR", Some("120"), Some("6")))
        .unwrap();
    assert_eq!(
        t.balance(ALICE, "EUR"),
        (t.units("EUR", "340"), t.units("EUR", "360"))
    );
    let err = t
        .apply(t.amend(1, ALICE, "ETH-EUR", None, Some("3")))
        .unwrap_err();
    assert_eq!(err.code(), "invalid_amend");
}

#[test]
fn an_amend_must_name_a_change_to_an_own_resting_limit_order() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "EUR", "1000");
    t.apply(t.limit(1, ALICE, "ETH-EUR", Side::Buy, "100", "5"))
        .unwrap();
    t.apply(t.market(2, ALICE, "ETH-EUR", Side::Buy, "1", Some("10")))
        .unwrap();
    assert_eq!(
        code(t.apply(t.amend(1, BOB, "ETH-EUR", Some("1"), None))),
        "unknown_order"
    );
    assert_eq!(
        code(t.apply(t.amend(3, ALICE, "ETH-EUR", Some("1"), None))),
        "unknown_order"
    );
    assert_eq!(
        code(t.apply(t.amend(1, ALICE, "ETH-EUR", None, None))),
        "invalid_amend"
    );
    assert_eq!(
        code(t.apply(t.amend(2, ALICE, "ETH-EUR", Some("1"), None))),
        "invalid_amend"
    );
    assert_eq!(
        code(t.apply(t.amend(1, ALICE, "ETH-EUR", Some("0"), None))),
        "invalid_price"
    );
}

// ---- release -----------------------------------------------------------------------------

#[test]
fn a_release_returns_what_is_left_and_forgets_the_order() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "EUR", "100");
    t.apply(t.limit(1, ALICE, "BTC-EUR", Side::Buy, "10", "3"))
        .unwrap();
    assert_eq!(code(t.apply(T::release(1, BOB))), "unknown_order");
    t.apply(T::release(1, ALICE)).unwrap();
    assert_eq!(t.balance(ALICE, "EUR"), (t.units("EUR", "100"), 0));
    assert!(t.ledger.reservation(OrderId(1)).is_none());
    assert_eq!(code(t.apply(T::release(1, ALICE))), "unknown_order");
    assert_eq!(
        ReleaseReason::from(protocol::DoneReason::ExpiredStp),
        ReleaseReason::ExpiredStp
    );
}

// ---- configuration -----------------------------------------------------------------------

#[test]
fn fees_above_the_whole_or_for_unknown_pairs_are_refused() {
    let pairs = PairRegistry::from_toml(REPO_PAIRS).unwrap();
    let config = |pair_id: PairId, ppm: u32| LedgerConfig {
        fee_account_id: FEES,
        pair_fees: BTreeMap::from([(
            pair_id,
            PairFees {
                maker_fee_ppm: 0,
                taker_fee_ppm: ppm,
            },
        )]),
    };
    let assets = || AssetRegistry::from_pairs(&pairs);
    assert!(Ledger::new(assets(), config(0, PPM_WHOLE)).is_ok());
    assert_eq!(
        Ledger::new(assets(), config(0, PPM_WHOLE + 1)).unwrap_err(),
        ConfigError::FeeAboveWhole {
            pair_id: 0,
            fee_ppm: PPM_WHOLE + 1
        }
    );
    let unknown = pairs.len() as PairId;
    assert_eq!(
        Ledger::new(assets(), config(unknown, 1)).unwrap_err(),
        ConfigError::UnknownPair { pair_id: unknown }
    );
}

#[test]
fn a_fills_fee_is_what_trade_fee_tells_a_client() {
    // Maker 0.1%, taker 0.2%, and a notional whose fee rounds (down).
    let mut t = setup(&[("BTC-EUR", 1_000, 2_000)]);
    t.deposit(ALICE, "BTC", "1");
    t.deposit(BOB, "EUR", "50000");
    t.apply(t.limit(1, ALICE, "BTC-EUR", Side::Sell, "60000.3", "0.33333"))
        .unwrap();
    t.apply(t.limit(2, BOB, "BTC-EUR", Side::Buy, "61000", "0.33333"))
        .unwrap();
    let fill = t.fill(
        "BTC-EUR",
        "60000.3",
        "0.33333",
        Side::Sell,
        (1, ALICE),
        (2, BOB),
    );
    let LedgerCommand::Fill(f) = fill.clone() else {
        unreachable!()
    };
    t.apply(fill).unwrap();
    let fees = PairFees {
        maker_fee_ppm: 1_000,
        taker_fee_ppm: 2_000,
    };
    let assets = t.ledger.assets().clone();
    let charged = |order_id: u64| {
        t.events
            .iter()
            .find(|e| matches!(e.cause, Cause::Fee { order_id: o, .. } if o == OrderId(order_id)))
            .map(|e| (e.asset_id, e.available_delta_units))
            .expect("a fee row")
    };
    let seller = trade_fee(
        &assets,
        fees,
        f.pair_id,
        Side::Sell,
        Liquidity::Maker,
        f.price,
        f.qty,
    );
    let buyer = trade_fee(
        &assets,
        fees,
        f.pair_id,
        Side::Buy,
        Liquidity::Taker,
        f.price,
        f.qty,
    );
    assert_eq!(seller, Some(charged(1)));
    assert_eq!(buyer, Some(charged(2)));
    // The seller receives 60000.3 x 0.33333 = 19999.899999 EUR and pays 0.1% of it; the buyer
    // receives 0.33333 BTC and pays 0.2%.
    let (eur, units) = seller.unwrap();
    assert_eq!(assets.get(eur).unwrap().symbol, "EUR");
    assert_eq!(units, t.units("EUR", "19.999899999"));
    let (btc, units) = buyer.unwrap();
    assert_eq!(assets.get(btc).unwrap().symbol, "BTC");
    assert_eq!(units, t.units("BTC", "0.00066666"));
}

#[test]
fn two_shards_settling_one_leg_each_equal_one_ledger_settling_both() {
    // One ledger holds both accounts; two others hold one each, as two shards would.
    let mut both = setup(&[("BTC-EUR", 1_000, 2_000)]);
    let mut maker_shard = setup(&[("BTC-EUR", 1_000, 2_000)]);
    let mut taker_shard = setup(&[("BTC-EUR", 1_000, 2_000)]);
    for t in [&mut both, &mut maker_shard] {
        t.deposit(ALICE, "BTC", "1");
        t.apply(t.limit(1, ALICE, "BTC-EUR", Side::Sell, "60000", "1"))
            .unwrap();
    }
    for t in [&mut both, &mut taker_shard] {
        t.deposit(BOB, "EUR", "50000");
        t.apply(t.limit(2, BOB, "BTC-EUR", Side::Buy, "61000", "0.4"))
            .unwrap();
    }
    let fill = both.fill("BTC-EUR", "60000", "0.4", Side::Sell, (1, ALICE), (2, BOB));
    both.apply(fill.clone()).unwrap();
    let LedgerCommand::Fill(f) = fill else {
        unreachable!()
    };
    let leg = |liquidity| LedgerCommand::FillLeg(FillLeg { fill: f, liquidity });
    maker_shard.apply(leg(Liquidity::Maker)).unwrap();
    taker_shard.apply(leg(Liquidity::Taker)).unwrap();
    // The other shard's order is unknown here: its leg is inconsistent and changes nothing.
    assert_eq!(
        code(maker_shard.apply(leg(Liquidity::Taker))),
        "inconsistent_fill"
    );

    for asset in ["BTC", "EUR"] {
        assert_eq!(
            maker_shard.balance(ALICE, asset),
            both.balance(ALICE, asset)
        );
        assert_eq!(taker_shard.balance(BOB, asset), both.balance(BOB, asset));
        let fees = |t: &T| t.balance(FEES, asset).0;
        assert_eq!(
            fees(&maker_shard) + fees(&taker_shard),
            fees(&both),
            "{asset}"
        );
    }
    assert_eq!(
        maker_shard.ledger.reservation(OrderId(1)),
        both.ledger.reservation(OrderId(1))
    );
    assert_eq!(
        taker_shard.ledger.reservation(OrderId(2)),
        both.ledger.reservation(OrderId(2))
    );
}

#[test]
fn a_restored_ledger_continues_like_the_original() {
    let mut t = setup(&[]);
    t.deposit(ALICE, "EUR", "1000");
    t.apply(t.limit(1, ALICE, "BTC-EUR", Side::Buy, "60000", "0.01"))
        .unwrap();
    let mut copy = setup(&[]);
    for (acc, asset, b) in t.ledger.balances() {
        copy.ledger.restore_balance(acc, asset, b).unwrap();
    }
    for (id, r) in t.ledger.reservations() {
        copy.ledger.restore_reservation(id, *r).unwrap();
    }
    assert_eq!(format!("{:?}", copy.ledger), format!("{:?}", t.ledger));
    let reservation = *t.ledger.reservation(OrderId(1)).unwrap();
    assert_eq!(
        code(copy.ledger.restore_reservation(OrderId(1), reservation)),
        "duplicate_order_id"
    );
    let eur = t.asset("EUR");
    let negative = Balance {
        available_units: -1,
        reserved_units: 0,
    };
    assert_eq!(
        code(copy.ledger.restore_balance(BOB, eur, negative)),
        "invalid_amount"
    );
    for l in [&mut t, &mut copy] {
        l.apply(T::release(1, ALICE)).unwrap();
    }
    assert_eq!(t.balance(ALICE, "EUR"), copy.balance(ALICE, "EUR"));
}
