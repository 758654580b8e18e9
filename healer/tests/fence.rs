//! Leadership and fencing against a real metad process.
//!
//! - Over generated interleavings of leaders (each with a larger epoch than
//!   the one before) installing their fence and committing: a commit
//!   applies if and only if its leader's epoch is the newest installed, a
//!   refused commit writes nothing, and an older leader can never install
//!   again.
//! - The lease: one holder at a time; a released lease goes to the standby
//!   with a larger epoch.

use proptest::prelude::*;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use tessera_gateway::bridge::MetaBridge;
use tessera_healer::fence::Fence;
use tessera_healer::lease::Leadership;
use tessera_healer::Error;
use tessera_metad::client::Consistency;

struct Metad {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Metad {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metad_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    for d in [dir.to_path_buf(), dir.join("..")] {
        let p = d.join("metad");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "metad is not built next to {}: run `cargo test --workspace`",
        exe.display()
    );
}

fn start_metad() -> Metad {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!(
        "127.0.0.1:{}",
        tessera_rpc::ports::pick_listen_port().expect("a free port")
    );
    let cfg = dir.path().join("metad.toml");
    std::fs::write(
        &cfg,
        "insecure = true\n[raft]\nheartbeat_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600\n",
    )
    .unwrap();
    let mut child = Command::new(metad_bin())
        .arg("--config")
        .arg(&cfg)
        .args([
            "--id",
            "1",
            "--listen",
            &addr,
            "--peers",
            &format!("1={addr}"),
        ])
        .args(["--groups", "4", "--log", "warn,openraft=off"])
        .arg("--data")
        .arg(dir.path().join("r1"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert!(line.contains("listening"), "metad did not start: {line:?}");
    std::thread::spawn(move || for _ in lines {});
    Metad {
        child,
        addr,
        _dir: dir,
    }
}

fn on_executor<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    tessera_engine::raise_memlock().unwrap();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// One step of the generated history.
#[derive(Debug, Clone)]
enum Step {
    /// A new leader (the next epoch) installs its fence.
    NewLeader,
    /// Leader `i` (modulo those so far) commits a write to key `k`.
    Commit(usize, u8),
    /// Leader `i` installs its fence again (as after a restart).
    Reinstall(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::NewLeader),
        4 => (0usize..8, 0u8..6).prop_map(|(i, k)| Step::Commit(i, k)),
        1 => (0usize..8).prop_map(Step::Reinstall),
    ]
}

#[test]
fn only_the_newest_epoch_commits() {
    let m = start_metad();
    let addr = m.addr.clone();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 12,
        ..ProptestConfig::default()
    });
    let round = std::cell::Cell::new(0u64);
    runner
        .run(&proptest::collection::vec(step(), 1..24), |steps| {
            round.set(round.get() + 1);
            let addr = addr.clone();
            let r = round.get();
            on_executor(move || {
                Box::pin(async move {
                    let bridge = MetaBridge::start(vec![addr], Default::default())
                        .await
                        .unwrap();
                    // Epochs grow across cases too: start above the last.
                    let base = r * 1000;
                    let mut leaders: Vec<(u64, Option<Rc<Fence>>)> = Vec::new();
                    let mut newest = 0u64;
                    let mut expect: std::collections::HashMap<u8, Vec<u8>> = Default::default();
                    for (n, s) in steps.iter().enumerate() {
                        match s {
                            Step::NewLeader => {
                                let epoch = base + leaders.len() as u64 + 1;
                                let f = Fence::install(bridge.clone(), epoch).await;
                                assert!(
                                    f.is_ok(),
                                    "a new, larger epoch must install: {:?}",
                                    f.err()
                                );
                                newest = epoch;
                                leaders.push((epoch, f.ok().map(Rc::new)));
                            }
                            Step::Reinstall(i) if !leaders.is_empty() => {
                                let i = i % leaders.len();
                                let epoch = leaders[i].0;
                                let f = Fence::install(bridge.clone(), epoch).await;
                                if epoch == newest {
                                    assert!(f.is_ok(), "the newest epoch reinstalls");
                                    leaders[i].1 = f.ok().map(Rc::new);
                                } else {
                                    assert!(
                                        matches!(f, Err(Error::Fenced(_))),
                                        "epoch {epoch} reinstalled over {newest}"
                                    );
                                }
                            }
                            Step::Commit(i, k) if !leaders.is_empty() => {
                                let i = i % leaders.len();
                                let Some(f) = leaders[i].1.clone() else {
                                    continue;
                                };
                                let key = format!("t{r}/k{k}").into_bytes();
                                let val = format!("{n}").into_bytes();
                                let res = f.commit(&key, Some(val.clone()), None).await;
                                if f.epoch() == newest {
                                    assert!(
                                        res.is_ok(),
                                        "the newest leader's commit failed: {:?}",
                                        res.err()
                                    );
                                    expect.insert(*k, val);
                                } else {
                                    assert!(
                                        matches!(res, Err(Error::Fenced(_))),
                                        "epoch {} committed over {newest}: {res:?}",
                                        f.epoch()
                                    );
                                }
                            }
                            _ => {}
                        }
                    }
                    // Refused commits wrote nothing.
                    for k in 0u8..6 {
                        let key = format!("t{r}/k{k}").into_bytes();
                        let got = bridge
                            .call("get", move |c| async move {
                                c.get(&key, Consistency::Linearizable).await
                            })
                            .await
                            .unwrap()
                            .map(|v| v.value);
                        assert_eq!(got, expect.get(&k).cloned(), "key k{k}");
                    }
                })
            });
            Ok(())
        })
        .unwrap();
}

