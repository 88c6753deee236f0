//! Arbitrary bytes as the plugin configuration: `config::parse` must return `Ok` or `Err`,
//! never panic; and a plan it accepts must decide a few ordinary requests without panicking,
//! always naming a known version.
#![no_main]

use graysplit::config::parse;
use graysplit::decide::decide;
use graysplit::bucket::BUCKETS;
use graysplit::request::fake::StaticRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let plan = match parse(data) {
        Ok(plan) => plan,
        Err(e) => {
            // Every error names a place in the document and says something about it.
            assert!(!e.path.is_empty() && !e.problem.is_empty(), "empty error {e:?}");
            return;
        }
    };
    assert!(!plan.versions.is_empty(), "a plan always knows stable");
    let mut with_id = StaticRequest::get(
        "/api/x?uid=q-user&channel=qa",
        &[("x-user-id", "alice"), ("cookie", "uid=c-user; beta=1"), ("x-department", "legal")],
    );
    with_id.now = 1_796_083_200_000_000_000; // 2026-12-01T00:00:00Z
    let mut bare = StaticRequest::get("/", &[]);
    bare.source = None;
    bare.now = i64::MIN;
    let mut odd = StaticRequest::get("/%zz?%%&&=", &[("cookie", "=;;\"")]);
    odd.source = Some("[::ffff:10.1.2.3]:80".to_string());
    odd.now = i64::MAX;
    // Every header name the plan reads, with the request's own bytes as the value.
    for name in &plan.headers {
        if !name.starts_with(':') {
            odd.headers.push((name.clone(), data.get(..data.len().min(64)).unwrap_or_default().to_vec()));
        }
    }
    for req in [&with_id, &bare, &odd] {
        let d = decide(&plan, req);
        assert!(d.version < plan.versions.len(), "unknown version {d:?}");
        assert!(d.metric < plan.metrics.len(), "unknown metric {d:?}");
        assert!(d.bucket.is_none_or(|b| b < BUCKETS), "bucket out of range {d:?}");
        assert_eq!(d, decide(&plan, req), "the same request decided twice differently");
    }
});
