//! PII scrubbing, applied on the agent's thread before an event is stored.
//!
//! Values under secret-looking keys become `[Filtered]`, wherever they are nested;
//! card-like numbers (13 to 19 digits that pass the Luhn check) and the password of
//! `user:pass@` URLs are replaced inside any string.

use aho_corasick::AhoCorasick;
use serde_json::Value;

use crate::event::Event;

/// The replacement text.
pub(crate) const FILTERED: &str = "[Filtered]";

/// Case-insensitive substrings of keys whose values are secrets.
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "auth",
    "credentials",
    "token",
    "private_key",
    "cookie",
    "session",
];

/// Matches secret-looking keys: the built-in substrings and the configured ones, ASCII
/// case-insensitive, in one pass over the key.
pub(crate) struct Scrubber {
    keys: AhoCorasick,
}

impl Scrubber {
    /// The built-in key substrings plus `extra` (empty ones are ignored).
    pub(crate) fn new(extra: &[String]) -> Self {
        let patterns = SECRET_KEYS
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str).filter(|k| !k.is_empty()));
        let keys = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(patterns)
            .unwrap_or_else(|e| {
                crate::warn(format_args!(
                    "cannot use the configured scrub keys ({e}); scrubbing the built-in ones"
                ));
                Self::builtin()
            });
        Self { keys }
    }

    fn builtin() -> AhoCorasick {
        // A handful of short literals: within every limit of the builder.
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(SECRET_KEYS)
            .unwrap_or_else(|_| unreachable!("the built-in scrub keys build"))
    }

    fn is_secret_key(&self, key: &str) -> bool {
        self.keys.is_match(key)
    }
}

/// Scrubs everything free-form in an event.
pub(crate) fn scrub_event(event: &mut Event, scrubber: &Scrubber) {
    if let Some(m) = event.message.as_mut() {
        scrub_string(m);
    }
    for (key, value) in &mut event.tags {
        if scrubber.is_secret_key(key) {
            FILTERED.clone_into(value);
        } else {
            scrub_string(value);
        }
    }
    scrub_map(event.contexts.iter_mut(), scrubber);
    scrub_map(event.extra.iter_mut(), scrubber);
    if let Some(exc) = event.exception.as_mut() {
        for e in &mut exc.values {
            scrub_string(&mut e.value);
        }
    }
    if let Some(crumbs) = event.breadcrumbs.as_mut() {
        for b in &mut crumbs.values {
            if let Some(m) = b.message.as_mut() {
                scrub_string(m);
            }
            scrub_map(b.data.iter_mut(), scrubber);
        }
    }
}

fn scrub_map<'a>(entries: impl Iterator<Item = (&'a String, &'a mut Value)>, scrubber: &Scrubber) {
    for (key, value) in entries {
        if scrubber.is_secret_key(key) {
            *value = Value::String(FILTERED.to_owned());
        } else {
            scrub_value(value, scrubber);
        }
    }
}

