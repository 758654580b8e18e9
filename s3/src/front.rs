//! The S3 operations: s3s's `S3` trait over the gateway's client library.
//!
//! Owns: the mapping of each S3 operation onto gateway calls (keys as in
//! [`crate::names`]), permission checks against the signing key's grant,
//! streaming of bodies in both directions with bounded memory, ETag and
//! Content-MD5, and the mapping of gateway errors onto S3 error codes.
//!
//! Invariants:
//! - nothing is stored unless every announced byte arrived and any
//!   Content-MD5 matched (the gateway's put is only finished then);
//! - a GET never mixes two versions: every read after the first names the
//!   version the first one saw (`ifVersion`);
//! - memory is bounded: bodies move in chunks of at most
//!   [`BODY_CHUNK_BYTES`] through channels of [`BODY_CHANNEL_CHUNKS`], and
//!   request bodies in memory take room in a budget of
//!   [`BODY_BYTES_IN_MEMORY_MAX`] before they are read;
//! - every loop over gateway pages is bounded ([`LIST_PAGES_MAX`]).

use crate::backend::Backend;
use crate::conditions::{unix_secs, Conditions, Verdict};
use crate::keys::KeyCache;
use crate::names::{self, ObjectAttrs, Upload};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3Request, S3Response, S3Result, S3};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tessera_auth::Permission;
use tessera_rpc::{GatewayClient, GatewayErrorKind, PutIf};
use tokio::sync::mpsc;

/// Largest single PUT (S3's limit; larger objects use multipart).
pub const PUT_OBJECT_MAX_BYTES: u64 = 5 << 30;
/// Largest completed multipart object (S3's limit).
pub const MULTIPART_OBJECT_MAX_BYTES: u64 = 5 << 40;
/// Smallest part but the last (S3's limit).
pub const PART_MIN_BYTES: u64 = 5 << 20;
/// Bodies up to this size are collected and stored in one gateway call.
pub const PUT_ONE_CALL_MAX_BYTES: u64 = 4 << 20;
/// A GET reads this much in its first call (with the object's description).
pub const GET_FIRST_READ_BYTES: u64 = 4 << 20;
/// Chunks bodies move in.
pub const BODY_CHUNK_BYTES: usize = 1 << 20;
/// Chunks in flight between the two sides of one body.
pub const BODY_CHANNEL_CHUNKS: usize = 4;
/// Request body bytes held in memory at once (collected bodies and the
/// chunks in flight of streamed ones); more requests wait for room.
/// Answers are bounded by the job limit instead (512 × ≤ 8 MiB).
pub const BODY_BYTES_IN_MEMORY_MAX: usize = 1 << 30;
/// The unit the body budget is counted in.
pub const BODY_BUDGET_UNIT_BYTES: usize = 64 << 10;
/// Gateway list pages one S3 list may read (a delimiter skips groups).
pub const LIST_PAGES_MAX: usize = 64;
/// Keys (parts, uploads) one S3 list returns at most (S3's limit).
pub const LIST_KEYS_MAX: i32 = 1000;
/// How long a bucket seen to exist is trusted without asking again.
pub const BUCKET_CACHE_TTL: Duration = Duration::from_secs(5);
/// Items asked of the gateway per list page.
pub const LIST_PAGE_ITEMS: u32 = 1000;
/// Buckets one ListBuckets returns at most.
pub const BUCKETS_LISTED_MAX: u32 = 10_000;
/// Uploads in progress one ListMultipartUploads considers per bucket (a
/// bucket with more lists only the first this many by upload id).
pub const UPLOADS_LISTED_MAX: u32 = 10_000;
/// Objects per DeleteObjects (S3's limit).
pub const DELETE_OBJECTS_MAX: usize = 1000;
/// Completions of more than this many bytes answer at once and send
/// whitespace until done (s3s's keep-alive), so clients do not time out.
pub const COMPLETE_KEEPALIVE_MIN_BYTES: u64 = 256 << 20;

/// The S3 front.
#[derive(Clone)]
pub struct Front {
    backend: Backend,
    /// `None` on an --insecure front: every request is allowed.
    keys: Option<KeyCache>,
    buckets: Arc<Mutex<HashMap<String, Instant>>>,
    /// Bytes of request bodies in memory, in [`BODY_BUDGET_UNIT_BYTES`].
    body_budget: Arc<tokio::sync::Semaphore>,
}

type GwResult<T> = Result<T, tessera_rpc::Error>;

/// Maps a gateway error onto the S3 error a client understands.
fn gw_err(e: tessera_rpc::Error) -> S3Error {
    use GatewayErrorKind as K;
    match &e {
        tessera_rpc::Error::Gateway { kind, message, .. } => match kind {
            K::NotFound => s3_error!(NoSuchKey, "{message}"),
            K::InvalidArgument => s3_error!(InvalidArgument, "{message}"),
            K::TooLarge => s3_error!(EntityTooLarge, "{message}"),
            K::Unavailable | K::InsufficientNodes => {
                s3_error!(ServiceUnavailable, "{message}")
            }
            K::PreconditionFailed => s3_error!(PreconditionFailed, "{message}"),
            K::Conflict => s3_error!(SlowDown, "{message}"),
            K::Unauthenticated | K::PermissionDenied => s3_error!(AccessDenied, "{message}"),
            K::DataLoss | K::Internal => s3_error!(InternalError, "{message}"),
        },
        tessera_rpc::Error::Invalid(m) => s3_error!(InvalidRequest, "{m}"),
        _ => s3_error!(ServiceUnavailable, "the gateway is unreachable: {e}"),
    }
}

fn stopped(_: crate::backend::Stopped) -> S3Error {
    s3_error!(ServiceUnavailable, "the gateway connection thread stopped")
}

/// A conditional write that did not hold.
fn is_precondition_failed(e: &tessera_rpc::Error) -> bool {
    matches!(
        e,
        tessera_rpc::Error::Gateway {
            kind: GatewayErrorKind::PreconditionFailed,
            ..
        }
    )
}

fn is_not_found(e: &tessera_rpc::Error) -> bool {
    matches!(
        e,
        tessera_rpc::Error::Gateway {
            kind: GatewayErrorKind::NotFound,
            ..
        }
    )
}

fn timestamp(unix_millis: u64) -> Timestamp {
    Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_millis(unix_millis))
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn etag_of(attrs: &ObjectAttrs, version_id: &[u8]) -> ETag {
    if attrs.etag.is_empty() {
        // Stored through the Cap'n Proto API: no MD5 known; the version id
        // still changes with every write, which is what an ETag promises.
        ETag::Strong(names::hex(version_id))
    } else {
        ETag::Strong(attrs.etag.clone())
    }
}

