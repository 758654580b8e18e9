//! Tessera's S3-compatible HTTP front (`tessera-s3`).
//!
//! S3 clients (the aws CLI, boto3, rclone, backup tools) talk HTTP to this
//! front; [s3s](https://crates.io/crates/s3s) parses the protocol and
//! checks SigV4 signatures; [`front::Front`] serves each operation through
//! the gateway's client library. The front is stateless: buckets, uploads
//! and object headers live in the cluster ([`names`]), so any number of
//! fronts can serve the same cluster.
//!
//! Threads: hyper and s3s run on a tokio runtime; the gateway client runs
//! on one glommio thread ([`backend`]), reached through bounded channels.
//!
//! Security: requests are signed with the cluster's access keys. SigV4
//! needs the secret itself, so a key made by a gateway that holds the
//! cluster's seal key carries its secret sealed with it, and this front
//! (given the same seal key) opens it ([`keys`]). The front itself
//! authenticates to the gateway with an admin key (to read the key table)
//! and checks each request against the signing key's permissions and
//! prefix.

pub mod backend;
pub mod conditions;
pub mod conn;
pub mod expiry;
pub mod front;
pub mod keys;
pub mod names;

/// What can stop the front from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting: {0}")]
    Start(String),
    #[error("the gateway: {0}")]
    Gateway(String),
}
