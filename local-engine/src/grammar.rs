//! JSON Schema → llama.cpp grammar (GBNF), for structured output and tool calls on the local
//! engine. Pure text in, text out.
//!
//! Every instance the grammar allows is valid under the schema, and every one is short enough to
//! finish: strings, arrays and free-form objects are bounded (`maxLength` / `maxItems` /
//! [`Bounds`] when the schema sets none), numbers have at most 12 integer and 6 fraction digits,
//! whitespace is one space or a newline and at most 16 spaces (the indentation models like to
//! write: a grammar that refuses the token the model wants costs a full-vocabulary pass, see
//! `sampling.rs`). Objects with `properties` are generated with **all** their properties, in the
//! schema's order (always valid: `required` is a subset; strict mode asks for exactly that), and
//! no others.
//!
//! Supported: `type` (one or a list), `properties`, `required`, `additionalProperties`, `items`,
//! `prefixItems`, `minItems`/`maxItems`, `minLength`/`maxLength`, `enum`, `const`, `anyOf`,
//! `oneOf`, `$ref` to `#/$defs/…` or `#/definitions/…`, `minimum`/`maximum` (a small integer
//! range is enumerated; `minimum >= 0` drops the sign), `nullable`. Anything that would constrain
//! values in a way the grammar cannot guarantee (`pattern`, `allOf`, `not`, `if`, `format` other
//! than plain strings, `multipleOf`, …) is refused with [`GrammarError`], never silently ignored.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// Why a schema cannot be turned into a grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported JSON Schema at {path}: {reason}")]
pub struct GrammarError {
    /// JSON pointer-ish path in the schema.
    pub path: String,
    /// What is unsupported.
    pub reason: String,
}

/// Limits for what the schema leaves open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Characters in a string without `maxLength`.
    pub max_string: u32,
    /// Items in an array without `maxItems`.
    pub max_items: u32,
    /// Members of a free-form object.
    pub max_members: u32,
    /// Nesting of free-form values (objects/arrays inside free-form values).
    pub max_depth: u32,
}

impl Default for Bounds {
    fn default() -> Self {
        Self { max_string: 48, max_items: 4, max_members: 4, max_depth: 2 }
    }
}

const KEYWORDS_IGNORED: &[&str] =
    &["title", "description", "examples", "default", "$schema", "$id", "$comment", "strict", "deprecated", "readOnly", "writeOnly"];

struct Builder<'a> {
    root: &'a Value,
    bounds: Bounds,
    rules: BTreeMap<String, String>,
    /// `$ref` targets already turned into rules.
    refs: BTreeMap<String, String>,
    /// `$ref`s being expanded (a cycle is refused).
    visiting: Vec<String>,
    /// The next suffix to try per rule name taken (`name-2`, `name-3`…): many properties whose
    /// names read alike as rule names (`αβγ`, `δεζ` are both `---`) cost one try each, not one
    /// per rule made before them.
    next_suffix: HashMap<String, usize>,
}

impl<'a> Builder<'a> {
    fn new(root: &'a Value, bounds: Bounds) -> Self {
        Self { root, bounds, rules: BTreeMap::new(), refs: BTreeMap::new(), visiting: Vec::new(), next_suffix: HashMap::new() }
    }
}

/// The grammar (root rule `root`) of instances of `schema`.
pub fn schema_grammar(schema: &Value, bounds: Bounds) -> Result<String, GrammarError> {
    let mut b = Builder::new(schema, bounds);
    let body = b.visit(schema, "#", "root")?;
    b.rules.insert("root".into(), body);
    Ok(b.finish())
}

/// The grammar of any JSON object (`response_format: json_object`), bounded by `bounds`.
pub fn json_object_grammar(bounds: Bounds) -> String {
    let mut b = Builder::new(&Value::Null, bounds);
    let body = b.free_object(0);
    b.rules.insert("root".into(), body);
    b.finish()
}

/// How every object opens in a rule body.
const OPEN_OBJECT: &str = "\"{\" ws ";
/// How a JSON answer's own object opens beside tool calls: whitespace is not optional.
const OPEN_ANSWER_OBJECT: &str = "\"{\" ws1 ";

/// What a `tool_choice: auto` answer may be instead of a call.
#[derive(Debug, Clone, Copy)]
pub enum TextAnswer<'a> {
    /// Nothing: the answer is a call (`tool_choice: required` or a named function).
    None,
    /// Plain text that does not start with `{`.
    Free,
    /// Any JSON object (`response_format: json_object`).
    JsonObject,
    /// An instance of this JSON Schema (`response_format: json_schema`).
    JsonSchema(&'a Value),
}

