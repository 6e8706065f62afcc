//! `OpenAI` chat completions ⇄ Anthropic Messages API, both ways, as pure functions: the request
//! body, the response, and every streaming event. The field mapping is tabled in
//! `providers/README.md`.

use serde_json::{json, Map, Value};

use crate::wire::{ChatChunk, ChatMessage, ChatRequest, ChatResponse, Choice, ChunkChoice, Delta, MessageContent, ResponseMessage, Usage};
use crate::local::now_unix;
use crate::ProviderError;

/// The API version Switchyard speaks (`anthropic-version` header).
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when neither the request nor the model entry gives one (Anthropic requires it).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// The user turn put before a conversation that opens with the assistant.
pub const OPENING_USER_TURN: &str = ".";

fn invalid(message: impl Into<String>, param: &str) -> ProviderError {
    ProviderError::InvalidRequest { message: message.into(), param: Some(param.to_owned()) }
}

/// The Messages API body for `req`. Fields with no Anthropic equivalent that would change the
/// answer are refused (400 naming the field); harmless ones are dropped.
pub fn request_body(req: &ChatRequest, default_max_tokens: Option<u32>) -> Result<Value, ProviderError> {
    let req = &*req.with_allowed_tools_applied();
    refuse_unsupported(req)?;
    let mut system = Vec::new();
    let mut messages: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, blocks) = match m.role.as_str() {
            "system" | "developer" => {
                system.extend(text_blocks(m, i)?);
                continue;
            }
            "user" => ("user", content_blocks(m, i)?),
            "assistant" => ("assistant", assistant_blocks(m, i)?),
            "tool" | "function" => ("user", vec![tool_result(m, i)?]),
            other => return Err(invalid(format!("messages[{i}].role {other:?} has no Anthropic equivalent"), &format!("messages[{i}].role"))),
        };
        if blocks.is_empty() {
            continue;
        }
        // Anthropic needs alternating roles: consecutive messages of one role become one.
        match messages.last_mut() {
            Some((last, content)) if last == role => content.extend(blocks),
            _ => messages.push((role.to_owned(), blocks)),
        }
    }
    if messages.is_empty() {
        // Only system text, or messages with no content: the Messages API needs one turn.
        return Err(invalid("Anthropic models need at least one user or assistant message with content", "messages"));
    }
    // The Messages API starts with a user turn; `OpenAI`'s lets an assistant greeting open the
    // conversation. A one-character user turn keeps the greeting where it was.
    if messages[0].0 == "assistant" {
        messages.insert(0, ("user".to_owned(), vec![json!({"type": "text", "text": OPENING_USER_TURN})]));
    }
    // A conversation whose last user message was empty must still be answered, not read as an
    // assistant message to continue (a prefill).
    let last_asks = req.messages.iter().rev().find(|m| !matches!(m.role.as_str(), "system" | "developer")).is_some_and(|m| m.role == "user");
    if last_asks && messages.last().is_some_and(|(role, _)| role == "assistant") {
        messages.push(("user".to_owned(), vec![json!({"type": "text", "text": OPENING_USER_TURN})]));
    }
    // A prefill (the conversation ends with the assistant) may not end in whitespace: Anthropic
    // refuses it, and the model would write the space itself anyway.
    if let Some((_, blocks)) = messages.last_mut().filter(|(role, _)| role == "assistant") {
        if let Some(Value::String(text)) = blocks.last_mut().and_then(|b| b.get_mut("text")) {
            // Not empty after it: whitespace-only text blocks were left out.
            text.truncate(text.trim_end().len());
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), Value::String(req.model.clone()));
    body.insert(
        "messages".into(),
        Value::Array(messages.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect()),
    );
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    let max_tokens = req.max_output_tokens().or(default_max_tokens).unwrap_or(DEFAULT_MAX_TOKENS);
    body.insert("max_tokens".into(), json!(max_tokens));
    if let Some(stop) = &req.stop {
        body.insert("stop_sequences".into(), json!(stop.to_vec()));
    }
    if let Some(t) = req.temperature {
        // OpenAI allows 0–2, Anthropic 0–1.
        body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    // Current Claude models refuse both at once, and many OpenAI clients send both: the
    // temperature is kept.
    if let Some(p) = req.top_p.filter(|_| req.temperature.is_none()) {
        body.insert("top_p".into(), json!(p));
    }
    let tools = req.tools.as_ref().map(tools_of).transpose()?.filter(|tools| tools.as_array().is_some_and(|t| !t.is_empty()));
    if let Some(tools) = tools {
        body.insert("tools".into(), tools);
        let parallel = req.extra.get("parallel_tool_calls").and_then(Value::as_bool);
        if let Some(choice) = tool_choice_of(req.tool_choice.as_ref(), parallel)? {
            body.insert("tool_choice".into(), choice);
        }
    } else if let Some(used) = tools_used_in(&body["messages"]) {
        // Anthropic refuses a conversation holding tool calls and results unless it defines
        // tools; OpenAI's does not need them (a follow-up asked without tools). The tools called
        // are named, and not to be called again.
        body.insert("tools".into(), used);
        body.insert("tool_choice".into(), json!({"type": "none"}));
    }
    if let Some(user) = req.extra.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if req.is_stream() {
        body.insert("stream".into(), Value::Bool(true));
    }
    Ok(Value::Object(body))
}