/// Enforces `c` on the version described by `info` (and its attrs `a`):
/// 304 on a read, 412 when a precondition fails or (`copy`) when a copy
/// source's condition fails either way.
fn enforce(
    c: &Conditions,
    a: &ObjectAttrs,
    info: &tessera_rpc::gateway::ObjectInfo,
    copy: bool,
) -> S3Result<()> {
    if c.is_empty() {
        return Ok(());
    }
    let etag = etag_of(a, &info.version_id);
    match c.evaluate(etag.value(), info.created_unix_millis) {
        Verdict::Proceed => Ok(()),
        Verdict::NotModified if !copy => {
            // A 304 carries the validators a cache refreshes its copy with.
            let mut e = s3_error!(
                NotModified,
                "the object has not changed (ETag {:?})",
                etag.value()
            );
            let mut h = hyper::HeaderMap::new();
            if let Ok(v) = etag.to_http_header() {
                h.insert(hyper::header::ETAG, v);
            }
            let mut date = Vec::new();
            if timestamp(info.created_unix_millis)
                .format(TimestampFormat::HttpDate, &mut date)
                .is_ok()
            {
                if let Ok(v) = hyper::header::HeaderValue::from_bytes(&date) {
                    h.insert(hyper::header::LAST_MODIFIED, v);
                }
            }
            e.set_headers(h);
            Err(e)
        }
        _ => Err(s3_error!(
            PreconditionFailed,
            "at least one of the preconditions you specified did not hold for version with ETag {:?}",
            etag.value()
        )),
    }
}

/// The four conditions of an input: `conditions!(i)` reads `if_match` …
/// `if_unmodified_since`; `conditions!(i, copy_source_)` their
/// `copy_source_if_*` forms.
macro_rules! conditions {
    ($i:expr) => {
        conditions!(@ $i, if_match, if_none_match, if_modified_since, if_unmodified_since)
    };
    ($i:expr, copy_source_) => {
        conditions!(@ $i, copy_source_if_match, copy_source_if_none_match,
            copy_source_if_modified_since, copy_source_if_unmodified_since)
    };
    (@ $i:expr, $m:ident, $n:ident, $ms:ident, $us:ident) => {
        Conditions {
            if_match: $i.$m.clone(),
            if_none_match: $i.$n.clone(),
            if_modified_since: $i.$ms.as_ref().map(unix_secs),
            if_unmodified_since: $i.$us.as_ref().map(unix_secs),
        }
    };
}

fn obj_key(bucket: &str, key: &str) -> S3Result<String> {
    names::object_key(bucket, key).ok_or_else(|| {
        s3_error!(
            KeyTooLongError,
            "keys may be 1..={} bytes including the bucket name and a slash, without NUL",
            names::GATEWAY_KEY_MAX_BYTES
        )
    })
}

/// Checks a Content-MD5 header against the MD5 of what arrived.
fn check_md5(header: Option<&str>, digest: &[u8]) -> S3Result<()> {
    let Some(h) = header else { return Ok(()) };
    use base64::Engine;
    let want = base64::engine::general_purpose::STANDARD
        .decode(h.trim())
        .map_err(|_| s3_error!(InvalidDigest, "Content-MD5 is not base64"))?;
    if want.len() != 16 {
        return Err(s3_error!(InvalidDigest, "Content-MD5 is not 16 bytes"));
    }
    if want != digest {
        return Err(s3_error!(
            BadDigest,
            "the Content-MD5 you gave does not match what arrived; nothing was stored"
        ));
    }
    Ok(())
}

/// The body's length, refused above `max`.
fn body_len(content_length: Option<i64>, body: &Option<StreamingBlob>, max: u64) -> S3Result<u64> {
    let len = match content_length {
        Some(n) if n >= 0 => n as u64,
        Some(_) => return Err(s3_error!(InvalidArgument, "a negative Content-Length")),
        None => match body
            .as_ref()
            .map(|b| s3s::stream::ByteStream::remaining_length(b).exact())
        {
            Some(Some(n)) => n as u64,
            None => 0,
            Some(None) => {
                return Err(s3_error!(
                    MissingContentLength,
                    "send Content-Length (or x-amz-decoded-content-length with aws-chunked)"
                ))
            }
        },
    };
    if len > max {
        return Err(s3_error!(
            EntityTooLarge,
            "{len} bytes; one request may carry at most {max} (use multipart upload)"
        ));
    }
    Ok(len)
}

/// Headers of a new object, from any input that carries them (put,
/// copy with REPLACE, multipart start): the same field names in each.
macro_rules! attrs_from {
    ($i:expr) => {
        ObjectAttrs {
            etag: String::new(),
            content_type: $i.content_type.clone(),
            content_encoding: $i.content_encoding.clone(),
            content_disposition: $i.content_disposition.clone(),
            cache_control: $i.cache_control.clone(),
            content_language: $i.content_language.clone(),
            metadata: $i
                .metadata
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            parts: 0,
        }
    };
}

/// The response headers HEAD and GET share, as a literal of `$out` with
/// the `extra` fields.
macro_rules! object_headers {
    ($out:ident, $a:expr, $info:expr, { $($field:ident: $val:expr),* $(,)? }) => {
        $out {
            e_tag: Some(etag_of(&$a, &$info.version_id)),
            last_modified: Some(timestamp($info.created_unix_millis)),
            content_type: $a.content_type.clone(),
            content_encoding: $a.content_encoding.clone(),
            content_disposition: $a.content_disposition.clone(),
            cache_control: $a.cache_control.clone(),
            content_language: $a.content_language.clone(),
            metadata: (!$a.metadata.is_empty()).then(|| $a.metadata.clone().into_iter().collect()),
            parts_count: ($a.parts > 0).then_some($a.parts as i32),
            accept_ranges: Some("bytes".into()),
            $($field: $val,)*
            ..Default::default()
        }
    };
}

fn encode_attrs(a: &ObjectAttrs) -> S3Result<Vec<u8>> {
    a.encode().map_err(|m| s3_error!(MetadataTooLarge, "{m}"))
}

/// Copies bytes `span` of version `version` of `from` to the open put
/// `w`, hashing them into `md5`.
async fn copy_into(
    gw: &GatewayClient,
    from: &str,
    version: &[u8],
    span: std::ops::Range<u64>,
    w: &mut tessera_rpc::gateway::PutStream<'_>,
    mut md5: Option<&mut Md5>,
) -> GwResult<()> {
    let (mut off, size) = (span.start, span.end);
    while off < size {
        let n = (size - off).min(GET_FIRST_READ_BYTES);
        let (data, _) = gw.get_range_info(from, off, n, version).await?;
        if data.is_empty() {
            return Err(tessera_rpc::Error::Invalid(format!(
                "{from} ended at {off} of {size} bytes while being copied"
            )));
        }
        if let Some(h) = md5.as_mut() {
            h.update(&data);
        }
        w.write(&data).await?;
        off += data.len() as u64;
    }
    Ok(())
}

/// Stores bytes `span` of version `version` of `src` as `dst` with `attrs`
/// (their ETag set to the copied bytes' MD5); returns (ETag, creation time).
async fn copy_object_bytes(
    gw: &GatewayClient,
    src: &str,
    version: &[u8],
    span: std::ops::Range<u64>,
    dst: &str,
    mut attrs: ObjectAttrs,
) -> GwResult<(String, u64)> {
    let mut md5 = Md5::new();
    let mut w = gw.put_open(dst, span.end - span.start).await?;
    copy_into(gw, src, version, span, &mut w, Some(&mut md5)).await?;
    attrs.etag = names::hex(&md5.finalize());
    attrs.parts = 0;
    let a = attrs.encode().map_err(tessera_rpc::Error::Invalid)?;
    let (out, _) = w.finish(&a).await?;
    Ok((attrs.etag, out.created_unix_millis))
}