/// The grammar of one call of one of `tools` (`(name, parameters schema)`), written exactly as
/// `{"name":"<name>","arguments":<instance>}`, or of the answer `text` allows instead
/// (`tool_choice: auto`): free text never starts with `{` or whitespace, a JSON answer's object
/// opens with `{` and whitespace, where a call opens `{"`.
pub fn tool_call_grammar(tools: &[(String, Value)], text: TextAnswer<'_>, bounds: Bounds) -> Result<String, GrammarError> {
    let mut b = Builder::new(&Value::Null, bounds);
    let mut calls = Vec::new();
    for (i, (name, parameters)) in tools.iter().enumerate() {
        b.root = parameters;
        b.refs.clear();
        let args = format!("args{i}");
        let body = b.visit(parameters, &format!("tools[{i}]"), &args)?;
        b.rules.insert(args.clone(), body);
        let rule = format!("call{i}");
        let prefix = format!("{{\"name\":{},\"arguments\":", serde_json::to_string(name).unwrap_or_default());
        b.rules.insert(rule.clone(), format!("{} {args} \"}}\"", literal(&prefix)));
        calls.push(rule);
    }
    let answer = match text {
        TextAnswer::None => None,
        TextAnswer::Free => Some("[^{ \\t\\n] [^\\x00]*".to_owned()),
        // A call starts `{"`, an answer's object `{` and whitespace: the second character tells
        // them apart (else an answer could write a call's exact prefix and go on as the answer's
        // JSON, not as the tool's arguments). Objects nested in the answer keep their rules.
        TextAnswer::JsonObject => {
            let body = b.free_object(0);
            Some(b.open_answer_objects(&body, 0))
        }
        TextAnswer::JsonSchema(schema) => {
            b.root = schema;
            b.refs.clear();
            let body = b.visit(schema, "response_format.json_schema.schema", "answer")?;
            Some(b.open_answer_objects(&body, 0))
        }
    };
    if matches!(text, TextAnswer::JsonObject | TextAnswer::JsonSchema(_)) {
        b.rules.insert("ws1".into(), "\" \" | \"\\n\" \" \"{0,16}".into());
    }
    let mut root = calls.join(" | ");
    if let Some(answer) = answer {
        b.rules.insert("answer".into(), answer);
        root = format!("{root} | answer");
    }
    b.rules.insert("root".into(), root);
    Ok(b.finish())
}

/// True when `value` is of the JSON Schema `type` (a name or a list of names).
fn has_type(value: &Value, types: &Value) -> bool {
    let is = |name: &str| match name {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        _ => false,
    };
    match types {
        Value::String(name) => is(name),
        Value::Array(names) => names.iter().filter_map(Value::as_str).any(is),
        _ => true,
    }
}