fn refuse_unsupported(req: &ChatRequest) -> Result<(), ProviderError> {
    if req.n.unwrap_or(1) > 1 {
        return Err(invalid("n > 1 is not supported by Anthropic models", "n"));
    }
    if req.extra.get("logprobs").and_then(Value::as_bool) == Some(true) || req.extra.get("top_logprobs").is_some_and(|v| !v.is_null()) {
        return Err(invalid("logprobs are not supported by Anthropic models", "logprobs"));
    }
    if let Some(param) = req.custom_tool_param() {
        return Err(invalid("custom tools are not supported by Anthropic models; send function tools", &param));
    }
    // Anthropic refuses them itself; named here, the client learns which field to change.
    if req.stop.as_ref().is_some_and(|stop| stop.to_vec().iter().any(|s| s.trim().is_empty())) {
        return Err(invalid("Anthropic models do not accept a stop sequence that is empty or only whitespace", "stop"));
    }
    if req.extra.get("logit_bias").is_some_and(|b| b.as_object().is_some_and(|o| !o.is_empty())) {
        return Err(invalid("logit_bias is not supported by Anthropic models", "logit_bias"));
    }
    if let Some(format) = &req.response_format {
        if format.get("type").and_then(Value::as_str).is_some_and(|t| t != "text") {
            return Err(invalid("response_format json modes are not supported by Anthropic models", "response_format"));
        }
    }
    // Fields that would change the answer and that the Messages API has no way to carry.
    if let Some((field, why)) = req.openai_only_field("Anthropic models") {
        return Err(invalid(&why, field));
    }
    Ok(())
}

/// Text blocks of a message (text and refusal parts; empty or whitespace-only ones are left out:
/// Anthropic refuses them).
fn text_blocks(m: &ChatMessage, i: usize) -> Result<Vec<Value>, ProviderError> {
    match &m.content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(t)) if t.trim().is_empty() => Ok(Vec::new()),
        Some(MessageContent::Text(t)) => Ok(vec![json!({"type": "text", "text": t})]),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .enumerate()
            .filter_map(|(j, p)| {
                match crate::wire::part_text(p) {
                    Some(t) if t.trim().is_empty() => None,
                    Some(t) => Some(Ok(json!({"type": "text", "text": t}))),
                    None => Some(Err(invalid("only text parts are allowed here", &format!("messages[{i}].content[{j}]")))),
                }
            })
            .collect(),
    }
}

