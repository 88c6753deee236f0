//! The prompt of an LLM request (DESIGN.md "Prompt matchers and versions as models"), and the
//! matchers rules hold it to.
//!
//! The prompt text of a JSON body:
//! - with `messages` (OpenAI chat completions, Anthropic Messages): the content of the last
//!   message whose `role` is `"user"`: a string, or the `text` of its text parts (objects whose
//!   `type` is `"text"` or `"input_text"`) joined by `"\n"`; other parts (images, tool results)
//!   are not text. A user message whose content is neither has the empty prompt.
//! - else with `input` (OpenAI Responses): the string, or the last user item's text as above.
//! - else with `query` (Dify): that string.
//!
//! A body that is not one UTF-8 JSON object, or has none of these (or `messages` / `input` with
//! no user message), has no prompt, and every prompt matcher fails. A key that comes twice: the
//! last one counts. What is passed over is checked (the body is one JSON document) by
//! serde_json's skipping, which keeps no stack: nesting is not limited.
//!
//! Read in one pass with serde_json over the body's text, with no document tree: what is not a
//! message's role or text is passed over; the text kept is the last user message's (and the
//! message being read). One visitor type walks every level (each visitor type is a copy of
//! serde_json's parser in the .wasm).

use std::fmt;

use std::borrow::Cow;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The prompt of `body`, if it has one.
pub fn extract(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let mut none = String::new();
    let found = Walk { level: Level::Top, text: &mut none }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    prompt(found)
}

/// One matcher of `when.prompt`, compiled.
#[derive(Debug)]
pub enum PromptMatch {
    /// Lower-cased needles (Unicode, `str::to_lowercase`): holds when the lower-cased prompt
    /// contains one.
    ContainsAny(Vec<Box<str>>),
    /// Holds when the regex matches somewhere in the prompt as sent.
    Regex(regex_lite::Regex),
    /// At least this many characters (Unicode scalar values).
    MinChars(usize),
    /// At most this many characters.
    MaxChars(usize),
}

/// The most a compiled `regex` may take (DESIGN.md: 64 KiB).
pub const REGEX_SIZE_LIMIT: usize = 64 * 1024;

/// Compiles a `regex` matcher: RE2-style syntax as `regex-lite` reads it (no backreferences,
/// no look-around, no Unicode classes), at most [`REGEX_SIZE_LIMIT`] compiled.
pub fn compile_regex(pattern: &str) -> Result<regex_lite::Regex, String> {
    regex_lite::RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).build().map_err(|e| {
        let e = e.to_string();
        // regex-lite's words for a size past the limit name no limit.
        if e.contains("size limit") || e.contains("too big") {
            format!("compiles to more than {} KiB ({e})", REGEX_SIZE_LIMIT / 1024)
        } else {
            e
        }
    })
}

/// A request's prompt, with what its matchers derive from it, each made once on first need.
#[derive(Debug, Default)]
pub struct Prompt {
    text: String,
    lower: Option<String>,
    chars: Option<usize>,
}

impl Prompt {
    pub fn new(text: String) -> Self {
        Prompt { text, lower: None, chars: None }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether `m` holds for this prompt.
    pub fn matches(&mut self, m: &PromptMatch) -> bool {
        match m {
            PromptMatch::ContainsAny(needles) => {
                let Prompt { text, lower, .. } = self;
                let lower = lower.get_or_insert_with(|| text.to_lowercase());
                needles.iter().any(|n| lower.contains(&**n))
            }
            PromptMatch::Regex(r) => r.is_match(&self.text),
            PromptMatch::MinChars(n) => self.chars() >= *n,
            PromptMatch::MaxChars(n) => self.chars() <= *n,
        }
    }

    fn chars(&mut self) -> usize {
        let Prompt { text, chars, .. } = self;
        *chars.get_or_insert_with(|| text.chars().count())
    }
}

/// Where in the document a value is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    /// The document: an object whose `messages`, `input` or `query` give the prompt.
    Top,
    /// `messages`: a list of messages.
    Messages,
    /// `input`: a string, or a list of items read as messages.
    Input,
    /// One message (or Responses item): its role, and its content into the text.
    Message,
    /// A message's `content`: a string, or a list of parts whose text parts are joined by `\n`.
    Content,
    /// A content part: its `text` when its `type` is `text` or `input_text`.
    Part,
}

/// What a value gave, by its level.
enum Found<'de> {
    /// `Top`, `Messages`, `Input`: the prompt, if any.
    Prompt(Option<String>),
    /// `Message`: whether its role is `user` (its content is in the walk's text).
    User(bool),
    /// `Part`: its text, if it is a text part.
    Part(Option<Cow<'de, str>>),
    /// `Content`: written into the walk's text.
    Done,
}

/// The value at `level`; a message's content is written into `text`.
struct Walk<'a> {
    level: Level,
    text: &'a mut String,
}

