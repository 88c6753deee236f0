"""A reference, written from DESIGN.md alone, of what the filter computes for a shadow record
(DESIGN.md "Shadow: the same question to the gray version, answers paired"), for the tests to
hold the filter's `graysplit.similarity`, `graysplit.user_hash`, `*.answer_chars`,
`*.answer_sha256` and `*.text` against.

The similarity: the Jaccard index |A ∩ B| / |A ∪ B| of the two texts' sets of character
3-grams, each text first cut to its first 65536 bytes of UTF-8 (at a character boundary),
lower-cased as Rust's `str::to_lowercase` does, every run of Unicode White_Space collapsed to one
space and both ends trimmed. Characters are Unicode scalar values (Python's str items); a text of
1 or 2 characters is one gram; an empty one has none; two empty texts give 1.0 (one empty and one
not: 0.0).

Where Python's own functions are not DESIGN's definition, this module does not use them:

- White_Space is the exact list of Unicode's PropList.txt ([`WHITE_SPACE`]; unchanged since
  Unicode 6.3, when U+180E left it), which is what Rust's `char::is_whitespace` tests. Python's
  `str.isspace()` / `str.split()` also take U+001C..U+001F (FILE, GROUP, RECORD and UNIT
  SEPARATOR: bidi class B or S), which are not White_Space: "a\\x1fb" is 3 characters here, not
  "a b".
- Lower-casing: Rust's `str::to_lowercase` is the full Unicode lower-case mapping
  (UnicodeData.txt plus SpecialCasing.txt's unconditional entries) with one context rule, the
  Final_Sigma of U+03A3 (Σ becomes ς when a cased letter comes before it and none after it, both
  looked for past case-ignorable characters), and no language-specific rules. CPython's
  `str.lower` implements the same definition (also Final_Sigma, by the same
  `\\p{cased}\\p{case-ignorable}* Σ !(\\p{case-ignorable}*\\p{cased})` test), so for the
  characters both know, they agree: "İ" is "i̇" (i + U+0307) in both, "ΟΔΟΣ" is "οδος" in both.
  What differs is the Unicode version of the tables: the Python of tests/.venv (3.11) has
  Unicode 14.0, Rust 1.95's std has Unicode 17.0 (`char::UNICODE_VERSION`). This module lower-
  cases one character at a time with `str.lower` (context-free for all but Σ), does the
  Final_Sigma test itself, and overlays the Unicode 17.0 facts where 14.0 says otherwise: the
  55 lower-case mappings of capitals added in 16.0 and 17.0 ([`_LOWER_SINCE_14`]), the
  characters that became cased or case-ignorable ([`_CASED_SINCE_14`],
  [`_IGNORABLE_SINCE_14`]), and the two that stopped being so (U+0295 became Lo in 16.0; U+1171E
  AHOM CONSONANT SIGN MEDIAL RA became Mc). With that, every code point lower-cases, and counts
  for Final_Sigma, exactly as in Rust 1.95: checked, when this file was written, over every
  scalar value U+0000..U+10FFFF (its lower-case string, White_Space, and what it is to
  Final_Sigma, seen through `str::to_lowercase` on "AΣc", "AΣcA", "cΣ", "AcΣ") against a build
  on rustc 1.95.0, and `similarity` and `user_hash` bit for bit against similarity.rs and
  record.rs over 18,000 random text pairs (non-ASCII, whitespace runs, texts past 65536 bytes)
  and 6,000 salts and ids. A Rust toolchain with a later Unicode could differ again for
  characters added after 17.0.

The byte cut is on UTF-8 bytes, backed off to a character boundary, before lower-casing (a cut
Σ has no right-hand context past the cut, as in the filter). A Python str holding a lone
surrogate is not a Rust string: every function here refuses one (ValueError).
"""

from __future__ import annotations

import hashlib
import unicodedata
from functools import lru_cache

#: The bytes of each text the similarity reads.
MAX_BYTES = 65536
#: The most of an answer's text a record carries (`primary.text`, `shadow.text`).
TEXT_CAP = 16 * 1024
#: The Unicode version whose facts this module follows (Rust 1.95's `char::UNICODE_VERSION`).
UNICODE_VERSION = (17, 0, 0)

#: Unicode's White_Space property (PropList.txt): 25 code points.
WHITE_SPACE = frozenset(map(chr, [
    *range(0x0009, 0x000E),   # TAB, LF, VT, FF, CR
    0x0020,                   # SPACE
    0x0085,                   # NEXT LINE (NEL)
    0x00A0,                   # NO-BREAK SPACE
    0x1680,                   # OGHAM SPACE MARK
    *range(0x2000, 0x200B),   # EN QUAD .. HAIR SPACE
    0x2028,                   # LINE SEPARATOR
    0x2029,                   # PARAGRAPH SEPARATOR
    0x202F,                   # NARROW NO-BREAK SPACE
    0x205F,                   # MEDIUM MATHEMATICAL SPACE
    0x3000,                   # IDEOGRAPHIC SPACE
]))

