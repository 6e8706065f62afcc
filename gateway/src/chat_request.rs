//! Reading and checking a chat-completions body, with OpenAI-style errors that name the field.

use providers::wire::ChatRequest;

use crate::error::ApiError;

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];

/// Parses `body` and checks what the API promises to check.
pub fn parse_chat_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let req: ChatRequest = parse_body(body)?;
    validate_chat_request(&req)?;
    Ok(req)
}

/// Parses a JSON body into `T`; serde's error (with its path) names the field. A valid body is
/// parsed once without path tracking (which costs about a third of the parse); only a body that
/// fails is parsed again, with it, to name the field.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde reads a struct from an array too, field by position: the API takes objects only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::InvalidRequest { message: "The request body must be a JSON object, not an array.".into(), param: None });
    }
    if let Ok(req) = serde_json::from_slice(body) {
        return Ok(req);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let req: T = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| {
            let inner = e.inner().to_string();
            let path = e.path().to_string();
            // serde names a missing field only in its message: put it in the param too.
            if let Some(field) = inner.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
                let param = if path == "." { field.to_owned() } else { format!("{path}.{field}") };
                return ApiError::invalid(format!("Missing required parameter: '{param}'."), param);
            }
            if e.inner().is_syntax() || e.inner().is_eof() || path == "." {
                return ApiError::InvalidRequest {
                    message: if path == "." && !e.inner().is_syntax() && !e.inner().is_eof() {
                        format!("The request body must be a JSON object: {inner}")
                    } else {
                        format!("We could not parse the JSON body of your request: {inner}")
                    },
                    param: None,
                };
            }
            let message = out_of_range(&path, &inner).unwrap_or_else(|| format!("Invalid type for '{path}': {}", in_api_terms(&inner)));
            ApiError::InvalidRequest { message, param: Some(path) }
        })?;
    deserializer.end().map_err(|e| ApiError::InvalidRequest {
        message: format!("We could not parse the JSON body of your request: {e}"),
        param: None,
    })?;
    Ok(req)
}

/// An integer of the right type out of its field's range (`max_tokens: -1`, `n: 10^12`), in
/// the API's words; `None` for other errors.
fn out_of_range(path: &str, serde_message: &str) -> Option<String> {
    let message = serde_message.split(" at line ").next().unwrap_or(serde_message);
    let (got, expected) = message.strip_prefix("invalid value: integer `")?.split_once("`, expected ")?;
    let max = match expected {
        "u8" => u64::from(u8::MAX),
        "u16" => u64::from(u16::MAX),
        "u32" => u64::from(u32::MAX),
        "u64" | "usize" => u64::MAX,
        _ => return None,
    };
    Some(if got.starts_with('-') {
        format!("Invalid '{path}': integer below minimum value. Expected a value >= 0, but got {got} instead.")
    } else {
        format!("Invalid '{path}': integer above maximum value. Expected a value <= {max}, but got {got} instead.")
    })
}

/// serde's message for a value of the wrong type, in the API's words: no Rust type names, no
/// position (the field is named).
fn in_api_terms(serde_message: &str) -> String {
    let message = serde_message.split(" at line ").next().unwrap_or(serde_message);
    if message.contains("untagged enum MessageContent") {
        return "expected a string or an array of content parts".to_owned();
    }
    let (got, expected) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|m| m.split_once(", expected "))
        .unwrap_or(("", message));
    let expected = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" => "a boolean",
        other => return if got.is_empty() { other.to_owned() } else { format!("expected {other}, but got {got}") },
    };
    if got.is_empty() { format!("expected {expected}") } else { format!("expected {expected}, but got {got}") }
}

