//! [`capture_anyhow`]: an `anyhow::Error` with its chain of contexts.
//!
//! `err.chain()` becomes the exception chain (the root cause first in the stored event, as
//! for [`capture_error`](crate::capture_error)). Links are named by downcasting to the
//! error types services meet most (`std::io::Error` with its kind and OS code,
//! `serde_json::Error`, std's parse and conversion errors, tokio's `JoinError`), else by
//! the start of their `Debug` output, so anyhow errors with different root causes get
//! different classes instead of all landing in one `anyhow::Error` issue. Context layers
//! (`.context("loading config")`) are named `anyhow::Context`.
//!
//! anyhow's own backtrace (captured where the error was created, when
//! `RUST_LIB_BACKTRACE=1` or `RUST_BACKTRACE=1`) is used instead of the stack of the
//! `capture_anyhow` call when it has one. std's `Backtrace` exposes only its text, so that
//! text is parsed into frames (function, file, line, column; no instruction addresses)
//! on the calling thread; formatting it resolves symbols there, which the agent's own
//! captures leave to its thread. `extra.backtrace` says which stack the event carries.

use std::backtrace::BacktraceStatus;
use std::error::Error;
use std::io;

use serde_json::json;

use crate::assemble::Custom;
use crate::capture::{IoInfo, Link, truncate, type_from_debug};
use crate::event::{EventId, Frame, Level};
use crate::integration;

/// At most this many links of a chain are recorded.
const MAX_CHAIN: usize = 32;

/// Records an `anyhow::Error` as an operational error: its contexts as the exception
/// chain, the root cause's type as its class, anyhow's backtrace when it captured one.
/// Returns the event's id as [`capture_error`](crate::capture_error) does.
///
/// ```
/// use anyhow::Context as _;
///
/// fn load() -> anyhow::Result<u16> {
///     let port = "eighty".parse::<u16>().context("reading the port")?;
///     Ok(port)
/// }
/// if let Err(err) = load() {
///     // Stored with the class `core::num::error::ParseIntError`.
///     let _id = errscope::capture_anyhow(&err);
/// }
/// ```
#[track_caller]
pub fn capture_anyhow(err: &anyhow::Error) -> EventId {
    let root = err.root_cause();
    let io_kind = root.downcast_ref::<io::Error>().map(io::Error::kind);
    let root_type = known_type(root).map_or_else(|| type_from_debug(root), str::to_owned);
    let fingerprint = integration::stable_hash((&root_type, io_kind.map(|k| format!("{k:?}"))));
    integration::capture("anyhow", fingerprint, Level::Error, || {
        let chain = links(err);
        let backtrace = err.backtrace();
        let (frames, source) = if backtrace.status() == BacktraceStatus::Captured {
            let frames = parse_backtrace(&format!("{backtrace:#}"));
            let source = if frames.is_empty() {
                "capture_anyhow call"
            } else {
                "anyhow (std::backtrace text, parsed; no instruction addresses)"
            };
            (Some(frames).filter(|f| !f.is_empty()), source)
        } else {
            (None, "capture_anyhow call")
        };
        Custom {
            chain,
            mechanism: "anyhow",
            frames,
            extra: [("backtrace".to_owned(), json!(source))].into(),
            ..Custom::default()
        }
    })
}

/// The chain, outermost first (the order of `err.chain()`).
fn links(err: &anyhow::Error) -> Vec<Link> {
    let mut links = Vec::new();
    let walked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let count = err.chain().count();
        for (i, e) in err.chain().take(MAX_CHAIN).enumerate() {
            let io = e.downcast_ref::<io::Error>().map(|io| IoInfo {
                kind: io.kind(),
                raw_os_error: io.raw_os_error(),
            });
            let ty = match known_type(e) {
                Some(ty) => ty.to_owned(),
                None => {
                    // anyhow's context layers and `anyhow!("...")` messages have no type
                    // of their own: their `Debug` names none.
                    match type_from_debug(e) {
                        ty if ty != "Error" => ty,
                        _ if i + 1 < count => "anyhow::Context".to_owned(),
                        _ => "anyhow::Error".to_owned(),
                    }
                }
            };
            links.push(Link {
                ty,
                value: truncate(e.to_string()),
                io,
            });
        }
    }));
    if walked.is_err() {
        links.push(Link {
            ty: "errscope::CaptureFailed".to_owned(),
            value: "formatting this error panicked".to_owned(),
            io: None,
        });
    }
    links
}

