//! The log's real device: O_DIRECT files written through an io_uring that
//! the replica's own tokio thread drives, so a durable write costs no
//! hand-off to another thread.
//!
//! Why not the engine's glommio device: the raft core runs on a tokio
//! thread, and with the log on a glommio executor of its own every flush
//! crossed threads twice (the job there, the completion back), each cross a
//! wake-up syscall, a context switch and the executor's park/unpark
//! (membarrier, several `io_uring_enter`s). Measured under whole-store PUT
//! load: ~200 µs of CPU per flush on the log threads against ~55 µs for
//! fio's O_DSYNC write through io_uring on the same disk.
//!
//! How: each operation gets an [`IoUring`] submission with its slot index as
//! user data and is submitted at once (one `io_uring_enter`, no wait). The
//! ring signals an eventfd when completions are posted; one local task
//! (the reaper) waits on that eventfd through tokio's reactor, drains the
//! completion queue into the slots and wakes their operations.
//!
//! Invariants:
//! - A buffer handed to the kernel lives in its slot until the kernel's
//!   completion for it has been reaped, even if the operation's future is
//!   dropped first; dropping the ring waits for every operation in flight.
//! - Only a buffer whose write has completed is kept for reuse (at most
//!   [`WRITE_BUFS_KEPT_MAX`], none above [`WRITE_BUF_KEPT_BYTES_MAX`]); a
//!   reused buffer is handed out with its length set to what was asked, and
//!   holds only bytes written into it since it was zeroed.
//! - Offsets, lengths and buffers are multiples of [`IO_ALIGN_BYTES`]
//!   (the device contract); files are opened O_DIRECT, and O_DSYNC except
//!   for the second descriptor [`DeviceFile::write_at_unsynced`] uses.
//! - Used from one thread, inside a tokio `LocalSet` (the reaper is a local
//!   task).

