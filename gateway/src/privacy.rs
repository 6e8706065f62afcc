//! The request's text as the router sees it, PII found in it, and redact-and-restore around a
//! remote call. Every string a provider would see is scanned: message text, text parts, tool
//! call arguments, and every other string value of the request (tool and schema descriptions and
//! enums, `stop`, `user`, `metadata`, a message's `name`, fields passed through) except
//! identifiers (`type`, ids, tool and schema names); any other content part (image, audio, file)
//! cannot be scanned and counts as `unscannable` PII (fail closed). Only message text is
//! classified.

use std::collections::{BTreeMap, HashMap};

use providers::wire::{part_text, text_field, ChatChunk, ChatMessage, ChatRequest, ChatResponse, MessageContent};
use router::{PiiKind, Redaction, Restorer};
use serde_json::Value;

/// What the router needs from a request's text.
#[derive(Debug, Default)]
pub struct Inspection {
    /// All text, one piece per line, for classification.
    pub text: String,
    /// PII kinds and counts.
    pub pii: BTreeMap<String, u32>,
}

/// Scans every string of `req` that would leave the gateway.
pub fn inspect(req: &ChatRequest) -> Inspection {
    let scanner = router::pii_scanner();
    let mut out = Inspection::default();
    for message in &req.messages {
        visit_message(message, &mut |piece| match piece {
            Piece::Text(text) => {
                let text = as_read(text);
                count_pii(scanner, &text, &mut out.pii);
                out.text.push_str(&text);
                out.text.push('\n');
            }
            Piece::Opaque => *out.pii.entry(PiiKind::Unscannable.as_str().to_owned()).or_insert(0) += 1,
        });
    }
    for_each_other_string(req, &mut |text| count_pii(scanner, &as_read(text), &mut out.pii));
    out
}

/// About how many bytes [`inspect`] and [`redact`] scan in `req`: the lengths of its strings.
pub fn scanned_bytes(req: &ChatRequest) -> usize {
    let mut total = 0;
    for message in &req.messages {
        visit_message(message, &mut |piece| {
            if let Piece::Text(text) = piece {
                total += text.len();
            }
        });
    }
    for_each_other_string(req, &mut |text| total += text.len());
    total
}

/// From this many scanned bytes on, a scan tells the runtime it blocks (the scanner's worst
/// case, text dense with near-matches, is about 20 ms per 64 KiB).
const HEAVY_SCAN_BYTES: usize = 64 * 1024;

/// Runs `scan`, a scan of `bytes` bytes, without holding up other requests: a large one runs with
/// the multi-threaded runtime told it blocks, so the requests waiting on this worker thread move
/// to another (two 4 MB requests of digits used to stall every tenant for seconds). Small scans,
/// and any on a single-threaded runtime (one core: nowhere to move to), run as they are.
pub fn without_holding_others<T>(bytes: usize, scan: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_threaded = Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if bytes >= HEAVY_SCAN_BYTES && multi_threaded {
        tokio::task::block_in_place(scan)
    } else {
        scan()
    }
}

/// Keys whose string values are identifiers or enumerations the API defines, never free text:
/// not scanned, never redacted (a redacted tool name or `type` would break the request).
const IDENTIFIERS: &[&str] = &["type", "id", "tool_call_id", "role"];
/// In tool definitions and schemas `name` is an identifier too (a message's `name` is not).
const DEFINITION_IDENTIFIERS: &[&str] = &["type", "id", "name"];

/// Every string under `value` a provider sees: string values whose key is not in `skip`, and
/// object keys (a metadata key or a schema property can hold PII too).
fn walk_strings(value: &Value, key: Option<&str>, skip: &[&str], visit: &mut impl FnMut(&str)) {
    match value {
        Value::String(s) if !key.is_some_and(|k| skip.contains(&k)) => visit(s),
        Value::Array(items) => items.iter().for_each(|item| walk_strings(item, key, skip, visit)),
        Value::Object(fields) => fields.iter().for_each(|(k, v)| {
            visit(k);
            walk_strings(v, Some(k), skip, visit);
        }),
        _ => {}
    }
}

fn walk_strings_mut(value: &mut Value, key: Option<&str>, skip: &'static [&'static str], f: &mut dyn FnMut(&mut String)) {
    match value {
        Value::String(s) if !key.is_some_and(|k| skip.contains(&k)) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|item| walk_strings_mut(item, key, skip, f)),
        Value::Object(fields) => redact_map(fields, f, |_| skip),
        _ => {}
    }
}

/// Fields of a message content part left out of the walk: identifiers, or media (unscannable
/// already, and a redacted image or audio would be broken). Its text (`text`, a refusal's
/// `refusal`) is handled apart.
const PART_HANDLED: &[&str] = &["type", "id", "image_url", "input_audio", "file"];

