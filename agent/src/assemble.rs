//! Event assembly: a [`Record`] taken on the caller's thread becomes a Sentry [`Event`] on
//! the agent's thread (frames from the resolver, the error chain in Sentry's order, the
//! domain's tags, context and breadcrumbs, the `os`, `runtime` and `thread` contexts).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::domain::DomainData;
use crate::event::{
    Errno, Event, EventId, Exception, Level, Mechanism, MechanismMeta, Stacktrace, Values,
};
use crate::shared::Shared;
use crate::trace::{RawTrace, Resolver};

/// One link of an error chain, as captured on the caller's thread.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub(crate) ty: String,
    pub(crate) value: String,
    pub(crate) io: Option<IoInfo>,
}

/// What a `std::io::Error` link adds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IoInfo {
    pub(crate) kind: std::io::ErrorKind,
    pub(crate) raw_os_error: Option<i32>,
}

/// A capture as taken on the caller's thread.
#[derive(Clone)]
pub(crate) struct Record {
    pub(crate) event_id: EventId,
    pub(crate) timestamp: f64,
    pub(crate) level: Level,
    pub(crate) payload: Payload,
    pub(crate) trace: Option<RawTrace>,
    pub(crate) domain: Option<Arc<DomainData>>,
    pub(crate) thread: Option<Arc<str>>,
    /// The storm fingerprint of a capture (none for panics).
    pub(crate) storm_key: Option<crate::storm::StormKey>,
}

#[derive(Clone)]
pub(crate) enum Payload {
    Error {
        chain: Vec<Link>,
        location: &'static std::panic::Location<'static>,
    },
    Message {
        text: String,
        location: &'static std::panic::Location<'static>,
    },
    Panic {
        message: String,
        location: Option<(String, u32, u32)>,
    },
    /// A capture made by an integration (tower, tracing, log, anyhow).
    #[cfg_attr(
        not(any(
            feature = "tower",
            feature = "tracing",
            feature = "log",
            feature = "anyhow"
        )),
        allow(dead_code)
    )]
    Custom(Box<Custom>),
}

/// What an integration captures: an error chain (outermost first, as `walk_chain` gives
/// it) or, with an empty chain, a message; plus extra data and contexts of its own.
#[derive(Clone, Debug, Default)]
pub(crate) struct Custom {
    pub(crate) chain: Vec<Link>,
    pub(crate) message: Option<String>,
    /// The `mechanism.type` of each exception (e.g. `anyhow`, `tracing`).
    pub(crate) mechanism: &'static str,
    /// Where the integration says it happened (`file:line`), as `extra.capture_location`.
    pub(crate) location: Option<String>,
    /// Frames given by the integration (anyhow's own backtrace), oldest first; they replace
    /// the stack of the capture call.
    pub(crate) frames: Option<Vec<crate::event::Frame>>,
    pub(crate) extra: BTreeMap<String, Value>,
    pub(crate) contexts: BTreeMap<String, Value>,
}

