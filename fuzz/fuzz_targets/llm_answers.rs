//! Arbitrary bytes as an LLM answer's body, SSE and JSON, split at an arbitrary point: the reader
//! never panics, reads the same answer whatever the split, and the same as a reader that parses
//! every event (the byte pre-filter that skips quiet events hides no signal).
#![no_main]

use graysplit::llm::{Framing, Reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = usize::from(data.first().copied().unwrap_or(0)) % (data.len() + 1);
    for framing in [Framing::Sse, Framing::Json] {
        let mut whole = Reader::new(framing, 4096);
        let first_whole = whole.feed(data);
        let mut split = Reader::new(framing, 4096);
        let (a, b) = data.split_at(cut);
        let first_split = split.feed(a) | split.feed(b);
        assert_eq!(first_whole, first_split, "the first token depends on the split");
        let mut all = Reader::exhaustive(framing, 4096);
        all.feed(data);
        let answer = whole.end(true, Some(200));
        assert_eq!(answer, split.end(true, Some(200)), "the answer depends on the split");
        assert_eq!(answer, all.end(true, Some(200)), "skipping quiet events changed the answer");
    }
});
