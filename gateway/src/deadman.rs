//! The dead-man switch: `cancel_all_after {timeout_ms}` arms (or refreshes) a per-account timer;
//! when it expires the gateway cancels the account's orders on every pair; 0 disarms. The switch
//! belongs to the account on this gateway and survives the connection that armed it: that is
//! its point.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use protocol::AccountId;
use tokio::sync::Notify;

use crate::now_ms;
use crate::state::Shared;

#[derive(Debug, Default)]
struct Timer {
    /// Unix ms when it fires; 0 when disarmed.
    deadline_ms: AtomicU64,
    changed: Notify,
}

#[derive(Debug, Default)]
pub(crate) struct DeadMan {
    timers: DashMap<AccountId, Arc<Timer>>,
}

/// Arms, refreshes or (with 0) disarms the account's switch; returns when it fires.
pub(crate) fn arm(
    shared: &Arc<Shared>,
    account: AccountId,
    timeout_ms: u64,
    now_ms: u64,
) -> Option<u64> {
    let deadline_ms = if timeout_ms == 0 {
        0
    } else {
        now_ms + timeout_ms
    };
    // Holding the map entry while storing serialises with the timer task's removal.
    let entry = shared.deadman.timers.entry(account);
    let (timer, new) = match entry {
        dashmap::Entry::Occupied(o) => (Arc::clone(o.get()), false),
        dashmap::Entry::Vacant(v) if deadline_ms != 0 => {
            let t = Arc::new(Timer::default());
            v.insert(Arc::clone(&t));
            (t, true)
        }
        dashmap::Entry::Vacant(_) => return None,
    };
    timer.deadline_ms.store(deadline_ms, Ordering::Release);
    timer.changed.notify_one();
    if new {
        tokio::spawn(watch(Arc::clone(shared), account, timer));
    }
    (deadline_ms != 0).then_some(deadline_ms)
}

async fn watch(shared: Arc<Shared>, account: AccountId, timer: Arc<Timer>) {
    loop {
        let deadline = timer.deadline_ms.load(Ordering::Acquire);
        let now = now_ms();
        if deadline != 0 && now < deadline {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(deadline - now)) => {}
                _ = timer.changed.notified() => {}
                _ = shared.shutdown.cancelled() => return,
            }
            continue;
        }
        // Expired or disarmed: leave the map unless a refresh came in meanwhile.
        let removed = shared
            .deadman
            .timers
            .remove_if(&account, |_, t| {
                Arc::ptr_eq(t, &timer)
                    && t.deadline_ms
                        .compare_exchange(deadline, 0, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            })
            .is_some();
        if !removed {
            continue;
        }
        if deadline != 0 {
            metrics::counter!("gateway_deadman_fired_total").increment(1);
            tracing::info!(
                account_id = account.0,
                "dead-man switch fired; cancelling all orders"
            );
            if let Err(e) = shared.cancel_all(account, None, None).await {
                tracing::warn!(account_id = account.0, error = %e.message, "dead-man cancel-all incomplete");
            }
        }
        return;
    }
}
