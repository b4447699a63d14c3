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
    /// When the SDK sent the envelope (keys aggregate sessions, `releases/`).
    #[serde(default)]
    pub sent_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ItemHeader {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    length: Option<u64>,
    #[serde(default)]
    attachment_type: Option<String>,
    #[serde(default)]
    filename: Option<String>,
}

/// The `attachment_type` of an attachment item holding a minidump.
pub const MINIDUMP_ATTACHMENT: &str = "event.minidump";

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

/// What the streaming [`Framer`] holds and refuses.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest `event` payload.
    pub event: usize,
    /// Largest payload of another kept item type.
    pub kept: usize,
    /// Largest envelope, in bytes pushed.
    pub total: usize,
    /// The item types whose payloads are kept; others are skipped without being held.
    pub keep: &'static [&'static str],
    /// Largest minidump attachment (`attachment_type: "event.minidump"`), kept apart
    /// from other attachments; 0: minidumps are skipped like other attachments.
    pub minidump: usize,
}

/// An item the [`Framer`] kept.
#[derive(Debug, PartialEq, Eq)]
pub struct OwnedItem {
    /// Its position in the envelope, from 1 (skipped items count).
    pub n: usize,
    /// `event`, `client_report`, ...
    pub ty: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// An attachment's `attachment_type` (kept attachments are minidumps only).
    pub attachment_type: Option<String>,
    /// An attachment's `filename`.
    pub filename: Option<String>,
}

/// Why the [`Framer`] refused an envelope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The envelope is malformed (400).
    #[error(transparent)]
    Malformed(#[from] EnvelopeError),
    /// An item's payload passed the limit for its type (413).
    #[error("item {0}: the `{1}` item exceeds {2} bytes")]
    ItemTooLarge(usize, String, usize),
    /// An item header announced a `length` over the limit for its type (413).
    #[error("item {0} declares length {1}; a `{2}` item may be at most {3} bytes")]
    LengthTooLarge(usize, u64, String, usize),
    /// The envelope passed its limit (413).
    #[error("the decompressed body exceeds {0} bytes")]
    TooLarge(usize),
}

#[derive(Debug)]
enum State {
    EnvelopeHeader,
    ItemHeader,
    Sized { left: usize },
    AfterSized { cr: bool },
    Line,
}

#[derive(Debug)]
struct Current {
    n: usize,
    ty: String,
    attachment_type: Option<String>,
    filename: Option<String>,
    len: usize,
    keep: bool,
    buf: Vec<u8>,
    got: usize,
}

/// Frames an envelope pushed in pieces (as it arrives or inflates), holding only the
/// header and the kept items: a payload over its type's limit, or an announced `length`
/// over it, is refused as soon as it is seen. Frames exactly as [`parse`] does.
///
/// After a malformed line (a `400`), the rest is only counted: an envelope that also
/// passes its size limit is still a `413`, as when it is framed whole.
#[derive(Debug)]
pub struct Framer {
    limits: Limits,
    state: State,
    line: Vec<u8>,
    header: Option<EnvelopeHeader>,
    items: Vec<OwnedItem>,
    cur: Option<Current>,
    seen: usize,
    total: usize,
    kept: usize,
    all_ws: bool,
    known_len: Option<usize>,
    failed: Option<EnvelopeError>,
    last_sized: Option<(usize, usize)>,
}

impl Framer {
    /// A framer; `known_len` is the envelope's full length when it is known up front
    /// (an uncompressed body with a `Content-Length`), so that a `length` running past
    /// the end is reported as that (`400`) rather than as too large.
    pub fn new(limits: Limits, known_len: Option<usize>) -> Self {
        Framer {
            limits,
            state: State::EnvelopeHeader,
            line: Vec::new(),
            header: None,
            items: Vec::new(),
            cur: None,
            seen: 0,
            total: 0,
            kept: 0,
            all_ws: true,
            known_len,
            failed: None,
            last_sized: None,
        }
    }

    /// Bytes held: kept payloads and the line being read.
    pub fn held(&self) -> usize {
        self.kept + self.line.capacity() + self.cur.as_ref().map_or(0, |c| c.buf.capacity())
    }

    /// The envelope header, once its line is complete.
    pub fn header(&self) -> Option<&EnvelopeHeader> {
        self.header.as_ref()
    }

