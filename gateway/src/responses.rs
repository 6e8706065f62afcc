//! The `OpenAI` Responses API in terms of chat completions: a `POST /v1/responses` body becomes a
//! chat request (instructions, the stored conversation of `previous_response_id`, input items,
//! function tools, `text.format`), and the chat answer becomes a `response` object — or, streamed,
//! the API's semantic events (`response.created` … `response.completed`). Pure: the handler
//! (`handlers/responses.rs`) does the I/O, `response_store.rs` keeps conversations.

use providers::wire::{ChatChunk, ChatMessage, ChatRequest, ChatResponse, MessageContent, StreamOptions, Usage};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// `POST /v1/responses` body (the fields Switchyard acts on; the rest is refused or ignored as
/// the API allows).
#[derive(Debug, Clone, Deserialize)]
pub struct ResponsesRequest {
    /// `auto`, the local name, `provider/model` or a bare model name.
    pub model: String,
    /// A string (one user message) or a list of input items.
    pub input: Option<Value>,
    /// A system message put first; not carried over to a later `previous_response_id`.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Function tools.
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required` or `{"type":"function","name":…}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", …}}`.
    #[serde(default)]
    pub text: Option<Value>,
    /// Answer as semantic events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Keep the response (default true) so that `GET` and `previous_response_id` find it.
    #[serde(default)]
    pub store: Option<bool>,
    /// Continue the conversation of a stored response.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Output-token cap.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Up to 16 string pairs, returned as sent.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Whether several tool calls may come at once.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// End-user id, forwarded.
    #[serde(default)]
    pub user: Option<String>,
    /// Extra output: [`LOGPROBS_INCLUDE`] asks for each output token's log-probability (other
    /// values concern hosted tools and inputs Switchyard does not have, and change nothing).
    #[serde(default)]
    pub include: Option<Vec<String>>,
    /// With [`LOGPROBS_INCLUDE`], this many of the most likely tokens at each position (0 to 20).
    #[serde(default)]
    pub top_logprobs: Option<Value>,
    /// `disabled` (the default) or `auto`; either way nothing is dropped from the conversation (an
    /// overflow is `context_length_exceeded`), and the value is echoed as sent.
    #[serde(default)]
    pub truncation: Option<String>,
    /// `{"effort": …}`: a chat provider gets it as `reasoning_effort`.
    #[serde(default)]
    pub reasoning: Option<Value>,
    /// Passed to a chat provider as the chat API's fields of the same names.
    #[serde(default)]
    pub service_tier: Option<Value>,
    #[serde(default)]
    pub safety_identifier: Option<Value>,
    #[serde(default)]
    pub prompt_cache_key: Option<Value>,
    /// Features the gateway cannot carry out, refused by name rather than ignored: a server-side
    /// conversation, a stored prompt template, background mode.
    #[serde(default)]
    conversation: Option<Value>,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    background: Option<bool>,
}

/// The `include` value that asks for the output text's log-probabilities.
pub const LOGPROBS_INCLUDE: &str = "message.output_text.logprobs";

/// Every `include` value the API knows (the others concern hosted tools and inputs, and change
/// nothing here).
const KNOWN_INCLUDES: &[&str] = &[
    LOGPROBS_INCLUDE,
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
    "file_search_call.results",
    "message.input_image.image_url",
    "reasoning.encrypted_content",
    "web_search_call.action.sources",
    "web_search_call.results",
];

/// The name a chat request's field has in the Responses request it was translated from, so that
/// an error names what the client sent (`max_completion_tokens` → `max_output_tokens`,
/// `tools[0].function.name` → `tools[0].name`); `None` for names that are the same or have none.
pub fn responses_param(chat: &str) -> Option<String> {
    let renamed = match chat {
        "max_completion_tokens" | "max_tokens" => "max_output_tokens".to_owned(),
        // Instructions and earlier turns come first in the chat messages: the index would mislead.
        p if p == "messages" || p.starts_with("messages[") => "input".to_owned(),
        "tool_choice.function.name" | "tool_choice.function" => "tool_choice.name".to_owned(),
        p if p.starts_with("tool_choice.allowed_tools.") => p.replacen("tool_choice.allowed_tools.", "tool_choice.", 1).replacen("].function", "]", 1),
        "response_format" => "text.format".to_owned(),
        // Log-probabilities are asked for through `include` here.
        "logprobs" => "include".to_owned(),
        p if p.starts_with("response_format.json_schema.") => format!("text.format.{}", &p["response_format.json_schema.".len()..]),
        p if p.starts_with("response_format.") => format!("text.format.{}", &p["response_format.".len()..]),
        p if p.starts_with("tools[") && p.contains("].function") => p.replacen("].function", "]", 1),
        _ => return None,
    };
    Some(renamed)
}

impl ResponsesRequest {
    /// True when the client asked for events.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// True unless the client said `store: false`.
    pub fn wants_store(&self) -> bool {
        self.store.unwrap_or(true)
    }
}

/// What a stored response leaves for the next turn: the conversation so far (without the
/// instructions, which do not carry over) and the `response` object for `GET`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The tenant that created it; only it may read or continue it.
    pub tenant: String,
    /// The caller's privacy tags (`x-switchyard-tags`) of every turn so far: a continuation
    /// carries them even when its own request does not.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Input and output of every turn up to and including this one, as chat messages.
    pub conversation: Vec<ChatMessage>,
    /// The `response` object as it was answered.
    pub response: Value,
    /// This turn's input as the API lists it (`GET /v1/responses/{id}/input_items`), oldest first.
    #[serde(default)]
    pub input_items: Vec<Value>,
}

/// Parses and checks a `POST /v1/responses` body.
pub fn parse_request(body: &[u8]) -> Result<ResponsesRequest, ApiError> {
    let req: ResponsesRequest = crate::chat_request::parse_body(body)?;
    if req.model.is_empty() {
        return Err(ApiError::invalid("'model' must be a non-empty string.", "model"));
    }
    if req.input.is_none() && req.previous_response_id.is_none() {
        return Err(ApiError::invalid("Missing required parameter: 'input'.", "input"));
    }
    match &req.top_logprobs {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64().is_some_and(|n| n <= 20) => {}
        Some(v) => return Err(ApiError::invalid(format!("Invalid 'top_logprobs': {v}. Expected an integer between 0 and 20."), "top_logprobs")),
    }
    for (i, value) in req.include.iter().flatten().enumerate() {
        if !KNOWN_INCLUDES.contains(&value.as_str()) {
            return Err(ApiError::invalid(
                format!("Invalid value for 'include[{i}]': {value:?}. Supported values are: {}.", KNOWN_INCLUDES.join(", ")),
                format!("include[{i}]"),
            ));
        }
    }
    if req.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(ApiError::invalid("Conversations are not supported by this gateway; continue a conversation with 'previous_response_id'.", "conversation"));
    }
    if req.prompt.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(ApiError::invalid("Stored prompt templates are not supported by this gateway; send 'instructions' and 'input'.", "prompt"));
    }
    if req.background == Some(true) {
        return Err(ApiError::invalid("Background responses are not supported by this gateway; stream the response instead.", "background"));
    }
    // The chat check would describe chat's shape, which this endpoint does not take.
    if let Some(Value::String(choice)) = &req.tool_choice {
        if !matches!(choice.as_str(), "none" | "auto" | "required") {
            return Err(ApiError::invalid(
                format!("Invalid value for 'tool_choice': {choice:?}. Supported values are: \"none\", \"auto\", \"required\", or {{\"type\": \"function\", \"name\": …}}."),
                "tool_choice",
            ));
        }
    }
    if let Some(truncation) = req.truncation.as_deref().filter(|t| !matches!(*t, "auto" | "disabled")) {
        return Err(ApiError::invalid(format!("Invalid value for 'truncation': {truncation:?}. Supported values are: auto, disabled."), "truncation"));
    }
    if let Some(metadata) = &req.metadata {
        // The API's limits: 16 pairs, keys up to 64 characters, string values up to 512.
        if metadata.len() > 16 {
            return Err(ApiError::invalid(format!("Invalid 'metadata': {} pairs; at most 16 are allowed.", metadata.len()), "metadata"));
        }
        for (key, value) in metadata {
            let fits = key.chars().count() <= 64 && value.as_str().is_some_and(|v| v.chars().count() <= 512);
            if !fits {
                return Err(ApiError::invalid(format!("Invalid 'metadata.{key}': keys are strings of at most 64 characters, values strings of at most 512."), "metadata"));
            }
        }
    }
    Ok(req)
}

