//! The engine thread: it owns the model, the context and the batch, and decodes every active
//! sequence together, one `llama_batch` per step.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tracing::{debug, error, info, info_span, warn};

use crate::text::TextAssembler;
use crate::{
    ChatTemplate, EngineConfig, EngineError, EngineStats, EngineStatsSnapshot, FinishReason,
    GenerationEvent, GenerationRequest, GenerationStream, SamplingParams,
};

/// Most tokens decoded in one step; prompts longer than this are prefilled in chunks.
const STEP_TOKENS: u32 = 512;

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: SyncSender<Job>,
    stats: Arc<EngineStats>,
    config: Arc<EngineConfig>,
}

struct Job {
    request: GenerationRequest,
    events: UnboundedSender<GenerationEvent>,
}

impl EngineHandle {
    /// Starts the engine thread. The model loads in the background; [`EngineStatsSnapshot::loaded`]
    /// turns true once it serves. Jobs submitted before that wait in the queue.
    pub fn start(config: EngineConfig) -> Result<Self, EngineError> {
        let (jobs, receiver) = std::sync::mpsc::sync_channel(config.queue);
        let stats = Arc::new(EngineStats::default());
        let config = Arc::new(config);
        let thread_stats = Arc::clone(&stats);
        let thread_config = Arc::clone(&config);
        std::thread::Builder::new()
            .name("local-engine".into())
            .spawn(move || run(&thread_config, &receiver, &thread_stats))
            .map_err(|e| EngineError::Unavailable { reason: format!("cannot spawn the engine thread: {e}") })?;
        Ok(Self { jobs, stats, config })
    }

    /// Queues a generation. Events arrive on the returned stream; dropping it cancels the job.
    pub fn submit(&self, request: GenerationRequest) -> Result<GenerationStream, EngineError> {
        let (events, stream) = unbounded_channel();
        self.stats.queued.fetch_add(1, Relaxed);
        match self.jobs.try_send(Job { request, events }) {
            Ok(()) => Ok(stream),
            Err(TrySendError::Full(_)) => {
                self.stats.queued.fetch_sub(1, Relaxed);
                Err(EngineError::Overloaded { queue: self.config.queue })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Relaxed);
                Err(EngineError::Unavailable { reason: "the engine thread has stopped".into() })
            }
        }
    }

    /// The engine's live counters.
    pub fn stats(&self) -> EngineStatsSnapshot {
        self.stats.snapshot()
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
}

/// llama.cpp's backend may be initialised once per process.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|reason| EngineError::Unavailable { reason: reason.clone() })
}

fn run(config: &EngineConfig, jobs: &Receiver<Job>, stats: &EngineStats) {
    let _span = info_span!("local_engine", model = %config.model.display()).entered();
    let loaded = backend().and_then(|backend| {
        LlamaModel::load_from_file(backend, &config.model, &LlamaModelParams::default())
            .map_err(|e| EngineError::Unavailable { reason: format!("cannot load {}: {e}", config.model.display()) })
            .map(|model| (backend, model))
    });
    let (backend, model) = match loaded {
        Ok(pair) => pair,
        Err(err) => return refuse_all(jobs, stats, &err),
    };
    let mut scheduler = match Scheduler::new(config, backend, &model, stats) {
        Ok(s) => s,
        Err(err) => return refuse_all(jobs, stats, &err),
    };
    stats.loaded.store(true, Relaxed);
    info!(name = %config.name, context = config.context, parallel = config.parallel, "local engine ready");
    scheduler.serve(jobs);
    stats.loaded.store(false, Relaxed);
    info!("local engine stopped");
}

fn refuse_all(jobs: &Receiver<Job>, stats: &EngineStats, err: &EngineError) {
    error!(error = %err, "local engine could not start");
    while let Ok(job) = jobs.recv() {
        stats.queued.fetch_sub(1, Relaxed);
        let _ = job.events.send(GenerationEvent::Failed(err.clone()));
    }
}

/// One sequence being prefilled or decoded.
struct Sequence {
    seq_id: i32,
    events: UnboundedSender<GenerationEvent>,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// Position of the next token to decode.
    n_past: i32,
    /// Sampled but not yet decoded.
    pending: Option<LlamaToken>,
    sampler: LlamaSampler,
    assembler: TextAssembler,
    completion_tokens: u32,
    max_tokens: u32,
    /// KV cells set aside for this sequence (prompt + max completion).
    reserved: u32,
    /// Index of this sequence's logits in the current batch.
    logits_at: Option<i32>,
}

struct Scheduler<'m> {
    config: &'m EngineConfig,
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    template: ChatTemplate,
    stats: &'m EngineStats,
    batch: LlamaBatch<'static>,
    active: Vec<Sequence>,
    free_seq_ids: Vec<i32>,
    reserved_cells: u32,
    /// A job taken from the channel that does not fit yet; it keeps its place at the head.
    waiting: Option<Job>,
}

