//! A decorator that injects I/O faults into any device: EIO on the n-th write
//! or sync, ENOSPC on file creation, syncs that hang until released (a disk
//! that stops completing cache flushes). The plan is shared (`Arc`) so a test on
//! another thread can arm it while the engine runs.

use super::{Device, DeviceFile};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

/// What to break, and when. Countdowns: `-1` is off; `n >= 0` lets `n` more
/// operations succeed and fails the next one (once).
#[derive(Debug)]
pub struct FaultPlan {
    write_eio_after: AtomicI64,
    sync_eio_after: AtomicI64,
    create_enospc: AtomicBool,
    keep_durable_writes: AtomicBool,
    /// While true, syncs wait; the wakers of those waiting.
    syncs_stalled: Mutex<(bool, Vec<Waker>)>,
    /// Faults injected so far.
    pub injected: AtomicU64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            write_eio_after: AtomicI64::new(-1),
            sync_eio_after: AtomicI64::new(-1),
            create_enospc: AtomicBool::new(false),
            keep_durable_writes: AtomicBool::new(false),
            syncs_stalled: Mutex::new((false, Vec::new())),
            injected: AtomicU64::new(0),
        }
    }
}

impl FaultPlan {
    /// A plan that injects nothing until armed.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Fail the write after `n` more successful ones with EIO.
    pub fn fail_write_after(&self, n: i64) {
        self.write_eio_after.store(n, Ordering::SeqCst);
    }
    /// Fail the sync after `n` more successful ones with EIO.
    pub fn fail_sync_after(&self, n: i64) {
        self.sync_eio_after.store(n, Ordering::SeqCst);
    }
    /// While set, every sync waits, and completes once unset: a disk whose
    /// cache flushes stop completing. Writes still complete, but are not
    /// durable until a sync is. A write through a file that says its writes
    /// are durable (`set_keep_durable_writes`) needs no sync and is not
    /// stalled.
    pub fn stall_syncs(&self, stalled: bool) {
        let wakers = {
            let mut s = self.syncs_stalled.lock().unwrap_or_else(|p| p.into_inner());
            s.0 = stalled;
            if stalled {
                Vec::new()
            } else {
                std::mem::take(&mut s.1)
            }
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Waits while syncs are stalled.
    async fn sync_gate(&self) {
        std::future::poll_fn(|cx| {
            let mut s = self.syncs_stalled.lock().unwrap_or_else(|p| p.into_inner());
            if s.0 {
                if !s.1.iter().any(|w| w.will_wake(cx.waker())) {
                    s.1.push(cx.waker().clone());
                }
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// While set, creating a file fails with ENOSPC.
    pub fn set_disk_full(&self, full: bool) {
        self.create_enospc.store(full, Ordering::SeqCst);
    }

    /// While set, files say their writes are durable when the wrapped
    /// device's do (as the real one's, open with O_DSYNC), so flushes take
    /// the engine's real paths: one O_DSYNC write, or several writes and
    /// one sync. Unset (the default), every flush ends in a sync, so sync
    /// faults can be injected under any device.
    pub fn set_keep_durable_writes(&self, on: bool) {
        self.keep_durable_writes.store(on, Ordering::SeqCst);
    }
    /// The injected EIO of a write, if this write is the one to fail.
    fn write_fault(&self) -> io::Result<()> {
        if self.trip(&self.write_eio_after) {
            return Err(eio("write"));
        }
        Ok(())
    }
    fn trip(&self, counter: &AtomicI64) -> bool {
        loop {
            let n = counter.load(Ordering::SeqCst);
            if n < 0 {
                return false;
            }
            let next = if n == 0 { -1 } else { n - 1 };
            if counter
                .compare_exchange(n, next, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                if n == 0 {
                    self.injected.fetch_add(1, Ordering::SeqCst);
                }
                return n == 0;
            }
        }
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::new(
        io::Error::from_raw_os_error(libc::EIO).kind(),
        format!("injected EIO on {what}"),
    )
}

/// Wraps a device and breaks it according to a [`FaultPlan`].
pub struct FaultyDevice<D> {
    inner: D,
    plan: Arc<FaultPlan>,
}

impl<D> FaultyDevice<D> {
    /// Wraps `inner`.
    pub fn new(inner: D, plan: Arc<FaultPlan>) -> Self {
        FaultyDevice { inner, plan }
    }
}

impl<D: Device> Device for FaultyDevice<D> {
    type File = FaultyFile<D::File>;

    async fn create(&self, name: &str, len: u64) -> io::Result<Self::File> {
        if self.plan.create_enospc.load(Ordering::SeqCst) {
            self.plan.injected.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let inner = self.inner.create(name, len).await?;
        Ok(FaultyFile {
            inner,
            plan: self.plan.clone(),
        })
    }
    async fn open(&self, name: &str) -> io::Result<Self::File> {
        let inner = self.inner.open(name).await?;
        Ok(FaultyFile {
            inner,
            plan: self.plan.clone(),
        })
    }
    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to).await
    }
    async fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name).await
    }
    async fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir().await
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn alloc(&self, len: usize) -> <Self::File as DeviceFile>::Buf {
        self.inner.alloc(len)
    }
}

/// A file of a [`FaultyDevice`].
pub struct FaultyFile<F> {
    inner: F,
    plan: Arc<FaultPlan>,
}

impl<F: DeviceFile> DeviceFile for FaultyFile<F> {
    type Buf = F::Buf;
    type ReadBuf = F::ReadBuf;

    fn alloc(&self, len: usize) -> Self::Buf {
        self.inner.alloc(len)
    }
    fn shrink(buf: &mut Self::Buf, len: usize) {
        F::shrink(buf, len)
    }
    async fn write_at(&self, buf: Self::Buf, pos: u64) -> io::Result<()> {
        self.plan.write_fault()?;
        self.inner.write_at(buf, pos).await
    }
    async fn write_at_unsynced(&self, buf: Self::Buf, pos: u64) -> io::Result<()> {
        self.plan.write_fault()?;
        self.inner.write_at_unsynced(buf, pos).await
    }
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::ReadBuf> {
        self.inner.read_at(pos, len).await
    }
    async fn sync(&self) -> io::Result<()> {
        self.plan.sync_gate().await;
        if self.plan.trip(&self.plan.sync_eio_after) {
            return Err(eio("fdatasync"));
        }
        self.inner.sync().await
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn writes_are_durable(&self) -> bool {
        self.plan.keep_durable_writes.load(Ordering::SeqCst) && self.inner.writes_are_durable()
    }
}
