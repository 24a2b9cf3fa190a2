//! The client's address: the peer of the connection, or, when that peer is a trusted reverse
//! proxy or load balancer (`server.trusted_proxies`), the address it reports in
//! `X-Forwarded-For`. Authentication failures are reported and throttled by it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

/// The address of the client that made a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The networks of the reverse proxies whose `X-Forwarded-For` is believed (from the state).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Arc<Vec<IpNet>>);

/// The client behind `peer`. `X-Forwarded-For` lists the addresses a request passed, the
/// client first; each proxy appends the address it received from. Read from the right, every
/// address that is a trusted proxy is skipped, and the first that is not is the client (so a
/// client cannot choose its address by sending the header itself). An entry that is not an
/// address ends the walk at the last trusted hop.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port or in brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse().ok())
        })
}

impl<S> FromRequestParts<S> for ClientAddr
where
    TrustedProxies: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Every connection carries its peer (see `server`); a request built without one (an
        // in-process call) counts as unspecified.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        let TrustedProxies(trusted) = TrustedProxies::from_ref(state);
        Ok(Self(client_addr(peer, &parts.headers, &trusted)))
    }
}

/// What a client is counted as: an IPv4 address, or the /64 of an IPv6 one (one host usually
/// holds a whole /64, so counting single addresses would not count it at all).
pub fn host_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_trusted_proxies_may_name_the_client() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let h = headers(&["203.0.113.7, 10.1.1.1"]);
        // The direct peer is not a proxy: the header is the client's own words.
        assert_eq!(
            client_addr(ip("198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
        // Through two trusted hops.
        assert_eq!(client_addr(ip("10.2.2.2"), &h, &trusted), ip("203.0.113.7"));
        // A client that forges an entry left of itself gets its real address.
        let forged = headers(&["1.2.3.4", "203.0.113.7"]);
        assert_eq!(
            client_addr(ip("10.2.2.2"), &forged, &trusted),
            ip("203.0.113.7")
        );
        // Ports and brackets; garbage stops the walk at the last trusted hop.
        assert_eq!(
            client_addr(ip("10.2.2.2"), &headers(&["[2001:db8::1]:443"]), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_addr(ip("10.2.2.2"), &headers(&["unknown"]), &trusted),
            ip("10.2.2.2")
        );
        assert_eq!(
            client_addr(ip("10.2.2.2"), &HeaderMap::new(), &trusted),
            ip("10.2.2.2")
        );
        assert_eq!(client_addr(ip("10.2.2.2"), &h, &[]), ip("10.2.2.2"));
    }
}
