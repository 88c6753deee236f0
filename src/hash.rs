//! The bucketing contract: `murmur3_x86_32(salt + ":" + user_id, seed 0) mod 10000`.
//!
//! Other tools (dashboards, support scripts, the `mmh3` Python package) must be able to compute
//! the same bucket, so this is the one place the hash lives; the golden vectors below are shared
//! with DESIGN.md and with the functional tests, which cross-check against Python's `mmh3`.

/// Number of buckets: one per hundredth of a percent.
pub const BUCKETS: u32 = 10_000;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// MurmurHash3 x86_32 over the concatenation of `parts`, without copying them together.
///
/// Reference: Austin Appleby's MurmurHash3.cpp, `MurmurHash3_x86_32`.
pub fn murmur3_x86_32(parts: &[&[u8]], seed: u32) -> u32 {
    let mut h = seed;
    let mut total: usize = 0;
    // Up to three bytes carried over from one part to the next, so blocks may straddle parts.
    let mut carry = [0u8; 4];
    let mut carried = 0usize;
    for part in parts {
        total += part.len();
        let mut rest: &[u8] = part;
        // Complete a block begun in an earlier part.
        while (1..4).contains(&carried) {
            let Some((&byte, tail)) = rest.split_first() else {
                break;
            };
            if let Some(slot) = carry.get_mut(carried) {
                *slot = byte;
            }
            carried += 1;
            rest = tail;
        }
        if carried == 4 {
            h = mix_block(h, u32::from_le_bytes(carry));
            carried = 0;
        }
        if carried > 0 {
            continue; // this part ended inside the block
        }
        let mut blocks = rest.chunks_exact(4);
        for block in &mut blocks {
            if let Ok(word) = <[u8; 4]>::try_from(block) {
                h = mix_block(h, u32::from_le_bytes(word));
            }
        }
        let tail = blocks.remainder();
        for (slot, byte) in carry.iter_mut().zip(tail) {
            *slot = *byte;
        }
        carried = tail.len();
    }
    if carried > 0 {
        let mut k: u32 = 0;
        for (i, b) in carry.iter().take(carried).enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    // The reference hashes a 32-bit length; inputs here are far below 4 GiB.
    h ^= total as u32;
    fmix32(h)
}

#[inline]
fn mix_block(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The bucket of `user` for a rule whose salt prefix is `salt_colon` (the salt followed by `:`).
pub fn bucket(salt_colon: &[u8], user: &[u8]) -> u32 {
    murmur3_x86_32(&[salt_colon, user], 0) % BUCKETS
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic, clippy::type_complexity)]
    use super::*;

    fn reference(data: &[u8]) -> u32 {
        murmur3::murmur3_32(&mut std::io::Cursor::new(data), 0).unwrap()
    }

    #[test]
    fn golden_buckets_from_design() {
        // Python: mmh3.hash(key, 0, signed=False) % 10000
        let cases: &[(&str, &str, u32)] = &[
            ("release-2.1", "alice", 9862),
            ("release-2.1", "bob", 1649),
            ("ramp", "user-42", 3832),
            ("ramp", "用户-7", 5588),
        ];
        for (salt, user, want) in cases {
            let prefix = format!("{salt}:");
            assert_eq!(bucket(prefix.as_bytes(), user.as_bytes()), *want, "{salt}:{user}");
        }
    }

    #[test]
    fn known_murmur3_vectors() {
        // Published test vectors for MurmurHash3_x86_32.
        assert_eq!(murmur3_x86_32(&[b""], 0), 0);
        assert_eq!(murmur3_x86_32(&[b""], 1), 0x514e_28b7);
        assert_eq!(murmur3_x86_32(&[b"hello"], 0), 0x248b_fa47);
        assert_eq!(murmur3_x86_32(&[b"The quick brown fox jumps over the lazy dog"], 0), 0x2e4f_f723);
    }

    #[test]
    fn split_parts_hash_like_their_concatenation() {
        let data: Vec<u8> = (0u8..=40).map(|b| b.wrapping_mul(37)).collect();
        for len in 0..data.len() {
            let whole = &data[..len];
            let want = reference(whole);
            for a in 0..=len {
                for b in a..=len {
                    let got = murmur3_x86_32(&[&whole[..a], &whole[a..b], &whole[b..]], 0);
                    assert_eq!(got, want, "len {len} cut at {a},{b}");
                }
            }
        }
    }

    #[test]
    fn non_utf8_user_ids_hash_as_raw_bytes() {
        let user = [0xffu8, 0xfe, b'x', 0x80];
        let mut key = b"ramp:".to_vec();
        key.extend_from_slice(&user);
        assert_eq!(bucket(b"ramp:", &user), reference(&key) % BUCKETS);
    }
}
