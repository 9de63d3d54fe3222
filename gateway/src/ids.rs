//! Command ids: unique across gateways and restarts, below 2^53 so JSON clients read them
//! exactly. The place command's id is also the new order's id.
//!
//! Layout (53 bits): `gateway_id` (6 bits) | seconds since 2025-01-01 at start (29 bits) | 18-bit
//! counter. The counter carries into the seconds field, so a gateway that restarts starts above
//! every id it gave before as long as it averaged fewer than 2^18 = 262,144 commands per second
//! of uptime (10x the design load), for 17 years.

use std::sync::atomic::{AtomicU64, Ordering};

pub const GATEWAY_ID_MAX: u8 = 63;
const GATEWAY_SHIFT: u32 = 47;
const PER_SECOND_BITS: u32 = 18;
const LOW_MASK: u64 = (1 << GATEWAY_SHIFT) - 1;
/// 2025-01-01T00:00:00Z.
const EPOCH_UNIX_S: u64 = 1_735_689_600;

#[derive(Debug)]
pub struct CommandIds {
    high: u64,
    next_low: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("gateway id {0} is above {GATEWAY_ID_MAX}")]
    GatewayId(u8),
    #[error("the clock says {0} s since 1970, before 2025 or past the id space")]
    Clock(u64),
}

impl CommandIds {
    pub fn new(gateway_id: u8, now_unix_s: u64) -> Result<CommandIds, IdError> {
        if gateway_id > GATEWAY_ID_MAX {
            return Err(IdError::GatewayId(gateway_id));
        }
        let seconds = now_unix_s
            .checked_sub(EPOCH_UNIX_S)
            .filter(|s| *s < (1 << (GATEWAY_SHIFT - PER_SECOND_BITS)))
            .ok_or(IdError::Clock(now_unix_s))?;
        Ok(CommandIds {
            high: u64::from(gateway_id) << GATEWAY_SHIFT,
            next_low: AtomicU64::new(seconds << PER_SECOND_BITS),
        })
    }

    pub fn next(&self) -> u64 {
        let low = self.next_low.fetch_add(1, Ordering::Relaxed);
        assert!(low <= LOW_MASK, "command id space exhausted");
        self.high | low
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ws::JSON_SAFE_INT_MAX;

    #[test]
    fn ids_are_json_safe_distinct_per_gateway_and_grow_across_restarts() {
        let now = EPOCH_UNIX_S + 86_400;
        let a = CommandIds::new(0, now).unwrap();
        let b = CommandIds::new(GATEWAY_ID_MAX, now).unwrap();
        let (a1, a2, b1) = (a.next(), a.next(), b.next());
        assert!(a2 > a1 && a1 != b1);
        assert!(b1 <= JSON_SAFE_INT_MAX);
        let restarted = CommandIds::new(0, now + 1).unwrap();
        assert!(restarted.next() > a2);
        assert!(CommandIds::new(64, now).is_err());
        assert!(CommandIds::new(0, 0).is_err());
    }
}
