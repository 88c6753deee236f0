//! What reaches the v2 features from outside, as arbitrary bytes, must never panic and must
//! keep their contracts:
//! - the dynamic metadata Envoy hands over (claims): `Claims::from_metadata` returns claims or
//!   nothing, and every claim it has decodes (or is nothing) and matches without panicking;
//! - a JSON request body: `body::parse` and every pointer lookup, match and identity;
//! - a session pin cookie: `pin::verify` refuses anything not signed with the key, and a pin
//!   signed with the key for this user verifies, whatever the rule, version and user bytes.
#![no_main]

use graysplit::decide::matcher::StringMatch;
use graysplit::decide::pin;
use graysplit::request::body;
use graysplit::request::claims::Claims;
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzzing-key-fuzzing-key-fuzzing!";

fuzz_target!(|data: &[u8]| {
    let matchers = [
        StringMatch::Exact(b"legal".as_slice().into()),
        StringMatch::Prefix(b"be".as_slice().into()),
        StringMatch::Present(true),
        StringMatch::Present(false),
    ];
    // Metadata.
    if let Some(c) = Claims::from_metadata(data, "envoy.filters.http.jwt_authn", "payload") {
        for name in ["sub", "department", "groups", ""] {
            if let Some(claim) = c.get(name) {
                let _ = claim.identity();
                for m in &matchers {
                    let _ = claim.matches(m);
                }
            }
        }
    }
    let _ = Claims::decode(data);
    // Bodies.
    if let Some(v) = body::parse(data) {
        for p in ["/user", "/metadata/conversation_id", "/messages/0/content", "/a~1b", "/"] {
            let field = v.pointer(p);
            let _ = field.and_then(body::identity);
            for m in &matchers {
                let _ = body::matches(field, m);
            }
        }
    }
    // Pins: arbitrary values are refused unless they are a real pin.
    let keys: Vec<Box<[u8]>> = vec![KEY.into()];
    if let Ok(p) = pin::verify(data, &keys, "ramp", b"salt", b"alice", 0, 604_800) {
        let again = pin::sign(KEY, &p.rule, &p.version, p.expires_s, b"salt", b"alice");
        assert_eq!(again.as_bytes(), data, "a pin verified that this key did not sign");
    }
    let (user, version) = data.split_at(data.len() / 2);
    let version = String::from_utf8_lossy(version).replace(':', "");
    let signed = pin::sign(KEY, "ramp", &version, 1000, b"salt", user);
    assert!(pin::verify(signed.as_bytes(), &keys, "ramp", b"salt", user, 999, 600).is_ok(), "{signed}");
    assert!(pin::verify(signed.as_bytes(), &keys, "ramp", b"salt", user, 1000, 600).is_err(), "expired");
});
