//! A streaming `Deserialize` for [`EventBody`], same JSON as the derived one.
//!
//! serde's derive for an internally tagged enum (`#[serde(tag = "type")]`) first buffers the
//! whole object into an intermediate tree, because the tag may come last, then deserializes the
//! variant from that tree. The gateway decodes every event of every pair, and that buffering was
//! its largest userland cost. Here the object is read once into the union of all variants'
//! fields, in any order, and the `type` then picks and checks the variant.

use serde::de::{Deserializer, Error, IntoDeserializer, value::StrDeserializer};
use serde::{Deserialize, de::DeserializeOwned};

use crate::domain::{
    AccountId, ClientOrderId, CommandKind, EventBody, OrderId, OrderType, Price, Qty, Side,
    TimeInForce,
};

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Accepted,
    Rejected,
    Trade,
    Done,
    Amended,
    BookLevel,
}

/// Every field any variant has; `reason` is a `RejectReason` or a `DoneReason` by variant.
#[derive(Deserialize)]
struct Fields {
    #[serde(rename = "type")]
    kind: Kind,
    order_id: Option<OrderId>,
    account_id: Option<AccountId>,
    client_order_id: Option<ClientOrderId>,
    side: Option<Side>,
    order_type: Option<OrderType>,
    price: Option<Price>,
    qty: Option<Qty>,
    tif: Option<TimeInForce>,
    post_only: Option<bool>,
    command: Option<CommandKind>,
    reason: Option<String>,
    trade_id: Option<u64>,
    taker_side: Option<Side>,
    maker_order_id: Option<OrderId>,
    maker_account_id: Option<AccountId>,
    taker_order_id: Option<OrderId>,
    taker_account_id: Option<AccountId>,
    maker_filled_qty: Option<Qty>,
    maker_remaining_qty: Option<Qty>,
    maker_client_order_id: Option<ClientOrderId>,
    taker_filled_qty: Option<Qty>,
    taker_remaining_qty: Option<Qty>,
    taker_client_order_id: Option<ClientOrderId>,
    filled_qty: Option<Qty>,
    remaining_qty: Option<Qty>,
    priority_kept: Option<bool>,
}

fn need<T, E: Error>(value: Option<T>, field: &'static str) -> Result<T, E> {
    value.ok_or_else(|| E::missing_field(field))
}

/// A unit-variant enum (a reason) from its name.
fn named<T: DeserializeOwned, E: Error>(name: Option<String>) -> Result<T, E> {
    let name = need::<_, E>(name, "reason")?;
    let de: StrDeserializer<'_, serde::de::value::Error> = name.as_str().into_deserializer();
    T::deserialize(de).map_err(E::custom)
}

