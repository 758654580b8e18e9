//! End to end on `tessera dev`: real metad, chunkd and gateway processes.
//!
//! One cluster serves the whole test (starting one costs seconds), in
//! phases that each state what must hold:
//! 1. random blobs of many sizes (0 bytes to 24 MiB) round-trip byte-exact,
//!    whole and in random ranges;
//!    JSON documents round-trip as JSON values; an update with an unchanged
//!    cold part reuses its stripes (and says so), a changed one does not;
//! 2. the CLI: put/get/stat/ls/rm, `--json`, and bad input gets a clear
//!    error and the documented exit code; with a chunk server frozen
//!    (SIGSTOP), every object reads, by hedged parity reads;
//! 3. the gateway is killed (-9) in the middle of many writes and started
//!    again (with the other erasure code, so objects of both are read):
//!    every acknowledged write reads back, every unacknowledged one is
//!    either absent or exact, no blob's WAL intent carries its bytes, and
//!    the WAL holds no entry of that gateway except for dirty objects (the
//!    healer's); then a small write stuck with every chunk server stopped
//!    (SIGSTOP) when the gateway is killed again: its intent was logged,
//!    and replay after the restart abandons it (absent, entry finished);
//! 4. two chunk servers are killed (-9): every object still reads, new
//!    writes answer ok or accepted and read back (one under a prefix with
//!    its own erasure code);
//! 5. with fewer live chunk servers than k, a large write is refused with
//!    `insufficientNodes` (exit code 4) and a small one still works;
//! 6. Ctrl-C and a second `tessera dev` on the same directory bring every
//!    object back;
//! 7. a flood of connections from one address is cut at the per-peer limit
//!    and a client from another address is still served.

use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tessera_rpc::{GatewayErrorKind, PutIf, PutOutcome};

mod common;
use common::*;

const SIZES: &[usize] = &[
    0,
    1,
    100,
    4096,
    65_535,
    65_536,
    65_537,
    1 << 20,
    (4 << 20) - 1,
    (4 << 20) + 1,
    (9 << 20) + 123,
    24 << 20,
];

/// Documents: (key, document, hot field names).
fn documents() -> Vec<(String, serde_json::Value, Vec<String>)> {
    use serde_json::json;
    let big: Vec<serde_json::Value> = (0..20_000)
        .map(|i| json!({"i": i, "s": format!("item {i}")}))
        .collect();
    vec![
        (
            "doc/hot-only".into(),
            json!({"id": 1, "name": "small", "ok": true}),
            vec![],
        ),
        (
            "doc/array".into(),
            json!([1, 2, {"deep": [null, "x"]}]),
            vec![],
        ),
        (
            "doc/mixed".into(),
            json!({"id": 2, "title": "t", "body": "x".repeat(3000), "n": 1.5}),
            vec![],
        ),
        (
            "doc/named".into(),
            json!({"id": 3, "meta": {"a": "b".repeat(400)}, "big": big}),
            vec!["meta".into(), "missing".into()],
        ),
        ("doc/empty".into(), json!({}), vec![]),
        ("doc/string".into(), json!("just a string"), vec![]),
    ]
}