/// The input items of `req` as chat messages (without instructions or earlier turns).
pub fn input_messages(req: &ResponsesRequest) -> Result<Vec<ChatMessage>, ApiError> {
    let mut messages: Vec<ChatMessage> = Vec::new();
    match &req.input {
        None => {}
        Some(Value::String(text)) => messages.push(message("user", MessageContent::Text(text.clone()))),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                push_item(&mut messages, item, i)?;
            }
        }
        Some(_) => return Err(ApiError::invalid("'input' must be a string or an array of input items.", "input")),
    }
    Ok(messages)
}

fn message(role: &str, content: MessageContent) -> ChatMessage {
    ChatMessage { role: role.to_owned(), content: Some(content), extra: Map::new() }
}

/// One input item onto the chat conversation; consecutive function calls share one assistant
/// message, as chat completions expect.
fn push_item(messages: &mut Vec<ChatMessage>, item: &Value, i: usize) -> Result<(), ApiError> {
    let param = |field: &str| format!("input[{i}]{field}");
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
    match kind {
        "message" => {
            let role = item.get("role").and_then(Value::as_str).ok_or_else(|| ApiError::invalid(format!("Missing required parameter: '{}'.", param(".role")), param(".role")))?;
            if !["user", "assistant", "system", "developer"].contains(&role) {
                return Err(ApiError::invalid(format!("Invalid value for '{}': {role:?}.", param(".role")), param(".role")));
            }
            let content = match item.get("content") {
                Some(Value::String(text)) => MessageContent::Text(text.clone()),
                Some(Value::Array(parts)) => MessageContent::Parts(parts.iter().enumerate().map(|(j, p)| chat_part(p, &param(&format!(".content[{j}]")))).collect::<Result<_, _>>()?),
                _ => return Err(ApiError::invalid(format!("Missing required parameter: '{}'.", param(".content")), param(".content"))),
            };
            // Roles the chat templates know: `developer` is a system message there.
            let role = if role == "developer" { "system" } else { role };
            messages.push(message(role, content));
        }
        "function_call" => {
            let field = |name: &str| item.get(name).and_then(Value::as_str).ok_or_else(|| ApiError::invalid(format!("Missing required parameter: '{}'.", param(&format!(".{name}"))), param(&format!(".{name}"))));
            let call = json!({"id": field("call_id")?, "type": "function", "function": {"name": field("name")?, "arguments": field("arguments")?}});
            let open = messages.last_mut().filter(|m| m.role == "assistant" && m.extra.contains_key("tool_calls"));
            if let Some(last) = open {
                if let Some(Value::Array(calls)) = last.extra.get_mut("tool_calls") {
                    calls.push(call);
                }
            } else {
                let mut m = ChatMessage { role: "assistant".into(), content: None, extra: Map::new() };
                m.extra.insert("tool_calls".into(), Value::Array(vec![call]));
                messages.push(m);
            }
        }
        "function_call_output" => {
            let call_id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| ApiError::invalid(format!("Missing required parameter: '{}'.", param(".call_id")), param(".call_id")))?;
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                // A list of content parts: their text (a tool returning images cannot be carried).
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.iter().enumerate() {
                        match part.get("type").and_then(Value::as_str) {
                            Some("input_text" | "output_text" | "text") => text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default()),
                            _ => return Err(ApiError::invalid(format!("Invalid '{}': only text parts are supported in a function call's output.", param(&format!(".output[{j}]"))), param(&format!(".output[{j}].type")))),
                        }
                    }
                    text
                }
                Some(other) => other.to_string(),
                None => return Err(ApiError::invalid(format!("Missing required parameter: '{}'.", param(".output")), param(".output"))),
            };
            let mut m = message("tool", MessageContent::Text(output));
            m.extra.insert("tool_call_id".into(), Value::String(call_id.to_owned()));
            messages.push(m);
        }
        // Reasoning summaries of an earlier turn carry nothing a chat model can use.
        "reasoning" => {}
        other => return Err(ApiError::invalid(format!("Invalid value for '{}': input items of type {other:?} are not supported.", param(".type")), param(".type"))),
    }
    Ok(())
}

/// A Responses content part as a chat content part.
fn chat_part(part: &Value, param: &str) -> Result<Value, ApiError> {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {
            let text = part.get("text").and_then(Value::as_str).ok_or_else(|| ApiError::invalid(format!("Missing required parameter: '{param}.text'."), format!("{param}.text")))?;
            Ok(json!({"type": "text", "text": text}))
        }
        Some("input_image") => {
            let url = part.get("image_url").and_then(Value::as_str).ok_or_else(|| ApiError::invalid(format!("'{param}.image_url' is required (file ids are not supported)."), format!("{param}.image_url")))?;
            let mut image = json!({"url": url});
            if let Some(detail) = part.get("detail") {
                image["detail"] = detail.clone();
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        // An earlier answer's refusal, kept in a conversation the client carries itself.
        Some("refusal") => {
            let refusal = part.get("refusal").and_then(Value::as_str).ok_or_else(|| ApiError::invalid(format!("Missing required parameter: '{param}.refusal'."), format!("{param}.refusal")))?;
            Ok(json!({"type": "refusal", "refusal": refusal}))
        }
        Some(other) => Err(ApiError::invalid(format!("Invalid value for '{param}.type': {other:?} content parts are not supported."), format!("{param}.type"))),
        None => Err(ApiError::invalid(format!("Missing required parameter: '{param}.type'."), format!("{param}.type"))),
    }
}

/// Checks that every `function_call_output` of this turn's `input` answers a function call made
/// earlier in the conversation (`history`) or in this input, once, and that every such call has
/// its output, as the API does: a 400 naming the call otherwise.
pub fn check_call_outputs(history: &[ChatMessage], input: &[ChatMessage]) -> Result<(), ApiError> {
    let mut calls: Vec<&str> = Vec::new();
    let mut answered: Vec<&str> = Vec::new();
    for m in history.iter().chain(input) {
        if let Some(Value::Array(made)) = m.extra.get("tool_calls") {
            calls.extend(made.iter().filter_map(|c| c.get("id").and_then(Value::as_str)));
        }
        if m.role == "tool" {
            let call_id = m.extra.get("tool_call_id").and_then(Value::as_str).unwrap_or_default();
            if !calls.contains(&call_id) {
                return Err(ApiError::invalid(format!("No tool call found for function call output with call_id {call_id:?}."), "input"));
            }
            // A second output for one call would reach the provider as a result of nothing.
            if answered.contains(&call_id) {
                return Err(ApiError::invalid(format!("The function call with call_id {call_id:?} already has an output."), "input"));
            }
            answered.push(call_id);
        }
    }
    // Said in the Responses API's terms (the chat translation would refuse it in chat's).
    match calls.iter().find(|c| !answered.contains(c)) {
        Some(call) => Err(ApiError::invalid(format!("No tool output found for function call {call}."), "input")),
        None => Ok(()),
    }
}

/// This turn's input messages as listed items, each with an id derived from `response_id`:
/// messages (`input_text` parts; assistant turns as `output_text`), function calls and outputs.
pub fn listed_items(response_id: &str, input: &[ChatMessage]) -> Vec<Value> {
    let base = suffix(response_id);
    let mut items = Vec::new();
    for m in input {
        let n = items.len();
        let text = m.content.as_ref().and_then(MessageContent::text);
        if m.role == "tool" {
            items.push(json!({"id": format!("fco_{base}_{n}"), "type": "function_call_output", "status": "completed",
                "call_id": m.extra.get("tool_call_id").cloned().unwrap_or(Value::Null), "output": text.unwrap_or_default()}));
            continue;
        }
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            let part = if m.role == "assistant" { text_part(&text, Vec::new()) } else { json!({"type": "input_text", "text": text}) };
            items.push(json!({"id": format!("msg_{base}_{n}"), "type": "message", "role": m.role, "status": "completed", "content": [part]}));
        }
        for call in m.extra.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let n = items.len();
            items.push(json!({"id": format!("fc_{base}_{n}"), "type": "function_call", "status": "completed",
                "call_id": call.get("id").cloned().unwrap_or(Value::Null), "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
                "arguments": call.pointer("/function/arguments").cloned().unwrap_or(Value::Null)}));
        }
    }
    items
}

