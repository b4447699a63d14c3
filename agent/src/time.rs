//! Wall-clock helpers.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as Sentry's numeric timestamps.
pub(crate) fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
