//! Conditional requests: `If-Match`, `If-None-Match`, `If-Modified-Since`
//! and `If-Unmodified-Since` on GET and HEAD, and their
//! `x-amz-copy-source-if-*` forms on CopyObject and UploadPartCopy.
//!
//! Owns the decision only; callers evaluate it against the version they
//! read (so the answer and the bytes belong to the same version).
//!
//! Rules (RFC 7232 section 6, which S3 follows):
//! - `If-Match` present: the ETag must match (`*` matches any object), else
//!   412; `If-Unmodified-Since` is then ignored. Otherwise a modification
//!   after `If-Unmodified-Since` is 412.
//! - `If-None-Match` present: a match (`*` matches any object) is 304 on a
//!   read (412 on a copy source); `If-Modified-Since` is then ignored.
//!   Otherwise no modification after `If-Modified-Since` is 304 (412 on a
//!   copy source).
//! - Times compare at whole seconds (HTTP dates have no finer unit).

use s3s::dto::{ETagCondition, Timestamp};

/// What a request's conditions say about the version read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Proceed,
    /// 304 on GET and HEAD.
    NotModified,
    /// 412.
    PreconditionFailed,
}

/// A request's conditions, times as Unix seconds.
#[derive(Debug, Default, Clone)]
pub struct Conditions {
    pub if_match: Option<ETagCondition>,
    pub if_none_match: Option<ETagCondition>,
    pub if_modified_since: Option<i64>,
    pub if_unmodified_since: Option<i64>,
}

/// Unix seconds of an S3 timestamp.
pub fn unix_secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

/// Whether `c` names `etag` (`*` names any existing object).
pub fn matches(c: &ETagCondition, etag: &str) -> bool {
    match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag,
    }
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none()
            && self.if_none_match.is_none()
            && self.if_modified_since.is_none()
            && self.if_unmodified_since.is_none()
    }

    /// The verdict for an object whose ETag (unquoted) is `etag` and which
    /// was last modified at `modified_millis` (Unix milliseconds).
    pub fn evaluate(&self, etag: &str, modified_millis: u64) -> Verdict {
        let modified = (modified_millis / 1000) as i64;
        match &self.if_match {
            Some(c) if !matches(c, etag) => return Verdict::PreconditionFailed,
            Some(_) => {}
            None => {
                if self.if_unmodified_since.is_some_and(|t| modified > t) {
                    return Verdict::PreconditionFailed;
                }
            }
        }
        match &self.if_none_match {
            Some(c) if matches(c, etag) => return Verdict::NotModified,
            Some(_) => {}
            None => {
                if self.if_modified_since.is_some_and(|t| modified <= t) {
                    return Verdict::NotModified;
                }
            }
        }
        Verdict::Proceed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use s3s::dto::ETag;

    fn tag(s: &str) -> Option<ETagCondition> {
        Some(ETagCondition::ETag(ETag::Strong(s.into())))
    }

    const AT: u64 = 1_700_000_000_500; // .5 s past a whole second
    const SECS: i64 = 1_700_000_000;

    /// The verdict on ETag "abc" modified at AT.
    fn v(
        if_match: Option<ETagCondition>,
        if_none_match: Option<ETagCondition>,
        if_modified_since: Option<i64>,
        if_unmodified_since: Option<i64>,
    ) -> Verdict {
        Conditions {
            if_match,
            if_none_match,
            if_modified_since,
            if_unmodified_since,
        }
        .evaluate("abc", AT)
    }

    #[test]
    fn the_rfc_cases() {
        use Verdict::*;
        let any = || Some(ETagCondition::Any);
        assert_eq!(v(None, None, None, None), Proceed);
        assert_eq!(v(tag("abc"), None, None, None), Proceed);
        assert_eq!(v(tag("other"), None, None, None), PreconditionFailed);
        assert_eq!(v(any(), None, None, None), Proceed);
        assert_eq!(v(None, tag("abc"), None, None), NotModified);
        assert_eq!(v(None, any(), None, None), NotModified);
        assert_eq!(v(None, tag("other"), None, None), Proceed);
        // Whole seconds: modified within the second named is "not after".
        assert_eq!(v(None, None, Some(SECS), None), NotModified);
        assert_eq!(v(None, None, Some(SECS - 1), None), Proceed);
        assert_eq!(v(None, None, None, Some(SECS)), Proceed);
        assert_eq!(v(None, None, None, Some(SECS - 1)), PreconditionFailed);
        // If-Match true overrides a failing If-Unmodified-Since (S3: 200).
        assert_eq!(v(tag("abc"), None, None, Some(SECS - 1)), Proceed);
        // If-None-Match false (no match) overrides If-Modified-Since.
        assert_eq!(v(None, tag("other"), Some(SECS + 10), None), Proceed);
        // A failed If-Match wins over a matching If-None-Match.
        assert_eq!(v(tag("other"), tag("abc"), None, None), PreconditionFailed);
    }

    fn cond() -> impl Strategy<Value = Option<ETagCondition>> {
        prop_oneof![
            Just(None),
            Just(Some(ETagCondition::Any)),
            Just(tag("abc")),
            Just(tag("xyz")),
        ]
    }

    fn time() -> impl Strategy<Value = Option<i64>> {
        prop_oneof![Just(None), (SECS - 3..SECS + 3).prop_map(Some)]
    }

    proptest! {
        /// Invariants over every combination: a precondition that names
        /// this version (If-Match with its ETag, nothing else) never
        /// fails; If-Match naming another ETag always fails with 412;
        /// 304 only ever comes from If-None-Match or If-Modified-Since.
        #[test]
        fn invariants(m in cond(), n in cond(), ms in time(), us in time()) {
            let empty = m.is_none() && n.is_none() && ms.is_none() && us.is_none();
            let v = v(m.clone(), n.clone(), ms, us);
            if m == tag("xyz") {
                prop_assert_eq!(v, Verdict::PreconditionFailed);
            }
            if v == Verdict::NotModified {
                prop_assert!(n.is_some() || ms.is_some());
            }
            if m.is_some() && m != tag("xyz") && n.is_none() && ms.is_none() {
                prop_assert_eq!(v, Verdict::Proceed);
            }
            if empty {
                prop_assert_eq!(v, Verdict::Proceed);
            }
        }
    }
}
