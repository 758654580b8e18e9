//! glibc's `memcpy` on AMD: keeping it off `rep movsb` for copies whose
//! destination sits just past the source modulo 4 KiB.
//!
//! What happens: glibc (2.36 here) copies anything above its
//! `rep movsb` threshold (a few KiB by default) with `rep movsb`. On this machine's AMD EPYC, `rep movsb` runs at ~2.5 GB/s
//! instead of ~40 GB/s when `(dst - src) mod 4096` is between 1 and 31
//! (4 KiB aliasing; measured with a 16 KiB copy, offsets 0, 32 and above
//! are fast). rustls hits exactly that case on every record it sends: it
//! copies up to 16 KiB of plaintext from the caller's (page-aligned)
//! buffer to 5 bytes past the start of a fresh record buffer. In the
//! gateway's profile of 1 MiB GETs that one copy was 30 % of its samples;
//! with `rep movsb` off it fell to 7 % (docs/BENCHMARKS.md, "memcpy").
//!
//! The switch is glibc's tunable `glibc.cpu.x86_rep_movsb_threshold`,
//! which glibc reads once, when the process starts. So [`tune_memcpy`]
//! adds it to `GLIBC_TUNABLES` and re-executes the same binary with the
//! same arguments (same pid, inherited descriptors kept) before anything
//! else runs.
//! Above the threshold glibc uses its AVX2 loop, which is as fast as
//! `rep movsb` at its best and has no such trap (cold 1 MiB and 16 MiB
//! copies measured equal or faster).
//!
//! Invariants: at most one re-exec (a guard variable marks it); never on a
//! CPU that is not AMD, off x86-64 glibc, when `GLIBC_TUNABLES` already
//! names the threshold, or when `TESSERA_MEMCPY_TUNING=off`; a failed
//! exec only costs speed and is reported, never fatal.

/// The glibc tunable set, with the threshold that turns `rep movsb` off
/// for `memcpy`/`memmove` (glibc clamps it to `SIZE_MAX`).
pub const REP_MOVSB_TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold";

/// The threshold value: larger than any copy.
const REP_MOVSB_THRESHOLD_OFF_BYTES: u64 = u64::MAX;

/// Set (to "1") in the re-executed process so it never re-executes again,
/// whatever glibc made of the tunable.
const REEXEC_GUARD_ENV: &str = "TESSERA_MEMCPY_REEXEC";

/// `off` leaves glibc's memcpy as it is.
pub const MEMCPY_TUNING_ENV: &str = "TESSERA_MEMCPY_TUNING";

/// What [`tune_memcpy`] did (when it returns at all: a first call that
/// tunes re-executes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemcpyTuning {
    /// This process already runs with the tunable (the re-executed one,
    /// or one started with it).
    Active,
    /// Not needed or not possible here (another CPU, OS or C library).
    NotNeeded(&'static str),
    /// `TESSERA_MEMCPY_TUNING=off`.
    Disabled,
    /// The re-exec failed; the process goes on with glibc's defaults.
    Failed(String),
}

impl MemcpyTuning {
    /// The warning a binary logs when tuning failed (None otherwise): what
    /// it costs and what to do.
    pub fn failure(&self) -> Option<String> {
        match self {
            MemcpyTuning::Failed(why) => Some(format!(
                "memcpy stays on glibc's rep movsb, slow for some copies on AMD ({why}); \
                 start this binary with GLIBC_TUNABLES={REP_MOVSB_TUNABLE}={REP_MOVSB_THRESHOLD_OFF_BYTES} \
                 to get the fast path, or {MEMCPY_TUNING_ENV}=off to skip the attempt"
            )),
            _ => None,
        }
    }
}

/// Makes glibc's `memcpy` avoid `rep movsb` (see the module doc): call it
/// first thing in `main`, before any thread starts. On AMD x86-64 with
/// glibc it re-executes the process once and does not return.
pub fn tune_memcpy() -> MemcpyTuning {
    if std::env::var_os(MEMCPY_TUNING_ENV).is_some_and(|v| v == "off") {
        return MemcpyTuning::Disabled;
    }
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if names_threshold(&tunables) {
        return MemcpyTuning::Active;
    }
    if std::env::var_os(REEXEC_GUARD_ENV).is_some() {
        return MemcpyTuning::Failed(
            "re-executed once with GLIBC_TUNABLES set, but the variable is gone".into(),
        );
    }
    if !cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu"
    )) {
        return MemcpyTuning::NotNeeded("not x86-64 Linux with glibc");
    }
    if !cpu_is_amd() {
        return MemcpyTuning::NotNeeded("not an AMD CPU");
    }
    reexec_with(&with_threshold(&tunables))
}

/// True when a `GLIBC_TUNABLES` value already sets the threshold.
fn names_threshold(tunables: &str) -> bool {
    tunables.split(':').any(|t| {
        t.split_once('=')
            .is_some_and(|(k, _)| k == REP_MOVSB_TUNABLE)
    })
}

