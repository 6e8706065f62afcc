//! The learned complexity scorer: a logistic regression over hashed word unigrams and bigrams
//! plus a few dense signals (length, digits, math, code, question shape), predicting how likely
//! a frontier model's answer beats the local one. Inference is a hash per word and a dot product:
//! microseconds for a 512-token prompt, on one core, no model runtime.
//!
//! The score it reports is that probability itself, so `complexity_threshold = 0.5` means "the
//! frontier answer is more likely than not to be clearly better"; `switchyard calibrate` picks a
//! threshold for a target remote share instead.
//!
//! Training ([`train`]) is plain gradient descent (`AdaGrad`, L2) over labelled prompts; pure, like
//! the rest of this crate: `switchyard train-router` reads the files and writes the model.
//!
//! Words learned from one kind of traffic say little about another, while the baseline's
//! hand-written signals (code, math, stated numbers, reasoning words) carry over. So a model file
//! also records where its training prompts' scores fell, under both scorers ([`ScoreQuantiles`]),
//! and [`LearnedScorer::with_baseline_weight`] mixes the two on that common scale: each score
//! becomes its percentile among the training prompts', and the complexity is
//! `w` × the baseline's percentile + (1 − `w`) × the learned one's.

use serde::{Deserialize, Serialize};

use crate::complexity::{score_bare_prompt, BaselineScorer, ComplexityScore, ComplexityScorer};
use crate::signals::Features;

/// The model file's `format`.
pub const FORMAT: &str = "switchyard-hashed-logreg-v1";
/// Hash buckets for word features (2^18).
const BUCKETS: u32 = 1 << 18;
/// Dense features come first in the weight vector.
const DENSE: usize = 8;
const DENSE_NAMES: [&str; DENSE] =
    ["log length", "digits", "math symbols", "code", "questions", "lines", "long words", "options list"];

/// A trained model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LearnedScorer {
    /// [`FORMAT`].
    pub format: String,
    /// Number of hash buckets.
    pub buckets: u32,
    /// Intercept.
    pub bias: f32,
    /// Dense features' weights, then nonzero bucket weights as `(bucket, weight)`.
    pub dense: Vec<f32>,
    /// Nonzero bucket weights.
    pub sparse: Vec<(u32, f32)>,
    /// How the model was trained (shown by `switchyard check`).
    pub trained_on: String,
    /// Where the training prompts' scores fell (files written before 2026-12-07 have none, and
    /// cannot be mixed with the baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantiles: Option<ScoreQuantiles>,
    #[serde(skip)]
    weights: Vec<f32>,
    /// The baseline's share of the complexity (0: the learned probability alone).
    #[serde(skip)]
    baseline_weight: f64,
}

/// Points in [`ScoreQuantiles`]: every percentile from 0 to 100.
const QUANTILES: usize = 101;

/// The training prompts' score quantiles (0 %, 1 %, … 100 %) under the learned model and under
/// the baseline scorer: the common scale on which the two are mixed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScoreQuantiles {
    /// The learned model's scores.
    pub learned: Vec<f64>,
    /// The baseline scorer's scores.
    pub baseline: Vec<f64>,
}

impl ScoreQuantiles {
    /// Every percentile of `scores` (nearest rank).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    fn of(mut scores: Vec<f64>) -> Vec<f64> {
        scores.sort_by(f64::total_cmp);
        let last = scores.len().saturating_sub(1);
        (0..QUANTILES).map(|k| scores.get(((k * last) as f64 / (QUANTILES - 1) as f64).round() as usize).copied().unwrap_or(0.0)).collect()
    }

    fn valid(points: &[f64]) -> bool {
        points.len() == QUANTILES && points.iter().all(|v| v.is_finite()) && points.windows(2).all(|w| w[0] <= w[1])
    }
}

/// Where `x` falls among `points` (sorted quantiles), in [0, 1]: interpolated between
/// neighbouring quantiles, and the middle of a run of quantiles equal to `x`.
#[allow(clippy::cast_precision_loss)]
fn percentile(points: &[f64], x: f64) -> f64 {
    let below = points.partition_point(|&v| v < x);
    let through = points.partition_point(|&v| v <= x);
    let last = points.len().saturating_sub(1).max(1) as f64;
    let rank = if through > below {
        (below + through - 1) as f64 / 2.0
    } else if below == 0 {
        0.0
    } else if below == points.len() {
        last
    } else {
        let (lo, hi) = (points[below - 1], points[below]);
        (below - 1) as f64 + (x - lo) / (hi - lo)
    };
    rank / last
}


