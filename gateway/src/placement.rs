//! Where shards go: weighted rendezvous (highest-random-weight) hashing of
//! a stripe's id over the live nodes, never two shards of a stripe on one
//! node, and spread over zones when nodes have them.
//!
//! Invariants (tested over generated clusters):
//! - `place` returns distinct nodes, `min(want, nodes)` of them;
//! - the choice depends only on the key and the node set (not its order);
//! - adding a node moves a stripe's shard only to that node (the others
//!   keep their rank), so growth moves about `1/n` of the shards;
//! - with zones, the zones' counts differ by at most one.

/// A node placement may choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node_id: String,
    /// Relative weight (capacity); 0 is taken as 1.
    pub weight: u64,
    pub zone: String,
}

/// A stable 64-bit hash (FNV-1a, then the splitmix64 finaliser): placement
/// must not change with the Rust version.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The node's score for `key`: `-weight / ln(u)` with `u` uniform in (0, 1)
/// from the hash, so a node wins in proportion to its weight.
fn score(key: &[u8], c: &Candidate) -> f64 {
    let h = hash(&[key, c.node_id.as_bytes()]);
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let w = c.weight.max(1) as f64;
    -w / u.ln()
}

/// All candidates ranked for `key`, best first (ties broken by node id).
pub fn rank<'a>(key: &[u8], nodes: &'a [Candidate]) -> Vec<&'a Candidate> {
    let mut v: Vec<(f64, &Candidate)> = nodes.iter().map(|c| (score(key, c), c)).collect();
    v.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.1.node_id.cmp(&b.1.node_id))
    });
    v.dedup_by(|a, b| a.1.node_id == b.1.node_id);
    v.into_iter().map(|x| x.1).collect()
}

/// `want` distinct nodes for the shards of `key`, in shard order. With
/// zones, each next shard goes to the best-ranked node of a zone holding
/// the fewest shards so far.
pub fn place<'a>(key: &[u8], nodes: &'a [Candidate], want: usize) -> Vec<&'a Candidate> {
    let ranked = rank(key, nodes);
    let zoned = ranked.iter().any(|c| !c.zone.is_empty());
    if !zoned {
        return ranked.into_iter().take(want).collect();
    }
    let mut chosen: Vec<&Candidate> = Vec::with_capacity(want);
    let mut used = vec![false; ranked.len()];
    let mut zone_count: std::collections::HashMap<&str, usize> = Default::default();
    for c in &ranked {
        zone_count.entry(c.zone.as_str()).or_insert(0);
    }
    while chosen.len() < want.min(ranked.len()) {
        // The fewest shards of any zone that still has an unused node.
        let min = ranked
            .iter()
            .zip(&used)
            .filter(|(_, u)| !**u)
            .map(|(c, _)| zone_count[c.zone.as_str()])
            .min()
            .unwrap_or(0);
        let Some(i) = ranked
            .iter()
            .zip(&used)
            .position(|(c, u)| !*u && zone_count[c.zone.as_str()] == min)
        else {
            break;
        };
        used[i] = true;
        if let Some(n) = zone_count.get_mut(ranked[i].zone.as_str()) {
            *n += 1;
        }
        chosen.push(ranked[i]);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(n: usize, zones: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                node_id: format!("chunk-{i:04}"),
                weight: 100 + (i as u64 % 3) * 50,
                zone: if zones == 0 {
                    String::new()
                } else {
                    format!("z{}", i % zones)
                },
            })
            .collect()
    }

    proptest! {
        #[test]
        fn distinct_and_order_independent(n in 1usize..24, zones in 0usize..4, want in 1usize..12, key in any::<[u8; 8]>(), seed in any::<u64>()) {
            let ns = nodes(n, zones);
            let a: Vec<String> = place(&key, &ns, want).iter().map(|c| c.node_id.clone()).collect();
            prop_assert_eq!(a.len(), want.min(n));
            let mut set = a.clone();
            set.sort();
            set.dedup();
            prop_assert_eq!(set.len(), a.len());
            let mut shuffled = ns.clone();
            let l = shuffled.len();
            shuffled.rotate_left((seed as usize) % l);
            let b: Vec<String> = place(&key, &shuffled, want).iter().map(|c| c.node_id.clone()).collect();
            prop_assert_eq!(a, b);
        }

        #[test]
        fn zones_balanced(n in 6usize..24, zones in 2usize..4, want in 2usize..8, key in any::<[u8; 8]>()) {
            let ns = nodes(n, zones);
            let chosen = place(&key, &ns, want);
            let mut counts = vec![0usize; zones];
            for c in chosen {
                counts[c.zone[1..].parse::<usize>().unwrap()] += 1;
            }
            prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
        }

        /// Growth: with one node added, every shard either stays or moves to
        /// the new node.
        #[test]
        fn adding_a_node_only_moves_to_it(n in 2usize..20, want in 1usize..8, key in any::<[u8; 8]>()) {
            let before = nodes(n, 0);
            let after = nodes(n + 1, 0);
            let a: Vec<&str> = rank(&key, &before).iter().map(|c| c.node_id.as_str()).collect();
            let b: Vec<&str> = rank(&key, &after).iter().filter(|c| c.node_id != after[n].node_id).map(|c| c.node_id.as_str()).collect();
            prop_assert_eq!(a, b);
            let _ = want;
        }
    }

    #[test]
    fn weight_skews_the_share() {
        let mut ns = nodes(4, 0);
        for c in &mut ns {
            c.weight = 100;
        }
        ns[0].weight = 300;
        let wins = (0..20_000u32)
            .filter(|i| rank(&i.to_le_bytes(), &ns)[0].node_id == ns[0].node_id)
            .count();
        // Expected share 300 / 600 = 0.5.
        assert!(
            (9_000..11_000).contains(&wins),
            "heavy node won {wins} of 20000"
        );
    }
}
