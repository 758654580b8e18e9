//! The erasure code, behind [`Codec`] so that a pool can change codec while
//! every object keeps the one recorded in its metadata ([`CodecId`]).
//!
//! Contract: `encode` of k equal-length data shards gives m parity shards
//! of that length; `data_from` rebuilds the k data shards from any k of the
//! k + m (indexes 0..k data, k..k+m parity) and refuses fewer.

use crate::error::{Error, Result};
use crate::gf256;
use crate::meta::CodecId;

pub trait Codec {
    fn id(&self) -> CodecId;
    /// The m parity shards of `data` (k shards of one length).
    fn encode(&self, k: usize, m: usize, data: &[&[u8]]) -> Result<Vec<Vec<u8>>>;
    /// The k data shards, from `present` shards given as (index, bytes);
    /// present data shards are moved to the answer, not copied.
    fn data_from(&self, k: usize, m: usize, present: Vec<(usize, Vec<u8>)>)
        -> Result<Vec<Vec<u8>>>;
}

/// Reed-Solomon over GF(2^16) with SIMD (`reed-solomon-simd`).
pub struct RsSimd;

impl Codec for RsSimd {
    fn id(&self) -> CodecId {
        CodecId::RsSimd
    }

    fn encode(&self, k: usize, m: usize, data: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
        if data.len() != k {
            return Err(Error::Internal(format!(
                "encode: {} data shards for k = {k}",
                data.len()
            )));
        }
        reed_solomon_simd::encode(k, m, data.iter())
            .map_err(|e| Error::Internal(format!("Reed-Solomon encode {k}+{m}: {e}")))
    }

    fn data_from(
        &self,
        k: usize,
        m: usize,
        present: Vec<(usize, Vec<u8>)>,
    ) -> Result<Vec<Vec<u8>>> {
        let mut out: Vec<Option<Vec<u8>>> = vec![None; k];
        let mut recovery: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, b) in present {
            if i < k {
                if out[i].is_none() {
                    out[i] = Some(b);
                }
            } else if i < k + m {
                recovery.push((i - k, b));
            }
        }
        let have = out.iter().filter(|s| s.is_some()).count();
        if have < k {
            if have + recovery.len() < k {
                return Err(Error::DataLoss(format!(
                    "only {} of the {k} shards needed are readable",
                    have + recovery.len()
                )));
            }
            let originals = out
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_deref().map(|b| (i, b)));
            let restored = reed_solomon_simd::decode(
                k,
                m,
                originals,
                recovery.iter().map(|(i, b)| (*i, b.as_slice())),
            )
            .map_err(|e| Error::Internal(format!("Reed-Solomon decode {k}+{m}: {e}")))?;
            for (i, b) in restored {
                if i < k {
                    out[i] = Some(b);
                }
            }
        }
        all_shards(out)
    }
}

/// Reed-Solomon over GF(2^8) with a Cauchy matrix ([`crate::gf256`]):
/// rebuilding costs what encoding costs. For k + m ≤ 255.
pub struct Cauchy256;

impl Codec for Cauchy256 {
    fn id(&self) -> CodecId {
        CodecId::Cauchy256
    }

    fn encode(&self, k: usize, m: usize, data: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
        if data.len() != k || k + m > 255 {
            return Err(Error::Internal(format!(
                "Cauchy encode {k}+{m} with {} shards",
                data.len()
            )));
        }
        let a = gf256::encoding_matrix(k, m);
        let mut out = vec![Vec::new(); m];
        gf256::apply(&a[k..], data, &mut out);
        Ok(out)
    }

