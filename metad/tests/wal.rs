//! The replicated WAL on real replica processes: appends acknowledged only
//! when durable on a quorum, survival of leader kills and full restarts,
//! exactly-once effect of retried appends, truncation that never drops an
//! unfinished entry, claims and consumer positions.

#[path = "support/harness.rs"]
mod harness;

use harness::{run_local, Cluster};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tessera_metad::client::{ClientOptions, MetaClient};
use tessera_metad::error::{Error, RemoteKind};

fn opts() -> ClientOptions {
    ClientOptions {
        call_timeout: Duration::from_secs(2),
        retry_deadline: Duration::from_secs(20),
        ..Default::default()
    }
}

/// (partition, offset) -> payload of every acknowledged append.
type Acked = Rc<RefCell<BTreeMap<(u32, u64), Vec<u8>>>>;

/// Every entry of `partition`, in offset order.
async fn read_all(c: &MetaClient, partition: u32) -> Vec<tessera_metad::client::WalEntry> {
    let mut out = Vec::new();
    let mut from = 0;
    for _ in 0..10_000 {
        let (entries, next, _) = c
            .wal_read(partition, from, 1000, false)
            .await
            .expect("read");
        let done = entries.is_empty();
        out.extend(entries);
        if done || next == from {
            break;
        }
        from = next;
    }
    out
}

/// Sum over partitions of the entries truncated so far.
async fn truncated_sum(c: &MetaClient, parts: u32) -> u64 {
    let mut t = 0;
    for p in 0..parts {
        t += c.wal_status(p).await.unwrap().truncated_before - 1;
    }
    t
}

#[test]
fn wal_appends_reads_finishes_claims_and_limits() {
    let cluster = Cluster::start(3, 2);
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, opts()).await.unwrap();
        assert_eq!(c.wal_partitions(), 4);
        let mut offs = Vec::new();
        for i in 0..10u32 {
            offs.push(
                c.wal_append(1, "gw-a", format!("req{i}").as_bytes(), false)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(
            offs,
            (1..=10).collect::<Vec<u64>>(),
            "offsets start at 1 and have no gaps"
        );
        let intent = c
            .wal_append(1, "gw-b", b"intent: obj/x v7 size 1GiB", true)
            .await
            .unwrap();
        let all = read_all(&c, 1).await;
        assert_eq!(all.len(), 11);
        assert!(all[10].is_intent && all[10].gateway == "gw-b" && all[10].offset == intent);
        // Finishing out of order truncates only the finished prefix.
        assert_eq!(c.wal_finish(1, &[2, 3]).await.unwrap(), 1);
        assert_eq!(c.wal_finish(1, &[1]).await.unwrap(), 4);
        let (rest, _, truncated) = c.wal_read(1, 0, 100, false).await.unwrap();
        assert_eq!(truncated, 4);
        assert_eq!(rest.first().map(|e| e.offset), Some(4));
        // Unfinished-only reads and paging.
        c.wal_finish(1, &[5, 7]).await.unwrap();
        let (unf, _, _) = c.wal_read(1, 0, 100, true).await.unwrap();
        assert_eq!(
            unf.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![4, 6, 8, 9, 10, 11]
        );
        // Finished entries are gone: every read sees unfinished ones only.
        let (all, _, _) = c.wal_read(1, 0, 100, false).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![4, 6, 8, 9, 10, 11]
        );
        let (page, next, _) = c.wal_read(1, 4, 2, false).await.unwrap();
        assert_eq!(
            page.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![4, 6]
        );
        assert_eq!(next, 7);
        // A gateway that is gone: another claims its unfinished entries.
        assert_eq!(c.wal_claim(1, "gw-a", "gw-c").await.unwrap(), 5);
        let (unf, _, _) = c.wal_read(1, 0, 100, true).await.unwrap();
        assert!(unf
            .iter()
            .filter(|e| e.offset <= 10)
            .all(|e| e.gateway == "gw-c"));
        c.wal_set_position(1, "gw-c", 9).await.unwrap();
        let st = c.wal_status(1).await.unwrap();
        assert_eq!(st.positions, vec![("gw-c".to_string(), 9)]);
        assert_eq!(st.next_offset, 12);
        assert_eq!(st.unfinished, 6);
        // Limits.
        let big = vec![0u8; tessera_metad::limits::WAL_DATA_MAX_BYTES + 1];
        match c.wal_append(0, "gw", &big, false).await {
            Err(Error::Remote {
                kind: RemoteKind::TooLarge,
                message,
            }) => assert!(message.contains("intent"), "{message}"),
            other => panic!("expected too large, got {other:?}"),
        }
        assert!(matches!(
            c.wal_append(9, "gw", b"x", false).await,
            Err(Error::Config(_))
        ));
    });
}

