//! `docs/API.md` names every error code a client can receive and every limit the gateway is
//! configured with, so a new code or setting cannot ship undocumented.

use clap::{Args, Command};
use gateway::Limits;
use protocol::ws::ErrorCode;

const DOC: &str = include_str!("../../docs/API.md");

fn documented(word: &str) -> bool {
    DOC.contains(&format!("`{word}`"))
}

#[test]
fn every_gateway_error_code_is_documented() {
    for code in ErrorCode::GATEWAY.iter().chain(ErrorCode::ACCOUNT_REFUSALS) {
        let name = serde_json::to_value(code).unwrap();
        let name = name.as_str().unwrap();
        assert!(documented(name), "error code {name} is not in docs/API.md");
    }
}

#[test]
fn every_limit_setting_is_documented() {
    let command = Limits::augment_args(Command::new("gateway"));
    let envs: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    assert!(envs.len() > 20, "{envs:?}");
    for env in envs {
        assert!(documented(&env), "{env} is not in docs/API.md");
    }
}
