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
//!    io kind), then the frames of its stack trace. Line numbers and addresses are never
//!    used; runs of identical frames (recursion) are collapsed to one. When the trace has
//!    in-app frames only those count; frames of `std`, `core`, `alloc`, `tokio`, `hyper`,
//!    `node_modules` and the errscope agent (`errscope::*`) never count unless nothing
//!    else is left (and an agent frame is never the culprit).
//!    - A frame of another platform (Python, JavaScript) is `module` (or, without one,
//!      `filename`) + `function`, a Rust symbol hash (`::h0123…`) stripped.
//!    - A native frame (a native or Rust event, or any frame with an `instruction_addr`)
//!      is its function name alone, normalized ([`normalize_function`]: legacy and v0
//!      manglings, DWARF names, closures, generic arguments, `<T>::f`, shims and hashes
//!      spelled one way), so a build that sends no module, file or line groups with one
//!      that does. Only a bare closure name (`{closure#0}`, an inlined frame of a
//!      `line-tables-only` build) adds its file. Of frames that share an instruction
//!      address (functions inlined into the first of them) only the first counts: a
//!      build without debug info reports that one alone.
//!
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
//! file and device paths (`/dev/nvme0n1p2`, `~/x`, `C:\x` become `<path>`), and every
//! other run of digits (`<num>`).
//!
//! # Titles
//!
//! The title is `Type: value` of the exception raised last (Sentry's choice), the io kind
//! standing in for `std::io::Error`. A context chain (the last exception an
//! `anyhow::Context` layer) is titled by its outermost context and its root cause,
//! `binding the user at the directory: ConnectionReset: connection reset by peer (os
//! error 104)`, so chains with different root causes read differently in the list.

mod normalize;
mod symbol;

pub use normalize::normalize;
pub use symbol::normalize_function;

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
    let exc_line = top.map(|e| exception_line(e, excs, false));
    // A context chain (`anyhow`'s `.context(..)`): what was being done, then why it failed.
    let exc_line = chain_title(top, excs).or(exc_line);
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

    let platform = ev.platform.as_deref().unwrap_or("");
    let default = default_components(ev, excs, template, platform);
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

/// `Type: value` of one exception, the io kind standing for `std::io::Error`; with
/// `short`, the type without its path (`ParseIntError`).
fn exception_line(e: &Exception<'_>, chain: &[Exception<'_>], short: bool) -> String {
    let ty = io_kind(e, chain)
        .map(str::to_owned)
        .unwrap_or_else(|| e.ty.as_deref().unwrap_or("").to_owned());
    let ty = if short {
        let base = ty.split('<').next().unwrap_or("");
        base.rsplit("::").next().unwrap_or("").to_owned()
    } else {
        ty
    };
    let value = first_line(e.value.as_deref().unwrap_or(""));
    match (ty.is_empty(), value.is_empty()) {
        (false, false) => format!("{ty}: {value}"),
        (false, true) => ty,
        (true, _) => value.to_owned(),
    }
}

/// Types that error-chain libraries give their context layers (the errscope agent names
/// anyhow's `anyhow::Context`): the layer says what was being done, not what failed.
const CONTEXT_TYPES: &[&str] = &["anyhow::Context", "eyre::Context"];

/// Types of a root cause that carry no information of their own (`anyhow!("...")`).
const UNTYPED_ROOTS: &[&str] = &["anyhow::Error", "eyre::Report", "Error"];

/// Longest context kept in a chain's title, so the root cause always fits.
const CONTEXT_MAX: usize = 100;

/// The title of a context chain: the outermost context, then the root cause,
/// `binding the user at the directory: ConnectionReset: connection reset by peer (os
/// error 104)`, as anyhow's `{:#}` prints the chain (middle layers left out), with the
/// root cause's io kind or type. Chains whose last exception is not a context layer (a
/// Python `raise ... from ...`) keep Sentry's title, the last exception's.
fn chain_title(top: Option<&Exception<'_>>, chain: &[Exception<'_>]) -> Option<String> {
    let top = top?;
    if !CONTEXT_TYPES.contains(&top.ty.as_deref().unwrap_or("")) {
        return None;
    }
    let root = chain
        .iter()
        .find(|e| e.ty.is_some() || e.value.is_some())
        .filter(|root| !std::ptr::eq(*root, top))?;
    let context = truncate(first_line(top.value.as_deref().unwrap_or("")), CONTEXT_MAX);
    let untyped = UNTYPED_ROOTS.contains(&root.ty.as_deref().unwrap_or(""))
        && !first_line(root.value.as_deref().unwrap_or("")).is_empty();
    let cause = if untyped {
        first_line(root.value.as_deref().unwrap_or("")).to_owned()
    } else {
        exception_line(root, chain, true)
    };
    Some(match (context.is_empty(), cause.is_empty()) {
        (false, false) => format!("{context}: {cause}"),
        (true, false) => cause,
        (_, true) => return None,
    })
}

