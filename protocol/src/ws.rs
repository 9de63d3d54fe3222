//! JSON messages between trading clients and the gateway, one message per WebSocket text frame.
//!
//! Requests: `{"id": 7, "method": "place", "params": {...}}`. The `id` is the client's, any
//! integer up to 2^53 - 1, echoed in the response. Responses are either
//! `{"id": 7, "result": {...}}` or `{"id": 7, "error": {"code": "...", "message": "..."}}`.
//! Pushes (no `id`) carry a `channel`: `orders` (the account's private stream), `balances`
//! (the account's balances, when the account stage is on), `book`, `trades`, `ticker`,
//! `heartbeat`, `status`.
//!
//! Prices and quantities are decimal strings at the edge; ids are JSON integers below 2^53 so
//! JavaScript clients read them exactly. `docs/asyncapi.yaml` documents every message here.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::domain::{
    ClientOrderId, CommandKind, DoneReason, OrderType, RejectReason, SelfTradePrevention, Side,
    TimeInForce,
};

/// Largest request id (and order id) we hand to JSON clients: 2^53 - 1.
pub const JSON_SAFE_INT_MAX: u64 = (1 << 53) - 1;

/// A parsed client request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    pub body: RequestBody,
    /// The client's W3C trace context, if it sent one: the command's trace continues it.
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum RequestBody {
    Login(Login),
    Place(Place),
    Cancel(Cancel),
    CancelAll(CancelAllParams),
    Amend(Amend),
    /// Dead-man switch: cancel all of the account's orders if not refreshed within `timeout_ms`.
    CancelAllAfter(CancelAllAfter),
    Subscribe(Subscription),
    Unsubscribe(Subscription),
    /// The account's balances as the account stage last committed them.
    Balances(BalancesQuery),
    /// The account's open orders as the engine committed them, with the seq per pair.
    OpenOrders(OpenOrdersQuery),
    /// One of the account's orders, whatever its status.
    OrderStatus(OrderStatusQuery),
    /// The account's fills, newest first, a page at a time.
    MyTrades(MyTradesQuery),
    Ping,
}

impl RequestBody {
    pub fn method(&self) -> &'static str {
        match self {
            RequestBody::Login(_) => "login",
            RequestBody::Place(_) => "place",
            RequestBody::Cancel(_) => "cancel",
            RequestBody::CancelAll(_) => "cancel_all",
            RequestBody::Amend(_) => "amend",
            RequestBody::CancelAllAfter(_) => "cancel_all_after",
            RequestBody::Subscribe(_) => "subscribe",
            RequestBody::Unsubscribe(_) => "unsubscribe",
            RequestBody::Balances(_) => "balances",
            RequestBody::OpenOrders(_) => "open_orders",
            RequestBody::OrderStatus(_) => "order_status",
            RequestBody::MyTrades(_) => "my_trades",
            RequestBody::Ping => "ping",
        }
    }
}

/// Every method name, for documentation checks.
pub const METHODS: &[&str] = &[
    "login",
    "place",
    "cancel",
    "cancel_all",
    "amend",
    "cancel_all_after",
    "subscribe",
    "unsubscribe",
    "balances",
    "open_orders",
    "order_status",
    "my_trades",
    "ping",
];

/// Signed login. `signature` is, for an Ed25519 key, base64 of the 64-byte Ed25519 signature;
/// for an HMAC key, lowercase hex HMAC-SHA256 keyed by the API secret; either over
/// `"{key_id}\n{ts_ms}\n{nonce}"`. Refused when `ts_ms` is outside the gateway's window (5 s by
/// default) or the nonce was seen before for this key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub key_id: String,
    pub ts_ms: u64,
    /// 8 to 64 characters, unique per key within the window.
    pub nonce: String,
    pub signature: String,
}

/// The bytes a login signature covers.
pub fn login_payload(key_id: &str, ts_ms: u64, nonce: &str) -> String {
    format!("{key_id}\n{ts_ms}\n{nonce}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    pub pair: String,
    pub side: Side,
    #[serde(rename = "type")]
    pub order_type: OrderType,
    /// Decimal string; required for limit orders, absent for market orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    /// Decimal string, in the base currency.
    pub qty: String,
    /// Absent: `gtc` for a limit order, `ioc` for a market order (see [`Place::time_in_force`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tif: Option<TimeInForce>,
    #[serde(default)]
    pub post_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<ClientOrderId>,
    #[serde(default)]
    pub stp: SelfTradePrevention,
    /// Market buys only: the most quote asset to spend, a decimal string with up to
    /// `price_decimals + qty_decimals` decimals (like Binance's `quoteOrderQty`). The order buys
    /// up to `qty` and stops when the budget is spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote_qty: Option<String>,
}

/// `balances`: every asset of the account, or only `asset`. Params may be omitted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancesQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
}

