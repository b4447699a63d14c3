//! Alert rules: triggers, filters and channels, their JSON form and its validation, and
//! the check of a rule's filter against an event.

use serde::Serialize;
use serde_json::{Map, Value, json};

/// What makes a rule fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The first event of an issue.
    NewIssue,
    /// An event of a resolved issue.
    Regression,
    /// More than `count` events of an issue within `minutes`.
    Frequency,
    /// A muted issue set back to unresolved.
    Unmute,
}

impl Trigger {
    /// The name in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::NewIssue => "new_issue",
            Trigger::Regression => "regression",
            Trigger::Frequency => "frequency",
            Trigger::Unmute => "unmute",
        }
    }

    /// Parses an API/database name.
    pub fn parse(s: &str) -> Option<Trigger> {
        Some(match s {
            "new_issue" => Trigger::NewIssue,
            "regression" => Trigger::Regression,
            "frequency" => Trigger::Frequency,
            "unmute" => Trigger::Unmute,
            _ => return None,
        })
    }
}

/// Event levels, lowest first.
pub const LEVELS: [&str; 5] = ["debug", "info", "warning", "error", "fatal"];

fn level_rank(level: &str) -> usize {
    match level {
        "debug" => 0,
        "info" | "log" => 1,
        "warning" | "warn" => 2,
        "error" => 3,
        "fatal" | "critical" => 4,
        _ => 3,
    }
}

/// Which events a rule considers; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filter {
    /// The event's level is at least this.
    pub level: Option<String>,
    /// Exact environment.
    pub environment: Option<String>,
    /// Exact release.
    pub release: Option<String>,
    /// Exact error class.
    pub class: Option<String>,
    /// `programmer` or `operational`.
    pub kind: Option<String>,
}

/// Where a rule's messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// A JSON `POST`, signed with HMAC-SHA256 when a secret is set.
    Webhook {
        /// http(s) URL.
        url: String,
        /// The HMAC key.
        secret: Option<String>,
    },
    /// A Slack-compatible incoming webhook.
    Slack {
        /// http(s) URL.
        url: String,
    },
    /// Email over the collector's SMTP server.
    Email {
        /// Recipients.
        to: Vec<String>,
    },
}

impl Channel {
    /// The channel's type name.
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Webhook { .. } => "webhook",
            Channel::Slack { .. } => "slack",
            Channel::Email { .. } => "email",
        }
    }

    /// The stored form (with the secret).
    pub fn to_stored(&self) -> Value {
        match self {
            Channel::Webhook { url, secret } => {
                json!({ "type": "webhook", "url": url, "secret": secret })
            }
            Channel::Slack { url } => json!({ "type": "slack", "url": url }),
            Channel::Email { to } => json!({ "type": "email", "to": to }),
        }
    }

    /// The API form: a webhook's secret is never shown, only whether one is set.
    pub fn to_api(&self) -> Value {
        match self {
            Channel::Webhook { url, secret } => {
                json!({ "type": "webhook", "url": url, "has_secret": secret.is_some() })
            }
            other => other.to_stored(),
        }
    }

    /// Reads the stored form back.
    pub fn from_stored(v: &Value) -> Option<Channel> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(match v.get("type")?.as_str()? {
            "webhook" => Channel::Webhook {
                url: s("url")?,
                secret: s("secret"),
            },
            "slack" => Channel::Slack { url: s("url")? },
            "email" => Channel::Email {
                to: v
                    .get("to")?
                    .as_array()?
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect(),
            },
            _ => return None,
        })
    }
}

/// A rule's settings, as validated from the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// A name for people.
    pub name: String,
    /// What makes it fire.
    pub trigger: Trigger,
    /// Frequency: more than this many events ...
    pub count: i64,
    /// ... within this many minutes.
    pub minutes: i64,
    /// Which events count.
    pub filter: Filter,
    /// At most one message per issue within this many minutes.
    pub interval_minutes: i64,
    /// Where messages go.
    pub channel: Channel,
    /// Off: the rule sends nothing.
    pub enabled: bool,
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its id.
    pub id: i64,
    /// Its project.
    pub project_id: i64,
    /// Its settings.
    pub spec: RuleSpec,
    /// When it was created (epoch ms).
    pub created: i64,
}