/// A GBNF string literal for `text`.
fn literal(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn unsupported(path: &str, reason: impl Into<String>) -> GrammarError {
    GrammarError { path: path.to_owned(), reason: reason.into() }
}

/// The largest `maxLength`/`maxItems` (and minimums) a grammar may carry: llama.cpp expands
/// `x{m,n}` into rules, so a huge bound would stall the engine thread.
pub const MAX_BOUND: u32 = 1024;

fn as_u32(v: Option<&Value>) -> Option<u32> {
    v.and_then(Value::as_u64).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// A length or count bound from the schema, refused above [`MAX_BOUND`].
fn bound(schema: &Map<String, Value>, key: &str, path: &str) -> Result<Option<u32>, GrammarError> {
    match as_u32(schema.get(key)) {
        Some(n) if n > MAX_BOUND => Err(unsupported(path, format!("`{key}` above {MAX_BOUND} is not supported"))),
        other => Ok(other),
    }
}

impl Builder<'_> {
    /// `body` with every object it can open with opening `{` and mandatory whitespace, followed
    /// through alternatives (`anyOf`, `oneOf`, type lists, `nullable`) and through rules named at
    /// its start (`$ref`), whose bodies are copied, not changed: other rules may use them.
    fn open_answer_objects(&mut self, body: &str, depth: u32) -> String {
        let alternatives: Vec<String> = top_level_alternatives(body)
            .into_iter()
            .map(|alt| {
                if let Some(rest) = alt.strip_prefix(OPEN_OBJECT) {
                    return format!("{OPEN_ANSWER_OBJECT}{rest}");
                }
                if let Some(inner) = parenthesized(alt) {
                    return format!("({})", self.open_answer_objects(inner, depth));
                }
                let is_rule = !alt.is_empty() && alt.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                match self.rules.get(alt).cloned() {
                    Some(rule) if is_rule && depth < MAX_ANSWER_RULE_DEPTH => {
                        let opened = self.open_answer_objects(&rule, depth + 1);
                        if opened == rule {
                            return alt.to_owned();
                        }
                        let copy = self.fresh(format!("{alt}-answer"));
                        self.rules.insert(copy.clone(), opened);
                        copy
                    }
                    _ => alt.to_owned(),
                }
            })
            .collect();
        alternatives.join(" | ")
    }

    fn finish(mut self) -> String {
        self.rules.insert("ws".into(), "(\" \" | \"\\n\" \" \"{0,16})?".into());
        self.rules.insert("char".into(), "[^\"\\\\\\x7F\\x00-\\x1F] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})".into());
        self.rules.insert("boolean".into(), "\"true\" | \"false\"".into());
        self.rules.insert("null".into(), "\"null\"".into());
        self.rules.insert("integer".into(), "\"-\"? ([0-9] | [1-9] [0-9]{0,11})".into());
        self.rules.insert("number".into(), "integer (\".\" [0-9]{1,6})?".into());
        let mut out = String::new();
        for (name, body) in &self.rules {
            let _ = writeln!(out, "{name} ::= {body}");
        }
        out
    }

    /// A rule body for `schema`; `hint` names rules created for it.
    fn visit(&mut self, schema: &Value, path: &str, hint: &str) -> Result<String, GrammarError> {
        let object = match schema {
            Value::Bool(true) => return Ok(self.free_value(0)),
            Value::Bool(false) => return Err(unsupported(path, "the schema `false` allows nothing")),
            Value::Object(o) => o,
            _ => return Err(unsupported(path, "a schema must be an object")),
        };
        for key in object.keys() {
            let known = matches!(
                key.as_str(),
                "type" | "properties" | "required" | "additionalProperties" | "items" | "prefixItems" | "minItems" | "maxItems"
                    | "minLength" | "maxLength" | "enum" | "const" | "anyOf" | "oneOf" | "$ref" | "$defs" | "definitions"
                    | "minimum" | "maximum" | "nullable" | "format"
            ) || KEYWORDS_IGNORED.contains(&key.as_str());
            if !known {
                return Err(unsupported(path, format!("keyword `{key}` is not supported in structured output")));
            }
        }
        if let Some(format) = object.get("format").and_then(Value::as_str) {
            return Err(unsupported(path, format!("string format `{format}` is not supported")));
        }
        let body = self.visit_object(object, path, hint)?;
        if object.get("nullable").and_then(Value::as_bool) == Some(true) {
            return Ok(format!("({body}) | null"));
        }
        Ok(body)
    }

    fn visit_object(&mut self, schema: &Map<String, Value>, path: &str, hint: &str) -> Result<String, GrammarError> {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            return self.reference(reference, path);
        }
        // An instance must satisfy `type` too: values of another type can never be valid.
        let of_type = |v: &Value| schema.get("type").is_none_or(|t| has_type(v, t));
        if let Some(value) = schema.get("const") {
            if !of_type(value) {
                return Err(unsupported(path, "`const` is not of the schema's `type`: no instance is valid"));
            }
            return Ok(literal(&value.to_string()));
        }
        if let Some(values) = schema.get("enum") {
            let values = values.as_array().filter(|v| !v.is_empty()).ok_or_else(|| unsupported(path, "`enum` must be a non-empty array"))?;
            let allowed: Vec<String> = values.iter().filter(|v| of_type(v)).map(|v| literal(&v.to_string())).collect();
            if allowed.is_empty() {
                return Err(unsupported(path, "no `enum` value is of the schema's `type`: no instance is valid"));
            }
            return Ok(allowed.join(" | "));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(options) = schema.get(key) {
                let options = options.as_array().filter(|v| !v.is_empty()).ok_or_else(|| unsupported(path, format!("`{key}` must be a non-empty array")))?;
                let mut alternatives = Vec::new();
                for (i, option) in options.iter().enumerate() {
                    let rule = self.fresh(format!("{hint}-{i}"));
                    let body = self.visit(option, &format!("{path}/{key}/{i}"), &rule)?;
                    self.rules.insert(rule.clone(), body);
                    alternatives.push(rule);
                }
                return Ok(alternatives.join(" | "));
            }
        }
        match schema.get("type") {
            None if schema.contains_key("properties") => self.typed("object", schema, path, hint),
            None if schema.contains_key("items") => self.typed("array", schema, path, hint),
            None => Ok(self.free_value(0)),
            Some(Value::String(t)) => self.typed(t, schema, path, hint),
            Some(Value::Array(types)) => {
                let mut alternatives = Vec::new();
                for (i, t) in types.iter().enumerate() {
                    let t = t.as_str().ok_or_else(|| unsupported(path, "`type` entries must be strings"))?;
                    let rule = self.fresh(format!("{hint}-t{i}"));
                    let body = self.typed(t, schema, path, &rule)?;
                    self.rules.insert(rule.clone(), body);
                    alternatives.push(rule);
                }
                Ok(alternatives.join(" | "))
            }
            Some(_) => Err(unsupported(path, "`type` must be a string or a list of strings")),
        }
    }

    fn reference(&mut self, reference: &str, path: &str) -> Result<String, GrammarError> {
        if let Some(rule) = self.refs.get(reference) {
            if self.visiting.iter().any(|r| r == reference) {
                return Err(unsupported(path, format!("recursive schemas ({reference:?} refers to itself) are not supported")));
            }
            return Ok(rule.clone());
        }
        let name = reference
            .strip_prefix("#/$defs/")
            .or_else(|| reference.strip_prefix("#/definitions/"))
            .ok_or_else(|| unsupported(path, format!("only local `$ref`s (#/$defs/…) are supported, not {reference:?}")))?;
        let section = if reference.starts_with("#/$defs/") { "$defs" } else { "definitions" };
        let target = self.root.get(section).and_then(|d| d.get(name)).cloned().ok_or_else(|| unsupported(path, format!("{reference:?} is not defined")))?;
        let rule = self.fresh(format!("ref-{}", name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect::<String>()));
        self.refs.insert(reference.to_owned(), rule.clone());
        // Every property is generated, so a schema that refers to itself has no finite instance.
        if self.visiting.iter().any(|r| r == reference) {
            return Err(unsupported(path, format!("recursive schemas ({reference:?} refers to itself) are not supported")));
        }
        self.visiting.push(reference.to_owned());
        let body = self.visit(&target, reference, &rule);
        self.visiting.pop();
        self.rules.insert(rule.clone(), body?);
        Ok(rule)
    }

    fn typed(&mut self, kind: &str, schema: &Map<String, Value>, path: &str, hint: &str) -> Result<String, GrammarError> {
        match kind {
            "string" => {
                let min = bound(schema, "minLength", path)?.unwrap_or(0);
                let max = bound(schema, "maxLength", path)?.unwrap_or(self.bounds.max_string.max(min));
                if min > max {
                    return Err(unsupported(path, "minLength > maxLength"));
                }
                Ok(format!("\"\\\"\" char{{{min},{max}}} \"\\\"\""))
            }
            "integer" => Ok(integer(schema, path)?),
            "number" => {
                let minimum = schema.get("minimum").and_then(Value::as_f64);
                if minimum.is_some_and(|m| m != 0.0) {
                    return Err(unsupported(path, "`minimum` on numbers is only supported as 0"));
                }
                let non_negative = minimum.is_some();
                if schema.contains_key("maximum") && !non_negative {
                    return Err(unsupported(path, "`maximum` on numbers is only supported with `minimum >= 0` and an integer type"));
                }
                if schema.contains_key("maximum") {
                    return Err(unsupported(path, "`maximum` is only supported on integers"));
                }
                Ok(if non_negative { "([0-9] | [1-9] [0-9]{0,11}) (\".\" [0-9]{1,6})?".into() } else { "number".into() })
            }
            "boolean" => Ok("boolean".into()),
            "null" => Ok("null".into()),
            "array" => self.array(schema, path, hint),
            "object" => self.object(schema, path, hint),
            other => Err(unsupported(path, format!("unknown type {other:?}"))),
        }
    }

    fn array(&mut self, schema: &Map<String, Value>, path: &str, hint: &str) -> Result<String, GrammarError> {
        let min = bound(schema, "minItems", path)?.unwrap_or(0);
        let max = bound(schema, "maxItems", path)?.unwrap_or(self.bounds.max_items.max(min));
        if min > max {
            return Err(unsupported(path, "minItems > maxItems"));
        }
        let prefix = schema.get("prefixItems").and_then(Value::as_array).cloned().unwrap_or_default();
        if !prefix.is_empty() {
            // A tuple: exactly its items (extra items would need `items`' schema too).
            let mut parts = Vec::new();
            for (i, item) in prefix.iter().enumerate() {
                let rule = self.fresh(format!("{hint}-p{i}"));
                let body = self.visit(item, &format!("{path}/prefixItems/{i}"), &rule)?;
                self.rules.insert(rule.clone(), body);
                parts.push(rule);
            }
            return Ok(format!("\"[\" ws {} ws \"]\"", parts.join(" \",\" ws ")));
        }
        let item = self.fresh(format!("{hint}-item"));
        let body = match schema.get("items") {
            Some(items) => self.visit(items, &format!("{path}/items"), &item)?,
            None => self.free_value(1),
        };
        self.rules.insert(item.clone(), body);
        Ok(repeat(&item, min, max, "[", "]"))
    }

    fn object(&mut self, schema: &Map<String, Value>, path: &str, hint: &str) -> Result<String, GrammarError> {
        let Some(properties) = schema.get("properties").and_then(Value::as_object).filter(|p| !p.is_empty()) else {
            return match schema.get("additionalProperties") {
                Some(Value::Object(values)) => {
                    let value = self.fresh(format!("{hint}-value"));
                    let body = self.visit(&Value::Object(values.clone()), &format!("{path}/additionalProperties"), &value)?;
                    self.rules.insert(value.clone(), body);
                    let member = self.fresh(format!("{hint}-member"));
                    self.rules.insert(member.clone(), format!("key ws \":\" ws {value}"));
                    self.key_rule();
                    Ok(repeat(&member, 0, self.bounds.max_members, "{", "}"))
                }
                Some(Value::Bool(false)) => Ok("\"{\" ws \"}\"".into()),
                _ => Ok(self.free_object(0)),
            };
        };
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !properties.contains_key(name) {
                    return Err(unsupported(path, format!("required property {name:?} has no schema in `properties`")));
                }
            }
        }
        let mut members = Vec::new();
        for (name, property) in properties {
            let rule = self.fresh(format!("{hint}-{}", name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect::<String>()));
            let body = self.visit(property, &format!("{path}/properties/{name}"), &rule)?;
            self.rules.insert(rule.clone(), body);
            members.push(format!("{} ws \":\" ws {rule}", literal(&serde_json::to_string(name).unwrap_or_default())));
        }
        Ok(format!("\"{{\" ws {} ws \"}}\"", members.join(" \",\" ws ")))
    }

    /// `name`, or `name-2`, `name-3`… if taken; reserved at once so that rules made while its
    /// body is built cannot take it.
    fn fresh(&mut self, name: String) -> String {
        let name = if self.rules.contains_key(&name) {
            let next = self.next_suffix.entry(name.clone()).or_insert(2);
            // One of the next `rules.len() + 1` suffixes is free.
            let free = (*next..=*next + self.rules.len()).map(|i| (i, format!("{name}-{i}"))).find(|(_, n)| !self.rules.contains_key(n));
            match free {
                Some((i, free)) => {
                    *next = i + 1;
                    free
                }
                None => name,
            }
        } else {
            name
        };
        self.rules.insert(name.clone(), String::new());
        name
    }

    fn key_rule(&mut self) {
        let max = self.bounds.max_string.min(32);
        self.rules.insert("key".into(), format!("\"\\\"\" [a-zA-Z_] [a-zA-Z0-9_]{{0,{}}} \"\\\"\"", max.saturating_sub(1)));
    }

    /// Any JSON value, free-form, nested at most `max_depth` deep from `depth`.
    fn free_value(&mut self, depth: u32) -> String {
        let name = format!("value{depth}");
        if !self.rules.contains_key(&name) {
            let max = self.bounds.max_string;
            let mut alternatives = vec![format!("\"\\\"\" char{{0,{max}}} \"\\\"\""), "number".into(), "boolean".into(), "null".into()];
            if depth < self.bounds.max_depth {
                self.rules.insert(name.clone(), String::new());
                alternatives.push(self.free_object(depth + 1));
                let inner = self.free_value(depth + 1);
                let item = format!("item{depth}");
                self.rules.insert(item.clone(), inner);
                alternatives.push(repeat(&item, 0, self.bounds.max_items, "[", "]"));
            }
            self.rules.insert(name.clone(), alternatives.join(" | "));
        }
        name
    }

    /// Any JSON object with string keys, free-form values nested from `depth`.
    fn free_object(&mut self, depth: u32) -> String {
        self.key_rule();
        let value = self.free_value(depth);
        let member = format!("member{depth}");
        self.rules.insert(member.clone(), format!("key ws \":\" ws {value}"));
        format!("({})", repeat(&member, 0, self.bounds.max_members, "{", "}"))
    }
}

