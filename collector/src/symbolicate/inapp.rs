//! In-app marks of the frames the collector symbolicated: the agent's own rules when it
//! sent them (`contexts.errscope`), else the host crate named after the main executable.

use serde_json::Value;

/// Crates whose frames are never in-app (the agent's list, plus the `sentry` crates).
const NEVER: &[&str] = &[
    "std",
    "core",
    "alloc",
    "errscope",
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
    "sentry",
    "sentry_core",
    "sentry_backtrace",
    "sentry_panic",
    "sentry_debug_images",
    "__rustc",
];

/// How to judge the frames of one event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InAppRules {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl InAppRules {
    /// `contexts.errscope.in_app_include`/`in_app_exclude` when the event has them (and
    /// the include list is not empty); else the crate of the main image, its `code_file`
    /// base name with `-` as `_` (`/usr/bin/my-shop` → `my_shop`).
    pub fn of_event(event: &Value, main_code_file: Option<&str>) -> Self {
        let list = |key: &str| -> Vec<String> {
            event
                .pointer(&format!("/contexts/errscope/{key}"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut include = list("in_app_include");
        let exclude = list("in_app_exclude");
        if include.is_empty()
            && let Some(host) = main_code_file.and_then(host_crate)
        {
            include.push(host);
        }
        InAppRules { include, exclude }
    }

    /// Whether a symbolicated frame is the application's.
    pub fn is_in_app(&self, function: &str, abs_path: Option<&str>) -> bool {
        if abs_path.is_some_and(|p| is_dependency_path(p) || !p.ends_with(".rs")) {
            return false;
        }
        if function.contains("::") {
            let krate = crate_of(function);
            if NEVER.contains(&krate) || self.exclude.iter().any(|p| krate.starts_with(p.as_str()))
            {
                return false;
            }
            if !self.include.is_empty() {
                return self.include.iter().any(|p| krate.starts_with(p.as_str()));
            }
        }
        // A bare name (`{closure#0}`) or no rule: the source path decides.
        abs_path.is_some()
    }
}

/// The crate named after an executable: its base name up to the first `.` (crate names
/// have none), `-` as `_`.
pub fn host_crate(code_file: &str) -> Option<String> {
    let base = code_file.rsplit(['/', '\\']).next()?;
    // A shared object is no host crate.
    if base.contains(".so") {
        return None;
    }
    let name = base.split('.').next().unwrap_or(base);
    (!name.is_empty()).then(|| name.replace('-', "_"))
}

/// Source paths of std and of crates from a registry or git checkout.
fn is_dependency_path(path: &str) -> bool {
    path.starts_with("/rustc/")
        || path.starts_with("library/")
        || path.contains("/lib/rustlib/src/")
        || path.contains("/.cargo/registry/")
        || path.contains("/.cargo/git/")
        || path.contains("/cargo/registry/")
}

/// The crate of a demangled name: `shop` for `shop::ldap::bind` and for
/// `<shop::Conn as core::fmt::Debug>::fmt`.
pub fn crate_of(function: &str) -> &str {
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
    use serde_json::json;

    #[test]
    fn the_agents_rules_win_over_the_executable_name() {
        let ev = json!({"contexts": {"errscope": {"type": "errscope",
            "in_app_include": ["shop", "billing_"], "in_app_exclude": ["shop_vendored"]}}});
        let r = InAppRules::of_event(&ev, Some("/usr/bin/other-name"));
        assert!(r.is_in_app("shop::main", Some("/src/shop/src/main.rs")));
        assert!(r.is_in_app("billing_core::charge", None));
        assert!(!r.is_in_app("shop_vendored::x", Some("/src/v/src/lib.rs")));
        assert!(!r.is_in_app("other_name::main", Some("/src/o/src/main.rs")));
        assert!(!r.is_in_app("errscope::capture::capture_error", None));
    }

    #[test]
    fn without_rules_the_executable_names_the_host_crate() {
        let r = InAppRules::of_event(&json!({}), Some("/opt/app/fixture-host"));
        assert!(r.is_in_app("fixture_host::main", Some("/build/src/main.rs")));
        assert!(r.is_in_app(
            "<fixture_host::Job as core::ops::Drop>::drop",
            Some("/build/src/job.rs")
        ));
        assert!(!r.is_in_app("serde_json::de::from_str", Some("/build/src/x.rs")));
        assert!(!r.is_in_app(
            "fixture_host::main",
            Some("/root/.cargo/registry/src/index/x-1.0/src/lib.rs")
        ));
        assert!(!r.is_in_app(
            "std::rt::lang_start",
            Some("/rustc/abc/library/std/src/rt.rs")
        ));
        assert!(!r.is_in_app("tokio::runtime::park", None));
        assert!(!r.is_in_app(
            "__libc_start_call_main",
            Some("../sysdeps/nptl/libc_start_call_main.h")
        ));
        assert!(r.is_in_app("{closure#0}", Some("/build/src/main.rs")));
        assert_eq!(host_crate("/lib/x86_64-linux-gnu/libc.so.6"), None);
        assert_eq!(host_crate("C:\\app\\my-svc.exe").as_deref(), Some("my_svc"));
        assert_eq!(
            host_crate("/opt/shop-api.stripped").as_deref(),
            Some("shop_api")
        );
    }
}
