//! The chunk server as a real process on 127.0.0.1: round trips from many
//! concurrent clients, typed errors for bad requests, garbage on the socket,
//! kill -9 under heavy writes, graceful shutdown and scrub over RPC.

mod harness;

use harness::{content, on_glommio, Chunkd};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;
use tessera_rpc::{chunk_capnp::chunk_server, ChunkClient, ClientOptions, RemoteKind};

fn opts() -> ClientOptions {
    ClientOptions {
        call_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    }
}

/// Options with `attempts` tries of at most 5 s each (tests that stop
/// servers under their clients).
fn quick_opts(attempts: u32) -> ClientOptions {
    ClientOptions {
        attempts,
        call_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

/// Sizes that cross every boundary: empty, sub-block, block, inline limit,
/// streamed, the largest shard.
const SIZES: &[usize] = &[
    0,
    1,
    4095,
    4096,
    65_537,
    (4 << 20),
    (4 << 20) + 1,
    (9 << 20) + 123,
    16 << 20,
];

#[test]
fn concurrent_clients_round_trip_every_size() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Chunkd::start(&dir.path().join("n1"));
    let addr = srv.addr;
    let model = on_glommio(move || async move {
        // 8 clients, each its own connection, all at once.
        let tasks: Vec<_> = (0..8u32)
            .map(|c| {
                glommio::spawn_local(async move {
                    let cl = ChunkClient::connect(addr, opts()).await.unwrap();
                    let mut mine = BTreeMap::new();
                    for (k, &len) in SIZES.iter().enumerate() {
                        for rep in 0..3u32 {
                            let id = format!("c{c}-s{k}-r{rep}").into_bytes();
                            let v = content(&id, len);
                            cl.put(&id, &v).await.unwrap();
                            let back = cl.get(&id).await.unwrap();
                            assert!(back == v, "{} bytes came back different", len);
                            let st = cl.stat(&id).await.unwrap();
                            assert_eq!((st.len as usize, st.crc32c), (len, crc32c::crc32c(&v)));
                            if len > 10 {
                                let r = cl.get_range(&id, 3, (len / 2) as u32).await.unwrap();
                                assert!(r == v[3..3 + len / 2]);
                            }
                            if rep == 2 {
                                assert!(cl.delete(&id).await.unwrap());
                                assert!(!cl.delete(&id).await.unwrap());
                                assert!(cl.get(&id).await.unwrap_err().is_not_found());
                            } else {
                                mine.insert(id, (len as u32, crc32c::crc32c(&v)));
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        let mut all = BTreeMap::new();
        for t in tasks {
            all.extend(t.await);
        }
        // The inventory, paged by 7, is exactly the model.
        let cl = ChunkClient::connect(addr, opts()).await.unwrap();
        let mut seen = BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (page, more) = cl.inventory_page(after.as_deref(), 7).await.unwrap();
            assert!(page.len() <= 7);
            for i in &page {
                seen.insert(i.id.clone(), (i.len, i.crc32c));
            }
            after = page.last().map(|i| i.id.clone());
            if !more {
                break;
            }
        }
        assert_eq!(seen, all);
        let info = cl.node_info().await.unwrap();
        assert_eq!(info.shards as usize, all.len());
        // Clients send each request to the core that owns its id.
        assert!(
            info.forwarded_requests * 4 < info.local_requests,
            "{} requests forwarded between cores, {} served locally",
            info.forwarded_requests,
            info.local_requests
        );
        assert!(info.writable && info.engine_shards == 2 && info.capacity_bytes > 0);
        all
    });
    assert_eq!(model.len(), 8 * SIZES.len() * 2);
}

/// Sends requests the typed client would refuse, straight on the wire.
#[test]
fn bad_requests_get_typed_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Chunkd::start(&dir.path().join("n1"));
    let addr = srv.addr;
    on_glommio(move || async move {
        let cl = ChunkClient::connect(addr, opts()).await.unwrap();
        cl.put(b"keep", b"precious").await.unwrap();
        let stream = tessera_rpc::conn::connect_tcp(addr, Duration::from_secs(3))
            .await
            .unwrap();
        let raw: chunk_server::Client = tessera_rpc::conn::client_side(stream);

        async fn put_kind(
            raw: &chunk_server::Client,
            id: &[u8],
            data: &[u8],
            crc: u32,
        ) -> Option<RemoteKind> {
            let mut r = raw.put_shard_request();
            r.get().set_id(id);
            r.get().set_data(data);
            r.get().set_crc32c(crc);
            let resp = r.send().promise.await.unwrap();
            let resp = resp.get().unwrap();
            resp.has_error().then(|| kind(resp.get_error().unwrap()))
        }
        fn kind(e: tessera_rpc::chunk_capnp::error::Reader<'_>) -> RemoteKind {
            let msg = e.get_message().unwrap().to_str().unwrap().to_string();
            assert!(msg.len() > 10, "error message too terse: {msg}");
            match e.get_kind().unwrap() {
                tessera_rpc::chunk_capnp::error::Kind::NotFound => RemoteKind::NotFound,
                tessera_rpc::chunk_capnp::error::Kind::TooLarge => RemoteKind::TooLarge,
                tessera_rpc::chunk_capnp::error::Kind::InvalidArgument => {
                    RemoteKind::InvalidArgument
                }
                other => panic!("unexpected kind {other:?}: {msg}"),
            }
        }
        let ok = b"data";
        let crc = crc32c::crc32c(ok);
        assert_eq!(
            put_kind(&raw, b"", ok, crc).await,
            Some(RemoteKind::InvalidArgument)
        );
        assert_eq!(
            put_kind(&raw, &[7u8; 129], ok, crc).await,
            Some(RemoteKind::InvalidArgument)
        );
        assert_eq!(
            put_kind(&raw, b"keep", b"other", crc).await,
            Some(RemoteKind::InvalidArgument),
            "crc mismatch must be refused"
        );
        let big = vec![1u8; (4 << 20) + 1];
        assert_eq!(
            put_kind(&raw, b"big", &big, crc32c::crc32c(&big)).await,
            Some(RemoteKind::TooLarge)
        );

        // Streams: over the limit, and shorter than announced.
        let mut r = raw.put_shard_stream_request();
        r.get().set_id(b"huge");
        r.get().set_length((16 << 20) + 1);
        let resp = r.send().promise.await.unwrap();
        assert_eq!(
            kind(resp.get().unwrap().get_error().unwrap()),
            RemoteKind::TooLarge
        );
        let mut r = raw.put_shard_stream_request();
        r.get().set_id(b"short");
        r.get().set_length(100);
        r.get().set_crc32c(0);
        let resp = r.send().promise.await.unwrap();
        let sink = resp.get().unwrap().get_sink().unwrap();
        let mut w = sink.write_request();
        w.get().set_chunk(&[1u8; 50]);
        w.send().await.unwrap();
        let fin = sink.finish_request().send().promise.await.unwrap();
        assert_eq!(
            kind(fin.get().unwrap().get_error().unwrap()),
            RemoteKind::InvalidArgument
        );
        // Writing more than announced breaks that stream only.
        let mut r = raw.put_shard_stream_request();
        r.get().set_id(b"long");
        r.get().set_length(10);
        let resp = r.send().promise.await.unwrap();
        let sink = resp.get().unwrap().get_sink().unwrap();
        let mut w = sink.write_request();
        w.get().set_chunk(&[1u8; 50]);
        let _ = w.send().await;
        assert!(sink.finish_request().send().promise.await.is_err());

        // Reads: unknown id, range beyond the end, too much inline.
        for (id, off, len, want) in [
            (&b"nope"[..], 0u32, 0u32, RemoteKind::NotFound),
            (&b"keep"[..], 9, 0, RemoteKind::InvalidArgument),
            (&b"keep"[..], 2, 7, RemoteKind::InvalidArgument),
            (&b"keep"[..], 0, (4 << 20) + 1, RemoteKind::TooLarge),
        ] {
            let mut r = raw.get_shard_request();
            r.get().set_id(id);
            r.get().set_offset(off);
            r.get().set_length(len);
            let resp = r.send().promise.await.unwrap();
            assert_eq!(
                kind(resp.get().unwrap().get_error().unwrap()),
                want,
                "get {off}+{len}"
            );
        }
        for limit in [0u32, 10_001] {
            let mut r = raw.inventory_request();
            r.get().set_limit(limit);
            let resp = r.send().promise.await.unwrap();
            assert_eq!(
                kind(resp.get().unwrap().get_error().unwrap()),
                RemoteKind::InvalidArgument
            );
        }
        // The typed client refuses the same mistakes before sending.
        assert!(matches!(
            cl.put(b"", b"x").await,
            Err(tessera_rpc::Error::Invalid(_))
        ));
        assert!(matches!(
            cl.inventory_page(None, 0).await,
            Err(tessera_rpc::Error::Invalid(_))
        ));
        // Nothing changed.
        assert_eq!(cl.get(b"keep").await.unwrap(), b"precious");
        let all = cl.inventory_all().await.unwrap();
        assert_eq!(
            all.iter().map(|i| i.id.as_slice()).collect::<Vec<_>>(),
            vec![&b"keep"[..]]
        );
    });
}

/// Many small puts at once from one client share `putShards` calls; each
/// gets its own answer (a bad id only its own error), and what is stored is
/// exactly what was acknowledged, over generated sizes and duplicates.
#[test]
fn batched_puts_share_calls_and_each_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Chunkd::start(&dir.path().join("n1"));
    let addr = srv.addr;
    let (stats, stored) = on_glommio(move || async move {
        let cl = Rc::new(ChunkClient::connect(addr, opts()).await.unwrap());
        // Sizes around the batching limit (64 KiB) and the empty shard;
        // every 7th id repeats an earlier one with the same bytes (a retry).
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut jobs = Vec::new();
        for n in 0..400u64 {
            let id = if n % 7 == 6 {
                format!("b{}", n - 3).into_bytes()
            } else if n % 50 == 49 {
                Vec::new() // refused by the client, alone
            } else {
                format!("b{n}").into_bytes()
            };
            let len = match next() % 4 {
                0 => 0,
                1 => (next() % 4096) as usize,
                2 => (60 << 10) + (next() % (8 << 10)) as usize,
                _ => (next() % (64 << 10)) as usize,
            };
            jobs.push((id, len));
        }
        // Same id, same bytes: the length is the id's first one.
        let mut first_len = BTreeMap::new();
        for (id, len) in &mut jobs {
            *len = *first_len.entry(id.clone()).or_insert(*len);
        }
        let tasks: Vec<_> = jobs
            .into_iter()
            .map(|(id, len)| {
                let cl = cl.clone();
                glommio::spawn_local(async move {
                    let data = if id.is_empty() {
                        vec![1u8; len]
                    } else {
                        content(&id, len)
                    };
                    let r = cl.put_batched(&id, &data).await;
                    (id, len, r)
                })
            })
            .collect();
        let mut acked = BTreeMap::new();
        for t in tasks {
            let (id, len, r) = t.await;
            if id.is_empty() {
                assert!(
                    matches!(r, Err(tessera_rpc::Error::Invalid(_))),
                    "an empty id must be refused: {r:?}"
                );
                continue;
            }
            r.unwrap_or_else(|e| panic!("put of {} failed: {e}", String::from_utf8_lossy(&id)));
            acked.insert(id, len);
        }
        for (id, len) in &acked {
            let v = cl.get(id).await.unwrap();
            assert!(
                v == content(id, *len),
                "{} came back different",
                String::from_utf8_lossy(id)
            );
        }
        let listed = cl.inventory_all().await.unwrap();
        let listed: BTreeMap<_, _> = listed.into_iter().map(|i| (i.id, i.len as usize)).collect();
        assert_eq!(
            listed, acked,
            "the store holds exactly what was acknowledged"
        );
        (cl.put_batch_stats(), acked.len())
    });
    // 400 puts started at once: most must have shared calls.
    assert!(
        stats.calls > 0 && stats.shards >= 2 * stats.calls && stats.shards > 200,
        "puts were not batched: {stats:?} for {stored} shards"
    );
    // chunkd speaks the framed transport: every batch went that way.
    assert_eq!(
        stats.framed, stats.calls,
        "batches went as Cap'n Proto calls: {stats:?}"
    );
}

/// `putShards` sent straight on the wire: a call breaking the contract is
/// refused whole with nothing stored; within a valid call each bad shard
/// fails alone, by position, and the others are stored.
#[test]
fn put_shards_refuses_bad_calls_whole_and_bad_shards_alone() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Chunkd::start(&dir.path().join("n1"));
    let addr = srv.addr;
    on_glommio(move || async move {
        let cl = ChunkClient::connect(addr, opts()).await.unwrap();
        let stream = tessera_rpc::conn::connect_tcp(addr, Duration::from_secs(3))
            .await
            .unwrap();
        let raw: chunk_server::Client = tessera_rpc::conn::client_side(stream);
        type Shard<'a> = (&'a [u8], &'a [u8], u32);
        async fn call(
            raw: &chunk_server::Client,
            shards: &[Shard<'_>],
        ) -> (Option<RemoteKind>, Vec<(u32, RemoteKind)>) {
            let mut r = raw.put_shards_request();
            let mut list = r.get().init_shards(shards.len() as u32);
            for (i, (id, data, crc)) in shards.iter().enumerate() {
                let mut s = list.reborrow().get(i as u32);
                s.set_id(id);
                s.set_data(data);
                s.set_crc32c(*crc);
            }
            let resp = r.send().promise.await.unwrap();
            let resp = resp.get().unwrap();
            let whole = resp.has_error().then(|| kind(resp.get_error().unwrap()));
            let failed = resp
                .get_failed()
                .unwrap()
                .iter()
                .map(|f| (f.get_index(), kind(f.get_error().unwrap())))
                .collect();
            (whole, failed)
        }
        fn kind(e: tessera_rpc::chunk_capnp::error::Reader<'_>) -> RemoteKind {
            use tessera_rpc::chunk_capnp::error::Kind as K;
            let msg = e.get_message().unwrap().to_str().unwrap().to_string();
            assert!(msg.len() > 10, "error message too terse: {msg}");
            match e.get_kind().unwrap() {
                K::TooLarge => RemoteKind::TooLarge,
                K::InvalidArgument => RemoteKind::InvalidArgument,
                other => panic!("unexpected kind {other:?}: {msg}"),
            }
        }
        let ok = b"fine bytes";
        let crc = crc32c::crc32c(ok);
        // Whole calls refused: no shards, too many, too much data.
        assert_eq!(
            call(&raw, &[]).await,
            (Some(RemoteKind::InvalidArgument), vec![])
        );
        let many: Vec<Shard<'_>> = (0..257).map(|_| (&b"many"[..], &ok[..], crc)).collect();
        assert_eq!(
            call(&raw, &many).await,
            (Some(RemoteKind::InvalidArgument), vec![])
        );
        let mib = vec![3u8; 1 << 20];
        let mcrc = crc32c::crc32c(&mib);
        let heavy: Vec<Shard<'_>> = (0..5).map(|_| (&b"heavy"[..], &mib[..], mcrc)).collect();
        assert_eq!(
            call(&raw, &heavy).await,
            (Some(RemoteKind::TooLarge), vec![])
        );
        // Bad shards fail alone: a wrong crc, an empty id, a long id.
        let long = [9u8; 129];
        let (whole, failed) = call(
            &raw,
            &[
                (b"good-0", ok, crc),
                (b"bad-crc", ok, crc ^ 1),
                (b"", ok, crc),
                (b"good-3", ok, crc),
                (&long, ok, crc),
            ],
        )
        .await;
        assert_eq!(whole, None);
        assert_eq!(
            failed,
            vec![
                (1, RemoteKind::InvalidArgument),
                (2, RemoteKind::InvalidArgument),
                (4, RemoteKind::InvalidArgument)
            ]
        );
        let mut ids: Vec<Vec<u8>> = cl
            .inventory_all()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        ids.sort();
        assert_eq!(ids, vec![b"good-0".to_vec(), b"good-3".to_vec()]);
        assert_eq!(cl.get(b"good-3").await.unwrap(), ok);
    });
}

/// The framed transport (`tessera_rpc::frames`) refuses what Cap'n Proto
/// `putShards` refuses, the same way: whole calls (no shards, too many, too
/// much data) and bad shards alone; a malformed payload or an unknown
/// method gets an error answer on a connection that goes on working; a
/// frame over the size limit ends only its connection. The store holds
/// exactly the shards acknowledged.
#[test]
fn framed_put_shards_refuses_bad_calls_and_bad_frames() {
    use tessera_rpc::frames::{self, FrameConn, ShardIn};
    let dir = tempfile::tempdir().unwrap();
    let srv = Chunkd::start(&dir.path().join("n1"));
    let addr = srv.addr;
    on_glommio(move || async move {
        let cl = ChunkClient::connect(addr, opts()).await.unwrap();
        let open = || async {
            let s = tessera_rpc::conn::connect_tcp(addr, Duration::from_secs(3))
                .await
                .unwrap();
            FrameConn::open(s)
                .await
                .unwrap()
                .expect("chunkd speaks frames")
        };
        let (conn, hello) = open().await;
        assert_eq!(hello.engine_shards, 2);
        assert!(hello.serving_shard < 2);
        assert!(!hello.node_id.is_empty());
        type Outcome = Result<Vec<(u32, RemoteKind)>, RemoteKind>;
        async fn call(conn: &FrameConn, shards: &[ShardIn<'_>]) -> Outcome {
            let (status, payload) = conn
                .call(|id| frames::put_shards_frame(id, shards.iter().copied()))
                .await
                .unwrap();
            answer(status, &payload)
        }
        fn answer(status: u8, payload: &[u8]) -> Outcome {
            if status == frames::STATUS_OK {
                let failed = frames::decode_failures(payload).unwrap();
                for f in &failed {
                    assert!(f.message.len() > 10, "error message too terse: {f:?}");
                }
                Ok(failed.into_iter().map(|f| (f.index, f.kind)).collect())
            } else {
                let e = frames::decode_error(payload).unwrap();
                assert!(e.message.len() > 10, "error message too terse: {e:?}");
                Err(e.kind)
            }
        }
        let shard = |id: &'static [u8], data: &'static [u8], crc| ShardIn {
            id,
            data,
            crc32c: crc,
        };
        let ok: &'static [u8] = b"fine bytes";
        let crc = crc32c::crc32c(ok);
        // Whole calls refused: no shards, too many, too much data.
        assert_eq!(call(&conn, &[]).await, Err(RemoteKind::InvalidArgument));
        let many: Vec<ShardIn<'_>> = (0..257).map(|_| shard(b"many", ok, crc)).collect();
        assert_eq!(call(&conn, &many).await, Err(RemoteKind::InvalidArgument));
        let mib: &'static [u8] = Box::leak(vec![3u8; 1 << 20].into_boxed_slice());
        let mcrc = crc32c::crc32c(mib);
        let mut heavy: Vec<ShardIn<'_>> = (0..4).map(|_| shard(b"heavy", mib, mcrc)).collect();
        heavy.push(shard(b"heavy-1", b"x", crc32c::crc32c(b"x")));
        assert_eq!(call(&conn, &heavy).await, Err(RemoteKind::TooLarge));
        // Bad shards fail alone: a wrong crc, an empty id, a long id.
        let long: &'static [u8] = &[9u8; 129];
        let mixed = [
            shard(b"good-0", ok, crc),
            shard(b"bad-crc", ok, crc ^ 1),
            shard(b"", ok, crc),
            shard(b"good-3", ok, crc),
            shard(long, ok, crc),
        ];
        assert_eq!(
            call(&conn, &mixed).await,
            Ok(vec![
                (1, RemoteKind::InvalidArgument),
                (2, RemoteKind::InvalidArgument),
                (4, RemoteKind::InvalidArgument)
            ])
        );
        // A payload whose count lies, and a method nobody knows: error
        // answers, and the connection still serves.
        let lie = |id: u64| {
            let mut f = frames::put_shards_frame(id, [shard(b"lie", ok, crc)].into_iter());
            f[16..20].copy_from_slice(&7u32.to_le_bytes());
            f
        };
        let (status, payload) = conn.call(lie).await.unwrap();
        assert_eq!(answer(status, &payload), Err(RemoteKind::InvalidArgument));
        let unknown = |id: u64| {
            let mut f = frames::put_shards_frame(id, [shard(b"unknown", ok, crc)].into_iter());
            f[12] = 99;
            f
        };
        let (status, payload) = conn.call(unknown).await.unwrap();
        assert_eq!(answer(status, &payload), Err(RemoteKind::InvalidArgument));
        assert_eq!(call(&conn, &[shard(b"good-5", ok, crc)]).await, Ok(vec![]));
        // A frame over the limit ends its connection, nothing else.
        let (big, _) = open().await;
        let over = |id: u64| {
            let mut f = frames::put_shards_frame(id, [shard(b"over", ok, crc)].into_iter());
            f[..4].copy_from_slice(&((frames::FRAME_MAX_BYTES + 1) as u32).to_le_bytes());
            f
        };
        assert!(
            big.call(over).await.is_err(),
            "an oversized frame was answered"
        );
        assert!(big.broken().is_some());
        assert_eq!(call(&conn, &[shard(b"good-6", ok, crc)]).await, Ok(vec![]));
        let mut ids: Vec<Vec<u8>> = cl
            .inventory_all()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        ids.sort();
        let want: Vec<Vec<u8>> = ["good-0", "good-3", "good-5", "good-6"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(ids, want);
        assert_eq!(cl.get(b"good-6").await.unwrap(), ok);
    });
}

/// Random bytes, truncated frames, absurd segment tables and garbage after
/// the framed transport's preamble on fresh connections: each ends that
/// connection only.
#[test]
fn garbage_on_the_socket_never_hurts_the_server_or_its_data() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Chunkd::start(&dir.path().join("n1"));
    let addr = srv.addr;
    on_glommio(move || async move {
        let cl = ChunkClient::connect(addr, opts()).await.unwrap();
        cl.put(b"keep", &content(b"keep", 70_000)).await.unwrap();
    });
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for case in 0..300u32 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let len = (next() % 4096) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        match case % 4 {
            // A frame header claiming many segments / huge segments.
            0 if len >= 8 => {
                bytes[..8].copy_from_slice(&[0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0x7f])
            }
            // The framed transport's preamble, then garbage frames.
            2 if len >= 8 => bytes[..8].copy_from_slice(&tessera_rpc::frames::PREAMBLE),
            // One segment of plausible size, garbage words.
            1 if len >= 8 => {
                bytes[..4].copy_from_slice(&0u32.to_le_bytes());
                bytes[4..8].copy_from_slice(&(((len - 8) / 8) as u32).to_le_bytes());
            }
            _ => {}
        }
        let _ = s.write_all(&bytes);
        drop(s);
    }
    assert!(srv.is_running(), "chunkd died on garbage input");
    on_glommio(move || async move {
        let cl = ChunkClient::connect(addr, opts()).await.unwrap();
        assert_eq!(cl.get(b"keep").await.unwrap(), content(b"keep", 70_000));
        cl.put(b"after", b"still works").await.unwrap();
    });
}

/// kill -9 in the middle of heavy concurrent writes, three times: every
/// acknowledged shard reads back intact after restart; every other one is
/// absent or intact, never corrupt.
#[test]
fn kill9_under_heavy_writes_keeps_every_acknowledged_shard() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let mut acked_all: Vec<Vec<u8>> = Vec::new();
    let mut attempted_all: Vec<Vec<u8>> = Vec::new();
    for round in 0..3u32 {
        let mut srv = Chunkd::start(&data);
        let addr = srv.addr;
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let attempted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a2, t2) = (acked.clone(), attempted.clone());
        let writer = std::thread::spawn(move || {
            on_glommio(move || async move {
                let cl = Rc::new(ChunkClient::connect(addr, quick_opts(1)).await.unwrap());
                let tasks: Vec<_> = (0..24u32)
                    .map(|w| {
                        let (cl, a2, t2) = (cl.clone(), a2.clone(), t2.clone());
                        glommio::spawn_local(async move {
                            for n in 0..100_000u32 {
                                let id = format!("r{round}-w{w}-n{n}").into_bytes();
                                let len = [100, 4096, 20_000, 300_000, 5 << 20][(n % 5) as usize];
                                t2.lock().unwrap().push(id.clone());
                                // Half the writers' small puts share batched calls.
                                let data = content(&id, len);
                                let put = if w % 2 == 0 {
                                    cl.put_batched(&id, &data).await
                                } else {
                                    cl.put(&id, &data).await
                                };
                                match put {
                                    Ok(()) => a2.lock().unwrap().push(id),
                                    Err(_) => return,
                                }
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await;
                }
            })
        });
        std::thread::sleep(Duration::from_millis(700 + 400 * round as u64));
        srv.kill9();
        writer.join().unwrap();
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert!(
            acked.len() > 20,
            "round {round}: only {} puts acknowledged before the kill",
            acked.len()
        );
        acked_all.extend(acked);
        attempted_all.extend(std::mem::take(&mut *attempted.lock().unwrap()));
    }
    let srv = Chunkd::start(&data);
    let addr = srv.addr;
    let acked: std::collections::HashSet<Vec<u8>> = acked_all.into_iter().collect();
    let (n_acked, n_present) = on_glommio(move || async move {
        let cl = ChunkClient::connect(addr, opts()).await.unwrap();
        let mut present = 0;
        for id in &attempted_all {
            match cl.get(id).await {
                Ok(v) => {
                    let len = v.len();
                    assert!(
                        v == content(id, len),
                        "{} came back corrupt",
                        String::from_utf8_lossy(id)
                    );
                    present += 1;
                }
                Err(e) if e.is_not_found() => {
                    assert!(
                        !acked.contains(id),
                        "acknowledged {} is missing",
                        String::from_utf8_lossy(id)
                    );
                }
                Err(e) => panic!("{}: {e}", String::from_utf8_lossy(id)),
            }
        }
        (acked.len(), present)
    });
    assert!(n_present >= n_acked);
    eprintln!("kill -9 x3: {n_acked} acknowledged, {n_present} present after restart");
}

/// SIGTERM while writes run (half of them batched, on the framed
/// transport): the server refuses new requests, finishes the ones in
/// flight, flushes, exits 0; after restart every acknowledged shard is
/// there.
#[test]
fn sigterm_drains_in_flight_requests_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let mut srv = Chunkd::start(&data);
    let addr = srv.addr;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let a2 = acked.clone();
    let writer = std::thread::spawn(move || {
        on_glommio(move || async move {
            let cl = Rc::new(
                ChunkClient::connect(
                    addr,
                    ClientOptions {
                        attempts: 1,
                        ..opts()
                    },
                )
                .await
                .unwrap(),
            );
            let tasks: Vec<_> = (0..8u32)
                .map(|w| {
                    let (cl, a2) = (cl.clone(), a2.clone());
                    glommio::spawn_local(async move {
                        for n in 0..100_000u32 {
                            let id = format!("w{w}-n{n}").into_bytes();
                            let data = content(&id, 8192);
                            // Half the writers batch: framed requests are
                            // in flight when the drain begins too.
                            let r = if w % 2 == 1 {
                                cl.put_batched(&id, &data).await
                            } else {
                                cl.put(&id, &data).await
                            };
                            if r.is_err() {
                                return;
                            }
                            a2.lock().unwrap().push(id);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
        })
    });
    std::thread::sleep(Duration::from_millis(800));
    let (status, lines) = srv.terminate();
    writer.join().unwrap();
    assert!(status.success(), "chunkd exited with {status}");
    assert!(
        lines.iter().any(|l| l.contains("stopped cleanly")),
        "{lines:?}"
    );
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(!acked.is_empty());
    let srv = Chunkd::start(&data);
    let addr = srv.addr;
    on_glommio(move || async move {
        let cl = ChunkClient::connect(addr, opts()).await.unwrap();
        for id in &acked {
            assert_eq!(cl.get(id).await.unwrap(), content(id, 8192));
        }
    });
}

/// A flipped bit in a stored shard: get answers `checksum` (never the
/// bytes), and a scrub started over RPC reports exactly that shard.
#[test]
fn scrub_over_rpc_reports_a_flipped_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let mut srv = Chunkd::start(&data);
    let addr = srv.addr;
    let victim = b"victim-shard".to_vec();
    let v2 = victim.clone();
    on_glommio(move || async move {
        let cl = ChunkClient::connect(addr, opts()).await.unwrap();
        for k in 0..50u32 {
            let id = format!("other-{k}").into_bytes();
            cl.put(&id, &content(&id, 10_000)).await.unwrap();
        }
        cl.put(&v2, &content(&v2, 10_000)).await.unwrap();
    });
    assert!(srv.terminate().0.success());
    // Find the victim's payload in the segment files and flip one bit.
    let needle = content(&victim, 10_000);
    let mut flipped = false;
    for shard in std::fs::read_dir(data.join("engine")).unwrap() {
        let shard = shard.unwrap().path();
        if !shard.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&shard).unwrap() {
            let f = f.unwrap().path();
            if !f.file_name().unwrap().to_string_lossy().starts_with("seg-") {
                continue;
            }
            let mut bytes = std::fs::read(&f).unwrap();
            if let Some(at) = bytes.windows(64).position(|w| w == &needle[..64]) {
                bytes[at + 5000] ^= 0x10;
                std::fs::write(&f, &bytes).unwrap();
                flipped = true;
            }
        }
    }
    assert!(flipped, "victim payload not found on disk");
    let srv = Chunkd::start(&data);
    let addr = srv.addr;
    on_glommio(move || async move {
        let cl = ChunkClient::connect(addr, opts()).await.unwrap();
        let e = cl.get(&victim).await.unwrap_err();
        assert_eq!(e.remote_kind(), Some(RemoteKind::Checksum), "{e}");
        // Drain the report the read made, then scrub.
        let _ = cl.bad_shards(100).await.unwrap();
        assert!(cl.start_scrub(0).await.unwrap());
        let mut status = cl.scrub_status().await.unwrap();
        for _ in 0..2000 {
            if !status.running {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
            status = cl.scrub_status().await.unwrap();
        }
        assert!(!status.running && status.passes >= 1, "{status:?}");
        let (bad, dropped) = cl.bad_shards(100).await.unwrap();
        assert_eq!(dropped, 0);
        let ids: Vec<_> = bad.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, vec![victim.clone()], "{bad:?}");
        // Every other shard still reads.
        for k in 0..50u32 {
            let id = format!("other-{k}").into_bytes();
            assert_eq!(cl.get(&id).await.unwrap(), content(&id, 10_000));
        }
    });
}

/// A proxy between a real client and the server flips random bytes of the
/// client's messages: every corrupted request ends in a typed error or a
/// closed connection, the server stays up, and nothing stored is wrong.
#[test]
fn mutated_client_messages_never_store_wrong_bytes() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Chunkd::start(&dir.path().join("n1"));
    let addr = srv.addr;
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let paddr = proxy.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for conn in proxy.incoming().take(60) {
            let Ok(client) = conn else { break };
            let Ok(server) = std::net::TcpStream::connect(addr) else {
                break;
            };
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut rng = seed;
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    // Flip one byte in about a third of the reads.
                    if rng % 3 == 0 {
                        let at = (rng >> 8) as usize % n;
                        buf[at] ^= 1 << ((rng >> 40) % 8);
                    }
                    if s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_out.shutdown(std::net::Shutdown::Both);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    on_glommio(move || async move {
        let direct = ChunkClient::connect(addr, opts()).await.unwrap();
        direct.put(b"keep", &content(b"keep", 9000)).await.unwrap();
        let fragile = ClientOptions {
            attempts: 1,
            call_timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        };
        let mut ids = Vec::new();
        for c in 0..40u32 {
            let Ok(cl) = ChunkClient::connect(paddr, fragile.clone()).await else {
                continue;
            };
            for k in 0..5u32 {
                let id = format!("m{c}-{k}").into_bytes();
                let _ = cl.put(&id, &content(&id, 3000 + 997 * k as usize)).await;
                let _ = cl.get(&id).await;
                ids.push(id);
            }
        }
        assert_eq!(direct.get(b"keep").await.unwrap(), content(b"keep", 9000));
        // Whatever is stored under our ids is exactly what was sent.
        let mut stored = 0;
        for id in &ids {
            match direct.get(id).await {
                Ok(v) => {
                    let len = v.len();
                    assert!(
                        v == content(id, len),
                        "{} stored wrong bytes",
                        String::from_utf8_lossy(id)
                    );
                    stored += 1;
                }
                Err(e) => assert!(e.is_not_found(), "{e}"),
            }
        }
        // Shards stored under ids the mutation produced carry a valid crc.
        for item in direct.inventory_all().await.unwrap() {
            let v = direct.get(&item.id).await.unwrap();
            assert_eq!(crc32c::crc32c(&v), item.crc32c);
        }
        eprintln!(
            "mutating proxy: {stored} of {} shards stored intact, the rest refused",
            ids.len()
        );
    });
    assert!(srv.is_running(), "chunkd died on mutated messages");
}

/// One client across a server restart on the same address: calls made
/// while it is down fail after their retries with a connection error; the
/// first call after it is back reconnects by itself.
#[test]
fn client_reconnects_after_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let srv = std::sync::Arc::new(std::sync::Mutex::new(Some(Chunkd::start(&data))));
    let addr = srv.lock().unwrap().as_ref().unwrap().addr;
    let (to_test, from_test) = std::sync::mpsc::channel::<()>();
    let (to_client, from_client) = std::sync::mpsc::channel::<u32>();
    let s2 = srv.clone();
    let data2 = data.clone();
    let restarter = std::thread::spawn(move || {
        // Step 1: the client has written; stop the server.
        from_test.recv().unwrap();
        let mut old = s2.lock().unwrap().take().unwrap();
        assert!(old.terminate().0.success());
        to_client.send(1).unwrap();
        // Step 2: the client saw the failure; start again on the same port.
        from_test.recv().unwrap();
        *s2.lock().unwrap() = Some(Chunkd::start_at(&data2, &addr.to_string(), &[]));
        to_client.send(2).unwrap();
    });
    on_glommio(move || async move {
        let cl = Rc::new(ChunkClient::connect(addr, quick_opts(3)).await.unwrap());
        cl.put(b"a", b"before").await.unwrap();
        // A small put goes on the framed transport: its connection breaks
        // with the restart too and must be replaced.
        cl.put_batched(b"c", b"framed before").await.unwrap();
        to_test.send(()).unwrap();
        while from_client.try_recv().is_err() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let e = cl.get(b"a").await.unwrap_err();
        assert!(
            matches!(
                e,
                tessera_rpc::Error::Connect { .. } | tessera_rpc::Error::Transport { .. }
            ),
            "{e}"
        );
        to_test.send(()).unwrap();
        while from_client.try_recv().is_err() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(cl.get(b"a").await.unwrap(), b"before");
        cl.put(b"b", b"after").await.unwrap();
        cl.put_batched(b"d", b"framed after").await.unwrap();
        assert_eq!(cl.get(b"c").await.unwrap(), b"framed before");
        assert_eq!(cl.get(b"d").await.unwrap(), b"framed after");
    });
    restarter.join().unwrap();
}

/// A chunk server restarted while its client is idle: the client's framed
/// connections broke unseen, and the next batched puts replace them (and
/// still go framed) instead of falling back to Cap'n Proto.
#[test]
fn framed_connections_are_replaced_after_an_idle_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let srv = std::sync::Arc::new(std::sync::Mutex::new(Some(Chunkd::start(&data))));
    let addr = srv.lock().unwrap().as_ref().unwrap().addr;
    on_glommio(move || async move {
        let cl = Rc::new(ChunkClient::connect(addr, quick_opts(3)).await.unwrap());
        // Enough puts at once that most leave in shared (framed) calls.
        let burst = |round: u32| {
            let tasks: Vec<_> = (0..64u32)
                .map(|n| {
                    let cl = cl.clone();
                    glommio::spawn_local(async move {
                        let id = format!("r{round}-{n}").into_bytes();
                        cl.put_batched(&id, &content(&id, 4096)).await.unwrap();
                    })
                })
                .collect();
            futures::future::join_all(tasks)
        };
        burst(0).await;
        let before = cl.put_batch_stats();
        assert!(before.framed > 0, "{before:?}");
        let mut old = srv.lock().unwrap().take().unwrap();
        assert!(old.terminate().0.success());
        *srv.lock().unwrap() = Some(Chunkd::start_at(&data, &addr.to_string(), &[]));
        // Time for the client to read the old connections' end.
        glommio::timer::sleep(Duration::from_millis(100)).await;
        // One put alone: it must find a new framed connection, not fall
        // back to Cap'n Proto.
        cl.put_batched(b"alone", b"after the restart")
            .await
            .unwrap();
        let single = cl.put_batch_stats();
        assert_eq!(
            single.framed_singles,
            before.framed_singles + 1,
            "the put after the restart did not go framed: {before:?} -> {single:?}"
        );
        burst(1).await;
        let after = cl.put_batch_stats();
        assert!(after.framed > before.framed, "{before:?} -> {after:?}");
        assert_eq!(
            after.framed, after.calls,
            "batches after the restart went as Cap'n Proto calls: {after:?}"
        );
        assert_eq!(cl.get(b"alone").await.unwrap(), b"after the restart");
        for round in 0..2u32 {
            for n in 0..64u32 {
                let id = format!("r{round}-{n}").into_bytes();
                assert_eq!(cl.get(&id).await.unwrap(), content(&id, 4096));
            }
        }
    });
}

proptest::proptest! {
    /// The client's routing rule is the engine's, for any id and shard count.
    #[test]
    fn client_routing_matches_the_engine(id in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..128), shards in 1usize..64) {
        proptest::prop_assert_eq!(tessera_rpc::chunk::owner_shard(&id, shards), tessera_engine::route(&id, shards));
    }
}

/// With one connection allowed per core, the client cannot open one on
/// every core; requests for the other core go over the connection it has
/// (the server forwards them) and all succeed.
#[test]
fn client_works_when_the_server_refuses_more_connections() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Chunkd::start_configured(
        &dir.path().join("n1"),
        "127.0.0.1:0",
        &[],
        "connections_per_core = 1\n",
    );
    let addr = srv.addr;
    on_glommio(move || async move {
        let cl = ChunkClient::connect(addr, opts()).await.unwrap();
        round_trips(&cl, "limited", 64, 5000).await;
    });
}

/// Puts `count` shards of `len` bytes named `PREFIX-k` and reads each back.
async fn round_trips(cl: &ChunkClient, prefix: &str, count: u32, len: usize) {
    for k in 0..count {
        let id = format!("{prefix}-{k}").into_bytes();
        cl.put(&id, &content(&id, len)).await.unwrap();
        assert_eq!(
            cl.get(&id).await.unwrap(),
            content(&id, len),
            "{prefix}-{k}"
        );
    }
}

fn sockets_named(path: &std::path::Path) -> usize {
    tessera_rpc::local::sockets_named(path).unwrap()
}

/// With a local socket directory, each executor listens on its own socket
/// there (0600, in a 0700 directory), a client given the directory sends
/// its calls through them (every shard's data round-trips), and a clean
/// stop removes them. A socket left by a server that is gone (nothing
/// listens) is passed over: the client dials TCP and works.
#[test]
fn local_sockets_carry_the_calls_and_a_stale_one_falls_back_to_tcp() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("sockets");
    let mut srv = Chunkd::start_with(
        &dir.path().join("n1"),
        &["--local-socket-dir", sockets.to_str().unwrap()],
    );
    let addr = srv.addr;
    let paths: Vec<_> = (0..2)
        .map(|n| tessera_rpc::local::server_socket(&sockets, &addr.to_string(), n).unwrap())
        .collect();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sockets), 0o700);
    for p in &paths {
        assert_eq!(mode(p), 0o600, "{}", p.display());
        assert_eq!(sockets_named(p), 1, "only the listener before any client");
    }
    let local = ClientOptions {
        local_socket_dir: Some(sockets.clone()),
        ..opts()
    };
    let (o, p2) = (local.clone(), paths.clone());
    on_glommio(move || async move {
        let cl = ChunkClient::connect(addr, o).await.unwrap();
        round_trips(&cl, "local", 32, 5000).await;
        for p in &p2 {
            assert!(
                sockets_named(p) >= 2,
                "no connection through {} while the client is open",
                p.display()
            );
        }
    });
    assert!(srv.terminate().0.success());
    for p in &paths {
        assert!(!p.exists(), "{} left after a clean stop", p.display());
    }

    // Stale sockets where a server that does not listen on them runs.
    let srv = Chunkd::start(&dir.path().join("n2"));
    let addr = srv.addr;
    for n in 0..2 {
        let p = tessera_rpc::local::server_socket(&sockets, &addr.to_string(), n).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        assert!(p.exists());
    }
    on_glommio(move || async move {
        let cl = ChunkClient::connect(addr, local).await.unwrap();
        round_trips(&cl, "stale", 8, 100).await;
    });
}

/// A port another process holds: chunkd exits with an error that names the
/// address and says what to do, and leaves its data directory usable.
#[test]
fn a_taken_port_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    refused_on(dir.path(), &taken);
    drop(holder);
    let mut c = Chunkd::start(&dir.path().join("d"));
    c.terminate();
}

/// A second chunk server given a port another one serves is refused, not
/// let in beside it by SO_REUSEPORT (each would get some connections).
#[test]
fn a_second_chunk_server_on_the_same_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Chunkd::start(&dir.path().join("first"));
    refused_on(dir.path(), &first.addr.to_string());
    first.terminate();
}

/// Runs a chunk server on `taken` and checks that it fails, naming the
/// address and what to do.
fn refused_on(dir: &std::path::Path, taken: &str) {
    let data = dir.join("d");
    let cfg = dir.join("d.toml");
    std::fs::write(
        &cfg,
        "segment_size_bytes = 33554432\npin_to_cores = false\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chunkd"))
        .arg("--config")
        .arg(&cfg)
        .arg("--data")
        .arg(&data)
        .args([
            "--listen",
            taken,
            "--shards",
            "2",
            "--log",
            "warn",
            "--insecure",
        ])
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running chunkd");
    // A chunk server that started anyway would run until killed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chunkd started on a taken port ({taken})");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!status.success(), "chunkd started on a taken port");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains(&format!("listening on {taken}")), "{err}");
    assert!(err.contains("choose another with --listen"), "{err}");
}