impl Rule {
    /// The API form.
    pub fn to_api(&self) -> Value {
        let s = &self.spec;
        json!({
            "id": self.id,
            "project_id": self.project_id,
            "name": s.name,
            "trigger": s.trigger.as_str(),
            "count": (s.trigger == Trigger::Frequency).then_some(s.count),
            "minutes": (s.trigger == Trigger::Frequency).then_some(s.minutes),
            "filter": s.filter,
            "interval_minutes": s.interval_minutes,
            "channel": s.channel.to_api(),
            "enabled": s.enabled,
            "created": crate::time::rfc3339(self.created),
        })
    }
}

/// The default action interval.
pub const DEFAULT_INTERVAL_MINUTES: i64 = 30;
/// The longest frequency window and action interval: a week.
pub const MAX_MINUTES: i64 = 7 * 24 * 60;
/// Email recipients per rule at most.
pub const MAX_RECIPIENTS: usize = 20;

/// The event an alert is about, as far as filters look at it.
#[derive(Debug, Clone, Copy)]
pub struct EventFacts<'a> {
    /// The event's level.
    pub level: &'a str,
    /// Its environment.
    pub environment: Option<&'a str>,
    /// Its release.
    pub release: Option<&'a str>,
    /// The issue's class.
    pub class: &'a str,
    /// The issue's kind.
    pub kind: &'a str,
}

impl Filter {
    /// Whether an event passes the filter.
    pub fn matches(&self, e: &EventFacts<'_>) -> bool {
        let eq = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == got)
        };
        self.level
            .as_deref()
            .is_none_or(|l| level_rank(e.level) >= level_rank(l))
            && eq(&self.environment, e.environment)
            && eq(&self.release, e.release)
            && eq(&self.class, Some(e.class))
            && eq(&self.kind, Some(e.kind))
    }

    /// Whether the filter only passes events (an aggregate count has none to check).
    pub fn needs_event(&self) -> bool {
        self.level.is_some() || self.environment.is_some() || self.release.is_some()
    }
}

/// Where the collector itself can be reached, to refuse webhooks that point back at it.
#[derive(Debug, Clone)]
pub struct SelfAddress {
    /// Host (lowercase) and port of `--public-url`.
    pub host: String,
    /// Its port.
    pub port: u16,
}

impl SelfAddress {
    /// From the collector's public URL.
    pub fn from_public_url(public_url: &str) -> Option<SelfAddress> {
        let u = reqwest::Url::parse(public_url).ok()?;
        Some(SelfAddress {
            host: u.host_str()?.to_ascii_lowercase(),
            port: u.port_or_known_default()?,
        })
    }
}

fn is_local_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.ends_with(".localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// Checks a webhook URL: http(s), and not the collector itself.
pub fn check_url(field: &str, raw: &str, me: Option<&SelfAddress>) -> Result<String, String> {
    let u =
        reqwest::Url::parse(raw.trim()).map_err(|e| format!("{field}: not a valid URL ({e})"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(format!(
            "{field}: the scheme must be http or https, not `{}`",
            u.scheme()
        ));
    }
    let Some(host) = u.host_str().map(str::to_ascii_lowercase) else {
        return Err(format!("{field}: the URL has no host"));
    };
    let port = u.port_or_known_default().unwrap_or(80);
    if let Some(me) = me
        && port == me.port
        && (host == me.host || (is_local_host(&host) && is_local_host(&me.host)))
    {
        return Err(format!(
            "{field}: the URL points at this collector itself ({host}:{port}); alerts would loop back into it"
        ));
    }
    if raw.len() > 2048 {
        return Err(format!("{field}: at most 2048 characters"));
    }
    Ok(u.to_string())
}

fn opt_string(m: &Map<String, Value>, field: &str, max: usize) -> Result<Option<String>, String> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.trim().to_owned())),
        Some(Value::String(_)) => Err(format!("{field}: at most {max} characters")),
        Some(_) => Err(format!("{field}: must be a string")),
    }
}

