//! A classic Reed-Solomon code over GF(2^8) with a Cauchy matrix — the
//! construction ISA-L uses — for small k + m (k + m ≤ 255).
//!
//! Why it exists: `reed-solomon-simd` (GF(2^16), FFT based) encodes about as
//! fast as ISA-L but rebuilds missing shards ~8× slower on this machine; a
//! degraded read or a repair pays that. Here both directions are the same
//! kernel — `dst ^= c · src` over a shard, 32 bytes at a time with AVX2
//! nibble tables (two `vpshufb` per 32 bytes) — so rebuilding costs what
//! encoding costs.
//!
//! Invariants (tested): any k of the k + m shards give back the data;
//! the SIMD kernel equals the scalar one on every input.

/// The field's reduction polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d).
const POLY: u16 = 0x11d;

struct Tables {
    exp: [u8; 512],
    log: [u8; 256],
}

const fn tables() -> Tables {
    let mut exp = [0u8; 512];
    let mut log = [0u8; 256];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x as u8;
        exp[i + 255] = x as u8;
        log[x as usize] = i as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= POLY;
        }
        i += 1;
    }
    Tables { exp, log }
}

static T: Tables = tables();

pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    T.exp[T.log[a as usize] as usize + T.log[b as usize] as usize]
}

pub fn inv(a: u8) -> u8 {
    assert!(a != 0, "0 has no inverse");
    T.exp[255 - T.log[a as usize] as usize]
}

/// The (k + m) × k encoding matrix: identity on top, then Cauchy rows
/// `1 / (i ^ j)` (every k × k submatrix is invertible).
pub fn encoding_matrix(k: usize, m: usize) -> Vec<Vec<u8>> {
    assert!(k + m <= 255 && k > 0);
    let mut a = vec![vec![0u8; k]; k + m];
    for (i, row) in a.iter_mut().enumerate() {
        for (j, c) in row.iter_mut().enumerate() {
            *c = if i < k {
                (i == j) as u8
            } else {
                inv((i ^ j) as u8)
            };
        }
    }
    a
}

/// Inverts a square matrix (Gauss-Jordan); None when singular.
pub fn invert(m: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    let n = m.len();
    let mut a: Vec<Vec<u8>> = m.to_vec();
    let mut b: Vec<Vec<u8>> = (0..n)
        .map(|i| (0..n).map(|j| (i == j) as u8).collect())
        .collect();
    for col in 0..n {
        let pivot = (col..n).find(|&r| a[r][col] != 0)?;
        a.swap(col, pivot);
        b.swap(col, pivot);
        let p = inv(a[col][col]);
        for j in 0..n {
            a[col][j] = mul(a[col][j], p);
            b[col][j] = mul(b[col][j], p);
        }
        for r in 0..n {
            if r != col && a[r][col] != 0 {
                let f = a[r][col];
                for j in 0..n {
                    let (x, y) = (mul(f, a[col][j]), mul(f, b[col][j]));
                    a[r][j] ^= x;
                    b[r][j] ^= y;
                }
            }
        }
    }
    Some(b)
}

/// The two 16-entry tables of `c·x` for the low and high nibble of x.
fn nibble_tables(c: u8) -> ([u8; 16], [u8; 16]) {
    let mut lo = [0u8; 16];
    let mut hi = [0u8; 16];
    for x in 0..16u8 {
        lo[x as usize] = mul(c, x);
        hi[x as usize] = mul(c, x << 4);
    }
    (lo, hi)
}

/// `dst ^= c · src` (scalar).
pub fn mul_add_scalar(c: u8, src: &[u8], dst: &mut [u8]) {
    let (lo, hi) = nibble_tables(c);
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= lo[(s & 15) as usize] ^ hi[(s >> 4) as usize];
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mul_add_avx2(c: u8, src: &[u8], dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let (lo, hi) = nibble_tables(c);
    let n = src.len().min(dst.len());
    // SAFETY (whole block): the loads and stores below touch
    // src[i..i + 32] and dst[i..i + 32] with i + 32 <= n, inside both
    // slices; unaligned loads and stores are used.
    let tlo = _mm256_broadcastsi128_si256(_mm_loadu_si128(lo.as_ptr() as *const __m128i));
    let thi = _mm256_broadcastsi128_si256(_mm_loadu_si128(hi.as_ptr() as *const __m128i));
    let mask = _mm256_set1_epi8(0x0f);
    let mut i = 0;
    while i + 32 <= n {
        let s = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
        let d = _mm256_loadu_si256(dst.as_ptr().add(i) as *const __m256i);
        let l = _mm256_and_si256(s, mask);
        let h = _mm256_and_si256(_mm256_srli_epi64(s, 4), mask);
        let p = _mm256_xor_si256(_mm256_shuffle_epi8(tlo, l), _mm256_shuffle_epi8(thi, h));
        _mm256_storeu_si256(
            dst.as_mut_ptr().add(i) as *mut __m256i,
            _mm256_xor_si256(d, p),
        );
        i += 32;
    }
    mul_add_scalar(c, &src[i..n], &mut dst[i..n]);
}

/// `dst ^= c · src`, with AVX2 when the CPU has it.
pub fn mul_add(c: u8, src: &[u8], dst: &mut [u8]) {
    if c == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { mul_add_avx2(c, src, dst) };
            return;
        }
    }
    mul_add_scalar(c, src, dst);
}

