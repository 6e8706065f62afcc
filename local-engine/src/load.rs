//! What the engine's current load means for a new request: measured step times plus the live
//! queue give a predicted time to first token and per-stream decode rate, before the request is
//! admitted. The gateway compares them with the local tier's latency targets (spillover).

/// Weight of the newest sample in the moving averages: recent enough to follow a change of load
/// within a few dozen steps, smooth enough that one slow step does not swing the prediction.
const EWMA_ALPHA: f64 = 0.1;

/// Measured costs, updated by the engine thread after each decode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    /// Moving average of a decode-only step's wall time in µs, by batch size (index = size − 1);
    /// 0 where no step of that size was seen yet.
    step_us: Vec<f64>,
    /// Moving average of the wall time one prompt token adds to a step, µs.
    prefill_us_per_token: f64,
    /// Moving averages of finished requests' prompt and completion tokens.
    mean_prompt_tokens: f64,
    mean_completion_tokens: f64,
    /// Estimated completion tokens each running sequence has left, as of the last step.
    remaining: Vec<f64>,
}

fn ewma(old: f64, sample: f64) -> f64 {
    if old == 0.0 {
        sample
    } else {
        old + EWMA_ALPHA * (sample - old)
    }
}

impl Timings {
    /// Records a step that decoded `decoding` generated tokens and `prompt_tokens` prompt tokens.
    pub fn record_step(&mut self, decoding: usize, prompt_tokens: usize, micros: f64) {
        if prompt_tokens == 0 {
            if decoding == 0 {
                return;
            }
            if self.step_us.len() < decoding {
                self.step_us.resize(decoding, 0.0);
            }
            self.step_us[decoding - 1] = ewma(self.step_us[decoding - 1], micros);
            return;
        }
        // The prompt tokens' share: what the step took beyond its generated tokens' usual cost.
        #[allow(clippy::cast_precision_loss)]
        let per_token = ((micros - self.step_us(decoding)).max(0.0)) / prompt_tokens as f64;
        self.prefill_us_per_token = ewma(self.prefill_us_per_token, per_token);
    }

    /// Records a finished request's sizes.
    pub fn record_finished(&mut self, prompt_tokens: u32, completion_tokens: u32) {
        self.mean_prompt_tokens = ewma(self.mean_prompt_tokens, f64::from(prompt_tokens));
        self.mean_completion_tokens = ewma(self.mean_completion_tokens, f64::from(completion_tokens.max(1)));
    }

    /// Records what the running sequences have left: for each, the completion tokens it
    /// generated and its cap. A sequence is expected to run to the mean completion length (at
    /// least a quarter of it more, once past the mean), never past its cap.
    pub fn record_running(&mut self, sequences: impl Iterator<Item = (u32, u32)>) {
        let mean = self.mean_completion_tokens;
        self.remaining.clear();
        self.remaining.extend(sequences.map(|(done, cap)| {
            let left = f64::from(cap.saturating_sub(done));
            (mean - f64::from(done)).max(mean / 4.0).max(1.0).min(left)
        }));
    }

    /// A decode-only step's time with `batch` sequences: measured; else on the line through the
    /// two nearest measured sizes (a CPU step costs a fixed part plus a part per token); else,
    /// from one measured size, half fixed and half per token; else from the prefill cost per
    /// token, when no decode step was measured yet.
    #[allow(clippy::cast_precision_loss)]
    pub fn step_us(&self, batch: usize) -> f64 {
        if batch == 0 {
            return 0.0;
        }
        if let Some(&t) = self.step_us.get(batch - 1).filter(|t| **t > 0.0) {
            return t;
        }
        let mut known: Vec<(usize, f64)> =
            self.step_us.iter().enumerate().filter(|(_, t)| **t > 0.0).map(|(i, t)| (i + 1, *t)).collect();
        known.sort_by_key(|(size, _)| size.abs_diff(batch));
        match known[..] {
            [] => self.prefill_us_per_token * batch as f64,
            [(size, t)] => t * (0.5 + 0.5 * batch as f64 / size as f64),
            [(a, ta), (b, tb), ..] => {
                let slope = ((tb - ta) / (b as f64 - a as f64)).max(0.0);
                (ta + slope * (batch as f64 - a as f64)).max(0.5 * ta.min(tb))
            }
        }
    }
}

/// The engine's queue and slots at one moment, with its timings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    /// Most sequences decoded together.
    pub parallel: u32,
    /// Requests waiting in the engine's queue for a slot.
    pub queued: u64,
    /// Requests routed to the engine that have not reached its queue yet (they are ahead of a
    /// new one all the same).
    pub pending: u64,
    /// Sequences running.
    pub active: u64,
    /// Prompt tokens not yet prefilled: running sequences' rest and waiting requests' estimate.
    pub backlog_tokens: u64,
    /// Prompt tokens prefilled per step while other sequences generate.
    pub prefill_chunk: u32,
    /// Measured costs.
    pub timings: Timings,
}

