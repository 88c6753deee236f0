//! An answer's text, for the shadow's pairing (DESIGN.md "Shadow"): the concatenated output
//! text of the formats the readers know, of which a bounded start is kept (for the similarity
//! and the record's `text`), while its length in Unicode scalar values and its SHA-256 cover all
//! of it. Pure; fed by the [`super::Reader`] made with [`super::Reader::with_text`].

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::body::extract::{containers_are, lists_are, objects_are, scalars_are};
use sha2::{Digest, Sha256};

use crate::text::hex;

/// SHA-256 of the empty text (a shadow without an answer's `answer_sha256`).
pub const EMPTY_SHA256: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27,
    0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// What was kept of an answer's text.
#[derive(Clone, PartialEq, Eq)]
pub struct AnswerText {
    /// The start of the text, at most the reader's `keep` bytes, cut at a character boundary.
    pub kept: String,
    /// Unicode scalar values in the whole text.
    pub chars: u64,
    /// SHA-256 of the whole text's UTF-8.
    pub sha256: [u8; 32],
}

impl fmt::Debug for AnswerText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerText")
            .field("kept", &self.kept)
            .field("chars", &self.chars)
            .field("sha256", &hex(&self.sha256))
            .finish()
    }
}

/// The text being gathered.
pub(super) struct Sink {
    keep: usize,
    kept: String,
    chars: u64,
    sha: Sha256,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink").field("kept", &self.kept.len()).field("chars", &self.chars).finish()
    }
}

impl Sink {
    pub fn new(keep: usize) -> Self {
        Sink { keep, kept: String::new(), chars: 0, sha: Sha256::new() }
    }

    /// The next piece of the answer's text.
    pub fn push(&mut self, piece: &str) {
        self.sha.update(piece.as_bytes());
        self.chars = self.chars.saturating_add(piece.chars().count() as u64);
        let room = self.keep.saturating_sub(self.kept.len());
        if room > 0 {
            let mut cut = room.min(piece.len());
            while !piece.is_char_boundary(cut) {
                cut -= 1;
            }
            self.kept.push_str(piece.get(..cut).unwrap_or_default());
        }
    }

    pub fn finish(self) -> AnswerText {
        AnswerText { kept: self.kept, chars: self.chars, sha256: self.sha.finalize().into() }
    }
}

/// The text of an answer of no format the readers know (a body that is neither JSON nor an
/// event stream, or has a content-encoding): its bytes as they pass, as text (DESIGN.md
/// "Shadow": "the body as text for other answers"). Its length counts the bytes that start a
/// UTF-8 character and its SHA-256 covers the bytes as they came; the start kept is cut at a
/// character boundary, anything not UTF-8 in it replaced by U+FFFD.
pub struct RawText {
    keep: usize,
    kept: Vec<u8>,
    chars: u64,
    sha: Sha256,
}

impl RawText {
    pub fn new(keep: usize) -> Self {
        RawText { keep, kept: Vec::new(), chars: 0, sha: Sha256::new() }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        // Every byte but a continuation byte (0b10xx_xxxx) starts a character.
        self.chars = self.chars.saturating_add(bytes.iter().filter(|&&b| (b as i8) >= -0x40).count() as u64);
        let room = self.keep.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
    }

    pub fn finish(mut self) -> AnswerText {
        // A character cut by the cap is left out, not replaced.
        if let Err(e) = std::str::from_utf8(&self.kept) {
            if e.error_len().is_none() {
                self.kept.truncate(e.valid_up_to());
            }
        }
        let text = String::from_utf8_lossy(&self.kept);
        let kept = crate::shadow::record::text_cap(&text, self.keep).to_string();
        AnswerText { kept, chars: self.chars, sha256: self.sha.finalize().into() }
    }
}