fn content_blocks(m: &ChatMessage, i: usize) -> Result<Vec<Value>, ProviderError> {
    let Some(MessageContent::Parts(parts)) = &m.content else { return text_blocks(m, i) };
    let empty_text = |p: &Value| p.get("type").and_then(Value::as_str) == Some("text") && p.get("text").and_then(Value::as_str).is_some_and(|t| t.trim().is_empty());
    parts
        .iter()
        .enumerate()
        .filter(|(_, p)| !empty_text(p))
        .map(|(j, p)| {
            let at = || format!("messages[{i}].content[{j}]");
            match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or_default()})),
                Some("image_url") => {
                    let url = p.pointer("/image_url/url").and_then(Value::as_str).ok_or_else(|| invalid("image_url.url is required", &at()))?;
                    Ok(image_block(url).ok_or_else(|| invalid("image URLs must be data: URLs (base64) or http(s) URLs", &at()))?)
                }
                other => Err(invalid(format!("content part type {:?} has no Anthropic equivalent", other.unwrap_or("(none)")), &at())),
            }
        })
        .collect()
}

/// `data:image/png;base64,…` → a base64 image block; `https://…` → a URL image block.
fn image_block(url: &str) -> Option<Value> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',')?;
        // `image/png;name=a.png;base64`: the media type alone (Anthropic takes no parameters).
        let media_type = meta.strip_suffix(";base64")?.split(';').next()?.trim();
        return Some(json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}));
    }
    (url.starts_with("https://") || url.starts_with("http://")).then(|| json!({"type": "image", "source": {"type": "url", "url": url}}))
}

fn assistant_blocks(m: &ChatMessage, i: usize) -> Result<Vec<Value>, ProviderError> {
    let mut blocks = text_blocks(m, i)?;
    if let Some(calls) = m.extra.get("tool_calls").and_then(Value::as_array) {
        for (j, call) in calls.iter().enumerate() {
            let at = format!("messages[{i}].tool_calls[{j}]");
            let id = call.get("id").and_then(Value::as_str).ok_or_else(|| invalid("tool call id is required", &at))?;
            let name = call.pointer("/function/name").and_then(Value::as_str).ok_or_else(|| invalid("function.name is required", &at))?;
            let arguments = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
            // Anthropic's `tool_use.input` is an object: "[1,2]", "5" or "null" would be refused upstream.
            let input = serde_json::from_str::<Value>(if arguments.trim().is_empty() { "{}" } else { arguments })
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| invalid("function.arguments must be a JSON object", &format!("{at}.function.arguments")))?;
            blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    Ok(blocks)
}

fn tool_result(m: &ChatMessage, i: usize) -> Result<Value, ProviderError> {
    let id = m
        .extra
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("tool messages need tool_call_id", &format!("messages[{i}].tool_call_id")))?;
    // One text as a string; several parts stay separate blocks (not run together).
    let blocks = text_blocks(m, i)?;
    let content = match blocks.as_slice() {
        [] => json!(""),
        [one] => one["text"].clone(),
        _ => Value::Array(blocks),
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}

fn tools_of(tools: &Value) -> Result<Value, ProviderError> {
    let list = tools.as_array().ok_or_else(|| invalid("tools must be an array", "tools"))?;
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let f = t.get("function").ok_or_else(|| invalid("only function tools are supported", &format!("tools[{i}]")))?;
            let name = f.get("name").and_then(Value::as_str).ok_or_else(|| invalid("function.name is required", &format!("tools[{i}].function.name")))?;
            let mut tool = json!({"name": name, "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
            if let Some(d) = f.get("description") {
                tool["description"] = d.clone();
            }
            Ok(tool)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// Tool definitions for the tools `messages` (Anthropic's) call, with any input, if they call any.
fn tools_used_in(messages: &Value) -> Option<Value> {
    let mut names: Vec<&str> = Vec::new();
    let blocks = messages.as_array()?.iter().filter_map(|m| m["content"].as_array()).flatten();
    for name in blocks.filter(|b| b["type"] == "tool_use").filter_map(|b| b["name"].as_str()) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    (!names.is_empty()).then(|| Value::Array(names.into_iter().map(|name| json!({"name": name, "input_schema": {"type": "object"}})).collect()))
}

fn tool_choice_of(choice: Option<&Value>, parallel: Option<bool>) -> Result<Option<Value>, ProviderError> {
    let mut out = match choice {
        None => return Ok(parallel.filter(|p| !p).map(|_| json!({"type": "auto", "disable_parallel_tool_use": true}))),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            other => return Err(invalid(format!("tool_choice {other:?} is not known"), "tool_choice")),
        },
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => json!({"type": "tool", "name": name}),
            None => return Err(invalid("tool_choice must name a function", "tool_choice")),
        },
    };
    if parallel == Some(false) && out["type"] != "none" {
        out["disable_parallel_tool_use"] = Value::Bool(true);
    }
    Ok(Some(out))
}

/// `OpenAI`'s `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => "stop",
    }
}