/// Runs `tessera dev` on `dir` with `extra`, expects it to fail with exit
/// code 1 before starting anything, and returns its stderr.
fn dev_fails(dir: &std::path::Path, extra: &[&str]) -> String {
    let o = Command::new(TESSERA)
        .arg("dev")
        .arg("--data")
        .arg(dir)
        .arg("--cluster")
        .arg(dir.join("cluster.toml"))
        .args(extra)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A layout the cluster could never hold is refused before anything starts.
#[test]
fn dev_refuses_more_shards_than_chunk_servers() {
    let dir = std::env::temp_dir().join(format!("tessera-e2e-km-{}", std::process::id()));
    let err = dev_fails(&dir, &["--chunk-servers", "5", "--k", "4", "--m", "2"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(err.contains("6 different chunk servers"), "{err}");
}

/// metad's group and partition counts are checked before anything
/// starts, and fixed once a directory has them.
#[test]
fn dev_refuses_bad_or_changed_metad_counts() {
    let dir = std::env::temp_dir().join(format!("tessera-e2e-groups-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dev = |extra: &[&str]| dev_fails(&dir, extra);
    let err = dev(&["--metad-groups", "0"]);
    assert!(err.contains("--metad-groups 0 is out of range"), "{err}");
    let err = dev(&["--wal-partitions", "100000"]);
    assert!(
        err.contains("--wal-partitions 100000 is out of range"),
        "{err}"
    );
    // A directory made with 2 groups (its layout file, as a first run
    // writes it) refuses 3, and one from before the counts were kept
    // refuses any.
    std::fs::create_dir_all(&dir).unwrap();
    let layout = "metad_ports = [1, 2, 3]\nchunk_ports = [4, 5, 6, 7, 8, 9]\ngateway_port = 10\ns3_port = 11\n";
    std::fs::write(
        dir.join("dev.toml"),
        format!("{layout}metad_groups = 2\nwal_partitions = 1\n"),
    )
    .unwrap();
    let err = dev(&["--metad-groups", "3"]);
    assert!(err.contains("was made with --metad-groups 2"), "{err}");
    std::fs::write(dir.join("dev.toml"), layout).unwrap();
    let err = dev(&["--wal-partitions", "1"]);
    assert!(err.contains("was made with metad's defaults"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dev_cluster_end_to_end() {
    // The read cache off: every read here must reach the chunk servers, so
    // that hedged and degraded reads are what is tested
    // (`read_cache_end_to_end` tests the cache).
    // Three metadata groups and two WAL partitions (not this machine's
    // defaults): the flags reach metad, listing merges across groups, and
    // the restart below passes them again.
    let mut dev = start_dev(
        "dev",
        6,
        &[
            "--gateway-cache-bytes",
            "0",
            "--metad-groups",
            "3",
            "--wal-partitions",
            "2",
        ],
    );
    let gw = gateway_addr(&dev);
    let metad_log = std::fs::read_to_string(dev.dir.join("data/logs/metad-1.log")).unwrap();
    assert!(
        metad_log.contains("3 metadata groups, 2 WAL partitions"),
        "{metad_log}"
    );

    // 1. Round trips of many sizes, whole and ranged.
    let mut objects: Vec<(String, u64, usize)> = Vec::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for (i, &len) in SIZES.iter().enumerate() {
        objects.push((format!("blob/{i:02}-{len}"), i as u64, len));
    }
    for i in 0..12 {
        let len = rng.gen_range(0..(3 << 20));
        objects.push((format!("rand/{i:02}"), 1000 + i, len));
    }
    let put = objects.clone();
    with_client(gw.clone(), move |c| async move {
        for (key, seed, len) in &put {
            let data = blob(*seed, *len);
            let (info, outcome) = c
                .put(key, &data)
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e}"));
            assert_eq!(
                outcome,
                PutOutcome::Ok,
                "{key}: all six chunk servers are up"
            );
            assert_eq!(info.size, *len as u64);
            assert!(!info.dirty);
            let back = c.get(key).await.unwrap();
            assert!(back == data, "{key} ({len} bytes) did not round-trip");
            if *len > tessera_rpc::gateway::PUT_MESSAGE_MAX_BYTES {
                // One message holds at most 4 MiB; `get` streams the rest.
                match c.get_range_info(key, 0, 0, &[]).await {
                    Err(tessera_rpc::Error::Gateway {
                        kind: GatewayErrorKind::TooLarge,
                        ..
                    }) => {}
                    other => panic!(
                        "{key}: one-message get of {len} bytes: {:?}",
                        other.map(|(d, _)| d.len())
                    ),
                }
            }
            let mut r = rand::rngs::SmallRng::seed_from_u64(*seed ^ 0xabc);
            for _ in 0..3 {
                if *len == 0 {
                    break;
                }
                let off = r.gen_range(0..*len);
                let n = r.gen_range(1..=(*len - off).min(3 << 20));
                let part = c.get_range(key, off as u64, n as u64).await.unwrap();
                assert!(part == data[off..off + n], "{key} range {off}+{n}");
            }
            let info = c.stat(key).await.unwrap();
            let want = if *len as u64 > 65_536 {
                "rs 4+2"
            } else {
                "replicated x3"
            };
            assert!(
                info.layout.starts_with(want),
                "{key}: layout {}",
                info.layout
            );
        }
        // Overwrite: the new version wins.
        let (k, s, l) = put[3].clone();
        c.put(&k, b"replaced").await.unwrap();
        assert_eq!(c.get(&k).await.unwrap(), b"replaced");
        c.put(&k, &blob(s, l)).await.unwrap();
        let (page, more) = c.list("blob/", "", 1000).await.unwrap();
        assert!(!more);
        assert_eq!(page.len(), SIZES.len());
        assert!(
            page.windows(2).all(|w| w[0].key < w[1].key),
            "list is in key order"
        );
    });

    // 1a. Conditional writes. Of six writers racing to create one key
    // (replicated, and erasure coded), exactly one wins and its bytes are
    // stored; of six racing to replace the version they all read, exactly
    // one wins; a stale version then loses. Losers get "precondition
    // failed" and store nothing.
    with_client(gw.clone(), move |c| async move {
        for (key, len) in [("cond/small", 1000usize), ("cond/large", 300_000)] {
            let race = |cond: PutIf, base: u64| {
                let c = &c;
                futures::future::join_all((base..base + 6).map(move |w| {
                    let cond = cond.clone();
                    async move { (w, c.put_if(key, &blob(w, len), &[], &cond).await) }
                }))
            };
            for (cond, base) in [(PutIf::Absent, 0), (PutIf::Version(Vec::new()), 100)] {
                let cond = match cond {
                    PutIf::Version(_) => PutIf::Version(c.stat(key).await.unwrap().version_id),
                    other => other,
                };
                let results = race(cond.clone(), base).await;
                let winners: Vec<u64> = results
                    .iter()
                    .filter(|(_, r)| r.is_ok())
                    .map(|(w, _)| *w)
                    .collect();
                assert_eq!(winners.len(), 1, "{key} {cond:?}: exactly one writer wins");
                for (w, r) in &results {
                    if let Err(e) = r {
                        assert!(
                            e.to_string().contains("precondition failed"),
                            "{key} writer {w}: {e}"
                        );
                    }
                }
                assert!(
                    c.get(key).await.unwrap() == blob(winners[0], len),
                    "{key}: the winner's bytes are stored"
                );
                if let PutIf::Version(_) = &cond {
                    let stale = c.put_if(key, b"late", &[], &cond).await;
                    assert!(stale.is_err(), "{key}: a stale version loses");
                }
            }
            c.delete(key).await.unwrap();
        }
    });

    // 1b. JSON documents.
    let docs = documents();
    let d2 = docs.clone();
    with_client(gw.clone(), move |c| async move {
        for (key, doc, hot) in &d2 {
            let hot: Vec<&str> = hot.iter().map(String::as_str).collect();
            let (_, outcome, skipped) = c
                .put_doc(key, &doc.to_string(), &hot)
                .await
                .unwrap_or_else(|e| panic!("putDoc {key}: {e}"));
            assert_eq!(outcome, PutOutcome::Ok);
            assert!(!skipped, "{key}: a first version has no cold part to reuse");
            let (back, _) = c.get_doc(key).await.unwrap();
            let back: serde_json::Value = serde_json::from_str(&back).unwrap();
            assert_eq!(&back, doc, "{key} did not round-trip");
        }
        // Same cold part, new hot field: the cold write is skipped.
        let (key, doc, _) = &d2[2];
        let before = c.status().await.unwrap().docs_cold_reused;
        let mut doc2 = doc.clone();
        doc2["title"] = serde_json::json!("renamed");
        let (_, _, skipped) = c.put_doc(key, &doc2.to_string(), &[]).await.unwrap();
        assert!(skipped, "an unchanged cold part is reused");
        assert_eq!(c.status().await.unwrap().docs_cold_reused, before + 1);
        let (back, _) = c.get_doc(key).await.unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&back).unwrap(),
            doc2
        );
        // Changed cold part: written again.
        doc2["body"] = serde_json::json!("y".repeat(5000));
        let (_, _, skipped) = c.put_doc(key, &doc2.to_string(), &[]).await.unwrap();
        assert!(!skipped);
        let (back, _) = c.get_doc(key).await.unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&back).unwrap(),
            doc2
        );
        c.put_doc(key, &doc.to_string(), &[]).await.unwrap();
        // A document is not a blob, and a blob is not a document.
        match c.get(key).await {
            Err(tessera_rpc::Error::Gateway {
                kind: GatewayErrorKind::InvalidArgument,
                message,
                ..
            }) => {
                assert!(message.contains("getDoc"), "{message}")
            }
            other => panic!("get of a document: {other:?}"),
        }
        assert!(c.get_doc("blob/03-4096").await.is_err());
    });

    // 2. The CLI, and bad input.
    let file = dev.dir.join("cli.bin");
    std::fs::write(&file, blob(42, 300_000)).unwrap();
    let o = tessera(&dev, &["put", "cli/file", file.to_str().unwrap()], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok: cli/file"));
    let out = dev.dir.join("cli.out");
    let o = tessera(
        &dev,
        &["get", "cli/file", "-o", out.to_str().unwrap()],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), blob(42, 300_000));
    let o = tessera(&dev, &["put", "cli/stdin"], Some(b"from stdin"));
    assert!(o.status.success());
    let o = tessera(&dev, &["get", "cli/stdin"], None);
    assert_eq!(o.stdout, b"from stdin");
    let o = tessera(&dev, &["--json", "stat", "cli/file"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["size"], 300_000);
    // Conditional puts: create-only, and compare-and-set on a version.
    let o = tessera(&dev, &["put", "cli/file", "--if-absent"], Some(b"no"));
    assert!(!o.status.success(), "an existing key refuses --if-absent");
    assert!(String::from_utf8_lossy(&o.stderr).contains("precondition failed"));
    let v1 = v["version_id"].as_str().unwrap().to_string();
    let f = file.to_str().unwrap();
    let o = tessera(&dev, &["put", "cli/file", f, "--if-version", &v1], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = tessera(&dev, &["put", "cli/file", f, "--if-version", &v1], None);
    assert!(!o.status.success(), "a replaced version is stale");
    let o = tessera(&dev, &["put", "cli/file", f, "--if-version", "zz"], None);
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not hex"));
    let o = tessera(&dev, &["--json", "ls", "cli/"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let o = tessera(&dev, &["rm", "cli/stdin"], None);
    assert!(o.status.success());
    let o = tessera(&dev, &["get", "cli/stdin"], None);
    assert_eq!(o.status.code(), Some(3), "unknown key: exit code 3");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no object under the key"));
    let long = "k".repeat(1001);
    let o = tessera(&dev, &["put", &long], Some(b"x"));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("1..=1000 bytes"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = tessera(
        &dev,
        &[
            "doc",
            "put",
            "cli/doc",
            r#"{"id":1,"tags":["a","b"]}"#,
            "--hot",
            "id",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = tessera(&dev, &["doc", "get", "cli/doc"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"id": 1, "tags": ["a", "b"]}));
    let o = tessera(&dev, &["doc", "put", "cli/bad", r#"{"id": 1,"#], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not valid JSON"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = tessera(&dev, &["--json", "status"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 6);
    assert!(v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["state"] == "live" && n["pid"].is_number()));

    // 2b. A chunk server frozen (SIGSTOP, not dead: the registry still
    // lists it): stripes with a data shard on it are read by hedging one
    // parity shard, and every object still reads.
    let frozen = pid_of(&dev, "chunkd-4");
    let before = with_client(gw.clone(), |c| async move {
        c.status().await.unwrap().reads_hedged
    });
    // SAFETY: kill(2) on a process of the dev cluster this test started.
    unsafe { libc::kill(frozen, libc::SIGSTOP) };
    check_all(&gw, objects.clone());
    let after = with_client(gw.clone(), |c| async move {
        c.status().await.unwrap().reads_hedged
    });
    // SAFETY: as above.
    unsafe { libc::kill(frozen, libc::SIGCONT) };
    assert!(
        after > before,
        "reads around a frozen chunk server were not hedged"
    );

    // 3. The gateway killed in the middle of writes, then started again.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, u64, usize)>::new()));
    let tried: Vec<(String, u64, usize)> = (0..40)
        .map(|i| {
            (
                format!("crash/{i:02}"),
                5000 + i,
                if i % 2 == 0 { 2 << 20 } else { 20_000 },
            )
        })
        .collect();
    let writer = {
        let (acked, tried) = (acked.clone(), tried.clone());
        let gw = gw.clone();
        std::thread::spawn(move || {
            with_client(gw.clone(), move |c| async move {
                let c = std::rc::Rc::new(c);
                // Four writers, so that some writes are acknowledged and
                // others are in flight when the gateway dies.
                let queue = std::rc::Rc::new(std::cell::RefCell::new(tried));
                let jobs = (0..4).map(|_| {
                    let (c, acked, queue) = (c.clone(), acked.clone(), queue.clone());
                    async move {
                        loop {
                            let Some((k, s, l)) = queue.borrow_mut().pop() else {
                                break;
                            };
                            match c.put(&k, &blob(s, l)).await {
                                Ok(_) => acked.lock().unwrap().push((k, s, l)),
                                Err(_) => break,
                            }
                        }
                    }
                });
                futures::future::join_all(jobs).await;
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    kill9(pid_of(&dev, "gateway"));
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "gateway killed with {} of {} writes acknowledged",
        acked.len(),
        tried.len()
    );
    assert!(
        acked.len() >= 8 && acked.len() < tried.len(),
        "the kill must land mid-way"
    );
    // What the killed gateway left in the WAL: intents, never a blob's
    // bytes (replay abandons what was not committed).
    let left = unfinished_wal_intents(&dev);
    for i in left.iter().filter(|i| i.doc_hot.is_none()) {
        assert!(
            !i.has_payload && i.payload.is_empty(),
            "the WAL intent of blob {} carries {} bytes of it",
            i.key,
            i.payload.len()
        );
    }
    eprintln!(
        "the killed gateway left {} WAL intents ({} replicated)",
        left.len(),
        left.iter().filter(|i| i.erasure.is_none()).count()
    );
    let mut gateway2 = restart_gateway(&dev, &gw, "gateway2.log");
    check_all(&gw, acked.clone());
    let unacked: Vec<_> = tried
        .iter()
        .filter(|t| !acked.contains(t))
        .cloned()
        .collect();
    with_client(gw.clone(), move |c| async move {
        for (k, s, l) in unacked {
            match c.get(&k).await {
                Ok(b) => assert!(
                    b == blob(s, l),
                    "unacknowledged {k} came back with other bytes"
                ),
                Err(tessera_rpc::Error::Gateway {
                    kind: GatewayErrorKind::NotFound,
                    ..
                }) => {}
                Err(e) => panic!("unacknowledged {k}: {e}"),
            }
        }
    });
    wal_holds_only_dirty_entries(&dev, gw.clone());

    // 3b. A small (replicated) write whose replicas cannot land — every
    // chunk server stopped — when its gateway is killed: its intent is in
    // the WAL first, without the bytes, and replay after the restart
    // abandons it (the key stays absent, the entry is finished).
    let stuck_key = "crash/stuck-small";
    let put = with_chunk_servers_stopped(&dev, || {
        let put = {
            let gw = gw.clone();
            std::thread::spawn(move || {
                with_client(gw, move |c| async move {
                    c.put(stuck_key, &blob(6000, 20_000)).await.map(|_| ())
                })
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let logged = loop {
            let left = unfinished_wal_intents(&dev);
            if let Some(i) = left.into_iter().find(|i| i.key == stuck_key) {
                break i;
            }
            assert!(
                Instant::now() < deadline,
                "the stuck write's intent never reached the WAL"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            logged.erasure.is_none() && !logged.has_payload && logged.payload.is_empty(),
            "a replicated write's intent carries {} bytes of it",
            logged.payload.len()
        );
        let _ = gateway2.kill();
        let _ = gateway2.wait();
        put
    });
    assert!(
        put.join().unwrap().is_err(),
        "a write whose gateway was killed before any replica landed was acknowledged"
    );
    let mut gateway2 = restart_gateway(&dev, &gw, "gateway3.log");
    with_client(gw.clone(), move |c| async move {
        match c.get(stuck_key).await {
            Err(tessera_rpc::Error::Gateway {
                kind: GatewayErrorKind::NotFound,
                ..
            }) => {}
            other => panic!("the abandoned write {stuck_key}: {other:?}"),
        }
    });
    assert!(
        !unfinished_wal_intents(&dev)
            .iter()
            .any(|i| i.key == stuck_key),
        "replay left the abandoned write's WAL entry unfinished"
    );

    // 4. Two chunk servers killed.
    kill9(pid_of(&dev, "chunkd-1"));
    kill9(pid_of(&dev, "chunkd-2"));
    let mut all = objects.clone();
    all.extend(acked);
    check_all(&gw, all.clone());
    let fresh: Vec<(String, u64, usize)> = [(0usize, 10), (1, 70_000), (2, 5 << 20)]
        .iter()
        .map(|&(i, l)| (format!("degraded/{i}"), 9000 + i as u64, l))
        .collect();
    let f2 = fresh.clone();
    with_client(gw.clone(), move |c| async move {
        for (k, s, l) in &f2 {
            let (info, outcome) = c
                .put(k, &blob(*s, *l))
                .await
                .unwrap_or_else(|e| panic!("put {k} with 2 servers down: {e}"));
            assert!(matches!(outcome, PutOutcome::Ok | PutOutcome::Accepted));
            if *l > 65_536 {
                assert!(info.layout.contains("rs-simd"), "{}", info.layout);
            }
        }
    });
    check_all(&gw, fresh);
    with_client(gw.clone(), |c| async move {
        let data = blob(77, 200_000);
        let (info, _) = c.put("pool31/obj", &data).await.unwrap();
        assert!(
            info.layout.starts_with("rs 3+1") && info.layout.contains("cauchy256"),
            "{}",
            info.layout
        );
        assert!(c.get("pool31/obj").await.unwrap() == data);
    });
    let d3 = docs.clone();
    with_client(gw.clone(), move |c| async move {
        for (key, doc, _) in &d3 {
            let (back, _) = c
                .get_doc(key)
                .await
                .unwrap_or_else(|e| panic!("getDoc {key} with 2 servers down: {e}"));
            assert_eq!(
                &serde_json::from_str::<serde_json::Value>(&back).unwrap(),
                doc
            );
        }
    });

    // 5. Fewer live chunk servers than k = 4.
    kill9(pid_of(&dev, "chunkd-3"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live = with_client(gw.clone(), |c| async move {
            c.status()
                .await
                .unwrap()
                .nodes
                .iter()
                .filter(|n| n.live)
                .count()
        });
        if live == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the registry still shows {live} live"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::fs::write(&file, blob(43, 1 << 20)).unwrap();
    let o = tessera(&dev, &["put", "too/big", file.to_str().unwrap()], None);
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("needs at least 4 live chunk servers"), "{err}");
    let o = tessera(&dev, &["put", "still/small"], Some(b"small"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // 6. Ctrl-C and a second run on the same directory: the same objects
    // come back (the killed chunk servers are started again).
    let _ = gateway2.kill();
    let _ = gateway2.wait();
    restart_dev(&mut dev, 6);
    let gw = gateway_addr(&dev);
    check_all(&gw, all);
    let d4 = docs.clone();
    with_client(gw.clone(), move |c| async move {
        for (key, doc, _) in &d4 {
            let (back, _) = c.get_doc(key).await.unwrap();
            assert_eq!(
                &serde_json::from_str::<serde_json::Value>(&back).unwrap(),
                doc
            );
        }
    });

    // 7. A flood of connections from one address (127.0.0.2) is cut at the
    // per-peer limit, and a client from another address is still served.
    let flood: Vec<std::net::TcpStream> = (0..FLOOD_CONNECTIONS)
        .map(|_| connect_from([127, 0, 0, 2], gw.addr))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let closed = flood
        .iter()
        .filter(|s| {
            use std::io::Read;
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            matches!((&mut &**s).read(&mut b), Ok(0))
        })
        .count();
    assert!(
        closed >= FLOOD_CONNECTIONS - PER_PEER_DEFAULT,
        "{closed} of {FLOOD_CONNECTIONS} flood connections were closed; the cap is {PER_PEER_DEFAULT} per peer"
    );
    with_client(gw.clone(), |c| async move {
        c.put("flood/ok", b"served")
            .await
            .expect("a put beside a flood");
        assert_eq!(
            c.get("flood/ok").await.expect("a get beside a flood"),
            b"served"
        );
    });
    drop(flood);
}

/// The gateway's read cache (on by default, filled by writes and reads):
/// hot objects are served from it, whole and in ranges; a replaced or
/// deleted object never is; and with every chunk server stopped (SIGSTOP) a
/// cached object still reads, which shows the bytes came from the cache.
/// Then, restarted with `--gateway-cache-reads-only`, a write leaves the
/// cache empty and the first read fills it.
#[test]
fn read_cache_end_to_end() {
    let mut dev = start_dev("cache", 6, &[]);
    let gw = gateway_addr(&dev);
    let sizes = [
        0usize,
        100,
        65_536,
        65_537,
        1 << 20,
        (4 << 20) + 1,
        (9 << 20) + 123,
    ];
    let objects: Vec<(String, u64, usize)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &l)| (format!("hot/{i}"), 500 + i as u64, l))
        .collect();
    let o = objects.clone();
    with_client(gw.clone(), move |c| async move {
        let s0 = c.status().await.unwrap();
        assert!(s0.cache_capacity_bytes > 0, "the cache is on by default");
        for (key, seed, len) in &o {
            c.put(key, &blob(*seed, *len)).await.unwrap();
        }
        let written = c.status().await.unwrap().cache_bytes;
        assert!(
            written >= (14 << 20),
            "writes fill the cache: {written} bytes"
        );
        let mut r = rand::rngs::SmallRng::seed_from_u64(11);
        for _ in 0..2 {
            for (key, seed, len) in &o {
                let want = blob(*seed, *len);
                assert!(c.get(key).await.unwrap() == want, "{key}");
                if *len > 0 {
                    let off = r.gen_range(0..*len);
                    let n = r.gen_range(1..=(*len - off).min(3 << 20));
                    let got = c.get_range(key, off as u64, n as u64).await.unwrap();
                    assert!(got == want[off..off + n], "{key} [{off}, +{n})");
                }
            }
        }
        let s1 = c.status().await.unwrap();
        assert!(s1.cache_bytes > 0 && s1.cache_bytes <= s1.cache_capacity_bytes);
        assert_eq!(
            s1.cache_misses, 0,
            "every read of a just-written object hits"
        );
        assert!(
            s1.cache_hits >= 4 * (o.len() as u64 - 1),
            "{} hits",
            s1.cache_hits
        );
        // Replaced: the new bytes, never the cached old ones.
        for (key, seed, len) in &o {
            c.put(key, &blob(seed + 100, len + 7)).await.unwrap();
            assert!(
                c.get(key).await.unwrap() == blob(seed + 100, len + 7),
                "{key} replaced"
            );
        }
        // Deleted: gone, and its entries with it.
        let before = c.status().await.unwrap().cache_bytes;
        for (key, _, _) in &o {
            assert!(c.delete(key).await.unwrap());
            match c.get(key).await {
                Err(tessera_rpc::Error::Gateway {
                    kind: GatewayErrorKind::NotFound,
                    ..
                }) => {}
                other => panic!("{key} after delete: {:?}", other.map(|b| b.len())),
            }
        }
        let after = c.status().await.unwrap().cache_bytes;
        assert!(
            after < before,
            "deletes dropped their entries: {before} -> {after}"
        );
        c.put("hot/kept", &blob(9, 3 << 20)).await.unwrap();
    });
    let served = with_chunk_servers_stopped(&dev, || {
        with_client(gw.clone(), |c| async move { c.get("hot/kept").await })
    });
    assert!(served.expect("a cached object with every chunk server stopped") == blob(9, 3 << 20));
    let o = tessera(&dev, &["status"], None);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("read cache: "), "{out}");
    assert!(out.contains(" not admitted"), "{out}");
    let o = tessera(&dev, &["status", "--json"], None);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cache = &j["gateway"]["cache"];
    assert!(cache["hits"].as_u64().unwrap_or(0) > 0, "{cache}");
    for k in ["evicted", "rejected"] {
        assert!(cache[k].is_u64(), "status --json has cache.{k}: {cache}");
    }
    // The cache's counters reach the gateway's metrics (copied every
    // second, so wait for the next copy).
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let m = scrape(&dev, "gateway");
    let event = |e: &str| sample(&m, "tessera_gateway_cache_events_total", &[("event", e)]);
    assert!(event("hit") >= 4.0 * 6.0, "hits exported: {}", event("hit"));
    assert!(event("inserted") > 0.0);
    assert!(sample(&m, "tessera_gateway_cache_bytes", &[]) > 0.0);
    assert!(sample(&m, "tessera_gateway_cache_capacity_bytes", &[]) > 0.0);
    // Stripe buffers come from the warm-buffer pool: the first of each
    // capacity at least is allocated on the executor (a miss), and the
    // pool stays within its bound.
    let warm = |r: &str| sample(&m, "tessera_gateway_warm_buffers_total", &[("result", r)]);
    assert!(
        warm("miss") >= 1.0,
        "warm buffers exported: {}",
        warm("miss")
    );
    let ready = sample(&m, "tessera_gateway_warm_buffers_ready_bytes", &[]);
    assert!(
        ready <= tessera_gateway::warm::WARM_READY_BYTES_MAX as f64,
        "{ready} bytes ready"
    );

    // Each write times the steps its client waits for: five replicated
    // writes and one erasure-coded write each add one WAL append, one
    // shard stage and one commit.
    let stages = |m: &prometheus_parse::Scrape| {
        tessera_gateway::metrics::WriteStage::ALL.map(|s| {
            let l = [("stage", s.name())];
            (
                sample(m, "tessera_gateway_write_stage_seconds_count", &l),
                sample(m, "tessera_gateway_write_stage_seconds_sum", &l),
            )
        })
    };
    let before = stages(&m);
    with_client(gw.clone(), |c| async move {
        for i in 0..5u64 {
            c.put(&format!("stages/small/{i}"), &blob(100 + i, 4096))
                .await
                .unwrap();
        }
        c.put("stages/large", &blob(106, 5 << 20)).await.unwrap();
    });
    let after = stages(&scrape(&dev, "gateway"));
    for (s, (b, a)) in before.iter().zip(&after).enumerate() {
        let name = tessera_gateway::metrics::WriteStage::ALL[s].name();
        assert!(
            a.0 - b.0 >= 6.0,
            "stage {name}: {} writes timed, 6 made",
            a.0 - b.0
        );
        assert!(
            a.1 > b.1,
            "stage {name}: no time recorded ({} -> {})",
            b.1,
            a.1
        );
    }

    // The cache's memory was taken once at start, all of it (in whole
    // chunks), by a background thread that is done by now or soon.
    let capacity = sample(&m, "tessera_gateway_cache_capacity_bytes", &[]);
    let taken =
        |m: &prometheus_parse::Scrape| sample(m, "tessera_gateway_cache_memory_taken_bytes", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut m = m;
    while taken(&m) < capacity && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        m = scrape(&dev, "gateway");
    }
    assert!(
        taken(&m) >= capacity && taken(&m) < capacity + (1 << 20) as f64,
        "{} bytes taken at start for a cache of {capacity}",
        taken(&m)
    );

    dev.extra.push("--gateway-cache-reads-only".into());
    dev.extra.push("--gateway-cache-lazy-memory".into());
    restart_dev(&mut dev, 6);
    let gw = gateway_addr(&dev);
    with_client(gw.clone(), |c| async move {
        c.put("hot/read", &blob(10, 5 << 20)).await.unwrap();
        let s = c.status().await.unwrap();
        assert_eq!(s.cache_bytes, 0, "a write does not fill a reads-only cache");
        assert!(c.get("hot/read").await.unwrap() == blob(10, 5 << 20));
        let s = c.status().await.unwrap();
        assert!(
            s.cache_bytes >= 5 << 20,
            "the read filled it: {} bytes",
            s.cache_bytes
        );
        assert_eq!((s.cache_hits, s.cache_misses), (0, 2), "two stripes missed");
    });
    let served = with_chunk_servers_stopped(&dev, || {
        with_client(gw.clone(), |c| async move { c.get("hot/read").await })
    });
    assert!(served.expect("a read object from the cache") == blob(10, 5 << 20));
    // Lazily: nothing taken at start.
    let log = std::fs::read_to_string(dev.dir.join("data/logs/gateway.log")).unwrap_or_default();
    assert!(log.contains("lazy_memory=true"), "{log}");
    assert_eq!(
        sample(
            &scrape(&dev, "gateway"),
            "tessera_gateway_cache_memory_taken_bytes",
            &[]
        ),
        0.0
    );
}

/// Starts the dev cluster's gateway again by hand (its id, address and
/// metad; the other codec, a pool of its own code and no cache from here
/// on) after it was killed, logging to `log` in the cluster's directory;
/// returns once it listens (after its WAL replay).
fn restart_gateway(dev: &Dev, gw: &Gw, log: &str) -> std::process::Child {
    let gw_log = std::fs::File::create(dev.dir.join(log)).unwrap();
    let mut gateway = Command::new(Path::new(TESSERA).with_file_name("tessera-gateway"))
        .args([
            "--listen",
            &gw.addr.to_string(),
            "--metad",
            &metad_addrs(dev).join(","),
            "--id",
            "dev-gateway-1",
            // The other codec from here on: objects of both must stay readable.
            "--codec",
            "rs-simd",
            // And a pool with its own code.
            "--pool",
            "pool31/=3+1:cauchy256",
            "--cache-bytes",
            "0",
        ])
        .args(tls_flags(dev))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(gw_log))
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(gateway.stdout.take().unwrap()).lines();
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("the restarted gateway printed nothing: see {log}"))
        .unwrap();
    assert!(first.contains("listening"), "{first}");
    std::thread::spawn(move || for _ in lines {});
    gateway
}

/// Runs `f` with every chunk server of `dev` stopped (SIGSTOP), then
/// resumes them — also when `f` panics, so that a failing check does not
/// leave stopped processes behind for the cluster's shutdown to wait on.
fn with_chunk_servers_stopped<T>(dev: &Dev, f: impl FnOnce() -> T) -> T {
    struct Resume(Vec<i32>);
    impl Drop for Resume {
        fn drop(&mut self) {
            for &p in &self.0 {
                // SAFETY: kill(2) on a process of the dev cluster this test
                // started.
                unsafe { libc::kill(p, libc::SIGCONT) };
            }
        }
    }
    let pids: Vec<i32> = (1..=6)
        .map(|i| pid_of(dev, &format!("chunkd-{i}")))
        .collect();
    for &p in &pids {
        // SAFETY: as above.
        unsafe { libc::kill(p, libc::SIGSTOP) };
    }
    let _resume = Resume(pids);
    f()
}

/// Connections one peer may hold by default (the gateway's
/// `CONNECTIONS_PER_PEER_DEFAULT`).
const PER_PEER_DEFAULT: usize = 512;
/// Connections the flood opens.
const FLOOD_CONNECTIONS: usize = 600;

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: [u8; 4], to: SocketAddr) -> std::net::TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

/// Every unfinished WAL entry of the gateway names a committed, dirty
/// version (the healer finishes those); nothing else is left behind.
fn wal_holds_only_dirty_entries(dev: &Dev, gw: Gw) {
    for intent in unfinished_wal_intents(dev) {
        let key = intent.key.clone();
        let info = with_client(gw.clone(), move |c| async move { c.stat(&key).await });
        match info {
            Ok(i) => assert!(
                i.version_id == intent.version_id && i.dirty,
                "WAL entry for {} left unfinished though its object is clean or another version",
                intent.key
            ),
            Err(e) => panic!(
                "WAL entry for {} left unfinished with no object: {e}",
                intent.key
            ),
        }
    }
}

/// The dev gateway's unfinished WAL intents.
fn unfinished_wal_intents(dev: &Dev) -> Vec<tessera_gateway::meta::WalIntent> {
    let metad = metad_addrs(dev);
    let opts = node_metad_options(dev);
    let entries = run_local(async move {
        let c = tessera_metad::client::MetaClient::connect(&metad, opts)
            .await
            .unwrap();
        let mut out = Vec::new();
        for p in 0..c.wal_partitions() {
            let (e, _, _) = c.wal_read(p, 0, 10_000, true).await.unwrap();
            out.extend(
                e.into_iter()
                    .filter(|e| e.gateway == "dev-gateway-1" && !e.finished),
            );
        }
        out
    });
    entries
        .iter()
        .map(|e| tessera_gateway::meta::WalIntent::decode(&e.data).unwrap())
        .collect()
}
