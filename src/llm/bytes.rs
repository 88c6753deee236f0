//! Byte search eight bytes at a time, for the answer readers: the line ends of an event stream
//! and the quotes of an event's JSON. Wasm has 64-bit integers but no vectors in this build, and
//! the searches are short (an event is a few hundred bytes, its quotes a few bytes apart): a
//! word at a time with no setup beats `memchr`'s 32-bit fallback and its per-call dispatch,
//! measured under callgrind in `make bench` (scenario (r)).

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// A high bit in every byte of `w` that is zero (the lowest one exact; those above it may be
/// wrong, so only the lowest is used).
#[inline]
fn zeros(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGH
}

#[inline]
fn word(chunk: &[u8]) -> u64 {
    u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]))
}

/// The index of the first `a` in `hay`.
pub fn find(hay: &[u8], a: u8) -> Option<usize> {
    let pa = ONES.wrapping_mul(u64::from(a));
    let mut words = hay.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let hit = zeros(word(w) ^ pa);
        if hit != 0 {
            return Some(at + (hit.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words.remainder().iter().position(|&b| b == a).map(|i| at + i)
}

/// The index of the first `a` or `b` in `hay`.
pub fn find2(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    let (pa, pb) = (ONES.wrapping_mul(u64::from(a)), ONES.wrapping_mul(u64::from(b)));
    let mut words = hay.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let v = word(w);
        // Each term's lowest flag is exact; the lowest of the two is the first match.
        let (ha, hb) = (zeros(v ^ pa), zeros(v ^ pb));
        let first = match (ha, hb) {
            (0, 0) => None,
            (0, h) | (h, 0) => Some(h.trailing_zeros()),
            (x, y) => Some(x.trailing_zeros().min(y.trailing_zeros())),
        };
        if let Some(bit) = first {
            return Some(at + (bit / 8) as usize);
        }
        at += 8;
    }
    words.remainder().iter().position(|&c| c == a || c == b).map(|i| at + i)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn the_first_match_is_found_wherever_it_is_and_its_neighbours_are_not_taken_for_it() {
        // Bytes one off the searched ones, and with the high bit set, around every position.
        let fillers = [0x21u8, 0x23, 0xa2, 0x0b, 0x0c, 0x8a, 0x00, 0xff];
        for len in 0..40 {
            for at in 0..=len {
                let mut hay: Vec<u8> = (0..len).map(|i| fillers[i % fillers.len()]).collect();
                if at < len {
                    hay[at] = b'"';
                }
                if at + 3 < len {
                    hay[at + 3] = b'\n';
                }
                let want = hay.iter().position(|&b| b == b'"');
                assert_eq!(find(&hay, b'"'), want, "{hay:?}");
                let want2 = hay.iter().position(|&b| b == b'\n' || b == b'\r');
                assert_eq!(find2(&hay, b'\n', b'\r'), want2, "{hay:?}");
                let mut cr = hay.clone();
                if at + 1 < len {
                    cr[at + 1] = b'\r';
                }
                let want3 = cr.iter().position(|&b| b == b'\n' || b == b'\r');
                assert_eq!(find2(&cr, b'\n', b'\r'), want3, "{cr:?}");
            }
        }
    }
}
