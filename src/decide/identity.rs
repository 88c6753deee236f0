//! The user id: the first non-empty `identity.from` source, then the sticky cookie, then an id
//! minted for this request (DESIGN.md `identity`). Resolved on first need, then kept for the
//! rest of the request.

use super::cookie::{push_hex, set_cookie};
use super::Ctx;
use crate::body;
use crate::config::{HeaderSlot, IdSource, Plan};
use crate::request::{Host, Pending};

/// The user id: resolved on first need, then kept for the rest of the request.
pub(super) enum Identity {
    None,
    /// The value of this header slot, already cached in `Facts` (no copy).
    Header(HeaderSlot),
    Owned(Vec<u8>),
}

/// The user id: the first non-empty identity source, then the sticky cookie, then a minted id.
/// [`Pending`] when a body source comes before any source that gives an id and the body is still
/// to come; with `pending_is_absent` such a source is skipped instead.
pub(super) fn user_id<'c, H: Host>(
    plan: &Plan,
    cx: &'c mut Ctx<'_, H>,
    pending_is_absent: bool,
) -> Result<Option<&'c [u8]>, Pending> {
    let identity = match cx.identity.take() {
        Some(known) => known,
        None => resolve_identity(plan, cx, pending_is_absent)?,
    };
    Ok(match cx.identity.insert(identity) {
        Identity::Header(slot) => cx.facts.header(*slot),
        Identity::Owned(v) => Some(v),
        Identity::None => None,
    })
}

fn resolve_identity<H: Host>(
    plan: &Plan,
    cx: &mut Ctx<'_, H>,
    pending_is_absent: bool,
) -> Result<Identity, Pending> {
    for src in &plan.identity {
        match src {
            IdSource::Header(slot) => {
                if cx.facts.header(*slot).is_some_and(|v| !v.is_empty()) {
                    return Ok(Identity::Header(*slot));
                }
            }
            IdSource::Cookie(name) => {
                if let Some(v) = cx.facts.cookie(name).filter(|v| !v.is_empty()) {
                    return Ok(Identity::Owned(v.to_vec()));
                }
            }
            IdSource::Claim(name) => {
                if let Some(v) = cx.facts.claim(name).as_ref().and_then(|c| c.identity()) {
                    return Ok(Identity::Owned(v.to_vec()));
                }
            }
            IdSource::Body(pointer) => match cx.facts.body_field(pointer) {
                Ok(field) => {
                    if let Some(v) = field.and_then(body::identity) {
                        return Ok(Identity::Owned(v.to_vec()));
                    }
                }
                Err(Pending) if pending_is_absent => {}
                Err(Pending) => return Err(Pending),
            },
            IdSource::Query(name) => {
                if let Some(v) = cx.facts.query(name).filter(|v| !v.is_empty()) {
                    return Ok(Identity::Owned(v.into_owned()));
                }
            }
        }
    }
    let Some(sticky) = &plan.sticky else {
        return Ok(Identity::None);
    };
    if let Some(v) = cx.facts.cookie(sticky.name.as_bytes()).filter(|v| !v.is_empty()) {
        return Ok(Identity::Owned(v.to_vec()));
    }
    // 128 random bits as 32 lower-case hex characters.
    let mut raw = [0u8; 16];
    cx.facts.host.fill_random(&mut raw);
    let mut id = String::with_capacity(32);
    push_hex(&mut id, &raw);
    let secure = cx.facts.header(sticky.scheme_slot) == Some(b"https");
    cx.set_cookie = Some(set_cookie(&sticky.name, &id, sticky.max_age_s, secure));
    Ok(Identity::Owned(id.into_bytes()))
}