fn default_components(
    ev: &Event<'_>,
    excs: &[Exception<'_>],
    template: &str,
    platform: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let any_frames = excs
        .iter()
        .any(|e| e.stacktrace.as_ref().is_some_and(has_frames));
    if !excs.is_empty() && any_frames {
        for e in excs {
            out.push(format!("type:{}", type_with_kind(e, excs)));
            if let Some(st) = &e.stacktrace {
                out.extend(frame_components(st, platform));
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
            out.extend(frame_components(st, platform));
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
    "errscope::",
    "<std::",
    "<core::",
    "<alloc::",
    "<tokio::",
    "<hyper::",
    "<errscope::",
    "__rust",
    "rust_begin_unwind",
    "rust_panic",
];

/// Event platforms whose frames are native code (function names from symbols or DWARF).
const NATIVE_PLATFORMS: &[&str] = &["native", "rust", "c", "cpp", "objc", "cocoa", "swift"];

/// One frame as grouping sees it.
struct Seen<'f> {
    frame: &'f Frame<'f>,
    /// For a native frame, the fingerprint's spelling of its function
    /// ([`normalize_function`]).
    native: Option<String>,
}

/// A frame with an instruction address, or of a native event, is native.
fn is_native(f: &Frame<'_>, platform: &str) -> bool {
    f.instruction_addr.is_some() || NATIVE_PLATFORMS.contains(&platform)
}

/// The frames of a trace, oldest first. With `physical_only`, a frame with the same
/// instruction address as the frame before it is left out: that is a function inlined
/// into it (Sentry's convention, which the agent and symbolicators follow), a frame a
/// build without debug info never reports.
fn seen_frames<'f>(st: &'f Stacktrace<'_>, platform: &str, physical_only: bool) -> Vec<Seen<'f>> {
    let frames = st.frames.as_deref().unwrap_or(&[]);
    let mut out = Vec::with_capacity(frames.len());
    let mut prev = None;
    for f in frames {
        // Address 0 is what some SDKs send for "unknown": no frame is inlined into it.
        let addr = f.instruction_addr.filter(|&a| a != 0);
        let inlined = physical_only && addr.is_some() && addr == prev;
        prev = addr;
        if inlined {
            continue;
        }
        let native =
            is_native(f, platform).then(|| normalize_function(f.function.as_deref().unwrap_or("")));
        out.push(Seen { frame: f, native });
    }
    out
}

fn is_ignored(s: &Seen<'_>) -> bool {
    let f = s.frame;
    let function = f.function.as_deref().unwrap_or("");
    let module = f.module.as_deref().unwrap_or("");
    let path = f
        .abs_path
        .as_deref()
        .or(f.filename.as_deref())
        .unwrap_or("");
    let m = |s: &str| IGNORED_PREFIXES.iter().any(|p| s.starts_with(p));
    let top_module =
        |s: &str| matches!(s, "std" | "core" | "alloc" | "tokio" | "hyper" | "errscope");
    m(function)
        || m(module)
        || top_module(module)
        || path.contains("node_modules/")
        || s.native.as_deref().is_some_and(symbol::is_ignored)
}

/// A frame of the errscope agent itself: never a culprit.
fn is_agent(s: &Seen<'_>) -> bool {
    let module = s.frame.module.as_deref().unwrap_or("");
    module == "errscope"
        || module.starts_with("errscope::")
        || s.native
            .as_deref()
            .is_some_and(|n| symbol::crate_of(n) == "errscope")
}

/// Chooses the frames that identify a call site.
fn significant<'a, 'f>(frames: &'a [Seen<'f>]) -> Vec<&'a Seen<'f>> {
    let in_app: Vec<&Seen<'_>> = frames
        .iter()
        .filter(|s| s.frame.in_app == Some(true) && !is_ignored(s))
        .collect();
    if !in_app.is_empty() {
        return in_app;
    }
    let kept: Vec<&Seen<'_>> = frames.iter().filter(|s| !is_ignored(s)).collect();
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

fn looks_like_address(function: &str) -> bool {
    function.starts_with("0x") && function[2..].bytes().all(|c| c.is_ascii_hexdigit())
}

/// The file (never its line) of a frame without a function name.
fn nameless(f: &Frame<'_>) -> String {
    let file = f
        .filename
        .as_deref()
        .or(f.abs_path.as_deref())
        .unwrap_or("");
    file.rsplit('/').next().unwrap_or("").to_owned()
}

fn frame_function(f: &Frame<'_>) -> String {
    let function = strip_symbol_hash(f.function.as_deref().unwrap_or("").trim());
    if function.is_empty() || function == "?" || looks_like_address(function) {
        return nameless(f);
    }
    function.to_owned()
}

fn component(s: &Seen<'_>) -> String {
    let f = s.frame;
    match s.native.as_deref() {
        // Native frames: the normalized name alone, so a build that reports no module,
        // file or line groups with one that does.
        Some(name) if name.is_empty() || name == "?" || looks_like_address(name) => {
            format!("native:|{}", nameless(f))
        }
        // A bare closure name (an inlined frame of a `line-tables-only` build is just
        // `{closure#0}`) is told apart by its file, so closures of different functions
        // do not make one issue.
        Some(name) if symbol::is_bare(name) && name.starts_with('{') => {
            let place = f.module.as_deref().or(f.filename.as_deref()).unwrap_or("");
            format!("native:{place}|{name}")
        }
        Some(name) => format!("native:{name}"),
        None => {
            let place = f.module.as_deref().or(f.filename.as_deref()).unwrap_or("");
            format!("frame:{place}|{}", frame_function(f))
        }
    }
}

fn frame_components(st: &Stacktrace<'_>, platform: &str) -> Vec<String> {
    let frames = seen_frames(st, platform, true);
    let mut out: Vec<String> = Vec::new();
    for s in significant(&frames) {
        let c = component(s);
        if out.last() != Some(&c) {
            out.push(c);
        }
    }
    out
}

fn culprit_of(st: &Stacktrace<'_>, platform: &str) -> Option<String> {
    let frames = seen_frames(st, platform, false);
    let s = *significant(&frames).iter().rev().find(|s| !is_agent(s))?;
    let f = s.frame;
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
            // Device and file paths do not split a message-only issue.
            (
                r#"{"message":"I/O error on /dev/sda1, remounting read-only"}"#,
                r#"{"message":"I/O error on /dev/nvme0n1p2, remounting read-only"}"#,
                true,
                "message",
                Kind::Operational,
            ),
            (
                r#"{"message":"cannot rename /var/lib/x/1234.tmp"}"#,
                r#"{"message":"cannot rename /var/lib/x/report-final.tmp"}"#,
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

    /// One bug (an io error raised in `Cache::get`, called from an async fn that
    /// `block_on` polls from `main`), as each kind of build reports it. The spellings are
    /// what rustc 1.95 and the `backtrace` crate produce for such a program (see
    /// `symbol.rs`); `block_on` and the async fn are inlined into `main`.
    fn build_event(frames: &str) -> String {
        format!(
            r#"{{"platform":"native","exception":{{"values":[{{"type":"std::io::Error","value":"connection reset by peer (os error 104)",
            "mechanism":{{"type":"errscope","handled":true,"data":{{"io_kind":"ConnectionReset"}}}},
            "stacktrace":{{"frames":[{frames}]}}}}]}}}}"#
        )
    }

    const BUILDS: &[(&str, &str)] = &[
        (
            "debug info (DWARF names via linkage names, inlined frames, files and lines)",
            r#"{"function":"std::rt::lang_start_internal","module":"std::rt","filename":"library/std/src/rt.rs","lineno":174,"in_app":false,"instruction_addr":"0x55d0c1a2b3c4"},
               {"function":"shop::main","module":"shop","filename":"src/main.rs","abs_path":"/srv/shop/src/main.rs","lineno":43,"in_app":true,"instruction_addr":"0x55d0c1a0f000"},
               {"function":"shop::block_on","module":"shop","filename":"src/main.rs","lineno":34,"in_app":true,"instruction_addr":"0x55d0c1a0f000"},
               {"function":"shop::fetch::{{closure}}","module":"shop::fetch","filename":"src/main.rs","lineno":30,"in_app":true,"instruction_addr":"0x55d0c1a0f000"},
               {"function":"shop::Cache<K,V>::get","module":"shop::Cache","filename":"src/cache.rs","lineno":9,"in_app":true,"instruction_addr":"0x55d0c1a0e100"},
               {"function":"errscope::capture_error","module":"errscope","filename":"/home/ci/.cargo/registry/src/errscope-0.1.0/src/capture.rs","lineno":88,"in_app":false,"instruction_addr":"0x55d0c1a3a000"}"#,
        ),
        (
            "default release profile (symbol table: legacy names, no file, no line, no inlined frames)",
            r#"{"function":"std::rt::lang_start_internal","module":"std::rt","in_app":false,"instruction_addr":"0x5600aa000100"},
               {"function":"shop::main","module":"shop","in_app":true,"instruction_addr":"0x5600aa000200"},
               {"function":"shop::Cache<K,V>::get","module":"shop::Cache","in_app":true,"instruction_addr":"0x5600aa000300"},
               {"function":"errscope::capture_error","module":"errscope","in_app":true,"instruction_addr":"0x5600aa000400"}"#,
        ),
        (
            "stripped, symbolicated on the server (v0-style DWARF names, inlined frames expanded, no module)",
            r#"{"function":"std::rt::lang_start_internal","filename":"rt.rs","lineno":174,"in_app":false,"instruction_addr":"0x7f0000001000"},
               {"function":"shop::main","filename":"src/main.rs","lineno":43,"in_app":true,"instruction_addr":"0x7f0000002000"},
               {"function":"shop::block_on::<shop::fetch::{closure#0}>","filename":"src/main.rs","lineno":34,"in_app":true,"instruction_addr":"0x7f0000002000"},
               {"function":"shop::fetch::{async_fn#0}","filename":"src/main.rs","lineno":30,"in_app":true,"instruction_addr":"0x7f0000002000"},
               {"function":"<shop::Cache<alloc::string::String, u64>>::get","filename":"src/cache.rs","lineno":9,"in_app":true,"instruction_addr":"0x7f0000003000"},
               {"function":"<errscope::domain::DomainRun<F> as core::future::future::Future>::poll","in_app":false,"instruction_addr":"0x7f0000004000"}"#,
        ),
        (
            "after a toolchain upgrade to v0 mangling, names sent with their crate disambiguators",
            r#"{"function":"std[8f2b1a]::rt::lang_start_internal","in_app":false,"instruction_addr":"0x1000"},
               {"function":"shop[5f3c2ab1d9e0f412]::main","in_app":true,"instruction_addr":"0x2000"},
               {"function":"<shop[5f3c2ab1d9e0f412]::Cache<alloc[11aa22]::string::String, u64>>::get","in_app":true,"instruction_addr":"0x3000"}"#,
        ),
        (
            "still mangled (an SDK that sends raw symbols), legacy with hashes",
            r#"{"function":"_ZN3std2rt19lang_start_internal17h5e1a2b3c4d5e6f70E","in_app":false,"instruction_addr":"0x1000"},
               {"function":"_ZN4shop4main17h00330a5efbb668baE","in_app":true,"instruction_addr":"0x2000"},
               {"function":"_ZN4shop18Cache$LT$K$C$V$GT$3get17hca1b3072ce9c0266E","in_app":true,"instruction_addr":"0x3000"}"#,
        ),
    ];

    #[test]
    fn one_bug_from_every_kind_of_build_is_one_issue() {
        let (first_name, first) = BUILDS[0];
        let want = ev(&build_event(first));
        assert_eq!(
            want.culprit, "shop::Cache<K,V>::get",
            "errscope frames are never the culprit"
        );
        for (name, frames) in &BUILDS[1..] {
            let g = ev(&build_event(frames));
            assert_eq!(g.fingerprint, want.fingerprint, "{name} vs {first_name}");
            assert_eq!(g.class, want.class, "{name}");
            assert!(
                !g.culprit.contains("errscope"),
                "{name}: culprit {}",
                g.culprit
            );
        }
        // Another call site in the same builds is another issue.
        for (name, frames) in BUILDS {
            let other = frames
                .replace("Cache<", "Store<")
                .replace("Cache$LT$", "Store$LT$");
            assert_ne!(
                ev(&build_event(&other)).fingerprint,
                want.fingerprint,
                "{name}"
            );
        }
        // A different caller of the same function is another issue, in every build.
        let from_load = BUILDS[1].1.replace("shop::main", "shop::load");
        assert_ne!(ev(&build_event(&from_load)).fingerprint, want.fingerprint);
    }

    #[test]
    fn frames_at_address_zero_are_not_inlined_frames() {
        let frames = |second: &str| {
            build_event(&format!(
                r#"{{"function":"shop::main","in_app":true,"instruction_addr":"0x0"}},
                   {{"function":"{second}","in_app":true,"instruction_addr":"0x0"}}"#
            ))
        };
        assert_ne!(
            ev(&frames("shop::load")).fingerprint,
            ev(&frames("shop::store")).fingerprint
        );
    }

    #[test]
    fn agent_frames_never_count() {
        let with = build_event(
            r#"{"function":"shop::main","in_app":true,"instruction_addr":"0x1"},
               {"function":"errscope::capture::capture_error","module":"errscope::capture","in_app":true,"instruction_addr":"0x2"}"#,
        );
        let without =
            build_event(r#"{"function":"shop::main","in_app":true,"instruction_addr":"0x1"}"#);
        assert_eq!(ev(&with).fingerprint, ev(&without).fingerprint);
        assert_eq!(ev(&with).culprit, "shop::main");
        // Only agent frames: still no agent culprit.
        let only = build_event(
            r#"{"function":"<errscope::domain::TaskPanics<F> as core::future::future::Future>::poll","instruction_addr":"0x2"}"#,
        );
        assert_eq!(ev(&only).culprit, "");
    }

    #[test]
    fn context_chains_are_titled_by_their_root_cause() {
        let chain = |root: &str| {
            format!(
                r#"{{"exception":{{"values":[{root},
                {{"type":"anyhow::Context","value":"binding the user at the directory","mechanism":{{"type":"anyhow","handled":true}}}}]}}}}"#
            )
        };
        let io = |kind: &str, msg: &str| {
            chain(&format!(
                r#"{{"type":"std::io::Error","value":"{msg}","mechanism":{{"type":"anyhow","data":{{"io_kind":"{kind}"}}}}}}"#
            ))
        };
        let titles = [
            ev(&io(
                "ConnectionReset",
                "connection reset by peer (os error 104)",
            ))
            .title,
            ev(&io(
                "ConnectionRefused",
                "connection refused (os error 111)",
            ))
            .title,
            ev(&io("TimedOut", "connection timed out (os error 110)")).title,
        ];
        assert_eq!(
            titles,
            [
                "binding the user at the directory: ConnectionReset: connection reset by peer (os error 104)",
                "binding the user at the directory: ConnectionRefused: connection refused (os error 111)",
                "binding the user at the directory: TimedOut: connection timed out (os error 110)",
            ]
        );
        // Typed roots by their short type; `anyhow!("...")` roots by their message.
        let parse = chain(
            r#"{"type":"core::num::error::ParseIntError","value":"invalid digit found in string"}"#,
        );
        assert_eq!(
            ev(&parse).title,
            "binding the user at the directory: ParseIntError: invalid digit found in string"
        );
        let plain = chain(r#"{"type":"anyhow::Error","value":"directory has no such user"}"#);
        assert_eq!(
            ev(&plain).title,
            "binding the user at the directory: directory has no such user"
        );
        // The root cause survives a long context.
        let long = io("TimedOut", "connection timed out (os error 110)")
            .replace("binding the user at the directory", &"x".repeat(400));
        let t = ev(&long).title;
        assert!(
            t.ends_with("TimedOut: connection timed out (os error 110)"),
            "{t}"
        );
        assert!(t.len() <= TITLE_MAX + 3);
        // A Python chain keeps Sentry's title: the exception raised last.
        let py = r#"{"exception":{"values":[{"type":"KeyError","value":"'k'"},{"type":"RuntimeError","value":"wrap"}]}}"#;
        assert_eq!(ev(py).title, "RuntimeError: wrap");
        // A lone context layer (no root cause sent) keeps its own line.
        let lone = r#"{"exception":{"values":[{"type":"anyhow::Context","value":"loading"}]}}"#;
        assert_eq!(ev(lone).title, "anyhow::Context: loading");
    }

    #[test]
    fn non_native_fingerprints_did_not_change() {
        // Python and JavaScript frames are hashed as before native names were normalized,
        // so their existing issues keep receiving events after an upgrade.
        let py = ev(
            r#"{"platform":"python","exception":{"values":[{"type":"KeyError","value":"'u1'","stacktrace":{"frames":[
              {"function":"lookup","module":"shop.views","filename":"shop/views.py","lineno":3,"in_app":true}]}}]}}"#,
        );
        assert_eq!(
            py.fingerprint,
            hash_components(&[
                "type:KeyError".to_owned(),
                "frame:shop.views|lookup".to_owned()
            ])
        );
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