/// `open_orders`: every pair, or only `pair`. Params may be omitted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenOrdersQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
}

/// `order_status`: one order of the account, named like a cancel names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderStatusQuery {
    pub pair: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<ClientOrderId>,
}

/// `my_trades`: the account's fills, newest first. Params may be omitted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MyTradesQuery {
    /// One pair, or every pair when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
    /// Fills per page: default [`MY_TRADES_LIMIT_DEFAULT`], at most [`MY_TRADES_LIMIT_MAX`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Only fills of trades before this one (trade ids are per pair, so `pair` is required):
    /// the previous answer's `next_before_trade_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_trade_id: Option<u64>,
}

pub const MY_TRADES_LIMIT_DEFAULT: u32 = 100;
pub const MY_TRADES_LIMIT_MAX: u32 = 1000;
/// `open_orders` answers at most this many orders (oldest first) and says `truncated`.
pub const OPEN_ORDERS_MAX: u32 = 1000;

/// An order's status as the engine stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Open,
    Filled,
    Cancelled,
    Expired,
    ExpiredStp,
}

/// One order as the engine committed it. Quantities are decimal strings with the pair's
/// decimals; `qty` is the total (filled part included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderInfo {
    pub pair: String,
    pub order_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<ClientOrderId>,
    pub side: Side,
    #[serde(rename = "type")]
    pub order_type: OrderType,
    pub tif: TimeInForce,
    pub post_only: bool,
    /// Absent for market orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    pub qty: String,
    pub filled_qty: String,
    pub remaining_qty: String,
    pub status: OrderState,
    /// The pair's seq of the order's `accepted` event, and of the last event that changed it.
    pub created_seq: u64,
    pub updated_seq: u64,
}

/// `result` of `open_orders`. `as_of_seq` names, per pair the query covers, the pair's seq the
/// answer reflects: every event up to it, none after. An `orders` push with a higher `seq` is
/// not in the answer; one at or below it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenOrders {
    /// Oldest first (by `order_id`).
    pub orders: Vec<OrderInfo>,
    pub as_of_seq: std::collections::BTreeMap<String, u64>,
    /// More than [`OPEN_ORDERS_MAX`] orders are open: ask per pair.
    pub truncated: bool,
}

/// `result` of `order_status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderStatus {
    pub order: OrderInfo,
    /// The pair's seq the answer reflects.
    pub as_of_seq: u64,
}

/// Whether the account's order was the resting (maker) or the incoming (taker) side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liquidity {
    Maker,
    Taker,
}

/// One fill of the account's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MyTrade {
    pub pair: String,
    pub trade_id: u64,
    /// The pair's seq of the trade.
    pub seq: u64,
    pub order_id: u64,
    /// The side of the account's order.
    pub side: Side,
    pub liquidity: Liquidity,
    pub price: String,
    pub qty: String,
    pub ts_ms: u64,
}

/// `result` of `my_trades`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MyTrades {
    pub trades: Vec<MyTrade>,
    pub as_of_seq: std::collections::BTreeMap<String, u64>,
    /// With `pair`, when the page is full: pass it as `before_trade_id` for the next (older)
    /// page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before_trade_id: Option<u64>,
}

impl Place {
    /// The time in force asked for, or the default: a market order never rests, so it is
    /// immediate-or-cancel unless it says `fok`.
    pub fn time_in_force(&self) -> TimeInForce {
        self.tif.unwrap_or(match self.order_type {
            OrderType::Limit => TimeInForce::Gtc,
            OrderType::Market => TimeInForce::Ioc,
        })
    }
}

/// Names one order: exactly one of `order_id` and `client_order_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    pub pair: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<ClientOrderId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelAllParams {
    /// One pair, or every pair when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
}

/// Names one order like [`Cancel`]; at least one of `price` and `qty` (the new total quantity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amend {
    pub pair: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<ClientOrderId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qty: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelAllAfter {
    /// 0 disarms the switch.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Book,
    Trades,
    Ticker,
    /// The logged-in account's balances (no `pair`); only with the account stage on.
    Balances,
}

impl Channel {
    /// A market data channel names a pair; a private one does not.
    pub fn is_market(self) -> bool {
        !matches!(self, Channel::Balances)
    }
}

/// `pair` is required for the market channels and absent for `balances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub channel: Channel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
}

