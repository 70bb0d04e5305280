//! Request counters and the request-duration histogram (`/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) completed: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) client_gone: AtomicU64,
    pub(super) deadline: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) generated_tokens: AtomicU64,
    pub(super) queue_full: AtomicU64,
}

/// Request durations (arrival to the last byte of the answer) as a Prometheus histogram.
pub(super) struct Latency {
    pub(super) buckets: Vec<(f64, AtomicU64)>,
    pub(super) sum_us: AtomicU64,
    pub(super) count: AtomicU64,
}

impl Latency {
    pub(super) fn new() -> Self {
        let bounds = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
        Self {
            buckets: bounds.iter().map(|&b| (b, AtomicU64::new(0))).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub(super) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, n) in &self.buckets {
            if secs <= *bound {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let name = "visionthink_request_duration_seconds";
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, n) in &self.buckets {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Counts a request in flight for as long as it lives.
pub(super) struct InFlight<'a>(pub(super) &'a Counters);

impl<'a> InFlight<'a> {
    pub(super) fn enter(c: &'a Counters) -> Self {
        c.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
