//! Unix-socket connections between processes on one machine (the S3 front,
//! or any client, to its gateway), with socket buffers sized for the large
//! messages that cross them.
//!
//! Why this module exists: Linux gives a Unix stream socket
//! `net.core.wmem_default` (208 KiB) of send buffer, and a sender may have
//! at most that much queued at its peer. A 1 MiB answer then crosses in
//! five or more rounds of "send what fits, sleep, be woken when the reader
//! drained it" on each side; measured under 1 MiB GETs at 32 in flight that
//! made the local socket *slower* than TCP with TLS (loopback TCP sizes its
//! buffers up to `net.ipv4.tcp_wmem`, 4 MiB). Every local connection here
//! asks for [`LOCAL_SOCKET_BUFFER_BYTES`] both ways.
//!
//! An accepted Unix socket does not inherit the listener's buffer sizes, and
//! glommio's Unix streams do not expose their descriptor, so connections are
//! accepted by a thread of the listener's own ([`LocalListener`]), which
//! sizes each socket before handing it to the executor; connecting sizes
//! the socket before `connect`.
//!
//! The accept thread also checks the peer's user (SO_PEERCRED): only the
//! listener's own user and root are handed on. The socket file's mode
//! (0600, set by its owner) is the first guard; this one holds when the
//! mode was loosened.
//!
//! Invariants: every socket handed out has had its buffers asked for (a
//! kernel that grants less, because `net.core.wmem_max` is lower, is
//! reported once, with the sysctl that lifts it); the accept thread ends
//! when its [`LocalListener`] drops, and at most
//! [`ACCEPTED_QUEUE_MAX`] accepted connections wait for the executor (the
//! kernel's listen backlog holds the rest).

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use std::os::fd::{AsFd, FromRawFd, IntoRawFd};
use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Send and receive buffer asked for on every local connection, in bytes.
/// Linux doubles what it is asked for (bookkeeping overhead) after capping
/// it at `net.core.wmem_max` / `rmem_max`: 2 MiB asked is 4 MiB granted,
/// room for a 1 MiB answer and the next ones without a wake-up between.
pub const LOCAL_SOCKET_BUFFER_BYTES: usize = 2 << 20;

/// Accepted connections waiting for the executor to take them; past this
/// the accept thread waits (and the kernel's backlog queues new clients).
pub const ACCEPTED_QUEUE_MAX: usize = 16;

/// Pause of the accept thread after a failed accept (out of descriptors,
/// say), so that a persistent failure does not spin a core.
const ACCEPT_FAILED_PAUSE: Duration = Duration::from_millis(20);

/// Pause between connection attempts while the listener's backlog is full.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(1);
/// Least time between two logged refusals of a peer of another user; the
/// ones in between are counted and the count logged with the next (a
/// stranger connecting in a loop must not flood the log).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Which refused connections are logged: the first, then at most one per
/// [`REFUSAL_LOG_EVERY`], each carrying how many were refused silently
/// since the last one logged.
#[derive(Default)]
struct RefusalLog {
    last: Option<std::time::Instant>,
    silent: u64,
}

impl RefusalLog {
    /// A refusal at `now`: `Some(refused silently before it)` when this
    /// one is to be logged.
    fn note(&mut self, now: std::time::Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY)
        {
            self.silent += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.silent))
    }
}

/// Whether the "buffers capped by the kernel" warning was given.
static CAPPED_REPORTED: AtomicBool = AtomicBool::new(false);

/// Asks for [`LOCAL_SOCKET_BUFFER_BYTES`] of send and receive buffer on
/// `sock`; returns the send buffer the kernel granted.
pub fn size_buffers(sock: impl AsFd) -> std::io::Result<usize> {
    let s = socket2::SockRef::from(&sock);
    s.set_send_buffer_size(LOCAL_SOCKET_BUFFER_BYTES)?;
    s.set_recv_buffer_size(LOCAL_SOCKET_BUFFER_BYTES)?;
    let granted = s.send_buffer_size()?;
    if granted < 2 * LOCAL_SOCKET_BUFFER_BYTES && !CAPPED_REPORTED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            granted_bytes = granted,
            wanted_bytes = 2 * LOCAL_SOCKET_BUFFER_BYTES,
            "the kernel caps Unix socket buffers (net.core.wmem_max/rmem_max): large objects over \
             the local socket cross in more rounds; `sysctl -w net.core.wmem_max={} \
             net.core.rmem_max={}` lifts the cap",
            LOCAL_SOCKET_BUFFER_BYTES,
            LOCAL_SOCKET_BUFFER_BYTES
        );
    }
    Ok(granted)
}