/// A model file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Not JSON of the expected shape.
    #[error("not a Switchyard router model: {0}")]
    Parse(String),
    /// Another format or inconsistent sizes.
    #[error("unsupported router model: {0}")]
    Unsupported(String),
    /// A baseline weight the model cannot serve.
    #[error("cannot mix this router model with the baseline: {0}")]
    Blend(String),
}

/// FNV-1a, fixed here so model files stay valid across builds and platforms.
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A prompt's features.
#[derive(Debug, Clone, PartialEq)]
pub struct Featurized {
    /// The dense signals, in `DENSE_NAMES` order.
    pub dense: [f32; DENSE],
    /// Hashed word unigrams and bigrams with their values.
    pub sparse: Vec<(u32, f32)>,
}

/// The hash bucket of a single word (its unigram feature).
fn word_bucket(word: &str) -> u32 {
    u32::try_from(fnv1a(word.as_bytes(), 1) % u64::from(BUCKETS)).unwrap_or(0)
}

/// The hash bucket of two neighbouring words (their bigram feature).
fn pair_bucket(first: &str, second: &str) -> u32 {
    u32::try_from(fnv1a(second.as_bytes(), fnv1a(first.as_bytes(), 2)) % u64::from(BUCKETS)).unwrap_or(0)
}

/// A prompt's words: lower-cased alphanumeric runs.
fn words_of(lower: &str) -> Vec<&str> {
    lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect()
}

