//! CIDR lists prepared once as sorted, merged ranges, so a lookup is one binary search however
//! many entries the list has (10,000 entries: about 14 comparisons).

use ipnet::IpNet;
use std::net::IpAddr;

/// A set of IPv4 and IPv6 networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    /// Disjoint, non-adjacent, sorted `[first, last]` ranges of IPv4 addresses.
    v4: Vec<(u32, u32)>,
    /// The same for IPv6.
    v6: Vec<(u128, u128)>,
}

impl IpSet {
    /// Builds the set from networks (overlaps and adjacent networks are merged). An IPv4-mapped
    /// IPv6 network (`::ffff:10.0.0.0/104`) is stored as the IPv4 network it maps.
    pub fn new(networks: &[IpNet]) -> IpSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in networks {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => {
                    let first = n.network();
                    match (first.to_ipv4_mapped(), n.prefix_len()) {
                        (Some(mapped), len) if len >= 96 => {
                            let last = n.broadcast().to_ipv4_mapped().unwrap_or(mapped);
                            v4.push((u32::from(mapped), u32::from(last)));
                        }
                        _ => v6.push((u128::from(first), u128::from(n.broadcast()))),
                    }
                }
            }
        }
        IpSet {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// Whether the set has no network at all.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Number of disjoint ranges after merging.
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether `ip` is in one of the networks. IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`)
    /// are looked up as the IPv4 address they carry, so one list covers both spellings.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(a) => within(&self.v4, u32::from(a)),
            IpAddr::V6(a) => within(&self.v6, u128::from(a)),
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries; anything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn merge<T: Copy + Ord + Successor>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if prev.1.successor().is_none_or(|next| first <= next) => {
                prev.1 = prev.1.max(last);
            }
            _ => out.push((first, last)),
        }
    }
    out.shrink_to_fit();
    out
}

fn within<T: Copy + Ord>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x is the only one that can hold it.
    let after = ranges.partition_point(|&(first, _)| first <= x);
    after
        .checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|&(_, last)| x <= last)
}

/// The next integer, or `None` at the top of the type (so the last address merges correctly).
trait Successor: Sized {
    fn successor(self) -> Option<Self>;
}

impl Successor for u32 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Successor for u128 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &[&str]) -> IpSet {
        let nets: Vec<IpNet> = list.iter().map(|s| s.parse().unwrap()).collect();
        IpSet::new(&nets)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn looks_up_ipv4_and_ipv6() {
        let s = set(&["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"]);
        assert!(s.contains(ip("10.1.2.3")));
        assert!(s.contains(ip("192.168.1.7")));
        assert!(!s.contains(ip("192.168.1.8")));
        assert!(!s.contains(ip("11.0.0.0")));
        assert!(!s.contains(ip("9.255.255.255")));
        assert!(s.contains(ip("2001:db8::1")));
        assert!(!s.contains(ip("2001:db9::1")));
    }

    #[test]
    fn ipv4_mapped_addresses_and_networks_are_ipv4() {
        let s = set(&["10.0.0.0/8", "::ffff:172.16.0.0/108"]);
        assert!(s.contains(ip("::ffff:10.9.9.9")));
        assert!(s.contains(ip("172.16.5.5")));
        assert!(s.contains(ip("::ffff:172.16.5.5")));
        assert!(!s.contains(ip("172.32.0.1")));
        assert_eq!(s.v6.len(), 0);
    }

    #[test]
    fn overlapping_and_adjacent_networks_merge() {
        let s = set(&["10.0.0.0/9", "10.128.0.0/9", "10.1.0.0/16", "0.0.0.0/0"]);
        assert_eq!(s.v4, vec![(0, u32::MAX)]);
        assert!(s.contains(ip("255.255.255.255")));
        let s = set(&["::/0", "::1/128"]);
        assert_eq!(s.ranges(), 1);
        assert!(s.contains(ip("ffff::1")));
    }

    #[test]
    fn many_entries_agree_with_a_linear_scan() {
        let nets: Vec<IpNet> = (0..10_000u32)
            .map(|i| {
                let a = i.wrapping_mul(2_654_435_761);
                let len = 16 + (i % 17) as u8;
                IpNet::new(IpAddr::from(a.to_be_bytes()), len)
                    .unwrap()
                    .trunc()
            })
            .collect();
        let s = IpSet::new(&nets);
        for i in 0..20_000u32 {
            let probe = IpAddr::from(i.wrapping_mul(40_503).wrapping_add(i << 20).to_be_bytes());
            let linear = nets.iter().any(|n| n.contains(&probe));
            assert_eq!(s.contains(probe), linear, "{probe}");
        }
    }
}