    /// Takes the next piece of the envelope.
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), FrameError> {
        self.total += data.len();
        if self.total > self.limits.total {
            return Err(FrameError::TooLarge(self.limits.total));
        }
        if self.all_ws {
            self.all_ws = data.iter().all(u8::is_ascii_whitespace);
        }
        while !data.is_empty() && self.failed.is_none() {
            let offset = self.total - data.len();
            let used = match self.step(data, offset) {
                Ok(n) => n,
                Err(FrameError::Malformed(e)) => {
                    self.fail(e);
                    break;
                }
                Err(e) => return Err(e),
            };
            data = &data[used..];
        }
        Ok(())
    }

    fn fail(&mut self, e: EnvelopeError) {
        self.failed = Some(e);
        self.items = Vec::new();
        self.cur = None;
        self.line = Vec::new();
        self.kept = 0;
    }

    /// Consumes a prefix of `data` (which starts at `offset` in the envelope).
    fn step(&mut self, data: &[u8], offset: usize) -> Result<usize, FrameError> {
        match self.state {
            State::EnvelopeHeader | State::ItemHeader => {
                let (part, used, done) = match memchr::memchr(b'\n', data) {
                    Some(p) => (&data[..p], p + 1, true),
                    None => (data, data.len(), false),
                };
                if self.line.len() + part.len() > MAX_HEADER {
                    let what = match self.state {
                        State::EnvelopeHeader => "envelope".to_owned(),
                        _ => format!("item {}", self.seen + 1),
                    };
                    return Err(EnvelopeError::HeaderTooLong(what).into());
                }
                self.line.extend_from_slice(part);
                if done {
                    self.end_line(Some(offset + used))?;
                }
                Ok(used)
            }
            State::Sized { left } => {
                let take = left.min(data.len());
                let cur = self.cur.as_mut().expect("a sized item");
                if cur.keep {
                    cur.buf.extend_from_slice(&data[..take]);
                }
                cur.got += take;
                self.state = State::Sized { left: left - take };
                if left == take {
                    self.end_item(false);
                    self.state = State::AfterSized { cr: false };
                }
                Ok(take)
            }
            State::AfterSized { cr } => match data[0] {
                b'\n' => {
                    self.state = State::ItemHeader;
                    Ok(1)
                }
                b'\r' if !cr => {
                    self.state = State::AfterSized { cr: true };
                    Ok(1)
                }
                _ => Err(self.missing_newline().into()),
            },
            State::Line => {
                let (part, used, done) = match memchr::memchr(b'\n', data) {
                    Some(p) => (&data[..p], p + 1, true),
                    None => (data, data.len(), false),
                };
                let cur = self.cur.as_mut().expect("a line item");
                if cur.keep {
                    let limit = if cur.attachment_type.as_deref() == Some(MINIDUMP_ATTACHMENT) {
                        self.limits.minidump
                    } else {
                        self.limits.limit(&cur.ty)
                    };
                    // One byte of slack for a `\r` before the newline.
                    if cur.buf.len() + part.len() > limit + 1 {
                        return Err(FrameError::ItemTooLarge(cur.n, cur.ty.clone(), limit));
                    }
                    cur.buf.extend_from_slice(part);
                }
                if done {
                    self.end_item(true);
                    self.state = State::ItemHeader;
                }
                Ok(used)
            }
        }
    }

    fn missing_newline(&self) -> EnvelopeError {
        let (n, len) = self.last_sized.unwrap_or((self.seen, 0));
        EnvelopeError::MissingNewline(n, len)
    }

    /// A header line is complete; `end` is the offset just past its newline, if any.
    fn end_line(&mut self, end: Option<usize>) -> Result<(), FrameError> {
        let line = std::mem::take(&mut self.line);
        if matches!(self.state, State::EnvelopeHeader) {
            self.header = Some(header_json(&line, "envelope")?);
            self.state = State::ItemHeader;
            return Ok(());
        }
        if end.is_some() && (line.is_empty() || line == b"\r") {
            return Ok(());
        }
        let n = self.seen + 1;
        let what = format!("item {n}");
        let ih: ItemHeaderOpt = header_json(&line, &what)?;
        let ih =
            ih.0.ok_or_else(|| EnvelopeError::Header(what.clone(), "missing `type`".into()))?;
        self.seen = n;
        let minidump = self.limits.minidump > 0
            && ih.ty == "attachment"
            && ih.attachment_type.as_deref() == Some(MINIDUMP_ATTACHMENT);
        let keep = minidump || self.limits.keep.contains(&ih.ty.as_str());
        let limit = if minidump {
            self.limits.minidump
        } else {
            self.limits.limit(&ih.ty)
        };
        let mut cur = Current {
            n,
            ty: ih.ty,
            attachment_type: ih.attachment_type,
            filename: ih.filename,
            len: 0,
            keep,
            buf: Vec::new(),
            got: 0,
        };
        match ih.length {
            Some(len) => {
                let size = usize::try_from(len).unwrap_or(usize::MAX);
                let available = match (self.known_len, end) {
                    (Some(total), Some(end)) => Some(total.saturating_sub(end)),
                    (Some(_), None) => Some(0),
                    _ => None,
                };
                if size > limit {
                    match available {
                        Some(a) if size > a => {
                            return Err(EnvelopeError::Truncated(n, size, a).into());
                        }
                        _ => return Err(FrameError::LengthTooLarge(n, len, cur.ty, limit)),
                    }
                }
                cur.len = size;
                self.cur = Some(cur);
                self.last_sized = Some((n, size));
                if size == 0 {
                    self.end_item(false);
                    self.state = State::AfterSized { cr: false };
                } else {
                    self.state = State::Sized { left: size };
                }
            }
            None => {
                self.cur = Some(cur);
                self.state = State::Line;
            }
        }
        Ok(())
    }

    fn end_item(&mut self, trim: bool) {
        let Some(mut cur) = self.cur.take() else {
            return;
        };
        if !cur.keep {
            return;
        }
        if trim && cur.buf.last() == Some(&b'\r') {
            cur.buf.pop();
        }
        self.kept += cur.buf.len();
        self.items.push(OwnedItem {
            n: cur.n,
            ty: cur.ty,
            payload: cur.buf,
            attachment_type: cur.attachment_type,
            filename: cur.filename,
        });
    }

    /// The end of the envelope: its header and kept items, or why it was refused.
    pub fn finish(mut self) -> Result<(EnvelopeHeader, Vec<OwnedItem>), FrameError> {
        if self.all_ws {
            return Err(EnvelopeError::Empty.into());
        }
        if let Some(e) = self.failed.take() {
            return Err(e.into());
        }
        if matches!(self.state, State::EnvelopeHeader | State::ItemHeader) && !self.line.is_empty()
        {
            self.end_line(None)?;
        }
        match self.state {
            State::EnvelopeHeader => {
                self.header = Some(header_json(&[], "envelope")?);
            }
            State::ItemHeader | State::AfterSized { cr: false } => {}
            State::Sized { .. } => {
                let cur = self.cur.as_ref().expect("a sized item");
                return Err(EnvelopeError::Truncated(cur.n, cur.len, cur.got).into());
            }
            State::AfterSized { cr: true } => return Err(self.missing_newline().into()),
            State::Line => self.end_item(true),
        }
        Ok((self.header.unwrap_or_default(), self.items))
    }
}

