//! Continuous batching: every step decodes one batch holding each running sequence's next token
//! and chunks of the prompts being prefilled. Requests join at the next step and leave as soon as
//! they finish; each sequence has its own KV sequence id, sampler, stop strings and limits.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, error, warn};

use crate::engine::{Job, Message};
use crate::fair_share::{FairQueue, ForTenant};
use crate::host_cache::{EntryId, HostCache};
use crate::json_closer::JsonCloser;
use crate::prefix_cache::{Plan, SlotTable, Source};
use crate::sampling::SequenceSampler;
use crate::seq_state::{self, StateBuffer};
use crate::special::SpecialTexts;
use crate::text::TextAssembler;
use crate::{ChatTemplate, Confidence, EngineConfig, EngineError, EngineStats, FinishReason, GenerationEvent, GenerationRequest, JsonClosing, TokenLogprob};

/// llama.cpp's `llama_flash_attn_type` values (`llama.h`).
const LLAMA_FLASH_ATTN_TYPE_AUTO: i32 = -1;
const LLAMA_FLASH_ATTN_TYPE_ENABLED: i32 = 1;

/// Most tokens decoded in one step (llama.cpp's `n_batch`).
const STEP_TOKENS: usize = 512;
/// Prompt tokens per step while other sequences are generating: bounds how long a long prompt
/// can hold up running streams (one chunk's time, about 0.4 s on two CPU cores).
pub(crate) const PREFILL_CHUNK_WHILE_DECODING: usize = 96;
/// Shorter shared prefixes are not worth reusing.
const MIN_PREFIX_REUSE: usize = 4;
/// Copying another slot's stream (a memcpy of the whole stream, a few ms) must save at least
/// this many prompt tokens over what the target slot already holds (a prompt token costs ~4 ms).
const MIN_COPY_GAIN: usize = 4;
/// Restoring a state from host memory copies only its cells: worth it for any real gain.
const MIN_HOST_GAIN: usize = 2;
/// Slot caches shorter than this are not worth saving to host memory.
const MIN_HOST_SAVE: usize = 32;

/// One sequence being prefilled or decoded.
struct Sequence {
    seq_id: i32,
    /// Whose request it is (see `fair_share`).
    tenant: Option<Arc<str>>,
    events: UnboundedSender<GenerationEvent>,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// Generated tokens already in the KV cache, after the prompt.
    generated: Vec<LlamaToken>,
    /// Sampled but not yet decoded.
    pending: Option<LlamaToken>,
    sampler: SequenceSampler,
    assembler: TextAssembler,
    completion_tokens: u32,
    max_tokens: u32,
    /// Index of this sequence's logits in the current batch.
    logits_at: Option<i32>,
    /// Sum, minimum and count of the generated tokens' log-probabilities, when asked for.
    logprobs: Option<(f64, f32, u32)>,
    /// Report each token with this many alternatives (`SamplingParams::top_logprobs`).
    top_logprobs: Option<usize>,
    /// Follows a free-form JSON answer so it can be closed inside `max_tokens`.
    json: Option<JsonCloser>,
}

impl Sequence {
    /// Position of the next token to decode.
    fn n_past(&self) -> i32 {
        i32::try_from(self.prefilled + self.generated.len()).unwrap_or(i32::MAX)
    }

    /// The tokens whose KV cells this sequence holds, from position 0.
    fn kv_tokens(&self) -> Vec<LlamaToken> {
        let mut tokens = self.prompt[..self.prefilled].to_vec();
        if self.prefilled == self.prompt.len() {
            tokens.extend_from_slice(&self.generated);
        }
        tokens
    }
}

/// Owns the context and decides, step by step, what to decode.
pub(crate) struct Scheduler<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    template: ChatTemplate,
    /// The spellings of the model's special tokens, kept as text inside conversations.
    special: SpecialTexts,
    stats: &'m EngineStats,
    batch: LlamaBatch<'static>,
    active: Vec<Sequence>,
    slots: SlotTable<LlamaToken>,
    /// KV cells of each sequence's stream: `context / parallel`.
    seq_cells: u32,
    /// The longest piece of text one token stands for: a prompt of `n` bytes has at least
    /// `n / longest_piece` tokens, so one far too long for the context is refused before the
    /// engine thread spends time tokenizing it.
    longest_piece: usize,
    /// The stream no sequence uses, for swapping two slots.
    scratch: i32,
    /// Prompt states saved to host memory.
    host: HostCache<LlamaToken, StateBuffer>,
    /// Jobs waiting for a slot, shared fairly among tenants; `[local].queue` bounds them.
    waiting: FairQueue<Job>,
    /// Slots whose KV buffer has a stream copy still queued (llama.cpp carries copies out at the
    /// start of the next decode): their buffers must not be read or written directly until then.
    copy_pending: Vec<i32>,
}

