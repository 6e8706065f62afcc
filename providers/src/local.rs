//! The adapter that serves chat requests from the embedded engine.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use local_engine::{
    Confidence, EngineError, EngineHandle, GenerationEvent, GenerationRequest, GenerationStream, SamplingParams,
    JsonClosing, TemplateMessage, TokenLogprob,
};
use local_engine::grammar::{self, Bounds, TextAnswer};
use serde_json::{Map, Value};

use crate::provider::{collect_stream, ChunkStream, Provider};
use crate::wire::{ChatChunk, ChatRequest, ChatResponse, ChunkChoice, Delta, MessageContent, Usage};
use crate::ProviderError;

/// Serves chat requests from the embedded engine.
#[derive(Clone)]
pub struct LocalProvider {
    engine: EngineHandle,
}

impl LocalProvider {
    /// Wraps an engine.
    pub fn new(engine: EngineHandle) -> Self {
        Self { engine }
    }

    /// The engine behind it.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }
}

/// The refusal of a message with a part the local model cannot read (an image, audio, a file),
/// naming the part and what to do about it.
fn media_refused(content: &MessageContent, i: usize) -> ProviderError {
    let parts = match content {
        MessageContent::Parts(parts) => parts.as_slice(),
        MessageContent::Text(_) => &[],
    };
    let j = parts.iter().position(|p| crate::wire::part_text(p).is_none()).unwrap_or(0);
    let kind = parts.get(j).and_then(|p| p.get("type")).and_then(Value::as_str).unwrap_or("non-text");
    ProviderError::InvalidRequest {
        message: format!(
            "the local model reads text only, and this message has a {kind:?} part: send media to a provider that reads it (a rule that routes it there, or the rule's `fallback`, tried when the local engine cannot take a request)"
        ),
        param: Some(format!("messages[{i}].content[{j}]")),
    }
}

/// Translates a chat request into the engine's terms, refusing what the engine cannot honour;
/// with the splitter of its answer when the answer may be a tool call.
fn generation_request(req: &ChatRequest) -> Result<(GenerationRequest, Option<ToolCallSplitter>), ProviderError> {
    let invalid = |message: &str, param: &str| ProviderError::InvalidRequest {
        message: message.to_owned(),
        param: Some(param.to_owned()),
    };
    if req.n.unwrap_or(1) != 1 {
        return Err(invalid("the local engine returns one choice per request; n must be 1", "n"));
    }
    // Fields that would change the answer and that the engine cannot honour.
    if let Some((field, why)) = req.openai_only_field("the local model") {
        return Err(invalid(&why, field));
    }
    let req = &*req.with_allowed_tools_applied();
    if let Some(param) = req.custom_tool_param() {
        return Err(invalid("custom tools are not supported by the local model; send function tools", &param));
    }
    let structure = Structure::of(req)?;
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    for (i, m) in req.messages.iter().enumerate() {
        let mut content = match &m.content {
            None => String::new(),
            Some(c) => c.text().ok_or_else(|| media_refused(c, i))?,
        };
        // The chat templates know `system`; `developer` is OpenAI's newer name for it.
        let mut role = if m.role == "developer" { "system".to_owned() } else { m.role.clone() };
        // Earlier tool calls are shown as the JSON the model writes them in; results as user turns
        // (few templates know a `tool` role).
        if let Some(Value::Array(calls)) = m.extra.get("tool_calls") {
            for call in calls {
                let name = call.pointer("/function/name").cloned().unwrap_or(Value::Null);
                let arguments = call.pointer("/function/arguments").and_then(Value::as_str).and_then(|a| serde_json::from_str::<Value>(a).ok()).unwrap_or(Value::Null);
                content.push_str(&serde_json::json!({"name": name, "arguments": arguments}).to_string());
            }
        }
        if role == "tool" || role == "function" {
            role = "user".into();
            content = format!("Function result: {content}");
        }
        messages.push(TemplateMessage { role, content });
    }
    if let Some(instruction) = structure.instruction() {
        match messages.first_mut().filter(|m| m.role == "system") {
            Some(system) => {
                system.content.push_str("\n\n");
                system.content.push_str(&instruction);
            }
            None => messages.insert(0, TemplateMessage { role: "system".into(), content: instruction }),
        }
    }
    let splitter = structure.splitter();
    // A free-form JSON answer is closed inside the token budget rather than cut mid-value.
    // Beside tools only an answer (whose object the grammar opens `{` + whitespace) is closed: a call
    // cut by the budget must stay cut, not pass for a whole call.
    let close_json = match (structure.is_free_form_json(), &structure.tools) {
        (false, _) => JsonClosing::Off,
        (true, None) => JsonClosing::Always,
        (true, Some(_)) => JsonClosing::UnlessACall,
    };
    let sampling = SamplingParams {
        #[allow(clippy::cast_possible_truncation)]
        temperature: req.temperature.unwrap_or(1.0) as f32,
        #[allow(clippy::cast_possible_truncation)]
        top_p: req.top_p.unwrap_or(1.0) as f32,
        #[allow(clippy::cast_sign_loss)]
        seed: req.seed.map(|s| s as u64),
        stop: req.stop.as_ref().map(crate::wire::Stop::to_vec).unwrap_or_default(),
        stops_spare_calls: structure.tools.is_some(),
        max_tokens: req.max_output_tokens(),
        logprobs: false,
        top_logprobs: wants_logprobs(req).then(|| {
            // 0 to 20, checked by the gateway.
            req.extra.get("top_logprobs").and_then(Value::as_u64).map_or(0, |k| u8::try_from(k.min(20)).unwrap_or(20))
        }),
        frequency_penalty: number(req, "frequency_penalty"),
        presence_penalty: number(req, "presence_penalty"),
        // Keys and values were checked by the gateway (token ids, -100 to 100).
        logit_bias: req.extra.get("logit_bias").and_then(Value::as_object).map_or_else(Vec::new, |bias| {
            #[allow(clippy::cast_possible_truncation)]
            let entries = bias.iter().filter_map(|(token, v)| Some((i32::try_from(token.parse::<u64>().ok()?).unwrap_or(i32::MAX), v.as_f64()? as f32))).collect();
            entries
        }),
        grammar: structure.grammar,
        close_json,
    };
    // Tools are described in the system message (above), in the one format the grammar allows.
    let raw_prompt = if req.raw_prompt { Some(req.prompt_text().ok_or_else(|| invalid("the prompt must be text", "prompt"))?) } else { None };
    Ok((GenerationRequest { messages, tools: None, sampling, raw_prompt, tenant: req.tenant.clone() }, splitter))
}