#[test]
fn killed_wal_leaders_lose_no_acknowledged_entry_and_retries_apply_once() {
    let mut cluster = Cluster::start(3, 1);
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, opts()).await.unwrap();
        let parts = c.wal_partitions();
        // (partition, offset) -> payload, for every acknowledged append.
        let acked: Acked = Rc::new(RefCell::new(BTreeMap::new()));
        let finished: Rc<RefCell<std::collections::BTreeSet<(u32, u64)>>> = Rc::default();
        let until = Instant::now() + Duration::from_secs(8);
        let mut tasks = Vec::new();
        // Four writers share each client, so their appends also travel
        // together in walAppendMany calls across the leader kills.
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(MetaClient::connect(&cluster.addrs, opts()).await.unwrap());
        }
        for w in 0..8u32 {
            let wc = clients[w as usize % clients.len()].clone();
            let acked = acked.clone();
            let finished = finished.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut n = 0u32;
                while Instant::now() < until && n < 20_000 {
                    n += 1;
                    let p = (w + n) % parts;
                    let payload = format!("w{w}-{n}").into_bytes();
                    if let Ok(off) = wc.wal_append(p, &format!("gw{w}"), &payload, false).await {
                        let prev = acked.borrow_mut().insert((p, off), payload);
                        assert!(prev.is_none(), "offset {p}/{off} acknowledged twice");
                    }
                    // Every third append, finish this partition's two oldest
                    // acknowledged entries, as a consumer would.
                    if n % 3 == 0 {
                        let todo: Vec<u64> = acked
                            .borrow()
                            .range((p, 0)..(p + 1, 0))
                            .map(|(k, _)| k.1)
                            .filter(|o| !finished.borrow().contains(&(p, *o)))
                            .take(2)
                            .collect();
                        if wc.wal_finish(p, &todo).await.is_ok() {
                            finished
                                .borrow_mut()
                                .extend(todo.into_iter().map(|o| (p, o)));
                        }
                    }
                }
            }));
        }
        // Kill the leaders of partitions 0 and 1 in turn, mid-append.
        for p in 0..2u32 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let g = c.groups() + p;
            let mut leader = None;
            let deadline = Instant::now() + Duration::from_secs(10);
            while leader.is_none() && Instant::now() < deadline {
                for (i, addr) in cluster.addrs.iter().enumerate() {
                    if let Ok(s) = c.status_of(addr).await {
                        if s.groups.get(g as usize).is_some_and(|x| x.is_leader) {
                            leader = Some(i);
                        }
                    }
                }
                if leader.is_none() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            let leader = leader.expect("partition leader");
            cluster.kill(leader);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            cluster.restart(leader);
        }
        for t in tasks {
            t.await.unwrap();
        }
        let finished_all = finished.borrow().clone();
        let check = |c: Rc<MetaClient>, acked: BTreeMap<(u32, u64), Vec<u8>>| {
            let finished_set = finished_all.clone();
            async move {
                let mut total = 0;
                for p in 0..parts {
                    let entries = read_all(&c, p).await;
                    let (_, _, truncated) = c.wal_read(p, 0, 1, false).await.unwrap();
                    let by_off: HashMap<u64, Vec<u8>> =
                        entries.iter().map(|e| (e.offset, e.data.clone())).collect();
                    // Each payload at most once: a retried append is not duplicated.
                    let mut seen = HashMap::new();
                    for e in &entries {
                        assert!(
                            seen.insert(e.data.clone(), e.offset).is_none(),
                            "payload {:?} appended twice",
                            String::from_utf8_lossy(&e.data)
                        );
                    }
                    for ((ap, off), payload) in acked.range((p, 0)..(p + 1, 0)) {
                        assert_eq!(*ap, p);
                        if *off < truncated {
                            assert!(
                                finished_set.contains(&(p, *off)),
                                "entry {p}/{off}, never finished, was truncated"
                            );
                            continue;
                        }
                        match by_off.get(off) {
                            Some(d) => assert_eq!(
                                d, payload,
                                "partition {p} offset {off} holds another entry"
                            ),
                            None => panic!("acknowledged entry {p}/{off} lost"),
                        }
                        total += 1;
                    }
                    // Truncation never passes an unfinished entry.
                    assert!(entries.iter().all(|e| e.offset >= truncated));
                }
                (total, truncated_sum(&c, parts).await)
            }
        };
        let acked = acked.borrow().clone();
        assert!(acked.len() > 300, "too few appends: {}", acked.len());
        let (live, truncated_live) = check(c.clone(), acked.clone()).await;
        assert!(truncated_live > 0, "no truncation happened");
        let mut before = Vec::new();
        for p in 0..parts {
            before.push(c.wal_status(p).await.unwrap());
        }
        // All replicas restart: the log is intact.
        for i in 0..3 {
            cluster.kill(i);
        }
        for i in 0..3 {
            cluster.restart(i);
        }
        let c = MetaClient::connect(&cluster.addrs, opts()).await.unwrap();
        for p in 0..parts {
            let a = c.wal_status(p).await.unwrap();
            eprintln!(
                "partition {p}: before {:?}\n             after  {:?}",
                before[p as usize], a
            );
        }
        // The same invariants hold after the restart (an in-doubt finish
        // may have applied since, so the counts may move forward).
        let (after, truncated_after) = check(c, acked.clone()).await;
        assert!(
            truncated_after >= truncated_live && after <= live,
            "before restart: {live} untruncated, {truncated_live} truncated; after: {after}, {truncated_after}"
        );
        eprintln!(
            "{} acknowledged appends; {live} untruncated and {truncated_live} truncated after finishing survived two leader kills and a full restart",
            acked.len()
        );
    });
}

