//! Backtraces: a cheap unresolved capture on the caller's thread, and resolution into
//! Sentry frames on the agent's thread with a per-address cache.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::event::{DebugMeta, Frame};
use crate::images::Images;
pub(crate) use crate::in_app::InApp;
use crate::in_app::{crate_of, detect_host, is_agent_path, is_std_path};

/// At most this many addresses are captured.
const MAX_FRAMES: usize = 128;

/// Instruction addresses of a stack, newest first, not yet resolved to symbols.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawTrace {
    ips: Vec<usize>,
}

impl RawTrace {
    /// Walks the current stack. Costs a few microseconds; resolves nothing.
    #[inline(never)]
    pub(crate) fn capture() -> Self {
        let mut ips = Vec::with_capacity(48);
        let mut push = |frame: &backtrace::Frame| {
            let ip = frame.ip() as usize;
            // The outermost frame of a thread can report address 0: nothing to resolve.
            if ip != 0 {
                ips.push(ip);
            }
            ips.len() < MAX_FRAMES
        };
        #[cfg(unix)]
        {
            // SAFETY: `trace_unsynchronized` is unsafe only because some platform
            // unwinders (Windows' dbghelp) are not thread-safe; on Unix it walks the
            // stack with the system unwinder, which is. The callback does not unwind.
            unsafe { backtrace::trace_unsynchronized(&mut push) }
        }
        #[cfg(not(unix))]
        backtrace::trace(&mut push);
        Self { ips }
    }

    /// Addresses recorded elsewhere (a crash record), newest first.
    pub(crate) fn from_ips(ips: Vec<usize>) -> Self {
        Self { ips }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ips.len()
    }
}

/// One resolved symbol at an address (an address yields several when inlined).
#[derive(Clone, Debug, Default)]
struct Symbol {
    function: Option<String>,
    abs_path: Option<String>,
    lineno: Option<u32>,
    colno: Option<u32>,
}

/// Source files whose frames on top of a stack are the capture or the panic machinery.
fn is_machinery_path(path: &str) -> bool {
    (is_agent_path(path) && !path.ends_with("/domain.rs"))
        || path.contains("/backtrace-0.")
        || path.ends_with("library/std/src/panicking.rs")
        || path.ends_with("library/core/src/panicking.rs")
        || path.ends_with("library/std/src/sys/backtrace.rs")
}

/// Frames at the top of a stack that belong to the agent, the unwinder or the panic
/// machinery, not to the code that failed.
fn is_machinery(function: Option<&str>) -> bool {
    let Some(f) = function else {
        // Nothing says so: in a stripped binary the host's own frames have no names either
        // (unresolved frames count as runtime glue, trimmed only with machinery below).
        return false;
    };
    const PREFIXES: &[&str] = &[
        "errscope::trace::RawTrace::capture",
        "errscope::capture::",
        "errscope::hook::",
        "errscope::client::",
        "backtrace::",
        "std::panicking",
        "std::panic::",
        "core::panicking",
        "core::panic::",
        "std::sys::backtrace",
        "std::sys_common::backtrace",
        "std::rt::begin_panic",
        "rust_begin_unwind",
        "__rustc::rust_begin_unwind",
        "rust_panic",
        "__rust_",
        "_Unwind_",
        "core::option::unwrap_failed",
        "core::option::expect_failed",
        "core::result::unwrap_failed",
        "core::option::Option<T>::unwrap",
        "core::option::Option<T>::expect",
        "core::result::Result<T,E>::unwrap",
        "core::result::Result<T,E>::expect",
        "<alloc::boxed::Box<",
    ];
    PREFIXES.iter().any(|p| f.starts_with(p))
}

/// Frames of std, core, alloc, the unwinder and the agent: the glue between machinery
/// frames (`Option::map` in a debug build, `Box<dyn Fn>::call` for the hook).
fn is_runtime(function: Option<&str>, path: Option<&str>) -> bool {
    if path.is_some_and(|p| is_std_path(p) || is_agent_path(p) || p.contains("/backtrace-0.")) {
        return true;
    }
    match function {
        None => true,
        Some(f) => {
            f.starts_with("rust_")
                || f.starts_with("_Unwind")
                || matches!(
                    crate_of(f),
                    "std" | "core" | "alloc" | "errscope" | "backtrace" | "__rustc"
                )
        }
    }
}

