//! Grouping: which issue an event belongs to, and the class it is filed under.
//!
//! # Class
//!
//! The class is the error's type as a developer names it: the exception type of the
//! *root* of the chain (Sentry orders `exception.values` root cause first) that carries a
//! type, e.g. `std::io::Error`, `reqwest::Error`, `panic`, `TypeError`, `KeyError`.
//! An `std::io::Error` gets its kind appended, `std::io::Error: ConnectionReset`, taken
//! from `mechanism.data.io_kind` (the errscope agent sets it) or, failing that, from a
//! value that starts with an `std::io::ErrorKind` name, or from the Linux errno of an
//! `(os error N)` message. The `sentry` crate's io errors (type `Os`, or
//! `std::io::error::Error`) are filed as `std::io::Error` too. An event without an
//! exception is of class `message`.
//!
//! The kind is `programmer` when any exception of the chain has
//! `mechanism.handled == false` or the class is `panic`, else `operational`.
//!
//! # Fingerprint (the issue)
//!
//! A list of components is hashed (128-bit FNV-1a, 32 hex digits, stable across
//! versions and platforms):
//!
//! 1. An explicit `fingerprint` wins; an entry `{{ default }}` is replaced by the default
//!    components below.
//! 2. If any stack frames are present: for each exception of the chain its type (with the
//!    io kind), then the frames of its stack trace, each as `module` (or, without one,
//!    `filename`) + `function`. Line numbers and addresses are never used, file names only
//!    for frames without a module; Rust symbol hashes (`::h0123…`)
//!    are stripped; runs of identical frames (recursion) are collapsed to one. When the
//!    trace has in-app frames only those count; frames of `std`, `core`, `alloc`,
//!    `tokio`, `hyper` and `node_modules` never count unless nothing else is left.
//!    A message event with a stack trace uses its normalized message plus the frames.
//! 3. Else, without frames: each exception's type plus its normalized value.
//! 4. Else the normalized message (the template when the SDK sends one).
//!
//! So two call sites raising the same message are two issues, and one call site raising
//! messages that differ only in ids is one issue.
//!
//! # Normalization
//!
//! [`normalize()`] replaces the variable parts of a message with placeholders: quoted
//! values (`'<str>'`), UUIDs (`<uuid>`), emails (`<email>`), IPv4/IPv6 addresses with
//! their port (`<ip>`), dates and times (`<timestamp>`), hex numbers and hex-looking
//! words of 8+ characters (`<hex>`), the numeric path segments and query values of URLs,
//! and every other run of digits (`<num>`).

mod normalize;

pub use normalize::normalize;

use crate::ingest::event::{Event, Exception, Frame, Stacktrace};

/// Whether an error is a bug (`programmer`) or the world failing (`operational`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Panics and unhandled exceptions.
    Programmer,
    /// Everything else.
    Operational,
}

impl Kind {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Programmer => "programmer",
            Kind::Operational => "operational",
        }
    }
}

/// What grouping computes for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    /// The issue key: 32 hex digits.
    pub fingerprint: String,
    /// The class, e.g. `std::io::Error: ConnectionReset`.
    pub class: String,
    /// Programmer or operational.
    pub kind: Kind,
    /// A one-line title for the issue.
    pub title: String,
    /// The top in-app frame, `module::function`.
    pub culprit: String,
    /// The event's message line (for event lists).
    pub message: String,
}

const TITLE_MAX: usize = 200;

