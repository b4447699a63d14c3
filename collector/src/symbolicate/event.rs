//! The event side: which frames need symbols (a cheap typed probe over the raw JSON), the
//! images of `debug_meta`, and rewriting the frames of a parsed event.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::lookup::canonical_debug_id;

/// An image of `debug_meta.images` (Sentry's `elf`, `symbolic`, `macho`, `pe` shapes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Canonical debug id.
    pub debug_id: String,
    /// GNU build id, lowercase hex.
    pub code_id: Option<String>,
    /// The image's path on the host.
    pub code_file: Option<String>,
    /// Where it was loaded.
    pub image_addr: u64,
    /// Its size in memory (0: unknown).
    pub image_size: u64,
}

impl Image {
    /// A system library (libc, the loader, the vDSO, Windows' and macOS' own): nobody
    /// uploads its debug file, so it is not reported as missing one.
    pub fn is_system(&self) -> bool {
        let f = self.code_file.as_deref().unwrap_or("");
        f.is_empty()
            || f.starts_with("/lib/")
            || f.starts_with("/lib64/")
            || f.starts_with("/usr/lib/")
            || f.starts_with("/usr/lib64/")
            || f.contains("linux-vdso")
            || f.contains("linux-gate")
            || f.starts_with('[')
            // Windows and macOS system libraries, as minidumps name them.
            || f.to_ascii_lowercase().contains(":\\windows\\")
            || f.starts_with("/System/Library/")
            || f.starts_with("/usr/lib/system/")
    }
}

