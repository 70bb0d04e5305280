//! Multi-turn rollouts through the core's protocol state machine: the turn-1 prompt (half-size
//! image) is prefilled once per prompt and its KV cache shared by the group's `n` rollouts; a
//! resize call appends the tool turn with the full image (its vision features computed once per
//! group) to that rollout's cache, and a crop call (the extended tool set) the tool turn with
//! its own region of the full image.

pub use crate::config::ImagePath;
use crate::data::Kind;
use anyhow::{Context, Result};
use visionthink_core::driver::TurnDecoder;
use visionthink_core::image::{preprocess, PixelValues, RgbImage};
use visionthink_core::model_files::ModelFiles;
use visionthink_core::protocol::{
    Episode, EpisodeImages, ImageRequest, Outcome, ProtocolConfig, Step,
};
use visionthink_core::rope::{extend_rope_index, MropeBuilder};
use visionthink_core::sampling::{Sampler, SamplingConfig};
use visionthink_core::tokens;
use visionthink_model::{Backend, CandleBackend, KvCache, Qwen25VL};

/// A prompt ready to roll out: its turn-1 ids, both images' pixels, and what a crop is cut from.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    /// Turn-1 ids (system, user template, half-size image pads, generation prompt).
    pub prefix: Vec<u32>,
    /// Half-size image pixels.
    pub low: PixelValues,
    /// Full image pixels.
    pub high: PixelValues,
    /// The question.
    pub question: String,
    /// Visual tokens of each image.
    pub low_tokens: usize,
    /// Visual tokens of the full image.
    pub high_tokens: usize,
    /// The episode's two images (crops are cut from the high-resolution one).
    pub images: EpisodeImages,
    /// The turn-1 image's size as the model sees it (after `smart_resize`): the coordinates of
    /// a crop box.
    pub seen: (u32, u32),
    /// The tool set and system prompt the prefix was built with.
    pub protocol: ProtocolConfig,
}

impl PreparedPrompt {
    /// A new episode of this prompt's protocol with the given limits, told the image sizes.
    pub fn episode(&self, max_rounds: usize, max_images: usize) -> Episode {
        let cfg = self
            .protocol
            .clone()
            .with_limits(Some(max_rounds), Some(max_images));
        let mut episode = Episode::new(&self.question, cfg);
        episode.with_initial_prompt(&visionthink_core::prompt::visionthink_turn1_with(
            self.protocol.system_prompt,
            &self.question,
        ));
        let source = &self.images.high_res;
        episode.set_image_sizes(self.seen, (source.width, source.height));
        episode
    }
}

/// Builds the prompt of an example under the official protocol (the resize tool).
pub fn prepare(
    files: &ModelFiles,
    image: &RgbImage,
    question: &str,
    path: ImagePath,
) -> Result<PreparedPrompt> {
    prepare_with(files, image, question, path, &ProtocolConfig::default())
}

/// Builds the prompt of an example under `protocol`'s tool set (its system prompt).
pub fn prepare_with(
    files: &ModelFiles,
    image: &RgbImage,
    question: &str,
    path: ImagePath,
    protocol: &ProtocolConfig,
) -> Result<PreparedPrompt> {
    let images = match path {
        ImagePath::Training => EpisodeImages::for_training(image)?,
        ImagePath::Inference => EpisodeImages::for_inference(image)?,
        ImagePath::Full => {
            let high = EpisodeImages::for_inference(image)?.high_res;
            EpisodeImages {
                low_res: high.clone(),
                high_res: high,
            }
        }
    };
    let low = preprocess(&images.low_res, &files.preprocessor)?;
    let high = preprocess(&images.high_res, &files.preprocessor)?;
    let merge = files.preprocessor.merge_size;
    let (low_tokens, high_tokens) = (low.num_image_tokens(merge), high.num_image_tokens(merge));
    let mut episode = Episode::new(question, protocol.clone());
    let turn1 = match &files.chat_template {
        Some(t) => t.visionthink_turn1_with(protocol.system_prompt, question)?,
        None => episode.initial_prompt(),
    };
    let prefix = files.tokenizer.encode_prompt(&turn1, &[low_tokens])?;
    let seen = visionthink_core::image::seen_size(
        images.low_res.width,
        images.low_res.height,
        &files.preprocessor,
    )?;
    Ok(PreparedPrompt {
        prefix,
        low,
        high,
        question: question.to_string(),
        low_tokens,
        high_tokens,
        images,
        seen,
        protocol: protocol.clone(),
    })
}