use io_uring::{opcode, squeue, types, IoUring};
use std::alloc::Layout;
use std::cell::{OnceCell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::ptr::NonNull;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use tessera_engine::device::{Device, DeviceFile};
use tessera_engine::limits::IO_ALIGN_BYTES;

/// [`IO_ALIGN_BYTES`] as a buffer length.
const ALIGN_BYTES: usize = IO_ALIGN_BYTES as usize;
use tokio::io::unix::AsyncFd;

/// Submission queue entries of one ring. A log has at most
/// `ZERO_FILL_IN_FLIGHT` (8) operations in flight; a full queue is
/// submitted and retried, never an error.
const RING_ENTRIES: u32 = 64;
/// Largest single read or write: an io_uring read/write length is a u32,
/// and the log never moves more than a segment (64 MiB) at once.
pub const RING_IO_BYTES_MAX: usize = 1 << 30;
/// Tries at submitting queued entries while the kernel answers EBUSY or
/// EAGAIN, reaping between tries.
const SUBMIT_ATTEMPTS_MAX: usize = 64;
/// Interrupted or refused waits tolerated while a dropped ring waits for
/// its operations in flight; past it (or on any other error) their buffers
/// are leaked rather than freed under the kernel.
const DROP_WAIT_FAILURES_MAX: usize = 1024;
/// Write buffers a ring keeps for reuse once their write has completed. A
/// log has one flush in flight (plus `ZERO_FILL_IN_FLIGHT` when zeroing a
/// new segment); a fresh buffer per flush cost a zeroed allocation and
/// page faults on never-touched memory every time (~4 % of a replica's CPU
/// under WAL appends; docs/BENCHMARKS.md, "2026-11-28 02:00").
const WRITE_BUFS_KEPT_MAX: usize = 4;
/// Largest write buffer kept for reuse, in bytes; a larger one (a big
/// checkpoint) is freed after its write.
const WRITE_BUF_KEPT_BYTES_MAX: usize = 8 << 20;

/// Memory the kernel may read or write during an operation: owned by its
/// slot until the completion is reaped.
enum Held {
    None,
    Buf(AlignedBuf),
}

enum Slot {
    Free,
    /// Submitted; the waker of the future waiting for it, if polled.
    InFlight {
        held: Held,
        waker: Option<Waker>,
    },
    /// Completed; the kernel's result (bytes, or a negative errno).
    Done {
        held: Held,
        res: i32,
    },
    /// Its future was dropped before completion: freed when reaped.
    Abandoned {
        _held: Held,
    },
}

struct Ring {
    uring: RefCell<IoUring>,
    slots: RefCell<Vec<Slot>>,
    in_flight: std::cell::Cell<usize>,
    /// Signalled by the kernel when completions are posted.
    eventfd: OwnedFd,
    /// Buffers of completed writes, for the next ones (at most
    /// [`WRITE_BUFS_KEPT_MAX`], none above [`WRITE_BUF_KEPT_BYTES_MAX`]).
    kept_bufs: RefCell<Vec<AlignedBuf>>,
}

impl Ring {
    fn new() -> io::Result<Rc<Ring>> {
        let uring = IoUring::new(RING_ENTRIES).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating the log's io_uring ({RING_ENTRIES} entries): {e}; io_uring must be enabled (sysctl kernel.io_uring_disabled=0) and RLIMIT_MEMLOCK large enough"),
            )
        })?;
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        uring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        // The reaper waits on a second descriptor of the same eventfd, so
        // it owns what it polls and the ring can go away first.
        let watched = eventfd.try_clone()?;
        let ring = Rc::new(Ring {
            uring: RefCell::new(uring),
            slots: RefCell::new(Vec::new()),
            in_flight: std::cell::Cell::new(0),
            eventfd,
            kept_bufs: RefCell::new(Vec::new()),
        });
        // SAFETY: an `OwnedFd` keeps its descriptor open, unchanged, for
        // the `AsyncFd`'s whole life.
        let watched =
            unsafe { AsyncFd::register_with_interest(watched, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        tokio::task::spawn_local(reap_loop(Rc::downgrade(&ring), watched));
        Ok(ring)
    }

    /// A write buffer of `len` bytes: a kept one that is large enough (the
    /// smallest such), else a new one. Contents unspecified (the device
    /// contract): a kept buffer holds its last write's bytes.
    fn take_buf(&self, len: usize) -> AlignedBuf {
        let mut kept = self.kept_bufs.borrow_mut();
        let best = kept
            .iter()
            .enumerate()
            .filter(|(_, b)| b.layout.size() >= len.max(1))
            .min_by_key(|(_, b)| b.layout.size())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let mut buf = kept.swap_remove(i);
                buf.len = len;
                buf
            }
            // Room to spare (the next power of two) for one that is kept:
            // flush sizes vary from one to the next, and an exact fit was
            // too small for the next flush about one time in four.
            None if len <= WRITE_BUF_KEPT_BYTES_MAX => {
                let mut buf = AlignedBuf::new(len.max(1).next_power_of_two());
                buf.len = len;
                buf
            }
            None => AlignedBuf::new(len),
        }
    }

    /// Keeps the buffer of a completed write for [`Ring::take_buf`], within
    /// the limits; otherwise frees it (a full set keeps its larger ones).
    fn keep_buf(&self, buf: AlignedBuf) {
        if buf.layout.size() > WRITE_BUF_KEPT_BYTES_MAX {
            return;
        }
        let mut kept = self.kept_bufs.borrow_mut();
        if kept.len() < WRITE_BUFS_KEPT_MAX {
            kept.push(buf);
        } else if let Some((i, _)) = kept
            .iter()
            .enumerate()
            .min_by_key(|(_, b)| b.layout.size())
            .filter(|(_, b)| b.layout.size() < buf.layout.size())
        {
            kept[i] = buf;
        }
    }

    /// Queues `entry` (its user data set here) holding `held`, submits it,
    /// and returns its completion.
    fn submit(self: &Rc<Self>, entry: squeue::Entry, held: Held) -> Op {
        let idx = {
            let mut slots = self.slots.borrow_mut();
            let idx = match slots.iter().position(|s| matches!(s, Slot::Free)) {
                Some(i) => i,
                None => {
                    slots.push(Slot::Free);
                    slots.len() - 1
                }
            };
            slots[idx] = Slot::InFlight { held, waker: None };
            idx
        };
        let entry = entry.user_data(idx as u64);
        let op = Op {
            ring: self.clone(),
            idx: Some(idx),
        };
        loop {
            // SAFETY: the memory `entry` points at is owned by slot `idx`
            // (or by an open file) until its completion is reaped.
            let pushed = unsafe { self.uring.borrow_mut().submission().push(&entry) };
            if pushed.is_ok() {
                break;
            }
            // Full: send what is queued to make room.
            self.submit_queued();
            if self.uring.borrow_mut().submission().is_full() {
                // Never handed to the kernel: its slot completes now.
                self.complete(idx, -libc::EBUSY);
                return op;
            }
        }
        self.in_flight.set(self.in_flight.get() + 1);
        self.submit_queued();
        op
    }

    /// Submits what is queued. A failure of `io_uring_enter` is not the
    /// operations' (their entries stay queued; the kernel's answer for each
    /// still comes, so their buffers stay held): EINTR is retried, EBUSY
    /// (completions to reap first) and EAGAIN (no kernel memory) are
    /// retried a bounded number of times after reaping, and whatever is
    /// still queued goes with the next submission or the reaper's.
    fn submit_queued(&self) {
        for _ in 0..SUBMIT_ATTEMPTS_MAX {
            let res = {
                let mut uring = self.uring.borrow_mut();
                if uring.submission().is_empty() {
                    return;
                }
                uring.submit()
            };
            match res {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    self.reap();
                    std::thread::yield_now();
                }
                Err(e) => {
                    tracing::error!(error = %e, "submitting to the log's io_uring failed");
                    return;
                }
            }
        }
        tracing::warn!(
            "the log's io_uring stayed busy; queued operations go with the next submission"
        );
    }

    fn complete(&self, idx: usize, res: i32) {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(idx) else {
            return;
        };
        match std::mem::replace(slot, Slot::Free) {
            Slot::InFlight { held, waker } => {
                *slot = Slot::Done { held, res };
                drop(slots);
                if let Some(w) = waker {
                    w.wake();
                }
            }
            // Abandoned: its memory is released now (the slot is free).
            Slot::Abandoned { .. } => {}
            other => *slot = other,
        }
    }

    /// Moves every posted completion into its slot.
    fn reap(&self) {
        let done: Vec<(usize, i32)> = {
            let mut uring = self.uring.borrow_mut();
            uring
                .completion()
                .map(|c| (c.user_data() as usize, c.result()))
                .collect()
        };
        for (idx, res) in done {
            self.in_flight.set(self.in_flight.get().saturating_sub(1));
            self.complete(idx, res);
        }
    }

    /// The reaper's turn: completions in, then anything left queued out.
    fn reap_and_submit(&self) {
        self.reap();
        self.submit_queued();
    }
}