# --------------------------------------------------------------------------- Unicode 17.0 facts
# Where Unicode 17.0 (Rust's std) says otherwise than Unicode 14.0 (Python 3.11's unicodedata).

# Capitals added in 16.0 and 17.0, with their lower-case letters (UnicodeData.txt field 13).
_LOWER_SINCE_14: dict[str, str] = {
    chr(0x1C89): chr(0x1C8A),   # CYRILLIC CAPITAL LETTER TJE (16.0)
    chr(0xA7CB): chr(0x0264),   # LATIN CAPITAL LETTER RAMS HORN (16.0)
    chr(0xA7CC): chr(0xA7CD),   # LATIN CAPITAL LETTER S WITH DIAGONAL STROKE (16.0)
    chr(0xA7CE): chr(0xA7CF),   # (17.0)
    chr(0xA7D2): chr(0xA7D3),   # (17.0)
    chr(0xA7D4): chr(0xA7D5),   # (17.0)
    chr(0xA7DA): chr(0xA7DB),   # LATIN CAPITAL LETTER LAMBDA (16.0)
    chr(0xA7DC): chr(0x019B),   # LATIN CAPITAL LETTER LAMBDA WITH STROKE (16.0)
    **{chr(0x10D50 + i): chr(0x10D70 + i) for i in range(22)},   # GARAY (16.0)
    **{chr(0x16EA0 + i): chr(0x16EBB + i) for i in range(25)},   # BERIA ERFE (17.0)
}


def _cps(ranges) -> frozenset[str]:
    return frozenset(chr(c) for lo, hi in ranges for c in range(lo, hi + 1))


# Cased (DerivedCoreProperties.txt) in 17.0, not in 14.0.
_CASED_SINCE_14 = _cps([
    (0x1C89, 0x1C8A), (0xA7CB, 0xA7CF), (0xA7D2, 0xA7D2), (0xA7D4, 0xA7D4), (0xA7DA, 0xA7DC),
    (0x10D50, 0x10D65), (0x10D70, 0x10D85), (0x16EA0, 0x16EB8), (0x16EBB, 0x16ED3),
    (0x1DF25, 0x1DF2A),
])
# Case_Ignorable in 17.0, not in 14.0 (new marks and modifier letters).
_IGNORABLE_SINCE_14 = _cps([
    (0x0897, 0x0897), (0x0ECE, 0x0ECE), (0x1ACF, 0x1ADD), (0x1AE0, 0x1AEB), (0xA7F1, 0xA7F1),
    (0x10D4E, 0x10D4E), (0x10D69, 0x10D6D), (0x10D6F, 0x10D6F), (0x10EC5, 0x10EC5),
    (0x10EFA, 0x10EFF), (0x11241, 0x11241), (0x113BB, 0x113C0), (0x113CE, 0x113CE),
    (0x113D0, 0x113D0), (0x113D2, 0x113D2), (0x113E1, 0x113E2), (0x11B60, 0x11B60),
    (0x11B62, 0x11B64), (0x11B66, 0x11B66), (0x11DD9, 0x11DD9), (0x11F00, 0x11F01),
    (0x11F36, 0x11F3A), (0x11F40, 0x11F40), (0x11F42, 0x11F42), (0x11F5A, 0x11F5A),
    (0x13439, 0x13440), (0x13447, 0x13455), (0x1611E, 0x16129), (0x1612D, 0x1612F),
    (0x16D40, 0x16D42), (0x16D6B, 0x16D6C), (0x16FF2, 0x16FF3), (0x1E030, 0x1E06D),
    (0x1E08F, 0x1E08F), (0x1E4EB, 0x1E4EF), (0x1E5EE, 0x1E5EF), (0x1E6E3, 0x1E6E3),
    (0x1E6E6, 0x1E6E6), (0x1E6EE, 0x1E6EF), (0x1E6F5, 0x1E6F5), (0x1E6FF, 0x1E6FF),
])
# Neither cased nor case-ignorable in 17.0, though 14.0 had them so.
_NEITHER_SINCE_14 = frozenset([
    chr(0x0295),    # LATIN LETTER PHARYNGEAL VOICED FRICATIVE: Ll -> Lo in 16.0 (was cased)
    chr(0x1171E),   # AHOM CONSONANT SIGN MEDIAL RA: Mn -> Mc in 16.0 (was case-ignorable)
])