impl<'m> Scheduler<'m> {
    fn new(
        config: &'m EngineConfig,
        backend: &LlamaBackend,
        model: &'m LlamaModel,
        stats: &'m EngineStats,
    ) -> Result<Self, EngineError> {
        let threads = i32::try_from(config.threads).unwrap_or(i32::MAX);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(config.context))
            .with_n_batch(STEP_TOKENS)
            .with_n_ubatch(STEP_TOKENS)
            .with_n_seq_max(config.parallel)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_kv_unified(true);
        let ctx = model
            .new_context(backend, params)
            .map_err(|e| EngineError::Unavailable { reason: format!("cannot create a context: {e}") })?;
        let source = model
            .chat_template(None)
            .map_err(|e| EngineError::Template { reason: format!("the model has no chat template: {e}") })?;
        let source = source.to_str().map_err(|e| EngineError::Template { reason: e.to_string() })?;
        let vocab = model.vocab();
        let piece = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let template = ChatTemplate::new(source, &piece(vocab.bos()), &piece(vocab.eos()))?;
        let batch_seqs = i32::try_from(config.parallel).unwrap_or(1);
        Ok(Self {
            config,
            model,
            ctx,
            template,
            stats,
            batch: LlamaBatch::new(STEP_TOKENS as usize, 1),
            active: Vec::new(),
            free_seq_ids: (0..batch_seqs).rev().collect(),
            reserved_cells: 0,
            waiting: None,
        })
    }

    /// Runs until every handle is dropped and no work is left.
    fn serve(&mut self, jobs: &Receiver<Job>) {
        loop {
            if !self.admit(jobs) {
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

    /// Starts as many waiting jobs as slots and KV cells allow. Blocks only when idle.
    /// Returns false once the channel is closed and nothing is left to do.
    fn admit(&mut self, jobs: &Receiver<Job>) -> bool {
        while !self.free_seq_ids.is_empty() {
            let job = match self.waiting.take() {
                Some(job) => job,
                None if self.active.is_empty() => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return false,
                },
                None => match jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return true,
                },
            };
            if job.events.is_closed() {
                self.stats.queued.fetch_sub(1, Relaxed);
                self.stats.cancelled_total.fetch_add(1, Relaxed);
                continue;
            }
            match self.prepare(&job.request) {
                Err(err) => {
                    self.stats.queued.fetch_sub(1, Relaxed);
                    let _ = job.events.send(GenerationEvent::Failed(err));
                }
                Ok((prompt, max_tokens)) => {
                    let reserve = u32::try_from(prompt.len()).unwrap_or(u32::MAX).saturating_add(max_tokens);
                    if self.reserved_cells + reserve > self.config.context {
                        // Not enough KV now; wait for running sequences to finish.
                        self.waiting = Some(job);
                        return true;
                    }
                    self.stats.queued.fetch_sub(1, Relaxed);
                    self.start_sequence(job, prompt, max_tokens, reserve);
                }
            }
        }
        true
    }

    /// Renders and tokenizes the prompt and checks it against the context.
    fn prepare(&self, request: &GenerationRequest) -> Result<(Vec<LlamaToken>, u32), EngineError> {
        let text = self.template.render(&request.messages, request.tools.as_ref())?;
        let vocab = self.model.vocab();
        let bos_text = vocab.token_to_piece(vocab.bos(), true, None);
        let add_bos = vocab.should_add_bos() && !text.as_bytes().starts_with(&bos_text);
        let prompt = vocab.tokenize(text.as_bytes(), add_bos, true);
        let context = self.config.context;
        let prompt_tokens = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        let too_long = |max_tokens: u32| EngineError::ContextLengthExceeded {
            context,
            requested: u64::from(prompt_tokens) + u64::from(max_tokens),
            prompt_tokens,
            max_tokens,
        };
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

    fn start_sequence(&mut self, job: Job, prompt: Vec<LlamaToken>, max_tokens: u32, reserve: u32) {
        let Some(seq_id) = self.free_seq_ids.pop() else { return };
        let prompt_tokens = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        debug!(seq_id, prompt_tokens, max_tokens, "sequence admitted");
        let _ = job.events.send(GenerationEvent::Started { prompt_tokens });
        self.reserved_cells += reserve;
        self.stats.active.fetch_add(1, Relaxed);
        self.active.push(Sequence {
            seq_id,
            events: job.events,
            prompt,
            prefilled: 0,
            n_past: 0,
            pending: None,
            sampler: sampler_for(&job.request.sampling),
            assembler: TextAssembler::new(&job.request.sampling.stop),
            completion_tokens: 0,
            max_tokens,
            reserved: reserve,
            logits_at: None,
        });
    }

    /// A sequence whose client went away stops here, before another step is spent on it.
    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].events.is_closed() {
                let seq = self.active.swap_remove(i);
                debug!(seq_id = seq.seq_id, "sequence cancelled");
                self.stats.cancelled_total.fetch_add(1, Relaxed);
                self.release(&seq);
            } else {
                i += 1;
            }
        }
    }

    fn release(&mut self, seq: &Sequence) {
        if let Err(e) = self.ctx.clear_kv_cache_seq(u32::try_from(seq.seq_id).ok(), None, None) {
            warn!(error = %e, "could not clear a sequence's KV cells");
        }
        self.reserved_cells -= seq.reserved;
        self.free_seq_ids.push(seq.seq_id);
        self.stats.active.fetch_sub(1, Relaxed);
        // The caller has already removed `seq` from `active`.
        self.publish_kv_usage();
    }

    /// One decode: every sequence's pending token, then prompt chunks up to the step budget.
    fn step(&mut self) {
        self.batch.clear();
        let mut n: i32 = 0;
        let mut prompt_tokens_in_batch = 0u64;
        for seq in &mut self.active {
            seq.logits_at = None;
            if let Some(token) = seq.pending {
                // Cannot fail: the batch holds STEP_TOKENS >= parallel tokens.
                let _ = self.batch.add(token, seq.n_past, &[seq.seq_id], true);
                seq.logits_at = Some(n);
                n += 1;
            }
        }
        let mut budget = STEP_TOKENS as usize - usize::try_from(n).unwrap_or(0);
        for seq in &mut self.active {
            if budget == 0 {
                break;
            }
            let remaining = seq.prompt.len() - seq.prefilled;
            if remaining == 0 {
                continue;
            }
            let take = remaining.min(budget);
            for offset in 0..take {
                let i = seq.prefilled + offset;
                let last = i + 1 == seq.prompt.len();
                let pos = i32::try_from(i).unwrap_or(i32::MAX);
                let _ = self.batch.add(seq.prompt[i], pos, &[seq.seq_id], last);
                if last {
                    seq.logits_at = Some(n);
                }
                n += 1;
            }
            seq.prefilled += take;
            seq.n_past = i32::try_from(seq.prefilled).unwrap_or(i32::MAX);
            budget -= take;
            prompt_tokens_in_batch += take as u64;
        }
        let started = Instant::now();
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            error!(error = %e, "decode failed; failing every active sequence");
            let err = EngineError::Decode { reason: e.to_string() };
            for seq in std::mem::take(&mut self.active) {
                self.release(&seq);
                let _ = seq.events.send(GenerationEvent::Failed(err.clone()));
            }
            return;
        }
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
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
        let mut i = 0;
        while i < self.active.len() {
            let seq = &mut self.active[i];
            // Tokens that were pending are now in the KV cache.
            if seq.pending.take().is_some() {
                seq.n_past += 1;
            }
            let Some(at) = seq.logits_at else {
                i += 1;
                continue;
            };
            let token = seq.sampler.sample(&self.ctx, at);
            let finish = if vocab.is_eog(token) {
                Some(FinishReason::Stop)
            } else {
                seq.completion_tokens += 1;
                self.stats.completion_tokens_total.fetch_add(1, Relaxed);
                let out = seq.assembler.push(&vocab.token_to_piece(token, false, None));
                if !out.text.is_empty() {
                    let _ = seq.events.send(GenerationEvent::Text(out.text));
                }
                if out.stopped {
                    Some(FinishReason::Stop)
                } else if seq.completion_tokens >= seq.max_tokens
                    || u32::try_from(seq.n_past).unwrap_or(u32::MAX) + 1 >= self.config.context
                {
                    Some(FinishReason::Length)
                } else {
                    seq.pending = Some(token);
                    None
                }
            };
            match finish {
                None => i += 1,
                Some(reason) => {
                    let mut seq = self.active.swap_remove(i);
                    // Free the slot first: whoever sees `Finished` sees the engine's stats settled.
                    self.release(&seq);
                    self.stats.finished_total.fetch_add(1, Relaxed);
                    let tail = seq.assembler.finish();
                    if reason == FinishReason::Length && !tail.is_empty() {
                        let _ = seq.events.send(GenerationEvent::Text(tail));
                    }
                    let _ = seq.events.send(GenerationEvent::Finished {
                        reason,
                        prompt_tokens: u32::try_from(seq.prompt.len()).unwrap_or(u32::MAX),
                        completion_tokens: seq.completion_tokens,
                    });
                }
            }
        }
    }

    fn publish_kv_usage(&self) {
        let used: i64 = self.active.iter().map(|s| i64::from(s.n_past)).sum();
        self.stats.kv_cells_used.store(u64::try_from(used).unwrap_or(0), Relaxed);
    }
}

fn sampler_for(params: &SamplingParams) -> LlamaSampler {
    if params.temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    let seed = params.seed.unwrap_or_else(|| RandomState::new().build_hasher().finish());
    // llama.cpp seeds are 32-bit: fold the 64-bit seed so every bit matters.
    #[allow(clippy::cast_possible_truncation)]
    let seed = (seed ^ (seed >> 32)) as u32;
    let mut chain = Vec::with_capacity(3);
    if params.top_p < 1.0 {
        chain.push(LlamaSampler::top_p(params.top_p, 1));
    }
    chain.push(LlamaSampler::temp(params.temperature));
    chain.push(LlamaSampler::dist(seed));
    LlamaSampler::chain_simple(chain)
}