/// `std::io::ErrorKind` names, for reading the kind out of an io error's message.
const IO_KINDS: &[&str] = &[
    "NotFound",
    "PermissionDenied",
    "ConnectionRefused",
    "ConnectionReset",
    "HostUnreachable",
    "NetworkUnreachable",
    "ConnectionAborted",
    "NotConnected",
    "AddrInUse",
    "AddrNotAvailable",
    "NetworkDown",
    "BrokenPipe",
    "AlreadyExists",
    "WouldBlock",
    "NotADirectory",
    "IsADirectory",
    "DirectoryNotEmpty",
    "ReadOnlyFilesystem",
    "StaleNetworkFileHandle",
    "InvalidInput",
    "InvalidData",
    "TimedOut",
    "WriteZero",
    "StorageFull",
    "NotSeekable",
    "QuotaExceeded",
    "FileTooLarge",
    "ResourceBusy",
    "ExecutableFileBusy",
    "Deadlock",
    "CrossesDevices",
    "TooManyLinks",
    "InvalidFilename",
    "ArgumentListTooLong",
    "Interrupted",
    "Unsupported",
    "UnexpectedEof",
    "OutOfMemory",
    "InProgress",
    "Other",
    "Uncategorized",
];

/// Computes class, fingerprint, title and culprit of an event.
pub fn group(ev: &Event<'_>) -> Grouping {
    let excs: &[Exception<'_>] = ev.exception.as_ref().map(|e| &e.values[..]).unwrap_or(&[]);
    let message = ev
        .logentry
        .as_ref()
        .and_then(|m| m.formatted())
        .or_else(|| ev.message.as_ref().and_then(|m| m.formatted()))
        .unwrap_or("");
    let template = ev
        .logentry
        .as_ref()
        .and_then(|m| m.template())
        .or_else(|| ev.message.as_ref().and_then(|m| m.template()))
        .unwrap_or("");

    let class_exc = excs
        .iter()
        .find(|e| e.ty.as_deref().is_some_and(|t| !t.is_empty()));
    let class = match class_exc {
        Some(e) => type_with_kind(e, excs),
        None if !excs.is_empty() => "Error".to_owned(),
        None => "message".to_owned(),
    };
    let unhandled = excs
        .iter()
        .any(|e| e.mechanism.as_ref().and_then(|m| m.handled) == Some(false));
    let kind = if unhandled || class == "panic" {
        Kind::Programmer
    } else {
        Kind::Operational
    };

    // The exception that was raised last, the one the title describes.
    let top = excs
        .iter()
        .rev()
        .find(|e| e.ty.is_some() || e.value.is_some());
    let exc_line = top.map(|e| {
        let ty = io_kind(e, excs)
            .map(str::to_owned)
            .unwrap_or_else(|| e.ty.as_deref().unwrap_or("").to_owned());
        let value = first_line(e.value.as_deref().unwrap_or(""));
        match (ty.is_empty(), value.is_empty()) {
            (false, false) => format!("{ty}: {value}"),
            (false, true) => ty,
            (true, _) => value.to_owned(),
        }
    });
    let title = exc_line
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| Some(first_line(message).to_owned()).filter(|m| !m.is_empty()))
        .unwrap_or_else(|| "<unlabeled event>".to_owned());
    let title = truncate(&title, TITLE_MAX);

    let culprit_trace = top
        .and_then(|e| e.stacktrace.as_ref())
        .filter(|st| has_frames(st))
        .or_else(|| {
            excs.iter()
                .rev()
                .filter_map(|e| e.stacktrace.as_ref())
                .find(|st| has_frames(st))
        })
        .or_else(|| event_trace(ev));
    let culprit = culprit_trace
        .and_then(|st| culprit_of(st, ev.platform.as_deref().unwrap_or("")))
        .or_else(|| ev.transaction.as_deref().map(str::to_owned))
        .unwrap_or_default();

    let default = default_components(ev, excs, template);
    let components: Vec<String> = match &ev.fingerprint {
        Some(fp) if !fp.is_empty() => {
            let mut out = Vec::new();
            for part in fp {
                let p = part.trim();
                if p == "{{ default }}" || p == "{{default}}" {
                    out.extend(default.iter().cloned());
                } else {
                    out.push(format!("fp:{p}"));
                }
            }
            out
        }
        _ => default,
    };

    Grouping {
        fingerprint: hash_components(&components),
        class,
        kind,
        title,
        culprit: truncate(&culprit, TITLE_MAX),
        message: truncate(
            first_line(if message.is_empty() {
                exc_line.as_deref().unwrap_or("")
            } else {
                message
            }),
            TITLE_MAX,
        ),
    }
}

