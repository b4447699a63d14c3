//! The API's reads: issues (keyset pages), one issue's counts and tags, events, classes.
//! Same answers as `sqlite/queries.rs`; text sorts use the "C" collation, as SQLite does.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::PgStore;
use super::basics::{retry, row, rows};
use crate::store::{
    Class, Cursor, EventSummary, Issue, IssueDetail, IssueFilter, Sort, StoreError, TagValue,
    UserRef, decode_event,
};
use crate::time::{hour_of, rfc3339};

const ISSUE_COLUMNS: &str = "i.id, i.project_id, i.title, i.class, i.kind, i.culprit, i.level, i.status, i.count, i.first_seen, i.last_seen, i.is_regression, u.id, u.username, u.display_name";

/// Issues with their assignee (`i`, `u`).
const ISSUE_FROM: &str = "issues i LEFT JOIN issue_assignees a ON a.issue_id = i.id LEFT JOIN users u ON u.id = a.user_id";

fn issue_of(r: &Row) -> Issue {
    Issue {
        id: r.get(0),
        project_id: r.get(1),
        title: r.get(2),
        class: r.get(3),
        kind: r.get(4),
        culprit: r.get(5),
        level: r.get(6),
        status: r.get(7),
        count: r.get(8),
        first_seen: rfc3339(r.get(9)),
        last_seen: rfc3339(r.get(10)),
        is_regression: r.get(11),
        hourly: Vec::new(),
        assignee: r.get::<_, Option<i64>>(12).map(|id| UserRef {
            id,
            username: r.get(13),
            display_name: r.get(14),
        }),
        sort_value: 0,
    }
}

/// Hourly counts of one issue for the `hours` hours ending with the current one.
async fn issue_hourly<C: GenericClient>(
    c: &C,
    issue_id: i64,
    hours: i64,
    now: i64,
) -> Result<Vec<i64>, StoreError> {
    let last = hour_of(now);
    let first = last - hours + 1;
    let mut out = vec![0; hours.max(0) as usize];
    for r in rows(
        c,
        "SELECT hour, count FROM issue_hourly WHERE issue_id = $1 AND hour >= $2 AND hour <= $3",
        &[&issue_id, &first, &last],
    )
    .await?
    {
        let (h, n): (i64, i64) = (r.get(0), r.get(1));
        out[(h - first) as usize] += n;
    }
    Ok(out)
}

/// The hourly counts of many issues for the 24 hours ending with the current one.
async fn hourly_of_many<C: GenericClient>(
    c: &C,
    ids: &[i64],
    now: i64,
) -> Result<HashMap<i64, Vec<i64>>, StoreError> {
    let first = hour_of(now) - 23;
    let mut out: HashMap<i64, Vec<i64>> = ids.iter().map(|id| (*id, vec![0; 24])).collect();
    if ids.is_empty() {
        return Ok(out);
    }
    for r in rows(
        c,
        "SELECT issue_id, hour, count FROM issue_hourly
         WHERE issue_id = ANY($1) AND hour >= $2 AND hour <= $3",
        &[&ids, &first, &(first + 23)],
    )
    .await?
    {
        let (id, h, n): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
        if let Some(v) = out.get_mut(&id) {
            v[(h - first) as usize] += n;
        }
    }
    Ok(out)
}

