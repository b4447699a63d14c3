//! Which frames belong to the application: the host crate (found without configuration),
//! `Options::in_app_include`/`in_app_exclude`, and source paths when the build has them.

use std::path::Path;

use serde_json::{Value, json};

/// Which frames belong to the application.
#[derive(Clone, Debug, Default)]
pub(crate) struct InApp {
    include: Vec<String>,
    exclude: Vec<String>,
    /// The crate of the host's `main`, once found.
    host: Option<String>,
}

/// Crates whose frames are never in-app unless the host includes them by name (the
/// agent's own, `errscope`, never is).
const NOT_IN_APP: &[&str] = &[
    "std",
    "core",
    "alloc",
    "backtrace",
    "tokio",
    "hyper",
    "hyper_util",
    "futures",
    "futures_util",
    "futures_core",
    "tower",
    "axum",
    "test",
    "panic_unwind",
    "panic_abort",
];

/// The agent's crate: its frames are never in-app and never a culprit.
const AGENT_CRATE: &str = "errscope";

/// Whether `krate` is named by `entry`: the crate itself or, the way crate families are
/// named, one that continues it after an underscore (`shop` covers `shop` and `shop_db`,
/// not `shopify`; `shop_` covers `shop_db`).
pub(crate) fn names_crate(entry: &str, krate: &str) -> bool {
    !entry.is_empty()
        && krate.starts_with(entry)
        && (krate.len() == entry.len()
            || entry.ends_with('_')
            || krate.as_bytes()[entry.len()] == b'_')
}

impl InApp {
    pub(crate) fn new(include: &[String], exclude: &[String]) -> Self {
        Self {
            include: include.to_vec(),
            exclude: exclude.to_vec(),
            host: None,
        }
    }

    /// Sets the host crate found by [`detect_host`].
    pub(crate) fn set_host(&mut self, host: Option<String>) {
        self.host = host;
    }

    /// In order: never the agent's frames; `in_app_exclude`; `in_app_include`; the host
    /// crate; never std, tokio, hyper and friends; then, for builds with debug info,
    /// Rust sources outside the cargo registry, git checkouts and std (unless
    /// `in_app_include` is set, which then names every in-app crate but the host).
    /// Frames without a name are not in-app.
    pub(crate) fn is_in_app(&self, function: Option<&str>, abs_path: Option<&str>) -> bool {
        let Some(function) = function else {
            return false;
        };
        // Inlined frames of a `line-tables-only` build have a bare name (`{closure#0}`,
        // `call_once<F>`): no crate to judge by, so the source path decides.
        let krate = function.contains("::").then(|| crate_of(function));
        if let Some(krate) = krate {
            if krate == AGENT_CRATE || self.exclude.iter().any(|p| names_crate(p, krate)) {
                return false;
            }
            if self.include.iter().any(|p| names_crate(p, krate))
                || self.host.as_deref().is_some_and(|h| names_crate(h, krate))
            {
                return true;
            }
            if NOT_IN_APP.iter().any(|p| names_crate(p, krate)) || !self.include.is_empty() {
                return false;
            }
        }
        // Only Rust sources of this program: not std, dependencies, the agent, or C (libc's
        // `start_thread`).
        match abs_path {
            Some(p) => !(is_dependency_path(p) || is_agent_path(p) || !p.ends_with(".rs")),
            None => false,
        }
    }

    /// `contexts.errscope` (collector/API.md): the crates the agent counts as in-app, so a
    /// server that symbolicates a frame can mark it the same way.
    pub(crate) fn context(&self) -> Value {
        let mut include: Vec<&str> = self.host.as_deref().into_iter().collect();
        for p in &self.include {
            if !include.contains(&p.as_str()) {
                include.push(p);
            }
        }
        json!({
            "type": "errscope",
            "in_app_include": include,
            "in_app_exclude": self.exclude,
        })
    }
}

/// Finds the host crate from the function names of a stack taken in `init` (newest
/// first) and the executable's path:
/// 1. the `<crate>::main` frame that std's `lang_start` calls;
/// 2. the crate named like the executable (`shop-api` → `shop_api`, a test binary's
///    `-<hash>` dropped), if a frame of that crate is on the stack;
/// 3. the crate of the frame that called `errscope::init`;
/// 4. the crate named like the executable (a stripped binary has no names at all).
pub(crate) fn detect_host(newest_first: &[Option<&str>], exe: Option<&Path>) -> Option<String> {
    // The agent's own unit tests run in a binary of the agent's crate.
    find_host(newest_first, exe).filter(|h| h != AGENT_CRATE)
}

