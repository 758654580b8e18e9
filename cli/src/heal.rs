//! Operator commands: the healer's view in `tessera status`, `tessera
//! scrub` (start or follow chunk servers' scrubs with a progress bar) and
//! `tessera repair` (ask the healer for a pass now, or preview what it
//! would do). They talk to metad (the registry, the healer's status key)
//! with an admin key, to chunk servers through the gateway (scrub), and
//! directly only with a node certificate (a dev cluster's: `repair
//! --dry-run` reads inventories, `node add` starts a chunk server).

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tessera_gateway::bridge::MetaBridge;
use tessera_healer::bad_copies::BadCopies;
use tessera_healer::limits::{DEAD_GRACE_DEFAULT_SECS, LEASE_NAME, REQUEST_KEY, STATUS_KEY};
use tessera_healer::status::{HealerStatus, RepairRequest};
use tessera_metad::client::{Consistency, Lease};

/// How often progress is polled.
const POLL: Duration = Duration::from_millis(500);
/// `tessera repair` and `tessera scrub` follow at most this long.
const FOLLOW_MAX: Duration = Duration::from_secs(24 * 3600);
/// A repair request nobody picks up within this is reported.
const REQUEST_PICKUP_MAX: Duration = Duration::from_secs(60);

/// The metad client of the calling executor.
pub async fn bridge(
    metad: &[String],
    security: tessera_metad::net::Security,
) -> Result<MetaBridge> {
    if metad.is_empty() {
        bail!("the cluster file names no metad replica; pass --cluster with a complete file");
    }
    MetaBridge::start(metad.to_vec(), security)
        .await
        .context("connecting to metad")
}

/// The healer lease and the leader's last published status.
pub async fn healer_state(b: &MetaBridge) -> Result<(Option<Lease>, Option<HealerStatus>)> {
    let lease = b
        .call("reading the healer lease", |c| async move {
            c.get_lease(LEASE_NAME).await
        })
        .await?;
    let st = b
        .call("reading the healer status", |c| async move {
            c.get(STATUS_KEY, Consistency::Linearizable).await
        })
        .await?
        .and_then(|v| serde_json::from_slice::<HealerStatus>(&v.value).ok());
    Ok((lease, st))
}

pub fn healer_json(lease: &Option<Lease>, st: &Option<HealerStatus>) -> serde_json::Value {
    serde_json::json!({
        "leader": lease.as_ref().map(|l| String::from_utf8_lossy(&l.holder).into_owned()),
        "epoch": lease.as_ref().map(|l| l.epoch),
        "status": st,
    })
}

pub fn print_healer(lease: &Option<Lease>, st: &Option<HealerStatus>) {
    match lease {
        Some(l) => println!(
            "healer: leader {} (epoch {}, lease {} ms left)",
            String::from_utf8_lossy(&l.holder),
            l.epoch,
            l.expires_in_ms
        ),
        None => println!("healer: NO LEADER (start `healer --metad …`; tessera dev runs two)"),
    }
    let Some(s) = st else {
        println!("  no pass published yet");
        return;
    };
    let ago = tessera_gateway::objects::now_millis().saturating_sub(s.updated_unix_millis);
    println!(
        "  phase {} ({} passes, last {:.1} s, updated {:.1} s ago){}",
        s.phase,
        s.passes,
        s.last_pass_secs,
        ago as f64 / 1000.0,
        if s.last_error.is_empty() {
            String::new()
        } else {
            format!("; last error: {}", s.last_error)
        }
    );
    let levels: Vec<String> = s
        .by_redundancy
        .iter()
        .rev()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    println!(
        "  objects by redundancy left (spare shards): {} of {} audited",
        if levels.is_empty() {
            "-".into()
        } else {
            levels.join(", ")
        },
        s.objects
    );
    let q: Vec<String> = s.queue.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!(
        "  repair queue: {} (this pass: {} done, {} failed, {} waiting for nodes, of {})",
        if q.is_empty() {
            "empty".into()
        } else {
            q.join(", ")
        },
        s.repairs_done,
        s.repairs_failed,
        s.repairs_waiting,
        s.repairs_planned
    );
    println!(
        "  since leading: {} shards rebuilt, {} moved, {} MiB repaired, {} orphans deleted ({} waiting), {} WAL entries finished",
        s.shards_rebuilt,
        s.shards_moved,
        s.bytes_repaired >> 20,
        s.orphans_deleted,
        s.orphans_tracked,
        s.wal_entries_finished
    );
    for n in &s.nodes {
        let pct = if n.scrub_bytes_total > 0 {
            format!(
                "{:.0}%",
                100.0 * n.scrub_bytes_verified as f64 / n.scrub_bytes_total as f64
            )
        } else {
            "-".into()
        };
        println!(
            "  scrub {:<24} {:<11} {:>8} shards, {} pass{} {}, {} bad found",
            n.node_id,
            n.state,
            n.shards,
            n.scrub_passes,
            if n.scrub_passes == 1 { "" } else { "es" },
            if n.scrub_running {
                format!("running {pct}")
            } else {
                "idle".into()
            },
            n.scrub_bad_found,
        );
    }
}