/// Checks what the API promises to check on a chat request (also one translated from another API).
pub fn validate_chat_request(req: &ChatRequest) -> Result<(), ApiError> {
    if req.model.is_empty() {
        return Err(ApiError::invalid("'model' must be a non-empty string.", "model"));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("'messages' must contain at least one message.", "messages"));
    }
    for (i, m) in req.messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(ApiError::invalid(
                format!("Invalid value for 'messages[{i}].role': {:?}. Supported values are: {}.", m.role, ROLES.join(", ")),
                format!("messages[{i}].role"),
            ));
        }
        if m.content.is_none() && m.role != "assistant" {
            return Err(ApiError::invalid(
                format!("Missing required parameter: 'messages[{i}].content'."),
                format!("messages[{i}].content"),
            ));
        }
        if matches!(&m.content, Some(providers::wire::MessageContent::Parts(parts)) if parts.is_empty()) {
            return Err(ApiError::invalid(
                format!("Invalid 'messages[{i}].content': empty array. Expected an array with at least one content part."),
                format!("messages[{i}].content"),
            ));
        }
        if let Some(providers::wire::MessageContent::Parts(parts)) = &m.content {
            // A text part without its text: OpenAI refuses it; passed on, a provider would get
            // an empty text block (which Anthropic refuses) or the model nothing.
            if let Some(j) = parts.iter().position(|p| p.get("type").and_then(serde_json::Value::as_str) == Some("text") && !p.get("text").is_some_and(serde_json::Value::is_string)) {
                return Err(ApiError::invalid(
                    format!("Missing required parameter: 'messages[{i}].content[{j}].text'."),
                    format!("messages[{i}].content[{j}].text"),
                ));
            }
        }
        if m.role == "tool" {
            answers_a_call(&req.messages[..i], m, i)?;
        }
        if m.role == "assistant" {
            calls_are_answered(m, &req.messages[i + 1..], i)?;
        }
    }
    if let Some(t) = req.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid(format!("Invalid 'temperature': {t}. Expected a value between 0 and 2."), "temperature"));
        }
    }
    if let Some(p) = req.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::invalid(format!("Invalid 'top_p': {p}. Expected a value between 0 and 1."), "top_p"));
        }
    }
    if req.n == Some(0) {
        return Err(ApiError::invalid("Invalid 'n': 0. Expected a value of at least 1.", "n"));
    }
    for (field, value) in [("max_tokens", req.max_tokens), ("max_completion_tokens", req.max_completion_tokens)] {
        if value == Some(0) {
            return Err(ApiError::invalid(format!("Invalid '{field}': 0. Expected a value of at least 1."), field));
        }
    }
    if let Some(stop) = &req.stop {
        if stop.to_vec().len() > 4 {
            return Err(ApiError::invalid("'stop' accepts at most 4 sequences.", "stop"));
        }
    }
    if req.stream_options.is_some() && !req.is_stream() {
        return Err(ApiError::invalid("'stream_options' is only allowed when 'stream' is true.", "stream_options"));
    }
    if let Some(tools) = &req.tools {
        validate_tools(tools)?;
    }
    validate_tool_choice(req)?;
    validate_response_format(req.response_format.as_ref())?;
    for field in ["frequency_penalty", "presence_penalty"] {
        match req.extra.get(field) {
            None | Some(serde_json::Value::Null) => {}
            Some(v) if v.as_f64().is_some_and(|x| (-2.0..=2.0).contains(&x)) => {}
            Some(v) => return Err(ApiError::invalid(format!("Invalid '{field}': {v}. Expected a number between -2 and 2."), field)),
        }
    }
    validate_logit_bias(req.extra.get("logit_bias"))?;
    validate_extra_types(req)?;
    validate_metadata(req.extra.get("metadata"))?;
    match req.extra.get("top_logprobs") {
        None | Some(serde_json::Value::Null) => {}
        Some(v) if v.as_u64().is_none_or(|n| n > 20) => {
            return Err(ApiError::invalid(format!("Invalid 'top_logprobs': {v}. Expected an integer between 0 and 20."), "top_logprobs"))
        }
        Some(_) if req.extra.get("logprobs").and_then(serde_json::Value::as_bool) != Some(true) => {
            return Err(ApiError::invalid("'top_logprobs' is only allowed when 'logprobs' is true.", "top_logprobs"))
        }
        Some(_) => {}
    }
    Ok(())
}

