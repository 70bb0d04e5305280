//! The token loop of a low-res-first episode, sans I/O, in the manner of rustls's unbuffered
//! API: the driver decides everything an executor must not — the turn-1 prompt, teacher-forced
//! turns, stop ids, the token-budget cut (a turn cut by the budget ends with `<|im_end|>`, as the
//! official rollout guarantees), the tool turns and their images, streaming text, visual-token
//! counts and the answer record — and the caller only runs the model on what the driver asks
//! for. The Rust SDK (blocking), the browser (`async`, reading logits back from the GPU) and the
//! trainer (many rollouts in lock-step) drive this same loop, so they cannot drift apart.
//!
//! The caller loop:
//!
//! ```
//! # use visionthink_core::driver::{Action, EpisodeDriver, EpisodeOptions, ModelInfo, Feed};
//! # use visionthink_core::answer::Answer;
//! // `run_model` appends `feed.ids` (with `feed.images` for their image pads) to the KV cache
//! // and returns the logits of the last position.
//! fn ask(
//!     info: ModelInfo<'_>,
//!     image: &visionthink_core::image::RgbImage,
//!     mut run_model: impl FnMut(&Feed) -> visionthink_core::Result<Vec<f32>>,
//! ) -> visionthink_core::Result<Answer> {
//!     let opts = EpisodeOptions::default();
//!     let clock = || 0.0; // milliseconds; `Instant` natively, `performance.now()` in browsers
//!     let mut driver = EpisodeDriver::new(info, image, "What is written here?", &opts, &clock)?;
//!     let mut action = driver.start()?;
//!     loop {
//!         match action {
//!             Action::Feed(feed) => {
//!                 let logits = run_model(&feed)?;
//!                 action = driver.on_logits(&logits, &mut |_event| {})?;
//!             }
//!             Action::Done(answer) => return Ok(answer),
//!         }
//!     }
//! }
//! ```

use crate::answer::{Answer, Event, Timings};
use crate::config::{GenerationConfig, PreprocessorConfig};
use crate::error::{Error, Result};
use crate::image::{visual_tokens, PixelPool, PixelValues, RgbImage};
use crate::model_files::ModelFiles;
use crate::prompt::ChatTemplate;
use crate::protocol::{Episode, EpisodeImages, ProtocolConfig, Step};
use crate::sampling::{Sampler, SamplingConfig};
use crate::tokenizer::{QwenTokenizer, StreamDecoder};
use crate::tokens;

/// Options of one episode: the one set of defaults of the SDK, the browser and the CLI.
#[derive(Debug, Clone)]
pub struct EpisodeOptions {
    /// New-token budget per model turn (official evaluation: 8192).
    pub max_new_tokens: usize,
    /// Greedy or sampled selection.
    pub sampling: SamplingConfig,
    /// Keep generating past `<|im_end|>` / `<|endoftext|>` (benchmarks); the budget then ends
    /// each turn with whatever token was chosen.
    pub ignore_eos: bool,
    /// Rounds, images and tools (official: 2, 2, `resize_image`).
    pub protocol: ProtocolConfig,
    /// Teacher forcing: the model is fed these turn texts instead of choosing tokens (replaying
    /// a recorded trajectory, testing both branches on any checkpoint). Turns beyond the list
    /// are generated.
    pub forced_turns: Vec<String>,
}

impl Default for EpisodeOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 8192,
            sampling: SamplingConfig::default(),
            ignore_eos: false,
            protocol: ProtocolConfig::default(),
            forced_turns: Vec::new(),
        }
    }
}

impl EpisodeOptions {
    /// Checks the options a caller may have set from user input.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(Error::Protocol("max_new_tokens must be at least 1".into()));
        }
        let s = &self.sampling;
        if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
            return Err(Error::Protocol(format!(
                "temperature must be a finite number ≥ 0, got {}",
                s.temperature
            )));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(Error::Protocol(format!(
                "top_p must be in (0, 1], got {}",
                s.top_p
            )));
        }
        if self.protocol.max_rounds == 0 || self.protocol.max_images == 0 {
            return Err(Error::Protocol(
                "max_rounds and max_images must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What the driver reads from a model's files.
#[derive(Debug, Clone, Copy)]
pub struct ModelInfo<'a> {
    /// The tokenizer.
    pub tokenizer: &'a QwenTokenizer,
    /// Image processor settings.
    pub preprocessor: &'a PreprocessorConfig,
    /// Stop ids come from here (plus `<|im_end|>` and `<|endoftext|>`).
    pub generation: Option<&'a GenerationConfig>,
    /// Turn 1 is rendered through it when present.
    pub chat_template: Option<&'a ChatTemplate>,
}

impl<'a> From<&'a ModelFiles> for ModelInfo<'a> {
    fn from(f: &'a ModelFiles) -> Self {
        Self {
            tokenizer: &f.tokenizer,
            preprocessor: &f.preprocessor,
            generation: f.generation.as_ref(),
            chat_template: f.chat_template.as_ref(),
        }
    }
}

/// How the executor accounts for a feed (the model computes the same either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    /// A prompt: turn 1, or a tool turn (timed as prefill).
    Prompt,
    /// One generated token (timed as decode).
    Token,
}

