//! `switchyard calibrate`: picks `[classifier] complexity_threshold` from the user's own traffic.
//! Either for a target remote share (`--prompts F --remote-share X`: the router scores each
//! prompt) or for a target quality (`--from-shadow F --target-quality Q`: shadow comparisons say
//! where the local answer was as good as the remote one).

use std::fmt::Write as _;

use crate::shadow::{ShadowRecord, Vote};

/// A threshold and the split it gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// `complexity_threshold`: scores at or above it are hard (remote).
    pub threshold: f64,
    /// Prompts scored at or above the threshold.
    pub remote: usize,
    /// All prompts.
    pub total: usize,
    /// Share of answers as good as the remote model's (quality calibration only).
    pub quality: Option<f64>,
}

impl Split {
    /// Share sent to the remote tier.
    #[allow(clippy::cast_precision_loss)]
    pub fn remote_share(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.remote as f64 / self.total as f64
        }
    }
}

/// Candidate thresholds: every distinct score (a threshold at a score sends it remote), and 1.0
/// with nothing above it; the thresholds the policy accepts lie in [0, 1].
fn candidates(scores: &[f64]) -> Vec<f64> {
    let mut c: Vec<f64> = scores.iter().map(|s| s.clamp(0.0, 1.0)).collect();
    c.push(0.0);
    c.push(1.0);
    c.sort_by(f64::total_cmp);
    c.dedup();
    c
}

/// Scores sorted ascending, so that counting those at or above a threshold is a binary search
/// (calibration tries every distinct score as a threshold).
struct Sorted(Vec<f64>);

impl Sorted {
    fn new(scores: impl Iterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = scores.collect();
        v.sort_by(f64::total_cmp);
        Self(v)
    }

    /// Scores at or above `threshold`.
    fn at_or_above(&self, threshold: f64) -> usize {
        self.0.len() - self.0.partition_point(|s| *s < threshold)
    }
}

/// The threshold whose remote share is closest to `share` (ties: the higher threshold, which
/// sends less to the paid tier).
pub fn for_remote_share(scores: &[f64], share: f64) -> Split {
    let total = scores.len();
    let sorted = Sorted::new(scores.iter().copied());
    #[allow(clippy::cast_precision_loss)]
    let gap = |t: f64| (sorted.at_or_above(t) as f64 / total.max(1) as f64 - share).abs();
    let best = candidates(scores).into_iter().rev().min_by(|a, b| gap(*a).total_cmp(&gap(*b))).unwrap_or(1.0);
    Split { threshold: best, remote: sorted.at_or_above(best), total, quality: None }
}

/// A warning when `split` misses the asked remote `share` by more than 5 points, saying why:
/// prompts scoring 1.0 (every threshold sends them remote), many prompts sharing one score (a
/// threshold sends all of them or none), or too few prompts for a finer split. `None` when the
/// split is close enough.
pub fn split_warning(split: &Split, scores: &[f64], share: f64) -> Option<String> {
    if (split.remote_share() - share).abs() <= 0.05 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let percent = |n: usize| n as f64 * 100.0 / split.total.max(1) as f64;
    let nearest = format!("so the nearest split to {:.1} % remote is {:.1} %", share * 100.0, split.remote_share() * 100.0);
    let sorted = Sorted::new(scores.iter().map(|s| s.clamp(0.0, 1.0)));
    let at_top = sorted.at_or_above(1.0);
    if at_top > 0 && split.remote_share() > share && split.remote == at_top {
        return Some(format!(
            "warning: {at_top} of {} prompts ({:.1} %) score 1.0, the highest, and every threshold sends them remote, {nearest}",
            split.total,
            percent(at_top)
        ));
    }
    let (score, count) = sorted.0.chunk_by(|a, b| a.total_cmp(b).is_eq()).map(|run| (run[0], run.len())).max_by_key(|run| run.1)?;
    Some(if count > 1 {
        format!(
            "warning: {count} of {} prompts ({:.1} %) score {score:.4}, and a threshold sends all of them remote or none, \
             {nearest}; the scorer cannot tell these prompts apart (a learned \
             scorer trained on your own labels, `switchyard train-router`, may)",
            split.total,
            percent(count)
        )
    } else {
        format!("warning: with {} prompts each one is {:.1} % of the sample, {nearest}; a larger sample gives a finer split", split.total, percent(1))
    })
}

