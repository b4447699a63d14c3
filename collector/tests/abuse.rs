//! Hostile clients: malformed and abusive requests against the collector binary (bad
//! input), and the API's authentication, project isolation and handling of hostile
//! strings (security).
//!
//! `ERRSCOPE_LONG=1` repeats the bad-input table many times.

#[allow(dead_code, reason = "helpers shared with tests/collector.rs")]
mod util;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use util::*;

/// What the collector runs with in the bad-input scenario: short deadlines, so slow
/// clients are cut within the test's time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// A slow client that is still connected this long after it started was not cut.
const CUT_WITHIN: Duration = Duration::from_secs(15);
/// The collector's resident memory must stay under this through the whole table: the
/// largest body it accepts on the wire (20 MiB) and the largest it inflates (100 MiB),
/// a few times over for the copies and the allocator.
const PEAK_RSS_LIMIT_KB: u64 = 768 * 1024;

/// What a hostile request must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// This status from the collector, with a JSON `detail`.
    Json(u16),
    /// This status from the HTTP layer, before any handler ran (no JSON body).
    Bare(u16),
    /// The connection is cut before the client is done: closed without an answer
    /// (`None`), or after this answer (`Some`).
    Cut(Option<u16>),
}

/// One row of the table: what is written (each part after its pause) and what must happen.
struct Case {
    name: &'static str,
    writes: Vec<(Duration, Vec<u8>)>,
    expect: Expect,
}

/// Addresses and keys the requests are built from.
struct Target {
    addr: String,
    key: String,
    other_key: String,
}

impl Target {
    fn auth(&self) -> (&'static str, String) {
        (
            "X-Sentry-Auth",
            format!("Sentry sentry_version=7, sentry_key={}", self.key),
        )
    }

    /// An HTTP/1.1 request with `Host`, `Connection: close` and, unless `headers` frame
    /// the body themselves, `Content-Length`.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Vec<u8> {
        let mut out = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        )
        .into_bytes();
        let framed = headers.iter().any(|(k, _)| {
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
        });
        if !framed {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        for (k, v) in headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }

    /// An authenticated envelope request to project 1.
    fn envelope(&self, body: &[u8]) -> Vec<u8> {
        self.request("POST", "/api/1/envelope/", &[self.auth()], body)
    }

    /// An authenticated envelope request with a `Content-Encoding`.
    fn encoded(&self, encoding: &str, body: &[u8]) -> Vec<u8> {
        let headers = [self.auth(), ("Content-Encoding", encoding.to_owned())];
        self.request("POST", "/api/1/envelope/", &headers, body)
    }

    /// An authenticated store request to project 1.
    fn store(&self, body: &[u8]) -> Vec<u8> {
        self.request("POST", "/api/1/store/", &[self.auth()], body)
    }
}

fn at_once(bytes: Vec<u8>) -> Vec<(Duration, Vec<u8>)> {
    vec![(Duration::ZERO, bytes)]
}

/// `bytes` one at a time, `gap` apart.
fn trickle(bytes: &[u8], gap: Duration) -> Vec<(Duration, Vec<u8>)> {
    bytes.iter().map(|b| (gap, vec![*b])).collect()
}

/// An envelope with one item of type `ty` and a length-less payload.
fn one_item(ty: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = b"{}\n".to_vec();
    b.extend_from_slice(format!("{{\"type\":\"{ty}\"}}\n").as_bytes());
    b.extend_from_slice(payload);
    b.push(b'\n');
    b
}

/// An envelope whose one event is `payload`.
fn ev(payload: &[u8]) -> Vec<u8> {
    one_item("event", payload)
}

fn compress(mut w: impl std::io::Write, data: &[u8], times: usize) {
    for _ in 0..times {
        w.write_all(data).unwrap();
    }
}

fn gzip_of(data: &[u8], times: usize) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    compress(&mut e, data, times);
    e.finish().unwrap()
}

fn zlib_of(data: &[u8], times: usize) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    compress(&mut e, data, times);
    e.finish().unwrap()
}

fn deflate_of(data: &[u8], times: usize) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    compress(&mut e, data, times);
    e.finish().unwrap()
}

/// 200 MiB of zero bytes, brotli-compressed at quality 11 (329 bytes).
const BROTLI_BOMB: &str = concat!(
    "cbffff3ff82700e2b14020f7fe8fffff7ff04f00c4611180eefd1fffffffe09f0088c30200ddfb3ffeffffc1",
    "3f0110870500baf77ffcffff837f02200e0b0074effff8ffff07ff04401c1600e8defff1ffff0ffe0980382c",
    "00d0bdffe3ffff1ffc1300715800a07bffc7ffff3ff82700e2b00040f7fe8fffff7ff04f00c4610180eefd1f",
    "ffffffe09f0088c30200ddfb3ffeffffc13f0110870500baf77ffcffff837f02200e0b0074effff8ffff07ff",
    "04401c1600e8defff1ffff0ffe0980382c00d0bdffe3ffff1ffc1300715800a07bffc7ffff3ff82700e2b000",
    "40f7fe8fffff7ff04f00c4610180eefd1fffffffe09f0088c30200ddfb3ffeffffc13f0110870500baf77ffc",
    "ffff837f02200e0b0074effff8ffff07ff04401c1600e8defff1ffff0ffe0980382c00d0bdffe3ffff1ffc13",
    "00715800a07bff97ffff7ff82700e2b00040f7fe0f",
);

fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A chunked request whose chunks are written by hand.
fn chunked(t: &Target, chunks: &[u8]) -> Vec<u8> {
    let headers = [t.auth(), ("Transfer-Encoding", "chunked".to_owned())];
    t.request("POST", "/api/1/envelope/", &headers, chunks)
}