pub(super) async fn classes(
    s: &PgStore,
    project_id: i64,
    status: Option<String>,
    now: i64,
) -> Result<Vec<Class>, StoreError> {
    let status = status.as_deref();
    retry(|| async move {
        let c = super::fold::folded(s).await?;
        let (filter, first) = (
            if status.is_some() {
                " AND status = $2"
            } else {
                ""
            },
            hour_of(now) - 23,
        );
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&project_id];
        if let Some(st) = &status {
            params.push(st);
        }
        let mut out: Vec<Class> = rows(
            &c,
            &format!(
                "SELECT class, max(kind COLLATE \"C\"), count(*), sum(count)::BIGINT, max(last_seen) FROM issues
                 WHERE project_id = $1{filter} GROUP BY class
                 ORDER BY max(last_seen) DESC, class COLLATE \"C\""
            ),
            &params,
        )
        .await?
        .iter()
        .map(|r| Class {
            class: r.get(0),
            kind: r.get(1),
            issues: r.get(2),
            events: r.get(3),
            last_seen: rfc3339(r.get(4)),
            hourly: vec![0; 24],
        })
        .collect();
        let index: HashMap<String, usize> = out
            .iter()
            .enumerate()
            .map(|(i, c)| (c.class.clone(), i))
            .collect();
        let last = first + 23;
        let n = params.len();
        params.push(&first);
        params.push(&last);
        let hours = rows(
            &c,
            &format!(
                "SELECT i.class, h.hour, sum(h.count)::BIGINT FROM issues i
                 JOIN issue_hourly h ON h.issue_id = i.id
                 WHERE i.project_id = $1{filter} AND h.hour >= ${} AND h.hour <= ${}
                 GROUP BY i.class, h.hour",
                n + 1,
                n + 2
            ),
            &params,
        )
        .await?;
        for r in hours {
            let (class, hour, count): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
            if let Some(&i) = index.get(&class) {
                out[i].hourly[(hour - first) as usize] += count;
            }
        }
        Ok(out)
    })
    .await
}

pub(super) async fn issues(
    s: &PgStore,
    project_id: i64,
    filter: IssueFilter,
    sort: Sort,
    cursor: Option<Cursor>,
    limit: i64,
    now: i64,
) -> Result<(Vec<Issue>, Option<String>), StoreError> {
    let col = sort.column();
    // The SQL and its parameters (each `?` of a clause is the parameter pushed with it);
    // one cached statement per combination of filters.
    let mut sql =
        format!("SELECT {ISSUE_COLUMNS}, i.{col} FROM {ISSUE_FROM} WHERE i.project_id = $1");
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(project_id)];
    let mut push = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync + Send>| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("${}", args.len())));
    };
    if let Some(v) = &filter.status {
        push(&mut sql, " AND i.status = ?", Box::new(v.clone()));
    }
    if let Some(v) = &filter.class {
        push(&mut sql, " AND i.class = ?", Box::new(v.clone()));
    }
    if let Some(v) = &filter.level {
        push(&mut sql, " AND i.level = ?", Box::new(v.clone()));
    }
    for (key, value) in [
        ("environment", &filter.environment),
        ("release", &filter.release),
    ] {
        if let Some(v) = value {
            push(
                &mut sql,
                " AND EXISTS (SELECT 1 FROM issue_tags t WHERE t.issue_id = i.id AND t.key = ?",
                Box::new(key.to_owned()),
            );
            push(&mut sql, " AND t.value = ?)", Box::new(v.clone()));
        }
    }
    if let Some(u) = filter.assigned_to {
        push(&mut sql, " AND a.user_id = ?", Box::new(u));
    }
    if let Some(q) = &filter.query {
        push(
            &mut sql,
            " AND (strpos(lower(i.title), ?) > 0 OR strpos(lower(i.culprit), ?) > 0 OR strpos(lower(i.class), ?) > 0)",
            Box::new(q.to_lowercase()),
        );
    }
    if let Some(c) = cursor {
        push(
            &mut sql,
            &format!(" AND (i.{col}, i.id) < (?"),
            Box::new(c.value),
        );
        push(&mut sql, ", ?)", Box::new(c.id));
    }
    push(
        &mut sql,
        &format!(" ORDER BY i.{col} DESC, i.id DESC LIMIT ?"),
        Box::new(limit + 1),
    );
    let (sql, args) = (&sql, &args);
    retry(|| async move {
        let c = super::fold::folded(s).await?;
        let params: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let mut found: Vec<Issue> = rows(&c, sql, &params)
            .await?
            .iter()
            .map(|r| Issue {
                sort_value: r.get(15),
                ..issue_of(r)
            })
            .collect();
        let next = if found.len() as i64 > limit {
            found.truncate(limit.max(0) as usize);
            found.last().map(|i| {
                Cursor {
                    value: i.sort_value,
                    id: i.id,
                }
                .encode()
            })
        } else {
            None
        };
        let ids: Vec<i64> = found.iter().map(|i| i.id).collect();
        let mut hourly = hourly_of_many(&c, &ids, now).await?;
        for i in &mut found {
            i.hourly = hourly.remove(&i.id).unwrap_or_else(|| vec![0; 24]);
        }
        Ok((found, next))
    })
    .await
}