#[cfg(test)]
thread_local! {
    /// Waits of a dropped ring on this thread that a signal or a full queue
    /// interrupted and that were made again (tests check the path runs).
    static DROP_WAIT_RETRIES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Operations still in the kernel when the last ring dropped on this
    /// thread returned (0 unless its buffers were leaked).
    static DROP_LEFT_IN_FLIGHT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel may still use slots' buffers: wait for all of it.
        let uring = self.uring.get_mut();
        let mut failures = 0;
        while self.in_flight.get() > 0 {
            match uring.submit_and_wait(1) {
                Ok(_) => {}
                // A signal (SIGTERM at shutdown) or a full completion
                // queue: the operations are still the kernel's; wait again.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) && failures < DROP_WAIT_FAILURES_MAX =>
                {
                    failures += 1;
                    #[cfg(test)]
                    DROP_WAIT_RETRIES.with(|n| n.set(n.get() + 1));
                }
                Err(e) => {
                    // Never free memory the kernel may still write into:
                    // leak the buffers of whatever is still in flight.
                    tracing::error!(error = %e, in_flight = self.in_flight.get(), "cannot wait for the log's I/O in flight; leaking its buffers");
                    std::mem::forget(std::mem::take(self.slots.get_mut()));
                    break;
                }
            }
            let n = uring.completion().count();
            self.in_flight.set(self.in_flight.get().saturating_sub(n));
        }
        #[cfg(test)]
        DROP_LEFT_IN_FLIGHT.with(|n| n.set(self.in_flight.get()));
        // Wake the reaper so it sees the ring gone and ends.
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

async fn reap_loop(ring: Weak<Ring>, watched: AsyncFd<OwnedFd>) {
    loop {
        let mut guard = match watched.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "waiting on the log's io_uring eventfd failed");
                return;
            }
        };
        // Resets the counter; its value does not matter (the completion
        // queue says what completed), nor does EAGAIN (nothing to reset).
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from our own eventfd.
        unsafe {
            libc::read(
                watched.get_ref().as_raw_fd(),
                (&mut count as *mut u64).cast(),
                8,
            )
        };
        // Cleared whether or not the read found a count: a completion
        // posted after the guard was taken raises readiness anew.
        guard.clear_ready();
        match ring.upgrade() {
            Some(r) => r.reap_and_submit(),
            None => return,
        }
    }
}

