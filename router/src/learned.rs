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

use serde::{Deserialize, Serialize};

use crate::complexity::{ComplexityScore, ComplexityScorer};
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
    #[serde(skip)]
    weights: Vec<f32>,
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
fn word_bucket(word: &str) -> usize {
    usize::try_from(fnv1a(word.as_bytes(), 1) % u64::from(BUCKETS)).unwrap_or(0)
}

/// The features of `text`: dense values, then hashed word unigrams and bigrams (each with value
/// 1/sqrt(words), so long and short prompts weigh alike). Words are lower-cased alphanumeric runs.
pub fn featurize(text: &str) -> Featurized {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
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
    let bucket = |h: u64| u32::try_from(h % u64::from(BUCKETS)).unwrap_or(0);
    for (i, w) in words.iter().enumerate() {
        sparse.push((u32::try_from(word_bucket(w)).unwrap_or(0), value));
        if let Some(next) = words.get(i + 1) {
            let h = fnv1a(next.as_bytes(), fnv1a(w.as_bytes(), 2));
            sparse.push((bucket(h), value));
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
        Ok(model)
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

    /// Words and dense signals that raised the prediction most (for `/v1/route`'s reasons).
    fn reasons(&self, text: &str, f: &Featurized) -> Vec<String> {
        let mut parts: Vec<(f32, String)> = Vec::new();
        for ((w, x), name) in self.dense.iter().zip(&f.dense).zip(DENSE_NAMES) {
            parts.push((w * x, name.to_owned()));
        }
        let lower = text.to_lowercase();
        let mut seen = std::collections::HashSet::new();
        for word in lower.split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() > 2) {
            if seen.insert(word) {
                parts.push((self.weights[word_bucket(word)], format!("word {word:?}")));
            }
        }
        parts.sort_by(|a, b| b.0.total_cmp(&a.0));
        parts.into_iter().take(3).filter(|p| p.0 > 0.05).map(|(w, name)| format!("learned: {name} (+{w:.2})")).collect()
    }
}

impl ComplexityScorer for LearnedScorer {
    fn score(&self, text: &str, _features: &Features, _prompt_tokens: u32) -> ComplexityScore {
        let features = featurize(text);
        let score = f64::from(self.predict(&features));
        let mut reasons = vec![format!("learned scorer: p(frontier answer clearly better) = {score:.3} ({})", self.trained_on)];
        reasons.extend(self.reasons(text, &features));
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
        weights: Vec::new(),
    };
    // Rebuild the dense vector from the rounded sparse weights, so scores match a reloaded file.
    let mut dense_weights = vec![0.0; BUCKETS as usize];
    for &(b, w) in &model.sparse {
        dense_weights[b as usize] = w;
    }
    model.weights = dense_weights;
    model
}

#[cfg(test)]
#[allow(clippy::float_cmp, clippy::cast_precision_loss)]
mod tests {
    use super::*;

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
    fn reasons_name_the_words_that_raised_the_score() {
        let model = train(&examples(), TrainOptions::default(), "t");
        let s = model.score("Prove the theorem about integrals", &Features::default(), 10);
        assert!(s.reasons.iter().any(|r| r.contains("word")), "{:?}", s.reasons);
    }
}
