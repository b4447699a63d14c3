//! The parts of a Sentry event the collector reads, deserialized without copying.
//!
//! Only the fields grouping and indexing need are typed; everything else is skipped
//! (and kept verbatim in the stored JSON). A typed field with the wrong JSON type is a
//! client error, reported with serde's path-free but precise message.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// A Sentry event, as far as the collector looks into it.
#[derive(Debug, Default, Deserialize)]
pub struct Event<'a> {
    /// 32 hex digits (dashes tolerated).
    #[serde(borrow, default)]
    pub event_id: Option<Cow<'a, str>>,
    /// Epoch seconds (number) or RFC 3339 (string).
    #[serde(default)]
    pub timestamp: Option<Timestamp<'a>>,
    /// `fatal`, `error`, `warning`, `info`, `debug`.
    #[serde(borrow, default)]
    pub level: Option<Cow<'a, str>>,
    /// `python`, `node`, `native`, `rust`, ...
    #[serde(borrow, default)]
    pub platform: Option<Cow<'a, str>>,
    /// A plain message or `{"formatted", "message", "params"}`.
    #[serde(borrow, default)]
    pub message: Option<Message<'a>>,
    /// The structured form of `message`.
    #[serde(borrow, default)]
    pub logentry: Option<Message<'a>>,
    /// The exception chain, root cause first (Sentry's order).
    #[serde(borrow, default)]
    pub exception: Option<Exceptions<'a>>,
    /// A stack trace attached to a message event.
    #[serde(borrow, default)]
    pub stacktrace: Option<Stacktrace<'a>>,
    /// Threads, whose crashed or current one may carry the stack trace.
    #[serde(borrow, default)]
    pub threads: Option<Threads<'a>>,
    /// An explicit grouping key; `{{ default }}` stands for the computed one.
    #[serde(borrow, default)]
    pub fingerprint: Option<Vec<Cow<'a, str>>>,
    /// Tags, as an object or as `[key, value]` pairs.
    #[serde(default)]
    pub tags: Option<Tags>,
    /// Deployment environment.
    #[serde(borrow, default)]
    pub environment: Option<Cow<'a, str>>,
    /// Release identifier.
    #[serde(borrow, default)]
    pub release: Option<Cow<'a, str>>,
    /// Host name.
    #[serde(borrow, default)]
    pub server_name: Option<Cow<'a, str>>,
    /// The transaction (route) the event happened in; a culprit fallback.
    #[serde(borrow, default)]
    pub transaction: Option<Cow<'a, str>>,
    /// The logger name.
    #[serde(borrow, default)]
    pub logger: Option<Cow<'a, str>>,
}

/// An event timestamp.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Timestamp<'a> {
    /// Epoch seconds.
    Seconds(f64),
    /// RFC 3339.
    Text(#[serde(borrow)] Cow<'a, str>),
}

/// A log message.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Message<'a> {
    /// The message itself.
    Plain(#[serde(borrow)] Cow<'a, str>),
    /// `{"formatted": ..., "message": <template>}`.
    Structured {
        /// The message with parameters filled in.
        #[serde(borrow, default)]
        formatted: Option<Cow<'a, str>>,
        /// The template.
        #[serde(borrow, default)]
        message: Option<Cow<'a, str>>,
    },
}

impl Message<'_> {
    /// The text a human reads.
    pub fn formatted(&self) -> Option<&str> {
        match self {
            Message::Plain(s) => Some(s),
            Message::Structured { formatted, message } => {
                formatted.as_deref().or(message.as_deref())
            }
        }
    }

    /// The template when there is one (better for grouping), else the text.
    pub fn template(&self) -> Option<&str> {
        match self {
            Message::Plain(s) => Some(s),
            Message::Structured { formatted, message } => {
                message.as_deref().or(formatted.as_deref())
            }
        }
    }
}

