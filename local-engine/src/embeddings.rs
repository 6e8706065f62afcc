//! Sentence embeddings on llama.cpp: a BERT-style GGUF model (all-MiniLM-L6-v2) run in-process,
//! mean-pooled and L2-normalised, for an OpenAI-compatible `/v1/embeddings`.
//!
//! A llama.cpp context borrows its model and is not `Sync`, so, as for generation, one OS thread
//! owns the model and the context; [`Embedder`] is a `Send + Sync` handle that sends it work over a
//! channel and waits for the answer. Several inputs of one call share a batch; calls in progress
//! take turns a batch each, so a query's single input waits for at most one batch of a large
//! ingestion call queued before it, not for the whole call. [`Embedder::embed`] blocks, so async
//! callers run it in `spawn_blocking`.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::collections::VecDeque;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde::Deserialize;
use tracing::{error, info};

use crate::EngineError;

/// llama.cpp's limit on sequences in one context (`LLAMA_MAX_SEQ`).
const MAX_SEQUENCES: u32 = 256;

/// Where the embedding model is and how it runs.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// Path of the GGUF embedding model (BERT architecture, e.g. all-MiniLM-L6-v2).
    pub model_path: PathBuf,
    /// CPU threads for the forward pass; 0 uses every available core.
    #[serde(default)]
    pub threads: u32,
    /// Tokens in one llama.cpp batch: inputs are packed into batches of at most this many tokens
    /// (raised to the model's context when smaller, so that any valid input fits).
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: u32,
}

const fn default_max_batch_tokens() -> u32 {
    512
}

impl EmbeddingConfig {
    /// A configuration with automatic threads and 512-token batches.
    pub fn with_model(model_path: impl Into<PathBuf>) -> Self {
        Self { model_path: model_path.into(), threads: 0, max_batch_tokens: default_max_batch_tokens() }
    }
}

/// Embeddings, one per input, and the inputs' token total.
pub type EmbedResult = Result<(Vec<Vec<f32>>, u64), EngineError>;

/// Work for the embedding thread.
enum Job {
    Embed { inputs: Vec<String>, abandoned: Arc<AtomicBool>, reply: SyncSender<EmbedResult> },
    CountTokens { text: String, reply: SyncSender<Result<usize, EngineError>> },
}

/// A loaded embedding model. `Send + Sync`: share it (e.g. in an `Arc`) and call it from any thread.
pub struct Embedder {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    dimensions: usize,
    max_input_tokens: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dimensions", &self.dimensions)
            .field("max_input_tokens", &self.max_input_tokens)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the model and creates its context on a dedicated thread; returns once it is ready.
    pub fn load(config: &EmbeddingConfig) -> Result<Self, EngineError> {
        if let Some(reason) = not_an_embedding_model(&config.model_path) {
            return Err(unavailable(reason));
        }
        let (jobs, receiver) = channel();
        let (ready, ready_rx) = sync_channel(1);
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("local-embeddings".into())
            .spawn(move || run(&config, &receiver, &ready))
            .map_err(|e| EngineError::Unavailable { reason: format!("cannot spawn the embedding thread: {e}") })?;
        match ready_rx.recv() {
            Ok(Ok((dimensions, max_input_tokens))) => {
                Ok(Self { jobs: Some(jobs), thread: Some(thread), dimensions, max_input_tokens })
            }
            Ok(Err(err)) => {
                let _ = thread.join();
                Err(err)
            }
            Err(_) => {
                let _ = thread.join();
                Err(EngineError::Unavailable { reason: "the embedding thread stopped while loading".into() })
            }
        }
    }

    /// Length of each embedding vector (384 for all-MiniLM-L6-v2).
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// The most tokens one input may have, special tokens included: the model's context (512).
    pub fn max_input_tokens(&self) -> usize {
        self.max_input_tokens
    }

    /// Tokens the model sees for `text`, with the leading `[CLS]` and trailing `[SEP]`.
    pub fn count_tokens(&self, text: &str) -> Result<usize, EngineError> {
        let (reply, answer) = sync_channel(1);
        self.send(Job::CountTokens { text: text.to_owned(), reply })?;
        answer.recv().map_err(|_| stopped())?
    }

    /// L2-normalised mean-pooled embeddings, one per input, plus the prompt token total.
    ///
    /// An input with more than [`Self::max_input_tokens`] tokens fails the whole call with
    /// [`EngineError::InputTooLong`]. Inputs are packed into as few llama.cpp batches as fit.
    pub fn embed(&self, inputs: &[String]) -> Result<(Vec<Vec<f32>>, u64), EngineError> {
        self.embed_unless_abandoned(inputs, Arc::new(AtomicBool::new(false)))
    }

    /// [`Self::embed`], stopped before its next batch once `abandoned` is set (the caller went
    /// away): a large request nobody waits for must not hold up the ones queued behind it.
    pub fn embed_unless_abandoned(&self, inputs: &[String], abandoned: Arc<AtomicBool>) -> Result<(Vec<Vec<f32>>, u64), EngineError> {
        if inputs.is_empty() {
            return Ok((Vec::new(), 0));
        }
        self.submit(inputs, abandoned)?.recv().map_err(|_| stopped())?
    }

