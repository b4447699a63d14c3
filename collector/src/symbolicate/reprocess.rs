//! Events that arrived before their debug file: noted at ingest, rewritten when the file
//! arrives ([`reprocess_image`]) or, at the latest, when the event is viewed ([`on_view`]).
//! They stay in the issue they were filed under (see `collector/API.md`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::Value;

use super::cache::Misses;
use super::rewrite::NOTES;
use super::{SymbolicateError, Symbolicator, canonical_debug_id};
use crate::state::AppState;
use crate::store::{Rewrite, Waiting, decode_event, encode_event};
use crate::time::now_ms;

/// Events read and rewritten per writer transaction while reprocessing.
const BATCH: i64 = 100;
/// How often the waiting rows are pruned (ms).
const PRUNE_EVERY_MS: i64 = 60_000;

static LAST_PRUNE: AtomicI64 = AtomicI64::new(0);

/// Notes, after ingestion committed them, which events wait for which images' debug
/// files: `(event_id, debug ids)`.
pub async fn remember_missing(
    state: &AppState,
    project_id: i64,
    missing: Vec<(String, Vec<String>)>,
) {
    if missing.is_empty() {
        return;
    }
    let now = now_ms();
    let cutoff = now - state.config.retention.retention_days * 24 * 3_600_000;
    let prune = now - LAST_PRUNE.load(Ordering::Relaxed) >= PRUNE_EVERY_MS;
    if prune {
        LAST_PRUNE.store(now, Ordering::Relaxed);
    }
    let r = state
        .store
        .note_waiting(project_id, missing, now, prune.then_some(cutoff))
        .await;
    if let Err(e) = r {
        tracing::warn!("could not note events waiting for debug files: {e}");
    }
}

/// A stored event symbolicated again: its new `(encoding, data)` if it changed, and the
/// images it still waits for.
type Redone = (Option<(u8, Vec<u8>)>, Vec<String>);

fn redo(sym: &Symbolicator, encoding: u8, data: &[u8]) -> Result<Redone, SymbolicateError> {
    let raw = decode_event(encoding, data)?;
    let mut ev: Value =
        serde_json::from_slice(&raw).map_err(|e| SymbolicateError::Event(e.to_string()))?;
    let outcome = sym.symbolicate_value(&mut ev, Misses::Recheck);
    if !outcome.changed {
        return Ok((None, outcome.missing));
    }
    if (outcome.frames > 0 || outcome.contexts > 0)
        && let Some(Value::Object(notes)) = ev.as_object_mut().map(|m| {
            m.entry(NOTES)
                .or_insert_with(|| Value::Object(Default::default()))
        })
    {
        notes.insert("symbolicated_after_ingest".into(), true.into());
    }
    let json = serde_json::to_vec(&ev).map_err(|e| SymbolicateError::Event(e.to_string()))?;
    Ok((Some(encode_event(&json)), outcome.missing))
}

/// Symbolicates the retained events that wait for `debug_id`'s debug file and rewrites
/// their stored JSON; returns how many were rewritten. Call when a debug file (or source
/// bundle) was uploaded: the upload has already made the symbolicator forget what it
/// cached of the image ([`super::forget_on_change`]). Their grouping is kept: they stay
/// in their issue.
pub async fn reprocess_image(state: &AppState, debug_id: &str) -> Result<usize, SymbolicateError> {
    let sym = state.symbolicator.clone();
    let id = canonical_debug_id(debug_id)
        .ok_or_else(|| SymbolicateError::BadDebugId(debug_id.into()))?;
    let mut after = 0;
    let mut rewritten = 0;
    loop {
        let rows = state.store.waiting_for_image(&id, after, BATCH).await?;
        let Some(last) = rows.last() else { break };
        after = last.row;
        let done = redo_all(&sym, rows).await?;
        rewritten += done.iter().filter(|d| d.2.is_some()).count();
        state.store.rewrite_events(done).await?;
    }
    Ok(rewritten)
}

async fn redo_all(
    sym: &Arc<Symbolicator>,
    rows: Vec<Waiting>,
) -> Result<Vec<Rewrite>, SymbolicateError> {
    let _permit = sym.pool.acquire().await.ok();
    let sym = sym.clone();
    tokio::task::spawn_blocking(move || {
        rows.into_iter()
            .map(|w| match &w.stored {
                // The event is gone (retention): its rows go too.
                None => (w.project_id, w.event_id, None, Vec::new()),
                Some((enc, data)) => match redo(&sym, *enc, data) {
                    Ok((new, still)) => (w.project_id, w.event_id, new, still),
                    Err(e) => {
                        tracing::warn!("reprocessing event {}: {e}", w.event_id);
                        (w.project_id, w.event_id, None, Vec::new())
                    }
                },
            })
            .collect()
    })
    .await
    .map_err(|e| SymbolicateError::Event(e.to_string()))
}

/// Before an event is shown: if it waits for a debug file that now exists, symbolicates
/// it and rewrites it. Returns whether it was rewritten. Costs one indexed query for
/// events that wait for nothing.
pub async fn on_view(
    state: &AppState,
    project_id: i64,
    event_id: &str,
) -> Result<bool, SymbolicateError> {
    let sym = state.symbolicator.clone();
    let Some((ids, Some((enc, data)))) = state.store.waiting_event(project_id, event_id).await?
    else {
        return Ok(false);
    };
    let lookup = sym.lookup().clone();
    let _permit = sym.pool.acquire().await.ok();
    let s = sym.clone();
    let redone = tokio::task::spawn_blocking(move || {
        if !ids.iter().any(|id| lookup.find(id, None).is_some()) {
            return Ok(None);
        }
        redo(&s, enc, &data).map(Some)
    })
    .await
    .map_err(|e| SymbolicateError::Event(e.to_string()))??;
    let Some((data, still)) = redone else {
        return Ok(false);
    };
    let changed = data.is_some();
    state
        .store
        .rewrite_events(vec![(project_id, event_id.to_owned(), data, still)])
        .await?;
    Ok(changed)
}
