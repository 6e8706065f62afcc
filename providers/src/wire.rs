//! The `OpenAI` chat-completions wire format. Fields Switchyard does not use are kept in `extra`
//! and written back out, so requests are forwarded faithfully.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// `auto`, the local name, `provider/model` or a bare model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Legacy completion-token cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Completion-token cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature, 0..=2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling, 0..=1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Number of choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Tool definitions, forwarded as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    /// Tool choice, forwarded as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Response format, forwarded as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// A legacy completion (`POST /v1/completions`): the one user message is a raw prompt to
    /// continue, without a chat template; providers call their completions endpoint. Never read
    /// from or written to the wire.
    #[serde(skip)]
    pub raw_prompt: bool,
    /// The output-token limit a provider is sent when the request sets none (a budgeted
    /// tenant's `default_max_tokens`: what its reservation counted on). Never read from or
    /// written to the wire; the local engine, never reserved for, ignores it.
    #[serde(skip)]
    pub output_cap: Option<u32>,
    /// The tenant the request is served for, with its weight: the local engine shares its slots
    /// and queue places fairly among tenants. Never read from or written to the wire.
    #[serde(skip)]
    pub tenant: Option<local_engine::Tenant>,
    /// Every other field, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// The first field set that asks for what only `OpenAI`'s own models give — the deprecated
    /// functions API, audio, web search — with what to say of it (`who`: "Anthropic models",
    /// "the local model"): a translation that cannot carry it refuses it by name rather than
    /// answering as if it were not there.
    pub fn openai_only_field(&self, who: &str) -> Option<(&'static str, String)> {
        let set = |field: &str| self.extra.get(field).is_some_and(|v| !v.is_null());
        let why = if set("functions") {
            ("functions", format!("the deprecated functions API is not supported by {who}; send tools"))
        } else if set("function_call") {
            ("function_call", format!("the deprecated functions API is not supported by {who}; send tool_choice"))
        } else if set("audio") {
            ("audio", format!("audio output is not supported by {who}"))
        } else if set("web_search_options") {
            ("web_search_options", format!("web_search_options is not supported by {who}"))
        } else if self.extra.get("modalities").and_then(Value::as_array).is_some_and(|m| m.iter().any(|x| x.as_str() != Some("text"))) {
            ("modalities", format!("{who} answer in text only"))
        } else {
            return None;
        };
        Some(why)
    }

    /// For a model that knows only a tool list and a mode: `tool_choice: {"type":
    /// "allowed_tools", …}` becomes the tools it allows and its mode (`auto` or `required`);
    /// allowing none in `auto` mode is no tools at all. Other requests are left as they are.
    pub fn apply_allowed_tools(&mut self) {
        let Some(allowed) = self.tool_choice.as_ref().filter(|c| c.get("type").and_then(Value::as_str) == Some("allowed_tools")) else { return };
        let named = |tool: &Value| -> Option<(String, String)> {
            let kind = tool.get("type")?.as_str()?;
            Some((kind.to_owned(), tool.get(kind)?.get("name")?.as_str()?.to_owned()))
        };
        let listed: Vec<(String, String)> = allowed.pointer("/allowed_tools/tools").and_then(Value::as_array).into_iter().flatten().filter_map(named).collect();
        let mode = allowed.pointer("/allowed_tools/mode").cloned().unwrap_or_else(|| Value::String("auto".into()));
        if let Some(Value::Array(tools)) = &mut self.tools {
            tools.retain(|tool| named(tool).is_some_and(|n| listed.contains(&n)));
        }
        if self.tools.as_ref().and_then(Value::as_array).is_none_or(Vec::is_empty) {
            self.tools = None;
            self.tool_choice = None;
        } else {
            self.tool_choice = Some(mode);
        }
    }

    /// The request as a model that knows only a tool list and a mode sees it
    /// ([`Self::apply_allowed_tools`]); borrowed when there is nothing to apply.
    pub fn with_allowed_tools_applied(&self) -> std::borrow::Cow<'_, Self> {
        if self.tool_choice.as_ref().and_then(|c| c.get("type")).and_then(Value::as_str) == Some("allowed_tools") {
            let mut narrowed = self.clone();
            narrowed.apply_allowed_tools();
            std::borrow::Cow::Owned(narrowed)
        } else {
            std::borrow::Cow::Borrowed(self)
        }
    }

    /// Where the request uses a custom (free-form input) tool, a definition or an earlier call,
    /// as the parameter a model with function tools only names in its refusal.
    pub fn custom_tool_param(&self) -> Option<String> {
        let custom = |t: &Value| t.get("type").and_then(Value::as_str) == Some("custom");
        if let Some(i) = self.tools.as_ref().and_then(Value::as_array).and_then(|tools| tools.iter().position(custom)) {
            return Some(format!("tools[{i}].type"));
        }
        self.messages.iter().enumerate().find_map(|(i, m)| {
            let j = m.extra.get("tool_calls").and_then(Value::as_array)?.iter().position(custom)?;
            Some(format!("messages[{i}].tool_calls[{j}].type"))
        })
    }

    /// The completion-token cap, preferring `max_completion_tokens`.
    pub fn max_output_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// The raw prompt of a legacy completion: the first message's text.
    pub fn prompt_text(&self) -> Option<String> {
        self.messages.first().and_then(|m| m.content.as_ref()).and_then(MessageContent::text)
    }

    /// True when the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// True when the client asked for the usage chunk at the end of a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
    }
}

