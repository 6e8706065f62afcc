//! Routing quality of the complexity scorers on `RouteLLM`'s data (`../shared/datasets/routellm`):
//! per-prompt outcomes of GPT-4-1106 (strong) and Mixtral-8x7B (weak) on MMLU (correctness) and
//! MT Bench (judge scores 1–10, both turns averaged), prompts in `contaminated_prompts.jsonl`
//! left out. Prints APGR, CPT(50 %), CPT(80 %) and ROC AUC as in the paper (arXiv 2406.18665):
//! prompts are sent to the strong model in the scorer's order, hardest first; the quality curve
//! as the strong share goes 0 → 100 % is normalised between weak and strong.
//!
//! Protocols: MMLU 5-fold cross-validation split by question; MMLU split by subject (5 folds of
//! subjects: tested on subjects never trained on); MT Bench scored by a model trained on all of
//! MMLU (it never saw MT Bench). One fixed recipe (`TrainOptions::default()`, label = the strong
//! model right where the weak one is wrong) for every protocol. Baselines: random order (mean of
//! 100 shuffles), prompt length alone, the transparent baseline scorer (also on MMLU questions
//! that all follow one long few-shot prefix, as few-shot benchmarks' prompts do). Also the learned
//! scorer mixed with the baseline (`[classifier] baseline_weight = w`: each score first mapped to
//! its percentile among the training prompts', then `w` × baseline percentile + (1 − `w`) ×
//! learned percentile).
//!
//! `eval-router [--data DIR] [--write-model FILE]` — `--write-model` also trains the shipped
//! model on all of MMLU and writes it (the command `make router-model` runs).

#![allow(clippy::cast_precision_loss)] // counts of prompts, far below 2^52

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use router::learned::{train, Example, LearnedScorer, TrainOptions};
use router::{score_bare_prompt, BaselineScorer};

/// One routing decision's outcomes.
#[derive(Debug, Clone)]
struct Item {
    text: String,
    group: String,
    weak: f64,
    strong: f64,
}

fn contaminated(path: &Path) -> HashSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["eval_prompt"].as_str().map(|s| s.trim().to_owned()))
        .collect()
}

