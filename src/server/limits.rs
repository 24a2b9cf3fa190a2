//! The listener's limits, and who counts as one client.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// The limits of the listener; see the module documentation.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// Peers not held to the per-client cap: the reverse proxies in front, whose connections
    /// carry many clients.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Open connections per client.
#[derive(Default)]
pub(super) struct PerClient(Mutex<HashMap<IpAddr, usize>>);

impl PerClient {
    /// Counts a connection of `client` unless it already has `max`.
    pub(super) fn admit(&self, client: IpAddr, max: usize) -> bool {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(client).or_insert(0);
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    pub(super) fn release(&self, client: IpAddr) {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&client);
            }
        }
    }
}

/// The connection cap that fits the process's descriptor limit. The soft limit is raised to
/// the hard one first (as Go's runtime does); `reserve` descriptors stay for the store, Ocean
/// and shed connections. Returns the cap and, when it had to be lowered, the limit that did it.
pub fn fit_connection_cap(wanted: usize, reserve: u64) -> (usize, Option<u64>) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the descriptor limit");
            return (wanted, None);
        }
    };
    let room = usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
    if wanted > room {
        (room.max(16), Some(limit))
    } else {
        (wanted, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::source::host_network;

    #[test]
    fn clients_are_counted_by_address_or_ipv6_slash_64() {
        let clients = PerClient::default();
        let a = host_network("2001:db8::1".parse().unwrap());
        let b = host_network("2001:db8::2".parse().unwrap());
        assert_eq!(a, b);
        assert!(clients.admit(a, 2) && clients.admit(b, 2));
        assert!(!clients.admit(a, 2));
        clients.release(a);
        assert!(clients.admit(b, 2));
        let mapped = host_network("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(mapped, "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
