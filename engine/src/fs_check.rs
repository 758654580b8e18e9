//! Tells whether a data directory sits on a file system that makes every
//! durable write cost more than it should: ext4 without a journal.
//!
//! Why: every durable write of the engine and of metad's log is an O_DIRECT
//! write into preallocated, already written blocks, so it needs no
//! file-system metadata — except the file's mtime, which each write
//! refreshes once per clock tick. ext4 without a journal answers
//! `fdatasync` by writing the file's inode block whenever it is dirty
//! (`ext4_fsync_nojournal`), so up to HZ (250 on the bench machine) durable
//! writes per file per second each carry one more synchronous 4 KiB write;
//! `lazytime` does not avoid it (ext4's i_version counter still dirties the
//! inode). A journaled ext4 or XFS forces nothing for a timestamp at
//! `fdatasync`. Measured in docs/BENCHMARKS.md ("what one durable write
//! costs on this disk").
//!
//! How: `statfs` gives the file system type; ext2/3/4 share one magic, so
//! the device (from `stat`'s `st_dev`, named by `/sys/dev/block/M:N/uevent`)
//! must have an entry in `/proc/fs/ext4/` (mounted as ext4) and none in
//! `/proc/fs/jbd2/` (no journal). Anything that cannot be read answers
//! "not known to be journal-less": this is advice, never a reason to
//! refuse to start.

use std::path::{Path, PathBuf};

/// `statfs` magic of ext2, ext3 and ext4.
const EXT_SUPER_MAGIC: i64 = 0xEF53;

/// Where `/proc` and `/sys` are (tests point them at a fake tree).
#[derive(Debug, Clone)]
pub struct SystemRoots {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Default for SystemRoots {
    fn default() -> Self {
        SystemRoots {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// The block device name (e.g. `vda`) when `dir` (or, before it is
/// created, its nearest existing ancestor) is on ext4 mounted without a
/// journal; `None` when it is not, or when that cannot be told.
pub fn journal_less_ext4(dir: &Path) -> Option<String> {
    let dir = dir.ancestors().find(|a| a.exists())?;
    if fs_magic(dir)? != EXT_SUPER_MAGIC {
        return None;
    }
    let dev = std::fs::metadata(dir).ok()?;
    let dev = std::os::unix::fs::MetadataExt::dev(&dev);
    journal_less_ext4_device(&SystemRoots::default(), libc::major(dev), libc::minor(dev))
}

/// The advice to log when `dir` is on journal-less ext4 (`what` names the
/// data, e.g. "the engine's segments").
pub fn journal_less_ext4_warning(dir: &Path, what: &str) -> Option<String> {
    let dev = journal_less_ext4(dir)?;
    Some(format!(
        "{what} ({}) are on ext4 without a journal (device {dev}): each durable write may also \
         rewrite its file's inode block (one extra synchronous write per file per clock tick: up to \
         HZ, 250 on the bench machine, per second); \
         a journaled ext4 or XFS avoids it (docs/CONFIG.md, \"File system of the data directories\")",
        dir.display()
    ))
}

/// The decision for device `major:minor`, given an ext2/3/4 file system on
/// it: mounted as ext4 and without a journal.
pub fn journal_less_ext4_device(roots: &SystemRoots, major: u32, minor: u32) -> Option<String> {
    let uevent = roots
        .sys
        .join("dev/block")
        .join(format!("{major}:{minor}"))
        .join("uevent");
    let text = std::fs::read_to_string(uevent).ok()?;
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))?
        .trim()
        .to_string();
    // A name that could walk out of /proc/fs is not a device name.
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    let ext4 = roots.proc.join("fs/ext4").join(&name);
    if !ext4.is_dir() {
        return None;
    }
    let jbd2 = roots.proc.join("fs/jbd2");
    let journaled = match std::fs::read_dir(&jbd2) {
        // One entry per journal, named `<device>-<inode of the journal>`.
        Ok(entries) => entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.rsplit_once('-'))
                .is_some_and(|(dev, ino)| dev == name && ino.parse::<u64>().is_ok())
        }),
        // No jbd2 directory at all: no journal is active anywhere.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => return None,
    };
    (!journaled).then_some(name)
}

fn fs_magic(dir: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statfs` is plain old data (integers only); all zeros is a
    // valid value of it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dev: &str, ext4: bool, journals: &[&str]) -> (tempfile::TempDir, SystemRoots) {
        let t = tempfile::tempdir().unwrap();
        let roots = SystemRoots {
            proc: t.path().join("proc"),
            sys: t.path().join("sys"),
        };
        let ue = roots.sys.join("dev/block/254:1");
        std::fs::create_dir_all(&ue).unwrap();
        std::fs::write(
            ue.join("uevent"),
            format!("MAJOR=254\nMINOR=1\nDEVNAME={dev}\nDEVTYPE=partition\n"),
        )
        .unwrap();
        if ext4 {
            std::fs::create_dir_all(roots.proc.join("fs/ext4").join(dev)).unwrap();
        }
        for j in journals {
            std::fs::create_dir_all(roots.proc.join("fs/jbd2").join(j)).unwrap();
        }
        (t, roots)
    }

    #[test]
    fn ext4_without_a_journal_is_named() {
        let (_t, r) = tree("vda1", true, &[]);
        assert_eq!(
            journal_less_ext4_device(&r, 254, 1).as_deref(),
            Some("vda1")
        );
        // Another device's journal does not count.
        let (_t, r) = tree("vda1", true, &["vdb-8", "vda10-8"]);
        assert_eq!(
            journal_less_ext4_device(&r, 254, 1).as_deref(),
            Some("vda1")
        );
    }

    #[test]
    fn a_journal_or_another_file_system_is_not() {
        let (_t, r) = tree("vda1", true, &["vda1-8"]);
        assert_eq!(journal_less_ext4_device(&r, 254, 1), None);
        // ext2/3 share the magic but are not mounted as ext4.
        let (_t, r) = tree("vda1", false, &[]);
        assert_eq!(journal_less_ext4_device(&r, 254, 1), None);
        // Unknown device numbers and odd names answer "not known".
        let (_t, r) = tree("vda1", true, &[]);
        assert_eq!(journal_less_ext4_device(&r, 254, 2), None);
        let (_t, r) = tree("../etc", true, &[]);
        assert_eq!(journal_less_ext4_device(&r, 254, 1), None);
    }

    #[test]
    fn this_machine_gives_an_answer_without_failing() {
        // Whatever the file system of the temp directory, the real lookup
        // must come back (Some or None), and a missing path is None.
        let t = tempfile::tempdir().unwrap();
        // A directory not created yet is judged by its parent.
        assert_eq!(
            journal_less_ext4(t.path()),
            journal_less_ext4(&t.path().join("not/yet"))
        );
        if let Some(w) = journal_less_ext4_warning(t.path(), "test data") {
            assert!(w.contains("without a journal") && w.contains("docs/CONFIG.md"));
        }
    }
}