/// `OpenAI` usage from Anthropic's: cache reads and writes are prompt tokens too; reads are
/// reported as `prompt_tokens_details.cached_tokens` (priced at the cached rate).
pub fn usage_of(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    let mut usage = Usage::new(n("input_tokens") + cached + n("cache_creation_input_tokens"), n("output_tokens"));
    usage.extra.insert("prompt_tokens_details".into(), json!({"cached_tokens": cached}));
    usage
}

/// A `chat.completion` from a Messages API response.
pub fn response_of(body: &Value) -> Result<ChatResponse, String> {
    let blocks = body.get("content").and_then(Value::as_array).ok_or("no content in the answer")?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {"name": b.get("name").cloned().unwrap_or(Value::Null), "arguments": b.get("input").map_or_else(|| "{}".to_owned(), Value::to_string)},
            })),
            _ => {}
        }
    }
    let mut message = ResponseMessage::assistant(text);
    if !calls.is_empty() {
        if message.content.as_deref() == Some("") {
            message.content = None;
        }
        message.extra.insert("tool_calls".into(), Value::Array(calls));
    }
    let stop = body.get("stop_reason").and_then(Value::as_str).unwrap_or("end_turn");
    Ok(ChatResponse {
        id: body.get("id").and_then(Value::as_str).unwrap_or("msg").to_owned(),
        object: "chat.completion".into(),
        created: now_unix(),
        model: body.get("model").and_then(Value::as_str).unwrap_or_default().to_owned(),
        choices: vec![Choice { index: 0, message, finish_reason: Some(finish_reason(stop).to_owned()), logprobs: None, extra: Map::new() }],
        usage: body.get("usage").map(usage_of),
        system_fingerprint: None,
        extra: Map::new(),
    })
}

/// Turns Anthropic stream events into `OpenAI` chunks, one event at a time.
#[derive(Debug, Default)]
pub struct StreamTranslator {
    id: String,
    model: String,
    created: u64,
    /// Anthropic content-block index → `OpenAI` tool-call index (`tool_use` blocks only), and
    /// whether any of its arguments arrived.
    tool_index: Vec<(u64, u32, bool)>,
    usage: Option<Value>,
}

