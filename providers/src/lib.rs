//! Everything that answers a chat request: the `OpenAI` wire types, the [`Provider`] trait, the
//! remote providers and the adapter over the embedded engine.
#![forbid(unsafe_code)]

pub mod anthropic;
mod circuit;
mod config;
mod error;
mod local;
mod openai_compatible;
mod pool;
mod provider;
mod retry;
mod secret;
mod transport;
pub mod wire;

pub use circuit::{counts_against_provider, Breaker, BreakerConfig, Guarded};
pub use config::{ModelPrice, ProviderConfig, ProviderKind};
pub use error::ProviderError;
pub use local::LocalProvider;
pub use openai_compatible::{decode_stream, OpenAiCompatible};
pub use pool::{HeldLease, Lease, Pool};
pub use provider::{collect_stream, peek_first, ChunkStream, Provider, ResponseEvents};
pub use retry::{retryable_status, RetryPolicy};
pub use transport::{Destination, HttpClient, SendError, UpstreamResponse, CLIENT_REQUEST_ID};
