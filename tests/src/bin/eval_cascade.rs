//! The cascade's confidence signal on auto-checkable items, generated from a fixed seed in four
//! families with independently drawn parameters: arithmetic (+, −, × of 1- to 3-digit numbers,
//! each operand's digits drawn apart from the operation), comparing two numbers, counting a
//! letter in a word, and one- or two-step word problems. They are answered by the local model
//! through the gateway under a `strategy = "cascade"` rule whose threshold keeps every answer, so
//! each comes back with `x-switchyard-local-confidence` (mean token log-probability),
//! `x-switchyard-local-min-logprob` (the least likely token's) and `x-switchyard-complexity` (the
//! prompt-only scorer). Exact answers are checked. Prints the ROC AUC of each signal for
//! predicting a correct local answer, of the three combined by a logistic regression fitted on
//! other folds (5-fold cross-validation: no item is scored by a model that saw it), and, at the
//! default threshold, the local accuracy on answers kept vs escalated. Not a test.
//!
//! `eval-cascade [--items 320] [--threshold -0.5] [--max-tokens 32] [--in-flight 1] [--show]` (`--show` prints
//! each item: correct, mean and min log-probability, complexity, question, answer).

use std::time::Duration;

use serde_json::{json, Value};
use switchyard_e2e::{config_with_local, FakeProvider, Gateway};

