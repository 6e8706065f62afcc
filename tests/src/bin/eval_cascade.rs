//! The cascade's confidence signal on auto-checkable items: arithmetic questions (sums,
//! differences and products of 1- to 3-digit numbers, generated from a fixed seed) answered by
//! the local model through the gateway under a `strategy = "cascade"` rule whose threshold keeps
//! every answer, so each comes back with `x-switchyard-local-confidence` (mean token
//! log-probability) and `x-switchyard-complexity` (the prompt-only scorer). Exact answers are
//! checked. Prints the AUC of each signal for predicting a correct local answer, and, at the
//! default threshold, the local accuracy on answers kept vs escalated. Not a test.
//!
//! `eval-cascade [--items 240] [--threshold -0.5]`

use std::time::Duration;

use serde_json::{json, Value};
use switchyard_e2e::{config_with_local, FakeProvider, Gateway};

struct Outcome {
    correct: bool,
    confidence: f64,
    complexity: f64,
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `(question, answer)` pairs.
fn items(n: usize) -> Vec<(String, i64)> {
    let mut state = 2026;
    (0..n)
        .map(|i| {
            let digits = |s: &mut u64, d: u32| i64::try_from(xorshift(s) % 10u64.pow(d)).unwrap_or(0);
            let d = u32::try_from(i % 3).unwrap_or(0) + 1;
            let (a, b) = (digits(&mut state, d), digits(&mut state, d));
            match i % 3 {
                0 => (format!("What is {a} + {b}? Answer with the number only."), a + b),
                1 => (format!("What is {a} - {b}? Answer with the number only."), a - b),
                _ => (format!("What is {a} times {b}? Answer with the number only."), a * b),
            }
        })
        .collect()
}

/// The last integer in `text` (a minus sign right before it included): the model tends to
/// restate the question ("7 + 5 = 12.").
fn last_integer(text: &str) -> Option<i64> {
    let cleaned: String = text.replace(',', "");
    let end = cleaned.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = cleaned[..end].rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
    let negative = cleaned[..start].ends_with('-') && !cleaned[..start].trim_end_matches('-').ends_with(|c: char| c.is_ascii_digit());
    cleaned[start..end].parse::<i64>().ok().map(|v| if negative { -v } else { v })
}

/// AUC of `score` for predicting `positive` (ties count half).
#[allow(clippy::cast_precision_loss)]
fn auc(outcomes: &[Outcome], score: impl Fn(&Outcome) -> f64) -> f64 {
    let pos: Vec<f64> = outcomes.iter().filter(|o| o.correct).map(&score).collect();
    let neg: Vec<f64> = outcomes.iter().filter(|o| !o.correct).map(&score).collect();
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p > n { 1.0 } else if (p - n).abs() < f64::EPSILON { 0.5 } else { 0.0 };
        }
    }
    wins / (pos.len() * neg.len()).max(1) as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let arg = |flag: &str| std::env::args().skip_while(|a| a != flag).nth(1);
    let n: usize = arg("--items").map_or(240, |v| v.parse().expect("--items N"));
    let threshold: f64 = arg("--threshold").map_or(-0.5, |v| v.parse().expect("--threshold X"));
    let fake = FakeProvider::start();
    // Keep every local answer (threshold far below any mean log-probability) to see them all.
    let policy = "[classifier]\ncascade_min_logprob = -1000.0\n\n[[rule]]\nname = \"cascade\"\nroute = \"fake/echo\"\nstrategy = \"cascade\"\n";
    let gateway = Gateway::start(&config_with_local(4, 4096, &fake.provider_section(None)), policy).await;
    let client = reqwest::Client::new();
    let mut outcomes = Vec::new();
    for chunk in items(n).chunks(4) {
        let calls = chunk.iter().map(|(q, expected)| {
            let client = client.clone();
            let url = format!("{}/chat/completions", gateway.v1());
            async move {
                let body = json!({"model": "auto", "temperature": 0, "max_tokens": 16, "messages": [{"role": "user", "content": q}]});
                let r = client.post(url).json(&body).timeout(Duration::from_mins(2)).send().await.expect("answer");
                let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<f64>().ok());
                let (confidence, complexity) = (header("x-switchyard-local-confidence"), header("x-switchyard-complexity"));
                let body: Value = r.json().await.expect("JSON");
                let text = body["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
                Outcome {
                    correct: last_integer(&text) == Some(*expected),
                    confidence: confidence.expect("a cascade answer carries its confidence"),
                    complexity: complexity.unwrap_or(0.0),
                }
            }
        });
        outcomes.extend(futures::future::join_all(calls).await);
    }
    let correct = outcomes.iter().filter(|o| o.correct).count();
    let kept: Vec<&Outcome> = outcomes.iter().filter(|o| o.confidence >= threshold).collect();
    let escalated: Vec<&Outcome> = outcomes.iter().filter(|o| o.confidence < threshold).collect();
    #[allow(clippy::cast_precision_loss)]
    let accuracy = |set: &[&Outcome]| {
        if set.is_empty() {
            f64::NAN
        } else {
            set.iter().filter(|o| o.correct).count() as f64 / set.len() as f64 * 100.0
        }
    };
    println!("{n} arithmetic items (+, -, x of 1-3 digit numbers), SmolLM2-135M-Instruct Q4_1 greedy; {correct} answered correctly");
    println!("| signal for \"the local answer is correct\" | ROC AUC |");
    println!("|---|---:|");
    println!("| mean token log-probability of the answer (cascade) | {:.3} |", auc(&outcomes, |o| o.confidence));
    println!("| prompt-only complexity (lower = easier) | {:.3} |", auc(&outcomes, |o| -o.complexity));
    println!();
    println!("| at cascade_min_logprob = {threshold} | answers | local accuracy |");
    println!("|---|---:|---:|");
    let all: Vec<&Outcome> = outcomes.iter().collect();
    println!("| all | {} | {:.1} % |", all.len(), accuracy(&all));
    println!("| kept local | {} | {:.1} % |", kept.len(), accuracy(&kept));
    println!("| escalated | {} | {:.1} % |", escalated.len(), accuracy(&escalated));
}