/// The highest threshold (the most traffic kept local) whose expected quality reaches
/// `target`: quality is the share of requests whose answer is as good as the remote model's,
/// counting every remote answer as good and a local one as good when the shadow verdict was a
/// local win or a tie. `samples` are (complexity, local answer as good).
pub fn for_quality(samples: &[(f64, bool)], target: f64) -> Split {
    let total = samples.len();
    let scores: Vec<f64> = samples.iter().map(|s| s.0).collect();
    let all = Sorted::new(scores.iter().copied());
    // Good answers: every local one judged as good, plus the worse ones sent remote.
    let good_local = samples.iter().filter(|s| s.1).count();
    let worse_local = Sorted::new(samples.iter().filter(|s| !s.1).map(|s| s.0));
    #[allow(clippy::cast_precision_loss)]
    let quality = |t: f64| (good_local + worse_local.at_or_above(t)) as f64 / total.max(1) as f64;
    let best = candidates(&scores).into_iter().rev().find(|t| quality(*t) >= target).unwrap_or(0.0);
    Split { threshold: best, remote: all.at_or_above(best), total, quality: Some(quality(best)) }
}

/// The shadow store's lines as (complexity, local answer as good), each conversation scored by
/// `score(text, turns)`: the threshold is for the scorer configured now, which need not be the
/// one whose score the record kept (a model trained since, another `baseline_weight`).
/// Unreadable lines are counted.
pub fn shadow_samples(text: &str, score: impl Fn(&str, usize) -> f64) -> (Vec<(f64, bool)>, usize) {
    let mut samples = Vec::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<ShadowRecord>(line) {
            Ok(r) => samples.push((score(&r.prompt, r.turns), r.verdict != Vote::Remote)),
            Err(_) => bad += 1,
        }
    }
    (samples, bad)
}

/// The complexity `router` gives a conversation known by its text and number of messages, as the
/// live router scores it (the shadow store keeps no more: its requests carry no tools).
pub fn conversation_complexity(router: &router::Router, text: &str, turns: usize) -> f64 {
    let input = router::RouteInput {
        requested_model: crate::catalog::AUTO,
        tenant: crate::tenants::DEFAULT_TENANT,
        text,
        turns,
        prompt_tokens: crate::dispatch::routing_tokens(text),
        ..router::RouteInput::default()
    };
    router.decide(&input).complexity
}

/// The threshold as few decimals as keep the split it reports: pasted into the policy, it sends
/// exactly `split.remote` of `scores` remote (a rounded 0.6594 could take in a prompt scored
/// 0.65941 below the real threshold, or leave out one scored at it).
fn printed_threshold(split: &Split, scores: &[f64]) -> String {
    let remote_at = |t: f64| scores.iter().filter(|&&s| s >= t).count();
    for decimals in 2..=17 {
        let scale = 10f64.powi(decimals);
        for rounded in [(split.threshold * scale).round(), (split.threshold * scale).floor()] {
            let text = format!("{:.*}", usize::try_from(decimals).unwrap_or(17), rounded / scale);
            if text.parse::<f64>().is_ok_and(|t| remote_at(t) == split.remote) {
                return text;
            }
        }
    }
    split.threshold.to_string()
}

/// The split as printed: the threshold line first (the value to paste into the policy).
pub fn report(split: &Split, scores: &[f64]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "complexity_threshold = {}", printed_threshold(split, scores));
    let _ = writeln!(
        out,
        "remote: {} of {} prompts ({:.1} %), local: {} ({:.1} %)",
        split.remote,
        split.total,
        split.remote_share() * 100.0,
        split.total - split.remote,
        (1.0 - split.remote_share()) * 100.0
    );
    if let Some(q) = split.quality {
        let _ = writeln!(out, "expected share of answers as good as the remote model's: {:.1} %", q * 100.0);
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    if let (Some(lo), Some(hi)) = (sorted.first(), sorted.last()) {
        let mid = sorted[sorted.len() / 2];
        let _ = writeln!(out, "scores: min {lo:.4}, median {mid:.4}, max {hi:.4}");
    }
    out
}

