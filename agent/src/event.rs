//! The Sentry protocol types errscope stores: one [`Event`] per error or panic.
//!
//! Field names and shapes follow Sentry's event payload, so the errscope collector
//! and any Sentry-compatible server read the stored JSON as is.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// The id of an event: 32 lowercase hex digits on the wire (a UUID v4 without dashes).
///
/// Ids are assigned on the caller's thread, so [`capture_error`](crate::capture_error)
/// can return one before the event is written.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EventId(uuid::Uuid);

impl EventId {
    /// A fresh random id.
    #[must_use]
    pub fn new() -> Self {
        Self(crate::rand::uuid_v4())
    }

    /// The all-zero id, returned when errscope is not initialized or an event was dropped.
    #[must_use]
    pub const fn nil() -> Self {
        Self(uuid::Uuid::nil())
    }

    /// Whether this is the all-zero id.
    #[must_use]
    pub fn is_nil(&self) -> bool {
        self.0.is_nil()
    }

    /// 64 random bits of the id, used for sampling decisions.
    pub(crate) fn low_bits(self) -> u64 {
        // Truncation is the point: the low 64 bits of a v4 UUID are random
        // except for the two variant bits, which sit in the high half of them.
        self.0.as_u128() as u64
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.simple(), f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0.simple())
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;

    /// Parses 32 hex digits (dashes are accepted too).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0.simple())
    }
}

/// How severe an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Debugging information.
    Debug,
    /// Informational.
    Info,
    /// Something that may need attention.
    Warning,
    /// An operational error (the default of [`capture_error`](crate::capture_error)).
    #[default]
    Error,
    /// A programmer error that ended a thread or the process (panics).
    Fatal,
}

/// One stored event, in Sentry's event JSON shape.
///
/// A [`before_send`](crate::Options::before_send) hook receives it and may change any
/// field or drop it. Empty collections are left out of the JSON.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Event {
    /// 32 hex digits.
    pub event_id: EventId,
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    /// Severity.
    pub level: Level,
    /// Always `"native"`.
    pub platform: String,
    /// The message of [`capture_message`](crate::capture_message) events.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_text"
    )]
    pub message: Option<String>,
    /// The service's release, e.g. `shop@1.4.0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The deployment environment, e.g. `production`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The error chain or the panic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception: Option<Values<Exception>>,
    /// For message events: the capturing thread with its stack.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<Values<Thread>>,
    /// Tags: the domain's and `domain` (its name).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Contexts: `os`, `runtime`, `thread`, `domain` and the domain's own context entries.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub contexts: BTreeMap<String, Value>,
    /// The domain's breadcrumbs, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breadcrumbs: Option<Values<Breadcrumb>>,
    /// Free-form extra data.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
    /// The executable and shared objects loaded in the process, for symbolication on
    /// the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_meta: Option<DebugMeta>,
    /// The SDK that made the event.
    pub sdk: Sdk,
}

/// Sentry's `debug_meta`: the images the stack's addresses fall in.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct DebugMeta {
    /// The images, lowest address first.
    pub images: Vec<DebugImage>,
    /// The same images serialized once, used instead of `images` when no `before_send`
    /// hook needs typed ones.
    pub(crate) raw: Option<Arc<RawValue>>,
}

impl DebugMeta {
    /// A `debug_meta` with these images.
    #[must_use]
    pub fn new(images: Vec<DebugImage>) -> Self {
        Self { images, raw: None }
    }

    pub(crate) fn from_raw(raw: Arc<RawValue>) -> Self {
        Self {
            images: Vec::new(),
            raw: Some(raw),
        }
    }
}

impl Serialize for DebugMeta {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = serializer.serialize_struct("DebugMeta", 1)?;
        match &self.raw {
            Some(raw) if self.images.is_empty() => st.serialize_field("images", &**raw)?,
            _ => st.serialize_field("images", &self.images)?,
        }
        st.end()
    }
}

/// One loaded ELF image (Sentry's native debug image of type `elf`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct DebugImage {
    /// `elf`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The path the image was loaded from.
    pub code_file: String,
    /// The GNU build id, in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_id: Option<String>,
    /// Sentry's debug id, derived from the build id (a GUID, age 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_id: Option<String>,
    /// Where the image's first loaded segment starts in this process, `0x…`.
    pub image_addr: String,
    /// The size of the image's loaded address range in bytes.
    pub image_size: u64,
    /// The address the image's first loaded segment asks for (`0x0` for PIE), `0x…`.
    pub image_vmaddr: String,
    /// The CPU architecture as Sentry names it: `x86_64`, `arm64`, ...
    pub arch: String,
}

/// Sentry's `{"values": [...]}` wrapper.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Values<T> {
    /// The items, in protocol order.
    pub values: Vec<T>,
}