/// `stream_options`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with usage and no choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// Every other field, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop sequence.
    One(String),
    /// Several stop sequences.
    Many(Vec<String>),
}

impl Stop {
    /// The sequences as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant`, `tool` or `function`.
    pub role: String,
    /// Text, content parts, or null (assistant messages with tool calls).
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// `name`, `tool_calls`, `tool_call_id` and anything else, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Message content: a string or a list of typed parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type":"text","text":…}`, images, audio…).
    Parts(Vec<Value>),
}

impl MessageContent {
    /// The text parts joined, or `None` if a part is not text.
    pub fn text(&self) -> Option<String> {
        match self {
            Self::Text(s) => Some(s.clone()),
            Self::Parts(parts) => {
                let mut out = String::new();
                for part in parts {
                    out.push_str(part_text(part)?);
                }
                Some(out)
            }
        }
    }
}

/// The field of a content part that holds its text: `text` of a text part, `refusal` of an
/// assistant's refusal part; `None` for other parts (images, audio, files).
pub fn text_field(part: &Value) -> Option<&'static str> {
    match part.get("type").and_then(Value::as_str)? {
        "text" => Some("text"),
        "refusal" => Some("refusal"),
        _ => None,
    }
}

/// The text of a text or refusal part.
pub fn part_text(part: &Value) -> Option<&str> {
    part.get(text_field(part)?)?.as_str()
}

/// Token counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
    /// Details, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Usage {
    /// Prompt tokens served from the provider's prompt cache
    /// (`prompt_tokens_details.cached_tokens`), 0 when not reported.
    pub fn cached_prompt_tokens(&self) -> u64 {
        self.extra.get("prompt_tokens_details").and_then(|d| d.get("cached_tokens")).and_then(Value::as_u64).unwrap_or(0)
    }

    /// Usage with the total filled in.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens, extra: Map::new() }
    }
}

/// `chat.completion`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatResponse {
    /// `chatcmpl-…`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// One per `n`.
    pub choices: Vec<Choice>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Backend configuration fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// Every other field, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    /// Position among the choices.
    pub index: u32,
    /// The answer.
    pub message: ResponseMessage,
    /// `stop`, `length`, `tool_calls`, `content_filter`.
    pub finish_reason: Option<String>,
    /// Log probabilities; null unless asked for.
    #[serde(default)]
    pub logprobs: Option<Value>,
    /// Every other field, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The assistant's message in a response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponseMessage {
    /// Always `assistant`.
    pub role: String,
    /// The text; null with tool calls.
    pub content: Option<String>,
    /// A refusal, if any.
    #[serde(default)]
    pub refusal: Option<String>,
    /// `tool_calls`, `annotations` and anything else, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ResponseMessage {
    /// An assistant message with this text.
    pub fn assistant(content: String) -> Self {
        Self { role: "assistant".into(), content: Some(content), refusal: None, extra: Map::new() }
    }
}

