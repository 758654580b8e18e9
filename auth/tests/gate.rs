//! The gate's bounds on a real capnp service (in-process capability, no
//! network): calls and bytes in flight per connection and in all are
//! capped, a call past its timeout is cancelled, and every refusal or end
//! gives its share back — after any mix of calls the counters are zero.

use capnp::capability::Promise;
use futures::future::LocalBoxFuture;
use std::rc::Rc;
use std::time::Duration;
use tessera_auth::{gated, Bounds, Budget, Check, Names, Session};
use tessera_schema::gateway_capnp::gateway;

/// `stat` of a key starting with "hang" never answers; others answer at
/// once. `put` holds its payload's bytes (as the gateway does) and never
/// answers.
struct Dummy {
    session: Rc<Session>,
    bounds: Rc<Bounds>,
}

impl gateway::Server for Dummy {
    async fn stat(
        self: Rc<Self>,
        params: gateway::StatParams,
        _: gateway::StatResults,
    ) -> Result<(), capnp::Error> {
        let key = params.get()?.get_key()?.to_string().unwrap_or_default();
        if key.starts_with("hang") {
            futures::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn put(
        self: Rc<Self>,
        params: gateway::PutParams,
        _: gateway::PutResults,
    ) -> Result<(), capnp::Error> {
        let n = params.get()?.get_data()?.len() as u64;
        let _held = self
            .session
            .hold_bytes(&self.bounds, n)
            .map_err(capnp::Error::overloaded)?;
        futures::future::pending::<()>().await;
        Ok(())
    }
}

/// A timer that needs no runtime: a thread sleeps, then wakes the future.
fn thread_sleep(d: Duration) -> LocalBoxFuture<'static, ()> {
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(d);
        let _ = tx.send(());
    });
    Box::pin(async move {
        let _ = rx.await;
    })
}

const NAMES: Names = Names {
    service: "test",
    hot_path: false,
    methods: &[],
};

fn client(session: Rc<Session>, bounds: Rc<Bounds>) -> gateway::Client {
    let dummy = Dummy {
        session: session.clone(),
        bounds: bounds.clone(),
    };
    gated::<gateway::Client, _>(dummy, session, NAMES, Some(bounds), |_, _| Check::Allow)
}

fn bounds(calls: usize, per_conn: u64, total: &Rc<Budget>, timeout_ms: u64) -> Rc<Bounds> {
    Rc::new(Bounds {
        calls_per_connection: calls,
        bytes_per_connection: per_conn,
        total: total.clone(),
        timeout: Some((Duration::from_millis(timeout_ms), thread_sleep)),
        untimed: &[],
    })
}

fn stat(c: &gateway::Client, key: &str) -> Promise<(), capnp::Error> {
    let mut r = c.stat_request();
    r.get().set_key(key);
    let p = r.send().promise;
    Promise::from_future(async move { p.await.map(|_| ()) })
}

fn put(c: &gateway::Client, bytes: usize) -> Promise<(), capnp::Error> {
    let mut r = c.put_request();
    r.get().set_key("k");
    r.get().set_data(&vec![7u8; bytes]);
    let p = r.send().promise;
    Promise::from_future(async move { p.await.map(|_| ()) })
}

/// Starts `calls` on the pool (so that they are dispatched and hold their
/// shares); their results land in the returned list when they end.
fn start(
    pool: &mut futures::executor::LocalPool,
    calls: Vec<Promise<(), capnp::Error>>,
) -> Rc<std::cell::RefCell<Vec<Result<(), capnp::Error>>>> {
    use futures::task::LocalSpawnExt;
    let out = Rc::new(std::cell::RefCell::new(Vec::new()));
    for c in calls {
        let out = out.clone();
        pool.spawner()
            .spawn_local(async move {
                let r = c.await;
                out.borrow_mut().push(r);
            })
            .unwrap();
    }
    pool.run_until_stalled();
    out
}

#[test]
fn calls_per_connection_are_capped_and_timeouts_release_them() {
    let mut pool = futures::executor::LocalPool::new();
    let total = Budget::new(1 << 30);
    let session = Session::new(false);
    let c = client(session.clone(), bounds(4, 1 << 30, &total, 200));
    let hanging = start(
        &mut pool,
        (0..4).map(|i| stat(&c, &format!("hang{i}"))).collect(),
    );
    // The fifth is refused at once as overloaded; the service never ran.
    let e = pool.run_until(stat(&c, "hang5")).unwrap_err();
    assert_eq!(e.kind, capnp::ErrorKind::Overloaded, "{e}");
    assert!(e.to_string().contains("calls running"), "{e}");
    pool.run();
    let ended = hanging.borrow();
    assert_eq!(ended.len(), 4);
    for r in ended.iter() {
        let e = r.as_ref().unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
    }
    // Their shares are back: calls go through again.
    pool.run_until(stat(&c, "quick")).unwrap();
    assert_eq!(total.used(), 0);
}

#[test]
fn request_bytes_are_capped_per_connection_and_in_all() {
    let mut pool = futures::executor::LocalPool::new();
    let total = Budget::new(3 << 20);
    let (s1, s2) = (Session::new(false), Session::new(false));
    let c1 = client(s1, bounds(100, 2 << 20, &total, 300));
    let c2 = client(s2, bounds(100, 2 << 20, &total, 300));
    let first = start(&mut pool, vec![put(&c1, 1_500_000)]);
    // Connection 1 holds 1.5 MB of 2 MiB: another 1.5 MB is refused.
    let e = pool.run_until(put(&c1, 1_500_000)).unwrap_err();
    assert_eq!(e.kind, capnp::ErrorKind::Overloaded);
    assert!(e.to_string().contains("request bytes"), "{e}");
    // Connection 2 may hold its own 1.5 MB (3 MiB in all) ...
    let second = start(&mut pool, vec![put(&c2, 1_500_000)]);
    // ... but not more than the process budget.
    let e = pool.run_until(put(&c2, 500_000)).unwrap_err();
    assert_eq!(e.kind, capnp::ErrorKind::Overloaded);
    assert!(e.to_string().contains("the server holds"), "{e}");
    pool.run();
    assert!(
        first.borrow()[0].is_err() && second.borrow()[0].is_err(),
        "both time out"
    );
    assert_eq!(total.used(), 0, "every share is given back");
}

#[test]
fn shares_always_return_to_zero() {
    // Many rounds of mixed calls (answered, refused, timed out): whatever
    // happens, nothing stays held.
    let mut pool = futures::executor::LocalPool::new();
    let total = Budget::new(8 << 20);
    for round in 0..20u64 {
        let session = Session::new(false);
        let c = client(session, bounds(3, 4 << 20, &total, 20));
        pool.run_until(async {
            let mut calls = Vec::new();
            for i in 0..(round % 7 + 1) {
                calls.push(match (round + i) % 3 {
                    0 => stat(&c, "quick"),
                    1 => stat(&c, "hang"),
                    _ => put(&c, 1 << 20),
                });
            }
            for call in calls {
                let _ = call.await;
            }
        });
        assert_eq!(total.used(), 0, "round {round}");
    }
}