fn int(m: &Map<String, Value>, field: &str, lo: i64, hi: i64) -> Result<Option<i64>, String> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            _ => Err(format!("{field}: must be an integer from {lo} to {hi}")),
        },
    }
}

/// What [`parse_rule`] needs to know beyond the body.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Where the collector is, for the self-URL check.
    pub me: Option<&'a SelfAddress>,
    /// Whether `--smtp-url` is set (email rules need it).
    pub smtp: bool,
    /// The rule being replaced, whose webhook secret a body without `secret` keeps.
    pub old: Option<&'a RuleSpec>,
}

/// Validates a rule body. The error names the field.
pub fn parse_rule(body: &Value, cx: Context<'_>) -> Result<RuleSpec, String> {
    let m = body
        .as_object()
        .ok_or("the body must be a JSON object with name, trigger and channel")?;
    let name = opt_string(m, "name", 200)?.ok_or("name: required, 1 to 200 characters")?;
    if name.chars().any(char::is_control) {
        return Err("name: control characters are not allowed".into());
    }
    let trigger = match m.get("trigger") {
        Some(Value::String(t)) => Trigger::parse(t).ok_or_else(|| {
            format!("trigger: must be new_issue, regression, frequency or unmute, not `{t}`")
        })?,
        _ => return Err("trigger: required, new_issue, regression, frequency or unmute".into()),
    };
    let (count, minutes) = if trigger == Trigger::Frequency {
        (
            int(m, "count", 1, 1_000_000_000)?.ok_or("count: required for a frequency rule")?,
            int(m, "minutes", 1, MAX_MINUTES)?.ok_or("minutes: required for a frequency rule")?,
        )
    } else {
        (0, 0)
    };
    let filter = match m.get("filter") {
        None | Some(Value::Null) => Filter::default(),
        Some(Value::Object(f)) => {
            if let Some(k) = f.keys().find(|k| {
                !["level", "environment", "release", "class", "kind"].contains(&k.as_str())
            }) {
                return Err(format!(
                    "filter.{k}: unknown; filters are level, environment, release, class and kind"
                ));
            }
            let level = opt_string(f, "level", 16)?;
            if let Some(l) = &level
                && !LEVELS.contains(&l.as_str())
            {
                return Err(format!(
                    "filter.level: must be one of {}, not `{l}`",
                    LEVELS.join(", ")
                ));
            }
            let kind = opt_string(f, "kind", 16)?;
            if let Some(k) = &kind
                && k != "programmer"
                && k != "operational"
            {
                return Err(format!(
                    "filter.kind: must be programmer or operational, not `{k}`"
                ));
            }
            Filter {
                level,
                environment: opt_string(f, "environment", 200)
                    .map_err(|e| format!("filter.{e}"))?,
                release: opt_string(f, "release", 200).map_err(|e| format!("filter.{e}"))?,
                class: opt_string(f, "class", 200).map_err(|e| format!("filter.{e}"))?,
                kind,
            }
        }
        Some(_) => return Err("filter: must be an object".into()),
    };
    let interval_minutes =
        int(m, "interval_minutes", 0, MAX_MINUTES)?.unwrap_or(DEFAULT_INTERVAL_MINUTES);
    let channel = match m.get("channel") {
        Some(Value::Object(c)) => parse_channel(c, cx)?,
        _ => {
            return Err(
                "channel: required, an object with a type of webhook, slack or email".into(),
            );
        }
    };
    let enabled = match m.get("enabled") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("enabled: must be true or false".into()),
    };
    Ok(RuleSpec {
        name,
        trigger,
        count,
        minutes,
        filter,
        interval_minutes,
        channel,
        enabled,
    })
}