fn find_host(newest_first: &[Option<&str>], exe: Option<&Path>) -> Option<String> {
    let named = |i: usize| newest_first.get(i).copied().flatten();
    let from_exe = exe.and_then(crate_of_executable);
    // 1. `main` as std starts it.
    if let Some(start) = (0..newest_first.len()).find(|&i| {
        named(i).is_some_and(|f| {
            f.starts_with("std::rt::lang_start") || f.contains("__rust_begin_short_backtrace")
        })
    }) && let Some(main) = start.checked_sub(1).and_then(named)
        && let Some(krate) = main.strip_suffix("::main")
        && is_crate_name(krate)
        && krate != AGENT_CRATE
    {
        return Some(krate.to_owned());
    }
    let crates: Vec<&str> = (0..newest_first.len())
        .filter_map(named)
        .filter(|f| f.contains("::"))
        .map(crate_of)
        .collect();
    // 2. The executable's crate, seen on the stack.
    if let Some(exe_crate) = &from_exe
        && crates.contains(&exe_crate.as_str())
    {
        return from_exe;
    }
    // 3. Whoever called `init`: the first frame below the agent's own.
    if let Some(last_agent) = crates.iter().rposition(|c| *c == AGENT_CRATE)
        && let Some(caller) = crates.get(last_agent + 1)
        && !NOT_IN_APP.iter().any(|p| names_crate(p, caller))
        && is_crate_name(caller)
    {
        return Some((*caller).to_owned());
    }
    // 4. The executable's name alone.
    from_exe
}

/// The crate name Cargo gives a binary target: its file name with `-` as `_`, without
/// the `-<16 hex>` of a test binary.
pub(crate) fn crate_of_executable(exe: &Path) -> Option<String> {
    let stem = exe.file_stem()?.to_str()?;
    let stem = match stem.rsplit_once('-') {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => stem,
    };
    let name = stem.replace('-', "_");
    is_crate_name(&name).then_some(name)
}

fn is_crate_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Source paths of std and of crates from a registry or git checkout.
fn is_dependency_path(path: &str) -> bool {
    is_std_path(path)
        || path.contains("/.cargo/registry/")
        || path.contains("/.cargo/git/")
        || path.contains("/cargo/registry/")
}

/// Source paths of std, core and alloc.
pub(crate) fn is_std_path(path: &str) -> bool {
    path.starts_with("/rustc/")
        || path.starts_with("library/")
        || path.contains("/lib/rustlib/src/")
}

/// This crate's own sources, wherever it was built from.
pub(crate) const AGENT_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");

pub(crate) fn is_agent_path(path: &str) -> bool {
    path.starts_with(AGENT_SRC)
}

