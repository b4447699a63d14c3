//! Message normalization and native function-name normalization on arbitrary text: never
//! panic and are deterministic (messages also on their own output).

#![no_main]

use errscope_collector::grouping::{normalize, normalize_function};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let once = normalize(text);
    assert_eq!(normalize(text), once);
    let twice = normalize(&once);
    assert_eq!(normalize(&once), twice);
    let name = normalize_function(text);
    assert_eq!(normalize_function(text), name);
    let _ = normalize_function(&name);
});