/// An address: a number or a `0x…` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr(pub u64);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Addr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Addr, E> {
                Ok(Addr(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Addr, E> {
                u64::try_from(v).map(Addr).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Addr, E> {
                if v >= 0.0 && v < u64::MAX as f64 && v.fract() == 0.0 {
                    Ok(Addr(v as u64))
                } else {
                    Err(E::custom("not an address"))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Addr, E> {
                parse_addr(v)
                    .map(Addr)
                    .ok_or_else(|| E::custom("not an address"))
            }
        }
        d.deserialize_any(V)
    }
}

/// `0x1f00`, `1f00`... hex (Sentry sends hex strings), or a decimal number.
pub fn parse_addr(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn addr_of(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => parse_addr(s),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// The images of an event, in order (the main executable first, as SDKs send them).
pub fn images(event: &Value) -> Vec<Image> {
    let Some(list) = event
        .pointer("/debug_meta/images")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|img| {
            let debug_id = img
                .get("debug_id")
                .or_else(|| img.get("id"))
                .and_then(Value::as_str)
                .and_then(canonical_debug_id)?;
            Some(Image {
                debug_id,
                code_id: img
                    .get("code_id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_ascii_lowercase),
                code_file: img
                    .get("code_file")
                    .or_else(|| img.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                image_addr: addr_of(img.get("image_addr"))?,
                image_size: addr_of(img.get("image_size")).unwrap_or(0),
            })
        })
        .collect()
}

/// The image a frame's address belongs to and the address relative to it:
/// `addr_mode: "rel:N"` names image `N`; a frame's own `image_addr` names the image
/// loaded there; else the image whose range holds the address.
pub fn locate(images: &[Image], frame: &Value, addr: u64) -> Option<(usize, u64)> {
    if let Some(mode) = frame.get("addr_mode").and_then(Value::as_str)
        && let Some(n) = mode.strip_prefix("rel:")
    {
        let idx: usize = n.parse().ok()?;
        images.get(idx)?;
        return Some((idx, addr));
    }
    if let Some(base) = addr_of(frame.get("image_addr"))
        && let Some(idx) = images.iter().position(|i| i.image_addr == base)
    {
        return Some((idx, addr.checked_sub(base)?));
    }
    let idx = images.iter().position(|i| {
        addr >= i.image_addr && (i.image_size == 0 || addr - i.image_addr < i.image_size)
    })?;
    // Of images of unknown size, take the nearest base below the address.
    let idx = if images[idx].image_size == 0 {
        images
            .iter()
            .enumerate()
            .filter(|(_, i)| i.image_addr <= addr)
            .max_by_key(|(_, i)| i.image_addr)
            .map(|(n, _)| n)?
    } else {
        idx
    };
    Some((idx, addr - images[idx].image_addr))
}

/// A frame's `instruction_addr`.
pub fn frame_addr(frame: &Value) -> Option<u64> {
    addr_of(frame.get("instruction_addr"))
}

/// Whether a frame still needs symbols: it has an address and no line (a stripped
/// binary's frame, or one named from the symbol table only).
pub fn needs_symbols(frame: &Value) -> bool {
    frame_addr(frame).is_some() && frame.get("lineno").is_none_or(Value::is_null)
}

/// Whether a frame could take source context: a path and a line, and no context yet.
pub fn needs_context(frame: &Value) -> bool {
    frame.get("context_line").is_none_or(Value::is_null)
        && frame.get("lineno").is_some_and(Value::is_u64)
        && frame.get("abs_path").is_some_and(Value::is_string)
}

/// The stack traces of an event: of each exception, the event's own, and each thread's.
pub fn stacktraces_mut(event: &mut Value) -> Vec<&mut Map<String, Value>> {
    let mut out = Vec::new();
    let Value::Object(m) = event else {
        return out;
    };
    for (key, v) in m.iter_mut() {
        let list = match (key.as_str(), v) {
            ("stacktrace", Value::Object(st)) => {
                out.push(st);
                continue;
            }
            ("exception", Value::Array(a)) => a,
            ("exception" | "threads", Value::Object(o)) => match o.get_mut("values") {
                Some(Value::Array(a)) => a,
                _ => continue,
            },
            _ => continue,
        };
        for item in list {
            if let Some(Value::Object(st)) = item.get_mut("stacktrace") {
                out.push(st);
            }
        }
    }
    out
}

/// Which return addresses to step back by one byte before looking them up (Sentry's
/// `instruction_addr_adjustment`). Rust SDKs capture with an unwinder, where every
/// address is a return address, so `all` is the default here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjustment {
    /// Every frame.
    All,
    /// Every frame but the newest (the crashing instruction).
    AllButFirst,
    /// None.
    None,
}

impl Adjustment {
    /// The adjustment a stack trace asks for.
    pub fn of(st: &Map<String, Value>) -> Self {
        match st
            .get("instruction_addr_adjustment")
            .and_then(Value::as_str)
        {
            Some("none") => Adjustment::None,
            Some("all_but_first") | Some("auto") => Adjustment::AllButFirst,
            _ => Adjustment::All,
        }
    }
}

// The probe: the fields of the raw event symbolication looks at, everything else skipped.

#[derive(Deserialize, Default)]
struct Probe<'a> {
    #[serde(borrow, default)]
    debug_meta: Option<ProbeMeta<'a>>,
    #[serde(borrow, default)]
    exception: Option<ProbeExceptions<'a>>,
    #[serde(borrow, default)]
    stacktrace: Option<ProbeStacktrace<'a>>,
    #[serde(borrow, default)]
    threads: Option<ProbeThreads<'a>>,
}

#[derive(Deserialize, Default)]
struct ProbeMeta<'a> {
    #[serde(borrow, default)]
    images: Option<Vec<ProbeImage<'a>>>,
}

#[derive(Deserialize, Default)]
struct ProbeImage<'a> {
    #[serde(borrow, default)]
    debug_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    code_file: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    image_addr: Option<Addr>,
    #[serde(default)]
    image_size: Option<Addr>,
}

#[derive(Deserialize, Default)]
struct ProbeStacktrace<'a> {
    #[serde(borrow, default)]
    frames: Option<Vec<ProbeFrame<'a>>>,
}

#[derive(Deserialize, Default)]
struct ProbeFrame<'a> {
    #[serde(default)]
    instruction_addr: Option<Addr>,
    #[serde(borrow, default)]
    function: Option<Cow<'a, str>>,
    #[serde(default)]
    lineno: Option<IgnoredAny>,
    #[serde(default)]
    abs_path: Option<IgnoredAny>,
    #[serde(default)]
    context_line: Option<IgnoredAny>,
    #[serde(default)]
    addr_mode: Option<IgnoredAny>,
    #[serde(default)]
    image_addr: Option<Addr>,
}