/// Stable, machine-readable error codes. The serialized name is the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a JSON object with an integer `id` and a string `method`.
    MalformedRequest,
    UnknownMethod,
    /// `params` missing, of the wrong shape, or with unknown fields.
    InvalidParams,
    /// Binary frames are not part of the API.
    UnsupportedFrame,
    /// Trading before a successful login.
    Unauthenticated,
    AlreadyAuthenticated,
    UnknownKey,
    BadSignature,
    StaleTimestamp,
    NonceReused,
    UnknownPair,
    /// A price or quantity that is not a plain decimal, or has more decimals than the pair.
    InvalidDecimal,
    /// Order ids: none, both, or an unknown one.
    InvalidOrderRef,
    /// Per connection or per account rate limit; see `retry_after_ms`.
    RateLimited,
    /// The system is shedding load; see `retry_after_ms`. Cancels are still admitted.
    Overloaded,
    /// The gateway is draining for shutdown.
    ShuttingDown,
    /// Too many subscriptions on one connection.
    TooManySubscriptions,
    NotSubscribed,
    /// Something broke on our side; the message says what, never a secret.
    Internal,
    /// The connection is closing and Kafka has not acknowledged the command in time: it may or
    /// may not take effect (its verdict reaches the account's other connections).
    OutcomeUnknown,
    /// `balances` (the request or the channel) while this gateway runs without the account
    /// stage.
    AccountsDisabled,
    /// An asset no pair trades.
    UnknownAsset,
    /// `order_status`: the account has no such order in the database (yet: it trails the
    /// stream by the engine's commit interval).
    OrderNotFound,
    /// The account stage refused a place or amend: not enough available funds.
    InsufficientFunds,
    /// The account stage refused a market buy without `quote_qty`.
    QuoteBudgetRequired,
    /// The account stage refused a quantity that is not positive.
    InvalidQty,
    /// The account stage refused an order whose amounts do not fit 128 bits.
    AmountOutOfRange,
    /// The account stage refused an amend while an earlier amend of the same order has not
    /// reached the book yet: retry once its `amended` (or `rejected`) push arrives.
    AmendPending,
    /// The matching engine refused the command; the reason is the code.
    #[serde(untagged)]
    Order(RejectReason),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// A response to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Absent only when the request's id could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// `result` of a trading request: the gateway has written the command to Kafka. The engine's
/// verdict follows on the `orders` channel carrying the same `req_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    pub status: ReceivedStatus,
    /// The order id assigned by the gateway (place), or the target (cancel/amend by id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<u64>,
    /// Commands written: 1, or one per pair for a cancel-all over every pair.
    pub commands: u32,
    /// The command's trace, when it is traced (sampled, or continuing the request's
    /// `traceparent`): the id to look it up by in the trace store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceivedStatus {
    Received,
}

/// `result` of `balances`: what the account stage had committed up to `as_of_offset` of the
/// account's shard (every `accounts` line up to it, none after). A `balances` push with an
/// `accounts_offset` at or below it is already counted here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Balances {
    /// Per asset held, sorted by symbol; an asset not listed is zero.
    pub balances: Vec<AssetBalance>,
    pub shard: u32,
    /// `-1` when the shard has committed nothing yet.
    pub as_of_offset: i64,
}

/// Decimal strings with the asset's number of decimals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssetBalance {
    pub asset: String,
    pub available: String,
    pub reserved: String,
}

/// One asset's balance after a change, absolute (not a delta): the latest `accounts_offset`
/// wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceUpdate {
    pub asset: String,
    pub available: String,
    pub reserved: String,
    pub shard: u32,
    /// The position in the shard's `accounts` log of the line that changed it.
    pub accounts_offset: i64,
}

/// A place or amend the account stage refused before it reached the book, on the `orders`
/// channel as `type: rejected` like an engine rejection. It carries `shard` and
/// `accounts_offset` where the engine's carries the pair's `seq`: the command never reached
/// the pair, so it has no place in the pair's sequence. Serialize with [`Self::push_json`].
///
/// The stage's answer names only the command id and the account, so `pair`, `command`,
/// `order_id` and `client_order_id` are there only on the gateway that wrote the command and
/// still remembered it; every connection of the account, on every gateway, gets the push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRejection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<u64>,
    #[serde(rename = "type")]
    pub kind: RejectedType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<ClientOrderId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandKind>,
    /// The gateway's id of the refused command: a place's is its `order_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
    pub shard: u32,
    pub accounts_offset: i64,
    /// Event time: when the gateway received the refused command, in ms since the Unix epoch.
    pub ts_ms: u64,
}

/// The `type` of a [`StageRejection`]: always `rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectedType {
    Rejected,
}

impl StageRejection {
    /// The push as written: `{"channel":"orders", ...}`.
    pub fn push_json(&self) -> String {
        #[derive(Serialize)]
        #[serde(tag = "channel", rename_all = "snake_case")]
        enum Wire<'a> {
            Orders(&'a StageRejection),
        }
        serde_json::to_string(&Wire::Orders(self)).expect("pushes always serialize")
    }
}

