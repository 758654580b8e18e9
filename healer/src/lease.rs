//! Leadership: the `healer` lease in metad.
//!
//! Invariants:
//! - this healer believes it leads only until `sent + ttl - margin`, where
//!   `sent` is when it sent the grant or renewal that metad answered (its
//!   own monotonic clock): metad cannot grant the lease to another holder
//!   before `sent + ttl` by its clock, so with a drift below the margin
//!   the old leader has stopped before a new one starts;
//! - a lost renewal (refused, or unanswered past the deadline) ends the
//!   leadership; the epoch of a new grant is always larger, and [`crate::fence`]
//!   uses it to refuse anything the old epoch still tries to write.

use crate::error::{Error, Result};
use crate::limits::*;
use std::cell::Cell;
use std::time::Instant;
use tessera_gateway::bridge::MetaBridge;

pub struct Leadership {
    bridge: MetaBridge,
    holder: Vec<u8>,
    epoch: Cell<u64>,
    deadline: Cell<Option<Instant>>,
}

impl Leadership {
    pub fn new(bridge: MetaBridge, holder: &str) -> Self {
        Leadership {
            bridge,
            holder: holder.as_bytes().to_vec(),
            epoch: Cell::new(0),
            deadline: Cell::new(None),
        }
    }

    /// Whether this healer may work now.
    pub fn valid(&self) -> bool {
        self.deadline.get().is_some_and(|d| Instant::now() < d)
    }

    /// The epoch of the current (or last) grant.
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Fails with `Fenced` unless this healer may work now.
    pub fn check(&self) -> Result<()> {
        if self.valid() {
            Ok(())
        } else {
            Err(Error::Fenced(format!(
                "the healer lease (epoch {}) is no longer held",
                self.epoch.get()
            )))
        }
    }

    fn deadline_from(sent: Instant) -> Instant {
        sent + LEASE_TTL.saturating_sub(LEASE_SAFETY_MARGIN)
    }

    /// Asks for the lease; true when it was granted (or is already ours).
    pub async fn try_acquire(&self) -> Result<bool> {
        let sent = Instant::now();
        let holder = self.holder.clone();
        let (granted, lease) = self
            .bridge
            .call("taking the healer lease", move |c| async move {
                c.acquire_lease(LEASE_NAME, &holder, LEASE_TTL).await
            })
            .await?;
        if granted {
            self.epoch.set(lease.epoch);
            self.deadline.set(Some(Self::deadline_from(sent)));
        }
        Ok(granted)
    }

    /// Extends the lease; false when it is lost (the leader must stop).
    pub async fn renew(&self) -> bool {
        if !self.valid() {
            return false;
        }
        let sent = Instant::now();
        let holder = self.holder.clone();
        let epoch = self.epoch.get();
        let r = self
            .bridge
            .call("renewing the healer lease", move |c| async move {
                c.renew_lease(LEASE_NAME, &holder, epoch, LEASE_TTL).await
            })
            .await;
        match r {
            Ok((true, _)) => {
                self.deadline.set(Some(Self::deadline_from(sent)));
                true
            }
            Ok((false, l)) => {
                tracing::warn!(epoch, holder = %String::from_utf8_lossy(&l.holder), "healer lease lost to another holder");
                self.deadline.set(None);
                false
            }
            Err(e) => {
                // Keep the old deadline: the next renewal may still land.
                tracing::warn!(error = %e, "renewing the healer lease failed");
                self.valid()
            }
        }
    }

    /// Gives the lease up (on shutdown), so that a standby starts at once.
    pub async fn release(&self) {
        if self.deadline.take().is_none() {
            return;
        }
        let holder = self.holder.clone();
        let epoch = self.epoch.get();
        let _ = self
            .bridge
            .call("releasing the healer lease", move |c| async move {
                c.release_lease(LEASE_NAME, &holder, epoch).await
            })
            .await;
    }
}