/// The other fields of a content part (`{"type": "text", "text": …, "note": …}`).
fn part_fields(part: &Value) -> impl Iterator<Item = (&String, &Value)> {
    let text = text_field(part);
    part.as_object().into_iter().flatten().filter(move |(k, _)| !PART_HANDLED.contains(&k.as_str()) && Some(k.as_str()) != text)
}
/// Keys of a tool call: identifiers, and a function's `arguments` or a custom tool's `input`,
/// scanned as message text.
const CALL_HANDLED: &[&str] = &["type", "id", "name", "arguments", "input"];

/// The strings of `req` outside message text and tool-call arguments that a provider sees.
fn for_each_other_string(req: &ChatRequest, visit: &mut impl FnMut(&str)) {
    for message in &req.messages {
        for (key, value) in &message.extra {
            visit(key);
            let skip = if key == "tool_calls" { CALL_HANDLED } else { IDENTIFIERS };
            walk_strings(value, Some(key), skip, visit);
        }
        if let Some(MessageContent::Parts(parts)) = &message.content {
            for (key, value) in parts.iter().flat_map(part_fields) {
                visit(key);
                walk_strings(value, Some(key), IDENTIFIERS, visit);
            }
        }
    }
    for definitions in [&req.tools, &req.response_format, &req.tool_choice].into_iter().flatten() {
        walk_strings(definitions, None, DEFINITION_IDENTIFIERS, visit);
    }
    if let Some(options) = &req.stream_options {
        for (key, value) in &options.extra {
            visit(key);
            walk_strings(value, Some(key), IDENTIFIERS, visit);
        }
    }
    if let Some(stop) = &req.stop {
        stop.to_vec().iter().for_each(|s| visit(s));
    }
    for (key, value) in &req.extra {
        visit(key);
        walk_strings(value, Some(key), IDENTIFIERS, visit);
    }
}

fn for_each_other_string_mut(req: &mut ChatRequest, f: &mut dyn FnMut(&mut String)) {
    for message in &mut req.messages {
        redact_map(&mut message.extra, f, |key| if key == "tool_calls" { CALL_HANDLED } else { IDENTIFIERS });
        if let Some(MessageContent::Parts(parts)) = &mut message.content {
            for part in parts.iter_mut().filter_map(Value::as_object_mut) {
                // Only the other fields are taken out: a part's image data is never copied.
                let others: Vec<String> = part.keys().filter(|k| !PART_HANDLED.contains(&k.as_str())).cloned().collect();
                for key in others {
                    if let Some(value) = part.remove(&key) {
                        let mut one = serde_json::Map::from_iter([(key, value)]);
                        redact_map(&mut one, f, |_| IDENTIFIERS);
                        part.extend(one);
                    }
                }
            }
        }
    }
    for definitions in [&mut req.tools, &mut req.response_format, &mut req.tool_choice].into_iter().flatten() {
        walk_strings_mut(definitions, None, DEFINITION_IDENTIFIERS, f);
    }
    if let Some(options) = &mut req.stream_options {
        redact_map(&mut options.extra, f, |_| IDENTIFIERS);
    }
    match &mut req.stop {
        Some(providers::wire::Stop::One(s)) => f(s),
        Some(providers::wire::Stop::Many(all)) => {
            for stop in all {
                f(stop);
            }
        }
        None => {}
    }
    redact_map(&mut req.extra, f, |_| IDENTIFIERS);
}

/// [`walk_strings_mut`] over a map of fields: its keys and, under each, what `skip` leaves.
fn redact_map(fields: &mut serde_json::Map<String, Value>, f: &mut dyn FnMut(&mut String), skip: impl Fn(&str) -> &'static [&'static str]) {
    // Keys are renamed by taking the map apart (a key cannot change in place).
    let taken: Vec<(String, Value)> = std::mem::take(fields).into_iter().collect();
    for (mut key, mut value) in taken {
        walk_strings_mut(&mut value, Some(key.as_str()), skip(&key), f);
        f(&mut key);
        fields.insert(key, value);
    }
}

