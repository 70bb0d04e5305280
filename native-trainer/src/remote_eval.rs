//! Evaluation of a served model (`visionthink-train eval --endpoint …`): the low-res-first
//! protocol run by the SDK's [`Engine`] — a [`RemoteEngine`](visionthink::RemoteEngine) on vLLM
//! or `visionthink serve`, or a local model — over a data folder, judged like `eval`: accuracy,
//! tool use, visual tokens and latency, per kind and per source.
//!
//! The forced baselines of `eval` steer the model token by token, which a chat API cannot; the
//! full-resolution figure reported here is the visual-token cost of the full image.

use crate::data::Dataset;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use visionthink::score::judge_all;
use visionthink::{AskOptions, Engine};
use visionthink_core::answer::Answer;
use visionthink_core::judge::{Judge, JudgeRequest};
use visionthink_core::text::tool_call_contents;

/// One kind's (or source's) figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RemoteKindReport {
    /// Questions answered (errors excluded).
    pub n: usize,
    /// Judged correct, fraction.
    pub accuracy: f64,
    /// Episodes with a tool call, fraction.
    pub resize_ratio: f64,
    /// Episodes that received the full image, fraction.
    pub full_image_ratio: f64,
    /// Mean visual tokens per question.
    pub visual_tokens: f64,
}

/// The `eval --endpoint --json` record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RemoteEvalReport {
    /// What was evaluated (`remote URL / model`, or a model folder).
    pub engine: String,
    /// Accuracy of the low-res-first protocol.
    pub accuracy: f64,
    /// Episodes with a tool call, fraction.
    pub resize_ratio: f64,
    /// Episodes that received the full image, fraction.
    pub full_image_ratio: f64,
    /// Mean visual tokens per question.
    pub visual_tokens: f64,
    /// Mean visual tokens per question of the full image alone.
    pub visual_tokens_always_high: f64,
    /// `visual_tokens / visual_tokens_always_high`.
    pub visual_tokens_ratio: f64,
    /// Mean model turns per question.
    pub turns: f64,
    /// Latency of one question (all its requests), milliseconds: mean, median, 95th percentile.
    pub latency_ms_mean: f64,
    /// Median latency, ms.
    pub latency_ms_p50: f64,
    /// 95th-percentile latency, ms.
    pub latency_ms_p95: f64,
    /// Per question kind.
    pub by_kind: BTreeMap<String, RemoteKindReport>,
    /// Per data source.
    pub by_source: BTreeMap<String, RemoteKindReport>,
    /// Rows whose image could not be read, with the reason.
    pub skipped: Vec<String>,
    /// Rows whose episode failed (the engine's typed error), with the reason.
    pub failed: Vec<String>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

#[derive(Default)]
struct Acc {
    n: usize,
    correct: usize,
    tool: usize,
    full: usize,
    visual: usize,
}

impl Acc {
    fn add(&mut self, correct: bool, a: &Answer) {
        self.n += 1;
        self.correct += usize::from(correct);
        self.tool += usize::from(a.turns.iter().any(|t| !tool_call_contents(t).is_empty()));
        self.full += usize::from(a.used_high_res);
        self.visual += a.visual_tokens;
    }

    fn report(&self) -> RemoteKindReport {
        let d = self.n.max(1) as f64;
        RemoteKindReport {
            n: self.n,
            accuracy: self.correct as f64 / d,
            resize_ratio: self.tool as f64 / d,
            full_image_ratio: self.full as f64 / d,
            visual_tokens: self.visual as f64 / d,
        }
    }
}

/// Why a row has no answer.
enum RowError {
    /// Its image cannot be read.
    Skipped(String),
    /// The episode failed (the engine's typed error).
    Failed(String),
}

/// One answered row.
struct Row {
    index: usize,
    answer: Answer,
    ms: f64,
}

/// Evaluates `rows` (0 = all) of `ds` on `engine`, `concurrency` questions at a time (a
/// server batches concurrent requests), greedy, 2 rounds, `max_new_tokens` per turn.
pub fn evaluate<E: Engine + Sync>(
    engine: &E,
    label: &str,
    ds: &Dataset,
    rows: usize,
    max_new_tokens: usize,
    concurrency: usize,
    judge: &(dyn Judge + Send + Sync),
) -> Result<RemoteEvalReport> {
    anyhow::ensure!(concurrency >= 1, "--concurrency must be at least 1");
    let t0 = std::time::Instant::now();
    let n = if rows == 0 {
        ds.examples.len()
    } else {
        rows.min(ds.examples.len())
    };
    let mut opts = AskOptions::default();
    opts.generation.max_new_tokens = max_new_tokens;
    let (answered, skipped, failed) = ask_all(engine, ds, n, &opts, concurrency);
    let mut report = summarize(ds, &answered, judge);
    report.engine = label.to_string();
    report.skipped = skipped;
    report.failed = failed;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Runs the first `n` rows, `concurrency` at a time: the answered rows in row order, and the
/// skipped and failed ones with their reasons.
fn ask_all<E: Engine + Sync>(
    engine: &E,
    ds: &Dataset,
    n: usize,
    opts: &AskOptions,
    concurrency: usize,
) -> (Vec<Row>, Vec<String>, Vec<String>) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let pb = indicatif::ProgressBar::new(n as u64);
    let outcomes: Vec<std::result::Result<Row, RowError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..concurrency.min(n.max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut got = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            return got;
                        }
                        got.push(ask_row(engine, ds, i, opts));
                        pb.inc(1);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    pb.finish_and_clear();
    let mut answered: Vec<Row> = Vec::new();
    let (mut skipped, mut failed) = (Vec::new(), Vec::new());
    for o in outcomes {
        match o {
            Ok(r) => answered.push(r),
            Err(RowError::Skipped(e)) => skipped.push(e),
            Err(RowError::Failed(e)) => failed.push(e),
        }
    }
    answered.sort_by_key(|r| r.index);
    (answered, skipped, failed)
}

