//! Shared by the integration tests: where the real services are.

/// The service address from `var`, or `None` after saying why the test is skipped. Under CI
/// (`CI=true`) a missing variable fails the test instead: CI must never pass by skipping.
pub fn service_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{var} is not set under CI=true: run the tests through scripts/test, or \
                 eval \"$(scripts/stack env)\" after scripts/stack up"
            );
            eprintln!(
                "SKIPPED: {var} is not set; start the stack with scripts/stack up and \
                 eval \"$(scripts/stack env)\" to run this test"
            );
            None
        }
    }
}