impl<'m> Scheduler<'m> {
    pub(crate) fn new(
        config: &'m EngineConfig,
        backend: &LlamaBackend,
        model: &'m LlamaModel,
        stats: &'m EngineStats,
    ) -> Result<Self, EngineError> {
        let threads = i32::try_from(config.threads).unwrap_or(i32::MAX);
        let step = u32::try_from(STEP_TOKENS).unwrap_or(u32::MAX);
        // One stream per slot plus a scratch stream for swapping two slots' contents.
        let streams = config.parallel + 1;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(config.seq_cells().saturating_mul(streams)))
            .with_n_batch(step)
            .with_n_ubatch(step)
            .with_n_seq_max(streams)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            // One KV stream per sequence: attention then runs over that sequence's cells only,
            // so its output does not depend on what else is in the batch (byte-identical to a
            // solo run). A unified cache interleaves sequences' cells and changes the order of
            // floating-point sums. The cost: each sequence holds at most context / parallel cells.
            .with_kv_unified(false);
        let params = if config.batch_invariant {
            // Flash attention with an 8-bit KV cache: llama.cpp's CPU kernel has tiled and
            // split-KV paths, picked by the number of queries in a step, only for F16/F32 caches;
            // with Q8_0 it always runs the row-by-row path, so a sequence's sums keep one order
            // whatever shares its step. (Flash attention off is invariant too, but ~40 % slower.)
            params
                .with_flash_attention_policy(LLAMA_FLASH_ATTN_TYPE_ENABLED)
                .with_type_k(KvCacheType::Q8_0)
                .with_type_v(KvCacheType::Q8_0)
        } else {
            params.with_flash_attention_policy(LLAMA_FLASH_ATTN_TYPE_AUTO)
        };
        let ctx = model
            .new_context(backend, params)
            .map_err(|e| EngineError::Unavailable { reason: format!("cannot create a context: {e}") })?;
        let source = model
            .chat_template(None)
            .map_err(|e| EngineError::Unavailable { reason: format!("the model has no chat template (is it a chat model?): {e}") })?;
        let source = source.to_str().map_err(|e| EngineError::Unavailable { reason: format!("the model's chat template is not UTF-8: {e}") })?;
        let vocab = model.vocab();
        let piece = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let template = ChatTemplate::new(source, &piece(vocab.bos()), &piece(vocab.eos()))?;
        Ok(Self {
            special: SpecialTexts::of(model),
            model,
            ctx,
            template,
            stats,
            batch: LlamaBatch::new(STEP_TOKENS, 1),
            active: Vec::new(),
            slots: SlotTable::new(config.parallel as usize),
            seq_cells: config.seq_cells(),
            longest_piece: model.vocab().tokens().map(|t| model.vocab().token_to_piece(t, true, None).len()).max().unwrap_or(1).max(1),
            scratch: i32::try_from(config.parallel).unwrap_or(i32::MAX),
            host: HostCache::new(config.prompt_cache_mib as usize * 1024 * 1024),
            waiting: FairQueue::default(),
            copy_pending: Vec::new(),
        })
    }

    /// Runs until told to stop, or every handle is dropped and no work is left.
    pub(crate) fn serve(&mut self, jobs: &Receiver<Message>) {
        loop {
            if self.stats.stop_requested.load(Relaxed) || !self.admit(jobs) {
                self.stop(jobs);
                return;
            }
            self.drop_cancelled();
            if self.active.is_empty() {
                continue;
            }
            self.step();
            self.publish_kv_usage();
        }
    }

    /// Moves every job sent so far into the FIFO, forgets those whose clients left, and starts
    /// waiting jobs while sequence slots are free. Blocks only when idle. Returns false once told
    /// to stop, or once the channel is closed and nothing is left to do.
    fn admit(&mut self, jobs: &Receiver<Message>) -> bool {
        loop {
            match jobs.try_recv() {
                Ok(Message::Generate(job)) => self.waiting.push(*job),
                Ok(Message::Stop) => return false,
                Err(TryRecvError::Disconnected) if self.waiting.is_empty() && self.active.is_empty() => return false,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let mut left = 0;
        // Those displaced were answered already.
        self.waiting.retain(|job| {
            left += u64::from(job.left());
            job.waiting()
        });
        self.stats.cancelled_total.fetch_add(left, Relaxed);
        while self.slots.has_free() {
            // One lock for the choice, released before an idle wait for work below.
            let next = {
                let places = self.stats.places();
                self.waiting.next(|tenant| places.running(tenant))
            };
            let job = match next {
                Some(job) => job,
                None if !self.active.is_empty() => return true,
                // Idle: wait for work, and admit it like any other (its tenant's turn is counted).
                None => match jobs.recv() {
                    Ok(Message::Generate(job)) => {
                        self.waiting.push(*job);
                        continue;
                    }
                    Ok(Message::Stop) | Err(_) => return false,
                },
            };
            if !job.take() {
                // Its client left, or it was displaced, before it got a slot.
                self.stats.cancelled_total.fetch_add(u64::from(job.left()), Relaxed);
                continue;
            }
            let (estimate, tenant, place) = (job.estimate, job.tenant().cloned(), Arc::clone(&job.place));
            self.start_job(job);
            // Counted as waiting until it runs (or is answered): `submit` adds waiting and
            // running jobs, and a job between the two must not leave room for one more.
            self.stats.leave_queue(tenant.as_ref(), estimate, &place);
        }
        true
    }

    /// Starts `job` in a free slot, or answers it (cancelled, or its prompt cannot run).
    fn start_job(&mut self, job: Job) {
        if job.events.is_closed() {
            self.stats.cancelled_total.fetch_add(1, Relaxed);
            return;
        }
        let prepared = self.prepare(&job.request).and_then(|(prompt, max)| Ok((prompt, max, SequenceSampler::new(self.model, &job.request.sampling)?)));
        let (prompt, max_tokens, sampler) = match prepared {
            Ok(prepared) => prepared,
            Err(err) => {
                let _ = job.events.send(GenerationEvent::Failed(err));
                return;
            }
        };
        let live: Vec<(i32, Vec<LlamaToken>)> = self.active.iter().map(|s| (s.seq_id, s.kv_tokens())).collect();
        let live: Vec<(i32, &[LlamaToken])> = live.iter().map(|(id, t)| (*id, t.as_slice())).collect();
        if let Some(plan) = self.slots.plan(&prompt, &live, MIN_PREFIX_REUSE, MIN_COPY_GAIN) {
            self.start_sequence(job, prompt, max_tokens, sampler, &plan);
        }
    }

    /// Fails every running and queued generation; the engine is going away.
    fn stop(&mut self, jobs: &Receiver<Message>) {
        let err = EngineError::Unavailable { reason: "the local engine is shutting down".into() };
        self.fail_all(&err);
        let sent = std::iter::from_fn(|| jobs.try_recv().ok()).filter_map(|message| match message {
            Message::Generate(job) => Some(*job),
            Message::Stop => None,
        });
        for job in self.waiting.take_all().into_iter().chain(sent) {
            job.refuse(self.stats, &err);
        }
    }

    /// Renders and tokenizes the prompt and checks it against the context.
    fn prepare(&self, request: &GenerationRequest) -> Result<(Vec<LlamaToken>, u32), EngineError> {
        // A raw prompt (legacy completions) is the caller's to shape, special tokens included; a
        // conversation's text never becomes one (see `special`).
        let (text, shielded) = match &request.raw_prompt {
            Some(raw) => (raw.clone(), false),
            None => match self.special.shield(&request.messages, request.tools.as_ref()) {
                Some(shielded) => (self.template.render(&shielded.messages, shielded.tools.as_ref())?, true),
                None => (self.template.render(&request.messages, request.tools.as_ref())?, false),
            },
        };
        let context = self.seq_cells;
        let too_long = |prompt_tokens: u32, max_tokens: u32| EngineError::ContextLengthExceeded {
            context,
            requested: u64::from(prompt_tokens) + u64::from(max_tokens),
            prompt_tokens,
            max_tokens,
        };
        // At least this many tokens, whatever the text: a prompt that cannot fit is refused
        // without tokenizing megabytes on the engine thread (every sequence waits for it).
        let at_least = u32::try_from(text.len() / self.longest_piece).unwrap_or(u32::MAX);
        if at_least >= context {
            return Err(EngineError::PromptCannotFit { context, at_least });
        }
        let vocab = self.model.vocab();
        let bos_text = vocab.token_to_piece(vocab.bos(), true, None);
        let add_bos = vocab.should_add_bos() && !text.as_bytes().starts_with(&bos_text);
        let prompt = if shielded { self.special.tokenize(self.model, &text, add_bos) } else { vocab.tokenize(text.as_bytes(), add_bos, true) };
        let prompt_tokens = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        let too_long = |max_tokens: u32| too_long(prompt_tokens, max_tokens);
        let max_tokens = match request.sampling.max_tokens {
            Some(max) if u64::from(prompt_tokens) + u64::from(max) > u64::from(context) => {
                return Err(too_long(max))
            }
            Some(max) => max,
            None if prompt_tokens >= context => return Err(too_long(1)),
            None => context - prompt_tokens,
        };
        if prompt.is_empty() {
            return Err(EngineError::Template { reason: "the rendered prompt is empty".into() });
        }
        Ok((prompt, max_tokens))
    }

    /// Carries out `plan` on the KV cache and starts the sequence.
    fn start_sequence(&mut self, job: Job, prompt: Vec<LlamaToken>, max_tokens: u32, sampler: SequenceSampler, plan: &Plan) {
        let seq_id = plan.seq_id;
        let from_slots = match plan.source {
            Source::Fresh => 0,
            Source::Cached { common } | Source::CopyFrom { common, .. } => common,
        };
        // A state saved in host memory wins if it holds clearly more of the prompt, and the
        // slot's buffer is not waiting for a queued copy (a direct write would be overtaken).
        let limit = prompt.len().saturating_sub(1);
        let from_host = self
            .host
            .best(&prompt)
            .map(|(id, common)| (id, common.min(limit)))
            .filter(|&(_, common)| common >= MIN_PREFIX_REUSE && common >= from_slots + MIN_HOST_GAIN)
            .filter(|_| !self.copy_pending.contains(&seq_id));
        let keep = match (from_host, &plan.source) {
            (None, Source::Cached { common }) => *common,
            _ => 0,
        };
        // Saving may evict the entry just chosen: then the slot's own plan applies after all
        // (saving reads the slot's cells, it does not change them).
        self.save_to_host(seq_id, keep);
        let reused = match from_host.and_then(|(id, common)| self.restore_from_host(id, seq_id, &prompt[..common])) {
            Some(kept) => kept,
            None => self.reuse_from_slots(seq_id, &plan.source),
        };
        self.admit_sequence(job, prompt, max_tokens, sampler, plan, reused);
    }

    /// Prepares slot `seq_id` from the slot table's plan; returns the prompt tokens reused.
    fn reuse_from_slots(&mut self, seq_id: i32, source: &Source) -> usize {
        match *source {
            Source::Fresh => self.keep_prefix(seq_id, 0),
            Source::Cached { common } => self.keep_prefix(seq_id, common),
            Source::CopyFrom { src, common } => {
                // llama.cpp copies streams only whole: copy all of `src`, then cut what follows
                // the shared prefix.
                self.copy_stream(src, seq_id);
                self.keep_prefix(seq_id, common)
            }
        }
    }

    /// Keeps the first `common` positions of `seq_id`'s cells and drops the rest; if llama.cpp
    /// refuses the partial removal, clears everything. Returns the positions kept.
    fn keep_prefix(&mut self, seq_id: i32, common: usize) -> usize {
        if common > 0 && self.clear_kv(seq_id, common) {
            return common;
        }
        self.clear_kv(seq_id, 0);
        0
    }

    /// Takes the slot and starts the sequence with `reused` prompt tokens already in its KV.
    fn admit_sequence(&mut self, job: Job, prompt: Vec<LlamaToken>, max_tokens: u32, sampler: SequenceSampler, plan: &Plan, reused: usize) {
        let seq_id = plan.seq_id;
        self.slots.take(plan);
        if reused > 0 {
            self.stats.prefix_hits_total.fetch_add(1, Relaxed);
            self.stats.prefix_tokens_reused_total.fetch_add(reused as u64, Relaxed);
        }
        let prompt_tokens = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        debug!(seq_id, prompt_tokens, reused, max_tokens, "sequence admitted");
        let _ = job.events.send(GenerationEvent::Started { prompt_tokens });
        self.stats.active.fetch_add(1, Relaxed);
        self.stats.places().started(job.tenant(), job.weight());
        self.active.push(Sequence {
            seq_id,
            tenant: job.tenant().cloned(),
            events: job.events,
            prompt,
            prefilled: reused,
            generated: Vec::new(),
            pending: None,
            sampler,
            assembler: TextAssembler::new(&job.request.sampling.stop).sparing_calls(job.request.sampling.stops_spare_calls),
            completion_tokens: 0,
            max_tokens,
            logits_at: None,
            logprobs: job.request.sampling.logprobs.then_some((0.0, 0.0, 0)),
            top_logprobs: job.request.sampling.top_logprobs.map(usize::from),
            json: match job.request.sampling.close_json {
                JsonClosing::Off => None,
                JsonClosing::Always => Some(JsonCloser::default()),
                JsonClosing::UnlessACall => Some(JsonCloser::unless_a_call()),
            },
        });
        self.publish_kv_usage();
    }

    /// Removes `seq_id`'s cells from position `from` on; false if llama.cpp refused.
    fn clear_kv(&mut self, seq_id: i32, from: usize) -> bool {
        let from = if from == 0 { None } else { u32::try_from(from).ok() };
        match self.ctx.clear_kv_cache_seq(u32::try_from(seq_id).ok(), from, None) {
            Ok(done) => done,
            Err(e) => {
                warn!(error = %e, seq_id, "could not clear KV cells");
                false
            }
        }
    }

    /// A sequence whose client went away stops here, before another step is spent on it.
    fn drop_cancelled(&mut self) {
        let gone: Vec<(usize, ())> =
            self.active.iter().enumerate().filter(|(_, s)| s.events.is_closed()).map(|(i, _)| (i, ())).collect();
        for (seq, ()) in self.remove_highest_first(gone) {
            debug!(seq_id = seq.seq_id, "sequence cancelled");
            self.stats.cancelled_total.fetch_add(1, Relaxed);
            self.release(&seq, false);
        }
    }

    /// Copies stream `from` onto stream `to` (carried out before the next decode).
    fn copy_stream(&mut self, from: i32, to: i32) {
        if let Err(e) = self.ctx.copy_kv_cache_seq(from, to, None, None) {
            warn!(error = %e, from, to, "could not copy a KV stream");
        }
        self.copy_pending.extend([from, to]);
    }

    /// Saves free slot `seq_id`'s cells to host memory before they are overwritten, keeping the
    /// first `keep` tokens' worth in place (only what would be lost is worth saving).
    fn save_to_host(&mut self, seq_id: i32, keep: usize) {
        let Some(tokens) = self.slots.cached_tokens(seq_id) else { return };
        if tokens.len() < keep + MIN_HOST_SAVE || self.copy_pending.contains(&seq_id) || self.host.covers(tokens) {
            return;
        }
        let tokens = tokens.to_vec();
        let bytes = seq_state::size(&self.ctx, seq_id);
        if !self.host.would_keep(&tokens, bytes) {
            return;
        }
        // Evict first and write into the smallest freed buffer that fits (else a fresh one): its
        // pages are already mapped, where a fresh buffer's cost more than the copy (seq_state).
        let mut buffer = (self.host.make_room(&tokens, bytes).into_iter())
            .filter(|b| b.capacity() >= bytes)
            .min_by_key(StateBuffer::capacity)
            .unwrap_or_else(StateBuffer::empty);
        let recycled = buffer.capacity() > 0;
        let started = Instant::now();
        if seq_state::save(&self.ctx, seq_id, &mut buffer) {
            let held = buffer.capacity();
            debug!(seq_id, bytes, recycled, micros = started.elapsed().as_micros(), "prompt state saved to host memory");
            self.host.insert(tokens, buffer, held);
            self.stats.host_cache_bytes.store(self.host.bytes() as u64, Relaxed);
        } else {
            warn!(seq_id, "could not save a prompt state");
        }
    }

    /// Restores host-cached state `id` into `seq_id` and keeps the cells of `prefix` (the prompt's
    /// tokens the state shares); returns how many tokens are reused (0 if the restore failed and
    /// the slot was cleared), or `None`, with the slot untouched, if the entry is gone or does not
    /// hold `prefix`.
    fn restore_from_host(&mut self, id: EntryId, seq_id: i32, prefix: &[LlamaToken]) -> Option<usize> {
        let (tokens, state) = self.host.take_use(id)?;
        if !tokens.starts_with(prefix) {
            warn!(seq_id, "a saved prompt state does not hold the prefix it was chosen for; not restoring it");
            return None;
        }
        let restored = seq_state::restore(&mut self.ctx, state, seq_id);
        if !restored {
            warn!(seq_id, "could not restore a prompt state");
        }
        let kept = self.keep_prefix(seq_id, if restored { prefix.len() } else { 0 });
        if kept > 0 {
            self.stats.host_cache_hits_total.fetch_add(1, Relaxed);
        }
        Some(kept)
    }

    /// Frees a sequence that has left `active`. A finished one keeps its cells for prefix reuse;
    /// a cancelled or failed one gives them back at once. If it was not in the highest running
    /// slot, the sequence in that slot moves into its place, so running slots stay `0..n`.
    fn release(&mut self, seq: &Sequence, keep_cache: bool) {
        let slot = seq.seq_id;
        let highest = self.active.iter().enumerate().filter(|(_, s)| s.seq_id > slot).max_by_key(|(_, s)| s.seq_id).map(|(i, _)| i);
        let cached = if keep_cache { seq.kv_tokens() } else { Vec::new() };
        match highest {
            None => {
                if !keep_cache {
                    self.clear_kv(slot, 0);
                }
                self.slots.put_back(slot, cached);
            }
            Some(index) => {
                let top = self.active[index].seq_id;
                if keep_cache {
                    // Swap the two streams through the scratch one: the freed slot `top` then
                    // holds the finished sequence's cells, ready for reuse.
                    self.copy_stream(slot, self.scratch);
                    self.copy_stream(top, slot);
                    self.copy_stream(self.scratch, top);
                    self.slots.put_back(top, cached);
                } else {
                    self.copy_stream(top, slot);
                    // `top` still holds a valid copy of the moved sequence's cells.
                    let moved = self.active[index].kv_tokens();
                    self.slots.put_back(top, moved);
                }
                self.active[index].seq_id = slot;
            }
        }
        self.stats.active.fetch_sub(1, Relaxed);
        self.stats.places().ended(seq.tenant.as_ref());
        self.publish_kv_usage();
    }

    /// Fails every running sequence with `err`, freeing their slots (no compaction moves).
    fn fail_all(&mut self, err: &EngineError) {
        let mut all = std::mem::take(&mut self.active);
        all.sort_by_key(|s| std::cmp::Reverse(s.seq_id));
        for seq in all {
            self.release(&seq, false);
            let _ = seq.events.send(GenerationEvent::Failed(err.clone()));
        }
    }

    /// One decode: each sequence's next token or prompt chunk, in slot order (llama.cpp puts
    /// consecutive slots in one micro-batch). Prompt chunks share a per-step budget that is small
    /// while other sequences are generating.
    fn step(&mut self) {
        self.batch.clear();
        self.active.sort_by_key(|s| s.seq_id);
        let decoding = self.active.iter().filter(|s| s.pending.is_some()).count();
        let mut budget = if decoding > 0 { PREFILL_CHUNK_WHILE_DECODING } else { STEP_TOKENS };
        let mut n: i32 = 0;
        let mut prompt_tokens_in_batch = 0u64;
        for seq in &mut self.active {
            seq.logits_at = None;
            if let Some(token) = seq.pending {
                // Cannot fail: the batch holds STEP_TOKENS >= parallel tokens.
                let _ = self.batch.add(token, seq.n_past(), &[seq.seq_id], true);
                seq.logits_at = Some(n);
                n += 1;
                continue;
            }
            let take = (seq.prompt.len() - seq.prefilled).min(budget);
            for i in seq.prefilled..seq.prefilled + take {
                let last = i + 1 == seq.prompt.len();
                let pos = i32::try_from(i).unwrap_or(i32::MAX);
                let _ = self.batch.add(seq.prompt[i], pos, &[seq.seq_id], last);
                if last {
                    seq.logits_at = Some(n);
                }
                n += 1;
            }
            seq.prefilled += take;
            budget -= take;
            prompt_tokens_in_batch += take as u64;
        }
        if n == 0 {
            return;
        }
        let started = Instant::now();
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            error!(error = %e, "decode failed; failing every active sequence");
            self.fail_all(&EngineError::Decode { reason: e.to_string() });
            return;
        }
        // The decode carried out every queued stream copy first.
        self.copy_pending.clear();
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        self.stats.timings().record_step(decoding, prompt_tokens_in_batch as usize, micros as f64);
        if prompt_tokens_in_batch > 0 {
            self.stats.prefill_us_total.fetch_add(micros, Relaxed);
            self.stats.prompt_tokens_total.fetch_add(prompt_tokens_in_batch, Relaxed);
        } else {
            self.stats.decode_us_total.fetch_add(micros, Relaxed);
        }
        self.sample_all();
    }

    /// Samples the next token of every sequence that has logits in this batch.
    fn sample_all(&mut self) {
        let vocab = self.model.vocab();
        let mut finished = Vec::new();
        for (i, seq) in self.active.iter_mut().enumerate() {
            // Tokens that were pending are now in the KV cache.
            if let Some(decoded) = seq.pending.take() {
                seq.generated.push(decoded);
            }
            let Some(at) = seq.logits_at else { continue };
            let token = seq.sampler.sample(&self.ctx, at);
            let mut top = Vec::new();
            if seq.logprobs.is_some() || seq.top_logprobs.is_some() {
                let (lp, alternatives) = token_logprobs(self.ctx.get_logits_ith(at), token.0, seq.top_logprobs.unwrap_or(0));
                if let Some((sum, min, n)) = seq.logprobs.as_mut() {
                    *sum += f64::from(lp);
                    *min = if *n == 0 { lp } else { min.min(lp) };
                    *n += 1;
                }
                if seq.top_logprobs.is_some() {
                    top.push((token, lp));
                    top.extend(alternatives.into_iter().map(|(t, l)| (LlamaToken(t), l)));
                }
            }
            if vocab.is_eog(token) {
                finished.push((i, FinishReason::Stop));
                continue;
            }
            seq.completion_tokens += 1;
            self.stats.completion_tokens_total.fetch_add(1, Relaxed);
            let piece = vocab.token_to_piece(token, false, None);
            if let Some(((_, logprob), alternatives)) = top.split_first() {
                // Alternatives are shown as the model knows them: an end-of-turn token by its name.
                let top = alternatives.iter().map(|(t, l)| (vocab.token_to_piece(*t, true, None), *l)).collect();
                let _ = seq.events.send(GenerationEvent::Token(TokenLogprob { bytes: piece.clone(), logprob: *logprob, top }));
            }
            if let Some(json) = seq.json.as_mut() {
                json.push(&piece);
            }
            let out = seq.assembler.push(&piece);
            if !out.text.is_empty() {
                let _ = seq.events.send(GenerationEvent::Text(out.text));
            }
            // Tokens this sequence may still generate: its own limit, and its share of the context.
            let left = (seq.max_tokens.saturating_sub(seq.completion_tokens))
                .min(self.seq_cells.saturating_sub(u32::try_from(seq.n_past()).unwrap_or(u32::MAX) + 1));
            if out.stopped || seq.json.as_ref().is_some_and(JsonCloser::is_complete) {
                // A complete JSON answer: its grammar allows nothing but the end now.
                finished.push((i, FinishReason::Stop));
            } else if left == 0 {
                finished.push((i, FinishReason::Length));
            } else if let Some((closing, tokens)) = seq.json.as_ref().and_then(|json| closing_due(json, left, |text| vocab.tokenize(text.as_bytes(), false, false).len())) {
                if tokens <= left {
                    seq.completion_tokens += tokens;
                    self.stats.completion_tokens_total.fetch_add(u64::from(tokens), Relaxed);
                    let mut text = seq.assembler.push(closing.as_bytes()).text;
                    text.push_str(&seq.assembler.finish());
                    let _ = seq.events.send(GenerationEvent::Text(text));
                }
                // Closed so that it parses, or not closable in what is left: cut either way, and
                // clients that look for `length` to retry with a larger budget must see it.
                finished.push((i, FinishReason::Length));
            } else {
                seq.pending = Some(token);
            }
        }
        for (mut seq, reason) in self.remove_highest_first(finished) {
            self.stats.timings().record_finished(u32::try_from(seq.prompt.len()).unwrap_or(u32::MAX), seq.completion_tokens);
            // Free the slot first: whoever sees `Finished` sees the engine's stats settled.
            self.release(&seq, true);
            self.stats.finished_total.fetch_add(1, Relaxed);
            // Text held back as the possible start of a stop string is the answer's when the
            // generation ended otherwise (end of turn, length); after a stop string nothing is held.
            let tail = seq.assembler.finish();
            if !tail.is_empty() {
                let _ = seq.events.send(GenerationEvent::Text(tail));
            }
            #[allow(clippy::cast_possible_truncation)]
            let confidence = seq.logprobs.filter(|l| l.2 > 0).map(|(sum, min, n)| Confidence {
                mean_logprob: (sum / f64::from(n)) as f32,
                min_logprob: min,
                tokens: n,
            });
            let _ = seq.events.send(GenerationEvent::Finished {
                reason,
                prompt_tokens: u32::try_from(seq.prompt.len()).unwrap_or(u32::MAX),
                completion_tokens: seq.completion_tokens,
                confidence,
            });
        }
    }

    /// Takes the sequences at `picked` (index, tag) out of `active`, highest slot first: freeing
    /// slots from the top down means no running sequence has to move for those that leave.
    fn remove_highest_first<X>(&mut self, mut picked: Vec<(usize, X)>) -> Vec<(Sequence, X)> {
        // Remove by descending index so earlier indices stay valid.
        picked.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        let mut out: Vec<(Sequence, X)> = picked.into_iter().map(|(i, x)| (self.active.remove(i), x)).collect();
        out.sort_by_key(|(s, _)| std::cmp::Reverse(s.seq_id));
        out
    }

    /// Publishes what the running sequences hold and have left; called whenever one joins or
    /// leaves and after every step, so a prediction never sees a stale set.
    fn publish_kv_usage(&self) {
        self.stats.timings().record_running(self.active.iter().map(|s| (s.completion_tokens, s.max_tokens)));
        let backlog: usize = self.active.iter().map(|s| s.prompt.len() - s.prefilled).sum();
        self.stats.active_backlog_tokens.store(backlog as u64, Relaxed);
        let used: i64 = self.active.iter().map(|s| i64::from(s.n_past())).sum();
        self.stats.kv_cells_used.store(u64::try_from(used).unwrap_or(0), Relaxed);
        self.stats.kv_cells_cached.store(u64::from(self.slots.cached_cells()), Relaxed);
    }
}