/// The completion of one submitted operation: the kernel's result.
struct Op {
    ring: Rc<Ring>,
    idx: Option<usize>,
}

impl Future for Op {
    type Output = (i32, Held);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(i32, Held)> {
        let Some(idx) = self.idx else {
            return Poll::Ready((-libc::EINVAL, Held::None));
        };
        let mut slots = self.ring.slots.borrow_mut();
        match std::mem::replace(&mut slots[idx], Slot::Free) {
            Slot::Done { held, res } => {
                drop(slots);
                self.idx = None;
                Poll::Ready((res, held))
            }
            Slot::InFlight { held, .. } => {
                slots[idx] = Slot::InFlight {
                    held,
                    waker: Some(cx.waker().clone()),
                };
                Poll::Pending
            }
            other => {
                slots[idx] = other;
                Poll::Pending
            }
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let Some(idx) = self.idx else { return };
        let mut slots = self.ring.slots.borrow_mut();
        // Done (or already free): nothing of it is in the kernel, and the
        // slot is free now.
        if let Slot::InFlight { held, .. } = std::mem::replace(&mut slots[idx], Slot::Free) {
            slots[idx] = Slot::Abandoned { _held: held };
        }
    }
}

fn check(res: i32, what: &str) -> io::Result<usize> {
    if res < 0 {
        let e = io::Error::from_raw_os_error(-res);
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(res as usize)
    }
}

/// Refuses an I/O longer than [`RING_IO_BYTES_MAX`] (the kernel's length
/// field would truncate it).
fn check_len(len: usize, what: &str) -> io::Result<()> {
    if len > RING_IO_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a log {what} of {len} bytes is above the {RING_IO_BYTES_MAX}-byte limit of one I/O; split it"),
        ));
    }
    Ok(())
}

/// An owned buffer aligned for O_DIRECT.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    /// Bytes in use (what a write covers, what a read returned).
    len: usize,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let cap = len.max(1).next_multiple_of(ALIGN_BYTES);
        let layout = Layout::from_size_align(cap, ALIGN_BYTES)
            .unwrap_or_else(|_| panic!("a buffer of {cap} bytes exceeds the address space"));
        // Zeroed: the device contract leaves contents unspecified, but a
        // slice over uninitialised bytes is undefined behaviour in Rust.
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        #[cfg(test)]
        tests::LIVE_BUFS.with(|n| n.set(n.get() + 1));
        AlignedBuf { ptr, len, layout }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        #[cfg(test)]
        tests::LIVE_BUFS.with(|n| n.set(n.get() - 1));
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` ≤ the allocation, all of it initialised (zeroed
        // when allocated; a kept buffer holds only bytes written since).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_ref`, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// One directory of log segment files on a real file system.
pub struct RingDevice {
    dir: PathBuf,
    ring: Rc<Ring>,
}

impl RingDevice {
    /// Opens (creating if needed) `dir`. Must run inside a tokio `LocalSet`.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<RingDevice> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        Ok(RingDevice {
            dir,
            ring: Ring::new()?,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn open_file(&self, path: &Path, create: bool) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("opening {} with O_DIRECT: {e}", path.display()),
                )
            })
    }

    async fn fsync(&self, fd: RawFd, what: &str) -> io::Result<()> {
        let entry = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        let (res, _) = self.ring.submit(entry, Held::None).await;
        check(res, what).map(|_| ())
    }
}

impl Device for RingDevice {
    type File = RingFile;