/// The features of `text`: dense values, then hashed word unigrams and bigrams (each with value
/// 1/sqrt(words), so long and short prompts weigh alike). Words are lower-cased alphanumeric runs.
pub fn featurize(text: &str) -> Featurized {
    let lower = text.to_lowercase();
    let words = words_of(&lower);
    #[allow(clippy::cast_precision_loss)]
    let n = words.len().max(1) as f32;
    let chars = text.chars().count().max(1);
    #[allow(clippy::cast_precision_loss)]
    let share = |count: usize| count as f32 / chars as f32;
    let digits = text.chars().filter(char::is_ascii_digit).count();
    let math = text.chars().filter(|c| "=+*/^<>∑∫√π≤≥±×÷".contains(*c)).count();
    let code = text.matches("```").count() + text.matches("def ").count() + text.matches("();").count() + text.matches("{\n").count();
    let questions = text.matches('?').count();
    let lines = text.lines().count();
    let long_words = words.iter().filter(|w| w.chars().count() >= 10).count();
    let options = ["\na.", "\nb.", "\nc.", "\nd."].iter().filter(|o| lower.contains(*o)).count();
    #[allow(clippy::cast_precision_loss)]
    let dense = [
        (n + 1.0).ln() / 8.0,
        share(digits) * 4.0,
        share(math) * 10.0,
        (code as f32).min(4.0) / 4.0,
        (questions as f32).min(4.0) / 4.0,
        ((lines as f32) + 1.0).ln() / 4.0,
        long_words as f32 / n,
        options as f32 / 4.0,
    ];
    let value = 1.0 / n.sqrt();
    let mut sparse: Vec<(u32, f32)> = Vec::with_capacity(words.len() * 2);
    for (i, w) in words.iter().enumerate() {
        sparse.push((word_bucket(w), value));
        if let Some(next) = words.get(i + 1) {
            sparse.push((pair_bucket(w, next), value));
        }
    }
    Featurized { dense, sparse }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl LearnedScorer {
    /// Parses and checks a model file's text.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let mut model: Self = serde_json::from_str(text).map_err(|e| ModelError::Parse(e.to_string()))?;
        if model.format != FORMAT || model.buckets != BUCKETS || model.dense.len() != DENSE {
            return Err(ModelError::Unsupported(format!(
                "format {:?} with {} buckets and {} dense weights (expected {FORMAT:?}, {BUCKETS}, {DENSE})",
                model.format,
                model.buckets,
                model.dense.len()
            )));
        }
        let mut weights = vec![0.0; BUCKETS as usize];
        for &(b, w) in &model.sparse {
            *weights.get_mut(b as usize).ok_or_else(|| ModelError::Unsupported(format!("bucket {b} out of range")))? = w;
        }
        model.weights = weights;
        if let Some(q) = &model.quantiles {
            if !ScoreQuantiles::valid(&q.learned) || !ScoreQuantiles::valid(&q.baseline) {
                return Err(ModelError::Unsupported(format!("quantiles must be {QUANTILES} ascending numbers for each scorer")));
            }
        }
        Ok(model)
    }

    /// The same model, its complexity mixed with the baseline scorer's: `weight` × the baseline's
    /// percentile + (1 − `weight`) × the learned one's, percentiles among the training prompts'
    /// scores. `weight` 0 (the default) is the learned probability alone.
    pub fn with_baseline_weight(mut self, weight: f64) -> Result<Self, ModelError> {
        if !(0.0..=1.0).contains(&weight) {
            return Err(ModelError::Blend(format!("the baseline weight {weight} must be between 0 and 1")));
        }
        if weight > 0.0 && self.quantiles.is_none() {
            return Err(ModelError::Blend(
                "the file records no score quantiles (written before they were added): train it again with `switchyard train-router`".to_owned(),
            ));
        }
        self.baseline_weight = weight;
        Ok(self)
    }

    /// The baseline scorer's share of the complexity (0: the learned probability alone).
    pub fn baseline_weight(&self) -> f64 {
        self.baseline_weight
    }

    /// The model file's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The raw prediction: the probability that the frontier model's answer is clearly better.
    pub fn raw(&self, text: &str) -> f32 {
        self.predict(&featurize(text))
    }

    fn predict(&self, f: &Featurized) -> f32 {
        let mut z = self.bias;
        for (w, x) in self.dense.iter().zip(&f.dense) {
            z += w * x;
        }
        for &(b, x) in &f.sparse {
            z += self.weights[b as usize] * x;
        }
        sigmoid(z)
    }

    /// The words, pairs of words and dense signals that raised the prediction most, by what each
    /// added to its log-odds (for `/v1/route`'s reasons).
    fn reasons(&self, text: &str, f: &Featurized) -> Vec<String> {
        let mut parts: Vec<(f32, String)> = self.dense.iter().zip(&f.dense).zip(DENSE_NAMES).map(|((w, x), name)| (w * x, name.to_owned())).collect();
        // `featurize` lists word i at 2i and the pair (i, i + 1) at 2i + 1, each with the same
        // value; a word or pair seen k times adds k × its weight × that value. Sorting by bucket
        // groups the repeats (a hash map of strings costs about half the scorer's time again).
        let value = f.sparse.first().map_or(0.0, |&(_, x)| x);
        let mut entries: Vec<(u32, usize)> = f.sparse.iter().enumerate().map(|(k, &(b, _))| (b, k)).collect();
        entries.sort_unstable();
        let mut top: Vec<(f32, usize)> = Vec::with_capacity(4);
        for run in entries.chunk_by(|a, b| a.0 == b.0) {
            #[allow(clippy::cast_precision_loss)]
            let added = self.weights[run[0].0 as usize] * value * run.len() as f32;
            if top.len() < 3 || added > top[2].0 {
                top.push((added, run[0].1));
                top.sort_by(|a, b| b.0.total_cmp(&a.0));
                top.truncate(3);
            }
        }
        let lower = text.to_lowercase();
        let words = words_of(&lower);
        for (added, k) in top {
            let (i, pair) = (k / 2, k % 2 == 1);
            let name = match (words.get(i), words.get(i + 1)) {
                (Some(w), Some(next)) if pair => format!("words \"{w} {next}\""),
                (Some(w), _) => format!("word {w:?}"),
                _ => continue,
            };
            parts.push((added, name));
        }
        parts.sort_by(|a, b| b.0.total_cmp(&a.0));
        parts.into_iter().take(3).filter(|p| p.0 > 0.05).map(|(w, name)| format!("learned: {name} (+{w:.2})")).collect()
    }
}