fn integer(schema: &Map<String, Value>, path: &str) -> Result<String, GrammarError> {
    let min = schema.get("minimum").and_then(Value::as_f64);
    let max = schema.get("maximum").and_then(Value::as_f64);
    #[allow(clippy::cast_possible_truncation)]
    match (min, max) {
        (Some(lo), Some(hi)) if hi - lo <= 256.0 && lo.fract() == 0.0 && hi.fract() == 0.0 => {
            if lo > hi {
                return Err(unsupported(path, "minimum > maximum"));
            }
            let (lo, hi) = (lo as i64, hi as i64);
            Ok((lo..=hi).map(|n| literal(&n.to_string())).collect::<Vec<_>>().join(" | "))
        }
        (_, Some(_)) => Err(unsupported(path, "`maximum` is only supported together with `minimum` on a range of at most 256 integers")),
        (Some(lo), None) if (0.0..=1.0).contains(&lo) => {
            Ok(if lo == 0.0 { "[0-9] | [1-9] [0-9]{0,11}".into() } else { "[1-9] [0-9]{0,11}".into() })
        }
        (Some(_), None) => Err(unsupported(path, "`minimum` is only supported as 0, 1, or with `maximum`")),
        (None, None) => Ok("integer".into()),
    }
}

/// How many rules deep a JSON answer's opening is looked for (`$ref` to `anyOf` to …).
const MAX_ANSWER_RULE_DEPTH: u32 = 8;