/// The output text of a whole JSON answer, into `sink`: an OpenAI chat completion's first
/// choice's `message.content` (a completion's `text`), an Anthropic message's `text` blocks, a
/// Responses API response's `output_text` parts of its `message` items, a Dify answer's
/// `answer`. False when `json` is not one JSON document.
pub(super) fn json_text(json: &[u8], sink: &mut Sink) -> bool {
    let Ok(text) = std::str::from_utf8(json) else { return false };
    let mut de = serde_json::Deserializer::from_str(text);
    Top(sink).deserialize(&mut de).is_ok() && de.end().is_ok()
}

/// A string, or nothing for any other value.
struct Str;

impl<'de> DeserializeSeed<'de> for Str {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Str {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    scalars_are!(None);
    containers_are!('de, None);
}

/// An object's `type` and `text` (its other fields skipped), in whatever order they come.
struct Typed;

impl<'de> DeserializeSeed<'de> for Typed {
    type Value = (Option<String>, Option<String>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Typed {
    type Value = (Option<String>, Option<String>);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let (mut kind, mut text) = (None, None);
        while let Some(k) = a.next_key::<String>()? {
            match k.as_str() {
                "type" => kind = a.next_value_seed(Str)?,
                "text" => text = a.next_value_seed(Str)?,
                _ => a.next_value::<IgnoredAny>().map(|_| ())?,
            }
        }
        Ok((kind, text))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok((None, None))
    }
    scalars_are!((None, None));
    lists_are!('de, (None, None));
}

/// The answer's top-level object.
struct Top<'a>(&'a mut Sink);

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Gathers the text pieces of one top-level answer; pushed in document order at the end (an
/// Anthropic block's `type` may follow its `text`).
#[derive(Default)]
struct Pieces(Vec<String>);

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON answer")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let mut pieces = Pieces::default();
        while let Some(k) = a.next_key::<String>()? {
            match k.as_str() {
                "choices" => a.next_value_seed(List(Kind::Choice, &mut pieces))?,
                "content" => a.next_value_seed(List(Kind::Block, &mut pieces))?,
                "output" => a.next_value_seed(List(Kind::Item, &mut pieces))?,
                "answer" => {
                    if let Some(s) = a.next_value_seed(Str)? {
                        pieces.0.push(s);
                    }
                }
                _ => a.next_value::<IgnoredAny>().map(|_| ())?,
            }
        }
        for p in &pieces.0 {
            self.0.push(p);
        }
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    scalars_are!(());
    lists_are!('de, ());
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// OpenAI's `choices`: the first one's `message.content` or `text`.
    Choice,
    /// Anthropic's `content` blocks of type `text`; Responses' message `content` parts of type
    /// `output_text`.
    Block,
    Part,
    /// Responses' `output` items of type `message`.
    Item,
}

/// A list of `Kind` elements, their text into `pieces`.
struct List<'p>(Kind, &'p mut Pieces);

impl<'de> DeserializeSeed<'de> for List<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for List<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let List(kind, pieces) = self;
        let mut first = true;
        loop {
            let more = match kind {
                Kind::Choice if first => a.next_element_seed(Choice(pieces))?.is_some(),
                Kind::Choice => a.next_element::<IgnoredAny>()?.is_some(),
                Kind::Block | Kind::Part => match a.next_element_seed(Typed)? {
                    Some((t, Some(text))) => {
                        let want = if kind == Kind::Block { "text" } else { "output_text" };
                        if t.as_deref() == Some(want) {
                            pieces.0.push(text);
                        }
                        true
                    }
                    Some(_) => true,
                    None => false,
                },
                Kind::Item => a.next_element_seed(Item(pieces))?.is_some(),
            };
            if !more {
                return Ok(());
            }
            first = false;
        }
    }
    // OpenAI's `message.content` is a string where Anthropic's `content` is a list.
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        if self.0 == Kind::Block {
            self.1 .0.push(v.to_string());
        }
        Ok(())
    }
    scalars_are!(());
    objects_are!('de, ());
}

/// An OpenAI choice: `message.content` (a string), or `text`.
struct Choice<'p>(&'p mut Pieces);