/// Bytes processed per pass: inputs and outputs of one block stay in cache
/// while every coefficient is applied.
const BLOCK_BYTES: usize = 16 << 10;

/// `out[j] = Σ_i rows[j][i] · inputs[i]` for shards of one length.
pub fn apply(rows: &[Vec<u8>], inputs: &[&[u8]], out: &mut [Vec<u8>]) {
    let len = inputs.first().map_or(0, |s| s.len());
    for o in out.iter_mut() {
        o.clear();
        o.resize(len, 0);
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && inputs.iter().all(|s| s.len() == len) {
            for (row, o) in rows.iter().zip(out.iter_mut()) {
                // SAFETY: the CPU supports AVX2 (checked above) and every
                // input and the output are `len` bytes long.
                unsafe { dot_avx2(row, inputs, o) };
            }
            return;
        }
    }
    let mut at = 0;
    while at < len {
        let end = (at + BLOCK_BYTES).min(len);
        for (row, o) in rows.iter().zip(out.iter_mut()) {
            for (c, src) in row.iter().zip(inputs) {
                mul_add(*c, &src[at..end], &mut o[at..end]);
            }
        }
        at = end;
    }
}

/// `out = Σ_i row[i] · inputs[i]`, accumulating 32 bytes of every input in
/// a register and storing once (the output is written once, not read and
/// written once per input). Every input and `out` must be equally long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(row: &[u8], inputs: &[&[u8]], out: &mut [u8]) {
    use std::arch::x86_64::*;
    let len = out.len();
    let mask = _mm256_set1_epi8(0x0f);
    let tables: Vec<(__m256i, __m256i)> = row
        .iter()
        .map(|&c| {
            let (lo, hi) = nibble_tables(c);
            (
                _mm256_broadcastsi128_si256(_mm_loadu_si128(lo.as_ptr() as *const __m128i)),
                _mm256_broadcastsi128_si256(_mm_loadu_si128(hi.as_ptr() as *const __m128i)),
            )
        })
        .collect();
    let mut i = 0;
    // SAFETY (loop): i + 32 <= len and every input is `len` bytes long, so
    // each unaligned load and store stays inside its slice.
    while i + 32 <= len {
        let mut acc = _mm256_setzero_si256();
        for (src, (tlo, thi)) in inputs.iter().zip(&tables) {
            let s = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
            let l = _mm256_and_si256(s, mask);
            let h = _mm256_and_si256(_mm256_srli_epi64(s, 4), mask);
            acc = _mm256_xor_si256(
                acc,
                _mm256_xor_si256(_mm256_shuffle_epi8(*tlo, l), _mm256_shuffle_epi8(*thi, h)),
            );
        }
        _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, acc);
        i += 32;
    }
    for (c, src) in row.iter().zip(inputs) {
        mul_add_scalar(*c, &src[i..len], &mut out[i..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn field_laws() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1);
            for b in [1u8, 2, 3, 29, 200, 255] {
                assert_eq!(mul(a, b), mul(b, a));
            }
        }
    }

    proptest! {
        #[test]
        fn simd_equals_scalar(c in any::<u8>(), src in prop::collection::vec(any::<u8>(), 0..300), seed in any::<u8>()) {
            let mut a: Vec<u8> = src.iter().map(|x| x ^ seed).collect();
            let mut b = a.clone();
            mul_add(c, &src, &mut a);
            mul_add_scalar(c, &src, &mut b);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn apply_equals_scalar(k in 1usize..11, len in 0usize..200, seed in any::<u64>()) {
            let a = encoding_matrix(k, 3);
            let inputs: Vec<Vec<u8>> = (0..k).map(|i| (0..len).map(|j| (seed as usize ^ (i * 31 + j * 7)) as u8).collect()).collect();
            let refs: Vec<&[u8]> = inputs.iter().map(|v| v.as_slice()).collect();
            let mut out = vec![Vec::new(); 3];
            apply(&a[k..], &refs, &mut out);
            for (row, o) in a[k..].iter().zip(&out) {
                let mut want = vec![0u8; len];
                for (c, src) in row.iter().zip(&refs) {
                    mul_add_scalar(*c, src, &mut want);
                }
                prop_assert_eq!(o, &want);
            }
        }

        #[test]
        fn every_k_rows_invert(k in 1usize..12, m in 1usize..5, pick in any::<u64>()) {
            let a = encoding_matrix(k, m);
            // Choose k of the k + m rows from the bits of `pick`.
            let mut rows: Vec<usize> = (0..k + m).filter(|i| pick >> i & 1 == 1).take(k).collect();
            let mut i = 0;
            while rows.len() < k {
                if !rows.contains(&i) { rows.push(i); }
                i += 1;
            }
            rows.sort();
            let sub: Vec<Vec<u8>> = rows.iter().map(|&r| a[r].clone()).collect();
            prop_assert!(invert(&sub).is_some());
        }
    }
}