    async fn create(&self, name: &str, len: u64) -> io::Result<RingFile> {
        let path = self.path(name);
        let file = self.open_file(&path, true)?;
        if len > 0 {
            let entry = opcode::Fallocate::new(types::Fd(file.as_raw_fd()), len).build();
            let (res, _) = self.ring.submit(entry, Held::None).await;
            if let Err(e) = check(res, "allocating a log segment") {
                drop(file);
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        }
        Ok(RingFile::new(self.ring.clone(), file, len))
    }

    async fn open(&self, name: &str) -> io::Result<RingFile> {
        let file = self.open_file(&self.path(name), false)?;
        let len = file.metadata()?.len();
        Ok(RingFile::new(self.ring.clone(), file, len))
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path(from), self.path(to))
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path(name))
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let dir = std::fs::File::open(&self.dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "opening the log directory {} to sync it: {e}",
                    self.dir.display()
                ),
            )
        })?;
        self.fsync(dir.as_raw_fd(), "syncing the log directory")
            .await
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn alloc(&self, len: usize) -> AlignedBuf {
        self.ring.take_buf(len)
    }
}

/// An open log segment file.
pub struct RingFile {
    ring: Rc<Ring>,
    /// O_DIRECT + O_DSYNC: reads, durable writes, fdatasync.
    file: std::fs::File,
    /// The same file without O_DSYNC, for a flush of several writes that
    /// ends in one fdatasync; opened on first use through `/proc/self/fd`
    /// (which names the open inode whatever it has been renamed to). `None`
    /// if that failed: the O_DSYNC descriptor writes instead.
    plain: OnceCell<Option<std::fs::File>>,
    len: u64,
}

impl RingFile {
    fn new(ring: Rc<Ring>, file: std::fs::File, len: u64) -> RingFile {
        RingFile {
            ring,
            file,
            plain: OnceCell::new(),
            len,
        }
    }

    async fn write_fd(&self, fd: RawFd, buf: AlignedBuf, pos: u64) -> io::Result<()> {
        let want = buf.len;
        check_len(want, "write")?;
        let entry = opcode::Write::new(types::Fd(fd), buf.ptr.as_ptr(), want as u32)
            .offset(pos)
            .build();
        let (res, held) = self.ring.submit(entry, Held::Buf(buf)).await;
        if let Held::Buf(buf) = held {
            self.ring.keep_buf(buf);
        }
        let n = check(res, "an O_DIRECT log write")?;
        if n != want {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short O_DIRECT write: {n} of {want} bytes at {pos}"),
            ));
        }
        Ok(())
    }
}

impl DeviceFile for RingFile {
    type Buf = AlignedBuf;
    type ReadBuf = AlignedBuf;

    fn alloc(&self, len: usize) -> AlignedBuf {
        self.ring.take_buf(len)
    }

    fn shrink(buf: &mut AlignedBuf, len: usize) {
        buf.len = buf.len.min(len);
    }

    async fn write_at(&self, buf: AlignedBuf, pos: u64) -> io::Result<()> {
        self.write_fd(self.file.as_raw_fd(), buf, pos).await
    }

    async fn write_at_unsynced(&self, buf: AlignedBuf, pos: u64) -> io::Result<()> {
        let plain = self.plain.get_or_init(|| {
            let path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
            {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(%path, error = %e, "cannot open a log segment a second time without O_DSYNC; its flushes write with O_DSYNC");
                    None
                }
            }
        });
        let fd = plain.as_ref().unwrap_or(&self.file).as_raw_fd();
        self.write_fd(fd, buf, pos).await
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<AlignedBuf> {
        check_len(len, "read")?;
        let buf = AlignedBuf::new(len);
        let cap = buf.layout.size();
        let entry = opcode::Read::new(
            types::Fd(self.file.as_raw_fd()),
            buf.ptr.as_ptr(),
            cap as u32,
        )
        .offset(pos)
        .build();
        let (res, held) = self.ring.submit(entry, Held::Buf(buf)).await;
        let n = check(res, "an O_DIRECT log read")?;
        match held {
            Held::Buf(mut b) => {
                b.len = n.min(len);
                Ok(b)
            }
            Held::None => Err(io::Error::other("a log read lost its buffer")),
        }
    }

