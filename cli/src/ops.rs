//! Object and status commands: each runs the client library
//! ([`tessera_rpc::GatewayClient`]) on a one-thread glommio executor.
//!
//! Output is for people by default and one JSON value with `--json`.
//! Exit codes: 0 done, 1 failed, 2 bad usage, 3 not found, 4 the cluster
//! is unreachable or unavailable, 5 data loss.

use crate::access::Gw;
use anyhow::{Context, Result};
use futures::io::AllowStdIo;
use std::future::Future;
use std::io::Read;
use tessera_rpc::{
    Error as RpcError, GatewayClient, GatewayErrorKind, ObjectInfo, PutIf, PutOutcome,
};

/// Transfers larger than this show a progress bar (on a terminal).
const PROGRESS_MIN_BYTES: u64 = 8 << 20;
/// Items per list request.
const LIST_PAGE: u32 = 1000;
/// Largest object read from stdin (its size must be known before it is sent).
const STDIN_MAX_BYTES: usize = 1 << 30;

/// Runs the future `make` builds on a fresh glommio executor thread and
/// returns its result (the future itself need not be `Send`).
pub fn on_executor<T, M, F>(make: M) -> Result<T>
where
    T: Send + 'static,
    M: FnOnce() -> F + Send + 'static,
    F: Future<Output = Result<T>> + 'static,
{
    tessera_engine::raise_memlock().context("io_uring needs locked memory")?;
    let h = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("tessera-cli")
        .spawn(make);
    match h {
        Ok(h) => h
            .join()
            .map_err(|e| anyhow::anyhow!("the client executor failed: {e}"))?,
        Err(e) => Err(anyhow::anyhow!("starting the client executor: {e}")),
    }
}

/// The exit code for an error.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<RpcError>() {
        Some(RpcError::Gateway { kind, .. }) => match kind {
            GatewayErrorKind::NotFound => 3,
            GatewayErrorKind::Unavailable | GatewayErrorKind::InsufficientNodes => 4,
            GatewayErrorKind::DataLoss => 5,
            GatewayErrorKind::Unauthenticated | GatewayErrorKind::PermissionDenied => 6,
            GatewayErrorKind::PreconditionFailed => 7,
            _ => 1,
        },
        Some(RpcError::Connect { .. })
        | Some(RpcError::Timeout { .. })
        | Some(RpcError::Transport { .. }) => 4,
        _ => 1,
    }
}

fn bar(len: u64, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if len < PROGRESS_MIN_BYTES || !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    Some(b)
}

fn info_json(i: &ObjectInfo) -> serde_json::Value {
    serde_json::json!({
        "key": i.key,
        "size": i.size,
        "version_id": i.version_id.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "created_unix_millis": i.created_unix_millis,
        "layout": i.layout,
        "dirty": i.dirty,
        "stripes": i.stripes,
    })
}

/// Connects (TLS and access key as the cluster file says).
pub async fn connect(gw: &Gw) -> Result<GatewayClient> {
    GatewayClient::connect_with(gw.addr, gw.opts.clone())
        .await
        .map_err(|e| {
            let hint = match &e {
                tessera_rpc::Error::Gateway { .. } => {
                    "check the access key (cluster file, or TESSERA_KEY_ID and TESSERA_SECRET)"
                }
                _ => "is the cluster running (`tessera dev`)?",
            };
            let msg = format!("gateway at {}: {hint}", gw.addr);
            anyhow::Error::new(e).context(msg)
        })
}

