//! The embedded local engine: one OS thread owns a llama.cpp model and context and serves
//! generation jobs sent to it over a bounded channel.
//!
//! Nothing from `llama-cpp-2` leaves this crate: callers see [`EngineConfig`], [`EngineHandle`],
//! [`GenerationRequest`], [`GenerationEvent`] and [`EngineStats`], and for sentence embeddings
//! [`EmbeddingConfig`] and [`Embedder`].

mod config;
mod embeddings;
mod engine;
mod error;
mod fair_share;
mod gguf_file;
mod host_cache;
mod json_closer;
mod kernels;
mod load;
mod prefix_cache;
mod sampling;
mod scheduler;
mod seq_state;
mod special;
mod stats;
mod template;
mod text;
mod types;

pub mod grammar;

pub use config::EngineConfig;
pub use embeddings::{not_an_embedding_model, Embedder, EmbeddingConfig};
pub use engine::{EngineHandle, Startup};
pub use error::EngineError;
pub use fair_share::TenantShare;
pub use gguf_file::truncation as gguf_truncation;
pub use kernels::batched_kernels;
pub use load::{Load, Prediction, Timings};
pub use stats::{EngineStats, EngineStatsSnapshot};
pub use template::{chat_template_of, ChatTemplate, TemplateMessage};
pub use text::{TextAssembler, Utf8Decoder};
pub use types::{Confidence, FinishReason, JsonClosing, GenerationEvent, GenerationRequest, GenerationStream, SamplingParams, Tenant, TokenLogprob};
