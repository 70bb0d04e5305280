//! What every request shares: the model and its batcher, the admission gate, the counters.

use super::config::*;
use super::metrics::*;
use crate::batch::Batcher;
use crate::engine::VisionThink;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Admission to the model: `slots` places in the batch, and a bounded number of requests
/// waiting for one.
pub(super) struct Gate {
    pub(super) slots: Arc<tokio::sync::Semaphore>,
    pub(super) waiting: AtomicU64,
    pub(super) max_waiting: u64,
}

impl Gate {
    pub(super) fn new(slots: usize, max_waiting: usize) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(slots.max(1))),
            waiting: AtomicU64::new(0),
            max_waiting: max_waiting as u64,
        }
    }
}

/// The model, the thread that batches its forward passes, and the way in.
pub(super) struct Model {
    pub(super) vt: Arc<VisionThink>,
    pub(super) batcher: Batcher,
}

pub(super) struct AppState {
    pub(super) model: Option<Arc<Model>>,
    pub(super) gate: Gate,
    pub(super) cfg: ServeConfig,
    pub(super) counters: Counters,
    pub(super) latency: Latency,
}
