//! SQL of symbolication: which retained events wait for which image's debug file, and
//! rewriting an event's stored JSON once it is symbolicated.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::store::{StoreError, Waiting, WaitingEvent};

/// Rows of `unsymbolicated` kept at most (the oldest go first).
const MAX_ROWS: i64 = 1_000_000;

/// Notes that an event has frames in images without a debug file.
pub fn insert_unsymbolicated(
    tx: &Transaction<'_>,
    project_id: i64,
    event_id: &str,
    debug_ids: &[String],
    received: i64,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO unsymbolicated (debug_id, project_id, event_id, received)
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for id in debug_ids {
        stmt.execute(params![id, project_id, event_id, received])?;
    }
    Ok(())
}

/// Drops rows older than `cutoff` (epoch ms) and beyond the newest [`MAX_ROWS`]; their
/// events are past retention or long gone.
pub fn prune_unsymbolicated(tx: &Transaction<'_>, cutoff: i64) -> Result<(), StoreError> {
    tx.execute("DELETE FROM unsymbolicated WHERE received < ?1", [cutoff])?;
    tx.execute(
        "DELETE FROM unsymbolicated WHERE id <= (SELECT max(id) FROM unsymbolicated) - ?1",
        [MAX_ROWS],
    )?;
    Ok(())
}

/// Up to `limit` events waiting for `debug_id`, after row `after`.
pub fn waiting_for_image(
    conn: &Connection,
    debug_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Waiting>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT u.id, u.project_id, u.event_id, e.encoding, e.data
         FROM unsymbolicated u
         LEFT JOIN events e ON e.project_id = u.project_id AND e.event_id = u.event_id
         WHERE u.debug_id = ?1 AND u.id > ?2 ORDER BY u.id LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![debug_id, after, limit], |r| {
            let enc: Option<u8> = r.get(3)?;
            let data: Option<Vec<u8>> = r.get(4)?;
            Ok(Waiting {
                row: r.get(0)?,
                project_id: r.get(1)?,
                event_id: r.get(2)?,
                stored: enc.zip(data),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The images one event waits for, and its stored JSON (`None` if it waits for none).
pub fn waiting_event(
    conn: &Connection,
    project_id: i64,
    event_id: &str,
) -> Result<Option<WaitingEvent>, StoreError> {
    let ids = conn
        .prepare_cached(
            "SELECT debug_id FROM unsymbolicated WHERE project_id = ?1 AND event_id = ?2",
        )?
        .query_map(params![project_id, event_id], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Ok(None);
    }
    let stored = conn
        .prepare_cached(
            "SELECT encoding, data FROM events WHERE project_id = ?1 AND event_id = ?2",
        )?
        .query_row(params![project_id, event_id], |r| {
            Ok((r.get::<_, u8>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .optional()?;
    Ok(Some((ids, stored)))
}

/// Replaces an event's stored JSON (when `data` is given) and keeps its waiting rows only
/// for the images in `still_missing`.
pub fn rewrite_event(
    tx: &Transaction<'_>,
    project_id: i64,
    event_id: &str,
    data: Option<(u8, &[u8])>,
    still_missing: &[String],
) -> Result<(), StoreError> {
    if let Some((encoding, data)) = data {
        tx.prepare_cached(
            "UPDATE events SET encoding = ?3, data = ?4 WHERE project_id = ?1 AND event_id = ?2",
        )?
        .execute(params![project_id, event_id, encoding, data])?;
    }
    let waiting: Vec<String> = tx
        .prepare_cached(
            "SELECT debug_id FROM unsymbolicated WHERE project_id = ?1 AND event_id = ?2",
        )?
        .query_map(params![project_id, event_id], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut del = tx.prepare_cached(
        "DELETE FROM unsymbolicated WHERE project_id = ?1 AND event_id = ?2 AND debug_id = ?3",
    )?;
    for id in waiting.iter().filter(|id| !still_missing.contains(id)) {
        del.execute(params![project_id, event_id, id])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::encode_event;

    #[test]
    fn waiting_rows_follow_their_events() {
        let mut db = super::super::test_db::fresh();
        let tx = db.conn.transaction().unwrap();
        insert_unsymbolicated(&tx, 1, "e1", &["a".into(), "b".into()], 10).unwrap();
        insert_unsymbolicated(&tx, 1, "e1", &["a".into()], 10).unwrap();
        insert_unsymbolicated(&tx, 1, "e2", &["a".into()], 20).unwrap();
        tx.commit().unwrap();
        let w = waiting_for_image(&db.conn, "a", 0, 10).unwrap();
        assert_eq!(w.len(), 2);
        assert!(
            w.iter().all(|x| x.stored.is_none()),
            "no such events stored"
        );
        let tx = db.conn.transaction().unwrap();
        rewrite_event(&tx, 1, "e1", None, &["b".into()]).unwrap();
        tx.commit().unwrap();
        let w = waiting_for_image(&db.conn, "a", 0, 10).unwrap();
        assert_eq!(
            w.iter().map(|x| x.event_id.as_str()).collect::<Vec<_>>(),
            ["e2"]
        );
        let (ids, stored) = waiting_event(&db.conn, 1, "e1").unwrap().unwrap();
        assert_eq!(ids, ["b"]);
        assert!(stored.is_none());
        let tx = db.conn.transaction().unwrap();
        prune_unsymbolicated(&tx, 15).unwrap();
        tx.commit().unwrap();
        assert!(waiting_event(&db.conn, 1, "e1").unwrap().is_none());
        assert_eq!(waiting_for_image(&db.conn, "a", 0, 10).unwrap().len(), 1);
        let big = vec![b'x'; 4096];
        let (enc, data) = encode_event(&big);
        assert_eq!(enc, 1);
        assert_eq!(crate::store::decode_event(enc, &data).unwrap(), big);
    }
}