impl Front {
    pub fn new(backend: Backend, keys: Option<KeyCache>) -> Self {
        Front {
            backend,
            keys,
            buckets: Arc::new(Mutex::new(HashMap::new())),
            body_budget: Arc::new(tokio::sync::Semaphore::new(
                BODY_BYTES_IN_MEMORY_MAX / BODY_BUDGET_UNIT_BYTES,
            )),
        }
    }

    /// Runs a gateway job; maps both failures.
    async fn gw<T, F, Fut>(&self, f: F) -> S3Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Rc<GatewayClient>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = GwResult<T>> + 'static,
    {
        self.backend.run(f).await.map_err(stopped)?.map_err(gw_err)
    }

    /// The access key of the request after checking it may do `need` on
    /// `gw_key` ("" on an --insecure front).
    fn allow<T>(&self, req: &S3Request<T>, need: Permission, gw_key: &str) -> S3Result<String> {
        let Some(keys) = &self.keys else {
            return Ok(String::new());
        };
        let Some(c) = &req.credentials else {
            return Err(s3_error!(
                AccessDenied,
                "sign the request with an access key"
            ));
        };
        match keys.grant(&c.access_key) {
            Some(g) if g.allows(need, gw_key) => Ok(c.access_key.clone()),
            Some(g) => Err(s3_error!(
                AccessDenied,
                "access key {} may {} keys under {:?}; this request needs {} on {gw_key:?}",
                c.access_key,
                g.permissions,
                g.prefix,
                need.name()
            )),
            None => Err(s3_error!(AccessDenied, "unknown access key")),
        }
    }

    fn is_admin<T>(&self, req: &S3Request<T>) -> bool {
        match (&self.keys, &req.credentials) {
            (None, _) => true,
            (Some(k), Some(c)) => k
                .grant(&c.access_key)
                .is_some_and(|g| g.permissions.admin && g.prefix.is_empty()),
            _ => false,
        }
    }

    /// NoSuchBucket unless the bucket's marker exists.
    async fn bucket_exists(&self, bucket: &str) -> S3Result<()> {
        {
            let b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            if b.get(bucket)
                .is_some_and(|at| at.elapsed() < BUCKET_CACHE_TTL)
            {
                return Ok(());
            }
        }
        let marker = names::bucket_marker(bucket);
        let r = self
            .backend
            .run(move |gw| async move { gw.stat(&marker).await })
            .await
            .map_err(stopped)?;
        match r {
            Ok(_) => {
                self.buckets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(bucket.to_string(), Instant::now());
                Ok(())
            }
            Err(e) if is_not_found(&e) => Err(s3_error!(
                NoSuchBucket,
                "no bucket {bucket:?}; create it first"
            )),
            Err(e) => Err(gw_err(e)),
        }
    }

    /// Stores `body` (exactly `len` bytes) under `gw_key` with `attrs`
    /// (their ETag set here); returns the ETag. Nothing is stored unless
    /// every byte arrived and `content_md5` (if any) matches.
    /// A copy's source: its description and attributes, after its
    /// `x-amz-copy-source-if-*` conditions held for that version (which the
    /// caller then copies, pinned).
    async fn judged_source(
        &self,
        src: &str,
        c: &Conditions,
    ) -> S3Result<(tessera_rpc::gateway::ObjectInfo, ObjectAttrs)> {
        let k = src.to_string();
        let info = self.gw(move |gw| async move { gw.stat(&k).await }).await?;
        let attrs = ObjectAttrs::parse(&info.attrs);
        enforce(c, &attrs, &info, true)?;
        Ok((info, attrs))
    }

    /// The gateway precondition of a write's If-Match / If-None-Match
    /// (S3 takes only `*` in If-None-Match on writes). If-Match is judged
    /// on the current version now, and that version is what the gateway's
    /// commit then requires: a write in between makes this one fail.
    async fn write_condition(
        &self,
        gw_key: &str,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
    ) -> S3Result<PutIf> {
        match (if_match, if_none_match) {
            (None, None) => Ok(PutIf::Always),
            (None, Some(ETagCondition::Any)) => Ok(PutIf::Absent),
            (None, Some(_)) => Err(s3_error!(
                NotImplemented,
                "If-None-Match on a write takes only \"*\" (store only if no object exists)"
            )),
            (Some(m), None) => {
                let k = gw_key.to_string();
                let info = self.gw(move |gw| async move { gw.stat(&k).await }).await?;
                let etag = etag_of(&ObjectAttrs::parse(&info.attrs), &info.version_id);
                if !crate::conditions::matches(m, etag.value()) {
                    return Err(s3_error!(
                        PreconditionFailed,
                        "If-Match: the object's ETag is {:?}",
                        etag.value()
                    ));
                }
                Ok(PutIf::Version(info.version_id))
            }
            (Some(_), Some(_)) => Err(s3_error!(
                InvalidArgument,
                "If-Match and If-None-Match exclude each other on a write"
            )),
        }
    }