fn default_components(ev: &Event<'_>, excs: &[Exception<'_>], template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let any_frames = excs
        .iter()
        .any(|e| e.stacktrace.as_ref().is_some_and(has_frames));
    if !excs.is_empty() && any_frames {
        for e in excs {
            out.push(format!("type:{}", type_with_kind(e, excs)));
            if let Some(st) = &e.stacktrace {
                out.extend(frame_components(st));
            }
        }
    } else if !excs.is_empty() {
        for e in excs {
            out.push(format!(
                "type:{}:{}",
                type_with_kind(e, excs),
                normalize(e.value.as_deref().unwrap_or(""))
            ));
        }
    } else {
        out.push(format!("message:{}", normalize(template)));
        if let Some(st) = event_trace(ev) {
            out.extend(frame_components(st));
        }
    }
    out
}

fn event_trace<'e>(ev: &'e Event<'_>) -> Option<&'e Stacktrace<'e>> {
    if let Some(st) = ev.stacktrace.as_ref().filter(|st| has_frames(st)) {
        return Some(st);
    }
    let threads = ev.threads.as_ref()?.values.as_ref()?;
    threads
        .iter()
        .filter(|t| t.crashed == Some(true) || t.current == Some(true))
        .chain(threads.iter())
        .filter_map(|t| t.stacktrace.as_ref())
        .find(|st| has_frames(st))
}

fn has_frames(st: &Stacktrace<'_>) -> bool {
    st.frames.as_ref().is_some_and(|f| !f.is_empty())
}

/// `std::io::Error: Kind` for io errors with a known kind, else the type.
fn type_with_kind(e: &Exception<'_>, chain: &[Exception<'_>]) -> String {
    let ty = if is_io(e) {
        "std::io::Error"
    } else {
        e.ty.as_deref().unwrap_or("")
    };
    match io_kind(e, chain) {
        Some(kind) => format!("{ty}: {kind}"),
        None => ty.to_owned(),
    }
}

fn is_io_error(ty: &str) -> bool {
    ty == "std::io::Error"
        || ty == "io::Error"
        || ty == "std::io::error::Error"
        || ty.ends_with("::io::Error")
}

/// An io error, by its type or, for the `sentry` crate (which names the type after the
/// `Debug` output, `Os { code: 104, .. }`), by type `Os` and an `(os error N)` message.
fn is_io(e: &Exception<'_>) -> bool {
    let ty = e.ty.as_deref().unwrap_or("");
    is_io_error(ty) || (ty == "Os" && os_errno(e.value.as_deref().unwrap_or("")).is_some())
}

/// The errno of an io error's message: `... (os error 104)`.
fn os_errno(value: &str) -> Option<i32> {
    let rest = value.trim_end().strip_suffix(')')?;
    let pos = rest.rfind("(os error ")?;
    rest[pos + "(os error ".len()..].parse().ok()
}

/// `std::io::ErrorKind` of a Linux errno (the collector's fallback when an SDK sends
/// only the message).
fn kind_of_errno(errno: i32) -> Option<&'static str> {
    Some(match errno {
        1 | 13 => "PermissionDenied",
        2 => "NotFound",
        4 => "Interrupted",
        11 => "WouldBlock",
        12 => "OutOfMemory",
        17 => "AlreadyExists",
        20 => "NotADirectory",
        21 => "IsADirectory",
        22 => "InvalidInput",
        28 => "StorageFull",
        30 => "ReadOnlyFilesystem",
        32 => "BrokenPipe",
        39 => "DirectoryNotEmpty",
        98 => "AddrInUse",
        99 => "AddrNotAvailable",
        100 => "NetworkDown",
        101 => "NetworkUnreachable",
        103 => "ConnectionAborted",
        104 => "ConnectionReset",
        107 => "NotConnected",
        110 => "TimedOut",
        111 => "ConnectionRefused",
        113 => "HostUnreachable",
        _ => return None,
    })
}

