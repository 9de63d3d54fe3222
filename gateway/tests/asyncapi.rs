//! `docs/asyncapi.yaml` names every method, push channel, error code and connection status of
//! `protocol::ws`, so the document cannot fall behind the code unnoticed. The document's
//! validity against the AsyncAPI 3 schema is `scripts/check-asyncapi`.

use protocol::ws::{ConnectionStatus, ErrorCode, METHODS, PUSH_CHANNELS};

const DOC: &str = include_str!("../../docs/asyncapi.yaml");

fn name<T: serde::Serialize>(value: T) -> String {
    match serde_json::to_value(value).unwrap() {
        serde_json::Value::String(s) => s,
        other => panic!("not a string: {other}"),
    }
}

fn listed(item: &str) -> bool {
    DOC.lines().any(|l| l.trim() == format!("- {item}"))
}

#[test]
fn the_document_is_asyncapi_3() {
    assert!(DOC.starts_with("asyncapi: 3.0.0\n"));
}

#[test]
fn every_method_has_a_request_message_and_an_operation() {
    for method in METHODS {
        assert!(
            DOC.contains(&format!("method: {{ const: {method} }}")),
            "no request message for {method}"
        );
        assert!(
            DOC.contains(&format!("\n  {method}:\n    action: receive")),
            "no operation for {method}"
        );
        assert!(listed(method), "{method} missing from the method enum");
    }
}

#[test]
fn every_push_channel_is_documented() {
    for channel in PUSH_CHANNELS {
        assert!(
            DOC.contains(&format!("channel: {{ const: {channel} }}")),
            "no push message for channel {channel}"
        );
    }
}

#[test]
fn every_error_code_and_status_is_listed() {
    for code in ErrorCode::GATEWAY {
        let code = name(code);
        assert!(listed(&code), "error code {code} missing");
    }
    for code in ErrorCode::ACCOUNT_REFUSALS {
        let code = name(code);
        assert!(listed(&code), "account stage code {code} missing");
    }
    for reason in ErrorCode::ORDER_REASONS {
        assert!(
            listed(reason.code()),
            "reject reason {} missing",
            reason.code()
        );
    }
    for status in ConnectionStatus::ALL {
        let status = name(status);
        assert!(listed(&status), "connection status {status} missing");
    }
}