/// An image a tool turn delivered.
#[derive(Debug, Clone)]
pub struct ToolImage {
    /// What was asked for.
    pub request: ImageRequest,
    /// Its pixels (`None`: the prompt's full image, [`PreparedPrompt::high`], shared by the
    /// group).
    pub pixels: Option<PixelValues>,
    /// Its visual tokens.
    pub tokens: usize,
}

impl ToolImage {
    /// Fulfils `request` for `prompt`: the full image is the prompt's own; anything else (a
    /// crop) is cut and preprocessed here.
    pub fn new(files: &ModelFiles, prompt: &PreparedPrompt, request: ImageRequest) -> Result<Self> {
        if request == ImageRequest::HighRes {
            return Ok(Self {
                request,
                pixels: None,
                tokens: prompt.high_tokens,
            });
        }
        let img = request.fulfil(&prompt.images)?;
        let pv = preprocess(&img, &files.preprocessor)?;
        Ok(Self {
            request,
            tokens: pv.num_image_tokens(files.preprocessor.merge_size),
            pixels: Some(pv),
        })
    }

    /// Its grid and pixels.
    pub fn pixels<'a>(&'a self, prompt: &'a PreparedPrompt) -> &'a PixelValues {
        self.pixels.as_ref().unwrap_or(&prompt.high)
    }

    /// Whether this is a crop.
    pub fn is_crop(&self) -> bool {
        matches!(self.request, ImageRequest::Crop { .. })
    }
}

/// How turn 1 is steered (for the always-high / always-low baselines of the evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    /// The model decides.
    Free,
    /// Turn 1 is the model's own thinking, and as soon as it closes `</think>` the resize call
    /// is forced: the model always sees the full image, after reasoning in its own words.
    ForceToolAfterThink,
    /// As [`Steer::ForceToolAfterThink`] with another call (e.g. a [`crop_call`]): scripted
    /// tool use after the model's own thinking.
    ForceCallAfterThink(&'static str),
    /// The always-low counterpart: the model's own thinking, then `<answer>` is forced after
    /// `</think>` and `<tool_call>` can never be generated, so the model answers from the
    /// half-size image in its own words (a thought that planned a resize still gets to answer).
    ForceAnswerAfterThink,
    /// The always-crop probe of the extended tool set: the model's own thinking, then the crop
    /// call is forced up to its box (`<tool_call>` and `{"name": "crop_image", "arguments":
    /// {"bbox": [`) and the model writes the box itself: where it points when made to crop.
    ForceCropAfterThink,
}

/// What [`Steer::ForceCropAfterThink`] forces after `</think>`.
pub const CROP_CALL_HEAD: &str =
    "<tool_call>\n{\"name\": \"crop_image\", \"arguments\": {\"bbox\": [";

/// The official resize call (what SFT traces and the always-high baseline use).
pub const RESIZE_CALL: &str =
    "<tool_call>\n{\"name\": \"resize_image\", \"arguments\": {\"action\": \"resize\"}}\n</tool_call>";

/// A crop call for `bbox` (`[x1, y1, x2, y2]` as JSON), in the format of the extended tool
/// set's system prompt.
///
/// ```
/// assert_eq!(
///     visionthink_train::rollout::crop_call("[1, 2, 30, 40]"),
///     "<tool_call>\n{\"name\": \"crop_image\", \"arguments\": {\"bbox\": [1, 2, 30, 40]}}\n</tool_call>"
/// );
/// ```
pub fn crop_call(bbox: &str) -> String {
    format!("<tool_call>\n{{\"name\": \"crop_image\", \"arguments\": {{\"bbox\": {bbox}}}}}\n</tool_call>")
}

/// One finished rollout.
#[derive(Debug, Clone)]
pub struct Trajectory {
    /// Every token after the shared prefix: model turns (each ending with `<|im_end|>`) and
    /// tool turns.
    pub cont: Vec<u32>,
    /// `true` where `cont` holds a model-generated token (the loss mask).
    pub generated: Vec<bool>,
    /// Every image the tool turns delivered, in order (their pads are in `cont`).
    pub images: Vec<ToolImage>,
    /// The protocol's outcome.
    pub outcome: Outcome,
    /// Visual tokens fed.
    pub visual_tokens: usize,
    /// Log-probabilities of the generated tokens at sampling time, in order (empty unless
    /// [`RolloutConfig::record_logps`]).
    pub sample_logps: Vec<f32>,
}