    fn data_from(
        &self,
        k: usize,
        m: usize,
        present: Vec<(usize, Vec<u8>)>,
    ) -> Result<Vec<Vec<u8>>> {
        let mut data: Vec<Option<Vec<u8>>> = vec![None; k];
        let mut parity: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, b) in present {
            if i < k {
                if data[i].is_none() {
                    data[i] = Some(b);
                }
            } else if i < k + m && !parity.iter().any(|p| p.0 == i) {
                parity.push((i, b));
            }
        }
        let missing: Vec<usize> = (0..k).filter(|&i| data[i].is_none()).collect();
        if missing.is_empty() {
            return all_shards(data);
        }
        if missing.len() > parity.len() {
            return Err(Error::DataLoss(format!(
                "only {} of the {k} shards needed are readable",
                k - missing.len() + parity.len()
            )));
        }
        // The k shards used: every present data shard, then parity.
        let a = gf256::encoding_matrix(k, m);
        let used: Vec<(usize, &[u8])> = (0..k)
            .filter_map(|i| data[i].as_deref().map(|b| (i, b)))
            .chain(
                parity
                    .iter()
                    .take(missing.len())
                    .map(|(i, b)| (*i, b.as_slice())),
            )
            .collect();
        let sub: Vec<Vec<u8>> = used.iter().map(|(i, _)| a[*i].clone()).collect();
        let inv = gf256::invert(&sub)
            .ok_or_else(|| Error::Internal("a Cauchy submatrix did not invert".into()))?;
        let rows: Vec<Vec<u8>> = missing.iter().map(|&d| inv[d].clone()).collect();
        let inputs: Vec<&[u8]> = used.iter().map(|(_, b)| *b).collect();
        let mut rebuilt = vec![Vec::new(); missing.len()];
        gf256::apply(&rows, &inputs, &mut rebuilt);
        for (d, b) in missing.into_iter().zip(rebuilt) {
            data[d] = Some(b);
        }
        all_shards(data)
    }
}

/// The k data shards once every one is present (an error, not a panic, if
/// a bug left one out).
fn all_shards(data: Vec<Option<Vec<u8>>>) -> Result<Vec<Vec<u8>>> {
    data.into_iter()
        .enumerate()
        .map(|(i, s)| s.ok_or_else(|| Error::Internal(format!("data shard {i} was not rebuilt"))))
        .collect()
}

/// The codec an object's record names.
pub fn codec_for(id: CodecId) -> &'static dyn Codec {
    match id {
        CodecId::RsSimd => &RsSimd,
        CodecId::Cauchy256 => &Cauchy256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any k of the k + m shards give back the data; fewer are refused.
        #[test]
        fn any_k_shards_rebuild(km in prop::sample::select(vec![(4usize, 2usize), (8, 3), (10, 4), (2, 1)]),
                                len64 in 1usize..64, seed in any::<u64>(), drop_mask in any::<u32>()) {
            let (k, m) = km;
            let len = len64 * 64;
            let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(seed);
            let data: Vec<Vec<u8>> = (0..k).map(|_| (0..len).map(|_| rand::Rng::gen(&mut rng)).collect()).collect();
            let refs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
            let codec: &dyn Codec = if seed % 2 == 0 { &RsSimd } else { &Cauchy256 };
            let parity = codec.encode(k, m, &refs).unwrap();
            prop_assert_eq!(parity.len(), m);
            let all: Vec<&[u8]> = refs.iter().copied().chain(parity.iter().map(|p| p.as_slice())).collect();
            // Drop up to m shards chosen by the mask.
            let mut dropped = 0;
            let mut present = Vec::new();
            for (i, s) in all.iter().enumerate() {
                if dropped < m && drop_mask & (1 << i) != 0 {
                    dropped += 1;
                } else {
                    present.push((i, s.to_vec()));
                }
            }
            let back = codec.data_from(k, m, present).unwrap();
            prop_assert_eq!(&back, &data);
            // One fewer than k is data loss.
            let too_few: Vec<(usize, Vec<u8>)> = all.iter().map(|s| s.to_vec()).enumerate().take(k - 1).collect();
            prop_assert!(matches!(codec.data_from(k, m, too_few), Err(Error::DataLoss(_))));
        }
    }
}