    /// Queues a call without waiting: its answer arrives on the returned receiver (as
    /// [`Self::embed_unless_abandoned`]'s would). Calls take turns a batch each.
    pub fn submit(&self, inputs: &[String], abandoned: Arc<AtomicBool>) -> Result<Receiver<EmbedResult>, EngineError> {
        let (reply, answer) = sync_channel(1);
        self.send(Job::Embed { inputs: inputs.to_vec(), abandoned, reply })?;
        Ok(answer)
    }

    fn send(&self, job: Job) -> Result<(), EngineError> {
        self.jobs.as_ref().ok_or_else(stopped)?.send(job).map_err(|_| stopped())
    }
}

impl Drop for Embedder {
    /// Stops the thread and frees the context and the model. No call can be in flight here
    /// (they all borrow `self`), so this waits only for the thread to notice the closed channel.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn stopped() -> EngineError {
    EngineError::Unavailable { reason: "the embedding thread has stopped".into() }
}

fn unavailable(reason: String) -> EngineError {
    EngineError::Unavailable { reason }
}

/// Why the GGUF file at `path` is not an embedding model this embedder can run, if it is not:
/// a decoder (a chat model) has no pooling type, and running it as an encoder crashes llama.cpp.
pub fn not_an_embedding_model(path: &std::path::Path) -> Option<String> {
    let Some(gguf) = llama_cpp_2::gguf::GgufContext::from_file(path) else {
        return Some(format!("{} is not a readable GGUF file", path.display()));
    };
    let key = gguf.find_key("general.architecture");
    let architecture = if key < 0 { None } else { gguf.val_str(key) };
    let Some(architecture) = architecture else {
        return Some(format!("{} names no general.architecture", path.display()));
    };
    (gguf.find_key(&format!("{architecture}.pooling_type")) < 0).then(|| {
        format!(
            "{} is not an embedding model ({architecture} with no {architecture}.pooling_type; a BERT-style sentence-embedding GGUF such as all-MiniLM-L6-v2 is)",
            path.display()
        )
    })
}

/// The embedding thread: loads, reports readiness (dimensions, context), then serves jobs until
/// every handle is gone.
fn run(config: &EmbeddingConfig, jobs: &Receiver<Job>, ready: &SyncSender<Result<(usize, usize), EngineError>>) {
    let loaded = crate::engine::backend().and_then(|backend| {
        let params = LlamaModelParams::default().with_n_gpu_layers(0);
        LlamaModel::load_from_file(backend, &config.model_path, &params)
            .map_err(|e| unavailable(format!("cannot load {}: {e}", config.model_path.display())))
            .map(|model| (backend, model))
    });
    let (backend, model) = match loaded {
        Ok(pair) => pair,
        Err(err) => {
            error!(error = %err, "embedding model could not load");
            let _ = ready.send(Err(err));
            return;
        }
    };
    let mut worker = match Worker::new(config, backend, &model) {
        Ok(w) => w,
        Err(err) => {
            error!(error = %err, "embedding model could not start");
            let _ = ready.send(Err(err));
            return;
        }
    };
    info!(
        model = %config.model_path.display(),
        dimensions = worker.dimensions,
        context = worker.max_input_tokens,
        batch_tokens = worker.batch_tokens,
        "embedding model ready"
    );
    if ready.send(Ok((worker.dimensions, worker.max_input_tokens))).is_err() {
        return;
    }
    let mut calls = VecDeque::new();
    loop {
        if calls.is_empty() {
            let Ok(job) = jobs.recv() else { return };
            worker.take(job, &mut calls);
        }
        // What arrived during the last batch joins the turns.
        while let Ok(job) = jobs.try_recv() {
            worker.take(job, &mut calls);
        }
        let Some(mut call) = calls.pop_front() else { continue };
        match worker.next_batch(&mut call) {
            Some(result) => {
                let _ = call.reply.send(result);
            }
            None => calls.push_back(call),
        }
    }
}

/// An embedding call in progress: its inputs' tokens and the embeddings of those done so far.
struct Call {
    tokenized: Vec<Vec<LlamaToken>>,
    embeddings: Vec<Vec<f32>>,
    total: u64,
    abandoned: Arc<AtomicBool>,
    reply: SyncSender<EmbedResult>,
}

/// The model, its context and a reusable batch, owned by the embedding thread.
struct Worker<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    dimensions: usize,
    max_input_tokens: usize,
    /// Tokens in one batch (the context's `n_batch` = `n_ubatch`: a non-causal model encodes a
    /// batch in one pass).
    batch_tokens: usize,
    /// Sequences (inputs) in one batch.
    batch_sequences: usize,
}