/// One link of an error chain, or a panic.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Exception {
    /// The concrete type name, e.g. `std::io::Error`, or `panic`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The `Display` text of the error, or the panic message.
    #[serde(serialize_with = "serialize_text")]
    pub value: String,
    /// How the error was caught.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<Mechanism>,
    /// Where it happened, oldest frame first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stacktrace: Option<Stacktrace>,
}

/// A thread and its stack (used for message events, which have no exception).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Thread {
    /// The thread's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether this thread made the event.
    pub current: bool,
    /// Whether this thread crashed.
    pub crashed: bool,
    /// Its stack, oldest frame first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stacktrace: Option<Stacktrace>,
}

/// How an exception was caught.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Mechanism {
    /// `capture_error`, `capture_message` or `panic`.
    #[serde(rename = "type")]
    pub ty: String,
    /// `true` for operational errors the program handled, `false` for panics.
    pub handled: bool,
    /// For `std::io::Error`: `io_kind` (the `ErrorKind`, e.g. `ConnectionReset`) and
    /// `os_code` (`raw_os_error`); for panics, `file`, `line` and `column`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, Value>,
    /// The OS error number, for `std::io::Error`s that carry one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<MechanismMeta>,
}

/// Operating-system details of an exception.
#[derive(Clone, Debug, Serialize)]
pub struct MechanismMeta {
    /// The `errno` value, for `std::io::Error`s that carry one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<Errno>,
    /// The signal that killed the process, for fatal signals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
}

/// A POSIX signal and its `si_code`, Sentry's `mechanism.meta.signal`.
#[derive(Clone, Debug, Serialize)]
pub struct Signal {
    /// e.g. 11.
    pub number: i32,
    /// The `si_code`, e.g. 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// e.g. `SIGSEGV`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// e.g. `SEGV_MAPERR`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_name: Option<String>,
}

/// An OS error number and its symbolic name.
#[derive(Clone, Debug, Serialize)]
pub struct Errno {
    /// e.g. 104.
    pub number: i32,
    /// e.g. `ECONNRESET`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A stack trace, oldest frame first (Sentry's order).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Stacktrace {
    /// The frames.
    pub frames: Vec<Frame>,
    /// The same frames serialized once per address by the resolver's cache, used instead
    /// of `frames` when no `before_send` hook needs typed frames.
    pub(crate) raw: Vec<Arc<RawValue>>,
}

impl Stacktrace {
    /// A stack trace of these frames, oldest first.
    #[must_use]
    pub fn new(frames: Vec<Frame>) -> Self {
        Self {
            frames,
            raw: Vec::new(),
        }
    }

    pub(crate) fn from_raw(raw: Vec<Arc<RawValue>>) -> Self {
        Self {
            frames: Vec::new(),
            raw,
        }
    }
}

impl Serialize for Stacktrace {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = serializer.serialize_struct("Stacktrace", 1)?;
        if self.frames.is_empty() && !self.raw.is_empty() {
            let raw: Vec<&RawValue> = self.raw.iter().map(|r| &**r).collect();
            st.serialize_field("frames", &raw)?;
        } else {
            st.serialize_field("frames", &self.frames)?;
        }
        st.end()
    }
}

/// One stack frame. Inlined functions get a frame of their own with the same address.
#[derive(Clone, Debug, Serialize, Default)]
#[non_exhaustive]
pub struct Frame {
    /// Demangled function name without the `::h…` hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The function's module path, e.g. `shop::ldap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// A short source path (`src/main.rs`, `tokio-1.54.1/src/...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// The full source path as recorded in the debug info.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abs_path: Option<String>,
    /// 1-based line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lineno: Option<u32>,
    /// 1-based column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colno: Option<u32>,
    /// Whether the frame belongs to the application rather than std or a dependency.
    pub in_app: bool,
    /// The absolute instruction address, `0x…` (Sentry's default `addr_mode`, `abs`).
    pub instruction_addr: String,
    /// The `code_file` of the image the address falls in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// The `image_addr` of that image, `0x…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_addr: Option<String>,
}

/// A breadcrumb: something that happened before the event.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Breadcrumb {
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    /// Sentry's breadcrumb type, `default` unless set.
    #[serde(rename = "type")]
    pub ty: String,
    /// A dotted category such as `db.query`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Severity.
    pub level: Level,
    /// What happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Structured data.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, Value>,
}