/// `chat.completion.chunk`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChunk {
    /// Same for every chunk of one completion.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that answers.
    pub model: String,
    /// Deltas; empty in the final usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Only in the final usage chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Backend configuration fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// Every other field, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatChunk {
    /// True for the final chunk that carries usage and no choices.
    pub fn is_usage_only(&self) -> bool {
        self.choices.is_empty() && self.usage.is_some()
    }
}

/// One choice's delta.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChunkChoice {
    /// Position among the choices.
    pub index: u32,
    /// What is new.
    pub delta: Delta,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<String>,
    /// Log probabilities, if asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    /// Every other field, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The new part of a streamed message.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Delta {
    /// Sent on the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// `tool_calls`, `refusal` and anything else, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Whether an unknown field of a message, delta or choice says anything: providers send `null`,
/// `[]`, `{}` or `""` for what they have nothing of (`OpenAI`'s `"annotations": []` and a first
/// delta's `"refusal": null`, vLLM's `"tool_calls": []`).
pub fn says_something(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Array(items) => !items.is_empty(),
        Value::Object(fields) => !fields.is_empty(),
        Value::String(text) => !text.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

/// `{"error": {...}}`, the body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of an error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// For people.
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error`…
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending request field, if any.
    pub param: Option<String>,
    /// Machine-readable code.
    pub code: Option<String>,
    /// Azure's detail on a content-filter refusal (`{"code": "ResponsibleAIPolicyViolation",
    /// "content_filter_result": {…}}`: which category, how severe), passed on as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub innererror: Option<serde_json::Value>,
}

/// `Deserialize` for a struct whose unknown fields go to its `extra` map, in one pass. serde's
/// `#[serde(flatten)]` does the same by first buffering every field's value (recursively, for
/// nested flattened structs) and reading it a second time: on the proxy path that made parsing an
/// upstream answer the largest single cost of the request. Known fields are matched without
/// allocating; a repeated known field is an error, as with serde's derive. `required` fields
/// must be present; `defaulted` ones (every `Option`) take their default when absent.
macro_rules! deserialize_keeping_extra {
    ($name:ident { required: [$($req:ident),*], defaulted: [$($def:ident),*] }) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
                #[allow(non_camel_case_types)]
                enum Key {
                    $($req,)*
                    $($def,)*
                    Other(String),
                }
                struct KeySeed;
                impl<'de> DeserializeSeed<'de> for KeySeed {
                    type Value = Key;
                    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
                        deserializer.deserialize_str(self)
                    }
                }
                impl Visitor<'_> for KeySeed {
                    type Value = Key;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a field name")
                    }
                    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                        Ok(match key {
                            $(stringify!($req) => Key::$req,)*
                            $(stringify!($def) => Key::$def,)*
                            other => Key::Other(other.to_owned()),
                        })
                    }
                }
                struct StructVisitor;
                impl<'de> Visitor<'de> for StructVisitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!("struct ", stringify!($name)))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$name, A::Error> {
                        $(let mut $req = None;)*
                        $(let mut $def = None;)*
                        let mut extra = Map::new();
                        while let Some(key) = map.next_key_seed(KeySeed)? {
                            match key {
                                $(Key::$req => {
                                    if $req.is_some() {
                                        return Err(de::Error::duplicate_field(stringify!($req)));
                                    }
                                    $req = Some(map.next_value()?);
                                })*
                                $(Key::$def => {
                                    if $def.is_some() {
                                        return Err(de::Error::duplicate_field(stringify!($def)));
                                    }
                                    $def = Some(map.next_value()?);
                                })*
                                Key::Other(key) => {
                                    let value = map.next_value()?;
                                    extra.insert(key, value);
                                }
                            }
                        }
                        Ok(Completed::completed($name {
                            $($req: $req.ok_or_else(|| de::Error::missing_field(stringify!($req)))?,)*
                            $($def: $def.unwrap_or_default(),)*
                            extra,
                        }))
                    }
                }
                deserializer.deserialize_map(StructVisitor)
            }
        }
    };
}

