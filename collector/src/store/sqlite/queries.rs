//! Read queries behind the JSON API. Every list is keyset-paginated on an index, so a page
//! costs the same at issue 10,000 as at issue 1.

use std::collections::HashMap;

use rusqlite::types::ToSql;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

use crate::store::{
    Class, Cursor, DiscardRow, EventSummary, Issue, IssueFilter, Sort, Stats, StoreError, TagValue,
    UserRef, decode_event,
};
use crate::time::{hour_of, rfc3339};

const ISSUE_COLUMNS: &str = "i.id, i.project_id, i.title, i.class, i.kind, i.culprit, i.level, i.status, i.count, i.first_seen, i.last_seen, i.is_regression, u.id, u.username, u.display_name";

/// Issues with their assignee (`i`, `u`).
const ISSUE_FROM: &str = "issues i LEFT JOIN issue_assignees a ON a.issue_id = i.id LEFT JOIN users u ON u.id = a.user_id";

fn issue_from_row(r: &Row<'_>) -> rusqlite::Result<Issue> {
    Ok(Issue {
        id: r.get(0)?,
        project_id: r.get(1)?,
        title: r.get(2)?,
        class: r.get(3)?,
        kind: r.get(4)?,
        culprit: r.get(5)?,
        level: r.get(6)?,
        status: r.get(7)?,
        count: r.get(8)?,
        first_seen: rfc3339(r.get(9)?),
        last_seen: rfc3339(r.get(10)?),
        is_regression: r.get(11)?,
        hourly: Vec::new(),
        assignee: match r.get::<_, Option<i64>>(12)? {
            Some(id) => Some(UserRef {
                id,
                username: r.get(13)?,
                display_name: r.get(14)?,
            }),
            None => None,
        },
        sort_value: 0,
    })
}

/// Hourly counts of one issue for the `hours` hours ending with the current one.
pub fn issue_hourly(
    conn: &Connection,
    issue_id: i64,
    hours: i64,
    now: i64,
) -> Result<Vec<i64>, StoreError> {
    let last = hour_of(now);
    let first = last - hours + 1;
    let mut out = vec![0; hours as usize];
    let mut stmt = conn.prepare_cached(
        "SELECT hour, count FROM issue_hourly WHERE issue_id = ?1 AND hour >= ?2 AND hour <= ?3",
    )?;
    let rows = stmt.query_map(params![issue_id, first, last], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (h, c) = row?;
        out[(h - first) as usize] += c;
    }
    Ok(out)
}

/// One issue.
pub fn issue(conn: &Connection, id: i64, now: i64) -> Result<Option<Issue>, StoreError> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {ISSUE_COLUMNS} FROM {ISSUE_FROM} WHERE i.id = ?1"
        ))?
        .query_row([id], issue_from_row)
        .optional()?;
    match found {
        Some(mut i) => {
            i.hourly = issue_hourly(conn, id, 24, now)?;
            Ok(Some(i))
        }
        None => Ok(None),
    }
}