fn mmlu(dir: &Path) -> Vec<Item> {
    let skip = contaminated(&dir.join("mmlu/contaminated_prompts.jsonl"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("mmlu/responses"))
        .expect("mmlu/responses")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut items = Vec::new();
    for file in files {
        let subject = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().trim_start_matches("mmlu_").to_owned();
        let mut reader = csv::Reader::from_path(&file).expect("csv");
        for row in reader.records() {
            let row = row.expect("csv row");
            let text = row[0].to_owned();
            if skip.contains(text.trim()) {
                continue;
            }
            let truth = |s: &str| if s == "True" { 1.0 } else { 0.0 };
            items.push(Item { text, group: subject.clone(), weak: truth(&row[1]), strong: truth(&row[2]) });
        }
    }
    items
}

fn mt_bench(dir: &Path) -> Vec<Item> {
    let skip = contaminated(&dir.join("mt_bench/contaminated_prompts.jsonl"));
    let read = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("mt_bench").join(name))
            .expect("mt_bench file")
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let mut scores: BTreeMap<(u64, bool), Vec<f64>> = BTreeMap::new();
    for j in read("judgements.jsonl") {
        let strong = j["model"].as_str().is_some_and(|m| m.starts_with("gpt-4"));
        if let (Some(q), Some(score)) = (j["question_id"].as_u64(), j["score"].as_f64()) {
            scores.entry((q, strong)).or_default().push(score);
        }
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    read("question.jsonl")
        .into_iter()
        .filter_map(|q| {
            let id = q["question_id"].as_u64()?;
            let text = q["turns"][0].as_str()?.to_owned();
            if skip.contains(text.trim()) {
                return None;
            }
            Some(Item {
                text,
                group: q["category"].as_str().unwrap_or_default().to_owned(),
                weak: mean(scores.get(&(id, false))?),
                strong: mean(scores.get(&(id, true))?),
            })
        })
        .collect()
}

/// The training label: the strong model does clearly better.
fn examples(items: &[&Item]) -> Vec<Example> {
    items.iter().map(|i| Example { text: i.text.clone(), target: if i.strong > i.weak { 1.0 } else { 0.0 }, weight: 1.0 }).collect()
}

#[derive(Debug, Clone, Copy)]
struct Metrics {
    apgr: f64,
    cpt50: f64,
    cpt80: f64,
    auc: f64,
}

/// Paper metrics for `scores` (higher = send to strong first) over `items`.
fn metrics(items: &[Item], scores: &[f64]) -> Metrics {
    let n = items.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let weak_total: f64 = items.iter().map(|i| i.weak).sum();
    let strong_total: f64 = items.iter().map(|i| i.strong).sum();
    let gap = strong_total - weak_total;
    let mut quality = weak_total;
    let mut pgr = vec![0.0];
    for &i in &order {
        quality += items[i].strong - items[i].weak;
        pgr.push((quality - weak_total) / gap);
    }
    // Trapezoid over the strong share 0..1.
    let apgr = pgr.windows(2).map(|w| f64::midpoint(w[0], w[1])).sum::<f64>() / n as f64;
    let cpt = |target: f64| pgr.iter().position(|p| *p >= target).map_or(1.0, |k| k as f64 / n as f64);
    // AUC: strong better (positive) vs not, ties in score count half.
    let (mut pos, mut neg): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    for (i, item) in items.iter().enumerate() {
        if item.strong > item.weak {
            pos.push(scores[i]);
        } else {
            neg.push(scores[i]);
        }
    }
    neg.sort_by(f64::total_cmp);
    let mut wins = 0.0;
    for p in &pos {
        let below = neg.partition_point(|x| x < p);
        let equal = neg[below..].partition_point(|x| x <= p);
        wins += below as f64 + equal as f64 / 2.0;
    }
    let auc = wins / (pos.len() * neg.len()).max(1) as f64;
    Metrics { apgr, cpt50: cpt(0.5), cpt80: cpt(0.8), auc }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn random_baseline(items: &[Item]) -> Metrics {
    let mut state = 42;
    let runs: Vec<Metrics> = (0..100)
        .map(|_| {
            let scores: Vec<f64> = items.iter().map(|_| (xorshift(&mut state) >> 11) as f64).collect();
            metrics(items, &scores)
        })
        .collect();
    let avg = |f: fn(&Metrics) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
    Metrics { apgr: avg(|m| m.apgr), cpt50: avg(|m| m.cpt50), cpt80: avg(|m| m.cpt80), auc: avg(|m| m.auc) }
}

fn length_scores(items: &[Item]) -> Vec<f64> {
    items.iter().map(|i| i.text.chars().count() as f64).collect()
}

fn baseline_scores(items: &[Item]) -> Vec<f64> {
    items.iter().map(|i| score_bare_prompt(&BaselineScorer, &i.text).score).collect()
}

/// Baseline weights (`[classifier] baseline_weight`) reported beside the learned scorer.
const MIX_WEIGHTS: [f64; 2] = [0.25, 0.5];

/// `model`'s scores of `texts`: alone, then mixed with the baseline at each of `MIX_WEIGHTS`.
fn learned_and_mixed(model: &LearnedScorer, texts: &[&str]) -> Vec<Vec<f64>> {
    let mut out = vec![texts.iter().map(|t| f64::from(model.raw(t))).collect()];
    for w in MIX_WEIGHTS {
        let mixed = model.clone().with_baseline_weight(w).expect("a trained model records its quantiles");
        out.push(texts.iter().map(|t| score_bare_prompt(&mixed, t).score).collect());
    }
    out
}

/// Held-out scores: `fold_of(i)` assigns each item to one of `folds`; each fold is scored by a
/// model trained on the others, alone and mixed with the baseline (one list per weight in
/// `MIX_WEIGHTS`, percentiles among the training folds').
fn cross_validated(items: &[Item], folds: usize, fold_of: &dyn Fn(usize) -> usize) -> Vec<Vec<f64>> {
    let mut scores = vec![vec![0.0; items.len()]; MIX_WEIGHTS.len() + 1];
    for f in 0..folds {
        let (train_idx, test_idx): (Vec<usize>, Vec<usize>) = (0..items.len()).partition(|&i| fold_of(i) != f);
        let train_set: Vec<&Item> = train_idx.iter().map(|&i| &items[i]).collect();
        let model = train(&examples(&train_set), TrainOptions::default(), "cv");
        let test_scores = learned_and_mixed(&model, &test_idx.iter().map(|&i| items[i].text.as_str()).collect::<Vec<_>>());
        for (all, fold) in scores.iter_mut().zip(&test_scores) {
            for (k, &i) in test_idx.iter().enumerate() {
                all[i] = fold[k];
            }
        }
    }
    scores
}

/// The learned scorer's row and the mixed scores' rows of one protocol.
fn learned_rows(protocol: &str, items: &[Item], scores: &[Vec<f64>]) {
    row(protocol, "learned", &metrics(items, &scores[0]));
    for (w, mix) in MIX_WEIGHTS.iter().zip(&scores[1..]) {
        row(protocol, &format!("learned, baseline_weight = {w}"), &metrics(items, mix));
    }
}

fn row(protocol: &str, scorer: &str, m: &Metrics) {
    println!(
        "| {protocol} | {scorer} | {:.3} | {:.1} % | {:.1} % | {:.3} |",
        m.apgr,
        m.cpt50 * 100.0,
        m.cpt80 * 100.0,
        m.auc
    );
}

fn main() {
    let arg = |flag: &str| std::env::args().skip_while(|a| a != flag).nth(1);
    let root = switchyard_e2e::workspace_root();
    let dir = arg("--data").map_or_else(|| root.join("../shared/datasets/routellm"), PathBuf::from);
    let mmlu = mmlu(&dir);
    let mt = mt_bench(&dir);
    let subjects: Vec<String> = {
        let mut s: Vec<String> = mmlu.iter().map(|i| i.group.clone()).collect();
        s.sort();
        s.dedup();
        s
    };
    println!(
        "RouteLLM data: MMLU {} prompts in {} subjects, MT Bench {} questions (contaminated prompts left out)",
        mmlu.len(),
        subjects.len(),
        mt.len()
    );
    println!("| protocol | scorer | APGR | CPT(50%) | CPT(80%) | AUC |");
    println!("|---|---|---:|---:|---:|---:|");
    for (name, items) in [("MMLU", &mmlu), ("MT Bench", &mt)] {
        row(name, "random (mean of 100)", &random_baseline(items));
        row(name, "prompt length", &metrics(items, &length_scores(items)));
        row(name, "baseline scorer", &metrics(items, &baseline_scores(items)));
    }
    // Few-shot prompts share a long prefix (RouteLLM's GSM8K answers were written 8-shot): the score must
    // still rank them by what differs. The first 40 MMLU questions, each answered "A", precede
    // every other one (about 3,000 tokens in all).
    let prefix: String = mmlu[..40].iter().flat_map(|i| [i.text.as_str(), " A\n\n"]).collect();
    let few_shot: Vec<Item> = mmlu[40..].iter().map(|i| Item { text: format!("{prefix}{}", i.text), ..i.clone() }).collect();
    row("MMLU after a shared 40-question prefix", "prompt length", &metrics(&few_shot, &length_scores(&few_shot)));
    row("MMLU after a shared 40-question prefix", "baseline scorer", &metrics(&few_shot, &baseline_scores(&few_shot)));
    // By question: a fixed shuffle into 5 folds.
    let mut state = 7;
    let by_question: Vec<usize> = mmlu.iter().map(|_| usize::try_from(xorshift(&mut state) % 5).unwrap_or(0)).collect();
    learned_rows("MMLU, 5-fold by question", &mmlu, &cross_validated(&mmlu, 5, &|i| by_question[i]));
    // By subject: subjects dealt into 5 folds in name order.
    let fold_of_subject: BTreeMap<&str, usize> = subjects.iter().enumerate().map(|(k, s)| (s.as_str(), k % 5)).collect();
    learned_rows("MMLU, 5-fold by unseen subject", &mmlu, &cross_validated(&mmlu, 5, &|i| fold_of_subject[mmlu[i].group.as_str()]));
    let all: Vec<&Item> = mmlu.iter().collect();
    let model = train(&examples(&all), TrainOptions::default(), "RouteLLM MMLU (GPT-4-1106 vs Mixtral-8x7B), contaminated prompts left out");
    learned_rows("MT Bench (trained on MMLU only)", &mt, &learned_and_mixed(&model, &mt.iter().map(|i| i.text.as_str()).collect::<Vec<_>>()));
    if let Some(out) = arg("--write-model") {
        std::fs::write(&out, model.to_json()).expect("writing the model");
        let reloaded = LearnedScorer::from_json(&std::fs::read_to_string(&out).expect("reading it back")).expect("valid model");
        println!("wrote {out}: {} nonzero word weights", reloaded.sparse.len());
    }
}