/// Counts the PII kinds found in `text` into `pii`.
/// `text` with its `\uXXXX` escapes written out (surrogate pairs joined), when it has some: a tool
/// result from Python's `json.dumps` escapes every non-ASCII character (the no-break spaces of an
/// IBAN, an accented email), and a model reads them decoded. Escapes JSON needs (`"`, `\`, control
/// characters, a lone surrogate) stay as they are and nothing else changes, so JSON stays the same
/// JSON byte for byte around them, parsable or not. JSON inside a JSON string (a tool result
/// holding a serialised body) has its escapes escaped once more (`\\\\u00a0`): written out too.
fn unescaped(text: &str) -> Option<String> {
    if !text.contains("\\u") {
        return None;
    }
    let hex4 = |at: usize| text.get(at..at + 4).filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit())).and_then(|h| u32::from_str_radix(h, 16).ok());
    // `\uXXXX` at `at`, or `\\uXXXX` (JSON inside a JSON string, its escape escaped once more):
    // the code and the escape's length.
    let escape_at = |at: usize, prefix: &str| text.get(at..).filter(|t| t.starts_with(prefix)).and_then(|_| hex4(at + prefix.len())).map(|code| (code, prefix.len() + 4));
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut copied) = (0, 0);
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some((prefix, (code, len))) = ["\\u", "\\\\u"].into_iter().find_map(|prefix| escape_at(i, prefix).map(|found| (prefix, found))) else {
            // Another escape (`\\`, `\"`, `\n`…): both characters stay.
            i += 2;
            continue;
        };
        let (decoded, len) = match code {
            0xD800..=0xDBFF => match escape_at(i + len, prefix) {
                Some((low @ 0xDC00..=0xDFFF, _)) => (char::from_u32(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), 2 * len),
                _ => (None, len),
            },
            _ => (char::from_u32(code), len),
        };
        if let Some(c) = decoded.filter(|c| !matches!(c, '"' | '\\') && !c.is_control()) {
            out.push_str(&text[copied..i]);
            out.push(c);
            copied = i + len;
        }
        i += len;
    }
    (copied > 0).then(|| {
        out.push_str(&text[copied..]);
        out
    })
}

/// `text` as a model reads it: with its escapes written out ([`unescaped`]), else as it is.
fn as_read(text: &str) -> std::borrow::Cow<'_, str> {
    unescaped(text).map_or(std::borrow::Cow::Borrowed(text), std::borrow::Cow::Owned)
}

fn count_pii(scanner: &router::PiiScanner, text: &str, pii: &mut BTreeMap<String, u32>) {
    for span in scanner.scan(text) {
        *pii.entry(span.kind.as_str().to_owned()).or_insert(0) += 1;
    }
}

/// Counts the PII kinds in every key and string of `fields` into `pii`.
pub fn count_pii_in(fields: &serde_json::Map<String, Value>, pii: &mut BTreeMap<String, u32>) {
    let scanner = router::pii_scanner();
    for (key, value) in fields {
        count_pii(scanner, &as_read(key), pii);
        walk_strings(value, None, &[], &mut |text| count_pii(scanner, &as_read(text), pii));
    }
}

/// True when any string anywhere in `value`, keys included, holds PII (read as a model reads it,
/// escapes written out).
pub fn any_pii(value: &Value) -> bool {
    let holds = |text: &str| !router::pii_scanner().scan(&as_read(text)).is_empty();
    match value {
        Value::String(s) => holds(s),
        Value::Array(items) => items.iter().any(any_pii),
        Value::Object(fields) => fields.iter().any(|(k, v)| holds(k) || any_pii(v)),
        _ => false,
    }
}

/// Scans plain texts (embedding inputs) like message text, escapes written out (a JSON record
/// indexed for retrieval spells a space in an IBAN `\u00a0`); `None` (token ids) is unscannable.
pub fn inspect_texts(texts: Option<&[String]>) -> Inspection {
    let mut out = Inspection::default();
    let Some(texts) = texts else {
        out.pii.insert(PiiKind::Unscannable.as_str().to_owned(), 1);
        return out;
    };
    let scanner = router::pii_scanner();
    for text in texts {
        count_pii(scanner, &as_read(text), &mut out.pii);
    }
    out
}

/// Characters of every scannable string of `req` (no scanning): the basis of token estimates.
pub fn text_chars(req: &ChatRequest) -> usize {
    let mut chars = 0;
    for message in &req.messages {
        visit_message(message, &mut |piece| {
            if let Piece::Text(text) = piece {
                chars += text.chars().count();
            }
        });
    }
    // Tool definitions and a response schema are prompt too: a model reads (and a provider
    // bills) them as input.
    for definitions in [&req.tools, &req.response_format].into_iter().flatten() {
        chars += serde_json::to_string(definitions).map_or(0, |json| json.chars().count());
    }
    chars
}

enum Piece<'a> {
    Text(&'a str),
    Opaque,
}

fn visit_message(message: &ChatMessage, visit: &mut impl FnMut(Piece<'_>)) {
    match &message.content {
        Some(MessageContent::Text(text)) => visit(Piece::Text(text)),
        Some(MessageContent::Parts(parts)) => {
            for part in parts {
                match part_text(part) {
                    Some(text) => visit(Piece::Text(text)),
                    None => visit(Piece::Opaque),
                }
            }
        }
        None => {}
    }
    for arguments in tool_call_arguments(&message.extra) {
        visit(Piece::Text(arguments));
    }
}

fn tool_call_arguments(extra: &serde_json::Map<String, Value>) -> impl Iterator<Item = &str> {
    extra
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|call| call.pointer("/function/arguments").or_else(|| call.pointer("/custom/input")).and_then(Value::as_str))
}