#[cfg(test)]
#[allow(clippy::float_cmp, clippy::cast_precision_loss)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_threshold_gives_the_split_it_reports() {
        // Two prompts a hair apart around the fourth decimal, and one tiny score.
        let scores = [0.1, 0.659_41, 0.659_43, 0.9, 0.000_199_999_999_999_999_98];
        for share in [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] {
            let split = for_remote_share(&scores, share);
            let printed: f64 = printed_threshold(&split, &scores).parse().unwrap();
            assert_eq!(scores.iter().filter(|&&s| s >= printed).count(), split.remote, "share {share}: {printed}");
        }
        let split = for_remote_share(&[0.7, 0.2], 0.5);
        assert_eq!(printed_threshold(&split, &[0.7, 0.2]), "0.70", "short when that keeps the split");
    }

    #[test]
    fn remote_share_picks_the_quantile() {
        let scores: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0).collect();
        let split = for_remote_share(&scores, 0.2);
        assert_eq!(split.remote, 20);
        assert!((split.threshold - 0.8).abs() < 1e-9, "{split:?}");
        assert_eq!(for_remote_share(&scores, 0.0).remote, 0);
        assert_eq!(for_remote_share(&scores, 1.0).remote, 100);
    }

    #[test]
    fn ties_move_together() {
        let scores = [0.1, 0.5, 0.5, 0.5, 0.9];
        let split = for_remote_share(&scores, 0.4);
        // 0.9 alone is 20 %, 0.5 and up is 80 %: 20 % is as close as 60 %… the nearer one wins.
        assert_eq!(split.remote, 1);
        assert!(split.total == 5);
    }

    #[test]
    fn a_share_that_ties_make_unreachable_is_warned_about() {
        let mut scores = vec![0.02; 9];
        scores.push(0.6);
        let split = for_remote_share(&scores, 0.5);
        assert_eq!(split.remote, 1, "{split:?}");
        let warning = split_warning(&split, &scores, 0.5).expect("a warning");
        assert!(warning.contains("9 of 10 prompts (90.0 %) score 0.0200") && warning.contains("10.0 %"), "{warning}");
        // Close enough: no warning.
        assert!(split_warning(&split, &scores, 0.1).is_none());
        let distinct: Vec<f64> = (0..10).map(|i| f64::from(i) / 10.0).collect();
        assert!(split_warning(&for_remote_share(&distinct, 0.33), &distinct, 0.33).is_none());
        // Nothing tied: too few prompts for the share asked.
        let spread = [0.1, 0.2, 0.3, 0.9];
        let warning = split_warning(&for_remote_share(&spread, 0.9), &spread, 0.9).expect("a warning");
        assert!(warning.contains("with 4 prompts each one is 25.0 %"), "{warning}");
    }

    #[test]
    fn prompts_scoring_the_highest_score_are_always_remote_and_said_to_be() {
        let scores = [1.0, 0.01];
        let split = for_remote_share(&scores, 0.0);
        assert_eq!((split.remote, split.threshold), (1, 1.0));
        let warning = split_warning(&split, &scores, 0.0).expect("a warning");
        assert!(warning.contains("1 of 2 prompts (50.0 %) score 1.0, the highest") && warning.contains("nearest split to 0.0 % remote is 50.0 %"), "{warning}");
    }

    #[test]
    fn quality_keeps_locally_what_the_local_model_answers_well() {
        // Easy prompts the local model answers well, hard ones it does not.
        let mut samples: Vec<(f64, bool)> = (0..80).map(|i| (f64::from(i) / 200.0, true)).collect();
        samples.extend((0..20).map(|i| (0.6 + f64::from(i) / 100.0, false)));
        let split = for_quality(&samples, 1.0);
        assert_eq!(split.remote, 20, "{split:?}");
        assert_eq!(split.quality, Some(1.0));
        // Accepting 90 % quality keeps half of the bad ones local too.
        let relaxed = for_quality(&samples, 0.9);
        assert_eq!(relaxed.remote, 10, "{relaxed:?}");
        assert!(relaxed.threshold > split.threshold);
    }

    #[test]
    fn reads_shadow_lines_and_counts_bad_ones() {
        let line = r#"{"ts":1,"request_id":"r","tenant":"t","prompt":"p","complexity":0.3,"complexity_bucket":"0.2-0.4","local_target":"local/x","remote_target":"a/b","judge":"a/b","local_answer":"x","remote_answer":"y","votes":["tie","remote"],"verdict":"remote","weak_score":0.25,"strong_score":0.75,"cost_usd":0.0}"#;
        let with_turns = line.replace(r#""prompt":"p","#, r#""prompt":"p","turns":6,"#).replace("remote\"", "tie\"");
        // Scored again, not read back: the stored 0.3 came from whatever scorer served it.
        let score = |text: &str, turns: usize| match (text, turns) {
            ("p", 1) => 0.1,
            ("p", 6) => 0.6,
            _ => -1.0,
        };
        let (samples, bad) = shadow_samples(&format!("{line}\nnot json\n\n{with_turns}\n"), score);
        // A record written before turns were kept counts as one message.
        assert_eq!(samples, vec![(0.1, false), (0.6, true)]);
        assert_eq!(bad, 1);
    }
}