/// Longest path a Unix socket address holds (`sun_path` less its NUL).
pub const UNIX_SOCKET_PATH_MAX_BYTES: usize = 107;

/// The socket that the server clients dial at `addr` (e.g.
/// `127.0.0.1:7100`) keeps for its executor `n` in a local socket
/// directory `dir` (`--local-socket-dir`): every process on a machine given
/// the same directory finds its neighbours' sockets by the addresses it
/// already knows, with no registry change. `None` when the path would be
/// too long for a socket address (then only TCP is used).
pub fn server_socket(dir: &Path, addr: &str, n: usize) -> Option<std::path::PathBuf> {
    let name: String = addr
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let p = dir.join(format!("{name}.{n}.sock"));
    (p.as_os_str().len() <= UNIX_SOCKET_PATH_MAX_BYTES).then_some(p)
}

/// The socket of executor `n` of the server dialled at `addr` in the local
/// socket directory `dir`, if one is there that a client may trust: a
/// socket file owned by this process's user or root (as only those can
/// bind in a directory made by [`prepare_dir`]; a file another user left in
/// a directory made by someone else is passed over, and TCP + TLS used).
pub fn trusted_socket(dir: &Path, addr: &str, n: usize) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let p = server_socket(dir, addr, n)?;
    let m = std::fs::symlink_metadata(&p).ok()?;
    let own = nix::unistd::geteuid().as_raw();
    (m.file_type().is_socket() && peer_allowed(m.uid(), own)).then_some(p)
}

/// How many sockets carry the name `path` in `/proc/net/unix`: a listener
/// and every connection it accepted share it, so more than one means
/// connections are open through it (tests and diagnostics).
pub fn sockets_named(path: &Path) -> std::io::Result<usize> {
    let want = path.to_string_lossy();
    Ok(std::fs::read_to_string("/proc/net/unix")?
        .lines()
        .filter(|l| l.split_whitespace().last() == Some(want.as_ref()))
        .count())
}

/// Creates the local socket directory `dir` (mode 0700: only this user may
/// bind or reach a socket in it) if it does not exist.
pub fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Binds the Unix socket at `path` with mode 0600, replacing a stale one
/// left by a crash — never one a running process still listens on.
pub fn bind_replacing_stale(path: &Path) -> std::io::Result<LocalListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if StdStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process listens on this socket (a second server on the same \
                     directory?); stop it or choose another path",
                ));
            }
            std::fs::remove_file(path)?
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is there; choose another path",
            ))
        }
        Err(_) => {}
    }
    let l = LocalListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Listens on the socket of executor `n` of the server dialled at `addr`
/// in the local socket directory `dir` (made 0700 if missing; a stale
/// socket replaced). Any failure is logged and answers `None`: the server
/// then serves over TCP only, and its clients fall back to TCP.
pub fn listen_in_dir(
    dir: &Path,
    addr: &str,
    n: usize,
) -> Option<(std::path::PathBuf, LocalListener)> {
    let Some(path) = server_socket(dir, addr, n) else {
        tracing::warn!(dir = %dir.display(), "the local socket directory's path is too long for a Unix socket; serving over TCP only");
        return None;
    };
    match prepare_dir(dir).and_then(|()| bind_replacing_stale(&path)) {
        Ok(l) => Some((path, l)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot listen on the local socket; serving over TCP only");
            None
        }
    }
}

/// Hands a connected, sized socket to the current glommio executor.
fn to_glommio(s: StdStream) -> std::io::Result<glommio::net::UnixStream> {
    s.set_nonblocking(true)?;
    // SAFETY: `into_raw_fd` gives up ownership of an open, connected Unix
    // stream socket; the glommio stream becomes its only owner.
    Ok(unsafe { glommio::net::UnixStream::from_raw_fd(s.into_raw_fd()) })
}

