//! Sentry envelope framing.
//!
//! An envelope is a JSON header line followed by items; each item is a JSON header line
//! and a payload, either `length` bytes long (then a newline, optional at the end) or, when
//! the header has no `length`, running to the next newline or the end.

use serde::Deserialize;

/// Longest header line accepted.
pub const MAX_HEADER: usize = 64 * 1024;

/// Why an envelope could not be framed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The envelope is empty.
    #[error("the envelope is empty")]
    Empty,
    /// A header line is not valid JSON of the right shape.
    #[error("{0} header is not valid: {1}")]
    Header(String, String),
    /// A header line is too long.
    #[error("{0} header is longer than {MAX_HEADER} bytes")]
    HeaderTooLong(String),
    /// An item's `length` runs past the end.
    #[error("item {0} declares length {1} but only {2} bytes follow")]
    Truncated(usize, usize, usize),
    /// A payload is not followed by a newline.
    #[error("item {0}: expected a newline after its {1}-byte payload")]
    MissingNewline(usize, usize),
}

/// The envelope header fields the collector reads.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// The event id of the envelope's event, if any.
    #[serde(default)]
    pub event_id: Option<String>,
    /// The DSN the SDK was configured with.
    #[serde(default)]
    pub dsn: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ItemHeader {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    length: Option<u64>,
}

/// One item.
#[derive(Debug, PartialEq, Eq)]
pub struct Item<'a> {
    /// `event`, `client_report`, `errscope.counts`, ...
    pub ty: String,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// Parses only the header line (for DSN authentication).
pub fn parse_header(body: &[u8]) -> Result<EnvelopeHeader, EnvelopeError> {
    let end = memchr::memchr(b'\n', body).unwrap_or(body.len());
    header_json(&body[..end], "envelope")
}

fn header_json<T: for<'de> Deserialize<'de> + Default>(
    line: &[u8],
    what: &str,
) -> Result<T, EnvelopeError> {
    if line.len() > MAX_HEADER {
        return Err(EnvelopeError::HeaderTooLong(what.to_owned()));
    }
    let line = trim_cr(line);
    if line.iter().all(u8::is_ascii_whitespace) && what == "envelope" {
        return Ok(T::default());
    }
    if line.first() != Some(&b'{') {
        return Err(EnvelopeError::Header(
            what.to_owned(),
            "expected a JSON object".into(),
        ));
    }
    serde_json::from_slice(line).map_err(|e| EnvelopeError::Header(what.to_owned(), e.to_string()))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits an envelope into its header and items.
pub fn parse(body: &[u8]) -> Result<(EnvelopeHeader, Vec<Item<'_>>), EnvelopeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(EnvelopeError::Empty);
    }
    let mut pos = memchr::memchr(b'\n', body).unwrap_or(body.len());
    let header = header_json(&body[..pos], "envelope")?;
    pos = (pos + 1).min(body.len());
    let mut items = Vec::new();
    while pos < body.len() {
        // Blank lines between items (and a trailing newline) are tolerated.
        if body[pos] == b'\n' || body[pos..].starts_with(b"\r\n") {
            pos += if body[pos] == b'\n' { 1 } else { 2 };
            continue;
        }
        let n = items.len() + 1;
        let what = format!("item {n}");
        let end = memchr::memchr(b'\n', &body[pos..]).map_or(body.len(), |p| pos + p);
        let ih: ItemHeaderOpt = header_json(&body[pos..end], &what)?;
        let ih =
            ih.0.ok_or_else(|| EnvelopeError::Header(what.clone(), "missing `type`".into()))?;
        pos = (end + 1).min(body.len());
        let payload = match ih.length {
            Some(len) => {
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                let available = body.len() - pos;
                if len > available {
                    return Err(EnvelopeError::Truncated(n, len, available));
                }
                let p = &body[pos..pos + len];
                pos += len;
                if pos < body.len() {
                    if body[pos] == b'\n' {
                        pos += 1;
                    } else if body[pos..].starts_with(b"\r\n") {
                        pos += 2;
                    } else {
                        return Err(EnvelopeError::MissingNewline(n, len));
                    }
                }
                p
            }
            None => {
                let end = memchr::memchr(b'\n', &body[pos..]).map_or(body.len(), |p| pos + p);
                let p = trim_cr(&body[pos..end]);
                pos = (end + 1).min(body.len());
                p
            }
        };
        items.push(Item { ty: ih.ty, payload });
    }
    Ok((header, items))
}

#[derive(Default)]
struct ItemHeaderOpt(Option<ItemHeader>);

impl<'de> Deserialize<'de> for ItemHeaderOpt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ItemHeader::deserialize(d).map(|h| ItemHeaderOpt(Some(h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_items_with_and_without_length() {
        let body =
            b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\",\"dsn\":\"https://k@h/1\"}\n\
{\"type\":\"attachment\",\"length\":10}\n\xef\xbb\xbfHello\r\n\n\
{\"type\":\"event\"}\n{\"message\":\"x\"}\n";
        let (h, items) = parse(body).unwrap();
        assert_eq!(h.dsn.as_deref(), Some("https://k@h/1"));
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].payload, b"\xef\xbb\xbfHello\r\n");
        assert_eq!(
            items[1],
            Item {
                ty: "event".into(),
                payload: b"{\"message\":\"x\"}"
            }
        );
        // No trailing newline, empty payloads, an empty header object.
        let (_, items) =
            parse(b"{}\n{\"type\":\"session\",\"length\":0}\n\n{\"type\":\"event\"}").unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].payload, b"");
    }

    #[test]
    fn rejects_bad_framing() {
        assert_eq!(parse(b""), Err(EnvelopeError::Empty));
        assert!(matches!(parse(b"[1]\n"), Err(EnvelopeError::Header(..))));
        assert!(matches!(
            parse(b"{}\n{\"length\":3}\nabc"),
            Err(EnvelopeError::Header(..))
        ));
        assert_eq!(
            parse(b"{}\n{\"type\":\"event\",\"length\":30}\n{}"),
            Err(EnvelopeError::Truncated(1, 30, 2))
        );
        assert_eq!(
            parse(b"{}\n{\"type\":\"event\",\"length\":2}\n{}x"),
            Err(EnvelopeError::MissingNewline(1, 2))
        );
        assert!(matches!(
            parse(b"{}\n{\"type\":7}\n{}"),
            Err(EnvelopeError::Header(..))
        ));
    }
}
