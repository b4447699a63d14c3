//! Login throttling: per username and per client address, after `max` failures in a
//! window every attempt gets 429 until the window passes, longer for each refused attempt.
//!
//! Attempts are counted before the password is checked (in the store, atomically over all
//! collectors), so concurrent guesses cannot slip past the count; a success resets it.

use crate::store::{Store, StoreError, ThrottleRow};

use super::AccessConfig;

/// The throttle's settings, in ms.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The window failures are counted over.
    pub window: i64,
    /// Failures allowed in one.
    pub max: i64,
}

impl Policy {
    /// From the config.
    pub fn of(c: &AccessConfig) -> Policy {
        Policy {
            window: (c.login_window.as_millis() as i64).max(1),
            max: c.login_max_failures.max(1),
        }
    }

    /// What the n-th attempt over the limit adds to the wait: doubling from an eighth of
    /// the window, at least a second, at most four windows.
    fn grow(self, failures: i64) -> i64 {
        let over = (failures - self.max - 1).clamp(0, 20) as u32;
        ((self.window / 8).max(1000) << over).min(self.cap())
    }

    fn cap(self) -> i64 {
        4 * self.window.max(1000)
    }

    /// An attempt at `now`: counted, and refused (`blocked_until > now`) when over.
    pub fn attempt(self, old: Option<ThrottleRow>, now: i64) -> ThrottleRow {
        let mut r = old.unwrap_or(ThrottleRow {
            window_start: now,
            failures: 0,
            blocked_until: 0,
        });
        if r.blocked_until > now {
            r.failures += 1;
            // Each refused attempt adds to the wait, up to four windows from now.
            r.blocked_until = (r.blocked_until + self.grow(r.failures)).min(now + self.cap());
            return r;
        }
        if now - r.window_start >= self.window {
            r = ThrottleRow {
                window_start: now,
                failures: 0,
                blocked_until: 0,
            };
        }
        r.failures += 1;
        if r.failures > self.max {
            r.blocked_until = (r.window_start + self.window).max(now + self.grow(r.failures));
        }
        r
    }

    /// A wrong password: at the limit, blocked until the window passes.
    pub fn failed(self, old: Option<ThrottleRow>) -> Option<ThrottleRow> {
        let mut r = old?;
        if r.failures >= self.max {
            r.blocked_until = r.blocked_until.max(r.window_start + self.window);
        }
        Some(r)
    }
}

/// The keys an attempt counts against: the username, and the client's address when the
/// server knows it (an embedder serving without `ConnectInfo` gets the username's only,
/// rather than one count shared by every client).
pub fn keys(username: &str, address: &str) -> Vec<String> {
    let mut keys = vec![format!("user:{}", username.trim().to_lowercase())];
    if address != "unknown" {
        keys.push(format!("addr:{address}"));
    }
    keys
}

/// Counts an attempt on every key; `Some(seconds)` to wait if any refuses it.
pub async fn attempt(
    store: &dyn Store,
    policy: Policy,
    keys: &[String],
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let mut wait = 0i64;
    for k in keys {
        let r = store
            .throttle(k, Box::new(move |old| Some(policy.attempt(old, now))))
            .await?;
        if let Some(r) = r {
            wait = wait.max(r.blocked_until - now);
        }
    }
    Ok((wait > 0).then(|| (wait as u64).div_ceil(1000).max(1)))
}

/// Records a wrong password on every key.
pub async fn failed(store: &dyn Store, policy: Policy, keys: &[String]) -> Result<(), StoreError> {
    for k in keys {
        store
            .throttle(k, Box::new(move |old| policy.failed(old)))
            .await?;
    }
    Ok(())
}

/// A success: the counts start over.
pub async fn reset(store: &dyn Store, keys: &[String]) -> Result<(), StoreError> {
    for k in keys {
        store.throttle(k, Box::new(|_| None)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        window: 900_000,
        max: 5,
    };

    #[test]
    fn five_failures_then_refused_with_growing_waits_until_the_window_passes() {
        let mut row = None;
        for i in 0..5 {
            let r = P.attempt(row, 1000 + i);
            assert!(r.blocked_until <= 1000 + i, "attempt {i} is let through");
            row = P.failed(Some(r));
        }
        assert_eq!(row.unwrap().blocked_until, 1000 + 900_000);
        let mut last = 0;
        for i in 0..8 {
            let now = 2000 + i;
            let r = P.attempt(row, now);
            let wait = r.blocked_until - now;
            assert!(wait > 0 && wait >= last, "refused, never shorter: {wait}");
            last = wait;
            row = Some(r);
        }
        assert!(last > 900_000, "the wait grew past the window: {last}");
        assert!(last <= 4 * 900_000);
        // After it all passes, a fresh window.
        let r = P.attempt(row, 1000 + 10 * 900_000);
        assert_eq!((r.failures, r.blocked_until), (1, 0));
    }
}