impl<'de> DeserializeSeed<'de> for Choice<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Choice<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a choice")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        while let Some(k) = a.next_key::<String>()? {
            match k.as_str() {
                "message" => a.next_value_seed(Message(&mut *self.0))?,
                "text" => {
                    if let Some(s) = a.next_value_seed(Str)? {
                        self.0 .0.push(s);
                    }
                }
                _ => a.next_value::<IgnoredAny>().map(|_| ())?,
            }
        }
        Ok(())
    }
}

/// An OpenAI message: its `content` string.
struct Message<'p>(&'p mut Pieces);

impl<'de> DeserializeSeed<'de> for Message<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Message<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        while let Some(k) = a.next_key::<String>()? {
            if k == "content" {
                if let Some(s) = a.next_value_seed(Str)? {
                    self.0 .0.push(s);
                }
            } else {
                a.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// A Responses API output item: a `message`'s `content` parts.
struct Item<'p>(&'p mut Pieces);

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Item<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an output item")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let mut kind = None;
        let mut parts = Pieces::default();
        while let Some(k) = a.next_key::<String>()? {
            match k.as_str() {
                "type" => kind = a.next_value_seed(Str)?,
                "content" => a.next_value_seed(List(Kind::Part, &mut parts))?,
                _ => a.next_value::<IgnoredAny>().map(|_| ())?,
            }
        }
        if kind.as_deref() == Some("message") {
            self.0 .0.extend(parts.0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(json: &str) -> Option<String> {
        let mut s = Sink::new(1 << 20);
        json_text(json.as_bytes(), &mut s).then(|| s.finish().kept)
    }

    #[test]
    fn each_format_s_output_text_and_nothing_else() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello \"you\""},"finish_reason":"stop"},{"index":1,"message":{"content":"other"}}],"usage":{"prompt_tokens":1}}"#,
                "Hello \"you\"",
            ),
            (r#"{"object":"text_completion","choices":[{"text":"once upon","index":0}]}"#, "once upon"),
            (
                r#"{"type":"message","content":[{"text":"Hi ","type":"text"},{"type":"tool_use","id":"t","name":"f","input":{"text":"not this"}},{"type":"text","text":"there"}],"stop_reason":"end_turn"}"#,
                "Hi there",
            ),
            (
                r#"{"object":"response","output":[{"type":"reasoning","summary":[{"type":"summary_text","text":"thinking"}]},{"type":"message","content":[{"type":"output_text","text":"The answer"},{"type":"refusal","refusal":"no"}]},{"type":"function_call","arguments":"{}"}],"status":"completed"}"#,
                "The answer",
            ),
            (r#"{"event":"message","answer":"iPhone 13","metadata":{"usage":{}}}"#, "iPhone 13"),
            (r#"{"error":{"message":"bad"}}"#, ""),
            (r#"[1, 2]"#, ""),
        ];
        for (json, want) in cases {
            assert_eq!(text(json).as_deref(), Some(*want), "{json}");
        }
        assert_eq!(text("{\"choices\": ["), None, "not one document");
    }

    #[test]
    fn the_kept_start_is_cut_at_a_character_and_the_count_and_hash_cover_all() {
        let mut s = Sink::new(5);
        s.push("ab");
        s.push("cé"); // 'é' is 2 bytes: "abcé" is 5 bytes
        s.push("fg");
        let t = s.finish();
        assert_eq!(t.kept, "abcé");
        assert_eq!(t.chars, 6);
        let mut whole = Sink::new(0);
        whole.push("abcéfg");
        assert_eq!(whole.finish().sha256, t.sha256, "the hash of all of it, however it came");
        let mut s = Sink::new(4);
        s.push("abcé");
        assert_eq!(s.finish().kept, "abc", "a character is never split");
        let empty = Sink::new(8).finish();
        assert_eq!(hex(&empty.sha256), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