/// What a new request should expect from the local engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Time to its first token, ms.
    pub ttft_ms: f64,
    /// Its tokens per second once it generates.
    pub decode_tok_s: f64,
    /// Before any step was measured there is nothing to predict from: both figures are 0.
    pub measured: bool,
}

impl Load {
    /// Predicts time to first token and decode rate for a request of `prompt_tokens`, which
    /// queues behind the `queued` and `pending` requests (FIFO).
    ///
    /// - Waiting for a slot: those ahead first take the free slots; then each waiting request
    ///   takes the slot of the next running sequence to finish, by their estimated remaining
    ///   tokens at a full batch's step time; past a whole wave of slots, add a mean service
    ///   time (mean prompt's prefill + mean completion's steps) per wave.
    /// - Prefill: its own prompt, plus (when it starts at once) the prompt tokens ahead of it,
    ///   in chunks, each chunk sharing a step with the running sequences' tokens.
    /// - Decode: a step's time at the batch it joins, plus the prefill of later arrivals that
    ///   the batch carries on average (each sequence brings `mean_prompt` prompt tokens per
    ///   `mean_completion` steps).
    #[allow(clippy::cast_precision_loss)]
    pub fn predict(&self, prompt_tokens: u32) -> Prediction {
        let t = &self.timings;
        let parallel = u64::from(self.parallel.max(1));
        if t.step_us(1) == 0.0 && t.prefill_us_per_token == 0.0 {
            return Prediction { ttft_ms: 0.0, decode_tok_s: 0.0, measured: false };
        }
        let slots = usize::try_from(parallel).unwrap_or(usize::MAX);
        let active = self.active.min(parallel);
        let ahead = self.queued + self.pending;
        let batch = usize::try_from((active + ahead + 1).min(parallel)).unwrap_or(usize::MAX);
        let step = t.step_us(batch);
        let free = parallel - active;
        let wait_us = if ahead < free {
            0.0
        } else {
            let full_step = t.step_us(slots);
            // Running sequences' remaining tokens (unknown ones: half a mean answer), then those
            // ahead that take the free slots, starting a whole answer.
            // (The list is from the last step: an idle engine's is stale, so take only as many
            // as are running now.)
            let running = usize::try_from(active).unwrap_or(usize::MAX);
            let mut left: Vec<f64> = t.remaining.iter().copied().take(running).collect();
            left.resize(running, t.mean_completion_tokens / 2.0);
            left.resize(slots, t.mean_completion_tokens);
            left.sort_by(f64::total_cmp);
            let position = usize::try_from(ahead - free).unwrap_or(usize::MAX);
            let service = t.mean_prompt_tokens * t.prefill_us_per_token + t.mean_completion_tokens * full_step;
            left[position % slots] * full_step + (position / slots) as f64 * service
        };
        // Waiting for a slot, the requests ahead are prefilled meanwhile.
        let to_prefill = f64::from(prompt_tokens) + if wait_us == 0.0 { self.backlog_tokens as f64 } else { 0.0 };
        let running = active > 0 || wait_us > 0.0;
        let chunk = f64::from(self.prefill_chunk.max(1));
        let interleaved = if running { (to_prefill / chunk).ceil() * step } else { 0.0 };
        let prefill_us = to_prefill * t.prefill_us_per_token + interleaved;
        let ttft_ms = (wait_us + prefill_us) / 1000.0;
        let prompt_per_step =
            if t.mean_completion_tokens > 0.0 { batch as f64 * t.mean_prompt_tokens / t.mean_completion_tokens } else { 0.0 };
        let step_with_prefill = step + prompt_per_step.min(chunk) * t.prefill_us_per_token;
        let decode_tok_s = if step_with_prefill > 0.0 { 1e6 / step_with_prefill } else { 0.0 };
        Prediction { ttft_ms, decode_tok_s, measured: true }
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, clippy::cast_precision_loss)]
mod tests {
    use super::*;

    /// Costs like SmolLM2-135M's on two CPU cores: a step of b sequences ≈ 15 ms + 3 ms·b,
    /// a prompt token ≈ 1 ms, 30-token prompts, 64-token answers.
    fn measured() -> Timings {
        let mut t = Timings::default();
        for b in 1..=8 {
            t.record_step(b, 0, 15_000.0 + 3_000.0 * b as f64);
        }
        t.record_step(0, 100, 100_000.0);
        t.record_finished(30, 64);
        t
    }

    fn load(active: u64, queued: u64, backlog: u64) -> Load {
        Load { parallel: 8, queued, pending: 0, active, backlog_tokens: backlog, prefill_chunk: 96, timings: measured() }
    }

    #[test]
    fn nothing_measured_predicts_nothing() {
        let p = Load { parallel: 8, ..Load::default() }.predict(100);
        assert!(!p.measured);
        assert_eq!(p.ttft_ms, 0.0);
    }

