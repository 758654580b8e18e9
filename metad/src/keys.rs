//! Which raft group owns a key.
//!
//! Invariant: the mapping depends only on the key bytes and the group count,
//! so every replica and client agrees; the group count is fixed when a
//! replica's data directory is created.

/// The part of `key` that is hashed: the bytes between the first `{` and
/// the next `}` when both exist and enclose at least one byte (a "hash
/// tag", so related keys can share a group and a batch), else the key.
pub fn hash_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The group of `key` among `groups` (> 0).
pub fn group_of(key: &[u8], groups: u32) -> u32 {
    debug_assert!(groups > 0);
    crc32c::crc32c(hash_part(key)) % groups.max(1)
}

/// The group holding the node registry and the leases.
pub const SYSTEM_GROUP: u32 = 0;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tags_pick_the_hashed_part() {
        assert_eq!(hash_part(b"obj/{bucket1}/a"), b"bucket1");
        assert_eq!(hash_part(b"obj/{}/a"), b"obj/{}/a");
        assert_eq!(hash_part(b"obj/{open"), b"obj/{open");
        assert_eq!(hash_part(b"plain"), b"plain");
    }

    proptest! {
        #[test]
        fn keys_with_one_tag_share_a_group(tag in "[a-z]{1,8}", a in "[a-z/]{0,12}", b in "[a-z/]{0,12}", g in 1u32..64) {
            let ka = format!("{a}{{{tag}}}x");
            let kb = format!("{b}{{{tag}}}y");
            prop_assert_eq!(group_of(ka.as_bytes(), g), group_of(kb.as_bytes(), g));
            prop_assert!(group_of(ka.as_bytes(), g) < g);
        }
    }
}
