//! `tessera-s3`: the S3-compatible HTTP front of a Tessera cluster.

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tessera_rpc::ConnectOptions;
use tessera_s3::backend::Backend;
use tessera_s3::front::Front;
use tessera_s3::keys::KeyCache;

/// The one key an `--insecure` front accepts signatures from (anonymous
/// requests are served too): s3s cannot check a signature without knowing
/// the secret, so "any key" is not possible; these are printed by
/// `tessera dev --insecure`.
const INSECURE_KEY_ID: &str = "insecure";
const INSECURE_SECRET: &str = "insecure";

/// The `--insecure` front's one key.
struct InsecureAuth;

#[async_trait::async_trait]
impl s3s::auth::S3Auth for InsecureAuth {
    async fn get_secret_key(&self, access_key: &str) -> s3s::S3Result<s3s::auth::SecretKey> {
        if access_key == INSECURE_KEY_ID {
            return Ok(s3s::auth::SecretKey::from(INSECURE_SECRET));
        }
        Err(s3s::s3_error!(
            InvalidAccessKeyId,
            "an --insecure front checks only key id {INSECURE_KEY_ID:?} (secret {INSECURE_SECRET:?}); or send unsigned requests"
        ))
    }
}

/// Lets every request through (an `--insecure` front only).
struct AllowAll;

#[async_trait::async_trait]
impl s3s::access::S3Access for AllowAll {
    async fn check(&self, _cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        Ok(())
    }
}

/// Where the front listens unless told (127.0.0.1:7480).
const LISTEN_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7480);
/// How long open connections may take to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's backlog.
const CONNECTIONS_MAX: usize = 4096;
/// Longest a client may take to finish the TLS handshake (HTTPS).
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "tessera-s3",
    version,
    about = "Tessera's S3-compatible HTTP front: S3 clients in, the gateway's object API out"
)]
struct Cli {
    /// HTTP listen address (port 0 picks one; it is printed) [default: 127.0.0.1:7480].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs
    /// --tls-key. Without it the front speaks plain HTTP (put a TLS proxy in
    /// front, or keep it on a trusted network).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The gateway to serve through (host:port).
    #[arg(long)]
    gateway: SocketAddr,
    /// The gateway's Unix socket (its --local-socket), when it runs on this
    /// machine: requests go there in plaintext instead of over TLS to
    /// --gateway, still with the front's access key (less CPU per byte).
    #[arg(long)]
    gateway_socket: Option<PathBuf>,
    /// The cluster CA (PEM) the gateway's certificate is checked against.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// A file with the admin access key the front uses (TOML: key_id,
    /// secret); or set TESSERA_KEY_ID and TESSERA_SECRET.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The cluster's seal key (the gateway's --seal-key): opens the sealed
    /// secrets SigV4 checks need.
    #[arg(long)]
    seal_key: Option<PathBuf>,
    /// Plaintext to an --insecure gateway and no S3 authentication: every
    /// request is allowed, anonymous or signed with key id "insecure" and
    /// secret "insecure". Only for a cluster nobody else can reach.
    #[arg(long)]
    insecure: bool,
    /// Virtual-hosted-style requests for this domain (BUCKET.DOMAIN);
    /// path-style requests always work.
    #[arg(long)]
    domain: Option<String>,
    /// Multipart uploads neither completed nor aborted this many seconds
    /// after they began are aborted (their parts deleted), as S3's
    /// AbortIncompleteMultipartUpload lifecycle rule would; 0 keeps them
    /// until a client aborts them.
    #[arg(long, default_value_t = tessera_s3::expiry::UPLOAD_EXPIRY_DEFAULT_SECS)]
    upload_expiry_secs: u64,
    /// Log filter (else TESSERA_LOG, else "info").
    #[arg(long)]
    log: Option<String>,
}

fn credentials(cli: &Cli) -> Result<tessera_auth::Credentials> {
    if let Some(p) = &cli.key_file {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        return toml::from_str(&text).with_context(|| {
            format!(
                "{} is not a key file (key_id = \"TK…\", secret = \"…\")",
                p.display()
            )
        });
    }
    match (
        std::env::var("TESSERA_KEY_ID"),
        std::env::var("TESSERA_SECRET"),
    ) {
        (Ok(key_id), Ok(secret)) => Ok(tessera_auth::Credentials { key_id, secret }),
        _ => bail!(
            "the front needs an admin access key to read the key table: --key-file FILE, or \
             TESSERA_KEY_ID and TESSERA_SECRET (or --insecure for an --insecure cluster)"
        ),
    }
}

