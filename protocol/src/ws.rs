//! JSON messages between trading clients and the gateway (filled in below).