    async fn sync(&self) -> io::Result<()> {
        let entry = opcode::Fsync::new(types::Fd(self.file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        let (res, _) = self.ring.submit(entry, Held::None).await;
        check(res, "fdatasync of a log segment").map(|_| ())
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn writes_are_durable(&self) -> bool {
        // O_DSYNC: a completed write is on stable storage.
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::task::Poll;

    thread_local! {
        /// Buffers of this thread not yet freed.
        pub(super) static LIVE_BUFS: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
    }

    use crate::runtime::run_local;

    /// Bytes each write of a batch may touch: writes of one batch never
    /// overlap (their order on disk is not defined).
    const REGION_BYTES: usize = 8 * ALIGN_BYTES;
    const REGIONS: usize = 8;

    #[derive(Debug, Clone)]
    struct Write {
        /// Offset in its region and length, in blocks.
        at_block: usize,
        blocks: usize,
        fill: u8,
        durable: bool,
    }

    fn write() -> impl Strategy<Value = Write> {
        (0usize..8, 1usize..=8, any::<u8>(), any::<bool>()).prop_map(
            |(at_block, blocks, fill, durable)| Write {
                at_block,
                blocks: blocks.min(8 - at_block),
                fill,
                durable,
            },
        )
    }

    /// A device on `dir` and its new file `f.seg` of `len` bytes.
    async fn new_file(dir: &Path, len: usize) -> (RingDevice, RingFile) {
        let dev = RingDevice::open(dir).unwrap();
        let f = dev.create("f.seg", len as u64).await.unwrap();
        (dev, f)
    }

    /// A new file with `count` writes of 1 MiB started, the i-th filled
    /// with `fill + i` at MiB i, each dropped after its first poll (which
    /// submits it).
    async fn with_abandoned_writes(
        dir: &Path,
        count: usize,
        fill: u8,
        durable: bool,
    ) -> (RingDevice, RingFile) {
        let n = 1 << 20;
        let (dev, f) = new_file(dir, count * n).await;
        for i in 0..count {
            let mut buf = f.alloc(n);
            buf.as_mut().fill(fill + i as u8);
            let pos = (i * n) as u64;
            let first = if durable {
                futures::poll!(Box::pin(f.write_at(buf, pos)))
            } else {
                futures::poll!(Box::pin(f.write_at_unsynced(buf, pos)))
            };
            assert!(matches!(first, Poll::Pending | Poll::Ready(Ok(()))));
        }
        (dev, f)
    }

    /// Checks that MiB i of `bytes` is all `fill + i`.
    fn assert_written(bytes: &[u8], fill: u8, when: &str) {
        for (i, chunk) in bytes.chunks(1 << 20).enumerate() {
            assert!(
                chunk.iter().all(|&b| b == fill.wrapping_add(i as u8)),
                "write {i} was not all there {when}"
            );
        }
    }

    async fn read_whole(f: &RingFile, len: usize) -> Vec<u8> {
        f.read_at(0, len).await.unwrap().as_ref().to_vec()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Concurrent writes (durable or not) land where they were asked,
        /// read back as written, and are there after the device is dropped
        /// and the file reopened.
        #[test]
        fn concurrent_writes_read_back_and_survive_reopen(
            batches in proptest::collection::vec(proptest::collection::vec(write(), 1..=REGIONS), 1..6)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let len = REGION_BYTES * REGIONS;
            let mut model = vec![0u8; len];
            let got = run_local(async {
                let dev = RingDevice::open(dir.path()).unwrap();
                let f = dev.create("f.seg", len as u64).await.unwrap();
                for batch in &batches {
                    let mut ops = Vec::new();
                    for (region, w) in batch.iter().enumerate() {
                        let pos = region * REGION_BYTES + w.at_block * ALIGN_BYTES;
                        let n = w.blocks * ALIGN_BYTES;
                        let mut buf = f.alloc(n);
                        buf.as_mut().fill(w.fill);
                        model[pos..pos + n].fill(w.fill);
                        let (f, durable) = (&f, w.durable);
                        ops.push(async move {
                            if durable {
                                f.write_at(buf, pos as u64).await
                            } else {
                                f.write_at_unsynced(buf, pos as u64).await
                            }
                        });
                    }
                    futures::future::try_join_all(ops).await.unwrap();
                }
                f.sync().await.unwrap();
                let live = read_whole(&f, len).await;
                drop(f);
                drop(dev);
                let dev = RingDevice::open(dir.path()).unwrap();
                let f = dev.open("f.seg").await.unwrap();
                assert_eq!(f.len(), len as u64);
                (live, read_whole(&f, len).await)
            });
            prop_assert!(got.0 == model, "read back while open differs from what was written");
            prop_assert!(got.1 == model, "read back after reopening differs from what was written");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Buffers of completed writes are reused within their limits: the
        /// kept set never passes `WRITE_BUFS_KEPT_MAX` buffers nor holds one
        /// above `WRITE_BUF_KEPT_BYTES_MAX`, a write as large as the largest
        /// so far (within the limit) allocates nothing new, and a reused
        /// buffer's older, longer contents never reach the file.
        #[test]
        fn write_buffers_are_kept_within_limits_and_reused(
            sizes in proptest::collection::vec(1usize..=2048, 1..24)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let blocks_max = *sizes.iter().max().unwrap();
            let len = blocks_max * ALIGN_BYTES;
            let ok = run_local(async {
                let (dev, f) = new_file(dir.path(), len).await;
                let mut model = vec![0u8; len];
                for (i, blocks) in sizes.iter().enumerate() {
                    let n = blocks * ALIGN_BYTES;
                    let mut buf = f.alloc(n);
                    assert_eq!(buf.as_ref().len(), n);
                    buf.as_mut().fill(i as u8 + 1);
                    model[..n].fill(i as u8 + 1);
                    f.write_at(buf, 0).await.unwrap();
                    let kept = dev.ring.kept_bufs.borrow();
                    assert!(kept.len() <= WRITE_BUFS_KEPT_MAX, "{} buffers kept", kept.len());
                    assert!(kept.iter().all(|b| b.layout.size() <= WRITE_BUF_KEPT_BYTES_MAX));
                }
                let live = LIVE_BUFS.with(|n| n.get());
                let mut buf = f.alloc(len);
                buf.as_mut().fill(0xEE);
                model.fill(0xEE);
                f.write_at(buf, 0).await.unwrap();
                let reused = LIVE_BUFS.with(|n| n.get()) == live || len > WRITE_BUF_KEPT_BYTES_MAX;
                let back = read_whole(&f, len).await;
                reused && back == model
            });
            prop_assert!(ok, "a write allocated although a kept buffer fit, or the file differs from what was written");
        }
    }

    /// A write whose future is dropped while the kernel still has it keeps
    /// its buffer until the completion is reaped; the write still lands,
    /// every slot comes free, and the ring keeps working.
    #[test]
    fn a_dropped_write_keeps_its_buffer_until_reaped() {
        let dir = tempfile::tempdir().unwrap();
        run_local(async {
            let (dev, f) = with_abandoned_writes(dir.path(), 8, 1, false).await;
            // Nothing was reaped yet (no await since): the slots hold the
            // buffers of the writes still in flight.
            assert_eq!(
                LIVE_BUFS.with(|n| n.get()),
                dev.ring.in_flight.get() as i64,
                "a dropped write freed its buffer while the kernel had it"
            );
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while dev.ring.in_flight.get() > 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "abandoned writes never completed"
                );
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert!(
                dev.ring
                    .slots
                    .borrow()
                    .iter()
                    .all(|s| matches!(s, Slot::Free)),
                "an abandoned slot was not freed when its completion was reaped"
            );
            assert_eq!(LIVE_BUFS.with(|n| n.get()), 0, "a reaped buffer was kept");
            f.sync().await.unwrap();
            let all = f.read_at(0, 8 << 20).await.unwrap();
            assert_written(all.as_ref(), 1, "after its future was dropped");
        });
    }

    /// Dropping the device while writes are in flight waits for them
    /// instead of freeing memory the kernel is still reading.
    #[test]
    fn dropping_the_device_waits_for_writes_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        run_local(async {
            let (dev, f) = with_abandoned_writes(dir.path(), 4, 0xa0, true).await;
            let ring = Rc::downgrade(&dev.ring);
            drop((f, dev));
            assert!(ring.upgrade().is_none(), "the ring outlived its device");
        });
        // The drop returned only after the kernel was done: every write
        // is in the file (O_DSYNC), whole.
        let bytes = std::fs::read(dir.path().join("f.seg")).unwrap();
        assert_written(&bytes, 0xa0, "when the device was dropped");
    }

    /// A timer that signals this thread (only) every `every`, through a
    /// handler without `SA_RESTART`, so that a blocking wait ends with
    /// EINTR as it does when SIGTERM arrives at shutdown. Stops on drop.
    struct SignalStorm(libc::timer_t);

    impl SignalStorm {
        fn start(every: std::time::Duration) -> SignalStorm {
            extern "C" fn ignore(_: libc::c_int) {}
            let sig = libc::SIGRTMIN() + 2;
            // SAFETY: plain libc calls on zeroed, then filled, structs; the
            // handler does nothing, so it is async-signal-safe.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
                sa.sa_flags = 0;
                libc::sigemptyset(&mut sa.sa_mask);
                assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
                let mut ev: libc::sigevent = std::mem::zeroed();
                ev.sigev_notify = libc::SIGEV_THREAD_ID;
                ev.sigev_signo = sig;
                ev.sigev_notify_thread_id = libc::gettid();
                let mut t: libc::timer_t = std::mem::zeroed();
                assert_eq!(
                    libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut t),
                    0
                );
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: every.as_nanos() as libc::c_long,
                };
                let spec = libc::itimerspec {
                    it_interval: ts,
                    it_value: ts,
                };
                assert_eq!(libc::timer_settime(t, 0, &spec, std::ptr::null_mut()), 0);
                SignalStorm(t)
            }
        }
    }