impl Walk<'_> {
    /// What a value of the wrong kind gives at this level.
    fn nothing<'de>(&self) -> Found<'de> {
        match self.level {
            Level::Top | Level::Messages | Level::Input => Found::Prompt(None),
            Level::Message => Found::User(false),
            Level::Part => Found::Part(None),
            Level::Content => Found::Done,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Found<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

const TOP_KEYS: &[&str] = &["messages", "input", "query"];
const MESSAGE_KEYS: &[&str] = &["role", "content"];
const PART_KEYS: &[&str] = &["type", "text"];

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Found<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(self.nothing())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(self.nothing())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(self.nothing())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(self.nothing())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(self.nothing())
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(match self.level {
            Level::Input => Found::Prompt(Some(v.to_string())),
            Level::Content => {
                self.text.push_str(v);
                Found::Done
            }
            _ => self.nothing(),
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        match self.level {
            Level::Messages | Level::Input => {
                // The message being read is written into `scratch`; a user message's text is
                // kept by swapping the two, so two buffers serve the whole list.
                let mut last: Option<String> = None;
                let mut scratch = String::new();
                while let Some(f) =
                    seq.next_element_seed(Walk { level: Level::Message, text: &mut scratch })?
                {
                    if let Found::User(true) = f {
                        let mut kept = last.take().unwrap_or_default();
                        std::mem::swap(&mut kept, &mut scratch);
                        last = Some(kept);
                    }
                    scratch.clear();
                }
                Ok(Found::Prompt(last))
            }
            Level::Content => {
                let mut first = true;
                while let Some(f) =
                    seq.next_element_seed(Walk { level: Level::Part, text: &mut *self.text })?
                {
                    if let Found::Part(Some(t)) = f {
                        if !first {
                            self.text.push('\n');
                        }
                        self.text.push_str(&t);
                        first = false;
                    }
                }
                Ok(Found::Done)
            }
            _ => {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(self.nothing())
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        match self.level {
            Level::Top => {
                let (mut messages, mut input, mut query) = (None, None, None);
                while let Some(key) = map.next_key_seed(Key(TOP_KEYS))? {
                    match key {
                        Some(0) => {
                            let walk = Walk { level: Level::Messages, text: &mut *self.text };
                            messages = prompt(map.next_value_seed(walk)?);
                        }
                        Some(1) => {
                            input = prompt(
                                map.next_value_seed(Walk { level: Level::Input, text: &mut *self.text })?,
                            )
                        }
                        Some(_) => query = map.next_value_seed(Str)?.map(Cow::into_owned),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Found::Prompt(messages.or(input).or(query)))
            }
            Level::Message => {
                let mut user = false;
                while let Some(key) = map.next_key_seed(Key(MESSAGE_KEYS))? {
                    match key {
                        Some(0) => user = map.next_value_seed(Str)?.is_some_and(|r| r == "user"),
                        Some(_) => {
                            // A repeated `content`: the last one counts.
                            self.text.clear();
                            map.next_value_seed(Walk { level: Level::Content, text: &mut *self.text })?;
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Found::User(user))
            }
            Level::Part => {
                let (mut is_text, mut text) = (false, None);
                while let Some(key) = map.next_key_seed(Key(PART_KEYS))? {
                    match key {
                        Some(0) => {
                            is_text =
                                map.next_value_seed(Str)?.is_some_and(|t| t == "text" || t == "input_text")
                        }
                        Some(_) => text = map.next_value_seed(Str)?,
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Found::Part(text.filter(|_| is_text)))
            }
            _ => {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(self.nothing())
            }
        }
    }
}

fn prompt(f: Found<'_>) -> Option<String> {
    match f {
        Found::Prompt(p) => p,
        _ => None,
    }
}

/// An object key: its index in the names a level reads, `None` for any other (as decoded:
/// `"mod\u0065l"` is `model`).
pub(crate) struct Key(pub &'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Key {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|k| *k == v))
    }
}

/// A string, borrowed from the body when it has no escapes; `None` for any other value.
struct Str;

impl<'de> DeserializeSeed<'de> for Str {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Str {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    super::extract::scalars_are!(None);
    super::extract::containers_are!('de, None);
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn p(body: &str) -> Option<String> {
        extract(body.as_bytes())
    }

    #[test]
    fn the_last_user_message_of_a_chat_is_the_prompt() {
        let body = r#"{"model": "m", "messages": [
            {"role": "system", "content": "you make slides"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer about PPT"},
            {"content": "last question", "role": "user"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "x"}]}]}"#;
        assert_eq!(p(body).as_deref(), Some("last question"));
        let parts = r#"{"messages": [{"role": "user", "content": [
            {"type": "text", "text": "one"}, {"type": "image_url", "image_url": {"url": "data:x"}},
            {"text": "two", "type": "text"}, {"type": "image", "source": {"data": "x"}},
            {"type": "tool_result", "content": "not text"}, {"type": "text", "text": "thr\u00e9e"}]}]}"#;
        assert_eq!(p(parts).as_deref(), Some("one\ntwo\nthrée"));
        let only_image = r#"{"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}"#;
        assert_eq!(p(only_image).as_deref(), Some(""), "a user message without text: the empty prompt");
        let no_user =
            r#"{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}"#;
        assert_eq!(p(no_user), None);
        assert_eq!(p(r#"{"messages": []}"#), None);
        assert_eq!(p(r#"{"messages": "not a list"}"#), None);
        let repeated = r#"{"messages": [{"role": "user", "content": "a", "content": "b"}]}"#;
        assert_eq!(p(repeated).as_deref(), Some("b"));
        let role_twice = r#"{"messages": [{"role": "user", "content": "a", "role": "assistant"}]}"#;
        assert_eq!(p(role_twice), None, "the last role counts");
    }

    #[test]
    fn responses_input_and_dify_query() {
        assert_eq!(p(r#"{"model": "m", "input": "Tell me a story"}"#).as_deref(), Some("Tell me a story"));
        let items = r#"{"input": [
            {"role": "user", "content": "earlier"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]},
            {"type": "function_call_output", "call_id": "c", "output": "42"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "make a PPT"},
                {"type": "input_image", "image_url": "https://x"}]}]}"#;
        assert_eq!(p(items).as_deref(), Some("make a PPT"));
        assert_eq!(
            p(r#"{"query": "幻灯片怎么做", "user": "u1", "inputs": {}}"#).as_deref(),
            Some("幻灯片怎么做")
        );
        assert_eq!(p(r#"{"query": 42}"#), None);
        let both = r#"{"query": "q", "messages": [{"role": "user", "content": "m"}], "input": "i"}"#;
        assert_eq!(p(both).as_deref(), Some("m"), "messages first, then input, then query");
        assert_eq!(p(r#"{"query": "q", "input": "i"}"#).as_deref(), Some("i"));
    }

    #[test]
    fn no_prompt_without_one_utf8_json_object() {
        for bad in [
            "",
            "not json",
            "[1, 2]",
            "\"messages\"",
            r#"{"query": "a"} {}"#,
            r#"{"query": "a""#,
            r#"{"query": "bad \q escape"}"#,
            r#"{"model": "m"}"#,
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
        assert_eq!(extract(b"{\"query\": \"\xc3\"}"), None, "not UTF-8");
        let deep = format!("{{\"query\": \"q\", \"x\": {}{}}}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(p(&deep).as_deref(), Some("q"), "passed over, without a stack");
        let unclosed = format!("{{\"query\": \"q\", \"x\": {}}}", "[".repeat(5000));
        assert_eq!(p(&unclosed), None);
    }

    #[test]
    fn matchers_fold_case_count_characters_and_match_regexes() {
        let contains = |needles: &[&str]| {
            PromptMatch::ContainsAny(needles.iter().map(|n| n.to_lowercase().into()).collect())
        };
        let mut pr = Prompt::new("Make me a PPT about ÉTÉ 幻灯片".to_string());
        assert!(pr.matches(&contains(&["ppt"])));
        assert!(pr.matches(&contains(&["été"])), "accented Latin folds");
        assert!(pr.matches(&contains(&["nope", "幻灯片"])));
        assert!(!pr.matches(&contains(&["slides"])));
        assert!(pr.matches(&PromptMatch::MinChars(27)) && !pr.matches(&PromptMatch::MinChars(28)));
        assert!(pr.matches(&PromptMatch::MaxChars(27)) && !pr.matches(&PromptMatch::MaxChars(26)));
        assert!(pr.matches(&PromptMatch::Regex(compile_regex(r"(?i)\bppt\b").unwrap())));
        assert!(!pr.matches(&PromptMatch::Regex(compile_regex(r"\bppt\b").unwrap())), "as sent");
        assert!(pr.matches(&PromptMatch::Regex(compile_regex("幻灯片$").unwrap())));
        let mut empty = Prompt::new(String::new());
        assert!(empty.matches(&PromptMatch::MaxChars(0)) && !empty.matches(&PromptMatch::MinChars(1)));
    }

    #[test]
    fn regexes_are_refused_with_a_reason() {
        assert!(compile_regex(r"(a)\1").unwrap_err().contains("backreferences are not supported"));
        assert!(compile_regex("(unclosed").is_err());
        assert!(compile_regex(r"\p{Han}").is_err(), "no Unicode classes in regex-lite");
        let big = compile_regex("(?:a{1000}|b{1000}){100}").unwrap_err();
        assert!(big.contains("64 KiB"), "{big}");
        assert!(compile_regex("slides|幻灯片|ppt").is_ok());
    }
}
