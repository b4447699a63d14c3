//! Which stored events wait for which images' debug files; rewriting them once
//! symbolicated. The same rows and bounds as `sqlite/symbolication.rs`.

use super::PgStore;
use super::basics::{exec, retry, row, rows};
use crate::store::{Rewrite, StoreError, Waiting, WaitingEvent};

/// Rows of `unsymbolicated` kept at most (the oldest go first).
const MAX_ROWS: i64 = 1_000_000;

/// Notes the waiting events and, with `prune_before`, drops the rows older than it and
/// beyond the newest [`MAX_ROWS`]; one transaction.
pub(super) async fn note_waiting(
    s: &PgStore,
    project_id: i64,
    waiting: Vec<(String, Vec<String>)>,
    now: i64,
    prune_before: Option<i64>,
) -> Result<(), StoreError> {
    let waiting = &waiting;
    retry(|| async move {
        let mut c = s.conn().await?;
        let tx = c.transaction().await?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO unsymbolicated (debug_id, project_id, event_id, received)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .await?;
        for (event_id, ids) in waiting {
            for id in ids {
                tx.execute(&insert, &[id, &project_id, event_id, &now])
                    .await?;
            }
        }
        if let Some(cutoff) = prune_before {
            exec(
                &tx,
                "DELETE FROM unsymbolicated WHERE received < $1",
                &[&cutoff],
            )
            .await?;
            exec(
                &tx,
                "DELETE FROM unsymbolicated WHERE id <= (SELECT max(id) FROM unsymbolicated) - $1",
                &[&MAX_ROWS],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    })
    .await
}

pub(super) async fn waiting_for_image(
    s: &PgStore,
    debug_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Waiting>, StoreError> {
    retry(|| async move {
        Ok(rows(
            &s.conn().await?,
            "SELECT u.id, u.project_id, u.event_id, e.encoding, e.data
             FROM unsymbolicated u
             LEFT JOIN events e ON e.project_id = u.project_id AND e.event_id = u.event_id
             WHERE u.debug_id = $1 AND u.id > $2 ORDER BY u.id LIMIT $3",
            &[&debug_id, &after, &limit],
        )
        .await?
        .iter()
        .map(|r| {
            let enc: Option<i16> = r.get(3);
            let data: Option<Vec<u8>> = r.get(4);
            Waiting {
                row: r.get(0),
                project_id: r.get(1),
                event_id: r.get(2),
                stored: enc.map(|e| e as u8).zip(data),
            }
        })
        .collect())
    })
    .await
}

pub(super) async fn waiting_event(
    s: &PgStore,
    project_id: i64,
    event_id: &str,
) -> Result<Option<WaitingEvent>, StoreError> {
    retry(|| async move {
        let c = s.conn().await?;
        let ids: Vec<String> = rows(
            &c,
            "SELECT debug_id FROM unsymbolicated WHERE project_id = $1 AND event_id = $2
             ORDER BY debug_id COLLATE \"C\"",
            &[&project_id, &event_id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
        if ids.is_empty() {
            return Ok(None);
        }
        let stored = row(
            &c,
            "SELECT encoding, data FROM events WHERE project_id = $1 AND event_id = $2",
            &[&project_id, &event_id],
        )
        .await?
        .map(|r| (r.get::<_, i16>(0) as u8, r.get::<_, Vec<u8>>(1)));
        Ok(Some((ids, stored)))
    })
    .await
}

/// Replaces each event's stored JSON (when given) and keeps its waiting rows only for the
/// images still missing; one transaction.
pub(super) async fn rewrite_events(s: &PgStore, done: Vec<Rewrite>) -> Result<(), StoreError> {
    let done = &done;
    retry(|| async move {
        let mut c = s.conn().await?;
        let tx = c.transaction().await?;
        for (project_id, event_id, data, still) in done {
            if let Some((encoding, data)) = data {
                exec(
                    &tx,
                    "UPDATE events SET encoding = $3, data = $4
                     WHERE project_id = $1 AND event_id = $2",
                    &[project_id, event_id, &(*encoding as i16), data],
                )
                .await?;
            }
            exec(
                &tx,
                "DELETE FROM unsymbolicated WHERE project_id = $1 AND event_id = $2
                 AND NOT (debug_id = ANY($3))",
                &[project_id, event_id, still],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::testing::{sample_job, twin};
    use crate::store::{Store, Waiting, encode_event};

    fn flat(w: &[Waiting]) -> Vec<String> {
        w.iter()
            .map(|w| format!("{:?}", (w.row, w.project_id, &w.event_id, &w.stored)))
            .collect()
    }

    #[tokio::test]
    async fn waiting_events_are_noted_found_and_rewritten_as_on_sqlite() {
        let t = twin().await;
        let now = crate::time::now_ms();
        for s in [&t.lite as &dyn Store, &t.pg] {
            s.create_project("default").await.unwrap().unwrap();
        }
        t.lite.ingest(sample_job(1, now)).await.unwrap();
        t.mirror().await;
        let (e1, e2, gone) = (
            format!("{:032x}", 1),
            format!("{:032x}", 2),
            format!("{:032x}", 99),
        );
        let bigger =
            serde_json::json!({"symbolicated": true, "pad": "x".repeat(2_000)}).to_string();
        let (enc, data) = encode_event(bigger.as_bytes());
        assert_eq!(enc, 1, "compressed, as ingest would store it");
        let mut answers = Vec::new();
        for s in [&t.lite as &dyn Store, &t.pg] {
            let mut seen = Vec::new();
            s.note_waiting(
                1,
                vec![
                    (e1.clone(), vec!["b".into(), "a".into()]),
                    (e2.clone(), vec!["a".into()]),
                    (gone.clone(), vec!["a".into()]),
                ],
                100,
                None,
            )
            .await
            .unwrap();
            s.note_waiting(1, vec![(e1.clone(), vec!["a".into()])], 200, None)
                .await
                .unwrap();
            let all = s.waiting_for_image("a", 0, 10).await.unwrap();
            assert_eq!(all.len(), 3, "noted once each");
            assert!(
                all[0].stored.is_some() && all[2].stored.is_none(),
                "the third is not stored"
            );
            seen.push(format!("{:?}", flat(&all)));
            seen.push(format!(
                "{:?}",
                flat(&s.waiting_for_image("a", all[0].row, 1).await.unwrap())
            ));
            seen.push(format!(
                "{:?}",
                flat(&s.waiting_for_image("zzz", 0, 10).await.unwrap())
            ));
            seen.push(format!("{:?}", s.waiting_event(1, &e1).await.unwrap()));
            seen.push(format!("{:?}", s.waiting_event(1, &gone).await.unwrap()));
            seen.push(format!("{:?}", s.waiting_event(2, &e1).await.unwrap()));
            s.rewrite_events(vec![
                (1, e1.clone(), Some((enc, data.clone())), vec!["b".into()]),
                (1, e2.clone(), None, vec![]),
            ])
            .await
            .unwrap();
            let (ids, stored) = s.waiting_event(1, &e1).await.unwrap().unwrap();
            assert_eq!(ids, ["b"]);
            assert_eq!(stored, Some((enc, data.clone())));
            assert!(s.waiting_event(1, &e2).await.unwrap().is_none());
            let shown = s.event(1, &e1).await.unwrap().unwrap();
            assert_eq!(
                shown["symbolicated"], true,
                "the API shows the rewritten JSON"
            );
            seen.push(format!(
                "{:?}",
                flat(&s.waiting_for_image("a", 0, 10).await.unwrap())
            ));
            // Pruning: rows noted before 150 go.
            s.note_waiting(1, vec![], 300, Some(150)).await.unwrap();
            seen.push(format!(
                "{:?}",
                flat(&s.waiting_for_image("a", 0, 10).await.unwrap())
            ));
            seen.push(format!(
                "{:?}",
                s.waiting_event(1, &e1).await.unwrap().map(|w| w.0)
            ));
            answers.push(seen);
        }
        assert_eq!(answers[1], answers[0]);
        assert_eq!(
            answers[1].last().unwrap(),
            "None",
            "e1's row for b was noted at 100"
        );
    }
}
