//! A header map as the proxy-wasm host hands it over: one buffer in the ABI's pairs format
//! (`u32` count, then a `u32` name length and a `u32` value length per pair, then each name and
//! value followed by a NUL), read in place. Names and values are bytes: a header name that is not
//! UTF-8 is just a name no rule asks for (proxy-wasm 0.2.5's own reader unwraps UTF-8 for names
//! and would trap the VM, DESIGN.md "v2 corrections"). One copy for the whole map, none per
//! header.

use std::ops::Range;

/// A serialized header map and where each pair lies in it.
#[derive(Debug, Clone, Default)]
pub struct HeaderPairs {
    buf: Vec<u8>,
    pairs: Vec<(Range<usize>, Range<usize>)>,
}

impl HeaderPairs {
    /// Reads the pairs format; a buffer that does not hold what its counts say yields the pairs
    /// that it does hold (never a panic).
    pub fn parse(buf: Vec<u8>) -> Self {
        let word = |at: usize| -> Option<usize> {
            let b = buf.get(at..at.checked_add(4)?)?;
            Some(u32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]) as usize)
        };
        let mut pairs = Vec::new();
        let n = word(0).unwrap_or(0);
        let mut at = 4usize.saturating_add(n.saturating_mul(8));
        for i in 0..n {
            let (Some(klen), Some(vlen)) = (word(4 + i * 8), word(8 + i * 8)) else { break };
            let k = at..at.saturating_add(klen);
            let v_at = k.end.saturating_add(1);
            let v = v_at..v_at.saturating_add(vlen);
            if v.end > buf.len() {
                break;
            }
            at = v.end.saturating_add(1);
            pairs.push((k, v));
        }
        HeaderPairs { buf, pairs }
    }

    /// The pairs format of `pairs` (what the host sends; for the fake and the tests).
    pub fn serialize<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
        let n = pairs.clone().into_iter().count();
        let mut out = Vec::new();
        out.extend_from_slice(&(n as u32).to_le_bytes());
        for (k, v) in pairs.clone() {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The `i`th (name, value).
    pub fn get(&self, i: usize) -> Option<(&[u8], &[u8])> {
        let (k, v) = self.pairs.get(i)?;
        Some((self.buf.get(k.clone())?, self.buf.get(v.clone())?))
    }

    /// Every (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        (0..self.pairs.len()).filter_map(|i| self.get(i))
    }

    /// The first value of header `name`.
    pub fn first(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The bytes of names and values, as Envoy counts a header map's size (`byteSize()`).
    pub fn byte_size(&self) -> usize {
        self.pairs.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn pairs_read_back_as_sent_with_any_bytes() {
        let sent: Vec<(&[u8], &[u8])> =
            vec![(b":path", b"/x"), (b"x-\xff\xfe", b"v"), (b"cookie", b"a=\xc3"), (b"empty", b"")];
        let p = HeaderPairs::parse(HeaderPairs::serialize(sent.iter().copied()));
        assert_eq!(p.iter().collect::<Vec<_>>(), sent);
        assert_eq!(p.byte_size(), 5 + 2 + 4 + 1 + 6 + 3 + 5);
        assert!(HeaderPairs::parse(Vec::new()).is_empty());
    }

    #[test]
    fn a_short_or_lying_buffer_never_panics() {
        let whole = HeaderPairs::serialize([(&b"a"[..], &b"1"[..]), (b"bb", b"22")]);
        for cut in 0..whole.len() {
            let p = HeaderPairs::parse(whole[..cut].to_vec());
            assert!(p.len() <= 2);
        }
        let mut lying = whole.clone();
        lying[0] = 0xff; // claims 255 pairs
        let p = HeaderPairs::parse(lying);
        assert!(p.len() <= 2);
        let mut huge = whole;
        huge[4] = 0xff;
        huge[7] = 0xff; // a name longer than the buffer
        assert!(HeaderPairs::parse(huge).is_empty());
    }
}
