//! The JSON shapes of the answers graysplit reads: one struct that every format's events and
//! answers fit (OpenAI chat completions, completions and Responses, Anthropic Messages, Dify),
//! read with serde over the borrowed text. Only what the signals need is kept; everything
//! else (the answer's text above all) is skipped without being built, and a list of choices is
//! folded as it is read, never collected.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::Finish;

/// One event's JSON, or a whole JSON answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Shape<'a> {
    /// Anthropic's and the Responses API's event or object type.
    #[serde(rename = "type", borrow)]
    pub kind: Word<'a>,
    /// OpenAI: `chat.completion`, `chat.completion.chunk`, `text_completion`, `response`.
    #[serde(borrow)]
    pub object: Word<'a>,
    /// Dify: `message`, `agent_message`, `message_end`, `error`, ...
    #[serde(borrow)]
    pub event: Word<'a>,
    pub choices: Maybe<Choices>,
    pub usage: Maybe<Usage>,
    /// Anthropic `message_start`: the message so far.
    #[serde(borrow)]
    pub message: Maybe<Inner<'a>>,
    /// Responses API SSE: the response so far.
    #[serde(borrow)]
    pub response: Maybe<Inner<'a>>,
    /// Anthropic `content_block_delta` / `message_delta` (an object), Responses `*.delta` (a
    /// string).
    #[serde(borrow)]
    pub delta: Option<Delta<'a>>,
    /// Anthropic `content_block_start`: its block's type; Responses `response.output_item.added`.
    #[serde(borrow)]
    pub content_block: Maybe<Typed<'a>>,
    #[serde(borrow)]
    pub item: Maybe<Typed<'a>>,
    /// Anthropic's ending of a JSON message.
    #[serde(borrow)]
    pub stop_reason: Word<'a>,
    /// The Responses API's status (a string); Dify's error status is a number (no word).
    #[serde(borrow)]
    pub status: Word<'a>,
    #[serde(borrow)]
    pub incomplete_details: Maybe<Reason<'a>>,
    /// Dify: `metadata.usage`.
    pub metadata: Maybe<Meta>,
    /// Dify's answer text.
    pub answer: Out,
}

/// An object of shape `T` (an `Option` that is none for anything but an object, where a
/// field of that name holds something else in another format: Dify's `message` is a string,
/// Anthropic's an object).
#[derive(Debug)]
pub(super) struct Maybe<T>(pub Option<T>);

impl<T> Default for Maybe<T> {
    fn default() -> Self {
        Maybe(None)
    }
}

