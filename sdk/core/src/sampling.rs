//! Token selection: greedy, or temperature / top-k / top-p sampling with a seeded generator;
//! ids above the real vocabulary (padding rows) are never chosen.

use crate::tokens::MAX_REAL_ID;

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

/// Top-k up to this size is found by one scan that keeps the best k in order.
const SMALL_K: usize = 64;

/// The `k` most likely ids of `logits`, most likely first, ties by the smaller id (the order
/// a stable sort by logit gives): one pass, comparing each logit with the k-th best so far,
/// instead of partitioning an index array of the whole vocabulary.
fn top_k_scan(logits: &[f32], k: usize) -> Vec<usize> {
    // Ids in ascending order: a later id never beats an equal logit already kept.
    let better = |a: f32, b: f32| a.total_cmp(&b) == std::cmp::Ordering::Greater;
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for (i, &z) in logits.iter().enumerate() {
        if best.len() == k && !better(z, logits[best[k - 1]]) {
            continue;
        }
        let at = best.partition_point(|&j| !better(z, logits[j]));
        best.insert(at, i);
        best.truncate(k);
    }
    best
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
        // Most likely first, ties by id: the order a stable sort by logit gives.
        let order = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
        let k = self.cfg.top_k;
        let mut idx: Vec<usize> = if k > 0 && k <= SMALL_K && k < logits.len() {
            top_k_scan(logits, k)
        } else {
            (0..logits.len()).collect()
        };
        if k > 0 && k < idx.len() {
            // Top-k: partition in linear time, then order only the k kept (the vocabulary is
            // 152k; a full sort per token dominated rollout time).
            idx.select_nth_unstable_by(k - 1, order);
            idx.truncate(k);
        }
        idx.sort_by(order);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits with ties at the top: ids 7 and 3 share the maximum, 11 is next, then the rest.
    fn logits() -> Vec<f32> {
        let mut l: Vec<f32> = (0..5000)
            .map(|i| ((i * 37 % 101) as f32) / 50.0 - 4.0)
            .collect();
        l[7] = 5.0;
        l[3] = 5.0;
        l[11] = 4.5;
        l
    }

    /// Temperature 1 among the `k` likeliest.
    fn top_k(k: usize, seed: u64) -> Sampler {
        Sampler::new(SamplingConfig {
            temperature: 1.0,
            top_k: k,
            seed,
            ..SamplingConfig::default()
        })
    }

    /// The one-pass top-k keeps the same ids in the same order as sorting the whole
    /// vocabulary (ties by id), on logits with many ties.
    #[test]
    fn top_k_scan_equals_a_full_sort() {
        let mut state = 7u64;
        for round in 0..200 {
            let n = 1 + round % 97;
            let logits: Vec<f32> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    ((state >> 33) % 9) as f32 - 4.0
                })
                .collect();
            let mut all: Vec<usize> = (0..n).collect();
            all.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b)));
            for k in 1..=n.min(12) {
                assert_eq!(top_k_scan(&logits, k), all[..k].to_vec(), "n {n} k {k}");
            }
        }
    }

    #[test]
    fn top_k_draws_only_the_k_likeliest_in_proportion() {
        let l = logits();
        let mut s = top_k(2, 9);
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..4000 {
            *counts.entry(s.pick(&l)).or_insert(0usize) += 1;
        }
        // The two kept are the tied maxima (ids 3 and 7, whatever the order), equally likely.
        assert_eq!(counts.keys().copied().collect::<Vec<_>>(), vec![3, 7]);
        let share = counts[&3] as f64 / 4000.0;
        assert!((share - 0.5).abs() < 0.04, "{share}");
        // k = 3 adds id 11 with weight e^-0.5 relative to each maximum.
        let mut s = top_k(3, 9);
        let n = 6000;
        let hits = (0..n).filter(|_| s.pick(&l) == 11).count() as f64 / n as f64;
        let want = (-0.5f64).exp() / (2.0 + (-0.5f64).exp());
        assert!((hits - want).abs() < 0.03, "{hits} vs {want}");
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let l = logits();
        let mut s = top_k(1, 1);
        // Ties go to the lower id, as in `argmax`.
        assert_eq!(s.pick(&l), 3);
        assert_eq!(argmax(&l), 3);
        let draws = |seed| {
            let mut s = Sampler::new(SamplingConfig {
                temperature: 1.0,
                top_k: 50,
                top_p: 0.9,
                seed,
            });
            (0..64).map(|_| s.pick(&l)).collect::<Vec<_>>()
        };
        assert_eq!(draws(5), draws(5));
        assert_ne!(draws(5), draws(6));
    }
}
