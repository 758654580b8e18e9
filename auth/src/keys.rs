//! Access keys: what is stored, how a secret is checked, what a key allows.
//!
//! A key is an id (`TK` + 20 hex digits, public, shown in lists and logs)
//! and a secret (64 hex digits = 256 random bits, shown once when made,
//! never stored, never logged). metad stores, at [`record_key`], the
//! key's [`KeyRecord`]: a random salt and HMAC-SHA256(salt, secret), the
//! permissions, an optional object-key prefix, and whether it is revoked.
//! A presented secret is checked by recomputing the HMAC and comparing in
//! constant time. With 256-bit random secrets no dictionary attack on the
//! hash is possible, so a fast MAC (not a password hash) is the right cost.
//!
//! Invariants: [`Credentials`] never prints its secret (Debug redacts it);
//! every length is bounded before anything is hashed or stored.

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Length of a key id (`TK` + 20 hex digits).
pub const KEY_ID_LEN_BYTES: usize = 22;
/// Length of a secret (64 hex digits).
pub const SECRET_LEN_BYTES: usize = 64;
/// Longest object-key prefix a key may be limited to.
pub const PREFIX_LEN_MAX_BYTES: usize = 1024;
/// Longest human name of a key.
pub const KEY_NAME_LEN_MAX_BYTES: usize = 128;
/// Most keys one cluster lists in one answer.
pub const KEYS_LIST_MAX: usize = 10_000;
/// Where key records live in metad.
pub const KEY_RECORD_PREFIX: &str = "auth/key/";

/// The metad key of a key record.
pub fn record_key(key_id: &str) -> String {
    format!("{KEY_RECORD_PREFIX}{key_id}")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key id {0:?} is not a Tessera key id (TK followed by 20 hex digits)")]
    BadKeyId(String),
    #[error("the secret is not a Tessera secret (64 hex digits); check the copy")]
    BadSecret,
    #[error("permissions {0:?} are not a combination of r (read), w (write), a (admin)")]
    BadPermissions(String),
    #[error("prefix is {0} bytes; at most {PREFIX_LEN_MAX_BYTES}")]
    PrefixTooLong(usize),
    #[error("name is {0} bytes; at most {KEY_NAME_LEN_MAX_BYTES}")]
    NameTooLong(usize),
    #[error("stored key record is damaged: {0}")]
    BadRecord(String),
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Permissions {
    pub read: bool,
    pub write: bool,
    pub admin: bool,
}

impl Permissions {
    pub const ALL: Permissions = Permissions {
        read: true,
        write: true,
        admin: true,
    };

    /// Parses `r`, `w`, `a` in any order, each at most once, at least one.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let mut p = Permissions::default();
        for c in s.chars() {
            let slot = match c {
                'r' => &mut p.read,
                'w' => &mut p.write,
                'a' => &mut p.admin,
                _ => return Err(KeyError::BadPermissions(s.into())),
            };
            if *slot {
                return Err(KeyError::BadPermissions(s.into()));
            }
            *slot = true;
        }
        if p == Permissions::default() {
            return Err(KeyError::BadPermissions(s.into()));
        }
        Ok(p)
    }

    pub fn allows(&self, need: Permission) -> bool {
        match need {
            Permission::Read => self.read,
            Permission::Write => self.write,
            Permission::Admin => self.admin,
        }
    }
}

impl std::fmt::Display for Permissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (on, c) in [(self.read, 'r'), (self.write, 'w'), (self.admin, 'a')] {
            if on {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl From<Permissions> for String {
    fn from(p: Permissions) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for Permissions {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        Permissions::parse(&s)
    }
}

/// One permission a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Write,
    Admin,
}

impl Permission {
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Admin => "admin",
        }
    }
}

/// What metad stores for a key (JSON). No secret: only its salted HMAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// 16 random bytes, hex.
    pub salt: String,
    /// HMAC-SHA256(salt, secret), hex.
    pub hash: String,
    pub permissions: Permissions,
    /// Object keys this key may touch start with this ("" = all).
    pub prefix: String,
    pub created_unix_millis: u64,
    /// Set when revoked; a revoked key authenticates nothing.
    #[serde(default)]
    pub revoked_unix_millis: Option<u64>,
    /// The secret sealed with the cluster's seal key ([`crate::seal`]),
    /// when the key was made by a gateway that had one: what lets the S3
    /// front check SigV4 signatures. Absent: the key has no S3 access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_secret: Option<String>,
}