/// True when `req` has tools other than functions (web search, file search, …).
pub fn has_hosted_tools(req: &ResponsesRequest) -> bool {
    req.tools.iter().flatten().any(|t| t.get("type").and_then(Value::as_str) != Some("function"))
}

/// `req` with its function tools only (and no `tool_choice` naming another kind), for routing.
pub fn function_tools_only(req: &ResponsesRequest) -> ResponsesRequest {
    let mut view = req.clone();
    view.tools = view.tools.map(|tools| tools.into_iter().filter(|t| t.get("type").and_then(Value::as_str) == Some("function")).collect());
    let no_functions = view.tools.as_ref().is_none_or(Vec::is_empty);
    // A choice among hosted tools (`{"type": "web_search"}`), or any choice when only hosted tools
    // were given (`"auto"`, `"required"`), is the provider's to apply, not this view's.
    if no_functions || view.tool_choice.as_ref().and_then(|c| c.get("type")).and_then(Value::as_str).is_some_and(|t| t != "function") {
        view.tool_choice = None;
    }
    view
}

/// Chat messages as Responses input items (for a provider that speaks the Responses API):
/// text messages, `function_call` items for tool calls, `function_call_output` for results.
pub fn input_items(messages: &[ChatMessage]) -> Vec<Value> {
    let mut items = Vec::with_capacity(messages.len());
    for m in messages {
        let text = m.content.as_ref().and_then(MessageContent::text);
        if m.role == "tool" {
            items.push(json!({"type": "function_call_output", "call_id": m.extra.get("tool_call_id").cloned().unwrap_or(Value::Null), "output": text.unwrap_or_default()}));
            continue;
        }
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            items.push(json!({"role": m.role, "content": text}));
        }
        for call in m.extra.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            items.push(json!({"type": "function_call", "call_id": call.get("id").cloned().unwrap_or(Value::Null),
                "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null), "arguments": call.pointer("/function/arguments").cloned().unwrap_or(Value::Null)}));
        }
    }
    items
}

/// Each function result moved right after the message that made its call, as chat requires:
/// Responses input may give it later (after a new user message, say).
fn results_after_their_calls(messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    fn call_ids(m: &ChatMessage) -> Vec<String> {
        let calls = m.extra.get("tool_calls").and_then(Value::as_array).into_iter().flatten();
        calls.filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_owned)).collect()
    }
    fn result_of(m: &ChatMessage) -> Option<&str> {
        (m.role == "tool").then(|| m.extra.get("tool_call_id").and_then(Value::as_str)).flatten()
    }
    let called: Vec<String> = messages.iter().filter(|m| m.role == "assistant").flat_map(call_ids).collect();
    let (mut results, rest): (Vec<ChatMessage>, Vec<ChatMessage>) =
        messages.into_iter().partition(|m| result_of(m).is_some_and(|id| called.iter().any(|c| c == id)));
    let mut out = Vec::with_capacity(results.len() + rest.len());
    for m in rest {
        let ids = if m.role == "assistant" { call_ids(&m) } else { Vec::new() };
        out.push(m);
        for id in ids {
            if let Some(at) = results.iter().position(|r| result_of(r) == Some(id.as_str())) {
                out.push(results.remove(at));
            }
        }
    }
    out.append(&mut results);
    out
}

/// The chat request for `req`, continuing `history` (an earlier turn's conversation).
pub fn to_chat(req: &ResponsesRequest, history: &[ChatMessage], input: &[ChatMessage]) -> Result<ChatRequest, ApiError> {
    let mut messages = Vec::with_capacity(history.len() + input.len() + 1);
    if let Some(instructions) = &req.instructions {
        messages.push(message("system", MessageContent::Text(instructions.clone())));
    }
    messages.extend_from_slice(history);
    messages.extend_from_slice(input);
    let messages = results_after_their_calls(messages);
    if messages.is_empty() {
        return Err(ApiError::invalid("'input' must contain at least one item.", "input"));
    }
    let tools = req.tools.as_ref().filter(|t| !t.is_empty()).map(|tools| chat_tools(tools)).transpose()?;
    let tool_choice = req.tool_choice.as_ref().map(|choice| match choice {
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(Value::Null)}})
        }
        // `{"type": "allowed_tools", "mode", "tools": [{"type": "function", "name"}]}` → chat's shape.
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("allowed_tools") => {
            let tools: Vec<Value> = o.get("tools").and_then(Value::as_array).into_iter().flatten().map(|tool| match tool.get("type").and_then(Value::as_str) {
                Some("function") => json!({"type": "function", "function": {"name": tool.get("name").cloned().unwrap_or(Value::Null)}}),
                _ => tool.clone(),
            }).collect();
            let mut allowed = Map::new();
            for (key, value) in [("mode", o.get("mode").cloned()), ("tools", o.get("tools").map(|_| Value::Array(tools)))] {
                if let Some(value) = value {
                    allowed.insert(key.into(), value);
                }
            }
            json!({"type": "allowed_tools", "allowed_tools": allowed})
        }
        other => other.clone(),
    });
    let response_format = req.text.as_ref().and_then(|t| t.get("format")).map(chat_format).transpose()?.flatten();
    let mut extra = Map::new();
    if let Some(parallel) = req.parallel_tool_calls.filter(|_| tools.is_some()) {
        extra.insert("parallel_tool_calls".into(), Value::Bool(parallel));
    }
    if let Some(user) = &req.user {
        extra.insert("user".into(), Value::String(user.clone()));
    }
    // The chat API's names for what the Responses API nests or names alike: a reasoning model
    // behind a chat endpoint keeps its effort (and with it its cost).
    let same_named = [("service_tier", &req.service_tier), ("safety_identifier", &req.safety_identifier), ("prompt_cache_key", &req.prompt_cache_key)];
    let effort = req.reasoning.as_ref().and_then(|r| r.get("effort"));
    for (key, value) in same_named.into_iter().chain([("reasoning_effort", &effort.cloned())]) {
        if let Some(value) = value.as_ref().filter(|v| !v.is_null()) {
            extra.insert(key.into(), value.clone());
        }
    }
    if req.include.iter().flatten().any(|i| i == LOGPROBS_INCLUDE) {
        extra.insert("logprobs".into(), Value::Bool(true));
        if let Some(top) = &req.top_logprobs {
            extra.insert("top_logprobs".into(), top.clone());
        }
    }
    Ok(ChatRequest {
        model: req.model.clone(),
        messages,
        stream: req.stream,
        // Usage is needed for `response.completed` whatever the client asked.
        stream_options: req.is_stream().then(|| StreamOptions { include_usage: Some(true), extra: Map::new() }),
        max_tokens: None,
        max_completion_tokens: req.max_output_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        seed: None,
        stop: None,
        n: None,
        tools: tools.map(Value::Array),
        tool_choice,
        response_format,
        raw_prompt: false,
        output_cap: None,
        tenant: None,
        extra,
    })
}