impl Limits {
    fn limit(&self, ty: &str) -> usize {
        if ty == "event" {
            self.event
        } else if self.keep.contains(&ty) {
            self.kept
        } else {
            self.total
        }
    }
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

    const KEEP: &[&str] = &["event", "attachment", "session"];

    fn framed(
        body: &[u8],
        split: usize,
        known: bool,
    ) -> Result<(EnvelopeHeader, Vec<OwnedItem>), FrameError> {
        let limits = Limits {
            event: 1 << 20,
            kept: 1 << 20,
            total: 1 << 24,
            keep: KEEP,
            minidump: 0,
        };
        let mut f = Framer::new(limits, known.then_some(body.len()));
        for piece in body.chunks(split.max(1)) {
            f.push(piece)?;
        }
        f.finish()
    }

    #[test]
    fn the_streaming_framer_agrees_with_parse_in_every_split() {
        let cases: Vec<&[u8]> = vec![
            b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\",\"dsn\":\"https://k@h/1\"}\n{\"type\":\"attachment\",\"length\":10}\n\xef\xbb\xbfHello\r\n\n{\"type\":\"event\"}\n{\"message\":\"x\"}\n",
            b"{}\n{\"type\":\"session\",\"length\":0}\n\n{\"type\":\"event\"}",
            b"{}\n{\"type\":\"event\"}\r\n{\"a\":1}\r\n\r\n{\"type\":\"other\",\"length\":3}\r\nabc\r\n",
            b"{}\n{\"type\":\"event\",\"length\":2}\n{}",
            b"{}\n{\"type\":\"event\",\"length\":2}\n{}\r",
            b"{}\n{\"type\":\"event\",\"length\":2}\n{}\rx",
            b"",
            b" \n\r\n ",
            b"[1]\n",
            b"{}\n{\"length\":3}\nabc",
            b"{}\n{\"type\":\"event\",\"length\":30}\n{}",
            b"{}\n{\"type\":\"event\",\"length\":2}\n{}x",
            b"{}\n{\"type\":7}\n{}",
            b"{}\n{\"type\":\"ev",
            b"{}\n\r",
            b"{}\n{\"type\":\"event\",\"length\":-1}\n{}\n",
            b"{}\n{\"type\":\"event\"}",
            b"{}\n{\"type\":\"event\",\"length\":3}",
            b"\n\n{\"type\":\"event\"}\n{}\n",
            b"{}\0{\"type\":\"event\"}\0{}\0",
            b"{}\r{\"type\":\"event\"}\r{}\r",
            b"{}",
            b"  ",
        ];
        for body in cases {
            let want = parse(body).map(|(h, items)| {
                let kept: Vec<OwnedItem> = items
                    .into_iter()
                    .enumerate()
                    .filter(|(_, i)| KEEP.contains(&i.ty.as_str()))
                    .map(|(n, i)| OwnedItem {
                        n: n + 1,
                        ty: i.ty,
                        payload: i.payload.to_vec(),
                        attachment_type: None,
                        filename: None,
                    })
                    .collect();
                (h, kept)
            });
            for split in 1..=body.len().max(1) {
                for known in [false, true] {
                    let got = framed(body, split, known);
                    match (&want, &got) {
                        (Ok(w), Ok(g)) => {
                            assert_eq!(w, g, "{:?} split {split}", String::from_utf8_lossy(body))
                        }
                        (Err(w), Err(FrameError::Malformed(g))) => {
                            assert_eq!(w, g, "{:?} split {split}", String::from_utf8_lossy(body))
                        }
                        _ => panic!(
                            "{:?} split {split}: parse {want:?}, framer {got:?}",
                            String::from_utf8_lossy(body)
                        ),
                    }
                }
            }
        }
    }