/// The in-memory raft log of a WAL partition is bounded in bytes, not only
/// in entries: with entry-count snapshots pushed out of reach, 12 MiB of
/// appends leave every replica holding less than the byte bound once the
/// load stops (without the bound all 12 MiB stay, in memory and in every
/// log checkpoint).
#[test]
fn wal_partition_logs_stay_under_their_byte_bound() {
    const BOUND: u64 = 256 << 10;
    let cluster = Cluster::start_with(
        3,
        2,
        &format!("log_bytes_snapshot_at = {BOUND}\nsnapshot_after_entries = 1000000\n"),
    );
    let wal_group = "group=\"2\""; // partition 0 follows the 2 metadata groups
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, opts()).await.unwrap();
        let payload = vec![7u8; 16 << 10];
        let mut peak = 0f64;
        for round in 0..24u32 {
            let mut offs = Vec::new();
            for _ in 0..32 {
                offs.push(c.wal_append(0, "gw-a", &payload, false).await.unwrap());
            }
            c.wal_finish(0, &offs).await.unwrap();
            if round % 8 == 7 {
                for i in 0..3 {
                    let b = cluster
                        .metric(i, "tessera_metad_raft_log_bytes", wal_group)
                        .unwrap_or(0.0);
                    peak = peak.max(b);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = Vec::new();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
            last = (0..3)
                .map(|i| cluster.metric(i, "tessera_metad_raft_log_bytes", wal_group))
                .collect();
            if last.iter().all(|b| b.is_some_and(|b| b as u64 <= BOUND)) {
                break;
            }
        }
        assert!(
            last.iter().all(|b| b.is_some_and(|b| b as u64 <= BOUND)),
            "every replica's WAL log is back under {BOUND} bytes after the load: {last:?} (peak seen {peak})"
        );
        eprintln!("peak WAL log bytes seen while loaded: {peak} (bound {BOUND})");
        assert!(
            peak < (4 << 20) as f64,
            "the log stayed far below the 12 MiB appended while loaded: peak {peak}"
        );
    });
}

