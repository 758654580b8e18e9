//! The Metad API end to end on three real replicas.

#[path = "support/harness.rs"]
mod harness;

use harness::{run_local, Cluster};
use std::time::Duration;
use tessera_metad::client::{ClientOptions, Consistency, MetaClient, WriteSpec};
use tessera_metad::error::{Error, RemoteKind};

#[test]
fn keys_versions_cas_batches_lists_and_errors() {
    let cluster = Cluster::start(3, 4);
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, ClientOptions::default())
            .await
            .expect("connect");
        assert_eq!(c.groups(), 4);
        let v1 = c.put(b"a", b"1").await.expect("put");
        // Replicas send raft over the framed transport, not Cap'n Proto.
        assert_raft_framed(&cluster);
        assert!(v1 > 0);
        let got = c
            .get(b"a", Consistency::Linearizable)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((got.value.as_slice(), got.version), (&b"1"[..], v1));
        // Compare-and-set: the right version wins, a stale one conflicts.
        let v2 = c.put_if(b"a", b"2", v1).await.expect("cas");
        assert!(v2 > v1);
        match c.put_if(b"a", b"3", v1).await {
            Err(Error::Remote {
                kind: RemoteKind::Conflict,
                message,
            }) => assert!(message.contains("version"), "{message}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        // Create-only.
        assert!(c.put_if(b"fresh", b"x", 0).await.is_ok());
        assert!(matches!(
            c.put_if(b"fresh", b"x", 0).await,
            Err(Error::Remote {
                kind: RemoteKind::Conflict,
                ..
            })
        ));
        // Batches are atomic within a hash tag.
        let ops = vec![
            WriteSpec {
                key: b"u/{al}/1".to_vec(),
                expected: Some(0),
                value: Some(b"x".to_vec()),
            },
            WriteSpec {
                key: b"u/{al}/2".to_vec(),
                expected: Some(0),
                value: Some(b"y".to_vec()),
            },
        ];
        c.batch(&ops).await.expect("batch");
        match c.batch(&ops).await {
            Err(Error::Remote {
                kind: RemoteKind::Conflict,
                ..
            }) => {}
            other => panic!("expected a conflict, got {other:?}"),
        }
        let spanning: Vec<WriteSpec> = (0..16)
            .map(|i| WriteSpec {
                key: format!("k{i}").into_bytes(),
                expected: None,
                value: Some(b"v".to_vec()),
            })
            .collect();
        match c.batch(&spanning).await {
            Err(Error::Remote {
                kind: RemoteKind::InvalidArgument,
                message,
            }) => assert!(message.contains("hash tag"), "{message}"),
            other => panic!("expected invalid argument, got {other:?}"),
        }
        // List merges every group in key order, with paging.
        for i in 0..50u32 {
            c.put(format!("list/{i:03}").as_bytes(), b"v")
                .await
                .unwrap();
        }
        let (page, more) = c.list(b"list/", b"", 20).await.unwrap();
        assert!(more);
        let keys: Vec<String> = page
            .iter()
            .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
            .collect();
        let want: Vec<String> = (0..20).map(|i| format!("list/{i:03}")).collect();
        assert_eq!(keys, want);
        let (page2, more2) = c
            .list(b"list/", page.last().unwrap().0.as_slice(), 100)
            .await
            .unwrap();
        assert_eq!(page2.len(), 30);
        assert!(!more2);
        // Delete.
        assert_eq!(c.delete(b"a", None).await.unwrap(), v2);
        assert_eq!(c.get(b"a", Consistency::Linearizable).await.unwrap(), None);
        // Follower reads (bounded staleness) see a write acknowledged a moment ago.
        c.put(b"f", b"1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let f = c
            .get(
                b"f",
                Consistency::Follower {
                    max_staleness: Duration::from_secs(2),
                },
            )
            .await
            .unwrap();
        assert_eq!(f.map(|v| v.value), Some(b"1".to_vec()));
        // Limits are refused with what to do.
        let big = vec![0u8; tessera_metad::limits::VALUE_LEN_MAX_BYTES + 1];
        match c.put(b"big", &big).await {
            Err(Error::Remote {
                kind: RemoteKind::TooLarge,
                message,
            }) => assert!(message.contains("at most"), "{message}"),
            other => panic!("expected too large, got {other:?}"),
        }
        match c.put(b"", b"v").await {
            Err(Error::Remote {
                kind: RemoteKind::InvalidArgument,
                message,
            }) => assert!(message.contains("empty"), "{message}"),
            other => panic!("expected invalid argument, got {other:?}"),
        }
    });
}

