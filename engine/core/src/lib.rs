//! The pure matching core: one limit order book per pair.
