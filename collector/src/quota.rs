//! The per-project rate limit (events per minute), held across every collector on one
//! database: each node takes slices of the minute's limit from the store and spends them.
//!
//! A slice is a 64th of the limit (or what one request needs, if more), so a node asks the
//! database about 64 times a minute per busy project at most. Nothing is ever admitted past
//! the limit; what nodes hold unspent when the minute ends (under a slice each) is lost,
//! so N nodes may admit up to N slices fewer than the limit.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::{Store, StoreError};

/// The slices the limit is taken in.
const SLICES: u64 = 64;

/// A node's unspent share of each project's current minute.
#[derive(Debug, Default)]
pub struct Quotas {
    held: Mutex<HashMap<i64, Held>>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    minute: i64,
    left: u64,
    /// The store has granted all it will this minute.
    spent: bool,
}

impl Quotas {
    /// Counts `n` events of `project_id` at `now` (epoch ms) against `limit` per minute;
    /// `Some(seconds)` to wait when over it.
    pub async fn admit(
        &self,
        store: &dyn Store,
        project_id: i64,
        n: u64,
        limit: u64,
        now: i64,
    ) -> Result<Option<u64>, StoreError> {
        let minute = now.div_euclid(60_000);
        let wait = (60 - now.rem_euclid(60_000) / 1000).max(1) as u64;
        if n > limit {
            return Ok(Some(wait));
        }
        let need = match self.spend(project_id, minute, n, None) {
            Spent::Admitted => return Ok(None),
            Spent::Refused => return Ok(Some(wait)),
            Spent::Short(need) => need,
        };
        let want = need.max(limit.div_ceil(SLICES)).min(limit);
        let granted = store.take_quota(project_id, minute, want, limit).await?;
        Ok(
            match self.spend(project_id, minute, n, Some((want, granted))) {
                Spent::Admitted => None,
                _ => Some(wait),
            },
        )
    }

    /// Adds what the store granted of an ask (`(wanted, granted)`) to what the node holds
    /// for the minute, then takes `n` from it.
    fn spend(&self, project_id: i64, minute: i64, n: u64, ask: Option<(u64, u64)>) -> Spent {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let h = held.entry(project_id).or_insert(Held {
            minute,
            left: 0,
            spent: false,
        });
        if h.minute != minute {
            *h = Held {
                minute,
                left: 0,
                spent: false,
            };
        }
        if let Some((wanted, granted)) = ask {
            // An ask that comes back short: the minute is spent, for every node.
            h.spent |= granted < wanted;
            h.left += granted;
        }
        if h.left >= n {
            h.left -= n;
            Spent::Admitted
        } else if h.spent {
            Spent::Refused
        } else {
            Spent::Short(n - h.left)
        }
    }
}

enum Spent {
    Admitted,
    Refused,
    /// The node holds this many too few: ask the store.
    Short(u64),
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;
    use crate::store::Retention;
    use crate::store::sqlite::SqliteStore;

    fn store(dir: &std::path::Path) -> SqliteStore {
        SqliteStore::open(
            dir,
            16,
            Retention::default(),
            Arc::new(Metrics::default()),
            None,
        )
        .unwrap()
    }

    const MINUTE: i64 = 29_000_000 * 60_000;

    #[tokio::test]
    async fn one_node_admits_the_limit_exactly_then_waits_for_the_next_minute() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let q = Quotas::default();
        for i in 0..100 {
            assert_eq!(
                q.admit(&s, 1, 1, 100, MINUTE + i).await.unwrap(),
                None,
                "{i}"
            );
        }
        let at = MINUTE + 15_000;
        assert_eq!(q.admit(&s, 1, 1, 100, at).await.unwrap(), Some(45));
        assert_eq!(
            q.admit(&s, 2, 3, 100, at).await.unwrap(),
            None,
            "per project"
        );
        assert_eq!(
            q.admit(&s, 1, 101, 100, MINUTE + 60_000).await.unwrap(),
            Some(60)
        );
        assert_eq!(
            q.admit(&s, 1, 100, 100, MINUTE + 60_000).await.unwrap(),
            None
        );
        s.close().await;
    }

    #[tokio::test]
    async fn nodes_sharing_a_store_stay_under_the_limit_and_near_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let nodes: Vec<Quotas> = (0..4).map(|_| Quotas::default()).collect();
        let mut admitted = 0;
        for i in 0..2_000u64 {
            let n = 1 + i % 3;
            let node = &nodes[(i % 4) as usize];
            if node.admit(&s, 1, n, 1_000, MINUTE).await.unwrap().is_none() {
                admitted += n;
            }
        }
        // At most a slice (16) each left unspent on the four nodes.
        assert!((1_000 - 4 * 16..=1_000).contains(&admitted), "{admitted}");
        s.close().await;
    }
}
