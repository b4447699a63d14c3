//! Native function names for the fingerprint: one spelling for what the symbol table,
//! DWARF, rustc's legacy and v0 manglings and older toolchains each call one function.
//!
//! Only the fingerprint uses these names; events keep and show the names they arrived with.
//!
//! | spelling                                                          | from                               |
//! |-------------------------------------------------------------------|------------------------------------|
//! | `shop::load::{{closure}}::h1a2b3c4d5e6f7a8b`                       | legacy symbol, demangled with hash  |
//! | `shop::load::{{closure}}`                                          | legacy symbol (`{:#}`), DWARF linkage name |
//! | `shop::load::{closure#0}`                                          | v0 symbol, rustc ≥ 1.5x DWARF      |
//! | `shop[4f1c2d]::load::{closure#0}`                                  | v0 demangled without `{:#}`        |
//! | `{async_fn#0}`, `{async_block#0}`, `{coroutine#0}`, `{generator#0}` | DWARF names of other rustc versions |
//! | `shop::Cache<K,V>::get`                                            | legacy                             |
//! | `<shop::Cache<K, V>>::get`                                         | legacy of older rustc              |
//! | `<shop::Cache<alloc::string::String, u64>>::get`                   | v0                                 |
//! | `shop::block_on::<shop::fetch::{closure#0}>`                       | v0 (instantiated generics)         |
//! | `call_once{{vtable.shim}}`, `{shim:vtable#0}`                      | shims, legacy and v0               |
//!
//! all become `shop::load::{closure}`, `shop::Cache::get`, `shop::block_on` and so on:
//! legacy hashes and v0 crate disambiguators go, every closure, async body and coroutine
//! is `{closure}` (legacy mangling never numbered them), generic arguments go (legacy
//! names carry the parameters, v0 and DWARF the instantiated types), `<T>::f` is `T::f`,
//! shims go, whitespace is canonical, and a name still mangled (`_ZN…`, `_R…`) is
//! demangled first. `<T as Trait>::f` stays, with the generics of `T` and `Trait` gone.

/// At most this many bytes of a name are read: names of generic code run to kilobytes,
/// and the path that identifies the function comes first.
const MAX_NAME: usize = 4096;

/// Crates whose frames never identify a call site (nor are a culprit or in-app).
const IGNORED_CRATES: &[&str] = &[
    "std",
    "core",
    "alloc",
    "tokio",
    "hyper",
    "hyper_util",
    "errscope",
    "__rustc",
];

/// The fingerprint's spelling of a native (Rust, C) function name.
pub fn normalize_function(name: &str) -> String {
    let name = name.trim();
    let demangled = looks_mangled(name)
        .then(|| rustc_demangle::try_demangle(name).ok())
        .flatten()
        .map(|d| format!("{d:#}"));
    let name = demangled.as_deref().unwrap_or(name);
    let name = clip(name, MAX_NAME);
    let name = strip_compiler_suffix(super::strip_symbol_hash(name));
    rewrite(name)
}

/// The crate a normalized name belongs to: `shop` for `shop::ldap::bind` and for
/// `<shop::Conn as core::fmt::Display>::fmt`; for a trait method on a type without a
/// crate (`<fn() as core::ops::FnOnce>::call_once`, `<&dyn core::ops::Fn as …>`) the
/// crate of the type, else of the trait. Empty for bare and C names.
pub(super) fn crate_of(name: &str) -> &str {
    let Some(rest) = name.strip_prefix('<') else {
        return path_crate(name).unwrap_or("");
    };
    let (self_ty, tr) = split_qualified(rest);
    let mut t = self_ty;
    loop {
        let before = t;
        for p in ["&", "*", "mut ", "const ", "dyn ", "impl ", "'static "] {
            t = t.trim_start_matches(p);
        }
        if t == before {
            break;
        }
    }
    path_crate(t)
        .or_else(|| tr.and_then(path_crate))
        .unwrap_or("")
}

/// Whether frames of this normalized name never count (std, the runtime, the agent).
pub(super) fn is_ignored(name: &str) -> bool {
    IGNORED_CRATES.contains(&crate_of(name))
        || name.starts_with("__rust")
        || name.starts_with("rust_begin_unwind")
        || name.starts_with("rust_panic")
}

/// A name without a path (`{closure}`, `main`): what DWARF has for an inlined function
/// of a `line-tables-only` build, or a C function.
pub(super) fn is_bare(name: &str) -> bool {
    !name.starts_with('<') && !name.contains("::")
}