/// Tokens of budget kept in hand when deciding to close a JSON answer: the next token could
/// open a string or a container and lengthen the closing by about this much.
const JSON_CLOSING_MARGIN: u32 = 4;

/// The text that closes `json` now and its length in tokens, when `left` tokens would soon not
/// be enough for it.
fn closing_due(json: &JsonCloser, left: u32, count_tokens: impl Fn(&str) -> usize) -> Option<(String, u32)> {
    let closing = json.closing()?;
    // Its length in bytes bounds its length in tokens: most steps need no tokenizing.
    let bytes = u32::try_from(closing.len()).unwrap_or(u32::MAX);
    if bytes.saturating_add(JSON_CLOSING_MARGIN) < left {
        return None;
    }
    let tokens = u32::try_from(count_tokens(&closing)).unwrap_or(u32::MAX);
    (tokens.saturating_add(JSON_CLOSING_MARGIN) >= left).then_some((closing, tokens))
}

/// The log-probability of `token` under `logits` and the `k` most likely tokens with theirs,
/// most likely first (log-softmax, computed stably; ties keep the lower token id first).
fn token_logprobs(logits: &[f32], token: i32, k: usize) -> (f32, Vec<(i32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|l| f64::from(l - max).exp()).sum();
    #[allow(clippy::cast_possible_truncation)]
    let log_sum = sum.ln() as f32;
    let logprob = |logit: f32| logit - max - log_sum;
    let chosen = usize::try_from(token).ok().and_then(|t| logits.get(t)).map_or(f32::NEG_INFINITY, |&l| logprob(l));
    // k is at most 20: one comparison per logit once the list is full.
    let mut top: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() || (top.len() == k && l <= top[k - 1].0) {
                continue;
            }
            let at = top.partition_point(|&(v, _)| v >= l);
            top.insert(at, (l, i));
            top.truncate(k);
        }
    }
    (chosen, top.into_iter().map(|(l, i)| (i32::try_from(i).unwrap_or(i32::MAX), logprob(l))).collect())
}

