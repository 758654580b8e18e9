//! `tessera-bench codec`: the gateway's erasure codes against ISA-L, one
//! thread, in the same run: encode, and decode with two data shards
//! missing (a degraded read or a repair), for 4+2, 8+3 and 10+4 with 1 MiB
//! shards. ISA-L (Debian's `libisal-dev`) is linked when the bench is built
//! with `--features isal` (`benches/run-codec-bench` installs it); without
//! it the figures have no ceiling.

use crate::report::Report;
use anyhow::Result;
use std::time::{Duration, Instant};
use tessera_gateway::codec::{Cauchy256, Codec, RsSimd};

/// Bytes per shard (the gateway's default shard size).
const SHARD_BYTES: usize = 1 << 20;
/// Time each measurement runs for.
const MEASURE: Duration = Duration::from_millis(1500);

#[cfg(feature = "isal")]
mod isal {
    //! The four ISA-L functions the bench needs (`isa-l/erasure_code.h`).
    use std::os::raw::{c_int, c_uchar};

    #[link(name = "isal")]
    extern "C" {
        fn gf_gen_cauchy1_matrix(a: *mut c_uchar, m: c_int, k: c_int);
        fn ec_init_tables(k: c_int, rows: c_int, a: *mut c_uchar, gftbls: *mut c_uchar);
        fn ec_encode_data(
            len: c_int,
            k: c_int,
            rows: c_int,
            gftbls: *mut c_uchar,
            data: *mut *mut c_uchar,
            coding: *mut *mut c_uchar,
        );
        fn gf_invert_matrix(inm: *mut c_uchar, out: *mut c_uchar, n: c_int) -> c_int;
    }

    /// The (k + m) × k Cauchy encoding matrix, row major.
    pub fn matrix(k: usize, m: usize) -> Vec<u8> {
        let mut a = vec![0u8; (k + m) * k];
        // SAFETY: `a` holds (k + m) × k bytes, what the call writes.
        unsafe { gf_gen_cauchy1_matrix(a.as_mut_ptr(), (k + m) as c_int, k as c_int) };
        a
    }

    /// Tables for `rows` (rows × k coefficients).
    pub fn tables(k: usize, rows: usize, coef: &mut [u8]) -> Vec<u8> {
        assert_eq!(coef.len(), rows * k);
        let mut t = vec![0u8; 32 * k * rows];
        // SAFETY: `coef` holds rows × k bytes and `t` 32 × k × rows, the
        // sizes erasure_code.h documents.
        unsafe { ec_init_tables(k as c_int, rows as c_int, coef.as_mut_ptr(), t.as_mut_ptr()) };
        t
    }

    /// `out[r] = Σ coef[r][i] · inputs[i]` with prepared `tables`.
    pub fn apply(tables: &mut [u8], inputs: &mut [Vec<u8>], out: &mut [Vec<u8>]) {
        let len = inputs[0].len();
        assert!(inputs.iter().chain(out.iter()).all(|v| v.len() == len));
        let mut ip: Vec<*mut u8> = inputs.iter_mut().map(|v| v.as_mut_ptr()).collect();
        let mut op: Vec<*mut u8> = out.iter_mut().map(|v| v.as_mut_ptr()).collect();
        // SAFETY: every pointer names a live buffer of `len` bytes; the
        // tables were made for inputs.len() × out.len() coefficients.
        unsafe {
            ec_encode_data(
                len as c_int,
                ip.len() as c_int,
                op.len() as c_int,
                tables.as_mut_ptr(),
                ip.as_mut_ptr(),
                op.as_mut_ptr(),
            )
        };
    }

    /// Inverts an n × n row-major matrix; false when singular.
    pub fn invert(m: &mut [u8], n: usize) -> Option<Vec<u8>> {
        let mut out = vec![0u8; n * n];
        // SAFETY: both buffers hold n × n bytes.
        let r = unsafe { gf_invert_matrix(m.as_mut_ptr(), out.as_mut_ptr(), n as c_int) };
        (r == 0).then_some(out)
    }
}

/// Runs `f` repeatedly for [`MEASURE`]; returns GB/s of `bytes` per call.
fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < MEASURE {
        f();
        n += 1;
    }
    n as f64 * bytes as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn data(k: usize) -> Vec<Vec<u8>> {
    (0..k)
        .map(|i| {
            (0..SHARD_BYTES)
                .map(|j| (j as u32).wrapping_mul(2654435761).wrapping_add(i as u32) as u8)
                .collect()
        })
        .collect()
}