impl StreamTranslator {
    fn chunk(&self, delta: Delta, finish: Option<&str>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice { index: 0, delta, finish_reason: finish.map(str::to_owned), logprobs: None, extra: Map::new() }],
            usage: None,
            system_fingerprint: None,
            extra: Map::new(),
        }
    }

    fn delta(content: Option<String>, tool_calls: Option<Value>) -> Delta {
        let mut extra = Map::new();
        if let Some(calls) = tool_calls {
            extra.insert("tool_calls".into(), calls);
        }
        Delta { role: None, content, extra }
    }

    /// A usage-only chunk with what the stream has reported so far (the prompt's tokens from
    /// `message_start`), for a stream that breaks off before `message_stop`.
    pub fn usage_so_far(&self) -> Option<ChatChunk> {
        let usage = self.usage.as_ref()?;
        let mut last = self.chunk(Self::delta(None, None), None);
        last.choices.clear();
        last.usage = Some(usage_of(usage));
        Some(last)
    }

    /// The chunks for one event (`event` is its type, `data` its JSON). `Err` for an `error`
    /// event or an unreadable one.
    pub fn event(&mut self, event: &str, data: &Value) -> Result<Vec<ChatChunk>, ProviderError> {
        let kind = data.get("type").and_then(Value::as_str).unwrap_or(event);
        Ok(match kind {
            "message_start" => {
                let m = data.get("message").cloned().unwrap_or(Value::Null);
                m.get("id").and_then(Value::as_str).unwrap_or("msg").clone_into(&mut self.id);
                m.get("model").and_then(Value::as_str).unwrap_or_default().clone_into(&mut self.model);
                self.created = now_unix();
                self.usage = m.get("usage").cloned();
                let mut delta = Self::delta(Some(String::new()), None);
                delta.role = Some("assistant".into());
                // The prompt's tokens, known from here on: a client that leaves mid-way is
                // billed for them, not for an estimate (the gateway shows a client one usage
                // chunk, the last).
                vec![self.chunk(delta, None)].into_iter().chain(self.usage_so_far()).collect()
            }
            "content_block_start" => {
                let block = data.get("content_block").cloned().unwrap_or(Value::Null);
                if block.get("type").and_then(Value::as_str) != Some("tool_use") {
                    return Ok(Vec::new());
                }
                let index = u32::try_from(self.tool_index.len()).unwrap_or(u32::MAX);
                self.tool_index.push((data.get("index").and_then(Value::as_u64).unwrap_or(0), index, false));
                let call = json!([{"index": index, "id": block.get("id"), "type": "function",
                                   "function": {"name": block.get("name"), "arguments": ""}}]);
                vec![self.chunk(Self::delta(None, Some(call)), None)]
            }
            "content_block_delta" => {
                let delta = data.get("delta").cloned().unwrap_or(Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta.get("text").and_then(Value::as_str).unwrap_or_default().to_owned();
                        vec![self.chunk(Self::delta(Some(text), None), None)]
                    }
                    Some("input_json_delta") => {
                        let block = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let partial = delta.get("partial_json").and_then(Value::as_str).unwrap_or_default();
                        let index = match self.tool_index.iter_mut().find(|(b, _, _)| *b == block) {
                            Some((_, index, any)) => {
                                *any |= !partial.is_empty();
                                *index
                            }
                            None => 0,
                        };
                        let call = json!([{"index": index, "function": {"arguments": partial}}]);
                        vec![self.chunk(Self::delta(None, Some(call)), None)]
                    }
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                if let Some(u) = data.get("usage") {
                    let mut merged = self.usage.take().unwrap_or_else(|| json!({}));
                    if let (Some(m), Some(n)) = (merged.as_object_mut(), u.as_object()) {
                        m.extend(n.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                    self.usage = Some(merged);
                }
                match data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    Some(stop) => vec![self.chunk(Self::delta(None, None), Some(finish_reason(stop)))],
                    None => Vec::new(),
                }
            }
            "message_stop" => {
                let mut last = self.chunk(Self::delta(None, None), None);
                last.choices.clear();
                last.usage = self.usage.as_ref().map(usage_of);
                vec![last]
            }
            "error" => {
                let (kind, message) = error_event(data);
                return Err(ProviderError::Upstream { provider: "anthropic".into(), status: retry_status(kind), message: format!("{kind}: {message}") });
            }
            // A call with no input: `{}`, as the whole answer has it (`""` would not parse).
            "content_block_stop" => {
                let block = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                match self.tool_index.iter_mut().find(|(b, _, any)| *b == block && !*any) {
                    Some((_, index, any)) => {
                        *any = true;
                        let call = json!([{"index": *index, "function": {"arguments": "{}"}}]);
                        vec![self.chunk(Self::delta(None, Some(call)), None)]
                    }
                    None => Vec::new(),
                }
            }
            // ping and events added later.
            _ => Vec::new(),
        })
    }
}

/// An `error` stream event's type (`overloaded_error`…) and message.
pub fn error_event(data: &Value) -> (&str, &str) {
    let kind = data.pointer("/error/type").and_then(Value::as_str).unwrap_or("error");
    (kind, data.pointer("/error/message").and_then(Value::as_str).unwrap_or("stream error"))
}

/// The HTTP status an error type stands for, where waiting and retrying may help:
/// `overloaded_error` 529, `api_error` 500, `rate_limit_error` 429.
pub fn retry_status(kind: &str) -> Option<u16> {
    match kind {
        "overloaded_error" => Some(529),
        "api_error" => Some(500),
        "rate_limit_error" => Some(429),
        _ => None,
    }
}