impl<'m> Worker<'m> {
    fn new(
        config: &EmbeddingConfig,
        backend: &llama_cpp_2::llama_backend::LlamaBackend,
        model: &'m LlamaModel,
    ) -> Result<Self, EngineError> {
        let context = model.n_ctx_train();
        let dimensions = usize::try_from(model.n_embd()).unwrap_or(0);
        if context == 0 || dimensions == 0 {
            return Err(unavailable(format!("{} is not an embedding model", config.model_path.display())));
        }
        let batch_tokens = config.max_batch_tokens.max(context);
        // Every input has at least [CLS] and [SEP].
        let batch_sequences = (batch_tokens / 2).clamp(1, MAX_SEQUENCES);
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
        } else {
            config.threads
        };
        let threads = i32::try_from(threads).unwrap_or(i32::MAX);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(batch_tokens))
            .with_n_batch(batch_tokens)
            .with_n_ubatch(batch_tokens)
            .with_n_seq_max(batch_sequences)
            // One context window shared by all sequences (a BERT model keeps no KV cache; this
            // only stops llama.cpp from splitting n_ctx per sequence).
            .with_kv_unified(true)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_embeddings(true)
            .with_pooling_type(LlamaPoolingType::Mean);
        let ctx = model
            .new_context(backend, params)
            .map_err(|e| unavailable(format!("cannot create an embedding context: {e}")))?;
        Ok(Self {
            model,
            ctx,
            batch: LlamaBatch::new(batch_tokens as usize, 1),
            dimensions,
            max_input_tokens: context as usize,
            batch_tokens: batch_tokens as usize,
            batch_sequences: batch_sequences as usize,
        })
    }

    /// `[CLS] text [SEP]`; special-token text in the input is treated as plain text.
    fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        self.model.vocab().tokenize(text.as_bytes(), true, false)
    }

    /// Answers a token count at once; tokenizes a call's inputs and queues it for its batches
    /// (or answers its error: an input too long fails the whole call before any batch).
    fn take(&self, job: Job, calls: &mut VecDeque<Call>) {
        match job {
            Job::CountTokens { text, reply } => {
                let _ = reply.send(Ok(self.tokenize(&text).len()));
            }
            Job::Embed { inputs, reply, .. } if inputs.is_empty() => {
                let _ = reply.send(Ok((Vec::new(), 0)));
            }
            Job::Embed { inputs, abandoned, reply } => {
                let tokenized: Vec<Vec<LlamaToken>> = inputs.iter().map(|text| self.tokenize(text)).collect();
                if let Some(tokens) = tokenized.iter().map(Vec::len).find(|&n| n > self.max_input_tokens) {
                    let _ = reply.send(Err(EngineError::InputTooLong { tokens: tokens as u64, max: self.max_input_tokens as u64 }));
                    return;
                }
                let total = tokenized.iter().map(|t| t.len() as u64).sum();
                let embeddings = Vec::with_capacity(inputs.len());
                calls.push_back(Call { tokenized, embeddings, total, abandoned, reply });
            }
        }
    }

    /// Encodes the call's next batch (its following inputs, greedily packed); its answer once
    /// every input is done, it failed, or its client went away.
    fn next_batch(&mut self, call: &mut Call) -> Option<EmbedResult> {
        if call.abandoned.load(Ordering::Relaxed) {
            return Some(Err(EngineError::Unavailable { reason: "the embedding request was abandoned by its client".into() }));
        }
        let start = call.embeddings.len();
        let mut end = start;
        let mut tokens = 0;
        while end < call.tokenized.len() && end - start < self.batch_sequences && tokens + call.tokenized[end].len() <= self.batch_tokens {
            tokens += call.tokenized[end].len();
            end += 1;
        }
        if let Err(err) = self.encode(&call.tokenized[start..end], &mut call.embeddings) {
            return Some(Err(err));
        }
        if end < call.tokenized.len() {
            return None;
        }
        Some(Ok((std::mem::take(&mut call.embeddings), call.total)))
    }

    /// Runs one batch (sequence `i` is `inputs[i]`) and appends the normalised pooled embeddings.
    fn encode(&mut self, inputs: &[Vec<LlamaToken>], out: &mut Vec<Vec<f32>>) -> Result<(), EngineError> {
        let decode_error = |reason: String| EngineError::Decode { reason };
        self.batch.clear();
        for (seq, tokens) in inputs.iter().enumerate() {
            let seq = i32::try_from(seq).map_err(|e| decode_error(e.to_string()))?;
            for (pos, &token) in tokens.iter().enumerate() {
                let pos = i32::try_from(pos).map_err(|e| decode_error(e.to_string()))?;
                self.batch.add(token, pos, &[seq], true).map_err(|e| decode_error(e.to_string()))?;
            }
        }
        self.ctx.encode(&mut self.batch).map_err(|e| decode_error(e.to_string()))?;
        for seq in 0..inputs.len() {
            let seq = i32::try_from(seq).map_err(|e| decode_error(e.to_string()))?;
            let pooled = self
                .ctx
                .embeddings_seq_ith(seq)
                .map_err(|e| decode_error(format!("no pooled embedding for sequence {seq}: {e}")))?;
            out.push(normalised(pooled));
        }
        Ok(())
    }
}

/// `v / |v|` (a zero vector stays zero).
fn normalised(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    #[allow(clippy::cast_possible_truncation)]
    v.iter().map(|&x| (f64::from(x) / norm) as f32).collect()
}