/// Tokens for the caller to append to the model's KV cache.
#[derive(Debug, Clone)]
pub struct Feed {
    /// The ids, in order.
    pub ids: Vec<u32>,
    /// The images whose `<|image_pad|>` runs `ids` contains, in order.
    pub images: Vec<PixelValues>,
    /// Prompt or generated token.
    pub kind: FeedKind,
}

/// What the caller does next.
#[derive(Debug, Clone)]
#[must_use]
pub enum Action {
    /// Run the model on this feed, then call [`EpisodeDriver::on_logits`] with the last
    /// position's logits.
    Feed(Feed),
    /// The episode is over. Its timings hold the driver's part (preprocessing, the tokens chosen
    /// and the time choosing them, the total); the executor adds its own vision, prefill and
    /// decoding forward passes ([`Timings::with_executor`]).
    Done(Answer),
}

/// One chosen token of a turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Picked {
    /// The id (the budget cut may have replaced the chosen one by `<|im_end|>`).
    pub id: u32,
    /// The text this token adds to the stream, once it is complete UTF-8.
    pub piece: Option<String>,
    /// The turn ends with this token (a stop id, or the budget).
    pub last: bool,
}

/// The token loop of one model turn: forced or chosen tokens, stop ids, the budget cut,
/// streaming text. Used by [`EpisodeDriver`] and by plain generation (no episode).
#[derive(Debug, Clone)]
pub struct TurnDecoder {
    budget: usize,
    eos: Vec<u32>,
    ignore_eos: bool,
    forced: Option<Vec<u32>>,
    ids: Vec<u32>,
    /// `None`: no streamed text (rollouts that only need the ids).
    stream: Option<StreamDecoder>,
}

impl TurnDecoder {
    /// A turn of at most `max_new_tokens` tokens (`forced`: these tokens instead, and exactly
    /// as many). `eos` are the stop ids.
    pub fn new(
        max_new_tokens: usize,
        eos: Vec<u32>,
        ignore_eos: bool,
        forced: Option<Vec<u32>>,
    ) -> Result<Self> {
        let budget = forced.as_ref().map_or(max_new_tokens, Vec::len);
        if budget == 0 {
            return Err(Error::Protocol("max_new_tokens must be at least 1".into()));
        }
        Ok(Self {
            budget,
            eos,
            ignore_eos,
            forced,
            ids: Vec::new(),
            stream: Some(StreamDecoder::default()),
        })
    }

    /// Without streamed text ([`Picked::piece`] is always `None`): saves two detokenisations
    /// per token where nobody reads the stream (training rollouts).
    pub fn without_stream(mut self) -> Self {
        self.stream = None;
        self
    }

    /// The turn's token budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The turn's tokens so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The forced token due next, if the turn is teacher-forced.
    pub fn forced_next(&self) -> Option<u32> {
        self.forced
            .as_ref()
            .and_then(|f| f.get(self.ids.len()).copied())
    }

    /// Replaces the rest of the turn: from the next token on, `ids` are emitted, and the turn
    /// ends after `budget` tokens in all (a steering hook: the trainer's forced baselines).
    pub fn force_rest(&mut self, ids: Vec<u32>, budget: usize) {
        let mut all = self.ids.clone();
        all.extend(ids);
        self.forced = Some(all);
        self.budget = budget.max(self.ids.len() + 1);
    }

    /// Chooses the next token (the forced one, or one sampled from `logits`) and applies the
    /// turn's rules.
    pub fn choose(
        &mut self,
        tokenizer: &QwenTokenizer,
        logits: &[f32],
        sampler: &mut Sampler,
    ) -> Result<Picked> {
        let id = match self.forced_next() {
            Some(id) => id,
            None => sampler.pick(logits),
        };
        self.push(tokenizer, id)
    }

    /// Takes `id` as the next token: a stop id ends the turn; the last token the budget allows
    /// becomes `<|im_end|>` unless it is a stop id already (or stops are ignored).
    pub fn push(&mut self, tokenizer: &QwenTokenizer, mut id: u32) -> Result<Picked> {
        let is_eos = !self.ignore_eos && self.eos.contains(&id);
        let last = self.ids.len() + 1 >= self.budget;
        if last && !is_eos && !self.ignore_eos {
            id = tokens::IM_END;
        }
        self.ids.push(id);
        let piece = match &mut self.stream {
            // The turn's last token releases any held-back text.
            Some(stream) if is_eos || last => stream.finish(tokenizer, &self.ids)?,
            Some(stream) => stream.next(tokenizer, &self.ids)?,
            None => None,
        };
        Ok(Picked {
            id,
            piece,
            last: is_eos || last,
        })
    }
}

