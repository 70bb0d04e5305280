//! Continuous batching: many requests decode together on one model.
//!
//! A [`Batcher`] owns a thread that runs every forward pass of its model. Requests run on their
//! own threads, each with a [`Session`] from [`Batcher::session`] whose forward passes are sent
//! to that thread: a prompt (prefill) runs as soon as it arrives; one-token decode steps are
//! gathered and run as one batch — each sequence through the decoder layers with its own KV
//! cache and positions, the vocabulary projection once for all of them
//! ([`visionthink_model::Session::step_batch`]). A batch runs as soon as every open session has
//! a step waiting, or `window` after the first one arrived, so requests join and leave between
//! any two tokens (they start and end at different times) and a lone request never waits.
//! Each request keeps its own driver, sampler and protocol state: the tokens are the ones it
//! would get alone.
//!
//! ```no_run
//! use std::sync::Arc;
//! let vt = Arc::new(visionthink::VisionThink::from_dir("path/to/model")?);
//! let batcher = visionthink::batch::Batcher::start(vt.clone(), Default::default());
//! let image = visionthink::load_image("photo.jpg")?;
//! std::thread::scope(|s| {
//!     for q in ["What colour is it?", "What is written on it?"] {
//!         let (vt, batcher, image) = (&vt, &batcher, &image);
//!         s.spawn(move || vt.ask_in(batcher.session(vt), image, q, &Default::default(), &mut |_| {}));
//!     }
//! });
//! # Ok::<(), visionthink::Error>(())
//! ```

use crate::engine::{OnExecutor, Session, VisionThink};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use visionthink_core::image::PixelValues;
use visionthink_model::{Backend, Error as ModelError, Feed, Qwen25VL, Session as ModelSession};

/// Settings of a [`Batcher`].
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// How long the first waiting decode step waits for the other open sessions' steps.
    pub window: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(2),
        }
    }
}

/// Counters of a [`Batcher`] (read them any time).
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Decode batches run.
    pub batches: AtomicU64,
    /// Sequences stepped in those batches (÷ `batches` = the mean batch size).
    pub rows: AtomicU64,
    /// Prompts (prefills) run.
    pub prefills: AtomicU64,
    /// Sessions open now.
    pub open: AtomicU64,
    /// Microseconds the model thread spent on prompts.
    pub prefill_us: AtomicU64,
    /// Microseconds the model thread spent on decode batches.
    pub step_us: AtomicU64,
}

type Reply = Result<(Vec<f32>, f64), ModelError>;

/// What a request's session asks the model thread for.
enum Cmd {
    Open {
        id: u64,
        reply: Sender<Reply>,
    },
    Feed {
        id: u64,
        ids: Vec<u32>,
        images: Vec<PixelValues>,
    },
    Step {
        id: u64,
        token: u32,
    },
    Close {
        id: u64,
    },
}

/// The model thread and the way to it.
pub struct Batcher {
    tx: Sender<Cmd>,
    next_id: AtomicU64,
    stats: Arc<BatchStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("stats", &self.stats)
            .finish()
    }
}

impl Batcher {
    /// Starts the model thread of `vt`.
    pub fn start(vt: Arc<VisionThink>, cfg: BatchConfig) -> Self {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(BatchStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("visionthink-batcher".into())
            .spawn(move || {
                vt.on_executor(ModelThread {
                    rx,
                    cfg,
                    stats: &thread_stats,
                })
            })
            .ok();
        Self {
            tx,
            next_id: AtomicU64::new(0),
            stats,
            thread,
        }
    }

    /// The counters.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    /// A session of `vt` (the model this batcher was started with) whose forward passes run on
    /// the model thread, batched with the other sessions' decode steps.
    pub fn session<'a>(&self, vt: &'a VisionThink) -> Session<'a> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = mpsc::channel();
        let _ = self.tx.send(Cmd::Open { id, reply });
        vt.session_with(Box::new(Remote {
            id,
            tx: self.tx.clone(),
            rx,
        }))
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // The thread ends once every sender (this one and the sessions') is gone.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The model thread's work, on whichever executor the engine has.
struct ModelThread<'s> {
    rx: Receiver<Cmd>,
    cfg: BatchConfig,
    stats: &'s BatchStats,
}