struct Outcome {
    family: &'static str,
    correct: bool,
    confidence: f64,
    min_logprob: f64,
    complexity: f64,
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A uniform draw in `0..n`.
fn below(state: &mut u64, n: u64) -> i64 {
    i64::try_from(xorshift(state) % n).unwrap_or(0)
}

/// A number of `1..=max_digits` digits (the count drawn first, then the value).
fn number(state: &mut u64, max_digits: u64) -> i64 {
    let digits = u32::try_from(below(state, max_digits) + 1).unwrap_or(1);
    below(state, 10u64.pow(digits))
}

const WORDS: &[&str] = &[
    "banana", "strawberry", "committee", "mississippi", "bookkeeper", "assessment", "parallel", "balloon", "coffee",
    "letter", "address", "success", "pepper", "giraffe", "possession", "necessary", "tomorrow", "accommodate",
    "occurrence", "cinnamon", "butterfly", "broccoli", "embarrass", "raccoon",
];
const NAMES: &[&str] = &["Tom", "Ana", "Ravi", "Mei", "Lukas", "Sara"];
const THINGS: &[&str] = &["apples", "marbles", "stickers", "books", "coins", "pencils"];

/// `(family, question, answer)` triples.
fn items(n: usize) -> Vec<(&'static str, String, i64)> {
    let mut state = 2026;
    let only = "Answer with the number only.";
    (0..n)
        .map(|i| {
            let rng = &mut state;
            match i % 4 {
                0 => {
                    let (a, b) = (number(rng, 3), number(rng, 3));
                    match below(rng, 3) {
                        0 => ("arithmetic", format!("What is {a} + {b}? {only}"), a + b),
                        1 => ("arithmetic", format!("What is {a} - {b}? {only}"), a - b),
                        _ => ("arithmetic", format!("What is {a} times {b}? {only}"), a * b),
                    }
                }
                1 => {
                    let (a, b) = (number(rng, 4), number(rng, 4));
                    let b = if a == b { b + 1 } else { b };
                    ("compare", format!("Which number is larger, {a} or {b}? {only}"), a.max(b))
                }
                2 => {
                    let word = WORDS[usize::try_from(below(rng, WORDS.len() as u64)).unwrap_or(0)];
                    let letters: Vec<char> = word.chars().collect();
                    let letter = letters[usize::try_from(below(rng, letters.len() as u64)).unwrap_or(0)];
                    let count = i64::try_from(letters.iter().filter(|c| **c == letter).count()).unwrap_or(0);
                    ("letters", format!("How many times does the letter '{letter}' appear in the word '{word}'? {only}"), count)
                }
                _ => {
                    let name = NAMES[usize::try_from(below(rng, NAMES.len() as u64)).unwrap_or(0)];
                    let thing = THINGS[usize::try_from(below(rng, THINGS.len() as u64)).unwrap_or(0)];
                    let (a, b) = (number(rng, 2) + 1, number(rng, 2) + 1);
                    if below(rng, 2) == 0 {
                        ("word problem", format!("{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now? {only}"), a + b)
                    } else {
                        let c = below(rng, u64::try_from(a + b).unwrap_or(0) + 1);
                        (
                            "word problem",
                            format!("{name} has {a} {thing}, gets {b} more, then gives {c} away. How many {thing} does {name} have now? {only}"),
                            a + b - c,
                        )
                    }
                }
            }
        })
        .collect()
}

/// The numbers an answer states, in order: integers (a minus sign right before one, not after
/// a digit, makes it negative; thousands separators are dropped) and the number words a small
/// model writes for counts ("once", "twice", "three").
fn stated_numbers(text: &str) -> Vec<i64> {
    const WORDS: [(&str, i64); 12] = [
        ("once", 1), ("twice", 2), ("thrice", 3), ("one", 1), ("two", 2), ("three", 3), ("four", 4), ("five", 5),
        ("six", 6), ("seven", 7), ("eight", 8), ("nine", 9),
    ];
    let cleaned = text.replace(',', "");
    let mut out = Vec::new();
    let mut rest = cleaned.as_str();
    let mut previous: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_digit() {
            let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if let Ok(v) = rest[..end].parse::<i64>() {
                out.push(v);
            }
            previous = rest[..end].chars().last();
            rest = &rest[end..];
        } else if c == '-' && previous.is_none_or(|p| !p.is_ascii_alphanumeric()) && rest[1..].starts_with(|c: char| c.is_ascii_digit()) {
            let end = rest[1..].find(|c: char| !c.is_ascii_digit()).map_or(rest.len(), |e| e + 1);
            if let Ok(v) = rest[..end].parse::<i64>() {
                out.push(v);
            }
            previous = Some('0');
            rest = &rest[end..];
        } else if c.is_alphabetic() {
            let end = rest.find(|c: char| !c.is_alphabetic()).unwrap_or(rest.len());
            let word = rest[..end].to_lowercase();
            if let Some((_, v)) = WORDS.iter().find(|(w, _)| *w == word) {
                out.push(*v);
            }
            previous = Some('a');
            rest = &rest[end..];
        } else {
            previous = Some(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Whether `answer` is right. The model restates the question before answering ("7 + 5 = 12."),
/// so the last number stated counts; for "which is larger" the restatement names both numbers,
/// so there the first one counts ("2 is the larger number.").
fn is_correct(family: &str, answer: &str, expected: i64) -> bool {
    let numbers = stated_numbers(answer);
    let claimed = if family == "compare" { numbers.first() } else { numbers.last() };
    claimed == Some(&expected)
}

/// ROC AUC of a score for predicting a correct answer, from `(correct, score)` pairs (ties
/// count half).
#[allow(clippy::cast_precision_loss)]
fn auc(pairs: impl IntoIterator<Item = (bool, f64)>) -> f64 {
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for (correct, score) in pairs {
        if correct { pos.push(score) } else { neg.push(score) }
    }
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p > n { 1.0 } else if (p - n).abs() < f64::EPSILON { 0.5 } else { 0.0 };
        }
    }
    wins / (pos.len() * neg.len()).max(1) as f64
}

/// The signals as features, each standardised over all items (no labels used), in the order
/// mean log-probability, min log-probability, prompt complexity.
fn standardised(outcomes: &[Outcome]) -> Vec<[f64; 3]> {
    let raw: Vec<[f64; 3]> = outcomes.iter().map(|o| [o.confidence, o.min_logprob, o.complexity]).collect();
    #[allow(clippy::cast_precision_loss)]
    let n = raw.len().max(1) as f64;
    let mean: [f64; 3] = std::array::from_fn(|k| raw.iter().map(|r| r[k]).sum::<f64>() / n);
    let sd: [f64; 3] = std::array::from_fn(|k| (raw.iter().map(|r| (r[k] - mean[k]).powi(2)).sum::<f64>() / n).sqrt().max(1e-9));
    raw.iter().map(|r| std::array::from_fn(|k| (r[k] - mean[k]) / sd[k])).collect()
}

/// Logistic regression by batch gradient descent (a few features, a few hundred items):
/// returns the weights and the intercept.
fn fit_logistic(features: &[[f64; 3]], labels: &[bool]) -> ([f64; 3], f64) {
    let (mut weights, mut bias) = ([0.0; 3], 0.0);
    #[allow(clippy::cast_precision_loss)]
    let count = features.len().max(1) as f64;
    for _ in 0..2000 {
        let (mut grad, mut grad_bias) = ([0.0; 3], 0.0);
        for (row, label) in features.iter().zip(labels) {
            let logit = bias + (0..3).map(|k| weights[k] * row[k]).sum::<f64>();
            let err = 1.0 / (1.0 + (-logit).exp()) - if *label { 1.0 } else { 0.0 };
            for k in 0..3 {
                grad[k] += err * row[k];
            }
            grad_bias += err;
        }
        for k in 0..3 {
            weights[k] -= 0.5 * (grad[k] / count + 1e-3 * weights[k]);
        }
        bias -= 0.5 * grad_bias / count;
    }
    (weights, bias)
}

/// Each item's score from a logistic regression on the three signals fitted on the other folds.
fn cross_validated_combination(outcomes: &[Outcome]) -> Vec<f64> {
    let x = standardised(outcomes);
    let y: Vec<bool> = outcomes.iter().map(|o| o.correct).collect();
    let mut scores = vec![0.0; outcomes.len()];
    for fold in 0..5 {
        let (train_x, train_y): (Vec<[f64; 3]>, Vec<bool>) =
            (0..x.len()).filter(|i| i % 5 != fold).map(|i| (x[i], y[i])).unzip();
        let (w, b) = fit_logistic(&train_x, &train_y);
        for i in (0..x.len()).filter(|i| i % 5 == fold) {
            scores[i] = b + (0..3).map(|k| w[k] * x[i][k]).sum::<f64>();
        }
    }
    scores
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let arg = |flag: &str| std::env::args().skip_while(|a| a != flag).nth(1);
    let n: usize = arg("--items").map_or(320, |v| v.parse().expect("--items N"));
    let threshold: f64 = arg("--threshold").map_or(-0.5, |v| v.parse().expect("--threshold X"));
    let max_tokens: u32 = arg("--max-tokens").map_or(32, |v| v.parse().expect("--max-tokens N"));
    let in_flight: usize = arg("--in-flight").map_or(1, |v| v.parse().expect("--in-flight N"));
    let show = std::env::args().any(|a| a == "--show");
    let fake = FakeProvider::start();
    // Keep every local answer (threshold far below any mean log-probability) to see them all.
    let policy = "[classifier]\ncascade_min_logprob = -1000.0\n\n[[rule]]\nname = \"cascade\"\nroute = \"fake/echo\"\nstrategy = \"cascade\"\n";
    let gateway = Gateway::start(&config_with_local(4, 4096, &fake.provider_section(None)), policy).await;
    let client = reqwest::Client::new();
    let mut outcomes = Vec::new();
    // One at a time by default; `--in-flight 4` gave the same 320 answers (2026-12-05), only sooner.
    for chunk in items(n).chunks(in_flight) {
        let calls = chunk.iter().map(|(family, q, expected)| {
            let client = client.clone();
            let url = format!("{}/chat/completions", gateway.v1());
            async move {
                let body = json!({"model": "auto", "temperature": 0, "max_tokens": max_tokens, "messages": [{"role": "user", "content": q}]});
                let r = client.post(url).json(&body).timeout(Duration::from_mins(2)).send().await.expect("answer");
                let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<f64>().ok());
                let confidence = header("x-switchyard-local-confidence").expect("a cascade answer carries its confidence");
                let min_logprob = header("x-switchyard-local-min-logprob").expect("and its least likely token's");
                let complexity = header("x-switchyard-complexity").unwrap_or(0.0);
                let body: Value = r.json().await.expect("JSON");
                let text = body["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
                let correct = is_correct(family, &text, *expected);
                if show {
                    println!("{correct:5} {confidence:8.3} {min_logprob:8.3} {complexity:.3} {q:?} -> {text:?} (expected {expected})");
                }
                Outcome { family, correct, confidence, min_logprob, complexity }
            }
        });
        outcomes.extend(futures::future::join_all(calls).await);
    }
    let correct = outcomes.iter().filter(|o| o.correct).count();
    #[allow(clippy::cast_precision_loss)]
    let accuracy = |set: &[&Outcome]| {
        if set.is_empty() {
            f64::NAN
        } else {
            set.iter().filter(|o| o.correct).count() as f64 / set.len() as f64 * 100.0
        }
    };
    println!("{n} items (arithmetic, compare, letters, word problem; fixed seed), SmolLM2-135M-Instruct Q4_1 greedy; {correct} answered correctly");
    println!();
    println!("| signal for \"the local answer is correct\" | ROC AUC |");
    println!("|---|---:|");
    println!("| mean token log-probability of the answer (the cascade's) | {:.3} |", auc(outcomes.iter().map(|o| (o.correct, o.confidence))));
    println!("| least likely token's log-probability | {:.3} |", auc(outcomes.iter().map(|o| (o.correct, o.min_logprob))));
    println!("| prompt-only complexity (lower = easier) | {:.3} |", auc(outcomes.iter().map(|o| (o.correct, -o.complexity))));
    let combined = cross_validated_combination(&outcomes);
    let combined_auc = auc(outcomes.iter().zip(&combined).map(|(o, score)| (o.correct, *score)));
    println!("| the three combined (logistic regression, 5-fold cross-validated) | {combined_auc:.3} |");
    println!();
    println!("| at cascade_min_logprob = {threshold} | answers | local accuracy |");
    println!("|---|---:|---:|");
    let all: Vec<&Outcome> = outcomes.iter().collect();
    let kept: Vec<&Outcome> = outcomes.iter().filter(|o| o.confidence >= threshold).collect();
    let escalated: Vec<&Outcome> = outcomes.iter().filter(|o| o.confidence < threshold).collect();
    println!("| all | {} | {:.1} % |", all.len(), accuracy(&all));
    println!("| kept local | {} | {:.1} % |", kept.len(), accuracy(&kept));
    println!("| escalated | {} | {:.1} % |", escalated.len(), accuracy(&escalated));
    println!();
    println!("| family | items | local accuracy | kept | accuracy of kept | AUC mean log-prob | AUC min log-prob |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for family in ["arithmetic", "compare", "letters", "word problem"] {
        let set: Vec<&Outcome> = outcomes.iter().filter(|o| o.family == family).collect();
        let kept: Vec<&Outcome> = set.iter().copied().filter(|o| o.confidence >= threshold).collect();
        println!(
            "| {family} | {} | {:.1} % | {} | {:.1} % | {:.3} | {:.3} |",
            set.len(),
            accuracy(&set),
            kept.len(),
            accuracy(&kept),
            auc(set.iter().map(|o| (o.correct, o.confidence))),
            auc(set.iter().map(|o| (o.correct, o.min_logprob)))
        );
    }
}
