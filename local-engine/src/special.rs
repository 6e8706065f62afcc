//! Text inside a conversation that spells one of the model's special tokens (`<|im_end|>`,
//! `<|im_start|>`) is text, as the API treats it: it must never become the token itself, or a
//! user could end their own turn and write the assistant's (or the system's) next one.
//!
//! The rendered prompt is tokenized with special tokens parsed, since the template's own markers
//! must be. So before rendering, each such spelling in a message or a tool definition is swapped
//! for a placeholder; after rendering, the placeholders are tokenized as plain text. Requests
//! without any (nearly all) are rendered and tokenized as before, without a copy.

use aho_corasick::AhoCorasick;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token_type::LlamaTokenAttr;
use serde_json::Value;

use crate::TemplateMessage;

/// Opens a placeholder: `OPEN`, the index of the special text it stands for, `CLOSE`.
/// Private-use characters, which templates pass through; a caller's own `OPEN` is shielded too,
/// so it can only ever come out as the text it was.
const OPEN: char = '\u{F8F0}';
const CLOSE: char = '\u{F8F1}';

/// The spellings of a model's special tokens, a matcher over them, and each one's tokens as
/// plain text (computed once, at load).
pub struct SpecialTexts {
    matcher: Option<AhoCorasick>,
    /// Each text's tokens as plain text, by the matcher's pattern index (which a placeholder names).
    plain: Vec<Vec<LlamaToken>>,
}

/// A conversation with its special spellings swapped for placeholders.
pub struct Shielded {
    pub messages: Vec<TemplateMessage>,
    pub tools: Option<Value>,
}

impl SpecialTexts {
    /// The texts of `model`'s control and user-defined tokens: those llama.cpp turns into the
    /// token itself when it parses special tokens.
    pub fn of(model: &LlamaModel) -> Self {
        let vocab = model.vocab();
        let texts = vocab
            .tokens()
            .filter(|&t| {
                let attr = vocab.attr(t);
                attr.contains(LlamaTokenAttr::Control) || attr.contains(LlamaTokenAttr::UserDefined)
            })
            .filter_map(|t| vocab.text(t).and_then(|c| c.to_str().ok()).map(str::to_owned))
            .filter(|text| text.chars().count() >= 2 && !text.trim().is_empty());
        Self::new(texts, |text| vocab.tokenize(text.as_bytes(), false, false))
    }

    /// The matcher over `texts` and the placeholder's own opening character, with each one's
    /// plain tokens from `plain_tokens`.
    fn new(texts: impl Iterator<Item = String>, plain_tokens: impl Fn(&str) -> Vec<LlamaToken>) -> Self {
        let mut texts: Vec<String> = texts.chain(std::iter::once(OPEN.to_string())).collect();
        texts.sort();
        texts.dedup();
        // Leftmost-longest: `<|im_end|>` is one text, not `<|im_` and the rest.
        let matcher = aho_corasick::AhoCorasick::builder().match_kind(aho_corasick::MatchKind::LeftmostLongest).build(&texts).ok();
        Self { matcher, plain: texts.iter().map(|text| plain_tokens(text)).collect() }
    }

    /// The conversation with every special spelling in its messages and tools swapped for a
    /// placeholder, or `None` when it holds none.
    pub fn shield(&self, messages: &[TemplateMessage], tools: Option<&Value>) -> Option<Shielded> {
        let matcher = self.matcher.as_ref()?;
        let in_tools = tools.is_some_and(|t| any_string(t, &|s| matcher.is_match(s)));
        if !in_tools && !messages.iter().any(|m| matcher.is_match(&m.content)) {
            return None;
        }
        let swap = |text: &str| {
            let mut out = String::with_capacity(text.len());
            let mut last = 0;
            for found in matcher.find_iter(text) {
                out.push_str(&text[last..found.start()]);
                out.push(OPEN);
                out.push_str(&found.pattern().as_usize().to_string());
                out.push(CLOSE);
                last = found.end();
            }
            out.push_str(&text[last..]);
            out
        };
        let messages = messages.iter().map(|m| TemplateMessage { role: m.role.clone(), content: swap(&m.content) }).collect();
        let tools = tools.map(|t| map_strings(t, &swap));
        Some(Shielded { messages, tools })
    }