impl Trajectory {
    /// Whether the full image was appended (its pads are in `cont`).
    pub fn used_high(&self) -> bool {
        self.images.iter().any(|i| i.pixels.is_none())
    }

    /// Crops received.
    pub fn crops(&self) -> usize {
        self.images.iter().filter(|i| i.is_crop()).count()
    }

    /// Visual tokens of the images the tool turns delivered (crops and the full image) over
    /// those of the full image: the image-cost reward's measure.
    pub fn tool_image_share(&self, prompt: &PreparedPrompt) -> f64 {
        let t: usize = self.images.iter().map(|i| i.tokens).sum();
        t as f64 / prompt.high_tokens.max(1) as f64
    }

    /// Ids of the generated tokens, in order.
    pub fn generated_ids(&self) -> Vec<u32> {
        self.cont
            .iter()
            .zip(&self.generated)
            .filter(|(_, g)| **g)
            .map(|(t, _)| *t)
            .collect()
    }
}

/// Generation settings of a rollout.
#[derive(Debug, Clone)]
pub struct RolloutConfig {
    /// Sampling (temperature 0 = greedy).
    pub sampling: SamplingConfig,
    /// Token budget per model turn.
    pub max_new_tokens: usize,
    /// Rounds and images.
    pub max_rounds: usize,
    /// Images per episode.
    pub max_images: usize,
    /// Record each generated token's log-probability under the rollout model (temperature 1,
    /// whole vocabulary) in [`Trajectory::sample_logps`]: the check that the scoring forward
    /// sees what sampling saw. Off in training (one more pass over the vocabulary per token).
    pub record_logps: bool,
}

struct Ctx<'a> {
    be: &'a CandleBackend,
    model: &'a Qwen25VL<CandleBackend>,
    files: &'a ModelFiles,
}

impl Ctx<'_> {
    fn run(
        &self,
        cache: &mut KvCache<CandleBackend>,
        pos: &mut MropeBuilder,
        ids: &[u32],
        feats: Option<&candle_core::Tensor>,
        grids: &[[u32; 3]],
    ) -> Result<Vec<f32>> {
        extend_rope_index(pos, ids, grids, self.files.preprocessor.merge_size)?;
        let e = self.model.embed(self.be, ids, feats)?;
        let h = self.model.decode(self.be, &e, pos.positions(), cache)?;
        Ok(self.model.last_logits(self.be, &h)?)
    }
}

/// `log_softmax(logits)[id]`, in f64.
fn log_softmax_at(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let total: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    (logits[id as usize] as f64 - max - total.ln()) as f32
}

/// When the sampled token `next` closes `</think>` (alone or merged with what follows, e.g.
/// `></`), the tokens to force from here on: the text up to and including the tag, then the
/// resize call and `<|im_end|>` (always high) or `<answer>` (always low). `decoded` is the text
/// of `ids`; when nothing is forced it becomes the text of `ids` + `next`, so each step decodes
/// once.
fn force_after_think(
    files: &ModelFiles,
    decoded: &mut String,
    ids: &[u32],
    next: u32,
    steer: Steer,
) -> Result<Option<Vec<u32>>> {
    const TAG: &str = "</think>";
    let mut with = ids.to_vec();
    with.push(next);
    let after = files.tokenizer.decode(&with, true)?;
    let head = after
        .find(TAG)
        .map(|p| p + TAG.len())
        .and_then(|end| after.get(decoded.len()..end))
        .filter(|_| after.starts_with(decoded.as_str()));
    let Some(head) = head else {
        *decoded = after;
        return Ok(None);
    };
    let tail = match steer {
        Steer::ForceToolAfterThink => format!("{RESIZE_CALL}<|im_end|>"),
        Steer::ForceCallAfterThink(call) => format!("{call}<|im_end|>"),
        Steer::ForceCropAfterThink => CROP_CALL_HEAD.to_string(),
        _ => "<answer>".to_string(),
    };
    Ok(Some(
        files.tokenizer.encode_template(&format!("{head}{tail}"))?,
    ))
}

