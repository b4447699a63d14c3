//! The memory budget for request bodies in flight: one pool of bytes that every ingestion
//! request reserves from before it holds them (inflated items, decoder windows, buffers).
//!
//! A request that would take the pool past its size waits up to [`WAIT`] for others to
//! finish, then gives up with [`BudgetError`] (answered `503` with `Retry-After`), so that
//! many bodies at once cost waiting time, never more memory than `--max-inflight-mb`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// How long a request waits for room in the budget before it is answered `503`.
pub const WAIT: Duration = Duration::from_secs(2);
/// Reservations grow in steps of this many bytes (one semaphore permit is 1 KiB).
const STEP: usize = 64 * 1024;
const PERMIT: usize = 1024;

/// Why a reservation could not grow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the collector is at its memory budget for requests in flight; retry after 1 s")]
pub struct BudgetError;

/// The shared pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    total: u32,
    wait: Duration,
}

impl Budget {
    /// A pool of `bytes` (at least one step).
    pub fn new(bytes: usize) -> Self {
        Budget::with_wait(bytes, WAIT)
    }

    /// A pool of `bytes` whose requests wait at most `wait` for room.
    pub fn with_wait(bytes: usize, wait: Duration) -> Self {
        let total = u32::try_from(bytes.max(STEP) / PERMIT).unwrap_or(u32::MAX >> 4);
        Budget {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
            wait,
        }
    }

    /// An empty reservation against this pool.
    pub fn reserve(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: 0,
        }
    }

    /// Bytes not reserved right now.
    pub fn available(&self) -> usize {
        self.permits.available_permits() * PERMIT
    }

    /// The pool's size in bytes.
    pub fn total(&self) -> usize {
        self.total as usize * PERMIT
    }
}

/// Bytes one request holds; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Budget,
    held: u32,
}

impl Reservation {
    /// Makes the reservation cover at least `bytes`, waiting up to the budget's wait for
    /// room. Fails at once if `bytes` is more than the whole pool.
    pub async fn cover(&mut self, bytes: usize) -> Result<(), BudgetError> {
        let want = bytes.div_ceil(STEP).saturating_mul(STEP) / PERMIT;
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        if want <= self.held {
            return Ok(());
        }
        if want > self.budget.total {
            return Err(BudgetError);
        }
        let more = want - self.held;
        let sem = &self.budget.permits;
        let permit = match sem.try_acquire_many(more) {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout(self.budget.wait, sem.acquire_many(more)).await {
                Ok(Ok(p)) => p,
                _ => return Err(BudgetError),
            },
        };
        permit.forget();
        self.held = want;
        Ok(())
    }

    /// Bytes covered.
    pub fn held(&self) -> usize {
        self.held as usize * PERMIT
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.permits.add_permits(self.held as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_then_give_up() {
        let b = Budget::with_wait(1024 * 1024, Duration::from_millis(50));
        let mut a = b.reserve();
        a.cover(1).await.unwrap();
        assert_eq!(a.held(), STEP, "rounded up to a step");
        a.cover(900 * 1024).await.unwrap();
        assert_eq!(b.available(), 1024 * 1024 - 960 * 1024);
        let mut c = b.reserve();
        assert_eq!(c.cover(200 * 1024).await, Err(BudgetError));
        assert_eq!(c.held(), 0);
        // Room made while waiting is taken.
        let waiter = tokio::spawn(async move {
            let mut c = c;
            c.cover(200 * 1024).await.map(|()| c)
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(a);
        let c = waiter.await.unwrap().unwrap();
        assert_eq!(c.held(), 256 * 1024);
        drop(c);
        assert_eq!(b.available(), b.total());
        // More than the whole pool is refused without waiting.
        let mut d = b.reserve();
        assert_eq!(d.cover(2 * 1024 * 1024).await, Err(BudgetError));
    }
}