fn parse_channel(c: &Map<String, Value>, cx: Context<'_>) -> Result<Channel, String> {
    let url = || -> Result<String, String> {
        match c.get("url") {
            Some(Value::String(u)) => check_url("channel.url", u, cx.me),
            _ => Err("channel.url: required, an http(s) URL".into()),
        }
    };
    match c.get("type").and_then(Value::as_str) {
        Some("webhook") => {
            let secret = match c.get("secret") {
                // Absent: keep the secret of the rule being replaced (the API never shows it).
                None => match cx.old.map(|o| &o.channel) {
                    Some(Channel::Webhook { secret, .. }) => secret.clone(),
                    _ => None,
                },
                Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) if s.len() <= 256 => Some(s.clone()),
                Some(_) => return Err("channel.secret: a string of at most 256 bytes".into()),
            };
            Ok(Channel::Webhook {
                url: url()?,
                secret,
            })
        }
        Some("slack") => Ok(Channel::Slack { url: url()? }),
        Some("email") => {
            if !cx.smtp {
                return Err(
                    "channel.type: email needs the collector started with --smtp-url and --smtp-from"
                        .into(),
                );
            }
            let to = match c.get("to") {
                Some(Value::Array(a)) if !a.is_empty() && a.len() <= MAX_RECIPIENTS => a,
                _ => {
                    return Err(format!(
                        "channel.to: required, a list of 1 to {MAX_RECIPIENTS} email addresses"
                    ));
                }
            };
            let mut out = Vec::new();
            for t in to {
                let s = t.as_str().unwrap_or_default().trim();
                if s.parse::<lettre::Address>().is_err() {
                    return Err(format!("channel.to: `{s}` is not an email address"));
                }
                out.push(s.to_owned());
            }
            Ok(Channel::Email { to: out })
        }
        Some(t) => Err(format!(
            "channel.type: must be webhook, slack or email, not `{t}`"
        )),
        None => Err("channel.type: required, webhook, slack or email".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(me: &SelfAddress) -> Context<'_> {
        Context {
            me: Some(me),
            smtp: false,
            old: None,
        }
    }

    #[test]
    fn validates_rules_and_names_the_field() {
        let me = SelfAddress::from_public_url("http://127.0.0.1:8000").unwrap();
        let ok = json!({"name": "new", "trigger": "new_issue",
            "channel": {"type": "webhook", "url": "http://hooks.example/x", "secret": "s"}});
        let r = parse_rule(&ok, cx(&me)).unwrap();
        assert_eq!(r.interval_minutes, DEFAULT_INTERVAL_MINUTES);
        assert!(r.enabled);
        let bad = |body: Value, want: &str| {
            let e = parse_rule(&body, cx(&me)).unwrap_err();
            assert!(e.contains(want), "{e} should mention {want}");
        };
        bad(json!({"trigger": "new_issue"}), "name");
        bad(
            json!({"name": "x", "trigger": "often", "channel": {}}),
            "trigger",
        );
        bad(
            json!({"name": "x", "trigger": "frequency", "minutes": 1,
            "channel": {"type": "slack", "url": "https://h/x"}}),
            "count",
        );
        bad(
            json!({"name": "x", "trigger": "new_issue", "filter": {"level": "loud"},
            "channel": {"type": "slack", "url": "https://h/x"}}),
            "filter.level",
        );
        bad(
            json!({"name": "x", "trigger": "new_issue",
            "channel": {"type": "webhook", "url": "ftp://h/x"}}),
            "scheme must be http",
        );
        bad(
            json!({"name": "x", "trigger": "new_issue",
            "channel": {"type": "webhook", "url": "http://localhost:8000/api/1/store/"}}),
            "this collector itself",
        );
        bad(
            json!({"name": "x", "trigger": "new_issue",
            "channel": {"type": "email", "to": ["a@b.c"]}}),
            "--smtp-url",
        );
    }

    #[test]
    fn filters_match_levels_at_least_and_exact_fields() {
        let f = Filter {
            level: Some("warning".into()),
            environment: Some("production".into()),
            ..Default::default()
        };
        let e = EventFacts {
            level: "error",
            environment: Some("production"),
            release: None,
            class: "KeyError",
            kind: "operational",
        };
        assert!(f.matches(&e));
        assert!(!f.matches(&EventFacts { level: "info", ..e }));
        assert!(!f.matches(&EventFacts {
            environment: Some("staging"),
            ..e
        }));
        assert!(!f.matches(&EventFacts {
            environment: None,
            ..e
        }));
    }
}
