//! Faults on real replica processes: leaders killed under load (with a
//! linearizability check of the recorded history), whole-cluster restarts,
//! a replica that catches up by snapshot, membership changes under load,
//! and leases across leader changes.

#[path = "support/checker.rs"]
mod checker;
#[path = "support/harness.rs"]
mod harness;

use checker::{Call, Op, Ret};
use harness::{run_local, Cluster};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tessera_metad::client::{ClientOptions, Consistency, MetaClient};
use tessera_metad::error::{Error, RemoteKind};

/// Raft settings that make snapshots and log purges frequent.
const SNAPSHOT_OFTEN: &str = "snapshot_after_entries = 200\nentries_kept_after_snapshot = 20\n";

fn opts() -> ClientOptions {
    ClientOptions {
        call_timeout: Duration::from_secs(2),
        retry_deadline: Duration::from_secs(20),
        ..Default::default()
    }
}

/// The index of the replica leading `group`, from any live replica.
async fn leader_of(c: &MetaClient, cluster: &Cluster, group: u32) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for (i, addr) in cluster.addrs.iter().enumerate() {
            if cluster.procs[i].is_none() {
                continue;
            }
            if let Ok(s) = c.status_of(addr).await {
                if let Some(g) = s.groups.iter().find(|g| g.group == group) {
                    if g.is_leader {
                        return Some(i);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

struct History {
    start: Instant,
    per_key: BTreeMap<u32, Vec<Op>>,
    acked: Vec<Vec<u8>>,
}

fn ns(h: &Rc<RefCell<History>>) -> u64 {
    h.borrow().start.elapsed().as_nanos() as u64
}

/// One client's loop: reads, writes and compare-and-sets on `keys` keys,
/// plus unique keys whose acknowledgement is recorded, until `until`.
async fn worker(c: Rc<MetaClient>, id: u64, keys: u32, until: Instant, h: Rc<RefCell<History>>) {
    let mut n = 0u64;
    let mut last_version: BTreeMap<u32, u64> = BTreeMap::new();
    while Instant::now() < until && n < 5_000 {
        n += 1;
        let k = (n as u32 * 7 + id as u32) % keys;
        let key = format!("reg/{k}");
        let value = id * 1_000_000 + n;
        let invoked = ns(&h);
        let (call, ret) = match n % 5 {
            0 | 1 => {
                let r = c.get(key.as_bytes(), Consistency::Linearizable).await;
                let ret = match r {
                    Ok(Some(v)) => {
                        let val = String::from_utf8(v.value).unwrap().parse().unwrap();
                        last_version.insert(k, v.version);
                        Ret::Read(Some((val, v.version)))
                    }
                    Ok(None) => {
                        last_version.insert(k, 0);
                        Ret::Read(None)
                    }
                    Err(_) => Ret::Unknown,
                };
                (Call::Read, ret)
            }
            2 => {
                let r = c.put(key.as_bytes(), value.to_string().as_bytes()).await;
                (
                    Call::Write { value },
                    match r {
                        Ok(version) => Ret::Written { version },
                        Err(_) => Ret::Unknown,
                    },
                )
            }
            _ => {
                let expected = last_version.get(&k).copied().unwrap_or(0);
                let r = c
                    .put_if(key.as_bytes(), value.to_string().as_bytes(), expected)
                    .await;
                let ret = match r {
                    Ok(version) => Ret::Written { version },
                    Err(Error::Remote {
                        kind: RemoteKind::Conflict,
                        message,
                    }) => {
                        // "the key's version is N, not ..."
                        let current = message
                            .split("version is ")
                            .nth(1)
                            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                            .and_then(|s| s.parse().ok())
                            .expect("conflict names the current version");
                        Ret::Conflict { current }
                    }
                    Err(_) => Ret::Unknown,
                };
                (Call::Cas { expected, value }, ret)
            }
        };
        let returned = if ret == Ret::Unknown {
            u64::MAX
        } else {
            ns(&h)
        };
        h.borrow_mut().per_key.entry(k).or_default().push(Op {
            call,
            ret,
            invoked_ns: invoked,
            returned_ns: returned,
        });
        // A unique key per op, acknowledged or not.
        let uk = format!("ack/{id}/{n}").into_bytes();
        if c.put(&uk, b"x").await.is_ok() {
            h.borrow_mut().acked.push(uk);
        }
    }
}

#[test]
fn leader_killed_under_load_loses_nothing_and_stays_linearizable() {
    let mut cluster = Cluster::start(3, 4);
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, opts()).await.unwrap();
        let history = Rc::new(RefCell::new(History {
            start: Instant::now(),
            per_key: BTreeMap::new(),
            acked: Vec::new(),
        }));
        let keys = 4;
        let until = Instant::now() + Duration::from_secs(8);
        let mut tasks = Vec::new();
        for id in 1..=8u64 {
            // Each worker its own client (its own connections and ids).
            let wc = MetaClient::connect(&cluster.addrs, opts()).await.unwrap();
            tasks.push(tokio::task::spawn_local(worker(
                wc,
                id,
                keys,
                until,
                history.clone(),
            )));
        }
        // Kill the leader of the registers' groups twice, restarting it each time.
        for round in 0..2 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let g = c.group_of(format!("reg/{round}").as_bytes());
            let leader = leader_of(&c, &cluster, g).await.expect("a leader");
            cluster.kill(leader);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            cluster.restart(leader);
        }
        for t in tasks {
            t.await.unwrap();
        }
        // A final read of every register, after everything.
        for k in 0..keys {
            let invoked = ns(&history);
            let r = c
                .get(format!("reg/{k}").as_bytes(), Consistency::Linearizable)
                .await
                .expect("final read");
            let ret = Ret::Read(r.map(|v| {
                (
                    String::from_utf8(v.value).unwrap().parse().unwrap(),
                    v.version,
                )
            }));
            let returned = ns(&history);
            history.borrow_mut().per_key.entry(k).or_default().push(Op {
                call: Call::Read,
                ret,
                invoked_ns: invoked,
                returned_ns: returned,
            });
        }
        let h = std::mem::replace(
            &mut *history.borrow_mut(),
            History {
                start: Instant::now(),
                per_key: BTreeMap::new(),
                acked: Vec::new(),
            },
        );
        let total: usize = h.per_key.values().map(Vec::len).sum();
        assert!(total > 200, "too few operations ran: {total}");
        let mut mutated_checked = false;
        for (k, ops) in &h.per_key {
            if let Err(e) = checker::check(ops) {
                panic!("register {k} is not linearizable: {e}");
            }
            // The checker can fail on this very history: make one read
            // return a value written only after the read returned.
            if mutated_checked {
                continue;
            }
            let mut bad = ops.clone();
            let found = (0..bad.len()).find_map(|r| {
                if !matches!(bad[r].ret, Ret::Read(Some(_))) {
                    return None;
                }
                (0..bad.len()).find_map(|w| match (&bad[w].call, &bad[w].ret) {
                    (Call::Write { value } | Call::Cas { value, .. }, Ret::Written { version })
                        if bad[w].invoked_ns > bad[r].returned_ns =>
                    {
                        Some((r, *value, *version))
                    }
                    _ => None,
                })
            });
            if let Some((r, value, version)) = found {
                bad[r].ret = Ret::Read(Some((value, version)));
                assert!(
                    checker::check(&bad).is_err(),
                    "the checker missed a read from the future"
                );
                mutated_checked = true;
            }
        }
        assert!(mutated_checked, "no history to mutate");
        for key in &h.acked {
            let v = c
                .get(key, Consistency::Linearizable)
                .await
                .expect("read back");
            assert!(
                v.is_some(),
                "acknowledged write of {} lost",
                String::from_utf8_lossy(key)
            );
        }
        eprintln!(
            "{total} register ops linearizable; {} acknowledged unique writes all present",
            h.acked.len()
        );
    });
}

