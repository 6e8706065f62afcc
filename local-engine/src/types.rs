use tokio::sync::mpsc;

use crate::{EngineError, TemplateMessage};

/// Sampling settings for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass; 1.0 disables it.
    pub top_p: f32,
    /// Seed for the random sampler; `None` picks one.
    pub seed: Option<u64>,
    /// Generation stops before any of these strings; they are not returned.
    pub stop: Vec<String>,
    /// The answer may be a tool call, which the grammar opens `{"` (a text answer never does):
    /// a call is never cut by a stop string, which applies to text answers only.
    pub stops_spare_calls: bool,
    /// Most completion tokens; `None` means up to the context.
    pub max_tokens: Option<u32>,
    /// Report the generated tokens' log-probabilities (summarised in `Finished::confidence`).
    pub logprobs: bool,
    /// Report every generated token as a [`GenerationEvent::Token`] with its log-probability and
    /// this many of the most likely tokens at its step (`OpenAI`'s `top_logprobs`, 0 to 20);
    /// `None` reports none.
    pub top_logprobs: Option<u8>,
    /// `OpenAI`'s frequency penalty (-2 to 2): subtracted from a token's logit once per time it
    /// occurs in the completion so far. 0 disables it.
    pub frequency_penalty: f32,
    /// `OpenAI`'s presence penalty (-2 to 2): subtracted once from the logit of every token that
    /// occurs in the completion so far. 0 disables it.
    pub presence_penalty: f32,
    /// Added to the logits of these token ids before sampling (`OpenAI`'s `logit_bias`, -100 to
    /// 100; -100 in effect bans a token).
    pub logit_bias: Vec<(i32, f32)>,
    /// A llama.cpp grammar (GBNF, root rule `root`) every completion must match
    /// (see [`crate::grammar`]).
    pub grammar: Option<String>,
    /// Whether a free-form JSON answer (`response_format: json_object`) is closed inside
    /// `max_tokens`: when only enough is left to close it, its open strings, values and
    /// containers are closed and it ends with `Length`: a long answer still parses, and still reads as cut.
    pub close_json: JsonClosing,
}

/// Which answers [`SamplingParams::close_json`] closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsonClosing {
    /// None.
    #[default]
    Off,
    /// The whole completion is one JSON document.
    Always,
    /// A JSON answer beside tool calls, not a call: the tool-call grammar opens calls `{"` and
    /// such answers `{` and whitespace, so a call cut by the budget stays cut instead of passing
    /// for a whole call.
    UnlessACall,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
            stops_spare_calls: false,
            max_tokens: None,
            logprobs: false,
            top_logprobs: None,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            grammar: None,
            close_json: JsonClosing::Off,
        }
    }
}

/// One chat generation for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// The conversation, rendered with the model's chat template.
    pub messages: Vec<TemplateMessage>,
    /// Tool definitions (JSON), passed to templates that render them.
    pub tools: Option<serde_json::Value>,
    /// How to sample.
    pub sampling: SamplingParams,
    /// Continue this text as it is (a legacy completion): `messages` and the chat template are
    /// not used.
    pub raw_prompt: Option<String>,
    /// Whose request this is: slots and queue places are shared fairly among tenants (see
    /// `fair_share`); requests without one are one group.
    pub tenant: Option<Tenant>,
}

/// A tenant, for sharing the engine fairly among tenants (see `fair_share`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its name.
    pub name: std::sync::Arc<str>,
    /// Its share relative to other tenants' (at least 1): a tenant of weight 2 gets twice the
    /// slots and queue places of a tenant of weight 1 when both want more than they hold.
    pub weight: u32,
}

impl Tenant {
    /// A tenant of weight 1.
    pub fn named(name: &str) -> Self {
        Self { name: std::sync::Arc::from(name), weight: 1 }
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn or a stop string was produced.
    Stop,
    /// `max_tokens` (or the context) was reached.
    Length,
}

impl FinishReason {
    /// The `OpenAI` `finish_reason` string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What the engine reports for a sequence, in order: `Started`, any number of `Text`, then
/// `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// The prompt was accepted; it has this many tokens.
    Started {
        /// Tokens in the rendered prompt.
        prompt_tokens: u32,
    },
    /// A generated token, when `SamplingParams::top_logprobs` asked for them; sent before the
    /// `Text` that holds it. The end-of-turn token is not reported; nor is text the engine adds
    /// itself (the closing of a JSON answer).
    Token(TokenLogprob),
    /// A piece of completion text: always whole UTF-8 characters, never part of a stop string.
    Text(String),
    /// Generation ended.
    Finished {
        /// Why.
        reason: FinishReason,
        /// Tokens in the rendered prompt.
        prompt_tokens: u32,
        /// Tokens generated.
        completion_tokens: u32,
        /// The generated tokens' log-probabilities under the model (before sampling changes
        /// them), when `SamplingParams::logprobs` asked for them.
        confidence: Option<Confidence>,
    },
    /// Generation failed; nothing follows.
    Failed(EngineError),
}

/// One generated token and how likely the model found it and its alternatives (natural log,
/// from the model's logits before sampling changes them).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's bytes (a token can hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens at this step, most likely first, as many as asked for.
    pub top: Vec<(Vec<u8>, f32)>,
}

/// How sure the model was of what it generated: the log-probabilities (natural log, from the
/// model's logits before sampling) of the tokens it emitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Confidence {
    /// Mean over the generated tokens (the end-of-turn token included).
    pub mean_logprob: f32,
    /// The least likely generated token's.
    pub min_logprob: f32,
    /// Tokens counted.
    pub tokens: u32,
}

/// The receiving end of one generation. Dropping it cancels the generation at the next step,
/// and one still waiting for a slot leaves the queue at once (its place goes to the next request).
#[derive(Debug)]
pub struct GenerationStream {
    events: mpsc::UnboundedReceiver<GenerationEvent>,
    place: Option<crate::engine::QueuePlace>,
}

impl GenerationStream {
    pub(crate) fn new(events: mpsc::UnboundedReceiver<GenerationEvent>, place: crate::engine::QueuePlace) -> Self {
        Self { events, place: Some(place) }
    }

    /// The next event; `None` once the generation has ended and every event was read.
    pub async fn recv(&mut self) -> Option<GenerationEvent> {
        self.events.recv().await
    }
}

impl futures::Stream for GenerationStream {
    type Item = GenerationEvent;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<GenerationEvent>> {
        self.get_mut().events.poll_recv(cx)
    }
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        if let Some(place) = self.place.take() {
            place.leave();
        }
    }
}