/// Where the episode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotStarted,
    Generating,
    Finished,
}

/// One low-res-first episode: wraps [`Episode`] and runs its token loop (see the module docs).
pub struct EpisodeDriver<'a> {
    info: ModelInfo<'a>,
    opts: &'a EpisodeOptions,
    clock: &'a dyn Fn() -> f64,
    question: String,
    episode: Episode,
    images: EpisodeImages,
    sampler: Sampler,
    eos: Vec<u32>,
    turn: usize,
    decoder: TurnDecoder,
    low: Option<PixelValues>,
    /// Buffers the images are preprocessed into (see [`EpisodeDriver::new_with_pool`]).
    pool: PixelPool,
    visual_tokens: usize,
    full_tokens: usize,
    /// Preprocessing, and the tokens chosen with the time spent choosing them.
    timings: Timings,
    start_ms: f64,
    phase: Phase,
}

impl std::fmt::Debug for EpisodeDriver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpisodeDriver")
            .field("turn", &self.turn)
            .field("phase", &self.phase)
            .field("visual_tokens", &self.visual_tokens)
            .finish()
    }
}

impl<'a> EpisodeDriver<'a> {
    /// Prepares an episode on `image` (the original; the driver derives the half-size and the
    /// full image of the evaluation path). `clock` returns milliseconds from any origin.
    pub fn new(
        info: ModelInfo<'a>,
        image: &RgbImage,
        question: &str,
        opts: &'a EpisodeOptions,
        clock: &'a dyn Fn() -> f64,
    ) -> Result<Self> {
        Self::new_with_pool(info, image, question, opts, clock, PixelPool::default())
    }

    /// [`Self::new`] preprocessing into the buffers of `pool` (kept from earlier episodes: see
    /// [`Self::recycle`] and [`Self::into_pool`]), so a caller that runs episode after episode
    /// reuses the same memory for the pixels instead of faulting in fresh pages each time.
    pub fn new_with_pool(
        info: ModelInfo<'a>,
        image: &RgbImage,
        question: &str,
        opts: &'a EpisodeOptions,
        clock: &'a dyn Fn() -> f64,
        mut pool: PixelPool,
    ) -> Result<Self> {
        opts.validate()?;
        let start_ms = clock();
        let images = EpisodeImages::for_inference(image)?;
        let low = pool.preprocess(&images.low_res, info.preprocessor)?;
        // Only the count is needed now: the full image is processed if the model asks for it.
        let full_tokens = visual_tokens(
            images.high_res.width,
            images.high_res.height,
            info.preprocessor,
        )?;
        let eos = crate::config::stop_ids(info.generation);
        let decoder = turn_decoder(info, opts, &eos, 0)?;
        let mut episode = Episode::new(question, opts.protocol.clone());
        // Boxes (the crop tool) are in pixels of the image the model sees, cut from the full one.
        episode.set_image_sizes(
            (low.resized.width, low.resized.height),
            (images.high_res.width, images.high_res.height),
        );
        Ok(Self {
            info,
            opts,
            clock,
            question: question.to_string(),
            episode,
            images,
            sampler: Sampler::new(opts.sampling.clone()),
            eos,
            turn: 0,
            decoder,
            visual_tokens: low.num_image_tokens(info.preprocessor.merge_size),
            low: Some(low),
            pool,
            full_tokens,
            timings: Timings {
                preprocess_ms: clock() - start_ms,
                ..Timings::default()
            },
            start_ms,
            phase: Phase::NotStarted,
        })
    }

    /// Hands back the images of a [`Feed`] once the model has read them, for the episode's
    /// later images and (through [`Self::into_pool`]) later episodes. Optional: a driver whose
    /// caller never recycles allocates each image afresh.
    pub fn recycle(&mut self, images: Vec<PixelValues>) {
        for pv in images {
            self.pool.give_back(pv);
        }
    }

    /// The driver's pixel buffers, for the next episode's [`Self::new_with_pool`].
    pub fn into_pool(self) -> PixelPool {
        self.pool
    }