/// A message pushed by the gateway without a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "snake_case")]
pub enum Push {
    /// The account's private stream, in per-pair sequence order, without duplicates.
    Orders(OrderUpdate),
    /// The account's balances after each change, absolute, once per shard position.
    Balances(BalanceUpdate),
    Book(BookMessage),
    Trades(TradesMessage),
    Ticker(TickerMessage),
    Heartbeat {
        ts_ms: u64,
    },
    /// The server is about to close this connection, and why. On an orderly close every
    /// request the gateway read was answered before this push; `frames_read` and
    /// `last_request_id` say how far it read (nothing after that was read or acted on).
    Status {
        status: ConnectionStatus,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        frames_read: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_request_id: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    SlowConsumer,
    ShuttingDown,
    IdleTimeout,
    Abuse,
}

/// One engine event concerning the account's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderUpdate {
    pub pair: String,
    /// The pair's sequence number of this event.
    pub seq: u64,
    /// The request that caused it, when it came from this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<u64>,
    /// Event time: when the gateway received the command that caused it, in ms since the Unix
    /// epoch (the pair's only clock; every event of one command has the same).
    pub ts_ms: u64,
    #[serde(flatten)]
    pub kind: OrderUpdateKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrderUpdateKind {
    Accepted {
        order_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_order_id: Option<ClientOrderId>,
        side: Side,
        #[serde(rename = "order_type")]
        order_type: OrderType,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        price: Option<String>,
        qty: String,
        tif: TimeInForce,
        post_only: bool,
        /// "0" and `qty`: nothing is filled when an order is accepted (its fills follow).
        filled_qty: String,
        remaining_qty: String,
    },
    Rejected {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order_id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_order_id: Option<ClientOrderId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<CommandKind>,
        code: RejectReason,
        message: String,
    },
    Fill {
        order_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_order_id: Option<ClientOrderId>,
        trade_id: u64,
        side: Side,
        price: String,
        qty: String,
        /// Whether this order was the resting side.
        maker: bool,
        /// The order's cumulative filled quantity after this fill, and what is left of it.
        /// Absent only for a trade an engine older than these fields wrote.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filled_qty: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remaining_qty: Option<String>,
        /// The fee this fill pays, in the asset it receives (`fee_asset`: the base asset for a
        /// buy, the quote asset for a sell), rounded down to that asset's smallest unit: what
        /// the account stage settles. Absent when the gateway runs without the account stage.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fee: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fee_asset: Option<String>,
    },
    Amended {
        order_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_order_id: Option<ClientOrderId>,
        price: String,
        qty: String,
        /// `qty − remaining_qty`: what was filled before the amend.
        filled_qty: String,
        remaining_qty: String,
        priority_kept: bool,
    },
    Done {
        order_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_order_id: Option<ClientOrderId>,
        reason: DoneReason,
        filled_qty: String,
        remaining_qty: String,
    },
}

/// An L2 book message: a snapshot after subscribing, then updates. `seq` is the pair sequence
/// number after the change; an update's levels replace the named levels (qty "0" removes one).
/// A client that sees an update whose `prev_seq` is not the last `seq` it saw has missed data
/// and should resubscribe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookMessage {
    pub pair: String,
    #[serde(rename = "type")]
    pub kind: BookMessageKind,
    pub seq: u64,
    /// For updates: the `seq` of the previous book message for this pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_seq: Option<u64>,
    /// `[price, qty]` pairs, best first.
    pub bids: Vec<[String; 2]>,
    pub asks: Vec<[String; 2]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookMessageKind {
    Snapshot,
    Update,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TradesMessage {
    pub pair: String,
    pub trades: Vec<PublicTrade>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicTrade {
    pub trade_id: u64,
    pub seq: u64,
    pub price: String,
    pub qty: String,
    pub taker_side: Side,
    pub ts_ms: u64,
}

/// Best bid and ask; a side is absent when empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TickerMessage {
    pub pair: String,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid: Option<[String; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask: Option<[String; 2]>,
}

/// `result` of `login`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedIn {
    pub account_id: u64,
}

/// `result` of `subscribe` and `unsubscribe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscribed {
    pub channel: Channel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
}

/// `result` of `cancel_all_after`: the gateway's clock and when the switch fires (absent when
/// the request disarmed it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadManSwitch {
    pub current_time_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_time_ms: Option<u64>,
}

/// `result` of `ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    pub ts_ms: u64,
}

/// Every push channel name, for documentation checks.
pub const PUSH_CHANNELS: &[&str] = &[
    "orders",
    "balances",
    "book",
    "trades",
    "ticker",
    "heartbeat",
    "status",
];

