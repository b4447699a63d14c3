//! What an alert says: the webhook's JSON body, the Slack-compatible message built
//! from it, and the email's subject, plain-text and HTML parts.

use serde_json::{Value, json};

use super::rules::Rule;
use crate::store::PreparedEvent;
use crate::time::rfc3339;

/// An issue as an alert describes it.
#[derive(Debug, Clone)]
pub struct IssueFacts {
    /// Id.
    pub id: i64,
    /// Title.
    pub title: String,
    /// Error class.
    pub class: String,
    /// `programmer` or `operational`.
    pub kind: String,
    /// Where it happened.
    pub culprit: String,
    /// Level.
    pub level: String,
    /// Status before this batch.
    pub status: String,
    /// Events so far.
    pub count: i64,
    /// First event (epoch ms).
    pub first_seen: i64,
    /// Newest event (epoch ms).
    pub last_seen: i64,
}

/// The issue's page in the dashboard.
pub fn issue_url(public_url: &str, issue_id: i64) -> String {
    format!("{}/issues/{issue_id}", public_url.trim_end_matches('/'))
}

/// The webhook body (also what the Slack message and the email are made of).
pub fn payload(
    trigger: &str,
    rule: &Rule,
    project_id: i64,
    project: &str,
    issue: &IssueFacts,
    event: Option<&PreparedEvent>,
    public_url: &str,
) -> String {
    let event = event.map(|e| {
        let tags: serde_json::Map<String, Value> = e
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "event_id": e.event_id,
            "release": e.release,
            "environment": e.environment,
            "tags": tags,
        })
    });
    json!({
        "action": "triggered",
        "trigger": trigger,
        "rule": {"id": rule.id, "name": rule.spec.name},
        "project": {"id": project_id, "name": project},
        "issue": {
            "id": issue.id,
            "title": issue.title,
            "class": issue.class,
            "kind": issue.kind,
            "culprit": issue.culprit,
            "level": issue.level,
            "count": issue.count,
            "first_seen": rfc3339(issue.first_seen),
            "last_seen": rfc3339(issue.last_seen),
            "url": issue_url(public_url, issue.id),
        },
        "event": event,
    })
    .to_string()
}

/// The body of `POST /api/0/alerts/{id}/test/`: an example issue, marked as a test.
pub fn test_payload(rule: &Rule, project: &str, public_url: &str, now: i64) -> String {
    json!({
        "action": "test",
        "trigger": "test",
        "rule": {"id": rule.id, "name": rule.spec.name},
        "project": {"id": rule.project_id, "name": project},
        "issue": {
            "id": 0,
            "title": "Test alert from errscope",
            "class": "TestAlert",
            "kind": "operational",
            "culprit": "errscope alert test",
            "level": "info",
            "count": 1,
            "first_seen": rfc3339(now),
            "last_seen": rfc3339(now),
            "url": format!("{}/", public_url.trim_end_matches('/')),
        },
        "event": null,
    })
    .to_string()
}

fn headline(v: &Value) -> String {
    let what = match v["trigger"].as_str().unwrap_or_default() {
        "new_issue" => "New issue",
        "regression" => "Regression",
        "frequency" => "Frequent issue",
        "unmute" => "Unmuted issue",
        _ => "Test alert",
    };
    format!(
        "{what} in {}: {}",
        v["project"]["name"].as_str().unwrap_or_default(),
        v["issue"]["title"].as_str().unwrap_or_default()
    )
}

/// The Slack-compatible incoming-webhook body: `text` plus blocks with the title, the
/// culprit, the count and a link.
pub fn slack(payload: &str) -> String {
    let v: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
    let i = &v["issue"];
    let url = i["url"].as_str().unwrap_or_default();
    let text = format!("{} <{url}|open in errscope>", headline(&v));
    // Slack's mrkdwn escapes: &, < and >.
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn",
                "text": format!("*{}*", esc(&headline(&v)))}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": format!("*Culprit*\n{}", esc(i["culprit"].as_str().unwrap_or_default()))},
                {"type": "mrkdwn", "text": format!("*Events*\n{}", i["count"])},
                {"type": "mrkdwn", "text": format!("*Level*\n{}", esc(i["level"].as_str().unwrap_or_default()))},
                {"type": "mrkdwn", "text": format!("*Rule*\n{}", esc(v["rule"]["name"].as_str().unwrap_or_default()))},
            ]},
            {"type": "actions", "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "Open in errscope"}, "url": url}
            ]}
        ]
    })
    .to_string()
}

/// An email: subject, plain text, HTML.
pub fn email(payload: &str) -> (String, String, String) {
    let v: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
    let i = &v["issue"];
    let s = |x: &Value| x.as_str().unwrap_or_default().to_owned();
    let subject: String = format!("[errscope] {}", headline(&v))
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let rows = [
        ("Issue", s(&i["title"])),
        ("Culprit", s(&i["culprit"])),
        ("Class", format!("{} ({})", s(&i["class"]), s(&i["kind"]))),
        ("Level", s(&i["level"])),
        ("Events", i["count"].to_string()),
        ("First seen", s(&i["first_seen"])),
        ("Last seen", s(&i["last_seen"])),
        ("Release", s(&v["event"]["release"])),
        ("Environment", s(&v["event"]["environment"])),
        ("Rule", s(&v["rule"]["name"])),
    ];
    let url = s(&i["url"]);
    let mut text = format!("{}\n\n", headline(&v));
    for (k, val) in &rows {
        if !val.is_empty() {
            text.push_str(&format!("{k}: {val}\n"));
        }
    }
    text.push_str(&format!("\nOpen in errscope: {url}\n"));
    let mut html = format!(
        "<!doctype html><html><body><h2>{}</h2><table>",
        escape_html(&headline(&v))
    );
    for (k, val) in &rows {
        if !val.is_empty() {
            html.push_str(&format!(
                "<tr><th align=\"left\">{k}</th><td>{}</td></tr>",
                escape_html(val)
            ));
        }
    }
    html.push_str(&format!(
        "</table><p><a href=\"{}\">Open in errscope</a></p></body></html>",
        escape_html(&url)
    ));
    (subject, text, html)
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_and_email_escape_what_the_issue_says() {
        let body = json!({"trigger": "new_issue", "project": {"name": "shop"},
            "rule": {"name": "r"},
            "issue": {"title": "<script>x</script>", "culprit": "a & b", "count": 3,
                      "url": "http://c/issues/1", "level": "error"}, "event": null})
        .to_string();
        let s: Value = serde_json::from_str(&slack(&body)).unwrap();
        assert!(s["text"].as_str().unwrap().starts_with("New issue in shop"));
        assert!(
            s["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .contains("&lt;script&gt;")
        );
        let (subject, text, html) = email(&body);
        assert_eq!(subject, "[errscope] New issue in shop: <script>x</script>");
        assert!(text.contains("Events: 3"));
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
    }
}