/// A `tool` message answers a call an earlier assistant message made (by `tool_call_id`), as the
/// API requires.
fn answers_a_call(earlier: &[providers::wire::ChatMessage], tool: &providers::wire::ChatMessage, i: usize) -> Result<(), ApiError> {
    let id = tool.extra.get("tool_call_id").and_then(serde_json::Value::as_str).ok_or_else(|| {
        ApiError::invalid(format!("Missing required parameter: 'messages[{i}].tool_call_id'."), format!("messages[{i}].tool_call_id"))
    })?;
    let called = earlier.iter().filter(|m| m.role == "assistant").any(|m| {
        m.extra.get("tool_calls").and_then(serde_json::Value::as_array).is_some_and(|calls| calls.iter().any(|c| c.get("id").and_then(serde_json::Value::as_str) == Some(id)))
    });
    if called {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("Invalid 'messages[{i}]': messages with role 'tool' must answer a preceding assistant message's 'tool_calls' (no call has id {id:?})."),
            format!("messages[{i}].tool_call_id"),
        ))
    }
}

/// An assistant message's `tool_calls` are each answered by the `tool` messages right after it,
/// as the API requires (a model shown a call without its result would make one up).
fn calls_are_answered(assistant: &providers::wire::ChatMessage, after: &[providers::wire::ChatMessage], i: usize) -> Result<(), ApiError> {
    let Some(calls) = assistant.extra.get("tool_calls").and_then(serde_json::Value::as_array) else { return Ok(()) };
    let answered: Vec<&str> = after
        .iter()
        .take_while(|m| m.role == "tool")
        .filter_map(|m| m.extra.get("tool_call_id").and_then(serde_json::Value::as_str))
        .collect();
    let unanswered: Vec<&str> = calls.iter().filter_map(|c| c.get("id").and_then(serde_json::Value::as_str)).filter(|id| !answered.contains(id)).collect();
    if unanswered.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        format!(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
            unanswered.join(", ")
        ),
        format!("messages[{i}].tool_calls"),
    ))
}

/// `metadata`: at most 16 pairs of strings, keys up to 64 characters, values up to 512, as the
/// API takes it.
fn validate_metadata(metadata: Option<&serde_json::Value>) -> Result<(), ApiError> {
    let Some(serde_json::Value::Object(pairs)) = metadata else { return Ok(()) };
    if pairs.len() > 16 {
        return Err(ApiError::invalid(format!("Invalid 'metadata': {} pairs. Expected at most 16.", pairs.len()), "metadata"));
    }
    for (key, value) in pairs {
        let fits = key.chars().count() <= 64 && value.as_str().is_some_and(|v| v.chars().count() <= 512);
        if !fits {
            return Err(ApiError::invalid(
                format!("Invalid 'metadata.{key}': metadata values are strings of at most 512 characters, keys at most 64."),
                format!("metadata.{key}"),
            ));
        }
    }
    Ok(())
}

/// Fields kept as passed-through extras whose type the API checks: a wrong one is a 400 naming
/// it, not silently ignored (`"logprobs": "true"` would otherwise answer without them).
fn validate_extra_types(req: &ChatRequest) -> Result<(), ApiError> {
    use serde_json::Value;
    /// A field, the type it must have (in words), and the check of that type.
    type TypedField = (&'static str, &'static str, fn(&Value) -> bool);
    const TYPED: &[TypedField] = &[
        ("logprobs", "a boolean", Value::is_boolean),
        ("parallel_tool_calls", "a boolean", Value::is_boolean),
        ("store", "a boolean", Value::is_boolean),
        ("user", "a string", Value::is_string),
        ("safety_identifier", "a string", Value::is_string),
        ("prompt_cache_key", "a string", Value::is_string),
        ("metadata", "an object", Value::is_object),
    ];
    for (field, expected, is_right) in TYPED {
        if let Some(v) = req.extra.get(*field).filter(|v| !v.is_null() && !is_right(v)) {
            return Err(ApiError::invalid(format!("Invalid type for '{field}': expected {expected}, but got {v}."), *field));
        }
    }
    Ok(())
}