/// The crate a demangled function name belongs to: `shop` for `shop::ldap::bind` and for
/// `<shop::Conn as core::fmt::Debug>::fmt`.
pub(crate) fn crate_of(function: &str) -> &str {
    let mut s = function.trim_start_matches('<');
    for prefix in ["&mut ", "&", "dyn ", "impl "] {
        s = s.trim_start_matches(prefix);
    }
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(names: &[&str], exe: &str) -> Option<String> {
        let names: Vec<Option<&str>> = names
            .iter()
            .map(|n| (!n.is_empty()).then_some(*n))
            .collect();
        detect_host(&names, Some(Path::new(exe)))
    }

    #[test]
    fn the_host_crate_is_the_one_whose_main_std_starts() {
        // A default release build: names from the symbol table, no paths. The binary was
        // renamed when copied into an image, so only the stack tells.
        let stack = [
            "backtrace::backtrace::libunwind::trace",
            "errscope::trace::RawTrace::capture",
            "errscope::init::init",
            "shop_api::main",
            "std::sys::backtrace::__rust_begin_short_backtrace",
            "std::rt::lang_start::{{closure}}",
            "std::rt::lang_start_internal",
            "main",
            "__libc_start_call_main",
        ];
        assert_eq!(
            host(&stack, "/usr/local/bin/app").as_deref(),
            Some("shop_api")
        );
        // `#[tokio::main]`: init runs in the block_on'd body; `main` is still under
        // lang_start.
        let tokio_main = [
            "errscope::init::init",
            "shop::main::{{closure}}",
            "tokio::runtime::park::CachedParkThread::block_on",
            "tokio::runtime::runtime::Runtime::block_on",
            "shop::main",
            "std::sys::backtrace::__rust_begin_short_backtrace",
            "std::rt::lang_start::{{closure}}",
        ];
        assert_eq!(host(&tokio_main, "/srv/shop").as_deref(), Some("shop"));
    }

    #[test]
    fn without_a_main_frame_the_executable_and_the_caller_of_init_tell() {
        // `main` inlined into std's start: the executable's crate, seen on the stack.
        let inlined = [
            "errscope::init::init",
            "shop::setup",
            "std::sys::backtrace::__rust_begin_short_backtrace",
        ];
        assert_eq!(host(&inlined, "/srv/shop").as_deref(), Some("shop"));
        // Renamed binary: whoever called init.
        assert_eq!(host(&inlined, "/srv/app").as_deref(), Some("shop"));
        // A stripped binary has no names: the executable's, `-` as `_`.
        assert_eq!(
            host(&["", "", "__libc_start_call_main"], "/usr/bin/shop-api").as_deref(),
            Some("shop_api")
        );
        // A test binary's hash is not part of the crate.
        assert_eq!(
            crate_of_executable(Path::new("/t/deps/shop-0123456789abcdef")).as_deref(),
            Some("shop")
        );
        assert_eq!(crate_of_executable(Path::new("/t/2fast")), None);
        // Called from tokio's glue, not from host code: no guess from the caller.
        assert_eq!(
            host(&["errscope::init::init", "tokio::task::spawn"], "/x/9"),
            None
        );
    }

    #[test]
    fn in_app_without_source_paths() {
        let mut rules = InApp::new(&[], &[]);
        rules.set_host(Some("shop".to_owned()));
        let yes = |f: &str| rules.is_in_app(Some(f), None);
        assert!(yes("shop::main"));
        assert!(yes("shop::handler::{{closure}}"));
        assert!(yes("<shop::Conn as core::fmt::Debug>::fmt"));
        assert!(yes("shop_db::query"), "the host's crate family");
        assert!(!yes("shopify::Client::get"), "not a prefix match");
        assert!(!yes("serde_json::de::from_str"), "a dependency");
        assert!(!yes("tokio::runtime::task::raw::poll"));
        assert!(!yes("std::rt::lang_start_internal"));
        assert!(!yes("__libc_start_call_main"));
        assert!(!rules.is_in_app(None, None), "no name, no judgement");
        // The agent's frames are never in-app, whatever the options say.
        for f in [
            "<errscope::domain::DomainRun<F> as core::future::future::Future>::poll",
            "<errscope::domain::TaskPanics<F> as core::future::future::Future>::poll",
            "errscope::capture::capture_error",
        ] {
            assert!(!yes(f), "{f}");
            let mut forced = InApp::new(&["errscope".to_owned()], &[]);
            forced.set_host(Some("errscope".to_owned()));
            assert!(!forced.is_in_app(Some(f), None), "{f}");
        }
    }

    #[test]
    fn options_win_over_the_detected_host() {
        let mut rules = InApp::new(
            &["billing".to_owned(), "tokio".to_owned()],
            &["shop_gen".to_owned()],
        );
        rules.set_host(Some("shop".to_owned()));
        assert!(rules.is_in_app(Some("billing::charge"), None));
        assert!(
            rules.is_in_app(Some("tokio::spawn"), None),
            "included by name"
        );
        assert!(
            rules.is_in_app(Some("shop::main"), None),
            "the host stays in-app"
        );
        assert!(
            !rules.is_in_app(Some("shop_gen::proto::decode"), None),
            "excluded"
        );
        // With an include list, other crates with source paths are not in-app.
        assert!(!rules.is_in_app(Some("other::x"), Some("/srv/other/src/x.rs")));
        let excluded = InApp::new(&[], &["shop".to_owned()]);
        assert!(!excluded.is_in_app(Some("shop::x"), Some("/srv/shop/src/x.rs")));
        assert_eq!(
            rules.context(),
            json!({
                "type": "errscope",
                "in_app_include": ["shop", "billing", "tokio"],
                "in_app_exclude": ["shop_gen"],
            })
        );
    }

    #[test]
    fn in_app_with_source_paths() {
        let rules = InApp::default();
        assert!(rules.is_in_app(
            Some("shop_worker::run"),
            Some("/srv/shop/worker/src/lib.rs")
        ));
        assert!(rules.is_in_app(Some("{closure#0}"), Some("/srv/shop/src/main.rs")));
        assert!(!rules.is_in_app(
            Some("serde_json::de::from_str"),
            Some("/home/u/.cargo/registry/src/idx/serde_json-1.0.0/src/de.rs")
        ));
        assert!(!rules.is_in_app(Some("start_thread"), Some("./nptl/pthread_create.c")));
        assert!(
            !rules.is_in_app(Some("shop::x"), None),
            "no host known, no path"
        );
    }
}
