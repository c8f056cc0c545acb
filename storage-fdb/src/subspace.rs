//! Where one Keel deployment's keys live in a FoundationDB cluster, and how Keel's keys
//! and ranges map to FoundationDB's. Pure Rust: tested without the client library.

use std::ops::Bound;

use keel_storage::{prefix_successor, KeyRange};

/// The subspace `keel serve --storage fdb` uses unless `--fdb-subspace` names another.
pub const DEFAULT_SUBSPACE: &str = "keel";

/// Longest subspace name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Longest key prefix a subspace adds: the tuple encoding of a name of
/// [`MAX_NAME_BYTES`] (a type byte, the name, a terminating zero). The FoundationDB
/// client is told to accept keys this much longer than `MAX_KEY_BYTES`, so that every
/// Keel key up to the contract's limit fits under any subspace.
pub const MAX_PREFIX_BYTES: usize = MAX_NAME_BYTES + 2;

/// A subspace name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid FoundationDB subspace name {name:?}: use 1 to {MAX_NAME_BYTES} characters from \
     A-Z, a-z, 0-9, '-', '_' and '.'"
)]
pub struct InvalidSubspace {
    /// The name as given.
    pub name: String,
}

/// The key prefix of one subspace. The prefix is the FoundationDB tuple encoding of the
/// name (`\x02name\x00`), the convention of FoundationDB's own layers: because the
/// encoding ends with a terminator, no subspace's range contains another's (`keel` and
/// `keel2` are disjoint), so clearing one subspace never touches a neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subspace {
    name: String,
    prefix: Vec<u8>,
}

impl Subspace {
    /// The subspace called `name`.
    pub fn new(name: &str) -> Result<Subspace, InvalidSubspace> {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(InvalidSubspace {
                name: name.to_string(),
            });
        }
        Ok(Subspace {
            name: name.to_string(),
            prefix: foundationdb_tuple::pack(&(name,)),
        })
    }

    /// The name the operator gave.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bytes every key of this subspace starts with.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The FoundationDB key of Keel's `key`.
    pub fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + key.len());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(key);
        out
    }

    /// Keel's key of a FoundationDB key read from this subspace.
    pub fn strip<'a>(&self, key: &'a [u8]) -> &'a [u8] {
        debug_assert!(key.starts_with(&self.prefix), "key outside the subspace");
        &key[self.prefix.len().min(key.len())..]
    }

    /// The whole subspace as FoundationDB's `[begin, end)`.
    pub fn all(&self) -> (Vec<u8>, Vec<u8>) {
        (self.prefix.clone(), self.end())
    }

    /// `range` as FoundationDB's half-open `[begin, end)` inside the subspace, or `None`
    /// when it holds no key (FoundationDB refuses an inverted range).
    pub fn range(&self, range: &KeyRange) -> Option<(Vec<u8>, Vec<u8>)> {
        // The smallest key after `k` is `k\x00`, which turns an excluded start and an
        // included end into FoundationDB's included begin and excluded end.
        let begin = match &range.start {
            Bound::Included(k) => self.key(k),
            Bound::Excluded(k) => self.key_after(k),
            Bound::Unbounded => self.prefix.clone(),
        };
        let end = match &range.end {
            Bound::Included(k) => self.key_after(k),
            Bound::Excluded(k) => self.key(k),
            Bound::Unbounded => self.end(),
        };
        (begin < end).then_some((begin, end))
    }

    /// `[key, key\x00)`: the one-key range FoundationDB's conflict ranges take.
    pub fn single(&self, key: &[u8]) -> (Vec<u8>, Vec<u8>) {
        (self.key(key), self.key_after(key))
    }

    fn key_after(&self, key: &[u8]) -> Vec<u8> {
        let mut out = self.key(key);
        out.push(0);
        out
    }

    fn end(&self) -> Vec<u8> {
        prefix_successor(&self.prefix).expect("invariant: a tuple-encoded prefix ends in 0x00")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(name: &str) -> Subspace {
        Subspace::new(name).expect("valid name")
    }

    #[test]
    fn prefix_is_the_tuple_encoding_of_the_name() {
        assert_eq!(sub("keel").prefix(), b"\x02keel\x00");
        assert_eq!(sub("keel").key(b"k"), b"\x02keel\x00k");
        assert_eq!(sub("keel").strip(b"\x02keel\x00k"), b"k");
    }

    #[test]
    fn neighbouring_names_have_disjoint_ranges() {
        let (a_begin, a_end) = sub("keel").all();
        let (b_begin, b_end) = sub("keel2").all();
        assert!(a_end <= b_begin || b_end <= a_begin);
        let anything = sub("keel2").key(b"\xff\xff");
        assert!(!(a_begin.as_slice()..a_end.as_slice()).contains(&anything.as_slice()));
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "a b", "ключ", "x/y", &"n".repeat(MAX_NAME_BYTES + 1)] {
            assert!(Subspace::new(name).is_err(), "{name:?} accepted");
        }
        let longest = "n".repeat(MAX_NAME_BYTES);
        assert_eq!(sub(&longest).prefix().len(), MAX_PREFIX_BYTES);
        let message = Subspace::new("a b").expect_err("refused").to_string();
        assert!(message.contains("\"a b\""), "{message}");
    }

    #[test]
    fn ranges_map_to_half_open_ranges_inside_the_subspace() {
        let s = sub("t");
        let p = |k: &[u8]| s.key(k);
        assert_eq!(
            s.range(&KeyRange::new(b"a".to_vec(), b"c".to_vec())),
            Some((p(b"a"), p(b"c")))
        );
        let closed = KeyRange {
            start: Bound::Excluded(b"a".to_vec()),
            end: Bound::Included(b"c".to_vec()),
        };
        assert_eq!(s.range(&closed), Some((p(b"a\x00"), p(b"c\x00"))));
        let everything = KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        };
        assert_eq!(s.range(&everything), Some(s.all()));
        assert_eq!(
            s.range(&KeyRange::prefix(b"\xff")),
            Some((p(b"\xff"), s.all().1)),
            "a prefix without successor runs to the end of the subspace"
        );
        let empty = KeyRange {
            start: Bound::Excluded(b"a".to_vec()),
            end: Bound::Excluded(b"a".to_vec()),
        };
        assert_eq!(s.range(&empty), None);
        assert_eq!(s.range(&KeyRange::new(b"b".to_vec(), b"a".to_vec())), None);
        assert_eq!(s.single(b"k"), (p(b"k"), p(b"k\x00")));
    }
}