pub async fn put(gw: Gw, key: String, src: Option<String>, cond: PutIf, json: bool) -> Result<()> {
    let c = connect(&gw).await?;
    let (info, outcome) = match src.as_deref() {
        None | Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(STDIN_MAX_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .context("reading stdin")?;
            if buf.len() > STDIN_MAX_BYTES {
                anyhow::bail!("stdin holds more than {STDIN_MAX_BYTES} bytes; write it to a file and put the file");
            }
            c.put_if(&key, &buf, &[], &cond).await?
        }
        Some(path) => {
            let f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
            let size = f.metadata()?.len();
            let b = bar(size, &format!("put {key}"));
            let mut progress = |n: u64| {
                if let Some(b) = &b {
                    b.set_position(n)
                }
            };
            let r = c
                .put_reader_if(&key, size, AllowStdIo::new(f), &mut progress, &cond)
                .await?;
            if let Some(b) = b {
                b.finish_and_clear();
            }
            r
        }
    };
    let oc = match outcome {
        PutOutcome::Ok => "ok",
        PutOutcome::Accepted => "accepted",
    };
    if json {
        let mut v = info_json(&info);
        v["outcome"] = oc.into();
        println!("{v}");
    } else {
        println!("{oc}: {} ({} bytes, {})", info.key, info.size, info.layout);
        if outcome == PutOutcome::Accepted {
            println!("  stored with reduced redundancy (some chunk servers are down); the healer completes it");
        }
    }
    Ok(())
}

pub async fn get(gw: Gw, key: String, out: Option<String>, json: bool) -> Result<()> {
    let c = connect(&gw).await?;
    let info = c.stat(&key).await?;
    let b = bar(info.size, &format!("get {key}"));
    let mut progress = |n: u64| {
        if let Some(b) = &b {
            b.set_position(n)
        }
    };
    let info = match out.as_deref() {
        None | Some("-") => {
            c.get_to(&key, AllowStdIo::new(std::io::stdout()), &mut progress)
                .await?
        }
        Some(path) => {
            // Write beside the target and rename: a failed get leaves no
            // half file under the name asked for.
            let tmp = format!("{path}.tessera-partial");
            let f = std::fs::File::create(&tmp).with_context(|| format!("creating {tmp}"))?;
            let r = c.get_to(&key, AllowStdIo::new(f), &mut progress).await;
            match r {
                Ok(i) => {
                    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {path}"))?;
                    i
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e.into());
                }
            }
        }
    };
    if let Some(b) = b {
        b.finish_and_clear();
    }
    if json && out.as_deref().is_some_and(|o| o != "-") {
        println!("{}", info_json(&info));
    }
    Ok(())
}

pub async fn stat(gw: Gw, key: String, json: bool) -> Result<()> {
    let c = connect(&gw).await?;
    let i = c.stat(&key).await?;
    if json {
        println!("{}", info_json(&i));
    } else {
        println!("key:      {}", i.key);
        println!("size:     {} bytes", i.size);
        println!("layout:   {} ({} stripes)", i.layout, i.stripes);
        println!(
            "state:    {}",
            if i.dirty {
                "dirty (reduced redundancy)"
            } else {
                "clean"
            }
        );
        println!(
            "version:  {}",
            i.version_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        println!("created:  {} ms since the epoch", i.created_unix_millis);
    }
    Ok(())
}

pub async fn rm(gw: Gw, key: String, json: bool) -> Result<()> {
    let c = connect(&gw).await?;
    let existed = c.delete(&key).await?;
    if json {
        println!("{}", serde_json::json!({"key": key, "existed": existed}));
    } else if existed {
        println!("deleted {key}");
    } else {
        println!("{key} did not exist");
    }
    Ok(())
}

pub async fn ls(gw: Gw, prefix: String, limit: Option<u64>, json: bool) -> Result<()> {
    let c = connect(&gw).await?;
    let mut after = String::new();
    let mut shown = 0u64;
    let mut items = Vec::new();
    loop {
        let page = match limit {
            Some(l) => (l - shown).min(LIST_PAGE as u64) as u32,
            None => LIST_PAGE,
        };
        if page == 0 {
            break;
        }
        let (got, more) = c.list(&prefix, &after, page).await?;
        for i in &got {
            shown += 1;
            if json {
                items.push(info_json(i));
            } else {
                println!(
                    "{:>14}  {}{}",
                    i.size,
                    i.key,
                    if i.dirty { "  (dirty)" } else { "" }
                );
            }
        }
        match got.last() {
            Some(l) if more => after = l.key.clone(),
            _ => break,
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(items));
    }
    Ok(())
}

/// The JSON argument of `doc put`: inline, `@FILE`, or `-` for stdin.
pub fn read_json_arg(arg: &str) -> Result<String> {
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the document from stdin")?;
        return Ok(s);
    }
    if let Some(path) = arg.strip_prefix('@') {
        return std::fs::read_to_string(path).with_context(|| format!("reading {path}"));
    }
    Ok(arg.to_string())
}

