//! Calls a client's callers make at the same time, sent together.
//!
//! Per key (a WAL partition, a metadata group) at most `calls_max` calls
//! are out; items queued meanwhile leave together in the next call, at
//! most `items_max` items and `bytes_max` bytes (a single item may be
//! larger). The caller that finds fewer than `calls_max` calls out starts
//! a sender, which takes batches until the queue is empty.
//!
//! Invariants:
//! - Every queued item is answered exactly once: with its own result, or
//!   with the failure of the call that carried it.
//! - A sender counts itself out only when it finds the queue empty, in the
//!   same borrow that queues items, so an item is never left queued
//!   without a sender.

use crate::error::{Error, RemoteKind, Result};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use tokio::sync::oneshot;

/// What an item weighs against a call's byte limit.
pub(crate) trait Weighed {
    fn bytes(&self) -> usize;
}

/// Where one item's answer goes.
pub(crate) type Answer<O> = oneshot::Sender<Result<O>>;

struct Queue<I, O> {
    waiting: VecDeque<(I, Answer<O>)>,
    calls_out: usize,
}

/// Per-key queues of items waiting for a call.
pub(crate) struct Batcher<I, O> {
    queues: RefCell<HashMap<u32, Queue<I, O>>>,
    calls_max: usize,
    items_max: usize,
    bytes_max: usize,
}

impl<I: Weighed, O> Batcher<I, O> {
    pub(crate) fn new(calls_max: usize, items_max: usize, bytes_max: usize) -> Self {
        Batcher {
            queues: RefCell::new(HashMap::new()),
            calls_max: calls_max.max(1),
            items_max: items_max.max(1),
            bytes_max,
        }
    }

    /// Queues `item` under `key`. Returns where its answer arrives, and
    /// whether the caller must start a sender for `key`.
    pub(crate) fn push(&self, key: u32, item: I) -> (oneshot::Receiver<Result<O>>, bool) {
        let (done, answer) = oneshot::channel();
        let mut qs = self.queues.borrow_mut();
        let q = qs.entry(key).or_insert_with(|| Queue {
            waiting: VecDeque::new(),
            calls_out: 0,
        });
        q.waiting.push_back((item, done));
        let start = q.calls_out < self.calls_max;
        if start {
            q.calls_out += 1;
        }
        (answer, start)
    }

    /// The next batch of `key`, in queue order; `None` when nothing waits,
    /// and the sender that asked is then counted out.
    pub(crate) fn take(&self, key: u32) -> Option<(Vec<I>, Vec<Answer<O>>)> {
        let mut qs = self.queues.borrow_mut();
        let q = qs.get_mut(&key)?;
        let mut items = Vec::new();
        let mut answers = Vec::new();
        let mut bytes = 0usize;
        while let Some((item, _)) = q.waiting.front() {
            let b = item.bytes();
            if !items.is_empty() && (items.len() >= self.items_max || bytes + b > self.bytes_max) {
                break;
            }
            bytes += b;
            if let Some((item, done)) = q.waiting.pop_front() {
                items.push(item);
                answers.push(done);
            }
        }
        if items.is_empty() {
            q.calls_out = q.calls_out.saturating_sub(1);
            if q.calls_out == 0 {
                qs.remove(&key);
            }
            return None;
        }
        Some((items, answers))
    }
}

/// Hands a call's outcome to its items' callers: each its own result, or
/// every one the call's failure.
pub(crate) fn answer<O>(answers: Vec<Answer<O>>, outcome: Result<Vec<Result<O>>>) {
    match outcome {
        Ok(results) if results.len() == answers.len() => {
            for (a, r) in answers.into_iter().zip(results) {
                let _ = a.send(r);
            }
        }
        Ok(results) => {
            let why = format!(
                "a batched call answered {} results for {} items",
                results.len(),
                answers.len()
            );
            for a in answers {
                let _ = a.send(Err(Error::Remote {
                    kind: RemoteKind::Internal,
                    message: why.clone(),
                }));
            }
        }
        Err(e) if answers.len() == 1 => {
            if let Some(a) = answers.into_iter().next() {
                let _ = a.send(Err(e));
            }
        }
        Err(e) => {
            for a in answers {
                let _ = a.send(Err(shared_error(&e)));
            }
        }
    }
}

