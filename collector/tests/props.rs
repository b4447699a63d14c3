//! Property tests of ingestion on generated input: envelope framing, body decoding,
//! event preparation and grouping.
//!
//! Each test runs a few hundred cases by default; with `ERRSCOPE_LONG=1` it runs many
//! more. Each prints one `reliability:` line with its figures. A failure prints the
//! shrunk input; add it to the unit tests of the module it broke.

use std::fmt::Debug;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

use errscope_collector::grouping;
use errscope_collector::ingest::body::{self, BodyError};
use errscope_collector::ingest::envelope::{self, EnvelopeError, Item};
use errscope_collector::ingest::event::Event;
use errscope_collector::ingest::{IngestError, MAX_EVENT, prepare_event};
use errscope_collector::store::PreparedEvent;
use errscope_collector::store::decode_event;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

/// Whether `ERRSCOPE_LONG=1` asks for the long run.
fn long() -> bool {
    static LONG: OnceLock<bool> = OnceLock::new();
    *LONG.get_or_init(|| std::env::var("ERRSCOPE_LONG").is_ok_and(|v| v == "1"))
}

/// Runs `test` on `cases` inputs (`long_cases` in the long run) and prints the summary.
fn check<S>(
    scenario: &str,
    cases: u32,
    long_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let cases = if long() { long_cases } else { cases };
    let mut config = Config::with_cases(cases);
    // A failure is reported with its shrunk input; there is no regression file to keep.
    config.failure_persistence = None;
    let mut runner = TestRunner::new(config);
    let start = Instant::now();
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{scenario}: {e}");
    }
    eprintln!(
        "reliability: scenario=props-{scenario} cases={cases} failures=0 secs={:.1}",
        start.elapsed().as_secs_f64()
    );
}

const RECEIVED: i64 = 1_700_000_000_000;
const LEVELS: [&str; 5] = ["fatal", "error", "warning", "info", "debug"];

fn hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// What the store relies on in a prepared event.
fn check_prepared(bytes: &[u8], ev: &PreparedEvent) -> Result<(), TestCaseError> {
    prop_assert!(hex32(&ev.event_id), "event id {}", ev.event_id);
    prop_assert!(hex32(&ev.grouping.fingerprint));
    prop_assert!(LEVELS.contains(&ev.level.as_str()));
    prop_assert!(ev.timestamp <= RECEIVED);
    prop_assert!(ev.tags.len() <= 50);
    prop_assert_eq!(&ev.tags[0], &("level".to_owned(), ev.level.clone()));
    for (i, (k, _)) in ev.tags.iter().enumerate() {
        prop_assert!(!k.is_empty());
        prop_assert!(
            !ev.tags[..i].iter().any(|(x, _)| x == k),
            "tag key `{}` twice: {:?}",
            k,
            ev.tags
        );
    }
    let g = &ev.grouping;
    prop_assert!(!g.title.is_empty());
    for s in [&g.title, &g.culprit, &g.message] {
        prop_assert!(s.len() <= 200 + '…'.len_utf8(), "{} bytes", s.len());
    }
    prop_assert_eq!(
        decode_event(ev.encoding, &ev.data).expect("inflates"),
        bytes
    );
    Ok(())
}

/// `prepare_event` either accepts (and then all of [`check_prepared`] holds, and a second
/// run groups the same) or answers 400/413.
fn prepare_checked(bytes: &[u8]) -> Result<Option<PreparedEvent>, TestCaseError> {
    match prepare_event(bytes, RECEIVED, None) {
        Ok(ev) => {
            check_prepared(bytes, &ev)?;
            let parsed: Event<'_> = serde_json::from_slice(bytes).expect("accepted events parse");
            prop_assert_eq!(&grouping::group(&parsed), &ev.grouping);
            Ok(Some(ev))
        }
        Err(IngestError::Malformed(m) | IngestError::TooLarge(m)) => {
            prop_assert!(!m.is_empty());
            Ok(None)
        }
        Err(e) => Err(TestCaseError::fail(format!("unexpected error kind: {e:?}"))),
    }
}

// ---------------------------------------------------------------------------------------
// Arbitrary and mutated bytes.