    impl Drop for SignalStorm {
        fn drop(&mut self) {
            // SAFETY: deletes the timer `start` created.
            unsafe { libc::timer_delete(self.0) };
        }
    }

    /// Signals arriving while a dropped device waits for its writes (EINTR
    /// from `io_uring_enter`) do not end the wait early: it waits again,
    /// and returns only once every write is in the file.
    #[test]
    fn dropping_the_device_waits_through_signals() {
        // An attempt whose writes all finish before the drop waits for
        // nothing and tests nothing: try again, a bounded number of times.
        const ATTEMPTS_MAX: usize = 5;
        let mut interrupted = 0;
        for _ in 0..ATTEMPTS_MAX {
            let dir = tempfile::tempdir().unwrap();
            let retries_before = DROP_WAIT_RETRIES.with(|n| n.get());
            run_local(async {
                let (dev, f) = with_abandoned_writes(dir.path(), 32, 0x30, true).await;
                let storm = SignalStorm::start(std::time::Duration::from_micros(100));
                drop((f, dev));
                drop(storm);
            });
            interrupted = DROP_WAIT_RETRIES.with(|n| n.get()) - retries_before;
            assert_eq!(
                DROP_LEFT_IN_FLIGHT.with(|n| n.get()),
                0,
                "the dropped ring returned with operations still in the kernel"
            );
            let bytes = std::fs::read(dir.path().join("f.seg")).unwrap();
            assert_written(&bytes, 0x30, "when the device was dropped under signals");
            if interrupted > 0 {
                break;
            }
        }
        assert!(
            interrupted > 0,
            "no wait of a dropped ring was interrupted in {ATTEMPTS_MAX} attempts: the path was not tested"
        );
    }

    /// I/O that breaks O_DIRECT's alignment is refused with an error that
    /// names what was attempted, not a panic.
    #[test]
    fn misaligned_io_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        run_local(async {
            let (_dev, f) = new_file(dir.path(), 1 << 16).await;
            let e = f.write_at(f.alloc(ALIGN_BYTES), 100).await.unwrap_err();
            assert!(
                e.to_string().contains("O_DIRECT log write"),
                "unclear error: {e}"
            );
            assert_eq!(e.raw_os_error(), None);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            // Longer than one I/O can be: refused before any allocation.
            let e = f
                .read_at(0, RING_IO_BYTES_MAX + ALIGN_BYTES)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            assert!(
                e.to_string().contains("limit of one I/O"),
                "unclear error: {e}"
            );
            // The ring still works after a failed operation.
            f.write_at(f.alloc(ALIGN_BYTES), 0).await.unwrap();
        });
    }
}