/// Turns a capture into a Sentry event.
pub(crate) fn build_event(
    record: Record,
    shared: &Shared,
    resolver: &mut Resolver,
    os: &Value,
) -> Event {
    let options = &shared.options;
    let mut event = Event::new(record.event_id, record.timestamp, record.level);
    event.release.clone_from(&options.release);
    event.environment.clone_from(&options.environment);
    event.server_name.clone_from(&shared.server_name);
    // Without a `before_send` hook nobody looks at typed frames: splice in the JSON the
    // resolver cached per address instead of cloning and serializing them again.
    let stacktrace = record.trace.as_ref().and_then(|t| {
        if options.before_send.is_some() {
            let frames = resolver.frames(t);
            (!frames.is_empty()).then(|| Stacktrace::new(frames))
        } else {
            let raw = resolver.raw_frames(t);
            (!raw.is_empty()).then(|| Stacktrace::from_raw(raw))
        }
    });
    match record.payload {
        Payload::Error { chain, location } => {
            // Sentry's order: the root cause (the innermost `source()`) first, the captured
            // error last. Sentry-compatible servers take the last value as the event's
            // main exception, and it carries the stack where it was captured.
            let mut values: Vec<Exception> = chain.into_iter().rev().map(exception_of).collect();
            if let Some(last) = values.last_mut() {
                last.stacktrace = stacktrace;
            }
            event.exception = Some(Values { values });
            event
                .extra
                .insert("capture_location".to_owned(), json!(location.to_string()));
        }
        Payload::Message { text, location } => {
            event.message = Some(text);
            event
                .extra
                .insert("capture_location".to_owned(), json!(location.to_string()));
            event.threads = stacktrace.map(|st| current_thread(record.thread.as_deref(), st));
        }
        Payload::Panic { message, location } => {
            let mut data = BTreeMap::new();
            if let Some((file, line, column)) = location {
                data.insert("file".to_owned(), json!(file));
                data.insert("line".to_owned(), json!(line));
                data.insert("column".to_owned(), json!(column));
            }
            event.exception = Some(Values {
                values: vec![Exception {
                    ty: "panic".to_owned(),
                    value: message,
                    mechanism: Some(Mechanism {
                        ty: "panic".to_owned(),
                        handled: false,
                        data,
                        meta: None,
                    }),
                    stacktrace,
                }],
            });
        }
        Payload::Custom(custom) => {
            let Custom {
                chain,
                message,
                mechanism,
                location,
                frames,
                extra,
                contexts,
            } = *custom;
            let stacktrace = match frames {
                Some(mut frames) => {
                    let in_app = resolver.in_app();
                    for f in &mut frames {
                        f.in_app = in_app.is_in_app(f.function.as_deref(), f.abs_path.as_deref());
                    }
                    Some(Stacktrace::new(frames)).filter(|st| !st.frames.is_empty())
                }
                None => stacktrace,
            };
            if chain.is_empty() {
                event.message = message;
                event.threads = stacktrace.map(|st| current_thread(record.thread.as_deref(), st));
            } else {
                let mut values: Vec<Exception> = chain
                    .into_iter()
                    .rev()
                    .map(|link| {
                        let mut e = exception_of(link);
                        if let Some(m) = e.mechanism.as_mut() {
                            mechanism.clone_into(&mut m.ty);
                        }
                        e
                    })
                    .collect();
                if let Some(last) = values.last_mut() {
                    last.stacktrace = stacktrace;
                }
                event.exception = Some(Values { values });
                event.message = message;
            }
            if let Some(location) = location {
                event
                    .extra
                    .insert("capture_location".to_owned(), json!(location));
            }
            event.extra.extend(extra);
            event.contexts.extend(contexts);
        }
    }
    event.contexts.insert("os".to_owned(), os.clone());
    // The server's contract (API.md): the crates counted as in-app, and the images the
    // stack's addresses fall in, for frames it symbolicates. An event without frames
    // needs neither, and skips finding the host crate (which loads debug info).
    if has_frames(&event) {
        event
            .contexts
            .insert("errscope".to_owned(), resolver.in_app_context());
        event.debug_meta = resolver.debug_meta(options.before_send.is_some());
    }
    event.contexts.insert(
        "runtime".to_owned(),
        json!({"type": "runtime", "name": "rustc", "version": env!("ERRSCOPE_RUSTC_VERSION")}),
    );
    event.contexts.insert(
        "thread".to_owned(),
        json!({"type": "thread", "name": record.thread.as_deref()}),
    );
    if let Some(domain) = record.domain {
        // The collector's contract (API.md): the scope in `contexts.domain` with `name`,
        // `tags` and `data`, its name also in the tag `domain`. A domain's lazy source
        // (the tower layer's request) makes its part here, on the agent's thread.
        let (name, tags, data) = domain.resolve();
        event.contexts.insert(
            "domain".to_owned(),
            json!({
                "type": "domain",
                "name": name,
                "tags": tags,
                "data": data,
            }),
        );
        event.tags.extend(tags);
        event.tags.insert("domain".to_owned(), name);
        if !domain.breadcrumbs.is_empty() {
            let now = crate::time::Now::read();
            event.breadcrumbs = Some(Values {
                values: domain
                    .breadcrumbs
                    .iter()
                    .map(|crumb| crumb.to_breadcrumb(&now))
                    .collect(),
            });
        }
    }
    event
}