impl ComplexityScorer for LearnedScorer {
    fn score(&self, text: &str, features: &Features, prompt_tokens: u32) -> ComplexityScore {
        let featurized = featurize(text);
        let learned = f64::from(self.predict(&featurized));
        let Some(q) = self.quantiles.as_ref().filter(|_| self.baseline_weight > 0.0) else {
            let mut reasons = vec![format!("learned scorer: p(frontier answer clearly better) = {learned:.3} ({})", self.trained_on)];
            reasons.extend(self.reasons(text, &featurized));
            return ComplexityScore { score: learned, reasons };
        };
        let w = self.baseline_weight;
        let baseline = BaselineScorer.score(text, features, prompt_tokens);
        let (learned_pct, baseline_pct) = (percentile(&q.learned, learned), percentile(&q.baseline, baseline.score));
        let score = (w * baseline_pct + (1.0 - w) * learned_pct).clamp(0.0, 1.0);
        let mut reasons = vec![format!(
            "learned scorer mixed with the baseline (baseline weight {w}): p(frontier answer clearly better) = {learned:.3}, \
             percentile {:.0} of its training prompts ({}); baseline {:.3}, percentile {:.0}",
            learned_pct * 100.0,
            self.trained_on,
            baseline.score,
            baseline_pct * 100.0
        )];
        reasons.extend(self.reasons(text, &featurized));
        reasons.extend(baseline.reasons);
        ComplexityScore { score, reasons }
    }
}

/// One training example: a prompt, its target in [0, 1] (1 = the frontier model's answer is
/// clearly better) and a weight.
#[derive(Debug, Clone)]
pub struct Example {
    /// The prompt text.
    pub text: String,
    /// Target probability.
    pub target: f32,
    /// Example weight.
    pub weight: f32,
}

/// Training settings.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// Passes over the data.
    pub epochs: usize,
    /// `AdaGrad` step size.
    pub learning_rate: f32,
    /// L2 penalty per example.
    pub l2: f32,
    /// Seed of the example order.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { epochs: 6, learning_rate: 0.01, l2: 1e-5, seed: 7 }
    }
}

/// Trains a model on `examples`; `trained_on` is recorded in the file.
pub fn train(examples: &[Example], options: TrainOptions, trained_on: &str) -> LearnedScorer {
    let featurized: Vec<Featurized> = examples.iter().map(|e| featurize(&e.text)).collect();
    let mut dense_w = vec![0.0_f32; DENSE];
    let mut dense_g = [1e-6_f32; DENSE];
    let mut weights = vec![0.0_f32; BUCKETS as usize];
    let mut grads = vec![1e-6_f32; BUCKETS as usize];
    // Start the intercept at the base rate.
    let total_weight: f32 = examples.iter().map(|e| e.weight).sum::<f32>().max(1e-6);
    let base = (examples.iter().map(|e| e.target * e.weight).sum::<f32>() / total_weight).clamp(1e-3, 1.0 - 1e-3);
    let mut bias = (base / (1.0 - base)).ln();
    let mut bias_g = 1e-6_f32;
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut state = options.seed.max(1);
    for _ in 0..options.epochs {
        // Fisher-Yates with xorshift: the same order for the same seed, everywhere.
        for i in (1..order.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let j = usize::try_from(state % (i as u64 + 1)).unwrap_or(0);
            order.swap(i, j);
        }
        for &i in &order {
            let Featurized { dense, sparse } = &featurized[i];
            let e = &examples[i];
            let mut z = bias;
            for (w, x) in dense_w.iter().zip(dense) {
                z += w * x;
            }
            for (b, x) in sparse {
                z += weights[*b as usize] * x;
            }
            let g = (sigmoid(z) - e.target) * e.weight;
            bias_g += g * g;
            bias -= options.learning_rate * g / bias_g.sqrt();
            for ((w, acc), x) in dense_w.iter_mut().zip(dense_g.iter_mut()).zip(dense) {
                let gi = g * x + options.l2 * *w;
                *acc += gi * gi;
                *w -= options.learning_rate * gi / acc.sqrt();
            }
            for (b, x) in sparse {
                let (w, acc) = (&mut weights[*b as usize], &mut grads[*b as usize]);
                let gi = g * x + options.l2 * *w;
                *acc += gi * gi;
                *w -= options.learning_rate * gi / acc.sqrt();
            }
        }
    }
    let sparse: Vec<(u32, f32)> = weights
        .iter()
        .enumerate()
        // Weights this small change no ranking that matters; dropping them keeps the file small.
        .filter(|(_, w)| w.abs() >= 1e-3)
        .map(|(b, w)| (u32::try_from(b).unwrap_or(0), (w * 1e3).round() / 1e3))
        .collect();
    let mut model = LearnedScorer {
        format: FORMAT.to_owned(),
        buckets: BUCKETS,
        bias,
        dense: dense_w,
        sparse,
        trained_on: trained_on.to_owned(),
        quantiles: None,
        weights: Vec::new(),
        baseline_weight: 0.0,
    };
    // Rebuild the dense vector from the rounded sparse weights, so scores match a reloaded file.
    let mut dense_weights = vec![0.0; BUCKETS as usize];
    for &(b, w) in &model.sparse {
        dense_weights[b as usize] = w;
    }
    model.weights = dense_weights;
    model.quantiles = Some(ScoreQuantiles {
        learned: ScoreQuantiles::of(featurized.iter().map(|f| f64::from(model.predict(f))).collect()),
        baseline: ScoreQuantiles::of(examples.iter().map(|e| score_bare_prompt(&BaselineScorer, &e.text).score).collect()),
    });
    model
}

