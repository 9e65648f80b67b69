//! The client's address: the peer Envoy reports, or an address from `X-Forwarded-For` when the
//! configuration says how many proxies in front of Envoy are trusted.
//!
//! `xff_num_trusted_hops` means what it means on Envoy's connection manager with
//! `use_remote_address: true`: the client is the N-th address from the right of the
//! `X-Forwarded-For` Envoy received. Envoy appends the peer before filters run, so the filter
//! reads the (N+1)-th from the right of the header it sees. With N = 0 the peer is the client
//! and the header is not read at all. When the header has too few entries, or the chosen entry
//! is not a bare IP address, the peer stays the client: a malformed or short header never
//! yields a trusted address.

use crate::ipset::canonical;
use std::net::IpAddr;

/// Where the client address came from, for audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The connection's peer (`source.address`).
    Peer,
    /// `X-Forwarded-For`, past the trusted hops.
    ForwardedFor,
}

/// The client address for a request, or `None` when the peer is unknown. An unknown peer
/// means Envoy did not append it to `X-Forwarded-For` either (or took it from that header,
/// under `use_remote_address: false`), so no entry of the header can be trusted then.
pub fn client_ip<'a>(
    peer: Option<IpAddr>,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted_hops: u32,
) -> Option<(IpAddr, Origin)> {
    let peer = Some((canonical(peer?), Origin::Peer));
    if trusted_hops == 0 {
        return peer;
    }
    nth_from_right(forwarded_for, trusted_hops)
        .map(|ip| (canonical(ip), Origin::ForwardedFor))
        .or(peer)
}

/// The `n`-th entry from the right (0 = last) of all `X-Forwarded-For` lines taken as one
/// comma-separated list, if it is a bare IP address.
fn nth_from_right<'a>(lines: impl DoubleEndedIterator<Item = &'a str>, n: u32) -> Option<IpAddr> {
    // Bounded work: only the last n+1 entries are ever looked at, however long the header.
    let mut remaining = n;
    for line in lines.rev() {
        for entry in line.rsplit(',') {
            if remaining == 0 {
                return parse_entry(entry);
            }
            remaining -= 1;
        }
    }
    None
}

/// A bare IPv4 or IPv6 address with optional surrounding whitespace; ports, brackets, names and
/// `unknown` are refused, as Envoy's XFF parser does.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry.trim_matches([' ', '\t']).parse().ok()
}

/// What Envoy's `source.address` (`ip:port`, `[v6]:port`) says about the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceAddress {
    /// The connection's own peer (a real port).
    Connection(IpAddr),
    /// An address Envoy took from `X-Forwarded-For`: it has port 0. Under the connection
    /// manager's default `use_remote_address: false` that is the header's last entry, which
    /// any client writes, so it is trusted only when the configuration says so.
    Forwarded(IpAddr),
    /// Not an IP address (a pipe, an internal listener) or not there.
    Unknown,
}

/// Reads `source.address`.
pub fn source_address(text: &str) -> SourceAddress {
    let (host, port) = crate::request::split_host_port(text);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let Ok(ip) = host.parse::<IpAddr>() else {
        return SourceAddress::Unknown;
    };
    match port.map(str::parse::<u16>) {
        Some(Ok(0)) | None => SourceAddress::Forwarded(ip),
        Some(Ok(_)) => SourceAddress::Connection(ip),
        Some(Err(_)) => SourceAddress::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_envoy_took_from_x_forwarded_for_has_port_zero() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            source_address("127.0.0.1:53122"),
            SourceAddress::Connection(ip("127.0.0.1"))
        );
        assert_eq!(
            source_address("[::1]:443"),
            SourceAddress::Connection(ip("::1"))
        );
        assert_eq!(
            source_address("10.9.9.9:0"),
            SourceAddress::Forwarded(ip("10.9.9.9"))
        );
        assert_eq!(
            source_address("[2001:db8::1]:0"),
            SourceAddress::Forwarded(ip("2001:db8::1"))
        );
        assert_eq!(
            source_address("10.9.9.9"),
            SourceAddress::Forwarded(ip("10.9.9.9"))
        );
        assert_eq!(source_address("/run/envoy.sock"), SourceAddress::Unknown);
        assert_eq!(source_address(""), SourceAddress::Unknown);
        assert_eq!(source_address("10.0.0.1:port"), SourceAddress::Unknown);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_trusted_hops_means_the_peer() {
        let xff = ["6.6.6.6"];
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), xff.into_iter(), 0),
            Some((ip("10.0.0.1"), Origin::Peer))
        );
        assert_eq!(client_ip(None, xff.into_iter(), 0), None);
    }

    #[test]
    fn trusted_hops_count_from_the_right_past_the_appended_peer() {
        // client 1.1.1.1 → trusted LB 10.0.0.9 → Envoy (appends the LB).
        let xff = ["1.1.1.1, 10.0.0.9"];
        assert_eq!(
            client_ip(Some(ip("10.0.0.9")), xff.into_iter(), 1),
            Some((ip("1.1.1.1"), Origin::ForwardedFor))
        );
        // A spoofed entry on the left is never reached.
        let xff = ["6.6.6.6, 1.1.1.1, 10.0.0.9"];
        assert_eq!(
            client_ip(Some(ip("10.0.0.9")), xff.into_iter(), 1).map(|c| c.0),
            Some(ip("1.1.1.1"))
        );
        // Two lines are one list.
        let xff = ["6.6.6.6, 1.1.1.1", "10.0.0.9"];
        assert_eq!(
            client_ip(Some(ip("10.0.0.9")), xff.into_iter(), 1).map(|c| c.0),
            Some(ip("1.1.1.1"))
        );
    }

    #[test]
    fn short_or_malformed_headers_fall_back_to_the_peer() {
        let peer = Some(ip("10.0.0.9"));
        for xff in [
            "10.0.0.9",
            "1.1.1.1:80, 10.0.0.9",
            "[::1], 10.0.0.9",
            "evil, 10.0.0.9",
            "",
        ] {
            assert_eq!(
                client_ip(peer, [xff].into_iter(), 1),
                Some((ip("10.0.0.9"), Origin::Peer)),
                "{xff}"
            );
        }
        assert_eq!(
            client_ip(peer, std::iter::empty(), 3),
            Some((ip("10.0.0.9"), Origin::Peer))
        );
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        assert_eq!(
            client_ip(Some(ip("::ffff:1.2.3.4")), std::iter::empty(), 0).map(|c| c.0),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            client_ip(Some(ip("::1")), [" 2001:db8::1 , ::1"].into_iter(), 1).map(|c| c.0),
            Some(ip("2001:db8::1"))
        );
    }

    #[test]
    fn without_a_known_peer_no_forwarded_entry_is_trusted() {
        // Envoy appends the peer only when it knows it (use_remote_address: true); without
        // it, every entry of the header may be the client's own.
        assert_eq!(client_ip(None, ["10.9.9.9, 10.0.0.1"].into_iter(), 1), None);
    }
}
