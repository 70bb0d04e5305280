//! Evaluation (SPEC §8: greedy, 2 rounds) of the low-res-first policy against two baselines of
//! the same model: **always high** (turn 1 is the model's own thinking followed by a forced
//! resize call, so every answer sees the full image) and **always low** (turn 1 is the model's
//! own thinking, then `<answer>` is forced after `</think>` and `<tool_call>` can never be
//! generated, so every answer comes from the half-size image).
//!
//! With the extended tool set (`--tools resize,crop`) the low-res-first policy may also crop;
//! the report then counts crops per kind of question and, on rows that name their detail's
//! square (the v2 synthetic task), how often a crop held it (the box hit rate).

use crate::data::{Dataset, Example, Kind};
use crate::rollout::{
    prepare_with, rollout_group, ImagePath, PreparedPrompt, RolloutConfig, Steer, Trajectory,
};
use crate::synth::{row_patch, Patch};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use visionthink::score::judge_all;
use visionthink_core::judge::{Judge, JudgeRequest};
use visionthink_core::model_files::ModelFiles;
use visionthink_core::protocol::{ImageRequest, ProtocolConfig};
use visionthink_core::sampling::SamplingConfig;
use visionthink_model::{CandleBackend, Qwen25VL};

/// Accuracy and tool use of one kind of question.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KindReport {
    /// Judged correct, fraction.
    pub accuracy: f64,
    /// Accuracy of the always-high baseline on the same questions (in `by_kind`; NaN, written
    /// as `null`, in the baselines' own tables).
    pub accuracy_always_high: f64,
    /// Episodes that called a tool (any tool, well-formed or not), fraction. The name is the
    /// official protocol's, where the only tool is the resize.
    pub resize_ratio: f64,
    /// Episodes that received at least one crop, fraction (0 without the crop tool).
    pub crop_ratio: f64,
    /// Of the episodes that received a crop on a row that names its detail's square, the
    /// fraction where a crop held the whole square; `null` when there was none.
    pub box_hit_ratio: Option<f64>,
    /// Questions.
    pub n: usize,
    /// Episodes that received the full image (a well-formed resize call), fraction.
    pub full_image_ratio: f64,
    /// Mean visual tokens per question (every image the episode was given).
    pub visual_tokens: f64,
}

/// The `eval --json` record (contract keys first).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalReport {
    /// Per question kind.
    pub by_kind: BTreeMap<String, KindReport>,
    /// Accuracy of the low-res-first policy.
    pub accuracy: f64,
    /// Mean visual tokens per question of the low-res-first policy.
    pub visual_tokens: f64,
    /// Mean visual tokens per question of a full-resolution model (the full image only).
    pub visual_tokens_always_high: f64,
    /// Accuracy when every episode is given the full image (forced resize in turn 1).
    pub accuracy_always_high: f64,
    /// Accuracy when the tool is unavailable (answers from the half-size image).
    pub accuracy_always_low: f64,
    /// Mean visual tokens per question of the half-size image alone.
    pub visual_tokens_always_low: f64,
    /// `visual_tokens / visual_tokens_always_high`.
    pub visual_tokens_ratio: f64,
    /// `accuracy / accuracy_always_high`.
    pub accuracy_vs_always_high: f64,
    /// Per data source.
    pub by_source: BTreeMap<String, KindReport>,
    /// Per kind, for the always-low baseline.
    pub always_low_by_kind: BTreeMap<String, KindReport>,
    /// Per kind, for the always-high baseline.
    pub always_high_by_kind: BTreeMap<String, KindReport>,
    /// Per kind, with the crop tool: the model's own thinking, then a crop call whose box it
    /// writes itself (its `box_hit_ratio` is where the model points when it crops; empty
    /// without the crop tool).
    pub always_crop_by_kind: BTreeMap<String, KindReport>,
    /// Rows that could not be evaluated (image errors), with the reason.
    pub skipped: Vec<String>,
    /// Seconds.
    pub seconds: f64,
    /// Every evaluated question with the three policies' outputs (written as `samples.jsonl`
    /// by `eval --out`; not part of the JSON report).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// One evaluated question: what each policy answered.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Row id.
    pub doc_id: String,
    /// Question kind.
    pub kind: String,
    /// Data source.
    pub data_source: String,
    /// Ground truth.
    pub answer: String,
    /// Low-res-first, always-high, always-low: the responses (turns joined by a space).
    pub responses: [String; 3],
    /// Judged correct, same order.
    pub correct: [bool; 3],
    /// Received the full image (a well-formed resize call), same order.
    pub full_image: [bool; 3],
    /// Crops received, same order.
    pub crops: [usize; 3],
    /// Whether a crop held the row's square (`None`: no crop, or no square), same order.
    pub box_hit: [Option<bool>; 3],
    /// With the crop tool: the always-crop probe's response, whether it was right, and whether
    /// its crop held the square.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop_probe: Option<(String, bool, Option<bool>)>,
}