#[cfg(test)]
#[allow(clippy::float_cmp, clippy::cast_precision_loss)]
mod tests {
    use super::*;
    use crate::signals::features;

    fn examples() -> Vec<Example> {
        let mut out = Vec::new();
        for i in 0..200 {
            out.push(Example { text: format!("Prove the theorem about integrals number {i} rigorously"), target: 1.0, weight: 1.0 });
            out.push(Example { text: format!("Say hello to my friend number {i} please"), target: 0.0, weight: 1.0 });
        }
        out
    }

    #[test]
    fn learns_a_separable_signal_and_ranks_by_it() {
        let model = train(&examples(), TrainOptions::default(), "test");
        let hard = model.raw("Prove this theorem about integrals");
        let easy = model.raw("Say hello to my friend");
        assert!(hard > 0.7 && easy < 0.2, "{hard} {easy}");
    }

    #[test]
    fn a_saved_model_scores_the_same_after_loading() {
        let model = train(&examples(), TrainOptions::default(), "test");
        let loaded = LearnedScorer::from_json(&model.to_json()).unwrap();
        for text in ["Prove the theorem", "Say hello", "something else entirely"] {
            assert_eq!(model.raw(text), loaded.raw(text));
        }
        assert_eq!(loaded.trained_on, "test");
    }

    #[test]
    fn rejects_other_files() {
        assert!(matches!(LearnedScorer::from_json("{}"), Err(ModelError::Parse(_))));
        let mut model = train(&examples()[..4], TrainOptions::default(), "t");
        model.format = "other".into();
        assert!(matches!(LearnedScorer::from_json(&model.to_json()), Err(ModelError::Unsupported(_))));
    }

    #[test]
    fn training_is_deterministic() {
        let a = train(&examples(), TrainOptions::default(), "t");
        let b = train(&examples(), TrainOptions::default(), "t");
        assert_eq!(a, b);
    }

    #[test]
    fn percentiles_interpolate_between_quantiles_and_split_ties() {
        let points: Vec<f64> = (0..QUANTILES).map(|k| k as f64 / 100.0).collect();
        assert!((percentile(&points, 0.255) - 0.255).abs() < 1e-9);
        assert_eq!(percentile(&points, -1.0), 0.0);
        assert_eq!(percentile(&points, 2.0), 1.0);
        // Half the training prompts scored exactly 0.2: a score of 0.2 sits in the middle of them.
        let tied: Vec<f64> = (0..QUANTILES).map(|k| if k <= 50 { 0.2 } else { 0.2 + k as f64 / 100.0 }).collect();
        assert!((percentile(&tied, 0.2) - 0.25).abs() < 1e-9);
        assert!(percentile(&tied, 0.1) == 0.0 && percentile(&tied, 0.75) > 0.5);
    }

    #[test]
    fn training_records_where_its_prompts_scores_fell_under_both_scorers() {
        let model = train(&examples(), TrainOptions::default(), "t");
        let q = model.quantiles.as_ref().expect("quantiles");
        assert!(ScoreQuantiles::valid(&q.learned) && ScoreQuantiles::valid(&q.baseline));
        // Half the prompts are "prove" ones, which the model and the baseline both score higher.
        assert!(q.learned[10] < 0.5 && q.learned[90] > 0.5, "{:?}", q.learned);
        assert!(q.baseline[10] < q.baseline[90], "{:?}", q.baseline);
        let loaded = LearnedScorer::from_json(&model.to_json()).unwrap();
        assert_eq!(loaded.quantiles, model.quantiles);
    }

