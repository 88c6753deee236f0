//! The user id: the first non-empty `identity.from` source, then the sticky cookie, then an id
//! minted for this request (DESIGN.md `identity`). Resolved on first need, then kept for the
//! rest of the request.

use super::Ctx;
use crate::config::{HeaderSlot, IdSource, Plan};
use crate::request::{body, Host};

/// The user id: resolved on first need, then kept for the rest of the request.
pub(super) enum Identity {
    Unresolved,
    None,
    /// The value of this header slot, already cached in `Facts` (no copy).
    Header(HeaderSlot),
    Owned(Vec<u8>),
}

/// The user id: the first non-empty identity source, then the sticky cookie, then a minted id.
pub(super) fn user_id<'c, H: Host>(plan: &Plan, cx: &'c mut Ctx<'_, H>) -> Option<&'c [u8]> {
    if let Identity::Unresolved = cx.identity {
        cx.identity = resolve_identity(plan, cx);
    }
    match &cx.identity {
        Identity::Header(slot) => cx.facts.header(*slot),
        Identity::Owned(v) => Some(v),
        Identity::None | Identity::Unresolved => None,
    }
}

fn resolve_identity<H: Host>(plan: &Plan, cx: &mut Ctx<'_, H>) -> Identity {
    for src in &plan.identity {
        match src {
            IdSource::Header(slot) => {
                if cx.facts.header(*slot).is_some_and(|v| !v.is_empty()) {
                    return Identity::Header(*slot);
                }
            }
            IdSource::Cookie(name) => {
                if let Some(v) = cx.facts.cookie(name).filter(|v| !v.is_empty()) {
                    return Identity::Owned(v.to_vec());
                }
            }
            IdSource::Claim(name) => {
                if let Some(v) = cx.facts.claim(name).as_ref().and_then(|c| c.identity()) {
                    return Identity::Owned(v.to_vec());
                }
            }
            IdSource::Body(pointer) => {
                if let Some(v) = cx.facts.body_field(pointer).and_then(body::identity) {
                    return Identity::Owned(v.into_owned());
                }
            }
            IdSource::Query(name) => {
                if let Some(v) = cx.facts.query(name).filter(|v| !v.is_empty()) {
                    return Identity::Owned(v.into_owned());
                }
            }
        }
    }
    let Some(sticky) = &plan.sticky else {
        return Identity::None;
    };
    if let Some(v) = cx.facts.cookie(sticky.name.as_bytes()).filter(|v| !v.is_empty()) {
        return Identity::Owned(v.to_vec());
    }
    let id = mint_id(cx.facts.host);
    let secure = cx.facts.header(sticky.scheme_slot) == Some(b"https");
    let mut cookie = format!(
        "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
        sticky.name,
        std::str::from_utf8(&id).unwrap_or_default(), // hex digits: always UTF-8
        sticky.max_age_s
    );
    if secure {
        cookie.push_str("; Secure");
    }
    cx.set_cookie = Some(cookie);
    Identity::Owned(id.to_vec())
}

/// 128 random bits as 32 lower-case hex characters.
fn mint_id<H: Host>(host: &H) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut raw = [0u8; 16];
    host.fill_random(&mut raw);
    let mut out = [0u8; 32];
    for (pair, byte) in out.chunks_exact_mut(2).zip(raw) {
        if let [hi, lo] = pair {
            *hi = HEX.get(usize::from(byte >> 4)).copied().unwrap_or(b'0');
            *lo = HEX.get(usize::from(byte & 15)).copied().unwrap_or(b'0');
        }
    }
    out
}