/// `OpenAI`'s error body from an Anthropic error body (`{"type":"error","error":{"type","message"}}`),
/// in `OpenAI`'s words: the types and codes a client of the gateway handles whatever the provider
/// (a prompt too long for the model is `context_length_exceeded`, as `OpenAI` says it).
pub fn error_body(body: &[u8]) -> Option<crate::wire::ErrorBody> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let message = e.get("message").and_then(Value::as_str).unwrap_or("error").to_owned();
    let (kind, code) = match e.get("type").and_then(Value::as_str).unwrap_or("api_error") {
        "invalid_request_error" if message.starts_with("prompt is too long") => ("invalid_request_error", Some("context_length_exceeded")),
        "invalid_request_error" => ("invalid_request_error", None),
        "rate_limit_error" => ("rate_limit_error", Some("rate_limit_exceeded")),
        "not_found_error" => ("invalid_request_error", Some("model_not_found")),
        "request_too_large" => ("invalid_request_error", Some("request_too_large")),
        "authentication_error" => ("authentication_error", None),
        "permission_error" => ("permission_error", None),
        "overloaded_error" => ("server_error", Some("overloaded")),
        _ => ("server_error", None),
    };
    Some(crate::wire::ErrorBody { error: crate::wire::ErrorDetail { message, kind: kind.to_owned(), param: None, code: code.map(str::to_owned), innererror: None } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn translates_system_roles_tools_and_results() {
        let r = req(json!({
            "model": "claude-sonnet", "max_tokens": 100, "stop": "END", "temperature": 1.5, "user": "u1",
            "seed": 3, "presence_penalty": 0.5, "parallel_tool_calls": false,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What's the weather?"},
                {"role": "user", "content": [{"type": "text", "text": "In Paris."}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "d", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
        }));
        let body = request_body(&r, None).unwrap();
        assert_eq!(body["system"], json!([{"type": "text", "text": "Be brief."}]));
        let roles: Vec<&str> = body["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["user", "assistant", "user"], "consecutive user messages merged");
        assert_eq!(body["messages"][0]["content"].as_array().unwrap().len(), 3);
        assert_eq!(body["messages"][0]["content"][2]["source"], json!({"type": "base64", "media_type": "image/png", "data": "AAAA"}));
        assert_eq!(body["messages"][1]["content"][0], json!({"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}));
        assert_eq!(body["messages"][2]["content"][0], json!({"type": "tool_result", "tool_use_id": "call_1", "content": "18C"}));
        assert_eq!(body["tools"][0]["input_schema"]["properties"]["city"]["type"], "string");
        assert_eq!(body["tool_choice"], json!({"type": "any", "disable_parallel_tool_use": true}));
        assert_eq!((body["max_tokens"].as_u64(), body["temperature"].as_f64()), (Some(100), Some(1.0)));
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["metadata"], json!({"user_id": "u1"}));
        for foreign in ["seed", "presence_penalty", "n", "user", "parallel_tool_calls", "stop", "stream_options"] {
            assert!(body.get(foreign).is_none(), "{foreign} must not be sent");
        }
    }

    #[test]
    fn allowed_tools_narrow_the_tools_and_custom_tools_are_refused_by_name() {
        let tools = json!([{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "b"}}, {"type": "custom", "custom": {"name": "c"}}]);
        let allowed = json!({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "b"}}]}});
        let body = request_body(&req(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": allowed})), None).unwrap();
        assert_eq!(body["tools"].as_array().map(|t| t.iter().map(|t| t["name"].clone()).collect::<Vec<_>>()), Some(vec![json!("b")]));
        assert_eq!(body["tool_choice"], json!({"type": "any"}));
        let refused = |body: Value| match request_body(&req(body), None) {
            Err(ProviderError::InvalidRequest { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools})).as_deref(), Some("tools[2].type"));
        let history = json!([{"role": "user", "content": "x"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "custom", "custom": {"name": "c", "input": "ls"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "ok"}]);
        assert_eq!(refused(json!({"model": "m", "messages": history})).as_deref(), Some("messages[1].tool_calls[0].type"));
    }

    #[test]
    fn an_opening_greeting_empty_parts_refusals_and_tool_results_of_several_parts() {
        let body = request_body(&req(json!({"model": "m", "messages": [
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}], "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r1"}, {"type": "text", "text": "r2"}]},
        ]})), None)
        .unwrap();
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages[0], json!({"role": "user", "content": [{"type": "text", "text": OPENING_USER_TURN}]}));
        assert_eq!(messages[1]["content"], json!([{"type": "text", "text": "Hello!"}]));
        assert_eq!(messages[2]["content"], json!([{"type": "text", "text": "hi"}]), "the empty part is left out");
        assert_eq!(messages[3]["content"][0], json!({"type": "text", "text": "no"}));
        assert_eq!(messages[4]["content"][0]["content"], json!([{"type": "text", "text": "r1"}, {"type": "text", "text": "r2"}]));
    }

    #[test]
    fn an_empty_last_question_is_still_a_question_and_whitespace_text_is_left_out() {
        let body = request_body(&req(json!({"model": "m", "messages": [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "  "}, {"role": "user", "content": ""},
        ]})), None)
        .unwrap();
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert_eq!(messages[1]["content"], json!([{"type": "text", "text": "a"}]));
        assert_eq!(messages[2], json!({"role": "user", "content": [{"type": "text", "text": OPENING_USER_TURN}]}));
        // Ending with the assistant on purpose is a prefill, kept.
        let prefill = request_body(&req(json!({"model": "m", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer is"}]})), None).unwrap();
        assert_eq!(prefill["messages"].as_array().unwrap().last().unwrap()["role"], "assistant");
    }

    #[test]
    fn a_streamed_call_with_no_input_gets_empty_object_arguments() {
        let mut t = StreamTranslator::default();
        let start = json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "now", "input": {}}});
        let mut args = String::new();
        for (e, d) in [
            ("content_block_start", start),
            ("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}})),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        ] {
            for c in t.event(e, &d).unwrap() {
                if let Some(a) = c.choices[0].delta.extra.get("tool_calls").and_then(|v| v.pointer("/0/function/arguments")).and_then(Value::as_str) {
                    args.push_str(a);
                }
            }
        }
        assert_eq!(args, "{}");
    }

    #[test]
    fn max_tokens_falls_back_to_the_model_entry_then_4096() {
        let r = req(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(request_body(&r, Some(777)).unwrap()["max_tokens"], 777);
        assert_eq!(request_body(&r, None).unwrap()["max_tokens"], 4096);
    }

    #[test]
    fn result_changing_fields_are_refused_by_name() {
        for (field, value, param) in [
            ("n", json!(2), "n"),
            ("logprobs", json!(true), "logprobs"),
            ("logit_bias", json!({"50256": -100}), "logit_bias"),
            ("stop", json!(["END", "\n"]), "stop"),
            ("stop", json!(" "), "stop"),
            ("functions", json!([{"name": "f"}]), "functions"),
            ("function_call", json!("auto"), "function_call"),
            ("audio", json!({"voice": "alloy"}), "audio"),
            ("modalities", json!(["text", "audio"]), "modalities"),
            ("web_search_options", json!({}), "web_search_options"),
        ] {
            let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            v[field] = value;
            match request_body(&req(v), None) {
                Err(ProviderError::InvalidRequest { param: Some(p), .. }) => assert_eq!(p, param),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn optional_fields_sent_as_null_are_absent() {
        // Clients that serialise every optional field send nulls; the API reads them as absent.
        let v = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": null, "top_logprobs": null, "logit_bias": null});
        assert!(request_body(&req(v), None).is_ok());
    }

    #[test]
    fn tool_arguments_that_are_not_objects_are_refused() {
        for arguments in ["[1,2]", "5", "\"s\"", "null", "{not json"] {
            let v = json!({"model": "m", "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}]});
            match request_body(&req(v), None) {
                Err(ProviderError::InvalidRequest { param: Some(p), .. }) => assert_eq!(p, "messages[1].tool_calls[0].function.arguments"),
                other => panic!("{arguments}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_conversation_with_no_turn_is_refused() {
        for messages in [json!([{"role": "system", "content": "be brief"}]), json!([{"role": "user", "content": ""}]), json!([{"role": "user", "content": []}])] {
            match request_body(&req(json!({"model": "m", "messages": messages})), None) {
                Err(ProviderError::InvalidRequest { param: Some(p), .. }) => assert_eq!(p, "messages"),
                other => panic!("{messages}: {other:?}"),
            }
        }
    }

    #[test]
    fn response_with_text_and_tool_use() {
        let r = response_of(&json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Let me check."}, {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 4}
        }))
        .unwrap();
        let c = &r.choices[0];
        assert_eq!(c.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(c.message.content.as_deref(), Some("Let me check."));
        let call = &c.message.extra["tool_calls"][0];
        assert_eq!(serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(), json!({"city": "Paris"}));
        let u = r.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens()), (14, 5, 4));
    }

    #[test]
    fn errors_and_stop_reasons_read_in_openai_terms() {
        let error = |kind: &str, message: &str| {
            let body = json!({"type": "error", "error": {"type": kind, "message": message}}).to_string();
            let e = error_body(body.as_bytes()).unwrap().error;
            (e.kind, e.code)
        };
        let pair = |kind: &str, code: Option<&str>| (kind.to_owned(), code.map(str::to_owned));
        assert_eq!(error("invalid_request_error", "prompt is too long: 215000 tokens > 200000 maximum"), pair("invalid_request_error", Some("context_length_exceeded")));
        assert_eq!(error("invalid_request_error", "messages: text content blocks must be non-empty"), pair("invalid_request_error", None));
        assert_eq!(error("rate_limit_error", "slow down"), pair("rate_limit_error", Some("rate_limit_exceeded")));
        assert_eq!(error("not_found_error", "model: x"), pair("invalid_request_error", Some("model_not_found")));
        assert_eq!(error("overloaded_error", "busy"), pair("server_error", Some("overloaded")));
        assert_eq!(error("something_new", "?"), pair("server_error", None));
        // A window filled mid-answer is an answer cut short, as `max_tokens` is.
        assert_eq!(finish_reason("model_context_window_exceeded"), "length");
        assert_eq!(finish_reason("pause_turn"), "stop");
    }

    #[test]
    fn stream_events_become_chunks_with_tool_arguments_and_usage() {
        let mut t = StreamTranslator::default();
        let events = [
            ("message_start", json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 9, "output_tokens": 1}}})),
            ("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            ("ping", json!({"type": "ping"})),
            ("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}})),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            ("content_block_start", json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}})),
            ("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}})),
            ("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " 1}"}})),
            ("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}})),
            ("message_stop", json!({"type": "message_stop"})),
        ];
        let chunks: Vec<ChatChunk> = events.iter().flat_map(|(e, d)| t.event(e, d).unwrap()).collect();
        assert_eq!(chunks[0].choices[0].delta.role.as_deref(), Some("assistant"));
        // The prompt's tokens as soon as they are known, for a client that leaves mid-way.
        assert!(chunks[1].is_usage_only() && chunks[1].usage.as_ref().is_some_and(|u| u.prompt_tokens == 9), "{:?}", chunks[1]);
        let text: String = chunks.iter().filter_map(|c| c.choices.first()?.delta.content.clone()).collect();
        assert_eq!(text, "Hi");
        let args: String = chunks
            .iter()
            .filter_map(|c| c.choices.first()?.delta.extra.get("tool_calls")?.pointer("/0/function/arguments")?.as_str().map(str::to_owned))
            .collect();
        assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"a": 1}));
        assert!(chunks.iter().any(|c| c.choices.first().and_then(|x| x.finish_reason.as_deref()) == Some("tool_calls")));
        let usage = chunks.last().unwrap().usage.clone().unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (9, 7));
        assert!(t.event("error", &json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})).is_err());
    }
}