impl OnExecutor for ModelThread<'_> {
    type Output = ();

    fn run<B: Backend>(self, be: &B, model: &Qwen25VL<B>, merge: u32) {
        run(be, model, merge, &self.rx, self.cfg, self.stats);
    }
}

/// A session's end of the channel to the model thread.
struct Remote {
    id: u64,
    tx: Sender<Cmd>,
    rx: Receiver<Reply>,
}

impl Remote {
    fn call(&self, cmd: Cmd) -> Reply {
        let gone = || ModelError::DeviceLost("the model thread has stopped".into());
        self.tx.send(cmd).map_err(|_| gone())?;
        self.rx.recv().map_err(|_| gone())?
    }
}

impl Feed for Remote {
    fn feed(
        &mut self,
        ids: &[u32],
        images: &[PixelValues],
        _clock: &dyn Fn() -> f64,
    ) -> visionthink_model::Result<(Vec<f32>, f64)> {
        self.call(Cmd::Feed {
            id: self.id,
            ids: ids.to_vec(),
            images: images.to_vec(),
        })
    }

    fn feed_tokens(&mut self, ids: &[u32]) -> visionthink_model::Result<Vec<f32>> {
        let reply = match ids {
            [token] => self.call(Cmd::Step {
                id: self.id,
                token: *token,
            }),
            _ => self.call(Cmd::Feed {
                id: self.id,
                ids: ids.to_vec(),
                images: Vec::new(),
            }),
        };
        reply.map(|(logits, _)| logits)
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Close { id: self.id });
    }
}

/// One open session on the model thread (`None` once a failed batch left it half-advanced:
/// every later call on it is an error).
struct Slot<'m, B: Backend> {
    session: Option<ModelSession<'m, B>>,
    reply: Sender<Reply>,
}

fn failed_before() -> ModelError {
    ModelError::Backend("this session failed in an earlier batch".into())
}

fn panic_error(p: &(dyn std::any::Any + Send)) -> ModelError {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a forward pass panicked".into());
    ModelError::Backend(format!("internal error: {msg}"))
}

/// The model thread's loop (see the module docs). Ends when every sender is gone.
fn run<B: Backend>(
    be: &B,
    model: &Qwen25VL<B>,
    merge: u32,
    rx: &Receiver<Cmd>,
    cfg: BatchConfig,
    stats: &BatchStats,
) {
    let mut t = Thread {
        be,
        model,
        merge,
        stats,
        slots: HashMap::new(),
        waiting: HashMap::new(),
        first_wait: None,
    };
    let mut open = true;
    while open || !t.waiting.is_empty() {
        let cmd = match t.first_wait {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(w) => rx.recv_timeout(cfg.window.saturating_sub(w.elapsed())),
        };
        let mut next = match cmd {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                open = false;
                None
            }
        };
        // Everything that has arrived, without waiting.
        while let Some(c) = next.take().or_else(|| rx.try_recv().ok()) {
            t.handle(c);
        }
        stats.open.store(t.slots.len() as u64, Ordering::Relaxed);
        let due = t.first_wait.is_some_and(|w| w.elapsed() >= cfg.window)
            || t.waiting.len() >= t.slots.len()
            || !open;
        if t.waiting.is_empty() || !due {
            continue;
        }
        let started = Instant::now();
        step(&mut t.slots, &mut t.waiting, stats);
        stats
            .step_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        t.first_wait = None;
    }
}

/// The model thread's state: the open sessions and the decode steps waiting for a batch.
struct Thread<'m, B: Backend> {
    be: &'m B,
    model: &'m Qwen25VL<B>,
    merge: u32,
    stats: &'m BatchStats,
    slots: HashMap<u64, Slot<'m, B>>,
    waiting: HashMap<u64, u32>,
    first_wait: Option<Instant>,
}