    #[test]
    fn idle_engine_predicts_prefill_only() {
        let p = load(0, 0, 0).predict(30);
        assert!(p.measured);
        // 30 tokens at 1 ms, nothing to interleave with.
        assert!((p.ttft_ms - 30.0).abs() < 1e-6, "{p:?}");
        // Batch of one: 18 ms a step plus a share of later arrivals' prefill.
        assert!(p.decode_tok_s > 40.0 && p.decode_tok_s < 1e6 / 18_000.0, "{p:?}");
    }

    #[test]
    fn ttft_grows_with_queue_and_backlog() {
        let idle = load(0, 0, 0).predict(30).ttft_ms;
        let busy = load(4, 0, 0).predict(30).ttft_ms;
        let backlog = load(4, 0, 500).predict(30).ttft_ms;
        let full = load(8, 0, 0).predict(30).ttft_ms;
        let queued = load(8, 8, 240).predict(30).ttft_ms;
        assert!(idle < busy && busy < backlog, "{idle} {busy} {backlog}");
        assert!(full > busy, "waiting for a slot costs an eighth of a sequence's service time: {full}");
        assert!(queued > full * 2.0, "{full} {queued}");
        // Eight ahead of it at 8 busy slots (progress unknown: half an answer left each): the
        // first wave takes all 8 slots as they free, it waits for the first of those to finish.
        let half_answer_ms = 32.0 * 39.0;
        let service_ms = 30.0 + 64.0 * 39.0;
        assert!(queued >= half_answer_ms + service_ms && queued < (half_answer_ms + service_ms) * 1.2, "{queued}");
    }

    #[test]
    fn a_burst_waits_for_the_running_sequences_to_finish() {
        // Eight sequences just started (64 tokens left each), two more routed here: the ninth
        // and tenth wait for a whole answer, not an eighth of one.
        let mut l = load(8, 0, 0);
        l.timings.record_running((0..8).map(|_| (0, 64)));
        l.pending = 1;
        let p = l.predict(30).ttft_ms;
        assert!(p > 64.0 * 39.0, "{p}");
        // Two almost done: the next waits only for the first of them.
        l.timings.record_running((0..8).map(|i| if i < 2 { (60, 64) } else { (10, 64) }));
        l.pending = 0;
        let soon = l.predict(30).ttft_ms;
        assert!(soon < 16.0 * 39.0 + 200.0, "{soon}");
    }

    #[test]
    fn an_idle_engines_last_step_does_not_count() {
        // The last step ran one sequence with a token left; now nothing runs and a burst of
        // eight is routed here: the ninth waits for a whole answer.
        let mut l = load(0, 0, 0);
        l.timings.record_running([(63, 64)].into_iter());
        l.pending = 8;
        assert!(l.predict(30).ttft_ms > 64.0 * 39.0, "{:?}", l.predict(30));
    }

    #[test]
    fn remaining_tokens_follow_the_mean_and_the_cap() {
        let mut t = measured();
        t.record_running([(0, 64), (10, 16), (100, 1000), (63, 64)].into_iter());
        assert_eq!(t.remaining, vec![64.0, 6.0, 16.0, 1.0]);
    }

    #[test]
    fn decode_rate_falls_as_the_batch_grows() {
        let rates: Vec<f64> = (0..8).map(|a| load(a, 0, 0).predict(30).decode_tok_s).collect();
        assert!(rates.windows(2).all(|w| w[0] > w[1]), "{rates:?}");
    }

    #[test]
    fn unmeasured_batch_sizes_follow_the_measured_ones() {
        let mut t = Timings::default();
        t.record_step(4, 0, 40_000.0);
        assert_eq!(t.step_us(4), 40_000.0);
        assert_eq!(t.step_us(8), 60_000.0, "one size known: half fixed, half per token");
        assert_eq!(t.step_us(2), 30_000.0);
        t.record_step(2, 0, 30_000.0);
        assert_eq!(t.step_us(8), 60_000.0, "on the line through sizes 2 and 4");
        assert_eq!(t.step_us(3), 35_000.0);
        assert_eq!(t.step_us(1), 25_000.0);
        let mut only_prefill = Timings::default();
        only_prefill.record_step(0, 50, 50_000.0);
        assert_eq!(only_prefill.step_us(3), 3_000.0);
    }

    #[test]
    fn moving_average_follows_a_change() {
        let mut t = Timings::default();
        t.record_step(1, 0, 10_000.0);
        for _ in 0..50 {
            t.record_step(1, 0, 30_000.0);
        }
        assert!((t.step_us(1) - 30_000.0).abs() < 200.0, "{}", t.step_us(1));
    }

    #[test]
    fn prefill_cost_excludes_the_steps_decode_share() {
        let mut t = Timings::default();
        t.record_step(2, 0, 20_000.0);
        t.record_step(2, 96, 116_000.0);
        assert!((t.prefill_us_per_token - 1_000.0).abs() < 1e-6);
    }
}