    #[test]
    fn the_baseline_weight_mixes_the_two_percentiles() {
        let model = train(&examples(), TrainOptions::default(), "t");
        let text = "Prove the theorem about integrals, with 3 cases and 7 steps";
        let f = features(text, 1, false);
        let learned_only = model.clone().with_baseline_weight(0.0).unwrap().score(text, &f, 15);
        assert_eq!(learned_only.score, f64::from(model.raw(text)));
        let q = model.quantiles.clone().unwrap();
        let baseline = BaselineScorer.score(text, &f, 15).score;
        let (lp, bp) = (percentile(&q.learned, f64::from(model.raw(text))), percentile(&q.baseline, baseline));
        for w in [0.25, 0.5, 1.0] {
            let mixed = model.clone().with_baseline_weight(w).unwrap().score(text, &f, 15);
            assert!((mixed.score - (w * bp + (1.0 - w) * lp)).abs() < 1e-12, "w {w}: {}", mixed.score);
            assert!(mixed.reasons[0].contains("mixed with the baseline"), "{:?}", mixed.reasons);
            // The baseline's own reasons come along.
            assert!(mixed.reasons.iter().any(|r| r.contains("numbers")), "{:?}", mixed.reasons);
        }
    }

    #[test]
    fn a_baseline_weight_needs_quantiles_and_a_share() {
        let mut model = train(&examples(), TrainOptions::default(), "t");
        assert!(matches!(model.clone().with_baseline_weight(1.5), Err(ModelError::Blend(_))));
        assert!(matches!(model.clone().with_baseline_weight(-0.1), Err(ModelError::Blend(_))));
        model.quantiles = None;
        let old = LearnedScorer::from_json(&model.to_json()).unwrap();
        assert!(old.clone().with_baseline_weight(0.0).is_ok());
        let err = old.with_baseline_weight(0.5).unwrap_err().to_string();
        assert!(err.contains("train-router"), "{err}");
        model.quantiles = Some(ScoreQuantiles { learned: vec![0.5; 3], baseline: vec![0.5; QUANTILES] });
        assert!(matches!(LearnedScorer::from_json(&model.to_json()), Err(ModelError::Unsupported(_))));
    }

    #[test]
    fn a_weight_too_large_for_an_f32_is_refused() {
        // Loaded as infinity it would make scores NaN, which no threshold reaches (everything
        // would quietly stay local); the parser refuses it.
        let model = train(&examples(), TrainOptions::default(), "t");
        let mut value: serde_json::Value = serde_json::from_str(&model.to_json()).unwrap();
        value["bias"] = serde_json::json!(1e39);
        let loaded = LearnedScorer::from_json(&value.to_string());
        assert!(matches!(loaded, Err(ModelError::Parse(_))), "{:?}", loaded.map(|m| m.bias));
    }

    #[test]
    fn reasons_give_what_each_word_and_pair_added() {
        let mut model = train(&examples(), TrainOptions::default(), "t");
        model.bias = 0.0;
        model.dense = vec![0.0; DENSE];
        model.sparse = vec![(word_bucket("integral"), 2.0), (pair_bucket("hard", "integral"), 1.0)];
        let model = LearnedScorer::from_json(&model.to_json()).unwrap();
        // 25 words: each occurrence counts 1/5 of its weight.
        let text = format!("hard integral {}", "the ".repeat(23));
        let s = model.score(&text, &Features::default(), 30);
        assert_eq!(s.reasons[1..], ["learned: word \"integral\" (+0.40)", "learned: words \"hard integral\" (+0.20)"], "{:?}", s.reasons);
    }

    #[test]
    fn reasons_name_the_words_that_raised_the_score() {
        let model = train(&examples(), TrainOptions::default(), "t");
        let s = model.score("Prove the theorem about integrals", &Features::default(), 10);
        assert!(s.reasons.iter().any(|r| r.contains("word")), "{:?}", s.reasons);
    }
}