fn io_kind<'e>(e: &'e Exception<'_>, chain: &'e [Exception<'_>]) -> Option<&'e str> {
    if !is_io(e) {
        return None;
    }
    let from_data = |x: &'e Exception<'_>| {
        x.mechanism
            .as_ref()
            .and_then(|m| m.data.as_ref())
            .and_then(|d| d.io_kind.as_deref())
            .filter(|k| !k.is_empty())
    };
    if let Some(k) = from_data(e) {
        return Some(k);
    }
    let value = e.value.as_deref().unwrap_or("");
    let head = value
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("");
    if let Some(k) = IO_KINDS.iter().find(|k| **k == head) {
        return Some(k);
    }
    if let Some(k) = os_errno(value).and_then(kind_of_errno) {
        return Some(k);
    }
    // The agent may carry the data on the chain's outer exception only.
    let io_count = chain.iter().filter(|x| is_io(x)).count();
    if io_count == 1 {
        return chain.iter().find_map(from_data);
    }
    None
}

const IGNORED_PREFIXES: &[&str] = &[
    "std::",
    "core::",
    "alloc::",
    "tokio::",
    "hyper::",
    "hyper_util::",
    "<std::",
    "<core::",
    "<alloc::",
    "<tokio::",
    "<hyper::",
    "__rust",
    "rust_begin_unwind",
    "rust_panic",
];

fn is_ignored(f: &Frame<'_>) -> bool {
    let function = f.function.as_deref().unwrap_or("");
    let module = f.module.as_deref().unwrap_or("");
    let path = f
        .abs_path
        .as_deref()
        .or(f.filename.as_deref())
        .unwrap_or("");
    let m = |s: &str| IGNORED_PREFIXES.iter().any(|p| s.starts_with(p));
    let top_module = |s: &str| matches!(s, "std" | "core" | "alloc" | "tokio" | "hyper");
    m(function) || m(module) || top_module(module) || path.contains("node_modules/")
}

/// Chooses the frames that identify a call site.
fn significant_frames<'f>(st: &'f Stacktrace<'_>) -> Vec<&'f Frame<'f>> {
    let frames = st.frames.as_deref().unwrap_or(&[]);
    let in_app: Vec<&Frame<'_>> = frames
        .iter()
        .filter(|f| f.in_app == Some(true) && !is_ignored(f))
        .collect();
    if !in_app.is_empty() {
        return in_app;
    }
    let kept: Vec<&Frame<'_>> = frames.iter().filter(|f| !is_ignored(f)).collect();
    if kept.is_empty() {
        frames.iter().collect()
    } else {
        kept
    }
}

/// Strips a Rust legacy symbol hash (`::h0123456789abcdef`).
pub fn strip_symbol_hash(function: &str) -> &str {
    if let Some(pos) = function.rfind("::h") {
        let hash = &function[pos + 3..];
        if hash.len() == 16 && hash.bytes().all(|c| c.is_ascii_hexdigit()) {
            return &function[..pos];
        }
    }
    function
}

fn frame_function(f: &Frame<'_>) -> String {
    let function = strip_symbol_hash(f.function.as_deref().unwrap_or("").trim());
    let looks_like_address =
        function.starts_with("0x") && function[2..].bytes().all(|c| c.is_ascii_hexdigit());
    if function.is_empty() || function == "?" || looks_like_address {
        // No name: the file (never its line) identifies the frame.
        let file = f
            .filename
            .as_deref()
            .or(f.abs_path.as_deref())
            .unwrap_or("");
        return file.rsplit('/').next().unwrap_or("").to_owned();
    }
    function.to_owned()
}

