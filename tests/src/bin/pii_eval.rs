//! `pii-eval CORPUS.jsonl…`: runs the router's PII scanner over corpora written by
//! `tests/pii/generate_corpus.py` and prints recall, precision and throughput (the same span-level,
//! kind-agnostic metrics as `tests/pii/presidio_eval.py`), recall per kind and false positives
//! per hard-negative kind. `--errors N` prints up to N misses and false positives (values shown:
//! the corpus is synthetic). `--min-recall R --min-precision P` make it exit 1 below a target.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context as _;
use serde::Deserialize;

#[derive(Deserialize)]
struct Record {
    id: u64,
    locale: String,
    text: String,
    spans: Vec<Span>,
    #[serde(default)]
    negatives: Vec<Span>,
}

#[derive(Deserialize, Clone)]
struct Span {
    start: usize,
    end: usize,
    kind: String,
}

#[derive(Default)]
struct Tally {
    texts: usize,
    truth: usize,
    found_truth: usize,
    detections: usize,
    true_detections: usize,
    per_kind: BTreeMap<String, (usize, usize)>,
    fp_by_negative: BTreeMap<String, usize>,
    seconds: f64,
}

/// Byte offsets → code-point offsets (the corpus counts code points, as Python does).
fn char_index(text: &str, byte: usize) -> usize {
    text[..byte].chars().count()
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn evaluate(records: &[Record], errors: &mut usize) -> Tally {
    let scanner = router::pii_scanner();
    let mut t = Tally { texts: records.len(), ..Tally::default() };
    // Throughput: the best of three timed passes over all texts, single thread.
    t.seconds = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        for r in records {
            std::hint::black_box(scanner.scan(std::hint::black_box(&r.text)));
        }
        t.seconds = t.seconds.min(started.elapsed().as_secs_f64());
    }
    for r in records {
        let found: Vec<(usize, usize, &'static str)> = scanner
            .scan(&r.text)
            .into_iter()
            .map(|s| (char_index(&r.text, s.start), char_index(&r.text, s.end), s.kind.as_str()))
            .collect();
        t.truth += r.spans.len();
        t.detections += found.len();
        for truth in &r.spans {
            let hit = found.iter().any(|f| overlaps((f.0, f.1), (truth.start, truth.end)));
            let entry = t.per_kind.entry(truth.kind.clone()).or_default();
            entry.0 += 1;
            if hit {
                entry.1 += 1;
                t.found_truth += 1;
            } else if *errors > 0 {
                *errors -= 1;
                let value: String = r.text.chars().skip(truth.start).take(truth.end - truth.start).collect();
                println!("MISS  #{} {} {}: {value:?}", r.id, r.locale, truth.kind);
            }
        }
        for f in &found {
            if r.spans.iter().any(|s| overlaps((f.0, f.1), (s.start, s.end))) {
                t.true_detections += 1;
            } else {
                let negative = r.negatives.iter().find(|n| overlaps((f.0, f.1), (n.start, n.end)));
                let label = negative.map_or_else(|| "(other text)".to_owned(), |n| n.kind.clone());
                *t.fp_by_negative.entry(label).or_default() += 1;
                if *errors > 0 {
                    *errors -= 1;
                    let value: String = r.text.chars().skip(f.0).take(f.1 - f.0).collect();
                    println!("FALSE #{} {} {} on {value:?}", r.id, r.locale, f.2);
                }
            }
        }
    }
    t
}

#[allow(clippy::cast_precision_loss)]
fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

fn main() -> anyhow::Result<()> {
    let mut paths = Vec::new();
    let mut errors = 0;
    let (mut min_recall, mut min_precision) = (0.0, 0.0);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--errors" => errors = args.next().context("--errors N")?.parse()?,
            "--min-recall" => min_recall = args.next().context("--min-recall R")?.parse()?,
            "--min-precision" => min_precision = args.next().context("--min-precision P")?.parse()?,
            _ => paths.push(arg),
        }
    }
    anyhow::ensure!(!paths.is_empty(), "usage: pii-eval [--errors N] [--min-recall R] [--min-precision P] CORPUS.jsonl…");
    let mut ok = true;
    println!("| scanner | corpus | texts | spans | recall | precision | texts/s | µs/text |\n|---|---|---:|---:|---:|---:|---:|---:|");
    let mut tallies = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let records: Vec<Record> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {path}"))?;
        let t = evaluate(&records, &mut errors);
        let recall = ratio(t.found_truth, t.truth);
        let precision = ratio(t.true_detections, t.detections);
        ok &= recall >= min_recall && precision >= min_precision;
        #[allow(clippy::cast_precision_loss)]
        let per_text_us = t.seconds * 1e6 / t.texts as f64;
        println!(
            "| switchyard | {path} | {} | {} | {recall:.4} | {precision:.4} | {:.0} | {per_text_us:.1} |",
            t.texts,
            t.truth,
            1e6 / per_text_us
        );
        tallies.push((path.clone(), t));
    }
    println!("\n| kind | {} |\n|---|{}", paths.join(" | "), "---:|".repeat(paths.len()));
    let kinds: std::collections::BTreeSet<&String> = tallies.iter().flat_map(|(_, t)| t.per_kind.keys()).collect();
    for kind in kinds {
        let cells: Vec<String> = tallies
            .iter()
            .map(|(_, t)| t.per_kind.get(kind).map_or("-".to_owned(), |(n, hit)| format!("{:.4} ({hit}/{n})", ratio(*hit, *n))))
            .collect();
        println!("| {kind} | {} |", cells.join(" | "));
    }
    println!("\nfalse positives by what they hit:");
    for (path, t) in &tallies {
        println!("  {path}: {:?}", t.fp_by_negative);
    }
    if !ok {
        anyhow::bail!("below target: recall >= {min_recall}, precision >= {min_precision}");
    }
    Ok(())
}