/// The characters of a rule body outside quoted literals and character classes, each with its
/// byte index and the depth of the parentheses around it.
fn structure(body: &str) -> impl Iterator<Item = (usize, char, i32)> + '_ {
    let (mut depth, mut quoted, mut class, mut escaped) = (0_i32, false, false, false);
    body.char_indices().filter_map(move |(i, c)| {
        if escaped {
            escaped = false;
            return None;
        }
        match c {
            '\\' if quoted || class => {
                escaped = true;
                None
            }
            '"' if !class => {
                quoted = !quoted;
                None
            }
            '[' if !quoted => {
                class = true;
                None
            }
            ']' if !quoted => {
                class = false;
                None
            }
            _ if quoted || class => None,
            '(' => {
                depth += 1;
                Some((i, c, depth - 1))
            }
            ')' => {
                depth -= 1;
                Some((i, c, depth))
            }
            _ => Some((i, c, depth)),
        }
    })
}

/// The alternatives of a rule body: split at `|` outside quotes, character classes and parentheses.
fn top_level_alternatives(body: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, c, depth) in structure(body) {
        if c == '|' && depth == 0 {
            parts.push(body[start..i].trim());
            start = i + 1;
        }
    }
    parts.push(body[start..].trim());
    parts
}

/// The inside of `alt` when all of it is one parenthesized group (`( … )`, nothing after).
fn parenthesized(alt: &str) -> Option<&str> {
    let inner = alt.strip_prefix('(')?.strip_suffix(')')?;
    // The first `(` must close at the very end: `(a) | (b)` is not one group.
    structure(inner).all(|(_, c, depth)| c != ')' || depth >= 0).then_some(inner)
}

