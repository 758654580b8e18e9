//! A linearizability checker for one key holding a versioned register with
//! compare-and-set (Wing & Gong's search with memoisation, as in Knossos and
//! Porcupine). Linearizability is local, so a history of many keys is
//! checked key by key.
//!
//! Model: the state is the value of the last write (values are unique per
//! write, so a value names its write; `None` = absent). Versions come from
//! the store; the checker learns which version each write got from every
//! answer that shows one, and a compare-and-set or a read must agree with
//! the version of the state it is linearized against.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Unconditional put of a unique value.
    Write {
        value: u64,
    },
    /// Put if the key's version is `expected` (0 = absent).
    Cas {
        expected: u64,
        value: u64,
    },
    Read,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ret {
    /// A write or CAS succeeded with this new version.
    Written { version: u64 },
    /// A CAS failed: the key's version was `current`.
    Conflict { current: u64 },
    /// A read saw this (value, version), or absent.
    Read(Option<(u64, u64)>),
    /// No answer (timeout, connection lost): it may or may not have applied.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Op {
    pub call: Call,
    pub ret: Ret,
    pub invoked_ns: u64,
    /// `u64::MAX` for `Ret::Unknown`.
    pub returned_ns: u64,
}

/// Returns Ok if `ops` (one key) has a linearization, else a description.
pub fn check(ops: &[Op]) -> Result<(), String> {
    assert!(ops.len() <= 4096, "history too long for one check");
    // Version of each write's value, from every answer that shows it.
    let mut version_of: HashMap<u64, u64> = HashMap::new();
    for o in ops {
        match (&o.call, &o.ret) {
            (Call::Write { value } | Call::Cas { value, .. }, Ret::Written { version }) => {
                version_of.insert(*value, *version);
            }
            (_, Ret::Read(Some((value, version)))) => {
                version_of.insert(*value, *version);
            }
            _ => {}
        }
    }
    let ver = |state: Option<u64>| -> Option<u64> {
        match state {
            None => Some(0),
            Some(v) => version_of.get(&v).copied(),
        }
    };
    // Applies op `o` to `state`; None if illegal.
    let step = |state: Option<u64>, o: &Op| -> Option<Option<u64>> {
        match (&o.call, &o.ret) {
            (Call::Write { value }, Ret::Written { .. } | Ret::Unknown) => Some(Some(*value)),
            (Call::Cas { expected, value }, Ret::Written { .. }) => {
                (ver(state) == Some(*expected)).then_some(Some(*value))
            }
            (Call::Cas { expected, value }, Ret::Unknown) => {
                (ver(state) == Some(*expected)).then_some(Some(*value))
            }
            (Call::Cas { expected, .. }, Ret::Conflict { current }) => {
                (ver(state) == Some(*current) && current != expected).then_some(state)
            }
            (Call::Read, Ret::Read(seen)) => {
                let ok = match (seen, state) {
                    (None, None) => true,
                    (Some((v, version)), Some(s)) => *v == s && ver(state) == Some(*version),
                    _ => false,
                };
                ok.then_some(state)
            }
            (Call::Read, Ret::Unknown) => Some(state),
            _ => None,
        }
    };
    let n = ops.len();
    let words = n.div_ceil(64);
    let mut done = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new(); // (op taken, state before)
    let mut state: Option<u64> = None;
    let is_done = |d: &Vec<u64>, i: usize| d[i / 64] >> (i % 64) & 1 == 1;
    // Candidate scan resumes from `from` after a backtrack.
    let mut from = 0usize;
    let mut steps = 0u64;
    loop {
        steps += 1;
        if steps > 50_000_000 {
            return Err("search too long".into());
        }
        // Every op that must be linearized is; the rest never returned.
        if (0..n).all(|i| is_done(&done, i) || ops[i].ret == Ret::Unknown) {
            return Ok(());
        }
        let min_ret = (0..n)
            .filter(|&i| !is_done(&done, i))
            .map(|i| ops[i].returned_ns)
            .min()
            .unwrap_or(u64::MAX);
        let mut advanced = false;
        let mut i = from;
        while i < n {
            if !is_done(&done, i) && ops[i].invoked_ns <= min_ret {
                if let Some(next) = step(state, &ops[i]) {
                    let mut d2 = done.clone();
                    d2[i / 64] |= 1 << (i % 64);
                    if seen.insert((d2.clone(), next)) {
                        stack.push((i, state));
                        done = d2;
                        state = next;
                        from = 0;
                        advanced = true;
                        break;
                    }
                }
            }
            i += 1;
        }
        if advanced {
            continue;
        }
        // Backtrack.
        match stack.pop() {
            Some((i, prev)) => {
                done[i / 64] &= !(1 << (i % 64));
                state = prev;
                from = i + 1;
            }
            None => {
                return Err(format!(
                    "no linearization of {n} ops: {:#?}",
                    ops.iter().take(40).collect::<Vec<_>>()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: Call, ret: Ret, a: u64, b: u64) -> Op {
        Op {
            call,
            ret,
            invoked_ns: a,
            returned_ns: b,
        }
    }

    #[test]
    fn accepts_concurrent_overlap_and_rejects_stale_read() {
        // w1 then (w2 || read w1): fine.
        let ok = vec![
            op(Call::Write { value: 1 }, Ret::Written { version: 10 }, 0, 1),
            op(Call::Write { value: 2 }, Ret::Written { version: 11 }, 2, 5),
            op(Call::Read, Ret::Read(Some((1, 10))), 3, 4),
        ];
        assert!(check(&ok).is_ok());
        // w1, then w2 completes, then a read still sees w1: stale.
        let stale = vec![
            op(Call::Write { value: 1 }, Ret::Written { version: 10 }, 0, 1),
            op(Call::Write { value: 2 }, Ret::Written { version: 11 }, 2, 3),
            op(Call::Read, Ret::Read(Some((1, 10))), 4, 5),
        ];
        assert!(check(&stale).is_err());
    }

    #[test]
    fn cas_must_match_the_version_it_names() {
        let ok = vec![
            op(Call::Write { value: 1 }, Ret::Written { version: 10 }, 0, 1),
            op(
                Call::Cas {
                    expected: 10,
                    value: 2,
                },
                Ret::Written { version: 12 },
                2,
                3,
            ),
            op(
                Call::Cas {
                    expected: 10,
                    value: 3,
                },
                Ret::Conflict { current: 12 },
                4,
                5,
            ),
        ];
        assert!(check(&ok).is_ok());
        // Two CAS on the same version both succeeding: impossible.
        let double = vec![
            op(Call::Write { value: 1 }, Ret::Written { version: 10 }, 0, 1),
            op(
                Call::Cas {
                    expected: 10,
                    value: 2,
                },
                Ret::Written { version: 12 },
                2,
                6,
            ),
            op(
                Call::Cas {
                    expected: 10,
                    value: 3,
                },
                Ret::Written { version: 13 },
                3,
                7,
            ),
        ];
        assert!(check(&double).is_err());
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_apply() {
        let applied = vec![
            op(Call::Write { value: 1 }, Ret::Unknown, 0, u64::MAX),
            op(Call::Read, Ret::Read(Some((1, 4))), 5, 6),
        ];
        assert!(check(&applied).is_ok());
        let not_applied = vec![
            op(Call::Write { value: 1 }, Ret::Unknown, 0, u64::MAX),
            op(Call::Read, Ret::Read(None), 5, 6),
        ];
        assert!(check(&not_applied).is_ok());
        // A lost acknowledged write is caught.
        let lost = vec![
            op(Call::Write { value: 1 }, Ret::Written { version: 3 }, 0, 1),
            op(Call::Read, Ret::Read(None), 5, 6),
        ];
        assert!(check(&lost).is_err());
    }
}