/// `text`, written out, with the PII the scanner finds replaced by typed placeholders (`<EMAIL_1>`), for logging
/// text that came from outside: a provider's error message may quote the prompt, and values are
/// never logged.
pub fn masked(text: &dyn std::fmt::Display) -> String {
    let text = text.to_string();
    let spans = router::scan_pii(&text);
    if spans.is_empty() {
        return text;
    }
    Redaction::new().redact(&text, &spans)
}

/// Replaces the PII in every scannable string of `req` with placeholders.
pub fn redact(req: &mut ChatRequest) -> Redaction {
    let scanner = router::pii_scanner();
    let mut redaction = Redaction::new();
    // Placeholder-shaped text anywhere in the request is never handed out as a placeholder.
    // A message text whose `\u` escapes hide PII is sent with them written out, so that what they
    // hide is replaced as the model would read it (other texts are sent as written, escapes and all).
    for_each_text_mut(req, &mut |text: &mut String| {
        if let Some(written_out) = unescaped(text) {
            // Placeholders written as escapes (`\u003cEMAIL_1\u003e`, as Go writes `<`) are read
            // as placeholders by the model: never handed out either.
            redaction.avoid(&written_out);
            if scanner.scan(&written_out).len() > scanner.scan(text).len() {
                *text = written_out;
            }
        }
        redaction.avoid(text);
    });
    for_each_text_mut(req, &mut |text: &mut String| {
        let spans = scanner.scan(text);
        if !spans.is_empty() {
            *text = redaction.redact(text, &spans);
        }
    });
    // A message's `name` must match `^[a-zA-Z0-9_-]{1,64}$` at OpenAI: a redacted one goes as
    // `EMAIL_1` (names are not written back into answers, so nothing needs restoring).
    for message in &mut req.messages {
        if let Some(Value::String(name)) = message.extra.get_mut("name") {
            if name.contains('<') {
                *name = name.replace(['<', '>'], "");
            }
        }
    }
    redaction
}

/// Every string of `req` that is scanned and redacted: message text, text parts, tool-call
/// arguments, and the other strings a provider sees.
fn for_each_text_mut(req: &mut ChatRequest, f: &mut dyn FnMut(&mut String)) {
    for_each_other_string_mut(req, f);
    for_each_message_text_mut(req, f);
}

/// The message texts of `req`: text content, text parts and tool-call arguments (what
/// [`inspect`] reads as the conversation).
fn for_each_message_text_mut(req: &mut ChatRequest, f: &mut dyn FnMut(&mut String)) {
    for message in &mut req.messages {
        match &mut message.content {
            Some(MessageContent::Text(text)) => f(text),
            Some(MessageContent::Parts(parts)) => {
                for part in parts {
                    if let Some(Value::String(text)) = text_field(part).and_then(|field| part.get_mut(field)) {
                        f(text);
                    }
                }
            }
            None => {}
        }
        if let Some(Value::Array(calls)) = message.extra.get_mut("tool_calls") {
            for call in calls {
                for (_, input) in call_inputs(call) {
                    f(input);
                }
            }
        }
    }
}

/// True when `req` asks for its answer's text in JSON (`response_format` `json_object` or
/// `json_schema`): a value put back into it goes in escaped, as inside a JSON string.
pub fn answers_in_json(req: &ChatRequest) -> bool {
    let kind = req.response_format.as_ref().and_then(|f| f.get("type")).and_then(Value::as_str);
    matches!(kind, Some("json_object" | "json_schema"))
}

/// The fields besides `content` where a model writes text that may repeat a placeholder: a
/// refusal and its reasoning (as vLLM, llama-server and `DeepSeek` send it).
const WRITTEN_FIELDS: [&str; 3] = ["refusal", "reasoning_content", "reasoning"];

/// Puts the original values back into an answer (`json`: its text is JSON, see
/// [`answers_in_json`]).
pub fn restore_response(response: &mut ChatResponse, redaction: &Redaction, json: bool) {
    if redaction.is_empty() {
        return;
    }
    for choice in &mut response.choices {
        if let Some(content) = &mut choice.message.content {
            *content = if json { redaction.restore_json(content) } else { redaction.restore(content) };
        }
        if let Some(refusal) = &mut choice.message.refusal {
            *refusal = redaction.restore(refusal);
        }
        for field in WRITTEN_FIELDS {
            if let Some(Value::String(text)) = choice.message.extra.get_mut(field) {
                *text = redaction.restore(text);
            }
        }
        if let Some(Value::Array(calls)) = choice.message.extra.get_mut("tool_calls") {
            for call in calls {
                // A function's arguments are JSON text: values go back escaped for it.
                for (custom, input) in call_inputs(call) {
                    *input = if custom { redaction.restore(input) } else { redaction.restore_json(input) };
                }
            }
        }
    }
}