#[derive(Deserialize, Default)]
struct ProbeHolder<'a> {
    #[serde(borrow, default)]
    stacktrace: Option<ProbeStacktrace<'a>>,
}

#[derive(Default)]
struct ProbeExceptions<'a>(Vec<ProbeHolder<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for ProbeExceptions<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ProbeExceptions<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("exceptions")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(ProbeExceptions(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "values" {
                        out = map
                            .next_value::<Option<Vec<ProbeHolder<'a>>>>()?
                            .unwrap_or_default();
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(ProbeExceptions(out))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize, Default)]
struct ProbeThreads<'a> {
    #[serde(borrow, default)]
    values: Option<Vec<ProbeHolder<'a>>>,
}

/// What the probe found in a raw event, per image that holds frames wanting symbols or
/// source context.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The images.
    pub images: Vec<WantedImage>,
}

/// One image of [`Wanted`].
#[derive(Debug, Default, PartialEq, Eq, Clone)]
pub struct WantedImage {
    /// Canonical debug id.
    pub debug_id: String,
    /// A frame wants symbols.
    pub symbols: bool,
    /// A frame wanting symbols has no function name either.
    pub unnamed: bool,
    /// A frame wants source context.
    pub context: bool,
    /// A system library (see [`Image::is_system`]).
    pub system: bool,
}