/// `tunables` with the threshold appended (glibc takes `:`-separated
/// `name=value` pairs).
fn with_threshold(tunables: &str) -> String {
    let ours = format!("{REP_MOVSB_TUNABLE}={REP_MOVSB_THRESHOLD_OFF_BYTES}");
    if tunables.is_empty() {
        ours
    } else {
        format!("{tunables}:{ours}")
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_is_amd() -> bool {
    // CPUID leaf 0 (the vendor string) exists on every x86-64 CPU.
    let r = std::arch::x86_64::__cpuid(0);
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&r.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&r.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&r.ecx.to_le_bytes());
    &vendor == b"AuthenticAMD"
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_is_amd() -> bool {
    false
}

/// Replaces this process with the same binary and arguments, with
/// `GLIBC_TUNABLES=tunables`. Returns only on failure.
fn reexec_with(tunables: &str) -> MemcpyTuning {
    use std::os::unix::process::CommandExt;
    let exe = std::path::Path::new("/proc/self/exe");
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| exe.as_os_str().to_owned());
    let err = std::process::Command::new(exe)
        .arg0(argv0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(REEXEC_GUARD_ENV, "1")
        .exec();
    MemcpyTuning::Failed(format!("re-executing {} failed: {err}", exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set on the copy of this test binary that [`child_reports`]
    /// starts; the child test does nothing without it.
    const CHILD_ENV: &str = "TESSERA_MEMCPY_TEST_CHILD";

    /// Runs only in the child: tunes (which may re-execute this test
    /// binary with the same arguments), then reports what it sees.
    #[test]
    fn child_reports_after_tuning() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let outcome = tune_memcpy();
        println!(
            "after-tuning tunables={:?} guard={:?} outcome={outcome:?}",
            std::env::var("GLIBC_TUNABLES").unwrap_or_default(),
            std::env::var(REEXEC_GUARD_ENV).unwrap_or_default(),
        );
    }

    /// Starts this test binary running only [`child_reports_after_tuning`]
    /// with `env`, and returns the child's report lines.
    fn child_reports(env: &[(&str, &str)]) -> Vec<String> {
        let exe = std::env::current_exe().unwrap();
        let mut c = std::process::Command::new(exe);
        c.args([
            "--exact",
            "memcpy_tuning::tests::child_reports_after_tuning",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env_remove("GLIBC_TUNABLES")
        .env_remove(REEXEC_GUARD_ENV)
        .env_remove(MEMCPY_TUNING_ENV);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "child failed: {out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.find("after-tuning").map(|i| l[i..].to_owned()))
            .collect()
    }

    #[test]
    fn reexec_happens_once_and_sets_the_tunable() {
        let lines = child_reports(&[]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        if cpu_is_amd() && cfg!(target_env = "gnu") {
            assert!(lines[0].contains(REP_MOVSB_TUNABLE), "{lines:?}");
            assert!(lines[0].contains("guard=\"1\""), "{lines:?}");
            assert!(lines[0].contains("outcome=Active"), "{lines:?}");
        } else {
            assert!(lines[0].contains("outcome=NotNeeded"), "{lines:?}");
        }
    }

    #[test]
    fn no_reexec_when_switched_off_or_already_set() {
        let lines = child_reports(&[(MEMCPY_TUNING_ENV, "off")]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("outcome=Disabled"), "{lines:?}");
        assert!(lines[0].contains("guard=\"\""), "{lines:?}");

        let set = format!("glibc.malloc.arena_max=2:{REP_MOVSB_TUNABLE}=4096");
        let lines = child_reports(&[("GLIBC_TUNABLES", &set)]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("outcome=Active"), "{lines:?}");
        assert!(lines[0].contains("guard=\"\""), "{lines:?}");
        assert!(
            lines[0].contains(&format!("{REP_MOVSB_TUNABLE}=4096\"")),
            "{lines:?}"
        );
    }

    #[test]
    fn threshold_is_recognised_only_as_a_whole_name() {
        assert!(names_threshold("glibc.cpu.x86_rep_movsb_threshold=1"));
        assert!(names_threshold(
            "glibc.malloc.arena_max=2:glibc.cpu.x86_rep_movsb_threshold=9"
        ));
        assert!(!names_threshold(""));
        assert!(!names_threshold("glibc.cpu.x86_rep_movsb_threshold_x=1"));
        assert!(!names_threshold("glibc.cpu.x86_rep_stosb_threshold=1"));
    }

    #[test]
    fn only_a_failure_has_a_warning_and_it_says_what_to_do() {
        assert_eq!(MemcpyTuning::Active.failure(), None);
        assert_eq!(MemcpyTuning::Disabled.failure(), None);
        assert_eq!(MemcpyTuning::NotNeeded("x").failure(), None);
        let w = MemcpyTuning::Failed("exec: ENOENT".into())
            .failure()
            .unwrap();
        assert!(w.contains("exec: ENOENT"), "{w}");
        assert!(
            w.contains(&format!("GLIBC_TUNABLES={REP_MOVSB_TUNABLE}=")),
            "{w}"
        );
        assert!(w.contains(&format!("{MEMCPY_TUNING_ENV}=off")), "{w}");
    }

    #[test]
    fn threshold_is_appended_to_what_is_there() {
        assert_eq!(
            with_threshold(""),
            format!("{REP_MOVSB_TUNABLE}={}", u64::MAX)
        );
        let t = with_threshold("glibc.malloc.arena_max=2");
        assert!(t.starts_with("glibc.malloc.arena_max=2:"));
        assert!(names_threshold(&t));
    }
}