/// The client asked for each token's log-probability (`logprobs: true`).
fn wants_logprobs(req: &ChatRequest) -> bool {
    req.extra.get("logprobs").and_then(Value::as_bool) == Some(true)
}

/// A numeric field of the request's extra fields as `f32` (0 when absent or null).
fn number(req: &ChatRequest, field: &str) -> f32 {
    #[allow(clippy::cast_possible_truncation)]
    let value = req.extra.get(field).and_then(Value::as_f64).unwrap_or(0.0) as f32;
    value
}

/// A tool's `parameters` as the grammar takes them. None (or `{}`) is a function without
/// arguments, as the API reads it: its call's arguments are `{}`, not any JSON the model makes up.
/// A schema without a `type` is an object's; one of another type is refused, as the API does.
fn tool_parameters(name: &str, parameters: Option<&Value>) -> Result<Value, ProviderError> {
    let refused = |what: String| ProviderError::InvalidRequest {
        message: format!("Invalid schema for function '{name}': {what}; a function's parameters are a JSON Schema of \"type\": \"object\"."),
        param: Some("tools".to_owned()),
    };
    match parameters.filter(|p| !p.is_null() && p.as_object().is_none_or(|schema| !schema.is_empty())) {
        None => Ok(serde_json::json!({"type": "object", "properties": {}, "additionalProperties": false})),
        Some(Value::Object(schema)) => match schema.get("type") {
            None => {
                let mut schema = schema.clone();
                schema.insert("type".into(), Value::String("object".into()));
                Ok(Value::Object(schema))
            }
            Some(Value::String(kind)) if kind == "object" => Ok(Value::Object(schema.clone())),
            Some(kind) => Err(refused(format!("its parameters have type {kind}"))),
        },
        Some(other) => Err(refused(format!("its parameters are {}, not a schema", json_kind(other)))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What the answer must look like: a JSON instance of a schema, or a call of one of the tools.
#[derive(Debug, Default)]
struct Structure {
    grammar: Option<String>,
    /// The schema (`json_schema`) or `{}` (`json_object`) the answer follows.
    json: Option<Value>,
    /// Tools the model may call, and whether it may answer in text instead.
    tools: Option<(Vec<Value>, bool)>,
}

impl Structure {
    fn of(req: &ChatRequest) -> Result<Self, ProviderError> {
        let invalid = |message: String, param: &str| ProviderError::InvalidRequest { message, param: Some(param.to_owned()) };
        if let Some((tools, allow_text)) = callable_tools(req)? {
            let signatures = tools
                .iter()
                .map(|t| {
                    let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
                    Ok((name.to_owned(), tool_parameters(name, t.get("parameters"))?))
                })
                .collect::<Result<Vec<(String, Value)>, ProviderError>>()?;
            // With `tool_choice: auto` the answer that is not a call follows `response_format`.
            let format = if allow_text { Self::of_format(req)? } else { Self::default() };
            let text = match (allow_text, &format.json) {
                (false, _) => TextAnswer::None,
                (true, None) => TextAnswer::Free,
                (true, Some(_)) if format.is_free_form_json() => TextAnswer::JsonObject,
                (true, Some(schema)) => TextAnswer::JsonSchema(schema),
            };
            // (`of_format` has refused a schema the grammar cannot enforce.)
            let grammar = grammar::tool_call_grammar(&signatures, text, Bounds::default()).map_err(|e| invalid(format!("the local engine cannot enforce this tool's parameters: {e}"), "tools"))?;
            return Ok(Self { grammar: Some(grammar), json: format.json, tools: Some((tools, allow_text)) });
        }
        Self::of_format(req)
    }

    /// The structure `response_format` asks for, tools aside.
    fn of_format(req: &ChatRequest) -> Result<Self, ProviderError> {
        let invalid = |message: String, param: &str| ProviderError::InvalidRequest { message, param: Some(param.to_owned()) };
        let Some(format) = &req.response_format else { return Ok(Self::default()) };
        match format.get("type").and_then(Value::as_str) {
            Some("text") => Ok(Self::default()),
            Some("json_object") => Ok(Self { grammar: Some(grammar::json_object_grammar(Bounds::default())), json: Some(serde_json::json!({})), tools: None }),
            Some("json_schema") => {
                let schema = format.pointer("/json_schema/schema").cloned().unwrap_or_else(|| serde_json::json!({}));
                let grammar = grammar::schema_grammar(&schema, Bounds::default()).map_err(|e| invalid(format!("the local engine cannot enforce this schema: {e}"), "response_format.json_schema.schema"))?;
                Ok(Self { grammar: Some(grammar), json: Some(schema), tools: None })
            }
            other => Err(invalid(format!("unsupported response_format type {other:?}"), "response_format.type")),
        }
    }

    /// The splitter of the answer, when it may be a tool call.
    fn splitter(&self) -> Option<ToolCallSplitter> {
        // `json` is set beside tools only when the answer may be text (`tool_choice: auto`).
        self.tools.as_ref().map(|(_, allow_text)| ToolCallSplitter { json_answers: self.json.is_some(), must_call: !allow_text, ..ToolCallSplitter::default() })
    }

    /// Any JSON object will do (`json_object`, or a schema that constrains nothing).
    fn is_free_form_json(&self) -> bool {
        self.json.as_ref().is_some_and(|schema| schema.as_object().is_some_and(serde_json::Map::is_empty))
    }

    /// What the model is told about the format it must answer in.
    fn instruction(&self) -> Option<String> {
        if let Some((tools, allow_text)) = &self.tools {
            let list = serde_json::to_string(tools).unwrap_or_default();
            let mut text = format!("You can call these functions:\n{list}\nTo call one, reply with only a JSON object {{\"name\": <function name>, \"arguments\": <its arguments>}}.");
            match (*allow_text, &self.json) {
                (false, _) => {}
                (true, None) => text.push_str(" If no function is needed, answer in plain text."),
                (true, Some(_)) if self.is_free_form_json() => text.push_str(" If no function is needed, answer with a JSON object only."),
                (true, Some(schema)) => {
                    let _ = write!(text, " If no function is needed, answer with JSON only, following this JSON Schema:\n{schema}");
                }
            }
            return Some(text);
        }
        let schema = self.json.as_ref()?;
        Some(if self.is_free_form_json() {
            "Answer with a JSON object only.".to_owned()
        } else {
            format!("Answer with JSON only, following this JSON Schema:\n{schema}")
        })
    }
}

/// The function tools the model may call (`name`, `description`, `parameters` each), and
/// whether it may answer in text instead; `None` without tools or with `tool_choice: none`.
fn callable_tools(req: &ChatRequest) -> Result<Option<(Vec<Value>, bool)>, ProviderError> {
    let Some(Value::Array(tools)) = &req.tools else { return Ok(None) };
    let functions: Vec<Value> = tools.iter().filter_map(|t| t.get("function").cloned()).collect();
    if functions.is_empty() {
        return Ok(None);
    }
    match &req.tool_choice {
        None => Ok(Some((functions, true))),
        Some(Value::String(choice)) => match choice.as_str() {
            "none" => Ok(None),
            "auto" => Ok(Some((functions, true))),
            "required" => Ok(Some((functions, false))),
            other => Err(ProviderError::InvalidRequest { message: format!("unknown tool_choice {other:?}"), param: Some("tool_choice".into()) }),
        },
        Some(choice) => {
            let name = choice.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
            let chosen: Vec<Value> = functions.into_iter().filter(|f| f.get("name").and_then(Value::as_str) == Some(name)).collect();
            if chosen.is_empty() {
                return Err(ProviderError::InvalidRequest { message: format!("tool_choice names {name:?}, which is not among the tools"), param: Some("tool_choice".into()) });
            }
            Ok(Some((chosen, false)))
        }
    }
}

/// Splits a tool-call answer (`{"name":"…","arguments":…}`, as the grammar writes it) into
/// `OpenAI` tool-call deltas as it streams: the call's id and name once known, then the
/// arguments in pieces. Text answers pass through.
#[derive(Debug, Default)]
struct ToolCallSplitter {
    /// The answer that is not a call is JSON (`response_format` beside `tool_choice: auto`): the
    /// grammar opens a call `{"` and such an answer's object `{` and whitespace.
    json_answers: bool,
    /// The answer is a call (`tool_choice` `required` or a named function): known before the
    /// first chunk, which then has no `content` (as the API's tool-call answers have none).
    must_call: bool,
    /// `None` until the opening decides (`{`, or `{"` beside JSON answers: a call); then whether
    /// this is a call.
    calling: Option<bool>,
    buffer: String,
    /// The call has been announced (id and name sent).
    announced: bool,
    /// The arguments sent so far.
    arguments: String,
}

const CALL_NAME_PREFIX: &str = "{\"name\":";
const CALL_ARGUMENTS_KEY: &str = ",\"arguments\":";

impl ToolCallSplitter {
    fn text(&mut self, text: String) -> Vec<Delta> {
        if self.calling.is_none() {
            self.buffer.push_str(&text);
            let start = self.buffer.trim_start();
            let mut chars = start.chars();
            let calling = match (chars.next(), chars.next(), self.json_answers) {
                (None, _, _) | (Some('{'), None, true) => return Vec::new(),
                (Some('{'), second, true) => second == Some('"'),
                (first, _, _) => first == Some('{'),
            };
            self.calling = Some(calling);
            if calling {
                return self.advance();
            }
            return vec![Delta { content: Some(std::mem::take(&mut self.buffer)), ..Delta::default() }];
        }
        if self.calling == Some(false) {
            return vec![Delta { content: Some(text), ..Delta::default() }];
        }
        self.buffer.push_str(&text);
        self.advance()
    }

    fn advance(&mut self) -> Vec<Delta> {
        let mut out = Vec::new();
        if !self.announced {
            let Some(rest) = self.buffer.trim_start().strip_prefix(CALL_NAME_PREFIX) else { return out };
            let Some(end) = rest.find(CALL_ARGUMENTS_KEY) else { return out };
            let name: String = serde_json::from_str(&rest[..end]).unwrap_or_default();
            let arguments = rest[end + CALL_ARGUMENTS_KEY.len()..].to_owned();
            self.announced = true;
            self.buffer = arguments;
            let call = serde_json::json!([{"index": 0, "id": format!("call_{}", uuid::Uuid::new_v4().simple()), "type": "function", "function": {"name": name, "arguments": ""}}]);
            out.push(tool_delta(call));
        }
        // Hold back the last character: the call's closing brace, once the answer ends.
        let keep = self.buffer.char_indices().last().map_or(0, |(i, _)| i);
        if keep > 0 {
            let piece: String = self.buffer.drain(..keep).collect();
            self.arguments.push_str(&piece);
            out.push(tool_delta(serde_json::json!([{"index": 0, "function": {"arguments": piece}}])));
        }
        out
    }

    /// True when the answer was a complete call: whole arguments, and the held-back `}` closes
    /// the wrapper. An answer cut (by `max_tokens`) just after the arguments' own `}` holds that
    /// brace back too, and is not a call: its arguments lack it.
    fn called(&self) -> bool {
        self.announced && self.buffer == "}" && serde_json::from_str::<serde::de::IgnoredAny>(&self.arguments).is_ok()
    }

    /// What is still held back when the answer ends without a complete call (cut by
    /// `max_tokens` or a stop string): the rest of the arguments, or the text seen so far. A call
    /// cut before its name was complete leaves nothing: the `{"name":…` wrapper is the engine's
    /// own format, never the client's content (`finish_reason: length` says it was cut). A lone
    /// `{` beside JSON answers may be either, and is shown.
    fn flush(&mut self) -> Option<Delta> {
        let wrapper = self.calling.map_or(!self.json_answers, |calling| calling && !self.announced);
        if self.called() || self.buffer.is_empty() || wrapper {
            return None;
        }
        let rest = std::mem::take(&mut self.buffer);
        Some(if self.announced {
            tool_delta(serde_json::json!([{"index": 0, "function": {"arguments": rest}}]))
        } else {
            Delta { content: Some(rest), ..Delta::default() }
        })
    }
}

/// Holds each token's log-probabilities until the client has been sent the text the token
/// starts in, so that a chunk carries the entries of the text it carries, and the tokens of a
/// stop string or of a tool call's JSON (text the client never sees) are not reported.
#[derive(Debug, Default)]
struct LogprobAligner {
    /// Entries not yet sent, with the offset of their token's first byte in the generated text.
    queued: VecDeque<(usize, Value)>,
    token_bytes: usize,
    sent_bytes: usize,
}

impl LogprobAligner {
    fn token(&mut self, token: &TokenLogprob) {
        self.queued.push_back((self.token_bytes, logprob_entry(&token.bytes, token.logprob, &token.top)));
        self.token_bytes += token.bytes.len();
    }

    /// `text` goes to the client now: the `logprobs` of the chunk that carries it.
    fn sent(&mut self, text: &str) -> Option<Value> {
        self.sent_bytes += text.len();
        let mut content = Vec::new();
        while self.queued.front().is_some_and(|(start, _)| *start < self.sent_bytes) {
            content.extend(self.queued.pop_front().map(|(_, entry)| entry));
        }
        (!content.is_empty()).then(|| serde_json::json!({"content": content, "refusal": null}))
    }
}

/// One entry of `OpenAI`'s `logprobs.content`: the token as text (a token holding part of a
/// character shows a replacement character; `bytes` has the exact bytes), its log-probability,
/// and the most likely tokens at its step.
fn logprob_entry(bytes: &[u8], logprob: f32, top: &[(Vec<u8>, f32)]) -> Value {
    let item = |bytes: &[u8], logprob: f32| serde_json::json!({"token": String::from_utf8_lossy(bytes), "logprob": logprob, "bytes": bytes});
    let mut entry = item(bytes, logprob);
    entry["top_logprobs"] = top.iter().map(|(b, l)| item(b, *l)).collect();
    entry
}

/// An answer with no text to report (a tool call, an empty answer) still has a `logprobs`
/// object when they were asked for, not `null`, which clients reading them would trip on.
fn with_logprobs_object(response: &mut ChatResponse) {
    for choice in &mut response.choices {
        choice.logprobs.get_or_insert_with(|| serde_json::json!({"content": [], "refusal": null}));
    }
}

fn tool_delta(calls: Value) -> Delta {
    let mut extra = Map::new();
    extra.insert("tool_calls".into(), calls);
    Delta { extra, ..Delta::default() }
}

fn engine_error(err: &EngineError) -> ProviderError {
    match err {
        EngineError::ContextLengthExceeded { .. } | EngineError::PromptCannotFit { .. } => ProviderError::ContextLengthExceeded { message: err.to_string() },
        EngineError::Overloaded { .. } | EngineError::Displaced { .. } => ProviderError::Overloaded { message: err.to_string(), retry_after_s: 1 },
        EngineError::Grammar { .. } => ProviderError::InvalidRequest { message: err.to_string(), param: Some("response_format".into()) },
        EngineError::InvalidParameter { param, .. } => ProviderError::InvalidRequest { message: err.to_string(), param: Some((*param).into()) },
        EngineError::InputTooLong { .. } => ProviderError::InvalidRequest { message: err.to_string(), param: Some("input".into()) },
        EngineError::Template { .. } => ProviderError::InvalidRequest { message: err.to_string(), param: Some("messages".into()) },
        EngineError::Unavailable { .. } | EngineError::Decode { .. } => ProviderError::Unavailable { message: err.to_string() },
    }
}

/// Unix seconds now (`created` of answers).
pub(crate) fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Builds chunks for one completion.
struct ChunkFactory {
    id: String,
    created: u64,
    model: String,
}

impl ChunkFactory {
    fn chunk(&self, delta: Delta, finish_reason: Option<&str>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(str::to_owned),
                logprobs: None,
                extra: Map::new(),
            }],
            usage: None,
            system_fingerprint: None,
            extra: Map::new(),
        }
    }

    fn usage(&self, prompt_tokens: u32, completion_tokens: u32) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: Vec::new(),
            usage: Some(Usage::new(prompt_tokens.into(), completion_tokens.into())),
            system_fingerprint: None,
            extra: Map::new(),
        }
    }
}