/// A tool call's (or call delta's) model-written input strings, each with whether it is a custom
/// tool's.
fn call_inputs(call: &mut Value) -> impl Iterator<Item = (bool, &mut String)> {
    call.as_object_mut().into_iter().flat_map(|fields| fields.iter_mut()).filter_map(|(key, value)| {
        let (custom, field) = match key.as_str() {
            "function" => (false, "arguments"),
            "custom" => (true, "input"),
            _ => return None,
        };
        match value.get_mut(field) {
            Some(Value::String(input)) => Some((custom, input)),
            _ => None,
        }
    })
}

/// Restores placeholders in a stream, one [`Restorer`] per choice; text that may be a split
/// placeholder waits for the next chunk and is flushed with the choice's `finish_reason`.
#[derive(Debug)]
pub struct StreamRestorer {
    redaction: Redaction,
    /// The answer's text is JSON (see [`answers_in_json`]).
    json: bool,
    choices: HashMap<u32, Restorer>,
    /// Each choice's refusal and reasoning text ([`WRITTEN_FIELDS`]) as it streams.
    written: HashMap<(u32, &'static str), Restorer>,
    /// A tool call's input as it streams, by choice and call index (and whether it is a custom
    /// tool's `input` rather than a function's `arguments`).
    calls: HashMap<(u32, u64), (Restorer, bool)>,
}

impl StreamRestorer {
    /// A restorer for `redaction`'s placeholders (`json`: the answer's text is JSON).
    pub fn new(redaction: Redaction, json: bool) -> Self {
        Self { redaction, json, choices: HashMap::new(), written: HashMap::new(), calls: HashMap::new() }
    }

    /// Restores `chunk` in place: its text, and its tool calls' arguments (a placeholder split
    /// between two pieces waits for the next one; what is held is flushed with `finish_reason`).
    pub fn restore(&mut self, chunk: &mut ChatChunk) {
        for choice in &mut chunk.choices {
            let restorer = self.choices.entry(choice.index).or_default();
            let json = self.json;
            let mut text = choice.delta.content.as_deref().map(|c| if json { restorer.push_json(&self.redaction, c) } else { restorer.push(&self.redaction, c) });
            if choice.finish_reason.is_some() {
                let rest = restorer.finish();
                if !rest.is_empty() {
                    text.get_or_insert_with(String::new).push_str(&rest);
                }
            }
            if choice.delta.content.is_some() || text.as_deref().is_some_and(|t| !t.is_empty()) {
                choice.delta.content = text;
            }
            for field in WRITTEN_FIELDS {
                let piece = choice.delta.extra.get(field).and_then(Value::as_str);
                if piece.is_none() && (choice.finish_reason.is_none() || !self.written.contains_key(&(choice.index, field))) {
                    continue;
                }
                let restorer = self.written.entry((choice.index, field)).or_default();
                let mut field_text = piece.map(|p| restorer.push(&self.redaction, p)).unwrap_or_default();
                if choice.finish_reason.is_some() {
                    field_text.push_str(&restorer.finish());
                    self.written.remove(&(choice.index, field));
                }
                if piece.is_some() || !field_text.is_empty() {
                    choice.delta.extra.insert(field.to_owned(), Value::String(field_text));
                }
            }
            if let Some(Value::Array(calls)) = choice.delta.extra.get_mut("tool_calls") {
                for call in calls.iter_mut() {
                    let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                    for (custom, input) in call_inputs(call) {
                        let (restorer, _) = self.calls.entry((choice.index, index)).or_insert_with(|| (Restorer::default(), custom));
                        *input = if custom { restorer.push(&self.redaction, input) } else { restorer.push_json(&self.redaction, input) };
                    }
                }
            }
            if choice.finish_reason.is_some() {
                let held = self.held_call_inputs(choice.index);
                if !held.is_empty() {
                    let calls = choice.delta.extra.entry("tool_calls").or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(calls) = calls {
                        calls.extend(held);
                    }
                }
            }
        }
    }