/// The exception interface: `{"values": [...]}` or, in old SDKs, a bare list.
#[derive(Debug, Default)]
pub struct Exceptions<'a> {
    /// Root cause first, the exception that was raised last.
    pub values: Vec<Exception<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Exceptions<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Exceptions<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an exception object {\"values\": [...]} or a list of exceptions")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element()? {
                    values.push(v);
                }
                Ok(Exceptions { values })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut values = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "values" {
                        values = map.next_value::<Option<Vec<Exception<'a>>>>()?;
                    } else {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                Ok(Exceptions {
                    values: values.unwrap_or_default(),
                })
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// One exception of the chain.
#[derive(Debug, Default, Deserialize)]
pub struct Exception<'a> {
    /// The type, e.g. `std::io::Error`, `KeyError`, `panic`.
    #[serde(borrow, default, rename = "type")]
    pub ty: Option<Cow<'a, str>>,
    /// The message.
    #[serde(borrow, default)]
    pub value: Option<Cow<'a, str>>,
    /// The module the type lives in (Python).
    #[serde(borrow, default)]
    pub module: Option<Cow<'a, str>>,
    /// How it was caught.
    #[serde(borrow, default)]
    pub mechanism: Option<Mechanism<'a>>,
    /// Where it was raised.
    #[serde(borrow, default)]
    pub stacktrace: Option<Stacktrace<'a>>,
}

/// How an exception was captured.
#[derive(Debug, Default, Deserialize)]
pub struct Mechanism<'a> {
    /// `panic`, `excepthook`, `onunhandledrejection`, ...
    #[serde(borrow, default, rename = "type")]
    pub ty: Option<Cow<'a, str>>,
    /// `false` when nothing handled it.
    #[serde(default)]
    pub handled: Option<bool>,
    /// Extra data; the errscope agent puts `io_kind` and `os_code` here.
    #[serde(borrow, default)]
    pub data: Option<MechanismData<'a>>,
}

/// The mechanism data the collector reads.
#[derive(Debug, Default, Deserialize)]
pub struct MechanismData<'a> {
    /// `std::io::ErrorKind` name, e.g. `ConnectionReset`.
    #[serde(borrow, default)]
    pub io_kind: Option<Cow<'a, str>>,
}

/// A stack trace.
#[derive(Debug, Default, Deserialize)]
pub struct Stacktrace<'a> {
    /// Oldest (outermost) frame first.
    #[serde(borrow, default)]
    pub frames: Option<Vec<Frame<'a>>>,
}

/// One stack frame.
#[derive(Debug, Default, Deserialize)]
pub struct Frame<'a> {
    /// Function name, possibly with a Rust symbol hash.
    #[serde(borrow, default)]
    pub function: Option<Cow<'a, str>>,
    /// Module path.
    #[serde(borrow, default)]
    pub module: Option<Cow<'a, str>>,
    /// Source file.
    #[serde(borrow, default)]
    pub filename: Option<Cow<'a, str>>,
    /// Absolute source path.
    #[serde(borrow, default)]
    pub abs_path: Option<Cow<'a, str>>,
    /// Line number (ignored by grouping).
    #[serde(default)]
    pub lineno: Option<u64>,
    /// Whether the frame belongs to the application.
    #[serde(default)]
    pub in_app: Option<bool>,
    /// The instruction address (`"0x…"` or a number); inlined frames share the address of
    /// the frame they were inlined into. Any other JSON value reads as none.
    #[serde(default, deserialize_with = "lenient_addr")]
    pub instruction_addr: Option<u64>,
}

/// An address as SDKs send it: a hex string (`0x…`), a decimal string or a number.
fn lenient_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an instruction address")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            let s = s.trim();
            Ok(
                match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => s.parse().ok(),
                },
            )
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n))
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Ok(u64::try_from(n).ok())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map
                .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                .is_some()
            {}
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// Threads interface.
#[derive(Debug, Default, Deserialize)]
pub struct Threads<'a> {
    /// The threads.
    #[serde(borrow, default)]
    pub values: Option<Vec<Thread<'a>>>,
}

/// One thread.
#[derive(Debug, Default, Deserialize)]
pub struct Thread<'a> {
    /// Its stack trace.
    #[serde(borrow, default)]
    pub stacktrace: Option<Stacktrace<'a>>,
    /// The thread that crashed.
    #[serde(default)]
    pub crashed: Option<bool>,
    /// The thread that captured the event.
    #[serde(default)]
    pub current: Option<bool>,
}

/// Tags, normalized to `(key, value)` strings.
#[derive(Debug, Default)]
pub struct Tags(pub Vec<(String, String)>);