/// Waits for an item's answer.
pub(crate) async fn wait<O>(answer: oneshot::Receiver<Result<O>>) -> Result<O> {
    answer.await.unwrap_or_else(|_| {
        Err(Error::Remote {
            kind: RemoteKind::Internal,
            message: "the call was dropped before it was answered (the client is shutting down)"
                .into(),
        })
    })
}

/// The same failure for every item of a call that failed as a whole.
fn shared_error(e: &Error) -> Error {
    match e {
        Error::Remote { kind, message } => Error::Remote {
            kind: *kind,
            message: message.clone(),
        },
        Error::GaveUp {
            attempts,
            waited_ms,
            last,
        } => Error::GaveUp {
            attempts: *attempts,
            waited_ms: *waited_ms,
            last: last.clone(),
        },
        other => Error::Remote {
            kind: RemoteKind::Internal,
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl Weighed for usize {
        fn bytes(&self) -> usize {
            *self
        }
    }

    /// One step: push an item of this weight under key 0 or 1, or let a
    /// sender of key 0 or 1 take a batch and answer it.
    #[derive(Debug, Clone)]
    enum Step {
        Push(u32, usize),
        Take(u32),
    }

    proptest! {
        /// Under any interleaving, batches respect the limits and queue
        /// order, no more than `calls_max` senders run per key, and once
        /// the senders drain, every item was answered exactly once with its
        /// own result.
        #[test]
        fn every_item_is_answered_once_within_the_limits(
            steps in proptest::collection::vec(prop_oneof![
                (0u32..2, 0usize..100).prop_map(|(k, w)| Step::Push(k, w)),
                (0u32..2).prop_map(Step::Take),
            ], 0..200)
        ) {
            let b: Batcher<usize, usize> = Batcher::new(2, 5, 150);
            let mut senders = [0usize; 2];
            let mut pending = Vec::new();
            let mut next = [0usize; 2];
            let mut id = 0usize;
            let mut run = |k: u32, senders: &mut [usize; 2]| -> bool {
                match b.take(k) {
                    None => { senders[k as usize] -= 1; false }
                    Some((items, answers)) => {
                        assert!(!items.is_empty() && items.len() <= 5);
                        let total: usize = items.iter().map(|i| i % 1000).sum();
                        assert!(items.len() == 1 || total <= 150, "{items:?}");
                        for i in &items {
                            // Queue order per key.
                            assert_eq!(i / 1000 % 1000, next[k as usize], "{items:?}");
                            next[k as usize] += 1;
                        }
                        answer(answers, Ok(items.into_iter().map(Ok).collect()));
                        true
                    }
                }
            };
            for s in steps {
                match s {
                    Step::Push(k, w) => {
                        // item = key-local sequence * 1000 + weight, tagged
                        // with a global id to check answers.
                        let seq = pending.iter().filter(|(kk, _, _)| *kk == k).count();
                        let item = (id * 1000 + seq) * 1000 + w;
                        id += 1;
                        let (rx, start) = b.push(k, item);
                        if start {
                            senders[k as usize] += 1;
                        }
                        prop_assert!(senders[k as usize] <= 2);
                        pending.push((k, item, rx));
                    }
                    Step::Take(k) => {
                        if senders[k as usize] > 0 {
                            run(k, &mut senders);
                        }
                    }
                }
            }
            for k in 0..2u32 {
                while senders[k as usize] > 0 {
                    run(k, &mut senders);
                }
            }
            for (_, item, mut rx) in pending {
                prop_assert_eq!(rx.try_recv().ok().and_then(|r| r.ok()), Some(item));
            }
        }
    }
}
