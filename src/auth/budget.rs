//! The memory the webhook spends on bodies whose sender is not authenticated yet (an `hmac`
//! integration must read the body to check its signature, and undo its compression when it was
//! signed before being compressed); the CDS Hooks services keep a budget of their own, of the
//! same kind, for callers that authenticate with nothing (`cds_hooks.auth` none).
//!
//! Bytes count as they arrive or are decoded, never as declared. All such bodies together hold
//! at most the budget, and one client (an IPv4 address, or an IPv6 /64) at most its share, so a
//! single host cannot take the whole budget. A body the budget cannot hold is refused with 503
//! and `Retry-After`. What is held is released when the request is authenticated or refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::source::host_network;

/// Refused for lack of budget: answered 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many unauthenticated uploads are in progress; retry later")]
pub struct Spent;

/// The budget; see the module documentation.
pub struct Budget {
    capacity: usize,
    total: Arc<Semaphore>,
    per_client: usize,
    held_by: Mutex<HashMap<IpAddr, usize>>,
}

impl Budget {
    /// `capacity` bytes in all, `per_client` bytes for any one client.
    pub fn new(capacity: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            total: Arc::new(Semaphore::new(capacity)),
            per_client: per_client.min(capacity),
            held_by: Mutex::new(HashMap::new()),
        })
    }

    /// Bytes held now, all clients together.
    pub fn held(&self) -> usize {
        self.capacity - self.total.available_permits()
    }

    /// An empty account for one request of `client` (see [`Held::take`]).
    pub fn account(self: &Arc<Self>, client: IpAddr) -> Held {
        Held {
            budget: Arc::clone(self),
            client: host_network(client),
            bytes: 0,
            permit: None,
        }
    }
}

/// What one request holds of the budget; given back when dropped.
pub struct Held {
    budget: Arc<Budget>,
    client: IpAddr,
    bytes: usize,
    permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// Takes `bytes` more, or refuses (503) when the client's share or the budget cannot hold
    /// them. Never waits.
    pub fn take(&mut self, bytes: usize) -> Result<(), Spent> {
        if bytes == 0 {
            return Ok(());
        }
        let budget = &self.budget;
        {
            let mut held_by = budget.held_by.lock().unwrap_or_else(|e| e.into_inner());
            let client = held_by.entry(self.client).or_insert(0);
            if *client + bytes > budget.per_client {
                if *client == 0 {
                    held_by.remove(&self.client);
                }
                return Err(Spent);
            }
            *client += bytes;
        }
        let permits = u32::try_from(bytes).ok();
        match permits.and_then(|n| Arc::clone(&budget.total).try_acquire_many_owned(n).ok()) {
            Some(more) => {
                match &mut self.permit {
                    Some(permit) => permit.merge(more),
                    None => self.permit = Some(more),
                }
                self.bytes += bytes;
                Ok(())
            }
            None => {
                self.release(bytes);
                Err(Spent)
            }
        }
    }

    fn release(&self, bytes: usize) {
        let mut held_by = self
            .budget
            .held_by
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(client) = held_by.get_mut(&self.client) {
            *client = client.saturating_sub(bytes);
            if *client == 0 {
                held_by.remove(&self.client);
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_takes_at_most_its_share_and_everything_comes_back() {
        let budget = Budget::new(100, 60);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut first = budget.account(a);
        first.take(50).unwrap();
        let mut second = budget.account(a);
        assert!(second.take(20).is_err(), "over a's share of 60");
        second.take(10).unwrap();
        let mut other = budget.account(b);
        assert!(other.take(41).is_err(), "over the budget of 100");
        other.take(40).unwrap();
        assert_eq!(budget.held(), 100);
        drop((first, second, other));
        assert_eq!(budget.held(), 0);
        assert!(budget.held_by.lock().unwrap().is_empty());
        // An IPv6 host is one client across its /64.
        let mut v6 = budget.account("2001:db8::1".parse().unwrap());
        let mut same = budget.account("2001:db8::2".parse().unwrap());
        v6.take(60).unwrap();
        assert!(same.take(1).is_err());
    }
}