/// The state of one model turn being generated: the core's turn rules (stop ids, the budget
/// cut, forced tokens) plus what the forcing steers watch.
struct TurnState {
    /// Tokens, budget and forcing: the same rules as every executor.
    decoder: TurnDecoder,
    /// Set once a forcing steer took over (turn 1, after `</think>`).
    steered: bool,
    /// The text of the turn's ids while a forcing steer watches for `</think>`.
    decoded: String,
}

impl TurnState {
    fn new(max_new_tokens: usize, eos: &[u32]) -> Result<Self> {
        Ok(Self {
            decoder: TurnDecoder::new(max_new_tokens.max(1), eos.to_vec(), false, None)?
                .without_stream(),
            steered: false,
            decoded: String::new(),
        })
    }
}

/// What a rollout needs after choosing a token.
enum Next {
    /// Feed this token and get the next logits.
    Decode(u32),
    /// The turn is over (end token or budget).
    TurnEnd,
}

/// One rollout in flight.
struct Live {
    sampler: Sampler,
    cache: KvCache<CandleBackend>,
    pos: MropeBuilder,
    logits: Vec<f32>,
    episode: Episode,
    cont: Vec<u32>,
    generated: Vec<bool>,
    sample_logps: Vec<f32>,
    visual: usize,
    images: Vec<ToolImage>,
    turn: usize,
    state: TurnState,
    outcome: Option<Outcome>,
}

/// What every rollout of a group shares.
struct Group<'a> {
    ctx: Ctx<'a>,
    prompt: &'a PreparedPrompt,
    cfg: &'a RolloutConfig,
    steer: Steer,
    eos: Vec<u32>,
    /// The full image's vision features, computed by the first rollout that asks for them.
    high_feats: Option<candle_core::Tensor>,
}

