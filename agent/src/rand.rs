//! Cheap random ids: a per-thread xorshift generator seeded once from the OS.
//!
//! `uuid::Uuid::new_v4` asks the OS for randomness on every call (a system call);
//! event ids are made on the host's threads, so they come from a seeded generator.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<(u64, u64)> = Cell::new(seed());
}

fn seed() -> (u64, u64) {
    let bits = uuid::Uuid::new_v4().as_u128();
    // The two halves of an OS-random UUID; `| 1` keeps xorshift out of its zero state.
    ((bits >> 64) as u64 | 1, bits as u64 | 1)
}

/// xorshift128+: fast, and good enough for ids and sampling (not for secrets).
fn next_u64() -> u64 {
    STATE
        .try_with(|state| {
            let (mut s1, s0) = state.get();
            let result = s0.wrapping_add(s1);
            s1 ^= s1 << 23;
            s1 = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
            state.set((s0, s1));
            result
        })
        // A capture from a thread-local destructor: ask the OS.
        .unwrap_or_else(|_| uuid::Uuid::new_v4().as_u128() as u64)
}

/// A random version 4 UUID.
pub(crate) fn uuid_v4() -> uuid::Uuid {
    let hi = next_u64().to_le_bytes();
    let lo = next_u64().to_le_bytes();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi);
    bytes[8..].copy_from_slice(&lo);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// A random 32-hex id, for count records.
pub(crate) fn hex_id() -> String {
    uuid_v4().simple().to_string()
}