/// Responses function tools (`{"type":"function","name",…}`) as chat tools.
fn chat_tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Err(ApiError::invalid(format!("Invalid value for 'tools[{i}].type': only \"function\" tools are supported."), format!("tools[{i}].type")));
            }
            let mut function = Map::new();
            for key in ["name", "description", "parameters", "strict"] {
                if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                    function.insert(key.into(), v.clone());
                }
            }
            if !function.contains_key("name") {
                return Err(ApiError::invalid(format!("Missing required parameter: 'tools[{i}].name'."), format!("tools[{i}].name")));
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

/// `text.format` as a chat `response_format` (`None` for plain text).
fn chat_format(format: &Value) -> Result<Option<Value>, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") | None => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), v.clone());
                }
            }
            for required in ["name", "schema"] {
                if !schema.contains_key(required) {
                    return Err(ApiError::invalid(format!("Missing required parameter: 'text.format.{required}'."), format!("text.format.{required}")));
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        Some(other) => Err(ApiError::invalid(format!("Invalid value for 'text.format.type': {other:?}."), "text.format.type")),
    }
}

/// Identity and echo fields shared by every `response` object of one request.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `resp_…`.
    pub id: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The model, as answered (or as asked until the answer names one).
    pub model: String,
    echo: Map<String, Value>,
}

impl Envelope {
    /// A new response id for `req`.
    pub fn new(req: &ResponsesRequest, id: String, created_at: u64) -> Self {
        let mut echo = Map::new();
        echo.insert("instructions".into(), req.instructions.clone().map_or(Value::Null, Value::String));
        echo.insert("max_output_tokens".into(), req.max_output_tokens.map_or(Value::Null, Value::from));
        echo.insert("metadata".into(), Value::Object(req.metadata.clone().unwrap_or_default()));
        echo.insert("parallel_tool_calls".into(), Value::Bool(req.parallel_tool_calls.unwrap_or(true)));
        echo.insert("previous_response_id".into(), req.previous_response_id.clone().map_or(Value::Null, Value::String));
        echo.insert("store".into(), Value::Bool(req.wants_store()));
        echo.insert("temperature".into(), req.temperature.map_or(json!(1.0), |t| json!(t)));
        echo.insert("top_p".into(), req.top_p.map_or(json!(1.0), |t| json!(t)));
        echo.insert("text".into(), req.text.clone().unwrap_or_else(|| json!({"format": {"type": "text"}})));
        echo.insert("tool_choice".into(), req.tool_choice.clone().unwrap_or_else(|| json!("auto")));
        // Tools as the API writes them back: `strict` and `parameters` always present.
        let tools = req.tools.iter().flatten().map(|tool| {
            let mut tool = tool.clone();
            if let Value::Object(t) = &mut tool {
                t.entry("strict").or_insert(Value::Null);
                t.entry("parameters").or_insert(Value::Null);
            }
            tool
        });
        echo.insert("tools".into(), Value::Array(tools.collect()));
        echo.insert("truncation".into(), json!(req.truncation.as_deref().unwrap_or("disabled")));
        if let Some(user) = &req.user {
            echo.insert("user".into(), Value::String(user.clone()));
        }
        let asked = |field: &str| req.reasoning.as_ref().and_then(|r| r.get(field)).cloned().unwrap_or(Value::Null);
        echo.insert("reasoning".into(), json!({"effort": asked("effort"), "summary": asked("summary")}));
        Self { id, created_at, model: req.model.clone(), echo }
    }

    /// The `response` object with this status, output and usage.
    pub fn response(&self, status: &str, output: &[Value], usage: Option<&Usage>, incomplete: Option<&str>) -> Value {
        let mut object = Map::new();
        object.insert("id".into(), Value::String(self.id.clone()));
        object.insert("object".into(), json!("response"));
        object.insert("created_at".into(), json!(self.created_at));
        object.insert("status".into(), json!(status));
        object.insert("error".into(), Value::Null);
        object.insert("incomplete_details".into(), incomplete.map_or(Value::Null, |reason| json!({"reason": reason})));
        object.insert("model".into(), Value::String(self.model.clone()));
        object.insert("output".into(), Value::Array(output.to_vec()));
        object.extend(self.echo.clone());
        if let Some(usage) = usage {
            object.insert("usage".into(), response_usage(usage));
        }
        Value::Object(object)
    }
}

/// Chat usage in the Responses shape.
pub fn response_usage(usage: &Usage) -> Value {
    // A reasoning model's chat usage says how many of its output tokens were thinking.
    let reasoning = usage.extra.get("completion_tokens_details").and_then(|d| d.get("reasoning_tokens")).and_then(Value::as_u64).unwrap_or(0);
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_prompt_tokens(), "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.total_tokens,
    })
}

/// The reason a response is incomplete, from the chat finish reason.
fn incomplete_reason(finish_reason: Option<&str>) -> Option<&'static str> {
    match finish_reason {
        Some("length") => Some("max_output_tokens"),
        Some("content_filter") => Some("content_filter"),
        _ => None,
    }
}

/// Output items of a whole chat answer (its first choice): a message with the text, then one
/// `function_call` per tool call. Item ids are derived from the response id.
pub fn output_items(envelope: &Envelope, answer: &ChatResponse) -> (Vec<Value>, Option<&'static str>) {
    let Some(choice) = answer.choices.first() else { return (Vec::new(), None) };
    let incomplete = incomplete_reason(choice.finish_reason.as_deref());
    // An answer cut short leaves its items `incomplete`, as the API marks them.
    let status = if incomplete.is_some() { "incomplete" } else { "completed" };
    let mut items = Vec::new();
    // A reasoning model's thinking (vLLM, llama-server, SGLang: `reasoning_content` or
    // `reasoning`) is its reasoning item, before the answer, as the API gives it.
    if let Some(thinking) = reasoning_of(&choice.message.extra) {
        items.push(reasoning_item(&envelope.id, 0, thinking, status));
    }
    let mut content = Vec::new();
    if let Some(text) = choice.message.content.as_deref().filter(|t| !t.is_empty()) {
        content.push(text_part(text, logprob_entries(choice.logprobs.as_ref())));
    }
    // A refusal (structured outputs' safety answer) is the message's refusal part, as the API gives it.
    if let Some(refusal) = choice.message.refusal.as_deref().filter(|r| !r.is_empty()) {
        content.push(refusal_part(refusal));
    }
    if !content.is_empty() {
        items.push(message_with(&envelope.id, &content, status));
    }
    if let Some(Value::Array(calls)) = choice.message.extra.get("tool_calls") {
        for (i, call) in calls.iter().enumerate() {
            let function = call.get("function");
            let name = function.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default();
            let arguments = function.and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or_default();
            let call_id = call.get("id").and_then(Value::as_str).map_or_else(|| format!("call_{i}"), str::to_owned);
            items.push(function_item(&envelope.id, i, &call_id, name, arguments, status));
        }
    }
    (items, incomplete)
}

