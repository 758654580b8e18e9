//! Shared by the chunk-server tests: real `chunkd` processes on 127.0.0.1
//! and a glommio executor to run clients on.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a test waits for chunkd to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A chunkd child process; killed with SIGKILL when dropped if still running.
pub struct Chunkd {
    pub child: Child,
    pub addr: SocketAddr,
    pub data: PathBuf,
    pub stdout: std::sync::mpsc::Receiver<String>,
}

impl Chunkd {
    /// Starts chunkd on `data` (2 engine shards, small segments) on a free
    /// port, waiting for its "listening on" line.
    pub fn start(data: &Path) -> Chunkd {
        Self::start_with(data, &[])
    }

    pub fn start_with(data: &Path, extra: &[&str]) -> Chunkd {
        Self::start_at(data, "127.0.0.1:0", extra)
    }

    /// Starts chunkd listening on `listen`.
    pub fn start_at(data: &Path, listen: &str, extra: &[&str]) -> Chunkd {
        Self::start_configured(data, listen, extra, "")
    }

    /// Starts chunkd with `toml` added to the test configuration.
    pub fn start_configured(data: &Path, listen: &str, extra: &[&str], toml: &str) -> Chunkd {
        let cfg = data.with_extension("toml");
        std::fs::write(
            &cfg,
            format!(
                "segment_size_bytes = 33554432\nshutdown_grace_secs = 5\npin_to_cores = false\n{toml}"
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chunkd"))
            .arg("--config")
            .arg(&cfg)
            .arg("--data")
            .arg(data)
            .args([
                "--listen",
                listen,
                "--shards",
                "2",
                "--log",
                "warn",
                "--insecure",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning chunkd");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx
            .recv_timeout(START_TIMEOUT)
            .expect("chunkd printed no listening line in time");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from chunkd: {line}"));
        Chunkd {
            child,
            addr,
            data: data.to_path_buf(),
            stdout: rx,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit (bounded); returns the status and
    /// what it printed after starting.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Vec<String>) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let lines = self.stdout.try_iter().collect();
                return (st, lines);
            }
            assert!(
                Instant::now() < deadline,
                "chunkd did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Chunkd {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill9();
        }
    }
}

/// Runs `f` on a fresh glommio executor and returns its result.
pub fn on_glommio<T, F, Fut>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    tessera_engine::raise_memlock().expect("memlock");
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move { f().await })
        .expect("executor")
        .join()
        .expect("executor thread")
}

/// Deterministic content for `id` of `len` bytes.
pub fn content(id: &[u8], len: usize) -> Vec<u8> {
    let mut x = crc32c::crc32c(id) as u64 | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
