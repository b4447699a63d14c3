//! Message normalization on arbitrary text: never panics and is deterministic, on the
//! text and on its own output.

#![no_main]

use errscope_collector::grouping::normalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let once = normalize(text);
    assert_eq!(normalize(text), once);
    let twice = normalize(&once);
    assert_eq!(normalize(&once), twice);
});