impl Breadcrumb {
    /// A breadcrumb with a message, level `info`, stamped now.
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            timestamp: crate::time::now_epoch(),
            ty: "default".to_owned(),
            category: None,
            level: Level::Info,
            message: Some(message.into()),
            data: BTreeMap::new(),
        }
    }

    /// Sets the category.
    #[must_use]
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }

    /// Sets the level.
    #[must_use]
    pub fn level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }

    /// Adds a data entry. A value that cannot be serialized is stored as `null`.
    #[must_use]
    pub fn data(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        self.data.insert(
            key.into(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }
}

/// The SDK that made an event.
#[derive(Clone, Debug, Serialize)]
pub struct Sdk {
    /// `errscope`.
    pub name: String,
    /// The crate version.
    pub version: String,
}

impl Default for Sdk {
    fn default() -> Self {
        Self {
            name: "errscope".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

impl Event {
    /// An empty event of the given level, stamped now.
    pub(crate) fn new(event_id: EventId, timestamp: f64, level: Level) -> Self {
        Self {
            event_id,
            timestamp,
            level,
            platform: "native".to_owned(),
            message: None,
            release: None,
            environment: None,
            server_name: None,
            exception: None,
            threads: None,
            tags: BTreeMap::new(),
            contexts: BTreeMap::new(),
            breadcrumbs: None,
            extra: BTreeMap::new(),
            debug_meta: None,
            sdk: Sdk::default(),
        }
    }
}

/// Strings shorter than this are escaped by serde_json as usual.
const LONG_TEXT: usize = 256;

/// Serializes free text (an error's message can be kilobytes). serde_json escapes a string
/// one byte at a time; a long one is escaped here 16 bytes at a time instead and handed
/// over as raw JSON (serde_json checks it with its own fast scan and copies it).
fn serialize_text<S: Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    if text.len() < LONG_TEXT {
        return serializer.serialize_str(text);
    }
    match RawValue::from_string(json_string(text)) {
        Ok(raw) => raw.serialize(serializer),
        Err(_) => serializer.serialize_str(text),
    }
}

fn serialize_opt_text<S: Serializer>(
    text: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match text {
        Some(text) => serialize_text(text, serializer),
        None => serializer.serialize_none(),
    }
}

/// Whether JSON needs `b` escaped inside a string.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// `text` as a JSON string literal, quotes included.
fn json_string(text: &str) -> String {
    use std::fmt::Write as _;
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + text.len() / 16 + 2);
    out.push('"');
    let (mut copied, mut i) = (0, 0);
    while i < bytes.len() {
        // A whole chunk without anything to escape is skipped at once (vectorized).
        if let Some(chunk) = bytes
            .get(i..i + 16)
            .and_then(|c| <&[u8; 16]>::try_from(c).ok())
            && !chunk.iter().fold(false, |any, &b| any | needs_escape(b))
        {
            i += 16;
            continue;
        }
        let b = bytes[i];
        if needs_escape(b) {
            // Escaped bytes are ASCII: `copied` and `i` sit on character boundaries.
            out.push_str(&text[copied..i]);
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                b'\r' => out.push_str("\\r"),
                b'\t' => out.push_str("\\t"),
                0x08 => out.push_str("\\b"),
                0x0c => out.push_str("\\f"),
                _ => {
                    let _ = write!(out, "\\u{b:04x}");
                }
            }
            copied = i + 1;
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_is_32_hex_and_round_trips() {
        let id = EventId::new();
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(s.parse::<EventId>().ok(), Some(id));
        assert_ne!(EventId::new(), id);
        assert_eq!(serde_json::to_value(id).ok(), Some(Value::String(s)));
    }

    #[test]
    fn levels_serialize_lowercase() {
        assert_eq!(
            serde_json::to_string(&Level::Warning).ok().as_deref(),
            Some("\"warning\"")
        );
        assert_eq!(
            serde_json::to_string(&Level::Fatal).ok().as_deref(),
            Some("\"fatal\"")
        );
    }

    #[test]
    fn long_text_is_escaped_as_serde_json_escapes_it() {
        let pieces = [
            "x",
            "é",
            "\"",
            "\\",
            "\n",
            "\r",
            "\t",
            "\u{8}",
            "\u{c}",
            "\u{1}",
            "\u{1f}",
            "🦀",
            "</script>",
            "\u{7f}",
        ];
        let mut seed = 0x2545_f491_u32;
        for len in [0, 1, 15, 16, 17, 255, 256, 257, 300, 1000, 4000] {
            for _ in 0..20 {
                let mut text = String::new();
                while text.len() < len {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    // Mostly plain text, as messages are, with the odd special character.
                    let piece = if seed.is_multiple_of(4) {
                        pieces[(seed as usize / 4) % pieces.len()]
                    } else {
                        "x"
                    };
                    text.push_str(piece);
                }
                let ours = json_string(&text);
                assert_eq!(ours, serde_json::to_string(&text).unwrap(), "{text:?}");
                let ex = Exception {
                    ty: "E".to_owned(),
                    value: text.clone(),
                    mechanism: None,
                    stacktrace: None,
                };
                let back: Value =
                    serde_json::from_str(&serde_json::to_string(&ex).unwrap()).unwrap();
                assert_eq!(back["value"], text.as_str());
            }
        }
    }
}
