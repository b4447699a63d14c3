//! The error sink: [`capture_error`] and [`capture_message`].
//!
//! On the caller's thread only what cannot wait is done: the storm check, the error
//! chain as strings (the error is borrowed), the unresolved backtrace and the domain
//! snapshot. The rest happens on the agent's thread.

use std::any::type_name;
use std::error::Error;
use std::io;
use std::panic::Location;

use crate::assemble::Payload;
pub(crate) use crate::assemble::{IoInfo, Link};
use crate::client;
use crate::event::{EventId, Level};
use crate::storm::StormKey;

/// At most this many links of a `source()` chain are recorded.
const MAX_CHAIN: usize = 32;

mod sealed {
    pub trait Sealed {}
    impl<T: std::error::Error + 'static> Sealed for T {}
    impl Sealed for dyn std::error::Error + 'static {}
    impl Sealed for dyn std::error::Error + Send + 'static {}
    impl Sealed for dyn std::error::Error + Send + Sync + 'static {}
}

/// Anything [`capture_error`] takes: every `E: std::error::Error + 'static`, and
/// `dyn Error` (so `capture_error(&*boxed)` works for a `Box<dyn Error + Send + Sync>`).
/// Sealed; implemented by errscope only.
pub trait AsDynError: sealed::Sealed {
    /// The error as a trait object.
    fn as_dyn_error(&self) -> &(dyn Error + 'static);
}

impl<T: Error + 'static> AsDynError for T {
    fn as_dyn_error(&self) -> &(dyn Error + 'static) {
        self
    }
}

impl AsDynError for dyn Error + 'static {
    fn as_dyn_error(&self) -> &(dyn Error + 'static) {
        self
    }
}

impl AsDynError for dyn Error + Send + 'static {
    fn as_dyn_error(&self) -> &(dyn Error + 'static) {
        self
    }
}

impl AsDynError for dyn Error + Send + Sync + 'static {
    fn as_dyn_error(&self) -> &(dyn Error + 'static) {
        self
    }
}

/// Records an operational error with its whole `source()` chain, the stack of the caller
/// and the current domain. Returns the event's id, or the id of the stored event it was
/// counted against during an error storm, or [`EventId::nil`] when errscope is not
/// initialized or the event was sampled out or dropped (drops are counted in
/// [`stats`](crate::stats) and in the store).
///
/// Costs the caller a few microseconds; symbols, scrubbing and SQLite happen on the
/// agent's thread.
///
/// ```
/// let err = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
/// let id = errscope::capture_error(&err);
/// assert!(id.is_nil()); // not initialized in this example
/// ```
#[track_caller]
pub fn capture_error<E: ?Sized + AsDynError>(err: &E) -> EventId {
    let location = Location::caller();
    capture_dyn_error(err.as_dyn_error(), type_name::<E>(), location)
}

/// Records a message at the given level, with the caller's stack and the current domain.
#[track_caller]
pub fn capture_message(message: &str, level: Level) -> EventId {
    capture_message_at(message, level, Location::caller())
}

fn capture_dyn_error(
    err: &(dyn Error + 'static),
    ty: &'static str,
    location: &'static Location<'static>,
) -> EventId {
    client::with_client(|client| {
        let key = StormKey {
            ty,
            debug_name: debug_name_hash(err),
            location,
            io_kind: first_io_kind(err),
        };
        client.capture(key, Level::Error, || Payload::Error {
            chain: walk_chain(err, ty),
            location,
        })
    })
    .unwrap_or_else(EventId::nil)
}

/// Errors captured at one call site may be of many types (as `dyn Error`) or variants:
/// tell them apart by the name their `Debug` output starts with. Only that name is
/// formatted; a panicking `Debug` counts as zero.
fn debug_name_hash(err: &(dyn Error + 'static)) -> u64 {
    use std::hash::BuildHasher as _;
    // An `io::Error`'s `Debug` names its representation (`Os`, `Custom`), not anything the
    // I/O kind in the key does not already say, and it calls `strerror` to get there.
    if err.is::<std::io::Error>() {
        return 0;
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Fixed keys: the same type gives the same hash on every thread.
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(type_from_debug(err))
    }))
    .unwrap_or(0)
}

fn capture_message_at(
    message: &str,
    level: Level,
    location: &'static Location<'static>,
) -> EventId {
    client::with_client(|client| {
        let key = StormKey {
            ty: "message",
            debug_name: 0,
            location,
            io_kind: None,
        };
        client.capture(key, level, || Payload::Message {
            text: truncate(message.to_owned()),
            location,
        })
    })
    .unwrap_or_else(EventId::nil)
}