/// How to treat a frame at the top of a stack.
#[derive(Clone, Copy, Debug, Default)]
struct TopClass {
    /// The agent's capture, the unwinder or the panic machinery: trimmed.
    machinery: bool,
    /// std or agent glue between machinery frames: trimmed if machinery lies below it.
    runtime: bool,
}

fn classify(function: Option<&str>, path: Option<&str>) -> TopClass {
    let machinery = is_machinery(function) || path.is_some_and(is_machinery_path);
    TopClass {
        machinery,
        runtime: machinery || is_runtime(function, path),
    }
}

/// How many frames to trim from the top: up to the deepest machinery frame that is reached
/// from the top through runtime frames only (the first application frame stops the scan).
fn machinery_on_top(newest_first: &[TopClass]) -> usize {
    let mut cut = 0;
    for (idx, class) in newest_first.iter().enumerate() {
        if class.machinery {
            cut = idx + 1;
        } else if !class.runtime {
            break;
        }
    }
    cut
}

/// Demangles a symbol and drops the `::h0123…` hash (and v0 crate disambiguators).
pub(crate) fn demangle(raw: &str) -> String {
    match rustc_demangle::try_demangle(raw) {
        Ok(d) => format!("{d:#}"),
        Err(_) => strip_hash(raw).to_owned(),
    }
}

/// Strips a trailing legacy hash from an already demangled name.
pub(crate) fn strip_hash(name: &str) -> &str {
    if let Some((head, hash)) = name.rsplit_once("::h")
        && hash.len() == 16
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return head;
    }
    name
}

/// `shop::ldap` for `shop::ldap::bind::{{closure}}`; none for trait impls and C symbols.
pub(crate) fn module_of(function: &str) -> Option<String> {
    if function.starts_with('<') {
        return None;
    }
    // Path segments at bracket depth 0, without impl blocks (`<impl Trait for T>`),
    // turbofishes (`::<T>`), closures and generic arguments (`Vec<T>` → `Vec`).
    let mut segments: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut chars = function.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // The arrow of `fn() -> T` is no closing bracket.
            '-' if chars.peek() == Some(&'>') => {
                chars.next();
            }
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            ':' if depth == 0 && chars.peek() == Some(&':') => {
                chars.next();
                segments.push(std::mem::take(&mut current));
            }
            _ if depth == 0 => current.push(c),
            _ => {}
        }
    }
    segments.push(current);
    segments.retain(|s| !s.is_empty() && !s.starts_with('{'));
    segments.pop()?;
    (!segments.is_empty()).then(|| segments.join("::"))
}

/// A short display path: `src/main.rs`, `tokio-1.54.1/src/runtime/...`, `library/std/...`.
pub(crate) fn short_path(abs: &str, cwd: Option<&std::path::Path>) -> String {
    if let Some(idx) = abs.find("/registry/src/") {
        // .../registry/src/<index-dir>/<crate-version>/src/x.rs
        let rest = &abs[idx + "/registry/src/".len()..];
        if let Some((_, tail)) = rest.split_once('/') {
            return tail.to_owned();
        }
    }
    if let Some(rest) = abs.strip_prefix("/rustc/")
        && let Some((_, tail)) = rest.split_once('/')
    {
        return tail.to_owned();
    }
    if let Some(cwd) = cwd
        && let Ok(rel) = std::path::Path::new(abs).strip_prefix(cwd)
    {
        return rel.display().to_string();
    }
    abs.to_owned()
}

/// A frame ready to serialize, with its classification for trimming.
#[derive(Clone, Debug)]
struct CachedFrame {
    frame: Frame,
    /// `frame` as JSON, serialized once.
    json: Arc<RawValue>,
    class: TopClass,
}

/// Resolves addresses to frames, remembering every address it has seen: an address is
/// resolved, demangled, shortened and classified once; later events clone the frames.
///
/// Symbol tables are loaded lazily by the `backtrace` crate on the first resolution, the
/// loaded images are read and the host crate is found (from the stack `init` took) at
/// the same time, on the agent's thread, so `init` costs nothing here.
pub(crate) struct Resolver {
    in_app: InApp,
    /// The stack of the `init` call, until the host crate has been looked for.
    init_trace: Option<RawTrace>,
    images: Option<Images>,
    /// `contexts.errscope`, once the host is known.
    context: Value,
    cwd: Option<std::path::PathBuf>,
    cache: HashMap<usize, Arc<[CachedFrame]>>,
}