/// Where the finishing event's confidence is left, for [`LocalProvider::complete_with_confidence`].
type ConfidenceSlot = Arc<Mutex<Option<Confidence>>>;

/// Turns engine events into chunks: the role chunk first, a usage-only chunk with the prompt's
/// tokens (the engine has taken the prompt), text deltas, the finishing chunk, then the usage
/// chunk (the gateway drops usage chunks unless the client asked, and then passes on the last).
fn chunks(events: GenerationStream, factory: ChunkFactory, prompt_tokens: u32, confidence_slot: Option<ConfidenceSlot>, mut splitter: Option<ToolCallSplitter>) -> ChunkStream {
    let content = if splitter.as_ref().is_some_and(|s| s.must_call) { None } else { Some(String::new()) };
    let first = factory.chunk(Delta { role: Some("assistant".into()), content, ..Delta::default() }, None);
    // The prompt's exact size, known once the engine took it: a client that leaves mid-answer is
    // billed it rather than an estimate from its characters (the chat template's tokens are not
    // in them). The gateway passes on only the last usage, and only to clients that asked.
    let prompt_usage = factory.usage(prompt_tokens, 0);
    let mut logprobs = LogprobAligner::default();
    let rest = events.flat_map(move |event| {
        let out: Vec<Result<ChatChunk, ProviderError>> = match event {
            GenerationEvent::Started { .. } => Vec::new(),
            GenerationEvent::Token(token) => {
                logprobs.token(&token);
                Vec::new()
            }
            GenerationEvent::Text(text) => {
                let deltas = match splitter.as_mut() {
                    Some(splitter) => splitter.text(text),
                    None => vec![Delta { content: Some(text), ..Delta::default() }],
                };
                deltas
                    .into_iter()
                    .map(|delta| {
                        let entries = delta.content.as_deref().and_then(|text| logprobs.sent(text));
                        let mut chunk = factory.chunk(delta, None);
                        chunk.choices[0].logprobs = entries;
                        Ok(chunk)
                    })
                    .collect()
            }
            GenerationEvent::Finished { reason, prompt_tokens, completion_tokens, confidence } => {
                if let Some(slot) = &confidence_slot {
                    *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = confidence;
                }
                let called = splitter.as_ref().is_some_and(ToolCallSplitter::called);
                let finish = if called { "tool_calls" } else { reason.as_str() };
                let rest = splitter.as_mut().and_then(ToolCallSplitter::flush).map(|delta| {
                    let entries = delta.content.as_deref().and_then(|text| logprobs.sent(text));
                    let mut chunk = factory.chunk(delta, None);
                    chunk.choices[0].logprobs = entries;
                    Ok(chunk)
                });
                rest.into_iter()
                    .chain([Ok(factory.chunk(Delta::default(), Some(finish))), Ok(factory.usage(prompt_tokens, completion_tokens))])
                    .collect()
            }
            GenerationEvent::Failed(err) => vec![Err(engine_error(&err))],
        };
        futures::stream::iter(out)
    });
    futures::stream::iter([Ok(first), Ok(prompt_usage)]).chain(rest).boxed()
}