#[derive(Default, Clone)]
struct Acc {
    n: usize,
    correct: usize,
    resized: usize,
    full_image: usize,
    cropped: usize,
    boxed: usize,
    hits: usize,
    visual: usize,
}

impl Acc {
    /// Counts one episode.
    fn add(&mut self, correct: bool, t: &Trajectory, hit: Option<bool>) {
        self.n += 1;
        self.correct += usize::from(correct);
        self.resized += usize::from(t.outcome.tool_calls > 0);
        self.full_image += usize::from(t.used_high());
        self.cropped += usize::from(t.crops() > 0);
        self.boxed += usize::from(hit.is_some());
        self.hits += usize::from(hit == Some(true));
        self.visual += t.visual_tokens;
    }

    /// The fractions (NaN, written as `null`, for a kind without questions).
    fn report(&self) -> KindReport {
        let d = if self.n == 0 { f64::NAN } else { self.n as f64 };
        KindReport {
            accuracy: self.correct as f64 / d,
            accuracy_always_high: f64::NAN,
            resize_ratio: self.resized as f64 / d,
            crop_ratio: self.cropped as f64 / d,
            box_hit_ratio: (self.boxed > 0).then(|| self.hits as f64 / self.boxed as f64),
            n: self.n,
            full_image_ratio: self.full_image as f64 / d,
            visual_tokens: self.visual as f64 / d,
        }
    }
}

/// Whether any crop of `t` held the square `patch` of an image whose episode crops from a
/// high-resolution image `scale` times its size (`None`: no crop).
fn box_hit(t: &Trajectory, patch: Option<&Patch>, scale: f64) -> Option<bool> {
    let patch = patch?;
    let mut crops = t
        .images
        .iter()
        .filter_map(|i| match i.request {
            ImageRequest::Crop {
                x,
                y,
                width,
                height,
            } => Some((x, y, width, height)),
            _ => None,
        })
        .peekable();
    crops.peek()?;
    Some(crops.any(|c| patch.inside(c, scale)))
}

/// What an evaluation runs: a model on an executor, its files, the judge and the settings.
pub struct Evaluator<'a> {
    /// The executor.
    pub be: &'a CandleBackend,
    /// The model.
    pub model: &'a Qwen25VL<CandleBackend>,
    /// Its tokenizer, template and processor.
    pub files: &'a ModelFiles,
    /// Decides correctness.
    pub judge: &'a (dyn Judge + Send + Sync),
    /// Which image path builds the two images.
    pub image_path: ImagePath,
    /// New-token budget per turn.
    pub max_new_tokens: usize,
    /// The tool set and limits of the low-res-first policy ([`ProtocolConfig::default`]: the
    /// official protocol).
    pub protocol: ProtocolConfig,
}

/// The three policies, in report order: low-res-first, always high, always low.
const STEERS: [Steer; 3] = [
    Steer::Free,
    Steer::ForceToolAfterThink,
    Steer::ForceAnswerAfterThink,
];