impl Resolver {
    pub(crate) fn new(in_app: InApp, init_trace: RawTrace) -> Self {
        Self {
            in_app,
            init_trace: Some(init_trace),
            images: None,
            context: Value::Null,
            cwd: std::env::current_dir().ok(),
            cache: HashMap::new(),
        }
    }

    /// Finds the host crate and reads the images, once, before the first frame is built.
    fn prepare(&mut self) {
        if let Some(trace) = self.init_trace.take() {
            let mut names: Vec<Option<String>> = Vec::new();
            for &ip in &trace.ips {
                let before = names.len();
                backtrace::resolve(ip as *mut c_void, |sym| {
                    names.push(
                        sym.name()
                            .and_then(|n| std::str::from_utf8(n.as_bytes()).ok().map(demangle)),
                    );
                });
                if names.len() == before {
                    names.push(None);
                }
            }
            let names: Vec<Option<&str>> = names.iter().map(Option::as_deref).collect();
            let exe = std::env::current_exe().ok();
            self.in_app.set_host(detect_host(&names, exe.as_deref()));
            self.context = self.in_app.context();
            // Frames classified before the host was known (none in the agent's use).
            self.cache.clear();
        }
        if self.images.is_none() {
            self.images = Some(Images::load());
        }
    }

    /// The in-app rules, with the host crate.
    pub(crate) fn in_app(&mut self) -> &InApp {
        self.prepare();
        &self.in_app
    }

    /// `contexts.errscope`: the crates counted as in-app (collector/API.md).
    pub(crate) fn in_app_context(&mut self) -> Value {
        self.prepare();
        self.context.clone()
    }

    /// `debug_meta` with the loaded images: typed (for a `before_send` hook) or as the
    /// JSON serialized once.
    pub(crate) fn debug_meta(&mut self, typed: bool) -> Option<DebugMeta> {
        self.prepare();
        let images = self.images.as_ref().filter(|i| !i.is_empty())?;
        if typed {
            Some(DebugMeta::new(images.to_vec()))
        } else {
            images
                .json()
                .map(|raw| DebugMeta::from_raw(Arc::clone(raw)))
        }
    }

    fn resolve(&mut self, ip: usize) -> Arc<[CachedFrame]> {
        if let Some(hit) = self.cache.get(&ip) {
            return Arc::clone(hit);
        }
        let mut symbols = Vec::new();
        backtrace::resolve(ip as *mut c_void, |sym| {
            let function = sym
                .name()
                .and_then(|n| std::str::from_utf8(n.as_bytes()).ok().map(demangle));
            symbols.push(Symbol {
                function,
                abs_path: sym.filename().map(|p| p.display().to_string()),
                lineno: sym.lineno(),
                colno: sym.colno(),
            });
        });
        if symbols.is_empty() {
            symbols.push(Symbol::default());
        }
        let frames: Arc<[CachedFrame]> = symbols
            .into_iter()
            .map(|sym| self.to_frame(ip, sym))
            .collect();
        // Addresses come from a bounded set of code; the bound is a safety net.
        if self.cache.len() > 100_000 {
            self.cache.clear();
        }
        self.cache.insert(ip, Arc::clone(&frames));
        frames
    }

    fn to_frame(&self, ip: usize, sym: Symbol) -> CachedFrame {
        let function = sym.function.as_deref();
        let path = sym.abs_path.as_deref();
        let class = classify(function, path);
        let image = self.images.as_ref().and_then(|i| i.find(ip as u64));
        let frame = Frame {
            in_app: self.in_app.is_in_app(function, path),
            module: function.and_then(module_of),
            filename: path.map(|p| short_path(p, self.cwd.as_deref())),
            function: sym.function,
            abs_path: sym.abs_path,
            lineno: sym.lineno,
            colno: sym.colno,
            instruction_addr: format!("{ip:#x}"),
            package: image.map(|i| i.code_file.clone()),
            image_addr: image.map(|i| i.image_addr.clone()),
        };
        // A `Frame` always serializes (strings, numbers, a bool); `null` is a safe fallback.
        let json = serde_json::value::to_raw_value(&frame)
            .ok()
            .map(Arc::from)
            .unwrap_or_else(|| Arc::from(RawValue::NULL.to_owned()));
        CachedFrame { frame, json, class }
    }

    /// Resolves, trims the machinery frames from the top, and returns the frames oldest
    /// first, as Sentry wants them.
    pub(crate) fn frames(&mut self, trace: &RawTrace) -> Vec<Frame> {
        self.map_frames(trace, |f| f.frame.clone())
    }