impl<'de> Deserialize<'de> for EventBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<EventBody, D::Error> {
        let f = Fields::deserialize(deserializer)?;
        Ok(match f.kind {
            Kind::Accepted => EventBody::Accepted {
                order_id: need(f.order_id, "order_id")?,
                account_id: need(f.account_id, "account_id")?,
                client_order_id: f.client_order_id,
                side: need(f.side, "side")?,
                order_type: need(f.order_type, "order_type")?,
                price: f.price,
                qty: need(f.qty, "qty")?,
                tif: need(f.tif, "tif")?,
                post_only: need(f.post_only, "post_only")?,
            },
            Kind::Rejected => EventBody::Rejected {
                order_id: f.order_id,
                account_id: f.account_id,
                client_order_id: f.client_order_id,
                command: f.command,
                reason: named(f.reason)?,
            },
            Kind::Trade => EventBody::Trade {
                trade_id: need(f.trade_id, "trade_id")?,
                price: need(f.price, "price")?,
                qty: need(f.qty, "qty")?,
                taker_side: need(f.taker_side, "taker_side")?,
                maker_order_id: need(f.maker_order_id, "maker_order_id")?,
                maker_account_id: need(f.maker_account_id, "maker_account_id")?,
                taker_order_id: need(f.taker_order_id, "taker_order_id")?,
                taker_account_id: need(f.taker_account_id, "taker_account_id")?,
                maker_filled_qty: f.maker_filled_qty,
                maker_remaining_qty: f.maker_remaining_qty,
                maker_client_order_id: f.maker_client_order_id,
                taker_filled_qty: f.taker_filled_qty,
                taker_remaining_qty: f.taker_remaining_qty,
                taker_client_order_id: f.taker_client_order_id,
            },
            Kind::Done => EventBody::Done {
                order_id: need(f.order_id, "order_id")?,
                account_id: need(f.account_id, "account_id")?,
                client_order_id: f.client_order_id,
                reason: named(f.reason)?,
                filled_qty: need(f.filled_qty, "filled_qty")?,
                remaining_qty: need(f.remaining_qty, "remaining_qty")?,
            },
            Kind::Amended => EventBody::Amended {
                order_id: need(f.order_id, "order_id")?,
                account_id: need(f.account_id, "account_id")?,
                client_order_id: f.client_order_id,
                price: need(f.price, "price")?,
                qty: need(f.qty, "qty")?,
                remaining_qty: need(f.remaining_qty, "remaining_qty")?,
                priority_kept: need(f.priority_kept, "priority_kept")?,
            },
            Kind::BookLevel => EventBody::BookLevel {
                side: need(f.side, "side")?,
                price: need(f.price, "price")?,
                qty: need(f.qty, "qty")?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::*;

    fn every_variant() -> Vec<EventBody> {
        vec![
            EventBody::Accepted {
                order_id: OrderId(1),
                account_id: AccountId(2),
                client_order_id: Some("c-1".into()),
                side: Side::Buy,
                order_type: OrderType::Limit,
                price: Some(Price(100)),
                qty: Qty(5),
                tif: TimeInForce::Ioc,
                post_only: true,
            },
            EventBody::Accepted {
                order_id: OrderId(3),
                account_id: AccountId(2),
                client_order_id: None,
                side: Side::Sell,
                order_type: OrderType::Market,
                price: None,
                qty: Qty(5),
                tif: TimeInForce::Gtc,
                post_only: false,
            },
            EventBody::Rejected {
                order_id: Some(OrderId(4)),
                account_id: Some(AccountId(2)),
                client_order_id: None,
                command: Some(CommandKind::Amend),
                reason: RejectReason::UnknownOrder,
            },
            EventBody::Rejected {
                order_id: None,
                account_id: None,
                client_order_id: None,
                command: None,
                reason: RejectReason::MalformedRecord,
            },
            EventBody::Trade {
                trade_id: 9,
                price: Price(100),
                qty: Qty(2),
                taker_side: Side::Sell,
                maker_order_id: OrderId(1),
                maker_account_id: AccountId(2),
                taker_order_id: OrderId(5),
                taker_account_id: AccountId(6),
                maker_filled_qty: Some(Qty(3)),
                maker_remaining_qty: Some(Qty(1)),
                maker_client_order_id: Some("m-1".into()),
                taker_filled_qty: Some(Qty(2)),
                taker_remaining_qty: Some(Qty(0)),
                taker_client_order_id: None,
            },
            // As an engine before the cumulative quantities wrote it.
            EventBody::Trade {
                trade_id: 10,
                price: Price(100),
                qty: Qty(2),
                taker_side: Side::Buy,
                maker_order_id: OrderId(1),
                maker_account_id: AccountId(2),
                taker_order_id: OrderId(5),
                taker_account_id: AccountId(6),
                maker_filled_qty: None,
                maker_remaining_qty: None,
                maker_client_order_id: None,
                taker_filled_qty: None,
                taker_remaining_qty: None,
                taker_client_order_id: None,
            },
            EventBody::Done {
                order_id: OrderId(1),
                account_id: AccountId(2),
                client_order_id: Some("c-1".into()),
                reason: DoneReason::ExpiredStp,
                filled_qty: Qty(2),
                remaining_qty: Qty(3),
            },
            EventBody::Amended {
                order_id: OrderId(1),
                account_id: AccountId(2),
                client_order_id: Some("c-1".into()),
                price: Price(101),
                qty: Qty(4),
                remaining_qty: Qty(2),
                priority_kept: false,
            },
            EventBody::BookLevel {
                side: Side::Buy,
                price: Price(100),
                qty: Qty(0),
            },
        ]
    }

    #[test]
    fn every_variant_reads_back_as_written() {
        for body in every_variant() {
            let text = serde_json::to_string(&body).unwrap();
            assert!(text.starts_with(r#"{"type":"#), "{text}");
            assert_eq!(
                serde_json::from_str::<EventBody>(&text).unwrap(),
                body,
                "{text}"
            );
        }
    }

    #[test]
    fn the_tag_may_come_anywhere_and_unknown_fields_are_ignored() {
        let text = r#"{"qty":7,"extra":[1,{"a":2}],"price":100,"side":"sell","type":"book_level"}"#;
        assert_eq!(
            serde_json::from_str::<EventBody>(text).unwrap(),
            EventBody::BookLevel {
                side: Side::Sell,
                price: Price(100),
                qty: Qty(7),
            }
        );
    }

    #[test]
    fn a_broken_event_is_an_error_that_says_what_is_wrong() {
        let cases = [
            (r#"{"type":"trade","trade_id":1}"#, "missing field `price`"),
            (
                r#"{"type":"done","order_id":1,"account_id":2,"reason":"unknown_order","filled_qty":0,"remaining_qty":1}"#,
                "unknown variant `unknown_order`",
            ),
            (
                r#"{"type":"rejected","reason":"filled"}"#,
                "unknown variant `filled`",
            ),
            (r#"{"type":"teleported"}"#, "unknown variant `teleported`"),
            (r#"{"order_id":1}"#, "missing field `type`"),
        ];
        for (text, expected) in cases {
            let err = serde_json::from_str::<EventBody>(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
