//! Process-local monotonic clock in microseconds, so that records can carry their read time as a
//! plain `u64` (serializable, cheap to copy) instead of an [`std::time::Instant`].

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the first call to any function of this module in this process.
///
/// Monotonic (never goes backwards); only meaningful within one process.
pub fn now_micros() -> u64 {
    let epoch = EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_micros() as u64
}

/// Microseconds elapsed since `earlier`, a value returned by [`now_micros`]; 0 if `earlier` is in
/// the future.
pub fn micros_since(earlier: u64) -> u64 {
    now_micros().saturating_sub(earlier)
}

/// Wall-clock time in milliseconds since the Unix epoch (UTC).
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_are_monotonic() {
        let a = now_micros();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = now_micros();
        assert!(b >= a + 2000, "{a} -> {b}");
        assert!(micros_since(a) >= 2000);
        assert_eq!(micros_since(u64::MAX), 0);
    }
}