    /// Like [`frames`](Self::frames), as JSON serialized once per address.
    pub(crate) fn raw_frames(&mut self, trace: &RawTrace) -> Vec<Arc<RawValue>> {
        self.map_frames(trace, |f| Arc::clone(&f.json))
    }

    fn map_frames<T>(&mut self, trace: &RawTrace, f: impl Fn(&CachedFrame) -> T) -> Vec<T> {
        self.prepare();
        let per_ip: Vec<Arc<[CachedFrame]>> =
            trace.ips.iter().map(|&ip| self.resolve(ip)).collect();
        let newest_first: Vec<&CachedFrame> = per_ip.iter().flat_map(|f| f.iter()).collect();
        trim_and_order(&newest_first, f)
    }
}

fn trim_and_order<T>(newest_first: &[&CachedFrame], f: impl Fn(&CachedFrame) -> T) -> Vec<T> {
    let classes: Vec<TopClass> = newest_first.iter().map(|f| f.class).collect();
    let skip = machinery_on_top(&classes);
    // If everything looks like machinery (no symbols at all), keep the whole stack.
    let skip = if skip == newest_first.len() { 0 } else { skip };
    newest_first
        .iter()
        .skip(skip)
        .rev()
        .map(|frame| f(frame))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::in_app::AGENT_SRC;

    fn sym(function: &str, path: &str) -> Symbol {
        Symbol {
            function: Some(function.to_owned()),
            abs_path: Some(path.to_owned()),
            lineno: Some(1),
            colno: Some(1),
        }
    }

    #[test]
    fn demangling_strips_hashes() {
        assert_eq!(
            demangle("_ZN4shop4ldap4bind17h0123456789abcdefE"),
            "shop::ldap::bind"
        );
        assert_eq!(
            demangle("shop::ldap::bind::h0123456789abcdef"),
            "shop::ldap::bind"
        );
        assert_eq!(demangle("memcpy"), "memcpy");
    }

    #[test]
    fn crates_and_modules() {
        assert_eq!(crate_of("shop::ldap::bind"), "shop");
        assert_eq!(crate_of("<shop::Conn as core::fmt::Debug>::fmt"), "shop");
        assert_eq!(crate_of("<&mut shop::Conn as std::io::Read>::read"), "shop");
        assert_eq!(
            module_of("shop::ldap::bind::{{closure}}").as_deref(),
            Some("shop::ldap")
        );
        assert_eq!(
            module_of(
                "std::panic::catch_unwind::<std::rt::lang_start_internal::{closure#0}, isize>"
            )
            .as_deref(),
            Some("std::panic")
        );
        assert_eq!(
            module_of("core::slice::index::<impl core::ops::index::Index<I> for [T]>::index")
                .as_deref(),
            Some("core::slice::index")
        );
        assert_eq!(
            module_of("alloc::vec::Vec<T,A>::push").as_deref(),
            Some("alloc::vec::Vec")
        );
        assert_eq!(
            module_of("shop::run::<fn() -> u32>::{{closure}}").as_deref(),
            Some("shop")
        );
        assert_eq!(module_of("main"), None);
    }

    fn trim(stack: Vec<(usize, Symbol)>) -> Vec<Frame> {
        let resolver = Resolver::new(InApp::default(), RawTrace::default());
        let cached: Vec<CachedFrame> = stack
            .into_iter()
            .map(|(ip, sym)| resolver.to_frame(ip, sym))
            .collect();
        let refs: Vec<&CachedFrame> = cached.iter().collect();
        let frames = trim_and_order(&refs, |f| f.frame.clone());
        let raw = trim_and_order(&refs, |f| f.json.get().to_owned());
        let typed: Vec<String> = frames
            .iter()
            .map(|f| serde_json::to_string(f).expect("frame json"))
            .collect();
        assert_eq!(raw, typed, "the cached JSON is the frame");
        frames
    }

    #[test]
    fn trims_inlined_frames_with_bare_names_by_path() {
        let agent = |file: &str| format!("{AGENT_SRC}{file}");
        let stack = vec![
            (
                1,
                sym(
                    "trace",
                    "/home/u/.cargo/registry/src/idx/backtrace-0.3.77/src/backtrace/libunwind.rs",
                ),
            ),
            (2, sym("capture", &agent("trace.rs"))),
            (3, sym("map<T>", "/rustc/abc/library/core/src/option.rs")),
            (
                4,
                sym("capture_error<std::io::error::Error>", &agent("capture.rs")),
            ),
            (5, sym("{closure#0}", "/srv/shop/src/main.rs")),
            (
                6,
                sym(
                    "call_once<F>",
                    "/rustc/abc/library/core/src/ops/function.rs",
                ),
            ),
        ];
        let frames = trim(stack);
        let names: Vec<_> = frames
            .iter()
            .filter_map(|f| f.function.as_deref())
            .collect();
        assert_eq!(names, ["call_once<F>", "{closure#0}"]);
        assert!(!frames[0].in_app);
        assert!(frames[1].in_app);
        assert_eq!(frames[1].filename.as_deref(), Some("/srv/shop/src/main.rs"));
    }

    #[test]
    fn trims_machinery_and_marks_in_app() {
        let stack = vec![
            (
                1,
                sym(
                    "backtrace::backtrace::trace_unsynchronized",
                    "/home/u/.cargo/registry/src/idx/backtrace-0.3.77/src/backtrace/mod.rs",
                ),
            ),
            (2, sym("errscope::hook::record", "/work/agent/src/hook.rs")),
            (
                3,
                sym(
                    "std::panicking::rust_panic_with_hook",
                    "/rustc/abc/library/std/src/panicking.rs",
                ),
            ),
            (
                4,
                sym(
                    "core::panicking::panic_fmt",
                    "/rustc/abc/library/core/src/panicking.rs",
                ),
            ),
            (5, sym("shop::ldap::bind", "/srv/shop/src/ldap.rs")),
            (
                6,
                sym(
                    "tokio::runtime::task::poll",
                    "/home/u/.cargo/registry/src/idx/tokio-1.54.1/src/runtime/task.rs",
                ),
            ),
            (
                7,
                sym(
                    "errscope::domain::Run<F>::poll",
                    "/work/agent/src/domain.rs",
                ),
            ),
            (8, sym("shop::main", "/srv/shop/src/main.rs")),
        ];
        let frames = trim(stack);
        let names: Vec<_> = frames
            .iter()
            .filter_map(|f| f.function.as_deref())
            .collect();
        assert_eq!(
            names,
            [
                "shop::main",
                "errscope::domain::Run<F>::poll",
                "tokio::runtime::task::poll",
                "shop::ldap::bind"
            ]
        );
        let in_app: Vec<_> = frames.iter().map(|f| f.in_app).collect();
        assert_eq!(in_app, [true, false, false, true]);
        assert_eq!(
            frames[2].filename.as_deref(),
            Some("tokio-1.54.1/src/runtime/task.rs")
        );
        assert_eq!(frames[3].instruction_addr, "0x5");

        let only_shop = InApp::new(&["shop".to_owned()], &[]);
        assert!(only_shop.is_in_app(Some("shop::x"), None));
        assert!(!only_shop.is_in_app(Some("other::x"), Some("/srv/other/src/x.rs")));
        let no_shop = InApp::new(&[], &["shop".to_owned()]);
        assert!(!no_shop.is_in_app(Some("shop::x"), Some("/srv/shop/src/x.rs")));
    }

    #[inline(never)]
    fn recurse(n: u32) -> RawTrace {
        if n == 0 {
            RawTrace::capture()
        } else {
            let t = recurse(n - 1);
            std::hint::black_box(t)
        }
    }

    #[test]
    fn resolves_a_real_stack_with_our_function_in_it() {
        let trace = recurse(3);
        assert!(trace.len() >= 4);
        let mut resolver = Resolver::new(InApp::default(), RawTrace::default());
        // Everything here is the agent's own source, which `frames` trims from the top of
        // a stack; look at the resolved frames themselves.
        let resolved: Vec<Frame> = trace
            .ips
            .iter()
            .flat_map(|&ip| {
                resolver
                    .resolve(ip)
                    .iter()
                    .map(|f| f.frame.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        let ours: Vec<_> = resolved
            .iter()
            .filter(|f| f.function.as_deref() == Some("errscope::trace::tests::recurse"))
            .collect();
        assert!(ours.len() >= 3, "{resolved:#?}");
        assert!(ours.iter().all(|f| {
            f.filename
                .as_deref()
                .is_some_and(|p| p.ends_with("src/trace.rs"))
        }));
        assert!(
            ours.iter().all(|f| !f.in_app),
            "the agent's frames are not in-app"
        );
        let cached = resolver.cache.len();
        assert!(cached <= trace.len());
        let _ = resolver.frames(&trace);
        assert_eq!(
            resolver.cache.len(),
            cached,
            "the second pass hits the cache"
        );
    }
}
