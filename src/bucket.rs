//! The bucketing contract: `murmur3_x86_32(salt + ":" + user_id, seed 0) mod 10000`.
//!
//! Other tools (dashboards, support scripts, the `mmh3` Python package) must be able to compute
//! the same bucket, so this is the one place the hash is called; the golden vectors below are
//! shared with DESIGN.md and with the functional tests, which cross-check against Python's
//! `mmh3`. The hash itself is the `murmur3` crate's `murmur3_32` (MurmurHash3_x86_32).

use std::io::Read;

/// Number of buckets: one per hundredth of a percent.
pub const BUCKETS: u32 = 10_000;

/// The bucket of `user` for a rule whose salt prefix is `salt_colon` (the salt followed by `:`),
/// over the bytes as they are (a non-UTF-8 user id included), without copying them together.
pub fn bucket(salt_colon: &[u8], user: &[u8]) -> u32 {
    // Reading from memory cannot fail, so the error arm is never taken.
    murmur3::murmur3_32(&mut salt_colon.chain(user), 0).map_or(0, |h| h % BUCKETS)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_salt_and_id_hash_as_one_key_whatever_their_lengths() {
        // Python: mmh3.hash(b"s:" + id, 0, signed=False) % 10000, ids of 0..=8 bytes, so the
        // salt prefix ends at every offset of a 4-byte block.
        let cases: &[(&[u8], &[u8], u32)] = &[
            (b"s:", b"", 5059),
            (b"s:", b"a", 5380),
            (b"s:", b"ab", 4953),
            (b"s:", b"abc", 9354),
            (b"s:", b"abcd", 6612),
            (b"s:", b"abcde", 9346),
            (b"ramp:", b"\xff\xfe\x00", 6042),
        ];
        for (salt, user, want) in cases {
            assert_eq!(bucket(salt, user), *want, "{salt:?} {user:?}");
        }
    }
}
