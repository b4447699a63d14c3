//! The capture entry point the optional integrations share: they build the chain or
//! message themselves and name their own fingerprint, so that, say, every `error!` of a
//! service does not land in one storm-limiter slot just because they all pass through
//! the same line of the tracing layer.

use std::hash::{BuildHasher as _, Hash};
use std::panic::Location;

use crate::assemble::{Custom, Payload};
use crate::client;
use crate::event::{EventId, Level};
use crate::storm::StormKey;

/// A fixed-key hash (the same value on every thread and run), for storm fingerprints.
pub(crate) fn stable_hash(value: impl Hash) -> u64 {
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(value)
}

/// Records `custom` at `level`. `kind` and `fingerprint` name the storm fingerprint
/// (together with the caller's location). The current domain and, unless the integration
/// brings frames of its own, the caller's stack go with it, as for `capture_error`.
#[track_caller]
pub(crate) fn capture(
    kind: &'static str,
    fingerprint: u64,
    level: Level,
    custom: impl FnOnce() -> Custom,
) -> EventId {
    let location = Location::caller();
    let Some(client) = client::current() else {
        return EventId::nil();
    };
    let key = StormKey {
        ty: kind,
        debug_name: fingerprint,
        location,
        io_kind: None,
    };
    client.capture(key, level, || Payload::Custom(Box::new(custom())))
}