pub(super) async fn issue(s: &PgStore, id: i64, now: i64) -> Result<Option<Issue>, StoreError> {
    retry(|| async move {
        let c = super::fold::folded(s).await?;
        let Some(r) = row(
            &c,
            &format!("SELECT {ISSUE_COLUMNS} FROM {ISSUE_FROM} WHERE i.id = $1"),
            &[&id],
        )
        .await?
        else {
            return Ok(None);
        };
        let mut i = issue_of(&r);
        i.hourly = issue_hourly(&c, id, 24, now).await?;
        Ok(Some(i))
    })
    .await
}

pub(super) async fn issue_detail(
    s: &PgStore,
    id: i64,
    hours: i64,
    now: i64,
) -> Result<IssueDetail, StoreError> {
    retry(|| async move {
        let c = super::fold::folded(s).await?;
        let mut tags: HashMap<String, Vec<TagValue>> = HashMap::new();
        for r in rows(
            &c,
            "SELECT key, value, count FROM issue_tags WHERE issue_id = $1
             ORDER BY key COLLATE \"C\", count DESC, value COLLATE \"C\"",
            &[&id],
        )
        .await?
        {
            let list = tags.entry(r.get(0)).or_default();
            if list.len() < 10 {
                list.push(TagValue {
                    value: r.get(1),
                    count: r.get(2),
                });
            }
        }
        let latest_event_id = row(
            &c,
            "SELECT latest_event_id FROM issues WHERE id = $1",
            &[&id],
        )
        .await?
        .and_then(|r| r.get(0));
        Ok(IssueDetail {
            hourly: issue_hourly(&c, id, hours, now).await?,
            tags,
            latest_event_id,
        })
    })
    .await
}

pub(super) async fn issue_events(
    s: &PgStore,
    issue_id: i64,
    cursor: Option<i64>,
    limit: i64,
) -> Result<(Vec<EventSummary>, Option<String>), StoreError> {
    retry(|| async move {
        let mut found: Vec<(i64, EventSummary)> = rows(
            &s.conn().await?,
            "SELECT id, event_id, timestamp, received, level, message, environment, release FROM events
             WHERE issue_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            &[&issue_id, &cursor.unwrap_or(i64::MAX), &(limit + 1)],
        )
        .await?
        .iter()
        .map(|r| {
            (
                r.get(0),
                EventSummary {
                    event_id: r.get(1),
                    timestamp: rfc3339(r.get(2)),
                    received: rfc3339(r.get(3)),
                    level: r.get(4),
                    message: r.get(5),
                    environment: r.get(6),
                    release: r.get(7),
                },
            )
        })
        .collect();
        let next = if found.len() as i64 > limit {
            found.truncate(limit.max(0) as usize);
            found.last().map(|(id, _)| id.to_string())
        } else {
            None
        };
        Ok((found.into_iter().map(|(_, e)| e).collect(), next))
    })
    .await
}