/// `tool_choice`: `none`, `auto`, `required`, a named function or custom tool
/// (`{"type": "function", "function": {"name"}}`, `{"type": "custom", "custom": {"name"}}`), or
/// `{"type": "allowed_tools", "allowed_tools": {"mode": "auto" | "required", "tools": […]}}`,
/// every name among the tools; anything but `none` needs tools.
fn validate_tool_choice(req: &ChatRequest) -> Result<(), ApiError> {
    let Some(choice) = req.tool_choice.as_ref().filter(|c| !c.is_null()) else { return Ok(()) };
    let defined: Vec<(&str, &str)> = req.tools.as_ref().and_then(serde_json::Value::as_array).map_or_else(Vec::new, |tools| {
        tools.iter().filter_map(|t| Some((t["type"].as_str()?, t.get(t["type"].as_str()?)?.get("name")?.as_str()?))).collect()
    });
    let mut chosen: Vec<((&str, &str), String)> = Vec::new();
    match choice {
        serde_json::Value::String(s) if s == "none" => return Ok(()),
        serde_json::Value::String(s) if s == "auto" || s == "required" => {}
        serde_json::Value::Object(o) if matches!(o.get("type").and_then(serde_json::Value::as_str), Some("function" | "custom")) => {
            chosen.push(named_tool(choice, "tool_choice")?);
        }
        serde_json::Value::Object(o) if o.get("type").and_then(serde_json::Value::as_str) == Some("allowed_tools") => {
            let mode = choice.pointer("/allowed_tools/mode").and_then(serde_json::Value::as_str);
            if !matches!(mode, Some("auto" | "required")) {
                return Err(ApiError::invalid(
                    "Invalid value for 'tool_choice.allowed_tools.mode': supported values are \"auto\" and \"required\".",
                    "tool_choice.allowed_tools.mode",
                ));
            }
            let listed = choice.pointer("/allowed_tools/tools").and_then(serde_json::Value::as_array).ok_or_else(|| {
                ApiError::invalid("Missing required parameter: 'tool_choice.allowed_tools.tools'.", "tool_choice.allowed_tools.tools")
            })?;
            for (i, tool) in listed.iter().enumerate() {
                chosen.push(named_tool(tool, &format!("tool_choice.allowed_tools.tools[{i}]"))?);
            }
            if listed.is_empty() && mode == Some("required") {
                return Err(ApiError::invalid(
                    "Invalid value for 'tool_choice.allowed_tools.tools': mode \"required\" needs at least one tool.",
                    "tool_choice.allowed_tools.tools",
                ));
            }
        }
        other => {
            return Err(ApiError::invalid(
                format!("Invalid value for 'tool_choice': {other}. Supported values are: \"none\", \"auto\", \"required\", {{\"type\": \"function\", \"function\": {{\"name\": …}}}}, {{\"type\": \"custom\", \"custom\": {{\"name\": …}}}} or {{\"type\": \"allowed_tools\", …}}."),
                "tool_choice",
            ))
        }
    }
    if defined.is_empty() {
        return Err(ApiError::invalid("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.", "tool_choice"));
    }
    if let Some(((kind, name), param)) = chosen.into_iter().find(|(tool, _)| !defined.contains(tool)) {
        return Err(ApiError::invalid(format!("Invalid value for '{param}': no {kind} tool named {name:?} in 'tools'."), param));
    }
    Ok(())
}

/// A tool named in a tool choice (`{"type": "function" | "custom", <type>: {"name"}}`): its type
/// and name, and the parameter that names it (for an error).
fn named_tool<'a>(tool: &'a serde_json::Value, at: &str) -> Result<((&'a str, &'a str), String), ApiError> {
    let kind = tool.get("type").and_then(serde_json::Value::as_str).filter(|k| matches!(*k, "function" | "custom")).ok_or_else(|| {
        ApiError::invalid(format!("Invalid value for '{at}.type': supported values are \"function\" and \"custom\"."), format!("{at}.type"))
    })?;
    let name = tool.get(kind).and_then(|t| t.get("name")).and_then(serde_json::Value::as_str).ok_or_else(|| {
        ApiError::invalid(format!("Missing required parameter: '{at}.{kind}.name'."), format!("{at}.{kind}.name"))
    })?;
    Ok(((kind, name), format!("{at}.{kind}.name")))
}

/// `response_format`: `{"type": "text" | "json_object"}` or `{"type": "json_schema", "json_schema": {…}}`.
fn validate_response_format(format: Option<&serde_json::Value>) -> Result<(), ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else { return Ok(()) };
    match format.get("type").and_then(serde_json::Value::as_str) {
        Some("text" | "json_object") => Ok(()),
        Some("json_schema") if format.get("json_schema").is_some_and(serde_json::Value::is_object) => Ok(()),
        Some("json_schema") => Err(ApiError::invalid("Missing required parameter: 'response_format.json_schema'.", "response_format.json_schema")),
        _ => Err(ApiError::invalid(
            "Invalid value for 'response_format.type'. Supported values are: 'text', 'json_object' and 'json_schema'.",
            "response_format.type",
        )),
    }
}

