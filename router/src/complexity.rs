//! Complexity scoring behind a trait: a transparent baseline here; the learned scorer (a later
//! issue) implements the same trait.

use crate::signals::Features;

/// A score in [0, 1] with the features that raised it.
#[derive(Debug, Clone, PartialEq)]
pub struct ComplexityScore {
    /// 0 = trivial, 1 = very hard.
    pub score: f64,
    /// Human-readable features that contributed, strongest first.
    pub reasons: Vec<String>,
}

/// Scores how hard a request is. Implementations are pure and fast (the router's budget is
/// microseconds).
pub trait ComplexityScorer: Send + Sync + std::fmt::Debug {
    /// Scores `text` (the conversation's text) with its `features` and about `prompt_tokens` tokens.
    fn score(&self, text: &str, features: &Features, prompt_tokens: u32) -> ComplexityScore;
}

impl<T: ComplexityScorer> ComplexityScorer for std::sync::Arc<T> {
    fn score(&self, text: &str, features: &Features, prompt_tokens: u32) -> ComplexityScore {
        (**self).score(text, features, prompt_tokens)
    }
}

/// `scorer`'s score of a bare prompt, read as the live router reads a one-message request: its
/// signals with one turn and no tools, about four characters a token (rounded up). Training and
/// evaluation score prompts this way.
pub fn score_bare_prompt(scorer: &dyn ComplexityScorer, text: &str) -> ComplexityScore {
    let tokens = u32::try_from(text.chars().count().div_ceil(4)).unwrap_or(u32::MAX);
    scorer.score(text, &crate::signals::features(text, 1, false), tokens)
}

/// The baseline: length, code, math, numbers, reasoning markers, turns and tools, each adding a
/// fixed weight.
#[derive(Debug, Clone, Copy, Default)]
pub struct BaselineScorer;

impl ComplexityScorer for BaselineScorer {
    fn score(&self, _text: &str, features: &Features, prompt_tokens: u32) -> ComplexityScore {
        let mut parts: Vec<(f64, String)> = Vec::new();
        // Length: it always counts, so that among prompts with the same features the longer one
        // ranks higher (a threshold or a calibration can then split them), but it is named as a
        // reason only from ~250 tokens, where it starts to matter.
        let length = length_weight(prompt_tokens);
        let unnamed = if length >= 0.05 {
            parts.push((length, format!("long prompt (~{prompt_tokens} tokens)")));
            0.0
        } else {
            length
        };
        if features.code {
            parts.push((0.2, "contains code".to_owned()));
        }
        if features.math {
            parts.push((0.15, "contains math".to_owned()));
        }
        // Numbers: a prompt stating quantities usually asks for a computation, and each stated
        // quantity is often a step; past three, more numbers are more often data than steps.
        if features.numbers > 0 {
            let weight = f64::from(features.numbers.min(3)) * 0.05;
            let noun = if features.numbers == 1 { "number" } else { "numbers" };
            parts.push((weight, format!("states {} {noun}", features.numbers)));
        }
        let markers: Vec<&str> = features.reasoning_marker_words().collect();
        if !markers.is_empty() {
            #[allow(clippy::cast_precision_loss)]
            let weight = (markers.len() as f64 * 0.15).min(0.45);
            parts.push((weight, format!("reasoning markers: {}", markers.join(", "))));
        }
        if features.turns > 4 {
            parts.push((0.1, format!("multi-turn ({} messages)", features.turns)));
        }
        if features.tools {
            parts.push((0.1, "tool use".to_owned()));
        }
        parts.sort_by(|a, b| b.0.total_cmp(&a.0));
        let score = below_one(parts.iter().fold(unnamed, |acc, p| acc + p.0));
        ComplexityScore { score, reasons: parts.into_iter().map(|p| p.1).collect() }
    }
}

/// The length term: 0.0002 a token up to 1,000 tokens (0.2), then rising ever more slowly
/// towards 0.3. It never saturates, so prompts that share a long prefix (few-shot examples, a
/// system prompt) still rank by what differs: with a cap, every such prompt past it would score
/// the same.
fn length_weight(prompt_tokens: u32) -> f64 {
    soft_knee(f64::from(prompt_tokens) * 0.0002, 0.2, 0.1)
}