#[test]
fn whole_cluster_restart_keeps_state_and_lagging_replica_catches_up_by_snapshot() {
    let mut cluster = Cluster::start_with(3, 2, SNAPSHOT_OFTEN);
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, opts()).await.unwrap();
        for i in 0..100u32 {
            c.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
                .await
                .unwrap();
        }
        // Replica 3 goes down for long: the others write far past their
        // snapshots and purge the log it would need.
        cluster.kill(2);
        for i in 0..1200u32 {
            c.put(
                format!("k{}", i % 300).as_bytes(),
                format!("w{i}").as_bytes(),
            )
            .await
            .unwrap();
        }
        let expect: Vec<(String, String)> = (0..300u32)
            .map(|k| {
                let last = (0..1200u32).filter(|i| i % 300 == k).max().unwrap();
                (format!("k{k}"), format!("w{last}"))
            })
            .collect();
        cluster.restart(2);
        // Replica 3 catches up: wait until it applied what the leaders did.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s3 = c.status_of(&cluster.addrs[2]).await;
            let mut caught_up = false;
            if let Ok(s3) = s3 {
                caught_up = true;
                // Metadata groups only (the WAL partitions saw no writes).
                for g in s3.groups.iter().take(s3.meta_groups as usize) {
                    let li = leader_of(&c, &cluster, g.group).await.unwrap();
                    let sl = c.status_of(&cluster.addrs[li]).await.unwrap();
                    let lg = &sl.groups[g.group as usize];
                    if g.applied_index < lg.applied_index.saturating_sub(5) {
                        caught_up = false;
                    }
                    assert!(
                        lg.snapshot_index > 0,
                        "leaders must have snapshotted: {lg:?}"
                    );
                }
                if caught_up {
                    assert!(
                        s3.groups
                            .iter()
                            .take(s3.meta_groups as usize)
                            .all(|g| g.snapshot_index > 0),
                        "replica 3 must hold a snapshot: {:?}",
                        s3.groups
                    );
                }
            }
            if caught_up {
                break;
            }
            assert!(Instant::now() < deadline, "replica 3 never caught up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Replica 3 alone with one other: the first two replicas' data must
        // be on 3 too. Stop replica 1; 2 and 3 must serve everything.
        cluster.kill(0);
        for (k, v) in &expect {
            let got = c
                .get(k.as_bytes(), Consistency::Linearizable)
                .await
                .unwrap()
                .map(|x| x.value);
            assert_eq!(got.as_deref(), Some(v.as_bytes()), "key {k}");
        }
        // Now restart the whole cluster (SIGTERM and kill -9 mixed).
        assert!(cluster.terminate(1), "SIGTERM must exit 0");
        cluster.kill(2);
        for i in 0..3 {
            cluster.restart(i);
        }
        let c = MetaClient::connect(&cluster.addrs, opts()).await.unwrap();
        for (k, v) in &expect {
            let got = c
                .get(k.as_bytes(), Consistency::Linearizable)
                .await
                .unwrap()
                .map(|x| x.value);
            assert_eq!(
                got.as_deref(),
                Some(v.as_bytes()),
                "key {k} after a full restart"
            );
        }
    });
}

