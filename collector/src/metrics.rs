//! Counters for `GET /metrics`, in Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Why a request was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Malformed input (400).
    Malformed,
    /// Missing or unknown key (401).
    Unauthorized,
    /// Key of another project (403).
    Forbidden,
    /// Too large (413).
    TooLarge,
    /// The body did not arrive in time (408).
    Timeout,
    /// Unsupported content encoding (415).
    Encoding,
    /// Rate limited (429).
    RateLimited,
    /// Writer queue full (503).
    QueueFull,
    /// The memory budget for request bodies in flight was taken (503).
    MemoryBusy,
    /// Internal error (500).
    Internal,
}

const REASONS: [(Reject, &str); 10] = [
    (Reject::Malformed, "malformed"),
    (Reject::Unauthorized, "unauthorized"),
    (Reject::Forbidden, "forbidden"),
    (Reject::TooLarge, "too_large"),
    (Reject::Timeout, "timeout"),
    (Reject::Encoding, "unsupported_encoding"),
    (Reject::RateLimited, "rate_limited"),
    (Reject::QueueFull, "queue_full"),
    (Reject::MemoryBusy, "memory_busy"),
    (Reject::Internal, "internal"),
];

/// Commit latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 9] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// The collector's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events committed.
    pub events_accepted: AtomicU64,
    /// Events that were retries of stored ones.
    pub events_duplicate: AtomicU64,
    rejected: [AtomicU64; 10],
    /// Jobs waiting for the writer.
    pub queue_depth: AtomicI64,
    commits: AtomicU64,
    commit_micros: AtomicU64,
    commit_buckets: [AtomicU64; 9],
}

impl Metrics {
    /// Counts a rejected request.
    pub fn reject(&self, why: Reject) {
        if let Some(i) = REASONS.iter().position(|(r, _)| *r == why) {
            self.rejected[i].fetch_add(1, Relaxed);
        }
    }

    /// Records one writer transaction.
    pub fn commit(&self, d: std::time::Duration) {
        self.commits.fetch_add(1, Relaxed);
        self.commit_micros.fetch_add(d.as_micros() as u64, Relaxed);
        let secs = d.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.commit_buckets[i].fetch_add(1, Relaxed);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP errscope_events_accepted_total Events committed to the database."
        );
        let _ = writeln!(out, "# TYPE errscope_events_accepted_total counter");
        let _ = writeln!(
            out,
            "errscope_events_accepted_total {}",
            self.events_accepted.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP errscope_events_duplicate_total Retried events answered without storing them again."
        );
        let _ = writeln!(out, "# TYPE errscope_events_duplicate_total counter");
        let _ = writeln!(
            out,
            "errscope_events_duplicate_total {}",
            self.events_duplicate.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP errscope_requests_rejected_total Ingestion requests rejected, by reason."
        );
        let _ = writeln!(out, "# TYPE errscope_requests_rejected_total counter");
        for (i, (_, name)) in REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "errscope_requests_rejected_total{{reason=\"{name}\"}} {}",
                self.rejected[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP errscope_writer_queue_depth Jobs waiting for the writer thread."
        );
        let _ = writeln!(out, "# TYPE errscope_writer_queue_depth gauge");
        let _ = writeln!(
            out,
            "errscope_writer_queue_depth {}",
            self.queue_depth.load(Relaxed).max(0)
        );
        let _ = writeln!(
            out,
            "# HELP errscope_commit_seconds Writer transaction latency."
        );
        let _ = writeln!(out, "# TYPE errscope_commit_seconds histogram");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "errscope_commit_seconds_bucket{{le=\"{bound}\"}} {}",
                self.commit_buckets[i].load(Relaxed)
            );
        }
        let commits = self.commits.load(Relaxed);
        let _ = writeln!(
            out,
            "errscope_commit_seconds_bucket{{le=\"+Inf\"}} {commits}"
        );
        let _ = writeln!(
            out,
            "errscope_commit_seconds_sum {}",
            self.commit_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "errscope_commit_seconds_count {commits}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::default();
        m.reject(Reject::TooLarge);
        m.commit(std::time::Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("errscope_requests_rejected_total{reason=\"too_large\"} 1"));
        assert!(text.contains("errscope_commit_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("errscope_commit_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("errscope_commit_seconds_count 1"));
    }
}
