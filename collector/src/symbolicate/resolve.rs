//! "Look an address up": one address of an image to its functions (the inlined ones
//! expanded), files and lines, through the image's SymCache.

use symbolic_symcache::SymCache;

/// One function at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Demangled, without the `::h0123…` hash.
    pub function: String,
    /// The source path the debug info records.
    pub abs_path: Option<String>,
    /// 1-based line.
    pub lineno: Option<u32>,
    /// 1-based column (from [`super::columns`]: SymCache keeps none).
    pub colno: Option<u32>,
}

/// The frames of `addr` (relative to the image's load address), outermost first: the
/// function the address is in, then each function inlined into it down to the innermost.
/// Empty when the SymCache does not cover the address.
pub fn lookup(cache: &SymCache<'_>, addr: u64) -> Vec<Resolved> {
    let mut out: Vec<Resolved> = cache
        .lookup(addr)
        .map(|loc| {
            let name = loc.function().name();
            let path = loc.file().map(|f| f.full_path()).filter(|p| !p.is_empty());
            Resolved {
                function: demangle(name),
                abs_path: path,
                lineno: Some(loc.line()).filter(|l| *l > 0),
                colno: None,
            }
        })
        .filter(|r| !r.function.is_empty() && r.function != "?")
        .collect();
    // SymCache yields the innermost inlinee first; Sentry lists callers before callees.
    out.reverse();
    out
}

/// Demangles a symbol and drops the `::h0123…` hash (and v0 crate disambiguators).
pub fn demangle(raw: &str) -> String {
    match rustc_demangle::try_demangle(raw) {
        Ok(d) => format!("{d:#}"),
        Err(_) => strip_hash(raw).to_owned(),
    }
}

/// Strips a trailing legacy hash from an already demangled name.
fn strip_hash(name: &str) -> &str {
    if let Some((head, hash)) = name.rsplit_once("::h")
        && hash.len() == 16
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return head;
    }
    name
}

/// `shop::ldap` for `shop::ldap::bind::{{closure}}`; none for trait impls and C symbols
/// (the agent's rule, so a frame symbolicated here groups as the agent would have sent it).
pub fn module_of(function: &str) -> Option<String> {
    if function.starts_with('<') {
        return None;
    }
    let mut segments: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut chars = function.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
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

/// A short display path, as the agent makes them: `src/main.rs`,
/// `tokio-1.54.1/src/runtime/...`, `library/std/...`.
pub fn short_path(abs: &str) -> String {
    if let Some(idx) = abs.find("/registry/src/") {
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
    // The collector does not know the build's working directory; a crate's `src/` is
    // where the agent's relative paths start when it runs from the crate root.
    if let Some(idx) = abs.rfind("/src/") {
        return abs[idx + 1..].to_owned();
    }
    abs.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_hash() {
        assert_eq!(
            demangle("_ZN4shop4ldap4bind17h0123456789abcdefE"),
            "shop::ldap::bind"
        );
        assert_eq!(
            demangle("shop::ldap::bind::h0123456789abcdef"),
            "shop::ldap::bind"
        );
        assert_eq!(demangle("__libc_start_call_main"), "__libc_start_call_main");
        assert_eq!(
            module_of("shop::ldap::bind::{{closure}}").as_deref(),
            Some("shop::ldap")
        );
        assert_eq!(module_of("<shop::A as core::fmt::Debug>::fmt"), None);
        assert_eq!(short_path("/home/u/shop/src/ldap.rs"), "src/ldap.rs");
        assert_eq!(
            short_path("/root/.cargo/registry/src/index.crates.io-1/tokio-1.54.1/src/rt.rs"),
            "tokio-1.54.1/src/rt.rs"
        );
        assert_eq!(
            short_path("/rustc/abcdef/library/std/src/rt.rs"),
            "library/std/src/rt.rs"
        );
    }
}