impl Group<'_> {
    fn forcing(&self) -> bool {
        matches!(
            self.steer,
            Steer::ForceToolAfterThink
                | Steer::ForceCallAfterThink(_)
                | Steer::ForceAnswerAfterThink
                | Steer::ForceCropAfterThink
        )
    }

    /// Chooses the next token of `live`'s turn (sampled or forced).
    fn pick(&self, live: &mut Live) -> Result<Next> {
        let files = self.ctx.files;
        let t = &mut live.state;
        let mut id = match t.decoder.forced_next() {
            Some(id) => id,
            None => {
                if self.steer == Steer::ForceAnswerAfterThink {
                    live.logits[tokens::TOOL_CALL as usize] = f32::NEG_INFINITY;
                }
                live.sampler.pick(&live.logits)
            }
        };
        if self.forcing() && live.turn == 0 && !t.steered {
            let ids = t.decoder.ids();
            if let Some(f) = force_after_think(files, &mut t.decoded, ids, id, self.steer)? {
                let i = ids.len();
                let open = matches!(
                    self.steer,
                    Steer::ForceAnswerAfterThink | Steer::ForceCropAfterThink
                );
                let budget = if !open {
                    i + f.len()
                } else {
                    // The answer itself still has the rest of the turn's budget.
                    t.decoder.budget().max(i + f.len() + 1)
                };
                id = f[0];
                t.decoder.force_rest(f, budget);
                t.steered = true;
            }
        }
        // A stop id ends the turn; a turn cut by the budget ends with `<|im_end|>` (official
        // rollout): the core's rule, as in the SDK and the browser.
        let picked = t.decoder.push(&files.tokenizer, id)?;
        if self.cfg.record_logps {
            live.sample_logps
                .push(log_softmax_at(&live.logits, picked.id));
        }
        Ok(if picked.last {
            Next::TurnEnd
        } else {
            Next::Decode(picked.id)
        })
    }

    /// Hands a finished turn to the protocol: the episode ends, or the tool turn (with the full
    /// image when asked) is fed and the next turn starts.
    fn end_turn(&mut self, live: &mut Live) -> Result<()> {
        let (be, model, files) = (self.ctx.be, self.ctx.model, self.ctx.files);
        let next = TurnState::new(self.cfg.max_new_tokens, &self.eos)?;
        let ids = std::mem::replace(&mut live.state, next)
            .decoder
            .ids()
            .to_vec();
        live.cont.extend_from_slice(&ids);
        live.generated.extend(std::iter::repeat_n(true, ids.len()));
        let text = files.tokenizer.decode(&ids, true)?;
        match live.episode.on_model_turn(&text)? {
            Step::Done(o) => live.outcome = Some(o),
            Step::ToolTurn(tt) => {
                let prompt = self.prompt;
                let image = tt
                    .image
                    .map(|r| ToolImage::new(files, prompt, r))
                    .transpose()?;
                let own;
                let (feats, pvs, counts) = match &image {
                    Some(img) => {
                        live.visual += img.tokens;
                        let pv = img.pixels(prompt);
                        let f = match &img.pixels {
                            None => {
                                if self.high_feats.is_none() {
                                    self.high_feats =
                                        Some(model.vision.forward(be, &pv.data, &[pv.grid_thw])?);
                                }
                                self.high_feats.as_ref()
                            }
                            Some(_) => {
                                own = model.vision.forward(be, &pv.data, &[pv.grid_thw])?;
                                Some(&own)
                            }
                        };
                        (f, vec![pv.grid_thw], vec![img.tokens])
                    }
                    None => (None, Vec::new(), Vec::new()),
                };
                let tool_ids = files.tokenizer.encode_prompt(&tt.prompt, &counts)?;
                // The last generated token (`<|im_end|>`) is not in the cache yet: feed it
                // with the tool turn.
                let mut feed = vec![*ids.last().context("empty turn")?];
                feed.extend_from_slice(&tool_ids);
                live.logits = self
                    .ctx
                    .run(&mut live.cache, &mut live.pos, &feed, feats, &pvs)?;
                live.cont.extend_from_slice(&tool_ids);
                live.generated
                    .extend(std::iter::repeat_n(false, tool_ids.len()));
                live.images.extend(image);
                live.turn += 1;
            }
        }
        Ok(())
    }

    /// Feeds one token to each of `batch` (rollout, token) and refreshes their logits: each
    /// rollout runs its own layers over its own cache, and the vocabulary projection, which
    /// dominates a small model's decoding, runs once for all of them.
    fn decode_batch(&self, lives: &mut [Live], batch: &[(usize, u32)]) -> Result<()> {
        let (be, model) = (self.ctx.be, self.ctx.model);
        let merge = self.ctx.files.preprocessor.merge_size;
        let mut rows = Vec::with_capacity(batch.len());
        for &(k, id) in batch {
            let live = &mut lives[k];
            extend_rope_index(&mut live.pos, &[id], &[], merge)?;
            let e = model.embed(be, &[id], None)?;
            rows.push(model.decode(be, &e, live.pos.positions(), &mut live.cache)?);
        }
        let hidden = candle_core::Tensor::cat(&rows, 0)?;
        let logits = be.to_vec(&model.logits(be, &hidden)?)?;
        let vocab = logits.len() / batch.len().max(1);
        for (&(k, _), row) in batch.iter().zip(logits.chunks_exact(vocab)) {
            let l = &mut lives[k].logits;
            l.clear();
            l.extend_from_slice(row);
        }
        Ok(())
    }
}