impl Evaluator<'_> {
    /// Evaluates `rows` (0 = all) of `ds`.
    pub fn evaluate(&self, ds: &Dataset, rows: usize) -> Result<EvalReport> {
        let t0 = std::time::Instant::now();
        let n = if rows == 0 {
            ds.examples.len()
        } else {
            rows.min(ds.examples.len())
        };
        let mut sums = Sums::default();
        // The v2 task's report names all three kinds, even one the rows evaluated lack.
        if ds
            .examples
            .iter()
            .any(|e| matches!(e.kind, Kind::GlobalFine | Kind::LocalFine))
        {
            for by in &mut sums.by {
                for k in [Kind::Coarse, Kind::GlobalFine, Kind::LocalFine] {
                    by.entry(k.name().to_string()).or_default();
                }
            }
        }
        let pb = indicatif::ProgressBar::new(n as u64);
        for i in 0..n {
            pb.inc(1);
            let ex = &ds.examples[i];
            let prepared = ds.image(i).map_err(anyhow::Error::from).and_then(|img| {
                let p = prepare_with(
                    self.files,
                    &img,
                    &ex.problem,
                    self.image_path,
                    &self.protocol,
                )?;
                let scale = f64::from(p.images.high_res.width) / f64::from(img.width.max(1));
                Ok((p, scale))
            });
            let (prompt, scale) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    sums.skipped.push(format!("{}: {e:#}", ex.doc_id));
                    continue;
                }
            };
            let (trajs, verdicts) = self.row(ex, &prompt)?;
            let patch = row_patch(ex);
            let hits: Vec<Option<bool>> = trajs
                .iter()
                .map(|t| box_hit(t, patch.as_ref(), scale))
                .collect();
            sums.add(ex, &prompt, &trajs, &verdicts, &hits);
        }
        pb.finish_and_clear();
        Ok(sums.report(t0.elapsed().as_secs_f64()))
    }

    /// The three policies' episodes on one question (greedy; the protocol's rounds) and their
    /// verdicts (`None`: the judge failed).
    fn row(
        &self,
        ex: &Example,
        prompt: &PreparedPrompt,
    ) -> Result<(Vec<Trajectory>, Vec<Option<bool>>)> {
        let cfg = RolloutConfig {
            sampling: SamplingConfig::default(),
            max_new_tokens: self.max_new_tokens,
            max_rounds: self.protocol.max_rounds,
            max_images: self.protocol.max_images,
            record_logps: false,
        };
        let mut reqs = Vec::new();
        let mut trajs = Vec::new();
        // With the crop tool, a fourth episode: made to crop after its own thinking, the model
        // writes the box (where it points, whatever it would have decided).
        let crop_probe = (self.protocol.tools.len() > 1).then_some(Steer::ForceCropAfterThink);
        for steer in STEERS.iter().chain(crop_probe.as_ref()) {
            let t = rollout_group(self.be, self.model, self.files, prompt, 1, &cfg, steer, 0)
                .with_context(|| format!("row {}", ex.doc_id))?
                .remove(0);
            reqs.push(JudgeRequest::for_question(
                &ex.problem,
                &ex.answer,
                &t.outcome.prediction,
            ));
            trajs.push(t);
        }
        let verdicts = judge_all(self.judge, &reqs, 3)
            .into_iter()
            .map(|v| v.map_err(|e| eprintln!("{e}")).ok())
            .collect();
        Ok((trajs, verdicts))
    }
}

/// Running sums of an evaluation.
#[derive(Default)]
struct Sums {
    by: [BTreeMap<String, Acc>; 3],
    /// The always-crop probe, per kind (with the crop tool).
    crop_probe: BTreeMap<String, Acc>,
    by_source: BTreeMap<String, Acc>,
    totals: [Acc; 3],
    visual: usize,
    visual_high: usize,
    visual_low: usize,
    skipped: Vec<String>,
    samples: Vec<Sample>,
}

