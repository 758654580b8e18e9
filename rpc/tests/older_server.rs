//! A chunk server built before `putShards` (it answers the method
//! `unimplemented`, as capnp does for a method a server lacks) and before
//! the framed transport (the framed preamble ends the connection as a
//! malformed Cap'n Proto message): batched puts fall back to one
//! `putShard` each, and every put is stored once with
//! its own bytes. The server here is a minimal in-memory implementation of
//! the old contract on a real socket; chunkd itself serves `putShards`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use tessera_rpc::chunk_capnp::chunk_server;
use tessera_rpc::{ChunkClient, ClientOptions};

/// The old contract: `putShard` and `nodeInfo`; everything else, including
/// `putShards`, unimplemented.
#[derive(Default)]
struct OlderServer {
    stored: RefCell<HashMap<Vec<u8>, Vec<u8>>>,
    single_puts: Cell<u32>,
    batch_attempts: Cell<u32>,
}

#[derive(Clone)]
struct Handle(Rc<OlderServer>);

impl chunk_server::Server for Handle {
    fn put_shard(
        self: Rc<Self>,
        params: chunk_server::PutShardParams,
        _: chunk_server::PutShardResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let r = (|| {
            let p = params.get()?;
            let (id, data) = (p.get_id()?, p.get_data()?);
            assert_eq!(crc32c::crc32c(data), p.get_crc32c());
            self.0
                .stored
                .borrow_mut()
                .insert(id.to_vec(), data.to_vec());
            self.0.single_puts.set(self.0.single_puts.get() + 1);
            Ok(())
        })();
        std::future::ready(r)
    }

    fn put_shards(
        self: Rc<Self>,
        _: chunk_server::PutShardsParams,
        _: chunk_server::PutShardsResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        self.0.batch_attempts.set(self.0.batch_attempts.get() + 1);
        std::future::ready(Err(capnp::Error::unimplemented(
            "method not implemented".into(),
        )))
    }

    fn node_info(
        self: Rc<Self>,
        _: chunk_server::NodeInfoParams,
        mut results: chunk_server::NodeInfoResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let mut i = results.get().init_info();
        i.set_node_id("older");
        i.set_engine_shards(1);
        i.set_serving_shard(0);
        i.set_writable(true);
        std::future::ready(Ok(()))
    }
}

#[test]
fn batched_puts_fall_back_to_single_puts_on_an_older_server() {
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(|| async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = Rc::new(OlderServer::default());
            let cap: chunk_server::Client = capnp_rpc::new_client(Handle(server.clone()));
            glommio::spawn_local(async move {
                while let Ok(stream) = listener.accept().await {
                    let cap = cap.clone();
                    glommio::spawn_local(async move {
                        let _ = tessera_rpc::conn::serve(stream, cap.client).await;
                    })
                    .detach();
                }
            })
            .detach();
            let cl = Rc::new(
                ChunkClient::connect(addr, ClientOptions::default())
                    .await
                    .unwrap(),
            );
            // Several rounds of puts started at once: the first of a round
            // leaves alone, the rest wait and would be batched.
            let mut want = HashMap::new();
            for round in 0..3u32 {
                let tasks: Vec<_> = (0..40u32)
                    .map(|n| {
                        let cl = cl.clone();
                        let id = format!("r{round}-{n}").into_bytes();
                        let data = vec![(n % 251) as u8; 100 + n as usize * 37];
                        want.insert(id.clone(), data.clone());
                        glommio::spawn_local(async move { cl.put_batched(&id, &data).await })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            }
            let stored = server.stored.borrow().clone();
            assert_eq!(stored, want, "every put stored once, with its own bytes");
            assert_eq!(server.single_puts.get(), 120);
            assert_eq!(
                server.batch_attempts.get(),
                1,
                "one putShards attempt, then single puts only"
            );
            assert_eq!(cl.put_batch_stats(), Default::default());
        })
        .unwrap();
    ex.join().unwrap();
}
