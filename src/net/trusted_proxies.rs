//! The trusted-proxy list (`APP_TRUSTED_PROXIES`): IP addresses and CIDR blocks whose
//! forwarding headers are believed. Parsed by the configuration, used by [`crate::http::client_addr`].

use std::net::{IpAddr, Ipv6Addr};

/// One `APP_TRUSTED_PROXIES` entry: an address or a CIDR block, kept as a masked network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask_v4(u32::from(a), self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => mask_v6(u128::from(a), self.prefix) == u128::from(n),
            _ => false,
        }
    }
}

fn mask_v4(bits: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => bits & (u32::MAX << (32 - u32::from(p.min(32)))),
    }
}

fn mask_v6(bits: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => bits & (u128::MAX << (128 - u32::from(p.min(128)))),
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`, what a dual-stack listener reports) is the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The proxies whose forwarding headers are believed. Empty (the default) trusts nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Net>);

impl TrustedProxies {
    /// Parses a comma-separated list of IPs and CIDRs (`10.0.0.1, 10.1.0.0/16, fd00::/8`).
    /// The error names the first bad entry, for a one-line configuration message.
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            nets.push(parse_net(entry).ok_or_else(|| {
                format!(
                    "{entry:?} is not an IP address or CIDR block \
                     (expected e.g. 10.0.0.1, 10.0.0.0/8 or fd00::/8, comma-separated)"
                )
            })?);
        }
        Ok(TrustedProxies(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(ip))
    }
}

fn parse_net(entry: &str) -> Option<Net> {
    let (addr, prefix) = match entry.split_once('/') {
        Some((a, p)) => {
            // Plain decimal only: "+8" or "08" are typos rather than prefixes.
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?))
        }
        None => (entry.parse::<IpAddr>().ok()?, None),
    };
    // A mapped IPv6 address is stored as IPv4 (its prefix shifted), so one entry matches both.
    let (addr, prefix) = match (addr, canonical(addr)) {
        (IpAddr::V6(_), IpAddr::V4(v4)) => (
            IpAddr::V4(v4),
            match prefix {
                Some(p) if p < 96 => return None,
                Some(p) => Some(p - 96),
                None => None,
            },
        ),
        (a, _) => (a, prefix),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    if prefix > max {
        return None;
    }
    // Host bits are masked off: "10.0.0.7/8" means 10.0.0.0/8.
    let addr = match addr {
        IpAddr::V4(a) => IpAddr::V4(mask_v4(u32::from(a), prefix).into()),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask_v6(u128::from(a), prefix))),
    };
    Some(Net { addr, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn trusted_proxy_lists_parse_ips_and_cidrs_and_name_a_bad_entry() {
        let t = TrustedProxies::parse(" 10.0.0.1, 192.168.0.0/16 ,fd00::/8,").expect("valid");
        for (addr, inside) in [
            ("10.0.0.1", true),
            ("10.0.0.2", false),
            ("192.168.44.5", true),
            ("192.169.0.1", false),
            ("fd12::1", true),
            ("fe80::1", false),
            ("::ffff:10.0.0.1", true),
            ("::ffff:192.168.1.1", true),
        ] {
            assert_eq!(t.contains(ip(addr)), inside, "{addr}");
        }
        assert!(TrustedProxies::parse("").expect("empty").is_empty());
        let all = TrustedProxies::parse("0.0.0.0/0").expect("all v4");
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let host_bits = TrustedProxies::parse("10.9.9.9/8").expect("masked");
        assert!(host_bits.contains(ip("10.1.2.3")));
        let mapped = TrustedProxies::parse("::ffff:10.0.0.0/104").expect("mapped cidr");
        assert!(mapped.contains(ip("10.200.0.1")) && !mapped.contains(ip("11.0.0.1")));
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0",
            "proxy.local",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "1.2.3.4:80",
            "10.0.0.0/8/8",
        ] {
            let e = TrustedProxies::parse(&format!("10.0.0.1,{bad}")).expect_err(bad);
            assert!(e.contains(bad) && !e.contains('\n'), "{e}");
        }
    }
}
