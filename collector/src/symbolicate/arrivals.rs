//! When a debug file arrives, the retained events of its image that are still waiting for
//! it are symbolicated and rewritten ([`reprocess_image`]).

use std::sync::{Arc, Weak};

use tokio::sync::broadcast::error::RecvError;

use super::reprocess_image;
use crate::state::{AppState, Inner};

/// Starts the task that reprocesses events as their debug files arrive, on the current
/// tokio runtime. It holds the state weakly and ends with it.
pub fn spawn_reprocessing(state: &AppState) {
    let mut arrivals = state.difs.subscribe();
    let weak: Weak<Inner> = Arc::downgrade(&state.0);
    tokio::spawn(async move {
        loop {
            let new = match arrivals.recv().await {
                Ok(new) => new,
                // Missed some: the next view of each event still symbolicates it.
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!("{n} debug file arrivals not reprocessed (too many at once)");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let Some(inner) = weak.upgrade() else { return };
            let state = AppState(inner);
            match reprocess_image(&state, &new.debug_id).await {
                Ok(n) if n > 0 => {
                    tracing::info!(
                        "debug file {}: {n} retained events symbolicated",
                        new.debug_id
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("reprocessing events of {}: {e}", new.debug_id),
            }
        }
    });
}
