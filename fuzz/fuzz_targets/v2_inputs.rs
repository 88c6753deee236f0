//! What reaches the v2 features from outside, as arbitrary bytes, must never panic and must
//! keep their contracts:
//! - the dynamic metadata Envoy hands over (claims): `Claims::from_metadata` returns claims or
//!   nothing, and every claim it has decodes (or is nothing) and matches without panicking;
//! - a JSON request body: the fields `body::Pointers` extracts agree with a whole
//!   `serde_json::Value` parse of the same bytes (the reference), and match and identify;
//! - a session pin cookie (both formats): `pin::verify` refuses anything not signed with the
//!   key, and a pin signed with the key for this user verifies, whatever the version and user.
#![no_main]

use graysplit::body::{self, Field, Pointers};
use graysplit::matcher::StringMatch;
use graysplit::decide::pin::{self, Limits};
use graysplit::request::claims::Claims;
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"fuzzing-key-fuzzing-key-fuzzing!";
const POINTERS: [&str; 6] = ["/user", "/metadata/conversation_id", "/messages/0/content", "/a~1b", "/", "/metadata"];

fn reference(v: &serde_json::Value) -> Field {
    match v {
        serde_json::Value::String(s) => Field::Scalar(s.as_bytes().to_vec()),
        serde_json::Value::Bool(b) => Field::Scalar(b.to_string().into_bytes()),
        serde_json::Value::Number(n) => Field::Scalar(
            match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => i.to_string(),
                (_, Some(u), _) => u.to_string(),
                (_, _, Some(f)) => graysplit::text::fmt_num(f),
                _ => n.to_string(),
            }
            .into_bytes(),
        ),
        _ => Field::Other,
    }
}

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
    // Bodies: the pointer reader against a whole-document parse.
    let mut pointers = Pointers::default();
    for p in POINTERS {
        pointers.add(p);
    }
    let fields = pointers.extract(data);
    let value: Option<serde_json::Value> = serde_json::from_slice(data).ok();
    // A document with a repeated key may differ (both take the last; a Value forgets the earlier
    // object's other keys, the pointer reader forgets the fields below it): compare only when
    // both read it.
    match (&fields, &value) {
        (Some(fields), Some(v)) => {
            for (i, p) in POINTERS.iter().enumerate() {
                let want = v.pointer(p).map(reference);
                assert_eq!(fields.get(i).cloned().flatten(), want, "{p}");
            }
        }
        (None, None) => {}
        (got, want) => assert!(
            got.is_some() == want.is_some(),
            "the pointer reader and serde_json disagree on whether this is one JSON document"
        ),
    }
    for f in fields.iter().flatten() {
        let _ = f.as_ref().and_then(body::identity);
        for m in &matchers {
            let _ = body::matches(f.as_ref(), m);
        }
    }
    // Pins: arbitrary values are refused unless they are a real pin.
    let keys: Vec<Box<[u8]>> = vec![KEY.into()];
    let at = Limits { now_s: 0, idle_s: 604_800, max_s: 2_592_000 };
    if let Ok(p) = pin::verify(data, &keys, "ramp", b"salt", b"alice", at) {
        let again = pin::sign(KEY, "ramp", &p.version, p.began_s, p.expires_s, b"salt", b"alice");
        assert_eq!(again.as_bytes(), data, "a pin verified that this key did not sign");
    }
    if let Ok(p) = pin::verify_v2_format(data, &keys, "ramp", b"salt", b"alice", at) {
        let again = pin::sign_v2_format(KEY, "ramp", &p.version, p.expires_s, b"salt", b"alice");
        assert_eq!(again.as_bytes(), data, "a v2-format pin verified that this key did not sign");
    }
    let (user, version) = data.split_at(data.len() / 2);
    let version = String::from_utf8_lossy(version).replace(':', "");
    let signed = pin::sign(KEY, "ramp", &version, 900, 1000, b"salt", user);
    let at = |now_s| Limits { now_s, idle_s: 600, max_s: 86_400 };
    assert!(pin::verify(signed.as_bytes(), &keys, "ramp", b"salt", user, at(999)).is_ok(), "{signed}");
    assert!(pin::verify(signed.as_bytes(), &keys, "ramp", b"salt", user, at(1000)).is_err(), "expired");
});
