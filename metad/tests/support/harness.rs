//! Real metad processes on 127.0.0.1 for tests: start, kill -9, SIGTERM,
//! restart, all bounded in time.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ids: Vec<u64>,
    pub addrs: Vec<String>,
    /// Each replica's Prometheus endpoint (`--metrics`).
    pub metrics: Vec<String>,
    pub procs: Vec<Option<Child>>,
    pub groups: u32,
    config: PathBuf,
    /// Flags every replica starts with besides the harness's own (TLS).
    args: Vec<std::ffi::OsString>,
}

/// A port below the ephemeral range, so that the replicas' own outgoing
/// connections cannot take it before the replica binds it.
fn free_addr() -> String {
    let port = tessera_rpc::ports::pick_listen_port().expect("a free port");
    format!("127.0.0.1:{port}")
}

/// Fast raft timing for tests (elections in well under a second).
const TEST_CONFIG: &str =
    "[raft]\nheartbeat_ms = 50\nelection_timeout_min_ms = 400\nelection_timeout_max_ms = 800\n";

impl Cluster {
    pub fn start(n: usize, groups: u32) -> Cluster {
        Self::start_with(n, groups, "")
    }

    /// `extra_raft` is appended to the `[raft]` table of every replica.
    pub fn start_with(n: usize, groups: u32, extra_raft: &str) -> Cluster {
        Self::start_configured(n, groups, |_| String::new(), extra_raft)
    }

    /// `top(dir)` (given the cluster's directory) is put before the test
    /// configuration's tables; `extra_raft` is appended to `[raft]`.
    pub fn start_configured(
        n: usize,
        groups: u32,
        top: impl Fn(&std::path::Path) -> String,
        extra_raft: &str,
    ) -> Cluster {
        Self::start_with_args(n, groups, top, extra_raft, Vec::new())
    }

    /// Replicas that talk TLS with the node certificate in `tls` (the
    /// files of `tessera_tls::dev::ensure`).
    pub fn start_tls(n: usize, groups: u32, tls: &tessera_tls::TlsFiles) -> Cluster {
        Self::start_with_args(
            n,
            groups,
            |_| String::new(),
            "",
            tessera_tls::daemon_args(Some(tls)),
        )
    }

    fn start_with_args(
        n: usize,
        groups: u32,
        top: impl Fn(&std::path::Path) -> String,
        extra_raft: &str,
        args: Vec<std::ffi::OsString>,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("metad.toml");
        // Plaintext unless the flags give certificates.
        let insecure = if args.is_empty() {
            "insecure = true\n"
        } else {
            ""
        };
        std::fs::write(
            &config,
            format!("{insecure}{}\n{TEST_CONFIG}{extra_raft}", top(dir.path())),
        )
        .expect("config");
        let ids: Vec<u64> = (1..=n as u64).collect();
        let addrs: Vec<String> = ids.iter().map(|_| free_addr()).collect();
        let metrics: Vec<String> = ids.iter().map(|_| free_addr()).collect();
        let mut c = Cluster {
            dir,
            ids,
            addrs,
            metrics,
            procs: Vec::new(),
            groups,
            config,
            args,
        };
        for i in 0..n {
            let child = c.spawn(i, false);
            c.procs.push(Some(child));
        }
        c
    }

    pub fn peers_arg(&self) -> String {
        self.ids
            .iter()
            .zip(&self.addrs)
            .map(|(i, a)| format!("{i}={a}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&self, i: usize, join: bool) -> Child {
        let data = self.dir.path().join(format!("r{}", self.ids[i]));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_metad"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(["--id", &self.ids[i].to_string()])
            .arg("--data")
            .arg(&data)
            .args(["--listen", &self.addrs[i]])
            .args(["--metrics", &self.metrics[i]])
            .args(["--groups", &self.groups.to_string()])
            .args(["--log", "warn,openraft=off"])
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if join {
            cmd.arg("--join");
        } else {
            cmd.args(["--peers", &self.peers_arg()]);
        }
        let mut child = cmd.spawn().expect("spawn metad");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let line = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        assert!(
            line.contains("listening"),
            "metad {} did not start: {line:?}",
            self.ids[i]
        );
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        child
    }

    /// Adds a new replica process started with `--join`; returns its index.
    pub fn spawn_joiner(&mut self) -> usize {
        let id = self.ids.iter().max().copied().unwrap_or(0) + 1;
        self.ids.push(id);
        self.addrs.push(free_addr());
        self.metrics.push(free_addr());
        let i = self.ids.len() - 1;
        let child = self.spawn(i, true);
        self.procs.push(Some(child));
        i
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns whether it exited 0 within the bound.
    pub fn terminate(&mut self, i: usize) -> bool {
        let Some(mut c) = self.procs[i].take() else {
            return false;
        };
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let child = self.spawn(i, false);
        self.procs[i] = Some(child);
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("r{}", self.ids[i]))
    }

    /// The value of metric `name{label}` (e.g. `group="2"`) replica `i`
    /// reports, if it reports it.
    pub fn metric(&self, i: usize, name: &str, label: &str) -> Option<f64> {
        let text = tessera_metrics::scrape(&self.metrics[i]).ok()?;
        tessera_metrics::sample(&text, name, label)
    }

    /// The sum over all replicas of metric `name{label}`.
    pub fn metric_sum(&self, name: &str, label: &str) -> f64 {
        (0..self.metrics.len())
            .filter_map(|i| self.metric(i, name, label))
            .sum()
    }

    pub fn index_of_addr(&self, addr: &str) -> Option<usize> {
        self.addrs.iter().position(|a| a == addr)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

/// Runs `f` on a current-thread tokio runtime inside a `LocalSet`.
pub fn run_local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}
