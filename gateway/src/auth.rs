//! Access keys at the gateway: which permission each `Gateway` method
//! needs, checking a presented key against its record in metad, and the
//! key administration calls (create, list, revoke).
//!
//! Invariants: a connection of a TLS gateway can call nothing but
//! `authenticate` until a key verified; a verified key is re-checked at
//! least every [`SESSION_RECHECK`] (a revoked key stops working on open
//! connections within that); refusals are counted by reason
//! (`tessera_gateway_auth_refusals_total`); no secret is logged or put in
//! an error.

use crate::bridge::MetaBridge;
use crate::error::{Error, Result};
use std::rc::Rc;
use std::time::Duration;
use tessera_auth::keys::{self, KeyRecord, Permission, Permissions};
use tessera_auth::{Check, Credentials, Grant, Session};
use tessera_metad::client::Consistency;

/// An authenticated connection re-checks its key this often.
pub const SESSION_RECHECK: Duration = Duration::from_secs(10);

/// Method ordinals of the `Gateway` interface (schema/capnp/gateway.capnp).
mod method {
    pub const PUT: u16 = 0;
    pub const PUT_STREAM: u16 = 1;
    pub const GET: u16 = 2;
    pub const GET_STREAM: u16 = 3;
    pub const STAT: u16 = 4;
    pub const DELETE: u16 = 5;
    pub const LIST: u16 = 6;
    pub const STATUS: u16 = 7;
    pub const PUT_DOC: u16 = 8;
    pub const GET_DOC: u16 = 9;
    pub const AUTHENTICATE: u16 = 10;
    pub const CREATE_KEY: u16 = 11;
    pub const LIST_KEYS: u16 = 12;
    pub const REVOKE_KEY: u16 = 13;
    pub const SCRUB: u16 = 14;
}

/// Method names by ordinal, for request spans.
pub const NAMES: tessera_auth::Names = tessera_auth::Names {
    service: "gateway",
    hot_path: false,
    methods: &[
        "put",
        "put_stream",
        "get",
        "get_stream",
        "stat",
        "delete",
        "list",
        "status",
        "put_doc",
        "get_doc",
        "authenticate",
        "create_key",
        "list_keys",
        "revoke_key",
        "scrub",
    ],
};

/// The gateway's bounds on what clients hold (see `tessera_auth::gate`):
/// one value shared by every connection.
pub fn bounds() -> Rc<tessera_auth::Bounds> {
    use crate::limits::*;
    fn sleep(d: Duration) -> futures::future::LocalBoxFuture<'static, ()> {
        Box::pin(glommio::timer::sleep(d))
    }
    Rc::new(tessera_auth::Bounds {
        calls_per_connection: CALLS_PER_CONNECTION_MAX,
        bytes_per_connection: REQUEST_BYTES_PER_CONNECTION_MAX,
        total: tessera_auth::Budget::new(REQUEST_BYTES_TOTAL_MAX),
        timeout: Some((REQUEST_TIMEOUT, sleep)),
        // A download streams as fast as the client reads it.
        untimed: &[method::GET_STREAM],
    })
}

/// The permission a `Gateway` method needs (`None`: anyone may call it).
pub fn needed(method: u16) -> Option<Permission> {
    use method::*;
    match method {
        AUTHENTICATE => None,
        GET | GET_STREAM | STAT | LIST | GET_DOC => Some(Permission::Read),
        PUT | PUT_STREAM | DELETE | PUT_DOC => Some(Permission::Write),
        STATUS | CREATE_KEY | LIST_KEYS | REVOKE_KEY | SCRUB => Some(Permission::Admin),
        // A method this build does not know: only an admin reaches the
        // service's own "unimplemented" answer.
        _ => Some(Permission::Admin),
    }
}

/// Counts a refusal.
pub fn refused(reason: &'static str) {
    tessera_metrics::global()
        .counter(
            "tessera_gateway_auth_refusals_total",
            "Authentications and calls refused, by reason.",
            &[("reason", reason)],
        )
        .inc();
}

/// The gate policy of one connection.
pub fn policy(session: Rc<Session>, bridge: MetaBridge) -> impl Fn(u64, u16) -> Check + 'static {
    let iface =
        <tessera_schema::gateway_capnp::gateway::Client as capnp::traits::HasTypeId>::TYPE_ID;
    move |interface, m| {
        if interface != iface || session.node {
            return Check::Allow;
        }
        let Some(need) = needed(m) else {
            return Check::Allow;
        };
        let Some((grant, checked)) = session.current() else {
            refused("unauthenticated");
            return Check::Refuse(
                "unauthenticated: call authenticate with an access key first (the client \
                 library's `credentials`, the CLI's cluster file or TESSERA_KEY_ID and \
                 TESSERA_SECRET)"
                    .into(),
            );
        };
        if !grant.permissions.allows(need) {
            refused("permission");
            return Check::Refuse(format!(
                "permission denied: key {} has permissions {:?}; this call needs {}",
                grant.key_id,
                grant.permissions.to_string(),
                need.name()
            ));
        }
        if checked.elapsed() < SESSION_RECHECK {
            return Check::Allow;
        }
        // Claimed now: calls in the meantime ride on this one check (no
        // fetch per call), and an unreachable metad is asked again only
        // after another SESSION_RECHECK, not by every call.
        session.rechecked();
        let (session, bridge) = (session.clone(), bridge.clone());
        Check::After(Box::pin(async move {
            match fetch(&bridge, &grant.key_id).await {
                Ok(Some(r)) if r.revoked_unix_millis.is_none() => Ok(()),
                Ok(_) => {
                    session.revoke();
                    refused("revoked");
                    Err(format!(
                        "unauthenticated: access key {} was revoked; authenticate with another key",
                        grant.key_id
                    ))
                }
                // metad unreachable: keep serving on the last check rather
                // than fail every call; asked again after SESSION_RECHECK.
                Err(_) => Ok(()),
            }
        }))
    }
}