impl Sums {
    fn add(
        &mut self,
        ex: &Example,
        prompt: &PreparedPrompt,
        trajs: &[Trajectory],
        verdicts: &[Option<bool>],
        hits: &[Option<bool>],
    ) {
        self.samples.push(Sample {
            doc_id: ex.doc_id.clone(),
            kind: ex.kind.name().to_string(),
            data_source: ex.data_source.clone(),
            answer: ex.answer.clone(),
            responses: [0, 1, 2].map(|k| trajs[k].outcome.turns.join(" ")),
            correct: [0, 1, 2].map(|k| verdicts[k] == Some(true)),
            full_image: [0, 1, 2].map(|k| trajs[k].used_high()),
            crops: [0, 1, 2].map(|k| trajs[k].crops()),
            box_hit: [0, 1, 2].map(|k| hits[k]),
            crop_probe: trajs.get(3).map(|t| {
                (
                    t.outcome.turns.join(" "),
                    verdicts[3] == Some(true),
                    hits[3],
                )
            }),
        });
        for (k, (t, v)) in trajs.iter().zip(verdicts).enumerate() {
            let correct = *v == Some(true);
            if k == 3 {
                self.crop_probe
                    .entry(ex.kind.name().to_string())
                    .or_default()
                    .add(correct, t, hits[k]);
                continue;
            }
            for acc in [
                self.by[k].entry(ex.kind.name().to_string()).or_default(),
                &mut self.totals[k],
            ] {
                acc.add(correct, t, hits[k]);
            }
            if k == 0 {
                self.by_source
                    .entry(ex.data_source.clone())
                    .or_default()
                    .add(correct, t, hits[k]);
                self.visual += t.visual_tokens;
            }
        }
        self.visual_high += prompt.high_tokens;
        self.visual_low += prompt.low_tokens;
    }

    fn report(self, seconds: f64) -> EvalReport {
        let evaluated = self.totals[0].n.max(1) as f64;
        let [free, high, low] = self.totals.map(|a| a.report());
        let rep = |m: &BTreeMap<String, Acc>| {
            m.iter()
                .map(|(k, a)| (k.clone(), a.report()))
                .collect::<BTreeMap<_, _>>()
        };
        let vt = self.visual as f64 / evaluated;
        let vth = self.visual_high as f64 / evaluated;
        let mut by_kind = rep(&self.by[0]);
        for (k, r) in &mut by_kind {
            r.accuracy_always_high = self.by[1].get(k).map_or(f64::NAN, |a| a.report().accuracy);
        }
        EvalReport {
            by_kind,
            accuracy: free.accuracy,
            visual_tokens: vt,
            visual_tokens_always_high: vth,
            accuracy_always_high: high.accuracy,
            accuracy_always_low: low.accuracy,
            visual_tokens_always_low: self.visual_low as f64 / evaluated,
            visual_tokens_ratio: vt / vth.max(1e-9),
            accuracy_vs_always_high: free.accuracy / high.accuracy.max(1e-9),
            by_source: rep(&self.by_source),
            always_low_by_kind: rep(&self.by[2]),
            always_high_by_kind: rep(&self.by[1]),
            always_crop_by_kind: rep(&self.crop_probe),
            skipped: self.skipped,
            seconds,
            samples: self.samples,
        }
    }
}

/// One checkpoint of a run evaluated on a validation set (`visionthink-train select`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Candidate {
    /// The checkpoint folder.
    pub checkpoint: std::path::PathBuf,
    /// Its training step.
    pub step: usize,
    /// What the ranking maximises: the mean over questions of the official accuracy reward with
    /// its tool penalty (SPEC §6) — 1 for a right answer from the half-size image, 0.9 for a
    /// right answer after the resize, 0 for a wrong one. Accuracy alone would rank a policy
    /// that always resizes first whenever resizing helps at all.
    pub score: f64,
    /// Accuracy of the low-res-first policy.
    pub accuracy: f64,
    /// Mean visual tokens per question of the low-res-first policy.
    pub visual_tokens: f64,
    /// Accuracy of the always-high baseline of the same checkpoint.
    pub accuracy_always_high: f64,
    /// Per question kind.
    pub by_kind: BTreeMap<String, KindReport>,
}

