#!/usr/bin/env python3
"""Drives a running tessera-s3 front with boto3, a real S3 client.

Usage: boto3_suite.py ENDPOINT KEY_ID SECRET [READONLY_KEY_ID READONLY_SECRET]
       boto3_suite.py --expect-refused ENDPOINT KEY_ID SECRET

Every check states what S3 promises; the first failure stops the run with
a non-zero exit and says which. Sizes and counts are bounded; the run
takes well under a minute on a dev cluster.
"""

import hashlib
import os
import random
import sys

import boto3
from botocore.client import Config
from botocore.exceptions import ClientError

MIB = 1 << 20


def client(endpoint, key_id, secret):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            # No retries and a short read timeout: a connection left
            # unusable by an earlier answer fails the suite instead of
            # being retried after a minute.
            retries={"total_max_attempts": 1, "mode": "standard"},
            read_timeout=20,
            connect_timeout=10,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def expect_error(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        if got != code and str(status) != code:
            raise AssertionError(f"expected {code}, got {got} ({status}): {e}")
        return e
    raise AssertionError(f"expected {code}, the call succeeded")


_last = [None]


def step(name):
    """Prints how long the previous section took (SUITE_VERBOSE=1)."""
    import time
    now = time.monotonic()
    if os.environ.get("SUITE_VERBOSE") and _last[0] is not None:
        print(f"  {_last[0][0]}: {now - _last[0][1]:.2f}s", file=sys.stderr)
    _last[0] = (name, now)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    endpoint, key_id, secret = sys.argv[1:4]
    ro = sys.argv[4:6]
    s3 = client(endpoint, key_id, secret)
    seed = int(os.environ.get("SEED", random.SystemRandom().randrange(1 << 32)))
    print(f"boto3 suite: SEED={seed}")
    rng = random.Random(seed)
    bucket = f"suite-{rng.randrange(1 << 30):x}"

    step('Buckets')
    # Buckets.
    expect_error("404", s3.head_bucket, Bucket=bucket)
    s3.create_bucket(Bucket=bucket)
    expect_error("BucketAlreadyOwnedByYou", s3.create_bucket, Bucket=bucket)
    # Racing creates of one new bucket: exactly one makes it.
    import threading
    race, outcomes = bucket + "-race", []
    def create():
        try:
            s3.create_bucket(Bucket=race)
            outcomes.append("ok")
        except ClientError as e:
            outcomes.append(e.response["Error"]["Code"])
    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(sorted(outcomes) == ["BucketAlreadyOwnedByYou"] * 5 + ["ok"], f"racing creates: {outcomes}")
    s3.delete_bucket(Bucket=race)
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    check(bucket in names, f"list_buckets misses {bucket}: {names}")
    s3.head_bucket(Bucket=bucket)
    expect_error("NoSuchBucket", s3.put_object, Bucket=bucket + "-none", Key="a", Body=b"x")

    step('Round trips of many sizes')
    # Round trips of many sizes, byte-exact, with ETag = MD5.
    sizes = [0, 1, 100, 4096, 65536, 65537, 1 * MIB, 4 * MIB, 4 * MIB + 1, 9 * MIB + 123]
    blobs = {}
    for n in sizes:
        data = rng.randbytes(n)
        key = f"sizes/{n:09d}.bin"
        r = s3.put_object(Bucket=bucket, Key=key, Body=data)
        check(r["ETag"].strip('"') == hashlib.md5(data).hexdigest(), f"ETag of {key}")
        blobs[key] = data
    for key, data in blobs.items():
        got = s3.get_object(Bucket=bucket, Key=key)
        body = got["Body"].read()
        check(body == data, f"{key}: {len(body)} bytes back, {len(data)} stored, or different")
        check(got["ContentLength"] == len(data), f"{key}: Content-Length")
        h = s3.head_object(Bucket=bucket, Key=key)
        check(h["ContentLength"] == len(data), f"{key}: HEAD Content-Length")
        check(h["ETag"].strip('"') == hashlib.md5(data).hexdigest(), f"{key}: HEAD ETag")

    step('Headers and user metadata')
    # Headers and user metadata survive.
    s3.put_object(
        Bucket=bucket,
        Key="meta/doc.txt",
        Body=b"hello",
        ContentType="text/plain",
        Metadata={"owner": "ada", "purpose": "test"},
    )
    h = s3.head_object(Bucket=bucket, Key="meta/doc.txt")
    check(h["ContentType"] == "text/plain", f"content type {h.get('ContentType')}")
    check(h["Metadata"] == {"owner": "ada", "purpose": "test"}, f"metadata {h['Metadata']}")
    expect_error("MetadataTooLarge", s3.put_object, Bucket=bucket, Key="meta/big",
                 Body=b"x", Metadata={"a": "b" * 3000})

    step('Content-MD5 is checked')
    # Content-MD5 is checked, and a mismatch stores nothing.
    import base64
    good = base64.b64encode(hashlib.md5(b"abc").digest()).decode()
    s3.put_object(Bucket=bucket, Key="md5/ok", Body=b"abc", ContentMD5=good)
    bad = base64.b64encode(hashlib.md5(b"abd").digest()).decode()
    expect_error("BadDigest", s3.put_object, Bucket=bucket, Key="md5/bad", Body=b"abc", ContentMD5=bad)
    expect_error("404", s3.head_object, Bucket=bucket, Key="md5/bad")

    step('Ranges')
    # Ranges.
    big = blobs["sizes/000009437307.bin"] if "sizes/000009437307.bin" in blobs else blobs[f"sizes/{9 * MIB + 123:09d}.bin"]
    key = f"sizes/{9 * MIB + 123:09d}.bin"
    for (a, b) in [(0, 0), (5, 100), (MIB - 3, MIB + 3), (4 * MIB - 1, 4 * MIB + 1), (0, 5 * MIB), (len(big) - 10, len(big) - 1)]:
        r = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={a}-{b}")
        body = r["Body"].read()
        check(body == big[a:b + 1], f"range {a}-{b}: {len(body)} bytes")
        check(r["ContentRange"] == f"bytes {a}-{b}/{len(big)}", f"Content-Range {r['ContentRange']}")
    r = s3.get_object(Bucket=bucket, Key=key, Range="bytes=-100")
    check(r["Body"].read() == big[-100:], "suffix range")
    expect_error("InvalidRange", s3.get_object, Bucket=bucket, Key=key, Range=f"bytes={len(big) + 5}-")
    expect_error("NoSuchKey", s3.get_object, Bucket=bucket, Key="no/such/key")

    step('Conditions')
    # Conditional reads (RFC 7232 as S3 applies it), judged on the version read.
    import datetime
    h = s3.head_object(Bucket=bucket, Key=key)
    etag, modified = h["ETag"], h["LastModified"]
    past = modified - datetime.timedelta(days=1)
    future = modified + datetime.timedelta(days=1)
    r = s3.get_object(Bucket=bucket, Key=key, IfMatch=etag, Range="bytes=0-9")
    check(r["Body"].read() == big[:10], "If-Match with the object's ETag reads it")
    check(s3.get_object(Bucket=bucket, Key=key, IfNoneMatch='"0000"')["Body"].read() == big,
          "If-None-Match with another ETag reads the whole object")
    expect_error("PreconditionFailed", s3.get_object, Bucket=bucket, Key=key, IfMatch='"0000"')
    e304 = expect_error("304", s3.get_object, Bucket=bucket, Key=key, IfNoneMatch=etag)
    hdrs = e304.response["ResponseMetadata"]["HTTPHeaders"]
    check(hdrs.get("etag") == etag and "last-modified" in hdrs, f"a 304 carries ETag and Last-Modified: {hdrs}")
    expect_error("304", s3.get_object, Bucket=bucket, Key=key, IfModifiedSince=future)
    expect_error("PreconditionFailed", s3.get_object, Bucket=bucket, Key=key, IfUnmodifiedSince=past)
    check(s3.get_object(Bucket=bucket, Key=key, IfModifiedSince=past, Range="bytes=0-0")["Body"].read() == big[:1],
          "If-Modified-Since before the write reads it")
    # If-Match holds, so a failing If-Unmodified-Since is ignored (S3: 200).
    s3.get_object(Bucket=bucket, Key=key, IfMatch=etag, IfUnmodifiedSince=past, Range="bytes=0-0")
    expect_error("304", s3.head_object, Bucket=bucket, Key=key, IfNoneMatch=etag)
    expect_error("412", s3.head_object, Bucket=bucket, Key=key, IfMatch='"0000"')
    expect_error("PreconditionFailed", s3.copy_object, Bucket=bucket, Key="cond/copy",
                 CopySource={"Bucket": bucket, "Key": key}, CopySourceIfMatch='"0000"')
    expect_error("PreconditionFailed", s3.copy_object, Bucket=bucket, Key="cond/copy",
                 CopySource={"Bucket": bucket, "Key": key}, CopySourceIfNoneMatch=etag)
    expect_error("404", s3.head_object, Bucket=bucket, Key="cond/copy")
    s3.copy_object(Bucket=bucket, Key="cond/copy", CopySource={"Bucket": bucket, "Key": "meta/doc.txt"},
                   CopySourceIfMatch=s3.head_object(Bucket=bucket, Key="meta/doc.txt")["ETag"])
    s3.delete_object(Bucket=bucket, Key="cond/copy")
    # Conditional writes: If-None-Match: * only creates; If-Match replaces
    # only the version it names (small bodies in one call, large streamed).
    for ck, n in [("cond/w", 100), ("cond/wbig", 5 * MIB + 7)]:
        one, two = os.urandom(n), os.urandom(n)
        e1 = s3.put_object(Bucket=bucket, Key=ck, Body=one, IfNoneMatch="*")["ETag"]
        expect_error("PreconditionFailed", s3.put_object, Bucket=bucket, Key=ck, Body=two, IfNoneMatch="*")
        check(s3.get_object(Bucket=bucket, Key=ck)["Body"].read() == one, f"{ck}: a failed create changes nothing")
        s3.put_object(Bucket=bucket, Key=ck, Body=two, IfMatch=e1)
        expect_error("PreconditionFailed", s3.put_object, Bucket=bucket, Key=ck, Body=one, IfMatch=e1)
        check(s3.get_object(Bucket=bucket, Key=ck)["Body"].read() == two, f"{ck}: If-Match replaced it once")
        s3.delete_object(Bucket=bucket, Key=ck)
    expect_error("NoSuchKey", s3.put_object, Bucket=bucket, Key="cond/none", Body=b"x", IfMatch='"0000"')
    expect_error("404", s3.head_object, Bucket=bucket, Key="cond/none")

    step('Listing')
    # Listing: prefix, delimiter, pagination.
    for i in range(7):
        s3.put_object(Bucket=bucket, Key=f"tree/a/{i}", Body=b"x")
    for d in ["b", "c", "d"]:
        s3.put_object(Bucket=bucket, Key=f"tree/{d}/x/y", Body=b"x")
    s3.put_object(Bucket=bucket, Key="tree/top", Body=b"x")
    r = s3.list_objects_v2(Bucket=bucket, Prefix="tree/", Delimiter="/")
    cps = [p["Prefix"] for p in r.get("CommonPrefixes", [])]
    keys = [o["Key"] for o in r.get("Contents", [])]
    check(cps == ["tree/a/", "tree/b/", "tree/c/", "tree/d/"], f"common prefixes {cps}")
    check(keys == ["tree/top"], f"keys {keys}")
    def names_v2(**kw):
        """Every name (common prefixes, then keys, page by page) of a paged ListObjectsV2."""
        seen, token = [], None
        for _ in range(20):
            if token:
                kw["ContinuationToken"] = token
            r = s3.list_objects_v2(**kw)
            seen += [p["Prefix"] for p in r.get("CommonPrefixes", [])] + [o["Key"] for o in r.get("Contents", [])]
            if not r["IsTruncated"]:
                return seen
            token = r["NextContinuationToken"]
        raise AssertionError(f"pagination does not end: {seen}")

    seen = names_v2(Bucket=bucket, Prefix="tree/", MaxKeys=3)
    want = sorted([f"tree/a/{i}" for i in range(7)] + [f"tree/{d}/x/y" for d in "bcd"] + ["tree/top"])
    check(seen == want, f"paginated list {seen}")
    seen = names_v2(Bucket=bucket, Prefix="tree/", Delimiter="/", MaxKeys=2)
    check(sorted(seen) == ["tree/a/", "tree/b/", "tree/c/", "tree/d/", "tree/top"], f"paged delimiter list {seen}")
    r = s3.list_objects_v2(Bucket=bucket, Prefix="tree/a/", StartAfter="tree/a/4")
    check([o["Key"] for o in r["Contents"]] == ["tree/a/5", "tree/a/6"], "start-after")
    # One name per page, with a delimiter: every group once, in order.
    seen = names_v2(Bucket=bucket, Prefix="tree/", Delimiter="/", MaxKeys=1)
    check(seen == ["tree/a/", "tree/b/", "tree/c/", "tree/d/", "tree/top"], f"one-per-page delimiter list {seen}")
    # ListObjects (v1): markers, with and without a delimiter.
    seen, marker = [], ""
    for _ in range(20):
        r = s3.list_objects(Bucket=bucket, Prefix="tree/", Delimiter="/", MaxKeys=2, Marker=marker)
        page = [p["Prefix"] for p in r.get("CommonPrefixes", [])] + [o["Key"] for o in r.get("Contents", [])]
        seen += page
        if not r["IsTruncated"]:
            break
        marker = r.get("NextMarker") or page[-1]
    check(sorted(seen) == ["tree/a/", "tree/b/", "tree/c/", "tree/d/", "tree/top"], f"v1 delimiter list {seen}")
    r = s3.list_objects(Bucket=bucket, Prefix="tree/a/", Marker="tree/a/4")
    check([o["Key"] for o in r["Contents"]] == ["tree/a/5", "tree/a/6"], "v1 marker")
    pag = s3.get_paginator("list_objects_v2")
    total = sum(len(p.get("Contents", [])) for p in pag.paginate(Bucket=bucket, PaginationConfig={"PageSize": 4}))
    check(total == len(blobs) + 11 + 2, f"paginator counted {total}")

    step('Copy')
    # Copy, with and without new metadata.
    r = s3.copy_object(Bucket=bucket, Key="copies/one", CopySource={"Bucket": bucket, "Key": "meta/doc.txt"})
    h = s3.head_object(Bucket=bucket, Key="copies/one")
    check(h["Metadata"] == {"owner": "ada", "purpose": "test"}, "copy keeps metadata")
    check(s3.get_object(Bucket=bucket, Key="copies/one")["Body"].read() == b"hello", "copy bytes")
    s3.copy_object(Bucket=bucket, Key="copies/two", CopySource={"Bucket": bucket, "Key": key},
                   MetadataDirective="REPLACE", Metadata={"new": "1"}, ContentType="application/x-test")
    h = s3.head_object(Bucket=bucket, Key="copies/two")
    check(h["Metadata"] == {"new": "1"} and h["ContentType"] == "application/x-test", "copy replaces metadata")
    check(s3.get_object(Bucket=bucket, Key="copies/two")["Body"].read() == big, "copy of a 9 MiB object")

    step('Multipart')
    # Multipart: 3 parts (5 MiB, 5 MiB, 1 byte), listed, completed, ETag as S3's.
    key = "multi/part.bin"
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType="application/octet-stream",
                                    Metadata={"kind": "multi"})["UploadId"]
    parts_data = [rng.randbytes(5 * MIB), rng.randbytes(5 * MIB), rng.randbytes(1)]
    parts = []
    for i, d in enumerate(parts_data, start=1):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=i, Body=d)
        check(r["ETag"].strip('"') == hashlib.md5(d).hexdigest(), f"part {i} ETag")
        parts.append({"PartNumber": i, "ETag": r["ETag"]})
    lp = s3.list_parts(Bucket=bucket, Key=key, UploadId=up)
    check([p["PartNumber"] for p in lp["Parts"]] == [1, 2, 3], "list_parts")
    check([p["Size"] for p in lp["Parts"]] == [5 * MIB, 5 * MIB, 1], "part sizes")
    expect_error("InvalidPartOrder", s3.complete_multipart_upload, Bucket=bucket, Key=key, UploadId=up,
                 MultipartUpload={"Parts": [parts[1], parts[0]]})
    expect_error("InvalidPart", s3.complete_multipart_upload, Bucket=bucket, Key=key, UploadId=up,
                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}]})
    r = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up, MultipartUpload={"Parts": parts})
    want_etag = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in parts_data)).hexdigest() + "-3"
    check(r["ETag"].strip('"') == want_etag, f"multipart ETag {r['ETag']} != {want_etag}")
    whole = b"".join(parts_data)
    got = s3.get_object(Bucket=bucket, Key=key)
    check(got["Body"].read() == whole, "multipart object bytes")
    check(got["Metadata"] == {"kind": "multi"}, "multipart metadata")
    expect_error("NoSuchUpload", s3.list_parts, Bucket=bucket, Key=key, UploadId=up)
    # A conditional completion: create-only fails on the existing object and
    # leaves it and the upload as they were.
    upc = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    ec = s3.upload_part(Bucket=bucket, Key=key, UploadId=upc, PartNumber=1, Body=b"z" * 10)["ETag"]
    expect_error("PreconditionFailed", s3.complete_multipart_upload, Bucket=bucket, Key=key, UploadId=upc,
                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": ec}]}, IfNoneMatch="*")
    check(s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(whole), "the object is unchanged")
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upc)
    step('Small non-last parts')
    # Small non-last parts are refused; an abort leaves nothing.
    up2 = s3.create_multipart_upload(Bucket=bucket, Key="multi/small")["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="multi/small", UploadId=up2, PartNumber=1, Body=b"a" * 100)["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="multi/small", UploadId=up2, PartNumber=2, Body=b"b")["ETag"]
    expect_error("EntityTooSmall", s3.complete_multipart_upload, Bucket=bucket, Key="multi/small", UploadId=up2,
                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    s3.abort_multipart_upload(Bucket=bucket, Key="multi/small", UploadId=up2)
    expect_error("NoSuchUpload", s3.upload_part, Bucket=bucket, Key="multi/small", UploadId=up2,
                 PartNumber=3, Body=b"c")
    expect_error("404", s3.head_object, Bucket=bucket, Key="multi/small")
    step('Uploads in progress')
    ups = {k: s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"] for k in ["mpu/b", "mpu/a", "mpu/c"]}
    r = s3.list_multipart_uploads(Bucket=bucket, Prefix="mpu/")
    got = [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]
    check(got == sorted(ups.items()), f"list_multipart_uploads {got}")
    seen, km, im = [], None, None
    for _ in range(10):
        kw = dict(Bucket=bucket, Prefix="mpu/", MaxUploads=1)
        if km:
            kw.update(KeyMarker=km, UploadIdMarker=im)
        r = s3.list_multipart_uploads(**kw)
        seen += [u["Key"] for u in r.get("Uploads", [])]
        if not r["IsTruncated"]:
            break
        km, im = r["NextKeyMarker"], r["NextUploadIdMarker"]
    check(seen == ["mpu/a", "mpu/b", "mpu/c"], f"paged uploads {seen}")
    for k, v in ups.items():
        s3.abort_multipart_upload(Bucket=bucket, Key=k, UploadId=v)
    check(not s3.list_multipart_uploads(Bucket=bucket, Prefix="mpu/").get("Uploads"), "aborted uploads are listed")

    step("boto3's managed transfer")
    # boto3's managed transfer (multipart above its threshold) round-trips.
    from boto3.s3.transfer import TransferConfig
    import io
    payload = rng.randbytes(12 * MIB + 7)
    cfg = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=4)
    s3.upload_fileobj(io.BytesIO(payload), bucket, "multi/managed", Config=cfg)
    out = io.BytesIO()
    s3.download_fileobj(bucket, "multi/managed", out, Config=cfg)
    check(out.getvalue() == payload, "managed transfer bytes")
    # boto3's managed copy: above its threshold it copies in parts
    # (UploadPartCopy with byte ranges).
    s3.copy({"Bucket": bucket, "Key": "multi/managed"}, bucket, "multi/managed-copy", Config=cfg)
    got = s3.get_object(Bucket=bucket, Key="multi/managed-copy")
    check(got["Body"].read() == payload, "managed copy bytes")
    check(got["ETag"].strip('"').endswith("-3"), f"managed copy is multipart: {got['ETag']}")
    up3 = s3.create_multipart_upload(Bucket=bucket, Key="multi/rangecopy")["UploadId"]
    expect_error("InvalidArgument", s3.upload_part_copy, Bucket=bucket, Key="multi/rangecopy", UploadId=up3,
                 PartNumber=1, CopySource={"Bucket": bucket, "Key": "multi/managed"},
                 CopySourceRange=f"bytes=0-{len(payload)}")
    s3.abort_multipart_upload(Bucket=bucket, Key="multi/rangecopy", UploadId=up3)

    step('A client that dies mid-upload')
    # A client that dies mid-upload stores nothing (both the collected
    # path, up to 4 MiB, and the streamed one).
    import socket
    from urllib.parse import urlparse
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    u = urlparse(endpoint)
    def raw_put(key, n, send):
        """Sends a signed PUT of n bytes by hand, `send` of them, then hangs up."""
        full = rng.randbytes(n)
        req = AWSRequest(method="PUT", url=f"{endpoint}/{bucket}/{key}", data=full,
                         headers={"Content-Length": str(n)})
        S3SigV4Auth(Credentials(key_id, secret), "s3", "us-east-1").add_auth(req)
        head = f"PUT /{bucket}/{key} HTTP/1.1\r\nHost: {u.netloc}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in req.headers.items() if k.lower() != "host") + "\r\n"
        body = full[:send]
        s = socket.create_connection((u.hostname, u.port))
        s.sendall(head.encode() + body)
        answer = s.recv(4096).decode(errors="replace") if send == n else ""
        s.close()
        return body, answer

    # The control: the same hand-made request, complete, is stored.
    whole, answer = raw_put("partial/control", 2 * MIB, 2 * MIB)
    check(answer.startswith("HTTP/1.1 200"), f"hand-made PUT answered {answer!r}")
    check(s3.get_object(Bucket=bucket, Key="partial/control")["Body"].read() == whole, "hand-made PUT")
    for n in [3 * MIB, 9 * MIB]:
        raw_put(f"partial/{n}", n, n // 2)
    import time
    time.sleep(1)
    for n in [3 * MIB, 9 * MIB]:
        expect_error("404", s3.head_object, Bucket=bucket, Key=f"partial/{n}")

    step('Bad signatures')
    # Bad signatures and unknown keys are refused.
    bad_sig = client(endpoint, key_id, "0" * 64)
    expect_error("SignatureDoesNotMatch", bad_sig.list_objects_v2, Bucket=bucket)
    # Refused before their bodies are read, twice on one client: the
    # second must not find its connection unusable.
    for _ in range(2):
        expect_error("SignatureDoesNotMatch", bad_sig.put_object, Bucket=bucket, Key="sig/x", Body=b"x" * 100_000)
    unknown = client(endpoint, "TK" + "0" * 20, secret)
    expect_error("InvalidAccessKeyId", unknown.list_objects_v2, Bucket=bucket)
    expect_error("403", client(endpoint, "nonsense", "x").list_buckets)

    step('A read-only key')
    # A read-only key reads and may not write.
    if ro:
        r = client(endpoint, ro[0], ro[1])
        check(r.get_object(Bucket=bucket, Key="meta/doc.txt")["Body"].read() == b"hello", "read-only key reads")
        expect_error("AccessDenied", r.put_object, Bucket=bucket, Key="ro/x", Body=b"x")
        expect_error("AccessDenied", r.delete_object, Bucket=bucket, Key="meta/doc.txt")

    step('Deletes')
    # Deletes: one, many (quiet and not), then the bucket.
    expect_error("BucketNotEmpty", s3.delete_bucket, Bucket=bucket)
    s3.delete_object(Bucket=bucket, Key="copies/one")
    s3.delete_object(Bucket=bucket, Key="copies/one")  # S3: deleting nothing succeeds
    expect_error("404", s3.head_object, Bucket=bucket, Key="copies/one")
    all_keys = [o["Key"] for p in pag.paginate(Bucket=bucket) for o in p.get("Contents", [])]
    for i in range(0, len(all_keys), 10):
        batch = all_keys[i:i + 10]
        r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": i % 20 == 0})
        check(not r.get("Errors"), f"delete_objects errors {r.get('Errors')}")
    check(s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0, "bucket empty after deletes")
    s3.delete_bucket(Bucket=bucket)
    expect_error("404", s3.head_bucket, Bucket=bucket)
    step("end")
    print("boto3 suite: all checks passed")


def expect_refused():
    """--expect-refused ENDPOINT KEY_ID SECRET: the key signs nothing."""
    endpoint, key_id, secret = sys.argv[2:5]
    expect_error("InvalidAccessKeyId", client(endpoint, key_id, secret).list_buckets)
    print("refused as expected")


if __name__ == "__main__":
    try:
        if sys.argv[1] == "--expect-refused":
            expect_refused()
        else:
            main()
    except AssertionError as e:
        print(f"boto3 suite FAILED: {e}", file=sys.stderr)
        sys.exit(1)