fn frame_components(st: &Stacktrace<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in significant_frames(st) {
        // A frame without a module (an inlined frame of a `line-tables-only` build is just
        // `{closure#0}`) is told apart by its file, so bare names of different functions
        // do not make one issue.
        let place = f.module.as_deref().or(f.filename.as_deref()).unwrap_or("");
        let c = format!("frame:{place}|{}", frame_function(f));
        if out.last() != Some(&c) {
            out.push(c);
        }
    }
    out
}

fn culprit_of(st: &Stacktrace<'_>, platform: &str) -> Option<String> {
    let f = *significant_frames(st).last()?;
    let function = frame_function(f);
    let module = f.module.as_deref().unwrap_or("");
    Some(
        if module.is_empty() || function.contains("::") || function.starts_with(module) {
            function
        } else if matches!(platform, "native" | "rust") || module.contains("::") {
            format!("{module}::{function}")
        } else {
            format!("{module} in {function}")
        },
    )
}

fn hash_components(components: &[String]) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for c in components {
        for &b in c.as_bytes().iter().chain(std::iter::once(&0xffu8)) {
            h ^= b as u128;
            h = h.wrapping_mul(PRIME);
        }
    }
    format!("{h:032x}")
}

fn first_line(s: &str) -> &str {
    s.trim_start().lines().next().unwrap_or("").trim_end()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(json: &str) -> Grouping {
        let e: Event<'_> = serde_json::from_str(json).unwrap();
        group(&e)
    }

    const IO_ERR: &str = r#"{"platform":"native","exception":{"values":[{"type":"std::io::Error","value":"connection reset by peer (os error 104)",
        "mechanism":{"type":"errscope","handled":true,"data":{"io_kind":"ConnectionReset","os_code":104}},
        "stacktrace":{"frames":[
          {"function":"std::rt::lang_start","module":"std::rt","in_app":false},
          {"function":"shop::main::h0123456789abcdef","module":"shop","lineno":10,"in_app":true},
          {"function":"shop::ldap::bind::hfedcba9876543210","module":"shop::ldap","lineno":42,"in_app":true},
          {"function":"tokio::net::TcpStream::read","module":"tokio::net","in_app":false}]}}]}}"#;

    #[test]
    fn io_error_class_title_culprit() {
        let g = ev(IO_ERR);
        assert_eq!(g.class, "std::io::Error: ConnectionReset");
        assert_eq!(g.kind, Kind::Operational);
        assert_eq!(
            g.title,
            "ConnectionReset: connection reset by peer (os error 104)"
        );
        assert_eq!(g.culprit, "shop::ldap::bind");
        // Line numbers and symbol hashes do not matter.
        let moved = IO_ERR
            .replace("\"lineno\":42", "\"lineno\":99")
            .replace("hfedcba9876543210", "h1111111111111111");
        assert_eq!(ev(&moved).fingerprint, g.fingerprint);
        // Another call site is another issue.
        let other = IO_ERR.replace("shop::ldap::bind", "shop::db::connect");
        assert_ne!(ev(&other).fingerprint, g.fingerprint);
        // Another io kind is another class and issue.
        let refused = IO_ERR.replace("ConnectionReset", "ConnectionRefused");
        assert_eq!(ev(&refused).class, "std::io::Error: ConnectionRefused");
        assert_ne!(ev(&refused).fingerprint, g.fingerprint);
    }

    #[test]
    fn grouping_table() {
        // (event A, event B, same issue?, class of A, kind of A)
        let cases: &[(&str, &str, bool, &str, Kind)] = &[
            // Same call site, different ids in the message: one issue.
            (
                r#"{"exception":{"values":[{"type":"KeyError","value":"'u1'"}]}}"#,
                r#"{"exception":{"values":[{"type":"KeyError","value":"'u2'"}]}}"#,
                true,
                "KeyError",
                Kind::Operational,
            ),
            // Same message from two call sites: two issues.
            (
                r#"{"exception":{"values":[{"type":"ValueError","value":"bad","stacktrace":{"frames":[{"function":"a","module":"app.x","in_app":true}]}}]}}"#,
                r#"{"exception":{"values":[{"type":"ValueError","value":"bad","stacktrace":{"frames":[{"function":"b","module":"app.x","in_app":true}]}}]}}"#,
                false,
                "ValueError",
                Kind::Operational,
            ),
            // Bare inlined names (no module) in two files: two issues; one file, other lines: one.
            (
                r#"{"platform":"native","exception":{"values":[{"type":"panic","stacktrace":{"frames":[{"function":"{async_fn#0}","filename":"src/orders.rs","lineno":10,"in_app":true}]}}]}}"#,
                r#"{"platform":"native","exception":{"values":[{"type":"panic","stacktrace":{"frames":[{"function":"{async_fn#0}","filename":"src/profile.rs","lineno":10,"in_app":true}]}}]}}"#,
                false,
                "panic",
                Kind::Programmer,
            ),
            (
                r#"{"platform":"native","exception":{"values":[{"type":"panic","stacktrace":{"frames":[{"function":"{async_fn#0}","filename":"src/orders.rs","lineno":10,"in_app":true}]}}]}}"#,
                r#"{"platform":"native","exception":{"values":[{"type":"panic","stacktrace":{"frames":[{"function":"{async_fn#0}","filename":"src/orders.rs","lineno":14,"in_app":true}]}}]}}"#,
                true,
                "panic",
                Kind::Programmer,
            ),
            // Recursion depth does not matter.
            (
                r#"{"exception":{"values":[{"type":"RecursionError","stacktrace":{"frames":[{"function":"f","in_app":true},{"function":"f","in_app":true}]}}]}}"#,
                r#"{"exception":{"values":[{"type":"RecursionError","stacktrace":{"frames":[{"function":"f","in_app":true},{"function":"f","in_app":true},{"function":"f","in_app":true}]}}]}}"#,
                true,
                "RecursionError",
                Kind::Operational,
            ),
            // Library frames do not matter when in-app frames exist.
            (
                r#"{"exception":{"values":[{"type":"TypeError","stacktrace":{"frames":[{"function":"handler","in_app":true},{"function":"lib","abs_path":"/app/node_modules/x/i.js"}]}}],"mechanism":{"handled":false}}}"#,
                r#"{"exception":{"values":[{"type":"TypeError","stacktrace":{"frames":[{"function":"handler","in_app":true},{"function":"lib2","abs_path":"/app/node_modules/y/i.js"}]}}]}}"#,
                true,
                "TypeError",
                Kind::Operational,
            ),
            // Panics are programmer errors.
            (
                r#"{"exception":{"values":[{"type":"panic","value":"index 3 out of range","mechanism":{"type":"panic","handled":false}}]}}"#,
                r#"{"exception":{"values":[{"type":"panic","value":"index 7 out of range","mechanism":{"type":"panic","handled":false}}]}}"#,
                true,
                "panic",
                Kind::Programmer,
            ),
            // Unhandled exceptions are programmer errors; the class is the root cause's type.
            (
                r#"{"exception":{"values":[{"type":"KeyError","value":"'k'"},{"type":"RuntimeError","value":"wrap","mechanism":{"handled":false}}]}}"#,
                r#"{"exception":{"values":[{"type":"RuntimeError","value":"wrap"}]}}"#,
                false,
                "KeyError",
                Kind::Programmer,
            ),
            // Explicit fingerprints win; {{ default }} extends the default.
            (
                r#"{"fingerprint":["db"],"exception":{"values":[{"type":"A"}]}}"#,
                r#"{"fingerprint":["db"],"exception":{"values":[{"type":"B"}]}}"#,
                true,
                "A",
                Kind::Operational,
            ),
            (
                r#"{"fingerprint":["{{ default }}","x"],"exception":{"values":[{"type":"A"}]}}"#,
                r#"{"fingerprint":["{{ default }}","y"],"exception":{"values":[{"type":"A"}]}}"#,
                false,
                "A",
                Kind::Operational,
            ),
            // Messages: normalized; the template is preferred.
            (
                r#"{"message":"payment 123 declined for bob@example.com"}"#,
                r#"{"message":{"formatted":"payment 456 declined for eve@example.org"}}"#,
                true,
                "message",
                Kind::Operational,
            ),
            (
                r#"{"logentry":{"message":"user %s missing","formatted":"user alice missing"}}"#,
                r#"{"logentry":{"message":"user %s missing","formatted":"user bob missing"}}"#,
                true,
                "message",
                Kind::Operational,
            ),
            // Same message from two call sites (message events with a stack trace).
            (
                r#"{"message":"retrying","stacktrace":{"frames":[{"function":"a","in_app":true}]}}"#,
                r#"{"message":"retrying","stacktrace":{"frames":[{"function":"b","in_app":true}]}}"#,
                false,
                "message",
                Kind::Operational,
            ),
            // The `sentry` crate names an OS io error `Os`; the errno gives the kind.
            (
                r#"{"exception":{"values":[{"type":"Os","value":"Connection reset by peer (os error 104)"}]}}"#,
                r#"{"exception":{"values":[{"type":"std::io::Error","value":"ConnectionReset: x","mechanism":{"data":{"io_kind":"ConnectionReset"}}}]}}"#,
                false,
                "std::io::Error: ConnectionReset",
                Kind::Operational,
            ),
            (
                r#"{"exception":{"values":[{"type":"std::io::error::Error","value":"Connection refused (os error 111)"}]}}"#,
                r#"{"exception":{"values":[{"type":"Os","value":"no errno here"}]}}"#,
                false,
                "std::io::Error: ConnectionRefused",
                Kind::Operational,
            ),
            // io kind from the value when the mechanism data is missing.
            (
                r#"{"exception":{"values":[{"type":"std::io::Error","value":"NotFound: no such file"}]}}"#,
                r#"{"exception":{"values":[{"type":"std::io::Error","value":"PermissionDenied: nope"}]}}"#,
                false,
                "std::io::Error: NotFound",
                Kind::Operational,
            ),
        ];
        for (i, (a, b, same, class, kind)) in cases.iter().enumerate() {
            let (ga, gb) = (ev(a), ev(b));
            assert_eq!(
                ga.fingerprint == gb.fingerprint,
                *same,
                "case {i}: {a} vs {b}"
            );
            assert_eq!(ga.class, *class, "case {i}");
            assert_eq!(ga.kind, *kind, "case {i}");
        }
    }

    #[test]
    fn titles() {
        assert_eq!(ev(r#"{"message":"hello\nworld"}"#).title, "hello");
        assert_eq!(ev(r#"{}"#).title, "<unlabeled event>");
        assert_eq!(
            ev(r#"{"exception":{"values":[{"type":"E","value":"v"}]}}"#).title,
            "E: v"
        );
        let long = format!(r#"{{"message":"{}"}}"#, "é".repeat(300));
        assert!(ev(&long).title.len() <= TITLE_MAX + 3);
        let py = ev(
            r#"{"platform":"python","exception":{"values":[{"type":"E","stacktrace":{"frames":[{"function":"view","module":"shop.views","in_app":true}]}}]}}"#,
        );
        assert_eq!(py.culprit, "shop.views in view");
    }

    #[test]
    fn fingerprints_are_stable() {
        // A fixed value: changing the algorithm silently would split every existing issue.
        assert_eq!(
            ev(r#"{"message":"x 1"}"#).fingerprint,
            hash_components(&["message:x <num>".to_owned()])
        );
        assert_eq!(hash_components(&[]), "6c62272e07bb014262b821756295c58d");
    }
}