/// `logit_bias`: token ids (as strings) to numbers from -100 to 100.
fn validate_logit_bias(bias: Option<&serde_json::Value>) -> Result<(), ApiError> {
    let Some(bias) = bias.filter(|b| !b.is_null()) else { return Ok(()) };
    let map = bias.as_object().ok_or_else(|| ApiError::invalid("Invalid type for 'logit_bias': expected an object mapping token ids to numbers.", "logit_bias"))?;
    for (token, value) in map {
        if token.parse::<u32>().is_err() {
            return Err(ApiError::invalid(format!("Invalid key in 'logit_bias': {token:?} is not a token id."), "logit_bias"));
        }
        if !value.as_f64().is_some_and(|x| (-100.0..=100.0).contains(&x)) {
            return Err(ApiError::invalid(format!("Invalid value for 'logit_bias' token {token}: {value}. Expected a number between -100 and 100."), "logit_bias"));
        }
    }
    Ok(())
}

/// `tools`: function and custom tools, each with a name of 1–64 of `[A-Za-z0-9_-]`; a function's
/// `parameters`, if given, a JSON Schema object; a custom tool's `format`, if given, free text or a
/// Lark or regex grammar (as the API checks them).
fn validate_tools(tools: &serde_json::Value) -> Result<(), ApiError> {
    let list = tools.as_array().ok_or_else(|| ApiError::invalid("'tools' must be an array of tools.", "tools"))?;
    for (i, tool) in list.iter().enumerate() {
        let at = |field: &str| format!("tools[{i}]{field}");
        let Some(kind @ ("function" | "custom")) = tool["type"].as_str() else {
            return Err(ApiError::invalid(format!("Invalid value for '{}': supported values are \"function\" and \"custom\".", at(".type")), at(".type")));
        };
        let definition = tool.get(kind).filter(|f| f.is_object()).ok_or_else(|| {
            ApiError::invalid(format!("Missing required parameter: '{}'.", at(&format!(".{kind}"))), at(&format!(".{kind}")))
        })?;
        let name_ok = definition["name"].as_str().is_some_and(|n| {
            (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !name_ok {
            return Err(ApiError::invalid(
                format!("Invalid '{}': a string of 1 to 64 letters, digits, underscores or dashes is required.", at(&format!(".{kind}.name"))),
                at(&format!(".{kind}.name")),
            ));
        }
        if kind == "custom" {
            validate_custom_format(definition.get("format"), &at(".custom.format"))?;
        } else if let Some(parameters) = definition.get("parameters") {
            let type_ok = parameters.get("type").is_none_or(|t| {
                t.is_string() || t.as_array().is_some_and(|a| a.iter().all(serde_json::Value::is_string))
            });
            if !parameters.is_object() || !type_ok {
                return Err(ApiError::invalid(
                    format!("Invalid schema for '{}': it must be a JSON Schema object.", at(".function.parameters")),
                    at(".function.parameters"),
                ));
            }
        }
    }
    Ok(())
}

/// A custom tool's `format`: absent, `{"type": "text"}`, or `{"type": "grammar", "grammar":
/// {"definition": "…", "syntax": "lark" | "regex"}}`.
fn validate_custom_format(format: Option<&serde_json::Value>, at: &str) -> Result<(), ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else { return Ok(()) };
    match format.get("type").and_then(serde_json::Value::as_str) {
        Some("text") => Ok(()),
        Some("grammar") => {
            if !format.pointer("/grammar/definition").is_some_and(serde_json::Value::is_string) {
                return Err(ApiError::invalid(format!("Missing required parameter: '{at}.grammar.definition'."), format!("{at}.grammar.definition")));
            }
            match format.pointer("/grammar/syntax").and_then(serde_json::Value::as_str) {
                Some("lark" | "regex") => Ok(()),
                _ => Err(ApiError::invalid(
                    format!("Invalid value for '{at}.grammar.syntax': supported values are \"lark\" and \"regex\"."),
                    format!("{at}.grammar.syntax"),
                )),
            }
        }
        _ => Err(ApiError::invalid(format!("Invalid value for '{at}.type': supported values are \"text\" and \"grammar\"."), format!("{at}.type"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(body: &str) -> Option<String> {
        match parse_chat_request(body.as_bytes()) {
            Err(ApiError::InvalidRequest { param, .. }) => param,
            other => panic!("expected a 400 for {body}, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_minimal_request() {
        let req = parse_chat_request(br#"{"model":"auto","messages":[{"role":"user","content":"Hi"}]}"#).unwrap();
        assert_eq!(req.model, "auto");
    }

    #[test]
    fn malformed_json_has_no_param() {
        assert_eq!(param_of("{not json"), None);
        assert_eq!(param_of("[1]"), None);
    }

    #[test]
    fn each_invalid_field_is_named() {
        assert_eq!(param_of(r#"{"model":"auto"}"#).as_deref(), Some("messages"));
        assert_eq!(param_of(r#"{"messages":[]}"#).as_deref(), Some("model"));
        assert_eq!(param_of(r#"{"model":"auto","messages":[]}"#).as_deref(), Some("messages"));
        assert_eq!(param_of(r#"{"model":"auto","messages":"hi"}"#).as_deref(), Some("messages"));
        assert_eq!(param_of(r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#).as_deref(), Some("temperature"));
        assert_eq!(param_of(r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"temperature":3}"#).as_deref(), Some("temperature"));
        assert_eq!(param_of(r#"{"model":"auto","messages":[{"role":"wizard","content":"x"}]}"#).as_deref(), Some("messages[0].role"));
        assert_eq!(param_of(r#"{"model":"auto","messages":[{"role":"user"}]}"#).as_deref(), Some("messages[0].content"));
        assert_eq!(param_of(r#"{"model":"auto","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text"}]}]}"#).as_deref(), Some("messages[0].content[1].text"));
        assert_eq!(param_of(r#"{"model":"auto","messages":[{"role":"user","content":[{"type":"text","text":null}]}]}"#).as_deref(), Some("messages[0].content[0].text"));
        assert_eq!(param_of(r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#).as_deref(), Some("max_tokens"));
        assert_eq!(param_of(r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#).as_deref(), Some("max_tokens"));
        assert_eq!(param_of(r#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#).as_deref(), Some("model"));
        assert_eq!(param_of(r#"{"model":"auto","messages":[{"content":"x"}]}"#).as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn type_errors_speak_of_json_types_not_rust_ones() {
        let message = |body: &str| match parse_chat_request(body.as_bytes()) {
            Err(ApiError::InvalidRequest { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        let content = message(r#"{"model":"auto","messages":[{"role":"user","content":5}]}"#);
        assert_eq!(content, "Invalid type for 'messages[0].content': expected a string or an array of content parts");
        let max = message(r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#);
        assert_eq!(max, "Invalid 'max_tokens': integer below minimum value. Expected a value >= 0, but got -1 instead.");
        let n = message(r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"n":1000000000000}"#);
        assert_eq!(n, "Invalid 'n': integer above maximum value. Expected a value <= 4294967295, but got 1000000000000 instead.");
        let typed = message(r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"max_tokens":"many"}"#);
        assert!(typed.starts_with("Invalid type for 'max_tokens': expected a non-negative integer"), "{typed}");
        assert!(!message(r#"{"model":"auto","messages":[{"role":"user","content":"x"}],"seed":"s"}"#).contains("i64"));
    }

    #[test]
    fn tools_must_be_function_tools_with_a_schema() {
        let with = |tools: &str| format!(r#"{{"model":"auto","messages":[{{"role":"user","content":"x"}}],"tools":{tools}}}"#);
        assert_eq!(param_of(&with(r#""x""#)).as_deref(), Some("tools"));
        assert_eq!(param_of(&with(r#"[{"type":"retrieval"}]"#)).as_deref(), Some("tools[0].type"));
        assert_eq!(param_of(&with(r#"[{"type":"function"}]"#)).as_deref(), Some("tools[0].function"));
        assert_eq!(param_of(&with(r#"[{"type":"function","function":{"name":"has space"}}]"#)).as_deref(), Some("tools[0].function.name"));
        assert_eq!(param_of(&with(r#"[{"type":"function","function":{"name":"f","parameters":{"type":5}}}]"#)).as_deref(), Some("tools[0].function.parameters"));
        let ok = with(r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{}}}}]"#);
        assert!(parse_chat_request(ok.as_bytes()).is_ok());
    }

    #[test]
    fn custom_tools_are_checked_as_the_api_checks_them() {
        let with = |tools: &str| format!(r#"{{"model":"auto","messages":[{{"role":"user","content":"x"}}],"tools":{tools}}}"#);
        assert_eq!(param_of(&with(r#"[{"type":"custom"}]"#)).as_deref(), Some("tools[0].custom"));
        assert_eq!(param_of(&with(r#"[{"type":"custom","custom":{"name":""}}]"#)).as_deref(), Some("tools[0].custom.name"));
        assert_eq!(param_of(&with(r#"[{"type":"custom","custom":{"name":"f","format":{"type":"json"}}}]"#)).as_deref(), Some("tools[0].custom.format.type"));
        let grammar = |syntax: &str| with(&format!(r#"[{{"type":"custom","custom":{{"name":"f","format":{{"type":"grammar","grammar":{{"definition":"start: x","syntax":"{syntax}"}}}}}}}}]"#));
        assert_eq!(param_of(&grammar("ebnf")).as_deref(), Some("tools[0].custom.format.grammar.syntax"));
        for ok in [with(r#"[{"type":"custom","custom":{"name":"apply_patch","description":"d"}}]"#), with(r#"[{"type":"custom","custom":{"name":"f","format":{"type":"text"}}}]"#), grammar("lark"), grammar("regex")] {
            assert!(parse_chat_request(ok.as_bytes()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn tool_choice_names_a_defined_tool_of_its_kind_or_allows_some() {
        let tools = r#"[{"type":"function","function":{"name":"f"}},{"type":"custom","custom":{"name":"c"}}]"#;
        let with = |choice: &str| format!(r#"{{"model":"auto","messages":[{{"role":"user","content":"x"}}],"tools":{tools},"tool_choice":{choice}}}"#);
        for ok in [
            r#""required""#,
            r#"{"type":"function","function":{"name":"f"}}"#,
            r#"{"type":"custom","custom":{"name":"c"}}"#,
            r#"{"type":"allowed_tools","allowed_tools":{"mode":"required","tools":[{"type":"custom","custom":{"name":"c"}},{"type":"function","function":{"name":"f"}}]}}"#,
            r#"{"type":"allowed_tools","allowed_tools":{"mode":"auto","tools":[]}}"#,
        ] {
            assert!(parse_chat_request(with(ok).as_bytes()).is_ok(), "{ok}");
        }
        let refused = [
            (r#"{"type":"custom","custom":{"name":"f"}}"#, "tool_choice.custom.name"),
            (r#"{"type":"function","function":{"name":"c"}}"#, "tool_choice.function.name"),
            (r#"{"type":"function"}"#, "tool_choice.function.name"),
            (r#"{"type":"allowed_tools","allowed_tools":{"mode":"any","tools":[]}}"#, "tool_choice.allowed_tools.mode"),
            (r#"{"type":"allowed_tools","allowed_tools":{"mode":"auto"}}"#, "tool_choice.allowed_tools.tools"),
            (r#"{"type":"allowed_tools","allowed_tools":{"mode":"required","tools":[]}}"#, "tool_choice.allowed_tools.tools"),
            (r#"{"type":"allowed_tools","allowed_tools":{"mode":"auto","tools":[{"type":"function","function":{"name":"g"}}]}}"#, "tool_choice.allowed_tools.tools[0].function.name"),
            (r#"{"type":"allowed_tools","allowed_tools":{"mode":"auto","tools":[{"type":"web_search"}]}}"#, "tool_choice.allowed_tools.tools[0].type"),
            (r#"{"type":"mcp"}"#, "tool_choice"),
        ];
        for (choice, param) in refused {
            assert_eq!(param_of(&with(choice)).as_deref(), Some(param), "{choice}");
        }
    }
}
