"""An oracle for graysplit's session pins, written from the format alone (DESIGN.md "Session pins"
and "v2 corrections", as the v2 corrections spec spells it), independent of the filter: it
signs, parses and verifies pin cookies with Python's hmac and hashlib, so the functional tests
can check what Envoy issues and forge what a browser could send.

Format 2 (one cookie per split rule, `<cookie>.<rule>`):
    2:<version>:<began>:<expires>:<mac>
    mac = lower-case hex HMAC-SHA256(key, b"graysplit-pin\\0" b"2\\0" rule b"\\0" version b"\\0"
          began b"\\0" expires b"\\0" u64_le(len(salt)) salt user_id)
The v2 format (one cookie `<cookie>` for every rule):
    1:<rule>:<version>:<expires>:<mac>
    mac = lower-case hex HMAC-SHA256(key, b"graysplit-pin\\0" b"1\\0" rule b"\\0" version b"\\0"
          expires b"\\0" u64_le(len(salt)) salt user_id)
Numbers are decimal Unix seconds with no sign and no leading zero; any other spelling, like
upper-case hex, is not a pin.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

_NUM = r"(0|[1-9][0-9]*)"
_V3 = re.compile(rf"^2:([^:]+):{_NUM}:{_NUM}:([0-9a-f]{{64}})$")
_V2 = re.compile(rf"^1:([^:]+):([^:]+):{_NUM}:([0-9a-f]{{64}})$")


def _b(x: str | bytes) -> bytes:
    return x if isinstance(x, bytes) else x.encode("utf-8")


def _mac(key: str | bytes, fields: list[str | bytes], salt: str | bytes, user: str | bytes) -> str:
    msg = b"graysplit-pin\0" + b"".join(_b(f) + b"\0" for f in fields)
    salt_b = _b(salt)
    msg += struct.pack("<Q", len(salt_b)) + salt_b + _b(user)
    return hmac.new(_b(key), msg, hashlib.sha256).hexdigest()


def sign(key, rule: str, version: str, began: int, expires: int, salt, user) -> str:
    """A format-2 pin value."""
    mac = _mac(key, ["2", rule, version, str(began), str(expires)], salt, user)
    return f"2:{version}:{began}:{expires}:{mac}"


def sign_v2(key, rule: str, version: str, expires: int, salt, user) -> str:
    """A pin value in the v2 format (today's releases issue these, in cookie `<cookie>`)."""
    mac = _mac(key, ["1", rule, version, str(expires)], salt, user)
    return f"1:{rule}:{version}:{expires}:{mac}"


@dataclass(frozen=True)
class Pin:
    version: str
    began: int
    expires: int
    mac: str


def parse(value: str) -> Pin | None:
    """A format-2 value in its canonical spelling, or None."""
    m = _V3.match(value)
    if not m:
        return None
    return Pin(m.group(1), int(m.group(2)), int(m.group(3)), m.group(4))


def verify(value: str, key, rule: str, salt, user) -> Pin | None:
    """The pin, when `value` is a canonical format-2 pin that `key` signed for this rule, salt
    and user (its expiry is not checked here)."""
    p = parse(value)
    if p is None:
        return None
    want = _mac(key, ["2", rule, p.version, str(p.began), str(p.expires)], salt, user)
    return p if hmac.compare_digest(want, p.mac) else None


def verify_v2(value: str, key, rule: str, salt, user) -> tuple[str, int] | None:
    """(version, expires) of a canonical v2-format pin for `rule`, or None."""
    m = _V2.match(value)
    if not m or m.group(1) != rule:
        return None
    want = _mac(key, ["1", rule, m.group(2), m.group(3)], salt, user)
    return (m.group(2), int(m.group(3))) if hmac.compare_digest(want, m.group(4)) else None


@dataclass(frozen=True)
class SetCookie:
    name: str
    value: str
    max_age: int | None
    attrs: tuple[str, ...]    # the attributes after name=value, as written


_SET_COOKIE = re.compile(
    r"^([^=;\s]+)=([^;]*); Path=/; Max-Age=(0|[1-9][0-9]*); HttpOnly; SameSite=Lax(; Secure)?$")


def parse_set_cookie(header: str) -> SetCookie | None:
    """A `Set-Cookie` exactly as graysplit writes it (`<name>=<value>; Path=/; Max-Age=<n>;
    HttpOnly; SameSite=Lax`, `; Secure` on https), or None for any other spelling."""
    m = _SET_COOKIE.match(header)
    if not m:
        return None
    attrs = tuple(a.strip() for a in header.split(";")[1:])
    return SetCookie(m.group(1), m.group(2), int(m.group(3)), attrs)