/// A page of issues and the cursor of the next one.
pub fn issues(
    conn: &Connection,
    project_id: i64,
    filter: &IssueFilter,
    sort: Sort,
    cursor: Option<Cursor>,
    limit: i64,
    now: i64,
) -> Result<(Vec<Issue>, Option<String>), StoreError> {
    let col = sort.column();
    let mut sql =
        format!("SELECT {ISSUE_COLUMNS}, i.{col} FROM {ISSUE_FROM} WHERE i.project_id = ?");
    let mut args: Vec<Box<dyn ToSql>> = vec![Box::new(project_id)];
    if let Some(s) = &filter.status {
        sql.push_str(" AND i.status = ?");
        args.push(Box::new(s.clone()));
    }
    if let Some(c) = &filter.class {
        sql.push_str(" AND i.class = ?");
        args.push(Box::new(c.clone()));
    }
    if let Some(l) = &filter.level {
        sql.push_str(" AND i.level = ?");
        args.push(Box::new(l.clone()));
    }
    for (key, value) in [
        ("environment", &filter.environment),
        ("release", &filter.release),
    ] {
        if let Some(v) = value {
            sql.push_str(" AND EXISTS (SELECT 1 FROM issue_tags t WHERE t.issue_id = i.id AND t.key = ? AND t.value = ?)");
            args.push(Box::new(key));
            args.push(Box::new(v.clone()));
        }
    }
    if let Some(u) = filter.assigned_to {
        sql.push_str(" AND a.user_id = ?");
        args.push(Box::new(u));
    }
    if let Some(q) = &filter.query {
        sql.push_str(" AND (instr(lower(i.title), ?) > 0 OR instr(lower(i.culprit), ?) > 0 OR instr(lower(i.class), ?) > 0)");
        let q = q.to_lowercase();
        for _ in 0..3 {
            args.push(Box::new(q.clone()));
        }
    }
    if let Some(c) = cursor {
        sql.push_str(&format!(" AND (i.{col}, i.id) < (?, ?)"));
        args.push(Box::new(c.value));
        args.push(Box::new(c.id));
    }
    sql.push_str(&format!(" ORDER BY i.{col} DESC, i.id DESC LIMIT ?"));
    args.push(Box::new(limit + 1));
    let mut stmt = conn.prepare_cached(&sql)?;
    let refs: Vec<&dyn ToSql> = args.iter().map(|b| b.as_ref()).collect();
    let mut rows = stmt
        .query_map(refs.as_slice(), |r| {
            let mut i = issue_from_row(r)?;
            i.sort_value = r.get(15)?;
            Ok(i)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|i| {
            Cursor {
                value: i.sort_value,
                id: i.id,
            }
            .encode()
        })
    } else {
        None
    };
    for i in &mut rows {
        i.hourly = issue_hourly(conn, i.id, 24, now)?;
    }
    Ok((rows, next))
}

/// Top values per tag key of an issue (10 per key).
pub fn issue_tags(
    conn: &Connection,
    issue_id: i64,
) -> Result<HashMap<String, Vec<TagValue>>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, value, count FROM issue_tags WHERE issue_id = ?1 ORDER BY key, count DESC, value",
    )?;
    let mut out: HashMap<String, Vec<TagValue>> = HashMap::new();
    let rows = stmt.query_map([issue_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
    })?;
    for row in rows {
        let (key, value, count) = row?;
        let list = out.entry(key).or_default();
        if list.len() < 10 {
            list.push(TagValue { value, count });
        }
    }
    Ok(out)
}

/// The latest event id of an issue.
pub fn latest_event_id(conn: &Connection, issue_id: i64) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT latest_event_id FROM issues WHERE id = ?1")?
        .query_row([issue_id], |r| r.get(0))
        .optional()?
        .flatten())
}

/// Values of a tag across a project, most frequent first.
pub fn project_tag_values(
    conn: &Connection,
    project_id: i64,
    key: &str,
) -> Result<Vec<TagValue>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT value, count FROM project_tags WHERE project_id = ?1 AND key = ?2 ORDER BY count DESC, value LIMIT 100",
    )?;
    let rows = stmt
        .query_map(params![project_id, key], |r| {
            Ok(TagValue {
                value: r.get(0)?,
                count: r.get(1)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A page of an issue's stored events, newest first.
pub fn issue_events(
    conn: &Connection,
    issue_id: i64,
    cursor: Option<i64>,
    limit: i64,
) -> Result<(Vec<EventSummary>, Option<String>), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, event_id, timestamp, received, level, message, environment, release FROM events
         WHERE issue_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
    )?;
    let mut rows = stmt
        .query_map(
            params![issue_id, cursor.unwrap_or(i64::MAX), limit + 1],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    EventSummary {
                        event_id: r.get(1)?,
                        timestamp: rfc3339(r.get(2)?),
                        received: rfc3339(r.get(3)?),
                        level: r.get(4)?,
                        message: r.get(5)?,
                        environment: r.get(6)?,
                        release: r.get(7)?,
                    },
                ))
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|(id, _)| id.to_string())
    } else {
        None
    };
    Ok((rows.into_iter().map(|(_, e)| e).collect(), next))
}