/// The capturing thread with its stack, for events without an exception to carry it.
fn current_thread(name: Option<&str>, stacktrace: Stacktrace) -> Values<crate::event::Thread> {
    Values {
        values: vec![crate::event::Thread {
            name: name.map(str::to_owned),
            current: true,
            crashed: false,
            stacktrace: Some(stacktrace),
        }],
    }
}

fn exception_of(link: Link) -> Exception {
    let mut data = BTreeMap::new();
    let mut meta = None;
    if let Some(io) = link.io {
        data.insert("io_kind".to_owned(), json!(format!("{:?}", io.kind)));
        if let Some(code) = io.raw_os_error {
            data.insert("os_code".to_owned(), json!(code));
            meta = Some(MechanismMeta {
                errno: Some(Errno {
                    number: code,
                    name: errno_name(code).map(str::to_owned),
                }),
                signal: None,
            });
        }
    }
    Exception {
        ty: link.ty,
        value: link.value,
        mechanism: Some(Mechanism {
            ty: "capture_error".to_owned(),
            handled: true,
            data,
            meta,
        }),
        stacktrace: None,
    }
}

/// Symbolic names of the errno values services meet most.
#[cfg(unix)]
fn errno_name(code: i32) -> Option<&'static str> {
    let names: &[(i32, &str)] = &[
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::EINTR, "EINTR"),
        (libc::EIO, "EIO"),
        (libc::EBADF, "EBADF"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::EACCES, "EACCES"),
        (libc::EEXIST, "EEXIST"),
        (libc::EINVAL, "EINVAL"),
        (libc::EMFILE, "EMFILE"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::EPIPE, "EPIPE"),
        (libc::EADDRINUSE, "EADDRINUSE"),
        (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
        (libc::ENETDOWN, "ENETDOWN"),
        (libc::ENETUNREACH, "ENETUNREACH"),
        (libc::ECONNABORTED, "ECONNABORTED"),
        (libc::ECONNRESET, "ECONNRESET"),
        (libc::ENOTCONN, "ENOTCONN"),
        (libc::ETIMEDOUT, "ETIMEDOUT"),
        (libc::ECONNREFUSED, "ECONNREFUSED"),
        (libc::EHOSTUNREACH, "EHOSTUNREACH"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == code)
        .map(|(_, name)| *name)
}

#[cfg(not(unix))]
fn errno_name(_code: i32) -> Option<&'static str> {
    None
}

/// The `os` context, read once per agent thread.
pub(crate) fn os_context() -> Value {
    let name = match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "macOS",
        "windows" => "Windows",
        other => other,
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_owned());
    json!({"type": "os", "name": name, "kernel_version": kernel, "arch": std::env::consts::ARCH})
}

/// Whether any exception or thread of the event carries frames.
fn has_frames(event: &Event) -> bool {
    let in_stack = |st: &Option<crate::event::Stacktrace>| {
        st.as_ref()
            .is_some_and(|st| !st.frames.is_empty() || !st.raw.is_empty())
    };
    event
        .exception
        .as_ref()
        .is_some_and(|e| e.values.iter().any(|x| in_stack(&x.stacktrace)))
        || event
            .threads
            .as_ref()
            .is_some_and(|t| t.values.iter().any(|x| in_stack(&x.stacktrace)))
}

/// Runs the host's `before_send` hook; a hook that panics keeps the event unchanged.
pub(crate) fn apply_before_send(shared: &Shared, event: Event) -> Option<Event> {
    let Some(hook) = shared.options.before_send.as_ref() else {
        return Some(event);
    };
    let backup = event.clone();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(event))) {
        Ok(result) => result,
        Err(_) => {
            crate::warn(format_args!(
                "before_send panicked; storing event {} unchanged",
                backup.event_id
            ));
            Some(backup)
        }
    }
}