/// Reads only `debug_meta` and the frames: which images hold frames that want symbols or
/// source context. `None` when the event cannot be probed (the caller then looks at the
/// parsed event instead); an event without `debug_meta` is answered by a substring
/// search, without parsing.
pub fn probe(bytes: &[u8]) -> Option<Wanted> {
    if memchr::memmem::find(bytes, b"\"debug_meta\"").is_none() {
        return Some(Wanted::default());
    }
    let p: Probe<'_> = serde_json::from_slice(bytes).ok()?;
    let images: Vec<(Option<String>, u64, u64, bool)> = p
        .debug_meta
        .and_then(|m| m.images)
        .unwrap_or_default()
        .into_iter()
        .map(|i| {
            let id = i.debug_id.or(i.id).and_then(|s| canonical_debug_id(&s));
            let system = Image {
                debug_id: String::new(),
                code_id: None,
                code_file: i.code_file.or(i.name).map(Cow::into_owned),
                image_addr: 0,
                image_size: 0,
            }
            .is_system();
            (
                id,
                i.image_addr.map_or(u64::MAX, |a| a.0),
                i.image_size.map_or(0, |a| a.0),
                system,
            )
        })
        .collect();
    let mut wanted = Wanted::default();
    if images.is_empty() {
        return Some(wanted);
    }
    let mut traces: Vec<ProbeStacktrace<'_>> = Vec::new();
    traces.extend(p.stacktrace);
    for holder in p
        .exception
        .map(|e| e.0)
        .unwrap_or_default()
        .into_iter()
        .chain(p.threads.and_then(|t| t.values).unwrap_or_default())
    {
        traces.extend(holder.stacktrace);
    }
    for f in traces.iter().flat_map(|t| t.frames.iter().flatten()) {
        let Some(addr) = f.instruction_addr else {
            continue;
        };
        let symbols = f.lineno.is_none();
        let context = !symbols && f.context_line.is_none() && f.abs_path.is_some();
        if !symbols && !context {
            continue;
        }
        // Relative addressing or an explicit base: let the full pass work it out.
        if f.addr_mode.is_some() || f.image_addr.is_some() {
            return None;
        }
        let Some((id, _, _, system)) = images
            .iter()
            .find(|(_, base, size, _)| addr.0 >= *base && (*size == 0 || addr.0 - base < *size))
        else {
            continue;
        };
        let Some(id) = id else { continue };
        let unnamed = symbols
            && f.function
                .as_deref()
                .is_none_or(|s| s.is_empty() || s == "<unknown>");
        match wanted.images.iter_mut().find(|w| w.debug_id == *id) {
            Some(w) => {
                w.symbols |= symbols;
                w.unnamed |= unnamed;
                w.context |= context;
            }
            None => wanted.images.push(WantedImage {
                debug_id: id.clone(),
                symbols,
                unnamed,
                context,
                system: *system,
            }),
        }
    }
    Some(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "c0bcc3f1-9827-fe65-3058-404b2831d9e6";

    fn ev(frames: Value) -> Value {
        json!({
            "debug_meta": {"images": [
                {"type": "elf", "debug_id": ID, "code_id": "F1C3BCC0", "code_file": "/app/shop",
                 "image_addr": "0x1000", "image_size": 4096},
                {"type": "symbolic", "id": "a0bcc3f1-9827-fe65-3058-404b2831d9e6",
                 "name": "/lib/x86_64-linux-gnu/libc.so.6", "image_addr": 16384, "image_size": 100}
            ]},
            "exception": {"values": [{"type": "E", "stacktrace": {"frames": frames}}]}
        })
    }

    #[test]
    fn images_and_addresses() {
        let e = ev(json!([]));
        let imgs = images(&e);
        assert_eq!(imgs.len(), 2);
        assert_eq!(imgs[0].code_id.as_deref(), Some("f1c3bcc0"));
        assert!(!imgs[0].is_system());
        assert!(imgs[1].is_system());
        assert_eq!(locate(&imgs, &json!({}), 0x1010), Some((0, 0x10)));
        assert_eq!(locate(&imgs, &json!({}), 16390), Some((1, 6)));
        assert_eq!(locate(&imgs, &json!({}), 0x3000), None);
        assert_eq!(
            locate(&imgs, &json!({"addr_mode": "rel:1"}), 5),
            Some((1, 5))
        );
        assert_eq!(
            locate(&imgs, &json!({"image_addr": "0x1000"}), 0x1004),
            Some((0, 4))
        );
    }

    #[test]
    fn the_probe_finds_frames_that_want_symbols_or_context() {
        let raw = |v: Value| serde_json::to_vec(&v).unwrap();
        // No debug_meta: no parse at all.
        assert_eq!(
            probe(br#"{"exception":{"values":[]}}"#),
            Some(Wanted::default())
        );
        let found = probe(&raw(ev(json!([
            {"instruction_addr": "0x1010"},
            {"instruction_addr": "0x4005", "function": "start_thread"},
            {"instruction_addr": "0x9999"}
        ]))))
        .unwrap();
        let w = |id: &str, symbols, unnamed, context, system| WantedImage {
            debug_id: id.to_owned(),
            symbols,
            unnamed,
            context,
            system,
        };
        assert_eq!(
            found.images,
            vec![
                w(ID, true, true, false, false),
                w(
                    "a0bcc3f1-9827-fe65-3058-404b2831d9e6",
                    true,
                    false,
                    false,
                    true
                )
            ]
        );
        // Symbolicated with context: nothing wanted.
        let found = probe(&raw(ev(json!([
            {"instruction_addr": "0x1010", "lineno": 3, "abs_path": "/a.rs", "context_line": "x"}
        ]))))
        .unwrap();
        assert!(found.images.is_empty());
        // A line but no context: context wanted.
        let found = probe(&raw(ev(json!([
            {"instruction_addr": "0x1010", "lineno": 3, "abs_path": "/a.rs"}
        ]))))
        .unwrap();
        assert_eq!(found.images, vec![w(ID, false, false, true, false)]);
        // Shapes the probe leaves to the full pass.
        assert_eq!(
            probe(&raw(ev(
                json!([{"instruction_addr": "0x10", "addr_mode": "rel:0"}])
            ))),
            None
        );
    }

    #[test]
    fn stacktraces_of_every_shape() {
        let mut e = json!({
            "stacktrace": {"frames": []},
            "exception": [{"stacktrace": {"frames": []}}],
            "threads": {"values": [{"stacktrace": {"frames": []}}, {"id": 2}]}
        });
        assert_eq!(stacktraces_mut(&mut e).len(), 3);
        assert_eq!(
            Adjustment::of(
                json!({"instruction_addr_adjustment": "none"})
                    .as_object()
                    .unwrap()
            ),
            Adjustment::None
        );
        assert_eq!(Adjustment::of(&Map::new()), Adjustment::All);
    }
}