/// An id and its secret, as a client holds them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lower- or upper-case hex; None unless `s` is whole bytes
/// of hex digits.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Checks the shape of a key id (before any lookup).
pub fn check_key_id(id: &str) -> Result<(), KeyError> {
    let ok = id.len() == KEY_ID_LEN_BYTES
        && id.starts_with("TK")
        && id[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        // Never echo a long or odd input back in full.
        let shown: String = id.chars().take(KEY_ID_LEN_BYTES + 2).collect();
        Err(KeyError::BadKeyId(shown))
    }
}

fn mac(salt: &[u8], secret: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length: new_from_slice cannot fail here.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(salt).expect("HMAC takes any key length");
    m.update(secret.as_bytes());
    m
}

/// A new key: its record (for metad) and its credentials (shown once).
pub fn new_key(
    name: &str,
    permissions: Permissions,
    prefix: &str,
    now_unix_millis: u64,
    seal: Option<&crate::seal::SealKey>,
) -> Result<(KeyRecord, Credentials), KeyError> {
    if prefix.len() > PREFIX_LEN_MAX_BYTES {
        return Err(KeyError::PrefixTooLong(prefix.len()));
    }
    if name.len() > KEY_NAME_LEN_MAX_BYTES {
        return Err(KeyError::NameTooLong(name.len()));
    }
    let mut rng = rand::thread_rng();
    let mut id = [0u8; 10];
    let mut secret = [0u8; 32];
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    rng.fill_bytes(&mut salt);
    let key_id = format!("TK{}", hex(&id).to_uppercase());
    let secret = hex(&secret);
    let hash = hex(&mac(&salt, &secret).finalize().into_bytes());
    let sealed_secret = match seal {
        Some(k) => Some(
            k.seal(&key_id, &secret)
                .map_err(|e| KeyError::BadRecord(e.to_string()))?,
        ),
        None => None,
    };
    Ok((
        KeyRecord {
            id: key_id.clone(),
            name: name.into(),
            salt: hex(&salt),
            hash,
            permissions,
            prefix: prefix.into(),
            created_unix_millis: now_unix_millis,
            revoked_unix_millis: None,
            sealed_secret,
        },
        Credentials { key_id, secret },
    ))
}

/// Why a presented key was refused (the reason is counted; the message
/// to the client never says whether the id exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    UnknownKey,
    WrongSecret,
    Revoked,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::UnknownKey => "unknown_key",
            Refusal::WrongSecret => "wrong_secret",
            Refusal::Revoked => "revoked",
        }
    }
}

impl KeyRecord {
    /// Parses a stored record (JSON).
    pub fn from_json(bytes: &[u8]) -> Result<Self, KeyError> {
        serde_json::from_slice(bytes).map_err(|e| KeyError::BadRecord(e.to_string()))
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Strings, integers and an enum of letters: serializing cannot fail.
        serde_json::to_vec(self).expect("a key record serializes")
    }

    /// Checks `secret` against the stored hash in constant time.
    pub fn verify(&self, secret: &str) -> Result<(), Refusal> {
        if secret.len() != SECRET_LEN_BYTES || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refusal::Malformed);
        }
        let (Some(salt), Some(hash)) = (unhex(&self.salt), unhex(&self.hash)) else {
            return Err(Refusal::WrongSecret);
        };
        mac(&salt, secret)
            .verify_slice(&hash)
            .map_err(|_| Refusal::WrongSecret)?;
        if self.revoked_unix_millis.is_some() {
            return Err(Refusal::Revoked);
        }
        Ok(())
    }
}

/// Checks credentials against the record found for their id (`None` if
/// there is none): the one decision every service makes the same way.
pub fn authenticate(creds: &Credentials, found: Option<&KeyRecord>) -> Result<Grant, Refusal> {
    check_key_id(&creds.key_id).map_err(|_| Refusal::Malformed)?;
    let rec = found.ok_or(Refusal::UnknownKey)?;
    if rec.id != creds.key_id {
        return Err(Refusal::UnknownKey);
    }
    rec.verify(&creds.secret)?;
    Ok(Grant {
        key_id: rec.id.clone(),
        permissions: rec.permissions,
        prefix: rec.prefix.clone(),
    })
}

/// What an authenticated connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key_id: String,
    pub permissions: Permissions,
    pub prefix: String,
}