pub async fn doc_put(gw: Gw, key: String, doc: String, hot: Vec<String>, json: bool) -> Result<()> {
    let c = connect(&gw).await?;
    let hot: Vec<&str> = hot.iter().map(String::as_str).collect();
    let (info, outcome, skipped) = c.put_doc(&key, &doc, &hot).await?;
    let oc = match outcome {
        PutOutcome::Ok => "ok",
        PutOutcome::Accepted => "accepted",
    };
    if json {
        let mut v = info_json(&info);
        v["outcome"] = oc.into();
        v["cold_skipped"] = skipped.into();
        println!("{v}");
    } else {
        println!("{oc}: {} ({})", info.key, info.layout);
        if skipped {
            println!("  cold part unchanged: its stripes were reused, not written again");
        }
    }
    Ok(())
}

pub async fn doc_get(gw: Gw, key: String, json: bool) -> Result<()> {
    let c = connect(&gw).await?;
    let (doc, _) = c.get_doc(&key).await?;
    // The document is JSON either way; --json changes nothing here.
    let _ = json;
    println!("{doc}");
    Ok(())
}

pub async fn status(
    gw: Gw,
    cluster: Option<tessera_rpc::cluster::ClusterFile>,
    json: bool,
) -> Result<()> {
    let c = connect(&gw).await?;
    let s = c.status().await?;
    // Object counts: one pass over the listing (bounded by the page size
    // times pages; fine for a dev cluster, the healer keeps counts later).
    let (mut objects, mut dirty, mut bytes) = (0u64, 0u64, 0u64);
    let mut after = String::new();
    for _ in 0..100 {
        let (page, more) = c.list("", &after, LIST_PAGE).await?;
        for i in &page {
            objects += 1;
            bytes += i.size;
            dirty += i.dirty as u64;
        }
        match page.last() {
            Some(l) if more => after = l.key.clone(),
            _ => break,
        }
    }
    let healer = match cluster.as_ref() {
        Some(c) => match crate::access::Access::new(Some(c)).and_then(|a| a.metad()) {
            Ok(sec) => match crate::heal::bridge(&c.metad, sec).await {
                Ok(b) => crate::heal::healer_state(&b).await.ok(),
                Err(_) => None,
            },
            Err(_) => None,
        },
        None => None,
    };
    let pid_of = |addr: &str| {
        cluster
            .as_ref()
            .and_then(|c| c.processes.iter().find(|p| p.addr == addr).map(|p| p.pid))
    };
    if json {
        let nodes: Vec<_> = s
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": n.node_id, "addr": n.addr, "pid": pid_of(&n.addr),
                    "state": if n.live { "live" } else { "dead" },
                    "capacity_bytes": n.capacity_bytes, "used_bytes": n.used_bytes, "zone": n.zone,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "gateway": {"id": s.gateway_id, "addr": gw.to_string(), "version": s.version, "uptime_secs": s.uptime_secs,
                            "layout": s.default_layout, "puts_ok": s.puts_ok, "puts_accepted": s.puts_accepted,
                            "gets_degraded": s.gets_degraded, "checksum_failures": s.checksum_failures, "wal_replayed": s.wal_replayed,
                            "docs_cold_reused": s.docs_cold_reused, "reads_hedged": s.reads_hedged,
                            "cache": {"hits": s.cache_hits, "misses": s.cache_misses, "bytes": s.cache_bytes,
                                      "capacity_bytes": s.cache_capacity_bytes, "evicted": s.cache_evicted,
                                      "rejected": s.cache_rejected}},
                "nodes": nodes,
                "objects": {"count": objects, "bytes": bytes, "dirty": dirty},
                "healer": healer.as_ref().map(|(l, s)| crate::heal::healer_json(l, s)),
            })
        );
        return Ok(());
    }
    println!(
        "gateway {} at {gw} (v{}, up {} s): {}",
        s.gateway_id, s.version, s.uptime_secs, s.default_layout
    );
    println!(
        "{:<24} {:<21} {:>8} {:<5} {:>10} {:>10}",
        "node", "address", "pid", "state", "capacity", "used"
    );
    for n in &s.nodes {
        println!(
            "{:<24} {:<21} {:>8} {:<5} {:>10} {:>10}",
            n.node_id,
            n.addr,
            pid_of(&n.addr).map_or("-".into(), |p| p.to_string()),
            if n.live { "live" } else { "DEAD" },
            human(n.capacity_bytes),
            human(n.used_bytes)
        );
    }
    println!("objects: {objects} ({}), dirty: {dirty}", human(bytes));
    println!(
        "since start: {} puts ok, {} accepted, {} degraded reads, {} checksum failures, {} WAL entries replayed, {} document updates reused their cold part, {} hedged stripe reads",
        s.puts_ok, s.puts_accepted, s.gets_degraded, s.checksum_failures, s.wal_replayed, s.docs_cold_reused, s.reads_hedged
    );
    if s.cache_capacity_bytes == 0 {
        println!("read cache: off");
    } else {
        println!(
            "read cache: {} of {}, {} hits, {} misses, {} evicted, {} not admitted",
            human(s.cache_bytes),
            human(s.cache_capacity_bytes),
            s.cache_hits,
            s.cache_misses,
            s.cache_evicted,
            s.cache_rejected
        );
    }
    match &healer {
        Some((l, st)) => crate::heal::print_healer(l, st),
        None => println!("healer: unknown (no cluster file with metad addresses)"),
    }
    Ok(())
}

