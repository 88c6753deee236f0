//! Arbitrary requests through `decide()` against one fixed, realistic plan (every matcher kind,
//! a multi-version split, a sticky cookie, an override, a users list, time windows, a disabled
//! and an expired rule), compiled once. No request may panic, and every decision must keep the
//! contract:
//! - the version is a known one, the metric exists, and deciding twice gives the same answer;
//! - a bucket, when there is one, is below 10 000 and is exactly `bucket(salt:user)`, and the
//!   split rule that decided sent it to the band that owns that bucket;
//! - `Set-Cookie` is sent exactly when the request supplied no user id, and then carries the
//!   minted id (`Secure` only on https);
//! - an override decision names the version the override header asked for.
#![no_main]

use std::sync::OnceLock;

use graysplit::config::{parse, Plan};
use graysplit::bucket::{bucket, BUCKETS};
use graysplit::decide::{decide, DecidedBy};
use graysplit::request::fake::StaticRequest;
use graysplit::request::{cookie, query};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = include_str!("request_path_config.json");

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| match parse(CONFIG.as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("the fuzz config must compile: {e}"),
    })
}

/// The fuzz input is a request written as text, so seeds are readable and byte mutations land
/// in header values, paths and queries:
/// ```text
/// POST /api/x?uid=a%20b&channel=qa      first line: method, space, :path (no space: :path only)
/// x-user-id: alice                      then headers, `name: value`, any bytes but a newline;
/// cookie: uid=1; beta=""                names are lower-cased; any name may repeat
/// :scheme: https                        pseudo-headers too
/// @source [::ffff:10.1.2.3]:80          Envoy's source.address (absent when not given)
/// @now 1793491200000000000              unix nanoseconds (0 when not given)
/// @random 171                           the byte a minted id is made of
/// ```
fn request(data: &[u8]) -> StaticRequest {
    let mut req = StaticRequest::default();
    let mut lines = data.split(|&c| c == b'\n');
    let start = lines.next().unwrap_or_default();
    match start.iter().position(|&c| c == b' ') {
        Some(sp) => {
            req.headers.push((":method".to_string(), start.get(..sp).unwrap_or_default().to_vec()));
            req.headers.push((":path".to_string(), start.get(sp + 1..).unwrap_or_default().to_vec()));
        }
        None => req.headers.push((":path".to_string(), start.to_vec())),
    }
    for line in lines {
        if let Some(rest) = line.strip_prefix(b"@source ") {
            req.source = Some(String::from_utf8_lossy(rest).into_owned());
        } else if let Some(rest) = line.strip_prefix(b"@now ") {
            req.now = number(rest);
        } else if let Some(rest) = line.strip_prefix(b"@random ") {
            req.random_byte = number(rest) as u8;
        } else if let Some(colon) = line.iter().skip(1).position(|&c| c == b':') {
            let (name, value) = line.split_at(colon + 1);
            let value = value.get(1..).unwrap_or_default();
            let value = value.strip_prefix(b" ").unwrap_or(value);
            req.headers.push((String::from_utf8_lossy(name).to_ascii_lowercase(), value.to_vec()));
        }
    }
    req
}

/// A decimal integer, saturating, `-` allowed; anything else ends it.
fn number(text: &[u8]) -> i64 {
    let (neg, digits) = match text.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, text),
    };
    let mut n: i64 = 0;
    for d in digits.iter().take_while(|d| d.is_ascii_digit()) {
        n = n.saturating_mul(10).saturating_add(i64::from(d - b'0'));
    }
    if neg {
        -n
    } else {
        n
    }
}

fn first<'r>(req: &'r StaticRequest, name: &str) -> Option<&'r [u8]> {
    req.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
}

/// The user id the request supplies, per DESIGN's identity order; `None` when it supplies none.
fn supplied_id(req: &StaticRequest) -> Option<Vec<u8>> {
    let cookies: Vec<&[u8]> =
        req.headers.iter().filter(|(k, _)| k == "cookie").map(|(_, v)| v.as_slice()).collect();
    let path = first(req, ":path").unwrap_or_default();
    let (_, q) = query::split_path(path);
    [
        first(req, "x-user-id").map(<[u8]>::to_vec),
        cookie::find(cookies.iter().copied(), b"uid").map(<[u8]>::to_vec),
        query::find(q, b"uid").map(|v| v.into_owned()),
        cookie::find(cookies.iter().copied(), b"graysplit_uid").map(<[u8]>::to_vec),
    ]
    .into_iter()
    .flatten()
    .find(|v| !v.is_empty())
}

fuzz_target!(|data: &[u8]| {
    let plan = plan();
    let req = request(data);
    let d = decide(plan, &req);

    assert!(d.version < plan.versions.len(), "unknown version: {d:?}");
    assert!(d.metric < plan.metrics.len(), "unknown metric: {d:?}");
    assert_eq!(d, decide(plan, &req), "not sticky: the same request decided differently");

    let minted = format!("{:02x}", req.random_byte).repeat(16).into_bytes();
    let id = supplied_id(&req);
    match (&id, &d.set_cookie) {
        (Some(_), None) => {}
        (Some(id), Some(c)) => panic!("Set-Cookie {c:?} although the request supplied id {id:?}"),
        (None, None) => panic!("no Set-Cookie although the request supplied no id"),
        (None, Some(c)) => {
            let want = format!(
                "graysplit_uid={}; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax",
                String::from_utf8_lossy(&minted)
            );
            let secure = first(&req, ":scheme") == Some(b"https");
            assert_eq!(c.strip_suffix("; Secure").unwrap_or(c), want, "minted cookie");
            assert_eq!(c.ends_with("; Secure"), secure, "Secure exactly on https: {c}");
        }
    }
    let user = id.unwrap_or(minted);

    if let Some(b) = d.bucket {
        assert!(b < BUCKETS, "bucket {b} out of range");
        let DecidedBy::Rule(i) = d.by else { panic!("a bucket without a split rule: {d:?}") };
        let salt = match d.rule_name(plan) {
            "ramp" => &b"release-2.1:"[..],
            "canary" => &b"canary-3:"[..],
            other => panic!("rule {other} has no split but gave bucket {b}"),
        };
        assert_eq!(b, bucket(salt, &user), "bucket of {user:?}");
        let bands = plan.split_bands(i, req.now).unwrap_or_default();
        let owner = bands.iter().find(|(_, lo, hi)| (*lo..*hi).contains(&b));
        assert_eq!(owner.map(|o| o.0), Some(d.version_name(plan)), "band of bucket {b}: {bands:?}");
    }
    if d.by == DecidedBy::Override {
        assert_eq!(first(&req, "x-gray-release"), Some(d.version_name(plan).as_bytes()), "override");
    }
});
