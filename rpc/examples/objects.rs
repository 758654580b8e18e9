//! A tour of the client library against a running cluster.
//!
//! ```sh
//! cargo build --release && cargo run --release --bin tessera -- dev   # in one terminal
//! cargo run --release -p tessera-rpc --example objects [-- CLUSTER_FILE]
//! ```
//! The cluster file (default: the one `tessera dev` writes) says where the
//! gateway is, which CA signed its certificate and which access key to use.

use std::net::SocketAddr;
use tessera_rpc::{ConnectOptions, GatewayClient, PutOutcome};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flag = std::env::args().nth(1).map(std::path::PathBuf::from);
    let file = tessera_rpc::cluster::read(&tessera_rpc::cluster::path(flag.as_deref()))?;
    let addr = file.gateway_addr()?;
    // TLS against the cluster CA, and an access key (an `--insecure`
    // cluster's file has neither: plaintext).
    let opts = ConnectOptions {
        tls: match &file.ca {
            Some(ca) => Some(tessera_tls::Connector::client(ca)?),
            None => None,
        },
        credentials: file.credentials.clone(),
        local_socket: None,
    };
    // The client runs on a glommio executor (io_uring), like the servers.
    tessera_engine::raise_memlock()?;
    let r = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move { tour(addr, opts).await.map_err(|e| e.to_string()) })?
        .join()?;
    r.map_err(Into::into)
}

async fn tour(addr: SocketAddr, opts: ConnectOptions) -> tessera_rpc::Result<()> {
    let gw = GatewayClient::connect_with(addr, opts).await?;

    // Small objects are replicated three times; large ones erasure coded.
    let (info, outcome) = gw.put("example/hello.txt", b"hello, tessera").await?;
    println!("put {} -> {} ({outcome:?})", info.key, info.layout);
    let big: Vec<u8> = (0..10u32 << 20).map(|i| (i % 251) as u8).collect();
    let (info, outcome) = gw.put("example/big.bin", &big).await?;
    println!(
        "put {} -> {} in {} stripes",
        info.key, info.layout, info.stripes
    );
    if outcome == PutOutcome::Accepted {
        println!("  (stored with reduced redundancy: some chunk servers are down)");
    }

    // Whole objects and byte ranges.
    assert_eq!(gw.get("example/hello.txt").await?, b"hello, tessera");
    let part = gw.get_range("example/big.bin", 5 << 20, 16).await?;
    assert_eq!(part, big[5 << 20..(5 << 20) + 16]);

    // Streams in both directions keep memory bounded for any size.
    let mut received = 0;
    let out = futures::io::AllowStdIo::new(std::io::sink());
    gw.get_to("example/big.bin", out, &mut |n| received = n)
        .await?;
    println!("streamed {received} bytes");
    let (items, _more) = gw.list("example/", "", 100).await?;
    for o in items {
        println!("{:>10}  {}  {}", o.size, o.key, o.layout);
    }
    gw.delete("example/hello.txt").await?;
    gw.delete("example/big.bin").await?;
    Ok(())
}
