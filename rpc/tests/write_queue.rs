//! The write queue every Cap'n Proto connection sends through, as patched
//! in `vendor/capnp-futures` (vendor/README.md): messages queued together
//! share one flush, at most 64 to a flush, and nothing else changes —
//! every message reaches the transport once, whole and in queue order, and
//! a message's send completes only after a flush that covers it.

use capnp::message::{Builder, HeapAllocator, ReaderOptions};
use futures::executor::LocalPool;
use futures::io::AsyncWrite;
use futures::task::LocalSpawnExt;
use proptest::prelude::*;
use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// Messages one flush may carry (the patch's `COALESCE_MESSAGES_MAX`).
const COALESCE_MESSAGES_MAX: usize = 64;

/// A transport that keeps what is written and where each flush ended.
#[derive(Default)]
struct Recorded {
    bytes: Vec<u8>,
    flushed_at: Vec<usize>,
}

#[derive(Clone, Default)]
struct Recorder(Rc<RefCell<Recorded>>);

impl AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.borrow_mut().bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut r = self.0.borrow_mut();
        let at = r.bytes.len();
        r.flushed_at.push(at);
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A message whose root is a list of `words` copies of `n`.
fn message(n: u64, words: u32) -> Builder<HeapAllocator> {
    let mut b = Builder::new_default();
    let mut list = b.initn_root::<capnp::primitive_list::Builder<u64>>(words);
    for i in 0..words {
        list.set(i, n);
    }
    b
}

/// Decodes every message in `bytes`, in order: (n, words).
fn decode_all(mut bytes: &[u8]) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let r = capnp::serialize::read_message_from_flat_slice(&mut bytes, ReaderOptions::new())
            .expect("a whole message");
        let list: capnp::primitive_list::Reader<u64> = r.get_root().expect("a list root");
        assert!(
            list.iter().all(|x| x == list.get(0)),
            "a message's body was mixed up"
        );
        out.push((list.get(0), list.len()));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Groups of messages queued at once: each group leaves in
    /// ceil(len / 64) flushes, every send completes once its group is
    /// flushed, and the transport gets every message whole and in order.
    #[test]
    fn messages_queued_together_share_flushes_and_keep_their_order(
        groups in prop::collection::vec(prop::collection::vec(1u32..300, 1..150), 1..6)
    ) {
        let rec = Recorder::default();
        let (mut sender, queue) = capnp_futures::write_queue::<_, Builder<HeapAllocator>>(rec.clone());
        let mut pool = LocalPool::new();
        pool.spawner()
            .spawn_local(async move {
                queue.await.expect("the queue never fails on this transport");
            })
            .expect("spawn");
        let mut expected = Vec::new();
        let mut n = 0u64;
        for group in &groups {
            let flushes_before = rec.0.borrow().flushed_at.len();
            let sends: Vec<_> = group
                .iter()
                .map(|&words| {
                    n += 1;
                    expected.push((n, words));
                    sender.send(message(n, words))
                })
                .collect();
            pool.run_until_stalled();
            for s in sends {
                let done = futures::FutureExt::now_or_never(s);
                prop_assert!(matches!(done, Some(Ok(_))), "a send did not complete after its flush");
            }
            let r = rec.0.borrow();
            prop_assert_eq!(
                r.flushed_at.len() - flushes_before,
                group.len().div_ceil(COALESCE_MESSAGES_MAX),
                "flushes for a group of {} messages", group.len()
            );
            prop_assert_eq!(r.flushed_at.last().copied(), Some(r.bytes.len()), "bytes written but not flushed");
        }
        let got = decode_all(&rec.0.borrow().bytes);
        prop_assert_eq!(got, expected);
        drop(sender);
        pool.run();
    }
}

/// Closing the queue with messages still queued writes and flushes them
/// before it ends.
#[test]
fn terminating_flushes_what_was_queued_before() {
    let rec = Recorder::default();
    let (mut sender, queue) = capnp_futures::write_queue::<_, Builder<HeapAllocator>>(rec.clone());
    let mut pool = LocalPool::new();
    let ended = Rc::new(RefCell::new(None));
    let e = ended.clone();
    pool.spawner()
        .spawn_local(async move {
            *e.borrow_mut() = Some(queue.await.is_ok());
        })
        .expect("spawn");
    let sends: Vec<_> = (1..=3).map(|i| sender.send(message(i, 4))).collect();
    let done = sender.terminate(Ok(()));
    pool.run_until_stalled();
    for s in sends {
        assert!(matches!(futures::FutureExt::now_or_never(s), Some(Ok(_))));
    }
    assert!(matches!(
        futures::FutureExt::now_or_never(done),
        Some(Ok(()))
    ));
    assert_eq!(*ended.borrow(), Some(true));
    let r = rec.0.borrow();
    assert_eq!(r.flushed_at.last().copied(), Some(r.bytes.len()));
    assert_eq!(decode_all(&r.bytes), vec![(1, 4), (2, 4), (3, 4)]);
}