/// The stored record of `key_id`, if any.
pub async fn fetch(bridge: &MetaBridge, key_id: &str) -> Result<Option<KeyRecord>> {
    let key = keys::record_key(key_id);
    let found = bridge
        .call("reading an access key", move |c| async move {
            c.get(key.as_bytes(), Consistency::Linearizable).await
        })
        .await?;
    match found {
        None => Ok(None),
        Some(kv) => KeyRecord::from_json(&kv.value)
            .map(Some)
            .map_err(|e| Error::Internal(e.to_string())),
    }
}

/// Verifies `creds` and records the grant in `session`.
pub async fn authenticate(
    bridge: &MetaBridge,
    session: &Session,
    creds: &Credentials,
) -> Result<Grant> {
    let rec = if keys::check_key_id(&creds.key_id).is_ok() {
        fetch(bridge, &creds.key_id).await?
    } else {
        None
    };
    match keys::authenticate(creds, rec.as_ref()) {
        Ok(g) => {
            session.grant(g.clone());
            Ok(g)
        }
        Err(r) => {
            refused(r.name());
            tracing::info!(key_id = %creds.key_id.chars().take(32).collect::<String>(), reason = r.name(), "access key refused");
            Err(Error::Unauthenticated(format!(
                "access key {:?} was refused: unknown, wrong secret or revoked",
                creds.key_id.chars().take(32).collect::<String>()
            )))
        }
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Makes a key and stores its record; the credentials are returned once.
/// With a seal key the record also carries the sealed secret (S3 access).
pub async fn create(
    bridge: &MetaBridge,
    name: &str,
    permissions: &str,
    prefix: &str,
    seal: Option<&tessera_auth::SealKey>,
) -> Result<(KeyRecord, Credentials)> {
    let perms = Permissions::parse(permissions).map_err(|e| Error::Invalid(e.to_string()))?;
    let (rec, creds) = keys::new_key(name, perms, prefix, now_millis(), seal)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    store_new(bridge, &rec).await?;
    Ok((rec, creds))
}

/// Stores a new record (refusing to overwrite an existing id).
pub async fn store_new(bridge: &MetaBridge, rec: &KeyRecord) -> Result<()> {
    let key = keys::record_key(&rec.id);
    let body = rec.to_json();
    bridge
        .call("storing an access key", move |c| async move {
            c.put_if(key.as_bytes(), &body, 0).await
        })
        .await?;
    Ok(())
}

/// Every key record (revoked ones included), in id order.
pub async fn list(bridge: &MetaBridge) -> Result<Vec<KeyRecord>> {
    let items = bridge
        .call("listing access keys", |c| async move {
            c.list(
                keys::KEY_RECORD_PREFIX.as_bytes(),
                b"",
                keys::KEYS_LIST_MAX as u32,
            )
            .await
        })
        .await?;
    items
        .0
        .iter()
        .map(|(_, v)| KeyRecord::from_json(&v.value).map_err(|e| Error::Internal(e.to_string())))
        .collect()
}

/// Marks a key revoked (kept, so that its id is never reused and lists
/// show it); false if there is no such key.
pub async fn revoke(bridge: &MetaBridge, key_id: &str) -> Result<bool> {
    keys::check_key_id(key_id).map_err(|e| Error::Invalid(e.to_string()))?;
    let key = keys::record_key(key_id);
    let found = bridge
        .call("reading an access key", {
            let key = key.clone();
            move |c| async move { c.get(key.as_bytes(), Consistency::Linearizable).await }
        })
        .await?;
    let Some(kv) = found else { return Ok(false) };
    let mut rec = KeyRecord::from_json(&kv.value).map_err(|e| Error::Internal(e.to_string()))?;
    if rec.revoked_unix_millis.is_some() {
        return Ok(true);
    }
    rec.revoked_unix_millis = Some(now_millis());
    let body = rec.to_json();
    let version = kv.version;
    bridge
        .call("revoking an access key", move |c| async move {
            c.put_if(key.as_bytes(), &body, version).await
        })
        .await?;
    Ok(true)
}