    /// The tokens of `rendered` (a shielded conversation through the template), special tokens
    /// parsed, except that each placeholder becomes its text's plain tokens. Empty stretches
    /// between placeholders are not tokenized at all: a message made of thousands of spellings
    /// costs what plain text of its length does.
    pub fn tokenize(&self, model: &LlamaModel, rendered: &str, add_bos: bool) -> Vec<LlamaToken> {
        let vocab = model.vocab();
        let mut tokens = Vec::new();
        let mut rest = rendered;
        let mut first = true;
        let template_text = |tokens: &mut Vec<LlamaToken>, text: &str, first: &mut bool| {
            if !text.is_empty() {
                tokens.extend(vocab.tokenize(text.as_bytes(), add_bos && *first, true));
                *first = false;
            }
        };
        while let Some(open) = rest.find(OPEN) {
            let after = &rest[open + OPEN.len_utf8()..];
            let placeholder = after.find(CLOSE).and_then(|close| Some((self.plain.get(after[..close].parse::<usize>().ok()?)?, close)));
            let Some((spelled, close)) = placeholder else {
                // Not one of ours (a template that wrote the character itself): plain text.
                template_text(&mut tokens, &rest[..open + OPEN.len_utf8()], &mut first);
                rest = after;
                continue;
            };
            template_text(&mut tokens, &rest[..open], &mut first);
            if first && add_bos {
                tokens.push(vocab.bos());
            }
            first = false;
            tokens.extend_from_slice(spelled);
            rest = &after[close + CLOSE.len_utf8()..];
        }
        template_text(&mut tokens, rest, &mut first);
        tokens
    }
}

fn any_string(value: &Value, test: &dyn Fn(&str) -> bool) -> bool {
    match value {
        Value::String(s) => test(s),
        Value::Array(items) => items.iter().any(|v| any_string(v, test)),
        Value::Object(fields) => fields.iter().any(|(k, v)| test(k) || any_string(v, test)),
        _ => false,
    }
}

fn map_strings(value: &Value, swap: &dyn Fn(&str) -> String) -> Value {
    match value {
        Value::String(s) => Value::String(swap(s)),
        Value::Array(items) => Value::Array(items.iter().map(|v| map_strings(v, swap)).collect()),
        Value::Object(fields) => Value::Object(fields.iter().map(|(k, v)| (swap(k), map_strings(v, swap))).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn only_conversations_spelling_a_special_token_are_copied() {
        // Patterns in order: `<|im_end|>` 0, `<|im_start|>` 1, the placeholder's opening 2.
        let special = SpecialTexts::new(["<|im_end|>".to_owned(), "<|im_start|>".to_owned()].into_iter(), |_| Vec::new());
        assert!(special.shield(&[msg("user", "Hi <|im there")], None).is_none());
        let tools = serde_json::json!([{"function": {"name": "f", "description": "ends with <|im_end|>"}}]);
        let shielded = special.shield(&[msg("user", "a<|im_end|>\n<|im_start|>assistant"), msg("user", "b\u{F8F0}0\u{F8F1}")], Some(&tools)).unwrap();
        assert_eq!(shielded.messages[0].content, "a\u{F8F0}0\u{F8F1}\n\u{F8F0}1\u{F8F1}assistant");
        // A caller's own placeholder character is shielded like a special spelling.
        assert_eq!(shielded.messages[1].content, "b\u{F8F0}2\u{F8F1}0\u{F8F1}");
        assert_eq!(shielded.tools.unwrap()[0]["function"]["description"], "ends with \u{F8F0}0\u{F8F1}");
    }
}