    async fn store_body(
        &self,
        gw_key: String,
        len: u64,
        body: Option<StreamingBlob>,
        content_md5: Option<String>,
        mut attrs: ObjectAttrs,
        cond: PutIf,
    ) -> S3Result<String> {
        // Memory for this body (all of a collected one; the chunks in
        // flight of a streamed one) before a byte of it is read: with 4096
        // connections, bodies must wait here, not pile up.
        let need = if len <= PUT_ONE_CALL_MAX_BYTES {
            len as usize
        } else {
            (BODY_CHANNEL_CHUNKS + 2) * BODY_CHUNK_BYTES
        };
        let _held = self
            .body_budget
            .clone()
            .acquire_many_owned(need.div_ceil(BODY_BUDGET_UNIT_BYTES).max(1) as u32)
            .await
            .map_err(|_| s3_error!(ServiceUnavailable, "the front is stopping"))?;
        let mut body = body;
        if len <= PUT_ONE_CALL_MAX_BYTES {
            let mut data = Vec::with_capacity(len as usize);
            if let Some(b) = body.as_mut() {
                while let Some(chunk) = b.next().await {
                    let chunk =
                        chunk.map_err(|e| s3_error!(IncompleteBody, "reading the body: {e}"))?;
                    if data.len() + chunk.len() > len as usize {
                        return Err(s3_error!(
                            IncompleteBody,
                            "the body is longer than Content-Length"
                        ));
                    }
                    data.extend_from_slice(&chunk);
                }
            }
            if data.len() as u64 != len {
                return Err(s3_error!(
                    IncompleteBody,
                    "{} of the {len} bytes announced arrived; nothing was stored",
                    data.len()
                ));
            }
            let digest = Md5::digest(&data);
            check_md5(content_md5.as_deref(), &digest)?;
            attrs.etag = names::hex(&digest);
            let a = encode_attrs(&attrs)?;
            self.gw(move |gw| async move { gw.put_if(&gw_key, &data, &a, &cond).await })
                .await?;
            return Ok(attrs.etag);
        }
        enum Msg {
            Data(Bytes),
            Finish(Vec<u8>),
        }
        let (tx, mut rx) = mpsc::channel::<Msg>(BODY_CHANNEL_CHUNKS);
        let writer = self.backend.run(move |gw| async move {
            let mut w = gw.put_open_if(&gw_key, len, &cond).await?;
            loop {
                match rx.recv().await {
                    Some(Msg::Data(b)) => w.write(&b).await?,
                    Some(Msg::Finish(a)) => return w.finish(&a).await.map(Some),
                    // The front gave up: dropping the put stores nothing.
                    None => return Ok(None),
                }
            }
        });
        let feeder = async move {
            let mut md5 = Md5::new();
            let mut got = 0u64;
            let mut buf = BytesMut::with_capacity(BODY_CHUNK_BYTES);
            let Some(b) = body.as_mut() else {
                return Err(s3_error!(IncompleteBody, "no body"));
            };
            while let Some(chunk) = b.next().await {
                let chunk =
                    chunk.map_err(|e| s3_error!(IncompleteBody, "reading the body: {e}"))?;
                got += chunk.len() as u64;
                if got > len {
                    return Err(s3_error!(
                        IncompleteBody,
                        "the body is longer than Content-Length"
                    ));
                }
                md5.update(&chunk);
                buf.extend_from_slice(&chunk);
                if buf.len() >= BODY_CHUNK_BYTES
                    && tx.send(Msg::Data(buf.split().freeze())).await.is_err()
                {
                    return Ok(None); // the writer failed; its error says why
                }
            }
            if got != len {
                return Err(s3_error!(
                    IncompleteBody,
                    "{got} of the {len} bytes announced arrived; nothing was stored"
                ));
            }
            if !buf.is_empty() && tx.send(Msg::Data(buf.split().freeze())).await.is_err() {
                return Ok(None);
            }
            let digest = md5.finalize();
            check_md5(content_md5.as_deref(), &digest)?;
            attrs.etag = names::hex(&digest);
            let a = encode_attrs(&attrs)?;
            if tx.send(Msg::Finish(a)).await.is_err() {
                return Ok(None);
            }
            Ok(Some(attrs.etag))
        };
        let (written, fed) = tokio::join!(writer, feeder);
        // A feeder error drops the channel first, so the writer stores nothing.
        let fed = fed?;
        let written = written.map_err(stopped)?.map_err(gw_err)?;
        match (written, fed) {
            (Some(_), Some(etag)) => Ok(etag),
            _ => Err(s3_error!(
                InternalError,
                "the upload ended without being stored"
            )),
        }
    }