#[test]
fn one_lease_holder_and_a_larger_epoch_after_release() {
    let m = start_metad();
    let addr = m.addr.clone();
    on_executor(move || {
        Box::pin(async move {
            let bridge = MetaBridge::start(vec![addr], Default::default())
                .await
                .unwrap();
            let a = Leadership::new(bridge.clone(), "a");
            let b = Leadership::new(bridge.clone(), "b");
            assert!(a.try_acquire().await.unwrap());
            assert!(a.valid());
            assert!(!b.try_acquire().await.unwrap(), "two holders at once");
            assert!(!b.valid());
            assert!(a.renew().await);
            let first = a.epoch();
            a.release().await;
            assert!(!a.valid());
            assert!(b.try_acquire().await.unwrap());
            assert!(b.epoch() > first, "epoch {} after {first}", b.epoch());
            // The old holder cannot renew what it gave up.
            assert!(!a.renew().await);
        })
    });
}

/// The bad copies one leader stores reach the next leader, and a leader
/// fenced out can no longer change them.
#[test]
fn bad_copies_pass_to_the_next_leader() {
    use tessera_healer::bad_copies::{BadCopies, BadCopiesRecord};
    let m = start_metad();
    let addr = m.addr.clone();
    on_executor(move || {
        Box::pin(async move {
            let bridge = MetaBridge::start(vec![addr], Default::default())
                .await
                .unwrap();
            assert!(BadCopies::load(&bridge).await.unwrap().set.is_empty());
            let old = Fence::install(bridge.clone(), 1).await.unwrap();
            let mut bad = BadCopies::default();
            for i in 0..300u32 {
                bad.insert(
                    format!("node-{}", i % 6),
                    i.to_be_bytes().repeat(6)[..21].to_vec(),
                );
            }
            let mut rec = BadCopiesRecord::default();
            rec.save(&old, bad.encode()).await.unwrap();
            let new = Fence::install(bridge.clone(), 2).await.unwrap();
            assert_eq!(BadCopies::load(&bridge).await.unwrap(), bad);
            // The old leader repairs one and tries to store that: fenced.
            let mut fewer = bad.clone();
            let first = fewer.set.iter().next().cloned().unwrap();
            fewer.set.remove(&first);
            let r = rec.save(&old, fewer.encode()).await;
            assert!(matches!(r, Err(Error::Fenced(_))), "{r:?}");
            assert_eq!(BadCopies::load(&bridge).await.unwrap(), bad);
            // The new one repairs them all: the record is gone.
            let mut rec2 = BadCopiesRecord::default();
            rec2.save(&new, BadCopies::default().encode())
                .await
                .unwrap();
            assert!(BadCopies::load(&bridge).await.unwrap().set.is_empty());
        })
    });
}