/// WebSocket close codes the gateway uses; the close reason is the [`ConnectionStatus`] name.
pub mod close_code {
    /// The gateway is shutting down (`shutting_down`).
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame that is not valid UTF-8 (`invalid_utf8`).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Sustained abuse after rate limiting (`abuse`), or a refused Origin.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame or message above the gateway's size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// An unexpected server error.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The connection's outbound queue overflowed (`slow_consumer`).
    pub const SLOW_CONSUMER: u16 = 4000;
    /// Nothing received from the client within the idle timeout (`idle_timeout`).
    pub const IDLE_TIMEOUT: u16 = 4001;
}

impl ConnectionStatus {
    pub const ALL: &'static [ConnectionStatus] = &[
        ConnectionStatus::SlowConsumer,
        ConnectionStatus::ShuttingDown,
        ConnectionStatus::IdleTimeout,
        ConnectionStatus::Abuse,
    ];
}

impl ErrorCode {
    /// Every gateway-level code (the engine's codes are [`ErrorCode::ORDER_REASONS`]).
    pub const GATEWAY: &'static [ErrorCode] = &[
        ErrorCode::MalformedRequest,
        ErrorCode::UnknownMethod,
        ErrorCode::InvalidParams,
        ErrorCode::UnsupportedFrame,
        ErrorCode::Unauthenticated,
        ErrorCode::AlreadyAuthenticated,
        ErrorCode::UnknownKey,
        ErrorCode::BadSignature,
        ErrorCode::StaleTimestamp,
        ErrorCode::NonceReused,
        ErrorCode::UnknownPair,
        ErrorCode::InvalidDecimal,
        ErrorCode::InvalidOrderRef,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::ShuttingDown,
        ErrorCode::TooManySubscriptions,
        ErrorCode::NotSubscribed,
        ErrorCode::Internal,
        ErrorCode::OutcomeUnknown,
        ErrorCode::AccountsDisabled,
        ErrorCode::UnknownAsset,
        ErrorCode::OrderNotFound,
    ];

    /// Codes only the account stage gives (its refusals of a place or amend), besides the
    /// engine's codes it shares (`invalid_price`, `invalid_quote_budget`, `unknown_order`,
    /// `invalid_amend`, `duplicate_order_id`) and `unknown_pair` / `unknown_asset`.
    pub const ACCOUNT_REFUSALS: &'static [ErrorCode] = &[
        ErrorCode::InsufficientFunds,
        ErrorCode::QuoteBudgetRequired,
        ErrorCode::InvalidQty,
        ErrorCode::AmountOutOfRange,
        ErrorCode::AmendPending,
    ];

    /// The code an account stage refusal names (`insufficient_funds`, `unknown_order`, ...),
    /// or `None` for one this version does not know.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }

    /// Every engine reject reason, which `ErrorCode::Order` carries.
    pub const ORDER_REASONS: &'static [RejectReason] = &[
        RejectReason::UnknownOrder,
        RejectReason::DuplicateOrderId,
        RejectReason::DuplicateClientOrderId,
        RejectReason::InvalidClientOrderId,
        RejectReason::InvalidPrice,
        RejectReason::PriceOffTick,
        RejectReason::InvalidQuoteBudget,
        RejectReason::QtyOffLot,
        RejectReason::QtyBelowMin,
        RejectReason::QtyAboveMax,
        RejectReason::BelowMinNotional,
        RejectReason::InvalidTimeInForce,
        RejectReason::PostOnlyWouldTake,
        RejectReason::FokCannotFill,
        RejectReason::NoLiquidity,
        RejectReason::InvalidAmend,
        RejectReason::MalformedRecord,
        RejectReason::WrongPair,
    ];
}

/// Why a frame could not become a [`Request`]; answered with `id` when it could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    pub id: Option<u64>,
    pub error: ErrorBody,
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    id: u64,
    method: &'a str,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(default)]
    traceparent: Option<String>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: u64,
}