#[test]
fn node_registry_and_leases() {
    let cluster = Cluster::start(3, 2);
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, ClientOptions::default())
            .await
            .expect("connect");
        // Heartbeat before registering is refused clearly.
        match c.heartbeat("n1", 0, 100).await {
            Err(Error::Remote {
                kind: RemoteKind::InvalidArgument,
                message,
            }) => assert!(message.contains("registerNode"), "{message}"),
            other => panic!("expected invalid argument, got {other:?}"),
        }
        c.register_node(
            "n1",
            "127.0.0.1:9001",
            1 << 40,
            "z1",
            Duration::from_millis(1500),
        )
        .await
        .unwrap();
        c.register_node(
            "n2",
            "127.0.0.1:9002",
            1 << 40,
            "z2",
            Duration::from_millis(1500),
        )
        .await
        .unwrap();
        let nodes = c.list_nodes().await.unwrap();
        assert_eq!(nodes.len(), 2);
        assert!(nodes.iter().all(|n| n.live), "{nodes:?}");
        // n1 keeps heartbeating, n2 goes quiet: n2 turns dead.
        for _ in 0..20 {
            c.heartbeat("n1", 5, 1 << 40).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let nodes = c.list_nodes().await.unwrap();
        let n1 = nodes.iter().find(|n| n.node_id == "n1").unwrap();
        let n2 = nodes.iter().find(|n| n.node_id == "n2").unwrap();
        assert!(n1.live && n1.used == 5);
        assert!(!n2.live, "{n2:?}");

        // Leases: one holder, epochs grow, expiry lets another take over.
        let ttl = Duration::from_millis(400);
        let (ok, a) = c.acquire_lease(b"healer", b"A", ttl).await.unwrap();
        assert!(ok);
        let (ok, seen) = c.acquire_lease(b"healer", b"B", ttl).await.unwrap();
        assert!(!ok);
        assert_eq!(seen.holder, b"A");
        let (ok, r) = c.renew_lease(b"healer", b"A", a.epoch, ttl).await.unwrap();
        assert!(ok && r.epoch == a.epoch);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (ok, b) = c.acquire_lease(b"healer", b"B", ttl).await.unwrap();
        assert!(ok, "expired lease must be takeable");
        assert!(
            b.epoch > a.epoch,
            "a new holder gets a larger epoch (fencing)"
        );
        let (ok, _) = c.renew_lease(b"healer", b"A", a.epoch, ttl).await.unwrap();
        assert!(!ok, "the old holder cannot renew");
        c.release_lease(b"healer", b"B", b.epoch).await.unwrap();
        let (ok, c2) = c.acquire_lease(b"healer", b"A", ttl).await.unwrap();
        assert!(ok && c2.epoch > b.epoch);
    });
}

#[test]
fn five_replicas_serve_with_two_down() {
    let mut cluster = Cluster::start(5, 2);
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, ClientOptions::default())
            .await
            .expect("connect");
        for i in 0..20u32 {
            c.put(format!("five/{i}").as_bytes(), b"v").await.unwrap();
        }
        let s = c.status_of(&cluster.addrs[0]).await.unwrap();
        assert!(
            s.groups.iter().all(|g| g.voters.len() == 5),
            "{:?}",
            s.groups
        );
        // Any two down: a quorum of three remains.
        cluster.kill(0);
        cluster.kill(3);
        let c = MetaClient::connect(&cluster.addrs, ClientOptions::default())
            .await
            .expect("connect");
        for i in 0..20u32 {
            let k = format!("five/{i}");
            assert!(
                c.get(k.as_bytes(), Consistency::Linearizable)
                    .await
                    .unwrap()
                    .is_some(),
                "{k}"
            );
        }
        c.put(b"five/after", b"v")
            .await
            .expect("writes go on with 3 of 5");
    });
}

fn sockets_named(path: &std::path::Path) -> usize {
    tessera_rpc::local::sockets_named(path).unwrap()
}