fn tag_value(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tags;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("tags as an object of strings or a list of [key, value] pairs")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tags, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    match v {
                        serde_json::Value::Null => {}
                        v => match tag_value(v) {
                            Some(v) => out.push((k, v)),
                            None => {
                                return Err(de::Error::custom(format!(
                                    "tag `{k}` must be a string, number or boolean"
                                )));
                            }
                        },
                    }
                }
                Ok(Tags(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tags, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = seq.next_element::<(String, serde_json::Value)>()? {
                    match tag_value(v) {
                        Some(v) => out.push((k, v)),
                        None => {
                            return Err(de::Error::custom(format!(
                                "tag `{k}` must be a string, number or boolean"
                            )));
                        }
                    }
                }
                Ok(Tags(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses an event id: 32 hex digits, or a UUID with dashes. Returns it lowercase, no dashes.
pub fn parse_event_id(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    let dashes = s.len() - hex.len();
    if hex.len() == 32 && (dashes == 0 || dashes == 4) && hex.bytes().all(|c| c.is_ascii_hexdigit())
    {
        Some(hex.to_ascii_lowercase())
    } else {
        None
    }
}

/// Nesting depth the collector accepts anywhere in an event; serde_json's own limit for
/// reading a document back is 128, so stored events always stay readable.
pub const MAX_DEPTH: usize = 64;

/// Returns the deepest array/object nesting in a JSON text (strings are skipped with
/// `memchr`, which is where most of an event's bytes are).
pub fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', bytes.get(i..).unwrap_or(&[])) {
                        Some(p) if bytes[i + p] == b'\\' => i += p + 2,
                        Some(p) => {
                            i += p + 1;
                            break;
                        }
                        None => return max,
                    }
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_exception_shapes_and_tag_shapes() {
        let a: Event<'_> = serde_json::from_str(
            r#"{"exception":{"values":[{"type":"KeyError","value":"'x'"}]},"tags":{"a":"1","b":2,"c":null}}"#,
        )
        .unwrap();
        assert_eq!(
            a.exception.unwrap().values[0].ty.as_deref(),
            Some("KeyError")
        );
        assert_eq!(
            a.tags.unwrap().0,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        let b: Event<'_> =
            serde_json::from_str(r#"{"exception":[{"type":"E"}],"tags":[["k","v"]]}"#).unwrap();
        assert_eq!(b.exception.unwrap().values.len(), 1);
        assert_eq!(b.tags.unwrap().0, vec![("k".into(), "v".into())]);
    }

    #[test]
    fn rejects_wrong_types() {
        for bad in [
            r#"{"exception":"boom"}"#,
            r#"{"exception":{"values":[{"type":1}]}}"#,
            r#"{"level":5}"#,
            r#"{"fingerprint":"x"}"#,
            r#"{"tags":{"a":[1]}}"#,
            r#"{"exception":{"values":[{"stacktrace":{"frames":[{"lineno":"x"}]}}]}}"#,
        ] {
            assert!(serde_json::from_str::<Event<'_>>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instruction_addresses_of_any_shape() {
        let addrs: Vec<Option<u64>> = [
            r#"{"instruction_addr":"0x55d1c0a0"}"#,
            r#"{"instruction_addr":"0X1F"}"#,
            r#"{"instruction_addr":1234}"#,
            r#"{"instruction_addr":"1234"}"#,
            r#"{"instruction_addr":"zz"}"#,
            r#"{"instruction_addr":-1}"#,
            r#"{"instruction_addr":[1,{"a":2}]}"#,
            r#"{"instruction_addr":{"x":[]}}"#,
            r#"{"instruction_addr":null}"#,
            r#"{}"#,
        ]
        .iter()
        .map(|j| {
            serde_json::from_str::<Frame<'_>>(j)
                .unwrap()
                .instruction_addr
        })
        .collect();
        assert_eq!(
            addrs,
            [
                Some(0x55d1c0a0),
                Some(0x1f),
                Some(1234),
                Some(1234),
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
    }

    #[test]
    fn event_ids_and_depth() {
        assert_eq!(
            parse_event_id("FC6D8C0C-43FC-4630-AD85-8E1C8A5F6E3B").as_deref(),
            Some("fc6d8c0c43fc4630ad858e1c8a5f6e3b")
        );
        assert_eq!(parse_event_id("xyz"), None);
        assert_eq!(parse_event_id("fc6d8c0c43fc4630ad858e1c8a5f6e3"), None);
        assert_eq!(json_depth(br#"{"a":[{"b":"[[[["}]}"#), 3);
        assert_eq!(json_depth(br#"{"a":"x\\\"[[","b":[[1]]}"#), 3);
        assert_eq!(json_depth(br#"{"a":"unterminated [[["#), 1);
        assert_eq!(json_depth(b"[\"\\"), 1);
    }
}