    #[test]
    fn the_streaming_framer_refuses_large_items_as_soon_as_it_sees_them() {
        let limits = Limits {
            event: 100,
            kept: 50,
            total: 1000,
            keep: &["event", "client_report"],
            minidump: 0,
        };
        // An announced length over the limit: refused on the header line.
        let mut f = Framer::new(limits, None);
        assert_eq!(
            f.push(b"{}\n{\"type\":\"event\",\"length\":1000000000}\n"),
            Err(FrameError::LengthTooLarge(
                1,
                1_000_000_000,
                "event".into(),
                100
            ))
        );
        // Unless the body visibly ends first: then it is truncated.
        let body = b"{}\n{\"type\":\"event\",\"length\":1000000000}\n{}\n";
        let mut f = Framer::new(limits, Some(body.len()));
        f.push(body).unwrap();
        assert_eq!(
            f.finish(),
            Err(EnvelopeError::Truncated(1, 1_000_000_000, 3).into())
        );
        // A line payload: refused once it passes the limit, before its end arrives.
        let mut f = Framer::new(limits, None);
        f.push(b"{}\n{\"type\":\"client_report\"}\n").unwrap();
        f.push(&[b'x'; 40]).unwrap();
        assert!(f.held() >= 40);
        assert_eq!(
            f.push(&[b'x'; 40]),
            Err(FrameError::ItemTooLarge(1, "client_report".into(), 50))
        );
        // Skipped items are not held, only counted against the total.
        let mut f = Framer::new(limits, None);
        f.push(b"{}\n{\"type\":\"attachment\"}\n").unwrap();
        f.push(&[b'a'; 900]).unwrap();
        assert!(f.held() < 100, "{}", f.held());
        assert_eq!(f.push(&[b'a'; 200]), Err(FrameError::TooLarge(1000)));
        // After a malformed header the rest is counted: still a 413 past the total.
        let mut f = Framer::new(limits, None);
        f.push(b"nope\n").unwrap();
        f.push(&[0; 900]).unwrap();
        assert_eq!(f.push(&[0; 200]), Err(FrameError::TooLarge(1000)));
    }
}