/// Appends many callers of one client make at once travel together
/// (`walAppendMany`); each caller still gets the offset that holds its own
/// bytes, offsets are never handed out twice, and an item over the size
/// limit fails alone.
#[test]
fn concurrent_appends_of_one_client_each_get_their_own_offset() {
    let cluster = Cluster::start(3, 1);
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, opts()).await.unwrap();
        let parts = c.wal_partitions();
        let acked: Acked = Rc::new(RefCell::new(BTreeMap::new()));
        let mut tasks = Vec::new();
        for w in 0..64u32 {
            let (c, acked) = (c.clone(), acked.clone());
            tasks.push(tokio::task::spawn_local(async move {
                for n in 0..40u32 {
                    let p = (w * 7 + n) % parts;
                    // Sizes vary so that a mix-up of offsets shows.
                    let payload = format!("w{w}-n{n}-{}", "x".repeat(((w * 13 + n) % 97) as usize))
                        .into_bytes();
                    let off = c
                        .wal_append(p, &format!("gw{}", w % 3), &payload, false)
                        .await
                        .unwrap();
                    let prev = acked.borrow_mut().insert((p, off), payload);
                    assert!(prev.is_none(), "offset {p}/{off} acknowledged twice");
                }
            }));
        }
        // An oversized append among them fails alone.
        let big = vec![0u8; tessera_metad::limits::WAL_DATA_MAX_BYTES + 1];
        let r = c.wal_append(0, "gw-big", &big, false).await;
        assert!(
            matches!(
                r,
                Err(Error::Remote {
                    kind: RemoteKind::TooLarge,
                    ..
                })
            ),
            "{r:?}"
        );
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(acked.borrow().len(), 64 * 40);
        // They did travel together: some walAppendMany calls succeeded.
        let many = cluster.metric_sum(
            "tessera_metad_requests_total",
            r#"op="wal_append_many",result="ok""#,
        );
        assert!(many > 0.0, "no walAppendMany call was made");
        for p in 0..parts {
            let entries = read_all(&c, p).await;
            let acked = acked.borrow();
            let mine: Vec<_> = acked.range((p, 0)..(p + 1, 0)).collect();
            assert_eq!(entries.len(), mine.len(), "partition {p}");
            for (e, ((_, off), data)) in entries.iter().zip(mine) {
                assert_eq!(e.offset, *off);
                assert_eq!(
                    &e.data, data,
                    "partition {p} offset {off} holds another caller's bytes"
                );
            }
        }
    });
}

/// A client's requests carry its settled watermark, so a WAL group keeps
/// the results of only the few requests still in flight: after thousands
/// of appends its snapshot holds no per-request history (before
/// watermarks it kept up to 100,000 results, megabytes in every snapshot
/// of a busy partition).
#[test]
fn settled_requests_leave_no_history_in_snapshots() {
    const APPENDS: u32 = 4_096;
    const SNAPSHOT_MAX_BYTES: u64 = 96 << 10;
    let cluster = Cluster::start(3, 1);
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, opts()).await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..32u32 {
            let c = c.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut offs = Vec::new();
                for n in 0..APPENDS / 32 {
                    let data = format!("{w}-{n}");
                    offs.push(
                        c.wal_append(0, "gw-a", data.as_bytes(), false)
                            .await
                            .unwrap(),
                    );
                    if offs.len() == 8 {
                        c.wal_finish(0, &offs).await.unwrap();
                        offs.clear();
                    }
                }
                c.wal_finish(0, &offs).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(c.wal_status(0).await.unwrap().unfinished, 0);
        for (i, addr) in cluster.addrs.iter().enumerate() {
            use std::os::unix::fs::MetadataExt;
            let path = cluster.data_dir(i).join("groups/wal-0/snapshot.bin");
            let before = std::fs::metadata(&path).map(|m| m.ino()).ok();
            c.snapshot(addr).await.unwrap();
            // The snapshot is built in the background and replaces the
            // file by a rename: wait for the new file.
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::fs::metadata(&path).map(|m| m.ino()).ok() == before {
                assert!(
                    Instant::now() < deadline,
                    "replica {i} wrote no new snapshot in 20 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let size = std::fs::metadata(&path).map(|m| m.len());
            assert!(
                size.as_ref().is_ok_and(|s| *s <= SNAPSHOT_MAX_BYTES),
                "replica {i}'s WAL snapshot after {APPENDS} appends and finishes: {size:?} bytes \
                 (at most {SNAPSHOT_MAX_BYTES} expected)"
            );
        }
    });
}
