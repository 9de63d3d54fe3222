//! A deterministic, realistic command stream for one pair, shared by the benchmark and the
//! black-box tests: limit orders around a drifting mid (most rest, some cross), cancels of
//! earlier orders, a few IOC and market orders, over a few dozen accounts.

use protocol::records::{OrderRecord, RECORD_VERSION};
use protocol::{
    AccountId, CancelOrder, Command, OrderId, OrderRef, OrderType, PairSpec, PlaceOrder, Price,
    Qty, SelfTradePrevention, Side, TimeInForce,
};

/// xorshift64*: small, fast, reproducible from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Generates commands for one pair. Order ids are `pair_id << 40 | n`, so they are unique
/// across pairs; command ids likewise.
pub struct Workload {
    spec: PairSpec,
    rng: Rng,
    n: u64,
    mid_ticks: i64,
    live: Vec<(OrderId, AccountId)>,
}

const ACCOUNTS: u64 = 40;
const LIVE_TRACKED_MAX: usize = 4096;

impl Workload {
    pub fn new(spec: PairSpec, seed: u64) -> Workload {
        // Mid far enough from 0 that notional minimums are met with a few lots.
        let mid_ticks = 1_000_000 / spec.tick_size.0.max(1) + 10_000;
        let seed = seed ^ (u64::from(spec.id) << 32);
        Workload {
            spec,
            rng: Rng::new(seed),
            n: 0,
            mid_ticks,
            live: Vec::new(),
        }
    }

    pub fn next_record(&mut self, ts_ns: u64) -> OrderRecord {
        self.n += 1;
        let command_id = (u64::from(self.spec.id) << 40) | self.n;
        let roll = self.rng.below(100);
        let command = if roll < 15 && !self.live.is_empty() {
            let i = self.rng.below(self.live.len() as u64) as usize;
            let (order_id, account_id) = self.live.swap_remove(i);
            Command::Cancel(CancelOrder {
                account_id,
                target: OrderRef::Id(order_id),
            })
        } else {
            self.place(command_id, roll)
        };
        OrderRecord {
            v: RECORD_VERSION,
            command_id,
            pair: self.spec.symbol.clone(),
            ts_ns,
            src: None,
            tp: None,
            command,
        }
    }

    fn place(&mut self, order_id: u64, roll: u64) -> Command {
        let side = if self.rng.below(2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        };
        // The mid drifts a little so the book keeps trading at both ends.
        self.mid_ticks = (self.mid_ticks + self.rng.below(3) as i64 - 1).max(100);
        let offset = self.rng.below(20) as i64 - 5; // mostly passive, some crossing
        let ticks = match side {
            Side::Buy => self.mid_ticks - offset,
            Side::Sell => self.mid_ticks + offset,
        };
        let price = Price(ticks * self.spec.tick_size.0);
        let lots_min = self.spec.min_qty.0 / self.spec.lot_size.0;
        // Enough lots to clear the minimum notional, plus some spread.
        let notional_lots = (self.spec.min_notional
            / (i128::from(price.0) * i128::from(self.spec.lot_size.0)).max(1))
            as i64
            + 1;
        let lots = lots_min.max(notional_lots) + self.rng.below(20) as i64;
        let qty = Qty(lots * self.spec.lot_size.0);
        let account_id = AccountId(1 + self.rng.below(ACCOUNTS));
        let (order_type, tif, price) = match roll {
            15..=19 => (OrderType::Limit, TimeInForce::Ioc, Some(price)),
            20..=21 => (OrderType::Market, TimeInForce::Ioc, None),
            _ => (OrderType::Limit, TimeInForce::Gtc, Some(price)),
        };
        let id = OrderId(order_id);
        if tif == TimeInForce::Gtc && self.live.len() < LIVE_TRACKED_MAX {
            self.live.push((id, account_id));
        }
        Command::Place(PlaceOrder {
            quote_budget: None,
            order_id: id,
            account_id,
            client_order_id: None,
            side,
            order_type,
            price,
            qty,
            tif,
            post_only: false,
            stp: SelfTradePrevention::ExpireTaker,
        })
    }
}