/// Parses one text frame in stages, so each failure gets its own code: not an object with an
/// integer id and a method (`malformed_request`), an unknown method (`unknown_method`), or
/// params of the wrong shape (`invalid_params`). Messages are sentences for a person; the code
/// is what a program matches on.
pub fn parse_request(text: &str) -> Result<Request, RequestError> {
    let raw: RawRequest = serde_json::from_str(text).map_err(|_| RequestError {
        id: serde_json::from_str::<IdOnly>(text)
            .ok()
            .map(|r| r.id)
            .filter(|id| *id <= JSON_SAFE_INT_MAX),
        error: ErrorBody::new(ErrorCode::MalformedRequest, malformed_message(text)),
    })?;
    if raw.id > JSON_SAFE_INT_MAX {
        // Echoing it would hand a JavaScript client a number it cannot read exactly.
        return Err(RequestError {
            id: None,
            error: ErrorBody::new(
                ErrorCode::MalformedRequest,
                "id must be an integer from 0 to 2^53 - 1 (9007199254740991)",
            ),
        });
    }
    let fail = |code, message: String| RequestError {
        id: Some(raw.id),
        error: ErrorBody::new(code, message),
    };
    if !METHODS.contains(&raw.method) {
        return Err(fail(
            ErrorCode::UnknownMethod,
            format!(
                "unknown method {:?}; known: {}",
                raw.method,
                METHODS.join(", ")
            ),
        ));
    }
    let params = raw.params.map_or("null", RawValue::get);
    let params = match (raw.method, params) {
        ("balances" | "open_orders" | "my_trades", "null") => "{}",
        (_, p) => p,
    };
    if raw.method != "ping" && !params.trim_start().starts_with('{') {
        return Err(fail(
            ErrorCode::InvalidParams,
            format!("params of {} must be a JSON object", raw.method),
        ));
    }
    let tagged = format!(r#"{{"method":"{}","params":{params}}}"#, raw.method);
    let body = match (raw.method, params) {
        ("ping", _) => RequestBody::Ping,
        _ => serde_json::from_str(&tagged).map_err(|e| {
            fail(
                ErrorCode::InvalidParams,
                format!("invalid params for {}: {}", raw.method, plain(&e)),
            )
        })?,
    };
    Ok(Request {
        id: raw.id,
        body,
        traceparent: raw.traceparent,
    })
}

/// Says which part of the envelope is wrong, in the envelope's own terms.
fn malformed_message(text: &str) -> String {
    const SHAPE: &str =
        r#"a request is one JSON object: {"id": integer, "method": string, "params": object}"#;
    let what = match serde_json::from_str::<serde_json::Value>(text) {
        Err(_) => "the frame is not valid JSON",
        Ok(serde_json::Value::Object(m)) => match (m.get("id"), m.get("method")) {
            (None, _) => "\"id\" is missing",
            (Some(id), _) if !id.is_u64() => "\"id\" is not a whole number from 0 to 2^53 - 1",
            (_, None) => "\"method\" is missing",
            (_, Some(_)) => "\"method\" is not a string",
        },
        Ok(_) => "the frame is JSON but not an object",
    };
    format!("{what}; {SHAPE}")
}

/// serde's error as a sentence: without the parser's position, its Rust type names or its
/// backquotes (the code, not the text, is the stable part of an error).
fn plain(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut out = text.replace('`', "\"");
    for (rust, plain) in [
        ("u64", "a whole number (0 or more)"),
        ("u32", "a whole number (0 or more)"),
        ("i64", "a whole number"),
        ("a string", "a string"),
        ("a boolean", "true or false"),
        ("unit variant", "a name"),
        ("struct ", "object "),
        ("map", "object"),
        ("unit value", "null"),
    ] {
        out = out.replace(&format!("expected {rust}"), &format!("expected {plain}"));
    }
    out.replace("invalid type: ", "wrong type: ")
        .replace("invalid value: ", "wrong value: ")
        .replace("unknown variant", "unknown value")
        .replace(
            "data did not match any variant of untagged enum",
            "not one of the known values of",
        )
}

impl Request {
    /// Serializes a request as a client sends it.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(&self.body).expect("requests always serialize");
        value["id"] = self.id.into();
        if let Some(tp) = &self.traceparent {
            value["traceparent"] = tp.as_str().into();
        }
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> (Option<u64>, ErrorCode) {
        let e = parse_request(text).unwrap_err();
        (e.id, e.error.code)
    }

    #[test]
    fn parses_a_place() {
        let r = parse_request(
            r#"{"id":5,"method":"place","params":{"pair":"BTC-EUR","side":"buy","type":"limit","price":"100.1","qty":"0.5"}}"#,
        )
        .unwrap();
        assert_eq!(r.id, 5);
        let RequestBody::Place(p) = r.body else {
            panic!("not a place")
        };
        assert_eq!(p.tif, None);
        assert_eq!(p.time_in_force(), TimeInForce::Gtc);
        assert_eq!(p.stp, SelfTradePrevention::ExpireTaker);
        assert_eq!(p.price.as_deref(), Some("100.1"));
    }

    #[test]
    fn each_failure_has_its_own_code() {
        assert_eq!(code_of("{"), (None, ErrorCode::MalformedRequest));
        assert_eq!(code_of("[1,2]"), (None, ErrorCode::MalformedRequest));
        assert_eq!(
            code_of(r#"{"method":"ping"}"#),
            (None, ErrorCode::MalformedRequest)
        );
        assert_eq!(
            code_of(r#"{"id":1,"method":"fly"}"#),
            (Some(1), ErrorCode::UnknownMethod)
        );
        assert_eq!(
            code_of(r#"{"id":2,"method":"place","params":{"pair":"BTC-EUR"}}"#),
            (Some(2), ErrorCode::InvalidParams)
        );
        assert_eq!(
            code_of(r#"{"id":3,"method":"cancel_all","params":{"pair":"X","extra":1}}"#),
            (Some(3), ErrorCode::InvalidParams)
        );
        assert_eq!(
            code_of(r#"{"id":9007199254740992,"method":"ping"}"#),
            (None, ErrorCode::MalformedRequest),
            "an id above 2^53 - 1 is refused, not echoed"
        );
        assert_eq!(
            code_of(r#"{"id":9007199254740991,"method":"fly"}"#),
            (Some(9007199254740991), ErrorCode::UnknownMethod)
        );
    }

    #[test]
    fn messages_are_sentences_without_parser_internals() {
        for text in [
            "{",
            "[1,2]",
            r#"{"id":"x","method":"ping"}"#,
            r#"{"id":2,"method":"place","params":{"pair":"BTC-EUR"}}"#,
            r#"{"id":3,"method":"cancel_all","params":{"pair":"X","extra":1}}"#,
            r#"{"id":4,"method":"place","params":{"pair":"BTC-EUR","side":"up","type":"limit","qty":"1"}}"#,
            r#"{"id":5,"method":"cancel","params":{"pair":"BTC-EUR","order_id":"7"}}"#,
            r#"{"id":6,"method":"cancel_all_after","params":{"timeout_ms":-1}}"#,
        ] {
            let m = parse_request(text).unwrap_err().error.message;
            for internal in ["line ", "column", "u64", "`", "struct", "variant"] {
                assert!(!m.contains(internal), "{internal:?} in {m:?} (for {text})");
            }
        }
    }

    #[test]
    fn ping_needs_no_params_and_requests_round_trip() {
        assert_eq!(
            parse_request(r#"{"id":1,"method":"ping"}"#).unwrap().body,
            RequestBody::Ping
        );
        let req = Request {
            id: 9,
            body: RequestBody::CancelAll(CancelAllParams { pair: None }),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        };
        assert_eq!(parse_request(&req.to_json()).unwrap(), req);
    }

    #[test]
    fn error_codes_serialize_flat() {
        let gw = serde_json::to_string(&ErrorCode::RateLimited).unwrap();
        assert_eq!(gw, r#""rate_limited""#);
        let order = serde_json::to_string(&ErrorCode::Order(RejectReason::PriceOffTick)).unwrap();
        assert_eq!(order, r#""price_off_tick""#);
        let back: ErrorCode = serde_json::from_str(r#""fok_cannot_fill""#).unwrap();
        assert_eq!(back, ErrorCode::Order(RejectReason::FokCannotFill));
    }

    #[test]
    fn code_lists_are_complete() {
        // A new variant breaks these matches, a reminder to extend the lists above.
        fn gateway_listed(c: ErrorCode) -> bool {
            match c {
                ErrorCode::Order(r) => ErrorCode::ORDER_REASONS.contains(&r),
                ErrorCode::MalformedRequest
                | ErrorCode::UnknownMethod
                | ErrorCode::InvalidParams
                | ErrorCode::UnsupportedFrame
                | ErrorCode::Unauthenticated
                | ErrorCode::AlreadyAuthenticated
                | ErrorCode::UnknownKey
                | ErrorCode::BadSignature
                | ErrorCode::StaleTimestamp
                | ErrorCode::NonceReused
                | ErrorCode::UnknownPair
                | ErrorCode::InvalidDecimal
                | ErrorCode::InvalidOrderRef
                | ErrorCode::RateLimited
                | ErrorCode::Overloaded
                | ErrorCode::ShuttingDown
                | ErrorCode::TooManySubscriptions
                | ErrorCode::NotSubscribed
                | ErrorCode::Internal
                | ErrorCode::OutcomeUnknown
                | ErrorCode::AccountsDisabled
                | ErrorCode::UnknownAsset
                | ErrorCode::OrderNotFound => ErrorCode::GATEWAY.contains(&c),
                ErrorCode::InsufficientFunds
                | ErrorCode::QuoteBudgetRequired
                | ErrorCode::InvalidQty
                | ErrorCode::AmountOutOfRange
                | ErrorCode::AmendPending => ErrorCode::ACCOUNT_REFUSALS.contains(&c),
            }
        }
        for c in ErrorCode::GATEWAY {
            assert!(gateway_listed(*c));
        }
        assert_eq!(ErrorCode::GATEWAY.len(), 23);
        for c in ErrorCode::ACCOUNT_REFUSALS {
            assert!(gateway_listed(*c));
        }
        for r in ErrorCode::ORDER_REASONS {
            assert!(gateway_listed(ErrorCode::Order(*r)), "{}", r.code());
        }
        // RejectReason::code is an exhaustive match; every code is listed once.
        let mut codes: Vec<_> = ErrorCode::ORDER_REASONS.iter().map(|r| r.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), ErrorCode::ORDER_REASONS.len());
    }

    #[test]
    fn every_code_the_account_stage_gives_a_client_has_a_name_here() {
        // accounts_core::LedgerError::code for the refusals of an order line, and the shard's
        // own `amend_pending` (once missing here: clients saw `internal` for it).
        for name in [
            "amend_pending",
            "insufficient_funds",
            "quote_budget_required",
            "invalid_quote_budget",
            "invalid_price",
            "invalid_qty",
            "unknown_asset",
            "unknown_pair",
            "duplicate_order_id",
            "unknown_order",
            "invalid_amend",
            "amount_out_of_range",
        ] {
            let code = ErrorCode::from_name(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(serde_json::to_value(code).unwrap(), name);
        }
        assert_eq!(
            ErrorCode::from_name("unknown_order"),
            Some(ErrorCode::Order(RejectReason::UnknownOrder)),
            "the engine's code, reused"
        );
        assert_eq!(ErrorCode::from_name("no_such_code"), None);
    }

    #[test]
    fn a_stage_rejection_is_an_orders_push_of_type_rejected() {
        let r = StageRejection {
            pair: Some("BTC-EUR".into()),
            req_id: Some(4),
            kind: RejectedType::Rejected,
            order_id: Some(9),
            client_order_id: None,
            command: Some(CommandKind::Place),
            command_id: Some(9),
            code: ErrorCode::InsufficientFunds,
            message: "not enough".into(),
            shard: 1,
            accounts_offset: 17,
            ts_ms: 1_700_000_000_123,
        };
        let v: serde_json::Value = serde_json::from_str(&r.push_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"channel": "orders", "pair": "BTC-EUR", "req_id": 4,
                "type": "rejected", "order_id": 9, "command": "place", "command_id": 9,
                "code": "insufficient_funds", "message": "not enough", "shard": 1,
                "accounts_offset": 17, "ts_ms": 1_700_000_000_123_u64})
        );
    }

    #[test]
    fn balances_takes_optional_params_and_the_channel_no_pair() {
        for text in [
            r#"{"id":1,"method":"balances"}"#,
            r#"{"id":1,"method":"balances","params":{}}"#,
        ] {
            assert_eq!(
                parse_request(text).unwrap().body,
                RequestBody::Balances(BalancesQuery::default())
            );
        }
        let r = parse_request(r#"{"id":2,"method":"balances","params":{"asset":"EUR"}}"#);
        assert_eq!(
            r.unwrap().body,
            RequestBody::Balances(BalancesQuery {
                asset: Some("EUR".into())
            })
        );
        let r = parse_request(r#"{"id":3,"method":"subscribe","params":{"channel":"balances"}}"#);
        assert_eq!(
            r.unwrap().body,
            RequestBody::Subscribe(Subscription {
                channel: Channel::Balances,
                pair: None
            })
        );
    }

    #[test]
    fn queries_take_optional_params_where_documented() {
        for (text, want) in [
            (
                r#"{"id":1,"method":"open_orders"}"#,
                RequestBody::OpenOrders(OpenOrdersQuery::default()),
            ),
            (
                r#"{"id":1,"method":"my_trades"}"#,
                RequestBody::MyTrades(MyTradesQuery::default()),
            ),
            (
                r#"{"id":1,"method":"my_trades","params":{"pair":"BTC-EUR","limit":5,"before_trade_id":9}}"#,
                RequestBody::MyTrades(MyTradesQuery {
                    pair: Some("BTC-EUR".into()),
                    limit: Some(5),
                    before_trade_id: Some(9),
                }),
            ),
            (
                r#"{"id":1,"method":"order_status","params":{"pair":"BTC-EUR","client_order_id":"a"}}"#,
                RequestBody::OrderStatus(OrderStatusQuery {
                    pair: "BTC-EUR".into(),
                    order_id: None,
                    client_order_id: Some("a".into()),
                }),
            ),
        ] {
            assert_eq!(parse_request(text).unwrap().body, want, "{text}");
        }
        assert_eq!(
            code_of(r#"{"id":2,"method":"order_status"}"#),
            (Some(2), ErrorCode::InvalidParams)
        );
        assert_eq!(
            code_of(r#"{"id":3,"method":"open_orders","params":{"pair":"X","x":1}}"#),
            (Some(3), ErrorCode::InvalidParams)
        );
    }

    #[test]
    fn pushes_carry_their_channel() {
        let p = Push::Heartbeat { ts_ms: 1 };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"channel":"heartbeat","ts_ms":1}"#
        );
    }
}
