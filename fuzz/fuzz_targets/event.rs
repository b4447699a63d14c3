//! Event JSON through `prepare_event` (validation, grouping, tags, compression).
//!
//! Beyond "never panics" it checks what the store relies on: a 32-hex event id, a known
//! level, a timestamp not after arrival, bounded and unique tags, a 32-hex fingerprint,
//! bounded titles, a body that inflates back to the input, and that grouping is
//! deterministic.

#![no_main]

use errscope_collector::grouping;
use errscope_collector::ingest::event::Event;
use errscope_collector::ingest::{IngestError, prepare_event};
use errscope_collector::store::queries::decode_event;
use libfuzzer_sys::fuzz_target;

const RECEIVED: i64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let ev = match prepare_event(data, RECEIVED, None) {
        Ok(ev) => ev,
        Err(IngestError::Malformed(_) | IngestError::TooLarge(_)) => return,
        Err(e) => panic!("unexpected error kind: {e:?}"),
    };
    let hex32 =
        |s: &str| s.len() == 32 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    assert!(hex32(&ev.event_id), "{}", ev.event_id);
    assert!(hex32(&ev.grouping.fingerprint));
    assert!(["fatal", "error", "warning", "info", "debug"].contains(&ev.level.as_str()));
    assert!(ev.timestamp <= RECEIVED);
    assert!(ev.tags.len() <= 50);
    assert_eq!(ev.tags[0], ("level".to_owned(), ev.level.clone()));
    for (i, (k, _)) in ev.tags.iter().enumerate() {
        assert!(!k.is_empty());
        assert!(
            !ev.tags[..i].iter().any(|(x, _)| x == k),
            "tag `{k}` twice in {:?}",
            ev.tags
        );
    }
    let g = &ev.grouping;
    assert!(!g.title.is_empty());
    for s in [&g.title, &g.culprit, &g.message] {
        assert!(s.len() <= 200 + '…'.len_utf8(), "{} bytes", s.len());
    }
    assert_eq!(decode_event(ev.encoding, &ev.data).expect("inflates"), data);
    let parsed: Event<'_> = serde_json::from_slice(data).expect("accepted events parse");
    assert_eq!(grouping::group(&parsed), ev.grouping);
    let again = prepare_event(data, RECEIVED, Some(ev.event_id.clone())).expect("accepted twice");
    assert_eq!(again.grouping, ev.grouping);
    assert_eq!(again.tags, ev.tags);
});