#[cfg(test)]
#[allow(clippy::float_cmp)]
mod tests {
    use super::token_logprobs;

    fn token_logprob(logits: &[f32], token: i32) -> f32 {
        token_logprobs(logits, token, 0).0
    }

    #[test]
    fn logprob_is_the_log_softmax() {
        let logits = [1.0_f32, 2.0, 3.0];
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        for (i, l) in logits.iter().enumerate() {
            let expected = (l.exp() / z).ln();
            assert!((token_logprob(&logits, i32::try_from(i).unwrap()) - expected).abs() < 1e-6);
        }
        // Huge logits do not overflow.
        assert!((token_logprob(&[1000.0, 1000.0], 0) - 0.5_f32.ln()).abs() < 1e-6);
        assert_eq!(token_logprob(&logits, 7), f32::NEG_INFINITY);
    }

    #[test]
    fn top_tokens_are_the_most_likely_in_order() {
        let logits = [0.5_f32, 3.0, -1.0, 1.0, 3.0, -2.0, 2.0];
        let (chosen, top) = token_logprobs(&logits, 3, 3);
        let ids: Vec<i32> = top.iter().map(|t| t.0).collect();
        // Equal logits keep the lower id first.
        assert_eq!(ids, [1, 4, 6]);
        assert_eq!(top[0].1, top[1].1);
        assert!(top[1].1 > top[2].1 && top[2].1 > chosen);
        assert!((top[2].1 - chosen - 1.0).abs() < 1e-6, "log-probabilities differ as the logits do");
        assert_eq!(token_logprobs(&logits, 1, 0).1, []);
        assert_eq!(token_logprobs(&logits[..2], 0, 5).1.len(), 2, "never more than the vocabulary");
    }
}