/// Judges the answered rows and sums them up per kind and source (the caller fills in the
/// engine, the skipped and failed rows and the time).
fn summarize(
    ds: &Dataset,
    answered: &[Row],
    judge: &(dyn Judge + Send + Sync),
) -> RemoteEvalReport {
    let reqs: Vec<JudgeRequest> = answered
        .iter()
        .map(|r| {
            let ex = &ds.examples[r.index];
            JudgeRequest::for_question(&ex.problem, &ex.answer, &prediction(&r.answer))
        })
        .collect();
    let verdicts = judge_all(judge, &reqs, 3);
    let (mut total, mut by_kind, mut by_source) = (
        Acc::default(),
        BTreeMap::<String, Acc>::new(),
        BTreeMap::<String, Acc>::new(),
    );
    let (mut full_tokens, mut turns) = (0usize, 0usize);
    for (r, v) in answered.iter().zip(&verdicts) {
        let ex = &ds.examples[r.index];
        let correct = matches!(v, Ok(true));
        if let Err(e) = v {
            eprintln!("judge: {e}");
        }
        for acc in [
            &mut total,
            by_kind.entry(ex.kind.name().to_string()).or_default(),
            by_source.entry(ex.data_source.clone()).or_default(),
        ] {
            acc.add(correct, &r.answer);
        }
        full_tokens += r.answer.visual_tokens_full_res;
        turns += r.answer.turns.len();
    }
    let mut ms: Vec<f64> = answered.iter().map(|r| r.ms).collect();
    ms.sort_by(f64::total_cmp);
    let d = answered.len().max(1) as f64;
    let t = total.report();
    let high = full_tokens as f64 / d;
    let rep = |m: &BTreeMap<String, Acc>| {
        m.iter()
            .map(|(k, a)| (k.clone(), a.report()))
            .collect::<BTreeMap<_, _>>()
    };
    RemoteEvalReport {
        engine: String::new(),
        accuracy: t.accuracy,
        resize_ratio: t.resize_ratio,
        full_image_ratio: t.full_image_ratio,
        visual_tokens: t.visual_tokens,
        visual_tokens_always_high: high,
        visual_tokens_ratio: t.visual_tokens / high.max(1e-9),
        turns: turns as f64 / d,
        latency_ms_mean: ms.iter().sum::<f64>() / d,
        latency_ms_p50: percentile(&ms, 0.50),
        latency_ms_p95: percentile(&ms, 0.95),
        by_kind: rep(&by_kind),
        by_source: rep(&by_source),
        skipped: Vec::new(),
        failed: Vec::new(),
        seconds: 0.0,
    }
}

/// What the judge compares with the ground truth: the split-rule prediction of the turns, as
/// in training and `eval`.
fn prediction(a: &Answer) -> String {
    visionthink_core::reward::extract_prediction(&a.turns)
}

/// One row's episode.
fn ask_row<E: Engine + Sync>(
    engine: &E,
    ds: &Dataset,
    i: usize,
    opts: &AskOptions,
) -> std::result::Result<Row, RowError> {
    let ex = &ds.examples[i];
    let img = ds
        .image(i)
        .map_err(|e| RowError::Skipped(format!("{}: {e}", ex.doc_id)))?;
    let t = std::time::Instant::now();
    let answer = engine
        .ask(&img, &ex.problem, opts)
        .map_err(|e| RowError::Failed(format!("{}: {e}", ex.doc_id)))?;
    Ok(Row {
        index: i,
        answer,
        ms: t.elapsed().as_secs_f64() * 1e3,
    })
}

/// The `q`-quantile of sorted values (nearest rank); 0 when empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The report as Markdown.
pub fn markdown(r: &RemoteEvalReport, title: &str) -> String {
    let mut s = format!(
        "# {title}\n\nEngine: {}\n\n| accuracy | tool use | got the full image | visual tokens / question | turns | latency mean / p50 / p95 (ms) |\n|---|---|---|---|---|---|\n",
        r.engine
    );
    s += &format!(
        "| {:.3} | {:.3} | {:.3} | {:.1} ({:.1}% of full) | {:.2} | {:.0} / {:.0} / {:.0} |\n\n",
        r.accuracy,
        r.resize_ratio,
        r.full_image_ratio,
        r.visual_tokens,
        100.0 * r.visual_tokens_ratio,
        r.turns,
        r.latency_ms_mean,
        r.latency_ms_p50,
        r.latency_ms_p95
    );
    s += "| kind | n | accuracy | tool use | got the full image | visual tokens |\n|---|---|---|---|---|---|\n";
    for (k, v) in &r.by_kind {
        s += &format!(
            "| {k} | {} | {:.3} | {:.3} | {:.3} | {:.1} |\n",
            v.n, v.accuracy, v.resize_ratio, v.full_image_ratio, v.visual_tokens
        );
    }
    for (what, list) in [("skipped", &r.skipped), ("failed", &r.failed)] {
        if !list.is_empty() {
            s += &format!("\n{} rows {what}: {}\n", list.len(), list.join("; "));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v = [10.0, 20.0, 30.0, 40.0];
        assert_eq!(percentile(&v, 0.5), 20.0);
        assert_eq!(percentile(&v, 0.95), 40.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7.0], 0.95), 7.0);
    }
}
