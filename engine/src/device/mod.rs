//! The file I/O the engine does, behind two traits, so the same engine runs
//! over the real io_uring + O_DIRECT device ([`UringDevice`]), over an
//! in-memory device that models crashes ([`SimDevice`]), and under a
//! fault-injecting decorator ([`FaultyDevice`]).
//!
//! Contract every implementation keeps:
//! - offsets, lengths and buffers of `read_at`/`write_at` are multiples of
//!   [`IO_ALIGN_BYTES`](crate::limits::IO_ALIGN_BYTES);
//! - a completed `write_at` is durable only after a later `sync` of the same
//!   file has completed, unless the file says `writes_are_durable()`;
//! - `create`, `rename` and `remove` are durable only after `sync_dir`;
//! - one device is used from one thread (it may be `!Send`).

mod faulty;
mod sim;
mod uring;

pub use faulty::{FaultPlan, FaultyDevice};
pub use sim::{io_turn, SimDevice, SimFs};
pub use uring::UringDevice;

use std::io;

/// A directory of files: one engine shard's segment files and checkpoint.
#[allow(async_fn_in_trait)]
pub trait Device: 'static {
    /// An open file of this device.
    type File: DeviceFile;

    /// Creates `name` (which must not exist) with `len` bytes allocated.
    async fn create(&self, name: &str, len: u64) -> io::Result<Self::File>;
    /// Opens an existing file for reading and writing.
    async fn open(&self, name: &str) -> io::Result<Self::File>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes `name`.
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creates, renames and removes so far durable.
    async fn sync_dir(&self) -> io::Result<()>;
    /// Names of the files present.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Allocates a write buffer of `len` bytes (a multiple of the alignment)
    /// before any file is at hand (payloads are staged in it as they are
    /// put). Contents unspecified, as with [`DeviceFile::alloc`].
    fn alloc(&self, len: usize) -> <Self::File as DeviceFile>::Buf;
}

/// One open file, read and written with aligned direct I/O.
#[allow(async_fn_in_trait)]
pub trait DeviceFile: 'static {
    /// An owned, aligned buffer the device can write from without copying.
    type Buf: AsRef<[u8]> + AsMut<[u8]>;
    /// What a read returns.
    type ReadBuf: AsRef<[u8]>;

    /// Allocates a write buffer of `len` bytes (a multiple of the
    /// alignment). Its contents are unspecified: callers fill all of it.
    fn alloc(&self, len: usize) -> Self::Buf;
    /// Shortens `buf` to its first `len` bytes (`len` no more than its
    /// length and a multiple of the alignment), so a write covers no more.
    fn shrink(buf: &mut Self::Buf, len: usize);
    /// Writes all of `buf` at `pos`.
    async fn write_at(&self, buf: Self::Buf, pos: u64) -> io::Result<()>;
    /// Writes all of `buf` at `pos`, durable only after a later `sync` even
    /// when `writes_are_durable()`: a flush of several writes issues them
    /// this way and pays for one cache flush instead of one per write.
    async fn write_at_unsynced(&self, buf: Self::Buf, pos: u64) -> io::Result<()> {
        self.write_at(buf, pos).await
    }
    /// Reads up to `len` bytes at `pos`; shorter only at the end of the file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::ReadBuf>;
    /// Makes completed writes durable (fdatasync).
    async fn sync(&self) -> io::Result<()>;
    /// True when a completed `write_at` is already durable (the file is
    /// open with O_DSYNC), so a flush needs no separate `sync`.
    fn writes_are_durable(&self) -> bool {
        false
    }
    /// The file's size in bytes.
    fn len(&self) -> u64;
    /// True for a file of no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