impl Grant {
    /// A grant that allows everything (a node, or an insecure cluster).
    pub fn everything(who: &str) -> Self {
        Grant {
            key_id: who.into(),
            permissions: Permissions::ALL,
            prefix: String::new(),
        }
    }

    /// May this grant do `need` to object `key`?
    pub fn check(&self, need: Permission, key: &str) -> Result<(), String> {
        if !self.permissions.allows(need) {
            return Err(format!(
                "key {} has permissions {:?} and this call needs {}; use a key with {} \
                 (`tessera key create --permissions ...`)",
                self.key_id,
                self.permissions.to_string(),
                need.name(),
                need.name()
            ));
        }
        if !key.starts_with(&self.prefix) {
            return Err(format!(
                "key {} may only touch object keys starting with {:?}",
                self.key_id, self.prefix
            ));
        }
        Ok(())
    }

    /// The prefix a list under `asked` may cover: `asked` if it lies inside
    /// the grant's prefix, the grant's prefix if `asked` is shorter and
    /// leads to it, else a refusal.
    pub fn list_prefix(&self, asked: &str) -> Result<String, String> {
        if !self.permissions.read {
            return Err(format!(
                "key {} has permissions {:?} and listing needs read",
                self.key_id,
                self.permissions.to_string()
            ));
        }
        if asked.starts_with(&self.prefix) {
            Ok(asked.to_string())
        } else if self.prefix.starts_with(asked) {
            Ok(self.prefix.clone())
        } else {
            Err(format!(
                "key {} may only list object keys starting with {:?}",
                self.key_id, self.prefix
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_new_key_verifies_and_nothing_else_does() {
        let (rec, creds) = new_key("t", Permissions::ALL, "", 1, None).unwrap();
        check_key_id(&creds.key_id).unwrap();
        assert_eq!(creds.secret.len(), SECRET_LEN_BYTES);
        assert!(authenticate(&creds, Some(&rec)).is_ok());
        let json = rec.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(!text.contains(&creds.secret), "secret stored in the record");
        assert_eq!(KeyRecord::from_json(&json).unwrap(), rec);
        assert!(!format!("{creds:?}").contains(&creds.secret));
        let mut revoked = rec.clone();
        revoked.revoked_unix_millis = Some(2);
        assert_eq!(authenticate(&creds, Some(&revoked)), Err(Refusal::Revoked));
        assert_eq!(authenticate(&creds, None), Err(Refusal::UnknownKey));
    }

    proptest! {
        #[test]
        fn any_other_secret_is_refused(flip in 0usize..SECRET_LEN_BYTES, junk in "[ -~]{0,80}") {
            let (rec, creds) = new_key("t", Permissions::ALL, "", 1, None).unwrap();
            let mut wrong = creds.clone();
            let mut b = wrong.secret.into_bytes();
            b[flip] = if b[flip] == b'0' { b'1' } else { b'0' };
            wrong.secret = String::from_utf8(b).unwrap();
            prop_assert!(authenticate(&wrong, Some(&rec)).is_err());
            let junk_creds = Credentials { key_id: creds.key_id.clone(), secret: junk };
            prop_assert!(authenticate(&junk_creds, Some(&rec)).is_err());
        }

        #[test]
        fn a_grant_never_reaches_outside_its_prefix(
            prefix in "[ab/]{0,4}", key in "[ab/]{0,6}", perms in "(r|w|a|rw|ra|wa|rwa)"
        ) {
            let g = Grant { key_id: "TK".into(), permissions: Permissions::parse(&perms).unwrap(), prefix: prefix.clone() };
            for need in [Permission::Read, Permission::Write, Permission::Admin] {
                let ok = g.check(need, &key).is_ok();
                prop_assert_eq!(ok, g.permissions.allows(need) && key.starts_with(&prefix));
            }
            if let Ok(p) = g.list_prefix(&key) {
                prop_assert!(g.permissions.read);
                prop_assert!(p.starts_with(&prefix), "list prefix {:?} outside {:?}", p, prefix);
                prop_assert!(p.starts_with(&key) , "list prefix {:?} wider than asked {:?}", p, key);
            }
        }
    }

    #[test]
    fn permissions_parse_strictly() {
        assert_eq!(Permissions::parse("rwa").unwrap(), Permissions::ALL);
        assert_eq!(Permissions::parse("ar").unwrap().to_string(), "ra");
        for bad in ["", "x", "rr", "r w"] {
            assert!(Permissions::parse(bad).is_err(), "{bad:?}");
        }
    }
}
