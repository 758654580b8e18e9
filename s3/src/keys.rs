//! Access keys as the S3 front sees them: the secret (opened from the
//! sealed copy in the key record) that SigV4 needs, and what the key may
//! touch.
//!
//! Owns: a cache of every key, read through the gateway's admin
//! `listKeys`, refreshed every [`KEYS_REFRESH`] (so a revoked key stops
//! working within that window, as on the gateway) and at most once per
//! [`KEYS_MISS_REFRESH_MIN`] when an unknown key id shows up (a new key
//! works at once; a flood of made-up ids costs one list per second).
//!
//! Invariants: a key without a sealed secret, a revoked key and a key
//! whose sealed secret does not open are all "unknown" to SigV4
//! (`InvalidAccessKeyId`); secrets live only in this cache and in
//! `s3s::auth::SecretKey` (zeroed on drop), never in logs.

use crate::backend::Backend;
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_auth::{Permission, Permissions, SealKey};

/// How often the whole key table is read again.
pub const KEYS_REFRESH: Duration = Duration::from_secs(10);
/// Least time between two reads caused by unknown key ids.
pub const KEYS_MISS_REFRESH_MIN: Duration = Duration::from_secs(1);

/// What a key may do.
#[derive(Clone)]
pub struct KeyGrant {
    pub permissions: Permissions,
    /// Gateway keys (`bucket/key`) it may touch start with this.
    pub prefix: String,
}

impl KeyGrant {
    /// May this key do `need` on the gateway key `key`?
    pub fn allows(&self, need: Permission, key: &str) -> bool {
        self.permissions.allows(need) && key.starts_with(&self.prefix)
    }
}

struct Entry {
    secret: String,
    grant: KeyGrant,
}

struct Table {
    keys: HashMap<String, Entry>,
    read_at: Option<Instant>,
    miss_read_at: Option<Instant>,
}

/// The key cache; `S3Auth` for s3s.
#[derive(Clone)]
pub struct KeyCache {
    backend: Backend,
    seal: Arc<SealKey>,
    table: Arc<Mutex<Table>>,
    /// One refresh at a time.
    refreshing: Arc<tokio::sync::Mutex<()>>,
}

impl KeyCache {
    pub fn new(backend: Backend, seal: Arc<SealKey>) -> Self {
        KeyCache {
            backend,
            seal,
            table: Arc::new(Mutex::new(Table {
                keys: HashMap::new(),
                read_at: None,
                miss_read_at: None,
            })),
            refreshing: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A poisoned lock only means a panic elsewhere mid-update; the
        // table is still a valid cache.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads every key through the gateway and opens the sealed secrets.
    pub async fn refresh(&self) -> Result<usize, crate::Error> {
        let _one = self.refreshing.lock().await;
        let listed = self
            .backend
            .run(|gw| async move { gw.list_keys().await })
            .await
            .map_err(|e| crate::Error::Gateway(e.to_string()))?
            .map_err(|e| crate::Error::Gateway(e.to_string()))?;
        let mut keys = HashMap::new();
        let mut unopened = 0usize;
        for k in listed {
            if k.revoked || k.sealed_secret.is_empty() {
                continue;
            }
            let Ok(permissions) = Permissions::parse(&k.permissions) else {
                continue;
            };
            match self.seal.open(&k.key_id, &k.sealed_secret) {
                Ok(secret) => {
                    keys.insert(
                        k.key_id,
                        Entry {
                            secret,
                            grant: KeyGrant {
                                permissions,
                                prefix: k.prefix,
                            },
                        },
                    );
                }
                Err(_) => unopened += 1,
            }
        }
        if unopened > 0 {
            tracing::warn!(
                keys = unopened,
                "sealed secrets that do not open with this seal key (another cluster's key?); those keys cannot sign S3 requests"
            );
        }
        let n = keys.len();
        let mut t = self.lock();
        t.keys = keys;
        t.read_at = Some(Instant::now());
        Ok(n)
    }

    /// The grant of a key id the signature check accepted.
    pub fn grant(&self, key_id: &str) -> Option<KeyGrant> {
        self.lock().keys.get(key_id).map(|e| e.grant.clone())
    }

    fn lookup(&self, key_id: &str) -> Option<String> {
        self.lock().keys.get(key_id).map(|e| e.secret.clone())
    }

    async fn secret_of(&self, key_id: &str) -> Option<String> {
        let (stale, may_miss) = {
            let t = self.lock();
            let now = Instant::now();
            (
                t.read_at
                    .is_none_or(|at| now.duration_since(at) >= KEYS_REFRESH),
                t.miss_read_at
                    .is_none_or(|at| now.duration_since(at) >= KEYS_MISS_REFRESH_MIN),
            )
        };
        if stale {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "reading the access keys failed; using the ones read before");
            }
        }
        if let Some(s) = self.lookup(key_id) {
            return Some(s);
        }
        if may_miss && !stale {
            self.lock().miss_read_at = Some(Instant::now());
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "reading the access keys failed");
            }
            return self.lookup(key_id);
        }
        None
    }
}

#[async_trait::async_trait]
impl S3Auth for KeyCache {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if tessera_auth::keys::check_key_id(access_key).is_err() {
            return Err(s3_error!(
                InvalidAccessKeyId,
                "not a Tessera access key id (TK followed by 20 hex digits)"
            ));
        }
        match self.secret_of(access_key).await {
            Some(s) => Ok(SecretKey::from(s)),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "unknown or revoked access key, or one made without S3 access (made by a gateway without --seal-key)"
            )),
        }
    }
}