/// The full type name of well-known error types, found by downcasting.
fn known_type(e: &(dyn Error + 'static)) -> Option<&'static str> {
    macro_rules! known {
        ($($ty:ty),* $(,)?) => {
            $(if e.is::<$ty>() {
                return Some(std::any::type_name::<$ty>());
            })*
        };
    }
    if e.is::<io::Error>() {
        return Some("std::io::Error");
    }
    known!(
        serde_json::Error,
        std::num::ParseIntError,
        std::num::ParseFloatError,
        std::num::TryFromIntError,
        std::str::ParseBoolError,
        std::char::ParseCharError,
        std::str::Utf8Error,
        std::string::FromUtf8Error,
        std::net::AddrParseError,
        std::env::VarError,
        std::time::SystemTimeError,
        std::fmt::Error,
        std::sync::mpsc::RecvError,
        std::sync::mpsc::RecvTimeoutError,
    );
    #[cfg(feature = "tokio")]
    known!(tokio::task::JoinError);
    None
}

/// Frames of std's `Backtrace` text (`{:#}`), oldest first, without the backtrace
/// machinery and anyhow's own frames at the top.
///
/// The text is `   N: function` lines, each optionally followed by `at file:line:col`.
fn parse_backtrace(text: &str) -> Vec<Frame> {
    let cwd = std::env::current_dir().ok();
    let mut frames: Vec<Frame> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(at) = line.strip_prefix("at ") {
            let Some(frame) = frames.last_mut() else {
                continue;
            };
            if frame.abs_path.is_some() {
                continue;
            }
            let mut parts = at.rsplitn(3, ':');
            let (col, lineno, path) = (parts.next(), parts.next(), parts.next());
            let (path, lineno, colno) = match (path, lineno, col) {
                (Some(p), Some(l), Some(c)) if l.parse::<u32>().is_ok() => {
                    (p, l.parse().ok(), c.parse().ok())
                }
                _ => match at.rsplit_once(':') {
                    Some((p, l)) if l.parse::<u32>().is_ok() => (p, l.parse().ok(), None),
                    _ => (at, None, None),
                },
            };
            frame.filename = Some(crate::trace::short_path(path, cwd.as_deref()));
            frame.abs_path = Some(path.to_owned());
            frame.lineno = lineno;
            frame.colno = colno;
        } else if let Some((index, function)) = line.split_once(": ")
            && index.bytes().all(|b| b.is_ascii_digit())
            && !index.is_empty()
        {
            // `{:#}` prints `0x55f0cc798a9e - m::f::hec28a57e3abfc232`.
            let (addr, function) = match function.split_once(" - ") {
                Some((addr, name)) if addr.trim_start().starts_with("0x") => {
                    (addr.trim().to_owned(), name)
                }
                _ => (String::new(), function),
            };
            let function = strip_disambiguators(crate::trace::strip_hash(function));
            frames.push(Frame {
                module: crate::trace::module_of(&function),
                function: Some(function),
                instruction_addr: addr,
                ..Frame::default()
            });
        }
    }
    // The text is newest first; drop the capture machinery from the top.
    let machinery = |f: &Frame| {
        f.function.as_deref().is_some_and(|n| {
            [
                "std::backtrace",
                "<std::backtrace",
                "anyhow::",
                "<anyhow::",
                "core::",
                "<core::",
                "<T as core::",
            ]
            .iter()
            .any(|p| n.starts_with(p))
                // `<E as anyhow::context::ext::StdError>::ext_context`, `From` impls.
                || (n.starts_with('<') && n.contains(" as anyhow::"))
        })
    };
    let start = frames
        .iter()
        .position(|f| !machinery(f))
        .unwrap_or(frames.len());
    let mut frames = frames.split_off(start);
    frames.reverse();
    frames
}

/// `std[e28293b1aa0f68bd]::x` → `std::x` (v0 symbols' crate disambiguators).
fn strip_disambiguators(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(open) = rest.find('[') {
        let tail = &rest[open + 1..];
        match tail.find(']') {
            Some(close) if close > 0 && tail[..close].bytes().all(|b| b.is_ascii_hexdigit()) => {
                out.push_str(&rest[..open]);
                rest = &tail[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn make_trace() -> std::backtrace::Backtrace {
        std::backtrace::Backtrace::force_capture()
    }

    #[test]
    fn parses_std_backtrace_text() {
        let text = format!("{:#}", make_trace());
        let frames = parse_backtrace(&text);
        let names: Vec<&str> = frames
            .iter()
            .filter_map(|f| f.function.as_deref())
            .collect();
        let ours = frames
            .iter()
            .find(|f| f.function.as_deref() == Some("errscope::anyhow::tests::make_trace"))
            .unwrap_or_else(|| panic!("{names:#?}\n{text}"));
        assert!(
            ours.abs_path
                .as_deref()
                .is_some_and(|p| p.ends_with("src/anyhow.rs"))
        );
        assert!(ours.lineno.is_some_and(|l| l > 0));
        assert!(ours.instruction_addr.starts_with("0x"), "{ours:?}");
        assert_eq!(ours.module.as_deref(), Some("errscope::anyhow::tests"));
        // Oldest first, the capture machinery trimmed from the top.
        assert!(
            names
                .last()
                .is_some_and(|n| n.starts_with("errscope::anyhow::tests::make_trace")),
            "{names:#?}"
        );
        let test = names
            .iter()
            .position(|n| *n == "errscope::anyhow::tests::parses_std_backtrace_text")
            .expect("the test's frame");
        assert!(test < names.len() - 1);
    }

    #[test]
    fn parses_frames_without_location_and_windows_paths() {
        let text = "   0: std::backtrace::Backtrace::create\n   1: shop::load\n             at C:\\shop\\src\\main.rs:10:5\n   2: main\n";
        assert_eq!(
            strip_disambiguators("<std[e28293b1aa0f68bd]::backtrace::Backtrace>::create"),
            "<std::backtrace::Backtrace>::create"
        );
        assert_eq!(strip_disambiguators("a[0]::b[x]"), "a::b[x]");
        let frames = parse_backtrace(text);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].function.as_deref(), Some("main"));
        assert_eq!(frames[0].lineno, None);
        assert_eq!(
            frames[1].abs_path.as_deref(),
            Some("C:\\shop\\src\\main.rs")
        );
        assert_eq!(frames[1].lineno, Some(10));
        assert_eq!(frames[1].colno, Some(5));
    }

    #[test]
    fn root_causes_are_named_by_downcasting() {
        use anyhow::Context as _;
        let parse = "x"
            .parse::<u16>()
            .context("reading the port")
            .expect_err("not a number");
        let links = links(&parse);
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].ty, "anyhow::Context");
        assert_eq!(links[0].value, "reading the port");
        assert_eq!(links[1].ty, "core::num::error::ParseIntError");
        let json = serde_json::from_str::<u8>("[")
            .context("reading the config")
            .expect_err("bad json");
        assert_eq!(links_of_root(&json), "serde_json::error::Error");
        let msg = anyhow::anyhow!("plain message");
        assert_eq!(links_of_root(&msg), "anyhow::Error");
    }

    fn links_of_root(e: &anyhow::Error) -> String {
        links(e).pop().map(|l| l.ty).unwrap_or_default()
    }
}
