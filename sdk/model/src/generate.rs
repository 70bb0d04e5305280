//! Token selection: greedy, or temperature / top-k / top-p sampling with a seeded generator;
//! ids above the real vocabulary (padding rows) are never chosen.

use visionthink_core::tokens::MAX_REAL_ID;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 (or `greedy`) picks the argmax.
    pub temperature: f64,
    /// Nucleus mass (1.0 = off).
    pub top_p: f64,
    /// Keep the k most likely (0 = off).
    pub top_k: usize,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

/// A small, seeded sampler (SplitMix64 → uniform f64), deterministic across platforms.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplingConfig,
    state: u64,
}

impl Sampler {
    /// A sampler.
    pub fn new(cfg: SamplingConfig) -> Self {
        let state = cfg.seed ^ 0x9E37_79B9_7F4A_7C15;
        Self { cfg, state }
    }

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks the next token from last-position logits.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        let limit = logits.len().min(MAX_REAL_ID as usize + 1);
        let logits = &logits[..limit];
        if self.cfg.temperature <= 0.0 {
            return argmax(logits);
        }
        if self.cfg.top_k == 0 && self.cfg.top_p >= 1.0 {
            return self.sample_full(logits);
        }
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if self.cfg.top_k > 0 {
            idx.truncate(self.cfg.top_k);
        }
        let t = self.cfg.temperature;
        let max = f64::from(logits[idx[0]]);
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| ((f64::from(logits[i]) - max) / t).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let mut u = self.uniform();
        for (p, &i) in probs.iter().zip(&idx) {
            if u < *p {
                return i as u32;
            }
            u -= p;
        }
        idx.last().copied().unwrap_or(0) as u32
    }
}

impl Sampler {
    /// Pure temperature sampling over the whole vocabulary in index order: no sort, one pass
    /// for the normaliser and one for the draw (what RL rollouts at temperature 1 spend their
    /// sampling time on).
    fn sample_full(&mut self, logits: &[f32]) -> u32 {
        let t = self.cfg.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        let max = f64::from(max);
        let weight = |v: f32| ((f64::from(v) - max) / t).exp();
        let total: f64 = logits.iter().map(|&v| weight(v)).sum();
        let mut u = self.uniform() * total;
        let mut last = 0;
        for (i, &v) in logits.iter().enumerate() {
            let w = weight(v);
            if w > 0.0 {
                last = i;
                if u < w {
                    return i as u32;
                }
                u -= w;
            }
        }
        last as u32
    }
}

/// Index of the largest value (first on ties), over real token ids only.
pub fn argmax(logits: &[f32]) -> u32 {
    let limit = logits.len().min(MAX_REAL_ID as usize + 1);
    let mut best = 0;
    for (i, &v) in logits[..limit].iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}
