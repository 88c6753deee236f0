//! Arbitrary bytes as JSON: graysplit's hand-written parser (`json::Node::parse`) must never
//! panic, and must judge every input like serde_json, the reference it replaced, on the terms
//! of tests/json_reference (shared with tests/prop_json.rs): the same documents accepted (bar
//! duplicate keys, which graysplit refuses, and numbers at the very edge of f64's range), the
//! same strings, structure and numbers (within 16 units in the last place where neither
//! converts exactly), and a path and a line and column inside the input in every error.
#![no_main]

#[path = "../../tests/json_reference/mod.rs"]
mod json_reference;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(why) = json_reference::disagreement(data) {
        panic!("{why}");
    }
});