/// Real envelopes: a Python SDK event, an errscope agent batch, framing variants.
fn seed_envelopes() -> Vec<Vec<u8>> {
    let event = br#"{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","level":"error","platform":"python","exception":{"values":[{"type":"KeyError","value":"'order-7'","mechanism":{"type":"generic","handled":true},"stacktrace":{"frames":[{"filename":"shop/views.py","function":"place","module":"shop.views","lineno":29,"in_app":true}]}}]},"tags":{"request_id":"9f1c"},"timestamp":"2026-11-22T13:15:01.341607Z"}"#;
    let counts = br#"{"counts":[{"id":"cccccccccccccccccccccccccccccccc","event_id":"9ec79c33ec9942ab8353589fcb2e04dc","count":41,"start":1767225600.0,"end":1767225610.0}]}"#;
    let report = br#"{"timestamp":1767225610.5,"discarded_events":[{"reason":"queue_overflow","category":"error","quantity":3}]}"#;
    let mut agent = b"{\"dsn\":\"https://k1@localhost:8000/1\"}\n".to_vec();
    for (ty, payload) in [
        ("event", &event[..]),
        ("errscope.counts", &counts[..]),
        ("client_report", &report[..]),
    ] {
        agent.extend_from_slice(
            format!("{{\"type\":\"{ty}\",\"length\":{}}}\n", payload.len()).as_bytes(),
        );
        agent.extend_from_slice(payload);
        agent.push(b'\n');
    }
    let mut implicit = b"{}\r\n{\"type\":\"event\"}\r\n".to_vec();
    implicit.extend_from_slice(event);
    implicit.extend_from_slice(b"\r\n\n{\"type\":\"session\"}\n{}");
    vec![
        agent,
        implicit,
        b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}\n{\"type\":\"attachment\",\"length\":10}\n\xef\xbb\xbfHello\r\n\n{\"type\":\"event\",\"length\":17}\n{\"message\":\"x 2\"}".to_vec(),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index),
}

/// Bytes that matter to the framing and JSON, and any byte.
fn edit_byte() -> impl Strategy<Value = u8> {
    prop_oneof![select(b"\n\r{}[]\":,0123456789 \\-".to_vec()), any::<u8>()]
}