    /// The call input held back for `choice` (text that looked like the start of a
    /// placeholder), as tool-call deltas, once the choice has finished.
    fn held_call_inputs(&mut self, choice: u32) -> Vec<Value> {
        let mut ended: Vec<(u64, Restorer, bool)> = Vec::new();
        self.calls.retain(|&(c, index), (restorer, custom)| {
            if c != choice {
                return true;
            }
            ended.push((index, std::mem::take(restorer), *custom));
            false
        });
        ended.sort_by_key(|(index, ..)| *index);
        ended
            .into_iter()
            .filter_map(|(index, mut restorer, custom)| {
                let rest = restorer.finish();
                (!rest.is_empty()).then(|| {
                    if custom {
                        serde_json::json!({"index": index, "custom": {"input": rest}})
                    } else {
                        serde_json::json!({"index": index, "function": {"arguments": rest}})
                    }
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> ChatRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn pii_hidden_behind_json_escapes_is_found_and_redacted() {
        // `json.dumps` (ensure_ascii) writes an IBAN's no-break spaces and an accented email as
        // `\u` escapes; the provider's model reads them decoded.
        let tool_result = serde_json::to_string(&serde_json::json!({"iban": "FR76\u{a0}3000\u{a0}6000\u{a0}0112\u{a0}3456\u{a0}7890\u{a0}189"})).unwrap().replace('\u{a0}', "\\u00a0");
        assert!(tool_result.contains("\\u00a0"), "{tool_result}");
        let arguments = r#"{"to": "jane.doe\u0040example.com"}"#;
        let mut req = request(serde_json::json!({"model": "auto", "messages": [
            {"role": "user", "content": "Summarise customer 42"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "mail", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "c1", "content": tool_result},
        ]}));
        let seen = inspect(&req);
        assert_eq!((seen.pii.get("iban"), seen.pii.get("email")), (Some(&1), Some(&1)), "{:?}", seen.pii);
        let redaction = redact(&mut req);
        assert_eq!(redaction.len(), 2);
        let sent = serde_json::to_string(&req).unwrap();
        assert!(!sent.contains("3456") && !sent.contains("example.com") && !sent.contains("0040"), "{sent}");
        // Text without PII behind its escapes is sent as written, byte for byte.
        let plain = r#"{"id":  123456789012345678901234, "note": "caf\u00e9", "dup": 1, "dup": 2}"#;
        let mut req = request(serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "mail bob@example.com"}, {"role": "tool", "tool_call_id": "c1", "content": plain}]}));
        redact(&mut req);
        assert_eq!(req.messages[1].content.as_ref().and_then(MessageContent::text).as_deref(), Some(plain));
        // JSON cut short, a lone surrogate beside, plain text: found all the same; only the escapes
        // change, numbers and the rest stay as written.
        for text in [r#"["jane.doe\u0040example.com", "#, r#"{"to":"jane.doe\u0040example.com","e":"\ud83d","n":1.50}"#, "write to jane.doe\\u0040example.com"] {
            let text = text.to_owned();
            let mut req = request(serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": text}]}));
            assert_eq!(inspect(&req).pii.get("email"), Some(&1), "{text}");
            redact(&mut req);
            let sent = req.messages[0].content.as_ref().and_then(MessageContent::text).unwrap();
            assert!(!sent.contains("example.com") && sent.contains("<EMAIL_1>"), "{sent}");
            assert_eq!(sent.contains("\\ud83d"), text.contains("\\ud83d"), "a lone surrogate stays escaped: {sent}");
            assert_eq!(sent.contains("1.50"), text.contains("1.50"), "{sent}");
        }
        assert_eq!(unescaped(r"a\u0022b\\u0022c\u00e9\ud83d\ude00").as_deref(), Some(r"a\u0022b\\u0022cé😀"), "escaped quotes stay");
        assert_eq!(unescaped(r"x\\u00e9\\ud83d\\ude00\\\u0041").as_deref(), Some(r"xé😀\\A"), "escapes escaped once more are written out");
        // JSON inside a JSON string, as a tool result holding a serialised body: `json.dumps`
        // twice writes the IBAN's no-break spaces as `\\u00a0`.
        let inner = serde_json::to_string(&serde_json::json!({"iban": "DE89\u{a0}3704\u{a0}0044\u{a0}0532\u{a0}0130\u{a0}00"})).unwrap().replace('\u{a0}', "\\u00a0");
        let outer = serde_json::to_string(&serde_json::json!({"body": inner})).unwrap();
        assert!(outer.contains(r"\\u00a0"), "{outer}");
        let mut req = request(serde_json::json!({"model": "auto", "messages": [{"role": "tool", "tool_call_id": "c1", "content": outer}]}));
        assert_eq!(inspect(&req).pii.get("iban"), Some(&1));
        redact(&mut req);
        let sent = req.messages[0].content.as_ref().and_then(MessageContent::text).unwrap();
        assert!(!sent.contains("0532") && serde_json::from_str::<serde_json::Value>(&sent).is_ok(), "{sent}");
        // Outside message text too: `user`, metadata values, tool descriptions.
        let escaped = r"jane.doe\u0040example.com";
        let mut req = request(serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "user": escaped, "metadata": {"owner": escaped},
            "tools": [{"type": "function", "function": {"name": "notify", "description": format!("Notify {escaped}")}}]}));
        assert_eq!(inspect(&req).pii.get("email"), Some(&3));
        redact(&mut req);
        let sent = serde_json::to_string(&req).unwrap();
        assert!(!sent.contains("example.com") && !sent.contains("0040"), "{sent}");
        // Escapes that hide no PII stay as written, beside PII that is plain.
        let asked = r"Why does s.replace('\u00a0', ' ') not strip it? Reply to bob@example.com";
        let mut req = request(serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": asked}]}));
        redact(&mut req);
        assert_eq!(req.messages[0].content.as_ref().and_then(MessageContent::text).as_deref(), Some(r"Why does s.replace('\u00a0', ' ') not strip it? Reply to <EMAIL_1>"));
        // A placeholder written as escapes is never handed out.
        let mut req = request(serde_json::json!({"model": "auto", "messages": [
            {"role": "user", "content": "my mail is bob@example.com"}, {"role": "tool", "tool_call_id": "c1", "content": r#"{"template":"Dear \u003cEMAIL_1\u003e"}"#}]}));
        redact(&mut req);
        assert_eq!(req.messages[0].content.as_ref().and_then(MessageContent::text).as_deref(), Some("my mail is <EMAIL_2>"));
    }

    #[test]
    fn inspects_text_parts_and_tool_arguments_and_fails_closed_on_images() {
        let req = request(serde_json::json!({
            "model": "auto",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "mail a@b.io"}, {"type": "image_url", "image_url": {"url": "data:,"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"ssn\":\"123-45-6789\"}"}}]},
            ]
        }));
        let seen = inspect(&req);
        assert_eq!(seen.pii.get("email"), Some(&1));
        assert_eq!(seen.pii.get("us_ssn"), Some(&1));
        assert_eq!(seen.pii.get("unscannable"), Some(&1));
    }

    #[test]
    fn a_refusal_part_is_text_scanned_and_redacted_once() {
        let mut req = request(serde_json::json!({
            "model": "auto",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "I won't mail a@b.io"}]},
            ]
        }));
        let seen = inspect(&req);
        assert_eq!(seen.pii.get("email"), Some(&1), "{:?}", seen.pii);
        assert_eq!(seen.pii.get("unscannable"), None, "a refusal is text, not opaque content");
        let redaction = redact(&mut req);
        assert!(!redaction.is_empty());
        let MessageContent::Parts(parts) = req.messages[1].content.as_ref().unwrap() else { panic!() };
        assert!(!parts[0]["refusal"].as_str().unwrap().contains("a@b.io"), "{parts:?}");
    }

    const EMAIL: &str = "secret.person@example.org";

    /// A request with the email in every place outside message text that a provider sees.
    fn everywhere() -> ChatRequest {
        request(serde_json::json!({
            "model": "auto",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hello", "note": EMAIL}], "name": EMAIL},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "x": EMAIL,
                    "function": {"name": "notify", "arguments": "{}", "y": EMAIL}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "done"},
            ],
            "tool_choice": {"type": "function", "function": {"name": "notify"}, "why": EMAIL},
            "stream": true,
            "stream_options": {"include_usage": true, "tag": EMAIL},
            "tools": [{"type": "function", "function": {"name": "notify", "description": format!("Notify {EMAIL}"),
                       "parameters": {"type": "object", "properties": {"to": {"type": "string", "enum": [EMAIL]}}}}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object", "description": EMAIL}}},
            "stop": [EMAIL],
            "user": EMAIL,
            "metadata": {"owner": EMAIL, format!("customer {EMAIL}"): "vip"},
            "x_note": format!("for {EMAIL}"),
        }))
    }

    #[test]
    fn pii_outside_message_text_is_found_and_redacted_but_identifiers_are_kept() {
        let seen = inspect(&everywhere());
        // Values and keys, in message parts, tool calls, `tool_choice` and `stream_options` too.
        assert_eq!(seen.pii.get("email"), Some(&14), "{:?}", seen.pii);
        assert!(!seen.text.contains(EMAIL), "only message text is classified");
        let mut req = everywhere();
        redact(&mut req);
        let sent = serde_json::to_value(&req).unwrap();
        assert!(!sent.to_string().contains(EMAIL), "{sent}");
        assert_eq!(sent.pointer("/tools/0/function/name"), Some(&serde_json::json!("notify")));
        assert_eq!(sent.pointer("/tools/0/type"), Some(&serde_json::json!("function")));
        assert_eq!(sent.pointer("/response_format/json_schema/name"), Some(&serde_json::json!("out")));
        assert_eq!(sent.pointer("/user"), Some(&serde_json::json!("<EMAIL_1>")));
        assert_eq!(sent.pointer("/messages/1/tool_calls/0/function/name"), Some(&serde_json::json!("notify")));
        assert_eq!(sent.pointer("/messages/1/tool_calls/0/id"), Some(&serde_json::json!("c1")));
        assert_eq!(sent.pointer("/messages/2/tool_call_id"), Some(&serde_json::json!("c1")));
        assert_eq!(sent.pointer("/messages/0/content/0/text"), Some(&serde_json::json!("hello")));
        assert_eq!(sent.pointer("/metadata/customer <EMAIL_1>"), Some(&serde_json::json!("vip")), "a key is redacted too");
    }

    #[test]
    fn redacts_every_string_and_restores_the_answer() {
        let mut req = request(serde_json::json!({
            "model": "auto",
            "messages": [
                {"role": "system", "content": "Customer: a@b.io"},
                {"role": "user", "content": [{"type": "text", "text": "Write to a@b.io and call +44 20 7946 0958"}]},
            ]
        }));
        let redaction = redact(&mut req);
        let sent = serde_json::to_string(&req).unwrap();
        assert!(!sent.contains("a@b.io") && !sent.contains("7946"), "{sent}");
        assert!(sent.contains("<EMAIL_1>") && sent.contains("<PHONE_1>"), "{sent}");
        let mut response: ChatResponse = serde_json::from_value(serde_json::json!({
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sent to <EMAIL_1>."}, "finish_reason": "stop"}]
        }))
        .unwrap();
        restore_response(&mut response, &redaction, false);
        assert_eq!(response.choices[0].message.content.as_deref(), Some("Sent to a@b.io."));
    }

    #[test]
    fn a_redacted_message_name_keeps_the_shape_openai_accepts() {
        let mut req = request(serde_json::json!({"model": "auto", "messages": [{"role": "user", "name": "jane.doe@example.com", "content": "hi"}]}));
        redact(&mut req);
        assert_eq!(req.messages[0].extra["name"], "EMAIL_1");
    }

    #[test]
    fn stream_restorer_joins_placeholders_split_across_chunks() {
        let mut req = request(serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "a@b.io"}]}));
        let mut restorer = StreamRestorer::new(redact(&mut req), false);
        let mut out = String::new();
        for (piece, finish) in [("Hi <EM", None), ("AIL", None), ("_1> and <", None), ("EMA", Some("stop"))] {
            let mut chunk: ChatChunk = serde_json::from_value(serde_json::json!({
                "id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": finish}]
            }))
            .unwrap();
            restorer.restore(&mut chunk);
            out.push_str(chunk.choices[0].delta.content.as_deref().unwrap_or(""));
        }
        assert_eq!(out, "Hi a@b.io and <EMA");
    }

    /// A redaction of a secret whose value JSON must escape (a backslash).
    fn secret_redaction() -> Redaction {
        let mut req = request(serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "password: Xk9\\Qm2!z and a@b.io"}]}));
        let redaction = redact(&mut req);
        let sent = serde_json::to_string(&req).unwrap();
        assert!(sent.contains("<SECRET_1>") && !sent.contains("Xk9"), "{sent}");
        redaction
    }

    #[test]
    fn json_answers_get_values_back_escaped_and_refusals_and_reasoning_are_restored() {
        let redaction = secret_redaction();
        let answer = |message: Value| -> ChatResponse {
            serde_json::from_value(serde_json::json!({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})).unwrap()
        };
        let mut json = answer(serde_json::json!({"role": "assistant", "content": "{\"password\": \"<SECRET_1>\"}"}));
        restore_response(&mut json, &redaction, true);
        let content = json.choices[0].message.content.clone().unwrap();
        let parsed: Value = serde_json::from_str(&content).unwrap_or_else(|e| panic!("{content}: {e}"));
        assert_eq!(parsed["password"], "Xk9\\Qm2!z");
        let mut other = answer(serde_json::json!({"role": "assistant", "content": null, "refusal": "I won't mail <EMAIL_1>.", "reasoning_content": "They want <EMAIL_1> mailed."}));
        restore_response(&mut other, &redaction, false);
        assert_eq!(other.choices[0].message.refusal.as_deref(), Some("I won't mail a@b.io."));
        assert_eq!(other.choices[0].message.extra["reasoning_content"], "They want a@b.io mailed.");
    }

    #[test]
    fn streamed_json_answers_and_reasoning_are_restored_across_chunks() {
        let mut restorer = StreamRestorer::new(secret_redaction(), true);
        let (mut content, mut reasoning) = (String::new(), String::new());
        let pieces = [("{\"password\": \"<SEC", "Mail <EM", None), ("RET_1>\"}", "AIL_1> now, or <EMA", None), ("", "", Some("stop"))];
        for (text, thought, finish) in pieces {
            let mut chunk: ChatChunk = serde_json::from_value(serde_json::json!({
                "id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": {"content": text, "reasoning": thought, "refusal": null}, "finish_reason": finish}]
            }))
            .unwrap();
            restorer.restore(&mut chunk);
            let delta = &chunk.choices[0].delta;
            content.push_str(delta.content.as_deref().unwrap_or(""));
            reasoning.push_str(delta.extra.get("reasoning").and_then(Value::as_str).unwrap_or(""));
            assert_eq!(delta.extra.get("refusal"), Some(&Value::Null), "a null stays null");
        }
        let parsed: Value = serde_json::from_str(&content).unwrap_or_else(|e| panic!("{content}: {e}"));
        assert_eq!(parsed["password"], "Xk9\\Qm2!z");
        assert_eq!(reasoning, "Mail a@b.io now, or <EMA", "held text comes out with the finish");
    }
}
