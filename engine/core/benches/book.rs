//! Matching-core throughput: a realistic command mix, and one order sweeping a deep book.
//!
//! Commands are generated up front by a tiny deterministic PRNG while being applied to a
//! scratch book, so cancels and amends target orders that are really live; the measured loop
//! replays the same commands on a fresh copy of the starting book and yields the same events.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use engine_core::OrderBook;
use protocol::{
    AccountId, AmendOrder, CancelOrder, Command, OrderId, OrderRef, OrderType, PairSpec,
    PlaceOrder, Price, Qty, SelfTradePrevention, Side, TimeInForce,
};

const MID: i64 = 10_000;
const PREFILL_ORDERS: u64 = 10_000;
const MIX_COMMANDS: usize = 200_000;
const SWEEP_LEVELS: i64 = 10_000;
const SWEEP_ORDERS_PER_LEVEL: u64 = 2;

fn spec() -> PairSpec {
    PairSpec {
        id: 0,
        symbol: "BTC-EUR".into(),
        price_decimals: 2,
        qty_decimals: 2,
        tick_size: Price(1),
        lot_size: Qty(1),
        min_qty: Qty(1),
        max_qty: Qty(1_000_000),
        min_notional: 0,
    }
}

/// xorshift64*: enough randomness for a workload, and the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn limit(id: u64, acct: u64, side: Side, price: i64, qty: i64, tif: TimeInForce) -> Command {
    Command::Place(PlaceOrder {
        quote_budget: None,
        order_id: OrderId(id),
        account_id: AccountId(acct),
        client_order_id: None,
        side,
        order_type: OrderType::Limit,
        price: Some(Price(price)),
        qty: Qty(qty),
        tif,
        post_only: false,
        stp: SelfTradePrevention::ExpireTaker,
    })
}

/// Generates commands while applying them to `book`, so targets are live when generated.
struct MixGen {
    rng: Rng,
    book: OrderBook,
    next_id: u64,
    placed: Vec<OrderId>,
    out: Vec<protocol::Event>,
}

impl MixGen {
    fn push(&mut self, cmd: Command, cmds: &mut Vec<Command>) {
        self.out.clear();
        self.book.apply(&cmd, 0, &mut self.out);
        cmds.push(cmd);
    }

    /// A resting price 1..=20 ticks away from the mid on the order's own side.
    fn passive(&mut self) -> Command {
        let side = if self.rng.below(2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        };
        let away = 1 + self.rng.below(20) as i64;
        let price = if side == Side::Buy {
            MID - away
        } else {
            MID + away
        };
        let qty = 1 + self.rng.below(10) as i64;
        let acct = 1 + self.rng.below(100);
        self.next_id += 1;
        self.placed.push(OrderId(self.next_id));
        limit(self.next_id, acct, side, price, qty, TimeInForce::Gtc)
    }

    fn marketable(&mut self) -> Command {
        let side = if self.rng.below(2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        };
        let price = if side == Side::Buy { MID + 3 } else { MID - 3 };
        let qty = 1 + self.rng.below(20) as i64;
        self.next_id += 1;
        limit(self.next_id, 0, side, price, qty, TimeInForce::Ioc)
    }

    /// A random live order, forgetting dead ones on the way.
    fn live(&mut self) -> Option<(OrderId, AccountId, Price, Qty)> {
        while !self.placed.is_empty() {
            let i = self.rng.below(self.placed.len() as u64) as usize;
            match self.book.get(self.placed[i]) {
                Some(o) => return Some((o.order_id, o.account_id, o.price, o.qty)),
                None => {
                    self.placed.swap_remove(i);
                }
            }
        }
        None
    }

    fn cancel(&mut self) -> Option<Command> {
        let (id, account_id, _, _) = self.live()?;
        Some(Command::Cancel(CancelOrder {
            account_id,
            target: OrderRef::Id(id),
        }))
    }

    /// Half quantity-down (keeps priority), half a one-tick move away from the mid.
    fn amend(&mut self) -> Option<Command> {
        let (id, account_id, price, qty) = self.live()?;
        let (new_price, new_qty) = if self.rng.below(2) == 0 && qty.0 > 1 {
            (None, Some(Qty(qty.0 - 1)))
        } else {
            let away = if price.0 < MID { -1 } else { 1 };
            (Some(Price(price.0 + away)), None)
        };
        Some(Command::Amend(AmendOrder {
            account_id,
            target: OrderRef::Id(id),
            new_price,
            new_qty,
        }))
    }
}