pub(super) async fn event(
    s: &PgStore,
    project_id: i64,
    event_id: &str,
) -> Result<Option<Value>, StoreError> {
    retry(|| async move {
        let c = s.conn().await?;
        let Some(r) = row(
            &c,
            "SELECT id, issue_id, timestamp, received, level, encoding, data FROM events
             WHERE project_id = $1 AND event_id = $2",
            &[&project_id, &event_id],
        )
        .await?
        else {
            return Ok(None);
        };
        let (row_id, issue_id, timestamp, received): (i64, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let level: String = r.get(4);
        let encoding: i16 = r.get(5);
        let data: &[u8] = r.get(6);
        let raw = decode_event(encoding as u8, data)?;
        let mut v: Value = serde_json::from_slice(&raw)
            .map_err(|e| StoreError::Task(format!("stored event is not JSON: {e}")))?;
        let prev: Option<String> = row(
            &c,
            "SELECT event_id FROM events WHERE issue_id = $1 AND id < $2 ORDER BY id DESC LIMIT 1",
            &[&issue_id, &row_id],
        )
        .await?
        .map(|r| r.get(0));
        let next: Option<String> = row(
            &c,
            "SELECT event_id FROM events WHERE issue_id = $1 AND id > $2 ORDER BY id LIMIT 1",
            &[&issue_id, &row_id],
        )
        .await?
        .map(|r| r.get(0));
        if let Value::Object(m) = &mut v {
            m.insert("event_id".into(), event_id.into());
            m.entry("level").or_insert_with(|| level.into());
            m.entry("timestamp")
                .or_insert_with(|| rfc3339(timestamp).into());
            m.insert("received".into(), rfc3339(received).into());
            m.insert("project".into(), project_id.into());
            m.insert("issue_id".into(), issue_id.into());
            m.insert("previous_event_id".into(), prev.into());
            m.insert("next_event_id".into(), next.into());
        }
        Ok(Some(v))
    })
    .await
}

pub(super) async fn project_tag_values(
    s: &PgStore,
    project_id: i64,
    key: &str,
) -> Result<Vec<TagValue>, StoreError> {
    retry(|| async move {
        Ok(rows(
            &super::fold::folded(s).await?,
            "SELECT value, count FROM project_tags WHERE project_id = $1 AND key = $2
             ORDER BY count DESC, value COLLATE \"C\" LIMIT 100",
            &[&project_id, &key],
        )
        .await?
        .iter()
        .map(|r| TagValue {
            value: r.get(0),
            count: r.get(1),
        })
        .collect())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Twin, sample_job, twin};
    use crate::store::{Cursor, IssueFilter, Sort, Store};
    use serde_json::{Value, json};

    fn j<T: serde::Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap()
    }

    /// Every page of a list on both stores, compared page by page; the issues seen.
    async fn walk(t: &Twin, filter: IssueFilter, sort: Sort, limit: i64, now: i64) -> Vec<i64> {
        let (mut cursor, mut seen) = (None, Vec::new());
        loop {
            let lite = t
                .lite
                .issues(1, filter.clone(), sort, cursor, limit, now)
                .await
                .unwrap();
            let pg =
                t.pg.issues(1, filter.clone(), sort, cursor, limit, now)
                    .await
                    .unwrap();
            assert_eq!(j(&pg.0), j(&lite.0), "{filter:?} {sort:?} after {cursor:?}");
            assert_eq!(pg.1, lite.1, "next cursor of {filter:?} {sort:?}");
            seen.extend(pg.0.iter().map(|i| i.id));
            match pg.1 {
                Some(next) => cursor = Some(Cursor::decode(&next).unwrap()),
                None => return seen,
            }
        }
    }

    #[tokio::test]
    async fn reads_answer_as_sqlite_does_on_the_same_rows() {
        let t = twin().await;
        let now = crate::time::now_ms();
        for s in [&t.lite as &dyn Store, &t.pg] {
            s.create_project("default").await.unwrap().unwrap();
        }
        t.lite.ingest(sample_job(1, now)).await.unwrap();
        t.lite
            .set_issue_status(2, "resolved", &alerts())
            .await
            .unwrap();
        t.lite
            .set_issue_status(3, "muted", &alerts())
            .await
            .unwrap();
        t.mirror().await;

        let all = walk(&t, IssueFilter::default(), Sort::LastSeen, 100, now).await;
        assert!(all.len() >= 6, "the sample makes several issues: {all:?}");
        let filters = [
            IssueFilter::default(),
            IssueFilter {
                status: Some("unresolved".into()),
                ..Default::default()
            },
            IssueFilter {
                status: Some("muted".into()),
                ..Default::default()
            },
            IssueFilter {
                class: Some("TypeB".into()),
                ..Default::default()
            },
            IssueFilter {
                level: Some("warning".into()),
                ..Default::default()
            },
            IssueFilter {
                environment: Some("prod".into()),
                ..Default::default()
            },
            IssueFilter {
                release: Some("1.3".into()),
                environment: Some("staging".into()),
                ..Default::default()
            },
            IssueFilter {
                query: Some("BOOM 3".into()),
                ..Default::default()
            },
            IssueFilter {
                query: Some("typee".into()),
                status: Some("unresolved".into()),
                ..Default::default()
            },
            IssueFilter {
                query: Some("nothing like it".into()),
                ..Default::default()
            },
        ];
        let mut seen = Vec::new();
        for f in &filters {
            for sort in [Sort::LastSeen, Sort::FirstSeen, Sort::Count] {
                let one_by_one = walk(&t, f.clone(), sort, 1, now).await;
                let pages_of_four = walk(&t, f.clone(), sort, 4, now).await;
                assert_eq!(
                    one_by_one, pages_of_four,
                    "pages of 1 and 4 see the same issues"
                );
                if sort == Sort::LastSeen {
                    seen.push(one_by_one);
                }
            }
        }
        let want: [&[i64]; 10] = [
            &[1, 2, 3, 4, 5, 6],
            &[1, 4, 5, 6],
            &[3],
            &[2],
            &[2, 4, 6],
            &[1, 3, 5],
            &[2, 4, 6],
            &[4],
            &[5],
            &[],
        ];
        assert_eq!(seen, want.map(<[i64]>::to_vec), "what each filter finds");
        let counts = walk(&t, filters[0].clone(), Sort::Count, 3, now).await;
        assert_eq!(counts.len(), all.len());

        for status in [
            None,
            Some("unresolved".to_owned()),
            Some("resolved".to_owned()),
        ] {
            let lite = t.lite.classes(1, status.clone(), now).await.unwrap();
            let pg = t.pg.classes(1, status.clone(), now).await.unwrap();
            assert_eq!(j(&pg), j(&lite), "classes of {status:?}");
            assert!(status.is_some() || lite.len() == 6, "six classes: {lite:?}");
        }
        for id in all.iter().copied().chain([999]) {
            let (lite, pg) = (
                t.lite.issue(id, now).await.unwrap(),
                t.pg.issue(id, now).await.unwrap(),
            );
            assert_eq!(j(&pg), j(&lite), "issue {id}");
            for hours in [1, 24, 72] {
                let lite = t.lite.issue_detail(id, hours, now).await.unwrap();
                let pg = t.pg.issue_detail(id, hours, now).await.unwrap();
                assert_eq!(pg.hourly, lite.hourly, "hourly of {id}");
                assert_eq!(pg.latest_event_id, lite.latest_event_id);
                assert_eq!(j(&pg.tags), j(&lite.tags), "tags of {id}");
            }
            let mut cursor = None;
            loop {
                let lite = t.lite.issue_events(id, cursor, 2).await.unwrap();
                let pg = t.pg.issue_events(id, cursor, 2).await.unwrap();
                assert_eq!(j(&pg.0), j(&lite.0), "events of {id}");
                assert_eq!(pg.1, lite.1);
                match pg.1 {
                    Some(c) => cursor = Some(c.parse().unwrap()),
                    None => break,
                }
            }
        }
        let detail = t.pg.issue_detail(all[0], 24, now).await.unwrap();
        assert!(detail.hourly.iter().sum::<i64>() > 0, "{detail:?}");
        assert!(detail.tags.contains_key("domain"), "{detail:?}");
        for n in 1..=19u64 {
            let id = format!("{n:032x}");
            let lite = t.lite.event(1, &id).await.unwrap();
            let pg = t.pg.event(1, &id).await.unwrap();
            assert_eq!(pg, lite, "event {id}");
            assert_eq!(pg.is_some(), n <= 18);
        }
        assert!(
            t.pg.event(2, &format!("{:032x}", 1))
                .await
                .unwrap()
                .is_none(),
            "another project's"
        );
        for key in ["domain", "environment", "release", "none"] {
            let lite = t.lite.project_tag_values(1, key).await.unwrap();
            assert_eq!(
                t.pg.project_tag_values(1, key).await.unwrap(),
                lite,
                "{key}"
            );
        }
        let envs = t.pg.project_tag_values(1, "environment").await.unwrap();
        assert_eq!(
            j(&envs),
            json!([{"value": "prod", "count": 9}, {"value": "staging", "count": 9}])
        );
    }

    fn alerts() -> std::sync::Arc<crate::alerts::Alerts> {
        std::sync::Arc::new(crate::alerts::Alerts::new(
            crate::alerts::AlertConfig::default(),
            "http://127.0.0.1".into(),
        ))
    }
}
