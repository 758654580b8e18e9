//! HTTP/1.1 connection hygiene around s3s: which answers must end their
//! keep-alive connection.
//!
//! A request whose body was not (or not wholly) read cannot be followed on
//! its connection: the unread bytes would be taken for the next request.
//! hyper reads a body only when the service asks for it, and answers to
//! `Expect: 100-continue` without `100 Continue` when it never did; found
//! with botocore, whose next request on such a connection waited out its
//! 60 s read timeout. Two cases:
//! - a request that declared a body and got an error (refused before its
//!   body was read: unknown bucket, bad signature, too large…);
//! - an empty body sent with `Expect: 100-continue` (hyper never sends
//!   `100 Continue` for it and leaves the connection unusable).
//!
//! Closing after those answers costs the client one reconnect.

use hyper::header::{
    HeaderMap, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING,
};
use hyper::StatusCode;

/// What a request said of its body, taken before it is handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyShape {
    expects_continue: bool,
    /// Declared length (`None`: none declared).
    length: Option<u64>,
    chunked: bool,
}

impl BodyShape {
    pub fn of(headers: &HeaderMap) -> BodyShape {
        BodyShape {
            expects_continue: headers
                .get(EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
            length: headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok()),
            chunked: headers.contains_key(TRANSFER_ENCODING),
        }
    }

    /// Must the answer with `status` be the connection's last?
    pub fn close_after(&self, status: StatusCode) -> bool {
        let has_body = self.chunked || self.length.is_some_and(|n| n > 0);
        (self.expects_continue && self.length == Some(0)) || (has_body && !status.is_success())
    }
}

/// Marks `headers` of an answer as the connection's last.
pub fn mark_close(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(pairs: &[(&'static str, &'static str)]) -> BodyShape {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        BodyShape::of(&h)
    }

    #[test]
    fn only_answers_that_may_leave_body_bytes_close() {
        let ok = StatusCode::OK;
        let refused = StatusCode::NOT_FOUND;
        // No body: keep the connection, whatever the answer.
        assert!(!shape(&[]).close_after(refused));
        assert!(!shape(&[("content-length", "0")]).close_after(refused));
        // A body read and stored: keep it.
        assert!(!shape(&[("content-length", "5")]).close_after(ok));
        assert!(!shape(&[("content-length", "5"), ("expect", "100-continue")]).close_after(ok));
        // A body that may be unread: close.
        assert!(shape(&[("content-length", "5")]).close_after(refused));
        assert!(shape(&[("transfer-encoding", "chunked")]).close_after(StatusCode::FORBIDDEN));
        // The empty body behind Expect: close, even on success.
        assert!(shape(&[("content-length", "0"), ("expect", "100-Continue")]).close_after(ok));
        // Junk lengths count as no declared body.
        assert!(!shape(&[("content-length", "lots")]).close_after(refused));
    }
}