    /// The turn-1 feed: the VisionThink prompt (through the model's chat template when it has
    /// one) with the half-size image.
    pub fn start(&mut self) -> Result<Action> {
        if self.phase != Phase::NotStarted {
            return Err(Error::Protocol("the episode has started already".into()));
        }
        let turn1 = match self.info.chat_template {
            Some(tmpl) => {
                let p =
                    tmpl.visionthink_turn1_with(self.opts.protocol.system_prompt, &self.question)?;
                self.episode.with_initial_prompt(&p);
                p
            }
            None => self.episode.initial_prompt(),
        };
        let ids = self
            .info
            .tokenizer
            .encode_prompt(&turn1, &[self.visual_tokens])?;
        self.phase = Phase::Generating;
        let low = self
            .low
            .take()
            .ok_or_else(|| Error::Protocol("the half-size image is gone".into()))?;
        Ok(Action::Feed(Feed {
            ids,
            images: vec![low],
            kind: FeedKind::Prompt,
        }))
    }

    /// The model turn being generated (0-based).
    pub fn turn(&self) -> usize {
        self.turn
    }

    /// Takes the logits the last feed produced: chooses the next token (reported through
    /// `on_event`) and says what to feed next, or ends the episode.
    pub fn on_logits(
        &mut self,
        logits: &[f32],
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Action> {
        if self.phase != Phase::Generating {
            return Err(Error::Protocol(
                "on_logits outside a running episode (call start first; a finished episode takes no more)"
                    .into(),
            ));
        }
        let t = (self.clock)();
        let picked = self
            .decoder
            .choose(self.info.tokenizer, logits, &mut self.sampler)?;
        if let Some(piece) = &picked.piece {
            on_event(Event::Token {
                turn: self.turn,
                id: picked.id,
                text: piece,
            });
        }
        self.timings.generated_tokens += 1;
        self.timings.decode_ms += (self.clock)() - t;
        if !picked.last {
            return Ok(Action::Feed(Feed {
                ids: vec![picked.id],
                images: Vec::new(),
                kind: FeedKind::Token,
            }));
        }
        self.end_turn(picked.id, on_event)
    }

    /// Hands a finished turn to the protocol: the answer, or the tool turn to feed (after the
    /// turn's last token, which is not in the cache yet).
    fn end_turn(&mut self, last_id: u32, on_event: &mut dyn FnMut(Event<'_>)) -> Result<Action> {
        let text = self.info.tokenizer.decode(self.decoder.ids(), true)?;
        match self.episode.on_model_turn(&text)? {
            Step::Done(outcome) => {
                self.phase = Phase::Finished;
                let timings = Timings {
                    total_ms: (self.clock)() - self.start_ms,
                    ..self.timings
                };
                Ok(Action::Done(Answer::from_outcome(
                    &outcome,
                    self.visual_tokens,
                    self.full_tokens,
                    timings,
                )))
            }
            Step::ToolTurn(tt) => {
                let t = (self.clock)();
                let images = match &tt.image {
                    Some(req) => {
                        on_event(Event::ResizeRequested);
                        let pv = self
                            .pool
                            .preprocess(&req.fulfil(&self.images)?, self.info.preprocessor)?;
                        self.visual_tokens +=
                            pv.num_image_tokens(self.info.preprocessor.merge_size);
                        vec![pv]
                    }
                    None => Vec::new(),
                };
                self.timings.preprocess_ms += (self.clock)() - t;
                let counts: Vec<usize> = images
                    .iter()
                    .map(|p| p.num_image_tokens(self.info.preprocessor.merge_size))
                    .collect();
                let tool_ids = self.info.tokenizer.encode_prompt(&tt.prompt, &counts)?;
                self.turn += 1;
                self.decoder = turn_decoder(self.info, self.opts, &self.eos, self.turn)?;
                let mut ids = Vec::with_capacity(tool_ids.len() + 1);
                ids.push(last_id);
                ids.extend_from_slice(&tool_ids);
                Ok(Action::Feed(Feed {
                    ids,
                    images,
                    kind: FeedKind::Prompt,
                }))
            }
        }
    }
}

/// The decoder of model turn `turn`: teacher-forced when the options give that turn's text.
fn turn_decoder(
    info: ModelInfo<'_>,
    opts: &EpisodeOptions,
    eos: &[u32],
    turn: usize,
) -> Result<TurnDecoder> {
    let forced = opts
        .forced_turns
        .get(turn)
        .map(|s| info.tokenizer.encode_template(&format!("{s}<|im_end|>")))
        .transpose()?;
    TurnDecoder::new(opts.max_new_tokens, eos.to_vec(), opts.ignore_eos, forced)
}

impl Timings {
    /// The driver's record with the executor's figures: vision, prefill, and the time of the
    /// generated tokens' forward passes added to the driver's time choosing them.
    pub fn with_executor(self, executor: &Timings) -> Timings {
        Timings {
            preprocess_ms: self.preprocess_ms,
            total_ms: self.total_ms,
            generated_tokens: self.generated_tokens,
            decode_ms: self.decode_ms + executor.decode_ms,
            ..*executor
        }
    }
}
