//! Security end to end on a `tessera dev` cluster with TLS and access keys
//! (its default): who gets in, what each key may do, and that a refused
//! call changes nothing.
//!
//! - no key, a wrong secret, a revoked key (also on a connection opened
//!   before the revocation): refused, counted, nothing written;
//! - a read-only key cannot write; a prefix key cannot reach outside its
//!   prefix (reads, writes, lists); operator calls need admin;
//! - plaintext clients, and TLS clients without a node certificate, are
//!   refused by chunk servers; metad takes only node certificates or admin
//!   keys;
//! - a chunk server with a certificate from another CA cannot join.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tessera_rpc::{ConnectOptions, Credentials, Error, GatewayClient, GatewayErrorKind};

/// Runs `f` against a client of `gw`, returning the connect error instead
/// of panicking on it.
fn try_client<T: Send + 'static, F, Fut>(gw: Gw, f: F) -> Result<T, Error>
where
    F: FnOnce(GatewayClient) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, Error>> + 'static,
{
    tessera_engine::raise_memlock().unwrap();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let c = GatewayClient::connect_with(gw.addr, gw.opts).await?;
            f(c).await
        })
        .unwrap()
        .join()
        .unwrap()
}

fn kind(r: &Result<impl std::fmt::Debug, Error>) -> Option<GatewayErrorKind> {
    match r {
        Err(Error::Gateway { kind, .. }) => Some(*kind),
        _ => None,
    }
}

fn with_key(gw: &Gw, creds: Option<Credentials>) -> Gw {
    Gw {
        addr: gw.addr,
        opts: ConnectOptions {
            tls: gw.opts.tls.clone(),
            credentials: creds,
            local_socket: None,
        },
    }
}

fn create_key(dev: &Dev, perms: &str, prefix: &str) -> Credentials {
    let o = tessera(
        dev,
        &[
            "key",
            "create",
            "--permissions",
            perms,
            "--prefix",
            prefix,
            "--json",
        ],
        None,
    );
    assert!(
        o.status.success(),
        "key create: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    Credentials {
        key_id: v["key_id"].as_str().unwrap().into(),
        secret: v["secret"].as_str().unwrap().into(),
    }
}

/// Every object key in the cluster (as the admin sees it).
fn all_keys(gw: &Gw) -> Vec<String> {
    with_client(gw.clone(), |c| async move {
        c.list("", "", 1000)
            .await
            .unwrap()
            .0
            .into_iter()
            .map(|i| i.key)
            .collect()
    })
}

