//! Helpers shared by the end-to-end tests: a `tessera dev` cluster as a
//! child process, the CLI, and a client on its own executor.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tessera_rpc::{ConnectOptions, GatewayClient};

pub const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");

pub struct Dev {
    pub child: Child,
    pub dir: PathBuf,
    pub cluster: PathBuf,
    /// Extra `tessera dev` flags (kept for restarts).
    pub extra: Vec<String>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the dev process this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `tessera dev` with `chunk_servers` and `extra` flags in a fresh
/// directory named after `tag` and this process.
pub fn start_dev(tag: &str, chunk_servers: usize, extra: &[&str]) -> Dev {
    let dir = std::env::temp_dir().join(format!("tessera-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = dir.join("cluster.toml");
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let child = spawn_dev(&dir, &cluster, chunk_servers, &extra);
    let mut dev = Dev {
        child,
        dir,
        cluster,
        extra,
    };
    wait_for_cluster(&mut dev);
    dev
}

pub fn spawn_dev(dir: &Path, cluster: &Path, chunk_servers: usize, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("dev.out"))
        .unwrap();
    Command::new(TESSERA)
        .arg("dev")
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--cluster")
        .arg(cluster)
        .args([
            "--chunk-servers",
            &chunk_servers.to_string(),
            "--segment-mib",
            "16",
        ])
        .args(extra)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start tessera dev")
}

pub fn wait_for_cluster(dev: &mut Dev) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !dev.cluster.exists() {
        if let Ok(Some(st)) = dev.child.try_wait() {
            panic!(
                "tessera dev exited ({st}) before writing its cluster file: {}",
                std::fs::read_to_string(dev.dir.join("dev.out")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "tessera dev did not write its cluster file: {}",
            std::fs::read_to_string(dev.dir.join("dev.out")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops the dev cluster with SIGINT (as Ctrl-C does) and starts it again
/// on the same data directory.
pub fn restart_dev(dev: &mut Dev, chunk_servers: usize) {
    // SAFETY: kill(2) on the dev process this test started.
    unsafe { libc::kill(dev.child.id() as i32, libc::SIGINT) };
    let status = dev.child.wait().unwrap();
    assert!(status.success(), "tessera dev stopped with {status}");
    assert!(
        !dev.cluster.exists(),
        "a stopped cluster leaves no cluster file"
    );
    dev.child = spawn_dev(&dev.dir, &dev.cluster, chunk_servers, &dev.extra);
    wait_for_cluster(dev);
}

pub fn cluster(dev: &Dev) -> toml::Value {
    toml::from_str(&std::fs::read_to_string(&dev.cluster).unwrap()).unwrap()
}

/// A gateway and how to reach it (the cluster file's CA and key).
#[derive(Debug, Clone)]
pub struct Gw {
    pub addr: SocketAddr,
    pub opts: ConnectOptions,
}

/// The dev cluster's gateway, with TLS and the admin key of its cluster
/// file.
pub fn gateway_addr(dev: &Dev) -> Gw {
    let file = tessera_rpc::cluster::read(&dev.cluster).unwrap();
    let opts = ConnectOptions {
        tls: file
            .ca
            .as_ref()
            .map(|ca| tessera_tls::Connector::client(ca).unwrap()),
        credentials: file.credentials.clone(),
        local_socket: None,
    };
    Gw {
        addr: file.gateway.parse().unwrap(),
        opts,
    }
}

/// The dev cluster's node certificate (what its daemons use): tests that
/// talk to chunk servers or metad directly act as a node.
pub fn node_tls(dev: &Dev) -> tessera_tls::Connector {
    let files = tessera_tls::dev::existing(&dev.dir.join("data").join("tls")).unwrap();
    tessera_tls::Connector::node(&files).unwrap()
}

/// The daemon flags of the dev cluster's certificates.
pub fn tls_flags(dev: &Dev) -> Vec<std::ffi::OsString> {
    let f = tessera_tls::dev::existing(&dev.dir.join("data").join("tls")).unwrap();
    tessera_tls::daemon_args(Some(&f))
}

/// metad options of a node of the dev cluster.
pub fn node_metad_options(dev: &Dev) -> tessera_metad::client::ClientOptions {
    tessera_metad::client::ClientOptions {
        security: tessera_metad::net::Security {
            tls: Some(node_tls(dev)),
            credentials: None,
            local_socket_dir: None,
        },
        ..Default::default()
    }
}

pub fn metad_addrs(dev: &Dev) -> Vec<String> {
    cluster(dev)["metad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Runs `f` on a current-thread tokio runtime with a `LocalSet`, as metad's
/// client runs.
pub fn run_local<T>(f: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// The address of the dev cluster's process `name` (`chunkd-1` ...).
pub fn addr_of(dev: &Dev, name: &str) -> String {
    cluster(dev)["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn pid_of(dev: &Dev, name: &str) -> i32 {
    cluster(dev)["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap()["pid"]
        .as_integer()
        .unwrap() as i32
}

pub fn kill9(pid: i32) {
    // SAFETY: kill(2) on a process of the dev cluster this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

pub fn tessera(dev: &Dev, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = Command::new(TESSERA);
    c.arg("--cluster").arg(&dev.cluster).args(args);
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(b) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs `f` with a client on a glommio executor of its own.
pub fn with_client<T: Send + 'static, F, Fut>(gw: Gw, f: F) -> T
where
    F: FnOnce(GatewayClient) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    tessera_engine::raise_memlock().unwrap();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let c = GatewayClient::connect_with(gw.addr, gw.opts)
                .await
                .expect("connect to the gateway");
            f(c).await
        })
        .unwrap()
        .join()
        .unwrap()
}

pub fn blob(seed: u64, len: usize) -> Vec<u8> {
    let mut r = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    r.fill(&mut v[..]);
    v
}

/// Every `(key, seed, len)` must read back exactly.
pub fn check_all(gw: &Gw, objects: Vec<(String, u64, usize)>) {
    with_client(gw.clone(), move |c| async move {
        for (key, seed, len) in objects {
            let got = c
                .get(&key)
                .await
                .unwrap_or_else(|e| panic!("get {key}: {e}"));
            assert!(
                got == blob(seed, len),
                "{key}: {} bytes back, want {len} exact",
                got.len()
            );
        }
    })
}

/// Scrapes the metrics endpoint of process `name` and parses it.
pub fn scrape(dev: &Dev, name: &str) -> prometheus_parse::Scrape {
    use std::io::{Read, Write};
    let addr = cluster(dev)["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["metrics"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("{name} has no metrics address in the cluster file"));
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{name}'s metrics do not parse: {e}\n{body}"))
}

/// The value of the sample `metric` with exactly these labels (0 if none).
pub fn sample(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
