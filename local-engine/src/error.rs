/// Why the engine could not serve a request.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// The prompt plus the requested completion does not fit in the context.
    #[error("This model's maximum context length is {context} tokens. However, you requested {requested} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.")]
    ContextLengthExceeded {
        /// Total context (KV cells) of the engine.
        context: u32,
        /// Prompt plus completion tokens asked for.
        requested: u64,
        /// Tokens in the rendered prompt.
        prompt_tokens: u32,
        /// Completion tokens asked for.
        max_tokens: u32,
    },
    /// The prompt's text is too long to fit in the context whatever its tokens (found before
    /// tokenizing it, so its exact count is not known).
    #[error("This model's maximum context length is {context} tokens. However, the messages are at least {at_least} tokens long (counted without tokenizing them, as they cannot fit). Please reduce the length of the messages.")]
    PromptCannotFit {
        /// Context (KV cells) one sequence may use.
        context: u32,
        /// Fewest tokens the prompt's text can make.
        at_least: u32,
    },
    /// The waiting queue is full.
    #[error("the local engine is overloaded: {queue} requests are already waiting")]
    Overloaded {
        /// Configured queue bound.
        queue: usize,
    },
    /// The queue was full and this waiting request gave its place to a request of a tenant
    /// holding less of the engine (see `fair_share`).
    #[error("the local engine is overloaded: this request gave its place among the {queue} waiting to a request of a tenant holding less of the engine")]
    Displaced {
        /// Configured queue bound.
        queue: usize,
    },
    /// The engine thread has stopped or never loaded its model.
    #[error("the local engine is unavailable: {reason}")]
    Unavailable {
        /// Why, for the log.
        reason: String,
    },
    /// The chat template could not be rendered for these messages.
    #[error("the chat template could not render these messages: {reason}")]
    Template {
        /// The template engine's message.
        reason: String,
    },
    /// An embedding input has more tokens than the model's context.
    #[error("This model's maximum context length is {max} tokens, however you requested {tokens} tokens in an input. Please reduce the length of the input.")]
    InputTooLong {
        /// Tokens in the input, `[CLS]` and `[SEP]` included.
        tokens: u64,
        /// The model's context.
        max: u64,
    },
    /// A sampling parameter the model cannot take (a `logit_bias` token id outside its vocabulary).
    #[error("{param}: {reason}")]
    InvalidParameter {
        /// The request field.
        param: &'static str,
        /// Why.
        reason: String,
    },
    /// The structured-output grammar was refused by llama.cpp.
    #[error("the structured-output grammar could not be used: {reason}")]
    Grammar {
        /// Why.
        reason: String,
    },
    /// llama.cpp failed while decoding.
    #[error("the local engine failed while decoding: {reason}")]
    Decode {
        /// llama.cpp's error.
        reason: String,
    },
}