    /// A streamed body of bytes `[off, off + len)` of version `version`,
    /// `first` already read.
    fn stream_rest(
        &self,
        gw_key: String,
        first: Vec<u8>,
        off: u64,
        len: u64,
        version: Vec<u8>,
    ) -> StreamingBlob {
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(BODY_CHANNEL_CHUNKS);
        let backend = self.backend.clone();
        tokio::spawn(async move {
            if !first.is_empty() && tx.send(Ok(Bytes::from(first))).await.is_err() {
                return;
            }
            if len == 0 {
                return;
            }
            let txc = tx.clone();
            let r = backend
                .run(move |gw| async move {
                    gw.get_chunks(&gw_key, off, len, &version, move |chunk| {
                        let tx = txc.clone();
                        async move {
                            tx.send(Ok(Bytes::from(chunk)))
                                .await
                                .map_err(|_| "the S3 client went away".to_string())
                        }
                    })
                    .await
                })
                .await;
            let err = match r {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            // Ends the body with an error: the client sees a cut response,
            // never wrong bytes.
            let _ = tx.send(Err(std::io::Error::other(err))).await;
        });
        StreamingBlob::wrap(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    async fn read_upload(&self, bucket: &str, upload_id: &str) -> S3Result<Upload> {
        if !names::check_upload_id(upload_id) {
            return Err(s3_error!(NoSuchUpload, "no upload {upload_id:?}"));
        }
        let rec = names::upload_record(bucket, upload_id);
        let r = self
            .backend
            .run(move |gw| async move { gw.get(&rec).await })
            .await
            .map_err(stopped)?;
        match r {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| s3_error!(InternalError, "upload record {upload_id} is damaged: {e}")),
            Err(e) if is_not_found(&e) => Err(s3_error!(
                NoSuchUpload,
                "no upload {upload_id:?}: it was completed, aborted or never started"
            )),
            Err(e) => Err(gw_err(e)),
        }
    }

    /// The upload, after checking it is for `bucket`/`key` and that the
    /// caller started it (or is an admin).
    async fn owned_upload<T>(
        &self,
        req: &S3Request<T>,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> S3Result<Upload> {
        let u = self.read_upload(bucket, upload_id).await?;
        if u.bucket != bucket || u.key != key {
            return Err(s3_error!(
                NoSuchUpload,
                "upload {upload_id:?} is for another object"
            ));
        }
        let caller = req
            .credentials
            .as_ref()
            .map(|c| c.access_key.as_str())
            .unwrap_or("");
        if u.owner != caller && !self.is_admin(req) {
            return Err(s3_error!(
                AccessDenied,
                "upload {upload_id:?} was started by another access key"
            ));
        }
        Ok(u)
    }

    /// The parts stored for an upload: (part number, size, etag, version).
    async fn parts_of(&self, upload_id: &str) -> S3Result<Vec<(i32, u64, String, Vec<u8>)>> {
        let prefix = names::parts_prefix(upload_id);
        let items = self
            .gw(move |gw| async move { gw.list(&prefix, "", names::PART_NUMBER_MAX as u32).await })
            .await?
            .0;
        let mut out = Vec::with_capacity(items.len());
        for i in items {
            let n: i32 = i
                .key
                .rsplit('/')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if n < 1 {
                continue;
            }
            let a = ObjectAttrs::parse(&i.attrs);
            out.push((n, i.size, a.etag, i.version_id));
        }
        Ok(out)
    }

    /// Deletes `keys` (best effort: the healer's garbage pass is the
    /// backstop for shards, but records are ours to remove).
    async fn delete_all(&self, keys: Vec<String>) {
        let _ = self
            .backend
            .run(move |gw| async move {
                for k in keys {
                    if let Err(e) = gw.delete(&k).await {
                        tracing::warn!(key = %k, error = %e, "could not delete a multipart leftover");
                    }
                }
            })
            .await;
    }

    /// Lists bucket `bucket` under `prefix` after `start_after`, at most
    /// `max_keys` names (keys, and common prefixes when `delimiter` is
    /// given); `next` is where a following page starts (after it).
    async fn list_core<T>(
        &self,
        req: &S3Request<T>,
        bucket: &str,
        prefix: Option<String>,
        delimiter: Option<String>,
        start_after: String,
        max_keys: Option<i32>,
    ) -> S3Result<Listing> {
        let base = names::bucket_prefix(bucket);
        let prefix = prefix.unwrap_or_default();
        self.allow(req, Permission::Read, &format!("{base}{prefix}"))?;
        self.bucket_exists(bucket).await?;
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let max_keys = max_keys.unwrap_or(LIST_KEYS_MAX).clamp(0, LIST_KEYS_MAX) as usize;
        let (b2, p2, d2) = (base.clone(), prefix.clone(), delimiter.clone());
        let (contents, prefixes, next) = self
            .gw(move |gw| async move {
                let (base, prefix, delimiter) = (b2, p2, d2);
                let mut contents = Vec::new();
                let mut prefixes: Vec<String> = Vec::new();
                let mut after = if start_after.is_empty() {
                    String::new()
                } else {
                    format!("{base}{start_after}")
                };
                let mut next = None;
                if max_keys == 0 {
                    return Ok((contents, prefixes, next));
                }
                'pages: for _ in 0..LIST_PAGES_MAX {
                    let (items, more) = gw
                        .list(&format!("{base}{prefix}"), &after, LIST_PAGE_ITEMS)
                        .await?;
                    let n = items.len();
                    for (idx, it) in items.into_iter().enumerate() {
                        // The gateway's answer is input: a key outside the
                        // asked prefix is an error, never a slice panic.
                        let Some(rest) = it
                            .key
                            .strip_prefix(base.as_str())
                            .and_then(|r| r.strip_prefix(prefix.as_str()))
                        else {
                            return Err(tessera_rpc::Error::Invalid(format!(
                                "the gateway listed {:?} for prefix {base}{prefix}; report this",
                                it.key
                            )));
                        };
                        let name = format!("{prefix}{rest}");
                        after = it.key.clone();
                        if let Some(d) = &delimiter {
                            if let Some(at) = rest.find(d.as_str()) {
                                let cp = format!("{prefix}{}", &rest[..at + d.len()]);
                                // Once per group, and never again for the
                                // group a marker or token ended on.
                                if prefixes.last() == Some(&cp) || cp <= start_after {
                                    after = format!("{base}{cp}\u{10FFFF}");
                                    continue;
                                }
                                prefixes.push(cp.clone());
                                // Skip the rest of this group.
                                after = format!("{base}{cp}\u{10FFFF}");
                                if contents.len() + prefixes.len() == max_keys {
                                    if more || idx + 1 < n {
                                        next = Some(cp);
                                    }
                                    break 'pages;
                                }
                                continue;
                            }
                        }
                        contents.push(it);
                        if contents.len() + prefixes.len() == max_keys {
                            if more || idx + 1 < n {
                                next = Some(name);
                            }
                            break 'pages;
                        }
                    }
                    if !more {
                        break;
                    }
                    if n == 0 {
                        break;
                    }
                    next = Some(
                        after
                            .strip_prefix(base.as_str())
                            .unwrap_or_default()
                            .trim_end_matches('\u{10FFFF}')
                            .to_string(),
                    );
                }
                Ok((contents, prefixes, next))
            })
            .await?;
        let objects: Vec<Object> = contents
            .iter()
            .map(|o| {
                let a = ObjectAttrs::parse(&o.attrs);
                Object {
                    key: Some(
                        o.key
                            .strip_prefix(base.as_str())
                            .unwrap_or(&o.key)
                            .to_string(),
                    ),
                    size: Some(o.size as i64),
                    e_tag: Some(etag_of(&a, &o.version_id)),
                    last_modified: Some(timestamp(o.created_unix_millis)),
                    storage_class: Some(ObjectStorageClass::from_static(
                        ObjectStorageClass::STANDARD,
                    )),
                    ..Default::default()
                }
            })
            .collect();
        Ok(Listing {
            objects,
            prefixes: prefixes
                .into_iter()
                .map(|p| CommonPrefix { prefix: Some(p) })
                .collect(),
            next,
            prefix,
            delimiter,
            max_keys: max_keys as i32,
        })
    }

    /// (source bucket, source gateway key) of a copy into `bucket`/`key`,
    /// after checking the caller may read the one and write the other.
    fn copy_keys<T>(
        &self,
        req: &S3Request<T>,
        source: &CopySource,
        bucket: &str,
        key: &str,
    ) -> S3Result<(String, String)> {
        let CopySource::Bucket {
            bucket: sb,
            key: sk,
            ..
        } = source
        else {
            return Err(s3_error!(NotImplemented, "copying from an access point"));
        };
        let src = obj_key(sb, sk)?;
        self.allow(req, Permission::Read, &src)?;
        self.allow(req, Permission::Write, &obj_key(bucket, key)?)?;
        Ok((sb.to_string(), src))
    }
}

/// One page of a listing, for ListObjects and ListObjectsV2.
struct Listing {
    objects: Vec<Object>,
    prefixes: Vec<CommonPrefix>,
    next: Option<String>,
    prefix: String,
    delimiter: Option<String>,
    max_keys: i32,
}

fn check_part_number(n: i32) -> S3Result<()> {
    if !(1..=names::PART_NUMBER_MAX).contains(&n) {
        return Err(s3_error!(
            InvalidArgument,
            "part numbers are 1..={}",
            names::PART_NUMBER_MAX
        ));
    }
    Ok(())
}

fn strip_quotes(s: &str) -> &str {
    s.trim_matches('"')
}

#[async_trait::async_trait]
impl S3 for Front {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket.clone();
        let owner = self.allow(&req, Permission::Write, &names::bucket_prefix(&bucket))?;
        let marker = names::bucket_marker(&bucket);
        let body =
            serde_json::json!({ "owner": owner, "created_unix_millis": now_millis() }).to_string();
        // Create-only: of two racing creates exactly one makes the bucket.
        let existed = self
            .gw(move |gw| async move {
                match gw
                    .put_if(&marker, body.as_bytes(), &[], &PutIf::Absent)
                    .await
                {
                    Ok(_) => Ok(false),
                    Err(e) if is_precondition_failed(&e) => Ok(true),
                    Err(e) => Err(e),
                }
            })
            .await?;
        if existed {
            return Err(s3_error!(
                BucketAlreadyOwnedByYou,
                "bucket {bucket:?} exists"
            ));
        }
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket.clone();
        let prefix = names::bucket_prefix(&bucket);
        self.allow(&req, Permission::Write, &prefix)?;
        let marker = names::bucket_marker(&bucket);
        enum Gone {
            Deleted,
            NotEmpty,
            NoBucket,
        }
        let r = self
            .gw(move |gw| async move {
                if gw.stat(&marker).await.is_err_and(|e| is_not_found(&e)) {
                    return Ok(Gone::NoBucket);
                }
                if !gw.list(&prefix, "", 1).await?.0.is_empty() {
                    return Ok(Gone::NotEmpty);
                }
                gw.delete(&marker).await?;
                Ok(Gone::Deleted)
            })
            .await?;
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&bucket);
        match r {
            Gone::Deleted => Ok(S3Response::new(DeleteBucketOutput {})),
            Gone::NotEmpty => Err(s3_error!(
                BucketNotEmpty,
                "bucket {bucket:?} holds objects; delete them first"
            )),
            Gone::NoBucket => Err(s3_error!(NoSuchBucket, "no bucket {bucket:?}")),
        }
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let bucket = req.input.bucket.clone();
        self.allow(&req, Permission::Read, &names::bucket_prefix(&bucket))?;
        self.bucket_exists(&bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let bucket = req.input.bucket.clone();
        self.allow(&req, Permission::Read, &names::bucket_prefix(&bucket))?;
        self.bucket_exists(&bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let items = self
            .gw(|gw| async move {
                gw.list(names::BUCKET_MARKER_PREFIX, "", BUCKETS_LISTED_MAX)
                    .await
            })
            .await?
            .0;
        let mut buckets = Vec::new();
        for i in items {
            let Some(name) = i.key.strip_prefix(names::BUCKET_MARKER_PREFIX) else {
                continue;
            };
            let name = name.to_string();
            if self
                .allow(&req, Permission::Read, &names::bucket_prefix(&name))
                .is_err()
            {
                continue;
            }
            buckets.push(Bucket {
                name: Some(name),
                creation_date: Some(timestamp(i.created_unix_millis)),
                bucket_region: None,
            });
        }
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let gw_key = obj_key(&req.input.bucket, &req.input.key)?;
        self.allow(&req, Permission::Write, &gw_key)?;
        self.bucket_exists(&req.input.bucket).await?;
        let i = req.input;
        let len = body_len(i.content_length, &i.body, PUT_OBJECT_MAX_BYTES)?;
        let attrs = attrs_from!(i);
        let cond = self
            .write_condition(&gw_key, i.if_match.as_ref(), i.if_none_match.as_ref())
            .await?;
        let etag = self
            .store_body(gw_key, len, i.body, i.content_md5, attrs, cond)
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            size: Some(len as i64),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let gw_key = obj_key(&req.input.bucket, &req.input.key)?;
        self.allow(&req, Permission::Write, &gw_key)?;
        let n = req.input.part_number;
        check_part_number(n)?;
        self.owned_upload(
            &req,
            &req.input.bucket,
            &req.input.key,
            &req.input.upload_id,
        )
        .await?;
        let i = req.input;
        let len = body_len(i.content_length, &i.body, PUT_OBJECT_MAX_BYTES)?;
        let etag = self
            .store_body(
                names::part_key(&i.upload_id, n),
                len,
                i.body,
                i.content_md5,
                ObjectAttrs::default(),
                PutIf::Always,
            )
            .await?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let gw_key = obj_key(&req.input.bucket, &req.input.key)?;
        self.allow(&req, Permission::Read, &gw_key)?;
        self.bucket_exists(&req.input.bucket).await?;
        let info = self
            .gw(move |gw| async move { gw.stat(&gw_key).await })
            .await?;
        let a = ObjectAttrs::parse(&info.attrs);
        enforce(&conditions!(req.input), &a, &info, false)?;
        Ok(S3Response::new(
            object_headers!(HeadObjectOutput, a, info, {
                content_length: Some(info.size as i64),
            }),
        ))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let gw_key = obj_key(&req.input.bucket, &req.input.key)?;
        self.allow(&req, Permission::Read, &gw_key)?;
        self.bucket_exists(&req.input.bucket).await?;
        let c = conditions!(req.input);
        let (body, info, range) = match req.input.range {
            None => {
                let k = gw_key.clone();
                let (first, info) = self
                    .gw(move |gw| async move {
                        gw.get_range_info(&k, 0, GET_FIRST_READ_BYTES, &[]).await
                    })
                    .await?;
                // Judged on the version read; a failed condition sends
                // none of its bytes.
                enforce(&c, &ObjectAttrs::parse(&info.attrs), &info, false)?;
                let off = first.len() as u64;
                let rest = info.size.saturating_sub(off);
                let body = if rest == 0 {
                    StreamingBlob::from(s3s::Body::from(Bytes::from(first)))
                } else {
                    self.stream_rest(gw_key, first, off, rest, info.version_id.clone())
                };
                (body, info, None)
            }
            Some(r) => {
                let k = gw_key.clone();
                let info = self.gw(move |gw| async move { gw.stat(&k).await }).await?;
                enforce(&c, &ObjectAttrs::parse(&info.attrs), &info, false)?;
                let span = r.check(info.size).map_err(|_| {
                    s3_error!(
                        InvalidRange,
                        "the range is outside this {}-byte object",
                        info.size
                    )
                })?;
                let len = span.end - span.start;
                let body = if len <= GET_FIRST_READ_BYTES {
                    let (k, v, start) = (gw_key.clone(), info.version_id.clone(), span.start);
                    let (data, _) = self
                        .gw(move |gw| async move { gw.get_range_info(&k, start, len, &v).await })
                        .await?;
                    StreamingBlob::from(s3s::Body::from(Bytes::from(data)))
                } else {
                    self.stream_rest(gw_key, Vec::new(), span.start, len, info.version_id.clone())
                };
                (body, info, Some(span))
            }
        };
        let a = ObjectAttrs::parse(&info.attrs);
        let (len, content_range) = match &range {
            Some(s) => (
                s.end - s.start,
                Some(format!("bytes {}-{}/{}", s.start, s.end - 1, info.size)),
            ),
            None => (info.size, None),
        };
        Ok(S3Response::new(object_headers!(GetObjectOutput, a, info, {
            body: Some(body),
            content_length: Some(len as i64),
            content_range: content_range,
        })))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let gw_key = obj_key(&req.input.bucket, &req.input.key)?;
        self.allow(&req, Permission::Write, &gw_key)?;
        self.bucket_exists(&req.input.bucket).await?;
        // S3 answers 204 whether or not the key existed.
        self.gw(move |gw| async move { gw.delete(&gw_key).await })
            .await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let bucket = req.input.bucket.clone();
        self.bucket_exists(&bucket).await?;
        let objects = &req.input.delete.objects;
        if objects.len() > DELETE_OBJECTS_MAX {
            return Err(s3_error!(
                MalformedXML,
                "{} keys; DeleteObjects takes at most {DELETE_OBJECTS_MAX}",
                objects.len()
            ));
        }
        let quiet = req.input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        let mut todo = Vec::new();
        for o in objects {
            let r = obj_key(&bucket, &o.key)
                .and_then(|k| self.allow(&req, Permission::Write, &k).map(|_| k));
            match r {
                Ok(k) => todo.push((o.key.clone(), k)),
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(o.key.clone()),
                    message: e.message().map(str::to_string),
                    version_id: None,
                }),
            }
        }
        let results = self
            .backend
            .run(move |gw| async move {
                let mut out = Vec::with_capacity(todo.len());
                for (key, k) in todo {
                    let r = gw.delete(&k).await.map(|_| ()).map_err(|e| e.to_string());
                    out.push((key, r));
                }
                out
            })
            .await
            .map_err(stopped)?;
        for (key, r) in results {
            match r {
                Ok(()) if !quiet => deleted.push(DeletedObject {
                    key: Some(key),
                    ..Default::default()
                }),
                Ok(()) => {}
                Err(m) => errors.push(Error {
                    code: Some("InternalError".into()),
                    key: Some(key),
                    message: Some(m),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let (sb, src) = self.copy_keys(
            &req,
            &req.input.copy_source,
            &req.input.bucket,
            &req.input.key,
        )?;
        let sb = &sb;
        let dst = obj_key(&req.input.bucket, &req.input.key)?;
        self.bucket_exists(sb).await?;
        self.bucket_exists(&req.input.bucket).await?;
        let i = &req.input;
        let replace = i
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let new_attrs = replace.then(|| attrs_from!(i));
        if let Some(a) = &new_attrs {
            encode_attrs(a)?;
        }
        let (info, src_attrs) = self
            .judged_source(&src, &conditions!(i, copy_source_))
            .await?;
        if info.size > PUT_OBJECT_MAX_BYTES {
            return Err(s3_error!(
                InvalidRequest,
                "the source is {} bytes; CopyObject copies at most {PUT_OBJECT_MAX_BYTES} (use UploadPartCopy)",
                info.size
            ));
        }
        // The version judged is the version copied.
        let attrs = new_attrs.unwrap_or(src_attrs);
        let (etag, created) = self
            .gw(move |gw| async move {
                copy_object_bytes(&gw, &src, &info.version_id, 0..info.size, &dst, attrs).await
            })
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(timestamp(created)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let i = &req.input;
        // The continuation token is the name to start after (base64).
        let start_after = match &i.continuation_token {
            Some(t) => {
                use base64::Engine;
                let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(t)
                    .map_err(|_| s3_error!(InvalidArgument, "the continuation token is damaged"))?;
                String::from_utf8(b)
                    .map_err(|_| s3_error!(InvalidArgument, "the continuation token is damaged"))?
            }
            None => i.start_after.clone().unwrap_or_default(),
        };
        let l = self
            .list_core(
                &req,
                &i.bucket,
                i.prefix.clone(),
                i.delimiter.clone(),
                start_after,
                i.max_keys,
            )
            .await?;
        let token = l.next.map(|n| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n.as_bytes())
        });
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket.clone()),
            prefix: Some(l.prefix),
            delimiter: l.delimiter,
            max_keys: Some(l.max_keys),
            key_count: Some((l.objects.len() + l.prefixes.len()) as i32),
            is_truncated: Some(token.is_some()),
            continuation_token: i.continuation_token.clone(),
            next_continuation_token: token,
            start_after: i.start_after.clone(),
            contents: Some(l.objects),
            common_prefixes: Some(l.prefixes),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let i = &req.input;
        let l = self
            .list_core(
                &req,
                &i.bucket,
                i.prefix.clone(),
                i.delimiter.clone(),
                i.marker.clone().unwrap_or_default(),
                i.max_keys,
            )
            .await?;
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket.clone()),
            prefix: Some(l.prefix),
            delimiter: l.delimiter,
            max_keys: Some(l.max_keys),
            is_truncated: Some(l.next.is_some()),
            marker: i.marker.clone(),
            next_marker: l.next,
            contents: Some(l.objects),
            common_prefixes: Some(l.prefixes),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let gw_key = obj_key(&req.input.bucket, &req.input.key)?;
        let owner = self.allow(&req, Permission::Write, &gw_key)?;
        self.bucket_exists(&req.input.bucket).await?;
        let i = &req.input;
        let attrs = attrs_from!(i);
        encode_attrs(&attrs)?;
        let id = names::new_upload_id();
        let rec = Upload {
            bucket: i.bucket.clone(),
            key: i.key.clone(),
            owner,
            created_unix_millis: now_millis(),
            attrs,
        };
        let body = serde_json::to_vec(&rec).map_err(S3Error::internal_error)?;
        let k = names::upload_record(&i.bucket, &id);
        let a = serde_json::to_vec(&names::UploadAttrs { key: i.key.clone() })
            .map_err(S3Error::internal_error)?;
        self.gw(move |gw| async move { gw.put_with_attrs(&k, &body, &a).await })
            .await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(i.bucket.clone()),
            key: Some(i.key.clone()),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let (sb, src) = self.copy_keys(
            &req,
            &req.input.copy_source,
            &req.input.bucket,
            &req.input.key,
        )?;
        let sb = &sb;
        let i = &req.input;
        let n = i.part_number;
        check_part_number(n)?;
        self.owned_upload(&req, &i.bucket, &i.key, &i.upload_id)
            .await?;
        self.bucket_exists(sb).await?;
        // "bytes=FIRST-LAST", inclusive; the whole object without it.
        let range = match &i.copy_source_range {
            None => None,
            Some(r) => {
                let bad = || {
                    s3_error!(
                        InvalidArgument,
                        "x-amz-copy-source-range must be bytes=FIRST-LAST; got {r:?}"
                    )
                };
                let (a, b) = r
                    .strip_prefix("bytes=")
                    .and_then(|x| x.split_once('-'))
                    .ok_or_else(bad)?;
                let (a, b): (u64, u64) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                Some((a, b))
            }
        };
        let part = names::part_key(&i.upload_id, n);
        let (info, _) = self
            .judged_source(&src, &conditions!(i, copy_source_))
            .await?;
        let span = match range {
            None => 0..info.size,
            Some((a, b)) if b < info.size => a..b + 1,
            Some(_) => {
                return Err(s3_error!(
                    InvalidArgument,
                    "the copy range is outside the {}-byte source",
                    info.size
                ))
            }
        };
        if span.end - span.start > PUT_OBJECT_MAX_BYTES {
            return Err(s3_error!(
                EntityTooLarge,
                "a part may be at most {PUT_OBJECT_MAX_BYTES} bytes"
            ));
        }
        let version = info.version_id;
        let (etag, created) = self
            .gw(move |gw| async move {
                copy_object_bytes(&gw, &src, &version, span, &part, ObjectAttrs::default()).await
            })
            .await?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(timestamp(created)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let i = &req.input;
        let prefix = i.prefix.clone().unwrap_or_default();
        self.allow(
            &req,
            Permission::Read,
            &format!("{}{prefix}", names::bucket_prefix(&i.bucket)),
        )?;
        self.bucket_exists(&i.bucket).await?;
        let max = i
            .max_uploads
            .unwrap_or(LIST_KEYS_MAX)
            .clamp(1, LIST_KEYS_MAX) as usize;
        let at = names::uploads_prefix(&i.bucket);
        let items = self
            .gw(move |gw| async move { gw.list(&at, "", UPLOADS_LISTED_MAX).await })
            .await?
            .0;
        // (key, upload id, initiated), in S3's order: by key, then id.
        let mut all: Vec<(String, String, u64)> = items
            .iter()
            .filter_map(|it| {
                let a: names::UploadAttrs = serde_json::from_slice(&it.attrs).ok()?;
                let id = it.key.rsplit('/').next()?.to_string();
                Some((a.key, id, it.created_unix_millis))
            })
            .filter(|(k, _, _)| k.starts_with(&prefix))
            .collect();
        all.sort();
        let (km, im) = (
            i.key_marker.clone().unwrap_or_default(),
            i.upload_id_marker.clone().unwrap_or_default(),
        );
        let after: Vec<_> = all
            .into_iter()
            .filter(|(k, id, _)| {
                km.is_empty()
                    || k.as_str() > km.as_str()
                    || (k == &km && !im.is_empty() && id.as_str() > im.as_str())
            })
            .collect();
        let truncated = after.len() > max;
        let page = &after[..after.len().min(max)];
        let last = page.last().filter(|_| truncated);
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(i.bucket.clone()),
            prefix: i.prefix.clone(),
            max_uploads: Some(max as i32),
            key_marker: i.key_marker.clone(),
            upload_id_marker: i.upload_id_marker.clone(),
            next_key_marker: last.map(|l| l.0.clone()),
            next_upload_id_marker: last.map(|l| l.1.clone()),
            is_truncated: Some(truncated),
            uploads: Some(
                page.iter()
                    .map(|(k, id, t)| MultipartUpload {
                        key: Some(k.clone()),
                        upload_id: Some(id.clone()),
                        initiated: Some(timestamp(*t)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let gw_key = obj_key(&req.input.bucket, &req.input.key)?;
        self.allow(&req, Permission::Read, &gw_key)?;
        let i = &req.input;
        self.owned_upload(&req, &i.bucket, &i.key, &i.upload_id)
            .await?;
        let marker = i.part_number_marker.unwrap_or(0);
        let max = i.max_parts.unwrap_or(LIST_KEYS_MAX).clamp(1, LIST_KEYS_MAX) as usize;
        let all = self.parts_of(&i.upload_id).await?;
        let after: Vec<_> = all.into_iter().filter(|p| p.0 > marker).collect();
        let truncated = after.len() > max;
        let parts: Vec<Part> = after
            .iter()
            .take(max)
            .map(|(n, size, etag, _)| Part {
                part_number: Some(*n),
                size: Some(*size as i64),
                e_tag: Some(ETag::Strong(etag.clone())),
                ..Default::default()
            })
            .collect();
        let next = parts.last().and_then(|p| p.part_number);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(i.bucket.clone()),
            key: Some(i.key.clone()),
            upload_id: Some(i.upload_id.clone()),
            max_parts: Some(max as i32),
            part_number_marker: i.part_number_marker,
            next_part_number_marker: if truncated { next } else { None },
            is_truncated: Some(truncated),
            parts: Some(parts),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let gw_key = obj_key(&req.input.bucket, &req.input.key)?;
        self.allow(&req, Permission::Write, &gw_key)?;
        let i = &req.input;
        self.owned_upload(&req, &i.bucket, &i.key, &i.upload_id)
            .await?;
        let mut keys: Vec<String> = self
            .parts_of(&i.upload_id)
            .await?
            .into_iter()
            .map(|p| names::part_key(&i.upload_id, p.0))
            .collect();
        keys.push(names::upload_record(&i.bucket, &i.upload_id));
        self.delete_all(keys).await;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let gw_key = obj_key(&req.input.bucket, &req.input.key)?;
        self.allow(&req, Permission::Write, &gw_key)?;
        let i = &req.input;
        let upload = self
            .owned_upload(&req, &i.bucket, &i.key, &i.upload_id)
            .await?;
        let asked = i
            .multipart_upload
            .as_ref()
            .and_then(|m| m.parts.clone())
            .unwrap_or_default();
        if asked.is_empty() {
            return Err(s3_error!(MalformedXML, "name at least one part"));
        }
        let stored: HashMap<i32, (u64, String, Vec<u8>)> = self
            .parts_of(&i.upload_id)
            .await?
            .into_iter()
            .map(|(n, s, e, v)| (n, (s, e, v)))
            .collect();
        // (part key, size, version) in order, checked as S3 checks them.
        let mut plan = Vec::with_capacity(asked.len());
        let mut etags = Vec::with_capacity(asked.len());
        let mut total = 0u64;
        let mut last = 0;
        for (idx, p) in asked.iter().enumerate() {
            let n = p.part_number.unwrap_or(0);
            if n <= last {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "parts must be listed in ascending order"
                ));
            }
            last = n;
            let Some((size, etag, version)) = stored.get(&n) else {
                return Err(s3_error!(InvalidPart, "part {n} was not uploaded"));
            };
            let given = p
                .e_tag
                .as_ref()
                .map(|e| strip_quotes(e.value()).to_string());
            if given.as_deref().is_some_and(|g| g != etag) {
                return Err(s3_error!(
                    InvalidPart,
                    "part {n}: the ETag does not match the uploaded part"
                ));
            }
            if idx + 1 < asked.len() && *size < PART_MIN_BYTES {
                return Err(s3_error!(
                    EntityTooSmall,
                    "part {n} is {size} bytes; every part but the last must be at least {PART_MIN_BYTES}"
                ));
            }
            total += size;
            etags.push(etag.clone());
            plan.push((names::part_key(&i.upload_id, n), *size, version.clone()));
        }
        if total > MULTIPART_OBJECT_MAX_BYTES {
            return Err(s3_error!(
                EntityTooLarge,
                "{total} bytes; at most {MULTIPART_OBJECT_MAX_BYTES}"
            ));
        }
        let etag = names::multipart_etag(&etags)
            .ok_or_else(|| s3_error!(InternalError, "a part has a damaged ETag"))?;
        let mut attrs = upload.attrs.clone();
        attrs.etag = etag.clone();
        attrs.parts = plan.len() as u32;
        let a = encode_attrs(&attrs)?;
        let cond = self
            .write_condition(&gw_key, i.if_match.as_ref(), i.if_none_match.as_ref())
            .await?;
        let (bucket, key, upload_id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
        let mut leftovers: Vec<String> = stored
            .keys()
            .map(|n| names::part_key(&upload_id, *n))
            .collect();
        leftovers.push(names::upload_record(&bucket, &upload_id));
        let this = self.clone();
        let work = async move {
            this.gw(move |gw| async move {
                let mut w = gw.put_open_if(&gw_key, total, &cond).await?;
                for (k, size, version) in &plan {
                    copy_into(&gw, k, version, 0..*size, &mut w, None).await?;
                }
                w.finish(&a).await
            })
            .await?;
            this.delete_all(leftovers).await;
            Ok(CompleteMultipartUploadOutput {
                bucket: Some(bucket),
                key: Some(key),
                e_tag: Some(ETag::Strong(etag)),
                ..Default::default()
            })
        };
        if total >= COMPLETE_KEEPALIVE_MIN_BYTES {
            return Ok(S3Response::new(CompleteMultipartUploadOutput {
                future: Some(Box::pin(work)),
                ..Default::default()
            }));
        }
        Ok(S3Response::new(work.await?))
    }
}
