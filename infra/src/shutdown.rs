//! Graceful shutdown: SIGTERM (ECS/Fargate stop, `docker stop`) or SIGINT (Ctrl-C) cancels a
//! token; every task selects on it, stops taking new work and drains. A second signal exits at
//! once, for an operator who does not want to wait for the drain.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM or SIGINT. Must be called inside a tokio
/// runtime. Exits the process with status 130 on a second signal.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let name = signal().await;
        tracing::info!(signal = name, "shutdown requested, draining");
        trigger.cancel();
        let name = signal().await;
        tracing::warn!(signal = name, "second signal, exiting without draining");
        std::process::exit(130);
    });
    token
}

/// Waits for SIGTERM or SIGINT and returns which one arrived.
pub async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("can install a SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