/// Replicas given one local socket directory listen there and reach each
/// other (and a client given it reaches them) through it; one killed
/// leaves a stale socket that its restart replaces, and the cluster serves
/// on throughout.
#[test]
fn replicas_of_one_machine_talk_over_local_sockets() {
    let mut cluster = Cluster::start_configured(
        3,
        1,
        |d| format!("local_socket_dir = {:?}", d.join("sockets")),
        "",
    );
    let sockets = cluster.dir.path().join("sockets");
    let paths: Vec<_> = cluster
        .addrs
        .iter()
        .map(|a| tessera_rpc::local::server_socket(&sockets, a, 0).unwrap())
        .collect();
    let opts = || ClientOptions {
        security: tessera_metad::net::Security {
            local_socket_dir: Some(sockets.clone()),
            ..Default::default()
        },
        ..ClientOptions::default()
    };
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, opts())
            .await
            .expect("connect");
        for i in 0..20u32 {
            c.put(format!("local/{i}").as_bytes(), b"v").await.unwrap();
        }
        // The leader dials its followers: each follower's socket holds its
        // listener and the leader's connection at least.
        let counts: Vec<usize> = paths.iter().map(|p| sockets_named(p)).collect();
        assert!(
            counts.iter().filter(|&&n| n >= 2).count() >= 2,
            "sockets per replica (listener included): {counts:?}"
        );
        cluster.kill(0);
        assert!(paths[0].exists(), "a killed replica leaves its socket");
        c.put(b"local/after-kill", b"v").await.unwrap();
        cluster.restart(0);
        let c = MetaClient::connect(&cluster.addrs, opts())
            .await
            .expect("connect");
        for i in 0..20u32 {
            let k = format!("local/{i}");
            assert!(c
                .get(k.as_bytes(), Consistency::Linearizable)
                .await
                .unwrap()
                .is_some());
        }
        c.put(b"local/after-restart", b"v").await.unwrap();
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sockets_named(&paths[0]) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        sockets_named(&paths[0]) >= 2,
        "the restarted replica serves its socket again"
    );
}

/// Single-key writes many callers of one client make at once travel
/// together (`writeMany`): each caller gets its own write's outcome —
/// distinct keys all written with their own values, and of callers racing
/// to create one key exactly one wins while the rest get `conflict`.
#[test]
fn concurrent_writes_of_one_client_each_get_their_own_outcome() {
    let cluster = Cluster::start(3, 2);
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, ClientOptions::default())
            .await
            .expect("connect");
        let mut tasks = Vec::new();
        for w in 0..48u32 {
            let c = c.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut mine = Vec::new();
                for n in 0..20u32 {
                    let key = format!("k/{w}/{n}");
                    let value = format!("{w}-{n}-{}", "v".repeat(((w + n) % 50) as usize));
                    let v = c
                        .put_if(key.as_bytes(), value.as_bytes(), 0)
                        .await
                        .expect("create");
                    mine.push((key, value, v));
                }
                // Everyone races to create the same key.
                let won = c.put_if(b"race", format!("{w}").as_bytes(), 0).await;
                (mine, w, won)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (mine, w, won) = t.await.unwrap();
            for (key, value, v) in mine {
                let got = c
                    .get(key.as_bytes(), Consistency::Linearizable)
                    .await
                    .unwrap()
                    .expect("written key");
                assert_eq!(
                    got.value,
                    value.as_bytes(),
                    "{key} holds another caller's value"
                );
                assert_eq!(
                    got.version, v,
                    "{key}: the version returned is not the key's"
                );
            }
            match won {
                Ok(_) => winners.push(w),
                Err(Error::Remote {
                    kind: RemoteKind::Conflict,
                    ..
                }) => {}
                Err(e) => panic!("racing create: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "winners: {winners:?}");
        let race = c
            .get(b"race", Consistency::Linearizable)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(race.value, format!("{}", winners[0]).into_bytes());
        let many = cluster.metric_sum(
            "tessera_metad_requests_total",
            r#"op="write_many",result="ok""#,
        );
        assert!(many > 0.0, "no writeMany call was made");
    });
}

/// Replicas with node certificates send raft to each other on the framed
/// transport through TLS (not Cap'n Proto's `raft` method), and a client
/// with the node certificate writes and reads through them.
#[test]
fn replicas_with_tls_send_raft_framed() {
    let certs = tempfile::tempdir().expect("tempdir");
    let tls = tessera_tls::dev::ensure(certs.path()).expect("dev certificates");
    let cluster = Cluster::start_tls(3, 2, &tls);
    let opts = ClientOptions {
        security: tessera_metad::net::Security {
            tls: Some(tessera_tls::Connector::node(&tls).unwrap()),
            ..Default::default()
        },
        ..ClientOptions::default()
    };
    run_local(async {
        let c = MetaClient::connect(&cluster.addrs, opts)
            .await
            .expect("connect");
        for i in 0..20u32 {
            c.put(format!("tls/{i}").as_bytes(), b"v").await.unwrap();
        }
        for i in 0..20u32 {
            let k = format!("tls/{i}");
            let got = c.get(k.as_bytes(), Consistency::Linearizable).await;
            assert!(got.unwrap().is_some(), "{k} lost");
        }
    });
    assert_raft_framed(&cluster);
}

/// The replicas of `cluster` were sent raft messages on the framed
/// transport and none through Cap'n Proto's `raft` method.
fn assert_raft_framed(cluster: &Cluster) {
    let sent = |t: &str| {
        cluster.metric_sum(
            "tessera_metad_raft_messages_total",
            &format!("transport=\"{t}\""),
        )
    };
    assert!(sent("framed") > 0.0, "no raft message came framed");
    assert_eq!(sent("capnp"), 0.0, "raft messages came through Cap'n Proto");
}