fn looks_mangled(name: &str) -> bool {
    ["_ZN", "__ZN", "_R", "__R"]
        .iter()
        .any(|p| name.starts_with(p) && name.len() > p.len() + 1)
}

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Drops what the compiler or linker appends to a symbol: `.llvm.123`, `.cold`,
/// `.part.0`, `.isra.0`, `.constprop.0` (and rustc-demangle's ` (.llvm.123)`).
fn strip_compiler_suffix(name: &str) -> &str {
    let mut name = name;
    if let Some(pos) = name.find(" (.") {
        name = &name[..pos];
    }
    if let Some(pos) = name.find(".llvm.") {
        name = &name[..pos];
    }
    loop {
        let before = name;
        for suffix in [".cold", ".part", ".isra", ".constprop", ".lto_priv"] {
            if let Some(pos) = name.rfind(suffix) {
                let tail = &name[pos + suffix.len()..];
                if tail.is_empty()
                    || (tail.starts_with('.') && tail[1..].bytes().all(|c| c.is_ascii_digit()))
                {
                    name = &name[..pos];
                }
            }
        }
        if name == before {
            return name;
        }
    }
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// The crate of a path `krate::…`, if `s` is one.
fn path_crate(s: &str) -> Option<&str> {
    let end = s.bytes().position(|c| !is_ident_byte(c)).unwrap_or(s.len());
    (end > 0 && s[end..].starts_with("::")).then(|| &s[..end])
}

/// `T as Trait>::f` (after the `<`) into `T` and `Trait`.
fn split_qualified(rest: &str) -> (&str, Option<&str>) {
    let b = rest.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'<' => depth += 1,
            b'>' if i > 0 && b[i - 1] == b'-' => {}
            b'>' if depth == 0 => return (&rest[..i], None),
            b'>' => depth -= 1,
            b' ' if depth == 0 && rest[i..].starts_with(" as ") => {
                let tr = &rest[i + 4..];
                let end = tr.find('>').unwrap_or(tr.len());
                return (&rest[..i], Some(&tr[..end]));
            }
            _ => {}
        }
        i += 1;
    }
    (rest, None)
}

/// The end (exclusive) of the generic argument list opening at `b[start] == b'<'`.
fn skip_generic(b: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'<' => depth += 1,
            b'>' if i > 0 && b[i - 1] == b'-' => {}
            b'>' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// The end (exclusive) of a `{…}` segment opening at `start`, nested braces included.
fn brace_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &c) in b.iter().enumerate().skip(start).take(64) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// What a `{…}` path segment becomes: `None` drops it (shims).
fn brace_segment(seg: &str) -> Option<String> {
    let inner = seg.trim_start_matches('{').trim_end_matches('}');
    if inner.starts_with("shim") || inner.ends_with(".shim") {
        return None;
    }
    let name = inner.split('#').next().unwrap_or(inner);
    const BODIES: &[&str] = &["closure", "async", "coroutine", "generator", "gen_"];
    if BODIES.iter().any(|b| name.starts_with(b)) {
        return Some("{closure}".to_owned());
    }
    Some(format!("{{{name}}}"))
}