/// The sum of the parts as a score below 1: unchanged up to 0.8, then compressed towards 1, so
/// that prompts with many features keep their order instead of all reading 1.
fn below_one(sum: f64) -> f64 {
    soft_knee(sum.max(0.0), 0.8, 0.2)
}

/// `x` up to `knee`; past it, ever more slowly towards `knee + headroom`, with slope 1 at the
/// knee (no kink) and strictly increasing (no two inputs tie).
fn soft_knee(x: f64, knee: f64, headroom: f64) -> f64 {
    if x <= knee {
        x
    } else {
        let over = x - knee;
        knee + headroom * over / (over + headroom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score_complexity(text: &str, turns: usize, prompt_tokens: u32, has_tools: bool) -> ComplexityScore {
        BaselineScorer.score(text, &crate::signals::features(text, turns, has_tools), prompt_tokens)
    }

    #[test]
    fn greeting_is_easy_and_has_no_reasons() {
        let s = score_complexity("Hi", 1, 3, false);
        assert!(s.score < 0.1, "{s:?}");
        assert!(s.reasons.is_empty());
    }

    #[test]
    fn proof_request_with_math_scores_higher_than_greeting() {
        let hard = score_complexity(
            "Prove step by step that x^2 = y^2 implies x = y or x = -y, and analyze the complexity.",
            1,
            40,
            false,
        );
        assert!(hard.score >= 0.55, "{hard:?}");
        assert!(hard.reasons.iter().any(|r| r.contains("reasoning markers")));
    }

    #[test]
    fn among_equal_features_the_longer_prompt_scores_higher() {
        let short = score_complexity("Tell me about the weather in Paris today.", 1, 10, false);
        let longer = score_complexity("Tell me about the weather in Paris today and tomorrow, and what to wear.", 1, 18, false);
        assert!(longer.score > short.score, "{short:?} {longer:?}");
        // Below ~250 tokens length raises the score without being named.
        assert!(longer.reasons.is_empty(), "{longer:?}");
    }

    #[test]
    fn stated_numbers_raise_the_score_up_to_three() {
        let score = |t: &str| score_complexity(t, 1, 20, false);
        let none = score("Tom has some apples and buys a few more. How many now?");
        let two = score("Tom has 5 apples and buys 7 more. How many now?");
        let three = score("Tom has 5 apples, buys 7 more and eats 2. How many now?");
        let six = score("Tom has 5 apples, buys 7 more, eats 2, gives 1, finds 4 and sells 3. How many?");
        assert!(none.score < two.score && two.score < three.score, "{none:?} {two:?} {three:?}");
        assert!((six.score - three.score).abs() < 1e-9, "{three:?} {six:?}");
        assert!(three.reasons.contains(&"states 3 numbers".to_owned()), "{three:?}");
        assert!(none.reasons.is_empty(), "{none:?}");
    }

    #[test]
    fn long_prompts_and_many_features_keep_their_order() {
        // A shared few-shot prefix past any cap: the longer question still ranks higher.
        let shared = score_complexity("Question: how many? Answer: 4.", 1, 2600, false);
        let longer = score_complexity("Question: how many? Answer: 4.", 1, 2640, false);
        assert!(longer.score > shared.score && longer.score < 1.0, "{shared:?} {longer:?}");
        // Every feature at once, short and long: both below 1, the longer higher.
        let text = "Prove and derive the algorithm's complexity step by step: ```fn f() {}``` x^2 = 4, 5, 6";
        let short = score_complexity(text, 9, 40, true);
        let long = score_complexity(text, 9, 4000, true);
        assert!(short.score > 0.9 && short.score < long.score && long.score < 1.0, "{short:?} {long:?}");
        // No kink: the length term is continuous at 1,000 tokens.
        assert!((length_weight(1001) - length_weight(1000) - 0.0002).abs() < 1e-6);
        assert!((below_one(0.8 + 1e-9) - 0.8 - 1e-9).abs() < 1e-12);
    }

    #[test]
    fn score_stays_in_unit_interval() {
        let text = "prove derive theorem ```code``` = = = ∫ ".repeat(200);
        let s = score_complexity(&text, 50, 100_000, true);
        assert!((0.0..=1.0).contains(&s.score));
    }
}
