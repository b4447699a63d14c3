//! Wall-clock helpers, and [`Stamp`]: a moment read cheaply on the host's thread and
//! turned into wall-clock time only when an event carries it.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as Sentry's numeric timestamps.
pub(crate) fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A moment of a breadcrumb: the CPU's time-stamp counter where it ticks at a constant
/// rate in every state (x86-64 with an invariant TSC; one instruction, no vDSO call),
/// else the wall clock. [`Stamp::epoch`] makes it seconds since the Unix epoch.
///
/// Not `quanta` or `minstant`: both calibrate the counter before its first use (quanta's
/// global clock up to 200 ms on the first reader's thread, minstant at process start),
/// and a host's first `info!` must not wait. Here the rate is measured only when stamps are
/// turned into wall-clock time, from the first stamp's anchor to that moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Stamp {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Tsc(u64),
    Wall(f64),
}

/// The counter and the monotonic clock read together once, before any [`Stamp::Tsc`]:
/// the rate of the counter is measured from there to each conversion.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    tsc: u64,
    mono: Instant,
}

/// `Some` when the counter is usable (see [`Stamp`]), set on the first stamp.
static ANCHOR: OnceLock<Option<Anchor>> = OnceLock::new();

impl Stamp {
    /// Now.
    pub(crate) fn now() -> Self {
        match ANCHOR.get_or_init(anchor) {
            Some(_) => Self::Tsc(tsc()),
            None => Self::Wall(now_epoch()),
        }
    }

    /// Seconds since the Unix epoch (for many stamps, [`Now::epoch`] reads the clocks
    /// once).
    #[cfg(test)]
    pub(crate) fn epoch(self) -> f64 {
        Now::read().epoch(self)
    }
}

/// The clocks read once to turn [`Stamp`]s into wall-clock time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    wall: f64,
    /// The counter now, and seconds per tick since the anchor (`None`: no counter).
    tsc: Option<(u64, f64)>,
}

impl Now {
    pub(crate) fn read() -> Self {
        let tsc = match ANCHOR.get() {
            Some(Some(anchor)) => read_both().and_then(|(tsc, mono)| {
                let ticks = tsc.checked_sub(anchor.tsc).filter(|&t| t > 0)?;
                let secs = mono.saturating_duration_since(anchor.mono).as_secs_f64();
                Some((tsc, secs / ticks as f64))
            }),
            _ => None,
        };
        Self {
            wall: now_epoch(),
            tsc,
        }
    }

    /// A stamp in seconds since the Unix epoch. A counter reading is put back from now by
    /// its age, at the counter's rate measured since the anchor: the error is the age
    /// times the rate's relative error, about the microsecond of one reading at most.
    pub(crate) fn epoch(&self, stamp: Stamp) -> f64 {
        match (stamp, self.tsc) {
            (Stamp::Wall(t), _) => t,
            (Stamp::Tsc(t), Some((now, secs_per_tick))) => {
                self.wall - now.saturating_sub(t) as f64 * secs_per_tick
            }
            // No usable reading now (the counter did not move since the anchor, or it
            // read backwards five times): the stamp is taken as of now.
            (Stamp::Tsc(_), None) => self.wall,
        }
    }
}

/// The counter and the monotonic clock at one moment: the counter read on both sides of
/// the clock, again if the thread was held up in between.
fn read_both() -> Option<(u64, Instant)> {
    let mut best: Option<(u64, u64, Instant)> = None;
    for _ in 0..5 {
        let before = tsc();
        let mono = Instant::now();
        let after = tsc();
        // Moved to a core whose counter is behind: read again.
        let Some(spread) = after.checked_sub(before) else {
            continue;
        };
        if best.is_none_or(|(s, _, _)| spread < s) {
            best = Some((spread, before + spread / 2, mono));
        }
        // About a microsecond at any clock rate of today's CPUs.
        if spread < 4_000 {
            break;
        }
    }
    best.map(|(_, tsc, mono)| (tsc, mono))
}

fn anchor() -> Option<Anchor> {
    if !invariant_tsc() {
        return None;
    }
    let (tsc, mono) = read_both()?;
    Some(Anchor { tsc, mono })
}

#[cfg(target_arch = "x86_64")]
fn invariant_tsc() -> bool {
    use std::arch::x86_64::__cpuid;
    // CPUID 8000_0007h EDX bit 8: the counter runs at a constant rate in all ACPI P-,
    // C- and T-states (what Linux shows as `constant_tsc` + `nonstop_tsc`).
    let max_extended = __cpuid(0x8000_0000).eax;
    max_extended >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn invariant_tsc() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions; every x86-64 CPU has it.
    unsafe { std::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn tsc() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_as_the_wall_clock_of_its_moment() {
        let before = now_epoch();
        let stamp = Stamp::now();
        let after = now_epoch();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let t = stamp.epoch();
        // Read 30 ms later, it still says when it was taken (within a millisecond).
        assert!(
            t >= before - 1e-3 && t <= after + 1e-3,
            "{before} <= {t} <= {after}"
        );
        let later = Stamp::now();
        assert!(
            later.epoch() >= t + 0.029,
            "stamps keep their order and spacing"
        );
    }
}
