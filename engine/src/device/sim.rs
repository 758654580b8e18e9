//! An in-memory device that models what a crash leaves behind.
//!
//! Each file keeps a *live* image (what reads see) and a *durable* image (what
//! survives a crash). `sync` copies live to durable; `sync_dir` makes the
//! current set of names durable. [`SimFs::crash`] throws away everything not
//! durable and may tear the last unsynced write: an arbitrary subset of its
//! 512-byte sectors reaches the durable image (a real disk may reorder them).
//! Handles opened before a crash fail with EIO afterwards, so tasks of the
//! crashed engine cannot touch the new image.

use super::{Device, DeviceFile};
use rand::Rng;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// Returns `Pending` once (after waking itself), so that a simulated I/O
/// gives other tasks a turn the way a real one does.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            std::task::Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

/// Gives the other tasks of the executor one turn (a simulated I/O's
/// wait; tests use it for watchdogs that must not starve the engine).
pub async fn io_turn() {
    YieldOnce(false).await
}

/// Sector size at which a crash may tear a write.
pub const SIM_SECTOR_BYTES: usize = 512;

#[derive(Default)]
struct SimFile {
    live: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Default)]
struct SimState {
    generation: u64,
    next_inode: u64,
    files: HashMap<u64, SimFile>,
    live_names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    /// Writes not yet covered by a sync of their file, oldest first.
    /// Each is (write id, inode, offset, bytes).
    unsynced: Vec<(u64, u64, u64, Vec<u8>)>,
    next_write_id: u64,
    /// Bytes the whole file system may allocate; `None` is unlimited.
    capacity_bytes: Option<u64>,
    /// Files act as if open with O_DSYNC (see [`SimFs::set_durable_writes`]).
    durable_writes: bool,
}

/// A simulated file system shared by the shards of one engine (and the test
/// that crashes it).
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
}

fn stale() -> io::Error {
    io::Error::other("simulated device: handle from before a crash")
}

impl SimFs {
    /// A new, empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic in another test thread must not hide this one's result.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Limits the bytes all files together may allocate (ENOSPC past it).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity_bytes = bytes;
    }

    /// Makes files act like the real device's, open with O_DSYNC: a
    /// completed `write_at` is durable (a crash while it is in flight may
    /// still tear it), and only `write_at_unsynced` needs a `sync`.
    pub fn set_durable_writes(&self, on: bool) {
        self.lock().durable_writes = on;
    }

    /// The device for one shard: its files live under `shard-{index}/`.
    pub fn device(&self, shard: usize) -> SimDevice {
        let generation = self.lock().generation;
        SimDevice {
            fs: self.clone(),
            prefix: format!("shard-{shard}/"),
            generation,
        }
    }

    /// Simulates power loss: keeps only durable state; of the writes not yet
    /// synced, each 512-byte sector reaches the disk or not at random (a
    /// crash may drop them all, keep them all, or tear them anywhere).
    pub fn crash(&self, rng: &mut impl Rng) {
        let mut s = self.lock();
        s.generation += 1;
        let torn = std::mem::take(&mut s.unsynced);
        s.live_names = s.durable_names.clone();
        let alive: std::collections::HashSet<u64> = s.durable_names.values().copied().collect();
        s.files.retain(|ino, _| alive.contains(ino));
        let keep = [0.0, 0.5, 1.0][rng.gen_range(0..3)];
        for (_, ino, pos, data) in torn {
            if let Some(f) = s.files.get_mut(&ino) {
                for (i, sector) in data.chunks(SIM_SECTOR_BYTES).enumerate() {
                    let at = pos as usize + i * SIM_SECTOR_BYTES;
                    if at + sector.len() <= f.durable.len() && rng.gen_bool(keep) {
                        f.durable[at..at + sector.len()].copy_from_slice(sector);
                    }
                }
            }
        }
        for f in s.files.values_mut() {
            f.live = f.durable.clone();
        }
    }

    /// Flips bit `bit` of byte `offset` of `name` in both images (bitrot).
    pub fn flip_bit(&self, name: &str, offset: usize, bit: u8) -> io::Result<()> {
        let mut s = self.lock();
        let ino = *s
            .live_names
            .get(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let f = s
            .files
            .get_mut(&ino)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        for img in [&mut f.live, &mut f.durable] {
            if let Some(b) = img.get_mut(offset) {
                *b ^= 1 << (bit % 8);
            }
        }
        Ok(())
    }

    /// Names of all live files (with their shard prefix).
    pub fn names(&self) -> Vec<String> {
        self.lock().live_names.keys().cloned().collect()
    }

    /// The live contents of a file.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        let s = self.lock();
        let ino = s.live_names.get(name)?;
        s.files.get(ino).map(|f| f.live.clone())
    }
}

/// One shard's view of a [`SimFs`].
pub struct SimDevice {
    fs: SimFs,
    prefix: String,
    generation: u64,
}

impl SimDevice {
    fn checked(&self) -> io::Result<MutexGuard<'_, SimState>> {
        let s = self.fs.lock();
        if s.generation != self.generation {
            return Err(stale());
        }
        Ok(s)
    }

    fn full(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    fn file(&self, ino: u64) -> SimFileHandle {
        SimFileHandle {
            fs: self.fs.clone(),
            ino,
            generation: self.generation,
        }
    }
}

impl Device for SimDevice {
    type File = SimFileHandle;