/// Starts a scrub on the live chunk servers (or the one whose id or address
/// is `node`) through the gateway (admin key) and follows it to the end.
pub async fn scrub(
    gw: crate::access::Gw,
    node: Option<String>,
    rate_mib: Option<u64>,
    json: bool,
) -> Result<()> {
    let c = crate::ops::connect(&gw).await?;
    let node = node.unwrap_or_default();
    let rate = rate_mib.unwrap_or(0).saturating_mul(1 << 20);
    let before: BTreeMap<String, tessera_rpc::NodeScrub> = c
        .scrub(&node, false, 0)
        .await?
        .into_iter()
        .map(|n| (n.node_id.clone(), n))
        .collect();
    for n in c.scrub(&node, true, rate).await? {
        if !n.error.is_empty() {
            bail!("chunk server {} at {}: {}", n.node_id, n.addr, n.error);
        }
    }
    let bar = progress_bar("scrubbing");
    let deadline = Instant::now() + FOLLOW_MAX;
    let mut out = BTreeMap::new();
    loop {
        let (mut verified, mut total, mut running) = (0u64, 0u64, false);
        for s in c.scrub(&node, false, 0).await? {
            let Some(b) = before.get(&s.node_id) else {
                continue;
            };
            // A pass that ended (more passes than before) counts as whole.
            let done = s.passes > b.passes && !s.running;
            verified += if done {
                s.bytes_total
            } else {
                s.bytes_verified
            };
            total += s.bytes_total;
            running |= !done;
            out.insert(
                s.node_id.clone(),
                (s.bytes_total, s.bad_found - b.bad_found.min(s.bad_found)),
            );
        }
        if let Some(b) = &bar {
            b.set_length(total.max(1));
            b.set_position(verified.min(total));
        }
        if !running {
            break;
        }
        if Instant::now() > deadline {
            bail!("scrubs still running after {FOLLOW_MAX:?}; follow them with `tessera status`");
        }
        glommio::timer::sleep(POLL).await;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let bad: u64 = out.values().map(|v| v.1).sum();
    if json {
        let nodes: Vec<_> = out
            .iter()
            .map(|(id, (bytes, bad))| serde_json::json!({"id": id, "bytes": bytes, "bad_found": bad}))
            .collect();
        println!("{}", serde_json::json!({"nodes": nodes, "bad_found": bad}));
    } else {
        for (id, (bytes, badn)) in &out {
            println!(
                "{id}: {} verified, {badn} bad shard(s)",
                crate::ops::human(*bytes)
            );
        }
        if bad > 0 {
            println!("{bad} bad shard(s) reported to the healer; it rewrites them from the other shards (`tessera status` follows it)");
        } else {
            println!("no bad shards");
        }
    }
    Ok(())
}

fn progress_bar(what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(1);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
            .ok()?
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    Some(b)
}

/// An audit here, changing nothing, with the leader's dead grace so that
/// it matches what the healer sees (bad-shard reports stay queued for it).
async fn preview(
    b: &MetaBridge,
    node_tls: Option<tessera_tls::Connector>,
    keys: &[String],
) -> Result<tessera_healer::healer::AuditReport> {
    let nodes = tessera_gateway::nodes::Nodes::new(b.clone(), node_tls, None);
    // The copies the leader was told are bad and has not repaired yet.
    let mut bad = BadCopies::load(b).await.unwrap_or_else(|e| {
        eprintln!("warning: {e}; the preview leaves those copies out");
        BadCopies::default()
    });
    let grace = match healer_state(b).await {
        Ok((_, Some(s))) if s.dead_grace_secs > 0 => s.dead_grace_secs,
        _ => DEAD_GRACE_DEFAULT_SECS,
    };
    Ok(tessera_healer::healer::audit_cluster(
        b,
        &nodes,
        Duration::from_secs(grace),
        &mut bad,
        keys,
        None,
    )
    .await?)
}

/// `tessera repair`: with `dry_run`, audits here and prints what the healer
/// would do; else asks the healer for a pass now and follows it.
pub async fn repair(
    b: MetaBridge,
    node_tls: Option<tessera_tls::Connector>,
    keys: Vec<String>,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    if dry_run {
        let r = preview(&b, node_tls, &keys).await?;
        let items: Vec<_> = r
            .findings
            .iter()
            .map(|f| {
                serde_json::json!({
                    "key": f.key,
                    "class": f.class().map(|c| c.name()),
                    "redundancy_left": f.left,
                    "missing": f.missing.iter().map(|m| serde_json::json!({"stripe": m.stripe, "shard": m.index, "why": format!("{:?}", m.why)})).collect::<Vec<_>>(),
                    "moves": f.moves.iter().map(|m| serde_json::json!({"stripe": m.stripe, "shard": m.index, "from": m.from, "to": m.to})).collect::<Vec<_>>(),
                })
            })
            .collect();
        if json {
            println!(
                "{}",
                serde_json::json!({"objects": r.objects, "by_redundancy": r.by_redundancy, "repairs": items})
            );
        } else {
            println!(
                "{} object(s) audited; {} need work (bad shards already taken by the healer are not shown):",
                r.objects,
                r.findings.len()
            );
            for f in &r.findings {
                let what: Vec<String> = f
                    .missing
                    .iter()
                    .map(|m| {
                        format!(
                            "rebuild stripe {} shard {} ({:?})",
                            m.stripe, m.index, m.why
                        )
                    })
                    .chain(f.moves.iter().map(|m| {
                        format!(
                            "move stripe {} shard {} {} -> {}",
                            m.stripe, m.index, m.from, m.to
                        )
                    }))
                    .collect();
                println!(
                    "  {:<32} {:<10} left {:>2}: {}",
                    f.key,
                    f.class().map_or("-", |c| c.name()),
                    f.left,
                    if what.is_empty() {
                        "clear the dirty flag".into()
                    } else {
                        what.join("; ")
                    }
                );
            }
        }
        return Ok(());
    }
    let (lease, _) = healer_state(&b).await?;
    if lease.is_none() {
        bail!("no healer is running, so nobody would repair: start one (`healer --metad …`; tessera dev runs two) and try again");
    }
    let id = tessera_gateway::objects::now_millis();
    let req = serde_json::to_vec(&RepairRequest {
        id,
        keys: keys.clone(),
    })?;
    b.call("asking the healer for a repair", move |c| async move {
        c.put(REQUEST_KEY, &req).await
    })
    .await?;
    let bar = progress_bar("repairing");
    let started = Instant::now();
    let mut picked = false;
    let st = loop {
        glommio::timer::sleep(POLL).await;
        let (_, st) = healer_state(&b).await?;
        if let Some(s) = &st {
            if s.request_id == id {
                picked = true;
                if let Some(bar) = &bar {
                    bar.set_length(s.repairs_planned.max(1));
                    bar.set_position(s.repairs_done + s.repairs_failed);
                }
                if s.request_done {
                    break st;
                }
            }
        }
        if !picked && started.elapsed() > REQUEST_PICKUP_MAX {
            bail!(
                "the healer did not pick the request up within {REQUEST_PICKUP_MAX:?}; see its log"
            );
        }
        if started.elapsed() > FOLLOW_MAX {
            bail!(
                "the repair is still running after {FOLLOW_MAX:?}; follow it with `tessera status`"
            );
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let s = st.unwrap_or_default();
    if json {
        println!("{}", serde_json::json!({"request": id, "status": s}));
    } else {
        println!(
            "repair pass done: {} of {} repaired, {} failed; objects by redundancy left: {}",
            s.repairs_done,
            s.repairs_planned,
            s.repairs_failed,
            s.by_redundancy
                .iter()
                .rev()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if s.repairs_failed > 0 {
        bail!(
            "{} repair(s) failed; the healer retries them on its next pass (see its log)",
            s.repairs_failed
        );
    }
    Ok(())
}

/// Longest `tessera node add` waits for the new chunk server.
const NODE_START_MAX: Duration = Duration::from_secs(60);
/// Compare-and-set tries on the node states key.
const NODE_STATES_TRIES: usize = 16;

/// Applies `change` to the node states key by compare-and-set.
async fn update_states(
    b: &MetaBridge,
    change: impl Fn(&mut tessera_gateway::nodes::NodeStates),
) -> Result<tessera_gateway::nodes::NodeStates> {
    use tessera_gateway::nodes::{NodeStates, NODE_STATES_KEY};
    for _ in 0..NODE_STATES_TRIES {
        let cur = b
            .call("reading the node states", |c| async move {
                c.get(NODE_STATES_KEY, Consistency::Linearizable).await
            })
            .await?;
        let (mut st, version) = match &cur {
            Some(v) => (
                serde_json::from_slice::<NodeStates>(&v.value)
                    .context("the node states key does not decode; fix or delete it")?,
                v.version,
            ),
            None => (NodeStates::default(), 0),
        };
        change(&mut st);
        let body = serde_json::to_vec(&st)?;
        match b
            .call("writing the node states", move |c| async move {
                c.put_if(NODE_STATES_KEY, &body, version).await
            })
            .await
        {
            Ok(_) => return Ok(st),
            Err(tessera_gateway::Error::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("the node states kept changing under this command; try again")
}

async fn list_nodes(b: &MetaBridge) -> Result<Vec<tessera_metad::client::NodeEntry>> {
    Ok(b.call(
        "listing chunk servers",
        |c| async move { c.list_nodes().await },
    )
    .await?)
}

/// `id`'s entry in `nodes`, or an error that says where to look.
fn find_node<'a>(
    nodes: &'a [tessera_metad::client::NodeEntry],
    id: &str,
) -> Result<&'a tessera_metad::client::NodeEntry> {
    nodes.iter().find(|n| n.node_id == id).with_context(|| {
        format!("no chunk server {id:?} is registered; `tessera status` lists them")
    })
}

async fn registered(b: &MetaBridge, id: &str) -> Result<tessera_metad::client::NodeEntry> {
    Ok(find_node(&list_nodes(b).await?, id)?.clone())
}

/// `tessera node drain ID`: the node takes no new shards and the healer
/// moves its shards to where placement now puts them.
pub async fn node_drain(b: MetaBridge, id: String, undo: bool, json: bool) -> Result<()> {
    let nodes = list_nodes(&b).await?;
    let n = find_node(&nodes, &id)?;
    let st = update_states(&b, |s| {
        s.draining.retain(|x| *x != id);
        if !undo {
            s.draining.push(id.clone());
        }
    })
    .await?;
    let others = nodes
        .iter()
        .filter(|x| x.live && !st.draining.contains(&x.node_id))
        .count();
    if json {
        println!(
            "{}",
            serde_json::json!({"node": id, "draining": !undo, "live_others": others})
        );
    } else if undo {
        println!("{id} takes new shards again");
    } else {
        println!(
            "{id} ({}) is draining: it takes no new shards and the healer moves its shards to the {others} other live chunk servers; \
             `tessera status` shows its shard count fall (stripes wider than {others} servers cannot move)",
            n.addr
        );
    }
    Ok(())
}

/// `tessera node remove ID`: forgets a chunk server. Refused while a
/// record names a shard on it and it is live (drain it first).
pub async fn node_remove(
    b: MetaBridge,
    node_tls: Option<tessera_tls::Connector>,
    id: String,
    json: bool,
) -> Result<()> {
    let n = registered(&b, &id).await?;
    let r = preview(&b, node_tls, &[]).await?;
    let named = match r.view.inventoried.iter().position(|x| *x == id) {
        Some(i) => r
            .view
            .holders
            .values()
            .flatten()
            .filter(|h| h.node as usize == i && h.named.get())
            .count(),
        None => 0,
    };
    if n.live && named > 0 {
        bail!(
            "{id} is live and holds {named} shard(s) that objects use: drain it first (`tessera node drain {id}`) \
             and remove it when `tessera status` shows the healer has moved them"
        );
    }
    update_states(&b, |s| {
        s.draining.retain(|x| *x != id);
        if !s.removed.contains(&id) {
            s.removed.push(id.clone());
        }
    })
    .await?;
    if json {
        println!(
            "{}",
            serde_json::json!({"node": id, "removed": true, "was_live": n.live})
        );
    } else {
        println!("{id} is removed: gateways and the healer no longer use it; shards it held are rebuilt elsewhere now");
        if n.live {
            println!("it is still running at {}: stop its chunkd process", n.addr);
        }
    }
    Ok(())
}

/// `tessera node add`: starts a chunk server for this cluster (detached,
/// logging to DATA/chunkd.log) and waits until the registry lists it live.
pub async fn node_add(
    b: MetaBridge,
    metad: Vec<String>,
    data: std::path::PathBuf,
    listen: String,
    config: Option<std::path::PathBuf>,
    tls: Option<tessera_tls::TlsFiles>,
    json: bool,
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let log_path = data.join("chunkd.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(crate::dev::sibling("chunkd")?);
    if let Some(c) = &config {
        cmd.arg("--config").arg(c);
    }
    cmd.args(tessera_tls::daemon_args(tls.as_ref()));
    let child = cmd
        .arg("--data")
        .arg(&data)
        .args(["--listen", &listen, "--metad", &metad.join(",")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(log.try_clone()?))
        .stderr(std::process::Stdio::from(log))
        // Its own process group: a Ctrl-C meant for this command (or a
        // dev cluster in the same terminal) does not stop it.
        .process_group(0)
        .spawn()
        .context("starting chunkd")?;
    let pid = child.id();
    let deadline = Instant::now() + NODE_START_MAX;
    // Its id is in DATA/NODE_ID once it has started.
    let entry = loop {
        if let Ok(id) = std::fs::read_to_string(data.join("NODE_ID")) {
            let id = id.trim().to_string();
            if let Ok(n) = registered(&b, &id).await {
                if n.live {
                    break n;
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the new chunk server (pid {pid}) did not register within {NODE_START_MAX:?}; see {}",
                log_path.display()
            );
        }
        glommio::timer::sleep(POLL).await;
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"node": entry.node_id, "addr": entry.addr, "pid": pid, "log": log_path})
        );
    } else {
        println!(
            "chunk server {} at {} (pid {pid}, log {}) is live; the healer moves the shards placement now puts on it",
            entry.node_id,
            entry.addr,
            log_path.display()
        );
    }
    Ok(())
}
