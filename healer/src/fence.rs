//! Fencing: every metadata change a leader makes is conditional on its
//! lease epoch, atomically.
//!
//! Each metadata group holds a fence key (`healer/fence/{tN}`, the tag
//! chosen so that the key hashes to that group). A new leader writes its
//! epoch into every group's fence key, refusing to go on if one already
//! holds a larger epoch. Each change is then one metad batch of the change
//! itself and a compare-and-set of the fence key of the change's group on
//! the version the leader last wrote: once a newer leader has written its
//! epoch there, the old leader's batches fail as a whole and nothing of
//! them is applied.
//!
//! Invariant: commits of one group are serialised (each moves the fence
//! key's version), so a leader's own commits never fence each other.

use crate::error::{Error, Result};
use crate::limits::*;
use futures::lock::Mutex;
use tessera_gateway::bridge::MetaBridge;
use tessera_metad::client::{Consistency, WriteSpec};
use tessera_metad::keys::group_of;

/// The fence key of `group` among `groups`.
pub fn fence_key(group: u32, groups: u32) -> Result<Vec<u8>> {
    for n in 0..FENCE_TAG_TRIES_MAX {
        let key = format!("{FENCE_KEY_PREFIX}{{t{n}}}").into_bytes();
        if group_of(&key, groups) == group {
            return Ok(key);
        }
    }
    Err(Error::Internal(format!(
        "no fence tag of {FENCE_TAG_TRIES_MAX} hashes to group {group} of {groups}"
    )))
}

fn epoch_of(value: &[u8]) -> u64 {
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

pub struct Fence {
    bridge: MetaBridge,
    epoch: u64,
    keys: Vec<Vec<u8>>,
    /// Per group, the fence key's version after this leader's last write.
    versions: Vec<Mutex<u64>>,
}

impl Fence {
    /// Writes `epoch` into every group's fence key. `Fenced` when a larger
    /// epoch is already there.
    pub async fn install(bridge: MetaBridge, epoch: u64) -> Result<Fence> {
        let groups = bridge.groups();
        let mut keys = Vec::with_capacity(groups as usize);
        let mut versions = Vec::with_capacity(groups as usize);
        for g in 0..groups {
            let key = fence_key(g, groups)?;
            let v = Self::raise(&bridge, &key, epoch).await?;
            keys.push(key);
            versions.push(Mutex::new(v));
        }
        Ok(Fence {
            bridge,
            epoch,
            keys,
            versions,
        })
    }

    /// Sets `key` to `epoch` unless it holds a larger one; its new version.
    async fn raise(bridge: &MetaBridge, key: &[u8], epoch: u64) -> Result<u64> {
        for _ in 0..COMMIT_RETRIES_MAX {
            let k = key.to_vec();
            let cur = bridge
                .call("reading a fence key", move |c| async move {
                    c.get(&k, Consistency::Linearizable).await
                })
                .await?;
            let (held, version) = cur.map_or((0, 0), |v| (epoch_of(&v.value), v.version));
            if held > epoch {
                return Err(Error::Fenced(format!(
                    "a newer healer (epoch {held}) has taken over from epoch {epoch}"
                )));
            }
            let k = key.to_vec();
            let r = bridge
                .call("writing a fence key", move |c| async move {
                    c.put_if(&k, &epoch.to_be_bytes(), version).await
                })
                .await;
            match r {
                Ok(v) => return Ok(v),
                Err(tessera_gateway::Error::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable(
            "the fence key kept changing under this healer".into(),
        ))
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Writes `value` under `key` (`None` deletes) if the key's version is
    /// `expected` (`None`: any) and this leader's epoch is still the newest.
    /// `Changed` when the key moved on, `Fenced` when the leader did.
    /// Returns the key's new version.
    pub async fn commit(
        &self,
        key: &[u8],
        value: Option<Vec<u8>>,
        expected: Option<u64>,
    ) -> Result<u64> {
        let g = group_of(key, self.bridge.groups()) as usize;
        let (Some(fkey), Some(lock)) = (self.keys.get(g), self.versions.get(g)) else {
            return Err(Error::Internal(format!("no fence key for group {g}")));
        };
        let mut fv = lock.lock().await;
        let ops = vec![
            WriteSpec {
                key: key.to_vec(),
                expected,
                value,
            },
            WriteSpec {
                key: fkey.clone(),
                expected: Some(*fv),
                value: Some(self.epoch.to_be_bytes().to_vec()),
            },
        ];
        let r = self
            .bridge
            .call("committing a repair", move |c| async move {
                c.batch(&ops).await
            })
            .await;
        match r {
            Ok(v) => {
                let (Some(obj), Some(fence)) = (v.first(), v.get(1)) else {
                    return Err(Error::Internal(
                        "metad answered a batch of two with fewer results".into(),
                    ));
                };
                *fv = fence.0;
                Ok(obj.0)
            }
            Err(tessera_gateway::Error::Conflict(m)) => {
                // Which precondition failed: the fence's or the key's?
                let k = fkey.clone();
                let cur = self
                    .bridge
                    .call("reading a fence key", move |c| async move {
                        c.get(&k, Consistency::Linearizable).await
                    })
                    .await?;
                match cur {
                    Some(v) if v.version == *fv => Err(Error::Changed(m)),
                    Some(v) if epoch_of(&v.value) == self.epoch => {
                        // Our own write whose answer was lost: adopt it.
                        *fv = v.version;
                        Err(Error::Changed(m))
                    }
                    Some(v) => Err(Error::Fenced(format!(
                        "epoch {} is fenced out by epoch {}",
                        self.epoch,
                        epoch_of(&v.value)
                    ))),
                    None => Err(Error::Fenced(format!(
                        "the fence key of group {g} is gone; epoch {} stops",
                        self.epoch
                    ))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}