impl LocalProvider {
    /// A complete answer and how sure the model was of it (the `cascade` strategy's signal).
    pub async fn complete_with_confidence(&self, req: ChatRequest) -> Result<(ChatResponse, Option<Confidence>), ProviderError> {
        let (mut generation, splitter) = generation_request(&req)?;
        generation.sampling.logprobs = true;
        let slot: ConfidenceSlot = Arc::new(Mutex::new(None));
        let mut response = collect_stream(self.start(generation, Some(Arc::clone(&slot)), splitter).await?).await?;
        if wants_logprobs(&req) {
            with_logprobs_object(&mut response);
        }
        let confidence = *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok((response, confidence))
    }

    /// Submits a generation and waits for the engine to accept its prompt.
    async fn start(&self, generation: GenerationRequest, confidence: Option<ConfidenceSlot>, splitter: Option<ToolCallSplitter>) -> Result<ChunkStream, ProviderError> {
        let mut events = self.engine.submit(generation).map_err(|e| engine_error(&e))?;
        // Wait for the engine to accept the prompt, so that its errors get a real status.
        let prompt_tokens = match events.recv().await {
            Some(GenerationEvent::Started { prompt_tokens }) => prompt_tokens,
            Some(GenerationEvent::Failed(err)) => return Err(engine_error(&err)),
            Some(other) => {
                return Err(ProviderError::Unavailable { message: format!("unexpected first engine event {other:?}") })
            }
            None => return Err(ProviderError::Unavailable { message: "the local engine dropped the request".into() }),
        };
        let factory = ChunkFactory {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: now_unix(),
            model: self.engine.config().name.clone(),
        };
        Ok(chunks(events, factory, prompt_tokens, confidence, splitter))
    }
}