/// A stored event as JSON, with `issue_id` and its neighbours in the issue.
pub fn event(
    conn: &Connection,
    project_id: i64,
    event_id: &str,
) -> Result<Option<Value>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT id, issue_id, timestamp, received, level, encoding, data FROM events WHERE project_id = ?1 AND event_id = ?2",
        )?
        .query_row(params![project_id, event_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, u8>(5)?,
                r.get::<_, Vec<u8>>(6)?,
            ))
        })
        .optional()?;
    let Some((row_id, issue_id, timestamp, received, level, encoding, data)) = row else {
        return Ok(None);
    };
    let raw = decode_event(encoding, &data)?;
    let mut v: Value = serde_json::from_slice(&raw)
        .map_err(|e| StoreError::Task(format!("stored event is not JSON: {e}")))?;
    let prev: Option<String> = conn
        .prepare_cached(
            "SELECT event_id FROM events WHERE issue_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT 1",
        )?
        .query_row(params![issue_id, row_id], |r| r.get(0))
        .optional()?;
    let next: Option<String> = conn
        .prepare_cached(
            "SELECT event_id FROM events WHERE issue_id = ?1 AND id > ?2 ORDER BY id LIMIT 1",
        )?
        .query_row(params![issue_id, row_id], |r| r.get(0))
        .optional()?;
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
}

/// Classes of a project with counts, newest activity first.
pub fn classes(
    conn: &Connection,
    project_id: i64,
    status: Option<&str>,
    now: i64,
) -> Result<Vec<Class>, StoreError> {
    let status_filter = if status.is_some() {
        " AND status = ?2"
    } else {
        " AND ?2 IS NULL"
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT class, max(kind), count(*), sum(count), max(last_seen) FROM issues
         WHERE project_id = ?1{status_filter} GROUP BY class ORDER BY max(last_seen) DESC, class"
    ))?;
    let mut out = stmt
        .query_map(params![project_id, status], |r| {
            Ok(Class {
                class: r.get(0)?,
                kind: r.get(1)?,
                issues: r.get(2)?,
                events: r.get(3)?,
                last_seen: rfc3339(r.get(4)?),
                hourly: vec![0; 24],
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let index: HashMap<String, usize> = out
        .iter()
        .enumerate()
        .map(|(i, c)| (c.class.clone(), i))
        .collect();
    let first = hour_of(now) - 23;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT i.class, h.hour, sum(h.count) FROM issues i JOIN issue_hourly h ON h.issue_id = i.id
         WHERE i.project_id = ?1{status_filter} AND h.hour >= ?3 AND h.hour <= ?4 GROUP BY i.class, h.hour"
    ))?;
    let rows = stmt.query_map(params![project_id, status, first, first + 23], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (class, hour, n) = row?;
        if let Some(&i) = index.get(&class) {
            out[i].hourly[(hour - first) as usize] += n;
        }
    }
    Ok(out)
}

/// Project stats, or `None` for an unknown project.
pub fn stats(conn: &Connection, project_id: i64) -> Result<Option<Stats>, StoreError> {
    let row: Option<(i64, i64, Option<i64>)> = conn
        .prepare_cached("SELECT events, seq, last_seen FROM projects WHERE id = ?1")?
        .query_row([project_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((events, seq, last_seen)) = row else {
        return Ok(None);
    };
    let issues: i64 = conn
        .prepare_cached("SELECT count(*) FROM issues WHERE project_id = ?1")?
        .query_row([project_id], |r| r.get(0))?;
    let discarded = conn
        .prepare_cached("SELECT reason, category, quantity FROM discards WHERE project_id = ?1 ORDER BY reason, category")?
        .query_map([project_id], |r| Ok(DiscardRow { reason: r.get(0)?, category: r.get(1)?, quantity: r.get(2)? }))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Stats {
        events,
        issues,
        last_seen: last_seen.map(rfc3339),
        seq,
        discarded,
    }))
}
