//! PNG training curves (`plotters`) from a run's `metrics.jsonl`, written next to the
//! checkpoints: SFT loss; GRPO reward and accuracy; resize-call ratio per question kind; KL and
//! entropy.

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

type Series = (String, Vec<(f64, f64)>);

/// Draws one chart of line series.
pub fn line_chart(path: &Path, title: &str, y_label: &str, series: &[Series]) -> Result<()> {
    register_font();
    let pts: Vec<&(f64, f64)> = series
        .iter()
        .flat_map(|(_, s)| s.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    let (x0, x1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (y0, y1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let root = BitMapBackend::new(path, (800, 450)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("plot {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (name, s)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(
                s.iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite()),
                c.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn series(lines: &[Value], phase: &str, name: &str, get: impl Fn(&Value) -> Option<f64>) -> Series {
    let pts = lines
        .iter()
        .filter(|m| m["phase"] == phase)
        .filter_map(|m| Some((m["step"].as_f64()?, get(m)?)))
        .collect();
    (name.to_string(), pts)
}

/// Writes the curves of `run_dir/metrics.jsonl` into `run_dir`; returns the files written.
pub fn write_curves(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let p = run_dir.join(crate::metrics::METRICS);
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut out = Vec::new();
    let mut chart = |file: &str, title: &str, y: &str, s: Vec<Series>| -> Result<()> {
        if s.iter().any(|(_, v)| !v.is_empty()) {
            let path = run_dir.join(file);
            line_chart(&path, title, y, &s)?;
            out.push(path);
        }
        Ok(())
    };
    chart(
        "curve_sft_loss.png",
        "SFT warm start: token NLL",
        "loss",
        vec![series(&lines, "sft", "loss", |m| m["loss"].as_f64())],
    )?;
    chart(
        "curve_grpo_reward.png",
        "GRPO: reward and accuracy",
        "mean over rollouts",
        vec![
            series(&lines, "grpo", "reward", |m| m["reward"].as_f64()),
            series(&lines, "grpo", "accuracy", |m| m["accuracy"].as_f64()),
        ],
    )?;
    // The question kinds the run logged (fine / coarse, or the v2 task's three).
    let kinds: std::collections::BTreeSet<String> = lines
        .iter()
        .filter_map(|m| m["by"].as_object())
        .flat_map(|by| {
            by.keys()
                .filter_map(|k| k.strip_prefix("kind/"))
                .map(String::from)
        })
        .collect();
    let by_kind = |key: &'static str| -> Vec<Series> {
        kinds
            .iter()
            .map(|k| {
                let path = format!("kind/{k}");
                series(&lines, "grpo", k, move |m| m["by"][&path][key].as_f64())
            })
            .collect()
    };
    let mut resize = by_kind("resize_ratio");
    resize.push(series(&lines, "grpo", "all", |m| {
        m["resize_ratio"].as_f64()
    }));
    chart(
        "curve_grpo_resize.png",
        "GRPO: full image received, by question kind",
        "resize ratio",
        resize,
    )?;
    if lines.iter().any(|m| m["crop_ratio"].as_f64() > Some(0.0)) {
        let mut crops = by_kind("crop_ratio");
        crops.push(series(&lines, "grpo", "all", |m| m["crop_ratio"].as_f64()));
        chart(
            "curve_grpo_crop.png",
            "GRPO: crop received, by question kind",
            "crop ratio",
            crops,
        )?;
    }
    chart(
        "curve_grpo_accuracy_by_kind.png",
        "GRPO: accuracy by question kind",
        "accuracy",
        by_kind("accuracy"),
    )?;
    chart(
        "curve_grpo_visual_tokens.png",
        "GRPO: visual tokens per rollout",
        "visual tokens",
        vec![series(&lines, "grpo", "all", |m| {
            m["visual_tokens"].as_f64()
        })],
    )?;
    chart(
        "curve_grpo_kl_entropy.png",
        "GRPO: KL to the reference and entropy",
        "nats / token",
        vec![
            series(&lines, "grpo", "kl (k3)", |m| m["kl"].as_f64()),
            series(&lines, "grpo", "entropy", |m| m["entropy"].as_f64()),
        ],
    )?;
    Ok(out)
}