/// Connects to the Unix socket at `path` with sized buffers. A listener
/// whose backlog is full is retried until `timeout`.
pub async fn connect(path: &Path, timeout: Duration) -> std::io::Result<glommio::net::UnixStream> {
    let addr = socket2::SockAddr::unix(path)?;
    let started = std::time::Instant::now();
    loop {
        let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
        size_buffers(&sock)?;
        sock.set_nonblocking(true)?;
        match sock.connect(&addr) {
            Ok(()) => return to_glommio(StdStream::from(std::os::fd::OwnedFd::from(sock))),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if started.elapsed() >= timeout {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("its listener accepted nothing for {timeout:?} (backlog full)"),
                    ));
                }
                glommio::timer::sleep(CONNECT_RETRY_PAUSE).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A listening Unix socket whose connections get sized buffers. Accepts on
/// a thread of its own ("local-accept"); [`LocalListener::accept`] takes
/// the next connection on the calling glommio executor.
pub struct LocalListener {
    listener: Arc<StdListener>,
    accepted: mpsc::Receiver<std::io::Result<StdStream>>,
    closing: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalListener {
    /// Binds `path` (which must not exist) and starts accepting.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let listener = Arc::new(StdListener::bind(path)?);
        let (tx, accepted) = mpsc::channel(ACCEPTED_QUEUE_MAX);
        let closing = Arc::new(AtomicBool::new(false));
        let (l, c) = (listener.clone(), closing.clone());
        let thread = std::thread::Builder::new()
            .name("local-accept".into())
            .spawn(move || accept_loop(&l, &c, tx))?;
        Ok(LocalListener {
            listener,
            accepted,
            closing,
            thread: Some(thread),
        })
    }

    /// The next connection. An error (out of descriptors, say) is the
    /// accept thread's, which goes on accepting after a pause of its own
    /// (the caller need not wait); `BrokenPipe` means the thread ended and
    /// nothing more will come.
    pub async fn accept(&mut self) -> std::io::Result<glommio::net::UnixStream> {
        to_glommio(self.accept_std().await?)
    }

    /// Like [`LocalListener::accept`], for any executor: the accepted,
    /// sized socket (blocking; the caller makes it non-blocking for its
    /// runtime, e.g. tokio's `UnixStream::from_std`).
    pub async fn accept_std(&mut self) -> std::io::Result<StdStream> {
        match self.accepted.next().await {
            Some(r) => r,
            None => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the local socket's accept thread ended",
            )),
        }
    }
}

/// Whether a peer running as `peer_uid` may use a socket whose listener
/// runs as `own_uid`: the same user, or root.
fn peer_allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid || peer_uid == 0
}

/// The uid of the process at the other end of `s`, if the kernel says.
fn peer_uid(s: &StdStream) -> std::io::Result<u32> {
    nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.uid())
        .map_err(std::io::Error::from)
}

fn accept_loop(
    listener: &StdListener,
    closing: &AtomicBool,
    mut tx: mpsc::Sender<std::io::Result<StdStream>>,
) {
    let own_uid = nix::unistd::geteuid().as_raw();
    let mut refusals = RefusalLog::default();
    loop {
        let r = listener.accept().map(|(s, _)| s);
        if closing.load(Ordering::Acquire) {
            return;
        }
        if let Ok(s) = &r {
            // Refused here, without the pause of a failed accept: a
            // stranger connecting in a loop must not slow anyone else.
            let why = match peer_uid(s) {
                Ok(uid) if peer_allowed(uid, own_uid) => None,
                Ok(uid) => Some(format!(
                    "its peer runs as uid {uid}; only this process's user ({own_uid}) and root \
                     may use the local socket (check the socket file's mode)"
                )),
                Err(e) => Some(format!("its peer's user is unknown: {e}")),
            };
            if let Some(why) = why {
                if let Some(silent) = refusals.note(std::time::Instant::now()) {
                    tracing::warn!(
                        refused_silently_before = silent,
                        "refused a local connection: {why}"
                    );
                }
                continue;
            }
        }
        let r = r.and_then(|s| {
            size_buffers(&s)?;
            Ok(s)
        });
        let failed = r.is_err();
        if futures::executor::block_on(tx.send(r)).is_err() {
            return; // the listener is gone
        }
        if failed {
            std::thread::sleep(ACCEPT_FAILED_PAUSE);
        }
    }
}