/// What a type fills in after it is read, from the fields it got.
trait Completed: Sized {
    fn completed(self) -> Self {
        self
    }
}

impl Completed for Usage {
    /// A server that leaves `total_tokens` out (or sends 0 beside other counts) has it summed.
    fn completed(mut self) -> Self {
        if self.total_tokens == 0 {
            self.total_tokens = self.prompt_tokens + self.completion_tokens;
        }
        self
    }
}
impl Completed for ChatResponse {}
impl Completed for Choice {}
impl Completed for ResponseMessage {}
impl Completed for ChatChunk {}
impl Completed for ChunkChoice {}
impl Completed for Delta {}

// Lenient where self-hosted servers leave fields out that carry nothing the gateway needs
// (`created`, a single choice's `index`, `total_tokens`): an answer is not failed for them.
deserialize_keeping_extra!(Usage { required: [prompt_tokens, completion_tokens], defaulted: [total_tokens] });
deserialize_keeping_extra!(ChatResponse { required: [id, object, model, choices], defaulted: [created, usage, system_fingerprint] });
deserialize_keeping_extra!(Choice { required: [message], defaulted: [index, finish_reason, logprobs] });
deserialize_keeping_extra!(ResponseMessage { required: [role], defaulted: [content, refusal] });
deserialize_keeping_extra!(ChatChunk { required: [id, object, model, choices], defaulted: [created, usage, system_fingerprint] });
deserialize_keeping_extra!(ChunkChoice { required: [delta], defaulted: [index, finish_reason, logprobs] });
deserialize_keeping_extra!(Delta { required: [], defaulted: [role, content] });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_without_created_index_or_total_tokens_are_read() {
        let answer: ChatResponse = serde_json::from_str(
            r#"{"id":"x","object":"chat.completion","model":"m","choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
        )
        .unwrap();
        assert_eq!((answer.created, answer.choices[0].index), (0, 0));
        assert_eq!(answer.usage.map(|u| u.total_tokens), Some(7));
        let chunk: ChatChunk =
            serde_json::from_str(r#"{"id":"x","object":"chat.completion.chunk","model":"m","choices":[{"delta":{"content":"h"}}]}"#).unwrap();
        assert_eq!((chunk.created, chunk.choices[0].index), (0, 0));
    }

    #[test]
    fn unknown_request_fields_survive_a_round_trip() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi","name":"bob"}],"logit_bias":{"1":2},"user":"u1","stream_options":{"include_usage":true,"x":1}}"#;
        let req: ChatRequest = serde_json::from_str(body).unwrap();
        let back: Value = serde_json::to_value(&req).unwrap();
        let orig: Value = serde_json::from_str(body).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn content_parts_join_text_and_refuse_images() {
        let text = MessageContent::Parts(vec![
            serde_json::json!({"type":"text","text":"a"}),
            serde_json::json!({"type":"text","text":"b"}),
        ]);
        assert_eq!(text.text().as_deref(), Some("ab"));
        let image = MessageContent::Parts(vec![serde_json::json!({"type":"image_url","image_url":{"url":"x"}})]);
        assert_eq!(image.text(), None);
        let refused = MessageContent::Parts(vec![serde_json::json!({"type": "refusal", "refusal": "no"})]);
        assert_eq!(refused.text().as_deref(), Some("no"), "a refusal is text");
    }

    #[test]
    fn response_message_writes_null_content_and_refusal() {
        let m = ResponseMessage { role: "assistant".into(), content: None, refusal: None, extra: Map::new() };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v, serde_json::json!({"role":"assistant","content":null,"refusal":null}));
    }

    #[test]
    fn stop_accepts_string_or_list() {
        let one: Stop = serde_json::from_str(r#""x""#).unwrap();
        let many: Stop = serde_json::from_str(r#"["x","y"]"#).unwrap();
        assert_eq!(one.to_vec(), vec!["x"]);
        assert_eq!(many.to_vec(), vec!["x", "y"]);
    }

    #[test]
    fn unknown_answer_fields_survive_a_round_trip_at_every_level() {
        let body = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","service_tier":"default","choices":[{"index":0,"message":{"role":"assistant","content":"hi","refusal":null,"annotations":[],"tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"stop","logprobs":null,"x":1.5e300}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":{"cached_tokens":1}},"system_fingerprint":"fp"}"#;
        let parsed: ChatResponse = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.usage.as_ref().map(Usage::cached_prompt_tokens), Some(1));
        let same = |text: &str, parsed: Value| assert_eq!(parsed, serde_json::from_str::<Value>(text).unwrap());
        same(body, serde_json::to_value(&parsed).unwrap());
        // From a `Value` as well as from text.
        let from_value: ChatResponse = serde_json::from_value(serde_json::from_str(body).unwrap()).unwrap();
        assert_eq!(from_value, parsed);

        let chunk = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"h","refusal":null,"y":[1]},"finish_reason":null,"z":true}],"obfuscation":"abc"}"#;
        let parsed: ChatChunk = serde_json::from_str(chunk).unwrap();
        same(chunk, serde_json::to_value(&parsed).unwrap());
    }

    #[test]
    fn answers_missing_or_repeating_a_field_are_refused_as_serde_would() {
        let missing = serde_json::from_str::<ChatResponse>(r#"{"object":"chat.completion","created":1,"model":"m","choices":[]}"#);
        assert!(missing.unwrap_err().to_string().starts_with("missing field `id`"));
        let repeated = serde_json::from_str::<Usage>(r#"{"prompt_tokens":1,"prompt_tokens":2,"completion_tokens":2,"total_tokens":3}"#);
        assert!(repeated.unwrap_err().to_string().starts_with("duplicate field `prompt_tokens`"));
        let wrong_type = serde_json::from_str::<Choice>(r#"{"index":"0","message":{"role":"assistant","content":null}}"#);
        assert!(wrong_type.unwrap_err().to_string().starts_with("invalid type: string \"0\", expected u32"));
        // Absent optional fields are `None`, as with serde's derive.
        let bare: Choice = serde_json::from_str(r#"{"index":0,"message":{"role":"assistant"}}"#).unwrap();
        assert_eq!((bare.finish_reason, bare.logprobs, bare.message.content), (None, None, None));
        assert!(serde_json::from_str::<ChatChunk>("[1]").is_err());
    }

    #[test]
    fn allowed_tools_become_the_tools_they_allow_and_their_mode() {
        let request = |choice: Value| -> ChatRequest {
            serde_json::from_value(serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": choice, "tools": [
                {"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "b"}}, {"type": "custom", "custom": {"name": "a"}}]}))
            .unwrap()
        };
        let mut req = request(serde_json::json!({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "a"}}]}}));
        req.apply_allowed_tools();
        assert_eq!(req.tools, Some(serde_json::json!([{"type": "function", "function": {"name": "a"}}])));
        assert_eq!(req.tool_choice, Some(serde_json::json!("required")));
        let mut none = request(serde_json::json!({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}));
        none.apply_allowed_tools();
        assert_eq!((none.tools, none.tool_choice), (None, None));
        let mut named = request(serde_json::json!({"type": "function", "function": {"name": "b"}}));
        let before = named.clone();
        named.apply_allowed_tools();
        assert_eq!(named, before);
    }
}