/// The thinking a chat message or delta carries: `reasoning_content` (`DeepSeek`, vLLM before
/// 0.10, `SGLang`) or `reasoning` (vLLM, llama-server, `OpenRouter`).
fn reasoning_of(extra: &Map<String, Value>) -> Option<&str> {
    ["reasoning_content", "reasoning"].iter().find_map(|k| extra.get(*k).and_then(Value::as_str).filter(|t| !t.is_empty()))
}

/// A `reasoning` output item with its text as one `reasoning_text` part (none while in progress).
fn reasoning_item(response_id: &str, index: usize, text: &str, status: &str) -> Value {
    let content = if status == "in_progress" { Vec::new() } else { vec![reasoning_part(text)] };
    json!({"id": reasoning_id(response_id, index), "type": "reasoning", "status": status, "summary": [], "content": content})
}

fn reasoning_part(text: &str) -> Value {
    json!({"type": "reasoning_text", "text": text})
}

fn reasoning_id(response_id: &str, index: usize) -> String {
    format!("rs_{}_{index}", suffix(response_id))
}

fn message_item(response_id: &str, text: &str, logprobs: Vec<Value>, status: &str) -> Value {
    let content = if status == "in_progress" { Vec::new() } else { vec![text_part(text, logprobs)] };
    message_with(response_id, &content, status)
}

fn message_with(response_id: &str, content: &[Value], status: &str) -> Value {
    json!({"id": message_id(response_id), "type": "message", "status": status, "role": "assistant", "content": content})
}

fn refusal_part(refusal: &str) -> Value {
    json!({"type": "refusal", "refusal": refusal})
}

fn text_part(text: &str, logprobs: Vec<Value>) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": Value::Array(logprobs)})
}

/// The token entries of a chat answer's or chunk's `logprobs` (the Responses API uses the same
/// entry shape: `token`, `logprob`, `bytes`, `top_logprobs`).
fn logprob_entries(logprobs: Option<&Value>) -> Vec<Value> {
    logprobs.and_then(|l| l.get("content")).and_then(Value::as_array).cloned().unwrap_or_default()
}

fn function_item(response_id: &str, index: usize, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"id": format!("fc_{}_{index}", suffix(response_id)), "type": "function_call", "status": status, "call_id": call_id, "name": name, "arguments": arguments})
}

fn suffix(response_id: &str) -> &str {
    response_id.strip_prefix("resp_").unwrap_or(response_id)
}

fn message_id(response_id: &str) -> String {
    format!("msg_{}", suffix(response_id))
}

/// The complete `response` object for a whole chat answer.
pub fn from_chat(envelope: &mut Envelope, answer: &ChatResponse) -> Value {
    envelope.model.clone_from(&answer.model);
    let (output, incomplete) = output_items(envelope, answer);
    let status = if incomplete.is_some() { "incomplete" } else { "completed" };
    envelope.response(status, &output, answer.usage.as_ref(), incomplete)
}

/// The conversation after this turn: `history`, this turn's input, and its output as chat
/// messages (text as an assistant message, function calls as its `tool_calls`).
pub fn conversation_after(history: &[ChatMessage], input: &[ChatMessage], response: &Value) -> Vec<ChatMessage> {
    let mut conversation = Vec::with_capacity(history.len() + input.len() + 1);
    conversation.extend_from_slice(history);
    conversation.extend_from_slice(input);
    let mut text = String::new();
    let mut refusal = String::new();
    let mut calls = Vec::new();
    for item in response.get("output").and_then(Value::as_array).into_iter().flatten() {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                for part in item.get("content").and_then(Value::as_array).into_iter().flatten() {
                    text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default());
                    refusal.push_str(part.get("refusal").and_then(Value::as_str).unwrap_or_default());
                }
            }
            Some("function_call") => calls.push(json!({
                "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {"name": item.get("name").cloned().unwrap_or(Value::Null), "arguments": item.get("arguments").cloned().unwrap_or(Value::Null)},
            })),
            _ => {}
        }
    }
    let mut answer = ChatMessage { role: "assistant".into(), content: (!text.is_empty()).then(|| MessageContent::Text(text)), extra: Map::new() };
    if !calls.is_empty() {
        answer.extra.insert("tool_calls".into(), Value::Array(calls));
    }
    if !refusal.is_empty() {
        answer.extra.insert("refusal".into(), Value::String(refusal));
    }
    if answer.content.is_some() || !answer.extra.is_empty() {
        conversation.push(answer);
    }
    conversation
}

/// Turns chat chunks into Responses stream events, in the API's order: `response.created`,
/// `response.in_progress`, then per output item `output_item.added` (+ `content_part.added`),
/// its deltas, its `.done` events — one item at a time: an item is finished before the next is
/// added — and finally `response.completed` (or `.incomplete`).
#[derive(Debug)]
pub struct EventWriter {
    envelope: Envelope,
    sequence: u64,
    /// Output items so far; the last may still be open.
    output: Vec<Value>,
    /// The assistant message, once opened: its place and content.
    message: Option<MessageState>,
    /// Chat tool-call index → index in `output` of its function call.
    calls: Vec<(u64, usize)>,
    /// The reasoning item still open: its place in `output` and its text so far.
    reasoning: Option<(usize, String)>,
    /// Index in `output` of the item still open.
    open: Option<usize>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

/// The streamed assistant message: its text and its tokens' log-probabilities, a refusal, and the
/// order their content parts were opened in.
#[derive(Debug, Default)]
struct MessageState {
    at: usize,
    text: String,
    logprobs: Vec<Value>,
    refusal: String,
    /// Content parts in order: `false` the text, `true` the refusal.
    parts: Vec<bool>,
}

impl MessageState {
    fn part_index(&self, refusal: bool) -> Option<usize> {
        self.parts.iter().position(|&p| p == refusal)
    }