#[async_trait]
impl Provider for LocalProvider {
    async fn complete(&self, req: ChatRequest) -> Result<ChatResponse, ProviderError> {
        let wanted = wants_logprobs(&req);
        let mut response = collect_stream(self.stream(req).await?).await?;
        if wanted {
            with_logprobs_object(&mut response);
        }
        Ok(response)
    }

    async fn stream(&self, req: ChatRequest) -> Result<ChunkStream, ProviderError> {
        let (generation, splitter) = generation_request(&req)?;
        self.start(generation, None, splitter).await
    }
}

#[cfg(test)]
mod tests {
    use super::{Delta, LogprobAligner, Structure, TokenLogprob, ToolCallSplitter};
    use crate::wire::ChatRequest;

    fn splitter_for(format: Option<serde_json::Value>) -> ToolCallSplitter {
        let mut body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]});
        if let Some(format) = format {
            body["response_format"] = format;
        }
        let req: ChatRequest = serde_json::from_value(body).unwrap();
        Structure::of(&req).unwrap().splitter().unwrap()
    }

    /// Feeds `pieces` and the end of the answer; returns (content, call name, call arguments).
    fn split(splitter: &mut ToolCallSplitter, pieces: &[&str]) -> (String, String, String) {
        let mut deltas: Vec<Delta> = pieces.iter().flat_map(|p| splitter.text((*p).to_owned())).collect();
        deltas.extend(splitter.flush());
        let (mut content, mut name, mut arguments) = (String::new(), String::new(), String::new());
        for delta in deltas {
            content.push_str(delta.content.as_deref().unwrap_or_default());
            for call in delta.extra.get("tool_calls").and_then(serde_json::Value::as_array).into_iter().flatten() {
                name.push_str(call.pointer("/function/name").and_then(serde_json::Value::as_str).unwrap_or_default());
                arguments.push_str(call.pointer("/function/arguments").and_then(serde_json::Value::as_str).unwrap_or_default());
            }
        }
        (content, name, arguments)
    }

    #[test]
    fn a_tool_without_parameters_takes_none_and_a_non_object_schema_is_refused() {
        let none = serde_json::json!({"type": "object", "properties": {}, "additionalProperties": false});
        assert_eq!(super::tool_parameters("now", None).unwrap(), none);
        assert_eq!(super::tool_parameters("now", Some(&serde_json::json!({}))).unwrap(), none);
        let untyped = serde_json::json!({"properties": {"city": {"type": "string"}}});
        assert_eq!(super::tool_parameters("f", Some(&untyped)).unwrap()["type"], "object");
        for bad in [serde_json::json!({"type": "string"}), serde_json::json!([1])] {
            let err = super::tool_parameters("f", Some(&bad)).unwrap_err().to_string();
            assert!(err.contains("Invalid schema for function 'f'"), "{err}");
        }
    }

    #[test]
    fn a_json_answer_beside_tools_is_content_and_a_call_is_a_call() {
        let json = || Some(serde_json::json!({"type": "json_object"}));
        // The grammar opens a call `{"` and a JSON answer's object `{` + whitespace: even an
        // answer that then writes a call's exact prefix stays an answer.
        let mut s = splitter_for(json());
        assert_eq!(split(&mut s, &["{", "\n \"na", "me\":\"get_weather\",\"arguments\":3}"]),
                   ("{\n \"name\":\"get_weather\",\"arguments\":3}".into(), String::new(), String::new()));
        assert!(!s.called());
        let mut s = splitter_for(json());
        let (content, name, arguments) = split(&mut s, &["{\"name\":\"get_w", "eather\",\"arguments\":{\"city\"", ":\"Oslo\"}}"]);
        assert_eq!((content.as_str(), name.as_str(), arguments.as_str()), ("", "get_weather", "{\"city\":\"Oslo\"}"));
        assert!(s.called());
        // Cut just after the arguments' own `}`: not a call (finish `length`), and the brace is
        // the arguments', sent with them.
        let mut s = splitter_for(None);
        let (_, name, arguments) = split(&mut s, &["{\"name\":\"get_weather\",\"arguments\":{\"city\"", ":\"Paris\"", "}"]);
        assert!(!s.called());
        assert_eq!((name.as_str(), arguments.as_str()), ("get_weather", "{\"city\":\"Paris\"}"));
        // A call cut before its name was complete shows nothing (the wrapper is the engine's).
        let mut s = splitter_for(json());
        assert_eq!(split(&mut s, &["{\"name\":\"get"]), (String::new(), String::new(), String::new()));
        // Free text beside tools keeps its leading whitespace rule: it never starts with `{`.
        let mut s = splitter_for(None);
        assert_eq!(split(&mut s, &["Sunny", " today"]).0, "Sunny today");
    }

    fn token(text: &str) -> TokenLogprob {
        TokenLogprob { bytes: text.as_bytes().to_vec(), logprob: -0.5, top: vec![(text.as_bytes().to_vec(), -0.5), (b"x".to_vec(), -1.5)] }
    }

    fn tokens_of(logprobs: Option<serde_json::Value>) -> Vec<String> {
        let Some(value) = logprobs else { return Vec::new() };
        value["content"].as_array().unwrap().iter().map(|e| e["token"].as_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn a_chunk_carries_the_tokens_its_text_starts() {
        let mut aligner = LogprobAligner::default();
        for t in ["Hel", "lo", " wor", "ld", "STOP"] {
            aligner.token(&token(t));
        }
        // Text held back (a possible stop string) releases its tokens once it is sent.
        assert_eq!(tokens_of(aligner.sent("He")), ["Hel"]);
        assert_eq!(tokens_of(aligner.sent("llo w")), ["lo", " wor"]);
        assert_eq!(tokens_of(aligner.sent("")), Vec::<String>::new());
        assert_eq!(tokens_of(aligner.sent("orld")), ["ld"]);
        // "STOP" was a stop string the client never sees: its token is never reported.
        assert!(aligner.sent("").is_none());
    }

    #[test]
    fn entries_have_the_api_shape() {
        let mut aligner = LogprobAligner::default();
        aligner.token(&TokenLogprob { bytes: vec![0xC3], logprob: -0.25, top: vec![(vec![0xC3], -0.25)] });
        aligner.token(&TokenLogprob { bytes: vec![0xA9], logprob: -1.0, top: Vec::new() });
        let value = aligner.sent("é").unwrap();
        assert_eq!(value["refusal"], serde_json::Value::Null);
        let content = value["content"].as_array().unwrap();
        // A token holding half a character: its text is lossy, its bytes exact.
        assert_eq!(content[0]["bytes"], serde_json::json!([0xC3]));
        assert_eq!(content[0]["token"], "\u{FFFD}");
        assert_eq!(content[0]["logprob"], -0.25);
        assert_eq!(content[0]["top_logprobs"][0]["bytes"], serde_json::json!([0xC3]));
        assert_eq!(content[1]["top_logprobs"], serde_json::json!([]));
    }
}