/// Rolls out `n` episodes of one prompt with a frozen model (see [`crate::policy::Policy::frozen`]).
///
/// The rollouts advance in lock-step, one token each per round, so the vocabulary projection
/// of a round is one matrix product for the whole group instead of `n` matrix-vector products.
/// Each rollout keeps its own sampler, cache and protocol state, so the tokens are those of
/// rolling the episodes out one after another.
#[allow(clippy::too_many_arguments)] // the model, its files, the prompt and four settings of one call
pub fn rollout_group(
    be: &CandleBackend,
    model: &Qwen25VL<CandleBackend>,
    files: &ModelFiles,
    prompt: &PreparedPrompt,
    n: usize,
    cfg: &RolloutConfig,
    steer: &Steer,
    seed: u64,
) -> Result<Vec<Trajectory>> {
    let ctx = Ctx { be, model, files };
    let low_feats = model
        .vision
        .forward(be, &prompt.low.data, &[prompt.low.grid_thw])?;
    let mut cache = model.new_cache();
    let mut pos = MropeBuilder::new();
    let first_logits = ctx.run(
        &mut cache,
        &mut pos,
        &prompt.prefix,
        Some(&low_feats),
        &[prompt.low.grid_thw],
    )?;
    let mut group = Group {
        ctx,
        prompt,
        cfg,
        steer: *steer,
        eos: visionthink_core::config::stop_ids(files.generation.as_ref()),
        high_feats: None,
    };
    let mut lives: Vec<Live> = (0..n)
        .map(|r| -> Result<Live> {
            let episode = prompt.episode(cfg.max_rounds, cfg.max_images);
            Ok(Live {
                sampler: Sampler::new(SamplingConfig {
                    seed: seed.wrapping_mul(1_000_003).wrapping_add(r as u64),
                    ..cfg.sampling.clone()
                }),
                // Own buffers: the rollouts append side by side.
                cache: cache.fork(be)?,
                pos: pos.clone(),
                logits: first_logits.clone(),
                episode,
                cont: Vec::new(),
                generated: Vec::new(),
                sample_logps: Vec::new(),
                visual: prompt.low_tokens,
                images: Vec::new(),
                turn: 0,
                state: TurnState::new(cfg.max_new_tokens, &group.eos)?,
                outcome: None,
            })
        })
        .collect::<Result<_>>()?;
    loop {
        let mut batch = Vec::new();
        for (k, live) in lives.iter_mut().enumerate() {
            if live.outcome.is_some() {
                continue;
            }
            match group.pick(live)? {
                Next::Decode(id) => batch.push((k, id)),
                Next::TurnEnd => group.end_turn(live)?,
            }
        }
        if batch.is_empty() {
            if lives.iter().all(|l| l.outcome.is_some()) {
                break;
            }
            continue;
        }
        group.decode_batch(&mut lives, &batch)?;
    }
    lives
        .into_iter()
        .map(|l| {
            Ok(Trajectory {
                outcome: l.outcome.context("a rollout ended without an outcome")?,
                cont: l.cont,
                generated: l.generated,
                images: l.images,
                visual_tokens: l.visual,
                sample_logps: l.sample_logps,
            })
        })
        .collect()
}

/// One example's evaluation record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalRecord {
    /// Row id.
    pub doc_id: String,
    /// Coarse / fine.
    pub kind: Kind,
    /// Source.
    pub data_source: String,
    /// Judged correct.
    pub correct: bool,
    /// Called the resize tool.
    pub resized: bool,
    /// Visual tokens fed.
    pub visual_tokens: usize,
    /// The prediction.
    pub prediction: String,
}

/// A trajectory from given model turns (teacher forcing, for SFT traces): each turn is
/// tokenized as the model would have generated it (`turn<|im_end|>`) and the protocol's tool
/// turns are inserted between them.
pub fn forced_trajectory(
    files: &ModelFiles,
    prompt: &PreparedPrompt,
    turns: &[String],
) -> Result<Trajectory> {
    let mut episode = prompt.episode(turns.len().max(1), turns.len().max(1));
    let (mut cont, mut generated) = (Vec::new(), Vec::new());
    let mut visual = prompt.low_tokens;
    let mut images = Vec::new();
    for (i, turn) in turns.iter().enumerate() {
        let ids = files
            .tokenizer
            .encode_template(&format!("{turn}<|im_end|>"))?;
        cont.extend_from_slice(&ids);
        generated.extend(std::iter::repeat_n(true, ids.len()));
        let text = files.tokenizer.decode(&ids, true)?;
        match episode.on_model_turn(&text)? {
            Step::Done(outcome) => {
                anyhow::ensure!(
                    i + 1 == turns.len(),
                    "the episode ended after turn {} of {}",
                    i + 1,
                    turns.len()
                );
                return Ok(Trajectory {
                    cont,
                    generated,
                    images,
                    outcome,
                    visual_tokens: visual,
                    sample_logps: Vec::new(),
                });
            }
            Step::ToolTurn(tt) => {
                let counts = match tt.image {
                    Some(r) => {
                        let img = ToolImage::new(files, prompt, r)?;
                        visual += img.tokens;
                        let n = img.tokens;
                        images.push(img);
                        vec![n]
                    }
                    None => Vec::new(),
                };
                let tool_ids = files.tokenizer.encode_prompt(&tt.prompt, &counts)?;
                cont.extend_from_slice(&tool_ids);
                generated.extend(std::iter::repeat_n(false, tool_ids.len()));
            }
        }
    }
    anyhow::bail!("the forced turns end with a tool call")
}