    /// The finished content parts, in the order they were opened.
    fn content(&self) -> Vec<Value> {
        self.parts.iter().map(|&refusal| if refusal { refusal_part(&self.refusal) } else { text_part(&self.text, self.logprobs.clone()) }).collect()
    }
}

/// One stream event: its `type` and its whole body.
pub type Event = (&'static str, Value);

impl EventWriter {
    /// A writer for a response described by `envelope`.
    pub fn new(envelope: Envelope) -> Self {
        Self { envelope, sequence: 0, output: Vec::new(), message: None, calls: Vec::new(), reasoning: None, open: None, finish_reason: None, usage: None }
    }

    fn event(&mut self, kind: &'static str, mut body: Value) -> Event {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        (kind, body)
    }

    /// The model that answers, once known.
    pub fn answered_by(&mut self, model: &str) {
        if !model.is_empty() {
            model.clone_into(&mut self.envelope.model);
        }
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) -> Vec<Event> {
        let response = self.envelope.response("in_progress", &[], None, None);
        vec![self.event("response.created", json!({"response": response.clone()})), self.event("response.in_progress", json!({"response": response}))]
    }

    /// The events one chat chunk gives.
    pub fn chunk(&mut self, chunk: &ChatChunk) -> Vec<Event> {
        let mut events = Vec::new();
        self.answered_by(&chunk.model);
        if chunk.usage.is_some() {
            self.usage.clone_from(&chunk.usage);
        }
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(delta) = reasoning_of(&choice.delta.extra) {
                self.reasoning_delta(delta, &mut events);
            }
            if let Some(delta) = choice.delta.content.as_deref().filter(|d| !d.is_empty()) {
                self.message_delta(false, delta, &logprob_entries(choice.logprobs.as_ref()), &mut events);
            }
            if let Some(delta) = choice.delta.extra.get("refusal").and_then(Value::as_str).filter(|d| !d.is_empty()) {
                self.message_delta(true, delta, &[], &mut events);
            }
            if let Some(Value::Array(calls)) = choice.delta.extra.get("tool_calls") {
                for call in calls {
                    self.call_delta(call, &mut events);
                }
            }
            if choice.finish_reason.is_some() {
                self.finish_reason.clone_from(&choice.finish_reason);
            }
        }
        events
    }

    /// A piece of the model's thinking: opens a reasoning item and its `reasoning_text` part
    /// unless one is open (thinking after the answer began is an item of its own).
    fn reasoning_delta(&mut self, delta: &str, events: &mut Vec<Event>) {
        let at = if let Some((at, _)) = &self.reasoning {
            *at
        } else {
            self.close_open(events, "completed");
            let at = self.output.len();
            let earlier = self.output.iter().filter(|item| item["type"] == "reasoning").count();
            let item = reasoning_item(&self.envelope.id, earlier, "", "in_progress");
            self.output.push(item.clone());
            self.reasoning = Some((at, String::new()));
            self.open = Some(at);
            let item_id = item["id"].clone();
            events.push(self.event("response.output_item.added", json!({"output_index": at, "item": item})));
            events.push(self.event("response.content_part.added", json!({"item_id": item_id, "output_index": at, "content_index": 0, "part": reasoning_part("")})));
            at
        };
        if let Some((_, text)) = self.reasoning.as_mut() {
            text.push_str(delta);
        }
        let item_id = self.output[at]["id"].clone();
        events.push(self.event("response.reasoning_text.delta", json!({"item_id": item_id, "output_index": at, "content_index": 0, "delta": delta})));
    }

    /// A piece of the message's text (or of its refusal): opens the message, and the part, if
    /// they are not open.
    fn message_delta(&mut self, refusal: bool, delta: &str, logprobs: &[Value], events: &mut Vec<Event>) {
        let at = if let Some(message) = &self.message {
            message.at
        } else {
            self.close_open(events, "completed");
            let at = self.output.len();
            let item = message_item(&self.envelope.id, "", Vec::new(), "in_progress");
            self.output.push(item.clone());
            self.message = Some(MessageState { at, ..MessageState::default() });
            self.open = Some(at);
            events.push(self.event("response.output_item.added", json!({"output_index": at, "item": item})));
            at
        };
        let item_id = message_id(&self.envelope.id);
        let Some(message) = self.message.as_mut() else { return };
        let content_index = if let Some(index) = message.part_index(refusal) {
            index
        } else {
            message.parts.push(refusal);
            let index = message.parts.len() - 1;
            let part = if refusal { refusal_part("") } else { text_part("", Vec::new()) };
            events.push(self.event("response.content_part.added", json!({"item_id": item_id, "output_index": at, "content_index": index, "part": part})));
            index
        };
        let Some(message) = self.message.as_mut() else { return };
        if refusal {
            message.refusal.push_str(delta);
            events.push(self.event("response.refusal.delta", json!({"item_id": item_id, "output_index": at, "content_index": content_index, "delta": delta})));
        } else {
            message.text.push_str(delta);
            message.logprobs.extend(logprobs.iter().cloned());
            events.push(self.event("response.output_text.delta", json!({"item_id": item_id, "output_index": at, "content_index": content_index, "delta": delta, "logprobs": logprobs})));
        }
    }

    fn call_delta(&mut self, call: &Value, events: &mut Vec<Event>) {
        let chat_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let function = call.get("function");
        let output_index = if let Some(&(_, at)) = self.calls.iter().find(|(i, _)| *i == chat_index) {
            at
        } else {
            self.close_open(events, "completed");
            let at = self.output.len();
            let call_id = call.get("id").and_then(Value::as_str).map_or_else(|| format!("call_{chat_index}"), str::to_owned);
            let name = function.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default();
            let item = function_item(&self.envelope.id, self.calls.len(), &call_id, name, "", "in_progress");
            self.output.push(item.clone());
            self.calls.push((chat_index, at));
            self.open = Some(at);
            events.push(self.event("response.output_item.added", json!({"output_index": at, "item": item})));
            at
        };
        let Some(delta) = function.and_then(|f| f.get("arguments")).and_then(Value::as_str).filter(|d| !d.is_empty()) else { return };
        let item_id = self.output[output_index]["id"].clone();
        if let Some(Value::String(arguments)) = self.output[output_index].get_mut("arguments") {
            arguments.push_str(delta);
        }
        events.push(self.event("response.function_call_arguments.delta", json!({"item_id": item_id, "output_index": output_index, "delta": delta})));
    }

    /// Finishes the open item, if any, with its `.done` events.
    fn close_open(&mut self, events: &mut Vec<Event>, item_status: &str) {
        let Some(at) = self.open.take() else { return };
        let item_id = self.output[at]["id"].clone();
        if self.output[at]["type"] == "message" {
            let Some(message) = self.message.as_ref() else { return };
            let content = message.content();
            for (index, &refusal) in message.parts.clone().iter().enumerate() {
                let part = content[index].clone();
                let done = if refusal {
                    let refusal = part["refusal"].clone();
                    self.event("response.refusal.done", json!({"item_id": item_id, "output_index": at, "content_index": index, "refusal": refusal}))
                } else {
                    let (text, logprobs) = (part["text"].clone(), part["logprobs"].clone());
                    self.event("response.output_text.done", json!({"item_id": item_id, "output_index": at, "content_index": index, "text": text, "logprobs": logprobs}))
                };
                events.push(done);
                events.push(self.event("response.content_part.done", json!({"item_id": item_id, "output_index": at, "content_index": index, "part": part})));
            }
            self.output[at] = message_with(&self.envelope.id, &content, item_status);
        } else if self.output[at]["type"] == "reasoning" {
            let text = self.reasoning.take().map(|(_, text)| text).unwrap_or_default();
            events.push(self.event("response.reasoning_text.done", json!({"item_id": item_id, "output_index": at, "content_index": 0, "text": text})));
            events.push(self.event("response.content_part.done", json!({"item_id": item_id, "output_index": at, "content_index": 0, "part": reasoning_part(&text)})));
            self.output[at]["status"] = json!(item_status);
            self.output[at]["content"] = json!([reasoning_part(&text)]);
        } else {
            let arguments = self.output[at]["arguments"].clone();
            let name = self.output[at]["name"].clone();
            events.push(self.event("response.function_call_arguments.done", json!({"item_id": item_id, "output_index": at, "name": name, "arguments": arguments})));
            self.output[at]["status"] = json!(item_status);
        }
        let item = self.output[at].clone();
        events.push(self.event("response.output_item.done", json!({"output_index": at, "item": item})));
    }

    /// Closes the open item and answers the final `response` object with the closing events
    /// (the last of which is `response.completed` or `response.incomplete`).
    pub fn finish(&mut self) -> (Vec<Event>, Value) {
        let mut events = Vec::new();
        let incomplete = incomplete_reason(self.finish_reason.as_deref());
        self.close_open(&mut events, if incomplete.is_some() { "incomplete" } else { "completed" });
        let status = if incomplete.is_some() { "incomplete" } else { "completed" };
        let response = self.envelope.response(status, &self.output, self.usage.as_ref(), incomplete);
        let kind = if incomplete.is_some() { "response.incomplete" } else { "response.completed" };
        events.push(self.event(kind, json!({"response": response.clone()})));
        (events, response)
    }

    /// The `error` event for a stream that failed after it started.
    pub fn error(&mut self, code: &str, message: &str) -> Event {
        self.event("error", json!({"code": code, "message": message, "param": null}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_pass_by_value)]
    fn request(body: Value) -> ResponsesRequest {
        parse_request(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn reasoning_tokens_a_chat_provider_reports_are_the_responses_reasoning_tokens() {
        let mut usage = Usage::new(10, 40);
        usage.extra.insert("completion_tokens_details".into(), json!({"reasoning_tokens": 32}));
        assert_eq!(response_usage(&usage)["output_tokens_details"]["reasoning_tokens"], 32);
        assert_eq!(response_usage(&Usage::new(1, 2))["output_tokens_details"]["reasoning_tokens"], 0);
    }

    #[test]
    fn a_string_input_is_one_user_message_after_the_instructions() {
        let req = request(json!({"model": "auto", "input": "hi", "instructions": "be brief"}));
        let chat = to_chat(&req, &[], &input_messages(&req).unwrap()).unwrap();
        let roles: Vec<_> = chat.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user"]);
        assert_eq!(chat.messages[1].content.as_ref().and_then(MessageContent::text).as_deref(), Some("hi"));
    }

    #[test]
    fn allowed_tools_become_chats_allowed_tools() {
        let req = request(json!({"model": "auto", "input": "hi", "tools": [{"type": "function", "name": "a"}, {"type": "function", "name": "b"}],
            "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "b"}]}}));
        let chat = to_chat(&req, &[], &input_messages(&req).unwrap()).unwrap();
        assert_eq!(chat.tool_choice, Some(json!({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "b"}}]}})));
    }

    #[test]
    fn function_calls_and_outputs_become_tool_calls_and_tool_messages() {
        let req = request(json!({"model": "auto", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{\"city\":\"Oslo\"}"},
            {"type": "function_call", "call_id": "c2", "name": "get", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "rain"},
        ], "tools": [{"type": "function", "name": "get", "parameters": {"type": "object"}}], "tool_choice": {"type": "function", "name": "get"}}));
        let chat = to_chat(&req, &[], &input_messages(&req).unwrap()).unwrap();
        assert_eq!(chat.messages.len(), 3);
        assert_eq!(chat.messages[1].extra["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(chat.messages[2].extra["tool_call_id"], "c1");
        assert_eq!(chat.tools.unwrap()[0]["function"]["name"], "get");
        assert_eq!(chat.tool_choice.unwrap(), json!({"type": "function", "function": {"name": "get"}}));
    }

    #[test]
    fn a_function_call_output_must_answer_a_call() {
        let req = request(json!({"model": "auto", "input": [
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "rain"},
        ]}));
        assert!(check_call_outputs(&[], &input_messages(&req).unwrap()).is_ok());
        // The call was made in an earlier turn.
        let earlier = input_messages(&req).unwrap()[..1].to_vec();
        let answer = request(json!({"model": "auto", "input": [{"type": "function_call_output", "call_id": "c1", "output": "rain"}]}));
        assert!(check_call_outputs(&earlier, &input_messages(&answer).unwrap()).is_ok());
        let err = check_call_outputs(&[], &input_messages(&answer).unwrap()).unwrap_err();
        assert_eq!(err.body().error.param.as_deref(), Some("input"));
        assert!(err.body().error.message.contains("\"c1\""));
        // Answered in an earlier turn, or twice in this one: refused.
        let history = input_messages(&req).unwrap();
        let again = check_call_outputs(&history, &input_messages(&answer).unwrap()).unwrap_err();
        assert!(again.body().error.message.contains("already has an output"), "{again:?}");
    }

    #[test]
    fn unsupported_tools_and_items_name_the_field() {
        let req = request(json!({"model": "auto", "input": "x", "tools": [{"type": "web_search"}]}));
        let err = to_chat(&req, &[], &input_messages(&req).unwrap()).unwrap_err();
        assert_eq!(err.body().error.param.as_deref(), Some("tools[0].type"));
        let req = request(json!({"model": "auto", "input": [{"type": "item_reference", "id": "x"}]}));
        assert_eq!(input_messages(&req).unwrap_err().body().error.param.as_deref(), Some("input[0].type"));
        assert_eq!(parse_request(br#"{"model":"auto"}"#).unwrap_err().body().error.param.as_deref(), Some("input"));
    }

    #[test]
    fn json_schema_format_becomes_a_chat_response_format() {
        let req = request(json!({"model": "auto", "input": "x", "text": {"format": {"type": "json_schema", "name": "p", "schema": {"type": "object"}, "strict": true}}}));
        let chat = to_chat(&req, &[], &input_messages(&req).unwrap()).unwrap();
        assert_eq!(chat.response_format.unwrap(), json!({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}, "strict": true}}));
    }

    #[allow(clippy::needless_pass_by_value)]
    fn chunk(delta: Value, finish: Option<&str>) -> ChatChunk {
        serde_json::from_value(json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})).unwrap()
    }

    #[test]
    fn stream_events_come_in_the_api_order_with_increasing_sequence_numbers() {
        let req = request(json!({"model": "auto", "input": "x"}));
        let mut writer = EventWriter::new(Envelope::new(&req, "resp_1".into(), 5));
        let mut events = writer.start();
        events.extend(writer.chunk(&chunk(json!({"role": "assistant", "content": "He"}), None)));
        events.extend(writer.chunk(&chunk(json!({"content": "llo"}), None)));
        events.extend(writer.chunk(&chunk(json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}]}), None)));
        events.extend(writer.chunk(&chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}), Some("tool_calls"))));
        let (end, response) = writer.finish();
        events.extend(end);
        let kinds: Vec<_> = events.iter().map(|(k, _)| *k).collect();
        // One item at a time: the message is done before the call is added.
        assert_eq!(kinds, [
            "response.created", "response.in_progress",
            "response.output_item.added", "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
            "response.output_text.done", "response.content_part.done", "response.output_item.done",
            "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
            "response.function_call_arguments.done", "response.output_item.done", "response.completed",
        ]);
        for (i, (_, body)) in events.iter().enumerate() {
            assert_eq!(body["sequence_number"], json!(i));
        }
        assert_eq!(response["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(response["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(response["output"][1]["call_id"], "call_a");
        assert_eq!(response["status"], "completed");
    }

    #[test]
    fn a_streamed_refusal_is_the_messages_refusal_part() {
        let req = request(json!({"model": "auto", "input": "x"}));
        let mut writer = EventWriter::new(Envelope::new(&req, "resp_1".into(), 5));
        let mut events = writer.start();
        events.extend(writer.chunk(&chunk(json!({"role": "assistant", "refusal": "I can"}), None)));
        events.extend(writer.chunk(&chunk(json!({"refusal": "not."}), Some("stop"))));
        let (end, response) = writer.finish();
        events.extend(end);
        let kinds: Vec<_> = events.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [
            "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
            "response.refusal.delta", "response.refusal.delta", "response.refusal.done", "response.content_part.done",
            "response.output_item.done", "response.completed",
        ]);
        assert_eq!(events[6].1["refusal"], "I cannot.");
        assert_eq!(response["output"][0]["content"], json!([{"type": "refusal", "refusal": "I cannot."}]));
    }

    #[test]
    fn output_text_logprobs_are_asked_for_and_carried_streamed_or_not() {
        let plain = request(json!({"model": "auto", "input": "x", "top_logprobs": 2}));
        let chat = to_chat(&plain, &[], &input_messages(&plain).unwrap()).unwrap();
        assert!(!chat.extra.contains_key("logprobs") && !chat.extra.contains_key("top_logprobs"), "only with include");
        let req = request(json!({"model": "auto", "input": "x", "include": [LOGPROBS_INCLUDE], "top_logprobs": 2}));
        let chat = to_chat(&req, &[], &input_messages(&req).unwrap()).unwrap();
        assert_eq!((&chat.extra["logprobs"], &chat.extra["top_logprobs"]), (&json!(true), &json!(2)));

        let entry = |t: &str| json!({"token": t, "logprob": -0.5, "bytes": t.as_bytes(), "top_logprobs": []});
        let with_logprobs = |delta: Value, tokens: &[&str]| {
            let mut c = chunk(delta, None);
            c.choices[0].logprobs = Some(json!({"content": tokens.iter().map(|t| entry(t)).collect::<Vec<_>>(), "refusal": null}));
            c
        };
        let mut writer = EventWriter::new(Envelope::new(&req, "resp_1".into(), 5));
        writer.start();
        let first = writer.chunk(&with_logprobs(json!({"content": "He"}), &["He"]));
        let second = writer.chunk(&with_logprobs(json!({"content": "llo"}), &["l", "lo"]));
        writer.chunk(&chunk(json!({}), Some("stop")));
        let (end, response) = writer.finish();
        let delta = |events: &[Event]| events.iter().find(|(k, _)| *k == "response.output_text.delta").unwrap().1["logprobs"].clone();
        assert_eq!(delta(&first), json!([entry("He")]));
        assert_eq!(delta(&second), json!([entry("l"), entry("lo")]));
        let all = json!([entry("He"), entry("l"), entry("lo")]);
        let done = end.iter().find(|(k, _)| *k == "response.output_text.done").unwrap();
        assert_eq!(done.1["logprobs"], all);
        assert_eq!(response["output"][0]["content"][0]["logprobs"], all);

        let answer: ChatResponse = serde_json::from_value(json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop",
                         "logprobs": {"content": all, "refusal": null}}]}))
        .unwrap();
        let whole = from_chat(&mut Envelope::new(&req, "resp_2".into(), 5), &answer);
        assert_eq!(whole["output"][0]["content"][0]["logprobs"], all);
    }

    #[test]
    fn chat_field_names_map_back_to_the_responses_fields() {
        for (chat, responses) in [
            ("max_completion_tokens", Some("max_output_tokens")),
            ("messages[3].content", Some("input")),
            ("tools[1].function.parameters", Some("tools[1].parameters")),
            ("tool_choice.function.name", Some("tool_choice.name")),
            ("tool_choice.allowed_tools.tools[2].function.name", Some("tool_choice.tools[2].name")),
            ("tool_choice.allowed_tools.mode", Some("tool_choice.mode")),
            ("response_format.json_schema.schema", Some("text.format.schema")),
            ("response_format.type", Some("text.format.type")),
            ("logprobs", Some("include")),
            ("temperature", None),
            ("tools[0].type", None),
        ] {
            assert_eq!(responses_param(chat).as_deref(), responses, "{chat}");
        }
        let err = ApiError::invalid("Invalid 'max_completion_tokens': 0. Expected a value of at least 1.", "max_completion_tokens").with_params_renamed(responses_param);
        let body = err.body();
        assert_eq!(body.error.param.as_deref(), Some("max_output_tokens"));
        assert_eq!(body.error.message, "Invalid 'max_output_tokens': 0. Expected a value of at least 1.");
    }

    #[test]
    fn a_chat_providers_thinking_is_a_reasoning_item_before_the_answer() {
        let req = request(json!({"model": "auto", "input": "x"}));
        for key in ["reasoning_content", "reasoning"] {
            let answer: ChatResponse = serde_json::from_value(json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "4", key: "2 and 2 make 4"}}]})).unwrap();
            let response = from_chat(&mut Envelope::new(&req, "resp_1".into(), 5), &answer);
            let output = response["output"].as_array().unwrap();
            assert_eq!(output.len(), 2, "{response}");
            assert_eq!(output[0], json!({"id": "rs_1_0", "type": "reasoning", "status": "completed", "summary": [],
                "content": [{"type": "reasoning_text", "text": "2 and 2 make 4"}]}));
            assert_eq!(output[1]["content"][0]["text"], "4");
        }
    }

    #[test]
    fn streamed_thinking_is_a_reasoning_item_finished_before_the_message() {
        let req = request(json!({"model": "auto", "input": "x"}));
        let mut writer = EventWriter::new(Envelope::new(&req, "resp_1".into(), 5));
        let mut events = writer.start();
        events.extend(writer.chunk(&chunk(json!({"role": "assistant", "reasoning_content": "2 and 2"}), None)));
        events.extend(writer.chunk(&chunk(json!({"reasoning": " make 4"}), None)));
        events.extend(writer.chunk(&chunk(json!({"content": "4"}), Some("stop"))));
        let (end, response) = writer.finish();
        events.extend(end);
        let kinds: Vec<_> = events.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [
            "response.created", "response.in_progress",
            "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta", "response.reasoning_text.delta",
            "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
            "response.output_item.added", "response.content_part.added", "response.output_text.delta",
            "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
        ]);
        assert_eq!(events[6].1["text"], "2 and 2 make 4");
        assert_eq!(events[8].1["item"]["content"], json!([{"type": "reasoning_text", "text": "2 and 2 make 4"}]));
        assert_eq!(response["output"][0]["type"], "reasoning");
        assert_eq!(response["output"][0]["status"], "completed");
        assert_eq!(response["output"][1]["content"][0]["text"], "4");
    }

    #[test]
    fn a_length_cut_answer_is_incomplete() {
        let req = request(json!({"model": "auto", "input": "x"}));
        let mut writer = EventWriter::new(Envelope::new(&req, "resp_1".into(), 5));
        writer.start();
        writer.chunk(&chunk(json!({"content": "a"}), Some("length")));
        let (events, response) = writer.finish();
        assert_eq!(events.last().unwrap().0, "response.incomplete");
        assert_eq!(response["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(response["output"][0]["status"], "incomplete");
        assert_eq!(response["output"][0]["content"][0]["text"], "a");
    }

    #[test]
    fn the_conversation_keeps_input_and_output_but_not_instructions() {
        let req = request(json!({"model": "auto", "input": "q1", "instructions": "sys"}));
        let input = input_messages(&req).unwrap();
        let response = json!({"output": [{"type": "message", "content": [{"type": "output_text", "text": "a1"}]}]});
        let conversation = conversation_after(&[], &input, &response);
        let roles: Vec<_> = conversation.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant"]);
        let next = request(json!({"model": "auto", "input": "q2", "instructions": "other"}));
        let chat = to_chat(&next, &conversation, &input_messages(&next).unwrap()).unwrap();
        let texts: Vec<_> = chat.messages.iter().map(|m| m.content.as_ref().and_then(MessageContent::text).unwrap_or_default()).collect();
        assert_eq!(texts, ["other", "q1", "a1", "q2"]);
    }
}