    async fn create(&self, name: &str, len: u64) -> io::Result<SimFileHandle> {
        io_turn().await;
        let mut s = self.checked()?;
        let full = self.full(name);
        if s.live_names.contains_key(&full) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        if let Some(cap) = s.capacity_bytes {
            let used: u64 = s.files.values().map(|f| f.live.len() as u64).sum();
            if used + len > cap {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        let ino = s.next_inode;
        s.next_inode += 1;
        s.files.insert(
            ino,
            SimFile {
                live: vec![0; len as usize],
                durable: Vec::new(),
            },
        );
        s.live_names.insert(full, ino);
        Ok(self.file(ino))
    }

    async fn open(&self, name: &str) -> io::Result<SimFileHandle> {
        io_turn().await;
        let s = self.checked()?;
        let ino = *s
            .live_names
            .get(&self.full(name))
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(self.file(ino))
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        io_turn().await;
        let mut s = self.checked()?;
        let ino = s
            .live_names
            .remove(&self.full(from))
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        s.live_names.insert(self.full(to), ino);
        Ok(())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        io_turn().await;
        let mut s = self.checked()?;
        s.live_names
            .remove(&self.full(name))
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        io_turn().await;
        let mut s = self.checked()?;
        let prefix = self.prefix.clone();
        s.durable_names.retain(|k, _| !k.starts_with(&prefix));
        let mine: Vec<(String, u64)> = s
            .live_names
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        s.durable_names.extend(mine);
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let s = self.checked()?;
        Ok(s.live_names
            .keys()
            .filter_map(|k| k.strip_prefix(&self.prefix))
            .map(str::to_owned)
            .collect())
    }

    fn alloc(&self, len: usize) -> Vec<u8> {
        sim_alloc(len)
    }
}

/// An open simulated file.
pub struct SimFileHandle {
    fs: SimFs,
    ino: u64,
    generation: u64,
}

impl SimFileHandle {
    fn checked(&self) -> io::Result<MutexGuard<'_, SimState>> {
        let s = self.fs.lock();
        if s.generation != self.generation {
            return Err(stale());
        }
        Ok(s)
    }

    /// After one turn, puts `buf` in the live image and among the unsynced
    /// writes; returns the write's id.
    async fn write_volatile(&self, buf: Vec<u8>, pos: u64) -> io::Result<u64> {
        io_turn().await;
        let mut s = self.checked()?;
        let f = s.files.get_mut(&self.ino).ok_or_else(stale)?;
        let end = pos as usize + buf.len();
        if end > f.live.len() {
            return Err(io::Error::other(format!(
                "simulated device: write past end ({end} > {})",
                f.live.len()
            )));
        }
        f.live[pos as usize..end].copy_from_slice(&buf);
        let id = s.next_write_id;
        s.next_write_id += 1;
        s.unsynced.push((id, self.ino, pos, buf));
        Ok(id)
    }
}

/// Not zeroed, like real DMA buffers: a region the engine forgets to fill
/// shows up as garbage on "disk".
fn sim_alloc(len: usize) -> Vec<u8> {
    vec![0xEE; len]
}

impl DeviceFile for SimFileHandle {
    type Buf = Vec<u8>;
    type ReadBuf = Vec<u8>;

    fn alloc(&self, len: usize) -> Vec<u8> {
        sim_alloc(len)
    }

    fn shrink(buf: &mut Vec<u8>, len: usize) {
        assert!(len <= buf.len(), "shrink may not grow a buffer");
        buf.truncate(len);
    }

    async fn write_at(&self, buf: Vec<u8>, pos: u64) -> io::Result<()> {
        let id = self.write_volatile(buf, pos).await?;
        if !self.writes_are_durable() {
            return Ok(());
        }
        // In flight until the next turn: a crash before then may tear it.
        io_turn().await;
        let mut s = self.checked()?;
        let Some(i) = s.unsynced.iter().position(|w| w.0 == id) else {
            // A sync of the file in between made it durable already.
            return Ok(());
        };
        let (_, ino, _, data) = s.unsynced.remove(i);
        // Older unsynced writes under it were overwritten in the disk's
        // cache: a crash can no longer bring their bytes back over these.
        let end = pos + data.len() as u64;
        s.unsynced
            .retain(|w| !(w.1 == ino && w.0 < id && w.2 < end && pos < w.2 + w.3.len() as u64));
        let f = s.files.get_mut(&ino).ok_or_else(stale)?;
        // O_DSYNC also makes the file's size durable.
        if f.durable.len() < f.live.len() {
            f.durable.resize(f.live.len(), 0);
        }
        f.durable[pos as usize..pos as usize + data.len()].copy_from_slice(&data);
        Ok(())
    }

    async fn write_at_unsynced(&self, buf: Vec<u8>, pos: u64) -> io::Result<()> {
        self.write_volatile(buf, pos).await.map(|_| ())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        io_turn().await;
        let s = self.checked()?;
        let f = s.files.get(&self.ino).ok_or_else(stale)?;
        let start = (pos as usize).min(f.live.len());
        let end = (pos as usize + len).min(f.live.len());
        Ok(f.live[start..end].to_vec())
    }

    async fn sync(&self) -> io::Result<()> {
        io_turn().await;
        let mut s = self.checked()?;
        let f = s.files.get_mut(&self.ino).ok_or_else(stale)?;
        f.durable = f.live.clone();
        let ino = self.ino;
        s.unsynced.retain(|w| w.1 != ino);
        Ok(())
    }

    fn writes_are_durable(&self) -> bool {
        self.fs.lock().durable_writes
    }

    fn len(&self) -> u64 {
        self.fs
            .lock()
            .files
            .get(&self.ino)
            .map_or(0, |f| f.live.len() as u64)
    }
}