impl<T> Maybe<T> {
    pub fn as_ref(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Maybe<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Maybe<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(a)).map(|t| Maybe(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                // OpenAI's `choices` is a list.
                T::deserialize(serde::de::value::SeqAccessDeserializer::new(a)).map(|t| Maybe(Some(t)))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Maybe(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Maybe(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Maybe(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Maybe(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Maybe(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Maybe(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Maybe(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A string value, borrowed where it has no escapes; anything that is not a string is none.
#[derive(Debug, Default)]
pub(super) struct Word<'a>(pub Option<Cow<'a, str>>);

impl Word<'_> {
    pub fn is(&self, s: &str) -> bool {
        self.0.as_deref() == Some(s)
    }

    pub fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Word<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Word<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Word(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Word(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Word(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Word(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Word(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Word(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Word(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Word(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Word(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Word(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether a value carries output: a non-empty string, array or object (text, content parts,
/// tool calls); null, false, numbers and empty ones do not.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Out(pub bool);

impl<'de> Deserialize<'de> for Out {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Out;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Out, E> {
                Ok(Out(!v.is_empty()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Out, E> {
                Ok(Out(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Out, E> {
                Ok(Out(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Out, E> {
                Ok(Out(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Out, E> {
                Ok(Out(false))
            }
            fn visit_unit<E>(self) -> Result<Out, E> {
                Ok(Out(false))
            }
            fn visit_none<E>(self) -> Result<Out, E> {
                Ok(Out(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Out, A::Error> {
                let mut any = false;
                while a.next_element::<IgnoredAny>()?.is_some() {
                    any = true;
                }
                Ok(Out(any))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Out, A::Error> {
                let mut any = false;
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                    any = true;
                }
                Ok(Out(any))
            }
        }
        d.deserialize_any(V)
    }
}

/// A token count: a non-negative integer, else none (a count of the wrong type loses only
/// itself, not the event).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Count(pub Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Count, E> {
                Ok(Count(Some(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Count, E> {
                Ok(Count(u64::try_from(v).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_unit<E>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_none<E>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Count, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Count, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Token counts under every format's names (DESIGN.md: each as the format reports it, no
/// arithmetic across fields).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Usage {
    pub prompt_tokens: Count,
    pub completion_tokens: Count,
    pub input_tokens: Count,
    pub output_tokens: Count,
    pub cache_read_input_tokens: Count,
    pub prompt_tokens_details: Maybe<Details>,
    pub completion_tokens_details: Maybe<Details>,
    pub input_tokens_details: Maybe<Details>,
    pub output_tokens_details: Maybe<Details>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Details {
    pub cached_tokens: Count,
    pub reasoning_tokens: Count,
}

/// Anthropic's `message` of `message_start`, the Responses API's `response` of its events.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Inner<'a> {
    pub usage: Maybe<Usage>,
    #[serde(borrow)]
    pub status: Word<'a>,
    #[serde(borrow)]
    pub incomplete_details: Maybe<Reason<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Reason<'a> {
    #[serde(borrow)]
    pub reason: Word<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Typed<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Word<'a>,
    /// A text block that starts with text (Anthropic `content_block_start`).
    pub text: Out,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Meta {
    pub usage: Maybe<Usage>,
}

/// A `delta`: Anthropic's object (`text_delta`, `input_json_delta`, `message_delta`'s
/// `stop_reason`) or the Responses API's string.
#[derive(Debug, Default)]
pub(super) struct Delta<'a> {
    /// It carries output text or a tool call's arguments.
    pub output: bool,
    pub stop_reason: Word<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeltaObject<'a> {
    #[serde(rename = "type", borrow)]
    kind: Word<'a>,
    text: Out,
    partial_json: Out,
    #[serde(borrow)]
    stop_reason: Word<'a>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Delta<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Delta<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an object")
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Delta { output: !v.is_empty(), ..Delta::default() })
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Delta::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                let o = DeltaObject::deserialize(serde::de::value::MapAccessDeserializer::new(a))?;
                // Thinking deltas are not the answer's output.
                let output = match o.kind.get() {
                    Some("text_delta") => o.text.0,
                    Some("input_json_delta") => o.partial_json.0,
                    _ => false,
                };
                Ok(Delta { output, stop_reason: o.stop_reason })
            }
        }
        d.deserialize_any(V)
    }
}

/// OpenAI's `choices`, folded as they are read: whether any carries output, and the first
/// ending any gives.
#[derive(Debug, Default)]
pub(super) struct Choices {
    pub output: bool,
    pub finish_reason: Option<Finish>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Choice<'a> {
    #[serde(borrow)]
    finish_reason: Word<'a>,
    delta: Maybe<Message>,
    message: Maybe<Message>,
    /// Completions: the text.
    text: Out,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Message {
    content: Out,
    tool_calls: Out,
    function_call: Out,
    refusal: Out,
}

impl Message {
    fn output(&self) -> bool {
        self.content.0 || self.tool_calls.0 || self.function_call.0 || self.refusal.0
    }
}

impl<'de> Deserialize<'de> for Choices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Choices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_unit<E>(self) -> Result<Choices, E> {
                Ok(Choices::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Choices, A::Error> {
                let mut out = Choices::default();
                while let Some(c) = a.next_element::<Choice<'_>>()? {
                    out.output |= c.text.0
                        || c.delta.as_ref().is_some_and(Message::output)
                        || c.message.as_ref().is_some_and(Message::output);
                    if out.finish_reason.is_none() {
                        out.finish_reason = c.finish_reason.get().map(Finish::from_openai);
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}