fn mutated_envelope() -> impl Strategy<Value = Vec<u8>> {
    let edit = prop_oneof![
        (any::<Index>(), edit_byte()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<Index>(), edit_byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<Index>().prop_map(Edit::Delete),
    ];
    (select(seed_envelopes()), prop::collection::vec(edit, 1..8)).prop_map(|(mut body, edits)| {
        for e in edits {
            match e {
                Edit::Set(i, b) if !body.is_empty() => {
                    let i = i.index(body.len());
                    body[i] = b;
                }
                Edit::Insert(i, b) => {
                    let i = i.index(body.len() + 1);
                    body.insert(i, b);
                }
                Edit::Delete(i) if !body.is_empty() => {
                    body.remove(i.index(body.len()));
                }
                _ => {}
            }
        }
        body
    })
}

/// Frames items as the errscope agent does: an empty header, `type` and `length`.
fn reframe(items: &[Item<'_>]) -> Vec<u8> {
    let mut out = b"{}\n".to_vec();
    for item in items {
        let header = json!({ "type": item.ty, "length": item.payload.len() });
        out.extend_from_slice(header.to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(item.payload);
        out.push(b'\n');
    }
    out
}

/// What the envelope endpoint does with a decoded body, checked.
fn frame_checked(body: &[u8]) -> Result<(), TestCaseError> {
    match envelope::parse(body) {
        Ok((header, items)) => {
            let again = envelope::parse_header(body);
            prop_assert_eq!(again.as_ref(), Ok(&header));
            let range = body.as_ptr_range();
            for item in &items {
                let p = item.payload.as_ptr_range();
                prop_assert!(range.start <= p.start && p.end <= range.end);
            }
            let again = reframe(&items);
            let (_, parsed) = envelope::parse(&again).expect("a reframed envelope parses");
            prop_assert_eq!(&parsed, &items);
            for item in items.iter().filter(|i| i.ty == "event") {
                prepare_checked(item.payload)?;
            }
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            let blank = body.iter().all(u8::is_ascii_whitespace);
            prop_assert_eq!(e == EnvelopeError::Empty, blank);
        }
    }
    Ok(())
}

const ENCODINGS: [Option<&str>; 7] = [
    None,
    Some("identity"),
    Some("gzip"),
    Some("x-gzip"),
    Some("deflate"),
    Some("br"),
    Some("zstd"),
];

fn decode_checked(encoding: Option<&str>, raw: &[u8], limit: usize) -> Result<(), TestCaseError> {
    let identity = matches!(encoding, None | Some("identity"));
    match body::decode(encoding, raw, limit) {
        Ok(out) => {
            prop_assert!(out.len() <= limit);
            if identity {
                prop_assert_eq!(&out[..], raw);
            }
            frame_checked(&out)?;
        }
        Err(BodyError::Unsupported(_)) => prop_assert_eq!(encoding, Some("zstd")),
        Err(BodyError::TooLarge(n)) => prop_assert_eq!(n, limit),
        Err(e @ BodyError::Corrupt(..)) => {
            prop_assert!(!identity, "identity bodies are never corrupt: {}", e);
        }
    }
    Ok(())
}

#[test]
fn arbitrary_bytes_get_a_typed_answer_from_the_decoder_and_the_framing() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        prop::collection::vec(edit_byte(), 0..512),
    ];
    check(
        "arbitrary-bytes",
        256,
        20_000,
        (select(ENCODINGS.to_vec()), bytes, 0usize..4096),
        |(encoding, raw, limit)| {
            decode_checked(encoding, &raw, limit)?;
            frame_checked(&raw)?;
            prepare_checked(&raw)?;
            Ok(())
        },
    );
}

#[test]
fn mutated_real_envelopes_get_a_typed_answer() {
    check(
        "mutated-envelopes",
        512,
        50_000,
        mutated_envelope(),
        |body| {
            frame_checked(&body)?;
            let gz = gzip(&body);
            decode_checked(Some("gzip"), &gz, 1 << 20)?;
            // A corrupted compressed stream is refused, never a panic.
            let mut bad = gz.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x5a;
            decode_checked(Some("gzip"), &bad, 1 << 20)?;
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// Well-formed envelopes.

#[derive(Debug, Clone)]
struct GenItem {
    ty: String,
    payload: Vec<u8>,
    /// With a `length` (the payload may hold anything) or running to the newline.
    explicit: bool,
    /// Lines end in `\r\n` rather than `\n`.
    crlf: bool,
    /// Blank lines before the item.
    blank: u8,
    /// An extra header field the collector ignores (`content_type`, `filename`, ...).
    extra: Option<(String, String)>,
}

fn gen_item() -> impl Strategy<Value = GenItem> {
    let ty = prop_oneof![
        select(vec![
            "event",
            "client_report",
            "attachment",
            "session",
            "errscope.counts"
        ])
        .prop_map(str::to_owned),
        ".{0,12}",
    ];
    (
        ty,
        prop::collection::vec(any::<u8>(), 0..200),
        any::<bool>(),
        any::<bool>(),
        0u8..3,
        prop::option::of(("[a-z_]{1,12}", ".{0,12}")),
    )
        .prop_map(|(ty, mut payload, explicit, crlf, blank, extra)| {
            if !explicit {
                // Without a length the payload ends at the newline; a `\r` before it is
                // part of the line ending.
                payload.retain(|&b| b != b'\n');
                while payload.last() == Some(&b'\r') {
                    payload.pop();
                }
            }
            GenItem {
                ty,
                payload,
                explicit,
                crlf,
                blank,
                extra,
            }
        })
}

#[derive(Debug, Clone)]
struct GenEnvelope {
    event_id: Option<String>,
    dsn: Option<String>,
    /// The header line is empty (an empty header is allowed).
    empty_header: bool,
    items: Vec<GenItem>,
    /// The last item's newline is left out.
    no_trailing_newline: bool,
}

fn gen_envelope() -> impl Strategy<Value = GenEnvelope> {
    (
        prop::option::of(prop_oneof!["[0-9a-f]{32}", ".{0,40}"]),
        prop::option::of(".{0,40}"),
        prop::bool::weighted(0.1),
        prop::collection::vec(gen_item(), 0..6),
        any::<bool>(),
    )
        .prop_map(
            |(event_id, dsn, empty_header, items, no_trailing_newline)| {
                // An empty header line with nothing after it is an empty envelope.
                let empty_header = empty_header && !items.is_empty();
                GenEnvelope {
                    event_id: event_id.filter(|_| !empty_header),
                    dsn: dsn.filter(|_| !empty_header),
                    empty_header,
                    items,
                    no_trailing_newline,
                }
            },
        )
}

fn render_envelope(env: &GenEnvelope) -> Vec<u8> {
    let mut out = Vec::new();
    if !env.empty_header {
        let mut header = Map::new();
        if let Some(id) = &env.event_id {
            header.insert("event_id".into(), id.clone().into());
        }
        if let Some(dsn) = &env.dsn {
            header.insert("dsn".into(), dsn.clone().into());
        }
        header.insert("sent_at".into(), "2026-11-22T13:15:01Z".into());
        out.extend_from_slice(Value::Object(header).to_string().as_bytes());
    }
    out.push(b'\n');
    for (i, item) in env.items.iter().enumerate() {
        let eol: &[u8] = if item.crlf { b"\r\n" } else { b"\n" };
        for _ in 0..item.blank {
            out.extend_from_slice(eol);
        }
        let mut header = Map::new();
        header.insert("type".into(), item.ty.clone().into());
        if item.explicit {
            header.insert("length".into(), item.payload.len().into());
        }
        if let Some((k, v)) = &item.extra
            && k != "type"
            && k != "length"
        {
            header.insert(k.clone(), v.clone().into());
        }
        out.extend_from_slice(Value::Object(header).to_string().as_bytes());
        out.extend_from_slice(eol);
        out.extend_from_slice(&item.payload);
        let last = i + 1 == env.items.len();
        // Only an explicit length can do without the final newline: without one, the
        // payload of an empty last line would be indistinguishable from no item.
        if !(last && env.no_trailing_newline && item.explicit) {
            out.extend_from_slice(eol);
        }
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

#[test]
fn well_formed_envelopes_parse_back_to_their_items() {
    check(
        "envelope-roundtrip",
        256,
        20_000,
        (gen_envelope(), 0usize..3),
        |(env, encoding)| {
            let body = render_envelope(&env);
            let (wire, name) = match encoding {
                0 => (body.clone(), None),
                1 => (gzip(&body), Some("gzip")),
                _ => {
                    let mut z =
                        flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                    z.write_all(&body).expect("zlib");
                    (z.finish().expect("zlib"), Some("deflate"))
                }
            };
            let decoded = body::decode(name, &wire, body.len()).expect("decodes");
            prop_assert_eq!(&decoded, &body);
            let (header, items) = match envelope::parse(&decoded) {
                Ok(parsed) => parsed,
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "{e}: {:?}",
                        String::from_utf8_lossy(&body)
                    )));
                }
            };
            prop_assert_eq!(header.event_id, env.event_id.clone());
            prop_assert_eq!(header.dsn, env.dsn.clone());
            prop_assert_eq!(items.len(), env.items.len());
            for (got, want) in items.iter().zip(&env.items) {
                prop_assert_eq!(&got.ty, &want.ty);
                prop_assert_eq!(got.payload, &want.payload[..]);
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// Grouping: deterministic, and blind to what it promises to ignore.

/// A variable part of a message: its value differs in every occurrence, its format is
/// the call site's (a port or not, the timestamp's layout, the quote character).
#[derive(Debug, Clone, Copy)]
enum Var {
    Num,
    Decimal,
    Uuid,
    Email,
    Ipv4 {
        port: bool,
    },
    Ipv6 {
        bracketed: bool,
    },
    Hex,
    HexWord,
    Quoted(char),
    Timestamp(u8),
    Url,
    /// A device or file path: another disk or temporary file in every occurrence.
    Path,
}

fn gen_var() -> impl Strategy<Value = Var> {
    prop_oneof![
        Just(Var::Num),
        Just(Var::Decimal),
        Just(Var::Uuid),
        Just(Var::Email),
        any::<bool>().prop_map(|port| Var::Ipv4 { port }),
        any::<bool>().prop_map(|bracketed| Var::Ipv6 { bracketed }),
        Just(Var::Hex),
        Just(Var::HexWord),
        select(vec!['\'', '"', '`']).prop_map(Var::Quoted),
        (0u8..3).prop_map(Var::Timestamp),
        Just(Var::Url),
        Just(Var::Path),
    ]
}

impl Var {
    fn render(self, r: &mut Rng) -> String {
        match self {
            Var::Num => r.below(1_000_000_000).to_string(),
            Var::Decimal => format!("{}.{}", r.below(10_000), r.below(1000)),
            Var::Uuid => {
                let a = r.next();
                let b = r.next();
                format!(
                    "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    a >> 32,
                    a & 0xffff,
                    (a >> 16) & 0xffff,
                    b >> 48,
                    b & 0xffff_ffff_ffff
                )
            }
            Var::Email => {
                let users = ["bob", "alice.smith", "eve+billing", "x_y", "ops-team"];
                let hosts = ["example.com", "mail.example.org", "corp.test", "a.b.co"];
                format!(
                    "{}{}@{}",
                    users[r.below(5) as usize],
                    r.below(100),
                    hosts[r.below(4) as usize]
                )
            }
            Var::Ipv4 { port } => {
                let ip = format!(
                    "{}.{}.{}.{}",
                    r.below(256),
                    r.below(256),
                    r.below(256),
                    r.below(256)
                );
                if port {
                    format!("{ip}:{}", 1 + r.below(65535))
                } else {
                    ip
                }
            }
            Var::Ipv6 { bracketed } => {
                let ip = format!("2001:db8::{:x}:{:x}", r.below(0xffff), r.below(0xffff));
                if bracketed {
                    format!("[{ip}]:{}", 1 + r.below(65535))
                } else {
                    ip
                }
            }
            Var::Hex => format!("0x{:x}", r.next()),
            // 8+ hex digits with a digit and a letter among them, like a commit or a key.
            Var::HexWord => format!("{:07x}a{}", r.below(1 << 28), r.below(10)),
            Var::Quoted(q) => {
                let words = ["alice", "bob 7", "/etc/app.toml", "k-9", "", "x y z"];
                format!("{q}{}{}{q}", words[r.below(6) as usize], r.below(100))
            }
            Var::Timestamp(0) => format!(
                "20{:02}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                r.below(100),
                1 + r.below(12),
                1 + r.below(28),
                r.below(24),
                r.below(60),
                r.below(60)
            ),
            Var::Timestamp(1) => format!(
                "20{:02}-{:02}-{:02}",
                r.below(100),
                1 + r.below(12),
                1 + r.below(28)
            ),
            Var::Timestamp(_) => format!(
                "{:02}:{:02}:{:02}.{:03}",
                r.below(24),
                r.below(60),
                r.below(60),
                r.below(1000)
            ),
            Var::Path => match r.below(4) {
                0 => format!(
                    "/dev/sd{}{}",
                    ["a", "b", "c"][r.below(3) as usize],
                    r.below(9)
                ),
                1 => format!("/dev/nvme{}n{}p{}", r.below(4), 1 + r.below(3), r.below(9)),
                2 => format!("/var/lib/x/{}.tmp", r.below(100_000)),
                _ => format!("~/.cache/shop/upload-{:x}", r.next()),
            },
            Var::Url => format!(
                "https://api.example.com/users/{}/orders?id={:x}&q={}&page={}",
                r.below(100_000),
                r.next(),
                ["shoes", "red+hat", "", "a%20b"][r.below(4) as usize],
                r.below(9)
            ),
        }
    }
}

#[derive(Debug, Clone)]
enum Piece {
    Word(String),
    /// A variable part, with punctuation around it as messages have: `(os error 104)`.
    Var(Var, &'static str, &'static str),
}

fn gen_template() -> impl Strategy<Value = Vec<Piece>> {
    let piece = prop_oneof![
        "[a-zA-Z]{1,10}".prop_map(Piece::Word),
        (
            gen_var(),
            select(vec!["", "(", "["]),
            select(vec!["", ")", ",", ".", ":", ";", "]"])
        )
            .prop_map(|(v, pre, post)| Piece::Var(v, pre, post)),
    ];
    prop::collection::vec(piece, 0..8)
}

fn render_template(pieces: &[Piece], r: &mut Rng) -> String {
    let words: Vec<String> = pieces
        .iter()
        .map(|p| match p {
            Piece::Word(w) => w.clone(),
            Piece::Var(v, pre, post) => format!("{pre}{}{post}", v.render(r)),
        })
        .collect();
    words.join(" ")
}

/// One frame of the call site.
#[derive(Debug, Clone)]
struct GenFrame {
    module: Option<String>,
    function: String,
    file: String,
    in_app: Option<bool>,
}

fn gen_frame() -> impl Strategy<Value = GenFrame> {
    (
        prop::option::of(prop_oneof![
            "shop(::[a-z]{1,6}){0,2}",
            "app\\.[a-z]{1,6}",
            "lib[a-z]{1,4}::[a-z]{1,5}",
        ]),
        prop_oneof![
            "(fn|do|on)_[a-z_]{0,6}(::[a-z_]{1,8}){0,2}",
            Just("{async_fn#0}".to_owned()),
            Just("{closure#0}".to_owned()),
        ],
        "src/[a-z]{1,8}\\.(rs|py|js)",
        prop_oneof![Just(Some(true)), Just(Some(false)), Just(None)],
    )
        .prop_map(|(module, function, file, in_app)| GenFrame {
            module,
            function,
            file,
            in_app,
        })
}

/// Frames oldest first; at least one in-app (so library frames never count).
fn gen_frames(max: usize) -> impl Strategy<Value = Vec<GenFrame>> {
    prop::collection::vec(gen_frame(), 0..max).prop_map(|mut frames| {
        if !frames.is_empty() && !frames.iter().any(|f| f.in_app == Some(true)) {
            let last = frames.len() - 1;
            frames[last].in_app = Some(true);
        }
        frames
    })
}

#[derive(Debug, Clone)]
struct GenException {
    ty: &'static str,
    value: Vec<Piece>,
    frames: Vec<GenFrame>,
    handled: Option<bool>,
}

#[derive(Debug, Clone)]
enum GenBody {
    Exceptions(Vec<GenException>),
    Message {
        template: Vec<Piece>,
        /// Sent as `logentry` with the template and params (else a plain `message`).
        logentry: bool,
        frames: Vec<GenFrame>,
    },
}

#[derive(Debug, Clone)]
struct Shape {
    platform: &'static str,
    body: GenBody,
    /// An explicit fingerprint; `None` entries stand for `{{ default }}`.
    fingerprint: Option<Vec<Option<String>>>,
}

fn gen_shape() -> impl Strategy<Value = Shape> {
    let exception = (
        select(vec![
            "KeyError",
            "ValueError",
            "TypeError",
            "panic",
            "reqwest::Error",
            "std::io::Error",
            "shop::OrderError",
            "",
        ]),
        gen_template(),
        gen_frames(6),
        prop_oneof![Just(None), Just(Some(true)), Just(Some(false))],
    )
        .prop_map(|(ty, value, frames, handled)| GenException {
            ty,
            value,
            frames,
            handled,
        });
    let body = prop_oneof![
        prop::collection::vec(exception, 1..4).prop_map(GenBody::Exceptions),
        (gen_template(), any::<bool>(), gen_frames(5)).prop_map(|(template, logentry, frames)| {
            GenBody::Message {
                template,
                logentry,
                frames,
            }
        }),
    ];
    (
        select(vec!["python", "native", "rust", "node", "other"]),
        body,
        prop::option::weighted(
            0.2,
            prop::collection::vec(prop::option::of("[a-z]{1,8}"), 1..3),
        ),
    )
        .prop_map(|(platform, body, fingerprint)| Shape {
            platform,
            body,
            fingerprint,
        })
}

/// A small deterministic generator for the parts of an event that vary between
/// occurrences of one issue.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// Library frames: never part of a fingerprint when the trace has in-app frames.
fn library_frame(r: &mut Rng) -> Value {
    let frames = [
        json!({"function": "std::rt::lang_start", "module": "std::rt"}),
        json!({"function": "core::ops::function::FnOnce::call_once", "module": "core::ops::function"}),
        json!({"function": "tokio::runtime::task::harness::poll", "module": "tokio::runtime", "in_app": true}),
        json!({"function": "<hyper::proto::h1::Dispatcher as Future>::poll", "module": "hyper::proto"}),
        json!({"function": "handle", "abs_path": "/app/node_modules/express/lib/router.js"}),
        json!({"function": "serde_json::de::from_slice", "module": "serde_json::de", "in_app": false}),
        json!({"function": "__rust_begin_short_backtrace"}),
        json!({"function": "rust_begin_unwind", "in_app": false}),
    ];
    let mut f = frames[r.below(frames.len() as u64) as usize].clone();
    f["lineno"] = r.below(5000).into();
    f
}

/// How another build or toolchain spells a function: closures and async bodies as the
/// legacy mangling, v0 or another rustc's DWARF name them, generic arguments as
/// parameters or instantiated types, a v0 crate disambiguator.
fn respell(function: &str, r: &mut Rng) -> String {
    let closures = [
        "{{closure}}",
        "{closure#0}",
        "{async_fn#0}",
        "{coroutine#0}",
    ];
    let mut out = function.to_owned();
    for c in ["{closure#0}", "{async_fn#0}"] {
        if out.contains(c) {
            out = out.replace(c, closures[r.below(4) as usize]);
        }
    }
    if let Some((head, tail)) = out.split_once("::") {
        let generics = ["", "<K,V>", "<alloc::string::String, u64>", "[5f3c2ab1]"];
        out = format!("{head}{}::{tail}", generics[r.below(4) as usize]);
    }
    if r.coin() {
        out.push_str(&format!(
            "::<{}>",
            ["T", "shop::Order", "u8"][r.below(3) as usize]
        ));
    }
    out
}

/// The frames of one occurrence: other line numbers, addresses, symbol hashes, build
/// paths, recursion depth and library frames around the same call site; and the same
/// call site from another build: names spelled differently, no file or line (a build
/// without debug info), functions inlined into a frame (a build with debug info reports
/// them with the frame's address).
fn render_frames(frames: &[GenFrame], r: &mut Rng) -> Vec<Value> {
    let mut out = Vec::new();
    for f in frames {
        for _ in 0..r.below(3) {
            if r.coin() {
                out.push(library_frame(r));
            }
        }
        let mut function = respell(&f.function, r);
        if r.coin() {
            function.push_str(&format!("::h{:016x}", r.next()));
        }
        let mut v = json!({
            "function": function,
            "abs_path": format!("/build/{}/{}", r.below(1000), f.file),
            "lineno": r.below(10_000),
            "colno": r.below(120),
            "instruction_addr": format!("0x{:x}", r.next()),
        });
        match &f.module {
            Some(m) => {
                v["module"] = m.clone().into();
                // File names only count for frames without a module.
                if r.coin() {
                    v["filename"] = format!("src/other{}.rs", r.below(100)).into();
                }
            }
            None => v["filename"] = f.file.clone().into(),
        }
        if let Some(in_app) = f.in_app {
            v["in_app"] = in_app.into();
        }
        // A build without debug info: no file, line or column (a bare closure name only
        // comes from DWARF, which always has its file).
        if !function.starts_with('{') && r.below(3) == 0 {
            for k in ["filename", "abs_path", "lineno", "colno"] {
                v.as_object_mut().expect("an object").remove(k);
            }
        }
        let addr = v["instruction_addr"].clone();
        // Recursion: the same frame again, at another line.
        for _ in 0..r.below(3) {
            out.push(v.clone());
            v["lineno"] = r.below(10_000).into();
        }
        out.push(v);
        // Functions inlined into this frame, reported with its address.
        for _ in 0..r.below(3) {
            out.push(json!({
                "function": format!("shop::inlined::helper_{}::{{{{closure}}}}", r.below(1000)),
                "filename": "src/inlined.rs",
                "lineno": r.below(500),
                "in_app": r.coin(),
                "instruction_addr": addr.clone(),
            }));
        }
    }
    if !frames.is_empty() && r.coin() {
        out.push(library_frame(r));
    }
    out
}

fn render_event(shape: &Shape, seed: u64) -> Value {
    let r = &mut Rng(seed);
    let environment = ["production", "staging"][r.below(2) as usize];
    let mut ev = json!({
        "event_id": format!("{:016x}{:016x}", r.next(), r.next()),
        "timestamp": 1_600_000_000.0 + r.below(10_000_000) as f64,
        "platform": shape.platform,
        "level": LEVELS[r.below(5) as usize],
        "release": format!("shop@1.{}", r.below(50)),
        "environment": environment,
        "server_name": format!("web-{}", r.below(20)),
        "transaction": format!("GET /orders/{}", r.below(100)),
        "logger": "shop",
        "tags": {"request_id": r.next().to_string(), "retry": r.below(3)},
        "extra": {"attempt": r.below(9), "user": format!("user{}", r.below(100))},
        "contexts": {"os": {"name": "Linux", "version": format!("6.{}", r.below(20))}},
        "breadcrumbs": {"values": [{"message": format!("GET /orders/{}", r.below(100))}]},
        "user": {"id": r.below(10_000)},
    });
    match &shape.body {
        GenBody::Exceptions(excs) => {
            let any_frames = excs.iter().any(|e| !e.frames.is_empty());
            let values: Vec<Value> = excs
                .iter()
                .map(|e| {
                    // With frames, the values of non-io errors do not count at all.
                    let value = if any_frames && e.ty != "std::io::Error" && r.coin() {
                        format!("something else entirely {}", r.next())
                    } else {
                        render_template(&e.value, r)
                    };
                    let mut v = json!({ "type": e.ty, "value": value });
                    let mut mechanism = json!({ "type": "generic" });
                    if let Some(h) = e.handled {
                        mechanism["handled"] = h.into();
                    }
                    v["mechanism"] = mechanism;
                    if !e.frames.is_empty() {
                        v["stacktrace"] = json!({ "frames": render_frames(&e.frames, r) });
                    }
                    v
                })
                .collect();
            // Old SDKs send the list bare.
            ev["exception"] = if r.coin() {
                json!({ "values": values })
            } else {
                Value::Array(values)
            };
        }
        GenBody::Message {
            template,
            logentry,
            frames,
        } => {
            let text = render_template(template, r);
            if *logentry {
                // The template is what groups; the formatted text and params vary.
                let template_text: Vec<String> = template
                    .iter()
                    .map(|p| match p {
                        Piece::Word(w) => w.clone(),
                        Piece::Var(..) => "%s".to_owned(),
                    })
                    .collect();
                ev["logentry"] = json!({
                    "message": template_text.join(" "),
                    "formatted": text,
                    "params": [r.next()],
                });
            } else if r.coin() {
                ev["message"] = text.into();
            } else {
                ev["message"] = json!({ "formatted": text });
            }
            if !frames.is_empty() {
                let frames = render_frames(frames, r);
                // A message's stack under `stacktrace` or under the crashed thread.
                if r.coin() {
                    ev["stacktrace"] = json!({ "frames": frames });
                } else {
                    ev["threads"] = json!({"values": [
                        {"id": 1, "current": false},
                        {"id": 2, "crashed": true, "stacktrace": {"frames": frames}},
                    ]});
                }
            }
        }
    }
    if let Some(fp) = &shape.fingerprint {
        let entries: Vec<Value> = fp
            .iter()
            .map(|e| {
                let pad = [" ", "", "  "][r.below(3) as usize];
                match e {
                    Some(s) => format!("{pad}{s}{pad}").into(),
                    None if r.coin() => format!("{pad}{{{{ default }}}}").into(),
                    None => "{{default}}".into(),
                }
            })
            .collect();
        ev["fingerprint"] = Value::Array(entries);
    }
    ev
}

fn prepared(ev: &Value) -> Result<PreparedEvent, TestCaseError> {
    let bytes = serde_json::to_vec(ev).expect("json");
    let p = prepare_event(&bytes, RECEIVED, None)
        .map_err(|e| TestCaseError::fail(format!("{e}: {ev}")))?;
    check_prepared(&bytes, &p)?;
    Ok(p)
}

#[test]
fn grouping_is_deterministic_and_blind_to_what_varies_between_occurrences() {
    check(
        "grouping-stability",
        256,
        20_000,
        (gen_shape(), any::<u64>(), any::<u64>()),
        |(shape, a, b)| {
            let (ea, eb) = (render_event(&shape, a), render_event(&shape, b));
            let (pa, pb) = (prepared(&ea)?, prepared(&eb)?);
            // Deterministic: the same bytes group the same way every time.
            prop_assert_eq!(&prepared(&ea)?.grouping, &pa.grouping);
            prop_assert_eq!(
                &pa.grouping.fingerprint,
                &pb.grouping.fingerprint,
                "one issue:\n{}\n{}",
                ea,
                eb
            );
            prop_assert_eq!(&pa.grouping.class, &pb.grouping.class);
            prop_assert_eq!(pa.grouping.kind, pb.grouping.kind);
            Ok(())
        },
    );
}

#[test]
fn another_call_site_is_another_issue() {
    let shape = gen_shape().prop_filter("an exception with frames, no fixed fingerprint", |s| {
        matches!(&s.body, GenBody::Exceptions(e) if e.iter().any(|e| !e.frames.is_empty()))
            && s.fingerprint.as_ref().is_none_or(|fp| fp.contains(&None))
    });
    check(
        "call-sites",
        256,
        20_000,
        (shape, any::<u64>(), any::<Index>()),
        |(shape, seed, which)| {
            let mut other = shape.clone();
            let GenBody::Exceptions(excs) = &mut other.body else {
                unreachable!("filtered")
            };
            let with_frames: Vec<usize> = (0..excs.len())
                .filter(|&i| !excs[i].frames.is_empty())
                .collect();
            let exc = &mut excs[*which.get(&with_frames)];
            let in_app = exc
                .frames
                .iter()
                .position(|f| f.in_app == Some(true))
                .expect("one in-app frame");
            exc.frames[in_app].function = "zz_another_call_site".to_owned();
            let a = prepared(&render_event(&shape, seed))?;
            let b = prepared(&render_event(&other, seed))?;
            prop_assert_ne!(&a.grouping.fingerprint, &b.grouping.fingerprint);
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// Arbitrary JSON in any field.

/// Keys the collector reads, so arbitrary objects often land where they are looked at.
const KEYS: [&str; 27] = [
    "event_id",
    "timestamp",
    "level",
    "platform",
    "message",
    "logentry",
    "formatted",
    "exception",
    "values",
    "type",
    "value",
    "module",
    "mechanism",
    "handled",
    "data",
    "io_kind",
    "stacktrace",
    "frames",
    "function",
    "filename",
    "abs_path",
    "lineno",
    "in_app",
    "instruction_addr",
    "threads",
    "fingerprint",
    "tags",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
        select(vec![
            "{{ default }}",
            "std::io::Error",
            "Os",
            "panic",
            "ConnectionReset: x (os error 104)",
            "2026-11-22T10:15:00Z",
            "9ec79c33-ec99-42ab-8353-589fcb2e04dc",
            "",
            "?",
            "0x1f",
            "\u{1F980}é中",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![select(KEYS.to_vec()).prop_map(str::to_owned), ".{0,6}"],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Every object inside `v`, as a path of keys and indices from the root.
fn object_paths(v: &Value, path: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Object(m) => {
            out.push(path.clone());
            for (k, child) in m {
                path.push(k.clone().into());
                object_paths(child, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                path.push(i.into());
                object_paths(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn at_path<'v>(v: &'v mut Value, path: &[Value]) -> &'v mut Value {
    path.iter().fold(v, |v, step| match step {
        Value::String(k) => &mut v[k.as_str()],
        Value::Number(i) => &mut v[i.as_u64().expect("index") as usize],
        _ => unreachable!("paths hold keys and indices"),
    })
}

#[test]
fn arbitrary_json_in_any_field_never_panics_prepare_event() {
    let edit = (any::<Index>(), select(KEYS.to_vec()), json_value());
    check(
        "arbitrary-json",
        256,
        20_000,
        (gen_shape(), any::<u64>(), prop::collection::vec(edit, 1..5)),
        |(shape, seed, edits)| {
            let mut ev = render_event(&shape, seed);
            for (which, key, value) in edits {
                let mut paths = Vec::new();
                object_paths(&ev, &mut Vec::new(), &mut paths);
                let path = which.get(&paths).clone();
                let target = at_path(&mut ev, &path);
                target[key] = value;
            }
            let bytes = serde_json::to_vec(&ev).expect("json");
            prop_assume!(bytes.len() <= MAX_EVENT);
            prepare_checked(&bytes)?;
            Ok(())
        },
    );
}