fn rewrite(s: &str) -> String {
    let b = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    // Open qualified paths: where their `<` sits in `out`, and whether ` as ` was seen.
    let mut open: Vec<(usize, bool)> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'<' => {
                let turbofish = out.ends_with(b"::");
                let after_name = out
                    .last()
                    .is_some_and(|&p| is_ident_byte(p) || p == b'}' || p == b']');
                if turbofish || after_name {
                    i = skip_generic(b, i);
                    if turbofish {
                        out.truncate(out.len() - 2);
                    }
                    continue;
                }
                open.push((out.len(), false));
                out.push(b'<');
            }
            b'>' if out.last() == Some(&b'-') => out.push(b'>'),
            b'>' => match open.pop() {
                Some((_, true)) => out.push(b'>'),
                // `<T>::f` is `T::f`.
                Some((at, false)) => {
                    out.remove(at);
                }
                None => {}
            },
            b'{' => match brace_end(b, i) {
                Some(end) => {
                    match brace_segment(&s[i..end]) {
                        Some(seg) => out.extend_from_slice(seg.as_bytes()),
                        None if out.ends_with(b"::") => out.truncate(out.len() - 2),
                        None => {}
                    }
                    i = end;
                    continue;
                }
                None => out.push(c),
            },
            // A v0 crate disambiguator: `shop[4f1c2d9a]::`.
            b'[' if out.last().is_some_and(|&p| is_ident_byte(p)) => {
                let hex = b[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_hexdigit())
                    .count();
                if hex > 0 && b.get(i + 1 + hex) == Some(&b']') {
                    i += hex + 2;
                    continue;
                }
                out.push(c);
            }
            c if c.is_ascii_whitespace() => {
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                let prev_ok = out
                    .last()
                    .is_some_and(|p| !matches!(p, b' ' | b',' | b'(' | b'<' | b'&' | b'['));
                let next_ok = b
                    .get(i)
                    .is_some_and(|n| !matches!(n, b',' | b')' | b'>' | b']'));
                if prev_ok && next_ok {
                    out.push(b' ');
                    if out.ends_with(b" as ")
                        && let Some(top) = open.last_mut()
                    {
                        top.1 = true;
                    }
                }
                continue;
            }
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real symbols of one small program (closure, async fn, async block, a generic
    /// inherent method, a trait impl, a generic function), built by rustc 1.95 with the
    /// legacy mangling and with `-C symbol-mangling-version=v0`, read with `nm`; and the
    /// DWARF names of its `line-tables-only` build. Each row: the names one function
    /// gets, and the fingerprint's spelling.
    const SPELLINGS: &[(&[&str], &str)] = &[
        (
            &[
                "_ZN4shop4load28_$u7b$$u7b$closure$u7d$$u7d$17h3ce1fe0fc0f0ab4eE",
                "_RNCNvCsbxQjNsTKZZh_4shop4load0B3_",
                "shop::load::{{closure}}::h3ce1fe0fc0f0ab4e",
                "shop::load::{{closure}}",
                "shop::load::{closure#0}",
                "shop[5f3c2ab1d9e0f412]::load::{closure#0}",
            ],
            "shop::load::{closure}",
        ),
        (
            // An async fn's body: a closure to the legacy mangling and to v0, `{async_fn#0}`
            // in DWARF since rustc 1.77, `{coroutine#0}` and `{generator#0}` before.
            &[
                "_ZN4shop5fetch28_$u7b$$u7b$closure$u7d$$u7d$17hf9c0c3776dce7937E",
                "_RNCNvCsbxQjNsTKZZh_4shop5fetch0B3_",
                "shop::fetch::{async_fn#0}",
                "shop::fetch::{coroutine#0}",
                "shop::fetch::{generator#0}",
                "shop::fetch::{{generator}}",
            ],
            "shop::fetch::{closure}",
        ),
        (
            &[
                "_ZN4shop4main28_$u7b$$u7b$closure$u7d$$u7d$17hb53c128c7a0bcba3E",
                "_RNCNvCsbxQjNsTKZZh_4shop4main0B3_",
                "shop::main::{async_block#0}",
                "shop::main::{async_block#1}",
            ],
            "shop::main::{closure}",
        ),
        (
            &[
                "_ZN4shop18Cache$LT$K$C$V$GT$3get17hca1b3072ce9c0266E",
                "_RNvMCsbxQjNsTKZZh_4shopINtB2_5CacheNtNtCslNYArtu3iFV_5alloc6string6StringyE3getB2_",
                "shop::Cache<K,V>::get",
                "<shop::Cache<K, V>>::get",
                "<shop::Cache<alloc::string::String, u64>>::get",
                "shop::Cache<alloc::string::String,u64>::get",
            ],
            "shop::Cache::get",
        ),
        (
            &[
                "_ZN49_$LT$shop..Conn$u20$as$u20$core..fmt..Display$GT$3fmt17h1ea51ffdbfcf6234E",
                "_RNvXs_CsbxQjNsTKZZh_4shopNtB4_4ConnNtNtCsgEmfK2I1SDS_4core3fmt7Display3fmt",
                "<shop::Conn as core::fmt::Display>::fmt",
                "<shop::Conn  as core::fmt::Display>::fmt::h1ea51ffdbfcf6234",
            ],
            "<shop::Conn as core::fmt::Display>::fmt",
        ),
        (
            &[
                "_ZN4shop8block_on17hb0a4f7e997c1c613E",
                "_RINvCsbxQjNsTKZZh_4shop8block_onNCNvB2_5fetch0EB2_",
                "shop::block_on::<shop::fetch::{closure#0}>",
                "shop::block_on",
            ],
            "shop::block_on",
        ),
        (
            &[
                "<shop::Cache<K,V> as core::fmt::Debug>::fmt",
                "<shop::Cache<alloc::string::String, u64> as core::fmt::Debug>::fmt",
            ],
            "<shop::Cache as core::fmt::Debug>::fmt",
        ),
        (
            &[
                "core::ops::function::FnOnce::call_once{{vtable.shim}}",
                "core::ops::function::FnOnce::call_once::{shim:vtable#0}",
            ],
            "core::ops::function::FnOnce::call_once",
        ),
        (
            &[
                "_RNvYFEuINtNtNtCsgEmfK2I1SDS_4core3ops8function6FnOnceuE9call_onceCsbxQjNsTKZZh_4shop",
                "<fn() as core::ops::function::FnOnce<()>>::call_once",
            ],
            "<fn() as core::ops::function::FnOnce>::call_once",
        ),
        (
            &[
                "shop::load.llvm.8714521983",
                "shop::load.cold",
                "shop::load.part.0",
            ],
            "shop::load",
        ),
        // DWARF names of a `line-tables-only` build: no path at all.
        (&["{async_fn#0}", "{closure#3}", "{{closure}}"], "{closure}"),
        (&["get<alloc::string::String, u64>", "get"], "get"),
        (
            &["block_on<shop::fetch::{async_fn_env#0}>", "block_on"],
            "block_on",
        ),
    ];

    #[test]
    fn every_spelling_of_one_function_is_one_name() {
        for (spellings, want) in SPELLINGS {
            for s in *spellings {
                assert_eq!(normalize_function(s), *want, "spelling {s}");
            }
        }
    }

    #[test]
    fn rustc_demangle_really_spells_them_apart() {
        // What the agent and the server's symbolicator see, before normalization.
        let legacy = "_ZN4shop18Cache$LT$K$C$V$GT$3get17hca1b3072ce9c0266E";
        let v0 =
            "_RNvMCsbxQjNsTKZZh_4shopINtB2_5CacheNtNtCslNYArtu3iFV_5alloc6string6StringyE3getB2_";
        let d = |s| format!("{:#}", rustc_demangle::demangle(s));
        assert_eq!(d(legacy), "shop::Cache<K,V>::get");
        assert_eq!(d(v0), "<shop::Cache<alloc::string::String, u64>>::get");
        let closure = |s| format!("{:#}", rustc_demangle::demangle(s));
        assert_eq!(
            closure("_ZN4shop4load28_$u7b$$u7b$closure$u7d$$u7d$17h3ce1fe0fc0f0ab4eE"),
            "shop::load::{{closure}}"
        );
        assert_eq!(
            closure("_RNCNvCsbxQjNsTKZZh_4shop4load0B3_"),
            "shop::load::{closure#0}"
        );
        assert!(
            format!("{}", rustc_demangle::demangle(v0)).contains("shop["),
            "v0 without {{:#}} keeps the crate disambiguator"
        );
    }

    #[test]
    fn different_functions_stay_apart() {
        let names = [
            "shop::load::{closure#0}",
            "shop::load",
            "shop::store::{closure#0}",
            "shop::Cache<K,V>::get",
            "shop::Cache<K,V>::put",
            "shop::Other<K>::get",
            "<shop::Conn as core::fmt::Display>::fmt",
            "<shop::Conn as core::fmt::Debug>::fmt",
            "<shop::Pool as core::fmt::Display>::fmt",
            "shop::block_on",
            "shop::main::{closure#0}::{closure#0}",
        ];
        let normalized: Vec<String> = names.iter().map(|n| normalize_function(n)).collect();
        for (i, a) in normalized.iter().enumerate() {
            for (j, b) in normalized.iter().enumerate() {
                assert!(
                    i == j || a != b,
                    "{} and {} both became {a}",
                    names[i],
                    names[j]
                );
            }
        }
    }

    #[test]
    fn crates_and_ignored_frames() {
        let cases = [
            ("shop::ldap::bind", "shop", false),
            ("<shop::Conn as core::fmt::Display>::fmt", "shop", false),
            (
                "<errscope::domain::DomainRun as core::future::future::Future>::poll",
                "errscope",
                true,
            ),
            ("errscope::capture_error", "errscope", true),
            (
                "<fn() as core::ops::function::FnOnce>::call_once",
                "core",
                true,
            ),
            (
                "<&dyn core::ops::function::Fn + core::marker::Sync as core::ops::function::FnOnce>::call_once",
                "core",
                true,
            ),
            ("<F as core::future::future::Future>::poll", "core", true),
            ("core::ops::function::FnOnce::call_once", "core", true),
            ("__rustc::rust_begin_unwind", "__rustc", true),
            ("errscope_collector::main", "errscope_collector", false),
            ("start_thread", "", false),
            ("{closure}", "", false),
        ];
        for (name, krate, ignored) in cases {
            assert_eq!(crate_of(name), krate, "{name}");
            assert_eq!(is_ignored(name), ignored, "{name}");
        }
    }

    #[test]
    fn odd_names_do_not_panic_and_stay_deterministic() {
        for odd in [
            "",
            "<",
            ">",
            "<<>>",
            "{",
            "}",
            "{{",
            "a<",
            "a::<",
            "<a as",
            "a[",
            "a[1",
            "_R",
            "_ZN",
            "->",
            "a -> b",
            "é<中>::{closure#0}",
            "{x#}",
            "::",
            "a<b>>::c",
        ] {
            let once = normalize_function(odd);
            assert_eq!(normalize_function(odd), once, "{odd:?}");
            let _ = crate_of(&once);
        }
        let long = format!("shop::f<{}>", "<".repeat(10_000));
        assert_eq!(normalize_function(&long), "shop::f");
    }
}