impl<B: Backend> Thread<'_, B> {
    /// Takes one command: opens or closes a session, runs a prompt now, or queues a step.
    fn handle(&mut self, c: Cmd) {
        match c {
            Cmd::Open { id, reply } => {
                let session = Some(ModelSession::new(self.be, self.model, self.merge));
                self.slots.insert(id, Slot { session, reply });
            }
            Cmd::Close { id } => {
                self.slots.remove(&id);
                self.waiting.remove(&id);
            }
            Cmd::Feed { id, ids, images } => self.prefill(id, &ids, &images),
            Cmd::Step { id, token } => match self.slots.get(&id) {
                Some(Slot {
                    session: None,
                    reply,
                }) => {
                    let _ = reply.send(Err(failed_before()));
                }
                Some(_) => {
                    self.waiting.insert(id, token);
                    self.first_wait.get_or_insert_with(Instant::now);
                }
                None => {}
            },
        }
    }

    /// Runs a prompt on its session at once and answers.
    fn prefill(&mut self, id: u64, ids: &[u32], images: &[PixelValues]) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let Some(session) = slot.session.as_mut() else {
            let _ = slot.reply.send(Err(failed_before()));
            return;
        };
        self.stats.prefills.fetch_add(1, Ordering::Relaxed);
        let t = Instant::now();
        let clock = move || t.elapsed().as_secs_f64() * 1e3;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Feed::feed(session, ids, images, &clock)
        }))
        .unwrap_or_else(|p| Err(panic_error(p.as_ref())));
        self.stats
            .prefill_us
            .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        if out.is_err() {
            // A failed prefill may have advanced the positions.
            slot.session = None;
        }
        let _ = slot.reply.send(out);
    }
}

/// Runs one decode batch over the waiting sessions and answers each.
fn step<B: Backend>(
    slots: &mut HashMap<u64, Slot<'_, B>>,
    waiting: &mut HashMap<u64, u32>,
    stats: &BatchStats,
) {
    let mut members: Vec<(u64, u32, &mut Slot<'_, B>)> = slots
        .iter_mut()
        .filter(|(_, s)| s.session.is_some())
        .filter_map(|(id, s)| waiting.get(id).map(|&t| (*id, t, s)))
        .collect();
    waiting.clear();
    // A sequence at the end of the context gets its own error; the others step on.
    members.retain_mut(|m| {
        let full = m.2.session.as_ref().is_some_and(|s| !s.fits(1));
        if full {
            let n = m.2.session.as_ref().map_or(0, ModelSession::len);
            let _ = m.2.reply.send(Err(ModelError::Input(format!(
                "the sequence of {n} tokens fills the model's context"
            ))));
        }
        !full
    });
    if members.is_empty() {
        return;
    }
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .rows
        .fetch_add(members.len() as u64, Ordering::Relaxed);
    let tokens: Vec<u32> = members.iter().map(|m| m.1).collect();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sessions: Vec<&mut ModelSession<'_, B>> = members
            .iter_mut()
            .filter_map(|m| m.2.session.as_mut())
            .collect();
        let be = sessions
            .first()
            .map(|s| s.backend())
            .ok_or_else(|| ModelError::Input("an empty batch".into()))?;
        let logits = ModelSession::step_batch(&mut sessions, &tokens)?;
        // Each row is read straight into the vector its request receives (one copy).
        (0..tokens.len())
            .map(|i| be.to_vec(&be.narrow_rows(&logits, i, 1)?))
            .collect::<Result<Vec<_>, _>>()
    }))
    .unwrap_or_else(|p| Err(panic_error(p.as_ref())));
    match out {
        Ok(rows) => {
            for ((_, _, slot), row) in members.iter().zip(rows) {
                let _ = slot.reply.send(Ok((row, 0.0)));
            }
        }
        Err(e) => {
            // The batch's sessions may be half-advanced: each member gets the error, and later
            // calls on its session are errors too.
            for (_, _, slot) in &mut members {
                let _ = slot.reply.send(Err(clone_error(&e)));
                slot.session = None;
            }
        }
    }
}

/// The same error for every member of a failed batch (model errors carry text only).
fn clone_error(e: &ModelError) -> ModelError {
    match e {
        ModelError::Input(m) => ModelError::Input(m.clone()),
        ModelError::OutOfMemory(m) => ModelError::OutOfMemory(m.clone()),
        ModelError::DeviceLost(m) => ModelError::DeviceLost(m.clone()),
        other => ModelError::Backend(other.to_string()),
    }
}