impl Candidate {
    /// The candidate of checkpoint `step` at `checkpoint` from its evaluation report.
    pub fn from_report(checkpoint: std::path::PathBuf, step: usize, r: &EvalReport) -> Self {
        let tool_accuracy =
            1.0 - visionthink_core::reward::RewardConfig::default().tool_call_penalty;
        let score = r
            .samples
            .iter()
            .map(
                |s| match (s.correct[0], s.full_image[0] || s.crops[0] > 0) {
                    (false, _) => 0.0,
                    (true, false) => 1.0,
                    (true, true) => tool_accuracy,
                },
            )
            .sum::<f64>()
            / r.samples.len().max(1) as f64;
        Self {
            checkpoint,
            step,
            score,
            accuracy: r.accuracy,
            visual_tokens: r.visual_tokens,
            accuracy_always_high: r.accuracy_always_high,
            by_kind: r.by_kind.clone(),
        }
    }
}

/// Orders checkpoints best first: the higher [`Candidate::score`], then the fewer visual tokens,
/// then the earlier step (the least drift from the warm start).
///
/// ```
/// use std::collections::BTreeMap;
/// use visionthink_train::eval::{rank, Candidate};
/// let c = |step: usize, score: f64, visual_tokens: f64| Candidate {
///     checkpoint: format!("run/step-{step}").into(),
///     step,
///     score,
///     accuracy: score,
///     visual_tokens,
///     accuracy_always_high: 0.9,
///     by_kind: BTreeMap::new(),
/// };
/// let mut cands = vec![c(20, 0.92, 24.0), c(15, 0.95, 25.6), c(25, 0.95, 25.6), c(10, 0.95, 30.0)];
/// rank(&mut cands);
/// let order: Vec<usize> = cands.iter().map(|c| c.step).collect();
/// assert_eq!(order, [15, 25, 10, 20]);
/// ```
pub fn rank(cands: &mut [Candidate]) {
    cands.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.visual_tokens.total_cmp(&b.visual_tokens))
            .then(a.step.cmp(&b.step))
    });
}

/// The report as Markdown.
pub fn markdown(r: &EvalReport, title: &str) -> String {
    let mut s =
        format!("# {title}\n\n| policy | accuracy | visual tokens / question |\n|---|---|---|\n");
    s += &format!(
        "| low-res first (VisionThink) | {:.3} | {:.1} ({:.1}% of full) |\n",
        r.accuracy,
        r.visual_tokens,
        100.0 * r.visual_tokens_ratio
    );
    s += &format!(
        "| always full resolution | {:.3} | {:.1} |\n",
        r.accuracy_always_high, r.visual_tokens_always_high
    );
    s += &format!(
        "| always half resolution | {:.3} | {:.1} |\n\n",
        r.accuracy_always_low, r.visual_tokens_always_low
    );
    s += "| kind | n | accuracy | tool ratio | got the full image | crop ratio | box hits | visual tokens | always-high acc | always-low acc |\n|---|---|---|---|---|---|---|---|---|---|\n";
    for (k, v) in &r.by_kind {
        let hi = r
            .always_high_by_kind
            .get(k)
            .map_or(f64::NAN, |x| x.accuracy);
        let lo = r.always_low_by_kind.get(k).map_or(f64::NAN, |x| x.accuracy);
        let hits = v
            .box_hit_ratio
            .map_or("–".to_string(), |h| format!("{h:.3}"));
        s += &format!(
            "| {k} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {hits} | {:.1} | {hi:.3} | {lo:.3} |\n",
            v.n, v.accuracy, v.resize_ratio, v.full_image_ratio, v.crop_ratio, v.visual_tokens
        );
    }
    if !r.always_crop_by_kind.is_empty() {
        s += "\nMade to crop after its own thinking (the model writes the box):\n\n| kind | n | accuracy | box hits | visual tokens |\n|---|---|---|---|---|\n";
        for (k, v) in &r.always_crop_by_kind {
            let hits = v
                .box_hit_ratio
                .map_or("–".to_string(), |h| format!("{h:.3}"));
            s += &format!(
                "| {k} | {} | {:.3} | {hits} | {:.1} |\n",
                v.n, v.accuracy, v.visual_tokens
            );
        }
    }
    if !r.skipped.is_empty() {
        s += &format!(
            "\n{} rows skipped: {}\n",
            r.skipped.len(),
            r.skipped.join("; ")
        );
    }
    s
}