/// The starting book and 200k commands: 60% new limit orders near the top, 25% cancels,
/// 10% amends, 5% marketable IOC orders.
fn realistic_mix() -> (OrderBook, Vec<Command>) {
    let mut g = MixGen {
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        book: OrderBook::new(spec()),
        next_id: 0,
        placed: Vec::new(),
        out: Vec::new(),
    };
    let mut cmds = Vec::new();
    for _ in 0..PREFILL_ORDERS {
        let cmd = g.passive();
        g.push(cmd, &mut cmds);
    }
    let start = g.book.clone();
    cmds.clear();
    while cmds.len() < MIX_COMMANDS {
        let roll = g.rng.below(100);
        let cmd = match roll {
            0..60 => Some(g.passive()),
            60..85 => g.cancel(),
            85..95 => g.amend(),
            _ => Some(g.marketable()),
        };
        if let Some(cmd) = cmd {
            g.push(cmd, &mut cmds);
        }
    }
    print_mix(&start, &cmds);
    (start, cmds)
}

/// What the mix does, so BENCHMARKS.md can describe it from facts.
fn print_mix(start: &OrderBook, cmds: &[Command]) {
    let mut book = start.clone();
    let mut out = Vec::new();
    for cmd in cmds {
        book.apply(cmd, 0, &mut out);
    }
    let count = |f: fn(&protocol::EventBody) -> bool| out.iter().filter(|e| f(&e.body)).count();
    eprintln!(
        "mix: {} commands, {} events, {} trades, {} rejects; resting orders {} -> {}",
        cmds.len(),
        out.len(),
        count(|b| matches!(b, protocol::EventBody::Trade { .. })),
        count(|b| matches!(b, protocol::EventBody::Rejected { .. })),
        start.len(),
        book.len(),
    );
}

fn bench_mix(c: &mut Criterion) {
    let (start, cmds) = realistic_mix();
    let mut group = c.benchmark_group("matching_core");
    group.throughput(Throughput::Elements(cmds.len() as u64));
    group.bench_function("realistic_mix_200k_commands", |b| {
        let mut out = Vec::with_capacity(64);
        b.iter_batched(
            || start.clone(),
            |mut book| {
                for (ts, cmd) in cmds.iter().enumerate() {
                    out.clear();
                    book.apply(cmd, ts as u64, &mut out);
                    black_box(&out);
                }
                book
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// 10,000 ask levels of 2 orders each, swept entirely by one market buy.
fn deep_book() -> (OrderBook, Command, u64) {
    let mut book = OrderBook::new(spec());
    let mut out = Vec::new();
    let mut id = 0;
    let mut total = 0;
    for level in 0..SWEEP_LEVELS {
        for _ in 0..SWEEP_ORDERS_PER_LEVEL {
            id += 1;
            total += 5;
            book.apply(
                &limit(id, 1, Side::Sell, MID + level, 5, TimeInForce::Gtc),
                0,
                &mut out,
            );
        }
    }
    let sweep = Command::Place(PlaceOrder {
        quote_budget: None,
        order_id: OrderId(id + 1),
        account_id: AccountId(2),
        client_order_id: None,
        side: Side::Buy,
        order_type: OrderType::Market,
        price: None,
        qty: Qty(total),
        tif: TimeInForce::Ioc,
        post_only: false,
        stp: SelfTradePrevention::ExpireTaker,
    });
    (book, sweep, id)
}

fn bench_sweep(c: &mut Criterion) {
    let (start, sweep, makers) = deep_book();
    let mut group = c.benchmark_group("matching_core");
    group.throughput(Throughput::Elements(makers));
    group.bench_function("sweep_10k_levels_20k_makers", |b| {
        let mut out = Vec::with_capacity(100_000);
        b.iter_batched(
            || start.clone(),
            |mut book| {
                out.clear();
                book.apply(&sweep, 0, &mut out);
                black_box(&out);
                book
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn config() -> Criterion {
    // Modest times: the machine has 2 cores shared with other builds.
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_mix, bench_sweep
}
criterion_main!(benches);