impl Drop for LocalListener {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        // Wakes a send waiting for room, then an accept waiting for a client.
        self.accepted.close();
        let _ = socket2::SockRef::from(&*self.listener).shutdown(std::net::Shutdown::Read);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};

    fn wmem_max() -> usize {
        std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// A live socket is never taken over; a stale one (its listener gone)
    /// is replaced; a file that is not a socket is refused.
    #[test]
    fn bind_replacing_stale_takes_only_a_stale_socket() {
        tessera_engine::raise_memlock().unwrap();
        let dir = std::env::temp_dir().join(format!("tessera-local-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.sock");
        let p = path.clone();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let live = bind_replacing_stale(&p).unwrap();
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(
                    std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                    0o600
                );
                let Err(e) = bind_replacing_stale(&p) else {
                    panic!("a live socket was taken over")
                };
                assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
                drop(live);
                bind_replacing_stale(&p).expect("a stale socket is replaced");
            })
            .unwrap()
            .join()
            .unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let Err(e) = bind_replacing_stale(&plain) else {
            panic!("a plain file was taken over")
        };
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(
            std::fs::read(&plain).unwrap(),
            b"x",
            "the file is left alone"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A server's socket is named by the address clients dial (one per
    /// executor), never longer than a socket address holds; a client
    /// trusts only a socket file of its own user or root, never a plain
    /// file or another user's socket.
    #[test]
    fn server_sockets_are_named_by_address_and_trusted_by_owner() {
        use std::os::unix::fs::PermissionsExt;
        let top = dir("names");
        let d = top.join("sockets");
        prepare_dir(&d).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let p = server_socket(&d, "127.0.0.1:7410", 1).unwrap();
        assert_eq!(p, d.join("127.0.0.1_7410.1.sock"));
        assert!(server_socket(&d.join("x".repeat(200)), "127.0.0.1:7410", 0).is_none());
        assert_eq!(
            trusted_socket(&d, "127.0.0.1:7410", 1),
            None,
            "nothing there"
        );
        std::fs::write(&p, b"").unwrap();
        assert_eq!(
            trusted_socket(&d, "127.0.0.1:7410", 1),
            None,
            "a plain file"
        );
        std::fs::remove_file(&p).unwrap();
        let l = StdListener::bind(&p).unwrap();
        assert_eq!(trusted_socket(&d, "127.0.0.1:7410", 1), Some(p.clone()));
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
            assert_eq!(
                trusted_socket(&d, "127.0.0.1:7410", 1),
                None,
                "another user's"
            );
        }
        drop(l);
        let _ = std::fs::remove_dir_all(&top);
    }

    /// The kernel grants what was asked for, up to its cap (doubled).
    #[test]
    fn buffers_are_sized_up_to_the_kernel_cap() {
        let (a, b) = StdStream::pair().unwrap();
        let default = socket2::SockRef::from(&b).send_buffer_size().unwrap();
        let granted = size_buffers(&a).unwrap();
        assert_eq!(granted, 2 * LOCAL_SOCKET_BUFFER_BYTES.min(wmem_max()));
        if wmem_max() >= LOCAL_SOCKET_BUFFER_BYTES {
            assert!(granted > default, "granted {granted}, default {default}");
        }
    }

    /// Runs `f` on a fresh glommio executor and waits for it.
    fn on_executor<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        tessera_engine::raise_memlock().unwrap();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tessera-local-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Many large messages cross both ways byte-exact, over several
    /// connections accepted by the thread.
    #[test]
    fn large_messages_cross_both_ways() {
        let d = dir("cross");
        let path = d.join("s.sock");
        on_executor(move || async move {
            let mut l = LocalListener::bind(&path).unwrap();
            const CONNS: usize = 3;
            const BYTES: usize = 3 << 20;
            let server = glommio::spawn_local(async move {
                let mut tasks = Vec::new();
                for _ in 0..CONNS {
                    let mut s = l.accept().await.unwrap();
                    tasks.push(glommio::spawn_local(async move {
                        let mut buf = vec![0u8; BYTES];
                        s.read_exact(&mut buf).await.unwrap();
                        s.write_all(&buf).await.unwrap();
                        s.flush().await.unwrap();
                    }));
                }
                for t in tasks {
                    t.await;
                }
                l
            });
            let mut clients = Vec::new();
            for c in 0..CONNS {
                let p = path.clone();
                clients.push(glommio::spawn_local(async move {
                    let mut s = connect(&p, Duration::from_secs(5)).await.unwrap();
                    let data: Vec<u8> = (0..BYTES).map(|i| (i * 31 + c) as u8).collect();
                    s.write_all(&data).await.unwrap();
                    s.flush().await.unwrap();
                    let mut back = vec![0u8; BYTES];
                    s.read_exact(&mut back).await.unwrap();
                    assert!(back == data, "connection {c} came back different");
                }));
            }
            for c in clients {
                c.await;
            }
            drop(server.await);
        });
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Bytes `w` manages to queue, in 64 KiB writes, before its peer reads
    /// anything (measured after a pause long enough to fill any buffer).
    async fn queued_without_a_reader(mut w: glommio::net::UnixStream) -> usize {
        let queued = std::rc::Rc::new(std::cell::Cell::new(0usize));
        let q = queued.clone();
        let writer = glommio::spawn_local(async move {
            let chunk = vec![7u8; 64 << 10];
            for _ in 0..(16 << 20) / chunk.len() {
                if w.write_all(&chunk).await.is_err() {
                    break;
                }
                q.set(q.get() + chunk.len());
            }
            w
        });
        glommio::timer::sleep(Duration::from_millis(300)).await;
        let n = queued.get();
        drop(writer);
        n
    }

    /// Both ends — the one `connect` made and the one the accept thread
    /// made — can queue megabytes for a peer that is not reading: their
    /// send buffers were sized (an unsized Unix socket queues ~200 KiB).
    #[test]
    fn both_ends_queue_megabytes_without_a_reader() {
        if wmem_max() < LOCAL_SOCKET_BUFFER_BYTES {
            eprintln!("net.core.wmem_max is below {LOCAL_SOCKET_BUFFER_BYTES}: nothing to check");
            return;
        }
        let d = dir("queue");
        let path = d.join("s.sock");
        on_executor(move || async move {
            let mut l = LocalListener::bind(&path).unwrap();
            let c1 = connect(&path, Duration::from_secs(5)).await.unwrap();
            let s1 = l.accept().await.unwrap();
            let from_client = queued_without_a_reader(c1).await;
            let c2 = connect(&path, Duration::from_secs(5)).await.unwrap();
            let s2 = l.accept().await.unwrap();
            let from_server = queued_without_a_reader(s2).await;
            drop((s1, c2));
            assert!(
                from_client > 2 << 20,
                "the client queued {from_client} bytes"
            );
            assert!(
                from_server > 2 << 20,
                "the server queued {from_server} bytes"
            );
        });
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Dropping a listener ends its thread, also while connections wait
    /// that the executor never took (the thread blocked on a full queue).
    #[test]
    fn dropping_the_listener_ends_its_thread() {
        let d = dir("drop");
        let path = d.join("s.sock");
        let l = LocalListener::bind(&path).unwrap();
        let mut waiting = Vec::new();
        for _ in 0..ACCEPTED_QUEUE_MAX + 4 {
            waiting.push(StdStream::connect(&path).unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
        let started = std::time::Instant::now();
        drop(l);
        assert!(started.elapsed() < Duration::from_secs(5));
        // A new client is refused or never accepted: nothing listens.
        drop(waiting);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The first refusal is logged, then at most one per period, each
    /// with the count of those refused silently since the last logged.
    #[test]
    fn refusals_are_logged_at_most_once_a_period_with_a_count() {
        let t0 = std::time::Instant::now();
        let mut log = RefusalLog::default();
        assert_eq!(log.note(t0), Some(0));
        for i in 1..=5u64 {
            assert_eq!(log.note(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(log.note(t0 + REFUSAL_LOG_EVERY), Some(5));
        assert_eq!(
            log.note(t0 + REFUSAL_LOG_EVERY + Duration::from_secs(1)),
            None
        );
        assert_eq!(log.note(t0 + REFUSAL_LOG_EVERY * 2), Some(1));
    }

    #[test]
    fn only_the_same_user_and_root_are_allowed() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 0));
    }

    /// A process of another user that reaches the socket (its file mode
    /// loosened) is closed by the accept thread; this user's connection
    /// after it is served.
    #[test]
    fn another_user_is_refused_even_when_the_file_mode_admits_it() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        const NOBODY: u32 = 65534;
        if nix::unistd::geteuid().as_raw() != 0 || which("python3").is_none() {
            eprintln!("needs root and python3 to connect as another user: nothing to check");
            return;
        }
        let d = dir("peer");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = d.join("s.sock");
        let p = path.clone();
        on_executor(move || async move {
            let mut l = LocalListener::bind(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
            // The stranger connects, then waits to be closed: it prints
            // what it read (nothing, at end of stream) once closed.
            let out = std::process::Command::new("python3")
                .arg("-c")
                .arg(
                    "import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(5); \
                     s.connect(sys.argv[1]); print(repr(s.recv(1)))",
                )
                .arg(&p)
                .uid(NOBODY)
                .gid(NOBODY)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "the stranger's connect failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "b''");
            // Nothing was handed on for it; this user's connection is.
            let mut c = connect(&p, Duration::from_secs(5)).await.unwrap();
            let mut s = l.accept().await.unwrap();
            c.write_all(b"x").await.unwrap();
            c.flush().await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"x");
        });
        let _ = std::fs::remove_dir_all(&d);
    }

    fn which(cmd: &str) -> Option<std::path::PathBuf> {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| std::path::Path::new(d).join(cmd))
            .find(|p| p.exists())
    }

    /// Connecting to a path nobody listens on is an error, not a hang.
    #[test]
    fn connecting_to_nothing_fails() {
        let d = dir("nothing");
        let path = d.join("none.sock");
        on_executor(move || async move {
            assert!(connect(&path, Duration::from_secs(1)).await.is_err());
        });
        let _ = std::fs::remove_dir_all(&d);
    }
}