pub fn human(b: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// `tessera key create`: prints the new key's id and secret (shown once).
pub async fn key_create(
    gw: Gw,
    name: String,
    permissions: String,
    prefix: String,
    json: bool,
) -> Result<()> {
    let c = connect(&gw).await?;
    let k = c.create_key(&name, &permissions, &prefix).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({"key_id": k.key_id, "secret": k.secret, "permissions": permissions, "prefix": prefix})
        );
    } else {
        println!("key id: {}", k.key_id);
        println!("secret: {}", k.secret);
        println!(
            "permissions {permissions:?}{}; the secret is shown only now: use it with \
             TESSERA_KEY_ID and TESSERA_SECRET, or in a cluster file",
            if prefix.is_empty() {
                String::new()
            } else {
                format!(", object keys under {prefix:?}")
            }
        );
    }
    Ok(())
}

/// `tessera key list`.
pub async fn key_list(gw: Gw, json: bool) -> Result<()> {
    let c = connect(&gw).await?;
    let keys = c.list_keys().await?;
    if json {
        let v: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({"key_id": k.key_id, "name": k.name, "permissions": k.permissions,
                    "prefix": k.prefix, "created_unix_millis": k.created_unix_millis, "revoked": k.revoked})
            })
            .collect();
        println!("{}", serde_json::json!({ "keys": v }));
    } else {
        for k in &keys {
            println!(
                "{:<24} {:<4} {:<8} {:<20} {}",
                k.key_id,
                k.permissions,
                if k.revoked { "revoked" } else { "active" },
                if k.prefix.is_empty() { "*" } else { &k.prefix },
                k.name
            );
        }
    }
    Ok(())
}

/// `tessera key revoke ID`.
pub async fn key_revoke(gw: Gw, key_id: String, json: bool) -> Result<()> {
    let c = connect(&gw).await?;
    let existed = c.revoke_key(&key_id).await?;
    if !existed {
        anyhow::bail!("no access key {key_id:?}; `tessera key list` shows them");
    }
    if json {
        println!("{}", serde_json::json!({"key_id": key_id, "revoked": true}));
    } else {
        println!("{key_id} revoked: it authenticates nothing from now on (open connections stop within seconds)");
    }
    Ok(())
}
