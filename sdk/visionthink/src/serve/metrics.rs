//! Request counters and the request-duration histogram (`/metrics`).

use crate::batch::BatchStats;
use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Writes one metric family in the Prometheus text format: its `# TYPE` line, then one sample
/// per `(labels, value)` (`labels` like `reason="deadline"`, or empty).
pub(super) fn family(out: &mut String, kind: &str, name: &str, samples: &[(&str, &dyn Display)]) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = match labels.is_empty() {
            true => writeln!(out, "{name} {value}"),
            false => writeln!(out, "{name}{{{labels}}} {value}"),
        };
    }
}

impl Counters {
    /// The request counters.
    pub(super) fn render(&self, out: &mut String) {
        for (name, value) in [
            ("visionthink_requests_total", &self.requests),
            ("visionthink_requests_rejected_total", &self.rejected),
            ("visionthink_requests_completed_total", &self.completed),
            ("visionthink_requests_failed_total", &self.failed),
        ] {
            family(out, "counter", name, &[("", &get(value))]);
        }
        family(
            out,
            "counter",
            "visionthink_requests_cancelled_total",
            &[
                ("reason=\"client_gone\"", &get(&self.client_gone)),
                ("reason=\"deadline\"", &get(&self.deadline)),
            ],
        );
        family(
            out,
            "gauge",
            "visionthink_requests_in_flight",
            &[("", &get(&self.in_flight))],
        );
        family(
            out,
            "counter",
            "visionthink_generated_tokens_total",
            &[("", &get(&self.generated_tokens))],
        );
        family(
            out,
            "counter",
            "visionthink_queue_rejected_total",
            &[("", &get(&self.queue_full))],
        );
    }
}

/// The batcher's counters and the model thread's busy time.
pub(super) fn render_batch(out: &mut String, b: &BatchStats) {
    for (kind, name, value) in [
        ("counter", "visionthink_batch_steps_total", &b.batches),
        ("counter", "visionthink_batch_rows_total", &b.rows),
        ("counter", "visionthink_prefills_total", &b.prefills),
        ("gauge", "visionthink_batch_open_sessions", &b.open),
    ] {
        family(out, kind, name, &[("", &get(value))]);
    }
    family(
        out,
        "counter",
        "visionthink_model_busy_seconds_total",
        &[
            ("work=\"prefill\"", &(get(&b.prefill_us) as f64 / 1e6)),
            ("work=\"decode\"", &(get(&b.step_us) as f64 / 1e6)),
        ],
    );
}

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