/// (encode GB/s, decode GB/s) of one of the gateway's codecs; checks the
/// rebuilt shards against the originals.
fn ours(codec: &dyn Codec, k: usize, m: usize) -> Result<(f64, f64)> {
    let d = data(k);
    let refs: Vec<&[u8]> = d.iter().map(|v| v.as_slice()).collect();
    let bytes = k * SHARD_BYTES;
    // A failed call inside a timed loop is remembered and reported after.
    let failed: std::cell::RefCell<Option<String>> = Default::default();
    let enc = rate(bytes, || {
        if let Err(e) = std::hint::black_box(codec.encode(k, m, &refs)) {
            failed.borrow_mut().get_or_insert(e.to_string());
        }
    });
    let parity = codec.encode(k, m, &refs)?;
    // Two data shards (0 and 1) missing: the rest and two parity shards.
    let present = || -> Vec<(usize, Vec<u8>)> {
        (2..k)
            .map(|i| (i, d[i].clone()))
            .chain(
                parity
                    .iter()
                    .take(2)
                    .enumerate()
                    .map(|(j, p)| (k + j, p.clone())),
            )
            .collect()
    };
    let back = codec.data_from(k, m, present())?;
    anyhow::ensure!(
        back == d,
        "{:?} {k}+{m} rebuilt the wrong bytes",
        codec.id()
    );
    // The copies of `present` are made outside the timed part.
    let mut sets: Vec<Vec<(usize, Vec<u8>)>> = (0..4).map(|_| present()).collect();
    let copy = rate(bytes, || {
        std::hint::black_box(present());
    });
    let dec_with_copy = rate(bytes, || {
        let p = sets.pop().unwrap_or_else(present);
        if let Err(e) = std::hint::black_box(codec.data_from(k, m, p)) {
            failed.borrow_mut().get_or_insert(e.to_string());
        }
    });
    if let Some(e) = failed.take() {
        anyhow::bail!("{:?} {k}+{m} failed while timed: {e}", codec.id());
    }
    // Remove the cost of making the inputs: t = t_decode + t_copy.
    let dec = 1.0 / (1.0 / dec_with_copy - 1.0 / copy).max(1e-9);
    Ok((enc, dec))
}

#[cfg(feature = "isal")]
fn isal_rates(k: usize, m: usize) -> Result<(f64, f64)> {
    let d = data(k);
    let bytes = k * SHARD_BYTES;
    let a = isal::matrix(k, m);
    let mut enc_coef = a[k * k..].to_vec();
    let mut enc_tables = isal::tables(k, m, &mut enc_coef);
    let mut inputs = d.clone();
    let mut parity = vec![vec![0u8; SHARD_BYTES]; m];
    let enc = rate(bytes, || {
        isal::apply(&mut enc_tables, &mut inputs, &mut parity)
    });
    // Decode 0 and 1 from shards 2..k and parity 0, 1 (what ISA-L's
    // examples do: invert the survivors' rows, keep the missing rows).
    let survivors: Vec<usize> = (2..k).chain([k, k + 1]).collect();
    let mut sub: Vec<u8> = survivors
        .iter()
        .flat_map(|&r| a[r * k..(r + 1) * k].to_vec())
        .collect();
    let inv = isal::invert(&mut sub, k).ok_or_else(|| anyhow::anyhow!("singular"))?;
    let mut dec_coef: Vec<u8> = inv[..2 * k].to_vec();
    let mut dec_tables = isal::tables(k, 2, &mut dec_coef);
    let mut surv: Vec<Vec<u8>> = survivors
        .iter()
        .map(|&r| {
            if r < k {
                d[r].clone()
            } else {
                parity[r - k].clone()
            }
        })
        .collect();
    let mut out = vec![vec![0u8; SHARD_BYTES]; 2];
    isal::apply(&mut dec_tables, &mut surv, &mut out);
    anyhow::ensure!(
        out[0] == d[0] && out[1] == d[1],
        "ISA-L rebuilt the wrong bytes"
    );
    let dec = rate(bytes, || isal::apply(&mut dec_tables, &mut surv, &mut out));
    Ok((enc, dec))
}

#[cfg(not(feature = "isal"))]
fn isal_rates(_: usize, _: usize) -> Result<(f64, f64)> {
    anyhow::bail!("built without the isal feature")
}

pub fn run() -> Result<Report> {
    let mut r = Report::default();
    for (k, m) in [(4usize, 2usize), (8, 3), (10, 4)] {
        let isal = match isal_rates(k, m) {
            Ok(x) => Some(x),
            Err(e) => {
                eprintln!("ISA-L {k}+{m}: {e} (run benches/run-codec-bench for the comparison)");
                None
            }
        };
        let note = |what: &str| match isal {
            Some(_) => format!("ISA-L {what}, same run, one thread, 1 MiB shards"),
            None => "no ISA-L in this build".into(),
        };
        for (name, codec) in [
            ("rs_simd", &RsSimd as &dyn Codec),
            ("cauchy256", &Cauchy256),
        ] {
            let (enc, dec) = ours(codec, k, m)?;
            r.add(
                &format!("{name}_encode_{k}p{m}"),
                enc,
                "GB/s",
                isal.map(|x| x.0),
                note("encode"),
            );
            r.add(
                &format!("{name}_decode2_{k}p{m}"),
                dec,
                "GB/s",
                isal.map(|x| x.1),
                note("decode, 2 data shards missing"),
            );
        }
    }
    Ok(r)
}