_CASED, _IGNORABLE, _NEITHER = "cased", "ignorable", "neither"


@lru_cache(maxsize=65536)
def _sigma_class(c: str) -> str:
    """What `c` is to the Final_Sigma test, which skips case-ignorable characters and then asks
    whether the next one is cased: `ignorable` (Case_Ignorable, cased or not), `cased` (Cased and
    not Case_Ignorable), or `neither`.

    Python's unicodedata has neither property, but CPython's `str.lower` applies Final_Sigma
    with both (its _PyUnicode_IsCased / _PyUnicode_IsCaseIgnorable), so its own answer on a Σ
    next to `c` tells them: in "AΣc", Σ stays non-final (σ) only when c is cased and not
    ignorable; in "AΣcA", when c is either."""
    if c in _NEITHER_SINCE_14:
        return _NEITHER
    if c in _IGNORABLE_SINCE_14:
        return _IGNORABLE
    if c in _CASED_SINCE_14:
        return _CASED
    if unicodedata.category(c) == "Cn":
        return _NEITHER   # unassigned in Python's Unicode (and not in the tables above)
    alone = ("AΣ" + c).lower()[1]
    then_cased = ("AΣ" + c + "A").lower()[1]
    if alone == "σ":
        return _CASED
    return _IGNORABLE if then_cased == "σ" else _NEITHER


def _next_is_cased(chars) -> bool:
    """Rust's `case_ignorable_then_cased`: past case-ignorable characters, is the next cased?"""
    for c in chars:
        k = _sigma_class(c)
        if k != _IGNORABLE:
            return k == _CASED
    return False


def _is_final_sigma(text: str, i: int) -> bool:
    before = (text[j] for j in range(i - 1, -1, -1))
    after = (text[j] for j in range(i + 1, len(text)))
    return _next_is_cased(before) and not _next_is_cased(after)


@lru_cache(maxsize=65536)
def _lower_char(c: str) -> str:
    return _LOWER_SINCE_14.get(c) or c.lower()


def _check(text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"a str is expected, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not a Rust string (a lone surrogate at {e.start})") from None


def lower(text: str) -> str:
    """`text` lower-cased as Rust's `str::to_lowercase` (Unicode 17.0)."""
    _check(text)
    return "".join(("ς" if _is_final_sigma(text, i) else "σ") if c == "Σ" else _lower_char(c)
                   for i, c in enumerate(text))


def cut(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` bytes of UTF-8, at a character boundary (the record's
    text cap, and the similarity's 65536 bytes)."""
    _check(text)
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    end = max_bytes
    while end > 0 and (data[end] & 0xC0) == 0x80:   # a continuation byte: inside a character
        end -= 1
    return data[:end].decode("utf-8")


def normalize(text: str) -> str:
    """What the grams are taken from: the first MAX_BYTES bytes, lower-cased, every run of
    White_Space one space, both ends trimmed."""
    words, word = [], []
    for c in lower(cut(text, MAX_BYTES)):
        if c in WHITE_SPACE:
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(c)
    if word:
        words.append("".join(word))
    return " ".join(words)


def grams(text: str) -> set[str]:
    """The set of character 3-grams of `text` (normalized first); a text of 1 or 2 characters
    is one gram, an empty one has none."""
    t = normalize(text)
    if 0 < len(t) < 3:
        return {t}
    return {t[i:i + 3] for i in range(len(t) - 2)}


def similarity(a: str, b: str) -> float:
    """DESIGN's `graysplit.similarity` of answer texts `a` and `b`, in 0.0..1.0, unrounded."""
    ga, gb = grams(a), grams(b)
    if not ga and not gb:
        return 1.0
    return len(ga & gb) / len(ga | gb)


# --------------------------------------------------------------------------- the other attributes

def user_hash(salt: str, user_id: str | bytes) -> str:
    """`graysplit.user_hash`: the first 8 bytes of SHA-256 of salt + ":" + user id, as 16
    lower-case hex digits."""
    uid = user_id.encode("utf-8") if isinstance(user_id, str) else bytes(user_id)
    return hashlib.sha256(salt.encode("utf-8") + b":" + uid).hexdigest()[:16]


def answer_chars(text: str) -> int:
    """`*.answer_chars`: Unicode scalar values of the answer text."""
    _check(text)
    return len(text)


def answer_sha256(text: str) -> str:
    """`*.answer_sha256`: SHA-256 of the answer text's UTF-8, 64 lower-case hex digits."""
    _check(text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def captured_text(text: str) -> str:
    """`*.text` (with `capture_text`): the answer text cut to TEXT_CAP bytes."""
    return cut(text, TEXT_CAP)