/// `open item ("," item){min-1,max-1} close`, or an empty container when `min == 0`.
fn repeat(item: &str, min: u32, max: u32, open: &str, close: &str) -> String {
    let (open, close) = (literal(open), literal(close));
    if max == 0 {
        return format!("{open} ws {close}");
    }
    let more = format!("(\",\" ws {item}){{{},{}}}", min.saturating_sub(1), max - 1);
    let some = format!("{item} {more}");
    if min == 0 {
        format!("{open} ws ({some})? ws {close}")
    } else {
        format!("{open} ws {some} ws {close}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_list_every_property_in_order() {
        let g = schema_grammar(&json!({"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}, "required": ["a"]}), Bounds::default()).unwrap();
        let root = g.lines().find(|l| l.starts_with("root ::=")).unwrap();
        assert!(root.contains(r#""\"b\"" ws ":" ws root-b "," ws "\"a\"" ws ":" ws root-a"#), "{root}");
    }

    #[test]
    fn strings_and_arrays_are_bounded() {
        let g = schema_grammar(&json!({"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3, "minItems": 1}), Bounds::default()).unwrap();
        assert!(g.contains("char{0,5}"), "{g}");
        assert!(g.contains("{0,2}"), "{g}");
        let g = schema_grammar(&json!({"type": "string"}), Bounds::default()).unwrap();
        assert!(g.contains("char{0,48}"), "{g}");
    }

    #[test]
    fn enums_refs_and_unions() {
        let schema = json!({"$defs": {"color": {"enum": ["red", "green", 3]}}, "type": "object", "properties": {"c": {"$ref": "#/$defs/color"}, "n": {"type": ["integer", "null"]}, "u": {"anyOf": [{"type": "boolean"}, {"const": "x"}]}}});
        let g = schema_grammar(&schema, Bounds::default()).unwrap();
        assert!(g.contains(r#"ref-color ::= "\"red\"" | "\"green\"" | "3""#), "{g}");
        assert!(g.contains("root-n-t0 | root-n-t1"), "{g}");
    }

    #[test]
    fn unsupported_keywords_are_refused_not_ignored() {
        for schema in [json!({"type": "string", "pattern": "^a$"}), json!({"allOf": [{}]}), json!({"type": "string", "format": "email"}), json!({"$ref": "http://x"})] {
            assert!(schema_grammar(&schema, Bounds::default()).is_err(), "{schema}");
        }
    }

    #[test]
    fn enum_and_const_values_of_another_type_are_never_generated() {
        // Only the values an instance could take: both keywords and the type must hold.
        let g = schema_grammar(&json!({"type": "string", "enum": ["a", 1, "b"]}), Bounds::default()).unwrap();
        assert!(g.contains(r#"root ::= "\"a\"" | "\"b\"""#), "{g}");
        let g = schema_grammar(&json!({"type": ["integer", "null"], "enum": [1, 2.0, 2.5, null, "x"]}), Bounds::default()).unwrap();
        assert!(g.contains(r#"root ::= "1" | "2.0" | "null""#), "{g}");
        for schema in [json!({"type": "string", "enum": [1, 2]}), json!({"type": "boolean", "const": "yes"})] {
            let err = schema_grammar(&schema, Bounds::default()).unwrap_err().to_string();
            assert!(err.contains("no instance is valid"), "{schema}: {err}");
        }
    }

    #[test]
    fn tool_calls_name_the_function_then_its_arguments() {
        let g = tool_call_grammar(&[("get_weather".into(), json!({"type": "object", "properties": {"city": {"type": "string"}}}))], TextAnswer::Free, Bounds::default()).unwrap();
        assert!(g.contains(r#"call0 ::= "{\"name\":\"get_weather\",\"arguments\":" args0 "}""#), "{g}");
        assert!(g.contains("root ::= call0 | answer"), "{g}");
        assert!(g.contains(r"answer ::= [^{ \t\n]"), "{g}");
    }

    #[test]
    fn a_json_answer_beside_tool_calls_follows_the_response_format() {
        let tools = [("f".to_owned(), json!({"$defs": {"loc": {"type": "string"}}, "type": "object", "properties": {"l": {"$ref": "#/$defs/loc"}}}))];
        let schema = json!({"$defs": {"loc": {"type": "integer"}}, "type": "object", "properties": {"n": {"$ref": "#/$defs/loc"}}, "required": ["n"]});
        let g = tool_call_grammar(&tools, TextAnswer::JsonSchema(&schema), Bounds::default()).unwrap();
        assert!(g.contains("root ::= call0 | answer"), "{g}");
        // The answer's `$ref` resolves in its own schema, not in the tool's.
        assert!(g.contains("ref-loc ::= \"\\\"\" char") && g.contains("ref-loc-2 ::= integer"), "{g}");
        assert!(g.contains("answer ::= \"{\" ws1 \"\\\"n\\\"\" ws \":\" ws answer-n ws \"}\""), "{g}");
        let g = tool_call_grammar(&tools, TextAnswer::JsonObject, Bounds::default()).unwrap();
        assert!(g.contains("answer ::= (\"{\" ws1 "), "{g}");
        assert!(g.contains("ws1 ::= \" \" | "), "{g}");
        let g = tool_call_grammar(&tools, TextAnswer::None, Bounds::default()).unwrap();
        assert!(g.contains("root ::= call0\n") && !g.contains("answer"), "{g}");
    }

    #[test]
    fn every_object_a_json_answer_can_open_with_takes_whitespace_beside_tool_calls() {
        // Follows the answer's alternatives down to the objects they open.
        fn opens(rules: &BTreeMap<&str, &str>, body: &str, out: &mut Vec<String>) {
            for alt in top_level_alternatives(body) {
                if let Some(inner) = parenthesized(alt) {
                    opens(rules, inner, out);
                } else if let Some(rule) = rules.get(alt) {
                    opens(rules, rule, out);
                } else {
                    out.push(alt.to_owned());
                }
            }
        }
        let tools = [("f".to_owned(), json!({"type": "object", "properties": {"q": {"type": "string"}}}))];
        // A union of objects, a nullable object, a type list, and a `$ref` shared with a nested use.
        let schema = json!({"$defs": {"p": {"type": "object", "properties": {"x": {"type": "integer"}}}},
            "anyOf": [{"type": "object", "properties": {"a": {"type": "string"}}},
                      {"type": "object", "properties": {"b": {"$ref": "#/$defs/p"}}, "nullable": true},
                      {"$ref": "#/$defs/p"},
                      {"type": ["object", "string"]}]});
        let g = tool_call_grammar(&tools, TextAnswer::JsonSchema(&schema), Bounds::default()).unwrap();
        let rules: BTreeMap<&str, &str> = g.lines().filter_map(|l| l.split_once(" ::= ")).collect();
        let mut starts = Vec::new();
        opens(&rules, rules["answer"], &mut starts);
        let objects: Vec<&String> = starts.iter().filter(|s| s.starts_with("\"{\"")).collect();
        assert_eq!(objects.len(), 4, "{starts:#?}\n{g}");
        assert!(objects.iter().all(|s| s.starts_with(OPEN_ANSWER_OBJECT)), "{starts:#?}\n{g}");
        // The `$ref` rule nested in the second option keeps its plain opening.
        assert!(rules["ref-p"].starts_with(OPEN_OBJECT), "{g}");
        // The call's arguments are untouched.
        assert!(rules["args0"].starts_with(OPEN_OBJECT), "{g}");
    }

    #[test]
    fn alternatives_split_only_at_the_top_level() {
        assert_eq!(top_level_alternatives(r#"a | ("b" | c) | "|" | [|] d"#), vec!["a", r#"("b" | c)"#, r#""|""#, "[|] d"]);
        assert_eq!(parenthesized("(a | b)"), Some("a | b"));
        assert_eq!(parenthesized("(a) | (b)"), None);
        assert_eq!(parenthesized(r#"(")")"#), Some(r#"")""#));
    }

    #[test]
    fn huge_bounds_and_recursion_are_refused() {
        for schema in [json!({"type": "string", "maxLength": 50_000_000}), json!({"type": "array", "minItems": 5000}),
                       json!({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"}),
                       json!({"type": "number", "minimum": 5})] {
            assert!(schema_grammar(&schema, Bounds::default()).is_err(), "{schema}");
        }
    }

    #[test]
    fn generated_rule_names_never_collide() {
        let g = schema_grammar(&json!({"type": "object", "properties": {"a-0": {"type": "string"}, "a": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}}), Bounds::default()).unwrap();
        let defined: Vec<&str> = g.lines().map(|l| l.split(" ::= ").next().unwrap()).collect();
        let mut unique = defined.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(defined.len(), unique.len(), "{g}");
        // Each property keeps its own type.
        assert!(g.contains(r#""\"a-0\"" ws ":" ws root-a-0 "#) || g.contains("root-a-0"), "{g}");
        let tools = [("f".to_owned(), json!({"$defs": {"loc": {"type": "string"}}, "type": "object", "properties": {"l": {"$ref": "#/$defs/loc"}}})),
                     ("g".to_owned(), json!({"$defs": {"loc": {"type": "integer"}}, "type": "object", "properties": {"l": {"$ref": "#/$defs/loc"}}}))];
        let g = tool_call_grammar(&tools, TextAnswer::None, Bounds::default()).unwrap();
        assert!(g.contains("ref-loc ::= \"\\\"\" char") && g.contains("ref-loc-2 ::= integer"), "{g}");
    }

    #[test]
    fn small_integer_ranges_are_enumerated() {
        let g = schema_grammar(&json!({"type": "integer", "minimum": 1, "maximum": 3}), Bounds::default()).unwrap();
        assert!(g.contains(r#"root ::= "1" | "2" | "3""#), "{g}");
    }
}