fn scrape(dev: &Dev, name: &str) -> String {
    let c = cluster(dev);
    let m = c["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap()["metrics"]
        .as_str()
        .unwrap()
        .to_string();
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&m).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn counter(text: &str, name: &str, reason: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn security_end_to_end() {
    let dev = start_dev("sec", 3, &["--k", "2", "--m", "1"]);
    let admin = gateway_addr(&dev);
    assert!(admin.opts.tls.is_some(), "tessera dev runs TLS by default");
    assert!(admin.opts.credentials.is_some(), "and gives the CLI a key");
    with_client(admin.clone(), |c| async move {
        c.put("shared/a", b"one").await.unwrap();
    });

    // 1. No key, a wrong secret, a malformed id: refused, nothing written.
    let nokey = with_key(&admin, None);
    let r = try_client(
        nokey.clone(),
        |c| async move { c.put("shared/b", b"x").await },
    );
    assert_eq!(
        kind(&r),
        Some(GatewayErrorKind::Unauthenticated),
        "no key: {r:?}"
    );
    let r = try_client(nokey, |c| async move { c.get("shared/a").await });
    assert_eq!(kind(&r), Some(GatewayErrorKind::Unauthenticated));
    let mut wrong = admin.opts.credentials.clone().unwrap();
    wrong.secret = "0".repeat(64);
    let r = try_client(with_key(&admin, Some(wrong.clone())), |c| async move {
        c.put("shared/b", b"x").await
    });
    assert_eq!(kind(&r), Some(GatewayErrorKind::Unauthenticated));
    let msg = format!("{:?}", r.unwrap_err());
    assert!(!msg.contains(&wrong.secret), "an error echoed the secret");
    let junk = Credentials {
        key_id: "x".repeat(5000),
        secret: "y".repeat(5000),
    };
    let r = try_client(with_key(&admin, Some(junk)), |c| async move {
        c.stat("shared/a").await
    });
    assert_eq!(kind(&r), Some(GatewayErrorKind::Unauthenticated));

    // 1b. The gateway's local socket (the S3 front's way in): only its
    // owner may open it, and it asks for a key just the same.
    let sock = dev.dir.join("data").join("gateway.sock");
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let m = std::fs::symlink_metadata(&sock).expect("tessera dev made the local socket");
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "owner only");
    }
    let local = |creds: Option<Credentials>| Gw {
        addr: admin.addr,
        opts: ConnectOptions {
            tls: None,
            credentials: creds,
            local_socket: Some(sock.clone()),
        },
    };
    let r = try_client(local(None), |c| async move { c.get("shared/a").await });
    assert_eq!(
        kind(&r),
        Some(GatewayErrorKind::Unauthenticated),
        "local, no key: {r:?}"
    );
    let r = try_client(local(Some(wrong.clone())), |c| async move {
        c.get("shared/a").await
    });
    assert_eq!(
        kind(&r),
        Some(GatewayErrorKind::Unauthenticated),
        "local, wrong secret"
    );
    let r = try_client(local(admin.opts.credentials.clone()), |c| async move {
        c.get("shared/a").await
    });
    assert_eq!(r.unwrap(), b"one", "local, with the key");

    // 2. Permissions and prefixes.
    let ro = with_key(&admin, Some(create_key(&dev, "r", "shared/")));
    let r = try_client(ro.clone(), |c| async move { c.get("shared/a").await });
    assert_eq!(r.unwrap(), b"one");
    for (what, r) in [
        (
            "write with a read-only key",
            try_client(ro.clone(), |c| async move {
                c.put("shared/b", b"x").await.map(|_| ())
            }),
        ),
        (
            "delete with a read-only key",
            try_client(ro.clone(), |c| async move {
                c.delete("shared/a").await.map(|_| ())
            }),
        ),
        (
            "read outside the prefix",
            try_client(ro.clone(), |c| async move {
                c.get("app/none").await.map(|_| ())
            }),
        ),
        (
            "list outside the prefix",
            try_client(ro.clone(), |c| async move {
                c.list("app/", "", 10).await.map(|_| ())
            }),
        ),
        (
            "operator status",
            try_client(ro.clone(), |c| async move { c.status().await.map(|_| ()) }),
        ),
        (
            "key creation",
            try_client(ro.clone(), |c| async move {
                c.create_key("x", "rwa", "").await.map(|_| ())
            }),
        ),
    ] {
        assert_eq!(
            kind(&r),
            Some(GatewayErrorKind::PermissionDenied),
            "{what}: {r:?}"
        );
    }
    // A list without a prefix is narrowed to the key's.
    let listed = try_client(ro.clone(), |c| async move { c.list("", "", 100).await }).unwrap();
    assert!(listed.0.iter().all(|i| i.key.starts_with("shared/")));
    let rw = create_key(&dev, "rw", "app/");
    let rwg = with_key(&admin, Some(rw.clone()));
    try_client(rwg.clone(), |c| async move { c.put("app/x", b"two").await })
        .expect("a write key writes under its prefix");
    let r = try_client(
        rwg.clone(),
        |c| async move { c.put("shared/z", b"x").await },
    );
    assert_eq!(kind(&r), Some(GatewayErrorKind::PermissionDenied));
    // The CLI with that key: operator commands exit 6.
    let o = std::process::Command::new(TESSERA)
        .arg("--cluster")
        .arg(&dev.cluster)
        .arg("status")
        .env("TESSERA_KEY_ID", &rw.key_id)
        .env("TESSERA_SECRET", &rw.secret)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains(&rw.secret), "the CLI printed the secret");

    // Nothing any refused call tried is there.
    assert_eq!(
        all_keys(&admin),
        vec!["app/x".to_string(), "shared/a".into()]
    );

    // 3. Revocation: new connections are refused at once; a connection
    // opened before stops within the session re-check.
    let o = tessera(&dev, &["key", "revoke", &rw.key_id], None);
    assert!(o.status.success(), "{o:?}");
    let r = try_client(rwg.clone(), |c| async move { c.stat("app/x").await });
    assert_eq!(kind(&r), Some(GatewayErrorKind::Unauthenticated));
    let ro_key = ro.opts.credentials.clone().unwrap();
    let cluster_file = dev.cluster.clone();
    let late = try_client(ro.clone(), move |c| async move {
        // Open and used before the revocation below.
        c.get("shared/a").await?;
        let o = std::process::Command::new(TESSERA)
            .arg("--cluster")
            .arg(&cluster_file)
            .args(["key", "revoke", &ro_key.key_id])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match c.get("shared/a").await {
                Ok(_) if Instant::now() < deadline => {
                    glommio::timer::sleep(Duration::from_millis(500)).await
                }
                other => return Ok(other),
            }
        }
    })
    .unwrap();
    assert_eq!(
        kind(&late),
        Some(GatewayErrorKind::Unauthenticated),
        "a revoked key kept working on an open connection: {late:?}"
    );
    let text = scrape(&dev, "gateway");
    for reason in ["unauthenticated", "wrong_secret", "permission", "revoked"] {
        assert!(
            counter(&text, "tessera_gateway_auth_refusals_total", reason) > 0.0,
            "refusals for {reason} not counted"
        );
    }

    // 4. Chunk servers take only node certificates; metad takes node
    // certificates or admin keys.
    let chunk: std::net::SocketAddr = addr_of(&dev, "chunkd-1").parse().unwrap();
    let ca = tessera_rpc::cluster::read(&dev.cluster)
        .unwrap()
        .ca
        .unwrap();
    for (what, tls) in [
        ("plaintext", None),
        (
            "TLS without a certificate",
            Some(tessera_tls::Connector::client(&ca).unwrap()),
        ),
    ] {
        let opts = tessera_rpc::ClientOptions {
            tls,
            attempts: 1,
            ..Default::default()
        };
        let r = on_executor(move || async move {
            let c = tessera_rpc::ChunkClient::connect(chunk, opts).await?;
            c.stat(b"anything").await.map(|_| ())
        });
        assert!(r.is_err(), "chunk server accepted a {what} client");
    }
    let metad = metad_addrs(&dev);
    let metad_with = |creds: Option<Credentials>| {
        let metad = metad.clone();
        let ca = ca.clone();
        run_local(async move {
            let opts = tessera_metad::client::ClientOptions {
                retry_deadline: Duration::from_secs(3),
                security: tessera_metad::net::Security {
                    tls: Some(tessera_tls::Connector::client(&ca).unwrap()),
                    credentials: creds,
                    local_socket_dir: None,
                },
                ..Default::default()
            };
            let c = tessera_metad::client::MetaClient::connect(&metad, opts).await?;
            c.put(b"sec/probe", b"x").await
        })
    };
    assert!(
        metad_with(None).is_err(),
        "metad served a client with no key"
    );
    let r = metad_with(Some(create_key(&dev, "rw", "")));
    assert!(r.is_err(), "metad served a non-admin key");
    metad_with(admin.opts.credentials.clone()).expect("metad serves an admin key");
    // The same through the client on a glommio executor, as the gateway,
    // the healer and the operator commands run it: a refused key is an
    // authentication error at once, not retried until the deadline.
    let bridge_with = |creds: Option<Credentials>| {
        let metad = metad.clone();
        let ca = ca.clone();
        on_executor(move || async move {
            let security = tessera_metad::net::Security {
                tls: Some(tessera_tls::Connector::client(&ca).unwrap()),
                credentials: creds,
                local_socket_dir: None,
            };
            let b = tessera_gateway::bridge::MetaBridge::start(metad, security).await?;
            b.call("the probe write", |c| async move {
                c.put(b"sec/probe-glommio", b"x").await
            })
            .await
        })
    };
    for (what, creds) in [
        ("no key", None),
        ("a non-admin key", Some(create_key(&dev, "rw", ""))),
    ] {
        // Retried until the deadline, it would end as `Unavailable`.
        let e =
            bridge_with(creds).expect_err(&format!("metad served a glommio client with {what}"));
        assert!(
            matches!(e, tessera_gateway::Error::Unauthenticated(_)),
            "refusing {what} is not an authentication error: {e:?}"
        );
        assert!(
            e.to_string().contains("access key"),
            "the refusal of {what} does not say what to do: {e}"
        );
    }
    bridge_with(admin.opts.credentials.clone())
        .expect("metad serves an admin key to a glommio client");

    // Raft between replicas needs a node certificate on the framed
    // transport too: a TLS client without one that opens with its preamble
    // is closed unanswered, and the refusal is counted.
    let before = counter(
        &scrape(&dev, "metad-1"),
        "tessera_metad_auth_refusals_total",
        "raft_without_certificate",
    );
    let (answered, closed, err) = {
        let addr = addr_of(&dev, "metad-1");
        let ca = ca.clone();
        run_local(async move {
            let security = tessera_metad::net::Security {
                tls: Some(tessera_tls::Connector::client(&ca).unwrap()),
                credentials: None,
                local_socket_dir: None,
            };
            let s = tessera_metad::net::open_stream(&addr, &security)
                .await
                .expect("TLS to metad without a client certificate");
            let conn = tessera_metad::raft_wire::Conn::start(s);
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                conn.call(1, 0, tessera_metad::net::KIND_VOTE, &0u64),
            )
            .await
            .expect("metad neither answered nor closed a framed raft connection");
            (conn.spoke_protocol(), conn.is_closed(), r.err())
        })
    };
    assert!(
        err.is_some() && closed && !answered,
        "metad answered framed raft from a client without a node certificate"
    );
    let after = counter(
        &scrape(&dev, "metad-1"),
        "tessera_metad_auth_refusals_total",
        "raft_without_certificate",
    );
    assert!(after > before, "the framed raft refusal was not counted");

    // 5. A chunk server with a certificate from another CA cannot join.
    let foreign_dir = dev.dir.join("foreign");
    let foreign = tessera_tls::dev::ensure(&foreign_dir.join("tls")).unwrap();
    let log = std::fs::File::create(foreign_dir.join("chunkd.log")).unwrap();
    let mut intruder =
        std::process::Command::new(std::path::Path::new(TESSERA).with_file_name("chunkd"))
            .arg("--data")
            .arg(foreign_dir.join("data"))
            .args(["--listen", "127.0.0.1:0", "--shards", "1", "--no-pin"])
            .args(["--metad", &metad.join(",")])
            .arg("--tls-ca")
            .arg(&foreign.ca)
            .arg("--tls-cert")
            .arg(&foreign.cert)
            .arg("--tls-key")
            .arg(&foreign.key)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let live = with_client(admin.clone(), |c| async move {
        c.status().await.unwrap().nodes.len()
    });
    let _ = intruder.kill();
    let _ = intruder.wait();
    assert_eq!(live, 3, "a node with another CA's certificate joined");
    let text = std::fs::read_to_string(foreign_dir.join("chunkd.log")).unwrap();
    assert!(
        text.contains("TLS") || text.contains("certificate"),
        "the intruder's log does not say why it was refused: {text}"
    );
}

/// Runs `f` on a glommio executor of its own.
fn on_executor<T: Send + 'static, F, Fut>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    tessera_engine::raise_memlock().unwrap();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}
