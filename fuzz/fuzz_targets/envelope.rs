//! Request bodies as the envelope endpoint reads them: `Content-Encoding` decoding, then
//! envelope framing, then each event item through `prepare_event`.
//!
//! The first byte picks the encoding (most inputs are identity, so framing gets most of
//! the time). Beyond "never panics", it checks that decoding respects its bound, that
//! framing agrees with `parse_header`, and that the items, framed again with explicit
//! lengths, parse back to the same items.

#![no_main]

use errscope_collector::ingest::body::{self, BodyError};
use errscope_collector::ingest::envelope::{self, Item};
use errscope_collector::ingest::{IngestError, prepare_event};
use libfuzzer_sys::fuzz_target;

/// Decoded bytes allowed: small, so a compression bomb costs milliseconds, not seconds.
const LIMIT: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let encoding = match selector % 8 {
        0 => Some("gzip"),
        1 => Some("deflate"),
        2 => Some("br"),
        3 => Some(" X-GZIP "),
        4 => Some("zstd"),
        _ => None,
    };
    let decoded = match body::decode(encoding, rest, LIMIT) {
        Ok(d) => d,
        Err(BodyError::Unsupported(_)) => {
            assert_eq!(encoding, Some("zstd"));
            return;
        }
        Err(BodyError::TooLarge(n)) => {
            assert_eq!(n, LIMIT);
            return;
        }
        Err(BodyError::Corrupt(..)) => {
            assert!(encoding.is_some(), "identity bodies are never corrupt");
            return;
        }
    };
    assert!(decoded.len() <= LIMIT);
    if encoding.is_none() {
        assert_eq!(decoded, rest);
    }
    let Ok((header, items)) = envelope::parse(&decoded) else {
        return;
    };
    assert_eq!(envelope::parse_header(&decoded).as_ref(), Ok(&header));
    let range = decoded.as_ptr_range();
    for item in &items {
        let p = item.payload.as_ptr_range();
        assert!(range.start <= p.start && p.end <= range.end);
    }
    let again = reframe(&items);
    let (_, parsed) = envelope::parse(&again).expect("a reframed envelope parses");
    assert_eq!(parsed, items);
    for item in items.iter().filter(|i| i.ty == "event") {
        match prepare_event(item.payload, 1_700_000_000_000, None) {
            Ok(ev) => assert_eq!(ev.event_id.len(), 32),
            Err(IngestError::Malformed(_) | IngestError::TooLarge(_)) => {}
            Err(e) => panic!("prepare_event failed with an unexpected error: {e:?}"),
        }
    }
});

/// Frames items as the errscope agent does: an empty header, `type` and `length`.
fn reframe(items: &[Item<'_>]) -> Vec<u8> {
    let mut out = b"{}\n".to_vec();
    for item in items {
        let header = serde_json::json!({ "type": item.ty, "length": item.payload.len() });
        out.extend_from_slice(header.to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(item.payload);
        out.push(b'\n');
    }
    out
}