#[test]
fn membership_change_under_load() {
    let mut cluster = Cluster::start(3, 2);
    let joiner = cluster.spawn_joiner();
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs[..3], opts())
            .await
            .unwrap();
        let acked = Rc::new(RefCell::new(Vec::new()));
        let until = Instant::now() + Duration::from_secs(30);
        let stop = Rc::new(std::cell::Cell::new(false));
        let mut tasks = Vec::new();
        for w in 0..4u32 {
            let wc = MetaClient::connect(&cluster.addrs[..3], opts())
                .await
                .unwrap();
            let acked = acked.clone();
            let stop = stop.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut n = 0u32;
                while !stop.get() && Instant::now() < until {
                    n += 1;
                    let k = format!("m/{w}/{n}").into_bytes();
                    if wc.put(&k, b"v").await.is_ok() {
                        acked.borrow_mut().push(k);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Add replica 4, then remove replica 1, while the writers run.
        let id4 = cluster.ids[joiner];
        c.add_voter(id4, &cluster.addrs[joiner])
            .await
            .expect("add voter");
        c.remove_voter(1).await.expect("remove voter");
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.set(true);
        for t in tasks {
            t.await.unwrap();
        }
        let s = c.status_of(&cluster.addrs[joiner]).await.unwrap();
        for g in &s.groups {
            let mut v = g.voters.clone();
            v.sort();
            assert_eq!(v, vec![2, 3, id4], "group {} voters", g.group);
        }
        // Replica 1 is out: stopping it changes nothing.
        cluster.kill(0);
        let c2 = MetaClient::connect(&cluster.addrs[1..], opts())
            .await
            .unwrap();
        let acked = acked.borrow().clone();
        assert!(
            acked.len() > 50,
            "writes stalled during the change: {}",
            acked.len()
        );
        for k in acked.iter() {
            assert!(
                c2.get(k, Consistency::Linearizable)
                    .await
                    .unwrap()
                    .is_some(),
                "lost {}",
                String::from_utf8_lossy(k)
            );
        }
    });
}

#[test]
fn lease_has_one_holder_across_leader_changes() {
    let mut cluster = Cluster::start(3, 2);
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, opts()).await.unwrap();
        let ttl = Duration::from_secs(3);
        let t0 = Instant::now();
        let (ok, a) = c.acquire_lease(b"L", b"A", ttl).await.unwrap();
        assert!(ok);
        // The system group's leader dies; a new one is elected well within the TTL.
        let leader = leader_of(&c, &cluster, 0).await.unwrap();
        cluster.kill(leader);
        let (ok, seen) = c.acquire_lease(b"L", b"B", ttl).await.unwrap();
        if t0.elapsed() < ttl {
            assert!(
                !ok,
                "B got a lease A still holds, after a leader change: {seen:?}"
            );
            assert_eq!(seen.holder, b"A");
            assert_eq!(seen.epoch, a.epoch);
        }
        cluster.restart(leader);
        // After A's TTL, B takes over with a larger epoch.
        let wait = ttl.saturating_sub(t0.elapsed()) + Duration::from_millis(300);
        tokio::time::sleep(wait).await;
        let (ok, b) = c.acquire_lease(b"L", b"B", ttl).await.unwrap();
        assert!(ok, "expired lease not granted: {b:?}");
        assert!(b.epoch > a.epoch);
        let (renewed, _) = c.renew_lease(b"L", b"A", a.epoch, ttl).await.unwrap();
        assert!(!renewed);
    });
}