/// The I/O error kind of the first `std::io::Error` in the chain (no formatting: cheap).
pub(crate) fn first_io_kind(err: &(dyn Error + 'static)) -> Option<io::ErrorKind> {
    let mut cur = Some(err);
    for _ in 0..MAX_CHAIN {
        let e = cur?;
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        cur = e.source();
    }
    None
}

/// The error and its sources, outermost first (the order of `source()`). A panicking
/// `Display`, `Debug` or `source()` of the host's error ends the chain with a note
/// instead of unwinding out of `capture_error`.
pub(crate) fn walk_chain(err: &(dyn Error + 'static), top_type: &str) -> Vec<Link> {
    let mut links = Vec::new();
    let walked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        walk_chain_into(err, top_type, &mut links);
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

fn walk_chain_into(err: &(dyn Error + 'static), top_type: &str, links: &mut Vec<Link>) {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if links.len() >= MAX_CHAIN {
            break;
        }
        let io = e.downcast_ref::<io::Error>().map(|io| IoInfo {
            kind: io.kind(),
            raw_os_error: io.raw_os_error(),
        });
        let ty = if io.is_some() {
            "std::io::Error".to_owned()
        } else if links.is_empty() && !top_type.starts_with("dyn ") {
            top_type.to_owned()
        } else {
            type_from_debug(e)
        };
        links.push(Link {
            ty,
            value: truncate(e.to_string()),
            io,
        });
        cur = e.source();
    }
}

/// Messages longer than this many bytes are cut (Sentry servers cut them too, and one
/// event must stay well under the collector's 1 MiB per event).
pub(crate) const MAX_MESSAGE: usize = 8 * 1024;

/// Cuts a message to [`MAX_MESSAGE`] bytes at a character boundary, marking the cut.
pub(crate) fn truncate(mut s: String) -> String {
    truncate_in_place(&mut s);
    s
}

/// [`truncate`] on a borrowed buffer.
pub(crate) fn truncate_in_place(s: &mut String) {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

/// For a source behind `&dyn Error` the concrete type is not available; its `Debug`
/// output usually starts with the type name (`ParseIntError { kind: .. }`).
/// Only the start of the `Debug` output is formatted: formatting stops at the first
/// character that cannot be part of a type name (the writer refuses it).
pub(crate) fn type_from_debug(e: &dyn Error) -> String {
    struct TypeName(String);

    impl std::fmt::Write for TypeName {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for c in s.chars() {
                if (c.is_alphanumeric() || c == '_' || c == ':') && self.0.len() < 128 {
                    self.0.push(c);
                } else {
                    return Err(std::fmt::Error);
                }
            }
            Ok(())
        }
    }

    let mut name = TypeName(String::new());
    let _ = std::fmt::write(&mut name, format_args!("{e:?}"));
    let name = name.0;
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        "Error".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("ldap bind failed")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn walks_the_chain_and_reads_io_details() {
        let err = Outer(io::Error::from_raw_os_error(104));
        let links = walk_chain(&err, type_name::<Outer>());
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].ty, "errscope::capture::tests::Outer");
        assert_eq!(links[0].value, "ldap bind failed");
        assert_eq!(links[1].ty, "std::io::Error");
        let io = links[1].io.expect("io info");
        assert_eq!(io.kind, io::ErrorKind::ConnectionReset);
        assert_eq!(io.raw_os_error, Some(104));
        assert_eq!(first_io_kind(&err), Some(io::ErrorKind::ConnectionReset));
    }

    #[derive(Debug)]
    struct Rude;

    impl std::fmt::Display for Rude {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            panic!("Display of Rude panicked")
        }
    }

    impl Error for Rude {}

    #[derive(Debug)]
    enum Shop {
        Db(#[allow(dead_code)] io::Error),
        Parse(#[allow(dead_code)] std::num::ParseIntError),
    }

    impl std::fmt::Display for Shop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("shop error")
        }
    }

    impl Error for Shop {}

    #[test]
    fn debug_names_tell_variants_and_dyn_types_apart() {
        let db = Shop::Db(io::Error::other("x"));
        let parse = Shop::Parse("x".parse::<u8>().expect_err("nan"));
        assert_eq!(type_from_debug(&db), "Db");
        assert_eq!(type_from_debug(&parse), "Parse");
        let long = Shop::Db(io::Error::other("y".repeat(10_000)));
        assert_eq!(
            type_from_debug(&long),
            "Db",
            "formatting stops after the name"
        );
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let cut = truncate(long);
        assert!(cut.len() <= MAX_MESSAGE + "…".len());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short".to_owned()), "short");
    }

    #[test]
    fn a_panicking_display_does_not_escape() {
        let links = walk_chain(&Rude, type_name::<Rude>());
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].ty, "errscope::CaptureFailed");
    }

    #[test]
    fn dyn_errors_get_a_type_from_debug() {
        let parse = "x".parse::<u32>().expect_err("not a number");
        let boxed: Box<dyn Error + Send + Sync> = Box::new(parse);
        let links = walk_chain(
            boxed.as_ref().as_dyn_error(),
            type_name::<dyn Error + Send + Sync>(),
        );
        assert_eq!(links[0].ty, "ParseIntError");
        let plain: Box<dyn Error> = "plain message".into();
        let links = walk_chain(plain.as_ref(), type_name::<dyn Error>());
        assert_eq!(links[0].ty, "Error");
        assert_eq!(links[0].value, "plain message");
    }
}