fn main() -> Result<()> {
    // First, before any thread: may re-execute this binary once.
    let memcpy = tessera_engine::tune_memcpy();
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("TESSERA_LOG").ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(w) = memcpy.failure() {
        tracing::warn!("{w}");
    }
    let listen = cli.listen.unwrap_or(LISTEN_DEFAULT);
    let (opts, seal) = if cli.insecure {
        if cli.tls_ca.is_some() || cli.seal_key.is_some() || cli.key_file.is_some() {
            bail!("--insecure takes no --tls-ca, --seal-key or --key-file");
        }
        tracing::warn!("--insecure: plaintext to the gateway, S3 requests are not authenticated");
        (
            ConnectOptions {
                local_socket: cli.gateway_socket.clone(),
                ..ConnectOptions::default()
            },
            None,
        )
    } else {
        let Some(ca) = &cli.tls_ca else {
            bail!("give --tls-ca (the cluster CA), or --insecure for an --insecure cluster");
        };
        let Some(seal) = &cli.seal_key else {
            bail!("give --seal-key (the cluster's seal key, as the gateway's --seal-key), or --insecure");
        };
        let seal = tessera_auth::SealKey::load(seal).context("--seal-key")?;
        let tls = tessera_tls::Connector::client(ca)
            .with_context(|| format!("the cluster CA {}", ca.display()))?;
        (
            ConnectOptions {
                tls: Some(tls),
                credentials: Some(credentials(&cli)?),
                local_socket: cli.gateway_socket.clone(),
            },
            Some(Arc::new(seal)),
        )
    };
    tessera_engine::raise_memlock()
        .context("io_uring (the gateway client's runtime) needs locked memory")?;
    let backend = Backend::start(cli.gateway, opts).context("connecting to the gateway")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    rt.block_on(serve(cli, listen, backend, seal))
}

async fn serve(
    cli: Cli,
    listen: SocketAddr,
    backend: Backend,
    seal: Option<Arc<tessera_auth::SealKey>>,
) -> Result<()> {
    let keys = match seal {
        Some(seal) => {
            let k = KeyCache::new(backend.clone(), seal);
            let n = k
                .refresh()
                .await
                .context("reading the access keys through the gateway")?;
            tracing::info!(keys = n, "access keys with S3 access");
            Some(k)
        }
        None => None,
    };
    if cli.upload_expiry_secs > 0 {
        let expiry = std::time::Duration::from_secs(cli.upload_expiry_secs);
        tracing::info!(
            expiry_secs = cli.upload_expiry_secs,
            every_secs = tessera_s3::expiry::sweep_every(expiry).as_secs_f64(),
            "abandoned multipart uploads expire"
        );
        tokio::spawn(tessera_s3::expiry::run(backend.clone(), expiry));
    }
    let mut b = s3s::service::S3ServiceBuilder::new(Front::new(backend, keys.clone()));
    match keys {
        Some(k) => b.set_auth(k),
        None => {
            b.set_auth(InsecureAuth);
            b.set_access(AllowAll);
            tracing::warn!(
                "--insecure: anonymous requests and requests signed with key id {INSECURE_KEY_ID:?}, secret {INSECURE_SECRET:?} are served"
            );
        }
    }
    if let Some(d) = &cli.domain {
        b.set_host(
            s3s::host::SingleDomain::new(d).map_err(|e| anyhow::anyhow!("--domain {d:?}: {e}"))?,
        );
    }
    let service = b.build();
    let https = match (&cli.tls_cert, &cli.tls_key) {
        (Some(c), Some(k)) => Some(tokio_rustls::TlsAcceptor::from(
            tessera_tls::https_server_config(c, k).context("--tls-cert/--tls-key")?,
        )),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let at = listener.local_addr()?;
    // The one line scripts wait for (like the other daemons).
    let scheme = if https.is_some() { "https" } else { "http" };
    println!("tessera-s3 listening on {scheme}://{at}");
    tracing::info!(%at, gateway = %cli.gateway, "S3 front ready");
    let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p?,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let (sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let _ = sock.set_nodelay(true);
        // Every answer passes the connection-hygiene rule (tessera_s3::conn).
        let svc = service.clone();
        let hygienic =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let svc = svc.clone();
                let shape = tessera_s3::conn::BodyShape::of(req.headers());
                async move {
                    let mut resp = hyper::service::Service::call(&svc, req).await?;
                    if shape.close_after(resp.status()) {
                        tessera_s3::conn::mark_close(resp.headers_mut());
                    }
                    Ok::<_, s3s::HttpError>(resp)
                }
            });
        match &https {
            None => {
                let conn = http
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), hygienic)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task, bounded, so
                // a slow or silent client never holds up accepting.
                let (acceptor, http, watcher) =
                    (acceptor.clone(), http.clone(), graceful.watcher());
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(sock))
                            .await
                        {
                            Ok(Ok(t)) => t,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = http
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), hygienic)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
        }
    }
    tracing::info!("stopping: finishing open requests");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("requests still open after the grace period; stopping anyway"),
    }
    Ok(())
}