/// The bad-input table.
fn table(t: &Target) -> Vec<Case> {
    let mib = 1024 * 1024;
    let ten_mb = "x".repeat(10 * mib);
    let zeros = vec![0u8; mib];
    let good = r#"{"message":"fine"}"#;
    let deep_arrays = format!(
        r#"{{"extra":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut deep_objects = String::from(r#"{"message":"m","extra":"#);
    for _ in 0..65 {
        deep_objects.push_str(r#"{"a":"#);
    }
    deep_objects.push('1');
    deep_objects.push_str(&"}".repeat(66));
    let mut utf16 = vec![0xff, 0xfe];
    utf16.extend(good.encode_utf16().flat_map(u16::to_le_bytes));
    let gzip_bomb = gzip_of(&zeros, 200);
    let mut gzip_cut = gzip_of(good.as_bytes(), 50);
    gzip_cut.truncate(gzip_cut.len() / 2);
    let form = "sentry_key=abc&event=%7B%22message%22%3A%22m%22%7D";
    let multipart = "--b\r\nContent-Disposition: form-data; name=\"event\"\r\n\r\n{\"message\":\"m\"}\r\n--b--\r\n";
    let dsn_env = |key: &str, project: u32| {
        let mut b = format!(r#"{{"dsn":"http://{key}@{}/{project}"}}"#, t.addr).into_bytes();
        b.extend_from_slice(b"\n{\"type\":\"event\"}\n{\"message\":\"m\"}\n");
        b
    };
    let mut headers_200 = vec![t.auth()];
    headers_200.extend((0..200).map(|i| ("X-Filler", format!("value-{i}"))));
    let ct = |ct: &str, body: &[u8]| {
        t.request(
            "POST",
            "/api/1/envelope/",
            &[t.auth(), ("Content-Type", ct.to_owned())],
            body,
        )
    };
    let no_auth =
        |path: &str, extra: &[(&str, String)], body: &[u8]| t.request("POST", path, extra, body);
    let key_auth = |key: &str| {
        (
            "X-Sentry-Auth",
            format!("Sentry sentry_version=7, sentry_key={key}"),
        )
    };
    let mut rows: Vec<(&'static str, Vec<u8>, Expect)> = vec![
        // Framing.
        ("empty envelope", t.envelope(b""), Expect::Json(400)),
        ("whitespace-only envelope", t.envelope(b" \n\r\n "), Expect::Json(400)),
        ("truncated item header", t.envelope(b"{}\n{\"type\":\"ev"), Expect::Json(400)),
        ("truncated payload with a length", t.envelope(b"{}\n{\"type\":\"event\",\"length\":50}\n{\"message\":"), Expect::Json(400)),
        ("truncated payload without a length", t.envelope(&ev(b"{\"message\":\"ab")), Expect::Json(400)),
        ("length shorter than the payload", t.envelope(b"{}\n{\"type\":\"event\",\"length\":5}\n{\"message\":\"x\"}\n"), Expect::Json(400)),
        ("negative length", t.envelope(b"{}\n{\"type\":\"event\",\"length\":-1}\n{}\n"), Expect::Json(400)),
        ("length u64::MAX", t.envelope(b"{}\n{\"type\":\"event\",\"length\":18446744073709551615}\n{}\n"), Expect::Json(400)),
        ("length past u64", t.envelope(b"{}\n{\"type\":\"event\",\"length\":1e30}\n{}\n"), Expect::Json(400)),
        ("length a float", t.envelope(b"{}\n{\"type\":\"event\",\"length\":2.5}\n{}\n"), Expect::Json(400)),
        ("length of an unknown item past the end", t.envelope(b"{}\n{\"type\":\"attachment\",\"length\":4096}\nabc\n"), Expect::Json(400)),
        ("item header without type", t.envelope(b"{}\n{\"length\":2}\n{}\n"), Expect::Json(400)),
        ("item header an array", t.envelope(b"{}\n[\"event\"]\n{}\n"), Expect::Json(400)),
        ("envelope header an array", t.envelope(b"[1]\n{\"type\":\"event\"}\n{}\n"), Expect::Json(400)),
        ("envelope header a string", t.envelope(b"\"hello\"\n{\"type\":\"event\"}\n{}\n"), Expect::Json(400)),
        ("10 MB envelope header", t.envelope(format!("{{\"x\":\"{ten_mb}\"}}\n").as_bytes()), Expect::Json(400)),
        ("10 MB item header", t.envelope(format!("{{}}\n{{\"type\":\"event\",\"x\":\"{ten_mb}\"}}\n{{}}\n").as_bytes()), Expect::Json(400)),
        ("NUL bytes for newlines", t.envelope(b"{}\0{\"type\":\"event\"}\0{}\0"), Expect::Json(400)),
        ("CR-only line ends", t.envelope(b"{}\r{\"type\":\"event\"}\r{}\r"), Expect::Json(400)),
        // Text encoding.
        ("invalid UTF-8 in an event", t.envelope(&ev(b"{\"message\":\"\xc3\x28\"}")), Expect::Json(400)),
        ("invalid UTF-8 in the envelope header", t.envelope(b"{\"dsn\":\"\xff\xfe\"}\n"), Expect::Json(400)),
        ("overlong UTF-8 encoding", t.envelope(&ev(b"{\"message\":\"\xc0\xaf\"}")), Expect::Json(400)),
        ("UTF-16 event on store", t.store(&utf16), Expect::Json(400)),
        ("byte-order mark before the event", t.store(format!("\u{feff}{good}").as_bytes()), Expect::Json(400)),
        ("lone surrogate in the message", t.envelope(&ev(br#"{"message":"\ud800"}"#)), Expect::Json(400)),
        ("lone surrogate in an untyped field", t.envelope(&ev(br#"{"message":"m","extra":{"a":"\udc00x"}}"#)), Expect::Json(400)),
        ("raw control character in a string", t.envelope(&ev(b"{\"message\":\"a\x01b\"}")), Expect::Json(400)),
        // Numbers.
        ("NaN timestamp", t.envelope(&ev(b"{\"timestamp\":NaN}")), Expect::Json(400)),
        ("Infinity timestamp", t.envelope(&ev(b"{\"timestamp\":Infinity}")), Expect::Json(400)),
        ("-Infinity in an untyped field", t.envelope(&ev(b"{\"extra\":{\"n\":-Infinity}}")), Expect::Json(400)),
        ("timestamp 1e999", t.envelope(&ev(b"{\"timestamp\":1e999}")), Expect::Json(400)),
        ("timestamp 1e300", t.envelope(&ev(b"{\"timestamp\":1e300}")), Expect::Json(400)),
        ("1e999 in an untyped field", t.envelope(&ev(b"{\"message\":\"m\",\"extra\":{\"n\":1e999}}")), Expect::Json(400)),
        ("400-digit integer in an untyped field", t.envelope(&ev(format!("{{\"message\":\"m\",\"extra\":{{\"n\":1{}}}}}", "0".repeat(400)).as_bytes())), Expect::Json(400)),
        ("client_report quantity past i64", t.envelope(&one_item("client_report", br#"{"discarded_events":[{"reason":"r","category":"c","quantity":1e20}]}"#)), Expect::Json(400)),
        ("counts count past i64", t.envelope(&one_item("errscope.counts", br#"{"counts":[{"id":"5f0c2b6a9d7e4f1a8b3c2d1e0f9a8b7c","event_id":"0123456789abcdef0123456789abcdef","count":9223372036854775808,"start":1,"end":2}]}"#)), Expect::Json(400)),
        // Structure.
        ("objects nested 66 deep", t.envelope(&ev(deep_objects.as_bytes())), Expect::Json(400)),
        ("arrays nested 100000 deep", t.envelope(&ev(deep_arrays.as_bytes())), Expect::Json(400)),
        ("arrays nested 100000 deep on store", t.store(deep_arrays.as_bytes()), Expect::Json(400)),
        ("event an array", t.envelope(&ev(b"[{\"message\":\"m\"}]")), Expect::Json(400)),
        ("garbage after the event", t.envelope(&ev(b"{\"message\":\"m\"}garbage")), Expect::Json(400)),
        ("two events on store", t.store(format!("{good}{good}").as_bytes()), Expect::Json(400)),
        ("an envelope on store", t.store(&ev(good.as_bytes())), Expect::Json(400)),
        ("empty store body", t.store(b""), Expect::Json(400)),
        ("event_id of 33 hex digits", t.envelope(&ev(br#"{"event_id":"0123456789abcdef0123456789abcdef0"}"#)), Expect::Json(400)),
        ("timestamp on day 45 of month 13", t.envelope(&ev(br#"{"timestamp":"2026-13-45T99:99:99Z"}"#)), Expect::Json(400)),
        ("empty level", t.envelope(&ev(br#"{"level":""}"#)), Expect::Json(400)),
        ("tags a number", t.envelope(&ev(br#"{"tags":42}"#)), Expect::Json(400)),
        // Sizes.
        ("10 MB string in an event", t.envelope(&ev(format!("{{\"message\":\"{ten_mb}\"}}").as_bytes())), Expect::Json(413)),
        ("10 MB string on store", t.store(format!("{{\"message\":\"{ten_mb}\"}}").as_bytes()), Expect::Json(413)),
        ("more than 20 MiB on the wire", t.envelope(&vec![b' '; 21 * mib]), Expect::Json(413)),
        ("Content-Length of 30 MiB, 10 bytes sent", t.request("POST", "/api/1/envelope/", &[t.auth(), ("Content-Length", (30 * mib).to_string())], b"0123456789"), Expect::Json(413)),
        ("100 KB query string", t.request("POST", &format!("/api/1/envelope/?sentry_key={}", "k".repeat(100_000)), &[], good.as_bytes()), Expect::Bare(414)),
        ("10 MB query string", t.request("POST", &format!("/api/1/envelope/?sentry_key={ten_mb}"), &[], good.as_bytes()), Expect::Bare(431)),
        ("1 MB header", t.request("POST", "/api/1/envelope/", &[t.auth(), ("X-Junk", "j".repeat(mib))], good.as_bytes()), Expect::Bare(431)),
        ("200 headers", t.request("POST", "/api/1/envelope/", &headers_200, good.as_bytes()), Expect::Bare(431)),
        // Compression.
        ("gzip bomb: 200 MiB of zeros", t.encoded("gzip", &gzip_bomb), Expect::Json(413)),
        ("gzip bomb on store: 10 MiB of zeros", t.request("POST", "/api/1/store/", &[t.auth(), ("Content-Encoding", "gzip".into())], &gzip_of(&zeros, 10)), Expect::Json(413)),
        ("zlib deflate bomb", t.encoded("deflate", &zlib_of(&zeros, 200)), Expect::Json(413)),
        ("raw deflate bomb", t.encoded("deflate", &deflate_of(&zeros, 200)), Expect::Json(413)),
        ("brotli bomb", t.encoded("br", &unhex(BROTLI_BOMB)), Expect::Json(413)),
        ("gzip of a 10 MB event", t.encoded("gzip", &gzip_of(&ev(format!("{{\"message\":\"{ten_mb}\"}}").as_bytes()), 1)), Expect::Json(413)),
        ("corrupt gzip", t.encoded("gzip", b"\x1f\x8b\x08\x00garbage-garbage-garbage"), Expect::Json(400)),
        ("truncated gzip", t.encoded("gzip", &gzip_cut), Expect::Json(400)),
        ("corrupt brotli", t.encoded("br", b"\xff\xff\xff\xff not brotli at all"), Expect::Json(400)),
        ("gzip declared, plain body", t.encoded("gzip", &ev(good.as_bytes())), Expect::Json(400)),
        ("gzip declared, empty body", t.encoded("gzip", b""), Expect::Json(400)),
        ("Content-Encoding zstd", t.encoded("zstd", &ev(good.as_bytes())), Expect::Json(415)),
        ("Content-Encoding gzip, br", t.encoded("gzip, br", &gzip_of(&ev(good.as_bytes()), 1)), Expect::Json(415)),
        ("Content-Encoding 1000 times gzip", t.encoded(&vec!["gzip"; 1000].join(","), b"x"), Expect::Json(415)),
        ("Content-Encoding not ASCII", {
            let mut r = t.encoded("gzip", b"x");
            let at = memchr::memmem::find(&r, b"Content-Encoding: gzip").unwrap() + 18;
            r[at..at + 4].copy_from_slice(b"\xe9\xff\xfe\xfd");
            r
        }, Expect::Json(415)),
        // Content types the collector does not read: the body still has to be an envelope.
        ("form-encoded body", ct("application/x-www-form-urlencoded", form.as_bytes()), Expect::Json(400)),
        ("multipart body", ct("multipart/form-data; boundary=b", multipart.as_bytes()), Expect::Json(400)),
        ("HTML body", ct("text/html", b"<html><body>hi</body></html>"), Expect::Json(400)),
        ("XML as application/json on store", t.request("POST", "/api/1/store/", &[t.auth(), ("Content-Type", "application/json".into())], b"<event><message>m</message></event>"), Expect::Json(400)),
        // Keys.
        ("no key", no_auth("/api/1/envelope/", &[], &ev(good.as_bytes())), Expect::Json(401)),
        ("no key on store", no_auth("/api/1/store/", &[], good.as_bytes()), Expect::Json(401)),
        ("forged key", no_auth("/api/1/envelope/", &[key_auth("0123456789abcdef0123456789abcdef")], &ev(good.as_bytes())), Expect::Json(401)),
        ("empty key", no_auth("/api/1/envelope/", &[key_auth("")], &ev(good.as_bytes())), Expect::Json(401)),
        ("SQL in the key", no_auth("/api/1/envelope/", &[key_auth("' OR '1'='1")], &ev(good.as_bytes())), Expect::Json(401)),
        ("SQL in the query key", no_auth("/api/1/store/?sentry_key=x'%20OR%201=1--", &[], good.as_bytes()), Expect::Json(401)),
        ("10 KB of junk in X-Sentry-Auth", no_auth("/api/1/envelope/", &[("X-Sentry-Auth", "Sentry ".to_owned() + &"junk,".repeat(2000))], &ev(good.as_bytes())), Expect::Json(401)),
        ("forged key in the DSN", no_auth("/api/1/envelope/", &[], &dsn_env("ffffffffffffffffffffffffffffffff", 1)), Expect::Json(401)),
        ("DSN that is not a URL", no_auth("/api/1/envelope/", &[], b"{\"dsn\":\"not a url\"}\n{\"type\":\"event\"}\n{}\n"), Expect::Json(401)),
        ("other project's key in the header", no_auth("/api/1/envelope/", &[key_auth(&t.other_key)], &ev(good.as_bytes())), Expect::Json(403)),
        ("other project's key in the query", no_auth(&format!("/api/1/store/?sentry_key={}", t.other_key), &[], good.as_bytes()), Expect::Json(403)),
        ("other project's key in the DSN", no_auth("/api/1/envelope/", &[], &dsn_env(&t.other_key, 2)), Expect::Json(403)),
        ("project 1's key for project 2", no_auth("/api/2/store/", &[key_auth(&t.key)], good.as_bytes()), Expect::Json(403)),
        ("project 1's key for project 999", no_auth("/api/999/envelope/", &[key_auth(&t.key)], &ev(good.as_bytes())), Expect::Json(403)),
        ("project id 0", t.request("POST", "/api/0/envelope/", &[t.auth()], &ev(good.as_bytes())), Expect::Json(400)),
        ("negative project id", t.request("POST", "/api/-1/envelope/", &[t.auth()], &ev(good.as_bytes())), Expect::Json(400)),
        ("project id past i64", t.request("POST", "/api/99999999999999999999/envelope/", &[t.auth()], &ev(good.as_bytes())), Expect::Json(400)),
        ("SQL in the project id", t.request("POST", "/api/1%20OR%201=1/envelope/", &[t.auth()], &ev(good.as_bytes())), Expect::Json(400)),
        ("project id not UTF-8", t.request("POST", "/api/%FF%FE/store/", &[t.auth()], good.as_bytes()), Expect::Json(400)),
        // HTTP.
        ("GET on the envelope route", t.request("GET", "/api/1/envelope/", &[t.auth()], b""), Expect::Json(405)),
        ("DELETE on the store route", t.request("DELETE", "/api/1/store/", &[t.auth()], b""), Expect::Json(405)),
        ("path traversal from ingestion to the API", t.request("POST", "/api/1/envelope/../../0/projects/", &[t.auth()], b"{\"name\":\"x\"}"), Expect::Json(404)),
        ("Content-Length and chunked together", t.request("POST", "/api/1/envelope/", &[t.auth(), ("Content-Length", "5".into()), ("Transfer-Encoding", "chunked".into())], b"0\r\n\r\n"), Expect::Bare(400)),
        ("two different Content-Lengths", t.request("POST", "/api/1/envelope/", &[t.auth(), ("Content-Length", "5".into()), ("Content-Length", "6".into())], b"{}\n{}\n"), Expect::Bare(400)),
        ("invalid chunk size", chunked(t, b"zz\r\n{}\r\n0\r\n\r\n"), Expect::Json(400)),
        ("chunk size past u64", chunked(t, b"fffffffffffffffffffff\r\n{}\r\n0\r\n\r\n"), Expect::Json(400)),
        ("garbage request line", b"HELLO THERE\r\n\r\n".to_vec(), Expect::Bare(400)),
        ("NUL in a header value", t.request("POST", "/api/1/envelope/", &[t.auth(), ("X-Evil", "a\0b".into())], b"{}"), Expect::Bare(400)),
        ("TLS handshake on plain HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), Expect::Bare(400)),
    ];
    // Expect: 100-continue with a forged key is refused before the body is sent.
    rows.push((
        "Expect: 100-continue with a forged key",
        t.request(
            "POST",
            "/api/1/envelope/",
            &[
                key_auth("0123456789abcdef0123456789abcdef"),
                ("Expect", "100-continue".into()),
                ("Content-Length", "1000".into()),
            ],
            b"",
        ),
        Expect::Json(401),
    ));
    let mut cases: Vec<Case> = rows
        .into_iter()
        .map(|(name, bytes, expect)| Case {
            name,
            writes: at_once(bytes),
            expect,
        })
        .collect();
    cases.extend(slow_cases(t));
    cases
}

/// Slow clients: each must be cut off by the collector's deadlines.
fn slow_cases(t: &Target) -> Vec<Case> {
    let gap = Duration::from_millis(100);
    let head_only = |len: &str| {
        format!(
            "POST /api/1/envelope/ HTTP/1.1\r\nHost: {}\r\nX-Sentry-Auth: Sentry sentry_key={}\r\nContent-Length: {len}\r\n\r\n",
            t.addr, t.key
        )
        .into_bytes()
    };
    // An envelope without events: answered 200, nothing stored.
    let mut keep_alive = t.envelope(b"{}\n");
    let at = memchr::memmem::find(&keep_alive, b"Connection: close").unwrap();
    keep_alive[at..at + 17].copy_from_slice(b"Connection: k-a  ");
    let mut body_trickle = vec![(Duration::ZERO, head_only("400"))];
    body_trickle.extend(trickle(&[b' '; 400], gap));
    let mut chunk_trickle = vec![(
        Duration::ZERO,
        format!(
            "POST /api/1/envelope/ HTTP/1.1\r\nHost: {}\r\nX-Sentry-Auth: Sentry sentry_key={}\r\nTransfer-Encoding: chunked\r\n\r\n",
            t.addr, t.key
        )
        .into_bytes(),
    )];
    chunk_trickle.extend((0..400).map(|_| (gap, b"1\r\n \r\n".to_vec())));
    vec![
        Case {
            name: "request head trickled a byte per 100 ms",
            writes: trickle(&t.envelope(&ev(b"{}")), gap),
            expect: Expect::Cut(None),
        },
        Case {
            name: "connection opened, nothing sent",
            writes: vec![],
            expect: Expect::Cut(None),
        },
        Case {
            name: "keep-alive connection left idle",
            writes: at_once(keep_alive),
            expect: Expect::Cut(Some(200)),
        },
        Case {
            name: "body trickled a byte per 100 ms",
            writes: body_trickle,
            expect: Expect::Cut(Some(408)),
        },
        Case {
            name: "chunked body trickled a chunk per 100 ms",
            writes: chunk_trickle,
            expect: Expect::Cut(Some(408)),
        },
        Case {
            name: "body announced, never sent",
            writes: at_once(head_only("1000")),
            expect: Expect::Cut(Some(408)),
        },
    ]
}

/// What a case got, judged against what it should have.
fn judge(case: &Case, raw: &Raw) -> Result<(), String> {
    let status = raw.status();
    let detail = || {
        serde_json::from_slice::<Value>(raw.body())
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_owned))
            .filter(|d| !d.is_empty())
    };
    let body = raw.body();
    let seen = format!(
        "status {status:?}, closed after {:?}, wrote all {}, body {:?}",
        raw.closed_after,
        raw.wrote_all,
        String::from_utf8_lossy(&body[..body.len().min(200)])
    );
    match case.expect {
        Expect::Json(want) => {
            if status != Some(want) || detail().is_none() {
                return Err(format!("want {want} with a JSON detail; got {seen}"));
            }
        }
        Expect::Bare(want) => {
            if status != Some(want) {
                return Err(format!("want {want}; got {seen}"));
            }
        }
        Expect::Cut(want) => {
            let cut = raw.closed_after.is_some_and(|d| d < CUT_WITHIN);
            // A trickling client must not get to send everything.
            let finished = raw.wrote_all && case.writes.len() > 1;
            if !cut || finished || status != want {
                return Err(format!(
                    "want a cut connection, answer {want:?}; got {seen}"
                ));
            }
            if want.is_some_and(|s| s != 200) && detail().is_none() {
                return Err(format!("want a JSON detail; got {seen}"));
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    tried: u64,
    answered_4xx: u64,
    timed_out: u64,
    failures: Vec<String>,
}

impl Tally {
    fn add(&mut self, case: &Case, raw: &Raw) {
        self.tried += 1;
        match judge(case, raw) {
            Err(e) => self.failures.push(format!("{}: {e}", case.name)),
            Ok(()) if matches!(case.expect, Expect::Cut(_)) => self.timed_out += 1,
            Ok(()) => self.answered_4xx += 1,
        }
    }
}

/// A good event, sent between the bad requests: it must be stored.
async fn send_good(http: &reqwest::Client, base: &str, key: &str, n: u64) -> String {
    let id = format!("{:032x}", 0xabc0_0000_0000u64 + n);
    let body = envelope(&[event(&id, "checkout", &format!("good {n}"))]);
    let r = http
        .post(format!("{base}/api/1/envelope/?sentry_key={key}"))
        .body(body)
        .send()
        .await
        .expect("good event sent");
    assert_eq!(r.status(), 200, "good event {n}: {:?}", r.text().await);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_good_events_are_kept() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let c = spawn_binary(
        dir.path(),
        &[
            "--header-timeout-secs",
            &HEADER_TIMEOUT.as_secs().to_string(),
            "--body-timeout-secs",
            &BODY_TIMEOUT.as_secs().to_string(),
            // Every good event stays looked up-able (they share one issue).
            "--max-events-per-issue",
            "1000000",
        ],
    )
    .await;
    let pid = c.child.id().expect("collector pid");
    let key = c
        .dsn
        .as_deref()
        .and_then(|d| d.split("//").nth(1))
        .and_then(|d| d.split('@').next())
        .expect("a DSN")
        .to_owned();
    let http = reqwest::Client::new();
    let other: Value = http
        .post(format!("{}/api/0/projects/", c.base))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "other"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(other["id"], 2, "{other}");
    let other_key = other["dsn"].as_str().unwrap()["http://".len()..]
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let t = std::sync::Arc::new(Target {
        addr: c.base.trim_start_matches("http://").to_owned(),
        key: key.clone(),
        other_key,
    });
    let rounds = if long() { 25 } else { 1 };
    let mut tally = Tally::default();
    let mut good = Vec::new();
    let mut rss_after_round = Vec::new();
    for round in 0..rounds {
        let cases = table(&t);
        let (slow, fast): (Vec<Case>, Vec<Case>) = cases
            .into_iter()
            .partition(|c| matches!(c.expect, Expect::Cut(_)));
        assert!(fast.len() >= 60, "{} fast cases", fast.len());
        // Slow clients run alongside everything else: a crowd of head tricklers and one
        // of each slow case.
        let mut slow_tasks = Vec::new();
        for case in slow {
            let addr = t.addr.clone();
            slow_tasks.push(tokio::spawn(async move {
                let raw = raw_exchange(&addr, case.writes.clone(), CUT_WITHIN * 2).await;
                (case, raw)
            }));
        }
        let crowd: Vec<_> = (0..200)
            .map(|_| {
                let addr = t.addr.clone();
                let head = trickle(&t.envelope(b"{}"), Duration::from_millis(100));
                tokio::spawn(async move { raw_exchange(&addr, head, CUT_WITHIN * 2).await })
            })
            .collect();
        for case in &fast {
            let raw = raw_exchange(&t.addr, case.writes.clone(), Duration::from_secs(60)).await;
            tally.add(case, &raw);
            good.push(send_good(&http, &c.base, &key, good.len() as u64).await);
        }
        for task in slow_tasks {
            let (case, raw) = task.await.unwrap();
            tally.add(&case, &raw);
            good.push(send_good(&http, &c.base, &key, good.len() as u64).await);
        }
        let crowd_case = Case {
            name: "200 connections trickling their heads at once",
            writes: trickle(b"x", Duration::ZERO),
            expect: Expect::Cut(None),
        };
        let mut crowd_cut = 0;
        for task in crowd {
            let raw = task.await.unwrap();
            if judge(&crowd_case, &raw).is_ok() {
                crowd_cut += 1;
            } else {
                tally.failures.push(format!(
                    "{} (round {round}): {:?}",
                    crowd_case.name,
                    judge(&crowd_case, &raw)
                ));
            }
        }
        tally.tried += 1;
        if crowd_cut == 200 {
            tally.timed_out += 1;
        }
        rss_after_round.push(memory_kb(pid).1);
    }
    let (peak_rss_kb, rss_kb) = memory_kb(pid);
    // Every good event is stored, and nothing from a bad request is.
    let (_, stats) = api_at(&http, &c.base, "/api/0/projects/1/stats/").await;
    let mut good_stored = 0;
    for id in &good {
        let r = http
            .get(format!("{}/api/0/projects/1/events/{id}/", c.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            good_stored += 1;
        }
    }
    let metrics = http
        .get(format!("{}/metrics", c.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    eprintln!(
        "reliability: scenario=bad-input rounds={rounds} tried={} answered_4xx={} timed_out={} good_sent={} good_stored={good_stored} events_stored={} peak_rss_kb={peak_rss_kb} rss_kb={rss_kb} secs={:.1}",
        tally.tried,
        tally.answered_4xx,
        tally.timed_out,
        good.len(),
        stats["events"],
        started.elapsed().as_secs_f64()
    );
    assert!(
        tally.failures.is_empty(),
        "{} of {} cases went wrong:\n{}",
        tally.failures.len(),
        tally.tried,
        tally.failures.join("\n")
    );
    assert_eq!(tally.answered_4xx + tally.timed_out, tally.tried);
    assert_eq!(good_stored, good.len());
    assert_eq!(stats["events"], good.len() as u64, "{stats}");
    assert!(
        metrics.contains("errscope_requests_rejected_total{reason=\"timeout\"}"),
        "{metrics}"
    );
    assert!(
        peak_rss_kb < PEAK_RSS_LIMIT_KB,
        "peak RSS {peak_rss_kb} KiB (after each round: {rss_after_round:?})"
    );
    // Repeating the table does not make the collector grow: the last round ends within
    // 64 MiB of the first.
    let first = rss_after_round[0];
    let last = *rss_after_round.last().unwrap();
    assert!(
        last < first + 64 * 1024,
        "RSS after each round: {rss_after_round:?}"
    );
}

/// Every `(method, path)` the router serves under `/api/0/`, read from the router's source
/// so that a route added later is covered without editing this test.
fn api_routes() -> Vec<(String, String)> {
    let src = include_str!("../src/lib.rs");
    let mut routes = Vec::new();
    for call in src.split(".route(").skip(1) {
        // The call's text: up to its closing parenthesis.
        let mut depth = 1;
        let end = call
            .char_indices()
            .find_map(|(i, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(i)
            })
            .expect("a closed .route( call");
        let call = &call[..end];
        let path = call.split('"').nth(1).expect("a path literal");
        if !path.starts_with("/api/0/") {
            continue;
        }
        let handlers = &call[call.find(',').expect("a method router")..];
        for method in ["get", "post", "put", "patch", "delete"] {
            // `get(handler)` or `.post(handler)`, not `api::get_event`.
            let called = handlers.match_indices(&format!("{method}(")).any(|(i, _)| {
                !handlers[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
            });
            if called {
                routes.push((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    routes
}

/// Request headers, as name and value.
type Headers = Vec<(&'static str, String)>;

/// A concrete URL path for a route template.
/// Route parts naming what the walk does not create: with the token such a route answers
/// 404 (no such thing) or 400 (the walk's body is not one), past authentication.
const ABSENT: &[&str] = &["/attachments/minidump/"];

fn fill(template: &str) -> String {
    template
        .replace("{pid}", "1")
        .replace("{id}", "1")
        .replace("{event_id}", &event_id(1))
        .replace("{key}", "environment")
}

#[tokio::test]
async fn every_api_route_refuses_requests_without_a_token_or_session() {
    let s = server().await;
    assert_eq!(
        s.post_envelope(envelope(&[event(&event_id(1), "f", "v")]))
            .await
            .status(),
        200
    );
    let routes = api_routes();
    assert!(
        routes.len() >= 11,
        "routes read from the router: {routes:?}"
    );
    assert!(routes.contains(&("PUT".into(), "/api/0/issues/{id}/".into())));
    assert!(routes.contains(&("POST".into(), "/api/0/projects/".into())));
    // A session that was never issued, one that was and has ended, a wrong token, the
    // right token where it is not read, the admin password as Basic auth.
    let login = s
        .http
        .post(format!("{}/auth/login", s.base))
        .json(&json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let ended = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let r = s
        .http
        .post(format!("{}/auth/logout", s.base))
        .header("cookie", &ended)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let basic = format!("Basic {}", b64(&format!("admin:{PASSWORD}")));
    let attempts: Vec<(&str, Headers, &str)> = vec![
        ("no credentials", vec![], ""),
        (
            "wrong token",
            vec![("authorization", "Bearer wrong".into())],
            "",
        ),
        (
            "empty bearer",
            vec![("authorization", "Bearer ".into())],
            "",
        ),
        (
            "token as Basic",
            vec![("authorization", format!("Basic {TOKEN}"))],
            "",
        ),
        ("password as Basic", vec![("authorization", basic)], ""),
        ("token in the query", vec![], "?token=test-admin-token"),
        (
            "forged cookie",
            vec![(
                "cookie",
                "errscope_session=0123456789abcdef0123456789abcdef".into(),
            )],
            "",
        ),
        ("ended session", vec![("cookie", ended.clone())], ""),
        (
            "empty cookie",
            vec![("cookie", "errscope_session=".into())],
            "",
        ),
        (
            "SQL in the cookie",
            vec![("cookie", "errscope_session=' OR '1'='1".into())],
            "",
        ),
        (
            "SQL in the token",
            vec![("authorization", "Bearer ' OR 1=1 --".into())],
            "",
        ),
        (
            "token in X-Sentry-Auth",
            vec![("x-sentry-auth", format!("Sentry sentry_key={}", s.key))],
            "",
        ),
    ];
    let mut refused = 0;
    let mut real = Vec::new();
    for (method, template) in &routes {
        let path = fill(template);
        let method: reqwest::Method = method.parse().unwrap();
        for (what, headers, query) in &attempts {
            let mut req = s
                .http
                .request(method.clone(), format!("{}{path}{query}", s.base))
                .header("x-errscope-request", "1")
                .json(&json!({"name": "intruder", "status": "resolved"}));
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 401, "{method} {path} with {what}: {body}");
            assert!(body["detail"].is_string(), "{method} {path}: {body}");
            refused += 1;
        }
        // The same path without its trailing slash serves nothing either.
        let r = s
            .http
            .request(
                method.clone(),
                format!("{}{}", s.base, path.trim_end_matches('/')),
            )
            .send()
            .await
            .unwrap();
        assert!(
            matches!(r.status().as_u16(), 401 | 404),
            "{method} {path} without the slash: {}",
            r.status()
        );
        // The route is real: with the token it gets past authentication. (The alert
        // fields make the body a valid rule; the test message goes to a closed port.)
        let r = s
            .http
            .request(method.clone(), format!("{}{path}", s.base))
            .bearer_auth(TOKEN)
            .json(&json!({"name": format!("p-{}", refused), "status": "resolved",
                "trigger": "new_issue", "channel": {"type": "webhook", "url": "http://127.0.0.1:9/"}}))
            .send()
            .await
            .unwrap();
        let st = r.status();
        // Routes of things the walk does not create answer for the thing, not for the caller.
        let absent = ABSENT.iter().any(|a| template.contains(a));
        if !(st.is_success() || absent && matches!(st.as_u16(), 400 | 404)) {
            real.push(format!("{method} {path} with the token: {st}"));
        }
    }
    assert!(real.is_empty(), "{real:#?}");
    // Nothing was changed by the refused requests.
    let (_, projects) = s.api("/api/0/projects/").await;
    assert!(
        projects
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "intruder"),
        "{projects}"
    );
    eprintln!(
        "reliability: scenario=security-auth routes={} attempts={} refused_401={refused}",
        routes.len(),
        routes.len() * attempts.len()
    );
    s.stop().await;
}

/// Standard base64 with padding (for a Basic credential).
fn b64(s: &str) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Creates a project through the API; its id and key.
async fn create_project(s: &Server, name: &str) -> (i64, String) {
    let r = s
        .http
        .post(format!("{}/api/0/projects/", s.base))
        .bearer_auth(TOKEN)
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let p: Value = r.json().await.unwrap();
    let key = p["dsn"].as_str().unwrap()["http://".len()..]
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    (p["id"].as_i64().unwrap(), key)
}

#[tokio::test]
async fn a_project_key_writes_only_to_its_own_project() {
    let s = server().await;
    let (a, key_a) = (1, s.key.clone());
    let (b, key_b) = create_project(&s, "b").await;
    let host = s.base.trim_start_matches("http://").to_owned();
    let mut n = 0u64;
    let mut next_id = || {
        n += 1;
        event_id(n)
    };
    let by_dsn = |key: &str, project: i64, id: &str| {
        format!(
            "{}\n{}\n{}\n",
            json!({ "dsn": format!("http://{key}@{host}/{project}") }),
            json!({"type": "event"}),
            event(id, "f", "v")
        )
    };
    let mut attempts = 0;
    // (key, project in the URL, how the key is given) -> status.
    for (key, to, own) in [(&key_a, b, false), (&key_b, a, false), (&key_a, a, true)] {
        let expected = if own { 200 } else { 403 };
        for how in ["header", "query", "dsn", "store"] {
            let id = next_id();
            let url = format!("{}/api/{to}/envelope/", s.base);
            let req = match how {
                "header" => s
                    .http
                    .post(&url)
                    .header("x-sentry-auth", format!("Sentry sentry_key={key}"))
                    .body(envelope(&[event(&id, "f", "v")])),
                "query" => s
                    .http
                    .post(format!("{url}?sentry_key={key}"))
                    .body(envelope(&[event(&id, "f", "v")])),
                "dsn" => s.http.post(&url).body(by_dsn(key, to, &id)),
                _ => s
                    .http
                    .post(format!("{}/api/{to}/store/?sentry_key={key}", s.base))
                    .body(event(&id, "f", "v").to_string()),
            };
            let r = req.send().await.unwrap();
            assert_eq!(
                r.status(),
                expected,
                "key of {} to {to} by {how}",
                if *key == key_a { a } else { b }
            );
            attempts += 1;
        }
    }
    // The DSN of the project in the URL does not help a key given in the header.
    let id = next_id();
    let r = s
        .http
        .post(format!("{}/api/{b}/envelope/", s.base))
        .header("x-sentry-auth", format!("Sentry sentry_key={key_a}"))
        .body(by_dsn(&key_b, b, &id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    attempts += 1;
    let (_, stats_a) = s.api(&format!("/api/0/projects/{a}/stats/")).await;
    let (_, stats_b) = s.api(&format!("/api/0/projects/{b}/stats/")).await;
    assert_eq!(stats_a["events"], 4, "{stats_a}");
    assert_eq!(stats_b["events"], 0, "{stats_b}");
    // Nor can project B's events be read through project A's id.
    let ok_b = next_id();
    let r = s
        .http
        .post(format!("{}/api/{b}/store/?sentry_key={key_b}", s.base))
        .body(event(&ok_b, "f", "v").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (st, _) = s.api(&format!("/api/0/projects/{a}/events/{ok_b}/")).await;
    assert_eq!(st, 404);
    let (st, _) = s.api(&format!("/api/0/projects/{b}/events/{ok_b}/")).await;
    assert_eq!(st, 200);
    eprintln!(
        "reliability: scenario=security-isolation attempts={attempts} cross_project_stored={}",
        stats_b["events"]
    );
    s.stop().await;
}

/// Strings that would do harm if the collector built SQL or HTML out of them.
const HOSTILE: [&str; 10] = [
    "'; DROP TABLE events;--",
    "\" OR 1=1 --",
    "1' OR '1'='1",
    "%' OR 1=1; --",
    "x'); DELETE FROM issues; --",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "javascript:alert(document.cookie)",
    "\"><svg onload=alert(1)>",
    "{{constructor.constructor('alert(1)')()}}",
];

/// An event carrying `h` in every field a client controls.
fn hostile_event(id: &str, h: &str) -> Value {
    json!({
        "event_id": id,
        "timestamp": 1.7e9,
        "platform": "rust",
        "level": "error",
        "logger": h,
        "transaction": h,
        "environment": h,
        "release": h,
        "server_name": h,
        "dist": h,
        "message": {"formatted": h, "message": h},
        "fingerprint": [h],
        "tags": {"hostile": h, h: "key"},
        "user": {"id": h, "email": h, "username": h, "ip_address": h},
        "request": {"url": h, "method": h, "headers": {"X-Hostile": h}, "query_string": h, "data": h},
        "exception": {"values": [{
            "type": h,
            "value": h,
            "module": h,
            "mechanism": {"type": h, "handled": true, "data": {"k": h}},
            "stacktrace": {"frames": [{
                "function": h, "module": h, "filename": h, "abs_path": h,
                "lineno": 1, "context_line": h, "pre_context": [h], "in_app": true, "vars": {"v": h}
            }]}
        }]},
        "breadcrumbs": {"values": [{"timestamp": 1.7e9, "category": h, "message": h, "data": {"k": h}}]},
        "contexts": {"domain": {"name": h, "tags": {"t": h}, "data": {"d": h}}, "hostile": {"type": h, "v": h}},
        "extra": {"hostile": h, h: h},
        "sdk": {"name": h, "version": h}
    })
}

#[tokio::test]
async fn hostile_strings_are_stored_and_served_verbatim() {
    let s = server().await;
    let plain = event(&event_id(999), "plain", "nothing to see");
    assert_eq!(s.post_envelope(envelope(&[plain])).await.status(), 200);
    let mut checked = 0;
    for (i, h) in HOSTILE.iter().enumerate() {
        let id = event_id(i as u64 + 1);
        let sent = hostile_event(&id, h);
        let r = s.post_envelope(envelope(std::slice::from_ref(&sent))).await;
        assert_eq!(r.status(), 200, "{h}");
        // The stored event is the sent one, byte for byte in every field.
        let (st, got) = s.api(&format!("/api/0/projects/1/events/{id}/")).await;
        assert_eq!(st, 200, "{h}: {got}");
        for (k, v) in sent.as_object().unwrap() {
            assert_eq!(&got[k], v, "{h}: field {k}");
            checked += 1;
        }
        // The issue's derived strings keep it too, and a search finds exactly this issue.
        let issue_id = got["issue_id"].as_i64().unwrap();
        let (_, issue) = s.api(&format!("/api/0/issues/{issue_id}/")).await;
        assert_eq!(issue["class"], *h, "{issue}");
        assert!(issue["title"].as_str().unwrap().contains(h), "{issue}");
        assert!(issue["culprit"].as_str().unwrap().contains(h), "{issue}");
        for key in ["environment", "release", "server_name", "hostile"] {
            assert_eq!(issue["tags"][key][0]["value"], *h, "{key}: {issue}");
        }
        let q = |s: &str| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
        let (st, found) = s
            .api(&format!(
                "/api/0/projects/1/issues/?status=all&query={}",
                q(h)
            ))
            .await;
        assert_eq!(st, 200);
        let ids: Vec<i64> = found["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, vec![issue_id], "search for {h}");
        let (_, by_env) = s
            .api(&format!(
                "/api/0/projects/1/issues/?status=all&environment={}",
                q(h)
            ))
            .await;
        assert_eq!(by_env["data"].as_array().unwrap().len(), 1, "{h}: {by_env}");
        let (st, values) = s
            .api(&format!("/api/0/projects/1/tags/{}/values/", q(h)))
            .await;
        assert_eq!(st, 200);
        assert_eq!(values, json!([{"value": "key", "count": 1}]), "{h}");
        checked += 1;
    }
    // The tables are all there and hold what was sent.
    let (_, stats) = s.api("/api/0/projects/1/stats/").await;
    assert_eq!(stats["events"], HOSTILE.len() as u64 + 1, "{stats}");
    assert_eq!(stats["issues"], HOSTILE.len() as u64 + 1, "{stats}");
    let (_, classes) = s.api("/api/0/projects/1/classes/?status=all").await;
    for h in HOSTILE {
        assert!(
            classes.as_array().unwrap().iter().any(|c| c["class"] == h),
            "{h}: {classes}"
        );
    }
    eprintln!(
        "reliability: scenario=security-strings strings={} fields_checked={checked} stored_verbatim={}",
        HOSTILE.len(),
        HOSTILE.len()
    );
    s.stop().await;
}

/// The memory budget the storm runs under (`--max-inflight-mb`).
const STORM_BUDGET_MB: u64 = 64;
/// The collector's peak resident memory through the whole storm must stay under this:
/// the budget, plus what the idle process, SQLite's page caches and 1,024 connections'
/// buffers take (about 60 MiB in a debug build), with room for the allocator. Before the
/// budget, 64 gzip bombs alone took the peak past 1.5 GiB.
const STORM_PEAK_KB: u64 = (STORM_BUDGET_MB + 128) * 1024;

/// An envelope with one event item whose message is `n` bytes of `a`, and nothing after:
/// a bomb once compressed.
fn event_bomb(n: usize) -> Vec<u8> {
    let mut b = b"{}\n{\"type\":\"event\"}\n{\"message\":\"".to_vec();
    b.resize(b.len() + n, b'a');
    b.extend_from_slice(b"\"}\n");
    b
}

/// Sends `bytes` until the answer is not a `503` (waiting its `Retry-After`, as SDKs do);
/// the final status and how many `503`s came first.
async fn until_not_busy(addr: &str, bytes: &[u8], limit: Duration) -> (Option<u16>, u32) {
    let mut busy = 0;
    loop {
        let raw = raw_exchange(addr, at_once(bytes.to_vec()), limit).await;
        match raw.status() {
            Some(503) if busy < 10 => {
                assert_eq!(raw.header("retry-after").as_deref(), Some("1"));
                busy += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            s => return (s, busy),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_bombs_idle_sockets_and_slow_bodies_stays_in_bounds() {
    let started = Instant::now();
    // Room for 2,000 idle sockets and the rest, here and in the collector (which inherits
    // the limit and also raises its own).
    let fds = errscope_collector::serve::raise_fd_limit().unwrap();
    let scale = if long() { 4 } else { 1 };
    let idle_n = 2000usize.min(fds as usize / 2 - 600);
    let dir = tempfile::tempdir().unwrap();
    let c = spawn_binary(
        dir.path(),
        &[
            "--max-inflight-mb",
            &STORM_BUDGET_MB.to_string(),
            "--max-connections",
            "1024",
            // Idle sockets stay until the collector needs their room, not a deadline.
            "--header-timeout-secs",
            "300",
            "--body-timeout-secs",
            "4",
            "--max-events-per-issue",
            "1000000",
        ],
    )
    .await;
    let pid = c.child.id().unwrap();
    let (base_hwm, _) = memory_kb(pid);
    let key = c.dsn.as_deref().unwrap()["http://".len()..]
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let addr = c.base.trim_start_matches("http://").to_owned();
    let t = std::sync::Arc::new(Target {
        addr: addr.clone(),
        key: key.clone(),
        other_key: String::new(),
    });

    // 2,000 sockets that connect and say nothing, at the same instant as the rest below:
    // the collector's listen backlog (`serve::LISTEN_BACKLOG`) holds them all, so no
    // connection waits in the kernel for a retransmitted handshake.
    let (idle_stop, idle_stop_rx) = tokio::sync::watch::channel(false);
    let idle: Vec<_> = (0..idle_n)
        .map(|_| {
            let addr = addr.clone();
            let mut stop = idle_stop_rx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
                let mut buf = [0u8; 16];
                // Closed by the collector (to make room), or still open at the end.
                tokio::select! {
                    r = s.read(&mut buf) => Some(matches!(r, Ok(0) | Err(_))),
                    _ = stop.changed() => Some(false),
                }
            })
        })
        .collect();

    // /healthz, every 50 ms on a fresh connection, must always answer. Meanwhile the
    // collector's open sockets are counted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sockets = move || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        std::fs::read_link(e.path())
                            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let health = {
        let (base, stop) = (c.base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ok = 0u32;
            let mut failed = Vec::new();
            let mut peak_sockets = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                peak_sockets = peak_sockets.max(sockets());
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                match http.get(format!("{base}/healthz")).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (ok, failed, peak_sockets)
        })
    };

    // The bombs: every one must end in a 413.
    // 20 MiB inflated (20 times the event limit): the collector stops at 1 MiB either way.
    let gzip_bomb = gzip_of(&event_bomb(20 << 20), 1);
    let zlib_bomb = zlib_of(&event_bomb(20 << 20), 1);
    let brotli_bomb = unhex(BROTLI_BOMB);
    let announce = |encoding: Option<&str>| {
        let env = b"{}\n{\"type\":\"event\",\"length\":1000000000}\n{\"message\":\"".to_vec();
        match encoding {
            // Chunked: the collector cannot know where the body ends.
            None => chunked(
                &t,
                format!("{:x}\r\n", env.len())
                    .as_bytes()
                    .iter()
                    .chain(&env)
                    .chain(b"\r\n")
                    .copied()
                    .collect::<Vec<u8>>()
                    .as_slice(),
            ),
            Some(e) => t.encoded(e, &gzip_of(&env, 1)),
        }
    };
    let mut bombs: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for i in 0..64 * scale {
        bombs.push(("gzip", t.encoded("gzip", &gzip_bomb)));
        bombs.push(("deflate", t.encoded("deflate", &zlib_bomb)));
        let headers = [t.auth(), ("Content-Encoding", "br".to_owned())];
        bombs.push((
            "brotli",
            t.request("POST", "/api/1/store/", &headers, &brotli_bomb),
        ));
        let how = if i % 2 == 0 { None } else { Some("gzip") };
        bombs.push(("1 GB length", announce(how)));
    }
    let bomb_tasks: Vec<_> = bombs
        .into_iter()
        .map(|(kind, bytes)| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let (status, busy) = until_not_busy(&addr, &bytes, Duration::from_secs(60)).await;
                (kind, status, busy)
            })
        })
        .collect();

    // 200 uploads whose bodies trickle: cut with 408 by the body deadline.
    let slow: Vec<_> = (0..200)
        .map(|_| {
            let addr = addr.clone();
            let mut writes = vec![(
                Duration::ZERO,
                format!(
                    "POST /api/1/envelope/ HTTP/1.1\r\nHost: {addr}\r\nX-Sentry-Auth: Sentry sentry_key={key}\r\nContent-Length: 100000\r\n\r\n"
                )
                .into_bytes(),
            )];
            writes.extend((0..100).map(|_| (Duration::from_millis(200), vec![b' '; 10])));
            tokio::spawn(async move { raw_exchange(&addr, writes, Duration::from_secs(60)).await })
        })
        .collect();

    // Meanwhile a client sends 1,000 good events, four at a time.
    let good_n = 1000 * scale as u64;
    let senders: Vec<_> = (0..4u64)
        .map(|w| {
            let (base, key) = (c.base.clone(), key.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut busy = 0;
                let mut ids = Vec::new();
                for n in (w..good_n).step_by(4) {
                    let id = format!("{:032x}", 0x5707_0000_0000u64 + n);
                    let body = envelope(&[event(&id, "checkout", &format!("storm {n}"))]);
                    loop {
                        let r = http
                            .post(format!("{base}/api/1/envelope/?sentry_key={key}"))
                            .body(body.clone())
                            .send()
                            .await
                            .expect("good event sent");
                        match r.status().as_u16() {
                            200 => break,
                            503 if busy < 100 => {
                                busy += 1;
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            s => panic!("good event {n}: {s} {:?}", r.text().await),
                        }
                    }
                    ids.push(id);
                }
                (ids, busy)
            })
        })
        .collect();

    let mut good = Vec::new();
    let mut good_busy = 0;
    for s in senders {
        let (ids, busy) = s.await.unwrap();
        good.extend(ids);
        good_busy += busy;
    }
    let mut by_kind: std::collections::BTreeMap<&str, (u32, u32, u32)> = Default::default();
    let mut wrong = Vec::new();
    for task in bomb_tasks {
        let (kind, status, busy) = task.await.unwrap();
        let e = by_kind.entry(kind).or_default();
        e.0 += 1;
        e.2 += busy;
        if status == Some(413) {
            e.1 += 1;
        } else {
            wrong.push(format!("{kind}: {status:?}"));
        }
    }
    // Every one is cut with a 408 by the body deadline; none may be closed unanswered
    // (counted apart to show it).
    let (mut slow_cut, mut slow_closed) = (0, 0);
    for task in slow {
        let raw = task.await.unwrap();
        if raw.status() == Some(408) && !raw.wrote_all {
            slow_cut += 1;
        } else if raw.status().is_none() && !raw.wrote_all && raw.closed_after.is_some() {
            slow_closed += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (health_ok, health_failed, peak_sockets) = health.await.unwrap();
    let (peak_kb, rss_kb) = memory_kb(pid);
    // Every good event is stored.
    let http = reqwest::Client::new();
    let (_, stats) = api_at(&http, &c.base, "/api/0/projects/1/stats/").await;
    let mut stored = 0;
    for id in good.iter().step_by(10) {
        let (st, _) = api_at(&http, &c.base, &format!("/api/0/projects/1/events/{id}/")).await;
        if st == 200 {
            stored += 1;
        }
    }
    // Idle sockets past the cap were closed to make room.
    let (mut idle_closed, mut idle_open) = (0, 0);
    let _ = idle_stop.send(true);
    for task in idle {
        match task.await.unwrap() {
            Some(true) => idle_closed += 1,
            Some(false) => idle_open += 1,
            None => {}
        }
    }
    eprintln!(
        "reliability: scenario=storm scale={scale} bombs={by_kind:?} (kind: sent, 413, 503 retries) good_sent={} good_503_retries={good_busy} events_stored={} idle={idle_n} idle_closed={idle_closed} idle_open_at_end={idle_open} peak_sockets={peak_sockets} slow_cut_408={slow_cut} slow_closed_unanswered={slow_closed} healthz_ok={health_ok} healthz_failed={} base_hwm_kb={base_hwm} peak_rss_kb={peak_kb} rss_kb={rss_kb} secs={:.1}",
        good.len(),
        stats["events"],
        health_failed.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(wrong.is_empty(), "bombs not answered 413: {wrong:?}");
    assert_eq!(stats["events"], good_n, "{stats}");
    assert_eq!(stored, good.len().div_ceil(10));
    assert!(
        health_failed.is_empty(),
        "/healthz failed: {health_failed:?}"
    );
    assert!(health_ok > 0);
    assert_eq!(
        slow_cut, 200,
        "every slow body is cut with a 408 ({slow_closed} were closed without an answer)"
    );
    // Besides the 1,024 connections: the listener and tokio's signal socket pair.
    assert!(
        peak_sockets <= 1024 + 8,
        "the collector had {peak_sockets} sockets open; the cap is 1024"
    );
    // Every idle socket got through the backlog, and the hoarders were the ones closed.
    // (One still "open" may only have been let in by the kernel, not yet accepted.)
    assert_eq!(
        idle_closed + idle_open,
        idle_n,
        "some idle sockets never connected"
    );
    assert!(
        idle_closed >= idle_n / 4,
        "of {idle_n} idle sockets only {idle_closed} were closed to make room"
    );
    assert!(
        peak_kb < STORM_PEAK_KB,
        "peak RSS {peak_kb} KiB, bound {STORM_PEAK_KB} KiB"
    );
}

/// The bounds of the database files under a storm of unique events: the dedup ids stay
/// within 1.1 × `--dedup-max-ids` plus one batch, and the WAL, once the storm is over,
/// within the writer's idle bound (4 MiB). CI sends 10,000 events with a cap of 1,000;
/// `ERRSCOPE_LONG=1` sends 1,000,000 with a cap of 100,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dedup_table_and_wal_stay_bounded_after_a_storm() {
    let started = Instant::now();
    let (events, cap) = if long() {
        (1_000_000u64, 100_000u64)
    } else {
        (10_000, 1_000)
    };
    let dir = tempfile::tempdir().unwrap();
    let c = spawn_binary(
        dir.path(),
        &[
            "--dedup-max-ids",
            &cap.to_string(),
            "--max-events-per-issue",
            "10",
        ],
    )
    .await;
    let key = c.dsn.as_deref().unwrap()["http://".len()..]
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let db = dir.path().join("errscope.sqlite3");
    let postgres = errscope_testkit::store::database_for(dir.path());
    let count_ids = || match &postgres {
        Some(url) => {
            let rows = errscope_testkit::pg::query(url, "SELECT count(*) FROM event_ids").unwrap();
            rows[0].get::<_, i64>(0) as u64
        }
        None => {
            let conn = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            conn.query_row("SELECT count(*) FROM event_ids", [], |r| r.get::<_, i64>(0))
                .unwrap() as u64
        }
    };
    // 100 events per envelope, four senders; the table is sampled as it grows.
    let per = 100u64;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (base, key, next) = (c.base.clone(), key.clone(), next.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                loop {
                    let first = next.fetch_add(per, std::sync::atomic::Ordering::SeqCst);
                    if first >= events {
                        break;
                    }
                    let batch: Vec<Value> = (first..first + per)
                        .map(|n| event(&format!("{:032x}", n + 1), "checkout", "storm"))
                        .collect();
                    let r = http
                        .post(format!("{base}/api/1/envelope/?sentry_key={key}"))
                        .body(envelope(&batch))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200, "{:?}", r.text().await);
                }
            })
        })
        .collect();
    let mut peak_ids = 0;
    let mut all_done = false;
    while !all_done {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak_ids = peak_ids.max(count_ids());
        all_done = senders.iter().all(|s| s.is_finished());
    }
    for s in senders {
        s.await.unwrap();
    }
    peak_ids = peak_ids.max(count_ids());
    let wal = dir.path().join("errscope.sqlite3-wal");
    let wal_after_storm = std::fs::metadata(&wal).map_or(0, |m| m.len());
    // The writer truncates a grown WAL after a second without writes.
    let mut wal_idle = wal_after_storm;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        wal_idle = std::fs::metadata(&wal).map_or(0, |m| m.len());
        if wal_idle <= 4 << 20 {
            break;
        }
    }
    let http = reqwest::Client::new();
    let (_, stats) = api_at(&http, &c.base, "/api/0/projects/1/stats/").await;
    // A retry of one of the newest events is still recognised as one.
    let last = event(&format!("{events:032x}"), "checkout", "storm");
    let r = http
        .post(format!("{}/api/1/envelope/?sentry_key={key}", c.base))
        .body(envelope(&[last]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, again) = api_at(&http, &c.base, "/api/0/projects/1/stats/").await;
    let bound = cap + cap / 10 + 4096;
    eprintln!(
        "reliability: scenario=db-bounds events={events} dedup_cap={cap} peak_dedup_ids={peak_ids} bound={bound} wal_after_storm={wal_after_storm} wal_idle={wal_idle} events_stored={} secs={:.1}",
        stats["events"],
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stats["events"], events, "{stats}");
    assert_eq!(again["events"], events, "the retry was not counted again");
    assert!(
        peak_ids <= bound,
        "dedup ids peaked at {peak_ids}; bound {bound}"
    );
    // SQLite's WAL (PostgreSQL keeps its own, outside the data dir).
    if postgres.is_none() {
        assert!(
            wal_idle <= 4 << 20,
            "WAL {wal_after_storm} -> {wal_idle} bytes"
        );
    }
}

#[test]
fn bad_limits_stop_startup_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (args, env, flag) in [
        (&["--max-inflight-mb", "0"][..], None, "--max-inflight-mb"),
        (
            &["--max-inflight-mb", "lots"][..],
            None,
            "--max-inflight-mb",
        ),
        (&["--max-connections", "0"][..], None, "--max-connections"),
        (&["--max-connections=-5"][..], None, "--max-connections"),
        (&["--dedup-max-ids", "0"][..], None, "--dedup-max-ids"),
        (&["--pg-writers", "0"][..], None, "--pg-writers"),
        (&["--pg-writers", "9"][..], None, "--pg-writers"),
        (
            &[][..],
            Some(("ERRSCOPE_MAX_CONNECTIONS", "many")),
            "--max-connections",
        ),
        (
            &[][..],
            Some(("ERRSCOPE_MAX_INFLIGHT_MB", "0")),
            "--max-inflight-mb",
        ),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_errscope-collector"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path())
            .args(args);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} started");
        assert!(stderr.contains(flag), "{args:?} {env:?}: {stderr}");
    }
    // Nothing was created: startup stopped before the database.
    assert!(!dir.path().join("errscope.sqlite3").exists());
}