/// Scrubs a JSON value in place.
pub(crate) fn scrub_value(value: &mut Value, scrubber: &Scrubber) {
    match value {
        Value::String(s) => scrub_string(s),
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_value(v, scrubber)),
        Value::Object(map) => scrub_map(map.iter_mut(), scrubber),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Replaces card-like numbers and URL passwords inside a string.
pub(crate) fn scrub_string(s: &mut String) {
    if s.contains("://")
        && let Some(clean) = scrub_url_credentials(s)
    {
        *s = clean;
    }
    if digits(s.as_bytes()) >= 13
        && let Some(clean) = scrub_cards(s)
    {
        *s = clean;
    }
}

/// The number of ASCII digits in `bytes`. Counted in chunks small enough for a `u8`
/// counter, which the compiler vectorizes (a plain filter and count does not).
fn digits(bytes: &[u8]) -> usize {
    bytes
        .chunks(255)
        .map(|chunk| {
            let n: u8 = chunk
                .iter()
                .map(|&b| u8::from(b.wrapping_sub(b'0') < 10))
                .sum();
            usize::from(n)
        })
        .sum()
}

/// `scheme://user:pass@host` → `scheme://user:[Filtered]@host`.
fn scrub_url_credentials(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut changed = false;
    while let Some(idx) = rest.find("://") {
        let (head, tail) = rest.split_at(idx + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) if userinfo.contains(':') => {
                let user = userinfo.split(':').next().unwrap_or_default();
                out.push_str(user);
                out.push(':');
                out.push_str(FILTERED);
                out.push('@');
                out.push_str(host);
                changed = true;
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// Replaces runs of 13 to 19 digits (optionally grouped by single spaces or dashes) that
/// pass the Luhn check.
fn scrub_cards(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    let mut i = 0;
    let mut changed = false;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() || (i > 0 && bytes[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // A run of digits with single separators between digit groups.
        let start = i;
        let mut end = i;
        let mut digits = Vec::with_capacity(19);
        let mut j = i;
        while j < bytes.len() {
            let b = bytes[j];
            if b.is_ascii_digit() {
                digits.push(b - b'0');
                end = j + 1;
                j += 1;
            } else if (b == b' ' || b == b'-')
                && j + 1 < bytes.len()
                && bytes[j + 1].is_ascii_digit()
                && j > start
                && bytes[j - 1].is_ascii_digit()
            {
                j += 1;
            } else {
                break;
            }
        }
        if (13..=19).contains(&digits.len()) && card_prefix(&digits) && luhn(&digits) {
            out.push_str(&s[last..start]);
            out.push_str(FILTERED);
            last = end;
            changed = true;
        }
        i = end.max(i + 1);
    }
    out.push_str(&s[last..]);
    changed.then_some(out)
}

/// Card numbers start with 2 (Mastercard 2-series), 3 (Amex, Diners, JCB), 4 (Visa),
/// 5 (Mastercard) or 6 (Discover, UnionPay); epoch milliseconds (13 digits starting with
/// 1) and most ids do not.
fn card_prefix(digits: &[u8]) -> bool {
    matches!(digits.first(), Some(2..=6))
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_keys_are_filtered_at_any_depth() {
        let mut v = json!({
            "headers": {"Authorization": "Bearer abc", "Accept": "text/html", "Cookie": "s=1"},
            "form": [{"user": "ann", "Password": "hunter2"}],
            "db_session_id": 7,
            "API_KEY": "k",
            "x-shop-pin": "1234"
        });
        scrub_value(
            &mut v,
            &Scrubber::new(&["Shop-PIN".to_owned(), String::new()]),
        );
        assert_eq!(v["headers"]["Authorization"], FILTERED);
        assert_eq!(v["headers"]["Cookie"], FILTERED);
        assert_eq!(v["headers"]["Accept"], "text/html");
        assert_eq!(v["form"][0]["Password"], FILTERED);
        assert_eq!(v["form"][0]["user"], "ann");
        assert_eq!(v["db_session_id"], FILTERED);
        assert_eq!(v["API_KEY"], FILTERED);
        assert_eq!(v["x-shop-pin"], FILTERED, "an extra key from the options");
    }

    #[test]
    fn cards_and_url_passwords_are_filtered_in_strings() {
        let mut s =
            "paid with 4111 1111 1111 1111 and 4111-1111-1111-1111, order 1234567890123".to_owned();
        scrub_string(&mut s);
        assert_eq!(
            s,
            "paid with [Filtered] and [Filtered], order 1234567890123"
        );
        let mut url =
            "connect postgres://app:s3cr3t@db:5432/shop failed; see https://example.com/x"
                .to_owned();
        scrub_string(&mut url);
        assert_eq!(
            url,
            "connect postgres://app:[Filtered]@db:5432/shop failed; see https://example.com/x"
        );
        // A Luhn-valid 13-digit epoch-milliseconds value is not a card.
        let mut at = "at 1763806500007".to_owned();
        assert!(luhn(&[1, 7, 6, 3, 8, 0, 6, 5, 0, 0, 0, 0, 7]));
        scrub_string(&mut at);
        assert_eq!(at, "at 1763806500007");
        assert_eq!(digits(b"a1b22c333"), 6);
        assert_eq!(
            digits("7".repeat(1000).as_bytes()),
            1000,
            "more than a chunk"
        );
        let mut plain = "nothing here".to_owned();
        scrub_string(&mut plain);
        assert_eq!(plain, "nothing here");
    }
}
